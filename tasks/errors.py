"""The project's error tree. Every failure a caller can see has one class and one public code.

::

    TTSError                          code                       retried?
    ├── PermanentError                                           never
    │   ├── InvalidInput              INVALID_INPUT
    │   ├── TenantLimit               TENANT_LIMIT (the tenant's jobs in flight or spend today
    │   │                                           reached its cap: refused before the POST)
    │   ├── AuthFailed                AUTH_FAILED
    │   ├── InsufficientBalance       INSUFFICIENT_BALANCE (402: the NanoGPT account is empty)
    │   ├── NotFound                  NOT_FOUND
    │   ├── ContentPolicyViolation    CONTENT_POLICY_VIOLATION
    │   ├── UpstreamFailed            UPSTREAM_ERROR
    │   ├── UnsafeUrl                 UNSAFE_URL
    │   ├── AudioTooLarge             AUDIO_TOO_LARGE
    │   ├── NotAudio                  NOT_AUDIO
    │   ├── DeadlineExceeded          TIMEOUT
    │   ├── SubmitUnconfirmed         SUBMIT_UNCONFIRMED (the paid POST's fate is unknown)
    │   ├── WorkerLost                WORKER_LOST (a step crashed its worker too many times)
    │   ├── Cancelled                 CANCELLED (tts.cancel ended the job)
    │   ├── StorageFailed             STORAGE_FAILED   (access denied, no such bucket)
    │   ├── WebhookGone               WEBHOOK_GONE (receiver answered 410: stop)
    │   └── WebhookRejected           WEBHOOK_REJECTED (3xx, or 4xx but 408/409/425/429)
    └── TransientError                                           with backoff, bounded
        ├── UpstreamUnavailable       UPSTREAM_ERROR   (5xx, gateway pages, timeouts, resets)
        ├── RateLimited               RATE_LIMITED     (429; waits Retry-After, up to the cap,
        │                                               never past the job's deadline)
        ├── InvalidResponse           INVALID_RESPONSE (truncated JSON, completed without audioUrl)
        ├── DownloadInterrupted       DOWNLOAD_FAILED  (audio host slow, down or cut short)
        ├── StorageUnavailable        STORAGE_FAILED   (object store 5xx, throttled, unreachable)
        └── WebhookRefused            WEBHOOK_FAILED   (5xx, 408/409/425/429, or unreachable)

``requests`` exceptions and HTTP statuses are mapped to these classes at one boundary
(:mod:`tasks.net.http_errors`), ``botocore`` exceptions at another (:mod:`tasks.audio.s3_store`);
tasks never catch ``requests.*`` or ``botocore.*``. When a transient error has used up its
retries, its ``code`` becomes the job's outcome.
"""

from __future__ import annotations


class TTSError(Exception):
    """Base of every error the project reports; ``code`` is the public error code."""

    code = "UPSTREAM_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def with_request_id(self, request_id: str | None) -> TTSError:
        """This error, its message naming NanoGPT's ``X-Request-ID`` (what its support asks
        for); unchanged without one or when the message already names it."""
        if request_id and request_id not in self.message:
            self.message = f"{self.message} (X-Request-ID {request_id})"
            self.args = (self.message,)
        return self

    def as_dict(self) -> dict[str, str]:
        """The ``error`` object of a failed outcome."""
        return {"code": self.code, "message": self.message}


class PermanentError(TTSError):
    """Retrying cannot help: the job fails with this error."""


class TransientError(TTSError):
    """May succeed later: retried with backoff until retries or the deadline run out."""

    retry_after_s: float | None = None


class InvalidInput(PermanentError):
    code = "INVALID_INPUT"


class TenantLimit(PermanentError):
    """The job's tenant is at one of its caps (``TTS_TENANT_MAX_IN_FLIGHT``,
    ``TTS_TENANT_MAX_SPEND_PER_DAY``): the submit ends before any NanoGPT call."""

    code = "TENANT_LIMIT"


