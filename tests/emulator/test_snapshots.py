"""Snapshot extensions: in-use protection, DeleteAssociatedSnapshots, DescribeSnapshots owners
and paging, ModifySnapshotAttribute structured form."""

from __future__ import annotations

from emu_helpers import aws_error, make_snapshot, register


def test_snapshot_used_by_an_image_cannot_be_deleted(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 4)
    image_id = register(ec2, "in-use", snap)
    with aws_error("InvalidSnapshot.InUse", f"The snapshot {snap} is currently in use by {image_id}"):
        ec2.delete_snapshot(SnapshotId=snap)
    ec2.disable_image(ImageId=image_id)  # a disabled image still uses it
    with aws_error("InvalidSnapshot.InUse"):
        ec2.delete_snapshot(SnapshotId=snap)
    ec2.deregister_image(ImageId=image_id)
    ec2.delete_snapshot(SnapshotId=snap)
    with aws_error("InvalidSnapshot.NotFound"):
        ec2.describe_snapshots(SnapshotIds=[snap])


def test_deregister_with_delete_associated_snapshots(account):
    ec2 = account.ec2()
    shared = make_snapshot(ec2, 8)
    own = make_snapshot(ec2, 2)
    keep = make_snapshot(ec2, 1)
    first = ec2.register_image(
        Name="first",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": shared}},
            {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": own}},
        ],
    )["ImageId"]
    second = register(ec2, "second", shared)

    result = ec2.deregister_image(ImageId=first, DeleteAssociatedSnapshots=True)
    assert result["Return"] is True
    codes = {r["SnapshotId"]: r["ReturnCode"] for r in result["DeleteSnapshotResults"]}
    assert codes == {shared: "skipped", own: "success"}
    remaining = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert remaining == {shared, keep}
    # The other AMI keeps working: still available with its snapshot, still launchable, and
    # the snapshot is still protected by it.
    (survivor,) = ec2.describe_images(ImageIds=[second])["Images"]
    assert survivor["State"] == "available"
    assert survivor["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == shared
    ec2.run_instances(ImageId=second, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    with aws_error("InvalidSnapshot.InUse", second):
        ec2.delete_snapshot(SnapshotId=shared)

    result = ec2.deregister_image(ImageId=second, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "success"}]
    remaining = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert remaining == {keep}

    # Without the flag the snapshots stay and no results are reported.
    third = register(ec2, "third", keep)
    result = ec2.deregister_image(ImageId=third)
    assert "DeleteSnapshotResults" not in result or result["DeleteSnapshotResults"] == []
    assert ec2.describe_snapshots(SnapshotIds=[keep])["Snapshots"][0]["SnapshotId"] == keep
    with aws_error("InvalidAMIID.Unavailable"):
        ec2.deregister_image(ImageId=third)


def test_describe_snapshots_owner_ids(account, other_account):
    ec2 = account.ec2()
    mine = {make_snapshot(ec2, 1) for _ in range(3)}
    make_snapshot(other_account.ec2(), 1)
    assert {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]} == mine
    assert {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=[account.id])["Snapshots"]} == mine
    assert ec2.describe_snapshots(OwnerIds=["amazon"])["Snapshots"] == []
    assert ec2.describe_snapshots(OwnerIds=["111122223333"])["Snapshots"] == []


