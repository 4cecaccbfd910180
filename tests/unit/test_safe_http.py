"""SSRF refusals, proved only with loopback addresses outside the trusted list (127.0.0.2)."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tasks import errors, storage
from tasks.audio_store import LocalStore
from tasks.safe_http import SafeHttp
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
