//! create-image's fast path against the emulator, through the real handler under its template
//! role: raw, VHD and VMDK uploads become snapshots written with the EBS direct APIs (read back
//! block by block and compared with the raw disk), duplicates, bad input, the ImportSnapshot
//! fallback, and the role's EBS permissions.

use aws_sdk_ebs::primitives::ByteStream;
use create_image::{Deps, IngestOutcome, Output};
use serde_json::{Value, json};
use shared::aws::ec2;
use shared::model::Select;
use shared::plan::lineage;
use support::{TestAccount, disks};

type World = support::World<Deps>;

async fn world(env: &[(&str, &str)]) -> World {
    let acct = TestAccount::new().await;
    acct.emulator_config(json!({"import_delay_seconds": 0}));
    let w = World::in_account(acct, env).await;
    w.acct.bucket(&w.bucket, false).await;
    w
}

/// [`world`] with the template's state bucket and `STATE_BUCKET` (announcement claims).
async fn world_with_claims() -> World {
    let acct = TestAccount::new().await;
    let state = support::roles::state_bucket_name(&acct.account_id);
    acct.bucket(&state, false).await;
    let w = World::in_account(acct, &[("STATE_BUCKET", state.as_str())]).await;
    w.acct.bucket(&w.bucket, false).await;
    w
}

/// The messages of `event_type` among `msgs`.
fn of_type<'a>(msgs: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    msgs.iter()
        .filter(|m| m["event_type"] == event_type)
        .collect()
}

fn manual(bucket: &str, key: &str) -> Value {
    json!({"bucket": bucket, "key": key})
}

async fn run(w: &World, key: &str) -> Output {
    w.invoke(&manual(&w.bucket, key))
        .await
        .unwrap_or_else(|e| panic!("handler failed: {e}"))
}

/// A raw disk with an MBR, a pattern in some blocks, holes (all-zero blocks) between them and a
/// last block that is only partly covered (the size is not a multiple of 512 KiB).
fn patterned_disk() -> Vec<u8> {
    let mut disk = disks::raw_disk(3);
    disk.extend(vec![0u8; 4096]);
    for (i, b) in disk[700_000..900_000].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    let n = disk.len();
    for (i, b) in disk[n - 3000..n - 1000].iter_mut().enumerate() {
        *b = (i % 13) as u8 + 7;
    }
    disk
}

/// The snapshot read back with ListSnapshotBlocks + GetSnapshotBlock (unwritten blocks as
/// zeros), `len` bytes.
async fn read_back(ebs: &aws_sdk_ebs::Client, snapshot_id: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.div_ceil(524_288) * 524_288];
    let mut token = None;
    loop {
        let page = ebs
            .list_snapshot_blocks()
            .snapshot_id(snapshot_id)
            .set_next_token(token)
            .send()
            .await
            .expect("list blocks");
        for b in page.blocks() {
            let index = b.block_index().expect("index");
            let got = ebs
                .get_snapshot_block()
                .snapshot_id(snapshot_id)
                .block_index(index)
                .block_token(b.block_token().expect("token"))
                .send()
                .await
                .expect("get block");
            let data = got.block_data.collect().await.expect("body").into_bytes();
            let at = index as usize * 524_288;
            out[at..at + data.len()].copy_from_slice(&data);
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    out.truncate(len);
    out
}

fn registered(out: &Output) -> (String, String, create_image::Transfer) {
    match &out.ingested[..] {
        [
            IngestOutcome::Registered {
                image_id,
                snapshot_id,
                upload_method,
                transfer,
                ..
            },
        ] => {
            assert_eq!(upload_method.as_str(), "ebs-direct");
            (image_id.clone(), snapshot_id.clone(), *transfer)
        }
        other => panic!("expected the fast path to register, got {other:?}"),
    }
}

/// Uploads `body` at `key`, runs the fast path and checks the AMI, its tags, the message and
/// the content read back against `raw`.
async fn upload_and_prove(w: &World, key: &str, body: Vec<u8>, raw: &[u8], format: &str) {
    w.acct.put(&w.bucket, key, body, &[]).await;
    let out = run(w, key).await;
    let (image_id, snapshot_id, transfer) = registered(&out);
    assert_eq!(transfer.format, format);
    assert!(transfer.blocks_written >= 1, "{transfer:?}");
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.id, image_id);
    assert_eq!(img.snapshot_ids, vec![snapshot_id.clone()]);
    assert_eq!(img.tags[lineage::UPLOAD_METHOD], "ebs-direct");
    assert_eq!(img.tags[lineage::MANAGED], "true");
    assert!(!img.tags.contains_key(lineage::IMPORT_TASK));
    let snap = ec2::describe_snapshot(&w.acct.clients.ec2, &snapshot_id)
        .await
        .expect("snapshot");
    assert_eq!(snap.state.as_deref(), Some("completed"));
    assert_eq!(snap.tags[lineage::UPLOAD_METHOD], "ebs-direct");
    assert_eq!(
        snap.tags[lineage::SOURCE_URI],
        img.tags[lineage::SOURCE_URI]
    );
    assert_eq!(snap.volume_size_gib, Some(1));
    let msgs = w.acct.drain(&w.queue).await;
    let reg: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.registered")
        .collect();
    assert_eq!(reg.len(), 1, "{msgs:?}");
    assert_eq!(reg[0]["upload_method"], "ebs-direct");
    assert_eq!(reg[0]["image_id"], image_id);
    let ebs = aws_sdk_ebs::Client::new(&w.acct.sdk);
    let back = read_back(&ebs, &snapshot_id, raw.len()).await;
    assert!(
        back == raw,
        "the snapshot's content differs from the raw disk"
    );
}

#[tokio::test]
async fn raw_upload_is_written_block_by_block_and_reads_back_equal() {
    let w = world(&[]).await;
    let raw = patterned_disk();
    upload_and_prove(&w, "fast/disk.raw", raw.clone(), &raw, "raw").await;
}

/// A snapshot StartSnapshot just created may not take blocks yet: PutSnapshotBlock answers
/// `ResourceNotFoundException` for a while (awslabs/coldsnap#56). The block is sent again
/// until it is taken, and the upload becomes an image with its content whole and no
/// `image.failed`. Before, the first such answer stopped the write and was reported.
#[tokio::test]
async fn blocks_refused_because_the_new_snapshot_is_not_there_yet_are_sent_again() {
    let w = world(&[]).await;
    w.acct.inject_fault(
        json!({"service": "ebs", "action": "PutSnapshotBlock", "status": 404,
        "code": "ResourceNotFoundException",
        "message": "The snapshot does not exist (the test)", "count": 4}),
    );
    let raw = patterned_disk();
    upload_and_prove(&w, "fast/late.raw", raw.clone(), &raw, "raw").await;
    let calls = w.acct.requests();
    let puts = calls["ebs:PutSnapshotBlock"].as_u64().unwrap_or_default();
    assert!(puts > 4, "the refused blocks were sent again: {calls}");
}

/// A URI longer than the EBS direct API's 255-character tag values and description (EC2 allows
/// 256): StartSnapshot would answer ValidationException, so both are cut to 255.
#[tokio::test]
async fn an_upload_with_a_very_long_key_takes_the_fast_path() {
    let w = world(&[]).await;
    let raw = patterned_disk();
    let key = format!("fast/{}.raw", "d".repeat(300));
    upload_and_prove(&w, &key, raw.clone(), &raw, "raw").await;
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    let uri = &images[0].tags[lineage::SOURCE_URI];
    assert_eq!(uri.chars().count(), lineage::MAX_EBS_TAG_VALUE, "{uri}");
    assert!(uri.starts_with(&format!("s3://{}/fast/", w.bucket)) && uri.contains('…'));
}

#[tokio::test]
async fn vmdk_and_vhd_take_the_fast_path_with_content_proven() {
    let mut raw = disks::raw_disk(4);
    let pattern = patterned_disk();
    raw[..pattern.len()].copy_from_slice(&pattern);
    let w = world(&[]).await;
    let vmdk = disks::convert(&raw, "vmdk");
    upload_and_prove(&w, "v/disk.vmdk", vmdk, &raw, "VMDK stream-optimized").await;
    let w = world(&[]).await;
    let vhd = disks::convert(&raw, "vpc");
    upload_and_prove(&w, "h/disk.vhd", vhd, &raw, "VHD fixed").await;
}

#[tokio::test]
async fn duplicate_concurrent_events_make_one_snapshot_and_one_ami() {
    let w = world(&[]).await;
    let key = "dup/disk.raw";
    w.acct.put(&w.bucket, key, patterned_disk(), &[]).await;
    let (a, b) = tokio::join!(run(&w, key), run(&w, key));
    let outcomes = [&a.ingested[0], &b.ingested[0]];
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, IngestOutcome::Registered { .. })),
        "{outcomes:?}"
    );
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
    let token = &images[0].tags[lineage::SOURCE_TOKEN];
    let snaps = ec2::describe_own_snapshots_filtered(
        &w.acct.clients.ec2,
        &[Select::tag(lineage::SOURCE_TOKEN, [token.as_str()])],
    )
    .await
    .expect("snapshots");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    // A third event finds the image.
    let again = run(&w, key).await;
    assert!(
        matches!(&again.ingested[0], IngestOutcome::AlreadyImported { image_id, .. } if *image_id == images[0].id),
        "{again:?}"
    );
    let msgs = w.acct.drain(&w.queue).await;
    let n = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.registered")
        .count();
    assert_eq!(n, 1, "{msgs:?}");
}

