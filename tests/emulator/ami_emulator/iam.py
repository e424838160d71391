"""IAM identity-policy evaluation for the emulator: the ``iam`` gate.

Owns the per-role identity policies (``/ami-pipeline-emulator/iam/role-policies``, or rendered
from a SAM template by ``sam_policies`` through ``/ami-pipeline-emulator/iam/template-roles``),
the policy evaluator, the mapping of each AWS request to the authorization checks AWS makes for
it, and the log of denied requests (``/ami-pipeline-emulator/iam/denials``). Everything is
forgotten on ``POST /moto-api/reset``.

Who is restricted: the caller is the role behind the request's access key (STS AssumeRole
credentials, ``gates.RequestContext.principal_arn``). A role with registered policies is
evaluated on every request it makes; every other identity is unrestricted (test set-up).

Evaluation follows the IAM User Guide, "Policy evaluation logic"
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
an explicit Deny in any matching statement wins, otherwise any matching Allow allows, otherwise
the request is implicitly denied. A request may need several checks (action, resource ARN,
request context); every one must be allowed. The elements and operators are those of "IAM JSON
policy elements" (``Action``/``NotAction``, ``Resource``/``NotResource``, ``Condition``) and
"Condition operators"
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html);
which checks a request needs, with which condition keys, follows the Service Authorization
Reference rows (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html
and list_amazons3 / list_amazonsns / list_amazonsqs / list_awssecuritytokenservice /
list_amazonelasticblockstore), cited per
action below.

Answers follow each service's wire format (``faults.error_response``): EC2
``UnauthorizedOperation``, S3 ``AccessDenied`` (no body on HEAD), SNS ``AuthorizationError``
(botocore's sns model, ``AuthorizationErrorException``: code ``AuthorizationError``, HTTP 403),
EBS direct APIs ``AccessDeniedException`` with a ``Reason`` (``ebs_direct.error_response``),
SQS / STS / others ``AccessDenied``, all with HTTP 403. AWS's EC2 message also carries an
encoded authorization message; here the reason is in plain text.
"""

from __future__ import annotations

import collections
import datetime as _dt
import functools
import ipaddress
import json
import re
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlparse

from werkzeug.wrappers import Request, Response

from . import control, gates, sam_policies
from .faults import error_response, s3_bucket_and_key

PARTITION = "aws"
DENIALS_KEPT = 1000


class PolicyError(ValueError):
    """A malformed policy document (HTTP 400 on the control API)."""


# ---------------------------------------------------------------------------------------------
# Policy documents -> compiled statements
# ---------------------------------------------------------------------------------------------

_VERSIONS = ("2012-10-17", "2008-10-17")
_POLICY_ELEMENTS = {"Version", "Id", "Statement"}
_STATEMENT_ELEMENTS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}

# Condition operators ("Condition operators" page): name -> (family, negated).
_OPERATORS: dict[str, tuple[str, bool]] = {
    "StringEquals": ("string", False),
    "StringNotEquals": ("string", True),
    "StringEqualsIgnoreCase": ("string_ic", False),
    "StringNotEqualsIgnoreCase": ("string_ic", True),
    "StringLike": ("string_like", False),
    "StringNotLike": ("string_like", True),
    "NumericEquals": ("num_eq", False),
    "NumericNotEquals": ("num_eq", True),
    "NumericLessThan": ("num_lt", False),
    "NumericLessThanEquals": ("num_le", False),
    "NumericGreaterThan": ("num_gt", False),
    "NumericGreaterThanEquals": ("num_ge", False),
    "DateEquals": ("date_eq", False),
    "DateNotEquals": ("date_eq", True),
    "DateLessThan": ("date_lt", False),
    "DateLessThanEquals": ("date_le", False),
    "DateGreaterThan": ("date_gt", False),
    "DateGreaterThanEquals": ("date_ge", False),
    "Bool": ("bool", False),
    "BinaryEquals": ("string", False),
    "IpAddress": ("ip", False),
    "NotIpAddress": ("ip", True),
    "ArnEquals": ("arn", False),
    "ArnLike": ("arn", False),
    "ArnNotEquals": ("arn", True),
    "ArnNotLike": ("arn", True),
    "Null": ("null", False),
}
_SET_PREFIXES = ("ForAllValues:", "ForAnyValue:")


def _wildcard(pattern: str, *, ignore_case: bool = False, segment: bool = False) -> re.Pattern[str]:
    """``*`` (any run) and ``?`` (one character); ``segment`` keeps them inside one ``:`` part."""
    many, one = ("[^:]*", "[^:]") if segment else (".*", ".")
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(many)
        elif char == "?":
            parts.append(one)
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts) + r"\Z", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _arn_pattern(pattern: str) -> re.Pattern[str] | None:
    """Resource / Arn* matching: each of the first five ``:`` parts separately (wildcards do not
    cross a colon), the resource part (the rest) freely. ``None`` for ``*`` (matches all)."""
    if pattern == "*":
        return None
    parts = pattern.split(":", 5)
    regex = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        regex.append(_wildcard(part, segment=not last).pattern[: -len(r"\Z")])
    return re.compile(":".join(regex) + r"\Z", re.DOTALL)


def _parse_date(value: str) -> float | None:
    text = value.strip()
    try:
        return float(text)  # epoch seconds
    except ValueError:
        pass
    try:
        parsed = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.timestamp()


def _parse_number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Condition:
    """One key of one operator block: ``{"<op>": {"<key>": [values]}}``."""

    operator: str  # as written, e.g. ForAllValues:StringLike
    key: str  # lower-cased (condition key names are case-insensitive)
    values: tuple[str, ...]
    family: str
    negated: bool
    if_exists: bool
    set_op: str | None  # "all" | "any" | None
    matchers: tuple[Any, ...] = ()

    def _match_one(self, value: str) -> bool:
        """Whether one request value matches any policy value (before negation)."""
        family = self.family
        if family == "string":
            return value in self.values
        if family == "string_ic":
            return value.lower() in self.matchers
        if family in ("string_like", "arn"):
            return any(m is None or m.match(value) for m in self.matchers)
        if family == "bool":
            return value.lower() in self.matchers
        if family.startswith("num_"):
            number = _parse_number(value)
            return number is not None and any(_compare(family[4:], number, m) for m in self.matchers)
        if family.startswith("date_"):
            moment = _parse_date(value)
            return moment is not None and any(_compare(family[5:], moment, m) for m in self.matchers)
        if family == "ip":
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                return False
            return any(address in network for network in self.matchers)
        raise AssertionError(family)

    def holds(self, context: dict[str, tuple[str, ...]]) -> bool:
        values = context.get(self.key)
        if self.family == "null":
            # Null: "true" = the key must be absent, "false" = present (several values: OR).
            absent = not values
            return any((v.lower() == "true") == absent for v in self.values)
        if not values:
            # A missing key: ForAllValues is true, ForAnyValue false; ...IfExists true; a
            # negated operator true, any other false ("Condition operators", Important box).
            if self.set_op == "all":
                return True
            if self.set_op == "any":
                return False
            return self.if_exists or self.negated
        if self.set_op == "all":
            return all(self._match_one(v) != self.negated for v in values)
        if self.set_op == "any":
            return any(self._match_one(v) != self.negated for v in values)
        matched = any(self._match_one(v) for v in values)
        return matched != self.negated


def _compare(op: str, left: float, right: float) -> bool:
    return {
        "eq": left == right,
        "lt": left < right,
        "le": left <= right,
        "gt": left > right,
        "ge": left >= right,
    }[op]


@dataclass
class Statement:
    policy_index: int
    index: int
    sid: str | None
    allow: bool
    actions: tuple[re.Pattern[str], ...] | None
    not_actions: tuple[re.Pattern[str], ...] | None
    resources: tuple[re.Pattern[str] | None, ...] | None
    not_resources: tuple[re.Pattern[str] | None, ...] | None
    conditions: tuple[Condition, ...]

    def label(self) -> str:
        name = f"Sid {self.sid!r}" if self.sid else f"statement {self.index + 1}"
        return f"{name} of policy {self.policy_index + 1}"

    def matches_action(self, action: str) -> bool:
        if self.actions is not None:
            return any(p.match(action) for p in self.actions)
        return not (self.not_actions is not None and any(p.match(action) for p in self.not_actions))

    def applies(self, action: str, resource: str, context: dict[str, tuple[str, ...]]) -> bool:
        return self.matches_action(action) and self.applies_to(resource, context)

    def applies_to(self, resource: str, context: dict[str, tuple[str, ...]]) -> bool:
        """Resource and Condition (the action is known to match)."""
        if self.resources is not None:
            if not any(p is None or p.match(resource) for p in self.resources):
                return False
        elif self.not_resources is not None and any(p is None or p.match(resource) for p in self.not_resources):
            return False
        return all(c.holds(context) for c in self.conditions)


def _strings(value: Any, where: str, *, allow_scalars: bool = False) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise PolicyError(f"{where}: must not be an empty list")
    out = []
    for item in items:
        if isinstance(item, bool) and allow_scalars:
            out.append("true" if item else "false")
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and allow_scalars:
            out.append(str(item))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise PolicyError(f"{where}: {item!r} is not a string")
    return out


