"""The NanoGPT simulator, exercised over real HTTP on loopback with plain `requests`."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
import requests

from tests.support.cli import assert_one_line, invoke
from workers import simulator as simulator_module
from workers.sample_audio import WAV_HEADER_BYTES, make_wav, wav_header
from workers.simulator import RecordedRequest, Scenario, Simulator, parse_directives
from workers.simulator_ratelimit import SlidingWindowLimiter, rate_limited_answer
from workers.simulator_scenario import CONTENT_POLICY_ERROR, GENERIC_ERROR, UpstreamQueue

KEY = "sim-key"
MODEL = "Elevenlabs-Turbo-V2.5"
TIMEOUT_S = (2.0, 5.0)  # (connect, read): generous for loopback, still bounds a broken test


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, api_key=KEY) as simulator:
        yield simulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # never route loopback traffic through an environment proxy
    session.headers["x-api-key"] = KEY
    yield session
    session.close()


def submit(
    http: requests.Session, sim: Simulator, text: str, model: str = MODEL
) -> requests.Response:
    return http.post(f"{sim.base_url}/tts", json={"text": text, "model": model}, timeout=TIMEOUT_S)


def poll(
    http: requests.Session, sim: Simulator, run_id: str, model: str = MODEL, **extra: str
) -> requests.Response:
    params = {"runId": run_id, "model": model, **extra}
    return http.get(f"{sim.base_url}/tts/status", params=params, timeout=TIMEOUT_S)


def poll_json(http: requests.Session, sim: Simulator, run_id: str) -> dict[str, Any]:
    response = poll(http, sim, run_id)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- sample audio ---------------------------------------------------------------------------


def test_make_wav_is_a_real_16_bit_mono_sine() -> None:
    data = make_wav()
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16_000)
        assert wav.getnframes() == 6_400  # 0.4 s at 16 kHz
        frames = wav.readframes(wav.getnframes())
    samples = [
        int.from_bytes(frames[i : i + 2], "little", signed=True) for i in range(0, 12_800, 2)
    ]
    assert 16_000 < max(samples) <= 16_384  # half of full scale, not silence, no clipping
    rising_zero_crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    assert math.isclose(rising_zero_crossings, 440 * 0.4, abs_tol=2)  # it really is 440 Hz


def test_make_wav_default_is_cached_and_params_change_it() -> None:
    assert make_wav() is make_wav()
    with wave.open(io.BytesIO(make_wav(0.1, 8_000, 220.0))) as wav:
        assert (wav.getframerate(), wav.getnframes()) == (8_000, 800)


def test_wav_header_matches_what_wave_writes() -> None:
    data = make_wav()
    assert wav_header(len(data) - WAV_HEADER_BYTES) == data[:WAV_HEADER_BYTES]


@pytest.mark.parametrize(
    "kwargs",
    [{"duration_s": -1.0}, {"sample_rate_hz": 0}, {"frequency_hz": math.nan}],
)
def test_make_wav_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_wav(**kwargs)


# --- directives -----------------------------------------------------------------------------


def test_parse_directives_overrides_every_key() -> None:
    text = (
        "Hi [[sim mode=sync_json pending=5 pending_s=1.5 queue=none pending_status=processing"
        " outcome=error status_fail=503,429:2,slow:0.5 submit_fail=500 audio=drip:0.01"
        " audio_url={base}/x.wav redirect=http://127.0.0.2:1/y cost=0.2 payment_source=XNO"
        " gen_s=2.5 latency=0.1]] there"
    )
    assert parse_directives(text, Scenario()) == Scenario(
        mode="sync_json",
        pending_polls=5,
        pending_s=1.5,
        queue_position=None,
        pending_status="processing",
        outcome="error",
        status_failures=("503", "429:2", "slow:0.5"),
        submit_failures=("500",),
        audio="drip:0.01",
        audio_url="{base}/x.wav",
        audio_redirect_to="http://127.0.0.2:1/y",
        cost=0.2,
        payment_source="XNO",
        gen_s=2.5,
        status_latency_s=0.1,
    )


def test_parse_directives_without_block_returns_base() -> None:
    base = Scenario(pending_polls=7)
    assert parse_directives("plain text [with] brackets", base) is base


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[[sim colour=red]]", "unknown key 'colour'"),
        ("[[sim pending=many]]", "'pending'"),
        ("[[sim mode=stream]]", "mode"),
        ("[[sim status_fail=418]]", "418"),
        ("[[sim audio=large:10]]", "large:10"),
        ("[[sim pending]]", "key=value"),
        ("[[sim pending=1 pending=2]]", "twice"),
        ("[[sim pending=1]] and [[sim pending=2]]", "only one"),
    ],
)
def test_parse_directives_rejects_bad_input_clearly(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="directive") as excinfo:
        parse_directives(text, Scenario())
    assert fragment in str(excinfo.value)


def test_scenario_validates_on_construction() -> None:
    with pytest.raises(ValueError, match="outcome"):
        Scenario(outcome="maybe")


# --- submit ---------------------------------------------------------------------------------


def test_async_submit_returns_a_ticket(sim: Simulator, http: requests.Session) -> None:
    response = submit(http, sim, "Hello [[sim cost=0.12 payment_source=XNO]]")
    assert response.status_code == 202
    ticket = response.json()
    assert uuid.UUID(ticket.pop("runId")).version == 4
    assert ticket == {"status": "pending", "model": MODEL, "cost": 0.12, "paymentSource": "XNO"}


def test_sync_json_submit_points_at_downloadable_audio(
    sim: Simulator, http: requests.Session
) -> None:
    response = http.post(
        f"{sim.base_url}/tts",
        json={"text": "Hi [[sim mode=sync_json]]", "model": "tts-1", "voice": "alloy"},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["audioUrl"].startswith(f"{sim.root}/audio/")
    expected = {"contentType": "audio/wav", "model": "tts-1", "voice": "alloy", "currency": "USD"}
    assert expected.items() <= body.items()
    assert (body["duration"], body["cost"], body["text"]) == (
        0.4,
        0.05,
        "Hi [[sim mode=sync_json]]",
    )
    audio = http.get(body["audioUrl"], timeout=TIMEOUT_S)
    assert audio.headers["Content-Type"] == "audio/wav"
    assert audio.content == make_wav()


def test_sync_bytes_submit_returns_the_wav(sim: Simulator, http: requests.Session) -> None:
    response = submit(http, sim, "Hi [[sim mode=sync_bytes]]", model="tts-1")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.content == make_wav()


def test_default_scenario_applies_without_directive(sim: Simulator, http: requests.Session) -> None:
    sim.default_scenario = Scenario(mode="sync_bytes")
    assert submit(http, sim, "no directive").headers["Content-Type"] == "audio/wav"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": MODEL}, "text"),
        ({"text": "", "model": MODEL}, "text"),
        ({"text": "hi"}, "model"),
        ({"text": "hi", "model": 3}, "model"),
        ({"text": "hi [[sim bogus=1]]", "model": MODEL}, "bogus"),
        ({"text": "hi [[sim pending=-1]]", "model": MODEL}, "pending"),
    ],
)
def test_submit_rejects_bad_requests_with_400(
    sim: Simulator, http: requests.Session, body: dict[str, Any], fragment: str
) -> None:
    response = http.post(f"{sim.base_url}/tts", json=body, timeout=TIMEOUT_S)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_submit_rejects_a_body_that_is_not_json(sim: Simulator, http: requests.Session) -> None:
    response = http.post(f"{sim.base_url}/tts", data=b"text=hi", timeout=TIMEOUT_S)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_submit_failures_are_counted_per_text(sim: Simulator, http: requests.Session) -> None:
    text = "A [[sim submit_fail=503,429:2]]"
    first, second, third = (submit(http, sim, text) for _ in range(3))
    assert first.status_code == 503
    assert (second.status_code, second.headers["Retry-After"]) == (429, "2")
    assert third.status_code == 202
    other = submit(http, sim, "B [[sim submit_fail=503,429:2]]")
    assert other.status_code == 503  # a distinct text starts its own count


# --- status ---------------------------------------------------------------------------------


def test_pending_polls_then_completed_and_it_stays(sim: Simulator, http: requests.Session) -> None:
    run_id = submit(http, sim, "x [[sim pending=3 queue=5]]").json()["runId"]
    answers = [poll_json(http, sim, run_id) for _ in range(5)]
    assert answers[:3] == [
        {"status": "pending", "runId": run_id, "queuePosition": position} for position in (5, 4, 3)
    ]
    completed = {
        "status": "completed",
        "audioUrl": f"{sim.root}/audio/{run_id}.wav",
        "contentType": "audio/wav",
        "model": MODEL,
    }
    assert answers[3:] == [completed, completed]


def test_queue_position_never_goes_below_zero(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(pending_polls=4, queue_position=1))
    positions = [poll_json(http, sim, run_id)["queuePosition"] for _ in range(4)]
    assert positions == [1, 0, 0, 0]


def test_queue_none_omits_field_and_pending_status_is_used(
    sim: Simulator, http: requests.Session
) -> None:
    run_id = sim.create_run(Scenario(pending_polls=1, queue_position=None, pending_status="queued"))
    assert poll_json(http, sim, run_id) == {"status": "queued", "runId": run_id}


def test_pending_s_holds_completion_until_time_has_passed(
    sim: Simulator, http: requests.Session
) -> None:
    started = time.monotonic()
    run_id = sim.create_run(Scenario(pending_polls=0, pending_s=0.3))
    assert poll_json(http, sim, run_id)["status"] == "pending"
    assert poll_json(http, sim, run_id)["status"] == "pending"
    time.sleep(max(0.0, 0.35 - (time.monotonic() - started)))
    assert poll_json(http, sim, run_id)["status"] == "completed"


def test_pending_polls_still_needed_after_pending_s(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(pending_polls=1, pending_s=0.05))
    time.sleep(0.1)
    assert poll_json(http, sim, run_id)["status"] == "pending"
    assert poll_json(http, sim, run_id)["status"] == "completed"


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("error", {"status": "error", "error": GENERIC_ERROR}),
        (
            "content_policy",
            {"status": "error", "code": "CONTENT_POLICY_VIOLATION", "error": CONTENT_POLICY_ERROR},
        ),
        ("completed_no_url", {"status": "completed", "contentType": "audio/wav", "model": MODEL}),
    ],
)
def test_outcomes(
    sim: Simulator, http: requests.Session, outcome: str, expected: dict[str, Any]
) -> None:
    run_id = sim.create_run(Scenario(pending_polls=0, outcome=outcome))
    assert poll_json(http, sim, run_id) == expected
    assert poll_json(http, sim, run_id) == expected


def test_content_policy_message_is_the_documented_one() -> None:
    assert CONTENT_POLICY_ERROR == (
        "Content rejected by provider. Please modify your prompt and try again."
    )


@pytest.mark.parametrize("code", ["500", "503", "401", "403", "404", "400"])
def test_status_failure_then_normal(sim: Simulator, http: requests.Session, code: str) -> None:
    run_id = sim.create_run(Scenario(pending_polls=1, status_failures=(code,)))
    failed = poll(http, sim, run_id)
    assert failed.status_code == int(code)
    assert failed.headers["Content-Type"] == "application/json"
    assert isinstance(failed.json()["error"], str)
    assert poll_json(http, sim, run_id)["status"] == "pending"  # failures do not eat pending polls
    assert poll_json(http, sim, run_id)["status"] == "completed"


def test_status_429_carries_retry_after(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(status_failures=("429:7",)))
    response = poll(http, sim, run_id)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")


def test_status_502_is_an_html_gateway_page(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(status_failures=("502html",)))
    response = poll(http, sim, run_id)
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Bad Gateway" in response.text
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_status_malformed_is_truncated_json(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(status_failures=("malformed",)))
    response = poll(http, sim, run_id)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_status_slow_times_out_a_client_then_answers(
    sim: Simulator, http: requests.Session
) -> None:
    run_id = sim.create_run(Scenario(pending_polls=0, status_failures=("slow:0.4", "slow:0.1")))
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(
            f"{sim.base_url}/tts/status", params={"runId": run_id, "model": MODEL}, timeout=(2, 0.1)
        )
    started = time.monotonic()
    assert poll_json(http, sim, run_id)["status"] == "completed"
    assert time.monotonic() - started >= 0.1


def test_status_requires_run_id_and_model(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run()
    for params in ({"runId": run_id}, {"model": MODEL}):
        response = http.get(f"{sim.base_url}/tts/status", params=params, timeout=TIMEOUT_S)
        assert response.status_code == 400
        assert "required" in response.json()["error"]


def test_status_rejects_a_different_model(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(model="Elevenlabs-V3")
    assert poll(http, sim, run_id, model="Elevenlabs-V3").status_code == 200
    assert poll(http, sim, run_id, model=MODEL).status_code == 400


def test_status_of_unknown_run_is_404(sim: Simulator, http: requests.Session) -> None:
    response = poll(http, sim, str(uuid.uuid4()))
    assert (response.status_code, response.json()) == (404, {"error": "Run not found"})


# --- api key, routing, recording ------------------------------------------------------------


@pytest.mark.parametrize("headers", [{"x-api-key": "wrong"}, {}])
def test_bad_or_missing_key_is_401(sim: Simulator, headers: dict[str, str]) -> None:
    run_id = sim.create_run()
    for response in (
        requests.post(
            f"{sim.base_url}/tts", json={"text": "hi", "model": MODEL}, headers=headers, timeout=5
        ),
        requests.get(
            f"{sim.base_url}/tts/status",
            params={"runId": run_id, "model": MODEL},
            headers=headers,
            timeout=5,
        ),
    ):
        assert (response.status_code, response.json()) == (401, {"error": "Invalid API key"})


def test_api_key_none_accepts_any_key() -> None:
    with Simulator(api_key=None) as open_sim:
        response = requests.post(
            f"{open_sim.base_url}/tts",
            json={"text": "hi", "model": MODEL},
            headers={"x-api-key": "anything"},
            timeout=TIMEOUT_S,
        )
    assert response.status_code == 202


def test_unknown_paths_are_404_json_and_health_is_ok(
    sim: Simulator, http: requests.Session
) -> None:
    for response in (
        http.get(f"{sim.base_url}/voices", timeout=TIMEOUT_S),
        http.get(f"{sim.root}/nowhere", timeout=TIMEOUT_S),
        http.get(f"{sim.root}/audio/{uuid.uuid4()}.wav", timeout=TIMEOUT_S),
        http.delete(f"{sim.base_url}/tts", timeout=TIMEOUT_S),
    ):
        assert response.status_code == 404
        assert "error" in response.json()
    assert http.get(f"{sim.root}/_sim/health", timeout=TIMEOUT_S).json() == {"ok": True}


def test_requests_are_recorded_with_ticket_query_params(
    sim: Simulator, http: requests.Session
) -> None:
    before = time.time()
    run_id = submit(http, sim, "record me").json()["runId"]
    poll(http, sim, run_id, cost="0.05", paymentSource="USD", isApiRequest="True")
    other = sim.create_run()
    poll(http, sim, other)

    recorded_submit, recorded_poll = sim.requests[:2]
    assert isinstance(recorded_submit, RecordedRequest)
    assert (recorded_submit.method, recorded_submit.path) == ("POST", "/api/tts")
    assert recorded_submit.body == {"text": "record me", "model": MODEL}
    assert recorded_submit.headers["x-api-key"] == KEY
    assert before <= recorded_submit.at <= recorded_poll.at <= time.time()
    assert sim.status_polls(run_id) == [recorded_poll]
    assert recorded_poll.body is None
    assert recorded_poll.query == {
        "runId": run_id,
        "model": MODEL,
        "cost": "0.05",
        "paymentSource": "USD",
        "isApiRequest": "True",
    }

    over_http = http.get(f"{sim.root}/_sim/requests", timeout=TIMEOUT_S).json()
    assert [r["path"] for r in over_http] == ["/api/tts", "/api/tts/status", "/api/tts/status"]
    assert over_http[1]["query"]["isApiRequest"] == "True"

    sim.clear_requests()
    assert sim.requests == []
    assert sim.status_polls(run_id) == []


def test_server_is_silent_on_stderr(
    sim: Simulator, http: requests.Session, capfd: pytest.CaptureFixture[str]
) -> None:
    run_id = sim.create_run(Scenario(status_failures=("500",)))
    poll(http, sim, run_id)
    poll(http, sim, "nope")
    http.get(f"{sim.root}/audio/{run_id}.wav", timeout=TIMEOUT_S)
    assert capfd.readouterr().err == ""


# --- audio ----------------------------------------------------------------------------------


def test_completed_audio_url_serves_the_recorded_bytes(
    sim: Simulator, http: requests.Session
) -> None:
    run_id = sim.create_run(Scenario(pending_polls=0))
    audio_url = poll_json(http, sim, run_id)["audioUrl"]
    response = requests.get(audio_url, timeout=TIMEOUT_S)  # no api key needed for audio
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(make_wav()))
    digest = hashlib.sha256(response.content).hexdigest()
    assert digest == hashlib.sha256(sim.audio_bytes(run_id)).hexdigest()
    with wave.open(io.BytesIO(response.content)) as wav:
        assert wav.getnframes() == 6_400


@pytest.mark.parametrize(
    ("template", "expected"),
    [("{base}/elsewhere.wav", "{root}/elsewhere.wav"), ("http://127.0.0.2:1/x.wav", None)],
)
def test_audio_url_override(
    sim: Simulator, http: requests.Session, template: str, expected: str | None
) -> None:
    run_id = submit(http, sim, f"x [[sim pending=0 audio_url={template}]]").json()["runId"]
    want = expected.format(root=sim.root) if expected else template
    assert poll_json(http, sim, run_id)["audioUrl"] == want


def test_audio_redirect(sim: Simulator, http: requests.Session) -> None:
    target = sim.create_run()
    source = sim.create_run(Scenario(audio_redirect_to=f"{{base}}/audio/{target}.wav"))
    url = f"{sim.root}/audio/{source}.wav"
    first = http.get(url, allow_redirects=False, timeout=TIMEOUT_S)
    assert (first.status_code, first.headers["Location"]) == (
        302,
        f"{sim.root}/audio/{target}.wav",
    )
    followed = http.get(url, timeout=TIMEOUT_S)
    assert followed.content == sim.audio_bytes(target) == make_wav()


def test_not_audio_serves_html(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(audio="not_audio"))
    response = http.get(f"{sim.root}/audio/{run_id}.wav", timeout=TIMEOUT_S)
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.content == sim.audio_bytes(run_id)
    assert not response.content.startswith(b"RIFF")


def test_large_serves_exactly_n_bytes_behind_a_wav_header(
    sim: Simulator, http: requests.Session
) -> None:
    run_id = sim.create_run(Scenario(audio="large:200000"))
    response = http.get(f"{sim.root}/audio/{run_id}.wav", timeout=TIMEOUT_S)
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["Content-Length"] == "200000"
    assert len(response.content) == 200_000
    assert response.content[:WAV_HEADER_BYTES] == wav_header(200_000 - WAV_HEADER_BYTES)
    assert response.content == sim.audio_bytes(run_id)


def test_drip_delivers_every_byte_slowly(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(audio="drip:0.001"))
    started = time.monotonic()
    with http.get(f"{sim.root}/audio/{run_id}.wav", stream=True, timeout=(2, 2)) as response:
        assert "Content-Length" not in response.headers
        body = b"".join(response.iter_content(chunk_size=1024))
    assert body == make_wav()
    # ~200 chunks of 64 bytes with a >= 1 ms sleep between them; an undripped WAV takes ~1 ms.
    assert time.monotonic() - started >= 0.15


def test_stop_is_prompt_while_a_download_hangs(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run(Scenario(audio="hang"))
    url = f"{sim.root}/audio/{run_id}.wav"
    hung = http.get(url, stream=True, timeout=(2, 0.2))
    assert hung.status_code == 200  # headers arrive ...
    with pytest.raises(requests.exceptions.ConnectionError):  # ... the body never does
        hung.content  # noqa: B018
    leftover: list[bytes] = []
    waiting = http.get(url, stream=True, timeout=(2, 5))
    reader = threading.Thread(target=lambda: leftover.append(waiting.raw.read()), daemon=True)
    reader.start()

    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2.0
    reader.join(timeout=2.0)
    assert not reader.is_alive()  # stop() ended the hanging handler, not the 5 s client timeout
    assert leftover == [b""]
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(f"{sim.root}/_sim/health", timeout=TIMEOUT_S)


def test_port_is_unknown_before_start() -> None:
    with pytest.raises(RuntimeError):
        _ = Simulator().port


# --- the shared upstream queue (gen_s) ------------------------------------------------------


def test_upstream_queue_is_first_in_first_out_over_its_slots() -> None:
    queue = UpstreamQueue(2)
    a, b, c, d = (queue.admit(0.0, g) for g in (4.0, 1.0, 2.0, 1.0))
    assert (a.starts_at, a.ends_at) == (0.0, 4.0)
    assert (b.starts_at, b.ends_at) == (0.0, 1.0)
    assert (c.starts_at, c.ends_at) == (1.0, 3.0)  # takes b's generator when it frees
    assert (d.starts_at, d.ends_at) == (3.0, 4.0)  # c's, which frees before a's
    late = queue.admit(10.0, 1.0)
    assert (late.starts_at, late.ends_at) == (10.0, 11.0)  # idle generators start at once


def test_upstream_queue_position_is_the_place_in_the_waiting_line() -> None:
    queue = UpstreamQueue(1)
    slots = [queue.admit(0.0, 2.0) for _ in range(4)]  # start at 0, 2, 4, 6
    assert [queue.position(s.index, 0.5) for s in slots] == [0, 1, 2, 3]
    assert [queue.position(s.index, 4.5) for s in slots] == [0, 0, 0, 1]
    assert queue.position(slots[3].index, 2.0) == 2  # run 1 started at 2.0 exactly


def test_upstream_queue_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="slots"):
        UpstreamQueue(0)


def test_gen_s_runs_wait_in_the_shared_queue(http: requests.Session) -> None:
    with Simulator(api_key=KEY, upstream_slots=1) as sim:
        first = submit(http, sim, "A [[sim gen_s=0.6]]").json()["runId"]
        second = submit(http, sim, "B [[sim gen_s=0.2]]").json()["runId"]
        pending = {"status": "pending", "runId": first, "queuePosition": 0}  # generating
        assert poll_json(http, sim, first) == pending
        assert poll_json(http, sim, second)["queuePosition"] == 1  # next in line
        finished_second = sim.finished_at(second)
        finished_first = sim.finished_at(first)
        assert finished_first is not None
        assert finished_second is not None
        assert finished_second == pytest.approx(finished_first + 0.2, abs=0.05)
        # The second starts when the first ends (one generator), and each ends gen_s later.
        assert sim.started_at(second) == pytest.approx(finished_first, abs=1e-3)
        assert sim.started_at(first) == pytest.approx(finished_first - 0.6, abs=1e-3)
        time.sleep(max(0.0, finished_first - time.time()) + 0.05)
        assert poll_json(http, sim, first)["status"] == "completed"
        assert poll_json(http, sim, second)["queuePosition"] == 0  # generating now
        time.sleep(max(0.0, finished_second - time.time()) + 0.05)
        assert poll_json(http, sim, second)["status"] == "completed"
        assert sim.finished_at(sim.create_run()) is None  # a run of its own has no such time
        assert sim.started_at(sim.create_run()) is None


def test_latency_delays_every_status_answer(sim: Simulator, http: requests.Session) -> None:
    run_id = submit(http, sim, "Far away [[sim latency=0.3 pending=1]]").json()["runId"]
    for expected in ("pending", "completed"):
        started = time.monotonic()
        assert poll_json(http, sim, run_id)["status"] == expected
        assert time.monotonic() - started >= 0.3


def test_answers_keep_the_connection_open(sim: Simulator) -> None:
    """HTTP/1.1 keep-alive, as a real front end: a pooled client reuses one connection."""
    run_id = sim.create_run(Scenario(pending_polls=5))
    connection = HTTPConnection("127.0.0.1", sim.port, timeout=5)
    sockets = []
    try:
        for _ in range(2):
            connection.request(
                "GET", f"/api/tts/status?runId={run_id}&model={MODEL}", headers={"x-api-key": KEY}
            )
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None
            assert json.loads(response.read())["status"] == "pending"
            assert not response.will_close
            sockets.append(connection.sock)
        # http.client reconnects silently after a close: the same socket proves there was none.
        assert sockets[0] is not None
        assert sockets[0] is sockets[1]
        assert len(sim.status_polls(run_id)) == 2
    finally:
        connection.close()


def test_a_body_without_length_closes_the_connection(sim: Simulator) -> None:
    run_id = sim.create_run(Scenario(audio="drip:0.0001"))
    connection = HTTPConnection("127.0.0.1", sim.port, timeout=5)
    try:
        connection.request("GET", f"/audio/{run_id}.wav")
        response = connection.getresponse()
        assert response.getheader("Connection") == "close"
        assert response.read() == make_wav()  # read to the close: the body's only end
        assert response.will_close
    finally:
        connection.close()


# --- the account-wide rate limit ------------------------------------------------------------


class FakeClock:
    """A clock that moves only when the test says so: limiter outcomes become exact."""

    def __init__(self, now_s: float = 100.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def admits_at(limiter: SlidingWindowLimiter, clock: FakeClock, *times_s: float) -> list[bool]:
    """What the limiter says to one request at each time (binary fractions: exact floats)."""
    outcomes = []
    for t in times_s:
        clock.now_s = t
        outcomes.append(limiter.admit())
    return outcomes


def test_limiter_admits_up_to_the_limit_within_one_second() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, clock=clock)
    assert admits_at(limiter, clock, *[100.0] * 5) == [True, True, True, False, False]


def test_limiter_window_slides_a_request_leaves_exactly_one_second_later() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, clock=clock)
    assert admits_at(limiter, clock, 0.0, 0.5, 0.75, 0.9990234375, 1.0, 1.25, 1.5) == [
        True,  # window: 0.0
        True,  # 0.0 0.5
        False,  # full
        False,  # still full a hair before 0.0 leaves
        True,  # 0.0 left at exactly 1.0 s: 0.5 1.0
        False,  # 0.5 is still in (0.75 s old)
        True,  # 0.5 left: 1.0 1.5
    ]


def test_limiter_refusals_do_not_count_against_the_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, clock=clock)
    assert admits_at(limiter, clock, 0.0) == [True]
    # Ten refusals between 0 and 1 s; had they counted, 1.0 would still see them in its window.
    assert admits_at(limiter, clock, *(i / 16 for i in range(1, 11))) == [False] * 10
    assert admits_at(limiter, clock, 1.0, 1.5, 2.0) == [True, False, True]


def test_limiter_after_a_quiet_spell_admits_a_full_window_again() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(25, clock=clock)
    assert admits_at(limiter, clock, *[5.0] * 26).count(True) == 25
    assert admits_at(limiter, clock, *[60.0] * 26).count(True) == 25


def test_limiter_fractional_limit_admits_its_whole_part() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2.5, clock=clock)
    assert admits_at(limiter, clock, 0.0, 0.0, 0.0) == [True, True, False]


@pytest.mark.parametrize("limit", [0, 0.5, -1, math.inf, math.nan])
def test_limiter_rejects_a_limit_that_could_admit_nothing(limit: float) -> None:
    with pytest.raises(ValueError, match="rate limit must be a finite number >= 1"):
        SlidingWindowLimiter(limit)


def test_rate_limited_answer_names_the_configured_limit() -> None:
    assert rate_limited_answer(25).body == rate_limited_answer(25.0).body
    answer = rate_limited_answer(25.0)
    assert answer.status == 429
    assert ("Retry-After", "1") in answer.headers
    assert json.loads(answer.body) == {"error": "Rate limit exceeded: 25 requests per second"}
    assert b"2.5 requests per second" in rate_limited_answer(2.5).body


@pytest.fixture
def frozen() -> FakeClock:
    """The rate limit's clock, stopped: no request ages out unless the test moves it."""
    return FakeClock(0.0)


