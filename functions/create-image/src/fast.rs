//! The fast path: create-image writes the snapshot itself from the S3 object with the EBS direct
//! APIs, then registers the AMI in the same invocation (issue #18).
//!
//! 1. **Decide** ([`decide`]): two ranged GETs (the first 64 KiB, the last 512 bytes) and
//!    [`disk::probe`] name the format and the virtual size; [`upload::choose`] takes the fast
//!    path or the ImportSnapshot fallback (and says why). Settings the root volume cannot have
//!    over that size ([`import::root_volume`]: a `volume-size` below the disk's, IOPS beyond
//!    what the size takes) are refused here, before anything is written or imported.
//! 2. **Start**: StartSnapshot with `VolumeSize` (GiB, rounded up), `ClientToken` = the upload's
//!    token (bucket, key, version or ETag — the import's idempotency token), the pipeline's tags
//!    at creation, `Timeout` [`upload::SNAPSHOT_TIMEOUT_MINUTES`]. A duplicate event gets the same
//!    snapshot and rewrites the same blocks (a rewrite overwrites with the same bytes); a
//!    snapshot of this upload already `completed` is registered without writing again.
//! 3. **Write**: the object is read with [`READ_PARTS`] concurrent ranged GETs of [`PART_BYTES`]
//!    (in order), pushed through [`disk::Decoder`] (raw, VHD fixed/dynamic, stream-optimized
//!    VMDK) into 512 KiB blocks; each block's SHA-256 is computed and the block sent with
//!    PutSnapshotBlock, at most [`PUT_CONCURRENCY`] in flight. Holes are never written; all-zero
//!    blocks are skipped when the snapshot is not encrypted (an unwritten block then reads as
//!    zeros), and written when it is (`KMS_KEY_ARN`, or the account's encryption by default:
//!    StartSnapshot's answer says which).
//! 4. **Complete**: CompleteSnapshot with `ChangedBlocksCount` and the LINEAR aggregate
//!    (base64 SHA-256 of the per-block digests in ascending index order); record in the
//!    checkpoint that it was accepted; wait for `completed` (DescribeSnapshots: AWS seals
//!    asynchronously), at most [`COMPLETE_WAIT`] and never past the Lambda deadline's
//!    [`SAFETY_MARGIN`] (still sealing: a transient failure, and the next delivery or the sweep
//!    only waits and registers: the snapshot takes no more blocks); register through the import
//!    path's naming rules; `image.registered`.
//!
//! **Memory** per upload, at most: 8 parts × 8 MiB read ahead (64 MiB) + the decoder (32 MiB
//! of partial blocks, 33 ready blocks = 16.5 MiB, the part being decoded 8 MiB) + 16 blocks in
//! flight (8 MiB) + the LINEAR state (32 bytes per written block, 2 MiB for 32 GiB written):
//! about 130 MiB; the handler runs `SWEEP_CONCURRENCY` uploads of one event at once.
//!
//! **Failures.** Content the decoder refuses half way (truncated, malformed) never completes
//! the snapshot: it is deleted (DeleteSnapshot, allowed only on snapshots tagged managed and
//! `ebs-direct`), the upload rejected with the decoder's message naming the offset. An AWS error
//! that does not clear (access denied, validation) stops the upload at once with a message
//! naming the snapshot, the block, its offset and the object; the pending snapshot stays for a
//! redelivered event to finish (same token), else AWS cancels it after its `Timeout`. Throttling
//! and 5xx are retried by the SDK. A block refused because the snapshot "does not exist" (a
//! snapshot just started may not take blocks at once) is sent again for up to
//! [`NOT_FOUND_WAIT`].
//!
//! **Across invocations** ([`crate::progress`]): with a state bucket, the writer holds a lease on
//! the snapshot; near the Lambda deadline it lets the writes in flight finish, saves a checkpoint
//! (the blocks written with their SHA-256, where reading restarts) and fails the invocation, so
//! the redelivered event — or the sweep, for a pending snapshot with a checkpoint and no lease —
//! continues from there with the LINEAR aggregate still over exactly the blocks written. A
//! delivery that finds the lease held reports `in-progress` and writes nothing. Without a state
//! bucket a redelivered event writes every block again on the same snapshot.

