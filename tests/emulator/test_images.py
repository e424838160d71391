"""DescribeImages paging, CopyImage, deprecation, block public access, image attributes,
deregistration protection and the image control endpoints."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request

import pytest

from emu_helpers import aws_error, image, make_snapshot, register, tags_of, wait_for


def _utc(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------- paging


def test_describe_images_pagination(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    created = {register(ec2, f"paged-{i}", snap) for i in range(7)}

    page1 = ec2.describe_images(Owners=["self"], MaxResults=3)
    page2 = ec2.describe_images(Owners=["self"], MaxResults=3, NextToken=page1["NextToken"])
    page3 = ec2.describe_images(Owners=["self"], MaxResults=3, NextToken=page2["NextToken"])
    assert [len(p["Images"]) for p in (page1, page2, page3)] == [3, 3, 1]
    assert "NextToken" not in page3
    seen = [i["ImageId"] for p in (page1, page2, page3) for i in p["Images"]]
    assert len(seen) == 7 and set(seen) == created

    # The same query gives the same pages (stable order).
    assert [i["ImageId"] for i in ec2.describe_images(Owners=["self"], MaxResults=3)["Images"]] == [
        i["ImageId"] for i in page1["Images"]
    ]
    paginator = ec2.get_paginator("describe_images")
    pages = list(paginator.paginate(Owners=["self"], PaginationConfig={"PageSize": 2}))
    assert [len(p["Images"]) for p in pages] == [2, 2, 2, 1]
    filtered = list(
        paginator.paginate(
            Owners=["self"],
            Filters=[{"Name": "name", "Values": ["paged-[0-3]"]}],
            PaginationConfig={"PageSize": 3},
        )
    )
    assert sum(len(p["Images"]) for p in filtered) == 4
    all_at_once = ec2.describe_images(Owners=["self"])
    assert len(all_at_once["Images"]) == 7 and "NextToken" not in all_at_once
    with aws_error("InvalidPaginationToken"):
        ec2.describe_images(Owners=["self"], MaxResults=3, NextToken="not-a-token")


def test_describe_images_unknown_id_among_known_ones(account):
    ec2 = account.ec2()
    known = register(ec2, "known", make_snapshot(ec2, 1))
    with aws_error("InvalidAMIID.NotFound", "ami-0123456789abcdef0"):
        ec2.describe_images(ImageIds=[known, "ami-0123456789abcdef0"])
    with aws_error("InvalidAMIID.Malformed"):
        ec2.describe_images(ImageIds=["notanami"])


# --------------------------------------------------------------------------------- CopyImage


def test_copy_image_lineage_tags_snapshots_and_idempotency(account):
    east, west = account.ec2("us-east-1"), account.ec2("us-west-2")
    root = make_snapshot(east, 12)
    source = register(
        east,
        "to-copy",
        root,
        Architecture="arm64",
        BootMode="uefi",
        ImdsSupport="v2.0",
        Description="source image",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "lineage:id", "Value": "L1"}, {"Key": "team", "Value": "x"}]}
        ],
    )

    copy_id = west.copy_image(
        SourceImageId=source,
        SourceRegion="us-east-1",
        Name="copied",
        CopyImageTags=True,
        ClientToken="copy-token-1",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "team", "Value": "y"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "copied-from", "Value": source}]},
        ],
    )["ImageId"]
    again = west.copy_image(
        SourceImageId=source, SourceRegion="us-east-1", Name="copied", CopyImageTags=True, ClientToken="copy-token-1",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "team", "Value": "y"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "copied-from", "Value": source}]},
        ],
    )["ImageId"]
    assert again == copy_id
    assert len(west.describe_images(Owners=["self"])["Images"]) == 1
    with aws_error("InvalidAMIID.NotFound"):
        east.describe_images(ImageIds=[copy_id])  # the copy lives in the destination only

    copied = image(west, copy_id)
    assert copied["SourceImageId"] == source
    assert copied["SourceImageRegion"] == "us-east-1"
    assert copied["Name"] == "copied"
    assert copied["Architecture"] == "arm64"
    assert copied["BootMode"] == "uefi"
    assert copied["EnaSupport"] is True
    assert copied["ImdsSupport"] == "v2.0"
    assert copied["RootDeviceName"] == "/dev/xvda"
    assert copied["State"] == "available"
    assert tags_of(copied) == {"lineage:id": "L1", "team": "y"}  # TagSpecifications win over copied tags
    (mapping,) = copied["BlockDeviceMappings"]
    assert mapping["DeviceName"] == "/dev/xvda"
    new_snap = mapping["Ebs"]["SnapshotId"]
    assert new_snap != root
    assert mapping["Ebs"]["VolumeSize"] == 12 and mapping["Ebs"]["VolumeType"] == "gp3"
    snapshot = west.describe_snapshots(SnapshotIds=[new_snap])["Snapshots"][0]
    assert snapshot["VolumeSize"] == 12
    assert snapshot["OwnerId"] == account.id
    assert tags_of(snapshot) == {"copied-from": source}
    assert source in snapshot["Description"] and root in snapshot["Description"]
    with aws_error("InvalidSnapshot.InUse"):
        west.delete_snapshot(SnapshotId=new_snap)

    plain = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="copied-no-tags")["ImageId"]
    assert tags_of(image(west, plain)) == {}
    assert image(west, plain)["Description"] == "source image"
    with aws_error("InvalidAMIName.Duplicate"):
        west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="copied")
    with aws_error("IdempotentParameterMismatch"):
        west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="other", ClientToken="copy-token-1")
    with aws_error("InvalidAMIID.NotFound"):
        west.copy_image(SourceImageId="ami-0123456789abcdef0", SourceRegion="us-east-1", Name="missing-src")


def test_copy_image_into_a_region_that_encrypts_by_default(account):
    """EBS User Guide, "Copy an unencrypted snapshot (encryption by default enabled)": the copy
    of an unencrypted snapshot is encrypted, with the default KMS key for EBS unless one is
    named. So is CopyImage's copy of an unencrypted AMI; the source region is not affected."""
    east, west = account.ec2("us-east-1"), account.ec2("us-west-2")
    source = register(east, "plain-source", make_snapshot(east, 8))
    assert west.enable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    assert west.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    assert east.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False

    def snapshot_of(ec2, image_id):
        (mapping,) = image(ec2, image_id)["BlockDeviceMappings"]
        assert mapping["Ebs"]["Encrypted"] is True
        return ec2.describe_snapshots(SnapshotIds=[mapping["Ebs"]["SnapshotId"]])["Snapshots"][0]

    by_default = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="by-default")["ImageId"]
    snapshot = snapshot_of(west, by_default)
    assert snapshot["Encrypted"] is True
    kms = account.client("kms", "us-west-2")
    managed = kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]  # the default key for EBS
    assert snapshot["KmsKeyId"] in (managed["Arn"], managed["KeyId"])
    key = kms.create_key()["KeyMetadata"]["Arn"]
    named = west.copy_image(
        SourceImageId=source, SourceRegion="us-east-1", Name="named-key", Encrypted=True, KmsKeyId=key
    )["ImageId"]
    assert snapshot_of(west, named)["KmsKeyId"] == key
    (mapping,) = image(east, source)["BlockDeviceMappings"]
    assert mapping["Ebs"].get("Encrypted") is False
    west.disable_ebs_encryption_by_default()
    plain = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="plain")["ImageId"]
    (mapping,) = image(west, plain)["BlockDeviceMappings"]
    assert mapping["Ebs"]["Encrypted"] is False


