//! cleanup: deprecate, then deregister stale AMIs and delete their snapshots — never the wrong
//! one.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Report`].
//!
//! 1. **Gather** per region: every image this account owns (one paginated listing — all of
//!    them count as snapshot users), the images used by instances not terminated, the images
//!    of launch templates (`$Default` and `$Latest`, or every version), and the managed
//!    snapshots (for the orphan sweep).
//! 2. **Plan** with [`shared::plan::retention::plan`]; then read the launch permissions of the
//!    images the plan would remove (only those: the listing says `Public`, sharing needs one
//!    call per image) and plan again with them.
//! 3. **Execute** unless dry run (the default for manual invokes): deprecate, deregister, delete
//!    the snapshots no other image uses (retrying `InvalidSnapshot.InUse` briefly, else leaving
//!    them to the next run's orphan sweep), delete orphans — bounded concurrency, stopping near
//!    the deadline.
//! 4. **Report**: every image considered with its decision and reasons, a summary per region
//!    and family, as the output and as `cleanup.report` on SNS.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{Map, Value};
use shared::aws::clients::Clients;
use shared::aws::ec2;
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::notify::{self, EventType, Message};
use shared::plan::ids;
use shared::plan::lineage::MANAGED;
use shared::plan::retention::{self, Action, Decision, Policy, RegionFacts, Selector};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::{info, warn};

/// Settings of cleanup, from the environment (names as in `template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Topic and S3 addressing.
    pub common: CommonConfig,
    /// Regions cleaned (`CLEANUP_REGIONS`; default the function's own).
    pub regions: Vec<String>,
    /// The policy of scheduled runs.
    pub policy: Policy,
    /// Scheduled runs only report (`DRY_RUN`, default `true` until you have read a report).
    pub dry_run: bool,
    /// Every launch template version protects its image, not only `$Default`/`$Latest`
    /// (`LAUNCH_TEMPLATE_VERSIONS=all`).
    pub all_template_versions: bool,
    /// Images handled in parallel (`CLEANUP_CONCURRENCY`).
    pub concurrency: usize,
}

impl Config {
    /// Every variable this function reads.
    pub fn vars() -> Vec<&'static str> {
        let mut v = CommonConfig::VARS.to_vec();
        v.extend([
            "CLEANUP_REGIONS",
            "KEEP_NEWEST",
            "MIN_AGE_DAYS",
            "GRACE_DAYS",
            "MAX_DELETIONS",
            "FAMILIES",
            "FOREIGN_SELECTORS",
            "ALLOW_PUBLIC",
            "ALLOW_SHARED",
            "ORPHAN_SWEEP",
            "DRY_RUN",
            "LAUNCH_TEMPLATE_VERSIONS",
            "CLEANUP_CONCURRENCY",
        ]);
        v
    }

    /// Reads and validates the configuration; the error lists every problem.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader::new(lookup);
        let common = CommonConfig::read(&mut r);
        let regions = r.regions("CLEANUP_REGIONS");
        let mut selectors = Vec::new();
        for s in r.list("FOREIGN_SELECTORS") {
            match Selector::parse(&s) {
                Ok(sel) => selectors.push(sel),
                Err(e) => r.problem(format!("FOREIGN_SELECTORS: {e}")),
            }
        }
        let policy = Policy {
            keep_newest: r.int_in("KEEP_NEWEST", 3, 0, 1000) as usize,
            min_age_days: r.int_in("MIN_AGE_DAYS", 30, 0, 3650),
            grace_days: r.int_in("GRACE_DAYS", 7, 0, 365),
            max_deletions: r.int_in("MAX_DELETIONS", 10, 0, 10_000) as usize,
            families: r.list("FAMILIES").into_iter().collect(),
            selectors,
            allow_public: r.bool_or("ALLOW_PUBLIC", false),
            allow_shared: r.bool_or("ALLOW_SHARED", false),
            orphan_sweep: r.bool_or("ORPHAN_SWEEP", true),
        };
        let dry_run = r.bool_or("DRY_RUN", true);
        let all_template_versions = match r.optional("LAUNCH_TEMPLATE_VERSIONS").as_deref() {
            None | Some("default-and-latest") => false,
            Some("all") => true,
            Some(other) => {
                r.problem(format!(
                    "LAUNCH_TEMPLATE_VERSIONS={other:?} is not default-and-latest or all"
                ));
                false
            }
        };
        let concurrency = r.int_in("CLEANUP_CONCURRENCY", 4, 1, 16) as usize;
        r.finish()?;
        Ok(Config {
            common,
            regions,
            policy,
            dry_run,
            all_template_versions,
            concurrency,
        })
    }
}

