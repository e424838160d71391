"""EC2 request throttling (RequestLimitExceeded), opt-in per account through
/ami-pipeline-emulator/rate-limits.

What AWS does ("Request throttling for the Amazon EC2 API",
https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html): a token bucket per
account, per region and per API action; each request takes a token; buckets refill at a set rate
up to their maximum; an empty bucket answers RequestLimitExceeded (HTTP 503, "Request limit
exceeded."); sizes by category (non-mutating 100 / 20 per s, unfiltered-and-unpaginated
non-mutating 50 / 10, mutating 50 / 5, resource-intensive 50 / 5) and per uncategorized action
(e.g. EnableImageBlockPublicAccess 1 / 0.1, CopyImage 100 / 1, DeregisterImage 100 / 5). SDKs
retry RequestLimitExceeded.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import Account
from emu_helpers import make_snapshot, register

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
STANDARD_RETRY = Config(retries={"max_attempts": 6, "mode": "standard"})
SLOW_REFILL = 0.01  # tokens per second: no refill within a test's burst


def _configure(account: Account, **payload: Any) -> dict[str, Any]:
    status, body = account.control("rate-limits", {"account_id": account.id, **payload})
    assert status == 200, body
    return body


def _state(account: Account) -> dict[str, Any]:
    status, body = account.control(f"rate-limits?account_id={account.id}", method="GET")
    assert status == 200, body
    return body


def _ec2(account: Account, region: str = "us-east-1") -> Any:
    return account.client("ec2", region, config=NO_RETRY)


def _outcomes(call: Any, times: int) -> list[str]:
    """'ok' or the error code of each of ``times`` calls, asserting 503 for RequestLimitExceeded."""
    outcomes = []
    for _ in range(times):
        try:
            call()
            outcomes.append("ok")
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "RequestLimitExceeded":
                assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
                assert error.response["Error"]["Message"].startswith("Request limit exceeded."), error.response
            outcomes.append(code)
    return outcomes


def test_off_by_default_with_the_aws_table_as_configuration(account: Account) -> None:
    state = _state(account)
    assert state["enabled"] is False
    assert state["categories"] == {
        "non_mutating": {"capacity": 100, "refill_per_second": 20},
        "unfiltered_unpaginated": {"capacity": 50, "refill_per_second": 10},
        "mutating": {"capacity": 50, "refill_per_second": 5},
        "resource_intensive": {"capacity": 50, "refill_per_second": 5},
    }
    assert state["throttled"] == {"total": 0, "by_action": {}}
    ec2 = _ec2(account)
    # On AWS this action's bucket holds 1 token refilled at 0.1 per second.
    assert _outcomes(lambda: ec2.enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing"), 4) == ["ok"] * 4


def test_default_bucket_of_an_uncategorized_action(account: Account) -> None:
    _configure(account, enabled=True)
    ec2 = _ec2(account)
    call = lambda: ec2.enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing")  # noqa: E731
    assert _outcomes(call, 2) == ["ok", "RequestLimitExceeded"]
    bucket = _state(account)["buckets"]["us-east-1"]["EnableImageBlockPublicAccess"]
    assert bucket["capacity"] == 1 and bucket["refill_per_second"] == 0.1
    assert bucket["category"] == "uncategorized"
    assert bucket["tokens"] < 1


def test_burst_beyond_capacity_fails_once_and_only_that_bucket(account: Account, other_account: Account) -> None:
    limits = {"non_mutating": {"capacity": 5, "refill_per_second": SLOW_REFILL}}
    _configure(account, enabled=True, categories=limits)
    _configure(other_account, enabled=True, categories=limits)
    ec2 = _ec2(account)

    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 6) == ["ok"] * 5 + ["RequestLimitExceeded"]
    # Another action (another bucket of the same category), another region, another account.
    assert _outcomes(lambda: ec2.describe_import_snapshot_tasks(), 5) == ["ok"] * 5
    assert _outcomes(lambda: _ec2(account, "eu-west-1").describe_images(Owners=["self"]), 5) == ["ok"] * 5
    assert _outcomes(lambda: _ec2(other_account).describe_images(Owners=["self"]), 5) == ["ok"] * 5
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 1) == ["RequestLimitExceeded"]


def test_tokens_refill_at_the_configured_rate(account: Account) -> None:
    # A token every 2 seconds: each burst below must take less than 1.8 s (0.9 of a token), which
    # holds on a loaded machine too.
    _configure(account, enabled=True, actions={"DescribeImages": {"capacity": 2, "refill_per_second": 0.5}})
    ec2 = _ec2(account)
    call = lambda: ec2.describe_images(Owners=["self"])  # noqa: E731
    assert _outcomes(call, 3) == ["ok", "ok", "RequestLimitExceeded"]
    time.sleep(4.4)  # 2.2 tokens, capped at the capacity of 2
    assert _outcomes(call, 3) == ["ok", "ok", "RequestLimitExceeded"]
    time.sleep(2.2)  # 1.1 tokens
    assert _outcomes(call, 2) == ["ok", "RequestLimitExceeded"]


def test_action_override_wins_over_category(account: Account) -> None:
    body = _configure(
        account,
        enabled=True,
        categories={"non_mutating": {"capacity": 4, "refill_per_second": SLOW_REFILL}},
        actions={"DescribeImages": {"capacity": 2, "refill_per_second": SLOW_REFILL}},
    )
    assert body["actions"] == {"DescribeImages": {"capacity": 2, "refill_per_second": SLOW_REFILL}}
    assert body["categories"]["non_mutating"] == {"capacity": 4, "refill_per_second": SLOW_REFILL}
    ec2 = _ec2(account)
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 3) == ["ok", "ok", "RequestLimitExceeded"]
    assert _outcomes(lambda: ec2.describe_import_snapshot_tasks(), 5) == ["ok"] * 4 + ["RequestLimitExceeded"]
    buckets = _state(account)["buckets"]["us-east-1"]
    assert buckets["DescribeImages"]["capacity"] == 2
    assert buckets["DescribeImportSnapshotTasks"]["capacity"] == 4


def test_categories_mutating_and_uncategorized(account: Account) -> None:
    ec2 = _ec2(account)
    snapshot = make_snapshot(ec2)
    images = [register(ec2, f"rate-{i}", snapshot) for i in range(2)]
    # RegisterImage is a plain mutating action; DeregisterImage has its own row (100 / 5), so a
    # "mutating" override does not touch it.
    _configure(account, enabled=True, categories={"mutating": {"capacity": 1, "refill_per_second": SLOW_REFILL}})
    assert _outcomes(lambda: register(ec2, "rate-new-1", snapshot), 1) == ["ok"]
    assert _outcomes(lambda: register(ec2, "rate-new-2", snapshot), 1) == ["RequestLimitExceeded"]
    for image_id in images:
        assert _outcomes(lambda: ec2.deregister_image(ImageId=image_id), 1) == ["ok"]
    # The throttled RegisterImage never ran: its name is free.
    names = {i["Name"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert names == {"rate-new-1"}
    state = _state(account)["buckets"]["us-east-1"]
    assert state["RegisterImage"]["category"] == "mutating"
    assert state["DeregisterImage"]["category"] == "uncategorized"
    assert state["DeregisterImage"]["capacity"] == 100


def test_unfiltered_and_unpaginated_requests_use_a_smaller_bucket(account: Account) -> None:
    _configure(
        account,
        enabled=True,
        categories={
            "unfiltered_unpaginated": {"capacity": 2, "refill_per_second": SLOW_REFILL},
            "non_mutating": {"capacity": 10, "refill_per_second": SLOW_REFILL},
        },
    )
    ec2 = _ec2(account)
    assert _outcomes(lambda: ec2.describe_snapshots(), 3) == ["ok", "ok", "RequestLimitExceeded"]
    # With a filter, owners or pagination the standard (larger) bucket is used.
    assert _outcomes(lambda: ec2.describe_snapshots(OwnerIds=["self"]), 1) == ["ok"]
    assert _outcomes(lambda: ec2.describe_snapshots(MaxResults=5), 1) == ["ok"]
    assert _outcomes(lambda: ec2.describe_snapshots(Filters=[{"Name": "status", "Values": ["completed"]}]), 1) == ["ok"]
    # DescribeImages is not one of the seven actions with an unfiltered bucket.
    assert _outcomes(lambda: ec2.describe_images(), 3) == ["ok"] * 3
    buckets = _state(account)["buckets"]["us-east-1"]
    assert buckets["DescribeSnapshots:unfiltered"]["category"] == "unfiltered_unpaginated"
    assert buckets["DescribeSnapshots"]["category"] == "non_mutating"
    assert buckets["DescribeSnapshots"]["tokens"] == pytest.approx(7, abs=0.1)


def test_counter_of_throttled_calls(account: Account) -> None:
    _configure(
        account,
        enabled=True,
        actions={
            "DescribeImages": {"capacity": 1, "refill_per_second": SLOW_REFILL},
            "DescribeTags": {"capacity": 2, "refill_per_second": SLOW_REFILL},
        },
    )
    ec2 = _ec2(account)
    _outcomes(lambda: ec2.describe_images(Owners=["self"]), 4)
    _outcomes(lambda: ec2.describe_tags(), 3)
    state = _state(account)
    assert state["throttled"] == {"total": 4, "by_action": {"DescribeImages": 3, "DescribeTags": 1}}
    assert state["buckets"]["us-east-1"]["DescribeTags"]["tokens"] < 1


def test_throttling_comes_before_other_gates(account: Account) -> None:
    """AWS counts throttling first; a request refused by a later check (here an injected fault)
    has taken its token, and a throttled request is not seen by those checks."""
    _configure(account, enabled=True, actions={"DescribeImages": {"capacity": 2, "refill_per_second": SLOW_REFILL}})
    status, rule = account.control(
        "faults",
        {"account_id": account.id, "service": "ec2", "action": "DescribeImages", "code": "UnauthorizedOperation", "status": 403, "count": 1},
    )
    assert status == 200, rule
    ec2 = _ec2(account)
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 3) == ["UnauthorizedOperation", "ok", "RequestLimitExceeded"]
    status, rule = account.control(
        "faults",
        {"account_id": account.id, "service": "ec2", "action": "DescribeImages", "code": "UnauthorizedOperation", "status": 403},
    )
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 1) == ["RequestLimitExceeded"]
    status, faults = account.control(f"faults?account_id={account.id}", method="GET")
    assert {f["id"]: f["fired"] for f in faults["faults"]}[rule["id"]] == 0


def test_sdk_standard_retries_get_through(account: Account) -> None:
    # A token a second: the second call finds the bucket empty unless it comes a second later.
    _configure(account, enabled=True, actions={"DescribeImages": {"capacity": 1, "refill_per_second": 1}})
    ec2 = account.client("ec2", config=STANDARD_RETRY)
    ec2.describe_images(Owners=["self"])
    answer = ec2.describe_images(Owners=["self"])  # the bucket is empty: throttled, then retried
    assert answer["ResponseMetadata"]["RetryAttempts"] >= 1
    assert _state(account)["throttled"]["by_action"]["DescribeImages"] >= 1


def test_delete_switches_off_and_clears(account: Account) -> None:
    _configure(account, enabled=True, actions={"DescribeImages": {"capacity": 1, "refill_per_second": SLOW_REFILL}})
    ec2 = _ec2(account)
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 2) == ["ok", "RequestLimitExceeded"]
    status, body = account.control(f"rate-limits?account_id={account.id}", method="DELETE")
    assert status == 200 and body["cleared_throttled"] == 1 and body["enabled"] is False, body
    state = _state(account)
    assert state["enabled"] is False and state["actions"] == {} and state["buckets"] == {}
    assert state["throttled"] == {"total": 0, "by_action": {}}
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 5) == ["ok"] * 5


def test_post_enabled_false_switches_off(account: Account) -> None:
    _configure(account, enabled=True, actions={"DescribeImages": {"capacity": 1, "refill_per_second": SLOW_REFILL}})
    ec2 = _ec2(account)
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 2) == ["ok", "RequestLimitExceeded"]
    assert _configure(account, enabled=False)["enabled"] is False
    assert _outcomes(lambda: ec2.describe_images(Owners=["self"]), 3) == ["ok"] * 3
    assert _state(account)["throttled"]["total"] == 1  # kept until DELETE


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"enabled": "yes"},
        {"enabled": True, "categories": {"console": {"capacity": 1, "refill_per_second": 1}}},
        {"enabled": True, "categories": {"mutating": {"capacity": 0}}},
        {"enabled": True, "categories": {"mutating": {"refill_per_second": -1}}},
        {"enabled": True, "categories": {"mutating": {"burst": 3}}},
        {"enabled": True, "actions": {"DescribeImagez": {"capacity": 1, "refill_per_second": 1}}},
        {"enabled": True, "actions": {"DescribeImages": 5}},
        {"enabled": True, "service": "s3"},
    ],
)
def test_bad_configuration_is_refused(account: Account, payload: dict[str, Any]) -> None:
    status, body = account.control("rate-limits", {"account_id": account.id, **payload})
    assert status == 400, body
    assert _state(account)["enabled"] is False
