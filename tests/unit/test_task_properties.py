"""Any JSON a caller can send ends as a typed outcome: property tests over every step.

Hypothesis drives the steps (:mod:`tasks.steps`: submit, poll, download, notify) and the hook
that records a job when a worker receives its message (:func:`tasks.adapters.received.on_received`)
in-process, on a real Redis, with arbitrary JSON-able arguments: None, booleans, ints far beyond
any float, nan and infinities, strings with control characters and lone surrogates, lists,
dicts; and with arguments that do not fit the task's signature at all.

Arguments that do not bind (a missing or extra positional, an unknown keyword, one given twice)
never reach our code: a worker calls ``task(*args, **kwargs)`` and Python's binding raises
``TypeError`` inside Celery's tracer, which marks the task FAILURE and acks the message. The
product leaves it there on purpose: the received hook makes no record for such a message either
(tests/unit/test_received.py), so it is Celery's failure, not a job. Callers with our code get
the same ``TypeError`` earlier, from ``apply_async``'s argument check. Below, every call is first
bound against the Celery task's own signature, as the worker would; only calls that bind are run.

What each call that binds must end as: the step returns a job id (or a ``Retry``), never raises;
the id is one :func:`validation.job_id` accepts and has a record; that record is a live job when
the arguments were valid and a failed one with ``INVALID_INPUT`` when they were not; a failed one
was announced by exactly one ``tts.notify``, whose webhook goes to the ``notify_url`` when that
URL was usable. Internal messages (download, notify, a poll carrying a lease) for a job that does
not exist create nothing.
"""

from __future__ import annotations

import inspect
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from tasks import errors, names, steps
from tasks.adapters import misfit, tts
from tasks.adapters.received import on_received
from tasks.nanogpt import validation
from tasks.nanogpt.parsing import Pending, Ticket
from tasks.nanogpt.validation import PollRequest, SubmitRequest
from tasks.record.jobs import Job
from tasks.record.states import ACTIVE, NotifyState, Status
from tasks.steps.context import Ctx
from tests.support.ctx import Outbox, make_ctx
from workers.embedded_redis import EmbeddedRedis

MODEL = "Kokoro-82m"
HOOK = "https://hooks.example.com/tts?token=abc"
# A Redis database of the quiet server that no other test uses: flushing it per example (ids
# are arbitrary, so "job-1" of one example must not meet the next one's) touches nobody else.
PROPS_DB = 15
# Enough to meet every kind of value in every argument a few times; the whole module stays
# well under 20 s.
EXAMPLES = 200

# --- values ----------------------------------------------------------------------------------

# Strings a caller's bug or a crafted message may well contain, next to Hypothesis' own text
# (which seldom draws surrogates).
AWKWARD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\nb",
    "job-1\n",
    "\x1b[31mred",
    "\x7f",
    "\x85",
    "\ud800",
    "ok\udfff",
    "é",
    "../etc/passwd",
    "x" * 129,
    "https://[::1/",
    "https://example.com:99999/",
    "ftp://example.com/",
    "https://exa\u2100mple.com/",
]
strings = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(
    AWKWARD_STRINGS
)
# JSON numbers Python decodes: ints of any size up to its 4300-digit conversion limit.
huge_ints = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 10**4000])
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | strings
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
    max_leaves=6,
)
# Most arguments are strings: a wrong one is most often a wrong string.
wild_values = strings | json_values

# --- calls -----------------------------------------------------------------------------------

