//! Trigger → [`Command`]: EventBridge "EC2 AMI State Change", SNS `image.registered` and manual
//! invokes (stamp, ancestors, children); one place decides which trigger an event is.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Map, Value};
use shared::invocation::InvocationError;
use shared::notify::EventType;
use shared::plan::ids;
use shared::plan::lineage::{self};
use shared::plan::stamp::Assertion;
use shared::trigger::{self, AMI_STATE_CHANGE, AmiStateChange, Shape};

/// What triggered a stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// EventBridge "EC2 AMI State Change", state `available`.
    StateChange,
    /// SNS `image.registered` from create-image.
    Registered,
    /// A manual invoke.
    Manual,
    /// The schedule: pipeline images whose triggers were lost.
    Schedule,
}

/// One image to stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `ami-…`.
    pub image_id: String,
    /// Its region (`None`: the function's).
    pub region: Option<String>,
    /// A manual invoke's assertion.
    pub assertion: Option<Assertion>,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stamp these images.
    Stamp {
        /// Why.
        trigger: Trigger,
        /// The images.
        targets: Vec<Target>,
    },
    /// The schedule: stamp and announce the pipeline images never announced (both of their
    /// triggers failed).
    Sweep,
    /// An image failed to become available: announce it.
    Failed {
        /// `ami-…`.
        image_id: String,
        /// Its region.
        region: Option<String>,
        /// EC2's `ErrorMessage`.
        error: Option<String>,
    },
    /// Nothing to do (another state, another SNS event type), with why.
    Ignore(String),
    /// The chain of ancestors.
    Ancestors {
        /// Start.
        image_id: String,
        /// Its region.
        region: Option<String>,
    },
    /// The tree of descendants.
    Children {
        /// Root of the query.
        image_id: String,
        /// Its region.
        region: Option<String>,
        /// Regions to search (`None`: the configured ones).
        regions: Option<Vec<String>>,
    },
}

impl Command {
    /// Every region the command names (its images', a children query's search regions).
    pub fn regions(&self) -> Vec<&str> {
        match self {
            Command::Stamp { targets, .. } => targets
                .iter()
                .flat_map(|t| {
                    let asserted = t
                        .assertion
                        .as_ref()
                        .and_then(|a| a.source_region.as_deref());
                    t.region.as_deref().into_iter().chain(asserted)
                })
                .collect(),
            Command::Failed { region, .. } | Command::Ancestors { region, .. } => {
                region.iter().map(String::as_str).collect()
            }
            Command::Children {
                region, regions, ..
            } => region
                .iter()
                .chain(regions.iter().flatten())
                .map(String::as_str)
                .collect(),
            Command::Sweep | Command::Ignore(_) => Vec::new(),
        }
    }
}

