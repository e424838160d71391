//! Abandoned fast-path uploads, finished by the sweep.
//!
//! A fast-path invocation that stops before CompleteSnapshot (the Lambda deadline, an AWS error
//! that does not clear, a crash) leaves its snapshot `pending`; AWS cancels it after its
//! `Timeout` (60 minutes) and it turns `error`. A redelivered event then takes ImportSnapshot
//! ([`crate::fast::run`]: the upload's ClientToken would answer the dead snapshot again). When
//! no event comes again (the retries ran out, the event went to the dead-letter queue), the
//! sweep finds the upload by its errored snapshot — tagged at creation with the object, its
//! version and the upload's token — and ingests it again: ImportSnapshot, registered by a later
//! sweep. An upload that already has an image, or an import task, is left alone. When the
//! object can no longer be imported (deleted, replaced by a newer version, now invalid), the
//! upload is reported by the ingest (`image.failed`, object tagged) and the dead snapshot is
//! deleted, so that the next sweep does not report it again. Settings given in a manual invoke
//! of the original upload are not known here: the object's metadata and the defaults apply.
//!
//! The same holds for an invocation that stops after CompleteSnapshot and before RegisterImage
//! with no event left to retry it: the snapshot is `completed` and no image was made from it.
//! The sweep ingests the upload again once the snapshot is older than a lease ([`LEASE`], so a
//! writer still at work is not raced for nothing; a race would be harmless: the second
//! registration adopts the first's image and the announcement is claimed), and the fast path
//! registers the completed snapshot without writing it. Its snapshot is deleted only when the
//! upload is refused or superseded (never when an image exists: it may be that image's). A
//! completed snapshot whose registration was refused (its object tagged `rejected`) is not
//! taken up: ingested again it would get other settings than the refused invoke's.
//!
//! And for a writer that stopped before saving its first checkpoint (say, right after its lease
//! was created, so that every other delivery found the lease held and answered `in-progress`):
//! a `pending` snapshot with no checkpoint, whose lease has expired, older than a lease. Without
//! this it waited for AWS's 60-minute `Timeout` and then ImportSnapshot; ingested again, the
//! fast path takes the expired lease over and writes the snapshot from the start (the same
//! token answers the same snapshot; a block written twice holds the same bytes).

use crate::config::Deps;
use crate::event::IngestItem;
use crate::ingest::ingest;
use crate::output::{IngestOutcome, StepAction, StepReport};
use crate::progress::LEASE;
use chrono::{DateTime, Utc};
use shared::aws::{ec2, s3};
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::model::{ImportTask, ObjectRef, Select, Snapshot};
use shared::plan::lineage;
use shared::plan::upload::UploadMethod;
use std::collections::{BTreeMap, BTreeSet};
use tracing::{info, warn};

/// Ingests again each upload whose fast-path snapshot ended in `error`, was completed at least
/// a [`LEASE`] ago, or is still pending after a lease with no checkpoint and no live lease, and
/// that has neither an image nor an import task; one step per such upload.
pub(crate) async fn resume(
    deps: &Deps,
    tasks: &[ImportTask],
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<(Vec<StepReport>, usize), AwsError> {
    let c = &deps.clients;
    let dead = ec2::describe_own_snapshots_filtered(
        &c.ec2,
        &[
            Select::tag(lineage::MANAGED, ["true"]),
            Select::tag(lineage::UPLOAD_METHOD, [UploadMethod::EbsDirect.as_str()]),
            Select::state(["error", "completed", "pending"]),
        ],
    )
    .await?;
    let settled = |s: &Snapshot| {
        s.state.as_deref() == Some("error")
            || s.start_time
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| now - t.with_timezone(&Utc) >= LEASE)
    };
    let mut by_token: BTreeMap<String, &Snapshot> = BTreeMap::new();
    for s in dead.iter().filter(|s| settled(s)) {
        if let Some(token) = s.tags.get(lineage::SOURCE_TOKEN) {
            by_token.entry(token.clone()).or_insert(s);
        }
    }
    let importing: BTreeSet<&str> = tasks
        .iter()
        .filter_map(|t| t.tags.get(lineage::SOURCE_TOKEN).map(String::as_str))
        .collect();
    by_token.retain(|token, _| !importing.contains(token.as_str()));
    let tokens: Vec<String> = by_token.keys().cloned().collect();
    for chunk in tokens.chunks(100) {
        let images = ec2::describe_own_images(
            &c.ec2,
            &[Select::tag(lineage::SOURCE_TOKEN, chunk.iter().cloned())],
        )
        .await?;
        for image in images {
            if let Some(token) = image.tags.get(lineage::SOURCE_TOKEN) {
                by_token.remove(token);
            }
        }
    }
    // A pending one is continued by the sweep's continuation when it has a checkpoint, and by
    // its writer while the lease is live: only the others are taken here.
    if let Some(progress) = deps.progress() {
        let mut stalled = BTreeMap::new();
        for (token, snapshot) in by_token {
            let take = snapshot.state.as_deref() != Some("pending")
                || (!progress.leased(&token, now).await?
                    && progress
                        .load(&token)
                        .await?
                        .is_none_or(|cp| cp.header.snapshot_id != snapshot.id));
            if take {
                stalled.insert(token, snapshot);
            }
        }
        by_token = stalled;
    }
    let mut steps = Vec::new();
    let mut deferred = 0;
    for snapshot in by_token.into_values() {
        if !deadline.may_start() {
            deferred += 1;
            continue;
        }
        if snapshot.state.as_deref() == Some("completed")
            && refused_at_registration(deps, snapshot).await
        {
            continue;
        }
        steps.push(resume_one(deps, snapshot, now, deadline).await);
    }
    Ok((steps, deferred))
}

