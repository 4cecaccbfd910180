"""A real loopback HTTP server for an example app's WSGI app, recording what reached it.

The worker delivers webhooks over HTTP, so the example app must listen on a real socket; the tests
keep the deliveries it received so they can replay or tamper with them through the test client.
The event-stream helpers read a server-sent-events body and play a job's progress in Redis.
"""

from __future__ import annotations

import datetime
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from standardwebhooks.webhooks import Webhook
from werkzeug.serving import BaseWSGIServer, make_server

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Post a webhook body with headers through a framework's test client: (status, JSON answer).
Post = Callable[[bytes, dict[str, str]], tuple[int, Any]]

# Headers a Standard Webhooks delivery carries; the ones a replay must repeat.
WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type")


@dataclass(frozen=True)
class Received:
    """One request as it reached the app, and the status the app answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: bytes

    def webhook_headers(self) -> dict[str, str]:
        return {name: self.headers[name] for name in WEBHOOK_HEADERS if name in self.headers}


class LoopbackServer:
    """Serve ``app`` on 127.0.0.1 (a free port) on a daemon thread; ``received`` records calls."""

    def __init__(self, app: Wsgi) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._record, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.port}{path}"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def wait_for(
        self, predicate: Callable[[Received], bool], *, timeout_s: float = 30.0
    ) -> Received:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for item in self.received:
                if predicate(item):
                    return item
            time.sleep(0.05)
        raise TimeoutError("no matching request reached the app")

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = environ["CONTENT_TYPE"]
        status: list[int] = []

        def capture(code: str, response_headers: Any, exc_info: Any = None) -> Any:
            status.append(int(code.split()[0]))
            return start_response(code, response_headers, exc_info)

        chunks = self._app(environ, capture)
        try:
            answer = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        with self._lock:
            self._received.append(Received(environ["PATH_INFO"], headers, body, status[0], answer))
        return [answer]


def check_replays_and_forgeries(post: Post, delivery: Received, *, secret: str) -> None:
    """Send ``delivery`` again, re-signed with other content, tampered and unsigned; the app
    must acknowledge the first two without applying them and refuse the last two."""
    # The same delivery again (a retry after a lost answer): acknowledged, not applied.
    assert post(delivery.body, delivery.webhook_headers()) == (200, {"status": "duplicate"})

    # Same webhook-id, validly signed, saying something else: the first delivery still wins.
    webhook_id = delivery.headers["webhook-id"]
    now = datetime.datetime.now(tz=datetime.UTC)
    other = json.dumps({**json.loads(delivery.body), "type": "tts.failed", "audio": None})
    resigned = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, other),
        "content-type": "application/json",
    }
    assert post(other.encode(), resigned) == (200, {"status": "duplicate"})

    # A changed body under the original signature, and no signature at all: refused.
    tampered = delivery.body.replace(b"tts.completed", b"tts.failed")
    assert tampered != delivery.body
    assert post(tampered, delivery.webhook_headers())[0] == 401
    unsigned = {k: v for k, v in delivery.webhook_headers().items() if k != "webhook-signature"}
    assert post(delivery.body, unsigned)[0] == 401


def server_sent_events(chunks: Iterable[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of each server-sent event in a streamed body, read to its end."""
    events: list[tuple[str, dict[str, Any]]] = []
    for block in b"".join(chunks).decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


class ProgressPlayer:
    """Plays one job's life in the job-state Redis as the worker writes it (the record, and its
    progress stream: issue 20's contract), on a thread, while a test reads the event stream.

    The record is a plain hash (no ``tts:due`` entry), so the session's worker never acts on it.
    """

    STEPS: tuple[dict[str, str], ...] = (
        {"status": "submitting"},
        {"status": "polling", "queue_position": "2", "eta_s": "3.5"},
        {"status": "polling", "queue_position": "0", "eta_s": "1.0"},
        {"status": "downloading"},
        {"status": "completed"},
    )

    def __init__(self, db: redis.Redis, job_id: str, *, step_s: float = 0.2) -> None:
        self.db, self.job_id, self.step_s = db, job_id, step_s
        self.db.hset(f"tts:job:{job_id}", mapping={"job_id": job_id, "status": "submitting"})
        self._thread = threading.Thread(target=self._play, daemon=True)

    def _play(self) -> None:
        for step in self.STEPS:
            time.sleep(self.step_s)
            record: dict[str, str] = {"status": step["status"]}
            if step["status"] == "completed":
                audio = {"url": "file:///a/b.wav", "path": "/a/b.wav", "content_type": "audio/wav"}
                record["outcome"] = json.dumps({"type": "tts.completed", "audio": audio})
            self.db.hset(f"tts:job:{self.job_id}", mapping=record)
            entry = {**step, "at": repr(time.time())}
            self.db.xadd(f"tts:progress:{self.job_id}", entry, maxlen=50, approximate=True)

    def __enter__(self) -> ProgressPlayer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._thread.join(timeout=10)
        self.db.delete(f"tts:job:{self.job_id}", f"tts:progress:{self.job_id}")


def check_played_events(events: list[tuple[str, dict[str, Any]]], job_id: str) -> None:
    """The event stream of a :class:`ProgressPlayer` job: every step, in order, then the end."""
    assert [name for name, _ in events] == ["update"] * len(ProgressPlayer.STEPS)
    assert [(d["status"], d["queue_position"], d["eta_s"]) for _, d in events] == [
        ("submitting", None, None),
        ("polling", 2, 3.5),
        ("polling", 0, 1.0),
        ("downloading", None, None),
        ("completed", None, None),
    ]
    assert {d["job_id"] for _, d in events} == {job_id}
