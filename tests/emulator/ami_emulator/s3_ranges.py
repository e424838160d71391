"""Ranged GetObject without reading the whole object.

moto 5.2.5 answers a ranged GetObject by building the whole object's bytes (``FakeKey.value``
reads its spooled buffer from the start and copies it) and slicing the range out afterwards
(``S3Response._handle_range_header``). For the fast path, which reads a multi-GiB upload with
8 MiB ranged GETs, 8 at a time, that is a full read and copy of the object per request: a 2 GiB
disk costs ~1 TB of memory traffic and up to 8 copies of 2 GiB at once.

This module keeps moto's behaviour and only defers the read: while ``key_response`` serves a
GET carrying one byte range (``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``, RFC 9110 section
14.1.2; S3 API reference, GetObject ``Range``: "Amazon S3 doesn't support retrieving multiple
ranges of data per GET request"), ``FakeKey.value`` gives a lazy view whose length is the
object's size and whose slices read only their bytes from the buffer (under the key's lock).
Every decision (status 206, ``Content-Range``, ``Content-Length``, 416 ``InvalidRange``, the
checksum headers dropped from partial answers, the fall back to a 200 with the whole object for
a range moto treats as a non-range request) stays moto's own; a lazy view that reaches the
answer unsliced is turned into the whole object's bytes first, so no caller ever sees it.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable

_LOCAL = threading.local()
# One range of the forms moto slices itself (a comma means several ranges: moto answers 200).
_SINGLE_RANGE = re.compile(r"^bytes=(\d+-\d*|-\d+)$")
_installed = False


class LazyValue:
    """A FakeKey's content as moto's GET path uses it: ``len()``, truth and slicing."""

    def __init__(self, key: Any, whole: Callable[[], bytes]) -> None:
        self._key = key
        self._whole = whole
        self._size = int(getattr(key, "contentsize", None) or key.size)

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __getitem__(self, item: Any) -> bytes:
        if not isinstance(item, slice) or item.step not in (None, 1):
            return self.materialize()[item]
        start, stop, _ = item.indices(self._size)
        if stop <= start:
            return b""
        with self._key.lock:
            self._key._value_buffer.seek(start)
            return self._key._value_buffer.read(stop - start)

    def materialize(self) -> bytes:
        """The whole object (moto's own read)."""
        return self._whole()


def _value_property(original: property) -> property:
    def value(self: Any) -> Any:
        if getattr(_LOCAL, "lazy", False) and hasattr(self, "_value_buffer") and hasattr(self, "lock"):
            return LazyValue(self, lambda: original.fget(self))  # type: ignore[misc]
        return original.fget(self)  # type: ignore[misc]

    return property(value, original.fset, original.fdel, original.__doc__)


def _key_response(original: Callable[..., Any]) -> Callable[..., Any]:
    def key_response(self: Any, request: Any, full_url: str, headers: dict[str, Any]) -> Any:
        wanted = request.method == "GET" and bool(_SINGLE_RANGE.match(request.headers.get("range") or ""))
        _LOCAL.lazy = wanted
        try:
            status, response_headers, body = original(self, request, full_url, headers)
        finally:
            _LOCAL.lazy = False
        if isinstance(body, LazyValue):
            body = body.materialize()
        return status, response_headers, body

    return key_response


def install() -> None:
    """Patch moto's S3 key response and ``FakeKey.value`` (idempotent)."""
    global _installed
    if _installed:
        return
    from moto.s3.models import FakeKey
    from moto.s3.responses import S3Response

    FakeKey.value = _value_property(FakeKey.value)  # type: ignore[method-assign,assignment]
    S3Response.key_response = _key_response(S3Response.key_response)  # type: ignore[method-assign]
    _installed = True
