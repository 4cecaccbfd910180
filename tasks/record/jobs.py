"""Job state in Redis: one hash per job, changed only by small atomic scripts.

This module owns every transition of a job (:mod:`tasks.record.states` names the states). Each
method below is one transition; it acts only if the job is in the state it expects, so a stale,
duplicated or crafted message meets a transition that refuses it. The guards:

* a **post claim** (``post_attempt`` and ``post_lease_until``): one execution of a submit at a
  time may send the paid POST; the claim is taken before the POST and settled after it;
* a **lease** per chain of polls: ``token`` (random, set when the chain starts) and ``seq`` (the
  number of the poll that is due). A poll message carries both; it may act only while they match,
  and acting moves ``seq`` on, so a stale or doubled poll finds a mismatch and exits;
* a **first-writer-wins outcome**: ``settle`` writes the outcome only if none exists, and the
  notify step claims the right to send with an owner and a lease.

Every transition is safe to run twice for one caller (a reply lost after the script ran, then
the step's own retry; the client itself never re-sends, tasks/adapters/runtime.py): it
recognises the state its own earlier run left, by the caller's id (``post_attempt`` for the
submit's claim, a per-execution ``poll_attempt`` for a poll, ``outcome_id`` for settle, the
message's task id for create), and answers as that run did, changing nothing. A duplicate from
anyone else is still refused. The delivery count (:meth:`JobStore.load`) is the exception: run
twice, it counts two.

Times are epoch seconds from the store's ``clock`` (``time.time`` in a worker; the simulation's
fake clock in tests/sim): the scripts never read Redis' own clock.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from tasks.record.states import ACTIVE, FINAL, SEQ_DONE, NotifyState, Status

__all__ = [
    "ACTIVE",
    "DUE_KEY",
    "FINAL",
    "KEY_PREFIX",
    "PARKED_FIELDS",
    "SEQ_DONE",
    "SPOOL_MAX_BYTES",
    "SPOOL_PREFIX",
    "WAIT_KEY",
    "Job",
    "JobStore",
]

KEY_PREFIX = "tts:job:"
#: Audio that arrived in a submit's answer, kept until it is stored (base64 text, with a TTL).
SPOOL_PREFIX = "tts:spool:"
#: The largest audio the spool keeps (bytes; 256 KiB, about 8 s of 16-bit 16 kHz WAV): a submit
#: answered with more stores it in the audio store straight away. Redis holds state; a spool of
#: the 50 MiB TTS_MAX_AUDIO_BYTES took 84 MB of Redis for one key.
SPOOL_MAX_BYTES = 256 * 1024
#: Sorted set of job ids scored by when each job must next show progress (epoch seconds). A job
#: still in it past that time lost a message (worker killed, failed publish): the reconciler
#: re-sends its current step. Every state change below moves the score in the same script. A job
#: parked in a wait set below is scored at its deadline: only Redis holds it, nothing can lose
#: it, and the releaser that takes it moves the score back (tasks/sweeps/granting.py).
DUE_KEY = "tts:due"
#: Sorted set of every job that waits in Redis for its next NanoGPT call, on every broker: the
#: one place a waiting step waits (tasks/sweeps/granting.py releases it), so no worker and no
#: broker holds a waiting job. A poll is scored by when it is due (epoch seconds); a submit that
#: found no budget by :func:`submit_score`, which puts every submit before every poll, oldest
#: first, and always due. The job hash holds everything the step's message needs.
WAIT_KEY = "tts:wait"
#: What a submit's score is below its acceptance time: every waiting submit scores below 0
#: (until the year 2286), every poll at its due time (above 0), so one range reads each kind.
SUBMIT_OFFSET_S = 1e10
#: The lowest score of a parked poll: submits score below it, polls from it.
POLLS_FROM = 0.0


def submit_score(queued_at: float) -> float:
    """A waiting submit's score in :data:`WAIT_KEY`, from when its job was accepted."""
    return queued_at - SUBMIT_OFFSET_S


#: The hash fields a parked poll is ranked by (HMGET), by the releaser (tasks/sweeps/granting.py;
#: its message is built from the whole record once the poll is taken).
PARKED_FIELDS = (
    "status",
    "seen_at",
    "queue_position",
    "queue_first_position",
    "queue_first_seen_at",
    "gen_start_at",
    "deadline_at",
)
# ARGV value for "leave the job's check time as it is".
_KEEP = "-"

