"""EC2 request throttling (``RequestLimitExceeded``), opt-in per account: the ``rate_limits`` gate.

Follows "Request throttling for the Amazon EC2 API"
(https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html, read through the
search tool; the same page as https://docs.aws.amazon.com/AWSEC2/latest/APIReference/throttling.html):

* "Amazon EC2 throttles EC2 API requests for each AWS account on a per-Region basis" and "each
  API is evaluated individually": one token bucket per (account, region, API action).
* "Amazon EC2 uses the token bucket algorithm": "Each request that you make removes one token
  from the API's bucket"; "If the bucket is below its maximum capacity, a set number of tokens is
  added back to it every second until it reaches its maximum capacity"; "If you exceed an API
  throttling limit, you get the RequestLimitExceeded error code".
* Bucket sizes by category, from the page's table "Request token bucket sizes and refill rates"
  (``DEFAULT_CATEGORIES``, ``RESOURCE_INTENSIVE``, ``UNFILTERED_UNPAGINATED``, ``UNCATEGORIZED``).

The owner of this module's state: per-account configuration (off by default), the buckets and
the per-account counters of throttled calls. Control endpoint ``/ami-pipeline-emulator/rate-limits``
(GET / POST / DELETE), forgotten on ``POST /moto-api/reset``.

EC2 and the EBS direct APIs are throttled (each switched on separately: the control body's
``service``, default ``ec2``). Another service is added by writing a ``Policy`` (how a request
maps to its buckets and their default sizes, and the service's throttling error) and putting it
in ``POLICIES``; configuration, buckets, counters and the control API are keyed by service.
EBS (``EBS_POLICY``): one bucket per account, region and operation ("<Operation> requests per
account"), and for PutSnapshotBlock / GetSnapshotBlock one more per snapshot; a request takes a
token from each of its buckets, and the first empty one answers (the snapshot's
``RequestThrottledException`` / the account's ``ThrottlingException``).
"""

from __future__ import annotations

import functools
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from werkzeug.wrappers import Request, Response

from . import control, gates
from .faults import error_response

# ---------------------------------------------------------------------------------------------
# EC2's table (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html,
# "Request token bucket sizes and refill rates")
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """A token bucket's size: "Bucket maximum capacity" and "Bucket refill rate" (per second)."""

    capacity: int
    refill_per_second: float

    def to_json(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "refill_per_second": self.refill_per_second}


NON_MUTATING = "non_mutating"
UNFILTERED_UNPAGINATED = "unfiltered_unpaginated"
MUTATING = "mutating"
RESOURCE_INTENSIVE = "resource_intensive"
UNCATEGORIZED = "uncategorized"

# The categories' rows of the table. ("Console non-mutating actions", 100 / 10, are not modelled:
# the emulator cannot tell a console request.)  aws-facts.md quoted mutating 200 / 5; the page's
# current table says 50 / 5, which is used here.
DEFAULT_CATEGORIES: dict[str, Limit] = {
    # "The Describe*, List*, Search*, and Get* API actions that are not included in another category."
    NON_MUTATING: Limit(100, 20),
    # "A specific subset of non-mutating API actions that, when requested without specifying
    # either pagination or a filter, use tokens from a smaller token bucket."
    UNFILTERED_UNPAGINATED: Limit(50, 10),
    # "All mutating API actions that are not Resource-intensive actions or Uncategorized actions."
    MUTATING: Limit(50, 5),
    # "Mutating API actions that take the most time and consume the most resources to complete."
    RESOURCE_INTENSIVE: Limit(50, 5),
}

# "Unfiltered and unpaginated non-mutating actions" row.
UNFILTERED_UNPAGINATED_ACTIONS = frozenset(
    {
        "DescribeInstances",
        "DescribeInstanceStatus",
        "DescribeNetworkInterfaces",
        "DescribeSecurityGroups",
        "DescribeSnapshots",
        "DescribeSpotInstanceRequests",
        "DescribeVolumes",
    }
)