/// What the function needs to run.
#[derive(Debug, Clone)]
pub struct Deps {
    /// AWS clients of the function's region.
    pub clients: Clients,
    /// Settings.
    pub config: Config,
}

/// A manual invoke's overrides of the configured policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `dry_run` (manual default `true`).
    pub dry_run: Option<bool>,
    /// `families`.
    pub families: Option<BTreeSet<String>>,
    /// `regions`.
    pub regions: Option<Vec<String>>,
    /// `max_deletions`.
    pub max_deletions: Option<usize>,
    /// `keep_newest`.
    pub keep_newest: Option<usize>,
    /// `min_age_days`.
    pub min_age_days: Option<i64>,
    /// `grace_days`.
    pub grace_days: Option<i64>,
    /// `allow_public`.
    pub allow_public: Option<bool>,
    /// `allow_shared`.
    pub allow_shared: Option<bool>,
    /// `orphan_sweep`.
    pub orphan_sweep: Option<bool>,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The schedule: the configured policy and `DRY_RUN`.
    Scheduled,
    /// A manual run (dry run unless `"dry_run": false`).
    Manual(Overrides),
}

const MANUAL_FIELDS: [&str; 10] = [
    "dry_run",
    "families",
    "regions",
    "max_deletions",
    "keep_newest",
    "min_age_days",
    "grace_days",
    "allow_public",
    "allow_shared",
    "orphan_sweep",
];

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        let map = InvocationError::event_object(v, "a Scheduled Event or manual overrides")?;
        if let Some(dt) = map.get("detail-type").and_then(Value::as_str) {
            if dt == "Scheduled Event" {
                return Ok(Command::Scheduled);
            }
            return Err(InvocationError::invalid_event(format!(
                "EventBridge event {dt:?} is not a \"Scheduled Event\""
            )));
        }
        manual(map).map(Command::Manual)
    }
}

fn manual(map: &Map<String, Value>) -> Result<Overrides, InvocationError> {
    let mut problems = Vec::new();
    for key in map.keys() {
        if !MANUAL_FIELDS.contains(&key.as_str()) {
            problems.push(format!(
                "unknown field {key:?} (allowed: {})",
                MANUAL_FIELDS.join(", ")
            ));
        }
    }
    let boolean = |key: &str, problems: &mut Vec<String>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            problems.push(format!("{key} must be true or false, not {other}"));
            None
        }
    };
    let dry_run = boolean("dry_run", &mut problems);
    let allow_public = boolean("allow_public", &mut problems);
    let allow_shared = boolean("allow_shared", &mut problems);
    let orphan_sweep = boolean("orphan_sweep", &mut problems);
    let number = |key: &str, max: i64, problems: &mut Vec<String>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if (0..=max).contains(&n) => Some(n),
            _ => {
                problems.push(format!(
                    "{key} must be a whole number from 0 to {max}, not {v}"
                ));
                None
            }
        },
    };
    let max_deletions = number("max_deletions", 10_000, &mut problems).map(|n| n as usize);
    let keep_newest = number("keep_newest", 1000, &mut problems).map(|n| n as usize);
    let min_age_days = number("min_age_days", 3650, &mut problems);
    let grace_days = number("grace_days", 365, &mut problems);
    let strings = |key: &str, problems: &mut Vec<String>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for i in items {
                match i.as_str().filter(|s| !s.is_empty()) {
                    Some(s) => out.push(s.to_owned()),
                    None => problems.push(format!("{key}: {i} is not a name")),
                }
            }
            Some(out)
        }
        Some(other) => {
            problems.push(format!("{key} must be a list of strings, not {other}"));
            None
        }
    };
    let families = strings("families", &mut problems).map(|f| f.into_iter().collect());
    let regions = strings("regions", &mut problems);
    if let Some(rs) = &regions {
        for r in rs {
            if !ids::is_region(r) {
                problems.push(format!("regions: {r:?} is not an AWS region"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "cleanup request refused, nothing changed: {}",
            problems.join("; ")
        )));
    }
    Ok(Overrides {
        dry_run,
        families,
        regions,
        max_deletions,
        keep_newest,
        min_age_days,
        grace_days,
        allow_public,
        allow_shared,
        orphan_sweep,
    })
}

/// What was done (or, in a dry run, would be done) to one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Region.
    pub region: String,
    /// Image or snapshot.
    pub resource: String,
    /// `deprecate`, `deregister`, `delete-snapshot`.
    pub action: &'static str,
    /// `done`, `planned` (dry run), `deferred` (deadline), `left-in-use`, or the error.
    pub result: String,
}

