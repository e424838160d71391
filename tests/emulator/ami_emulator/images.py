"""AMI extensions: RegisterImage, DescribeImages, CopyImage, DeregisterImage, attributes,
deprecation, block public access and deregistration protection.

Each handler names the EC2 API reference page it follows
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_<Operation>.html). Where the
reference is silent the choice is marked "Guess:" and listed in README.md.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from typing import Any

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import (
    AuthFailureRestricted,
    InvalidAMIIdError,
    MalformedAMIIdError,
    UnvailableAMIIdError,
)
from moto.ec2.models.amis import Ami
from moto.ec2.utils import random_ami_id

from .common import (
    LOCK,
    account_config,
    as_bool,
    as_list,
    client_error,
    ec2_backend_for,
    filters_param,
    iso_millis,
    paginate,
    parse_timestamp,
    region_state,
    tag_specifications,
    tags_by_resource_type,
    utcnow,
)
from .consistency import visible
from .filter_names import TAG_PATTERN, not_implemented
from .filter_names import serve as serve_filters
from .iam import snapshots_not_deletable
from .snapshots import image_snapshot_ids, image_using_snapshot, new_snapshot, snapshot_not_found

# The AMI name rule (InvalidAMIName.Malformed) is checked before moto by the api_rules gate
# (api_rules.check_ami_name); validate_name below keeps the per account+region uniqueness.
AMI_ID_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")

ARCHITECTURES = ("i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac")
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
VIRTUALIZATION_TYPES = ("hvm", "paravirtual")
VOLUME_TYPES = ("standard", "io1", "io2", "gp2", "sc1", "st1", "gp3")
# botocore's ec2 model, EbsBlockDevice.VolumeSize: "The following are the supported sizes for each
# volume type: gp2: 1 - 16,384 GiB; gp3: 1 - 65,536 GiB; io1: 4 - 16,384 GiB; io2: 4 - 65,536 GiB;
# st1 and sc1: 125 - 16,384 GiB; standard: 1 - 1024 GiB".
VOLUME_SIZES = {
    "gp2": (1, 16_384),
    "gp3": (1, 65_536),
    "io1": (4, 16_384),
    "io2": (4, 65_536),
    "st1": (125, 16_384),
    "sc1": (125, 16_384),
    "standard": (1, 1_024),
}
# EbsBlockDevice.Iops: "The following are the supported values for each volume type: gp3: 3,000 -
# 80,000 IOPS; io1: 100 - 64,000 IOPS; io2: 100 - 256,000 IOPS"; no other type is listed.
VOLUME_IOPS = {"gp3": (3_000, 80_000), "io1": (100, 64_000), "io2": (100, 256_000)}
# EbsBlockDevice.Throughput: "This parameter is valid only for gp3 volumes. Valid Range: Minimum
# value of 125. Maximum value of 2,000."
GP3_THROUGHPUT = (125, 2_000)

# Text AWS returns when block public access for AMIs refuses a public share (seen in
# hortonworks/cloudbreak-images#926 and aws-deepracer-community/deepracer-on-the-spot#106).
BPA_REFUSAL = (
    "You can\u2019t publicly share this image because block public access for AMIs is enabled "
    "for this account. To publicly share the image, you must call the "
    "DisableImageBlockPublicAccess API."
)


def _enum(value: Any, allowed: tuple[str, ...], parameter: str) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise client_error(
            "InvalidParameterValue", f"Value ({value}) for parameter {parameter} is invalid."
        )
    return str(value)


# ---------------------------------------------------------------------------------------------
# The image model
# ---------------------------------------------------------------------------------------------


class EmulatorImage(Ami):
    """An AMI that keeps what RegisterImage / CopyImage were given.

    ``Ami.__init__`` is deliberately not called: it would invent a 15 GiB "Auto-created
    snapshot" and put it in the block device mapping. Every attribute moto's Ami code and the
    response serializer read is set here; the serializer maps botocore's ``Image`` members to
    these snake_case names (``EnaSupport`` -> ``ena_support`` ...).
    """

    def __init__(
        self,
        ec2_backend: Any,
        ami_id: str,
        *,
        name: str,
        description: str | None,
        block_device_mappings: list[dict[str, Any]],
        architecture: str | None,
        virtualization_type: str | None,
        root_device_name: str | None,
        ena_support: bool | None = None,
        sriov_net_support: str | None = None,
        boot_mode: str | None = None,
        tpm_support: str | None = None,
        imds_support: str | None = None,
        uefi_data: str | None = None,
        kernel_id: str | None = None,
        ramdisk_id: str | None = None,
        source_image_id: str | None = None,
        source_image_region: str | None = None,
        available_at: _dt.datetime | None = None,
    ) -> None:
        self.ec2_backend = ec2_backend
        self.id = ami_id
        self._state = "available"
        self.available_at = available_at
        self.name = name
        self.description = description
        self.owner_id = ec2_backend.account_id
        self.owner_alias: str | None = None
        self.image_type = "machine"
        self.image_location = f"{self.owner_id}/{name}"
        self.architecture = architecture
        self.virtualization_type = virtualization_type
        self.kernel_id = kernel_id
        self.ramdisk_id = ramdisk_id
        self.platform: str | None = None
        self.platform_details = "Linux/UNIX"
        self.usage_operation = "RunInstances"
        self.hypervisor = "xen"
        self.root_device_name = root_device_name
        self._bdm = block_device_mappings
        self.root_device_type = (
            "ebs" if any("Ebs" in m for m in block_device_mappings) else "instance-store"
        )
        self.sriov = sriov_net_support  # moto's name (DescribeImageAttribute)
        self.sriov_net_support = sriov_net_support
        self.ena_support = ena_support
        self.boot_mode = boot_mode
        self.tpm_support = tpm_support
        self.imds_support = imds_support
        self.uefi_data = uefi_data
        self.creation_date = utcnow()
        self.product_codes: set[str] = set()
        self.instance_id: str | None = None
        self.launch_permissions: list[dict[str, str]] = []
        self.source_image_id = source_image_id
        self.source_image_region = source_image_region
        self.deprecation_time: str | None = None
        self.deregistration_protection = "disabled"
        self.deregistration_cooldown = False
        self.protected_until: _dt.datetime | None = None
        self.last_launched_time: str | None = None

    @property  # type: ignore[override]
    def state(self) -> str:
        # CopyImage: pending until the (lazily checked) copy delay has passed.
        if self._state == "available" and self.available_at is not None and utcnow() < self.available_at:
            return "pending"
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value

    @property
    def block_device_mappings(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return copy.deepcopy(self._bdm)


def _mappings(image: Any) -> list[dict[str, Any]]:
    """The image's block device mappings, read-only (no defensive copy for ours)."""
    own = image.__dict__.get("_bdm")
    if own is not None:
        return own
    return getattr(image, "block_device_mappings", None) or []


