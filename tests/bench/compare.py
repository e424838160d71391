"""Side-by-side cleanup benchmark: aws-amicleaner 0.2.2 and our cleanup on one randomized fixture.

Run by ``scripts/bench-cleanup compare`` (which starts the emulator, builds ``bench_cleanup`` and
prepares aws-amicleaner's virtualenv), with the emulator venv's Python (boto3 1.44.5)::

    compare.py --bench-bin PATH --amicleaner PATH [--seed S] [--rate-limited] [--repeat K] [N ...]

For each size N (default 1500 and 10000):

1. One fixture, generated from a seed (printed): N managed images in ~N/50 families with
   backdated creation dates, each image with its own snapshot, and traps (in use by a running
   instance, referenced by a launch template, public, shared with an account, shared with an OU,
   protected by ``ami-pipeline:protect=true``, a stale image whose snapshot a kept image uses).
   The same fixture (names, dates, tags, traps) is built in two fresh accounts A and B.
2. The ground truth: which images and snapshots must stay and which images must go, computed
   here from the fixture alone with our documented policy (``shared/src/plan/retention.rs``'s
   module doc) — not by either tool.
3. aws-amicleaner in A (``--mapping-key tags --mapping-values ami-pipeline:family
   --keep-previous 3 --ami-min-days 30 --full-report -f``) and our cleanup in B
   (``bench_cleanup run B real``: the handler under its template role, ``GRACE_DAYS=0``,
   ``MAX_DELETIONS=10000``), ours as many runs as it needs (a run that deprecates, is capped or
   defers work is followed by another, planned 17 minutes later on the handler's clock: a
   deprecation takes effect 16 minutes after the run that made it).
4. For each tool: wall time, AWS calls by operation (the emulator's request counter, reset before
   each run) and the emulator's CPU per call of each, peak RSS of the tool's process (GNU time's maximum resident set size), wrong deletions and missed removals from the ground truth and the final
   DescribeImages / DescribeSnapshots of each account, and the ratio of the walls.

``--rate-limited`` switches the emulator's EC2 throttling on for account B (the default table of
the EC2 API throttling page, ``ami_emulator/rate_limits.py``) and prints our time against the
floor those limits impose on the calls made, and the throttled count.

Where aws-amicleaner's options cannot say our policy, the mismatch is printed with the results
(see ``AMICLEANER_MISMATCHES``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import boto3
from botocore.config import Config

REGION = "us-east-1"
MANAGED = "ami-pipeline:managed"
FAMILY = "ami-pipeline:family"
PROTECT = "ami-pipeline:protect"

# Our policy, as the bench's `run` passes it (KEEP_NEWEST, MIN_AGE_DAYS, GRACE_DAYS=0).
KEEP_NEWEST = 3
MIN_AGE_DAYS = 30

# No image is created within this distance of the min-age boundary, so the few minutes between
# building the fixture, the runs and the ground truth cannot move an image across it.
AGE_MARGIN = timedelta(hours=6)
# Oldest image, in days.
MAX_AGE_DAYS = 400
# Average images per family (30 families for 1,500 images).
IMAGES_PER_FAMILY = 50
# Images per family at least (so each family has stale images).
MIN_FAMILY_SIZE = 5

# Minutes a later run of ours is planned ahead of now: our deprecations take effect 16 minutes
# after the run (functions/cleanup/src/execute.rs), so a run 17 minutes later may deregister.
RUN_SPACING_MINUTES = 17
# Most runs of ours before the harness gives up (one-run removal needs 1, staged removal 2).
MAX_RUNS = 4

TRAPS = (
    "in-use",  # a running instance uses it
    "launch-template",  # a launch template's only version ($Default, $Latest) references it
    "public",  # launch permission group all
    "shared-account",  # launch permission for an account
    "shared-ou",  # launch permission for an organizational unit
    "protected",  # tag ami-pipeline:protect=true
    "shared-snapshot",  # a stale image registered with the snapshot of its family's newest
)
# Traps that exclude an image from removal (our exclusions); `shared-snapshot` does not: that
# image must go, the snapshot must stay.
EXCLUDING_TRAPS = frozenset(TRAPS) - {"shared-snapshot"}
SHARE_ACCOUNT = "210987654321"
SHARE_OU = "arn:aws:organizations::111122223333:ou/o-abcdefghij/ou-ab12-cdefgh34"

AMICLEANER_MISMATCHES = (
    "amicleaner's --ami-min-days drops the young images first and then keeps --keep-previous of "
    "the OLDER ones (core.reduce_candidates): a family with young images keeps up to 3 more "
    "images than ours (missed removals, not wrong deletions)",
    "amicleaner excludes images in use by instances BEFORE counting --keep-previous "
    "(cli.fetch_candidates), so a family whose in-use image is among its newest 3 keeps one "
    "more image than ours",
    "amicleaner never checks launch templates, launch permissions (public, accounts, OUs) or a "
    "protection tag: those traps are its wrong deletions",
    "amicleaner deletes every snapshot of a deregistered image and reports the failures; a "
    "snapshot another image uses is refused by EC2 (InvalidSnapshot.InUse), so it survives",
)


# ---------------------------------------------------------------------------------------------
# The fixture (pure, from the seed)
# ---------------------------------------------------------------------------------------------

WORDS = (
    "web", "api", "batch", "worker", "cache", "proxy", "edge", "etl", "builder", "base",
    "gateway", "search", "queue", "auth", "billing", "report", "stream", "mail", "ingest", "render",
)  # fmt: skip


@dataclasses.dataclass
class ImageSpec:
    """One image of the fixture, independent of the account it is built in."""

    index: int
    name: str
    family: str
    created: datetime
    traps: set[str] = dataclasses.field(default_factory=set)
    # Index of the image whose snapshot this one is registered with (None: its own snapshot).
    snapshot_of: int | None = None

    def created_text(self) -> str:
        """EC2's CreationDate form, with milliseconds."""
        return self.created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.created.microsecond // 1000:03d}Z"


