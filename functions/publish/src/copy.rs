//! Advance one region's copy: find or start it, stamp its lineage when available, retry a failed one.

use crate::config::Deps;
use crate::handler::clients_for;
use crate::output::{RegionOutcome, RegionReport};
use shared::aws::clients::Clients;
use shared::aws::ec2::{self, CopyRequest};
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::model::{Image, Select, Tags};
use shared::plan::lineage::MANAGED;
use shared::plan::publish::{
    self as plan, Attempt, COPY, CopyStep, NameHolder, PUBLISH_SOURCE, PUBLISH_STATE,
};
use shared::plan::stamp::{self, Facts, ImageRef, Parent};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// A region's report, and its copy once available and stamped.
pub(crate) type CopyProgress = (RegionReport, Option<Image>);

/// What every region's copy of one run shares.
pub(crate) struct Run<'a> {
    pub(crate) deps: &'a Deps,
    /// The source's region.
    pub(crate) home: &'a str,
    pub(crate) deadline: Deadline,
    /// Held while a failed copy is replaced ([`replace_copy`]), one region at a time; counts
    /// the records this run left on the source (replacements that did not start).
    pub(crate) replacing: &'a tokio::sync::Mutex<usize>,
    /// The policy makes the image public (no copy is made that could not be:
    /// [`plan::public_copy_refusal`]).
    pub(crate) public: bool,
}

/// Finds or starts the copy in `region`; returns the copy once it is available and stamped.
/// A failed copy is replaced ([`replace_copy`]).
pub(crate) async fn advance_copy(
    run: &Run<'_>,
    source: &Image,
    region: &str,
) -> Result<CopyProgress, AwsError> {
    let (deps, home, deadline) = (run.deps, run.home, run.deadline);
    let rc = clients_for(deps, Some(region));
    let found = ec2::describe_own_images(
        &rc.ec2,
        &[Select::tag(PUBLISH_SOURCE, [source.id.as_str()])],
    )
    .await?;
    let picked = plan::pick_copy(&found);
    // Failed copies besides the one acted on: one replacement per region is enough.
    for leftover in &picked.leftovers {
        deregister_dead(&rc, leftover).await?;
    }
    let copy = picked.copy;
    let in_flight = if copy.is_none_or(plan::is_dead) {
        ec2::describe_own_images(
            &rc.ec2,
            &[Select::tag_key(PUBLISH_SOURCE), Select::state(["pending"])],
        )
        .await?
        .len()
    } else {
        0
    };
    let replacing = plan::replacing_record(&source.tags, region);
    // A replacement's record left by a run that stopped after starting it.
    if let Some(stale) = plan::stale_record(&source.tags, region, copy) {
        clear_replacing(deps, source, home, region, stale.value).await;
    }
    let step = plan::copy_step(
        copy,
        in_flight,
        deps.config.copy_concurrency,
        chrono::Utc::now(),
    );
    let waiting = |detail: String| RegionReport {
        outcome: RegionOutcome::Waiting,
        detail: Some(detail),
        ..RegionReport::default()
    };
    match (step, copy) {
        (CopyStep::Start, _) if !deadline.may_start() => Ok((
            waiting("not started: the deadline is near; the next run starts it".into()),
            None,
        )),
        (CopyStep::Start, _) => Ok((start_first(run, &rc, source, replacing).await, None)),
        (CopyStep::Wait { reason }, copy) => {
            let mut rep = waiting(reason);
            if let Some(c) = copy {
                rep.outcome = RegionOutcome::Copying;
                rep.image_id = Some(c.id.clone());
            }
            Ok((rep, None))
        }
        (CopyStep::Replace { reason }, Some(dead)) => {
            Ok((replace_copy(run, &rc, source, dead, reason).await?, None))
        }
        (CopyStep::Failed { reason }, copy) => Ok((
            RegionReport::failed(copy.map(|c| c.id.clone()), reason),
            None,
        )),
        (CopyStep::Ready, Some(copy)) => {
            if let Some(conflict) = stamp_copy(&rc, copy, source, home).await? {
                return Ok((RegionReport::failed(Some(copy.id.clone()), conflict), None));
            }
            Ok((
                RegionReport {
                    image_id: Some(copy.id.clone()),
                    outcome: RegionOutcome::Published,
                    ..RegionReport::default()
                },
                Some(copy.clone()),
            ))
        }
        (CopyStep::Replace { .. } | CopyStep::Ready, None) => {
            Ok((RegionReport::failed(None, "copy vanished".into()), None))
        }
    }
}

