"""Ranged GetObject (s3_ranges): the emulator reads only the range from the stored object, and
answers exactly as moto (and S3) do: 206 with ``Content-Range`` and ``Content-Length`` for one
range in any of its forms, 416 ``InvalidRange`` past the end, the whole object (200) for several
ranges (S3 API reference, GetObject ``Range``: "Amazon S3 doesn't support retrieving multiple
ranges of data per GET request"), no checksum on a partial answer, any version."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError

from conftest import Account

SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture()
def stored(account: Account) -> tuple[Account, str, bytes]:
    bucket = account.bucket()
    body = os.urandom(SIZE)
    account.s3().put_object(Bucket=bucket, Key="disk.raw", Body=body, ChecksumAlgorithm="SHA256")
    return account, bucket, body


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=1048576-9437183", 1048576, SIZE - 1),  # an end past the object is cut to it
        (f"bytes={SIZE - 10}-", SIZE - 10, SIZE - 1),
        ("bytes=-512", SIZE - 512, SIZE - 1),
        ("bytes=0-", 0, SIZE - 1),
    ],
)
def test_one_range_is_answered_206_with_exactly_its_bytes(stored, header: str, first: int, last: int) -> None:
    account, bucket, body = stored
    got = account.s3().get_object(Bucket=bucket, Key="disk.raw", Range=header, ChecksumMode="ENABLED")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes {first}-{last}/{SIZE}"
    assert got["ContentLength"] == last - first + 1
    assert got["Body"].read() == body[first : last + 1]
    if (first, last) != (0, SIZE - 1):
        assert "ChecksumSHA256" not in got  # "range requests do not return the checksum"


def test_a_range_past_the_end_is_416_invalid_range(stored) -> None:
    account, bucket, _ = stored
    with pytest.raises(ClientError) as err:
        account.s3().get_object(Bucket=bucket, Key="disk.raw", Range=f"bytes={SIZE}-")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    assert err.value.response["Error"]["Code"] == "InvalidRange"


def test_several_ranges_give_the_whole_object(stored) -> None:
    account, bucket, body = stored
    got = account.s3().get_object(Bucket=bucket, Key="disk.raw", Range="bytes=0-1,5-6")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert got["Body"].read() == body


def test_without_a_range_the_whole_object_and_its_checksum(stored) -> None:
    account, bucket, body = stored
    got = account.s3().get_object(Bucket=bucket, Key="disk.raw", ChecksumMode="ENABLED")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert got["Body"].read() == body
    assert got["ChecksumSHA256"]


def test_a_range_of_an_older_version(account: Account) -> None:
    bucket = account.bucket()
    s3 = account.s3()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=bucket, Key="k", Body=b"a" * 1000 + b"OLD")["VersionId"]
    s3.put_object(Bucket=bucket, Key="k", Body=b"b" * 1000 + b"NEW")
    got = s3.get_object(Bucket=bucket, Key="k", VersionId=old, Range="bytes=1000-1002")
    assert got["Body"].read() == b"OLD"
    assert got["VersionId"] == old
    got = s3.get_object(Bucket=bucket, Key="k", Range="bytes=-3")
    assert got["Body"].read() == b"NEW"


def test_many_concurrent_ranges_of_one_object_each_get_their_bytes(stored) -> None:
    import concurrent.futures

    account, bucket, body = stored
    part = 256 * 1024

    def read(i: int) -> bool:
        s3 = account.s3()
        first = i * part
        last = min(first + part, SIZE) - 1
        got = s3.get_object(Bucket=bucket, Key="disk.raw", Range=f"bytes={first}-{last}")["Body"].read()
        return got == body[first : last + 1]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, range((SIZE + part - 1) // part)))
