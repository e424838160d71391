//! Uploads stopped by a transient error, taken up again by the scheduled sweep.
//!
//! An ingest stopped by a transient error (throttling, a 5xx, a quota that clears by itself such
//! as the 100 pending EBS snapshots of an account, past the SDK's retries) fails the invocation
//! without `image.failed`: Lambda runs the event again twice (`AsyncMaxRetries`: about a minute
//! later, then two minutes after that), then keeps it in the dead-letter queue. A cause that
//! outlasts those minutes would leave the upload there, unreported and undone. So each such stop
//! is also recorded in the state bucket, `deferred/<digest of the object's URI and version>`
//! (JSON: the object, the invoke's settings, when it first and last stopped, how many times, the
//! last error), and every scheduled sweep takes each record up, least recently tried first:
//!
//! - it takes the record for [`TAKE`] (a conditional write of `taken_until`: of overlapping
//!   sweeps exactly one has it; the others pass it by);
//! - it ingests the upload again. Concluded (registered, import started or in progress, already
//!   imported, superseded by a newer version, rejected or failed for good and reported): the
//!   record is deleted;
//! - stopped on a transient error again: one more stop is counted, and the next sweep tries
//!   again — unless the first stop is [`GIVE_UP_AFTER`] old: then the upload is reported
//!   `image.failed` (claimed, under the record's first stop: once however many sweeps come, while
//!   the state bucket answers) with the count, the span and the last error, and the record is
//!   deleted. Ingesting it later (a manual invoke, the dead-letter queue's redrive) is safe: every
//!   step is idempotent.
//!
//! The give-up comes only after an ingest that stopped again, so an upload that a Lambda retry or
//! a redrive concluded meanwhile is found done (`already-imported`, the same import task) and its
//! record deleted, not reported. Records are written conditionally (`If-None-Match` /
//! `If-Match`): a stop noted by the event's own retry while a sweep holds the record is counted,
//! and the sweep, whose write then loses, leaves the record for the next sweep. A record is
//! never written blind: when it cannot be read, the stop is not recorded (the event's retries
//! still run) rather than resetting its first stop. Without a state bucket nothing is recorded
//! (the dead-letter queue is the only trace).
//!
//! An ingest that concludes deletes the upload's record itself, so a Lambda retry that makes the
//! image leaves nothing for the sweep (whose ingest would report an object deleted since as
//! missing). A sweep killed while it holds a record (out of memory or time) counts a stop when
//! the hold runs out; one a day after the first stop is given up without another ingest.
//!
//! **Bounds**: the sweep takes the records one at a time (each may be a fast-path write) and
//! stops starting new ones near its deadline (those are counted as deferred, and come first next time, since a
//! record's LastModified is its last try). One record of at most a few KiB per upload stopped
//! (an S3 key is at most 1,024 bytes, the error is cut to 1,000 characters); the bucket's
//! lifecycle expires the prefix after 7 days, long after the give-up.

use crate::config::Deps;
use crate::event::IngestItem;
use crate::ingest::{failed_message, ingest_classified};
use crate::output::{IngestOutcome, StepAction, StepReport};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shared::aws::s3::{self, Condition};
use shared::claim::Sent;
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::model::ObjectRef;
use shared::notify::Message;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// The state bucket's prefix of the records.
pub(crate) const PREFIX: &str = "deferred/";

/// How long after its first transient stop an upload still stopped is given up and reported.
pub const GIVE_UP_AFTER: chrono::Duration = chrono::Duration::hours(24);

/// How long a sweep holds a record it took: Lambda's longest invocation.
pub(crate) const TAKE: chrono::Duration = chrono::Duration::minutes(15);

/// The last error of a record whose sweep stopped without concluding it.
const ABANDONED: &str = "the scheduled sweep that took it up stopped without concluding it";

/// Longest error text kept in a record.
const ERROR_CHARS: usize = 1_000;

/// How many times [`note`] reads and writes a record that other writers keep changing.
const NOTE_ATTEMPTS: usize = 3;