/// Starts the region's copy when none is there: the replacement a stopped run began
/// (`replacing`: the record of the failed copy it deregistered, with the failures in a row the
/// replacement records), else the region's first copy.
async fn start_first(
    run: &Run<'_>,
    rc: &Clients,
    source: &Image,
    replacing: Option<plan::Record<'_>>,
) -> RegionReport {
    let (deps, home) = (run.deps, run.home);
    let region = rc.region.as_str();
    let Some(record) = replacing else {
        let first = Attempt::First(plan::copy_attempt(&source.tags, region));
        return start_copy(run, rc, source, first).await;
    };
    let failed = record.failed;
    let rep = start_copy(run, rc, source, Attempt::Replacing(failed)).await;
    if let (RegionOutcome::Copying, Some(new)) = (rep.outcome, rep.image_id.as_deref()) {
        info!(image = %source.id, %region, %failed, "stopped replacement continued");
        clear_replacing(deps, source, home, region, record.value).await;
        count_failed(rc, record.failures, failed, new).await;
    }
    rep
}

/// Replaces the failed copy `dead`. EC2 keeps an AMI name unique in a region, so `dead` must go
/// before its replacement can start under the source's name: first the source records that
/// `dead` is being replaced ([`plan::replacing_tag`]), then `dead` is deregistered, then the
/// replacement is started with a ClientToken derived from `dead`'s id, and the record is
/// deleted. A run that stops in between is continued by the next from the record
/// ([`start_first`]); overlapping runs that find the same failed copy start one replacement
/// between them. The region is reported failed either way: this run's copy failed.
///
/// A run replaces one copy at a time ([`Run::replacing`]), and first reads the source and the
/// region again ([`plan::replace_blocked`]): the copy must still be the region's failed copy,
/// no record of another failed copy there may be overwritten, and the record plus the
/// `publish-source` and `publish-failed-copies` keys the replacement adds must fit beside the
/// source's tags (a copy inherits them all through `CopyImageTags`, records included, and loses
/// the records when stamped: [`plan::inherited_markers`]).
async fn replace_copy(
    run: &Run<'_>,
    rc: &Clients,
    source: &Image,
    dead: &Image,
    reason: String,
) -> Result<RegionReport, AwsError> {
    let (deps, home, region) = (run.deps, run.home, rc.region.as_str());
    let failed = |detail: String| RegionReport::failed(Some(dead.id.clone()), detail);
    if !run.deadline.may_start() {
        return Ok(failed(format!(
            "{reason}; replaced by the next run (the deadline is near)"
        )));
    }
    // A replacement that would be refused must not cost the failed copy and a record first.
    match copy_encrypted_by_default(rc, source).await {
        Err(rep) => {
            return Ok(failed(format!(
                "{reason}; {}",
                rep.detail.unwrap_or_default()
            )));
        }
        Ok(by_default) => {
            if let Some(why) = plan::public_copy_refusal(run.public, by_default) {
                return Ok(failed(format!("{reason}; {why}")));
            }
        }
    }
    let mut outstanding = run.replacing.lock().await;
    let home_ec2 = &clients_for(deps, Some(home)).ec2;
    let fresh = ec2::describe_own_image(home_ec2, &source.id).await?;
    let tags = fresh.as_ref().map_or(&source.tags, |f| &f.tags);
    let listed = ec2::describe_own_images(
        &rc.ec2,
        &[Select::tag(PUBLISH_SOURCE, [source.id.as_str()])],
    )
    .await?;
    if let Some(why) = plan::replace_blocked(tags, &listed, &dead.id, region, *outstanding) {
        return Ok(failed(format!("{reason}; {why}")));
    }
    let failures = plan::failures_through(dead);
    let record = plan::replacing_tag(region, &dead.id, failures);
    ec2::create_tags(home_ec2, &[source.id.as_str()], &record).await?;
    deregister_dead(rc, dead).await?;
    let started = start_copy(run, rc, source, Attempt::Replacing(&dead.id)).await;
    match (started.outcome, started.image_id) {
        (RegionOutcome::Copying, Some(new)) => {
            let value = plan::record_value(&dead.id, failures);
            clear_replacing(deps, source, home, region, &value).await;
            count_failed(rc, failures, &dead.id, &new).await;
            info!(image = %source.id, %region, failed = %dead.id, copy = %new, "failed copy replaced");
            Ok(failed(format!(
                "{reason}; deregistered, copying again as {new}"
            )))
        }
        (_, _) => {
            *outstanding += 1;
            Ok(failed(format!(
                "{reason}; deregistered, not copied again yet ({}): the next run copies again",
                started.detail.unwrap_or_default()
            )))
        }
    }
}

