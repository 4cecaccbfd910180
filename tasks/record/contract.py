"""The job hash's contract in one place: the keys, the field names the scripts read and write,
the typed arguments every script takes, and the Lua spelling of the values states.py owns.

Python and Lua meet only here. A script takes one argument, a JSON document built by
:class:`Change`, :class:`Create` or :class:`Settle` (Redis' Lua has ``cjson``), instead of a
positional list with sentinels; every value a script compares with (a status, the closed
``seq``, a notify state, a grant) is spliced into its source from the constants below by
:func:`lua`, never spelled a second time.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KEY_PREFIX = "tts:job:"
#: Audio that arrived in a submit's answer, kept until it is stored (base64 text, with a TTL).
SPOOL_PREFIX = "tts:spool:"
#: Sorted set of job ids scored by when each job must next show progress (epoch seconds). A job
#: still in it past that time lost a message (worker killed, failed publish): the reconciler
#: re-sends its current step. Every state change moves the score in the same script. A job
#: parked in a wait set below is scored at its deadline: only Redis holds it, nothing can lose
#: it, and the releaser that takes it moves the score back (tasks/sweeps/granting.py).
DUE_KEY = "tts:due"
#: Sorted set of every job that waits in Redis for its next NanoGPT call, on every broker: the
#: one place a waiting step waits (tasks/sweeps/granting.py releases it), so no worker and no
#: broker holds a waiting job. A poll is scored by when it is due (epoch seconds); a submit that
#: found no budget by ``jobs.submit_score``, which puts every submit before every poll, oldest
#: first, and always due. The job hash holds everything the step's message needs.
WAIT_KEY = "tts:wait"
#: Reuse (TTS_REUSE_TTL, tasks/record/reuse.py): ``tts:reuse:<key>`` holds the id of the job
#: that last made the POST for a reuse key (the leader, then the source of its audio), and
#: ``tts:reuse:<key>:followers`` the identical jobs waiting on it (a sorted set, by arrival).
REUSE_PREFIX = "tts:reuse:"
REUSE_FOLLOWERS_SUFFIX = ":followers"


class F(enum.StrEnum):
    """The hash fields a script reads or writes by name. The other fields are the
    :class:`tasks.record.jobs.Job` dataclass's, written and read under the same names."""

    STATUS = "status"
    # The step lease (tasks/record/__init__.py): one per job, whichever step holds it.
    OWNER = "owner"
    TOKEN = "token"  # noqa: S105 (a field's name, no secret)
    SEQ = "seq"
    LEASE_UNTIL = "lease_until"
    TRIES = "tries"
    # The budget's promise of one NanoGPT call to the job's next step (tasks/pacing/budget.py).
    GRANT = "grant"
    REQUEST = "request"
    POLLS = "polls"
    OUTCOME = "outcome"
    OUTCOME_ID = "outcome_id"
    NOTIFY_STATE = "notify_state"
    DELIVERY_STEP = "delivery_step"
    DELIVERY_COUNT = "delivery_count"
    UPDATED_AT = "updated_at"
    # The job's reuse key (a hash, never the text) and the leader a follower waits on.
    REUSE_KEY = "reuse_key"
    REUSE_LEADER = "reuse_leader"
    FINISHED_AT = "finished_at"
    DEADLINE_AT = "deadline_at"


#: The budget's grant to a job's submit, and the start of its grant to poll ``seq``
#: (:func:`poll_grant`): a grant names the step it was promised to, so a later step of the same
#: job does not spend it.
SUBMIT_GRANT = "submit"
POLL_GRANT_PREFIX = "poll:"


def poll_grant(seq: int | str) -> str:
    """The grant the releaser writes for poll ``seq`` of a job (tasks/pacing/budget.py)."""
    return f"{POLL_GRANT_PREFIX}{seq}"


#: The lease's fields that go when the job ends (settle), so the webhook's sender takes a free
#: lease; the token stays, its ``seq`` closed, so a late message of the chain meets a mismatch.
FREED_AT_SETTLE = (F.OWNER, F.LEASE_UNTIL, F.TRIES)


class Watch(enum.Enum):
    """What a transition does to the job's check time in :data:`DUE_KEY`, besides moving it
    to a time (a float): leave it, or take the job off the reconciler's watch."""

    KEEP = "keep"
    DROP = "drop"


#: A check time: epoch seconds, or a :class:`Watch`.
CheckAt = float | Watch


def lua(value: str) -> str:
    """``value`` as a Lua string literal, for splicing a constant into a script's source."""
    if not value.isascii():
        raise ValueError(f"{value!r}: a script constant must be ASCII")
    return json.dumps(value)


