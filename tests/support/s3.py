"""A real S3 API server on loopback (moto's standalone server), for the object-storage tests.

It speaks the S3 REST protocol over HTTP on 127.0.0.1 and a free port, so the code under test
(and a worker subprocess) talks to it exactly as it would to MinIO or AWS: signed requests,
multipart uploads, presigned URLs.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Dummy credentials: moto accepts any; the secret is distinctive so tests can scan for it.
ACCESS_KEY_ID = "AKIATESTS3STORE00001"
SECRET_ACCESS_KEY = "s3-test-secret-9f8e7d6c5b4a39281706"
REGION = "us-east-1"


class MotoS3:
    """Start with :meth:`start`; ``endpoint_url`` is where it listens."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> MotoS3:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> S3Client:
        """A test-side client (the code under test builds its own from settings)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(signature_version="s3v4"),
        )

    def new_bucket(self) -> str:
        name = f"tts-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The worker environment that stores audio in ``bucket`` on this server."""
        return {
            "TTS_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
        }
