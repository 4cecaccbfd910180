"""HTTP statuses and requests exceptions map to the most specific project error."""

from __future__ import annotations

import email.utils
import math

import pytest
import requests
import urllib3
from hypothesis import example, given
from hypothesis import strategies as st

from tasks import errors
from tasks.net.http_errors import MAX_RETRY_AFTER_S, mapped, parse_retry_after, raise_for_status


def response(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body
    r.headers.update(headers or {})
    return r


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (401, errors.AuthFailed, "AUTH_FAILED"),
        (403, errors.AuthFailed, "AUTH_FAILED"),
        (404, errors.NotFound, "NOT_FOUND"),
        (429, errors.RateLimited, "RATE_LIMITED"),
        (500, errors.UpstreamUnavailable, "UPSTREAM_ERROR"),
        (502, errors.UpstreamUnavailable, "UPSTREAM_ERROR"),
        (400, errors.InvalidInput, "INVALID_INPUT"),
        (418, errors.UpstreamFailed, "UPSTREAM_ERROR"),
    ],
)
def test_status_mapping(status: int, cls: type[errors.TTSError], code: str) -> None:
    with pytest.raises(cls) as caught:
        raise_for_status(response(status, b'{"error": "nope"}'), what="status")
    assert caught.value.code == code
    assert "nope" in caught.value.message


def test_transient_and_permanent_split() -> None:
    assert issubclass(errors.RateLimited, errors.TransientError)
    assert issubclass(errors.UpstreamUnavailable, errors.TransientError)
    assert issubclass(errors.AuthFailed, errors.PermanentError)
    assert issubclass(errors.NotFound, errors.PermanentError)


def test_gateway_html_page_message_is_short() -> None:
    page = b"<html><body>" + b"Bad gateway " * 200 + b"</body></html>"
    with pytest.raises(errors.UpstreamUnavailable) as caught:
        raise_for_status(response(502, page, {"Content-Type": "text/html"}), what="status")
    assert len(caught.value.message) < 400


def test_2xx_passes() -> None:
    raise_for_status(response(200), what="x")
    raise_for_status(response(202), what="x")


def test_retry_after_seconds_and_date() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)
    with pytest.raises(errors.RateLimited) as caught:
        raise_for_status(response(429, headers={"Retry-After": "12"}), what="status")
    assert caught.value.retry_after_s == 12


NOW = 1_000_000.0


@pytest.mark.parametrize(
    "header",
    [
        "1e400",
        "inf",
        "-inf",
        "Infinity",
        "nan",
        "-nan",
        str(MAX_RETRY_AFTER_S + 1),
        pytest.param("9" * 400, id="400-digits"),
    ],
)
def test_retry_after_non_finite_or_absurd_is_absent(header: str) -> None:
    assert parse_retry_after(header, now=NOW) is None
    with pytest.raises(errors.RateLimited) as caught:
        raise_for_status(response(429, headers={"Retry-After": header}), what="status")
    assert caught.value.retry_after_s is None


def test_retry_after_limits() -> None:
    assert parse_retry_after(str(MAX_RETRY_AFTER_S), now=NOW) == MAX_RETRY_AFTER_S
    assert parse_retry_after("-5", now=NOW) == 0  # a negative wait is "now", as before
    a_day_on = email.utils.formatdate(NOW + MAX_RETRY_AFTER_S, usegmt=True)
    assert parse_retry_after(a_day_on, now=NOW) == pytest.approx(MAX_RETRY_AFTER_S)
    far_future = email.utils.formatdate(NOW + MAX_RETRY_AFTER_S + 1, usegmt=True)
    assert parse_retry_after(far_future, now=NOW) is None
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW) is None
    assert parse_retry_after(email.utils.formatdate(NOW - 60, usegmt=True), now=NOW) == 0


# Anything a server could send: text, numbers in every float spelling, and HTTP-dates from
# year 1970 to 9999 (the last second datetime can hold).
headers = st.one_of(
    st.text(),
    st.floats().map(str),
    st.floats().map(repr),
    st.integers().map(str),
    st.floats(min_value=0, max_value=253_402_300_799).map(
        lambda t: email.utils.formatdate(t, usegmt=True)
    ),
)


@given(header=headers, now=st.floats(min_value=0, max_value=4e9))
@example(header="1e400", now=NOW)  # each of these gave inf, nan or a year before the fix
@example(header="nan", now=NOW)
@example(header="Fri, 31 Dec 9999 23:59:59 GMT", now=NOW)
def test_retry_after_is_absent_or_a_bounded_wait(header: str, now: float) -> None:
    seconds = parse_retry_after(header, now=now)
    if seconds is not None:
        assert math.isfinite(seconds)
        assert 0 <= seconds <= MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    "exc",
    [
        requests.ConnectTimeout(),
        requests.ReadTimeout(),
        requests.ConnectionError(),
        requests.exceptions.ChunkedEncodingError(),
        urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out"),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("cut"),
    ],
)
def test_network_faults_are_transient(exc: Exception) -> None:
    with (
        pytest.raises(errors.UpstreamUnavailable) as caught,
        mapped("status", transient=errors.UpstreamUnavailable),
    ):
        raise exc
    # The fault is named by kind; the original (which quotes the URL) is not chained.
    assert type(exc).__name__ in str(caught.value) or "cut" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_402_is_insufficient_balance_never_retried_and_names_the_request_id() -> None:
    answer = response(402, b'{"error":"Insufficient balance"}', {"X-Request-ID": "req-42"})
    with pytest.raises(errors.InsufficientBalance) as caught:
        raise_for_status(answer, what="submit")
    assert isinstance(caught.value, errors.PermanentError)
    assert caught.value.code == "INSUFFICIENT_BALANCE"
    assert caught.value.message == "submit: HTTP 402: Insufficient balance (X-Request-ID req-42)"


@pytest.mark.parametrize("header", ["", "two words", "x" * 200, "bad\u00e9"])
def test_an_unusable_request_id_is_not_kept(header: str) -> None:
    with pytest.raises(errors.NotFound) as caught:
        raise_for_status(response(404, b"{}", {"X-Request-ID": header}), what="status")
    assert "X-Request-ID" not in caught.value.message
