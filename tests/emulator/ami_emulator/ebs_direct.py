"""The EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot, ListSnapshotBlocks,
GetSnapshotBlock, ListChangedBlocks), replacing moto 5.2.5's thin ``moto/ebs`` handlers.

Sources (cited next to each rule below):

* botocore's model ``ebs/2019-11-02/service-2.json`` (the same text as the EBS direct APIs
  reference, https://docs.aws.amazon.com/ebs/latest/APIReference/): operations, HTTP locations
  (uri / header / querystring / payload), member ranges, the error shapes and their ``Reason``
  enums.
* EBS User Guide, "Use EBS direct APIs checksums to validate snapshot data"
  (https://docs.aws.amazon.com/ebs/latest/userguide/ebsapis-using-checksums.html).
* EBS User Guide, "Error retries for EBS direct APIs"
  (https://docs.aws.amazon.com/ebs/latest/userguide/error-retries.html): which error each
  failure class answers (ValidationException "Failed to read block data", ThrottlingException
  for the account, RequestThrottledException for the snapshot, ResourceNotFoundException 404,
  ConflictException 409, ServiceQuotaExceededException 402).
* EBS User Guide, "Frequently asked questions for EBS direct APIs"
  (https://docs.aws.amazon.com/ebs/latest/userguide/ebsapi-faq.html): a pending snapshot cannot
  be read; MaxResults under 100 still returns at least 100; block tokens live seven days; only
  written blocks are listed.
* "Quotas for Amazon EBS" (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-resource-quotas.html)
  and aws-facts.md's table: 100 pending snapshots per account (per Region, "Unless otherwise
  noted, each quota is Region-specific").

What this module owns: ``EbsDirectSnapshot`` (a real moto EC2 snapshot, so DescribeSnapshots,
CreateTags, DeleteSnapshot and RegisterImage see it, that also holds the written blocks), the
per account+region client tokens (on moto's EC2 backend, wiped by ``/moto-api/reset``), the
per-account pending-snapshot limit and the control endpoints ``/ami-pipeline-emulator/ebs-direct``
and ``/ami-pipeline-emulator/ebs-snapshot-activity``. Throttling lives in ``rate_limits`` (policy
``ebs``) and authorization in ``iam`` (``_ebs_checks``); both use ``error_response`` here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import re
import threading
from typing import Any
from urllib.parse import parse_qs

from werkzeug.wrappers import Request, Response

from . import control
from .common import LOCK, account_config, ec2_backend_for, iso_millis, utcnow
from .snapshots import EmulatorSnapshot

# -- constants (botocore ebs model unless said otherwise) ------------------------------------------

# "Currently, the only supported size is 524288 bytes" (PutSnapshotBlockRequest.DataLength);
# StartSnapshot answers it as BlockSize.
BLOCK_SIZE = 524288
BLOCKS_PER_GIB = (1024**3) // BLOCK_SIZE
# StartSnapshotRequest.VolumeSize: "The maximum size is 65536 GiB (64 TiB)"; VolumeSize min 1.
MAX_VOLUME_SIZE_GIB = 65536
# Timeout: min 10, max 4320 minutes; "If no value is specified, the timeout defaults to 60 minutes."
MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 10, 4320, 60
# Quotas for Amazon EBS: "Pending snapshots per account", default 100.
DEFAULT_PENDING_LIMIT = 100
# FAQ: "Block tokens are valid for seven days".
BLOCK_TOKEN_TTL = _dt.timedelta(days=7)
# ListSnapshotBlocks / ListChangedBlocks MaxResults: min 100, max 10000; FAQ: under 100 "the API
# will return at least 100 results".
MIN_RESULTS, MAX_RESULTS = 100, 10000
# Tags: "You can specify up to 50 tags per snapshot" (StartSnapshotResponse.Tags); TagKey max
# 127, TagValue max 255; Description max 255; IdempotencyToken max 255; ErrorMessage max 256.
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE, MAX_DESCRIPTION, MAX_CLIENT_TOKEN = 50, 127, 255, 255, 255
SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]+$")
KMS_KEY_ARN = re.compile(r"arn:aws[a-z\-]*:kms:.*:[0-9]{12}:key/.*")
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9+/=]+$")
ZERO_BLOCK_DIGEST = hashlib.sha256(bytes(BLOCK_SIZE)).digest()

# -- errors ------------------------------------------------------------------------------------


class EbsError(Exception):
    """An EBS direct API error: the model's exception shape, its HTTP status and ``Reason``."""

    def __init__(self, code: str, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message[:256]  # ErrorMessage: max 256
        self.reason = reason


def validation(message: str, reason: str = "INVALID_PARAMETER_VALUE") -> EbsError:
    """ValidationException (HTTP 400) with a ``ValidationExceptionReason``."""
    return EbsError("ValidationException", 400, message, reason)


def not_found(snapshot_id: str) -> EbsError:
    """ResourceNotFoundException (404), reason SNAPSHOT_NOT_FOUND ("The specified snapshot ID
    does not exist", error-retries table)."""
    return EbsError("ResourceNotFoundException", 404, f"The snapshot '{snapshot_id}' does not exist.", "SNAPSHOT_NOT_FOUND")


def error_parts(error: EbsError) -> tuple[int, dict[str, str], str]:
    """Status, headers and JSON body in the rest-json error form: the code in
    ``x-amzn-ErrorType`` and ``__type``, the modeled members ``Message`` and ``Reason``."""
    body: dict[str, Any] = {"__type": error.code, "message": error.message, "Message": error.message}
    if error.reason is not None:
        body["Reason"] = error.reason
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error.code}
    return error.status, headers, json.dumps(body)


