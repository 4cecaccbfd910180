"""The signal the webhook view sends for each new, verified event."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent once per ``webhook-id``, with ``sender=WebhookEvent`` and ``event=`` a
#: :class:`tts_client.TTSEvent`, inside the transaction that records the id: apply the event in
#: a receiver and it commits with the record, or neither does. A receiver that raises rolls both
#: back and the view answers 500, so the worker delivers it again later.
webhook_received = Signal()
