"""Eventual consistency of images, snapshots and their tags, opt-in per account (a fixed lag).

AWS: "The Amazon EC2 API follows an eventual consistency model. This means that the result of an
API command you run that creates or modifies resources might not be immediately available to all
subsequent commands you run" (botocore EC2 model, DescribeImages documentation), and "if you run
a command to modify or describe the resource that you just created, its ID might not have
propagated throughout the system, and you will get an error responding that the resource does
not exist" (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).

With ``lag_seconds`` > 0 for an account (``POST /ami-pipeline-emulator/consistency``), for the
lag after each change:

* an image or snapshot created while the lag is on (RegisterImage, CopyImage, CreateImage;
  ImportSnapshot's, CopyImage's, CreateSnapshot's, CopySnapshot's, EBS StartSnapshot's snapshot:
  whatever puts a new entry in the EC2 backend's ``amis`` / ``snapshots`` store) is left out of
  DescribeImages / DescribeSnapshots, listings and filters alike, and an explicit id of it gets
  the "does not exist" error (``InvalidAMIID.NotFound`` / ``InvalidSnapshot.NotFound``);
* a tag change of an image or snapshot (CreateTags, DeleteTags, tags given at creation: every
  write of moto's tag store) is not seen by DescribeImages / DescribeSnapshots (``Tags`` and the
  ``tag:``/``tag-key``/``tag-value`` filters) nor by DescribeTags: they see the tags as they were
  ``lag_seconds`` ago (a per-resource history of the tags before each change, with times);
* a permission change (ModifyImageAttribute's launch permissions, ModifySnapshotAttribute's
  create-volume permissions) is not seen by DescribeImageAttribute ``launchPermission`` /
  DescribeSnapshotAttribute ``createVolumePermission``: they list the permissions as they were
  ``lag_seconds`` ago (the same kind of history). The change itself is in force at once: the
  image is public, or shared, from the call on; only the reads lag.

Everything else stays strongly consistent, as on AWS for the calls that change things: the
duplicate-name check of RegisterImage/CopyImage, CreateTags/DeregisterImage/DeleteSnapshot on a
just-created resource, CopyImage's ``CopyImageTags`` all read the current state.

Hooks: ``EC2Backend.__init__`` makes ``amis`` / ``snapshots`` a ``CreationLog`` (a dict that
notes the creation time of new keys while the account has a lag); the tag store's writers are
wrapped; ``images.describe_images`` and ``snapshots.response_describe_snapshots`` call
``visible()``; the three Describe handlers run (and serialize) under a per-thread "view" that
``TaggedEC2Resource.get_tags`` and ``TagBackend.describe_tags`` consult. With no lag for the
account each hook costs one dict lookup or attribute test.
"""

from __future__ import annotations

import functools
import threading
import time
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from moto.core.responses import ActionResult
from werkzeug.wrappers import Request, Response

from . import control
from .image_index import SnapshotIndexedImages

HISTORY_ATTR = "_ami_emulator_tag_history"  # on the EC2 backend: wiped by POST /moto-api/reset
PERMISSION_HISTORY_ATTR = "_ami_emulator_permission_history"  # likewise
TRACKED_PREFIXES = ("ami-", "snap-")

_LOCK = threading.Lock()
# account id -> lag in seconds (only accounts with a lag > 0)
_LAGS: dict[str, float] = {}
# Per thread: the monotonic instant a Describe request of a lagged account sees ("now - lag").
_VIEW = threading.local()


def lag_of(account: str) -> float:
    return _LAGS.get(account, 0.0)


def _view_cutoff() -> float | None:
    return getattr(_VIEW, "cutoff", None)


@contextmanager
def _viewing(cutoff: float) -> Iterator[None]:
    previous = _view_cutoff()
    _VIEW.cutoff = cutoff
    try:
        yield
    finally:
        _VIEW.cutoff = previous


# ---------------------------------------------------------------------------------------------
# Creation times
# ---------------------------------------------------------------------------------------------


