"""A NanoGPT text-to-speech look-alike served over real HTTP on loopback; stdlib only.

It imitates ``POST /api/tts`` and ``GET /api/tts/status`` as described in
``reference/nanogpt-tts.md`` and serves the finished audio at ``/audio/<runId>.wav``. It misbehaves
on request: a ``[[sim ...]]`` directive in the submitted text (see
:mod:`workers.simulator_scenario`, which decides every answer) picks the answer shape, pending
polls, outcome, injected failures and how the audio is served. Every request is recorded for
assertions, in process (:attr:`Simulator.requests`) or from another process
(``GET /_sim/requests``).

With ``rate_limit_per_s`` it also enforces NanoGPT's account-wide limit (see
:mod:`workers.simulator_ratelimit`): every ``/api/*`` request with an accepted key counts, whatever
its answer; one over the limit gets ``429`` with ``Retry-After: 1`` and has no other effect, and
is recorded with ``limited=True`` (:meth:`Simulator.calls` sums them per path). A request with a
bad key is answered 401 before the limit is consulted: it is nobody's account's request.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from workers.sample_audio import WAV_HEADER_BYTES, make_wav, wav_header
from workers.simulator_ratelimit import SlidingWindowLimiter, rate_limited_answer
from workers.simulator_scenario import (
    NOT_AUDIO_BODY,
    Answer,
    Run,
    Scenario,
    UpstreamQueue,
    audio_body,
    failure_answer,
    json_answer,
    parse_directives,
)

__all__ = ["PathCalls", "RecordedRequest", "Scenario", "Simulator", "parse_directives", "serve"]

DEFAULT_API_KEY = "sim-key"
DEFAULT_MODEL = "Elevenlabs-Turbo-V2.5"
DEFAULT_SCENARIO = Scenario()
# Generators behind the shared upstream queue that ``gen_s`` runs wait in.
DEFAULT_UPSTREAM_SLOTS = 4
_SHUTDOWN_POLL_S = 0.05  # how often serve_forever looks for stop(); keeps stop() far below 2 s
_SOCKET_TIMEOUT_S = 30.0  # a silent client frees its handler thread after this long
_LARGE_CHUNK_BYTES = 65_536  # "large" bodies are streamed in chunks, never built in memory
_DRIP_CHUNK_BYTES = 64  # small enough that even the 12.8 kB sample WAV takes ~200 writes


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator received it; header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float  # epoch seconds (time.time()) when the request arrived
    limited: bool = False  # refused with 429 by the rate limit, and so had no other effect


class PathCalls(NamedTuple):
    """The recorded ``/api/*`` requests to one path, by whether the rate limit refused them."""

    answered: int  # every other one, whatever its answer (202, 401, 404, an injected 500, ...)
    refused: int  # the rate limit's 429s


class Simulator:
    """A NanoGPT TTS server on a daemon thread; use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = DEFAULT_API_KEY,
        scenario: Scenario = DEFAULT_SCENARIO,
        upstream_slots: int = DEFAULT_UPSTREAM_SLOTS,
        rate_limit_per_s: float | None = None,
        rate_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rate_limit_per_s``: NanoGPT's account-wide limit (it allows 25); None: no limit.
        ``rate_clock`` is the clock the limit's window is measured on (tests freeze it).

        Raises:
            ValueError: ``rate_limit_per_s`` is below 1 or not finite.
        """
        self.rate_limit_per_s = rate_limit_per_s
        self._limiter: SlidingWindowLimiter | None = None
        self._refusal: Answer | None = None  # what a request over the limit gets
        if rate_limit_per_s is not None:
            self._limiter = SlidingWindowLimiter(rate_limit_per_s, clock=rate_clock)
            self._refusal = rate_limited_answer(rate_limit_per_s)
        self.default_scenario = scenario  # for submits whose text carries no directive
        # A failure spec ("500", "429:2", ...) answered to every status request while set: an
        # upstream-wide outage, for the fault-injection suite.
        self.outage: str | None = None
        self._host = host
        self._requested_port = port
        self._api_key = api_key
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._upstream = UpstreamQueue(upstream_slots)  # runs whose scenario sets gen_s
        self._submits_by_text: dict[str, int] = {}
        self._requests: list[RecordedRequest] = []
        # The X-Request-ID of every answer (NanoGPT sends one with each), in order, with the
        # path it answered.
        self._request_ids: dict[str, str] = {}
        self._stopping = threading.Event()  # wakes hang/drip/slow handlers so stop() is prompt
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Simulator:
        """Bind the socket and serve on a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = _Server(
            (self._host, self._requested_port), functools.partial(_Handler, sim=self)
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name=f"nanogpt-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket, cutting off downloads in progress; idempotent."""
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port=0); still known after stop()."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def root(self) -> str:
        """Server root, e.g. http://127.0.0.1:PORT."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What a client uses as its NanoGPT base URL (root + "/api")."""
        return f"{self.root}/api"

    def create_run(self, scenario: Scenario | None = None, model: str = DEFAULT_MODEL) -> str:
        """Register a run as if it had been submitted and return its runId."""
        return self._add_run(scenario or self.default_scenario, model).run_id

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far (except /_sim/ ones), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def run_ids(self) -> list[str]:
        """Every run created so far (by a submit or :meth:`create_run`), oldest first."""
        with self._lock:
            return list(self._runs)

    @property
    def refused_requests(self) -> int:
        """How many recorded requests the rate limit refused."""
        return sum(1 for r in self.requests if r.limited)

    def calls(self) -> dict[str, PathCalls]:
        """The recorded ``/api/*`` requests per path, e.g. ``{"/api/tts": (answered, refused)}``.

        Built from :attr:`requests`, so :meth:`clear_requests` starts it again from zero.
        """
        counts: dict[str, list[int]] = {}
        for r in self.requests:
            if r.path.startswith("/api/"):
                counts.setdefault(r.path, [0, 0])[r.limited] += 1
        return {path: PathCalls(answered, refused) for path, (answered, refused) in counts.items()}

    def status_polls(self, run_id: str) -> list[RecordedRequest]:
        """The GET /api/tts/status requests that asked about `run_id`."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and r.path == "/api/tts/status" and r.query.get("runId") == run_id
        ]

    @property
    def request_ids(self) -> dict[str, str]:
        """The ``X-Request-ID`` of every answer sent so far, oldest first, with its path."""
        with self._lock:
            return dict(self._request_ids)

    def _next_request_id(self, path: str) -> str:
        with self._lock:
            rid = f"sim-req-{len(self._request_ids) + 1:06d}"
            self._request_ids[rid] = path.partition("?")[0]
            return rid

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def finished_at(self, run_id: str) -> float | None:
        """Epoch seconds when a ``gen_s`` run's generation ends (None for other runs).

        Raises KeyError for an unknown run.
        """
        with self._lock:
            ends_at = self._runs[run_id].ends_at
        return None if ends_at is None else time.time() + (ends_at - time.monotonic())

    def started_at(self, run_id: str) -> float | None:
        """Epoch seconds when a ``gen_s`` run's generation begins, once it left the upstream
        queue (None for other runs). Raises KeyError for an unknown run."""
        with self._lock:
            run = self._runs[run_id]
            gen_s = run.scenario.gen_s
            if run.ends_at is None or gen_s is None:
                return None
            starts_at = run.ends_at - gen_s
        return time.time() + (starts_at - time.monotonic())

    def audio_bytes(self, run_id: str) -> bytes:
        """The exact bytes served as `run_id`'s audio. Raises KeyError for an unknown run."""
        with self._lock:
            return audio_body(self._runs[run_id].scenario.audio)

    # Used by _Handler (same module); every state change happens under the lock.

    def _add_run(self, scenario: Scenario, model: str) -> Run:
        run = Run(str(uuid.uuid4()), model, scenario, time.monotonic())
        with self._lock:
            if scenario.gen_s is not None:
                slot = self._upstream.admit(run.created_at, scenario.gen_s)
                run.queue_index, run.ends_at = slot.index, slot.ends_at
            self._runs[run.run_id] = run
        return run

    def _get_run(self, run_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(run_id)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _key_ok(self, key: str | None) -> bool:
        return self._api_key is None or key == self._api_key

    def _over_limit(self) -> Answer | None:
        """Count one request against the rate limit; the 429 it must get if it is over."""
        if self._limiter is None:
            return None
        with self._lock:
            return None if self._limiter.admit() else self._refusal

    def _take_submit_failure(self, text: str, scenario: Scenario) -> str | None:
        with self._lock:
            index = self._submits_by_text.get(text, 0)
            self._submits_by_text[text] = index + 1
        failures = scenario.submit_failures
        return failures[index] if index < len(failures) else None

    def _take_status_failure(self, run: Run) -> str | None:
        with self._lock:
            return run.take_status_failure()

    def _status_body(self, run: Run) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            position = None
            if run.queue_index is not None:
                position = self._upstream.position(run.queue_index, now)
            return run.status_body(now, self._audio_url(run), position=position)

    def _audio_url(self, run: Run) -> str:
        if run.scenario.audio_url is None:
            return f"{self.root}/audio/{run.run_id}.wav"
        return self._expand(run.scenario.audio_url, run)

    def _expand(self, template: str, run: Run) -> str:
        return template.replace("{base}", self.root).replace("{run_id}", run.run_id)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging download must never keep the process alive

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-download are normal here; only real bugs get a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections open between requests, as NanoGPT's front end does, so a
    # client's pooled session is measured as it behaves for real. A body without Content-Length
    # (drip, hang) is sent with "Connection: close" and ends when the connection closes, as it
    # does behind many real gateways.
    protocol_version = "HTTP/1.1"
    # The head and the body go out in separate writes: with Nagle's algorithm on, the body of a
    # kept-alive answer would wait for the client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True
    server_version = "NanoGPT-Simulator/1.0"
    timeout = _SOCKET_TIMEOUT_S

    def __init__(self, *args: Any, sim: Simulator, **kwargs: Any) -> None:
        self.sim = sim  # set before super().__init__, which handles the request
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: per-request lines on stderr would drown test and worker output."""

    def do_GET(self) -> None:
        """Route every method through one dispatcher; unknown routes get 404 JSON."""
        url = urlsplit(self.path)
        path = url.path
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            payload: Any = json.loads(raw) if raw else None
        except ValueError:
            payload = None  # the submit endpoint answers 400 for anything but a JSON object
        api = path.startswith("/api/")
        key_ok = not api or self.sim._key_ok(self.headers.get("x-api-key"))
        # Decided on arrival, before any latency or failure of the request's own.
        refusal = self.sim._over_limit() if api and key_ok else None
        limited = refusal is not None
        if not path.startswith("/_sim/"):
            headers = {name.lower(): value for name, value in self.headers.items()}
            body = payload if isinstance(payload, dict) else None
            at = time.time()
            self.sim._record(RecordedRequest(self.command, path, query, headers, body, at, limited))
        route = (self.command, path)
        if route == ("GET", "/_sim/health"):
            self._send(json_answer(200, {"ok": True}))
        elif route == ("GET", "/_sim/requests"):
            self._send(json_answer(200, [asdict(r) for r in self.sim.requests]))
        elif not key_ok:
            self._send(json_answer(401, {"error": "Invalid API key"}))
        elif refusal is not None:
            self._send(refusal)
        elif route == ("POST", "/api/tts"):
            self._submit(payload)
        elif route == ("GET", "/api/tts/status"):
            self._status(query)
        elif self.command == "GET" and path.startswith("/audio/") and path.endswith(".wav"):
            self._audio(path.removeprefix("/audio/").removesuffix(".wav"))
        else:
            self._send(json_answer(404, {"error": "Not found"}))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _submit(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            self._send(json_answer(400, {"error": "Request body must be a JSON object"}))
            return
        for name in ("text", "model"):
            if not isinstance(payload.get(name), str) or not payload[name].strip():
                self._send(
                    json_answer(400, {"error": f"'{name}' is required and must be a string"})
                )
                return
        text, model = payload["text"], payload["model"]
        try:
            scenario = parse_directives(text, self.sim.default_scenario)
        except ValueError as exc:
            self._send(json_answer(400, {"error": str(exc)}))
            return
        failure = self.sim._take_submit_failure(text, scenario)
        if failure is not None and self._fail(failure):
            return
        run = self.sim._add_run(scenario, model)
        if scenario.mode == "async":
            self._send(json_answer(202, run.ticket()))
        elif scenario.mode == "sync_json":
            voice, speed = payload.get("voice"), payload.get("speed", 1.0)
            body = run.sync_body(text, voice, speed, self.sim._audio_url(run))
            self._send(json_answer(200, body))
        else:
            self._send_audio(run)

    def _status(self, query: dict[str, str]) -> None:
        run_id, model = query.get("runId"), query.get("model")
        if not run_id or not model:
            self._send(json_answer(400, {"error": "runId and model are required"}))
            return
        run = self.sim._get_run(run_id)
        if run is None:
            self._send(json_answer(404, {"error": "Run not found"}))
        elif model != run.model:
            error = f"Model {model!r} does not match the run's model"
            self._send(json_answer(400, {"error": error}))
        else:
            if run.scenario.status_latency_s and self.sim._stopping.wait(
                run.scenario.status_latency_s
            ):
                return  # stopping: the client sees the connection close
            failure = self.sim.outage or self.sim._take_status_failure(run)
            if failure is None or not self._fail(failure):
                self._send(json_answer(200, self.sim._status_body(run)))

    def _audio(self, run_id: str) -> None:
        run = self.sim._get_run(run_id)
        if run is None:
            self._send(json_answer(404, {"error": "Audio not found"}))
        elif run.scenario.audio_redirect_to is not None:
            location = self.sim._expand(run.scenario.audio_redirect_to, run)
            self._send(Answer(302, b"", "text/plain", (("Location", location),)))
        else:
            self._send_audio(run)

    def _fail(self, spec: str) -> bool:
        """Answer with the injected failure `spec`; False when the request goes on normally."""
        answer = failure_answer(spec)
        if answer is None:  # slow:<s> delays, then answers normally (for client timeouts)
            self.sim._stopping.wait(float(spec.partition(":")[2]))
            return False
        self._send(answer)
        return True

    def _send_audio(self, run: Run) -> None:
        kind, _, arg = run.scenario.audio.partition(":")
        stopping = self.sim._stopping
        if kind == "not_audio":
            self._send(Answer(200, NOT_AUDIO_BODY, "text/html; charset=utf-8"))
        elif kind == "large":
            total_bytes = int(arg)
            self._send_head(200, "audio/wav", (("Content-Length", str(total_bytes)),))
            self.wfile.write(wav_header(total_bytes - WAV_HEADER_BYTES))
            zeros = memoryview(bytes(_LARGE_CHUNK_BYTES))
            remaining = total_bytes - WAV_HEADER_BYTES
            while remaining > 0 and not stopping.is_set():
                chunk = zeros[: min(remaining, _LARGE_CHUNK_BYTES)]
                self.wfile.write(chunk)
                remaining -= len(chunk)
        elif kind == "drip":
            self._send_head(200, "audio/wav", ())
            data = make_wav()
            for offset in range(0, len(data), _DRIP_CHUNK_BYTES):
                if offset and stopping.wait(float(arg)):
                    return
                self.wfile.write(data[offset : offset + _DRIP_CHUNK_BYTES])
        elif kind == "hang":
            self._send_head(200, "audio/wav", ())
            stopping.wait()
        else:
            self._send(Answer(200, make_wav(), "audio/wav"))

    def _send(self, answer: Answer) -> None:
        length = ("Content-Length", str(len(answer.body)))
        self._send_head(answer.status, answer.content_type, (*answer.headers, length))
        self.wfile.write(answer.body)

    def _send_head(
        self, status: int, content_type: str, headers: tuple[tuple[str, str], ...]
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Request-ID", self.sim._next_request_id(self.path))
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in headers):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    api_key: str | None = DEFAULT_API_KEY,
    rate_limit_per_s: float | None = None,
) -> None:
    """Run a simulator in the foreground until KeyboardInterrupt (Ctrl-C).

    Like every other setting of the simulator, the rate limit comes from the caller (the CLI's
    ``--rate``, which defaults from ``TTS_SIM_RATE``); this module reads no environment.

    Raises:
        ValueError: ``rate_limit_per_s`` is below 1 or not finite.
        OSError: the address cannot be bound.
    """
    with Simulator(host=host, port=port, api_key=api_key, rate_limit_per_s=rate_limit_per_s) as sim:
        limit = "no rate limit" if rate_limit_per_s is None else f"{rate_limit_per_s:g} requests/s"
        try:
            # Inside the try: a Ctrl-C the moment the banner is out still stops it cleanly.
            print(
                f"NanoGPT simulator: base URL {sim.base_url}, API key {api_key!r}, {limit}",
                flush=True,
            )
            while True:
                time.sleep(3600)  # the server runs on its own thread; this one only waits
        except KeyboardInterrupt:
            pass
