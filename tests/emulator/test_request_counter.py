"""Per-account AWS request counts through /ami-pipeline-emulator/requests (plain moto: no such
endpoint). Every request on the wire counts once under "<service>:<action>" of the account
moto serves it from: each page of a paginated call, each retry, faulted requests too."""

from __future__ import annotations

import random
import time
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

from conftest import Account
from emu_helpers import aws_error, make_snapshot, register

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
STANDARD_RETRY_5 = Config(retries={"max_attempts": 5, "mode": "standard"})


def _counts(account: Account, account_id: str | None = None) -> dict[str, Any]:
    """The account's counts (the server CPU beside them checked for shape and taken out; see
    ``_cpu``)."""
    body = _counts_and_cpu(account, account_id)
    cpu = body.pop("cpu_seconds")
    assert set(cpu) <= set(body["requests"]) and all(seconds >= 0 for seconds in cpu.values()), body
    assert abs(body.pop("cpu_total_seconds") - sum(cpu.values())) < 1e-5
    return body


def _counts_and_cpu(account: Account, account_id: str | None = None) -> dict[str, Any]:
    account_id = account_id or account.id
    status, body = account.control(f"requests?account_id={account_id}", method="GET")
    assert status == 200, body
    assert body["account_id"] == account_id
    assert body["total"] == sum(body["requests"].values())
    return body


def _clear(account: Account, account_id: str | None = None) -> int:
    account_id = account_id or account.id
    status, body = account.control(f"requests?account_id={account_id}", method="DELETE")
    assert status == 200, body
    assert body["account_id"] == account_id
    return int(body["cleared"])


def test_counts_per_action_in_one_account_only(account, other_account):
    ec2 = account.ec2()
    other_ec2 = other_account.ec2()
    other_ec2.describe_images(Owners=["self"])
    assert _counts(account) == {"account_id": account.id, "requests": {}, "total": 0}

    snapshot_id = make_snapshot(ec2, 1)  # CreateVolume, CreateSnapshot, DeleteVolume
    for _ in range(3):
        assert ec2.describe_images(Owners=["self"])["Images"] == []
    ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": "team", "Value": "ami"}])

    assert _counts(account) == {
        "account_id": account.id,
        "requests": {
            "ec2:CreateSnapshot": 1,
            "ec2:CreateTags": 1,
            "ec2:CreateVolume": 1,
            "ec2:DeleteVolume": 1,
            "ec2:DescribeImages": 3,
        },
        "total": 7,
    }
    assert _counts(other_account)["requests"] == {"ec2:DescribeImages": 1}

    # Reading the counts is no AWS request and changes nothing.
    assert _counts(account)["total"] == 7

    assert _clear(account) == 7
    assert _counts(account) == {"account_id": account.id, "requests": {}, "total": 0}
    assert _clear(account) == 0
    assert _counts(other_account)["requests"] == {"ec2:DescribeImages": 1}  # untouched

    ec2.describe_images(Owners=["self"])
    assert _counts(account)["requests"] == {"ec2:DescribeImages": 1}


def test_paged_describe_images_counts_one_request_per_page(account):
    ec2 = account.ec2()
    snapshot_id = make_snapshot(ec2, 1)
    for i in range(5):
        register(ec2, f"counted-{i}", snapshot_id)
    assert _counts(account)["requests"]["ec2:RegisterImage"] == 5
    assert _clear(account) == 8  # 3 for the snapshot, 5 RegisterImage

    paginator = ec2.get_paginator("describe_images")
    pages = list(paginator.paginate(Owners=["self"], PaginationConfig={"PageSize": 2}))
    assert [len(page["Images"]) for page in pages] == [2, 2, 1]
    assert _counts(account)["requests"] == {"ec2:DescribeImages": 3}

    page = ec2.describe_images(Owners=["self"], MaxResults=5)
    assert len(page["Images"]) == 5 and "NextToken" not in page
    assert _counts(account)["requests"] == {"ec2:DescribeImages": 4}


def test_faulted_requests_and_retries_are_counted(account):
    status, rule = account.control(
        "faults",
        {
            "account_id": account.id,
            "service": "ec2",
            "action": "DescribeImages",
            "status": 503,
            "code": "RequestLimitExceeded",
            "count": 3,
        },
    )
    assert status == 200, rule

    with aws_error("RequestLimitExceeded"):
        account.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])
    assert _counts(account)["requests"] == {"ec2:DescribeImages": 1}

    # One SDK call, two more faulted attempts, then moto answers: three requests on the wire.
    answer = account.client("ec2", config=STANDARD_RETRY_5).describe_images(Owners=["self"])
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert _counts(account) == {"account_id": account.id, "requests": {"ec2:DescribeImages": 4}, "total": 4}


