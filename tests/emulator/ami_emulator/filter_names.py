"""Filter names of the EC2 Describe operations, checked as AWS checks them (part of the
``api_rules`` gate), and an honest answer where the emulator cannot apply a documented filter.

Why: AWS refuses a filter name the operation does not document, always, whatever exists.
moto 5.2.5 does not: DescribeSnapshots with ``state`` (DescribeImages' name; the snapshot filter
is ``status``) answered HTTP 500 ``FilterNotImplementedError`` only when a snapshot existed and
an empty list otherwise, and other handlers ignore unknown names without a word (DescribeTags,
DescribeRegions). Here a wrong name fails every request that carries it, deterministically.

Two rules, one module:

1. **Unknown name → AWS's refusal.** Every ``Filter.N.Name`` (``Filters.N.Name`` where the model
   gives the member no ``locationName``, e.g. DescribeImportSnapshotTasks) of an operation whose
   names are known (``filter_names``) is looked up before moto sees the request; a name the
   operation does not document gets HTTP 400 ``InvalidParameterValue`` ``The filter '<name>' is
   invalid`` (``INVALID_FILTER``). Names are case-sensitive (the model's ``Filter.Name``: "Filter
   names are case-sensitive"). ``tag:<key>`` is a pattern: ``tag:`` followed by a non-empty key.
2. **Documented but not applied here → a clear emulator error, never an AWS-looking one.** A
   name the operation documents that the emulator does not apply gets HTTP 400
   ``NOT_IMPLEMENTED_CODE`` naming the filter and the operation (``not_implemented``):
   * at the gate, whatever resources exist, for the operations whose applied names are
     registered with ``serve`` (the ones the project calls: DescribeImages, DescribeSnapshots,
     DescribeImportSnapshotTasks, DescribeInstances, DescribeLaunchTemplates,
     DescribeLaunchTemplateVersions, DescribeTags, and DescribeRegions, whose filters moto
     ignores without a word);
   * for every other EC2 operation, when its handler raises moto's ``FilterNotImplementedError``
     or its "Filter dicts have not been implemented" ``NotImplementedError`` (a 500 in plain
     moto, and only once a resource is there to filter): ``install`` wraps
     ``EC2Response.call_action``.
   Not retryable (a 4xx that is not a throttling code), so an SDK fails at once.

Where the names come from (``filter_names(action)``):

* botocore's EC2 model (``botocore/data/ec2/2016-11-15/service-2.json``), the documentation of
  the operation's ``FilterList`` member: its top-level ``<li>`` items each start with the filter
  name (``<code>status</code> - The status of the snapshot ...``). An item ``tag:<key>`` (or a
  bare ``tag`` described as "The key/value combination of a tag", as in DescribeVpcs) is the tag
  pattern. An operation whose documentation lists no names ("The filters.") or whose list does
  not read cleanly is not checked (``None``), except for the entries of ``EXPLICIT``.
* ``EXPLICIT``: operations whose names are given in prose or not at all (each entry cites why).

AWS's code and text for an unknown name (HTTP 400, ``InvalidParameterValue``):
"The filter 'public-ip' is invalid" (DescribeInstances, boto/boto3#1299); "The filter 'tag:Name'
is invalid" (DescribeInstanceStatus, which documents no tag filter: aws/aws-cli#7225 — so the tag
pattern is accepted only where documented); "The filter 'bad-filter' is invalid" (DescribeFpgaImages,
AWS's own aws/aws-fpga ``hdk/docs/describe_fpga_images.md``). No trailing period in any of them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Callable, Iterable

INVALID_CODE = "InvalidParameterValue"
INVALID_FILTER = "The filter '{name}' is invalid"

# Not an AWS code on purpose: a test that hits it learns the emulator lacks the filter, not that
# AWS would refuse the request.
NOT_IMPLEMENTED_CODE = "EmulatorFilterNotImplemented"
NOT_IMPLEMENTED = (
    "The filter '{name}' of {action} is documented by AWS but not implemented by the ami-pipeline "
    "emulator (moto 5.2.5 + tests/emulator/ami_emulator); AWS would apply it. Use another filter "
    "or implement this one in the emulator."
)

TAG_PATTERN = "tag:<key>"
TAG_PREFIX = "tag:"


@dataclass(frozen=True)
class FilterNames:
    """The filter names one operation accepts: ``names`` exactly, plus ``tag:<key>`` for any
    non-empty key when ``tag_pattern``; ``source`` says where the list comes from."""

    names: frozenset[str]
    tag_pattern: bool
    source: str

    def allows(self, name: str) -> bool:
        if name in self.names:
            return True
        return self.tag_pattern and name.startswith(TAG_PREFIX) and len(name) > len(TAG_PREFIX)

    def documented(self) -> list[str]:
        """The names as the documentation writes them (``tag:<key>`` for the pattern), sorted."""
        return sorted(self.names | ({TAG_PATTERN} if self.tag_pattern else set()))


# Operations whose documentation gives the names in prose, or none at all.
EXPLICIT: dict[str, FilterNames] = {
    # The model's DescribeImportSnapshotTasks.Filters says only "The filters." and the API
    # reference (API_DescribeImportSnapshotTasks.html, "Filters.N") lists no names. Guess, kept
    # small so a product bug still shows: the tag filters every EC2 resource type with tags
    # documents (an import-snapshot-task carries tags: ImportSnapshot TagSpecifications,
    # ResourceType ``import-snapshot-task``), and ``task-state``, the name the sibling VM Import
    # operation documents (DescribeImportImageTasks.Filters: "Filter tasks using the task-state
    # filter and one of the following values: active, completed, deleting, or deleted.").
    "DescribeImportSnapshotTasks": FilterNames(
        frozenset({"tag-key", "task-state"}),
        True,
        "guess: the model lists no names (tag:<key>, tag-key as for tagged resources; task-state as DescribeImportImageTasks)",
    ),
    # "Filter tasks using the task-state filter and one of the following values: active,
    # completed, deleting, or deleted." (model, both operations)
    "DescribeImportImageTasks": FilterNames(frozenset({"task-state"}), False, "model (prose)"),
    "DescribeExportImageTasks": FilterNames(frozenset({"task-state"}), False, "model (prose)"),
}

# action -> the names the emulator applies (``tag:<key>`` for the pattern), see ``serve``.
_SERVED: dict[str, frozenset[str]] = {}

# The names moto's own handlers apply, for the operations the project calls that no extension
# module takes over. Each was read in moto 5.2.5:
MOTO_SERVED: dict[str, frozenset[str]] = {
    # moto/ec2/models/elastic_block_store.py Snapshot.get_filter_value, then
    # TaggedEC2Resource.get_filter_value (tags, else the attribute: ``progress`` is a property).
    # Not applied: owner-alias, transfer-type.
    "DescribeSnapshots": frozenset(
        {
            "description",
            "snapshot-id",
            "start-time",
            "volume-id",
            "volume-size",
            "encrypted",
            "status",
            "owner-id",
            "storage-tier",
            "progress",
            TAG_PATTERN,
            "tag-key",
        }
    ),
    # moto/ec2/models/launch_templates.py LaunchTemplate.get_filter_value (launch-template-name),
    # then tags, else the attribute (``create_time``).
    "DescribeLaunchTemplates": frozenset({"launch-template-name", "create-time", TAG_PATTERN, "tag-key"}),
    # moto/ec2/models/tags.py TagBackend.describe_tags reads only VALID_TAG_FILTERS and skips any
    # other name; ``tag:<key>`` ("The key/value combination of the tag") is not applied.
    "DescribeTags": frozenset({"key", "resource-id", "resource-type", "value"}),
    # moto's describe_regions reads only RegionName and never looks at Filters.
    "DescribeRegions": frozenset(),
}


def serve(action: str, names: Iterable[str]) -> None:
    """Register the filter names the emulator applies for ``action`` (``tag:<key>`` for the tag
    pattern). From then on a documented name outside them is answered with
    ``NOT_IMPLEMENTED_CODE`` at the gate, before the handler runs. A name ``action`` does not
    document is a bug here and fails the server's start."""
    applied = frozenset(names)
    documented = filter_names(action)
    if documented is None:
        raise ValueError(f"{action}: its filter names are not known, nothing to serve")
    stray = sorted(n for n in applied if n not in documented.documented())
    if stray:
        raise ValueError(f"{action}: {stray} are not documented filter names ({documented.source})")
    with _LOCK:
        _SERVED[action] = applied