def test_describe_snapshots_pagination(account):
    ec2 = account.ec2()
    created = {make_snapshot(ec2, 1) for _ in range(12)}
    page1 = ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5)
    page2 = ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5, NextToken=page1["NextToken"])
    page3 = ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5, NextToken=page2["NextToken"])
    sizes = [len(p["Snapshots"]) for p in (page1, page2, page3)]
    assert sizes == [5, 5, 2]
    assert "NextToken" not in page3
    seen = [s["SnapshotId"] for p in (page1, page2, page3) for s in p["Snapshots"]]
    assert len(seen) == len(set(seen)) and set(seen) == created

    exact = ec2.describe_snapshots(OwnerIds=["self"], MaxResults=12)
    assert len(exact["Snapshots"]) == 12 and "NextToken" not in exact

    paginator = ec2.get_paginator("describe_snapshots")
    pages = list(paginator.paginate(OwnerIds=["self"], PaginationConfig={"PageSize": 5}))
    assert [len(p["Snapshots"]) for p in pages] == [5, 5, 2]

    with aws_error("InvalidParameterValue"):
        ec2.describe_snapshots(OwnerIds=["self"], MaxResults=4)
    with aws_error("InvalidParameterCombination"):
        ec2.describe_snapshots(SnapshotIds=[next(iter(created))], MaxResults=5)


def test_modify_snapshot_attribute_structured_form(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    ec2.modify_snapshot_attribute(
        SnapshotId=snap,
        Attribute="createVolumePermission",
        CreateVolumePermission={"Add": [{"UserId": "111122223333"}, {"UserId": "444455556666"}]},
    )
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")[
        "CreateVolumePermissions"
    ]
    assert sorted(p["UserId"] for p in perms) == ["111122223333", "444455556666"]

    ec2.modify_snapshot_attribute(
        SnapshotId=snap,
        Attribute="createVolumePermission",
        CreateVolumePermission={"Remove": [{"UserId": "111122223333"}], "Add": [{"Group": "all"}]},
    )
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")[
        "CreateVolumePermissions"
    ]
    assert sorted(perms, key=str) == sorted([{"UserId": "444455556666"}, {"Group": "all"}], key=str)
    assert [s["SnapshotId"] for s in ec2.describe_snapshots(RestorableByUserIds=["all"])["Snapshots"]] == [snap]

    # The OperationType form keeps working.
    ec2.modify_snapshot_attribute(
        SnapshotId=snap, Attribute="createVolumePermission", OperationType="remove", GroupNames=["all"]
    )
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")[
        "CreateVolumePermissions"
    ]
    assert perms == [{"UserId": "444455556666"}]
    with aws_error("InvalidSnapshot.NotFound"):
        ec2.modify_snapshot_attribute(
            SnapshotId="snap-0123456789abcdef0",
            CreateVolumePermission={"Add": [{"UserId": "111122223333"}]},
        )


