//! The pipeline's notification messages (format version 1).
//!
//! One SNS topic carries every event as a JSON message with an `event_type` message attribute,
//! so subscribers filter with a subscription filter policy. The format is documented in the
//! README ("Notifications"); fields are only ever added within a version.

use crate::error::AwsError;
use crate::model::Tags;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Version of the message format.
pub const FORMAT_VERSION: &str = "1";
/// SNS limits subjects to 100 characters; awspub keeps them under 99.
pub const MAX_SUBJECT: usize = 99;
/// SNS's payload limit is 256 KiB; messages are kept well under it.
pub const MAX_MESSAGE_BYTES: usize = 200 * 1024;

/// Kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    /// An AMI was registered from an upload.
    #[serde(rename = "image.registered")]
    ImageRegistered,
    /// An upload was rejected or its import/registration failed.
    #[serde(rename = "image.failed")]
    ImageFailed,
    /// An import has been running longer than the configured limit (sent once per task).
    #[serde(rename = "image.import-stalled")]
    ImportStalled,
    /// A pipeline image is available and fully stamped with its lineage (publish listens).
    #[serde(rename = "image.ready")]
    ImageReady,
    /// A lineage tag holds another value than the inferred one; left for a person.
    #[serde(rename = "image.lineage-conflict")]
    LineageConflict,
    /// A cleanup run's report.
    #[serde(rename = "cleanup.report")]
    CleanupReport,
    /// An image is copied, shared and verified in every target region (publish).
    #[serde(rename = "image.published")]
    ImagePublished,
    /// Some target regions failed; the others are published, the failed ones are retried by
    /// the schedule (sent once per change of the failed set).
    #[serde(rename = "image.publish-partial")]
    PublishPartial,
    /// Shares or the public flag were removed (publish's revoke).
    #[serde(rename = "image.revoked")]
    ImageRevoked,
}

impl EventType {
    /// The `event_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ImageRegistered => "image.registered",
            EventType::ImageFailed => "image.failed",
            EventType::ImportStalled => "image.import-stalled",
            EventType::ImageReady => "image.ready",
            EventType::LineageConflict => "image.lineage-conflict",
            EventType::CleanupReport => "cleanup.report",
            EventType::ImagePublished => "image.published",
            EventType::PublishPartial => "image.publish-partial",
            EventType::ImageRevoked => "image.revoked",
        }
    }
}

