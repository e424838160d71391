//! The run: gather → plan → check (each removal made as its checks clear) → plan again →
//! execute the rest → report, per region, failures reported once.

use crate::config::{Config, Deps};
use crate::event::Command;
use crate::execute::{announce, execute, merge, remove_cleared};
use crate::gather::{check, check_families, gather, planned_steps};
use crate::output::{Counts, Report};
use chrono::{DateTime, Utc};
use futures::channel::mpsc::{self, UnboundedSender};
use shared::aws::clients::RegionalClients;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::plan::retention::{self, Action, Decision, Policy};
use std::collections::{BTreeMap, HashSet};
use tracing::{info, warn};

shared::impl_function! {
    deps: Deps,
    config: Config,
    command: Command,
    output: Report,
    new: Deps::new,
    handle: handle,
}

/// Runs cleanup. AWS failures are collected; the report is still logged and sent, then the
/// invocation fails with [`InvocationError::Partial`] naming each.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Report, InvocationError> {
    let (policy, regions, dry_run) = scope(&cmd, deps);
    InvocationError::check_partition(regions.iter().map(String::as_str), &deps.clients.region)?;
    let relaxed = relaxations(&deps.config.policy, &policy);
    if !relaxed.is_empty() {
        warn!(relaxed = ?relaxed, "a manual invoke relaxed the configured safety policy");
    }
    let clients = RegionalClients::new(&deps.clients, regions.iter().map(String::as_str));
    let (plan, steps) = if dry_run {
        let (plan, _) = plan_twice(deps, &clients, &regions, &policy, None, now, deadline).await?;
        let steps = planned_steps(&plan);
        (plan, steps)
    } else {
        // The removals run beside the reads and the rest of the plan: each image is
        // deregistered as soon as its checks clear (see `gather::check`).
        let (cleared, to_remove) = mpsc::unbounded();
        let removals = remove_cleared(deps, &clients, to_remove, now, deadline);
        let rest = async {
            let (plan, sent) = plan_twice(
                deps,
                &clients,
                &regions,
                &policy,
                Some(cleared),
                now,
                deadline,
            )
            .await?;
            let steps = execute(deps, &clients, &plan, &sent, now, deadline).await;
            Ok::<_, InvocationError>((plan, sent, steps))
        };
        let (removed, rest) = tokio::join!(removals, rest);
        let (plan, sent, steps) = rest?;
        let steps = merge(&plan, sent, removed, steps);
        (plan, steps)
    };
    let summary = summarize(&plan);
    let report = Report {
        dry_run,
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        regions,
        policy,
        summary,
        capped: plan.capped,
        relaxed,
        decisions: plan.decisions,
        orphans: plan.orphans,
        steps,
    };
    info!(
        dry_run,
        decisions = report.decisions.len(),
        capped = report.capped,
        "cleanup planned"
    );
    let errors: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.result.is_failure())
        .map(|s| format!("{} {} in {}: {}", s.action, s.resource, s.region, s.result))
        .collect();
    let sent = announce(deps, &report, now).await;
    let mut all_errors = errors;
    if let Err(e) = sent {
        all_errors.push(e.to_string());
    }
    if let Some(e) = InvocationError::from_failures(report.steps.len().max(1), all_errors) {
        warn!(error = %e, "cleanup finished with failures");
        return Err(e);
    }
    Ok(report)
}

/// The policy, regions and dry-run flag of this run: the configuration, with a manual
/// invoke's overrides (a manual invoke is a dry run unless it says otherwise).
fn scope(cmd: &Command, deps: &Deps) -> (Policy, Vec<String>, bool) {
    let cfg = &deps.config;
    let mut policy = cfg.policy.clone();
    let mut regions = cfg.regions.clone();
    let dry_run = match cmd {
        Command::Scheduled => cfg.dry_run,
        Command::Manual(o) => {
            if let Some(f) = &o.families {
                policy.families = f.clone();
            }
            if let Some(r) = &o.regions {
                regions = r.clone();
            }
            policy.max_deletions = o.max_deletions.unwrap_or(policy.max_deletions);
            policy.max_deprecations = o.max_deprecations.unwrap_or(policy.max_deprecations);
            policy.keep_newest = o.keep_newest.unwrap_or(policy.keep_newest);
            policy.min_age_days = o.min_age_days.unwrap_or(policy.min_age_days);
            policy.grace_days = o.grace_days.unwrap_or(policy.grace_days);
            policy.allow_public = o.allow_public.unwrap_or(policy.allow_public);
            policy.allow_shared = o.allow_shared.unwrap_or(policy.allow_shared);
            policy.orphan_sweep = o.orphan_sweep.unwrap_or(policy.orphan_sweep);
            o.dry_run.unwrap_or(true)
        }
    };
    if regions.is_empty() {
        regions.push(deps.clients.region.clone());
    }
    (policy, regions, dry_run)
}

