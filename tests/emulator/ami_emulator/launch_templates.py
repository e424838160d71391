"""Launch template extensions: DescribeLaunchTemplateVersions and DescribeLaunchTemplates
paging, the account-wide ``$Latest``/``$Default`` form and version filters.

Plain moto 5.2.5 silently cuts both answers at 15 items (no NextToken), ignores ``NextToken`` and
the version ``Filters``, accepts version numbers next to ``$Latest``/``$Default`` in the
account-wide form, lists a version twice when it is both ``$Latest`` and ``$Default``, and treats
version ``0`` as the latest one.

  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeLaunchTemplateVersions.html
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeLaunchTemplates.html
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound
from moto.ec2.utils import simple_aws_filter_to_re

from .common import LOCK, as_bool, as_list, client_error, filters_param, iso_millis, paginate
from .filter_names import not_implemented
from .filter_names import serve as serve_filters

# The text moto uses (and AWS returns, judging by its CLI wording) when the account-wide form is
# called without versions or with version numbers.
ACCOUNT_WIDE_RULE = (
    "To describe the launch template data for all your launch templates, for \u2018--versions\u2019 "
    "specify \u2018$Latest\u2019, \u2018$Default\u2019, or both, and omit \u2018--launch-template-id\u2019, "
    "\u2018--launch-template-name\u2019, and version numbers. To describe the launch template data for a "
    "specific launch template, specify \u2018--launch-template-id\u2019 or \u2018--launch-template-name\u2019, "
    "and for \u2018--versions\u2019 specify one or more of the following values: \u2018$Latest\u2019, "
    "\u2018$Default\u2019, or one or more version numbers."
)

MAX_RESULTS_MIN = 1
MAX_RESULTS_MAX = 200  # "This value can be between 1 and 200." (both operations)


def _template(backend: Any, name: Any, template_id: Any) -> Any:
    if template_id:
        return backend.get_launch_template(str(template_id))
    return backend.get_launch_template_by_name(str(name))


def _version(template: Any, wanted: str) -> Any:
    """``$Latest``, ``$Default`` (any case) or a version number of ``template``."""
    lowered = wanted.lower()
    if lowered == "$latest":
        return template.latest_version()
    if lowered == "$default":
        return template.default_version()
    try:
        number = int(wanted)
    except ValueError:
        number = 0
    if number < 1 or number > len(template.versions):
        raise InvalidLaunchTemplateVersionNotFound(template_id=template.id, version=wanted)
    return template.versions[number - 1]


def _int_param(value: Any, parameter: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise client_error(
            "InvalidParameterValue", f"Value ({value}) for parameter {parameter} is invalid."
        ) from exc


def _bool_text(value: Any) -> str:
    return "true" if as_bool(value, False) else "false"


def _version_filter_value(template: Any, version: Any, name: str) -> Any:
    """Filters of API_DescribeLaunchTemplateVersions, read from the version's LaunchTemplateData."""
    data = version.data or {}
    metadata = data.get("MetadataOptions") or {}
    profile = data.get("IamInstanceProfile") or {}
    placement = data.get("Placement") or {}
    getters = {
        "create-time": lambda: iso_millis(version.create_time)
        if isinstance(version.create_time, _dt.datetime)
        else str(version.create_time),
        "ebs-optimized": lambda: _bool_text(data.get("EbsOptimized")),
        "http-endpoint": lambda: metadata.get("HttpEndpoint") or "",
        "http-protocol-ipv4": lambda: metadata.get("HttpProtocolIpv4") or "",
        "http-tokens": lambda: metadata.get("HttpTokens") or "",
        "host-resource-group-arn": lambda: placement.get("HostResourceGroupArn") or "",
        "iam-instance-profile": lambda: profile.get("Arn") or profile.get("Name") or "",
        "image-id": lambda: data.get("ImageId") or "",
        "instance-type": lambda: data.get("InstanceType") or "",
        "is-default-version": lambda: "true" if template.is_default(version) else "false",
        "kernel-id": lambda: data.get("KernelId") or "",
        "license-configuration-arn": lambda: [
            lc.get("LicenseConfigurationArn") for lc in as_list(data.get("LicenseSpecifications")) if isinstance(lc, dict)
        ],
        "network-card-index": lambda: [
            str(ni.get("NetworkCardIndex"))
            for ni in as_list(data.get("NetworkInterfaces"))
            if isinstance(ni, dict) and ni.get("NetworkCardIndex") is not None
        ],
        "ram-disk-id": lambda: data.get("RamDiskId") or "",
    }
    if name not in getters:
        raise not_implemented("DescribeLaunchTemplateVersions", name)
    return getters[name]()


# Every filter DescribeLaunchTemplateVersions documents (botocore model), all applied above.
VERSION_FILTERS = (
    "create-time",
    "ebs-optimized",
    "http-endpoint",
    "http-protocol-ipv4",
    "http-tokens",
    "host-resource-group-arn",
    "iam-instance-profile",
    "image-id",
    "instance-type",
    "is-default-version",
    "kernel-id",
    "license-configuration-arn",
    "network-card-index",
    "ram-disk-id",
)


def _matches(template: Any, version: Any, filters: dict[str, list[str]]) -> bool:
    for name, values in filters.items():
        actual = _version_filter_value(template, version, name)
        candidates = actual if isinstance(actual, list) else [actual]
        patterns = [re.compile(simple_aws_filter_to_re(v)) for v in values]
        if not any(p.match(str(c)) for p in patterns for c in candidates if c is not None):
            return False
    return True


