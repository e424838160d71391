"""S3 object checksums as S3 answers them: PutObject, the multipart upload operations,
HeadObject / GetObject and GetObjectAttributes.

Measured on plain moto 5.2.5 (boto3 1.44.5 over http): CreateMultipartUpload echoes
``ChecksumAlgorithm`` but no ``ChecksumType``; UploadPart and PutObject accept any
``x-amz-checksum-*`` value without checking it, and a value sent without
``x-amz-sdk-checksum-algorithm`` is not even stored; ListParts has neither ``ChecksumAlgorithm``
nor per-part checksums; CompleteMultipartUpload returns no checksum and ignores the part checksums
of its body; HeadObject (``ChecksumMode=ENABLED``) answers a composite checksum without its
``-<parts>`` suffix and without ``ChecksumType``; GetObjectAttributes has no ``ObjectParts``.

This module owns those answers. The source of each rule is cited next to it; the main ones:

* the S3 API reference in botocore's model (``s3/2006-03-01/service-2.json``): UploadPart,
  CompleteMultipartUpload, ``CompletedPart.PartNumber``, ``Part``, ``ObjectPart``,
  ``GetObjectAttributesParts``, ``PutObjectOutput.ChecksumType``;
* the S3 user guide, "Checking object integrity"
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity-upload.html):
  the service computes the checksum of what it received and rejects the request when it differs;
  a multipart upload's COMPOSITE checksum is the checksum of the concatenated binary part
  checksums followed by ``-<number of parts>``;
* error codes and texts S3 returns, as recorded by test suites run against real S3:
  open-io/swift and openstack/swift ``test/s3api/test_object_checksums.py`` (``is_aws`` runs),
  floci-io/floci#3083/#3093 (captures from S3 eu-west-1), ceph/s3-tests ``test_s3.py``.

Algorithms computed and verified here: SHA256, SHA1, CRC32 (hashlib / binascii). CRC32C and
CRC64NVME values are checked for their form only and kept as sent (the venv has no crc32c or
awscrt; moto's own fallback for them is plain CRC32).

Everything is done inside moto's S3 response class (no gate): an S3 request that carries no
checksum header costs a few dictionary lookups; one that does costs one pass of the hash over the
body. Errors are answered with ``faults.error_response`` (S3's XML error body).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable

from moto.core.responses import ActionResult

from .faults import error_response

# Digest length in bytes of every algorithm the S3 model knows (UploadPartRequest members).
_DIGEST_SIZE = {
    "CRC32": 4,
    "CRC32C": 4,
    "CRC64NVME": 8,
    "SHA1": 20,
    "SHA256": 32,
    "SHA512": 64,
    "MD5": 16,
    "XXHASH64": 8,
    "XXHASH3": 8,
    "XXHASH128": 16,
}
# Computed and verified here.
_COMPUTED: dict[str, Callable[[bytes], bytes]] = {
    "SHA256": lambda data: hashlib.sha256(data).digest(),
    "SHA1": lambda data: hashlib.sha1(data, usedforsecurity=False).digest(),
    "CRC32": lambda data: binascii.crc32(data).to_bytes(4, "big"),
}
# "Checking object integrity", checksum types: SHA1/SHA256 are composite only, CRC64NVME is full
# object only, CRC32/CRC32C support both (composite by default for a multipart upload).
_COMPOSITE_ONLY = {"SHA1", "SHA256"}
_FULL_OBJECT_ONLY = {"CRC64NVME"}
_NOT_VALUE_HEADERS = {"x-amz-checksum-mode", "x-amz-checksum-type", "x-amz-checksum-algorithm"}
_ALGORITHM_META = "x-amz-checksum-algorithm"
_TYPE_META = "x-amz-checksum-type"


class ChecksumError(Exception):
    """An S3 error answer (code, message, HTTP status) raised before moto changes anything."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def response(self, method: str) -> tuple[int, dict[str, Any], bytes]:
        answer = error_response("s3", method, self.status, self.code, self.message)
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-length"}
        return answer.status_code, headers, answer.get_data()


