"""Upload benchmark driver (issue #18), run by ``scripts/bench-upload``: prints figures, asserts
nothing about time.

On one emulator: a raw disk with a real ext4 filesystem filled to a share with incompressible
files (``mke2fs -d``), and its stream-optimized VMDK (``qemu-img convert``), uploaded to the
uploads bucket of a fresh account by ``bench_upload setup``. Then, one after the other:

1. ours, raw: create-image's fast path from S3 (``bench_upload run``: probe, ranged GETs,
   PutSnapshotBlock, CompleteSnapshot, wait for ``completed``, RegisterImage, announcement);
2. coldsnap, raw: ``coldsnap upload --wait`` of the same disk from local disk (snapshot only,
   no AMI);
3. ours, VMDK: the fast path decoding the stream-optimized VMDK from S3;
4. what a user runs today for a VMDK: ``qemu-img convert -O raw`` then ``coldsnap upload
   --wait``.

For each: wall time, MB/s of virtual disk, PutSnapshotBlock calls (the emulator's request
counter for the account, reset before each), peak RSS (ours: VmHWM of the process; the others:
``/usr/bin/time``'s maximum resident set size), and the ratio against the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def control(endpoint: str, method: str, path: str) -> dict:
    req = urllib.request.Request(endpoint + path, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def put_blocks(endpoint: str, account: str) -> int:
    """PutSnapshotBlock calls of the account since the last reset (the emulator's counter)."""
    counts = control(endpoint, "GET", f"/ami-pipeline-emulator/requests?account_id={account}")
    return int(counts.get("requests", {}).get("ebs:PutSnapshotBlock", 0))


def reset(endpoint: str, account: str) -> None:
    control(endpoint, "DELETE", f"/ami-pipeline-emulator/requests?account_id={account}")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS MiB (GNU time) and stdout of ``cmd``."""
    t = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-f", "RSS_KB %M", *cmd], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    rss = next((int(l.split()[1]) for l in out.stderr.splitlines() if l.startswith("RSS_KB ")), 0)
    return wall, rss / 1024, out.stdout.strip()


def ours(bench: str, account: str, key: str, env: dict[str, str]) -> dict:
    out = subprocess.run([bench, "run", account, key], env=env, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        sys.exit(f"bench_upload run {key} failed:\n{out.stdout}\n{out.stderr}")
    result = json.loads(line[len("BENCH_JSON "):])
    if result.get("error") or result["outcome"].get("outcome") != "registered":
        sys.exit(f"ours did not take the fast path for {key}: {json.dumps(result)[:2000]}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-bin", required=True)
    ap.add_argument("--coldsnap", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--vmdk", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    env = dict(os.environ)
    size = Path(args.raw).stat().st_size
    mib = size / 2**20

    sha = subprocess.run([args.bench_bin, "sha", "2048"], env=env, capture_output=True, text=True, check=True)
    print(sha.stdout.splitlines()[0])

    setup = subprocess.run(
        [args.bench_bin, "setup", args.raw, "bench/disk.raw", args.vmdk, "bench/disk.vmdk"],
        env=env, capture_output=True, text=True,
    )
    line = next((l for l in setup.stdout.splitlines() if l.startswith("BENCH_SETUP ")), None)
    if setup.returncode != 0 or line is None:
        sys.exit(f"setup failed:\n{setup.stdout}\n{setup.stderr}")
    s = json.loads(line[len("BENCH_SETUP "):])
    account = s["account"]
    tool_env = dict(env, AWS_ACCESS_KEY_ID=s["access_key_id"], AWS_SECRET_ACCESS_KEY=s["secret_access_key"],
                    AWS_SESSION_TOKEN=s["session_token"], AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")

    rows = []
    reset(endpoint, account)
    r = ours(args.bench_bin, account, "bench/disk.raw", env)
    rows.append(("ours, raw from S3 (snapshot + AMI)", r["wall_s"], r["peak_rss_mib"], put_blocks(endpoint, account)))

    reset(endpoint, account)
    wall, rss, out = timed([args.coldsnap, "upload", "--wait", args.raw], tool_env)
    rows.append(("coldsnap 0.12.0, raw from local disk (snapshot)", wall, rss, put_blocks(endpoint, account)))

    reset(endpoint, account)
    r = ours(args.bench_bin, account, "bench/disk.vmdk", env)
    rows.append(("ours, stream-optimized VMDK from S3 (snapshot + AMI)", r["wall_s"], r["peak_rss_mib"], put_blocks(endpoint, account)))

    reset(endpoint, account)
    converted = str(Path(args.work) / "converted.raw")
    w1, rss1, _ = timed(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", args.vmdk, converted], tool_env)
    w2, rss2, _ = timed([args.coldsnap, "upload", "--wait", converted], tool_env)
    os.unlink(converted)
    rows.append((f"qemu-img convert ({w1:.1f} s) + coldsnap ({w2:.1f} s), VMDK", w1 + w2, max(rss1, rss2), put_blocks(endpoint, account)))

    print(f"\ndisk: {mib:.0f} MiB raw, {Path(args.vmdk).stat().st_size / 2**20:.0f} MiB stream-optimized VMDK")
    print(f"{'':58} {'wall s':>8} {'MB/s disk':>10} {'blocks put':>11} {'peak RSS MiB':>13}")
    for name, wall, rss, blocks in rows:
        print(f"{name:58} {wall:8.1f} {size / wall / 1e6:10.0f} {blocks:11d} {rss:13.1f}")
    print(f"\nratio raw (coldsnap / ours): {rows[1][1] / rows[0][1]:.2f}x")
    print(f"ratio VMDK (convert + coldsnap / ours): {rows[3][1] / rows[2][1]:.2f}x")
    print("BENCH_JSON " + json.dumps({"disk_bytes": size, "rows": [
        {"name": n, "wall_s": w, "mb_per_s": size / w / 1e6, "blocks_put": b, "peak_rss_mib": m} for n, w, m, b in rows]}))


if __name__ == "__main__":
    main()
