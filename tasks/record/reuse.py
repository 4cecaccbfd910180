"""Identical requests served once (TTS_REUSE_TTL): the reuse index beside the job records.

Per reuse key (a hash of the request, :mod:`tasks.nanogpt.fingerprint`), ``tts:reuse:<key>``
names the job that last made the POST: the **leader** while it runs, then the **source** whose
audio later submits reuse. Identical submits that arrive while it runs **follow** it: they wait
in ``tts:reuse:<key>:followers``, parked in Redis like a submit waiting for budget (no worker
slot, no message), each on the reconciler's watch (``tts:due``) at a check time of its own.

:meth:`ReuseIndex.decide` is one script: the submit of a job still ``submitting`` under its
own message either reuses a completed source (its outcome is answered; nothing changes), takes
a shared verdict of the leader it followed, joins the leader in flight as a follower (in the
same script: its delivery taken back as for a deferred submit, its check time moved), or becomes
the leader itself. Run again by the same message (its reply lost, a redelivery), it answers the
same way: a leader finds itself named; a follower is added again to a set (one member, one
check time). Two different jobs cannot both lead: the script runs alone.

When the leader has an outcome, :meth:`ReuseIndex.wake` (from its notify step, which the
reconciler guarantees) moves each follower's check time to the recovery grace and takes it off
the set, in one script; the caller then re-sends their submits at once. Each re-decides: the
source completed, so it reuses; the leader failed, so one of them leads (a verdict on the
content, ``CONTENT_POLICY_VIOLATION``, is shared instead). A follower whose wake-up was lost is
re-sent by the reconciler at its own check time (the submit of a ``submitting`` job), and
re-decides the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from tasks.record.contract import (
    DUE_KEY,
    KEY_PREFIX,
    REUSE_FOLLOWERS_SUFFIX,
    REUSE_PREFIX,
    F,
    lua,
)
from tasks.record.states import ACTIVE, Status


class Verdict:
    """What :meth:`ReuseIndex.decide` answers (the script's first word)."""

    NONE = "none"  # not a submit of this message still waiting to send: nothing to decide
    REUSED = "reused"  # a completed source: answer with its audio
    SHARED = "shared"  # the followed leader's verdict on the content: answer with its error
    FOLLOW = "follow"  # a leader is in flight: this job waits for it
    LEAD = "lead"  # this job makes the POST


_ACTIVE_LUA = "{" + ", ".join(f"[{lua(s)}] = true" for s in sorted(ACTIVE)) + "}"

# The decision. KEYS: the reuse key, its followers, the job's hash, the due set. ARGV[1]: JSON
# {id, owner, key, prefix, now, ttl, hold, check_at, count, shared: {code: true}, deadline_at,
# record_ttl}.
_DECIDE = f"""
local a = cjson.decode(ARGV[1])
local me = KEYS[3]
if redis.call('HGET', me, {lua(F.STATUS)}) ~= {lua(Status.SUBMITTING)}
  or redis.call('HGET', me, {lua(F.OWNER)}) ~= a.owner then
  return {{{lua(Verdict.NONE)}}}
end
local active = {_ACTIVE_LUA}
local src = redis.call('GET', KEYS[1])
if src and src ~= a.id then
  local s = redis.call('HMGET', a.prefix .. src, {lua(F.STATUS)}, {lua(F.OUTCOME)},
    {lua(F.FINISHED_AT)}, {lua(F.REUSE_KEY)})
  -- A record under that id that is not the leader's (its id used again once the leader's
  -- record expired) answers nothing.
  if s[4] ~= a.key then s = {{}} end
  local followed = redis.call('HGET', me, {lua(F.REUSE_LEADER)}) == src
  if s[1] == {lua(Status.COMPLETED)} and s[2]
    and (followed or tonumber(s[3] or '0') + a.ttl > tonumber(a.now)) then
    return {{{lua(Verdict.REUSED)}, src, s[2]}}
  end
  if s[1] == {lua(Status.FAILED)} and s[2] and followed then
    local o = cjson.decode(s[2])
    if type(o.error) == 'table' and a.shared[o.error.code] then
      return {{{lua(Verdict.SHARED)}, src, s[2]}}
    end
  end
  if s[1] and not s[2] and active[s[1]] then
    local joined = redis.call('ZADD', KEYS[2], a.now, a.id)
    redis.call('EXPIRE', KEYS[2], a.hold)
    redis.call('HSET', me, {lua(F.REUSE_KEY)}, a.key, {lua(F.REUSE_LEADER)}, src,
      {lua(F.DELIVERY_COUNT)}, a.count)
    redis.call('ZADD', KEYS[4], a.check_at, a.id)
    redis.call('EXPIRE', me, a.record_ttl)
    return {{{lua(Verdict.FOLLOW)}, src, joined}}
  end
end
if redis.call('HEXISTS', me, {lua(F.REUSE_LEADER)}) == 1 then
  -- A follower takes over: its time spent waiting does not count against its submit.
  redis.call('HSET', me, {lua(F.DEADLINE_AT)}, a.deadline_at)
  redis.call('HDEL', me, {lua(F.REUSE_LEADER)})
  redis.call('EXPIRE', me, a.record_ttl)
end
redis.call('SET', KEYS[1], a.id, 'EX', a.hold)
redis.call('HSET', me, {lua(F.REUSE_KEY)}, a.key)
return {{{lua(Verdict.LEAD)}, a.id, redis.call('HGET', me, {lua(F.DEADLINE_AT)}) or ''}}
"""

# Wake the followers of leader ``a.leader``: each still waiting on it is due at ``a.check_at``
# and leaves the set; a follower that ended leaves it too; one that follows another leader of
# the same key stays. Returns the ids woken. KEYS: the followers, the due set.
_WAKE = f"""
local a = cjson.decode(ARGV[1])
local woken = {{}}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local s = redis.call('HMGET', a.prefix .. id, {lua(F.STATUS)}, {lua(F.REUSE_LEADER)})
  if s[1] ~= {lua(Status.SUBMITTING)} then
    redis.call('ZREM', KEYS[1], id)
  elseif s[2] == a.leader then
    redis.call('ZADD', KEYS[2], a.check_at, id)
    redis.call('ZREM', KEYS[1], id)
    woken[#woken + 1] = id
  end
end
return woken
"""


@dataclass(frozen=True)
class Decision:
    """The answer of :meth:`ReuseIndex.decide`: a :class:`Verdict` word, the source (or leader)
    job id, and the source's outcome (``reused``, ``shared``), or the leader's deadline
    (``lead``: new for a follower that takes over)."""

    verdict: str
    source: str | None = None
    outcome: dict[str, Any] | None = None
    deadline_at: float | None = None  # a follower's new deadline when it takes over (lead)
    joined: bool = False  # follow: this call added it (not a re-run, nor a recheck)


def key_of(reuse_key: str) -> str:
    return REUSE_PREFIX + reuse_key


def followers_of(reuse_key: str) -> str:
    return REUSE_PREFIX + reuse_key + REUSE_FOLLOWERS_SUFFIX


class ReuseIndex:
    """The reuse index's two scripts (one instance per process, beside the job store)."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._decide = client.register_script(_DECIDE)
        self._wake = client.register_script(_WAKE)

    def decide(
        self,
        job_id: str,
        owner: str,
        reuse_key: str,
        *,
        ttl_s: float,
        hold_s: float,
        check_at: float,
        deliveries: int,
        shared: Iterable[str],
        deadline_at: float,
        record_ttl_s: float,
    ) -> Decision:
        """Reuse, follow or lead (see the module docstring) for the submit ``owner`` of
        ``job_id``. ``ttl_s``: how old a source's outcome may be (TTS_REUSE_TTL); a follower
        of that very source reuses it whatever its age. ``hold_s``: how long the index keeps
        the key (it must outlive a leader's run plus ``ttl_s``). ``check_at``: a follower's
        check time. ``deliveries``: this delivery's count, taken back for a follower (waiting
        is not a delivery). ``shared``: the error codes a follower takes from its leader.
        ``deadline_at``: a follower's new submit deadline when it takes over (leads after its
        leader failed); ``record_ttl_s``: the job record's TTL while it follows or takes over
        (waiting does not let it expire)."""
        arg = {
            "id": job_id,
            "owner": owner,
            "key": reuse_key,
            "prefix": KEY_PREFIX,
            # Times as text (repr), as every script takes them: a Lua number written back would
            # keep 14 digits only.
            "now": repr(self._clock()),
            "ttl": ttl_s,
            "hold": max(1, int(hold_s)),
            "check_at": repr(check_at),
            "count": max(0, deliveries - 1),
            # An object, not a list: cjson decodes an empty list and an empty object alike.
            "shared": {code: True for code in shared} or {"": False},
            "deadline_at": repr(deadline_at),
            "record_ttl": max(1, int(record_ttl_s)),
        }
        keys = [key_of(reuse_key), followers_of(reuse_key), KEY_PREFIX + job_id, DUE_KEY]
        reply = self._decide(keys=keys, args=[json.dumps(arg)])
        verdict = str(reply[0])
        source = str(reply[1]) if len(reply) > 1 else None
        if verdict == Verdict.LEAD:
            return Decision(verdict, source, deadline_at=float(reply[2]) if reply[2] else None)
        if verdict == Verdict.FOLLOW:
            return Decision(verdict, source, joined=bool(reply[2]))
        outcome = json.loads(reply[2]) if len(reply) > 2 else None
        return Decision(verdict, source, outcome)

    def wake(self, reuse_key: str, leader: str, *, check_at: float) -> list[str]:
        """The followers of ``leader`` that wait, now due at ``check_at`` and out of the set."""
        arg = {"leader": leader, "prefix": KEY_PREFIX, "check_at": repr(check_at)}
        woken = self._wake(keys=[followers_of(reuse_key), DUE_KEY], args=[json.dumps(arg)])
        return [str(job_id) for job_id in woken]