def _version_item(self: Any, template: Any, version: Any) -> dict[str, Any]:
    return {
        "CreateTime": version.create_time,
        "CreatedBy": f"arn:{self.partition}:iam::{self.current_account}:root",
        "DefaultVersion": template.is_default(version),
        "LaunchTemplateData": version.data,
        "LaunchTemplateId": template.id,
        "LaunchTemplateName": template.name,
        "VersionDescription": version.description,
        "VersionNumber": version.number,
    }


def describe_launch_template_versions(self: Any) -> ActionResult:
    """API_DescribeLaunchTemplateVersions.

    * One template (``LaunchTemplateId`` or ``LaunchTemplateName``): the given ``Versions``
      (``$Latest``, ``$Default``, numbers) or, without them, every version, optionally bounded by
      ``MinVersion``/``MaxVersion`` (inclusive, as moto).
    * No template: ``Versions`` must hold only ``$Latest`` and/or ``$Default``; the answer has
      those versions of every launch template of the account+region (a version that is both is
      listed once). Missing ``Versions`` -> ``MissingParameter``, a version number ->
      ``InvalidParameterValue``.
    * ``Filters`` (the documented names), ``MaxResults`` 1-200 and ``NextToken``; items are
      ordered by template id, then version number.
    """
    name = self._get_param("LaunchTemplateName")
    template_id = self._get_param("LaunchTemplateId")
    versions = [str(v) for v in as_list(self._get_param("Versions"))]
    min_version = _int_param(self._get_param("MinVersion"), "MinVersion")
    max_version = _int_param(self._get_param("MaxVersion"), "MaxVersion")
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    filters = filters_param(self)
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        pairs: list[tuple[Any, Any]] = []
        if name or template_id:
            template = _template(backend, name, template_id)
            if versions:
                chosen = [_version(template, v) for v in versions]
            else:
                chosen = list(template.versions)
                if min_version is not None:
                    chosen = [v for v in chosen if v.number >= min_version]
                if max_version is not None:
                    chosen = [v for v in chosen if v.number <= max_version]
            pairs = [(template, v) for v in chosen]
        else:
            if not versions:
                raise client_error("MissingParameter", ACCOUNT_WIDE_RULE)
            kinds = {v.lower() for v in versions}
            if not kinds <= {"$latest", "$default"}:
                raise client_error("InvalidParameterValue", ACCOUNT_WIDE_RULE)
            for template in list(backend.launch_templates.values()):
                if "$latest" in kinds:
                    pairs.append((template, template.latest_version()))
                if "$default" in kinds:
                    pairs.append((template, template.default_version()))
        # Guess: a version asked for twice (or both $Latest and $Default) is listed once.
        unique: dict[tuple[str, int], tuple[Any, Any]] = {}
        for template, version in pairs:
            unique.setdefault((template.id, version.number), (template, version))
        pairs = sorted(unique.values(), key=lambda p: (p[0].id, p[1].number))
        if filters:
            pairs = [(t, v) for t, v in pairs if _matches(t, v, filters)]
        page, token = paginate(
            pairs,
            key=lambda p: f"{p[0].id}/{p[1].number:012d}",
            max_results=max_results,
            next_token=next_token,
            operation="DescribeLaunchTemplateVersions",
            min_results=MAX_RESULTS_MIN,
            max_allowed=MAX_RESULTS_MAX,
        )
        items = [_version_item(self, t, v) for t, v in page]
    result: dict[str, Any] = {"LaunchTemplateVersions": items}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def describe_launch_templates(self: Any) -> ActionResult:
    """API_DescribeLaunchTemplates with ``MaxResults`` 1-200 and ``NextToken`` (ordered by
    template id); moto's id/name lookups and filters are kept."""
    template_names = [str(n) for n in as_list(self._get_param("LaunchTemplateNames"))]
    template_ids = [str(i) for i in as_list(self._get_param("LaunchTemplateIds"))]
    filters = self._filters_from_querystring()
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    self.error_on_dryrun()
    with LOCK:
        templates = self.ec2_backend.describe_launch_templates(
            template_names=template_names, template_ids=template_ids, filters=filters
        )
        templates = sorted(templates, key=lambda t: t.id)
        page, token = paginate(
            templates,
            key=lambda t: t.id,
            max_results=max_results,
            next_token=next_token,
            operation="DescribeLaunchTemplates",
            min_results=MAX_RESULTS_MIN,
            max_allowed=MAX_RESULTS_MAX,
        )
        items = [
            {
                "CreateTime": t.create_time,
                "CreatedBy": f"arn:{self.partition}:iam::{self.current_account}:root",
                "DefaultVersionNumber": t.default_version_number,
                "LatestVersionNumber": t.latest_version_number,
                "LaunchTemplateId": t.id,
                "LaunchTemplateName": t.name,
                "Tags": t.tags,
            }
            for t in page
        ]
    result: dict[str, Any] = {"LaunchTemplates": items}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def install() -> None:
    from moto.ec2.responses import EC2Response

    EC2Response.describe_launch_template_versions = describe_launch_template_versions  # type: ignore[method-assign]
    EC2Response.describe_launch_templates = describe_launch_templates  # type: ignore[method-assign]
    serve_filters("DescribeLaunchTemplateVersions", VERSION_FILTERS)
