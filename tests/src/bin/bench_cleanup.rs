//! Cleanup benchmark (prints its figures; not a test). `scripts/bench-cleanup` runs it.
//!
//! - `bench_cleanup planner [N]`: the pure planner alone on N synthetic images (default
//!   100,000) in 50 families: wall time of `retention::plan`, median and minimum of 15 runs.
//! - `bench_cleanup emulator [N]`: N managed images (default 10,000), each with its own
//!   snapshot, backdated across a year in 50 families, in one region of a fresh emulator account;
//!   then a dry run and a real run of the cleanup handler, each in a child process
//!   (`bench_cleanup run <account> <dry|real>`) that prints its wall time, its peak RSS (VmHWM)
//!   and the AWS calls by operation (the emulator's request counter).
//! - `bench_cleanup run <account> <dry|real> [--clock-ahead-minutes M]`: one cleanup invocation
//!   in an account a parent set up (`scripts/bench-cleanup compare` drives it from
//!   `tests/bench/compare.py`). Besides the human line it prints one `BENCH_JSON {...}` line:
//!   `wall_s` (the invocation alone), `peak_rss_mib`, `requests` (by operation, counted from just
//!   before the invocation), `decisions` and `steps` by action (steps as `<action> <result>`,
//!   the result's first word), `capped`, `env` (the function's settings) and `error` when the
//!   invocation failed. Any variable cleanup reads that is set in the environment overrides the
//!   bench's policy. The clock argument plans the run M minutes ahead of now (the handler takes
//!   the clock as a parameter): it stands in for the wait between two scheduled runs when a
//!   removal needs more than one.

use chrono::{Duration as Days, Utc};
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use shared::deadline::Deadline;
use shared::model::{Image, Tags};
use shared::plan::lineage::{FAMILY, MANAGED};
use shared::plan::retention::{self, Policy, RegionFacts};
use shared::runner::Function;
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use support::{TestAccount, fixtures};

fn policy() -> Policy {
    Policy {
        keep_newest: 3,
        min_age_days: 30,
        grace_days: 7,
        max_deletions: 10_000,
        max_deprecations: 10_000,
        families: BTreeSet::new(),
        selectors: vec![],
        allow_public: false,
        allow_shared: false,
        orphan_sweep: true,
    }
}

/// Runs of the planner; the median is reported (this machine's timings are noisy).
const RUNS: usize = 15;

