//! Execute a plan, paced: deregister the images whose checks cleared as they clear (with the
//! image's snapshots in the same call), then the rest of the second plan: mark and deprecate,
//! undeprecate, deregister, delete orphaned snapshots; announce the report.

use crate::config::Deps;
use crate::gather::Removed;
use crate::output::{Report, Step, StepResult};
use chrono::{DateTime, Utc};
use futures::channel::mpsc::UnboundedReceiver;
use futures::stream::{self, StreamExt};
use shared::aws::clients::Clients;
use shared::aws::clients::RegionalClients;
use shared::aws::ec2;
use shared::deadline::{Deadline, SAFETY_MARGIN};
use shared::error::AwsError;
use shared::model::Tags;
use shared::notify::{self, EventType, Message};
use shared::plan::retention::{
    self, Action, DEPRECATED_BY, DEPRECATED_BY_CLEANUP, DEPRECATION_LEAD, Decision,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tracing::warn;

/// How often a snapshot still "in use" right after its image was deregistered is retried.
pub(crate) const IN_USE_RETRIES: u32 = 3;

/// Orphans whose deletion is under way at once (each holds a call slot only during a call).
const ORPHANS_IN_FLIGHT: usize = 64;

/// DeleteSnapshot of an orphan, retrying "in use" a few times. Every attempt is a call of its
/// own: it takes its own turn (the pacer's token, then a call slot), and the slot is given back
/// while the attempt waits to be retried. Deferred when the deadline leaves no room for the
/// first attempt; left in use when it leaves none for a retry (checked before the pause too, so
/// a retry that could not start is not waited for).
pub(crate) async fn delete_orphan(
    deps: &Deps,
    c: &Clients,
    region: &str,
    snapshot: &str,
    deadline: &Deadline,
) -> StepResult {
    let mut pause = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        let Some(turn) = deps.turn(region, "DeleteSnapshot", deadline).await else {
            break if attempt == 0 {
                StepResult::Deferred
            } else {
                StepResult::LeftInUse
            };
        };
        let result = ec2::delete_snapshot(&c.ec2, snapshot).await;
        drop(turn);
        match result {
            Ok(()) => break StepResult::Done,
            Err(e) if e.is_not_found() => break StepResult::AlreadyGone,
            Err(e) if e.has_code("InvalidSnapshot.InUse") => {
                attempt += 1;
                // A retry that could not start after its pause is not waited for.
                if attempt > IN_USE_RETRIES || !deadline.has_left(pause + SAFETY_MARGIN) {
                    break StepResult::LeftInUse;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => break StepResult::Failed(e.to_string()),
        }
    }
}

/// Executes the second plan, but for the deregistrations in `sent`: those are made by
/// [`remove_cleared`] as their checks clear, and [`merge`] adds their steps.
pub(crate) async fn execute(
    deps: &Deps,
    clients: &RegionalClients,
    plan: &retention::Plan,
    sent: &HashSet<(String, String)>,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Vec<Step> {
    let deprecate_at = now + DEPRECATION_LEAD;
    let to_deprecate = of_action(plan, Action::Deprecate);
    // The images to deprecate are marked first (one CreateTags per region and 1,000 images),
    // so a deprecation is always one cleanup can recognise and undo; an unmarked one is not made.
    let marked = tag_batches(deps, clients, &to_deprecate, deadline, true).await;
    let mut steps = image_steps(deps, clients, plan, sent, &marked, deprecate_at, deadline).await;
    let done: HashSet<(&str, &str)> = steps
        .iter()
        .filter(|s| s.action == "undeprecate" && s.result.is_done())
        .map(|s| (s.region.as_str(), s.resource.as_str()))
        .collect();
    let undeprecated: Vec<&Decision> = of_action(plan, Action::Undeprecate)
        .into_iter()
        .filter(|d| done.contains(&(&*d.region, d.image_id.as_str())))
        .collect();
    // The mark goes once the deprecation is gone (a failure here only leaves a stale mark).
    let unmarked = tag_batches(deps, clients, &undeprecated, deadline, false).await;
    for ((region, image), result) in unmarked {
        steps.push(Step {
            region,
            resource: image,
            action: "unmark-deprecated",
            result,
        });
    }
    // The orphans are deleted side by side, in the plan's order in the report. More are in
    // flight than there are call slots: one waiting to retry has given its slot back, and the
    // slots and the pacer bound the calls.
    let swept: Vec<Step> = stream::iter(&plan.orphans)
        .map(|o| async move {
            let c = clients.get(&o.region);
            Step {
                region: o.region.to_string(),
                resource: o.snapshot_id.clone(),
                action: "delete-snapshot",
                result: delete_orphan(deps, &c, &o.region, &o.snapshot_id, &deadline).await,
            }
        })
        .buffered(ORPHANS_IN_FLIGHT)
        .collect()
        .await;
    steps.extend(swept);
    steps
}

/// Deregisters each image [`crate::gather::check`] sends as soon as its checks clear, until
/// the reads are done; returns the steps by `(region, image)`.
pub(crate) async fn remove_cleared(
    deps: &Deps,
    clients: &RegionalClients,
    cleared: UnboundedReceiver<Decision>,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Removed {
    let deprecate_at = now + DEPRECATION_LEAD;
    cleared
        .map(|d| async move {
            let steps = image_step(deps, clients, &d, deprecate_at, deadline).await;
            ((d.region.to_string(), d.image_id), steps)
        })
        .buffer_unordered(deps.config.concurrency)
        .collect()
        .await
}

/// All the steps of the run, in (region, resource) order: the second plan's, and those of the
/// deregistrations made as their checks cleared. The planner's property test proves that the
/// second plan deregisters each of those too; should one ever differ, the run fails with a
/// step that says so (the deregistration happened, and the decision reported says otherwise).
pub(crate) fn merge(
    plan: &retention::Plan,
    sent: HashSet<(String, String)>,
    mut removed: Removed,
    mut steps: Vec<Step>,
) -> Vec<Step> {
    let second: HashMap<(&str, &str), &Decision> = plan
        .decisions
        .iter()
        .map(|d| ((&*d.region, d.image_id.as_str()), d))
        .collect();
    for (region, image) in sent {
        let made = removed.remove(&(region.clone(), image.clone()));
        let decided = second
            .get(&(region.as_str(), image.as_str()))
            .map(|d| d.action);
        if decided != Some(Action::Deregister) {
            warn!(%region, %image, ?decided, "deregistered as its checks cleared, but the second plan decided otherwise");
            steps.push(Step {
                region: region.clone(),
                resource: image.clone(),
                action: "deregister",
                result: StepResult::Failed(format!(
                    "deregistered as its checks cleared, but the second plan decided {decided:?}: \
                     a planner defect, please report it"
                )),
            });
        }
        match made {
            Some(made) => steps.extend(made),
            None => steps.push(Step {
                region,
                resource: image,
                action: "deregister",
                result: StepResult::Failed("handed on for removal, but no result came back".into()),
            }),
        }
    }
    steps.sort_by(|a, b| (&a.region, &a.resource).cmp(&(&b.region, &b.resource)));
    steps
}

/// The image steps of the plan (deprecate, undeprecate, deregister), but for the
/// deregistrations in `sent` (made as their checks cleared); `marked` holds the deprecations
/// whose mark failed (not made).
async fn image_steps(
    deps: &Deps,
    clients: &RegionalClients,
    plan: &retention::Plan,
    sent: &HashSet<(String, String)>,
    marked: &HashMap<(String, String), StepResult>,
    deprecate_at: DateTime<Utc>,
    deadline: Deadline,
) -> Vec<Step> {
    let work: Vec<&Decision> = plan
        .decisions
        .iter()
        .filter(|d| match d.action {
            Action::Deprecate | Action::Undeprecate => true,
            Action::Deregister => !sent.contains(&(d.region.to_string(), d.image_id.clone())),
            Action::Keep | Action::Skip => false,
        })
        .collect();
    stream::iter(work)
        .map(|d| async move {
            if d.action == Action::Deprecate
                && let Some(failed) = marked.get(&(d.region.to_string(), d.image_id.clone()))
            {
                return vec![step(d, "deprecate", failed.clone())];
            }
            image_step(deps, clients, d, deprecate_at, deadline).await
        })
        .buffer_unordered(deps.config.concurrency)
        .flat_map(stream::iter)
        .collect()
        .await
}

fn of_action(plan: &retention::Plan, action: Action) -> Vec<&Decision> {
    plan.decisions
        .iter()
        .filter(|d| d.action == action)
        .collect()
}

fn step(d: &Decision, action: &'static str, result: StepResult) -> Step {
    Step {
        region: d.region.to_string(),
        resource: d.image_id.clone(),
        action,
        result,
    }
}

/// Adds (`mark`) or removes the [`DEPRECATED_BY`] mark on `images`, one call per region and
/// 1,000 images (CreateTags' and DeleteTags' limit). A call fails for all its images when one
/// of them fails it (CreateTags on an image that already holds EC2's 50 tags answers
/// `TagLimitExceeded`, on one deregistered since the listing `InvalidAMIID.NotFound`), so a
/// call refused for one image's sake ([`TagFailure::OneImage`]) is made again image by image:
/// only the image at fault fails, with EC2's answer for it, and the others go on. Any other
/// refusal (throttling, a denial) fails the batch as it is, not a thousand calls more. Returns the images whose call failed or was deferred, with
/// that result.
async fn tag_batches(
    deps: &Deps,
    clients: &RegionalClients,
    images: &[&Decision],
    deadline: Deadline,
    mark: bool,
) -> HashMap<(String, String), StepResult> {
    let mut by_region: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in images {
        by_region.entry(&d.region).or_default().push(&d.image_id);
    }
    let mut failed = HashMap::new();
    for (region, ids) in by_region {
        for batch in ids.chunks(1000) {
            let mut note = |ids: &[&str], r: &StepResult| {
                for id in ids {
                    failed.insert((region.to_string(), (*id).to_string()), r.clone());
                }
            };
            match tag_call(deps, clients, region, batch, &deadline, mark).await {
                Ok(()) => {}
                Err(TagFailure::OneImage(_)) if batch.len() > 1 => {
                    for id in batch {
                        if let Err(r) =
                            tag_call(deps, clients, region, &[id], &deadline, mark).await
                        {
                            note(&[id], &r.into());
                        }
                    }
                }
                Err(r) => note(batch, &r.into()),
            }
        }
    }
    failed
}

/// Why a [`tag_call`] did not tag its images.
enum TagFailure {
    /// EC2 refused the call for what one of its images is: no room for another tag
    /// (`TagLimitExceeded`), or gone since the listing (`InvalidAMIID.*`, `InvalidID`). The
    /// others may be tagged one by one.
    OneImage(String),
    /// Anything else (throttled, denied, the service failing): the same for every image, so it
    /// is not tried again image by image.
    All(String),
    /// No turn before the deadline.
    Deferred,
}

impl From<TagFailure> for StepResult {
    fn from(f: TagFailure) -> Self {
        match f {
            TagFailure::OneImage(e) | TagFailure::All(e) => StepResult::Failed(e),
            TagFailure::Deferred => StepResult::Deferred,
        }
    }
}

/// One CreateTags (`mark`) or DeleteTags call of [`tag_batches`], in its turn.
async fn tag_call(
    deps: &Deps,
    clients: &RegionalClients,
    region: &str,
    ids: &[&str],
    deadline: &Deadline,
    mark: bool,
) -> Result<(), TagFailure> {
    let action = if mark { "CreateTags" } else { "DeleteTags" };
    let Some(_turn) = deps.turn(region, action, deadline).await else {
        return Err(TagFailure::Deferred);
    };
    let ec2 = &clients.get(region).ec2;
    let r = if mark {
        let tags = Tags::from([(DEPRECATED_BY.to_string(), DEPRECATED_BY_CLEANUP.to_string())]);
        ec2::create_tags(ec2, ids, &tags).await
    } else {
        ec2::delete_tag_keys(ec2, ids, &[DEPRECATED_BY]).await
    };
    r.map_err(|e| {
        let one_image = ["TagLimitExceeded", "InvalidID"]
            .iter()
            .any(|code| e.has_code(code))
            || e.code
                .as_deref()
                .is_some_and(|c| c.starts_with("InvalidAMIID."));
        if one_image {
            TagFailure::OneImage(e.to_string())
        } else {
            TagFailure::All(e.to_string())
        }
    })
}

/// One image's step: deprecate, undeprecate, or deregister with its snapshots (EC2 deletes
/// them in the same call and skips those another AMI uses; each result is a step).
pub(crate) async fn image_step(
    deps: &Deps,
    clients: &RegionalClients,
    d: &Decision,
    deprecate_at: DateTime<Utc>,
    deadline: Deadline,
) -> Vec<Step> {
    let (name, call) = match d.action {
        Action::Deprecate => ("deprecate", "EnableImageDeprecation"),
        Action::Undeprecate => ("undeprecate", "DisableImageDeprecation"),
        _ => ("deregister", "DeregisterImage"),
    };
    let Some(_turn) = deps.turn(&d.region, call, &deadline).await else {
        return vec![step(d, name, StepResult::Deferred)];
    };
    let ec2 = &clients.get(&d.region).ec2;
    let done = |r: Result<(), AwsError>| {
        vec![step(
            d,
            name,
            r.map_or_else(|e| StepResult::Failed(e.to_string()), |()| StepResult::Done),
        )]
    };
    match d.action {
        Action::Deprecate => {
            done(ec2::enable_image_deprecation(ec2, &d.image_id, deprecate_at).await)
        }
        Action::Undeprecate => done(ec2::disable_image_deprecation(ec2, &d.image_id).await),
        _ => match ec2::deregister_image_and_snapshots(ec2, &d.image_id).await {
            // Another run got there first (scheduled and manual runs overlap): EC2 answers
            // InvalidAMIID.Unavailable for an image already deregistered, NotFound once it is
            // gone (EC2 API reference, DeregisterImage; "Error codes"). Its DeregisterImage
            // took the snapshots; any it left are the orphan sweep's.
            Err(e) if e.is_not_found() || e.has_code("InvalidAMIID.Unavailable") => {
                vec![step(d, name, StepResult::AlreadyGone)]
            }
            Err(e) => done(Err(e)),
            Ok(results) => {
                let mut out = vec![step(d, name, StepResult::Done)];
                out.extend(snapshot_steps(d, results));
                out
            }
        },
    }
}

/// The snapshot results DeregisterImage returned, as steps; a snapshot the plan meant to
/// delete that EC2 did not report on is reported as such (it stays; the orphan sweep of a
/// later run deletes it once unused).
fn snapshot_steps(d: &Decision, results: Vec<(String, String)>) -> Vec<Step> {
    let mut out = Vec::new();
    for s in d.delete_snapshots.iter().chain(&d.keep_snapshots) {
        if !results.iter().any(|(id, _)| id == s) {
            out.push(Step {
                region: d.region.to_string(),
                resource: s.clone(),
                action: "delete-snapshot",
                result: StepResult::Failed(format!(
                    "DeregisterImage of {} reported no result for it; it stays",
                    d.image_id
                )),
            });
        }
    }
    for (snapshot, code) in results {
        let result = match code.as_str() {
            "success" => StepResult::Done,
            "skipped" => StepResult::Kept("another AMI uses it (EC2 skipped it)".into()),
            "missing-permissions" => StepResult::Failed(
                "missing-permissions: this role may not delete it (ec2:DeleteSnapshot)".into(),
            ),
            other => StepResult::Failed(format!("{other}: EC2 did not delete it")),
        };
        out.push(Step {
            region: d.region.to_string(),
            resource: snapshot,
            action: "delete-snapshot",
            result,
        });
    }
    out
}

pub(crate) async fn announce(
    deps: &Deps,
    report: &Report,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let c = &deps.clients;
    // Removals first, then what is kept; only as many as fit the message (the rest are
    // counted), so a 10,000-image report is not copied into 10,000 JSON trees to send 200 KiB.
    let budget = notify::MAX_MESSAGE_BYTES - 16 * 1024;
    // The steps that did not end as planned (failed, deferred, left in use, kept), named, so a
    // subscriber sees which image or snapshot a removal in the decisions did not reach; they go
    // first, in at most a tenth of the budget.
    let mut used = 0;
    let mut unfinished = Vec::new();
    let mut unfinished_omitted = 0;
    // Failures first: deferred, left-in-use and kept steps may not crowd them out.
    let failed = report.steps.iter().filter(|s| s.result.is_failure());
    let other = report.steps.iter().filter(|s| {
        !s.result.is_done() && !s.result.is_failure() && s.result != StepResult::Planned
    });
    for step in failed.chain(other) {
        let size = serde_json::to_string(step)
            .map(|t| t.len() + 1)
            .unwrap_or(0);
        if unfinished_omitted == 0 && used + size <= budget / 10 {
            used += size;
            unfinished.extend(serde_json::to_value(step).ok());
        } else {
            unfinished_omitted += 1;
        }
    }
    let mut decisions = Vec::new();
    let mut omitted = 0;
    for d in report
        .decisions
        .iter()
        .filter(|d| d.action != Action::Keep)
        .chain(report.decisions.iter().filter(|d| d.action == Action::Keep))
    {
        if omitted > 0 {
            omitted += 1;
            continue;
        }
        let size = serde_json::to_string(d).map(|t| t.len() + 1).unwrap_or(0);
        if used + size <= budget {
            used += size;
            decisions.extend(serde_json::to_value(d).ok());
        } else {
            omitted += 1;
        }
    }
    let msg = Message {
        summary: Some(serde_json::json!({
            "dry_run": report.dry_run,
            "regions": report.regions,
            "counts": report.summary,
            "capped": report.capped,
            "relaxed": report.relaxed,
            "orphan_snapshots": report.orphans.len(),
            "steps": report.steps.len(),
            "failed_steps": report.steps.iter().filter(|s| s.result.is_failure()).count(),
            "unfinished_steps": unfinished,
            "unfinished_steps_omitted": unfinished_omitted,
        })),
        decisions,
        decisions_omitted: omitted,
        ..Message::new(EventType::CleanupReport, now, &c.region)
    };
    notify::send(&c.sns, &deps.config.common.topic_arn, &msg).await
}
