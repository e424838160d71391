"""CreateTags / DeleteTags / DescribeTags on ImportSnapshot task ids (moto: InvalidID for any
``import-snap-`` id, and no import tasks at all)."""

from __future__ import annotations

import itertools

from emu_helpers import aws_error, make_snapshot, raw_disk, tags_of

UNKNOWN_TASK = "import-snap-0123456789abcdef0"
_bucket_numbers = itertools.count()


def _task_id(account, tags=None):
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket(f"tasks-{next(_bucket_numbers)}")
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=raw_disk(4096))
    kwargs = {}
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "import-snapshot-task", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    return ec2.import_snapshot(
        DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": "disk.raw"}}, **kwargs
    )["ImportTaskId"]


def _task_tags(ec2, task_id):
    tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
    assert len(tasks) == 1
    return tags_of(tasks[0])


def _task_ids(ec2, filters):
    return [t["ImportTaskId"] for t in ec2.describe_import_snapshot_tasks(Filters=filters)["ImportSnapshotTasks"]]


def test_create_tags_shows_in_describe_import_snapshot_tasks_and_its_filters(account):
    ec2 = account.ec2()
    task_id = _task_id(account, tags={"lineage": "abc"})
    other_id = _task_id(account)

    ec2.create_tags(
        Resources=[task_id],
        Tags=[{"Key": "stage", "Value": "imported"}, {"Key": "lineage", "Value": "def"}],
    )

    assert _task_tags(ec2, task_id) == {"lineage": "def", "stage": "imported"}  # overwrites
    assert _task_tags(ec2, other_id) == {}
    assert _task_ids(ec2, [{"Name": "tag:stage", "Values": ["imported"]}]) == [task_id]
    assert _task_ids(ec2, [{"Name": "tag:lineage", "Values": ["abc"]}]) == []
    assert _task_ids(ec2, [{"Name": "tag-key", "Values": ["stage"]}]) == [task_id]


def test_describe_tags_lists_task_tags_as_import_snapshot_task(account):
    ec2 = account.ec2()
    task_id = _task_id(account, tags={"lineage": "abc"})
    snapshot_id = make_snapshot(ec2, 1)
    ec2.create_tags(Resources=[task_id, snapshot_id], Tags=[{"Key": "stage", "Value": "imported"}])

    rows = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [task_id]}])["Tags"]
    assert sorted((r["Key"], r["Value"], r["ResourceType"], r["ResourceId"]) for r in rows) == [
        ("lineage", "abc", "import-snapshot-task", task_id),
        ("stage", "imported", "import-snapshot-task", task_id),
    ]
    by_type = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["import-snapshot-task"]}])["Tags"]
    assert {r["ResourceId"] for r in by_type} == {task_id}
    stage = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["stage"]}])["Tags"]
    assert {(r["ResourceId"], r["ResourceType"]) for r in stage} == {
        (task_id, "import-snapshot-task"),
        (snapshot_id, "snapshot"),
    }
    snapshots_only = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["snapshot"]}])["Tags"]
    assert {r["ResourceId"] for r in snapshots_only} == {snapshot_id}


def test_delete_tags_with_value_deletes_only_on_match(account):
    ec2 = account.ec2()
    task_id = _task_id(account, tags={"a": "1", "b": "2", "c": "3"})

    ec2.delete_tags(Resources=[task_id], Tags=[{"Key": "a", "Value": "other"}])
    assert _task_tags(ec2, task_id) == {"a": "1", "b": "2", "c": "3"}

    ec2.delete_tags(Resources=[task_id], Tags=[{"Key": "a", "Value": "1"}, {"Key": "b"}])
    assert _task_tags(ec2, task_id) == {"c": "3"}

    ec2.delete_tags(Resources=[task_id])  # no Tag: every user tag goes
    assert _task_tags(ec2, task_id) == {}
    assert ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [task_id]}])["Tags"] == []


def test_unknown_or_malformed_task_ids_are_rejected_and_nothing_is_tagged(account):
    ec2 = account.ec2()
    task_id = _task_id(account)

    with aws_error("InvalidConversionTaskId.Malformed", UNKNOWN_TASK):
        ec2.create_tags(Resources=[task_id, UNKNOWN_TASK], Tags=[{"Key": "k", "Value": "v"}])
    with aws_error("InvalidID", "import-snap-NOT_AN_ID"):
        ec2.create_tags(Resources=[task_id, "import-snap-NOT_AN_ID"], Tags=[{"Key": "k", "Value": "v"}])
    with aws_error("InvalidConversionTaskId.Malformed"):
        ec2.delete_tags(Resources=[UNKNOWN_TASK], Tags=[{"Key": "k"}])
    assert _task_tags(ec2, task_id) == {}


def test_task_tags_are_per_account_and_region(account, other_account):
    ec2 = account.ec2()
    task_id = _task_id(account, tags={"lineage": "abc"})

    with aws_error("InvalidConversionTaskId.Malformed"):
        other_account.ec2().create_tags(Resources=[task_id], Tags=[{"Key": "k", "Value": "v"}])
    with aws_error("InvalidConversionTaskId.Malformed"):
        account.ec2("us-west-2").create_tags(Resources=[task_id], Tags=[{"Key": "k", "Value": "v"}])
    assert other_account.ec2().describe_tags(
        Filters=[{"Name": "resource-type", "Values": ["import-snapshot-task"]}]
    )["Tags"] == []
    assert _task_tags(ec2, task_id) == {"lineage": "abc"}
