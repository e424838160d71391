//! Parsing of the S3 event shapes the functions receive, as AWS delivers them.
//!
//! - **S3 bucket notifications** (`{"Records":[{"eventSource":"aws:s3",…}]}`), directly or
//!   wrapped in SNS (`Records[].Sns.Message`). The object key is URL-encoded the way HTML forms
//!   are (`application/x-www-form-urlencoded`: space → `+`, other bytes → `%XX`; see the S3
//!   "Event message structure" page), so it is form-decoded here.
//! - **EventBridge "Object Created"** (`source: aws.s3`). Its `detail.object.key` is **not**
//!   URL-encoded (AWS's sample events carry keys such as `raw/2023-08-08T14:03:40.zip` with
//!   raw colons, which form encoding would turn into `%3A`), so it is used as is.
//!
//! The structs are deliberately lenient (only what the pipeline needs is required), because
//! real events carry many more fields and some emitters (including the local emulator) fewer.

use crate::model::ObjectRef;
use serde::Deserialize;
use serde_json::Value;

/// Why an event could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The event has a known shape but misses or mangles a required field.
    #[error("malformed {shape} event: {detail}")]
    Malformed {
        /// Which event shape was recognised.
        shape: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// An S3 key whose URL-encoding is broken (not valid UTF-8 once decoded).
    #[error("S3 key {0:?} is not validly URL-encoded UTF-8")]
    BadKeyEncoding(String),
}

/// One object event, from either source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    /// The object (key decoded).
    pub object: ObjectRef,
    /// `ObjectCreated:Put`, `ObjectRemoved:Delete`, or EventBridge's detail-type.
    pub event_name: String,
    /// Whether this event announces a new object.
    pub created: bool,
    /// ETag in the event, if any.
    pub etag: Option<String>,
    /// Size in the event, if any.
    pub size: Option<u64>,
}

#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "Records")]
    records: Vec<Value>,
}

#[derive(Deserialize)]
struct S3Record {
    #[serde(rename = "eventName")]
    event_name: String,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: Bucket,
    object: S3Object,
}

#[derive(Deserialize)]
struct Bucket {
    name: String,
}

#[derive(Deserialize)]
struct S3Object {
    key: String,
    size: Option<u64>,
    #[serde(rename = "eTag")]
    etag: Option<String>,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
}

#[derive(Deserialize)]
struct EbDetail {
    bucket: Bucket,
    object: EbObject,
}

#[derive(Deserialize)]
struct EbObject {
    key: String,
    size: Option<u64>,
    etag: Option<String>,
    #[serde(rename = "version-id")]
    version_id: Option<String>,
}

/// Decodes a key from an S3 notification (form encoding: `+` is a space).
pub fn decode_notification_key(raw: &str) -> Result<String, EventError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| EventError::BadKeyEncoding(raw.to_owned()))
}

/// Whether `v` looks like an S3 notification (`Records` array).
pub fn is_notification(v: &Value) -> bool {
    v.get("Records").is_some()
}

/// Whether `v` is an EventBridge event from S3.
pub fn is_eventbridge_s3(v: &Value) -> bool {
    v.get("source").and_then(Value::as_str) == Some("aws.s3") && v.get("detail-type").is_some()
}

/// Parses an S3 notification (direct or SNS-wrapped). `TestEvent` records that S3 sends when a
/// notification is configured are skipped. Errors name the record at fault.
pub fn parse_notification(v: &Value) -> Result<Vec<ObjectEvent>, EventError> {
    let n: Notification = serde_json::from_value(v.clone()).map_err(|e| EventError::Malformed {
        shape: "S3 notification",
        detail: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, record) in n.records.iter().enumerate() {
        if let Some(message) = record
            .get("Sns")
            .and_then(|s| s.get("Message"))
            .and_then(Value::as_str)
        {
            let inner: Value =
                serde_json::from_str(message).map_err(|e| EventError::Malformed {
                    shape: "SNS-wrapped S3 notification",
                    detail: format!("Records[{i}].Sns.Message is not JSON: {e}"),
                })?;
            if inner.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
                continue;
            }
            out.extend(parse_notification(&inner)?);
            continue;
        }
        let r: S3Record =
            serde_json::from_value(record.clone()).map_err(|e| EventError::Malformed {
                shape: "S3 notification",
                detail: format!("Records[{i}]: {e}"),
            })?;
        out.push(ObjectEvent {
            object: ObjectRef {
                bucket: r.s3.bucket.name,
                key: decode_notification_key(&r.s3.object.key)?,
                version_id: r
                    .s3
                    .object
                    .version_id
                    .filter(|v| !v.is_empty() && v != "null"),
            },
            created: r.event_name.starts_with("ObjectCreated:"),
            event_name: r.event_name,
            etag: r.s3.object.etag,
            size: r.s3.object.size,
        });
    }
    Ok(out)
}

/// Parses an EventBridge event from S3.
pub fn parse_eventbridge(v: &Value) -> Result<ObjectEvent, EventError> {
    let detail_type = v
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let d: EbDetail = serde_json::from_value(v.get("detail").cloned().unwrap_or(Value::Null))
        .map_err(|e| EventError::Malformed {
            shape: "EventBridge S3",
            detail: format!("detail: {e}"),
        })?;
    Ok(ObjectEvent {
        object: ObjectRef {
            bucket: d.bucket.name,
            key: d.object.key,
            version_id: d.object.version_id.filter(|v| !v.is_empty() && v != "null"),
        },
        created: detail_type == "Object Created",
        event_name: detail_type,
        etag: d.object.etag,
        size: d.object.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notification_keys_are_form_decoded() {
        let cases = [
            ("images/my+disk.raw", "images/my disk.raw"),
            ("images%2Fdisk%2B1.raw", "images/disk+1.raw"),
            ("%C3%BCber/100%25.raw", "über/100%.raw"),
            ("plain.raw", "plain.raw"),
        ];
        for (raw, want) in cases {
            assert_eq!(decode_notification_key(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(
            decode_notification_key("%FF%FE"),
            Err(EventError::BadKeyEncoding(_))
        ));
    }

    #[test]
    fn parses_direct_and_sns_wrapped_notifications() {
        let record = json!({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "a+b.raw", "size": 5, "eTag": "e", "versionId": "v1"}}});
        let direct = json!({"Records": [record]});
        let wrapped = json!({"Records": [{"EventSource": "aws:sns", "Sns": {"Message": direct.to_string()}}]});
        for v in [&direct, &wrapped] {
            let events = parse_notification(v).expect("parses");
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].object.key, "a b.raw");
            assert_eq!(events[0].object.version_id.as_deref(), Some("v1"));
            assert!(events[0].created);
        }
        let bad = json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]});
        let err = parse_notification(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("malformed S3 notification event: Records[0]:"),
            "{err}"
        );
    }

    #[test]
    fn eventbridge_keys_are_taken_verbatim() {
        let v = json!({"source": "aws.s3", "detail-type": "Object Created",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "raw/a b+c%41.raw", "size": 7, "etag": "e"}}});
        assert!(is_eventbridge_s3(&v));
        let e = parse_eventbridge(&v).expect("parses");
        assert_eq!(e.object.key, "raw/a b+c%41.raw");
        assert!(e.created);
    }
}
