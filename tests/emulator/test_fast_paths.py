"""The speed-only paths answer as the slow ones did.

* The snapshot -> images index of the ``amis`` store (``ami_emulator.image_index``):
  DeleteSnapshot's ``InvalidSnapshot.InUse`` and DeregisterImage's ``skipped`` answer as the scan
  over every image did, through every way an image enters or leaves the store.
* ``ami_emulator.fast_dispatch``: moto's "is the action a method of the response class" test."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Account
from emu_helpers import aws_error, make_snapshot, register


def _mapping(*snapshots: str) -> list[dict[str, Any]]:
    return [{"DeviceName": f"/dev/xvd{chr(ord('a') + n)}", "Ebs": {"SnapshotId": s}} for n, s in enumerate(snapshots)]


def test_in_use_names_the_first_registered_user_until_each_is_gone(account: Account) -> None:
    ec2 = account.ec2()
    shared = make_snapshot(ec2, 1)
    first = register(ec2, "idx-first", shared)
    second = register(ec2, "idx-second", shared)
    third = ec2.register_image(Name="idx-third", RootDeviceName="/dev/xvda", BlockDeviceMappings=_mapping(shared, shared))[
        "ImageId"
    ]
    for user in (first, second, third):
        # The message names an image that still uses it: the oldest registration left.
        with aws_error("InvalidSnapshot.InUse", f"The snapshot {shared} is currently in use by {user}"):
            ec2.delete_snapshot(SnapshotId=shared)
        ec2.deregister_image(ImageId=user)
    ec2.delete_snapshot(SnapshotId=shared)


def test_a_snapshot_is_reported_once_per_deregistration_and_freed_by_the_last_user(account: Account) -> None:
    ec2 = account.ec2()
    shared, own = make_snapshot(ec2, 1), make_snapshot(ec2, 1)
    twice = ec2.register_image(Name="idx-twice", RootDeviceName="/dev/xvda", BlockDeviceMappings=_mapping(shared, own, shared))[
        "ImageId"
    ]
    other = register(ec2, "idx-other", shared)
    result = ec2.deregister_image(ImageId=twice, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [
        {"SnapshotId": shared, "ReturnCode": "skipped"},
        {"SnapshotId": own, "ReturnCode": "success"},
    ]
    result = ec2.deregister_image(ImageId=other, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "success"}]
    assert not ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]


def test_copied_images_and_images_baked_from_instances_protect_their_snapshots(account: Account) -> None:
    ec2 = account.ec2()
    source = register(ec2, "idx-source", make_snapshot(ec2, 1))
    copy_id = ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="idx-copy")["ImageId"]
    (copied,) = ec2.describe_images(ImageIds=[copy_id])["Images"]
    copy_snapshot = copied["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    with aws_error("InvalidSnapshot.InUse", copy_id):
        ec2.delete_snapshot(SnapshotId=copy_snapshot)

    # moto's own Ami (CreateImage from an instance) with the snapshot it makes for the image.
    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    baked = ec2.create_image(InstanceId=instance["InstanceId"], Name="idx-baked")["ImageId"]
    (image,) = ec2.describe_images(ImageIds=[baked])["Images"]
    baked_snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    with aws_error("InvalidSnapshot.InUse", baked):
        ec2.delete_snapshot(SnapshotId=baked_snapshot)
    result = ec2.deregister_image(ImageId=baked, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": baked_snapshot, "ReturnCode": "success"}]


def test_the_index_holds_while_eventual_consistency_is_on(account: Account) -> None:
    status, body = account.control("consistency", {"account_id": account.id, "lag_seconds": 30})
    assert status == 200, body
    try:
        ec2 = account.ec2()
        snap = make_snapshot(ec2, 1)
        image_id = register(ec2, "idx-lagged", snap)  # not visible to DescribeImages yet
        with aws_error("InvalidSnapshot.InUse", image_id):
            ec2.delete_snapshot(SnapshotId=snap)
        result = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
        assert result["DeleteSnapshotResults"] == [{"SnapshotId": snap, "ReturnCode": "success"}]
    finally:
        account.control("consistency", {"account_id": account.id, "lag_seconds": 0})


class _Image:
    """Just what the index reads: an id and block device mappings."""

    def __init__(self, image_id: str, *snapshots: str) -> None:
        self.id = image_id
        self._bdm = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": s}} for s in snapshots]


@pytest.mark.parametrize("cls_name", ["SnapshotIndexedImages", "ImageCreationLog"])
def test_every_write_of_the_store_keeps_the_index(cls_name: str) -> None:
    from ami_emulator import consistency, image_index

    def make(initial: dict[str, Any]) -> Any:
        if cls_name == "ImageCreationLog":
            return consistency.ImageCreationLog(initial, "123456789012")
        return image_index.SnapshotIndexedImages(initial)

    store = make({"ami-1": _Image("ami-1", "snap-a", "snap-b")})
    assert store.images_using("snap-a") == ["ami-1"]
    store["ami-2"] = _Image("ami-2", "snap-a")
    store.setdefault("ami-3", _Image("ami-3", "snap-c"))
    store.update({"ami-4": _Image("ami-4", "snap-a")})
    assert store.images_using("snap-a") == ["ami-1", "ami-2", "ami-4"]
    store["ami-2"] = _Image("ami-2", "snap-d")  # replaced: its old mapping is forgotten
    assert store.images_using("snap-a") == ["ami-1", "ami-4"]
    assert store.images_using("snap-d") == ["ami-2"]
    store.pop("ami-1")
    del store["ami-4"]
    assert store.images_using("snap-a") == []
    assert store.pop("ami-9", None) is None
    assert store.images_using("snap-c") == ["ami-3"]
    store.popitem()  # ami-3, the last stored
    assert store.images_using("snap-c") == []
    store.clear()
    assert store.images_using("snap-d") == [] and dict(store) == {}


def test_dispatch_method_names_answer_as_moto_lists_them() -> None:
    """``fast_dispatch.method_names_from_class``: ``in`` agrees with moto's list of the class's
    function members (``inspect.getmembers``) for every member name and a few non-members."""
    import inspect

    from moto.ec2.responses import EC2Response

    from ami_emulator import apply_extensions, fast_dispatch

    apply_extensions()
    listed = [name for name, _ in inspect.getmembers(EC2Response, predicate=inspect.isfunction)]
    names = fast_dispatch.method_names_from_class(EC2Response)
    assert list(names) == listed and len(names) == len(listed)
    assert "describe_image_references" in listed  # an extension's handler
    for name in dir(EC2Response) + ["no_such_action", "mro", "__class__", ""]:
        assert (name in names) == (name in listed), name
