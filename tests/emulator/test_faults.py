"""Per-account fault injection through /ami-pipeline-emulator/faults (plain moto: no such
endpoint, every call succeeds)."""

from __future__ import annotations

import urllib.request

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import Account
from emu_helpers import aws_error, make_snapshot, raw_disk, register

# botocore's retries "max_attempts" counts retries after the first call (so 1 would still retry a
# 503 once); "total_max_attempts" 1 means a single attempt, so the raw fault reaches the test.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
STANDARD_RETRY_5 = Config(retries={"max_attempts": 5, "mode": "standard"})


def _add(account, **rule):
    status, body = account.control("faults", {"account_id": account.id, **rule})
    assert status == 200, body
    assert body["id"].startswith("fault-")
    return body


def _rules(account):
    status, body = account.control(f"faults?account_id={account.id}", method="GET")
    assert status == 200, body
    return {rule["id"]: rule for rule in body["faults"]}


def _import(ec2, bucket, key="disk.raw"):
    return ec2.import_snapshot(DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": key}})


def test_ec2_import_snapshot_denied_in_one_account_only(account, other_account):
    rule = _add(
        account,
        service="ec2",
        action="ImportSnapshot",
        status=403,
        code="UnauthorizedOperation",
        message="You are not authorized to perform this operation.",
    )
    assert rule["count"] is None and rule["fired"] == 0
    ec2 = account.client("ec2", config=NO_RETRY)

    with aws_error("UnauthorizedOperation", "You are not authorized to perform this operation.") as error:
        _import(ec2, "any-bucket")
    assert error["Code"] == "UnauthorizedOperation"
    with pytest.raises(ClientError) as excinfo:
        _import(ec2, "any-bucket")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert ec2.describe_import_snapshot_tasks()["ImportSnapshotTasks"] == []  # other actions pass

    bucket = other_account.bucket()
    other_account.s3().put_object(Bucket=bucket, Key="disk.raw", Body=raw_disk(512))
    assert _import(other_account.client("ec2", config=NO_RETRY), bucket)["ImportTaskId"].startswith("import-snap-")
    assert _rules(account)[rule["id"]]["fired"] == 2
    assert _rules(other_account) == {}


def test_register_image_denied_until_cleared(account):
    ec2 = account.client("ec2", config=NO_RETRY)
    snapshot_id = make_snapshot(ec2, 1)
    rule = _add(account, service="ec2", action="RegisterImage", status=403, code="UnauthorizedOperation")

    for _ in range(2):
        with aws_error("UnauthorizedOperation"):
            register(ec2, "denied-image", snapshot_id)
    assert ec2.describe_images(Owners=["self"])["Images"] == []  # the request never reached moto
    listed = _rules(account)[rule["id"]]
    assert (listed["fired"], listed["remaining"]) == (2, None)

    status, body = account.control(f"faults?account_id={account.id}", method="DELETE")
    assert (status, body) == (200, {"account_id": account.id, "cleared": 1})
    assert _rules(account) == {}
    assert register(ec2, "denied-image", snapshot_id).startswith("ami-")


def test_s3_object_actions_surface_the_code(account):
    s3 = account.client("s3", config=NO_RETRY)
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=b"0123456789")
    for action in ("HeadObject", "GetObject", "PutObjectTagging"):
        _add(account, service="s3", action=action, status=403, code="AccessDenied", message=f"{action} denied")

    with aws_error("403") as error:  # HEAD: status only, no body (as on S3)
        s3.head_object(Bucket=bucket, Key="disk.raw")
    assert error["Message"] == "Forbidden"
    with aws_error("AccessDenied", "GetObject denied"):
        s3.get_object(Bucket=bucket, Key="disk.raw")
    with aws_error("AccessDenied", "GetObject denied"):
        s3.get_object(Bucket=bucket, Key="disk.raw", Range="bytes=0-3")
    with aws_error("AccessDenied", "PutObjectTagging denied"):
        s3.put_object_tagging(Bucket=bucket, Key="disk.raw", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})

    # Other object actions are untouched.
    assert s3.get_object_tagging(Bucket=bucket, Key="disk.raw")["TagSet"] == []
    s3.put_object(Bucket=bucket, Key="other.raw", Body=b"x")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["disk.raw", "other.raw"]


