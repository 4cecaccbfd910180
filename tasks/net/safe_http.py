"""Outbound HTTP to URLs that callers or upstream chose (audio files, webhooks), made SSRF-safe.

A URL is allowed when its host (or ``host:port``) is trusted, or when it is ``https`` and every hop
resolves to a public address. Each client has its own trusted list: audio downloads use
``TTS_TRUSTED_HOSTS``, webhooks ``TTS_TRUSTED_WEBHOOK_HOSTS`` (tasks/adapters/runtime.py). The
address check is ``requests-hardened``'s: it resolves the host once, refuses private, loopback,
link-local and reserved ranges, and connects to the address it checked, so a DNS answer that changes
between check and connect (rebinding) cannot slip through. :func:`refused_address` then checks that
same address again for what requests-hardened lets pass: IPv4-compatible IPv6 (``::a9fe:a9fe`` is
169.254.169.254 written in the deprecated ``::/96`` form) and anything else not globally routable.
Redirects are followed here, one hop at a time, each hop checked like the first URL.

Every answer comes back streamed and uncompressed (``Accept-Encoding: identity``): nothing is read
until the caller reads it, and the caller decides how much (a download up to its byte cap, a
webhook reply not at all). Without that, ``requests`` would read and inflate a whole body first,
and a 200 KB gzip reply can inflate to 200 MB.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any

import requests
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter

from tasks.config.settings import host_key
from tasks.errors import UnsafeUrl

# Enough for a CDN's signed-URL hop or two; more is a loop or a trick.
MAX_REDIRECTS = 5
# The port a URL without one reaches, for matching ``host:port`` trusted entries.
DEFAULT_PORTS = {"http": 80, "https": 443}


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def refused_address(ip: Address) -> bool:
    """Whether an address the guarded session resolved to must not be connected to.

    requests-hardened refuses what Python calls private, plus a list of its own; it misses
    IPv4-compatible IPv6 (``::/96``, deprecated by RFC 4291): Python calls ``::a9fe:a9fe``
    neither private nor loopback, though it is 169.254.169.254. Every address Python does not
    call global, or calls reserved (all of ``::/8``, so all of ``::/96``) or multicast, is
    refused here; an IPv4-mapped one (``::ffff:0:0/96``) is judged by the IPv4 address inside.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_reserved or ip.is_multicast


class _StrictFilter(IPFilterAdapter):  # type: ignore[misc]  # the package has no stubs
    """requests-hardened's adapter, then :func:`refused_address` on the address it picked (the
    one the connection goes to: nothing is resolved twice)."""

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        ip = ipaddress.ip_address(str(host_params["host"]).strip("[]"))
        if refused_address(ip):
            raise InvalidIPAddress(ip)
        return host_params, pool_kwargs


class SafeHttp:
    """Two pooled sessions: one guarded by the address filter, one for trusted hosts."""

    def __init__(
        self, *, trusted_hosts: frozenset[str], timeout_s: tuple[float, float], user_agent: str
    ) -> None:
        """``trusted_hosts``: :func:`tasks.config.settings.host_key` entries (``host`` = any
        port)."""
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
        for scheme in ("http://", "https://"):
            self._guarded.mount(
                scheme, _StrictFilter(is_https_proto=scheme == "https://", allow_loopback=False)
            )
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

        ``requests`` exceptions pass through; callers map them with :mod:`tasks.net.http_errors`.
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
