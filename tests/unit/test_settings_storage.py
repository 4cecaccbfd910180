"""TTS_STORAGE_URL and the AWS environment: parsed once, refused early, secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.config.settings import Settings, StorageLocation, parse_storage_url

AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "TTS_STORAGE_URL",
    "TTS_AUDIO_DIR",
    "TTS_AUDIO_URL_TTL",
    "TTS_AUDIO_RETENTION",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the machine running the tests has set must not leak into these settings."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)


def test_default_storage_is_the_audio_dir(tmp_path: Path) -> None:
    s = Settings(TTS_AUDIO_DIR=str(tmp_path / "a b"))
    assert s.storage_url == (tmp_path / "a b").as_uri()
    assert s.storage == StorageLocation("file", path=tmp_path / "a b")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", StorageLocation("s3", bucket="bucket")),
        ("s3://bucket/", StorageLocation("s3", bucket="bucket")),
        ("s3://bucket/tts/audio", StorageLocation("s3", bucket="bucket", prefix="tts/audio/")),
        ("s3://bucket//tts/", StorageLocation("s3", bucket="bucket", prefix="tts/")),
        ("file:///srv/audio", StorageLocation("file", path=Path("/srv/audio"))),
        ("file://localhost/srv/a%20b", StorageLocation("file", path=Path("/srv/a b"))),
    ],
)
def test_storage_urls(url: str, expected: StorageLocation) -> None:
    assert parse_storage_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3://bucket:9000/x",
        "s3://key:secret@bucket/x",
        "s3://bucket/x?versionId=1",
        "file://relative/dir",
        "file:relative",
        "gs://bucket/x",
        "/srv/audio",
    ],
)
def test_bad_storage_urls_are_refused_at_start(url: str) -> None:
    with pytest.raises(ValidationError, match="TTS_STORAGE_URL"):
        Settings(TTS_STORAGE_URL=url)


def test_aws_environment() -> None:
    s = Settings(
        TTS_STORAGE_URL="s3://b/p",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY="very-secret-value",
        AWS_SESSION_TOKEN="session-token-value",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_ENDPOINT_URL="http://127.0.0.1:9000",
        TTS_AUDIO_URL_TTL="600",
        TTS_AUDIO_RETENTION="2.5",
    )
    assert s.aws_region == "eu-west-1"
    assert s.aws_endpoint_url == "http://127.0.0.1:9000"
    assert s.audio_url_ttl_s == 600
    assert s.audio_retention_days == 2.5
    assert s.aws_secret_access_key is not None
    assert s.aws_secret_access_key.get_secret_value() == "very-secret-value"
    shown = repr(s) + str(s) + s.model_dump_json()
    for secret in ("very-secret-value", "session-token-value", "AKIAEXAMPLE"):
        assert secret not in shown


def test_defaults() -> None:
    s = Settings()
    assert s.audio_url_ttl_s == 3600
    assert s.audio_retention_days is None
    assert s.aws_access_key_id is None
    assert s.aws_endpoint_url is None


def test_empty_values_mean_unset() -> None:
    s = Settings(AWS_ENDPOINT_URL="", AWS_REGION="", TTS_AUDIO_RETENTION="")
    assert s.aws_endpoint_url is None
    assert s.aws_region is None
    assert s.audio_retention_days is None


def test_half_a_key_pair_is_refused() -> None:
    with pytest.raises(ValidationError, match="AWS_SECRET_ACCESS_KEY"):
        Settings(AWS_ACCESS_KEY_ID="AKIAEXAMPLE")


@pytest.mark.parametrize("ttl", ["0", "-5", "604801"])
def test_url_ttl_bounds(ttl: str) -> None:
    # SigV4 presigned URLs live at most seven days.
    with pytest.raises(ValidationError):
        Settings(TTS_AUDIO_URL_TTL=ttl)