/// A notification message. Empty fields are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Message {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: &'static str,
    /// The event type (same as the message attribute).
    pub event_type: &'static str,
    /// When the event was produced (RFC 3339, UTC).
    pub time: String,
    /// The region of the image or upload.
    pub region: String,
    /// The image, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The image name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// The image's snapshots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshot_ids: Vec<String>,
    /// The retention family.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The source object, `s3://bucket/key[?versionId=…]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_uri: Option<String>,
    /// The import task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_task_id: Option<String>,
    /// image.registered: how the snapshot was made (`ebs-direct` or `import-snapshot`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_method: Option<String>,
    /// What went wrong (image.failed) or what is slow (image.import-stalled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Each problem of a rejected upload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// How many problems were left out to fit SNS's size limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub problems_omitted: usize,
    /// The lineage tags of the image.
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub lineage: Tags,
    /// A report's summary (cleanup: counts per region and family, cap, dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<serde_json::Value>,
    /// A report's items (cleanup: one decision per image); halved until the message fits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<serde_json::Value>,
    /// How many items were left out to fit SNS's size limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub decisions_omitted: usize,
    /// publish: the image in each region with its outcome, the shares, the public flag and
    /// the deprecation time (bounded: at most one entry per AWS region).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publication: Option<serde_json::Value>,
    /// The de-duplication key ([`Message::dedup_key`]), filled when the message is sent.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dedup_key: String,
    /// What tells this message apart from others of its type about the same subject (a failure
    /// report's failing call or reason): appended to [`Message::dedup_key`]. Not sent itself.
    #[serde(skip)]
    pub dedup_detail: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Message {
    /// The same for every delivery of the same announcement, whatever SNS's `MessageId`:
    /// `<event_type>/<region>/<image_id>` for an image's event, `<event_type>/<region>/<task>`
    /// for an import task's (one task per upload: its failure or stall, repeated by a sweep that
    /// stopped before recording it), `<event_type>/<source_uri>` for an upload's before any
    /// task (`versionId` included), else `<event_type>/<region>/<time>` (a report); then
    /// `/<dedup_detail>` when the message has one (a failure report: the digest of its failing
    /// call or reason, so another failure of the same image is not taken for a repeat). A
    /// subscriber that acts once per key drops the repeats at-least-once delivery can bring.
    pub fn dedup_key(&self) -> String {
        let key = match (&self.image_id, &self.import_task_id, &self.source_uri) {
            (Some(image), _, _) => format!("{}/{}/{image}", self.event_type, self.region),
            (None, Some(task), _) => format!("{}/{}/{task}", self.event_type, self.region),
            (None, None, Some(uri)) => format!("{}/{uri}", self.event_type),
            (None, None, None) => format!("{}/{}/{}", self.event_type, self.region, self.time),
        };
        match &self.dedup_detail {
            Some(detail) => format!("{key}/{detail}"),
            None => key,
        }
    }

    /// A message of `event_type` at `now` in `region`; fill the rest with struct update syntax.
    pub fn new(event_type: EventType, now: DateTime<Utc>, region: &str) -> Self {
        Message {
            version: FORMAT_VERSION,
            event_type: event_type.as_str(),
            time: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            region: region.to_owned(),
            ..Default::default()
        }
    }

    /// The JSON body, shrunk under [`MAX_MESSAGE_BYTES`] by dropping decisions and problems past
    /// the first ones, then the lineage and the publication, and last truncating the error text.
    pub fn to_json(&self) -> String {
        let mut m = self.clone();
        m.dedup_key = self.dedup_key();
        loop {
            let text = body(&m);
            if text.len() <= MAX_MESSAGE_BYTES {
                return text;
            }
            if !m.decisions.is_empty() {
                let keep = m.decisions.len() / 2;
                m.decisions_omitted += m.decisions.len() - keep;
                m.decisions.truncate(keep);
            } else if m.problems.len() > 1 {
                let keep = m.problems.len() / 2;
                m.problems_omitted += m.problems.len() - keep;
                m.problems.truncate(keep);
            } else if !m.lineage.is_empty() {
                m.lineage.clear();
            } else if m
                .publication
                .as_ref()
                .is_some_and(|p| p.get("omitted").is_none())
            {
                m.publication = Some(serde_json::json!({
                    "omitted": "too large for SNS; the function's output has it in full"
                }));
            } else if let Some(e) = m.error.as_mut().filter(|e| e.chars().count() > 2) {
                // The error, the reason of a failure, is cut last. Half plus "…" is shorter
                // only above two characters; at two ("t…") the bare message is sent.
                let cut: String = e.chars().take(e.chars().count() / 2).collect();
                *e = format!("{cut}…");
            } else {
                let bare = Message {
                    version: m.version,
                    event_type: m.event_type,
                    time: m.time.clone(),
                    region: m.region.clone(),
                    image_id: m.image_id.clone(),
                    dedup_key: m.dedup_key.clone(),
                    ..Message::default()
                };
                return body(&bare);
            }
        }
    }

    /// A subject line under [`MAX_SUBJECT`] characters, escaped like the body.
    pub fn subject(&self) -> String {
        let what = self
            .image_name
            .as_deref()
            .or(self.image_id.as_deref())
            .or(self.source_uri.as_deref())
            .unwrap_or("");
        let s = format!("ami-pipeline {} {what}", self.event_type);
        let s: String = crate::text::escape_controls(&s)
            .chars()
            .take(MAX_SUBJECT)
            .collect();
        s.trim_end().to_owned()
    }
}

/// The one place a message body is built: every string of the message, nested JSON
/// (summary, decisions, publication, lineage) and object keys included, goes through
/// [`crate::text::escape_json`], so no control or bidi character from a key, a tag or an AWS
/// error reaches a subscriber verbatim.
fn body(m: &Message) -> String {
    match serde_json::to_value(m) {
        Ok(mut v) => {
            crate::text::escape_json(&mut v);
            v.to_string()
        }
        Err(e) => format!(
            "{{\"error\":\"unserialisable message: {}\"}}",
            crate::text::escape_controls(&e.to_string()).replace(['"', '\\'], "'")
        ),
    }
}