#[tokio::test]
async fn damaged_vmdk_is_rejected_and_its_snapshot_never_completed() {
    let w = world(&[]).await;
    let mut raw = vec![0u8; 6 << 20];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = ((i * 7 + i / 4096) % 255) as u8;
    }
    let mut vmdk = disks::convert(&raw, "vmdk");
    let mid = vmdk.len() / 2;
    for b in &mut vmdk[mid..mid + 8192] {
        *b = 0xFF;
    }
    let key = "bad/disk.vmdk";
    w.acct.put(&w.bucket, key, vmdk, &[]).await;
    let out = run(&w, key).await;
    let problems = match &out.ingested[..] {
        [IngestOutcome::Rejected { problems, .. }] => problems.clone(),
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert!(
        problems[0].starts_with("content: ") && problems[0].contains("offset"),
        "{problems:?}"
    );
    assert!(
        problems[0].contains("deleted, never completed"),
        "{problems:?}"
    );
    let snaps = ec2::describe_own_snapshots_filtered(
        &w.acct.clients.ec2,
        &[Select::tag(lineage::UPLOAD_METHOD, ["ebs-direct"])],
    )
    .await
    .expect("snapshots");
    assert!(snaps.is_empty(), "{snaps:?}");
    assert!(
        ec2::describe_own_images(&w.acct.clients.ec2, &[])
            .await
            .expect("images")
            .is_empty()
    );
}

/// Settings whose root volume the disk's size cannot have are refused as soon as the probe
/// knows that size: no snapshot is started, nothing imported, and the refusal says what to
/// change. Before, the whole disk was written (or imported) first, and IOPS beyond what the
/// size takes reached RegisterImage: an image that could launch no instance.
#[tokio::test]
async fn settings_the_disks_size_cannot_take_are_refused_before_anything_is_written() {
    let w = world(&[]).await;
    let cases = [
        (
            "fast/iops.raw",
            disks::raw_disk(1),
            json!({"iops": "16000"}),
            "iops: 16,000 IOPS is more than a gp3 volume of 1 GiB takes: at most 3,000 (500 IOPS per GiB); set volume-size to at least 32 GiB, or iops to at most 3,000; the image was not registered",
        ),
        (
            "fast/io1.raw",
            disks::raw_disk(1),
            json!({"volume-type": "io1", "iops": "1000"}),
            "iops: 1,000 IOPS is more than an io1 volume of 4 GiB takes: at most 200 (50 IOPS per GiB); set volume-size to at least 20 GiB",
        ),
        (
            "fast/small.vmdk",
            disks::empty_vmdk(2),
            json!({"volume-size": "1"}),
            "volume-size 1 GiB is smaller than the imported disk (2 GiB)",
        ),
    ];
    for (key, body, settings, want) in cases {
        w.acct.put(&w.bucket, key, body, &[]).await;
        let mut event = manual(&w.bucket, key);
        if let (Some(e), Some(s)) = (event.as_object_mut(), settings.as_object()) {
            e.extend(s.clone());
        }
        let out = w
            .invoke(&event)
            .await
            .unwrap_or_else(|e| panic!("{key}: handler failed: {e}"));
        match &out.ingested[..] {
            [IngestOutcome::Rejected { problems, .. }] => {
                assert_eq!(problems.len(), 1, "{key}: {problems:?}");
                assert!(problems[0].starts_with(want), "{key}: {problems:?}");
            }
            other => panic!("{key}: expected a rejection, got {other:?}"),
        }
        let tags = shared::aws::s3::get_tags(
            &w.acct.clients.s3,
            &shared::model::ObjectRef {
                bucket: w.bucket.clone(),
                key: key.into(),
                version_id: None,
            },
        )
        .await
        .expect("object tags");
        assert_eq!(tags[lineage::OBJECT_STATUS], "rejected", "{key}: {tags:?}");
    }
    let snaps = ec2::describe_own_snapshots_filtered(&w.acct.clients.ec2, &[])
        .await
        .expect("snapshots");
    assert!(snaps.is_empty(), "nothing written: {snaps:?}");
    let tasks = w
        .acct
        .clients
        .ec2
        .describe_import_snapshot_tasks()
        .send()
        .await
        .expect("tasks");
    assert!(tasks.import_snapshot_tasks().is_empty(), "nothing imported");
    let msgs = w.acct.drain(&w.queue).await;
    let failed = of_type(&msgs, "image.failed");
    assert_eq!(failed.len(), 3, "{msgs:#?}");
}