def test_copy_image_of_another_accounts_public_or_shared_image(account, other_account):
    """EC2 User Guide, "Copy an Amazon EC2 AMI": an AMI shared with you (public, or a launch
    permission for your account) can be copied when its snapshots are readable by you
    (createVolumePermission); the owner's tags are not copied (CopyImageTags)."""
    owner = other_account.ec2("us-east-1")
    snap = make_snapshot(owner, 2)
    public = register(owner, "vendor-public", snap, TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "vendor", "Value": "v"}]}])
    owner.modify_image_attribute(ImageId=public, LaunchPermission={"Add": [{"Group": "all"}]})
    west = account.ec2("us-west-2")
    # The image is launchable by everyone but its snapshot is private: "access the storage".
    with aws_error("InvalidRequest", "You do not have permission to access the storage of this ami"):
        west.copy_image(SourceImageId=public, SourceRegion="us-east-1", Name="no-storage")
    owner.modify_snapshot_attribute(SnapshotId=snap, CreateVolumePermission={"Add": [{"Group": "all"}]})
    copy_id = west.copy_image(SourceImageId=public, SourceRegion="us-east-1", Name="vendor-copy", CopyImageTags=True)["ImageId"]
    copied = image(west, copy_id)
    assert copied["OwnerId"] == account.id and copied["SourceImageId"] == public
    assert tags_of(copied) == {}  # the owner's tags are not copied

    # Shared with this account only: copyable by it, invisible to a third account.
    snap2 = make_snapshot(owner, 1)
    shared = register(owner, "vendor-shared", snap2)
    owner.modify_image_attribute(ImageId=shared, LaunchPermission={"Add": [{"UserId": account.id}]})
    owner.modify_snapshot_attribute(SnapshotId=snap2, Attribute="createVolumePermission", OperationType="add", UserIds=[account.id])
    assert west.copy_image(SourceImageId=shared, SourceRegion="us-east-1", Name="shared-copy")["ImageId"].startswith("ami-")
    private = register(owner, "vendor-private", make_snapshot(owner, 1))
    with aws_error("InvalidAMIID.NotFound"):
        west.copy_image(SourceImageId=private, SourceRegion="us-east-1", Name="private-copy")
    # The owner's image is in us-east-1 only.
    with aws_error("InvalidAMIID.NotFound"):
        account.ec2("eu-west-1").copy_image(SourceImageId=public, SourceRegion="eu-west-1", Name="wrong-region")


