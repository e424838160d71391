"""EC2 parameter rules of the API reference / botocore model that the emulator enforces before
moto (``ami_emulator/api_rules.py``), each asserted from the documentation: the error code EC2
answers and, where AWS's text is known, its message. A refused request creates nothing.

botocore validates some things client-side (required members, some minimums, types) but not
enums or maximum lengths; where it would stop a request first, the client is built with
``validate=False`` so the request reaches the emulator as a broken SDK call would.
"""

from __future__ import annotations

import pytest

from emu_helpers import aws_error, image, make_snapshot, register, tags_of

TAG = [{"Key": "team", "Value": "x"}]


def _source_image(ec2, name="source-image"):
    return register(ec2, name, make_snapshot(ec2, 1))


# ---------------------------------------------------------------------------------------------
# TagSpecifications: the resource types each operation documents
# ---------------------------------------------------------------------------------------------


def test_copy_image_takes_image_and_snapshot_but_not_volume(account):
    """CopyImage.TagSpecifications: image and snapshot; "If you specify other values for
    ResourceType, the request fails."."""
    ec2 = account.ec2()
    source = _source_image(ec2)
    with aws_error("InvalidParameterValue", "'volume' is not a valid taggable resource type for this operation."):
        ec2.copy_image(
            SourceImageId=source,
            SourceRegion="us-east-1",
            Name="copy-with-volume-tags",
            TagSpecifications=[{"ResourceType": "volume", "Tags": TAG}],
        )
    assert [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]] == [source]
    copy_id = ec2.copy_image(
        SourceImageId=source,
        SourceRegion="us-east-1",
        Name="copy-with-both",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": TAG},
            {"ResourceType": "snapshot", "Tags": [{"Key": "kind", "Value": "copy"}]},
        ],
    )["ImageId"]
    copied = image(ec2, copy_id)
    assert tags_of(copied) == {"team": "x"}
    copy_snapshot = copied["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert tags_of(ec2.describe_snapshots(SnapshotIds=[copy_snapshot])["Snapshots"][0]) == {"kind": "copy"}


def test_create_snapshot_takes_only_snapshot(account):
    """CreateSnapshot.TagSpecifications: "The tags to apply to the snapshot during creation."
    AWS answers 'instance' with this text (boto/boto3#1806)."""
    ec2 = account.ec2()
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    with aws_error("InvalidParameterValue", "'instance' is not a valid taggable resource type for this operation."):
        ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{"ResourceType": "instance", "Tags": TAG}])
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    snap = ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{"ResourceType": "snapshot", "Tags": TAG}])
    assert tags_of(snap) == {"team": "x"}


def test_create_volume_and_run_instances_types(account):
    """CreateVolume: volume only. RunInstances: "You can specify tags for the following resources
    only: Instances, Volumes, Spot Instance requests, Network interfaces"."""
    ec2 = account.ec2()
    with aws_error("InvalidParameterValue", "'snapshot' is not a valid taggable resource type for this operation."):
        ec2.create_volume(
            AvailabilityZone="us-east-1a", Size=1, TagSpecifications=[{"ResourceType": "snapshot", "Tags": TAG}]
        )
    assert ec2.describe_volumes()["Volumes"] == []
    ami = _source_image(ec2)
    with aws_error("InvalidParameterValue", "'image' is not a valid taggable resource type for this operation."):
        ec2.run_instances(
            ImageId=ami,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            TagSpecifications=[{"ResourceType": "image", "Tags": TAG}],
        )
    assert ec2.describe_instances()["Reservations"] == []
    launched = ec2.run_instances(
        ImageId=ami,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": TAG}, {"ResourceType": "volume", "Tags": TAG}],
    )["Instances"][0]
    assert tags_of(launched) == {"team": "x"}


