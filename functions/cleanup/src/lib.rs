//! cleanup: deprecate, then deregister stale AMIs and delete their snapshots — never the wrong
//! one.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Report`].
//!
//! 1. **Gather** per region: every image this account owns (one paginated listing — all of
//!    them count as snapshot users), the images used by instances not terminated, the images
//!    of launch templates (`$Default` and `$Latest`, or every version), and the managed
//!    snapshots (for the orphan sweep).
//! 2. **Plan** with [`shared::plan::retention::plan`]; then read the launch permissions of the
//!    images the plan would remove (only those: the listing says `Public`, sharing needs one
//!    call per image) and plan again with them.
//! 3. **Execute** unless dry run (the default for manual invokes): deprecate, deregister, delete
//!    the snapshots no other image uses (retrying `InvalidSnapshot.InUse` briefly, else leaving
//!    them to the next run's orphan sweep), delete orphans — bounded concurrency, stopping near
//!    the deadline.
//! 4. **Report**: every image considered with its decision and reasons, a summary per region
//!    and family, as the output and as `cleanup.report` on SNS.

mod config;
mod event;
mod execute;
mod gather;
mod handler;
mod output;

pub use config::{Config, Deps};
pub use event::{Command, Overrides};
pub use handler::handle;
pub use output::{Counts, Report, Step, StepResult};