@dataclasses.dataclass
class Fixture:
    """The images (ordered by index), the families and when the fixture was generated."""

    seed: int
    now: datetime
    families: list[str]
    images: list[ImageSpec]

    def trap_counts(self) -> dict[str, int]:
        counts = Counter(t for img in self.images for t in img.traps)
        return {t: counts.get(t, 0) for t in TRAPS}


def family_names(rng: random.Random, count: int) -> list[str]:
    """``<word>-<nnn>``, unique, none a substring of another (amicleaner's name mapping matches
    substrings; tag mapping compares whole values)."""
    names = [f"{rng.choice(WORDS)}-{i:03d}" for i in range(count)]
    for a in names:
        for b in names:
            if a != b and a in b:
                raise AssertionError(f"family names collide: {a!r} in {b!r}")
    return names


def _age(rng: random.Random) -> timedelta:
    """A random age up to MAX_AGE_DAYS, never within AGE_MARGIN of MIN_AGE_DAYS."""
    while True:
        age = timedelta(seconds=rng.uniform(0, MAX_AGE_DAYS * 86400))
        if abs(age - timedelta(days=MIN_AGE_DAYS)) > AGE_MARGIN:
            return age


def make_fixture(n: int, seed: int, now: datetime) -> Fixture:
    """N images in max(1, N/50) families, dates and traps drawn from ``seed``."""
    rng = random.Random(seed)
    f = max(1, round(n / IMAGES_PER_FAMILY))
    families = family_names(rng, f)
    weights = [rng.uniform(0.3, 1.7) for _ in families]
    members = [families[i % f] for i in range(min(n, MIN_FAMILY_SIZE * f))]
    members += rng.choices(families, weights=weights, k=n - len(members))
    rng.shuffle(members)
    images: list[ImageSpec] = []
    seen: set[datetime] = set()
    for i, fam in enumerate(members):
        while True:
            created = (now - _age(rng)).replace(microsecond=rng.randrange(1000) * 1000)
            if created not in seen:  # no ties: ours breaks them by image id, which differs per account
                seen.add(created)
                break
        name = f"{fam}-{created:%Y%m%d-%H%M%S}-{i:05d}"
        images.append(ImageSpec(i, name, fam, created))
    fixture = Fixture(seed, now, families, images)
    _place_traps(fixture, rng)
    return fixture


def _by_family_newest_first(images: Iterable[ImageSpec]) -> dict[str, list[ImageSpec]]:
    groups: dict[str, list[ImageSpec]] = defaultdict(list)
    for img in images:
        groups[img.family].append(img)
    for members in groups.values():
        members.sort(key=lambda i: i.created, reverse=True)
    return groups


def _place_traps(fixture: Fixture, rng: random.Random) -> None:
    """Each trap on its own images that the policy alone would remove (stale: beyond the newest
    KEEP_NEWEST of its family and older than MIN_AGE_DAYS), so each one matters."""
    per_kind = max(1, round(len(fixture.images) / 300))
    groups = _by_family_newest_first(fixture.images)
    stale = [
        img
        for members in groups.values()
        for rank, img in enumerate(members)
        if rank >= max(KEEP_NEWEST, 1) and fixture.now - img.created >= timedelta(days=MIN_AGE_DAYS)
    ]
    rng.shuffle(stale)
    for kind in TRAPS:
        for _ in range(per_kind):
            if not stale:
                return
            img = stale.pop()
            img.traps.add(kind)
            if kind == "shared-snapshot":
                img.snapshot_of = groups[img.family][0].index


# ---------------------------------------------------------------------------------------------
# Ground truth (our documented policy, implemented here independently of the planner)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Truth:
    """What must stay and what must go, by fixture index (images) and by the index of the image
    that owns the snapshot (snapshots)."""

    stay: set[int]
    go: set[int]
    stay_snapshots: set[int]
    go_snapshots: set[int]
    reasons: dict[int, str]


