//! The functions as Lambda runs them in a chaos run: several concurrent copies of each (tokio
//! tasks, each copy with its own SDK clients, as each Lambda execution environment has), every
//! asynchronous event retried twice on failure and then dead-lettered, the way Lambda handles
//! S3, EventBridge and SNS invocations (`template.yaml`: `AsyncMaxRetries` 2, on-failure
//! destination the dead-letter queue).

use crate::{TestAccount, UnderTest, deps_as, invoke};
use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::invocation::InvocationError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Lambda's retries of a failed asynchronous invocation (`AsyncMaxRetries`, default 2).
pub const ASYNC_RETRIES: usize = 2;
/// Lambda waits about a minute, then two, between those retries; the harness scales that down
/// (the order of events is what matters, not the minutes).
const RETRY_PAUSES: [Duration; ASYNC_RETRIES] =
    [Duration::from_millis(300), Duration::from_millis(700)];

/// A function of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fun {
    /// functions/create-image
    CreateImage,
    /// functions/tag-lineage
    TagLineage,
    /// functions/publish
    Publish,
    /// functions/cleanup
    Cleanup,
}

impl Fun {
    /// Every function, in pipeline order.
    pub const ALL: [Fun; 4] = [
        Fun::CreateImage,
        Fun::TagLineage,
        Fun::Publish,
        Fun::Cleanup,
    ];

    /// The crate's name.
    pub fn name(self) -> &'static str {
        match self {
            Fun::CreateImage => "create-image",
            Fun::TagLineage => "tag-lineage",
            Fun::Publish => "publish",
            Fun::Cleanup => "cleanup",
        }
    }
}

/// What happened to one function's invocations.
#[derive(Debug, Clone, Default)]
pub struct FunStats {
    /// Events delivered (each counts once, however many attempts it took).
    pub events: usize,
    /// Invocations run (attempts, retries included).
    pub attempts: usize,
    /// Attempts that failed.
    pub failed_attempts: usize,
    /// Events that still failed after Lambda's retries (they would be in the dead-letter queue).
    pub dead_lettered: usize,
    /// Failed attempts by error type (`Partial`, `InvalidEvent`, …).
    pub errors: BTreeMap<String, usize>,
    /// The first few error messages, as evidence.
    pub samples: Vec<String>,
    /// Failed attempts whose error is not an injected fault (a race, a denial, a bug).
    pub uninjected: usize,
    /// Failed attempts whose error is the function's own "not listed yet" under `--lag`
    /// (counted apart: the injected lag at work).
    pub lag_induced: usize,
    /// The first few of those, as evidence.
    pub uninjected_samples: Vec<String>,
}

/// The clock a delivery runs at: real time plus an offset (a schedule run "later").
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// Added to the wall clock.
    pub offset: chrono::Duration,
}

impl Clock {
    /// The wall clock.
    pub fn real() -> Self {
        Clock::default()
    }

    /// `offset` after the wall clock.
    pub fn later(offset: chrono::Duration) -> Self {
        Clock { offset }
    }

    /// Now, on this clock.
    pub fn now(self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// Each function's copies (dependencies as the runtime builds them, under its template role).
pub struct Fns {
    create: Vec<create_image::Deps>,
    lineage: Vec<tag_lineage::Deps>,
    publish: Vec<publish::Deps>,
    cleanup: Vec<cleanup::Deps>,
    next: AtomicUsize,
    stats: Mutex<BTreeMap<Fun, FunStats>>,
    lagged: bool,
    log: Option<Mutex<std::fs::File>>,
}

/// `CHAOS_LOG_DIR`: when set, every attempt of every function (its event, its output or its
/// error) is appended as a JSON line to `<dir>/seed-<seed>-<account>.jsonl` (the fault-free reference runs in an account of its own), the evidence for a failed
/// invariant (the handlers' `tracing` output is not kept).
pub const LOG_DIR_VAR: &str = "CHAOS_LOG_DIR";

fn open_log(seed: u64, account: &str) -> Option<Mutex<std::fs::File>> {
    let dir = std::env::var_os(LOG_DIR_VAR)?;
    let dir = std::path::PathBuf::from(dir);
    let path = dir.join(format!("seed-{seed}-{account}.jsonl"));
    let file = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
    });
    match file {
        Ok(f) => Some(Mutex::new(f)),
        Err(e) => panic!("{LOG_DIR_VAR}: cannot open {}: {e}", path.display()),
    }
}

/// One function's environment as a lookup.
pub type Env = BTreeMap<&'static str, String>;

async fn copies<F: UnderTest>(acct: &TestAccount, env: &Env, bucket: &str, n: usize) -> Vec<F> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let deps = deps_as::<F>(acct, &|k| env.get(k).cloned(), bucket)
            .await
            .unwrap_or_else(|e| panic!("{:?} configuration: {e}", F::ROLE));
        out.push(deps);
    }
    out
}

impl Fns {
    /// `n` copies of each function in `acct`, configured with `envs`; `lagged`: the run turns
    /// EC2's eventual consistency on (`--lag`).
    pub async fn new(
        acct: &TestAccount,
        envs: &BTreeMap<Fun, Env>,
        bucket: &str,
        n: usize,
        lagged: bool,
        seed: u64,
    ) -> Arc<Fns> {
        let env = |f: Fun| envs.get(&f).cloned().unwrap_or_default();
        Arc::new(Fns {
            create: copies(acct, &env(Fun::CreateImage), bucket, n).await,
            lineage: copies(acct, &env(Fun::TagLineage), bucket, n).await,
            publish: copies(acct, &env(Fun::Publish), bucket, n).await,
            cleanup: copies(acct, &env(Fun::Cleanup), bucket, n).await,
            next: AtomicUsize::new(0),
            stats: Mutex::new(BTreeMap::new()),
            lagged,
            log: open_log(seed, &acct.account_id),
        })
    }