# "Resource-intensive actions" row.
RESOURCE_INTENSIVE_ACTIONS = frozenset(
    {
        "AcceptVpcPeeringConnection",
        "AuthorizeSecurityGroupIngress",
        "CancelSpotInstanceRequests",
        "CreateKeyPair",
        "CreateVpcPeeringConnection",
        "DeleteVpcPeeringConnection",
        "RejectVpcPeeringConnection",
        "RevokeSecurityGroupIngress",
        "RequestSpotInstances",
    }
)

# "Uncategorized actions": "API actions that receive their own token bucket sizes and refill
# rates, even though by definition they fit in one of the other categories". The whole table.
UNCATEGORIZED_ACTIONS: dict[str, Limit] = {
    "AcceptVpcEndpointConnections": Limit(10, 1),
    "AdvertiseByoipCidr": Limit(1, 0.1),
    "AssignIpv6Addresses": Limit(100, 5),
    "AssignPrivateIpAddresses": Limit(100, 5),
    "AssignPrivateNatGatewayAddress": Limit(10, 1),
    "AssociateCapacityReservationBillingOwner": Limit(1, 0.5),
    "AssociateEnclaveCertificateIamRole": Limit(10, 1),
    "AssociateIamInstanceProfile": Limit(100, 5),
    "AssociateNatGatewayAddress": Limit(10, 1),
    "AttachVerifiedAccessTrustProvider": Limit(10, 2),
    "AuthorizeClientVpnIngress": Limit(5, 2),
    "CancelDeclarativePoliciesReport": Limit(1, 1),
    "CopyImage": Limit(100, 1),
    "CreateClientVpnRoute": Limit(5, 2),
    "CreateCoipCidr": Limit(5, 1),
    "CreateCoipPool": Limit(5, 1),
    "CreateDefaultSubnet": Limit(1, 1),
    "CreateDefaultVpc": Limit(1, 1),
    "CreateLaunchTemplateVersion": Limit(100, 5),
    "CreateNatGateway": Limit(10, 1),
    "CreateNetworkInterface": Limit(100, 5),
    "CreateRestoreImageTask": Limit(50, 0.1),
    "CreateSnapshot": Limit(100, 5),
    "CreateSnapshots": Limit(100, 5),
    "CreateSpotDatafeedSubscription": Limit(50, 3),
    "CreateStoreImageTask": Limit(50, 0.1),
    "CreateSubnetCidrReservation": Limit(5, 1),
    "CreateTags": Limit(100, 10),
    "CreateVerifiedAccessEndpoint": Limit(20, 4),
    "CreateVerifiedAccessGroup": Limit(10, 2),
    "CreateVerifiedAccessInstance": Limit(10, 2),
    "CreateVerifiedAccessTrustProvider": Limit(10, 2),
    "CreateVolume": Limit(100, 5),
    "CreateVpcEndpoint": Limit(4, 0.3),
    "CreateVpcEndpointServiceConfiguration": Limit(10, 1),
    "DeleteClientVpnRoute": Limit(5, 2),
    "DeleteCoipCidr": Limit(5, 1),
    "DeleteCoipPool": Limit(5, 1),
    "DeleteCoipPoolPermission": Limit(5, 1),
    "DeleteNatGateway": Limit(10, 1),
    "DeleteNetworkInterface": Limit(100, 5),
    "DeleteSnapshot": Limit(100, 5),
    "DeleteSpotDatafeedSubscription": Limit(50, 3),
    "DeleteSubnetCidrReservation": Limit(5, 1),
    "DeleteQueuedReservedInstances": Limit(5, 5),
    "DeleteTags": Limit(100, 10),
    "DeleteVerifiedAccessEndpoint": Limit(20, 4),
    "DeleteVerifiedAccessGroup": Limit(10, 2),
    "DeleteVerifiedAccessInstance": Limit(10, 2),
    "DeleteVerifiedAccessTrustProvider": Limit(10, 2),
    "DeleteVolume": Limit(100, 5),
    "DeleteVpcEndpoints": Limit(4, 0.3),
    "DeleteVpcEndpointServiceConfigurations": Limit(10, 1),
    "DeprovisionByoipCidr": Limit(1, 0.1),
    "DeregisterImage": Limit(100, 5),
    "DescribeAggregateIdFormat": Limit(10, 10),
    "DescribeByoipCidrs": Limit(1, 0.5),
    "DescribeCapacityBlockExtensionOfferings": Limit(10, 0.15),
    "DescribeCapacityBlockOfferings": Limit(10, 0.15),
    "DescribeDeclarativePoliciesReports": Limit(5, 5),
    "DescribeHostReservations": Limit(5, 2),
    "DescribeHostReservationOfferings": Limit(5, 2),
    "DescribeIdentityIdFormat": Limit(10, 10),
    "DescribeIdFormat": Limit(10, 10),
    "DescribeInstanceTopology": Limit(1, 1),
    "DescribeMovingAddresses": Limit(1, 1),
    "DescribePrincipalIdFormat": Limit(10, 10),
    "DescribeReservedInstancesOfferings": Limit(10, 10),
    "DescribeSecurityGroupReferences": Limit(20, 5),
    "DescribeSpotDatafeedSubscription": Limit(100, 13),
    "DescribeSpotFleetInstances": Limit(100, 5),
    "DescribeSpotFleetRequestHistory": Limit(100, 5),
    "DescribeSpotFleetRequests": Limit(50, 3),
    "DescribeStaleSecurityGroups": Limit(20, 5),
    "DescribeStoreImageTasks": Limit(50, 0.5),
    "DescribeVerifiedAccessInstanceLoggingConfigurations": Limit(10, 2),
    "DetachVerifiedAccessTrustProvider": Limit(10, 2),
    "DisableFastLaunch": Limit(5, 2),
    "DisableImageBlockPublicAccess": Limit(1, 0.1),
    "DisableSnapshotBlockPublicAccess": Limit(1, 0.1),
    "DisassociateCapacityReservationBillingOwner": Limit(1, 0.5),
    "DisassociateEnclaveCertificateIamRole": Limit(10, 1),
    "DisassociateIamInstanceProfile": Limit(100, 5),
    "DisassociateNatGatewayAddress": Limit(10, 1),
    "EnableFastLaunch": Limit(5, 2),
    "EnableImageBlockPublicAccess": Limit(1, 0.1),
    "EnableSnapshotBlockPublicAccess": Limit(1, 0.1),
    "GetAssociatedEnclaveCertificateIamRoles": Limit(10, 1),
    "GetDeclarativePoliciesReportSummary": Limit(5, 5),
    "GetHostReservationPurchasePreview": Limit(5, 2),
    "ModifyImageAttribute": Limit(100, 5),
    "ModifyInstanceMetadataDefaults": Limit(2, 2),
    "ModifyInstanceMetadataOptions": Limit(100, 5),
    "ModifyLaunchTemplate": Limit(100, 5),
    "ModifyNetworkInterfaceAttribute": Limit(100, 5),
    "ModifySnapshotAttribute": Limit(100, 5),
    "ModifyVerifiedAccessEndpoint": Limit(20, 4),
    "ModifyVerifiedAccessEndpointPolicy": Limit(20, 4),
    "ModifyVerifiedAccessGroup": Limit(10, 2),
    "ModifyVerifiedAccessGroupPolicy": Limit(20, 4),
    "ModifyVerifiedAccessInstance": Limit(10, 2),
    "ModifyVerifiedAccessInstanceLoggingConfiguration": Limit(10, 2),
    "ModifyVerifiedAccessTrustProvider": Limit(10, 2),
    "ModifyVpcEndpoint": Limit(4, 0.3),
    "ModifyVpcEndpointServiceConfiguration": Limit(10, 1),
    "MoveAddressToVpc": Limit(1, 1),
    "ProvisionByoipCidr": Limit(1, 0.1),
    "PurchaseCapacityBlock": Limit(10, 0.15),
    "PurchaseCapacityBlockExtension": Limit(10, 0.15),
    "PurchaseHostReservation": Limit(5, 2),
    "PurchaseReservedInstancesOffering": Limit(5, 5),
    "RejectVpcEndpointConnections": Limit(10, 1),
    "RestoreAddressToClassic": Limit(1, 1),
    "RevokeClientVpnIngress": Limit(5, 2),
    "RunInstances": Limit(5, 2),
    "StartDeclarativePoliciesReport": Limit(1, 1),
    "StartInstances": Limit(5, 2),
    "TerminateInstances": Limit(100, 5),
    "UnassignPrivateIpAddresses": Limit(100, 5),
    "UnassignPrivateNatGatewayAddress": Limit(10, 1),
    "WithdrawByoipCidr": Limit(1, 0.1),
}