#[tokio::test]
async fn the_fallback_is_importsnapshot_and_says_why() {
    let w = world(&[("UPLOAD_METHOD", "import-snapshot")]).await;
    w.acct
        .put(&w.bucket, "f/disk.raw", disks::raw_disk(1), &[])
        .await;
    let out = run(&w, "f/disk.raw").await;
    match &out.ingested[..] {
        [
            IngestOutcome::ImportStarted {
                upload_method,
                fallback_reason,
                ..
            },
        ] => {
            assert_eq!(upload_method.as_str(), "import-snapshot");
            assert_eq!(fallback_reason, "UPLOAD_METHOD=import-snapshot");
        }
        other => panic!("expected ImportSnapshot, got {other:?}"),
    }
    // A disk larger than FAST_PATH_MAX_GIB (a sparse 2 GiB raw is 2 GiB of object here, so
    // the bound is shown with a 1 GiB limit and a disk just over it).
    let w = world(&[("FAST_PATH_MAX_GIB", "1")]).await;
    let mut big = disks::raw_disk(1);
    big.resize((1 << 30) + 4096, 0);
    w.acct.put(&w.bucket, "big/disk.raw", big, &[]).await;
    let out = run(&w, "big/disk.raw").await;
    match &out.ingested[..] {
        [
            IngestOutcome::ImportStarted {
                fallback_reason, ..
            },
        ] => {
            assert!(
                fallback_reason.contains("larger than FAST_PATH_MAX_GIB=1"),
                "{fallback_reason}"
            );
        }
        other => panic!("expected ImportSnapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn a_variant_the_decoder_does_not_take_becomes_an_image_through_importsnapshot() {
    // A hosted (monolithicSparse) VMDK: VM Import takes it, the stream decoder does not. The
    // upload still becomes an AMI, and the choice is visible in the output, the image's tags
    // and image.registered.
    let w = world(&[]).await;
    let vmdk = disks::convert(&disks::raw_disk(2), "vmdk-monolithic");
    w.acct.put(&w.bucket, "hosted/disk.vmdk", vmdk, &[]).await;
    let out = run(&w, "hosted/disk.vmdk").await;
    match &out.ingested[..] {
        [
            IngestOutcome::ImportStarted {
                upload_method,
                fallback_reason,
                ..
            },
        ] => {
            assert_eq!(upload_method.as_str(), "import-snapshot");
            assert!(
                fallback_reason
                    .starts_with("the stream decoder does not take it (VMDK sparse extent")
                    && fallback_reason.contains("monolithicSparse"),
                "{fallback_reason}"
            );
        }
        other => panic!("expected ImportSnapshot, got {other:?}"),
    }
    // The import completes (the emulator's VM Import takes the file) and a sweep registers it.
    let mut image = None;
    for _ in 0..40 {
        w.invoke(&json!({"sweep": true})).await.expect("sweep");
        image = ec2::describe_own_images(&w.acct.clients.ec2, &[])
            .await
            .expect("images")
            .into_iter()
            .next();
        if image.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let image = image.expect("registered");
    assert_eq!(image.tags["ami-pipeline:upload-method"], "import-snapshot");
    let msgs = w.acct.drain(&w.queue).await;
    let registered: Vec<_> = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.registered")
        .collect();
    assert_eq!(registered.len(), 1, "{msgs:#?}");
    assert_eq!(registered[0]["upload_method"], "import-snapshot");
}

#[tokio::test]
async fn a_throttled_announcement_is_retried_not_lost() {
    // SNS's Throttled (429) is not retried by the SDK; two of them on image.registered must
    // not fail the upload after its image exists (found by the chaos harness).
    let w = world(&[]).await;
    w.acct
        .put(&w.bucket, "thr/disk.raw", disks::raw_disk(1), &[])
        .await;
    w.acct
        .inject_fault(json!({"service": "sns", "action": "Publish", "status": 429,
        "code": "Throttled", "message": "Rate exceeded", "count": 2}));
    let out = run(&w, "thr/disk.raw").await;
    assert_eq!(out.ingested.len(), 1, "{out:?}");
    let msgs = w.acct.drain(&w.queue).await;
    let registered = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.registered")
        .count();
    assert_eq!(registered, 1, "{msgs:#?}");
    w.acct.clear_faults();
}

/// An SNS failure between RegisterImage and `image.registered` (SNS 500s past the SDK's five
/// attempts) used to report the upload `image.failed` although its AMI existed, and the
/// event's retry found the image and announced nothing: `image.registered` was lost for good
/// (found by the chaos harness). Now the transient failure fails the invocation without
/// `image.failed`, and the retry, finding no record that it was sent, sends it, once.
#[tokio::test]
async fn an_announcement_lost_after_registration_is_sent_by_the_retry() {
    let w = world_with_claims().await;
    let key = "lost/disk.raw";
    w.acct.put(&w.bucket, key, disks::raw_disk(1), &[]).await;
    // The five attempts of the fast path's own send (the sweep after an ingest does not
    // repair announcements: the schedule's does).
    w.acct
        .inject_fault(json!({"service": "sns", "action": "Publish", "status": 500,
        "code": "InternalError", "message": "injected", "count": 5}));
    let first = w.invoke(&manual(&w.bucket, key)).await;
    let err = first.expect_err("the announcement failed: the invocation fails, to be retried");
    assert!(err.to_string().contains("sns:Publish"), "{err}");
    w.acct.clear_faults();
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(images.len(), 1, "the image exists: {images:?}");

    let retry = run(&w, key).await;
    assert!(
        matches!(&retry.ingested[0], IngestOutcome::AlreadyImported { image_id, announced: true, .. } if *image_id == images[0].id),
        "{retry:?}"
    );
    // Later deliveries find it sent.
    let again = run(&w, key).await;
    assert!(
        matches!(
            &again.ingested[0],
            IngestOutcome::AlreadyImported {
                announced: false,
                ..
            }
        ),
        "{again:?}"
    );
    let msgs = w.acct.drain(&w.queue).await;
    let registered = of_type(&msgs, "image.registered");
    assert_eq!(registered.len(), 1, "{msgs:#?}");
    assert_eq!(registered[0]["image_id"], images[0].id.as_str());
    assert_eq!(registered[0]["upload_method"], "ebs-direct");
    assert_eq!(
        registered[0]["lineage"]["ami-pipeline:upload-method"],
        "ebs-direct"
    );
    assert!(of_type(&msgs, "image.failed").is_empty(), "{msgs:#?}");
}

/// With claims, overlapping deliveries of one upload (one registers, the others adopt its
/// image or find it made) announce it exactly once.
#[tokio::test]
async fn four_overlapping_deliveries_announce_once_with_claims() {
    let w = world_with_claims().await;
    let key = "dup4/disk.raw";
    w.acct.put(&w.bucket, key, patterned_disk(), &[]).await;
    let (a, b, c, d) = tokio::join!(run(&w, key), run(&w, key), run(&w, key), run(&w, key));
    let registered_by = [&a, &b, &c, &d]
        .iter()
        .filter(|o| matches!(o.ingested[0], IngestOutcome::Registered { .. }))
        .count();
    assert!(registered_by >= 1, "{a:?} {b:?} {c:?} {d:?}");
    let again = run(&w, key).await;
    assert!(
        matches!(
            &again.ingested[0],
            IngestOutcome::AlreadyImported {
                announced: false,
                ..
            }
        ),
        "{again:?}"
    );
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
}

/// Runs the fast path on `key` with every PutSnapshotBlock refused: the invocation fails and
/// leaves its snapshot pending. Returns the snapshot's id.
async fn write_refused(w: &World, key: &str) -> String {
    w.acct.inject_fault(
        json!({"service": "ebs", "action": "PutSnapshotBlock", "status": 403,
        "code": "AccessDeniedException", "message": "injected"}),
    );
    let err = w
        .invoke(&manual(&w.bucket, key))
        .await
        .expect_err("the write was refused");
    assert!(err.to_string().contains("ebs:PutSnapshotBlock"), "{err}");
    w.acct.clear_faults();
    let pending =
        ec2::describe_own_snapshots_filtered(&w.acct.clients.ec2, &[Select::state(["pending"])])
            .await
            .expect("snapshots");
    pending
        .iter()
        .find(|s| s.tags[lineage::SOURCE_URI].ends_with(key))
        .map(|s| s.id.clone())
        .expect("the upload's pending snapshot")
}

/// Moves the snapshot's last activity two hours back: AWS's `Timeout` has cancelled it.
fn time_out(w: &World, snapshot_id: &str) {
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let aged = w.acct.control(
        "POST",
        "/ami-pipeline-emulator/ebs-snapshot-activity",
        Some(json!({"region": "us-east-1", "snapshot_id": snapshot_id, "last_activity": two_hours_ago})),
    );
    assert_eq!(aged["status"], "error", "{aged}");
}

/// The scheduled sweep with the clock at `at` (a later schedule run).
async fn sweep_at(
    w: &World,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Output, create_image::InvocationError> {
    create_image::handle(
        create_image::Command::Sweep,
        &w.deps,
        at,
        support::deadline(),
    )
    .await
}

/// A stopped upload (its writer `started` then) is left alone by the scheduled sweep while its
/// writer could still be at work (5 minutes later: no `resume` or `continue` step), and resumed
/// by the first sweep after a lease: returns that one `resume` step, which did not fail.
async fn resumed_after_the_lease(
    w: &World,
    started: chrono::DateTime<chrono::Utc>,
) -> create_image::StepReport {
    let soon = sweep_at(w, started + chrono::Duration::minutes(5))
        .await
        .expect("sweep while the writer could be at work");
    assert!(steps_of(&soon, "resume").is_empty(), "{soon:?}");
    assert!(steps_of(&soon, "continue").is_empty(), "{soon:?}");
    let later = sweep_at(
        w,
        started + create_image::LEASE + chrono::Duration::minutes(1),
    )
    .await
    .expect("sweep");
    let steps = steps_of(&later, "resume");
    assert_eq!(steps.len(), 1, "{later:?}");
    assert!(!steps[0].failed, "{:?}", steps[0]);
    steps[0].clone()
}

/// The sweep's steps of `action`.
fn steps_of<'a>(out: &'a Output, action: &str) -> Vec<&'a create_image::StepReport> {
    out.sweep
        .steps
        .iter()
        .filter(|s| s.action == action)
        .collect()
}

/// A fast-path upload whose invocation stopped before completing its snapshot, and whose event
/// never came again, is finished by the sweep once AWS has cancelled the snapshot: ingested
/// again through ImportSnapshot (the upload's ClientToken would answer the dead snapshot),
/// registered, announced once; an upload whose object is gone meanwhile is reported once and
/// its dead snapshot deleted.
#[tokio::test]
async fn the_sweep_finishes_an_abandoned_fast_path_upload_through_importsnapshot() {
    let acct = TestAccount::new().await;
    acct.emulator_config(json!({"import_delay_seconds": 0}));
    let w = World::in_account(acct, &[]).await;
    w.acct.bucket(&w.bucket, false).await;
    w.acct
        .put(&w.bucket, "gone/disk.raw", disks::raw_disk(1), &[])
        .await;
    w.acct
        .put(&w.bucket, "stuck/disk.raw", disks::raw_disk(1), &[])
        .await;
    // Every invocation sweeps: both writes fail before either snapshot times out.
    let dead_gone = write_refused(&w, "gone/disk.raw").await;
    let dead = write_refused(&w, "stuck/disk.raw").await;
    w.acct
        .clients
        .s3
        .delete_object()
        .bucket(&w.bucket)
        .key("gone/disk.raw")
        .send()
        .await
        .expect("delete the object");
    time_out(&w, &dead_gone);
    time_out(&w, &dead);
    w.acct.drain(&w.queue).await;

    let first = w.invoke(&json!({"sweep": true})).await.expect("sweep");
    let resumed = steps_of(&first, "resume");
    assert_eq!(resumed.len(), 2, "{first:?}");
    let stuck = resumed
        .iter()
        .find(|s| s.task_id == dead)
        .expect("the stuck upload resumed");
    assert!(
        stuck.result.contains("import-started") && stuck.result.contains("ended in error"),
        "{stuck:?}"
    );
    let gone = resumed
        .iter()
        .find(|s| s.task_id == dead_gone)
        .expect("the gone upload resumed");
    assert!(gone.result.contains("rejected"), "{gone:?}");
    let left =
        ec2::describe_own_snapshots_filtered(&w.acct.clients.ec2, &[Select::state(["error"])])
            .await
            .expect("snapshots");
    assert_eq!(
        left.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![dead.as_str()],
        "the gone upload's dead snapshot is deleted, the other kept for cleanup"
    );

    // Later sweeps register the import and resume nothing again.
    let mut image = None;
    for _ in 0..40 {
        let out = w.invoke(&json!({"sweep": true})).await.expect("sweep");
        assert!(steps_of(&out, "resume").is_empty(), "{out:?}");
        image = ec2::describe_own_images(&w.acct.clients.ec2, &[])
            .await
            .expect("images")
            .into_iter()
            .next();
        if image.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let image = image.expect("the abandoned upload becomes an image");
    assert_eq!(image.tags[lineage::UPLOAD_METHOD], "import-snapshot");
    assert!(image.tags[lineage::SOURCE_URI].ends_with("stuck/disk.raw"));
    let out = w.invoke(&json!({"sweep": true})).await.expect("sweep");
    assert!(steps_of(&out, "resume").is_empty(), "{out:?}");
    let msgs = w.acct.drain(&w.queue).await;
    let registered = of_type(&msgs, "image.registered");
    assert_eq!(registered.len(), 1, "{msgs:#?}");
    let failed = of_type(&msgs, "image.failed");
    assert_eq!(failed.len(), 1, "{msgs:#?}");
    assert!(
        failed[0]["source_uri"]
            .as_str()
            .is_some_and(|u| u.ends_with("gone/disk.raw")),
        "{failed:#?}"
    );
}

/// Every delivery of an upload stopped after CompleteSnapshot and before RegisterImage (here:
/// RegisterImage refused once, and the event's retries spent): a `completed` snapshot from
/// which no image was made. The scheduled sweep leaves it alone while its writer could still be
/// at work (a lease), then ingests the upload again: the fast path registers the completed
/// snapshot without writing a block, announces it once (chaos seed 603: the snapshot was left
/// until cleanup's orphan sweep deleted it).
#[tokio::test]
async fn a_completed_snapshot_never_registered_is_registered_by_the_sweep() {
    let w = world_with_claims().await;
    let key = "unregistered/disk.raw";
    w.acct.put(&w.bucket, key, patterned_disk(), &[]).await;
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "RegisterImage", "status": 499,
        "code": "InvocationCrashed", "message": "the invocation stops before this call", "count": 1}));
    let started = chrono::Utc::now();
    w.invoke(&manual(&w.bucket, key))
        .await
        .expect_err("the registration stopped");
    w.acct.clear_faults();
    a_crash_leaves_no_deferral_record(&w).await;
    let completed =
        ec2::describe_own_snapshots_filtered(&w.acct.clients.ec2, &[Select::state(["completed"])])
            .await
            .expect("snapshots");
    assert_eq!(completed.len(), 1, "{completed:?}");
    let snapshot_id = completed[0].id.clone();
    assert!(
        ec2::describe_own_images(&w.acct.clients.ec2, &[])
            .await
            .expect("images")
            .is_empty()
    );
    w.acct.reset_requests();
    let step = resumed_after_the_lease(&w, started).await;
    assert_eq!(step.task_id, snapshot_id);
    assert!(step.result.contains("completed but no image"), "{step:?}");
    assert_eq!(
        blocks_put(&w),
        0,
        "the completed snapshot is not written again"
    );
    one_image_of(&w, &snapshot_id, &patterned_disk()).await;
    // Done: the next sweep has nothing to resume, the snapshot is the image's.
    let again = sweep_at(
        &w,
        started + create_image::LEASE + chrono::Duration::minutes(20),
    )
    .await
    .expect("sweep");
    assert!(steps_of(&again, "resume").is_empty(), "{again:?}");
}

