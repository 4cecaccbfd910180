"""A Flask app that asks the TTS worker for speech and records the outcome from its webhook.

It knows the worker only through the public contract: a broker URL, a task name and its queue,
and the Standard Webhooks signature on the webhook. Nothing of the worker's code is imported.

* ``POST /speech`` ``{"text": ..., "model": ..., "voice": ...}`` records a job, sends
  ``tts.submit_tts`` to queue ``tts.submit`` and answers ``202 {"job_id": ...}``;
* ``GET /speech/<job_id>`` shows the job: ``queued``, then ``completed`` or ``failed``;
* ``POST /webhooks/tts`` is where the worker reports: the signature is checked, and a delivery
  whose ``webhook-id`` was seen before is acknowledged but not applied again.

Configuration (environment, or a mapping passed to :func:`create_app`): ``CELERY_BROKER_URL``,
``TTS_WEBHOOK_SECRET`` (the worker's secret), ``TTS_NOTIFY_URL`` (this app's webhook URL as
the worker reaches it) and ``SPEECH_DB`` (an SQLite file).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Mapping
from typing import Any

from celery import Celery
from flask import Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# The worker's public contract: the task name and the queue it listens on.
SUBMIT_TASK = "tts.submit_tts"
SUBMIT_QUEUE = "tts.submit"

SCHEMA = """
CREATE TABLE IF NOT EXISTS speech_jobs (
    job_id      TEXT PRIMARY KEY,
    text        TEXT NOT NULL,
    model       TEXT NOT NULL,
    status      TEXT NOT NULL,  -- queued, completed, failed
    audio_path  TEXT,
    error_code  TEXT,
    created_at  REAL NOT NULL,
    finished_at REAL
);
-- One row per webhook applied. The worker sends the same webhook-id on every attempt for one
-- outcome, so the primary key turns a repeated delivery into a no-op.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    webhook_id  TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The app, configured from the environment and then from ``config``."""
    app = Flask(__name__)
    app.config.from_mapping(
        CELERY_BROKER_URL=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
        TTS_WEBHOOK_SECRET=os.environ.get("TTS_WEBHOOK_SECRET", ""),
        TTS_NOTIFY_URL=os.environ.get("TTS_NOTIFY_URL", "http://127.0.0.1:5000/webhooks/tts"),
        SPEECH_DB=os.environ.get("SPEECH_DB", "speech.sqlite3"),
    )
    app.config.update(config or {})
    if not app.config["TTS_WEBHOOK_SECRET"]:
        raise RuntimeError("TTS_WEBHOOK_SECRET is required: unsigned webhooks are not accepted")

    # A bare Celery client: it only publishes, by name, so it needs no task code.
    celery = Celery("speech-app", broker=app.config["CELERY_BROKER_URL"], set_as_current=False)
    celery.conf.task_serializer = "json"
    app.extensions["tts_celery"] = celery
    app.extensions["tts_webhook"] = Webhook(app.config["TTS_WEBHOOK_SECRET"])
    with contextlib.closing(sqlite3.connect(app.config["SPEECH_DB"])) as db:
        db.executescript(SCHEMA)

    app.teardown_appcontext(_close_db)
    app.add_url_rule("/speech", view_func=create_speech, methods=["POST"])
    app.add_url_rule("/speech/<job_id>", view_func=show_speech, methods=["GET"])
    app.add_url_rule("/webhooks/tts", view_func=tts_webhook, methods=["POST"])
    return app


def _db() -> sqlite3.Connection:
    if "db" not in g:
        # timeout: the webhook and the API may write at the same moment; SQLite then waits.
        g.db = sqlite3.connect(current_app.config["SPEECH_DB"], timeout=10)
        g.db.row_factory = sqlite3.Row
    db: sqlite3.Connection = g.db
    return db


def _close_db(_exc: BaseException | None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


def create_speech() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    text, model, voice = data.get("text"), data.get("model"), data.get("voice")
    if not isinstance(text, str) or not text.strip() or not isinstance(model, str) or not model:
        return jsonify(error="text and model are required"), 400
    job_id = str(uuid.uuid4())
    db = _db()
    with db:  # committed before the message is sent, so the webhook always finds the row
        db.execute(
            "INSERT INTO speech_jobs (job_id, text, model, status, created_at)"
            " VALUES (?, ?, ?, 'queued', ?)",
            (job_id, text, model, time.time()),
        )
    current_app.extensions["tts_celery"].send_task(
        SUBMIT_TASK,
        args=[text, model],
        kwargs={
            "voice": voice,
            "notify_url": current_app.config["TTS_NOTIFY_URL"],
            "job_id": job_id,
        },
        queue=SUBMIT_QUEUE,
    )
    return jsonify(job_id=job_id, status="queued"), 202


def show_speech(job_id: str) -> ResponseReturnValue:
    row = _db().execute("SELECT * FROM speech_jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        return jsonify(error="no such job"), 404
    return jsonify(dict(row))


def tts_webhook() -> ResponseReturnValue:
    body = request.get_data()
    webhook: Webhook = current_app.extensions["tts_webhook"]
    try:
        webhook.verify(body, dict(request.headers), json_parse=False)
    except (WebhookVerificationError, ValueError):  # ValueError: undecodable body or header
        return jsonify(error="invalid signature"), 401
    try:
        event = json.loads(body)
        job_id = str(event["job_id"])
    except (ValueError, KeyError, TypeError):
        return jsonify(error="not a TTS event"), 400

    db = _db()
    with db:  # the delivery id and its effect commit together, or neither does
        seen = db.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, job_id, received_at)"
            " VALUES (?, ?, ?)",
            (request.headers["webhook-id"], job_id, time.time()),
        )
        if seen.rowcount == 0:
            # A retry of a delivery we applied: answer 2xx so the worker stops sending it.
            return jsonify(status="duplicate")
        completed = event.get("type") == "tts.completed"
        db.execute(
            "UPDATE speech_jobs SET status = ?, audio_path = ?, error_code = ?, finished_at = ?"
            " WHERE job_id = ?",
            (
                "completed" if completed else "failed",
                (event.get("audio") or {}).get("path"),
                (event.get("error") or {}).get("code"),
                time.time(),
                job_id,
            ),
        )
    return jsonify(status="processed")
