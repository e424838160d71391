//! Why an invocation failed: the error every function returns to Lambda.
//!
//! Each variant maps to a stable `errorType` (documented in the README, "Errors"), so a
//! dead-letter queue consumer or an on-failure destination can tell "retrying cannot help"
//! (`InvalidEvent`, `InvalidConfiguration`, a function's own refusals) from "some AWS calls
//! failed, the same event is safe to retry" (`AwsCallsFailed`).

use crate::config::ConfigError;
use crate::events::EventError;

/// Failures listed by name in [`InvocationError::Partial`]; the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 20;
/// Longest error message returned to Lambda, in bytes. Lambda's response limit (6 MB,
/// error responses included) must never be what decides whether a failure is reported: an
/// event of junk keys would otherwise be answered with every key listed. Beyond this the
/// message is cut on a character boundary and says how much was left out.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The event is not one this function understands; retrying cannot help.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The function's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Some AWS calls failed (each named); everything else was done.
    #[error("{failed} of {total} steps failed: {}", .errors.join(" | "))]
    Partial {
        /// Steps that failed.
        failed: usize,
        /// Steps attempted.
        total: usize,
        /// Each failure.
        errors: Vec<String>,
    },
    /// The request was understood and refused, with nothing changed (for example a lineage
    /// conflict without `force`, or an image that is not ours). `error_type` is stable.
    #[error("{message}")]
    Refused {
        /// The stable `errorType`.
        error_type: &'static str,
        /// What was refused and why, naming the image.
        message: String,
    },
}

impl InvocationError {
    /// Parses an event's raw JSON text (what `cargo lambda invoke --data-file` sends); every
    /// function's `Command::from_json` starts here.
    pub fn parse_json(text: &str) -> Result<serde_json::Value, Self> {
        serde_json::from_str(text)
            .map_err(|e| InvocationError::InvalidEvent(format!("the event is not valid JSON: {e}")))
    }

    /// An event the function cannot act on (`InvalidEvent`).
    pub fn invalid_event(msg: impl Into<String>) -> Self {
        InvocationError::InvalidEvent(msg.into())
    }

    /// Refuses, before anything is read or changed, an event that names a region outside the
    /// deployment's partition (`home` is the function's own region): `cn-north-1` asked of a
    /// commercial-partition deployment would fail on every call, with credentials that do not
    /// exist there.
    pub fn check_partition<'a>(
        regions: impl IntoIterator<Item = &'a str>,
        home: &str,
    ) -> Result<(), Self> {
        let problems: Vec<String> = regions
            .into_iter()
            .filter_map(|r| crate::plan::ids::check_region(r, home).err())
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        Err(InvocationError::InvalidEvent(format!(
            "invalid event: refused, nothing changed: {}",
            problems.join("; ")
        )))
    }

    /// The event as a JSON object, or `InvalidEvent` naming what the function accepts
    /// (`accepts`, e.g. "a Scheduled Event or manual overrides"); every function's
    /// `Command::from_event` starts here.
    pub fn event_object<'a>(
        event: &'a serde_json::Value,
        accepts: &str,
    ) -> Result<&'a serde_json::Map<String, serde_json::Value>, Self> {
        event.as_object().ok_or_else(|| {
            Self::invalid_event(format!("the event must be a JSON object ({accepts})"))
        })
    }

    /// Stable `errorType` reported to Lambda (documented in the README).
    pub fn error_type(&self) -> &'static str {
        match self {
            InvocationError::InvalidEvent(_) => "InvalidEvent",
            InvocationError::Config(_) => "InvalidConfiguration",
            InvocationError::Partial { .. } => "AwsCallsFailed",
            InvocationError::Refused { error_type, .. } => error_type,
        }
    }

    /// `Partial` from the errors collected over a run of `total` steps; `None` when none failed.
    /// Only the first [`MAX_LISTED_ERRORS`] are listed (Lambda error messages must stay small);
    /// the count says how many failed.
    pub fn from_failures(total: usize, mut errors: Vec<String>) -> Option<Self> {
        let failed = errors.len();
        if failed > MAX_LISTED_ERRORS {
            errors.truncate(MAX_LISTED_ERRORS);
            errors.push(format!("… and {} more", failed - MAX_LISTED_ERRORS));
        }
        (failed > 0).then(|| InvocationError::Partial {
            failed,
            total: total.max(failed),
            errors,
        })
    }
}

impl InvocationError {
    /// The message as returned to Lambda: control and bidi characters (from keys, tags, AWS
    /// error texts) escaped by [`crate::text::escape_controls`], then at most
    /// [`MAX_ERROR_MESSAGE_BYTES`] bytes (plus the note that says how many were left out).
    pub fn bounded_message(&self) -> String {
        let mut text = crate::text::escape_controls(&self.to_string()).into_owned();
        if text.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut cut = MAX_ERROR_MESSAGE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let left_out = text.len() - cut;
            text.truncate(cut);
            text.push_str(&format!(" … ({left_out} more bytes left out)"));
        }
        text
    }
}

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(e: InvocationError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.bounded_message(),
        }
    }
}

impl From<EventError> for InvocationError {
    fn from(e: EventError) -> Self {
        InvocationError::InvalidEvent(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_failures_is_counted_not_listed() {
        let errors: Vec<String> = (0..9000).map(|i| format!("step {i} failed")).collect();
        let e = InvocationError::from_failures(9244, errors).expect("failures");
        let text = e.to_string();
        assert!(
            text.starts_with("9000 of 9244 steps failed: step 0 failed"),
            "{text}"
        );
        assert!(text.ends_with("… and 8980 more"), "{text}");
        assert!(text.len() < 1000);
        assert!(InvocationError::from_failures(3, vec![]).is_none());
    }

    #[test]
    fn messages_returned_to_lambda_are_bounded_on_a_character_boundary() {
        let e = InvocationError::invalid_event(format!("unknown fields: {}", "é".repeat(600_000)));
        let d = lambda_runtime::Diagnostic::from(e);
        assert!(
            d.error_message.len() < MAX_ERROR_MESSAGE_BYTES + 64,
            "{}",
            d.error_message.len()
        );
        assert!(
            d.error_message
                .starts_with("invalid event: unknown fields: éé")
        );
        assert!(
            d.error_message.ends_with("more bytes left out)"),
            "{}",
            &d.error_message[4000..]
        );
        assert_eq!(d.error_type, "InvalidEvent");
        let short = InvocationError::invalid_event("x");
        assert_eq!(short.bounded_message(), "invalid event: x");
        let hidden = InvocationError::invalid_event("key \"a\u{1b}[2J\u{202e}war.raw\"");
        let d = lambda_runtime::Diagnostic::from(hidden);
        assert_eq!(
            d.error_message,
            "invalid event: key \"a\\u{1b}[2J\\u{202e}war.raw\""
        );
    }
}
