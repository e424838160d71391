"""CreateTags / DeleteTags / DescribeTags on ImportSnapshot task ids (``import-snap-...``).

Follows https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateTags.html,
.../API_DeleteTags.html, .../API_DescribeTags.html (resource type ``import-snapshot-task``, listed
in API_TagSpecification.html) and .../API_ImportSnapshotTask.html (its ``tagSet``).

moto rejects an ``import-snap-`` id with ``InvalidID`` (its id check only knows moto's own
prefixes) and its tag store knows nothing of the emulator's import tasks. Here the tags live on
the ``ImportSnapshotTask`` object of the request's account+region, so DescribeImportSnapshotTasks
shows them in ``Tags`` and its ``tag:<key>`` / ``tag-key`` / ``tag-value`` filters see them;
DescribeTags lists them with ``ResourceType`` ``import-snapshot-task``. Requests without an
``import-snap-`` id go to moto unchanged.

* CreateTags: every id is checked before anything changes. An id that is not ``import-snap-``
  followed by lower-case letters/digits → ``InvalidID`` ("The ID '...' is not valid", moto's text
  for that documented code); a well-formed id that is no task of this account+region →
  ``InvalidConversionTaskId.Malformed`` (what DescribeImportSnapshotTasks answers too). Other ids
  in the same call are checked and tagged by moto. Values overwrite; a missing ``Value`` is the
  empty string (as the reference says); at most 50 user tags (``TagLimitExceeded``).
* DeleteTags: a tag given with a ``Value`` is deleted only when the value matches; without a
  ``Value`` whatever its value; no ``Tag`` at all deletes every user tag (not ``aws:``).
* DescribeTags: filters ``key``, ``value``, ``resource-id`` (``*``/``?`` wildcards) and
  ``resource-type`` apply to the task tags as moto applies them to its own.
"""

from __future__ import annotations

import re
from typing import Any

from moto.core.responses import ActionResult, EmptyResult

from .common import LOCK, as_list, client_error, region_state

TASK_PREFIX = "import-snap-"
RESOURCE_TYPE = "import-snapshot-task"
# Real ids are not always hex (aws/aws-cli#9118 shows import-snap-247b055a63e5a470t).
WELL_FORMED_TASK_ID = re.compile(r"^import-snap-[0-9a-z]{8,32}$")
MAX_USER_TAGS = 50

_ORIGINAL: dict[str, Any] = {}


def _is_task_id(resource_id: str) -> bool:
    return str(resource_id).startswith(TASK_PREFIX)


def _split(resource_ids: list[str]) -> tuple[list[str], list[str]]:
    tasks = [r for r in resource_ids if _is_task_id(r)]
    others = [r for r in resource_ids if not _is_task_id(r)]
    return tasks, others


def _tasks(response: Any, task_ids: list[str]) -> list[Any]:
    """The tasks of the request's account+region, or the error AWS gives (called under LOCK)."""
    state = region_state(response.ec2_backend)
    found = []
    for task_id in task_ids:
        if not WELL_FORMED_TASK_ID.match(task_id):
            raise client_error("InvalidID", f"The ID '{task_id}' is not valid")
        task = state.import_tasks.get(task_id)
        if task is None:
            raise client_error(
                "InvalidConversionTaskId.Malformed",
                f"The import task ID '{task_id}' is malformed or does not exist.",
            )
        found.append(task)
    return found


def _tag_params(response: Any) -> list[dict[str, Any]]:
    return [t for t in as_list(response._get_param("Tags") or response._get_param("Tag")) if isinstance(t, dict)]