def test_modify_snapshot_attribute_takes_at_most_500_modifications(account):
    """ModifySnapshotAttribute: "You can make up to 500 modifications to a snapshot in a single
    operation." 501 changes nothing; 500 (in either form) is applied."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    accounts = [f"{100000000000 + i}" for i in range(501)]
    with aws_error("InvalidParameterValue", "500 modifications"):
        ec2.modify_snapshot_attribute(
            SnapshotId=snap, Attribute="createVolumePermission", OperationType="add", UserIds=accounts
        )
    with aws_error("InvalidParameterValue", "500 modifications"):
        ec2.modify_snapshot_attribute(
            SnapshotId=snap,
            Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": a} for a in accounts[:500]] + [{"Group": "all"}]},
        )
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == []
    ec2.modify_snapshot_attribute(
        SnapshotId=snap, Attribute="createVolumePermission", OperationType="add", UserIds=accounts[:500]
    )
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert len(perms["CreateVolumePermissions"]) == 500


def test_an_encrypted_snapshot_or_an_ami_with_one_is_never_made_public(account):
    """EBS User Guide: "You can't make your encrypted snapshots available publicly"; an AMI with
    encrypted volumes cannot be made public either. Sharing with an account still works, and
    an unencrypted image is still made public."""
    ec2 = account.ec2()
    region = ec2.meta.region_name
    volume = ec2.create_volume(AvailabilityZone=f"{region}a", Size=1, Encrypted=True)["VolumeId"]
    encrypted = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    assert ec2.describe_snapshots(SnapshotIds=[encrypted])["Snapshots"][0]["Encrypted"] is True
    image = register(ec2, "enc-image", encrypted)
    ebs = ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]
    assert ebs["Encrypted"] is True

    with aws_error("UnsupportedOperation", "Encrypted snapshots can't be shared publicly"):
        ec2.modify_snapshot_attribute(
            SnapshotId=encrypted, Attribute="createVolumePermission", OperationType="add", GroupNames=["all"]
        )
    with aws_error("UnsupportedOperation", "Encrypted snapshots can't be shared publicly"):
        ec2.modify_snapshot_attribute(
            SnapshotId=encrypted, CreateVolumePermission={"Add": [{"Group": "all"}]}
        )
    with aws_error("UnsupportedOperation", "Encrypted snapshots can't be shared publicly"):
        ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"Group": "all"}]})
    with aws_error("UnsupportedOperation"):
        ec2.modify_image_attribute(
            ImageId=image, Attribute="launchPermission", OperationType="add", UserGroups=["all"]
        )
    assert ec2.describe_images(ImageIds=[image])["Images"][0]["Public"] is False
    groups = ec2.describe_snapshot_attribute(SnapshotId=encrypted, Attribute="createVolumePermission")
    assert groups["CreateVolumePermissions"] == []

    # Sharing with an account is not refused for a customer managed key (the AWS managed key
    # of the test above is: test_the_aws_managed_key_is_never_shared_with_another_account).
    key = account.client("kms").create_key()["KeyMetadata"]["Arn"]
    volume = ec2.create_volume(AvailabilityZone=f"{region}a", Size=1, Encrypted=True, KmsKeyId=key)["VolumeId"]
    with_key = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    keyed = register(ec2, "enc-image-cmk", with_key)
    with aws_error("UnsupportedOperation", "Encrypted snapshots can't be shared publicly"):
        ec2.modify_image_attribute(ImageId=keyed, LaunchPermission={"Add": [{"Group": "all"}]})
    ec2.modify_snapshot_attribute(
        SnapshotId=with_key, Attribute="createVolumePermission", OperationType="add", UserIds=["111122223333"]
    )
    ec2.modify_image_attribute(ImageId=keyed, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    perms = ec2.describe_image_attribute(ImageId=keyed, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": "111122223333"}]

    # An unencrypted image and its snapshot are still made public.
    plain = make_snapshot(ec2, 1)
    public = register(ec2, "plain-image", plain)
    ec2.modify_snapshot_attribute(
        SnapshotId=plain, Attribute="createVolumePermission", OperationType="add", GroupNames=["all"]
    )
    ec2.modify_image_attribute(ImageId=public, LaunchPermission={"Add": [{"Group": "all"}]})
    assert ec2.describe_images(ImageIds=[public])["Images"][0]["Public"] is True


def test_the_aws_managed_key_is_never_shared_with_another_account(account):
    """EBS User Guide ("Share an Amazon EBS snapshot"): snapshots encrypted with the default AWS
    managed key cannot be shared; nor can an AMI with one (codes and texts as users report them).
    A customer managed key made the account's default is shared; a copy made without KmsKeyId
    is encrypted with the AWS managed key of its Region (CopyImage: "If this parameter is not
    specified, your Amazon Web Services managed KMS key for Amazon EBS is used"), so it cannot be
    shared even when its source could; with KmsKeyId it can."""
    ec2, west = account.ec2(), account.ec2("us-west-2")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)["VolumeId"]
    managed = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    key_of_alias = account.client("kms").describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]
    assert ec2.describe_snapshots(SnapshotIds=[managed])["Snapshots"][0]["KmsKeyId"] == key_of_alias
    image = register(ec2, "managed-key-image", managed)

    with aws_error("OperationNotPermitted", "Encrypted snapshots with EBS default key cannot be shared"):
        ec2.modify_snapshot_attribute(
            SnapshotId=managed, Attribute="createVolumePermission", OperationType="add", UserIds=["111122223333"]
        )
    with aws_error("InvalidParameter", "Snapshots encrypted with the AWS Managed CMK can't be shared"):
        ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    org = "arn:aws:organizations::111122223333:organization/o-abcdefghij"
    with aws_error("InvalidParameter"):
        ec2.modify_image_attribute(
            ImageId=image, Attribute="launchPermission", OperationType="add", OrganizationArns=[org]
        )
    assert ec2.describe_image_attribute(ImageId=image, Attribute="launchPermission")["LaunchPermissions"] == []
    assert ec2.describe_snapshot_attribute(SnapshotId=managed, Attribute="createVolumePermission")[
        "CreateVolumePermissions"
    ] == []

    # A customer managed key made the account's default: what it encrypts is shared.
    cmk = account.client("kms").create_key()["KeyMetadata"]["Arn"]
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=cmk)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)["VolumeId"]
    keyed = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    assert ec2.describe_snapshots(SnapshotIds=[keyed])["Snapshots"][0]["KmsKeyId"] == cmk
    source = register(ec2, "cmk-image", keyed)
    ec2.modify_image_attribute(ImageId=source, LaunchPermission={"Add": [{"UserId": "111122223333"}]})

    # Its copy to another Region without a key is encrypted with that Region's AWS managed key.
    copy = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="cmk-image-copy")["ImageId"]
    with aws_error("InvalidParameter", "Snapshots encrypted with the AWS Managed CMK can't be shared"):
        west.modify_image_attribute(ImageId=copy, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    west_key = account.client("kms", "us-west-2").create_key()["KeyMetadata"]["Arn"]
    keyed_copy = west.copy_image(
        SourceImageId=source, SourceRegion="us-east-1", Name="cmk-image-copy-2", Encrypted=True, KmsKeyId=west_key
    )["ImageId"]
    west.modify_image_attribute(ImageId=keyed_copy, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    # Removing a share is never refused.
    west.modify_image_attribute(ImageId=keyed_copy, LaunchPermission={"Remove": [{"UserId": "111122223333"}]})


def test_snapshot_block_public_access_refuses_new_public_sharing(account):
    """EnableSnapshotBlockPublicAccess: "users can no longer request public sharing for
    snapshots in that Region"; per account and Region; sharing with accounts still works."""
    ec2, west = account.ec2(), account.ec2("us-west-2")
    assert ec2.get_snapshot_block_public_access_state()["State"] == "unblocked"
    snap = make_snapshot(ec2, 1)
    for state in ("block-new-sharing", "block-all-sharing"):
        assert ec2.enable_snapshot_block_public_access(State=state)["State"] == state
        got = ec2.get_snapshot_block_public_access_state()
        assert (got["State"], got["ManagedBy"]) == (state, "account")
        with aws_error("OperationNotPermitted", "block public access for snapshots is enabled"):
            ec2.modify_snapshot_attribute(
                SnapshotId=snap, Attribute="createVolumePermission", OperationType="add", GroupNames=["all"]
            )
        with aws_error("OperationNotPermitted"):
            ec2.modify_snapshot_attribute(SnapshotId=snap, CreateVolumePermission={"Add": [{"Group": "all"}]})
    assert west.get_snapshot_block_public_access_state()["State"] == "unblocked"
    ec2.modify_snapshot_attribute(
        SnapshotId=snap, Attribute="createVolumePermission", OperationType="add", UserIds=["111122223333"]
    )
    with aws_error("InvalidParameterValue"):
        ec2.enable_snapshot_block_public_access(State="unblocked")
    assert ec2.disable_snapshot_block_public_access()["State"] == "unblocked"
    ec2.modify_snapshot_attribute(SnapshotId=snap, CreateVolumePermission={"Add": [{"Group": "all"}]})
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert {"Group": "all"} in perms["CreateVolumePermissions"]
