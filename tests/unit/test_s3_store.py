"""S3Store against a real S3 API on loopback: uploads, presigned URLs, aborts, redelivery."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import requests
from botocore.exceptions import ClientError, ConnectTimeoutError, NoCredentialsError

from tasks import errors
from tasks.audio import s3_store, storage
from tasks.audio.s3_store import MIB, S3Store
from tasks.audio.storage import StoredAudio
from tests.support.s3 import MotoS3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

JOB = "job-../../etc/passwd"  # a hostile id: the key must not carry it
PART = 5 * MIB  # the smallest part S3 accepts, so multipart tests move little data


@pytest.fixture
def bucket(s3_server: MotoS3) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def client(s3_server: MotoS3) -> S3Client:
    return s3_server.client()


def make_store(client: S3Client, bucket: str, *, url_ttl_s: int = 3600) -> S3Store:
    return S3Store(client, bucket=bucket, prefix="tts/audio/", part_bytes=PART, url_ttl_s=url_ttl_s)


def body(n_bytes: int) -> bytes:
    # Not all zeros, so a part out of order or repeated would change the hash.
    return bytes(i % 251 for i in range(n_bytes))


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def save(
    store: S3Store,
    chunks: Iterator[bytes] | list[bytes],
    *,
    max_bytes: int = 20 * MIB,
    deadline: float | None = None,
) -> StoredAudio:
    return store.save(
        chunks,
        job_id=JOB,
        content_type="audio/wav",
        max_bytes=max_bytes,
        deadline_monotonic=time.monotonic() + 60 if deadline is None else deadline,
    )


def keys(client: S3Client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def open_uploads(client: S3Client, bucket: str) -> list[object]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_small_body_is_one_object_with_type_and_hash(client: S3Client, bucket: str) -> None:
    data = body(100_000)
    stored = make_store(client, bucket).save(
        chunked(data),
        job_id=JOB,
        content_type="audio/wav",
        max_bytes=MIB,
        deadline_monotonic=time.monotonic() + 60,
    )
    assert stored.bucket == bucket
    assert stored.key is not None
    assert stored.key.startswith("tts/audio/")
    assert stored.key.endswith(".wav")
    assert "passwd" not in stored.key
    assert "job-" not in stored.key
    assert stored.path is None
    assert stored.bytes == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert keys(client, bucket) == [stored.key]
    head = client.head_object(Bucket=bucket, Key=stored.key)
    assert head["ContentType"] == "audio/wav"
    assert head["ContentLength"] == len(data)
    assert "-" not in head["ETag"]  # a single PUT, not a multipart upload
    assert stored.as_dict() == {
        "bucket": bucket,
        "key": stored.key,
        "url": stored.url,
        "content_type": "audio/wav",
        "bytes": len(data),
        "sha256": stored.sha256,
    }


def test_presigned_url_serves_the_exact_bytes(client: S3Client, bucket: str) -> None:
    data = body(70_000)
    stored = make_store(client, bucket, url_ttl_s=120).save(
        [data],
        job_id=JOB,
        content_type="audio/mpeg",
        max_bytes=MIB,
        deadline_monotonic=time.monotonic() + 60,
    )
    assert "X-Amz-Expires=120" in stored.url
    assert "X-Amz-Signature=" in stored.url
    response = requests.get(stored.url, timeout=5)  # the caller's view: plain HTTP, no SDK
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Content-Type"] == "audio/mpeg"
    assert hashlib.sha256(response.content).hexdigest() == stored.sha256
    unsigned = stored.url.split("?")[0]
    assert requests.get(unsigned, timeout=5).status_code == 403  # the signature is what opens it


def test_large_body_goes_up_in_parts(client: S3Client, bucket: str) -> None:
    data = body(2 * PART + 12_345)
    stored = save(make_store(client, bucket), chunked(data))
    assert stored.key is not None
    head = client.head_object(Bucket=bucket, Key=stored.key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 MiB, 5 MiB, the rest
    assert head["ContentType"] == "audio/wav"
    assert requests.get(stored.url, timeout=10).content == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert open_uploads(client, bucket) == []


def test_body_of_exactly_one_part_is_stored(client: S3Client, bucket: str) -> None:
    data = body(PART)
    stored = save(make_store(client, bucket), chunked(data))
    assert requests.get(stored.url, timeout=10).content == data
    assert open_uploads(client, bucket) == []


def test_cap_after_parts_were_sent_aborts_the_upload(client: S3Client, bucket: str) -> None:
    """Two 5 MiB parts reach the bucket before the cap (11 MiB) is crossed: all must go."""
    sent: list[int] = []

    def counted() -> Iterator[bytes]:
        for chunk in chunked(body(12 * MIB)):
            sent.append(len(chunk))
            yield chunk

    with pytest.raises(errors.AudioTooLarge):
        save(make_store(client, bucket), counted(), max_bytes=11 * MIB)
    assert sum(sent) > 2 * PART  # the upload had really begun
    assert keys(client, bucket) == []
    assert open_uploads(client, bucket) == []


def test_cap_on_a_small_body_sends_nothing(client: S3Client, bucket: str) -> None:
    with pytest.raises(errors.AudioTooLarge):
        save(make_store(client, bucket), chunked(body(300_000)), max_bytes=200_000)
    assert keys(client, bucket) == []
    assert open_uploads(client, bucket) == []


def test_source_cut_mid_upload_aborts(client: S3Client, bucket: str) -> None:
    def cut() -> Iterator[bytes]:
        yield from chunked(body(PART + MIB))
        raise requests.exceptions.ChunkedEncodingError("connection broken")

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        save(make_store(client, bucket), cut())
    assert keys(client, bucket) == []
    assert open_uploads(client, bucket) == []


def test_wall_clock_mid_upload_aborts(
    client: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = {"now": 0.0}
    monkeypatch.setattr(storage, "time", SimpleNamespace(monotonic=lambda: clock["now"]))

    def stalls_after_one_part() -> Iterator[bytes]:
        yield from chunked(body(PART + MIB))
        clock["now"] = 61.0  # the wall clock runs out after the first part went up
        yield b"late"

    with pytest.raises(errors.DownloadInterrupted):
        save(make_store(client, bucket), stalls_after_one_part(), deadline=60.0)
    assert keys(client, bucket) == []
    assert open_uploads(client, bucket) == []


def test_empty_body_sends_nothing(client: S3Client, bucket: str) -> None:
    with pytest.raises(errors.DownloadInterrupted):
        save(make_store(client, bucket), [])
    assert keys(client, bucket) == []


def test_redelivery_writes_one_object(client: S3Client, bucket: str) -> None:
    data = body(2 * PART + 1)
    store = make_store(client, bucket)
    first = save(store, chunked(data))
    second = save(store, chunked(data))
    with ThreadPoolExecutor(2) as pool:  # and two deliveries racing each other
        racing = list(pool.map(lambda _: save(store, chunked(data)), range(2)))
    located = {(s.bucket, s.key, s.sha256) for s in (first, second, *racing)}
    assert len(located) == 1
    assert len(keys(client, bucket)) == 1
    assert open_uploads(client, bucket) == []
    assert requests.get(first.url, timeout=10).content == data


def test_delete_removes_the_object_and_tolerates_it_gone(client: S3Client, bucket: str) -> None:
    """What a download that found its job ended meanwhile calls (tasks/steps/download.py)."""
    store = make_store(client, bucket)
    stored = save(store, [b"RIFF"])
    assert keys(client, bucket) == [stored.key]
    store.delete(stored)
    assert keys(client, bucket) == []
    store.delete(stored)  # again: S3 answers a missing key with success


def test_missing_bucket_is_permanent(client: S3Client) -> None:
    store = S3Store(client, bucket="no-such-bucket-here", part_bytes=PART)
    with pytest.raises(errors.StorageFailed) as caught:
        save(store, [b"abc"])
    assert caught.value.code == "STORAGE_FAILED"
    assert "NoSuchBucket" in caught.value.message


def test_unreachable_store_is_transient(s3_server: MotoS3) -> None:
    from tasks.config.settings import Settings
    from tests.support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
    from workers.embedded_redis import free_port

    settings = Settings(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_REGION="us-east-1",
        TTS_HTTP_CONNECT_TIMEOUT=0.5,
        TTS_HTTP_READ_TIMEOUT=0.5,
    )
    store = S3Store(s3_store.make_client(settings, user_agent="test"), bucket="b", part_bytes=PART)
    with pytest.raises(errors.StorageUnavailable) as caught:
        save(store, [b"abc"])
    assert caught.value.code == "STORAGE_FAILED"
    assert SECRET_ACCESS_KEY not in caught.value.message


def client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (client_error(503, "SlowDown"), errors.StorageUnavailable),
        (client_error(500, "InternalError"), errors.StorageUnavailable),
        (client_error(400, "RequestTimeout"), errors.StorageUnavailable),
        (client_error(403, "AccessDenied"), errors.StorageFailed),
        (client_error(404, "NoSuchBucket"), errors.StorageFailed),
        (NoCredentialsError(), errors.StorageFailed),
        (ConnectTimeoutError(endpoint_url="http://x"), errors.StorageUnavailable),
    ],
)
def test_botocore_errors_are_mapped(raised: Exception, expected: type[errors.TTSError]) -> None:
    with pytest.raises(expected), s3_store.mapped("upload"):
        raise raised


def test_fresh_signs_a_new_working_url(client: S3Client, bucket: str) -> None:
    data = body(1000)
    store = make_store(client, bucket, url_ttl_s=60)
    audio = save(store, [data]).as_dict()
    stale = {**audio, "url": "https://expired.invalid/"}
    fresh = store.fresh(stale)
    assert fresh["url"] != stale["url"]
    assert {k: v for k, v in fresh.items() if k != "url"} == {
        k: v for k, v in stale.items() if k != "url"
    }
    assert requests.get(fresh["url"], timeout=5).content == data
    local = {"path": "/x/a.wav", "url": "file:///x/a.wav", "sha256": "0"}
    assert store.fresh(local) == local  # not an object: left as it is


def test_parts_recut_exactly() -> None:
    assert list(s3_store.parts([b"ab", b"cde", b"f"], 4)) == [b"abcd", b"ef"]
    assert list(s3_store.parts([b"abcd"], 4)) == [b"abcd"]
    assert list(s3_store.parts([], 4)) == []


def test_parts_below_the_s3_minimum_are_refused(client: S3Client) -> None:
    with pytest.raises(ValueError):
        S3Store(client, bucket="b", part_bytes=MIB)