pub(crate) const TAG_FIELDS: [&str; 8] = [
    "image_id",
    "region",
    "source_image",
    "source_instance",
    "source_region",
    "create_date",
    "create_timestamp",
    "force",
];

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        let map = match trigger::shape(v, "an EventBridge event, an SNS event or a manual request")?
        {
            Shape::EventBridge(e) if trigger::is_scheduled(&e) => return Ok(Command::Sweep),
            Shape::EventBridge(e) => return state_change(&e),
            Shape::Records(records) => return sns(records),
            Shape::Manual(map) => map,
        };
        if map.contains_key("ancestors") || map.contains_key("children") {
            return query(map);
        }
        if map.contains_key("image_id") {
            return manual_tag(map);
        }
        Err(InvocationError::invalid_event(format!(
            "unrecognised event with keys [{}]: expected an EventBridge \"EC2 AMI State Change\" event, an SNS event, {{\"image_id\": …}}, {{\"ancestors\": …}} or {{\"children\": …}}",
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// An EventBridge "EC2 AMI State Change": `available` → stamp, `failed` → announce, other
/// states ignored with the reason.
pub(crate) fn state_change(e: &EventBridgeEvent<Value>) -> Result<Command, InvocationError> {
    if e.detail_type != AMI_STATE_CHANGE || e.source != "aws.ec2" {
        return Err(InvocationError::invalid_event(format!(
            "EventBridge event {:?} from {:?} is not an \"EC2 AMI State Change\" from aws.ec2",
            e.detail_type, e.source
        )));
    }
    if !e.detail.is_object() {
        return Err(InvocationError::invalid_event(
            "EC2 AMI State Change event without a detail object",
        ));
    }
    let detail = AmiStateChange::deserialize(&e.detail).map_err(|err| {
        InvocationError::invalid_event(format!("EC2 AMI State Change: malformed detail: {err}"))
    })?;
    let image_id = detail
        .image_id
        .as_str()
        .filter(|s| ids::is_image_id(s))
        .ok_or_else(|| {
            InvocationError::invalid_event(format!(
                "EC2 AMI State Change: detail.ImageId {} is not an image id",
                detail.image_id
            ))
        })?
        .to_owned();
    let region = e.region.clone();
    if let Some(r) = &region
        && !ids::is_region(r)
    {
        return Err(InvocationError::invalid_event(format!(
            "EC2 AMI State Change for {image_id}: region {r:?} is not an AWS region"
        )));
    }
    match detail.state.as_deref().unwrap_or_default() {
        "available" => Ok(Command::Stamp {
            trigger: Trigger::StateChange,
            targets: vec![Target {
                image_id,
                region,
                assertion: None,
            }],
        }),
        "failed" => Ok(Command::Failed {
            image_id,
            region,
            error: detail.error_message.filter(|s| !s.is_empty()),
        }),
        other => Ok(Command::Ignore(format!(
            "{image_id} is now {other:?}: only available and failed are acted on"
        ))),
    }
}

pub(crate) fn sns(records: &Value) -> Result<Command, InvocationError> {
    let records = records
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| InvocationError::invalid_event("Records must be a non-empty array"))?;
    let mut targets = Vec::new();
    let mut ignored = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let text = r
            .pointer("/Sns/Message")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                InvocationError::invalid_event(format!(
                    "Records[{i}] is not an SNS record (no Sns.Message)"
                ))
            })?;
        let msg: Value = serde_json::from_str(text).map_err(|e| {
            InvocationError::invalid_event(format!(
                "Records[{i}]: the SNS message is not an ami-pipeline JSON message: {e}"
            ))
        })?;
        let event_type = msg["event_type"].as_str().unwrap_or_default();
        if event_type != EventType::ImageRegistered.as_str() {
            ignored.push(format!("Records[{i}]: event_type {event_type:?}"));
            continue;
        }
        let image_id = msg["image_id"]
            .as_str()
            .filter(|s| ids::is_image_id(s))
            .ok_or_else(|| {
                InvocationError::invalid_event(format!(
                    "Records[{i}]: image.registered without a valid image_id ({})",
                    msg["image_id"]
                ))
            })?;
        let region = msg["region"].as_str().filter(|r| ids::is_region(r));
        targets.push(Target {
            image_id: image_id.to_owned(),
            region: region.map(str::to_owned),
            assertion: None,
        });
    }
    if targets.is_empty() {
        return Ok(Command::Ignore(format!(
            "no image.registered message: {}",
            ignored.join(", ")
        )));
    }
    Ok(Command::Stamp {
        trigger: Trigger::Registered,
        targets,
    })
}

/// Reads an optional string field, recording a problem when it has another type.
pub(crate) fn opt_str(
    map: &Map<String, Value>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!("{key} must be a string, not {other}"));
            None
        }
    }
}

pub(crate) fn check_region(field: &str, region: &Option<String>, problems: &mut Vec<String>) {
    if let Some(r) = region
        && !ids::is_region(r)
    {
        problems.push(format!("{field}: {r:?} is not an AWS region"));
    }
}

