"""S3 object checksums as S3 answers them (PutObject, multipart uploads, HeadObject / GetObject
with ChecksumMode, GetObjectAttributes).

Expected answers come from the S3 API reference (botocore's s3 model), the user guide's
"Checking object integrity" (a multipart upload's COMPOSITE checksum is the checksum of the
concatenated binary part checksums, followed by ``-<number of parts>``), and the vectors and error
texts of test suites that run against real S3 (ceph/s3-tests, openstack/swift s3api checksum
tests). Expected checksums are recomputed here from the bytes with hashlib/binascii.

Plain moto 5.2.5: no ChecksumType on CreateMultipartUpload, no verification (a wrong checksum is
stored), no checksums in ListParts or CompleteMultipartUpload, a composite checksum without its
``-<parts>`` suffix on HeadObject, no ObjectParts in GetObjectAttributes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import Account
from emu_helpers import aws_error

MIB = 1024 * 1024
PART = 5 * MIB  # S3's minimum size of every part but the last

# ceph/s3-tests test_multipart_reupload_checksum_and_etag: three 5 MiB parts of 'A', 'B', 'C'.
CEPH_PART_SHA256 = [
    "275VF5loJr1YYawit0XSHREhkFXYkkPKGuoK0x9VKxI=",
    "mrHwOfjTL5Zwfj74F05HOQGLdUb7E5szdCbxgUSq6NM=",
    "Vw7oB/nKQ5xWb3hNgbyfkvDiivl+U+/Dft48nfJfDow=",
]
CEPH_COMPOSITE_SHA256 = "uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3"
CEPH_ETAG = "b2add96cc9702bbf4efb0ccdfc6b7747-3"

# When the client sends no checksum of its own (boto3 would add CRC32 by default).
NO_SDK_CHECKSUM = Config(request_checksum_calculation="when_required")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def sha256(data: bytes) -> str:
    return b64(hashlib.sha256(data).digest())


def crc32(data: bytes) -> str:
    return b64(binascii.crc32(data).to_bytes(4, "big"))


def composite_sha256(parts: list[bytes]) -> str:
    """User guide, "Using part-level checksums for multipart uploads": SHA-256 of the concatenated
    binary part digests, base64, then "-" and the number of parts."""
    joined = b"".join(hashlib.sha256(p).digest() for p in parts)
    return f"{b64(hashlib.sha256(joined).digest())}-{len(parts)}"


def composite_crc32(parts: list[bytes]) -> str:
    joined = b"".join(binascii.crc32(p).to_bytes(4, "big") for p in parts)
    return f"{crc32(joined)}-{len(parts)}"


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]


def sha256_upload(s3: Any, bucket: str, key: str, parts: list[bytes]) -> tuple[str, list[dict[str, Any]]]:
    """CreateMultipartUpload(SHA256) and UploadPart with the SDK computing each part's checksum."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    completed = []
    for number, data in enumerate(parts, start=1):
        answer = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data, ChecksumAlgorithm="SHA256"
        )
        completed.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": answer["ChecksumSHA256"]})
    return upload, completed


# ---------------------------------------------------------------------------------------------
# CreateMultipartUpload
# ---------------------------------------------------------------------------------------------


def test_create_multipart_upload_sha256_is_composite(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    created = s3.create_multipart_upload(Bucket=bucket, Key="disk.raw", ChecksumAlgorithm="SHA256")
    # CreateMultipartUploadOutput: x-amz-checksum-algorithm and x-amz-checksum-type; SHA256 is
    # composite only ("Checking object integrity", checksum types).
    assert created["ChecksumAlgorithm"] == "SHA256"
    assert created["ChecksumType"] == "COMPOSITE"
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["ChecksumAlgorithm"], u["ChecksumType"]) for u in uploads] == [
        ("disk.raw", "SHA256", "COMPOSITE")
    ]


def test_create_multipart_upload_checksum_type_rules(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    with aws_error(
        "InvalidRequest", "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."
    ):
        s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumType="COMPOSITE")
    with aws_error("InvalidRequest", "The FULL_OBJECT checksum type cannot be used with the sha256 checksum algorithm."):
        s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256", ChecksumType="FULL_OBJECT")
    full = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT")
    assert (full["ChecksumAlgorithm"], full["ChecksumType"]) == ("CRC32", "FULL_OBJECT")
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == ["k"]