/// Marks the replacement `new` of the failed copy `dead` with the copies that failed in a row
/// up to `dead` (`failures`, [`plan::FAILED_COPIES`]), so that it is replaced later, and not
/// once [`plan::MAX_FAILED_COPIES`] copies failed in a row, should it fail too
/// ([`plan::copy_step`]); nothing when `failures` is 0 (a disabled copy's replacement). Written
/// after CopyImage rather than in its TagSpecifications: a run that starts the same replacement
/// from a gone copy ([`follow_gone`]) cannot know the count, and the same ClientToken must carry
/// the same request. `new` is read first: a count already there as high is kept (EC2 may have
/// answered a later replacement in the chain). An id just created may not have propagated yet
/// (EC2's eventual consistency: `InvalidAMIID.NotFound`), and CreateTags may be throttled: both
/// are retried a few times, for about 3.5 s. Best effort: without it, a failure of `new`
/// counts as the first again.
async fn count_failed(rc: &Clients, failures: u32, dead: &str, new: &str) {
    if failures == 0 {
        return;
    }
    if let Ok(Some(copy)) = ec2::describe_own_image(&rc.ec2, new).await
        && plan::failed_before(&copy) >= failures
    {
        return;
    }
    let count = Tags::from([(plan::FAILED_COPIES.to_owned(), failures.to_string())]);
    let mut pause = std::time::Duration::from_millis(500);
    for attempt in 1..=4 {
        match ec2::create_tags(&rc.ec2, &[new], &count).await {
            Ok(()) => return,
            Err(e) if (e.is_not_found() || e.kind == ErrorKind::Throttled) && attempt < 4 => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => {
                warn!(region = %rc.region, copy = %new, failed = %dead, error = %e, "failed copies in a row not recorded on the replacement; should it fail too, it is replaced as a first failure");
                return;
            }
        }
    }
}

/// Deletes the source's replacement record in `region`, only while its value is still
/// `record` ([`plan::Record::value`]). Best effort: a record left behind is cleared by the next
/// run that finds the region's copy, or that no longer copies to the region.
pub(crate) async fn clear_replacing(
    deps: &Deps,
    source: &Image,
    home: &str,
    region: &str,
    record: &str,
) {
    let home_ec2 = &clients_for(deps, Some(home)).ec2;
    let key = format!("{}{region}", plan::REPLACING_PREFIX);
    match ec2::delete_tag_if(home_ec2, &source.id, &key, record).await {
        Ok(()) => info!(image = %source.id, %region, %record, "replacement record cleared"),
        Err(e) => {
            warn!(image = %source.id, %region, error = %e, "replacement record not cleared; the next run that finds the region's copy clears it");
        }
    }
}

