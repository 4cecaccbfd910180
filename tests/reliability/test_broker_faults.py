"""RabbitMQ itself fails while jobs are in flight: killed, in memory or disk alarm, frozen.

RabbitMQ is the recommended production broker. A node of the test's own
(:mod:`tests.reliability.rabbit_node`; never the machine's shared one) is the broker, job state
is in a redis-server of its own (``TTS_REDIS_URL``), one worker (8 processes). 120 submits are
sent the default way (by name, no ``job_id``, a ``notify_url`` each, 20 a second) by a caller
that, as an app should, waits for RabbitMQ's confirm (with a timeout) and sends again under the
same task id until it has one. 2 s after the first send the node is:

* SIGKILLed and started again on its files 4 s later (its boot adds 8-11 s here);
* in memory alarm for 8 s (``set_vm_memory_high_watermark``: every publishing connection is
  blocked, ``connection.blocked``; RabbitMQ stops reading from it);
* in disk alarm for 8 s (``set_disk_free_limit`` above the free space: the same block);
* SIGSTOPped for 8 s (connections open, nothing answers).

Every job must end with exactly one outcome webhook, no text may be POSTed twice, no job may
end ``SUBMIT_UNCONFIRMED`` without a POST, at most 5 % may fail (``check`` of
test_store_faults.py). Run with ``.venv/bin/pytest tests/reliability/test_broker_faults.py -s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.config.settings import child_env
from tasks.names import QUEUES, SUBMIT_TTS
from tests.reliability import rabbit_node
from tests.reliability.rabbit_node import PrivateNode
from tests.reliability.rig import (
    MODEL,
    Figures,
    Rig,
    Tally,
    store_down,
    store_frozen,
    store_full,
)
from tests.reliability.test_store_faults import (
    DIRECTIVE,
    FAULT_AFTER_S,
    JOBS,
    RECOVERY_LIMIT_S,
    SENDS_PER_S,
    check,
)
from tests.support.worker import ROOT, assert_runs_this_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# How long the caller waits for RabbitMQ's confirm of one send before it sends again (under
# the same task id): an app's publish needs a timeout too, or an alarm blocks it for as long
# as the alarm lasts.
CALLER_PUBLISH_TIMEOUT_S = 2.0
CALLER_RESEND_PAUSE_S = 0.5
DOWN_S = 4.0
ALARM_S = 8.0
# What makes the node raise its alarm: a memory watermark far below what it uses, a free-disk
# limit far above any disk.
TINY_WATERMARK = "0.0000001"
HUGE_DISK_LIMIT = "100000GB"


def killed(node: PrivateNode) -> str:
    node.kill()
    time.sleep(DOWN_S)
    node.start()
    return f"SIGKILLed, started again on its files {DOWN_S:.0f} s later (boot {node.boot_s:.1f} s)"


def _alarmed(node: PrivateNode, kind: str, setting: str, value: str, default: str) -> str:
    """Raise the node's ``kind`` alarm by setting ``setting`` to ``value`` for ALARM_S."""
    node.ctl(setting, value)
    try:
        raised = node.alarms()
        time.sleep(ALARM_S)
    finally:
        node.ctl(setting, default)
    assert kind in raised, raised
    return f"in {kind} alarm for {ALARM_S:.0f} s (publishers blocked)"


def memory_alarm(node: PrivateNode) -> str:
    return _alarmed(
        node,
        "memory",
        "set_vm_memory_high_watermark",
        TINY_WATERMARK,
        rabbit_node.DEFAULT_MEMORY_WATERMARK,
    )


def disk_alarm(node: PrivateNode) -> str:
    return _alarmed(
        node, "disk", "set_disk_free_limit", HUGE_DISK_LIMIT, rabbit_node.DEFAULT_DISK_FREE_LIMIT
    )


def frozen(node: PrivateNode) -> str:
    node.signal(signal.SIGSTOP)
    try:
        time.sleep(ALARM_S)
    finally:
        node.signal(signal.SIGCONT)
    return f"SIGSTOPped for {ALARM_S:.0f} s"