class CreationLog(dict):  # type: ignore[type-arg]
    """The backend's ``amis`` / ``snapshots`` dict, noting when a new key was stored while the
    account has a lag (``created_at``: key -> monotonic time; pruned once visible)."""

    def __init__(self, initial: dict[str, Any], account: str) -> None:
        self.account = account
        self.created_at: dict[str, float] = {}
        super().__init__(initial)
        self.created_at.clear()  # the entries it starts with are not new

    def __setitem__(self, key: str, value: Any) -> None:
        if _LAGS and self.account in _LAGS and key not in self:
            with _LOCK:
                self.created_at[key] = time.monotonic()
        super().__setitem__(key, value)


class ImageCreationLog(CreationLog, SnapshotIndexedImages):
    """The ``amis`` store: a ``CreationLog`` that keeps ``image_index``'s snapshot index."""


def visible(backend: Any, store: dict[str, Any]) -> dict[str, Any]:
    """``store`` without the entries created less than the account's lag ago.

    Returns ``store`` itself when nothing is hidden (always when the account has no lag), so the
    caller's hot path is unchanged."""
    created = getattr(store, "created_at", None)
    if not created:
        return store
    lag = _LAGS.get(getattr(store, "account", ""), 0.0)
    hidden: set[str] = set()
    with _LOCK:
        if lag <= 0:
            created.clear()
            return store
        cutoff = _view_cutoff()
        if cutoff is None:
            cutoff = time.monotonic() - lag
        for key, when in list(created.items()):
            if when > cutoff:
                hidden.add(key)
            else:
                del created[key]  # visible from now on
    if not hidden:
        return store
    return {key: value for key, value in store.items() if key not in hidden}


# ---------------------------------------------------------------------------------------------
# Tag history
# ---------------------------------------------------------------------------------------------


def _remember_tags(backend: Any, resource_ids: Any) -> None:
    """Before a tag write: note each tracked resource's tags as they are now."""
    now = time.monotonic()
    with _LOCK:
        history = backend.__dict__.get(HISTORY_ATTR)
        if history is None:
            history = backend.__dict__[HISTORY_ATTR] = {}
        for resource_id in resource_ids or ():
            resource_id = str(resource_id)
            if resource_id.startswith(TRACKED_PREFIXES):
                before = dict(backend.tags.get(resource_id) or {})
                history.setdefault(resource_id, []).append((now, before))


def _seen(backend: Any, history_attr: str, resource_id: str, cutoff: float) -> Any:
    """What ``history_attr`` (a per-resource list of ``(time, state before a change)``) says the
    resource was as of ``cutoff``, or None when no change is newer (use the current state).
    Changes already older than the cutoff are dropped for good."""
    history = backend.__dict__.get(history_attr)
    if not history:
        return None
    with _LOCK:
        entries = history.get(resource_id)
        if not entries:
            return None
        while entries and entries[0][0] <= cutoff:
            entries.pop(0)
        if not entries:
            del history[resource_id]
            return None
        return entries[0][1]


def _tags_seen(backend: Any, resource_id: str, cutoff: float) -> dict[str, str] | None:
    """The resource's tags as of ``cutoff``, or None when no change is newer."""
    seen: dict[str, str] | None = _seen(backend, HISTORY_ATTR, resource_id, cutoff)
    return seen


