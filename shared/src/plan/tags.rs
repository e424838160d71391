//! The tag vocabulary: every tag key the pipeline reads or writes, in one place (images,
//! snapshots, import tasks, S3 objects). The README's "Tags written" section documents them; a
//! test keeps the two in step.

/// AMITools: the image this one was made from.
pub const SOURCE_IMAGE: &str = "source_image";
/// AMITools: the instance this image was made from.
pub const SOURCE_INSTANCE: &str = "source_instance";
/// AMITools: the region of `source_image`.
pub const SOURCE_REGION: &str = "source_region";
/// AMITools: creation time, UTC, `20110909T233600Z`.
pub const CREATE_DATE: &str = "create_date";
/// AMITools: creation time, seconds since the epoch (always agrees with `create_date`).
pub const CREATE_TIMESTAMP: &str = "create_timestamp";

/// Namespace of the pipeline's own tags.
pub const NS: &str = "ami-pipeline:";
/// Marker: the pipeline manages this resource (`true`). Cleanup and the sweep select on it.
pub const MANAGED: &str = "ami-pipeline:managed";
/// The retention group.
pub const FAMILY: &str = "ami-pipeline:family";
/// `s3://bucket/key[?versionId=…]` of the uploaded disk (shortened in the middle past 256 chars).
pub const SOURCE_URI: &str = "ami-pipeline:source-uri";
/// ETag of the uploaded object.
pub const SOURCE_ETAG: &str = "ami-pipeline:source-etag";
/// Version id of the uploaded object (absent on unversioned buckets).
pub const SOURCE_VERSION: &str = "ami-pipeline:source-version";
/// Deterministic identity of the upload (sha256 of bucket, key, version or ETag).
pub const SOURCE_TOKEN: &str = "ami-pipeline:source-token";
/// Disk format of the upload (`RAW`, `VMDK`, `VHD`).
pub const SOURCE_FORMAT: &str = "ami-pipeline:source-format";
/// The import-snapshot task that made the snapshot.
pub const IMPORT_TASK: &str = "ami-pipeline:import-task";
/// How the snapshot was made (`import-snapshot`).
pub const UPLOAD_METHOD: &str = "ami-pipeline:upload-method";
/// The snapshot a copy was made from.
pub const SOURCE_SNAPSHOT: &str = "ami-pipeline:source-snapshot";
/// Number of ancestors (0 for an image made from an upload).
pub const GENERATION: &str = "ami-pipeline:generation";
/// Up to eight further ancestors beyond the parent, nearest first, as `region/ami-…` separated by
/// spaces (cut to 256 characters), so that "ancestors" can walk past a deregistered ancestor.
pub const ANCESTRY: &str = "ami-pipeline:ancestry";
/// When `image.ready` was announced for this image (RFC 3339); it is announced once.
pub const READY_AT: &str = "ami-pipeline:ready-at";
/// When the import was started (RFC 3339), on import tasks.
pub const STARTED_AT: &str = "ami-pipeline:started-at";
/// On import tasks: what the sweep concluded (`registered:ami-…` or `failed`), so each
/// conclusion is announced once.
pub const OUTCOME: &str = "ami-pipeline:outcome";
/// On import tasks: when the last registration attempt was about to call RegisterImage (RFC
/// 3339), written before each one, and first only once the key's object was found still the
/// validated one (after the import completed). So its presence means the object was checked:
/// later attempts register without checking again (a replacement since cannot be in the
/// snapshot, and an earlier attempt may have registered the image already, not listed yet or
/// not announced). And its time tells the sweep when no attempt can still be registering, the
/// condition to give an upload up ([`crate::plan::import::GIVE_UP_REGISTERING_AFTER`]).
pub const REGISTER_ATTEMPTED: &str = "ami-pipeline:register-attempted-at";
/// On import tasks: when the one "still running" warning was sent.
pub const STALE_WARNED: &str = "ami-pipeline:stale-warned";
/// Image: who deprecated it (`cleanup`), written by cleanup before EnableImageDeprecation, so
/// the deprecation can be removed when the policy keeps the image again.
pub const DEPRECATED_BY: &str = "ami-pipeline:deprecated-by";
/// On S3 objects: why the upload was rejected or failed.
pub const OBJECT_STATUS: &str = "ami-pipeline-status";
/// On S3 objects: the reason text of [`OBJECT_STATUS`].
pub const OBJECT_REASON: &str = "ami-pipeline-reason";

