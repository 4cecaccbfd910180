"""A small tmpfs of the test's own: a disk that really fills up (``ENOSPC``) and really turns
read-only (``EROFS``), for the local audio store's faults.

Mounting needs root (or ``CAP_SYS_ADMIN``); the suite runs as root in its container. Where it
cannot mount, a test skips saying why, and fails with ``CI=true``, as the RabbitMQ tests do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Room for a few of the simulator's 0.4 s WAVs (about 13 KB each), small enough to fill at once.
SIZE = "256k"
FILLER = "filler"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def tmpfs(path: Path, *, size: str = SIZE) -> Iterator[Path]:
    """``path`` (made if missing) with a fresh tmpfs of ``size`` mounted on it; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs on {path}: {done.stderr.strip() or done.returncode}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs to mount a tmpfs (run as root): {reason}")
        pytest.skip(reason)
    try:
        yield path
    finally:
        # Lazy: a worker process killed mid-write may still hold a file open on it.
        _run("umount", "-l", str(path))


def fill(mount: Path) -> Path:
    """Take every free byte of ``mount`` with one file (removing it frees them all again)."""
    filler = mount / FILLER
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    # A few bytes may be left below one chunk: take them one at a time.
    with filler.open("ab", buffering=0) as out:
        try:
            while True:
                out.write(b"\0")
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def remount(mount: Path, mode: str) -> None:
    """Turn ``mount`` read-only (``"ro"``) or writable again (``"rw"``)."""
    done = _run("mount", "-o", f"remount,{mode}", str(mount))
    if done.returncode != 0:
        raise RuntimeError(f"remount,{mode} {mount}: {done.stderr.strip()}")
