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
