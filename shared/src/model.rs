//! The domain model: plain data the planners decide on. No SDK types live here; gateways in
//! [`crate::aws`] convert SDK output into these structs at the edge.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Resource tags, ordered by key so that output and comparisons are deterministic.
pub type Tags = BTreeMap<String, String>;

/// A disk image format that EC2 ImportSnapshot accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DiskFormat {
    /// A raw disk (`.raw`, `.img`): no header, any content.
    #[serde(rename = "RAW")]
    Raw,
    /// A VMware sparse/stream-optimized disk (`.vmdk`), starting with the `KDMV` magic.
    #[serde(rename = "VMDK")]
    Vmdk,
    /// A Microsoft VHD (`.vhd`), ending with a 512-byte `conectix` footer.
    #[serde(rename = "VHD")]
    Vhd,
}

impl DiskFormat {
    /// The value ImportSnapshot's `DiskContainer.Format` takes.
    pub fn as_api(self) -> &'static str {
        match self {
            DiskFormat::Raw => "RAW",
            DiskFormat::Vmdk => "VMDK",
            DiskFormat::Vhd => "VHD",
        }
    }

    /// The format named by a file extension (case-insensitive), if it is one we import.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "raw" | "img" => Some(DiskFormat::Raw),
            "vmdk" => Some(DiskFormat::Vmdk),
            "vhd" => Some(DiskFormat::Vhd),
            _ => None,
        }
    }

    /// Parses the API spelling back (used when reading task tags).
    pub fn from_api(s: &str) -> Option<Self> {
        Self::from_extension(s)
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_api())
    }
}

/// An S3 object as an event names it (key already decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    /// Bucket name.
    pub bucket: String,
    /// Object key, decoded (a real key, not the URL-encoded form S3 notifications carry).
    pub key: String,
    /// The version the event is about, when the bucket is versioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

impl ObjectRef {
    /// `s3://bucket/key`, with `?versionId=` when known: the object as shown to people (logs,
    /// messages, errors, the `source-uri` tag), with control and bidi characters escaped by
    /// [`crate::text::escape_controls`]. Never used to address the object: S3 calls take
    /// [`ObjectRef::bucket`] and [`ObjectRef::key`], byte-exact.
    pub fn uri(&self) -> String {
        let uri = match &self.version_id {
            Some(v) => format!("s3://{}/{}?versionId={}", self.bucket, self.key, v),
            None => format!("s3://{}/{}", self.bucket, self.key),
        };
        crate::text::escape_controls(&uri).into_owned()
    }
}

/// Shows [`ObjectRef::uri`] (escaped): the form every log line and message uses.
impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// What HeadObject told us about an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// Version id of the object that was read (None on unversioned buckets).
    pub version_id: Option<String>,
    /// User metadata (`x-amz-meta-*`), keys lowercased without the prefix, as S3 returns them.
    pub metadata: BTreeMap<String, String>,
    /// When the object was last written.
    pub last_modified: Option<DateTime<Utc>>,
}

/// The status of an import-snapshot task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportStatus {
    /// Still running.
    Active,
    /// Finished: the snapshot exists.
    Completed,
    /// Being cancelled or failed (AWS reports failures as `deleting`/`deleted`).
    Deleting,
    /// Failed or cancelled; `StatusMessage` says why.
    Deleted,
    /// Failed: botocore's `SnapshotImported` waiter (ec2 waiters-2.json) fails on
    /// `ImportSnapshotTasks[].SnapshotTaskDetail.Status == "error"`; `StatusMessage` says why.
    Error,
    /// A status this code does not know; treated as still running.
    Unknown(String),
}

impl ImportStatus {
    /// Parses the API's status string.
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => ImportStatus::Active,
            "completed" => ImportStatus::Completed,
            "deleting" => ImportStatus::Deleting,
            "deleted" => ImportStatus::Deleted,
            "error" => ImportStatus::Error,
            other => ImportStatus::Unknown(other.to_owned()),
        }
    }
}

