"""What the cleanup function needs to remove AMIs in few calls, driven with boto3 (ec2 + ssm):
DeregisterImage ``DeleteAssociatedSnapshots`` (with IAM ``missing-permissions``),
DescribeImageReferences (instances, launch templates, SSM parameters, Image Builder types,
options, paging, IAM), DisableImageDeprecation, and how request counting and rate limits see
these actions.

Sources: botocore's EC2 model (DeregisterImageRequest/Result, DeleteSnapshotReturnCode,
DescribeImageReferencesRequest/Result, ResourceTypeOption), the API reference pages of the
operations and the EC2 User Guide "Identify your resources referencing specified AMIs"; cited
next to each rule in ``ami_emulator/images.py``, ``image_references.py`` and ``iam.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.config import Config

from conftest import Account
from emu_helpers import aws_error, image, make_snapshot, register
from test_iam import allow, denials, doc, restrict

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
INSTANCE, TEMPLATE, PARAMETER = "ec2:Instance", "ec2:LaunchTemplate", "ssm:Parameter"
# The policy of the EC2 User Guide's "Required IAM permissions" for DescribeImageReferences.
CALLED_VIA = {"ForAnyValue:StringEquals": {"aws:CalledVia": ["ec2-images.amazonaws.com"]}}
REFERENCE_PERMISSIONS = [
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "ssm:DescribeParameters",
    "ssm:GetParameters",
    "imagebuilder:ListImageRecipes",
    "imagebuilder:ListContainerRecipes",
    "imagebuilder:GetContainerRecipe",
]


def _raw_bodies(ec2: Any, operation: str) -> list[bytes]:
    """Collect the raw HTTP bodies of ``operation`` answered to this client."""
    bodies: list[bytes] = []

    def keep(http_response: Any, **_: Any) -> None:
        bodies.append(http_response.content)

    ec2.meta.events.register(f"after-call.ec2.{operation}", keep)
    return bodies


def _snapshot_ids(ec2: Any) -> set[str]:
    return {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def _refs(ec2: Any, image_ids: list[str], **kwargs: Any) -> set[tuple[str, str, str]]:
    answer = ec2.describe_image_references(ImageIds=image_ids, **kwargs)
    assert "NextToken" not in answer
    return {(r["ImageId"], r["ResourceType"], r["Arn"]) for r in answer["ImageReferences"]}


def _instance_arn(account: Account, instance_id: str) -> str:
    return f"arn:aws:ec2:us-east-1:{account.id}:instance/{instance_id}"


def _launch(ec2: Any, image_id: str, count: int = 1) -> list[str]:
    reservation = ec2.run_instances(ImageId=image_id, MinCount=count, MaxCount=count, InstanceType="t3.micro")
    return [i["InstanceId"] for i in reservation["Instances"]]


# ================================================================ DeregisterImage + snapshots


def test_a_snapshot_shared_by_two_amis_stays_when_one_is_deregistered(account):
    ec2 = account.ec2()
    shared, own = make_snapshot(ec2, 8), make_snapshot(ec2, 2)
    first = ec2.register_image(
        Name="cleanup-first",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": shared}},
            {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": own}},
        ],
    )["ImageId"]
    second = register(ec2, "cleanup-second", shared)
    bodies = _raw_bodies(ec2, "DeregisterImage")

    result = ec2.deregister_image(ImageId=first, DeleteAssociatedSnapshots=True)

    assert result["Return"] is True
    assert sorted(result["DeleteSnapshotResults"], key=lambda r: r["SnapshotId"]) == sorted(
        [{"SnapshotId": shared, "ReturnCode": "skipped"}, {"SnapshotId": own, "ReturnCode": "success"}],
        key=lambda r: r["SnapshotId"],
    )
    # The wire format botocore parsed: EC2's deleteSnapshotResultSet of items.
    assert b"<deleteSnapshotResultSet><item><snapshotId>" in bodies[0].replace(b"\n", b"").replace(b" ", b"")
    assert _snapshot_ids(ec2) == {shared}
    assert image(ec2, second)["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == shared
    with aws_error("InvalidAMIID.Unavailable"):
        ec2.describe_image_attribute(ImageId=first, Attribute="description")

    # Once the last AMI using it goes, the snapshot goes with it.
    result = ec2.deregister_image(ImageId=second, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "success"}]
    assert _snapshot_ids(ec2) == set()


def test_a_disabled_ami_still_keeps_a_shared_snapshot(account):
    ec2 = account.ec2()
    shared = make_snapshot(ec2, 1)
    gone, disabled = register(ec2, "cleanup-gone", shared), register(ec2, "cleanup-disabled", shared)
    ec2.disable_image(ImageId=disabled)
    result = ec2.deregister_image(ImageId=gone, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "skipped"}]
    assert _snapshot_ids(ec2) == {shared}


def test_without_the_flag_snapshots_stay_and_no_results_are_reported(account):
    ec2 = account.ec2()
    snapshot = make_snapshot(ec2, 1)
    image_id = register(ec2, "cleanup-keep", snapshot)
    bodies = _raw_bodies(ec2, "DeregisterImage")
    result = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=False)
    assert result.get("DeleteSnapshotResults", []) == []
    assert b"deleteSnapshotResultSet" not in bodies[0]
    assert _snapshot_ids(ec2) == {snapshot}


def test_missing_delete_snapshot_permission_answers_missing_permissions_and_still_deregisters(account):
    setup = account.ec2()
    managed, foreign = make_snapshot(setup, 1), make_snapshot(setup, 1)
    setup.create_tags(Resources=[managed], Tags=[{"Key": "managed", "Value": "true"}])
    image_id = setup.register_image(
        Name="cleanup-iam",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": managed}},
            {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": foreign}},
        ],
    )["ImageId"]
    role = restrict(
        account,
        "cleaner",
        doc(
            allow("ec2:DeregisterImage", "arn:aws:ec2:*::image/*"),
            allow("ec2:DeleteSnapshot", "arn:aws:ec2:*::snapshot/*", {"StringEquals": {"aws:ResourceTag/managed": "true"}}),
        ),
    )

    result = role.client("ec2", config=NO_RETRY).deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)

    codes = {r["SnapshotId"]: r["ReturnCode"] for r in result["DeleteSnapshotResults"]}
    assert codes == {managed: "success", foreign: "missing-permissions"}
    assert setup.describe_images(Owners=["self"])["Images"] == []
    assert _snapshot_ids(setup) == {foreign}
    (denial,) = [d for d in denials(account) if d["action"] == "ec2:DeleteSnapshot"]
    assert denial["resource"] == f"arn:aws:ec2:us-east-1::snapshot/{foreign}"
    assert denial["request"] == "ec2:DeregisterImage"
    assert "missing-permissions" in denial["reason"]


def test_a_snapshot_used_elsewhere_is_skipped_before_permissions_are_considered(account):
    setup = account.ec2()
    shared = make_snapshot(setup, 1)
    first, _ = register(setup, "cleanup-p1", shared), register(setup, "cleanup-p2", shared)
    role = restrict(account, "no-delete", doc(allow("ec2:DeregisterImage", "arn:aws:ec2:*::image/*")))
    result = role.ec2().deregister_image(ImageId=first, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "skipped"}]


def test_deregister_itself_still_needs_deregister_image(account):
    setup = account.ec2()
    snapshot = make_snapshot(setup, 1)
    image_id = register(setup, "cleanup-denied", snapshot)
    role = restrict(account, "only-delete", doc(allow("ec2:DeleteSnapshot", "*")))
    with aws_error("UnauthorizedOperation", f"ec2:DeregisterImage on resource: arn:aws:ec2:us-east-1::image/{image_id}"):
        role.client("ec2", config=NO_RETRY).deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    assert image(setup, image_id)["State"] == "available"
    assert _snapshot_ids(setup) == {snapshot}


# ================================================================ DescribeImageReferences


def test_instances_are_found_in_every_state_by_default_and_scoped_by_state_name(account):
    ec2 = account.ec2()
    target = register(ec2, "ref-instances", make_snapshot(ec2, 1))
    other = register(ec2, "ref-other", make_snapshot(ec2, 1))
    running, stopped, terminated = _launch(ec2, target, 3)
    _launch(ec2, other)
    ec2.stop_instances(InstanceIds=[stopped])
    ec2.terminate_instances(InstanceIds=[terminated])
    every = {(target, INSTANCE, _instance_arn(account, i)) for i in (running, stopped, terminated)}

    assert _refs(ec2, [target], ResourceTypes=[{"ResourceType": INSTANCE}]) == every
    only_running = [{"ResourceType": INSTANCE, "ResourceTypeOptions": [{"OptionName": "state-name", "OptionValues": ["running"]}]}]
    assert _refs(ec2, [target], ResourceTypes=only_running) == {(target, INSTANCE, _instance_arn(account, running))}
    two_states = [{"ResourceType": INSTANCE, "ResourceTypeOptions": [{"OptionName": "state-name", "OptionValues": ["stopped", "terminated"]}]}]
    assert {r[2] for r in _refs(ec2, [target], ResourceTypes=two_states)} == {
        _instance_arn(account, stopped),
        _instance_arn(account, terminated),
    }


def test_launch_templates_are_checked_to_version_depth_from_the_latest(account):
    ec2 = account.ec2()
    old = register(ec2, "ref-lt-old", make_snapshot(ec2, 1))
    new = register(ec2, "ref-lt-new", make_snapshot(ec2, 1))
    template = ec2.create_launch_template(LaunchTemplateName="ref-lt", LaunchTemplateData={"ImageId": old})
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    arn = f"arn:aws:ec2:us-east-1:{account.id}:launch-template/{template_id}"
    # Version 2 also uses the old image: still one reference per template and image.
    ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": old})
    for _ in range(10):  # versions 3..12 use the new image
        ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": new})

    templates = [{"ResourceType": TEMPLATE}]
    # Default depth 10: versions 3..12 only.
    assert _refs(ec2, [old, new], ResourceTypes=templates) == {(new, TEMPLATE, arn)}

    def depth(n: str) -> list[dict[str, Any]]:
        return [{"ResourceType": TEMPLATE, "ResourceTypeOptions": [{"OptionName": "version-depth", "OptionValues": [n]}]}]

    assert _refs(ec2, [old], ResourceTypes=depth("10")) == set()
    assert _refs(ec2, [old], ResourceTypes=depth("11")) == {(old, TEMPLATE, arn)}
    assert _refs(ec2, [old, new], ResourceTypes=depth("10000")) == {(old, TEMPLATE, arn), (new, TEMPLATE, arn)}
    assert _refs(ec2, [new], ResourceTypes=depth("1")) == {(new, TEMPLATE, arn)}
    assert _refs(ec2, [old], ResourceTypes=depth("1")) == set()


def test_ssm_parameters_of_data_type_aws_ec2_image_are_found(account):
    ec2, ssm = account.ec2(), account.client("ssm")
    target = register(ec2, "ref-ssm", make_snapshot(ec2, 1))
    ssm.put_parameter(Name="/golden/ami", Value=target, Type="String", DataType="aws:ec2:image")
    ssm.put_parameter(Name="plain-ami", Value=target, Type="String", DataType="aws:ec2:image")
    ssm.put_parameter(Name="/text/ami", Value=target, Type="String")  # data type text: not a reference
    ssm.put_parameter(Name="/moved/ami", Value=target, Type="String", DataType="aws:ec2:image")
    ssm.put_parameter(Name="/moved/ami", Value="ami-0123456789abcdef0", Type="String", DataType="aws:ec2:image", Overwrite=True)
    ssm.put_parameter(Name="/other-region", Value=target, Type="String", DataType="aws:ec2:image")
    account.client("ssm", "us-west-2").put_parameter(Name="/west", Value=target, Type="String", DataType="aws:ec2:image")

    found = _refs(ec2, [target], ResourceTypes=[{"ResourceType": PARAMETER}])

    prefix = f"arn:aws:ssm:us-east-1:{account.id}:parameter/"
    assert found == {
        (target, PARAMETER, prefix + "golden/ami"),
        (target, PARAMETER, prefix + "plain-ami"),
        (target, PARAMETER, prefix + "other-region"),
    }
    assert _refs(ec2, ["ami-0123456789abcdef0"], ResourceTypes=[{"ResourceType": PARAMETER}]) == {
        ("ami-0123456789abcdef0", PARAMETER, prefix + "moved/ami")
    }


def test_image_builder_types_and_unreferenced_images_answer_nothing(account):
    ec2 = account.ec2()
    used = register(ec2, "ref-used", make_snapshot(ec2, 1))
    unused = register(ec2, "ref-unused", make_snapshot(ec2, 1))
    (instance,) = _launch(ec2, used)
    builder = [{"ResourceType": "imagebuilder:ImageRecipe"}, {"ResourceType": "imagebuilder:ContainerRecipe"}]
    assert _refs(ec2, [used], ResourceTypes=builder) == set()
    assert _refs(ec2, [unused], IncludeAllResourceTypes=True) == set()
    assert _refs(ec2, [used, unused], IncludeAllResourceTypes=True) == {(used, INSTANCE, _instance_arn(account, instance))}


def test_include_all_resource_types_with_options_that_override_the_defaults(account):
    ec2, ssm = account.ec2(), account.client("ssm")
    target = register(ec2, "ref-all", make_snapshot(ec2, 1))
    running, stopped = _launch(ec2, target, 2)
    ec2.stop_instances(InstanceIds=[stopped])
    template_id = ec2.create_launch_template(LaunchTemplateName="ref-all", LaunchTemplateData={"ImageId": target})[
        "LaunchTemplate"
    ]["LaunchTemplateId"]
    ssm.put_parameter(Name="/all/ami", Value=target, Type="String", DataType="aws:ec2:image")
    template_arn = f"arn:aws:ec2:us-east-1:{account.id}:launch-template/{template_id}"
    parameter_arn = f"arn:aws:ssm:us-east-1:{account.id}:parameter/all/ami"

    assert _refs(ec2, [target], IncludeAllResourceTypes=True) == {
        (target, INSTANCE, _instance_arn(account, running)),
        (target, INSTANCE, _instance_arn(account, stopped)),
        (target, TEMPLATE, template_arn),
        (target, PARAMETER, parameter_arn),
    }
    scoped = [{"ResourceType": INSTANCE, "ResourceTypeOptions": [{"OptionName": "state-name", "OptionValues": ["running", "pending"]}]}]
    assert _refs(ec2, [target], IncludeAllResourceTypes=True, ResourceTypes=scoped) == {
        (target, INSTANCE, _instance_arn(account, running)),
        (target, TEMPLATE, template_arn),
        (target, PARAMETER, parameter_arn),
    }


def test_image_ids_that_do_not_exist_or_are_malformed(account, other_account):
    ec2 = account.ec2()
    # Another account's image and an id that was never registered: accepted, no references here.
    foreign = register(other_account.ec2(), "ref-foreign", make_snapshot(other_account.ec2(), 1))
    _launch(other_account.ec2(), foreign)
    assert _refs(ec2, [foreign, "ami-00000000000000000"], IncludeAllResourceTypes=True) == set()
    # A deregistered image can still be referenced (here by a launch template).
    gone = register(ec2, "ref-gone", make_snapshot(ec2, 1))
    template_id = ec2.create_launch_template(LaunchTemplateName="ref-gone", LaunchTemplateData={"ImageId": gone})[
        "LaunchTemplate"
    ]["LaunchTemplateId"]
    ec2.deregister_image(ImageId=gone)
    assert _refs(ec2, [gone], ResourceTypes=[{"ResourceType": TEMPLATE}]) == {
        (gone, TEMPLATE, f"arn:aws:ec2:us-east-1:{account.id}:launch-template/{template_id}")
    }
    with aws_error("InvalidAMIID.Malformed"):
        ec2.describe_image_references(ImageIds=["snap-0123"], IncludeAllResourceTypes=True)


def test_parameter_rules(account):
    ec2 = account.client("ec2", validate=False)
    target = register(ec2, "ref-rules", make_snapshot(ec2, 1))
    with aws_error("MissingParameter", "Either IncludeAllResourceTypes or ResourceTypes must be specified."):
        ec2.describe_image_references(ImageIds=[target])
    with aws_error("MissingParameter", "ImageId"):
        ec2.describe_image_references(IncludeAllResourceTypes=True)
    with aws_error("InvalidParameterValue"):
        ec2.describe_image_references(ImageIds=[f"ami-{i:017x}" for i in range(11)], IncludeAllResourceTypes=True)
    with aws_error("InvalidParameterValue", "resourceType"):
        ec2.describe_image_references(ImageIds=[target], ResourceTypes=[{"ResourceType": "ec2:Volume"}])
    cases = [
        (INSTANCE, "version-depth", ["3"]),
        (PARAMETER, "state-name", ["running"]),
        (INSTANCE, "state-name", ["sleeping"]),
        (TEMPLATE, "version-depth", ["0"]),
        (TEMPLATE, "version-depth", ["10001"]),
        (TEMPLATE, "version-depth", ["x"]),
    ]
    for rtype, option, values in cases:
        with aws_error("InvalidParameterValue"):
            ec2.describe_image_references(
                ImageIds=[target],
                ResourceTypes=[{"ResourceType": rtype, "ResourceTypeOptions": [{"OptionName": option, "OptionValues": values}]}],
            )
    with aws_error("InvalidParameterValue", "maxResults"):
        ec2.describe_image_references(ImageIds=[target], IncludeAllResourceTypes=True, MaxResults=4)
    with aws_error("InvalidPaginationToken"):
        ec2.describe_image_references(ImageIds=[target], IncludeAllResourceTypes=True, NextToken="bogus")


def test_pagination(account):
    ec2 = account.ec2()
    first = register(ec2, "ref-page-1", make_snapshot(ec2, 1))
    second = register(ec2, "ref-page-2", make_snapshot(ec2, 1))
    instances = set(_launch(ec2, first, 7)) | set(_launch(ec2, second, 5))
    everything = _refs(ec2, [first, second], IncludeAllResourceTypes=True)
    assert {r[2].rsplit("/", 1)[1] for r in everything} == instances

    pages = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"MaxResults": 5}
        if token:
            kwargs["NextToken"] = token
        answer = ec2.describe_image_references(ImageIds=[first, second], IncludeAllResourceTypes=True, **kwargs)
        pages.append(answer["ImageReferences"])
        token = answer.get("NextToken")
        if not token:
            break
    assert [len(p) for p in pages] == [5, 5, 2]
    # The request's image order: every reference of the first image comes first.
    flat = [r["ImageId"] for page in pages for r in page]
    assert flat == [first] * 7 + [second] * 5
    assert {(r["ImageId"], r["ResourceType"], r["Arn"]) for page in pages for r in page} == everything

    paginator = ec2.get_paginator("describe_image_references")
    walked = [r for page in paginator.paginate(ImageIds=[second, first], IncludeAllResourceTypes=True, PaginationConfig={"PageSize": 5}) for r in page["ImageReferences"]]
    assert [r["ImageId"] for r in walked] == [second] * 5 + [first] * 7


def test_iam_the_documented_policy_allows_and_a_missing_permission_refuses_the_call(account):
    setup = account.ec2()
    target = register(setup, "ref-iam", make_snapshot(setup, 1))
    _launch(setup, target)
    setup.create_launch_template(LaunchTemplateName="ref-iam", LaunchTemplateData={"ImageId": target})
    account.client("ssm").put_parameter(Name="/iam/ami", Value=target, Type="String", DataType="aws:ec2:image")

    # The EC2 User Guide's example policy, with its aws:CalledVia condition.
    full = restrict(
        account,
        "references",
        doc(allow("ec2:DescribeImageReferences"), allow(REFERENCE_PERMISSIONS, "*", CALLED_VIA)),
    ).ec2()
    assert {r[1] for r in _refs(full, [target], IncludeAllResourceTypes=True)} == {INSTANCE, TEMPLATE, PARAMETER}

    # The forward permissions are evaluated as called via ec2-images.amazonaws.com: a policy
    # that grants them only when called directly does not help.
    direct = restrict(
        account,
        "direct",
        doc(
            allow("ec2:DescribeImageReferences"),
            allow(REFERENCE_PERMISSIONS, "*", {"Null": {"aws:CalledVia": "true"}}),
        ),
    ).client("ec2", config=NO_RETRY)
    with aws_error("UnauthorizedOperation", "ec2:DescribeInstances"):
        direct.describe_image_references(ImageIds=[target], ResourceTypes=[{"ResourceType": INSTANCE}])

    no_ssm = restrict(
        account,
        "no-ssm",
        doc(allow("ec2:DescribeImageReferences"), allow([p for p in REFERENCE_PERMISSIONS if not p.startswith("ssm:")], "*", CALLED_VIA)),
    ).client("ec2", config=NO_RETRY)
    # Types whose permissions are there work ...
    assert {r[1] for r in _refs(no_ssm, [target], ResourceTypes=[{"ResourceType": INSTANCE}, {"ResourceType": TEMPLATE}])} == {INSTANCE, TEMPLATE}
    # ... a type whose permission is missing fails the whole call, naming the permission.
    with aws_error("UnauthorizedOperation", "is not authorized to perform: ssm:DescribeParameters on resource: *"):
        no_ssm.describe_image_references(ImageIds=[target], ResourceTypes=[{"ResourceType": PARAMETER}])
    with aws_error("UnauthorizedOperation", "ssm:DescribeParameters"):
        no_ssm.describe_image_references(ImageIds=[target], IncludeAllResourceTypes=True)
    assert any(d["action"] == "ssm:DescribeParameters" and d["request"] == "ec2:DescribeImageReferences" for d in denials(account))

    bare = restrict(account, "bare", doc(allow("ec2:Describe*"))).client("ec2", config=NO_RETRY)
    with aws_error("UnauthorizedOperation", "ssm:DescribeParameters"):
        bare.describe_image_references(ImageIds=[target], IncludeAllResourceTypes=True)
    nothing = restrict(account, "nothing", doc(allow("ssm:*"))).client("ec2", config=NO_RETRY)
    with aws_error("UnauthorizedOperation", "ec2:DescribeImageReferences"):
        nothing.describe_image_references(ImageIds=[target], ResourceTypes=[{"ResourceType": PARAMETER}])


# ================================================================ DisableImageDeprecation


def test_disable_image_deprecation_removes_deprecation_time(account):
    ec2 = account.ec2()
    image_id = register(ec2, "cleanup-deprecated", make_snapshot(ec2, 1))
    year = dt.datetime.now(dt.timezone.utc).year + 2
    ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=f"{year}-01-01T00:00:00Z")
    assert image(ec2, image_id)["DeprecationTime"] == f"{year}-01-01T00:00:00.000Z"
    assert ec2.disable_image_deprecation(ImageId=image_id)["Return"] is True
    assert "DeprecationTime" not in image(ec2, image_id)
    listed = ec2.describe_images(Owners=["self"], ImageIds=[image_id])["Images"]
    assert [i.get("DeprecationTime") for i in listed] == [None]
    # Idempotent, and refused for an unknown image.
    assert ec2.disable_image_deprecation(ImageId=image_id)["Return"] is True
    with aws_error("InvalidAMIID.NotFound"):
        ec2.disable_image_deprecation(ImageId="ami-00000000000000000")


# ================================================================ counting and rate limits


def test_request_counts_see_the_new_actions(account):
    ec2 = account.ec2()
    image_id = register(ec2, "cleanup-count", make_snapshot(ec2, 1))
    _launch(ec2, image_id, 6)
    status, _ = account.control(f"requests?account_id={account.id}", method="DELETE")
    assert status == 200
    pages = ec2.get_paginator("describe_image_references").paginate(
        ImageIds=[image_id], IncludeAllResourceTypes=True, PaginationConfig={"PageSize": 5}
    )
    assert sum(len(p["ImageReferences"]) for p in pages) == 6
    ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    status, body = account.control(f"requests?account_id={account.id}", method="GET")
    assert status == 200
    # Two pages; one DeregisterImage (its snapshot deletions are not requests of their own).
    assert body["requests"] == {"ec2:DescribeImageReferences": 2, "ec2:DeregisterImage": 1}


def test_rate_limits_buckets_of_the_new_actions(account):
    ec2 = account.client("ec2", config=NO_RETRY)
    images = [register(ec2, f"cleanup-rate-{i}", make_snapshot(ec2, 1)) for i in range(2)]
    status, body = account.control(
        "rate-limits",
        {"account_id": account.id, "enabled": True, "categories": {"non_mutating": {"capacity": 1, "refill_per_second": 0.01}}},
    )
    assert status == 200, body
    ec2.describe_image_references(ImageIds=images, IncludeAllResourceTypes=True)
    with aws_error("RequestLimitExceeded"):
        ec2.describe_image_references(ImageIds=images, IncludeAllResourceTypes=True)
    # DeregisterImage keeps its own row of the throttling table (100 / 5).
    for image_id in images:
        ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    status, state = account.control(f"rate-limits?account_id={account.id}", method="GET")
    buckets = state["buckets"]["us-east-1"]
    assert buckets["DescribeImageReferences"]["category"] == "non_mutating"
    assert buckets["DeregisterImage"]["category"] == "uncategorized"
    assert (buckets["DeregisterImage"]["capacity"], buckets["DeregisterImage"]["refill_per_second"]) == (100, 5.0)
    assert state["throttled"]["by_action"] == {"DescribeImageReferences": 1}