/// A manual invoke whose snapshot is written and completed and whose registration EC2 then
/// refuses (here the name it asks for is another image's) is rejected once, and the sweep leaves
/// its completed snapshot alone: taken up again after a lease it became an image with the
/// object's own settings, not the invoke's (or the refusal was reported twice). A new invoke
/// with a free name registers the same snapshot without writing it again.
#[tokio::test]
async fn a_refused_registration_is_not_taken_up_by_the_sweep_with_other_settings() {
    let w = world_with_claims().await;
    let key = "refused/disk.raw";
    w.acct.put(&w.bucket, key, patterned_disk(), &[]).await;
    let (other, _) = support::fixtures::image(&w.acct.clients.ec2, "taken-by-another", &[]).await;
    let started = chrono::Utc::now();
    let mut event = manual(&w.bucket, key);
    event["name"] = json!("taken-by-another");
    let out = w.invoke(&event).await.expect("handled");
    assert!(
        matches!(&out.ingested[..], [IngestOutcome::Rejected { problems, .. }]
            if problems.iter().any(|p| p.contains("taken-by-another"))),
        "{out:?}"
    );
    let later = sweep_at(
        &w,
        started + create_image::LEASE + chrono::Duration::minutes(1),
    )
    .await
    .expect("sweep");
    assert!(steps_of(&later, "resume").is_empty(), "{later:?}");
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(
        images.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [other.as_str()]
    );
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(of_type(&msgs, "image.failed").len(), 1, "{msgs:#?}");
    assert!(of_type(&msgs, "image.registered").is_empty(), "{msgs:#?}");
    // The operator invokes again with a free name: the completed snapshot becomes that image.
    w.acct.reset_requests();
    event["name"] = json!("the-operators-name");
    let again = w.invoke(&event).await.expect("registered");
    let (image_id, _, transfer) = registered(&again);
    assert!(transfer.reused, "{again:?}");
    assert_eq!(blocks_put(&w), 0, "not written again");
    let image = ec2::describe_own_image(&w.acct.clients.ec2, &image_id)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(image.name, "the-operators-name");
}

/// A writer that stopped right after its lease was created (the PutObject took effect, then the
/// invocation died), before its first checkpoint: every later delivery finds the lease held and
/// answers `in-progress`, and with no checkpoint the sweep's continuation has nothing to go on.
/// Once the lease has expired, the scheduled sweep ingests the upload again and the fast path
/// writes the snapshot from the start: completed, content equal, one AMI, one announcement
/// (chaos seed 504: it waited for AWS's 60-minute timeout, then ImportSnapshot).
#[tokio::test]
async fn a_write_stopped_before_its_first_checkpoint_is_restarted_by_the_sweep_once_the_lease_expires()
 {
    let w = world_with_claims().await;
    let key = "nocheckpoint/disk.raw";
    let raw = noisy_disk(12, 5);
    w.acct.put(&w.bucket, key, raw.clone(), &[]).await;
    w.acct.inject_fault(
        json!({"service": "s3", "action": "PutObject", "status": 499,
        "code": "InvocationCrashed", "message": "the call took effect; the invocation stops here",
        "resource": ".lease", "count": 1, "after": true}),
    );
    let started = chrono::Utc::now();
    w.invoke(&manual(&w.bucket, key))
        .await
        .expect_err("the writer stopped");
    w.acct.clear_faults();
    let again = run(&w, key).await;
    assert!(
        matches!(&again.ingested[0], IngestOutcome::InProgress { .. }),
        "{again:?}"
    );
    let step = resumed_after_the_lease(&w, started).await;
    assert!(
        step.result.contains("before its first checkpoint")
            && step.result.contains("\"outcome\":\"registered\""),
        "{step:?}"
    );
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
    one_image_of(&w, &images[0].snapshot_ids[0], &raw).await;
}

/// Whether `snapshot_id` is encrypted, and with which key (DescribeSnapshots, as AWS reports).
async fn encryption_of(w: &World, snapshot_id: &str) -> (bool, Option<String>) {
    let out = w
        .acct
        .clients
        .ec2
        .describe_snapshots()
        .snapshot_ids(snapshot_id)
        .send()
        .await
        .expect("describe snapshot");
    let snap = &out.snapshots()[0];
    (
        snap.encrypted().unwrap_or(false),
        snap.kms_key_id().map(str::to_owned),
    )
}

/// `KMS_KEY_ARN` encrypts what both paths make with that key. The fast path then writes the
/// disk's all-zero blocks too (an unwritten block of an encrypted snapshot does not read as
/// zeros), and the content still reads back equal.
#[tokio::test]
async fn a_chosen_kms_key_encrypts_both_paths_and_zero_blocks_are_written() {
    let acct = TestAccount::new().await;
    let key = format!(
        "arn:aws:kms:us-east-1:{}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        acct.account_id
    );
    let w = World::in_account(acct, &[("KMS_KEY_ARN", key.as_str())]).await;
    w.acct.bucket(&w.bucket, false).await;
    let raw = patterned_disk();
    w.acct
        .put(&w.bucket, "enc/disk.raw", raw.clone(), &[])
        .await;
    let (_, snapshot_id, transfer) = registered(&run(&w, "enc/disk.raw").await);
    assert!(transfer.encrypted, "{transfer:?}");
    assert_eq!(transfer.zero_blocks_skipped, 0, "{transfer:?}");
    assert_eq!(
        transfer.blocks_written,
        raw.len().div_ceil(524_288) as u64,
        "every block of the disk written: {transfer:?}"
    );
    assert_eq!(
        encryption_of(&w, &snapshot_id).await,
        (true, Some(key.clone()))
    );
    let ebs = aws_sdk_ebs::Client::new(&w.acct.sdk);
    assert!(read_back(&ebs, &snapshot_id, raw.len()).await == raw);

    // Unencrypted, the same disk's zero blocks are skipped.
    let plain = world(&[]).await;
    plain
        .acct
        .put(&plain.bucket, "p/disk.raw", raw.clone(), &[])
        .await;
    let (_, plain_snapshot, plain_transfer) = registered(&run(&plain, "p/disk.raw").await);
    assert!(!plain_transfer.encrypted);
    assert!(plain_transfer.zero_blocks_skipped > 0, "{plain_transfer:?}");
    assert_eq!(encryption_of(&plain, &plain_snapshot).await, (false, None));

    // ImportSnapshot (a variant only VM Import takes) encrypts with the same key.
    let vmdk = disks::convert(&disks::raw_disk(2), "vmdk-monolithic");
    w.acct.put(&w.bucket, "enc/hosted.vmdk", vmdk, &[]).await;
    let out = run(&w, "enc/hosted.vmdk").await;
    assert!(
        matches!(&out.ingested[..], [IngestOutcome::ImportStarted { .. }]),
        "{out:?}"
    );
    let mut imported = None;
    for _ in 0..40 {
        imported = ec2::describe_import_tasks(&w.acct.clients.ec2, &[])
            .await
            .expect("tasks")
            .into_iter()
            .find_map(|t| t.snapshot_id);
        if imported.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let imported = imported.expect("the import completes");
    assert_eq!(encryption_of(&w, &imported).await, (true, Some(key)));
}

/// A `KMS_KEY_ARN` that is not a key ARN of the function's region is refused at start, with
/// the reason.
#[test]
fn a_kms_key_of_another_region_or_an_alias_is_refused() {
    let env = |value: &'static str| {
        move |k: &str| match k {
            "TOPIC_ARN" => Some("arn:aws:sns:us-east-1:111122223333:t".to_owned()),
            "AWS_REGION" => Some("us-east-1".to_owned()),
            "KMS_KEY_ARN" => Some(value.to_owned()),
            _ => None,
        }
    };
    let other = create_image::Config::from_lookup(&env(
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ))
    .expect_err("a key of another region");
    assert!(
        other.to_string().contains("KMS_KEY_ARN")
            && other.to_string().contains("a key of eu-west-1"),
        "{other}"
    );
    let alias =
        create_image::Config::from_lookup(&env("alias/ami-pipeline")).expect_err("an alias");
    assert!(
        alias.to_string().contains("is not a KMS key ARN"),
        "{alias}"
    );
    let ok = create_image::Config::from_lookup(&env(
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ))
    .expect("a key of this region");
    assert!(ok.kms_key_arn.is_some());
}

