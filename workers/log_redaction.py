"""A logging filter that blanks out secrets wherever they would appear in a log line.

Our code never logs the API key, the webhook secret, the AWS keys or a broker password, but a
library might (a request dump, an exception that quotes a header, kombu printing the broker URL
it failed to reach). The filter is the last line of defence.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterable, Iterator

from tasks.config.settings import Settings

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


def secrets_of(s: Settings) -> list[str]:
    """Every secret the settings hold: the API key, the webhook secret (and the key inside
    its ``whsec_``), the AWS access key id, secret key and session token, and the password of
    every broker and Redis URL (``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``,
    ``TTS_REDIS_URL``), as written and percent-decoded."""
    found = [
        v.get_secret_value()
        for v in (
            s.api_key,
            s.webhook_secret,
            s.aws_access_key_id,
            s.aws_secret_access_key,
            s.aws_session_token,
        )
        if v is not None
    ]
    if s.webhook_secret is not None:
        found.append(s.webhook_secret.get_secret_value().removeprefix("whsec_"))
    for url in (s.broker_url, s.result_backend, s.redis_url):
        found.extend(_url_passwords(url or ""))
    return list(dict.fromkeys(found))


def _url_passwords(url: str) -> Iterator[str]:
    # Several URLs may share one setting (kombu's failover "url1;url2").
    for one in url.replace(",", ";").split(";"):
        try:
            parts = urllib.parse.urlsplit(one.strip())
            raw = parts.netloc.rpartition("@")[0].partition(":")[2] if "@" in parts.netloc else ""
            query = urllib.parse.parse_qs(parts.query)
        except ValueError:
            continue
        # redis-py also takes ?password=...
        for password in (raw, *query.get("password", [])):
            if password:
                yield password
                yield urllib.parse.unquote(password)