def test_copy_is_pending_until_copy_delay_passes(account):
    account.configure(copy_delay_seconds=1.0)
    east, west = account.ec2("us-east-1"), account.ec2("us-west-2")
    source = register(east, "slow-copy-src", make_snapshot(east, 3))
    start = time.monotonic()
    copy_id = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="slow-copy")["ImageId"]
    described = image(west, copy_id)
    if time.monotonic() - start < 0.9:
        assert described["State"] == "pending"
        snap = described["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        assert west.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["State"] == "pending"
        pending = west.describe_images(Owners=["self"], Filters=[{"Name": "state", "Values": ["pending"]}])
        assert [i["ImageId"] for i in pending["Images"]] == [copy_id]
    wait_for(lambda: image(west, copy_id)["State"] == "available", timeout=10)
    assert time.monotonic() - start >= 1.0
    west.get_waiter("image_available").wait(ImageIds=[copy_id], WaiterConfig={"Delay": 1, "MaxAttempts": 5})


# ------------------------------------------------------------------------------ deprecation


def test_enable_and_disable_image_deprecation(account):
    ec2 = account.ec2()
    image_id = register(ec2, "to-deprecate", make_snapshot(ec2, 1))
    base = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)).replace(microsecond=0, tzinfo=None)

    up = base.replace(second=40)
    assert ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=up)["Return"] is True
    expected = up.replace(second=0) + dt.timedelta(minutes=1)
    assert image(ec2, image_id)["DeprecationTime"] == expected.strftime("%Y-%m-%dT%H:%M:00.000Z")

    down = base.replace(second=10)
    ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=down)
    assert image(ec2, image_id)["DeprecationTime"] == down.strftime("%Y-%m-%dT%H:%M:00.000Z")

    # DescribeImages documents no deprecation-time filter (botocore model): AWS refuses the name.
    with aws_error("InvalidParameterValue", "The filter 'deprecation-time' is invalid"):
        ec2.describe_images(Owners=["self"], Filters=[{"Name": "deprecation-time", "Values": ["*"]}])

    assert ec2.disable_image_deprecation(ImageId=image_id)["Return"] is True
    assert "DeprecationTime" not in image(ec2, image_id)

    with aws_error("InvalidParameterValue"):
        ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=dt.datetime(2001, 1, 1))
    with aws_error("InvalidParameterValue"):
        ec2.enable_image_deprecation(
            ImageId=image_id, DeprecateAt=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3660 + 5)
        )
    ec2.enable_image_deprecation(
        ImageId=image_id, DeprecateAt=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3600)
    )
    with aws_error("InvalidAMIID.NotFound"):
        ec2.enable_image_deprecation(ImageId="ami-0123456789abcdef0", DeprecateAt=up)


# ------------------------------------------------------------------- block public access