# "This category generally includes all Describe*, List*, Search*, and Get* API actions".
_NON_MUTATING_PREFIX = re.compile(r"^(Describe|List|Search|Get)[A-Z]")

# The error: code from the page; HTTP 503 and the message as AWS sends them (e.g. "Request limit
# exceeded. (Service: AmazonEC2; Status Code: 503; Error Code: RequestLimitExceeded ...)" in
# cloudfoundry/bosh-aws-cpi-release#61, jclouds/legacy-jclouds#1214; recent answers append
# "Account <id> has been throttled on ec2:<Action> because it exceeded its request rate limit."
# (CloudSnorkel/cdk-github-runners#946), which the emulator appends too).
EC2_ERROR_CODE = "RequestLimitExceeded"
EC2_ERROR_STATUS = 503


@dataclass(frozen=True)
class Bucket:
    """Where one request takes its token: ``key`` names the bucket within (account, region)."""

    key: str
    action: str
    category: str
    default: Limit
    # "account": the account's bucket of the action (action overrides apply); "resource": a
    # bucket of one resource (EBS: per snapshot), sized by its category only.
    scope: str = "account"
    resource: str | None = None


@functools.lru_cache(maxsize=None)
def _ec2_operation_names() -> frozenset[str]:
    import botocore.session

    return frozenset(botocore.session.get_session().get_service_model("ec2").operation_names)