# ---------------------------------------------------------------------------------------------
# UploadPart
# ---------------------------------------------------------------------------------------------


def test_upload_part_checks_the_sha256_it_is_given(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256")["UploadId"]
    data = b"part one" * 1000
    with pytest.raises(ClientError) as excinfo:
        s3.upload_part(
            Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=data, ChecksumSHA256=sha256(b"other bytes")
        )
    assert error_of(excinfo) == (400, "BadDigest", "The SHA256 you specified did not match the calculated checksum.")
    # Refused before anything was stored.
    assert s3.list_parts(Bucket=bucket, Key="k", UploadId=upload).get("Parts", []) == []

    # Not the base64 of 32 bytes (swift's INVALID vector: only the last character's unused bits differ).
    with aws_error("InvalidRequest", "Value for x-amz-checksum-sha256 header is invalid."):
        s3.upload_part(
            Bucket=bucket,
            Key="k",
            UploadId=upload,
            PartNumber=1,
            Body=b"123456789",
            ChecksumSHA256="FeKw08M4keuw8e9gnsQZQgwg4yDOlMZfvIwzEkSOsiV=",
        )

    answer = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=data, ChecksumSHA256=sha256(data))
    # UploadPartOutput.ChecksumSHA256: the part's checksum.
    assert answer["ChecksumSHA256"] == sha256(data)
    # Computed by the SDK (trailer over https, header over http): swift's AWS vector for b"123456789".
    answer = s3.upload_part(
        Bucket=bucket, Key="k", UploadId=upload, PartNumber=2, Body=b"123456789", ChecksumAlgorithm="SHA256"
    )
    assert answer["ChecksumSHA256"] == "FeKw08M4keuw8e9gnsQZQgwg4yDOlMZfvIwzEkSOsiU=" == sha256(b"123456789")


def test_upload_part_must_use_the_upload_algorithm(account: Account) -> None:
    bucket = account.bucket()
    s3 = account.s3()
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256")["UploadId"]
    # UploadPartRequest.ChecksumAlgorithm: "This checksum algorithm must be the same for all parts
    # and it match the checksum value supplied in the CreateMultipartUpload request."
    with aws_error(
        "InvalidRequest", "Checksum Type mismatch occurred, expected checksum Type: sha256, actual checksum Type: crc32"
    ):
        s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x" * 10, ChecksumAlgorithm="CRC32")
    bare = account.client("s3", config=NO_SDK_CHECKSUM)
    with aws_error(
        "InvalidRequest", "Checksum Type mismatch occurred, expected checksum Type: sha256, actual checksum Type: null"
    ):
        bare.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x" * 10)
    assert s3.list_parts(Bucket=bucket, Key="k", UploadId=upload).get("Parts", []) == []


# ---------------------------------------------------------------------------------------------
# ListParts, CompleteMultipartUpload, HeadObject, GetObject
# ---------------------------------------------------------------------------------------------


