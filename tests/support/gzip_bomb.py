"""A hostile webhook receiver on loopback: it answers every POST 200 with a small gzip body that
inflates to a huge one (``Content-Encoding: gzip``), whatever the request asked for."""

from __future__ import annotations

import threading
import zlib
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MIB = 1 << 20
# The figure: about 200 KB on the wire, 200 MB once inflated.
INFLATED_BYTES = 200 * MIB


@cache
def gzip_bomb(inflated_bytes: int = INFLATED_BYTES) -> bytes:
    """Zeros, gzip-compressed in 1 MiB pieces (never the whole inflated body in memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    zeros = bytes(MIB)
    parts = [packer.compress(zeros) for _ in range(inflated_bytes // MIB)]
    parts.append(packer.flush())
    return b"".join(parts)


class BombReceiver:
    """Records each POST's path and headers; answers 200 with :func:`gzip_bomb`."""

    def __init__(self, inflated_bytes: int = INFLATED_BYTES) -> None:
        self.body = gzip_bomb(inflated_bytes)
        self.posts: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> BombReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.posts.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()})
                    )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                try:
                    self.wfile.write(receiver.body)
                except OSError:
                    return  # the worker closed the connection without reading: as it should

            def log_message(self, *_: Any) -> None:
                return

        return Handler