def test_create_launch_template_takes_only_launch_template(account):
    """CreateLaunchTemplate.TagSpecifications: "To tag the launch template, the resource type
    must be launch-template." (AWS's message: aws-cloudformation/cloudformation-coverage-roadmap#979)."""
    ec2 = account.ec2()
    with aws_error("InvalidParameterValue", "must be 'launch-template'"):
        ec2.create_launch_template(
            LaunchTemplateName="lt-wrong-tags",
            LaunchTemplateData={"ImageId": "ami-12345678"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": TAG}],
        )
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    created = ec2.create_launch_template(
        LaunchTemplateName="lt-right-tags",
        LaunchTemplateData={"ImageId": "ami-12345678"},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": TAG}],
    )["LaunchTemplate"]
    assert tags_of(created) == {"team": "x"}


def test_import_snapshot_takes_only_import_snapshot_task(account):
    ec2 = account.ec2()
    container = {"Format": "RAW", "UserBucket": {"S3Bucket": "b", "S3Key": "k"}}
    with aws_error("InvalidParameterValue", "'image' is not a valid taggable resource type for this operation."):
        ec2.import_snapshot(DiskContainer=container, TagSpecifications=[{"ResourceType": "image", "Tags": TAG}])
    assert ec2.describe_import_snapshot_tasks()["ImportSnapshotTasks"] == []


def test_unknown_resource_type_is_refused(account):
    """TagSpecification.ResourceType is the ResourceType enum; botocore does not check enums."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "for parameter resourceType is invalid"):
        register(ec2, "bogus-type", snap, TagSpecifications=[{"ResourceType": "ami", "Tags": TAG}])
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_same_resource_type_twice_is_refused(account):
    """AWS: "The same resource type may not be specified more than once in tag specifications"
    (skypilot-org/skypilot#10627)."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "The same resource type may not be specified more than once"):
        register(
            ec2,
            "twice",
            snap,
            TagSpecifications=[
                {"ResourceType": "image", "Tags": TAG},
                {"ResourceType": "image", "Tags": [{"Key": "other", "Value": "y"}]},
            ],
        )
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_specification_without_resource_type_or_tags(account):
    """AWS: "Tag specification resource type must have a value" (InvalidParameterValue,
    yegor256/rultor#1991); a specification without tags: InvalidTagKey.Malformed "Tag
    specification must have at least one tag" (hashicorp/packer-plugin-amazon#141)."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "Tag specification resource type must have a value"):
        register(ec2, "no-type", snap, TagSpecifications=[{"Tags": TAG}])
    with aws_error("InvalidTagKey.Malformed", "Tag specification must have at least one tag"):
        register(ec2, "no-tags", snap, TagSpecifications=[{"ResourceType": "image", "Tags": []}])
    assert ec2.describe_images(Owners=["self"])["Images"] == []


# ---------------------------------------------------------------------------------------------
# Tag rules (Tag shape, CreateTags), in TagSpecifications and in CreateTags
# ---------------------------------------------------------------------------------------------


def test_reserved_aws_prefix(account):
    """Tag.Key: "May not begin with aws:". AWS's text: "Value ( aws:... ) for parameter key is
    invalid. Tag keys starting with 'aws:' are reserved for internal use"."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    reserved = [{"Key": "aws:cloudformation:stack-name", "Value": "x"}]
    with aws_error("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use"):
        register(ec2, "reserved", snap, TagSpecifications=[{"ResourceType": "image", "Tags": reserved}])
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    with aws_error("InvalidParameterValue", "Value ( aws:cloudformation:stack-name ) for parameter key is invalid"):
        ec2.create_tags(Resources=[snap], Tags=reserved)
    assert tags_of(ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]) == {}
    # Only the lower-case prefix is named by the EC2 reference; "aws" without the colon is fine.
    ec2.create_tags(Resources=[snap], Tags=[{"Key": "aws-team", "Value": "x"}])


@pytest.mark.parametrize("where", ["create-tags", "tag-specification"])
def test_key_and_value_length_limits(account, where):
    """Tag.Key accepts "a maximum of 127 Unicode characters", Tag.Value "a maximum of 256"."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)

    def tag(tags, name):
        if where == "create-tags":
            ec2.create_tags(Resources=[snap], Tags=tags)
        else:
            ec2.create_snapshot(
                VolumeId=ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"],
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
                Description=name,
            )

    tag([{"Key": "k" * 127, "Value": "\u00e9" * 256}], "at-limit")
    with aws_error("InvalidParameterValue", "for parameter key is invalid"):
        tag([{"Key": "k" * 128, "Value": "v"}], "long-key")
    with aws_error("InvalidParameterValue", "for parameter value is invalid"):
        tag([{"Key": "k", "Value": "v" * 257}], "long-value")
    with aws_error("InvalidParameterValue", "Tag key cannot be null or empty"):
        tag([{"Key": "", "Value": "v"}], "empty-key")
    descriptions = {s.get("Description") for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not descriptions & {"long-key", "long-value", "empty-key"}


@pytest.mark.parametrize("where", ["create-tags", "tag-specification"])
def test_at_most_50_tags(account, where):
    """CreateTags: "Each resource can have a maximum of 50 tags." (TagLimitExceeded)."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    fifty = [{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    fifty_one = fifty + [{"Key": "k50", "Value": "v"}]
    if where == "create-tags":
        with aws_error("TagLimitExceeded"):
            ec2.create_tags(Resources=[snap], Tags=fifty_one)
        assert tags_of(ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]) == {}
        ec2.create_tags(Resources=[snap], Tags=fifty)
    else:
        with aws_error("TagLimitExceeded"):
            register(ec2, "too-many-tags", snap, TagSpecifications=[{"ResourceType": "image", "Tags": fifty_one}])
        assert ec2.describe_images(Owners=["self"])["Images"] == []
        image_id = register(ec2, "fifty-tags", snap, TagSpecifications=[{"ResourceType": "image", "Tags": fifty}])
        assert len(tags_of(image(ec2, image_id))) == 50


