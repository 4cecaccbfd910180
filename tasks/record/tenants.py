"""Per-tenant caps' counters in Redis (issue 22): a tenant's jobs in flight, and what NanoGPT
said its jobs cost today (UTC). Off unless ``TTS_TENANT_MAX_IN_FLIGHT`` or
``TTS_TENANT_MAX_SPEND_PER_DAY`` is set; jobs without a tenant are never capped.

* **In flight**: one sorted set per tenant, its submits admitted and not ended, each scored by
  its deadline. :func:`admit` checks and adds in one script (two workers admitting the last
  place cannot both win); the job leaves at its outcome (:func:`release`), and one whose
  release was lost (its worker died between the outcome and the release) leaves at its
  deadline, when nothing of it can run any more: the count heals itself.
* **Spend**: one float per tenant and day, added to once per job when its ticket or answer says
  what it cost (:func:`spent`); a submit is admitted while the day's sum is below the cap. The
  cost is known only after the POST, so submits admitted together may pass the cap by their own
  cost: the cap stops the next ones, not the ones in flight.
"""

from __future__ import annotations

import json
import time

import redis

#: Sorted set of a tenant's admitted submits not yet ended, scored by deadline (epoch seconds).
IN_FLIGHT_PREFIX = "tts:tenant:in-flight:"
#: A tenant's spend on one UTC day (``+ tenant + ":" + YYYYMMDD``), in NanoGPT's ``cost`` units.
SPEND_PREFIX = "tts:tenant:spend:"
# A day's sum is kept a day past its end: enough to read yesterday's, gone after.
SPEND_TTL_S = 2 * 86_400
# Answers of the admit script.
ADMITTED = 1
IN_FLIGHT_FULL = 0
SPEND_REACHED = -1

# KEYS: the tenant's in-flight set, its spend today. ARGV[1]: JSON with ``job``, ``now``,
# ``deadline``, ``max_in_flight`` and ``max_spend`` (0: no such cap). A job already admitted is
# admitted again (a re-run of its submit). Returns ADMITTED, IN_FLIGHT_FULL or SPEND_REACHED.
_ADMIT = f"""
local a = cjson.decode(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', a.now)
if redis.call('ZSCORE', KEYS[1], a.job) then return {ADMITTED} end
local cap = tonumber(a.max_in_flight)
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return {IN_FLIGHT_FULL} end
local max_spend = tonumber(a.max_spend)
if max_spend > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= max_spend then
  return {SPEND_REACHED}
end
if cap > 0 then
  redis.call('ZADD', KEYS[1], a.deadline, a.job)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
  redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last)))
end
return {ADMITTED}
"""


def _spend_key(tenant: str, now: float) -> str:
    return f"{SPEND_PREFIX}{tenant}:{time.strftime('%Y%m%d', time.gmtime(now))}"


def admit(
    client: redis.Redis,
    tenant: str,
    job_id: str,
    *,
    now: float,
    deadline_at: float,
    max_in_flight: int,
    max_spend: float,
) -> int:
    """Whether ``job_id`` may send its POST under its tenant's caps: :data:`ADMITTED` (and it
    counts in flight until :func:`release` or its deadline), :data:`IN_FLIGHT_FULL` or
    :data:`SPEND_REACHED`."""
    arg = {
        "job": job_id,
        "now": repr(now),
        "deadline": repr(deadline_at),
        "max_in_flight": str(max_in_flight),
        "max_spend": repr(max_spend),
    }
    keys = [IN_FLIGHT_PREFIX + tenant, _spend_key(tenant, now)]
    return int(client.register_script(_ADMIT)(keys=keys, args=[json.dumps(arg)]))


def release(client: redis.Redis, tenant: str, job_id: str) -> None:
    """The job ended: it no longer counts in flight."""
    client.zrem(IN_FLIGHT_PREFIX + tenant, job_id)


def spent(client: redis.Redis, tenant: str, cost: float, *, now: float) -> None:
    """Add what one job cost to its tenant's spend today (once per job)."""
    key = _spend_key(tenant, now)
    with client.pipeline(transaction=True) as pipe:
        pipe.incrbyfloat(key, cost)
        pipe.expire(key, SPEND_TTL_S)
        pipe.execute()


def spend_today(client: redis.Redis, tenant: str, *, now: float) -> float:
    """What the tenant's jobs cost today, as counted."""
    return float(client.get(_spend_key(tenant, now)) or 0.0)


def in_flight(client: redis.Redis, tenant: str, *, now: float) -> int:
    """How many of the tenant's submits count in flight now."""
    return int(client.zcount(IN_FLIGHT_PREFIX + tenant, f"({now}", "+inf"))