/// Counts for one region and family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Kept.
    pub keep: usize,
    /// Deprecated.
    pub deprecate: usize,
    /// Deregistered.
    pub deregister: usize,
    /// Protected by an exclusion.
    pub skip: usize,
}

/// The run's report: the output, and (summarized) `cleanup.report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Nothing was changed.
    pub dry_run: bool,
    /// When the run planned.
    pub now: String,
    /// Regions cleaned.
    pub regions: Vec<String>,
    /// The policy applied.
    pub policy: Policy,
    /// Counts per `region/family`.
    pub summary: BTreeMap<String, Counts>,
    /// Deregistrations held back by the per-run cap (reported, not an error).
    pub capped: usize,
    /// One decision per image in scope.
    pub decisions: Vec<Decision>,
    /// Orphaned snapshots selected.
    pub orphans: Vec<retention::OrphanSnapshot>,
    /// The steps executed (or planned).
    pub steps: Vec<Step>,
}

impl shared::runner::Function for Deps {
    type Output = Report;

    fn from_env(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &shared::runner::SdkConfig,
    ) -> Result<Self, InvocationError> {
        let config = Config::from_lookup(lookup)?;
        Ok(Deps {
            clients: Clients::new(sdk, config.common.s3_force_path_style),
            config,
        })
    }

    async fn invoke(
        &self,
        event: &Value,
        now: DateTime<Utc>,
        deadline: Deadline,
    ) -> Result<Report, InvocationError> {
        handle(Command::from_event(event)?, self, now, deadline).await
    }
}

