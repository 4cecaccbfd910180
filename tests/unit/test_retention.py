"""The local audio sweep: only our files, only past their age, safe when run many times at once."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.audio import retention
from tasks.audio.storage import file_name

DAY_S = 86_400


def plant(directory: Path, name: str, age_s: float, data: bytes = b"x") -> Path:
    path = directory / name
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_old_audio_goes_new_audio_stays(tmp_path: Path) -> None:
    old = plant(tmp_path, file_name("old", "audio/wav"), 3 * DAY_S)
    new = plant(tmp_path, file_name("new", "audio/mpeg"), 60)
    swept = retention.sweep(
        tmp_path, audio_before_at=time.time() - 2 * DAY_S, parts_before_at=time.time() - DAY_S
    )
    assert swept == retention.Swept(audio=1, parts=0)
    assert not old.exists()
    assert new.exists()


def test_foreign_files_and_links_are_never_touched(tmp_path: Path) -> None:
    foreign = [
        plant(tmp_path, "notes.txt", 10 * DAY_S),
        plant(tmp_path, "ABCDEF" * 5 + "ab.wav", 10 * DAY_S),  # upper case: not our hash
        plant(tmp_path, "0" * 31 + ".wav", 10 * DAY_S),  # one digit short
    ]
    outside = plant(tmp_path.parent, "precious.wav", 10 * DAY_S)
    link = tmp_path / file_name("link", "audio/wav")
    link.symlink_to(outside)
    os.utime(link, (0, 0), follow_symlinks=False)
    sub = tmp_path / ("a" * 32 + ".wav")
    sub.mkdir()
    swept = retention.sweep(tmp_path, audio_before_at=time.time(), parts_before_at=time.time())
    assert swept == retention.Swept()
    assert all(p.exists() for p in foreign)
    assert link.is_symlink()
    assert outside.exists()
    assert sub.is_dir()


def test_no_retention_keeps_audio_but_clears_abandoned_parts(tmp_path: Path) -> None:
    audio = plant(tmp_path, file_name("j", "audio/wav"), 400 * DAY_S)
    dead = plant(tmp_path, ".part-abc123.tmp", 3600)
    live = plant(tmp_path, ".part-def456.tmp", 5)
    swept = retention.sweep(tmp_path, audio_before_at=None, parts_before_at=time.time() - 600)
    assert swept == retention.Swept(audio=0, parts=1)
    assert audio.exists()
    assert not dead.exists()
    assert live.exists()


def test_missing_directory_is_nothing_to_do(tmp_path: Path) -> None:
    gone = tmp_path / "never-created"
    assert (
        retention.sweep(gone, audio_before_at=time.time(), parts_before_at=0) == retention.Swept()
    )


def test_many_sweepers_at_once(tmp_path: Path) -> None:
    """Eight machines sweeping one shared directory: each file removed once, no errors."""
    for i in range(200):
        plant(tmp_path, file_name(f"job-{i}", "audio/wav"), 5 * DAY_S)
    cutoff = time.time() - DAY_S
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: retention.sweep(tmp_path, audio_before_at=cutoff, parts_before_at=0),
                range(8),
            )
        )
    assert sum(r.audio for r in results) == 200
    assert list(tmp_path.iterdir()) == []
