"""The error boundary: a caller's URL never reaches a project error's text, cause or context.

Celery formats the whole chain of an exception into the tracebacks it puts in task-retried and
task-failed events and in the result backend, so a chained ``requests`` or ``botocore`` error
(which quotes the URL, bucket and key) would carry a notify URL's token or a presigned URL's
signature there. These tests make the real libraries fail and format what the boundary raises.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks import errors
from tasks.audio import s3_store, storage
from tasks.net.http_errors import mapped
from tasks.net.safe_http import SafeHttp
from tasks.webhooks import delivery as webhooks

TOKEN = "SECRETTOKEN42"
NO_STORE: Any = None  # the download fails before anything is stored


def everything_shown(exc: BaseException) -> str:
    """What Celery would show: str, repr and the formatted traceback with its whole chain."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


@pytest.fixture
def closed_url() -> Iterator[str]:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        yield f"http://127.0.0.1:{port}/hooks/{TOKEN}/x?token={TOKEN}"


@pytest.fixture
def http() -> SafeHttp:
    return SafeHttp(trusted_hosts=frozenset({"127.0.0.1"}), timeout_s=(1, 1), user_agent="t")


def test_webhook_to_a_refused_url_names_the_fault_not_the_url(
    http: SafeHttp, closed_url: str
) -> None:
    with pytest.raises(errors.WebhookRefused) as caught:
        webhooks.deliver(http, closed_url, {"type": "t"}, msg_id="msg_1", secret=None)
    shown = everything_shown(caught.value)
    assert "ConnectionError" in shown
    assert TOKEN not in shown


def test_download_from_a_refused_url_names_the_fault_not_the_url(
    http: SafeHttp, closed_url: str
) -> None:
    with pytest.raises(errors.DownloadInterrupted) as caught:
        storage.download(http, closed_url, store=NO_STORE, job_id="j", max_bytes=10, timeout_s=1)
    assert TOKEN not in everything_shown(caught.value)


def _raise(exc: BaseException) -> Callable[[], None]:
    def go() -> None:
        raise exc

    return go


@pytest.mark.parametrize(
    "fault",
    [
        requests.ConnectionError(f"Max retries exceeded with url: /hooks/{TOKEN}"),
        requests.ReadTimeout(f"read timed out: https://h/x?token={TOKEN}"),
        requests.exceptions.InvalidURL(f"bad https://h:99999/{TOKEN}"),
        requests.exceptions.ChunkedEncodingError(f"cut https://h/{TOKEN}"),
    ],
    ids=type,
)
def test_mapped_never_chains_the_requests_error(fault: Exception) -> None:
    with pytest.raises(errors.TTSError) as caught, mapped("w", transient=errors.WebhookRefused):
        _raise(fault)()
    assert TOKEN not in everything_shown(caught.value)


@pytest.mark.parametrize(
    "fault",
    [
        EndpointConnectionError(endpoint_url=f"https://s3.example/b/k?X-Amz-Signature={TOKEN}"),
        ClientError(
            {"Error": {"Code": "AccessDenied", "Message": f"key {TOKEN}"}},
            f"PutObject {TOKEN}",
        ),
    ],
    ids=type,
)
def test_s3_mapped_never_chains_the_botocore_error(fault: Exception) -> None:
    with pytest.raises(errors.TTSError) as caught, s3_store.mapped("upload"):
        _raise(fault)()
    assert TOKEN not in everything_shown(caught.value)