def ground_truth(fixture: Fixture, now: datetime) -> Truth:
    """shared/src/plan/retention.rs, module doc: per family, the newest KEEP_NEWEST available
    images are kept (the newest always), anything younger than MIN_AGE_DAYS is kept; a stale
    image is excluded (kept) when in use by an instance, referenced by a launch template,
    public, shared, or protected by tag; a deregistered image's snapshot is deleted only when no
    other image uses it."""
    stay: set[int] = set()
    go: set[int] = set()
    reasons: dict[int, str] = {}
    for members in _by_family_newest_first(fixture.images).values():
        for rank, img in enumerate(members):
            if rank < max(KEEP_NEWEST, 1):
                stay.add(img.index)
                reasons[img.index] = "newest" if rank == 0 else f"among the newest {KEEP_NEWEST}"
            elif now - img.created < timedelta(days=MIN_AGE_DAYS):
                stay.add(img.index)
                reasons[img.index] = f"younger than {MIN_AGE_DAYS} days"
            elif img.traps & EXCLUDING_TRAPS:
                stay.add(img.index)
                reasons[img.index] = ",".join(sorted(img.traps & EXCLUDING_TRAPS))
            else:
                go.add(img.index)
                reasons[img.index] = "stale"
    owner = {img.index: img.index if img.snapshot_of is None else img.snapshot_of for img in fixture.images}
    stay_snapshots = {owner[i] for i in stay}
    go_snapshots = {owner[i] for i in go} - stay_snapshots
    return Truth(stay, go, stay_snapshots, go_snapshots, reasons)


# ---------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------


def endpoint() -> str:
    url = os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        sys.exit("compare.py: AWS_ENDPOINT_URL must name the emulator (scripts/bench-cleanup compare sets it)")
    return url.rstrip("/")


def control(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One of the emulator's control endpoints (tests/emulator/README.md), JSON in and out."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(endpoint() + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read() or b"null")


def new_account() -> str:
    """A fresh 12-digit account id (not from the fixture's seed: a second run on the same
    emulator must not reuse an account)."""
    return str(secrets.randbelow(9 * 10**11) + 10**11)


def credentials(account: str) -> dict[str, str]:
    """STS AssumeRole into ``account`` (tests/emulator/README.md, Accounts): a role without
    policies, unrestricted — the set-up's identity, and amicleaner's."""
    sts = boto3.client(
        "sts",
        region_name=REGION,
        endpoint_url=endpoint(),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    c = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/bench", RoleSessionName="bench")["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
        "AWS_SESSION_TOKEN": c["SessionToken"],
    }


def ec2_client(creds: dict[str, str]) -> Any:
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=endpoint(),
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=creds["AWS_SESSION_TOKEN"],
        config=Config(retries={"mode": "standard", "max_attempts": 10}, max_pool_connections=16),
    )


@dataclasses.dataclass
class Built:
    """One account's copy of the fixture: fixture index → image id / snapshot id."""

    account: str
    creds: dict[str, str]
    image_ids: dict[int, str]
    snapshot_ids: dict[int, str]  # only images with their own snapshot


def _tags(pairs: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def build(fixture: Fixture, account: str, workers: int = 8) -> Built:
    """Creates the fixture in ``account``: snapshots (CreateSnapshot of one 1 GiB volume, tagged at
    creation), images (RegisterImage with that snapshot, tagged at creation), the creation dates
    (the emulator's bulk image-creation-date endpoint), then the traps."""
    creds = credentials(account)
    ec2 = ec2_client(creds)
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]

    def snapshot(img: ImageSpec) -> tuple[int, str]:
        tags = {MANAGED: "true", FAMILY: img.family}
        out = ec2.create_snapshot(
            VolumeId=volume, TagSpecifications=[{"ResourceType": "snapshot", "Tags": _tags(tags)}]
        )
        return img.index, out["SnapshotId"]

    def register(img: ImageSpec, snapshot_id: str) -> tuple[int, str]:
        tags = {MANAGED: "true", FAMILY: img.family}
        if "protected" in img.traps:
            tags[PROTECT] = "true"
        out = ec2.register_image(
            Name=img.name,
            Architecture="x86_64",
            VirtualizationType="hvm",
            RootDeviceName="/dev/xvda",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot_id}}],
            TagSpecifications=[{"ResourceType": "image", "Tags": _tags(tags)}],
        )
        return img.index, out["ImageId"]

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        own = [img for img in fixture.images if img.snapshot_of is None]
        snapshot_ids = dict(pool.map(snapshot, own))
        image_ids = dict(
            pool.map(
                lambda img: register(img, snapshot_ids[img.snapshot_of if img.snapshot_of is not None else img.index]),
                fixture.images,
            )
        )
    control(
        "POST",
        "/ami-pipeline-emulator/image-creation-date",
        {
            "account_id": account,
            "region": REGION,
            "images": [{"image_id": image_ids[i.index], "creation_date": i.created_text()} for i in fixture.images],
        },
    )
    # The fixture's public images are past EC2's default quota of 5 public AMIs per Region
    # (Service Quotas L-0E3CBAB9), as an account with many public images has had it raised.
    control("POST", "/ami-pipeline-emulator/config", {"account_id": account, "public_image_quota": 1_000_000})
    for img in fixture.images:
        image = image_ids[img.index]
        if "in-use" in img.traps:
            ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1)
        if "launch-template" in img.traps:
            ec2.create_launch_template(LaunchTemplateName=f"bench-{img.index}", LaunchTemplateData={"ImageId": image})
        for trap, permission in (
            ("public", {"Group": "all"}),
            ("shared-account", {"UserId": SHARE_ACCOUNT}),
            ("shared-ou", {"OrganizationalUnitArn": SHARE_OU}),
        ):
            if trap in img.traps:
                ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [permission]})
    return Built(account, creds, image_ids, snapshot_ids)