def text(value: Any) -> str:
    """A field's value as the hash stores it: strings as they are, booleans as 0/1, numbers
    and documents as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    return json.dumps(value)


def pairs(fields: Mapping[str, Any]) -> list[str]:
    """``[name, value, name, value...]`` (HSET's order) for the fields to write; a None value
    is not written (to take a field away, name it in a transition's ``drop``)."""
    return [x for name, value in fields.items() if value is not None for x in (name, text(value))]


def expected(fields: Mapping[str, str | None]) -> list[list[str | None]]:
    """``[[name, value], ...]`` for the fields a guard compares; None: the field must be unset."""
    return [[name, value] for name, value in fields.items()]


# The ``watch`` of a check time that moves to ``at``.
_AT = "at"


def check(at: CheckAt) -> dict[str, str]:
    """A check time as the scripts read it (see :data:`LUA_WATCH`)."""
    if isinstance(at, Watch):
        return {"watch": at.value}
    if not isinstance(at, int | float):
        raise TypeError(f"a check time is epoch seconds or a Watch, not {at!r}")
    return {"watch": _AT, "at": repr(at)}


def _dumps(doc: dict[str, Any]) -> str:
    # Raw UTF-8, as the hash keeps it: cjson need not rebuild characters from escapes.
    return json.dumps(doc, ensure_ascii=False)


@dataclass(frozen=True)
class Change:
    """The one argument of the guarded transition script (``jobs._TRANSITION``).

    It acts only if every ``guard`` field holds its value (None: unset); run again after it
    acted (its reply lost), it finds every ``done`` field as its own run left it and answers
    "done already" without changing anything. Then: drop the ``drop`` fields, write ``fields``,
    add ``polls`` to the poll count, renew the record's TTL to ``ttl_s``, move its check time,
    and park it in ``park_key`` at ``park_at``.
    """

    guard: Mapping[str, str | None]
    fields: Mapping[str, Any]
    check_at: CheckAt = Watch.KEEP
    done: Mapping[str, str | None] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    polls: int = 0
    ttl_s: int | None = None
    park_at: float | None = None

    def arg(self) -> str:
        doc: dict[str, Any] = {
            "guard": expected(self.guard),
            "done": expected(self.done),
            "drop": list(self.drop),
            "set": pairs(self.fields),
            "polls": str(self.polls),
            **check(self.check_at),
        }
        if self.ttl_s is not None:
            doc["ttl"] = str(self.ttl_s)
        if self.park_at is not None:
            doc["park_at"] = repr(self.park_at)
        return _dumps(doc)


@dataclass(frozen=True)
class Create:
    """The one argument of the accept script (``jobs._ACCEPT``): make the record with
    ``fields`` if the job id is new; one whose lease ``owner`` is this caller's is this
    caller's own (a re-run)."""

    fields: Mapping[str, Any]
    ttl_s: int
    check_at: CheckAt
    owner: str | None = None

    def arg(self) -> str:
        doc: dict[str, Any] = {
            "set": pairs(self.fields),
            "ttl": str(self.ttl_s),
            **check(self.check_at),
        }
        if self.owner is not None:
            doc["owner"] = self.owner
        return _dumps(doc)


@dataclass(frozen=True)
class Settle:
    """The one argument of the settle script (``jobs._SETTLE``): record an outcome named
    ``outcome_id`` with ``fields`` if the job has none, while ``guard`` holds."""

    outcome_id: str
    fields: Mapping[str, Any]
    guard: Mapping[str, str | None]
    ttl_s: int
    check_at: CheckAt

    def arg(self) -> str:
        return _dumps(
            {
                "outcome_id": self.outcome_id,
                "guard": expected(self.guard),
                "set": pairs(self.fields),
                "ttl": str(self.ttl_s),
                **check(self.check_at),
            }
        )


# Lua shared by the scripts: the argument, a guard's test, and the check time's move.
# ``holds(key, pairs)``: every [name, value] pair holds (a JSON null: the field is unset).
LUA_HOLDS = """
local function holds(key, expect)
  for _, p in ipairs(expect) do
    local want = p[2]
    if want == cjson.null then want = false end
    if redis.call('HGET', key, p[1]) ~= want then return false end
  end
  return true
end
"""

# ``watch(due_key, id, a)``: move the job's check time as the argument ``a`` says.
LUA_WATCH = f"""
local function watch(due, id, a)
  if a.watch == {lua(Watch.DROP.value)} then redis.call('ZREM', due, id)
  elseif a.watch == {lua(_AT)} then redis.call('ZADD', due, a.at, id) end
end
"""