#[tokio::test]
async fn the_role_writes_only_managed_snapshots() {
    let w = world(&[]).await;
    let role_ebs = &w.deps.clients.ebs;
    // Not tagged managed at creation: refused.
    let denied = role_ebs
        .start_snapshot()
        .volume_size(1)
        .send()
        .await
        .expect_err("untagged StartSnapshot must be denied");
    assert_eq!(
        aws_sdk_ebs::error::ProvideErrorMetadata::code(&denied),
        Some("AccessDeniedException"),
        "{denied:?}"
    );
    // A snapshot someone else started, untagged: the role may not write to it.
    let admin = aws_sdk_ebs::Client::new(&w.acct.sdk);
    let foreign = admin
        .start_snapshot()
        .volume_size(1)
        .send()
        .await
        .expect("start as admin");
    let data = vec![1u8; 524_288];
    let sum = disk::BlockChecksum::of(&data).base64();
    let err = role_ebs
        .put_snapshot_block()
        .snapshot_id(foreign.snapshot_id().expect("id"))
        .block_index(0)
        .data_length(524_288)
        .block_data(ByteStream::from(data))
        .checksum(sum)
        .checksum_algorithm(aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .send()
        .await
        .expect_err("writing a foreign snapshot must be denied");
    assert_eq!(
        aws_sdk_ebs::error::ProvideErrorMetadata::code(&err),
        Some("AccessDeniedException"),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A write too large for one invocation continues in the next one (issue #18).
// ---------------------------------------------------------------------------------------------

const BLOCK: usize = 524_288;
/// create-image's ranged GETs (fast.rs PART_BYTES).
const PART: usize = 8 << 20;
/// Time the handler has before its deadline's safety margin: ample for the first two parts.
/// (On a loaded machine too: the emulator holds a request for at most 30 s.)
const GRACE: std::time::Duration = std::time::Duration::from_secs(12);
/// How long the emulator holds the read of the third part: past the grace, so the handler
/// stops there (deterministically: before that part, every check finds time left; after it,
/// none).
const SLOW_SECONDS: u64 = 20;

/// A raw disk of `mib` MiB of bytes that do not compress (its VMDK is as large, several
/// parts), with all-zero blocks 20..24 (skipped, never written).
fn noisy_disk(mib: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let mut disk = vec![0u8; mib << 20];
    for chunk in disk.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    disk[20 * BLOCK..24 * BLOCK].fill(0);
    disk
}

fn nonzero_blocks(raw: &[u8]) -> u64 {
    raw.chunks(BLOCK)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64
}

/// The proof after a write: `snapshot_id` is completed and reads back equal to `raw`, the
/// account's one image is made of it, and it was announced once, with no `image.failed`.
async fn one_image_of(w: &World, snapshot_id: &str, raw: &[u8]) {
    let snap = ec2::describe_snapshot(&w.acct.clients.ec2, snapshot_id)
        .await
        .expect("snapshot");
    assert_eq!(snap.state.as_deref(), Some("completed"));
    let ebs = aws_sdk_ebs::Client::new(&w.acct.sdk);
    assert!(
        read_back(&ebs, snapshot_id, raw.len()).await == raw,
        "the snapshot's content differs from the raw disk"
    );
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].snapshot_ids, vec![snapshot_id.to_owned()]);
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    assert!(of_type(&msgs, "image.failed").is_empty(), "{msgs:#?}");
}

/// PutSnapshotBlock requests the account made so far (the emulator's request counter).
fn blocks_put(w: &World) -> u64 {
    w.acct.requests()["ebs:PutSnapshotBlock"]
        .as_u64()
        .unwrap_or(0)
}

fn ingest_of(w: &World, key: &str) -> create_image::Command {
    create_image::Command::Ingest {
        items: vec![create_image::IngestItem {
            object: shared::model::ObjectRef {
                bucket: w.bucket.clone(),
                key: key.to_owned(),
                version_id: None,
            },
            overrides: std::collections::BTreeMap::new(),
        }],
        ignored: vec![],
    }
}

/// Runs the fast path on `key` with the read of its third part held past the deadline: the
/// invocation writes the first parts' blocks, checkpoints and fails (to be delivered again).
/// Returns the pending snapshot's id.
async fn stop_part_way(w: &World, key: &str) -> String {
    w.acct
        .inject_fault(json!({"service": "s3", "action": "GetObject",
        "resource": format!("bytes={}-", 2 * PART), "delay_seconds": SLOW_SECONDS, "count": 1}));
    let deadline = shared::deadline::Deadline::after(shared::deadline::SAFETY_MARGIN + GRACE);
    let err = create_image::handle(ingest_of(w, key), &w.deps, chrono::Utc::now(), deadline)
        .await
        .expect_err("the deadline stops the write");
    w.acct.clear_faults();
    let text = err.to_string();
    assert!(
        text.contains("the Lambda deadline is near")
            && text.contains("checkpointed in s3://")
            && text.contains("the sweep continues"),
        "{text}"
    );
    let pending =
        ec2::describe_own_snapshots_filtered(&w.acct.clients.ec2, &[Select::state(["pending"])])
            .await
            .expect("snapshots");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(
        of_type(&w.acct.drain(&w.queue).await, "image.failed").is_empty(),
        "a stop is not a failure"
    );
    pending[0].id.clone()
}

/// How the stopped write is continued.
#[derive(Clone, Copy, Debug)]
enum Next {
    /// The event delivered again.
    Redelivery,
    /// The schedule's sweep (the event's retries ran out).
    Sweep,
}

/// Continues the stopped write of `key` (`next`): the redelivered event's output, or the
/// sweep's, whose one `continue` step must name `snapshot_id` and have registered it.
async fn continue_stopped(w: &World, key: &str, snapshot_id: &str, next: Next) -> Output {
    match next {
        Next::Redelivery => create_image::handle(
            ingest_of(w, key),
            &w.deps,
            chrono::Utc::now(),
            support::deadline(),
        )
        .await
        .unwrap_or_else(|e| panic!("the redelivered event fails: {e}")),
        Next::Sweep => {
            let out = w.invoke(&json!({"sweep": true})).await.expect("sweep");
            let steps = steps_of(&out, "continue");
            assert_eq!(steps.len(), 1, "{out:?}");
            assert_eq!(steps[0].task_id, snapshot_id);
            assert!(
                steps[0].result.contains("\"outcome\":\"registered\"") && !steps[0].failed,
                "{:?}",
                steps[0]
            );
            out
        }
    }
}

/// Uploads `raw` as `format` (qemu-img), stops the write part way by the deadline, continues it
/// (`next`), and proves: one completed snapshot (the emulator checked the LINEAR aggregate and
/// the block count at CompleteSnapshot), content equal to the raw disk, every block written
/// once, one AMI, one image.registered.
async fn stop_and_continue(format: &str, next: Next, want_format: &str) {
    let w = world_with_claims().await;
    let raw = noisy_disk(40, format.len() as u64);
    let (key, body) = match format {
        "raw" => ("resume/disk.raw".to_owned(), raw.clone()),
        "vpc" | "vpc-dynamic" => ("resume/disk.vhd".to_owned(), disks::convert(&raw, format)),
        _ => ("resume/disk.vmdk".to_owned(), disks::convert(&raw, format)),
    };
    assert!(body.len() > 3 * PART, "the upload spans several parts");
    w.acct.put(&w.bucket, &key, body, &[]).await;
    w.acct.reset_requests();
    let snapshot_id = stop_part_way(&w, &key).await;
    let first = blocks_put(&w);
    let total = nonzero_blocks(&raw);
    assert!(0 < first && first < total, "part way: {first} of {total}");

    let out = continue_stopped(&w, &key, &snapshot_id, next).await;
    if let Next::Redelivery = next {
        let (_, snap, transfer) = registered(&out);
        assert_eq!(snap, snapshot_id);
        assert_eq!(transfer.format, want_format);
        assert_eq!(transfer.blocks_resumed, first, "{transfer:?}");
        assert_eq!(transfer.blocks_written + transfer.blocks_resumed, total);
    }
    assert_eq!(blocks_put(&w), total, "every block written once");
    one_image_of(&w, &snapshot_id, &raw).await;
    // Nothing left to continue.
    let again = w.invoke(&json!({"sweep": true})).await.expect("sweep");
    assert!(steps_of(&again, "continue").is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_raw_write_stopped_by_the_deadline_continues_in_the_redelivered_event() {
    stop_and_continue("raw", Next::Redelivery, "raw").await;
}

#[tokio::test]
async fn a_raw_write_stopped_by_the_deadline_is_continued_by_the_sweep() {
    stop_and_continue("raw", Next::Sweep, "raw").await;
}

#[tokio::test]
async fn a_fixed_vhd_write_stopped_by_the_deadline_continues_in_the_redelivered_event() {
    stop_and_continue("vpc", Next::Redelivery, "VHD fixed").await;
}

#[tokio::test]
async fn a_dynamic_vhd_write_stopped_by_the_deadline_continues_in_the_redelivered_event() {
    stop_and_continue("vpc-dynamic", Next::Redelivery, "VHD dynamic").await;
}

#[tokio::test]
async fn a_dynamic_vhd_write_stopped_by_the_deadline_is_continued_by_the_sweep() {
    stop_and_continue("vpc-dynamic", Next::Sweep, "VHD dynamic").await;
}

#[tokio::test]
async fn a_vmdk_write_stopped_by_the_deadline_continues_in_the_redelivered_event() {
    stop_and_continue("vmdk", Next::Redelivery, "VMDK stream-optimized").await;
}

#[tokio::test]
async fn a_vmdk_write_stopped_by_the_deadline_is_continued_by_the_sweep() {
    stop_and_continue("vmdk", Next::Sweep, "VMDK stream-optimized").await;
}

/// A writer that crashes (Lambda kills it: its future is dropped mid-write, nothing released)
/// leaves its lease and its starting checkpoint. A redelivery while the lease holds writes
/// nothing and answers `in-progress`; the sweep leaves a leased snapshot alone; once the lease
/// has expired ([`create_image`]'s 16 minutes), the sweep takes it over, writes the rest,
/// completes the snapshot (the emulator checks the LINEAR aggregate and the block count) and
/// registers it: content equal to the disk, one snapshot, one AMI, one `image.registered`.
#[tokio::test]
async fn a_crashed_writers_lease_holds_off_redeliveries_and_the_sweep_takes_it_over_once_expired() {
    let w = world_with_claims().await;
    let key = "lease/disk.raw";
    let raw = noisy_disk(40, 11);
    w.acct.put(&w.bucket, key, raw.clone(), &[]).await;
    // The third part's read hangs; the invocation is killed while it waits.
    w.acct
        .inject_fault(json!({"service": "s3", "action": "GetObject",
        "resource": format!("bytes={}-", 2 * PART), "delay_seconds": SLOW_SECONDS, "count": 1}));
    let started = chrono::Utc::now();
    let killed = tokio::time::timeout(
        std::time::Duration::from_secs(4),
        create_image::handle(ingest_of(&w, key), &w.deps, started, support::deadline()),
    )
    .await;
    assert!(killed.is_err(), "the write was still running: {killed:?}");
    w.acct.clear_faults();
    let pending =
        ec2::describe_own_snapshots_filtered(&w.acct.clients.ec2, &[Select::state(["pending"])])
            .await
            .expect("snapshots");
    assert_eq!(pending.len(), 1, "{pending:?}");
    let snapshot_id = pending[0].id.clone();
    let state = support::roles::state_bucket_name(&w.acct.account_id);
    let leases: Vec<String> = w
        .acct
        .list_keys(&state, "progress/")
        .await
        .into_iter()
        .filter(|k| k.ends_with(".lease"))
        .collect();
    assert_eq!(
        leases.len(),
        1,
        "the killed writer's lease is left: {leases:?}"
    );

    // Blocks already sent by the killed invocation have landed by now.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let before = blocks_put(&w);
    let soon = started + chrono::Duration::minutes(1);
    let again = create_image::handle(ingest_of(&w, key), &w.deps, soon, support::deadline())
        .await
        .expect("the redelivery");
    assert!(
        matches!(&again.ingested[0], IngestOutcome::InProgress { snapshot_id: s, .. } if *s == snapshot_id),
        "{again:?}"
    );
    let sweep = sweep_at(&w, soon).await.expect("sweep while leased");
    assert!(steps_of(&sweep, "continue").is_empty(), "{sweep:?}");
    assert_eq!(
        blocks_put(&w),
        before,
        "nothing written while the lease holds"
    );

    let expired = started + create_image::LEASE + chrono::Duration::minutes(1);
    let sweep = sweep_at(&w, expired)
        .await
        .expect("sweep after the lease expired");
    let steps = steps_of(&sweep, "continue");
    assert_eq!(steps.len(), 1, "{sweep:?}");
    assert_eq!(steps[0].task_id, snapshot_id);
    assert!(
        steps[0].result.contains("\"outcome\":\"registered\"") && !steps[0].failed,
        "{:?}",
        steps[0]
    );
    one_image_of(&w, &snapshot_id, &raw).await;
    let leases_left: Vec<String> = w.acct.list_keys(&state, "progress/").await;
    assert!(
        leases_left.is_empty(),
        "lease and checkpoint removed: {leases_left:?}"
    );
}

/// The object replaced between the stopped invocation and the sweep: the pending snapshot
/// holds blocks of the old content, so it is refused (deleted, never completed); the new
/// content, delivered by its own event, becomes the image.
#[tokio::test]
async fn an_object_replaced_between_two_invocations_is_refused_not_completed() {
    let w = world_with_claims().await;
    let key = "replaced/disk.raw";
    let old = noisy_disk(40, 1);
    w.acct.put(&w.bucket, key, old, &[]).await;
    let snapshot_id = stop_part_way(&w, key).await;
    let new = noisy_disk(40, 2);
    w.acct.put(&w.bucket, key, new.clone(), &[]).await;

    let out = w.invoke(&json!({"sweep": true})).await.expect("sweep");
    let steps = steps_of(&out, "continue");
    assert_eq!(steps.len(), 1, "{out:?}");
    assert!(
        steps[0].result.starts_with("refused: ")
            && steps[0].result.contains("changed since the write began")
            && steps[0].result.contains("never completed"),
        "{:?}",
        steps[0]
    );
    let gone = ec2::describe_own_snapshots_filtered(
        &w.acct.clients.ec2,
        &[Select::tag(lineage::UPLOAD_METHOD, ["ebs-direct"])],
    )
    .await
    .expect("snapshots");
    assert!(
        gone.iter().all(|s| s.id != snapshot_id),
        "the refused snapshot is deleted: {gone:?}"
    );
    assert!(
        ec2::describe_own_images(&w.acct.clients.ec2, &[])
            .await
            .expect("images")
            .is_empty()
    );
    // The new content's event makes the image, from a snapshot of its own.
    let (_, snap, transfer) = registered(&run(&w, key).await);
    assert_ne!(snap, snapshot_id);
    assert_eq!(transfer.blocks_resumed, 0);
    let ebs = aws_sdk_ebs::Client::new(&w.acct.sdk);
    assert!(read_back(&ebs, &snap, new.len()).await == new);
    let again = w.invoke(&json!({"sweep": true})).await.expect("sweep");
    assert!(steps_of(&again, "continue").is_empty(), "{again:?}");
}

/// EC2's eventual consistency on for the account (`lag_seconds`): new snapshots and images are
/// not listed, and their ids are "not found", for that long.
fn lag(w: &World, seconds: u64) {
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": seconds})),
    );
}

/// The images of the account, after the lag.
async fn images_after(w: &World, seconds: u64) -> Vec<shared::model::Image> {
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images")
}

/// A crash after the call took effect (the emulator's `after` rule; the chaos harness's).
fn crash_after(w: &World, service: &str, action: &str) {
    w.acct
        .inject_fault(json!({"service": service, "action": action, "status": 499,
        "code": "InvocationCrashed", "message": "the call took effect; the invocation stops here",
        "count": 1, "after": true}));
}

const LAG: u64 = 3;

/// A snapshot just started with StartSnapshot is "not found" by DescribeSnapshots for a while
/// (EC2 eventual consistency). The wait for `completed` used to give up on that error and the
/// upload failed; it now waits (found by the chaos harness, `--lag`).
#[tokio::test]
async fn the_wait_for_completion_outlasts_a_snapshot_not_listed_yet() {
    let w = world(&[]).await;
    lag(&w, LAG);
    let key = "lag/disk.raw";
    w.acct.put(&w.bucket, key, disks::raw_disk(1), &[]).await;
    let out = run(&w, key).await;
    assert!(
        matches!(&out.ingested[0], IngestOutcome::Registered { .. }),
        "{out:?}"
    );
    assert_eq!(images_after(&w, LAG).await.len(), 1);
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    assert!(of_type(&msgs, "image.failed").is_empty(), "{msgs:#?}");
}

/// A delivery that stopped right after CompleteSnapshot leaves a completed snapshot that the
/// retry does not see listed yet; StartSnapshot with the same token answers the same snapshot,
/// and writing to it is refused (not pending). That used to report the upload failed
/// (image.failed) over a good snapshot; now the retry fails transiently and a later one
/// registers it (found by the chaos harness, `--crash-rate` with `--lag`).
#[tokio::test]
async fn a_crash_after_complete_snapshot_is_finished_by_a_later_retry() {
    let w = world_with_claims().await;
    lag(&w, LAG);
    let key = "crash-complete/disk.raw";
    w.acct.put(&w.bucket, key, disks::raw_disk(1), &[]).await;
    crash_after(&w, "ebs", "CompleteSnapshot");
    let first = w.invoke(&manual(&w.bucket, key)).await;
    assert!(first.is_err(), "the crash fails the invocation: {first:?}");
    let second = w.invoke(&manual(&w.bucket, key)).await;
    let msgs = w.acct.drain(&w.queue).await;
    assert!(
        of_type(&msgs, "image.failed").is_empty(),
        "no image.failed over a completed snapshot: {second:?} {msgs:#?}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(LAG)).await;
    let later = run(&w, key).await;
    assert!(
        matches!(
            &later.ingested[0],
            IngestOutcome::Registered { .. } | IngestOutcome::AlreadyImported { .. }
        ),
        "{later:?}"
    );
    let images = images_after(&w, LAG).await;
    assert_eq!(images.len(), 1, "{images:?}");
    let mut msgs = msgs;
    msgs.extend(w.acct.drain(&w.queue).await);
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    assert!(of_type(&msgs, "image.failed").is_empty(), "{msgs:#?}");
}

/// A delivery that stopped right after RegisterImage leaves an image that the retry does not
/// see listed yet: RegisterImage answers `InvalidAMIName.Duplicate` and no holder is listed.
/// That used to be a conflict, and the fast path reported the upload failed (image.failed);
/// now it is transient, and the retry after the lag adopts the image and announces it once
/// (found by the chaos harness, `--crash-rate` with `--lag`).
#[tokio::test]
async fn a_crash_after_register_image_is_adopted_by_a_later_retry() {
    let w = world_with_claims().await;
    lag(&w, LAG);
    let key = "crash-register/disk.raw";
    w.acct.put(&w.bucket, key, disks::raw_disk(1), &[]).await;
    crash_after(&w, "ec2", "RegisterImage");
    let first = w.invoke(&manual(&w.bucket, key)).await;
    assert!(first.is_err(), "the crash fails the invocation: {first:?}");
    let second = w.invoke(&manual(&w.bucket, key)).await;
    let msgs = w.acct.drain(&w.queue).await;
    assert!(
        of_type(&msgs, "image.failed").is_empty(),
        "no image.failed over its own image: {second:?} {msgs:#?}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(LAG)).await;
    let later = run(&w, key).await;
    let images = images_after(&w, LAG).await;
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(
        matches!(&later.ingested[0], IngestOutcome::AlreadyImported { image_id, .. } if *image_id == images[0].id),
        "{later:?}"
    );
    let mut msgs = msgs;
    msgs.extend(w.acct.drain(&w.queue).await);
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    assert!(of_type(&msgs, "image.failed").is_empty(), "{msgs:#?}");
}

/// As above, and the look at the snapshot after the refused write fails too: whether it is
/// completed is unknown, which used to count as "not completed" and reported the upload failed
/// (image.failed) over a good snapshot; now the event is retried (found by the chaos harness,
/// seed 509 of `--crash-rate 0.03 --lag 1`).
#[tokio::test]
async fn a_failed_look_at_a_refused_snapshot_is_retried_not_reported() {
    let w = world_with_claims().await;
    lag(&w, LAG);
    let key = "crash-look/disk.raw";
    w.acct.put(&w.bucket, key, disks::raw_disk(1), &[]).await;
    crash_after(&w, "ebs", "CompleteSnapshot");
    let first = w.invoke(&manual(&w.bucket, key)).await;
    assert!(first.is_err(), "the crash fails the invocation: {first:?}");
    // DescribeSnapshots of one id (the look after the refused write) fails once.
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeSnapshots",
        "resource": "SnapshotId.1", "status": 499, "code": "InvocationCrashed",
        "message": "crashed", "count": 1}));
    let second = w.invoke(&manual(&w.bucket, key)).await;
    let msgs = w.acct.drain(&w.queue).await;
    assert!(
        of_type(&msgs, "image.failed").is_empty(),
        "no image.failed over a completed snapshot: {second:?} {msgs:#?}"
    );
    w.acct.clear_faults();
    tokio::time::sleep(std::time::Duration::from_secs(LAG)).await;
    run(&w, key).await;
    assert_eq!(images_after(&w, LAG).await.len(), 1);
    let mut msgs = msgs;
    msgs.extend(w.acct.drain(&w.queue).await);
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    assert!(of_type(&msgs, "image.failed").is_empty(), "{msgs:#?}");
}

/// A redelivery of `key` finds its image made and announced (or being announced): it sends
/// nothing.
async fn redelivery_announces_nothing(w: &World, key: &str) {
    let again = run(w, key).await;
    assert!(
        matches!(
            &again.ingested[0],
            IngestOutcome::AlreadyImported {
                announced: false,
                ..
            }
        ),
        "{again:?}"
    );
    assert!(of_type(&w.acct.drain(&w.queue).await, "image.registered").is_empty());
}

/// Found tracing the session-8 lost announcements (seed 602, `--lost-rate`): the claim's
/// PutObject takes effect and its answer is lost, so the SDK's retry meets the claim it has
/// just written (412). The invocation took its own claim for another's and sent nothing: the
/// announcement waited ten minutes for the sweep. A claim now carries its holder, and the
/// registering invocation announces at once, once.
#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_known_as_the_callers_own() {
    let w = world_with_claims().await;
    let key = "lost-claim/disk.raw";
    w.acct.put(&w.bucket, key, disks::raw_disk(1), &[]).await;
    w.acct.inject_fault(
        json!({"service": "s3", "action": "PutObject", "status": 500,
        "code": "InternalError", "message": "injected", "after": true,
        "resource": "claims/image.registered", "count": 1}),
    );
    let out = run(&w, key).await;
    w.acct.clear_faults();
    assert!(
        matches!(&out.ingested[0], IngestOutcome::Registered { .. }),
        "{out:?}"
    );
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    // Recorded as sent: a redelivery sends nothing.
    redelivery_announces_nothing(&w, key).await;
}

/// An invocation that stops between claiming `image.registered` and sending it (here: SNS fails
/// past the SDK's retries and so does the release of the claim) leaves a claim and no record.
/// Deliveries that come back while the claim is fresh send nothing (another invocation seems to
/// be sending); once it is stale, the sweep sends the lost announcement, once (found by the
/// chaos harness, seed 501 of `--crash-rate 0.03 --lag 1`).
#[tokio::test]
async fn the_sweep_sends_an_announcement_whose_sender_stopped_after_claiming_it() {
    let w = world_with_claims().await;
    let key = "claimed/disk.raw";
    w.acct.put(&w.bucket, key, disks::raw_disk(1), &[]).await;
    w.acct
        .inject_fault(json!({"service": "sns", "action": "Publish", "status": 500,
        "code": "InternalError", "message": "injected", "count": 5}));
    // Only the claim's release (not the checkpoint's or the lease's deletes).
    w.acct.inject_fault(
        json!({"service": "s3", "action": "DeleteObject", "status": 500,
        "code": "InternalError", "message": "injected", "resource": "claims/image.registered"}),
    );
    w.invoke(&manual(&w.bucket, key))
        .await
        .expect_err("the announcement failed");
    w.acct.clear_faults();
    // A delivery while the claim is fresh sends nothing.
    redelivery_announces_nothing(&w, key).await;
    // The schedule, once the claim is stale: sent once, and not again.
    let later = chrono::Utc::now() + chrono::Duration::minutes(11);
    let sweep = sweep_at(&w, later).await.expect("sweep");
    assert!(
        sweep
            .sweep
            .steps
            .iter()
            .any(|s| s.action == "announce" && s.result.contains("sent now")),
        "{sweep:?}"
    );
    // The next sweep finds the record in its one listing: no per-image look at the claims.
    w.acct.reset_requests();
    sweep_at(&w, later).await.expect("second sweep");
    let counts = w.acct.requests();
    // One listing of the announcement records, one of the deferral records (deferred.rs).
    assert_eq!(counts["s3:ListObjectsV2"].as_u64(), Some(2), "{counts}");
    assert_eq!(counts["s3:HeadObject"].as_u64().unwrap_or(0), 0, "{counts}");
    let msgs = w.acct.drain(&w.queue).await;
    let registered = of_type(&msgs, "image.registered");
    assert_eq!(registered.len(), 1, "{msgs:#?}");
    assert_eq!(registered[0]["upload_method"], "ebs-direct");
}

/// CompleteSnapshot accepted, and the snapshot still sealing when the invocation's time is up
/// (AWS seals asynchronously: the emulator's `seal_delay_seconds`): the wait stops within the
/// deadline, the invocation fails transiently (no image.failed) saying CompleteSnapshot was
/// accepted, and the redelivered event (or the sweep) writes no block again (the snapshot takes
/// none: the emulator refuses them) but waits for it to seal and registers it, once.
async fn sealing_outlasts_the_invocation(next: Next) {
    let w = world_with_claims().await;
    let raw = noisy_disk(16, 7);
    let key = "sealing/disk.raw";
    w.acct.put(&w.bucket, key, raw.clone(), &[]).await;
    w.acct.reset_requests();
    w.acct.emulator_config(json!({"seal_delay_seconds": 20}));
    let started = std::time::Instant::now();
    let deadline = shared::deadline::Deadline::after(shared::deadline::SAFETY_MARGIN + GRACE);
    let err = create_image::handle(ingest_of(&w, key), &w.deps, chrono::Utc::now(), deadline)
        .await
        .expect_err("the snapshot is still sealing when the time is up");
    assert!(
        started.elapsed() < GRACE + std::time::Duration::from_secs(5),
        "the wait kept to the deadline: {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains("CompleteSnapshot was accepted and is recorded in s3://")
            && text.contains("s3://")
            && text.contains(key),
        "{text}"
    );
    assert!(
        of_type(&w.acct.drain(&w.queue).await, "image.failed").is_empty(),
        "still sealing is not a failure"
    );
    let state = support::roles::state_bucket_name(&w.acct.account_id);
    assert!(
        deferred_records(&w, &state).await.is_empty(),
        "a stop at the deadline is not recorded for the retry: its checkpoint is"
    );
    let written = blocks_put(&w);
    assert_eq!(
        written,
        nonzero_blocks(&raw),
        "every block written before the stop"
    );
    let pending =
        ec2::describe_own_snapshots_filtered(&w.acct.clients.ec2, &[Select::state(["pending"])])
            .await
            .expect("snapshots");
    assert_eq!(pending.len(), 1, "{pending:?}");
    let snapshot_id = pending[0].id.clone();

    let out = continue_stopped(&w, key, &snapshot_id, next).await;
    if let Next::Redelivery = next {
        let (_, snap, transfer) = registered(&out);
        assert_eq!(snap, snapshot_id);
        assert_eq!(transfer.blocks_written, 0, "{transfer:?}");
        assert_eq!(transfer.blocks_resumed, written, "{transfer:?}");
    }
    assert_eq!(blocks_put(&w), written, "no block written again");
    one_image_of(&w, &snapshot_id, &raw).await;
    let again = w.invoke(&json!({"sweep": true})).await.expect("sweep");
    assert!(steps_of(&again, "continue").is_empty(), "{again:?}");
    w.acct.emulator_config(json!({"seal_delay_seconds": null}));
}

#[tokio::test]
async fn a_snapshot_still_sealing_at_the_deadline_is_registered_by_the_redelivered_event() {
    sealing_outlasts_the_invocation(Next::Redelivery).await;
}

#[tokio::test]
async fn a_snapshot_still_sealing_at_the_deadline_is_registered_by_the_sweep() {
    sealing_outlasts_the_invocation(Next::Sweep).await;
}

/// The emulator answers EBS direct's StartSnapshot `500 InternalServerException` (past the SDK's
/// retries) until the faults are cleared: every fast-path ingest stops on a transient error.
/// Returns the state bucket. (Not a fault on the upload's reads: a fault matches every request
/// that holds its resource text, and the claims' keys hold the upload's. Not a throttling error:
/// the SDK's adaptive retry would slow the test's shared clients down for minutes.)
fn ebs_unavailable(w: &World) -> String {
    w.acct.inject_fault(
        json!({"service": "ebs", "action": "StartSnapshot", "status": 500,
        "code": "InternalServerException", "message": "An internal error occurred.",
        "count": 10_000}),
    );
    support::roles::state_bucket_name(&w.acct.account_id)
}

/// The records of uploads stopped by a transient error (create-image deferred.rs), parsed.
async fn deferred_records(w: &World, state: &str) -> Vec<Value> {
    let keys = shared::aws::s3::list_keys(&w.acct.clients.s3, state, "deferred/")
        .await
        .expect("list the state bucket");
    let mut out = Vec::new();
    for key in keys {
        let obj = shared::model::ObjectRef {
            bucket: state.to_owned(),
            key,
            version_id: None,
        };
        let (bytes, _) = shared::aws::s3::get_object(&w.acct.clients.s3, &obj)
            .await
            .expect("read a record");
        out.push(serde_json::from_slice(&bytes).expect("a record is JSON"));
    }
    out
}

/// The fault `InvocationCrashed` stands for a crash, but the ingest sees an error it takes for a
/// transient one and records the upload for the sweep (deferred.rs); a crashed process writes
/// nothing, so the record is deleted, and the test sees what a crash leaves.
async fn a_crash_leaves_no_deferral_record(w: &World) {
    let state = support::roles::state_bucket_name(&w.acct.account_id);
    let keys = shared::aws::s3::list_keys(&w.acct.clients.s3, &state, "deferred/")
        .await
        .expect("list the state bucket");
    assert_eq!(keys.len(), 1, "the stop was recorded: {keys:?}");
    for key in keys {
        let obj = shared::model::ObjectRef {
            bucket: state.clone(),
            key,
            version_id: None,
        };
        shared::aws::s3::delete_object(&w.acct.clients.s3, &obj)
            .await
            .expect("delete the record");
    }
}

/// A world whose upload `key` (a raw disk) was stopped once by EBS direct's 500s, which go on
/// ([`ebs_unavailable`]): its record written. Returns the world and the state bucket.
async fn stopped_once(key: &str) -> (World, String) {
    let w = world_with_claims().await;
    w.acct.put(&w.bucket, key, disks::raw_disk(2), &[]).await;
    let state = ebs_unavailable(&w);
    let err = w
        .invoke(&manual(&w.bucket, key))
        .await
        .expect_err("StartSnapshot is refused");
    assert!(err.to_string().contains("InternalServerException"), "{err}");
    assert_eq!(
        deferred_records(&w, &state).await.len(),
        1,
        "the stop is recorded"
    );
    (w, state)
}

/// The upload was made once, whatever stopped it before: one image, one image.registered, no
/// image.failed (the messages are drained), and no deferral record left.
async fn made_once(w: &World, state: &str) {
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(of_type(&msgs, "image.registered").len(), 1, "{msgs:#?}");
    assert!(of_type(&msgs, "image.failed").is_empty(), "{msgs:#?}");
    assert!(deferred_records(w, state).await.is_empty());
}

/// A scheduled sweep `hours` from now (the give-up goes by the first stop's age).
async fn sweep_hours_later(w: &World, hours: i64) -> Output {
    let at = chrono::Utc::now() + chrono::Duration::hours(hours);
    create_image::handle(
        create_image::Command::Sweep,
        &w.deps,
        at,
        support::deadline(),
    )
    .await
    .unwrap_or_else(|e| panic!("the sweep failed: {e}"))
}

/// A transient error that outlasts the event and Lambda's two retries (three deliveries) used to
/// leave the upload in the dead-letter queue, unreported: it is now recorded, a sweep while the
/// cause lasts counts one more stop (and does not fail), and the first sweep after it clears
/// makes the image (one image, one image.registered, the record deleted).
#[tokio::test]
async fn an_upload_stopped_past_its_retries_by_a_transient_error_is_taken_up_by_the_sweep() {
    let key = "stopped/disk.raw";
    let (w, state) = stopped_once(key).await;
    for delivery in 1..3 {
        let err = w
            .invoke(&manual(&w.bucket, key))
            .await
            .expect_err("StartSnapshot is refused");
        assert!(
            err.to_string().contains("InternalServerException"),
            "delivery {delivery}: {err}"
        );
    }
    assert!(
        of_type(&w.acct.drain(&w.queue).await, "image.failed").is_empty(),
        "a transient stop is not a failure"
    );
    let records = deferred_records(&w, &state).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["key"], key);
    assert_eq!(records[0]["stops"], 3, "{records:?}");
    assert!(
        records[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("InternalServerException"))
    );

    let out = sweep_hours_later(&w, 1).await;
    let steps = steps_of(&out, "retry");
    assert_eq!(steps.len(), 1, "{out:?}");
    assert!(
        steps[0]
            .result
            .starts_with("stopped by a transient error again (4 time(s)")
            && !steps[0].failed,
        "{:?}",
        steps[0]
    );
    let records = deferred_records(&w, &state).await;
    assert_eq!(records[0]["stops"], 4, "{records:?}");
    assert!(
        records[0].get("taken_until").is_none(),
        "the hold is given back: {records:?}"
    );

    w.acct.clear_faults();
    let out = sweep_hours_later(&w, 2).await;
    let steps = steps_of(&out, "retry");
    assert_eq!(steps.len(), 1, "{out:?}");
    assert!(
        steps[0].result.contains("4 time(s)")
            && steps[0].result.contains("\"outcome\":\"registered\"")
            && !steps[0].failed,
        "{:?}",
        steps[0]
    );
    made_once(&w, &state).await;
    assert!(steps_of(&sweep_hours_later(&w, 3).await, "retry").is_empty());
}

