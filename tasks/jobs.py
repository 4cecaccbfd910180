"""Job state in Redis: one hash per job, changed only by small atomic scripts.

Two guards make redelivered or duplicated messages harmless:

* a **lease** per chain of polls: ``token`` (random, set when the chain starts) and ``seq`` (the
  number of the poll that is due). A poll message carries both; it may act only while they match,
  and acting moves ``seq`` on, so a stale or doubled poll finds a mismatch and exits;
* a **first-writer-wins outcome**: ``settle`` writes the outcome only if none exists, and the
  notify step claims the right to send with an owner and a lease.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

KEY_PREFIX = "tts:job:"
#: Sorted set of job ids scored by when each job must next show progress (epoch seconds). A job
#: still in it past that time lost a message (worker killed, failed publish): the reconciler
#: re-sends its current step. Every state change below moves the score in the same script.
DUE_KEY = "tts:due"
#: Sorted set of polling job ids scored by when their next poll is due (epoch seconds), when
#: polls wait in Redis (``TTS_POLL_WAIT``): the workers release due ones (tasks/parking.py), so
#: no worker holds a waiting poll in memory. The job hash holds everything the poll needs.
WAIT_KEY = "tts:wait"
# A poll chain that finished (or was superseded) moves ``seq`` here, which no message carries.
SEQ_DONE = "-1"
ACTIVE = frozenset({"submitting", "polling", "downloading"})
FINAL = frozenset({"completed", "failed"})

# Shared tail of every script: move the job in the due set (ARGV[n] == '' removes it).
_DUE = """
local function due(job_id, check_at)
  if check_at == '' then redis.call('ZREM', KEYS[2], job_id)
  else redis.call('ZADD', KEYS[2], check_at, job_id) end
end
"""

# Create the record only if the job id is new. Returns 1 when this call created it.
_CREATE = (
    _DUE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
due(ARGV[3], ARGV[2])
return 1
"""
)

# Compare-and-set on the poll lease: act only if token and seq match; then set seq and fields,
# and park the next poll until ARGV[6] when it is not ''.
_ADVANCE = (
    _DUE
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[3], unpack(ARGV, 7))
redis.call('HINCRBY', KEYS[1], 'polls', 1)
due(ARGV[5], ARGV[4])
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5]) end
return 1
"""
)

# First outcome wins. With a lease (ARGV[2] ~= ''), only the current poll may settle.
_SETTLE = (
    _DUE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'outcome') == 1 then return 0 end
if ARGV[2] ~= '' then
  if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
  if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[3] then return 0 end
end
redis.call('HSET', KEYS[1], 'seq', '-1', unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
due(ARGV[5], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[5])
return 1
"""
)

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
_DELIVERED = """
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


@dataclass(frozen=True)
class Job:
    """A job as stored; ``outcome`` is the webhook's ``type``/``audio``/``error`` part."""

    job_id: str
    status: str
    model: str | None = None
    run_id: str | None = None
    cost: float | None = None
    payment_source: str | None = None
    is_api_request: bool = True
    notify_url: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    deadline_at: float | None = None
    next_poll_at: float | None = None
    polls: int = 0
    queue_position: int | None = None
    # For the schedule: the first queued position seen and when, and since when the job has
    # been at the head of the queue.
    queue_first_position: int | None = None
    queue_first_seen_at: float | None = None
    head_since: float | None = None
    last_status: str | None = None
    audio_url: str | None = None
    outcome: dict[str, Any] | None = None
    finished_at: float | None = None
    notify_state: str | None = None
    notify_attempts: int = 0
    notified_at: float | None = None
    not_before: float | None = None
    last_error: str | None = None
    request: dict[str, Any] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    seq: str | None = field(default=None, repr=False)
    submit_owner: str | None = field(default=None, repr=False)
    chain_owner: str | None = field(default=None, repr=False)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Job:
        def num(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) not in (None, "") else None

        position = raw.get("queue_position")
        return cls(
            job_id=raw["job_id"],
            status=raw.get("status", "unknown"),
            model=raw.get("model"),
            run_id=raw.get("run_id"),
            cost=num("cost"),
            payment_source=raw.get("payment_source"),
            is_api_request=raw.get("is_api_request", "1") == "1",
            notify_url=raw.get("notify_url"),
            created_at=num("created_at"),
            updated_at=num("updated_at"),
            deadline_at=num("deadline_at"),
            next_poll_at=num("next_poll_at"),
            polls=int(raw.get("polls", "0")),
            queue_position=int(position) if position not in (None, "", "null") else None,
            queue_first_position=(
                int(raw["queue_first_position"]) if raw.get("queue_first_position") else None
            ),
            queue_first_seen_at=num("queue_first_seen_at"),
            head_since=num("head_since"),
            last_status=raw.get("last_status"),
            audio_url=raw.get("audio_url"),
            outcome=json.loads(raw["outcome"]) if raw.get("outcome") else None,
            finished_at=num("finished_at"),
            notify_state=raw.get("notify_state"),
            notify_attempts=int(raw.get("notify_attempts", "0")),
            notified_at=num("notified_at"),
            not_before=num("not_before"),
            last_error=raw.get("last_error"),
            request=json.loads(raw["request"]) if raw.get("request") else None,
            token=raw.get("token"),
            seq=raw.get("seq"),
            submit_owner=raw.get("submit_owner"),
            chain_owner=raw.get("chain_owner"),
        )

    def holds(self, token: str, seq: int) -> bool:
        """Whether a poll message carrying this lease is the one that is due."""
        return self.token == token and self.seq == str(seq)

    def public(self) -> dict[str, Any]:
        """The job as callers see it (CLI, ``get_job``): no lease internals."""
        hidden = {"token", "seq", "submit_owner", "chain_owner", "request"}
        return {k: v for k, v in self.__dict__.items() if k not in hidden}