@pytest.fixture
def limited_sim(frozen: FakeClock) -> Iterator[Simulator]:
    with Simulator(api_key=KEY, rate_limit_per_s=10, rate_clock=frozen) as simulator:
        yield simulator


def assert_rate_limited(response: requests.Response) -> None:
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {"error": "Rate limit exceeded: 10 requests per second"}


def test_forty_quick_requests_at_ten_per_second_get_thirty_429s(
    limited_sim: Simulator, http: requests.Session
) -> None:
    sim = limited_sim
    known = sim.create_run(Scenario(pending_polls=100))  # not over HTTP: costs nothing
    answers = []
    for i in range(20):
        answers.append(submit(http, sim, f"text {i}"))
        answers.append(poll(http, sim, known))

    assert [a.status_code for a in answers[:10]] == [202, 200] * 5
    for refused in answers[10:]:
        assert_rate_limited(refused)
    submitted = [a.json()["runId"] for a in answers[:10:2]]
    assert sim.run_ids == [known, *submitted]  # the 15 refused submits created no run
    assert sim.calls() == {"/api/tts": (5, 15), "/api/tts/status": (5, 15)}
    assert sim.refused_requests == 30
    assert [r.limited for r in sim.requests] == [False] * 10 + [True] * 30
    over_http = http.get(f"{sim.root}/_sim/requests", timeout=TIMEOUT_S).json()
    assert sum(r["limited"] for r in over_http) == 30


