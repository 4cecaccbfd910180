"""Outbound HTTP to URLs that callers or upstream chose (audio files, webhooks), made SSRF-safe.

A URL is allowed when its host (or ``host:port``) is trusted, or when it is ``https`` and every hop
resolves to a public address. Each client has its own trusted list: audio downloads use
``TTS_TRUSTED_HOSTS``, webhooks ``TTS_TRUSTED_WEBHOOK_HOSTS`` (tasks/runtime.py). The address check
is ``requests-hardened``'s: it resolves the host once, refuses private, loopback, link-local and
reserved ranges, and connects to the address it checked, so a DNS answer that changes between check
and connect (rebinding) cannot slip through. Redirects are followed here, one hop at a time, each
hop checked like the first URL.

Every answer comes back streamed and uncompressed (``Accept-Encoding: identity``): nothing is read
until the caller reads it, and the caller decides how much (a download up to its byte cap, a
webhook reply not at all). Without that, ``requests`` would read and inflate a whole body first,
and a 200 KB gzip reply can inflate to 200 MB.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import requests
from requests_hardened import Config, HTTPSession

from tasks.errors import UnsafeUrl
from workers.settings import host_key

# Enough for a CDN's signed-URL hop or two; more is a loop or a trick.
MAX_REDIRECTS = 5
# The port a URL without one reaches, for matching ``host:port`` trusted entries.
DEFAULT_PORTS = {"http": 80, "https": 443}


class SafeHttp:
    """Two pooled sessions: one guarded by the address filter, one for trusted hosts."""

    def __init__(
        self, *, trusted_hosts: frozenset[str], timeout_s: tuple[float, float], user_agent: str
    ) -> None:
        """``trusted_hosts``: :func:`workers.settings.host_key` entries (``host`` = any port)."""
        self._trusted_hosts = trusted_hosts
        self._timeout_s = timeout_s

        def session(filtered: bool) -> HTTPSession:
            return HTTPSession(
                Config(
                    ip_filter_enable=filtered,
                    ip_filter_allow_loopback_ips=False,
                    never_redirect=True,
                    default_timeout=timeout_s,
                    user_agent_override=user_agent,
                )
            )

        self._guarded = session(True)
        self._trusted = session(False)

    def _session_for(self, url: str) -> HTTPSession:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise UnsafeUrl("only absolute http(s) URLs are fetched")
        if parts.username or parts.password:
            raise UnsafeUrl("URLs with credentials are not fetched")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise UnsafeUrl("the URL's port is not a number from 1 to 65535") from exc
        if host in self._trusted_hosts or host_key(host, port) in self._trusted_hosts:
            return self._trusted
        if parts.scheme != "https":
            raise UnsafeUrl(f"plain http is allowed only to trusted hosts, not {host}")
        return self._guarded

    def check(self, url: str) -> None:
        """Raise :class:`UnsafeUrl` if ``url`` could never be fetched (scheme, host)."""
        self._session_for(url)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send one request, following GET redirects after checking each hop.

        The answer is streamed (``stream=True``, ``Accept-Encoding: identity``): close it.

        ``requests`` exceptions pass through; callers map them with :mod:`tasks.http_errors`.
        """
        kwargs.setdefault("timeout", self._timeout_s)
        kwargs["stream"] = True
        kwargs["headers"] = {**kwargs.get("headers", {}), "Accept-Encoding": "identity"}
        for _hop in range(MAX_REDIRECTS + 1):
            session = self._session_for(url)
            response: requests.Response = session.request(
                method, url, allow_redirects=False, **kwargs
            )
            if not (response.is_redirect and method == "GET"):
                return response
            location = response.headers["location"]
            response.close()
            url = urllib.parse.urljoin(url, location)
        raise UnsafeUrl(f"more than {MAX_REDIRECTS} redirects")

    def close(self) -> None:
        self._guarded.close()
        self._trusted.close()
