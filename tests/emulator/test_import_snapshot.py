"""ImportSnapshot / DescribeImportSnapshotTasks (moto: not implemented, HTTP 500)."""

from __future__ import annotations

import time

import pytest

from emu_helpers import (
    GIB,
    SERVER_IMPORT_DELAY,
    TASK_ID_RE,
    aws_error,
    raw_disk,
    tags_of,
    vhd_disk,
    vmdk_disk,
    wait_for,
)


def _import(ec2, bucket, key, fmt="RAW", **kwargs):
    return ec2.import_snapshot(
        DiskContainer={"Format": fmt, "UserBucket": {"S3Bucket": bucket, "S3Key": key}}, **kwargs
    )


def _task(ec2, task_id):
    tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
    assert len(tasks) == 1
    return tasks[0]


def test_raw_import_creates_real_snapshot(account):
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disks/root.raw", Body=raw_disk(3 * 1024 * 1024 + 7))

    started = _import(
        ec2,
        bucket,
        "disks/root.raw",
        fmt="RAW",
        Description="pipeline import",
        RoleName="vmimport-custom",
        TagSpecifications=[
            {"ResourceType": "import-snapshot-task", "Tags": [{"Key": "lineage", "Value": "abc"}]}
        ],
    )
    task_id = started["ImportTaskId"]
    assert TASK_ID_RE.match(task_id), task_id
    assert started["Description"] == "pipeline import"
    detail = started["SnapshotTaskDetail"]
    assert detail["Status"] == "active"
    assert detail["StatusMessage"] == "pending"
    assert detail["Progress"] == "3"
    assert detail["Format"] == "RAW"
    assert detail["DiskImageSize"] == 0.0
    assert detail["UserBucket"] == {"S3Bucket": bucket, "S3Key": "disks/root.raw"}
    assert tags_of(started) == {"lineage": "abc"}

    task = _task(ec2, task_id)  # delay 0: completes at the first describe
    detail = task["SnapshotTaskDetail"]
    assert detail["Status"] == "completed"
    assert "Progress" not in detail and "StatusMessage" not in detail
    assert detail["DiskImageSize"] == float(3 * 1024 * 1024 + 7)
    assert tags_of(task) == {"lineage": "abc"}
    snapshot_id = detail["SnapshotId"]
    assert snapshot_id.startswith("snap-")

    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snapshot["VolumeSize"] == 1  # 3 MiB rounds up to 1 GiB
    assert snapshot["State"] == "completed"
    assert snapshot["OwnerId"] == account.id
    assert snapshot["VolumeId"] == "vol-ffffffff"
    assert snapshot["Description"] == f"Created by AWS-VMImport service for {task_id}"
    assert snapshot["Encrypted"] is False


@pytest.mark.parametrize(
    "fmt, body, expected_gib",
    [
        ("vmdk", vmdk_disk(3 * GIB + 512), 4),
        ("VMDK", vmdk_disk(8 * GIB), 8),
        ("Vhd", vhd_disk(2 * GIB), 2),
        ("vhd", vhd_disk(10 * GIB + 1), 11),
        ("raw", raw_disk(1), 1),
    ],
    ids=["vmdk-3GiB+512", "VMDK-8GiB", "Vhd-2GiB", "vhd-10GiB+1", "raw-1byte"],
)
def test_virtual_size_of_each_format(account, fmt, body, expected_gib):
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disk.img", Body=body)
    task_id = _import(ec2, bucket, "disk.img", fmt=fmt)["ImportTaskId"]
    detail = _task(ec2, task_id)["SnapshotTaskDetail"]
    assert detail["Status"] == "completed", detail
    assert detail["Format"] == fmt.upper()
    assert detail["DiskImageSize"] == float(len(body))
    snapshot = ec2.describe_snapshots(SnapshotIds=[detail["SnapshotId"]])["Snapshots"][0]
    assert snapshot["VolumeSize"] == expected_gib