/// Whether a completed snapshot's upload was refused when it was registered (its object tagged
/// `rejected`, as the refusal does): then it is left alone. Ingested again it would get the
/// object's metadata and the defaults only, not the refused invoke's settings (an image the
/// operator had not asked for), or be refused and reported twice. A new invoke of the object
/// registers it without writing it again (the fast path finds the completed snapshot); else
/// cleanup's orphan sweep deletes it after `GRACE_DAYS`. An object whose tags cannot be read
/// is taken up as before.
async fn refused_at_registration(deps: &Deps, snapshot: &Snapshot) -> bool {
    let Some(object) = object_of(&snapshot.tags) else {
        return false;
    };
    match s3::get_tags(&deps.clients.s3, &object).await {
        Ok(tags) if tags.get(lineage::OBJECT_STATUS).map(String::as_str) == Some("rejected") => {
            info!(snapshot_id = %snapshot.id, object = %object, "completed snapshot of an upload refused at registration; left for a new invoke or cleanup");
            true
        }
        Ok(_) => false,
        Err(e) => {
            if !e.is_not_found() {
                warn!(snapshot_id = %snapshot.id, object = %object, error = %e, "could not read the object's status; taking the upload up again");
            }
            false
        }
    }
}

/// One abandoned upload: ingest its object again; delete the dead snapshot once the upload is
/// concluded otherwise (reported, superseded, or an image made of the key's content).
async fn resume_one(
    deps: &Deps,
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> StepReport {
    let step = |result: String, failed: bool| StepReport {
        task_id: snapshot.id.clone(),
        action: StepAction::Resume,
        result,
        failed,
    };
    let Some(object) = object_of(&snapshot.tags) else {
        return step(
            "its source object cannot be addressed from its tags; left to cleanup's orphan sweep"
                .into(),
            false,
        );
    };
    let completed = snapshot.state.as_deref() == Some("completed");
    info!(snapshot_id = %snapshot.id, object = %object, completed, "fast-path upload abandoned; ingesting it again");
    let item = IngestItem {
        object,
        overrides: BTreeMap::new(),
    };
    // Boxed: the sweep runs after every ingest, and an ingest future inside the sweep's would
    // double the size of every invocation's future (a stack overflow in debug builds).
    let outcome = Box::pin(ingest(deps, item, now, deadline)).await;
    // Concluded: nothing will take this upload's dead snapshot again (an image exists for the
    // key's content, or the upload is refused or replaced). After ImportStarted it stays until
    // the image exists: a redelivered event finds it and takes ImportSnapshot too.
    // A completed snapshot is deleted only when the upload is refused or replaced: with an
    // image of the key's content it may be that image's own snapshot.
    let concluded = matches!(
        outcome,
        IngestOutcome::Rejected { .. } | IngestOutcome::Superseded { .. }
    ) || (!completed && matches!(outcome, IngestOutcome::AlreadyImported { .. }));
    if concluded && let Err(e) = ec2::delete_snapshot(&deps.clients.ec2, &snapshot.id).await {
        warn!(snapshot_id = %snapshot.id, error = %e, "could not delete the dead snapshot; cleanup's orphan sweep will");
    }
    let failed = matches!(outcome, IngestOutcome::Error { .. });
    let text = serde_json::to_string(&outcome).unwrap_or_else(|e| e.to_string());
    let what = match snapshot.state.as_deref() {
        Some("completed") => "the fast path's snapshot was completed but no image was made from it",
        Some("pending") => {
            "the fast path's write stopped before its first checkpoint and its lease expired"
        }
        _ => "the fast path's snapshot ended in error",
    };
    step(format!("{what}; ingested again: {text}"), failed)
}

/// The object a pipeline snapshot was made from (`source-uri`, `source-version` tags); None
/// when the tag was cut or escaped (never address an object with it).
pub(crate) fn object_of(tags: &shared::model::Tags) -> Option<ObjectRef> {
    let uri = tags.get(lineage::SOURCE_URI)?;
    if uri.contains('…') || uri.contains("\\u{") {
        return None;
    }
    let rest = uri.strip_prefix("s3://")?;
    let rest = rest.split("?versionId=").next()?;
    let (bucket, key) = rest.split_once('/')?;
    Some(ObjectRef {
        bucket: bucket.into(),
        key: key.into(),
        version_id: tags.get(lineage::SOURCE_VERSION).cloned(),
    })
}