def _ebs(image: Any) -> list[dict[str, Any]]:
    return [m.get("Ebs") or {} for m in _mappings(image)]


# DescribeImages filters (API_DescribeImages.html) other than the tag ones: name -> getter.
_IMAGE_FILTERS: dict[str, Any] = {
    "architecture": lambda i: i.architecture,
    "block-device-mapping.delete-on-termination": lambda i: [
        str(e.get("DeleteOnTermination")).lower() for e in _ebs(i) if "DeleteOnTermination" in e
    ],
    "block-device-mapping.device-name": lambda i: [m.get("DeviceName") for m in _mappings(i)],
    "block-device-mapping.encrypted": lambda i: [str(bool(e.get("Encrypted"))).lower() for e in _ebs(i)],
    "block-device-mapping.snapshot-id": lambda i: [e["SnapshotId"] for e in _ebs(i) if e.get("SnapshotId")],
    "block-device-mapping.volume-size": lambda i: [str(e["VolumeSize"]) for e in _ebs(i) if "VolumeSize" in e],
    "block-device-mapping.volume-type": lambda i: [e["VolumeType"] for e in _ebs(i) if "VolumeType" in e],
    "boot-mode": lambda i: getattr(i, "boot_mode", None) or "",
    "creation-date": lambda i: iso_millis(i.creation_date)
    if isinstance(i.creation_date, _dt.datetime)
    else str(i.creation_date),
    "description": lambda i: i.description or "",
    "ena-support": lambda i: bool(getattr(i, "ena_support", None)),
    "hypervisor": lambda i: getattr(i, "hypervisor", None) or "",
    "image-id": lambda i: i.id,
    "image-type": lambda i: i.image_type,
    "is-public": lambda i: i.is_public,
    "kernel-id": lambda i: i.kernel_id or "",
    "name": lambda i: i.name or "",
    "owner-alias": lambda i: i.owner_alias or "",
    "owner-id": lambda i: i.owner_id,
    "platform": lambda i: i.platform or "",
    "product-code": lambda i: i.product_codes,
    "product-code.type": lambda i: "marketplace",
    "ramdisk-id": lambda i: getattr(i, "ramdisk_id", None) or "",
    "root-device-name": lambda i: i.root_device_name or "",
    "root-device-type": lambda i: i.root_device_type or "",
    "source-image-id": lambda i: getattr(i, "source_image_id", None) or "",
    "source-image-region": lambda i: getattr(i, "source_image_region", None) or "",
    "source-instance-id": lambda i: i.source_instance_id or "",
    "sriov-net-support": lambda i: getattr(i, "sriov_net_support", None) or "",
    "state": lambda i: i.state,
    "virtualization-type": lambda i: i.virtualization_type or "",
}


def image_filter_value(self: Any, filter_name: str, method_name: str | None = None) -> Any:
    """DescribeImages filters (API_DescribeImages.html), for plain moto AMIs and ours. Names the
    operation does not document never get here (the api_rules gate refuses them, filter_names);
    a documented one without a getter (``free-tier-eligible``, ``image-allowed``,
    ``image-watermark.*``, ``scan-result.*``, ...) is EmulatorFilterNotImplemented."""
    getter = _IMAGE_FILTERS.get(filter_name)
    if getter is not None:
        return getter(self)
    if filter_name.startswith("tag:") or filter_name == "tag-key":
        return super(Ami, self).get_filter_value(filter_name, "DescribeImages")
    raise not_implemented("DescribeImages", filter_name)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def owned_image(ec2_backend: Any, image_id: Any) -> Any:
    """The caller's image, or the errors EC2 uses for a malformed / unknown / deregistered id."""
    image_id = str(image_id or "")
    if not image_id.startswith("ami-"):
        raise MalformedAMIIdError([image_id])
    image = ec2_backend.amis.get(image_id)
    if image is None:
        if image_id in ec2_backend.deleted_amis:
            raise UnvailableAMIIdError(image_id)
        raise InvalidAMIIdError(image_id)
    return image


# CopyImage of another account's AMI when the caller lacks createVolumePermission on its
# snapshots: the EC2 console and CLI report this text (clong/DetectionLab#422,
# scrapoxy/scrapoxy#49, privacysandbox/aggregation-service#12); the error code is not
# documented. Guess: InvalidRequest.
NO_STORAGE_PERMISSION = "You do not have permission to access the storage of this ami"


def _launchable_by(image: Any, account: str) -> bool:
    """Whether ``account`` may launch another account's ``image``: public, or a launch
    permission for the account (organizations and OUs are not modelled for the caller)."""
    return bool(image.is_public) or any(lp.get("UserId") == account for lp in image.launch_permissions)


