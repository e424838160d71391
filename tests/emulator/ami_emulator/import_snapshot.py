"""ImportSnapshot and DescribeImportSnapshotTasks (VM Import/Export), missing from moto.

Follows https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ImportSnapshot.html,
.../API_DescribeImportSnapshotTasks.html, .../API_SnapshotTaskDetail.html and the AWS CLI
examples for both commands.

Lifecycle, computed lazily whenever a task is described (no background thread):

* ``active`` while less than the import delay has elapsed since ImportSnapshot: ``Progress``
  "3".."99", ``StatusMessage`` "pending" (first quarter) then "downloading/converting",
  ``SnapshotId`` "" (the empty string AWS returns while running, aws/aws-cli#9118),
  ``DiskImageSize`` 0.0 while pending, then the object size in bytes.
* then, once: the S3 object is read from moto's S3 backend of the same account. A usable disk
  of the named format gives a real EC2 snapshot (VolumeSize = virtual size rounded up to whole
  GiB, at least 1; description "Created by AWS-VMImport service for import-snap-...";
  VolumeId vol-ffffffff) and the task turns ``completed`` with ``SnapshotId`` set and no
  Progress/StatusMessage. Otherwise it turns ``deleted`` with ``StatusMessage``
  "ClientError: ...".

The delay is ``AMI_EMULATOR_IMPORT_DELAY_SECONDS`` (default 2) or the account's override set
through ``POST /ami-pipeline-emulator/config``; it is fixed when the task is created. With 0 the
task completes at its first describe (the ImportSnapshot response itself is always active).

Retention: DescribeImportSnapshotTasks lists "import snapshot tasks that are currently active or
were completed or canceled in the previous 7 days" (API_DescribeImportSnapshotTasks.html, response
element importSnapshotTaskSet). A task ends ``created_at`` + its delay, on the emulator's clock
(``common.utcnow``); once that is more than ``TASK_RETENTION`` ago it is neither listed nor found
by id (an explicit id answers like an unknown one). ``POST /ami-pipeline-emulator/import-task-time``
moves a task's start (``created_at``, or ``completed_at`` = start + delay) so tests can age it.
"""

from __future__ import annotations

import datetime as _dt
import re
import secrets
from typing import Any

from moto.core.responses import ActionResult

from .common import (
    LOCK,
    account_config,
    as_bool,
    as_list,
    client_error,
    filters_param,
    paginate,
    region_state,
    tag_specifications,
    tags_by_resource_type,
    utcnow,
)
from .disk_images import (
    SUPPORTED_FORMATS,
    DiskValidationError,
    object_size,
    size_in_gib,
    virtual_size_bytes,
)
from .filter_names import TAG_PATTERN, not_implemented
from .filter_names import serve as serve_filters
from .snapshots import new_snapshot

TASK_ID_RE = re.compile(r"^import-snap-[0-9a-f]{17}$")
# DescribeImportSnapshotTasks: "currently active or were completed or canceled in the previous 7 days".
TASK_RETENTION = _dt.timedelta(days=7)
S3_URL_RE = re.compile(r"^s3://([^/]+)/(.+)$")


def new_task_id() -> str:
    return "import-snap-" + secrets.token_hex(9)[:17]


def _malformed_task_id(task_id: str) -> Exception:
    # AWS answers InvalidConversionTaskId.Malformed for an import task id it does not know
    # (nodepool notes: "In practice, this can mean that the task no longer exists").
    return client_error(
        "InvalidConversionTaskId.Malformed", f"The import task ID '{task_id}' is malformed or does not exist."
    )


