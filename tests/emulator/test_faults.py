"""Per-account fault injection through /ami-pipeline-emulator/faults (plain moto: no such
endpoint, every call succeeds)."""

from __future__ import annotations

import json
import urllib.request

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import Account
from emu_helpers import aws_error, make_snapshot, raw_disk, register

# botocore's retries "max_attempts" counts retries after the first call (so 1 would still retry a
# 503 once); "total_max_attempts" 1 means a single attempt, so the raw fault reaches the test.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
STANDARD_RETRY_5 = Config(retries={"max_attempts": 5, "mode": "standard"})


def _add(account, **rule):
    status, body = account.control("faults", {"account_id": account.id, **rule})
    assert status == 200, body
    assert body["id"].startswith("fault-")
    return body


def _rules(account):
    status, body = account.control(f"faults?account_id={account.id}", method="GET")
    assert status == 200, body
    return {rule["id"]: rule for rule in body["faults"]}


def _import(ec2, bucket, key="disk.raw"):
    return ec2.import_snapshot(DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": key}})


def test_ec2_import_snapshot_denied_in_one_account_only(account, other_account):
    rule = _add(
        account,
        service="ec2",
        action="ImportSnapshot",
        status=403,
        code="UnauthorizedOperation",
        message="You are not authorized to perform this operation.",
    )
    assert rule["count"] is None and rule["fired"] == 0
    ec2 = account.client("ec2", config=NO_RETRY)

    with aws_error("UnauthorizedOperation", "You are not authorized to perform this operation.") as error:
        _import(ec2, "any-bucket")
    assert error["Code"] == "UnauthorizedOperation"
    with pytest.raises(ClientError) as excinfo:
        _import(ec2, "any-bucket")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert ec2.describe_import_snapshot_tasks()["ImportSnapshotTasks"] == []  # other actions pass

    bucket = other_account.bucket()
    other_account.s3().put_object(Bucket=bucket, Key="disk.raw", Body=raw_disk(512))
    assert _import(other_account.client("ec2", config=NO_RETRY), bucket)["ImportTaskId"].startswith("import-snap-")
    assert _rules(account)[rule["id"]]["fired"] == 2
    assert _rules(other_account) == {}


def test_register_image_denied_until_cleared(account):
    ec2 = account.client("ec2", config=NO_RETRY)
    snapshot_id = make_snapshot(ec2, 1)
    rule = _add(account, service="ec2", action="RegisterImage", status=403, code="UnauthorizedOperation")

    for _ in range(2):
        with aws_error("UnauthorizedOperation"):
            register(ec2, "denied-image", snapshot_id)
    assert ec2.describe_images(Owners=["self"])["Images"] == []  # the request never reached moto
    listed = _rules(account)[rule["id"]]
    assert (listed["fired"], listed["remaining"]) == (2, None)

    status, body = account.control(f"faults?account_id={account.id}", method="DELETE")
    assert (status, body) == (200, {"account_id": account.id, "cleared": 1})
    assert _rules(account) == {}
    assert register(ec2, "denied-image", snapshot_id).startswith("ami-")


def test_s3_object_actions_surface_the_code(account):
    s3 = account.client("s3", config=NO_RETRY)
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=b"0123456789")
    for action in ("HeadObject", "GetObject", "PutObjectTagging"):
        _add(account, service="s3", action=action, status=403, code="AccessDenied", message=f"{action} denied")

    with aws_error("403") as error:  # HEAD: status only, no body (as on S3)
        s3.head_object(Bucket=bucket, Key="disk.raw")
    assert error["Message"] == "Forbidden"
    with aws_error("AccessDenied", "GetObject denied"):
        s3.get_object(Bucket=bucket, Key="disk.raw")
    with aws_error("AccessDenied", "GetObject denied"):
        s3.get_object(Bucket=bucket, Key="disk.raw", Range="bytes=0-3")
    with aws_error("AccessDenied", "PutObjectTagging denied"):
        s3.put_object_tagging(Bucket=bucket, Key="disk.raw", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})

    # Other object actions are untouched.
    assert s3.get_object_tagging(Bucket=bucket, Key="disk.raw")["TagSet"] == []
    s3.put_object(Bucket=bucket, Key="other.raw", Body=b"x")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["disk.raw", "other.raw"]


