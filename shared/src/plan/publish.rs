//! Publish planning: which policy applies to an image, and the next step in each region.
//!
//! **Policy** ([`resolve`]): the function's defaults (environment, set by template
//! parameters), overridden per image by the `publish:*` tags a manual invoke wrote
//! ([`override_tags`]). An upload cannot set them (create-image refuses the keys, and only
//! publish's role may write them). Lists are space-
//! or comma-separated. Target regions are an explicit allow list minus a deny list: an empty
//! list publishes in the image's own region only, never "all regions"; a region on both lists
//! is an error. Public sharing needs the deployment's [`PublicMode`] to allow it.
//!
//! **State** lives on the source image: [`PUBLISH_STATE`] `in-progress` while copies or shares
//! are outstanding (cleanup never touches it), then `published`. Copies carry
//! [`PUBLISH_SOURCE`] (the source image id), which is how a later run finds them.
//!
//! **Steps** per target region ([`copy_step`]) and per region's permissions ([`Grants`]):
//! pure functions of what was read, table-tested below.

use super::ids;
use super::lineage::MAX_TAG_VALUE;
use super::tags::{IMPORT_TASK, MANAGED, READY_AT};
use crate::model::{Image, Tags};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub use super::retention::PUBLISH_STATE;

/// [`PUBLISH_STATE`] while copies or shares are outstanding.
pub const IN_PROGRESS: &str = "in-progress";
/// [`PUBLISH_STATE`] once every region is published and verified.
pub const PUBLISHED: &str = "published";
/// [`PUBLISH_STATE`] on a copy (a copy is never itself a publish source).
pub const COPY: &str = "copy";

pub use super::tags::publish as tags;
pub use super::tags::{
    COPY_ATTEMPT_PREFIX, FAILED_COPIES, FAILED_REGIONS, FAILED_REGIONS_MORE_PREFIX, PUBLISH_SOURCE,
    PUBLISHED_AT, REPLACING_PREFIX,
};

/// EC2 refuses a deprecation time more than 10 years ahead.
pub const MAX_DEPRECATE_DAYS: i64 = 3650;
/// …and, for a public image, more than 2 years after its creation.
pub const MAX_PUBLIC_DEPRECATE_DAYS: i64 = 730;

/// Whether images may be made public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublicMode {
    /// Never (the default): a request for public is refused.
    Never,
    /// Only images that ask for it (`publish:public=true` or a manual `"public": true`).
    OptIn,
    /// Every image, unless it says `publish:public=false`.
    Always,
}

impl PublicMode {
    /// Parses `never` / `opt-in` / `always`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "never" => Some(PublicMode::Never),
            "opt-in" => Some(PublicMode::OptIn),
            "always" => Some(PublicMode::Always),
            _ => None,
        }
    }
}

/// The function's defaults (from the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Target regions.
    pub regions: Vec<String>,
    /// Regions never published to, whatever an image asks.
    pub deny_regions: BTreeSet<String>,
    /// Account ids.
    pub accounts: Vec<String>,
    /// Organization ARNs.
    pub organizations: Vec<String>,
    /// OU ARNs.
    pub ous: Vec<String>,
    /// Public sharing.
    pub public: PublicMode,
    /// Days until deprecation (0: none).
    pub deprecate_after_days: i64,
}

impl Defaults {
    /// Every problem of the defaults themselves (a config error).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        check_principals(
            &self.regions,
            &self.accounts,
            &self.organizations,
            &self.ous,
            &mut p,
        );
        for r in &self.deny_regions {
            if !ids::is_region(r) {
                p.push(format!("deny region {r:?} is not an AWS region"));
            }
        }
        for r in &self.regions {
            if self.deny_regions.contains(r) {
                p.push(format!("region {r} is both a target and denied"));
            }
        }
        check_days(
            self.deprecate_after_days,
            self.public == PublicMode::Always,
            &mut p,
        );
        p
    }
}

/// The effective policy of one image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Regions to copy to (the image's own region excluded).
    pub regions: BTreeSet<String>,
    /// Account ids.
    pub accounts: BTreeSet<String>,
    /// Organization ARNs.
    pub organizations: BTreeSet<String>,
    /// OU ARNs.
    pub ous: BTreeSet<String>,
    /// Public.
    pub public: bool,
    /// Days until deprecation (0: none).
    pub deprecate_after_days: i64,
}

/// Splits a list written with spaces and/or commas.
pub fn split_list(s: &str) -> Vec<String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn check_principals(
    regions: &[String],
    accounts: &[String],
    organizations: &[String],
    ous: &[String],
    p: &mut Vec<String>,
) {
    for r in regions {
        if !ids::is_region(r) {
            p.push(format!("region {r:?} is not an AWS region"));
        }
    }
    for a in accounts {
        if !ids::is_account_id(a) {
            p.push(format!("account {a:?} is not a 12-digit account id"));
        }
    }
    for o in organizations {
        if !ids::is_organization_arn(o) {
            p.push(format!(
                "organization {o:?} is not an organization ARN (arn:aws:organizations::<account>:organization/o-…)"
            ));
        }
    }
    for o in ous {
        if !ids::is_ou_arn(o) {
            p.push(format!(
                "OU {o:?} is not an OU ARN (arn:aws:organizations::<account>:ou/o-…/ou-…)"
            ));
        }
    }
}

fn check_days(days: i64, public: bool, p: &mut Vec<String>) {
    if !(0..=MAX_DEPRECATE_DAYS).contains(&days) {
        p.push(format!(
            "deprecate-after-days {days} is outside 0..={MAX_DEPRECATE_DAYS} (EC2 accepts at most 10 years)"
        ));
    } else if public && days > MAX_PUBLIC_DEPRECATE_DAYS {
        p.push(format!(
            "deprecate-after-days {days} is more than {MAX_PUBLIC_DEPRECATE_DAYS}: EC2 limits a public image's deprecation to 2 years after its creation"
        ));
    }
}

fn parse_bool(key: &str, v: &str, p: &mut Vec<String>) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            p.push(format!("{key}={v:?} is not true or false"));
            None
        }
    }
}

/// The policy of an image in `home` with `image_tags`: defaults, then its `publish:*` tags.
/// Every problem is listed (`Err`); nothing may be changed when there is one.
pub fn resolve(defaults: &Defaults, image_tags: &Tags, home: &str) -> Result<Policy, Vec<String>> {
    let mut p = Vec::new();
    // What revokes removed from the defaults for this image (a list the image sets is its own).
    let revoked: BTreeSet<String> = image_tags
        .get(tags::REVOKED)
        .map(|v| split_list(v).into_iter().collect())
        .unwrap_or_default();
    let list = |key: &str, default: &[String]| -> Vec<String> {
        image_tags
            .get(key)
            .map(|v| split_list(v))
            .unwrap_or_else(|| {
                default
                    .iter()
                    .filter(|p| !revoked.contains(*p))
                    .cloned()
                    .collect()
            })
    };
    let regions = list(tags::REGIONS, &defaults.regions);
    let accounts = list(tags::ACCOUNTS, &defaults.accounts);
    let organizations = list(tags::ORGANIZATIONS, &defaults.organizations);
    let ous = list(tags::OUS, &defaults.ous);
    check_principals(&regions, &accounts, &organizations, &ous, &mut p);
    for r in &regions {
        if defaults.deny_regions.contains(r) {
            p.push(format!("region {r} is denied by PUBLISH_DENY_REGIONS"));
        } else if !defaults.regions.is_empty()
            && r != home
            && ids::is_region(r)
            && !defaults.regions.contains(r)
        {
            // A set PUBLISH_REGIONS is the allow list of copy targets: an image or a manual
            // invoke may choose among them, never add one (IAM refuses CopyImage elsewhere too:
            // template.yaml, CopyOnlyIntoPublishRegions).
            p.push(format!(
                "region {r} is not in PUBLISH_REGIONS ({}), the only regions publish copies to",
                defaults.regions.join(",")
            ));
        }
    }
    let asked = image_tags
        .get(tags::PUBLIC)
        .and_then(|v| parse_bool(tags::PUBLIC, v, &mut p));
    let public = match (defaults.public, asked) {
        (PublicMode::Never, Some(true)) => {
            p.push("public sharing was asked for but PUBLIC=never forbids it".to_owned());
            false
        }
        (PublicMode::Never, _) => false,
        (PublicMode::OptIn, asked) => asked.unwrap_or(false),
        (PublicMode::Always, asked) => asked.unwrap_or(true),
    };
    let days = match image_tags.get(tags::DEPRECATE_AFTER_DAYS) {
        None => defaults.deprecate_after_days,
        Some(v) => v.trim().parse::<i64>().unwrap_or_else(|_| {
            p.push(format!(
                "{}={v:?} is not a whole number of days",
                tags::DEPRECATE_AFTER_DAYS
            ));
            0
        }),
    };
    check_days(days, public, &mut p);
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Policy {
        regions: regions.into_iter().filter(|r| r != home).collect(),
        accounts: accounts.into_iter().collect(),
        organizations: organizations.into_iter().collect(),
        ous: ous.into_iter().collect(),
        public,
        deprecate_after_days: days,
    })
}

/// A manual invoke's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `regions`.
    pub regions: Option<Vec<String>>,
    /// `accounts`.
    pub accounts: Option<Vec<String>>,
    /// `organizations`.
    pub organizations: Option<Vec<String>>,
    /// `ous`.
    pub ous: Option<Vec<String>>,
    /// `public`.
    pub public: Option<bool>,
    /// `deprecate_after_days`.
    pub deprecate_after_days: Option<i64>,
}

impl Overrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

/// The `publish:*` tags that record `overrides` on the image (so the schedule, which only sees
/// the image, continues with them). `Err` lists every value too long for a tag.
pub fn override_tags(overrides: &Overrides) -> Result<Tags, Vec<String>> {
    let mut out = Tags::new();
    let mut p = Vec::new();
    let mut put = |key: &str, value: String| {
        if value.chars().count() > MAX_TAG_VALUE {
            p.push(format!(
                "{key}: {} characters do not fit a tag value ({MAX_TAG_VALUE}); set long lists in the function's environment",
                value.chars().count()
            ));
        } else {
            out.insert(key.to_owned(), value);
        }
    };
    for (key, list) in [
        (tags::REGIONS, &overrides.regions),
        (tags::ACCOUNTS, &overrides.accounts),
        (tags::ORGANIZATIONS, &overrides.organizations),
        (tags::OUS, &overrides.ous),
    ] {
        if let Some(l) = list {
            put(key, l.join(" "));
        }
    }
    if let Some(b) = overrides.public {
        put(tags::PUBLIC, b.to_string());
    }
    if let Some(d) = overrides.deprecate_after_days {
        put(tags::DEPRECATE_AFTER_DAYS, d.to_string());
    }
    if p.is_empty() { Ok(out) } else { Err(p) }
}