/// Gathers every region, plans, checks only the images the first plan would act on (after
/// the caps: sharing and references need calls per image), and plans again: the second plan
/// acts only on images checked and clean. With `removals` (not a dry run), the images the
/// first plan deregisters are sent there as soon as their own checks clear (the second plan
/// decides the same for them, [`retention::cleared`]); returns which were sent.
async fn plan_twice(
    deps: &Deps,
    clients: &RegionalClients,
    regions: &[String],
    policy: &Policy,
    removals: Option<UnboundedSender<Decision>>,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<(retention::Plan, HashSet<(String, String)>), InvocationError> {
    let mut facts = Vec::new();
    for r in regions {
        facts.push(
            gather(deps, clients, r, policy, now)
                .await
                .map_err(partial)?,
        );
    }
    check_families(&facts, policy, now)?;
    let first = retention::plan(&facts, policy, now);
    let checked = check(deps, clients, deadline, &first, policy, removals).await;
    retention::with_checks(&mut facts, checked.reads);
    Ok((retention::plan(&facts, policy, now), checked.sent))
}

/// How a manual invoke made the policy less safe than the configured one, each as
/// `setting: configured → this run` (recorded in the report and the SNS message).
fn relaxations(configured: &Policy, run: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, was: String, now: String, looser: bool| {
        if looser {
            out.push(format!("{name}: {was} → {now} (manual invoke)"));
        }
    };
    check(
        "allow_public",
        configured.allow_public.to_string(),
        run.allow_public.to_string(),
        run.allow_public && !configured.allow_public,
    );
    check(
        "allow_shared",
        configured.allow_shared.to_string(),
        run.allow_shared.to_string(),
        run.allow_shared && !configured.allow_shared,
    );
    check(
        "min_age_days",
        configured.min_age_days.to_string(),
        run.min_age_days.to_string(),
        run.min_age_days < configured.min_age_days,
    );
    check(
        "keep_newest",
        configured.keep_newest.to_string(),
        run.keep_newest.to_string(),
        run.keep_newest < configured.keep_newest,
    );
    check(
        "grace_days",
        configured.grace_days.to_string(),
        run.grace_days.to_string(),
        run.grace_days < configured.grace_days,
    );
    check(
        "max_deletions",
        configured.max_deletions.to_string(),
        run.max_deletions.to_string(),
        run.max_deletions > configured.max_deletions,
    );
    check(
        "orphan_sweep",
        configured.orphan_sweep.to_string(),
        run.orphan_sweep.to_string(),
        run.orphan_sweep && !configured.orphan_sweep,
    );
    out
}

/// Counts per `region/family` and action.
fn summarize(plan: &retention::Plan) -> BTreeMap<String, Counts> {
    let mut summary: BTreeMap<String, Counts> = BTreeMap::new();
    for d in &plan.decisions {
        let c = summary
            .entry(format!("{}/{}", d.region, d.family))
            .or_default();
        match d.action {
            Action::Keep => c.keep += 1,
            Action::Deprecate => c.deprecate += 1,
            Action::Deregister => c.deregister += 1,
            Action::Skip => c.skip += 1,
            Action::Undeprecate => c.undeprecate += 1,
        }
    }
    summary
}

pub(crate) fn partial(e: AwsError) -> InvocationError {
    InvocationError::Partial {
        failed: 1,
        total: 1,
        errors: vec![format!("nothing was changed: {e}")],
    }
}
