//! Uploads stopped by a transient error, taken up again by the scheduled sweep.
//!
//! An ingest stopped by a transient error (throttling, a 5xx, a quota that clears by itself such
//! as the 100 pending EBS snapshots of an account, past the SDK's retries) fails the invocation
//! without `image.failed`: Lambda runs the event again twice (`AsyncMaxRetries`: about a minute
//! later, then two minutes after that), then keeps it in the dead-letter queue. A cause that
//! outlasts those minutes would leave the upload there, unreported and undone. So each such stop
//! is also recorded in the state bucket, `deferred/<digest of the object's URI and version>`
//! (JSON: the object, the manual invoke's settings, when it first and last stopped, how many
//! times, the last error), and every scheduled sweep ingests each recorded upload again:
//!
//! - the ingest concludes (registered, import started, already imported, rejected, superseded,
//!   failed for good and reported): the record is deleted;
//! - it stops on a transient error again: the ingest updates the record (one more stop), and the
//!   next sweep tries again;
//! - the first stop is [`GIVE_UP_AFTER`] old: the upload is reported `image.failed` (claimed, so
//!   once however many sweeps overlap) with the count, the span and the last error, and the
//!   record deleted. Ingesting it again later (a manual invoke, or the dead-letter queue's
//!   redrive) is safe: every step is idempotent.
//!
//! Overlapping sweeps may ingest the same upload at once: the ingest's ClientTokens and
//! announcement claims make that one snapshot, one image and one announcement. A Lambda retry
//! that succeeds leaves its record for the next sweep, whose ingest finds the work done
//! (`already-imported` or the same import task) and deletes it. Without a state bucket nothing
//! is recorded (the dead-letter queue is the only trace). **Size bound**: one record of at most a
//! few KiB per upload stopped (an S3 key is at most 1,024 bytes, the error is cut to 1,000
//! characters); the bucket's lifecycle expires the prefix after 7 days, long after the give-up.

use crate::config::Deps;
use crate::event::IngestItem;
use crate::ingest::{failed_message, ingest_classified};
use crate::output::{IngestOutcome, StepAction, StepReport};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shared::aws::s3;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::model::ObjectRef;
use shared::notify::Message;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// The state bucket's prefix of the records.
pub(crate) const PREFIX: &str = "deferred/";

/// How long after its first transient stop an upload is given up and reported.
pub const GIVE_UP_AFTER: chrono::Duration = chrono::Duration::hours(24);

/// Longest error text kept in a record.
const ERROR_CHARS: usize = 1_000;

/// One upload stopped by transient errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The object's bucket.
    pub bucket: String,
    /// Its key.
    pub key: String,
    /// Its version, when the event named one.
    pub version_id: Option<String>,
    /// Settings a manual invoke gave.
    pub overrides: BTreeMap<String, String>,
    /// When it first stopped (RFC 3339).
    pub first_stopped_at: String,
    /// When it last stopped.
    pub last_stopped_at: String,
    /// How many times it stopped.
    pub stops: u32,
    /// The last error.
    pub error: String,
}

impl Record {
    fn item(&self) -> IngestItem {
        IngestItem {
            object: ObjectRef {
                bucket: self.bucket.clone(),
                key: self.key.clone(),
                version_id: self.version_id.clone(),
            },
            overrides: self.overrides.clone(),
        }
    }