/// One upload stopped by transient errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The object's bucket.
    pub bucket: String,
    /// Its key.
    pub key: String,
    /// Its version, when the event named one.
    pub version_id: Option<String>,
    /// Settings a manual invoke gave (the last stop's).
    pub overrides: BTreeMap<String, String>,
    /// When it first stopped (RFC 3339).
    pub first_stopped_at: String,
    /// When it last stopped.
    pub last_stopped_at: String,
    /// How many times it stopped.
    pub stops: u32,
    /// The last error.
    pub error: String,
    /// Until when a sweep that took the record holds it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_until: Option<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Record {
    /// The first stop of `item`'s ingest, at `now`, on `error`.
    fn new(item: &IngestItem, now: DateTime<Utc>, error: &str) -> Self {
        Record {
            bucket: item.object.bucket.clone(),
            key: item.object.key.clone(),
            version_id: item.object.version_id.clone(),
            overrides: item.overrides.clone(),
            first_stopped_at: rfc3339(now),
            last_stopped_at: rfc3339(now),
            stops: 1,
            error: error.chars().take(ERROR_CHARS).collect(),
            taken_until: None,
        }
    }

    /// One more stop, with the settings of the ingest that stopped (a sweep's hold is kept).
    fn stopped_again(self, item: &IngestItem, now: DateTime<Utc>, error: &str) -> Self {
        Record {
            overrides: item.overrides.clone(),
            last_stopped_at: rfc3339(now),
            stops: self.stops.saturating_add(1),
            error: error.chars().take(ERROR_CHARS).collect(),
            ..self
        }
    }

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

    /// Whether a sweep holds the record at `now`.
    fn taken(&self, now: DateTime<Utc>) -> bool {
        self.taken_until
            .as_deref()
            .and_then(parse)
            .is_some_and(|until| until > now)
    }

    fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
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

/// A record as read: its content (None when it cannot be read as one) and its ETag, quoted as
/// `If-Match` takes it.
type Found = (Option<Record>, String);