def test_count_is_honoured(account):
    s3 = account.client("s3", config=NO_RETRY)
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    rule = _add(account, service="s3", action="GetObject", status=403, code="AccessDenied", count=2)

    for _ in range(2):
        with aws_error("AccessDenied"):
            s3.get_object(Bucket=bucket, Key="k")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"abc"
    listed = _rules(account)[rule["id"]]
    assert (listed["count"], listed["fired"], listed["remaining"]) == (2, 2, 0)


def test_resource_substring_must_appear_in_the_request(account):
    s3 = account.client("s3", config=NO_RETRY)
    ec2 = account.client("ec2", config=NO_RETRY)
    bucket = account.bucket()
    for key in ("secret/disk one.raw", "public/disk.raw"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    _add(account, service="s3", action="GetObject", status=403, code="AccessDenied", resource="secret/disk one")
    denied_snapshot, allowed_snapshot = make_snapshot(ec2, 1), make_snapshot(ec2, 1)
    _add(account, service="ec2", action="RegisterImage", status=403, code="UnauthorizedOperation", resource=denied_snapshot)

    with aws_error("AccessDenied"):
        s3.get_object(Bucket=bucket, Key="secret/disk one.raw")
    assert s3.get_object(Bucket=bucket, Key="public/disk.raw")["Body"].read() == b"x"
    with aws_error("UnauthorizedOperation"):
        register(ec2, "with-denied-snapshot", denied_snapshot)
    assert register(ec2, "with-allowed-snapshot", allowed_snapshot).startswith("ami-")


def test_throttling_is_retried_by_botocore_standard_mode(account):
    _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded", count=1)
    with aws_error("RequestLimitExceeded"):
        account.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])

    rule = _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded", count=2)
    response = account.client("ec2", config=STANDARD_RETRY_5).describe_images(Owners=["self"])
    assert response["Images"] == []
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert _rules(account)[rule["id"]]["fired"] == 2

    s3 = account.client("s3", config=STANDARD_RETRY_5)
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    _add(account, service="s3", action="GetObject", status=503, code="SlowDown", message="Please reduce your request rate.", count=1)
    with aws_error("SlowDown", "Please reduce your request rate."):
        account.client("s3", config=NO_RETRY).get_object(Bucket=bucket, Key="k")
    _add(account, service="s3", action="GetObject", status=503, code="SlowDown", count=2)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"abc"


def test_query_protocol_errors_for_sts_and_sns(account):
    _add(account, service="sts", action="GetCallerIdentity", status=403, code="AccessDenied", message="no sts")
    _add(account, service="sns", action="CreateTopic", status=400, code="AuthorizationError", message="no sns")
    _add(account, service="sns", action="ListTopics", status=503, code="ThrottlingException", count=1)

    with aws_error("AccessDenied", "no sts") as error:
        account.client("sts", config=NO_RETRY).get_caller_identity()
    assert error["Type"] == "Sender"
    sns = account.client("sns", config=NO_RETRY)
    with aws_error("AuthorizationError", "no sns"):
        sns.create_topic(Name="t")
    with aws_error("ThrottlingException") as error:
        sns.list_topics()
    assert error["Type"] == "Receiver"
    assert sns.list_topics()["Topics"] == []


def test_bad_rules_are_rejected(account):
    base = {"account_id": account.id, "service": "ec2", "code": "UnauthorizedOperation"}
    for bad in (
        {"code": None},
        {"service": ""},
        {"status": 200},
        {"status": "x"},
        {"count": 0},
        {"resource": ""},
        {"colour": "red"},
        {"account_id": "12"},
    ):
        status, body = account.control("faults", {**base, **bad})
        assert status == 400, (bad, body)
    assert _rules(account) == {}