/// An upload still stopped a day after its first stop is given up: of two overlapping sweeps one
/// takes the record, ingests once more, and sends one image.failed naming the stops and the last
/// error; the record is deleted, nothing is made, and a later sweep does nothing.
#[tokio::test]
async fn an_upload_still_stopped_a_day_later_is_reported_once_and_forgotten() {
    let key = "stopped/late.raw";
    let (w, state) = stopped_once(key).await;
    let (a, b) = tokio::join!(sweep_hours_later(&w, 25), sweep_hours_later(&w, 25));
    let retried: Vec<_> = [a, b]
        .into_iter()
        .flat_map(|out| out.sweep.steps)
        .filter(|s| s.action == create_image::StepAction::Retry)
        .collect();
    assert_eq!(retried.len(), 1, "one sweep holds the record: {retried:?}");
    assert!(
        retried[0].result.starts_with("given up") && !retried[0].failed,
        "{retried:?}"
    );
    let msgs = w.acct.drain(&w.queue).await;
    let failed = of_type(&msgs, "image.failed");
    assert_eq!(failed.len(), 1, "{msgs:#?}");
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("given up")
            && error.contains("2 time(s)")
            && error.contains("InternalServerException"),
        "{error}"
    );
    assert!(deferred_records(&w, &state).await.is_empty());
    assert!(steps_of(&sweep_hours_later(&w, 26).await, "retry").is_empty());
    assert!(w.acct.drain(&w.queue).await.is_empty());
    let images = ec2::describe_own_images(&w.acct.clients.ec2, &[])
        .await
        .expect("images");
    assert!(images.is_empty(), "{images:?}");
    w.acct.clear_faults();
}

