"""Shared helpers for the ami-pipeline moto extensions.

* ``LOCK``: one re-entrant lock that every extension handler holds while it reads or mutates
  emulator state. moto's server is threaded; lazily computed transitions (an import task
  finishing, a copy becoming available) must happen exactly once.
* Per-account configuration (import/copy delays), set through the control endpoint
  ``POST /ami-pipeline-emulator/config`` and defaulted from the environment.
* Per account+region extension state, stored as an attribute of moto's EC2 backend object so
  that ``POST /moto-api/reset`` (which wipes every backend's ``__dict__``) wipes it too.
* Time helpers producing AWS's ``YYYY-MM-DDTHH:MM:SS.mmmZ`` form.
* ``paginate``: MaxResults/NextToken handling shared by the Describe* overrides.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

from moto.ec2.exceptions import EC2ClientError

LOCK = threading.RLock()

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def client_error(code: str, message: str) -> EC2ClientError:
    """An EC2 error response (HTTP 400, ``<Code>``/``<Message>``) as moto serializes it."""
    return EC2ClientError(code, message)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

ENV_IMPORT_DELAY = "AMI_EMULATOR_IMPORT_DELAY_SECONDS"
ENV_COPY_DELAY = "AMI_EMULATOR_COPY_DELAY_SECONDS"
DEFAULT_IMPORT_DELAY = 2.0
DEFAULT_COPY_DELAY = 0.0
# Service Quotas "Public AMIs" (L-0E3CBAB9): 5 per Region unless raised ("You have reached
# your quota of 5 for the number of public images allowed in this Region", ModifyImageAttribute).
DEFAULT_PUBLIC_IMAGE_QUOTA = 5.0

# account id -> {"import_delay_seconds": float, "copy_delay_seconds": float,
#                "public_image_quota": float}
_ACCOUNT_CONFIG: dict[str, dict[str, float]] = {}


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SystemExit(f"ami_emulator: {name}={raw!r} is not a number") from exc
    if value < 0:
        raise SystemExit(f"ami_emulator: {name}={raw!r} must be >= 0")
    return value


def default_config() -> dict[str, float]:
    return {
        "import_delay_seconds": _env_float(ENV_IMPORT_DELAY, DEFAULT_IMPORT_DELAY),
        "copy_delay_seconds": _env_float(ENV_COPY_DELAY, DEFAULT_COPY_DELAY),
        # EBS direct: seconds a snapshot stays pending after CompleteSnapshot ("seals and
        # completes": AWS seals asynchronously, CompleteSnapshot answers Status pending).
        "seal_delay_seconds": 0.0,
        "public_image_quota": DEFAULT_PUBLIC_IMAGE_QUOTA,
    }


def account_config(account_id: str) -> dict[str, float]:
    """Effective configuration of one account: the env defaults plus its overrides."""
    with LOCK:
        merged = default_config()
        merged.update(_ACCOUNT_CONFIG.get(account_id, {}))
        return merged


def update_account_config(account_id: str, updates: dict[str, float | None]) -> dict[str, float]:
    """Apply overrides (a ``None`` value removes the override) and return the effective config."""
    with LOCK:
        overrides = _ACCOUNT_CONFIG.setdefault(account_id, {})
        for key, value in updates.items():
            if value is None:
                overrides.pop(key, None)
            else:
                overrides[key] = float(value)
        return account_config(account_id)


def reset_config() -> None:
    """Forget every per-account override (called on ``POST /moto-api/reset``)."""
    with LOCK:
        _ACCOUNT_CONFIG.clear()


# ---------------------------------------------------------------------------------------------
# Per account+region state
# ---------------------------------------------------------------------------------------------


@dataclass
class RegionState:
    """Extension state of one account in one region (lives on moto's EC2 backend object)."""

    # ImportSnapshot tasks in creation order: task id -> ImportSnapshotTask
    import_tasks: dict[str, Any] = field(default_factory=dict)
    # ImportSnapshot ClientToken -> task id
    import_client_tokens: dict[str, str] = field(default_factory=dict)
    # CopyImage ClientToken -> (request fingerprint, image id)
    copy_client_tokens: dict[str, tuple[tuple[Any, ...], str]] = field(default_factory=dict)
    # GetImageBlockPublicAccessState value
    image_block_public_access: str = "unblocked"
    # GetSnapshotBlockPublicAccessState value
    snapshot_block_public_access: str = "unblocked"


_STATE_ATTR = "_ami_emulator_state"


def region_state(ec2_backend: Any) -> RegionState:
    with LOCK:
        state = ec2_backend.__dict__.get(_STATE_ATTR)
        if state is None:
            state = RegionState()
            ec2_backend.__dict__[_STATE_ATTR] = state
        return state


def ec2_backend_for(account_id: str, region: str) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[account_id][region]


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------


def utcnow() -> _dt.datetime:
    """Naive UTC now, the convention moto uses for its datetimes."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def iso_millis(value: _dt.datetime) -> str:
    """``2025-01-02T03:04:05.123Z``: the timestamp form EC2 uses in DescribeImages."""
    if value.tzinfo is not None:
        value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_timestamp(value: Any, what: str = "timestamp") -> _dt.datetime:
    """Parse an ISO-8601 string (or pass through a datetime) into a naive UTC datetime."""
    if isinstance(value, _dt.datetime):
        parsed = value
    elif isinstance(value, (int, float)):
        parsed = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith("Z") or text.endswith("z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"{what} {value!r} is not an ISO-8601 date-time") from exc
    else:
        raise ValueError(f"{what} {value!r} is not an ISO-8601 date-time")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return parsed


# ---------------------------------------------------------------------------------------------
# Request parameter helpers
# ---------------------------------------------------------------------------------------------


def as_bool(value: Any, default: bool | None = None) -> bool | None:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        # Query-protocol lists sometimes arrive as {"1": x, "2": y} or {"member": [...]}.
        if "member" in value:
            return as_list(value["member"])
        return [value[k] for k in sorted(value, key=lambda k: int(k) if str(k).isdigit() else 0)]
    return [value]


def tag_specifications(response: Any) -> list[dict[str, Any]]:
    """The request's TagSpecifications, whatever spelling moto's parser produced."""
    specs = response._get_param("TagSpecifications") or response._get_param("TagSpecification")
    return [s for s in as_list(specs) if isinstance(s, dict)]


def tags_by_resource_type(
    specs: Iterable[dict[str, Any]], allowed: Sequence[str]
) -> dict[str, dict[str, str]]:
    """``{resource_type: {key: value}}`` from TagSpecifications, rejecting other types as EC2 does."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        rtype = spec.get("ResourceType")
        if not rtype:
            raise client_error(
                "InvalidParameter", "Tag specification resource type must have a value"
            )
        if rtype not in allowed:
            raise client_error(
                "InvalidParameterValue",
                f"'{rtype}' is not a valid taggable resource type for this operation.",
            )
        tags = as_list(spec.get("Tags") or spec.get("Tag"))
        if not tags:
            raise client_error(
                "InvalidParameterValue", "Tag specification must have at least one tag"
            )
        bucket = out.setdefault(rtype, {})
        for tag in tags:
            bucket[tag["Key"]] = tag.get("Value", "")
    return out


def filters_param(response: Any) -> dict[str, list[str]]:
    raw = response._get_param("Filters") or response._get_param("Filter")
    result: dict[str, list[str]] = {}
    for item in as_list(raw):
        if not isinstance(item, dict) or "Name" not in item:
            raise client_error("InvalidParameterValue", "The filter 'null' is invalid.")
        values = as_list(item.get("Values") or item.get("Value"))
        result.setdefault(item["Name"], []).extend(str(v) for v in values)
    return result


# ---------------------------------------------------------------------------------------------
# Pagination
# ---------------------------------------------------------------------------------------------


def _encode_token(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise client_error(
            "InvalidPaginationToken", "The specified pagination token is not valid or is expired."
        ) from exc
    if not isinstance(payload, dict) or "after" not in payload:
        raise client_error(
            "InvalidPaginationToken", "The specified pagination token is not valid or is expired."
        )
    return payload


def paginate(
    items: Sequence[T],
    key: Callable[[T], str],
    max_results: Any,
    next_token: Any,
    operation: str,
    min_results: int = 1,
    max_allowed: int = 1000,
    clamp_above: bool = False,
) -> tuple[list[T], str | None]:
    """Return one page of ``items`` and the NextToken for the rest (None on the last page).

    Items are ordered by ``key`` (resource ids), so the order is stable across calls and a
    deletion between two pages neither repeats nor skips a survivor. A NextToken is only
    returned when more items remain. Without MaxResults and NextToken everything is returned
    (EC2's unpaginated behaviour).
    """
    if max_results is None and not next_token:
        return list(items), None
    ordered = sorted(items, key=key)
    if next_token:
        payload = _decode_token(str(next_token))
        if payload.get("op") != operation:
            raise client_error(
                "InvalidPaginationToken",
                "The specified pagination token is not valid or is expired.",
            )
        after = payload["after"]
        ordered = [item for item in ordered if key(item) > after]
    if max_results is None:
        limit = max_allowed
    else:
        try:
            limit = int(max_results)
        except (TypeError, ValueError) as exc:
            raise client_error(
                "InvalidParameterValue", f"Value ( {max_results} ) for parameter maxResults is invalid."
            ) from exc
        if limit > max_allowed and clamp_above:
            limit = max_allowed
        if limit < min_results or limit > max_allowed:
            raise client_error(
                "InvalidParameterValue",
                f"Value ( {limit} ) for parameter maxResults is invalid. "
                f"Expecting a value between {min_results} and {max_allowed}.",
            )
    page = ordered[:limit]
    token = None
    if len(ordered) > limit and page:
        token = _encode_token({"op": operation, "after": key(page[-1])})
    return page, token
