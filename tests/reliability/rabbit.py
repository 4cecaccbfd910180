"""A RabbitMQ virtual host of a test's own on the local RabbitMQ, made and removed with
``rabbitmqctl``; the reason when there is none (off CI the test skips with it, on CI it fails)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672
# rabbitmqctl boots an Erlang VM per call: about a second each.
RABBITMQCTL_TIMEOUT_S = 30.0


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def unavailable() -> str | None:
    """Why RabbitMQ cannot be used here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not on PATH (needed to create a private vhost)"
    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ on {AMQP_HOST}:{AMQP_PORT}: {exc}"
    return None


@contextlib.contextmanager
def private_vhost(prefix: str) -> Iterator[str]:
    """An AMQP URL on a fresh vhost (guest has every permission there), deleted afterwards;
    skips (fails with ``CI=true``) when RabbitMQ is not there."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs RabbitMQ: {reason}")
        pytest.skip(reason)
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)
