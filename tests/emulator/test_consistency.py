"""Eventual consistency of images, snapshots and tags, opt-in per account through
/ami-pipeline-emulator/consistency.

What AWS does ("Eventual consistency in the Amazon EC2 API",
https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html, and the DescribeImages
reference): "the result of an API command you run that creates or modifies resources might not be
immediately available to all subsequent commands you run"; describing a resource just created
can answer that it does not exist (InvalidAMIID.NotFound, InvalidSnapshot.NotFound); a tag just
written or deleted may not be reflected yet. Calls that change things see the current state: a
name already taken is refused (InvalidAMIName.Duplicate) even while its holder is not listed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import Account
from emu_helpers import aws_error, make_snapshot, register, tags_of, wait_for

LAG = 3.0  # seconds; the checks made while a change is not visible yet must fit in it (on a loaded machine too)


def _lag(account: Account, seconds: float | None) -> dict[str, Any]:
    status, body = account.control("consistency", {"account_id": account.id, "lag_seconds": seconds})
    assert status == 200, body
    return body


def _image_ids(ec2: Any, **kwargs: Any) -> set[str]:
    return {i["ImageId"] for i in ec2.describe_images(Owners=["self"], **kwargs)["Images"]}


def _snapshot_ids(ec2: Any, **kwargs: Any) -> set[str]:
    return {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], **kwargs)["Snapshots"]}


def _tag_filter(key: str, value: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{key}", "Values": [value]}]


def _described_tags(ec2: Any, resource_id: str) -> dict[str, str]:
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]
    return {t["Key"]: t["Value"] for t in tags}


def test_off_by_default(account: Account) -> None:
    status, body = account.control(f"consistency?account_id={account.id}", method="GET")
    assert status == 200 and body == {"account_id": account.id, "lag_seconds": 0.0}, body
    ec2 = account.ec2()
    snapshot = make_snapshot(ec2)
    assert snapshot in _snapshot_ids(ec2)
    image_id = register(ec2, "consistent-at-once", snapshot, TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "k", "Value": "v"}]}])
    assert image_id in _image_ids(ec2, Filters=_tag_filter("k", "v"))


def test_new_image_is_invisible_until_the_lag_has_passed(account: Account) -> None:
    ec2 = account.ec2()
    snapshot = make_snapshot(ec2)
    old = register(ec2, "before-the-lag", snapshot)
    assert _lag(account, LAG) == {"account_id": account.id, "lag_seconds": LAG}
    created = time.monotonic()
    image_id = register(
        ec2, "just-registered", snapshot, TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "k", "Value": "v"}]}]
    )

    assert _image_ids(ec2) == {old}
    assert _image_ids(ec2, Filters=[{"Name": "name", "Values": ["just-registered"]}]) == set()
    with aws_error("InvalidAMIID.NotFound"):
        ec2.describe_images(ImageIds=[image_id])
    with aws_error("InvalidAMIID.NotFound"):
        ec2.describe_images(ImageIds=[old, image_id])
    assert ec2.describe_images(ImageIds=[old])["Images"][0]["ImageId"] == old

    wait_for(lambda: image_id in _image_ids(ec2), timeout=5 * LAG, interval=0.05)
    assert time.monotonic() - created >= LAG * 0.9
    shown = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert tags_of(shown) == {"k": "v"}  # tags given at creation arrive with the image
    assert _image_ids(ec2, Filters=_tag_filter("k", "v")) == {image_id}


def test_changes_stay_strongly_consistent_while_invisible(account: Account) -> None:
    ec2 = account.ec2()
    snapshot = make_snapshot(ec2)
    _lag(account, LAG)
    image_id = register(ec2, "name-taken", snapshot)
    assert image_id not in _image_ids(ec2)
    # The name is taken although DescribeImages does not show its holder yet.
    with aws_error("InvalidAMIName.Duplicate", image_id):
        register(ec2, "name-taken", snapshot)
    with aws_error("InvalidAMIName.Duplicate"):
        ec2.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="name-taken")
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "state", "Value": "tagged"}])
    ec2.deregister_image(ImageId=image_id)
    time.sleep(LAG + 0.1)
    assert image_id not in _image_ids(ec2)
    assert register(ec2, "name-taken", snapshot).startswith("ami-")


def test_tag_written_is_seen_after_the_lag(account: Account) -> None:
    ec2 = account.ec2()
    image_id = register(ec2, "tag-me", make_snapshot(ec2))
    _lag(account, LAG)
    written = time.monotonic()  # before the write: it is visible LAG after EC2 took it, at the earliest
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "stage", "Value": "ready"}])

    assert tags_of(ec2.describe_images(ImageIds=[image_id])["Images"][0]) == {}
    assert _image_ids(ec2, Filters=_tag_filter("stage", "ready")) == set()
    assert _image_ids(ec2, Filters=[{"Name": "tag-key", "Values": ["stage"]}]) == set()
    assert _described_tags(ec2, image_id) == {}

    wait_for(lambda: _image_ids(ec2, Filters=_tag_filter("stage", "ready")) == {image_id}, timeout=5 * LAG, interval=0.05)
    assert time.monotonic() - written >= LAG - 0.01  # (two clocks)
    assert tags_of(ec2.describe_images(ImageIds=[image_id])["Images"][0]) == {"stage": "ready"}
    assert _described_tags(ec2, image_id) == {"stage": "ready"}


def test_tag_overwritten_and_deleted_show_the_previous_value(account: Account) -> None:
    ec2 = account.ec2()
    image_id = register(
        ec2, "retag-me", make_snapshot(ec2), TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "stage", "Value": "old"}, {"Key": "keep", "Value": "1"}]}]
    )
    _lag(account, LAG)
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "stage", "Value": "new"}])
    ec2.delete_tags(Resources=[image_id], Tags=[{"Key": "keep"}])

    assert tags_of(ec2.describe_images(ImageIds=[image_id])["Images"][0]) == {"stage": "old", "keep": "1"}
    assert _image_ids(ec2, Filters=_tag_filter("stage", "old")) == {image_id}
    assert _image_ids(ec2, Filters=_tag_filter("stage", "new")) == set()
    assert _image_ids(ec2, Filters=[{"Name": "tag-key", "Values": ["keep"]}]) == {image_id}
    assert _described_tags(ec2, image_id) == {"stage": "old", "keep": "1"}

    wait_for(lambda: _image_ids(ec2, Filters=_tag_filter("stage", "new")) == {image_id}, timeout=5 * LAG, interval=0.05)
    # The deletion was written after the overwrite, so it may become visible a moment later.
    wait_for(lambda: _image_ids(ec2, Filters=[{"Name": "tag-key", "Values": ["keep"]}]) == set(), timeout=5 * LAG, interval=0.05)
    assert tags_of(ec2.describe_images(ImageIds=[image_id])["Images"][0]) == {"stage": "new"}
    assert _image_ids(ec2, Filters=[{"Name": "tag-key", "Values": ["keep"]}]) == set()
    assert _described_tags(ec2, image_id) == {"stage": "new"}


def test_snapshots_lag_too(account: Account) -> None:
    ec2 = account.ec2()
    old = make_snapshot(ec2)
    _lag(account, LAG)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    new = ec2.create_snapshot(
        VolumeId=volume, TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "k", "Value": "v"}]}]
    )["SnapshotId"]
    ec2.create_tags(Resources=[old], Tags=[{"Key": "k", "Value": "v"}])

    assert _snapshot_ids(ec2) == {old}
    with aws_error("InvalidSnapshot.NotFound", new):
        ec2.describe_snapshots(SnapshotIds=[new])
    assert _snapshot_ids(ec2, Filters=_tag_filter("k", "v")) == set()
    assert tags_of(ec2.describe_snapshots(SnapshotIds=[old])["Snapshots"][0]) == {}
    assert _described_tags(ec2, old) == {}

    wait_for(lambda: _snapshot_ids(ec2) == {old, new}, timeout=5 * LAG, interval=0.05)
    # The tag on `old` was written after `new` was created, so it may become visible a moment later.
    wait_for(lambda: _snapshot_ids(ec2, Filters=_tag_filter("k", "v")) == {old, new}, timeout=5 * LAG, interval=0.05)
    assert tags_of(ec2.describe_snapshots(SnapshotIds=[new])["Snapshots"][0]) == {"k": "v"}
    ec2.delete_tags(Resources=[old], Tags=[{"Key": "k"}])
    assert _snapshot_ids(ec2, Filters=_tag_filter("k", "v")) == {old, new}
    wait_for(lambda: _snapshot_ids(ec2, Filters=_tag_filter("k", "v")) == {new}, timeout=5 * LAG, interval=0.05)


def test_copy_image_and_its_snapshot_lag(account: Account) -> None:
    ec2 = account.ec2()
    source = register(ec2, "copy-source", make_snapshot(ec2))
    _lag(account, LAG)
    copy_id = ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="copy-target")["ImageId"]
    assert _image_ids(ec2) == {source}
    wait_for(lambda: copy_id in _image_ids(ec2), timeout=5 * LAG, interval=0.05)
    copied_snapshot = ec2.describe_images(ImageIds=[copy_id])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    wait_for(lambda: copied_snapshot in _snapshot_ids(ec2), timeout=5 * LAG, interval=0.05)


def test_imported_and_ebs_started_snapshots_lag(account: Account) -> None:
    ec2 = account.ec2()
    account.configure(import_delay_seconds=0)
    bucket = account.bucket()
    account.s3().put_object(Bucket=bucket, Key="disk.raw", Body=b"\0" * 4096)
    _lag(account, LAG)
    task = ec2.import_snapshot(DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": "disk.raw"}})
    detail = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task["ImportTaskId"]])["ImportSnapshotTasks"][0]
    imported = detail["SnapshotTaskDetail"]["SnapshotId"]
    assert imported.startswith("snap-")
    started = account.client("ebs").start_snapshot(VolumeSize=1)["SnapshotId"]
    for snapshot_id in (imported, started):
        with aws_error("InvalidSnapshot.NotFound"):
            ec2.describe_snapshots(SnapshotIds=[snapshot_id])
    wait_for(lambda: {imported, started} <= _snapshot_ids(ec2), timeout=5 * LAG, interval=0.05)


def test_other_accounts_are_not_affected(account: Account, other_account: Account) -> None:
    _lag(account, 30)
    ec2 = other_account.ec2()
    snapshot = make_snapshot(ec2)
    image_id = register(ec2, "elsewhere", snapshot)
    assert image_id in _image_ids(ec2)
    assert snapshot in _snapshot_ids(ec2)
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "k", "Value": "v"}])
    assert _image_ids(ec2, Filters=_tag_filter("k", "v")) == {image_id}


def test_lag_switched_off_shows_everything(account: Account) -> None:
    ec2 = account.ec2()
    snapshot = make_snapshot(ec2)
    _lag(account, 30)
    image_id = register(ec2, "hidden-for-long", snapshot)
    assert image_id not in _image_ids(ec2)
    assert _lag(account, 0)["lag_seconds"] == 0
    assert image_id in _image_ids(ec2)


@pytest.mark.parametrize("payload", [{}, {"lag_seconds": -1}, {"lag_seconds": "1"}, {"lag_seconds": 1, "extra": 1}])
def test_bad_configuration_is_refused(account: Account, payload: dict[str, Any]) -> None:
    status, body = account.control("consistency", {"account_id": account.id, **payload})
    assert status == 400, body


def test_permissions_granted_and_removed_are_read_back_after_the_lag(account: Account) -> None:
    """Launch and create-volume permissions: a change is in force at once (the image is shared
    from the call on), but DescribeImageAttribute / DescribeSnapshotAttribute list the
    permissions as they were for the lag: first none, after a grant; then the grant, after its
    removal."""
    ec2 = account.ec2()
    snapshot = make_snapshot(ec2)
    image_id = register(ec2, "permissions-lag", snapshot)
    _lag(account, LAG)

    def launch() -> list[dict[str, str]]:
        return ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]

    def volume() -> list[dict[str, str]]:
        return ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")[
            "CreateVolumePermissions"
        ]

    shared = [{"UserId": "111122223333"}]
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": shared})
    ec2.modify_snapshot_attribute(SnapshotId=snapshot, CreateVolumePermission={"Add": shared})
    assert launch() == [] and volume() == []
    # In force at once: the account sees the image as shared with it.
    assert image_id in _image_ids(ec2, ExecutableUsers=["111122223333"])
    wait_for(lambda: launch() == shared and volume() == shared, timeout=LAG + 5)

    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Remove": shared})
    ec2.modify_snapshot_attribute(SnapshotId=snapshot, CreateVolumePermission={"Remove": shared})
    assert launch() == shared and volume() == shared
    wait_for(lambda: launch() == [] and volume() == [], timeout=LAG + 5)

    # Without the lag, reads are current at once.
    _lag(account, 0)
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": shared})
    assert launch() == shared
