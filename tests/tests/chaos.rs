//! The chaos harness (issue #15) at the test command's size: three uploads (raw and VMDK by
//! the EBS direct fast path, a 2 GiB VMDK by ImportSnapshot), every event delivered twice at
//! once, shuffled and late, 5 % of the functions' AWS calls failed with transient errors, then
//! the schedules until nothing changes; every invariant of `support::chaos::check` must hold.
//! The full-size run, and several seeds, are `scripts/chaos` (README, "Chaos").

use support::chaos::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_chaos_run_keeps_every_invariant() {
    let opts = Options {
        uploads: 3,
        dup: 2,
        fault_rate: 0.05,
        // Only faults the SDK retries: one that reaches create-image's fast path at its
        // announcement trips a reported open bug (README, "Chaos"), which a CI run must not
        // hit by chance. `scripts/chaos` injects them.
        unretried: false,
        crash_rate: 0.0,
        lost_rate: 0.0,
        lag_seconds: 0.0,
        seed: 15,
        runs: 1,
        fault_rounds: 1,
        max_rounds: 10,
        strict: false,
    };
    let mut printed = String::new();
    let summary = chaos::run(&opts, &mut |s| {
        println!("{s}");
        printed.push_str(s);
        printed.push('\n');
    })
    .await;
    assert!(
        summary.passed(),
        "an invariant failed (seed {}):\n{printed}",
        opts.seed
    );
}