/// Publishes `message` to `topic_arn`.
///
/// SNS answers a request over the account's rate with `Throttled` (HTTP 429; botocore's sns
/// model, `ThrottledException`), a code the SDK's retry classifiers do not know (they retry
/// `Throttling`, `ThrottlingException`, ... and 500/502/503/504): left to them, one throttled
/// publish failed the invocation after its change was made, and an announcement could be lost.
/// It is retried here, [`THROTTLED_ATTEMPTS`] times in all, with exponential backoff.
pub async fn send(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    message: &Message,
) -> Result<String, AwsError> {
    let (subject, body) = (message.subject(), message.to_json());
    let mut attempt = 1;
    loop {
        let sent =
            crate::aws::sns::publish(sns, topic_arn, message.event_type, &subject, &body).await;
        match sent {
            Err(e) if e.has_code("Throttled") && attempt < THROTTLED_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Attempts of one publish that SNS throttles (`Throttled`): 0.2 + 0.4 + 0.8 + 1.6 s of backoff.
pub const THROTTLED_ATTEMPTS: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_failure_reports_detail_tells_it_apart_from_another_failure_of_the_same_image() {
        let now = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid");
        let failed = |detail: Option<&str>| Message {
            image_id: Some("ami-1".into()),
            dedup_detail: detail.map(str::to_owned),
            ..Message::new(EventType::ImageFailed, now, "us-east-1")
        };
        assert_eq!(failed(None).dedup_key(), "image.failed/us-east-1/ami-1");
        assert_eq!(
            failed(Some("0123abcd")).dedup_key(),
            "image.failed/us-east-1/ami-1/0123abcd"
        );
        assert_ne!(
            failed(Some("0123abcd")).dedup_key(),
            failed(Some("4567ef01")).dedup_key()
        );
        // The key the subscriber sees carries it; the detail itself is not sent.
        let body: serde_json::Value =
            serde_json::from_str(&failed(Some("0123abcd")).to_json()).expect("json");
        assert_eq!(body["dedup_key"], "image.failed/us-east-1/ami-1/0123abcd");
        assert!(body.get("dedup_detail").is_none(), "{body}");
    }

    #[test]
    fn every_message_carries_a_stable_dedup_key() {
        let now = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid");
        let ready = Message {
            image_id: Some("ami-1".into()),
            ..Message::new(EventType::ImageReady, now, "us-east-1")
        };
        let later = Message {
            time: "2026-01-02T04:00:00Z".into(),
            ..ready.clone()
        };
        let key = |m: &Message| {
            serde_json::from_str::<serde_json::Value>(&m.to_json()).expect("json")["dedup_key"]
                .clone()
        };
        assert_eq!(key(&ready), "image.ready/us-east-1/ami-1");
        assert_eq!(key(&ready), key(&later), "a repeat has the same key");
        let failed = Message {
            source_uri: Some("s3://b/k.raw?versionId=v1".into()),
            ..Message::new(EventType::ImageFailed, now, "us-east-1")
        };
        assert_eq!(key(&failed), "image.failed/s3://b/k.raw?versionId=v1");
        // An import task's failure, reported again a minute later by a sweep that stopped
        // before recording it: one key (it used to be the time, so no subscriber could tell).
        let task_failed = Message {
            import_task_id: Some("import-snap-1".into()),
            ..failed.clone()
        };
        let again = Message {
            time: "2026-01-02T03:05:05Z".into(),
            ..task_failed.clone()
        };
        assert_eq!(key(&task_failed), "image.failed/us-east-1/import-snap-1");
        assert_eq!(key(&task_failed), key(&again));
        let stalled = Message {
            import_task_id: Some("import-snap-1".into()),
            ..Message::new(EventType::ImportStalled, now, "us-east-1")
        };
        assert_eq!(
            key(&stalled),
            "image.import-stalled/us-east-1/import-snap-1"
        );
    }

    /// Found by review: with an error and a field past the limit that is not the error, the
    /// error was halved down to two characters ("t…", whose half plus "…" is itself) and then
    /// again, forever, and the message was never sent. The error is the reason of a failure:
    /// the lineage goes first, and the error is kept whole.
    #[test]
    fn an_error_beside_a_large_field_still_gives_a_message_under_the_limit() {
        let now = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid");
        let lineage: Tags = (0..4_000)
            .map(|n| (format!("key-{n:05}"), "v".repeat(100)))
            .collect();
        let m = Message {
            image_id: Some("ami-1".into()),
            error: Some("the registration failed".into()),
            lineage,
            ..Message::new(EventType::ImageFailed, now, "us-east-1")
        };
        let text = m.to_json();
        assert!(text.len() <= MAX_MESSAGE_BYTES);
        let body: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["image_id"], "ami-1");
        assert_eq!(body["error"], "the registration failed");
        assert!(body.get("lineage").is_none(), "{body}");
        // An error too large on its own is cut, and the message still ends.
        let huge = Message {
            error: Some("x".repeat(400 * 1024)),
            ..m.clone()
        };
        let text = huge.to_json();
        assert!(text.len() <= MAX_MESSAGE_BYTES);
        let body: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert!(
            body["error"].as_str().is_some_and(|e| e.ends_with('…')),
            "{}",
            body["error"]
        );
    }

    #[test]
    fn messages_stay_under_the_sns_limit_and_subjects_are_short() {
        let now = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid");
        let m = Message {
            problems: (0..20_000)
                .map(|i| format!("problem number {i} with a long explanation"))
                .collect(),
            error: Some("x".repeat(300_000)),
            source_uri: Some(format!("s3://b/{}", "k".repeat(500))),
            ..Message::new(EventType::ImageFailed, now, "us-east-1")
        };
        let json = m.to_json();
        assert!(json.len() <= MAX_MESSAGE_BYTES, "{}", json.len());
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(v["event_type"], "image.failed");
        assert_eq!(v["version"], "1");
        assert_eq!(v["time"], "2026-01-02T03:04:05Z");
        assert!(v["problems_omitted"].as_u64().unwrap_or(0) > 0);
        assert!(m.subject().chars().count() <= MAX_SUBJECT);
        assert!(m.subject().starts_with("ami-pipeline image.failed s3://b/"));
    }
}
