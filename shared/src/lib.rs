//! The common crate of the ami-pipeline functions.
//!
//! - [`config`]: typed settings parsed once from a lookup function.
//! - [`deadline`]: stop starting work near the Lambda deadline.
//! - [`telemetry`]: logging setup.
//! - [`error`]: AWS error classification (not found / throttled / conflict / access denied / …).
//! - [`model`]: the domain model, free of SDK types.
//! - [`plan`]: pure planners (naming, lineage, specs, the import sweep) — no I/O.
//! - [`aws`]: thin gateways, one function per AWS call, and client construction.
//! - [`notify`]: the SNS message format.
//! - [`events`]: parsing of the S3 event shapes the functions receive.
//! - [`fields`]: a reader for manual-invoke JSON that lists every problem.
//! - [`invocation`]: the error a function returns to Lambda, with stable error types.
//! - [`trigger`]: which trigger an event is (typed EventBridge envelope, records, manual).
//! - [`runner`]: the one Lambda runner every `main.rs` calls, and the one way to invoke a function.
//! - [`text`]: the one escape of control and bidi characters in everything shown (messages,
//!   errors, logs, tag values).

pub mod aws;
pub mod claim;
pub mod config;
pub mod deadline;
pub mod error;
pub mod events;
pub mod fields;
pub mod invocation;
pub mod model;
pub mod notify;
pub mod pace;
pub mod plan;
pub mod runner;
pub mod telemetry;
pub mod text;
pub mod trigger;
