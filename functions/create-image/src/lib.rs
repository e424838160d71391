//! create-image: an uploaded disk image becomes a registered AMI, exactly once.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Output`].
//!
//! - **Ingest** (S3 notification, EventBridge "Object Created", manual `{"bucket","key",…}`):
//!   validate the object (extension, magic bytes, settings) before changing anything; reject
//!   with every problem listed (object tagged, `image.failed` sent, invocation succeeds so S3
//!   does not retry forever); else start ImportSnapshot with a ClientToken derived from the
//!   upload, the full spec stored as the task's tags. No waiting.
//! - **Sweep** (schedule, and after every ingest): plan with
//!   [`shared::plan::import::plan_sweep`] over the pipeline's import tasks, then register
//!   completed imports (`image.registered`), report failed ones (`image.failed`), warn once
//!   about slow ones — with bounded concurrency, stopping near the deadline. The scheduled
//!   sweep also finishes the fast path's loose ends and ingests again the uploads a transient
//!   error stopped (recorded in the state bucket, given up and reported after a day).
//!
//! Infrastructure failures (access denied, throttling past retries, service errors) are
//! collected across the whole run and fail the invocation once at the end, naming each.

mod abandoned;
mod announce;
mod config;
mod continuation;
mod deferred;
mod event;
mod fast;
mod handler;
mod ingest;
mod output;
mod progress;
mod register;
mod sweep;

pub use config::{Config, DEFAULT_VARS, Deps};
pub use deferred::GIVE_UP_AFTER;
pub use event::{Command, IngestItem};
pub use handler::handle;
pub use output::{IngestOutcome, Output, StepAction, StepReport, SweepReport, Transfer};
pub use progress::LEASE;
pub use shared::invocation::InvocationError;
pub use sweep::sweep;
