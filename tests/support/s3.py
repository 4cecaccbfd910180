"""A real S3 API server on loopback (moto's standalone server), for the object-storage tests.

It speaks the S3 REST protocol over HTTP on 127.0.0.1 and a free port, so the code under test
(and a worker subprocess) talks to it exactly as it would to MinIO or AWS: signed requests,
multipart uploads, presigned URLs. It can go down and come back on the same port, for outages.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Dummy credentials: moto accepts any; the secret is distinctive so tests can scan for it.
ACCESS_KEY_ID = "AKIATESTS3STORE00001"
SECRET_ACCESS_KEY = "s3-test-secret-9f8e7d6c5b4a39281706"
REGION = "us-east-1"


class _OneRequestPerConnection(MotoRequestHandler):
    # Werkzeug's threaded server keeps HTTP/1.1 connections open, each served by its own thread
    # even after the server stops; with one request per connection, a stopped server refuses
    # every later request, also from a client that talked to it before.
    protocol_version = "HTTP/1.0"


class MotoS3:
    """Start with :meth:`start`; ``endpoint_url`` is where it listens.

    :meth:`stop` closes the port, so requests are refused; a later :meth:`start` listens on the
    same port again, with the buckets and objects it had (moto keeps them in this process, not
    in the server). Moto's ``ThreadedMotoServer`` cannot do that: its ``stop`` leaves the socket
    open (connections hang instead of being refused) and its port taken.
    """

    def __init__(self) -> None:
        self._port = 0  # a free one at the first start, the same one after
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    def start(self) -> MotoS3:
        self._server = make_server(
            "127.0.0.1",
            self._port,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=_OneRequestPerConnection,
        )
        self._port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint_url = f"http://127.0.0.1:{self._port}"
        return self

    def stop(self) -> None:
        """Stop listening and close the port; safe to call when not running."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

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
