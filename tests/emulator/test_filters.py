"""Filter names of the EC2 Describe operations (``ami_emulator/filter_names.py``, gate
``api_rules``).

AWS refuses a filter name the operation does not document: HTTP 400 ``InvalidParameterValue``
"The filter '<name>' is invalid" (boto/boto3#1299, aws/aws-cli#7225, aws/aws-fpga
``hdk/docs/describe_fpga_images.md``), whatever resources exist. The names are each operation's
``Filters`` documentation in botocore's EC2 model. A documented name the emulator does not apply
is answered with its own HTTP 400 ``EmulatorFilterNotImplemented`` (never AWS's code, never a 500).

Plain moto fails most of these: DescribeSnapshots ``state`` is an empty list without snapshots
and a 500 with one; DescribeTags / DescribeRegions ignore unknown names.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from emu_helpers import aws_error, make_snapshot, raw_disk, register, wait_for

INVALID = "InvalidParameterValue"
NOT_IMPLEMENTED = "EmulatorFilterNotImplemented"


def invalid(name: str) -> str:
    """AWS's text for an unknown filter name (no trailing period)."""
    return f"The filter '{name}' is invalid"


def f(name: str, *values: str) -> dict[str, Any]:
    return {"Name": name, "Values": list(values) or ["x"]}


def refused(call: Any, name: str) -> None:
    """``call()`` is answered 400 InvalidParameterValue with AWS's exact text for ``name``."""
    with pytest.raises(ClientError) as excinfo:
        call()
    response = excinfo.value.response
    assert (response["Error"]["Code"], response["Error"]["Message"]) == (INVALID, invalid(name)), response["Error"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["RetryAttempts"] == 0


def unimplemented(call: Any, name: str, action: str) -> None:
    """``call()`` is answered 400 EmulatorFilterNotImplemented naming the filter and operation."""
    with pytest.raises(ClientError) as excinfo:
        call()
    response = excinfo.value.response
    assert response["Error"]["Code"] == NOT_IMPLEMENTED, response["Error"]
    assert f"The filter '{name}' of {action} is documented by AWS but not implemented" in response["Error"]["Message"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400


# ================================================================ DescribeSnapshots


def test_snapshots_state_is_refused_with_and_without_snapshots(account):
    """The product's bug: ``state`` is DescribeImages' name; DescribeSnapshots' is ``status``.
    The refusal does not depend on whether a snapshot exists (plain moto: [] then a 500)."""
    ec2 = account.ec2()
    by_state = [f("state", "completed")]
    refused(lambda: ec2.describe_snapshots(OwnerIds=["self"], Filters=by_state), "state")
    snapshot = make_snapshot(ec2, 1)
    refused(lambda: ec2.describe_snapshots(OwnerIds=["self"], Filters=by_state), "state")
    # As the product calls it: owner self, paginated, tags ANDed with the state filter.
    ec2.create_tags(Resources=[snapshot], Tags=[{"Key": "ami-pipeline:source-token", "Value": "tok"}])
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"],
        Filters=[f("tag:ami-pipeline:source-token", "tok"), f("state", "completed")],
        PaginationConfig={"PageSize": 1000},
    )
    with aws_error(INVALID, invalid("state")):
        list(pages)


def test_snapshots_documented_filters_work(account):
    ec2 = account.ec2()
    tagged, other = make_snapshot(ec2, 1), make_snapshot(ec2, 2)
    ec2.create_tags(Resources=[tagged], Tags=[{"Key": "team", "Value": "blue"}])

    def ids(*filters: dict[str, Any]) -> list[str]:
        return sorted(s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=list(filters))["Snapshots"])

    assert ids(f("status", "completed")) == sorted([tagged, other])
    assert ids(f("status", "pending")) == []
    assert ids(f("tag:team", "blue"), f("status", "completed")) == [tagged]
    assert ids(f("tag-key", "team")) == [tagged]
    assert ids(f("snapshot-id", other, "snap-00000000000000000")) == [other]
    assert ids(f("volume-size", "2")) == [other]
    # tag:<key> is a pattern: any key is a valid name, even one no snapshot carries.
    assert ids(f("tag:no-such-key-anywhere", "v")) == []


