"""Helpers shared by the emulator tests: disk image builders and error assertions."""

from __future__ import annotations

import re
import struct
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest
from botocore.exceptions import ClientError

GIB = 1024**3
# AMI_EMULATOR_IMPORT_DELAY_SECONDS given to the emulator the tests start (conftest.py).
SERVER_IMPORT_DELAY = 1.0
TASK_ID_RE = re.compile(r"^import-snap-[0-9a-f]{17}$")


def raw_disk(size: int) -> bytes:
    return b"\x00" * size


def vmdk_disk(capacity_bytes: int) -> bytes:
    """A stream-optimized VMDK header: magic KDMV, version, flags, capacity in 512-byte sectors."""
    sectors = -(-capacity_bytes // 512)
    header = b"KDMV" + struct.pack("<IIQQ", 3, 0x30001, sectors, 128)
    return header.ljust(512, b"\x00") + b"\x00" * 512


def vhd_disk(current_size: int, payload: int = 1024) -> bytes:
    """A fixed VHD: payload bytes followed by the 512-byte 'conectix' footer."""
    footer = bytearray(512)
    footer[0:8] = b"conectix"
    struct.pack_into(">I", footer, 8, 2)  # features
    struct.pack_into(">I", footer, 12, 0x00010000)  # file format version
    struct.pack_into(">Q", footer, 16, 0xFFFFFFFFFFFFFFFF)  # data offset (fixed disk)
    struct.pack_into(">Q", footer, 40, current_size)  # original size
    struct.pack_into(">Q", footer, 48, current_size)  # current size
    struct.pack_into(">I", footer, 60, 2)  # disk type: fixed
    return b"\x00" * payload + bytes(footer)


@contextmanager
def aws_error(code: str, message: str | None = None) -> Iterator[dict[str, Any]]:
    """Expect a botocore ClientError with ``code`` (and ``message`` as a substring)."""
    info: dict[str, Any] = {}
    with pytest.raises(ClientError) as excinfo:
        yield info
    error = excinfo.value.response["Error"]
    info.update(error)
    assert error["Code"] == code, error
    if message is not None:
        assert message in error.get("Message", ""), error


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def make_snapshot(ec2: Any, size_gib: int = 8, description: str = "test snapshot") -> str:
    """A completed snapshot of ``size_gib`` GiB (CreateVolume + CreateSnapshot, plain moto)."""
    region = ec2.meta.region_name
    volume = ec2.create_volume(AvailabilityZone=f"{region}a", Size=size_gib)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume, Description=description)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    return snapshot


def register(ec2: Any, name: str, snapshot_id: str, **kwargs: Any) -> str:
    """RegisterImage of a one-volume EBS AMI with the pipeline's usual attributes."""
    params: dict[str, Any] = {
        "Name": name,
        "Architecture": "x86_64",
        "RootDeviceName": "/dev/xvda",
        "VirtualizationType": "hvm",
        "EnaSupport": True,
        "BootMode": "uefi",
        "BlockDeviceMappings": [
            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot_id, "VolumeType": "gp3"}}
        ],
    }
    params.update(kwargs)
    return ec2.register_image(**params)["ImageId"]


def image(ec2: Any, image_id: str) -> dict[str, Any]:
    images = ec2.describe_images(ImageIds=[image_id])["Images"]
    assert len(images) == 1, images
    return images[0]
