"""EBS snapshot extensions.

* ``EmulatorSnapshot``: a snapshot that was not taken from a volume (imported by ImportSnapshot,
  copied by CopyImage). Like AWS it reports ``VolumeId: vol-ffffffff`` and the size it was given,
  and it can be ``pending`` until a lazily checked ready time.
* DeleteSnapshot refuses a snapshot that a registered (not deregistered) image uses in its block
  device mappings with ``InvalidSnapshot.InUse`` ("The snapshot snap-x is currently in use by
  ami-y"), following https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteSnapshot.html
  ("You cannot delete a snapshot of the root device of an EBS volume used by a registered AMI").
  Plain moto only protects the snapshot it invents for an AMI.
* DescribeSnapshots honours ``OwnerIds`` (``self``, account ids, ``amazon``), ``RestorableByUserIds``
  and ``MaxResults``/``NextToken``
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSnapshots.html).
* ModifySnapshotAttribute accepts the structured ``CreateVolumePermission={Add,Remove}`` form
  besides ``OperationType``+``UserIds``/``GroupNames``
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifySnapshotAttribute.html),
  and refuses to make an encrypted snapshot public (``UnsupportedOperation``; EBS User Guide:
  "You can't make your encrypted snapshots available publicly"); ModifyImageAttribute refuses
  the same for an AMI with an encrypted snapshot (``images.modify_image_attribute``).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Iterable

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import InvalidAMIAttributeItemValueError, InvalidSnapshotInUse
from moto.ec2.models.elastic_block_store import Snapshot
from moto.ec2.utils import random_snapshot_id

from .common import (
    LOCK,
    as_list,
    client_error,
    filters_param,
    paginate,
    region_state,
    utcnow,
)
from .consistency import visible
from .image_index import SnapshotIndexedImages, mapping_snapshot_ids


class DetachedVolume:
    """The "source volume" of a snapshot that was not taken from a volume.

    AWS reports ``vol-ffffffff`` as the VolumeId of imported and copied snapshots. moto's
    Snapshot reads ``id``, ``size`` and ``encrypted`` from its volume object.
    """

    def __init__(self, size: int, encrypted: bool = False) -> None:
        self.id = "vol-ffffffff"
        self.size = int(size)
        self.encrypted = encrypted


class EmulatorSnapshot(Snapshot):
    """A snapshot with a given size that may stay ``pending`` until ``ready_at``."""

    def __init__(
        self,
        ec2_backend: Any,
        snapshot_id: str,
        size_gib: int,
        description: str,
        encrypted: bool = False,
        kms_key_id: str | None = None,
        owner_id: str | None = None,
        ready_at: _dt.datetime | None = None,
    ) -> None:
        self.ready_at = ready_at
        self._explicit_status: str | None = None
        super().__init__(
            ec2_backend,
            snapshot_id,
            DetachedVolume(size_gib, encrypted),
            description,
            encrypted=encrypted,
            kms_key_id=kms_key_id,
            owner_id=owner_id,
        )

    # moto assigns ``self.status = "completed"`` in Snapshot.__init__; keep that assignable.
    @property  # type: ignore[override]
    def status(self) -> str:
        if self._explicit_status is not None:
            return self._explicit_status
        if self.ready_at is not None and utcnow() < self.ready_at:
            return "pending"
        return "completed"

    @status.setter
    def status(self, value: str) -> None:
        self._explicit_status = None if value == "completed" else value

    @property
    def progress(self) -> str:  # type: ignore[override]
        if self.status != "pending" or self.ready_at is None:
            return "100%"
        total = (self.ready_at - self.start_time).total_seconds()
        done = (utcnow() - self.start_time).total_seconds()
        pct = 0 if total <= 0 else max(0, min(99, int(done * 100 / total)))
        return f"{pct}%"


# EC2 shares nothing encrypted with the account's AWS managed key for EBS (alias/aws/ebs) with
# another account: "You can't share snapshots that are encrypted with the default AWS managed
# key" (EBS User Guide, "Share an Amazon EBS snapshot"). The codes and texts are the ones users
# report: ModifySnapshotAttribute "OperationNotPermitted: Encrypted snapshots with EBS default
# key cannot be shared" (hashicorp/packer#7499), ModifyImageAttribute "InvalidParameter:
# Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot."
# (DataDog/stratus-red-team#109, hashicorp/packer#7410).
AWS_MANAGED_KEY_SNAPSHOT = "Encrypted snapshots with EBS default key cannot be shared"
AWS_MANAGED_KEY_IMAGE = "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot."


def encrypted_with_aws_managed_key(ec2_backend: Any, snapshot: Any) -> bool:
    """Whether ``snapshot`` is encrypted with the AWS managed key for EBS of its account and
    Region (the key of ``alias/aws/ebs``, which EBS uses when no key is given and the account's
    default key was not changed to a customer managed one)."""
    key_id = getattr(snapshot, "kms_key_id", None)
    if not getattr(snapshot, "encrypted", False) or not key_id:
        return False
    from moto.kms import kms_backends

    kms = kms_backends[ec2_backend.account_id][ec2_backend.region_name]
    if not kms.alias_exists("alias/aws/ebs"):
        return False
    managed = kms.describe_key("alias/aws/ebs")
    return key_id in (managed.arn, managed.id)


def new_snapshot(
    ec2_backend: Any,
    size_gib: int,
    description: str,
    encrypted: bool = False,
    kms_key_id: str | None = None,
    ready_at: _dt.datetime | None = None,
) -> EmulatorSnapshot:
    """Create and register an EmulatorSnapshot in ``ec2_backend`` (one account+region)."""
    if encrypted and not kms_key_id:
        # Like EBS: encryption without a key uses the account's default EBS key.
        kms_key_id = ec2_backend.default_kms_key_id or ec2_backend._create_default_encryption_key()
    snapshot = EmulatorSnapshot(
        ec2_backend,
        random_snapshot_id(),
        size_gib,
        description,
        encrypted=encrypted,
        kms_key_id=kms_key_id,
        owner_id=ec2_backend.account_id,
        ready_at=ready_at,
    )
    ec2_backend.snapshots[snapshot.id] = snapshot
    return snapshot


def image_snapshot_ids(image: Any) -> list[str]:
    """Snapshot ids in an image's block device mappings (plain moto AMIs included)."""
    return mapping_snapshot_ids(image)