def test_image_block_public_access(account):
    ec2, west = account.ec2(), account.ec2("us-west-2")
    snap = make_snapshot(ec2, 1)
    already_public = register(ec2, "already-public", snap)
    ec2.modify_image_attribute(ImageId=already_public, LaunchPermission={"Add": [{"Group": "all"}]})
    private = register(ec2, "private", snap)

    assert ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"] == "unblocked"
    enabled = ec2.enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing")
    assert enabled["ImageBlockPublicAccessState"] == "block-new-sharing"
    assert ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"] == "block-new-sharing"
    assert west.get_image_block_public_access_state()["ImageBlockPublicAccessState"] == "unblocked"

    with aws_error("OperationNotPermitted", "block public access for AMIs is enabled"):
        ec2.modify_image_attribute(ImageId=private, LaunchPermission={"Add": [{"Group": "all"}]})
    with aws_error("OperationNotPermitted", "DisableImageBlockPublicAccess"):
        ec2.modify_image_attribute(
            ImageId=private, Attribute="launchPermission", OperationType="add", UserGroups=["all"]
        )
    assert image(ec2, private)["Public"] is False
    assert image(ec2, already_public)["Public"] is True  # existing public AMIs stay public

    # Sharing with an account is still allowed.
    ec2.modify_image_attribute(ImageId=private, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    perms = ec2.describe_image_attribute(ImageId=private, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": "111122223333"}]

    with aws_error("InvalidParameterValue"):
        ec2.enable_image_block_public_access(ImageBlockPublicAccessState="unblocked")

    disabled = ec2.disable_image_block_public_access()
    assert disabled["ImageBlockPublicAccessState"] == "unblocked"
    ec2.modify_image_attribute(ImageId=private, LaunchPermission={"Add": [{"Group": "all"}]})
    assert image(ec2, private)["Public"] is True


def test_public_images_are_held_to_the_regions_quota(account):
    """Service Quotas "Public AMIs" (L-0E3CBAB9): 5 per Region by default. The 6th image made
    public is refused with ResourceLimitExceeded and stays private; sharing it with an account
    still works; another Region counts its own; a raised quota lets it through, as does making
    one of the five private."""
    ec2, west = account.ec2(), account.ec2("us-west-2")
    assert account.configure()["public_image_quota"] == 5
    snap = make_snapshot(ec2, 1)
    public = [register(ec2, f"public-{n}", snap) for n in range(5)]
    for image_id in public:
        ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"Group": "all"}]})
    sixth = register(ec2, "sixth", snap)
    with aws_error("ResourceLimitExceeded", "You have reached your quota of 5 for the number of public images"):
        ec2.modify_image_attribute(ImageId=sixth, LaunchPermission={"Add": [{"Group": "all"}]})
    with aws_error("ResourceLimitExceeded"):
        ec2.modify_image_attribute(
            ImageId=sixth, Attribute="launchPermission", OperationType="add", UserGroups=["all"]
        )
    with aws_error("ResourceLimitExceeded"):
        # Refused as a whole: the account in the same call is not added either.
        ec2.modify_image_attribute(
            ImageId=sixth, LaunchPermission={"Add": [{"UserId": "111122223333"}, {"Group": "all"}]}
        )
    assert image(ec2, sixth)["Public"] is False
    assert ec2.describe_image_attribute(ImageId=sixth, Attribute="launchPermission")["LaunchPermissions"] == []
    ec2.modify_image_attribute(ImageId=sixth, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    # Adding "all" to an image already public is no new public image.
    ec2.modify_image_attribute(ImageId=public[0], LaunchPermission={"Add": [{"Group": "all"}]})
    # us-west-2 has a quota of its own.
    west_image = register(west, "west", make_snapshot(west, 1))
    west.modify_image_attribute(ImageId=west_image, LaunchPermission={"Add": [{"Group": "all"}]})
    # One made private frees a place; a raised quota another.
    ec2.modify_image_attribute(ImageId=public[0], LaunchPermission={"Remove": [{"Group": "all"}]})
    ec2.modify_image_attribute(ImageId=sixth, LaunchPermission={"Add": [{"Group": "all"}]})
    seventh = register(ec2, "seventh", snap)
    assert account.configure(public_image_quota=6)["public_image_quota"] == 6
    ec2.modify_image_attribute(ImageId=seventh, LaunchPermission={"Add": [{"Group": "all"}]})
    assert image(ec2, seventh)["Public"] is True


# ------------------------------------------------------------------------ image attributes


def test_describe_and_modify_image_attributes(account):
    ec2 = account.ec2()
    image_id = register(ec2, "attrs", make_snapshot(ec2, 1), Description="before")
    ec2.modify_image_attribute(ImageId=image_id, Description={"Value": "after"})
    assert image(ec2, image_id)["Description"] == "after"
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="description")["Description"]["Value"] == "after"
    with aws_error("InvalidAMIID.NotFound"):
        ec2.describe_image_attribute(ImageId="ami-0123456789abcdef0", Attribute="description")