/// Deregisters a failed copy; one already gone (another run's) is no error: EC2 answers
/// `InvalidAMIID.NotFound`, or `InvalidAMIID.Unavailable` for an image deregistered a moment ago.
async fn deregister_dead(rc: &Clients, dead: &Image) -> Result<(), AwsError> {
    match ec2::deregister_image(&rc.ec2, &dead.id).await {
        Err(e)
            if e.kind != ErrorKind::NotFound
                && e.code.as_deref() != Some("InvalidAMIID.Unavailable") =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Starts the copy into `region` for `attempt` ([`request_copy`]) and reads the copy EC2 answers
/// back. A copy that is gone ([`plan::copy_gone`]: a retried token answers the id of a copy
/// someone deregistered since) is made again as its replacement, up to
/// [`plan::MAX_GONE_COPIES`] in a row. Throttling leaves the region waiting for the next run;
/// another refusal fails it.
async fn start_copy(
    run: &Run<'_>,
    rc: &Clients,
    source: &Image,
    attempt: Attempt<'_>,
) -> RegionReport {
    let encrypts_by_default = match copy_encrypted_by_default(rc, source).await {
        Ok(by_default) => by_default,
        Err(rep) => return rep,
    };
    if let Some(why) = plan::public_copy_refusal(run.public, encrypts_by_default) {
        return RegionReport::failed(None, why.to_owned());
    }
    let copier = Copier {
        rc,
        source,
        home: run.home,
        keys: &run.deps.config.copy_kms_keys,
        encrypts_by_default,
    };
    let started = copier.request(attempt).await;
    follow_gone(run, &copier, started).await
}

/// What every CopyImage of one region's copy shares.
struct Copier<'a> {
    rc: &'a Clients,
    source: &'a Image,
    home: &'a str,
    keys: &'a BTreeMap<String, String>,
    encrypts_by_default: bool,
}

impl Copier<'_> {
    async fn request(&self, attempt: Attempt<'_>) -> Result<String, AwsError> {
        let (rc, source, home, keys) = (self.rc, self.source, self.home, self.keys);
        request_copy(rc, source, home, keys, self.encrypts_by_default, attempt).await
    }
}

/// The report of a started copy, read back by its id: a copy that is gone
/// ([`plan::copy_gone`]) is made again as its replacement, up to [`plan::MAX_GONE_COPIES`] in a
/// row and while the deadline allows; one that reads as gone while an image holds the source's
/// name is that image's report instead ([`name_holder`]).
async fn follow_gone(
    run: &Run<'_>,
    copier: &Copier<'_>,
    mut started: Result<String, AwsError>,
) -> RegionReport {
    let (source, region) = (copier.source, copier.rc.region.as_str());
    let mut gone: Vec<String> = Vec::new();
    let since = |gone: &[String]| {
        (!gone.is_empty()).then(|| {
            format!(
                "EC2 answered with {}, deregistered since",
                gone.join(", then ")
            )
        })
    };
    while let Ok(id) = &started {
        let found = match ec2::describe_own_image(&copier.rc.ec2, id).await {
            Ok(found) => found,
            Err(e) => {
                warn!(image = %source.id, %region, copy = %id, error = %e, "copy started but not read back; the next run reads it");
                break;
            }
        };
        match found.as_ref() {
            Some(copy) if plan::is_dead(copy) => return unlisted_dead_copy(copy),
            found if !plan::copy_gone(found) => break,
            _ => {}
        }
        if let Some(rep) = name_holder(copier, id).await {
            return rep;
        }
        if gone.len() + 1 >= plan::MAX_GONE_COPIES || !run.deadline.may_start() {
            return RegionReport::failed(
                Some(id.clone()),
                format!(
                    "EC2 answered the copy request with {id}, which is not there (deregistered), after {} other such copies ({}): this source's copies here failed and were replaced, or were deregistered, more often than one run follows (or the deadline is near); tag the source {}{region}={id} and the next run continues from it",
                    gone.len(),
                    gone.join(", "),
                    plan::REPLACING_PREFIX
                ),
            );
        }
        warn!(image = %source.id, %region, copy = %id, "EC2 answered with a copy that is not there (deregistered by someone else?); copying again as its replacement");
        let again = copier.request(Attempt::Replacing(id)).await;
        let id = id.clone();
        match again {
            Err(e) if e.code.as_deref() == Some("InvalidAMIName.Duplicate") => {
                // The name is taken, by a holder not listed yet: most likely the copy just
                // answered, not readable yet.
                return RegionReport {
                    image_id: Some(id.clone()),
                    outcome: RegionOutcome::Copying,
                    detail: Some(format!(
                        "copy {id} started, not readable yet (the source's name is in use here: {e}); the next run reads it again"
                    )),
                    ..RegionReport::default()
                };
            }
            again => started = again,
        }
        gone.push(id);
    }
    started_report(source, region, started, since(&gone))
}

