//! Gather one region's facts (images, launch templates, snapshots), check the images a first
//! plan would act on (sharing, references), and turn a plan into report steps.

use crate::config::Deps;
use crate::execute::image_step;
use crate::output::{Step, StepResult};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use shared::aws::clients::RegionalClients;
use shared::aws::ec2;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::model::Select;
use shared::plan::lineage::MANAGED;
use shared::plan::retention::{
    self, Action, Checks, DEPRECATION_LEAD, Decision, Policy, RegionFacts,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub(crate) async fn gather(
    deps: &Deps,
    clients: &RegionalClients,
    region: &str,
    policy: &Policy,
) -> Result<RegionFacts, AwsError> {
    let c = clients.get(region);
    let images = ec2::describe_own_images(&c.ec2, &[]).await?;
    let used_by_templates =
        ec2::images_in_launch_templates(&c.ec2, deps.config.all_template_versions).await?;
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

/// What [`check`] read, and what it already did.
pub(crate) struct Checked {
    /// Each checked image's checks, as `(region, image, checks)`; an image the deadline left
    /// unread has none.
    pub reads: Vec<(String, String, Checks)>,
    /// The deregistrations made as soon as their image's checks cleared, with their steps,
    /// by `(region, image)`.
    pub removed: Removed,
}

/// Steps already made, by `(region, image)`.
pub(crate) type Removed = HashMap<(String, String), Vec<Step>>;

/// Reads the checks of the images the first plan acts on: references (DescribeImageReferences:
/// instances not terminated and SSM parameters, ten images per call), then launch permissions
/// (one call per image), each paced. A failed read is that image's check result (it is
/// skipped with the reason), not the run's failure; an image the deadline leaves unread is not
/// acted on this run.
///
/// With `remove`, each image the first plan deregisters is deregistered as soon as its own
/// checks clear ([`retention::cleared`]: the second plan decides the same for it), while the
/// next images are still being read: on a rate-limited account the reads and the removals
/// then draw on their buckets side by side instead of one after the other.
pub(crate) async fn check(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    first: &retention::Plan,
    policy: &Policy,
    remove: Option<DateTime<Utc>>,
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
    let at_once = concurrency.div_ceil(ec2::IMAGE_REFERENCES_BATCH);
    let done: Vec<Read<'_>> = stream::iter(batches)
        .map(|batch| read_batch(deps, clients, deadline, batch))
        .buffer_unordered(at_once)
        .flat_map(stream::iter)
        .map(|(d, checks)| async move {
            let steps = match (&checks, remove) {
                (Some(c), Some(now))
                    if d.action == Action::Deregister && retention::cleared(c, policy) =>
                {
                    Some(image_step(deps, clients, d, now + DEPRECATION_LEAD, deadline).await)
                }
                _ => None,
            };
            (d, checks, steps)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut checked = Checked {
        reads: Vec::with_capacity(done.len()),
        removed: HashMap::new(),
    };
    for (d, checks, steps) in done {
        let key = (d.region.to_string(), d.image_id.clone());
        if let Some(steps) = steps {
            checked.removed.insert(key.clone(), steps);
        }
        if let Some(checks) = checks {
            checked.reads.push((key.0, key.1, checks));
        }
    }
    checked
}

/// One image the first plan acts on, its checks (None: not read before the deadline), and the
/// steps of its deregistration if it was made at once.
type Read<'a> = (&'a Decision, Option<Checks>, Option<Vec<Step>>);

/// Reads one batch's checks (one region, at most [`ec2::IMAGE_REFERENCES_BATCH`] images): its
/// references in one call, then each image's launch permissions.
async fn read_batch<'a>(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    batch: Vec<&'a Decision>,
) -> Vec<(&'a Decision, Option<Checks>)> {
    let pacer = &deps.pacer;
    let Some(region) = batch.first().map(|d| d.region.to_string()) else {
        return Vec::new();
    };
    if !pacer
        .acquire(&region, "DescribeImageReferences", &deadline)
        .await
    {
        return batch.into_iter().map(|d| (d, None)).collect();
    }
    let ec2 = &clients.get(&region).ec2;
    let ids: Vec<String> = batch.iter().map(|d| d.image_id.clone()).collect();
    let found = ec2::image_references(ec2, &ids).await;
    let (found, region) = (&found, &region);
    stream::iter(batch)
        .map(|d| async move {
            let referenced_by = match found {
                Ok(refs) => Ok(refs
                    .iter()
                    .filter(|(i, _)| *i == d.image_id)
                    .map(|(_, arn)| arn.clone())
                    .collect()),
                Err(e) => Err(e.to_string()),
            };
            if !pacer
                .acquire(region, "DescribeImageAttribute", &deadline)
                .await
            {
                return (d, None);
            }
            let shared_with = ec2::launch_permissions(ec2, &d.image_id)
                .await
                .map_err(|e| e.to_string());
            let checks = Checks {
                shared_with,
                referenced_by,
            };
            (d, Some(checks))
        })
        .buffer_unordered(deps.config.concurrency)
        .collect()
        .await
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