_ACTION_FORMAT = re.compile(r"^[a-zA-Z0-9-]+:[a-zA-Z0-9*?_-]+$")


def _compile_actions(value: Any, where: str) -> tuple[re.Pattern[str], ...]:
    patterns = []
    for action in _strings(value, where):
        if action != "*" and not _ACTION_FORMAT.match(action):
            raise PolicyError(f"{where}: {action!r} is not an action (service:Action, wildcards * ?)")
        # Action names are case-insensitive ("IAM JSON policy elements: Action").
        patterns.append(_wildcard(action, ignore_case=True))
    return tuple(patterns)


def _no_variables(text: str, where: str, version: str) -> None:
    if version == "2012-10-17" and "${" in text:
        raise PolicyError(f"{where}: policy variables ({text!r}) are not supported by the emulator")


def _compile_resources(value: Any, where: str, version: str) -> tuple[re.Pattern[str] | None, ...]:
    patterns = []
    for resource in _strings(value, where):
        _no_variables(resource, where, version)
        if resource != "*" and not resource.startswith("arn:"):
            raise PolicyError(f"{where}: {resource!r} is not an ARN or *")
        patterns.append(_arn_pattern(resource))
    return tuple(patterns)


def _compile_condition(operator: str, key: str, raw: Any, where: str, version: str) -> Condition:
    name = operator
    set_op = None
    for prefix in _SET_PREFIXES:
        if name.startswith(prefix):
            set_op = "all" if prefix == "ForAllValues:" else "any"
            name = name[len(prefix) :]
    if_exists = name.endswith("IfExists") and name != "IfExists"
    base = name[: -len("IfExists")] if if_exists else name
    if base not in _OPERATORS or (if_exists and base == "Null"):
        raise PolicyError(f"{where}: unknown condition operator {operator!r}")
    family, negated = _OPERATORS[base]
    values = tuple(_strings(raw, f"{where}.{key}", allow_scalars=True))
    for value in values:
        _no_variables(value, f"{where}.{key}", version)
    matchers: tuple[Any, ...] = ()
    if family == "string_ic":
        matchers = tuple(v.lower() for v in values)
    elif family == "string_like":
        matchers = tuple(_wildcard(v) for v in values)
    elif family == "arn":
        matchers = tuple(_arn_pattern(v) for v in values)
    elif family == "bool":
        for value in values:
            if value.lower() not in ("true", "false"):
                raise PolicyError(f"{where}.{key}: Bool takes true or false, got {value!r}")
        matchers = tuple(v.lower() for v in values)
    elif family.startswith("num_"):
        numbers = [_parse_number(v) for v in values]
        if any(n is None for n in numbers):
            raise PolicyError(f"{where}.{key}: {operator} takes numbers, got {list(values)}")
        matchers = tuple(numbers)
    elif family.startswith("date_"):
        dates = [_parse_date(v) for v in values]
        if any(d is None for d in dates):
            raise PolicyError(f"{where}.{key}: {operator} takes ISO 8601 dates or epoch seconds, got {list(values)}")
        matchers = tuple(dates)
    elif family == "ip":
        try:
            matchers = tuple(ipaddress.ip_network(v, strict=False) for v in values)
        except ValueError as exc:
            raise PolicyError(f"{where}.{key}: {operator}: {exc}") from exc
    elif family == "null":
        for value in values:
            if value.lower() not in ("true", "false"):
                raise PolicyError(f"{where}.{key}: Null takes true or false, got {value!r}")
    return Condition(operator, key.lower(), values, family, negated, if_exists, set_op, matchers)


def compile_policy(document: Any, policy_index: int = 0) -> list[Statement]:
    """Validate one IAM identity-policy document and compile its statements. PolicyError
    (with the element's path) for a malformed document."""
    where = f"policies[{policy_index}]"
    if not isinstance(document, dict):
        raise PolicyError(f"{where}: a policy document must be a JSON object")
    unknown = sorted(set(document) - _POLICY_ELEMENTS)
    if unknown:
        raise PolicyError(f"{where}: unknown element(s) {unknown} (allowed: Version, Id, Statement)")
    version = document.get("Version", "2008-10-17")
    if version not in _VERSIONS:
        raise PolicyError(f"{where}.Version: {version!r} is not 2012-10-17 or 2008-10-17")
    if "Statement" not in document:
        raise PolicyError(f"{where}: missing Statement")
    raw_statements = document["Statement"]
    if isinstance(raw_statements, dict):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise PolicyError(f"{where}.Statement: must be an object or a non-empty list of objects")
    compiled = []
    for index, raw in enumerate(raw_statements):
        at = f"{where}.Statement[{index}]"
        if not isinstance(raw, dict):
            raise PolicyError(f"{at}: a statement must be a JSON object")
        if "Principal" in raw or "NotPrincipal" in raw:
            raise PolicyError(f"{at}: an identity-based policy must not have Principal / NotPrincipal")
        unknown = sorted(set(raw) - _STATEMENT_ELEMENTS)
        if unknown:
            raise PolicyError(f"{at}: unknown element(s) {unknown}")
        effect = raw.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"{at}.Effect: must be Allow or Deny, got {effect!r}")
        if ("Action" in raw) == ("NotAction" in raw):
            raise PolicyError(f"{at}: exactly one of Action / NotAction")
        if ("Resource" in raw) == ("NotResource" in raw):
            raise PolicyError(f"{at}: exactly one of Resource / NotResource")
        sid = raw.get("Sid")
        if sid is not None and not isinstance(sid, str):
            raise PolicyError(f"{at}.Sid: must be a string")
        conditions: list[Condition] = []
        block = raw.get("Condition", {})
        if not isinstance(block, dict):
            raise PolicyError(f"{at}.Condition: must be an object of operator -> {{key: values}}")
        for operator, keys in block.items():
            if not isinstance(keys, dict) or not keys:
                raise PolicyError(f"{at}.Condition.{operator}: must be a non-empty object of key -> values")
            for key, raw_values in keys.items():
                conditions.append(_compile_condition(operator, key, raw_values, f"{at}.Condition.{operator}", version))
        compiled.append(
            Statement(
                policy_index=policy_index,
                index=index,
                sid=sid,
                allow=effect == "Allow",
                actions=_compile_actions(raw["Action"], f"{at}.Action") if "Action" in raw else None,
                not_actions=_compile_actions(raw["NotAction"], f"{at}.NotAction") if "NotAction" in raw else None,
                resources=_compile_resources(raw["Resource"], f"{at}.Resource", version) if "Resource" in raw else None,
                not_resources=_compile_resources(raw["NotResource"], f"{at}.NotResource", version)
                if "NotResource" in raw
                else None,
                conditions=tuple(conditions),
            )
        )
    return compiled


def compile_policies(documents: Any) -> list[Statement]:
    if not isinstance(documents, list):
        raise PolicyError("policies must be a list of policy documents")
    statements: list[Statement] = []
    for index, document in enumerate(documents):
        statements.extend(compile_policy(document, index))
    return statements


@dataclass
class Decision:
    allowed: bool
    explicit_deny: bool
    statement: Statement | None

    def reason(self) -> str:
        if self.explicit_deny and self.statement is not None:
            return f"explicit deny in {self.statement.label()}"
        if self.allowed and self.statement is not None:
            return f"allowed by {self.statement.label()}"
        return "no identity-based policy allows the action"


def evaluate(
    statements: Iterable[Statement], action: str, resource: str, context: dict[str, tuple[str, ...]], *, action_matched: bool = False
) -> Decision:
    """"Policy evaluation logic" for identity policies alone: explicit Deny > Allow > implicit
    deny. ``action_matched``: the statements are already those whose Action matches."""
    allowed_by: Statement | None = None
    for statement in statements:
        applies = statement.applies_to(resource, context) if action_matched else statement.applies(action, resource, context)
        if not applies:
            continue
        if not statement.allow:
            return Decision(False, True, statement)
        if allowed_by is None:
            allowed_by = statement
    return Decision(allowed_by is not None, False, allowed_by)


# ---------------------------------------------------------------------------------------------
# Store: role policies and denials
# ---------------------------------------------------------------------------------------------


@dataclass
class RoleEntry:
    documents: list[dict[str, Any]]
    statements: list[Statement]
    source: str  # "role-policies" | "template-roles"
    function: str | None = None
    # action -> the statements whose Action / NotAction match it (speed: most statements of a
    # role are about other actions).
    _by_action: dict[str, tuple[Statement, ...]] = field(default_factory=dict, repr=False)

    def for_action(self, action: str) -> tuple[Statement, ...]:
        found = self._by_action.get(action)
        if found is None:
            found = tuple(s for s in self.statements if s.matches_action(action))
            if len(self._by_action) < 4096:
                self._by_action[action] = found
        return found


_LOCK = threading.Lock()
# account id -> role name -> its policies. An account is absent when none of its roles has any.
_ROLES: dict[str, dict[str, RoleEntry]] = {}
_DENIALS: dict[str, collections.deque[dict[str, Any]]] = {}


