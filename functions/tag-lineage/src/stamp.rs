//! Stamp one image: gather its facts, plan the lineage tags, write snapshots then image, announce.

use crate::config::Deps;
use crate::event::{Target, Trigger};
use crate::handler::{clients_for, visible_image};
use crate::output::{StampOutcome, StampReport};
use chrono::{DateTime, SecondsFormat, Utc};
use shared::aws::clients::Clients;
use shared::aws::ec2;
use shared::claim::Claim;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::model::Image;
use shared::model::Tags;
use shared::notify::{self, EventType, Message};
use shared::plan::lineage::{self, FAMILY, READY_AT, SOURCE_URI};
use shared::plan::stamp::{
    self, Assertion, Facts, ImageRef, MAX_TAGS_PER_RESOURCE, NoRoom, Parent, StampPlan,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{info, warn};

pub(crate) async fn stamp_one(
    deps: &Deps,
    target: &Target,
    trigger: Trigger,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<StampReport, AwsError> {
    let c = clients_for(deps, target.region.as_deref());
    let mut report = StampReport {
        image_id: target.image_id.clone(),
        region: c.region.clone(),
        outcome: StampOutcome::Unchanged,
        origin: None,
        written: BTreeMap::new(),
        conflicts: Vec::new(),
        no_room: Vec::new(),
        lineage: Tags::new(),
        ready_announced: false,
        detail: None,
    };
    let settling = matches!(trigger, Trigger::StateChange | Trigger::Registered);
    let Some(image) = visible_image(deps, &c, &target.image_id, deadline, settling).await? else {
        info!(image = %target.image_id, region = %c.region, "not visible yet; left to the next event");
        report.outcome = StampOutcome::NotVisible;
        report.detail = Some(format!(
            "not among this account's images in {} after {} s; the next event or invoke will retry",
            c.region,
            deps.config.visibility_wait.as_secs()
        ));
        return Ok(report);
    };
    if image.state != "available" {
        report.outcome = StampOutcome::NotAvailable;
        report.detail = Some(format!(
            "the image is {}; it is stamped when it becomes available",
            image.state
        ));
        return Ok(report);
    }
    let assertion = target.assertion.as_ref();
    let snapshots = ec2::describe_own_snapshots(&c.ec2, &image.snapshot_ids).await?;
    let (instance_image, parent) = origin_facts(deps, &c, &image, assertion).await?;
    let plan = stamp::plan_stamp(&Facts {
        image: &image,
        region: &c.region,
        snapshots: &snapshots,
        instance_image: instance_image.as_deref(),
        parent: parent.as_ref(),
        assertion,
    });
    report.origin = Some(plan.origin);
    report.lineage = plan.lineage.clone();
    if let Some(msg) = refusal(&image, &c.region, &plan, now, &mut report) {
        notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await?;
        return Ok(report);
    }
    for (resource, tags) in plan.ordered_writes(&image.id) {
        write_lineage(deps, &c, resource, tags, deadline).await?;
    }
    if !plan.writes.is_empty() {
        report.outcome = StampOutcome::Stamped;
        report.written = plan.writes.clone();
        info!(image = %image.id, origin = ?plan.origin, "lineage stamped");
    }
    // With claims (STATE_BUCKET), whichever trigger claims first announces, once: no need to
    // defer. Without, the "available" trigger leaves a fresh upload to image.registered, which
    // on AWS may read the image still pending past VISIBILITY_WAIT_SECONDS (create-image
    // announces right after RegisterImage) and leave it to the schedule.
    let deferred = trigger == Trigger::StateChange
        && deps.config.claims.bucket.is_none()
        && stamp::leave_ready_to_registered(&image, now);
    if plan.ready_to_announce(&image) && deferred {
        report.detail = Some(
            "image.ready is left to the image.registered trigger (a fresh upload); the schedule sends it if that one is lost"
                .into(),
        );
    } else if plan.ready_to_announce(&image) {
        announce_ready(deps, &c, &image, &plan, now, &mut report).await?;
    }
    Ok(report)
}

/// Writes one resource's lineage tags. The role may add `ami-pipeline:family` only where the
/// resource has none (template `FamilyWhereNone`); when publish, or an overlapping copy of this
/// function, wrote it between this invocation's read and its write, CreateTags is refused with
/// `UnauthorizedOperation`. The family is then read again (for up to `VISIBILITY_WAIT_SECONDS`,
/// as EC2's reads may not show the new tag yet): when it is the one planned, the rest is
/// written without it; otherwise the refusal stands, and the next event plans against the
/// family the resource now has (a different one is reported as a conflict).
async fn write_lineage(
    deps: &Deps,
    c: &Clients,
    resource: &str,
    tags: &Tags,
    deadline: Deadline,
) -> Result<(), AwsError> {
    let refused = match ec2::create_tags(&c.ec2, &[resource], tags).await {
        Ok(()) => return Ok(()),
        Err(e) if e.has_code("UnauthorizedOperation") && tags.contains_key(FAMILY) => e,
        Err(e) => return Err(e),
    };
    let planned = tags.get(FAMILY).map(String::as_str);
    let mut waited = Duration::ZERO;
    let mut pause = Duration::from_millis(500);
    loop {
        let family = current_family(c, resource).await?;
        if family.is_some() && family.as_deref() == planned {
            break;
        }
        if family.is_some() || waited + pause > deps.config.visibility_wait || !deadline.may_start()
        {
            return Err(refused);
        }
        tokio::time::sleep(pause).await;
        waited += pause;
        pause *= 2;
    }
    info!(
        resource,
        "family written meanwhile by another invocation, with the same value"
    );
    let rest: Tags = tags
        .iter()
        .filter(|(k, _)| k.as_str() != FAMILY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if rest.is_empty() {
        return Ok(());
    }
    ec2::create_tags(&c.ec2, &[resource], &rest).await
}

/// The `ami-pipeline:family` tag an image or snapshot of this account carries now.
async fn current_family(c: &Clients, resource: &str) -> Result<Option<String>, AwsError> {
    let tags = if resource.starts_with("snap-") {
        ec2::describe_own_snapshots(&c.ec2, &[resource.to_owned()])
            .await?
            .into_iter()
            .next()
            .map(|s| s.tags)
    } else {
        ec2::describe_own_image(&c.ec2, resource)
            .await?
            .map(|i| i.tags)
    };
    Ok(tags.and_then(|mut t| t.remove(FAMILY)))
}

/// Sends `image.ready` and records it (`ready-at`), unless another invocation holds the claim
/// on it (shared::claim): then that one sends and records it.
async fn announce_ready(
    deps: &Deps,
    c: &Clients,
    image: &Image,
    plan: &StampPlan,
    now: DateTime<Utc>,
    report: &mut StampReport,
) -> Result<(), AwsError> {
    let msg = ready_message(image, &c.region, plan, now);
    let claims = &deps.config.claims;
    let key = msg.dedup_key();
    match claims.claim(&deps.clients.s3, &key, now).await? {
        Claim::Won { etag } => {
            let sent = notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await;
            if let Err(e) = sent {
                // Not sent: the retry of this event must be able to claim it again.
                claims
                    .release(&deps.clients.s3, &key, etag.as_deref())
                    .await;
                return Err(e);
            }
            let marker = Tags::from([(
                READY_AT.to_owned(),
                now.to_rfc3339_opts(SecondsFormat::Secs, true),
            )]);
            ec2::create_tags(&c.ec2, &[image.id.as_str()], &marker).await?;
            report.ready_announced = true;
        }
        Claim::Held { age } => {
            report.detail = Some(format!(
                "image.ready is being sent by another invocation (claimed {} s ago)",
                age.num_seconds()
            ));
        }
    }
    Ok(())
}

/// The AMI the image was made from (through its source instance, when no source image is
/// known or asserted) and its parent as seen in the parent's region.
async fn origin_facts(
    deps: &Deps,
    c: &Clients,
    image: &Image,
    assertion: Option<&Assertion>,
) -> Result<(Option<String>, Option<Parent>), AwsError> {
    let instance = assertion
        .and_then(|a| a.source_instance.clone())
        .or_else(|| image.source_instance_id.clone())
        .filter(|_| {
            assertion.is_none_or(|a| a.source_image.is_none()) && image.source_image_id.is_none()
        });
    let instance_image = match &instance {
        Some(i) => ec2::instance_image(&c.ec2, i).await?,
        None => None,
    };
    let parent = match stamp::parent_of(image, &c.region, instance_image.as_deref(), assertion) {
        Some(at) => {
            let pc = clients_for(deps, Some(&at.region));
            ec2::describe_image(&pc.ec2, &at.image_id)
                .await?
                .map(|p| Parent {
                    copied_from: p.source_image_id.map(|image_id| ImageRef {
                        region: p.source_image_region.unwrap_or_else(|| at.region.clone()),
                        image_id,
                    }),
                    tags: p.tags,
                    snapshot_ids: p.snapshot_ids,
                    at,
                })
        }
        None => None,
    };
    Ok((instance_image, parent))
}

/// `image.lineage-conflict`: every conflicting value, nothing written.
fn conflict_message(image: &Image, region: &str, plan: &StampPlan, now: DateTime<Utc>) -> Message {
    Message {
        image_id: Some(image.id.clone()),
        image_name: Some(image.name.clone()),
        family: image.tags.get(FAMILY).cloned(),
        error: Some(format!(
            "lineage of {} in {} conflicts with tags already present; nothing was changed",
            image.id, region
        )),
        problems: plan
            .conflicts
            .iter()
            .map(|k| {
                format!(
                    "{}: {} is {:?}, inferred {:?}",
                    k.resource, k.key, k.existing, k.inferred
                )
            })
            .collect(),
        lineage: plan.lineage.clone(),
        ..Message::new(EventType::LineageConflict, now, region)
    }
}

/// When the plan writes nothing because the lineage conflicts with tags already present or
/// does not fit beside them: records that in `report`, logs it, and gives the
/// `image.lineage-conflict` message to announce it.
fn refusal(
    image: &Image,
    region: &str,
    plan: &StampPlan,
    now: DateTime<Utc>,
    report: &mut StampReport,
) -> Option<Message> {
    if !plan.conflicts.is_empty() {
        report.outcome = StampOutcome::Conflict;
        report.conflicts = plan.conflicts.clone();
        warn!(image = %image.id, conflicts = ?plan.conflicts, "lineage conflict; nothing written");
        return Some(conflict_message(image, region, plan, now));
    }
    if plan.no_room.is_empty() {
        return None;
    }
    report.outcome = StampOutcome::NoRoom;
    report.no_room = plan.no_room.clone();
    let why = no_room_text(&image.id, region, &plan.no_room);
    warn!(image = %image.id, %why, "lineage does not fit; nothing written");
    report.detail = Some(why.clone());
    Some(Message {
        image_id: Some(image.id.clone()),
        image_name: Some(image.name.clone()),
        family: image.tags.get(FAMILY).cloned(),
        error: Some(why),
        lineage: plan.lineage.clone(),
        ..Message::new(EventType::LineageConflict, now, region)
    })
}

/// Why the lineage of `image_id` is not written, and what to do: per resource, the tags it has
/// and the keys it lacks.
pub(crate) fn no_room_text(image_id: &str, region: &str, no_room: &[NoRoom]) -> String {
    let each: Vec<String> = no_room
        .iter()
        .map(|r| {
            format!(
                "{} has {} tags and lacks {} lineage keys ({}): remove at least {} of its tags",
                r.resource,
                r.has,
                r.adds.len(),
                r.adds.join(", "),
                r.to_remove()
            )
        })
        .collect();
    format!(
        "the lineage of {image_id} in {region} was not written: EC2 keeps at most {MAX_TAGS_PER_RESOURCE} tags on a resource (aws: tags aside), and {}; then invoke {{\"image_id\": \"{image_id}\"}} or wait for the next event",
        each.join("; ")
    )
}

/// `image.ready`, with the lineage just stamped.
fn ready_message(image: &Image, region: &str, plan: &StampPlan, now: DateTime<Utc>) -> Message {
    Message {
        image_id: Some(image.id.clone()),
        image_name: Some(image.name.clone()),
        snapshot_ids: image.snapshot_ids.clone(),
        family: plan.lineage.get(FAMILY).cloned(),
        source_uri: plan.lineage.get(SOURCE_URI).cloned(),
        import_task_id: plan.lineage.get(lineage::IMPORT_TASK).cloned(),
        lineage: plan.lineage.clone(),
        ..Message::new(EventType::ImageReady, now, region)
    }
}
