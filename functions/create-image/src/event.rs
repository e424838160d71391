//! Trigger → [`Command`]: S3 notifications, EventBridge "Object Created", the schedule and
//! manual invokes; one place decides which trigger an event is.

use serde_json::Value;
use shared::events;
use shared::invocation::InvocationError;
use shared::model::ObjectRef;
use shared::plan::spec::{self};
use shared::trigger::{self, Shape};
use std::collections::BTreeMap;

/// One object to ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestItem {
    /// The object.
    pub object: ObjectRef,
    /// Settings given in a manual invoke (win over metadata and defaults).
    pub overrides: BTreeMap<String, String>,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Validate and import these objects, then sweep. `ignored` lists records that are not
    /// uploads (e.g. `ObjectRemoved:*`), reported in the output.
    Ingest {
        /// Objects to import.
        items: Vec<IngestItem>,
        /// Records skipped, with why.
        ignored: Vec<String>,
    },
    /// Advance every import in flight.
    Sweep,
}

/// Manual-invoke fields besides the settings.
pub(crate) const MANUAL_FIELDS: [&str; 3] = ["bucket", "key", "version_id"];

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        if !v.is_object() {
            return Err(InvocationError::InvalidEvent(format!(
                "expected a JSON object, got {}",
                kind_of(v)
            )));
        }
        let map = match trigger::shape(v, "")? {
            Shape::Records(records) => {
                let parsed = events::parse_notification(v)?;
                if parsed.is_empty() && records.as_array().is_none_or(|r| r.is_empty()) {
                    return Err(InvocationError::InvalidEvent(
                        "the S3 notification has no Records".into(),
                    ));
                }
                return ingest_from_notification(parsed);
            }
            Shape::EventBridge(e) if e.source == "aws.s3" => {
                return Ok(ingest_from(vec![events::parse_eventbridge(v)?]));
            }
            Shape::EventBridge(e) if trigger::is_scheduled(&e) => return Ok(Command::Sweep),
            Shape::EventBridge(_) => None,
            Shape::Manual(map) => Some(map),
        };
        if let Some(map) = map {
            if map.get("sweep").and_then(Value::as_bool) == Some(true) && map.len() == 1 {
                return Ok(Command::Sweep);
            }
            if map.contains_key("bucket") || map.contains_key("key") {
                return manual(map);
            }
        }
        Err(InvocationError::InvalidEvent(
            "unrecognised event: expected an S3 notification, an EventBridge S3 \"Object Created\" event, a scheduled event, {\"sweep\": true} or {\"bucket\", \"key\", …settings}".into(),
        ))
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Most distinct uploads one S3 notification may carry: S3 sends one record per message, so
/// a longer one is hand-made or replayed in bulk; refused (and kept by the DLQ) rather than run
/// into the Lambda timeout half done.
pub(crate) const MAX_UPLOADS_PER_EVENT: usize = 100;

/// A notification's records: repeats of the same object version collapse into one (the last
/// wins), and more than [`MAX_UPLOADS_PER_EVENT`] distinct uploads are refused.
fn ingest_from_notification(records: Vec<events::ObjectEvent>) -> Result<Command, InvocationError> {
    let mut seen = std::collections::HashSet::new();
    let mut unique: Vec<events::ObjectEvent> = Vec::with_capacity(records.len().min(1024));
    for r in records.into_iter().rev() {
        let id = (
            r.object.bucket.clone(),
            r.object.key.clone(),
            r.object.version_id.clone(),
            r.created,
        );
        if seen.insert(id) {
            unique.push(r);
        }
    }
    unique.reverse();
    let uploads = unique
        .iter()
        .filter(|r| r.created && !is_folder_marker(r))
        .count();
    if uploads > MAX_UPLOADS_PER_EVENT {
        return Err(InvocationError::InvalidEvent(format!(
            "the S3 notification names {uploads} distinct uploads; at most \
             {MAX_UPLOADS_PER_EVENT} per invocation (S3 sends one per message): split it"
        )));
    }
    Ok(ingest_from(unique))
}

pub(crate) fn ingest_from(records: Vec<events::ObjectEvent>) -> Command {
    let (created, other): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.created && !is_folder_marker(r));
    Command::Ingest {
        items: created
            .into_iter()
            .map(|r| IngestItem {
                object: r.object,
                overrides: BTreeMap::new(),
            })
            .collect(),
        ignored: other
            .into_iter()
            .map(|r| {
                let what = if r.created {
                    "an empty folder marker (the S3 console's \"Create folder\"), not an upload"
                } else {
                    "not an upload"
                };
                format!("{} ({}): {what}", r.object, r.event_name)
            })
            .collect(),
    }
}

