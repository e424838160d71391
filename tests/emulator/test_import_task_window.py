"""DescribeImportSnapshotTasks lists "import snapshot tasks that are currently active or were
completed or canceled in the previous 7 days" (API reference, response element
importSnapshotTaskSet), on the emulator's clock. Tasks are aged with
``POST /ami-pipeline-emulator/import-task-time``.
"""

from __future__ import annotations

import datetime as _dt

from emu_helpers import aws_error, raw_disk

DAY = _dt.timedelta(days=1)


def _iso(when: _dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def _start(account, ec2, bucket, key, tag):
    return ec2.import_snapshot(
        DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": key}},
        TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": [{"Key": "batch", "Value": tag}]}],
    )["ImportTaskId"]


def _age(account, task_id, **times):
    status, body = account.control(
        "import-task-time", {"account_id": account.id, "region": "us-east-1", "import_task_id": task_id, **times}
    )
    assert status == 200, body
    return body


def _listed(ec2, **kwargs):
    return [t["ImportTaskId"] for t in ec2.describe_import_snapshot_tasks(**kwargs)["ImportSnapshotTasks"]]


def test_tasks_ended_more_than_7_days_ago_are_not_listed(account):
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=raw_disk(4096))
    old = _start(account, ec2, bucket, "disk.raw", "sweep")
    recent = _start(account, ec2, bucket, "disk.raw", "sweep")
    failed_old = _start(account, ec2, bucket, "missing.raw", "sweep")  # ends "deleted"
    failed_recent = _start(account, ec2, bucket, "missing.raw", "sweep")

    now = _now()
    answer = _age(account, old, completed_at=_iso(now - 8 * DAY))
    assert answer["status"] == "completed" and answer["listed"] is False
    assert _age(account, recent, completed_at=_iso(now - 6 * DAY))["listed"] is True
    assert _age(account, failed_old, completed_at=_iso(now - 8 * DAY))["status"] == "deleted"
    _age(account, failed_recent, completed_at=_iso(now - 6 * DAY))

    assert sorted(_listed(ec2)) == sorted([recent, failed_recent])
    assert sorted(_listed(ec2, Filters=[{"Name": "tag:batch", "Values": ["sweep"]}])) == sorted(
        [recent, failed_recent]
    )
    assert _listed(ec2, ImportTaskIds=[recent]) == [recent]
    # Guess (README): an explicit id of a task past the window answers like an unknown task.
    with aws_error("InvalidConversionTaskId.Malformed", old):
        ec2.describe_import_snapshot_tasks(ImportTaskIds=[old])
    with aws_error("InvalidConversionTaskId.Malformed", old):
        ec2.describe_import_snapshot_tasks(ImportTaskIds=[recent, old])
    # The snapshot the old import made is still there: only the task drops out of the list.
    snapshots = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert any(s["Description"].endswith(old) for s in snapshots)


def test_window_boundary_and_paging(account):
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=raw_disk(4096))
    tasks = [_start(account, ec2, bucket, "disk.raw", "paged") for _ in range(5)]
    now = _now()
    _age(account, tasks[0], completed_at=_iso(now - 7 * DAY - _dt.timedelta(minutes=1)))
    _age(account, tasks[2], completed_at=_iso(now - 7 * DAY + _dt.timedelta(minutes=5)))
    _age(account, tasks[4], completed_at=_iso(now - 30 * DAY))
    page1 = ec2.describe_import_snapshot_tasks(MaxResults=2)
    page2 = ec2.describe_import_snapshot_tasks(MaxResults=2, NextToken=page1["NextToken"])
    seen = [t["ImportTaskId"] for t in page1["ImportSnapshotTasks"] + page2["ImportSnapshotTasks"]]
    assert seen == [tasks[1], tasks[2], tasks[3]]
    assert "NextToken" not in page2


def test_active_tasks_are_listed_however_old(account):
    """"currently active" tasks are listed whatever their age: a 30-day import started 10 days
    ago is still running."""
    account.configure(import_delay_seconds=30 * 86400)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=raw_disk(4096))
    task = _start(account, ec2, bucket, "disk.raw", "long")
    answer = _age(account, task, created_at=_iso(_now() - 10 * DAY))
    assert answer["status"] == "active" and answer["listed"] is True
    (described,) = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task])["ImportSnapshotTasks"]
    assert described["SnapshotTaskDetail"]["Status"] == "active"
    assert _listed(ec2) == [task]


def test_import_task_time_control_endpoint_validation(account):
    account.configure(import_delay_seconds=0)
    ec2, s3 = account.ec2(), account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=raw_disk(4096))
    task = _start(account, ec2, bucket, "disk.raw", "x")
    base = {"account_id": account.id, "region": "us-east-1"}
    when = _iso(_now() - DAY)
    status, body = account.control("import-task-time", {**base, "import_task_id": "import-snap-0123456789abcdef0", "created_at": when})
    assert status == 404, body
    status, body = account.control("import-task-time", {**base, "import_task_id": task, "created_at": when, "completed_at": when})
    assert status == 400, body
    status, body = account.control("import-task-time", {**base, "import_task_id": task})
    assert status == 400, body
    status, body = account.control("import-task-time", {**base, "import_task_id": task, "created_at": "yesterday"})
    assert status == 400, body
    status, body = account.control("import-task-time", {**base, "import_task_id": task, "created_at": when, "extra": 1})
    assert status == 400, body
    # Another region of the same account does not have the task.
    status, body = account.control("import-task-time", {**base, "region": "eu-west-1", "import_task_id": task, "created_at": when})
    assert status == 404, body
    body = _age(account, task, created_at="2025-01-02T03:04:05.678Z")
    assert body["created_at"] == "2025-01-02T03:04:05.678Z"
    assert body["completed_at"] == "2025-01-02T03:04:05.678Z"  # delay 0
    assert body["listed"] is False
