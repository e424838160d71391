"""S3 conditional writes are atomic (s3_conditional): of many concurrent PutObject requests
with ``If-None-Match: *`` for one key, exactly one succeeds and the others get 412
PreconditionFailed; ``If-Match`` replaces an object only while its ETag is the one given
(S3 User Guide, "How to prevent object overwrites with conditional writes")."""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import ClientError

from conftest import Account


def test_if_none_match_lets_exactly_one_of_many_concurrent_writers_create_a_key(account: Account) -> None:
    bucket = account.bucket()
    outcomes: list[str] = []
    start = threading.Barrier(16)

    def writer(n: int) -> None:
        s3 = account.s3()
        start.wait()
        try:
            s3.put_object(Bucket=bucket, Key="claims/one", Body=f"writer {n}".encode() * 20_000, IfNoneMatch="*")
            outcomes.append("created")
        except ClientError as e:
            outcomes.append(f"{e.response['ResponseMetadata']['HTTPStatusCode']} {e.response['Error']['Code']}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("created") == 1, outcomes
    assert sorted(set(outcomes) - {"created"}) == ["412 PreconditionFailed"], outcomes
    body = account.s3().get_object(Bucket=bucket, Key="claims/one")["Body"].read()
    assert body.startswith(b"writer ")


def test_if_match_takes_over_only_the_version_it_read(account: Account) -> None:
    s3: Any = account.s3()
    bucket = account.bucket()
    first = s3.put_object(Bucket=bucket, Key="claims/two", Body=b"a", IfNoneMatch="*")
    taken = s3.put_object(Bucket=bucket, Key="claims/two", Body=b"b", IfMatch=first["ETag"])
    try:
        s3.put_object(Bucket=bucket, Key="claims/two", Body=b"c", IfMatch=first["ETag"])
        raise AssertionError("a stale ETag must not replace the object")
    except ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        assert e.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="claims/two")["ETag"] == taken["ETag"]