# Values each argument takes when it is meant to be right: a call gets a few arguments drawn
# from any JSON and the rest from here, so the accepting path is reached as often as the
# refusing one. A list starting with None means the argument may also be left out.
SUBMIT_ARGS: dict[str, list[Any]] = {
    "text": ["Hello there", "Grüße, ☃", "x" * validation.MAX_TEXT_CHARS],
    "model": [MODEL, "Elevenlabs-V3"],
    "voice": [None, "Rachel"],
    "speed": [None, 0.25, 1, 4.0],
    "response_format": [None, "mp3"],
    "instructions": [None, "Calm.\nSlow."],  # free text: control characters are fine here
    "stability": [None, 0, 0.5, 1.0],
    "similarity_boost": [None, 1],
    "style": [None, 0.0],
    "notify_url": [None, HOOK, "http://127.0.0.1:8080/hook"],
    "job_id": [None, "job-1", "A" * validation.MAX_ID_CHARS, "a.b_c:d-e"],
    "reuse": [True, False],
}
POLL_ARGS: dict[str, list[Any]] = {
    "run_id": ["run-1", "2f0c5a4e-4a1e-4a43-9c8e-5bd4e1d0c0aa"],
    "model": [MODEL],
    "cost": [None, 0, 0.05],
    "payment_source": [None, "nano"],
    "is_api_request": [True, False],
    "notify_url": [None, HOOK],
    "job_id": [None, "job-1"],
    # Internal: a caller leaves them out; drawn from any JSON they may be a lease of sorts.
    "lease": [None, None, "tok"],
    "seq": [0],
}
ID_ARGS: dict[str, list[Any]] = {"job_id": ["job-1"]}
# Names the tasks do not have (and, for submit, the poll's internal ones).
UNKNOWN_NAMES = st.sampled_from(["colour", "lease", "retries", "text_", "id"])


@dataclass(frozen=True)
class Call:
    """One message's arguments, as a JSON body carries them."""

    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


@st.composite
def calls(draw: st.DrawFn, params: dict[str, list[Any]], required: int) -> Call:
    """Arguments for a task whose first ``required`` parameters are positional: mostly right,
    some drawn from any JSON, sometimes not fitting the signature at all."""
    chosen = list(params)
    wild = draw(st.sets(st.sampled_from(chosen), max_size=3))
    values = {n: draw(wild_values if n in wild else st.sampled_from(params[n])) for n in chosen}
    positional = [values[n] for n in chosen[:required]]
    kwargs = {
        n: values[n]
        for n in chosen[required:]
        if n in wild or params[n][0] is not None or values[n] is not None or draw(st.booleans())
    }
    shape = draw(st.sampled_from(["fits"] * 6 + ["by_name", "short", "long", "unknown", "twice"]))
    if shape == "by_name":  # send_task(name, kwargs={...}): binds as well
        return Call([], {**dict(zip(chosen, positional, strict=False)), **kwargs})
    if shape == "short":
        return Call(positional[:-1], kwargs)
    if shape == "long":
        return Call([*positional, draw(json_values)], kwargs)
    if shape == "unknown":
        return Call(positional, {**kwargs, draw(UNKNOWN_NAMES): draw(json_values)})
    if shape == "twice":
        return Call(positional, {**kwargs, chosen[0]: positional[0]})
    return Call(positional, kwargs)