/// An empty object whose key ends in `/`: the S3 console's "Create folder" makes one, and the
/// bucket announces it like any object. Not an upload to validate (and mark rejected).
fn is_folder_marker(r: &events::ObjectEvent) -> bool {
    r.object.key.ends_with('/') && r.size.is_none_or(|s| s == 0)
}

/// A manual invoke's settings (every field but [`MANUAL_FIELDS`]) as metadata-style text
/// values; unknown fields and values of the wrong JSON type are `problems`.
fn overrides_of(
    map: &serde_json::Map<String, Value>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut overrides = BTreeMap::new();
    for (k, v) in map {
        if MANUAL_FIELDS.contains(&k.as_str()) {
            continue;
        }
        if !spec::keys::ALL.contains(&k.as_str()) {
            problems.push(format!(
                "unknown field {k:?}; settings are: {}",
                spec::keys::ALL.join(", ")
            ));
            continue;
        }
        match v {
            Value::String(s) => overrides.insert(k.clone(), s.clone()),
            Value::Bool(b) => overrides.insert(k.clone(), b.to_string()),
            Value::Number(n) => overrides.insert(k.clone(), n.to_string()),
            Value::Object(tags) if k == spec::keys::TAGS => {
                let pairs = tags.iter().map(|(tk, tv)| {
                    (
                        tk.clone(),
                        tv.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| tv.to_string()),
                    )
                });
                overrides.insert(
                    k.clone(),
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pairs)
                        .finish(),
                )
            }
            other => {
                problems.push(format!(
                    "field {k:?} must be a string, number or boolean, got {}",
                    kind_of(other)
                ));
                None
            }
        };
    }
    overrides
}

