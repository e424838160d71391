//! publish: not built yet — see issue #5.
//!
//! The crate exists so the workspace has the product's layout and the SAM template can name
//! its binary. Until issue #5 lands, every invocation fails with the stable error type
//! `NotImplemented`, so nothing is silently dropped (asynchronous invocations go to the
//! dead-letter queue).

/// The only error of this placeholder.
#[derive(Debug, thiserror::Error)]
#[error("publish is not implemented yet (issue #5); the event was not processed")]
pub struct NotImplemented;

impl From<NotImplemented> for lambda_runtime::Diagnostic {
    fn from(e: NotImplemented) -> Self {
        lambda_runtime::Diagnostic {
            error_type: "NotImplemented".into(),
            error_message: e.to_string(),
        }
    }
}

/// Refuses every event, loudly.
pub async fn handle(_event: serde_json::Value) -> Result<serde_json::Value, NotImplemented> {
    Err(NotImplemented)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn refuses_every_event_with_a_stable_error_type() {
        let err = super::handle(serde_json::json!({}))
            .await
            .err()
            .map(lambda_runtime::Diagnostic::from);
        assert_eq!(
            err.map(|d| d.error_type),
            Some("NotImplemented".to_string())
        );
    }
}
