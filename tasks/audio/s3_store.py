"""Audio in S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, GCS's S3 API), via boto3.

Upload: the body is read through :class:`tasks.audio.storage.Meter` (byte cap, wall clock, sha256)
and cut into parts of :data:`PART_BYTES`. A body that ends within the first part, which is nearly
every TTS clip, goes up in one ``put_object``: nothing exists in the bucket until that request
succeeds, so a refusal leaves nothing behind. A longer body becomes a multipart upload (parts of
``PART_BYTES``, the last one shorter, then ``complete``); any error on the way (the cap, the wall
clock, the audio host cutting out, an S3 fault, a time limit) aborts the upload, so no parts
linger. Either way the object appears whole and at once, under a key derived from the job id
only: a redelivered download overwrites the same key with the same bytes.

A worker killed outright (SIGKILL, power loss) cannot abort its upload; the bucket's
``AbortIncompleteMultipartUpload`` lifecycle rule removes those (see the README).

``botocore`` exceptions become project errors here, at one boundary (:func:`mapped`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from tasks import errors
from tasks.audio.storage import Meter, StoredAudio, file_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef
    from pydantic import SecretStr

    from tasks.config.settings import Settings

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3 refuses parts under 5 MiB (except the last); 8 MiB is the AWS CLI's default part size and
# bounds what one download holds in memory.
PART_BYTES = 8 * MIB
MIN_PART_BYTES = 5 * MIB
# Attempts per S3 call (botocore "standard" retries: 5xx, throttling, resets), first one
# included. Few: the download task retries the whole step with its own backoff on top.
S3_MAX_ATTEMPTS = 3
# Error codes S3 and compatibles use for "slow down / try again", whatever the HTTP status.
TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
)


def make_client(s: Settings, *, user_agent: str) -> S3Client:
    """A per-process S3 client with timeouts, bounded retries and the configured credentials.

    Keys left unset leave boto3's own chain in charge (instance profile, web identity, ~/.aws).
    """
    config = Config(
        connect_timeout=s.http_connect_timeout_s,
        read_timeout=s.http_read_timeout_s,
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
        signature_version="s3v4",
        user_agent_extra=user_agent,
        # Newer botocore adds CRC checksums to every upload by default; several S3-compatible
        # services reject or mishandle them. Send checksums only where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    session = boto3.session.Session()
    return session.client(
        "s3",
        region_name=s.aws_region,
        endpoint_url=s.aws_endpoint_url,
        aws_access_key_id=secret(s.aws_access_key_id),
        aws_secret_access_key=secret(s.aws_secret_access_key),
        aws_session_token=secret(s.aws_session_token),
        config=config,
    )


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Turn ``botocore`` exceptions raised inside the block into project errors.

    Messages carry the S3 error code and status only: never a URL, key id or request detail;
    raised ``from None``, since botocore's own text quotes the endpoint, bucket and key.
    """
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "") or "error")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"storage {what}: {code} (HTTP {status})"
        if status >= 500 or status in (408, 429) or code in TRANSIENT_CODES:
            raise errors.StorageUnavailable(message) from None
        raise errors.StorageFailed(message) from None
    except (NoCredentialsError, PartialCredentialsError, ParamValidationError) as exc:
        raise errors.StorageFailed(f"storage {what}: {type(exc).__name__}") from None
    except BotoCoreError as exc:
        # Connection refused or reset, connect/read timeouts, a truncated answer.
        raise errors.StorageUnavailable(f"storage {what}: {type(exc).__name__}") from None


def parts(chunks: Iterable[bytes], part_bytes: int) -> Iterator[bytes]:
    """Re-cut ``chunks`` into blocks of exactly ``part_bytes``, the last one shorter.

    Holds at most one part's worth of chunks, and copies each byte about once (the join).
    """
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        while size >= part_bytes:
            joined = b"".join(pending)
            rest = joined[part_bytes:]
            part = joined[:part_bytes]  # the same object, not a copy, when nothing is left over
            del joined
            pending, size = ([rest], len(rest)) if rest else ([], 0)
            yield part
            del part
    if pending:
        yield b"".join(pending)


def _one_then(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    # Hands the already-read first part over without the caller's frame keeping it alive.
    yield head.pop()
    yield from rest


class S3Store:
    """Objects under ``prefix`` in ``bucket``; callers read them through presigned GET URLs."""

    def __init__(
        self,
        client: S3Client,
        *,
        bucket: str,
        prefix: str = "",
        url_ttl_s: int = 3600,
        part_bytes: int = PART_BYTES,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts must be at least {MIN_PART_BYTES} bytes")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.url_ttl_s = url_ttl_s
        self.part_bytes = part_bytes

    def key_for(self, job_id: str, content_type: str) -> str:
        """The object key of a job's audio: the prefix and a hash of the job id, never the id."""
        return self.prefix + file_name(job_id, content_type)

    def save(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        content_type: str,
        max_bytes: int,
        deadline_monotonic: float,
    ) -> StoredAudio:
        """Upload the body (one PUT, or a multipart upload aborted on any error)."""
        key = self.key_for(job_id, content_type)
        meter = Meter(chunks, max_bytes=max_bytes, deadline_monotonic=deadline_monotonic)
        blocks = parts(meter, self.part_bytes)
        head = [next(blocks)]  # the meter refuses an empty body, so there is one
        if len(head[0]) < self.part_bytes:
            with mapped("upload"):
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=head.pop(), ContentType=content_type
                )
        else:
            self._multipart(key, content_type, _one_then(head, blocks))
        return StoredAudio(
            content_type=content_type,
            bytes=meter.bytes,
            sha256=meter.sha256,
            url=self.presign(self.bucket, key),
            bucket=self.bucket,
            key=key,
        )

    def _multipart(self, key: str, content_type: str, blocks: Iterator[bytes]) -> None:
        with mapped("upload"):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type
            )["UploadId"]
        try:
            done: list[CompletedPartTypeDef] = []
            for number, body in enumerate(blocks, start=1):
                with mapped("upload"):
                    etag = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    )["ETag"]
                done.append({"ETag": etag, "PartNumber": number})
                del body  # one part in memory at a time: let this one go before reading on
            with mapped("upload"):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                )
        except BaseException:
            self._abort(key, upload_id)
            raise

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:
            # The original error matters more; the bucket's lifecycle rule removes the parts.
            log.warning("could not abort the multipart upload of %s: %s", key, type(exc).__name__)

    def presign(self, bucket: str, key: str) -> str:
        """A GET URL for the object, valid for ``url_ttl_s`` from now (signed locally, no call)."""
        with mapped("presign"):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.url_ttl_s
            )

    def delete(self, audio: StoredAudio) -> None:
        """Remove the object (S3 answers a missing key with success too)."""
        if audio.bucket is None or audio.key is None:
            return
        with mapped("delete"):
            self.client.delete_object(Bucket=audio.bucket, Key=audio.key)

    def fresh(self, audio: dict[str, Any]) -> dict[str, Any]:
        """The recorded object with a newly presigned ``url``, so a late webhook still works."""
        bucket, key = audio.get("bucket"), audio.get("key")
        if not (isinstance(bucket, str) and isinstance(key, str)):
            return audio
        try:
            return {**audio, "url": self.presign(bucket, key)}
        except errors.StorageFailed as exc:
            log.warning("could not presign %s again, sending the recorded URL: %s", key, exc)
            return audio
