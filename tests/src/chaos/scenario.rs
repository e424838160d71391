//! What a chaos run is made of: the uploads (real disk images in three formats, one of them
//! too large for the EBS direct fast path so it goes through ImportSnapshot and the sweep) and
//! the events AWS would deliver for them, in the shapes AWS uses.

use crate::disks;
use chrono::Utc;
use serde_json::{Value, json};

/// Publish regions of a chaos run (`PUBLISH_REGIONS`); tag-lineage and cleanup cover them too.
pub const COPY_REGIONS: [&str; 2] = ["us-west-2", "eu-west-1"];
/// The account images are shared with (`SHARE_ACCOUNTS`).
pub const SHARE_ACCOUNT: &str = "111122223333";
/// The largest disk the fast path writes (`FAST_PATH_MAX_GIB`): the 2 GiB sparse VMDKs go to
/// ImportSnapshot.
pub const FAST_PATH_MAX_GIB: &str = "1";

/// The kind of disk an upload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A 1 MiB raw disk (MBR, one partition): EBS direct fast path.
    Raw,
    /// A fixed VHD converted with `qemu-img` from a 2 MiB raw disk: fast path.
    Vhd,
    /// A stream-optimized VMDK converted with `qemu-img`: fast path.
    Vmdk,
    /// An empty 2 GiB stream-optimized VMDK: over `FAST_PATH_MAX_GIB`, so ImportSnapshot.
    LargeVmdk,
}

impl DiskKind {
    /// The kind of the `index`-th upload (the four in turn; the second goes through
    /// ImportSnapshot, so even two uploads take both paths).
    pub fn of(index: usize) -> Self {
        [
            DiskKind::Raw,
            DiskKind::LargeVmdk,
            DiskKind::Vmdk,
            DiskKind::Vhd,
        ][index % 4]
    }

    fn extension(self) -> &'static str {
        match self {
            DiskKind::Raw => "raw",
            DiskKind::Vhd => "vhd",
            DiskKind::Vmdk | DiskKind::LargeVmdk => "vmdk",
        }
    }

    /// Whether this upload goes through ImportSnapshot (and the sweep).
    pub fn imported(self) -> bool {
        self == DiskKind::LargeVmdk
    }
}

/// One upload of a chaos run.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Its position (0-based).
    pub index: usize,
    /// The object key: two uploads per folder, so two uploads share each family.
    pub key: String,
    /// The disk kind.
    pub kind: DiskKind,
    /// The disk's bytes.
    pub bytes: Vec<u8>,
    /// Whether an image is made from an instance of its first copy (a grandchild in lineage).
    pub derived: bool,
}

impl Upload {
    /// The family the pipeline gives it (its folder).
    pub fn family(&self) -> String {
        self.key.split('/').next().unwrap_or_default().to_owned()
    }

    /// A short name for reports: `u03`.
    pub fn name(&self) -> String {
        format!("u{:02}", self.index)
    }
}

/// A raw disk whose second sector carries `index`, so every upload's content differs.
fn marked_raw(mib: u64, index: usize) -> Vec<u8> {
    let mut disk = disks::raw_disk(mib);
    let mark = format!("ami-pipeline chaos upload {index}");
    disk[512..512 + mark.len()].copy_from_slice(mark.as_bytes());
    disk
}

/// The `n` uploads of a run (made with `qemu-img`; the same bytes for every run and seed).
pub fn uploads(n: usize) -> Vec<Upload> {
    (0..n)
        .map(|index| {
            let kind = DiskKind::of(index);
            let bytes = match kind {
                DiskKind::Raw => marked_raw(1, index),
                DiskKind::Vhd => disks::convert(&marked_raw(2, index), "vpc"),
                DiskKind::Vmdk => disks::convert(&marked_raw(2, index), "vmdk"),
                DiskKind::LargeVmdk => disks::empty_vmdk(2),
            };
            Upload {
                index,
                key: format!(
                    "chaos-f{:02}/disk-{index:02}.{}",
                    index / 2,
                    kind.extension()
                ),
                kind,
                bytes,
                derived: index % 3 == 0,
            }
        })
        .collect()
}

/// An uploaded object as the events name it.
#[derive(Debug, Clone)]
pub struct Object {
    /// Bucket.
    pub bucket: String,
    /// Key (not encoded).
    pub key: String,
    /// ETag without quotes.
    pub etag: String,
    /// Version id (versioned bucket).
    pub version: Option<String>,
    /// Size in bytes.
    pub size: usize,
}

/// The S3 bucket notification record AWS sends for `o` (key form-encoded, as S3 does).
pub fn s3_notification(o: &Object) -> Value {
    let key: String = form_urlencoded::byte_serialize(o.key.as_bytes()).collect();
    let mut object = json!({"key": key.replace("%2F", "/"), "size": o.size, "eTag": o.etag,
        "sequencer": "0A1B2C3D4E5F678901"});
    if let Some(v) = &o.version {
        object["versionId"] = json!(v);
    }
    json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": Utc::now().to_rfc3339(), "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "example"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "ami-uploads",
               "bucket": {"name": o.bucket, "ownerIdentity": {"principalId": "EXAMPLE"},
                          "arn": format!("arn:aws:s3:::{}", o.bucket)},
               "object": object}
    }]})
}

/// The EventBridge "Object Created" event AWS sends for `o`.
pub fn object_created(o: &Object) -> Value {
    let mut object = json!({"key": o.key, "size": o.size, "etag": o.etag,
        "sequencer": "00617F08299329D189"});
    if let Some(v) = &o.version {
        object["version-id"] = json!(v);
    }
    json!({"version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created", "source": "aws.s3", "account": "123456789012",
        "time": Utc::now().to_rfc3339(), "region": "us-east-1",
        "resources": [format!("arn:aws:s3:::{}", o.bucket)],
        "detail": {"version": "0", "bucket": {"name": o.bucket}, "object": object,
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
                   "source-ip-address": "198.51.100.4", "reason": "PutObject"}})
}

/// An EventBridge "Scheduled Event" of rule `rule`.
pub fn scheduled(rule: &str) -> Value {
    json!({"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
        "time": Utc::now().to_rfc3339(), "region": "us-east-1",
        "resources": [format!("arn:aws:events:us-east-1:123456789012:rule/{rule}")],
        "detail": {}})
}
