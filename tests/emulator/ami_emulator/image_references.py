"""DescribeImageReferences: which of the caller's resources reference the given AMIs.

Plain moto 5.2.5 does not have the operation (HTTP 500). Sources:

* API reference, https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeImageReferences.html,
  and botocore's EC2 model (``DescribeImageReferencesRequest``/``Result``, ``ResourceTypeOption``):
  ``ImageId.N`` 1–10 ids (required), ``IncludeAllResourceTypes`` and/or ``ResourceType.N``
  ("Either IncludeAllResourceTypes or ResourceTypes must be specified"), options valid "only when
  ResourceType is ec2:Instance or ec2:LaunchTemplate": ``state-name`` (pending | running |
  shutting-down | terminated | stopping | stopped, default all states) and ``version-depth``
  ("Integers between 1 and 10000", default 10), ``MaxResults`` (min 5) / ``NextToken``; the
  answer ``imageReferenceSet`` of {``imageId``, ``resourceType``, ``arn``}.
* EC2 User Guide, "Identify your resources referencing specified AMIs"
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-ami-references.html): the AMIs may be
  "public or private, or [owned by anyone]"; ``IncludeAllResourceTypes`` uses the default
  options, and ``ResourceTypes`` option values given with it "take precedence over the
  defaults"; version-depth is "the number of launch template versions to check (starting from
  the most recent version)"; the answer's ARNs (``…:instance/i-…``, ``…:launch-template/lt-…``).
  The IAM permissions it lists per resource type are checked by the ``iam`` gate
  (``iam._describe_image_references``), not here.

What is scanned, in the caller's account and the request's region:

* ``ec2:Instance``: every instance whose ``ImageId`` is one of the ids and whose state is in
  ``state-name`` (moto keeps terminated instances; AWS shows them for about an hour).
* ``ec2:LaunchTemplate``: every launch template with one of its ``version-depth`` most recent
  versions' ``LaunchTemplateData.ImageId`` equal to an id; one reference per template and image.
* ``ssm:Parameter``: every Parameter Store parameter (latest version) of data type
  ``aws:ec2:image`` whose value is the id. Guess: the reference does not say which parameters
  count; ``aws:ec2:image`` is the data type the EC2 and Systems Manager guides tell users to give
  a parameter "that points to an AMI ID", and the permissions the guide lists
  (``ssm:DescribeParameters`` + ``ssm:GetParameters``) fit a scan that filters on the data type
  first. A ``text`` parameter holding an AMI id is therefore not reported (the safe side for a
  cleanup: AWS may report more references, never fewer, than the emulator).
* ``imagebuilder:ImageRecipe`` / ``imagebuilder:ContainerRecipe``: accepted, never any
  reference (moto has no Image Builder backend).

Choices where the reference is silent (README "Choices made"): an image id that is well formed
but does not exist (or was deregistered) is accepted and simply has no references — the guide
lets any AMI be checked, whoever owns it, and a launch template or parameter can still name a
deregistered one; a malformed id answers ``InvalidAMIID.Malformed`` as the other image calls do;
neither ``IncludeAllResourceTypes`` nor ``ResourceTypes`` → ``MissingParameter``; an unknown
option for a type, a bad ``state-name`` or ``version-depth`` value → ``InvalidParameterValue``;
results ordered by image id (in the request's order), resource type, ARN; ``MaxResults`` above 1000 clamped.
"""

from __future__ import annotations

from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import MalformedAMIIdError

from .common import LOCK, as_bool, as_list, client_error, paginate

INSTANCE = "ec2:Instance"
LAUNCH_TEMPLATE = "ec2:LaunchTemplate"
SSM_PARAMETER = "ssm:Parameter"
IMAGE_RECIPE = "imagebuilder:ImageRecipe"
CONTAINER_RECIPE = "imagebuilder:ContainerRecipe"
# ImageReferenceResourceType enum (botocore model), in the order IncludeAllResourceTypes scans.
RESOURCE_TYPES = (INSTANCE, LAUNCH_TEMPLATE, SSM_PARAMETER, IMAGE_RECIPE, CONTAINER_RECIPE)