def copy_source(account: str, region: str, image_id: Any) -> tuple[Any, Any]:
    """CopyImage's source AMI: ``(backend holding it, image)``. The caller's own image first;
    else another account's image in ``region`` that the caller may launch (public, or shared
    with it) - the EC2 User Guide, "Copy an Amazon EC2 AMI": an AMI shared with you can be
    copied, and its snapshots must be readable by you (createVolumePermission), else
    ``NO_STORAGE_PERMISSION``. An image the caller can neither own nor launch is
    InvalidAMIID.NotFound, as for any invisible image. Call with ``LOCK`` held."""
    own = ec2_backend_for(account, region)
    image_id = str(image_id or "")
    if not image_id.startswith("ami-") or image_id in own.amis or image_id in own.deleted_amis:
        return own, owned_image(own, image_id)
    from moto.ec2.models import ec2_backends

    for owner in list(ec2_backends.keys()):
        if owner == account:
            continue
        backend = ec2_backends[owner][region]
        image = backend.amis.get(image_id)
        if image is None or not _launchable_by(image, account):
            continue
        for snapshot_id in image_snapshot_ids(image):
            snapshot = backend.snapshots.get(snapshot_id)
            if snapshot is not None and not (
                "all" in snapshot.create_volume_permission_groups
                or account in snapshot.create_volume_permission_userids
            ):
                raise client_error("InvalidRequest", NO_STORAGE_PERMISSION)
        return backend, image
    raise InvalidAMIIdError(image_id)


def validate_name(ec2_backend: Any, name: Any) -> str:
    """Per account+region name uniqueness (InvalidAMIName.Duplicate). The name's form was
    checked by the api_rules gate (InvalidAMIName.Malformed) before the request got here."""
    for image in list(ec2_backend.amis.values()):
        if image.name == name and image.owner_id == ec2_backend.account_id:
            raise client_error(
                "InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {image.id}"
            )
    return str(name)


def normalize_block_device_mappings(ec2_backend: Any, mappings: Any) -> list[dict[str, Any]]:
    """RegisterImage BlockDeviceMappings as DescribeImages shows them, checked against EBS."""
    out: list[dict[str, Any]] = []
    for mapping in as_list(mappings):
        device = mapping.get("DeviceName")
        if not device:
            raise client_error("InvalidBlockDeviceMapping", "The device name must be specified.")
        entry: dict[str, Any] = {"DeviceName": device}
        if mapping.get("VirtualName"):
            entry["VirtualName"] = mapping["VirtualName"]
        if mapping.get("NoDevice") is not None:
            entry["NoDevice"] = ""
        ebs = mapping.get("Ebs")
        if ebs:
            snapshot_id = ebs.get("SnapshotId")
            size = ebs.get("VolumeSize")
            encrypted = as_bool(ebs.get("Encrypted"))
            if snapshot_id:
                snapshot = ec2_backend.snapshots.get(snapshot_id)
                if snapshot is None:
                    raise snapshot_not_found(snapshot_id)
                snapshot_size = int(snapshot.volume_size)
                if size is None:
                    size = snapshot_size
                elif int(size) < snapshot_size:
                    raise client_error(
                        "InvalidBlockDeviceMapping",
                        f"Volume of size {int(size)}GB is smaller than snapshot '{snapshot_id}', "
                        f"expect size >= {snapshot_size}GB",
                    )
                if encrypted is None:
                    encrypted = bool(snapshot.encrypted)
            elif size is None:
                raise client_error(
                    "InvalidBlockDeviceMapping",
                    f"snapshotId or volumeSize must be specified for device {device}",
                )
            volume_type = _enum(ebs.get("VolumeType"), VOLUME_TYPES, "volumeType") or "gp2"  # Guess: gp2
            if volume_type in ("io1", "io2") and ebs.get("Iops") is None:
                # EbsBlockDevice.Iops: "This parameter is required for io1 and io2 volumes."
                # Guess: the code and text CreateVolume answers for the same omission.
                raise client_error(
                    "InvalidParameterCombination",
                    f"The parameter iops must be specified for {volume_type} volumes.",
                )
            _check_volume_performance(volume_type, int(size), ebs.get("Iops"), ebs.get("Throughput"))
            ebs_out: dict[str, Any] = {
                "DeleteOnTermination": as_bool(ebs.get("DeleteOnTermination"), True),
                "VolumeSize": int(size),
                "VolumeType": volume_type,
                "Encrypted": bool(encrypted),
            }
            if snapshot_id:
                ebs_out["SnapshotId"] = snapshot_id
            for optional in ("Iops", "Throughput", "KmsKeyId"):
                if ebs.get(optional) is not None:
                    ebs_out[optional] = ebs[optional]
            entry["Ebs"] = ebs_out
        out.append(entry)
    return out


def _check_volume_performance(volume_type: str, size: int, iops: Any, throughput: Any) -> None:
    """The per-type ranges of EbsBlockDevice (VOLUME_SIZES, VOLUME_IOPS, GP3_THROUGHPUT). Guess:
    the codes (InvalidParameterValue for a value out of its type's range,
    InvalidParameterCombination for a parameter the type does not take), as CreateVolume answers
    for the same values; the texts are ours. Not modelled: the ratios the EBS User Guide gives
    between IOPS, size and throughput."""
    low, high = VOLUME_SIZES.get(volume_type, (1, 65_536))
    if not low <= size <= high:
        raise client_error(
            "InvalidParameterValue",
            f"Volume size {size} GiB is outside {low}-{high} GiB, the sizes of a {volume_type} volume.",
        )
    if iops is not None:
        span = VOLUME_IOPS.get(volume_type)
        if span is None:
            raise client_error(
                "InvalidParameterCombination", f"The parameter iops is not supported for {volume_type} volumes."
            )
        if not span[0] <= int(iops) <= span[1]:
            raise client_error(
                "InvalidParameterValue",
                f"Iops {int(iops)} is outside {span[0]}-{span[1]}, the IOPS of a {volume_type} volume.",
            )
    if throughput is not None:
        if volume_type != "gp3":
            raise client_error(
                "InvalidParameterCombination",
                f"The parameter throughput is not supported for {volume_type} volumes.",
            )
        if not GP3_THROUGHPUT[0] <= int(throughput) <= GP3_THROUGHPUT[1]:
            raise client_error(
                "InvalidParameterValue",
                f"Throughput {int(throughput)} is outside {GP3_THROUGHPUT[0]}-{GP3_THROUGHPUT[1]} MiB/s.",
            )