use crate::announce::{announce_once, repair};
use crate::config::Deps;
use crate::ingest::reject;
use crate::output::{IngestOutcome, Transfer};
use crate::progress::{Checkpoint, Header, Lease, Progress};
use crate::register::{Registered, register_named, registered_image};
use chrono::{DateTime, Utc};
use disk::{Block, BlockChecksum, DecodeError, Decoder, LinearChecksum};
use futures::stream::{self, StreamExt};
use shared::aws::{ebs, ec2, s3};
use shared::deadline::{Deadline, SAFETY_MARGIN};
use shared::error::{AwsError, ErrorKind};
use shared::model::{DiskFormat, ObjectInfo, ObjectRef, Select};
use shared::plan::import;
use shared::plan::lineage;
use shared::plan::spec::ImageSpec;
use shared::plan::upload::{self, Choice, MethodSetting, Probed, UploadMethod};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Bytes per ranged GET (16 EBS blocks).
pub const PART_BYTES: u64 = 8 << 20;
/// Ranged GETs in flight (ahead of the decoder).
pub const READ_PARTS: usize = 8;
/// PutSnapshotBlock calls in flight. AWS allows 1,000 PutSnapshotBlock per second per snapshot;
/// 16 concurrent 512 KiB writes is what coldsnap uses per upload.
pub const PUT_CONCURRENCY: usize = 16;
/// How long a block is sent again while PutSnapshotBlock says its snapshot does not exist
/// (`ResourceNotFoundException`). A snapshot StartSnapshot just created may not take blocks at
/// once: coldsnap met this in 1 of 50–100 uploads, and "the EBS team confirmed that the right
/// approach for now is to wait and retry, and they recommended a 2 minute cap"
/// (awslabs/coldsnap#56). Past the cap (or the invocation's deadline) it is the write's failure.
pub const NOT_FOUND_WAIT: Duration = Duration::from_secs(120);
/// The first pause before a block is sent again; each next one doubles, up to
/// [`NOT_FOUND_MAX_PAUSE`].
pub const NOT_FOUND_FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between two sends of a block whose snapshot is not there yet.
pub const NOT_FOUND_MAX_PAUSE: Duration = Duration::from_secs(15);
/// Longest wait for `completed` after CompleteSnapshot (AWS seals asynchronously).
pub const COMPLETE_WAIT: Duration = Duration::from_secs(300);

/// How an upload will be turned into a snapshot.
pub(crate) enum Decision {
    /// The fast path, with the probe of the object.
    Fast(Box<disk::Probe>),
    /// ImportSnapshot, and why.
    Import(String),
    /// The content is damaged (the decoder's message, naming the offset).
    Bad(String),
    /// The settings make a root volume the disk cannot have ([`import::root_volume`] over the
    /// probed size): refused before anything is written or imported.
    Refused(String),
}

/// Probes the object (unless the function is set to ImportSnapshot) and chooses the method.
pub(crate) async fn decide(
    deps: &Deps,
    object: &ObjectRef,
    info: &ObjectInfo,
    spec: &ImageSpec,
) -> Result<Decision, AwsError> {
    let cfg = &deps.config;
    if cfg.upload_method == MethodSetting::ImportSnapshot {
        return Ok(Decision::Import("UPLOAD_METHOD=import-snapshot".into()));
    }
    let c = &deps.clients;
    let head_len = info.size.min(disk::PROBE_HEAD_LEN as u64);
    let tail_len = info.size.min(disk::PROBE_TAIL_LEN as u64);
    let etag = info.etag.as_deref();
    let head = s3::get_range(
        &c.s3,
        object,
        &format!("0-{}", head_len.saturating_sub(1)),
        etag,
    )
    .await?;
    let tail = s3::get_range(&c.s3, object, &format!("-{tail_len}"), etag).await?;
    let (probed, probe) = match disk::probe(&head, &tail, info.size) {
        Ok(p) => (
            Probed::Decodable {
                virtual_size: p.virtual_size,
            },
            Some(p),
        ),
        Err(DecodeError::Unsupported(why)) => (Probed::Unsupported(why), None),
        Err(e) => return Ok(Decision::Bad(e.to_string())),
    };
    if let Some(p) = &probe
        && let Err(why) = import::root_volume(
            spec,
            Some(i32::try_from(p.volume_size_gib()).unwrap_or(i32::MAX)),
        )
    {
        return Ok(Decision::Refused(why));
    }
    Ok(
        match (
            upload::choose(cfg.upload_method, &probed, cfg.fast_path_max_gib),
            probe,
        ) {
            (Choice::EbsDirect, Some(p)) => Decision::Fast(Box::new(p)),
            (Choice::ImportSnapshot { reason }, _) => Decision::Import(reason),
            (Choice::EbsDirect, None) => Decision::Import("no probe".into()),
        },
    )
}

/// The fast path's outcome for an upload, or (inner `Err`) why ImportSnapshot takes it instead.
pub(crate) async fn try_fast(
    deps: &Deps,
    up: Upload<'_>,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Result<IngestOutcome, String>, AwsError> {
    match decide(deps, up.object, up.info, up.spec).await? {
        Decision::Fast(probe) => run(deps, up, &probe, now, deadline).await,
        Decision::Bad(problem) => {
            let problems = vec![format!("content: {problem}")];
            reject(deps, up.object, problems, now, true).await.map(Ok)
        }
        Decision::Refused(why) => reject(deps, up.object, vec![why], now, true).await.map(Ok),
        Decision::Import(reason) => Ok(Err(reason)),
    }
}