FAULTS: dict[str, Callable[[PrivateNode], str]] = {
    "killed": killed,
    "memory": memory_alarm,
    "disk": disk_alarm,
    "frozen": frozen,
}


class Caller:
    """Sends :data:`JOBS` submits by name at :data:`SENDS_PER_S`; a send RabbitMQ did not
    confirm in time (or refused) is sent again under the same task id until it is confirmed."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.sent: dict[str, str] = {}
        self.first_at: list[float] = []
        self.resends = 0
        if rig.broker_url.startswith("amqp"):
            rig.caller.conf.broker_transport_options = {"confirm_publish": True}

    def run(self) -> None:
        start = time.monotonic()
        for i in range(JOBS):
            time.sleep(max(0.0, start + i / SENDS_PER_S - time.monotonic()))
            task_id, text = str(uuid.uuid4()), f"Job {i} [[sim {DIRECTIVE}]]"
            self._send(task_id, text)
            self.sent[task_id] = text
            if not self.first_at:
                self.first_at.append(time.time())

    def _send(self, task_id: str, text: str) -> None:
        while True:
            try:
                self.rig.caller.send_task(
                    SUBMIT_TTS,
                    args=[text, MODEL],
                    kwargs={"notify_url": self.rig.notify_url},
                    queue=QUEUES[SUBMIT_TTS],
                    task_id=task_id,
                    timeout=CALLER_PUBLISH_TIMEOUT_S,
                    confirm_timeout=CALLER_PUBLISH_TIMEOUT_S,
                )
                return
            except Exception:  # refused, timed out, connection lost: the app sends again
                self.resends += 1
                time.sleep(CALLER_RESEND_PAUSE_S)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[PrivateNode]:
    rabbit_node.require()
    started = PrivateNode(tmp_path / "rabbitmq").start()
    yield started
    started.stop()


def strike(rig: Rig, caller: Caller, fault: Callable[[], str]) -> tuple[str, float, float, Tally]:
    """Send the jobs, strike ``fault`` FAULT_AFTER_S after the first send, wait for the sends
    to end, then tally the outcomes until RECOVERY_LIMIT_S after the fault ended. Returns what
    the fault did, when it struck and ended, and the tally."""
    sender = threading.Thread(target=caller.run, daemon=True)
    sender.start()
    while not caller.first_at:
        time.sleep(0.01)
    time.sleep(max(0.0, caller.first_at[0] + FAULT_AFTER_S - time.time()))
    struck_at = time.time()
    what = fault()
    ended_at = time.time()
    sender.join()
    assert len(caller.sent) == JOBS
    tally = rig.tally(
        list(caller.sent), timeout_s=max(0.0, ended_at + RECOVERY_LIMIT_S - time.time())
    )
    return what, struck_at, ended_at, tally


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_rabbitmq_fault(fault: str, node: PrivateNode, rig: Rig, report: list[Figures]) -> None:
    first_boot_s = node.boot_s
    rig.use_broker(node.url)
    rig.split_job_store()
    assert_runs_this_tree(rig.start_worker())
    caller = Caller(rig)
    what, struck_at, ended_at, tally = strike(rig, caller, lambda: FAULTS[fault](node))
    check(
        rig,
        caller.sent,
        tally,
        f"RabbitMQ {what}",
        struck_at,
        ended_at,
        report,
        extra=f"; caller re-sends {caller.resends}; node boot {first_boot_s:.1f} s",
    )


# The Redis broker alone fails (job state in a redis-server of its own): what
# tests/reliability/test_faults.py does to one Redis serving as both.
REDIS_BROKER_FAULTS: dict[str, Callable[[Rig], str]] = {
    "killed": lambda rig: store_down(rig.redis, 6.0),
    "full": lambda rig: store_full(rig.redis, ALARM_S),
    "frozen": lambda rig: store_frozen(rig.redis, ALARM_S),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", list(REDIS_BROKER_FAULTS))
def test_redis_broker_fault(fault: str, rig: Rig, report: list[Figures]) -> None:
    """The same run with the rig's redis-server as the broker alone. A worker whose Redis
    broker dies while it holds unacked messages exits with kombu 5.7 (RELIABILITY.md, Limits):
    it is restarted as its supervisor would."""
    rig.split_job_store()
    assert_runs_this_tree(rig.start_worker())
    supervisor = rig.supervise()
    caller = Caller(rig)
    what, struck_at, ended_at, tally = strike(rig, caller, lambda: REDIS_BROKER_FAULTS[fault](rig))
    supervisor.set()
    check(
        rig,
        caller.sent,
        tally,
        f"Redis broker (job store apart) {what}",
        struck_at,
        ended_at,
        report,
        extra=f"; caller re-sends {caller.resends}; worker restarts by its supervisor: "
        f"{rig.restarts} ({len(rig.failed_starts)} of them exited while starting)",
    )


# What the worker's own publishes do against a blocked node, run in a process of its own with
# the worker's app (workers.app) and configuration: the path the next step, the releaser and
# the reconciler take (tasks.pacing.dispatch.celery_send), and the one Task.retry takes
# (the task's apply_async). Each prints how it ended.
PUBLISH_PROBE = """
import time
import kombu.exceptions
import tasks
from workers.app import app
from tasks import names
from tasks.pacing.dispatch import celery_send
from tasks.adapters.tts import notify