def set_role_policies(account: str, role_name: str, documents: list[dict[str, Any]], *, source: str = "role-policies", function: str | None = None) -> RoleEntry:
    statements = compile_policies(documents)
    entry = RoleEntry(json.loads(json.dumps(documents)), statements, source, function)
    with _LOCK:
        _ROLES.setdefault(account, {})[role_name] = entry
    return entry


def get_role(account: str, role_name: str) -> RoleEntry | None:
    with _LOCK:
        return (_ROLES.get(account) or {}).get(role_name)


def delete_role(account: str, role_name: str) -> bool:
    with _LOCK:
        roles = _ROLES.get(account)
        if not roles or role_name not in roles:
            return False
        del roles[role_name]
        if not roles:
            del _ROLES[account]
        return True


def _record_denial(account: str, denial: dict[str, Any]) -> None:
    with _LOCK:
        log = _DENIALS.get(account)
        if log is None:
            log = _DENIALS[account] = collections.deque(maxlen=DENIALS_KEPT)
        log.append(denial)


def denials(account: str) -> list[dict[str, Any]]:
    with _LOCK:
        return list(_DENIALS.get(account, ()))


def clear_denials(account: str) -> int:
    with _LOCK:
        return len(_DENIALS.pop(account, ()))


# account id -> role name -> EC2 resource type -> tag keys the role was allowed to write
# (CreateTags and tags given at creation, which IAM authorizes as ec2:CreateTags).
_TAG_WRITES: dict[str, dict[str, dict[str, set[str]]]] = {}


def _record_tag_writes(account: str, role: str, checks: list["Check"]) -> None:
    for check in checks:
        keys = check.context.get("aws:tagkeys") if check.action.lower() == "ec2:createtags" else None
        if not keys:
            continue
        rtype = check.resource.split(":", 5)[-1].split("/", 1)[0]
        with _LOCK:
            _TAG_WRITES.setdefault(account, {}).setdefault(role, {}).setdefault(rtype, set()).update(keys)


def tag_writes(account: str) -> dict[str, dict[str, list[str]]]:
    with _LOCK:
        roles = _TAG_WRITES.get(account, {})
        return {role: {rtype: sorted(keys) for rtype, keys in types.items()} for role, types in roles.items()}


def clear_tag_writes(account: str) -> int:
    with _LOCK:
        return len(_TAG_WRITES.pop(account, {}))


def reset() -> None:
    with _LOCK:
        _ROLES.clear()
        _DENIALS.clear()
        _TAG_WRITES.clear()


# ---------------------------------------------------------------------------------------------
# Requests -> authorization checks
# ---------------------------------------------------------------------------------------------

Context = dict[str, tuple[str, ...]]


@dataclass
class Check:
    action: str
    resource: str
    context: Context = field(default_factory=dict)


def _tags_context(prefixes: tuple[str, ...], tags: dict[str, str]) -> Context:
    out: Context = {}
    for key, value in tags.items():
        for prefix in prefixes:
            out[f"{prefix}{key.lower()}"] = (value,)
    return out


def request_tags_context(tags: dict[str, str] | None) -> Context:
    """``aws:RequestTag/<key>`` for each tag and ``aws:TagKeys`` (absent when there are none)."""
    if not tags:
        return {}
    out = _tags_context(("aws:requesttag/",), tags)
    out["aws:tagkeys"] = tuple(tags)
    return out


def resource_tags_context(tags: dict[str, str] | None) -> Context:
    """``aws:ResourceTag/<key>`` and EC2's ``ec2:ResourceTag/<key>`` (the SAR lists both)."""
    return _tags_context(("aws:resourcetag/", "ec2:resourcetag/"), tags or {})


class Principal:
    """The caller: the role ARN behind the access key, and its assumed-role session ARN."""

    def __init__(self, account: str, role_arn: str, access_key: str | None) -> None:
        self.account = account
        self.role_arn = role_arn
        self.role_name = role_arn.rsplit("/", 1)[-1]
        self.access_key = access_key

    @property
    def session_arn(self) -> str:
        try:
            from moto.sts.models import sts_backends

            role = sts_backends[self.account][PARTITION].get_assumed_role_from_access_key(self.access_key or "")
            if role is not None:
                return str(role.arn)
        except Exception:  # noqa: BLE001 - only used for the message text
            pass
        return self.role_arn


# The last global contexts made, by (account, role, region, epoch second): every key of one
# depends on those alone, and formatting the time was a fortieth of the server's time per call.
_GLOBAL_CONTEXTS: dict[tuple[str, str, str, int], Context] = {}
_GLOBAL_CONTEXTS_KEPT = 64


def _global_context(principal: Principal, region: str) -> Context:
    """The request's global condition keys (a fresh dict: callers merge into it)."""
    second = int(time.time())
    key = (principal.account, principal.role_arn, region, second)
    made = _GLOBAL_CONTEXTS.get(key)
    if made is None:
        made = {
            "aws:requestedregion": (region,),
            "aws:principalaccount": (principal.account,),
            "aws:principalarn": (principal.role_arn,),
            "aws:principaltype": ("AssumedRole",),
            "aws:currenttime": (_dt.datetime.fromtimestamp(second, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),),
            "aws:epochtime": (str(second),),
            # The functions talk HTTPS to AWS; the emulator's plain HTTP stands in for it.
            "aws:securetransport": ("true",),
        }
        if len(_GLOBAL_CONTEXTS) >= _GLOBAL_CONTEXTS_KEPT:
            _GLOBAL_CONTEXTS.clear()  # a dict op under the GIL: safe from any request thread
        _GLOBAL_CONTEXTS[key] = made
    return dict(made)


# -- EC2 ----------------------------------------------------------------------------------------

# Resource id prefix -> SAR resource type (ARN "arn:aws:ec2:<region>:<account>:<type>/<id>").
_EC2_PREFIXES = (
    ("import-snap-", "import-snapshot-task"),
    ("import-ami-", "import-image-task"),
    ("ami-", "image"),
    ("snap-", "snapshot"),
    ("i-", "instance"),
    ("vol-", "volume"),
    ("lt-", "launch-template"),
)
# Images and snapshots have no account in their ARN (SAR, "Resource types defined by Amazon
# EC2": arn:${Partition}:ec2:${Region}::image/${ImageId}, ...::snapshot/${SnapshotId}).
_NO_ACCOUNT_TYPES = {"image", "snapshot"}


def ec2_resource_type(resource_id: str) -> str:
    for prefix, rtype in _EC2_PREFIXES:
        if resource_id.startswith(prefix):
            return rtype
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    prefix = get_prefix(resource_id)
    return EC2_PREFIX_TO_RESOURCE.get(prefix, "") if prefix else ""


def ec2_arn(region: str, account: str, rtype: str, resource_id: str) -> str:
    owner = "" if rtype in _NO_ACCOUNT_TYPES else account
    return f"arn:{PARTITION}:ec2:{region}:{owner}:{rtype}/{resource_id}"


@functools.lru_cache(maxsize=256)
def _numbered_pattern(prefix: str, suffix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"\.(\d+)" + re.escape(suffix) + r"\Z")