def _invalid_value(header: str) -> ChecksumError:
    # swift test_invalid_checksum / test_mpu_upload_part_invalid_checksum (run against AWS).
    return ChecksumError("InvalidRequest", f"Value for {header} header is invalid.")


def _bad_digest(algorithm: str) -> ChecksumError:
    # PutObject/UploadPart: "The SHA256 you specified did not match the calculated checksum."
    # (swift test_bad_checksum / test_mpu_upload_part_bad_checksum on AWS; the same text is
    # quoted as a real AWS answer in public issue trackers, e.g. aws/aws-sdk-ruby#3322 for CRC32).
    return ChecksumError("BadDigest", f"The {algorithm} you specified did not match the calculated checksum.")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def decode(value: str, algorithm: str) -> bytes | None:
    """The digest a checksum value encodes, or None if it is not the canonical base64 of a digest
    of the algorithm's size (S3 refuses those with "Value for ... header is invalid": swift's
    INVALID vectors differ from the valid value only in the unused low bits of the last character)."""
    size = _DIGEST_SIZE.get(algorithm)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if size is not None and len(raw) != size:
        return None
    if _b64(raw) != value:
        return None
    return raw


def digest(algorithm: str, data: bytes) -> bytes | None:
    compute = _COMPUTED.get(algorithm)
    return compute(data) if compute is not None else None


# ---------------------------------------------------------------------------------------------
# The checksum a PUT request carries
# ---------------------------------------------------------------------------------------------


@dataclass
class RequestChecksum:
    algorithm: str | None  # upper case, from the x-amz-checksum-<algorithm> header or trailer
    value: str | None


_TRAILER_TAIL = 2048


def _trailer_value(raw_body: Any, header: str) -> str | None:
    """The value of ``header`` in the trailer of an aws-chunked body
    (``0\\r\\nx-amz-checksum-crc32:AAAA\\r\\n\\r\\n``, also after signed chunks), or None."""
    if not isinstance(raw_body, (bytes, bytearray)):
        return None
    tail = bytes(raw_body[-_TRAILER_TAIL:])
    matches = re.findall(rb"(?:^|\r?\n)" + re.escape(header.encode()) + rb"\s*:\s*([A-Za-z0-9+/=]+)", tail, re.I)
    return matches[-1].decode("ascii") if matches else None


def request_checksum(headers: Any, raw_body: Any) -> RequestChecksum:
    """The checksum of a PutObject/UploadPart request, after S3's consistency checks:

    * more than one ``x-amz-checksum-*`` value → InvalidRequest (text as S3 emulators quote it);
    * ``x-amz-sdk-checksum-algorithm`` naming another algorithm than the value header →
      InvalidRequest "Value for x-amz-sdk-checksum-algorithm header is invalid." (swift
      test_good_checksum_different_algorithm_header, run against AWS);
    * ``x-amz-sdk-checksum-algorithm`` without any value header or trailer → InvalidRequest (model,
      UploadPartRequest.ChecksumAlgorithm: "there must be a corresponding x-amz-checksum or
      x-amz-trailer header sent. Otherwise, Amazon S3 fails the request with ... 400");
    * a value that is not the base64 of a digest of the right size → InvalidRequest "Value for
      x-amz-checksum-<algorithm> header is invalid.".
    """
    sdk_algorithm = (headers.get("x-amz-sdk-checksum-algorithm") or "").upper() or None
    found: list[tuple[str, str]] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-checksum-") and lower not in _NOT_VALUE_HEADERS:
            found.append((lower, value))
    trailer = (headers.get("x-amz-trailer") or "").strip().lower()
    if not found and trailer.startswith("x-amz-checksum-"):
        value = _trailer_value(raw_body, trailer)
        if value is None:
            # A trailer we cannot read: kinder than S3 (which would answer a malformed-trailer
            # error); the request goes on without a checksum.
            return RequestChecksum(None, None)
        found.append((trailer, value))
    if len(found) > 1:
        raise ChecksumError(
            "InvalidRequest",
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        )
    if not found:
        if sdk_algorithm:
            raise ChecksumError(
                "InvalidRequest",
                "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* "
                "or x-amz-trailer headers were found.",
            )
        return RequestChecksum(None, None)
    header, value = found[0]
    algorithm = header[len("x-amz-checksum-") :].upper()
    if sdk_algorithm and sdk_algorithm != algorithm:
        raise ChecksumError("InvalidRequest", "Value for x-amz-sdk-checksum-algorithm header is invalid.")
    if algorithm in _DIGEST_SIZE and decode(value, algorithm) is None:
        raise _invalid_value(header)
    return RequestChecksum(algorithm, value)