/// The region's report once the copy is started (`Ok`) or refused; `since` names the gone
/// copies EC2 answered with first, if any.
fn started_report(
    source: &Image,
    region: &str,
    started: Result<String, AwsError>,
    since: Option<String>,
) -> RegionReport {
    let after = since
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    match started {
        Ok(id) => {
            info!(image = %source.id, %region, copy = %id, "copy started");
            RegionReport {
                detail: since.map(|s| format!("copying again as {id}: {s}")),
                image_id: Some(id),
                outcome: RegionOutcome::Copying,
                ..RegionReport::default()
            }
        }
        Err(e) if e.kind == ErrorKind::Throttled => RegionReport {
            outcome: RegionOutcome::Waiting,
            detail: Some(format!(
                "copy not started yet: {e}; the next run retries{after}"
            )),
            ..RegionReport::default()
        },
        Err(e) => RegionReport::failed(None, format!("{e}{after}")),
    }
}

/// The report of a copy of this source that the region's listing left out and that will not
/// become available (disabled, failed): nothing replaces what the listing does not show, so
/// the region fails until someone enables or deregisters it.
fn unlisted_dead_copy(copy: &Image) -> RegionReport {
    let why = copy
        .state_reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    RegionReport::failed(
        Some(copy.id.clone()),
        format!(
            "copy {} is {}{why}, and not listed by its tag: enable it (EnableImage) or deregister it, and the next run goes on",
            copy.id, copy.state
        ),
    )
}

/// When the copy `id` EC2 answered reads as gone, who holds the source's name in the region
/// (EC2 keeps an AMI name unique in a Region, disabled images included): `None` when nobody
/// does, or the read fails (the copy is then made again, and EC2's name check decides). Else
/// the region's report from that image: a copy of this source (`id` itself, or one whose tag
/// is not listed yet) is copying, or failed in its state; another image holds the name the
/// copy needs ([`plan::name_holder`] decides which).
async fn name_holder(copier: &Copier<'_>, id: &str) -> Option<RegionReport> {
    let source = copier.source;
    let named = ec2::describe_every_own_image(&copier.rc.ec2, &[Select::name(&source.name)])
        .await
        .ok()?;
    Some(match plan::name_holder(&named, id, &source.id)? {
        NameHolder::Other(holder) => RegionReport::failed(
            None,
            format!(
                "not copied: the source's name {:?} is held here by {}, which is not a copy of {}: EC2 keeps an AMI name unique in a Region; deregister or rename it and the next run copies",
                source.name, holder.id, source.id
            ),
        ),
        NameHolder::DeadCopy(holder) => unlisted_dead_copy(holder),
        NameHolder::LiveCopy(holder) => {
            // Another run may have made `id`'s replacement already: say what EC2 answered.
            let answered = if holder.id == id {
                String::new()
            } else {
                format!(" (EC2 answered with {id}, deregistered since)")
            };
            RegionReport {
                image_id: Some(holder.id.clone()),
                outcome: RegionOutcome::Copying,
                detail: Some(format!(
                    "copy {} is {}{answered}, not listed by its tag yet; the next run reads it again",
                    holder.id, holder.state
                )),
                ..RegionReport::default()
            }
        }
    })
}