/// One upload on the fast path.
pub(crate) struct Upload<'a> {
    /// The object (with the version validated).
    pub object: &'a ObjectRef,
    /// Its HeadObject.
    pub info: &'a ObjectInfo,
    /// The format its extension names (checked against the content).
    pub format: DiskFormat,
    /// The validated settings.
    pub spec: &'a ImageSpec,
    /// The upload's idempotency token.
    pub token: &'a str,
    /// Settings a manual invoke gave (kept in the checkpoint for the sweep).
    pub overrides: &'a BTreeMap<String, String>,
}

/// Why writing stopped.
enum WriteError {
    /// The content is damaged: the decoder's message.
    BadInput(DecodeError),
    /// The object is not the one the earlier blocks were written from.
    Changed(String),
    /// An AWS call failed.
    Aws(AwsError),
    /// The Lambda deadline is near: every write in flight has answered; `written` lists every
    /// block written to the snapshot, and reading may restart at `resume_offset`.
    Stopped {
        /// File offset reading restarts at (0: from the start, writes skipped).
        resume_offset: u64,
        /// Every block written so far.
        written: LinearChecksum,
    },
}

/// Where a write starts: the blocks written before (a checkpoint) and the file offset.
#[derive(Default)]
struct Start {
    written: LinearChecksum,
    offset: u64,
    /// CompleteSnapshot was accepted already: nothing to write, only the wait.
    completed: bool,
}