/// Which copy of a region a CopyImage request makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt<'a> {
    /// The region's first copy. The number is what an earlier version of publish recorded in a
    /// [`COPY_ATTEMPT_PREFIX`]`<region>` tag on the source after each failed copy ([`copy_attempt`];
    /// 0 without one), so a source it left such a tag on does not get a dead copy's token again.
    First(u32),
    /// The replacement of the failed copy with this id.
    Replacing(&'a str),
}

/// The CopyImage idempotency token of `source` (in `home`) copied to `destination`, encrypted
/// with `key` when given: the same request always carries the same token, so a retried call
/// returns the first copy, and another request (a replacement, or a key set since: EC2
/// answers IdempotentParameterMismatch for a token reused with other parameters) another one.
/// Without a key, the first copy's token is the one copies were always made with.
///
/// A replacement's token derives from the failed copy's id (kept on the source in
/// [`REPLACING_PREFIX`]`<region>` from before the failed copy is deregistered until the
/// replacement is started): every run that finds the same failed copy asks for the same
/// replacement, and no count kept on the source can be lost between overlapping runs or run
/// out of the source's 50 tags.
pub fn client_token(
    home: &str,
    source: &str,
    destination: &str,
    attempt: Attempt<'_>,
    key: Option<&str>,
) -> String {
    let mut seed = match attempt {
        Attempt::First(0) => format!("ami-pipeline/publish/{home}/{source}/{destination}"),
        Attempt::First(n) => format!("ami-pipeline/publish/{home}/{source}/{destination}/{n}"),
        Attempt::Replacing(failed) => {
            format!("ami-pipeline/publish/{home}/{source}/{destination}/replaces/{failed}")
        }
    };
    if let Some(key) = key {
        seed.push_str("/key=");
        seed.push_str(key);
    }
    let digest = Sha256::digest(seed);
    format!("publish-{}", &hex::encode(digest)[..40])
}

/// The KMS key the copy of `source` into `region` is encrypted with: the region's key in
/// `keys` (publish's `COPY_KMS_KEYS`) when the copy will be encrypted anyway, because the
/// source is, or because the region encrypts new EBS snapshots by default
/// (`encrypts_by_default`: GetEbsEncryptionByDefault; the copy of an unencrypted snapshot is
/// then encrypted with the region's default key for EBS, `aws/ebs` unless the account changed
/// it, which EC2 never shares with another account). None otherwise (CopyImage's default: an
/// unencrypted source stays unencrypted): an unencrypted image's copy is never encrypted by
/// this alone, since encrypted it could no longer be made public.
pub fn copy_key<'a>(
    source: &Image,
    keys: &'a BTreeMap<String, String>,
    region: &str,
    encrypts_by_default: bool,
) -> Option<&'a str> {
    (source.encrypted || encrypts_by_default)
        .then(|| keys.get(region).map(String::as_str))
        .flatten()
}

/// Why a publication that makes the image `public` cannot copy an unencrypted image into a
/// region that encrypts new EBS snapshots by default (`encrypts_by_default`): the region
/// would encrypt the copy, and EC2 makes no encrypted image public. `None` when it can (not
/// public, or the region does not encrypt by default; an encrypted source is refused for the
/// whole publication: [`public_refusal`]).
/// Checked before the copy is started, so no copy is made that could never be shared.
pub fn public_copy_refusal(public: bool, encrypts_by_default: bool) -> Option<&'static str> {
    (public && encrypts_by_default).then_some(
        "not copied: public sharing was asked for, but this region encrypts new EBS snapshots by default (EBS encryption by default), so the copy would be encrypted, and EC2 makes no image with encrypted volumes public; turn encryption by default off in this region (DisableEbsEncryptionByDefault) or publish publicly without it",
    )
}

/// The copy count an earlier version of publish recorded for `region` on the source (its
/// [`COPY_ATTEMPT_PREFIX`]`<region>` tag; 0 when absent or unreadable). Publish no longer
/// writes it: see [`Attempt`].
pub fn copy_attempt(source_tags: &Tags, region: &str) -> u32 {
    source_tags
        .get(&format!("{COPY_ATTEMPT_PREFIX}{region}"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A replacement record on the source ([`REPLACING_PREFIX`]`<region>`): its value is the
/// failed copy's id, then `/` and the copies that failed in a row up to it when there were any
/// ([`failures_through`]; `ami-0abc/2`), so that a run that continues a stopped replacement
/// records the same count on it ([`FAILED_COPIES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The failed copy being replaced.
    pub failed: &'a str,
    /// The copies that failed in a row up to it; 0 when the record does not say (records of
    /// earlier versions hold the id alone).
    pub failures: u32,
    /// The tag's value as written (DeleteTags compares it).
    pub value: &'a str,
}

/// The record of the failed copy whose replacement in `region` a run began, if any.
pub fn replacing_record<'a>(source_tags: &'a Tags, region: &str) -> Option<Record<'a>> {
    let value = source_tags
        .get(&format!("{REPLACING_PREFIX}{region}"))?
        .as_str();
    let (failed, failures) = match value.split_once('/') {
        Some((id, n)) => (id, n.parse().unwrap_or(0)),
        None => (value, 0),
    };
    failed.starts_with("ami-").then_some(Record {
        failed,
        failures,
        value,
    })
}

/// The failed copy whose replacement in `region` a run began ([`replacing_record`]), if any.
pub fn replacing<'a>(source_tags: &'a Tags, region: &str) -> Option<&'a str> {
    replacing_record(source_tags, region).map(|r| r.failed)
}

/// Replacement records on the source ([`REPLACING_PREFIX`]) of regions the policy no longer
/// copies to, as `(region, value)`: no run continues them, so they are cleared. A region that
/// comes back starts again from its first copy's token; the gone copies that token answers are
/// made again in turn ([`copy_gone`]).
pub fn departed_records<'a>(
    source_tags: &'a Tags,
    regions: &BTreeSet<String>,
) -> Vec<(&'a str, &'a str)> {
    source_tags
        .iter()
        .filter_map(|(key, value)| {
            let region = key.strip_prefix(REPLACING_PREFIX)?;
            (!regions.contains(region)).then_some((region, value.as_str()))
        })
        .collect()
}

/// The replacement record in `region` ([`replacing`]) that is only left over, given the copy
/// [`pick_copy`] found there: a live copy other than the one the record names means its
/// replacement started. Not when the live copy is the one named (a read from before it failed),
/// nor when no live copy is listed (a stopped replacement, continued from the record).
pub fn stale_record<'a>(
    source_tags: &'a Tags,
    region: &str,
    copy: Option<&Image>,
) -> Option<Record<'a>> {
    let live = copy.filter(|c| !is_dead(c))?;
    replacing_record(source_tags, region).filter(|r| r.failed != live.id)
}

/// The value of the record that the failed copy `failed` is being replaced, after `failures`
/// copies failed in a row up to it ([`Record`]).
pub fn record_value(failed: &str, failures: u32) -> String {
    if failures == 0 {
        failed.to_owned()
    } else {
        format!("{failed}/{failures}")
    }
}

/// The tag that says the failed copy `failed` in `region` is being replaced ([`Record`]).
pub fn replacing_tag(region: &str, failed: &str, failures: u32) -> Tags {
    Tags::from([(
        format!("{REPLACING_PREFIX}{region}"),
        record_value(failed, failures),
    )])
}

/// When a publish deprecates an image that has no deprecation time yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    /// The time to set (whole minutes, as EC2 keeps it); `None`: none to set.
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why `at` is not `now` + the policy's days, when it is not.
    pub note: Option<String>,
}