pub(crate) fn manual_tag(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    for key in map.keys() {
        if !TAG_FIELDS.contains(&key.as_str()) {
            problems.push(format!(
                "unknown field {key:?} (allowed: {})",
                TAG_FIELDS.join(", ")
            ));
        }
    }
    let image_id = opt_str(map, "image_id", &mut problems).unwrap_or_default();
    if !ids::is_image_id(&image_id) {
        problems.push(format!("image_id: {image_id:?} is not an image id (ami-…)"));
    }
    let region = opt_str(map, "region", &mut problems);
    check_region("region", &region, &mut problems);
    let source_image = opt_str(map, "source_image", &mut problems);
    if let Some(s) = &source_image
        && !ids::is_image_id(s)
    {
        problems.push(format!("source_image: {s:?} is not an image id (ami-…)"));
    }
    let source_instance = opt_str(map, "source_instance", &mut problems);
    if let Some(s) = &source_instance
        && !ids::is_instance_id(s)
    {
        problems.push(format!(
            "source_instance: {s:?} is not an instance id (i-…)"
        ));
    }
    let source_region = opt_str(map, "source_region", &mut problems);
    check_region("source_region", &source_region, &mut problems);
    if source_region.is_some() && source_image.is_none() {
        problems.push("source_region is given without source_image".into());
    }
    let created = created(map, &mut problems);
    let force = match map.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            problems.push(format!("force must be true or false, not {other}"));
            false
        }
    };
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "manual tag request refused, nothing changed: {}",
            problems.join("; ")
        )));
    }
    Ok(Command::Stamp {
        trigger: Trigger::Manual,
        targets: vec![Target {
            image_id,
            region,
            assertion: Some(Assertion {
                source_image,
                source_instance,
                source_region,
                created,
                force,
            }),
        }],
    })
}

/// The asserted creation time: `create_date` (`20110909T233600Z`) or `create_timestamp`
/// (seconds), not both.
fn created(map: &Map<String, Value>, problems: &mut Vec<String>) -> Option<DateTime<Utc>> {
    match (map.get("create_date"), map.get("create_timestamp")) {
        (Some(_), Some(_)) => {
            problems.push(
                "give create_date or create_timestamp, not both (the other is computed)".into(),
            );
            None
        }
        (Some(d), None) => match d.as_str().and_then(lineage::parse_create_date) {
            Some(t) => Some(t),
            None => {
                problems.push(format!(
                    "create_date: {d} is not a UTC time like \"20110909T233600Z\""
                ));
                None
            }
        },
        (None, Some(t)) => {
            let secs = t
                .as_i64()
                .or_else(|| t.as_str().and_then(|s| s.parse().ok()));
            match secs
                .filter(|s| *s >= 0)
                .and_then(|s| DateTime::from_timestamp(s, 0))
            {
                Some(t) => Some(t),
                None => {
                    problems.push(format!(
                        "create_timestamp: {t} is not a number of seconds since 1970"
                    ));
                    None
                }
            }
        }
        (None, None) => None,
    }
}