def bind(task: Any, call: Call) -> dict[str, Any] | None:
    """The arguments as the task's function gets them, defaults filled in; None where the
    worker's ``task(*args, **kwargs)`` raises ``TypeError`` before any code of ours runs."""
    try:
        bound = inspect.signature(task.run).bind(*call.args, **call.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


# --- the world around the steps --------------------------------------------------------------


class FakeNanoGPT:
    """NanoGPT that takes every submit (a ticket) and answers every status check "pending"."""

    def submit(self, request: SubmitRequest) -> Ticket:
        return Ticket(f"run-{uuid.uuid4().hex}", request.model, 0.01, None)

    def status(self, poll: PollRequest) -> Pending:
        return Pending("pending", 3)


@dataclass
class Hooks:
    """The webhooks sent: ``(url, body)`` in order."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, url: str, body: dict[str, Any], *, msg_id: str) -> int:
        self.sent.append((url, body))
        return 204


@pytest.fixture(scope="module")
def new_world(quiet_redis_server: EmbeddedRedis) -> Iterator[Callable[[], World]]:
    """A maker of empty worlds, one per example (Hypothesis runs many in one test call)."""
    # Not from_url: the server's URL names db 0, which wins over a db argument.
    db = redis.Redis(
        host="127.0.0.1", port=quiet_redis_server.port, db=PROPS_DB, decode_responses=True
    )
    assert db.connection_pool.connection_kwargs["db"] == PROPS_DB

    def fresh() -> World:
        db.flushdb()
        hooks = Hooks()
        ctx, outbox = make_ctx(db, upstream=FakeNanoGPT(), webhook=hooks)
        return World(ctx, outbox, hooks, db)

    yield fresh
    db.flushdb()
    db.close()


@dataclass
class World:
    """One example's context on an empty database, and what it sent."""

    ctx: Ctx
    outbox: Outbox
    hooks: Hooks
    db: redis.Redis

    def job(self, job_id: str) -> Job | None:
        return self.ctx.jobs.get(job_id)


# --- what a call should end as ---------------------------------------------------------------


def submit_refusal(a: dict[str, Any], task_id: str) -> errors.InvalidInput | None:
    """Why ``tts.submit_tts`` with these (bound) arguments is invalid input, if it is."""
    options = {k: a[k] for k in SUBMIT_ARGS if k not in ("text", "model", "notify_url", "job_id")}
    try:
        validation.job_id(task_id if a["job_id"] is None else a["job_id"])
        validation.submit_request(a["text"], a["model"], **options)
        validation.notify_url(a["notify_url"])
    except errors.InvalidInput as exc:
        return exc
    return None


def poll_refusal(a: dict[str, Any]) -> errors.InvalidInput | None:
    """Why ``tts.poll_tts`` with these (bound) arguments is invalid input, if it is."""
    try:
        validation.job_id(a["run_id"] if a["job_id"] is None else a["job_id"])
        validation.poll_request(
            a["run_id"],
            a["model"],
            cost=a["cost"],
            payment_source=a["payment_source"],
            is_api_request=a["is_api_request"],
        )
        validation.notify_url(a["notify_url"])
    except errors.InvalidInput as exc:
        return exc
    lease, seq = a["lease"], a["seq"]
    if lease is not None and (not isinstance(lease, str) or not isinstance(seq, int)):
        return errors.InvalidInput("lease and seq are internal")
    return None


def usable_url(value: object) -> str | None:
    try:
        return validation.notify_url(value)
    except errors.InvalidInput:
        return None


def valid_id(value: object) -> bool:
    try:
        validation.job_id(value)
    except errors.InvalidInput:
        return False
    return True


def assert_refused(w: World, jid: str, a: dict[str, Any], task_id: str) -> None:
    """Invalid input: a failed INVALID_INPUT record under a usable id, announced once, and
    its webhook sent to the notify URL if (and only if) that URL was usable."""
    event("refused, notify_url usable" if usable_url(a["notify_url"]) else "refused")
    assert jid == (a["job_id"] if valid_id(a["job_id"]) else task_id)
    job = w.job(jid)
    assert job is not None
    assert job.status == Status.FAILED
    assert job.outcome is not None
    assert job.outcome["type"] == "tts.failed"
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    url = usable_url(a["notify_url"])
    assert job.notify_url == url
    assert [(s.name, s.args) for s in w.outbox.sent] == [(names.NOTIFY, (jid,))]

    # The announcement, delivered: one webhook to a usable URL, none without one.
    assert steps.notify(w.ctx, steps.Delivery(names.NOTIFY, str(uuid.uuid4())), jid) == jid
    after = w.job(jid)
    assert after is not None
    if url is None:
        assert w.hooks.sent == []
        assert after.notify_state == NotifyState.NONE
    else:
        assert [(u, b["job_id"], b["error"]["code"]) for u, b in w.hooks.sent] == [
            (url, jid, "INVALID_INPUT")
        ]
        assert after.notify_state == NotifyState.DELIVERED


def printable(text: object) -> bool:
    """No control character (Unicode category Cc: C0, DEL, C1) and nothing UTF-8 refuses."""
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(unicodedata.category(c) == "Cc" for c in text)


def assert_accepted(w: World, jid: str, names_given: dict[str, Any]) -> None:
    """Valid input: a live job (here, polling: the fake NanoGPT took it and says pending), and
    none of the names it was given (model, voice, ids...) holds a control character."""
    event("accepted")
    job = w.job(jid)
    assert job is not None
    assert job.status in ACTIVE
    assert job.status == Status.POLLING
    assert job.outcome is None
    assert w.outbox.sent == []  # the next poll waits parked in Redis
    assert printable(jid)
    for name, value in names_given.items():
        assert value is None or printable(value), name


def assert_not_bound(w: World, name: str, task_id: str, call: Call) -> None:
    """Arguments Celery could not bind (its TypeError): the received hook ends the message as
    INVALID_INPUT under the job id it names, else its task id, announced once, and the task's
    own check (tasks/adapters/misfit.py) then changes nothing; a job id no job can have: no
    record."""
    given = call.kwargs.get("job_id")
    jid = on_received(w.ctx, name, task_id, call.args, call.kwargs)
    if name == names.POLL_TTS and call.kwargs.get("lease") is not None:
        # A poll carrying a lease looks like ours: the receipt leaves it to the task's check.
        assert jid is None
        assert w.db.dbsize() == 0
        jid = misfit.reject(w.ctx, name, task_id, call.args, call.kwargs, "r", count=False)
    if given is not None and not valid_id(given):
        event("does not bind, no usable job id")
        assert jid is None
        assert w.db.dbsize() == 0
        assert w.outbox.sent == []
        return
    event("does not bind")
    assert jid == (task_id if given is None else given)
    job = w.job(jid)
    assert job is not None
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert job.notify_url == usable_url(call.kwargs.get("notify_url"))
    again = misfit.reject(w.ctx, name, task_id, call.args, call.kwargs, "again", count=False)
    assert again == jid
    assert [(s.name, s.args) for s in w.outbox.sent] == [(names.NOTIFY, (jid,))]


def run(w: World, step: Callable[..., steps.Result], name: str, task_id: str, call: Call) -> str:
    result = step(w.ctx, steps.Delivery(name, task_id), *call.args, **call.kwargs)
    assert isinstance(result, str)  # a Retry needs a transient error; this NanoGPT has none
    assert validation.job_id(result) == result
    return result


# --- the properties --------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None)
@given(call=calls(SUBMIT_ARGS, required=2), received_first=st.booleans())
@example(call=Call(["Hello", "\ud800"], {"notify_url": HOOK}), received_first=True)
@example(call=Call(["Hello", MODEL], {"speed": 10**400, "job_id": "job-1\n"}), received_first=False)
@example(call=Call(["Hello", "tts\x1b[0m"], {"notify_url": "https://[::1/"}), received_first=False)
@example(call=Call(["Hello", "Kokoro\x1b[2J"], {"notify_url": HOOK}), received_first=False)
@example(
    call=Call(["Hello", MODEL], {"voice": "Rachel\n", "response_format": "\x85"}),
    received_first=True,
)
def test_submit_ends_every_call_as_a_typed_outcome(
    new_world: Callable[[], World], call: Call, received_first: bool
) -> None:
    w = new_world()
    task_id = str(uuid.uuid4())
    a = bind(tts.submit_tts, call)
    if a is None:
        assert_not_bound(w, names.SUBMIT_TTS, task_id, call)
        return
    if received_first:  # the worker records the job on receipt, then runs the task
        seen = on_received(w.ctx, names.SUBMIT_TTS, task_id, call.args, call.kwargs)
        assert seen is not None
    jid = run(w, steps.submit, names.SUBMIT_TTS, task_id, call)
    if received_first:
        assert seen == jid
    refusal = submit_refusal(a, task_id)
    if refusal is None:
        assert jid == (task_id if a["job_id"] is None else a["job_id"])
        given_names = ("model", "voice", "response_format", "notify_url")
        assert_accepted(w, jid, {k: a[k] for k in given_names})
    else:
        assert_refused(w, jid, a, task_id)


@settings(max_examples=EXAMPLES, deadline=None)
@given(call=calls(POLL_ARGS, required=2), received_first=st.booleans())
@example(call=Call(["run-1", MODEL], {"lease": "t", "seq": 10**400}), received_first=True)
@example(call=Call(["run-1", MODEL], {"lease": 7, "notify_url": HOOK}), received_first=True)
@example(call=Call(["run\x00", MODEL], {"cost": float("inf")}), received_first=False)
@example(call=Call(["run-1", "m\x9b"], {"payment_source": "nano\x7f"}), received_first=False)
def test_poll_ends_every_call_as_a_typed_outcome(
    new_world: Callable[[], World], call: Call, received_first: bool
) -> None:
    w = new_world()
    task_id = str(uuid.uuid4())
    a = bind(tts.poll_tts, call)
    if a is None:
        assert_not_bound(w, names.POLL_TTS, task_id, call)
        return
    if received_first:
        seen = on_received(w.ctx, names.POLL_TTS, task_id, call.args, call.kwargs)
        # A message carrying a lease is one of ours: its job has a record already.
        assert (seen is None) == (a["lease"] is not None)
    jid = run(w, steps.poll, names.POLL_TTS, task_id, call)
    if received_first and seen is not None:
        assert seen == jid
    refusal = poll_refusal(a)
    if refusal is not None:
        assert_refused(w, jid, a, task_id)
    elif a["lease"] is not None:  # a lease for a job nobody started: dropped, nothing made
        event("lease for no job")
        assert w.db.dbsize() == 0
        assert w.outbox.sent == []
    else:
        assert jid == (a["run_id"] if a["job_id"] is None else a["job_id"])
        assert_accepted(w, jid, {k: a[k] for k in ("run_id", "model", "payment_source")})


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    name=st.sampled_from([names.DOWNLOAD_AUDIO, names.NOTIFY]),
    call=calls(ID_ARGS, required=1),
)
@example(name=names.DOWNLOAD_AUDIO, call=Call(["\ud800"]))
@example(name=names.NOTIFY, call=Call(["ok\udfff"]))
def test_internal_steps_for_no_job_create_nothing(
    new_world: Callable[[], World], name: str, call: Call
) -> None:
    """Download and notify are our own messages; one naming no job (any JSON, or an id nobody
    used) is dropped: it neither crashes nor leaves a record, a watch entry or a message."""
    w = new_world()
    task = {names.DOWNLOAD_AUDIO: tts.download_audio, names.NOTIFY: tts.notify}[name]
    if bind(task, call) is None:
        return  # the task class counts it (tasks/adapters/misfit.py); no record either
    d = steps.Delivery(name, str(uuid.uuid4()))
    result = steps.STEPS[name](w.ctx, d, *call.args, **call.kwargs)
    assert isinstance(result, str)
    assert w.db.dbsize() == 0
    assert w.outbox.sent == []
    assert w.hooks.sent == []


