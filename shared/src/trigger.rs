//! Which trigger is this: the one recognition of the event shapes the functions receive, typed
//! at the edge with `aws_lambda_events` where its types fit.
//!
//! - `Records` → an S3 notification or an SNS delivery ([`crate::events`] reads S3 records
//!   leniently: the local emulator's notifications do not parse as `S3Event`, and SNS records
//!   wrapping S3 notifications carry only what the pipeline reads).
//! - `detail-type` → an EventBridge event, [`EventBridgeEvent`] with its `detail` still JSON;
//!   [`is_scheduled`] and [`AmiStateChange`] read the two kinds the functions act on.
//! - any other JSON object → a manual request, read with [`crate::fields::Fields`].

use crate::invocation::InvocationError;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The shape of an incoming event.
#[derive(Debug)]
pub enum Shape<'a> {
    /// `{"Records": …}`: an S3 notification or SNS.
    Records(&'a Value),
    /// An EventBridge event (it has a `detail-type`).
    EventBridge(Box<EventBridgeEvent<Value>>),
    /// Any other JSON object: a manual request.
    Manual(&'a Map<String, Value>),
}

/// Recognises the event's shape. `accepts` completes the error for a non-object ("the event
/// must be a JSON object ({accepts})"); an EventBridge event whose envelope does not parse
/// (`source` not a string, a bad `time`…) is an `InvalidEvent` naming the field.
pub fn shape<'a>(event: &'a Value, accepts: &str) -> Result<Shape<'a>, InvocationError> {
    let map = InvocationError::event_object(event, accepts)?;
    if let Some(records) = map.get("Records") {
        return Ok(Shape::Records(records));
    }
    if map.contains_key("detail-type") {
        // A missing `source` or `detail` is read as empty, so the function names what it
        // expected ("… is not a \"Scheduled Event\"") rather than a missing field.
        let parsed = if map.contains_key("source") && map.contains_key("detail") {
            EventBridgeEvent::<Value>::deserialize(event)
        } else {
            let mut filled = map.clone();
            filled.entry("source").or_insert_with(|| Value::from(""));
            filled.entry("detail").or_insert(Value::Null);
            EventBridgeEvent::<Value>::deserialize(Value::Object(filled))
        };
        return parsed
            .map(|e| Shape::EventBridge(Box::new(e)))
            .map_err(|e| {
                InvocationError::invalid_event(format!("malformed EventBridge event: {e}"))
            });
    }
    Ok(Shape::Manual(map))
}

/// An EventBridge schedule's event (`source` `aws.events`, detail-type `Scheduled Event`).
pub fn is_scheduled(event: &EventBridgeEvent<Value>) -> bool {
    event.source == "aws.events" && event.detail_type == "Scheduled Event"
}

/// The detail of EventBridge's "EC2 AMI State Change" (source `aws.ec2`), as the EC2 User Guide
/// documents it ("Monitor AMI events using Amazon EventBridge"). Fields are optional here so
/// that a missing one is reported by the function with its own message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AmiStateChange {
    /// The request that changed the state.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The image (kept as JSON: a non-string id is reported as it came).
    #[serde(default)]
    pub image_id: Value,
    /// `available`, `failed`, `deregistered`, `pending`…
    #[serde(default)]
    pub state: Option<String>,
    /// EC2's reason when `State` is `failed` (empty otherwise).
    #[serde(default)]
    pub error_message: Option<String>,
}

/// The detail-type of [`AmiStateChange`].
pub const AMI_STATE_CHANGE: &str = "EC2 AMI State Change";