def test_count_is_honoured(account):
    s3 = account.client("s3", config=NO_RETRY)
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    rule = _add(account, service="s3", action="GetObject", status=403, code="AccessDenied", count=2)

    for _ in range(2):
        with aws_error("AccessDenied"):
            s3.get_object(Bucket=bucket, Key="k")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"abc"
    listed = _rules(account)[rule["id"]]
    assert (listed["count"], listed["fired"], listed["remaining"]) == (2, 2, 0)


def test_resource_substring_must_appear_in_the_request(account):
    s3 = account.client("s3", config=NO_RETRY)
    ec2 = account.client("ec2", config=NO_RETRY)
    bucket = account.bucket()
    for key in ("secret/disk one.raw", "public/disk.raw"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    _add(account, service="s3", action="GetObject", status=403, code="AccessDenied", resource="secret/disk one")
    denied_snapshot, allowed_snapshot = make_snapshot(ec2, 1), make_snapshot(ec2, 1)
    _add(account, service="ec2", action="RegisterImage", status=403, code="UnauthorizedOperation", resource=denied_snapshot)

    with aws_error("AccessDenied"):
        s3.get_object(Bucket=bucket, Key="secret/disk one.raw")
    assert s3.get_object(Bucket=bucket, Key="public/disk.raw")["Body"].read() == b"x"
    with aws_error("UnauthorizedOperation"):
        register(ec2, "with-denied-snapshot", denied_snapshot)
    assert register(ec2, "with-allowed-snapshot", allowed_snapshot).startswith("ami-")


def test_throttling_is_retried_by_botocore_standard_mode(account):
    _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded", count=1)
    with aws_error("RequestLimitExceeded"):
        account.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])

    rule = _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded", count=2)
    response = account.client("ec2", config=STANDARD_RETRY_5).describe_images(Owners=["self"])
    assert response["Images"] == []
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert _rules(account)[rule["id"]]["fired"] == 2

    s3 = account.client("s3", config=STANDARD_RETRY_5)
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    _add(account, service="s3", action="GetObject", status=503, code="SlowDown", message="Please reduce your request rate.", count=1)
    with aws_error("SlowDown", "Please reduce your request rate."):
        account.client("s3", config=NO_RETRY).get_object(Bucket=bucket, Key="k")
    _add(account, service="s3", action="GetObject", status=503, code="SlowDown", count=2)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"abc"


def test_query_protocol_errors_for_sts_and_sns(account):
    _add(account, service="sts", action="GetCallerIdentity", status=403, code="AccessDenied", message="no sts")
    _add(account, service="sns", action="CreateTopic", status=400, code="AuthorizationError", message="no sns")
    _add(account, service="sns", action="ListTopics", status=503, code="ThrottlingException", count=1)

    with aws_error("AccessDenied", "no sts") as error:
        account.client("sts", config=NO_RETRY).get_caller_identity()
    assert error["Type"] == "Sender"
    sns = account.client("sns", config=NO_RETRY)
    with aws_error("AuthorizationError", "no sns"):
        sns.create_topic(Name="t")
    with aws_error("ThrottlingException") as error:
        sns.list_topics()
    assert error["Type"] == "Receiver"
    assert sns.list_topics()["Topics"] == []


def test_bad_rules_are_rejected(account):
    base = {"account_id": account.id, "service": "ec2", "code": "UnauthorizedOperation"}
    for bad in (
        {"code": None},
        {"service": ""},
        {"status": 200},
        {"status": "x"},
        {"count": 0},
        {"resource": ""},
        {"colour": "red"},
        {"account_id": "12"},
    ):
        status, body = account.control("faults", {**base, **bad})
        assert status == 400, (bad, body)
    assert _rules(account) == {}


def test_moto_reset_clears_rules(emulator, account):
    _add(account, service="ec2", action="DescribeImages", status=403, code="UnauthorizedOperation")
    with aws_error("UnauthorizedOperation"):
        account.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])

    request = urllib.request.Request(f"{emulator}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback only)
        assert response.status == 200
    assert _rules(account) == {}
    again = Account(emulator, account.id)  # the reset also dropped the assumed-role keys
    assert again.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])["Images"] == []