# ------------------------------------------------------------------------ control endpoints


def test_backdated_creation_date(account):
    ec2 = account.ec2()
    image_id = register(ec2, "old-image", make_snapshot(ec2, 1))
    status, body = account.control(
        "image-creation-date",
        {"account_id": account.id, "region": "us-east-1", "image_id": image_id, "creation_date": "2025-01-02T03:04:05.123Z"},
    )
    assert status == 200, body
    assert image(ec2, image_id)["CreationDate"] == "2025-01-02T03:04:05.123Z"
    by_date = ec2.describe_images(Owners=["self"], Filters=[{"Name": "creation-date", "Values": ["2025-01-02T*"]}])
    assert [i["ImageId"] for i in by_date["Images"]] == [image_id]

    status, body = account.control(
        "image-creation-date",
        {"account_id": account.id, "region": "us-west-2", "image_id": image_id, "creation_date": "2025-01-02T00:00:00Z"},
    )
    assert status == 404 and "not found" in body["error"]
    status, body = account.control(
        "image-creation-date", {"account_id": account.id, "image_id": image_id, "creation_date": "yesterday"}
    )
    assert status == 400
    status, body = account.control("no-such-endpoint", {})
    assert status == 404


def test_snapshot_start_time(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    status, body = account.control(
        "snapshot-start-time",
        {"account_id": account.id, "region": "us-east-1", "snapshot_id": snap, "start_time": "2024-06-01T12:00:00Z"},
    )
    assert status == 200, body
    start = ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["StartTime"]
    assert start.astimezone(dt.timezone.utc) == dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def test_config_endpoint_is_per_account_and_validated(account, other_account):
    body = account.configure(import_delay_seconds=7, copy_delay_seconds=3)
    assert body == {
        "account_id": account.id,
        "import_delay_seconds": 7.0,
        "copy_delay_seconds": 3.0,
        "public_image_quota": 5.0,
        "seal_delay_seconds": 0.0,
    }
    status, other = other_account.control("config?account_id=" + other_account.id, method="GET")
    assert status == 200 and other["copy_delay_seconds"] == 0.0
    status, body = account.control("config", {"account_id": account.id, "import_delay_seconds": -1})
    assert status == 400
    status, body = account.control("config", {"account_id": "12", "import_delay_seconds": 1})
    assert status == 400
    # null removes the override.
    body = account.configure(copy_delay_seconds=None)
    assert body["copy_delay_seconds"] == 0.0 and body["import_delay_seconds"] == 7.0
    # A body sent with a form content type (curl -d, urllib's default) is still read as JSON.
    request = urllib.request.Request(
        f"{account.endpoint}/ami-pipeline-emulator/config",
        data=json.dumps({"account_id": account.id, "import_delay_seconds": 0.25}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["import_delay_seconds"] == 0.25
    status, body = account.control("config?account_id=" + account.id, method="GET")
    assert body["import_delay_seconds"] == 0.25
    bad = urllib.request.Request(f"{account.endpoint}/ami-pipeline-emulator/config", data=b"nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(bad, timeout=30)
    assert excinfo.value.code == 400


# ------------------------------------------------------------- stretch: protection, launch


def test_deregistration_protection(account):
    ec2 = account.ec2()
    image_id = register(ec2, "protected", make_snapshot(ec2, 1))
    assert image(ec2, image_id)["DeregistrationProtection"] == "disabled"
    result = ec2.enable_image_deregistration_protection(ImageId=image_id)
    assert result["Return"] == "enabled-without-cooldown"
    assert image(ec2, image_id)["DeregistrationProtection"] == "enabled-without-cooldown"
    with aws_error("OperationNotPermitted"):
        ec2.deregister_image(ImageId=image_id)
    ec2.disable_image_deregistration_protection(ImageId=image_id)
    assert image(ec2, image_id)["DeregistrationProtection"] == "disabled"
    ec2.deregister_image(ImageId=image_id)

    cooled = register(ec2, "cooldown", make_snapshot(ec2, 1))
    assert ec2.enable_image_deregistration_protection(ImageId=cooled, WithCooldown=True)["Return"] == (
        "enabled-with-cooldown"
    )
    ec2.disable_image_deregistration_protection(ImageId=cooled)
    assert image(ec2, cooled)["DeregistrationProtection"].startswith("disabled-until ")
    with aws_error("OperationNotPermitted"):
        ec2.deregister_image(ImageId=cooled)


def test_last_launched_time(account):
    ec2 = account.ec2()
    image_id = register(ec2, "launched", make_snapshot(ec2, 1))
    assert "LastLaunchedTime" not in image(ec2, image_id)
    status, body = account.control(
        "image-last-launched-time",
        {"account_id": account.id, "region": "us-east-1", "image_id": image_id, "last_launched_time": "2025-03-04T05:06:07Z"},
    )
    assert status == 200, body
    assert image(ec2, image_id)["LastLaunchedTime"] == "2025-03-04T05:06:07.000Z"
    attr = ec2.describe_image_attribute(ImageId=image_id, Attribute="lastLaunchedTime")
    assert attr["LastLaunchedTime"]["Value"] == "2025-03-04T05:06:07.000Z"


def test_image_state_control(account):
    ec2 = account.ec2()
    image_id = register(ec2, "fails-later", make_snapshot(ec2, 1))
    status, body = account.control("image-state", {"account_id": account.id, "image_id": image_id, "state": "failed"})
    assert status == 200, body
    assert image(ec2, image_id)["State"] == "failed"
    assert ec2.describe_images(Filters=[{"Name": "state", "Values": ["failed"]}], Owners=["self"])["Images"][0][
        "ImageId"
    ] == image_id
    status, body = account.control("image-state", {"account_id": account.id, "image_id": image_id, "state": "gone"})
    assert status == 400 and "state must be one of" in json.dumps(body)
    status, _ = account.control("image-state", {"account_id": account.id, "image_id": "ami-00000000", "state": "failed"})
    assert status == 404
    assert "StateReason" not in image(ec2, image_id)
    # With the reason EC2 gives (botocore's StateReason: Code, Message), read back by boto3.
    reason = {"code": "Client.InvalidKMSKey.InvalidState", "message": "The KMS key provided is in an incorrect state"}
    status, body = account.control(
        "image-state", {"account_id": account.id, "image_id": image_id, "state": "failed", "state_reason": reason}
    )
    assert status == 200, body
    assert image(ec2, image_id)["StateReason"] == {"Code": reason["code"], "Message": reason["message"]}
    account.control("image-state", {"account_id": account.id, "image_id": image_id, "state": "available"})
    assert "StateReason" not in image(ec2, image_id)
    status, body = account.control(
        "image-state", {"account_id": account.id, "image_id": image_id, "state": "failed", "state_reason": "kms"}
    )
    assert status == 400 and "state_reason must be" in json.dumps(body)


# ------------------------------------------------- what cleanup and lineage read from images


def test_describe_images_shows_cleanup_and_lineage_fields(account):
    ec2, west = account.ec2(), account.ec2("us-west-2")
    snap = make_snapshot(ec2, 2)
    base = register(ec2, "lineage-base", snap)
    deprecate_at = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=10)).replace(second=0, microsecond=0)
    ec2.enable_image_deprecation(ImageId=base, DeprecateAt=deprecate_at)
    ec2.enable_image_deregistration_protection(ImageId=base, WithCooldown=True)
    ec2.modify_image_attribute(ImageId=base, LaunchPermission={"Add": [{"Group": "all"}]})
    status, _ = account.control(
        "image-last-launched-time",
        {"account_id": account.id, "image_id": base, "last_launched_time": "2025-05-06T07:08:09Z"},
    )
    assert status == 200
    status, _ = account.control(
        "image-creation-date", {"account_id": account.id, "image_id": base, "creation_date": "2024-01-02T03:04:05.678Z"}
    )
    assert status == 200

    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    baked = ec2.create_image(InstanceId=instance, Name="baked-from-instance")["ImageId"]
    copied = west.copy_image(SourceImageId=base, SourceRegion="us-east-1", Name="lineage-copy")["ImageId"]

    listed = {i["ImageId"]: i for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert set(listed) == {base, baked}
    described = listed[base]
    assert described["DeprecationTime"] == deprecate_at.strftime("%Y-%m-%dT%H:%M:00.000Z")
    assert described["DeregistrationProtection"] == "enabled-with-cooldown"
    assert described["LastLaunchedTime"] == "2025-05-06T07:08:09.000Z"
    assert described["Public"] is True
    assert described["CreationDate"] == "2024-01-02T03:04:05.678Z"
    assert "SourceImageId" not in described and "SourceInstanceId" not in described
    assert listed[baked]["SourceInstanceId"] == instance
    assert listed[baked]["Public"] is False
    assert listed[baked]["DeregistrationProtection"] == "disabled"
    assert "DeprecationTime" not in listed[baked] and "LastLaunchedTime" not in listed[baked]
    (copy_described,) = west.describe_images(Owners=["self"])["Images"]
    assert copy_described["ImageId"] == copied
    assert (copy_described["SourceImageId"], copy_described["SourceImageRegion"]) == (base, "us-east-1")


def test_describe_images_include_flags_and_filters_page_together(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    managed_tags = [{"ResourceType": "image", "Tags": [{"Key": "ami-pipeline:managed", "Value": "true"}]}]
    managed = [register(ec2, f"managed-{n}", snap, TagSpecifications=managed_tags) for n in range(9)]
    other = [
        register(ec2, f"other-{n}", snap, TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "team", "Value": "x"}]}])
        for n in range(3)
    ]
    public, disabled, deprecated = managed[0], managed[1], managed[2]
    ec2.modify_image_attribute(ImageId=public, LaunchPermission={"Add": [{"Group": "all"}]})
    ec2.disable_image(ImageId=disabled)
    ec2.enable_image_deprecation(
        ImageId=deprecated, DeprecateAt=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
    )

    def walk(**kwargs):
        pages = list(ec2.get_paginator("describe_images").paginate(Owners=["self"], PaginationConfig={"PageSize": 3}, **kwargs))
        assert all(len(p["Images"]) <= 3 for p in pages)
        return [i["ImageId"] for p in pages for i in p["Images"]]

    tagged = [{"Name": "tag:ami-pipeline:managed", "Values": ["true"]}]
    # The owner sees its deprecated AMIs whatever IncludeDeprecated says; disabled ones only
    # with IncludeDisabled.
    assert sorted(walk(Filters=tagged)) == sorted(set(managed) - {disabled})
    assert sorted(walk(Filters=tagged, IncludeDeprecated=False)) == sorted(set(managed) - {disabled})
    assert sorted(walk(Filters=tagged, IncludeDeprecated=True, IncludeDisabled=True)) == sorted(managed)
    assert walk(Filters=tagged + [{"Name": "state", "Values": ["disabled"]}], IncludeDisabled=True) == [disabled]
    # Named by id too: a disabled AMI only with IncludeDisabled (DisableImage: "A disabled AMI
    # does not appear in DescribeImages API calls by default").
    assert ec2.describe_images(ImageIds=[disabled])["Images"] == []
    assert [i["ImageId"] for i in ec2.describe_images(ImageIds=[disabled, public])["Images"]] == [public]
    named = ec2.describe_images(ImageIds=[disabled], IncludeDisabled=True)["Images"]
    assert [(i["ImageId"], i["State"]) for i in named] == [(disabled, "disabled")]
    private_available = walk(
        Filters=[
            {"Name": "tag-key", "Values": ["ami-pipeline:managed"]},
            {"Name": "state", "Values": ["available"]},
            {"Name": "is-public", "Values": ["false"]},
        ]
    )
    assert sorted(private_available) == sorted(set(managed) - {public, disabled})
    assert walk(Filters=tagged + [{"Name": "is-public", "Values": ["true"]}]) == [public]
    assert sorted(walk(Filters=[{"Name": "tag:team", "Values": ["x"]}])) == sorted(other)

    west = account.ec2("us-west-2")
    copies = [
        west.copy_image(SourceImageId=managed[3], SourceRegion="us-east-1", Name=f"copy-{n}")["ImageId"] for n in range(4)
    ]
    west.copy_image(SourceImageId=managed[4], SourceRegion="us-east-1", Name="copy-of-another")
    page1 = west.describe_images(
        Owners=["self"], Filters=[{"Name": "source-image-id", "Values": [managed[3]]}], MaxResults=3
    )
    page2 = west.describe_images(
        Owners=["self"], Filters=[{"Name": "source-image-id", "Values": [managed[3]]}], MaxResults=3,
        NextToken=page1["NextToken"],
    )
    assert sorted(i["ImageId"] for i in page1["Images"] + page2["Images"]) == sorted(copies)
    assert "NextToken" not in page2