/// The deprecation time of a publish: `now` + the policy's days, cut to the minute. For a public
/// image at most 2 years after the source's creation `created` (EnableImageDeprecation: "The
/// upper limit for DeprecateAt is 10 years from now, except for public AMIs, where the upper limit
/// is 2 years from the creation date"; a copy is younger than its source, so the source's limit
/// holds for every region), and none at all once that limit has passed (EC2 refuses a time in the
/// past). A public image's days are at most [`MAX_PUBLIC_DEPRECATE_DAYS`], so only an image
/// published some time after its creation is cut.
pub fn deprecation(
    policy: &Policy,
    created: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Deprecation {
    use chrono::{Duration, DurationRound, Months};
    let minute =
        |t: chrono::DateTime<chrono::Utc>| t.duration_trunc(Duration::minutes(1)).unwrap_or(t);
    if policy.deprecate_after_days == 0 {
        return Deprecation {
            at: None,
            note: None,
        };
    }
    let wanted = minute(now + Duration::days(policy.deprecate_after_days));
    // "2 years": the earlier of 24 months and 730 days (a leap day makes them differ), so the
    // time is never past the limit however EC2 counts.
    let limit = created
        .filter(|_| policy.public)
        .and_then(|c| {
            c.checked_add_months(Months::new(24))
                .map(|m| m.min(c + Duration::days(730)))
        })
        .map(minute);
    match limit {
        // Less than an hour left: by the time every region is reached it may be past, which
        // EC2 refuses.
        Some(limit) if limit <= now + Duration::hours(1) => Deprecation {
            at: None,
            note: Some(format!(
                "not deprecated: EC2 allows a public image's deprecation at most 2 years after its creation ({}), which has passed or is less than an hour away",
                limit.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
        },
        Some(limit) if limit < wanted => Deprecation {
            at: Some(limit),
            note: Some(format!(
                "deprecated at {}, 2 years after its creation, instead of in {} days: EC2's limit for a public image",
                limit.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                policy.deprecate_after_days
            )),
        },
        _ => Deprecation {
            at: Some(wanted),
            note: None,
        },
    }
}

/// How long after `image.ready` the schedule takes over an image publish never started (the
/// event's delivery and Lambda's own retries come first).
pub const CATCH_UP_AFTER_MINUTES: i64 = 15;
/// How far back the schedule looks for such images (older ones predate this deployment or were
/// left alone on purpose; a manual invoke publishes them).
pub const CATCH_UP_WITHIN_DAYS: i64 = 7;

/// The images announced ready (`ready-at`) that publish never started: managed, not a copy, no
/// publish state, announced between [`CATCH_UP_WITHIN_DAYS`] and [`CATCH_UP_AFTER_MINUTES`]
/// ago. The schedule publishes them: an `image.ready` whose first step failed until the event
/// went to the DLQ is not lost.
pub fn never_started(images: Vec<Image>, now: chrono::DateTime<chrono::Utc>) -> Vec<Image> {
    images
        .into_iter()
        .filter(|i| {
            let ready = i
                .tags
                .get(READY_AT)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            i.state == "available"
                && i.tags.get(MANAGED).map(String::as_str) == Some("true")
                && !i.tags.contains_key(PUBLISH_STATE)
                && !i.tags.contains_key(PUBLISH_SOURCE)
                && i.source_image_id.is_none()
                && ready.is_some_and(|t| {
                    let age = now - t.with_timezone(&chrono::Utc);
                    age >= chrono::Duration::minutes(CATCH_UP_AFTER_MINUTES)
                        && age <= chrono::Duration::days(CATCH_UP_WITHIN_DAYS)
                })
        })
        .collect()
}

/// The source's per-image markers a copy inherited through `CopyImageTags` and must not keep:
/// `ready-at` (the copy was never announced), `import-task` (it was not imported), and
/// publish's own record of the source's publication (failed regions, copy attempts,
/// replacements in progress). Only when the copy's value is the source's (a value of its own is
/// left alone), except a replacement's record, which the source has usually lost by then and
/// which no copy ever needs.
pub fn inherited_markers(copy: &Image, source: &Image) -> Vec<String> {
    copy.tags
        .iter()
        .filter(|(k, _)| {
            [READY_AT, IMPORT_TASK, FAILED_REGIONS].contains(&k.as_str())
                || k.starts_with(COPY_ATTEMPT_PREFIX)
                || k.starts_with(REPLACING_PREFIX)
                || k.starts_with(FAILED_REGIONS_MORE_PREFIX)
        })
        .filter(|(k, v)| k.starts_with(REPLACING_PREFIX) || source.tags.get(*k) == Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The copy a region's step is decided on, among the images found there with the source's
/// [`PUBLISH_SOURCE`] tag, and the failed copies that are only left over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked<'a> {
    /// An available copy, else one pending, else the newest failed one (whose replacement the
    /// step starts).
    pub copy: Option<&'a Image>,
    /// The other failed copies: older ones a lagging read still lists, or first copies started
    /// under other tokens (a KMS key set since); one replacement per region is enough.
    pub leftovers: Vec<&'a Image>,
}

/// Whether a copy will never become available (failed, or any state other than pending,
/// transient and available).
pub fn is_dead(copy: &Image) -> bool {
    !matches!(
        copy.state.as_str(),
        "available" | "pending" | "transient" | "deregistered"
    )
}

/// How many copies in a row EC2 may answer a region's CopyImage with that are gone before the
/// region is reported failed (see [`copy_gone`]). Each is one CopyImage and one read. The chain
/// is the region's history: each copy that failed was replaced by a copy whose token derives
/// from it, so a region whose copies failed many times, and whose last copy someone then
/// deregistered, walks that many links from the first copy's token (a replacement record on the
/// source, [`REPLACING_PREFIX`], starts the walk at its failed copy instead).
pub const MAX_GONE_COPIES: usize = 16;

/// Whether the copy EC2 answered a CopyImage with is gone: not found by id, or deregistered
/// (`found`: the image read back by its id). EC2 answers a request retried with the same
/// ClientToken with the original result and does nothing more ("the retry succeeds without
/// performing any further actions", EC2's idempotency guide), so once a region's only copy was
/// deregistered by someone else, the region's first token answers that dead id every time. The
/// copy is then made again with the token of a replacement of the gone one
/// ([`Attempt::Replacing`]): overlapping runs ask for the same one. A copy just started that a
/// lagging read does not show yet reads as gone too; its replacement is then refused because its
/// name is taken (EC2 keeps an AMI name unique in a Region), which shows it is there.
pub fn copy_gone(found: Option<&Image>) -> bool {
    found.is_none_or(|i| i.state == "deregistered")
}

/// Who holds the source's name in a region ([`name_holder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameHolder<'a> {
    /// A copy of this source that will become available (not listed by its tag yet).
    LiveCopy(&'a Image),
    /// A copy of this source that will not (disabled, failed).
    DeadCopy(&'a Image),
    /// Another image: the copy cannot take the name while it holds it.
    Other(&'a Image),
}

/// When the copy `answered` that EC2 answered a CopyImage with reads as gone, who among
/// `named` (the region's images of the source's name, disabled ones included) holds the name
/// the copy needs: EC2 keeps an AMI name unique in a Region. A copy of this source is
/// `answered` itself or one tagged [`PUBLISH_SOURCE`]` = source`. `None` when nobody does: the
/// copy is then made again as the gone one's replacement.
pub fn name_holder<'a>(named: &'a [Image], answered: &str, source: &str) -> Option<NameHolder<'a>> {
    let holder = named.iter().find(|i| i.state != "deregistered")?;
    let ours = holder.id == answered
        || holder.tags.get(PUBLISH_SOURCE).map(String::as_str) == Some(source);
    Some(match (ours, is_dead(holder)) {
        (false, _) => NameHolder::Other(holder),
        (true, true) => NameHolder::DeadCopy(holder),
        (true, false) => NameHolder::LiveCopy(holder),
    })
}

/// Picks the copy to act on among `found` (see [`Picked`]). Deregistered images (a read that
/// includes them) are neither. The newest failed copy is the one by creation date, then id:
/// every run that reads the same copies picks the same one, so overlapping runs ask for the
/// same replacement.
pub fn pick_copy(found: &[Image]) -> Picked<'_> {
    let live = found.iter().find(|i| i.state == "available").or_else(|| {
        found
            .iter()
            .find(|i| !is_dead(i) && i.state != "deregistered")
    });
    let mut dead: Vec<&Image> = found.iter().filter(|i| is_dead(i)).collect();
    dead.sort_by(|a, b| (&a.creation_date, &a.id).cmp(&(&b.creation_date, &b.id)));
    let copy = live.or_else(|| dead.pop());
    Picked {
        copy,
        leftovers: dead,
    }
}

/// Why the failed copy `dead` in `region` must not be replaced now, read again just before:
/// `source_tags` (the source's), `listed` (the region's copies of it), `outstanding` (records
/// this run left on the source that a lagging read may not show yet). Replacing puts a record
/// on the source ([`replacing_tag`]) and the replacement inherits the source's tags plus
/// [`PUBLISH_SOURCE`] and [`FAILED_COPIES`], so both must stay within EC2's 50 tags. `None`:
/// replace it.
pub fn replace_blocked(
    source_tags: &Tags,
    listed: &[Image],
    dead: &str,
    region: &str,
    outstanding: usize,
) -> Option<String> {
    use super::stamp::{MAX_TAGS_PER_RESOURCE, counted};
    let picked = pick_copy(listed).copy.map(|c| c.id.as_str());
    if picked != Some(dead) {
        return Some(format!(
            "not replaced: the region's copies changed since they were read (now {}); the next run decides again",
            picked.unwrap_or("none")
        ));
    }
    let record = replacing(source_tags, region);
    if let Some(other) = record.filter(|r| *r != dead) {
        return Some(format!(
            "not replaced: the source records the replacement of {other} here; the next run continues it"
        ));
    }
    let has = counted(source_tags) + outstanding;
    // The replacement adds PUBLISH_SOURCE and FAILED_COPIES to what it inherits.
    let needs = has + usize::from(record.is_none()) + 2;
    if needs > MAX_TAGS_PER_RESOURCE {
        return Some(format!(
            "not replaced: the source has {has} tags, and replacing a copy records it on the source for a moment while the replacement adds two more (EC2 allows {MAX_TAGS_PER_RESOURCE}); remove {} tags and the next run replaces it",
            needs - MAX_TAGS_PER_RESOURCE
        ));
    }
    None
}

/// The next step of one target region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum CopyStep {
    /// No copy yet: start one.
    Start,
    /// Wait for the next run.
    Wait {
        /// Why.
        reason: String,
    },
    /// The copy failed: record that it is being replaced ([`replacing_tag`]), deregister it
    /// (its name is taken while it exists), start its replacement ([`Attempt::Replacing`]),
    /// and report the region failed.
    Replace {
        /// EC2's reason.
        reason: String,
    },
    /// The copy failed, and the region has its limit of copies in flight: report the region
    /// failed and keep the failed copy, which a later run replaces.
    Failed {
        /// EC2's reason.
        reason: String,
    },
    /// The copy is available: stamp its lineage and share it.
    Ready,
}

/// The next step for a target region, from the copy [`pick_copy`] found there (if any) and how
/// many of the pipeline's copies are already in flight to that region (`limit` at most). A
/// failed copy is replaced at once the first time, later ones only after a wait that grows
/// ([`replace_after`], against `now`), and none after [`MAX_FAILED_COPIES`] in a row.
pub fn copy_step(
    copy: Option<&Image>,
    in_flight: usize,
    limit: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> CopyStep {
    let full = in_flight >= limit;
    match copy {
        None if full => CopyStep::Wait {
            reason: format!(
                "{in_flight} copies already in flight to this region (limit {limit}); started by a later run"
            ),
        },
        None => CopyStep::Start,
        Some(c) => {
            // EC2's word for why, when it gives one (a failed copy's StateReason).
            let why = c
                .state_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            match c.state.as_str() {
                "available" => CopyStep::Ready,
                "pending" | "transient" => CopyStep::Wait {
                    reason: format!("copy {} is {}", c.id, c.state),
                },
                other => dead_copy_step(c, &format!("copy {} is {other}{why}", c.id), full, now)
                    .unwrap_or_else(|| CopyStep::Failed {
                        reason: format!(
                            "copy {} is {other}{why}; {in_flight} copies already in flight to this region (limit {limit}), replaced by a later run",
                            c.id
                        ),
                    }),
            }
        }
    }
}

/// How many copies in a row may fail in a region before publish stops replacing them: each
/// replacement is a whole new copy of the image's snapshots, and a cause that does not go away
/// (a KMS key the region cannot use, a snapshot EC2 cannot read) would otherwise cost one on
/// every schedule run.
pub const MAX_FAILED_COPIES: u32 = 5;

/// The wait before the second failed copy in a row is replaced, counted from when it started
/// (its CreationDate); each further failure waits 4 times longer (15 min, 1 h, 4 h). The first
/// failed copy is replaced at once.
pub const REPLACE_BACKOFF_MINUTES: i64 = 15;

/// How many copies of its source failed in a row in its region before `copy`
/// ([`FAILED_COPIES`] on a replacement; 0 when absent or unreadable). 0 for a disabled copy:
/// it became available (someone disabled it since), which ended the run of failures.
pub fn failed_before(copy: &Image) -> u32 {
    if copy.state == "disabled" {
        return 0;
    }
    copy.tags
        .get(FAILED_COPIES)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The copies that failed in a row up to and including the dead copy `dead`: what its
/// replacement records ([`FAILED_COPIES`]). 0 for a disabled copy, which did not fail.
pub fn failures_through(dead: &Image) -> u32 {
    if dead.state == "disabled" {
        0
    } else {
        failed_before(dead).saturating_add(1)
    }
}

/// When the failed copy `dead` may be replaced: at once when it is the first failed copy in a
/// row (`None`), else [`REPLACE_BACKOFF_MINUTES`] × 4^(n − 2) after it started, for the n-th.
/// `None` too when its CreationDate is missing or unreadable (the cap,
/// [`MAX_FAILED_COPIES`], still holds).
pub fn replace_after(dead: &Image) -> Option<chrono::DateTime<chrono::Utc>> {
    let before = failed_before(dead);
    if before == 0 {
        return None;
    }
    let started = chrono::DateTime::parse_from_rfc3339(dead.creation_date.as_deref()?).ok()?;
    let factor = 4_i64.checked_pow(before - 1)?;
    let wait = chrono::Duration::try_minutes(REPLACE_BACKOFF_MINUTES.checked_mul(factor)?)?;
    started.with_timezone(&chrono::Utc).checked_add_signed(wait)
}

/// The step for the copy `dead` that will never become available (`what`: its id, state and
/// EC2's reason): not replaced once [`MAX_FAILED_COPIES`] failed in a row, nor before
/// [`replace_after`]; `None` when it would be replaced but the region's copies in flight are at
/// their limit (`full`).
fn dead_copy_step(
    dead: &Image,
    what: &str,
    full: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<CopyStep> {
    let failed = failures_through(dead);
    if failed >= MAX_FAILED_COPIES {
        return Some(CopyStep::Failed {
            reason: format!(
                "{what}; {failed} copies in a row have failed here, so it is not replaced again: fix the cause, then deregister {} and the next run copies again",
                dead.id
            ),
        });
    }
    if full {
        return None;
    }
    Some(match replace_after(dead).filter(|at| *at > now) {
        Some(at) => CopyStep::Failed {
            reason: format!(
                "{what}; {failed} copies in a row have failed here, so it is replaced after {} (each failure waits longer; after {MAX_FAILED_COPIES} in a row, none is replaced)",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        },
        None => CopyStep::Replace {
            reason: what.to_owned(),
        },
    })
}

/// Principals of a launch permission or a create-volume permission.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Account ids.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub accounts: BTreeSet<String>,
    /// Organization ARNs.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub organizations: BTreeSet<String>,
    /// OU ARNs.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub ous: BTreeSet<String>,
    /// Group `all`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

impl Grants {
    /// What the image's launch permission must hold.
    pub fn launch(policy: &Policy) -> Self {
        Grants {
            accounts: policy.accounts.clone(),
            organizations: policy.organizations.clone(),
            ous: policy.ous.clone(),
            public: policy.public,
        }
    }

    /// What the snapshots' create-volume permission must hold: EC2 shares snapshots with
    /// accounts and `all` only (there is no organization form), so organizations and OUs get
    /// the image alone — enough to launch it.
    pub fn create_volume(policy: &Policy) -> Self {
        Grants {
            accounts: policy.accounts.clone(),
            public: policy.public,
            ..Grants::default()
        }
    }

    /// Parses a permission list as the gateways return it (ids, ARNs, `all`).
    pub fn from_entries(entries: &[String]) -> Self {
        let mut g = Grants::default();
        for e in entries {
            if e == "all" {
                g.public = true;
            } else if ids::is_organization_arn(e) {
                g.organizations.insert(e.clone());
            } else if e.contains(":ou/") {
                g.ous.insert(e.clone());
            } else {
                g.accounts.insert(e.clone());
            }
        }
        g
    }

    /// What `self` holds that `current` lacks.
    pub fn missing_from(&self, current: &Grants) -> Grants {
        Grants {
            accounts: self
                .accounts
                .difference(&current.accounts)
                .cloned()
                .collect(),
            organizations: self
                .organizations
                .difference(&current.organizations)
                .cloned()
                .collect(),
            ous: self.ous.difference(&current.ous).cloned().collect(),
            public: self.public && !current.public,
        }
    }

    /// What `self` and `other` both hold (what a revoke can remove).
    pub fn common(&self, other: &Grants) -> Grants {
        Grants {
            accounts: self
                .accounts
                .intersection(&other.accounts)
                .cloned()
                .collect(),
            organizations: self
                .organizations
                .intersection(&other.organizations)
                .cloned()
                .collect(),
            ous: self.ous.intersection(&other.ous).cloned().collect(),
            public: self.public && other.public,
        }
    }

    /// Nothing to grant.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.organizations.is_empty()
            && self.ous.is_empty()
            && !self.public
    }

    /// The record of revoking `self` from an image with `policy` and `image_tags`, so a later run
    /// does not share again: for each list that changes, what stays of it in its `publish:*` tag;
    /// a list taken from the defaults whose rest is too long for a tag value instead adds the
    /// revoked principals to [`tags::REVOKED`] (its exclusions from the defaults). `Err` names a
    /// record that fits neither way; it is computed before anything is removed, so a revoke that
    /// cannot be recorded changes nothing.
    pub fn revoked_tags(&self, policy: &Policy, image_tags: &Tags) -> Result<Tags, String> {
        let mut t = Tags::new();
        let mut excluded: BTreeSet<String> = image_tags
            .get(tags::REVOKED)
            .map(|v| split_list(v).into_iter().collect())
            .unwrap_or_default();
        let before = excluded.len();
        for (key, all, gone) in [
            (tags::ACCOUNTS, &policy.accounts, &self.accounts),
            (
                tags::ORGANIZATIONS,
                &policy.organizations,
                &self.organizations,
            ),
            (tags::OUS, &policy.ous, &self.ous),
        ] {
            // A principal the policy does not list needs no record: no run shares with it.
            if gone.is_disjoint(all) {
                continue;
            }
            let rest = all.difference(gone).cloned().collect::<Vec<_>>().join(" ");
            if rest.chars().count() <= MAX_TAG_VALUE {
                t.insert(key.to_owned(), rest);
            } else {
                // Only a list from the defaults is this long (a tag's own list fits a tag).
                excluded.extend(gone.intersection(all).cloned());
            }
        }
        if excluded.len() > before {
            let v = excluded.into_iter().collect::<Vec<_>>().join(" ");
            if v.chars().count() > MAX_TAG_VALUE {
                return Err(format!(
                    "the revoke cannot be recorded on the image, so nothing was changed: what stays of the default share lists is longer than a tag value, and so is the list of principals revoked from them ({} characters, at most {MAX_TAG_VALUE}); take the principals out of SHARE_ACCOUNTS / SHARE_ORGANIZATIONS / SHARE_OUS first (then the revoke needs no record for them)",
                    v.chars().count()
                ));
            }
            t.insert(tags::REVOKED.to_owned(), v);
        }
        if self.public {
            t.insert(tags::PUBLIC.into(), "false".into());
        }
        Ok(t)
    }
}

/// Parses revoke principals: account ids, organization / OU ARNs, and `public` (or `all`).
pub fn parse_principals(items: &[String]) -> Result<Grants, Vec<String>> {
    let mut g = Grants::default();
    let mut p = Vec::new();
    for i in items {
        if i == "public" || i == "all" {
            g.public = true;
        } else if ids::is_account_id(i) {
            g.accounts.insert(i.clone());
        } else if ids::is_organization_arn(i) {
            g.organizations.insert(i.clone());
        } else if ids::is_ou_arn(i) {
            g.ous.insert(i.clone());
        } else {
            p.push(format!(
                "{i:?} is not an account id, an organization ARN, an OU ARN or \"public\""
            ));
        }
    }
    if p.is_empty() { Ok(g) } else { Err(p) }
}

/// What a run announces once every region is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Every region published (`image.published`).
    Published,
    /// Some regions failed (`image.publish-partial`).
    Partial,
}

/// Where one image's publish stands after a run (serialized as the strings the output has always
/// carried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishStatus {
    /// Every region done.
    Published,
    /// A duplicate request for an image already published: nothing done.
    AlreadyPublished,
    /// Copies pending; the schedule finishes them.
    Copying,
    /// Some regions failed; retried by the schedule.
    Partial,
}

impl PublishStatus {
    /// The status as the output writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishStatus::Published => "published",
            PublishStatus::AlreadyPublished => "already-published",
            PublishStatus::Copying => "copying",
            PublishStatus::Partial => "partial",
        }
    }
}

impl std::fmt::Display for PublishStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status equals its output string.
impl PartialEq<&str> for PublishStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How a publish run ends: its status, what to announce, what to record on the source (after
/// the message, so a failed send leaves the state as it was and the next run sends again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conclusion {
    /// `Published` or `Partial`.
    pub status: PublishStatus,
    /// The message to send, if any.
    pub announce: Option<Announce>,
    /// The tags to write on the source, if any.
    pub record: Option<Tags>,
}

/// Why `policy` cannot be carried out for an image whose volumes are (`encrypted`) or are not
/// encrypted: EC2 makes no encrypted image public (ModifySnapshotAttribute: "Encrypted
/// snapshots and snapshots with Amazon Web Services Marketplace product codes cannot be made
/// public"; ModifyImageAttribute answers `UnsupportedOperation` for an AMI with one). `None`
/// when it can. Checked before anything changes: otherwise every region would fail at its
/// ModifySnapshotAttribute on every run, the image left in progress.
pub fn public_refusal(policy: &Policy, encrypted: bool) -> Option<&'static str> {
    (policy.public && encrypted).then_some(
        "public sharing was asked for, but its volumes are encrypted, and EC2 makes neither an encrypted snapshot (\"Encrypted snapshots ... cannot be made public\", ModifySnapshotAttribute) nor an AMI with encrypted volumes public; publish it without public, or publish an unencrypted image (encryption comes from KMS_KEY_ARN or the account's EBS encryption by default)",
    )
}

