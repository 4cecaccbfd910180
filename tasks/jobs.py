"""Job state in Redis: one hash per job, changed only by small atomic scripts.

This module owns every transition of a job (:mod:`tasks.states` names the states). Each method
below is one transition; it acts only if the job is in the state it expects, so a stale,
duplicated or crafted message meets a transition that refuses it. The guards:

* a **post claim** (``post_attempt`` and ``post_lease_until``): one execution of a submit at a
  time may send the paid POST; the claim is taken before the POST and settled after it;
* a **lease** per chain of polls: ``token`` (random, set when the chain starts) and ``seq`` (the
  number of the poll that is due). A poll message carries both; it may act only while they match,
  and acting moves ``seq`` on, so a stale or doubled poll finds a mismatch and exits;
* a **first-writer-wins outcome**: ``settle`` writes the outcome only if none exists, and the
  notify step claims the right to send with an owner and a lease.

Times are epoch seconds from the store's ``clock`` (``time.time`` in a worker; the simulation's
fake clock in tests/sim): the scripts never read Redis' own clock.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from tasks.states import ACTIVE, FINAL, SEQ_DONE, NotifyState, Status

__all__ = [
    "ACTIVE",
    "DUE_KEY",
    "FINAL",
    "KEY_PREFIX",
    "SEQ_DONE",
    "SPOOL_PREFIX",
    "SUBMIT_WAIT_KEY",
    "WAIT_KEY",
    "Job",
    "JobStore",
]

KEY_PREFIX = "tts:job:"
#: Audio that arrived in a submit's answer, kept until it is stored (base64 text, with a TTL).
SPOOL_PREFIX = "tts:spool:"
#: Sorted set of job ids scored by when each job must next show progress (epoch seconds). A job
#: still in it past that time lost a message (worker killed, failed publish): the reconciler
#: re-sends its current step. Every state change below moves the score in the same script. A job
#: parked in a wait set below is scored at its deadline: only Redis holds it, nothing can lose
#: it, and the releaser that takes it moves the score back (tasks/parking.py).
DUE_KEY = "tts:due"
#: Sorted set of polling job ids scored by when their next poll is due (epoch seconds), when
#: polls wait in Redis (``TTS_POLL_WAIT``): the workers release due ones (tasks/parking.py), so
#: no worker holds a waiting poll in memory. The job hash holds everything the poll needs.
WAIT_KEY = "tts:wait"
#: Sorted set of submitting job ids that wait for the NanoGPT budget (tasks/budget.py), scored
#: by when each first waited: the poll releaser grants them tokens, oldest first.
SUBMIT_WAIT_KEY = "tts:submit-wait"
# ARGV value for "leave the job's check time as it is".
_KEEP = "-"

# Accept a job: create the record only if the job id is new. Returns 1 when this call created it.
_ACCEPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""

# Every guarded transition: act only if each guard field holds its expected value ('' = unset);
# then set the fields, count a poll, renew the TTL, move the check time and park the next poll.
# ARGV: [1] guards, [2] check_at ('' drops it, '-' keeps it), [3] job id, [4] park_at ('' none),
# [5] polls to add, [6] TTL seconds ('' keeps it), then guard pairs, then field pairs.
_TRANSITION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[7 + 2 * i]) or '') ~= ARGV[8 + 2 * i] then return 0 end
end
local first = 7 + 2 * n
if #ARGV >= first then redis.call('HSET', KEYS[1], unpack(ARGV, first)) end
if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[1], 'polls', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
if ARGV[2] == '' then redis.call('ZREM', KEYS[2], ARGV[3])
elseif ARGV[2] ~= '-' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3]) end
return 1
"""