def test_launch_permissions_with_organizations_and_units(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    image_id = register(ec2, "shared-with-org", snap)
    org = "arn:aws:organizations::123456789012:organization/o-abcde12345"
    ou = "arn:aws:organizations::123456789012:ou/o-abcde12345/ou-ab12-cdef3456"
    ec2.modify_image_attribute(
        ImageId=image_id,
        LaunchPermission={
            "Add": [{"UserId": "111122223333"}, {"OrganizationArn": org}, {"OrganizationalUnitArn": ou}, {"Group": "all"}]
        },
    )
    perms = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
    assert sorted(perms, key=str) == sorted(
        [{"UserId": "111122223333"}, {"OrganizationArn": org}, {"OrganizationalUnitArn": ou}, {"Group": "all"}], key=str
    )
    assert image(ec2, image_id)["Public"] is True

    # The OperationType form with OrganizationArns / OrganizationalUnitArns (plain moto ignores them).
    ec2.modify_image_attribute(
        ImageId=image_id, Attribute="launchPermission", OperationType="remove",
        OrganizationArns=[org], OrganizationalUnitArns=[ou], UserGroups=["all"],
    )
    perms = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": "111122223333"}]
    assert image(ec2, image_id)["Public"] is False
    ec2.modify_image_attribute(
        ImageId=image_id, Attribute="launchPermission", OperationType="add", OrganizationalUnitArns=[ou]
    )
    perms = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
    assert sorted(perms, key=str) == sorted([{"UserId": "111122223333"}, {"OrganizationalUnitArn": ou}], key=str)

    ec2.modify_snapshot_attribute(
        SnapshotId=snap, Attribute="createVolumePermission", CreateVolumePermission={"Add": [{"UserId": "111122223333"}]}
    )
    volume_perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert volume_perms["CreateVolumePermissions"] == [{"UserId": "111122223333"}]


def test_bulk_backdated_creation_dates_are_all_or_nothing(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    images = [register(ec2, f"bulk-{n}", snap) for n in range(3)]
    original = {i: image(ec2, i)["CreationDate"] for i in images}

    status, body = account.control(
        "image-creation-date",
        {
            "account_id": account.id,
            "region": "us-east-1",
            "images": [
                {"image_id": images[0], "creation_date": "2023-01-01T00:00:00Z"},
                {"image_id": images[1], "creation_date": "2023-02-03T04:05:06.789+00:00"},
            ],
        },
    )
    assert status == 200, body
    assert body == {
        "updated": 2,
        "images": [
            {"image_id": images[0], "creation_date": "2023-01-01T00:00:00.000Z"},
            {"image_id": images[1], "creation_date": "2023-02-03T04:05:06.789Z"},
        ],
    }
    assert image(ec2, images[0])["CreationDate"] == "2023-01-01T00:00:00.000Z"
    assert image(ec2, images[1])["CreationDate"] == "2023-02-03T04:05:06.789Z"
    assert image(ec2, images[2])["CreationDate"] == original[images[2]]
    old = ec2.describe_images(Owners=["self"], Filters=[{"Name": "creation-date", "Values": ["2023-*"]}])["Images"]
    assert sorted(i["ImageId"] for i in old) == sorted(images[:2])

    unknown = {"image_id": "ami-0123456789abcdef0", "creation_date": "2020-01-01T00:00:00Z"}
    change = {"image_id": images[2], "creation_date": "2020-01-01T00:00:00Z"}
    for entries, expected in (
        ([change, unknown], 404),
        ([change, {"image_id": images[0], "creation_date": "last tuesday"}], 400),
        ([change, {"creation_date": "2020-01-01T00:00:00Z"}], 400),
        ([change, "ami-0123"], 400),
    ):
        status, body = account.control("image-creation-date", {"account_id": account.id, "images": entries})
        assert status == expected, body
        assert "error" in body
    status, body = account.control("image-creation-date", {"account_id": account.id, "images": "nope"})
    assert status == 400
    status, body = account.control(
        "image-creation-date", {"account_id": account.id, "region": "us-west-2", "images": [change]}
    )
    assert status == 404
    assert image(ec2, images[2])["CreationDate"] == original[images[2]]  # nothing changed
    assert image(ec2, images[0])["CreationDate"] == "2023-01-01T00:00:00.000Z"
    status, body = account.control("image-creation-date", {"account_id": account.id, "images": []})
    assert status == 200 and body == {"updated": 0, "images": []}
