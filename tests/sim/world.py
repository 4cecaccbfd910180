"""Everything outside the worker, in-process and on a fake clock: NanoGPT, the audio host, the
webhook receivers and the audio store.

NanoGPT, the audio host and the receivers sit behind a ``requests`` transport adapter
(:class:`Transport`), so the real :class:`tasks.nanogpt.client.NanoGPTClient`,
:func:`tasks.audio.storage.download` and :func:`tasks.webhooks.delivery.deliver` run unchanged,
request building, status mapping and parsing included (httpx's habit: tests inject a transport).
Answers come from the simulator's own scenario engine (:mod:`workers.simulator_scenario`),
without HTTP. Faults are plain lists per job, taken one per request. No socket is ever opened:
the loopback URLs below only route inside the adapter.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from tasks import errors
from tasks.audio.storage import Meter, StoredAudio
from workers.sample_audio import make_wav
from workers.simulator_scenario import Run, Scenario, failure_answer, json_answer

API_BASE = "http://127.0.0.1:1/api"
AUDIO_BASE = "http://127.0.0.1:2/audio/"
HOOK_BASE = "http://127.0.0.1:3/hook/"
AUDIO = make_wav(0.05)
AUDIO_SHA256 = hashlib.sha256(AUDIO).hexdigest()


class Clock:
    """Epoch seconds that move only when the simulation says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Plan:
    """One caller request and the faults the world has in store for it."""

    index: int
    task_id: str
    mode: str = "async"  # async | sync_json | sync_bytes (see Scenario.mode)
    outcome: str = "completed"  # completed | error | content_policy
    pending_polls: int = 2
    job_id: str | None = None  # None: the caller leaves it out (the default path)
    notify: bool = True
    # Taken one per request, in order: see Transport for each vocabulary.
    submit_faults: list[str] = field(default_factory=list)
    status_faults: list[str] = field(default_factory=list)
    audio_faults: list[str] = field(default_factory=list)
    hook_faults: list[str] = field(default_factory=list)
    store_down_until: float = 0.0
    # The caller sends tts.cancel this long after the first submits (None: it does not).
    cancel_after_s: float | None = None
    # Identical requests (TTS_REUSE_TTL): plans of one group send the same text, and NanoGPT
    # answers it as the group's first plan says; ``reuse`` is the submit's own argument.
    group: int | None = None
    reuse: bool = True

    @property
    def text(self) -> str:
        return f"Sim job {self.index if self.group is None else self.group}."

    @property
    def notify_url(self) -> str | None:
        return f"{HOOK_BASE}{self.index}" if self.notify else None

    def scenario(self) -> Scenario:
        return Scenario(
            mode=self.mode,
            outcome=self.outcome,
            pending_polls=self.pending_polls,
            queue_position=self.pending_polls,
        )


@dataclass
class Hook:
    """One webhook request a receiver got (whatever it answered)."""

    job_id: str
    msg_id: str
    body: dict[str, Any]
    answered: int | None  # None: the receiver hung


@dataclass
class Ledger:
    """What the world saw: the figures the invariants are checked against."""

    # Per caller text: POSTs received, and POSTs NanoGPT accepted (the bills).
    posts: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    hooks: list[Hook] = field(default_factory=list)


