//! Trigger → [`Command`]: SNS `image.ready`, the schedule and manual invokes (publish or revoke);
//! one place decides which trigger an event is.

use serde::Serialize;
use serde_json::{Map, Value};
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::notify::EventType;
use shared::plan::ids;
use shared::plan::publish::{self as plan, Grants, Overrides};

/// What started a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// SNS `image.ready` (a duplicate for an image already published changes nothing).
    ImageReady,
    /// A manual invoke (always reconciles, so a changed policy is applied).
    Manual,
    /// The schedule.
    Schedule,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Publish (or continue publishing) one image.
    Publish {
        /// The trigger.
        trigger: Trigger,
        /// The image.
        image_id: String,
        /// Its region (else the function's).
        region: Option<String>,
        /// A manual invoke's overrides, recorded on the image.
        overrides: Overrides,
    },
    /// The schedule: advance every publish in flight.
    Advance,
    /// Remove shares / the public flag.
    Revoke {
        /// The image.
        image_id: String,
        /// Its region (else the function's).
        region: Option<String>,
        /// What to remove.
        principals: Grants,
    },
    /// Nothing to do (another event type on the topic).
    Ignore(String),
}

pub(crate) const MANUAL_FIELDS: [&str; 9] = [
    "image_id",
    "region",
    "regions",
    "accounts",
    "organizations",
    "ous",
    "public",
    "deprecate_after_days",
    "revoke",
];

pub(crate) fn refused(error_type: &'static str, message: String) -> InvocationError {
    InvocationError::Refused {
        error_type,
        message,
    }
}

pub(crate) fn aws_failed(e: AwsError) -> InvocationError {
    InvocationError::Partial {
        failed: 1,
        total: 1,
        errors: vec![e.to_string()],
    }
}

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        let map = InvocationError::event_object(v, "SNS, a Scheduled Event or a manual request")?;
        if let Some(records) = map.get("Records") {
            return sns(records);
        }
        if let Some(dt) = map.get("detail-type").and_then(Value::as_str) {
            if dt == "Scheduled Event" {
                return Ok(Command::Advance);
            }
            return Err(InvocationError::invalid_event(format!(
                "EventBridge event {dt:?} is not a \"Scheduled Event\""
            )));
        }
        manual(map)
    }
}

pub(crate) fn sns(records: &Value) -> Result<Command, InvocationError> {
    let [record] = records.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(InvocationError::invalid_event(
            "an SNS event must carry exactly one record (Lambda delivers SNS messages one at a time)",
        ));
    };
    let Some(message) = record.pointer("/Sns/Message").and_then(Value::as_str) else {
        return Err(InvocationError::invalid_event(
            "the SNS record has no Sns.Message",
        ));
    };
    let body: Value = serde_json::from_str(message)
        .map_err(|e| InvocationError::invalid_event(format!("the SNS message is not JSON: {e}")))?;
    let event_type = record
        .pointer("/Sns/MessageAttributes/event_type/Value")
        .and_then(Value::as_str)
        .or_else(|| body.get("event_type").and_then(Value::as_str))
        .unwrap_or("");
    if event_type != EventType::ImageReady.as_str() {
        return Ok(Command::Ignore(format!(
            "SNS event_type {event_type:?} is not image.ready"
        )));
    }
    let image_id = body.get("image_id").and_then(Value::as_str).unwrap_or("");
    let region = body.get("region").and_then(Value::as_str);
    let mut problems = Vec::new();
    if !ids::is_image_id(image_id) {
        problems.push(format!("image_id {image_id:?} is not an AMI id"));
    }
    if let Some(r) = region
        && !ids::is_region(r)
    {
        problems.push(format!("region {r:?} is not an AWS region"));
    }
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "image.ready message refused: {}",
            problems.join("; ")
        )));
    }
    Ok(Command::Publish {
        trigger: Trigger::ImageReady,
        image_id: image_id.to_owned(),
        region: region.map(str::to_owned),
        overrides: Overrides::default(),
    })
}

