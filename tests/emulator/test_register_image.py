"""RegisterImage keeps what it is given (moto: Name/Description only, invented snapshot), and
tags only the image (a snapshot TagSpecification is refused, as on EC2)."""

from __future__ import annotations

import pytest

from emu_helpers import aws_error, image, make_snapshot, register, tags_of


def test_register_keeps_attributes_bdm_and_tags(account):
    ec2 = account.ec2()
    root = make_snapshot(ec2, 8)
    data = make_snapshot(ec2, 20)
    image_id = ec2.register_image(
        Name="pipeline-image-1",
        Description="built from s3://bucket/disk.raw",
        Architecture="arm64",
        BootMode="uefi",
        EnaSupport=True,
        SriovNetSupport="simple",
        VirtualizationType="hvm",
        RootDeviceName="/dev/xvda",
        ImdsSupport="v2.0",
        TpmSupport="v2.0",
        BlockDeviceMappings=[
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {"SnapshotId": root, "VolumeSize": 10, "VolumeType": "gp3", "DeleteOnTermination": True},
            },
            {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": data, "DeleteOnTermination": False}},
            {"DeviceName": "/dev/xvdc", "VirtualName": "ephemeral0"},
        ],
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "lineage:parent", "Value": "none"}]},
        ],
    )["ImageId"]

    described = image(ec2, image_id)
    assert described["Name"] == "pipeline-image-1"
    assert described["Description"] == "built from s3://bucket/disk.raw"
    assert described["Architecture"] == "arm64"
    assert described["BootMode"] == "uefi"
    assert described["EnaSupport"] is True
    assert described["SriovNetSupport"] == "simple"
    assert described["VirtualizationType"] == "hvm"
    assert described["RootDeviceName"] == "/dev/xvda"
    assert described["RootDeviceType"] == "ebs"
    assert described["ImdsSupport"] == "v2.0"
    assert described["TpmSupport"] == "v2.0"
    assert described["State"] == "available"
    assert described["OwnerId"] == account.id
    assert described["Public"] is False
    assert tags_of(described) == {"lineage:parent": "none"}
    bdm = {m["DeviceName"]: m for m in described["BlockDeviceMappings"]}
    assert bdm["/dev/xvda"]["Ebs"] == {
        "SnapshotId": root,
        "VolumeSize": 10,
        "VolumeType": "gp3",
        "DeleteOnTermination": True,
        "Encrypted": False,
    }
    assert bdm["/dev/xvdb"]["Ebs"]["SnapshotId"] == data
    assert bdm["/dev/xvdb"]["Ebs"]["VolumeSize"] == 20  # defaults to the snapshot size
    assert bdm["/dev/xvdb"]["Ebs"]["DeleteOnTermination"] is False
    assert bdm["/dev/xvdc"]["VirtualName"] == "ephemeral0"

    # No invented snapshot: only the two we made exist; the image's tags are not theirs.
    snapshots = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert sorted(s["SnapshotId"] for s in snapshots) == sorted([root, data])
    assert all(tags_of(s) == {} for s in snapshots)

    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="bootMode")["BootMode"]["Value"] == "uefi"
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="imdsSupport")["ImdsSupport"]["Value"] == "v2.0"
    filtered = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "block-device-mapping.snapshot-id", "Values": [root]}]
    )["Images"]
    assert [i["ImageId"] for i in filtered] == [image_id]


