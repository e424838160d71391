//! Trigger → [`Command`]: SNS `image.ready`, the schedule and manual invokes (publish or revoke);
//! one place decides which trigger an event is.

use serde::Serialize;
use serde_json::{Map, Value};
use shared::error::AwsError;
use shared::fields::Fields;
use shared::invocation::InvocationError;
use shared::notify::EventType;
use shared::plan::ids;
use shared::plan::publish::{self as plan, Grants, Overrides};
use shared::trigger::{self, Shape};

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

impl Command {
    /// Every region the command names (its image's and a manual invoke's targets).
    pub fn regions(&self) -> Vec<&str> {
        match self {
            Command::Publish {
                region, overrides, ..
            } => region
                .iter()
                .chain(overrides.regions.iter().flatten())
                .map(String::as_str)
                .collect(),
            Command::Revoke { region, .. } => region.iter().map(String::as_str).collect(),
            Command::Advance | Command::Ignore(_) => Vec::new(),
        }
    }
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
        match trigger::shape(v, "SNS, a Scheduled Event or a manual request")? {
            Shape::Records(records) => sns(records),
            Shape::EventBridge(e) if trigger::is_scheduled(&e) => Ok(Command::Advance),
            Shape::EventBridge(e) => Err(InvocationError::invalid_event(format!(
                "EventBridge event {:?} is not a \"Scheduled Event\"",
                e.detail_type
            ))),
            Shape::Manual(map) => manual(map),
        }
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

/// A manual publish or revoke; the refusal lists every problem.
pub(crate) fn manual(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let mut f = Fields::new(map);
    f.only(&MANUAL_FIELDS);
    let image_id = match map.get("image_id").and_then(Value::as_str) {
        Some(i) if ids::is_image_id(i) => i.to_owned(),
        Some(i) => {
            f.problem(format!("image_id {i:?} is not an AMI id (ami-…)"));
            String::new()
        }
        None => {
            f.problem("image_id is required".to_owned());
            String::new()
        }
    };
    let region = match f.value("region") {
        None => None,
        Some(Value::String(r)) if ids::is_region(r) => Some(r.clone()),
        Some(other) => {
            f.problem(format!("region {other} is not an AWS region"));
            None
        }
    };
    let (overrides, revoke) = overrides(&mut f);
    let principals = revoke.and_then(|items| revoke_principals(&mut f, &overrides, &items));
    f.finish().map_err(|problems| {
        InvocationError::invalid_event(format!(
            "publish request refused, nothing changed: {}",
            problems.join("; ")
        ))
    })?;
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

/// The publish settings of a manual invoke (they win over the image's tags and the defaults),
/// and its `revoke` list.
fn overrides(f: &mut Fields<'_>) -> (Overrides, Option<Vec<String>>) {
    let regions = f.trimmed_strings("regions");
    let accounts = f.trimmed_strings("accounts");
    let organizations = f.trimmed_strings("organizations");
    let ous = f.trimmed_strings("ous");
    let revoke = f.trimmed_strings("revoke");
    f.check_each(regions.as_ref(), ids::is_region, "an AWS region");
    f.check_each(
        accounts.as_ref(),
        ids::is_account_id,
        "a 12-digit account id",
    );
    f.check_each(
        organizations.as_ref(),
        ids::is_organization_arn,
        "an organization ARN",
    );
    f.check_each(ous.as_ref(), ids::is_ou_arn, "an OU ARN");
    let public = f.boolean("public");
    let deprecate_after_days = f.number("deprecate_after_days", plan::MAX_DEPRECATE_DAYS);
    let overrides = Overrides {
        regions,
        accounts,
        organizations,
        ous,
        public,
        deprecate_after_days,
    };
    (overrides, revoke)
}

/// The principals a `revoke` list names; it cannot be combined with publish settings.
fn revoke_principals(
    f: &mut Fields<'_>,
    overrides: &Overrides,
    items: &[String],
) -> Option<Grants> {
    if !overrides.is_empty() {
        f.problem(
            "revoke cannot be combined with publish settings (regions, accounts, organizations, ous, public, deprecate_after_days)"
                .to_owned(),
        );
    }
    if items.is_empty() {
        f.problem("revoke lists nothing to remove".to_owned());
    }
    match plan::parse_principals(items) {
        Ok(g) => Some(g),
        Err(p) => {
            for x in p {
                f.problem(format!("revoke: {x}"));
            }
            None
        }
    }
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
            Command::Advance => "advance".into(),
            Command::Ignore(why) => format!("ignore: {why}"),
            Command::Publish {
                trigger, image_id, ..
            } => format!("publish {trigger:?} {image_id}"),
            Command::Revoke {
                image_id,
                principals,
                ..
            } => {
                format!("revoke {image_id} public={}", principals.public)
            }
        }
    }

    /// file (without the function prefix) → the command, or the start of the refusal.
    const TABLE: &[(&str, &str)] = &[
        (
            "bad-account-id",
            "error InvalidEvent: invalid event: publish request refused, nothing changed: \"1111-2222-3333\" is not a 12-digit account id",
        ),
        (
            "bad-image-id",
            "error InvalidEvent: invalid event: publish request refused, nothing changed: image_id \"snap-0a1b2c3d4e5f60718\" is not an AMI id",
        ),
        (
            "bad-too-deep",
            "error InvalidEvent: invalid event: the event is not valid JSON: recursion limit exceeded",
        ),
        (
            "bad-unknown-region",
            "error InvalidEvent: invalid event: publish request refused, nothing changed: \"mars-north-1\" is not an AWS region",
        ),
        ("manual", "publish Manual ami-0123456789abcdef0"),
        ("revoke", "revoke ami-0123456789abcdef0 public=true"),
        ("schedule", "advance"),
        (
            "sns-image-ready",
            "publish ImageReady ami-0123456789abcdef0",
        ),
        (
            "unpublish-public",
            "revoke ami-0123456789abcdef0 public=true",
        ),
    ];
}
