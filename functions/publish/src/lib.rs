//! publish: copy an image to its target regions, share it, announce it — and never announce a
//! half-published image.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Output`].
//!
//! A reconciler: the desired state is the image's policy ([`shared::plan::publish::resolve`]:
//! the function's defaults and the image's `publish:*` tags), the current state is read from
//! EC2, and each run does the next steps. An `image.ready` event or a manual invoke starts a
//! publish; the schedule advances every image whose `ami-pipeline:publish-state` is
//! `in-progress`. Per image:
//!
//! 1. mark the source `in-progress` (cleanup leaves it alone) and record manual overrides as
//!    its `publish:*` tags;
//! 2. per target region: find the copy (tag `ami-pipeline:publish-source`), else CopyImage with
//!    `CopyImageTags` and a deterministic `ClientToken`, at most `COPY_CONCURRENCY` copies in
//!    flight per destination; when the copy is `available`, stamp its lineage there; a failed
//!    copy is deregistered and retried by the next run;
//! 3. only when no copy is still pending: per region, deprecation (if asked), then the
//!    snapshots' `createVolumePermission`, then the image's `launchPermission` — public only
//!    where the region's image block public access allows it;
//! 4. every grant is read back; then, once, `image.published` (every region published) and the
//!    source is marked `published`; or `image.publish-partial` when some regions failed (sent
//!    again only when the set of failed regions changes; the schedule retries them).
//!
//! A revoke (`{"image_id", "revoke": [...]}`, or `"public": false`) removes launch permissions
//! first, then the snapshots' create-volume permissions, in the source region and every copy,
//! reads them back, records the removal in the image's `publish:*` tags (so no later run shares
//! again) and announces `image.revoked`.

mod config;
mod copy;
mod event;
mod handler;
mod image;
mod output;
mod revoke;
mod share;

pub use config::{Config, Deps};
pub use event::{Command, Trigger};
pub use handler::handle;
pub use output::{ImageReport, Output, RegionOutcome, RegionReport};
pub use shared::plan::publish::PublishStatus;
