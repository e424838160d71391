"""Speed: which images use a snapshot, without scanning every image of the account+region.

``snapshots.image_using_snapshot`` answers "is this snapshot in some registered image's block
device mappings?" for DeleteSnapshot (``InvalidSnapshot.InUse``) and for DeregisterImage with
``DeleteAssociatedSnapshots`` (``skipped``). It used to walk every image of the account+region
and copy each image's mappings: with 1,500 images a quarter of the emulator's time in a cleanup
benchmark, growing with the image count. ``SnapshotIndexedImages`` is the EC2 backend's ``amis``
store (``EC2Backend.amis``: image id -> image) keeping, next to the images, the index snapshot id
-> ids of the images whose mappings name it, updated by every write of the store (set, delete,
pop, update, clear, ...). An image's block device mappings never change once it is stored (AWS:
they are fixed at registration; ``images.EmulatorImage`` keeps what RegisterImage / CopyImage
were given, moto's own ``Ami`` derives its mapping from its fixed ``ebs_snapshot``), so the index
is exact and the answers are the same as the scan's, in the same order (the store's insertion
order).

``consistency.CreationLog`` (the ``amis`` store while eventual consistency may be switched on)
derives from this class for ``amis``, so the index survives its wrapping.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

_MISSING = object()


def mapping_snapshot_ids(image: Any) -> list[str]:
    """Snapshot ids in an image's block device mappings, in mapping order, without duplicates.

    Reads ``images.EmulatorImage``'s own mappings without the defensive copy its
    ``block_device_mappings`` property makes; plain moto AMIs through the property."""
    mappings = image.__dict__.get("_bdm") if hasattr(image, "__dict__") else None
    if mappings is None:
        mappings = getattr(image, "block_device_mappings", None) or []
    ids: list[str] = []
    for mapping in mappings:
        ebs = mapping.get("Ebs") or {}
        snapshot_id = ebs.get("SnapshotId")
        if snapshot_id and snapshot_id not in ids:
            ids.append(snapshot_id)
    return ids


class SnapshotIndexedImages(dict):  # type: ignore[type-arg]
    """An ``amis`` store (image id -> image) with the index snapshot id -> image ids."""

    def __init__(self, initial: Any = (), /, **kwargs: Any) -> None:
        super().__init__()
        # snapshot id -> {image id: None}: a dict for the store's insertion order.
        self._users: dict[str, dict[str, None]] = {}
        self.update(initial, **kwargs)

    # -- the index ----------------------------------------------------------------------------

    def _add(self, image_id: str, image: Any) -> None:
        for snapshot_id in mapping_snapshot_ids(image):
            self._users.setdefault(snapshot_id, {})[image_id] = None

    def _remove(self, image_id: str, image: Any) -> None:
        for snapshot_id in mapping_snapshot_ids(image):
            users = self._users.get(snapshot_id)
            if users is not None:
                users.pop(image_id, None)
                if not users:
                    del self._users[snapshot_id]

    def images_using(self, snapshot_id: str) -> list[str]:
        """Ids of the stored images whose block device mappings name ``snapshot_id``."""
        users = self._users.get(snapshot_id)
        return list(users) if users else []

    # -- every write of the store -------------------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        old = dict.get(self, key, _MISSING)
        super().__setitem__(key, value)
        if old is not _MISSING:
            self._remove(key, old)
        self._add(key, value)

    def __delitem__(self, key: str) -> None:
        old = dict.__getitem__(self, key)
        super().__delitem__(key)
        self._remove(key, old)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            value = super().pop(key)
            self._remove(key, value)
            return value
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self._remove(key, value)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        items: Iterable[tuple[str, Any]]
        items = other.items() if hasattr(other, "items") else other
        for key, value in list(items):
            self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def __ior__(self, other: Any) -> "SnapshotIndexedImages":
        self.update(other)
        return self

    def clear(self) -> None:
        super().clear()
        self._users.clear()


def _wrap_backend_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def init(self: Any, region_name: str, account_id: str) -> None:
        original(self, region_name, account_id)
        if not isinstance(self.amis, SnapshotIndexedImages):
            self.amis = SnapshotIndexedImages(self.amis)

    return init


_installed = False


def install() -> None:
    """Make every new EC2 backend's ``amis`` a ``SnapshotIndexedImages`` (before
    ``consistency`` is installed, which keeps the index when it wraps the store)."""
    global _installed
    if _installed:
        return
    from moto.ec2.models import EC2Backend

    EC2Backend.__init__ = _wrap_backend_init(EC2Backend.__init__)  # type: ignore[method-assign]
    _installed = True