def test_snapshot_tag_specification_is_refused_and_nothing_is_created(account):
    """RegisterImage.TagSpecifications (API reference and botocore model): "To tag the AMI, the
    value for ResourceType must be image. If you specify another value for ResourceType, the
    request fails." Tagging the snapshot is a separate CreateTags."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "'snapshot' is not a valid taggable resource type for this operation."):
        register(
            ec2,
            "with-snapshot-tags",
            snap,
            TagSpecifications=[
                {"ResourceType": "image", "Tags": [{"Key": "a", "Value": "b"}]},
                {"ResourceType": "snapshot", "Tags": [{"Key": "owner-image", "Value": "with-snapshot-tags"}]},
            ],
        )
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    assert tags_of(ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]) == {}
    # The name was not taken either: the same request without the snapshot part succeeds.
    image_id = register(
        ec2,
        "with-snapshot-tags",
        snap,
        TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "a", "Value": "b"}]}],
    )
    assert tags_of(image(ec2, image_id)) == {"a": "b"}
    assert tags_of(ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]) == {}


def test_register_without_optional_fields_uses_documented_defaults(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 2)
    image_id = ec2.register_image(
        Name="minimal",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap}}],
    )["ImageId"]
    described = image(ec2, image_id)
    assert described["Architecture"] == "i386"  # API reference default for EBS-backed AMIs
    assert described["VirtualizationType"] == "paravirtual"
    assert "EnaSupport" not in described
    assert "BootMode" not in described
    assert described["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snap
    assert described["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 2


def test_missing_snapshot_is_rejected(account):
    ec2 = account.ec2()
    with aws_error("InvalidSnapshot.NotFound", "snap-0123456789abcdef0"):
        register(ec2, "no-snapshot", "snap-0123456789abcdef0")
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_snapshot_of_another_account_or_region_is_rejected(account, other_account):
    theirs = make_snapshot(other_account.ec2(), 1)
    with aws_error("InvalidSnapshot.NotFound"):
        register(account.ec2(), "cross-account", theirs)
    west = make_snapshot(account.ec2("us-west-2"), 1)
    with aws_error("InvalidSnapshot.NotFound"):
        register(account.ec2(), "cross-region", west)


def test_volume_smaller_than_snapshot_is_rejected(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 8)
    with aws_error("InvalidBlockDeviceMapping"):
        ec2.register_image(
            Name="too-small",
            RootDeviceName="/dev/xvda",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap, "VolumeSize": 4}}],
        )


@pytest.mark.parametrize("volume_type", ["io1", "io2"])
def test_provisioned_iops_volume_without_iops_is_rejected(account, volume_type):
    """EbsBlockDevice.Iops: "This parameter is required for io1 and io2 volumes." """
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 8)
    bdm = {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap, "VolumeType": volume_type}}
    with aws_error("InvalidParameterCombination", "iops"):
        register(ec2, f"no-iops-{volume_type}", snap, BlockDeviceMappings=[bdm])
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    bdm["Ebs"]["Iops"] = 3000
    image_id = register(ec2, f"with-iops-{volume_type}", snap, BlockDeviceMappings=[bdm])
    ebs = image(ec2, image_id)["BlockDeviceMappings"][0]["Ebs"]
    assert (ebs["VolumeType"], ebs["Iops"]) == (volume_type, 3000)


@pytest.mark.parametrize(
    ("ebs", "code", "text"),
    [
        # EbsBlockDevice.VolumeSize, per type.
        ({"VolumeType": "standard", "VolumeSize": 1025}, "InvalidParameterValue", "1-1024 GiB"),
        ({"VolumeType": "gp2", "VolumeSize": 16_385}, "InvalidParameterValue", "1-16384 GiB"),
        ({"VolumeType": "io1", "VolumeSize": 3, "Iops": 100}, "InvalidParameterValue", "4-16384 GiB"),
        # EbsBlockDevice.Iops, per type; none for gp2 or standard.
        ({"VolumeType": "gp3", "Iops": 2_999}, "InvalidParameterValue", "3000-80000"),
        ({"VolumeType": "io1", "Iops": 64_001}, "InvalidParameterValue", "100-64000"),
        ({"VolumeType": "io2", "Iops": 99}, "InvalidParameterValue", "100-256000"),
        ({"VolumeType": "gp2", "Iops": 3_000}, "InvalidParameterCombination", "iops"),
        # EbsBlockDevice.Throughput: gp3 only, 125-2,000.
        ({"VolumeType": "gp3", "Throughput": 2_001}, "InvalidParameterValue", "125-2000"),
        ({"VolumeType": "io1", "Iops": 100, "Throughput": 125}, "InvalidParameterCombination", "throughput"),
    ],
)
def test_root_volume_out_of_its_types_range_is_rejected(account, ebs, code, text):
    ec2 = account.ec2()
    # 4 GiB (io1/io2's least), or less where the case is a smaller volume.
    snap = make_snapshot(ec2, min(ebs.get("VolumeSize", 4), 4))
    bdm = {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap, **ebs}}
    with aws_error(code, text):
        register(ec2, "out-of-range", snap, BlockDeviceMappings=[bdm])
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_root_volume_at_its_types_limits_is_registered(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 4)
    for n, ebs in enumerate(
        [
            {"VolumeType": "gp3", "VolumeSize": 65_536, "Iops": 80_000, "Throughput": 2_000},
            {"VolumeType": "gp3", "Iops": 3_000, "Throughput": 125},
            {"VolumeType": "io1", "VolumeSize": 1_280, "Iops": 64_000},
            {"VolumeType": "io2", "VolumeSize": 65_536, "Iops": 256_000},
            {"VolumeType": "standard", "VolumeSize": 1_024},
        ]
    ):
        bdm = {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap, **ebs}}
        image_id = register(ec2, f"at-limit-{n}", snap, BlockDeviceMappings=[bdm])
        shown = image(ec2, image_id)["BlockDeviceMappings"][0]["Ebs"]
        assert {k: shown[k] for k in ebs} == ebs


def test_duplicate_name_in_same_account_and_region(account, other_account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    first = register(ec2, "release-2025.01", snap)
    with aws_error("InvalidAMIName.Duplicate", f"AMI name release-2025.01 is already in use by AMI {first}"):
        register(ec2, "release-2025.01", snap)
    # Other region and other account: allowed.
    west = account.ec2("us-west-2")
    register(west, "release-2025.01", make_snapshot(west, 1))
    theirs = other_account.ec2()
    register(theirs, "release-2025.01", make_snapshot(theirs, 1))
    # After deregistering, the name is free again.
    ec2.deregister_image(ImageId=first)
    assert register(ec2, "release-2025.01", snap) != first


@pytest.mark.parametrize(
    "name",
    ["ab", "a" * 129, "bad*name", "tab\tname", "semi;colon", "q?"],
    ids=["too-short", "too-long", "asterisk", "tab", "semicolon", "question-mark"],
)
def test_malformed_names_are_rejected(account, name):
    ec2 = account.client("ec2", validate=False)  # botocore itself checks the length
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidAMIName.Malformed", "AMI names must be between 3 and 128 characters long"):
        register(ec2, name, snap)


def test_all_allowed_name_characters(account):
    ec2 = account.ec2()
    name = "My image (v1) [x86_64] ./-'@_" + "z" * 99
    assert len(name) == 128
    image_id = register(ec2, name, make_snapshot(ec2, 1))
    assert image(ec2, image_id)["Name"] == name


def test_invalid_enum_and_tag_type(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue"):
        register(ec2, "bad-arch", snap, Architecture="sparc")
    with aws_error("InvalidParameterValue", "not a valid taggable resource type"):
        register(
            ec2,
            "bad-tag-type",
            snap,
            TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}],
        )


def test_register_with_ebs_direct_snapshot_and_tag_filter(account):
    """The RAW path of the pipeline: EBS direct StartSnapshot/CompleteSnapshot, then RegisterImage."""
    ebs, ec2 = account.client("ebs"), account.ec2()
    started = ebs.start_snapshot(VolumeSize=3, Tags=[{"Key": "source", "Value": "ebs-direct"}])
    snapshot_id = started["SnapshotId"]
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=0)
    image_id = register(
        ec2,
        "from-ebs-direct",
        snapshot_id,
        TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "lineage:source", "Value": "s3://b/k"}]}],
    )
    described = image(ec2, image_id)
    assert described["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snapshot_id
    assert described["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 3
    by_tag = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag:lineage:source", "Values": ["s3://b/*"]}]
    )["Images"]
    assert [i["ImageId"] for i in by_tag] == [image_id]
    by_key = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag-key", "Values": ["nope"]}])["Images"]
    assert by_key == []
    with aws_error("InvalidSnapshot.InUse"):
        ec2.delete_snapshot(SnapshotId=snapshot_id)
