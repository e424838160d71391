//! cleanup: deprecate, then deregister stale AMIs and delete their snapshots — never the wrong
//! one.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Report`].
//!
//! 1. **Gather** per region: every image this account owns (one paginated listing — all of
//!    them count as snapshot users), the images used by instances not terminated, the images
//!    of launch templates (`$Default` and `$Latest`, or every version), and the managed
//!    snapshots (for the orphan sweep).
//! 2. **Plan** with [`shared::plan::retention::plan`]; then read the references and launch
//!    permissions of the images the plan would act on (only those: sharing needs one call per
//!    image) and plan again with them. Unless dry run, an image the first plan deregisters is
//!    deregistered as soon as its own checks clear, while the next ones are read (both plans
//!    decide the same for it: [`shared::plan::retention::cleared`]).
//! 3. **Execute** the rest unless dry run (the default for manual invokes): deprecate,
//!    undeprecate, deregister (EC2 deletes the snapshots no other image uses in the same call),
//!    delete orphans — at most `CLEANUP_CONCURRENCY` calls in flight, paced, stopping near the
//!    deadline.
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
