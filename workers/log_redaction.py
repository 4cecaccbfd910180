"""A logging filter that blanks out secrets wherever they would appear in a log line.

Our code never logs the API key or the webhook secret, but a library might (a request dump, an
exception that quotes a header). The filter is the last line of defence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "[redacted]"
# Shorter values are not secrets worth masking and would blank out ordinary words.
MIN_SECRET_CHARS = 8


class RedactSecrets(logging.Filter):
    """Replace every occurrence of the given secrets in the formatted message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= MIN_SECRET_CHARS]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            if self._leaks(trace):
                # The traceback quotes a secret: fold a redacted copy into the message.
                message = f"{message}\n{trace}"
                record.exc_info, record.exc_text = None, None
        if self._leaks(message):
            for secret in self._secrets:
                message = message.replace(secret, MASK)
            record.msg, record.args = message, None
        return True

    def _leaks(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)


def install(secrets: Iterable[str], loggers: Iterable[logging.Logger] = ()) -> RedactSecrets:
    """Attach the filter to every handler of the root logger and of ``loggers``."""
    redactor = RedactSecrets(secrets)
    for logger in (logging.getLogger(), *loggers):
        for handler in logger.handlers:
            handler.addFilter(redactor)
    return redactor