def error_response(error: EbsError) -> Response:
    """The same answer as a werkzeug Response (for the ``rate_limits`` and ``iam`` gates)."""
    status, headers, body = error_parts(error)
    return Response(body, status=status, headers=headers)


# -- per-account configuration -----------------------------------------------------------------

_CONFIG_LOCK = threading.Lock()
_PENDING_LIMITS: dict[str, int] = {}


def pending_limit(account: str) -> int:
    with _CONFIG_LOCK:
        return _PENDING_LIMITS.get(account, DEFAULT_PENDING_LIMIT)


def _reset() -> None:
    with _CONFIG_LOCK:
        _PENDING_LIMITS.clear()


# -- the snapshot ------------------------------------------------------------------------------


class EbsDirectSnapshot(EmulatorSnapshot):
    """A snapshot started by StartSnapshot: a moto EC2 snapshot (``VolumeId`` ``vol-ffffffff``,
    like every snapshot not taken from a volume) that holds its written blocks.

    Status: ``pending`` until CompleteSnapshot, then ``completed`` (after the account's
    ``seal_delay_seconds``: AWS seals asynchronously, and while it seals the snapshot is still
    ``pending`` and takes no block), or ``error`` once Timeout
    minutes passed since the start or the last written block (StartSnapshotRequest.Timeout: "the
    snapshot is automatically cancelled if: No blocks are written to the snapshot. The snapshot
    is not completed after writing the last block of data."), computed lazily.

    Blocks: index -> data (``None`` for an all-zero block, kept as a flag) and index -> raw
    SHA-256 digest, of the blocks written to this snapshot (not its parent's).
    """

    def __init__(self, ec2_backend: Any, snapshot_id: str, size_gib: int, description: str, *, encrypted: bool,
                 kms_key_id: str | None, timeout_minutes: int, parent_id: str | None) -> None:
        self._initialised = False
        self.sealed = False
        self.sealing_until: _dt.datetime | None = None
        self.timeout_minutes = timeout_minutes
        self.parent_id = parent_id
        self.blocks: dict[int, bytes | None] = {}
        self.digests: dict[int, bytes] = {}
        self.write_progress: int | None = None
        self.token_salt = base64.b32encode(hashlib.sha256(snapshot_id.encode()).digest()[:5]).decode()
        super().__init__(ec2_backend, snapshot_id, size_gib, description, encrypted=encrypted,
                         kms_key_id=kms_key_id, owner_id=ec2_backend.account_id)
        self.last_activity = self.start_time
        self._initialised = True

    @property  # type: ignore[override]
    def status(self) -> str:
        if self.sealed:
            return "completed"
        if self.sealing_until is not None:
            return "completed" if utcnow() >= self.sealing_until else "pending"
        if self._explicit_status not in (None, "pending"):
            return self._explicit_status
        if utcnow() >= self.last_activity + _dt.timedelta(minutes=self.timeout_minutes):
            return "error"
        return "pending"

    @status.setter
    def status(self, value: str) -> None:
        if not getattr(self, "_initialised", False):
            return  # moto's Snapshot.__init__ assigns "completed"
        self.sealed = value == "completed"
        self._explicit_status = None if value in ("completed", "pending") else value

    @property
    def progress(self) -> str:  # type: ignore[override]
        # DescribeSnapshots Progress: the last x-amz-Progress of PutSnapshotBlock while open.
        status = self.status
        if status == "completed":
            return "100%"
        return f"{self.write_progress or 0}%"

    @property
    def block_count(self) -> int:
        return self.volume.size * BLOCKS_PER_GIB


def _state(backend: Any) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """ClientToken -> (request fingerprint, original response), per account+region, on moto's
    EC2 backend so that ``/moto-api/reset`` forgets it."""
    return backend.__dict__.setdefault("_ami_emulator_ebs_client_tokens", {})