pub(crate) fn manual(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    for key in map.keys() {
        if !MANUAL_FIELDS.contains(&key.as_str()) {
            problems.push(format!(
                "unknown field {key:?} (allowed: {})",
                MANUAL_FIELDS.join(", ")
            ));
        }
    }
    let image_id = match map.get("image_id").and_then(Value::as_str) {
        Some(i) if ids::is_image_id(i) => i.to_owned(),
        Some(i) => {
            problems.push(format!("image_id {i:?} is not an AMI id (ami-…)"));
            String::new()
        }
        None => {
            problems.push("image_id is required".to_owned());
            String::new()
        }
    };
    let region = match map.get("region") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if ids::is_region(r) => Some(r.clone()),
        Some(other) => {
            problems.push(format!("region {other} is not an AWS region"));
            None
        }
    };
    let strings = |key: &str, problems: &mut Vec<String>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                    _ => {
                        problems.push(format!("{key}: {i} is not a non-empty string"));
                        None
                    }
                })
                .collect::<Vec<_>>(),
        ),
        Some(other) => {
            problems.push(format!("{key} must be a list of strings, not {other}"));
            None
        }
    };
    let regions = strings("regions", &mut problems);
    let accounts = strings("accounts", &mut problems);
    let organizations = strings("organizations", &mut problems);
    let ous = strings("ous", &mut problems);
    let revoke = strings("revoke", &mut problems);
    let check =
        |list: &Option<Vec<String>>, ok: fn(&str) -> bool, what: &str, p: &mut Vec<String>| {
            for i in list.iter().flatten() {
                if !ok(i) {
                    p.push(format!("{i:?} is not {what}"));
                }
            }
        };
    check(&regions, ids::is_region, "an AWS region", &mut problems);
    check(
        &accounts,
        ids::is_account_id,
        "a 12-digit account id",
        &mut problems,
    );
    check(
        &organizations,
        ids::is_organization_arn,
        "an organization ARN",
        &mut problems,
    );
    check(&ous, ids::is_ou_arn, "an OU ARN", &mut problems);
    let public = match map.get("public") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            problems.push(format!("public must be true or false, not {other}"));
            None
        }
    };
    let deprecate_after_days = match map.get("deprecate_after_days") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(d) if (0..=plan::MAX_DEPRECATE_DAYS).contains(&d) => Some(d),
            _ => {
                problems.push(format!(
                    "deprecate_after_days must be a whole number from 0 to {}, not {v}",
                    plan::MAX_DEPRECATE_DAYS
                ));
                None
            }
        },
    };
    let overrides = Overrides {
        regions,
        accounts,
        organizations,
        ous,
        public,
        deprecate_after_days,
    };
    let principals = match &revoke {
        Some(items) => {
            if !overrides.is_empty() {
                problems.push(
                    "revoke cannot be combined with publish settings (regions, accounts, organizations, ous, public, deprecate_after_days)"
                        .to_owned(),
                );
            }
            if items.is_empty() {
                problems.push("revoke lists nothing to remove".to_owned());
            }
            match plan::parse_principals(items) {
                Ok(g) => Some(g),
                Err(p) => {
                    problems.extend(p.into_iter().map(|x| format!("revoke: {x}")));
                    None
                }
            }
        }
        None => None,
    };
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "publish request refused, nothing changed: {}",
            problems.join("; ")
        )));
    }
    if let Some(principals) = principals {
        return Ok(Command::Revoke {
            image_id,
            region,
            principals,
        });
    }
    // `{"image_id", "public": false}` alone is an unpublish of the public flag.
    if overrides
        == (Overrides {
            public: Some(false),
            ..Overrides::default()
        })
    {
        return Ok(Command::Revoke {
            image_id,
            region,
            principals: Grants {
                public: true,
                ..Grants::default()
            },
        });
    }
    Ok(Command::Publish {
        trigger: Trigger::Manual,
        image_id,
        region,
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn manual_requests_parse_and_refuse_with_every_problem() {
        let cmd = Command::from_json(
            r#"{"image_id":"ami-0123456789abcdef0","regions":["eu-west-1"],"accounts":["111122223333"],"public":true}"#,
        )
        .expect("valid");
        assert!(
            matches!(cmd, Command::Publish { trigger: Trigger::Manual, ref overrides, .. } if overrides.public == Some(true))
        );
        let unpublish =
            Command::from_json(r#"{"image_id":"ami-0123456789abcdef0","public":false}"#)
                .expect("valid");
        assert!(matches!(unpublish, Command::Revoke { ref principals, .. } if principals.public));
        let err = Command::from_json(
            r#"{"image_id":"ami-xyz","regions":["mars-1"],"accounts":["12"],"public":"yes","colour":1}"#,
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in ["ami-xyz", "mars-1", "\"12\"", "public must be", "colour"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(err.error_type(), "InvalidEvent");
        let mixed = Command::from_json(
            r#"{"image_id":"ami-0123456789abcdef0","revoke":["111122223333"],"regions":["eu-west-1"]}"#,
        )
        .expect_err("revoke with settings");
        assert!(mixed.to_string().contains("cannot be combined"));
    }

    #[test]
    fn sns_other_event_types_are_ignored_and_bad_ids_refused() {
        let record = |et: &str, msg: &str| {
            json!({"Records": [{"EventSource": "aws:sns", "Sns": {
                "Message": msg,
                "MessageAttributes": {"event_type": {"Type": "String", "Value": et}}}}]})
        };
        let ignored = Command::from_event(&record("image.registered", "{}")).expect("parsed");
        assert!(matches!(ignored, Command::Ignore(_)));
        let bad = Command::from_event(&record("image.ready", r#"{"image_id":"nope"}"#));
        assert!(bad.is_err());
        let ok = Command::from_event(&record(
            "image.ready",
            r#"{"image_id":"ami-0123456789abcdef0","region":"us-west-2"}"#,
        ))
        .expect("valid");
        assert!(
            matches!(ok, Command::Publish { trigger: Trigger::ImageReady, region: Some(ref r), .. } if r == "us-west-2")
        );
    }
}