def test_list_parts_reports_algorithm_and_part_checksums(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    parts = [b"a" * PART, b"tail"]
    upload, _ = sha256_upload(s3, bucket, "k", parts)
    listed = s3.list_parts(Bucket=bucket, Key="k", UploadId=upload)
    assert listed["ChecksumAlgorithm"] == "SHA256"
    assert listed["ChecksumType"] == "COMPOSITE"
    assert [(p["PartNumber"], p["Size"], p["ChecksumSHA256"]) for p in listed["Parts"]] == [
        (1, PART, sha256(parts[0])),
        (2, 4, sha256(parts[1])),
    ]


def test_complete_returns_the_composite_checksum(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    parts = [b"A" * PART, b"B" * PART, b"C" * PART]
    upload, completed = sha256_upload(s3, bucket, "disk.raw", parts)
    assert [p["ChecksumSHA256"] for p in completed] == CEPH_PART_SHA256
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="disk.raw", UploadId=upload, MultipartUpload={"Parts": completed}
    )
    assert CEPH_COMPOSITE_SHA256 == composite_sha256(parts)
    assert done["ChecksumSHA256"] == CEPH_COMPOSITE_SHA256
    assert done["ChecksumType"] == "COMPOSITE"
    assert done["ETag"].strip('"') == CEPH_ETAG

    head = s3.head_object(Bucket=bucket, Key="disk.raw", ChecksumMode="ENABLED")
    assert (head["ChecksumSHA256"], head["ChecksumType"]) == (CEPH_COMPOSITE_SHA256, "COMPOSITE")
    plain = s3.head_object(Bucket=bucket, Key="disk.raw")
    # HeadObjectRequest.ChecksumMode: "To retrieve the checksum, this parameter must be enabled."
    assert "ChecksumSHA256" not in plain and "ChecksumType" not in plain
    got = s3.get_object(Bucket=bucket, Key="disk.raw", ChecksumMode="ENABLED")
    assert (got["ChecksumSHA256"], got["ChecksumType"]) == (CEPH_COMPOSITE_SHA256, "COMPOSITE")
    assert got["Body"].read() == b"".join(parts)

    # A retried CompleteMultipartUpload answers the same object (ceph
    # test_multipart_reupload_checksum_and_etag; the reference asks callers to retry it).
    again = s3.complete_multipart_upload(
        Bucket=bucket, Key="disk.raw", UploadId=upload, MultipartUpload={"Parts": completed}
    )
    assert (again["ETag"], again["ChecksumSHA256"]) == (done["ETag"], done["ChecksumSHA256"])


def test_unknown_upload_is_no_such_upload(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    # UploadPart / CompleteMultipartUpload: NoSuchUpload, 404 (plain moto: HTTP 500).
    with pytest.raises(ClientError) as excinfo:
        s3.upload_part(Bucket=bucket, Key="k", UploadId="no-such-upload", PartNumber=1, Body=b"x")
    assert error_of(excinfo)[:2] == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as excinfo:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="k",
            UploadId="no-such-upload",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0123"'}]},
        )
    assert error_of(excinfo)[:2] == (404, "NoSuchUpload")


def test_head_object_part_number_answers_the_part_checksum(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    parts = [b"p" * PART, b"last"]
    upload, completed = sha256_upload(s3, bucket, "k", parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": completed})
    # swift test_get_part (run against AWS): with a part number the part's own checksum.
    head = s3.head_object(Bucket=bucket, Key="k", PartNumber=2, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha256(parts[1])
    assert head["ChecksumType"] == "COMPOSITE"


def test_complete_requires_each_part_checksum(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    upload, completed = sha256_upload(s3, bucket, "k", [b"x" * PART, b"y"])
    without = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in completed]
    with aws_error(
        "InvalidRequest",
        "The upload was created using a sha256 checksum. The complete request must include the checksum "
        "for each part. It was missing for part 1 in the request.",
    ):
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": without})
    # Nothing was completed: the upload is still there and the object is not.
    assert len(s3.list_parts(Bucket=bucket, Key="k", UploadId=upload)["Parts"]) == 2
    with aws_error("404"):
        s3.head_object(Bucket=bucket, Key="k")


def test_complete_rejects_a_wrong_part_checksum(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    upload, completed = sha256_upload(s3, bucket, "k", [b"x" * PART, b"y"])
    completed[1]["ChecksumSHA256"] = sha256(b"z")
    with aws_error("InvalidPart", "One or more of the specified parts could not be found."):
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": completed})
    assert len(s3.list_parts(Bucket=bucket, Key="k", UploadId=upload)["Parts"]) == 2


def test_complete_checks_the_whole_object_checksum_it_is_given(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    parts = [b"x" * PART, b"y"]
    upload, completed = sha256_upload(s3, bucket, "k", parts)
    expected = composite_sha256(parts)
    with aws_error("BadDigest", "The sha256 you specified did not match the calculated checksum."):
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="k",
            UploadId=upload,
            MultipartUpload={"Parts": completed},
            ChecksumSHA256=expected.replace("-2", "-3"),
        )
    with aws_error("InvalidRequest", "Value for x-amz-checksum-sha256 header is invalid."):
        s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": completed}, ChecksumSHA256="bad"
        )
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": completed}, ChecksumSHA256=expected
    )
    assert done["ChecksumSHA256"] == expected


def test_complete_part_numbers_must_start_at_1_and_be_consecutive(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256")["UploadId"]
    parts = []
    for number, data in ((1, b"x" * PART), (3, b"y")):
        answer = s3.upload_part(
            Bucket=bucket, Key="k", UploadId=upload, PartNumber=number, Body=data, ChecksumAlgorithm="SHA256"
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": answer["ChecksumSHA256"]})
    # CompletedPart.PartNumber: with a checksum on each part, "the PartNumber must start at 1 and
    # the part numbers must be consecutive. Otherwise ... InvalidPartOrder".
    with aws_error("InvalidPartOrder"):
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": parts})


# ---------------------------------------------------------------------------------------------
# GetObjectAttributes
# ---------------------------------------------------------------------------------------------


def test_get_object_attributes_checksum_and_object_parts(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    parts = [b"1" * PART, b"2" * PART, b"3"]
    upload, completed = sha256_upload(s3, bucket, "k", parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": completed})
    attributes = s3.get_object_attributes(
        Bucket=bucket, Key="k", ObjectAttributes=["ETag", "Checksum", "ObjectParts", "ObjectSize"]
    )
    # GetObjectAttributes answers the composite value without the "-3" (floci-io/floci#3083, S3 capture).
    assert attributes["Checksum"] == {
        "ChecksumSHA256": composite_sha256(parts).rsplit("-", 1)[0],
        "ChecksumType": "COMPOSITE",
    }
    object_parts = attributes["ObjectParts"]
    assert object_parts["TotalPartsCount"] == 3
    assert object_parts["IsTruncated"] is False
    assert [(p["PartNumber"], p["Size"], p["ChecksumSHA256"]) for p in object_parts["Parts"]] == [
        (n, len(d), sha256(d)) for n, d in enumerate(parts, start=1)
    ]
    page = s3.get_object_attributes(
        Bucket=bucket, Key="k", ObjectAttributes=["ObjectParts"], MaxParts=1, PartNumberMarker=1
    )["ObjectParts"]
    assert [p["PartNumber"] for p in page["Parts"]] == [2]
    assert (page["IsTruncated"], page["NextPartNumberMarker"], page["MaxParts"]) == (True, 2, 1)


def test_get_object_attributes_single_part_object(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    s3.put_object(Bucket=bucket, Key="k", Body=b"A" * 1024, ChecksumSHA256="arcu6553sHVAiX4MjW0j7I7vD4w6R+Gz9Ok0Q9lTa+0=")
    attributes = s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["Checksum", "ObjectParts"])
    # ceph test_get_checksum_object_attributes: the checksum, no ObjectParts.
    assert attributes["Checksum"] == {
        "ChecksumSHA256": "arcu6553sHVAiX4MjW0j7I7vD4w6R+Gz9Ok0Q9lTa+0=",
        "ChecksumType": "FULL_OBJECT",
    }
    assert "ObjectParts" not in attributes


# ---------------------------------------------------------------------------------------------
# PutObject
# ---------------------------------------------------------------------------------------------


def test_put_object_sha256_is_checked_and_full_object(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    data = b"A" * 1024
    put = s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm="SHA256")
    # PutObjectOutput.ChecksumType: "For PutObject uploads, the checksum type is always FULL_OBJECT."
    assert (put["ChecksumSHA256"], put["ChecksumType"]) == (sha256(data), "FULL_OBJECT")
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert (head["ChecksumSHA256"], head["ChecksumType"]) == (sha256(data), "FULL_OBJECT")
    assert "ChecksumSHA256" not in s3.head_object(Bucket=bucket, Key="k")

    with aws_error("BadDigest", "The SHA256 you specified did not match the calculated checksum."):
        s3.put_object(Bucket=bucket, Key="bad", Body=data, ChecksumSHA256=sha256(b"other"))
    with aws_error("404"):
        s3.head_object(Bucket=bucket, Key="bad")


def test_put_object_checksum_without_algorithm_header_is_kept(account: Account) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    data = b"123456789"
    # botocore sends only x-amz-checksum-sha256 here (no x-amz-sdk-checksum-algorithm); S3 keeps it
    # (swift test_good_checksum_no_algorithm_header, run against AWS).
    s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumSHA256=sha256(data))
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha256(data)


def _aws_chunked(data: bytes, trailer: str, value: str, signed: bool) -> tuple[bytes, str]:
    """An aws-chunked body with a trailing checksum, as SDKs send it (sigv4-streaming-trailers)."""
    if signed:
        sig = b";chunk-signature=" + b"0" * 64
        body = (
            b"%x" % len(data) + sig + b"\r\n" + data + b"\r\n0" + sig + b"\r\n"
            + f"{trailer}:{value}\r\n".encode() + b"x-amz-trailer-signature:" + b"1" * 64 + b"\r\n\r\n"
        )
        return body, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    body = b"%x\r\n" % len(data) + data + b"\r\n0\r\n" + f"{trailer}:{value}\r\n\r\n".encode()
    return body, "STREAMING-UNSIGNED-PAYLOAD-TRAILER"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed-chunks"])
def test_put_object_trailing_checksum(account: Account, signed: bool) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    data = b"trailing checksum " * 500

    def put(key: str, value: str) -> tuple[int, bytes]:
        body, payload = _aws_chunked(data, "x-amz-checksum-crc32", value, signed)
        request = urllib.request.Request(
            f"{account.endpoint}/{bucket}/{key}",
            data=body,
            method="PUT",
            headers={
                "x-moto-account-id": account.id,
                "Content-Type": "application/octet-stream",
                "Content-Encoding": "aws-chunked",
                "x-amz-content-sha256": payload,
                "x-amz-decoded-content-length": str(len(data)),
                "x-amz-trailer": "x-amz-checksum-crc32",
                "x-amz-sdk-checksum-algorithm": "CRC32",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback only)
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    status, body = put("good", crc32(data))
    assert status == 200, body
    head = s3.head_object(Bucket=bucket, Key="good", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC32"], head["ContentLength"]) == (crc32(data), len(data))
    status, body = put("bad", crc32(b"something else"))
    assert status == 400
    assert b"<Code>BadDigest</Code>" in body
    assert b"The CRC32 you specified did not match the calculated checksum." in body


# ---------------------------------------------------------------------------------------------
# Third-party uploaders, unmodified: boto3's managed transfer
# ---------------------------------------------------------------------------------------------


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = bytes((i * 7 + i // 4096) % 251 for i in range(size))
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    return path, data


def test_upload_file_sha256_multipart(account: Account, tmp_path: Path) -> None:
    s3 = account.s3()
    bucket = account.bucket()
    path, data = _file(tmp_path, 2 * PART + MIB)  # 5 + 5 + 1 MiB parts
    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=2)
    s3.upload_file(str(path), bucket, "disk.raw", ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config)

    parts = [data[0:PART], data[PART : 2 * PART], data[2 * PART :]]
    head = s3.head_object(Bucket=bucket, Key="disk.raw", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == composite_sha256(parts)
    assert head["ChecksumType"] == "COMPOSITE"
    assert head["ContentLength"] == len(data)
    object_parts = s3.get_object_attributes(Bucket=bucket, Key="disk.raw", ObjectAttributes=["ObjectParts"])[
        "ObjectParts"
    ]
    assert [p["ChecksumSHA256"] for p in object_parts["Parts"]] == [sha256(p) for p in parts]

    target = tmp_path / "back.raw"
    s3.download_file(bucket, "disk.raw", str(target))
    assert target.read_bytes() == data


def test_upload_file_default_checksum_is_composite_crc32(account: Account, tmp_path: Path) -> None:
    """boto3 >= 1.36 (s3transfer) declares CRC32 on its multipart uploads by default."""
    s3 = account.s3()
    bucket = account.bucket()
    path, data = _file(tmp_path, PART + MIB)
    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
    s3.upload_file(str(path), bucket, "disk.raw", Config=config)
    head = s3.head_object(Bucket=bucket, Key="disk.raw", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == composite_crc32([data[:PART], data[PART:]])
    assert head["ChecksumType"] == "COMPOSITE"
