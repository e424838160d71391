//! Gather one region's facts (images, users, snapshots) and turn a plan into report steps.

use crate::config::Deps;
use crate::output::{Step, StepResult};
use chrono::{DateTime, Utc};
use shared::aws::clients::RegionalClients;
use shared::aws::ec2;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::model::Select;
use shared::plan::lineage::MANAGED;
use shared::plan::retention::{self, Action, Policy, RegionFacts};
use std::collections::{BTreeMap, BTreeSet};

pub(crate) async fn gather(
    deps: &Deps,
    clients: &RegionalClients,
    region: &str,
    policy: &Policy,
) -> Result<RegionFacts, AwsError> {
    let c = clients.get(region);
    let images = ec2::describe_own_images(&c.ec2, &[]).await?;
    let used_by_instances = ec2::images_in_use(&c.ec2).await?;
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
        used_by_instances,
        used_by_templates,
        shared: BTreeMap::new(),
        managed_snapshots,
    })
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
            Action::Keep | Action::Skip => {}
        }
    }
    for o in &plan.orphans {
        steps.push(step(&o.region, &o.snapshot_id, "delete-snapshot"));
    }
    steps
}
