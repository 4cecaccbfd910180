"""Audio streamed into a store: fetched, checked, counted and hashed on the way.

The fetching half (SSRF-safe GET, ``Accept-Encoding: identity``, byte cap, wall clock) is shared
by every :class:`tasks.audio.audio_store.AudioStore`; :func:`store_chunks` is the local-disk half: a
temporary file, renamed into place. Nothing is left behind on refusal, and the final name is
derived from the job id, so a redelivered download rewrites the same file with the same bytes.
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
from typing import TYPE_CHECKING

import requests

from tasks import errors
from tasks.net.http_errors import mapped
from tasks.net.safe_http import SafeHttp

if TYPE_CHECKING:
    from tasks.audio.audio_store import AudioStore

# Large enough to keep syscalls few, small enough that the byte cap is checked often.
CHUNK_BYTES = 64 * 1024
# Temporary files being written; the clean-up task removes ones a killed worker left behind.
PART_PREFIX = ".part-"
PART_SUFFIX = ".tmp"
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
    """Where the audio landed and what it is: the webhook's ``audio`` object.

    A local file has ``path``; an object in S3 has ``bucket`` and ``key``. Both have ``url``,
    where a caller can read the bytes (``file://`` or a presigned ``https://`` GET).
    """

    content_type: str
    bytes: int
    sha256: str
    url: str
    path: str | None = None
    bucket: str | None = None
    key: str | None = None

    def as_dict(self) -> dict[str, object]:
        located = {"path": self.path, "bucket": self.bucket, "key": self.key}
        return {
            **{name: value for name, value in located.items() if value is not None},
            "url": self.url,
            "content_type": self.content_type,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


class Meter:
    """Pass chunks through while counting and hashing them, enforcing the byte cap and deadline.

    Every store reads its body through one of these, so the local file and the S3 object get the
    same guarantees: a refusal is raised before the chunk that breaks the rule is handed on.
    """

    def __init__(
        self, chunks: Iterable[bytes], *, max_bytes: int, deadline_monotonic: float
    ) -> None:
        self._chunks = chunks
        self._max_bytes = max_bytes
        self._deadline_monotonic = deadline_monotonic
        self._digest = hashlib.sha256()
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.bytes += len(chunk)
            if self.bytes > self._max_bytes:
                raise errors.AudioTooLarge(f"audio is larger than {self._max_bytes} bytes")
            if time.monotonic() > self._deadline_monotonic:
                raise errors.DownloadInterrupted("download exceeded its wall-clock limit")
            self._digest.update(chunk)
            yield chunk
        if self.bytes == 0:
            raise errors.DownloadInterrupted("audio body was empty")

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


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
    meter = Meter(chunks, max_bytes=max_bytes, deadline_monotonic=deadline_monotonic)
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=PART_PREFIX, suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in meter:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        final = dest_dir / name
        os.replace(tmp_name, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return StoredAudio(
        content_type=content_type,
        bytes=meter.bytes,
        sha256=meter.sha256,
        url=final.as_uri(),
        path=str(final),
    )


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


def read_all(response: requests.Response, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body of a streaming response, refused past ``max_bytes`` or ``timeout_s``."""
    meter = Meter(
        _chunks(response), max_bytes=max_bytes, deadline_monotonic=time.monotonic() + timeout_s
    )
    return b"".join(meter)


def store_bytes(
    audio: bytes,
    *,
    store: AudioStore,
    job_id: str,
    content_type: str,
    max_bytes: int,
    timeout_s: float,
) -> StoredAudio:
    """Store audio held in memory (a spooled submit answer) like a download."""
    return store.save(
        iter((audio,)),
        job_id=job_id,
        content_type=audio_type(content_type),
        max_bytes=max_bytes,
        deadline_monotonic=time.monotonic() + timeout_s,
    )


def store_response(
    response: requests.Response,
    *,
    store: AudioStore,
    job_id: str,
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
            return store.save(
                _chunks(response),
                job_id=job_id,
                content_type=content_type,
                max_bytes=max_bytes,
                deadline_monotonic=time.monotonic() + timeout_s,
            )


def download(
    http: SafeHttp,
    url: str,
    *,
    store: AudioStore,
    job_id: str,
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
        response, store=store, job_id=job_id, max_bytes=max_bytes, timeout_s=timeout_s
    )
