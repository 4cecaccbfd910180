"""The local RabbitMQ, used through a private virtual host that is deleted afterwards.

``rabbitmqctl`` (root can run it) makes the vhost and lists its queues; the AMQP side is
``amqp://guest:guest@127.0.0.1:5672/<vhost>``. Without a RabbitMQ the rows say so and go on.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

HOST = "127.0.0.1"
PORT = 5672
# rabbitmqctl boots an Erlang VM per call: a second or two; a minute means it is stuck.
CTL_TIMEOUT_S = 60.0


class Unavailable(RuntimeError):
    """No RabbitMQ to measure on; the message says why."""


def _ctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        raise Unavailable("rabbitmqctl is not installed")
    try:
        out = subprocess.run(
            ["rabbitmqctl", *args],
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"rabbitmqctl {args[0]} did not answer") from None
    if out.returncode != 0:
        raise Unavailable(f"rabbitmqctl {args[0]}: {(out.stderr or out.stdout).strip()[:200]}")
    return out.stdout


def server_version() -> str | None:
    """The running server's version, or None without a reachable RabbitMQ."""
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            pass
        return _ctl("version").strip() or None
    except (OSError, Unavailable):
        return None


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """A fresh vhost that guest may use; yields its broker URL; deleted on exit."""
    if server_version() is None:
        raise Unavailable(f"no RabbitMQ answering on {HOST}:{PORT}")
    vhost = f"tts-bench-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"
    finally:
        with contextlib.suppress(Unavailable):
            _ctl("delete_vhost", vhost)


@dataclass(frozen=True)
class QueueStats:
    name: str
    ready: int
    unacked: int
    memory_bytes: int


def queues(broker_url: str) -> list[QueueStats]:
    """Every queue of the URL's vhost: messages ready, unacknowledged, and the queue's memory."""
    vhost = broker_url.rsplit("/", 1)[1]
    out = _ctl(
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "memory",
        "--quiet",
        "--no-table-headers",
    )
    stats = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[1].isdigit():
            stats.append(QueueStats(parts[0], int(parts[1]), int(parts[2]), int(parts[3] or 0)))
    return stats