/// Tag that protects an image or snapshot from cleanup (any value but `false`).
pub const PROTECT_TAG: &str = "ami-pipeline:protect";
/// Tag publish keeps on an image while copies or shares are in flight (`in-progress`).
pub const PUBLISH_STATE: &str = "ami-pipeline:publish-state";

/// On a copy: the id of the image it was published from.
pub const PUBLISH_SOURCE: &str = "ami-pipeline:publish-source";
/// On the source: when `image.published` was sent (RFC 3339).
pub const PUBLISHED_AT: &str = "ami-pipeline:published-at";
/// On the source: the regions that failed at the last run (space-separated; empty when none),
/// so `image.publish-partial` is sent once per change, not on every schedule. A list longer than
/// a tag value (256 characters: about 17 regions) goes on in [`FAILED_REGIONS_MORE_PREFIX`]`2`,
/// `3`, … (`plan::publish::failed_region_tags`).
pub const FAILED_REGIONS: &str = "ami-pipeline:publish-failed-regions";
/// A failed copy's replacement (never a source): how many copies of its source failed in a row
/// in its region before it (`1` on the first replacement). Written by publish right after the
/// replacement starts; read when the replacement fails too, to back off and stop replacing
/// (`plan::publish::copy_step`).
pub const FAILED_COPIES: &str = "ami-pipeline:publish-failed-copies";
/// The keys that carry on [`FAILED_REGIONS`]'s list: `ami-pipeline:publish-failed-regions:2`, …
pub const FAILED_REGIONS_MORE_PREFIX: &str = "ami-pipeline:publish-failed-regions:";
/// Source image, one key per region (`ami-pipeline:publish-copy-attempt:eu-west-1=1`), written
/// by earlier versions of publish: how many copies to that region failed. Publish no longer
/// writes it (a failed copy's replacement takes its token from the failed copy's id:
/// `plan::publish::Attempt`, so a source with many failed regions cannot run out of its 50
/// tags); it still reads it for a region's first copy, and removes it from copies.
pub const COPY_ATTEMPT_PREFIX: &str = "ami-pipeline:publish-copy-attempt:";

/// Source image, one key per region (`ami-pipeline:publish-replacing:eu-west-1=ami-…`), only
/// while a failed copy there is being replaced: written before the failed copy is deregistered
/// (EC2 keeps AMI names unique in a region, so it must go before its replacement is started),
/// deleted once the replacement is started. The replacement's ClientToken derives from the
/// failed copy's id, so a run that stopped in between is continued by the next one from this
/// key, and overlapping runs ask for the same replacement. Written only where it and the key the
/// replacement adds fit beside the source's tags (`plan::publish::replace_blocked`): a source
/// with many failing regions never passes its 50.
pub const REPLACING_PREFIX: &str = "ami-pipeline:publish-replacing:";

/// Tag-key prefix of the spec on an import task.
pub const SPEC_TAG_PREFIX: &str = "ami-pipeline:spec:";
/// Tag-key prefix of the user's extra tags on an import task.
pub const EXTRA_TAG_PREFIX: &str = "ami-pipeline:extra:";

