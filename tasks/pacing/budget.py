"""One NanoGPT call budget for the whole fleet: a GCRA limiter in Redis, shared by every worker
and every call (submit and status), that lowers itself when NanoGPT refuses calls anyway.

NanoGPT allows 25 requests per second per account, across endpoints; Celery's ``rate_limit`` is
per worker and per task, so it cannot say "this account". The budget is the Generic Cell Rate
Algorithm (the one redis-cell and Stripe's and GitHub's published limiters use): one number in
Redis, the *theoretical arrival time* ``tat``; a call is allowed when ``tat`` is less than
``burst`` emission intervals ahead of now, and moves it one interval on. One small Lua script
decides and records a call atomically, so any number of workers share it without a lock. (The
``limits`` library has the same algorithm as a script, but its API takes one hit at a time and
cannot consume a token and grant it to a job in the same step, which parking needs; the whole
algorithm is the ten lines below.)

Who gets a token when callers want more than the budget:

* a call made straight from a task (a caller's submit, a poll's retry, a re-sent step) takes a
  token only while the budget can spare one beyond what is already waiting for it (due parked
  polls and parked submits); otherwise it is **not made**: the task parks its job in ``tts:wait``
  (a poll due at once, a submit in line by when it was accepted) and returns, holding no worker
  slot;
* the poll releaser (``tasks/sweeps/granting.py``) promises the tokens left to waiting jobs, chosen
  by :mod:`tasks.pacing.poll_value`, writing a **grant** in each job's record in the same script.
  The released step takes its token only when it calls, ahead of everyone else: tokens taken at the
  grant would let steps that waited behind a backlog in the broker call all at once (bench row 6
  met 55 calls in half a second that way). A parked call is not a retry.

AIMD: NanoGPT answering 429 despite the budget (another client on the account, a lower limit
than configured) lowers the fleet's rate: halved on a burst of refusals, then raised by
:data:`RECOVERY_PER_S` each second back to the configured rate. Times are epoch seconds from the
server's clock (Redis' ``TIME``), not the workers': a worker whose clock runs ahead would
otherwise take tokens before the others could (redis-cell and the published GCRA limiters do
the same).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from tasks.record.contract import (
    DUE_KEY,
    KEY_PREFIX,
    POLL_GRANT_PREFIX,
    SUBMIT_GRANT,
    WAIT_KEY,
    F,
    lua,
)
from tasks.record.jobs import POLLS_FROM
from tasks.record.states import SEQ_DONE, Status

log = logging.getLogger(__name__)

#: The budget's state: ``tat``, and while lowered ``low_rate`` / ``low_at`` and the 429 window.
BUDGET_KEY = "tts:budget"
#: Job ids granted a call whose step has not spent it yet, scored by when
#: (tasks/sweeps/granting.py).
GRANTED_KEY = "tts:granted"
# Calls per second the lowered rate climbs back each second: from half of 20/s to all of it in
# 20 s, slower than the halving so a limit that persists keeps the rate low.
RECOVERY_PER_S = 0.5
# A burst of 429s is this many within REFUSAL_WINDOW_S: one refusal may be another client's
# spike; three within seconds mean the account's limit is below the budget's rate.
REFUSALS_TO_LOWER = 3
REFUSAL_WINDOW_S = 5.0
# A grant not spent within this long is taken for lost (its message died with a worker; the
# reconciler re-sends the step, which still finds its grant): its token is no longer held.
GRANT_TTL_S = 10.0
# Never lower below this: a budget of zero would stop every job instead of slowing it.
MIN_RATE_PER_S = 1.0
# The state outlives idle gaps by far; it expires so a removed deployment leaves nothing.
STATE_TTL_S = 86_400

# Every script takes one argument, a JSON document built by :meth:`Budget._arg` (as the job
# record's scripts take theirs, tasks/record/contract.py): ``rate`` (configured) and ``burst``,
# the ``now`` of a fake clock when one is set, and the script's own fields. With no ``now`` the
# script reads Redis' own clock, so every worker's calls are measured against one clock,
# whatever its own says (redis-cell does the same); a ``now`` is the simulation's or a test's
# fake clock. TIME is not deterministic: the script's writes must be replicated as effects, the
# default since Redis 5 (and the only mode since 7); replicate_commands() asks for it on older
# servers and is a no-op on newer ones.
_NOW = """
redis.replicate_commands()
local a = cjson.decode(ARGV[1])
local now
if a.now then
  now = tonumber(a.now)
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
"""

# Shared by the budget's scripts: the rate now (the configured one, or the lowered one climbing
# back), the emission interval, tat no earlier than now, and the tokens free now. The 1e-3 of a
# token absorbs rounding: epoch seconds (~1.8e9) carry only ~2e-7 s of precision in a double.
_STATE = (
    _NOW
    + f"""
