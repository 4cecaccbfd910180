"""Every public error code and retry policy, through the real worker and the simulator."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tasks import names
from tasks.record.jobs import JobStore
from tests.integration.conftest import ELEVEN, Send, wait_until
from tests.support.worker import WorkerProcess
from workers.embedded_redis import free_port
from workers.receiver import Receiver
from workers.simulator import Scenario, Simulator

pytestmark = pytest.mark.integration


def job_id() -> str:
    return f"it-{uuid.uuid4().hex}"


def failed(
    send: Send, receiver: Receiver, text: str, *, model: str = ELEVEN, timeout_s: float = 30.0
) -> dict:
    jid = job_id()
    send(names.SUBMIT_TTS, text, model, notify_url=receiver.url, job_id=jid)
    delivery = receiver.wait_for(jid, timeout_s=timeout_s)
    assert delivery.verified is True
    body = delivery.json()
    assert body["type"] == "tts.failed", body
    assert "audio" not in body
    return body


def polls_of(simulator: Simulator, body: dict) -> int:
    return len(simulator.status_polls(body["run_id"]))


def test_content_policy_passes_upstream_code_and_message(
    send: Send, receiver: Receiver, simulator: Simulator, store: JobStore
) -> None:
    body = failed(send, receiver, "Bad words [[sim pending=1 outcome=content_policy]]")
    assert body["error"]["code"] == "CONTENT_POLICY_VIOLATION"
    assert body["error"]["message"].startswith("Content rejected by provider")
    job = store.get(body["job_id"])
    assert job is not None
    assert job.polls == polls_of(simulator, body) == 2  # the poll that found the error counts


def test_generic_error_is_upstream_error(send: Send, receiver: Receiver) -> None:
    body = failed(send, receiver, "Oops [[sim outcome=error]]")
    assert body["error"]["code"] == "UPSTREAM_ERROR"
    assert "TTS generation failed" in body["error"]["message"]


@pytest.mark.parametrize(
    ("fault", "code"), [("401", "AUTH_FAILED"), ("403", "AUTH_FAILED"), ("404", "NOT_FOUND")]
)
def test_permanent_statuses_are_not_retried(
    fault: str, code: str, send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    body = failed(send, receiver, f"Denied [[sim status_fail={fault}]]")
    assert body["error"]["code"] == code
    assert polls_of(simulator, body) == 1


def test_submit_auth_failure(send: Send, receiver: Receiver) -> None:
    body = failed(send, receiver, "Denied at the door [[sim submit_fail=401]]")
    assert body["error"]["code"] == "AUTH_FAILED"
    assert body["run_id"] is None


@pytest.mark.parametrize("fault", ["500", "503", "502html", "malformed"])
def test_transient_faults_are_retried_then_succeed(
    fault: str, send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        f"Flaky {jid} [[sim pending=1 status_fail={fault},{fault}]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    assert polls_of(simulator, body) == 4  # two faults, one pending, one completed


def test_read_timeout_is_retried(send: Send, receiver: Receiver, simulator: Simulator) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        f"Slow {jid} [[sim pending=2 status_fail=slow:1.5]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    assert polls_of(simulator, body) >= 3  # the timed-out call, then at least one more pending


def test_submit_5xx_is_retried(send: Send, receiver: Receiver, simulator: Simulator) -> None:
    jid = job_id()
    text = f"Submit flaky {jid} [[sim submit_fail=503]]"
    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    assert receiver.wait_for(jid).json()["type"] == "tts.completed"
    posts = [
        r
        for r in simulator.requests
        if r.path == "/api/tts" and r.body and r.body.get("text") == text
    ]
    assert len(posts) == 2


def test_submit_500_is_unconfirmed_and_not_sent_again(
    send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    """A 500 to the paid POST may hide an accepted request: the job ends, nothing is re-sent."""
    jid = job_id()
    text = f"Submit broken {jid} [[sim submit_fail=500]]"
    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    body = receiver.wait_for(jid).json()
    assert body["error"]["code"] == "SUBMIT_UNCONFIRMED"
    posts = [
        r
        for r in simulator.requests
        if r.path == "/api/tts" and r.body and r.body.get("text") == text
    ]
    assert len(posts) == 1


def test_5xx_past_the_retry_budget_fails(
    send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    body = failed(send, receiver, "Down [[sim status_fail=500,500,500,500,500,500]]")
    assert body["error"]["code"] == "UPSTREAM_ERROR"
    assert polls_of(simulator, body) == 4  # first try + TTS_MAX_RETRIES=3


def test_unusable_answers_fail_as_invalid_response(
    send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    body = failed(send, receiver, "No url [[sim outcome=completed_no_url]]")
    assert body["error"]["code"] == "INVALID_RESPONSE"
    assert polls_of(simulator, body) == 6  # two pending, then 1 + 3 retries of the bad answer


def test_429_waits_for_retry_after_up_to_the_cap(
    send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    """Retry-After: 1 against TTS_RETRY_MAX_DELAY=0.5 (tests/support/stack.py): the cap wins,
    so no wait outlives the visibility timeout sized from it."""
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        f"Busy {jid} [[sim pending=0 status_fail=429:1]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    polls = simulator.status_polls(body["run_id"])
    assert len(polls) == 2
    assert polls[1].at - polls[0].at >= 0.5


def test_an_absurd_retry_after_still_completes(
    send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    """Retry-After: 1e400 (inf as a float) counts as absent: the usual backoff, then done."""
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        f"Absurd {jid} [[sim pending=0 status_fail=429:1e400]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    assert len(simulator.status_polls(body["run_id"])) == 2


def test_deadline_gives_timeout(send: Send, receiver: Receiver, simulator: Simulator) -> None:
    body = failed(send, receiver, "Forever [[sim pending=100000]]", timeout_s=30)
    assert body["error"]["code"] == "TIMEOUT"
    polls = simulator.status_polls(body["run_id"])
    assert polls[-1].at - polls[0].at <= 8.5  # TTS_POLL_TIMEOUT=8, measured from the first poll
    assert len(polls) < 60  # the countdown grew; it did not spin


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model": ""}, "model"),
        ({"model": 7}, "model"),
        ({"text": ""}, "text"),
        ({"speed": "fast"}, "speed"),
        ({"job_id": "../../etc"}, "job_id"),
        # Issue 13's review: each of these crashed the task before any record existed.
        ({"speed": 10**400}, "speed"),
        ({"model": "Kokoro\ud800"}, "model"),
        ({"model": "\x1b[31mred\x1b[0m"}, "model"),
        ({"job_id": "it-trailing\n"}, "job_id"),
    ],
)
def test_bad_submit_arguments(
    kwargs: dict, fragment: str, send: Send, receiver: Receiver, store: JobStore
) -> None:
    args = {"text": "fine", "model": ELEVEN, "job_id": str(uuid.uuid4()), **kwargs}
    bad_id = "job_id" in kwargs
    send(names.SUBMIT_TTS, args.pop("text"), args.pop("model"), notify_url=receiver.url, **args)
    if not bad_id:
        body = receiver.wait_for(args["job_id"]).json()
    else:  # the unusable id is replaced by a fresh one: find the failure by its message
        body = wait_until(
            lambda: next(
                (
                    b
                    for d in receiver.deliveries
                    if "job_id" in (b := d.json()).get("error", {}).get("message", "")
                ),
                None,
            )
        )
        assert body["job_id"] != kwargs["job_id"]
    assert body["type"] == "tts.failed"
    assert body["error"]["code"] == "INVALID_INPUT"
    assert fragment in body["error"]["message"]
    job = store.get(body["job_id"])
    assert job is not None
    assert job.status == "failed"


def test_unparsable_notify_url_is_recorded_not_lost(send: Send, store: JobStore) -> None:
    """No webhook can be sent to "https://[::1/", but the job still ends, where get_job sees it."""
    jid = job_id()
    send(names.SUBMIT_TTS, "fine", ELEVEN, notify_url="https://[::1/", job_id=jid)
    job = wait_until(lambda: (j := store.get(jid)) is not None and j.outcome is not None and j)
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert "notify_url" in job.outcome["error"]["message"]
    assert job.notify_url is None


def test_bad_poll_arguments(send: Send, receiver: Receiver) -> None:
    jid = job_id()
    send(names.POLL_TTS, "run-1", "", notify_url=receiver.url, job_id=jid)
    body = receiver.wait_for(jid).json()
    assert body["error"]["code"] == "INVALID_INPUT"


@pytest.mark.parametrize(
    "directive",
    [
        "audio_url=https://127.0.0.2:9/a.wav",
        "audio_url=http://127.0.0.2:9/a.wav",
        "redirect=https://127.0.0.2:9/a.wav",
    ],
)
def test_unsafe_audio_urls_refused(directive: str, send: Send, receiver: Receiver) -> None:
    body = failed(send, receiver, f"Sneaky [[sim pending=0 {directive}]]")
    assert body["error"]["code"] == "UNSAFE_URL"


def test_redirect_to_trusted_host_is_followed(send: Send, receiver: Receiver) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        f"Moved {jid} [[sim pending=0 redirect={{base}}/audio/x.wav]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] in ("tts.completed", "tts.failed")
    # {base}/audio/x.wav is an unknown run on the simulator: a 404 from the audio host
    assert body["type"] == "tts.failed"
    assert body["error"]["code"] == "DOWNLOAD_FAILED"


def test_audio_too_large(send: Send, receiver: Receiver, audio_dir: Path) -> None:
    body = failed(send, receiver, "Huge [[sim pending=0 audio=large:200000]]")
    assert body["error"]["code"] == "AUDIO_TOO_LARGE"
    assert not list(audio_dir.glob(".part-*"))


def test_not_audio(send: Send, receiver: Receiver) -> None:
    body = failed(send, receiver, "Html [[sim pending=0 audio=not_audio]]")
    assert body["error"]["code"] == "NOT_AUDIO"


@pytest.mark.parametrize("audio", ["hang", "drip:0.05"])
def test_stalled_audio_host_fails_download(
    audio: str, send: Send, receiver: Receiver, audio_dir: Path
) -> None:
    body = failed(send, receiver, f"Slow [[sim pending=0 audio={audio}]]", timeout_s=60)
    assert body["error"]["code"] == "DOWNLOAD_FAILED"
    assert not list(audio_dir.glob(".part-*"))


def test_refused_audio_host_fails_download(
    send: Send, receiver: Receiver, store: JobStore, worker: WorkerProcess, audio_dir: Path
) -> None:
    # Nothing listens on the audioUrl's port (bound, then closed): every connection is refused.
    port = free_port()
    jid = job_id()
    text = f"Nobody home [[sim pending=0 audio_url=http://127.0.0.1:{port}/{{run_id}}.wav]]"
    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.failed", body
    assert body["error"] == {"code": "DOWNLOAD_FAILED", "message": "download: ConnectionError"}
    # Transient: the first attempt and DOWNLOAD_MAX_RETRIES (3) retries, then the outcome.
    retries = [line for line in worker.log.splitlines() if f"job {jid}: download: " in line]
    assert [line.split("; ")[-1].split(" in ")[0] for line in retries] == [
        "retry 1",
        "retry 2",
        "retry 3",
    ]
    job = wait_until(lambda: (j := store.get(jid)) and j.notify_state == "delivered" and j)
    assert job.notify_attempts == 1  # the job ended once, with one webhook
    assert len(receiver.for_job(jid)) == 1
    assert not list(audio_dir.glob(".part-*"))


def test_every_code_is_documented() -> None:
    from tasks.errors import OUTCOME_CODES

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [code for code in OUTCOME_CODES if f"`{code}`" not in readme]
    assert not missing


def test_scenario_default_is_happy(simulator: Simulator) -> None:
    assert simulator.default_scenario == Scenario()


@pytest.mark.parametrize("where", ["submit_fail", "status_fail"])
def test_402_fails_at_once_with_insufficient_balance(
    where: str, send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    body = failed(send, receiver, f"No money [[sim {where}=402]]")
    assert body["error"]["code"] == "INSUFFICIENT_BALANCE"
    assert "Insufficient balance" in body["error"]["message"]
    if where == "status_fail":
        assert polls_of(simulator, body) == 1  # never retried
    else:
        assert body["run_id"] is None
    # The X-Request-ID NanoGPT's support asks for is in the message.
    rid = body["error"]["message"].rsplit("X-Request-ID ", 1)[1].rstrip(")")
    assert rid in simulator.request_ids


@pytest.mark.parametrize("word", ["cancelled", "expired", "rejected"])
def test_terminal_status_word_fails_within_a_few_polls(
    word: str, send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    # The first status answer carries the word: the job ends there, not at TTS_POLL_TIMEOUT.
    body = failed(send, receiver, f"Gone [[sim pending=5 queue=none pending_status={word}]]")
    assert body["error"]["code"] == "UPSTREAM_ERROR"
    assert word in body["error"]["message"]
    assert "X-Request-ID sim-req-" in body["error"]["message"]
    assert polls_of(simulator, body) == 1


def test_unlisted_status_word_keeps_polling(
    send: Send, receiver: Receiver, simulator: Simulator, store: JobStore
) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        "New word [[sim pending=2 pending_status=warming_up]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    assert polls_of(simulator, body) == 3
    job = store.get(jid)
    assert job is not None
    assert job.request_id is not None
    # Kept from the last status answer (not the submit's, nor the audio download's).
    assert simulator.request_ids[job.request_id].endswith("/tts/status")
