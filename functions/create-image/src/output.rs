//! The invocation's JSON output: one outcome per uploaded object and the sweep's steps.

use serde::Serialize;
use shared::plan::spec::ImageSpec;
use shared::plan::upload::UploadMethod;

/// What happened to one uploaded object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum IngestOutcome {
    /// The fast path wrote the snapshot with the EBS direct APIs and registered the AMI
    /// (`image.registered` sent), all in this invocation.
    Registered {
        /// The object.
        object: String,
        /// The image.
        image_id: String,
        /// The snapshot written.
        snapshot_id: String,
        /// `ebs-direct`.
        upload_method: UploadMethod,
        /// What was written.
        transfer: Transfer,
    },
    /// ImportSnapshot started (or was already running: same ClientToken, same task).
    ImportStarted {
        /// The object.
        object: String,
        /// The task.
        import_task_id: String,
        /// `import-snapshot`.
        upload_method: UploadMethod,
        /// Why the fast path was not taken.
        fallback_reason: String,
        /// The validated settings.
        spec: Box<ImageSpec>,
    },
    /// An image made from this exact upload already exists.
    AlreadyImported {
        /// The object.
        object: String,
        /// The image.
        image_id: String,
        /// Whether this delivery sent the image's `image.registered`, which the invocation
        /// that made it did not (it stopped, or SNS refused, between RegisterImage and it).
        announced: bool,
    },
    /// Another invocation holds the lease on this upload's snapshot and is writing it: it
    /// completes the snapshot, or checkpoints it for the next delivery or the sweep. Nothing
    /// written by this one.
    InProgress {
        /// The object.
        object: String,
        /// The snapshot being written.
        snapshot_id: String,
    },
    /// A newer version of the key exists; its own event imports it.
    Superseded {
        /// The object.
        object: String,
        /// The current version.
        current_version: String,
    },
    /// The upload is invalid; nothing was imported.
    Rejected {
        /// The object.
        object: String,
        /// Every problem.
        problems: Vec<String>,
    },
    /// An AWS call failed; the same event can be retried safely.
    Error {
        /// The object.
        object: String,
        /// The failure.
        error: String,
    },
}

/// What the fast path wrote for one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Transfer {
    /// The disk format decoded (`raw`, `VHD fixed`, `VHD dynamic`, `VMDK stream-optimized`).
    pub format: &'static str,
    /// Bytes of the object read from S3.
    pub bytes_read: u64,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Blocks written with PutSnapshotBlock by this invocation.
    pub blocks_written: u64,
    /// Blocks earlier invocations wrote to the snapshot (its checkpoint), not written again;
    /// ChangedBlocksCount is `blocks_written + blocks_resumed`.
    pub blocks_resumed: u64,
    /// All-zero blocks not written (the snapshot is not encrypted, so they read as zeros).
    pub zero_blocks_skipped: u64,
    /// Whether the snapshot is encrypted (`KMS_KEY_ARN`, or the account's EBS encryption by
    /// default): its all-zero blocks are written, not skipped.
    pub encrypted: bool,
    /// Whether the snapshot was already complete (a duplicate event after a completed write):
    /// nothing was written by this invocation.
    pub reused: bool,
}

/// A sweep step's action, serialized as the report's kebab-case word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepAction {
    /// Listing the import tasks (the step that failed when the sweep could not start).
    List,
    /// Register a completed import's snapshot.
    Register,
    /// Announce an image registered by an earlier run.
    Announce,
    /// Report a failed import.
    ReportFailure,
    /// Warn once about a slow import.
    WarnStale,
    /// Ingest again an upload whose fast-path snapshot ended in error (the `task_id` is the
    /// snapshot's id).
    Resume,
    /// Continue the write of a pending fast-path snapshot from its checkpoint, or refuse it
    /// when its object changed (the `task_id` is the snapshot's id).
    Continue,
    /// Ingest again an upload stopped by a transient error (`crate::deferred`), or give it up
    /// and report it (the `task_id` is the object's URI).
    Retry,
    /// Nothing to do yet.
    Skip,
}

impl StepAction {
    /// The report's word.
    pub fn as_str(self) -> &'static str {
        match self {
            StepAction::List => "list",
            StepAction::Register => "register",
            StepAction::Announce => "announce",
            StepAction::ReportFailure => "report-failure",
            StepAction::WarnStale => "warn-stale",
            StepAction::Resume => "resume",
            StepAction::Continue => "continue",
            StepAction::Retry => "retry",
            StepAction::Skip => "skip",
        }
    }
}

impl std::fmt::Display for StepAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for StepAction {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What one sweep step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The task.
    pub task_id: String,
    /// The planned action (`register`, `announce`, `report-failure`, `warn-stale`, `skip`).
    pub action: StepAction,
    /// What came of it: an image id, a reason, `deferred`, or the error.
    pub result: String,
    /// Whether it failed.
    pub failed: bool,
}

/// The sweep's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SweepReport {
    /// Import tasks of the pipeline seen.
    pub tasks_seen: usize,
    /// One entry per task.
    pub steps: Vec<StepReport>,
    /// Steps not started because the deadline was near.
    pub deferred: usize,
}

/// The invocation's JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Output {
    /// One entry per uploaded object.
    pub ingested: Vec<IngestOutcome>,
    /// Records that were not uploads.
    pub ignored: Vec<String>,
    /// The sweep.
    pub sweep: SweepReport,
}