@functools.lru_cache(maxsize=64)
def _scoping_parameters(action: str) -> tuple[str, ...]:
    """Lower-cased wire names of the list members of ``action``'s input (Filter, InstanceId,
    SnapshotId, Owner, RestorableBy, GroupId, GroupName, ...), from botocore's EC2 model.

    For the seven unfiltered/unpaginated actions every list member restricts the answer (filters,
    ids, owners); giving any of them counts as "a filter" here."""
    import botocore.session

    shape = botocore.session.get_session().get_service_model("ec2").operation_model(action).input_shape
    names = []
    for name, member in shape.members.items():
        if member.type_name == "list":
            wire = member.serialization.get("name", name)
            names.append(wire[:1].upper() + wire[1:])
    return tuple(n.lower() for n in names)


def _unfiltered_and_unpaginated(ctx: gates.RequestContext) -> bool:
    """Neither pagination (MaxResults / NextToken) nor a filter (Filters, ids, owners)."""
    scoping = _scoping_parameters(ctx.action or "")
    for key in ctx.params():
        lower = key.lower()
        if lower in ("maxresults", "nexttoken"):
            return False
        head = lower.split(".", 1)[0]
        if "." in lower and head in scoping:
            return False
    return True


def ec2_category(action: str) -> str:
    """The table's category of an EC2 action (``unfiltered_unpaginated`` is decided per request)."""
    if action in UNCATEGORIZED_ACTIONS:
        return UNCATEGORIZED
    if action in RESOURCE_INTENSIVE_ACTIONS:
        return RESOURCE_INTENSIVE
    if _NON_MUTATING_PREFIX.match(action):
        return NON_MUTATING
    return MUTATING