def verify(checksum: RequestChecksum, body: bytes) -> None:
    """BadDigest when S3's own checksum of the received bytes differs from the one sent
    ("Checking object integrity": "If the values don't match, the request is rejected")."""
    if checksum.algorithm is None or checksum.value is None:
        return
    computed = digest(checksum.algorithm, body)
    if computed is not None and _b64(computed) != checksum.value:
        raise _bad_digest(checksum.algorithm)


# ---------------------------------------------------------------------------------------------
# Multipart state (kept on moto's FakeMultipart / FakeKey objects)
# ---------------------------------------------------------------------------------------------


def _bucket(backend: Any, bucket_name: str) -> Any:
    try:
        return backend.get_bucket(bucket_name)
    except Exception:  # noqa: BLE001 - NoSuchBucket and friends: moto answers them itself
        return None


def _multipart(backend: Any, bucket_name: str, upload_id: str | None) -> Any:
    bucket = _bucket(backend, bucket_name) if upload_id else None
    return bucket.multiparts.get(upload_id) if bucket is not None else None


def _no_such_upload() -> ChecksumError:
    # UploadPart / CompleteMultipartUpload special errors: NoSuchUpload, 404 (plain moto: a
    # KeyError, HTTP 500, which SDKs retry). Text as moto's NoSuchUpload (ListParts).
    return ChecksumError(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
        "been aborted or completed.",
        404,
    )


def _declared(multipart: Any) -> tuple[str | None, str | None]:
    """(algorithm, checksum type) an upload was created with, upper case."""
    algorithm = multipart.metadata.get(_ALGORITHM_META)
    kind = multipart.metadata.get(_TYPE_META)
    return (algorithm.upper() if algorithm else None, kind.upper() if kind else None)


def _part_digest(part: Any, algorithm: str) -> bytes | None:
    """A stored part's binary checksum: the verified value kept at UploadPart, else (a part made by
    UploadPartCopy) computed from its bytes when the algorithm is one computed here."""
    if getattr(part, "checksum_algorithm", None) == algorithm and part.checksum_value:
        return decode(part.checksum_value, algorithm)
    computed = digest(algorithm, part.value)
    if computed is not None:
        part.checksum_algorithm = algorithm
        part.checksum_value = _b64(computed)
    return computed


def _part_checksum_value(part: Any, algorithm: str) -> str | None:
    raw = _part_digest(part, algorithm)
    if raw is not None:
        return _b64(raw)
    if getattr(part, "checksum_algorithm", None) == algorithm:
        return part.checksum_value
    return None


# ---------------------------------------------------------------------------------------------
# Serializer hook: add members to the result dict moto is about to serialize
# ---------------------------------------------------------------------------------------------


def _with_result_hook(response: Any, hook: Callable[[dict[str, Any]], None], call: Callable[[], Any]) -> Any:
    """Run ``call`` (a moto response method) with ``hook`` applied to the dict result it hands to
    ``serialized``; ``response`` is moto's per-request S3Response instance."""
    original = response.serialized

    def serialized(action_result: ActionResult) -> Any:
        result = action_result.result
        if isinstance(result, dict):
            hook(result)
        return original(action_result)

    response.serialized = serialized
    try:
        return call()
    finally:
        del response.serialized


