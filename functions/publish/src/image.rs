//! Publish one image: mark it, advance its copies, share every region, announce once.

use crate::config::Deps;
use crate::copy::{CopyProgress, Run, advance_copy, clear_replacing};
use crate::event::{Trigger, aws_failed, refused};
use crate::handler::{clients_for, stamp_time};
use crate::output::{ImageReport, RegionOutcome, RegionReport};
use crate::share::share_region;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use shared::aws::clients::Clients;
use shared::aws::ec2::{self};
use shared::claim::{self, Claim};
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::model::{Image, Tags};
use shared::notify::{self, EventType, Message};
use shared::plan::lineage::FAMILY;
use shared::plan::publish::{
    self as plan, Announce, Grants, IN_PROGRESS, Overrides, PUBLISH_STATE, Policy, PublishStatus,
};
use std::collections::{BTreeMap, BTreeSet};
use tracing::{info, warn};

/// Regions worked on in parallel for one image.
pub(crate) const REGION_CONCURRENCY: usize = 4;
/// Publishes one source image: policy, public-access check, copies, then (once no copy is
/// pending) shares in every region, and the announcement. Refusals change nothing.
pub(crate) async fn publish_one(
    deps: &Deps,
    c: &Clients,
    source: Image,
    trigger: Trigger,
    overrides: &Overrides,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<ImageReport, InvocationError> {
    let home = c.region.clone();
    if trigger == Trigger::ImageReady && plan::already_published(&source.tags) {
        info!(image = %source.id, "already published; duplicate image.ready ignored");
        return Ok(ImageReport {
            policy: plan::resolve(&deps.config.defaults, &source.tags, &home).unwrap_or_default(),
            image_id: source.id,
            region: home,
            status: PublishStatus::AlreadyPublished,
            regions: BTreeMap::new(),
            announced: None,
        });
    }
    let (policy, extra) = match resolve_policy(deps, &source, overrides, &home) {
        Ok(resolved) => resolved,
        Err(e) => {
            // A manual invoke's caller gets the refusal; an event's or the schedule's would
            // only be a failed invocation, retried every run while the image stays marked.
            if trigger != Trigger::Manual {
                report_refusal(deps, &source, &home, &e, now).await;
            }
            return Err(e);
        }
    };
    let blocked = public_blocked(deps, &source, &policy, &home, trigger).await?;
    let mut mark = extra;
    if source.tags.get(PUBLISH_STATE).map(String::as_str) != Some(IN_PROGRESS) {
        mark.insert(PUBLISH_STATE.to_owned(), IN_PROGRESS.to_owned());
    }
    if !mark.is_empty() {
        ec2::create_tags(&c.ec2, &[source.id.as_str()], &mark)
            .await
            .map_err(aws_failed)?;
    }
    let only = (trigger == Trigger::Schedule)
        .then(|| plan::retrying(&source.tags))
        .flatten();
    let this_run = narrowed(&policy, only.as_ref());
    let (mut regions, mut ready) = advance_copies(deps, &source, &this_run, &home, deadline).await;
    if let Some(only) = &only {
        ready.retain(|(r, _)| only.contains(r));
    }
    if regions.values().any(|r| r.outcome.is_pending()) {
        regions.insert(
            home.clone(),
            RegionReport {
                image_id: Some(source.id.clone()),
                outcome: RegionOutcome::Waiting,
                detail: Some("shared once every copy is available".into()),
                ..RegionReport::default()
            },
        );
        info!(image = %source.id, "copies in flight; the schedule continues");
        return Ok(ImageReport {
            image_id: source.id,
            region: home,
            status: PublishStatus::Copying,
            policy,
            regions,
            announced: None,
        });
    }
    let deprecation = deprecation_time(&source, &policy, now);
    let shared = share_all(deps, ready, &policy, &blocked, deprecation.at.as_deref()).await;
    regions.extend(shared.into_iter().map(|(r, mut rep)| {
        // Why the deprecation is not the policy's, where the region has nothing else to say
        // (the publication message carries each region's detail).
        if rep.outcome == RegionOutcome::Published && rep.detail.is_none() {
            rep.detail.clone_from(&deprecation.note);
        }
        (r, rep)
    }));
    if let Some(only) = &only {
        for r in std::iter::once(&home).chain(&policy.regions) {
            if !only.contains(r) {
                regions.insert(r.clone(), done_earlier());
            }
        }
    }
    conclude(deps, c, source, policy, regions, now).await
}

/// The claim and record key of a publication's announcement: its message's `dedup_key` and a
/// digest of the policy and the failed regions, so a later change announces again. The
/// policy's JSON (sorted sets, field order fixed by the struct), not its Debug text, which is
/// not a stable format across compiler versions.
fn announcement_key(dedup_key: &str, policy: &Policy, failed: &[&str]) -> String {
    let policy_text = serde_json::to_string(policy).unwrap_or_default();
    format!(
        "{dedup_key}/{}",
        claim::digest(&format!("{policy_text} {}", failed.join(" ")))
    )
}

/// The policy a run works with: only the regions being retried ([`plan::retrying`]).
fn narrowed(policy: &Policy, only: Option<&BTreeSet<String>>) -> Policy {
    match only {
        Some(only) => Policy {
            regions: policy.regions.intersection(only).cloned().collect(),
            ..policy.clone()
        },
        None => policy.clone(),
    }
}

/// The report of a region an earlier run of this publish completed.
fn done_earlier() -> RegionReport {
    RegionReport {
        outcome: RegionOutcome::Published,
        detail: Some(
            "published and verified by an earlier run; not in the recorded failed regions".into(),
        ),
        ..RegionReport::default()
    }
}

/// Sends `image.failed` for `source`, whose publish an event or the schedule could not start
/// (`error`: its recorded policy is refused by the function's settings, say a region since
/// denied): once per image and error (claimed and recorded in the state bucket; without one,
/// at every run), so the operator hears of an image that would otherwise stay `in-progress`
/// (and out of cleanup's reach) with only failed invocations to show for it. A failure to send
/// is logged: the refusal itself is the invocation's error.
async fn report_refusal(
    deps: &Deps,
    source: &Image,
    home: &str,
    error: &InvocationError,
    now: DateTime<Utc>,
) {
    let msg = Message {
        image_id: Some(source.id.clone()),
        image_name: Some(source.name.clone()),
        family: source.tags.get(FAMILY).cloned(),
        error: Some(error.to_string()),
        dedup_detail: Some(claim::digest(&error.to_string())),
        ..Message::new(EventType::ImageFailed, now, home)
    };
    let sent = deps
        .config
        .claims
        .report_once(
            &deps.clients.s3,
            &deps.clients.sns,
            &deps.config.common.topic_arn,
            &msg,
            now,
        )
        .await;
    match sent {
        Ok(claim::Sent::Now) => {
            warn!(image = %source.id, error = %error, "publish refused; image.failed sent")
        }
        Ok(_) => info!(image = %source.id, "publish refused; image.failed sent before"),
        Err(e) => warn!(image = %source.id, error = %e, "publish refused; image.failed not sent"),
    }
}

/// The image's publish policy with the manual overrides (returned too: recorded as its tags).
fn resolve_policy(
    deps: &Deps,
    source: &Image,
    overrides: &Overrides,
    home: &str,
) -> Result<(Policy, Tags), InvocationError> {
    let extra = plan::override_tags(overrides).map_err(|p| {
        refused(
            "InvalidPolicy",
            format!("{} in {home}: nothing changed: {}", source.id, p.join("; ")),
        )
    })?;
    let mut wanted_tags = source.tags.clone();
    wanted_tags.extend(extra.clone());
    let policy = plan::resolve(&deps.config.defaults, &wanted_tags, home).map_err(|p| {
        refused(
            "InvalidPolicy",
            format!(
                "{} in {home}: nothing changed, its publish policy is invalid: {}",
                source.id,
                p.join("; ")
            ),
        )
    })?;
    if let Some(why) = plan::public_refusal(&policy, source.encrypted) {
        return Err(refused(
            "InvalidPolicy",
            format!("{} in {home}: nothing changed: {why}", source.id),
        ));
    }
    Ok((policy, extra))
}

/// Public sharing is checked in every region before anything changes: block public access for
/// AMIs (`GetImageBlockPublicAccessState`) and for snapshots (`GetSnapshotBlockPublicAccessState`:
/// "users can no longer request public sharing for snapshots in that Region", and publish makes
/// the snapshots public with the image). A manual request is refused outright; an event or the
/// schedule reports those regions as failed, each with what blocks it (returned).
async fn public_blocked(
    deps: &Deps,
    source: &Image,
    policy: &Policy,
    home: &String,
    trigger: Trigger,
) -> Result<BTreeMap<String, String>, InvocationError> {
    let mut blocked = BTreeMap::new();
    if !policy.public {
        return Ok(blocked);
    }
    for r in std::iter::once(home).chain(&policy.regions) {
        let rc = clients_for(deps, Some(r));
        let mut why = Vec::new();
        let images = ec2::image_block_public_access_state(&rc.ec2)
            .await
            .map_err(aws_failed)?;
        if images != "unblocked" {
            why.push(format!(
                "block public access for AMIs is on ({images}; DisableImageBlockPublicAccess)"
            ));
        }
        let snapshots = ec2::snapshot_block_public_access_state(&rc.ec2)
            .await
            .map_err(aws_failed)?;
        if snapshots != "unblocked" {
            why.push(format!(
                "block public access for snapshots is on ({snapshots}; DisableSnapshotBlockPublicAccess)"
            ));
        }
        if !why.is_empty() {
            blocked.insert(r.clone(), why.join(" and "));
        }
    }
    if trigger == Trigger::Manual && !blocked.is_empty() {
        return Err(refused(
            "PublicAccessBlocked",
            format!(
                "{} in {home}: nothing changed: public sharing was asked for, but {} (lift it there, or publish without \"public\")",
                source.id,
                blocked
                    .iter()
                    .map(|(r, why)| format!("in {r} {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    Ok(blocked)
}

/// Advances every target region's copy; returns each region's report and the images ready to
/// share (the source first).
async fn advance_copies(
    deps: &Deps,
    source: &Image,
    policy: &Policy,
    home: &str,
    deadline: Deadline,
) -> (BTreeMap<String, RegionReport>, Vec<(String, Image)>) {
    // One replacement of a failed copy at a time in a run: each puts a record on the source for
    // a moment, which the copies started meanwhile inherit (crate::copy::replace_copy).
    let replacing = tokio::sync::Mutex::new(0);
    let copies: Vec<(String, Result<CopyProgress, AwsError>)> =
        stream::iter(policy.regions.iter().cloned())
            .map(|r| async {
                let run = Run {
                    deps,
                    home,
                    deadline,
                    replacing: &replacing,
                    public: policy.public,
                };
                let res = advance_copy(&run, source, &r).await;
                (r, res)
            })
            .buffer_unordered(REGION_CONCURRENCY)
            .collect()
            .await;
    for (region, failed) in plan::departed_records(&source.tags, &policy.regions) {
        clear_replacing(deps, source, home, region, failed).await;
    }
    let mut regions = BTreeMap::new();
    let mut ready: Vec<(String, Image)> = vec![(home.to_owned(), source.clone())];
    for (r, res) in copies {
        match res {
            Ok((rep, Some(copy))) => {
                regions.insert(r.clone(), rep);
                ready.push((r, copy));
            }
            Ok((rep, None)) => {
                regions.insert(r, rep);
            }
            Err(e) => {
                regions.insert(r, RegionReport::failed(None, e.to_string()));
            }
        }
    }
    (regions, ready)
}

/// Shares, region by region, each verified by reading it back.
async fn share_all(
    deps: &Deps,
    ready: Vec<(String, Image)>,
    policy: &Policy,
    blocked: &BTreeMap<String, String>,
    deprecate_at: Option<&str>,
) -> Vec<(String, RegionReport)> {
    stream::iter(ready)
        .map(|(r, image)| {
            let blocked = blocked.get(&r).map(String::as_str);
            async move {
                let rep = share_region(deps, &r, &image, policy, blocked, deprecate_at).await;
                (r, rep)
            }
        })
        .buffer_unordered(REGION_CONCURRENCY)
        .collect()
        .await
}

/// Announces and records the outcome ([`plan::conclude`]): the message first, then the tags.
async fn conclude(
    deps: &Deps,
    c: &Clients,
    source: Image,
    policy: Policy,
    regions: BTreeMap<String, RegionReport>,
    now: DateTime<Utc>,
) -> Result<ImageReport, InvocationError> {
    let home = c.region.clone();
    let failed: Vec<&str> = regions
        .iter()
        .filter(|(_, r)| r.outcome == RegionOutcome::Failed)
        .map(|(k, _)| k.as_str())
        .collect();
    let changed = regions.values().any(|r| !r.granted.is_empty());
    let end = plan::conclude(&source.tags, &failed, changed, stamp_time(now));
    if failed.is_empty() {
        info!(image = %source.id, regions = regions.len(), "published");
    } else {
        warn!(image = %source.id, failed = %failed.join(" "), "some regions failed; the schedule retries them");
    }
    let event = end.announce.map(|a| match a {
        Announce::Published => EventType::ImagePublished,
        Announce::Partial => EventType::PublishPartial,
    });
    if let Some(event) = event {
        let msg = publication_message(event, &source, &home, &policy, &regions, now);
        // One sender among concurrent invocations (shared::claim), per publication.
        let key = announcement_key(&msg.dedup_key(), &policy, &failed);
        let claims = &deps.config.claims;
        // The state bucket's record (strongly consistent) of an `image.published` sent before
        // under this policy: the image's state tag that records it is last-writer-wins, and in
        // chaos seed 23000 a duplicate image.ready's `in-progress` mark, whose first answer was
        // lost, was written again by the SDK's retry after the conclusion's record. The
        // schedule then published the image again, and once the claim was stale (10 min) it
        // announced a second time. A run that added a grant (a re-grant after a revoke, a
        // manual reconcile that repaired a region) announces again as before; partial
        // publications are told apart by the recorded failed regions, as before.
        let published = event == EventType::ImagePublished;
        if published
            && !changed
            && claims
                .was_sent(&deps.clients.s3, &key)
                .await
                .map_err(aws_failed)?
        {
            info!(image = %source.id, event = event.as_str(), "announced by an earlier run; recording it");
            return record_conclusion(c, source, policy, regions, end, None).await;
        }
        let etag = match claims
            .claim(&deps.clients.s3, &key, now)
            .await
            .map_err(aws_failed)?
        {
            Claim::Won { etag } => etag,
            Claim::Held { age } => {
                // The holder announces and records; if it stopped, the schedule takes over.
                info!(image = %source.id, age_seconds = age.num_seconds(), "being announced by another invocation");
                return Ok(ImageReport {
                    image_id: source.id,
                    region: home,
                    status: end.status,
                    policy,
                    regions,
                    announced: None,
                });
            }
        };
        let sent = notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await;
        if let Err(e) = sent {
            // Not sent: the retry (the schedule) must be able to claim it again.
            claims
                .release(&deps.clients.s3, &key, etag.as_deref())
                .await;
            return Err(aws_failed(e));
        }
        if published && let Err(e) = claims.record_sent(&deps.clients.s3, &key, now).await {
            // The message went out: the state tags written next are the record left.
            warn!(image = %source.id, error = %e, "image.published sent, but its record in the state bucket was not written");
        }
    }
    record_conclusion(c, source, policy, regions, end, event).await
}

/// Writes the conclusion's record on the source (its state tags) and reports the run;
/// `announced` is the announcement this run sent, if any.
async fn record_conclusion(
    c: &Clients,
    source: Image,
    policy: Policy,
    regions: BTreeMap<String, RegionReport>,
    end: plan::Conclusion,
    announced: Option<EventType>,
) -> Result<ImageReport, InvocationError> {
    if let Some(tags) = end.record {
        ec2::create_tags(&c.ec2, &[source.id.as_str()], &tags)
            .await
            .map_err(aws_failed)?;
    }
    Ok(ImageReport {
        image_id: source.id,
        region: c.region.clone(),
        status: end.status,
        policy,
        regions,
        announced: announced.map(EventType::as_str),
    })
}

/// The deprecation time every region gets: the source's own if it has one (a retry keeps the
/// first run's), else [`plan::deprecation`]'s (`now` + the policy's days, for a public image at
/// most 2 years after the source's creation); no time when there is none to set, with the
/// reason when the policy asked for one.
pub(crate) fn deprecation_time(source: &Image, policy: &Policy, now: DateTime<Utc>) -> Deprecation {
    if policy.deprecate_after_days == 0 {
        return Deprecation {
            at: None,
            note: None,
        };
    }
    if let Some(t) = &source.deprecation_time {
        // A time already past (the source is deprecated) cannot be given to a copy: EC2
        // refuses a deprecation in the past, so that region would fail on every retry.
        let past = DateTime::parse_from_rfc3339(t)
            .is_ok_and(|at| at.with_timezone(&Utc) <= now + chrono::Duration::minutes(1));
        if past {
            let note = format!(
                "copies get no deprecation time: the source was deprecated at {t}, and EC2 refuses a time in the past"
            );
            warn!(image = %source.id, "{note}");
            return Deprecation {
                at: None,
                note: Some(note),
            };
        }
        return Deprecation {
            at: Some(t.clone()),
            note: None,
        };
    }
    let created = source
        .creation_date
        .as_deref()
        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
        .map(|c| c.with_timezone(&Utc));
    let d = plan::deprecation(policy, created, now);
    if let Some(note) = &d.note {
        warn!(image = %source.id, "{note}");
    }
    Deprecation {
        // Whole minutes, written as EC2 writes DeprecationTime (it rounds seconds to the
        // minute), so the time reported is exactly the one every region shows.
        at: d.at.map(|t| t.format("%Y-%m-%dT%H:%M:00.000Z").to_string()),
        note: d.note,
    }
}

/// The deprecation time a run gives every region, and why it is not the policy's when it is not.
pub(crate) struct Deprecation {
    /// RFC 3339, whole minutes.
    pub(crate) at: Option<String>,
    /// The reason, for the regions' reports.
    pub(crate) note: Option<String>,
}
pub(crate) fn publication_message(
    event: EventType,
    source: &Image,
    home: &str,
    policy: &Policy,
    regions: &BTreeMap<String, RegionReport>,
    now: DateTime<Utc>,
) -> Message {
    let images: BTreeMap<&String, Value> = regions
        .iter()
        .map(|(r, rep)| {
            (
                r,
                json!({"image_id": rep.image_id, "outcome": rep.outcome.as_str(), "detail": rep.detail}),
            )
        })
        .collect();
    let failed: Vec<&String> = regions
        .iter()
        .filter(|(_, r)| r.outcome == RegionOutcome::Failed)
        .map(|(k, _)| k)
        .collect();
    Message {
        image_id: Some(source.id.clone()),
        image_name: Some(source.name.clone()),
        snapshot_ids: source.snapshot_ids.clone(),
        family: source.tags.get(FAMILY).cloned(),
        lineage: shared::plan::lineage::LINEAGE_KEYS
            .iter()
            .filter_map(|k| source.tags.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect(),
        publication: Some(json!({
            "regions": images,
            "shares": Grants::launch(policy),
            "public": policy.public,
            "deprecation_time": regions.get(home).and_then(|r| r.deprecation_time.clone()),
            "failed_regions": failed,
            "retry": if failed.is_empty() { Value::Null } else { json!("the failed regions are retried by the publish schedule") },
        })),
        ..Message::new(event, now, home)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::plan::ids;

    #[test]
    fn the_message_stays_under_the_sns_limit_with_every_region() {
        let source = Image {
            id: "ami-0123456789abcdef0".into(),
            name: "n".into(),
            ..Image::default()
        };
        let policy = Policy {
            accounts: (0..5000).map(|i| format!("{i:012}")).collect(),
            ..Policy::default()
        };
        let regions: BTreeMap<String, RegionReport> = ids::KNOWN_REGIONS
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    RegionReport::failed(Some("ami-0123456789abcdef0".into()), "x".repeat(6000)),
                )
            })
            .collect();
        let m = publication_message(
            EventType::PublishPartial,
            &source,
            "us-east-1",
            &policy,
            &regions,
            Utc::now(),
        );
        let text = m.to_json();
        assert!(text.len() <= notify::MAX_MESSAGE_BYTES, "{}", text.len());
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["event_type"], "image.publish-partial");
    }
}