/// Per-image policy tags (set at upload time through the `tags` setting, or by a manual invoke).
pub mod publish {
    /// Target regions (replaces the default list).
    pub const REGIONS: &str = "publish:regions";
    /// Account ids to share with (replaces the default list).
    pub const ACCOUNTS: &str = "publish:accounts";
    /// Organization ARNs to share with (replaces the default list).
    pub const ORGANIZATIONS: &str = "publish:organizations";
    /// OU ARNs to share with (replaces the default list).
    pub const OUS: &str = "publish:ous";
    /// `true` / `false`: make public (only where `opt-in` or `Always`).
    pub const PUBLIC: &str = "publish:public";
    /// Days until deprecation, `0` for none (replaces the default).
    pub const DEPRECATE_AFTER_DAYS: &str = "publish:deprecate-after-days";
    /// Principals (account ids, organization and OU ARNs) a revoke removed from the function's
    /// default lists for this image, written only when what stays of a default list is too long
    /// for its own tag; applies to a list taken from the defaults, not to one the image sets.
    pub const REVOKED: &str = "publish:revoked";
    /// Every key.
    pub const ALL: [&str; 7] = [
        REGIONS,
        ACCOUNTS,
        ORGANIZATIONS,
        OUS,
        PUBLIC,
        DEPRECATE_AFTER_DAYS,
        REVOKED,
    ];
}

/// Every key (the spec and extra-tag prefixes are in [`PREFIXES`]).
pub const ALL: [&str; 38] = [
    SOURCE_IMAGE,
    SOURCE_INSTANCE,
    SOURCE_REGION,
    CREATE_DATE,
    CREATE_TIMESTAMP,
    MANAGED,
    FAMILY,
    SOURCE_URI,
    SOURCE_ETAG,
    SOURCE_VERSION,
    SOURCE_TOKEN,
    SOURCE_FORMAT,
    IMPORT_TASK,
    UPLOAD_METHOD,
    SOURCE_SNAPSHOT,
    GENERATION,
    ANCESTRY,
    READY_AT,
    STARTED_AT,
    OUTCOME,
    STALE_WARNED,
    REGISTER_ATTEMPTED,
    DEPRECATED_BY,
    OBJECT_STATUS,
    OBJECT_REASON,
    PROTECT_TAG,
    PUBLISH_STATE,
    PUBLISH_SOURCE,
    PUBLISHED_AT,
    FAILED_REGIONS,
    FAILED_COPIES,
    publish::REGIONS,
    publish::ACCOUNTS,
    publish::ORGANIZATIONS,
    publish::OUS,
    publish::PUBLIC,
    publish::DEPRECATE_AFTER_DAYS,
    publish::REVOKED,
];

/// Key prefixes: the spec and the user's extra tags on an import task; publish's copy attempts
/// (earlier versions), replacements in progress, and the rest of a long failed-region list.
pub const PREFIXES: [&str; 5] = [
    SPEC_TAG_PREFIX,
    EXTRA_TAG_PREFIX,
    COPY_ATTEMPT_PREFIX,
    REPLACING_PREFIX,
    FAILED_REGIONS_MORE_PREFIX,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key is documented in the README, and every pipeline key the README's "Tags
    /// written" section names is in the vocabulary.
    #[test]
    fn the_vocabulary_matches_the_readme() {
        let readme = include_str!("../../../README.md");
        for key in ALL.iter().chain(&PREFIXES) {
            assert!(
                readme.contains(&format!("`{key}")),
                "{key} is not in the README"
            );
        }
        let start = readme.find("### Tags written").expect("section");
        let section = &readme[start..];
        let section = &section[..section[4..].find("\n## ").map_or(section.len(), |i| i + 4)];
        for quoted in section.split('`').skip(1).step_by(2) {
            let key = quoted.split('=').next().unwrap_or_default();
            let ours =
                key.starts_with(NS) || key.starts_with("create_") || key.starts_with("source_");
            if ours && !key.contains(' ') {
                assert!(
                    ALL.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p)),
                    "README names {key}, not in the vocabulary"
                );
            }
        }
    }
}