/// The already-published rule: a duplicate `image.ready` for a published image does nothing.
pub fn already_published(source_tags: &Tags) -> bool {
    source_tags.get(PUBLISH_STATE).map(String::as_str) == Some(PUBLISHED)
}

/// The announce/record table. `failed` lists the failed regions (sorted), `changed` says a grant
/// was added in this run, `published_at` is the time stamp recorded.
///
/// | outcome | announce | record |
/// |---|---|---|
/// | no failure, first time or a grant added | `Published` | state `published`, time, no failed regions |
/// | no failure, already published, nothing added | — | the same tags |
/// | failures, a region among them not recorded as failed | `Partial` | the failed regions |
/// | failures, fewer than recorded (progress: a retry succeeded) | — | the failed regions |
/// | failures, the set already recorded | — | — |
///
/// So `image.publish-partial` is sent when a region fails that had not (not again while the
/// schedule works through the recorded ones), and the record only shrinks while the schedule
/// retries just the recorded regions ([`retrying`]).
pub fn conclude(
    source_tags: &Tags,
    failed: &[&str],
    changed: bool,
    published_at: String,
) -> Conclusion {
    if failed.is_empty() {
        let mut done = Tags::from([
            (PUBLISH_STATE.to_owned(), PUBLISHED.to_owned()),
            (PUBLISHED_AT.to_owned(), published_at),
        ]);
        done.extend(failed_region_tags(source_tags, &[]));
        let announce = (!already_published(source_tags) || changed).then_some(Announce::Published);
        return Conclusion {
            status: PublishStatus::Published,
            announce,
            record: Some(done),
        };
    }
    let recorded = recorded_failures(source_tags);
    let new_failures = failed.iter().any(|r| !recorded.contains(*r));
    let failed_set: BTreeSet<&str> = failed.iter().copied().collect();
    let changed_set = recorded != failed_set;
    Conclusion {
        status: PublishStatus::Partial,
        announce: new_failures.then_some(Announce::Partial),
        record: changed_set.then(|| failed_region_tags(source_tags, failed)),
    }
}

