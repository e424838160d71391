"""The EBS direct APIs (``ami_emulator/ebs_direct.py``), driven with boto3's ``ebs`` and ``ec2``
clients.

What AWS does (botocore ``ebs/2019-11-02`` model = the EBS direct APIs reference; EBS User
Guide "Use checksums", "Error retries", FAQ; "Quotas for Amazon EBS"): StartSnapshot makes a
``pending`` EC2 snapshot of VolumeSize GiB in 524288-byte blocks; PutSnapshotBlock writes one
block whose base64 SHA-256 must match ``x-amz-Checksum``; CompleteSnapshot takes the number of
written blocks and optionally the LINEAR aggregated checksum and seals the snapshot
(``completed``); only completed snapshots can be listed and read; a snapshot left alone for its
Timeout minutes is cancelled (``error``); at most 100 snapshots may be pending per account.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import Account, control_call
from emu_helpers import register, tags_of

BLOCK = 524288
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def _ebs(account: Account, validate: bool = True) -> Any:
    return account.client("ebs", config=NO_RETRY, validate=validate)


def _block(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)


def _b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _linear(blocks: dict[int, bytes]) -> str:
    """base64(SHA-256 of the raw 32-byte SHA-256 digests of the blocks, in block index order)."""
    outer = hashlib.sha256()
    for index in sorted(blocks):
        outer.update(hashlib.sha256(blocks[index]).digest())
    return base64.b64encode(outer.digest()).decode()


def _put(ebs: Any, snapshot_id: str, index: int, data: bytes, **kwargs: Any) -> dict[str, Any]:
    params = {"SnapshotId": snapshot_id, "BlockIndex": index, "BlockData": data, "DataLength": len(data),
              "Checksum": _b64sha(data), "ChecksumAlgorithm": "SHA256", **kwargs}
    return ebs.put_snapshot_block(**params)


def _error(call: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as excinfo:
        call()
    return excinfo.value.response


def _assert_error(response: dict[str, Any], code: str, status: int, reason: str | None = None, text: str | None = None) -> None:
    assert response["Error"]["Code"] == code, response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status, response
    if reason is not None:
        assert response.get("Reason") == reason, response
    if text is not None:
        assert text in response["Error"]["Message"], response


def _state(account: Account, snapshot_id: str) -> dict[str, Any]:
    return account.ec2().describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]


def _written(account: Account, blocks: dict[int, bytes], size: int = 1, **start: Any) -> str:
    ebs = _ebs(account)
    snapshot_id = ebs.start_snapshot(VolumeSize=size, **start)["SnapshotId"]
    for index, data in blocks.items():
        _put(ebs, snapshot_id, index, data)
    answer = ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=len(blocks), Checksum=_linear(blocks),
                                   ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert answer["Status"] == "completed"
    return snapshot_id


# ============================================================================ happy path


def test_write_complete_and_read_back_byte_for_byte(account):
    ebs = _ebs(account)
    started = ebs.start_snapshot(VolumeSize=1, Description="disk.raw", Tags=[{"Key": "lineage", "Value": "abc"}], Timeout=10)
    assert started["ResponseMetadata"]["HTTPStatusCode"] == 201
    snapshot_id = started["SnapshotId"]
    assert started["Status"] == "pending" and started["BlockSize"] == BLOCK and started["VolumeSize"] == 1
    assert started["OwnerId"] == account.id and started["Description"] == "disk.raw"
    assert started["Tags"] == [{"Key": "lineage", "Value": "abc"}] and "StartTime" in started

    blocks = {0: _block(0), 7: _block(7), 2047: _block(2047), 5: bytes(BLOCK)}  # 2047: the last block of 1 GiB
    for index, data in blocks.items():
        answer = _put(ebs, snapshot_id, index, data, Progress=50)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 201
        assert answer["Checksum"] == _b64sha(data) and answer["ChecksumAlgorithm"] == "SHA256"

    pending = _state(account, snapshot_id)
    assert pending["State"] == "pending" and pending["Progress"] == "50%"
    assert pending["VolumeSize"] == 1 and pending["VolumeId"] == "vol-ffffffff" and pending["Encrypted"] is False
    assert pending["Description"] == "disk.raw" and tags_of(pending) == {"lineage": "abc"}
    # A pending snapshot cannot be read (FAQ).
    _assert_error(_error(lambda: ebs.list_snapshot_blocks(SnapshotId=snapshot_id)), "ValidationException", 400, "INVALID_SNAPSHOT_ID")

    done = ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=4, Checksum=_linear(blocks),
                                 ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert done["Status"] == "completed" and done["ResponseMetadata"]["HTTPStatusCode"] == 202
    completed = _state(account, snapshot_id)
    assert completed["State"] == "completed" and completed["Progress"] == "100%"

    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [0, 5, 7, 2047]  # written blocks only, in order
    assert listed["VolumeSize"] == 1 and listed["BlockSize"] == BLOCK and "ExpiryTime" in listed
    for entry in listed["Blocks"]:
        got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=entry["BlockIndex"], BlockToken=entry["BlockToken"])
        data = got["BlockData"].read()
        assert data == blocks[entry["BlockIndex"]]
        assert got["DataLength"] == BLOCK and got["Checksum"] == _b64sha(data) and got["ChecksumAlgorithm"] == "SHA256"

    # Writing after completion is refused.
    _assert_error(_error(lambda: _put(ebs, snapshot_id, 1, _block(1))), "ValidationException", 400, "INVALID_SNAPSHOT_ID", "completed")


def test_overwrite_keeps_the_last_data_and_counts_the_block_once(account):
    ebs = _ebs(account)
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    _put(ebs, snapshot_id, 3, _block(1))
    _put(ebs, snapshot_id, 3, _block(2))  # "If the specified block contains data, the existing data is overwritten."
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1, Checksum=_linear({3: _block(2)}),
                          ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    token = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"][0]["BlockToken"]
    assert ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=3, BlockToken=token)["BlockData"].read() == _block(2)


def test_incremental_snapshot_and_list_changed_blocks(account):
    ebs = _ebs(account)
    parent = _written(account, {0: _block(0), 1: _block(1)})
    child = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)
    assert child["ParentSnapshotId"] == parent
    _put(ebs, child["SnapshotId"], 1, _block(11))
    _put(ebs, child["SnapshotId"], 2, _block(2))
    # ChangedBlocksCount and the checksum cover the blocks written to this snapshot only.
    ebs.complete_snapshot(SnapshotId=child["SnapshotId"], ChangedBlocksCount=2, Checksum=_linear({1: _block(11), 2: _block(2)}),
                          ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    child_id = child["SnapshotId"]
    listed = ebs.list_snapshot_blocks(SnapshotId=child_id)["Blocks"]
    assert [b["BlockIndex"] for b in listed] == [0, 1, 2]
    zero = ebs.get_snapshot_block(SnapshotId=child_id, BlockIndex=0, BlockToken=listed[0]["BlockToken"])
    assert zero["BlockData"].read() == _block(0)  # inherited from the parent
    changed = ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child_id)["ChangedBlocks"]
    assert [c["BlockIndex"] for c in changed] == [1, 2]
    assert "FirstBlockToken" in changed[0] and "FirstBlockToken" not in changed[1]
    unrelated = _written(account, {0: _block(0)})
    _assert_error(_error(lambda: ebs.list_changed_blocks(FirstSnapshotId=unrelated, SecondSnapshotId=child_id)),
                  "ValidationException", 400, "UNRELATED_SNAPSHOTS")


def test_encrypted_snapshot_records_the_key(account):
    ebs = _ebs(account)
    key = f"arn:aws:kms:us-east-1:{account.id}:key/11111111-2222-3333-4444-555555555555"
    started = ebs.start_snapshot(VolumeSize=2, Encrypted=True, KmsKeyArn=key)
    assert started["KmsKeyArn"] == key and started["SseType"] == "sse-kms"
    described = _state(account, started["SnapshotId"])
    assert described["Encrypted"] is True and described["KmsKeyId"] == key and described["VolumeSize"] == 2
    default = ebs.start_snapshot(VolumeSize=1, Encrypted=True)
    assert default["KmsKeyArn"].startswith(f"arn:aws:kms:us-east-1:{account.id}:key/")
    _assert_error(_error(lambda: _ebs(account, validate=False).start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn="not-an-arn")),
                  "ValidationException", 400, "INVALID_CUSTOMER_KEY")


# ============================================================================ ClientToken


def test_client_token_is_idempotent_and_conflicts_on_other_parameters(account):
    ebs = _ebs(account)
    first = ebs.start_snapshot(VolumeSize=1, ClientToken="upload-1", Tags=[{"Key": "k", "Value": "v"}])
    again = ebs.start_snapshot(VolumeSize=1, ClientToken="upload-1", Tags=[{"Key": "k", "Value": "v"}])
    assert again["SnapshotId"] == first["SnapshotId"]
    snapshots = account.ec2().describe_snapshots(Filters=[{"Name": "tag:k", "Values": ["v"]}])["Snapshots"]
    assert [s["SnapshotId"] for s in snapshots] == [first["SnapshotId"]]
    response = _error(lambda: ebs.start_snapshot(VolumeSize=2, ClientToken="upload-1", Tags=[{"Key": "k", "Value": "v"}]))
    _assert_error(response, "ConflictException", 409, None, "same client token")
    # Without a ClientToken boto3 generates one per call: two snapshots.
    assert ebs.start_snapshot(VolumeSize=1)["SnapshotId"] != ebs.start_snapshot(VolumeSize=1)["SnapshotId"]


# ============================================================================ validation


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"VolumeSize": 0}, "INVALID_VOLUME_SIZE"),
        ({"VolumeSize": 65537}, "INVALID_VOLUME_SIZE"),
        ({"VolumeSize": 1, "Timeout": 9}, "INVALID_PARAMETER_VALUE"),
        ({"VolumeSize": 1, "Timeout": 4321}, "INVALID_PARAMETER_VALUE"),
        ({"VolumeSize": 1, "Description": "x" * 256}, "INVALID_PARAMETER_VALUE"),
        ({"VolumeSize": 1, "Tags": [{"Key": "aws:reserved", "Value": "v"}]}, "INVALID_TAG"),
        ({"VolumeSize": 1, "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)]}, "INVALID_TAG"),
        ({"VolumeSize": 1, "Tags": [{"Key": "k" * 128, "Value": "v"}]}, "INVALID_TAG"),
        ({"VolumeSize": 1, "ParentSnapshotId": "snap-0123456789abcdef0", "Encrypted": True}, "INVALID_PARAMETER_VALUE"),
        ({"VolumeSize": 1, "ParentSnapshotId": "not-a-snapshot"}, "INVALID_SNAPSHOT_ID"),
    ],
)
def test_start_snapshot_validation(account, params, reason):
    _assert_error(_error(lambda: _ebs(account, validate=False).start_snapshot(**params)), "ValidationException", 400, reason)


def test_start_snapshot_unknown_or_pending_parent(account):
    ebs = _ebs(account)
    _assert_error(_error(lambda: ebs.start_snapshot(VolumeSize=1, ParentSnapshotId="snap-0123456789abcdef0")),
                  "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")
    pending = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    _assert_error(_error(lambda: ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=pending)), "ValidationException", 400, "INVALID_SNAPSHOT_ID")


def test_put_snapshot_block_validation(account):
    ebs = _ebs(account, validate=False)
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = _block(1)
    cases = [
        ({"BlockIndex": 2048}, "INVALID_BLOCK", "outside the volume"),  # 1 GiB = blocks 0..2047
        ({"BlockIndex": -1}, "INVALID_BLOCK", None),
        ({"BlockData": data[:1000], "DataLength": 1000, "Checksum": _b64sha(data[:1000])}, "INVALID_PARAMETER_VALUE", "DataLength"),
        ({"DataLength": BLOCK, "BlockData": data[:-1]}, "INVALID_PARAMETER_VALUE", "Failed to read block data"),
        ({"ChecksumAlgorithm": "SHA1"}, "INVALID_PARAMETER_VALUE", "ChecksumAlgorithm"),
        ({"Checksum": "not base64!"}, "INVALID_PARAMETER_VALUE", "Checksum"),
        ({"Checksum": _b64sha(b"other data")}, "INVALID_PARAMETER_VALUE", "does not match"),
        ({"Progress": 101}, "INVALID_PARAMETER_VALUE", "Progress"),
    ]
    for overrides, reason, text in cases:
        params = {"SnapshotId": snapshot_id, "BlockIndex": 0, "BlockData": data, "DataLength": BLOCK,
                  "Checksum": _b64sha(data), "ChecksumAlgorithm": "SHA256", **overrides}
        _assert_error(_error(lambda: ebs.put_snapshot_block(**params)), "ValidationException", 400, reason, text)
    # Nothing of the refused writes was stored.
    with pytest.raises(ClientError):
        ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1)
    assert ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=0)["Status"] == "completed"
    _assert_error(_error(lambda: _put(ebs, "snap-0123456789abcdef0", 0, data)), "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")


def test_complete_snapshot_count_and_checksum_mismatch(account):
    ebs = _ebs(account)
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    blocks = {4: _block(4), 1: _block(1)}
    for index, data in blocks.items():
        _put(ebs, snapshot_id, index, data)
    _assert_error(_error(lambda: ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=3)),
                  "ValidationException", 400, "INVALID_PARAMETER_VALUE", "ChangedBlocksCount 3")
    # The aggregate over the digests in write order (4, 1) instead of index order is wrong.
    wrong = base64.b64encode(hashlib.sha256(hashlib.sha256(blocks[4]).digest() + hashlib.sha256(blocks[1]).digest()).digest()).decode()
    _assert_error(_error(lambda: ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=2, Checksum=wrong,
                                                       ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")),
                  "ValidationException", 400, "INVALID_PARAMETER_VALUE", "aggregated checksum")
    # Neither refusal sealed it.
    assert _state(account, snapshot_id)["State"] == "pending"
    assert ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=2, Checksum=_linear(blocks),
                                 ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")["Status"] == "completed"


def test_get_snapshot_block_needs_a_valid_token(account):
    ebs = _ebs(account)
    snapshot_id = _written(account, {0: _block(0), 1: _block(1)})
    tokens = {b["BlockIndex"]: b["BlockToken"] for b in ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]}
    _assert_error(_error(lambda: ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=0, BlockToken=tokens[1])),
                  "ValidationException", 400, "INVALID_BLOCK_TOKEN")


def test_list_snapshot_blocks_pages(account):
    ebs = _ebs(account)
    blocks = {i: _block(i) for i in range(0, 210)}
    snapshot_id = _written(account, blocks)
    first = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, MaxResults=100)
    assert [b["BlockIndex"] for b in first["Blocks"]] == list(range(100)) and first["NextToken"]
    second = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, MaxResults=100, NextToken=first["NextToken"])
    third = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, MaxResults=100, NextToken=second["NextToken"])
    assert [b["BlockIndex"] for b in third["Blocks"]] == list(range(200, 210)) and "NextToken" not in third
    started = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, StartingBlockIndex=205)
    assert [b["BlockIndex"] for b in started["Blocks"]] == list(range(205, 210))
    _assert_error(_error(lambda: ebs.list_snapshot_blocks(SnapshotId=snapshot_id, NextToken="Zm9v")),
                  "ValidationException", 400, "INVALID_PAGE_TOKEN")


# ============================================================================ EC2 side


def test_register_image_from_a_completed_snapshot_and_delete_order(account):
    ec2 = account.ec2()
    snapshot_id = _written(account, {0: _block(0)}, size=2)
    image_id = register(ec2, "ebs-direct-image", snapshot_id)
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    ebs_mapping = image["BlockDeviceMappings"][0]["Ebs"]
    assert ebs_mapping["SnapshotId"] == snapshot_id and ebs_mapping["VolumeSize"] == 2
    ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": "image", "Value": image_id}])
    assert tags_of(_state(account, snapshot_id)) == {"image": image_id}
    with pytest.raises(ClientError) as excinfo:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert excinfo.value.response["Error"]["Code"] == "InvalidSnapshot.InUse"
    ec2.deregister_image(ImageId=image_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_deleting_a_pending_snapshot_ends_it(account):
    ebs = _ebs(account)
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    _put(ebs, snapshot_id, 0, _block(0))
    account.ec2().delete_snapshot(SnapshotId=snapshot_id)
    _assert_error(_error(lambda: _put(ebs, snapshot_id, 1, _block(1))), "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")
    _assert_error(_error(lambda: ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1)),
                  "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")


def test_timeout_turns_the_snapshot_to_error(account):
    ebs = _ebs(account)
    snapshot_id = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    _put(ebs, snapshot_id, 0, _block(0))
    # 9 minutes after the last write: still pending.
    status, body = account.control("ebs-snapshot-activity", {"account_id": account.id, "snapshot_id": snapshot_id,
                                                             "last_activity": _minutes_ago(9)})
    assert status == 200 and body["status"] == "pending", body
    status, body = account.control("ebs-snapshot-activity", {"account_id": account.id, "snapshot_id": snapshot_id,
                                                             "last_activity": _minutes_ago(10.5)})
    assert status == 200 and body["status"] == "error", body
    assert _state(account, snapshot_id)["State"] == "error"
    assert account.ec2().describe_snapshots(Filters=[{"Name": "status", "Values": ["error"]}])["Snapshots"][0]["SnapshotId"] == snapshot_id
    _assert_error(_error(lambda: _put(ebs, snapshot_id, 1, _block(1))), "ValidationException", 400, "INVALID_SNAPSHOT_ID", "error state")
    _assert_error(_error(lambda: ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1)),
                  "ValidationException", 400, "INVALID_SNAPSHOT_ID")


def _minutes_ago(minutes: float) -> str:
    import datetime as dt

    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_pending_snapshot_limit(account):
    status, body = account.control("ebs-direct", {"account_id": account.id, "pending_snapshot_limit": 2})
    assert status == 200 and body["pending_snapshot_limit"] == 2, body
    ebs = _ebs(account)
    first = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    ebs.start_snapshot(VolumeSize=1)
    _assert_error(_error(lambda: ebs.start_snapshot(VolumeSize=1)), "ServiceQuotaExceededException", 402,
                  "DEPENDENCY_SERVICE_QUOTA_EXCEEDED", "pending snapshots (2)")
    ebs.complete_snapshot(SnapshotId=first, ChangedBlocksCount=0)
    ebs.start_snapshot(VolumeSize=1)  # a completed one frees its place
    status, body = account.control(f"ebs-direct?account_id={account.id}", method="GET")
    assert body == {"account_id": account.id, "pending_snapshot_limit": 2}
    status, body = account.control("ebs-direct", {"account_id": account.id, "pending_snapshot_limit": None})
    assert body["pending_snapshot_limit"] == 100
    status, body = account.control("ebs-direct", {"account_id": account.id, "pending_snapshot_limit": -1})
    assert status == 400, body


# ============================================================================ rate limits


def test_put_snapshot_block_is_throttled_per_snapshot_when_switched_on(account):
    ebs = _ebs(account)
    first = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    second = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    status, body = account.control("rate-limits", {"account_id": account.id, "service": "ebs", "enabled": True,
                                                   "categories": {"per_snapshot": {"capacity": 2, "refill_per_second": 0.01}}})
    assert status == 200 and body["service"] == "ebs" and body["categories"]["per_snapshot"]["capacity"] == 2, body
    _put(ebs, first, 0, _block(0))
    _put(ebs, first, 1, _block(1))
    _assert_error(_error(lambda: _put(ebs, first, 2, _block(2))), "RequestThrottledException", 400, "RESOURCE_LEVEL_THROTTLE")
    _put(ebs, second, 0, _block(0))  # another snapshot has its own bucket
    # The account bucket: StartSnapshot 10/s by default; lowered to 1.
    status, body = account.control("rate-limits", {"account_id": account.id, "service": "ebs", "enabled": True,
                                                   "actions": {"StartSnapshot": {"capacity": 1, "refill_per_second": 0.01}}})
    assert status == 200, body
    ebs.start_snapshot(VolumeSize=1)
    _assert_error(_error(lambda: ebs.start_snapshot(VolumeSize=1)), "ThrottlingException", 400)
    status, body = account.control(f"rate-limits?account_id={account.id}&service=ebs", method="GET")
    assert body["throttled"]["by_action"] == {"PutSnapshotBlock": 1, "StartSnapshot": 1}, body
    # EC2 throttling stays off, and switching EBS off lets everything through.
    status, body = account.control(f"rate-limits?account_id={account.id}&service=ebs", method="DELETE")
    assert status == 200 and body["enabled"] is False
    ebs.start_snapshot(VolumeSize=1)
    _put(ebs, first, 2, _block(2))


def test_ebs_calls_are_not_throttled_without_the_switch(account):
    ebs = _ebs(account)
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for index in range(30):
        _put(ebs, snapshot_id, index, _block(index))
    for _ in range(15):
        ebs.start_snapshot(VolumeSize=1)


# ============================================================================ IAM


def _as_role(account: Account, role: str) -> Account:
    view = Account.__new__(Account)
    view.endpoint, view.id, view._clients = account.endpoint, account.id, {}
    sts = boto3.client("sts", endpoint_url=account.endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account.id}:role/{role}", RoleSessionName="ebs-test")["Credentials"]
    view._creds = {"aws_access_key_id": creds["AccessKeyId"], "aws_secret_access_key": creds["SecretAccessKey"],
                   "aws_session_token": creds["SessionToken"]}
    return view


TEMPLATE = """
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Uploader:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: provided.al2023
      Handler: bootstrap
      CodeUri: .
      Policies:
        - Statement:
            - Sid: StartTaggedSnapshots
              Effect: Allow
              Action: ebs:StartSnapshot
              Resource: !Sub arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*
              Condition:
                StringEquals:
                  "aws:RequestTag/ami-pipeline:managed": "true"
                NumericLessThanEquals:
                  "ebs:VolumeSize": "8"
            - Sid: TagAtStart
              Effect: Allow
              Action: ec2:CreateTags
              Resource: !Sub arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*
              Condition:
                StringEquals:
                  "ec2:CreateAction": StartSnapshot
            - Sid: WriteOwnSnapshots
              Effect: Allow
              Action: [ebs:PutSnapshotBlock, ebs:CompleteSnapshot]
              Resource: !Sub arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*
              Condition:
                StringEquals:
                  "aws:ResourceTag/ami-pipeline:managed": "true"
