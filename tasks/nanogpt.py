"""The NanoGPT text-to-speech client: one submit, one status check. No retries, no waiting.

Every answer becomes a value from :mod:`tasks.parsing` or a project error from
:mod:`tasks.errors`; deciding what to do next is the tasks' business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import requests

from tasks import errors, parsing
from tasks.http_errors import mapped, raise_for_status
from tasks.validation import PollRequest, SubmitRequest


@dataclass(frozen=True)
class InlineAudio:
    """A synchronous submit that answered with the audio bytes themselves (still streaming)."""

    response: requests.Response
    content_type: str


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
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {"x-api-key": api_key, "Accept": "application/json, audio/*"}
        self._timeout_s = timeout_s

    def submit(self, request: SubmitRequest) -> SubmitResult:
        """One ``POST /tts``: a ticket (202), an audio link or inline audio (200)."""
        with mapped("submit", transient=errors.UpstreamUnavailable):
            response = self._session.post(
                f"{self._base_url}/tts",
                json=request.body(),
                headers=self._headers,
                timeout=self._timeout_s,
                stream=True,
            )
        if response.status_code != 200 and response.status_code != 202:
            with response:
                raise_for_status(response, what="submit")
                raise errors.InvalidResponse(f"submit: unexpected HTTP {response.status_code}")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if response.status_code == 200 and content_type.startswith("audio/"):
            return InlineAudio(response, content_type)
        with response:
            payload = self._json(response, what="submit")
        if response.status_code == 202:
            return parsing.parse_ticket(payload, fallback_model=request.model)
        return parsing.parse_sync_answer(payload)

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
            )
        raise_for_status(response, what="status")
        return parsing.parse_status(self._json(response, what="status"))

    @staticmethod
    def _json(response: requests.Response, *, what: str) -> object:
        with mapped(what, transient=errors.UpstreamUnavailable):
            body = response.content
        try:
            return json.loads(body)
        except ValueError as exc:
            kind = response.headers.get("Content-Type", "?")
            raise errors.InvalidResponse(f"{what}: body is not valid JSON ({kind})") from exc