@pytest.mark.parametrize(
    "name",
    [
        "state",  # DescribeImages'
        "Status",  # names are case-sensitive
        "tag-value",  # no longer documented for DescribeSnapshots
        "tag:",  # the pattern needs a key
        "owner",
        "snapshot_id",
        "",
    ],
)
def test_snapshots_undocumented_names_are_refused(account, name):
    ec2 = account.ec2()
    make_snapshot(ec2, 1)
    refused(lambda: ec2.describe_snapshots(Filters=[f(name)]), name)


def test_first_refused_name_in_request_order_is_reported(account):
    ec2 = account.ec2()
    refused(lambda: ec2.describe_snapshots(Filters=[f("status", "completed"), f("bogus-one"), f("bogus-two")]), "bogus-one")


def test_snapshots_documented_but_unapplied_filter_is_a_clear_emulator_error(account):
    """``transfer-type`` and ``owner-alias`` are documented; moto does not apply them. The answer
    is the emulator's own 400, with or without snapshots (plain moto: a 500 once one exists)."""
    ec2 = account.ec2()
    unimplemented(lambda: ec2.describe_snapshots(Filters=[f("transfer-type", "standard")]), "transfer-type", "DescribeSnapshots")
    make_snapshot(ec2, 1)
    unimplemented(lambda: ec2.describe_snapshots(Filters=[f("owner-alias", "amazon")]), "owner-alias", "DescribeSnapshots")
    # An unknown name is reported as AWS reports it even next to an unapplied one.
    refused(lambda: ec2.describe_snapshots(Filters=[f("owner-alias", "amazon"), f("state")]), "state")


# ================================================================ DescribeImages


def test_images_documented_filters_and_tag_pattern(account):
    ec2 = account.ec2()
    image_id = register(ec2, "filters-image", make_snapshot(ec2, 1))
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "ami-pipeline:managed", "Value": "true"}])

    def ids(*filters: dict[str, Any]) -> list[str]:
        return [i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=list(filters))["Images"]]

    assert ids(f("state", "available")) == [image_id]
    assert ids(f("name", "filters-*")) == [image_id]
    assert ids(f("tag:ami-pipeline:managed", "true"), f("tag-key", "ami-pipeline:managed")) == [image_id]
    assert ids(f("tag:anything-at-all", "x")) == []


@pytest.mark.parametrize("name", ["status", "State", "deprecation-time", "tag-value", "image_id", "tag:"])
def test_images_undocumented_names_are_refused(account, name):
    ec2 = account.ec2()
    refused(lambda: ec2.describe_images(Owners=["self"], Filters=[f(name)]), name)
    register(ec2, "filters-refused", make_snapshot(ec2, 1))
    refused(lambda: ec2.describe_images(Owners=["self"], Filters=[f(name)]), name)


def test_images_documented_but_unapplied_filter(account):
    ec2 = account.ec2()
    unimplemented(
        lambda: ec2.describe_images(Owners=["self"], Filters=[f("scan-result.highest-finding-severity-label", "high")]),
        "scan-result.highest-finding-severity-label",
        "DescribeImages",
    )
    register(ec2, "filters-unapplied", make_snapshot(ec2, 1))
    unimplemented(
        lambda: ec2.describe_images(Owners=["self"], Filters=[f("free-tier-eligible", "true")]),
        "free-tier-eligible",
        "DescribeImages",
    )


# ================================================================ DescribeImportSnapshotTasks


def test_import_snapshot_task_filters(account):
    """The model lists no names for DescribeImportSnapshotTasks; the emulator accepts
    ``tag:<key>``, ``tag-key`` and ``task-state`` (README: a guess) and refuses any other."""
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="d.raw", Body=raw_disk(1024 * 1024))
    task_id = ec2.import_snapshot(
        DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": "d.raw"}},
        TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": [{"Key": "ami-pipeline:managed", "Value": "true"}]}],
    )["ImportTaskId"]

    def ids(*filters: dict[str, Any]) -> list[str]:
        return [t["ImportTaskId"] for t in ec2.describe_import_snapshot_tasks(Filters=list(filters))["ImportSnapshotTasks"]]

    # As the product calls it (create-image's sweep): tag-key, paginated.
    pages = ec2.get_paginator("describe_import_snapshot_tasks").paginate(Filters=[f("tag-key", "ami-pipeline:managed")])
    assert [t["ImportTaskId"] for p in pages for t in p["ImportSnapshotTasks"]] == [task_id]
    assert ids(f("tag:ami-pipeline:managed", "true")) == [task_id]
    assert ids(f("tag:other", "x")) == []
    wait_for(lambda: ids(f("task-state", "completed")) == [task_id])
    for name in ("state", "status", "import-task-id", "tag-value"):
        refused(lambda: ec2.describe_import_snapshot_tasks(Filters=[f(name)]), name)