def _wrap_tag_writer(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def writer(self: Any, resource_ids: Any, *args: Any, **kwargs: Any) -> Any:
        if _LAGS and getattr(self, "account_id", None) in _LAGS:
            _remember_tags(self, resource_ids)
        return original(self, resource_ids, *args, **kwargs)

    return writer


def _wrap_get_tags(original: Callable[[Any], list[dict[str, str]]]) -> Callable[[Any], list[dict[str, str]]]:
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    @functools.wraps(original)
    def get_tags(self: Any) -> list[dict[str, str]]:
        cutoff = _view_cutoff() if _LAGS else None
        if cutoff is not None:
            resource_id = getattr(self, "id", None)
            backend = getattr(self, "ec2_backend", None)
            if resource_id and backend is not None:
                seen = _tags_seen(backend, resource_id, cutoff)
                if seen is not None:
                    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
                    return [
                        {"resource_id": resource_id, "key": k, "value": v, "resource_type": resource_type}
                        for k, v in seen.items()
                    ]
        return original(self)

    return get_tags


def _wrap_backend_describe_tags(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def describe_tags(self: Any, filters: Any = None) -> Any:
        cutoff = _view_cutoff() if _LAGS else None
        history = self.__dict__.get(HISTORY_ATTR) if cutoff is not None else None
        if not history:
            return original(self, filters)
        overrides = {}
        for resource_id in list(history):
            seen = _tags_seen(self, resource_id, cutoff)  # type: ignore[arg-type]
            if seen is not None:
                overrides[resource_id] = seen
        if not overrides:
            return original(self, filters)
        lagged = dict(self.tags)
        lagged.update(overrides)
        # moto's TagBackend.describe_tags only reads ``tags`` and ``VALID_TAG_FILTERS``.
        view = types.SimpleNamespace(tags=lagged, VALID_TAG_FILTERS=self.VALID_TAG_FILTERS)
        return original(view, filters)

    return describe_tags


# ---------------------------------------------------------------------------------------------
# Permission history (launch permissions of images, create-volume permissions of snapshots)
# ---------------------------------------------------------------------------------------------


def _permissions_now(backend: Any, resource_id: str) -> Any:
    """The resource's permissions as DescribeImageAttribute / DescribeSnapshotAttribute list
    them: the image's launch permissions, or the snapshot's create-volume permissions."""
    if resource_id.startswith("ami-"):
        image = backend.amis.get(resource_id)
        return None if image is None else [dict(p) for p in image.launch_permissions]
    snapshot = backend.snapshots.get(resource_id)
    if snapshot is None:
        return None
    return [{"Group": g} for g in snapshot.create_volume_permission_groups] + [
        {"UserId": u} for u in snapshot.create_volume_permission_userids
    ]


def _wrap_permission_writer(original: Callable[[Any], Any], id_param: str) -> Callable[[Any], Any]:
    """ModifyImageAttribute / ModifySnapshotAttribute of a lagged account: the permissions as
    they were before the call are what the attribute reads see for the lag."""

    @functools.wraps(original)
    def handler(self: Any) -> Any:
        if _LAGS and _LAGS.get(self.current_account):
            resource_id = str(self._get_param(id_param) or "")
            before = _permissions_now(self.ec2_backend, resource_id)
            if before is not None:
                now = time.monotonic()
                with _LOCK:
                    history = self.ec2_backend.__dict__.setdefault(PERMISSION_HISTORY_ATTR, {})
                    history.setdefault(resource_id, []).append((now, before))
        return original(self)

    return handler


def _wrap_permission_reader(
    original: Callable[[Any], Any], id_param: str, attribute: str, member: str
) -> Callable[[Any], Any]:
    """DescribeImageAttribute ``launchPermission`` / DescribeSnapshotAttribute
    ``createVolumePermission`` of a lagged account: the permissions as they were the lag ago."""

    @functools.wraps(original)
    def handler(self: Any) -> Any:
        result = original(self)
        lag = _LAGS.get(self.current_account) if _LAGS else None
        if not lag or self._get_param("Attribute") != attribute or not isinstance(result, ActionResult):
            return result
        resource_id = str(self._get_param(id_param) or "")
        seen = _seen(self.ec2_backend, PERMISSION_HISTORY_ATTR, resource_id, time.monotonic() - lag)
        if seen is not None and isinstance(result.result, dict):
            result.result[member] = seen
        return result

    return handler


# ---------------------------------------------------------------------------------------------
# Describe handlers
# ---------------------------------------------------------------------------------------------


class _ViewedResult(ActionResult):
    """An ActionResult serialized under the request's view (the serializer reads the tags)."""

    def __init__(self, inner: ActionResult, cutoff: float) -> None:
        super().__init__(inner.result)
        self._cutoff = cutoff

    def execute_result(self, context: Any) -> Any:
        with _viewing(self._cutoff):
            return super().execute_result(context)


def _wrap_describe(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def handler(self: Any) -> Any:
        lag = _LAGS.get(self.current_account) if _LAGS else None
        if not lag:
            return original(self)
        cutoff = time.monotonic() - lag
        with _viewing(cutoff):
            result = original(self)
        if isinstance(result, ActionResult):
            return _ViewedResult(result, cutoff)
        return result

    return handler


def _wrap_backend_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def init(self: Any, region_name: str, account_id: str) -> None:
        original(self, region_name, account_id)
        self.amis = ImageCreationLog(self.amis, account_id)
        self.snapshots = CreationLog(self.snapshots, account_id)

    return init


# ---------------------------------------------------------------------------------------------
# Control endpoint
# ---------------------------------------------------------------------------------------------


def configure(account: str, lag: float | None) -> dict[str, Any]:
    with _LOCK:
        if lag:
            _LAGS[account] = float(lag)
        else:
            _LAGS.pop(account, None)
    return describe(account)


def describe(account: str) -> dict[str, Any]:
    return {"account_id": account, "lag_seconds": _LAGS.get(account, 0.0)}


def reset() -> None:
    with _LOCK:
        _LAGS.clear()


def handle_consistency(request: Request) -> Response:
    """``/ami-pipeline-emulator/consistency``: POST ``{"account_id", "lag_seconds"}``, GET."""
    if request.method == "GET":
        return control._json(200, describe(control._account(dict(request.args))))
    payload = control._body(request)
    account = control._account(payload)
    unknown = set(payload) - {"account_id", "lag_seconds"}
    if unknown:
        raise control.ControlError(400, f"unknown fields: {sorted(unknown)}")
    if "lag_seconds" not in payload:
        raise control.ControlError(400, "missing field 'lag_seconds' (0 or null switches the lag off)")
    raw = payload["lag_seconds"]
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0):
        raise control.ControlError(400, "lag_seconds must be a number >= 0 or null")
    return control._json(200, configure(account, raw))


_installed = False


def install() -> None:
    """Patch moto (after ``images``, ``snapshots``, ``tags`` and ``fast_tags`` are installed: the
    Describe handlers and ``get_tags`` wrapped here are theirs)."""
    global _installed
    if _installed:
        return
    from moto.ec2.models import EC2Backend
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.models.tags import TagBackend
    from moto.ec2.responses import EC2Response

    EC2Backend.__init__ = _wrap_backend_init(EC2Backend.__init__)  # type: ignore[method-assign]
    for name in ("create_tags", "delete_tags", "delete_tag_keys"):
        setattr(TagBackend, name, _wrap_tag_writer(getattr(TagBackend, name)))
    TagBackend.describe_tags = _wrap_backend_describe_tags(TagBackend.describe_tags)  # type: ignore[method-assign]
    TaggedEC2Resource.get_tags = _wrap_get_tags(TaggedEC2Resource.get_tags)  # type: ignore[method-assign]
    for name in ("describe_images", "describe_snapshots", "describe_tags"):
        setattr(EC2Response, name, _wrap_describe(getattr(EC2Response, name)))
    EC2Response.modify_image_attribute = _wrap_permission_writer(EC2Response.modify_image_attribute, "ImageId")  # type: ignore[method-assign]
    EC2Response.modify_snapshot_attribute = _wrap_permission_writer(  # type: ignore[method-assign]
        EC2Response.modify_snapshot_attribute, "SnapshotId"
    )
    EC2Response.describe_image_attribute = _wrap_permission_reader(  # type: ignore[method-assign]
        EC2Response.describe_image_attribute, "ImageId", "launchPermission", "LaunchPermissions"
    )
    EC2Response.describe_snapshot_attribute = _wrap_permission_reader(  # type: ignore[method-assign]
        EC2Response.describe_snapshot_attribute, "SnapshotId", "createVolumePermission", "CreateVolumePermissions"
    )
    control.register_route("consistency", ("GET", "POST"), handle_consistency)
    control.register_reset(reset)
    _installed = True
