"""What AMI cleanup and lineage functions read besides the images themselves: instances launched
from an AMI (DescribeInstances image-id) and launch templates that reference one
(DescribeLaunchTemplateVersions, DescribeLaunchTemplates)."""

from __future__ import annotations

from emu_helpers import aws_error, make_snapshot, register


def _instances(response):
    return [i for r in response["Reservations"] for i in r["Instances"]]


def _all_instances(ec2, **kwargs):
    paginator = ec2.get_paginator("describe_instances")
    return [i for page in paginator.paginate(**kwargs) for r in page["Reservations"] for i in r["Instances"]]


# ------------------------------------------------------------------------- DescribeInstances


def test_describe_instances_by_image_id_shows_every_state_and_pages_by_instance(account):
    ec2 = account.ec2()
    ami = register(ec2, "launched-from", make_snapshot(ec2, 1))
    other = register(ec2, "unrelated", make_snapshot(ec2, 1))
    group = [i["InstanceId"] for i in ec2.run_instances(ImageId=ami, MinCount=4, MaxCount=4, InstanceType="t3.micro")["Instances"]]
    singles = [
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
        for _ in range(3)
    ]
    ec2.run_instances(ImageId=other, MinCount=2, MaxCount=2, InstanceType="t3.micro")
    ec2.stop_instances(InstanceIds=[group[1]])
    ec2.terminate_instances(InstanceIds=[group[2]])
    by_image = [{"Name": "image-id", "Values": [ami]}]

    states = {i["InstanceId"]: i["State"]["Name"] for i in _instances(ec2.describe_instances(Filters=by_image))}
    assert set(states) == set(group + singles)
    assert states[group[1]] == "stopped" and states[group[2]] == "terminated"
    assert [s for i, s in states.items() if i not in (group[1], group[2])] == ["running"] * 5

    # MaxResults counts instances (moto: reservations), so the 4-instance reservation is split.
    page1 = ec2.describe_instances(Filters=by_image, MaxResults=5)
    assert len(_instances(page1)) == 5
    page2 = ec2.describe_instances(Filters=by_image, MaxResults=5, NextToken=page1["NextToken"])
    assert len(_instances(page2)) == 2 and "NextToken" not in page2
    seen = [i["InstanceId"] for i in _instances(page1) + _instances(page2)]
    assert sorted(seen) == sorted(group + singles)
    paged = _all_instances(ec2, Filters=by_image, PaginationConfig={"PageSize": 5})
    assert sorted(i["InstanceId"] for i in paged) == sorted(group + singles)
    for reservation in page1["Reservations"] + page2["Reservations"]:
        assert reservation["ReservationId"].startswith("r-") and reservation["OwnerId"] == account.id

    stopped = ec2.describe_instances(
        Filters=by_image + [{"Name": "instance-state-name", "Values": ["stopped", "terminated"]}]
    )
    assert sorted(i["InstanceId"] for i in _instances(stopped)) == sorted([group[1], group[2]])

    with aws_error("InvalidPaginationToken"):
        ec2.describe_instances(Filters=by_image, MaxResults=5, NextToken="bogus")
    with aws_error("InvalidParameterValue"):
        ec2.describe_instances(Filters=by_image, MaxResults=4)
    with aws_error("InvalidParameterCombination"):
        ec2.describe_instances(InstanceIds=[group[0]], MaxResults=5)


def test_describe_instances_without_max_results_returns_everything(account):
    ec2 = account.ec2()
    ami = register(ec2, "many-reservations", make_snapshot(ec2, 1))
    for _ in range(101):  # moto alone stops at 100 reservations and adds a NextToken
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    everything = ec2.describe_instances(Filters=[{"Name": "image-id", "Values": [ami]}])
    assert len(_instances(everything)) == 101 and "NextToken" not in everything


# -------------------------------------------------------------------------- launch templates


def _versions(response):
    return [(v["LaunchTemplateId"], v["VersionNumber"], v["LaunchTemplateData"].get("ImageId")) for v in response["LaunchTemplateVersions"]]


