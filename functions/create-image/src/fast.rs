//! The fast path: create-image writes the snapshot itself from the S3 object with the EBS direct
//! APIs, then registers the AMI in the same invocation (issue #18).
//!
//! 1. **Decide** ([`decide`]): two ranged GETs (the first 64 KiB, the last 512 bytes) and
//!    [`disk::probe`] name the format and the virtual size; [`upload::choose`] takes the fast
//!    path or the ImportSnapshot fallback (and says why).
//! 2. **Start**: StartSnapshot with `VolumeSize` (GiB, rounded up), `ClientToken` = the upload's
//!    token (bucket, key, version or ETag — the import's idempotency token), the pipeline's tags
//!    at creation, `Timeout` [`upload::SNAPSHOT_TIMEOUT_MINUTES`]. A duplicate event gets the same
//!    snapshot and rewrites the same blocks (a rewrite overwrites with the same bytes); a
//!    snapshot of this upload already `completed` is registered without writing again.
//! 3. **Write**: the object is read with [`READ_PARTS`] concurrent ranged GETs of [`PART_BYTES`]
//!    (in order), pushed through [`disk::Decoder`] (raw, VHD fixed/dynamic, stream-optimized
//!    VMDK) into 512 KiB blocks; each block's SHA-256 is computed and the block sent with
//!    PutSnapshotBlock, at most [`PUT_CONCURRENCY`] in flight. Holes are never written; all-zero
//!    blocks are skipped (the snapshot is not encrypted, so an unwritten block reads as zeros).
//! 4. **Complete**: CompleteSnapshot with `ChangedBlocksCount` and the LINEAR aggregate
//!    (base64 SHA-256 of the per-block digests in ascending index order); wait for `completed`
//!    (DescribeSnapshots); register through the import path's naming rules; `image.registered`.
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
//! and 5xx are retried by the SDK. Near the Lambda deadline the write stops the same way.
//! Resume across invocations is not implemented: the size bound `FAST_PATH_MAX_GIB` sends what
//! one invocation cannot write to ImportSnapshot.

use crate::announce::{announce_once, repair};
use crate::config::Deps;
use crate::ingest::reject;
use crate::output::{IngestOutcome, Transfer};
use crate::register::{Registered, register_named, registered_image};
use chrono::{DateTime, Utc};
use disk::{Block, BlockChecksum, DecodeError, Decoder, LinearChecksum};
use futures::stream::{self, StreamExt};
use shared::aws::{ebs, ec2, s3};
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::model::{DiskFormat, ObjectInfo, ObjectRef, Select};
use shared::plan::import;
use shared::plan::lineage;
use shared::plan::spec::ImageSpec;
use shared::plan::upload::{self, Choice, MethodSetting, Probed, UploadMethod};
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
}