class Ec2Request:
    """The flat query parameters of one EC2 request, with the lookups the checks need."""

    _TAG_SPEC = re.compile(r"^TagSpecification\.(\d+)\.(?:ResourceType|Tag\.(\d+)\.(Key|Value))$")

    def __init__(self, ctx: gates.RequestContext, principal: Principal) -> None:
        self.params = ctx.params()
        self.action = ctx.action or ""
        self.region = ctx.region
        self.account = ctx.account
        self.principal = principal
        self.base = _global_context(principal, self.region)

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None

    def numbered(self, prefix: str, suffix: str = "") -> list[tuple[int, str]]:
        """``(N, value)`` of every ``<prefix>.N<suffix>`` parameter, in N order."""
        pattern = _numbered_pattern(prefix, suffix)
        found = []
        for name, values in self.params.items():
            if values and name.startswith(prefix):
                match = pattern.match(name)
                if match:
                    found.append((int(match.group(1)), values[0]))
        return sorted(found)

    def indexed(self, prefix: str, suffix: str = "") -> list[str]:
        """Values of ``<prefix>.N<suffix>`` in N order."""
        return [value for _, value in self.numbered(prefix, suffix)]

    def tag_specs(self) -> dict[str, dict[str, str]]:
        """``{resource type: {key: value}}`` from ``TagSpecification.N``."""
        types: dict[int, str] = {}
        tags: dict[int, dict[int, dict[str, str]]] = {}
        for name, values in self.params.items():
            match = self._TAG_SPEC.match(name)
            if not match or not values:
                continue
            spec = int(match.group(1))
            if match.group(2) is None:
                types[spec] = values[0]
            else:
                tags.setdefault(spec, {}).setdefault(int(match.group(2)), {})[match.group(3)] = values[0]
        out: dict[str, dict[str, str]] = {}
        for spec, rtype in types.items():
            bucket = out.setdefault(rtype, {})
            for _, tag in sorted(tags.get(spec, {}).items()):
                if "Key" in tag:
                    bucket[tag["Key"]] = tag.get("Value", "")
        return out

    def tags_param(self) -> tuple[dict[int, str], dict[int, str]]:
        """CreateTags / DeleteTags ``Tag.N.Key`` and ``Tag.N.Value``: ``({N: key}, {N: value})``."""
        return dict(self.numbered("Tag", ".Key")), dict(self.numbered("Tag", ".Value"))

    # -- context ------------------------------------------------------------------------------

    def context(self, *parts: Context) -> Context:
        merged = dict(self.base)
        merged["ec2:region"] = (self.region,)
        for part in parts:
            merged.update(part)
        return merged

    def existing(self, rtype: str, resource_id: str, region: str | None = None) -> Context:
        """The condition keys of an existing resource, read from the emulator's backend."""
        region = region or self.region
        try:
            from .common import ec2_backend_for, region_state

            backend = ec2_backend_for(self.account, region)
        except Exception:  # noqa: BLE001 - unknown region: no resource keys
            return {}
        if rtype == "import-snapshot-task":
            task = region_state(backend).import_tasks.get(resource_id)
            return resource_tags_context(getattr(task, "tags", None) if task is not None else None)
        out = resource_tags_context(backend.tags.get(resource_id) or {})
        if rtype == "image":
            image = backend.amis.get(resource_id)
            out["ec2:imageid"] = (resource_id,)
            if image is not None:
                owner = "amazon" if getattr(image, "owner_alias", None) == "amazon" else str(image.owner_id)
                public = any(p.get("Group") == "all" for p in getattr(image, "launch_permissions", []) or [])
                out["ec2:owner"] = (owner,)
                out["ec2:public"] = ("true" if public else "false",)
                out["ec2:imagetype"] = (str(getattr(image, "image_type", "machine") or "machine"),)
                out["ec2:rootdevicetype"] = (str(getattr(image, "root_device_type", "ebs") or "ebs"),)
        elif rtype == "snapshot":
            snapshot = backend.snapshots.get(resource_id)
            out["ec2:snapshotid"] = (resource_id,)
            if snapshot is not None:
                out["ec2:owner"] = (str(snapshot.owner_id),)
                out["ec2:encrypted"] = ("true" if snapshot.encrypted else "false",)
                volume = getattr(snapshot, "volume", None)
                if volume is not None and getattr(volume, "id", None):
                    out["ec2:parentvolume"] = (ec2_arn(region, self.account, "volume", volume.id),)
                    out["ec2:volumesize"] = (str(volume.size),)
                start = getattr(snapshot, "start_time", None)
                if isinstance(start, _dt.datetime):
                    out["ec2:snapshottime"] = (start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),)
        elif rtype == "volume":
            volume = backend.volumes.get(resource_id)
            out["ec2:volumeid"] = (resource_id,)
            if volume is not None:
                out["ec2:volumesize"] = (str(volume.size),)
                out["ec2:volumetype"] = (str(volume.volume_type),)
                out["ec2:encrypted"] = ("true" if volume.encrypted else "false",)
        elif rtype == "instance":
            out["ec2:instanceid"] = (resource_id,)
            try:
                instance = backend.get_instance(resource_id)
            except Exception:  # noqa: BLE001 - unknown instance: only the id
                instance = None
            if instance is not None:
                out["ec2:instancetype"] = (str(instance.instance_type),)
                out["ec2:rootdevicetype"] = (str(getattr(instance, "root_device_type", "ebs")),)
        return out

    def arn(self, rtype: str, resource_id: str, region: str | None = None) -> str:
        return ec2_arn(region or self.region, self.account, rtype, resource_id)

    def existing_check(self, action: str, resource_id: str, *extra: Context) -> Check:
        rtype = ec2_resource_type(resource_id)
        return Check(action, self.arn(rtype, resource_id), self.context(self.existing(rtype, resource_id), *extra))

    def new_check(self, action: str, rtype: str, tags: dict[str, str] | None, *extra: Context) -> Check:
        return Check(action, self.arn(rtype, "*"), self.context(request_tags_context(tags), *extra))

    def tag_on_create(self, specs: dict[str, dict[str, str]]) -> list[Check]:
        """EC2 User Guide, "Grant permission to tag resources during creation"
        (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/supported-iam-actions-tagging.html):
        a create action with TagSpecifications is also authorized for ``ec2:CreateTags`` on each
        resource it tags, with ``ec2:CreateAction`` = the create action and the request tags."""
        return [
            self.new_check("ec2:CreateTags", rtype, tags, {"ec2:createaction": (self.action,)})
            for rtype, tags in specs.items()
        ]


def _ec2_checks(ctx: gates.RequestContext, principal: Principal) -> list[Check]:
    req = Ec2Request(ctx, principal)
    action = req.action
    iam_action = f"ec2:{action}"
    handler = _EC2_HANDLERS.get(action)
    if handler is not None:
        return handler(req, iam_action)
    # Every other EC2 action (Describe*, Get*, ...): authorized on "*" (the SAR lists no
    # resource type for them, or the emulator does not model theirs).
    return [Check(iam_action, "*", req.context())]


def _register_image(req: Ec2Request, action: str) -> list[Check]:
    # SAR RegisterImage: image* (aws:RequestTag, aws:TagKeys, ec2:ImageID, ec2:Owner,
    # ec2:Region), snapshot (aws:ResourceTag, ec2:Owner, ec2:ParentVolume, ec2:SnapshotID, ...),
    # dependent action ec2:CreateTags.
    specs = req.tag_specs()
    checks = [req.new_check(action, "image", specs.get("image"), {"ec2:owner": (req.account,)})]
    for snapshot_id in dict.fromkeys(req.indexed("BlockDeviceMapping", ".Ebs.SnapshotId")):
        checks.append(req.existing_check(action, snapshot_id))
    return checks + req.tag_on_create(specs)


def _copy_image(req: Ec2Request, action: str) -> list[Check]:
    # SAR CopyImage: image* (aws:RequestTag, aws:TagKeys, ec2:ImageID, ec2:Owner, ec2:Region),
    # snapshot* (aws:RequestTag, aws:TagKeys, ec2:Region), dependent ec2:CreateTags. The new
    # image and snapshots are in the request's (destination) region; since 2024-10-28 the
    # source AMI is authorized too (EC2 User Guide, "Grant permissions to copy Amazon EC2 AMIs"),
    # as an image of the same row: its ARN in SourceRegion, ec2:ImageID / ec2:Owner, the request
    # tags - and no aws:ResourceTag, which the row does not list.
    specs = req.tag_specs()
    image_tags = specs.get("image")
    checks = [req.new_check(action, "image", image_tags, {"ec2:owner": (req.account,)})]
    source_id = req.param("SourceImageId") or ""
    source_region = req.param("SourceRegion") or req.region
    source_keys = _copy_source_keys(req, source_id, source_region)
    checks.append(Check(action, req.arn("image", source_id, source_region), req.context(source_keys, request_tags_context(image_tags))))
    checks.append(req.new_check(action, "snapshot", specs.get("snapshot")))
    return checks + req.tag_on_create(specs)


def _copy_source_keys(req: Ec2Request, source_id: str, source_region: str) -> Context:
    """CopyImage's source AMI keys (SAR row: ec2:ImageID, ec2:Owner): read from the account
    that owns it - the caller's own image, or another account's AMI the caller may copy
    (``images.copy_source``: public or shared with it), whose ec2:Owner is that account (or
    ``amazon``). No keys when the source cannot be found (the handler then answers
    InvalidAMIID.NotFound, if IAM lets the request through)."""
    if not source_id:
        return {}
    from .common import LOCK
    from .images import copy_source

    try:
        with LOCK:
            _backend, image = copy_source(req.account, source_region, source_id)
    except Exception:  # noqa: BLE001 - unknown or unreadable source: no keys
        return {}
    owner = "amazon" if getattr(image, "owner_alias", None) == "amazon" else str(image.owner_id)
    return {"ec2:imageid": (source_id,), "ec2:owner": (owner,)}


def _create_image(req: Ec2Request, action: str) -> list[Check]:
    # SAR CreateImage: image* (aws:RequestTag, aws:TagKeys, ec2:Owner, ...), instance*
    # (aws:ResourceTag, ...), snapshot* (aws:RequestTag, aws:TagKeys, ...); ec2:CreateTags.
    specs = req.tag_specs()
    checks = [req.new_check(action, "image", specs.get("image"), {"ec2:owner": (req.account,)})]
    instance_id = req.param("InstanceId")
    if instance_id:
        checks.append(req.existing_check(action, instance_id))
    checks.append(req.new_check(action, "snapshot", specs.get("snapshot")))
    return checks + req.tag_on_create(specs)


def _import_snapshot(req: Ec2Request, action: str) -> list[Check]:
    # SAR ImportSnapshot: import-snapshot-task* (aws:RequestTag, aws:TagKeys, ec2:Region),
    # snapshot* (aws:RequestTag, aws:TagKeys, ec2:Owner, ...); dependent ec2:CreateTags.
    specs = req.tag_specs()
    return [
        req.new_check(action, "import-snapshot-task", specs.get("import-snapshot-task")),
        req.new_check(action, "snapshot", specs.get("snapshot"), {"ec2:owner": (req.account,)}),
    ] + req.tag_on_create(specs)


