"""Task arguments arrive as JSON from other apps: every wrong type is a typed INVALID_INPUT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks import errors
from tasks.nanogpt import validation

anything = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.lists(st.integers(), max_size=3)
)


@given(text=anything, model=anything, speed=anything, stability=anything)
def test_submit_validation_never_crashes(
    text: object, model: object, speed: object, stability: object
) -> None:
    try:
        request = validation.submit_request(text, model, speed=speed, stability=stability)
    except errors.InvalidInput as exc:
        error = exc
    else:
        assert isinstance(request.text, str)
        assert request.text.strip()
        assert isinstance(request.model, str)
        return
    assert error.code == "INVALID_INPUT"
    assert error.message


@given(run_id=anything, model=anything, cost=anything, is_api=anything)
def test_poll_validation_never_crashes(
    run_id: object, model: object, cost: object, is_api: object
) -> None:
    try:
        request = validation.poll_request(
            run_id, model, cost=cost, payment_source=None, is_api_request=is_api
        )
    except errors.InvalidInput:
        return
    assert isinstance(request.run_id, str)
    assert isinstance(request.is_api_request, bool)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"text": "", "model": "m"}, "text"),
        ({"text": "hi", "model": ""}, "model"),
        ({"text": "hi", "model": 5}, "model"),
        ({"text": "hi", "model": "m", "speed": "fast"}, "speed"),
        ({"text": "hi", "model": "m", "stability": 2}, "stability"),
        ({"text": "x" * 20_001, "model": "m"}, "text"),
    ],
)
def test_submit_messages_name_the_field(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(errors.InvalidInput, match=fragment):
        validation.submit_request(**kwargs)  # type: ignore[arg-type]


def test_body_drops_unset_fields() -> None:
    request = validation.submit_request("hello", "Elevenlabs-V3", voice="Rachel", speed=1.2)
    assert request.body() == {
        "text": "hello",
        "model": "Elevenlabs-V3",
        "voice": "Rachel",
        "speed": 1.2,
    }


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a b", "x" * 129, 7, "-lead"])
def test_job_id_refuses_unsafe(bad: object) -> None:
    with pytest.raises(errors.InvalidInput):
        validation.job_id(bad)


@pytest.mark.parametrize("bad", ["ftp://x/y", "/relative", "http://", "javascript:alert(1)", 3])
def test_notify_url_refuses_non_http(bad: object) -> None:
    with pytest.raises(errors.InvalidInput):
        validation.notify_url(bad)


# Issue 13's malformed arguments, each of which crashed submit_tts before any record existed.
@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: validation.submit_request("hi", "m", speed=10**400), "speed"),
        (lambda: validation.notify_url("https://[::1/"), "notify_url"),
        (lambda: validation.notify_url("https://host:notaport/x"), "notify_url"),
        (lambda: validation.submit_request("hi", "Kokoro\ud800"), "model"),
        (lambda: validation.submit_request("hi\ud800", "m"), "text"),
        (lambda: validation.job_id("abc\n"), "job_id"),
        (lambda: validation.submit_request("hi", "\x1b[31mred\x1b[0m"), "model"),
        (lambda: validation.submit_request("hi", "m", voice="a\x07b"), "voice"),
        (
            lambda: validation.poll_request(
                "r\x00", "m", cost=None, payment_source=None, is_api_request=True
            ),
            "run_id",
        ),
    ],
)
def test_malformed_arguments_are_invalid_input(call: object, fragment: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        call()  # type: ignore[operator]
    assert fragment in caught.value.message


hostile = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats()
    | st.text(alphabet=st.characters(codec=None))  # control characters and lone surrogates
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


@given(
    text=hostile,
    model=hostile,
    voice=hostile,
    speed=hostile,
    notify_url=hostile,
    job_id=hostile,
)
def test_any_json_value_is_a_typed_outcome(
    text: object, model: object, voice: object, speed: object, notify_url: object, job_id: object
) -> None:
    """Whatever a caller sends, validation answers with values or INVALID_INPUT, nothing else;
    and what it accepts can be stored (UTF-8) and printed (no control characters in names)."""
    try:
        request = validation.submit_request(text, model, voice=voice, speed=speed)
        url = validation.notify_url(notify_url)
        jid = validation.job_id(job_id)
    except errors.InvalidInput:
        return
    for value in (request.text, request.model, request.voice or "", url or "", jid):
        value.encode("utf-8")
    assert not validation.CONTROL.search(request.model + (request.voice or "") + jid)
