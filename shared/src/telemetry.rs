//! Logging setup, done once per process.
//!
//! Uses the Lambda runtime's own subscriber: JSON when the function's `LoggingConfig` says so
//! (`AWS_LAMBDA_LOG_FORMAT=JSON`), plain text locally; the level comes from
//! `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`.

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init() {
    lambda_runtime::tracing::init_default_subscriber();
}
