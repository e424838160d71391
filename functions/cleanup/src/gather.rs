//! Gather one region's facts (images, launch templates, snapshots), check the images a first
//! plan would act on (sharing, references), and turn a plan into report steps.

use crate::config::Deps;
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
use shared::plan::retention::{self, Action, Checks, Policy, RegionFacts};
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

/// Reads the checks of the images a first plan would act on: launch permissions (one call
/// per image) and references (DescribeImageReferences: instances not terminated and SSM
/// parameters, ten images per call), each paced. A failed read is that image's check result
/// (it is skipped with the reason), not the run's failure; an image the deadline leaves
/// unread is not acted on this run.
pub(crate) async fn checks(
    deps: &Deps,
    clients: &RegionalClients,
    deadline: Deadline,
    candidates: Vec<(String, String)>,
) -> Vec<(String, String, Checks)> {
    let pacer = &deps.pacer;
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (region, image) in &candidates {
        by_region
            .entry(region.clone())
            .or_default()
            .push(image.clone());
    }
    let batches: Vec<(String, Vec<String>)> = by_region
        .into_iter()
        .flat_map(|(region, images)| {
            images
                .chunks(ec2::IMAGE_REFERENCES_BATCH)
                .map(|b| (region.clone(), b.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let references: HashMap<(String, String), Result<Vec<String>, String>> = stream::iter(batches)
        .map(|(region, batch)| async move {
            if !pacer
                .acquire(&region, "DescribeImageReferences", &deadline)
                .await
            {
                return Vec::new();
            }
            let c = clients.get(&region);
            let found = ec2::image_references(&c.ec2, &batch).await;
            batch
                .into_iter()
                .map(|image| {
                    let arns = match &found {
                        Ok(refs) => Ok(refs
                            .iter()
                            .filter(|(i, _)| *i == image)
                            .map(|(_, arn)| arn.clone())
                            .collect()),
                        Err(e) => Err(e.to_string()),
                    };
                    ((region.clone(), image), arns)
                })
                .collect()
        })
        .buffer_unordered(deps.config.concurrency)
        .flat_map(stream::iter)
        .collect()
        .await;
    let references = &references;
    stream::iter(candidates)
        .map(|(region, image)| async move {
            let referenced_by = references.get(&(region.clone(), image.clone()))?.clone();
            if !pacer
                .acquire(&region, "DescribeImageAttribute", &deadline)
                .await
            {
                return None;
            }
            let c = clients.get(&region);
            let shared_with = ec2::launch_permissions(&c.ec2, &image)
                .await
                .map_err(|e| e.to_string());
            Some((
                region,
                image,
                Checks {
                    shared_with,
                    referenced_by,
                },
            ))
        })
        .buffer_unordered(deps.config.concurrency)
        .filter_map(std::future::ready)
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