def _snapshot(backend: Any, snapshot_id: str) -> EbsDirectSnapshot:
    if not isinstance(snapshot_id, str) or not SNAPSHOT_ID.match(snapshot_id):
        # SnapshotId pattern ^snap-[0-9a-f]+$, max 64.
        raise validation(f"The snapshot ID '{snapshot_id}' is not valid.", "INVALID_SNAPSHOT_ID")
    snapshot = backend.snapshots.get(snapshot_id)
    if snapshot is None:
        raise not_found(snapshot_id)
    if not isinstance(snapshot, EbsDirectSnapshot):
        # A snapshot that was not written through the EBS direct APIs has no block data here:
        # an empty, completed snapshot of its size (kinder than AWS, which reads its blocks).
        return _adopt(backend, snapshot)
    return snapshot


def _adopt(backend: Any, snapshot: Any) -> EbsDirectSnapshot:
    view = EbsDirectSnapshot.__new__(EbsDirectSnapshot)
    view.__dict__.update(snapshot.__dict__)
    view.sealed = True
    view.sealing_until = None
    view._explicit_status = None
    view.blocks, view.digests = {}, {}
    view.parent_id, view.timeout_minutes, view.write_progress = None, DEFAULT_TIMEOUT, None
    view.last_activity = snapshot.start_time
    view.token_salt = base64.b32encode(hashlib.sha256(snapshot.id.encode()).digest()[:5]).decode()
    view._initialised = True
    return view


def _lineage(backend: Any, snapshot: EbsDirectSnapshot) -> list[EbsDirectSnapshot]:
    """The snapshot and its ancestors (ParentSnapshotId chain), nearest first."""
    chain = [snapshot]
    seen = {snapshot.id}
    parent_id = snapshot.parent_id
    while parent_id and parent_id not in seen:
        parent = backend.snapshots.get(parent_id)
        if parent is None:
            break  # a deleted parent: AWS keeps the data; the emulator forgets it
        view = parent if isinstance(parent, EbsDirectSnapshot) else _adopt(backend, parent)
        chain.append(view)
        seen.add(parent_id)
        parent_id = view.parent_id
    return chain


def _effective_blocks(backend: Any, snapshot: EbsDirectSnapshot) -> dict[int, EbsDirectSnapshot]:
    """Block index -> the snapshot of the lineage that wrote it (an incremental snapshot shows
    its parent's blocks where it wrote none), within this snapshot's volume size."""
    owners: dict[int, EbsDirectSnapshot] = {}
    for member in reversed(_lineage(backend, snapshot)):
        for index in member.blocks:
            owners[index] = member
    limit = snapshot.block_count
    return {index: owner for index, owner in sorted(owners.items()) if index < limit}


def _block_token(snapshot: EbsDirectSnapshot, index: int) -> str:
    raw = f"{snapshot.id}.{index}.{snapshot.token_salt}".encode()
    return base64.b64encode(raw).decode()


def _token_index(snapshot: EbsDirectSnapshot, token: str) -> int | None:
    try:
        text = base64.b64decode(token.encode(), validate=True).decode()
        snapshot_id, index, salt = text.split(".")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if snapshot_id != snapshot.id or salt != snapshot.token_salt or not index.isdigit():
        return None
    return int(index)


# -- request parsing helpers -------------------------------------------------------------------


def _int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
         reason: str = "INVALID_PARAMETER_VALUE") -> int:
    if isinstance(value, bool):
        raise validation(f"Value for {name} must be an integer.", reason)
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise validation(f"Value '{value}' for {name} is not an integer.", reason) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise validation(f"Value {number} for {name} must be {bounds}.", reason)
    return number


def _decode_sha256(value: str, name: str) -> bytes:
    """A base64 SHA-256 digest (Checksum: pattern ^[A-Za-z0-9+/=]+$, max 64)."""
    try:
        digest = base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if not TOKEN_CHARS.match(value) or len(value) > 64 or len(digest) != 32:
        raise validation(f"The value of {name} is not a Base64-encoded SHA256 checksum.")
    return digest


def _timestamp(value: _dt.datetime) -> float:
    """rest-json timestamps in a JSON body are epoch seconds (the protocol's default format)."""
    return round(value.replace(tzinfo=_dt.timezone.utc).timestamp(), 3)


# -- operations --------------------------------------------------------------------------------


