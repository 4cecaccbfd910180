"""SSRF refusals, proved only with loopback addresses outside the trusted list (127.0.0.2)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
from pydantic import ValidationError

from tasks import errors
from tasks.adapters import runtime
from tasks.audio import storage
from tasks.audio.audio_store import LocalStore
from tasks.config.settings import Settings, get_settings, parse_hosts
from tasks.net.safe_http import SafeHttp, refused_address
from tasks.webhooks import delivery as webhooks
from workers.sample_audio import make_wav

WAV = make_wav()


class Handler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        Handler.hits.append(self.path)
        if self.path.startswith("/redirect-to/"):
            self.send_response(302)
            target = urllib.parse.unquote(self.path.removeprefix("/redirect-to/"))
            self.send_header("Location", target.replace("|", "/"))
            self.end_headers()
            return
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(WAV)))
        self.end_headers()
        self.wfile.write(WAV)

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def http(trusted: frozenset[str] = frozenset({"127.0.0.1"})) -> SafeHttp:
    return SafeHttp(trusted_hosts=trusted, timeout_s=(1.0, 2.0), user_agent="test")


def fetch(client: SafeHttp, url: str, dest: Path) -> storage.StoredAudio:
    return storage.download(
        client, url, store=LocalStore(dest), job_id="j", max_bytes=10**6, timeout_s=5
    )


def test_trusted_host_is_fetched(server: str, tmp_path: Path) -> None:
    stored = fetch(http(), f"{server}/a.wav", tmp_path)
    assert Path(stored.path).read_bytes() == WAV


def test_untrusted_loopback_refused_before_connecting(server: str, tmp_path: Path) -> None:
    port = server.rsplit(":", 1)[1]
    before = len(Handler.hits)
    with pytest.raises(errors.UnsafeUrl):
        fetch(http(), f"https://127.0.0.2:{port}/a.wav", tmp_path)
    assert len(Handler.hits) == before
    assert list(tmp_path.iterdir()) == []


def test_hostname_resolving_to_loopback_refused(server: str, tmp_path: Path) -> None:
    port = server.rsplit(":", 1)[1]
    with pytest.raises(errors.UnsafeUrl):
        fetch(http(), f"https://localhost:{port}/a.wav", tmp_path)


def test_plain_http_only_for_trusted(tmp_path: Path) -> None:
    with pytest.raises(errors.UnsafeUrl, match="plain http"):
        fetch(http(), "http://127.0.0.2:9/a.wav", tmp_path)


def test_same_server_refused_when_not_trusted(server: str, tmp_path: Path) -> None:
    with pytest.raises(errors.UnsafeUrl):
        fetch(http(frozenset()), f"{server}/a.wav", tmp_path)


def test_redirect_hop_is_checked(server: str, tmp_path: Path) -> None:
    port = server.rsplit(":", 1)[1]
    target = f"https:||127.0.0.2:{port}|a.wav"
    with pytest.raises(errors.UnsafeUrl):
        fetch(http(), f"{server}/redirect-to/{target}", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_redirect_to_trusted_is_followed(server: str, tmp_path: Path) -> None:
    stored = fetch(http(), f"{server}/redirect-to/|b.wav", tmp_path)
    assert stored.bytes == len(WAV)


def test_redirect_loop_is_cut(server: str, tmp_path: Path) -> None:
    with pytest.raises(errors.UnsafeUrl, match="redirects"):
        fetch(http(), f"{server}/loop", tmp_path)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x/", "https://user:pw@host/x"])
def test_odd_urls_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(errors.UnsafeUrl):
        fetch(http(), url, tmp_path)


def test_trusted_entry_with_a_port_trusts_that_port_only(server: str, tmp_path: Path) -> None:
    port = int(server.rsplit(":", 1)[1])
    stored = fetch(http(frozenset({f"127.0.0.1:{port}"})), f"{server}/a.wav", tmp_path)
    assert stored.bytes == len(WAV)
    with pytest.raises(errors.UnsafeUrl, match="plain http"):
        fetch(http(frozenset({f"127.0.0.1:{port + 1}"})), f"{server}/a.wav", tmp_path)


def test_trusted_entry_without_a_port_trusts_every_port() -> None:
    client = http(frozenset({"127.0.0.1"}))
    for url in ("http://127.0.0.1/x", "http://127.0.0.1:1/x", "https://127.0.0.1:65535/x"):
        client.check(url)


def test_default_port_matches_a_trusted_entry_with_a_port() -> None:
    client = http(parse_hosts("hooks.internal:80, [fd00::1]:8443", name="X"))
    client.check("http://hooks.internal/x")
    client.check("http://HOOKS.internal:80/x")
    client.check("https://[fd00::1]:8443/x")
    for url in ("http://hooks.internal:81/x", "http://[fd00::1]/x", "http://[fd00::1]:443/x"):
        with pytest.raises(errors.UnsafeUrl):
            client.check(url)


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        ("", set()),
        ("127.0.0.1", {"127.0.0.1"}),
        (" A.example:8080 ,b.example", {"a.example:8080", "b.example"}),
        ("::1, [::1]:80", {"::1", "[::1]:80"}),
    ],
)
def test_trusted_hosts_parsed(value: str, entries: set[str]) -> None:
    assert parse_hosts(value, name="X") == entries


@pytest.mark.parametrize("value", ["a:b", "a:0", "a:65536", "u@a", "a/x", ":80"])
def test_bad_trusted_host_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError, match="TTS_TRUSTED_WEBHOOK_HOSTS"):
        Settings(TTS_TRUSTED_WEBHOOK_HOSTS=value)
    with pytest.raises(ValidationError, match="TTS_TRUSTED_HOSTS"):
        Settings(TTS_TRUSTED_HOSTS=value)


@pytest.fixture
def split_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The runtime built from settings that trust one audio host and one receiver."""
    monkeypatch.setenv("TTS_TRUSTED_HOSTS", "audio.internal")
    monkeypatch.setenv("TTS_TRUSTED_WEBHOOK_HOSTS", "hooks.internal:8080")
    monkeypatch.delenv("TTS_WEBHOOK_SECRET", raising=False)
    get_settings.cache_clear()
    runtime.reset()
    yield
    get_settings.cache_clear()
    runtime.reset()