def _create_snapshot(req: Ec2Request, action: str) -> list[Check]:
    # SAR CreateSnapshot: snapshot* (aws:RequestTag, aws:TagKeys, ...), volume* (aws:ResourceTag,
    # ...); dependent ec2:CreateTags.
    specs = req.tag_specs()
    checks = [req.new_check(action, "snapshot", specs.get("snapshot"), {"ec2:owner": (req.account,)})]
    volume_id = req.param("VolumeId")
    if volume_id:
        checks.append(req.existing_check(action, volume_id))
    return checks + req.tag_on_create(specs)


def _create_tags(req: Ec2Request, action: str) -> list[Check]:
    # SAR CreateTags: every taggable resource type with aws:RequestTag, aws:ResourceTag,
    # aws:TagKeys, ec2:CreateAction (only during creation), plus the type's own keys.
    keys, values = req.tags_param()
    tags = {key: values.get(n, "") for n, key in keys.items()}
    return [req.existing_check(action, rid, request_tags_context(tags)) for rid in dict.fromkeys(req.indexed("ResourceId"))]


def _delete_tags(req: Ec2Request, action: str) -> list[Check]:
    # SAR DeleteTags: the same per-resource keys as CreateTags (aws:RequestTag, aws:TagKeys
    # from the tags named in the request, aws:ResourceTag of the resource).
    keys, values = req.tags_param()
    context: Context = {}
    if keys:
        context["aws:tagkeys"] = tuple(keys.values())
        for n, key in keys.items():
            if n in values:
                context[f"aws:requesttag/{key.lower()}"] = (values[n],)
    return [req.existing_check(action, rid, context) for rid in dict.fromkeys(req.indexed("ResourceId"))]


def _image_attribute_name(req: Ec2Request) -> str | None:
    attribute = req.param("Attribute")
    if attribute:
        return attribute
    for prefix, name in (("LaunchPermission.", "launchPermission"), ("Description.", "description"),
                         ("ImdsSupport.", "imdsSupport"), ("ProductCode.", "productCodes")):
        if any(p.startswith(prefix) for p in req.params):
            return name
    if req.param("OperationType"):
        return "launchPermission"
    return None


def _modify_image_attribute(req: Ec2Request, action: str) -> list[Check]:
    # SAR ModifyImageAttribute: image* (aws:ResourceTag, ec2:Attribute,
    # ec2:Attribute/${AttributeName}, ec2:ImageID, ec2:ImageType, ec2:Owner, ec2:Public,
    # ec2:Region, ec2:RootDeviceType). No ec2:Add/* / ec2:Remove/* keys: the SAR lists those
    # for ModifySnapshotAttribute only ("the group being added to a snapshot").
    image_id = req.param("ImageId") or ""
    extra: Context = {}
    attribute = _image_attribute_name(req)
    if attribute:
        extra["ec2:attribute"] = (attribute,)
    return [req.existing_check(action, image_id, extra)]


def _modify_snapshot_attribute(req: Ec2Request, action: str) -> list[Check]:
    # SAR ModifySnapshotAttribute: snapshot* (aws:ResourceTag, ec2:Add/group, ec2:Add/userId,
    # ec2:Attribute, ec2:Remove/group, ec2:Remove/userId, ec2:Owner, ...). Both parameter forms:
    # CreateVolumePermission.Add|Remove.N.UserId|Group, and OperationType + UserId.N /
    # UserGroup.N (botocore: GroupNames -> locationName UserGroup, UserIds -> UserId).
    snapshot_id = req.param("SnapshotId") or ""
    added: dict[str, list[str]] = {"userid": [], "group": []}
    removed: dict[str, list[str]] = {"userid": [], "group": []}
    for change, bucket in (("Add", added), ("Remove", removed)):
        bucket["userid"] += req.indexed(f"CreateVolumePermission.{change}", ".UserId")
        bucket["group"] += req.indexed(f"CreateVolumePermission.{change}", ".Group")
    operation = (req.param("OperationType") or "").lower()
    if operation in ("add", "remove"):
        bucket = added if operation == "add" else removed
        bucket["userid"] += req.indexed("UserId")
        bucket["group"] += req.indexed("UserGroup")
    extra: Context = {"ec2:attribute": (req.param("Attribute") or "createVolumePermission",)}
    for name, bucket in (("add", added), ("remove", removed)):
        if bucket["userid"]:
            extra[f"ec2:{name}/userid"] = tuple(bucket["userid"])
        if bucket["group"]:
            extra[f"ec2:{name}/group"] = tuple(bucket["group"])
    return [req.existing_check(action, snapshot_id, extra)]


def _image_param_check(req: Ec2Request, action: str) -> list[Check]:
    # SAR DeregisterImage, EnableImageDeprecation, DisableImageDeprecation,
    # Enable/DisableImageDeregistrationProtection, DescribeImageAttribute, ResetImageAttribute,
    # CancelImageLaunchPermission, EnableImage, DisableImage: image* with the image's keys.
    # DeregisterImage lists only image*, also with DeleteAssociatedSnapshots=true: the snapshots
    # are deleted as a dependent step, see deregister_snapshot_denials.
    return [req.existing_check(action, req.param("ImageId") or "")]


# environ key under which the iam gate tells images.deregister_image which snapshots the caller
# may not delete (a server-side WSGI key: a client cannot send it).
DENIED_SNAPSHOTS_ENVIRON = "ami_emulator.iam.snapshots_not_deletable"


def deregister_snapshot_denials(ctx: gates.RequestContext, principal: Principal, entry: "RoleEntry") -> None:
    """DeregisterImage with DeleteAssociatedSnapshots=true: the botocore model's
    DeleteSnapshotReturnCode says ``missing-permissions`` - "The snapshot was not deleted because
    the role lacks DeleteSnapshot permissions" - so each of the image's snapshots is checked for
    ``ec2:DeleteSnapshot`` (as DeleteSnapshot would be: the snapshot's ARN and keys). The image is
    deregistered regardless; the denied snapshot ids go to the handler through the WSGI environ,
    and each denial is logged."""
    req = Ec2Request(ctx, principal)
    if (req.param("DeleteAssociatedSnapshots") or "").lower() != "true":
        return
    from .common import LOCK, ec2_backend_for
    from .snapshots import image_snapshot_ids

    with LOCK:
        image = ec2_backend_for(req.account, req.region).amis.get(req.param("ImageId") or "")
        snapshot_ids = image_snapshot_ids(image) if image is not None else []
    denied = set()
    for snapshot_id in snapshot_ids:
        check = req.existing_check("ec2:DeleteSnapshot", snapshot_id)
        decision = evaluate(entry.for_action(check.action), check.action, check.resource, check.context, action_matched=True)
        if not decision.allowed:
            denied.add(snapshot_id)
            _record_denial(
                principal.account,
                {
                    "role": principal.role_name,
                    "principal": principal.role_arn,
                    "request": f"{ctx.service}:{ctx.action}",
                    "action": check.action,
                    "resource": check.resource,
                    "reason": f"{decision.reason()} (DeleteAssociatedSnapshots: answered missing-permissions, the image is still deregistered)",
                    "time": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                },
            )
    ctx.environ[DENIED_SNAPSHOTS_ENVIRON] = frozenset(denied)


def snapshots_not_deletable(environ: dict[str, Any] | None) -> frozenset[str]:
    """The snapshot ids the iam gate found the caller may not delete (empty when unrestricted)."""
    return (environ or {}).get(DENIED_SNAPSHOTS_ENVIRON, frozenset())


# DescribeImageReferences: EC2 User Guide, "Identify your resources referencing specified AMIs",
# "Required IAM permissions" (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-ami-references.html#ami-references-required-permissions):
# besides ec2:DescribeImageReferences, "you need the following IAM permissions to describe the
# resources"; the guide's example policy (and the AWS managed policy
# AmazonEC2ImageReferencesAccessPolicy) grants them on "*" with the condition
# "ForAnyValue:StringEquals": {"aws:CalledVia": ["ec2-images.amazonaws.com"]}: EC2 makes those
# calls on the caller's behalf. Which permission belongs to which resource type is read from
# the action names.
IMAGE_REFERENCES_CALLED_VIA = "ec2-images.amazonaws.com"
IMAGE_REFERENCE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "ec2:Instance": ("ec2:DescribeInstances",),
    "ec2:LaunchTemplate": ("ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions"),
    "ssm:Parameter": ("ssm:DescribeParameters", "ssm:GetParameters"),
    "imagebuilder:ImageRecipe": ("imagebuilder:ListImageRecipes",),
    "imagebuilder:ContainerRecipe": ("imagebuilder:ListContainerRecipes", "imagebuilder:GetContainerRecipe"),
}


