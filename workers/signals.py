"""Worker life-cycle hooks: refuse to start misconfigured, reset per-process state after fork,
and report received tasks to Flower without the secrets a caller may have put in them.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from tasks import redact, runtime
from workers import log_redaction, reconciler
from workers.settings import get_settings

log = logging.getLogger("workers")


class ConfigurationError(SystemExit):
    """Stops the worker before it consumes anything, with a message for the operator."""


def check_worker_settings(**_: Any) -> None:
    """A worker without an API key would fail every job: refuse to start instead."""
    s = get_settings()
    if s.api_key is None:
        message = "NANOGPT_API_KEY is not set: the worker cannot call NanoGPT and will not start."
        log.critical(message)
        raise ConfigurationError(f"tts-worker: {message}")
    if s.webhook_secret is None:
        log.warning("TTS_WEBHOOK_SECRET is not set: webhooks will be sent unsigned.")


def redact_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """Mask the API key and webhook secret in every line the worker logs."""
    s = get_settings()
    secrets = [v.get_secret_value() for v in (s.api_key, s.webhook_secret) if v is not None]
    if s.webhook_secret is not None:
        # The key inside whsec_... is what a careless dump would print.
        secrets.append(s.webhook_secret.get_secret_value().removeprefix("whsec_"))
    log_redaction.install(secrets, [logger] if logger else [])


def reset_process_state(**_: Any) -> None:
    # Sockets opened before the fork must not be shared by pool processes.
    runtime.reset()


def redact_received(request: Any = None, **_: Any) -> None:
    """Rewrite the argument text that the worker's ``task-received`` event carries.

    An app that sends by name ships Celery's default ``argsrepr``/``kwargsrepr``: up to 1 KiB of
    text and the whole ``notify_url``, query token included. The worker forwards that text in
    its ``task-received`` event, which Flower stores and shows; this handler runs just before
    the event is sent (celery/worker/strategy.py) and puts our redacted text in its place.
    Celery offers no public setter, hence the private attributes.
    """
    if request is None:
        return
    request._argsrepr = redact.args_repr(request.args or ())
    request._kwargsrepr = redact.kwargs_repr(request.kwargs or {})


def connect() -> None:
    signals.worker_init.connect(check_worker_settings, weak=False)
    signals.worker_process_init.connect(reset_process_state, weak=False)
    signals.after_setup_logger.connect(redact_logs, weak=False)
    signals.after_setup_task_logger.connect(redact_logs, weak=False)
    # The reconciler runs in the worker's main process, next to the consumer.
    signals.worker_ready.connect(reconciler.start, weak=False)
    signals.worker_shutdown.connect(reconciler.stop, weak=False)
    signals.task_received.connect(redact_received, weak=False)