def test_moto_reset_clears_rules(emulator, account):
    _add(account, service="ec2", action="DescribeImages", status=403, code="UnauthorizedOperation")
    with aws_error("UnauthorizedOperation"):
        account.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])

    request = urllib.request.Request(f"{emulator}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback only)
        assert response.status == 200
    assert _rules(account) == {}
    again = Account(emulator, account.id)  # the reset also dropped the assumed-role keys
    assert again.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])["Images"] == []


# ---------------------------------------------------------------------------- rate and principal
# A chaos test needs transient faults at a rate, on the code under test only: ``probability``
# (seeded per rule, so a run can be repeated) and ``principal`` (a substring of the caller's role
# ARN) are the emulator's own test controls; the error answers are the same AWS wire formats.


def _outcomes(ec2, calls):
    """For each of ``calls`` DescribeImages: True when it failed with the injected code."""
    failed = []
    for _ in range(calls):
        try:
            ec2.describe_images(Owners=["self"])
            failed.append(False)
        except ClientError as error:
            assert error.response["Error"]["Code"] == "RequestLimitExceeded"
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            failed.append(True)
    return failed


def test_probability_fails_the_seeded_share_of_matching_requests(account, other_account):
    import random

    calls, seed = 120, 1234
    rule = _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded",
                probability=0.3, seed=seed)
    assert (rule["probability"], rule["seed"], rule["matched"], rule["fired"]) == (0.3, seed, 0, 0)
    failed = _outcomes(account.client("ec2", config=NO_RETRY), calls)

    # The n-th matching request fails exactly when the rule's n-th draw of Random(seed) is < p.
    draws = random.Random(seed)
    assert failed == [draws.random() < 0.3 for _ in range(calls)]
    assert 15 <= sum(failed) <= 60, sum(failed)
    listed = _rules(account)[rule["id"]]
    assert (listed["matched"], listed["fired"], listed["remaining"]) == (calls, sum(failed), None)
    # Other actions are not drawn for.
    account.client("ec2", config=NO_RETRY).describe_snapshots(OwnerIds=["self"])
    assert _rules(account)[rule["id"]]["matched"] == calls

    # The same seed in another account repeats the same sequence.
    _add(other_account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded",
         probability=0.3, seed=seed)
    assert _outcomes(other_account.client("ec2", config=NO_RETRY), calls) == failed


def test_probability_zero_never_fires_and_a_passed_draw_lets_the_next_rule_answer(account):
    never = _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded",
                 probability=0)
    always = _add(account, service="ec2", action="DescribeImages", status=503, code="Unavailable", count=2)
    assert always["probability"] == 1.0 and isinstance(always["seed"], int)
    ec2 = account.client("ec2", config=NO_RETRY)
    for _ in range(2):
        with aws_error("Unavailable"):
            ec2.describe_images(Owners=["self"])
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    rules = _rules(account)
    assert (rules[never["id"]]["matched"], rules[never["id"]]["fired"]) == (3, 0)
    assert (rules[always["id"]]["fired"], rules[always["id"]]["remaining"]) == (2, 0)


def test_count_limits_the_fired_requests_of_a_probable_rule(account):
    rule = _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded",
                probability=0.5, seed=99, count=3)
    failed = _outcomes(account.client("ec2", config=NO_RETRY), 40)
    assert sum(failed) == 3
    listed = _rules(account)[rule["id"]]
    assert (listed["fired"], listed["remaining"]) == (3, 0)
    # Once used up it draws no more: the last request it looked at is the one of its third fault.
    third = [n for n, f in enumerate(failed) if f][2]
    assert listed["matched"] == third + 1


