//! Upload benchmark (prints its figures; not a test). `scripts/bench-upload` runs it.
//!
//! - `bench_upload sha [MiB]`: the block pipeline's CPU work on one core: for each 512 KiB
//!   block, the all-zero check and the SHA-256 sent with PutSnapshotBlock (what the fast path
//!   computes per block), over `MiB` of non-zero data (default 2048); prints GB/s per core and
//!   whether the CPU has SHA instructions (`sha_ni` / `sha2` in /proc/cpuinfo).
//! - `bench_upload setup <file> <key> [<file> <key> ...]`: a fresh emulator account with the
//!   uploads bucket, each file uploaded (streamed) at its key; prints one `BENCH_SETUP {...}`
//!   line: `account`, `bucket`, and temporary credentials of the set-up identity (so that a
//!   tool such as coldsnap can act in that account through `AWS_ENDPOINT_URL`).
//! - `bench_upload run <account> <key>`: one create-image invocation (a manual event for the
//!   object) under its template role, as the runtime builds it; prints one `BENCH_JSON {...}`
//!   line: `wall_s` (the invocation alone: probe, StartSnapshot, every ranged GET and
//!   PutSnapshotBlock, CompleteSnapshot, the wait for `completed`, RegisterImage, the
//!   announcement), `peak_rss_mib` (VmHWM of this process), the outcome with its `transfer`
//!   figures, and the AWS calls by operation.

use aws_sdk_s3::primitives::ByteStream;
use chrono::Utc;
use disk::{BLOCK_SIZE, BlockChecksum, is_all_zero};
use serde_json::{Value, json};
use shared::aws::clients::{self, ClientSettings};
use shared::deadline::Deadline;
use shared::runner::Function;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use support::TestAccount;

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

fn sha(mib: usize) {
    let blocks = (mib << 20) / BLOCK_SIZE;
    // Distinct, non-zero blocks (a zero block ends the zero check at its first word).
    let mut data = vec![0u8; BLOCK_SIZE * 8];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8 | 1;
    }
    let t = Instant::now();
    let mut acc = 0u8;
    for i in 0..blocks {
        let block = &data[(i % 8) * BLOCK_SIZE..(i % 8 + 1) * BLOCK_SIZE];
        let zero = is_all_zero(block);
        let digest = BlockChecksum::of(block);
        acc ^= digest.base64().as_bytes()[0] ^ u8::from(zero);
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes = (blocks * BLOCK_SIZE) as f64;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .any(|l| l.split_whitespace().any(|f| f == "sha_ni" || f == "sha2"));
    println!(
        "block pipeline on one core: {blocks} blocks of 512 KiB ({mib} MiB): zero check + SHA-256 in {secs:.2} s = {:.2} GB/s per core; SHA instructions: {}; {} build (checksum byte {acc})",
        bytes / secs / 1e9,
        if hw { "yes" } else { "no" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    println!(
        "BENCH_JSON {}",
        json!({"mode": "sha", "blocks": blocks, "seconds": secs, "gb_per_s": bytes / secs / 1e9, "sha_instructions": hw, "release": !cfg!(debug_assertions)})
    );
}

async fn setup(pairs: &[String]) -> Result<(), String> {
    let acct = TestAccount::new().await;
    let bucket = format!("uploads-{}", acct.account_id);
    acct.bucket(&bucket, false).await;
    for pair in pairs.chunks(2) {
        let [file, key] = pair else {
            return Err("setup takes <file> <key> pairs".into());
        };
        let body = ByteStream::from_path(file)
            .await
            .map_err(|e| format!("{file}: {e}"))?;
        acct.clients
            .s3
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("upload {file} to s3://{bucket}/{key}: {e:?}"))?;
    }
    // Credentials of the set-up identity for tools outside this process.
    let base = clients::sdk_config(ClientSettings {
        region: Some(support::REGION.into()),
        endpoint_url: Some(acct.endpoint.clone()),
        credentials: Some(aws_sdk_sts::config::Credentials::new(
            "testing", "testing", None, None, "bench",
        )),
    })
    .await;
    let assumed = aws_sdk_sts::Client::new(&base)
        .assume_role()
        .role_arn(format!(
            "arn:aws:iam::{}:role/ami-pipeline-test",
            acct.account_id
        ))
        .role_session_name("bench")
        .send()
        .await
        .map_err(|e| format!("sts:AssumeRole: {e:?}"))?;
    let c = assumed
        .credentials()
        .ok_or("AssumeRole gave no credentials")?;
    println!(
        "BENCH_SETUP {}",
        json!({"account": acct.account_id, "bucket": bucket,
            "access_key_id": c.access_key_id(), "secret_access_key": c.secret_access_key(),
            "session_token": c.session_token()})
    );
    Ok(())
}

async fn run(account: String, key: &str) -> Result<(), String> {
    let acct = TestAccount::for_account(account).await;
    let bucket = format!("uploads-{}", acct.account_id);
    let (topic, _queue) = acct.topic_with_queue("bench").await;
    let env = [
        ("TOPIC_ARN", topic.as_str()),
        ("S3_FORCE_PATH_STYLE", "true"),
        ("AWS_REGION", support::REGION),
    ];
    let lookup = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|_| k.starts_with("FAST_PATH") || k == "UPLOAD_METHOD" || k == "KMS_KEY_ARN")
            .or_else(|| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            })
    };
    let deps: create_image::Deps = support::deps_as(&acct, &lookup, &bucket)
        .await
        .map_err(|e| e.to_string())?;
    let requests = format!(
        "/ami-pipeline-emulator/requests?account_id={}",
        acct.account_id
    );
    let _ = acct.control("DELETE", &requests, None);
    let event = json!({"bucket": bucket, "key": key});
    let t = Instant::now();
    let outcome = deps
        .invoke(
            &event,
            Utc::now(),
            Deadline::after(Duration::from_secs(3600)),
        )
        .await;
    let wall = t.elapsed().as_secs_f64();
    let counts = acct.control("GET", &requests, None);
    let (report, error) = match outcome {
        Ok(r) => (serde_json::to_value(&r).map_err(|e| e.to_string())?, None),
        Err(e) => (Value::Null, Some(e.to_string())),
    };
    let ingested = report["ingested"][0].clone();
    println!(
        "create-image {key}: {} in {wall:.1} s; peak RSS {:.1} MiB; transfer {}",
        ingested["outcome"].as_str().unwrap_or("error"),
        peak_rss_mib(),
        ingested["transfer"]
    );
    println!(
        "BENCH_JSON {}",
        json!({"mode": "run", "key": key, "wall_s": wall, "peak_rss_mib": peak_rss_mib(),
            "outcome": ingested, "requests": counts["requests"], "error": error})
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("sha") => {
            sha(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2048));
            Ok(())
        }
        Some("setup") => setup(&args[1..]).await,
        Some("run") => match (args.get(1), args.get(2)) {
            (Some(account), Some(key)) => run(account.clone(), key).await,
            _ => Err("run <account> <key>".into()),
        },
        _ => Err(
            "usage: bench_upload sha [MiB] | setup <file> <key>... | run <account> <key>".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_upload: {e}");
            ExitCode::FAILURE
        }
    }
}
