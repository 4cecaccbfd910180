"""Job state in Redis: one hash per job, changed only by small atomic scripts.

This module owns every transition of a job (:mod:`tasks.record.states` names the states; the
package docstring draws the step lease they all move; :mod:`tasks.record.contract` holds the keys,
the field names and the scripts' typed arguments). Each method below is one transition; it acts
only if the job is in the state it expects, so a stale, duplicated or crafted message meets a
transition that refuses it. A **first-writer-wins outcome**: ``settle`` writes the outcome only
if none exists, and frees the lease for the webhook's sender.

Every transition is safe to run twice for one caller (a reply lost after the script ran, then
the step's own retry; the client itself never re-sends, tasks/adapters/runtime.py): it
recognises the state its own earlier run left, by the lease (``owner`` and ``token``), and
answers as that run did, changing nothing (a settle changes nothing and says False; its caller
knows its own outcome by ``outcome_id``). A duplicate from anyone else is
still refused. The delivery count (:meth:`JobStore.load`) is the exception: run twice, it counts
two.

Times are epoch seconds from the store's ``clock`` (``time.time`` in a worker; the simulation's
fake clock in tests/sim): the scripts never read Redis' own clock.
"""

from __future__ import annotations

import base64
import enum
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from tasks.record.contract import (
    DUE_KEY,
    FREED_AT_SETTLE,
    KEY_PREFIX,
    LUA_HOLDS,
    LUA_WATCH,
    SPOOL_PREFIX,
    WAIT_KEY,
    Change,
    CheckAt,
    Create,
    F,
    Settle,
    Watch,
    check,
    lua,
    pairs,
)
from tasks.record.reuse import Decision, ReuseIndex
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
    "Priority",
    "Watch",
]

#: The largest audio the spool keeps (bytes; 256 KiB, about 8 s of 16-bit 16 kHz WAV): a submit
#: answered with more stores it in the audio store straight away. Redis holds state; a spool of
#: the 50 MiB TTS_MAX_AUDIO_BYTES took 84 MB of Redis for one key.
SPOOL_MAX_BYTES = 256 * 1024
#: What a submit's score is below its acceptance time: every waiting submit scores below 0
#: (until the year 2286), every poll at its due time (above 0), so one range reads each kind.
SUBMIT_OFFSET_S = 1e10
#: The lowest score of a parked poll: submits score below it, polls from it.
POLLS_FROM = 0.0


def submit_score(queued_at: float) -> float:
    """A waiting submit's score in :data:`WAIT_KEY`, from when its job was accepted."""
    return queued_at - SUBMIT_OFFSET_S


class Priority(enum.StrEnum):
    """How urgent a caller says its job is (``priority`` of ``tts.submit_tts``/``tts.poll_tts``):
    the releaser's lanes (tasks/pacing/fairness.py), most urgent first. A record without the field
    is ``normal`` (every job before issue 22)."""

    INTERACTIVE = "interactive"
    NORMAL = "normal"
    BULK = "bulk"


#: The hash fields a parked poll is ranked by (HMGET), by the releaser (tasks/sweeps/granting.py;
#: its message is built from the whole record once the poll is taken).
PARKED_FIELDS = (
    F.STATUS.value,
    "seen_at",
    "queue_position",
    "queue_first_position",
    "queue_first_seen_at",
    "gen_start_at",
    "deadline_at",
    "model",
)
# The POST claim's seq (tasks/record/__init__.py): claimed, nothing sent yet; and sent.
POST_CLAIMED = "0"
POST_SENT = "1"

# Accept a job: create the record only if the job id is new. Returns 1 when this call created it,
# 2 when the record exists and its lease owner is the argument's (this same caller made it: a
# re-run), 0 otherwise. KEYS: job, due set. ARGV[1]: a contract.Create; ARGV[2]: the job id.
_ACCEPT = (
    LUA_WATCH
    + f"""
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if a.owner and redis.call('HGET', KEYS[1], {lua(F.OWNER)}) == a.owner then return 2 end
  return 0
end
redis.call('HSET', KEYS[1], unpack(a.set))
redis.call('EXPIRE', KEYS[1], a.ttl)
watch(KEYS[2], ARGV[2], a)
return 1
"""
)