# ---------------------------------------------------------------------------------------------
# Reading the model
# ---------------------------------------------------------------------------------------------

# The leading name of one list item: "status - The status", "group-id: The group",
# "attachment.resource-id- The id", or the bare name ("state").
_LEAD = re.compile(r"^(\S+?)(?:\s+[-\u2013\u2014]\s|[-\u2013\u2014]\s|:\s|\s*$)")
_NAME = re.compile(r"^(?:tag:<key>|[a-z][a-z0-9]*(?:[-.:_][a-z0-9]+)*)$", re.IGNORECASE)


class _TopLevelItems(HTMLParser):
    """The text of each top-level ``<li>`` of an HTML documentation string (nested lists, such
    as the severity levels under DescribeImages' scan-result filter, stay inside their item)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.items: list[str] = []
        self._current: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "ul":
            self.depth += 1
        elif tag == "li" and self.depth == 1:
            self._current = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "ul":
            self.depth -= 1
        elif tag == "li" and self.depth == 1 and self._current is not None:
            self.items.append(" ".join("".join(self._current).split()))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current.append(data)


def parse_documentation(html: str | None) -> FilterNames | None:
    """The filter names an operation's ``Filters`` documentation lists, or None when it lists
    none or an item does not start with a well-formed name (then the operation is not checked)."""
    parser = _TopLevelItems()
    parser.feed(html or "")
    parser.close()
    names: set[str] = set()
    tag_pattern = False
    for item in parser.items:
        match = _LEAD.match(item)
        name = match.group(1) if match else ""
        if not _NAME.match(name):
            return None
        if name == TAG_PATTERN or (name == "tag" and "key/value combination" in item):
            # DescribeVpcs & co. write the pattern as "tag - The key/value combination of a tag
            # assigned to the resource. Use the tag key in the filter name ...".
            tag_pattern = True
        else:
            names.add(name)
    if not names and not tag_pattern:
        return None
    return FilterNames(frozenset(names), tag_pattern, "model")


_LOCK = threading.Lock()
# action -> (wire name of the Filters member, its names) or None (not checked)
_KNOWN: dict[str, tuple[str, FilterNames] | None] = {}


def _model() -> Any:
    from moto.core.utils import get_service_model

    return get_service_model("ec2")


def _wire_name(member: str, shape: Any) -> str:
    """The query name of a member (botocore.serialize.EC2Serializer._get_serialized_name; the
    same rule as ``api_rules.serialized_name``)."""
    serialization = shape.serialization
    if "queryName" in serialization:
        return str(serialization["queryName"])
    if "name" in serialization:
        name = str(serialization["name"])
        return name[0].upper() + name[1:]
    return member


def _lookup(action: str) -> tuple[str, FilterNames] | None:
    from botocore.model import OperationNotFoundError

    try:
        shape = _model().operation_model(action).input_shape
    except OperationNotFoundError:
        return None
    if shape is None:
        return None
    for member, member_shape in shape.members.items():
        if member_shape.name != "FilterList":
            continue
        names = EXPLICIT.get(action) or parse_documentation(member_shape.documentation)
        if names is None:
            return None
        return _wire_name(member, member_shape), names
    return None


def filter_member(action: str) -> tuple[str, FilterNames] | None:
    """``(wire name of the Filters member, accepted names)`` of an EC2 operation, or None when
    its names are not known (then its filters are not checked). Cached."""
    try:
        return _KNOWN[action]
    except KeyError:
        pass
    found = _lookup(action)
    with _LOCK:
        _KNOWN[action] = found
    return found


def filter_names(action: str) -> FilterNames | None:
    """The filter names ``action`` accepts, or None when they are not known."""
    found = filter_member(action)
    return found[1] if found else None


def checked_operations() -> dict[str, FilterNames]:
    """Every EC2 operation whose filter names are checked, with its names."""
    result = {}
    for action in _model().operation_names:
        names = filter_names(action)
        if names is not None:
            result[action] = names
    return result


# ---------------------------------------------------------------------------------------------
# The check (called by the api_rules gate)
# ---------------------------------------------------------------------------------------------


def _given_names(wire: str, params: dict[str, list[str]]) -> Iterable[tuple[int, str]]:
    prefix = wire + "."
    for key, values in params.items():
        if not key.startswith(prefix) or not key.endswith(".Name"):
            continue
        index = key[len(prefix) : -len(".Name")]
        if index.isdigit() and values:
            yield int(index), values[0]


def check(action: str, params: dict[str, list[str]]) -> tuple[str, str] | None:
    """``(code, message)`` of EC2's answer when a filter name of the request is refused (the
    first one in ``Filter.N`` order), else None."""
    found = filter_member(action)
    if found is None:
        return None
    wire, names = found
    given = sorted(_given_names(wire, params))
    if not given:
        return None
    for _, name in given:
        if not names.allows(name):
            return INVALID_CODE, INVALID_FILTER.format(name=name)
    applied = _SERVED.get(action)
    if applied is None:
        return None
    for _, name in given:
        pattern = TAG_PATTERN if name.startswith(TAG_PREFIX) and name not in names.names else name
        if pattern not in applied:
            return NOT_IMPLEMENTED_CODE, NOT_IMPLEMENTED.format(name=name, action=action)
    return None


def not_implemented(action: str, name: str) -> Exception:
    """The error a handler raises for a documented filter it does not apply (HTTP 400,
    ``NOT_IMPLEMENTED_CODE``)."""
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError(NOT_IMPLEMENTED_CODE, NOT_IMPLEMENTED.format(name=name, action=action))


# ---------------------------------------------------------------------------------------------
# moto's FilterNotImplementedError -> NOT_IMPLEMENTED_CODE
# ---------------------------------------------------------------------------------------------

# moto's texts for a filter it lacks: FilterNotImplementedError "The filter '<name>' for <Method>
# has not been implemented in Moto yet. ..." and the plain NotImplementedError of
# moto/ec2/utils.py passes_filter_dict (DescribeInstances) "Filter dicts have not been
# implemented in Moto for '<name>' yet. ...". Any other NotImplementedError stays moto's 500.
_MOTO_FILTER = re.compile(r"^(?:The filter '(.*?)' for |Filter dicts have not been implemented in Moto for '(.*?)')")

_installed = False


def _answer_unimplemented_filters(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    from moto.core.responses import ActionResult

    def call_action(self: Any) -> Any:
        try:
            return original(self)
        except NotImplementedError as exc:
            match = _MOTO_FILTER.match(str(exc))
            if match is None:
                raise
            error = not_implemented(self._get_action(), match.group(1) or match.group(2))
            # As BaseResponse.call_action answers a ServiceException raised by a handler.
            error_status, error_headers, error_body = self.serialized(ActionResult(error))
            error_headers["status"] = error_status
            status, headers, body = self._transform_response(self.response_headers, (error_body, error_headers))
            headers, body = self._enrich_response(headers, body)
            return status, headers, body

    call_action.__wrapped__ = original  # type: ignore[attr-defined]
    return call_action


def install() -> None:
    """Load the filter lists of the model now, register ``MOTO_SERVED``, and answer moto's
    FilterNotImplementedError of any EC2 action with ``NOT_IMPLEMENTED_CODE`` (HTTP 400) instead
    of a 500. The extension modules register what they apply with ``serve`` when installed."""
    global _installed
    if _installed:
        return
    from moto.ec2.responses import EC2Response

    from moto.ec2.utils import filter_dict_attribute_mapping

    checked_operations()
    for action, names in MOTO_SERVED.items():
        serve(action, names)
    # DescribeInstances: moto/ec2/utils.py passes_filter_dict applies the names of
    # filter_dict_attribute_mapping and the tag filters; any other name raises. (instances.py
    # keeps moto's filtering.)
    instances = filter_names("DescribeInstances")
    if instances is not None:
        mapped = set(filter_dict_attribute_mapping) | {TAG_PATTERN, "tag-key"}
        serve("DescribeInstances", (n for n in mapped if n in instances.documented()))
    EC2Response.call_action = _answer_unimplemented_filters(EC2Response.call_action)  # type: ignore[method-assign]
    _installed = True