class ImportSnapshotTask:
    """One ImportSnapshot task of one account+region."""

    def __init__(
        self,
        *,
        task_id: str,
        account_id: str,
        region: str,
        delay_seconds: float,
        disk_format: str,
        bucket: str,
        key: str,
        url: str | None,
        description: str | None,
        encrypted: bool,
        kms_key_id: str | None,
        role_name: str | None,
        tags: dict[str, str],
    ) -> None:
        self.id = task_id
        self.account_id = account_id
        self.region = region
        self.created_at = utcnow()
        self.delay_seconds = delay_seconds
        self.format = disk_format
        self.bucket = bucket
        self.key = key
        self.url = url
        self.description = description
        self.encrypted = encrypted
        self.kms_key_id = kms_key_id
        self.role_name = role_name
        self.tags = dict(tags)
        self.status = "active"
        self.status_message: str | None = "pending"
        self.snapshot_id: str | None = None
        self.disk_image_size = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    def _fraction_done(self, now: _dt.datetime) -> float:
        if self.delay_seconds <= 0:
            return 1.0
        return (now - self.created_at).total_seconds() / self.delay_seconds

    def _s3_object(self) -> Any:
        """The S3 object, or None when the bucket or key does not exist in this account."""
        from moto.s3.models import s3_backends
        from moto.utilities.utils import get_partition

        s3 = s3_backends[self.account_id][get_partition(self.region)]
        bucket = s3.buckets.get(self.bucket)
        if bucket is None:
            return None
        return s3.get_object(self.bucket, self.key)

    def refresh(self, ec2_backend: Any) -> None:
        """Advance the task to where the clock says it is (called under LOCK)."""
        if self.status != "active":
            return
        fraction = self._fraction_done(utcnow())
        if fraction < 1.0:
            if fraction >= 0.25:
                self.status_message = "downloading/converting"
                if not self.disk_image_size:
                    obj = self._s3_object()
                    if obj is not None:
                        self.disk_image_size = float(object_size(obj))
            return
        obj = self._s3_object()
        if obj is None:
            self._fail(f"ClientError: Unknown object: s3://{self.bucket}/{self.key}")
            return
        self.disk_image_size = float(object_size(obj))
        try:
            size_bytes = virtual_size_bytes(self.format, obj)
        except DiskValidationError as exc:
            self._fail(f"ClientError: {exc}")
            return
        snapshot = new_snapshot(
            ec2_backend,
            size_in_gib(size_bytes),
            f"Created by AWS-VMImport service for {self.id}",
            encrypted=self.encrypted,
            kms_key_id=self.kms_key_id,
        )
        self.snapshot_id = snapshot.id
        if snapshot.kms_key_id:
            self.kms_key_id = snapshot.kms_key_id
        self.status = "completed"
        self.status_message = None

    def ended_at(self) -> _dt.datetime:
        """When the task completes or fails: its start plus its delay (lazily applied)."""
        return self.created_at + _dt.timedelta(seconds=max(0.0, self.delay_seconds))

    def listed(self, now: _dt.datetime) -> bool:
        """Whether DescribeImportSnapshotTasks still shows the task (call after ``refresh``)."""
        return self.status == "active" or self.ended_at() >= now - TASK_RETENTION

    def _fail(self, message: str) -> None:
        self.status = "deleted"
        self.status_message = message

    # -- rendering ------------------------------------------------------------------------

    def progress(self) -> str | None:
        if self.status != "active":
            return None
        fraction = max(0.0, min(1.0, self._fraction_done(utcnow())))
        return str(max(3, min(99, 3 + int(fraction * 96))))

    def detail(self, initial: bool = False) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "DiskImageSize": self.disk_image_size,
            "Format": self.format,
            "Status": self.status,
            "Encrypted": self.encrypted,
        }
        if self.description is not None:
            detail["Description"] = self.description
        if self.url:
            detail["Url"] = self.url
        else:
            detail["UserBucket"] = {"S3Bucket": self.bucket, "S3Key": self.key}
        if self.kms_key_id:
            detail["KmsKeyId"] = self.kms_key_id
        if self.status == "active":
            detail["Progress"] = "3" if initial else self.progress()
            detail["StatusMessage"] = "pending" if initial else self.status_message
            if not initial:
                detail["SnapshotId"] = ""
        elif self.status == "completed":
            detail["SnapshotId"] = self.snapshot_id
        else:
            detail["StatusMessage"] = self.status_message
        return detail

    def render(self, initial: bool = False) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "ImportTaskId": self.id,
            "SnapshotTaskDetail": self.detail(initial),
            "Tags": [{"Key": k, "Value": v} for k, v in self.tags.items()],
        }
        if self.description is not None:
            rendered["Description"] = self.description
        return rendered

    def filter_value(self, name: str) -> list[str] | None:
        """The task's values for one of the names ``filter_names`` accepts for
        DescribeImportSnapshotTasks (``tag:<key>``, ``tag-key``, ``task-state``); None for
        any other name (the api_rules gate refuses those first)."""
        if name.startswith("tag:"):
            key = name[4:]
            return [self.tags[key]] if key in self.tags else []
        if name == "tag-key":
            return list(self.tags)
        if name == "task-state":
            return [self.status]
        return None


