"""Task arguments arrive as JSON from other apps: every wrong type is a typed INVALID_INPUT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks import errors, validation

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