# ================================================================ DescribeInstances


def test_instances_filters(account):
    ec2 = account.ec2()
    refused(lambda: ec2.describe_instances(Filters=[f("ami-id", "ami-1")]), "ami-id")
    unimplemented(lambda: ec2.describe_instances(Filters=[f("tenancy", "default")]), "tenancy", "DescribeInstances")
    image_id = register(ec2, "filters-instances", make_snapshot(ec2, 1))
    instance = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]

    def ids(*filters: dict[str, Any]) -> list[str]:
        return [i["InstanceId"] for r in ec2.describe_instances(Filters=list(filters))["Reservations"] for i in r["Instances"]]

    assert ids(f("image-id", image_id), f("instance-state-name", "running")) == [instance]
    assert ids(f("tag:anything", "x")) == []
    # group-id is moto's alias; DescribeInstances documents instance.group-id.
    for name in ("ami-id", "group-id", "image_id"):
        refused(lambda: ec2.describe_instances(Filters=[f(name)]), name)
    unimplemented(lambda: ec2.describe_instances(Filters=[f("tenancy", "default")]), "tenancy", "DescribeInstances")


# ================================================================ launch templates


def test_launch_template_filters_differ_per_operation(account):
    """DescribeLaunchTemplates documents ``launch-template-name`` and tags, not ``image-id``;
    DescribeLaunchTemplateVersions documents ``image-id``, and no tag filter."""
    ec2 = account.ec2()
    image_id = register(ec2, "filters-lt", make_snapshot(ec2, 1))
    template = ec2.create_launch_template(LaunchTemplateName="filters-lt", LaunchTemplateData={"ImageId": image_id})[
        "LaunchTemplate"
    ]["LaunchTemplateId"]

    found = ec2.describe_launch_templates(Filters=[f("launch-template-name", "filters-lt")])["LaunchTemplates"]
    assert [t["LaunchTemplateId"] for t in found] == [template]
    assert ec2.describe_launch_templates(Filters=[f("tag:team", "x")])["LaunchTemplates"] == []
    refused(lambda: ec2.describe_launch_templates(Filters=[f("image-id", image_id)]), "image-id")

    versions = ec2.describe_launch_template_versions(LaunchTemplateId=template, Filters=[f("image-id", image_id)])
    assert [v["LaunchTemplateId"] for v in versions["LaunchTemplateVersions"]] == [template]
    refused(lambda: ec2.describe_launch_template_versions(LaunchTemplateId=template, Filters=[f("tag:team")]), "tag:team")
    refused(
        lambda: ec2.describe_launch_template_versions(LaunchTemplateId=template, Filters=[f("launch-template-name")]),
        "launch-template-name",
    )


# ================================================================ DescribeTags, DescribeRegions


def test_tags_filters(account):
    ec2 = account.ec2()
    snapshot = make_snapshot(ec2, 1)
    ec2.create_tags(Resources=[snapshot], Tags=[{"Key": "team", "Value": "blue"}])
    rows = ec2.describe_tags(Filters=[f("resource-id", snapshot), f("key", "team")])["Tags"]
    assert [(t["ResourceId"], t["Key"], t["Value"]) for t in rows] == [(snapshot, "team", "blue")]
    # Not documented for DescribeTags (its tag filters are key, value and tag:<key>).
    refused(lambda: ec2.describe_tags(Filters=[f("tag-key", "team")]), "tag-key")
    refused(lambda: ec2.describe_tags(Filters=[f("resource_id", snapshot)]), "resource_id")
    # Documented, but moto skips it without a word (every tag would come back).
    unimplemented(lambda: ec2.describe_tags(Filters=[f("tag:team", "blue")]), "tag:team", "DescribeTags")


def test_regions_filters(account):
    ec2 = account.ec2()
    assert ec2.describe_regions(RegionNames=["us-east-1"])["Regions"][0]["RegionName"] == "us-east-1"
    unimplemented(lambda: ec2.describe_regions(Filters=[f("region-name", "us-east-1")]), "region-name", "DescribeRegions")
    refused(lambda: ec2.describe_regions(Filters=[f("name", "us-east-1")]), "name")


# ================================================================ other operations