def test_only_api_requests_with_a_good_key_count(
    limited_sim: Simulator, http: requests.Session
) -> None:
    sim = limited_sim
    run_id = sim.create_run(Scenario(pending_polls=0))
    for _ in range(10):
        assert http.get(f"{sim.root}/audio/{run_id}.wav", timeout=TIMEOUT_S).status_code == 200
        assert http.get(f"{sim.root}/_sim/health", timeout=TIMEOUT_S).status_code == 200
        bad_key = http.get(
            f"{sim.base_url}/tts/status",
            params={"runId": run_id, "model": MODEL},
            headers={"x-api-key": "wrong"},  # replaces the session's good key
            timeout=TIMEOUT_S,
        )
        assert bad_key.status_code == 401
    # Neither audio, /_sim/ nor a bad key used the budget: ten account requests still pass.
    assert [poll(http, sim, run_id).status_code for _ in range(10)] == [200] * 10
    assert_rate_limited(http.get(f"{sim.base_url}/no-such-endpoint", timeout=TIMEOUT_S))
    assert sim.calls() == {"/api/tts/status": (20, 0), "/api/no-such-endpoint": (0, 1)}


def test_a_refused_request_changes_nothing(frozen: FakeClock, http: requests.Session) -> None:
    with Simulator(api_key=KEY, rate_limit_per_s=1, rate_clock=frozen) as sim:
        run_id = sim.create_run(Scenario(pending_polls=1, status_failures=("503",)))
        text = "again [[sim submit_fail=500]]"
        assert poll(http, sim, "unknown-run").status_code == 404  # fills the window at 0.0
        refused = [submit(http, sim, text), poll(http, sim, run_id)]
        assert [(r.status_code, r.headers["Retry-After"]) for r in refused] == [(429, "1")] * 2
        assert sim.run_ids == [run_id]

        steps = []
        for at_s in (1.0, 2.0, 3.0, 4.0, 5.0):  # one request a second: all under the limit
            frozen.now_s = at_s
            steps.append(submit(http, sim, text) if at_s in (1.0, 5.0) else poll(http, sim, run_id))

    # The refused submit took no injected failure, the refused poll neither failure nor step.
    assert [r.status_code for r in steps] == [500, 503, 200, 200, 202]
    assert [r.json()["status"] for r in steps[2:]] == ["pending", "completed", "pending"]
    assert sim.run_ids == [run_id, steps[4].json()["runId"]]
    assert sim.calls() == {"/api/tts": (2, 1), "/api/tts/status": (4, 1)}