# Every guarded transition (a contract.Change): act only if each guard holds; then drop
# fields, set fields, count a poll, renew the TTL, move the check time and park the next
# step. Run again after it acted (its reply lost), it finds the job as it left it: the "done"
# pairs all hold, and it answers 2 ("done already") and changes nothing.
# KEYS: job, due set, park set. ARGV[1]: the Change; ARGV[2]: the job id.
_TRANSITION = (
    LUA_HOLDS
    + LUA_WATCH
    + f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local a = cjson.decode(ARGV[1])
if #a.done > 0 and holds(KEYS[1], a.done) then return 2 end
if not holds(KEYS[1], a.guard) then return 0 end
if #a.drop > 0 then redis.call('HDEL', KEYS[1], unpack(a.drop)) end
if #a.set > 0 then redis.call('HSET', KEYS[1], unpack(a.set)) end
if a.polls ~= '0' then redis.call('HINCRBY', KEYS[1], {lua(F.POLLS)}, a.polls) end
if a.ttl then redis.call('EXPIRE', KEYS[1], a.ttl) end
watch(KEYS[2], ARGV[2], a)
if a.park_at then redis.call('ZADD', KEYS[3], a.park_at, ARGV[2]) end
return 1
"""
)

# Settle (a contract.Settle): the first outcome wins (and, with guards, only from the state
# they name). The lease goes (the webhook's sender takes it free), the poll chain closes, the
# parked step and the spooled audio go, the caller's text goes (nothing will send it again),
# the record lives TTL more seconds. An outcome already there under this caller's outcome id
# is this caller's own earlier run (its reply lost): 2, nothing changes.
# KEYS: job, due set, wait set, spool. ARGV[1]: the Settle; ARGV[2]: job id.
_SETTLE = (
    LUA_HOLDS
    + LUA_WATCH
    + f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local a = cjson.decode(ARGV[1])
if redis.call('HEXISTS', KEYS[1], {lua(F.OUTCOME)}) == 1 then
  if redis.call('HGET', KEYS[1], {lua(F.OUTCOME_ID)}) == a.outcome_id then return 2 end
  return 0
end
if not holds(KEYS[1], a.guard) then return 0 end
redis.call('HDEL', KEYS[1], {lua(F.REQUEST)}, {", ".join(lua(f) for f in FREED_AT_SETTLE)})
redis.call('HSET', KEYS[1], {lua(F.SEQ)}, {lua(SEQ_DONE)}, {lua(F.OUTCOME_ID)}, a.outcome_id,
  unpack(a.set))
redis.call('EXPIRE', KEYS[1], a.ttl)
watch(KEYS[2], ARGV[2], a)
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[4])
return 1
"""
)

# The webhook's sender takes the lease: free, already its own, or left by an owner whose
# lease ran out. ARGV: [1] owner (the notify message's task id), [2] now, [3] lease end.
_CLAIM_NOTIFY = f"""
local state = redis.call('HGET', KEYS[1], {lua(F.NOTIFY_STATE)})
if state and state ~= {lua(NotifyState.QUEUED)} then return 0 end
local owner = redis.call('HGET', KEYS[1], {lua(F.OWNER)})
local until_at = tonumber(redis.call('HGET', KEYS[1], {lua(F.LEASE_UNTIL)}) or '0')
if owner and owner ~= ARGV[1] and until_at > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], {lua(F.OWNER)}, ARGV[1], {lua(F.LEASE_UNTIL)}, ARGV[3])
return 1
"""

# Count a delivery of step ARGV[1] in the job's own hash and return {count, the hash}. One
# counter per job: steps run one after another, so a new step starts it again at 1, and it
# disappears with the job (a key per step would pile up for a day at hundreds of polls/s).
_COUNT_DELIVERY = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {{0, {{}}}} end
local n = 1
if redis.call('HGET', KEYS[1], {lua(F.DELIVERY_STEP)}) == ARGV[1] then
  n = redis.call('HINCRBY', KEYS[1], {lua(F.DELIVERY_COUNT)}, 1)
else
  redis.call('HSET', KEYS[1], {lua(F.DELIVERY_STEP)}, ARGV[1], {lua(F.DELIVERY_COUNT)}, 1)
