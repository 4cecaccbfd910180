"""Housekeeping tasks, run on a schedule (celery beat) rather than by callers."""

from __future__ import annotations

import logging
import time

from celery import shared_task

from tasks import names
from tasks.audio import retention
from tasks.config.settings import get_settings

log = logging.getLogger(__name__)

# A temporary file nobody has written to for this long (beyond the download wall clock, after
# which its writer gives up) belongs to a worker that was killed mid-download.
STALE_PART_SLACK_S = 600.0
DAY_S = 86_400.0


@shared_task(name=names.CLEANUP_AUDIO)
def cleanup_audio() -> dict[str, int]:
    """Sweep the local audio directory: audio older than ``TTS_AUDIO_RETENTION`` days, and
    temporary files killed workers left. Returns the counts removed. A no-op for S3 storage,
    where a bucket lifecycle rule does the same job.
    """
    s = get_settings()
    where = s.storage
    if where.kind != "file" or where.path is None:
        log.info("audio clean-up skipped: %s storage expires audio by lifecycle rule", where.kind)
        return retention.Swept().as_dict()
    now = time.time()
    swept = retention.sweep(
        where.path,
        audio_before_at=None
        if s.audio_retention_days is None
        else now - s.audio_retention_days * DAY_S,
        parts_before_at=now - s.download_timeout_s - STALE_PART_SLACK_S,
    )
    if swept.audio or swept.parts:
        log.info("audio clean-up removed %d files and %d temporary files", swept.audio, swept.parts)
    return swept.as_dict()