def test_principal_limits_a_rule_to_callers_of_that_role(account):
    from test_iam import as_role

    _add(account, service="ec2", action="DescribeImages", status=503, code="RequestLimitExceeded",
         principal="role/ChaosFunctionRole")
    _add(account, service="s3", status=503, code="SlowDown", principal="FunctionRole")
    function = as_role(account, "ChaosFunctionRole")
    bucket = account.bucket()
    account.s3().put_object(Bucket=bucket, Key="k", Body=b"abc")

    with aws_error("RequestLimitExceeded"):
        function.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])
    with aws_error("SlowDown"):
        function.client("s3", config=NO_RETRY).get_object(Bucket=bucket, Key="k")
    # The set-up identity (role ami-emulator-test) and another role are not faulted.
    assert account.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])["Images"] == []
    assert account.client("s3", config=NO_RETRY).get_object(Bucket=bucket, Key="k")["Body"].read() == b"abc"
    other = as_role(account, "ChaosOperatorRole")
    assert other.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])["Images"] == []
    rules = list(_rules(account).values())
    assert [r["principal"] for r in rules] == ["role/ChaosFunctionRole", "FunctionRole"]
    assert [r["fired"] for r in rules] == [1, 1]


def test_bad_probability_seed_and_principal_are_rejected(account):
    base = {"account_id": account.id, "service": "ec2", "code": "RequestLimitExceeded"}
    for bad, message in (
        ({"probability": 1.5}, "probability must be a number from 0 to 1"),
        ({"probability": -0.1}, "probability must be a number from 0 to 1"),
        ({"probability": "0.5"}, "probability must be a number from 0 to 1"),
        ({"probability": True}, "probability must be a number from 0 to 1"),
        ({"seed": "abc"}, "seed must be an integer"),
        ({"principal": ""}, "principal must be a non-empty string or null"),
    ):
        status, body = account.control("faults", {**base, **bad})
        assert status == 400, (bad, body)
        assert message in json.dumps(body), body
    assert _rules(account) == {}


def test_a_latency_rule_holds_the_matching_ranged_read_then_moto_serves_it(account):
    import time

    bucket = account.bucket()
    s3 = account.client("s3", config=NO_RETRY)
    s3.put_object(Bucket=bucket, Key="disk.raw", Body=bytes(range(256)) * 64)
    rule = _add(account, service="s3", action="GetObject", resource="bytes=1024-", delay_seconds=1.5, count=1)
    assert rule["delay_seconds"] == 1.5 and rule["code"] == ""
    started = time.monotonic()
    other = s3.get_object(Bucket=bucket, Key="disk.raw", Range="bytes=0-511")["Body"].read()
    assert time.monotonic() - started < 1.4, "a read of another range is not held"
    assert other == bytes(range(256)) * 2
    started = time.monotonic()
    held = s3.get_object(Bucket=bucket, Key="disk.raw", Range="bytes=1024-1279")["Body"].read()
    assert time.monotonic() - started >= 1.5
    assert held == bytes(range(256)), "moto served the held request"
    assert _rules(account)[rule["id"]]["fired"] == 1
    started = time.monotonic()
    s3.get_object(Bucket=bucket, Key="disk.raw", Range="bytes=1024-1279")
    assert time.monotonic() - started < 1.4, "count 1: the second matching read is not held"


def test_a_latency_rule_with_a_code_answers_the_error_after_the_delay(account):
    import time

    rule = _add(account, service="ec2", action="DescribeImages", code="RequestLimitExceeded", status=503,
                delay_seconds=1, count=1)
    started = time.monotonic()
    with aws_error("RequestLimitExceeded"):
        account.client("ec2", config=NO_RETRY).describe_images(Owners=["self"])
    assert time.monotonic() - started >= 1.0
    assert rule["delay_seconds"] == 1.0


@pytest.mark.parametrize("delay", [0, -1, 31, "2", True])
def test_bad_delays_are_rejected(account, delay):
    status, body = account.control("faults", {"account_id": account.id, "service": "s3", "delay_seconds": delay})
    assert status == 400, body
    assert "delay_seconds must be a number of seconds above 0 and at most 30" in json.dumps(body)