def test_task_stays_active_until_delay_passes(account):
    account.configure(import_delay_seconds=1.5)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="a.raw", Body=raw_disk(4096))
    started_at = time.monotonic()
    task_id = _import(ec2, bucket, "a.raw")["ImportTaskId"]

    detail = _task(ec2, task_id)["SnapshotTaskDetail"]
    assert detail["Status"] == "active"
    assert detail["SnapshotId"] == ""  # AWS returns an empty string while running
    assert 3 <= int(detail["Progress"]) <= 99
    assert detail["StatusMessage"] in ("pending", "downloading/converting")
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []

    time.sleep(max(0.0, 0.9 - (time.monotonic() - started_at)))
    detail = _task(ec2, task_id)["SnapshotTaskDetail"]
    if time.monotonic() - started_at < 1.4:
        assert detail["Status"] == "active"
        assert detail["StatusMessage"] == "downloading/converting"
        assert detail["DiskImageSize"] == 4096.0

    detail = wait_for(
        lambda: (d := _task(ec2, task_id)["SnapshotTaskDetail"])["Status"] == "completed" and d,
        timeout=10,
    )
    assert time.monotonic() - started_at >= 1.5
    assert detail["SnapshotId"].startswith("snap-")
    assert [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]] == [
        detail["SnapshotId"]
    ]


def test_server_default_delay_comes_from_environment(account):
    status, body = account.control("config?account_id=" + account.id, method="GET")
    assert status == 200
    assert body["import_delay_seconds"] == SERVER_IMPORT_DELAY
    assert body["copy_delay_seconds"] == 0.0


@pytest.mark.parametrize(
    "setup, fmt, key, message",
    [
        ("no-bucket", "RAW", "x.raw", "ClientError: Unknown object: s3://{bucket}/x.raw"),
        ("no-key", "RAW", "missing.raw", "ClientError: Unknown object: s3://{bucket}/missing.raw"),
        ("empty", "RAW", "empty.raw", "ClientError: Disk validation failed [Empty disk image]"),
        ("not-vmdk", "VMDK", "fake.vmdk", "ClientError: Disk validation failed [Unsupported VMDK File Format]"),
        ("not-vhd", "VHD", "fake.vhd", "ClientError: Disk validation failed [Invalid VHD footer]"),
    ],
    ids=["no-bucket", "no-key", "empty", "not-vmdk", "not-vhd"],
)
def test_failed_imports_end_deleted_with_client_error(account, setup, fmt, key, message):
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    if setup == "no-bucket":
        bucket = f"amiemu-{account.id}-absent"
    else:
        bucket = account.bucket()
        if setup == "empty":
            s3.put_object(Bucket=bucket, Key=key, Body=b"")
        elif setup == "not-vmdk":
            s3.put_object(Bucket=bucket, Key=key, Body=b"# Disk DescriptorFile\nversion=1\n" * 40)
        elif setup == "not-vhd":
            s3.put_object(Bucket=bucket, Key=key, Body=raw_disk(4096))
    task_id = _import(ec2, bucket, key, fmt=fmt)["ImportTaskId"]
    detail = _task(ec2, task_id)["SnapshotTaskDetail"]
    assert detail["Status"] == "deleted"
    assert detail["StatusMessage"] == message.format(bucket=bucket)
    assert not detail.get("SnapshotId")
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def test_object_deleted_before_completion_fails_the_task(account):
    account.configure(import_delay_seconds=0.5)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="gone.raw", Body=raw_disk(512))
    task_id = _import(ec2, bucket, "gone.raw")["ImportTaskId"]
    s3.delete_object(Bucket=bucket, Key="gone.raw")
    time.sleep(0.6)
    detail = _task(ec2, task_id)["SnapshotTaskDetail"]
    assert detail["Status"] == "deleted"
    assert detail["StatusMessage"] == f"ClientError: Unknown object: s3://{bucket}/gone.raw"


def test_client_token_is_idempotent_per_region(account):
    account.configure(import_delay_seconds=30)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="t.raw", Body=raw_disk(512))
    first = _import(ec2, bucket, "t.raw", ClientToken="token-1")["ImportTaskId"]
    again = _import(ec2, bucket, "t.raw", ClientToken="token-1")["ImportTaskId"]
    other = _import(ec2, bucket, "t.raw", ClientToken="token-2")["ImportTaskId"]
    assert first == again
    assert other != first
    ids = {t["ImportTaskId"] for t in ec2.describe_import_snapshot_tasks()["ImportSnapshotTasks"]}
    assert ids == {first, other}
    # Tokens and tasks are per region.
    west = account.ec2("us-west-2")
    assert west.describe_import_snapshot_tasks()["ImportSnapshotTasks"] == []
    west_id = _import(west, bucket, "t.raw", ClientToken="token-1")["ImportTaskId"]
    assert west_id not in ids