class Transport(HTTPAdapter):
    """NanoGPT, the audio host and the webhook receivers, answering inside ``requests``.

    Fault vocabularies (one entry per request, in order):
    submit: ``refused`` (no connection), ``lost`` (accepted, then the answer is cut: a read
    timeout), and the simulator's ``500 502html 503 429:<s> 400``; status: ``refused``,
    ``timeout`` and the simulator's vocabulary; audio: ``500``, ``404``, ``cut``; hooks:
    ``500``, ``410``, ``hang``.
    """

    def __init__(self, clock: Clock, plans: list[Plan], ledger: Ledger) -> None:
        super().__init__()
        self.clock = clock
        self.ledger = ledger
        self.events = 0  # bumped by the simulation on every step it takes
        self._runs: dict[str, tuple[Run, Plan]] = {}
        self.know(plans)

    def know(self, plans: list[Plan]) -> None:
        """The requests the world expects (set again when a case reshapes them)."""
        # The first plan of a text answers for it (a group of identical requests).
        self._plans: dict[str, Plan] = {}
        for p in sorted(plans, key=lambda p: p.index):
            self._plans.setdefault(p.text, p)
        self._by_index = {p.index: p for p in plans}

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **_: Any
    ) -> requests.Response:
        url = urllib.parse.urlsplit(request.url or "")
        if request.url and request.url.startswith(API_BASE + "/tts/status"):
            return self._status(request, dict(urllib.parse.parse_qsl(url.query)))
        if request.url == API_BASE + "/tts":
            return self._submit(request)
        if request.url and request.url.startswith(AUDIO_BASE):
            return self._audio(request, request.url.removeprefix(AUDIO_BASE))
        if request.url and request.url.startswith(HOOK_BASE):
            return self._hook(request, int(request.url.removeprefix(HOOK_BASE)))
        raise AssertionError(f"the simulation has no host for {request.url}")

    # --- NanoGPT -------------------------------------------------------------------------

    def _submit(self, request: requests.PreparedRequest) -> requests.Response:
        body = json.loads(request.body or b"{}")
        plan = self._plans[body["text"]]
        text = plan.text
        self.ledger.posts[text] = self.ledger.posts.get(text, 0) + 1
        fault = plan.submit_faults.pop(0) if plan.submit_faults else None
        if fault == "refused":
            raise _refused(request.url)
        if fault not in (None, "lost"):
            answer = failure_answer(fault)
            assert answer is not None
            return self._answer(
                request, answer.status, answer.body, answer.content_type, answer.headers
            )
        self.ledger.accepted[text] = self.ledger.accepted.get(text, 0) + 1
        run_id = f"run-{plan.index}-{self.ledger.accepted[text]}"
        run = Run(run_id, body["model"], plan.scenario(), created_at=self.clock())
        self._runs[run_id] = (run, plan)
        if fault == "lost":
            raise requests.ReadTimeout("read timed out after the request was sent")
        if plan.mode == "sync_bytes":
            return self._answer(request, 200, AUDIO, "audio/wav")
        if plan.mode == "sync_json":
            sync = run.sync_body(text, None, None, AUDIO_BASE + run_id)
            return self._json(request, 200, sync)
        return self._json(request, 202, run.ticket())

    def _status(
        self, request: requests.PreparedRequest, query: dict[str, str]
    ) -> requests.Response:
        run_id = query["runId"]
        run, plan = self._runs[run_id]
        fault = plan.status_faults.pop(0) if plan.status_faults else None
        if fault == "refused":
            raise _refused(request.url)
        if fault == "timeout":
            raise requests.ReadTimeout("status read timed out")
        if fault is not None:
            answer = failure_answer(fault)
            assert answer is not None
            return self._answer(
                request, answer.status, answer.body, answer.content_type, answer.headers
            )
        return self._json(request, 200, run.status_body(self.clock(), AUDIO_BASE + run_id))

    # --- audio host and receivers ---------------------------------------------------------

    def _audio(self, request: requests.PreparedRequest, run_id: str) -> requests.Response:
        _, plan = self._runs[run_id]
        fault = plan.audio_faults.pop(0) if plan.audio_faults else None
        if fault == "cut":
            raise requests.ConnectionError("connection reset by peer")
        if fault is not None:
            return self._answer(request, int(fault), b"no", "text/plain")
        return self._answer(request, 200, AUDIO, "audio/wav")

    def _hook(self, request: requests.PreparedRequest, index: int) -> requests.Response:
        plan = self._by_index[index]
        body = json.loads(request.body or b"{}")
        msg_id = str(request.headers.get("webhook-id"))
        fault = plan.hook_faults.pop(0) if plan.hook_faults else None
        status = None if fault == "hang" else int(fault or 200)
        self.ledger.hooks.append(Hook(body["job_id"], msg_id, body, status))
        if status is None:
            raise requests.ReadTimeout("receiver did not answer")
        return self._answer(request, status, b"", "text/plain")

    # --- answers -------------------------------------------------------------------------

    def _json(
        self, request: requests.PreparedRequest, status: int, obj: object
    ) -> requests.Response:
        answer = json_answer(status, obj)
        return self._answer(request, answer.status, answer.body, answer.content_type)

    def _answer(
        self,
        request: requests.PreparedRequest,
        status: int,
        body: bytes,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> requests.Response:
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers={
                "Content-Type": content_type,
                "Content-Length": str(len(body)),
                **dict(headers),
            },
            status=status,
            reason="SIM",
            preload_content=False,
        )
        return self.build_response(request, raw)


def _refused(url: str | None) -> requests.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "connection refused")  # type: ignore[arg-type]
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, url, reason))  # type: ignore[arg-type]


class Http:
    """What :func:`tasks.audio.storage.download` and :func:`tasks.webhooks.delivery.deliver` call
    (:class:`tasks.net.safe_http.SafeHttp`'s ``request``), over the simulation's transport."""

    def __init__(self, transport: Transport, timeout_s: tuple[float, float]) -> None:
        self.session = requests.Session()
        # No proxies, CA bundle or .netrc from the environment: the transport answers every
        # request itself, and reading them cost more than the rest of a request.
        self.session.trust_env = False
        self.session.mount("http://127.0.0.1:", transport)
        self._timeout_s = timeout_s

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, url, timeout=self._timeout_s, **kwargs)


class MemoryStore:
    """An audio store in memory that is down (503-like) until ``down_until`` for a job."""

    def __init__(self, clock: Clock, plans: dict[str, Plan]) -> None:
        self.clock = clock
        self.plans = plans  # by job id, filled in as jobs are made
        self.saved: dict[str, bytes] = {}

    def save(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        content_type: str,
        max_bytes: int,
        deadline_monotonic: float,
    ) -> StoredAudio:
        plan = self.plans.get(job_id)
        if plan is not None and self.clock() < plan.store_down_until:
            raise errors.StorageUnavailable("simulated store outage")
        meter = Meter(chunks, max_bytes=max_bytes, deadline_monotonic=float("inf"))
        data = b"".join(meter)
        self.saved[job_id] = data
        return StoredAudio(
            content_type=content_type,
            bytes=meter.bytes,
            sha256=meter.sha256,
            url=f"mem://{job_id}",
            path=None,
        )

    def fresh(self, audio: dict[str, Any]) -> dict[str, Any]:
        return audio

    def delete(self, audio: StoredAudio) -> None:
        self.saved.pop(audio.url.removeprefix("mem://"), None)
