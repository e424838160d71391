//! tag-lineage: every image knows where it came from, and anyone can ask.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Output`].
//!
//! - **Stamp** (EventBridge "EC2 AMI State Change" `available`, SNS `image.registered`, manual
//!   `{"image_id", …}` — the AMITools `ami-tag-image` contract): read the image, its snapshots,
//!   the instance it was made from and its parent (in the parent's region), plan with
//!   [`shared::plan::stamp::plan_stamp`], write the missing lineage tags on the snapshots and then
//!   the image, and announce `image.ready` once for a pipeline image. A conflicting value is
//!   never overwritten without `"force": true`: it is logged and announced as
//!   `image.lineage-conflict` (and a manual invoke fails with `LineageConflict`).
//! - **Failed** (State Change `failed`): announced as `image.failed` with EC2's message.
//! - **Ancestors** / **Children** (manual `{"ancestors": "ami-…"}` / `{"children": "ami-…"}`):
//!   the chain (following `source_region` across regions, walking past deregistered ancestors
//!   through `ami-pipeline:ancestry`) or the tree (a tag query per region), with cycle and
//!   depth limits.
//!
//! An image that is not visible yet (EC2 is eventually consistent) is looked up again for up
//! to `VISIBILITY_WAIT_SECONDS`, then left to the next event: not an error.

mod config;
mod event;
mod handler;
mod output;
mod query;
mod stamp;

pub use config::{Config, Deps};
pub use event::{Command, Target, Trigger};
pub use handler::handle;
pub use output::{AncestorsReport, ChildrenReport, Entry, Node, Output, StampOutcome, StampReport};