# Accept a job: create the record only if the job id is new. Returns 1 when this call created it,
# 2 when the record exists and field ARGV[4] holds ARGV[5] (this same caller made it: a re-run),
# 0 otherwise. ARGV: [1] TTL, [2] check_at ('' none), [3] job id, [4] [5] owner pair ('' none).
_ACCEPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], ARGV[4]) == ARGV[5] then return 2 end
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""

# Every guarded transition: act only if each guard field holds its expected value ('' = unset);
# then set the fields, drop the named ones, count a poll, renew the TTL, move the check time and
# park the next poll. Run again after it acted (its reply lost), it finds the job as it left
# it: the "done" pairs (the state this very caller's run leaves behind) all hold, and it
# answers 2 ("done already") and changes nothing.
# ARGV: [1] guards, [2] check_at ('' drops it, '-' keeps it), [3] job id, [4] park_at ('' none),
# [5] polls to add, [6] TTL seconds ('' keeps it), [7] done pairs, [8] fields to drop, then
# guard pairs, then done pairs, then the names to drop, then field pairs.
_TRANSITION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[7])
local k = tonumber(ARGV[8])
local done = 9 + 2 * n
if m > 0 then
  local same = true
  for i = 0, m - 1 do
    if (redis.call('HGET', KEYS[1], ARGV[done + 2 * i]) or '') ~= ARGV[done + 1 + 2 * i] then
      same = false
      break
    end
  end
  if same then return 2 end
