//! SHA-256 throughput on 512 KiB blocks, the per-block work of an EBS-direct upload.
//!
//! Run: `cargo run --release -p ami-pipeline-disk --example sha_throughput [seconds]`.
//! Prints whether the CPU offers SHA instructions (x86 SHA-NI / Arm SHA2, which the sha2
//! crate detects at run time through cpufeatures), MB/s on one core, then on every core.

use std::time::{Duration, Instant};

use disk::{BLOCK_SIZE, BlockChecksum};

/// Hashes distinct 512 KiB blocks for `seconds`; returns bytes hashed per second.
fn measure(seconds: f64) -> f64 {
    let mut block = vec![0u8; BLOCK_SIZE];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 131 % 251) as u8;
    }
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut hashed = 0u64;
    let mut sink = 0u8;
    while start.elapsed() < deadline {
        block[0] = block[0].wrapping_add(1);
        sink ^= BlockChecksum::of(&block).0[0];
        hashed += BLOCK_SIZE as u64;
    }
    std::hint::black_box(sink);
    hashed as f64 / start.elapsed().as_secs_f64()
}

fn sha_instructions() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sha") {
            "yes (x86_64 SHA-NI)"
        } else {
            "no (x86_64 without SHA-NI: software SHA-256)"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("sha2") {
            "yes (aarch64 SHA2)"
        } else {
            "no (aarch64 without SHA2: software SHA-256)"
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "unknown architecture"
    }
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("hardware SHA-256: {}", sha_instructions());
    let one = measure(seconds);
    println!(
        "1 thread: {:.0} MB/s ({:.0} blocks/s)",
        one / 1e6,
        one / BLOCK_SIZE as f64
    );
    let threads: Vec<_> = (0..cores)
        .map(|_| std::thread::spawn(move || measure(seconds)))
        .collect();
    let all: f64 = threads.into_iter().map(|t| t.join().unwrap_or(0.0)).sum();
    println!(
        "{cores} threads: {:.0} MB/s total, {:.0} MB/s per core",
        all / 1e6,
        all / 1e6 / cores as f64
    );
}