end
return {{n, redis.call('HGETALL', KEYS[1])}}
"""


# Fields of many records in one reply (the releaser's ranking reads 2,000 at a time): one
# pipelined HMGET each cost more in the client's packing and reply parsing than in Redis (bench
# row 7), so the values come back as one string. ARGV: the key prefix, the number of fields, the
# fields, then the job ids. Values are numbers, statuses, models and lanes, which carry no
# control characters (tasks/nanogpt/validation.py): a record ends with RECORD_SEP, a field with
# FIELD_SEP, and an unset field is NIL_MARK.
FIELD_SEP, RECORD_SEP, NIL_MARK = "\x1f", "\x1e", "\x00"
_FIELDS_OF = r"""
local n = tonumber(ARGV[2])
local fields = {unpack(ARGV, 3, 2 + n)}
local out = {}
for i = 3 + n, #ARGV do
  local values = redis.call('HMGET', ARGV[1] .. ARGV[i], unpack(fields))
  for j = 1, n do
    local v = values[j]
    if v then out[#out + 1] = v else out[#out + 1] = '\0' end
    out[#out + 1] = j < n and '\31' or '\30'
  end
end
return table.concat(out)
"""
# Records a single script reads at most: bounds its time in Redis (a few ms), as the grant's batch
# does; more are read by further scripts in the same round trip.
FIELDS_BATCH = 500


def _key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def _mapping(fields: Mapping[str, Any]) -> dict[Any, Any]:
    flat = pairs(fields)
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _held_by(status: str, token: str, seq: str, owner: str | None) -> dict[str, str] | None:
    """What a poll's transition leaves behind, naming the execution that moved it."""
    if owner is None:
        return None
    return {F.STATUS: status, F.TOKEN: token, F.SEQ: seq, F.OWNER: owner}


#: Namespace of the outcome ids a cancel message's task id names (uuid5).
_CANCEL_IDS = uuid.UUID("5b1d6a52-0c5e-4f43-9d3b-2f1c1c4a7e10")


def cancel_outcome_id(task_id: str) -> str:
    """The outcome id a ``tts.cancel`` message records (its webhook-id is made from it): one
    per message, so the same message run again recognises its own cancel (tasks/steps/cancel.py),
    never the caller's text itself in a header."""
    return uuid.uuid5(_CANCEL_IDS, task_id).hex


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
    # The earliest the generation can have started: the answer before the first that showed the
    # job at the head (tasks/pacing/aim.py aims from it).
    started_after: float | None = None
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
    # NanoGPT's X-Request-ID of the last submit or status answer: what its support asks for.
    request_id: str | None = None
    request: dict[str, Any] | None = field(default=None, repr=False)
    # The step lease (tasks/record/__init__.py): who holds the job's current step, the claim or
    # chain it holds, the number of its transition, until when (a POST claim, a webhook
    # sender), and its step's retries after transient faults (kept in the record: a retry that
    # found no budget comes back as a fresh message, Celery's count at 0).
    owner: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    seq: str | None = field(default=None, repr=False)
    lease_until: float | None = None
    tries: int = 0
    # A NanoGPT call the budget granted to this job's next step (tasks/pacing/budget.py).
    grant: str | None = field(default=None, repr=False)
    # Reuse (tasks/record/reuse.py): the request's reuse key (a hash), and the leader a
    # follower waits on.
    reuse_key: str | None = field(default=None, repr=False)
    reuse_leader: str | None = None
    # Who sent the job and how urgent it is (issue 22): the releaser's lane for its calls.
    tenant: str | None = None
    priority: str = Priority.NORMAL.value

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
            queue_position=whole("queue_position"),
            queue_first_position=whole("queue_first_position"),
            queue_first_seen_at=num("queue_first_seen_at"),
            head_since=num("head_since"),
            seen_at=num("seen_at"),
            gen_start_at=num("gen_start_at"),
            started_after=num("started_after"),
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
            request_id=raw.get("request_id"),
            request=json.loads(raw["request"]) if raw.get("request") else None,
            owner=raw.get(F.OWNER),
            token=raw.get(F.TOKEN),
            seq=raw.get(F.SEQ),
            lease_until=num(F.LEASE_UNTIL),
            tries=int(raw.get(F.TRIES) or 0),
            grant=raw.get(F.GRANT),
            reuse_key=raw.get(F.REUSE_KEY),
            reuse_leader=raw.get(F.REUSE_LEADER),
            tenant=raw.get("tenant"),
            priority=raw.get("priority") or Priority.NORMAL.value,
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

    def post_unsent(self) -> bool:
        """Whether the job's POST claim sent nothing yet (claimed, not marked sent)."""
        return self.status == Status.POSTING and self.seq == POST_CLAIMED

    def public(self) -> dict[str, Any]:
        """The job as callers see it (CLI, ``get_job``): no lease internals."""
        hidden = {F.OWNER, F.TOKEN, F.SEQ, F.GRANT, F.REQUEST, F.REUSE_KEY}
        return {k: v for k, v in self.__dict__.items() if k not in hidden}


class JobStore:
    """Reads and atomically changes job records. One instance per process.

    ``check_at`` arguments say when the job must next show progress (epoch seconds), or
    :data:`Watch.DROP`: off the reconciler's watch (the job needs nothing more from us).
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
        self._fields_of = client.register_script(_FIELDS_OF)
        self._reuse = ReuseIndex(client, clock=clock)

    @property
    def redis(self) -> redis.Redis:
        """The client, for readers of the shared sets (tasks/sweeps/granting.py)."""
        return self._redis

    @staticmethod
    def key(job_id: str) -> str:
        return _key(job_id)

    # --- reading -----------------------------------------------------------------------------

    def fields_of(self, job_ids: Sequence[str], fields: Sequence[str]) -> list[list[str | None]]:
        """``fields`` of each job's record (None: unset), as one HMGET each would answer, in
        one round trip and one reply string per :data:`FIELDS_BATCH` jobs."""
        if not job_ids:
            return []
        head: list[str | int] = [KEY_PREFIX, len(fields), *fields]
        with self._redis.pipeline(transaction=False) as pipe:
            for i in range(0, len(job_ids), FIELDS_BATCH):
                self._fields_of(args=[*head, *job_ids[i : i + FIELDS_BATCH]], client=pipe)
            replies = pipe.execute()
        rows: list[list[str | None]] = []
        for reply in replies:
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            for record in text.split(RECORD_SEP)[:-1]:
                rows.append([None if v == NIL_MARK else v for v in record.split(FIELD_SEP)])
        return rows

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
        check_at: CheckAt,
        owner: str | None = None,
    ) -> bool:
        """Accept a job: create the record if the job id is new; False if it exists.

        ``owner``: the caller's task id, the record's first lease owner: a record whose lease
        it still holds is this caller's own (a re-run, or a redelivery of the same message),
        and the answer is True again, as it was the first time.
        """
        return self._create(job_id, fields, ttl_s=ttl_s, check_at=check_at, owner=owner) > 0

    def _create(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        ttl_s: float,
        check_at: CheckAt,
        owner: str | None,
    ) -> int:
        now = self._clock()
        record = {"job_id": job_id, "created_at": now, "updated_at": now, **fields}
        if owner is not None:
            record[F.OWNER] = owner
        arg = Create(record, ttl_s=self._ttl(ttl_s), check_at=check_at, owner=owner).arg()
        return int(self._accept(keys=[_key(job_id), DUE_KEY], args=[arg, job_id]))

    def _ttl(self, ttl_s: float) -> int:
        """The record's TTL: ``ttl_s`` of work ahead, and TTS_JOB_TTL beyond it."""
        return max(1, int(ttl_s) + self._ttl_s)

    def _move(self, job_id: str, change: Change, *, park_key: str = WAIT_KEY) -> int:
        """One guarded transition: 1 when it acted, 2 when ``change.done`` (the state this
        caller's own run leaves behind) already holds, 0 when refused."""
        keys = [_key(job_id), DUE_KEY, park_key]
        return int(self._transition(keys=keys, args=[change.arg(), job_id]))

    def _step(
        self,
        guard: Mapping[str, str | None],
        fields: Mapping[str, Any],
        *,
        check_at: CheckAt = Watch.KEEP,
        done: Mapping[str, str | None] | None = None,
        drop: tuple[str, ...] = (),
        polls: int = 0,
        ttl_s: float | None = None,
        park_at: float | None = None,
    ) -> Change:
        return Change(
            guard=guard,
            fields={**fields, F.UPDATED_AT: self._clock()},
            check_at=check_at,
            done=done or {},
            drop=drop,
            polls=polls,
            ttl_s=None if ttl_s is None else self._ttl(ttl_s),
            park_at=park_at,
        )

    def update(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        check_at: CheckAt = Watch.KEEP,
        drop: tuple[str, ...] = (),
    ) -> None:
        """Unguarded write of informational fields (None: not written; ``drop``: deleted),
        and the check time moved (a job with none keeps none) or dropped."""
        with self._redis.pipeline(transaction=True) as pipe:
            if drop:
                pipe.hdel(_key(job_id), *drop)
            pipe.hset(_key(job_id), mapping=_mapping({**fields, F.UPDATED_AT: self._clock()}))
            self._watch(pipe, job_id, check_at, only_watched=True)
            pipe.execute()

    @staticmethod
    def _watch(pipe: Any, job_id: str, check_at: CheckAt, *, only_watched: bool) -> None:
        if check_at is Watch.DROP:
            pipe.zrem(DUE_KEY, job_id)
        elif check_at is not Watch.KEEP:
            pipe.zadd(DUE_KEY, {job_id: check(check_at)["at"]}, xx=only_watched)

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
        """submitting → posting: this execution (``attempt``, the claim's token) of the submit
        message ``owner`` alone may send the POST, the job's ``posts``-th; the claim runs out
        at ``lease_until``. Run again by the same execution (its reply lost), it finds its own
        claim: True."""
        return bool(
            self._move(
                job_id,
                self._step(
                    {F.STATUS: Status.SUBMITTING, F.OWNER: owner},
                    {
                        F.STATUS: Status.POSTING,
                        F.TOKEN: attempt,
                        # Not sent yet: post_sent moves it on just before the POST leaves.
                        F.SEQ: POST_CLAIMED,
                        F.LEASE_UNTIL: lease_until,
                        "posts": posts,
                    },
                    check_at=check_at,
                    done={F.STATUS: Status.POSTING, F.TOKEN: attempt},
                ),
            )
        )

    def post_sent(self, job_id: str, attempt: str) -> bool:
        """The claim's POST is about to leave: marked first (``seq`` claimed → sent), so a
        claim whose POST never left (its worker died, or its reply was lost, before sending)
        is never taken for one that may have been billed. False if ``attempt`` no longer holds
        the claim: do not send. Run again by the same execution: True."""
        return self._post_mark(job_id, attempt, POST_CLAIMED, POST_SENT)

    def post_not_sent(self, job_id: str, attempt: str) -> bool:
        """The mark taken back (``seq`` sent → claimed) by the execution that wrote it, lost
        its reply, and so sent nothing: the record then says itself that this claim never left,
        and the submit's next delivery gives it back and sends once it runs out, whichever
        delivery comes first. True also if the mark was never written; False if ``attempt`` no
        longer holds the claim. Run again by the same execution: True."""
        return self._post_mark(job_id, attempt, POST_SENT, POST_CLAIMED)

    def _post_mark(self, job_id: str, attempt: str, was: str, becomes: str) -> bool:
        """The POST claim ``attempt`` moves its ``seq`` from ``was`` to ``becomes``."""
        held: dict[str, str | None] = {F.STATUS: Status.POSTING, F.TOKEN: attempt}
        step = self._step({**held, F.SEQ: was}, {F.SEQ: becomes}, done={**held, F.SEQ: becomes})
        return bool(self._move(job_id, step))

    def take_over_post(
        self, job_id: str, lost: str, attempt: str, *, lease_until: float, check_at: float
    ) -> bool:
        """posting → posting under ``attempt``: the claim ``lost`` was taken by an execution
        that never learnt it had it, so sent nothing; only one retry (of possibly duplicated
        copies) wins it and may send the POST. Run again by the same execution: True."""
        return bool(
            self._move(
                job_id,
                self._step(
                    {F.STATUS: Status.POSTING, F.TOKEN: lost},
                    {F.TOKEN: attempt, F.SEQ: POST_CLAIMED, F.LEASE_UNTIL: lease_until},
                    check_at=check_at,
                    done={F.STATUS: Status.POSTING, F.TOKEN: attempt},
                ),
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
                self._step(
                    {F.STATUS: Status.POSTING, F.TOKEN: attempt},
                    {**fields, F.STATUS: Status.SUBMITTING},
                    check_at=check_at,
                    done={F.STATUS: Status.SUBMITTING, F.TOKEN: attempt},
                    drop=(F.SEQ, F.LEASE_UNTIL),
                ),
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
        """posting → polling: the ticket starts a poll chain under the claim's token (returned;
        None if this attempt no longer holds the claim), its tries afresh. ``park_at``: park
        the first poll in Redis. The caller's text goes: NanoGPT has it, nothing will send it
        again. Run again by the same attempt, it returns the same token."""
        moved = self._move(
            job_id,
            self._step(
                {F.STATUS: Status.POSTING, F.TOKEN: attempt},
                {**fields, F.STATUS: Status.POLLING, F.SEQ: "0", "deadline_at": deadline_at},
                check_at=check_at,
                park_at=park_at,
                ttl_s=deadline_at - self._clock(),
                done={F.STATUS: Status.POLLING, F.TOKEN: attempt},
                drop=(F.REQUEST, F.LEASE_UNTIL, F.TRIES),
            ),
        )
        return attempt if moved else None

    def audio_ready(
        self, job_id: str, attempt: str, fields: dict[str, Any], *, check_at: float
    ) -> bool:
        """posting → downloading: the submit answered with the audio (a link, or the bytes
        themselves). The caller's text goes, as with :meth:`post_accepted`. Run again by the
        same attempt, it finds the job it moved: True."""
        return bool(
            self._move(
                job_id,
                self._step(
                    {F.STATUS: Status.POSTING, F.TOKEN: attempt},
                    {**fields, F.STATUS: Status.DOWNLOADING},
                    check_at=check_at,
                    done={F.STATUS: Status.DOWNLOADING, F.TOKEN: attempt},
                    drop=(F.REQUEST, F.LEASE_UNTIL, F.TRIES),
                ),
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
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        deadline_at: float,
        check_at: float,
        owner: str | None = None,
    ) -> str | None:
        """Accept a poll chain started by name; returns its token, or None for a duplicate.

        ``owner``: the message's task id; a chain this same message started already (a re-run,
        a redelivery) answers with that chain's token while its first poll is still due (the
        first poll takes the lease over); the poll's lease then decides whether it may act."""
        token = uuid.uuid4().hex
        created = self._create(
            job_id,
            {
                **fields,
                F.STATUS: Status.POLLING,
                F.TOKEN: token,
                F.SEQ: "0",
                "deadline_at": deadline_at,
            },
            ttl_s=deadline_at - self._clock(),
            check_at=check_at,
            owner=owner,
        )
        if created == 2:
            known, seq = self._redis.hmget(_key(job_id), [F.TOKEN, F.SEQ])
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
        drop: tuple[str, ...] = (),
    ) -> bool:
        """Next poll: move the lease from poll ``seq`` to ``seq + 1``, its tries afresh (an
        answer came); False if this poll is not current. ``park_at``: park the next poll in
        Redis until then, in the same step. ``drop``: fields that no longer hold.
        ``attempt``: this execution's own id (random),
        the lease's owner from now: run again by it, the transition finds the lease it moved
        and answers True; a duplicate message (another execution of poll ``seq``) still
        finds a mismatch."""
        return bool(
            self._move(
                job_id,
                self._step(
                    {F.STATUS: Status.POLLING, F.TOKEN: token, F.SEQ: str(seq)},
                    {**fields, F.SEQ: str(seq + 1), F.OWNER: attempt},
                    check_at=check_at,
                    park_at=park_at,
                    polls=1,
                    drop=(F.TRIES, *drop),
                    done=_held_by(Status.POLLING, token, str(seq + 1), attempt),
                ),
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
                self._step(
                    {F.STATUS: Status.POLLING, F.TOKEN: token, F.SEQ: str(seq)},
                    {**fields, F.STATUS: Status.DOWNLOADING, F.SEQ: SEQ_DONE, F.OWNER: attempt},
                    check_at=check_at,
                    polls=1,
                    drop=(F.TRIES,),
                    done=_held_by(Status.DOWNLOADING, token, SEQ_DONE, attempt),
                ),
            )
        )

    def settle(
        self,
        job_id: str,
        outcome: dict[str, Any],
        *,
        check_at: CheckAt,
        lease: tuple[str, int] | None = None,
        guards: Mapping[str, str | None] | None = None,
        polls: int | None = None,
        outcome_id: str | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> bool:
        """→ completed / failed: record the job's outcome if it has none yet; True for the one
        caller that did. The lease is freed for the webhook's sender. ``lease``: only the
        current poll may settle; ``guards``: only while these fields hold these values (None:
        unset). ``polls``: the poll count including the one that ended the job, when a poll
        did. ``outcome_id``: names the outcome (random if not given). True means this call
        changed the record, exactly once per job (the simulation holds every settle to it): an
        outcome already recorded under the caller's own id (its earlier run) answers False and
        changes nothing; the caller recognises it by the job's ``outcome_id``
        (tasks/steps/cancel.py). ``record``: more fields written with the outcome (a reused
        job's ``cost`` of 0)."""
        now = self._clock()
        status = Status.COMPLETED if outcome["type"] == "tts.completed" else Status.FAILED
        fields = {
            F.POLLS: polls,
            F.OUTCOME: outcome,
            F.STATUS: status,
            "finished_at": now,
            F.UPDATED_AT: now,
            F.NOTIFY_STATE: NotifyState.QUEUED,
            **(record or {}),
        }
        expected = dict(guards or {})
        if lease is not None:
            expected |= {F.TOKEN: lease[0], F.SEQ: str(lease[1])}
        arg = Settle(
            # Names this outcome (its webhook-id): the same for every attempt at its webhook,
            # new if the job id is used again once this record has expired.
            outcome_id=outcome_id or uuid.uuid4().hex,
            fields=fields,
            guard=expected,
            ttl_s=self._ttl_s,
            check_at=check_at,
        ).arg()
        keys = [_key(job_id), DUE_KEY, WAIT_KEY, SPOOL_PREFIX + job_id]
        return int(self._settle(keys=keys, args=[arg, job_id])) == 1

    def decide_reuse(self, job_id: str, owner: str, reuse_key: str, **options: Any) -> Decision:
        """submitting → answered by a completed source, following the leader in flight, or
        leading: :meth:`tasks.record.reuse.ReuseIndex.decide` (one script)."""
        return self._reuse.decide(job_id, owner, reuse_key, **options)

    def wake_followers(self, reuse_key: str, leader: str, *, check_at: float) -> list[str]:
        """The followers of ``leader`` due again at ``check_at``:
        :meth:`tasks.record.reuse.ReuseIndex.wake` (one script)."""
        return self._reuse.wake(reuse_key, leader, check_at=check_at)

    def claim_notify(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Take the lease to send this job's webhook (re-entrant for the same task id, so a
        re-run answers as the first run did)."""
        now = self._clock()
        argv = [owner, repr(now), repr(now + lease_s)]
        return bool(self._claim_notify(keys=[_key(job_id)], args=argv))

    def finish_notify(self, job_id: str, state: str, **fields: Any) -> None:
        """Record how delivery ended (delivered, gone, refused, expired, none): nothing is due,
        and nobody holds the job any more."""
        mapping = _mapping({F.NOTIFY_STATE: state, F.UPDATED_AT: self._clock(), **fields})
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(_key(job_id), F.OWNER, F.LEASE_UNTIL)
            pipe.hset(_key(job_id), mapping=mapping)
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
                self._step(
                    {F.STATUS: Status.POLLING, F.TOKEN: token, F.SEQ: str(seq)},
                    {F.DELIVERY_COUNT: max(0, deliveries - 1)},
                    check_at=deadline_at,
                    park_at=due_at,
                ),
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
                self._step(
                    {F.STATUS: Status.SUBMITTING, F.OWNER: owner},
                    {F.DELIVERY_COUNT: max(0, deliveries - 1)},
                    check_at=check_at,
                    park_at=submit_score(queued_at),
                ),
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

    def recheck_at(self, job_id: str, check_at: CheckAt) -> None:
        """Move one job's check time, or take it off the watch (:data:`Watch.DROP`)."""
        with self._redis.pipeline(transaction=False) as pipe:
            self._watch(pipe, job_id, check_at, only_watched=False)
            pipe.execute()