# Settle: the first outcome wins (and, with guards, only from the state they name). The poll
# chain closes, the parked poll and the spooled audio go, the record lives TTL more seconds.
# ARGV: [1] TTL, [2] guards, [3] check_at, [4] job id, then guard pairs, then field pairs.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'outcome') == 1 then return 0 end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[5 + 2 * i]) or '') ~= ARGV[6 + 2 * i] then return 0 end
end
redis.call('HSET', KEYS[1], 'seq', '-1', unpack(ARGV, 5 + 2 * n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[4])
return 1
"""

# The right to send the webhook: free, already ours, or left by an owner whose lease ran out.
_CLAIM_NOTIFY = """
local state = redis.call('HGET', KEYS[1], 'notify_state')
if state and state ~= 'queued' then return 0 end
local owner = redis.call('HGET', KEYS[1], 'notify_owner')
local until_at = tonumber(redis.call('HGET', KEYS[1], 'notify_lease_until') or '0')
if owner and owner ~= ARGV[1] and until_at > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'notify_owner', ARGV[1], 'notify_lease_until', ARGV[3])
return 1
"""

# Count a delivery of step ARGV[1] in the job's own hash and return {count, the hash}. One
# counter per job: steps run one after another, so a new step starts it again at 1, and it
# disappears with the job (a key per step would pile up for a day at hundreds of polls/s).
_COUNT_DELIVERY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {}} end
local n = 1
if redis.call('HGET', KEYS[1], 'delivery_step') == ARGV[1] then
  n = redis.call('HINCRBY', KEYS[1], 'delivery_count', 1)
else
  redis.call('HSET', KEYS[1], 'delivery_step', ARGV[1], 'delivery_count', 1)
end
return {n, redis.call('HGETALL', KEYS[1])}
"""