def _apply_tags(ec2_backend: Any, resource_ids: list[str], tags: dict[str, str]) -> None:
    if tags and resource_ids:
        ec2_backend.create_tags(resource_ids, tags)


def _user_tags(image: Any) -> dict[str, str]:
    return {t["key"]: t["value"] for t in image.get_tags() if not t["key"].startswith("aws:")}


# ---------------------------------------------------------------------------------------------
# Response handlers (installed on moto.ec2.responses.EC2Response)
# ---------------------------------------------------------------------------------------------


def register_image(self: Any) -> ActionResult:
    """API_RegisterImage: keep BDM (with the given snapshots), architecture, boot mode, ENA,
    SR-IOV, virtualization type, root device, IMDS/TPM support, description and tags."""
    name = self._get_param("Name")
    description = self._get_param("Description")
    architecture = _enum(self._get_param("Architecture"), ARCHITECTURES, "architecture")
    boot_mode = _enum(self._get_param("BootMode"), BOOT_MODES, "bootMode")
    virtualization = _enum(self._get_param("VirtualizationType"), VIRTUALIZATION_TYPES, "virtualizationType")
    tpm = _enum(self._get_param("TpmSupport"), ("v2.0",), "tpmSupport")
    imds = _enum(self._get_param("ImdsSupport"), ("v2.0",), "imdsSupport")
    sriov = _enum(self._get_param("SriovNetSupport"), ("simple",), "sriovNetSupport")
    ena = as_bool(self._get_param("EnaSupport"))
    root_device_name = self._get_param("RootDeviceName")
    specs = tag_specifications(self)
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        validate_name(backend, name)
        # RegisterImage.TagSpecifications: "To tag the AMI, the value for ResourceType must be
        # image. If you specify another value for ResourceType, the request fails." (the
        # api_rules gate refuses other types before this handler runs).
        tags = tags_by_resource_type(specs, ("image",))
        bdm = normalize_block_device_mappings(backend, self._get_param("BlockDeviceMappings"))
        image = EmulatorImage(
            backend,
            random_ami_id(),
            name=name,
            description=description,
            block_device_mappings=bdm,
            # API reference defaults: architecture i386 (EBS-backed), virtualization paravirtual.
            architecture=architecture or "i386",
            virtualization_type=virtualization or "paravirtual",
            root_device_name=root_device_name or (bdm[0]["DeviceName"] if bdm else "/dev/sda1"),
            ena_support=ena,
            sriov_net_support=sriov,
            boot_mode=boot_mode,
            tpm_support=tpm,
            imds_support=imds,
            uefi_data=self._get_param("UefiData"),
            kernel_id=self._get_param("KernelId"),
            ramdisk_id=self._get_param("RamdiskId"),
        )
        backend.amis[image.id] = image
        _apply_tags(backend, [image.id], tags.get("image", {}))
    return ActionResult({"ImageId": image.id})


