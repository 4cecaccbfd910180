"""A job's updates as server-sent events, for a browser's ``EventSource``: what the Django and
Flask views stream.

Each update is one ``update`` event whose data is :meth:`Update.as_dict` as JSON; the stream
ends after the job's last update (``status`` completed or failed), or with one ``timeout``
event when the job has not ended within the view's limit. A browser must call ``close()`` on the
last update: ``EventSource`` otherwise reconnects, and would get the ended job's update again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from tts_client.client import TTSClient

# How long one response follows a job. It holds a server thread (or worker) that long; a job
# still running then gets a `timeout` event, and the browser may open the stream again.
STREAM_TIMEOUT_S = 300.0
# The headers an event stream needs: never cached, and not buffered by a proxy (nginx holds a
# response until it is complete unless told otherwise).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CONTENT_TYPE = "text/event-stream"


def event(name: str, data: object) -> bytes:
    """One server-sent event (``data`` as one line of JSON)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def job_events(
    client: TTSClient, job_id: str, *, timeout_s: float = STREAM_TIMEOUT_S
) -> Iterator[bytes]:
    """The events of one job: its updates as :meth:`TTSClient.watch` yields them."""
    try:
        for update in client.watch(job_id, timeout=timeout_s):
            yield event("update", update.as_dict())
    except TimeoutError:
        yield event("timeout", {"job_id": job_id, "timeout_s": timeout_s})
