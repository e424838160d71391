"""The benchmark harness's own pure parts: the fixture, the ground truth, the scoring and the
rate-limit floor. No emulator needed:

    $(tests/emulator/serve --install-only)/bin/python -m pytest -q tests/bench
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def image(index: int, family: str, days: float, traps: set[str] | None = None, snapshot_of: int | None = None):
    return compare.ImageSpec(index, f"{family}-{index}", family, NOW - timedelta(days=days), traps or set(), snapshot_of)


def test_fixture_is_reproducible_from_its_seed() -> None:
    a = compare.make_fixture(600, 42, NOW)
    b = compare.make_fixture(600, 42, NOW)
    c = compare.make_fixture(600, 43, NOW)
    key = lambda f: [(i.name, i.created, sorted(i.traps), i.snapshot_of) for i in f.images]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_fixture_shape() -> None:
    f = compare.make_fixture(1500, 7, NOW)
    assert len(f.images) == 1500
    assert len(f.families) == 30
    assert len({i.name for i in f.images}) == 1500
    sizes = Counter(i.family for i in f.images)
    assert min(sizes.values()) >= compare.MIN_FAMILY_SIZE
    # No two names where one contains another (amicleaner's name mapping is a substring match).
    assert not [(a, b) for a in f.families for b in f.families if a != b and a in b]
    # No ties in creation time (ours breaks ties by image id, which differs per account).
    assert len({i.created for i in f.images}) == 1500
    # Nothing near the min-age boundary.
    boundary = timedelta(days=compare.MIN_AGE_DAYS)
    assert all(abs((NOW - i.created) - boundary) > compare.AGE_MARGIN for i in f.images)
    assert f.trap_counts() == {t: 5 for t in compare.TRAPS}


def test_traps_sit_on_images_the_policy_alone_would_remove() -> None:
    f = compare.make_fixture(1500, 11, NOW)
    plain = compare.Fixture(f.seed, f.now, f.families, [image_without_traps(i) for i in f.images])
    truth = compare.ground_truth(plain, NOW)
    trapped = [i for i in f.images if i.traps]
    assert len(trapped) == 5 * len(compare.TRAPS)
    assert all(i.index in truth.go for i in trapped)
    for i in f.images:
        if i.snapshot_of is not None:
            newest = max((j for j in f.images if j.family == i.family), key=lambda j: j.created)
            assert i.snapshot_of == newest.index


def image_without_traps(i: compare.ImageSpec) -> compare.ImageSpec:
    return compare.ImageSpec(i.index, i.name, i.family, i.created)


def test_ground_truth_keeps_newest_three_young_and_excluded() -> None:
    images = [
        image(0, "web", 100),
        image(1, "web", 90),
        image(2, "web", 80),
        image(3, "web", 70),  # newest first: 3, 2, 1 are kept
        image(4, "web", 200, {"public"}),
        image(5, "web", 300, {"protected"}),
        image(6, "web", 310, {"shared-snapshot"}, snapshot_of=3),
        image(7, "web", 320),
        image(8, "api", 5),  # young: all of api is kept
        image(9, "api", 10),
        image(10, "api", 20),
        image(11, "api", 25),
        image(12, "api", 400),
    ]
    f = compare.Fixture(1, NOW, ["web", "api"], images)
    t = compare.ground_truth(f, NOW)
    assert t.stay == {3, 2, 1, 4, 5, 8, 9, 10, 11}
    assert t.go == {0, 6, 7, 12}
    assert t.reasons[3] == "newest"
    assert t.reasons[11] == "younger than 30 days"
    assert t.reasons[4] == "public"
    # Image 6 goes, but its snapshot is image 3's, which stays.
    assert 3 in t.stay_snapshots and 6 not in t.go_snapshots
    assert t.go_snapshots == {0, 7, 12}


def test_ground_truth_keeps_the_newest_even_when_old() -> None:
    f = compare.Fixture(1, NOW, ["db"], [image(0, "db", 500), image(1, "db", 600)])
    t = compare.ground_truth(f, NOW)
    assert t.stay == {0, 1}  # both within the newest 3


def test_score_counts_wrong_and_missed() -> None:
    images = [image(i, "web", 100 + i) for i in range(6)]  # 0..2 stay, 3..5 go
    f = compare.Fixture(1, NOW, ["web"], images)
    t = compare.ground_truth(f, NOW)
    built = compare.Built(
        "123456789012",
        {},
        {i: f"ami-{i}" for i in range(6)},
        {i: f"snap-{i}" for i in range(6)},
    )
    # Removed image 0 (must stay) and 3 (must go); left 4, 5 and their snapshots.
    s = compare.score(f, t, built, {"ami-1", "ami-2", "ami-4", "ami-5"}, {"snap-1", "snap-2", "snap-4", "snap-5"})
    assert s.removed == 2
    assert s.wrong_images == [0]
    assert s.wrong_snapshots == [0]
    assert s.missed_images == [4, 5]
    assert s.left_snapshots == [4, 5]


def test_floor_is_the_slowest_bucket_after_its_burst() -> None:
    state = {
        "throttled": {"total": 30, "by_action": {"DeregisterImage": 30}},
        "buckets": {
            "us-east-1": {
                "DeregisterImage": {"action": "DeregisterImage", "capacity": 100, "refill_per_second": 5.0},
                "DescribeImages": {"action": "DescribeImages", "capacity": 100, "refill_per_second": 20.0},
            }
        },
    }
    requests = Counter({"ec2:DeregisterImage": 1130, "ec2:DescribeImages": 50, "sns:Publish": 1})
    seconds, detail = compare.floor(requests, state)
    # 1130 calls, 30 of them throttled: 1100 took a token; (1100 - 100) / 5 = 200 s.
    assert seconds == pytest.approx(200.0)
    assert detail == ["DeregisterImage: (1100 - 100) / 5/s = 200.0 s"]


def test_floor_sums_the_buckets_of_one_action() -> None:
    state = {
        "buckets": {
            "us-east-1": {
                "DescribeSnapshots": {"action": "DescribeSnapshots", "capacity": 100, "refill_per_second": 20.0},
                "DescribeSnapshots:unfiltered": {
                    "action": "DescribeSnapshots",
                    "capacity": 50,
                    "refill_per_second": 10.0,
                },
            }
        }
    }
    seconds, _ = compare.floor(Counter({"ec2:DescribeSnapshots": 450}), state)
    assert seconds == pytest.approx((450 - 150) / 30)


def test_floor_at_a_budget_scales_burst_and_refill() -> None:
    state = {
        "buckets": {
            "us-east-1": {
                "DeregisterImage": {"action": "DeregisterImage", "capacity": 100, "refill_per_second": 5.0},
            }
        }
    }
    # Half the limits: a burst of 50 at 2.5/s: (1050 - 50) / 2.5 = 400 s.
    seconds, _ = compare.floor(Counter({"ec2:DeregisterImage": 1050}), state, share=0.5)
    assert seconds == pytest.approx(400.0)


def test_emulator_cpu_is_read_from_proc_of_the_pid_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMI_BENCH_EMULATOR_PID", raising=False)
    assert compare.emulator_cpu_s() is None
    # This process stands in for the emulator: its CPU time grows with work done.
    monkeypatch.setenv("AMI_BENCH_EMULATOR_PID", str(os.getpid()))
    before = compare.emulator_cpu_s()
    assert before is not None and before > 0
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = compare.emulator_cpu_s()
    assert after is not None and after - before >= 0.2, (before, after)
    monkeypatch.setenv("AMI_BENCH_EMULATOR_PID", "999999999")
    assert compare.emulator_cpu_s() is None


def test_repeat_summary_gives_each_wall_and_the_ratio_as_median_and_range() -> None:
    walls = [(6.0, 3.0), (5.0, 2.0), (4.0, 4.0)]
    assert compare.repeat_summary(1500, walls) == (
        "1500 images, 3 comparisons: aws-amicleaner wall median 5.0 s (4.0-6.0); "
        "ours 3.0 s (2.0-4.0); ratio median 2.00x (1.00x-2.50x)"
    )
    # An even count: the middle two averaged; each ratio is of its own run's walls.
    assert compare.repeat_summary(10, [(3.0, 1.0), (4.0, 1.0)]).endswith("ratio median 3.50x (3.00x-4.00x)")
    # A run of ours that failed before it was timed gives no ratio.
    assert compare.repeat_summary(10, [(3.0, 0.0)]).endswith("ours 0.0 s (0.0-0.0)")


def test_cpu_lists_are_read_in_the_kernels_format() -> None:
    assert compare.cpu_list("0") == {0}
    assert compare.cpu_list("0-2,5\n") == {0, 1, 2, 5}
    assert compare.cpu_list("1,3-4") == {1, 3, 4}


def test_tools_run_off_the_emulators_one_cpu_when_others_remain() -> None:
    # The emulator kept on one CPU: the tools get every other CPU the harness may use.
    assert compare.tool_cpus({1}, {0, 1}) == {0}
    assert compare.tool_cpus({0}, {0, 1, 2, 3}) == {1, 2, 3}
    assert compare.tool_cpus({3}, {0, 1}) == {0, 1}  # not among the harness's: nothing taken away
    # Nothing to keep apart: the emulator free (AMI_EMULATOR_CPU=off) or only its CPU left.
    assert compare.tool_cpus({0, 1}, {0, 1}) is None
    assert compare.tool_cpus({0}, {0}) is None


def test_the_emulators_cpus_are_read_from_proc_of_the_pid_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMI_BENCH_EMULATOR_PID", str(os.getpid()))
    assert compare.emulator_cpus() == os.sched_getaffinity(0)
    monkeypatch.delenv("AMI_BENCH_EMULATOR_PID")
    assert compare.emulator_cpus() is None