/// Probes the object (unless the function is set to ImportSnapshot) and chooses the method.
pub(crate) async fn decide(
    deps: &Deps,
    object: &ObjectRef,
    info: &ObjectInfo,
) -> Result<Decision, AwsError> {
    let cfg = &deps.config;
    if cfg.upload_method == MethodSetting::ImportSnapshot {
        return Ok(Decision::Import("UPLOAD_METHOD=import-snapshot".into()));
    }
    let c = &deps.clients;
    let head_len = info.size.min(disk::PROBE_HEAD_LEN as u64);
    let tail_len = info.size.min(disk::PROBE_TAIL_LEN as u64);
    let head = s3::get_range(&c.s3, object, &format!("0-{}", head_len.saturating_sub(1))).await?;
    let tail = s3::get_range(&c.s3, object, &format!("-{tail_len}")).await?;
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
    match decide(deps, up.object, up.info).await? {
        Decision::Fast(probe) => run(deps, up, &probe, now, deadline).await.map(Ok),
        Decision::Bad(problem) => {
            let problems = vec![format!("content: {problem}")];
            reject(deps, up.object, problems, now, true).await.map(Ok)
        }
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
}

/// Why writing stopped.
enum WriteError {
    /// The content is damaged: the decoder's message.
    BadInput(DecodeError),
    /// An AWS call failed (or the deadline came).
    Aws(AwsError),
}

/// Writes the snapshot (or finds it written), completes it and registers the AMI.
pub(crate) async fn run(
    deps: &Deps,
    up: Upload<'_>,
    probe: &disk::Probe,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<IngestOutcome, AwsError> {
    let c = &deps.clients;
    let tags = upload::snapshot_tags(up.spec, up.object, up.info.etag.as_deref(), up.format);
    let mut transfer = Transfer {
        format: format_name(probe.format),
        virtual_size: probe.virtual_size,
        ..Transfer::default()
    };
    let done = ec2::describe_own_snapshots_filtered(
        &c.ec2,
        &[
            Select::tag(lineage::SOURCE_TOKEN, [up.token]),
            Select::tag(lineage::UPLOAD_METHOD, [UploadMethod::EbsDirect.as_str()]),
            Select::state(["completed"]),
        ],
    )
    .await?;
    let snapshot_id = if let Some(s) = done.first() {
        info!(object = %up.object, snapshot_id = %s.id, "snapshot already written by an earlier event");
        transfer.reused = true;
        s.id.clone()
    } else {
        let description =
            lineage::fit_tag_value(&format!("ami-pipeline ebs-direct of {}", up.object.uri()));
        let started = ebs::start_snapshot(
            &c.ebs,
            ebs::StartRequest {
                volume_size_gib: probe.volume_size_gib() as i64,
                client_token: up.token,
                tags: &tags,
                description: &description,
                timeout_minutes: upload::SNAPSHOT_TIMEOUT_MINUTES,
            },
        )
        .await?;
        let id = started.snapshot_id;
        info!(object = %up.object, snapshot_id = %id, volume_gib = probe.volume_size_gib(), "snapshot started");
        match write(deps, &up, probe, &id, &mut transfer, deadline).await {
            Ok(linear) => {
                let count = i32::try_from(linear.changed_blocks_count()).unwrap_or(i32::MAX);
                ebs::complete_snapshot(&c.ebs, &id, count, &linear.aggregate_base64()).await?;
                ec2::wait_snapshot_completed(&c.ec2, &id, COMPLETE_WAIT).await?;
                info!(object = %up.object, snapshot_id = %id, blocks = count, bytes = transfer.bytes_read, "snapshot completed");
            }
            Err(WriteError::BadInput(e)) => {
                discard(deps, &id).await;
                let problem = format!("content: {e} (snapshot {id} deleted, never completed)");
                return reject(deps, up.object, vec![problem], now, true).await;
            }
            Err(WriteError::Aws(e)) => {
                // A concurrent duplicate event may have completed the snapshot while this one
                // was still writing (the same blocks), or an earlier delivery completed it and
                // stopped (the same ClientToken answers the same snapshot, and the
                // DescribeSnapshots above did not list it yet): then register it, else report
                // the error.
                match completed_by_another(deps, &id).await {
                    Seen::Completed => {}
                    Seen::NotCompleted => return Err(e),
                    Seen::Unknown(why) => {
                        // Whether it is completed is unknown: a transient failure, so the event
                        // is retried rather than the upload reported failed (image.failed) over
                        // a snapshot that may be complete.
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
                info!(object = %up.object, snapshot_id = %id, "snapshot completed by a concurrent duplicate event");
                transfer.reused = true;
            }
        }
        id
    };
    register(deps, &up, &snapshot_id, transfer, now).await
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

/// Reads, decodes and writes every block; returns the LINEAR state for CompleteSnapshot.
async fn write(
    deps: &Deps,
    up: &Upload<'_>,
    probe: &disk::Probe,
    snapshot_id: &str,
    transfer: &mut Transfer,
    deadline: Deadline,
) -> Result<LinearChecksum, WriteError> {
    let c = &deps.clients;
    let size = probe.total_len;
    let ranges = (0..size.div_ceil(PART_BYTES)).map(|i| {
        let start = i * PART_BYTES;
        (start, (start + PART_BYTES).min(size) - 1)
    });
    let mut parts = stream::iter(ranges)
        .map(|(start, end)| {
            let s3 = c.s3.clone();
            let object = up.object.clone();
            tokio::spawn(
                async move { s3::get_range(&s3, &object, &format!("{start}-{end}")).await },
            )
        })
        .buffered(READ_PARTS);
    let mut ctx = Puts {
        ebs: c.ebs.clone(),
        snapshot_id: snapshot_id.to_owned(),
        uri: up.object.uri(),
        set: JoinSet::new(),
        linear: LinearChecksum::new(),
    };
    let mut decoder = Decoder::new(probe);
    while let Some(part) = parts.next().await {
        if !deadline.may_start() {
            return Err(WriteError::Aws(ctx.error(
                ErrorKind::Other,
                format!(
                    "the Lambda deadline is near after {} of {size} bytes; a redelivered event continues (same snapshot)",
                    transfer.bytes_read
                ),
            )));
        }
        let part = part
            .map_err(|e| WriteError::Aws(ctx.error(ErrorKind::Other, e.to_string())))?
            .map_err(WriteError::Aws)?;
        transfer.bytes_read += part.len() as u64;
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
    snapshot_id: String,
    uri: String,
    set: JoinSet<Result<(u32, BlockChecksum), AwsError>>,
    linear: LinearChecksum,
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

    /// Sends every block the decoder has ready (all-zero ones skipped), at most
    /// [`PUT_CONCURRENCY`] in flight.
    async fn drain(
        &mut self,
        decoder: &mut Decoder,
        transfer: &mut Transfer,
    ) -> Result<(), WriteError> {
        while let Some(block) = decoder.next_block().map_err(WriteError::BadInput)? {
            // Not encrypted: an unwritten block reads as zeros (awslabs/coldsnap#395: not so
            // for encrypted snapshots, which this path does not make).
            if block.is_zero {
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
        self.set.spawn(async move {
            let index = block.index;
            let checksum = BlockChecksum::of(&block.data);
            let block_index = i32::try_from(index).unwrap_or(i32::MAX);
            ebs::put_snapshot_block(
                &ebs,
                &snapshot_id,
                block_index,
                block.data,
                &checksum.base64(),
                &resource,
            )
            .await?;
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
    let size = match import::volume_size(up.spec.volume_size_gib, snapshot.volume_size_gib) {
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
