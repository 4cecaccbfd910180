"""What a step needs from the world, handed in: arq's worker ``ctx``, typed.

Every step function (:mod:`tasks.steps`) takes a :class:`Ctx` as its first argument and reaches
the outside only through it: the job store, NanoGPT, the audio fetcher and store, the webhook
sender, the dispatcher of next steps, the clock, the NanoGPT call budget and what the fleet
learned of NanoGPT's speed. A worker builds one per process
(:func:`tasks.adapters.runtime.context`); the simulation (tests/sim) builds one from fakes, a fake
clock and a fake broker, and runs the very same step code in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.audio.audio_store import AudioStore
from tasks.audio.storage import StoredAudio
from tasks.config.settings import Settings
from tasks.nanogpt.client import SubmitResult
from tasks.nanogpt.parsing import StatusResult
from tasks.nanogpt.validation import PollRequest, SubmitRequest
from tasks.pacing.budget import Budget
from tasks.pacing.dispatch import Dispatcher
from tasks.pacing.learning import Learning
from tasks.record.jobs import JobStore


class Upstream(Protocol):
    """NanoGPT: one submit, one status check (:class:`tasks.nanogpt.client.NanoGPTClient`)."""

    def submit(self, request: SubmitRequest) -> SubmitResult: ...

    def status(self, poll: PollRequest) -> StatusResult: ...


class Fetcher(Protocol):
    """Fetch the audio at ``url`` into ``store`` (:func:`tasks.audio.storage.download`)."""

    def __call__(
        self, url: str, *, store: AudioStore, job_id: str, max_bytes: int, timeout_s: float
    ) -> StoredAudio: ...


class WebhookSender(Protocol):
    """POST one signed webhook (:func:`tasks.webhooks.delivery.deliver`); raises project errors."""

    def __call__(self, url: str, body: dict[str, Any], *, msg_id: str) -> int: ...


@dataclass(frozen=True)
class Ctx:
    """The per-process objects steps use. Build it once per process; never share a socket
    across a fork (:func:`tasks.adapters.runtime.reset`)."""

    settings: Settings
    jobs: JobStore
    upstream: Upstream
    fetch: Fetcher
    audio_store: AudioStore
    webhook: WebhookSender
    dispatch: Dispatcher
    clock: Callable[[], float]
    budget: Budget
    learning: Learning