pub(crate) fn query(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    let kind = if map.contains_key("ancestors") {
        "ancestors"
    } else {
        "children"
    };
    let allowed = ["ancestors", "children", "region", "regions"];
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            problems.push(format!(
                "unknown field {key:?} (allowed: {kind}, region, regions)"
            ));
        }
    }
    if map.contains_key("ancestors") && map.contains_key("children") {
        problems.push("ask for ancestors or children, not both".into());
    }
    let image_id = opt_str(map, kind, &mut problems).unwrap_or_default();
    if !ids::is_image_id(&image_id) {
        problems.push(format!("{kind}: {image_id:?} is not an image id (ami-…)"));
    }
    let region = opt_str(map, "region", &mut problems);
    check_region("region", &region, &mut problems);
    let regions = match map.get("regions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut seen = std::collections::HashSet::new();
            let distinct: Vec<&Value> = items.iter().filter(|i| seen.insert(*i)).collect();
            let mut out = Vec::new();
            if distinct.len() > ids::MAX_REGIONS_PER_REQUEST {
                problems.push(format!(
                    "regions: {} distinct regions, at most {} per request",
                    distinct.len(),
                    ids::MAX_REGIONS_PER_REQUEST
                ));
            } else {
                for item in distinct {
                    match item.as_str() {
                        Some(r) if ids::is_region(r) => out.push(r.to_owned()),
                        _ => problems.push(format!("regions: {item} is not an AWS region")),
                    }
                }
            }
            Some(out)
        }
        Some(other) => {
            problems.push(format!(
                "regions must be a list of region names, not {other}"
            ));
            None
        }
    };
    if kind == "ancestors" && regions.is_some() {
        problems.push("regions applies to children only (ancestors follow source_region)".into());
    }
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "lineage query refused: {}",
            problems.join("; ")
        )));
    }
    Ok(if kind == "ancestors" {
        Command::Ancestors { image_id, region }
    } else {
        Command::Children {
            image_id,
            region,
            regions,
        }
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
            Command::Stamp { trigger, targets } => format!(
                "stamp {trigger:?} [{}]",
                targets
                    .iter()
                    .map(|t| t.image_id.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Command::Failed { image_id, .. } => format!("failed {image_id}"),
            Command::Sweep => "sweep".into(),
            Command::Ignore(why) => format!("ignore: {why}"),
            Command::Ancestors { image_id, .. } => format!("ancestors {image_id}"),
            Command::Children { image_id, .. } => format!("children {image_id}"),
        }
    }

    /// file (without the function prefix) → the command, or the start of the refusal.
    const TABLE: &[(&str, &str)] = &[
        ("ami-available", "stamp StateChange [ami-0123456789abcdef0]"),
        (
            "ami-deregistered",
            "ignore: ami-0fedcba9876543210 is now \"deregistered\": only available and failed are acted on",
        ),
        ("ami-failed", "failed ami-0fedcba9876543210"),
        ("schedule", "sweep"),
        ("ancestors", "ancestors ami-0fedcba9876543210"),
        (
            "bad-both-dates",
            "error InvalidEvent: invalid event: manual tag request refused, nothing changed: give create_date or create_timestamp, not both",
        ),
        (
            "bad-detail-type",
            "error InvalidEvent: invalid event: EventBridge event \"EC2 Instance State-change Notification\" from \"aws.ec2\" is not an \"EC2 AMI State Change\" from aws.ec2",
        ),
        (
            "bad-image-id",
            "error InvalidEvent: invalid event: manual tag request refused, nothing changed: image_id: \"ami-12345XYZ\" is not an image id",
        ),
        (
            "bad-query",
            "error InvalidEvent: invalid event: lineage query refused: regions applies to children only",
        ),
        ("children", "children ami-0123456789abcdef0"),
        ("manual-stamp", "stamp Manual [ami-0fedcba9876543210]"),
        (
            "manual-stamp-instance",
            "stamp Manual [ami-0fedcba9876543210]",
        ),
        (
            "sns-image-registered",
            "stamp Registered [ami-0123456789abcdef0]",
        ),
        (
            "sns-other-event",
            "ignore: no image.registered message: Records[0]: event_type \"image.failed\"",
        ),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_children_query_drops_repeated_regions_and_refuses_too_many() {
        let q = |regions: Value| {
            Command::from_event(&json!({"children": "ami-0123456789abcdef0", "regions": regions}))
        };
        let Ok(Command::Children { regions, .. }) = q(json!(["us-east-1", "us-east-1"])) else {
            panic!("a valid query")
        };
        assert_eq!(regions, Some(vec!["us-east-1".to_string()]));
        let many: Vec<String> = (0..100_000).map(|n| format!("xx-{n}-1")).collect();
        let err = q(json!(many))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "invalid event: lineage query refused: regions: 100000 distinct regions, at most 64 per request"
        );
    }
}
