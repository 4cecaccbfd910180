"""Where audio goes: the store interface, and the local-directory store.

A process picks one store at start (:func:`tasks.adapters.runtime.audio_store`, from
``TTS_STORAGE_URL``): :class:`LocalStore` writes under a directory,
:class:`tasks.audio.s3_store.S3Store` uploads to a bucket. Both take the body as an iterable of
chunks and give the same guarantees: the byte cap and wall clock enforced while streaming
(:class:`tasks.audio.storage.Meter`), the sha256 computed on the way, nothing left behind on
refusal, and a location derived from the job id alone, so a redelivered download writes the same
file or object again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from tasks import errors
from tasks.audio.storage import StoredAudio, file_name, store_chunks


class AudioStore(Protocol):
    """Saves one job's audio and says where a caller can read it."""

    def save(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        content_type: str,
        max_bytes: int,
        deadline_monotonic: float,
    ) -> StoredAudio:
        """Store ``chunks`` as the audio of ``job_id``; raises project errors only."""
        ...

    def fresh(self, audio: dict[str, Any]) -> dict[str, Any]:
        """A recorded ``audio`` object with a ``url`` good from now (for each webhook attempt)."""
        ...

    def delete(self, audio: StoredAudio) -> None:
        """Remove audio this store saved (gone already is fine); raises project errors only."""
        ...


class LocalStore:
    """Files under one directory, named by :func:`tasks.audio.storage.file_name`."""

    def __init__(self, dest_dir: Path) -> None:
        self.dest_dir = dest_dir

    def save(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        content_type: str,
        max_bytes: int,
        deadline_monotonic: float,
    ) -> StoredAudio:
        """Write the file atomically (temporary file, then rename).

        A disk that refuses (full, read-only, a directory missing or replaced, no permission)
        is :class:`errors.StorageUnavailable`: retried within bounds, then ``STORAGE_FAILED``.
        """
        try:
            return store_chunks(
                chunks,
                dest_dir=self.dest_dir,
                name=file_name(job_id, content_type),
                content_type=content_type,
                max_bytes=max_bytes,
                deadline_monotonic=deadline_monotonic,
            )
        except OSError as exc:
            raise errors.StorageUnavailable(
                f"local audio store: {exc.strerror or type(exc).__name__}"
            ) from None

    def fresh(self, audio: dict[str, Any]) -> dict[str, Any]:
        """A ``file://`` URL does not expire: the recorded object as it is."""
        return audio

    def delete(self, audio: StoredAudio) -> None:
        """Remove the file (only under this store's directory); a missing one is fine."""
        if audio.path is None or Path(audio.path).parent != self.dest_dir:
            return  # not one of ours: never remove a file this store did not name
        try:
            Path(audio.path).unlink(missing_ok=True)
        except OSError as exc:
            raise errors.StorageUnavailable(
                f"local audio store: {exc.strerror or type(exc).__name__}"
            ) from None
