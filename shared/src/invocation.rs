//! Why an invocation failed: the error every function returns to Lambda.
//!
//! Each variant maps to a stable `errorType` (documented in the README, "Errors"), so a
//! dead-letter queue consumer or an on-failure destination can tell "retrying cannot help"
//! (`InvalidEvent`, `InvalidConfiguration`, a function's own refusals) from "some AWS calls
//! failed, the same event is safe to retry" (`AwsCallsFailed`).

use crate::config::ConfigError;
use crate::events::EventError;

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
    pub fn from_failures(total: usize, errors: Vec<String>) -> Option<Self> {
        (!errors.is_empty()).then(|| InvocationError::Partial {
            failed: errors.len(),
            total: total.max(errors.len()),
            errors,
        })
    }
}

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(e: InvocationError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

impl From<EventError> for InvocationError {
    fn from(e: EventError) -> Self {
        InvocationError::InvalidEvent(e.to_string())
    }
}