local cfg, burst = tonumber(a.rate), tonumber(a.burst)
local h = redis.call('HMGET', KEYS[1], 'tat', 'low_rate', 'low_at')
local rate = cfg
if h[2] then
  local r = tonumber(h[2]) + (now - tonumber(h[3])) * {RECOVERY_PER_S!r}
  if r < cfg then rate = math.max(r, {MIN_RATE_PER_S!r}) end
end
local t = 1 / rate
local tat = math.max(tonumber(h[1]) or now, now)
local free = math.floor((now + burst * t - tat) / t + 1e-3)
if free < 0 then free = 0 end
local now_s = string.format('%.17g', now)
"""
)

# tat is saved with all 17 digits: Lua's tostring keeps 14, 1e-4 s at ~1.8e9, and each call would
# then move tat by 1/rate rounded to 1e-4 s, so the budget drifted from its rate (+0.1 % at 30/s).
_SAVE = f"""
redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', tat))
redis.call('EXPIRE', KEYS[1], {STATE_TTL_S})
"""


# Grants handed out but not yet spent (their steps still in the broker): they hold tokens the
# releaser must not hand out again. One lost with its message stops counting after GRANT_TTL_S.
def _reserved(granted_key: str) -> str:
    """The Lua counting the grants outstanding in the granted set ``granted_key``."""
    return f"""
redis.call('ZREMRANGEBYSCORE', {granted_key}, '-inf', now - {GRANT_TTL_S})
local reserved = redis.call('ZCARD', {granted_key})
"""


# A step's call. The token is always taken here, when the call is about to be made, so the calls
# NanoGPT sees keep the budget's pace however long their messages waited in the broker. A job
# holding its grant (``grant``) may take any free token; any other call only one the budget can
# spare beyond the grants outstanding and the jobs waiting in the wait set (the due parked polls
# and the parked submits, which score below every poll: one count). The grant is spent only
# with a token: a holder that finds none (the tokens went to calls that came first) keeps it and
# parks again, first in line for the next one. Returns {1} (make the call) or
# {0, seconds until the next token}.
# KEYS: budget, job, wait set, granted set. The argument's ``job``: the job id.
_SPEND = (
    _STATE
    + _reserved("KEYS[4]")
    + f"""
local need = 1
local granted = redis.call('HGET', KEYS[2], {lua(F.GRANT)}) == a.grant
if not granted then
  need = 1 + reserved + redis.call('ZCOUNT', KEYS[3], '-inf', now_s)
end
if free >= need then
  if granted then
    redis.call('HDEL', KEYS[2], {lua(F.GRANT)})
    redis.call('ZREM', KEYS[4], a.job)
  end
  tat = tat + t
"""
    + _SAVE
    + """
  return {1, '0'}
end
return {0, tostring(math.max(tat + t - burst * t - now, 0))}
"""
)


# Taking waiting jobs for their calls, for each job id in ARGV[2..] while ``avail`` (the tokens
# that may still be promised) lasts: take the job off the wait set (ZREM: exactly one releaser
# wins it; only once it is due, as a ranking a moment old may name a poll parked again since; a
# submit's score is always due), check from its status that it still waits for that call (a
# poll its current seq, a submit its POST), move its check time to the argument's ``check_at``
# (a releaser killed before publishing its step leaves it to the reconciler, soon) and run
# ``on_take`` (under a budget, the lines that write the grant). Returns the ids taken, in order.
# The argument's ``prefix``: the job key prefix.
def _take(wait_key: str, due_key: str, on_take: str) -> str:
    """The Lua taking waiting jobs from the wait set ``wait_key``, their check times in
    ``due_key``, running ``on_take`` (Lua with ``key``, ``id`` and ``grant`` in scope) for
    each job taken."""
    return f"""