# The filters DescribeImportSnapshotTasks applies: every name filter_names accepts for it.
TASK_FILTERS = (TAG_PATTERN, "tag-key", "task-state")


def _matches(task: ImportSnapshotTask, filters: dict[str, list[str]]) -> bool:
    import fnmatch

    for name, wanted in filters.items():
        values = task.filter_value(name)
        if values is None:
            raise not_implemented("DescribeImportSnapshotTasks", name)
        if not any(fnmatch.fnmatchcase(v, pattern) for v in values for pattern in wanted):
            return False
    return True


def _source_from_container(container: dict[str, Any]) -> tuple[str, str, str | None]:
    user_bucket = container.get("UserBucket") or {}
    url = container.get("Url")
    if user_bucket.get("S3Bucket") and user_bucket.get("S3Key"):
        return str(user_bucket["S3Bucket"]), str(user_bucket["S3Key"]), None
    if url:
        match = S3_URL_RE.match(str(url))
        if not match:
            # Guess: only s3:// URLs are modelled (https URLs would need fetching).
            raise client_error("InvalidParameter", f"The URL {url} is not a valid S3 URL (s3://bucket/key).")
        return match.group(1), match.group(2), str(url)
    raise client_error(
        "InvalidParameter", "The disk container must specify UserBucket (S3Bucket and S3Key) or Url."
    )


def import_snapshot(self: Any) -> ActionResult:
    """API_ImportSnapshot."""
    container = self._get_param("DiskContainer") or {}
    description = self._get_param("Description")
    client_token = self._get_param("ClientToken")
    encrypted = bool(as_bool(self._get_param("Encrypted"), False))
    kms_key_id = self._get_param("KmsKeyId")
    role_name = self._get_param("RoleName")
    specs = tag_specifications(self)
    self.error_on_dryrun()
    if kms_key_id and not encrypted:
        raise client_error(
            "InvalidParameterDependency", "The parameter KmsKeyId requires the parameter Encrypted to be set."
        )
    account = self.current_account
    backend = self.ec2_backend
    with LOCK:
        state = region_state(backend)
        if client_token and client_token in state.import_client_tokens:
            task = state.import_tasks[state.import_client_tokens[client_token]]
            task.refresh(backend)
            return ActionResult(task.render())
        disk_format = str(container.get("Format") or "").upper()
        if disk_format not in SUPPORTED_FORMATS:
            # Guess: error code/text for an unsupported format are not documented.
            raise client_error(
                "InvalidParameterValue",
                f"Value ({container.get('Format')}) for parameter DiskContainer.Format is invalid. "
                "Valid values: RAW | VHD | VMDK",
            )
        bucket, key, url = _source_from_container(container)
        tags = tags_by_resource_type(specs, ("import-snapshot-task",)).get("import-snapshot-task", {})
        task = ImportSnapshotTask(
            task_id=new_task_id(),
            account_id=account,
            region=self.region,
            delay_seconds=account_config(account)["import_delay_seconds"],
            disk_format=disk_format,
            bucket=bucket,
            key=key,
            url=url,
            description=description,
            encrypted=encrypted,
            kms_key_id=kms_key_id,
            role_name=role_name,
            tags=tags,
        )
        state.import_tasks[task.id] = task
        if client_token:
            state.import_client_tokens[client_token] = task.id
        return ActionResult(task.render(initial=True))