def _due_arg(check_at: float | None) -> str:
    return "" if check_at is None else repr(check_at)


class JobStore:
    """Reads and atomically changes job records. One instance per process.

    ``check_at`` arguments say when the job must next show progress (epoch seconds); None takes
    it off the reconciler's watch (the job needs nothing more from us).
    """

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._create = client.register_script(_CREATE)
        self._advance = client.register_script(_ADVANCE)
        self._settle = client.register_script(_SETTLE)
        self._claim_notify = client.register_script(_CLAIM_NOTIFY)
        self._delivered = client.register_script(_DELIVERED)

    def _keys(self, job_id: str) -> list[str]:
        return [_key(job_id), DUE_KEY, WAIT_KEY]

    def get(self, job_id: str) -> Job | None:
        raw = self._redis.hgetall(_key(job_id))
        return Job.from_hash(raw) if raw else None  # type: ignore[arg-type]

    def create(
        self, job_id: str, fields: dict[str, Any], *, ttl_s: float, check_at: float | None
    ) -> bool:
        """Create the record if the job id is new; False if it exists (a duplicate enqueue)."""
        now = time.time()
        record = {"job_id": job_id, "created_at": now, "updated_at": now, **fields}
        argv: list[str | int] = [
            int(ttl_s) + self._ttl_s,
            _due_arg(check_at),
            job_id,
            *_flatten(record),
        ]
        return bool(self._create(keys=self._keys(job_id), args=argv))

    def update(self, job_id: str, fields: dict[str, Any], *, check_at: float | None = None) -> None:
        """Unguarded write of informational fields, and optionally a new check time."""
        flat = _flatten({**fields, "updated_at": time.time()})
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(job_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
            if check_at is not None:
                pipe.zadd(DUE_KEY, {job_id: check_at}, xx=True)
            pipe.execute()

    def start_chain(
        self, job_id: str, fields: dict[str, Any], *, deadline_at: float, check_at: float
    ) -> str | None:
        """Start a poll chain for a new job; returns its token, or None for a duplicate."""
        token = uuid.uuid4().hex
        created = self.create(
            job_id,
            {**fields, "status": "polling", "token": token, "seq": "0", "deadline_at": deadline_at},
            ttl_s=deadline_at - time.time(),
            check_at=check_at,
        )
        return token if created else None

    def hand_over(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        deadline_at: float,
        check_at: float,
        park_at: float | None = None,
    ) -> str:
        """Turn a job claimed by submit into a poll chain; returns the chain's token.

        ``park_at``: park the chain's first poll in Redis until then, in the same transaction.
        """
        token = uuid.uuid4().hex
        flat = _flatten(
            {
                **fields,
                "status": "polling",
                "token": token,
                "seq": "0",
                "deadline_at": deadline_at,
                "updated_at": time.time(),
            }
        )
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(job_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
            pipe.expire(_key(job_id), int(deadline_at - time.time()) + self._ttl_s)
            pipe.zadd(DUE_KEY, {job_id: check_at})
            if park_at is not None:
                pipe.zadd(WAIT_KEY, {job_id: park_at})
            pipe.execute()
        return token

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
        """Move the lease from poll ``seq`` to ``seq + 1``; False if this poll is not current.

        ``park_at``: park the next poll in Redis until then (in the same atomic step), rather
        than the caller sending a countdown message.
        """
        return self._cas(job_id, token, seq, str(seq + 1), fields, check_at, park_at)

    def end_polling(
        self, job_id: str, token: str, seq: int, fields: dict[str, Any], *, check_at: float
    ) -> bool:
        """Close the poll chain (completed: the download takes over); False if not current."""
        return self._cas(job_id, token, seq, SEQ_DONE, fields, check_at)

    def _cas(
        self,
        job_id: str,
        token: str,
        seq: int,
        new_seq: str,
        fields: dict[str, Any],
        check_at: float,
        park_at: float | None = None,
    ) -> bool:
        argv = [
            token,
            str(seq),
            new_seq,
            _due_arg(check_at),
            job_id,
            _due_arg(park_at),
            *_flatten({**fields, "updated_at": time.time()}),
        ]
        return bool(self._advance(keys=self._keys(job_id), args=argv))

    def settle(
        self,
        job_id: str,
        outcome: dict[str, Any],
        *,
        check_at: float,
        lease: tuple[str, int] | None = None,
        polls: int | None = None,
    ) -> bool:
        """Record the job's outcome if it has none yet; True for the one caller that did.

        ``polls``: the job's poll count including the one that ended it, when a poll did.
        """
        now = time.time()
        status = "completed" if outcome["type"] == "tts.completed" else "failed"
        fields = {
            "polls": polls,
            "outcome": outcome,
            "status": status,
            "finished_at": now,
            "updated_at": now,
            "notify_state": "queued",
        }
        token, seq = lease if lease else ("", 0)
        argv: list[str | int] = [
            self._ttl_s,
            token,
            str(seq),
            _due_arg(check_at),
            job_id,
            *_flatten(fields),
        ]
        return bool(self._settle(keys=self._keys(job_id), args=argv))

    def claim_notify(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Take the right to send this job's webhook (re-entrant for the same task id)."""
        now = time.time()
        argv = [owner, str(now), str(now + lease_s)]
        return bool(self._claim_notify(keys=[_key(job_id)], args=argv))

    def finish_notify(self, job_id: str, state: str, **fields: Any) -> None:
        """Record how delivery ended (delivered, gone, refused, expired, none): nothing is due."""
        flat = _flatten({"notify_state": state, "updated_at": time.time(), **fields})
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(job_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
            pipe.zrem(DUE_KEY, job_id)
            pipe.execute()

    def overdue(self, now: float, *, limit: int) -> list[str]:
        """Job ids whose check time has passed, oldest first."""
        ids = self._redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=limit)
        return [str(job_id) for job_id in ids]

    def park(self, job_id: str, due_at: float) -> None:
        """Park the job's current poll in Redis until ``due_at`` (epoch seconds)."""
        self._redis.zadd(WAIT_KEY, {job_id: due_at})

    def recheck_at(self, job_id: str, check_at: float | None) -> None:
        """Move (or, with None, drop) one job's check time."""
        if check_at is None:
            self._redis.zrem(DUE_KEY, job_id)
        else:
            self._redis.zadd(DUE_KEY, {job_id: check_at})

    def load(self, job_id: str, *, delivery: str) -> tuple[Job | None, int]:
        """The job, and how many times its step ``delivery`` has started (1 the first time),
        in one round trip. (None, 0) when there is no such job."""
        count, flat = self._delivered(keys=[_key(job_id)], args=[delivery])
        if not flat:
            return None, 0
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        return Job.from_hash(raw), int(count)

    def count_delivery(self, job_id: str, delivery: str) -> int:
        """:meth:`load` without the job: the count alone (0 when there is no such job)."""
        return self.load(job_id, delivery=delivery)[1]
