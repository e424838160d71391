//! Trigger → [`Command`]: the schedule and manual invokes with their overrides; one place decides
//! which trigger an event is.

use serde_json::{Map, Value};
use shared::invocation::InvocationError;
use shared::plan::ids;
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

pub(crate) const MANUAL_FIELDS: [&str; 10] = [
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

pub(crate) fn manual(map: &Map<String, Value>) -> Result<Overrides, InvocationError> {
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