def final_state(built: Built) -> tuple[set[str], set[str]]:
    """The account's image ids (DescribeImages Owners=self) and snapshot ids (DescribeSnapshots
    OwnerIds=self), every page."""
    ec2 = ec2_client(built.creds)
    images: set[str] = set()
    for page in ec2.get_paginator("describe_images").paginate(Owners=["self"], PaginationConfig={"PageSize": 1000}):
        images.update(i["ImageId"] for i in page["Images"])
    snapshots: set[str] = set()
    for page in ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], PaginationConfig={"PageSize": 1000}):
        snapshots.update(s["SnapshotId"] for s in page["Snapshots"])
    return images, snapshots


# ---------------------------------------------------------------------------------------------
# Running the tools
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ToolRun:
    """One tool's figures on one fixture."""

    tool: str
    runs: int = 0
    wall_s: float = 0.0  # the tool's time (ours: the invocations; amicleaner: its process)
    process_wall_s: float = 0.0  # every process of the tool, start to exit
    peak_rss_mib: float = 0.0
    requests: Counter = dataclasses.field(default_factory=Counter)
    notes: list[str] = dataclasses.field(default_factory=list)
    failed: str | None = None
    throttled: int = 0
    floor_s: float = 0.0
    budget_floor_s: float = 0.0  # the floor at the share of the limits our run was given
    floor_detail: list[str] = dataclasses.field(default_factory=list)
    emulator_cpu_s: float | None = None  # the emulator's CPU time while the tool's processes ran
    # The emulator's CPU time serving the tool's requests, by "service:action" (its request
    # counter: each request's server thread CPU, from its request line to its answer).
    cpu_by_op: Counter = dataclasses.field(default_factory=Counter)


def emulator_cpu_s() -> float | None:
    """The emulator process's CPU time so far (user + system, /proc/<pid>/stat), when
    ``scripts/bench-cleanup`` gave its pid (``AMI_BENCH_EMULATOR_PID``); None otherwise. A tool
    whose run keeps the emulator's CPU busy for its whole wall is bound by the emulator's serving,
    not by its own work."""
    pid = os.environ.get("AMI_BENCH_EMULATOR_PID")
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 (utime, stime) of proc(5), counted after the ")" that ends field 2.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_list(text: str) -> set[int]:
    """The kernel's CPU list format: ``0-2,5`` -> {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def tool_cpus(emulator: set[int], harness: set[int]) -> set[int] | None:
    """The CPUs the tools run on: the harness's but the emulator's, when the emulator's threads
    are kept on one CPU (``AMI_EMULATOR_CPU``) and the harness has others; None (the tools run
    where the harness may) otherwise.

    Without this, the kernel may wake a tool's process on the emulator's CPU: then the tool's
    Python (or Rust) and the emulator's take turns on one CPU's caches: in five 1,500-image
    comparisons the emulator spent 1.69-1.88 s of CPU on aws-amicleaner's calls, against
    1.56-1.68 s with its threads free and 1.45-1.62 s with the tools kept off its CPU."""
    if len(emulator) != 1:
        return None
    rest = harness - emulator
    return rest or None


def emulator_cpus() -> set[int] | None:
    """The CPUs the emulator's main thread may run on (its handler threads inherit them), when
    ``scripts/bench-cleanup`` gave its pid; None otherwise."""
    pid = os.environ.get("AMI_BENCH_EMULATOR_PID")
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            match = re.search(r"^Cpus_allowed_list:\s*(\S+)$", f.read(), re.M)
    except OSError:
        return None
    return cpu_list(match.group(1)) if match else None


def keep_tools_off_the_emulators_cpu() -> str:
    """Keeps this harness, and so every tool it starts, off the emulator's CPU where
    ``tool_cpus`` says so; returns the line that says where each runs."""
    emulator = emulator_cpus()
    if emulator is None or not hasattr(os, "sched_setaffinity"):
        return "CPUs: not known (no emulator pid or no sched_setaffinity); the kernel places the tools and the emulator"
    harness = os.sched_getaffinity(0)
    tools = tool_cpus(emulator, harness)
    if tools is None:
        return f"CPUs: the emulator's threads on {sorted(emulator)}, the tools on {sorted(harness)} (shared)"
    os.sched_setaffinity(0, tools)
    return f"CPUs: the emulator's threads on {sorted(emulator)}, both tools on {sorted(tools)}"


def _add_cpu(result: ToolRun, before: float | None) -> None:
    after = emulator_cpu_s()
    if before is not None and after is not None:
        result.emulator_cpu_s = (result.emulator_cpu_s or 0.0) + after - before


GNU_TIME = "/usr/bin/time"


def _poll_hwm(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Fallback without GNU time: the child's VmHWM (kB), read every 20 ms until it exits."""
    while not stop.wait(0.02):
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
        except (OSError, ValueError):
            return


