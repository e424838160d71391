"""A SAM template -> the identity policies of each function's generated IAM role.

Owns the rendering behind ``POST /ami-pipeline-emulator/iam/template-roles`` (``ami_emulator.iam``
registers the results): for every ``AWS::Serverless::Function`` with logical id ``X`` (and no
``Role`` property) SAM creates the role ``XRole`` and attaches to it

* the managed policy ``AWSLambdaBasicExecutionRole`` (``samtranslator/model/sam_resources.py``,
  ``_construct_role``: ``managed_policy_arns = [...service-role/AWSLambdaBasicExecutionRole]``);
  its document, from https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaBasicExecutionRole.html:
  ``logs:CreateLogGroup``, ``logs:CreateLogStream``, ``logs:PutLogEvents`` on ``*``;
* one inline policy per entry of ``Policies`` (``role_constructor.construct_role_for_resource``):
  an inline document (a map with ``Statement``), a SAM policy template (a map whose single key
  is a template name, expanded as ``samtranslator/policy_templates_data/policy_templates.json``
  defines it, ``POLICY_TEMPLATES`` below), or a managed policy name/ARN (only
  ``AWSLambdaBasicExecutionRole`` is known here);
* for ``EventInvokeConfig.DestinationConfig.OnSuccess|OnFailure`` (function or ``Globals``):
  ``sqs:SendMessage`` (Type SQS), ``sns:publish`` (SNS), ``events:PutEvents`` (EventBridge),
  ``lambda:InvokeFunction`` (Lambda) or ``s3:PutObject`` + ``s3:ListBucket`` (S3Bucket) on the
  destination (``IAMRolePolicies.sqs_send_message_role_policy`` & co. in ``model/iam.py``);
* for ``DeadLetterQueue``: ``sqs:SendMessage`` / ``sns:Publish`` on its ``TargetArn``
  (``IAMRolePolicies.dead_letter_queue_policy``).

What SAM would add and this module cannot express is refused (``TemplateError`` -> HTTP 400)
rather than silently left out: ``Tracing`` other than ``Disabled`` (AWSXrayWriteOnlyAccess),
``VpcConfig`` (AWSLambdaVPCAccessExecutionRole), ``PermissionsBoundary``, ``DurableConfig``,
event sources whose role policies are AWS managed policies (SQS, Kinesis, DynamoDB, MSK, MQ,
SelfManagedKafka, DocumentDB), ``AWS::Serverless::Connector`` resources, managed policies other
than AWSLambdaBasicExecutionRole.

The template is rendered as CloudFormation would deploy it in one account and region: the
parameters given (the rest take their ``Default``), pseudo parameters, ``Conditions``, and the
physical ids / attributes of the resources the caller names in ``resources``. Intrinsics:
``Ref``, ``Fn::GetAtt``, ``Fn::Sub`` (both forms), ``Fn::If``, ``Fn::Equals``, ``Fn::Not``,
``Fn::And``, ``Fn::Or``, ``Condition``, ``Fn::Split``, ``Fn::Join``, ``Fn::Select``,
``Fn::FindInMap``, ``AWS::NoValue``; YAML short forms (``!Ref``, ``!Sub``, ``!GetAtt A.B``, ...).
Only what the roles need is rendered (``Policies``, ``EventInvokeConfig``, ``DeadLetterQueue``,
the conditions they use), so an unresolvable ``Outputs`` entry does not matter.
"""

from __future__ import annotations

import copy
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import yaml


class TemplateError(ValueError):
    """A template (or request) that cannot be rendered; the message says what and where."""


# ---------------------------------------------------------------------------------------------
# SAM data
# ---------------------------------------------------------------------------------------------

# https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaBasicExecutionRole.html
# ("JSON policy document", policy version v1).
BASIC_EXECUTION_ROLE: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }
    ],
}
MANAGED_POLICIES: dict[str, dict[str, Any]] = {
    "AWSLambdaBasicExecutionRole": BASIC_EXECUTION_ROLE,
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": BASIC_EXECUTION_ROLE,
}


def _sub(pattern: str, **names: str) -> dict[str, Any]:
    return {"Fn::Sub": [pattern, {var: {"Ref": param} for var, param in names.items()}]}


