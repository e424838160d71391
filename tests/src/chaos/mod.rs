//! The chaos harness (issue #15): the real handlers, several concurrent copies of each, against
//! the emulator, with every event delivered several times, shuffled, late and concurrently,
//! transient faults injected on a share of the functions' AWS calls, then the schedules until
//! nothing changes; the invariants checked at the end and the figures printed.
//!
//! A run ([`pipeline::Run`]) works in its own account; the fault-free reference (each event
//! once, in order) runs once per process and gives the lineage every run must reproduce.
//! `scripts/chaos` runs the binary `tests/src/bin/chaos.rs`; `tests/tests/chaos.rs` runs a
//! small configuration in the test command.

pub mod check;
pub mod faults;
pub mod invoke;
pub mod observe;
pub mod pipeline;
pub mod rng;
pub mod scenario;

use check::Verdict;
use faults::Kind;
use pipeline::{Mode, Run};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Uploads per run (`--uploads`).
    pub uploads: usize,
    /// Deliveries of each event (`--dup`).
    pub dup: usize,
    /// Share of the functions' AWS calls failed with a transient error (`--fault-rate`).
    pub fault_rate: f64,
    /// Faults the SDK does not retry (SNS Publish `Throttled`, 429) are among them; false with
    /// `--retried-only`.
    pub unretried: bool,
    /// Share of the functions' AWS calls that take effect and then fail with an error the SDK
    /// does not retry (`--crash-rate`): the invocation stops after a call that happened.
    pub crash_rate: f64,
    /// Share of the functions' AWS calls that take effect and whose answer is lost (a 500 the
    /// SDK retries, so it repeats a call that happened) (`--lost-rate`).
    pub lost_rate: f64,
    /// EC2 eventual consistency (seconds) during the pipeline phases (`--lag`; 0: off).
    pub lag_seconds: f64,
    /// The first run's seed (`--seed`); run `n` uses `seed + n`.
    pub seed: u64,
    /// Runs (`--runs`).
    pub runs: usize,
    /// Schedule rounds still under faults (`--fault-rounds`).
    pub fault_rounds: usize,
    /// Rounds after which a run that still changes something has not converged (`--max-rounds`).
    pub max_rounds: usize,
    /// What is counted and not failed fails the run too (`--strict`): raw duplicates of the
    /// announcement types in `check::KNOWN_OPEN`, invocations failing without an injected fault.
    pub strict: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            uploads: 8,
            dup: 3,
            fault_rate: 0.1,
            unretried: true,
            crash_rate: 0.0,
            lost_rate: 0.0,
            lag_seconds: 0.0,
            seed: 1,
            runs: 1,
            fault_rounds: 2,
            max_rounds: 12,
            strict: false,
        }
    }
}

/// One run's outcome.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Its seed.
    pub seed: u64,
    /// Its verdict and figures.
    pub verdict: Verdict,
    /// Faults fired / the functions' calls.
    pub faults: (u64, u64),
    /// Faults fired per kind.
    pub per_kind: BTreeMap<Kind, u64>,
    /// Invocations run (attempts, Lambda's retries included) until the pipeline converged.
    pub invocations: usize,
    /// Events dead-lettered (all three attempts failed).
    pub dead_lettered: usize,
    /// Failed invocations whose error was not an injected fault.
    pub uninjected: usize,
    /// Failed invocations that were the functions' "not listed yet" under the lag.
    pub lag_induced: usize,
    /// Wall time.
    pub wall: Duration,
}

/// Every run's outcome; the reference's too.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The runs.
    pub runs: Vec<RunSummary>,
    /// Invariants the fault-free reference itself broke.
    pub reference: Verdict,
}

impl Summary {
    /// Every run, and the reference, kept every invariant.
    pub fn passed(&self) -> bool {
        self.reference.passed() && self.runs.iter().all(|r| r.verdict.passed())
    }
}