def start_snapshot(account: str, region: str, payload: dict[str, Any]) -> dict[str, Any]:
    """StartSnapshot (POST /snapshots, 201): a new pending snapshot, or the original answer of
    the same ClientToken."""
    volume_size = payload.get("VolumeSize")
    if volume_size is None:
        raise validation("Missing required parameter VolumeSize.")
    # VolumeSize: long, min 1; "The maximum size is 65536 GiB (64 TiB)".
    size = _int(volume_size, "VolumeSize", minimum=1, maximum=MAX_VOLUME_SIZE_GIB, reason="INVALID_VOLUME_SIZE")
    timeout = DEFAULT_TIMEOUT
    if payload.get("Timeout") is not None:
        timeout = _int(payload["Timeout"], "Timeout", minimum=MIN_TIMEOUT, maximum=MAX_TIMEOUT)
    description = payload.get("Description")
    if description is not None and (not isinstance(description, str) or not description or len(description) > MAX_DESCRIPTION):
        raise validation(f"Description must be 1 to {MAX_DESCRIPTION} characters.")
    tags = _tags(payload.get("Tags"))
    parent_id = payload.get("ParentSnapshotId")
    encrypted = payload.get("Encrypted")
    kms_key_arn = payload.get("KmsKeyArn")
    if parent_id is not None and encrypted is not None:
        # ParentSnapshotId / Encrypted: "You can't specify ParentSnapshotId and Encrypted in the
        # same request. If you specify both parameters, the request fails with ValidationException."
        raise validation("You can't specify ParentSnapshotId and Encrypted in the same request.")
    if kms_key_arn is not None and (not isinstance(kms_key_arn, str) or not KMS_KEY_ARN.fullmatch(kms_key_arn)):
        # KmsKeyArn pattern arn:aws[a-z\-]*:kms:.*:[0-9]{12}:key/.*
        raise validation(f"The KMS key ARN '{kms_key_arn}' is not valid.", "INVALID_CUSTOMER_KEY")
    token = payload.get("ClientToken")
    if token is not None and (not isinstance(token, str) or not token or len(token) > MAX_CLIENT_TOKEN or re.search(r"\s", token)):
        raise validation(f"ClientToken must be 1 to {MAX_CLIENT_TOKEN} non-space characters.")
    fingerprint = (size, parent_id, tuple(sorted(tags.items())), description, encrypted, kms_key_arn, timeout)
    with LOCK:
        backend = ec2_backend_for(account, region)
        tokens = _state(backend)
        if token is not None and token in tokens:
            previous, answer = tokens[token]
            if previous != fingerprint:
                # "Idempotency for StartSnapshot API": the same client token with different
                # parameters; ConflictException 409 ("The request uses the same client token as
                # a previous, but non-identical request.").
                raise EbsError("ConflictException", 409,
                               "The request uses the same client token as a previous, but non-identical request.")
            return answer
        parent = None
        if parent_id is not None:
            parent = _snapshot(backend, str(parent_id))
            if parent.status != "completed":
                # FAQ: "The snapshot can be accessed only if it has a completed status."
                raise validation(f"The parent snapshot '{parent_id}' is not in the completed state.", "INVALID_SNAPSHOT_ID")
            if parent.encrypted and kms_key_arn is None:
                kms_key_arn = parent.kms_key_id  # "Using encryption": an encrypted parent's key
        pending = sum(1 for s in list(backend.snapshots.values()) if getattr(s, "status", "") == "pending")
        limit = pending_limit(account)
        if pending >= limit:
            # Quotas for Amazon EBS, "Pending snapshots per account" (100); answered as the
            # error-retries table's ServiceQuotaExceededException (402) "would exceed one or more
            # dependent service quotas", reason DEPENDENCY_SERVICE_QUOTA_EXCEEDED.
            raise EbsError("ServiceQuotaExceededException", 402,
                           f"The maximum number of pending snapshots ({limit}) has been reached for this account.",
                           "DEPENDENCY_SERVICE_QUOTA_EXCEEDED")
        is_encrypted = bool(encrypted) or kms_key_arn is not None or bool(parent and parent.encrypted)
        if is_encrypted and kms_key_arn is None:
            # "If neither are specified ... the default CMK for the account is used".
            kms_key_arn = backend.default_kms_key_id or backend._create_default_encryption_key()
        from moto.ec2.utils import random_snapshot_id

        snapshot = EbsDirectSnapshot(backend, random_snapshot_id(), size, description or "", encrypted=is_encrypted,
                                     kms_key_id=kms_key_arn, timeout_minutes=timeout, parent_id=parent_id)
        backend.snapshots[snapshot.id] = snapshot
        if tags:
            # StartSnapshotRequest.Tags: "The tags to apply to the snapshot."
            backend.create_tags([snapshot.id], tags)
        answer: dict[str, Any] = {
            "SnapshotId": snapshot.id,
            "OwnerId": account,
            "Status": "pending",
            "StartTime": _timestamp(snapshot.start_time),
            "VolumeSize": size,
            "BlockSize": BLOCK_SIZE,
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
            "SseType": "sse-kms" if is_encrypted else "none",
        }
        if description:
            answer["Description"] = description
        if parent_id:
            answer["ParentSnapshotId"] = parent_id
        if kms_key_arn:
            answer["KmsKeyArn"] = kms_key_arn
        if token is not None:
            tokens[token] = (fingerprint, answer)
        return answer