@dataclass(frozen=True)
class Policy:
    """How one service throttles: the bucket a request uses and the error it answers."""

    service: str
    categories: dict[str, Limit]
    classify: Callable[[gates.RequestContext, str], "Bucket | list[Bucket]"]
    known_actions: Callable[[], frozenset[str]]
    error_code: str
    error_status: int
    error_message: Callable[[str, str], str]  # (account, action) -> message
    # The default size of an action's account bucket (for action overrides given without both
    # fields); None: the action has no default of its own.
    action_default: Callable[[str], "Limit | None"] = lambda action: None
    # The answer for an empty bucket, when the service has more than one throttling error.
    error_for: "Callable[[gates.RequestContext, Bucket], Response] | None" = None


def _ec2_bucket(ctx: gates.RequestContext, action: str) -> Bucket:
    category = ec2_category(action)
    if category == UNCATEGORIZED:
        return Bucket(action, action, category, UNCATEGORIZED_ACTIONS[action])
    if (
        category == NON_MUTATING
        and action in UNFILTERED_UNPAGINATED_ACTIONS
        and _unfiltered_and_unpaginated(ctx)
    ):
        # Its own, smaller bucket: "so that tokens are deducted from the standard (larger) token
        # bucket" when paginating or filtering.
        return Bucket(f"{action}:unfiltered", action, UNFILTERED_UNPAGINATED, DEFAULT_CATEGORIES[UNFILTERED_UNPAGINATED])
    return Bucket(action, action, category, DEFAULT_CATEGORIES[category])


def _ec2_message(account: str, action: str) -> str:
    return (
        f"Request limit exceeded. Account {account} has been throttled on ec2:{action} because it "
        "exceeded its request rate limit."
    )


def _ec2_action_default(action: str) -> Limit | None:
    return UNCATEGORIZED_ACTIONS.get(action) or DEFAULT_CATEGORIES.get(ec2_category(action))


EC2_POLICY = Policy(
    service="ec2",
    categories=DEFAULT_CATEGORIES,
    classify=_ec2_bucket,
    known_actions=_ec2_operation_names,
    error_code=EC2_ERROR_CODE,
    error_status=EC2_ERROR_STATUS,
    error_message=_ec2_message,
    action_default=_ec2_action_default,
)

# ---------------------------------------------------------------------------------------------
# EBS direct APIs ("Quotas for Amazon EBS",
# https://docs.aws.amazon.com/ebs/latest/userguide/ebs-resource-quotas.html, and the Service
# Quotas table in aws-facts.md: requests per second, per account and Region, and per snapshot)
# ---------------------------------------------------------------------------------------------

# Account buckets: "<Action> requests per account", per second; capacity = one second's worth.
EBS_ACCOUNT_LIMITS: dict[str, Limit] = {
    "PutSnapshotBlock": Limit(1000, 1000),
    "GetSnapshotBlock": Limit(1000, 1000),
    "StartSnapshot": Limit(10, 10),
    "CompleteSnapshot": Limit(10, 10),  # also on the quotas page: 10 per second, not adjustable
    "ListSnapshotBlocks": Limit(50, 50),
    "ListChangedBlocks": Limit(50, 50),
}
# Snapshot buckets: "PutSnapshotBlock requests per snapshot" 1,000/s (not adjustable) and
# "GetSnapshotBlock requests per snapshot" 1,000/s; the error-retries page lists the snapshot
# throttle (RequestThrottledException) for exactly these two operations.
EBS_PER_SNAPSHOT = "per_snapshot"
EBS_CATEGORIES: dict[str, Limit] = {EBS_PER_SNAPSHOT: Limit(1000, 1000)}
EBS_ACCOUNT = "account"


@functools.lru_cache(maxsize=None)
def _ebs_operation_names() -> frozenset[str]:
    import botocore.session

    return frozenset(botocore.session.get_session().get_service_model("ebs").operation_names)