def spawn(argv: list[str], env: dict[str, str], log_path: str) -> tuple[int, float, float]:
    """Runs ``argv`` with stdout and stderr to ``log_path``; returns (exit code, wall seconds,
    peak RSS MiB).

    The RSS is GNU time's "Maximum resident set size" (``%M``, from ``wait4`` of a child that
    ``time`` forked, so it is the tool's alone). Not ``wait4`` of our own child: Linux keeps a
    child's high-water mark across ``exec``, and a child forked (or vforked) from this Python
    process starts with this process's RSS. Without /usr/bin/time the child's ``VmHWM`` is
    polled instead (may miss a peak in its last 20 ms)."""
    with open(log_path, "ab") as log, tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        timed = os.access(GNU_TIME, os.X_OK)
        full = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv] if timed else argv
        peak = [0]
        stop = threading.Event()
        start = time.monotonic()
        proc = subprocess.Popen(full, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        poller = None if timed else threading.Thread(target=_poll_hwm, args=(proc.pid, stop, peak), daemon=True)
        if poller:
            poller.start()
        code = proc.wait()
        wall = time.monotonic() - start
        stop.set()
        if poller:
            poller.join()
        if timed:
            text = rss_file.read().strip().splitlines()
            # GNU time adds "Command exited with non-zero status N" before the figure.
            peak[0] = int(text[-1]) if text and text[-1].isdigit() else 0
    return code, wall, peak[0] / 1024.0


def _per_call(tool: ToolRun, op: str) -> str:
    n = tool.requests.get(op, 0)
    return f"{1000 * tool.cpu_by_op.get(op, 0.0) / n:.3f}" if n and op in tool.cpu_by_op else "-"


def requests_of(account: str) -> tuple[Counter, Counter]:
    """The account's request counts and the emulator's CPU seconds for them, by operation."""
    counts = control("GET", f"/ami-pipeline-emulator/requests?account_id={account}")
    return Counter(counts["requests"]), Counter(counts.get("cpu_seconds") or {})


def run_amicleaner(amicleaner: str, built: Built, workdir: str) -> ToolRun:
    """aws-amicleaner 0.2.2 in ``built``'s account, forced, keep-N by the family tag."""
    result = ToolRun("aws-amicleaner 0.2.2", runs=1)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **built.creds,
        "AWS_ENDPOINT_URL": endpoint(),
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "TZ": "UTC",  # its age check compares CreationDate (UTC) with datetime.now() (local)
    }
    argv = [
        amicleaner,
        "--mapping-key", "tags",
        "--mapping-values", FAMILY,
        "--keep-previous", str(KEEP_NEWEST),
        "--ami-min-days", str(MIN_AGE_DAYS),
        "--full-report",
        "-f",
    ]  # fmt: skip
    log = os.path.join(workdir, "amicleaner.log")
    control("DELETE", f"/ami-pipeline-emulator/requests?account_id={built.account}")
    cpu = emulator_cpu_s()
    code, wall, rss = spawn(argv, env, log)
    _add_cpu(result, cpu)
    result.requests, result.cpu_by_op = requests_of(built.account)
    result.wall_s = result.process_wall_s = wall
    result.peak_rss_mib = rss
    if code != 0:
        result.failed = f"exit code {code} (log: {log})"
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    failed = re.search(r"(\d+) failed snapshots", text)
    if failed:
        result.notes.append(f"reported {failed.group(1)} failed snapshot deletions")
    return result


def floor(requests: Counter, rate_state: dict[str, Any], share: float = 1.0) -> tuple[float, list[str]]:
    """The least time the account's EC2 buckets allow for the calls that took a token:
    per bucket, n calls after a full bucket of b at r tokens/s need (n - b) / r seconds; the
    buckets refill independently, so the run's floor is the largest of them. An action that
    used two buckets (filtered and unfiltered DescribeSnapshots) is taken as one bucket of their
    summed sizes (a lower bound). ``share`` < 1: the floor for a client that allows itself that
    share of each bucket (b and r scaled; a pacing budget)."""
    throttled = rate_state.get("throttled", {}).get("by_action", {})
    per_action: dict[str, tuple[float, float]] = {}
    for buckets in rate_state.get("buckets", {}).values():
        for b in buckets.values():
            cap, rate = per_action.get(b["action"], (0.0, 0.0))
            per_action[b["action"]] = (cap + b["capacity"] * share, rate + b["refill_per_second"] * share)
    floors = []
    for action, (cap, rate) in per_action.items():
        n = requests.get(f"ec2:{action}", 0) - throttled.get(action, 0)
        if n <= cap:
            continue
        seconds = (n - cap) / rate if rate > 0 else float("inf")
        floors.append((seconds, f"{action}: ({n} - {cap:g}) / {rate:g}/s = {seconds:.1f} s"))
    floors.sort(reverse=True)
    return (floors[0][0] if floors else 0.0), [text for _, text in floors[:3]]


