"""``tenant`` and ``priority`` of ``tts.submit_tts`` / ``tts.poll_tts`` (issue 22): checked with
a clear ``INVALID_INPUT``, kept in the job record, absent from a record whose caller left them
out (the record is the one made before they existed). Against a real Redis, at receipt and in
the step, as tests/unit/test_received.py does."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tasks import errors, names, steps
from tasks.adapters.received import on_received
from tasks.nanogpt import validation
from tasks.nanogpt.parsing import Pending
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, WAIT_KEY, Job, Priority
from tests.support.ctx import make_ctx

MODEL = "Kokoro-82m"
HOOK = "https://hooks.example.com/tts"


@pytest.fixture
def ids(redis_client: redis.Redis) -> Iterator[Callable[[], str]]:
    used: list[str] = []

    def new() -> str:
        used.append(str(uuid.uuid4()))
        return used[-1]

    yield new
    for jid in used:
        redis_client.delete(KEY_PREFIX + jid)
        redis_client.zrem(DUE_KEY, jid)
        redis_client.zrem(WAIT_KEY, jid)


def record(client: redis.Redis, jid: str) -> tuple[Job, dict[str, str]]:
    raw = client.hgetall(KEY_PREFIX + jid)
    assert raw, f"no record for {jid}"
    return Job.from_hash(raw), raw  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tenant", "priority", "message"),
    [
        ("x" * 65, "normal", "tenant is longer than 64 characters"),
        ("acme corp", "normal", "tenant may hold only letters, digits and . _ : -"),
        ("", "normal", "tenant must be a non-empty string"),
        (7, "normal", "tenant must be a non-empty string"),
        ("acme", "urgent", "priority must be one of interactive, normal, bulk"),
        ("acme", "Interactive", "priority must be one of interactive, normal, bulk"),
        ("acme", 1, "priority must be one of interactive, normal, bulk"),
    ],
)
def test_bad_lanes_are_invalid_input_with_a_clear_message(
    tenant: object, priority: object, message: str
) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        validation.lane(tenant, priority)
    assert caught.value.code == "INVALID_INPUT"
    assert caught.value.message == message


def test_good_lanes() -> None:
    assert validation.lane(None, None) == validation.Lane(None, Priority.NORMAL)
    assert validation.lane("a" * 64, "bulk") == validation.Lane("a" * 64, Priority.BULK)
    assert validation.lane("app.eu-1:web_2", "interactive").priority == Priority.INTERACTIVE
    # The default lane writes no field: a record as before issue 22.
    assert validation.Lane().fields() == {"tenant": None}


@pytest.mark.parametrize("name", [names.SUBMIT_TTS, names.POLL_TTS])
def test_the_lane_is_kept_in_the_record_at_receipt(
    name: str, redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    ctx, _ = make_ctx(redis_client)
    tid = ids()
    args = ["Hello", MODEL] if name == names.SUBMIT_TTS else [ids(), MODEL]
    kwargs = {"tenant": "acme", "priority": "interactive", "job_id": tid}
    assert on_received(ctx, name, tid, args, kwargs) == tid
    job, _ = record(redis_client, tid)
    assert (job.tenant, job.priority) == ("acme", "interactive")


@pytest.mark.parametrize("name", [names.SUBMIT_TTS, names.POLL_TTS])
def test_a_message_that_leaves_them_out_makes_the_record_it_made_before(
    name: str, redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    ctx, _ = make_ctx(redis_client)
    tid = ids()
    args = ["Hello", MODEL] if name == names.SUBMIT_TTS else [ids(), MODEL]
    assert on_received(ctx, name, tid, args, {"job_id": tid}) == tid
    job, raw = record(redis_client, tid)
    assert "tenant" not in raw
    assert "priority" not in raw
    assert (job.tenant, job.priority) == (None, "normal")


@pytest.mark.parametrize(
    "kwargs", [{"priority": "urgent"}, {"tenant": "has space"}, {"tenant": "x" * 65}]
)
@pytest.mark.parametrize("name", [names.SUBMIT_TTS, names.POLL_TTS])
def test_a_bad_lane_fails_the_job_announced(
    name: str, kwargs: dict[str, Any], redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    ctx, outbox = make_ctx(redis_client)
    tid = ids()
    args: list[Any] = ["Hello", MODEL] if name == names.SUBMIT_TTS else [ids(), MODEL]
    step = steps.submit if name == names.SUBMIT_TTS else steps.poll
    d = steps.Delivery(name, tid)
    assert step(ctx, d, *args, job_id=tid, notify_url=HOOK, **kwargs) == tid
    job, _ = record(redis_client, tid)
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert next(iter(kwargs)) in job.outcome["error"]["message"]
    assert outbox.names() == [names.NOTIFY]


class Upstream:
    """NanoGPT answering every status call: pending, at ``position`` (None: generating)."""

    def __init__(self, position: int | None) -> None:
        self.position = position

    def status(self, poll: validation.PollRequest) -> Pending:
        return Pending("pending", self.position)


@pytest.mark.parametrize(
    ("priority", "position", "low_s", "high_s"),
    [
        ("interactive", None, 0.8, 1.0),  # at the head: its own interval
        ("normal", None, 2.4, 3.0),
        ("interactive", 60, 2.4, 3.0),  # far back: three of its intervals at most
        ("normal", 60, 24.0, 30.0),  # 60 places at the prior 1 s, half of it: the cap, 30 s
    ],
)
def test_an_interactive_job_is_polled_at_its_own_interval(
    priority: str,
    position: int | None,
    low_s: float,
    high_s: float,
    redis_client: redis.Redis,
    ids: Callable[[], str],
) -> None:
    """TTS_INTERACTIVE_POLL_INTERVAL (1 s) instead of TTS_POLL_INTERVAL (3 s), jittered down by
    up to 20 %: the audio of an interactive job waits about a second for the poll that finds it,
    and a queue estimate far off costs it three seconds at most."""
    env = {
        "TTS_POLL_INTERVAL": "3",
        "TTS_POLL_MAX_INTERVAL": "30",
        "TTS_INTERACTIVE_POLL_INTERVAL": "1",
    }
    ctx, _ = make_ctx(redis_client, env=env, upstream=Upstream(position))
    jid = ids()
    d = steps.Delivery(names.POLL_TTS, jid)
    assert steps.poll(ctx, d, ids(), MODEL, job_id=jid, priority=priority) == jid
    due_at = redis_client.zscore(WAIT_KEY, jid)
    job, _ = record(redis_client, jid)
    assert due_at is not None
    assert job.seen_at is not None
    assert low_s - 1e-6 <= due_at - job.seen_at <= high_s + 1e-6
