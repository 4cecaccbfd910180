"""The workers' Redis client never sends a command twice on its own.

A Lua transition whose reply is late may have run; redis-py's retry (``retry_on_timeout``, or
its default ``Retry`` on ConnectionError and TimeoutError) would send it again unseen. Here a
fake Redis on loopback answers the connection's handshake and swallows the command itself,
then hangs up or stays silent: the command must arrive once, and the error reach the caller.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from tasks.adapters import runtime
from tests.support.ctx import settings


@dataclass
class SwallowingRedis:
    """Answers +OK to everything but ``SET``, which it counts and never answers (HELLO it
    does not know; PING it answers PONG)."""

    then: str  # "close": hang up after the SET; "silent": keep the socket open, say nothing
    port: int = 0
    sets: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def _commands(conn: socket.socket) -> Iterator[list[bytes]]:
    buf = conn.makefile("rb")
    while True:
        line = buf.readline()
        if not line:
            return
        if not line.startswith(b"*"):
            continue
        args = []
        for _ in range(int(line[1:])):
            size = int(buf.readline()[1:])
            args.append(buf.read(size + 2)[:-2])
        yield args


def _serve(fake: SwallowingRedis, listener: socket.socket) -> None:
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    while not fake.stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        held.append(conn)
        for args in _commands(conn):
            if args[0].upper() == b"SET":
                fake.sets += 1
                if fake.then == "close":
                    conn.close()
                break
            if args[0].upper() == b"HELLO":  # an old Redis: the client falls back to RESP2
                conn.sendall(b"-ERR unknown command 'HELLO'\r\n")
            elif args[0].upper() == b"PING":  # the client's health check
                conn.sendall(b"+PONG\r\n")
            else:
                conn.sendall(b"+OK\r\n")
    for conn in held:
        conn.close()


@pytest.fixture(params=["close", "silent"])
def fake_redis(request: pytest.FixtureRequest) -> Iterator[SwallowingRedis]:
    fake = SwallowingRedis(then=request.param)
    listener = socket.create_server(("127.0.0.1", 0))
    fake.port = listener.getsockname()[1]
    thread = threading.Thread(target=_serve, args=(fake, listener), daemon=True)
    thread.start()
    yield fake
    fake.stop.set()
    thread.join(5)
    listener.close()


def test_a_command_whose_reply_is_lost_is_sent_once(
    fake_redis: SwallowingRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings(TTS_REDIS_URL=f"redis://127.0.0.1:{fake_redis.port}/0")
    monkeypatch.setattr(runtime, "get_settings", lambda: s)
    monkeypatch.setattr(runtime, "REDIS_TIMEOUT_S", 0.5)
    runtime.reset()
    try:
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            runtime.redis_client().set("k", "v")
    finally:
        runtime.reset()
    assert fake_redis.sets == 1
