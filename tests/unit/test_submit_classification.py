"""How the NanoGPT client classifies a submit's failures, against a real HTTP server on loopback.

A submit is paid and takes no idempotency key, so the class of its error decides whether the
POST may be sent again: only a :class:`errors.TransientError` is (the POST provably was not
accepted); :class:`errors.SubmitUnconfirmed` when it may have been; and once the server answered
2xx, any failure is permanent. No mocks: each test answers through a socket, so what ``requests``
and ``urllib3`` really raise is what gets classified.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tasks import errors
from tasks.audio.storage import CHUNK_BYTES
from tasks.nanogpt import parsing
from tasks.nanogpt.client import InlineAudio, NanoGPTClient
from tasks.nanogpt.validation import SubmitRequest, submit_request
from tests.support.ctx import TEST_KEY

REQUEST = submit_request("Hello there", "Kokoro-82m", voice="af_bella")
# Small enough that a test's "too large" body is quick to send.
MAX_AUDIO_BYTES = 4096
# Every answer the server holds back waits at most this long (the test's own safety net).
HANG_S = 10.0
TICKET = b'{"runId": "run-1", "status": "pending", "model": "Kokoro-82m", "cost": 0.05}'


@dataclass
class Answer:
    """What the server does with the next POST."""

    status: int = 202
    body: bytes = TICKET
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    # The Content-Length to declare: the body's own by default; None sends none (the body then
    # ends when the connection closes).
    declared: int | str | None = "auto"
    # Read the request, then: "hang" (say nothing until the test ends), "close" (hang up).
    then: str | None = None


@dataclass
class FakeNanoGPT:
    """``POST /api/tts`` on 127.0.0.1: records what arrived and answers with ``answer``."""

    url: str
    answer: Answer = field(default_factory=Answer)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeNanoGPT


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        fake.received.append((self.path, body))
        answer = fake.answer
        if answer.then == "hang":
            fake.release.wait(HANG_S)
            return
        if answer.then == "close":
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        declared = len(answer.body) if answer.declared == "auto" else answer.declared
        if declared is not None:
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[FakeNanoGPT]:
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    server.fake = FakeNanoGPT(url=f"http://{host!s}:{port}/api")
    # A short poll interval: shutdown() waits for it, once per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server.fake
    server.fake.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def client(
    base_url: str, *, read_timeout_s: float = 1.0, session: requests.Session | None = None
) -> NanoGPTClient:
    """Built as tasks/adapters/runtime.py ``nanogpt()`` builds it."""
    return NanoGPTClient(
        session or requests.Session(),
        base_url=base_url,
        api_key=TEST_KEY,
        timeout_s=(1, read_timeout_s),
        max_audio_bytes=MAX_AUDIO_BYTES,
        audio_timeout_s=5.0,
    )


def submit(upstream: FakeNanoGPT, answer: Answer, request: SubmitRequest = REQUEST) -> object:
    upstream.answer = answer
    return client(upstream.url).submit(request)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- provably not accepted: may be sent again ----------------------------------------------


def test_connection_refused_is_transient() -> None:
    with pytest.raises(errors.UpstreamUnavailable) as caught:
        client(f"http://127.0.0.1:{closed_port()}/api").submit(REQUEST)
    assert isinstance(caught.value, errors.TransientError)


def test_429_is_transient_and_keeps_retry_after(upstream: FakeNanoGPT) -> None:
    answer = Answer(429, b'{"error": "Rate limit exceeded"}', {"Retry-After": "7"})
    with pytest.raises(errors.RateLimited) as caught:
        submit(upstream, answer)
    assert isinstance(caught.value, errors.TransientError)
    assert caught.value.retry_after_s == 7.0
    assert len(upstream.received) == 1


@pytest.mark.parametrize("status", [503, 408, 425])
def test_not_accepted_statuses_are_transient(upstream: FakeNanoGPT, status: int) -> None:
    with pytest.raises(errors.TransientError) as caught:
        submit(upstream, Answer(status, b'{"error": "try later"}'))
    assert not isinstance(caught.value, errors.PermanentError)
    assert caught.value.code == "UPSTREAM_ERROR"


# --- may have been accepted: never sent again -----------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"error": "Internal server error"}'),
        (502, b"<html><head><title>502 Bad Gateway</title></head></html>"),
        (504, b"<html>Gateway Timeout</html>"),
    ],
)
def test_server_errors_are_unconfirmed(upstream: FakeNanoGPT, status: int, body: bytes) -> None:
    with pytest.raises(errors.SubmitUnconfirmed) as caught:
        submit(upstream, Answer(status, body, {"Content-Type": "text/html"}))
    assert not isinstance(caught.value, errors.TransientError)
    assert caught.value.code == "SUBMIT_UNCONFIRMED"


def test_read_timeout_after_sending_is_unconfirmed(upstream: FakeNanoGPT) -> None:
    upstream.answer = Answer(then="hang")
    started = time.monotonic()
    with pytest.raises(errors.SubmitUnconfirmed):
        client(upstream.url, read_timeout_s=0.5).submit(REQUEST)
    assert time.monotonic() - started < HANG_S / 2  # the read timeout ended it, not the server
    assert len(upstream.received) == 1  # the request did reach the server
    assert b"Hello there" in upstream.received[0][1]


def test_connection_closed_without_an_answer_is_unconfirmed(upstream: FakeNanoGPT) -> None:
    with pytest.raises(errors.SubmitUnconfirmed):
        submit(upstream, Answer(then="close"))
    assert len(upstream.received) == 1


# --- answered 2xx: accepted (and billed) ----------------------------------------------------


def test_202_ticket(upstream: FakeNanoGPT) -> None:
    ticket = submit(upstream, Answer())
    assert ticket == parsing.Ticket("run-1", "Kokoro-82m", 0.05, None)
    path, body = upstream.received[0]
    assert path == "/api/tts"
    assert b'"voice": "af_bella"' in body


# NULs, every byte value, and more than one CHUNK_BYTES read: the whole body, byte for byte.
AUDIO = b"RIFF\x00\x00\x00\x00WAVE" + bytes(range(256)) * 8


@pytest.mark.parametrize("declared", ["auto", None], ids=["content-length", "until-close"])
def test_200_audio_is_read_whole(upstream: FakeNanoGPT, declared: int | str | None) -> None:
    answer = Answer(200, AUDIO, {"Content-Type": "audio/wav; rate=24000"}, declared=declared)
    result = submit(upstream, answer)
    assert result == InlineAudio(AUDIO, "audio/wav")


def test_200_audio_spanning_many_reads_is_read_whole(upstream: FakeNanoGPT) -> None:
    audio = os.urandom(3 * CHUNK_BYTES + 17)
    upstream.answer = Answer(200, audio, {"Content-Type": "audio/mpeg"}, declared=None)
    wide = NanoGPTClient(
        requests.Session(),
        base_url=upstream.url,
        api_key=TEST_KEY,
        timeout_s=(1, 1),
        max_audio_bytes=len(audio),
        audio_timeout_s=5.0,
    )
    result = wide.submit(REQUEST)
    assert isinstance(result, InlineAudio)
    assert result.audio == audio


@pytest.mark.parametrize("declared", ["auto", None], ids=["declared", "undeclared"])
def test_200_audio_over_the_cap_is_too_large(
    upstream: FakeNanoGPT, declared: int | str | None
) -> None:
    body = b"\x00" * (MAX_AUDIO_BYTES + 1)
    with pytest.raises(errors.AudioTooLarge) as caught:
        submit(upstream, Answer(200, body, {"Content-Type": "audio/wav"}, declared=declared))
    assert isinstance(caught.value, errors.PermanentError)


def test_200_audio_exactly_at_the_cap_is_kept(upstream: FakeNanoGPT) -> None:
    body = b"\x01" * MAX_AUDIO_BYTES
    result = submit(upstream, Answer(200, body, {"Content-Type": "audio/wav"}, declared=None))
    assert isinstance(result, InlineAudio)
    assert len(result.audio) == MAX_AUDIO_BYTES


def test_202_not_json_is_permanent_invalid_response(upstream: FakeNanoGPT) -> None:
    with pytest.raises(errors.PermanentError) as caught:
        submit(upstream, Answer(202, b"<html>queued</html>", {"Content-Type": "text/html"}))
    assert not isinstance(caught.value, errors.TransientError)
    assert caught.value.code == "INVALID_RESPONSE"


def test_200_audio_cut_short_is_permanent(upstream: FakeNanoGPT) -> None:
    """The connection drops mid-audio after a 200: accepted, so never sent again."""
    answer = Answer(200, AUDIO[:100], {"Content-Type": "audio/wav"}, declared=len(AUDIO))
    with pytest.raises(errors.PermanentError) as caught:
        submit(upstream, answer)
    assert caught.value.code == "DOWNLOAD_FAILED"


def test_202_body_cut_short_is_permanent(upstream: FakeNanoGPT) -> None:
    with pytest.raises(errors.PermanentError) as caught:
        submit(upstream, Answer(202, TICKET[:10], declared=len(TICKET)))
    assert not isinstance(caught.value, errors.TransientError)


@pytest.mark.parametrize("status", [201, 204])
def test_other_2xx_is_never_sent_again(upstream: FakeNanoGPT, status: int) -> None:
    with pytest.raises(errors.TTSError) as caught:
        submit(upstream, Answer(status, b"" if status == 204 else TICKET))
    assert not isinstance(caught.value, errors.TransientError)


# --- TLS: an error after the request went out --------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_error_after_the_request_arrived_is_unconfirmed(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        raw, _ = listener.accept()
        with tls.wrap_socket(raw, server_side=True) as conn:
            data = b""
            while b"Hello there" not in data:
                data += conn.recv(65536)
            received.append(data)
            # The request arrived whole; the answer's TLS record is then garbled.
            with socket.socket(fileno=os.dup(conn.fileno())) as plain:
                plain.sendall(b"HTTP/1.1 202 Accepted\r\n\r\n" * 4)
                done.wait(HANG_S)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    session = requests.Session()
    session.verify = str(cert_path)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify: no handshake at all
    try:
        with pytest.raises(errors.TTSError) as caught:
            client(f"https://127.0.0.1:{port}/api", session=session).submit(REQUEST)
    finally:
        done.set()
        thread.join(5)
        listener.close()
    if len(received) != 1:  # not the case under test (e.g. the handshake failed): a real failure
        pytest.fail(f"the request never reached the server: {caught.value!r}")
    assert isinstance(caught.value, errors.SubmitUnconfirmed), repr(caught.value)


# --- redirects: never followed, so the API key never leaves NanoGPT -------------------------------


@pytest.fixture
def elsewhere() -> Iterator[FakeNanoGPT]:
    """A second loopback server a redirect points at: it must never hear from the client."""
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    server.fake = FakeNanoGPT(url=f"http://{host!s}:{port}/steal")
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server.fake
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_an_invalid_response_and_not_followed(
    upstream: FakeNanoGPT, elsewhere: FakeNanoGPT, status: int
) -> None:
    redirect = Answer(status, b"", {"Location": elsewhere.url, "Content-Type": "text/plain"})
    with pytest.raises(errors.PermanentError) as caught:
        submit(upstream, redirect)
    assert caught.value.code == "INVALID_RESPONSE"
    assert len(upstream.received) == 1
    assert elsewhere.received == []  # nothing (and no x-api-key) went where it pointed