def _describe_image_references(req: Ec2Request, action: str) -> list[Check]:
    # The call itself (SAR: no resource type, "*"), then the permissions of each resource type
    # scanned (IncludeAllResourceTypes: all of them), checked as a forward request made via
    # ec2-images.amazonaws.com. Guess: a missing one fails the whole call with
    # UnauthorizedOperation naming it (the guide only says they are needed); skipping the type
    # silently would let a cleanup read "no references" as "unused".
    checks = [Check(action, "*", req.context())]
    types: list[str] = []
    if (req.param("IncludeAllResourceTypes") or "").lower() == "true":
        types.extend(IMAGE_REFERENCE_PERMISSIONS)
    types.extend(req.indexed("ResourceType", ".ResourceType"))
    via = {"aws:calledvia": (IMAGE_REFERENCES_CALLED_VIA,), "aws:viaawsservice": ("true",)}
    for rtype in dict.fromkeys(types):
        for permission in IMAGE_REFERENCE_PERMISSIONS.get(rtype, ()):
            checks.append(Check(permission, "*", req.context(via)))
    return checks


def _snapshot_param_check(req: Ec2Request, action: str) -> list[Check]:
    # SAR DeleteSnapshot, DescribeSnapshotAttribute, ResetSnapshotAttribute: snapshot*.
    return [req.existing_check(action, req.param("SnapshotId") or "")]


_EC2_HANDLERS: dict[str, Callable[[Ec2Request, str], list[Check]]] = {
    "RegisterImage": _register_image,
    "CopyImage": _copy_image,
    "CreateImage": _create_image,
    "ImportSnapshot": _import_snapshot,
    "CreateSnapshot": _create_snapshot,
    "CreateTags": _create_tags,
    "DeleteTags": _delete_tags,
    "ModifyImageAttribute": _modify_image_attribute,
    "ModifySnapshotAttribute": _modify_snapshot_attribute,
    "DeregisterImage": _image_param_check,
    "EnableImageDeprecation": _image_param_check,
    "DisableImageDeprecation": _image_param_check,
    "EnableImageDeregistrationProtection": _image_param_check,
    "DisableImageDeregistrationProtection": _image_param_check,
    "DescribeImageAttribute": _image_param_check,
    "ResetImageAttribute": _image_param_check,
    "CancelImageLaunchPermission": _image_param_check,
    "EnableImage": _image_param_check,
    "DisableImage": _image_param_check,
    "DescribeImageReferences": _describe_image_references,
    "DeleteSnapshot": _snapshot_param_check,
    "DescribeSnapshotAttribute": _snapshot_param_check,
    "ResetSnapshotAttribute": _snapshot_param_check,
}


# -- S3 -----------------------------------------------------------------------------------------

# Request (faults.s3_action) -> (IAM action, its ...Version variant when versionId is given,
# level). SAR "Actions defined by Amazon S3" (list_amazons3.html) and the S3 API reference's
# "Permissions" section of each operation (HeadObject: s3:GetObject; HeadBucket and
# ListObjects(V2): s3:ListBucket; multipart uploads: s3:PutObject).
_S3_ACTIONS: dict[str, tuple[str, str | None, str]] = {
    "GetObject": ("s3:GetObject", "s3:GetObjectVersion", "object"),
    "HeadObject": ("s3:GetObject", "s3:GetObjectVersion", "object"),
    "GetObjectTagging": ("s3:GetObjectTagging", "s3:GetObjectVersionTagging", "object"),
    "PutObjectTagging": ("s3:PutObjectTagging", "s3:PutObjectVersionTagging", "object"),
    "DeleteObjectTagging": ("s3:DeleteObjectTagging", "s3:DeleteObjectVersionTagging", "object"),
    "GetObjectAcl": ("s3:GetObjectAcl", "s3:GetObjectVersionAcl", "object"),
    "PutObjectAcl": ("s3:PutObjectAcl", "s3:PutObjectVersionAcl", "object"),
    "GetObjectAttributes": ("s3:GetObjectAttributes", "s3:GetObjectVersionAttributes", "object"),
    "GetObjectRetention": ("s3:GetObjectRetention", None, "object"),
    "PutObjectRetention": ("s3:PutObjectRetention", None, "object"),
    "GetObjectLegalHold": ("s3:GetObjectLegalHold", None, "object"),
    "PutObjectLegalHold": ("s3:PutObjectLegalHold", None, "object"),
    "PutObject": ("s3:PutObject", None, "object"),
    "CopyObject": ("s3:PutObject", None, "object"),
    "CreateMultipartUpload": ("s3:PutObject", None, "object"),
    "UploadPart": ("s3:PutObject", None, "object"),
    "UploadPartCopy": ("s3:PutObject", None, "object"),
    "CompleteMultipartUpload": ("s3:PutObject", None, "object"),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload", None, "object"),
    "ListParts": ("s3:ListMultipartUploadParts", None, "object"),
    "DeleteObject": ("s3:DeleteObject", "s3:DeleteObjectVersion", "object"),
    "RestoreObject": ("s3:RestoreObject", None, "object"),
    "ListObjects": ("s3:ListBucket", None, "bucket"),
    "ListObjectsV2": ("s3:ListBucket", None, "bucket"),
    "HeadBucket": ("s3:ListBucket", None, "bucket"),
    "ListObjectVersions": ("s3:ListBucketVersions", None, "bucket"),
    "ListMultipartUploads": ("s3:ListBucketMultipartUploads", None, "bucket"),
    "GetBucketLocation": ("s3:GetBucketLocation", None, "bucket"),
    "CreateBucket": ("s3:CreateBucket", None, "bucket"),
    "DeleteBucket": ("s3:DeleteBucket", None, "bucket"),
    "GetBucketTagging": ("s3:GetBucketTagging", None, "bucket"),
    "PutBucketTagging": ("s3:PutBucketTagging", None, "bucket"),
    "DeleteBucketTagging": ("s3:PutBucketTagging", None, "bucket"),
    "GetBucketPolicy": ("s3:GetBucketPolicy", None, "bucket"),
    "PutBucketPolicy": ("s3:PutBucketPolicy", None, "bucket"),
    "DeleteBucketPolicy": ("s3:DeleteBucketPolicy", None, "bucket"),
    "GetBucketNotificationConfiguration": ("s3:GetBucketNotification", None, "bucket"),
    "PutBucketNotificationConfiguration": ("s3:PutBucketNotification", None, "bucket"),
    "GetBucketVersioning": ("s3:GetBucketVersioning", None, "bucket"),
    "PutBucketVersioning": ("s3:PutBucketVersioning", None, "bucket"),
    "GetBucketLifecycleConfiguration": ("s3:GetLifecycleConfiguration", None, "bucket"),
    "PutBucketLifecycleConfiguration": ("s3:PutLifecycleConfiguration", None, "bucket"),
    "DeleteBucketLifecycle": ("s3:PutLifecycleConfiguration", None, "bucket"),
    "GetBucketEncryption": ("s3:GetEncryptionConfiguration", None, "bucket"),
    "PutBucketEncryption": ("s3:PutEncryptionConfiguration", None, "bucket"),
    "DeleteBucketEncryption": ("s3:PutEncryptionConfiguration", None, "bucket"),
    "GetBucketCors": ("s3:GetBucketCORS", None, "bucket"),
    "PutBucketCors": ("s3:PutBucketCORS", None, "bucket"),
    "DeleteBucketCors": ("s3:PutBucketCORS", None, "bucket"),
    "GetBucketAcl": ("s3:GetBucketAcl", None, "bucket"),
    "PutBucketAcl": ("s3:PutBucketAcl", None, "bucket"),
    "GetBucketOwnershipControls": ("s3:GetBucketOwnershipControls", None, "bucket"),
    "PutBucketOwnershipControls": ("s3:PutBucketOwnershipControls", None, "bucket"),
    "DeleteBucketOwnershipControls": ("s3:PutBucketOwnershipControls", None, "bucket"),
    "GetPublicAccessBlock": ("s3:GetBucketPublicAccessBlock", None, "bucket"),
    "PutPublicAccessBlock": ("s3:PutBucketPublicAccessBlock", None, "bucket"),
    "DeletePublicAccessBlock": ("s3:PutBucketPublicAccessBlock", None, "bucket"),
    "ListBuckets": ("s3:ListAllMyBuckets", None, "account"),
}


def _s3_checks(ctx: gates.RequestContext, principal: Principal) -> list[Check]:
    environ = ctx.environ
    bucket, key = s3_bucket_and_key(environ)
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    version = bool(query.get("versionId", [""])[0])
    request_action = ctx.action or ""
    base = _global_context(principal, ctx.region)
    mapped = _S3_ACTIONS.get(request_action)
    if mapped is None:
        iam_action, level = f"s3:{request_action}", "object" if key else "bucket"
    else:
        iam_action = mapped[1] if version and mapped[1] else mapped[0]
        level = mapped[2]
    bucket_arn = f"arn:{PARTITION}:s3:::{bucket}"
    if level == "account" or not bucket:
        return [Check(iam_action, "*", base)]
    if request_action == "DeleteObjects":
        return _s3_delete_objects(ctx, bucket_arn, base)
    if level == "bucket" or key is None:
        return [Check(iam_action, bucket_arn, base)]
    checks = [Check(iam_action, f"{bucket_arn}/{key}", base)]
    copy_source = environ.get("HTTP_X_AMZ_COPY_SOURCE")
    if copy_source and request_action in ("CopyObject", "UploadPartCopy"):
        source = unquote(copy_source).lstrip("/")
        source_path, _, source_query = source.partition("?")
        source_version = "versionId=" in source_query
        checks.append(Check("s3:GetObjectVersion" if source_version else "s3:GetObject", f"arn:{PARTITION}:s3:::{source_path}", base))
    return checks