def test_duplicate_key_in_a_tag_specification(account):
    """AWS: "Duplicate tag key 'Name' specified." (cloud-custodian/cloud-custodian#3792)."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "Duplicate tag key 'Name' specified."):
        register(
            ec2,
            "dup-keys",
            snap,
            TagSpecifications=[
                {"ResourceType": "image", "Tags": [{"Key": "Name", "Value": "a"}, {"Key": "Name", "Value": "b"}]}
            ],
        )
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_create_tags_without_tags(account):
    """AWS: "You must specify one or more tags to create" (InvalidParameterValue, dask/dask-ec2#90:
    botocore sends nothing for ``Tags=[]``)."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "You must specify one or more tags to create"):
        ec2.create_tags(Resources=[snap], Tags=[])


# ---------------------------------------------------------------------------------------------
# Enums, required members
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        ("describe_snapshot_attribute", {"Attribute": "owner"}),
        ("modify_snapshot_attribute", {"Attribute": "createVolumePermission", "OperationType": "toggle", "UserIds": ["111122223333"]}),
        ("describe_image_attribute", {"Attribute": "name"}),
        ("modify_image_attribute", {"OperationType": "grant", "UserIds": ["111122223333"]}),
    ],
    ids=["snapshot-attribute", "operation-type", "image-attribute", "image-operation-type"],
)
def test_enum_values_outside_the_model_are_refused(account, call):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    ami = register(ec2, "enum-target", snap)
    method, params = call
    target = {"SnapshotId": snap} if "snapshot" in method else {"ImageId": ami}
    with aws_error("InvalidParameterValue", "is invalid"):
        getattr(ec2, method)(**target, **params)


def test_nested_enum_in_block_device_mapping(account):
    """BlockDeviceMapping.N.Ebs.VolumeType is the VolumeType enum (standard|io1|io2|gp2|sc1|st1|gp3)."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "Value (gp9) for parameter volumeType is invalid."):
        ec2.create_image(InstanceId="i-0123456789abcdef0", Name="nested-enum",
                         BlockDeviceMappings=[{"DeviceName": "/dev/xvdb", "Ebs": {"VolumeType": "gp9"}}])
    with aws_error("InvalidParameterValue", "Value (gp9) for parameter volumeType is invalid."):
        ec2.register_image(
            Name="nested-enum",
            RootDeviceName="/dev/xvda",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap, "VolumeType": "gp9"}}],
        )
    assert ec2.describe_images(Owners=["self"])["Images"] == []


@pytest.mark.parametrize(
    "method, params, missing",
    [
        ("describe_image_attribute", {"ImageId": "ami-12345678"}, "Attribute"),
        ("deregister_image", {}, "ImageId"),
        ("enable_image_deprecation", {"ImageId": "ami-12345678"}, "DeprecateAt"),
        ("copy_image", {"SourceImageId": "ami-12345678", "Name": "copy"}, "SourceRegion"),
        ("register_image", {"RootDeviceName": "/dev/xvda"}, "Name"),
        ("delete_snapshot", {}, "SnapshotId"),
    ],
)
def test_missing_required_member(account, method, params, missing):
    """Members the model marks ``required`` (botocore checks them client-side; skipped here)."""
    ec2 = account.client("ec2", validate=False)
    with aws_error("MissingParameter", f"The request must contain the parameter {missing}"):
        getattr(ec2, method)(**params)


# ---------------------------------------------------------------------------------------------
# Per-parameter documented rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ab", "a" * 129, "bad*name", "semi;colon"])
def test_copy_and_create_image_names(account, name):
    """CopyImage.Name / CreateImage.Name follow the AMI name rule (3-128 of letters, digits and
    ``()[] ./-'@_``): InvalidAMIName.Malformed, as RegisterImage (test_register_image.py)."""
    ec2 = account.client("ec2", validate=False)
    source = _source_image(ec2)
    with aws_error("InvalidAMIName.Malformed", "AMI names must be between 3 and 128 characters long"):
        ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name=name)
    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    with aws_error("InvalidAMIName.Malformed", "AMI names must be between 3 and 128 characters long"):
        ec2.create_image(InstanceId=instance["InstanceId"], Name=name)
    assert [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]] == [source]