def attempt(what, publish):
    started = time.monotonic()
    try:
        publish()
        print(what, "published")
    except kombu.exceptions.OperationalError as exc:
        print(what, "raised OperationalError after %.1f s" % (time.monotonic() - started))

print("tree", tasks.__file__)
attempt("celery_send", lambda: celery_send(names.NOTIFY, ("job-x",), {}))
attempt("apply_async", lambda: notify.apply_async(("job-y",), countdown=2))
"""
# Far beyond the two publishes' bound (each about 20 s: two attempts of PUBLISH_TIMEOUT_S, then
# closing the channel and the connection): a probe still running then is held by the alarm.
PROBE_TIMEOUT_S = 90.0


def assert_publishes_give_up(env: dict[str, str], broker: str) -> None:
    """Run the publish probe (this checkout's code) against ``broker``: each of its publishes
    must raise after its timeouts, none wait for the broker to come back."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", PUBLISH_PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a publish waited {PROBE_TIMEOUT_S:.0f} s for {broker}: {exc.stdout}")
    tree, *lines = done.stdout.splitlines()
    assert tree == f"tree {ROOT / 'tasks' / '__init__.py'}", done.stdout + done.stderr
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["celery_send", "raised"],
        ["apply_async", "raised"],
    ], done.stdout + done.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("alarm", ["memory", "disk"])
def test_publish_to_a_node_in_alarm_gives_up(alarm: str, node: PrivateNode, rig: Rig) -> None:
    """A publish from the worker meets a node in alarm: it must raise after its timeouts, not
    wait (with ``confirm_publish``) for as long as the alarm lasts, holding the task, the
    releaser or the reconciler that sent it; the task then takes it as a broker outage."""
    if alarm == "memory":
        node.ctl("set_vm_memory_high_watermark", TINY_WATERMARK)
    else:
        node.ctl("set_disk_free_limit", HUGE_DISK_LIMIT)
    assert alarm in node.alarms()
    rig.use_broker(node.url)
    # python -c puts its working directory (this checkout) first on sys.path.
    env = child_env({**rig.env(), "TTS_REDIS_URL": rig.redis.url})
    assert_publishes_give_up(env, "a node in alarm")


@pytest.mark.timeout(240)
def test_publish_to_a_frozen_redis_broker_gives_up(rig: Rig) -> None:
    """The same probe with the rig's redis-server as the broker, SIGSTOPped: kombu's Redis
    transport waits forever on a silent socket unless it is given ``socket_timeout``."""
    job_store = rig.split_job_store()
    env = child_env({**rig.env(), "TTS_REDIS_URL": job_store.url})
    assert rig.redis.process is not None
    os.kill(rig.redis.process.pid, signal.SIGSTOP)
    try:
        assert_publishes_give_up(env, "a frozen broker")
    finally:
        os.kill(rig.redis.process.pid, signal.SIGCONT)