"""


def test_iam_template_role(tmp_path, account):
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    status, body = control_call(account.endpoint, "iam/template-roles",
                                {"account_id": account.id, "region": "us-east-1", "template_path": str(path)})
    assert status == 200 and "UploaderRole" in body["roles"], body
    ebs = _as_role(account, "UploaderRole").client("ebs", config=NO_RETRY)
    managed = [{"Key": "ami-pipeline:managed", "Value": "true"}]

    snapshot_id = ebs.start_snapshot(VolumeSize=1, Tags=managed)["SnapshotId"]
    _put(ebs, snapshot_id, 0, _block(0))
    assert ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1)["Status"] == "completed"

    # No read permission: ListSnapshotBlocks is denied on the snapshot's ARN.
    response = _error(lambda: ebs.list_snapshot_blocks(SnapshotId=snapshot_id))
    _assert_error(response, "AccessDeniedException", 403, "UNAUTHORIZED_ACCOUNT",
                  f"ebs:ListSnapshotBlocks on resource: arn:aws:ec2:us-east-1::snapshot/{snapshot_id}")
    # Without the tag, or too big: StartSnapshot is denied; nothing is created.
    before = len(account.ec2().describe_snapshots()["Snapshots"])
    _assert_error(_error(lambda: ebs.start_snapshot(VolumeSize=1)), "AccessDeniedException", 403, "UNAUTHORIZED_ACCOUNT")
    _assert_error(_error(lambda: ebs.start_snapshot(VolumeSize=9, Tags=managed)), "AccessDeniedException", 403, "UNAUTHORIZED_ACCOUNT")
    assert len(account.ec2().describe_snapshots()["Snapshots"]) == before
    # A snapshot of someone else (no managed tag) cannot be written.
    foreign = _ebs(account).start_snapshot(VolumeSize=1)["SnapshotId"]
    _assert_error(_error(lambda: _put(ebs, foreign, 0, _block(0))), "AccessDeniedException", 403, "UNAUTHORIZED_ACCOUNT")
    status, body = control_call(account.endpoint, f"iam/denials?account_id={account.id}", method="GET")
    actions = [d["action"] for d in body["denials"]]
    assert actions == ["ebs:ListSnapshotBlocks", "ebs:StartSnapshot", "ebs:StartSnapshot", "ebs:PutSnapshotBlock"], body


def test_iam_start_snapshot_with_tags_needs_ec2_create_tags(account):
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ebs:*", "Resource": "*"}]}
    status, body = control_call(account.endpoint, "iam/role-policies",
                                {"account_id": account.id, "role_name": "ebs-only", "policies": [policy]})
    assert status == 200, body
    ebs = _as_role(account, "ebs-only").client("ebs", config=NO_RETRY)
    ebs.start_snapshot(VolumeSize=1)
    response = _error(lambda: ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "k", "Value": "v"}]))
    _assert_error(response, "AccessDeniedException", 403, "DEPENDENCY_ACCESS_DENIED", "ec2:CreateTags")
    status, body = control_call(account.endpoint, f"iam/denials?account_id={account.id}", method="GET")
    assert body["denials"][-1]["request"] == "ebs:StartSnapshot" and body["denials"][-1]["action"] == "ec2:CreateTags", body


# ============================================================================ sealing takes time


def test_a_snapshot_seals_after_complete_snapshot_and_takes_no_block_meanwhile(account):
    """CompleteSnapshot "seals and completes the snapshot"; AWS does it asynchronously and answers
    Status ``pending`` meanwhile (its Status enum: completed | pending | error). With the account's
    ``seal_delay_seconds`` the snapshot stays ``pending`` (DescribeSnapshots too) for that long,
    refuses blocks ("You cannot write new blocks to a snapshot after it has been completed"),
    answers a second CompleteSnapshot ``pending``, and is ``completed`` after it."""
    import time

    status, body = control_call(account.endpoint, "config", {"account_id": account.id, "seal_delay_seconds": 1.5})
    assert status == 200 and body["seal_delay_seconds"] == 1.5, body
    ebs = _ebs(account)
    snapshot_id = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    blocks = {0: _block(1), 3: _block(2)}
    for index, data in blocks.items():
        _put(ebs, snapshot_id, index, data)
    complete = {"SnapshotId": snapshot_id, "ChangedBlocksCount": 2, "Checksum": _linear(blocks),
                "ChecksumAlgorithm": "SHA256", "ChecksumAggregationMethod": "LINEAR"}
    assert ebs.complete_snapshot(**complete)["Status"] == "pending"
    assert _state(account, snapshot_id)["State"] == "pending"
    _assert_error(_error(lambda: _put(ebs, snapshot_id, 5, _block(3))), "ValidationException", 400,
                  "INVALID_SNAPSHOT_ID", "being completed")
    assert ebs.complete_snapshot(**complete)["Status"] == "pending"
    time.sleep(1.6)
    assert _state(account, snapshot_id)["State"] == "completed"
    assert ebs.complete_snapshot(**complete)["Status"] == "completed"
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    assert [b["BlockIndex"] for b in listed] == [0, 3]
    status, body = control_call(account.endpoint, "config", {"account_id": account.id, "seal_delay_seconds": None})
    assert status == 200 and body["seal_delay_seconds"] == 0.0, body
    assert _written(account, {0: _block(4)})  # completed at once again
