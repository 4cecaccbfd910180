"""Flask integration: a blueprint with the worker's webhook and a job event stream.

::

    from tts_client.flask import create_blueprint, get_client, webhook_received

    app.register_blueprint(create_blueprint(), url_prefix="/tts")
    job_id = get_client().submit(text, model, notify_url=url_for("tts.webhook", _external=True))

    @webhook_received.connect
    def on_event(app, event, **_):   # return False: "seen before, not applied"
        ...

* ``POST <prefix>/webhook`` verifies the worker's webhook and sends :data:`webhook_received`
  with ``event=`` a :class:`tts_client.TTSEvent`: 401 if forged, altered or unsigned. Flask has
  no database of its own, so the receiver owns the transaction: it records ``event.webhook_id``
  under a unique key together with its effect, and returns ``False`` when the id was there
  already; the route then answers ``200 {"status": "duplicate"}`` (else ``"processed"``).
* ``GET <prefix>/jobs/<job_id>/events`` streams the job's updates as server-sent events
  (:mod:`tts_client.sse`).

Configuration (``app.config``): ``TTS_BROKER_URL`` (default ``CELERY_BROKER_URL``),
``TTS_REDIS_URL`` (default the broker URL when it is Redis), ``TTS_WEBHOOK_SECRET`` (required).
"""

from __future__ import annotations

from blinker import Namespace
from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue

from tts_client import sse
from tts_client.client import TTSClient
from tts_client.webhooks import WebhookVerificationError, verify_webhook

EXTENSION = "tts_client"

_signals = Namespace()
#: Sent once per verified delivery, with the app as sender and ``event=`` the TTSEvent.
webhook_received = _signals.signal("tts-webhook-received")


def create_blueprint(name: str = "tts") -> Blueprint:
    """The blueprint; registering it builds the app's :class:`TTSClient` from its config.

    Raises ``RuntimeError`` at registration without ``TTS_WEBHOOK_SECRET``: unsigned webhooks
    are never accepted.
    """
    blueprint = Blueprint(name, __name__)
    blueprint.record_once(_set_up)
    blueprint.add_url_rule("/webhook", "webhook", _webhook, methods=["POST"])
    blueprint.add_url_rule("/jobs/<job_id>/events", "events", _job_events, methods=["GET"])
    return blueprint


def _set_up(state: BlueprintSetupState) -> None:
    app = state.app
    if not app.config.get("TTS_WEBHOOK_SECRET"):
        raise RuntimeError("TTS_WEBHOOK_SECRET is required: unsigned webhooks are refused")
    if EXTENSION not in app.extensions:
        broker = app.config.get("TTS_BROKER_URL") or app.config.get("CELERY_BROKER_URL")
        if not broker:
            raise RuntimeError("set TTS_BROKER_URL (or CELERY_BROKER_URL): the TTS broker")
        redis_url = app.config.get("TTS_REDIS_URL") or None
        app.extensions[EXTENSION] = TTSClient(broker, redis_url=redis_url)


def get_client(app: Flask | None = None) -> TTSClient:
    """The :class:`TTSClient` of ``app`` (default: the current app)."""
    client: TTSClient = (app or current_app).extensions[EXTENSION]
    return client


def _webhook() -> ResponseReturnValue:
    try:
        event = verify_webhook(
            current_app.config["TTS_WEBHOOK_SECRET"], request.get_data(), dict(request.headers)
        )
    except WebhookVerificationError:
        return jsonify(error="invalid signature"), 401
    answers = webhook_received.send(current_app._get_current_object(), event=event)  # type: ignore[attr-defined]
    if any(answer is False for _receiver, answer in answers):
        # A retry of a delivery already applied: 2xx, so the worker stops sending it.
        return jsonify(status="duplicate")
    return jsonify(status="processed")


def _job_events(job_id: str) -> Response:
    stream = stream_with_context(sse.job_events(get_client(), job_id))
    return Response(stream, mimetype=sse.CONTENT_TYPE, headers=sse.HEADERS)
