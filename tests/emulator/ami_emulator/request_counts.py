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

Beside each count, the server's CPU time for those requests (``cpu_seconds``, per
``"service:action"``, and ``cpu_total_seconds``): the thread CPU time
(``time.thread_time``) of the server thread that served the request, from reading its request
line to writing its answer, all of it (HTTP parsing, the gates, moto, the answer), measured by
the persistent-connection handler (``keep_alive``; with ``--connection close`` nothing is
measured). A benchmark reads from it what each of its calls cost the emulator. The CPU of a
request still in flight when its account's counts are cleared is added after the clearing.
"""

from __future__ import annotations

import threading
from typing import Any

UNKNOWN = "unknown"

_LOCK = threading.Lock()
# account id -> "service:action" -> count
_COUNTS: dict[str, dict[str, int]] = {}
# account id -> "service:action" -> server CPU seconds
_CPU: dict[str, dict[str, float]] = {}
# The (account, "service:action") of the request this server thread is serving, once recorded.
_serving = threading.local()


def record(account_id: str, service: str | None, action: str | None) -> None:
    key = f"{service or UNKNOWN}:{action or UNKNOWN}"
    with _LOCK:
        counts = _COUNTS.get(account_id)
        if counts is None:
            counts = _COUNTS[account_id] = {}
        counts[key] = counts.get(key, 0) + 1
    _serving.request = (account_id, key)


def begin_request() -> None:
    """The server thread starts on a new request (nothing recorded for it yet)."""
    _serving.request = None


def end_request(cpu_seconds: float) -> None:
    """The server thread is done with its request, which took ``cpu_seconds`` of its CPU:
    added to the request's account and action, if ``record`` saw it (not for the control
    routes)."""
    request = getattr(_serving, "request", None)
    _serving.request = None
    if request is None:
        return
    account_id, key = request
    with _LOCK:
        cpu = _CPU.get(account_id)
        if cpu is None:
            cpu = _CPU[account_id] = {}
        cpu[key] = cpu.get(key, 0.0) + cpu_seconds


def snapshot(account_id: str) -> dict[str, Any]:
    """``{"account_id", "requests": {"service:action": n, ...}, "total": N, "cpu_seconds":
    {"service:action": s, ...}, "cpu_total_seconds": S}`` (keys sorted)."""
    with _LOCK:
        counts = dict(_COUNTS.get(account_id, {}))
        cpu = dict(_CPU.get(account_id, {}))
    return {
        "account_id": account_id,
        "requests": dict(sorted(counts.items())),
        "total": sum(counts.values()),
        "cpu_seconds": {key: round(seconds, 6) for key, seconds in sorted(cpu.items())},
        "cpu_total_seconds": round(sum(cpu.values()), 6),
    }


def clear(account_id: str) -> int:
    """Forget the account's counts and CPU times; returns how many requests they added up to."""
    with _LOCK:
        _CPU.pop(account_id, None)
        return sum(_COUNTS.pop(account_id, {}).values())


def reset_counts() -> None:
    """Forget every account's counts and CPU times (called on ``POST /moto-api/reset``)."""
    with _LOCK:
        _COUNTS.clear()
        _CPU.clear()