def test_launch_template_versions_of_every_template_latest_and_default(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    old, new = register(ec2, "lt-old", snap), register(ec2, "lt-new", snap)
    templates = []
    for n in range(17):  # more than moto's silent cut at 15
        lt = ec2.create_launch_template(LaunchTemplateName=f"lt-{n:02d}", LaunchTemplateData={"ImageId": old})
        templates.append(lt["LaunchTemplate"]["LaunchTemplateId"])
    moved = templates[0]
    ec2.create_launch_template_version(LaunchTemplateId=moved, LaunchTemplateData={"ImageId": new})
    expected_latest = {(t, 2 if t == moved else 1, new if t == moved else old) for t in templates}
    expected_default = {(t, 1, old) for t in templates}

    latest = ec2.describe_launch_template_versions(Versions=["$Latest"])
    assert set(_versions(latest)) == expected_latest and len(latest["LaunchTemplateVersions"]) == 17
    assert "NextToken" not in latest
    default = ec2.describe_launch_template_versions(Versions=["$Default"])
    assert set(_versions(default)) == expected_default
    assert all(v["DefaultVersion"] for v in default["LaunchTemplateVersions"])

    both = _versions(ec2.describe_launch_template_versions(Versions=["$Latest", "$Default"]))
    assert len(both) == len(set(both)) == 18  # a version that is both is listed once
    assert set(both) == expected_latest | expected_default

    paginator = ec2.get_paginator("describe_launch_template_versions")
    pages = list(paginator.paginate(Versions=["$Latest", "$Default"], PaginationConfig={"PageSize": 5}))
    assert [len(p["LaunchTemplateVersions"]) for p in pages] == [5, 5, 5, 3]
    assert sorted(v for p in pages for v in _versions(p)) == sorted(both)

    only_new = ec2.describe_launch_template_versions(Versions=["$Latest"], Filters=[{"Name": "image-id", "Values": [new]}])
    assert _versions(only_new) == [(moved, 2, new)]

    with aws_error("InvalidParameterValue", "for \u2018--versions\u2019 specify \u2018$Latest\u2019"):
        ec2.describe_launch_template_versions(Versions=["$Latest", "1"])
    with aws_error("InvalidParameterValue"):
        ec2.describe_launch_template_versions(Versions=["2"])
    with aws_error("MissingParameter"):
        ec2.describe_launch_template_versions()


def test_launch_template_versions_of_one_template(account):
    ec2 = account.ec2()
    snap = make_snapshot(ec2, 1)
    amis = [register(ec2, f"lt-ver-{n}", snap) for n in range(4)]
    lt = ec2.create_launch_template(
        LaunchTemplateName="one", LaunchTemplateData={"ImageId": amis[0], "InstanceType": "t3.micro"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    for ami in amis[1:]:
        ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData={"ImageId": ami})
    ec2.modify_launch_template(LaunchTemplateId=lt, DefaultVersion="2")

    every = ec2.describe_launch_template_versions(LaunchTemplateId=lt)
    assert _versions(every) == [(lt, n + 1, ami) for n, ami in enumerate(amis)]
    assert [v["DefaultVersion"] for v in every["LaunchTemplateVersions"]] == [False, True, False, False]
    by_name = ec2.describe_launch_template_versions(LaunchTemplateName="one", Versions=["$Default", "4", "1"])
    assert _versions(by_name) == [(lt, 1, amis[0]), (lt, 2, amis[1]), (lt, 4, amis[3])]

    page1 = ec2.describe_launch_template_versions(LaunchTemplateId=lt, MaxResults=3)
    assert [v["VersionNumber"] for v in page1["LaunchTemplateVersions"]] == [1, 2, 3]
    page2 = ec2.describe_launch_template_versions(LaunchTemplateId=lt, MaxResults=3, NextToken=page1["NextToken"])
    assert [v["VersionNumber"] for v in page2["LaunchTemplateVersions"]] == [4] and "NextToken" not in page2

    default = ec2.describe_launch_template_versions(
        LaunchTemplateId=lt, Filters=[{"Name": "is-default-version", "Values": ["true"]}]
    )
    assert _versions(default) == [(lt, 2, amis[1])]
    typed = ec2.describe_launch_template_versions(
        LaunchTemplateId=lt, Filters=[{"Name": "instance-type", "Values": ["t3.*"]}]
    )
    assert _versions(typed) == [(lt, 1, amis[0])]
    bounded = ec2.describe_launch_template_versions(LaunchTemplateId=lt, MinVersion="2", MaxVersion="3")
    assert [v["VersionNumber"] for v in bounded["LaunchTemplateVersions"]] == [2, 3]

    with aws_error("InvalidParameterValue"):
        ec2.describe_launch_template_versions(LaunchTemplateId=lt, MaxResults=201)
    with aws_error("InvalidLaunchTemplateId.VersionNotFound"):
        ec2.describe_launch_template_versions(LaunchTemplateId=lt, Versions=["0"])
    with aws_error("InvalidLaunchTemplateId.VersionNotFound"):
        ec2.describe_launch_template_versions(LaunchTemplateId=lt, Versions=["5"])
    with aws_error("InvalidParameterValue", "filter"):
        ec2.describe_launch_template_versions(LaunchTemplateId=lt, Filters=[{"Name": "no-such-filter", "Values": ["x"]}])


def test_describe_launch_templates_pages_past_fifteen(account):
    ec2 = account.ec2()
    ami = register(ec2, "lt-paging", make_snapshot(ec2, 1))
    created = {
        ec2.create_launch_template(LaunchTemplateName=f"page-{n:02d}", LaunchTemplateData={"ImageId": ami})[
            "LaunchTemplate"
        ]["LaunchTemplateId"]
        for n in range(18)
    }
    everything = ec2.describe_launch_templates()
    assert {t["LaunchTemplateId"] for t in everything["LaunchTemplates"]} == created
    pages = list(ec2.get_paginator("describe_launch_templates").paginate(PaginationConfig={"PageSize": 7}))
    assert [len(p["LaunchTemplates"]) for p in pages] == [7, 7, 4]
    assert {t["LaunchTemplateId"] for p in pages for t in p["LaunchTemplates"]} == created
    with aws_error("InvalidPaginationToken"):
        ec2.describe_launch_templates(MaxResults=7, NextToken="nope")