/// Runs the reference and `opts.runs` chaos runs, printing each run's figures and verdict
/// through `print` as it goes; returns the outcomes.
pub async fn run(opts: &Options, print: &mut dyn FnMut(&str)) -> Summary {
    print(&format!(
        "== chaos: {} run(s) from seed {}, {} uploads, each event x{}, fault rate {}{}, crash rate {}, lost-response rate {}, EC2 lag {} s, {} round(s) under faults{}",
        opts.runs,
        opts.seed,
        opts.uploads,
        opts.dup,
        opts.fault_rate,
        if opts.unretried {
            ""
        } else {
            " (retried only)"
        },
        opts.crash_rate,
        opts.lost_rate,
        opts.lag_seconds,
        opts.fault_rounds,
        if opts.strict { ", strict" } else { "" }
    ));
    let uploads = scenario::uploads(opts.uploads);
    let started = Instant::now();
    let mut reference = Run::setup(Mode::reference(opts.max_rounds), 0, uploads.clone()).await;
    reference.execute().await;
    let ref_lineage = check::lineage(&reference, &reference.at_convergence);
    let ref_verdict = check::verdict(&reference, &ref_lineage, true);
    print(&format!(
        "-- fault-free reference (each event once, in order; account {}): {} images and snapshots, {:.1} s, {} rounds",
        reference.acct.account_id,
        ref_lineage.len(),
        started.elapsed().as_secs_f64(),
        reference.rounds.len()
    ));
    if !ref_verdict.passed() {
        print(&render_verdict(&ref_verdict));
    }
    let mut runs = Vec::new();
    for n in 0..opts.runs {
        let seed = opts.seed.wrapping_add(n as u64);
        let mode = Mode {
            dup: opts.dup,
            fault_rate: opts.fault_rate,
            unretried: opts.unretried,
            crash_rate: opts.crash_rate,
            lost_rate: opts.lost_rate,
            lag_seconds: opts.lag_seconds,
            concurrent: true,
            fault_rounds: opts.fault_rounds,
            max_rounds: opts.max_rounds,
        };
        let mut r = Run::setup(mode, seed, uploads.clone()).await;
        r.execute().await;
        let verdict = check::verdict(&r, &ref_lineage, opts.strict);
        print(&render_run(&r, &verdict));
        let faults = r
            .fault_calls()
            .values()
            .fold((0, 0), |a, (calls, fired)| (a.0 + fired, a.1 + calls));
        let dead_lettered = r.stats().values().map(|s| s.dead_lettered).sum();
        let invocations = r.stats().values().map(|s| s.attempts).sum();
        let uninjected = r.stats().values().map(|s| s.uninjected).sum();
        let lag_induced = r.stats().values().map(|s| s.lag_induced).sum();
        let wall = r
            .timings
            .iter()
            .find(|(n, _)| n == "total")
            .map(|(_, d)| *d)
            .unwrap_or_default();
        runs.push(RunSummary {
            seed,
            verdict,
            faults,
            per_kind: r.faults_per_kind(),
            invocations,
            dead_lettered,
            uninjected,
            lag_induced,
            wall,
        });
    }
    let summary = Summary {
        runs,
        reference: ref_verdict,
    };
    print(&render_summary(&summary));
    summary
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn histogram(h: &BTreeMap<usize, usize>) -> String {
    h.iter()
        .map(|(k, n)| format!("{n} with {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One run's figures and verdict, as printed.
pub fn render_run(r: &Run, v: &Verdict) -> String {
    let f = &v.figures;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== run seed={} (account {}): {} uploads, each event x{}, fault rate {}, crash rate {}, lost-response rate {}, EC2 lag {} s",
        r.seed,
        r.acct.account_id,
        r.uploads.len(),
        r.mode.dup,
        r.mode.fault_rate,
        r.mode.crash_rate,
        r.mode.lost_rate,
        r.mode.lag_seconds
    );
    let _ = writeln!(s, "figures:");
    let times: Vec<String> = r
        .timings
        .iter()
        .map(|(n, d)| format!("{n} {}", secs(*d)))
        .collect();
    let _ = writeln!(s, "  wall time: {}", times.join(", "));
    for (fun, st) in r.stats() {
        let errors: Vec<String> = st.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            s,
            "  {}: {} events, {} invocations, {} failed{}, {} retried by Lambda's async retries, {} dead-lettered",
            fun.name(),
            st.events,
            st.attempts,
            st.failed_attempts,
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join(", "))
            },
            st.attempts - st.events,
            st.dead_lettered
        );
        if st.lag_induced > 0 {
            let _ = writeln!(
                s,
                "    {} of the failures are the function's own \"not listed yet\" under the EC2 lag (the event retried)",
                st.lag_induced
            );
        }
        if st.uninjected > 0 {
            let _ = writeln!(
                s,
                "    {} of the failures are not an injected fault",
                st.uninjected
            );
        }
        for e in &st.samples {
            let _ = writeln!(s, "      e.g. {}", clip(e, 300));
        }
    }
    let per_code: Vec<String> = r
        .fault_figures()
        .iter()
        .filter(|(_, (_, fired))| *fired > 0)
        .map(|((svc, code, kind), (_, fired))| match kind {
            Kind::Transient => format!("{svc} {code} {fired}"),
            _ => format!("{svc} {code} {fired} ({} after the call)", kind.name()),
        })
        .collect();
    let per_service: Vec<String> = r
        .fault_calls()
        .iter()
        .map(|(svc, (calls, fired))| format!("{svc} {fired}/{calls}"))
        .collect();
    let (fired, calls) = r
        .fault_calls()
        .values()
        .fold((0, 0), |a, (c, f)| (a.0 + f, a.1 + c));
    let _ = writeln!(
        s,
        "  faults fired: {fired} of {calls} function calls ({}; SDK retries are calls too): {} ({})",
        if calls > 0 {
            format!("{:.1} %", 100.0 * fired as f64 / calls as f64)
        } else {
            "-".into()
        },
        per_service.join(", "),
        per_code.join(", ")
    );
    let kinds = r.faults_per_kind();
    let _ = writeln!(
        s,
        "  faults by kind: {}; invocations: {}",
        Kind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), kinds.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", "),
        r.stats().values().map(|s| s.attempts).sum::<usize>()
    );
    let _ = writeln!(s, "  AMIs per upload: {}", histogram(&f.amis_per_upload));
    let _ = writeln!(
        s,
        "  import tasks per upload: {}",
        histogram(&f.imports_per_upload)
    );
    let _ = writeln!(
        s,
        "  copies per (image, region): {}",
        histogram(&f.copies_per_region)
    );
    let _ = writeln!(
        s,
        "  orphan snapshots once converged: {}",
        f.orphan_snapshots
    );
    for (t, a) in &f.announced {
        let _ = writeln!(
            s,
            "  {t}: {} messages for {} images; max {} per image, {} images duplicated ({} extra), {} missing, {} with more than one dedup_key",
            a.messages,
            r.uploads.len(),
            a.max,
            a.duplicated,
            a.excess,
            a.missing,
            a.keys_over_one
        );
    }
    let msgs: Vec<String> = f.messages.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let _ = writeln!(s, "  messages on the topic: {}", msgs.join(", "));
    let _ = writeln!(
        s,
        "  lineage: {} images and snapshots compared with the reference, {} differ",
        f.lineage_compared, f.lineage_differing
    );
    let (expected, removed, wrong, missed, snaps) = f.cleanup;
    let _ = writeln!(
        s,
        "  cleanup: {expected} stale images expected, {removed} removed ({wrong} wrongly, {missed} missed), {snaps} snapshots deleted"
    );
    let under = r.rounds.iter().filter(|l| l.faults).count();
    let _ = writeln!(
        s,
        "  rounds: {} schedule rounds still changed something; the pipeline {} after {} rounds ({under} under faults); cleanup {} after {} runs",
        f.rounds_needed,
        if r.converged {
            "converged"
        } else {
            "did NOT converge"
        },
        f.rounds,
        if r.cleanup_converged {
            "converged"
        } else {
            "did NOT converge"
        },
        f.cleanup_rounds
    );
    for l in &r.rounds {
        let _ = writeln!(
            s,
            "    round {}{}: {} inputs, {} changed{}, {} messages sent, {} in flight",
            l.round,
            if l.faults { " (faults)" } else { "" },
            l.inputs,
            l.changes.len(),
            if l.changes.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", l.changes[0])
            },
            l.produced,
            l.in_flight
        );
    }
    s.push_str(&render_verdict(v));
    s
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