# SAM policy templates, each "Definition" as samtranslator/policy_templates_data/
# policy_templates.json (aws/serverless-application-model) defines it; "Parameters" are the
# names the template must be given. Only the templates below are known; another name is
# refused (HTTP 400) instead of being guessed.
POLICY_TEMPLATES: dict[str, dict[str, Any]] = {
    "S3ReadPolicy": {
        "Parameters": ["BucketName"],
        "Definition": {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": [
                        "s3:GetObject",
                        "s3:ListBucket",
                        "s3:GetBucketLocation",
                        "s3:GetObjectVersion",
                        "s3:GetLifecycleConfiguration",
                    ],
                    "Resource": [
                        _sub("arn:${AWS::Partition}:s3:::${bucketName}", bucketName="BucketName"),
                        _sub("arn:${AWS::Partition}:s3:::${bucketName}/*", bucketName="BucketName"),
                    ],
                }
            ]
        },
    },
    "S3WritePolicy": {
        "Parameters": ["BucketName"],
        "Definition": {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:PutObjectAcl", "s3:PutLifecycleConfiguration"],
                    "Resource": [
                        _sub("arn:${AWS::Partition}:s3:::${bucketName}", bucketName="BucketName"),
                        _sub("arn:${AWS::Partition}:s3:::${bucketName}/*", bucketName="BucketName"),
                    ],
                }
            ]
        },
    },
    "S3CrudPolicy": {
        "Parameters": ["BucketName"],
        "Definition": {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": [
                        "s3:GetObject",
                        "s3:ListBucket",
                        "s3:GetBucketLocation",
                        "s3:GetObjectVersion",
                        "s3:PutObject",
                        "s3:PutObjectAcl",
                        "s3:GetLifecycleConfiguration",
                        "s3:PutLifecycleConfiguration",
                        "s3:DeleteObject",
                    ],
                    "Resource": [
                        _sub("arn:${AWS::Partition}:s3:::${bucketName}", bucketName="BucketName"),
                        _sub("arn:${AWS::Partition}:s3:::${bucketName}/*", bucketName="BucketName"),
                    ],
                }
            ]
        },
    },
    "SNSPublishMessagePolicy": {
        "Parameters": ["TopicName"],
        "Definition": {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["sns:Publish"],
                    "Resource": _sub(
                        "arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${topicName}",
                        topicName="TopicName",
                    ),
                }
            ]
        },
    },
    "SNSCrudPolicy": {
        "Parameters": ["TopicName"],
        "Definition": {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": [
                        "sns:ListSubscriptionsByTopic",
                        "sns:CreateTopic",
                        "sns:SetTopicAttributes",
                        "sns:Subscribe",
                        "sns:Publish",
                    ],
                    "Resource": _sub(
                        "arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${topicName}*",
                        topicName="TopicName",
                    ),
                }
            ]
        },
    },
    "SQSSendMessagePolicy": {
        "Parameters": ["QueueName"],
        "Definition": {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["sqs:SendMessage*"],
                    "Resource": _sub(
                        "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${queueName}",
                        queueName="QueueName",
                    ),
                }
            ]
        },
    },
    "SQSPollerPolicy": {
        "Parameters": ["QueueName"],
        "Definition": {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": [
                        "sqs:ChangeMessageVisibility",
                        "sqs:ChangeMessageVisibilityBatch",
                        "sqs:DeleteMessage",
                        "sqs:DeleteMessageBatch",
                        "sqs:GetQueueAttributes",
                        "sqs:ReceiveMessage",
                    ],
                    "Resource": _sub(
                        "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${queueName}",
                        queueName="QueueName",
                    ),
                }
            ]
        },
    },
    "EC2DescribePolicy": {
        "Parameters": [],
        "Definition": {
            "Statement": [
                {"Effect": "Allow", "Action": ["ec2:DescribeRegions", "ec2:DescribeInstances"], "Resource": "*"}
            ]
        },
    },
    "AMIDescribePolicy": {
        "Parameters": [],
        "Definition": {"Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeImages"], "Resource": "*"}]},
    },
}