def describe_images(self: Any) -> ActionResult:
    """API_DescribeImages: ImageIds, Owners, ExecutableUsers, Filters (ANDed, also applied to
    ImageIds), IncludeDisabled, MaxResults/NextToken."""
    self.error_on_dryrun()
    image_ids = [str(i) for i in as_list(self._get_param("ImageIds"))]
    owners = [str(o) for o in as_list(self._get_param("Owners"))]
    exec_users = [str(u) for u in as_list(self._get_param("ExecutableUsers"))]
    include_disabled = as_bool(self._get_param("IncludeDisabled"), False)
    filters = filters_param(self)
    account = self.current_account
    backend = self.ec2_backend
    with LOCK:
        # Eventual consistency (consistency.py): images created less than the account's lag
        # ago are not described yet, neither listed nor found by id.
        amis = visible(backend, backend.amis)
        images = list(amis.values())
        if image_ids:
            malformed = [i for i in image_ids if not i.startswith("ami-")]
            if malformed:
                raise MalformedAMIIdError(malformed)
            missing = [i for i in image_ids if i not in amis and i not in backend.deleted_amis]
            if missing:
                raise InvalidAMIIdError(missing)
            images = [i for i in images if i.id in image_ids]
        if not include_disabled:
            # "Default: No disabled AMIs are included in the response" (IncludeDisabled), and
            # "A disabled AMI does not appear in DescribeImages API calls by default"
            # (DisableImage): ids the caller names included, so code that reads an image by id
            # must ask for disabled ones. (Whether EC2 then answers an empty list or
            # InvalidAMIID.NotFound is not documented; the empty list is the milder guess.)
            images = [i for i in images if i.state != "disabled"]
        if exec_users:
            wanted = {account if u == "self" else u for u in exec_users}
            images = [
                i
                for i in images
                if i.is_public
                or i.owner_id in wanted
                or any(lp.get("UserId") in wanted for lp in i.launch_permissions)
            ]
        if owners:
            wanted_owners = {account if o == "self" else o for o in owners}
            images = [
                i for i in images if i.owner_id in wanted_owners or (i.owner_alias or "") in wanted_owners
            ]
        if filters:
            from moto.ec2.utils import generic_filter

            # Unknown names were refused by the api_rules gate (filter_names); a documented one
            # not evaluated here raises EmulatorFilterNotImplemented (image_filter_value).
            images = generic_filter(filters, images)
        page, token = paginate(
            images,
            key=lambda i: i.id,
            max_results=self._get_param("MaxResults"),
            next_token=self._get_param("NextToken"),
            operation="DescribeImages",
            min_results=1,  # Guess: the reference gives no range for DescribeImages.
            max_allowed=1000,
            clamp_above=True,
        )
    result: dict[str, Any] = {"Images": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def copy_image(self: Any) -> ActionResult:
    """API_CopyImage: SourceImageId/SourceImageRegion lineage, CopyImageTags, TagSpecifications
    (image, snapshot), ClientToken idempotency, a new snapshot per EBS mapping in the
    destination region with the source snapshot's size, and an optional ``pending`` period.
    The source may be another account's AMI the caller can launch (``copy_source``); its tags
    are then not copied (CopyImageTags: "user-defined tags that are attached by other Amazon
    Web Services accounts" are not)."""
    source_image_id = str(self._get_param("SourceImageId") or "")
    source_region = self._get_param("SourceRegion")
    name = self._get_param("Name")
    description = self._get_param("Description")
    client_token = self._get_param("ClientToken")
    copy_tags = as_bool(self._get_param("CopyImageTags"), False)
    encrypted = as_bool(self._get_param("Encrypted"), False)
    kms_key_id = self._get_param("KmsKeyId")
    specs = tag_specifications(self)
    self.error_on_dryrun()
    account = self.current_account
    dest = self.ec2_backend
    with LOCK:
        state = region_state(dest)
        fingerprint = (source_image_id, source_region, name, description, copy_tags, encrypted, kms_key_id)
        if client_token:
            known = state.copy_client_tokens.get(client_token)
            if known is not None:
                if known[0] != fingerprint:
                    raise client_error(
                        "IdempotentParameterMismatch",
                        f"The client token '{client_token}' has already been used with different parameters.",
                    )
                return ActionResult({"ImageId": known[1]})
        if not source_region:
            raise client_error("MissingParameter", "The request must contain the parameter SourceRegion")
        source_backend, source = copy_source(account, source_region, source_image_id)
        validate_name(dest, name)
        tags = tags_by_resource_type(specs, ("image", "snapshot"))

        new_id = random_ami_id()
        delay = account_config(account)["copy_delay_seconds"]
        available_at = utcnow() + _dt.timedelta(seconds=delay) if delay > 0 else None
        task_stamp = int(utcnow().timestamp())
        bdm: list[dict[str, Any]] = []
        new_snapshot_ids: list[str] = []
        for mapping in source.block_device_mappings:
            mapping = copy.deepcopy(mapping)
            ebs = mapping.get("Ebs")
            if ebs and ebs.get("SnapshotId"):
                source_snapshot = source_backend.snapshots.get(ebs["SnapshotId"])
                size = int(source_snapshot.volume_size) if source_snapshot else int(ebs.get("VolumeSize") or 1)
                # EBS encryption by default in the destination encrypts the copy of an
                # unencrypted snapshot too, with the default KMS key unless KmsKeyId names one
                # (EBS User Guide, "Copy an unencrypted snapshot (encryption by default enabled)").
                is_encrypted = bool(
                    encrypted
                    or getattr(dest, "ebs_encryption_by_default", False)
                    or (source_snapshot.encrypted if source_snapshot else ebs.get("Encrypted"))
                )
                snapshot = new_snapshot(
                    dest,
                    size,
                    f"Copied for DestinationAmi {new_id} from SourceAmi {source.id} for "
                    f"SourceSnapshot {ebs['SnapshotId']}. Task created on {task_stamp}.",
                    encrypted=is_encrypted,
                    kms_key_id=kms_key_id,
                    ready_at=available_at,
                )
                ebs["SnapshotId"] = snapshot.id
                ebs["Encrypted"] = is_encrypted
                if snapshot.kms_key_id:
                    ebs["KmsKeyId"] = snapshot.kms_key_id
                new_snapshot_ids.append(snapshot.id)
            bdm.append(mapping)

        image = EmulatorImage(
            dest,
            new_id,
            name=name,
            description=description if description is not None else source.description,
            block_device_mappings=bdm,
            architecture=source.architecture,
            virtualization_type=source.virtualization_type,
            root_device_name=source.root_device_name,
            ena_support=getattr(source, "ena_support", None),
            sriov_net_support=getattr(source, "sriov_net_support", None),
            boot_mode=getattr(source, "boot_mode", None),
            tpm_support=getattr(source, "tpm_support", None),
            imds_support=getattr(source, "imds_support", None),
            uefi_data=getattr(source, "uefi_data", None),
            kernel_id=source.kernel_id,
            ramdisk_id=getattr(source, "ramdisk_id", None),
            source_image_id=source.id,
            source_image_region=source_region,
            available_at=available_at,
        )
        dest.amis[new_id] = image
        if copy_tags and source.owner_id == account:
            _apply_tags(dest, [new_id], _user_tags(source))
        _apply_tags(dest, [new_id], tags.get("image", {}))
        _apply_tags(dest, new_snapshot_ids, tags.get("snapshot", {}))
        if client_token:
            state.copy_client_tokens[client_token] = (fingerprint, new_id)
    return ActionResult({"ImageId": new_id})


def _protection_active(image: Any) -> bool:
    protection = getattr(image, "deregistration_protection", None) or "disabled"
    if protection.startswith("enabled"):
        return True
    until = getattr(image, "protected_until", None)
    return until is not None and utcnow() < until


def deregister_image(self: Any) -> ActionResult:
    """API_DeregisterImage with DeleteAssociatedSnapshots (botocore model DeregisterImageRequest /
    DeregisterImageResult): "When deregistering an EBS-backed AMI, you can optionally delete its
    associated snapshots at the same time. However, if a snapshot is associated with multiple
    AMIs, it won't be deleted even if specified for deletion, although the AMI will still be
    deregistered." Each snapshot of the image's BDM is reported in ``deleteSnapshotResultSet``
    with a ``DeleteSnapshotReturnCode.ReturnCode`` (model enum and its documentation):

    * ``skipped`` - "not deleted because it's associated with other AMIs" (any image of the
      account+region that still has it in its BDM, disabled ones included);
    * ``missing-permissions`` - "not deleted because the role lacks DeleteSnapshot permissions":
      the iam gate found ``ec2:DeleteSnapshot`` denied on it (``iam.deregister_snapshot_denials``);
    * ``client-error`` - "not deleted due to a client configuration error": here, a snapshot that
      no longer exists (Guess: which client errors AWS reports this way is not documented);
    * ``success`` - deleted.

    ``internal-error`` never happens here. Recycle Bin retention and snapshot locks are not
    modelled. Without the flag nothing is deleted and no result set is returned."""
    image_id = str(self._get_param("ImageId") or "")
    delete_snapshots = as_bool(self._get_param("DeleteAssociatedSnapshots"), False)
    self.error_on_dryrun()
    backend = self.ec2_backend
    request = getattr(self, "normalized_request", None)
    not_deletable = snapshots_not_deletable(getattr(request, "environ", None))
    with LOCK:
        if not image_id.startswith("ami-"):
            raise MalformedAMIIdError([image_id])
        image = backend.amis.get(image_id)
        if image is not None and _protection_active(image):
            # Guess: code and text of this refusal are not in the API reference.
            raise client_error(
                "OperationNotPermitted",
                f"The image {image_id} has deregistration protection enabled. "
                "Disable deregistration protection before you deregister the image.",
            )
        snapshot_ids = image_snapshot_ids(image) if image is not None else []
        backend.deregister_image(image_id)
        results = []
        if delete_snapshots:
            for snapshot_id in snapshot_ids:
                if image_using_snapshot(backend, snapshot_id) is not None:
                    code = "skipped"
                elif snapshot_id in not_deletable:
                    # IAM is evaluated before the snapshot is looked up, as for DeleteSnapshot.
                    code = "missing-permissions"
                elif snapshot_id not in backend.snapshots:
                    code = "client-error"
                else:
                    backend.snapshots.pop(snapshot_id)
                    code = "success"
                results.append({"SnapshotId": snapshot_id, "ReturnCode": code})
    result: dict[str, Any] = {"Return": True}
    if delete_snapshots:
        result["DeleteSnapshotResults"] = results
    return ActionResult(result)


def _check_public_image_quota(backend: Any, account: str) -> None:
    """Service Quotas "Public AMIs" (L-0E3CBAB9, 5 per Region by default, adjustable; the
    account's ``public_image_quota`` here): making one more image public past it is refused with
    EC2's answer, as reported by its users (e.g. NixOS/amis#37, iterative/studio-selfhosted#90):
    ``ResourceLimitExceeded`` "You have reached your quota of 5 for the number of public images
    allowed in this Region. ...". Images in the Recycle Bin, which AWS counts too, are not
    modelled."""
    quota = int(account_config(account).get("public_image_quota", 5))
    public = sum(1 for i in backend.amis.values() if i.is_public and i.owner_id == account)
    if public >= quota:
        raise client_error(
            "ResourceLimitExceeded",
            f"You have reached your quota of {quota} for the number of public images allowed in "
            "this Region. Deregister unused public images or make them private, or request an "
            "increase in your public AMIs quota.",
        )


def modify_image_attribute(self: Any) -> ActionResult:
    """API_ModifyImageAttribute: launch permissions (both forms) refused with
    OperationNotPermitted while image block public access is ``block-new-sharing`` and the
    change would make a private image public, with UnsupportedOperation when the image to make
    public has an encrypted volume, with InvalidParameter when an account, organization or OU
    is added to an image with a snapshot encrypted with the AWS managed key for EBS, and with
    ResourceLimitExceeded past the account's quota of
    public images in the Region (``_check_public_image_quota``); Description and ImdsSupport are
    applied."""
    image_id = self._get_param("ImageId")
    attribute = self._get_param("Attribute")
    launch_permission = self._get_param("LaunchPermission") or {}
    to_add = [dict(p) for p in as_list(launch_permission.get("Add"))]
    to_remove = [dict(p) for p in as_list(launch_permission.get("Remove"))]
    operation_type = self._get_param("OperationType")
    if operation_type in ("add", "remove"):
        target = to_add if operation_type == "add" else to_remove
        target.extend({"Group": str(g)} for g in as_list(self._get_param("UserGroups")))
        target.extend({"UserId": str(u)} for u in as_list(self._get_param("UserIds")))
        target.extend({"OrganizationArn": str(a)} for a in as_list(self._get_param("OrganizationArns")))
        target.extend(
            {"OrganizationalUnitArn": str(a)} for a in as_list(self._get_param("OrganizationalUnitArns"))
        )
    description = self._get_param("Description")
    value = self._get_param("Value")
    imds = self._get_param("ImdsSupport")
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        image = owned_image(backend, image_id)
        if attribute == "description" and value is not None and description is None:
            description = {"Value": value}
        if attribute == "imdsSupport" and value is not None and imds is None:
            imds = {"Value": value}
        if to_add and region_state(backend).image_block_public_access == "block-new-sharing":
            if any(p.get("Group") == "all" for p in to_add) and not image.is_public:
                raise client_error("OperationNotPermitted", BPA_REFUSAL)
        if any(p.get("Group") == "all" for p in to_add) and any(
            e.get("Encrypted") for e in _ebs(image)
        ):
            # AMIs with encrypted volumes cannot be made public; EC2 answers
            # "UnsupportedOperation: Encrypted snapshots can't be shared publicly. Specify
            # another snapshot." (reported by Packer users, opendevstack/ods-core#1062).
            from .snapshots import ENCRYPTED_NOT_PUBLIC

            raise client_error("UnsupportedOperation", ENCRYPTED_NOT_PUBLIC)
        if any(p.get("Group") != "all" for p in to_add):
            from .snapshots import AWS_MANAGED_KEY_IMAGE, encrypted_with_aws_managed_key

            for e in _ebs(image):
                snapshot = backend.snapshots.get(e.get("SnapshotId") or "")
                if snapshot is not None and encrypted_with_aws_managed_key(backend, snapshot):
                    raise client_error("InvalidParameter", AWS_MANAGED_KEY_IMAGE)
        if any(p.get("Group") == "all" for p in to_add) and not image.is_public:
            _check_public_image_quota(backend, self.current_account)
        if to_add or to_remove:
            backend.modify_image_attribute(
                ami_id=image.id,
                launch_permissions_to_add=to_add,
                launch_permissions_to_remove=to_remove,
            )
        if description is not None:
            image.description = description.get("Value") if isinstance(description, dict) else description
        if imds is not None:
            imds_value = imds.get("Value") if isinstance(imds, dict) else imds
            image.imds_support = _enum(imds_value, ("v2.0",), "imdsSupport")
    return EmptyResult()


# DescribeImageAttribute: Attribute name -> (result member, getter).
_IMAGE_ATTRIBUTES: dict[str, tuple[str, Any]] = {
    "description": ("Description", lambda i: i.description),
    "kernel": ("KernelId", lambda i: i.kernel_id),
    "ramdisk": ("RamdiskId", lambda i: getattr(i, "ramdisk_id", None)),
    "sriovNetSupport": ("SriovNetSupport", lambda i: getattr(i, "sriov_net_support", None)),
    "bootMode": ("BootMode", lambda i: getattr(i, "boot_mode", None)),
    "tpmSupport": ("TpmSupport", lambda i: getattr(i, "tpm_support", None)),
    "uefiData": ("UefiData", lambda i: getattr(i, "uefi_data", None)),
    "lastLaunchedTime": ("LastLaunchedTime", lambda i: getattr(i, "last_launched_time", None)),
    "imdsSupport": ("ImdsSupport", lambda i: getattr(i, "imds_support", None)),
    "deregistrationProtection": (
        "DeregistrationProtection",
        lambda i: getattr(i, "deregistration_protection", None),
    ),
}


def describe_image_attribute(self: Any) -> ActionResult:
    """API_DescribeImageAttribute, including lastLaunchedTime, imdsSupport, tpmSupport and
    deregistrationProtection; an unknown image gives InvalidAMIID.NotFound (plain moto: 500)."""
    image_id = self._get_param("ImageId")
    attribute = self._get_param("Attribute")
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        image = owned_image(backend, image_id)
        result: dict[str, Any] = {"ImageId": image.id}
        if attribute == "launchPermission":
            result["LaunchPermissions"] = list(image.launch_permissions)
        elif attribute == "productCodes":
            result["ProductCodes"] = [
                {"ProductCodeId": c, "ProductCodeType": "marketplace"} for c in image.product_codes
            ]
        elif attribute == "blockDeviceMapping":
            # Real EC2 answers AuthFailure here (aws/aws-cli#1083); moto does the same.
            raise AuthFailureRestricted
        elif attribute in _IMAGE_ATTRIBUTES:
            member, getter = _IMAGE_ATTRIBUTES[attribute]
            value = getter(image)
            result[member] = {} if value is None else {"Value": str(value)}
        else:
            raise client_error(
                "InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid."
            )
    return ActionResult(result)


def _round_to_minute(value: _dt.datetime) -> _dt.datetime:
    rounded = value.replace(second=0, microsecond=0)
    if value.second >= 30:
        rounded += _dt.timedelta(minutes=1)
    return rounded


def _add_years(value: _dt.datetime, years: int) -> _dt.datetime:
    try:
        return value.replace(year=value.year + years)
    except ValueError:  # 29 February
        return value.replace(year=value.year + years, day=28)


def enable_image_deprecation(self: Any) -> ActionResult:
    """API_EnableImageDeprecation: seconds are rounded to the nearest minute; no date in the
    past; at most 10 years from now, or 2 years from the creation date for a public AMI.
    DeprecationTime is returned as ``YYYY-MM-DDTHH:MM:00.000Z``."""
    image_id = self._get_param("ImageId")
    raw = self._get_param("DeprecateAt")
    self.error_on_dryrun()
    try:
        when = parse_timestamp(raw, "DeprecateAt")
    except ValueError as exc:
        raise client_error("InvalidParameterValue", str(exc)) from exc
    backend = self.ec2_backend
    with LOCK:
        image = owned_image(backend, image_id)
        now = utcnow()
        # Guess: the error code/text for these limits are not documented; InvalidParameterValue.
        if when < now:
            raise client_error(
                "InvalidParameterValue", f"The deprecation time {iso_millis(when)} cannot be in the past."
            )
        rounded = _round_to_minute(when)
        if rounded > _add_years(now, 10):
            raise client_error(
                "InvalidParameterValue",
                f"The deprecation time {iso_millis(rounded)} cannot be more than 10 years from now.",
            )
        if image.is_public and isinstance(image.creation_date, _dt.datetime):
            if rounded > _add_years(image.creation_date, 2):
                raise client_error(
                    "InvalidParameterValue",
                    f"The deprecation time {iso_millis(rounded)} of a public AMI cannot be more "
                    "than 2 years after its creation date.",
                )
        image.deprecation_time = iso_millis(rounded)
    return ActionResult({"Return": True})


def disable_image_deprecation(self: Any) -> ActionResult:
    """API_DisableImageDeprecation: clears DeprecationTime."""
    image_id = self._get_param("ImageId")
    self.error_on_dryrun()
    with LOCK:
        image = owned_image(self.ec2_backend, image_id)
        image.deprecation_time = None
    return ActionResult({"Return": True})


def get_image_block_public_access_state(self: Any) -> ActionResult:
    """API_GetImageBlockPublicAccessState: per account+region, default ``unblocked``."""
    self.error_on_dryrun()
    with LOCK:
        value = region_state(self.ec2_backend).image_block_public_access
    return ActionResult({"ImageBlockPublicAccessState": value, "ManagedBy": "account"})


def enable_image_block_public_access(self: Any) -> ActionResult:
    """API_EnableImageBlockPublicAccess: only ``block-new-sharing``; applies at once (AWS: up
    to 10 minutes). Images that are already public stay public."""
    value = self._get_param("ImageBlockPublicAccessState")
    self.error_on_dryrun()
    if value != "block-new-sharing":
        raise client_error(
            "InvalidParameterValue",
            f"Value ({value}) for parameter ImageBlockPublicAccessState is invalid. "
            "Valid value: block-new-sharing",
        )
    with LOCK:
        region_state(self.ec2_backend).image_block_public_access = "block-new-sharing"
    return ActionResult({"ImageBlockPublicAccessState": "block-new-sharing"})


def disable_image_block_public_access(self: Any) -> ActionResult:
    """API_DisableImageBlockPublicAccess: back to ``unblocked``."""
    self.error_on_dryrun()
    with LOCK:
        region_state(self.ec2_backend).image_block_public_access = "unblocked"
    return ActionResult({"ImageBlockPublicAccessState": "unblocked"})


SNAPSHOT_BPA_STATES = ("block-all-sharing", "block-new-sharing")


def get_snapshot_block_public_access_state(self: Any) -> ActionResult:
    """API_GetSnapshotBlockPublicAccessState: per account+region, default ``unblocked``."""
    self.error_on_dryrun()
    with LOCK:
        value = region_state(self.ec2_backend).snapshot_block_public_access
    return ActionResult({"State": value, "ManagedBy": "account"})


def enable_snapshot_block_public_access(self: Any) -> ActionResult:
    """API_EnableSnapshotBlockPublicAccess: ``block-all-sharing`` or ``block-new-sharing``
    (botocore: the result "Returns either block-all-sharing or block-new-sharing"); applies at
    once. Snapshots already public keep their attribute either way (in ``block-all-sharing``
    AWS treats them as private; not modelled)."""
    value = self._get_param("State")
    self.error_on_dryrun()
    if value not in SNAPSHOT_BPA_STATES:
        raise client_error(
            "InvalidParameterValue",
            f"Value ({value}) for parameter State is invalid. "
            "Valid values: block-all-sharing, block-new-sharing",
        )
    with LOCK:
        region_state(self.ec2_backend).snapshot_block_public_access = value
    return ActionResult({"State": value})


def disable_snapshot_block_public_access(self: Any) -> ActionResult:
    """API_DisableSnapshotBlockPublicAccess: back to ``unblocked``."""
    self.error_on_dryrun()
    with LOCK:
        region_state(self.ec2_backend).snapshot_block_public_access = "unblocked"
    return ActionResult({"State": "unblocked"})


def enable_image_deregistration_protection(self: Any) -> ActionResult:
    """API_EnableImageDeregistrationProtection: Return is ``enabled-with-cooldown`` or
    ``enabled-without-cooldown`` (the AWS CLI example shows the latter)."""
    image_id = self._get_param("ImageId")
    with_cooldown = as_bool(self._get_param("WithCooldown"), False)
    self.error_on_dryrun()
    with LOCK:
        image = owned_image(self.ec2_backend, image_id)
        image.deregistration_protection = (
            "enabled-with-cooldown" if with_cooldown else "enabled-without-cooldown"
        )
        image.deregistration_cooldown = with_cooldown
        image.protected_until = None
    return ActionResult({"Return": image.deregistration_protection})


def disable_image_deregistration_protection(self: Any) -> ActionResult:
    """API_DisableImageDeregistrationProtection: with a cooldown the image stays protected for
    24 hours and DescribeImages shows ``disabled-until <time>`` (Guess: the exact text)."""
    image_id = self._get_param("ImageId")
    self.error_on_dryrun()
    with LOCK:
        image = owned_image(self.ec2_backend, image_id)
        was_enabled = (getattr(image, "deregistration_protection", None) or "").startswith("enabled")
        if was_enabled and getattr(image, "deregistration_cooldown", False):
            image.protected_until = utcnow() + _dt.timedelta(hours=24)
            image.deregistration_protection = f"disabled-until {iso_millis(image.protected_until)}"
        elif not (getattr(image, "protected_until", None) and utcnow() < image.protected_until):
            image.deregistration_protection = "disabled"
            image.protected_until = None
        image.deregistration_cooldown = False
    return ActionResult({"Return": "disabled"})


_PLAIN_AMI_DEFAULTS: dict[str, Any] = {
    "deprecation_time": None,
    "deregistration_protection": "disabled",
    "deregistration_cooldown": False,
    "protected_until": None,
    "last_launched_time": None,
    "source_image_id": None,
    "source_image_region": None,
}


def _creation_date_transformer(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return iso_millis(value)
    return value


def install() -> None:
    from moto.ec2.models import EC2Backend  # noqa: F401  (imports the EC2 models)
    from moto.ec2.responses import EC2Response
    from moto.ec2.responses._base_response import EC2BaseResponse

    Ami.get_filter_value = image_filter_value  # type: ignore[method-assign]
    serve_filters("DescribeImages", [*_IMAGE_FILTERS, TAG_PATTERN, "tag-key"])
    # Images moto makes itself (CreateImage from an instance, MOTO_AMIS_PATH seeds) get the same
    # defaults as ours, so DescribeImages shows e.g. DeregistrationProtection "disabled" for them.
    for attribute, default in _PLAIN_AMI_DEFAULTS.items():
        if not hasattr(Ami, attribute):
            setattr(Ami, attribute, default)
    # CreationDate with real milliseconds (moto zeroes them), so a backdated
    # "2025-01-02T03:04:05.123Z" round-trips.
    EC2BaseResponse.RESPONSE_KEY_PATH_TO_TRANSFORMER["Image.CreationDate"] = _creation_date_transformer

    for handler in (
        register_image,
        describe_images,
        copy_image,
        deregister_image,
        modify_image_attribute,
        describe_image_attribute,
        enable_image_deprecation,
        disable_image_deprecation,
        get_image_block_public_access_state,
        enable_image_block_public_access,
        disable_image_block_public_access,
        get_snapshot_block_public_access_state,
        enable_snapshot_block_public_access,
        disable_snapshot_block_public_access,
        enable_image_deregistration_protection,
        disable_image_deregistration_protection,
    ):
        setattr(EC2Response, handler.__name__, handler)