# --- what the properties rest on ---------------------------------------------------------------


@pytest.mark.parametrize("task", [tts.submit_tts, tts.poll_tts, tts.download_audio, tts.notify])
def test_each_step_takes_what_its_task_binds(task: Any) -> None:
    """The properties call the step with the task's arguments: both must bind the same ones."""
    step = steps.STEPS[task.name]
    declared = list(inspect.signature(step).parameters.values())[2:]  # after ctx and delivery
    assert [(p.name, p.kind, p.default) for p in declared] == [
        (p.name, p.kind, p.default) for p in inspect.signature(task.run).parameters.values()
    ]


@pytest.mark.parametrize(
    ("task", "args", "kwargs"),
    [
        (tts.submit_tts, ["Hello"], {}),
        (tts.poll_tts, ["run-1", MODEL], {"colour": "blue"}),
        (tts.notify, ["job-1", "extra"], {}),
    ],
)
def test_a_call_that_does_not_bind_ends_through_the_misfit_path(
    monkeypatch: pytest.MonkeyPatch, task: Any, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """What the properties skip: Celery's tracer calls the task with arguments Python would
    refuse (a TypeError before our code, once). The task class (tasks/adapters/misfit.py)
    checks them first and hands the message as sent to ``misfit.reject``; the step never runs. Eager
    ``apply`` here only to show where it happens: the same tracer runs in a worker."""
    reached: list[Any] = []
    rejected: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tts, "_run", lambda *a, **k: reached.append(a))
    monkeypatch.setattr(misfit.runtime, "context", lambda: "ctx")

    def reject(*a: Any, count: bool) -> str:
        rejected.append((*a, count))
        return "job-x"

    monkeypatch.setattr(misfit, "reject", reject)
    tid = str(uuid.uuid4())
    result = task.apply(args=args, kwargs=kwargs, task_id=tid)
    assert result.successful()
    assert result.result == "job-x"
    assert reached == []
    [(ctx, name, task_id, sent_args, sent_kwargs, reason, count)] = rejected
    assert (ctx, name, task_id, count) == ("ctx", task.name, tid, True)
    assert (list(sent_args), sent_kwargs) == (args, kwargs)
    assert reason == misfit.problem(task.run, args, kwargs)