/// Runs cleanup. AWS failures are collected; the report is still logged and sent, then the
/// invocation fails with [`InvocationError::Partial`] naming each.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Report, InvocationError> {
    let cfg = &deps.config;
    let mut policy = cfg.policy.clone();
    let mut regions = cfg.regions.clone();
    let dry_run = match &cmd {
        Command::Scheduled => cfg.dry_run,
        Command::Manual(o) => {
            if let Some(f) = &o.families {
                policy.families = f.clone();
            }
            if let Some(r) = &o.regions {
                regions = r.clone();
            }
            policy.max_deletions = o.max_deletions.unwrap_or(policy.max_deletions);
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

    let mut facts = Vec::new();
    for r in &regions {
        facts.push(gather(deps, r, &policy).await.map_err(partial)?);
    }
    check_families(&facts, &policy, now)?;

    // Sharing is read only for the images the plan would remove.
    let first = retention::plan(&facts, &policy, now);
    let candidates: Vec<(String, String)> = first
        .decisions
        .iter()
        .filter(|d| matches!(d.action, Action::Deprecate | Action::Deregister))
        .map(|d| (d.region.to_string(), d.image_id.clone()))
        .collect();
    let shares = stream::iter(candidates)
        .map(|(region, image)| async move {
            let c = clients_for(deps, &region);
            let who = ec2::launch_permissions(&c.ec2, &image).await;
            (region, image, who)
        })
        .buffer_unordered(cfg.concurrency)
        .collect::<Vec<_>>()
        .await;
    for (region, image, who) in shares {
        let who: Vec<String> = who
            .map_err(partial)?
            .into_iter()
            .filter(|w| w != "all")
            .collect();
        if let Some(rf) = facts.iter_mut().find(|f| f.region == region)
            && !who.is_empty()
        {
            rf.shared.insert(image, who);
        }
    }
    let plan = retention::plan(&facts, &policy, now);

    let steps = if dry_run {
        planned_steps(&plan)
    } else {
        execute(deps, &plan, now, deadline).await
    };
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
        }
    }
    let report = Report {
        dry_run,
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        regions,
        policy,
        summary,
        capped: plan.capped,
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
        .filter(|s| s.result.starts_with("error"))
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

fn partial(e: AwsError) -> InvocationError {
    InvocationError::Partial {
        failed: 1,
        total: 1,
        errors: vec![format!("nothing was changed: {e}")],
    }
}

fn clients_for(deps: &Deps, region: &str) -> Clients {
    if region == deps.clients.region {
        deps.clients.clone()
    } else {
        deps.clients.for_region(region)
    }
}

async fn gather(deps: &Deps, region: &str, policy: &Policy) -> Result<RegionFacts, AwsError> {
    let c = clients_for(deps, region);
    let images = ec2::describe_own_images(&c.ec2, vec![]).await?;
    let used_by_instances = ec2::images_in_use(&c.ec2).await?;
    let used_by_templates =
        ec2::images_in_launch_templates(&c.ec2, deps.config.all_template_versions).await?;
    let managed_snapshots = if policy.orphan_sweep {
        ec2::describe_own_snapshots_filtered(&c.ec2, vec![ec2::tag_filter(MANAGED, ["true"])])
            .await?
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
fn check_families(
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

fn planned_steps(plan: &retention::Plan) -> Vec<Step> {
    let mut steps = Vec::new();
    let step = |region: &str, resource: &str, action| Step {
        region: region.to_owned(),
        resource: resource.to_owned(),
        action,
        result: "planned".into(),
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

/// How often a snapshot still "in use" right after its image was deregistered is retried.
const IN_USE_RETRIES: u32 = 3;

async fn delete_snapshot_step(c: &Clients, region: &str, snapshot: &str) -> Step {
    let mut pause = Duration::from_millis(500);
    let mut attempt = 0;
    let result = loop {
        match ec2::delete_snapshot(&c.ec2, snapshot).await {
            Ok(()) => break "done".to_owned(),
            Err(e) if e.is_not_found() => break "done (already gone)".to_owned(),
            Err(e) if e.has_code("InvalidSnapshot.InUse") => {
                attempt += 1;
                if attempt > IN_USE_RETRIES {
                    break "left-in-use: still in use; the orphan sweep of a later run deletes it once free".to_owned();
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => break format!("error: {e}"),
        }
    };
    Step {
        region: region.to_owned(),
        resource: snapshot.to_owned(),
        action: "delete-snapshot",
        result,
    }
}

async fn execute(
    deps: &Deps,
    plan: &retention::Plan,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Vec<Step> {
    // EnableImageDeprecation refuses past times, and a run executes for up to the Lambda's
    // 15 minutes after it planned at `now`: 16 minutes ahead is still in the future at the
    // last call (the benchmark's 10,000-image run failed with one minute).
    let deprecate_at = now + ChronoDuration::minutes(16);
    let work: Vec<&Decision> = plan
        .decisions
        .iter()
        .filter(|d| matches!(d.action, Action::Deprecate | Action::Deregister))
        .collect();
    let mut steps: Vec<Step> = stream::iter(work)
        .map(|d| async move {
            let c = clients_for(deps, &d.region);
            let action = if d.action == Action::Deprecate {
                "deprecate"
            } else {
                "deregister"
            };
            let mut out = Vec::new();
            if !deadline.may_start() {
                out.push(Step {
                    region: d.region.to_string(),
                    resource: d.image_id.clone(),
                    action,
                    result: "deferred: the Lambda deadline is near; next run".into(),
                });
                return out;
            }
            let r = if d.action == Action::Deprecate {
                ec2::enable_image_deprecation(&c.ec2, &d.image_id, deprecate_at).await
            } else {
                ec2::deregister_image(&c.ec2, &d.image_id).await
            };
            let ok = r.is_ok();
            out.push(Step {
                region: d.region.to_string(),
                resource: d.image_id.clone(),
                action,
                result: match r {
                    Ok(()) => "done".into(),
                    Err(e) => format!("error: {e}"),
                },
            });
            if ok && d.action == Action::Deregister {
                for s in &d.delete_snapshots {
                    out.push(delete_snapshot_step(&c, &d.region, s).await);
                }
            }
            out
        })
        .buffer_unordered(deps.config.concurrency)
        .flat_map(stream::iter)
        .collect()
        .await;
    for o in &plan.orphans {
        if !deadline.may_start() {
            steps.push(Step {
                region: o.region.to_string(),
                resource: o.snapshot_id.clone(),
                action: "delete-snapshot",
                result: "deferred: the Lambda deadline is near; next run".into(),
            });
            continue;
        }
        let c = clients_for(deps, &o.region);
        steps.push(delete_snapshot_step(&c, &o.region, &o.snapshot_id).await);
    }
    steps.sort_by(|a, b| (&a.region, &a.resource).cmp(&(&b.region, &b.resource)));
    steps
}

async fn announce(deps: &Deps, report: &Report, now: DateTime<Utc>) -> Result<String, AwsError> {
    let c = &deps.clients;
    // Removals first, then what is kept; only as many as fit the message (the rest are
    // counted), so a 10,000-image report is not copied into 10,000 JSON trees to send 200 KiB.
    let budget = notify::MAX_MESSAGE_BYTES - 16 * 1024;
    let mut used = 0;
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
            "orphan_snapshots": report.orphans.len(),
            "steps": report.steps.len(),
            "failed_steps": report.steps.iter().filter(|s| s.result.starts_with("error")).count(),
        })),
        decisions,
        decisions_omitted: omitted,
        ..Message::new(EventType::CleanupReport, now, &c.region)
    };
    notify::send(&c.sns, &deps.config.common.topic_arn, &msg).await
}
