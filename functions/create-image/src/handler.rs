//! The run: ingest the uploads, sweep the imports in flight, report every failure once.

use crate::config::{Config, Deps};
use crate::event::Command;
use crate::ingest::ingest;
use crate::output::{IngestOutcome, Output, StepAction, StepReport, SweepReport};
use crate::sweep::sweep;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use shared::deadline::Deadline;
use shared::invocation::InvocationError;
use tracing::{info, warn};

shared::impl_function! {
    deps: Deps,
    config: Config,
    command: Command,
    output: Output,
    new: Deps::new,
    handle: handle,
}

/// Runs a command. `now` is the clock; `deadline` bounds the work started.
///
/// Returns the full report, or — when any AWS call failed — [`InvocationError::Partial`] after
/// everything else was done.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    let mut out = Output::default();
    let scheduled = matches!(cmd, Command::Sweep);
    if let Command::Ingest { items, ignored } = cmd {
        out.ignored = ignored;
        out.ingested = stream::iter(items)
            .map(|item| ingest(deps, item, now, deadline))
            .buffer_unordered(deps.config.concurrency)
            .collect()
            .await;
    }
    out.sweep = match sweep(deps, now, deadline, scheduled).await {
        Ok(report) => report,
        Err(e) => SweepReport {
            steps: vec![StepReport {
                task_id: "-".into(),
                action: StepAction::List,
                result: e.to_string(),
                failed: true,
            }],
            ..Default::default()
        },
    };
    let mut errors: Vec<String> = out
        .ingested
        .iter()
        .filter_map(|o| match o {
            IngestOutcome::Error { object, error } => Some(format!("{object}: {error}")),
            _ => None,
        })
        .collect();
    // The sweep that follows an upload's ingest only registers finished imports sooner; what
    // fails in it (most often another upload's task) fails the scheduled sweep's invocation,
    // which retries and reports it, and is only logged here: failing the upload's invocation
    // for it retried an ingest that had succeeded, and sent its event to the dead-letter queue
    // with another task's error.
    let sweep_failures = out
        .sweep
        .steps
        .iter()
        .filter(|s| s.failed)
        .map(|s| format!("{}: {}", s.task_id, s.result));
    let mut total = out.ingested.len();
    if scheduled {
        errors.extend(sweep_failures);
        total += out
            .sweep
            .steps
            .iter()
            .filter(|s| s.action != StepAction::Skip)
            .count();
    } else {
        for failure in sweep_failures {
            warn!(failure = %failure, "the sweep after the ingest failed a step; the scheduled sweep retries it");
        }
    }
    info!(
        ingested = out.ingested.len(),
        ignored = out.ignored.len(),
        tasks = out.sweep.tasks_seen,
        deferred = out.sweep.deferred,
        failed = errors.len(),
        "create-image run finished"
    );
    match InvocationError::from_failures(total, errors) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