def describe_import_snapshot_tasks(self: Any) -> ActionResult:
    """API_DescribeImportSnapshotTasks: ImportTaskIds, Filters (``TASK_FILTERS``: the names
    ``filter_names`` accepts), MaxResults/NextToken; only tasks active or ended in the last 7
    days (``TASK_RETENTION``). Guess: an explicit id of an older task answers like an unknown id (the reference's 7 days
    cover the whole response list; tooling reports the task as no longer existing)."""
    self.error_on_dryrun()
    task_ids = [str(t) for t in as_list(self._get_param("ImportTaskIds"))]
    filters = filters_param(self)
    backend = self.ec2_backend
    with LOCK:
        state = region_state(backend)
        if task_ids:
            for task_id in task_ids:
                if task_id not in state.import_tasks:
                    raise _malformed_task_id(task_id)
            tasks = [state.import_tasks[t] for t in dict.fromkeys(task_ids)]
        else:
            tasks = list(state.import_tasks.values())
        for task in tasks:
            task.refresh(backend)
        now = utcnow()
        if task_ids:
            for task in tasks:
                if not task.listed(now):
                    raise _malformed_task_id(task.id)
        tasks = [t for t in tasks if t.listed(now) and _matches(t, filters)]
        order = {task_id: index for index, task_id in enumerate(state.import_tasks)}
        page, token = paginate(
            tasks,
            key=lambda t: f"{order[t.id]:012d}",
            max_results=self._get_param("MaxResults"),
            next_token=self._get_param("NextToken"),
            operation="DescribeImportSnapshotTasks",
            min_results=1,
            max_allowed=1000,
            clamp_above=True,
        )
        rendered = [t.render() for t in page]
    result: dict[str, Any] = {"ImportSnapshotTasks": rendered}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def handle_import_task_time(request: Any) -> Any:
    """``POST /ami-pipeline-emulator/import-task-time`` {"account_id", "region", "import_task_id",
    "created_at" | "completed_at"}: move the task's start (``completed_at`` sets the start to that
    time minus the task's delay). Answers the task's id, status and times; 404 for an unknown task.
    A task that has already completed or failed stays so."""
    from .common import ec2_backend_for, iso_millis
    from .control import ControlError, _account, _body, _json, _region, _required, _timestamp

    payload = _body(request)
    unknown = set(payload) - {"account_id", "region", "import_task_id", "created_at", "completed_at"}
    if unknown:
        raise ControlError(400, f"unknown fields: {sorted(unknown)}")
    if ("created_at" in payload) == ("completed_at" in payload):
        raise ControlError(400, "give exactly one of created_at or completed_at")
    account, region = _account(payload), _region(payload)
    task_id = str(_required(payload, "import_task_id"))
    when = _timestamp(payload, "created_at" if "created_at" in payload else "completed_at")
    with LOCK:
        backend = ec2_backend_for(account, region)
        task = region_state(backend).import_tasks.get(task_id)
        if task is None:
            raise ControlError(404, f"import task {task_id} not found in {account}/{region}")
        if "completed_at" in payload:
            when = when - _dt.timedelta(seconds=max(0.0, task.delay_seconds))
        task.created_at = when
        task.refresh(backend)
        answer = {
            "import_task_id": task.id,
            "status": task.status,
            "created_at": iso_millis(task.created_at),
            "completed_at": iso_millis(task.ended_at()),
            "listed": task.listed(utcnow()),
        }
    return _json(200, answer)


def install() -> None:
    from moto.ec2.responses import EC2Response

    from .control import register_route

    register_route("import-task-time", ("POST",), handle_import_task_time)

    EC2Response.import_snapshot = import_snapshot  # type: ignore[attr-defined]
    EC2Response.describe_import_snapshot_tasks = describe_import_snapshot_tasks  # type: ignore[attr-defined]
    serve_filters("DescribeImportSnapshotTasks", TASK_FILTERS)
