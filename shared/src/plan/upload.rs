//! Which way an upload becomes a snapshot, and what the fast path writes on it.
//!
//! - **ebs-direct** (the fast path, default): create-image decodes the object itself and writes
//!   the snapshot with the EBS direct APIs (StartSnapshot → PutSnapshotBlock … →
//!   CompleteSnapshot), then registers the AMI in the same invocation.
//! - **import-snapshot** (the fallback): VM Import's ImportSnapshot, finished by the sweep.
//!
//! [`choose`] is the rule: the fallback is taken when the function is configured for it
//! (`UPLOAD_METHOD=import-snapshot`), when the stream decoder refuses the format (a VMDK that
//! is not stream-optimized, a differencing VHD, …: VM Import may still take it, or report why
//! not), or when the disk is larger than one invocation is allowed to write
//! (`FAST_PATH_MAX_GIB`: resume across invocations is not implemented, so the fast path only
//! takes what it can finish before the Lambda deadline).

use super::import::{Registration, upload_token};
use super::lineage;
use super::naming;
use super::spec::ImageSpec;
use crate::model::{DiskFormat, ObjectRef, Tags};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// How a snapshot was made: the value of [`lineage::UPLOAD_METHOD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadMethod {
    /// Written block by block with the EBS direct APIs.
    EbsDirect,
    /// Imported by VM Import (ImportSnapshot).
    ImportSnapshot,
}

impl UploadMethod {
    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadMethod::EbsDirect => "ebs-direct",
            UploadMethod::ImportSnapshot => "import-snapshot",
        }
    }
}