/// Writes the snapshot (or finds it written), completes it and registers the AMI; or (inner
/// `Err`) why ImportSnapshot takes the upload instead: an earlier fast-path snapshot of it ended
/// in `error` (AWS cancels one not completed within its `Timeout`), and StartSnapshot with the
/// upload's ClientToken would answer that snapshot again.
pub(crate) async fn run(
    deps: &Deps,
    up: Upload<'_>,
    probe: &disk::Probe,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Result<IngestOutcome, String>, AwsError> {
    let c = &deps.clients;
    let tags = upload::snapshot_tags(up.spec, up.object, up.info.etag.as_deref(), up.format);
    let mut transfer = Transfer {
        format: format_name(probe.format),
        virtual_size: probe.virtual_size,
        ..Transfer::default()
    };
    let earlier = ec2::describe_own_snapshots_filtered(
        &c.ec2,
        &[
            Select::tag(lineage::SOURCE_TOKEN, [up.token]),
            Select::tag(lineage::UPLOAD_METHOD, [UploadMethod::EbsDirect.as_str()]),
            Select::state(["completed", "error"]),
        ],
    )
    .await?;
    let state_is = |s: &&shared::model::Snapshot, state: &str| s.state.as_deref() == Some(state);
    if let Some(failed) = earlier.iter().find(|s| state_is(s, "error")) {
        return Ok(Err(format!(
            "the fast path's snapshot {} of this upload ended in error (not completed within its {} minute timeout); ImportSnapshot takes it",
            failed.id,
            upload::SNAPSHOT_TIMEOUT_MINUTES
        )));
    }
    let snapshot_id = if let Some(s) = earlier.iter().find(|s| state_is(s, "completed")) {
        info!(object = %up.object, snapshot_id = %s.id, "snapshot already written by an earlier event");
        if let Some(p) = deps.progress() {
            // The one that wrote it may have stopped while it sealed, its checkpoint kept.
            p.forget(up.token).await;
        }
        transfer.reused = true;
        s.id.clone()
    } else {
        let description =
            lineage::fit_ebs_tag_value(&format!("ami-pipeline ebs-direct of {}", up.object.uri()));
        let started = ebs::start_snapshot(
            &c.ebs,
            ebs::StartRequest {
                volume_size_gib: probe.volume_size_gib() as i64,
                client_token: up.token,
                tags: &tags,
                description: &description,
                timeout_minutes: upload::SNAPSHOT_TIMEOUT_MINUTES,
                kms_key_arn: deps.config.kms_key_arn.as_deref(),
            },
        )
        .await?;
        let id = started.snapshot_id;
        info!(object = %up.object, snapshot_id = %id, volume_gib = probe.volume_size_gib(), encrypted = started.encrypted, "snapshot started");
        transfer.encrypted = started.encrypted;
        if let Some(outcome) =
            write_leased(deps, &up, probe, &id, &mut transfer, deadline, now).await?
        {
            return Ok(outcome);
        }
        id
    };
    register(deps, &up, &snapshot_id, transfer, now)
        .await
        .map(Ok)
}

/// Writes the snapshot under the lease (when there is a state bucket) and completes it. Some:
/// the outcome to return at once (another invocation writes it; the input was refused); None:
/// the snapshot is completed, to be registered.
async fn write_leased(
    deps: &Deps,
    up: &Upload<'_>,
    probe: &disk::Probe,
    id: &str,
    transfer: &mut Transfer,
    deadline: Deadline,
    now: DateTime<Utc>,
) -> Result<Option<Result<IngestOutcome, String>>, AwsError> {
    let progress = deps.progress();
    let lease = match &progress {
        Some(p) => match p.lease(up.token, now).await? {
            Lease::Won(etag) => Some(etag),
            Lease::Held(until) => {
                info!(object = %up.object, snapshot_id = %id, %until, "another invocation is writing this snapshot");
                return Ok(Some(Ok(IngestOutcome::InProgress {
                    object: up.object.uri(),
                    snapshot_id: id.to_owned(),
                })));
            }
        },
        None => None,
    };
    let done = write_and_complete(deps, up, probe, id, transfer, deadline, now).await;
    if let (Some(p), Some(etag)) = (&progress, &lease) {
        p.release(up.token, etag).await;
    }
    match done {
        Ok(()) => {}
        Err(WriteError::BadInput(e)) => {
            let problem = format!("content: {e} (snapshot {id} deleted, never completed)");
            return refuse(deps, up, id, problem, now).await.map(Some);
        }
        Err(WriteError::Changed(why)) => {
            let problem = format!("content: {why} (snapshot {id} deleted, never completed)");
            return refuse(deps, up, id, problem, now).await.map(Some);
        }
        Err(WriteError::Aws(e)) if e.has_code("PreconditionFailed") => {
            if let Some(p) = &progress {
                p.forget(up.token).await;
            }
            return Ok(Some(Ok(replaced_while_read(deps, up, id).await)));
        }
        Err(WriteError::Aws(e)) => {
            // A concurrent duplicate event may have completed the snapshot while this one was
            // still writing (the same blocks), or an earlier delivery completed it and stopped
            // (the same ClientToken answers the same snapshot, and DescribeSnapshots did not
            // list it yet): then register it, else report the error.
            match completed_by_another(deps, id).await {
                Seen::Completed => {}
                Seen::NotCompleted => return Err(e),
                Seen::Unknown(why) => {
                    // Whether it is completed is unknown: a transient failure, so the event is
                    // retried rather than the upload reported failed (image.failed) over a
                    // snapshot that may be complete.
                    return Err(AwsError {
                        kind: ErrorKind::Other,
                        message: format!(
                            "{}; snapshot {id} {why}, the retry looks again",
                            e.message
                        ),
                        ..e
                    });
                }
            }
            if let Some(p) = &progress {
                // Completed while this one gave up waiting for it, say: nothing to continue.
                p.forget(up.token).await;
            }
            info!(object = %up.object, snapshot_id = %id, "snapshot completed by a concurrent duplicate event");
            transfer.reused = true;
        }
        Err(WriteError::Stopped { .. }) => {
            return Err(deadline_error(deps, up, id, transfer, probe.total_len));
        }
    }
    Ok(None)
}

/// Every ranged GET carries `If-Match` the validated ETag: the object was replaced while it was
/// read (an unversioned bucket). Its new content has an event of its own; a snapshot of two
/// contents is never completed: it is deleted, and the upload is reported superseded.
async fn replaced_while_read(deps: &Deps, up: &Upload<'_>, snapshot_id: &str) -> IngestOutcome {
    discard(deps, snapshot_id).await;
    warn!(object = %up.object, snapshot_id, "object replaced while it was read; snapshot deleted");
    IngestOutcome::Superseded {
        object: up.object.uri(),
        current_version: "replaced while it was read (its own event imports it)".into(),
    }
}

/// What DescribeSnapshots shows of a snapshot the upload's token started.
enum Seen {
    /// `completed` (by a concurrent duplicate event, or an earlier delivery of the upload).
    Completed,
    /// Listed, and not completed.
    NotCompleted,
    /// Not known: why (not listed yet, or the call failed).
    Unknown(String),
}

/// Whether the snapshot is `completed` (by another delivery of the same upload).
async fn completed_by_another(deps: &Deps, snapshot_id: &str) -> Seen {
    match ec2::describe_snapshot(&deps.clients.ec2, snapshot_id).await {
        Ok(s) if s.state.as_deref() == Some("completed") => Seen::Completed,
        Ok(_) => Seen::NotCompleted,
        // Eventually consistent: "if you run a command to modify or describe the resource that
        // you just created, its ID might not have propagated throughout the system" (EC2
        // Developer Guide, "Eventual consistency").
        Err(e) if e.is_not_found() => {
            Seen::Unknown("is not listed yet (DescribeSnapshots is eventually consistent)".into())
        }
        Err(e) => Seen::Unknown(format!("could not be looked at ({e})")),
    }
}

/// Deletes the refused snapshot (never completed) and its checkpoint, and rejects the upload.
async fn refuse(
    deps: &Deps,
    up: &Upload<'_>,
    snapshot_id: &str,
    problem: String,
    now: DateTime<Utc>,
) -> Result<Result<IngestOutcome, String>, AwsError> {
    discard(deps, snapshot_id).await;
    if let Some(p) = deps.progress() {
        p.forget(up.token).await;
    }
    reject(deps, up.object, vec![problem], now, true)
        .await
        .map(Ok)
}

/// The error that fails an invocation stopped by its deadline (transient: no `image.failed`;
/// the event is delivered again).
fn deadline_error(
    deps: &Deps,
    up: &Upload<'_>,
    snapshot_id: &str,
    transfer: &Transfer,
    size: u64,
) -> AwsError {
    let next = match deps.progress() {
        Some(p) => format!(
            "{} blocks written in all, checkpointed in {}; a redelivered event or the sweep continues",
            transfer.blocks_written + transfer.blocks_resumed,
            p.checkpoint_object(up.token).uri()
        ),
        None => "no state bucket: a redelivered event writes the blocks again (same snapshot)"
            .to_owned(),
    };
    AwsError {
        region: deps.clients.region.clone().into(),
        operation: "ebs:PutSnapshotBlock",
        resource: format!("{snapshot_id} from {}", up.object.uri()),
        kind: ErrorKind::Stopped,
        code: None,
        message: format!(
            "the Lambda deadline is near after {} bytes read (object of {size} bytes); {next}",
            transfer.bytes_read
        ),
    }
}

/// Continues from the checkpoint (when it is this snapshot's and this object's), writes the
/// blocks, completes the snapshot and forgets the checkpoint; near the deadline saves one.
async fn write_and_complete(
    deps: &Deps,
    up: &Upload<'_>,
    probe: &disk::Probe,
    snapshot_id: &str,
    transfer: &mut Transfer,
    deadline: Deadline,
    now: DateTime<Utc>,
) -> Result<(), WriteError> {
    let c = &deps.clients;
    let progress = deps.progress();
    let mut header = Header {
        version: 1,
        snapshot_id: snapshot_id.to_owned(),
        token: up.token.to_owned(),
        bucket: up.object.bucket.clone(),
        key: up.object.key.clone(),
        version_id: up.info.version_id.clone(),
        etag: up.info.etag.clone(),
        format: format_name(probe.format).to_owned(),
        total_len: probe.total_len,
        resume_offset: 0,
        overrides: up.overrides.clone(),
        saved_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        completed_at: None,
    };
    let start = match &progress {
        Some(p) => resume_point(p, &header, probe).await?,
        None => Start::default(),
    };
    if start.completed {
        // CompleteSnapshot was accepted by an earlier invocation: the snapshot takes no more
        // blocks ("You cannot write new blocks to a snapshot after it has been completed").
        let count = start.written.changed_blocks_count();
        transfer.blocks_resumed = count;
        info!(object = %up.object, snapshot_id, blocks = count, "CompleteSnapshot was accepted before; waiting for the snapshot to seal");
        return sealed(deps, up, snapshot_id, transfer, deadline, true).await;
    }
    if let Some(p) = &progress
        && start.written.changed_blocks_count() == 0
    {
        // A checkpoint from the start, so that the sweep can continue after a crash.
        let cp = Checkpoint {
            header: header.clone(),
            written: LinearChecksum::new(),
        };
        p.save(&cp).await.map_err(WriteError::Aws)?;
    }
    match write(deps, up, probe, snapshot_id, transfer, deadline, start).await {
        Ok(linear) => {
            let count = i32::try_from(linear.changed_blocks_count()).unwrap_or(i32::MAX);
            ebs::complete_snapshot(&c.ebs, snapshot_id, count, &linear.aggregate_base64())
                .await
                .map_err(WriteError::Aws)?;
            // Recorded before the wait: an invocation stopped while the snapshot seals leaves the
            // next one the wait, not blocks to write into a sealing snapshot. Unrecorded (no
            // state bucket, or the save failed), the wait is not cut short by the deadline: the
            // next delivery would write blocks the snapshot refuses.
            let mut recorded = false;
            if let Some(p) = &progress {
                header.completed_at =
                    Some(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                let cp = Checkpoint {
                    header,
                    written: linear,
                };
                match p.save(&cp).await {
                    Ok(()) => recorded = true,
                    Err(e) => {
                        warn!(snapshot_id, error = %e, "could not record that CompleteSnapshot was accepted; waiting for the snapshot to seal");
                    }
                }
            }
            sealed(deps, up, snapshot_id, transfer, deadline, recorded).await
        }
        Err(WriteError::Stopped {
            resume_offset,
            written,
        }) => {
            if let Some(p) = &progress {
                header.resume_offset = resume_offset;
                let cp = Checkpoint {
                    header,
                    written: written.clone(),
                };
                p.save(&cp).await.map_err(WriteError::Aws)?;
            }
            Err(WriteError::Stopped {
                resume_offset,
                written,
            })
        }
        Err(e) => Err(e),
    }
}

/// Waits (at most [`COMPLETE_WAIT`]; when the checkpoint `recorded` the completion, also within
/// the invocation's deadline) for the snapshot whose CompleteSnapshot was accepted to be
/// `completed`, then forgets its checkpoint. Still sealing when the time is up: a transient error
/// (the checkpoint says it was completed, so a redelivered event or the sweep only waits again
/// and registers).
async fn sealed(
    deps: &Deps,
    up: &Upload<'_>,
    snapshot_id: &str,
    transfer: &Transfer,
    deadline: Deadline,
    recorded: bool,
) -> Result<(), WriteError> {
    let wait = if recorded {
        COMPLETE_WAIT.min(deadline.remaining().saturating_sub(SAFETY_MARGIN))
    } else {
        COMPLETE_WAIT
    };
    let progress = deps.progress();
    if let Err(e) = ec2::wait_snapshot_completed(&deps.clients.ec2, snapshot_id, wait).await {
        let next = match progress.as_ref().filter(|_| recorded) {
            Some(p) => format!(
                "CompleteSnapshot was accepted and is recorded in {}: a redelivered event or the sweep waits for it and registers",
                p.checkpoint_object(up.token).uri()
            ),
            None => "CompleteSnapshot was accepted; no checkpoint records it".to_owned(),
        };
        // A wait that ran out with the accepted CompleteSnapshot in a checkpoint is a stop at
        // the deadline (not recorded for the sweep's retry: the continuation takes it up).
        let kind = match e.kind {
            ErrorKind::Stopped if !(recorded && progress.is_some()) => ErrorKind::Other,
            kind => kind,
        };
        return Err(WriteError::Aws(AwsError {
            kind,
            message: format!("{} (object {}); {next}", e.message, up.object.uri()),
            ..e
        }));
    }
    if let Some(p) = &progress {
        p.forget(up.token).await;
    }
    info!(object = %up.object, snapshot_id, blocks = transfer.blocks_written + transfer.blocks_resumed, bytes = transfer.bytes_read, resumed = transfer.blocks_resumed, "snapshot completed");
    Ok(())
}

/// Where this write starts: the checkpoint of this snapshot, when it was written from this very
/// object (same ETag and version, same length); nothing otherwise. A checkpoint of this snapshot
/// from another object means blocks of other content may be in it: refused. A checkpoint that
/// says CompleteSnapshot was accepted is taken as it is (`completed`): the snapshot is sealed
/// with the blocks it lists, and nothing is read or written again.
async fn resume_point(
    p: &Progress<'_>,
    header: &Header,
    probe: &disk::Probe,
) -> Result<Start, WriteError> {
    let Some(cp) = p.load(&header.token).await.map_err(WriteError::Aws)? else {
        return Ok(Start::default());
    };
    let was = &cp.header;
    if was.snapshot_id != header.snapshot_id {
        // Another snapshot of this upload (an earlier one, gone): not this write's.
        return Ok(Start::default());
    }
    if was.completed_at.is_some() {
        return Ok(Start {
            written: cp.written,
            offset: 0,
            completed: true,
        });
    }
    if was.etag != header.etag
        || was.version_id != header.version_id
        || was.total_len != header.total_len
    {
        return Err(WriteError::Changed(format!(
            "the object changed since the write of this snapshot began (ETag {:?}, {} bytes then; {:?}, {} bytes now)",
            was.etag, was.total_len, header.etag, header.total_len
        )));
    }
    let offset = if Decoder::resume_at(probe, was.resume_offset).is_some() {
        was.resume_offset
    } else {
        0
    };
    info!(snapshot_id = %header.snapshot_id, blocks = cp.written.changed_blocks_count(), offset, "continuing from the checkpoint");
    Ok(Start {
        written: cp.written,
        offset,
        completed: false,
    })
}

/// The decoder's name of a format, for the output.
fn format_name(f: disk::Format) -> &'static str {
    match f {
        disk::Format::Raw => "raw",
        disk::Format::VhdFixed => "VHD fixed",
        disk::Format::VhdDynamic => "VHD dynamic",
        disk::Format::VmdkStreamOptimized => "VMDK stream-optimized",
    }
}

/// Deletes a pending snapshot whose input was refused, so it is never completed or left to
/// time out; a failure is logged (AWS cancels it after its `Timeout` anyway).
async fn discard(deps: &Deps, snapshot_id: &str) {
    match ec2::delete_snapshot(&deps.clients.ec2, snapshot_id).await {
        Ok(()) => info!(snapshot_id, "pending snapshot of refused input deleted"),
        Err(e) => {
            warn!(snapshot_id, error = %e, "could not delete the pending snapshot; AWS cancels it after its timeout")
        }
    }
}

/// Reads, decodes and writes every block from `start` on; returns the LINEAR state for
/// CompleteSnapshot (the blocks written before included).
async fn write(
    deps: &Deps,
    up: &Upload<'_>,
    probe: &disk::Probe,
    snapshot_id: &str,
    transfer: &mut Transfer,
    deadline: Deadline,
    start: Start,
) -> Result<LinearChecksum, WriteError> {
    let c = &deps.clients;
    let size = probe.total_len;
    let (mut decoder, from) = match Decoder::resume_at(probe, start.offset) {
        Some(d) if start.offset > 0 => (d, start.offset),
        _ => (Decoder::new(probe), 0),
    };
    let ranges = (from / PART_BYTES..size.div_ceil(PART_BYTES)).map(|i| {
        let first = i * PART_BYTES;
        (first, (first + PART_BYTES).min(size) - 1)
    });
    // Each part read If-Match the ETag the checkpoint names: never two objects in one snapshot.
    let etag = up.info.etag.clone();
    let mut parts = stream::iter(ranges)
        .map(|(first, last)| {
            let s3 = c.s3.clone();
            let object = up.object.clone();
            let etag = etag.clone();
            tokio::spawn(async move {
                s3::get_range(&s3, &object, &format!("{first}-{last}"), etag.as_deref()).await
            })
        })
        .buffered(READ_PARTS);
    transfer.blocks_resumed = start.written.changed_blocks_count();
    let mut ctx = Puts {
        ebs: c.ebs.clone(),
        deadline,
        snapshot_id: snapshot_id.to_owned(),
        uri: up.object.uri(),
        set: JoinSet::new(),
        linear: start.written.clone(),
        before: start.written,
    };
    let mut pushed = from;
    while let Some(part) = parts.next().await {
        if !deadline.may_start() {
            // Let the writes in flight answer: then every block written is in `linear`.
            while let Some(done) = ctx.set.join_next().await {
                ctx.record(done)?;
            }
            let resume_offset = Decoder::resume_at(probe, pushed).map_or(0, |_| pushed);
            return Err(WriteError::Stopped {
                resume_offset,
                written: ctx.linear,
            });
        }
        let part = match part {
            Ok(Ok(part)) => part,
            Ok(Err(e)) => return Err(WriteError::Aws(e)),
            Err(e) => return Err(WriteError::Aws(ctx.error(ErrorKind::Other, e.to_string()))),
        };
        transfer.bytes_read += part.len() as u64;
        pushed += part.len() as u64;
        decoder.push(&part).map_err(WriteError::BadInput)?;
        ctx.drain(&mut decoder, transfer).await?;
    }
    decoder.finish();
    ctx.drain(&mut decoder, transfer).await?;
    while let Some(done) = ctx.set.join_next().await {
        ctx.record(done)?;
    }
    Ok(ctx.linear)
}

/// The PutSnapshotBlock calls in flight and the checksums of those done.
struct Puts {
    ebs: aws_sdk_ebs::Client,
    /// The invocation's: a block's wait for its snapshot ([`NOT_FOUND_WAIT`]) ends before it.
    deadline: Deadline,
    snapshot_id: String,
    uri: String,
    set: JoinSet<Result<(u32, BlockChecksum), AwsError>>,
    linear: LinearChecksum,
    /// The blocks an earlier invocation wrote (the checkpoint): not written again.
    before: LinearChecksum,
}

impl Puts {
    fn error(&self, kind: ErrorKind, message: String) -> AwsError {
        AwsError {
            region: self.ebs.config().region().map(ToString::to_string),
            operation: "ebs:PutSnapshotBlock",
            resource: format!("{} from {}", self.snapshot_id, self.uri),
            kind,
            code: None,
            message,
        }
    }

    /// Sends every block the decoder has ready (all-zero ones skipped unless the snapshot is
    /// encrypted), at most
    /// [`PUT_CONCURRENCY`] in flight.
    async fn drain(
        &mut self,
        decoder: &mut Decoder,
        transfer: &mut Transfer,
    ) -> Result<(), WriteError> {
        while let Some(block) = decoder.next_block().map_err(WriteError::BadInput)? {
            if let Some(listed) = self.before.get(block.index) {
                // Written by an earlier invocation: read again, it must be the same block.
                if BlockChecksum::of(&block.data) != listed {
                    return Err(WriteError::Changed(format!(
                        "block {} (disk offset {}) of {} differs from the one an earlier invocation wrote to {}",
                        block.index,
                        block.offset(),
                        self.uri,
                        self.snapshot_id
                    )));
                }
                continue;
            }
            // Not encrypted: an unwritten block reads as zeros. An encrypted snapshot's
            // unwritten block does not (awslabs/coldsnap#395): its zero blocks are written.
            if block.is_zero && !transfer.encrypted {
                transfer.zero_blocks_skipped += 1;
                continue;
            }
            while self.set.len() >= PUT_CONCURRENCY {
                if let Some(done) = self.set.join_next().await {
                    self.record(done)?;
                }
            }
            transfer.blocks_written += 1;
            self.spawn(block);
        }
        Ok(())
    }

    fn spawn(&mut self, block: Block) {
        let ebs = self.ebs.clone();
        let resource = format!(
            "{} block {} (disk offset {}) from {}",
            self.snapshot_id,
            block.index,
            block.offset(),
            self.uri
        );
        let snapshot_id = self.snapshot_id.clone();
        let deadline = self.deadline;
        self.set.spawn(async move {
            let index = block.index;
            let checksum = BlockChecksum::of(&block.data);
            let block_index = i32::try_from(index).unwrap_or(i32::MAX);
            let data = bytes::Bytes::from(block.data);
            let sum = checksum.base64();
            let waited = tokio::time::Instant::now();
            let mut pause = NOT_FOUND_FIRST_PAUSE;
            loop {
                match ebs::put_snapshot_block(
                    &ebs,
                    &snapshot_id,
                    block_index,
                    data.clone(),
                    &sum,
                    &resource,
                )
                .await
                {
                    Err(e)
                        if e.kind == ErrorKind::NotFound
                            && waited.elapsed() + pause <= NOT_FOUND_WAIT
                            && deadline.has_left(SAFETY_MARGIN + pause) =>
                    {
                        info!(resource = %resource, error = %e, pause_ms = pause.as_millis() as u64, "the snapshot is not writable yet; the block is sent again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(NOT_FOUND_MAX_PAUSE);
                    }
                    other => break other?,
                }
            }
            Ok((index, checksum))
        });
    }

    fn record(
        &mut self,
        done: Result<Result<(u32, BlockChecksum), AwsError>, tokio::task::JoinError>,
    ) -> Result<(), WriteError> {
        let (index, checksum) = done
            .map_err(|e| WriteError::Aws(self.error(ErrorKind::Other, e.to_string())))?
            .map_err(WriteError::Aws)?;
        self.linear.record(index, checksum);
        Ok(())
    }
}

/// Registers the completed snapshot (the import path's naming and duplicate rules) and
/// announces `image.registered` with `upload_method: ebs-direct` ([`announce_once`]). A
/// concurrent duplicate event that lost the race for the name adopts the winner's image and
/// leaves the announcement to it (or, if it stops first, to a later delivery's repair).
async fn register(
    deps: &Deps,
    up: &Upload<'_>,
    snapshot_id: &str,
    transfer: Transfer,
    now: DateTime<Utc>,
) -> Result<IngestOutcome, AwsError> {
    let c = &deps.clients;
    let snapshot = ec2::describe_snapshot(&c.ec2, snapshot_id).await?;
    let started_at = snapshot
        .start_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(now, |t| t.with_timezone(&Utc));
    let tags = upload::snapshot_tags(up.spec, up.object, up.info.etag.as_deref(), up.format);
    let reg = upload::registration(up.spec, snapshot_id, &tags, started_at);
    let size = match import::root_volume(up.spec, snapshot.volume_size_gib) {
        Ok(size) => size,
        Err(message) => return reject(deps, up.object, vec![message], now, true).await,
    };
    ec2::create_tags(&c.ec2, &[snapshot_id], &reg.tags).await?;
    let image_id = match register_named(deps, snapshot_id, &reg, size).await? {
        Registered::Image(id) => id,
        Registered::Adopted(image_id) => {
            // The claim decides which of the overlapping invocations announces.
            let announced = repair(deps, &registered_image(&reg, &image_id), now).await?;
            return Ok(IngestOutcome::AlreadyImported {
                object: up.object.uri(),
                image_id,
                announced,
            });
        }
        Registered::Refused(message) => {
            return reject(deps, up.object, vec![message], now, true).await;
        }
    };
    let image = registered_image(&reg, &image_id);
    announce_once(deps, &image, now).await?;
    Ok(IngestOutcome::Registered {
        object: up.object.uri(),
        image_id,
        snapshot_id: snapshot_id.to_owned(),
        upload_method: UploadMethod::EbsDirect,
        transfer,
    })
}