def test_encrypted_import_gives_encrypted_snapshot(account):
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="e.raw", Body=raw_disk(1024))
    task_id = _import(ec2, bucket, "e.raw", Encrypted=True)["ImportTaskId"]
    detail = _task(ec2, task_id)["SnapshotTaskDetail"]
    assert detail["Status"] == "completed"
    assert detail["Encrypted"] is True
    snapshot = ec2.describe_snapshots(SnapshotIds=[detail["SnapshotId"]])["Snapshots"][0]
    assert snapshot["Encrypted"] is True
    assert snapshot["KmsKeyId"].startswith("arn:aws:kms:us-east-1:")


def test_describe_filters_pagination_and_errors(account):
    account.configure(import_delay_seconds=30)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="p.raw", Body=raw_disk(512))
    ids = []
    for index in range(7):
        batch = "b1" if index < 4 else "b2"
        tags = [{"Key": "batch", "Value": batch}]
        if index == 0:
            tags.append({"Key": "first", "Value": "yes"})
        ids.append(
            _import(
                ec2,
                bucket,
                "p.raw",
                TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tags}],
            )["ImportTaskId"]
        )

    def ids_of(response):
        return [t["ImportTaskId"] for t in response["ImportSnapshotTasks"]]

    by_tag = ec2.describe_import_snapshot_tasks(Filters=[{"Name": "tag:batch", "Values": ["b1"]}])
    assert sorted(ids_of(by_tag)) == sorted(ids[:4])
    by_key = ec2.describe_import_snapshot_tasks(Filters=[{"Name": "tag-key", "Values": ["first"]}])
    assert ids_of(by_key) == [ids[0]]

    page1 = ec2.describe_import_snapshot_tasks(MaxResults=3)
    page2 = ec2.describe_import_snapshot_tasks(MaxResults=3, NextToken=page1["NextToken"])
    page3 = ec2.describe_import_snapshot_tasks(MaxResults=3, NextToken=page2["NextToken"])
    assert [len(ids_of(p)) for p in (page1, page2, page3)] == [3, 3, 1]
    assert "NextToken" not in page3
    assert ids_of(page1) + ids_of(page2) + ids_of(page3) == ids  # creation order, no repeats

    paginator = ec2.get_paginator("describe_import_snapshot_tasks")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 2}))
    assert len(pages) == 4
    assert [t for p in pages for t in ids_of(p)] == ids

    with aws_error("InvalidConversionTaskId.Malformed"):
        ec2.describe_import_snapshot_tasks(ImportTaskIds=["import-snap-0123456789abcdef0"])
    with aws_error("InvalidConversionTaskId.Malformed"):
        ec2.describe_import_snapshot_tasks(ImportTaskIds=["bogus"])
    with aws_error("InvalidParameterValue", "no-such-filter"):
        ec2.describe_import_snapshot_tasks(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    with aws_error("InvalidPaginationToken"):
        ec2.describe_import_snapshot_tasks(MaxResults=3, NextToken="garbage")


def test_tasks_are_isolated_per_account(account, other_account):
    account.configure(import_delay_seconds=30)
    bucket = account.bucket()
    account.s3().put_object(Bucket=bucket, Key="i.raw", Body=raw_disk(512))
    task_id = _import(account.ec2(), bucket, "i.raw")["ImportTaskId"]
    assert other_account.ec2().describe_import_snapshot_tasks()["ImportSnapshotTasks"] == []
    with aws_error("InvalidConversionTaskId.Malformed"):
        other_account.ec2().describe_import_snapshot_tasks(ImportTaskIds=[task_id])


def test_invalid_requests(account):
    ec2 = account.ec2()
    with aws_error("InvalidParameterValue"):
        _import(ec2, "b", "k", fmt="QCOW2")
    with aws_error("InvalidParameterValue", "not a valid taggable resource type"):
        _import(
            ec2,
            "b",
            "k",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "a", "Value": "b"}]}],
        )
    with aws_error("InvalidParameter"):
        ec2.import_snapshot(DiskContainer={"Format": "RAW"})