def _ebs_buckets(ctx: gates.RequestContext, action: str) -> list[Bucket]:
    from .ebs_direct import request_snapshot_ids

    buckets = []
    if action in ("PutSnapshotBlock", "GetSnapshotBlock"):
        _, ids = request_snapshot_ids(ctx.method, str(ctx.environ.get("PATH_INFO", "")), "")
        if ids:
            buckets.append(Bucket(f"{action}:{ids[0]}", action, EBS_PER_SNAPSHOT, EBS_CATEGORIES[EBS_PER_SNAPSHOT], "resource", ids[0]))
    default = EBS_ACCOUNT_LIMITS.get(action)
    if default is not None:
        buckets.append(Bucket(action, action, EBS_ACCOUNT, default))
    return buckets


def _ebs_error(ctx: gates.RequestContext, bucket: Bucket) -> Response:
    """"Error retries for EBS direct APIs" (https://docs.aws.amazon.com/ebs/latest/userguide/
    error-retries.html): "RequestThrottleException 400 ... throttling limit for the snapshot"
    (model shape RequestThrottledException, reason RESOURCE_LEVEL_THROTTLE) and
    "ThrottlingException 400 ... throttling limit for the account". SDKs retry both."""
    from .ebs_direct import EbsError, error_response as ebs_error_response

    if bucket.scope == "resource":
        return ebs_error_response(EbsError(
            "RequestThrottledException", 400,
            f"The number of API requests has exceeded the maximum allowed API request throttling limit for the snapshot "
            f"{bucket.resource} ({bucket.action}).", "RESOURCE_LEVEL_THROTTLE"))
    return ebs_error_response(EbsError(
        "ThrottlingException", 400,
        f"The number of API requests has exceeded the maximum allowed API request throttling limit for the account "
        f"{ctx.account} ({bucket.action})."))


EBS_POLICY = Policy(
    service="ebs",
    categories=EBS_CATEGORIES,
    classify=_ebs_buckets,
    known_actions=_ebs_operation_names,
    error_code="ThrottlingException",
    error_status=400,
    error_message=lambda account, action: f"Rate exceeded for ebs:{action}",
    action_default=EBS_ACCOUNT_LIMITS.get,
    error_for=_ebs_error,
)

POLICIES: dict[str, Policy] = {"ec2": EC2_POLICY, "ebs": EBS_POLICY}

# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@dataclass
class AccountLimits:
    """One account's throttling of one service: overrides, buckets and the throttled counter."""

    enabled: bool = False
    categories: dict[str, Limit] = field(default_factory=dict)  # overrides only
    actions: dict[str, Limit] = field(default_factory=dict)  # overrides only
    # (region, bucket key) -> [tokens, last refill (monotonic), limit, category, action]
    buckets: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    throttled: dict[str, int] = field(default_factory=dict)  # action -> count

    def limit_for(self, bucket: Bucket) -> Limit:
        # Per-action overrides win over the category: "Limits are applied to individual API
        # actions" (the page's "Request a limit increase").
        if bucket.scope == "resource":
            return self.categories.get(bucket.category, bucket.default)
        override = self.actions.get(bucket.action)
        if override is not None:
            return override
        if bucket.category != UNCATEGORIZED:
            override = self.categories.get(bucket.category)
            if override is not None:
                return override
        return bucket.default


_LOCK = threading.Lock()
# (account, service) -> limits. ``_ENABLED`` holds the keys whose throttling is on: the gate's
# whole cost for every other request is one set lookup.
_LIMITS: dict[tuple[str, str], AccountLimits] = {}
_ENABLED: set[tuple[str, str]] = set()


