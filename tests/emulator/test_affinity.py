"""The server's CPU setting (``ami_emulator/affinity.py``, ``AMI_EMULATOR_CPU`` / ``--cpu``): each
case starts ``serve`` with one setting, keeps four boto3 clients' requests in flight (so the
server has a handler thread per connection besides the threads it started with), then asks the
kernel which CPUs each thread of the server process (``/proc/<pid>/task``) may run on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from conftest import SERVE, STARTUP_TIMEOUT, _free_port, stop_server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="CPU affinity is read from Linux's /proc"
)

CLIENTS = 4


def _thread_cpus(pid: int) -> dict[int, set[int]]:
    """Thread id -> the CPUs it may run on (the kernel's answer), for every thread of ``pid``."""
    found: dict[int, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(task.name)] = os.sched_getaffinity(int(task.name))
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
    return found


def _serve(setting: str | None) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``serve`` started with ``AMI_EMULATOR_CPU=setting`` (None: unset); (process, base URL, log)."""
    port = _free_port()
    env = dict(os.environ)
    env.pop("AMI_EMULATOR_CPU", None)
    if setting is not None:
        env["AMI_EMULATOR_CPU"] = setting
    log = Path(tempfile.mkstemp(prefix="ami-emulator-affinity-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(SERVE), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    return proc, f"http://127.0.0.1:{port}", log


def _ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{base}/ami-pipeline-emulator/health", timeout=2):  # noqa: S310
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"not ready: {log.read_text()[-2000:]}"
        time.sleep(0.2)


def _busy_server_threads(setting: str | None) -> tuple[dict[int, set[int]], str]:
    """Every server thread's CPUs while four clients' connections are open, and the startup line."""
    proc, base, log = _serve(setting)
    try:
        _ready(proc, base, log)
        clients = [
            boto3.client(
                "ec2",
                endpoint_url=base,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"max_attempts": 1}),
            )
            for _ in range(CLIENTS)
        ]
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda c: [c.describe_regions() for _ in range(10)], clients))
        assert all(len(a) == 10 for a in answers)
        # The clients' connections stay open (keep-alive): their handler threads are alive now.
        threads = _thread_cpus(proc.pid)
        line = next(ln for ln in log.read_text().splitlines() if ln.startswith("ami_emulator: serving on"))
        return threads, line
    finally:
        stop_server(proc)
        log.unlink(missing_ok=True)


def test_auto_keeps_every_thread_on_the_cpu_it_started_on() -> None:
    allowed = os.sched_getaffinity(0)
    threads, line = _busy_server_threads(None)  # auto is the default
    # The threads it started with, plus one per client connection.
    assert len(threads) >= CLIENTS + 1, threads
    match = re.search(r"cpu: (\d+) \(of (\d+) allowed\)", line)
    if len(allowed) >= 2:
        assert match, line
        cpu, count = int(match.group(1)), int(match.group(2))
        assert cpu in allowed and count == len(allowed)
        assert all(cpus == {cpu} for cpus in threads.values()), threads
    else:
        # One CPU: nothing to pin, every thread keeps the one it was given.
        assert "one CPU allowed" in line, line
        assert all(cpus == allowed for cpus in threads.values()), threads


def test_off_leaves_every_thread_to_the_kernel() -> None:
    allowed = os.sched_getaffinity(0)
    threads, line = _busy_server_threads("off")
    assert "cpu: off," in line, line
    assert len(threads) >= CLIENTS + 1, threads
    assert all(cpus == allowed for cpus in threads.values()), threads


def test_a_cpu_number_keeps_every_thread_on_that_cpu() -> None:
    cpu = max(os.sched_getaffinity(0))
    threads, line = _busy_server_threads(str(cpu))
    assert f"cpu: {cpu} (of " in line, line
    assert len(threads) >= CLIENTS + 1, threads
    assert all(cpus == {cpu} for cpus in threads.values()), threads


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("bogus", "AMI_EMULATOR_CPU / --cpu must be auto, off or a CPU number, not 'bogus'"),
        ("-1", "must be auto, off or a CPU number, not '-1'"),
        ("4096", "--cpu 4096: not among the CPUs this process may use"),
    ],
)
def test_a_setting_that_cannot_be_applied_stops_the_server_with_the_reason(setting: str, message: str) -> None:
    proc, _base, log = _serve(setting)
    try:
        code = proc.wait(timeout=120)
        text = log.read_text()
        assert code == 2, text  # argparse's usage error
        assert message in text, text
        assert "serving on" not in text
    finally:
        stop_server(proc)
        log.unlink(missing_ok=True)


def test_auto_reads_the_cpu_the_thread_runs_on() -> None:
    """``auto``'s choice comes from field 39 of ``/proc/thread-self/stat``: a thread held on each
    allowed CPU in turn must read back that CPU (a wrong field would read another number, and
    ``choose`` would fall back to the lowest CPU without a word)."""
    from ami_emulator import affinity

    seen: dict[int, int | None] = {}

    def on(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        time.sleep(0.01)  # let the kernel move it there
        seen[cpu] = affinity._current_cpu()

    for cpu in sorted(os.sched_getaffinity(0)):
        worker = threading.Thread(target=on, args=(cpu,))
        worker.start()
        worker.join()
    assert seen and all(read == cpu for cpu, read in seen.items()), seen
