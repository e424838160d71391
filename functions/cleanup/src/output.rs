//! The invocation's JSON output: every image considered, the steps done, counts.

use serde::Serialize;
use shared::plan::retention::{self, Decision, Policy};
use std::collections::BTreeMap;

/// What was done (or, in a dry run, would be done) to one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Region.
    pub region: String,
    /// Image or snapshot.
    pub resource: String,
    /// `deprecate`, `undeprecate`, `deregister`, `delete-snapshot`.
    pub action: &'static str,
    /// `done`, `planned` (dry run), `deferred` (deadline), `left-in-use`, or the error.
    pub result: StepResult,
}

/// What came of one step; serialized as the text the report has always carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// Done.
    Done,
    /// Already done by someone else: a snapshot already deleted, an image another run
    /// deregistered first.
    AlreadyGone,
    /// Dry run: would be done.
    Planned,
    /// Not started: the Lambda deadline is near.
    Deferred,
    /// A snapshot still in use after the retries; a later orphan sweep deletes it.
    LeftInUse,
    /// Left in place on purpose, with why (EC2 skipped a snapshot another AMI uses).
    Kept(String),
    /// The AWS call failed.
    Failed(String),
}

impl StepResult {
    /// Whether the step's change is in place (`done`, or already gone).
    pub fn is_done(&self) -> bool {
        matches!(self, StepResult::Done | StepResult::AlreadyGone)
    }

    /// Whether the step failed (counted in the invocation's error).
    pub fn is_failure(&self) -> bool {
        matches!(self, StepResult::Failed(_))
    }
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepResult::Done => f.write_str("done"),
            StepResult::AlreadyGone => f.write_str("done (already gone)"),
            StepResult::Planned => f.write_str("planned"),
            StepResult::Deferred => f.write_str("deferred: the Lambda deadline is near; next run"),
            StepResult::LeftInUse => f.write_str(
                "left-in-use: still in use; the orphan sweep of a later run deletes it once free",
            ),
            StepResult::Kept(why) => write!(f, "kept: {why}"),
            StepResult::Failed(e) => write!(f, "error: {e}"),
        }
    }
}

impl Serialize for StepResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
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
    /// Deprecation removed (kept again).
    pub undeprecate: usize,
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
    /// Deregistrations and deprecations held back by the per-run caps (reported, not an error).
    pub capped: usize,
    /// Safety settings a manual invoke relaxed against the configuration (`setting: configured
    /// → this run`); empty for scheduled runs and for overrides that only tighten.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relaxed: Vec<String>,
    /// One decision per image in scope.
    pub decisions: Vec<Decision>,
    /// Orphaned snapshots selected.
    pub orphans: Vec<retention::OrphanSnapshot>,
    /// The steps executed (or planned).
    pub steps: Vec<Step>,
}