def _s3_delete_objects(ctx: gates.RequestContext, bucket_arn: str, base: Context) -> list[Check]:
    # DeleteObjects is authorized per key as s3:DeleteObject (s3:DeleteObjectVersion with a
    # VersionId) - S3 API reference, DeleteObjects "Permissions".
    checks = []
    try:
        root = ET.fromstring(ctx.body() or b"<Delete/>")
    except ET.ParseError:
        return [Check("s3:DeleteObject", f"{bucket_arn}/*", base)]
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Object":
            continue
        key = version = None
        for child in element:
            name = child.tag.rsplit("}", 1)[-1]
            if name == "Key":
                key = child.text or ""
            elif name == "VersionId":
                version = child.text
        if key is not None:
            checks.append(Check("s3:DeleteObjectVersion" if version else "s3:DeleteObject", f"{bucket_arn}/{key}", base))
    return checks


def _s3_missing_object(account: str, bucket: str, key: str) -> bool:
    """Whether ``bucket`` exists in the account and has no current object ``key``."""
    try:
        from moto.s3.models import FakeDeleteMarker, s3_backends

        found = s3_backends[account][PARTITION].buckets.get(bucket)
    except Exception:  # noqa: BLE001 - no S3 backend: nothing to say
        return False
    if found is None:
        return False
    current = found.keys.get(key)
    return current is None or isinstance(current, FakeDeleteMarker)


# -- EBS direct APIs ------------------------------------------------------------------------------


def _ebs_checks(ctx: gates.RequestContext, principal: Principal) -> list[Check]:
    """SAR "Actions, resources, and condition keys for Amazon Elastic Block Store"
    (list_amazonelasticblockstore.html): every action on ``snapshot*``
    (``arn:aws:ec2:<region>::snapshot/<id>``, as in the EBS User Guide's "Permissions for IAM
    users" examples), with ``aws:ResourceTag/<k>``; StartSnapshot also ``aws:RequestTag/<k>``,
    ``aws:TagKeys``, ``ebs:Description``, ``ebs:ParentSnapshot`` (the parent's ARN, compared
    with ``arn:aws:ec2:*::snapshot/*`` in the guide), ``ebs:VolumeSize``, and the dependent
    action ``ec2:CreateTags`` when it carries Tags (the SAR's operations table lists
    ``ec2:CreateTags`` for StartSnapshot; the guide's tag example grants it)."""
    from .ebs_direct import request_snapshot_ids

    operation, ids = request_snapshot_ids(ctx.method, str(ctx.environ.get("PATH_INFO", "")), str(ctx.environ.get("QUERY_STRING", "")))
    action = f"ebs:{ctx.action or operation or 'Unknown'}"
    req = Ec2Request(ctx, principal)
    base = _global_context(principal, ctx.region)

    def snapshot_keys(snapshot_id: str) -> Context:
        existing = req.existing("snapshot", snapshot_id)
        return {k: v for k, v in existing.items() if k.startswith("aws:resourcetag/")}

    def snapshot_arn(snapshot_id: str) -> str:
        return ec2_arn(ctx.region, ctx.account, "snapshot", snapshot_id)

    if (ctx.action or operation) != "StartSnapshot":
        return [Check(action, snapshot_arn(sid), {**base, **snapshot_keys(sid)}) for sid in dict.fromkeys(ids)] or [Check(action, "*", base)]
    try:
        payload = json.loads(ctx.body() or b"{}")
    except ValueError:
        payload = {}
    payload = payload if isinstance(payload, dict) else {}
    raw_tags = payload.get("Tags") if isinstance(payload.get("Tags"), list) else []
    tags = {str(t.get("Key")): str(t.get("Value", "")) for t in raw_tags if isinstance(t, dict) and t.get("Key") is not None}
    keys: Context = {}
    if payload.get("VolumeSize") is not None:
        keys["ebs:volumesize"] = (str(payload["VolumeSize"]),)
    if payload.get("Description"):
        keys["ebs:description"] = (str(payload["Description"]),)
    parent = payload.get("ParentSnapshotId")
    if parent:
        keys["ebs:parentsnapshot"] = (snapshot_arn(str(parent)),)
    request_keys = {**base, **request_tags_context(tags), **keys}
    checks = [Check(action, snapshot_arn("*"), request_keys)]
    if parent:
        # The parent is a resource of the request too (its aws:ResourceTag is a StartSnapshot key).
        checks.append(Check(action, snapshot_arn(str(parent)), {**request_keys, **snapshot_keys(str(parent))}))
    if tags:
        checks.append(Check("ec2:CreateTags", snapshot_arn("*"), {**request_keys, "ec2:createaction": ("StartSnapshot",)}))
    return checks


# -- SNS, SQS, STS, others ------------------------------------------------------------------------


def _sns_checks(ctx: gates.RequestContext, principal: Principal) -> list[Check]:
    # SAR list_amazonsns: Publish and the topic actions on the topic ARN (TopicArn / TargetArn).
    action = ctx.action or ""
    base = _global_context(principal, ctx.region)
    resource = ctx.param("TopicArn") or ctx.param("TargetArn") or ctx.param("ResourceArn")
    if not resource and action == "CreateTopic" and ctx.param("Name"):
        resource = f"arn:{PARTITION}:sns:{ctx.region}:{ctx.account}:{ctx.param('Name')}"
    if not resource and ctx.param("SubscriptionArn"):
        resource = ctx.param("SubscriptionArn").rsplit(":", 1)[0]  # type: ignore[union-attr]
    return [Check(f"sns:{action}", resource or "*", base)]


# SQS Developer Guide, "Amazon SQS API permissions: Actions and resource reference": the batch
# actions are authorized by the single-message actions.
_SQS_BATCH = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}


def _sqs_checks(ctx: gates.RequestContext, principal: Principal) -> list[Check]:
    action = _SQS_BATCH.get(ctx.action or "", ctx.action or "")
    base = _global_context(principal, ctx.region)
    payload: dict[str, Any] = {}
    if "json" in str(ctx.environ.get("CONTENT_TYPE", "")):
        try:
            decoded = json.loads(ctx.body() or b"{}")
            payload = decoded if isinstance(decoded, dict) else {}
        except ValueError:
            payload = {}
    queue_url = payload.get("QueueUrl") or ctx.param("QueueUrl")
    resource = "*"
    if queue_url:
        parsed = urlparse(str(queue_url))
        parts = [p for p in parsed.path.split("/") if p]
        host_region = parsed.hostname.split(".")[1] if parsed.hostname and parsed.hostname.startswith("sqs.") else None
        if len(parts) >= 2:
            resource = f"arn:{PARTITION}:sqs:{host_region or ctx.region}:{parts[-2]}:{parts[-1]}"
    elif action in ("CreateQueue", "GetQueueUrl"):
        name = payload.get("QueueName") or ctx.param("QueueName")
        owner = payload.get("QueueOwnerAWSAccountId") or ctx.param("QueueOwnerAWSAccountId") or ctx.account
        if name:
            resource = f"arn:{PARTITION}:sqs:{ctx.region}:{owner}:{name}"
    return [Check(f"sqs:{action}", resource, base)]


def _sts_checks(ctx: gates.RequestContext, principal: Principal) -> list[Check]:
    action = ctx.action or ""
    if action == "GetCallerIdentity":
        # botocore sts model, GetCallerIdentity: "No permissions are required to perform this
        # operation ... you can still perform this operation."
        return []
    base = _global_context(principal, ctx.region)
    if action in ("AssumeRole", "AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"):
        return [Check(f"sts:{action}", ctx.param("RoleArn") or "*", base)]
    return [Check(f"sts:{action}", "*", base)]


# moto's backend names that are not the IAM service prefix.
_SERVICE_PREFIX = {"elbv2": "elasticloadbalancing", "elb": "elasticloadbalancing", "resourcegroupstaggingapi": "tag"}


def build_checks(ctx: gates.RequestContext, principal: Principal) -> list[Check]:
    service = ctx.service or "unknown"
    if service == "ec2":
        return _ec2_checks(ctx, principal)
    if service == "s3":
        return _s3_checks(ctx, principal)
    if service == "sns":
        return _sns_checks(ctx, principal)
    if service == "sqs":
        return _sqs_checks(ctx, principal)
    if service == "sts":
        return _sts_checks(ctx, principal)
    if service == "ebs":
        return _ebs_checks(ctx, principal)
    prefix = _SERVICE_PREFIX.get(service, service)
    return [Check(f"{prefix}:{ctx.action or 'Unknown'}", "*", _global_context(principal, ctx.region))]


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------


