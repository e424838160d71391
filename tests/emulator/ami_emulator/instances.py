"""DescribeInstances paging counted in instances.

Plain moto 5.2.5 pages DescribeInstances by *reservation* (``MaxResults=5`` can return 8
instances), returns at most 100 reservations plus a NextToken even when the caller did not ask
for paging, and answers an unknown NextToken with HTTP 500. Here ``MaxResults`` counts instances
(the reference: "the maximum number of items to return"; AWS answered ``MaxResults=12`` with 12
instances spread over several reservations in aws/aws-sdk-js#939): a page holds at most
``MaxResults`` instances, grouped into their reservations, so a reservation may be split across
two pages. Without MaxResults/NextToken every matching instance comes back at once.

Terminated instances stay visible (moto keeps them; AWS shows them "usually less than one hour").

  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html
"""

from __future__ import annotations

import copy
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import InvalidParameterCombination

from .common import LOCK, as_list, paginate


def describe_instances(self: Any) -> ActionResult:
    """API_DescribeInstances: moto's filters and InstanceIds checks, then instance-level paging
    (``MaxResults`` 5-1000, above 1000 clamped, ordered by reservation id then instance id)."""
    self.error_on_dryrun()
    instance_ids = [str(i) for i in as_list(self._get_param("InstanceIds"))]
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    if instance_ids and max_results is not None:
        # "You cannot specify this parameter and the instance IDs parameter in the same request."
        raise InvalidParameterCombination(
            "The parameter instancesSet cannot be used with the parameter maxResults"
        )
    filters = self._filters_from_querystring()
    backend = self.ec2_backend
    with LOCK:
        if instance_ids:
            reservations = backend.get_reservations_by_instance_ids(instance_ids, filters=filters)
        else:
            reservations = backend.describe_instances(filters=filters)
        pairs = [(r, i) for r in reservations for i in r.instances]
        page, token = paginate(
            pairs,
            key=lambda p: f"{p[0].id}/{p[1].id}",
            max_results=max_results,
            next_token=next_token,
            operation="DescribeInstances",
            min_results=5,  # older reference text: "between 5 and 1000"
            max_allowed=1000,
            clamp_above=True,
        )
        grouped: dict[str, Any] = {}
        for reservation, instance in page:
            group = grouped.get(reservation.id)
            if group is None:
                group = copy.copy(reservation)
                group.instances = []
                grouped[reservation.id] = group
            group.instances.append(instance)
    result: dict[str, Any] = {"Reservations": list(grouped.values())}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def install() -> None:
    from moto.ec2.responses import EC2Response

    EC2Response.describe_instances = describe_instances  # type: ignore[method-assign]