def _tags(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise validation("Tags must be a list of {Key, Value}.", "INVALID_TAG")
    tags: dict[str, str] = {}
    for tag in raw:
        key = tag.get("Key") if isinstance(tag, dict) else None
        value = tag.get("Value", "") if isinstance(tag, dict) else None
        if not isinstance(key, str) or not key or len(key) > MAX_TAG_KEY:
            raise validation(f"Tag keys must be 1 to {MAX_TAG_KEY} characters.", "INVALID_TAG")
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
            raise validation(f"Tag values must be at most {MAX_TAG_VALUE} characters.", "INVALID_TAG")
        if key.lower().startswith("aws:"):
            # EC2 tag restrictions: the aws: prefix is reserved for AWS use.
            raise validation(f"Tag key '{key}' uses the reserved prefix 'aws:'.", "INVALID_TAG")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise validation(f"A snapshot can have at most {MAX_TAGS} tags.", "INVALID_TAG")
    return tags


def put_snapshot_block(account: str, region: str, snapshot_id: str, raw_index: str, headers: Any, body: bytes) -> dict[str, str]:
    """PutSnapshotBlock (PUT /snapshots/{id}/blocks/{index}, 201)."""
    data_length = headers.get("x-amz-Data-Length")
    checksum = headers.get("x-amz-Checksum")
    algorithm = headers.get("x-amz-Checksum-Algorithm")
    progress = headers.get("x-amz-Progress")
    for name, value in (("DataLength", data_length), ("Checksum", checksum), ("ChecksumAlgorithm", algorithm)):
        if value is None:
            raise validation(f"Missing required parameter {name}.")
    index = _int(raw_index, "BlockIndex", minimum=0, reason="INVALID_BLOCK")
    # DataLength: "Currently, the only supported size is 524288 bytes. Valid values: 524288".
    length = _int(data_length, "DataLength")
    if length != BLOCK_SIZE:
        raise validation(f"DataLength must be {BLOCK_SIZE}, got {length}.")
    if algorithm != "SHA256":
        # ChecksumAlgorithm enum: SHA256 only.
        raise validation(f"ChecksumAlgorithm must be SHA256, got '{algorithm}'.")
    expected = _decode_sha256(str(checksum), "Checksum")
    percent = None if progress is None else _int(progress, "Progress", minimum=0, maximum=100)
    if len(body) != length:
        # "Error retries": ValidationException "Failed to read block data" (PutSnapshotBlock,
        # retryable): the body does not hold DataLength bytes.
        raise validation("Failed to read block data")
    digest = hashlib.sha256(body).digest()
    if digest != expected:
        # "Use checksums": "The checksum that you provide is validated against a checksum
        # generated by Amazon EBS ... If the checksums do not correspond, the request fails."
        raise validation("The checksum of the block data does not match the x-amz-Checksum header.")
    with LOCK:
        snapshot = _snapshot(ec2_backend_for(account, region), snapshot_id)
        status = snapshot.status
        if status == "pending" and snapshot.sealing_until is not None:
            # CompleteSnapshot: "You cannot write new blocks to a snapshot after it has been
            # completed." (the error AWS answers while it seals is not documented)
            raise validation(f"The snapshot '{snapshot_id}' is being completed; blocks can no longer be written to it.",
                             "INVALID_SNAPSHOT_ID")
        if status != "pending":
            # PutSnapshotBlock: "The target snapshot must be in the pending state."
            raise validation(f"The snapshot '{snapshot_id}' is in the {status} state; blocks can be written only to a pending snapshot.",
                             "INVALID_SNAPSHOT_ID")
        if index >= snapshot.block_count:
            raise validation(f"The block index {index} is outside the volume ({snapshot.block_count} blocks of {BLOCK_SIZE} bytes).",
                             "INVALID_BLOCK")
        # "If the specified block contains data, the existing data is overwritten."
        snapshot.blocks[index] = None if digest == ZERO_BLOCK_DIGEST else bytes(body)
        snapshot.digests[index] = digest
        snapshot.last_activity = utcnow()
        if percent is not None:
            snapshot.write_progress = percent
    return {"x-amz-Checksum": base64.b64encode(digest).decode(), "x-amz-Checksum-Algorithm": "SHA256"}


def linear_checksum(digests: dict[int, bytes]) -> str:
    """The LINEAR aggregated checksum: base64(SHA-256(d0 || d1 || ...)) over the raw 32-byte
    SHA-256 digests of the written blocks in ascending block index order (CompleteSnapshotRequest
    .Checksum: "arrange the checksums for each written block in ascending order of their block
    index, concatenate them ... generate the checksum on the entire string using the SHA256
    algorithm"; the digests are concatenated as bytes, as awslabs/coldsnap's upload does)."""
    outer = hashlib.sha256()
    for index in sorted(digests):
        outer.update(digests[index])
    return base64.b64encode(outer.digest()).decode()


def complete_snapshot(account: str, region: str, snapshot_id: str, headers: Any) -> dict[str, str]:
    """CompleteSnapshot (POST /snapshots/completion/{id}, 202)."""
    raw_count = headers.get("x-amz-ChangedBlocksCount")
    if raw_count is None:
        raise validation("Missing required parameter ChangedBlocksCount.")
    count = _int(raw_count, "ChangedBlocksCount", minimum=0)
    checksum = headers.get("x-amz-Checksum")
    algorithm = headers.get("x-amz-Checksum-Algorithm")
    method = headers.get("x-amz-Checksum-Aggregation-Method")
    if algorithm is not None and algorithm != "SHA256":
        raise validation(f"ChecksumAlgorithm must be SHA256, got '{algorithm}'.")
    if method is not None and method != "LINEAR":
        raise validation(f"ChecksumAggregationMethod must be LINEAR, got '{method}'.")
    expected = None
    if checksum is not None:
        if algorithm is None or method is None:
            raise validation("Checksum requires ChecksumAlgorithm SHA256 and ChecksumAggregationMethod LINEAR.")
        expected = _decode_sha256(checksum, "Checksum")
    with LOCK:
        snapshot = _snapshot(ec2_backend_for(account, region), snapshot_id)
        status = snapshot.status
        if status == "completed":
            return {"Status": "completed"}
        if snapshot.sealing_until is not None:
            return {"Status": "pending"}  # accepted before, still sealing
        if status != "pending":
            raise validation(f"The snapshot '{snapshot_id}' is in the {status} state and cannot be completed.", "INVALID_SNAPSHOT_ID")
        written = len(snapshot.digests)
        if count != written:
            # ChangedBlocksCount: "The number of blocks that were written to the snapshot."
            raise validation(f"ChangedBlocksCount {count} does not match the number of blocks written to the snapshot ({written}).")
        if expected is not None and base64.b64encode(expected).decode() != linear_checksum(snapshot.digests):
            raise validation("The aggregated checksum does not match the checksums of the blocks written to the snapshot.")
        delay = account_config(account)["seal_delay_seconds"]
        if delay <= 0:
            snapshot.status = "completed"
            return {"Status": "completed"}
        snapshot.sealing_until = utcnow() + _dt.timedelta(seconds=delay)
    return {"Status": "pending"}


def _readable(backend: Any, snapshot_id: str) -> EbsDirectSnapshot:
    snapshot = _snapshot(backend, snapshot_id)
    status = snapshot.status
    if status != "completed":
        # FAQ: "Can a snapshot be accessed using the EBS direct APIs if it has a pending status?
        # No. The snapshot can be accessed only if it has a completed status."
        raise validation(f"The snapshot '{snapshot_id}' is in the {status} state; only completed snapshots can be read.",
                         "INVALID_SNAPSHOT_ID")
    return snapshot


def _page(query: dict[str, list[str]], indexes: list[int], snapshot_id: str) -> tuple[list[int], str | None]:
    """MaxResults / pageToken / startingBlockIndex of the List operations."""
    limit = MAX_RESULTS
    if query.get("maxResults"):
        requested = _int(query["maxResults"][0], "MaxResults", maximum=MAX_RESULTS)
        limit = max(requested, MIN_RESULTS)  # FAQ: under 100 still returns at least 100
    start = 0
    token = (query.get("pageToken") or [None])[0]
    if token:
        # "If you specify NextToken, then StartingBlockIndex is ignored."
        try:
            text = base64.b64decode(token.encode(), validate=True).decode()
            owner, after = text.rsplit(".", 1)
            start = int(after)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            owner = ""
        if owner != snapshot_id:
            raise validation("The page token is not valid.", "INVALID_PAGE_TOKEN")
    elif query.get("startingBlockIndex"):
        start = _int(query["startingBlockIndex"][0], "StartingBlockIndex", minimum=0)
    selected = [i for i in indexes if i >= start]
    page = selected[:limit]
    next_token = None
    if len(selected) > limit:
        next_token = base64.b64encode(f"{snapshot_id}.{selected[limit]}".encode()).decode()
    return page, next_token


def list_snapshot_blocks(account: str, region: str, snapshot_id: str, query: dict[str, list[str]]) -> dict[str, Any]:
    """ListSnapshotBlocks (GET /snapshots/{id}/blocks): written blocks only (FAQ: "It only
    returns the block indexes and tokens of blocks that have data written"), in index order."""
    with LOCK:
        backend = ec2_backend_for(account, region)
        snapshot = _readable(backend, snapshot_id)
        owners = _effective_blocks(backend, snapshot)
        page, next_token = _page(query, list(owners), snapshot_id)
    answer: dict[str, Any] = {
        "Blocks": [{"BlockIndex": i, "BlockToken": _block_token(snapshot, i)} for i in page],
        "ExpiryTime": _timestamp(utcnow() + BLOCK_TOKEN_TTL),
        "VolumeSize": snapshot.volume.size,
        "BlockSize": BLOCK_SIZE,
    }
    if next_token:
        answer["NextToken"] = next_token
    return answer


def list_changed_blocks(account: str, region: str, second_id: str, query: dict[str, list[str]]) -> dict[str, Any]:
    """ListChangedBlocks (GET /snapshots/{second}/changedblocks?firstSnapshotId=): the blocks of
    the second snapshot that differ from the first (a block written by a different snapshot of
    the lineage, or present in only one); without FirstSnapshotId every block of the second."""
    first_id = (query.get("firstSnapshotId") or [None])[0]
    with LOCK:
        backend = ec2_backend_for(account, region)
        second = _readable(backend, second_id)
        second_owners = _effective_blocks(backend, second)
        first = None
        first_owners: dict[int, EbsDirectSnapshot] = {}
        if first_id:
            first = _readable(backend, first_id)
            roots = {s.id for s in _lineage(backend, first)} & {s.id for s in _lineage(backend, second)}
            if not roots:
                # ValidationExceptionReason UNRELATED_SNAPSHOTS: "two Amazon EBS snapshots of
                # the same volume/snapshot lineage" (ListChangedBlocks).
                raise validation(f"The snapshots '{first_id}' and '{second_id}' are not of the same lineage.", "UNRELATED_SNAPSHOTS")
            first_owners = _effective_blocks(backend, first)
        changed = sorted(i for i in set(first_owners) | set(second_owners)
                         if first_owners.get(i) is not second_owners.get(i) or first is None)
        changed = [i for i in changed if first is not None or i in second_owners]
        page, next_token = _page(query, changed, second_id)
    blocks = []
    for index in page:
        entry: dict[str, Any] = {"BlockIndex": index}
        if first is not None and index in first_owners:
            entry["FirstBlockToken"] = _block_token(first, index)
        if index in second_owners:
            entry["SecondBlockToken"] = _block_token(second, index)
        blocks.append(entry)
    answer: dict[str, Any] = {
        "ChangedBlocks": blocks,
        "ExpiryTime": _timestamp(utcnow() + BLOCK_TOKEN_TTL),
        "VolumeSize": second.volume.size,
        "BlockSize": BLOCK_SIZE,
    }
    if next_token:
        answer["NextToken"] = next_token
    return answer


def get_snapshot_block(account: str, region: str, snapshot_id: str, raw_index: str, query: dict[str, list[str]]) -> tuple[dict[str, str], bytes]:
    """GetSnapshotBlock (GET /snapshots/{id}/blocks/{index}?blockToken=): the data with
    x-amz-Data-Length, x-amz-Checksum and x-amz-Checksum-Algorithm."""
    token = (query.get("blockToken") or [None])[0]
    if not token:
        raise validation("Missing required parameter BlockToken.")
    index = _int(raw_index, "BlockIndex", minimum=0, reason="INVALID_BLOCK")
    with LOCK:
        backend = ec2_backend_for(account, region)
        snapshot = _readable(backend, snapshot_id)
        if _token_index(snapshot, token) != index:
            raise validation("The block token is not valid for this snapshot and block index.", "INVALID_BLOCK_TOKEN")
        owner = _effective_blocks(backend, snapshot).get(index)
        if owner is None:
            raise validation(f"The block index {index} has no data in snapshot '{snapshot_id}'.", "INVALID_BLOCK")
        data = owner.blocks[index]
        digest = owner.digests[index]
    body = bytes(BLOCK_SIZE) if data is None else data
    headers = {
        "x-amz-Data-Length": str(len(body)),
        "x-amz-Checksum": base64.b64encode(digest).decode(),
        "x-amz-Checksum-Algorithm": "SHA256",
    }
    return headers, body


# -- moto's EBSResponse, replaced ---------------------------------------------------------------

_PATHS = (
    ("POST", re.compile(r"^/snapshots/?$"), "StartSnapshot"),
    ("POST", re.compile(r"^/snapshots/completion/(?P<id>[^/]+)/?$"), "CompleteSnapshot"),
    ("PUT", re.compile(r"^/snapshots/(?P<id>[^/]+)/blocks/(?P<index>[^/]+)/?$"), "PutSnapshotBlock"),
    ("GET", re.compile(r"^/snapshots/(?P<id>[^/]+)/blocks/(?P<index>[^/]+)/?$"), "GetSnapshotBlock"),
    ("GET", re.compile(r"^/snapshots/(?P<id>[^/]+)/blocks/?$"), "ListSnapshotBlocks"),
    ("GET", re.compile(r"^/snapshots/(?P<id>[^/]+)/changedblocks/?$"), "ListChangedBlocks"),
)


def parse_path(method: str, path: str) -> tuple[str | None, dict[str, str]]:
    """(operation, uri members) of an EBS direct request (the model's requestUri templates)."""
    for verb, pattern, operation in _PATHS:
        if verb == method.upper():
            match = pattern.match(path)
            if match:
                return operation, match.groupdict()
    return None, {}


def request_snapshot_ids(method: str, path: str, query: str) -> tuple[str | None, list[str]]:
    """The operation and the snapshot ids a request names (for ``iam`` and ``rate_limits``):
    the uri snapshot, and ListChangedBlocks' ``firstSnapshotId``."""
    operation, members = parse_path(method, path)
    ids = [members["id"]] if members.get("id") else []
    if operation == "ListChangedBlocks":
        ids += parse_qs(query).get("firstSnapshotId", [])[:1]
    return operation, ids


def _json_answer(status: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    return status, {"status": status, "Content-Type": "application/json"}, json.dumps(payload)


def _dispatch(self: Any, operation: str) -> Any:
    """One EBS request: the operation's answer, or its EbsError in the rest-json error form."""
    _, members = parse_path(self.method, self.path)
    query = parse_qs(self.parsed_url.query or "", keep_blank_values=True)
    account, region = self.current_account, self.region
    try:
        if operation == "StartSnapshot":
            raw = self.body if isinstance(self.body, (bytes, str)) else b""
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                raise validation("The request body is not valid JSON.") from None
            if not isinstance(payload, dict):
                raise validation("The request body must be a JSON object.")
            return _json_answer(201, start_snapshot(account, region, payload))
        if operation == "PutSnapshotBlock":
            body = self.body if isinstance(self.body, bytes) else (self.body or "").encode("latin-1")
            headers = put_snapshot_block(account, region, members["id"], members["index"], self.headers, body)
            return 201, {"status": 201, "Content-Type": "application/json", **headers}, ""
        if operation == "CompleteSnapshot":
            return _json_answer(202, complete_snapshot(account, region, members["id"], self.headers))
        if operation == "ListSnapshotBlocks":
            return _json_answer(200, list_snapshot_blocks(account, region, members["id"], query))
        if operation == "ListChangedBlocks":
            return _json_answer(200, list_changed_blocks(account, region, members["id"], query))
        if operation == "GetSnapshotBlock":
            headers, data = get_snapshot_block(account, region, members["id"], members["index"], query)
            return 200, {"status": 200, "Content-Type": "application/octet-stream", **headers}, data
    except EbsError as error:
        status, headers, text = error_parts(error)
        return status, {"status": status, **headers}, text
    raise AssertionError(f"unhandled EBS operation {operation}")


def install() -> None:
    """Replace moto's EBSResponse handlers (moto routes by method + path to these names)."""
    from moto.ebs.responses import EBSResponse

    for operation in ("StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot", "ListSnapshotBlocks",
                      "ListChangedBlocks", "GetSnapshotBlock"):
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()

        def handler(self: Any, _operation: str = operation) -> Any:
            return _dispatch(self, _operation)

        handler.__name__ = name
        setattr(EBSResponse, name, handler)


# -- control endpoints -------------------------------------------------------------------------


def handle_config(request: Request) -> Response:
    """``/ami-pipeline-emulator/ebs-direct``: GET the account's pending-snapshot limit, POST
    ``{"account_id", "pending_snapshot_limit"}`` (an integer >= 0; ``null`` restores 100)."""
    if request.method == "GET":
        account = control._account(dict(request.args))
        return control._json(200, {"account_id": account, "pending_snapshot_limit": pending_limit(account)})
    payload = control._body(request)
    account = control._account(payload)
    unknown = set(payload) - {"account_id", "pending_snapshot_limit"}
    if unknown:
        raise control.ControlError(400, f"unknown fields: {sorted(unknown)}")
    if "pending_snapshot_limit" in payload:
        value = payload["pending_snapshot_limit"]
        with _CONFIG_LOCK:
            if value is None:
                _PENDING_LIMITS.pop(account, None)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise control.ControlError(400, "pending_snapshot_limit must be an integer >= 0 or null")
            else:
                _PENDING_LIMITS[account] = value
    return control._json(200, {"account_id": account, "pending_snapshot_limit": pending_limit(account)})


def handle_activity(request: Request) -> Response:
    """``POST /ami-pipeline-emulator/ebs-snapshot-activity`` ``{"account_id", "region",
    "snapshot_id", "last_activity"}``: moves the time of the snapshot's start / last written
    block, from which its Timeout runs (to test the ``error`` state without waiting)."""
    payload = control._body(request)
    account, region = control._account(payload), control._region(payload)
    snapshot_id = str(control._required(payload, "snapshot_id"))
    when = control._timestamp(payload, "last_activity")
    with LOCK:
        snapshot = ec2_backend_for(account, region).snapshots.get(snapshot_id)
        if not isinstance(snapshot, EbsDirectSnapshot):
            raise control.ControlError(404, f"EBS direct snapshot {snapshot_id} not found in {account}/{region}")
        snapshot.last_activity = when
        status = snapshot.status
    return control._json(200, {"snapshot_id": snapshot_id, "last_activity": iso_millis(when), "status": status})


control.register_route("ebs-direct", ("GET", "POST"), handle_config)
control.register_route("ebs-snapshot-activity", ("POST",), handle_activity)
control.register_reset(_reset)

__all__ = ["EbsDirectSnapshot", "EbsError", "error_response", "install", "linear_checksum", "request_snapshot_ids"]
