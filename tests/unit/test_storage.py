"""Streaming to disk: byte cap, wall clock, atomic rename, nothing left behind."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks import errors
from tasks.audio import storage
from tasks.audio.audio_store import LocalStore
from tests.support.tmpfs import fill, remount, tmpfs


def store(
    chunks: list[bytes] | Iterator[bytes],
    tmp_path: Path,
    *,
    max_bytes: int = 1000,
    deadline: float | None = None,
) -> storage.StoredAudio:
    return storage.store_chunks(
        chunks,
        dest_dir=tmp_path,
        name="a.wav",
        content_type="audio/wav",
        max_bytes=max_bytes,
        deadline_monotonic=deadline if deadline is not None else time.monotonic() + 60,
    )


def test_stores_with_hash(tmp_path: Path) -> None:
    stored = store([b"abc", b"def"], tmp_path)
    assert Path(stored.path).read_bytes() == b"abcdef"
    assert stored.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert stored.bytes == 6
    assert list(tmp_path.iterdir()) == [tmp_path / "a.wav"]


def test_cap_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(errors.AudioTooLarge):
        store([b"x" * 600, b"x" * 600], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_wall_clock_limit_leaves_nothing(tmp_path: Path) -> None:
    def drip() -> Iterator[bytes]:
        while True:
            yield b"x"
            time.sleep(0.01)

    with pytest.raises(errors.DownloadInterrupted):
        store(drip(), tmp_path, deadline=time.monotonic() + 0.1)
    assert list(tmp_path.iterdir()) == []


def test_empty_body_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.DownloadInterrupted):
        store([], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rewrite_is_idempotent(tmp_path: Path) -> None:
    first = store([b"same"], tmp_path)
    second = store([b"same"], tmp_path)
    assert first == second
    assert len(list(tmp_path.iterdir())) == 1


def test_file_name_ignores_raw_id() -> None:
    name = storage.file_name("../../etc/passwd", "audio/mpeg")
    assert "/" not in name
    assert name.endswith(".mp3")
    assert storage.file_name("x", "audio/unknown").endswith(".audio")


@pytest.mark.parametrize("bad", [None, "text/html", "application/json", ""])
def test_audio_type_refuses(bad: str | None) -> None:
    with pytest.raises(errors.NotAudio):
        storage.audio_type(bad)


def test_audio_type_strips_parameters() -> None:
    assert storage.audio_type("Audio/MPEG; charset=binary") == "audio/mpeg"


def test_local_store_names_by_job_and_gives_a_file_url(tmp_path: Path) -> None:
    stored = LocalStore(tmp_path / "a b").save(
        [b"RIFF", b"data"],
        job_id="../../etc/passwd",
        content_type="audio/wav",
        max_bytes=1000,
        deadline_monotonic=time.monotonic() + 60,
    )
    path = tmp_path / "a b" / storage.file_name("../../etc/passwd", "audio/wav")
    assert stored.as_dict() == {
        "path": str(path),
        "url": path.as_uri(),
        "content_type": "audio/wav",
        "bytes": 8,
        "sha256": hashlib.sha256(b"RIFFdata").hexdigest(),
    }
    assert stored.url.startswith("file:///")
    assert "a%20b" in stored.url
    assert path.read_bytes() == b"RIFFdata"
    assert LocalStore(tmp_path).fresh(stored.as_dict()) == stored.as_dict()


def test_local_store_deletes_only_files_it_named(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "audio")
    stored = store.save(
        [b"RIFF"],
        job_id="j",
        content_type="audio/wav",
        max_bytes=1000,
        deadline_monotonic=time.monotonic() + 60,
    )
    elsewhere = tmp_path / "keep.wav"
    elsewhere.write_bytes(b"RIFF")
    store.delete(storage.StoredAudio("audio/wav", 4, "0", "file://x", path=str(elsewhere)))
    assert elsewhere.exists()
    store.delete(stored)
    assert list((tmp_path / "audio").iterdir()) == []
    store.delete(stored)  # gone already: fine


def save_to(store: LocalStore, job_id: str = "j") -> storage.StoredAudio:
    return store.save(
        [b"RIFF", b"\0" * 40_000],
        job_id=job_id,
        content_type="audio/wav",
        max_bytes=100_000,
        deadline_monotonic=time.monotonic() + 60,
    )


def test_a_full_disk_is_a_transient_storage_fault(tmp_path: Path) -> None:
    # A real ENOSPC: a 256 KiB tmpfs with every byte taken by another file.
    with tmpfs(tmp_path / "disk") as disk:
        store = LocalStore(disk / "audio")
        (disk / "audio").mkdir()
        filler = fill(disk)
        with pytest.raises(errors.StorageUnavailable) as caught:
            save_to(store)
        assert isinstance(caught.value, errors.TransientError)
        assert caught.value.as_dict() == {
            "code": "STORAGE_FAILED",
            "message": "local audio store: No space left on device",
        }
        assert list((disk / "audio").iterdir()) == []  # the partial file is gone
        filler.unlink()  # the disk has room again: the same save (a retry) succeeds
        stored = save_to(store)
        assert Path(stored.path or "").stat().st_size == stored.bytes == 40_004


def test_a_read_only_disk_is_a_transient_storage_fault(tmp_path: Path) -> None:
    # A real EROFS: the tmpfs remounted read-only, as a kernel does after a disk error.
    with tmpfs(tmp_path / "disk") as disk:
        store = LocalStore(disk / "audio")
        (disk / "audio").mkdir()
        remount(disk, "ro")
        with pytest.raises(errors.StorageUnavailable) as caught:
            save_to(store)
        assert caught.value.as_dict() == {
            "code": "STORAGE_FAILED",
            "message": "local audio store: Read-only file system",
        }
        remount(disk, "rw")
        assert list((disk / "audio").iterdir()) == []
        stored = save_to(store)
        assert Path(stored.path or "").stat().st_size == stored.bytes


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("tempfile.mkstemp", errno.EROFS),
        ("os.fsync", errno.ENOSPC),  # where NFS and some quotas report a full disk
        ("os.fsync", errno.EIO),
        ("os.replace", errno.EROFS),
        ("os.replace", errno.EDQUOT),
    ],
)
def test_a_write_refused_at_any_call_is_a_transient_storage_fault(
    call: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Injected: the calls a tmpfs cannot make fail (fsync, rename), at the module's own names.
    module, name = call.split(".")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(getattr(storage, module), name, refuse)
    with pytest.raises(errors.StorageUnavailable) as caught:
        save_to(LocalStore(tmp_path))
    monkeypatch.undo()
    assert caught.value.message == f"local audio store: {os.strerror(code)}"
    assert list(tmp_path.iterdir()) == []
    assert save_to(LocalStore(tmp_path)).bytes == 40_004


class SlowDisk:
    """A file whose every write takes ``write_s`` (injected: no real disk here can be made slow)."""

    def __init__(self, out: Any, write_s: float) -> None:
        self._out = out
        self._write_s = write_s

    def write(self, data: bytes) -> int:
        time.sleep(self._write_s)
        return int(self._out.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)

    def __enter__(self) -> SlowDisk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._out.close()


def save_slowly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, write_s: float, deadline_s: float
) -> storage.StoredAudio:
    """Ten chunks to a LocalStore whose every write takes ``write_s``."""
    fdopen = os.fdopen
    monkeypatch.setattr(storage.os, "fdopen", lambda *a, **k: SlowDisk(fdopen(*a, **k), write_s))
    return LocalStore(tmp_path).save(
        [b"RIFF"] + [b"\0" * 1024] * 9,
        job_id="j",
        content_type="audio/wav",
        max_bytes=100_000,
        deadline_monotonic=time.monotonic() + deadline_s,
    )


def test_a_slow_disk_within_the_wall_clock_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = save_slowly(tmp_path, monkeypatch, write_s=0.01, deadline_s=60.0)
    assert stored.bytes == 4 + 9 * 1024


def test_a_slow_disk_past_the_wall_clock_ends_the_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten writes of 0.05 s cannot fit 0.2 s: the attempt ends as a stalled host's would
    # (DownloadInterrupted: retried, DOWNLOAD_FAILED past the host's 3 retries), nothing left.
    with pytest.raises(errors.DownloadInterrupted) as caught:
        save_slowly(tmp_path, monkeypatch, write_s=0.05, deadline_s=0.2)
    assert caught.value.message == "download exceeded its wall-clock limit"
    assert list(tmp_path.iterdir()) == []