/// Reads a record; None when there is none.
async fn load(deps: &Deps, obj: &ObjectRef) -> Result<Option<Found>, AwsError> {
    match s3::get_object(&deps.clients.s3, obj).await {
        Ok((bytes, etag)) => Ok(Some((
            serde_json::from_slice(&bytes).ok(),
            format!("\"{etag}\""),
        ))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records that `item`'s ingest stopped on a transient `error` at `now`: a new record, or one
/// more stop on the upload's record. Conditional, never blind: a record that cannot be read is
/// not overwritten. Best effort: without it the event's own retries still run.
pub(crate) async fn note(deps: &Deps, item: &IngestItem, error: &str, now: DateTime<Utc>) {
    let Some(state) = deps.config.claims.bucket.as_deref() else {
        return;
    };
    let obj = record_object(state, &item.object);
    for _ in 0..NOTE_ATTEMPTS {
        let (record, etag) = match load(deps, &obj).await {
            Ok(None) => (Record::new(item, now, error), None),
            Ok(Some((Some(r), etag))) => (r.stopped_again(item, now, error), Some(etag)),
            // Not a record (damaged): replaced, conditionally.
            Ok(Some((None, etag))) => (Record::new(item, now, error), Some(etag)),
            Err(e) => {
                warn!(object = %item.object, record = %obj.uri(), error = %e, "could not read the upload's deferral record; the stop is not recorded (the event's retries still run)");
                return;
            }
        };
        let condition = etag.as_deref().map_or(Condition::Absent, Condition::Is);
        match s3::put_if(&deps.clients.s3, &obj, record.body(), condition).await {
            Ok(_) => {
                info!(object = %item.object, record = %obj.uri(), stops = record.stops, "upload stopped by a transient error recorded for the scheduled sweep");
                return;
            }
            // Written or deleted meanwhile: read it again.
            Err(e) if s3::lost_race(&e) || e.is_not_found() => {}
            Err(e) => {
                warn!(object = %item.object, record = %obj.uri(), error = %e, "could not record the stopped upload; only the event's retries take it up again");
                return;
            }
        }
    }
    warn!(object = %item.object, record = %obj.uri(), "could not record the stopped upload: the record kept changing; only the event's retries take it up again");
}

/// The scheduled sweep's part: each recorded upload taken up, least recently tried first, one
/// at a time. Returns one step per record acted on, and how many the deadline left
/// for the next run.
pub(crate) async fn retry(
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<(Vec<StepReport>, usize), AwsError> {
    let Some(state) = deps.config.claims.bucket.as_deref() else {
        return Ok((Vec::new(), 0));
    };
    let mut listed = s3::list(&deps.clients.s3, state, PREFIX).await?;
    listed.sort_by_key(|(_, last_modified)| *last_modified);
    let mut steps = Vec::new();
    let mut later = 0;
    // One at a time, as the continuation's: each may be a fast-path write, which holds up to
    // ~130 MiB (crate::fast), and the function may have 512 MiB.
    for (key, _) in listed {
        if !deadline.may_start() {
            later += 1;
            continue;
        }
        let obj = ObjectRef {
            bucket: state.to_owned(),
            key,
            version_id: None,
        };
        steps.extend(retry_one(deps, &obj, now, deadline).await);
    }
    Ok((steps, later))
}

/// Takes a record for [`TAKE`] at `now`: the record and the ETag of the taken one. None when
/// there is nothing to take: gone (another sweep concluded it), held by another sweep, or
/// taken by another first. A record that cannot be read as one is deleted.
async fn take(
    deps: &Deps,
    obj: &ObjectRef,
    now: DateTime<Utc>,
) -> Result<Option<(Record, String)>, AwsError> {
    let c = &deps.clients;
    let (record, etag) = match load(deps, obj).await? {
        Some((Some(r), etag)) => (r, etag),
        Some((None, etag)) => {
            warn!(record = %obj.uri(), "deleting a deferral record that cannot be read as one");
            if let Err(e) = s3::delete_if(&c.s3, obj, &etag).await {
                warn!(record = %obj.uri(), error = %e, "could not delete it");
            }
            return Ok(None);
        }
        None => return Ok(None),
    };
    if record.taken(now) {
        return Ok(None);
    }
    // Held, and the hold ran out: the sweep that took it stopped without a word (killed: out of
    // memory or time). Counted as a stop, so that a record that kills every sweep is given up.
    let record = match &record.taken_until {
        Some(until) => Record {
            last_stopped_at: until.clone(),
            stops: record.stops.saturating_add(1),
            error: format!("{ABANDONED} (taken until {until})"),
            ..record
        },
        None => record,
    };
    let taken = Record {
        taken_until: Some(rfc3339(now + TAKE)),
        ..record.clone()
    };
    match s3::put_if(&c.s3, obj, taken.body(), Condition::Is(&etag)).await {
        Ok(etag) => Ok(Some((record, etag))),
        Err(e) if s3::lost_race(&e) || e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// One record: taken, its upload ingested again, then deleted (concluded), counted (stopped
/// again) or reported and deleted (stopped again a day after its first stop). None when there is
/// nothing to do (gone, or held by another sweep).
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
    let (record, etag) = match take(deps, obj, now).await {
        Ok(Some(taken)) => taken,
        Ok(None) => return None,
        Err(e) => return Some(step(obj.uri(), e.to_string(), true)),
    };
    let item = record.item();
    let uri = item.object.uri();
    if record.error.starts_with(ABANDONED) && past_give_up(&record, now) {
        // Ingesting it again would likely stop this sweep the same way.
        return Some(give_up(deps, obj, &etag, &record, now).await);
    }
    info!(object = %uri, stops = record.stops, "ingesting an upload stopped by a transient error again");
    // Boxed: the ingest's future is large, and the sweep's already holds it (debug builds'
    // stacks).
    let (outcome, stop) = Box::pin(ingest_classified(deps, &item, now, deadline)).await;
    let text = serde_json::to_string(&outcome).unwrap_or_else(|e| e.to_string());
    // Concluded, or stopped near the deadline with a checkpoint, which the sweep's continuation
    // takes from here (crate::continuation).
    if stop.is_none_or(|kind| kind == ErrorKind::Stopped) {
        if let Err(e) = s3::delete_if(&c.s3, obj, &etag).await {
            // Lost: a retry of the event stopped meanwhile and counted it; the next sweep
            // takes it up.
            warn!(record = %obj.uri(), error = %e, "the deferral record was not deleted; the next sweep ingests the upload again (idempotent)");
        }
        return Some(step(
            uri,
            format!(
                "stopped by a transient error {} time(s) since {}; ingested again: {text}",
                record.stops, record.first_stopped_at
            ),
            stop.is_none() && matches!(outcome, IngestOutcome::Error { .. }),
        ));
    }
    let error = match &outcome {
        IngestOutcome::Error { error, .. } => error.as_str(),
        _ => "",
    };
    let again = Record {
        taken_until: None,
        ..record.stopped_again(&item, now, error)
    };
    if past_give_up(&again, now) {
        return Some(give_up(deps, obj, &etag, &again, now).await);
    }
    // Not a failure of the sweep: the record keeps it, and the give-up reports it.
    match s3::put_if(&c.s3, obj, again.body(), Condition::Is(&etag)).await {
        Ok(_) => {}
        Err(e) if s3::lost_race(&e) || e.is_not_found() => {}
        Err(e) => {
            warn!(record = %obj.uri(), error = %e, "could not count the stop; the hold expires and the next sweep tries again")
        }
    }
    warn!(object = %uri, stops = again.stops, error, "upload stopped by a transient error again; the next sweep tries again");
    Some(step(
        uri,
        format!(
            "stopped by a transient error again ({} time(s) since {}; given up {} hours after the first): {error}",
            again.stops,
            again.first_stopped_at,
            GIVE_UP_AFTER.num_hours()
        ),
        false,
    ))
}

/// Whether `record`'s first stop is [`GIVE_UP_AFTER`] old at `now`.
fn past_give_up(record: &Record, now: DateTime<Utc>) -> bool {
    now - parse(&record.first_stopped_at).unwrap_or(now) >= GIVE_UP_AFTER
}

/// Deletes `item`'s record once an ingest of it concluded (made, found made, refused, reported):
/// a delivery that concludes before the sweep takes the record up leaves nothing to take (the
/// sweep's ingest would find the work done, but not an object deleted since: it would be
/// reported missing). Best effort, and one DeleteObject per ingest with a state bucket; a record
/// left is concluded by the sweep.
pub(crate) async fn forget(deps: &Deps, item: &IngestItem) {
    let Some(state) = deps.config.claims.bucket.as_deref() else {
        return;
    };
    let obj = record_object(state, &item.object);
    if let Err(e) = s3::delete_object(&deps.clients.s3, &obj).await {
        warn!(object = %item.object, record = %obj.uri(), error = %e, "could not delete the upload's deferral record; the scheduled sweep concludes it");
    }
}

/// Reports an upload still stopped [`GIVE_UP_AFTER`] after its first stop (claimed under that
/// stop: once), and deletes its record once the report is sent (by this sweep or an earlier
/// one). Held by another invocation's claim, or not sent: the record stays, and the next sweep
/// reports it (or finds it reported).
async fn give_up(
    deps: &Deps,
    obj: &ObjectRef,
    etag: &str,
    record: &Record,
    now: DateTime<Utc>,
) -> StepReport {
    let c = &deps.clients;
    let uri = record.item().object.uri();
    let step = |result: String, failed: bool| StepReport {
        task_id: uri.clone(),
        action: StepAction::Retry,
        result,
        failed,
    };
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
    match deps
        .config
        .claims
        .report_once(&c.s3, &c.sns, &deps.config.common.topic_arn, &msg, now)
        .await
    {
        Ok(Sent::Now | Sent::Before) => {}
        Ok(Sent::ByAnother) => {
            return step(
                format!(
                    "{error} (being reported by another invocation; the record stays until it is)"
                ),
                false,
            );
        }
        // Kept: the next sweep reports it.
        Err(e) => return step(format!("could not report the upload given up: {e}"), true),
    }
    warn!(object = %uri, stops = record.stops, "upload given up after transient errors; reported");
    if let Err(e) = s3::delete_if(&c.s3, obj, etag).await {
        warn!(record = %obj.uri(), error = %e, "could not delete the deferral record; the report is claimed, so the next sweep does not send it again");
    }
    step(error, false)
}