def run_ours(
    bench_bin: str, built: Built, workdir: str, rate_limited: bool, ours_env: dict[str, str]
) -> ToolRun:
    """Our cleanup in ``built``'s account, run after run until one leaves nothing for the next.
    ``ours_env``: settings of the function (any variable it reads) over the bench's policy."""
    result = ToolRun(f"ours ({'debug' if '/debug/' in bench_bin else 'release'} build)")
    log = os.path.join(workdir, "ours.log")
    env = {**os.environ, **ours_env, "AWS_ENDPOINT_URL": endpoint()}
    for k in range(MAX_RUNS):
        if rate_limited:
            # Each POST refills the account's buckets: every run starts with full buckets, so the
            # runs' floors add up.
            control("POST", "/ami-pipeline-emulator/rate-limits", {"account_id": built.account, "enabled": True})
        argv = [bench_bin, "run", built.account, "real", "--clock-ahead-minutes", str(k * RUN_SPACING_MINUTES)]
        before = os.path.getsize(log) if os.path.exists(log) else 0
        cpu = emulator_cpu_s()
        code, wall, rss = spawn(argv, env, log)
        _add_cpu(result, cpu)
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(before)
            out = f.read()
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
        result.runs += 1
        result.process_wall_s += wall
        result.peak_rss_mib = max(result.peak_rss_mib, rss)
        if line is None:
            result.failed = f"run {k + 1}: exit code {code}, no BENCH_JSON line (log: {log})"
            break
        figures = json.loads(line[len("BENCH_JSON ") :])
        result.wall_s += figures["wall_s"]
        requests = Counter(figures["requests"] or {})
        result.requests += requests
        # The bench cleared the account's counter as the invocation began: this run's CPU.
        result.cpu_by_op += requests_of(built.account)[1]
        decisions = figures["decisions"]
        steps = figures["steps"]
        settings = figures.get("env") or {}
        if k == 0:
            result.notes.append(f"settings: {settings}")
            ignored = sorted(set(ours_env) - set(settings))
            if ignored:
                result.notes.append(f"not read by this build of cleanup (not in its Config::vars): {', '.join(ignored)}")
        # The budget the function was given, as it reports its settings (not as asked: a build
        # that does not read API_BUDGET_PERCENT gets no budget floor).
        budget = settings.get("API_BUDGET_PERCENT")
        share = float(budget) / 100.0 if budget and budget.isdigit() and int(budget) > 0 else None
        result.notes.append(
            f"run {k + 1}: {figures['wall_s']:.1f} s, decisions {dict(decisions)}, steps {dict(steps)}"
            + (f", capped {figures['capped']}" if figures.get("capped") else "")
        )
        if rate_limited:
            state = control("GET", f"/ami-pipeline-emulator/rate-limits?account_id={built.account}")
            result.throttled += state.get("throttled", {}).get("total", 0)
            seconds, detail = floor(requests, state)
            result.floor_s += seconds
            result.floor_detail.append(f"run {k + 1}: floor {seconds:.1f} s ({'; '.join(detail) or 'within the bursts'})")
            if share:
                seconds, detail = floor(requests, state, share)
                result.budget_floor_s += seconds
                result.floor_detail.append(
                    f"run {k + 1}: floor at API_BUDGET_PERCENT={budget} {seconds:.1f} s "
                    f"({'; '.join(detail) or 'within the bursts'})"
                )
            throttled = state.get("throttled", {}).get("by_action", {})
            if throttled:
                result.floor_detail.append(f"run {k + 1}: throttled {dict(sorted(throttled.items()))}")
            control("DELETE", f"/ami-pipeline-emulator/rate-limits?account_id={built.account}")
        if figures.get("error") or code != 0:
            result.failed = f"run {k + 1}: {figures.get('error') or f'exit code {code}'} (log: {log})"
            break
        more = (
            decisions.get("deprecate", 0) > 0
            or (figures.get("capped") or 0) > 0
            or any(key.endswith(" deferred") for key in steps)
        )
        if not more:
            break
    else:
        result.failed = f"still work left after {MAX_RUNS} runs (log: {log})"
    return result


# ---------------------------------------------------------------------------------------------
# Scoring and printing
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Score:
    """A tool's outcome against the ground truth."""

    removed: int
    wrong_images: list[int]
    wrong_snapshots: list[int]
    missed_images: list[int]
    left_snapshots: list[int]