local out = {{}}
for i = 2, #ARGV do
  if avail < 1 then break end
  local id = ARGV[i]
  local key = a.prefix .. id
  local due = tonumber(redis.call('ZSCORE', {wait_key}, id) or '+inf') <= now
  if due and redis.call('ZREM', {wait_key}, id) == 1 then
    local f = redis.call('HMGET', key, {lua(F.STATUS)}, {lua(F.SEQ)})
    local grant = nil
    if f[1] == {lua(Status.POLLING)} and f[2] and f[2] ~= {lua(SEQ_DONE)} then
      grant = {lua(POLL_GRANT_PREFIX)} .. f[2]
    elseif f[1] == {lua(Status.SUBMITTING)} then grant = {lua(SUBMIT_GRANT)} end
    if grant then
{on_take}
      redis.call('ZADD', {due_key}, 'XX', a.check_at, id)
      avail = avail - 1
      table.insert(out, id)
    end
  end
end
"""


# The releaser's grant under a budget: free tokens not yet promised to earlier grants, each
# taken job holding a grant its step spends when it calls (:meth:`Budget.spend`).
# KEYS: budget, wait set, granted set, due set.
_WRITE_GRANT = f"""
      redis.call('HSET', key, {lua(F.GRANT)}, grant)
      redis.call('ZADD', KEYS[3], now_s, id)"""
_GRANT = (
    _STATE
    + _reserved("KEYS[3]")
    + "local avail = free - reserved\n"
    + _take("KEYS[2]", "KEYS[4]", _WRITE_GRANT)
    + f"redis.call('EXPIRE', KEYS[3], {STATE_TTL_S})\nreturn out"
)

# The same release with the budget off: unlimited tokens, so every job named is taken and no
# grant is written (a step with the budget off calls without asking it). KEYS: wait set, due set.
_RELEASE_UNLIMITED = _NOW + "local avail = #ARGV\n" + _take("KEYS[1]", "KEYS[2]", "") + "return out"

# Read-only but for expired grants: {tokens free now and not promised to a grant, rate now}.
# KEYS: budget, granted set.
_PEEK = _STATE + _reserved("KEYS[2]") + "return {math.max(free - reserved, 0), tostring(rate)}"

# NanoGPT refused a call (429) despite the budget. Count it in a short window; on a burst, halve
# the rate now (no lower than the argument's ``min_rate``) and restart the window. Returns {1 if
# this lowered the rate, 1 if it was at the configured rate before, the rate now}.
_REFUSED = (
    _STATE
    + f"""
local w = redis.call('HMGET', KEYS[1], 'ref_n', 'ref_at')
local n, since = tonumber(w[1]) or 0, tonumber(w[2]) or now
if now - since > {REFUSAL_WINDOW_S} then n, since = 0, now end
n = n + 1
if n < {REFUSALS_TO_LOWER} then
  redis.call('HSET', KEYS[1], 'ref_n', n, 'ref_at', string.format('%.17g', since))
  redis.call('EXPIRE', KEYS[1], {STATE_TTL_S})
  return {{0, 0, tostring(rate)}}
end
local was_full = 0
if rate >= cfg then was_full = 1 end
local lowered = math.max(rate / 2, tonumber(a.min_rate))
redis.call('HSET', KEYS[1], 'low_rate', tostring(lowered), 'low_at', now_s,
  'ref_n', 0, 'ref_at', now_s)