@pytest.mark.usefixtures("split_runtime")
def test_audio_and_webhook_hosts_are_trusted_apart() -> None:
    runtime.safe_http().check("http://audio.internal/a.wav")
    runtime.webhook_http().check("http://hooks.internal:8080/hook")
    with pytest.raises(errors.UnsafeUrl):
        runtime.safe_http().check("http://hooks.internal:8080/a.wav")
    with pytest.raises(errors.UnsafeUrl):
        runtime.webhook_http().check("http://audio.internal/hook")
    # The webhook sender is the one with the receivers' list (refused before any connection).
    with pytest.raises(errors.UnsafeUrl, match="plain http"):
        runtime._webhook("http://audio.internal/hook", {}, msg_id="msg_1")


@pytest.mark.parametrize(
    "address",
    [
        "::a9fe:a9fe",  # 169.254.169.254, IPv4-compatible form
        "::7f00:1",  # 127.0.0.1, IPv4-compatible form
        "::a00:1",  # 10.0.0.1
        "::8.8.8.8",  # the whole of ::/96, even around a public address
        "::",
        "::1",
        "::ffff:a9fe:a9fe",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "169.254.169.254",
        "127.0.0.2",
        "10.0.0.1",
        "100.64.0.1",
        "0.0.0.0",
        "240.0.0.1",
        "224.0.0.1",
    ],
)
def test_address_refused(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_address_allowed(address: str) -> None:
    assert not refused_address(ipaddress.ip_address(address))


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make any attempt to open a socket through urllib3 fail loudly (and be recorded)."""
    attempts: list[object] = []

    def refuse(address: object, *_: object, **__: object) -> None:
        attempts.append(address)
        raise AssertionError(f"tried to connect to {address}")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize("host", ["[::a9fe:a9fe]", "[::7f00:1]", "[::ffff:a9fe:a9fe]"])
def test_ipv4_compatible_url_refused_before_connecting(
    host: str, no_connections: list[object]
) -> None:
    with pytest.raises(errors.UnsafeUrl):
        webhooks.deliver(http(), f"https://{host}:9/hook", {}, msg_id="msg_1", secret=None)
    assert no_connections == []


def test_hostname_resolving_to_ipv4_compatible_refused(
    monkeypatch: pytest.MonkeyPatch, no_connections: list[object]
) -> None:
    def resolve(host: str, port: int, *_: object, **__: object) -> list[Any]:
        assert host == "metadata.example"
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::a9fe:a9fe", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(errors.UnsafeUrl):
        webhooks.deliver(http(), "https://metadata.example/hook", {}, msg_id="msg_1", secret=None)
    assert no_connections == []