def test_other_services_are_counted_by_their_action(account):
    sns = account.client("sns")
    topic = sns.create_topic(Name="counted")["TopicArn"]
    sns.publish(TopicArn=topic, Message="hello")
    sns.publish(TopicArn=topic, Message="again")

    s3 = account.s3()
    bucket = account.bucket("counted")  # CreateBucket
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=b"\0" * 1024)
    s3.head_object(Bucket=bucket, Key="disk.raw")
    assert s3.get_object(Bucket=bucket, Key="disk.raw")["Body"].read() == b"\0" * 1024
    s3.list_objects_v2(Bucket=bucket)

    sqs = account.client("sqs")
    queue = sqs.create_queue(QueueName="counted")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="hello")

    account.client("sts").get_caller_identity()  # assumed-role keys: this account

    assert _counts(account) == {
        "account_id": account.id,
        "requests": {
            "s3:CreateBucket": 1,
            "s3:GetObject": 1,
            "s3:HeadObject": 1,
            "s3:ListObjectsV2": 1,
            "s3:PutObject": 1,
            "sns:CreateTopic": 1,
            "sns:Publish": 2,
            "sqs:CreateQueue": 1,
            "sqs:SendMessage": 1,
            "sts:GetCallerIdentity": 1,
        },
        "total": 11,
    }


def _header_client(endpoint: str, account_id: str) -> Any:
    """An EC2 client with plain keys that names its account in the x-moto-account-id header."""
    client = boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRY,
    )

    def add_header(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = account_id

    client.meta.events.register("before-sign.ec2.*", add_header)
    return client


def test_header_account_and_control_routes(emulator, account):
    header_account = str(random.SystemRandom().randint(10**11, 10**12 - 1))
    ec2 = _header_client(emulator, header_account)
    ec2.describe_images(Owners=["self"])
    ec2.describe_images(Owners=["self"])
    ec2.describe_snapshots(OwnerIds=["self"])
    assert _counts(account, header_account)["requests"] == {
        "ec2:DescribeImages": 2,
        "ec2:DescribeSnapshots": 1,
    }

    # Neither the emulator's control routes nor moto's /moto-api/ count, whatever the header says.
    for path in (
        "/ami-pipeline-emulator/health",
        f"/ami-pipeline-emulator/requests?account_id={header_account}",
        "/moto-api/config",  # moto answers GET with 201
    ):
        request = urllib.request.Request(emulator + path, headers={"x-moto-account-id": header_account})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback only)
            assert response.status in (200, 201)
    assert _counts(account, header_account)["total"] == 3
    assert _counts(account)["total"] == 0
    assert _clear(account, header_account) == 3


def test_bad_requests(account):
    for query in ("account_id=12", "account_id=abcdefghijkl"):
        status, body = account.control(f"requests?{query}", method="GET")
        assert status == 400, body
        status, body = account.control(f"requests?{query}", method="DELETE")
        assert status == 400, body
    status, body = account.control("requests", {"account_id": account.id}, method="POST")
    assert status == 405, body


def test_default_account_when_no_account_id(account):
    status, body = account.control("requests", method="GET")
    assert status == 200, body
    assert body["account_id"] == "123456789012"


def test_moto_reset_clears_counts(emulator, account, other_account):
    account.ec2().describe_images(Owners=["self"])
    other_account.ec2().describe_images(Owners=["self"])
    assert _counts(account)["total"] == 1 and _counts(other_account)["total"] == 1

    request = urllib.request.Request(f"{emulator}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback only)
        assert response.status == 200
    assert _counts(account)["total"] == 0
    assert _counts(other_account)["total"] == 0
    assert _counts(account, "123456789012")["total"] == 0  # the fixtures' AssumeRole calls too

    again = Account(emulator, account.id)  # the reset also dropped the assumed-role keys
    again.ec2().describe_images(Owners=["self"])
    assert _counts(again)["requests"] == {"ec2:DescribeImages": 1}
    assert _counts(again, "123456789012")["requests"] == {"sts:AssumeRole": 1}


def test_the_server_cpu_of_each_request_goes_to_its_account_and_action(account, other_account):
    """Each request's server CPU time is added to its account and action: some for every action
    called, never more than the client waited for its answers (the server works on a request
    only between its arrival and its answer), nothing for another account, and cleared with the
    counts."""
    _clear(account)
    _clear(other_account)
    ec2 = account.ec2()
    make_snapshot(ec2, 1)
    waited = 0.0
    for _ in range(20):
        start = time.perf_counter()
        ec2.describe_images(Owners=["self"])
        ec2.describe_snapshots(OwnerIds=["self"])
        waited += time.perf_counter() - start
    body = _counts_and_cpu(account)
    cpu = body["cpu_seconds"]
    assert set(cpu) == set(body["requests"]) == {"ec2:CreateVolume", "ec2:CreateSnapshot", "ec2:DeleteVolume", "ec2:DescribeImages", "ec2:DescribeSnapshots"}
    assert all(seconds > 0 for seconds in cpu.values()), cpu
    assert cpu["ec2:DescribeImages"] + cpu["ec2:DescribeSnapshots"] <= waited, (cpu, waited)
    assert _counts_and_cpu(other_account)["cpu_seconds"] == {}
    _clear(account)
    assert _counts_and_cpu(account)["cpu_seconds"] == {}
