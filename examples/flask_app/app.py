"""A Flask app that asks the TTS worker for speech and records the outcome from its webhook.

It knows the worker only through the client package (``tts_client``), which speaks the
worker's public contract; nothing of the worker's code is imported.

* ``POST /speech`` ``{"text": ..., "model": ..., "voice": ...}`` records a job, submits it and
  answers ``202 {"job_id": ...}``;
* ``GET /speech/<job_id>`` shows the job: ``queued``, then ``completed`` or ``failed``;
* ``POST /tts/webhook`` is where the worker reports (the client's blueprint checks the
  signature); :func:`apply_outcome` applies it once per ``webhook-id``;
* ``GET /tts/jobs/<job_id>/events`` streams the job's progress as server-sent events.

Configuration (environment, or a mapping passed to :func:`create_app`): ``CELERY_BROKER_URL``,
``TTS_REDIS_URL`` (unset: the broker), ``TTS_WEBHOOK_SECRET`` (the worker's secret),
``TTS_NOTIFY_URL`` (this app's webhook URL as the worker reaches it) and ``SPEECH_DB`` (an
SQLite file).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from tts_client import TTSEvent
from tts_client.flask import create_blueprint, get_client, webhook_received

SCHEMA = """
CREATE TABLE IF NOT EXISTS speech_jobs (
    job_id      TEXT PRIMARY KEY,
    text        TEXT NOT NULL,
    model       TEXT NOT NULL,
    status      TEXT NOT NULL,  -- queued, completed, failed
    audio_url   TEXT,           -- file:// on the worker's disk, or a presigned S3 GET
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
        TTS_REDIS_URL=os.environ.get("TTS_REDIS_URL") or None,
        TTS_WEBHOOK_SECRET=os.environ.get("TTS_WEBHOOK_SECRET", ""),
        TTS_NOTIFY_URL=os.environ.get("TTS_NOTIFY_URL", "http://127.0.0.1:5000/tts/webhook"),
        SPEECH_DB=os.environ.get("SPEECH_DB", "speech.sqlite3"),
    )
    app.config.update(config or {})
    with contextlib.closing(sqlite3.connect(app.config["SPEECH_DB"])) as db:
        db.executescript(SCHEMA)

    # POST /tts/webhook and GET /tts/jobs/<job_id>/events; refuses to register without a secret.
    app.register_blueprint(create_blueprint(), url_prefix="/tts")
    webhook_received.connect(apply_outcome, sender=app)
    app.teardown_appcontext(_close_db)
    app.add_url_rule("/speech", view_func=create_speech, methods=["POST"])
    app.add_url_rule("/speech/<job_id>", view_func=show_speech, methods=["GET"])
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
    if voice is not None and not isinstance(voice, str):
        return jsonify(error="voice must be a string"), 400
    job_id = str(uuid.uuid4())
    db = _db()
    with db:  # committed before the message is sent, so the webhook always finds the row
        db.execute(
            "INSERT INTO speech_jobs (job_id, text, model, status, created_at)"
            " VALUES (?, ?, ?, 'queued', ?)",
            (job_id, text, model, time.time()),
        )
    get_client().submit(
        text, model, voice=voice, notify_url=current_app.config["TTS_NOTIFY_URL"], job_id=job_id
    )
    return jsonify(job_id=job_id, status="queued"), 202


def show_speech(job_id: str) -> ResponseReturnValue:
    row = _db().execute("SELECT * FROM speech_jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        return jsonify(error="no such job"), 404
    return jsonify(dict(row))


def apply_outcome(app: Flask, event: TTSEvent, **_: Any) -> bool:
    """Apply a verified outcome once: False (the blueprint answers ``duplicate``) when its
    ``webhook-id`` was applied before. The id and the effect commit together, or neither."""
    db = _db()
    with db:
        seen = db.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, job_id, received_at)"
            " VALUES (?, ?, ?)",
            (event.webhook_id, event.job_id, time.time()),
        )
        if seen.rowcount == 0:
            return False
        db.execute(
            "UPDATE speech_jobs SET status = ?, audio_url = ?, error_code = ?, finished_at = ?"
            " WHERE job_id = ?",
            (
                "completed" if event.completed else "failed",
                event.audio.url if event.audio else None,
                event.error.code if event.error else None,
                time.time(),
                event.job_id,
            ),
        )
    return True