/// An ImportSnapshot task as DescribeImportSnapshotTasks reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportTask {
    /// `import-snap-…`.
    pub id: String,
    /// Where the task is.
    pub status: ImportStatus,
    /// AWS's message (progress stage, or the failure reason).
    pub status_message: Option<String>,
    /// Percent done, while active.
    pub progress: Option<String>,
    /// The snapshot, once completed (AWS returns "" while running; that becomes None).
    pub snapshot_id: Option<String>,
    /// Source bucket, from the task's UserBucket.
    pub bucket: Option<String>,
    /// Source key, from the task's UserBucket.
    pub key: Option<String>,
    /// The task's tags: the pipeline stores the validated spec here.
    pub tags: Tags,
}

/// An AMI as DescribeImages reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Image {
    /// `ami-…`.
    pub id: String,
    /// The image name.
    pub name: String,
    /// `pending`, `available`, `failed`, `deregistered`, `disabled`, …
    pub state: String,
    /// Why the image is in its state, as EC2 says (StateReason `Code: Message`): why a copy
    /// failed, for one.
    pub state_reason: Option<String>,
    /// CreationDate as reported.
    pub creation_date: Option<String>,
    /// Architecture (`x86_64`, `arm64`).
    pub architecture: Option<String>,
    /// Boot mode, when set.
    pub boot_mode: Option<String>,
    /// ENA support flag.
    pub ena_support: Option<bool>,
    /// Root device name.
    pub root_device_name: Option<String>,
    /// Snapshot ids in the block device mappings, in mapping order.
    pub snapshot_ids: Vec<String>,
    /// Whether any EBS volume of its block device mappings is encrypted (such an image can
    /// never be made public).
    pub encrypted: bool,
    /// Tags.
    pub tags: Tags,
    /// The instance CreateImage made it from (EC2's own record).
    pub source_instance_id: Option<String>,
    /// The image CopyImage copied it from (EC2's own record).
    pub source_image_id: Option<String>,
    /// The region of [`Image::source_image_id`].
    pub source_image_region: Option<String>,
    /// Launchable by everyone.
    pub public: bool,
    /// When it is (or was) deprecated, as reported.
    pub deprecation_time: Option<String>,
    /// Last launch, as reported (24 h delay in AWS).
    pub last_launched_time: Option<String>,
    /// `disabled`, `enabled`, `enabled-with-cooldown`, … as reported.
    pub deregistration_protection: Option<String>,
    /// The owning account.
    pub owner_id: Option<String>,
}

/// An EBS snapshot as DescribeSnapshots reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Snapshot {
    /// `snap-…`.
    pub id: String,
    /// Size in GiB.
    pub volume_size_gib: Option<i32>,
    /// State (`pending`, `completed`, `error`, …).
    pub state: Option<String>,
    /// Tags.
    pub tags: Tags,
    /// When the snapshot was started (RFC 3339), as reported.
    pub start_time: Option<String>,
}

/// A condition on what a listing returns; the EC2 gateway turns it into the API's filter, so
/// no SDK filter is built outside `aws/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// Tag `key` has one of the values.
    Tag(String, Vec<String>),
    /// Tag `key` is present, whatever its value.
    TagKey(String),
    /// The resource's state is one of these.
    State(Vec<String>),
    /// The image's name is this one (images only: DescribeImages' `name` filter).
    Name(String),
}

impl Select {
    /// Tag `key` has one of `values`.
    pub fn tag(key: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Select::Tag(key.to_owned(), values.into_iter().map(Into::into).collect())
    }

    /// Tag `key` is present.
    pub fn tag_key(key: &str) -> Self {
        Select::TagKey(key.to_owned())
    }

    /// The state is one of `values`.
    pub fn state(values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Select::State(values.into_iter().map(Into::into).collect())
    }

    /// The image's name is `name`.
    pub fn name(name: &str) -> Self {
        Select::Name(name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_shown_escaped_and_addressed_exactly() {
        let o = ObjectRef {
            bucket: "b".into(),
            key: "up/a\u{1b}]0;x\u{7}\u{202e}war.raw".into(),
            version_id: Some("v1".into()),
        };
        assert_eq!(
            o.to_string(),
            "s3://b/up/a\\u{1b}]0;x\\u{7}\\u{202e}war.raw?versionId=v1"
        );
        assert_eq!(o.uri(), o.to_string());
        assert_eq!(o.key.chars().count(), 18, "the key itself is untouched");
    }
}