def image_using_snapshot(ec2_backend: Any, snapshot_id: str, exclude: str | None = None) -> str | None:
    """Id of a registered image of this account+region whose BDM uses ``snapshot_id`` (the
    first in the store's order). Read from the store's index (``image_index``); a store
    without one is scanned."""
    store = ec2_backend.amis
    if isinstance(store, SnapshotIndexedImages):
        for image_id in store.images_using(snapshot_id):
            if image_id != exclude:
                return image_id
        return None
    for image in list(store.values()):
        if image.id != exclude and snapshot_id in mapping_snapshot_ids(image):
            return image.id
    return None


def snapshot_not_found(snapshot_id: str) -> Exception:
    return client_error("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")


# ---------------------------------------------------------------------------------------------
# Backend patches (moto.ec2.models.EC2Backend)
# ---------------------------------------------------------------------------------------------


def backend_delete_snapshot(self: Any, snapshot_id: str) -> Any:
    """DeleteSnapshot with the in-use check applied to every registered image's BDM."""
    with LOCK:
        if snapshot_id not in self.snapshots:
            raise snapshot_not_found(snapshot_id)
        user = image_using_snapshot(self, snapshot_id)
        if user is not None:
            raise InvalidSnapshotInUse(snapshot_id, user)
        return self.snapshots.pop(snapshot_id)


# ---------------------------------------------------------------------------------------------
# Response patches (moto.ec2.responses.EC2Response)
# ---------------------------------------------------------------------------------------------


