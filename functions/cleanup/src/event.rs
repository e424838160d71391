//! Trigger → [`Command`]: the schedule and manual invokes with their overrides; one place decides
//! which trigger an event is.

use serde_json::{Map, Value};
use shared::fields::Fields;
use shared::invocation::InvocationError;
use shared::plan::ids;
use shared::trigger::{self, Shape};
use std::collections::BTreeSet;

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
    /// `max_deprecations`.
    pub max_deprecations: Option<usize>,
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

pub(crate) const MANUAL_FIELDS: [&str; 11] = [
    "dry_run",
    "families",
    "regions",
    "max_deletions",
    "max_deprecations",
    "keep_newest",
    "min_age_days",
    "grace_days",
    "allow_public",
    "allow_shared",
    "orphan_sweep",
];

/// Most distinct regions a manual request may name.
pub(crate) const MAX_REGIONS: usize = ids::MAX_REGIONS_PER_REQUEST;
/// Most distinct families a manual request may name.
pub(crate) const MAX_FAMILIES: usize = 1000;

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        const ACCEPTS: &str = "a Scheduled Event or manual overrides";
        match trigger::shape(v, ACCEPTS)? {
            Shape::EventBridge(e) if trigger::is_scheduled(&e) => Ok(Command::Scheduled),
            Shape::EventBridge(e) => Err(InvocationError::invalid_event(format!(
                "EventBridge event {:?} is not a \"Scheduled Event\"",
                e.detail_type
            ))),
            // `Records` is not a cleanup trigger: the manual reader names it as unknown.
            Shape::Records(_) | Shape::Manual(_) => {
                manual(InvocationError::event_object(v, ACCEPTS)?).map(Command::Manual)
            }
        }
    }
}

/// A manual invoke's overrides; the refusal lists every problem.
pub(crate) fn manual(map: &Map<String, Value>) -> Result<Overrides, InvocationError> {
    let mut f = Fields::new(map);
    f.only(&MANUAL_FIELDS);
    let dry_run = f.boolean("dry_run");
    let allow_public = f.boolean("allow_public");
    let allow_shared = f.boolean("allow_shared");
    let orphan_sweep = f.boolean("orphan_sweep");
    let max_deletions = f.number("max_deletions", 10_000).map(|n| n as usize);
    let max_deprecations = f.number("max_deprecations", 10_000).map(|n| n as usize);
    let keep_newest = f.number("keep_newest", 1000).map(|n| n as usize);
    let min_age_days = f.number("min_age_days", 3650);
    let grace_days = f.number("grace_days", 365);
    let families: Option<BTreeSet<String>> = f.strings("families").map(|f| f.into_iter().collect());
    if let Some(n) = families
        .as_ref()
        .map(BTreeSet::len)
        .filter(|n| *n > MAX_FAMILIES)
    {
        f.problem(format!(
            "families: {n} distinct families, at most {MAX_FAMILIES} per request"
        ));
    }
    let mut regions = f.strings("regions");
    if let Some(list) = regions.as_mut() {
        let mut seen = BTreeSet::new();
        list.retain(|r| seen.insert(r.clone()));
        if list.len() > MAX_REGIONS {
            f.problem(format!(
                "regions: {} distinct regions, at most {MAX_REGIONS} per request",
                list.len()
            ));
        } else {
            for r in list.iter() {
                if !ids::is_region(r) {
                    f.problem(format!("regions: {r:?} is not an AWS region"));
                }
            }
        }
    }
    f.finish().map_err(|problems| {
        InvocationError::invalid_event(format!(
            "cleanup request refused, nothing changed: {}",
            problems.join("; ")
        ))
    })?;
    Ok(Overrides {
        dry_run,
        families,
        regions,
        max_deletions,
        max_deprecations,
        keep_newest,
        min_age_days,
        grace_days,
        allow_public,
        allow_shared,
        orphan_sweep,
    })
}

/// Table test over every `events/` file of this function: each one is recognised as the
/// trigger its name says (or refused with the documented message); a file without a row, or a
/// row without a file, fails.
#[cfg(test)]
mod fixtures {
    use super::*;

    #[test]
    fn every_event_file_is_recognised() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../events"));
        let outcome = |text: &str| shared::trigger::event_outcome(text, Command::from_json, label);
        shared::trigger::check_event_files(dir, env!("CARGO_PKG_NAME"), TABLE, outcome)
            .unwrap_or_else(|problems| panic!("{problems}"));
    }

    fn label(cmd: &Command) -> String {
        match cmd {
            Command::Scheduled => "scheduled".into(),
            Command::Manual(o) => format!("manual dry_run={:?}", o.dry_run),
        }
    }

    /// file (without the function prefix) → the command, or the start of the refusal.
    const TABLE: &[(&str, &str)] = &[
        (
            "bad-detail-type",
            "error InvalidEvent: invalid event: EventBridge event \"Object Created\" is not a \"Scheduled Event\"",
        ),
        (
            "bad-negative-number",
            "error InvalidEvent: invalid event: cleanup request refused, nothing changed: max_deletions must be a whole number from 0 to 10000, not -1; keep_newest must be a whole number from 0 to 1000, not \"3\"",
        ),
        (
            "bad-region",
            "error InvalidEvent: invalid event: cleanup request refused, nothing changed: regions: \"us-east-7\" is not an AWS region",
        ),
        (
            "bad-unknown-field",
            "error InvalidEvent: invalid event: cleanup request refused, nothing changed: unknown field \"dryrun\"",
        ),
        ("manual-dry-run", "manual dry_run=Some(true)"),
        ("manual-dry-run-all", "manual dry_run=Some(true)"),
        ("manual-real-run", "manual dry_run=Some(false)"),
        ("manual-regions", "manual dry_run=None"),
        ("schedule", "scheduled"),
    ];
}