def score(fixture: Fixture, truth: Truth, built: Built, images: set[str], snapshots: set[str]) -> Score:
    present = {i for i, ami in built.image_ids.items() if ami in images}
    snaps = {i for i, snap in built.snapshot_ids.items() if snap in snapshots}
    return Score(
        removed=len(fixture.images) - len(present),
        wrong_images=sorted(truth.stay - present),
        wrong_snapshots=sorted(truth.stay_snapshots - snaps),
        missed_images=sorted(truth.go & present),
        left_snapshots=sorted(truth.go_snapshots & snaps),
    )


def _why(fixture: Fixture, truth: Truth, indices: list[int]) -> str:
    if not indices:
        return ""
    counts = Counter(truth.reasons[i] for i in indices)
    return " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items())) + ")"


def print_results(fixture: Fixture, truth: Truth, tools: list[tuple[ToolRun, Score]], rate_limited: bool) -> None:
    width = 44
    cols = [t.tool for t, _ in tools]

    def row(label: str, values: Iterable[Any]) -> None:
        print(f"  {label:<{width}}" + "".join(f"{str(v):>26}" for v in values))

    print()
    row("", cols)
    row("runs", [t.runs for t, _ in tools])
    row("wall (s)", [f"{t.wall_s:.1f}" for t, _ in tools])
    row("  process wall, start to exit (s)", [f"{t.process_wall_s:.1f}" for t, _ in tools])
    row("peak RSS (MiB)", [f"{t.peak_rss_mib:.1f}" for t, _ in tools])
    if all(t.emulator_cpu_s is not None for t, _ in tools):
        row("emulator CPU while the tool ran (s)", [f"{t.emulator_cpu_s:.1f}" for t, _ in tools])
        row(
            "  emulator busy (its CPU / the tool's process wall)",
            [f"{100 * (t.emulator_cpu_s or 0) / t.process_wall_s:.0f} %" if t.process_wall_s else "-" for t, _ in tools],
        )
    row("AWS calls", [sum(t.requests.values()) for t, _ in tools])
    ops = sorted(set().union(*(t.requests.keys() for t, _ in tools)))
    for op in ops:
        row(f"  {op}", [t.requests.get(op, 0) for t, _ in tools])
    if any(t.cpu_by_op for t, _ in tools):
        row("emulator CPU serving the calls (s)", [f"{sum(t.cpu_by_op.values()):.2f}" for t, _ in tools])
        row("  per call, by operation (ms):", ["" for _ in tools])
        for op in ops:
            row(f"    {op}", [_per_call(t, op) for t, _ in tools])
    row("images removed", [s.removed for _, s in tools])
    row("wrong deletions: images", [len(s.wrong_images) for _, s in tools])
    row("wrong deletions: snapshots", [len(s.wrong_snapshots) for _, s in tools])
    row("missed removals: stale images left", [len(s.missed_images) for _, s in tools])
    row("stale snapshots left", [len(s.left_snapshots) for _, s in tools])
    if rate_limited:
        row("throttled (RequestLimitExceeded)", ["-" if "amicleaner" in t.tool else t.throttled for t, _ in tools])
        row("floor of the rate limits (s)", ["-" if "amicleaner" in t.tool else f"{t.floor_s:.1f}" for t, _ in tools])
    print()
    for t, s in tools:
        print(f"  {t.tool}:")
        if t.failed:
            print(f"    FAILED: {t.failed}")
        for note in t.notes:
            print(f"    {note}")
        if s.wrong_images:
            print(f"    wrong image deletions{_why(fixture, truth, s.wrong_images)}")
        if s.wrong_snapshots:
            print(f"    wrong snapshot deletions{_why(fixture, truth, s.wrong_snapshots)}")
        if s.missed_images:
            print(f"    stale images left{_why(fixture, truth, s.missed_images)}")
        if rate_limited and "amicleaner" not in t.tool:
            for d in t.floor_detail:
                print(f"    {d}")
            if t.floor_s > 0:
                print(f"    time / floor: {t.wall_s / t.floor_s:.2f} (target: within 10 %, i.e. <= 1.10)")
            if t.budget_floor_s > 0:
                print(
                    f"    time / floor at the budget given: {t.wall_s / t.budget_floor_s:.2f}"
                    f" (proceeds at {100 * t.budget_floor_s / t.wall_s:.0f} % of its budget; target >= 90 %)"
                )
    (amic, _), (ours, _) = tools
    if ours.wall_s > 0 and amic.wall_s > 0:
        print(
            f"\n  ratio amicleaner wall / ours wall: {amic.wall_s / ours.wall_s:.2f}x"
            f"   (process walls: {amic.process_wall_s / ours.process_wall_s:.2f}x)"
            + ("   [ours throttled: not comparable]" if rate_limited else "")
        )