/// The invariants: pass / FAIL with evidence / SEEN, NOT FAILED with evidence.
pub fn render_verdict(v: &Verdict) -> String {
    let mut s = String::from("invariants:\n");
    for c in &v.checked {
        let failed = v.failures.iter().find(|f| &f.invariant == c);
        let _ = writeln!(
            s,
            "  {} {c}",
            if failed.is_some() {
                "FAIL"
            } else if v.known_open.iter().any(|k| c.starts_with(&k.invariant)) {
                "seen"
            } else {
                "pass"
            }
        );
        if let Some(f) = failed {
            for e in f.evidence.iter().take(12) {
                let _ = writeln!(s, "       {}", clip(e, 600));
            }
            if f.evidence.len() > 12 {
                let _ = writeln!(s, "       … {} more", f.evidence.len() - 12);
            }
        }
    }
    for k in &v.known_open {
        let _ = writeln!(s, "  SEEN, NOT FAILED (--strict fails it) {}", k.invariant);
        for e in k.evidence.iter().take(12) {
            let _ = writeln!(s, "       {}", clip(e, 600));
        }
    }
    s
}

/// Across runs: seeds, failures, rounds (median, max), duplicates, faults.
pub fn render_summary(sum: &Summary) -> String {
    let mut s = String::new();
    let n = sum.runs.len();
    let failed: Vec<u64> = sum
        .runs
        .iter()
        .filter(|r| !r.verdict.passed())
        .map(|r| r.seed)
        .collect();
    let mut rounds: Vec<usize> = sum
        .runs
        .iter()
        .map(|r| r.verdict.figures.rounds_needed)
        .collect();
    rounds.sort_unstable();
    let median = rounds.get(n / 2).copied().unwrap_or(0);
    let max = rounds.last().copied().unwrap_or(0);
    let (fired, drawn) = sum
        .runs
        .iter()
        .fold((0, 0), |a, r| (a.0 + r.faults.0, a.1 + r.faults.1));
    let dead: usize = sum.runs.iter().map(|r| r.dead_lettered).sum();
    let mut invocations: Vec<usize> = sum.runs.iter().map(|r| r.invocations).collect();
    invocations.sort_unstable();
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .map(|k| {
            let n: u64 = sum
                .runs
                .iter()
                .map(|r| r.per_kind.get(k).copied().unwrap_or(0))
                .sum();
            format!("{} {n}", k.name())
        })
        .collect();
    let wall: Duration = sum.runs.iter().map(|r| r.wall).sum();
    let _ = writeln!(
        s,
        "\n== summary: {n} run(s), seeds {:?}",
        sum.runs.iter().map(|r| r.seed).collect::<Vec<_>>()
    );
    let _ = writeln!(
        s,
        "  runs failing an invariant: {} {failed:?}",
        failed.len()
    );
    let _ = writeln!(
        s,
        "  schedule rounds that still changed something: median {median}, max {max}"
    );
    let _ = writeln!(
        s,
        "  faults fired: {fired} of {drawn} function calls ({}); events dead-lettered: {dead}",
        kinds.join(", ")
    );
    let _ = writeln!(
        s,
        "  invocations to converge (Lambda's retries included): median {}, max {}",
        invocations.get(n / 2).copied().unwrap_or(0),
        invocations.last().copied().unwrap_or(0)
    );
    let uninjected: usize = sum.runs.iter().map(|r| r.uninjected).sum();
    let _ = writeln!(
        s,
        "  invocations failed without an injected fault: {uninjected}; failed by the functions' own \"not listed yet\" under the EC2 lag: {}",
        sum.runs.iter().map(|r| r.lag_induced).sum::<usize>()
    );
    for t in check::ANNOUNCED {
        let (dup_runs, images, extra) = sum.runs.iter().fold((0, 0, 0), |a, r| {
            let x = r
                .verdict
                .figures
                .announced
                .get(t)
                .cloned()
                .unwrap_or_default();
            (
                a.0 + usize::from(x.duplicated > 0),
                a.1 + x.duplicated,
                a.2 + x.excess,
            )
        });
        let _ = writeln!(
            s,
            "  {t} duplicated: in {dup_runs} of {n} runs, {images} images, {extra} extra messages"
        );
    }
    let _ = writeln!(s, "  wall time of the runs: {}", secs(wall));
    if !sum.reference.passed() {
        let _ = writeln!(
            s,
            "  the fault-free reference itself broke {} invariant(s)",
            sum.reference.failures.len()
        );
    }
    let _ = writeln!(
        s,
        "  verdict: {}",
        if sum.passed() { "PASS" } else { "FAIL" }
    );
    s
}