impl std::fmt::Display for UploadMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The function-wide setting (`UPLOAD_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodSetting {
    /// The fast path for every upload it can take, ImportSnapshot for the rest (`auto`).
    Auto,
    /// ImportSnapshot for every upload (`import-snapshot`).
    ImportSnapshot,
}

impl MethodSetting {
    /// Parses the variable's value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(MethodSetting::Auto),
            "import-snapshot" => Some(MethodSetting::ImportSnapshot),
            _ => None,
        }
    }
}

/// What the stream decoder made of the object's two ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// It decodes this format; the virtual disk has this many bytes.
    Decodable {
        /// Virtual disk size in bytes.
        virtual_size: u64,
    },
    /// A format or variant the decoder deliberately does not take (its message).
    Unsupported(String),
}

/// The decision for one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Write the snapshot with the EBS direct APIs.
    EbsDirect,
    /// Start ImportSnapshot; the reason is reported in the output and logs.
    ImportSnapshot {
        /// Why the fast path was not taken.
        reason: String,
    },
}

/// The rule described in the module documentation. `max_gib` bounds the virtual disk the fast
/// path writes in one invocation.
pub fn choose(setting: MethodSetting, probed: &Probed, max_gib: u64) -> Choice {
    match (setting, probed) {
        (MethodSetting::ImportSnapshot, _) => Choice::ImportSnapshot {
            reason: "UPLOAD_METHOD=import-snapshot".into(),
        },
        (MethodSetting::Auto, Probed::Unsupported(why)) => Choice::ImportSnapshot {
            reason: format!("the stream decoder does not take it ({why})"),
        },
        (MethodSetting::Auto, Probed::Decodable { virtual_size })
            if *virtual_size > max_gib << 30 =>
        {
            Choice::ImportSnapshot {
                reason: format!(
                    "the disk ({} GiB) is larger than FAST_PATH_MAX_GIB={max_gib}, what one invocation writes (resume across invocations is not implemented)",
                    virtual_size.div_ceil(1 << 30)
                ),
            }
        }
        (MethodSetting::Auto, Probed::Decodable { .. }) => Choice::EbsDirect,
    }
}

/// Minutes after which AWS cancels a fast-path snapshot left pending (no block written, or not
/// completed after its last write: StartSnapshot `Timeout`, 10–4320). A crashed invocation's
/// snapshot ends in `error` after this; a redelivered event within it attaches to the snapshot
/// (same ClientToken) and rewrites its blocks.
pub const SNAPSHOT_TIMEOUT_MINUTES: i32 = 60;

/// The tags StartSnapshot writes on the new snapshot: the pipeline's own keys only (managed
/// marker, family, the upload's lineage, the method), so the role's `aws:TagKeys` condition can
/// list them; the user's extra tags and the AMITools dates come with the registration's
/// CreateTags, as on an imported snapshot. Nothing here depends on the clock: a duplicate event
/// sends the same StartSnapshot parameters with the same ClientToken and gets the same snapshot
/// (different parameters would be `ConflictException`).
pub fn snapshot_tags(
    spec: &ImageSpec,
    object: &ObjectRef,
    etag: Option<&str>,
    format: DiskFormat,
) -> Tags {
    let mut tags = Tags::new();
    tags.insert(lineage::MANAGED.into(), "true".into());
    tags.insert(lineage::FAMILY.into(), spec.family.clone());
    tags.insert(
        lineage::SOURCE_URI.into(),
        // The EBS direct API's tag values are at most 255 characters (EC2's 256).
        lineage::fit_ebs_tag_value(&object.uri()),
    );
    tags.insert(lineage::SOURCE_TOKEN.into(), upload_token(object, etag));
    tags.insert(lineage::SOURCE_FORMAT.into(), format.as_api().into());
    tags.insert(
        lineage::UPLOAD_METHOD.into(),
        UploadMethod::EbsDirect.as_str().into(),
    );
    tags.insert(lineage::GENERATION.into(), "0".into());
    if let Some(etag) = etag {
        tags.insert(lineage::SOURCE_ETAG.into(), etag.to_owned());
    }
    if let Some(v) = &object.version_id {
        tags.insert(lineage::SOURCE_VERSION.into(), v.clone());
    }
    tags
}

/// The registration of a fast-path snapshot: the name (explicit, or automatic from the prefix,
/// the snapshot's start time — the same for every duplicate event — and the upload token) and
/// the tags of the image and snapshot (the snapshot's lineage, the user's extra tags, the date
/// pair at the snapshot's start). A function of the snapshot alone: every invocation that
/// registers it computes the same (issue #15).
pub fn registration(
    spec: &ImageSpec,
    snapshot_id: &str,
    snapshot_tags: &Tags,
    started_at: DateTime<Utc>,
) -> Registration {
    let source_token = snapshot_tags
        .get(lineage::SOURCE_TOKEN)
        .cloned()
        .unwrap_or_default();
    let (name, name_is_explicit) = match &spec.name {
        Some(n) => (n.clone(), true),
        None => (
            naming::auto_name(&spec.name_prefix, started_at, &source_token, 0),
            false,
        ),
    };
    let mut tags = spec.extra_tags.clone();
    tags.extend(snapshot_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    // The snapshot's start, not this invocation's clock: every invocation registering this
    // snapshot (duplicate events overlap) writes the same tags on it before RegisterImage, so
    // the one that loses the race cannot leave the snapshot dated otherwise than the image.
    tags.extend(lineage::date_tags(started_at));
    Registration {
        name,
        name_is_explicit,
        snapshot_id: snapshot_id.to_owned(),
        spec: spec.clone(),
        tags,
        source_token,
        started_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::spec;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn the_fast_path_takes_what_it_decodes_within_the_size_bound() {
        let small = Probed::Decodable {
            virtual_size: 3 << 30,
        };
        assert_eq!(choose(MethodSetting::Auto, &small, 8), Choice::EbsDirect);
        assert_eq!(
            choose(MethodSetting::Auto, &small, 2),
            Choice::ImportSnapshot {
                reason: "the disk (3 GiB) is larger than FAST_PATH_MAX_GIB=2, what one invocation writes (resume across invocations is not implemented)".into()
            }
        );
        assert_eq!(
            choose(MethodSetting::ImportSnapshot, &small, 8),
            Choice::ImportSnapshot {
                reason: "UPLOAD_METHOD=import-snapshot".into()
            }
        );
        assert_eq!(
            choose(
                MethodSetting::Auto,
                &Probed::Unsupported("VMDK monolithicSparse".into()),
                8
            ),
            Choice::ImportSnapshot {
                reason: "the stream decoder does not take it (VMDK monolithicSparse)".into()
            }
        );
        assert_eq!(MethodSetting::parse("auto"), Some(MethodSetting::Auto));
        assert_eq!(MethodSetting::parse("ebs"), None);
    }

    #[test]
    fn snapshot_tags_are_the_pipelines_keys_and_feed_the_registration() {
        let object = ObjectRef {
            bucket: "b".into(),
            key: "web/app.raw".into(),
            version_id: Some("v1".into()),
        };
        let spec = spec::resolve(&[], &object.key).expect("defaults are valid");
        let mut spec = spec;
        spec.extra_tags.insert("team".into(), "web".into());
        let tags = snapshot_tags(&spec, &object, Some("e"), DiskFormat::Raw);
        assert!(tags.keys().all(|k| k.starts_with(lineage::NS)), "{tags:?}");
        assert_eq!(tags[lineage::UPLOAD_METHOD], "ebs-direct");
        assert_eq!(tags[lineage::MANAGED], "true");
        assert_eq!(
            tags[lineage::SOURCE_TOKEN],
            upload_token(&object, Some("e"))
        );
        let reg = registration(&spec, "snap-1", &tags, now());
        assert_eq!(reg.tags["team"], "web");
        assert_eq!(reg.tags[lineage::UPLOAD_METHOD], "ebs-direct");
        // The dates are the snapshot's start, the instant the name carries (see below).
        assert_eq!(reg.tags[lineage::CREATE_DATE], lineage::create_date(now()));
        assert!(!reg.tags.contains_key(lineage::IMPORT_TASK));
        assert!(!reg.name_is_explicit);
        assert_eq!(
            reg.name,
            naming::auto_name(&spec.name_prefix, now(), &reg.source_token, 0)
        );
    }

    /// Issue #15, found by the chaos harness (seed 7, 8 uploads, each event x3, fault rate
    /// 0.1): two invocations of one upload register it seconds apart; each tags the snapshot
    /// before RegisterImage, the loser adopts the winner's image, and the snapshot was left with
    /// the loser's create_date, the image with the winner's. tag-lineage then refused the image
    /// for good (`image.lineage-conflict` on every run, no `image.ready`, never published). Every
    /// invocation must compute the same registration tags.
    #[test]
    fn every_invocation_registering_one_snapshot_writes_the_same_tags() {
        let object = ObjectRef {
            bucket: "b".into(),
            key: "web/app.raw".into(),
            version_id: Some("v1".into()),
        };
        let spec = spec::resolve(&[], &object.key).expect("defaults are valid");
        let tags = snapshot_tags(&spec, &object, Some("e"), DiskFormat::Raw);
        // Registered by two invocations seconds apart: the registration no longer takes the
        // invocation's clock at all, and its dates are the snapshot's start.
        let first = registration(&spec, "snap-1", &tags, now());
        let second = registration(&spec, "snap-1", &tags, now());
        assert_eq!(first.tags, second.tags);
        assert_eq!(first.name, second.name);
        assert_eq!(
            first.tags[lineage::CREATE_DATE],
            lineage::create_date(now())
        );
        assert_eq!(
            first.tags[lineage::CREATE_TIMESTAMP],
            now().timestamp().to_string()
        );
    }
}