    fn first_stopped(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.first_stopped_at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The record's object for `object` in `state_bucket`.
fn record_object(state_bucket: &str, object: &ObjectRef) -> ObjectRef {
    ObjectRef {
        bucket: state_bucket.to_owned(),
        key: format!("{PREFIX}{}", shared::claim::digest(&object.uri())),
        version_id: None,
    }
}

/// Reads a record; None when there is none or it cannot be read as one.
async fn load(deps: &Deps, obj: &ObjectRef) -> Result<Option<Record>, AwsError> {
    match s3::get_object(&deps.clients.s3, obj).await {
        Ok((bytes, _)) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records that `item`'s ingest stopped on `error` (transient) at `now`: a new record, or one
/// more stop on the upload's record. Best effort: without it the event's own retries still run.
pub(crate) async fn note(deps: &Deps, item: &IngestItem, error: &AwsError, now: DateTime<Utc>) {
    let Some(state) = deps.config.claims.bucket.as_deref() else {
        return;
    };
    let obj = record_object(state, &item.object);
    let at = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let earlier = match load(deps, &obj).await {
        Ok(r) => r,
        Err(e) => {
            warn!(record = %obj.uri(), error = %e, "could not read the upload's deferral record; writing a new one");
            None
        }
    };
    let text: String = error.to_string().chars().take(ERROR_CHARS).collect();
    let record = match earlier {
        Some(r) => Record {
            last_stopped_at: at,
            stops: r.stops.saturating_add(1),
            error: text,
            ..r
        },
        None => Record {
            bucket: item.object.bucket.clone(),
            key: item.object.key.clone(),
            version_id: item.object.version_id.clone(),
            overrides: item.overrides.clone(),
            first_stopped_at: at.clone(),
            last_stopped_at: at,
            stops: 1,
            error: text,
        },
    };
    let body = serde_json::to_vec(&record).unwrap_or_default();
    match s3::put_object(&deps.clients.s3, &obj, body).await {
        Ok(()) => {
            info!(object = %item.object, record = %obj.uri(), stops = record.stops, "upload stopped by a transient error recorded for the scheduled sweep")
        }
        Err(e) => {
            warn!(object = %item.object, record = %obj.uri(), error = %e, "could not record the stopped upload; only the event's retries take it up again")
        }
    }
}

/// The scheduled sweep's part: each recorded upload ingested again, or given up and reported.
/// Returns one step per record acted on, and how many the deadline left for the next run.
pub(crate) async fn retry(
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<(Vec<StepReport>, usize), AwsError> {
    let Some(state) = deps.config.claims.bucket.as_deref() else {
        return Ok((Vec::new(), 0));
    };
    let keys = s3::list_keys(&deps.clients.s3, state, PREFIX).await?;
    let mut steps = Vec::new();
    let mut later = 0;
    for key in keys {
        if !deadline.may_start() {
            later += 1;
            continue;
        }
        let obj = ObjectRef {
            bucket: state.to_owned(),
            key,
            version_id: None,
        };
        if let Some(step) = retry_one(deps, &obj, now, deadline).await {
            steps.push(step);
        }
    }
    Ok((steps, later))
}

/// One record: given up (reported, deleted), or ingested again (deleted unless it stopped on a
/// transient error again). None when the record is gone (another sweep concluded it).
async fn retry_one(
    deps: &Deps,
    obj: &ObjectRef,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Option<StepReport> {
    let c = &deps.clients;
    let step = |task_id: String, result: String, failed: bool| StepReport {
        task_id,
        action: StepAction::Retry,
        result,
        failed,
    };
    let record = match load(deps, obj).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            // Gone (another sweep concluded it), or not a record: nothing to retry.
            if let Err(e) = s3::delete_object(&c.s3, obj).await {
                warn!(record = %obj.uri(), error = %e, "could not delete an unreadable deferral record");
            }
            return None;
        }
        Err(e) => return Some(step(obj.uri(), e.to_string(), true)),
    };
    let item = record.item();
    let uri = item.object.uri();
    let first = record.first_stopped().unwrap_or(now);
    if now - first >= GIVE_UP_AFTER {
        let error = format!(
            "given up: the upload was stopped by a transient error {} time(s) from {} to {} (the event's retries and every scheduled sweep since); the last: {}. Upload it again, or invoke create-image with {{\"bucket\", \"key\"}}, once the cause is fixed",
            record.stops, record.first_stopped_at, record.last_stopped_at, record.error
        );
        let msg = Message {
            source_uri: Some(uri.clone()),
            error: Some(error.clone()),
            dedup_detail: Some(shared::claim::digest(&format!(
                "deferred {} {}",
                obj.key, record.first_stopped_at
            ))),
            ..failed_message(deps, now)
        };
        if let Err(e) = deps
            .config
            .claims
            .report_once(&c.s3, &c.sns, &deps.config.common.topic_arn, &msg, now)
            .await
        {
            // Kept: the next sweep reports it.
            return Some(step(
                uri,
                format!("could not report the upload given up: {e}"),
                true,
            ));
        }
        warn!(object = %uri, stops = record.stops, "upload given up after transient errors; reported");
        if let Err(e) = s3::delete_object(&c.s3, obj).await {
            warn!(record = %obj.uri(), error = %e, "could not delete the deferral record; the report is claimed, so it is not sent again");
        }
        return Some(step(uri, error, false));
    }
    info!(object = %uri, stops = record.stops, "ingesting an upload stopped by a transient error again");
    // Boxed: the ingest's future is large, and the sweep's already holds it (debug builds'
    // stacks).
    let (outcome, transient) = Box::pin(ingest_classified(deps, item, now, deadline)).await;
    if !transient && let Err(e) = s3::delete_object(&c.s3, obj).await {
        warn!(record = %obj.uri(), error = %e, "could not delete the deferral record; the next sweep ingests the upload again (idempotent)");
    }
    let failed = matches!(outcome, IngestOutcome::Error { .. });
    let text = serde_json::to_string(&outcome).unwrap_or_else(|e| e.to_string());
    Some(step(
        uri,
        format!(
            "stopped by a transient error {} time(s) since {}; ingested again: {text}",
            record.stops, record.first_stopped_at
        ),
        failed,
    ))
}
