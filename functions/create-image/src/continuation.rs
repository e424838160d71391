//! Pending fast-path snapshots continued by the sweep (issue #18).
//!
//! An invocation that stopped near its deadline saved a checkpoint ([`crate::progress`]) and
//! failed, so its event is delivered again; when the retries run out first (a disk needing more
//! invocations than the event source retries), the schedule continues it: each sweep looks at
//! the pipeline's `pending` fast-path snapshots, and one that has a checkpoint and no lease (no
//! invocation writing it) is continued — its object is ingested again with the checkpoint's
//! settings, and the fast path picks the write up from the checkpoint under its own lease. When
//! the object is no longer the one the checkpoint names (replaced: another ETag or version;
//! deleted), the snapshot is refused: deleted, never completed, and the checkpoint forgotten
//! (a replaced object has its own event and its own snapshot). A pending snapshot without a
//! checkpoint is its writer's, or nobody's: AWS cancels it after its `Timeout` and
//! [`crate::abandoned`] finishes the upload. Without a state bucket nothing is continued here.

use crate::config::Deps;
use crate::event::IngestItem;
use crate::ingest::ingest;
use crate::output::{IngestOutcome, StepAction, StepReport};
use crate::progress::{Checkpoint, Progress};
use chrono::{DateTime, Utc};
use shared::aws::{ec2, s3};
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::model::{ObjectRef, Select, Snapshot};
use shared::plan::lineage;
use shared::plan::upload::UploadMethod;
use std::collections::BTreeSet;
use tracing::{info, warn};

/// Continues each pending fast-path snapshot that has a checkpoint and no lease; one step each.
/// Returns the steps and how many were left for a later sweep (the deadline).
pub(crate) async fn continue_pending(
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<(Vec<StepReport>, usize), AwsError> {
    let Some(progress) = deps.progress() else {
        return Ok((Vec::new(), 0));
    };
    let pending = ec2::describe_own_snapshots_filtered(
        &deps.clients.ec2,
        &[
            Select::tag(lineage::MANAGED, ["true"]),
            Select::tag(lineage::UPLOAD_METHOD, [UploadMethod::EbsDirect.as_str()]),
            Select::state(["pending"]),
        ],
    )
    .await?;
    let mut seen = BTreeSet::new();
    let mut steps = Vec::new();
    let mut deferred = 0;
    for snapshot in &pending {
        let Some(token) = snapshot.tags.get(lineage::SOURCE_TOKEN) else {
            continue;
        };
        if !seen.insert(token.clone()) {
            continue;
        }
        let Some(cp) = progress.load(token).await? else {
            continue;
        };
        if cp.header.snapshot_id != snapshot.id || progress.leased(token, now).await? {
            continue;
        }
        if !deadline.may_start() {
            deferred += 1;
            continue;
        }
        steps.push(continue_one(deps, &progress, snapshot, cp, now, deadline).await);
    }
    Ok((steps, deferred))
}

/// One pending snapshot with a checkpoint: continued, or refused when its object changed.
async fn continue_one(
    deps: &Deps,
    progress: &Progress<'_>,
    snapshot: &Snapshot,
    cp: Checkpoint,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> StepReport {
    let step = |result: String, failed: bool| StepReport {
        task_id: snapshot.id.clone(),
        action: StepAction::Continue,
        result,
        failed,
    };
    let c = &deps.clients;
    let was = &cp.header;
    let latest = ObjectRef {
        version_id: None,
        ..cp.object()
    };
    let info = match s3::head_object(&c.s3, &latest).await {
        Ok(info) => Some(info),
        Err(e) if e.is_not_found() => None,
        Err(e) => return step(e.to_string(), true),
    };
    let unchanged = info
        .as_ref()
        .is_some_and(|i| i.etag == was.etag && i.version_id == was.version_id);
    if !unchanged {
        let now_is = info.map_or_else(
            || "deleted".to_owned(),
            |i| format!("ETag {:?}, version {:?}", i.etag, i.version_id),
        );
        warn!(snapshot_id = %snapshot.id, object = %latest, "the object changed since the write began; snapshot refused");
        if let Err(e) = ec2::delete_snapshot(&c.ec2, &snapshot.id).await {
            warn!(snapshot_id = %snapshot.id, error = %e, "could not delete the refused snapshot; AWS cancels it after its timeout");
        }
        progress.forget(&was.token).await;
        return step(
            format!(
                "refused: {} changed since the write began (ETag {:?}, version {:?} then; {now_is} now): snapshot deleted, {}",
                latest.uri(),
                was.etag,
                was.version_id,
                if was.completed_at.is_some() {
                    "not registered (its CompleteSnapshot was accepted)"
                } else {
                    "never completed"
                }
            ),
            false,
        );
    }
    let written = cp.written.changed_blocks_count();
    info!(snapshot_id = %snapshot.id, object = %latest, blocks = written, "continuing a pending fast-path snapshot from its checkpoint");
    let item = IngestItem {
        object: cp.object(),
        overrides: was.overrides.clone(),
    };
    // Boxed: the ingest's future is large, and the sweep's already holds it (debug builds'
    // stacks).
    let outcome = Box::pin(ingest(deps, item, now, deadline)).await;
    let failed = matches!(outcome, IngestOutcome::Error { .. });
    let text = serde_json::to_string(&outcome).unwrap_or_else(|e| e.to_string());
    step(
        format!("continued from its checkpoint ({written} blocks written before): {text}"),
        failed,
    )
}
