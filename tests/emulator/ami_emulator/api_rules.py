"""Parameter rules of the EC2 API reference that moto does not enforce: the ``api_rules`` gate.

Every EC2 request (service ``ec2``, an ``Action`` the botocore model knows) is checked here
before moto sees it (see ``gates``); an ``Action`` the model does not know is ``InvalidAction``. A request that breaks a rule is answered with EC2's error,
HTTP 400, in EC2's error XML (``faults.error_response``), and never reaches moto: nothing is
created. The reference is the botocore EC2 model (``botocore/data/ec2/2016-11-15/service-2.json``:
each member's documentation text, ``required``, ``enum``, ``min``/``max``/``pattern``) and the
AWS pages cited next to each rule. What is enforced, and what not, is listed in README.md
("API rules enforced").

The flat query parameters are mapped onto the operation's input shape the way botocore's
``EC2Serializer`` writes them: a member is named by its ``queryName``, else its
``locationName`` with the first letter upper-cased, else the member name; a list member is
``Name.N`` (1-based) whatever the list shape says; a structure member is ``Parent.Member``. So
``BlockDeviceMapping.1.Ebs.VolumeType`` is RegisterImage's ``BlockDeviceMappings[0].Ebs
.VolumeType`` and ``TagSpecification.1.Tag.2.Key`` the second tag of the first tag
specification. Parameter names the model does not know are left alone (moto ignores them too).

Rule groups, in the order they are checked:

1. ``TagSpecifications`` (any operation with a ``TagSpecificationList`` member): the resource
   types each operation documents (``TAGGABLE_RESOURCE_TYPES``), one specification per type, at
   least one tag, and the tag rules below.
2. Tags of CreateTags / DeleteTags (``Tag.N``) and their ``ResourceId.N`` counts.
3. The generic walk over every given parameter: ``required`` members (``MissingParameter``),
   enum values (``InvalidParameterValue``), integers; for the operations the project calls
   (``PROJECT_OPERATIONS``) also the model's ``min``/``max``/``pattern`` and the per-parameter
   rules of ``PARAMETER_RULES`` (AMI names, ``ClientToken``, documented ``MaxResults`` ranges).
4. ``Filter.N.Name`` of the Describe operations against each operation's documented filter
   names (``filter_names``: ``The filter 'x' is invalid``, or ``EmulatorFilterNotImplemented``
   for a documented name the emulator cannot apply).

Rules kept elsewhere (one place each): EnableImageDeprecation ``DeprecateAt`` limits and AMI
name uniqueness (``images``), MaxResults ranges the reference does not state (the pagination of
``images``, ``snapshots``, ``instances``, ``launch_templates``).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any, Callable

from werkzeug.wrappers import Response

from . import filter_names, gates
from .faults import error_response

# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

# Resource types each operation's TagSpecifications accepts, read from the member's
# documentation in the botocore model (<Operation> -> TagSpecifications). Operations not listed
# only get the enum check of ResourceType.
TAGGABLE_RESOURCE_TYPES: dict[str, frozenset[str]] = {
    # RegisterImage.TagSpecifications: "To tag the AMI, the value for ResourceType must be image.
    # If you specify another value for ResourceType, the request fails."
    "RegisterImage": frozenset({"image"}),
    # CopyImage.TagSpecifications: "To tag the new AMI, the value for ResourceType must be image.
    # To tag the new snapshots, the value for ResourceType must be snapshot. [...] If you specify
    # other values for ResourceType, the request fails."
    "CopyImage": frozenset({"image", "snapshot"}),
    # CreateImage.TagSpecifications: the same two types ("image", "snapshot"), "If you specify
    # other values for ResourceType, the request fails."
    "CreateImage": frozenset({"image", "snapshot"}),
    # ImportSnapshot.TagSpecifications: "The tags to apply to the import snapshot task during
    # creation." (ResourceType enum value import-snapshot-task).
    "ImportSnapshot": frozenset({"import-snapshot-task"}),
    # ImportImage.TagSpecifications: "The tags to apply to the import image task during creation."
    "ImportImage": frozenset({"import-image-task"}),
    # CreateSnapshot.TagSpecifications: "The tags to apply to the snapshot during creation."
    "CreateSnapshot": frozenset({"snapshot"}),
    # CreateSnapshots.TagSpecifications: "Tags to apply to every snapshot specified by the instance."
    "CreateSnapshots": frozenset({"snapshot"}),
    # CopySnapshot.TagSpecifications: "The tags to apply to the new snapshot."
    "CopySnapshot": frozenset({"snapshot"}),
    # CreateVolume.TagSpecifications: "The tags to apply to the volume during creation."
    "CreateVolume": frozenset({"volume"}),
    # RunInstances.TagSpecifications: "You can specify tags for the following resources only:
    # Instances, Volumes, Spot Instance requests, Network interfaces".
    "RunInstances": frozenset({"instance", "volume", "spot-instances-request", "network-interface"}),
    # CreateLaunchTemplate.TagSpecifications: "To tag the launch template, the resource type must
    # be launch-template."
    "CreateLaunchTemplate": frozenset({"launch-template"}),
}

# The operations this project calls (README "API rules enforced"): the model's min/max/pattern
# constraints and PARAMETER_RULES apply to these.
PROJECT_OPERATIONS = frozenset(
    {
        "ImportSnapshot",
        "DescribeImportSnapshotTasks",
        "RegisterImage",
        "DescribeImages",
        "CreateTags",
        "DeleteTags",
        "DescribeTags",
        "CopyImage",
        "CreateImage",
        "ModifyImageAttribute",
        "ModifySnapshotAttribute",
        "DescribeImageAttribute",
        "DescribeSnapshotAttribute",
        "EnableImageDeprecation",
        "DisableImageDeprecation",
        "DeregisterImage",
        "DeleteSnapshot",
        "DescribeSnapshots",
        "DescribeInstances",
        "DescribeLaunchTemplates",
        "DescribeLaunchTemplateVersions",
        "GetEbsEncryptionByDefault",
        "GetImageBlockPublicAccessState",
        "GetSnapshotBlockPublicAccessState",
    }
)

# Tag.Key / Tag.Value in the model: "Tag keys are case-sensitive and accept a maximum of 127
# Unicode characters. May not begin with aws:." / "Tag values are case-sensitive and accept a
# maximum of 256 Unicode characters." (also https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Tag.html)
TAG_KEY_MAX = 127
TAG_VALUE_MAX = 256
RESERVED_TAG_PREFIX = "aws:"
# CreateTags documentation: "Each resource can have a maximum of 50 tags."
MAX_TAGS_PER_RESOURCE = 50
# CreateTags.Resources / DeleteTags.Resources: "Constraints: Up to 1000 resource IDs.";
# DeleteTags.Tags: "Constraints: Up to 1000 tags."
MAX_TAGGING_RESOURCES = 1000
MAX_DELETE_TAGS = 1000

# RegisterImage.Name / CreateImage.Name: "Constraints: 3-128 alphanumeric characters, parentheses
# (()), square brackets ([]), spaces ( ), periods (.), slashes (/), dashes (-), single quotes
# ('), at-signs (@), or underscores(_)"; CopyImage.Name has min 3 / max 128 in the model and the
# same rule on AWS (API_CopyImage.html refers to the AMI name rules).
AMI_NAME_RE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
AMI_NAME_MALFORMED = (
    "AMI names must be between 3 and 128 characters long, and may contain letters, numbers, "
    "'(', ')', '.', '-', '/' and '_'"
)
AMI_NAME_OPERATIONS = ("RegisterImage", "CopyImage", "CreateImage")

# "A client token is a unique, case-sensitive string of up to 64 ASCII characters."
# (Ensuring idempotency in Amazon EC2 API requests, https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html,
# which CopyImage.ClientToken refers to; the model's shape says max 128, the page 64).
CLIENT_TOKEN_MAX = 64

# MaxResults ranges stated in the documentation text (not in the model's metadata).
DOCUMENTED_MAX_RESULTS: dict[str, tuple[int, int]] = {
    # DescribeTags.MaxResults: "This value can be between 5 and 1000."
    "DescribeTags": (5, 1000),
    # DescribeLaunchTemplateVersions.MaxResults: "This value can be between 1 and 200."
    "DescribeLaunchTemplateVersions": (1, 200),
    # DescribeLaunchTemplates.MaxResults: "This value can be between 1 and 200." (also min/max
    # in the model)
    "DescribeLaunchTemplates": (1, 200),
}

# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


class Refused(Exception):
    """A rule refuses the request: ``code`` and ``message`` are what EC2 answers (HTTP 400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def invalid_value(value: Any, parameter: str, detail: str = "") -> Refused:
    """EC2's ``Value (x) for parameter y is invalid.`` form (seen for enums, e.g. images.py, and
    for tag keys: "Value ( aws:autoscaling:groupName ) for parameter key is invalid. Tag keys
    starting with 'aws:' are reserved for internal use", AndrewFarley/AWS-Automated-Daily-Instance-AMI-Snapshots#7)."""
    text = f"Value ({value}) for parameter {parameter} is invalid."
    return Refused("InvalidParameterValue", f"{text} {detail}" if detail else text)


def check_ami_name(name: Any) -> None:
    """InvalidAMIName.Malformed for a name outside the documented rule (AWS's text)."""
    if name is None or not AMI_NAME_RE.match(str(name)):
        raise Refused("InvalidAMIName.Malformed", AMI_NAME_MALFORMED)


def _max_results_range(value: int, low: int, high: int) -> None:
    # AWS's text below the minimum: "Value ( 1 ) for parameter maxResults is invalid. Expecting
    # a value greater than 5." (aws/aws-sdk-ruby#2575). Guess: "less than" above the maximum.
    if value < low:
        raise Refused(
            "InvalidParameterValue",
            f"Value ( {value} ) for parameter maxResults is invalid. Expecting a value greater than {low}.",
        )
    if value > high:
        raise Refused(
            "InvalidParameterValue",
            f"Value ( {value} ) for parameter maxResults is invalid. Expecting a value less than {high}.",
        )


def _as_int(value: str, parameter: str) -> int:
    try:
        return int(value.strip())
    except ValueError as exc:
        # Guess: EC2's text for a non-integer is not documented.
        raise invalid_value(value, parameter, "Expecting an integer.") from exc


def _ami_name_rule(value: str, parameter: str) -> None:
    check_ami_name(value)


def _client_token_rule(value: str, parameter: str) -> None:
    if len(value) > CLIENT_TOKEN_MAX or not value.isascii():
        # Guess: the error code/text are not documented.
        raise invalid_value(
            value,
            parameter,
            f"A client token is a unique, case-sensitive string of up to {CLIENT_TOKEN_MAX} ASCII characters.",
        )


def _max_results_rule(low: int, high: int) -> Callable[[str, str], None]:
    def rule(value: str, parameter: str) -> None:
        _max_results_range(_as_int(value, parameter), low, high)

    return rule


# (operation, parameter path with list indexes as N) -> rule replacing the model's generic
# min/max/pattern check of that parameter.
PARAMETER_RULES: dict[tuple[str, str], Callable[[str, str], None]] = {
    **{(op, "Name"): _ami_name_rule for op in AMI_NAME_OPERATIONS},
    ("CopyImage", "ClientToken"): _client_token_rule,
    **{(op, "MaxResults"): _max_results_rule(*bounds) for op, bounds in DOCUMENTED_MAX_RESULTS.items()},
}

# ---------------------------------------------------------------------------------------------
# The model, mapped the way EC2's query serializer names parameters
# ---------------------------------------------------------------------------------------------

_CACHE_LOCK = threading.Lock()
# structure shape name -> {serialized name: (member name, member shape, display name)}
_MEMBERS: dict[str, dict[str, tuple[str, Any, str]]] = {}


class _Operation:
    """What the rules need of one operation's input shape (computed once)."""

    def __init__(self, action: str, shape: Any) -> None:
        self.shape = shape
        self.tag_member: str | None = None
        self.required: tuple[str, ...] = ()
        self.nested_required = False
        self.tagging_call = action in ("CreateTags", "DeleteTags")
        self.tree_prefixes: tuple[str, ...] = ("Tag.", "ResourceId.") if self.tagging_call else ()
        if shape is None:
            return
        for wire, (_, member_shape, _) in _members(shape).items():
            if member_shape.name == "TagSpecificationList":
                self.tag_member = wire
                self.tree_prefixes += (wire + ".",)
        self.required = tuple(serialized_name(m, shape.members[m]) for m in shape.required_members)
        self.nested_required = _has_nested_required(shape)

    def needs_tree(self, params: dict[str, list[str]]) -> bool:
        """Whether the request has TagSpecifications or is a tagging call (nested checks)."""
        if self.tagging_call:
            return True
        if self.tag_member is None:
            return False
        prefix = self.tag_member + "."
        return any(key.startswith(prefix) for key in params)


# operation name -> _Operation
_OPERATIONS: dict[str, _Operation] = {}


def _model() -> Any:
    from moto.core.utils import get_service_model

    return get_service_model("ec2")


def serialized_name(member: str, shape: Any) -> str:
    """The query name of a member (botocore.serialize.EC2Serializer._get_serialized_name)."""
    serialization = shape.serialization
    if "queryName" in serialization:
        return str(serialization["queryName"])
    if "name" in serialization:
        name = str(serialization["name"])
        return name[0].upper() + name[1:]
    return member


def _display_name(member: str, shape: Any) -> str:
    """The name EC2 uses for a parameter in its messages: the wire (locationName) spelling,
    e.g. ``maxResults``, ``volumeType``, ``architecture``."""
    name = str(shape.serialization.get("name") or member)
    return name[0].lower() + name[1:]


def _members(shape: Any) -> dict[str, tuple[str, Any, str]]:
    found = _MEMBERS.get(shape.name)
    if found is None:
        found = {
            serialized_name(member, member_shape): (member, member_shape, _display_name(member, member_shape))
            for member, member_shape in shape.members.items()
        }
        with _CACHE_LOCK:
            _MEMBERS[shape.name] = found
    return found


def _operation(action: str) -> _Operation:
    known = _OPERATIONS.get(action)
    if known is not None:
        return known
    from botocore.model import OperationNotFoundError

    try:
        shape = _model().operation_model(action).input_shape
    except OperationNotFoundError:
        shape = None
    operation = _Operation(action, shape)
    with _CACHE_LOCK:
        _OPERATIONS[action] = operation
    return operation


def _tree(params: dict[str, list[str]], prefixes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``{"A.1.B": ["x"]}`` -> ``{"A": {"1": {"B": "x"}}}`` (first value of each key; only keys
    starting with one of ``prefixes`` when given). A key that is both a value and a prefix keeps
    its value under ``""``."""
    root: dict[str, Any] = {}
    for key, values in params.items():
        if not values or key in ("Action", "Version"):
            continue
        if prefixes is not None and not key.startswith(prefixes):
            continue
        parts = key.split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else {"": child}
                node[part] = child
            node = child
        last = parts[-1]
        existing = node.get(last)
        if isinstance(existing, dict):
            existing[""] = values[0]
        else:
            node[last] = values[0]
    return root


def _leaf(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("")
    return value if isinstance(value, str) else None


def _items(node: Any) -> list[Any]:
    """The elements of a ``Name.N`` list node, in index order."""
    if not isinstance(node, dict):
        return []
    return [node[k] for k in sorted((k for k in node if k.isdigit()), key=int)]



# ---------------------------------------------------------------------------------------------
# Rule groups
# ---------------------------------------------------------------------------------------------


def _tags(node: Any) -> list[tuple[str | None, str | None]]:
    """``Tag.N.Key`` / ``Tag.N.Value`` pairs (None where a part is absent)."""
    pairs = []
    for item in _items(node):
        if isinstance(item, dict):
            pairs.append((_leaf(item.get("Key")), _leaf(item.get("Value"))))
    return pairs


def check_tags(tags: list[tuple[str | None, str | None]], *, unique_keys: bool) -> None:
    """The Tag rules of the model (Tag.Key, Tag.Value) and CreateTags' 50-tag limit."""
    seen: set[str] = set()
    for key, value in tags:
        if not key:
            # AWS's text (aws/aws-cli#3283): "Value ( '' ) for parameter Tag key is invalid. Tag
            # key cannot be null or empty."
            raise Refused(
                "InvalidParameterValue",
                "Value (  ) for parameter Tag key is invalid. Tag key cannot be null or empty.",
            )
        if key.startswith(RESERVED_TAG_PREFIX):
            # AWS's text (AndrewFarley/AWS-Automated-Daily-Instance-AMI-Snapshots#7, CreateTags).
            raise Refused(
                "InvalidParameterValue",
                f"Value ( {key} ) for parameter key is invalid. Tag keys starting with 'aws:' are "
                "reserved for internal use",
            )
        if len(key) > TAG_KEY_MAX:
            # Guess: the text for an over-long key is not documented.
            raise Refused(
                "InvalidParameterValue",
                f"Value ( {key} ) for parameter key is invalid. Tag keys accept a maximum of "
                f"{TAG_KEY_MAX} Unicode characters.",
            )
        if value is not None and len(value) > TAG_VALUE_MAX:
            raise Refused(
                "InvalidParameterValue",
                f"Value ( {value} ) for parameter value is invalid. Tag values accept a maximum of "
                f"{TAG_VALUE_MAX} Unicode characters.",
            )
        if unique_keys and key in seen:
            # AWS's text (cloud-custodian/cloud-custodian#3792, CreateSnapshot TagSpecifications).
            raise Refused("InvalidParameterValue", f"Duplicate tag key '{key}' specified.")
        seen.add(key)
    if len(seen if unique_keys else tags) > MAX_TAGS_PER_RESOURCE:
        # moto's text for EC2's TagLimitExceeded.
        raise Refused("TagLimitExceeded", "The maximum number of Tags for a resource has been reached.")


_RESOURCE_TYPES: list[frozenset[str]] = []


def _resource_types() -> frozenset[str]:
    """The ResourceType enum of the model."""
    if not _RESOURCE_TYPES:
        _RESOURCE_TYPES.append(frozenset(_model().shape_for("ResourceType").enum))
    return _RESOURCE_TYPES[0]


def check_tag_specifications(action: str, node: Any) -> None:
    """TagSpecification.N of ``action`` (see TAGGABLE_RESOURCE_TYPES)."""
    allowed = TAGGABLE_RESOURCE_TYPES.get(action)
    resource_types = _resource_types()
    seen: set[str] = set()
    for spec in _items(node):
        if not isinstance(spec, dict):
            continue
        resource_type = _leaf(spec.get("ResourceType"))
        if not resource_type:
            # AWS's text and code (yegor256/rultor#1991).
            raise Refused("InvalidParameterValue", "Tag specification resource type must have a value")
        if resource_type not in resource_types:
            raise invalid_value(resource_type, "resourceType")
        if allowed is not None and resource_type not in allowed:
            if action == "CreateLaunchTemplate":
                # AWS's text (aws-cloudformation/cloudformation-coverage-roadmap#979).
                raise Refused(
                    "InvalidParameterValue",
                    "The value for the ResourceType member of the TagSpecification request parameter "
                    "must be 'launch-template'. Verify the ResourceType and try again.",
                )
            # AWS's text (aws/aws-cli#2865, boto/boto3#1806; aws-facts.md for RegisterImage).
            raise Refused(
                "InvalidParameterValue",
                f"'{resource_type}' is not a valid taggable resource type for this operation.",
            )
        if resource_type in seen:
            # AWS's text (skypilot-org/skypilot#10627, RunInstances).
            raise Refused(
                "InvalidParameterValue",
                "The same resource type may not be specified more than once in tag specifications",
            )
        seen.add(resource_type)
        tags = _tags(spec.get("Tag"))
        if not tags:
            # AWS's code and text (hashicorp/packer-plugin-amazon#141).
            raise Refused("InvalidTagKey.Malformed", "Tag specification must have at least one tag")
        check_tags(tags, unique_keys=True)


def _check_tagging_call(action: str, tree: dict[str, Any]) -> None:
    """CreateTags / DeleteTags: Tag.N rules and the ResourceId.N / Tag.N counts."""
    resources = _items(tree.get("ResourceId"))
    if len(resources) > MAX_TAGGING_RESOURCES:
        # Guess: the code/text beyond the documented 1000 are not documented.
        raise Refused(
            "InvalidParameterValue",
            f"Up to {MAX_TAGGING_RESOURCES} resource IDs can be given; got {len(resources)}.",
        )
    tags = _tags(tree.get("Tag"))
    if action == "CreateTags":
        if not tags:
            # AWS's text (dask/dask-ec2#90, puphpet/puphpet#884).
            raise Refused("InvalidParameterValue", "You must specify one or more tags to create")
        check_tags(tags, unique_keys=False)
    elif len(tags) > MAX_DELETE_TAGS:
        # Guess, as above.
        raise Refused(
            "InvalidParameterValue", f"Up to {MAX_DELETE_TAGS} tags can be given; got {len(tags)}."
        )


class _Leaf:
    """What the generic rules check for one parameter name of one operation (cached)."""

    __slots__ = ("display", "enum", "integer", "low", "high", "pattern", "rule")

    def __init__(self, action: str, normalized: str, shape: Any, display: str) -> None:
        strict = action in PROJECT_OPERATIONS
        self.display = display
        self.enum = frozenset(shape.enum) if shape.type_name == "string" and shape.enum else None
        self.integer = shape.type_name in ("integer", "long")
        metadata = shape.metadata if strict else {}
        self.low = metadata.get("min")
        self.high = metadata.get("max")
        pattern = metadata.get("pattern")
        self.pattern = re.compile(pattern) if pattern and shape.type_name == "string" else None
        self.rule = PARAMETER_RULES.get((action, normalized)) if strict else None

    def check(self, value: str) -> None:
        if self.enum is not None and value not in self.enum:
            raise invalid_value(value, self.display)
        if self.rule is not None:
            self.rule(value, self.display)
            return
        if self.integer:
            number = _as_int(value, self.display)
            low, high = self.low, self.high
            if self.display == "maxResults" and low is not None and high is not None:
                _max_results_range(number, int(low), int(high))
            elif (low is not None and number < low) or (high is not None and number > high):
                raise invalid_value(value, self.display, f"Expecting a value between {low} and {high}.")
            return
        # Guess: the texts of these model constraints are not documented.
        if self.low is not None and len(value) < self.low:
            raise invalid_value(value, self.display, f"Length must be at least {self.low} characters.")
        if self.high is not None and len(value) > self.high:
            raise invalid_value(value, self.display, f"Length exceeds maximum of {self.high} characters.")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise invalid_value(value, self.display, f"It must match the pattern {self.pattern.pattern}.")


# (operation, parameter name as sent) -> its _Leaf, or None for a name the model does not map
# to a checked scalar. Bounded: cleared when it grows past _LEAF_CACHE_MAX entries.
_LEAVES: dict[tuple[str, str], _Leaf | None] = {}
_LEAF_CACHE_MAX = 50_000


def _resolve_leaf(action: str, shape: Any, key: str) -> _Leaf | None:
    """Walk ``key`` (``BlockDeviceMapping.1.Ebs.VolumeType``) down the input shape."""
    display = ""
    normalized: list[str] = []
    for part in key.split("."):
        if shape.type_name == "list":
            if not part.isdigit():
                return None
            shape = shape.member
            normalized.append("N")
            # A list of structures continues with the member names; a scalar list ends here.
            continue
        if shape.type_name != "structure":
            return None
        entry = _members(shape).get(part)
        if entry is None:
            return None
        shape, display = entry[1], entry[2]
        normalized.append(part)
    if shape.type_name in ("structure", "list", "map"):
        return None
    return _Leaf(action, ".".join(normalized), shape, display)


def _leaf_for(action: str, shape: Any, key: str) -> _Leaf | None:
    cache_key = (action, key)
    try:
        return _LEAVES[cache_key]
    except KeyError:
        pass
    leaf = _resolve_leaf(action, shape, key)
    with _CACHE_LOCK:
        if len(_LEAVES) >= _LEAF_CACHE_MAX:
            _LEAVES.clear()
        _LEAVES[cache_key] = leaf
    return leaf


def _check_required(shape: Any, node: dict[str, Any], prefix: str) -> None:
    """The model's ``required`` members of ``shape`` and of every structure given below it."""
    members = _members(shape)
    for required in shape.required_members:
        wire = serialized_name(required, shape.members[required])
        if wire not in node:
            # moto's text for EC2's MissingParameter ("The request must contain the parameter X").
            raise Refused("MissingParameter", f"The request must contain the parameter {prefix}{wire}")
    for wire, value in node.items():
        entry = members.get(wire)
        if entry is None or not isinstance(value, dict):
            continue
        member = entry[1]
        if member.type_name == "structure":
            _check_required(member, value, f"{prefix}{wire}.")
        elif member.type_name == "list" and member.member.type_name == "structure":
            for index, item in value.items():
                if index.isdigit() and isinstance(item, dict):
                    _check_required(member.member, item, f"{prefix}{wire}.{index}.")


def _has_nested_required(shape: Any, seen: frozenset[str] = frozenset()) -> bool:
    if shape.type_name == "list":
        return _has_nested_required(shape.member, seen)
    if shape.type_name != "structure" or shape.name in seen:
        return False
    seen = seen | {shape.name}
    for member in shape.members.values():
        target = member.member if member.type_name == "list" else member
        if target.type_name == "structure" and (target.required_members or _has_nested_required(target, seen)):
            return True
    return False


def check(action: str, params: dict[str, list[str]]) -> None:
    """Raise ``Refused`` if the EC2 request ``action`` with query ``params`` breaks a rule."""
    operation = _operation(action)
    shape = operation.shape
    if shape is None:
        return
    if operation.needs_tree(params):
        tree = _tree(params, operation.tree_prefixes)
        if operation.tag_member is not None and operation.tag_member in tree:
            check_tag_specifications(action, tree[operation.tag_member])
        if operation.tagging_call:
            _check_tagging_call(action, tree)
    if operation.nested_required:
        _check_required(shape, _tree(params), "")
    else:
        for wire in operation.required:
            if wire not in params and not any(key.startswith(wire + ".") for key in params):
                raise Refused("MissingParameter", f"The request must contain the parameter {wire}")
    for key, values in params.items():
        if not values:
            continue
        leaf = _leaf_for(action, shape, key)
        if leaf is not None:
            leaf.check(values[0])
    refused = filter_names.check(action, params)
    if refused is not None:
        raise Refused(*refused)


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _operation_names() -> frozenset[str]:
    return frozenset(_model().operation_names)


def api_rules_gate(ctx: gates.RequestContext) -> Response | None:
    """The ``api_rules`` gate: EC2 requests that break a rule get EC2's error instead of moto.

    An ``Action`` the EC2 model does not name is EC2's ``InvalidAction`` (HTTP 400; "The action
    X is not valid for this web service.", the text EC2 answers, e.g. boto/boto#1282; the code is
    in the API reference's common client errors); moto failed on it with a 500."""
    if ctx.service != "ec2" or not ctx.action:
        return None
    if ctx.action not in _operation_names():
        return error_response("ec2", ctx.method, 400, "InvalidAction", f"The action {ctx.action} is not valid for this web service.")
    try:
        check(ctx.action, ctx.params())
    except Refused as refusal:
        return error_response("ec2", ctx.method, 400, refusal.code, refusal.message)
    return None


def install() -> None:
    """Register the gate and load the EC2 model now (not at the first request)."""
    _model()
    _operation("RegisterImage")
    gates.register("api_rules", api_rules_gate)
