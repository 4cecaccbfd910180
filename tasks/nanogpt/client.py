"""The NanoGPT text-to-speech client: one submit, one status check. No retries, no waiting.

Every answer becomes a value from :mod:`tasks.nanogpt.parsing` or a project error from
:mod:`tasks.errors`; deciding what to do next is the tasks' business.

A submit is paid and NanoGPT takes no idempotency key, so its failures are told apart by what
they prove: a :class:`errors.TransientError` only when the POST provably was not accepted (no
connection was made, 429, 503, 408, 425), and may be sent again; :class:`errors.SubmitUnconfirmed`
when it may have been (a read timeout or a connection cut after the request went out, 500, 502,
504), never sent again; and once NanoGPT answered 2xx, any failure to read the answer is
permanent, since the request was accepted (and billed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from tasks import errors
from tasks.audio import storage
from tasks.nanogpt import parsing
from tasks.nanogpt.validation import PollRequest, SubmitRequest
from tasks.net.http_errors import mapped, never_sent, raise_for_status, request_id

# Statuses that say the server did not act on the request: it may be sent again.
NOT_ACCEPTED_STATUSES = frozenset({408, 425, 429, 503})


@dataclass(frozen=True)
class InlineAudio:
    """A synchronous submit that answered with the audio bytes themselves, read in full (at
    most ``TTS_MAX_AUDIO_BYTES``): they are spooled before anything else can fail."""

    audio: bytes
    content_type: str
    request_id: str | None = None


SubmitResult = parsing.Ticket | parsing.AudioLink | InlineAudio


class NanoGPTClient:
    """Calls ``{base_url}/tts`` and ``{base_url}/tts/status`` with the API key in a header."""

    def __init__(
        self,
        session: requests.Session,
        *,
        base_url: str,
        api_key: str,
        timeout_s: tuple[float, float],
        max_audio_bytes: int = 52_428_800,
        audio_timeout_s: float = 120.0,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {"x-api-key": api_key, "Accept": "application/json, audio/*"}
        self._timeout_s = timeout_s
        self._max_audio_bytes = max_audio_bytes
        self._audio_timeout_s = audio_timeout_s

    def submit(self, request: SubmitRequest) -> SubmitResult:
        """One ``POST /tts``: a ticket (202), an audio link or inline audio (200)."""
        try:
            response = self._session.post(
                f"{self._base_url}/tts",
                json=request.body(),
                headers=self._headers,
                timeout=self._timeout_s,
                stream=True,
                # requests would carry x-api-key to wherever a redirect points (it strips only
                # Authorization), and turn the POST into a GET: a 3xx is an answer, not a hop.
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            if not never_sent(exc):
                raise errors.SubmitUnconfirmed(
                    f"submit: {type(exc).__name__} after the request was sent"
                ) from None
            with mapped("submit", transient=errors.UpstreamUnavailable):
                raise
        rid = request_id(response)
        with _naming(rid):
            return dataclasses.replace(self._submit_answer(request, response), request_id=rid)

    def _submit_answer(self, request: SubmitRequest, response: requests.Response) -> SubmitResult:
        status = response.status_code
        if status not in (200, 202):
            with response:
                if status >= 500 and status not in NOT_ACCEPTED_STATUSES:
                    raise errors.SubmitUnconfirmed(f"submit: HTTP {status}")
                if 200 <= status < 300:  # accepted, in a shape we do not know: never again
                    raise errors.UpstreamFailed(
                        f"submit: unexpected HTTP {status}", code=errors.InvalidResponse.code
                    )
                raise_for_status(response, what="submit")
                raise errors.UpstreamFailed(f"submit: unexpected HTTP {status}")
        with _accepted():
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if status == 200 and content_type.startswith("audio/"):
                return InlineAudio(self._read_audio(response), content_type)
            with response:
                payload = self._json(response, what="submit")
            if status == 202:
                return parsing.parse_ticket(payload, fallback_model=request.model)
            return parsing.parse_sync_answer(payload)

    def _read_audio(self, response: requests.Response) -> bytes:
        with response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self._max_audio_bytes:
                raise errors.AudioTooLarge(
                    f"audio declares {declared} bytes, over {self._max_audio_bytes}"
                )
            with mapped("submit", transient=errors.DownloadInterrupted):
                return storage.read_all(
                    response, max_bytes=self._max_audio_bytes, timeout_s=self._audio_timeout_s
                )

    def status(self, poll: PollRequest) -> parsing.StatusResult:
        """One ``GET /tts/status``, passing the ticket's cost and payment source for refunds."""
        params: dict[str, str] = {"runId": poll.run_id, "model": poll.model}
        if poll.cost is not None:
            params["cost"] = str(poll.cost)
        if poll.payment_source:
            params["paymentSource"] = poll.payment_source
        # The reference client sends str(bool): "True" / "False".
        params["isApiRequest"] = str(poll.is_api_request)
        with mapped("status", transient=errors.UpstreamUnavailable):
            response = self._session.get(
                f"{self._base_url}/tts/status",
                params=params,
                headers=self._headers,
                timeout=self._timeout_s,
                allow_redirects=False,
            )
        rid = request_id(response)
        with _naming(rid):
            raise_for_status(response, what="status")
            result = parsing.parse_status(self._json(response, what="status"))
        if isinstance(result, parsing.Failed):
            result.error.with_request_id(rid)
            return result
        return dataclasses.replace(result, request_id=rid)

    @staticmethod
    def _json(response: requests.Response, *, what: str) -> object:
        with mapped(what, transient=errors.UpstreamUnavailable):
            body = response.content
        try:
            return json.loads(body)
        except ValueError as exc:
            kind = response.headers.get("Content-Type", "?")
            raise errors.InvalidResponse(f"{what}: body is not valid JSON ({kind})") from exc


@contextlib.contextmanager
def _naming(rid: str | None) -> Iterator[None]:
    """Every error raised about an answer names its ``X-Request-ID``."""
    try:
        yield
    except errors.TTSError as exc:
        raise exc.with_request_id(rid) from None


@contextlib.contextmanager
def _accepted() -> Iterator[None]:
    """NanoGPT answered 2xx: it accepted (and billed) the request, so a failure from here on
    is not retried by sending it again; its public code is kept."""
    try:
        yield
    except errors.TransientError as exc:
        raise errors.UpstreamFailed(
            f"{exc.message} (after NanoGPT accepted it)", code=exc.code
        ) from None