def _deny_response(ctx: gates.RequestContext, principal: Principal, check: Check, decision: Decision) -> Response:
    service = ctx.service or "unknown"
    user = principal.session_arn
    why = (
        "with an explicit deny in an identity-based policy"
        if decision.explicit_deny
        else f"because no identity-based policy allows the {check.action} action"
    )
    message = f"User: {user} is not authorized to perform: {check.action} on resource: {check.resource} {why}"
    if service == "ec2":
        return error_response(service, ctx.method, 403, "UnauthorizedOperation", "You are not authorized to perform this operation. " + message)
    if service == "sns":
        return error_response(service, ctx.method, 403, "AuthorizationError", message)
    if service == "ebs":
        # botocore ebs model: AccessDeniedException (403) with a required Reason
        # (AccessDeniedExceptionReason UNAUTHORIZED_ACCOUNT | DEPENDENCY_ACCESS_DENIED): the
        # caller's own EBS action, or the dependent EC2 action (ec2:CreateTags of the tags).
        from .ebs_direct import EbsError, error_response as ebs_error_response

        reason = "UNAUTHORIZED_ACCOUNT" if check.action.lower().startswith("ebs:") else "DEPENDENCY_ACCESS_DENIED"
        return ebs_error_response(EbsError("AccessDeniedException", 403, message, reason))
    return error_response(service, ctx.method, 403, "AccessDenied", message)


def _deny(ctx: gates.RequestContext, principal: Principal, check: Check, decision: Decision, reason: str | None = None) -> Response:
    _record_denial(
        principal.account,
        {
            "role": principal.role_name,
            "principal": principal.role_arn,
            "request": f"{ctx.service}:{ctx.action}",
            "action": check.action,
            "resource": check.resource,
            "reason": reason or decision.reason(),
            "time": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        },
    )
    return _deny_response(ctx, principal, check, decision)


def iam_gate(ctx: gates.RequestContext) -> Response | None:
    """Evaluate the caller's identity policies, if it has any (see the module docstring)."""
    if ctx.account not in _ROLES:  # the fast path: no restricted role in this account
        return None
    role_arn = ctx.principal_arn
    if not role_arn:
        return None
    arn_account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ctx.account
    principal = Principal(arn_account or ctx.account, role_arn, ctx.access_key)
    entry = get_role(principal.account, principal.role_name)
    if entry is None:
        return None
    try:
        return _authorize(ctx, principal, entry)
    except Exception as exc:  # noqa: BLE001 - fail closed: a restricted caller never passes unchecked
        traceback.print_exc(file=sys.stderr)
        return error_response(ctx.service or "unknown", ctx.method, 500, "InternalFailure", f"ami-pipeline-emulator iam gate: {exc!r}")


def _authorize(ctx: gates.RequestContext, principal: Principal, entry: RoleEntry) -> Response | None:
    checks = build_checks(ctx, principal)
    for check in checks:
        decision = evaluate(entry.for_action(check.action), check.action, check.resource, check.context, action_matched=True)
        if not decision.allowed:
            return _deny(ctx, principal, check, decision)
    _record_tag_writes(principal.account, principal.role_name, checks)
    if ctx.service == "ec2" and ctx.action == "DeregisterImage":
        deregister_snapshot_denials(ctx, principal, entry)
    if ctx.service == "s3" and ctx.action in ("GetObject", "HeadObject"):
        # S3 API reference, GetObject/HeadObject "Permissions": without s3:ListBucket a
        # request for an object that does not exist answers 403 Access Denied, not 404.
        bucket, key = s3_bucket_and_key(ctx.environ)
        if bucket and key and "versionId=" not in ctx.environ.get("QUERY_STRING", "") and _s3_missing_object(ctx.account, bucket, key):
            check = Check("s3:ListBucket", f"arn:{PARTITION}:s3:::{bucket}", _global_context(principal, ctx.region))
            decision = evaluate(entry.for_action(check.action), check.action, check.resource, check.context, action_matched=True)
            if not decision.allowed:
                return _deny(ctx, principal, check, decision, "the object does not exist and s3:ListBucket is not allowed (S3 answers 403, not 404)")
    return None


# ---------------------------------------------------------------------------------------------
# Control API
# ---------------------------------------------------------------------------------------------


def _role_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\w+=,.@-]{1,64}", value):
        raise control.ControlError(400, f"role_name must be an IAM role name (1-64 of [A-Za-z0-9+=,.@_-]), got {value!r}")
    return value


def handle_role_policies(request: Request) -> Response:
    """``/iam/role-policies``: POST replaces a role's policies, GET reads, DELETE removes."""
    if request.method == "POST":
        payload = control._body(request)
        unknown = sorted(set(payload) - {"account_id", "role_name", "policies"})
        if unknown:
            raise control.ControlError(400, f"unknown fields: {unknown}")
        account = control._account(payload)
        role = _role_name(payload.get("role_name"))
        if "policies" not in payload:
            raise control.ControlError(400, "missing field 'policies' (a list of IAM policy documents)")
        try:
            entry = set_role_policies(account, role, payload["policies"])
        except PolicyError as exc:
            raise control.ControlError(400, f"malformed policy: {exc}") from exc
        return control._json(200, {"account_id": account, "role_name": role, "statements": len(entry.statements)})
    args = dict(request.args)
    account = control._account(args)
    role = _role_name(args.get("role_name"))
    if request.method == "DELETE":
        return control._json(200, {"account_id": account, "role_name": role, "removed": delete_role(account, role)})
    entry = get_role(account, role)
    if entry is None:
        raise control.ControlError(404, f"role {role} of account {account} has no policies (it is unrestricted)")
    body: dict[str, Any] = {
        "account_id": account,
        "role_name": role,
        "policies": entry.documents,
        "statements": len(entry.statements),
        "source": entry.source,
    }
    if entry.function:
        body["function"] = entry.function
    return control._json(200, body)


_TEMPLATE_FIELDS = {"account_id", "region", "template_path", "parameters", "resources", "stack_name"}


def handle_template_roles(request: Request) -> Response:
    """``POST /iam/template-roles``: render a SAM template's function roles and register them."""
    payload = control._body(request)
    unknown = sorted(set(payload) - _TEMPLATE_FIELDS)
    if unknown:
        raise control.ControlError(400, f"unknown fields: {unknown} (allowed: {sorted(_TEMPLATE_FIELDS)})")
    account = control._account(payload)
    region = control._region(payload)
    path = payload.get("template_path")
    if not isinstance(path, str) or not path:
        raise control.ControlError(400, "missing field 'template_path' (absolute path of a SAM template)")
    stack_name = payload.get("stack_name") or "ami-pipeline"
    try:
        roles = sam_policies.render_roles(
            path,
            account_id=account,
            region=region,
            parameters=payload.get("parameters") or {},
            resources=payload.get("resources") or {},
            stack_name=str(stack_name),
        )
        compiled = [(role, compile_policies(role.policies)) for role in roles]
    except sam_policies.TemplateError as exc:
        raise control.ControlError(400, str(exc)) from exc
    except PolicyError as exc:
        raise control.ControlError(400, f"the template renders a malformed policy: {exc}") from exc
    answer: dict[str, Any] = {}
    with _LOCK:
        for role, statements in compiled:
            entry = RoleEntry(role.policies, statements, "template-roles", role.function)
            _ROLES.setdefault(account, {})[role.role_name] = entry
            answer[role.role_name] = {"function": role.function, "statements": len(statements)}
    return control._json(200, {"account_id": account, "region": region, "roles": answer})


def handle_tag_writes(request: Request) -> Response:
    """``/iam/tag-writes``: GET the tag keys each restricted role of the account was allowed to
    write, by EC2 resource type (``{"account_id", "roles": {role: {"image": [keys], ...}}}``);
    DELETE clears them."""
    account = control._account(dict(request.args))
    if request.method == "DELETE":
        return control._json(200, {"account_id": account, "cleared": clear_tag_writes(account)})
    return control._json(200, {"account_id": account, "roles": tag_writes(account)})


def handle_denials(request: Request) -> Response:
    """``/iam/denials``: GET the account's denied requests (oldest first), DELETE clears."""
    account = control._account(dict(request.args))
    if request.method == "DELETE":
        return control._json(200, {"account_id": account, "cleared": clear_denials(account)})
    return control._json(200, {"account_id": account, "denials": denials(account)})


_installed = False


def install() -> None:
    """Register the ``iam`` gate, the control routes and the reset hook (once)."""
    global _installed
    if _installed:
        return
    gates.register("iam", iam_gate)
    control.register_route("iam/role-policies", ("GET", "POST", "DELETE"), handle_role_policies)
    control.register_route("iam/template-roles", ("POST",), handle_template_roles)
    control.register_route("iam/denials", ("GET", "DELETE"), handle_denials)
    control.register_route("iam/tag-writes", ("GET", "DELETE"), handle_tag_writes)
    control.register_reset(reset)
    _installed = True
