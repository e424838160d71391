//! Execute a plan: deprecate, deregister, delete snapshots (retrying in-use ones), announce.

use crate::config::Deps;
use crate::output::{Report, Step, StepResult};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures::stream::{self, StreamExt};
use shared::aws::clients::Clients;
use shared::aws::clients::RegionalClients;
use shared::aws::ec2;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::notify::{self, EventType, Message};
use shared::plan::retention::{self, Action, Decision};
use std::time::Duration;

/// How often a snapshot still "in use" right after its image was deregistered is retried.
pub(crate) const IN_USE_RETRIES: u32 = 3;

pub(crate) async fn delete_snapshot_step(c: &Clients, region: &str, snapshot: &str) -> Step {
    let mut pause = Duration::from_millis(500);
    let mut attempt = 0;
    let result = loop {
        match ec2::delete_snapshot(&c.ec2, snapshot).await {
            Ok(()) => break StepResult::Done,
            Err(e) if e.is_not_found() => break StepResult::AlreadyGone,
            Err(e) if e.has_code("InvalidSnapshot.InUse") => {
                attempt += 1;
                if attempt > IN_USE_RETRIES {
                    break StepResult::LeftInUse;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => break StepResult::Failed(e.to_string()),
        }
    };
    Step {
        region: region.to_owned(),
        resource: snapshot.to_owned(),
        action: "delete-snapshot",
        result,
    }
}

pub(crate) async fn execute(
    deps: &Deps,
    clients: &RegionalClients,
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
            let c = clients.get(&d.region);
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
                    result: StepResult::Deferred,
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
                    Ok(()) => StepResult::Done,
                    Err(e) => StepResult::Failed(e.to_string()),
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
                result: StepResult::Deferred,
            });
            continue;
        }
        let c = clients.get(&o.region);
        steps.push(delete_snapshot_step(&c, &o.region, &o.snapshot_id).await);
    }
    steps.sort_by(|a, b| (&a.region, &a.resource).cmp(&(&b.region, &b.resource)));
    steps
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
            "failed_steps": report.steps.iter().filter(|s| s.result.is_failure()).count(),
        })),
        decisions,
        decisions_omitted: omitted,
        ..Message::new(EventType::CleanupReport, now, &c.region)
    };
    notify::send(&c.sns, &deps.config.common.topic_arn, &msg).await
}