redis.call('EXPIRE', KEYS[1], {STATE_TTL_S})
return {{1, was_full, tostring(lowered)}}
"""
)


@dataclass(frozen=True)
class Snapshot:
    """The budget as ``tts-worker status`` shows it."""

    rate_per_s: float  # configured (TTS_UPSTREAM_RATE)
    current_rate_per_s: float  # lower while NanoGPT's 429s keep it lowered
    burst: int
    tokens_free: int
    polls_due: int  # parked polls that are due and wait for a token
    submits_waiting: int


class Budget:
    """The fleet's NanoGPT call budget; one per process. ``rate_per_s`` 0 turns it off: every
    call is made at once (the project before issue 15; for benchmarks of the worker itself).

    The scripts run on Redis' clock (``TIME``), so workers whose clocks disagree still share
    the rate fairly and see the same grants expire. ``clock`` is the worker's own, used only
    where the budget reads what workers wrote on theirs (the parked polls' due times, for
    :meth:`snapshot`). ``script_clock`` replaces Redis' clock in the scripts: only the
    simulation (tests/sim) and tests set it, to run the budget on a fake clock; a worker never
    does.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.time,
        script_clock: Callable[[], float] | None = None,
    ) -> None:
        self._redis = client
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._script_clock = script_clock
        self._spend = client.register_script(_SPEND)
        self._grant = client.register_script(_GRANT)
        self._release_unlimited = client.register_script(_RELEASE_UNLIMITED)
        self._peek = client.register_script(_PEEK)
        self._refused = client.register_script(_REFUSED)

    @property
    def on(self) -> bool:
        return self.rate_per_s > 0

    def _arg(self, **fields: str) -> str:
        """The one argument every budget script takes (see :data:`_NOW`): the rate, the
        burst, a fake clock's ``now`` if one is set (else the script reads Redis' clock), and
        the script's own ``fields``."""
        doc = {"rate": repr(self.rate_per_s), "burst": str(self.burst), **fields}
        if self._script_clock is not None:
            doc["now"] = repr(self._script_clock())
        return json.dumps(doc)

    def spend(self, job_id: str, grant: str) -> float:
        """Before a NanoGPT call for ``job_id``: 0.0 if the call may be made now (a token was
        taken: any free one if the job holds its ``grant``, which is spent; otherwise only one
        the budget can spare beyond what is promised and waiting), else the seconds until the
        next token; the caller then parks the job instead of calling."""
        if not self.on:
            return 0.0
        keys = [BUDGET_KEY, KEY_PREFIX + job_id, WAIT_KEY, GRANTED_KEY]
        allowed, wait_s = self._spend(keys=keys, args=[self._arg(grant=grant, job=job_id)])
        return 0.0 if int(allowed) else max(float(wait_s), 1e-3)

    def free(self) -> tuple[int, float]:
        """(tokens free now and not promised to a grant, the rate now), without spending any;
        (0, 0.0) when off: there is nothing to count (the script would divide by a rate of 0)."""
        if not self.on:
            return 0, 0.0
        free, rate = self._peek(keys=[BUDGET_KEY, GRANTED_KEY], args=[self._arg()])
        return int(free), float(rate)

    def grant(self, job_ids: Sequence[str], *, check_at: float) -> list[str]:
        """Promise free tokens to waiting jobs in the order of ``job_ids`` (parked polls and
        submits) while some are not yet promised; returns the granted ids. Each is off the wait
        set; its next step takes the token when it calls (:meth:`spend`), so a message that
        waited in the broker does not call late in a burst. Each granted job's check time moves
        to ``check_at`` in the same script. With the budget off the tokens are unlimited: every
        job named that still waits is taken, and no grant is written (nothing spends one)."""
        if not job_ids:
            return []
        args = [self._arg(prefix=KEY_PREFIX, check_at=repr(check_at)), *job_ids]
        if self.on:
            keys = [BUDGET_KEY, WAIT_KEY, GRANTED_KEY, DUE_KEY]
            granted = self._grant(keys=keys, args=args)
        else:
            granted = self._release_unlimited(keys=[WAIT_KEY, DUE_KEY], args=args)
        return [str(job_id) for job_id in granted]

    def refused(self) -> None:
        """NanoGPT answered 429: count it; on a burst, lower the fleet's rate (logged once per
        episode, when the rate leaves its configured value)."""
        if not self.on:
            return
        lowered, was_full, rate = self._refused(
            keys=[BUDGET_KEY], args=[self._arg(min_rate=repr(MIN_RATE_PER_S))]
        )
        if int(lowered) and int(was_full):
            log.warning(
                "NanoGPT refused %d calls within %.0fs despite the budget of %g calls/s "
                "(TTS_UPSTREAM_RATE); the fleet's rate is lowered to %.3g/s and climbs back "
                "by %g/s each second",
                REFUSALS_TO_LOWER,
                REFUSAL_WINDOW_S,
                self.rate_per_s,
                float(rate),
                RECOVERY_PER_S,
            )

    def snapshot(self) -> Snapshot:
        now = self._clock()
        free, rate = self.free()
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcount(WAIT_KEY, POLLS_FROM, now)
            pipe.zcount(WAIT_KEY, "-inf", f"({POLLS_FROM}")
            due, submits = pipe.execute()
        return Snapshot(self.rate_per_s, rate, self.burst, free, int(due), int(submits))
