"""An audio host of the tests' own, started on a port of their choosing (one that refused
connections until then): it answers every GET with the simulator's sample WAV and records the
paths asked for."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.sample_audio import make_wav


class AudioHost:
    """``with AudioHost(port) as host``: listening on 127.0.0.1:``port`` inside the block."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> AudioHost:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Silent, as the simulator is."""

            def do_GET(self) -> None:
                with host._lock:
                    host.paths.append(self.path)
                body = make_wav()
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