fn planner(n: usize) {
    let now = Utc::now();
    let images: Vec<Image> = (0..n)
        .map(|i| Image {
            id: format!("ami-{i:017x}"),
            name: format!("f{}-{i}", i % 50),
            state: "available".into(),
            creation_date: Some((now - Days::days((i % 365) as i64)).to_rfc3339()),
            snapshot_ids: vec![format!("snap-{i:017x}")],
            tags: Tags::from([
                (MANAGED.to_string(), "true".to_string()),
                (FAMILY.to_string(), format!("f{}", i % 50)),
            ]),
            deprecation_time: (i % 3 == 0).then(|| (now - Days::days(10)).to_rfc3339()),
            ..Image::default()
        })
        .collect();
    let facts = [RegionFacts {
        region: "us-east-1".into(),
        images,
        ..RegionFacts::default()
    }];
    let mut times = Vec::new();
    let mut decided = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let plan = retention::plan(&facts, &policy(), now);
        times.push(t.elapsed());
        decided = plan.decisions.len();
    }
    times.sort();
    println!(
        "planner: {n} images, 50 families -> {decided} decisions; median {:.1} ms, min {:.1} ms ({RUNS} runs, {} build)",
        times[RUNS / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn setup(n: usize) -> Result<String, String> {
    let acct = TestAccount::new().await;
    let ec2 = acct.clients.ec2.clone();
    let t = Instant::now();
    let ids: Vec<String> = stream::iter(0..n)
        .map(|i| {
            let ec2 = ec2.clone();
            async move {
                let family = format!("f{}", i % 50);
                fixtures::image(
                    &ec2,
                    &format!("{family}-{i:05}"),
                    &[
                        ("ami-pipeline:managed", "true"),
                        ("ami-pipeline:family", &family),
                    ],
                )
                .await
                .0
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    println!(
        "setup: registered {n} images with their snapshots in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let now = Utc::now();
    let images: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"image_id": id, "creation_date": (now - Days::days((i % 365) as i64) - Days::minutes(i as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})
        })
        .collect();
    acct.control(
        "POST",
        "/ami-pipeline-emulator/image-creation-date",
        Some(json!({"region": "us-east-1", "images": images})),
    );
    Ok(acct.account_id)
}

/// The BENCH_JSON line's counts of a report: decisions by action, steps by `<action> <result>`
/// (read from the report's JSON, so the benchmark follows the report's shape as it changes).
fn tally(report: &Value) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut decisions = BTreeMap::new();
    for d in report["decisions"].as_array().into_iter().flatten() {
        let action = d["action"].as_str().unwrap_or("?").to_owned();
        *decisions.entry(action).or_insert(0) += 1;
    }
    let mut steps = BTreeMap::new();
    for s in report["steps"].as_array().into_iter().flatten() {
        let result = s["result"].as_str().unwrap_or("?");
        let word = result
            .split([':', ' '])
            .next()
            .filter(|w| !w.is_empty())
            .unwrap_or("?");
        let key = format!("{} {word}", s["action"].as_str().unwrap_or("?"));
        *steps.entry(key).or_insert(0) += 1;
    }
    (decisions, steps)
}

/// The function's environment: the bench's policy (keep 3, 30 days, no grace, cap 10,000),
/// overridden by any variable cleanup reads ([`cleanup::Config::vars`]) that is set in this
/// process's environment (e.g. `CLEANUP_CONCURRENCY`, or a pacing budget), except `TOPIC_ARN`:
/// the bench's own topic.
fn function_env(topic: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("TOPIC_ARN", topic),
        ("KEEP_NEWEST", "3"),
        ("MIN_AGE_DAYS", "30"),
        ("MAX_DELETIONS", "10000"),
        ("GRACE_DAYS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for name in cleanup::Config::vars() {
        if let (false, Ok(v)) = (name == "TOPIC_ARN", std::env::var(name)) {
            env.insert(name.to_owned(), v);
        }
    }
    env
}

async fn run(account: String, dry: bool, clock_ahead: Days) -> Result<(), String> {
    let acct = TestAccount::for_account(account).await;
    let (topic, _queue) = acct.topic_with_queue("bench").await;
    let env = function_env(&topic);
    let lookup = |k: &str| env.get(k).cloned();
    // cleanup's dependencies as the runtime builds them, under its template role.
    let deps: cleanup::Deps = support::deps_as(&acct, &lookup, "unused-bucket")
        .await
        .map_err(|e| e.to_string())?;
    let requests = format!(
        "/ami-pipeline-emulator/requests?account_id={}",
        acct.account_id
    );
    // Counted from here: the set-up above (topic, queue, IAM roles) is the harness's, not
    // cleanup's.
    let _ = acct.control("DELETE", &requests, None);
    let event = json!({"dry_run": dry, "orphan_sweep": false});
    let t = Instant::now();
    let outcome = deps
        .invoke(
            &event,
            Utc::now() + clock_ahead,
            Deadline::after(Duration::from_secs(3600)),
        )
        .await;
    let wall = t.elapsed();
    let counts = acct.control("GET", &requests, None);
    let (report, error) = match outcome {
        Ok(r) => (serde_json::to_value(&r).map_err(|e| e.to_string())?, None),
        Err(e) => (Value::Null, Some(e.to_string())),
    };
    let (decisions, steps) = tally(&report);
    println!(
        "{} run: {} decisions {:?}, {} steps; wall {:.1} s; peak RSS {:.1} MiB; AWS calls {}",
        if dry { "dry" } else { "real" },
        decisions.values().sum::<usize>(),
        decisions,
        steps.values().sum::<usize>(),
        wall.as_secs_f64(),
        peak_rss_mib(),
        counts["requests"]
    );
    println!(
        "BENCH_JSON {}",
        json!({
            "dry_run": dry,
            "wall_s": wall.as_secs_f64(),
            "peak_rss_mib": peak_rss_mib(),
            "requests": counts["requests"],
            "decisions": decisions,
            "steps": steps,
            "capped": report["capped"],
            "error": error,
            "env": env.iter().filter(|(k, _)| *k != "TOPIC_ARN").collect::<BTreeMap<_, _>>(),
        })
    );
    match error {
        Some(e) => Err(format!("cleanup failed: {e}")),
        None => Ok(()),
    }
}

/// `run`'s arguments after `<account> <dry|real>`: `--clock-ahead-minutes M` (default 0).
fn clock_ahead(rest: &[String]) -> Result<Days, String> {
    match rest {
        [] => Ok(Days::zero()),
        [flag, m] if flag == "--clock-ahead-minutes" => m
            .parse::<i64>()
            .ok()
            .filter(|m| *m >= 0)
            .map(Days::minutes)
            .ok_or(format!(
                "--clock-ahead-minutes needs whole minutes >= 0, not {m:?}"
            )),
        other => Err(format!("unexpected arguments {other:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let result = match args.first().map(String::as_str) {
        Some("planner") => {
            planner(n(1, 100_000));
            Ok(())
        }
        Some("emulator") => match setup(n(1, 10_000)).await {
            Ok(account) => {
                let me = std::env::current_exe().map_err(|e| e.to_string());
                let mut r = Ok(());
                for mode in ["dry", "real"] {
                    r = me.as_ref().map_err(Clone::clone).and_then(|exe| {
                        let status = std::process::Command::new(exe)
                            .args(["run", &account, mode])
                            .status()
                            .map_err(|e| e.to_string())?;
                        status
                            .success()
                            .then_some(())
                            .ok_or(format!("{mode} run failed"))
                    });
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            Err(e) => Err(e),
        },
        Some("run") => match (args.get(1), args.get(2).map(String::as_str)) {
            (Some(a), Some(mode @ ("dry" | "real"))) => match clock_ahead(&args[3..]) {
                Ok(ahead) => run(a.clone(), mode == "dry", ahead).await,
                Err(e) => Err(e),
            },
            _ => Err(
                "usage: bench_cleanup run <account> <dry|real> [--clock-ahead-minutes M]".into(),
            ),
        },
        _ => Err(
            "usage: bench_cleanup planner [N] | emulator [N] | run <account> <dry|real> [--clock-ahead-minutes M]"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