def _key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def _flatten(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        flat += [name, value if isinstance(value, str) else json.dumps(value)]
    return flat


def _time_arg(at: float | None) -> str:
    return "" if at is None else repr(at)


@dataclass(frozen=True)
class Job:
    """A job as stored; ``outcome`` is the webhook's ``type``/``audio``/``error`` part."""

    job_id: str
    status: str
    model: str | None = None
    run_id: str | None = None
    # What NanoGPT said the generation cost: with the ticket's paymentSource (202), or with the
    # currency of a synchronous 200 JSON answer; None when it did not say (inline audio).
    cost: float | None = None
    payment_source: str | None = None
    currency: str | None = None
    is_api_request: bool = True
    notify_url: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    deadline_at: float | None = None
    next_poll_at: float | None = None
    polls: int = 0
    # POSTs sent for this job (at most one accepted: see tasks/states.py) and the last claim.
    posts: int = 0
    post_lease_until: float | None = None
    queue_position: int | None = None
    # For the schedule: the first queued position seen and when, and since when the job has
    # been at the head of the queue.
    queue_first_position: int | None = None
    queue_first_seen_at: float | None = None
    head_since: float | None = None
    # When the last status answer came, and when the generation is estimated to have started
    # (tasks/poll_value.py): what the releaser ranks waiting polls by.
    seen_at: float | None = None
    gen_start_at: float | None = None
    last_status: str | None = None
    audio_url: str | None = None
    # The audio came in the submit's answer and waits in the spool (SPOOL_PREFIX + job id).
    spooled: bool = False
    content_type: str | None = None
    outcome: dict[str, Any] | None = None
    # Random, set with the outcome: the webhook-id is made from it (tasks/webhooks.py).
    outcome_id: str | None = None
    finished_at: float | None = None
    notify_state: str | None = None
    notify_attempts: int = 0
    notified_at: float | None = None
    not_before: float | None = None
    last_error: str | None = None
    # Retries of the current poll and of the submit after transient faults, kept in the record
    # because a retry that found no budget comes back as a fresh message (Celery's count at 0).
    poll_retries: int = 0
    post_retries: int = 0
    # NanoGPT's X-Request-ID of the last submit or status answer: what its support asks for.
    request_id: str | None = None
    request: dict[str, Any] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    seq: str | None = field(default=None, repr=False)
    submit_owner: str | None = field(default=None, repr=False)
    post_attempt: str | None = field(default=None, repr=False)
    chain_owner: str | None = field(default=None, repr=False)
    # A NanoGPT call the budget granted to this job's next step: ``poll:<seq>`` or ``submit``.
    grant: str | None = field(default=None, repr=False)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Job:
        def num(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) not in (None, "") else None

        def whole(name: str) -> int | None:
            return int(raw[name]) if raw.get(name) not in (None, "", "null") else None

        return cls(
            job_id=raw["job_id"],
            status=raw.get("status", "unknown"),
            model=raw.get("model"),
            run_id=raw.get("run_id"),
            cost=num("cost"),
            payment_source=raw.get("payment_source"),
            currency=raw.get("currency"),
            is_api_request=raw.get("is_api_request", "1") == "1",
            notify_url=raw.get("notify_url"),
            created_at=num("created_at"),
            updated_at=num("updated_at"),
            deadline_at=num("deadline_at"),
            next_poll_at=num("next_poll_at"),
            polls=int(raw.get("polls", "0")),
            posts=int(raw.get("posts", "0")),
            post_lease_until=num("post_lease_until"),
            queue_position=whole("queue_position"),
            queue_first_position=whole("queue_first_position"),
            queue_first_seen_at=num("queue_first_seen_at"),
            head_since=num("head_since"),
            seen_at=num("seen_at"),
            gen_start_at=num("gen_start_at"),
            last_status=raw.get("last_status"),
            audio_url=raw.get("audio_url"),
            spooled=raw.get("spooled") == "1",
            content_type=raw.get("content_type"),
            outcome=json.loads(raw["outcome"]) if raw.get("outcome") else None,
            outcome_id=raw.get("outcome_id"),
            finished_at=num("finished_at"),
            notify_state=raw.get("notify_state"),
            notify_attempts=int(raw.get("notify_attempts", "0")),
            notified_at=num("notified_at"),
            not_before=num("not_before"),
            last_error=raw.get("last_error"),
            poll_retries=int(raw.get("poll_retries") or 0),
            post_retries=int(raw.get("post_retries") or 0),
            request_id=raw.get("request_id"),
            request=json.loads(raw["request"]) if raw.get("request") else None,
            token=raw.get("token"),
            seq=raw.get("seq"),
            submit_owner=raw.get("submit_owner"),
            post_attempt=raw.get("post_attempt"),
            chain_owner=raw.get("chain_owner"),
            grant=raw.get("grant"),
        )

    def holds(self, token: str, seq: int) -> bool:
        """Whether a poll message carrying this lease is the one that is due."""
        return self.status == Status.POLLING and self.token == token and self.seq == str(seq)

    def public(self) -> dict[str, Any]:
        """The job as callers see it (CLI, ``get_job``): no lease internals."""
        hidden = {
            "token",
            "seq",
            "submit_owner",
            "chain_owner",
            "request",
            "post_attempt",
            "grant",
        }
        return {k: v for k, v in self.__dict__.items() if k not in hidden}


class JobStore:
    """Reads and atomically changes job records. One instance per process.

    ``check_at`` arguments say when the job must next show progress (epoch seconds); None takes
    it off the reconciler's watch (the job needs nothing more from us).
    """

    def __init__(
        self, client: redis.Redis, *, ttl_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._clock = clock
        self._accept = client.register_script(_ACCEPT)
        self._transition = client.register_script(_TRANSITION)
        self._settle = client.register_script(_SETTLE)
        self._claim_notify = client.register_script(_CLAIM_NOTIFY)
        self._count_delivery = client.register_script(_COUNT_DELIVERY)

    @property
    def redis(self) -> redis.Redis:
        """The client, for readers of the shared sets (tasks/granting.py)."""
        return self._redis

    @staticmethod
    def key(job_id: str) -> str:
        return _key(job_id)

    def _keys(self, job_id: str) -> list[str]:
        return [_key(job_id), DUE_KEY, WAIT_KEY]

    # --- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        raw = self._redis.hgetall(_key(job_id))
        return Job.from_hash(raw) if raw else None  # type: ignore[arg-type]

    def load(self, job_id: str, *, delivery: str) -> tuple[Job | None, int]:
        """The job, and how many times its step ``delivery`` has started (1 the first time),
        in one round trip. (None, 0) when there is no such job."""
        count, flat = self._count_delivery(keys=[_key(job_id)], args=[delivery])
        if not flat:
            return None, 0
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        return Job.from_hash(raw), int(count)

    def count_delivery(self, job_id: str, delivery: str) -> int:
        """:meth:`load` without the job: the count alone (0 when there is no such job)."""
        return self.load(job_id, delivery=delivery)[1]

    def overdue(self, now: float, *, limit: int) -> list[str]:
        """Job ids whose check time has passed, oldest first."""
        ids = self._redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=limit)
        return [str(job_id) for job_id in ids]

    def spooled_audio(self, job_id: str) -> bytes | None:
        """The audio a submit's answer carried, if it is still in the spool."""
        text = self._redis.get(SPOOL_PREFIX + job_id)
        return None if text is None else base64.b64decode(str(text))

    # --- transitions -------------------------------------------------------------------------

    def create(
        self, job_id: str, fields: dict[str, Any], *, ttl_s: float, check_at: float | None
    ) -> bool:
        """Accept a job: create the record if the job id is new; False if it exists."""
        now = self._clock()
        record = {"job_id": job_id, "created_at": now, "updated_at": now, **fields}
        argv: list[str | int] = [
            max(1, int(ttl_s) + self._ttl_s),
            _time_arg(check_at),
            job_id,
            *_flatten(record),
        ]
        return bool(self._accept(keys=self._keys(job_id), args=argv))

    def _move(
        self,
        job_id: str,
        guards: Mapping[str, str],
        fields: dict[str, Any],
        *,
        check_at: float | str | None = _KEEP,
        park_at: float | None = None,
        polls: int = 0,
        ttl_s: float | None = None,
        park_key: str = WAIT_KEY,
    ) -> bool:
        check = check_at if isinstance(check_at, str) else _time_arg(check_at)
        argv: list[str | int] = [
            len(guards),
            check,
            job_id,
            _time_arg(park_at),
            polls,
            "" if ttl_s is None else max(1, int(ttl_s) + self._ttl_s),
        ]
        for name, expected in guards.items():
            argv += [name, expected]
        argv += _flatten({**fields, "updated_at": self._clock()})
        keys = [_key(job_id), DUE_KEY, park_key]
        return bool(self._transition(keys=keys, args=argv))

    def update(self, job_id: str, fields: dict[str, Any], *, check_at: float | None = None) -> None:
        """Unguarded write of informational fields, and optionally a new check time."""
        flat = _flatten({**fields, "updated_at": self._clock()})
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(job_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
            if check_at is not None:
                pipe.zadd(DUE_KEY, {job_id: check_at}, xx=True)
            pipe.execute()

    def begin_post(
        self,
        job_id: str,
        owner: str,
        attempt: str,
        *,
        posts: int,
        lease_until: float,
        check_at: float,
    ) -> bool:
        """submitting → posting: this execution (``attempt``) of the submit message ``owner``
        alone may send the POST, the job's ``posts``-th; the claim runs out at ``lease_until``."""
        return self._move(
            job_id,
            {"status": Status.SUBMITTING, "submit_owner": owner},
            {
                "status": Status.POSTING,
                "post_attempt": attempt,
                "post_lease_until": lease_until,
                "posts": posts,
            },
            check_at=check_at,
        )

    def post_refused(
        self, job_id: str, attempt: str, fields: dict[str, Any], *, check_at: float
    ) -> bool:
        """posting → submitting: the POST provably was not accepted; it may be sent again."""
        return self._move(
            job_id,
            {"status": Status.POSTING, "post_attempt": attempt},
            {**fields, "status": Status.SUBMITTING},
            check_at=check_at,
        )

    def post_accepted(
        self,
        job_id: str,
        attempt: str,
        fields: dict[str, Any],
        *,
        deadline_at: float,
        check_at: float,
        park_at: float | None = None,
    ) -> str | None:
        """posting → polling: the ticket starts a poll chain; returns its token (None if this
        attempt no longer holds the claim). ``park_at``: park the first poll in Redis."""
        token = uuid.uuid4().hex
        moved = self._move(
            job_id,
            {"status": Status.POSTING, "post_attempt": attempt},
            {
                **fields,
                "status": Status.POLLING,
                "token": token,
                "seq": "0",
                "deadline_at": deadline_at,
            },
            check_at=check_at,
            park_at=park_at,
            ttl_s=deadline_at - self._clock(),
        )
        return token if moved else None

    def audio_ready(
        self, job_id: str, attempt: str, fields: dict[str, Any], *, check_at: float
    ) -> bool:
        """posting → downloading: the submit answered with the audio (a link, or spooled)."""
        return self._move(
            job_id,
            {"status": Status.POSTING, "post_attempt": attempt},
            {**fields, "status": Status.DOWNLOADING},
            check_at=check_at,
        )

    def spool(self, job_id: str, audio: bytes, *, ttl_s: float) -> None:
        """Keep audio that arrived in a submit's answer until it is stored (settle drops it)."""
        self._redis.set(
            SPOOL_PREFIX + job_id, base64.b64encode(audio).decode(), ex=max(1, int(ttl_s))
        )

    def drop_spool(self, job_id: str) -> None:
        self._redis.delete(SPOOL_PREFIX + job_id)

    def start_chain(
        self, job_id: str, fields: dict[str, Any], *, deadline_at: float, check_at: float
    ) -> str | None:
        """Accept a poll chain started by name; returns its token, or None for a duplicate."""
        token = uuid.uuid4().hex
        created = self.create(
            job_id,
            {
                **fields,
                "status": Status.POLLING,
                "token": token,
                "seq": "0",
                "deadline_at": deadline_at,
            },
            ttl_s=deadline_at - self._clock(),
            check_at=check_at,
        )
        return token if created else None

    def advance(
        self,
        job_id: str,
        token: str,
        seq: int,
        fields: dict[str, Any],
        *,
        check_at: float,
        park_at: float | None = None,
    ) -> bool:
        """Next poll: move the lease from poll ``seq`` to ``seq + 1``; False if this poll is
        not current. ``park_at``: park the next poll in Redis until then, in the same step."""
        return self._move(
            job_id,
            {"status": Status.POLLING, "token": token, "seq": str(seq)},
            {**fields, "seq": str(seq + 1)},
            check_at=check_at,
            park_at=park_at,
            polls=1,
        )

    def end_polling(
        self, job_id: str, token: str, seq: int, fields: dict[str, Any], *, check_at: float
    ) -> bool:
        """polling → downloading (the audio is ready); False if this poll is not current."""
        return self._move(
            job_id,
            {"status": Status.POLLING, "token": token, "seq": str(seq)},
            {**fields, "status": Status.DOWNLOADING, "seq": SEQ_DONE},
            check_at=check_at,
            polls=1,
        )

    def settle(
        self,
        job_id: str,
        outcome: dict[str, Any],
        *,
        check_at: float,
        lease: tuple[str, int] | None = None,
        guards: Mapping[str, str] | None = None,
        polls: int | None = None,
    ) -> bool:
        """→ completed / failed: record the job's outcome if it has none yet; True for the one
        caller that did. ``lease``: only the current poll may settle; ``guards``: only while
        these fields hold these values. ``polls``: the poll count including the one that
        ended the job, when a poll did."""
        now = self._clock()
        status = Status.COMPLETED if outcome["type"] == "tts.completed" else Status.FAILED
        fields = {
            "polls": polls,
            "outcome": outcome,
            "status": status,
            "finished_at": now,
            "updated_at": now,
            "notify_state": NotifyState.QUEUED,
            # Names this outcome (its webhook-id): the same for every attempt at its webhook,
            # new if the job id is used again once this record has expired.
            "outcome_id": uuid.uuid4().hex,
        }
        expected = dict(guards or {})
        if lease is not None:
            expected |= {"token": lease[0], "seq": str(lease[1])}
        argv: list[str | int] = [self._ttl_s, len(expected), _time_arg(check_at), job_id]
        for name, value in expected.items():
            argv += [name, value]
        argv += _flatten(fields)
        keys = [*self._keys(job_id), SPOOL_PREFIX + job_id, SUBMIT_WAIT_KEY]
        return bool(self._settle(keys=keys, args=argv))

    def claim_notify(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Take the right to send this job's webhook (re-entrant for the same task id)."""
        now = self._clock()
        argv = [owner, repr(now), repr(now + lease_s)]
        return bool(self._claim_notify(keys=[_key(job_id)], args=argv))

    def finish_notify(self, job_id: str, state: str, **fields: Any) -> None:
        """Record how delivery ended (delivered, gone, refused, expired, none): nothing is due."""
        flat = _flatten({"notify_state": state, "updated_at": self._clock(), **fields})
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(job_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
            pipe.zrem(DUE_KEY, job_id)
            pipe.execute()

    def defer_poll(
        self,
        job_id: str,
        token: str,
        seq: int,
        *,
        due_at: float,
        deliveries: int,
        deadline_at: float,
    ) -> bool:
        """The current poll found no budget: park it again, due at ``due_at``, without making
        its call. Not a retry, and not a delivery: the count this delivery added is taken back,
        so a poll deferred many times is never mistaken for a poison message. Parked, it is
        watched only at its deadline (``deadline_at``): the releaser moves its check time back
        when it takes the job (tasks/parking.py)."""
        return self._move(
            job_id,
            {"status": Status.POLLING, "token": token, "seq": str(seq)},
            {"delivery_count": max(0, deliveries - 1)},
            check_at=deadline_at,
            park_at=due_at,
        )

    def defer_submit(
        self,
        job_id: str,
        owner: str,
        *,
        deliveries: int,
        check_at: float,
        queued_at: float,
    ) -> bool:
        """The submit found no budget: wait in :data:`SUBMIT_WAIT_KEY`, in line by
        ``queued_at`` (when the job was accepted), without sending the POST; the delivery is
        taken back as for a poll. One script: a worker killed in between cannot leave the job
        out of line, watched only at its deadline."""
        return self._move(
            job_id,
            {"status": Status.SUBMITTING, "submit_owner": owner},
            {"delivery_count": max(0, deliveries - 1)},
            check_at=check_at,
            park_at=queued_at,
            park_key=SUBMIT_WAIT_KEY,
        )

    def waiting_for_budget(self, job_id: str) -> bool:
        """Whether the job is parked: a poll in the wait set or a submit waiting for budget."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(WAIT_KEY, job_id)
            pipe.zscore(SUBMIT_WAIT_KEY, job_id)
            poll, submit = pipe.execute()
        return poll is not None or submit is not None

    def unpark(self, job_id: str) -> None:
        """Take the job off both wait sets (the reconciler sends its step itself)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(WAIT_KEY, job_id)
            pipe.zrem(SUBMIT_WAIT_KEY, job_id)
            pipe.execute()

    def park(self, job_id: str, due_at: float) -> None:
        """Park the job's current poll in Redis until ``due_at`` (epoch seconds)."""
        self._redis.zadd(WAIT_KEY, {job_id: due_at})

    def recheck_at(self, job_id: str, check_at: float | None) -> None:
        """Move (or, with None, drop) one job's check time."""
        if check_at is None:
            self._redis.zrem(DUE_KEY, job_id)
        else:
            self._redis.zadd(DUE_KEY, {job_id: check_at})
