//! The chaos harness (issue #15): `chaos [--uploads N] [--dup K] [--fault-rate P]
//! [--crash-rate P] [--lost-rate P] [--lag S] [--seed S] [--runs R] [--fault-rounds F]
//! [--max-rounds M] [--retried-only] [--strict]`. Needs the emulator
//! (`AWS_ENDPOINT_URL`, or it starts one); `scripts/chaos` sets everything up. Prints each
//! run's figures and invariants; exits 1 if an invariant failed, 2 on bad arguments.

use std::process::ExitCode;
use support::chaos::{self, Options};

const USAGE: &str = "usage: chaos [--uploads N] [--dup K] [--fault-rate P] [--crash-rate P] \
[--lost-rate P] [--lag S] [--seed S] [--runs R] [--fault-rounds F] [--max-rounds M] [--retried-only] [--strict]
  --uploads N       uploads per run (default 8): raw, 2 GiB VMDK (ImportSnapshot), VMDK and VHD in turn
  --dup K           deliveries of every event (default 3), shuffled, late, concurrent
  --fault-rate P    share of the functions' AWS calls answered with a transient error (default 0.1)
  --crash-rate P    share of their calls that take effect, then fail with an error the SDK does not
                    retry (InvocationCrashed): the invocation stops after a call that happened (default 0)
  --lost-rate P     share of their calls that take effect, then answer a 500 the SDK retries: the
                    call is repeated (default 0)
  --lag S           EC2 eventual consistency of S seconds while the pipeline runs under faults (default 0)
  --seed S          seed of the first run (default: from the clock, printed); run n uses S+n
  --runs R          runs, each in its own account (default 1)
  --retried-only    only faults the SDK retries (not SNS Publish's Throttled, 429, which reaches the function)
  --fault-rounds F  schedule rounds still under faults (default 2)
  --max-rounds M    rounds after which a run that still changes something has not converged (default 12)
  --strict          an invocation failing without an injected fault (a race, a denial) fails the run too";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000)
            .unwrap_or(1),
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--strict" {
            o.strict = true;
            continue;
        }
        if flag == "--retried-only" {
            o.unretried = false;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let int = |v: &str| -> Result<usize, String> {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: {v:?} is not a whole number"))
        };
        let rate = |v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|p| (0.0..=0.9).contains(p))
                .ok_or_else(|| format!("{flag}: {v:?} is not a number from 0 to 0.9"))
        };
        match flag.as_str() {
            "--uploads" => o.uploads = int(value)?.max(1),
            "--dup" => o.dup = int(value)?.max(1),
            "--runs" => o.runs = int(value)?.max(1),
            "--fault-rounds" => o.fault_rounds = int(value)?,
            "--max-rounds" => o.max_rounds = int(value)?.max(1),
            "--seed" => o.seed = int(value)? as u64,
            "--fault-rate" => o.fault_rate = rate(value)?,
            "--crash-rate" => o.crash_rate = rate(value)?,
            "--lost-rate" => o.lost_rate = rate(value)?,
            "--lag" => {
                o.lag_seconds = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=30.0).contains(s))
                    .ok_or_else(|| {
                        format!("--lag: {value:?} is not a number of seconds from 0 to 30")
                    })?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// The stack of the runtime's threads (concurrent deliveries run on its blocking threads): a
/// debug build keeps each awaiting async fn's locals on the stack, and tokio's default of
/// 2 MiB leaves the handlers little margin under the harness's own levels (tests/tests/chaos.rs).
const STACK_BYTES: usize = 16 << 20;

fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(STACK_BYTES)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(chaos_main()),
        Err(e) => {
            eprintln!("chaos: cannot start a tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn chaos_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("chaos: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let summary = chaos::run(&opts, &mut |s| println!("{s}")).await;
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
