"""A tiny webhook receiver on loopback that verifies Standard Webhooks signatures.

Used by ``tts-worker demo`` to show the webhook it got, and by the tests as an independent
verifier: it checks signatures with the ``standardwebhooks`` package, not with our signing code.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Delivery:
    """One POST as received."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None  # None when the receiver has no secret to check with
    answered: int
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records every POST; ``respond`` picks the status code (default 200) per delivery."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        respond: Callable[[Delivery], int] | None = None,
    ) -> None:
        self._verifier = Webhook(secret) if secret else None
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self.respond = respond or (lambda _delivery: 200)
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if 200 <= d.answered < 300]

    def for_job(self, job_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.json().get("job_id") == job_id]

    def wait_for(self, job_id: str, *, timeout_s: float = 30.0, accepted: bool = True) -> Delivery:
        """The first (accepted) delivery for ``job_id``; raises TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for delivery in self.for_job(job_id):
                if not accepted or 200 <= delivery.answered < 300:
                    return delivery
            time.sleep(0.02)
        raise TimeoutError(f"no webhook for job {job_id} within {timeout_s}s")

    def start(self) -> Receiver:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _verify(self, body: bytes, headers: dict[str, str]) -> bool | None:
        if self._verifier is None:
            return None
        try:
            self._verifier.verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                pending = Delivery(
                    self.path, headers, body, receiver._verify(body, headers), 0, time.time()
                )
                status = receiver.respond(pending)
                delivery = Delivery(
                    pending.path, headers, body, pending.verified, status, pending.at
                )
                with receiver._lock:
                    receiver._deliveries.append(delivery)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        return Handler