def _take(limits: AccountLimits, region: str, bucket: Bucket, now: float) -> bool:
    """Refill the bucket for the time since its last use, then take one token (False: empty).

    Refill is continuous (``refill_per_second`` spread over the second), see README."""
    key = (region, bucket.key)
    state = limits.buckets.get(key)
    limit = limits.limit_for(bucket)
    if state is None:
        # A bucket starts full ("the bucket size ... you can make up to 100 ... requests in one second").
        state = [float(limit.capacity), now, limit, bucket.category, bucket.action]
        limits.buckets[key] = state
    tokens = min(float(limit.capacity), state[0] + (now - state[1]) * limit.refill_per_second)
    state[1] = now
    state[2] = limit
    if tokens >= 1.0:
        state[0] = tokens - 1.0
        return True
    state[0] = tokens
    return False


def _level(limits: AccountLimits, region: str, bucket: Bucket, now: float) -> float:
    """The bucket's tokens after refilling it for the time since its last use (it starts full)."""
    state = limits.buckets.get((region, bucket.key))
    limit = limits.limit_for(bucket)
    if state is None:
        return float(limit.capacity)
    return min(float(limit.capacity), state[0] + (now - state[1]) * limit.refill_per_second)


def rate_limit_gate(ctx: gates.RequestContext) -> Response | None:
    """The ``rate_limits`` gate: every answered request of an enabled account takes a token from
    each of its buckets (EBS PutSnapshotBlock: the account's and the snapshot's); when one of
    them is empty none is taken and the first empty one answers."""
    service = ctx.service
    if (ctx.account, service) not in _ENABLED or ctx.action is None:
        return None
    policy = POLICIES.get(service or "")
    if policy is None:
        return None
    action = ctx.action
    classified = policy.classify(ctx, action)
    buckets = classified if isinstance(classified, list) else [classified]
    region = ctx.region
    with _LOCK:
        limits = _LIMITS.get((ctx.account, policy.service))
        if limits is None or not limits.enabled:
            return None
        now = time.monotonic()
        empty = next((b for b in buckets if _level(limits, region, b, now) < 1.0), None)
        if empty is None:
            for bucket in buckets:
                _take(limits, region, bucket, now)
            return None
        limits.throttled[action] = limits.throttled.get(action, 0) + 1
    if policy.error_for is not None:
        return policy.error_for(ctx, empty)
    return error_response(
        policy.service, ctx.method, policy.error_status, policy.error_code, policy.error_message(ctx.account, action)
    )


# ---------------------------------------------------------------------------------------------
# Configuration (control endpoint)
# ---------------------------------------------------------------------------------------------