end
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[9 + 2 * i]) or '') ~= ARGV[10 + 2 * i] then return 0 end
end
local drop = done + 2 * m
if k > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, drop, drop + k - 1)) end
local first = drop + k
if #ARGV >= first then redis.call('HSET', KEYS[1], unpack(ARGV, first)) end
if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[1], 'polls', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
if ARGV[2] == '' then redis.call('ZREM', KEYS[2], ARGV[3])
elseif ARGV[2] ~= '-' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3]) end
return 1
"""

# Settle: the first outcome wins (and, with guards, only from the state they name). The poll
# chain closes, the parked poll and the spooled audio go, the caller's text goes (nothing will
# send it again), the record lives TTL more seconds. An outcome already there under this
# caller's outcome id is this caller's own earlier run (its reply lost): 2, nothing changes.
# ARGV: [1] TTL, [2] guards, [3] check_at, [4] job id, [5] outcome id, then guard pairs, then
# field pairs.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'outcome') == 1 then
  if redis.call('HGET', KEYS[1], 'outcome_id') == ARGV[5] then return 2 end
  return 0
end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[6 + 2 * i]) or '') ~= ARGV[7 + 2 * i] then return 0 end
end
redis.call('HDEL', KEYS[1], 'request')
redis.call('HSET', KEYS[1], 'seq', '-1', 'outcome_id', ARGV[5], unpack(ARGV, 6 + 2 * n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
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


def _poll_attempt(attempt: str | None) -> dict[str, str]:
    return {} if attempt is None else {"poll_attempt": attempt}


def _poll_done(status: str, token: str, seq: str, attempt: str | None) -> dict[str, str] | None:
    """What a poll's transition leaves behind, naming the execution that moved it."""
    if attempt is None:
        return None
    return {"status": status, "token": token, "seq": seq, "poll_attempt": attempt}


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
    # POSTs sent for this job (at most one accepted: see tasks/record/states.py) and the last claim.
    posts: int = 0
    post_lease_until: float | None = None
    queue_position: int | None = None
    # For the schedule: the first queued position seen and when, and since when the job has
    # been at the head of the queue.
    queue_first_position: int | None = None
    queue_first_seen_at: float | None = None
    head_since: float | None = None
    # When the last status answer came, and when the generation is estimated to have started
    # (tasks/pacing/poll_value.py): what the releaser ranks waiting polls by.
    seen_at: float | None = None
    gen_start_at: float | None = None
    last_status: str | None = None
    audio_url: str | None = None
    # The audio came in the submit's answer and waits in the spool (SPOOL_PREFIX + job id).
    spooled: bool = False
    # The audio came in the submit's answer and was stored by the submit (the webhook's
    # ``audio`` object, tasks/audio/storage.py): the download step only records it.
    stored_audio: dict[str, Any] | None = None
    content_type: str | None = None
    outcome: dict[str, Any] | None = None
    # Random, set with the outcome: the webhook-id is made from it (tasks/webhooks/delivery.py).
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
    # The attempt whose POST left (marked just before sending): a claim without it sent nothing.
    post_sent: str | None = field(default=None, repr=False)
    chain_owner: str | None = field(default=None, repr=False)
    # A NanoGPT call the budget granted to this job's next step: ``poll:<seq>`` or ``submit``.
    grant: str | None = field(default=None, repr=False)
    # The task id of the tts.cancel that ended the job, so that message, run again (or run
    # after the worker that received it already acted: tasks/adapters/received.py), says
    # "cancelled".
    cancel_id: str | None = field(default=None, repr=False)

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
            stored_audio=json.loads(raw["stored_audio"]) if raw.get("stored_audio") else None,
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
            post_sent=raw.get("post_sent"),
            chain_owner=raw.get("chain_owner"),
            grant=raw.get("grant"),
            cancel_id=raw.get("cancel_id"),
        )

    @classmethod
    def parked(cls, job_id: str, values: Sequence[str | None]) -> Job:
        """The job from its :data:`PARKED_FIELDS` (HMGET's answer, None: unset). A record that
        expired meanwhile reads as failed: its poll has nothing to do."""
        raw = {"job_id": job_id, "status": Status.FAILED}
        raw |= {k: v for k, v in zip(PARKED_FIELDS, values, strict=True) if v is not None}
        return cls.from_hash(raw)

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
            "post_sent",
            "grant",
            "cancel_id",
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
        """The client, for readers of the shared sets (tasks/sweeps/granting.py)."""
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
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        ttl_s: float,
        check_at: float | None,
        owner: str | None = None,
    ) -> bool:
        """Accept a job: create the record if the job id is new; False if it exists.

        ``owner``: the field that names who creates it (``submit_owner``, ``chain_owner``,
        ``created_by``), whose value in ``fields`` is the caller's task id: a record that
        already holds it is this caller's own (a re-run, or a redelivery of the same
        message), and the answer is True again, as it was the first time.
        """
        return self._create(job_id, fields, ttl_s=ttl_s, check_at=check_at, owner=owner) > 0

    def _create(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        ttl_s: float,
        check_at: float | None,
        owner: str | None,
    ) -> int:
        now = self._clock()
        record = {"job_id": job_id, "created_at": now, "updated_at": now, **fields}
        mine = ["", ""] if owner is None else [owner, str(fields[owner])]
        argv: list[str | int] = [
            max(1, int(ttl_s) + self._ttl_s),
            _time_arg(check_at),
            job_id,
            *mine,
            *_flatten(record),
        ]
        return int(self._accept(keys=self._keys(job_id), args=argv))

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
        done: Mapping[str, str] | None = None,
        drop: tuple[str, ...] = (),
    ) -> int:
        """One guarded transition: 1 when it acted, 2 when ``done`` (the state this caller's
        own run leaves behind) already holds, 0 when refused. ``drop``: fields to delete."""
        check = check_at if isinstance(check_at, str) else _time_arg(check_at)
        after = dict(done or {})
        argv: list[str | int] = [
            len(guards),
            check,
            job_id,
            _time_arg(park_at),
            polls,
            "" if ttl_s is None else max(1, int(ttl_s) + self._ttl_s),
            len(after),
            len(drop),
        ]
        for name, expected in [*guards.items(), *after.items()]:
            argv += [name, expected]
        argv += drop
        argv += _flatten({**fields, "updated_at": self._clock()})
        return int(self._transition(keys=self._keys(job_id), args=argv))

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
        alone may send the POST, the job's ``posts``-th; the claim runs out at ``lease_until``.
        Run again by the same execution (its reply lost), it finds its own claim: True."""
        return bool(
            self._move(
                job_id,
                {"status": Status.SUBMITTING, "submit_owner": owner},
                {
                    "status": Status.POSTING,
                    "post_attempt": attempt,
                    "post_lease_until": lease_until,
                    "posts": posts,
                    # Not sent yet: post_sent marks it just before it leaves.
                    "post_sent": "",
                },
                check_at=check_at,
                done={"status": Status.POSTING, "post_attempt": attempt},
            )
        )

    def post_sent(self, job_id: str, attempt: str) -> bool:
        """The claim's POST is about to leave: marked first, so a claim whose POST never left
        (its worker died, or its reply was lost, before sending) is never taken for one that
        may have been billed. False if ``attempt`` no longer holds the claim: do not send.
        Running it twice marks the same attempt twice."""
        return bool(
            self._move(
                job_id,
                {"status": Status.POSTING, "post_attempt": attempt},
                {"post_sent": attempt},
            )
        )

    def take_over_post(
        self, job_id: str, lost: str, attempt: str, *, lease_until: float, check_at: float
    ) -> bool:
        """posting → posting under ``attempt``: the claim ``lost`` was taken by an execution
        that never learnt it had it, so sent nothing; only one retry (of possibly duplicated
        copies) wins it and may send the POST. Run again by the same execution: True."""
        return bool(
            self._move(
                job_id,
                {"status": Status.POSTING, "post_attempt": lost},
                {"post_attempt": attempt, "post_lease_until": lease_until, "post_sent": ""},
                check_at=check_at,
                done={"status": Status.POSTING, "post_attempt": attempt},
            )
        )

    def post_refused(
        self, job_id: str, attempt: str, fields: dict[str, Any], *, check_at: float
    ) -> bool:
        """posting → submitting: the POST provably was not accepted (or never left); it may
        be sent again. Run again by the same execution, it finds the claim it gave back."""
        return bool(
            self._move(
                job_id,
                {"status": Status.POSTING, "post_attempt": attempt},
                {**fields, "status": Status.SUBMITTING},
                check_at=check_at,
                done={"status": Status.SUBMITTING, "post_attempt": attempt},
            )
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
        attempt no longer holds the claim). ``park_at``: park the first poll in Redis. The
        caller's text goes: NanoGPT has it, nothing will send it again. Run again by the same
        attempt, it returns the token its first run set."""
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
            done={"status": Status.POLLING, "post_attempt": attempt},
            drop=("request",),
        )
        if moved == 2:
            return str(self._redis.hget(_key(job_id), "token") or "") or None
        return token if moved else None

    def audio_ready(
        self, job_id: str, attempt: str, fields: dict[str, Any], *, check_at: float
    ) -> bool:
        """posting → downloading: the submit answered with the audio (a link, or the bytes
        themselves). The caller's text goes, as with :meth:`post_accepted`. Run again by the
        same attempt, it finds the job it moved: True."""
        return bool(
            self._move(
                job_id,
                {"status": Status.POSTING, "post_attempt": attempt},
                {**fields, "status": Status.DOWNLOADING},
                check_at=check_at,
                done={"status": Status.DOWNLOADING, "post_attempt": attempt},
                drop=("request",),
            )
        )

    def spool(self, job_id: str, audio: bytes, *, ttl_s: float) -> None:
        """Keep audio that arrived in a submit's answer until it is stored (settle drops it).

        Only small audio (:data:`SPOOL_MAX_BYTES`): Redis holds state, not payloads. Larger
        audio goes to the audio store straight from the submit (tasks/steps/submit.py).
        Raises ValueError above the limit."""
        if len(audio) > SPOOL_MAX_BYTES:
            raise ValueError(f"{len(audio)} bytes of audio is over the spool's {SPOOL_MAX_BYTES}")
        self._redis.set(
            SPOOL_PREFIX + job_id, base64.b64encode(audio).decode(), ex=max(1, int(ttl_s))
        )

    def drop_spool(self, job_id: str) -> None:
        self._redis.delete(SPOOL_PREFIX + job_id)

    def start_chain(
        self, job_id: str, fields: dict[str, Any], *, deadline_at: float, check_at: float
    ) -> str | None:
        """Accept a poll chain started by name; returns its token, or None for a duplicate.

        With ``chain_owner`` in ``fields`` (the message's task id), a chain this same message
        started already (a re-run, a redelivery) answers with that chain's token while its
        first poll is still due; the poll's lease then decides whether it may act."""
        token = uuid.uuid4().hex
        created = self._create(
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
            owner="chain_owner" if fields.get("chain_owner") else None,
        )
        if created == 2:
            known, seq = self._redis.hmget(_key(job_id), ["token", "seq"])
            return str(known) if known and seq == "0" else None
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
        attempt: str | None = None,
    ) -> bool:
        """Next poll: move the lease from poll ``seq`` to ``seq + 1``; False if this poll is
        not current. ``park_at``: park the next poll in Redis until then, in the same step.
        ``attempt``: this execution's own id (random): run again by it, the transition finds
        the lease it moved and answers True; a duplicate message (another execution of poll
        ``seq``) still finds a mismatch."""
        return bool(
            self._move(
                job_id,
                {"status": Status.POLLING, "token": token, "seq": str(seq)},
                {**fields, "seq": str(seq + 1), **_poll_attempt(attempt)},
                check_at=check_at,
                park_at=park_at,
                polls=1,
                done=_poll_done(Status.POLLING, token, str(seq + 1), attempt),
            )
        )

    def end_polling(
        self,
        job_id: str,
        token: str,
        seq: int,
        fields: dict[str, Any],
        *,
        check_at: float,
        attempt: str | None = None,
    ) -> bool:
        """polling → downloading (the audio is ready); False if this poll is not current.
        ``attempt``: as for :meth:`advance`."""
        return bool(
            self._move(
                job_id,
                {"status": Status.POLLING, "token": token, "seq": str(seq)},
                {**fields, "status": Status.DOWNLOADING, "seq": SEQ_DONE, **_poll_attempt(attempt)},
                check_at=check_at,
                polls=1,
                done=_poll_done(Status.DOWNLOADING, token, SEQ_DONE, attempt),
            )
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
        cancel_id: str | None = None,
        outcome_id: str | None = None,
    ) -> bool:
        """→ completed / failed: record the job's outcome if it has none yet; True for the one
        caller that did. ``lease``: only the current poll may settle; ``guards``: only while
        these fields hold these values. ``polls``: the poll count including the one that
        ended the job, when a poll did. ``cancel_id``: the cancel message that ends it.
        ``outcome_id``: names the outcome (random if not given); an outcome already recorded
        under it is this caller's own: True again."""
        now = self._clock()
        status = Status.COMPLETED if outcome["type"] == "tts.completed" else Status.FAILED
        fields = {
            "polls": polls,
            "outcome": outcome,
            "status": status,
            "finished_at": now,
            "updated_at": now,
            "notify_state": NotifyState.QUEUED,
            "cancel_id": cancel_id,
        }
        # Names this outcome (its webhook-id): the same for every attempt at its webhook, new if
        # the job id is used again once this record has expired.
        outcome_id = outcome_id or uuid.uuid4().hex
        expected = dict(guards or {})
        if lease is not None:
            expected |= {"token": lease[0], "seq": str(lease[1])}
        argv: list[str | int] = [
            self._ttl_s,
            len(expected),
            _time_arg(check_at),
            job_id,
            outcome_id,
        ]
        for name, value in expected.items():
            argv += [name, value]
        argv += _flatten(fields)
        keys = [*self._keys(job_id), SPOOL_PREFIX + job_id]
        return bool(self._settle(keys=keys, args=argv))

    def claim_notify(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Take the right to send this job's webhook (re-entrant for the same task id, so a
        re-run answers as the first run did)."""
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
        when it takes the job (tasks/sweeps/granting.py)."""
        # Run twice, it writes the same count and the same due time: the same answer.
        return bool(
            self._move(
                job_id,
                {"status": Status.POLLING, "token": token, "seq": str(seq)},
                {"delivery_count": max(0, deliveries - 1)},
                check_at=deadline_at,
                park_at=due_at,
            )
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
        """The submit found no budget: wait in :data:`WAIT_KEY` with the polls, in line by
        ``queued_at`` (when the job was accepted; :func:`submit_score`), without sending the
        POST; the delivery is taken back as for a poll. One script: a worker killed in between
        cannot leave the job out of line, watched only at its deadline."""
        # Run twice, it writes the same count and the same place in line: the same answer.
        return bool(
            self._move(
                job_id,
                {"status": Status.SUBMITTING, "submit_owner": owner},
                {"delivery_count": max(0, deliveries - 1)},
                check_at=check_at,
                park_at=submit_score(queued_at),
            )
        )

    def parked(self, job_id: str) -> bool:
        """Whether the job waits in :data:`WAIT_KEY` (a poll for its time or for budget, a
        submit for budget)."""
        return self._redis.zscore(WAIT_KEY, job_id) is not None

    def unpark(self, job_id: str) -> None:
        """Take the job out of the wait set (the reconciler sends its step itself)."""
        self._redis.zrem(WAIT_KEY, job_id)

    def park(self, job_id: str, due_at: float) -> None:
        """Park the job's current poll in Redis until ``due_at`` (epoch seconds)."""
        self._redis.zadd(WAIT_KEY, {job_id: due_at})

    def recheck_at(self, job_id: str, check_at: float | None) -> None:
        """Move (or, with None, drop) one job's check time."""
        if check_at is None:
            self._redis.zrem(DUE_KEY, job_id)
        else:
            self._redis.zadd(DUE_KEY, {job_id: check_at})