/// A later delivery (a Lambda retry, a redrive) that makes the upload deletes its record: the
/// sweep has nothing to take up (the owner may delete the object once it is registered).
#[tokio::test]
async fn a_later_delivery_that_makes_the_upload_deletes_its_record() {
    let key = "stopped/retried.raw";
    let (w, state) = stopped_once(key).await;
    w.acct.clear_faults();
    w.invoke(&manual(&w.bucket, key)).await.expect("the retry");
    made_once(&w, &state).await;
    assert!(steps_of(&sweep_hours_later(&w, 1).await, "retry").is_empty());
}

/// An upload that a later delivery made, but whose record that delivery could not delete, is
/// not given up a day later: the sweep ingests it again first, finds the image, and deletes the
/// record unreported.
#[tokio::test]
async fn an_upload_made_by_a_later_delivery_is_not_given_up() {
    let key = "stopped/redriven.raw";
    let (w, state) = stopped_once(key).await;
    w.acct.clear_faults();
    w.acct.inject_fault(
        json!({"service": "s3", "action": "DeleteObject", "resource": "deferred/",
        "status": 500, "code": "InternalError",
        "message": "We encountered an internal error. Please try again.", "count": 10_000}),
    );
    w.invoke(&manual(&w.bucket, key))
        .await
        .expect("the redelivery");
    w.acct.clear_faults();
    assert_eq!(
        deferred_records(&w, &state).await.len(),
        1,
        "left for the sweep"
    );
    let out = sweep_hours_later(&w, 25).await;
    let steps = steps_of(&out, "retry");
    assert_eq!(steps.len(), 1, "{out:?}");
    assert!(
        !steps[0].result.contains("given up")
            && steps[0].result.contains("ingested again")
            && !steps[0].failed,
        "{:?}",
        steps[0]
    );
    made_once(&w, &state).await;
}