def _owner_matches(ec2_backend: Any, snapshot: Any, owners: Iterable[str], account_id: str) -> bool:
    for owner in owners:
        if owner == "self" and snapshot.owner_id == account_id:
            return True
        if owner == "amazon":
            if getattr(snapshot, "owner_alias", None) == "amazon":
                return True
            ami = ec2_backend.amis.get(getattr(snapshot, "from_ami", None) or "")
            if ami is not None and getattr(ami, "owner_alias", None) == "amazon":
                return True
        if owner == snapshot.owner_id:
            return True
    return False


def _restorable_by(snapshot: Any, users: Iterable[str], account_id: str) -> bool:
    groups = snapshot.create_volume_permission_groups
    for user in users:
        if user == "all":
            if "all" in groups:
                return True
            continue
        uid = account_id if user == "self" else user
        if uid == snapshot.owner_id or uid in snapshot.create_volume_permission_userids or "all" in groups:
            return True
    return False


def response_describe_snapshots(self: Any) -> ActionResult:
    self.error_on_dryrun()
    snapshot_ids = [str(s) for s in as_list(self._get_param("SnapshotIds"))]
    owners = [str(o) for o in as_list(self._get_param("OwnerIds"))]
    restorable = [str(r) for r in as_list(self._get_param("RestorableByUserIds"))]
    filters = filters_param(self)
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    if snapshot_ids and max_results is not None:
        # The API reference: "You cannot specify this parameter and the snapshot IDs parameter
        # in the same request." (DescribeSnapshots, MaxResults)
        raise client_error(
            "InvalidParameterCombination",
            "The parameter snapshotIdsSet cannot be used with the parameter maxResults",
        )
    backend = self.ec2_backend
    with LOCK:
        # Eventual consistency (consistency.py): snapshots created less than the account's lag
        # ago are not described yet, neither listed nor found by id.
        known = visible(backend, backend.snapshots)
        if snapshot_ids:
            for snapshot_id in snapshot_ids:
                if snapshot_id not in known:
                    raise snapshot_not_found(snapshot_id)
        snapshots = backend.describe_snapshots(snapshot_ids=snapshot_ids or None, filters=filters or None)
        if known is not backend.snapshots:
            snapshots = [s for s in snapshots if s.id in known]
        if owners:
            snapshots = [s for s in snapshots if _owner_matches(backend, s, owners, self.current_account)]
        if restorable:
            snapshots = [s for s in snapshots if _restorable_by(s, restorable, self.current_account)]
        page, token = paginate(
            snapshots,
            key=lambda s: s.id,
            max_results=max_results,
            next_token=next_token,
            operation="DescribeSnapshots",
            min_results=5,
            max_allowed=1000,
            clamp_above=True,
        )
    result: dict[str, Any] = {"Snapshots": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _permission_lists(entries: Any) -> tuple[list[str], list[str]]:
    users: list[str] = []
    groups: list[str] = []
    for entry in as_list(entries):
        if not isinstance(entry, dict):
            continue
        if entry.get("UserId"):
            users.append(str(entry["UserId"]))
        if entry.get("Group"):
            groups.append(str(entry["Group"]))
    return users, groups


# ModifySnapshotAttribute: "You can make up to 500 modifications to a snapshot in a single
# operation" (accounts and groups added or removed).
MAX_MODIFICATIONS = 500

# The refusal to make an encrypted snapshot (or an AMI with one) public.
ENCRYPTED_NOT_PUBLIC = "Encrypted snapshots can't be shared publicly. Specify another snapshot."


def response_modify_snapshot_attribute(self: Any) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    attribute = self._get_param("Attribute")
    operation_type = self._get_param("OperationType")
    group_names = [str(g) for g in as_list(self._get_param("GroupNames"))]
    user_ids = [str(u) for u in as_list(self._get_param("UserIds"))]
    structured = self._get_param("CreateVolumePermission") or {}
    self.error_on_dryrun()

    add_users, add_groups = _permission_lists(structured.get("Add"))
    remove_users, remove_groups = _permission_lists(structured.get("Remove"))
    if operation_type == "add":
        add_users += user_ids
        add_groups += group_names
    elif operation_type == "remove":
        remove_users += user_ids
        remove_groups += group_names
    elif operation_type is not None:
        raise client_error(
            "InvalidParameterValue", f"Value ({operation_type}) for parameter operationType is invalid."
        )
    if attribute not in (None, "createVolumePermission"):
        raise client_error(
            "InvalidParameterValue",
            f"Value ({attribute}) for parameter attribute is invalid. Only createVolumePermission can be modified.",
        )
    for group in add_groups + remove_groups:
        if group != "all":
            raise InvalidAMIAttributeItemValueError("UserGroup", group)
    modifications = len(add_users) + len(add_groups) + len(remove_users) + len(remove_groups)
    if modifications > MAX_MODIFICATIONS:
        # ModifySnapshotAttribute: "You can make up to 500 modifications to a snapshot in a
        # single operation." Guess: the code and message of the refusal (not documented).
        raise client_error(
            "InvalidParameterValue",
            f"You can make up to {MAX_MODIFICATIONS} modifications to a snapshot in a single "
            f"operation; this request makes {modifications}.",
        )

    backend = self.ec2_backend
    with LOCK:
        snapshot = backend.snapshots.get(snapshot_id)
        if snapshot is None:
            raise snapshot_not_found(snapshot_id)
        if "all" in add_groups and region_state(backend).snapshot_block_public_access != "unblocked":
            # EnableSnapshotBlockPublicAccess: "users can no longer request public sharing for
            # snapshots in that Region". Guess: the code and text of the refusal.
            raise client_error(
                "OperationNotPermitted",
                "Public sharing of snapshots is blocked because block public access for "
                "snapshots is enabled in this Region. To share the snapshot publicly, first "
                "disable block public access for snapshots (DisableSnapshotBlockPublicAccess).",
            )
        if "all" in add_groups and snapshot.encrypted:
            # "You can't make your encrypted snapshots available publicly" (EBS User Guide,
            # "Share an Amazon EBS snapshot"). Guess: the code and message, taken from what
            # ModifyImageAttribute answers for an AMI with encrypted snapshots (reported by
            # Packer users, opendevstack/ods-core#1062).
            raise client_error("UnsupportedOperation", ENCRYPTED_NOT_PUBLIC)
        if add_users and encrypted_with_aws_managed_key(backend, snapshot):
            raise client_error("OperationNotPermitted", AWS_MANAGED_KEY_SNAPSHOT)
        snapshot.create_volume_permission_userids.update(add_users)
        snapshot.create_volume_permission_groups.update(add_groups)
        snapshot.create_volume_permission_userids.difference_update(remove_users)
        snapshot.create_volume_permission_groups.difference_update(remove_groups)
    return EmptyResult()


def _create_snapshot_with_the_volumes_key(original: Any) -> Any:
    """CreateSnapshot: "Snapshots that are taken from encrypted volumes are automatically
    encrypted" (EC2 API reference), with the volume's KMS key, which DescribeSnapshots then
    shows as KmsKeyId; moto kept only the flag."""

    def create_snapshot(self: Any, volume_id: str, description: str, *args: Any, **kwargs: Any) -> Any:
        snapshot = original(self, volume_id, description, *args, **kwargs)
        volume = self.get_volume(volume_id)
        if getattr(volume, "encrypted", False) and not getattr(snapshot, "kms_key_id", None):
            snapshot.kms_key_id = getattr(volume, "kms_key_id", None)
        return snapshot

    return create_snapshot


def install() -> None:
    from moto.ec2.models import EC2Backend
    from moto.ec2.responses import EC2Response

    EC2Backend.create_snapshot = _create_snapshot_with_the_volumes_key(EC2Backend.create_snapshot)  # type: ignore[method-assign]

    EC2Backend.delete_snapshot = backend_delete_snapshot  # type: ignore[method-assign]
    EC2Response.describe_snapshots = response_describe_snapshots  # type: ignore[method-assign]
    EC2Response.modify_snapshot_attribute = response_modify_snapshot_attribute  # type: ignore[method-assign]
