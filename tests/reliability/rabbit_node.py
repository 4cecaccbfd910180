"""A RabbitMQ node of a test's own: killed, frozen or put in alarm without touching the
machine's shared RabbitMQ on 5672, which other tests and CI use.

The node runs from a temporary directory: its own node name, AMQP and distribution ports,
Mnesia and log directories, Erlang cookie (``HOME``), an empty plugin list, and a config and
env file of its own (so the machine's ``/etc/rabbitmq``, whose listener is 5672, is never read).
``rabbitmqctl -n <node>`` talks to it alone. Booting takes seconds (an Erlang VM: 5-6 s on the
shared 2-core machine); :attr:`PrivateNode.boot_s` keeps the last boot's time for the figures.
Off CI a missing ``rabbitmq-server`` skips the test, saying why; with ``CI=true`` it fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from workers.embedded_redis import free_port

HOST = "127.0.0.1"
# Debian's /usr/sbin scripts are wrappers that switch to the rabbitmq user (or refuse to run as
# anyone else); the real scripts, which honour RABBITMQ_* variables, are here.
DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
# An Erlang VM boots RabbitMQ in 5-6 s on a loaded 2-core machine; a restart replays its
# quorum queues' logs too.
BOOT_TIMEOUT_S = 90.0
# rabbitmqctl boots an Erlang VM per call: about a second each.
CTL_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# RabbitMQ's defaults, restored after an alarm: 40 % of RAM, 50 MB of free disk.
DEFAULT_MEMORY_WATERMARK = "0.4"
DEFAULT_DISK_FREE_LIMIT = "50MB"


def script(name: str) -> str | None:
    """The path of RabbitMQ's ``name`` script that runs as the calling user, or None."""
    real = DEBIAN_SCRIPTS / name
    if real.is_file() and os.access(real, os.X_OK):
        return str(real)
    return shutil.which(name)


def unavailable() -> str | None:
    """Why no private node can be started here, or None."""
    for name in ("rabbitmq-server", "rabbitmqctl"):
        if script(name) is None:
            return f"{name} is not installed (needed for a private RabbitMQ node)"
    return None


def require() -> None:
    """Skip (fail with ``CI=true``) when no private node can be started."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs rabbitmq-server: {reason}")
        pytest.skip(reason)


class PrivateNode:
    """``start`` boots it (``boot_s``), ``url`` is its default vhost as guest (loopback only)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.name = f"tts-test-{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port(HOST)
        self.process: subprocess.Popen[bytes] | None = None
        self.vm_pid = 0
        self.boot_s = 0.0
        cookie = base / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.1 = {HOST}:{self.port}\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie, for the node and rabbitmqctl alike
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port(HOST)),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}//"

    def start(self) -> PrivateNode:
        """Boot the node (again, on its own files after :meth:`kill`); wait for its listener."""
        server = script("rabbitmq-server")
        assert server is not None
        started = time.monotonic()
        with (self.base / "server.out").open("ab") as out:
            self.process = subprocess.Popen(
                [server], env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.base
            )
        while time.monotonic() - started < BOOT_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: see {self.base / 'server.out'}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise TimeoutError(f"rabbitmq-server not listening after {BOOT_TIMEOUT_S:.0f} s")
        self.boot_s = time.monotonic() - started
        # The node writes its OS pid while it boots, before its listener opens.
        self.vm_pid = int((self.base / "node.pid").read_text().strip())
        return self

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n <this node> args``; raises with its output when it fails."""
        ctl = script("rabbitmqctl")
        assert ctl is not None
        done = subprocess.run(
            [ctl, "-q", "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            why = done.stderr.strip() or done.stdout
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {why}")
        return done.stdout

    def alarms(self) -> str:
        """The node's resource alarms as ``rabbitmq-diagnostics`` would list them (empty: none)."""
        return self.ctl("eval", "rabbit_alarm:get_alarms().").strip()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the Erlang VM itself (``rabbitmq-server`` is a shell that waits for
        it and would only forward SIGTERM)."""
        os.kill(self.vm_pid, sig)

    def kill(self) -> None:
        """SIGKILL the node: no shutdown, no final sync of anything not yet on disk."""
        assert self.process is not None
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)  # a frozen node dies as well
            self.signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """End the node: SIGTERM to the script stops it cleanly; SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