def test_description_at_most_255_characters(account):
    """RegisterImage / CopyImage / CreateImage Description: min 0, max 255 in the model."""
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "for parameter description is invalid"):
        register(ec2, "long-description", snap, Description="d" * 256)
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    image_id = register(ec2, "long-description", snap, Description="d" * 255)
    with aws_error("InvalidParameterValue", "for parameter description is invalid"):
        ec2.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="copy", Description="d" * 256)
    assert len(ec2.describe_images(Owners=["self"])["Images"]) == 1


def test_copy_image_client_token_up_to_64_ascii_characters(account):
    """CopyImage.ClientToken refers to "Ensuring idempotency": "A client token is a unique,
    case-sensitive string of up to 64 ASCII characters." (the project sends 48)."""
    ec2 = account.ec2()
    source = _source_image(ec2)
    with aws_error("InvalidParameterValue", "for parameter clientToken is invalid"):
        ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="copy-1", ClientToken="t" * 65)
    with aws_error("InvalidParameterValue", "for parameter clientToken is invalid"):
        ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="copy-1", ClientToken="t\u00e9")
    assert len(ec2.describe_images(Owners=["self"])["Images"]) == 1
    ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="copy-1", ClientToken="t" * 64)


def test_describe_tags_max_results_between_5_and_1000(account):
    """DescribeTags.MaxResults: "This value can be between 5 and 1000." AWS's text below the
    minimum: "Value ( 1 ) for parameter maxResults is invalid. Expecting a value greater than 5."
    (aws/aws-sdk-ruby#2575)."""
    ec2 = account.ec2()
    make_snapshot(ec2, 1)
    with aws_error("InvalidParameterValue", "Value ( 4 ) for parameter maxResults is invalid. Expecting a value greater than 5."):
        ec2.describe_tags(MaxResults=4)
    with aws_error("InvalidParameterValue", "for parameter maxResults is invalid"):
        ec2.describe_tags(MaxResults=1001)
    assert ec2.describe_tags(MaxResults=5)["Tags"] == []
    assert ec2.describe_tags(MaxResults=1000)["Tags"] == []


def test_launch_template_max_results_between_1_and_200(account):
    """DescribeLaunchTemplates / DescribeLaunchTemplateVersions MaxResults: "This value can be
    between 1 and 200."."""
    ec2 = account.client("ec2", validate=False)  # botocore knows DescribeLaunchTemplates' minimum
    with aws_error("InvalidParameterValue", "for parameter maxResults is invalid"):
        ec2.describe_launch_templates(MaxResults=0)
    with aws_error("InvalidParameterValue", "for parameter maxResults is invalid"):
        ec2.describe_launch_template_versions(Versions=["$Latest"], MaxResults=0)
    with aws_error("InvalidParameterValue", "for parameter maxResults is invalid"):
        ec2.describe_launch_templates(MaxResults=201)
    assert ec2.describe_launch_templates(MaxResults=200)["LaunchTemplates"] == []


def test_an_action_ec2_does_not_have_is_invalid_action(account):
    """EC2 answers an Action its API does not have with HTTP 400 ``InvalidAction`` "The action X
    is not valid for this web service." (moto failed with a 500). The request is signed with
    botocore's SigV4 as the account, and botocore's own EC2 parser reads the error."""
    import urllib.error
    import urllib.request

    import boto3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.parsers import create_parser

    ec2 = account.ec2()
    request = AWSRequest(
        method="POST",
        url=account.endpoint + "/",
        data="Action=DescribeNoSuchThings&Version=2016-11-15",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    credentials = boto3.Session(**account._creds).get_credentials()
    SigV4Auth(credentials, "ec2", "us-east-1").add_auth(request)
    prepared = request.prepare()
    try:
        with urllib.request.urlopen(  # noqa: S310 (loopback only)
            urllib.request.Request(prepared.url, data=prepared.body.encode(), headers=dict(prepared.headers))
        ) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    assert status == 400, body
    parsed = create_parser("ec2").parse({"status_code": status, "headers": {}, "body": body}, None)
    assert parsed["Error"] == {
        "Code": "InvalidAction",
        "Message": "The action DescribeNoSuchThings is not valid for this web service.",
    }
    # A known action still reaches moto.
    assert ec2.describe_images(Owners=["self"])["Images"] == []