# ---------------------------------------------------------------------------------------------
# PutObject
# ---------------------------------------------------------------------------------------------


def _put_object(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def put_object(self: Any) -> Any:
        try:
            checksum = request_checksum(self.headers, self.raw_body)
            verify(checksum, self.body or b"")
        except ChecksumError as error:
            return error.response("PUT")
        self._ami_put_checksum = checksum
        return original(self)

    return put_object


def _get_checksum(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_checksum(self: Any, response_headers: dict[str, Any]) -> tuple[str, str | None]:
        checksum: RequestChecksum | None = getattr(self, "_ami_put_checksum", None)
        if checksum is None:
            return original(self, response_headers)  # PutObjectTagging & co.: moto's handling
        if checksum.algorithm is None:
            return "", None
        response_headers[f"x-amz-checksum-{checksum.algorithm.lower()}"] = checksum.value
        # PutObjectOutput.ChecksumType: "For PutObject uploads, the checksum type is always
        # FULL_OBJECT."
        response_headers["x-amz-checksum-type"] = "FULL_OBJECT"
        return checksum.algorithm, checksum.value

    return get_checksum


# ---------------------------------------------------------------------------------------------
# CreateMultipartUpload / CompleteMultipartUpload (moto's _key_response_post)
# ---------------------------------------------------------------------------------------------


def _check_create(headers: Any) -> None:
    """CreateMultipartUpload checksum headers (messages from swift's CreateMultipartUpload tests
    run against AWS and floci-io/floci#3093's S3 captures)."""
    algorithm = (headers.get("x-amz-checksum-algorithm") or "").upper()
    kind = (headers.get("x-amz-checksum-type") or "").upper()
    if not kind:
        return
    if not algorithm:
        raise ChecksumError(
            "InvalidRequest",
            "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.",
        )
    if kind not in ("COMPOSITE", "FULL_OBJECT"):  # model: ChecksumType enum
        raise ChecksumError("InvalidRequest", "Value for x-amz-checksum-type header is invalid.")
    if (kind == "FULL_OBJECT" and algorithm in _COMPOSITE_ONLY) or (
        kind == "COMPOSITE" and algorithm in _FULL_OBJECT_ONLY
    ):
        raise ChecksumError(
            "InvalidRequest",
            f"The {kind} checksum type cannot be used with the {algorithm.lower()} checksum algorithm.",
        )


def _default_type(algorithm: str) -> str:
    # "Checking object integrity": CRC64NVME is full-object only, the others default to COMPOSITE
    # for multipart uploads (CreateMultipartUpload answers it: swift asserts
    # create_mpu_resp['ChecksumType'] == 'COMPOSITE' for SHA256 without a type, on AWS).
    return "FULL_OBJECT" if algorithm in _FULL_OBJECT_ONLY else "COMPOSITE"


@dataclass
class _CompletedPart:
    number: int
    etag: str
    checksums: dict[str, str]


def _parse_complete(body: bytes) -> list[_CompletedPart] | None:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None  # moto answers MalformedXML
    parts: list[_CompletedPart] = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Part":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in element}
        try:
            number = int(fields.get("PartNumber", ""))
        except ValueError:
            return None
        checksums = {k[len("Checksum") :].upper(): v for k, v in fields.items() if k.startswith("Checksum")}
        checksums.pop("TYPE", None)
        parts.append(_CompletedPart(number, fields.get("ETag", "").replace('"', ""), checksums))
    return parts


def _check_complete(
    backend: Any, bucket_name: str, key_name: str, upload_id: str, body: bytes, headers: Any
) -> list[int] | None:
    """CompleteMultipartUpload of an upload declared with a checksum algorithm; answers the
    completed part numbers (for GetObjectAttributes), or None to leave the request to moto."""
    bucket = _bucket(backend, bucket_name)
    if bucket is None:
        return None  # moto answers NoSuchBucket
    multipart = bucket.multiparts.get(upload_id)
    if multipart is None:
        existing = bucket.keys.get(key_name)
        if getattr(getattr(existing, "multipart", None), "id", None) == upload_id:
            return None  # the retry of a completed upload: moto answers it again (idempotent)
        raise _no_such_upload()
    parts = _parse_complete(body)
    if parts is None:
        return None
    numbers = [p.number for p in parts]
    algorithm, kind = _declared(multipart)
    if not algorithm:
        return numbers  # no checksum declared: moto's (lenient) handling of part checksums
    requested_type = (headers.get("x-amz-checksum-type") or "").upper()
    if requested_type and requested_type != kind:
        # Text as recorded for AWS in public S3-compatibility suites.
        raise ChecksumError(
            "InvalidRequest",
            f"The upload was created using the {kind} checksum mode. The complete request must use the same checksum mode.",
        )
    if numbers != list(range(1, len(numbers) + 1)):
        # CompletedPart.PartNumber: with an additional checksum on each part "the PartNumber must
        # start at 1 and the part numbers must be consecutive. Otherwise, Amazon S3 generates an
        # HTTP 400 Bad Request status code and an InvalidPartOrder error code."
        raise ChecksumError(
            "InvalidPartOrder",
            "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
        )
    digests: list[bytes] = []
    for part in parts:
        stored = multipart.parts.get(part.number)
        if stored is None or stored.etag.replace('"', "") != part.etag:
            return numbers  # moto answers InvalidPart for a missing part or another ETag
        if len(part.checksums) > 1 or any(
            a in _DIGEST_SIZE and decode(v, a) is None for a, v in part.checksums.items()
        ):
            # swift test_mpu_complete_invalid_part_checksum (AWS): InvalidArgument, this text.
            raise ChecksumError("InvalidArgument", "Invalid Base64 or multiple checksums present in request")
        given = part.checksums.get(algorithm)
        if given is None:
            if kind == "COMPOSITE":
                # swift test_mpu_complete_requires_part_checksum (AWS), floci#3093 row 23.
                raise ChecksumError(
                    "InvalidRequest",
                    f"The upload was created using a {algorithm.lower()} checksum. The complete request "
                    f"must include the checksum for each part. It was missing for part {part.number} in the request.",
                )
            continue
        expected = _part_checksum_value(stored, algorithm)
        if expected is not None and expected != given:
            # swift test_mpu_complete_bad_part_checksum (AWS) and floci#3093 row 21: InvalidPart,
            # with S3's own text (two spaces after the first sentence).
            raise ChecksumError(
                "InvalidPart",
                "One or more of the specified parts could not be found.  The part may not have been "
                "uploaded, or the specified entity tag may not match the part's entity tag.",
            )
        raw = _part_digest(stored, algorithm)
        if raw is not None:
            digests.append(raw)
    whole = headers.get(f"x-amz-checksum-{algorithm.lower()}")
    if whole and kind == "COMPOSITE" and algorithm in _COMPUTED and len(digests) == len(parts):
        value, dash, count = whole.partition("-")
        raw = decode(value, algorithm)
        if raw is None or (dash and not count.isdigit()):
            # swift test_mpu_complete_invalid_checksum / ..._with_invalid_part_number (AWS).
            raise _invalid_value(f"x-amz-checksum-{algorithm.lower()}")
        composite = digest(algorithm, b"".join(digests))
        if raw != composite or (dash and int(count) != len(parts)):
            # swift test_mpu_complete_bad_checksum / ..._with_bad_part_number (AWS): lower case
            # algorithm here, unlike PutObject/UploadPart.
            raise ChecksumError(
                "BadDigest", f"The {algorithm.lower()} you specified did not match the calculated checksum."
            )
    return numbers


def _key_response_post(original: Callable[..., Any]) -> Callable[..., Any]:
    def key_response_post(self: Any, request: Any, body: bytes, bucket_name: str, query: dict[str, Any], key_name: str) -> Any:
        completed: list[int] | None = None
        try:
            if body == b"" and "uploads" in query:
                _check_create(request.headers)
            elif query.get("uploadId"):
                completed = _check_complete(
                    self.backend, bucket_name, key_name, query["uploadId"][0], body, request.headers
                )
        except ChecksumError as error:
            return error.response("POST")

        def hook(result: dict[str, Any]) -> None:
            action = self.data.get("Action")
            if action == "CreateMultipartUpload":
                _on_created(self.backend, bucket_name, result)
            elif action == "CompleteMultipartUpload":
                _on_completed(self.backend, bucket_name, query["uploadId"][0], result, completed)

        return _with_result_hook(
            self, hook, lambda: original(self, request, body, bucket_name, query, key_name)
        )

    return key_response_post


def _on_created(backend: Any, bucket_name: str, result: dict[str, Any]) -> None:
    algorithm = result.get("ChecksumAlgorithm")
    if not algorithm:
        return
    multipart = _multipart(backend, bucket_name, result.get("UploadId"))
    if multipart is None:
        return
    kind = multipart.metadata.get(_TYPE_META) or _default_type(algorithm.upper())
    multipart.metadata[_TYPE_META] = kind.upper()
    result["ChecksumType"] = kind.upper()


def _on_completed(
    backend: Any, bucket_name: str, upload_id: str, result: dict[str, Any], completed: list[int] | None
) -> None:
    try:
        key = backend.get_object(bucket_name, result.get("Key"))
    except Exception:  # noqa: BLE001 - nothing to add if the key cannot be read back
        return
    if key is None or key.multipart is None or key.multipart.id != upload_id:
        return
    if completed is not None:
        key._ami_completed_parts = completed
    # The upload's x-amz-checksum-* settings are no object metadata: without them HeadObject
    # shows no ChecksumType unless ChecksumMode is ENABLED (swift assert_checksum_stored, AWS).
    for name in (_ALGORITHM_META, _TYPE_META):
        key.metadata.pop(name, None)
    if not key.checksum_algorithm or not key.checksum_value:
        return
    algorithm = key.checksum_algorithm.upper()
    value = key.checksum_value
    if key.checksum_type == "COMPOSITE" and key.checksum_parts:
        # "Checking object integrity": composite checksum = checksum of the part checksums,
        # followed by "-" and the number of parts (ceph test_multipart_reupload_checksum_and_etag:
        # 'uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3').
        value = f"{value}-{key.checksum_parts}"
    result[f"Checksum{algorithm}"] = value
    result["ChecksumType"] = key.checksum_type


# ---------------------------------------------------------------------------------------------
# UploadPart
# ---------------------------------------------------------------------------------------------


def upload_part(self: Any) -> Any:
    """moto's upload_part with S3's checksum rules applied before the part is stored."""
    from moto.s3.exceptions import InvalidMaxPartNumberArgument

    upload_id = self._get_param("uploadId")
    part_number = self._get_int_param("partNumber")
    if part_number > 10000:
        raise InvalidMaxPartNumberArgument(part_number)
    body = self.body or b""
    try:
        checksum = request_checksum(self.headers, self.raw_body)
        bucket = _bucket(self.backend, self.bucket_name)
        multipart = bucket.multiparts.get(upload_id) if bucket is not None else None
        if bucket is not None and multipart is None:
            raise _no_such_upload()
        algorithm, kind = _declared(multipart) if multipart is not None else (None, None)
        if algorithm and checksum.algorithm != algorithm:
            if checksum.algorithm is not None or kind == "COMPOSITE":
                # Model, UploadPartRequest.ChecksumAlgorithm: "This checksum algorithm must be the
                # same for all parts and it match the checksum value supplied in the
                # CreateMultipartUpload request." Text and "null" for no checksum from swift
                # test_mpu_upload_part_requires_checksum / ..._diff_good_checksum_and_no_algo (AWS).
                actual = checksum.algorithm.lower() if checksum.algorithm else "null"
                raise ChecksumError(
                    "InvalidRequest",
                    f"Checksum Type mismatch occurred, expected checksum Type: {algorithm.lower()}, "
                    f"actual checksum Type: {actual}",
                )
            # FULL_OBJECT upload, part without a checksum: S3 adds it (swift: "AWS appears to
            # automatically add missing part checksums when using FULL_OBJECT").
            computed = digest(algorithm, body)
            if computed is not None:
                checksum = RequestChecksum(algorithm, _b64(computed))
        verify(checksum, body)
    except ChecksumError as error:
        return error.response("PUT")

    key = self.backend.upload_part(self.bucket_name, upload_id, part_number, body)
    response_headers = self._get_cors_headers_other()
    if checksum.algorithm is not None and checksum.value is not None:
        key.checksum_algorithm = checksum.algorithm
        key.checksum_value = checksum.value
        key.checksum_type = kind or None
        # UploadPartOutput.ChecksumSHA256: "The Base64 encoded, 256-bit SHA256 checksum of the part."
        response_headers[f"x-amz-checksum-{checksum.algorithm.lower()}"] = checksum.value
    response_headers.update(key.response_dict)
    # key.response_dict names moto's x-amz-sdk-checksum-algorithm; S3 answers no such header.
    response_headers.pop("x-amz-sdk-checksum-algorithm", None)
    response_headers["content-length"] = "0"
    return 200, response_headers, ""


# ---------------------------------------------------------------------------------------------
# ListParts
# ---------------------------------------------------------------------------------------------


def _list_parts(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def list_parts(self: Any) -> Any:
        def hook(result: dict[str, Any]) -> None:
            multipart = _multipart(self.backend, self.bucket_name, result.get("UploadId"))
            if multipart is None:
                return
            algorithm, kind = _declared(multipart)
            if not algorithm:
                return
            # ListPartsOutput.ChecksumAlgorithm / ChecksumType, Part.ChecksumSHA256: "present if
            # the object was uploaded with the SHA256 checksum algorithm".
            result["ChecksumAlgorithm"] = algorithm
            result["ChecksumType"] = kind
            for entry in result.get("Parts") or []:
                part = multipart.parts.get(entry.get("PartNumber"))
                value = _part_checksum_value(part, algorithm) if part is not None else None
                if value is not None:
                    entry[f"Checksum{algorithm}"] = value

        return _with_result_hook(self, hook, lambda: original(self))

    return list_parts


# ---------------------------------------------------------------------------------------------
# HeadObject / GetObject with ChecksumMode=ENABLED
# ---------------------------------------------------------------------------------------------


def _checksum_header(headers: dict[str, Any]) -> str | None:
    for name in headers:
        lower = name.lower()
        if lower.startswith("x-amz-checksum-") and lower not in _NOT_VALUE_HEADERS:
            return name
    return None


def _head_object(original: Callable[..., Any]) -> Callable[..., Any]:
    def head_object(self: Any, bucket_name: str, query: dict[str, Any], key_name: str, headers: Any) -> Any:
        status, response_headers, body = original(self, bucket_name, query, key_name, headers)
        if status not in (200, 206) or headers.get("x-amz-checksum-mode") != "ENABLED":
            return status, response_headers, body
        name = _checksum_header(response_headers)
        if name is None:
            return status, response_headers, body
        version_id = query.get("versionId", [None])[0]
        part_number = query.get("partNumber", [None])[0]
        try:
            key = self.backend.head_object(
                bucket_name, key_name, version_id=version_id, part_number=int(part_number) if part_number else None
            )
        except Exception:  # noqa: BLE001 - leave moto's answer as it is
            return status, response_headers, body
        if key is None:
            return status, response_headers, body
        if key.checksum_type == "COMPOSITE" and key.checksum_parts:
            # HeadObject answers the composite checksum with its part count, as
            # CompleteMultipartUpload does (ceph test_multipart_checksum_sha256, floci#3083).
            response_headers[name] = f"{key.checksum_value}-{key.checksum_parts}"
        # HeadObjectOutput.ChecksumType; PutObject objects are FULL_OBJECT (PutObjectOutput).
        response_headers["x-amz-checksum-type"] = key.checksum_type or "FULL_OBJECT"
        return status, response_headers, body

    return head_object


def _get_object(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def get_object(self: Any) -> Any:
        status, response_headers, body = original(self)
        if self.headers.get("x-amz-checksum-mode") == "ENABLED" and _checksum_header(response_headers):
            # moto already appends "-<parts>" and the type for composite objects; PutObject objects
            # have no type in moto: FULL_OBJECT (PutObjectOutput.ChecksumType).
            response_headers.setdefault("x-amz-checksum-type", "FULL_OBJECT")
        return status, response_headers, body

    return get_object


# ---------------------------------------------------------------------------------------------
# GetObjectAttributes
# ---------------------------------------------------------------------------------------------


def _get_object_attributes(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def get_object_attributes(self: Any) -> Any:
        def hook(result: dict[str, Any]) -> None:
            checksum = result.get("Checksum")
            if checksum and not checksum.get("ChecksumType"):
                checksum["ChecksumType"] = "FULL_OBJECT"
            attributes = [a.strip() for a in (self.headers.get("x-amz-object-attributes") or "").split(",")]
            if "ObjectParts" not in attributes:
                return
            version_id = self.querystring.get("versionId", [None])[0]
            key = self.backend.get_object(self.bucket_name, self.parse_key_name(), version_id=version_id)
            if key is None or key.multipart is None:
                return  # a single-part object has no ObjectParts (ceph test_get_checksum_object_attributes)
            result["ObjectParts"] = _object_parts(self, key)

        return _with_result_hook(self, hook, lambda: original(self))

    return get_object_attributes


def _object_parts(response: Any, key: Any) -> dict[str, Any]:
    numbers: list[int] = getattr(key, "_ami_completed_parts", None) or sorted(key.multipart.parts)
    parts: dict[str, Any] = {"TotalPartsCount": len(numbers)}
    algorithm = (key.checksum_algorithm or "").upper()
    if not algorithm:
        # GetObjectAttributesParts.Parts: "if an additional checksum ... isn't applied to the
        # object specified in the request, the response doesn't return the Part element."
        return parts
    try:
        max_parts = int(response.headers.get("x-amz-max-parts") or 1000)
        marker = int(response.headers.get("x-amz-part-number-marker") or 0)
    except ValueError:
        max_parts, marker = 1000, 0
    following = [n for n in numbers if n > marker]
    page = following[:max_parts]
    listed = []
    for number in page:
        part = key.multipart.parts.get(number)
        if part is None:
            continue
        entry: dict[str, Any] = {"PartNumber": number, "Size": part.size}
        value = _part_checksum_value(part, algorithm)
        if value is not None:
            # ObjectPart.ChecksumSHA256: "present if the multipart upload request was created with
            # the SHA256 checksum algorithm".
            entry[f"Checksum{algorithm}"] = value
        listed.append(entry)
    truncated = len(following) > len(page)
    parts.update(
        {
            "PartNumberMarker": marker,
            "MaxParts": max_parts,
            "IsTruncated": truncated,
            "Parts": listed,
        }
    )
    if page:
        parts["NextPartNumberMarker"] = page[-1]
    return parts


# ---------------------------------------------------------------------------------------------


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from moto.s3.responses import S3Response

    S3Response.put_object = _put_object(S3Response.put_object)  # type: ignore[method-assign]
    S3Response._get_checksum = _get_checksum(S3Response._get_checksum)  # type: ignore[method-assign]
    S3Response._key_response_post = _key_response_post(S3Response._key_response_post)  # type: ignore[method-assign]
    S3Response.upload_part = upload_part  # type: ignore[method-assign]
    S3Response.list_parts = _list_parts(S3Response.list_parts)  # type: ignore[method-assign]
    S3Response.head_object = _head_object(S3Response.head_object)  # type: ignore[method-assign]
    S3Response.get_object = _get_object(S3Response.get_object)  # type: ignore[method-assign]
    S3Response.get_object_attributes = _get_object_attributes(S3Response.get_object_attributes)  # type: ignore[method-assign]
    _installed = True