/// The tags that record `failed` (region names, sorted) on the source: [`FAILED_REGIONS`], and for
/// a list longer than a tag value (about 17 regions) the rest in [`FAILED_REGIONS_MORE_PREFIX`]`2`,
/// `3`, … — a region is never split across two. A continuation key the source carries that the
/// list no longer needs is emptied, as [`FAILED_REGIONS`] is when nothing failed, so the record
/// read back ([`recorded_failures`]) is exactly `failed`. A record of failures always writes the
/// `2` key too (empty when the list fits one; every commercial region fits two): overlapping runs
/// each replace the whole record, so a run that had not seen another's `2` cannot leave it
/// standing beside its own list.
pub fn failed_region_tags(source_tags: &Tags, failed: &[&str]) -> Tags {
    let mut values = vec![String::new()];
    if !failed.is_empty() {
        values.push(String::new());
    }
    // The value being filled: the first, then each that the one before could not take.
    let mut at = 0;
    for region in failed {
        let fits = |v: &String| {
            v.is_empty() || v.chars().count() + 1 + region.chars().count() <= MAX_TAG_VALUE
        };
        if !fits(&values[at]) {
            at += 1;
            if at == values.len() {
                values.push(String::new());
            }
        }
        let v = &mut values[at];
        if !v.is_empty() {
            v.push(' ');
        }
        v.push_str(region);
    }
    let mut t: Tags = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match i {
            0 => (FAILED_REGIONS.to_owned(), v),
            _ => (format!("{FAILED_REGIONS_MORE_PREFIX}{}", i + 1), v),
        })
        .collect();
    for key in source_tags
        .keys()
        .filter(|k| k.starts_with(FAILED_REGIONS_MORE_PREFIX))
    {
        t.entry(key.clone()).or_default();
    }
    t
}

/// The regions recorded as failed ([`FAILED_REGIONS`] and its continuation keys).
fn recorded_failures(source_tags: &Tags) -> BTreeSet<&str> {
    source_tags
        .iter()
        .filter(|(k, _)| *k == FAILED_REGIONS || k.starts_with(FAILED_REGIONS_MORE_PREFIX))
        .flat_map(|(_, v)| v.split_whitespace())
        .collect()
}

