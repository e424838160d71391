"""Per-account AWS request counts, for benchmarks ("how many DescribeImages did that run make?").

``faults.FaultMiddleware`` attributes every AWS API request (not the ``/ami-pipeline-emulator/``
or ``/moto-api/`` routes) to an account, service and action, exactly as it does for fault rules,
and calls ``record`` once per request, before moto or an injected fault answers it. So a request
answered by a fault counts, and a paginated call counts once per page.

Counts are process-wide state kept here, keyed ``"<service>:<action>"`` (``ec2:DescribeImages``,
``s3:PutObject``, ``sns:Publish``; ``unknown`` where the service or action cannot be told), read
and reset per account through ``GET``/``DELETE /ami-pipeline-emulator/requests?account_id=...``
and cleared for all accounts on ``POST /moto-api/reset``. One short lock per request: negligible
next to moto's own work.
"""

from __future__ import annotations

import threading
from typing import Any

UNKNOWN = "unknown"

_LOCK = threading.Lock()
# account id -> "service:action" -> count
_COUNTS: dict[str, dict[str, int]] = {}


def record(account_id: str, service: str | None, action: str | None) -> None:
    key = f"{service or UNKNOWN}:{action or UNKNOWN}"
    with _LOCK:
        counts = _COUNTS.get(account_id)
        if counts is None:
            counts = _COUNTS[account_id] = {}
        counts[key] = counts.get(key, 0) + 1


def snapshot(account_id: str) -> dict[str, Any]:
    """``{"account_id", "requests": {"service:action": n, ...}, "total": N}`` (keys sorted)."""
    with _LOCK:
        counts = dict(_COUNTS.get(account_id, {}))
    return {
        "account_id": account_id,
        "requests": dict(sorted(counts.items())),
        "total": sum(counts.values()),
    }


def clear(account_id: str) -> int:
    """Forget the account's counts; returns how many requests they added up to."""
    with _LOCK:
        return sum(_COUNTS.pop(account_id, {}).values())


def reset_counts() -> None:
    """Forget every account's counts (called on ``POST /moto-api/reset``)."""
    with _LOCK:
        _COUNTS.clear()
