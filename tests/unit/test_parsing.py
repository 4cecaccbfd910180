"""Status and submit answers into typed values; property tests on arbitrary JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks import errors
from tasks.nanogpt import parsing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_any_json_parses_or_raises_invalid_response(payload: object) -> None:
    try:
        result = parsing.parse_status(payload)
    except errors.InvalidResponse:
        return
    assert isinstance(result, parsing.Pending | parsing.AudioLink | parsing.Failed)


@given(
    st.dictionaries(
        st.sampled_from(["status", "audioUrl", "queuePosition", "error", "code"]), json_values
    )
)
def test_status_shaped_dicts(payload: dict[str, object]) -> None:
    try:
        result = parsing.parse_status(payload)
    except errors.InvalidResponse:
        return
    if isinstance(result, parsing.AudioLink):
        assert payload["status"] == "completed" or str(payload["status"]).lower() == "completed"
        assert isinstance(payload["audioUrl"], str)
    if isinstance(result, parsing.Pending) and result.queue_position is not None:
        assert result.queue_position >= 0


def test_documented_examples() -> None:
    pending = parsing.parse_status({"status": "pending", "runId": "98b0", "queuePosition": 3})
    assert pending == parsing.Pending("pending", 3)
    done = parsing.parse_status(
        {
            "status": "completed",
            "audioUrl": "https://x/f.mp3",
            "contentType": "audio/mpeg",
            "model": "Elevenlabs-Turbo-V2.5",
        }
    )
    assert done == parsing.AudioLink("https://x/f.mp3", "audio/mpeg")
    generic = parsing.parse_status({"status": "error", "error": "TTS generation failed."})
    assert isinstance(generic, parsing.Failed)
    assert generic.error.code == "UPSTREAM_ERROR"
    policy = parsing.parse_status(
        {
            "status": "error",
            "code": "CONTENT_POLICY_VIOLATION",
            "error": "Content rejected by provider.",
        }
    )
    assert isinstance(policy, parsing.Failed)
    assert policy.error.code == "CONTENT_POLICY_VIOLATION"
    assert policy.error.message == "Content rejected by provider."


def test_unknown_status_is_pending() -> None:
    assert parsing.parse_status({"status": "processing"}) == parsing.Pending("processing", None)


@pytest.mark.parametrize(
    "payload",
    [[], "completed", {"status": "completed"}, {"status": ""}, {"queuePosition": 1}],
)
def test_unusable_status(payload: object) -> None:
    with pytest.raises(errors.InvalidResponse):
        parsing.parse_status(payload)


def test_ticket() -> None:
    ticket = parsing.parse_ticket(
        json.loads(
            '{"status":"pending","runId":"r1","model":"Elevenlabs-V3","cost":0.1,'
            '"paymentSource":"USD"}'
        ),
        fallback_model="x",
    )
    assert ticket == parsing.Ticket("r1", "Elevenlabs-V3", 0.1, "USD")
    with pytest.raises(errors.InvalidResponse):
        parsing.parse_ticket({"status": "pending"}, fallback_model="x")
    assert parsing.parse_ticket({"runId": "r"}, fallback_model="m").model == "m"


def test_sync_answer_carries_its_cost_and_currency() -> None:
    """NanoGPT's documented 200 JSON answer: the cost and the currency it is in."""
    answer = parsing.parse_sync_answer(
        {
            "audioUrl": "https://x/f.mp3",
            "contentType": "audio/mpeg",
            "model": "tts-1",
            "duration": 1.2,
            "cost": 0.0006,
            "currency": "USD",
        }
    )
    assert answer == parsing.AudioLink("https://x/f.mp3", "audio/mpeg", 0.0006, "USD")


@pytest.mark.parametrize("cost", [None, "free", True, [1]])
def test_sync_answer_without_a_usable_cost(cost: object) -> None:
    answer = parsing.parse_sync_answer({"audioUrl": "https://x/f.mp3", "cost": cost})
    assert (answer.cost, answer.currency) == (None, None)


@pytest.mark.parametrize("word", sorted(parsing.TERMINAL_STATUSES))
def test_terminal_words_fail_at_once_naming_the_word(word: str) -> None:
    result = parsing.parse_status({"status": word.upper(), "error": "by the user"})
    assert isinstance(result, parsing.Failed)
    assert result.error.code == "UPSTREAM_ERROR"
    assert word in result.error.message
    assert "by the user" in result.error.message


def test_an_unlisted_word_is_pending() -> None:
    assert parsing.parse_status({"status": "warming_up"}) == parsing.Pending("warming_up", None)
