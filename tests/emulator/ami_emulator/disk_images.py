"""Disk image probing for the ImportSnapshot extension.

VM Import reads the disk from S3 and sizes the resulting snapshot from the disk's *virtual*
size, not from the object size. The formats ImportSnapshot accepts
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SnapshotDiskContainer.html:
``VHD | VMDK | RAW``) are recognised as follows:

* RAW: the virtual size is the object size.
* VMDK: a sparse / stream-optimized extent starts with the magic ``KDMV``; the little-endian
  u64 ``capacity`` at offset 12 counts 512-byte sectors (VMware "Virtual Disk Format 1.1").
  Anything else (e.g. a text descriptor of a flat VMDK) is rejected, as VM Import rejects it.
* VHD: fixed and dynamic VHDs end with a 512-byte footer whose cookie is ``conectix``; the
  big-endian u64 "current size" at offset 48 of the footer is the virtual size in bytes
  (Microsoft "Virtual Hard Disk Image Format Specification").

A failure is reported with the text VM Import puts after ``ClientError: `` in the task's
StatusMessage.
"""

from __future__ import annotations

import struct
from typing import Any

GIB = 1024**3
SECTOR = 512
VHD_FOOTER_SIZE = 512

SUPPORTED_FORMATS = ("RAW", "VHD", "VMDK")


class DiskValidationError(Exception):
    """The object is not a usable disk of the requested format; str() is the AWS-style reason."""


def _read_range(key: Any, offset: int, length: int) -> bytes:
    """Read part of a moto S3 FakeKey without copying the whole (possibly large) object."""
    buffer = getattr(key, "_value_buffer", None)
    lock = getattr(key, "lock", None)
    if buffer is not None and lock is not None:
        with lock:
            buffer.seek(offset)
            return buffer.read(length)
    return bytes(key.value[offset : offset + length])


def object_size(key: Any) -> int:
    size = getattr(key, "size", None)
    if isinstance(size, int):
        return size
    return len(key.value)


def virtual_size_bytes(disk_format: str, key: Any) -> int:
    """Virtual disk size in bytes of the S3 object ``key`` read as ``disk_format``."""
    size = object_size(key)
    if size == 0:
        raise DiskValidationError("Disk validation failed [Empty disk image]")
    fmt = disk_format.upper()
    if fmt == "RAW":
        return size
    if fmt == "VMDK":
        header = _read_range(key, 0, 20)
        if len(header) < 20 or header[:4] != b"KDMV":
            raise DiskValidationError("Disk validation failed [Unsupported VMDK File Format]")
        (capacity_sectors,) = struct.unpack_from("<Q", header, 12)
        if capacity_sectors == 0:
            raise DiskValidationError("Disk validation failed [Unsupported VMDK File Format]")
        return capacity_sectors * SECTOR
    if fmt == "VHD":
        if size < VHD_FOOTER_SIZE:
            raise DiskValidationError("Disk validation failed [Invalid VHD footer]")
        footer = _read_range(key, size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE)
        if footer[:8] != b"conectix":
            raise DiskValidationError("Disk validation failed [Invalid VHD footer]")
        (current_size,) = struct.unpack_from(">Q", footer, 48)
        if current_size == 0:
            raise DiskValidationError("Disk validation failed [Invalid VHD footer]")
        return current_size
    raise DiskValidationError(f"Disk validation failed [Unsupported disk format {disk_format}]")


def size_in_gib(size_bytes: int) -> int:
    """Whole GiB, rounded up, at least 1: the VolumeSize of the imported snapshot."""
    return max(1, -(-size_bytes // GIB))
