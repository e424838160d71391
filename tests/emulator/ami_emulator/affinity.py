"""Which CPUs the server's threads may run on (``AMI_EMULATOR_CPU`` / ``--cpu``).

The server is one CPython process with a thread per connection, so it runs Python on one CPU at a
time whatever the machine has: each request's thread must hold the GIL. When clients keep several
requests in flight (our functions keep up to ``CLEANUP_CONCURRENCY`` EC2 calls in flight, as they
would against AWS), the GIL passes from thread to thread at every socket read and write, and the
kernel wakes the next thread on whichever CPU is idle. Each such hand-over to another CPU starts
that thread on cold caches. Measured on the 2-CPU machine of the cleanup benchmark
(``scripts/bench-cleanup compare``, 1,500 images, four requests in flight, five comparisons):
the server spent 0.63-0.73 ms of CPU per DescribeImageAttribute free to use both CPUs and
0.53-0.58 ms with its threads on one, about what the same call costs when only one request is
ever in flight (0.56-0.59 ms, three comparisons). A client sending one request at a time gains
nothing. So the server's threads are kept on one CPU, which costs nothing the GIL did not
already cost; the other CPUs stay free for the clients.

Settings:

* ``auto`` (default): with two CPUs or more allowed, every thread of the process (those running
  now and, by inheritance, each one started later) is kept on the CPU the kernel had the process
  running on as it started. With one CPU allowed, or where the platform has no
  ``sched_setaffinity``, nothing changes. Several emulators on one machine may so share a CPU:
  give each its own with ``N``, or use ``off``.
* ``off``: nothing changes; the kernel moves the threads freely.
* ``N``: CPU number ``N``, which must be among the CPUs the process may use.
"""

from __future__ import annotations

import os


class AffinityError(ValueError):
    """An ``AMI_EMULATOR_CPU`` value that cannot be applied (the message says why)."""


def _current_cpu() -> int | None:
    """The CPU this thread is running on (field 39 of ``/proc/thread-self/stat``), or None."""
    try:
        with open("/proc/thread-self/stat", encoding="ascii") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[36])  # field 39 is the 37th after the name's
    except (IndexError, ValueError):
        return None


def _tasks() -> list[int]:
    """The thread ids of this process."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def choose(setting: str) -> tuple[int | None, str]:
    """The CPU that ``setting`` (``auto``, ``off`` or a CPU number) keeps the server's threads on
    (None: not pinned) and what that is, for the startup line. AffinityError for a value that is
    neither, or a CPU the process may not use."""
    value = setting.strip().lower()
    if value == "off":
        return None, "off"
    if value != "auto" and not value.isdigit():
        raise AffinityError(f"AMI_EMULATOR_CPU / --cpu must be auto, off or a CPU number, not {setting!r}")
    if not hasattr(os, "sched_setaffinity"):
        if value == "auto":
            return None, "auto: not supported on this platform, threads not pinned"
        raise AffinityError(f"--cpu {value}: this platform has no sched_setaffinity")
    allowed = os.sched_getaffinity(0)
    if value == "auto":
        if len(allowed) < 2:
            return None, f"auto: one CPU allowed ({min(allowed)}), nothing to pin"
        current = _current_cpu()
        cpu = current if current is not None and current in allowed else min(allowed)
    else:
        cpu = int(value)
        if cpu not in allowed:
            raise AffinityError(f"--cpu {cpu}: not among the CPUs this process may use ({sorted(allowed)})")
    return cpu, f"{cpu} (of {len(allowed)} allowed)"


def pin(cpu: int | None) -> None:
    """Keeps every thread of this process, and (by inheritance) each thread it starts later, on
    ``cpu``; None leaves them as they are."""
    if cpu is None:
        return
    for task in _tasks():
        try:
            os.sched_setaffinity(task, {cpu})
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