def compare(
    n: int,
    seed: int,
    bench_bin: str,
    amicleaner: str,
    rate_limited: bool,
    workdir: str,
    ours_env: dict[str, str],
) -> tuple[float, float]:
    """One comparison (the module docstring's steps); returns the walls (amicleaner, ours)."""
    now = datetime.now(timezone.utc)
    fixture = make_fixture(n, seed, now)
    truth = ground_truth(fixture, now)
    shared = sum(1 for i in fixture.images if i.snapshot_of is not None)
    print(f"\n=== {n} images: seed {seed} ===")
    print(
        f"fixture: {n} images in {len(fixture.families)} families ({', '.join(fixture.families[:4])}, ...), "
        f"{n - shared} snapshots, created over {MAX_AGE_DAYS} days; traps "
        + ", ".join(f"{k} {v}" for k, v in fixture.trap_counts().items())
    )
    print(
        f"ground truth (keep newest {KEEP_NEWEST} per family, keep younger than {MIN_AGE_DAYS} days, "
        f"exclusions): {len(truth.stay)} images must stay{_why(fixture, truth, sorted(truth.stay))}, "
        f"{len(truth.go)} must go; {len(truth.stay_snapshots)} snapshots must stay, "
        f"{len(truth.go_snapshots)} should go"
    )
    t = time.monotonic()
    a, b = new_account(), new_account()
    built_a = build(fixture, a)
    built_b = build(fixture, b)
    print(f"built in account A={a} (aws-amicleaner) and B={b} (ours) in {time.monotonic() - t:.1f} s")
    print(f"logs: {workdir}")
    amic = run_amicleaner(amicleaner, built_a, workdir)
    ours = run_ours(bench_bin, built_b, workdir, rate_limited, ours_env)
    results = []
    for run, built in ((amic, built_a), (ours, built_b)):
        images, snapshots = final_state(built)
        results.append((run, score(fixture, truth, built, images, snapshots)))
    print_results(fixture, truth, results, rate_limited)
    print("\n  where aws-amicleaner's options cannot say our policy:")
    for m in AMICLEANER_MISMATCHES:
        print(f"    - {m}")
    return amic.wall_s, ours.wall_s


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def repeat_summary(n: int, walls: list[tuple[float, float]]) -> str:
    """The line printed after ``--repeat`` comparisons of one size: each tool's wall and the
    ratio (amicleaner / ours), as the median and the range over the runs. A run where ours has
    no wall (it failed before timing) gives no ratio."""
    amic = [a for a, _ in walls]
    ours = [o for _, o in walls]
    ratios = [a / o for a, o in walls if o > 0]
    parts = [
        f"aws-amicleaner wall median {_median(amic):.1f} s ({min(amic):.1f}-{max(amic):.1f})",
        f"ours {_median(ours):.1f} s ({min(ours):.1f}-{max(ours):.1f})",
    ]
    if ratios:
        parts.append(f"ratio median {_median(ratios):.2f}x ({min(ratios):.2f}x-{max(ratios):.2f}x)")
    return f"{n} images, {len(walls)} comparisons: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sizes", nargs="*", type=int, default=[1500, 10000], help="images per fixture (default 1500 10000)")
    p.add_argument("--seed", type=int, default=None, help="fixture seed (default: random, printed)")
    p.add_argument("--bench-bin", required=True, help="the bench_cleanup binary")
    p.add_argument("--amicleaner", required=True, help="aws-amicleaner's entry point (its venv's bin/amicleaner)")
    p.add_argument("--rate-limited", action="store_true", help="EC2 rate limits on for our account")
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of our function over the bench's policy (e.g. API_BUDGET_PERCENT=100); repeatable",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="K comparisons of each size, each on an emulator reset before it (moto's reset), then the median and range (default 1)",
    )
    args = p.parse_args(argv)
    if any(n < 1 for n in args.sizes):
        p.error("sizes must be >= 1")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be 1 to 20")
    ours_env: dict[str, str] = {}
    for item in args.ours_env:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            p.error(f"--ours-env {item!r}: expected NAME=VALUE")
        ours_env[name] = value
    if not args.rate_limited:
        # The plain emulator has no request buckets to leave room in, and aws-amicleaner does not
        # pace: both run unpaced (the function's default share, 50 %, would hold ours to
        # 2.5 DeregisterImage/s here for nothing). --rate-limited keeps the function's default.
        ours_env.setdefault("API_BUDGET_PERCENT", "0")
    budget = ours_env.get("API_BUDGET_PERCENT")
    if budget is not None and not re.fullmatch(r"[0-9]+", budget):
        p.error(f"API_BUDGET_PERCENT={budget!r}: expected whole percent")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(keep_tools_off_the_emulators_cpu())
    workdir = tempfile.mkdtemp(prefix="ami-bench-compare-")
    summaries = []
    for i, n in enumerate(args.sizes):
        walls = []
        for k in range(args.repeat):
            if i or k:
                # Every comparison on an emptied emulator: the accounts of the ones before it
                # would otherwise stay in its heap, and its garbage collector walks them all.
                control("POST", "/moto-api/reset")
            sub = os.path.join(workdir, str(n) if args.repeat == 1 else f"{n}-{k + 1}")
            os.makedirs(sub)
            walls.append(compare(n, seed, args.bench_bin, args.amicleaner, args.rate_limited, sub, ours_env))
        if args.repeat > 1:
            summaries.append(repeat_summary(n, walls))
    if summaries:
        print()
        for line in summaries:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