# EventInvokeConfig destination Type -> the statements SAM adds (model/iam.py IAMRolePolicies).
_DESTINATION_STATEMENTS: dict[str, list[str]] = {
    "SQS": ["sqs:SendMessage"],
    "SNS": ["sns:publish"],
    "EventBridge": ["events:PutEvents"],
    "Lambda": ["lambda:InvokeFunction"],
}
# DeadLetterQueue Type -> action (sam_resources.py, dead_letter_queue_policy_actions).
_DLQ_ACTIONS = {"SQS": "sqs:SendMessage", "SNS": "sns:Publish"}
# Event source types whose role permissions SAM grants through AWS managed policies (whose
# documents are not modelled here).
_MANAGED_POLICY_EVENTS = {"SQS", "Kinesis", "DynamoDB", "MSK", "MQ", "SelfManagedKafka", "DocumentDB"}

PSEUDO_PARAMETERS = ("AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::StackName", "AWS::URLSuffix")
_NO_VALUE = object()


# ---------------------------------------------------------------------------------------------
# YAML with CloudFormation short forms
# ---------------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns ``!Ref x`` into ``{"Ref": "x"}``, ``!GetAtt A.B`` into
    ``{"Fn::GetAtt": ["A", "B"]}`` and every other ``!Fn`` into ``{"Fn::Fn": value}``."""


def _construct_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)

# (path, mtime_ns, size) -> parsed template; re-read when the file changes.
_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}
_CACHE_LOCK = threading.Lock()


def load_template(path: str) -> dict[str, Any]:
    """The parsed template at ``path`` (cached per file version). TemplateError if unreadable."""
    if not os.path.isabs(path):
        raise TemplateError(f"template_path must be an absolute path, got {path!r}")
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise TemplateError(f"template_path {path!r}: {exc.strerror}") from exc
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        with open(path, encoding="utf-8") as handle:
            parsed = yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"template_path {path!r} is not a readable YAML/JSON template: {exc}") from exc
    if not isinstance(parsed, dict) or not isinstance(parsed.get("Resources"), dict):
        raise TemplateError(f"template_path {path!r} has no Resources map")
    with _CACHE_LOCK:
        for old in [k for k in _CACHE if k[0] == path]:
            del _CACHE[old]
        _CACHE[key] = parsed
    return parsed


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass
class RenderedRole:
    role_name: str
    function: str
    policies: list[dict[str, Any]]

    @property
    def statements(self) -> int:
        return sum(len(_statement_list(p)) for p in self.policies)


def _statement_list(document: dict[str, Any]) -> list[Any]:
    statements = document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


_SUB_VAR = re.compile(r"\$\{([^}]*)\}")


class Renderer:
    """One rendering of a parsed template for one account, region and set of inputs."""

    def __init__(
        self,
        template: dict[str, Any],
        *,
        account_id: str,
        region: str,
        parameters: dict[str, Any],
        resources: dict[str, dict[str, Any]],
        stack_name: str = "ami-pipeline",
    ) -> None:
        self.template = template
        self.account_id = account_id
        self.region = region
        self.partition = "aws"
        self.stack_name = stack_name
        self.resources = resources
        self.declared = template.get("Parameters") or {}
        if not isinstance(self.declared, dict):
            raise TemplateError("the template's Parameters is not a map")
        unknown = sorted(set(parameters) - set(self.declared))
        if unknown:
            # CloudFormation: "Parameters: [X] do not exist in the template" (ValidationError).
            raise TemplateError(f"parameters {unknown} do not exist in the template")
        self.parameters = {name: self._parameter_value(name, value) for name, value in parameters.items()}
        self.conditions = template.get("Conditions") or {}
        self._condition_values: dict[str, bool] = {}
        self._evaluating: set[str] = set()

    # -- parameters and references ----------------------------------------------------------

    def _parameter_value(self, name: str, value: Any) -> Any:
        declared = self.declared.get(name) or {}
        ptype = str(declared.get("Type", "String"))
        if isinstance(value, list):
            return [str(v) for v in value]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None:
            raise TemplateError(f"parameter {name} is null")
        else:
            text = str(value)
        if ptype == "CommaDelimitedList" or ptype.startswith("List<"):
            return [part.strip() for part in text.split(",")] if text else []
        return text

    def _parameter(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        declared = self.declared.get(name)
        if not isinstance(declared, dict) or "Default" not in declared:
            raise TemplateError(f"parameter {name} has no value and no Default in the template")
        value = self._parameter_value(name, declared["Default"])
        self.parameters[name] = value
        return value

    def _pseudo(self, name: str) -> Any:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": self.partition,
            "AWS::StackName": self.stack_name,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:{self.partition}:cloudformation:{self.region}:{self.account_id}:stack/"
            f"{self.stack_name}/00000000-0000-0000-0000-000000000000",
        }[name]

    def _resource_type(self, logical_id: str) -> str | None:
        resource = (self.template.get("Resources") or {}).get(logical_id)
        return str(resource.get("Type")) if isinstance(resource, dict) else None

    def _resource_entry(self, logical_id: str, wanted: str) -> dict[str, Any]:
        rtype = self._resource_type(logical_id)
        if rtype is None:
            raise TemplateError(f"unresolved reference: {logical_id} is neither a parameter nor a resource of the template")
        entry = self.resources.get(logical_id)
        if not isinstance(entry, dict):
            hint = "Ref" if wanted == "Ref" else wanted.rsplit(" ", 1)[-1]
            raise TemplateError(
                f"resource {logical_id} ({rtype}) is referenced ({wanted}) but not given in 'resources': "
                f'add "{logical_id}": {{"{hint}": "..."}}'
            )
        return entry

    def ref(self, name: str, scope: dict[str, Any] | None = None) -> Any:
        if scope and name in scope:
            return scope[name]
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name.startswith("AWS::"):
            try:
                return self._pseudo(name)
            except KeyError as exc:
                raise TemplateError(f"pseudo parameter {name} is not supported") from exc
        if name in self.declared:
            return self._parameter(name)
        entry = self._resource_entry(name, "Ref")
        if entry.get("Ref") in (None, ""):
            raise TemplateError(f"resource {name} ({self._resource_type(name)}): 'resources' gives no Ref")
        return entry["Ref"]

    def get_att(self, logical_id: str, attribute: str) -> Any:
        entry = self._resource_entry(logical_id, f"Fn::GetAtt {attribute}")
        if entry.get(attribute) not in (None, ""):
            return entry[attribute]
        rtype = self._resource_type(logical_id)
        ref = entry.get("Ref")
        # Attributes that follow from the physical id (the resource types' "Return values").
        if rtype == "AWS::S3::Bucket" and ref and attribute == "Arn":
            return f"arn:{self.partition}:s3:::{ref}"
        if rtype == "AWS::SNS::Topic" and ref and attribute == "TopicArn":
            return ref
        if rtype == "AWS::SNS::Topic" and ref and attribute == "TopicName":
            return str(ref).rsplit(":", 1)[-1]
        if rtype == "AWS::SQS::Queue" and attribute == "QueueName" and entry.get("Arn"):
            return str(entry["Arn"]).rsplit(":", 1)[-1]
        raise TemplateError(
            f"resource {logical_id} ({rtype}): Fn::GetAtt {attribute} is not in 'resources' and cannot be derived; "
            f'add "{logical_id}": {{"{attribute}": "..."}}'
        )

    # -- conditions ---------------------------------------------------------------------------

    def condition(self, name: str) -> bool:
        if name in self._condition_values:
            return self._condition_values[name]
        if name not in self.conditions:
            raise TemplateError(f"condition {name} is not defined in Conditions")
        if name in self._evaluating:
            raise TemplateError(f"condition {name} refers to itself")
        self._evaluating.add(name)
        try:
            value = self._truth(self.conditions[name], f"condition {name}")
        finally:
            self._evaluating.discard(name)
        self._condition_values[name] = value
        return value

    def _truth(self, node: Any, where: str) -> bool:
        if isinstance(node, dict) and len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Condition":
                return self.condition(str(arg))
            if fn == "Fn::Equals":
                if not isinstance(arg, list) or len(arg) != 2:
                    raise TemplateError(f"{where}: Fn::Equals takes two values")
                left, right = (self.resolve(v) for v in arg)
                return _text(left) == _text(right)
            if fn == "Fn::Not":
                items = arg if isinstance(arg, list) else [arg]
                if len(items) != 1:
                    raise TemplateError(f"{where}: Fn::Not takes one condition")
                return not self._truth(items[0], where)
            if fn in ("Fn::And", "Fn::Or"):
                if not isinstance(arg, list) or not 2 <= len(arg) <= 10:
                    raise TemplateError(f"{where}: {fn} takes 2 to 10 conditions")
                values = [self._truth(item, where) for item in arg]
                return all(values) if fn == "Fn::And" else any(values)
        if isinstance(node, bool):
            return node
        raise TemplateError(f"{where}: not a condition function: {node!r}")

    # -- intrinsics ---------------------------------------------------------------------------

    def resolve(self, node: Any, scope: dict[str, Any] | None = None) -> Any:
        """``node`` with every intrinsic evaluated; ``AWS::NoValue`` entries dropped."""
        if isinstance(node, list):
            out = [self.resolve(item, scope) for item in node]
            return [item for item in out if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(str(self.resolve(arg, scope)), scope)
            if key.startswith("Fn::") or key == "Condition":
                return self._function(key, arg, scope)
        out_map = {}
        for key, value in node.items():
            resolved = self.resolve(value, scope)
            if resolved is not _NO_VALUE:
                out_map[key] = resolved
        return out_map

    def _function(self, fn: str, arg: Any, scope: dict[str, Any] | None) -> Any:
        if fn == "Fn::GetAtt":
            if isinstance(arg, str):
                resource, _, attribute = arg.partition(".")
            elif isinstance(arg, list) and len(arg) == 2:
                resource, attribute = (str(self.resolve(v, scope)) for v in arg)
            else:
                raise TemplateError(f"Fn::GetAtt takes [resource, attribute], got {arg!r}")
            return self.get_att(resource, attribute)
        if fn == "Fn::Sub":
            return self._substitute(arg, scope)
        if fn == "Fn::If":
            if not isinstance(arg, list) or len(arg) != 3:
                raise TemplateError(f"Fn::If takes [condition, value if true, value if false], got {arg!r}")
            chosen = arg[1] if self.condition(str(arg[0])) else arg[2]
            return self.resolve(chosen, scope)
        if fn == "Fn::Split":
            if not isinstance(arg, list) or len(arg) != 2:
                raise TemplateError(f"Fn::Split takes [delimiter, string], got {arg!r}")
            delimiter, text = str(arg[0]), self.resolve(arg[1], scope)
            return str(text).split(delimiter)
        if fn == "Fn::Join":
            if not isinstance(arg, list) or len(arg) != 2:
                raise TemplateError(f"Fn::Join takes [delimiter, list], got {arg!r}")
            values = self.resolve(arg[1], scope)
            if not isinstance(values, list):
                raise TemplateError(f"Fn::Join: the second argument is not a list: {values!r}")
            return str(arg[0]).join(_text(v) for v in values)
        if fn == "Fn::Select":
            if not isinstance(arg, list) or len(arg) != 2:
                raise TemplateError(f"Fn::Select takes [index, list], got {arg!r}")
            index, values = self.resolve(arg[0], scope), self.resolve(arg[1], scope)
            try:
                return values[int(index)]
            except (TypeError, ValueError, IndexError) as exc:
                raise TemplateError(f"Fn::Select: index {index!r} out of {values!r}") from exc
        if fn == "Fn::FindInMap":
            if not isinstance(arg, list) or len(arg) not in (3, 4):
                raise TemplateError(f"Fn::FindInMap takes [map, key, key], got {arg!r}")
            name, top, second = (str(self.resolve(v, scope)) for v in arg[:3])
            try:
                return self.resolve(self.template["Mappings"][name][top][second], scope)
            except (KeyError, TypeError) as exc:
                if len(arg) == 4 and isinstance(arg[3], dict) and "DefaultValue" in arg[3]:
                    return self.resolve(arg[3]["DefaultValue"], scope)
                raise TemplateError(f"Fn::FindInMap: no {name}/{top}/{second} in Mappings") from exc
        if fn in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition"):
            return self._truth({fn: arg}, fn)
        raise TemplateError(f"intrinsic function {fn} is not supported")

    def _substitute(self, arg: Any, scope: dict[str, Any] | None) -> str:
        if isinstance(arg, str):
            text, variables = arg, {}
        elif isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and isinstance(arg[1], dict):
            text = arg[0]
            variables = {name: self.resolve(value, scope) for name, value in arg[1].items()}
        else:
            raise TemplateError(f"Fn::Sub takes a string or [string, {{variables}}], got {arg!r}")

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"  # ${!Literal} -> ${Literal}
            if name in variables:
                return _text(variables[name])
            if "." in name and not name.startswith("AWS::"):
                resource, _, attribute = name.partition(".")
                return _text(self.get_att(resource, attribute))
            value = self.ref(name, scope)
            if value is _NO_VALUE:
                raise TemplateError(f"Fn::Sub: ${{{name}}} is AWS::NoValue")
            return _text(value)

        return _SUB_VAR.sub(replace, text)

    # -- SAM roles ----------------------------------------------------------------------------

    def function_roles(self) -> list[RenderedRole]:
        resources = self.template.get("Resources") or {}
        globals_function = ((self.template.get("Globals") or {}).get("Function")) or {}
        for logical_id, resource in resources.items():
            if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Connector":
                raise TemplateError(f"{logical_id}: AWS::Serverless::Connector adds role policies; not supported")
        roles = []
        for logical_id, resource in resources.items():
            if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
                continue
            if "Condition" in resource and not self.condition(str(resource["Condition"])):
                continue  # the function (and its role) is not created
            properties = _merge_globals(globals_function, resource.get("Properties") or {})
            if properties.get("Role") is not None:
                continue  # SAM creates no role when the function names one
            roles.append(RenderedRole(f"{logical_id}Role", logical_id, self._role_policies(logical_id, properties)))
        return roles

    def _role_policies(self, function: str, properties: dict[str, Any]) -> list[dict[str, Any]]:
        where = f"{function}"
        for unsupported in ("VpcConfig", "PermissionsBoundary", "DurableConfig", "Connectors"):
            if properties.get(unsupported) is not None:
                raise TemplateError(f"{where}: {unsupported} changes the generated role; not supported")
        tracing = properties.get("Tracing")
        if tracing is not None and self.resolve(tracing) != "Disabled":
            raise TemplateError(f"{where}: Tracing adds AWSXrayWriteOnlyAccess to the role; not supported")
        for event_name, event in (properties.get("Events") or {}).items():
            if isinstance(event, dict) and event.get("Type") in _MANAGED_POLICY_EVENTS:
                raise TemplateError(
                    f"{where}: event {event_name} of Type {event['Type']} adds an AWS managed policy to the role; not supported"
                )
        documents: list[dict[str, Any]] = [copy.deepcopy(BASIC_EXECUTION_ROLE)]
        dlq = properties.get("DeadLetterQueue")
        if dlq is not None:
            dlq = self.resolve(dlq)
            action = _DLQ_ACTIONS.get(str(dlq.get("Type"))) if isinstance(dlq, dict) else None
            if action is None or not dlq.get("TargetArn"):
                raise TemplateError(f"{where}: DeadLetterQueue needs Type SQS|SNS and TargetArn")
            documents.append({"Version": "2012-10-17", "Statement": [{"Action": action, "Resource": dlq["TargetArn"], "Effect": "Allow"}]})
        documents.extend(self._event_invoke_policies(function, properties.get("EventInvokeConfig")))
        policies = properties.get("Policies")
        if policies is not None:
            entries = policies if isinstance(policies, list) else [policies]
            for index, entry in enumerate(entries):
                document = self._policy_entry(f"{where} Policies[{index}]", entry)
                if document is not None and document is not BASIC_EXECUTION_ROLE:
                    documents.append(document)
        for document in documents:
            leftover = _leftover_intrinsic(document)
            if leftover:
                raise TemplateError(f"{where}: unresolved {leftover} in a rendered policy")
        return documents

    def _event_invoke_policies(self, function: str, config: Any) -> list[dict[str, Any]]:
        if not config:
            return []
        destinations = (config.get("DestinationConfig") or {}) if isinstance(config, dict) else {}
        out = []
        for outcome in ("OnSuccess", "OnFailure"):
            destination = destinations.get(outcome)
            if not destination:
                continue
            dtype = str(self.resolve(destination.get("Type")))
            if dtype not in _DESTINATION_STATEMENTS and dtype != "S3Bucket":
                raise TemplateError(f"{function}: EventInvokeConfig {outcome} Type {dtype!r} is not SQS|SNS|EventBridge|Lambda|S3Bucket")
            if destination.get("Destination") is None:
                raise TemplateError(
                    f"{function}: EventInvokeConfig {outcome} without Destination (SAM creates a queue/topic); "
                    "not supported, give the Destination"
                )
            arn = self.resolve(destination["Destination"])
            if arn is _NO_VALUE:
                continue
            if dtype == "S3Bucket":
                statements = [
                    {"Action": "s3:PutObject", "Effect": "Allow", "Resource": f"{arn}/*"},
                    {"Action": "s3:ListBucket", "Effect": "Allow", "Resource": arn},
                ]
            else:
                statements = [{"Action": action, "Effect": "Allow", "Resource": arn} for action in _DESTINATION_STATEMENTS[dtype]]
            out.append({"Statement": statements})
        return out

    def _policy_entry(self, where: str, entry: Any) -> dict[str, Any] | None:
        # Fn::If around an entry: pick the branch first (AWS::NoValue drops the entry).
        resolved_if = entry
        while isinstance(resolved_if, dict) and set(resolved_if) == {"Fn::If"}:
            arg = resolved_if["Fn::If"]
            if not isinstance(arg, list) or len(arg) != 3:
                raise TemplateError(f"{where}: Fn::If takes three arguments")
            resolved_if = arg[1] if self.condition(str(arg[0])) else arg[2]
            if resolved_if == {"Ref": "AWS::NoValue"}:
                return None
        entry = resolved_if
        if isinstance(entry, str):
            if entry in MANAGED_POLICIES:
                return MANAGED_POLICIES[entry]
            raise TemplateError(f"{where}: managed policy {entry!r}: its document is not known here (only AWSLambdaBasicExecutionRole)")
        if not isinstance(entry, dict):
            raise TemplateError(f"{where}: not a policy: {entry!r}")
        if "Statement" in entry:
            document = self.resolve(entry)
            if not isinstance(document, dict):
                raise TemplateError(f"{where}: not a policy document")
            return document
        if len(entry) == 1:
            (name, values), = entry.items()
            template = POLICY_TEMPLATES.get(name)
            if template is None:
                raise TemplateError(
                    f"{where}: unknown SAM policy template {name!r} (known: {', '.join(sorted(POLICY_TEMPLATES))})"
                )
            values = values or {}
            if not isinstance(values, dict):
                raise TemplateError(f"{where}: {name} takes a map of parameters")
            missing = [p for p in template["Parameters"] if p not in values]
            if missing:
                raise TemplateError(f"{where}: {name}: missing parameter values {missing}")
            scope = {param: self.resolve(values[param]) for param in template["Parameters"]}
            document = self.resolve(copy.deepcopy(template["Definition"]), scope)
            return {"Version": "2012-10-17", **document}
        raise TemplateError(f"{where}: not a policy document, managed policy or SAM policy template: {entry!r}")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def _merge_globals(global_props: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """SAM's Globals merge: maps merge key by key (the function's value wins), lists are
    concatenated, anything else is overridden by the function."""
    merged = copy.deepcopy(global_props)
    for key, value in local.items():
        if key in merged and isinstance(merged[key], dict) and isinstance(value, dict) and not _is_intrinsic(value):
            merged[key] = _merge_globals(merged[key], value)
        elif key in merged and isinstance(merged[key], list) and isinstance(value, list):
            merged[key] = merged[key] + value
        else:
            merged[key] = value
    return merged


def _is_intrinsic(value: dict[str, Any]) -> bool:
    return len(value) == 1 and next(iter(value)) in ("Ref", "Condition") or any(k.startswith("Fn::") for k in value)


def _leftover_intrinsic(node: Any) -> str | None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" or key.startswith("Fn::"):
                return key
            found = _leftover_intrinsic(value)
            if found:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _leftover_intrinsic(item)
            if found:
                return found
    elif isinstance(node, str) and "${" in node:
        return f"${{...}} in {node!r}"
    return None


def render_roles(
    template_path: str,
    *,
    account_id: str,
    region: str,
    parameters: dict[str, Any] | None = None,
    resources: dict[str, dict[str, Any]] | None = None,
    stack_name: str = "ami-pipeline",
) -> list[RenderedRole]:
    """Every function role of the template at ``template_path`` with its policy documents."""
    if parameters is not None and not isinstance(parameters, dict):
        raise TemplateError("parameters must be a map of parameter name -> value")
    if resources is not None and (
        not isinstance(resources, dict) or not all(isinstance(v, dict) for v in resources.values())
    ):
        raise TemplateError('resources must be a map of logical id -> {"Ref": ..., "<Attribute>": ...}')
    renderer = Renderer(
        load_template(template_path),
        account_id=account_id,
        region=region,
        parameters=dict(parameters or {}),
        resources=dict(resources or {}),
        stack_name=stack_name,
    )
    return renderer.function_roles()
