//! The refusal of a function that is not built yet: every event fails with the stable error
//! type `NotImplemented`, so nothing is silently dropped (asynchronous invocations end in the
//! dead-letter queue). Removed once the last function lands.

/// The function and the issue that will build it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{function} is not implemented yet (issue #{issue}); the event was not processed")]
pub struct NotImplemented {
    /// The function's name.
    pub function: &'static str,
    /// The issue that builds it.
    pub issue: u32,
}

impl From<NotImplemented> for lambda_runtime::Diagnostic {
    fn from(e: NotImplemented) -> Self {
        lambda_runtime::Diagnostic {
            error_type: "NotImplemented".into(),
            error_message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusal_has_a_stable_error_type_and_names_the_issue() {
        let d = lambda_runtime::Diagnostic::from(super::NotImplemented {
            function: "publish",
            issue: 5,
        });
        assert_eq!(d.error_type, "NotImplemented");
        assert_eq!(
            d.error_message,
            "publish is not implemented yet (issue #5); the event was not processed"
        );
    }
}