def create_tags(self: Any) -> ActionResult:
    """API_CreateTags with import-snap ids among the resources."""
    resource_ids = [str(r) for r in as_list(self._get_param("Resources") or self._get_param("ResourceId"))]
    task_ids, others = _split(resource_ids)
    if not task_ids:
        return _ORIGINAL["create_tags"](self)
    from moto.ec2.exceptions import TagLimitExceeded
    from moto.ec2.models import validate_resource_ids

    tags: dict[str, str] = {}
    for tag in _tag_params(self):
        value = tag.get("Value")
        tags[str(tag["Key"])] = "" if value is None else str(value)
    with LOCK:
        tasks = _tasks(self, task_ids)
        if others:
            validate_resource_ids(others)
            self.ec2_backend.do_resources_exist(others)
        for task in tasks:
            user_keys = {k for k in task.tags if not k.startswith("aws:")}
            user_keys |= {k for k in tags if not k.startswith("aws:")}
            if len(user_keys) > MAX_USER_TAGS:
                raise TagLimitExceeded()
        self.error_on_dryrun()
        if others:
            self.ec2_backend.create_tags(others, tags)
        for task in tasks:
            task.tags.update(tags)
    return EmptyResult()


def delete_tags(self: Any) -> ActionResult:
    """API_DeleteTags with import-snap ids among the resources."""
    resource_ids = [str(r) for r in as_list(self._get_param("Resources") or self._get_param("ResourceId"))]
    task_ids, others = _split(resource_ids)
    if not task_ids:
        return _ORIGINAL["delete_tags"](self)
    from moto.ec2.models import validate_resource_ids

    given = _tag_params(self)
    with LOCK:
        tasks = _tasks(self, task_ids)
        if others:
            validate_resource_ids(others)
        self.error_on_dryrun()
        if others:
            self.ec2_backend.delete_tags(others, {str(t["Key"]): t.get("Value") for t in given})
        for task in tasks:
            if not given:
                for key in [k for k in task.tags if not k.startswith("aws:")]:
                    del task.tags[key]
                continue
            for tag in given:
                key = str(tag["Key"])
                if key not in task.tags:
                    continue
                if "Value" in tag and tag["Value"] is not None and str(tag["Value"]) != task.tags[key]:
                    continue  # a Value deletes only on a match
                del task.tags[key]
    return EmptyResult()


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    from moto.ec2.utils import simple_aws_filter_to_re

    return [re.compile(simple_aws_filter_to_re(str(p))) for p in patterns]


def _task_tag_rows(response: Any, filters: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = _compile(filters.get("key", []))
    values = _compile(filters.get("value", []))
    ids = _compile(filters.get("resource-id", []))
    types = [str(t) for t in filters.get("resource-type", [])]
    if types and RESOURCE_TYPE not in types:
        return []
    rows = []
    with LOCK:
        tasks = list(region_state(response.ec2_backend).import_tasks.values())
        for task in tasks:
            if ids and not any(p.match(task.id) for p in ids):
                continue
            for key, value in task.tags.items():
                if keys and not any(p.match(key) for p in keys):
                    continue
                if values and not any(p.match(value) for p in values):
                    continue
                rows.append(
                    {"resource_id": task.id, "key": key, "value": value, "resource_type": RESOURCE_TYPE}
                )
    return rows


def describe_tags(self: Any) -> ActionResult:
    """API_DescribeTags: moto's rows plus the import task tags of this account+region."""
    result = _ORIGINAL["describe_tags"](self)
    filters = self._filters_from_querystring()
    rows = _task_tag_rows(self, {name: as_list(values) for name, values in filters.items()})
    if not rows:
        return result
    payload = dict(result.result)  # type: ignore[arg-type]
    payload["Tags"] = list(payload.get("Tags") or []) + rows
    return ActionResult(payload)


def install() -> None:
    from moto.ec2.responses import EC2Response
    from moto.ec2.responses.tags import TagResponse

    _ORIGINAL.setdefault("create_tags", TagResponse.create_tags)
    _ORIGINAL.setdefault("delete_tags", TagResponse.delete_tags)
    _ORIGINAL.setdefault("describe_tags", TagResponse.describe_tags)
    EC2Response.create_tags = create_tags  # type: ignore[method-assign]
    EC2Response.delete_tags = delete_tags  # type: ignore[method-assign]
    EC2Response.describe_tags = describe_tags  # type: ignore[method-assign]