/// The only regions a scheduled run of a publish in progress works on: those recorded as
/// failed. Every other region was copied, shared and verified by an earlier run of the same
/// policy (a policy change comes with a manual invoke, which reconciles every region), so
/// progress accumulates: each run retries only what is left, and the failed set only shrinks.
/// None: work on every region (nothing recorded, or not in progress).
pub fn retrying(source_tags: &Tags) -> Option<BTreeSet<String>> {
    let recorded = recorded_failures(source_tags);
    (source_tags.get(PUBLISH_STATE).map(String::as_str) == Some(IN_PROGRESS)
        && !recorded.is_empty())
    .then(|| recorded.into_iter().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "arn:aws:organizations::111122223333:organization/o-exampleorg1";
    const OU: &str = "arn:aws:organizations::111122223333:ou/o-exampleorg1/ou-ab12-cdef3456";

    fn defaults() -> Defaults {
        Defaults {
            regions: vec!["us-west-2".into(), "eu-west-1".into()],
            deny_regions: BTreeSet::from(["cn-north-1".to_owned()]),
            accounts: vec!["111122223333".into()],
            organizations: vec![],
            ous: vec![],
            public: PublicMode::OptIn,
            deprecate_after_days: 0,
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_and_the_home_region_is_not_a_target() {
        let p = resolve(&defaults(), &Tags::new(), "us-west-2").expect("valid");
        assert_eq!(p.regions, BTreeSet::from(["eu-west-1".to_owned()]));
        assert_eq!(p.accounts, BTreeSet::from(["111122223333".to_owned()]));
        assert!(!p.public);
    }

    #[test]
    fn image_tags_replace_defaults() {
        let t = tags(&[
            (tags::REGIONS, "eu-west-1"),
            (tags::ACCOUNTS, "444455556666 777788889999"),
            (tags::OUS, OU),
            (tags::PUBLIC, "true"),
            (tags::DEPRECATE_AFTER_DAYS, "90"),
        ]);
        let p = resolve(&defaults(), &t, "us-east-1").expect("valid");
        assert_eq!(p.regions, BTreeSet::from(["eu-west-1".to_owned()]));
        assert!(p.accounts.contains("777788889999") && !p.accounts.contains("111122223333"));
        assert_eq!(p.ous.len(), 1);
        assert!(p.public);
        assert_eq!(p.deprecate_after_days, 90);
    }

    #[test]
    fn every_problem_is_listed() {
        let t = tags(&[
            (tags::REGIONS, "us-east1 cn-north-1"),
            (tags::ACCOUNTS, "12345"),
            (tags::ORGANIZATIONS, "o-abc"),
            (tags::OUS, "ou-x"),
            (tags::PUBLIC, "yes"),
            (tags::DEPRECATE_AFTER_DAYS, "5000"),
        ]);
        let p = resolve(&defaults(), &t, "us-east-1").expect_err("invalid");
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(p.iter().any(|x| x.contains("us-east1")));
        assert!(p.iter().any(|x| x.contains("denied")));
    }

    #[test]
    fn a_set_publish_regions_is_the_allow_list_of_targets() {
        // An image or a manual invoke may choose among PUBLISH_REGIONS, never add one; the home
        // region is never a target, so naming it is not an error.
        let t = tags(&[(tags::REGIONS, "us-west-2 ap-south-1 us-east-1")]);
        let p = resolve(&defaults(), &t, "us-east-1").expect_err("outside the list");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("ap-south-1") && p[0].contains("PUBLISH_REGIONS"),
            "{p:?}"
        );
        // Without PUBLISH_REGIONS only the deny list bounds what an image asks.
        let mut open = defaults();
        open.regions.clear();
        let p = resolve(&open, &t, "us-east-1").expect("no allow list");
        assert_eq!(p.regions.len(), 2);
        let denied = tags(&[(tags::REGIONS, "cn-north-1")]);
        assert_eq!(
            resolve(&open, &denied, "us-east-1").map_err(|p| p.len()),
            Err(1)
        );
    }

    #[test]
    fn public_follows_the_mode() {
        let ask = tags(&[(tags::PUBLIC, "true")]);
        let mut d = defaults();
        d.public = PublicMode::Never;
        assert!(resolve(&d, &ask, "us-east-1").is_err());
        assert!(!resolve(&d, &Tags::new(), "us-east-1").expect("ok").public);
        d.public = PublicMode::Always;
        assert!(resolve(&d, &Tags::new(), "us-east-1").expect("ok").public);
        let no = tags(&[(tags::PUBLIC, "false")]);
        assert!(!resolve(&d, &no, "us-east-1").expect("ok").public);
        let long = tags(&[(tags::DEPRECATE_AFTER_DAYS, "800")]);
        assert!(resolve(&d, &long, "us-east-1").is_err());
    }

    #[test]
    fn defaults_with_a_region_both_allowed_and_denied_are_refused() {
        let mut d = defaults();
        d.deny_regions.insert("eu-west-1".into());
        assert_eq!(d.problems().len(), 1);
        assert!(defaults().problems().is_empty());
    }

    #[test]
    fn override_tags_round_trip_and_refuse_long_lists() {
        let o = Overrides {
            regions: Some(vec!["eu-west-1".into()]),
            accounts: Some(vec!["444455556666".into(), "777788889999".into()]),
            public: Some(false),
            ..Overrides::default()
        };
        let t = override_tags(&o).expect("fits");
        let p = resolve(&defaults(), &t, "us-east-1").expect("valid");
        assert_eq!(p.accounts.len(), 2);
        assert!(!p.public);
        let many = Overrides {
            accounts: Some(vec!["444455556666".into(); 30]),
            ..Overrides::default()
        };
        assert!(override_tags(&many).is_err());
    }

    #[test]
    fn an_upload_cannot_carry_publish_policy() {
        // Whoever writes to the upload bucket is not the operator: `publish:*` in
        // `x-amz-meta-tags` is refused, so the image never carries an uploader's policy.
        let metadata = tags(&[(
            crate::plan::spec::keys::TAGS,
            "publish:regions=eu-west-1&publish:accounts=444455556666",
        )]);
        let problems = crate::plan::spec::resolve(&[&metadata], "web/disk.raw")
            .err()
            .unwrap_or_default();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn a_copy_takes_its_regions_key_only_when_it_is_encrypted_anyway() {
        let keys = BTreeMap::from([(
            "eu-west-1".to_owned(),
            "arn:aws:kms:eu-west-1:123456789012:key/k".to_owned(),
        )]);
        let mut image = Image {
            id: "ami-1".into(),
            encrypted: true,
            ..Image::default()
        };
        let key = Some("arn:aws:kms:eu-west-1:123456789012:key/k");
        assert_eq!(copy_key(&image, &keys, "eu-west-1", false), key);
        assert_eq!(copy_key(&image, &keys, "eu-west-1", true), key);
        assert_eq!(copy_key(&image, &keys, "us-west-2", true), None);
        image.encrypted = false;
        assert_eq!(copy_key(&image, &keys, "eu-west-1", false), None);
        // A region that encrypts by default encrypts the copy anyway: with its key, not aws/ebs.
        assert_eq!(copy_key(&image, &keys, "eu-west-1", true), key);
        assert_eq!(copy_key(&image, &keys, "us-west-2", true), None);
    }

    #[test]
    fn a_public_copy_into_a_region_that_encrypts_by_default_is_refused() {
        assert!(
            public_copy_refusal(true, true)
                .is_some_and(|why| why.contains("encryption by default"))
        );
        assert_eq!(public_copy_refusal(true, false), None);
        assert_eq!(public_copy_refusal(false, true), None);
        assert_eq!(public_copy_refusal(false, false), None);
    }

    #[test]
    fn tokens_are_stable_and_distinct() {
        let first = Attempt::First(0);
        let a = client_token("us-east-1", "ami-1", "eu-west-1", first, None);
        assert_eq!(
            a,
            client_token("us-east-1", "ami-1", "eu-west-1", first, None)
        );
        assert_ne!(
            a,
            client_token("us-east-1", "ami-1", "us-west-2", first, None)
        );
        let key = "arn:aws:kms:eu-west-1:123456789012:key/k";
        assert_ne!(
            a,
            client_token("us-east-1", "ami-1", "eu-west-1", first, Some(key))
        );
        // A failed copy's replacement has a token of its own, derived from the failed copy:
        // the same for every run that replaces it, another for the next failed copy.
        let token = |attempt| client_token("us-east-1", "ami-1", "eu-west-1", attempt, None);
        let first = token(Attempt::Replacing("ami-dead1"));
        assert_eq!(first, token(Attempt::Replacing("ami-dead1")));
        assert_ne!(first, token(Attempt::Replacing("ami-dead2")));
        assert_ne!(first, a);
        assert!(first.len() <= 64);
        // A source an earlier version recorded a failed attempt on keeps that token apart.
        let tags = Tags::from([(
            "ami-pipeline:publish-copy-attempt:eu-west-1".to_string(),
            "2".to_string(),
        )]);
        assert_eq!(copy_attempt(&tags, "eu-west-1"), 2);
        assert_eq!(copy_attempt(&tags, "us-west-2"), 0);
        assert_ne!(a, token(Attempt::First(copy_attempt(&tags, "eu-west-1"))));
        let source = Image {
            tags: Tags::from([
                (READY_AT.to_string(), "2026-11-22T10:00:00Z".to_string()),
                (IMPORT_TASK.to_string(), "import-snap-1".to_string()),
            ]),
            ..Image::default()
        };
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .expect("time");
        let ready = |id: &str, at: &str, extra: &[(&str, &str)]| Image {
            id: id.into(),
            state: "available".into(),
            tags: [(MANAGED, "true"), (READY_AT, at)]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Image::default()
        };
        let found = never_started(
            vec![
                ready("ami-due", "2026-11-22T11:00:00Z", &[]),
                ready("ami-fresh", "2026-11-22T11:50:00Z", &[]),
                ready("ami-old", "2026-11-01T00:00:00Z", &[]),
                ready(
                    "ami-started",
                    "2026-11-22T11:00:00Z",
                    &[(PUBLISH_STATE, "in-progress")],
                ),
                ready(
                    "ami-copy",
                    "2026-11-22T11:00:00Z",
                    &[(PUBLISH_SOURCE, "ami-x")],
                ),
            ],
            now,
        );
        let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["ami-due"]);
        let mut copy = source.clone();
        assert_eq!(inherited_markers(&copy, &source), [IMPORT_TASK, READY_AT]);
        copy.tags
            .insert(READY_AT.into(), "2026-11-23T00:00:00Z".into());
        assert_eq!(inherited_markers(&copy, &source), [IMPORT_TASK]);
        copy.tags.clear();
        assert!(inherited_markers(&copy, &source).is_empty());
        assert!(a.len() <= 64);
    }

    #[test]
    fn records_of_regions_the_policy_left_are_the_departed_ones() {
        let mut tags = replacing_tag("eu-west-1", "ami-a", 0);
        tags.extend(replacing_tag("ap-south-1", "ami-b", 0));
        tags.insert("team".into(), "x".into());
        let regions: BTreeSet<String> = ["eu-west-1".to_owned(), "us-west-2".to_owned()].into();
        assert_eq!(departed_records(&tags, &regions), [("ap-south-1", "ami-b")]);
        assert!(
            departed_records(
                &tags,
                &["ap-south-1".to_owned(), "eu-west-1".to_owned()].into()
            )
            .is_empty()
        );
        assert_eq!(departed_records(&tags, &BTreeSet::new()).len(), 2);
    }

    #[test]
    fn a_replacements_record_is_read_per_region_and_never_kept_by_a_copy() {
        let record = replacing_tag("eu-west-1", "ami-dead", 0);
        assert_eq!(replacing(&record, "eu-west-1"), Some("ami-dead"));
        assert_eq!(replacing(&record, "us-west-2"), None);
        // With the failures in a row up to the failed copy, for its replacement to record.
        let counted = replacing_tag("eu-west-1", "ami-dead", 3);
        assert_eq!(
            replacing_record(&counted, "eu-west-1"),
            Some(Record {
                failed: "ami-dead",
                failures: 3,
                value: "ami-dead/3"
            })
        );
        assert_eq!(replacing(&counted, "eu-west-1"), Some("ami-dead"));
        assert_eq!(
            replacing_record(&record, "eu-west-1").map(|r| (r.failures, r.value)),
            Some((0, "ami-dead"))
        );
        // A copy loses the record whether or not the source still has it.
        let copy = Image {
            tags: record.clone(),
            ..Image::default()
        };
        let source = Image::default();
        let key = format!("{REPLACING_PREFIX}eu-west-1");
        assert_eq!(inherited_markers(&copy, &source), [key]);
    }

    #[test]
    fn a_failed_copy_is_replaced_only_as_read_again_and_within_the_tags() {
        let img = |id: &str, state: &str| Image {
            id: id.into(),
            state: state.into(),
            ..Image::default()
        };
        let dead = [img("ami-dead", "failed")];
        let tags = |n: usize| -> Tags {
            (0..n)
                .map(|i| (format!("k{i}"), "v".to_string()))
                .chain([("aws:cloudformation:stack-name".into(), "s".into())])
                .collect()
        };
        assert_eq!(
            replace_blocked(&tags(47), &dead, "ami-dead", "eu-west-1", 0),
            None
        );
        // 47 + the record + the copy's publish-source and failed-copies count: 50. One more
        // does not fit, whether it is on the source or a record this run left that the read
        // does not show yet.
        for (n, outstanding) in [(48, 0), (47, 1)] {
            let why = replace_blocked(&tags(n), &dead, "ami-dead", "eu-west-1", outstanding);
            assert!(
                why.is_some_and(|w| w.contains("remove 1 tags")),
                "{n} {outstanding}"
            );
        }
        // A record of this copy already there takes no new key.
        let mut with_record = tags(47);
        with_record.extend(replacing_tag("eu-west-1", "ami-dead", 2));
        assert_eq!(
            replace_blocked(&with_record, &dead, "ami-dead", "eu-west-1", 0),
            None
        );
        // A record of another failed copy is continued, not overwritten.
        let mut other = tags(1);
        other.extend(replacing_tag("eu-west-1", "ami-older", 0));
        let why = replace_blocked(&other, &dead, "ami-dead", "eu-west-1", 0);
        assert!(why.is_some_and(|w| w.contains("ami-older")));
        // The region changed since it was read: decided again next run.
        for listed in [
            vec![],
            vec![img("ami-dead", "failed"), img("ami-new", "pending")],
        ] {
            let why = replace_blocked(&tags(1), &listed, "ami-dead", "eu-west-1", 0);
            assert!(why.is_some_and(|w| w.contains("changed")), "{listed:?}");
        }
    }

    #[test]
    fn a_record_is_left_over_only_beside_a_live_copy_it_does_not_name() {
        let img = |id: &str, state: &str| Image {
            id: id.into(),
            state: state.into(),
            ..Image::default()
        };
        let record = replacing_tag("eu-west-1", "ami-dead", 1);
        let new = img("ami-new", "pending");
        // The whole value, which DeleteTags compares.
        assert_eq!(
            stale_record(&record, "eu-west-1", Some(&new)).map(|r| r.value),
            Some("ami-dead/1")
        );
        assert_eq!(stale_record(&record, "us-west-2", Some(&new)), None);
        // The copy it names still listed as pending (a read from before it failed), the copy
        // failed, or no copy listed: kept.
        for copy in [
            Some(img("ami-dead", "pending")),
            Some(img("ami-x", "failed")),
            None,
        ] {
            assert_eq!(
                stale_record(&record, "eu-west-1", copy.as_ref()),
                None,
                "{copy:?}"
            );
        }
    }

    #[test]
    fn copy_steps() {
        let img = |state: &str| Image {
            id: "ami-1".into(),
            state: state.into(),
            ..Image::default()
        };
        let now = chrono::Utc::now();
        assert_eq!(copy_step(None, 0, 20, now), CopyStep::Start);
        assert!(matches!(
            copy_step(None, 20, 20, now),
            CopyStep::Wait { .. }
        ));
        assert!(matches!(
            copy_step(Some(&img("pending")), 0, 20, now),
            CopyStep::Wait { .. }
        ));
        assert_eq!(
            copy_step(Some(&img("available")), 99, 20, now),
            CopyStep::Ready
        );
        assert!(matches!(
            copy_step(Some(&img("failed")), 19, 20, now),
            CopyStep::Replace { .. }
        ));
        // The replacement would pass the region's limit: the failed copy stays for later.
        assert!(matches!(
            copy_step(Some(&img("failed")), 20, 20, now),
            CopyStep::Failed { reason } if reason.contains("replaced by a later run")
        ));
        // EC2's reason for the state, when it gives one, is part of the step's.
        let failed = Image {
            state_reason: Some(
                "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"
                    .into(),
            ),
            ..img("failed")
        };
        for limit in [20, 1] {
            let reason = match copy_step(Some(&failed), 1, limit, now) {
                CopyStep::Replace { reason } | CopyStep::Failed { reason } => reason,
                other => panic!("{other:?}"),
            };
            assert!(
                reason.starts_with(
                    "copy ami-1 is failed (Client.InvalidKMSKey.InvalidState: The KMS key"
                ),
                "{reason}"
            );
        }
    }

    #[test]
    fn failed_copies_in_a_row_are_replaced_later_each_time_then_not_at_all() {
        use chrono::{Duration, TimeZone, Utc};
        let started = Utc
            .with_ymd_and_hms(2026, 12, 1, 10, 0, 0)
            .single()
            .expect("time");
        let failed = |before: Option<&str>| Image {
            id: "ami-dead".into(),
            state: "failed".into(),
            creation_date: Some("2026-12-01T10:00:00.000Z".into()),
            tags: before
                .map(|n| Tags::from([(FAILED_COPIES.to_owned(), n.to_owned())]))
                .unwrap_or_default(),
            ..Image::default()
        };
        let step = |copy: &Image, now| copy_step(Some(copy), 0, 20, now);
        // The first failed copy in a row (no count, or one unreadable): replaced at once.
        for first in [failed(None), failed(Some("x"))] {
            assert_eq!(replace_after(&first), None);
            assert!(matches!(step(&first, started), CopyStep::Replace { .. }));
        }
        // The n-th: 15 min, 1 h, 4 h after it started.
        for (before, wait) in [("1", 15), ("2", 60), ("3", 240)] {
            let copy = failed(Some(before));
            let at = started + Duration::minutes(wait);
            assert_eq!(replace_after(&copy), Some(at), "{before}");
            match step(&copy, at - Duration::seconds(1)) {
                CopyStep::Failed { reason } => assert!(
                    reason.contains("replaced after")
                        && reason.contains(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    "{reason}"
                ),
                other => panic!("{before}: {other:?}"),
            }
            assert!(
                matches!(step(&copy, at), CopyStep::Replace { .. }),
                "{before}"
            );
        }
        // The fifth in a row, however late: not replaced again, whatever the region's limit.
        let last = failed(Some("4"));
        for (in_flight, limit) in [(0, 20), (20, 20)] {
            match copy_step(Some(&last), in_flight, limit, started + Duration::days(30)) {
                CopyStep::Failed { reason } => assert!(
                    reason.contains(
                        "5 copies in a row have failed here, so it is not replaced again"
                    ) && reason.contains("deregister ami-dead"),
                    "{reason}"
                ),
                other => panic!("{other:?}"),
            }
        }
        // A copy someone disabled became available first: the failures before it do not run
        // on, and its replacement counts none.
        let disabled = Image {
            state: "disabled".into(),
            ..failed(Some("4"))
        };
        assert_eq!(
            (failed_before(&disabled), failures_through(&disabled)),
            (0, 0)
        );
        assert!(matches!(step(&disabled, started), CopyStep::Replace { .. }));
        assert_eq!(failures_through(&failed(Some("2"))), 3);
        // Without a creation date the wait cannot be counted: replaced, under the cap.
        let undated = Image {
            creation_date: None,
            ..failed(Some("2"))
        };
        assert!(matches!(step(&undated, started), CopyStep::Replace { .. }));
    }

    #[test]
    fn the_copy_picked_is_live_first_then_the_newest_failed_one() {
        let img = |id: &str, state: &str, created: &str| Image {
            id: id.into(),
            state: state.into(),
            creation_date: Some(created.into()),
            ..Image::default()
        };
        let old = img("ami-old", "failed", "2026-11-01T00:00:00Z");
        let new = img("ami-new", "failed", "2026-11-02T00:00:00Z");
        let disabled = img("ami-off", "disabled", "2026-10-01T00:00:00Z");
        let pending = img("ami-pending", "pending", "2026-11-03T00:00:00Z");
        let available = img("ami-ok", "available", "2026-11-01T00:00:00Z");
        let gone = img("ami-gone", "deregistered", "2026-11-09T00:00:00Z");
        fn ids(p: &Picked<'_>) -> (Option<String>, String) {
            let leftovers: Vec<&str> = p.leftovers.iter().map(|c| c.id.as_str()).collect();
            (p.copy.map(|c| c.id.clone()), leftovers.join(" "))
        }
        // In any order the reads list them, the same pick.
        let dead = [old.clone(), new.clone(), disabled.clone(), gone.clone()];
        let mut reversed = dead.clone();
        reversed.reverse();
        for found in [&dead[..], &reversed[..]] {
            assert_eq!(
                ids(&pick_copy(found)),
                (Some("ami-new".into()), "ami-off ami-old".into())
            );
        }
        let with_live = [
            old.clone(),
            pending.clone(),
            available.clone(),
            gone.clone(),
        ];
        assert_eq!(
            ids(&pick_copy(&with_live)),
            (Some("ami-ok".into()), "ami-old".into())
        );
        assert_eq!(
            ids(&pick_copy(&[new.clone(), pending.clone()])),
            (Some("ami-pending".into()), "ami-new".into())
        );
        assert_eq!(ids(&pick_copy(&[gone])), (None, String::new()));
        assert_eq!(ids(&pick_copy(&[])), (None, String::new()));
        assert!(is_dead(&disabled) && !is_dead(&pending));
    }

    #[test]
    fn the_name_holder_is_this_sources_copy_live_or_dead_or_another_image() {
        let img = |id: &str, state: &str, source: Option<&str>| Image {
            id: id.into(),
            state: state.into(),
            tags: source
                .map(|s| Tags::from([(PUBLISH_SOURCE.to_owned(), s.to_owned())]))
                .unwrap_or_default(),
            ..Image::default()
        };
        let answered = img("ami-answered", "pending", None);
        let tagged = img("ami-tagged", "available", Some("ami-src"));
        let disabled = img("ami-answered", "disabled", None);
        let other = img("ami-other", "available", Some("ami-another-source"));
        let gone = img("ami-gone", "deregistered", None);
        fn holder(named: &[Image]) -> Option<NameHolder<'_>> {
            name_holder(named, "ami-answered", "ami-src")
        }
        assert_eq!(holder(&[]), None);
        assert_eq!(holder(std::slice::from_ref(&gone)), None);
        assert_eq!(
            holder(&[gone.clone(), answered.clone()]),
            Some(NameHolder::LiveCopy(&answered))
        );
        assert_eq!(
            holder(std::slice::from_ref(&tagged)),
            Some(NameHolder::LiveCopy(&tagged))
        );
        assert_eq!(
            holder(std::slice::from_ref(&disabled)),
            Some(NameHolder::DeadCopy(&disabled))
        );
        assert_eq!(
            holder(std::slice::from_ref(&other)),
            Some(NameHolder::Other(&other))
        );
    }

    #[test]
    fn a_copy_is_gone_when_not_found_or_deregistered() {
        let img = |state: &str| Image {
            id: "ami-1".into(),
            state: state.into(),
            ..Image::default()
        };
        assert!(copy_gone(None));
        assert!(copy_gone(Some(&img("deregistered"))));
        // A failed copy is there: the region's listing finds it, and it is replaced as failed.
        for state in [
            "pending",
            "available",
            "transient",
            "failed",
            "error",
            "disabled",
        ] {
            assert!(!copy_gone(Some(&img(state))), "{state}");
        }
    }

    #[test]
    fn grants_missing_and_common() {
        let policy = Policy {
            accounts: BTreeSet::from(["111122223333".to_owned(), "444455556666".to_owned()]),
            organizations: BTreeSet::from([ORG.to_owned()]),
            ous: BTreeSet::from([OU.to_owned()]),
            public: true,
            ..Policy::default()
        };
        let current = Grants::from_entries(&["111122223333".into(), ORG.into()]);
        let missing = Grants::launch(&policy).missing_from(&current);
        assert_eq!(
            missing.accounts,
            BTreeSet::from(["444455556666".to_owned()])
        );
        assert!(missing.organizations.is_empty());
        assert_eq!(missing.ous.len(), 1);
        assert!(missing.public);
        let vol = Grants::create_volume(&policy);
        assert!(vol.organizations.is_empty() && vol.ous.is_empty());
        let everything =
            Grants::from_entries(&["111122223333".into(), ORG.into(), OU.into(), "all".into()]);
        assert!(
            Grants::launch(&policy)
                .missing_from(&everything)
                .accounts
                .len()
                == 1
        );
        let revoke = parse_principals(&["111122223333".into(), "public".into()]).expect("ok");
        let gone = revoke.common(&everything);
        assert!(gone.public && gone.accounts.len() == 1);
        let t = revoke.revoked_tags(&policy, &Tags::new()).expect("fits");
        assert_eq!(
            t.get(tags::ACCOUNTS).map(String::as_str),
            Some("444455556666")
        );
        assert_eq!(t.get(tags::PUBLIC).map(String::as_str), Some("false"));
        assert!(parse_principals(&["bob".into()]).is_err());
    }

    /// `n` account ids from the defaults.
    fn many_accounts(n: u64) -> Vec<String> {
        (0..n)
            .map(|i| format!("{:012}", 100_000_000_000 + i))
            .collect()
    }

    #[test]
    fn a_revoke_from_a_long_default_list_is_recorded_as_exclusions() {
        let d = Defaults {
            accounts: many_accounts(25),
            ..defaults()
        };
        let policy = resolve(&d, &Tags::new(), "us-east-1").expect("valid");
        assert_eq!(policy.accounts.len(), 25);
        // What stays (24 accounts, 311 characters) does not fit a tag: the revoked one is
        // recorded as an exclusion, and the policy read back no longer shares with it.
        let gone = parse_principals(&[d.accounts[3].clone()]).expect("ok");
        let t = gone.revoked_tags(&policy, &Tags::new()).expect("fits");
        assert_eq!(t, tags(&[(tags::REVOKED, d.accounts[3].as_str())]));
        let after = resolve(&d, &t, "us-east-1").expect("valid");
        assert_eq!(after.accounts.len(), 24);
        assert!(!after.accounts.contains(&d.accounts[3]));
        // A second revoke adds to the exclusions.
        let gone = parse_principals(&[d.accounts[7].clone()]).expect("ok");
        let t2 = gone.revoked_tags(&after, &t).expect("fits");
        assert_eq!(
            t2[tags::REVOKED],
            format!("{} {}", d.accounts[3], d.accounts[7])
        );
        // An image's own list wins over the exclusions (a manual publish set it).
        let mut own = t2.clone();
        own.insert(tags::ACCOUNTS.to_owned(), d.accounts[3].clone());
        let p = resolve(&d, &own, "us-east-1").expect("valid");
        assert_eq!(p.accounts, BTreeSet::from([d.accounts[3].clone()]));
        // A principal the policy does not list needs no record.
        let stranger = parse_principals(&["999988887777".into()]).expect("ok");
        assert_eq!(
            stranger.revoked_tags(&policy, &Tags::new()),
            Ok(Tags::new())
        );
    }

    #[test]
    fn a_revoke_that_fits_no_record_is_refused() {
        let d = Defaults {
            accounts: many_accounts(40),
            ..defaults()
        };
        let policy = resolve(&d, &Tags::new(), "us-east-1").expect("valid");
        // 20 accounts out of 40: neither the 20 left nor the 20 revoked fit (259 characters).
        let gone = parse_principals(&d.accounts[..20]).expect("ok");
        let e = gone
            .revoked_tags(&policy, &Tags::new())
            .expect_err("does not fit");
        assert!(
            e.contains("nothing was changed") && e.contains("SHARE_ACCOUNTS"),
            "{e}"
        );
        // 19 revoked fit (246 characters).
        let gone = parse_principals(&d.accounts[..19]).expect("ok");
        let t = gone.revoked_tags(&policy, &Tags::new()).expect("fits");
        assert_eq!(t[tags::REVOKED].len(), 246);
    }

    #[test]
    fn the_announce_and_record_table() {
        let at = || "20261122T120000Z".to_owned();
        let fresh = Tags::new();
        let c = conclude(&fresh, &[], false, at());
        assert_eq!(
            (c.status, c.announce),
            (PublishStatus::Published, Some(Announce::Published))
        );
        assert_eq!(
            c.record.as_ref().map(|t| t[PUBLISH_STATE].as_str()),
            Some(PUBLISHED)
        );
        let published = Tags::from([(PUBLISH_STATE.to_owned(), PUBLISHED.to_owned())]);
        assert!(already_published(&published));
        assert!(!already_published(&fresh));
        assert_eq!(conclude(&published, &[], false, at()).announce, None);
        assert_eq!(
            conclude(&published, &[], true, at()).announce,
            Some(Announce::Published)
        );
        let c = conclude(&fresh, &["eu-west-1", "us-west-2"], false, at());
        assert_eq!(
            (c.status, c.announce),
            (PublishStatus::Partial, Some(Announce::Partial))
        );
        assert_eq!(
            c.record,
            Some(Tags::from([
                (FAILED_REGIONS.to_owned(), "eu-west-1 us-west-2".to_owned()),
                (format!("{FAILED_REGIONS_MORE_PREFIX}2"), String::new()),
            ]))
        );
        let recorded = Tags::from([(FAILED_REGIONS.to_owned(), "eu-west-1 us-west-2".to_owned())]);
        let c = conclude(&recorded, &["eu-west-1", "us-west-2"], false, at());
        assert_eq!((c.announce, c.record), (None, None));
    }

    #[test]
    fn a_failed_region_list_longer_than_a_tag_goes_on_in_numbered_keys() {
        let at = || "20261122T120000Z".to_owned();
        // Every commercial region this build knows (not China's or GovCloud's partitions).
        let mut all: Vec<&str> = ids::KNOWN_REGIONS
            .into_iter()
            .filter(|r| !r.starts_with("cn-") && !r.starts_with("us-gov-"))
            .collect();
        all.sort_unstable();
        assert!(all.join(" ").len() > MAX_TAG_VALUE);
        let c = conclude(&Tags::new(), &all, false, at());
        assert_eq!(c.announce, Some(Announce::Partial));
        let record = c.record.expect("recorded");
        let keys: Vec<&str> = record.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [FAILED_REGIONS, "ami-pipeline:publish-failed-regions:2",]
        );
        for v in record.values() {
            assert!(v.chars().count() <= MAX_TAG_VALUE, "{v:?}");
            assert!(!v.starts_with(' ') && !v.ends_with(' ') && !v.contains("  "));
        }
        // Read back, the record is exactly the list: the same failures again are neither
        // announced nor recorded again, and the schedule retries every one of them.
        let mut on_image = record.clone();
        assert_eq!(
            recorded_failures(&on_image),
            all.iter().copied().collect::<BTreeSet<_>>()
        );
        let again = conclude(&on_image, &all, false, at());
        assert_eq!((again.announce, again.record), (None, None));
        on_image.insert(PUBLISH_STATE.to_owned(), IN_PROGRESS.to_owned());
        assert_eq!(retrying(&on_image).map(|r| r.len()), Some(all.len()));
        // Fewer failures, in one key now: the continuation key is emptied, not left stale.
        let c = conclude(&on_image, &["eu-west-1", "us-west-2"], false, at());
        assert_eq!(c.announce, None);
        let record = c.record.expect("recorded");
        assert_eq!(record[FAILED_REGIONS], "eu-west-1 us-west-2");
        assert_eq!(record["ami-pipeline:publish-failed-regions:2"], "");
        on_image.extend(record);
        assert_eq!(
            retrying(&on_image),
            Some(BTreeSet::from([
                "eu-west-1".to_owned(),
                "us-west-2".to_owned()
            ]))
        );
        // Published: both emptied.
        let done = conclude(&on_image, &[], false, at())
            .record
            .expect("recorded");
        assert_eq!(done[FAILED_REGIONS], "");
        assert_eq!(done["ami-pipeline:publish-failed-regions:2"], "");
    }

    #[test]
    fn a_public_image_is_deprecated_at_most_two_years_after_its_creation() {
        use chrono::{Duration, TimeZone, Utc};
        let now = Utc
            .with_ymd_and_hms(2026, 11, 22, 12, 0, 42)
            .single()
            .expect("time");
        let policy = |public: bool, days: i64| Policy {
            public,
            deprecate_after_days: days,
            ..Policy::default()
        };
        let at = |d: &Deprecation| d.at.map(|t| t.to_rfc3339());
        // New image, any allowed days: now + days, to the minute.
        let d = deprecation(&policy(true, 730), Some(now), now);
        assert_eq!(at(&d).as_deref(), Some("2028-11-21T12:00:00+00:00"));
        assert_eq!(d.note, None);
        // Created a year ago: cut to creation + 2 years, with the reason.
        let created = Utc
            .with_ymd_and_hms(2025, 11, 1, 8, 30, 15)
            .single()
            .expect("time");
        let d = deprecation(&policy(true, 730), Some(created), now);
        assert_eq!(at(&d).as_deref(), Some("2027-11-01T08:30:00+00:00"));
        assert!(
            d.note
                .as_deref()
                .is_some_and(|n| n.contains("2 years after its creation"))
        );
        // Not public: 10 years is EC2's only limit, so the days stand.
        let d = deprecation(&policy(false, 730), Some(created), now);
        assert_eq!(at(&d).as_deref(), Some("2028-11-21T12:00:00+00:00"));
        // Created more than 2 years ago: no allowed time is left.
        let old = Utc
            .with_ymd_and_hms(2024, 6, 1, 0, 0, 0)
            .single()
            .expect("time");
        let d = deprecation(&policy(true, 30), Some(old), now);
        assert_eq!(d.at, None);
        assert!(d.note.as_deref().is_some_and(|n| n.contains("has passed")));
        // 29 February: two years on is 28 February (the earlier candidate, never past the limit).
        let leap = Utc
            .with_ymd_and_hms(2028, 2, 29, 10, 0, 0)
            .single()
            .expect("time");
        let later = Utc
            .with_ymd_and_hms(2029, 1, 1, 0, 0, 0)
            .single()
            .expect("time");
        let d = deprecation(&policy(true, 700), Some(leap), later);
        assert_eq!(at(&d).as_deref(), Some("2030-02-28T10:00:00+00:00"));
        // Two years spanning 29 February 2028 are 731 days by the calendar: the limit is the
        // 730th day, the earlier reading.
        let march = Utc
            .with_ymd_and_hms(2027, 3, 1, 0, 0, 0)
            .single()
            .expect("time");
        let d = deprecation(&policy(true, 700), Some(march), later);
        assert_eq!(at(&d).as_deref(), Some("2029-02-28T00:00:00+00:00"));
        // Less than an hour left is as good as passed.
        let almost = now - Duration::days(730) + Duration::minutes(30);
        assert_eq!(deprecation(&policy(true, 30), Some(almost), now).at, None);
        // No deprecation asked for.
        assert_eq!(deprecation(&policy(true, 0), Some(old), now).at, None);
    }

    #[test]
    fn a_long_failed_list_is_split_between_regions_at_the_tag_limit() {
        // 20 names of 12 characters: 19 joined are 246 characters, 20 would be 259, so the
        // split comes after the 19th.
        let names: Vec<String> = (10..30).map(|i| format!("xx-region-{i}")).collect();
        let failed: Vec<&str> = names.iter().map(String::as_str).collect();
        let t = failed_region_tags(&Tags::new(), &failed);
        assert_eq!(t[FAILED_REGIONS].split(' ').count(), 19);
        assert_eq!(t[FAILED_REGIONS].chars().count(), 246);
        assert_eq!(t["ami-pipeline:publish-failed-regions:2"], "xx-region-29");
        assert_eq!(t.len(), 2);
        // Overlapping runs: one recorded a long list (two keys), another, which had not seen
        // it, records a short one; whichever writes last, the record read back is its own.
        let long = failed_region_tags(&Tags::new(), &failed);
        let short = failed_region_tags(&Tags::new(), &["eu-west-1"]);
        for (first, last) in [(&long, &short), (&short, &long)] {
            let mut on_image = first.clone();
            on_image.extend(last.clone());
            assert_eq!(
                recorded_failures(&on_image),
                recorded_failures(last),
                "{on_image:?}"
            );
        }
    }

    #[test]
    fn progress_accumulates_and_only_a_new_failure_is_announced() {
        let at = || "20261122T120000Z".to_owned();
        let in_progress = |failed: &str| {
            Tags::from([
                (PUBLISH_STATE.to_owned(), IN_PROGRESS.to_owned()),
                (FAILED_REGIONS.to_owned(), failed.to_owned()),
            ])
        };
        let recorded = in_progress("eu-west-1 us-west-2");
        assert_eq!(
            retrying(&recorded),
            Some(BTreeSet::from([
                "eu-west-1".to_owned(),
                "us-west-2".to_owned()
            ]))
        );
        assert_eq!(retrying(&in_progress("")), None);
        // One of the two now works: recorded silently.
        let c = conclude(&recorded, &["us-west-2"], false, at());
        assert_eq!(c.announce, None);
        assert_eq!(
            c.record,
            Some(Tags::from([
                (FAILED_REGIONS.to_owned(), "us-west-2".to_owned()),
                (format!("{FAILED_REGIONS_MORE_PREFIX}2"), String::new()),
            ]))
        );
        // A region that had not failed fails: announced.
        let c = conclude(
            &in_progress("us-west-2"),
            &["ap-south-1", "us-west-2"],
            false,
            at(),
        );
        assert_eq!(c.announce, Some(Announce::Partial));
    }

    #[test]
    fn an_encrypted_image_is_never_made_public_and_nothing_else_is_refused() {
        let public = Policy {
            public: true,
            ..Policy::default()
        };
        let private = Policy::default();
        assert!(public_refusal(&public, true).is_some_and(|why| why.contains("encrypted")));
        assert_eq!(public_refusal(&public, false), None);
        assert_eq!(public_refusal(&private, true), None);
        assert_eq!(public_refusal(&private, false), None);
    }
}