def test_other_operations_are_checked_from_the_model_too(account):
    """DescribeVolumes is not one the project calls: its names come from the model all the
    same, and moto's FilterNotImplementedError becomes the emulator's 400 (plain moto: 500)."""
    ec2 = account.ec2()
    refused(lambda: ec2.describe_volumes(Filters=[f("state", "available")]), "state")
    assert ec2.describe_volumes(Filters=[f("fast-restored", "true")])["Volumes"] == []
    ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
    assert len(ec2.describe_volumes(Filters=[f("status", "available")])["Volumes"]) == 1
    unimplemented(lambda: ec2.describe_volumes(Filters=[f("fast-restored", "true")]), "fast-restored", "DescribeVolumes")
    # DescribeVpcs writes the tag pattern as "tag - The key/value combination ...".
    assert ec2.describe_vpcs(Filters=[f("tag:Name", "none")])["Vpcs"] == []
    refused(lambda: ec2.describe_vpcs(Filters=[f("tag", "none")]), "tag")


# ================================================================ the lists themselves (no server)


def test_documented_lists_read_from_the_model():
    from ami_emulator import filter_names

    snapshots = filter_names.filter_names("DescribeSnapshots")
    assert snapshots is not None and snapshots.source == "model"
    assert snapshots.allows("status") and not snapshots.allows("state")
    assert snapshots.documented() == sorted(
        [
            "description", "encrypted", "owner-alias", "owner-id", "progress", "snapshot-id", "start-time",
            "status", "storage-tier", "transfer-type", "tag:<key>", "tag-key", "volume-id", "volume-size",
        ]
    )
    images = filter_names.filter_names("DescribeImages")
    assert images is not None and images.allows("state") and not images.allows("status")
    assert images.allows("tag:a:b") and not images.allows("tag:")
    # Nested lists (scan-result.highest-finding-severity-label's levels) are not names.
    assert not images.allows("critical") and images.allows("scan-result.highest-finding-severity-label")
    # aws/aws-cli#7225: DescribeInstanceStatus documents no tag filter and AWS refuses tag:Name.
    status = filter_names.filter_names("DescribeInstanceStatus")
    assert status is not None and not status.allows("tag:Name") and status.allows("instance-state-name")
    # Wire names: Filters.N where the member has no locationName.
    assert filter_names.filter_member("DescribeImportSnapshotTasks")[0] == "Filters"
    assert filter_names.filter_member("DescribeSnapshots")[0] == "Filter"
    # An operation whose documentation names nothing is not checked.
    assert filter_names.filter_names("DescribeExportTasks") is None
    assert filter_names.filter_names("RegisterImage") is None


def test_every_checked_list_reads_cleanly():
    from ami_emulator import filter_names

    checked = filter_names.checked_operations()
    assert len(checked) > 100
    for action, names in checked.items():
        assert names.names or names.tag_pattern, action
        for name in names.names:
            assert filter_names._NAME.match(name) and name != "tag:<key>", (action, name)


def test_parse_documentation():
    from ami_emulator.filter_names import parse_documentation

    parsed = parse_documentation(
        "<p>The filters.</p><ul><li><p><code>status</code> - The status (<code>a</code> | <code>b</code>).</p>"
        "<ul><li><p><code>nested</code> - no</p></li></ul></li>"
        "<li><p><code>group-id</code>: The group.</p></li>"
        "<li><p><code>tag</code>:&lt;key&gt; - The key/value combination of a tag.</p></li></ul>"
    )
    assert parsed is not None
    assert parsed.names == frozenset({"status", "group-id"}) and parsed.tag_pattern
    assert parse_documentation("<p>The filters.</p>") is None
    # An item that does not start with a name: the whole operation is left unchecked.
    assert parse_documentation("<ul><li><p>Some prose here - and more</p></li></ul>") is None


def test_serve_refuses_undocumented_names():
    from ami_emulator import filter_names

    with pytest.raises(ValueError, match="not documented"):
        filter_names.serve("DescribeSnapshots", ["state"])
    with pytest.raises(ValueError, match="not known"):
        filter_names.serve("DescribeExportTasks", ["x"])


def test_image_getters_are_all_documented():
    """Every DescribeImages filter images.py applies is a documented one (no dead getters)."""
    from ami_emulator import filter_names, images

    documented = filter_names.filter_names("DescribeImages")
    assert documented is not None
    assert sorted(n for n in images._IMAGE_FILTERS if not documented.allows(n)) == []
