"""The shared S3 failure wording (``services/errors.py``) against real failures: a closed port,
the suite's S3 server (SeaweedFS) refusing unknown credentials (403), a missing bucket; and the
backup's error codes for them."""

from __future__ import annotations

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

from backup_pipeline.services.backup_buckets import s3_failure
from backup_pipeline.services.backup_parts import ErrorCode
from backup_pipeline.services.errors import S3_ERRORS, s3_endpoint, s3_error_reason
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.s3 import S3Server

WRONG_ACCESS_KEY = "AKIAWRONGWRONGWRONG1"
WRONG_SECRET_KEY = "wrong-secret-key-that-must-not-leak"


def _client(netloc: str, access_key: str, secret_key: str) -> Minio:
    # retries=0: one attempt, so a refused connection fails at once.
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0), timeout=urllib3.Timeout(connect=2, read=5))
    return Minio(netloc, access_key=access_key, secret_key=secret_key, secure=False, http_client=http)


def _failure(call: object) -> BaseException:
    assert callable(call)
    with pytest.raises(S3_ERRORS) as err:
        call()
    return err.value


def test_closed_port_reads_as_unreachable_naming_the_endpoint() -> None:
    netloc = f"127.0.0.1:{free_port()}"
    client = _client(netloc, WRONG_ACCESS_KEY, WRONG_SECRET_KEY)
    exc = _failure(client.list_buckets)

    message = s3_error_reason(exc, s3_endpoint(client), "listing buckets")
    assert message.startswith(f"S3 endpoint http://{netloc}: listing buckets failed: ")
    assert "ConnectionRefusedError" in message and "is the S3/MinIO server running" in message
    assert WRONG_SECRET_KEY not in message and WRONG_ACCESS_KEY not in message
    assert " object at 0x" not in message  # urllib3's connection repr is noise

    backup_error = s3_failure(exc, "listing buckets", s3_endpoint(client))
    assert backup_error.code == ErrorCode.S3_UNREACHABLE and backup_error.retryable


def test_wrong_credentials_read_as_access_refused(s3: S3Server) -> None:
    client = _client(f"127.0.0.1:{s3.port}", WRONG_ACCESS_KEY, WRONG_SECRET_KEY)
    exc = _failure(client.list_buckets)
    assert isinstance(exc, S3Error) and exc.response.status == 403

    message = s3_error_reason(
        exc, s3.endpoint, "listing buckets", secrets=(WRONG_SECRET_KEY, WRONG_ACCESS_KEY)
    )
    assert message.startswith(f"S3 endpoint {s3.endpoint}: listing buckets failed: access refused (")
    assert str(exc.code) in message and "check the S3 access key, secret key" in message
    assert WRONG_SECRET_KEY not in message and WRONG_ACCESS_KEY not in message

    backup_error = s3_failure(exc, "listing buckets", s3.endpoint)
    assert backup_error.code == ErrorCode.S3_ERROR and not backup_error.retryable


def test_missing_bucket_is_named(s3: S3Server) -> None:
    client = s3.client()
    exc = _failure(lambda: list(client.list_objects("no-such-bucket")))

    message = s3_error_reason(exc, s3_endpoint(client), "listing bucket 'no-such-bucket'")
    assert message == (
        f"S3 endpoint {s3.endpoint}: listing bucket 'no-such-bucket' failed: "
        "bucket 'no-such-bucket' does not exist (NoSuchBucket)"
    )
    assert s3_failure(exc, "listing", s3.endpoint).code == ErrorCode.BUCKET_NOT_FOUND


def test_keys_are_masked_should_a_text_carry_them() -> None:
    exc = ValueError(f"bad signature for {WRONG_SECRET_KEY}")
    message = s3_error_reason(exc, "http://s3:9000", "signing", secrets=(WRONG_SECRET_KEY, "a"))
    assert message == "S3 endpoint http://s3:9000: signing failed: ValueError: bad signature for ***"