pub(crate) fn manual(map: &serde_json::Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    let text = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let bucket = text("bucket");
    let key = map
        .get("key")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if bucket.is_none() {
        problems.push("\"bucket\" must be a non-empty string".to_owned());
    }
    if key.is_none() {
        problems.push("\"key\" must be a non-empty string".to_owned());
    }
    let overrides = overrides_of(map, &mut problems);
    // A value that could never be valid refuses the request here, before the object is read
    // or tagged: the owner's object is not marked rejected for the invoker's typo.
    if let Some(key) = &key {
        problems.extend(
            spec::value_problems(&overrides, key)
                .iter()
                .map(ToString::to_string),
        );
    }
    match (bucket, key) {
        (Some(bucket), Some(key)) if problems.is_empty() => Ok(Command::Ingest {
            items: vec![IngestItem {
                object: ObjectRef {
                    bucket,
                    key,
                    version_id: text("version_id"),
                },
                overrides,
            }],
            ignored: vec![],
        }),
        _ => Err(InvocationError::InvalidEvent(format!(
            "manual invoke: {}",
            problems.join("; ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recognises_each_trigger() {
        let sched = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(Command::from_event(&sched).ok(), Some(Command::Sweep));
        assert_eq!(
            Command::from_event(&json!({"sweep": true})).ok(),
            Some(Command::Sweep)
        );
        let manual = json!({"bucket": "b", "key": "k.raw", "architecture": "arm64", "tpm": true, "volume-size": 8, "tags": {"team": "web"}});
        let Ok(Command::Ingest { items, .. }) = Command::from_event(&manual) else {
            panic!("manual")
        };
        assert_eq!(items[0].overrides["tpm"], "true");
        assert_eq!(items[0].overrides["volume-size"], "8");
        assert_eq!(items[0].overrides["tags"], "team=web");
    }

    #[test]
    fn repeated_records_collapse_and_too_many_uploads_are_refused() {
        let record = |key: &str| {
            json!({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": "e"}}})
        };
        let mut records: Vec<Value> = (0..5).map(|_| record("same.raw")).collect();
        records.push(record("other.raw"));
        let Ok(Command::Ingest { items, .. }) = Command::from_event(&json!({"Records": records}))
        else {
            panic!("parsed")
        };
        let keys: Vec<&str> = items.iter().map(|i| i.object.key.as_str()).collect();
        assert_eq!(keys, ["same.raw", "other.raw"]);
        let many: Vec<Value> = (0..2000).map(|n| record(&format!("d{n}.raw"))).collect();
        let err = Command::from_event(&json!({"Records": many}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "invalid event: the S3 notification names 2000 distinct uploads; at most 100 per \
             invocation (S3 sends one per message): split it"
        );
    }

    #[test]
    fn bad_events_get_precise_errors() {
        let cases = [
            (
                "not json",
                "invalid event: the event is not valid JSON: expected ident at line 1 column 2",
            ),
            ("[]", "invalid event: expected a JSON object, got an array"),
            (
                "{\"bucket\": \"b\", \"key\": \"k.raw\", \"volume-size\": 0}",
                "invalid event: manual invoke: volume-size: \"0\" is not a whole number of GiB from 1 to 65536",
            ),
            (
                "{\"bucket\": \"b\", \"arch\": \"x\"}",
                "invalid event: manual invoke: \"key\" must be a non-empty string; unknown field \"arch\"; settings are: architecture, boot-mode, ena, imds-v2, tpm, root-device, volume-size, volume-type, iops, throughput, name, name-prefix, description, family, tags",
            ),
        ];
        for (text, want) in cases {
            let got = Command::from_json(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn folder_markers_are_ignored_with_a_reason_and_a_folder_with_content_is_not() {
        let marker = |size: u64| {
            json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"},
                "object": {"key": "team/web/", "size": size}}}]})
        };
        let Ok(Command::Ingest { items, ignored }) = Command::from_event(&marker(0)) else {
            panic!("an ingest command");
        };
        assert!(items.is_empty());
        assert_eq!(
            ignored,
            [
                "s3://b/team/web/ (ObjectCreated:Put): an empty folder marker (the S3 console's \"Create folder\"), not an upload"
            ]
        );
        // The same from EventBridge, whose keys are not form-encoded.
        let bridge = json!({"version": "0", "id": "1", "detail-type": "Object Created", "source": "aws.s3",
            "account": "123456789012", "time": "2026-11-22T12:00:00Z", "region": "us-east-1", "resources": [],
            "detail": {"bucket": {"name": "b"}, "object": {"key": "team/web/", "size": 0}}});
        let Ok(Command::Ingest { items, ignored }) = Command::from_event(&bridge) else {
            panic!("an ingest command");
        };
        assert!(items.is_empty() && ignored.len() == 1, "{ignored:?}");
        // Content under such a key is someone's upload: validated (and refused there).
        let Ok(Command::Ingest { items, ignored }) = Command::from_event(&marker(4096)) else {
            panic!("an ingest command");
        };
        assert_eq!((items.len(), ignored.len()), (1, 0));
    }

    #[test]
    fn removed_objects_are_ignored_with_a_reason() {
        let v = json!({"Records": [{"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "k.raw"}}}]});
        let Ok(Command::Ingest { items, ignored }) = Command::from_event(&v) else {
            panic!("parses")
        };
        assert!(items.is_empty());
        assert_eq!(
            ignored,
            ["s3://b/k.raw (ObjectRemoved:Delete): not an upload"]
        );
    }
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
            Command::Sweep => "sweep".into(),
            Command::Ingest { items, ignored } => format!(
                "ingest [{}] ignored {}",
                items
                    .iter()
                    .map(|i| i.object.uri())
                    .collect::<Vec<_>>()
                    .join(" "),
                ignored.len()
            ),
        }
    }

    /// file (without the function prefix) → the command, or the start of the refusal.
    const TABLE: &[(&str, &str)] = &[
        (
            "bad-empty-records",
            "error InvalidEvent: invalid event: the S3 notification has no Records",
        ),
        (
            "bad-key-encoding",
            "error InvalidEvent: invalid event: S3 key \"platform/%FF%FEdisk.raw\" is not validly URL-encoded UTF-8",
        ),
        (
            "bad-not-an-object",
            "error InvalidEvent: invalid event: expected a JSON object, got an array",
        ),
        (
            "bad-record-without-bucket",
            "error InvalidEvent: invalid event: malformed S3 notification event: Records[0]",
        ),
        (
            "bad-unknown-field",
            "error InvalidEvent: invalid event: manual invoke: unknown field \"arch\"",
        ),
        (
            "eventbridge-object-created",
            "ingest [s3://ami-pipeline-uploads-example/platform/arm/disk 2026-11-22T15:03:40.vmdk?versionId=IYV3p45BT0ac8hjHg1houSdS1a.Mro8e] ignored 0",
        ),
        (
            "manual",
            "ingest [s3://ami-pipeline-uploads-example/platform/arm/disk 2026-11-22.raw?versionId=3HL4kqtJlcpXroDTDmjVBH40Nrjfkd.A] ignored 0",
        ),
        ("s3-delete", "ingest [] ignored 1"),
        (
            "s3-put",
            "ingest [s3://ami-pipeline-uploads-example/platform/web base/disk (2026-11-22).raw?versionId=3HL4kqtJlcpXroDTDmjVBH40Nrjfkd.A] ignored 0",
        ),
        (
            "s3-put-via-sns",
            "ingest [s3://ami-pipeline-uploads-example/platform/db/disk 2026-11-22.vhd?versionId=3HL4kqtJlcpXroDTDmjVBH40Nrjfkd.A] ignored 0",
        ),
        ("schedule", "sweep"),
        ("sweep", "sweep"),
    ];
}