# ResourceTypeOption.OptionValues: state-name "Valid values: pending | running | shutting-down |
# terminated | stopping | stopped; Default: All states"; version-depth "Valid values: Integers
# between 1 and 10000; Default: 10".
INSTANCE_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")
VERSION_DEPTH_DEFAULT = 10
VERSION_DEPTH_MAX = 10000
# ResourceTypeOptions: "Valid only when ResourceType is ec2:Instance or ec2:LaunchTemplate".
OPTIONS_BY_TYPE = {INSTANCE: "state-name", LAUNCH_TEMPLATE: "version-depth"}

IMAGE_IDS_MAX = 10  # ImageId.N: "Minimum number of 1 item. Maximum number of 10 items."
MAX_RESULTS_MIN = 5  # DescribeImageReferencesMaxResults: min 5
MAX_RESULTS_MAX = 1000  # Guess: no maximum in the model; larger values are clamped

# Data type of a Parameter Store parameter that holds an AMI id (Systems Manager User Guide,
# "Native parameter support for Amazon Machine Image IDs").
SSM_IMAGE_DATA_TYPE = "aws:ec2:image"


def requested_types(include_all: bool, resource_types: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """``{resource type: {option name: values}}`` to scan: every type with its defaults when
    ``include_all``, the given types otherwise; given options win over the defaults. Raises the
    EC2 error for a request naming no type, an option of another type or a bad value."""
    if not include_all and not resource_types:
        # Guess: the code; the rule is the model's "Either IncludeAllResourceTypes or
        # ResourceTypes must be specified."
        raise client_error(
            "MissingParameter", "Either IncludeAllResourceTypes or ResourceTypes must be specified."
        )
    wanted: dict[str, dict[str, list[str]]] = {t: {} for t in RESOURCE_TYPES} if include_all else {}
    for entry in resource_types:
        rtype = str(entry.get("ResourceType") or "")
        if rtype not in RESOURCE_TYPES:
            raise client_error("InvalidParameterValue", f"Value ({rtype}) for parameter resourceType is invalid.")
        options = wanted.setdefault(rtype, {})
        for option in as_list(entry.get("ResourceTypeOptions") or entry.get("ResourceTypeOption")):
            name = str(option.get("OptionName") or "")
            if OPTIONS_BY_TYPE.get(rtype) != name:
                raise client_error(
                    "InvalidParameterValue",
                    f"The option {name or '(none)'} is not valid for resource type {rtype}.",
                )
            values = [str(v) for v in as_list(option.get("OptionValues") or option.get("OptionValue"))]
            options[name] = values
    for rtype, options in wanted.items():
        _check_option_values(rtype, options)
    return wanted


def _check_option_values(rtype: str, options: dict[str, list[str]]) -> None:
    states = options.get("state-name")
    if states is not None:
        for state in states:
            if state not in INSTANCE_STATES:
                raise client_error(
                    "InvalidParameterValue", f"Value ({state}) for option state-name is invalid."
                )
    depth = options.get("version-depth")
    if depth is not None:
        if len(depth) != 1 or not depth[0].isdigit() or not 1 <= int(depth[0]) <= VERSION_DEPTH_MAX:
            raise client_error(
                "InvalidParameterValue",
                f"Value ({','.join(depth)}) for option version-depth is invalid. "
                f"Expecting one integer between 1 and {VERSION_DEPTH_MAX}.",
            )


def _image_ids(raw: Any) -> list[str]:
    ids = list(dict.fromkeys(str(i) for i in as_list(raw)))
    for image_id in ids:
        if not image_id.startswith("ami-"):
            raise MalformedAMIIdError([image_id])
    return ids


def _instance_references(backend: Any, images: set[str], options: dict[str, list[str]]) -> list[dict[str, str]]:
    states = set(options.get("state-name") or INSTANCE_STATES)
    out = []
    for instance in backend.all_instances():
        if instance.image_id in images and instance._state.name in states:
            arn = f"arn:aws:ec2:{backend.region_name}:{backend.account_id}:instance/{instance.id}"
            out.append({"ImageId": instance.image_id, "ResourceType": INSTANCE, "Arn": arn})
    return out


def _launch_template_references(
    backend: Any, images: set[str], options: dict[str, list[str]]
) -> list[dict[str, str]]:
    depth = int((options.get("version-depth") or [str(VERSION_DEPTH_DEFAULT)])[0])
    out = []
    for template in list(backend.launch_templates.values()):
        found = {v.image_id for v in template.versions[-depth:] if v.image_id in images}
        arn = f"arn:aws:ec2:{backend.region_name}:{backend.account_id}:launch-template/{template.id}"
        out.extend({"ImageId": image_id, "ResourceType": LAUNCH_TEMPLATE, "Arn": arn} for image_id in found)
    return out


def _ssm_parameter_references(account: str, region: str, images: set[str]) -> list[dict[str, str]]:
    from moto.ssm.models import ssm_backends
    from moto.ssm.utils import parameter_arn

    try:
        store = ssm_backends[account][region]._parameters
    except KeyError:
        return []
    out = []
    # Only parameters that exist (the ParameterDict loads AWS's public ones lazily by prefix; they
    # are not the caller's and never reached here, as nothing is looked up by name).
    for name, versions in list(store.items()):
        if not versions:
            continue
        latest = versions[-1]
        if latest.data_type == SSM_IMAGE_DATA_TYPE and latest.value in images:
            out.append(
                {"ImageId": latest.value, "ResourceType": SSM_PARAMETER, "Arn": parameter_arn(account, region, name)}
            )
    return out


def describe_image_references(self: Any) -> ActionResult:
    """API_DescribeImageReferences (see the module docstring)."""
    image_ids = _image_ids(self._get_param("ImageIds"))
    if not image_ids:
        raise client_error("MissingParameter", "The request must contain the parameter ImageId")
    if len(image_ids) > IMAGE_IDS_MAX:
        raise client_error(
            "InvalidParameterValue",
            f"Value ({len(image_ids)}) for parameter imageId is invalid. "
            f"You can specify at most {IMAGE_IDS_MAX} image IDs.",
        )
    include_all = bool(as_bool(self._get_param("IncludeAllResourceTypes"), False))
    resource_types = [r for r in as_list(self._get_param("ResourceTypes")) if isinstance(r, dict)]
    wanted = requested_types(include_all, resource_types)
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    self.error_on_dryrun()
    backend = self.ec2_backend
    images = set(image_ids)
    with LOCK:
        found: list[dict[str, str]] = []
        if INSTANCE in wanted:
            found += _instance_references(backend, images, wanted[INSTANCE])
        if LAUNCH_TEMPLATE in wanted:
            found += _launch_template_references(backend, images, wanted[LAUNCH_TEMPLATE])
        if SSM_PARAMETER in wanted:
            found += _ssm_parameter_references(backend.account_id, backend.region_name, images)
        # imagebuilder:ImageRecipe / imagebuilder:ContainerRecipe: moto has no Image Builder.
    order = {image_id: f"{n:02d}" for n, image_id in enumerate(image_ids)}
    page, token = paginate(
        found,
        key=lambda r: f"{order[r['ImageId']]}|{r['ResourceType']}|{r['Arn']}",
        max_results=max_results,
        next_token=next_token,
        operation="DescribeImageReferences",
        min_results=MAX_RESULTS_MIN,
        max_allowed=MAX_RESULTS_MAX,
        clamp_above=True,
    )
    result: dict[str, Any] = {"ImageReferences": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def install() -> None:
    from moto.ec2.responses import EC2Response

    EC2Response.describe_image_references = describe_image_references  # type: ignore[attr-defined]