class AuthFailed(PermanentError):
    code = "AUTH_FAILED"


class InsufficientBalance(PermanentError):
    """NanoGPT answered 402: the account cannot pay. No retry can help until someone tops it
    up, so the job fails at once, with its own code, log line and metric label to alert on."""

    code = "INSUFFICIENT_BALANCE"


class NotFound(PermanentError):
    code = "NOT_FOUND"


class ContentPolicyViolation(PermanentError):
    code = "CONTENT_POLICY_VIOLATION"


class UpstreamFailed(PermanentError):
    code = "UPSTREAM_ERROR"


class UnsafeUrl(PermanentError):
    code = "UNSAFE_URL"


class AudioTooLarge(PermanentError):
    code = "AUDIO_TOO_LARGE"


class NotAudio(PermanentError):
    code = "NOT_AUDIO"


class DeadlineExceeded(PermanentError):
    code = "TIMEOUT"


class SubmitUnconfirmed(PermanentError):
    """The POST may have been accepted (and billed) but no answer proves it: a read timeout or
    a connection cut after it was sent, 500/502/504, or a worker that died while sending it.
    NanoGPT takes no idempotency key, so sending it again could bill twice: the job ends."""

    code = "SUBMIT_UNCONFIRMED"


class WorkerLost(PermanentError):
    """A poison message: the step killed its worker process on every delivery; parked."""

    code = "WORKER_LOST"


class Cancelled(PermanentError):
    """A caller cancelled the job (``tts.cancel``). NanoGPT has no cancel endpoint: a run it
    already accepted may still finish upstream, and is billed."""

    code = "CANCELLED"


class StorageFailed(PermanentError):
    """The object store refused the audio for good (access denied, no such bucket, no keys)."""

    code = "STORAGE_FAILED"


class WebhookGone(PermanentError):
    code = "WEBHOOK_GONE"


class WebhookRejected(PermanentError):
    """The receiver turned this delivery down in a way repeating it cannot change (a redirect,
    which is never followed, or a 4xx such as 400, 401, 403, 404, 413, 422)."""

    code = "WEBHOOK_REJECTED"


class UpstreamUnavailable(TransientError):
    code = "UPSTREAM_ERROR"


class RateLimited(TransientError):
    """NanoGPT answered 429: its per-second limit, or a per-key daily limit, which no short
    wait clears. The message carries NanoGPT's own words, so the outcome says which limit."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def past_deadline(self) -> TTSError:
        """The outcome when the wait this 429 asks for would pass the job's deadline."""
        return PermanentError(
            f"NanoGPT's rate limit would not clear before the job's deadline: {self.message}",
            code=self.code,
        )


class InvalidResponse(TransientError):
    code = "INVALID_RESPONSE"


class DownloadInterrupted(TransientError):
    code = "DOWNLOAD_FAILED"


class StorageUnavailable(TransientError):
    """The object store answered 5xx, throttled us, or could not be reached in time."""

    code = "STORAGE_FAILED"


class WebhookRefused(TransientError):
    code = "WEBHOOK_FAILED"


#: Every code a job outcome can carry, for the README and for validation in tests.
OUTCOME_CODES = frozenset(
    {
        "CONTENT_POLICY_VIOLATION",
        "UPSTREAM_ERROR",
        "RATE_LIMITED",
        "AUTH_FAILED",
        "INSUFFICIENT_BALANCE",
        "NOT_FOUND",
        "INVALID_INPUT",
        "INVALID_RESPONSE",
        "TIMEOUT",
        "UNSAFE_URL",
        "AUDIO_TOO_LARGE",
        "NOT_AUDIO",
        "DOWNLOAD_FAILED",
        "WORKER_LOST",
        "STORAGE_FAILED",
        "SUBMIT_UNCONFIRMED",
        "CANCELLED",
    }
)


class DownloadFailed(PermanentError):
    """The audio host refused the file for good (4xx) or kept failing past the retries."""

    code = "DOWNLOAD_FAILED"
