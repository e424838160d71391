//! Gather one region's facts (images, launch templates, snapshots), check the images a first
//! plan would act on (sharing, references) and hand on those to deregister at once, and turn
//! a plan into report steps (dry run).

use crate::config::Deps;
use crate::output::{Step, StepResult};
use chrono::{DateTime, Utc};
use futures::channel::mpsc::UnboundedSender;
use futures::stream::{self, StreamExt};
use shared::aws::clients::RegionalClients;
use shared::aws::ec2;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::model::Select;
use shared::plan::lineage::MANAGED;
use shared::plan::retention::{self, Action, Checks, Decision, Policy, RegionFacts};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub(crate) async fn gather(
    deps: &Deps,
    clients: &RegionalClients,
    region: &str,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<RegionFacts, AwsError> {
    let c = clients.get(region);
    let images = ec2::describe_every_own_image(&c.ec2, &[]).await?;
    let used_by_templates =
        ec2::images_in_launch_templates(&c.ec2, deps.config.all_template_versions, now).await?;
    let managed_snapshots = if policy.orphan_sweep {
        ec2::describe_own_snapshots_filtered(&c.ec2, &[Select::tag(MANAGED, ["true"])]).await?
    } else {
        Vec::new()
    };
    Ok(RegionFacts {
        region: region.to_owned(),
        images,
        used_by_templates,
        checked: None,
        managed_snapshots,
    })
}

/// What [`check`] read, and which images it handed on to be removed at once.
pub(crate) struct Checked {
    /// Each checked image's checks, as `(region, image, checks)`; an image the deadline left
    /// unread has none.
    pub reads: Vec<(String, String, Checks)>,
    /// The images sent to be deregistered at once, as `(region, image)`.
    pub sent: HashSet<(String, String)>,
}

/// Steps already made, by `(region, image)`.
pub(crate) type Removed = HashMap<(String, String), Vec<Step>>;

/// Reads the checks of the images the first plan acts on: references (DescribeImageReferences:
/// instances not terminated and SSM parameters, ten images per call), then each image's launch
/// permissions (one call per image), each paced. A failed read is that image's check result
/// (it is skipped with the reason), not the run's failure; an image the deadline leaves unread
/// is not acted on this run.
///
/// With `removals`, each image the first plan deregisters is sent there as soon as its own
/// checks clear ([`retention::cleared`]: the second plan decides the same for it), to be
/// deregistered while the next images are still being read: on a rate-limited account the
/// reads and the removals then draw on their buckets side by side instead of one after the
/// other. The reads never wait for the removals (the channel is unbounded: at most one entry
/// per image), so the rest of the plan starts as soon as the reads are done.
pub(crate) async fn check(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    first: &retention::Plan,
    policy: &Policy,
    removals: Option<UnboundedSender<Decision>>,
) -> Checked {
    let mut by_region: BTreeMap<&str, Vec<&Decision>> = BTreeMap::new();
    for d in &first.decisions {
        if matches!(d.action, Action::Deprecate | Action::Deregister) {
            by_region.entry(&d.region).or_default().push(d);
        }
    }
    let batches: Vec<Vec<&Decision>> = by_region
        .into_values()
        .flat_map(|ds| {
            ds.chunks(ec2::IMAGE_REFERENCES_BATCH)
                .map(<[&Decision]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let concurrency = deps.config.concurrency;
    let removals = &removals;
    // Each batch is one future: its references, then its images' launch permissions. Every
    // future waiting for a call slot is thus polled by the stream that owns it; a stage that
    // waited, full, for a slot while the slot went to a read queued in a stage nobody polled
    // (the reads ahead of it) stopped the run for good at CLEANUP_CONCURRENCY=1. A batch more
    // than the slots need keeps the next batch's references read while this one's launch
    // permissions are.
    let batches_at_once = concurrency.div_ceil(ec2::IMAGE_REFERENCES_BATCH) + 1;
    let read: Vec<(&Decision, Option<Checks>, bool)> = stream::iter(batches)
        .map(|batch| async move {
            stream::iter(references(deps, clients, deadline, batch).await)
                .map(|(d, referenced_by)| {
                    checked_one(deps, clients, deadline, policy, removals, d, referenced_by)
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await
        })
        .buffer_unordered(batches_at_once)
        .flat_map(stream::iter)
        .collect()
        .await;
    let mut checked = Checked {
        reads: Vec::with_capacity(read.len()),
        sent: HashSet::new(),
    };
    for (d, checks, sent) in read {
        let key = (d.region.to_string(), d.image_id.clone());
        if sent {
            checked.sent.insert(key.clone());
        }
        if let Some(checks) = checks {
            checked.reads.push((key.0, key.1, checks));
        }
    }
    checked
}

/// One image's checks, from its batch's references and its own launch permissions (read only
/// when the references were), and whether it was sent to be removed at once.
async fn checked_one<'a>(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    policy: &Policy,
    removals: &Option<UnboundedSender<Decision>>,
    d: &'a Decision,
    referenced_by: Option<Result<Vec<String>, String>>,
) -> (&'a Decision, Option<Checks>, bool) {
    let checks = match referenced_by {
        Some(referenced_by) => {
            launch_permissions(deps, clients, deadline, d)
                .await
                .map(|shared_with| Checks {
                    shared_with,
                    referenced_by,
                })
        }
        None => None,
    };
    let send = removals.as_ref().filter(|_| {
        d.action == Action::Deregister
            && checks
                .as_ref()
                .is_some_and(|c| retention::cleared(c, policy))
    });
    // The receiver lives until every sender is gone, so a send does not fail; if one did, the
    // image is not "sent" and the second plan's execution removes it.
    let sent = send.is_some_and(|tx| tx.unbounded_send(d.clone()).is_ok());
    (d, checks, sent)
}

/// One batch's references (one region, at most [`ec2::IMAGE_REFERENCES_BATCH`] images), per
/// image: None when the deadline left the call unmade, else what references it or why the
/// call failed. A batch whose call EC2 refused for an image id (`InvalidAMIID.*`: an id it no
/// longer knows, deregistered by someone else since the listing; AWS does not document how
/// DescribeImageReferences answers for one) is read again one image at a time, so that one
/// image's problem keeps only that image, not nine others with it. Any other failure
/// (throttling past the SDK's retries, a denied permission, a 5xx) is the batch's: splitting it
/// would only spend ten more calls of the budget on the same answer.
async fn references<'a>(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    batch: Vec<&'a Decision>,
) -> Vec<(&'a Decision, Option<Result<Vec<String>, String>>)> {
    let Some(region) = batch.first().map(|d| d.region.to_string()) else {
        return Vec::new();
    };
    let ids: Vec<String> = batch.iter().map(|d| d.image_id.clone()).collect();
    let Some(found) = references_of(deps, clients, deadline, &region, &ids).await else {
        return batch.into_iter().map(|d| (d, None)).collect();
    };
    if batch.len() > 1
        && found.as_ref().is_err_and(|e| {
            e.code
                .as_deref()
                .is_some_and(|c| c.starts_with("InvalidAMIID."))
        })
    {
        let mut alone = Vec::with_capacity(batch.len());
        for d in batch {
            let id = [d.image_id.clone()];
            let found = references_of(deps, clients, deadline, &region, &id).await;
            alone.push((d, found.map(|f| arns_of(&f, &d.image_id))));
        }
        return alone;
    }
    batch
        .into_iter()
        .map(|d| (d, Some(arns_of(&found, &d.image_id))))
        .collect()
}

/// What references `image` in a call's answer (its pairs of image and ARN), or why it failed.
fn arns_of(
    found: &Result<Vec<(String, String)>, AwsError>,
    image: &str,
) -> Result<Vec<String>, String> {
    found.as_ref().map_err(ToString::to_string).map(|refs| {
        refs.iter()
            .filter(|(i, _)| i == image)
            .map(|(_, arn)| arn.clone())
            .collect()
    })
}

/// One DescribeImageReferences call (paced) for `ids`, all of `region`: the (image, ARN)
/// pairs, or why it failed; None when the deadline left it unmade.
async fn references_of(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    region: &str,
    ids: &[String],
) -> Option<Result<Vec<(String, String)>, AwsError>> {
    let _turn = deps
        .turn(region, "DescribeImageReferences", &deadline)
        .await?;
    Some(ec2::image_references(&clients.get(region).ec2, ids).await)
}

/// One image's launch permissions; None when the deadline left the call unmade.
async fn launch_permissions(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    d: &Decision,
) -> Option<Result<Vec<String>, String>> {
    let _turn = deps
        .turn(&d.region, "DescribeImageAttribute", &deadline)
        .await?;
    Some(
        ec2::launch_permissions(&clients.get(&d.region).ec2, &d.image_id)
            .await
            .map_err(|e| e.to_string()),
    )
}

/// A family asked for that no image in scope has is a mistake (a typo would otherwise clean
/// nothing and say nothing).
pub(crate) fn check_families(
    facts: &[RegionFacts],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<(), InvocationError> {
    if policy.families.is_empty() {
        return Ok(());
    }
    let everything = Policy {
        families: BTreeSet::new(),
        max_deletions: 0,
        orphan_sweep: false,
        ..policy.clone()
    };
    let known: BTreeSet<String> = retention::plan(facts, &everything, now)
        .decisions
        .into_iter()
        .map(|d| d.family.to_string())
        .collect();
    let unknown: Vec<&String> = policy
        .families
        .iter()
        .filter(|f| !known.contains(*f))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(InvocationError::invalid_event(format!(
        "cleanup request refused, nothing changed: unknown famil{} {} (families in scope: {})",
        if unknown.len() == 1 { "y" } else { "ies" },
        unknown
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.into_iter().collect::<Vec<_>>().join(", ")
        }
    )))
}

pub(crate) fn planned_steps(plan: &retention::Plan) -> Vec<Step> {
    let mut steps = Vec::new();
    let step = |region: &str, resource: &str, action| Step {
        region: region.to_owned(),
        resource: resource.to_owned(),
        action,
        result: StepResult::Planned,
    };
    for d in &plan.decisions {
        match d.action {
            Action::Deprecate => steps.push(step(&d.region, &d.image_id, "deprecate")),
            Action::Deregister => {
                steps.push(step(&d.region, &d.image_id, "deregister"));
                for s in &d.delete_snapshots {
                    steps.push(step(&d.region, s, "delete-snapshot"));
                }
            }
            Action::Undeprecate => steps.push(step(&d.region, &d.image_id, "undeprecate")),
            Action::Keep | Action::Skip => {}
        }
    }
    for o in &plan.orphans {
        steps.push(step(&o.region, &o.snapshot_id, "delete-snapshot"));
    }
    steps
}