/// Whether the copy of `source` into `rc`'s region is encrypted whatever CopyImage asks: an
/// unencrypted source's copy is where the region encrypts EBS by default
/// (GetEbsEncryptionByDefault). An encrypted source's copy is encrypted anyway, so the region
/// is not asked. A failed read is the region's report: waiting when throttled, else failed.
async fn copy_encrypted_by_default(rc: &Clients, source: &Image) -> Result<bool, RegionReport> {
    if source.encrypted {
        return Ok(false);
    }
    ec2::ebs_encryption_by_default(&rc.ec2)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::Throttled => RegionReport {
                outcome: RegionOutcome::Waiting,
                detail: Some(format!("copy not started yet: {e}; the next run retries")),
                ..RegionReport::default()
            },
            _ => RegionReport::failed(None, format!("copy not started: {e}")),
        })
}

/// One CopyImage into `rc`'s region with the copy's tags and a deterministic ClientToken for
/// `attempt`, encrypted with the region's key in `keys` when [`plan::copy_key`] says so; the
/// id EC2 answers.
async fn request_copy(
    rc: &Clients,
    source: &Image,
    home: &str,
    keys: &BTreeMap<String, String>,
    encrypts_by_default: bool,
    attempt: Attempt<'_>,
) -> Result<String, AwsError> {
    let region = rc.region.as_str();
    let key = plan::copy_key(source, keys, region, encrypts_by_default);
    let token = plan::client_token(home, &source.id, region, attempt, key);
    // The copy and its snapshots are the pipeline's, marked so at creation: IAM allows
    // ami-pipeline:managed only as part of a create action (template.yaml,
    // ManagedOnlyAtCreation), and the snapshots do not inherit the source's tags.
    let tags = Tags::from([
        (PUBLISH_SOURCE.to_owned(), source.id.clone()),
        (PUBLISH_STATE.to_owned(), COPY.to_owned()),
        (MANAGED.to_owned(), "true".to_owned()),
    ]);
    ec2::copy_image(
        &rc.ec2,
        CopyRequest {
            source_image_id: &source.id,
            source_region: home,
            name: &source.name,
            client_token: &token,
            tags: &tags,
            kms_key_id: key,
        },
    )
    .await
}

/// Stamps the copy's lineage in its region (snapshots first, the image last); `Some` names the
/// conflicting tags when the copy holds other values (then nothing is written).
pub(crate) async fn stamp_copy(
    rc: &Clients,
    copy: &Image,
    source: &Image,
    home: &str,
) -> Result<Option<String>, AwsError> {
    let snapshots = ec2::describe_own_snapshots(&rc.ec2, &copy.snapshot_ids).await?;
    let parent = Parent {
        at: ImageRef {
            image_id: source.id.clone(),
            region: home.to_owned(),
        },
        tags: source.tags.clone(),
        snapshot_ids: source.snapshot_ids.clone(),
        // publish copies only source images that are not copies themselves.
        copied_from: None,
    };
    let stamp_plan = stamp::plan_stamp(&Facts {
        image: copy,
        region: &rc.region,
        snapshots: &snapshots,
        instance_image: None,
        parent: Some(&parent),
        assertion: None,
    });
    if !stamp_plan.conflicts.is_empty() {
        return Ok(Some(format!(
            "lineage conflict on copy {}: {}; nothing written (tag-lineage's manual invoke with \"force\" resolves it)",
            copy.id,
            stamp_plan
                .conflicts
                .iter()
                .map(|k| format!(
                    "{} {}={:?}, inferred {:?}",
                    k.resource, k.key, k.existing, k.inferred
                ))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    for (resource, tags) in stamp_plan.ordered_writes(&copy.id) {
        ec2::create_tags(&rc.ec2, &[resource.as_str()], tags).await?;
    }
    let inherited = plan::inherited_markers(copy, source);
    if !inherited.is_empty() {
        let keys: Vec<&str> = inherited.iter().map(String::as_str).collect();
        ec2::delete_tag_keys(&rc.ec2, &[copy.id.as_str()], &keys).await?;
    }
    if copy.tags.get(PUBLISH_STATE).map(String::as_str) != Some(COPY) {
        let t = Tags::from([(PUBLISH_STATE.to_owned(), COPY.to_owned())]);
        ec2::create_tags(&rc.ec2, &[copy.id.as_str()], &t).await?;
    }
    Ok(None)
}
