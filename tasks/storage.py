"""Audio onto disk: streamed into a temporary file, checked, then renamed into place.

Nothing is left behind on refusal, and the final name is derived from the job id, so a
redelivered download rewrites the same file with the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tasks import errors
from tasks.http_errors import mapped
from tasks.safe_http import SafeHttp

# Large enough to keep syscalls few, small enough that the byte cap is checked often.
CHUNK_BYTES = 64 * 1024
EXTENSIONS = {
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "audio/mp4": ".m4a",
    "audio/webm": ".weba",
    "audio/pcm": ".pcm",
}


@dataclass(frozen=True)
class StoredAudio:
    """Where the audio landed and what it is: the webhook's ``audio`` object."""

    path: str
    content_type: str
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "content_type": self.content_type,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


def file_name(job_id: str, content_type: str) -> str:
    """A name that no caller-supplied id can turn into a path: a hash plus a known extension."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:32]
    return digest + EXTENSIONS.get(content_type, ".audio")


def audio_type(content_type: str | None) -> str:
    """The media type without parameters; raises :class:`errors.NotAudio` unless ``audio/*``."""
    media = (content_type or "").split(";")[0].strip().lower()
    if not media.startswith("audio/"):
        raise errors.NotAudio(f"expected audio/*, got {media or 'no content type'}")
    return media


def store_chunks(
    chunks: Iterable[bytes],
    *,
    dest_dir: Path,
    name: str,
    content_type: str,
    max_bytes: int,
    deadline_monotonic: float,
) -> StoredAudio:
    """Write ``chunks`` to ``dest_dir/name`` atomically, enforcing the byte cap and deadline."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".part-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise errors.AudioTooLarge(f"audio is larger than {max_bytes} bytes")
                if time.monotonic() > deadline_monotonic:
                    raise errors.DownloadInterrupted("download exceeded its wall-clock limit")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise errors.DownloadInterrupted("audio body was empty")
        final = dest_dir / name
        os.replace(tmp_name, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return StoredAudio(str(final), content_type, size, digest.hexdigest())


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """Whatever bytes have arrived, as soon as they arrive.

    ``iter_content`` waits until a whole chunk is full, so a host that drips a byte a second
    would hold the slot past the wall-clock limit (checked between chunks). ``read1`` returns
    after one read of the socket, so the limit is checked at least once per read timeout.
    """
    while True:
        chunk = response.raw.read1(CHUNK_BYTES, decode_content=True)
        if not chunk:
            return
        yield chunk


def store_response(
    response: requests.Response,
    *,
    job_id: str,
    dest_dir: Path,
    max_bytes: int,
    timeout_s: float,
) -> StoredAudio:
    """Store a streaming audio response (a download, or a submit that answered with bytes)."""
    with response:
        content_type = audio_type(response.headers.get("Content-Type"))
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise errors.AudioTooLarge(f"audio declares {declared} bytes, over {max_bytes}")
        with mapped("download", transient=errors.DownloadInterrupted):
            return store_chunks(
                _chunks(response),
                dest_dir=dest_dir,
                name=file_name(job_id, content_type),
                content_type=content_type,
                max_bytes=max_bytes,
                deadline_monotonic=time.monotonic() + timeout_s,
            )


def download(
    http: SafeHttp,
    url: str,
    *,
    job_id: str,
    dest_dir: Path,
    max_bytes: int,
    timeout_s: float,
) -> StoredAudio:
    """GET ``url`` through the SSRF-safe session and store it; raises project errors only."""
    with mapped("download", transient=errors.DownloadInterrupted):
        # identity: a compressed body would let a tiny download expand past the byte cap.
        response = http.request("GET", url, stream=True, headers={"Accept-Encoding": "identity"})
    if response.status_code >= 400:
        response.close()
        message = f"audio host answered HTTP {response.status_code}"
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise errors.DownloadInterrupted(message)
        raise errors.DownloadFailed(message)
    if response.status_code != 200:
        response.close()
        raise errors.DownloadFailed(f"audio host answered HTTP {response.status_code}")
    return store_response(
        response, job_id=job_id, dest_dir=dest_dir, max_bytes=max_bytes, timeout_s=timeout_s
    )
