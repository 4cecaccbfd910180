"""A webhook for audio stored in S3 (moto's server on loopback), through the client: submitted
with TTSClient, verified with verify_webhook, its presigned URL fetched and checked."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable

import pytest

from tests.support.s3 import MotoS3
from tests.support.stack import ELEVEN, SECRET, Lane, Spawn, wait_until
from tts_client import TTSClient, verify_webhook
from workers.receiver import Receiver

pytestmark = pytest.mark.integration


def test_an_s3_webhook_verifies_and_its_url_serves_the_audio(
    lanes: Callable[[], Lane], spawn: Spawn, s3_server: MotoS3, receiver: Receiver
) -> None:
    lane = lanes()
    bucket = s3_server.new_bucket()
    spawn(lane.env(**s3_server.env(bucket, "tts/"))).start()
    with TTSClient(lane.url) as tts:
        job_id = tts.submit("Stored in S3 [[sim pending=1]]", ELEVEN, notify_url=receiver.url)
        delivery = receiver.wait_for(job_id)
        event = verify_webhook(SECRET, delivery.body, delivery.headers)
        assert (event.type, event.job_id) == ("tts.completed", job_id)
        audio = event.audio
        assert audio is not None
        assert (audio.bucket, audio.path) == (bucket, None)
        assert audio.key is not None
        assert audio.key.startswith("tts/")
        # The presigned GET (on loopback: moto) serves the very bytes the event describes.
        assert audio.url.startswith(s3_server.endpoint_url)
        with urllib.request.urlopen(audio.url, timeout=10) as answer:
            body = answer.read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (audio.bytes, audio.sha256)
        job = wait_until(lambda: (found := tts.get(job_id)) and found.ended and found)
        assert job.status == "completed"
        assert job.audio is not None
        assert (job.audio.bucket, job.audio.key, job.audio.sha256) == (
            bucket,
            audio.key,
            audio.sha256,
        )