def test_without_a_rate_limit_nothing_is_refused(sim: Simulator, http: requests.Session) -> None:
    run_id = sim.create_run()
    assert {poll(http, sim, run_id).status_code for _ in range(40)} == {200}
    assert sim.refused_requests == 0
    assert sim.calls() == {"/api/tts/status": (40, 0)}


def test_simulator_rejects_a_rate_limit_below_one() -> None:
    with pytest.raises(ValueError, match="rate limit"):
        Simulator(rate_limit_per_s=0.5)


# --- serve() and `tts-worker simulate --rate` (TTS_SIM_RATE) ----------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The CLI's calls of serve(), each as its keyword arguments; nothing is served."""
    calls: list[dict[str, Any]] = []

    def fake_serve(host: str, port: int, **kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(simulator_module, "serve", fake_serve)
    return calls


@pytest.mark.parametrize(
    ("args", "env", "limit"),
    [
        ([], {"TTS_SIM_RATE": None}, None),
        ([], {"TTS_SIM_RATE": ""}, None),
        ([], {"TTS_SIM_RATE": "0"}, None),
        ([], {"TTS_SIM_RATE": "25"}, 25.0),
        (["--rate", "10"], {"TTS_SIM_RATE": "25"}, 10.0),
        (["--rate", "0"], {"TTS_SIM_RATE": "25"}, None),
        (["--rate", "2.5"], {}, 2.5),
    ],
)
def test_simulate_rate_defaults_from_tts_sim_rate(
    served: list[dict[str, Any]], args: list[str], env: dict[str, str | None], limit: float | None
) -> None:
    result = invoke(["simulate", *args], env)

    assert result.exit_code == 0, result.output
    assert served == [{"api_key": simulator_module.DEFAULT_API_KEY, "rate_limit_per_s": limit}]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--rate", "0.5"], {}, "--rate (TTS_SIM_RATE) must be 0 for no limit, or at least 1"),
        ([], {"TTS_SIM_RATE": "inf"}, "--rate (TTS_SIM_RATE) must be 0 for no limit"),
        ([], {"TTS_SIM_RATE": "nan"}, "Invalid value for '--rate' (env var: 'TTS_SIM_RATE')"),
        (["--rate", "-1"], {}, "Invalid value for '--rate'"),
        ([], {"TTS_SIM_RATE": "fast"}, "Invalid value for '--rate'"),
    ],
)
def test_simulate_refuses_a_rate_that_is_no_limit(
    served: list[dict[str, Any]], args: list[str], env: dict[str, str | None], message: str
) -> None:
    result = invoke(["simulate", *args], env)

    assert result.exit_code == 2
    assert message in assert_one_line(result.stderr)
    assert served == []


def test_serve_hands_the_rate_limit_to_its_simulator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[Simulator] = []

    class Recorded(Simulator):
        def start(self) -> Simulator:
            started.append(self)
            return super().start()

    real_sleep = time.sleep

    def ctrl_c_instead_of_the_long_wait(seconds: float) -> None:
        if seconds == 3600:  # serve()'s idle wait; any other sleep is someone else's
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(simulator_module, "Simulator", Recorded)
    monkeypatch.setattr(time, "sleep", ctrl_c_instead_of_the_long_wait)
    simulator_module.serve(port=0, rate_limit_per_s=25)

    assert [s.rate_limit_per_s for s in started] == [25]
    assert capsys.readouterr().out.rstrip().endswith(", 25 requests/s")
