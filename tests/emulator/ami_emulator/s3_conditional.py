"""S3 conditional writes, atomic: PutObject with ``If-None-Match: *`` or ``If-Match: <etag>``.

moto 5.2.5 implements both headers on PutObject, as a check followed by the write
(``S3Response.put_object``: ``get_object`` then ``put_object``), without a lock. Its server runs
each request in a thread, so two concurrent ``If-None-Match: *`` writes of one key can both pass
the check and both succeed. S3 does not allow that: "If multiple conditional writes occur for
the same object name, the first write operation to finish succeeds. Amazon S3 then fails
subsequent writes with a 412 Precondition Failed response" (S3 User Guide, "How to prevent object
overwrites with conditional writes",
https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html). The pipeline
relies on exactly that to claim an announcement once across concurrent Lambda invocations
(``shared::claim``).

This module serializes PutObject requests that carry either header, per process, so the check
and the write are one step, as on S3. Requests without them are untouched (no lock). The
answers themselves (412 ``PreconditionFailed``, 404 ``NoSuchKey`` for ``If-Match`` on a missing
key) are moto's.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

_lock = threading.Lock()
_installed = False


def _atomic_put(put_object: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(put_object)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.headers.get("If-None-Match") is None and self.headers.get("If-Match") is None:
            return put_object(self, *args, **kwargs)
        with _lock:
            return put_object(self, *args, **kwargs)

    return wrapper


def install() -> None:
    """Wraps moto's PutObject handler (after ``s3_checksums``, which wraps it too)."""
    global _installed
    if _installed:
        return
    from moto.s3.responses import S3Response

    S3Response.put_object = _atomic_put(S3Response.put_object)  # type: ignore[method-assign]
    _installed = True