def _limit(value: Any, where: str, base: Limit | None) -> Limit:
    """``{"capacity"?, "refill_per_second"?}``; a missing field keeps ``base``'s value."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object with capacity and/or refill_per_second")
    unknown = set(value) - {"capacity", "refill_per_second"}
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
    if base is None and not {"capacity", "refill_per_second"} <= set(value):
        raise ValueError(f"{where} needs both capacity and refill_per_second")
    capacity = value.get("capacity", base.capacity if base else None)
    refill = value.get("refill_per_second", base.refill_per_second if base else None)
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or int(capacity) != capacity or capacity < 1:
        raise ValueError(f"{where}.capacity must be an integer >= 1")
    if isinstance(refill, bool) or not isinstance(refill, (int, float)) or refill < 0:
        raise ValueError(f"{where}.refill_per_second must be a number >= 0")
    return Limit(int(capacity), float(refill))


def configure(account: str, payload: dict[str, Any], service: str = "ec2") -> dict[str, Any]:
    """Replace the account's configuration (overrides not given are dropped; buckets start full
    again; the throttled counter is kept). Raises ValueError for bad input."""
    policy = POLICIES[service]
    unknown = set(payload) - {"account_id", "service", "enabled", "categories", "actions"}
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    enabled = payload.get("enabled")
    if not isinstance(enabled, bool):
        raise ValueError("enabled must be true or false")
    categories: dict[str, Limit] = {}
    raw_categories = payload.get("categories") or {}
    if not isinstance(raw_categories, dict):
        raise ValueError("categories must be an object")
    for name, value in raw_categories.items():
        if name not in policy.categories:
            raise ValueError(f"unknown category {name!r}; known: {sorted(policy.categories)}")
        categories[name] = _limit(value, f"categories.{name}", policy.categories[name])
    actions: dict[str, Limit] = {}
    raw_actions = payload.get("actions") or {}
    if not isinstance(raw_actions, dict):
        raise ValueError("actions must be an object")
    known = policy.known_actions()
    for name, value in raw_actions.items():
        if name not in known:
            raise ValueError(f"unknown {service} action {name!r}")
        actions[name] = _limit(value, f"actions.{name}", policy.action_default(name))
    with _LOCK:
        limits = _LIMITS.setdefault((account, service), AccountLimits())
        limits.enabled = enabled
        limits.categories = categories
        limits.actions = actions
        limits.buckets.clear()
        if enabled:
            _ENABLED.add((account, service))
        else:
            _ENABLED.discard((account, service))
        return _describe(account, service, limits, with_state=False)


def _describe(account: str, service: str, limits: AccountLimits | None, with_state: bool) -> dict[str, Any]:
    """The effective configuration (and with ``with_state`` the counter and bucket levels)."""
    policy = POLICIES[service]
    limits = limits or AccountLimits()
    effective = {name: limits.categories.get(name, default).to_json() for name, default in policy.categories.items()}
    answer: dict[str, Any] = {
        "account_id": account,
        "service": service,
        "enabled": limits.enabled,
        "categories": effective,
        "actions": {name: limit.to_json() for name, limit in sorted(limits.actions.items())},
    }
    if with_state:
        now = time.monotonic()
        buckets: dict[str, dict[str, Any]] = {}
        for (region, key), (tokens, last, limit, category, action) in sorted(limits.buckets.items()):
            level = min(float(limit.capacity), tokens + (now - last) * limit.refill_per_second)
            buckets.setdefault(region, {})[key] = {
                "action": action,
                "category": category,
                "tokens": round(level, 3),
                **limit.to_json(),
            }
        answer["throttled"] = {"total": sum(limits.throttled.values()), "by_action": dict(sorted(limits.throttled.items()))}
        answer["buckets"] = buckets
    return answer


def describe(account: str, service: str = "ec2") -> dict[str, Any]:
    with _LOCK:
        return _describe(account, service, _LIMITS.get((account, service)), with_state=True)


def clear(account: str, service: str = "ec2") -> dict[str, Any]:
    """Switch throttling off for the account and forget its overrides, buckets and counter."""
    with _LOCK:
        limits = _LIMITS.pop((account, service), None)
        _ENABLED.discard((account, service))
        throttled = sum(limits.throttled.values()) if limits else 0
    return {"account_id": account, "service": service, "enabled": False, "cleared_throttled": throttled}


def reset() -> None:
    with _LOCK:
        _LIMITS.clear()
        _ENABLED.clear()


def _service(value: Any) -> str:
    service = "ec2" if value in (None, "") else value
    if service not in POLICIES:
        raise control.ControlError(400, f"unknown service {service!r}; known: {sorted(POLICIES)}")
    return str(service)


def handle_rate_limits(request: Request) -> Response:
    """``/ami-pipeline-emulator/rate-limits``: POST configures, GET reads, DELETE clears; the
    service is ``ec2`` unless the body / query names another one of ``POLICIES`` (``ebs``)."""
    if request.method == "POST":
        payload = control._body(request)
        account = control._account(payload)
        service = _service(payload.get("service"))
        try:
            return control._json(200, configure(account, payload, service))
        except ValueError as exc:
            raise control.ControlError(400, str(exc)) from exc
    account = control._account(dict(request.args))
    service = _service(request.args.get("service"))
    if request.method == "DELETE":
        return control._json(200, clear(account, service))
    return control._json(200, describe(account, service))


gates.register("rate_limits", rate_limit_gate)
control.register_route("rate-limits", ("GET", "POST", "DELETE"), handle_rate_limits)
control.register_reset(reset)


def install() -> None:
    """Nothing to patch: importing the module registers the gate, the route and the reset hook."""