/// A sweep killed while it holds a record (out of memory, out of time) counts as a stop once its
/// hold runs out, so a record that kills every sweep is still given up a day later, without
/// another ingest.
#[tokio::test]
async fn a_record_whose_sweep_was_killed_is_given_up_a_day_later() {
    let key = "stopped/killer.raw";
    let (w, state) = stopped_once(key).await;
    // A sweep took it an hour later and was killed: the record says so, nothing else does.
    let keys = shared::aws::s3::list_keys(&w.acct.clients.s3, &state, "deferred/")
        .await
        .expect("list");
    let obj = shared::model::ObjectRef {
        bucket: state.clone(),
        key: keys[0].clone(),
        version_id: None,
    };
    let mut record = deferred_records(&w, &state).await.remove(0);
    let until = chrono::Utc::now() + chrono::Duration::minutes(75);
    record["taken_until"] = json!(until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    shared::aws::s3::put_object(&w.acct.clients.s3, &obj, record.to_string().into_bytes())
        .await
        .expect("write the record");
    w.acct.reset_requests();
    let out = sweep_hours_later(&w, 25).await;
    let steps = steps_of(&out, "retry");
    assert_eq!(steps.len(), 1, "{out:?}");
    assert!(
        steps[0].result.starts_with("given up")
            && steps[0].result.contains("2 time(s)")
            && steps[0].result.contains("stopped without concluding it"),
        "{:?}",
        steps[0]
    );
    assert!(
        w.acct.requests().get("ebs:StartSnapshot").is_none(),
        "not ingested again: {}",
        w.acct.requests()
    );
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(of_type(&msgs, "image.failed").len(), 1, "{msgs:#?}");
    assert!(deferred_records(&w, &state).await.is_empty());
    w.acct.clear_faults();
}