    /// Appends one attempt to the log (`CHAOS_LOG_DIR`), if there is one.
    fn log(&self, fun: Fun, event: &Value, now: DateTime<Utc>, result: &Result<Value, String>) {
        let Some(log) = &self.log else { return };
        let line = serde_json::json!({
            "at": Utc::now().to_rfc3339(),
            "clock": now.to_rfc3339(),
            "function": fun.name(),
            "event": event,
            "output": result.as_ref().ok(),
            "error": result.as_ref().err(),
        });
        let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
        use std::io::Write;
        if let Err(e) = writeln!(f, "{line}") {
            panic!("{LOG_DIR_VAR}: write: {e}");
        }
    }

    /// One invocation of `fun` by the next copy; the output as JSON.
    async fn attempt(
        &self,
        fun: Fun,
        event: &Value,
        now: DateTime<Utc>,
    ) -> Result<Value, InvocationError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or(Value::Null);
        Ok(match fun {
            Fun::CreateImage => {
                let d = &self.create[i % self.create.len()];
                json(serde_json::to_value(invoke(d, event, now).await?))
            }
            Fun::TagLineage => {
                let d = &self.lineage[i % self.lineage.len()];
                json(serde_json::to_value(invoke(d, event, now).await?))
            }
            Fun::Publish => {
                let d = &self.publish[i % self.publish.len()];
                json(serde_json::to_value(invoke(d, event, now).await?))
            }
            Fun::Cleanup => {
                let d = &self.cleanup[i % self.cleanup.len()];
                json(serde_json::to_value(invoke(d, event, now).await?))
            }
        })
    }

    /// One asynchronous event, as Lambda runs it: an attempt, and after a failure up to
    /// [`ASYNC_RETRIES`] more; `Err` with the last error when all failed (dead-lettered).
    pub async fn deliver(&self, fun: Fun, event: &Value, clock: Clock) -> Result<Value, String> {
        let mut last = String::new();
        for attempt in 0..=ASYNC_RETRIES {
            if attempt > 0 {
                tokio::time::sleep(RETRY_PAUSES[attempt - 1]).await;
            }
            let now = clock.now();
            let result = self.attempt(fun, event, now).await;
            self.log(
                fun,
                event,
                now,
                &result
                    .as_ref()
                    .map(Clone::clone)
                    .map_err(|e| format!("{}: {e}", e.error_type())),
            );
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            let s = stats.entry(fun).or_default();
            s.attempts += 1;
            if attempt == 0 {
                s.events += 1;
            }
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    s.failed_attempts += 1;
                    *s.errors.entry(e.error_type().to_owned()).or_default() += 1;
                    last = format!("{}: {e}", e.error_type());
                    if s.samples.len() < 5 {
                        s.samples.push(last.clone());
                    }
                    if self.lagged && super::faults::lag_induced(&last) {
                        s.lag_induced += 1;
                    } else if !super::faults::injected(&last) {
                        s.uninjected += 1;
                        if s.uninjected_samples.len() < 5 {
                            s.uninjected_samples.push(last.clone());
                        }
                    }
                }
            }
        }
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.entry(fun).or_default().dead_lettered += 1;
        Err(last)
    }

    /// What happened so far, per function.
    pub fn stats(&self) -> BTreeMap<Fun, FunStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One event to deliver to a function, after a delay.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The function.
    pub fun: Fun,
    /// The event, as AWS delivers it.
    pub event: Value,
    /// Wait this long before delivering it (concurrent runs only).
    pub delay: Duration,
    /// What it is, for the report.
    pub what: String,
}

/// A delivery's result: what it was and the function's output or last error.
pub type Delivered = (Delivery, Result<Value, String>);

/// Delivers every event: all at once as tokio tasks, each after its delay (`concurrent`), or
/// one after the other in the given order (the fault-free reference).
pub async fn run_all(
    fns: &Arc<Fns>,
    deliveries: Vec<Delivery>,
    clock: Clock,
    concurrent: bool,
) -> Vec<Delivered> {
    let mut out = Vec::new();
    if !concurrent {
        for d in deliveries {
            let r = fns.deliver(d.fun, &d.event, clock).await;
            out.push((d, r));
        }
        return out;
    }
    // Each delivery on a thread of its own, driven by the runtime's I/O and timers (as each
    // Lambda execution environment runs one invocation at a time). Not `tokio::spawn`: the
    // compiler cannot prove every handler's future `Send` (cleanup's executor holds a closure
    // over `&Decision` across an await: "implementation of `FnOnce` is not general enough",
    // rust-lang/rust#102211); `Handle::block_on` on a blocking thread needs no `Send` future.
    let handle = tokio::runtime::Handle::current();
    let tasks: Vec<_> = deliveries
        .into_iter()
        .map(|d| {
            let fns = Arc::clone(fns);
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || {
                handle.block_on(async move {
                    tokio::time::sleep(d.delay).await;
                    let r = fns.deliver(d.fun, &d.event, clock).await;
                    (d, r)
                })
            })
        })
        .collect();
    for t in tasks {
        match t.await {
            Ok(done) => out.push(done),
            Err(e) => panic!("a delivery task panicked: {e}"),
        }
    }
    out
}