/// The table test every function runs over `events/`: each `<function>.<scenario>.json` in `dir`
/// goes through `outcome` (the function's recognition of it), and the result must start with the
/// expectation `table` gives that scenario. Fails listing every mismatch, every file without a
/// row and every row without a file (so a new sample cannot go unrecognised and untested).
pub fn check_event_files(
    dir: &Path,
    function: &str,
    table: &[(&str, &str)],
    outcome: impl Fn(&str) -> String,
) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let prefix = format!("{function}.");
    let mut got = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(scenario) = name
            .strip_prefix(&prefix)
            .and_then(|n| n.strip_suffix(".json"))
        {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
            got.insert(scenario.to_owned(), outcome(&text));
        }
    }
    let mut problems = Vec::new();
    for (file, want) in table {
        match got.get(*file) {
            Some(have) if have.starts_with(want) => {}
            Some(have) => problems.push(format!("{file}: got {have:?}, want {want:?}")),
            None => problems.push(format!("{file}: no such file in {}", dir.display())),
        }
    }
    for file in got.keys().filter(|f| !table.iter().any(|(t, _)| t == f)) {
        problems.push(format!(
            "{file}: an event file without a row ({:?})",
            got[file]
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// A function's recognition of one event text, as [`check_event_files`] compares it: `label`
/// of the parsed command, or `error <errorType>: <message>`.
pub fn event_outcome<C>(
    text: &str,
    parse: impl Fn(&str) -> Result<C, InvocationError>,
    label: impl Fn(&C) -> String,
) -> String {
    match parse(text) {
        Ok(cmd) => label(&cmd),
        Err(e) => format!("error {}: {e}", e.error_type()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_table_check_names_every_mismatch_missing_file_and_missing_row() {
        let dir = std::env::temp_dir().join(format!("ami-pipeline-trigger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (name, text) in [
            ("fn.a.json", "A"),
            ("fn.b.json", "B"),
            ("other.c.json", "C"),
        ] {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let outcome = |t: &str| format!("saw {t}");
        assert_eq!(
            check_event_files(&dir, "fn", &[("a", "saw A"), ("b", "saw B")], outcome),
            Ok(())
        );
        let err = check_event_files(&dir, "fn", &[("a", "saw X"), ("z", "saw Z")], outcome)
            .expect_err("three problems");
        assert!(err.contains("a: got \"saw A\", want \"saw X\""), "{err}");
        assert!(err.contains("z: no such file"), "{err}");
        assert!(err.contains("b: an event file without a row"), "{err}");
        assert!(!err.contains("other"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    use serde_json::json;

    #[test]
    fn each_shape_is_recognised_once() {
        let sched = json!({"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012", "time": "2026-11-22T12:00:00Z", "region": "us-east-1", "resources": [], "detail": {}});
        let Ok(Shape::EventBridge(e)) = shape(&sched, "x") else {
            panic!("eventbridge")
        };
        assert!(is_scheduled(&e));
        let other = json!({"detail-type": "Scheduled Event", "source": "aws.s3", "detail": {}});
        let Ok(Shape::EventBridge(e)) = shape(&other, "x") else {
            panic!("eventbridge")
        };
        assert!(!is_scheduled(&e));
        let bare = json!({"detail-type": "Object Created"});
        let Ok(Shape::EventBridge(e)) = shape(&bare, "x") else {
            panic!("eventbridge without source or detail")
        };
        assert_eq!((e.source.as_str(), &e.detail), ("", &Value::Null));
        assert!(matches!(
            shape(&json!({"Records": []}), "x"),
            Ok(Shape::Records(_))
        ));
        assert!(matches!(
            shape(&json!({"image_id": "ami-1"}), "x"),
            Ok(Shape::Manual(_))
        ));
        let err = shape(&json!([]), "a manual request")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid event: the event must be a JSON object (a manual request)")
        );
        let bad = json!({"detail-type": 3, "source": "aws.events", "detail": {}});
        let err = shape(&bad, "x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("invalid event: malformed EventBridge event: "),
            "{err}"
        );
    }

    #[test]
    fn the_ami_state_change_detail_reads_the_documented_fields() {
        let d: AmiStateChange = serde_json::from_value(json!({"RequestId": "r", "ImageId": "ami-0123456789abcdef0", "State": "failed", "ErrorMessage": "boom"})).expect("parses");
        assert_eq!(d.image_id, json!("ami-0123456789abcdef0"));
        assert_eq!(d.state.as_deref(), Some("failed"));
        assert_eq!(d.error_message.as_deref(), Some("boom"));
        let empty: AmiStateChange = serde_json::from_value(json!({})).expect("parses");
        assert_eq!(empty.image_id, Value::Null);
    }
}