# ---------------------------------------------------------------------------------------------
# after: true -- the request takes effect, then the fault answers ("the response was lost")
# ---------------------------------------------------------------------------------------------

CRASH = {"status": 400, "code": "InvocationCrashed",
         "message": "the call took effect; the invocation stops here (chaos harness)"}


def test_after_fault_on_create_tags_fails_the_call_but_the_tag_is_written(account):
    ec2 = account.client("ec2", config=NO_RETRY)
    snapshot_id = make_snapshot(ec2, 1)
    rule = _add(account, service="ec2", action="CreateTags", after=True, **CRASH)
    assert rule["after"] is True

    with aws_error("InvocationCrashed", CRASH["message"]) as error:
        ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": "stage", "Value": "written"}])
    assert error["Code"] == "InvocationCrashed"
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])} == {"stage": "written"}
    assert _rules(account)[rule["id"]]["fired"] == 1


def test_after_fault_on_register_image_fails_but_the_image_exists_and_a_retry_is_a_duplicate(account):
    ec2 = account.client("ec2", config=NO_RETRY)
    snapshot_id = make_snapshot(ec2, 1)
    _add(account, service="ec2", action="RegisterImage", count=1, after=True, status=500,
         code="InternalError", message="An internal error has occurred.")

    with aws_error("InternalError", "An internal error has occurred."):
        register(ec2, "lost-answer", snapshot_id)
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["lost-answer"]}])["Images"]
    assert [i["Name"] for i in images] == ["lost-answer"]
    # The caller's retry of the same call (what an SDK does after a lost 5xx answer).
    with aws_error("InvalidAMIName.Duplicate"):
        register(ec2, "lost-answer", snapshot_id)


def test_after_fault_on_sns_publish_fails_but_the_subscriber_gets_the_message(account):
    sns, sqs = account.client("sns", config=NO_RETRY), account.client("sqs")
    topic = sns.create_topic(Name="after-topic")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="after-queue")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    rule = _add(account, service="sns", action="Publish", after=True, **CRASH)

    with aws_error("InvocationCrashed"):
        sns.publish(TopicArn=topic, Message="delivered anyway")
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in messages] == ["delivered anyway"]
    assert _rules(account)[rule["id"]]["fired"] == 1


def test_after_fault_on_conditional_put_writes_the_object_and_the_retry_gets_412(account):
    bucket = account.bucket()
    _add(account, service="s3", action="PutObject", count=1, after=True, status=503, code="SlowDown",
         message="Please reduce your request rate.")
    s3 = account.client("s3", config=NO_RETRY)

    with aws_error("SlowDown"):
        s3.put_object(Bucket=bucket, Key="claims/lost", Body=b"first writer", IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="claims/lost")["Body"].read() == b"first writer"
    with aws_error("PreconditionFailed"):
        s3.put_object(Bucket=bucket, Key="claims/lost", Body=b"first writer", IfNoneMatch="*")


def test_after_false_keeps_the_request_from_reaching_moto(account):
    ec2 = account.client("ec2", config=NO_RETRY)
    snapshot_id = make_snapshot(ec2, 1)
    rule = _add(account, service="ec2", action="CreateTags", after=False, **CRASH)
    assert rule["after"] is False

    with aws_error("InvocationCrashed"):
        ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": "stage", "Value": "written"}])
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snapshot.get("Tags", []) == []
    # The default is false too.
    status, body = account.control(f"faults?account_id={account.id}", method="DELETE")
    assert status == 200, body
    assert _add(account, service="ec2", code="X")["after"] is False


def test_after_must_be_a_boolean(account):
    for bad in ("yes", 1, 0):
        status, body = account.control("faults", {"account_id": account.id, "service": "ec2", "code": "X",
                                                  "after": bad})
        assert status == 400, (bad, body)
        assert "after must be true or false" in json.dumps(body), body
    assert _rules(account) == {}
