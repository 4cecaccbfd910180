"""Which waiting jobs get the budget's tokens when several lanes wait: priorities, then tenants.

Pure: the releaser (``tasks/sweeps/granting.py``) passes the waiting jobs of each lane, in the
order it would serve them (polls by their chance of finding audio, submits oldest first), and
the lanes' tags kept in Redis; nothing here reads Redis or a clock.

The rule, a tree of shares (start-time fair queueing, Goyal et al. 1996, at each level):

* **priority**: ``interactive`` against everything else: interactive work takes up to
  ``interactive_share`` of the tokens while other work waits (all of them when nothing else
  does); it never takes the rest, so a stream of interactive jobs never starves the others.
  Of what is left, ``bulk`` takes up to ``bulk_share`` while ``normal`` work waits;
* **tenant**: within a priority, tenants share equally, whatever their backlogs;
* **kind**: within a tenant, its waiting submits take up to ``submit_share`` while its polls
  wait (``TTS_UPSTREAM_SUBMIT_SHARE``, as between all polls and submits before lanes).

A share a lane does not use flows to the lanes that wait. Each node of the tree has a *finish
tag* (how much it was served, divided by its weight) and each parent a *virtual time* (the start
tag of the child it served last). A token goes, level by level, to the child with the smallest
start tag ``max(finish, parent's virtual time)``, and that child's finish tag moves on by
``1 / weight``. A lane that was idle starts at its parent's virtual time: it gets no credit for
the time it did not wait, and one that just came loses nothing to one that waited long. Ties
go to the more urgent priority, then the tenant's name, then polls before submits.

The tags are kept in Redis (``tts:lanes``, one hash), so the shares hold across the releaser's
ticks and across a hand-over to another worker's releaser. A tag at or below its parent's
virtual time says no more than a missing one; :func:`prune` drops those, so the hash holds
only the lanes served ahead of the others, never every tenant ever seen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.record.jobs import Priority

POLL = "poll"
SUBMIT = "submit"
# A weight never reaches 0: 1/weight would be infinite. A kind whose share is (nearly) all of
# its tenant's takes the tokens first; the other gets what is left, as before lanes.
MIN_WEIGHT = 1e-6
# An interactive job waits at most this many of its intervals between polls (3 s by default).
INTERACTIVE_MAX_WAITS = 3
# Tags kept at most (tasks/sweeps/granting.py reads them all each tick while lanes compete):
# a round of many tenants each served once leaves each one ahead until the next round.
MAX_TAGS = 512
# The virtual time of the tree's root; a parent's is stored under this prefix and its name.
_V = "v:"
_ROOT = ""
_ORDER = {p.value: i for i, p in enumerate(Priority)}


@dataclass(frozen=True)
class Lane:
    """Where a waiting job's call waits: its priority, its tenant ("" when none) and its kind
    (:data:`POLL` or :data:`SUBMIT`)."""

    priority: str
    tenant: str
    kind: str


@dataclass(frozen=True)
class Shares:
    """The weights of the tree (see the module's docstring); each in (0, 1]."""

    interactive_share: float
    bulk_share: float
    submit_share: float


#: A node of the tree: its name (in the tags' hash), its weight, and its tie-break key.
Node = tuple[str, float, tuple[object, ...]]


def _w(x: float) -> float:
    return max(x, MIN_WEIGHT)


def path(lane: Lane, shares: Shares) -> list[Node]:
    """The nodes from the root down to ``lane``: (name, weight, tie-break key) each."""
    p, t, k = lane.priority, lane.tenant, lane.kind
    rank = _ORDER.get(p, _ORDER[Priority.NORMAL])
    top: list[Node]
    if p == Priority.INTERACTIVE:
        top = [("i", _w(shares.interactive_share), (0,))]
    else:
        bulk = p == Priority.BULK
        weight = shares.bulk_share if bulk else 1 - shares.bulk_share
        others = ("o", _w(1 - shares.interactive_share), (1,))
        top = [others, ("o/b" if bulk else "o/n", _w(weight), (rank,))]
    parent = top[-1][0]
    tenant = f"{parent}/{t}"
    kind = f"{tenant}/{k}"
    kind_weight = shares.submit_share if k == SUBMIT else 1 - shares.submit_share
    return [*top, (tenant, 1.0, (t,)), (kind, _w(kind_weight), (k != POLL,))]


def _charge(tags: dict[str, float], nodes: Sequence[Node]) -> None:
    """Serve one call down ``nodes``: each parent's virtual time moves to the child's start
    tag, and the child's finish tag one weight on."""
    parent = _ROOT
    for name, weight, _key in nodes:
        start = max(tags.get(name, 0.0), tags.get(_V + parent, 0.0))
        tags[_V + parent] = start
        tags[name] = start + 1.0 / weight
        parent = name


def order(
    waiting: Mapping[Lane, Sequence[str]],
    n: int,
    tags: Mapping[str, float],
    shares: Shares,
) -> list[str]:
    """Up to ``n`` job ids from ``waiting`` (each lane's jobs in the order it serves them),
    in the order the rule gives them tokens. ``tags`` is not changed: :func:`charge` records
    what was really granted."""
    work = dict(tags)
    queues = {lane: deque(ids) for lane, ids in waiting.items() if ids}
    paths = {lane: path(lane, shares) for lane in queues}
    out: list[str] = []
    while queues and len(out) < n:
        # Descend from the root, at each level to the child with the smallest start tag.
        candidates, parent, depth = list(queues), _ROOT, 0
        while len(candidates) > 1:
            level = {paths[lane][depth][0]: paths[lane][depth] for lane in candidates}
            vt = work.get(_V + parent, 0.0)
            best = min(level.values(), key=lambda nd: (max(work.get(nd[0], 0.0), vt), nd[2]))
            candidates = [lane for lane in candidates if paths[lane][depth][0] == best[0]]
            parent, depth = best[0], depth + 1
        lane = candidates[0]
        _charge(work, paths[lane])
        out.append(queues[lane].popleft())
        if not queues[lane]:
            del queues[lane]
    return out


def charge(tags: Mapping[str, float], served: Iterable[Lane], shares: Shares) -> dict[str, float]:
    """The tags once the calls of ``served`` (in the order granted) are counted."""
    work = dict(tags)
    for lane in served:
        _charge(work, path(lane, shares))
    return work


def _parent(name: str) -> str:
    return name.rpartition("/")[0] if "/" in name else _ROOT


def prune(tags: Mapping[str, float]) -> dict[str, float]:
    """The tags that still say something: a node's finish tag above its parent's virtual time
    (one at or below it starts there anyway), at most :data:`MAX_TAGS` of them (those most
    ahead: a lane dropped past that gets at most one round's credit back), and the virtual
    times of the parents they have."""
    ahead = {
        name: tag - tags.get(_V + _parent(name), 0.0)
        for name, tag in tags.items()
        if not name.startswith(_V)
    }
    kept_names = [name for name, lead in ahead.items() if lead > 0]
    if len(kept_names) > MAX_TAGS:
        kept_names = sorted(kept_names, key=lambda name: -ahead[name])[:MAX_TAGS]
    kept = {name: tags[name] for name in kept_names}
    parents = {_parent(name) for name in kept}
    kept |= {_V + p: tags[_V + p] for p in parents if _V + p in tags}
    return kept


def poll_intervals(
    priority: str, *, interval_s: float, max_interval_s: float, interactive_s: float
) -> tuple[float, float]:
    """The schedule's steady interval and longest wait for a job of ``priority``. An
    interactive job's interval is its own (never longer than everyone's), so its ready audio
    waits about that long for the poll that finds it; and it never waits more than
    :data:`INTERACTIVE_MAX_WAITS` intervals, so a queue estimate that overshoots (the prior
    speed before the queue was seen to move) costs it seconds, not tens of seconds. The extra
    polls are its lane's tokens, within the interactive share."""
    if priority != Priority.INTERACTIVE:
        return interval_s, max_interval_s
    steady_s = min(interactive_s, interval_s)
    return steady_s, min(max_interval_s, max(steady_s, INTERACTIVE_MAX_WAITS * steady_s))


def finite(tags: Mapping[Any, Any]) -> dict[str, float]:
    """Tags as read from Redis, anything unreadable left out (it starts at its parent's time)."""
    out = {}
    for name, text in tags.items():
        try:
            value = float(text)
        except ValueError:
            continue
        if math.isfinite(value):
            out[str(name)] = value
    return out
