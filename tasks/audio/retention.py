"""Retention for the local audio store: remove audio past its age, and abandoned temporary files.

Safe to run on many machines at once over one directory: every removal tolerates the file being
gone already, and nothing is removed that is not ours by name (a job's audio is a 32-digit hash
plus an extension; a temporary file starts with ``.part-``). Symbolic links are never followed.
Audio in S3 is not swept here: a bucket lifecycle rule expires it (README).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.audio.storage import PART_PREFIX, PART_SUFFIX

# The names tasks.audio.storage.file_name gives: nothing else in the directory is touched.
AUDIO_NAME = re.compile(r"[0-9a-f]{32}\.[a-z0-9]{2,5}")


@dataclass(frozen=True)
class Swept:
    """What one sweep removed: job audio past retention, and abandoned temporary files."""

    audio: int = 0
    parts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _is_part(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def sweep(audio_dir: Path, *, audio_before_at: float | None, parts_before_at: float) -> Swept:
    """Remove audio last written before ``audio_before_at`` (None keeps all audio) and temporary
    files untouched since ``parts_before_at`` (epoch seconds, compared with the file's mtime).
    """
    audio = parts = 0
    try:
        entries = list(os.scandir(audio_dir))
    except FileNotFoundError:
        return Swept()
    for entry in entries:
        name = entry.name
        if AUDIO_NAME.fullmatch(name):
            cutoff_at = audio_before_at
        elif _is_part(name):
            cutoff_at = parts_before_at
        else:
            continue
        if cutoff_at is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff_at:
                continue
        except FileNotFoundError:
            continue  # another sweeper (or a rewrite) got there first
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            if _is_part(name):
                parts += 1
            else:
                audio += 1
    return Swept(audio=audio, parts=parts)
