"""HTTP statuses and requests exceptions map to the most specific project error."""

from __future__ import annotations

import email.utils

import pytest
import requests
import urllib3

from tasks import errors
from tasks.http_errors import mapped, parse_retry_after, raise_for_status


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
        (429, errors.RateLimited, "UPSTREAM_ERROR"),
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
    assert caught.value.__cause__ is exc
