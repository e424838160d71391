//! Retention: which stale AMIs to deprecate, which to deregister (and which of their snapshots
//! to delete), and which orphaned snapshots to delete — a pure function of
//! `(facts, policy, now)`.
//!
//! Safety rules, in the order they are applied to each image in scope:
//! 1. **Scope:** images with `ami-pipeline:managed=true`, plus foreign images matched by an
//!    explicit [`Selector`]; optionally only some families. A family belongs to the folder
//!    its oldest managed image was uploaded from ([`SOURCE_URI`], see
//!    [`crate::plan::naming::upload_folder`]): images uploaded from another folder into it
//!    are neither counted nor removed (reported with that reason), so another folder's
//!    uploads never change which of the family's images are removed.
//! 2. **Retention per (region, family):** the newest `keep_newest` available images are kept
//!    (ties in creation time broken by image id, the greater id counting as newer), anything
//!    younger than `min_age_days` is kept, and the newest one is kept whatever the numbers say.
//! 3. **Exclusions** (each reported as the reason): in use by an instance not terminated,
//!    referenced by a launch template version in scope, public or shared (unless allowed), the
//!    protection tag [`PROTECT_TAG`], deregistration protection, launched within
//!    `min_age_days`, a publish in flight ([`PUBLISH_STATE`] `in-progress`), and any state but
//!    `available`.
//! 4. **Staged removal:** a stale image is first deprecated; it is deregistered on a later run,
//!    once `grace_days` have passed since its deprecation time. A deprecation this pipeline
//!    scheduled (at most [`DEPRECATION_LEAD`] ahead) is waited for, never moved later. With
//!    `grace_days = 0` a stale image is deregistered in the same run, without a deprecation.
//!    An image cleanup deprecated ([`DEPRECATED_BY`]) that the policy keeps again (a newer
//!    image was removed, the policy changed) gets its deprecation removed.
//! 5. **Per-run caps** on deregistrations and on deprecations (oldest first); the rest wait for
//!    the next run.
//! 6. **Checked before acting:** sharing (launch permissions, `all` meaning public) and
//!    references (instances not terminated, SSM parameters) are read in a second pass for the
//!    images a first plan would act on, after the caps; the second plan acts only on images
//!    whose checks were read and came back clean. An image whose checks failed is skipped with
//!    the failure as its reason, and one that a moved cap window brought in unchecked waits for
//!    the next run. An image whose own checks clear is decided the same by both plans
//!    ([`cleared`]), so the caller may act on it before the other reads are done.
//! 7. **Snapshots** of a deregistered image are deleted only when no other image uses them;
//!    a snapshot shared with another image is left (the orphan sweep takes it once unused).
//!    **Orphan sweep:** managed snapshots no image uses, not pending, older than `grace_days`
//!    and than [`ORPHAN_MIN_AGE_DAYS`], unprotected.

use crate::model::{Image, Snapshot};
use crate::plan::lineage::{FAMILY, MANAGED, SOURCE_URI};
use crate::plan::naming::upload_folder;
use chrono::{DateTime, Duration, Utc};
use foldhash::fast::FixedState;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub use super::tags::{DEPRECATED_BY, PROTECT_TAG, PUBLISH_STATE};

/// The value of [`DEPRECATED_BY`] that cleanup writes on the images it deprecates.
pub const DEPRECATED_BY_CLEANUP: &str = "cleanup";

/// How far ahead cleanup schedules a deprecation: EnableImageDeprecation refuses past times,
/// and a run executes for up to the Lambda's 15 minutes after it planned, so 16 minutes ahead
/// is still in the future at its last call. A deprecation scheduled at most this far ahead is
/// one in flight: waited for, never moved later.
pub const DEPRECATION_LEAD: Duration = Duration::minutes(16);

/// Foreign images opted in to cleanup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Selector {
    /// `tag:KEY=VALUE`.
    TagEquals(String, String),
    /// `tag:KEY` (any value).
    TagKey(String),
    /// `name:GLOB` (`*` any run of characters, `?` one character).
    Name(String),
}

impl Selector {
    /// Parses `tag:KEY=VALUE`, `tag:KEY` or `name:GLOB`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tag:") {
            match rest.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok(Selector::TagEquals(k.into(), v.into())),
                None if !rest.is_empty() => Ok(Selector::TagKey(rest.into())),
                _ => Err(format!(
                    "{s:?}: a tag selector needs a key (tag:KEY or tag:KEY=VALUE)"
                )),
            }
        } else if let Some(glob) = s.strip_prefix("name:").filter(|g| !g.is_empty()) {
            Ok(Selector::Name(glob.into()))
        } else {
            Err(format!(
                "{s:?} is not a selector: use tag:KEY=VALUE, tag:KEY or name:GLOB"
            ))
        }
    }

    /// Whether `image` matches.
    pub fn matches(&self, image: &Image) -> bool {
        match self {
            Selector::TagEquals(k, v) => image.tags.get(k) == Some(v),
            Selector::TagKey(k) => image.tags.contains_key(k),
            Selector::Name(g) => glob(g.as_bytes(), image.name.as_bytes()),
        }
    }

    /// The selector as written.
    pub fn text(&self) -> String {
        match self {
            Selector::TagEquals(k, v) => format!("tag:{k}={v}"),
            Selector::TagKey(k) => format!("tag:{k}"),
            Selector::Name(g) => format!("name:{g}"),
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// The cleanup policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Keep the newest N available images of each family (the newest one is always kept).
    pub keep_newest: usize,
    /// Keep images younger than this, and images launched within it.
    pub min_age_days: i64,
    /// Days between deprecation and deregistration; also the minimum age of an orphan snapshot.
    pub grace_days: i64,
    /// Most deregistrations per run (and most orphan snapshot deletions).
    pub max_deletions: usize,
    /// Most deprecations per run.
    pub max_deprecations: usize,
    /// Only these families (empty: all).
    pub families: BTreeSet<String>,
    /// Foreign images opted in.
    pub selectors: Vec<Selector>,
    /// Public images may be cleaned up.
    pub allow_public: bool,
    /// Images shared with accounts / organizations may be cleaned up.
    pub allow_shared: bool,
    /// Delete managed snapshots no image uses.
    pub orphan_sweep: bool,
}

/// What cleanup knows about one region.
#[derive(Debug, Clone, Default)]
pub struct RegionFacts {
    /// The region.
    pub region: String,
    /// Every image this account owns there (managed or not: all count as snapshot users).
    pub images: Vec<Image>,
    /// Images referenced by launch template versions in scope, with the template named.
    pub used_by_templates: BTreeMap<String, String>,
    /// The second pass's checks of the images a first plan would act on; `None` in the first
    /// pass (nothing read yet, nothing required). Once `Some`, a removal is planned only for
    /// an image checked here and found clean.
    pub checked: Option<HashMap<String, Checks>>,
    /// This account's managed snapshots (candidates of the orphan sweep).
    pub managed_snapshots: Vec<Snapshot>,
}

/// What the second pass read about one image the first plan would act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// Accounts, organizations and OUs with launch permission, and `all` if it is public, or
    /// why they could not be read.
    pub shared_with: Result<Vec<String>, String>,
    /// What references the image (instances not terminated, SSM parameters, as ARNs), or
    /// why that could not be read.
    pub referenced_by: Result<Vec<String>, String>,
}

/// What happens to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Retained by policy.
    Keep,
    /// Stale, to be deprecated now.
    Deprecate,
    /// Stale and past its grace period: deregister, delete its unshared snapshots.
    Deregister,
    /// Stale but protected by an exclusion.
    Skip,
    /// Kept again after cleanup deprecated it: its deprecation is removed.
    Undeprecate,
}

/// A reason as reported: shared text, so the reasons a policy gives thousands of images
/// ("among the newest 3", "younger than 30 days") are formatted once per plan, not once per
/// image.
pub type Reason = Arc<str>;

/// The decision about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Region (shared by every decision there).
    pub region: Arc<str>,
    /// Family (shared by every decision of the family).
    pub family: Arc<str>,
    /// `ami-…`.
    pub image_id: String,
    /// Name.
    pub name: String,
    /// CreationDate.
    pub created: String,
    /// What happens.
    pub action: Action,
    /// Why (every reason that applies).
    pub reasons: Vec<Reason>,
    /// Snapshots deleted with the image (deregister only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delete_snapshots: Vec<String>,
    /// Snapshots kept because another image uses them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keep_snapshots: Vec<String>,
}

/// An orphaned snapshot to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanSnapshot {
    /// Region.
    pub region: Arc<str>,
    /// `snap-…`.
    pub snapshot_id: String,
    /// Why.
    pub reason: Reason,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// One per image in scope, ordered by region, family, newest first.
    pub decisions: Vec<Decision>,
    /// Orphaned snapshots to delete.
    pub orphans: Vec<OrphanSnapshot>,
    /// Deregistrations, deprecations and orphan deletions held back by the per-run caps.
    pub capped: usize,
}

/// An image id's first 24 bytes, zero-padded, as big-endian integers: ordering by it equals
/// ordering by the string for ids up to 24 bytes (`ami-` + 17 hex is 21), in two integer
/// comparisons instead of a pointer chase and a `memcmp`; longer ids tie here and fall back
/// to the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IdKey(u128, u64);

impl IdKey {
    fn of(id: &str) -> Self {
        let mut k = [0u8; 24];
        let b = id.as_bytes();
        let n = b.len().min(24);
        k[..n].copy_from_slice(&b[..n]);
        let (hi, lo) = k.split_at(16);
        let (mut h, mut l) = ([0u8; 16], [0u8; 8]);
        h.copy_from_slice(hi);
        l.copy_from_slice(lo);
        IdKey(u128::from_be_bytes(h), u64::from_be_bytes(l))
    }
}

/// Parses an RFC 3339 time. EC2's own shape (`2026-11-22T10:11:12.000Z`, or with a `+00:00`
/// offset) takes a direct path (chrono's general parser was ~8 % of the 100,000-image
/// profile); anything else (other offsets, leap seconds, lower-case `t`) goes to chrono's
/// parser, as does anything the direct path would reject.
fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let s = s?;
    fast_utc(s.as_bytes()).or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`, or `None` to fall back.
fn fast_utc(b: &[u8]) -> Option<DateTime<Utc>> {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some((b'.', frac)) = rest.split_first() {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(&frac[..digits])? * 10u32.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    if rest != b"Z" && rest != b"+00:00" {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    Some(
        date.and_hms_nano_opt(hour, minute, second, nanos)?
            .and_utc(),
    )
}

/// What the planner reads of one image, found in one pass (separate lookups chased the same
/// tag tree, key strings and fields several times per image, in sorted, not memory, order).
#[derive(Debug, Clone, Copy, Default)]
struct Marks<'a> {
    managed: bool,
    family: Option<&'a str>,
    /// The folder of the upload the image came from ([`SOURCE_URI`]).
    folder: Option<&'a str>,
    protected: bool,
    publishing: bool,
    public: bool,
    available: bool,
    deregistration_protected: bool,
    deprecated_by_cleanup: bool,
    launched: Option<DateTime<Utc>>,
}

/// Whether DescribeImages' `DeregistrationProtection` keeps the image from DeregisterImage:
/// anything but `disabled` (or nothing). Besides `enabled` and `enabled-with-cooldown`, an
/// image whose protection was disabled with a cooldown cannot be deregistered for 24 hours
/// ("you won't immediately be able to deregister the AMI", DisableImageDeregistrationProtection),
/// and the model documents no value for that state ("Indicates whether deregistration
/// protection is enabled"): a value not known to mean "off" is taken as protection, so the run
/// leaves the image with the value as its reason instead of failing on the refusal.
fn deregistration_protected(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "disabled")
}

impl<'a> Marks<'a> {
    fn of(image: &'a Image) -> Self {
        let mut m = Marks {
            public: image.public,
            available: image.state == "available",
            deregistration_protected: deregistration_protected(
                image.deregistration_protection.as_deref(),
            ),
            launched: parse_time(image.last_launched_time.as_deref()),
            ..Marks::default()
        };
        for (k, v) in &image.tags {
            match k.as_str() {
                MANAGED => m.managed = v == "true",
                FAMILY => m.family = Some(v),
                SOURCE_URI => m.folder = upload_folder(v),
                PROTECT_TAG => m.protected = protects(v),
                PUBLISH_STATE => m.publishing = v == "in-progress",
                DEPRECATED_BY => m.deprecated_by_cleanup = v == DEPRECATED_BY_CLEANUP,
                _ => {}
            }
        }
        m
    }
}

/// The image's family if it is in scope: managed, or a foreign image a selector opts in.
fn family_of<'a>(image: &Image, marks: &Marks<'a>, policy: &Policy) -> Option<Cow<'a, str>> {
    let family = marks.family.map(Cow::Borrowed);
    if marks.managed {
        return Some(family.unwrap_or(Cow::Borrowed("(none)")));
    }
    let sel = policy.selectors.iter().find(|s| s.matches(image))?;
    Some(family.unwrap_or_else(|| Cow::Owned(sel.text())))
}

/// Whether a [`PROTECT_TAG`] value protects (any value but `false`).
fn protects(value: &str) -> bool {
    !value.eq_ignore_ascii_case("false")
}

fn protected(tags: &crate::model::Tags) -> bool {
    tags.get(PROTECT_TAG).is_some_and(|v| protects(v))
}

/// Why an image may not be touched (empty: it may).
fn exclusions(
    image: &Image,
    marks: &Marks,
    facts: &RegionFacts,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut why = Vec::new();
    if !marks.available {
        why.push(format!("state is {}", image.state));
    }
    if let Some(t) = facts.used_by_templates.get(&image.id) {
        why.push(format!("referenced by launch template {t}"));
    }
    if marks.public && !policy.allow_public {
        why.push("public".into());
    }
    if let Some(c) = facts.checked.as_ref().and_then(|c| c.get(&image.id)) {
        why.extend(check_exclusions(c, policy));
    }
    if marks.protected {
        why.push(format!("protected by tag {PROTECT_TAG}"));
    }
    if marks.deregistration_protected {
        why.push(format!(
            "deregistration protection ({})",
            image.deregistration_protection.as_deref().unwrap_or("")
        ));
    }
    if let Some(t) = marks.launched
        && now - t < Duration::days(policy.min_age_days)
    {
        why.push(format!(
            "launched within {} days ({})",
            policy.min_age_days,
            image.last_launched_time.as_deref().unwrap_or_default()
        ));
    }
    if marks.publishing {
        why.push("publish in progress".into());
    }
    why
}

/// Why an image's own checks exclude it (empty: they do not). `all` in the launch
/// permissions is public, not sharing: an image the listing showed private that was made
/// public before its permissions were read is public.
fn check_exclusions(c: &Checks, policy: &Policy) -> Vec<String> {
    let mut why = Vec::new();
    match &c.shared_with {
        Ok(with) => {
            let (public, with): (Vec<&str>, Vec<&str>) =
                with.iter().map(String::as_str).partition(|w| *w == "all");
            if !public.is_empty() && !policy.allow_public {
                why.push("public (its launch permissions include all)".into());
            }
            if !with.is_empty() && !policy.allow_shared {
                why.push(format!("shared with {}", with.join(", ")));
            }
        }
        Err(e) => why.push(format!("launch permissions could not be read: {e}")),
    }
    match &c.referenced_by {
        Ok(by) if !by.is_empty() => why.push(format!("in use: referenced by {}", by.join(", "))),
        Ok(_) => {}
        Err(e) => why.push(format!("references could not be read: {e}")),
    }
    why
}

/// Whether an image the first plan acts on ([`to_check`]) may be acted on as soon as its own
/// checks are read, before the second plan: they exclude nothing. The second plan then
/// decides the same for it, whatever the other images' checks say (the property test
/// `an_image_whose_checks_clear_is_decided_the_same_by_the_second_plan`):
/// - its rank in its family counts every available image, acted on or not, and its age,
///   stage and other exclusions are its own;
/// - which of its snapshots another image uses is read over every image of the account, not
///   over the decisions;
/// - the caps keep the oldest actions first, and the second plan's actions before the caps
///   are the first plan's minus the images whose checks failed: an image inside the first
///   plan's window is still inside it.
///
/// So cleanup removes each such image while the next ones are still being read, instead of
/// after all the reads (on a rate-limited account the two would otherwise add up).
pub fn cleared(checks: &Checks, policy: &Policy) -> bool {
    check_exclusions(checks, policy).is_empty()
}

/// One image in scope, read in the gathering pass: its marks, its times, and the strings its
/// decision reports, copied while the image is at hand (in memory order: deciding in family
/// order then reads only this row, not the image's scattered strings).
struct Row<'a> {
    img: &'a Image,
    /// Its index in the region's images (the snapshot users' key).
    index: usize,
    marks: Marks<'a>,
    created: Option<DateTime<Utc>>,
    stage: Stage,
    id: String,
    name: String,
    created_text: String,
}

/// Where an image stands in the staged removal, from its deprecation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not deprecated, or deprecated only from a time further ahead than a deprecation cleanup
    /// schedules: deprecate it (now).
    Live,
    /// Deprecated from a time at most [`DEPRECATION_LEAD`] ahead (a run's own deprecation in
    /// flight): wait for it, do not move it later.
    Scheduled,
    /// Deprecated less than `grace_days` ago: wait.
    InGrace,
    /// Deprecated at least `grace_days` ago: deregister it.
    PastGrace,
}

/// A row's place in its family's order (kept small: this is what the sort moves).
struct SortKey {
    created: Option<DateTime<Utc>>,
    id: IdKey,
    row: usize,
}

/// The reasons that depend only on the policy, formatted once per plan.
struct Reasons {
    newest: Reason,
    among_newest: Reason,
    younger: Reason,
    no_date: Reason,
    stale: Reason,
    past_grace: Reason,
    no_grace: Reason,
    capped: Reason,
    capped_deprecation: Reason,
    unchecked: Reason,
    undeprecate: Reason,
    orphan: Reason,
}

impl Reasons {
    fn of(policy: &Policy) -> Self {
        let text = |s: String| Reason::from(s);
        Reasons {
            newest: text("newest of its family".into()),
            among_newest: text(format!("among the newest {}", policy.keep_newest)),
            younger: text(format!("younger than {} days", policy.min_age_days)),
            no_date: text("creation date unknown".into()),
            stale: text(format!(
                "stale: beyond the newest {} and older than {} days",
                policy.keep_newest.max(1),
                policy.min_age_days
            )),
            past_grace: text(format!(
                "stale and deprecated for more than {} days",
                policy.grace_days
            )),
            no_grace: text(format!(
                "stale: beyond the newest {} and older than {} days; grace period 0 days: \
                 deregistered without a deprecation",
                policy.keep_newest.max(1),
                policy.min_age_days
            )),
            capped: text(format!(
                "stale, but the per-run cap of {} deregistrations is reached; next run",
                policy.max_deletions
            )),
            capped_deprecation: text(format!(
                "stale, but the per-run cap of {} deprecations is reached; next run",
                policy.max_deprecations
            )),
            unchecked: text(
                "stale, but its sharing and references were not read this run (the \
                 invocation's deadline came first, or the cap window moved after the checks); \
                 next run"
                    .into(),
            ),
            undeprecate: text(
                "deprecated by cleanup earlier and kept now: its deprecation is removed".into(),
            ),
            orphan: text(format!(
                "managed snapshot used by no image, not pending, older than {} days",
                policy.grace_days.max(ORPHAN_MIN_AGE_DAYS)
            )),
        }
    }
}

/// What one pass over a region's images gathers.
struct Gathered<'a> {
    /// Snapshot → (the first image using it, by index, and whether another one does too).
    users: HashMap<&'a str, (usize, bool), FixedState>,
    /// The images in scope.
    rows: Vec<Row<'a>>,
    /// Family → (its shared name, its rows' sort keys).
    families: HashMap<Cow<'a, str>, (Arc<str>, Vec<SortKey>), FixedState>,
}

/// One pass over the images, in memory order, gathers everything the rules read:
/// - snapshot → (the first image using it, whether another one does too), over every image of
///   the account, in scope or not (a hash map: a B-tree's string comparisons were most of the
///   planner's time with 100,000 images);
/// - for each image in scope, its marks, times and report strings, grouped by family.
fn gather<'a>(rf: &'a RegionFacts, policy: &Policy, now: DateTime<Utc>) -> Gathered<'a> {
    let grace = Duration::days(policy.grace_days);
    let mut users: HashMap<&str, (usize, bool), FixedState> =
        HashMap::with_capacity_and_hasher(rf.images.len(), FixedState::default());
    let mut rows: Vec<Row> = Vec::with_capacity(rf.images.len());
    let mut families: HashMap<Cow<str>, (Arc<str>, Vec<SortKey>), FixedState> = HashMap::default();
    for (index, img) in rf.images.iter().enumerate() {
        for s in &img.snapshot_ids {
            users
                .entry(s.as_str())
                .and_modify(|(first, more)| *more |= *first != index)
                .or_insert((index, false));
        }
        let marks = Marks::of(img);
        let Some(f) = family_of(img, &marks, policy) else {
            continue;
        };
        if !policy.families.is_empty() && !policy.families.contains(f.as_ref()) {
            continue;
        }
        let (_, keys) = match families.get_mut(f.as_ref()) {
            Some(entry) => entry,
            None => {
                let name: Arc<str> = Arc::from(f.as_ref());
                families.entry(f).or_insert((name, Vec::new()))
            }
        };
        let created = parse_time(img.creation_date.as_deref());
        keys.push(SortKey {
            created,
            id: IdKey::of(&img.id),
            row: rows.len(),
        });
        let stage = match parse_time(img.deprecation_time.as_deref()) {
            Some(t) if t <= now && now - t >= grace => Stage::PastGrace,
            Some(t) if t <= now => Stage::InGrace,
            Some(t) if t <= now + DEPRECATION_LEAD => Stage::Scheduled,
            _ => Stage::Live,
        };
        rows.push(Row {
            img,
            index,
            marks,
            created,
            stage,
            id: img.id.clone(),
            name: img.name.clone(),
            created_text: img.creation_date.clone().unwrap_or_default(),
        });
    }
    Gathered {
        users,
        rows,
        families,
    }
}

/// Plans one cleanup run over every region's facts.
pub fn plan(facts: &[RegionFacts], policy: &Policy, now: DateTime<Utc>) -> Plan {
    let why = Reasons::of(policy);
    let min_age = Duration::days(policy.min_age_days);
    let mut decisions = Vec::with_capacity(facts.iter().map(|f| f.images.len()).sum());
    // Per decision: its creation time and id key, for the cap's ordering.
    let mut cap_keys: Vec<(Option<DateTime<Utc>>, IdKey)> =
        Vec::with_capacity(decisions.capacity());
    let mut orphans = Vec::new();
    for rf in facts {
        let region: Arc<str> = Arc::from(rf.region.as_str());
        let Gathered {
            users,
            mut rows,
            families,
        } = gather(rf, policy, now);
        // Families in name order (the report's order).
        let mut families: Vec<_> = families.into_iter().collect();
        families.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, (family, mut keys)) in families {
            // Newest first; equal creation times: the greater image id counts as newer.
            keys.sort_unstable_by(|a, b| {
                b.created
                    .cmp(&a.created)
                    .then_with(|| b.id.cmp(&a.id))
                    .then_with(|| rows[b.row].img.id.cmp(&rows[a.row].img.id))
            });
            let owner = owner_folder(&keys, &rows);
            let mut rank = 0usize;
            for key in keys {
                let row = &mut rows[key.row];
                let mut d = Decision::kept(&region, &family, row);
                let (img, marks) = (row.img, &row.marks);
                if let Some(reason) = foreign_upload(owner, marks) {
                    d.action = Action::Skip;
                    d.reasons.push(reason);
                    decisions.push(d);
                    cap_keys.push((row.created, key.id));
                    continue;
                }
                if marks.available {
                    if rank == 0 {
                        d.reasons.push(why.newest.clone());
                    } else if rank < policy.keep_newest {
                        d.reasons.push(why.among_newest.clone());
                    }
                    rank += 1;
                }
                match row.created {
                    Some(t) if now - t < min_age => d.reasons.push(why.younger.clone()),
                    None => d.reasons.push(why.no_date.clone()),
                    _ => {}
                }
                if d.reasons.is_empty() {
                    let excluded = exclusions(img, marks, rf, policy, now);
                    if excluded.is_empty() {
                        decide_stage(&mut d, row, &users, policy, &why);
                    } else {
                        d.action = Action::Skip;
                        d.reasons.extend(excluded.into_iter().map(Reason::from));
                    }
                } else if marks.deprecated_by_cleanup && img.deprecation_time.is_some() {
                    d.action = Action::Undeprecate;
                    d.reasons.push(why.undeprecate.clone());
                }
                decisions.push(d);
                cap_keys.push((row.created, key.id));
            }
        }
        if policy.orphan_sweep {
            orphans.extend(orphans_of(rf, &users, policy, now, &region, &why));
        }
    }
    let capped = apply_cap(&mut decisions, &cap_keys, &mut orphans, policy, &why);
    require_checked(&mut decisions, facts, &why);
    Plan {
        decisions,
        orphans,
        capped,
    }
}

impl Decision {
    /// A keep decision about `row`'s image, without reasons yet (its strings moved out).
    fn kept(region: &Arc<str>, family: &Arc<str>, row: &mut Row<'_>) -> Self {
        Decision {
            region: region.clone(),
            family: family.clone(),
            image_id: std::mem::take(&mut row.id),
            name: std::mem::take(&mut row.name),
            created: std::mem::take(&mut row.created_text),
            action: Action::Keep,
            reasons: Vec::new(),
            delete_snapshots: Vec::new(),
            keep_snapshots: Vec::new(),
        }
    }
}

/// Why a managed image uploaded from another folder than its family's `owner` is neither
/// counted nor removed, or None when it is the owner's (or either folder is unknown).
fn foreign_upload(owner: Option<&str>, marks: &Marks<'_>) -> Option<Reason> {
    let (owner, folder) = owner
        .zip(marks.folder)
        .filter(|(owner, folder)| marks.managed && owner != folder)?;
    Some(Reason::from(format!(
        "uploaded from {folder}, but its family belongs to {owner} (the folder of its oldest \
         image): neither counted nor removed"
    )))
}

/// The folder a family belongs to, and the image that makes it so, among `images` (the
/// family's, as DescribeImages lists them with `IncludeDisabled`, as cleanup's listing does):
/// the upload folder of its oldest managed image
/// with one, the greater id counting as newer on equal times, as the planner decides. Used
/// by create-image to refuse an upload that would land in a family another folder owns.
pub fn family_owner(images: &[Image]) -> Option<(&str, &str)> {
    images
        .iter()
        .filter_map(|img| {
            let marks = Marks::of(img);
            let folder = marks.managed.then_some(marks.folder)??;
            Some((
                parse_time(img.creation_date.as_deref()),
                img.id.as_str(),
                folder,
            ))
        })
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, id, folder)| (folder, id))
}

/// The folder a family belongs to: that of its oldest managed image with a known upload
/// folder (`keys` are newest first), or None when none has one.
fn owner_folder<'a>(keys: &[SortKey], rows: &[Row<'a>]) -> Option<&'a str> {
    keys.iter()
        .rev()
        .map(|k| &rows[k.row].marks)
        .find_map(|m| m.managed.then_some(m.folder)?)
}

/// The two-pass protocol's first half: the images a first plan (made without checks) would
/// deprecate or deregister, after the caps, as `(region, image id)`. Only these are checked
/// (sharing needs one call per image, references one per ten); the second plan, with
/// [`with_checks`], is the one executed and reported (an image whose checks clear may be acted
/// on as soon as they are read: [`cleared`]).
pub fn to_check(first: &Plan) -> Vec<(String, String)> {
    first
        .decisions
        .iter()
        .filter(|d| matches!(d.action, Action::Deprecate | Action::Deregister))
        .map(|d| (d.region.to_string(), d.image_id.clone()))
        .collect()
}

/// The second half: records what was read, and from now on requires checks in every region
/// (an image with none is not acted on).
pub fn with_checks(facts: &mut [RegionFacts], read: Vec<(String, String, Checks)>) {
    for rf in facts.iter_mut() {
        rf.checked.get_or_insert_with(HashMap::new);
    }
    for (region, image, checks) in read {
        if let Some(map) = facts
            .iter_mut()
            .find(|f| f.region == region)
            .and_then(|f| f.checked.as_mut())
        {
            map.insert(image, checks);
        }
    }
}

/// In the second pass (after the caps), a removal needs the image's checks: one the cap
/// window brought in after they were read waits for the next run.
fn require_checked(decisions: &mut [Decision], facts: &[RegionFacts], why: &Reasons) {
    for d in decisions {
        if !matches!(d.action, Action::Deprecate | Action::Deregister) {
            continue;
        }
        let unchecked = facts
            .iter()
            .find(|f| *f.region == *d.region)
            .and_then(|rf| rf.checked.as_ref())
            .is_some_and(|c| !c.contains_key(&d.image_id));
        if unchecked {
            d.action = Action::Keep;
            d.reasons = vec![why.unchecked.clone()];
            d.delete_snapshots.clear();
            d.keep_snapshots.clear();
        }
    }
}

/// A stale image not excluded: deprecate it, wait out the grace period, or deregister it with
/// the snapshots no other image uses (a snapshot another image uses is "shared": kept).
fn decide_stage(
    d: &mut Decision,
    row: &Row<'_>,
    users: &HashMap<&str, (usize, bool), FixedState>,
    policy: &Policy,
    why: &Reasons,
) {
    let img = row.img;
    let stage = match row.stage {
        Stage::Live | Stage::Scheduled if policy.grace_days == 0 => {
            d.reasons.push(why.no_grace.clone());
            Stage::PastGrace
        }
        Stage::PastGrace => {
            d.reasons.push(why.past_grace.clone());
            Stage::PastGrace
        }
        other => other,
    };
    match stage {
        Stage::Live => {
            d.action = Action::Deprecate;
            d.reasons.push(why.stale.clone());
        }
        Stage::Scheduled => {
            d.reasons.push(Reason::from(format!(
                "deprecation takes effect at {}; deregistered after the {}-day grace period",
                img.deprecation_time.as_deref().unwrap_or_default(),
                policy.grace_days
            )));
        }
        Stage::InGrace => {
            d.reasons.push(Reason::from(format!(
                "deprecated at {}; deregistered after the {}-day grace period",
                img.deprecation_time.as_deref().unwrap_or_default(),
                policy.grace_days
            )));
        }
        Stage::PastGrace => {
            d.action = Action::Deregister;
            for s in &img.snapshot_ids {
                let shared = users
                    .get(s.as_str())
                    .is_some_and(|(first, more)| *more || *first != row.index);
                if shared {
                    d.keep_snapshots.push(s.clone());
                } else {
                    d.delete_snapshots.push(s.clone());
                }
            }
        }
    }
}

/// The least age of an orphan snapshot, whatever `GRACE_DAYS` says: create-image marks its
/// snapshots managed when it starts them, so a snapshot no image uses yet may be one still
/// being written (the fast path's, `pending`) or one whose registration create-image retries
/// for up to [`crate::plan::import::GIVE_UP_REGISTERING_AFTER`] (6 days) after its import
/// started. A sweep with `GRACE_DAYS=0` (removal in one run) would otherwise delete them.
pub const ORPHAN_MIN_AGE_DAYS: i64 = 7;

/// The region's managed snapshots no image uses, unprotected, not `pending`, in the families in
/// scope and older than the grace period, and than [`ORPHAN_MIN_AGE_DAYS`].
fn orphans_of(
    rf: &RegionFacts,
    users: &HashMap<&str, (usize, bool), FixedState>,
    policy: &Policy,
    now: DateTime<Utc>,
    region: &Arc<str>,
    why: &Reasons,
) -> Vec<OrphanSnapshot> {
    let grace = Duration::days(policy.grace_days.max(ORPHAN_MIN_AGE_DAYS));
    let mut orphans = Vec::new();
    for s in &rf.managed_snapshots {
        if users.contains_key(s.id.as_str())
            || protected(&s.tags)
            || s.state.as_deref() == Some("pending")
        {
            continue;
        }
        if let Some(f) = s.tags.get(FAMILY)
            && !policy.families.is_empty()
            && !policy.families.contains(f)
        {
            continue;
        }
        let Some(started) = parse_time(s.start_time.as_deref()) else {
            continue;
        };
        if now - started < grace {
            continue;
        }
        orphans.push(OrphanSnapshot {
            region: region.clone(),
            snapshot_id: s.id.clone(),
            reason: why.orphan.clone(),
        });
    }
    orphans
}

/// The caps: the oldest deregistrations and the oldest deprecations go first, each up to its
/// own cap; the rest wait for the next run (kept, with the reason). Orphans beyond the
/// deletion cap wait too. Returns how many were held back.
fn apply_cap(
    decisions: &mut [Decision],
    cap_keys: &[(Option<DateTime<Utc>>, IdKey)],
    orphans: &mut Vec<OrphanSnapshot>,
    policy: &Policy,
    why: &Reasons,
) -> usize {
    let mut capped = cap_action(
        decisions,
        cap_keys,
        Action::Deregister,
        policy.max_deletions,
        &why.capped,
    );
    capped += cap_action(
        decisions,
        cap_keys,
        Action::Deprecate,
        policy.max_deprecations,
        &why.capped_deprecation,
    );
    if orphans.len() > policy.max_deletions {
        capped += orphans.len() - policy.max_deletions;
        orphans.truncate(policy.max_deletions);
    }
    capped
}

/// Keeps every `action` decision beyond the `max` oldest, with `reason`; returns how many.
fn cap_action(
    decisions: &mut [Decision],
    cap_keys: &[(Option<DateTime<Utc>>, IdKey)],
    action: Action,
    max: usize,
    reason: &Reason,
) -> usize {
    let mut order: Vec<(Option<DateTime<Utc>>, IdKey, usize)> = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| d.action == action)
        .map(|(i, _)| (cap_keys[i].0, cap_keys[i].1, i))
        .collect();
    order.sort_unstable_by(|(ta, ka, a), (tb, kb, b)| {
        ta.cmp(tb)
            .then_with(|| ka.cmp(kb))
            .then_with(|| decisions[*a].image_id.cmp(&decisions[*b].image_id))
    });
    let mut capped = 0;
    for (_, _, i) in order.into_iter().skip(max) {
        let d = &mut decisions[i];
        d.action = Action::Keep;
        d.reasons = vec![reason.clone()];
        d.delete_snapshots.clear();
        d.keep_snapshots.clear();
        capped += 1;
    }
    capped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tags;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("valid")
    }

    fn policy() -> Policy {
        Policy {
            keep_newest: 2,
            min_age_days: 30,
            grace_days: 7,
            max_deletions: 10,
            max_deprecations: 10,
            families: BTreeSet::new(),
            selectors: vec![],
            allow_public: false,
            allow_shared: false,
            orphan_sweep: true,
        }
    }

    fn img(id: &str, family: &str, days_old: i64) -> Image {
        Image {
            id: id.into(),
            name: format!("{family}-{id}"),
            state: "available".into(),
            creation_date: Some((now() - Duration::days(days_old)).to_rfc3339()),
            snapshot_ids: vec![format!("snap-{id}")],
            tags: Tags::from([
                (MANAGED.to_string(), "true".to_string()),
                (FAMILY.to_string(), family.to_string()),
            ]),
            ..Image::default()
        }
    }

    fn deprecated(mut i: Image, days_ago: i64) -> Image {
        i.deprecation_time = Some((now() - Duration::days(days_ago)).to_rfc3339());
        i
    }

    fn region(images: Vec<Image>) -> RegionFacts {
        RegionFacts {
            region: "us-east-1".into(),
            images,
            ..RegionFacts::default()
        }
    }

    #[test]
    fn an_orphan_is_a_week_old_at_least_and_not_being_written_whatever_the_grace() {
        let snap = |id: &str, days: i64, state: &str| Snapshot {
            id: id.into(),
            state: Some(state.into()),
            start_time: Some((now() - Duration::days(days)).to_rfc3339()),
            tags: Tags::from([(MANAGED.to_string(), "true".to_string())]),
            ..Snapshot::default()
        };
        let mut rf = region(vec![]);
        rf.managed_snapshots = vec![
            // Awaiting its registration (create-image retries for up to 6 days).
            snap("snap-registering", 3, "completed"),
            snap("snap-old", 8, "completed"),
            snap("snap-failed", 8, "error"),
            // A fast-path snapshot still being written.
            snap("snap-writing", 20, "pending"),
        ];
        for grace in [0, 7] {
            let p = plan(
                &[rf.clone()],
                &Policy {
                    grace_days: grace,
                    ..policy()
                },
                now(),
            );
            let ids: Vec<&str> = p.orphans.iter().map(|o| o.snapshot_id.as_str()).collect();
            assert_eq!(ids, ["snap-old", "snap-failed"], "grace {grace}");
        }
        let p = plan(
            &[rf],
            &Policy {
                grace_days: 10,
                ..policy()
            },
            now(),
        );
        assert!(p.orphans.is_empty(), "{:?}", p.orphans);
    }

    fn action_of(p: &Plan, id: &str) -> Action {
        p.decisions
            .iter()
            .find(|d| d.image_id == id)
            .map(|d| d.action)
            .unwrap_or_else(|| panic!("{id} not in plan"))
    }

    #[test]
    fn keep_n_and_min_age_then_deprecate_then_deregister() {
        let facts = [region(vec![
            img("a", "web", 100),
            img("b", "web", 90),
            img("c", "web", 80),
            deprecated(img("d", "web", 70), 3),
            deprecated(img("e", "web", 60), 10),
            img("f", "web", 5),
        ])];
        let p = plan(&facts, &policy(), now());
        assert_eq!(action_of(&p, "f"), Action::Keep); // newest
        assert_eq!(action_of(&p, "e"), Action::Keep); // among the newest 2
        assert_eq!(action_of(&p, "d"), Action::Keep); // deprecated 3 days ago: grace
        assert_eq!(action_of(&p, "c"), Action::Deprecate);
        assert_eq!(action_of(&p, "a"), Action::Deprecate);
        let facts = [region(vec![
            deprecated(img("a", "web", 100), 8),
            img("f", "web", 5),
        ])];
        let one = Policy {
            keep_newest: 1,
            ..policy()
        };
        let p = plan(&facts, &one, now());
        assert_eq!(action_of(&p, "a"), Action::Deregister);
        assert_eq!(p.decisions[1].delete_snapshots, vec!["snap-a".to_string()]);
    }

    #[test]
    fn another_folders_uploads_never_change_what_a_family_loses() {
        let from = |mut i: Image, folder: &str| {
            i.tags.insert(
                SOURCE_URI.to_string(),
                format!("s3://uploads/{folder}/{}.raw", i.id),
            );
            i
        };
        let own: Vec<Image> = (0..8)
            .map(|n| from(img(&format!("w{n}"), "a-b", 40 + n), "a-b"))
            .collect();
        let removed = |p: &Plan| -> Vec<String> {
            p.decisions
                .iter()
                .filter(|d| matches!(d.action, Action::Deprecate | Action::Deregister))
                .map(|d| d.image_id.clone())
                .collect()
        };
        let alone = plan(&[region(own.clone())], &policy(), now());
        assert_eq!(removed(&alone).len(), 6, "{:?}", alone.decisions);
        // Another folder whose name slugs to the same family ("a/b" → "a-b") uploads ten
        // newer images, and an older one: the family stays the first folder's, its removals
        // are the same, and the intruders are neither counted nor removed.
        let mut world = own;
        world.extend((0..10).map(|n| from(img(&format!("x{n}"), "a-b", 31 + n), "a/b")));
        world.push(from(img("x-old", "a-b", 400), "a/b"));
        let mixed = plan(&[region(world)], &policy(), now());
        assert_ne!(
            removed(&mixed),
            removed(&alone),
            "the oldest image decides the owner"
        );
        let mut world: Vec<Image> = (0..8)
            .map(|n| from(img(&format!("w{n}"), "a-b", 40 + n), "a-b"))
            .collect();
        world.extend((0..10).map(|n| from(img(&format!("x{n}"), "a-b", 31 + n), "a/b")));
        let mixed = plan(&[region(world)], &policy(), now());
        assert_eq!(removed(&mixed), removed(&alone));
        for n in 0..10 {
            let d = mixed
                .decisions
                .iter()
                .find(|d| d.image_id == format!("x{n}"));
            assert_eq!(d.map(|d| d.action), Some(Action::Skip));
            assert!(
                d.is_some_and(|d| d.reasons[0].contains("belongs to s3://uploads/a-b/")),
                "{d:?}"
            );
        }
    }

    #[test]
    fn the_newest_is_kept_even_with_n_zero_and_ties_go_to_the_greater_id() {
        let mut p0 = policy();
        p0.keep_newest = 0;
        p0.min_age_days = 0;
        let mut x = img("x", "web", 50);
        let mut y = img("y", "web", 50);
        x.creation_date = y.creation_date.clone();
        y.snapshot_ids = vec!["snap-y".into()];
        x.snapshot_ids = vec!["snap-x".into()];
        let p = plan(&[region(vec![x, y])], &p0, now());
        assert_eq!(action_of(&p, "y"), Action::Keep);
        assert_eq!(action_of(&p, "x"), Action::Deprecate);
    }

    #[test]
    fn id_keys_order_as_the_ids_do_up_to_24_bytes() {
        let ids = [
            "",
            "a",
            "ami-0",
            "ami-00000000000000000",
            "ami-0000000000000000f",
            "ami-1",
            "ami-0123456789abcdef0",
            "ami-0123456789abcdef01",
            "ami-fffffffffffffffff",
            "ami-0123456789abcdef0123",
            "ami-\u{ff}",
            "b",
        ];
        for a in ids {
            for b in ids {
                assert_eq!(IdKey::of(a).cmp(&IdKey::of(b)), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
        // Beyond 24 bytes the keys tie and the planner compares the strings.
        let long = "ami-0123456789abcdef01234567";
        assert_eq!(IdKey::of(long), IdKey::of(&long[..24]));
    }

    #[test]
    fn the_direct_time_path_agrees_with_chrono_and_falls_back_on_the_rest() {
        let chrono_of = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        for s in [
            "2026-11-22T10:11:12.000Z",
            "2026-11-22T10:11:12Z",
            "2026-11-22T10:11:12.123456789+00:00",
            "2024-02-29T23:59:59.5Z",
            "1999-12-31T00:00:00.000001Z",
        ] {
            assert!(
                fast_utc(s.as_bytes()).is_some(),
                "{s} takes the direct path"
            );
            assert_eq!(parse_time(Some(s)), chrono_of(s), "{s}");
        }
        for s in [
            "2026-11-22T10:11:12+02:00",
            "2026-11-22t10:11:12z",
            "2016-12-31T23:59:60Z",
            "2026-11-22 10:11:12Z",
            "2026-11-22T10:11:12.1234567891Z",
        ] {
            assert_eq!(fast_utc(s.as_bytes()), None, "{s} falls back");
            assert_eq!(parse_time(Some(s)), chrono_of(s), "{s}");
        }
        for s in [
            "2026-02-30T10:11:12Z",
            "2026-13-01T10:11:12Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T10:11:12.Z",
            "2026-11-22T10:11:12",
            "2026-11-22T10:11:12Zjunk",
            "+026-11-22T10:11:12Z",
            "",
        ] {
            assert_eq!(parse_time(Some(s)), None, "{s} is not a time");
            assert_eq!(chrono_of(s), None, "chrono agrees on {s}");
        }
    }

    #[test]
    fn selectors_parse_and_match() {
        let mut i = img("z", "x", 1);
        i.tags.clear();
        i.name = "legacy-web-2024".into();
        i.tags.insert("team".into(), "web".into());
        assert!(
            Selector::parse("name:legacy-*-20??")
                .expect("ok")
                .matches(&i)
        );
        assert!(Selector::parse("tag:team=web").expect("ok").matches(&i));
        assert!(Selector::parse("tag:team").expect("ok").matches(&i));
        assert!(!Selector::parse("tag:team=db").expect("ok").matches(&i));
        assert!(Selector::parse("team=web").is_err());
        assert!(Selector::parse("tag:").is_err());
        assert!(Selector::parse("name:").is_err());
    }

    /// A small deterministic generator (xorshift64*), so the property test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// What a second pass might have read: mostly clean, sometimes shared, referenced, or
    /// failed.
    fn random_checks(rng: &mut Rng) -> Checks {
        let shared_with = match rng.below(20) {
            0 => Err("RequestLimitExceeded".to_string()),
            1 | 2 => Ok(vec!["111122223333".to_string()]),
            // Made public after the listing (the listing said private).
            3 => Ok(vec!["all".to_string()]),
            _ => Ok(vec![]),
        };
        let referenced_by = match rng.below(20) {
            0 => Err("UnauthorizedOperation".to_string()),
            1 | 2 => Ok(vec!["arn:aws:ec2:r:1:instance/i-1".to_string()]),
            _ => Ok(vec![]),
        };
        Checks {
            shared_with,
            referenced_by,
        }
    }

    /// DeregistrationProtection values: on, on with a cooldown, off but still in its cooldown,
    /// and off.
    const PROTECTIONS: [&str; 4] = [
        "enabled",
        "enabled-with-cooldown",
        "disabled-until 2026-11-23T11:00:00.000Z",
        "disabled",
    ];

    fn random_world(rng: &mut Rng) -> (Vec<RegionFacts>, Policy) {
        let mut regions = Vec::new();
        for r in 0..1 + rng.below(2) {
            let mut rf = RegionFacts {
                region: format!("region-{r}"),
                ..RegionFacts::default()
            };
            // A first pass (nothing checked) or a second one (most images checked).
            let mut checked = (!rng.chance(20)).then(HashMap::new);
            let n = rng.below(40);
            for i in 0..n {
                let family = format!("f{}", rng.below(4));
                let mut im = img(&format!("i{r}-{i}"), &family, rng.below(400) as i64);
                if rng.chance(10) {
                    im.creation_date = rf
                        .images
                        .last()
                        .and_then(|p: &Image| p.creation_date.clone())
                        .or(im.creation_date);
                }
                if rng.chance(40) {
                    im = deprecated(im, rng.below(30) as i64);
                }
                if rng.chance(10) {
                    im.state = ["pending", "failed", "disabled"][rng.below(3) as usize].into();
                }
                if rng.chance(10) {
                    im.public = true;
                }
                if rng.chance(8) {
                    im.tags.insert(PROTECT_TAG.into(), "true".into());
                }
                if rng.chance(6) {
                    im.deregistration_protection = Some(PROTECTIONS[rng.below(4) as usize].into());
                }
                if rng.chance(10) {
                    im.last_launched_time =
                        Some((now() - Duration::days(rng.below(60) as i64)).to_rfc3339());
                }
                if rng.chance(5) {
                    im.tags.insert(PUBLISH_STATE.into(), "in-progress".into());
                }
                if rng.chance(15) && !rf.images.is_empty() {
                    let other = &rf.images[rng.below(rf.images.len() as u64) as usize];
                    im.snapshot_ids.push(other.snapshot_ids[0].clone());
                }
                if rng.chance(10) {
                    im.tags.remove(MANAGED);
                }
                if rng.chance(10) {
                    rf.used_by_templates.insert(im.id.clone(), "lt-1".into());
                }
                if rng.chance(10) {
                    im.tags
                        .insert(DEPRECATED_BY.into(), DEPRECATED_BY_CLEANUP.into());
                }
                if let Some(map) = checked.as_mut().filter(|_| !rng.chance(5)) {
                    map.insert(im.id.clone(), random_checks(rng));
                }
                rf.images.push(im);
            }
            rf.checked = checked;
            regions.push(rf);
        }
        let p = Policy {
            keep_newest: rng.below(4) as usize,
            min_age_days: rng.below(60) as i64,
            grace_days: rng.below(14) as i64,
            max_deletions: rng.below(20) as usize,
            max_deprecations: rng.below(20) as usize,
            allow_public: rng.chance(20),
            allow_shared: rng.chance(20),
            ..policy()
        };
        (regions, p)
    }

    /// A deliberately naive planner written from the module's rules alone (no shared helper but
    /// the selector and the time parser): the real one is optimized for 100,000 images, so it
    /// is checked against this one decision for decision, in order.
    #[expect(
        clippy::too_many_lines,
        reason = "the differential oracle states every rule in one place, on purpose"
    )]
    fn oracle(facts: &[RegionFacts], pol: &Policy, now: DateTime<Utc>) -> (Vec<Verdict>, usize) {
        let t = |s: &Option<String>| parse_time(s.as_deref());
        let days = Duration::days;
        let mut out: Vec<Verdict> = Vec::new();
        let mut unchecked_rows = Vec::new();
        for rf in facts {
            let scope = |i: &Image| -> Option<String> {
                let managed = i.tags.get(MANAGED).map(String::as_str) == Some("true");
                let sel = pol.selectors.iter().find(|s| s.matches(i));
                let fam = match (i.tags.get(FAMILY), managed, sel) {
                    (_, false, None) => return None,
                    (Some(f), _, _) => f.clone(),
                    (None, true, _) => "(none)".to_string(),
                    (None, false, Some(s)) => s.text(),
                };
                (pol.families.is_empty() || pol.families.contains(&fam)).then_some(fam)
            };
            let families: BTreeSet<String> = rf.images.iter().filter_map(scope).collect();
            for fam in families {
                let mut imgs: Vec<(usize, &Image)> = rf
                    .images
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| scope(i).as_deref() == Some(fam.as_str()))
                    .collect();
                imgs.sort_by(|(_, a), (_, b)| {
                    (t(&b.creation_date), &b.id).cmp(&(t(&a.creation_date), &a.id))
                });
                let available: Vec<&str> = imgs
                    .iter()
                    .filter(|(_, i)| i.state == "available")
                    .map(|(_, i)| i.id.as_str())
                    .collect();
                for (idx, i) in imgs {
                    let rank = available.iter().position(|a| *a == i.id);
                    let kept = rank.is_some_and(|r| r == 0 || r < pol.keep_newest)
                        || t(&i.creation_date).is_none_or(|c| now - c < days(pol.min_age_days));
                    let check = rf.checked.as_ref().and_then(|c| c.get(&i.id));
                    let excluded = i.state != "available"
                        || rf.used_by_templates.contains_key(&i.id)
                        || (i.public && !pol.allow_public)
                        || check.is_some_and(|c| {
                            c.shared_with.as_ref().map_or(true, |w| {
                                (w.iter().any(|a| a != "all") && !pol.allow_shared)
                                    || (w.iter().any(|a| a == "all") && !pol.allow_public)
                            }) || c.referenced_by.as_ref().map_or(true, |r| !r.is_empty())
                        })
                        || i.tags
                            .get(PROTECT_TAG)
                            .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
                        || i.deregistration_protection
                            .as_deref()
                            .is_some_and(|p| p != "disabled")
                        || t(&i.last_launched_time)
                            .is_some_and(|l| now - l < days(pol.min_age_days))
                        || i.tags.get(PUBLISH_STATE).map(String::as_str) == Some("in-progress");
                    let ours = i.tags.get(DEPRECATED_BY).map(String::as_str)
                        == Some(DEPRECATED_BY_CLEANUP);
                    let action = if kept {
                        if ours && i.deprecation_time.is_some() {
                            Action::Undeprecate
                        } else {
                            Action::Keep
                        }
                    } else if excluded {
                        Action::Skip
                    } else if pol.grace_days == 0 {
                        Action::Deregister
                    } else {
                        match t(&i.deprecation_time) {
                            None => Action::Deprecate,
                            Some(d) if d > now + Duration::minutes(16) => Action::Deprecate,
                            Some(d) if d > now => Action::Keep,
                            Some(d) if now - d < days(pol.grace_days) => Action::Keep,
                            Some(_) => Action::Deregister,
                        }
                    };
                    let unchecked = rf.checked.as_ref().is_some_and(|c| !c.contains_key(&i.id));
                    let mut deleted = Vec::new();
                    if action == Action::Deregister {
                        for s in &i.snapshot_ids {
                            let elsewhere = rf
                                .images
                                .iter()
                                .enumerate()
                                .any(|(j, o)| j != idx && o.snapshot_ids.contains(s));
                            if !elsewhere {
                                deleted.push(s.clone());
                            }
                        }
                    }
                    out.push((
                        rf.region.clone(),
                        i.id.clone(),
                        action,
                        deleted,
                        t(&i.creation_date),
                    ));
                    unchecked_rows.push(unchecked);
                }
            }
        }
        // The caps: oldest first, over every region, one per action.
        let mut capped = 0;
        for (action, max) in [
            (Action::Deregister, pol.max_deletions),
            (Action::Deprecate, pol.max_deprecations),
        ] {
            let mut acts: Vec<usize> = (0..out.len()).filter(|k| out[*k].2 == action).collect();
            acts.sort_by(|a, b| (out[*a].4, &out[*a].1).cmp(&(out[*b].4, &out[*b].1)));
            capped += acts.len().saturating_sub(max);
            for k in acts.into_iter().skip(max) {
                out[k].2 = Action::Keep;
                out[k].3.clear();
            }
        }
        // Then, within the caps, an image not checked is not acted on.
        for (v, unchecked) in out.iter_mut().zip(unchecked_rows) {
            if unchecked && matches!(v.2, Action::Deprecate | Action::Deregister) {
                v.2 = Action::Keep;
                v.3.clear();
            }
        }
        (out, capped)
    }

    /// What random_world leaves out: family filters, selectors, unknown creation dates,
    /// deprecation set for a future time.
    fn random_extras(rng: &mut Rng, facts: &mut [RegionFacts], pol: &mut Policy) {
        if rng.chance(20) {
            pol.families = ["f0", "f2"].map(String::from).into();
        }
        if rng.chance(25) {
            pol.selectors = vec![Selector::TagEquals("team".into(), "web".into())];
        }
        for rf in facts.iter_mut() {
            for im in &mut rf.images {
                if !im.tags.contains_key(MANAGED) && rng.chance(50) {
                    im.tags.insert("team".into(), "web".into());
                    if rng.chance(50) {
                        im.tags.remove(FAMILY);
                    }
                }
                if rng.chance(4) {
                    im.creation_date = None;
                }
                if rng.chance(5) {
                    im.deprecation_time = Some((now() + Duration::days(2)).to_rfc3339());
                }
                if rng.chance(5) {
                    // A deprecation a run scheduled (at most 16 minutes ahead), or just beyond.
                    let ahead = [1, 15, 16, 17][rng.below(4) as usize];
                    im.deprecation_time = Some((now() + Duration::minutes(ahead)).to_rfc3339());
                }
            }
        }
    }

    /// (region, image, action, snapshots deleted, creation time).
    type Verdict = (String, String, Action, Vec<String>, Option<DateTime<Utc>>);

    #[test]
    fn the_planner_agrees_with_a_naive_one_on_random_worlds() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut seen = BTreeMap::new();
        for case in 0..3000 {
            let (mut facts, mut pol) = random_world(&mut rng);
            random_extras(&mut rng, &mut facts, &mut pol);
            let p = plan(&facts, &pol, now());
            let (want, capped) = oracle(&facts, &pol, now());
            let got: Vec<Verdict> = p
                .decisions
                .iter()
                .map(|d| {
                    (
                        d.region.to_string(),
                        d.image_id.clone(),
                        d.action,
                        d.delete_snapshots.clone(),
                        parse_time(
                            Some(&d.created)
                                .filter(|c| !c.is_empty())
                                .map(String::as_str),
                        ),
                    )
                })
                .collect();
            assert_eq!(got, want, "case {case}: {pol:?}");
            // (No managed snapshots here, so every capped removal is a deregistration.)
            assert_eq!(p.capped, capped, "case {case}");
            for v in &want {
                *seen.entry(v.2).or_insert(0usize) += 1;
            }
        }
        // The generator reaches every action, and often.
        for a in [
            Action::Keep,
            Action::Deprecate,
            Action::Deregister,
            Action::Skip,
            Action::Undeprecate,
        ] {
            assert!(seen.get(&a).is_some_and(|n| *n > 300), "{a:?}: {seen:?}");
        }
    }

    /// Nothing excludes an image the plan acts on.
    fn assert_safe_to_act(case: usize, d: &Decision, im: &Image, rf: &RegionFacts, pol: &Policy) {
        let ex = exclusions(im, &Marks::of(im), rf, pol, now());
        assert!(
            ex.is_empty(),
            "case {case}: {} excluded by {ex:?} yet {:?}",
            im.id,
            d.action
        );
        assert_eq!(im.state, "available");
        assert!(!rf.used_by_templates.contains_key(&im.id));
        assert!(!protected(&im.tags));
        assert!(pol.allow_public || !im.public);
        if let Some(checked) = &rf.checked {
            let c = checked.get(&im.id).expect("acted on only when checked");
            let shared = c.shared_with.as_ref().expect("sharing was read");
            assert!(pol.allow_shared || shared.iter().all(|w| w == "all"));
            assert!(pol.allow_public || !shared.iter().any(|w| w == "all"));
            assert_eq!(c.referenced_by.as_ref().map(Vec::len), Ok(0));
        }
    }

    #[test]
    fn property_no_protected_image_no_empty_family_no_shared_snapshot() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut removals = 0;
        for case in 0..5000 {
            let (facts, pol) = random_world(&mut rng);
            let p = plan(&facts, &pol, now());
            for rf in &facts {
                for d in p.decisions.iter().filter(|d| *d.region == *rf.region) {
                    let im = rf
                        .images
                        .iter()
                        .find(|i| i.id == d.image_id)
                        .expect("decided images exist");
                    assert_eq!(
                        im.tags.get(MANAGED).map(String::as_str),
                        Some("true"),
                        "case {case}: out of scope"
                    );
                    if matches!(d.action, Action::Deprecate | Action::Deregister) {
                        removals += 1;
                        assert_safe_to_act(case, d, im, rf, &pol);
                    }
                    for s in &d.delete_snapshots {
                        let others = rf
                            .images
                            .iter()
                            .filter(|o| o.id != im.id && o.snapshot_ids.contains(s))
                            .count();
                        assert_eq!(others, 0, "case {case}: {s} is used by another image");
                    }
                }
                // Every family keeps at least one available image that is not removed.
                let mut fams: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
                for d in p.decisions.iter().filter(|d| *d.region == *rf.region) {
                    let im = rf
                        .images
                        .iter()
                        .find(|i| i.id == d.image_id)
                        .expect("exists");
                    let e = fams.entry(&*d.family).or_default();
                    if im.state == "available" {
                        e.0 += 1;
                        if d.action != Action::Deregister {
                            e.1 += 1;
                        }
                    }
                }
                for (f, (avail, left)) in fams {
                    assert!(avail == 0 || left >= 1, "case {case}: family {f} emptied");
                }
                for o in p.orphans.iter().filter(|o| *o.region == *rf.region) {
                    assert!(
                        !rf.images
                            .iter()
                            .any(|i| i.snapshot_ids.contains(&o.snapshot_id))
                    );
                }
            }
            let deregs = p
                .decisions
                .iter()
                .filter(|d| d.action == Action::Deregister)
                .count();
            assert!(deregs <= pol.max_deletions, "case {case}: cap exceeded");
            let deprecations = p
                .decisions
                .iter()
                .filter(|d| d.action == Action::Deprecate)
                .count();
            assert!(
                deprecations <= pol.max_deprecations,
                "case {case}: deprecation cap exceeded"
            );
        }
        assert!(
            removals > 1000,
            "the generator must exercise removals, got {removals}"
        );
    }

    /// Uploads from their family's folder or now and then from another one, and managed
    /// snapshots, some used by an image, some orphaned.
    fn folders_and_orphans(rng: &mut Rng, rf: &mut RegionFacts) {
        // Uploads from the family's folder, or now and then from another one.
        for im in &mut rf.images {
            if rng.chance(70) {
                let family = im.tags.get(FAMILY).cloned().unwrap_or_default();
                let folder = if rng.chance(15) { "other" } else { &family };
                im.tags.insert(
                    SOURCE_URI.to_string(),
                    format!("s3://uploads/{folder}/{}.raw", im.id),
                );
            }
        }
        // Managed snapshots: some used by an image, some orphaned.
        let used: Vec<String> = rf
            .images
            .iter()
            .filter_map(|i| i.snapshot_ids.first().cloned())
            .collect();
        for n in 0..rng.below(6) {
            let id = match used.get(rng.below(used.len() as u64 + 3) as usize) {
                Some(s) => s.clone(),
                None => format!("snap-orphan-{}-{n}", rf.region),
            };
            rf.managed_snapshots.push(Snapshot {
                id,
                start_time: Some((now() - Duration::days(rng.below(30) as i64)).to_rfc3339()),
                tags: Tags::from([(MANAGED.to_string(), "true".to_string())]),
                ..Snapshot::default()
            });
        }
    }

    #[test]
    fn an_image_whose_checks_clear_is_decided_the_same_by_the_second_plan() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let (mut streamed, mut held, mut window_moved) = (0, 0, 0);
        for case in 0..5000 {
            let (mut facts, mut pol) = random_world(&mut rng);
            random_extras(&mut rng, &mut facts, &mut pol);
            pol.orphan_sweep = rng.chance(50);
            for rf in &mut facts {
                rf.checked = None;
                folders_and_orphans(&mut rng, rf);
            }
            let first = plan(&facts, &pol, now());
            // Reads as a run makes them: some fail, some find sharing or references, some
            // are never made (the deadline).
            let reads: Vec<(String, String, Checks)> = to_check(&first)
                .into_iter()
                .filter_map(|(r, i)| (!rng.chance(5)).then(|| (r, i, random_checks(&mut rng))))
                .collect();
            let mut second_facts = facts.clone();
            with_checks(&mut second_facts, reads.clone());
            let second = plan(&second_facts, &pol, now());
            let find = |p: &Plan, r: &str, i: &str| {
                p.decisions
                    .iter()
                    .find(|d| *d.region == *r && d.image_id == i)
                    .cloned()
                    .expect("decided")
            };
            if second.capped < first.capped
                || second
                    .decisions
                    .iter()
                    .any(|d| d.reasons.iter().any(|r| r.contains("not read this run")))
            {
                window_moved += 1;
            }
            assert_eq!(second.orphans, first.orphans, "case {case}: orphans");
            for (r, i, c) in &reads {
                if cleared(c, &pol) {
                    streamed += 1;
                    assert_eq!(
                        find(&second, r, i),
                        find(&first, r, i),
                        "case {case}: {i} cleared, decided otherwise by the second plan"
                    );
                } else {
                    held += 1;
                }
            }
            // And the second plan acts on nothing else.
            for d in &second.decisions {
                if matches!(d.action, Action::Deprecate | Action::Deregister) {
                    assert!(
                        reads.iter().any(|(r, i, c)| *r == *d.region
                            && *i == d.image_id
                            && cleared(c, &pol)),
                        "case {case}: {} acted on without clear checks",
                        d.image_id
                    );
                }
            }
        }
        // The generator reaches what the proof is about: reads that fail or find sharing, and
        // caps that bind and whose window moves.
        assert!(
            streamed > 3000 && held > 500 && window_moved > 200,
            "{streamed} cleared, {held} held, {window_moved} windows moved"
        );
    }

    #[test]
    fn the_second_pass_acts_only_on_checked_images_and_skips_failed_reads() {
        let mut facts = vec![
            region(vec![
                img("a", "web", 100),
                img("b", "web", 90),
                img("c", "web", 80),
                img("d", "web", 70),
                img("e", "web", 1),
            ]),
            RegionFacts {
                region: "eu-west-1".into(),
                ..RegionFacts::default()
            },
        ];
        let one = Policy {
            keep_newest: 1,
            grace_days: 0,
            max_deletions: 2,
            ..policy()
        };
        let first = plan(&facts, &one, now());
        // The oldest two within the cap; only they are checked.
        assert_eq!(
            to_check(&first),
            [
                ("us-east-1".to_string(), "b".to_string()),
                ("us-east-1".into(), "a".into())
            ]
        );
        let clean = || Checks {
            shared_with: Ok(vec![]),
            referenced_by: Ok(vec![]),
        };
        let failed = Checks {
            shared_with: Err("RequestLimitExceeded: slow down".into()),
            referenced_by: Ok(vec![]),
        };
        with_checks(
            &mut facts,
            vec![
                ("us-east-1".into(), "a".into(), failed),
                ("us-east-1".into(), "b".into(), clean()),
            ],
        );
        // Every region now requires checks.
        assert!(facts[1].checked.is_some());
        let second = plan(&facts, &one, now());
        let reasons = |id: &str| {
            second
                .decisions
                .iter()
                .find(|d| d.image_id == id)
                .map(|d| d.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(action_of(&second, "a"), Action::Skip);
        assert_eq!(
            reasons("a"),
            ["launch permissions could not be read: RequestLimitExceeded: slow down"]
        );
        assert_eq!(action_of(&second, "b"), Action::Deregister);
        // The freed cap slot went to c, which was never checked: it waits; d is capped.
        assert_eq!(action_of(&second, "c"), Action::Keep);
        assert!(
            reasons("c")[0].contains("not read this run"),
            "{:?}",
            reasons("c")
        );
        assert_eq!(action_of(&second, "d"), Action::Keep);
        assert!(reasons("d")[0].contains("cap of 2"), "{:?}", reasons("d"));
        assert_eq!(second.capped, 1);
    }

    #[test]
    fn grace_zero_removes_in_one_run_and_a_scheduled_deprecation_is_never_moved() {
        let facts = [region(vec![img("a", "web", 100), img("z", "web", 1)])];
        let zero = Policy {
            keep_newest: 1,
            grace_days: 0,
            ..policy()
        };
        let p = plan(&facts, &zero, now());
        assert_eq!(action_of(&p, "a"), Action::Deregister);
        assert!(p.decisions[1].reasons[0].contains("without a deprecation"));
        // grace > 0: a deprecation 10 minutes ahead is this pipeline's own, in flight: wait.
        let mut a = img("a", "web", 100);
        a.deprecation_time = Some((now() + Duration::minutes(10)).to_rfc3339());
        let one = Policy {
            keep_newest: 1,
            ..policy()
        };
        let p = plan(&[region(vec![a.clone(), img("z", "web", 1)])], &one, now());
        assert_eq!(action_of(&p, "a"), Action::Keep);
        assert!(p.decisions[1].reasons[0].contains("takes effect at"));
        // A deprecation years ahead (not ours) is brought forward.
        a.deprecation_time = Some((now() + Duration::days(700)).to_rfc3339());
        let p = plan(&[region(vec![a, img("z", "web", 1)])], &one, now());
        assert_eq!(action_of(&p, "a"), Action::Deprecate);
    }

    #[test]
    fn a_kept_image_cleanup_deprecated_is_undeprecated_and_deprecations_are_capped() {
        let mut mine = deprecated(img("m", "web", 40), 1);
        mine.tags
            .insert(DEPRECATED_BY.into(), DEPRECATED_BY_CLEANUP.into());
        // Deprecated by someone else: left alone.
        let theirs = deprecated(img("t", "web", 35), 1);
        let facts = [region(vec![
            mine,
            theirs,
            img("x", "web", 100),
            img("y", "web", 90),
            img("w", "web", 80),
        ])];
        let pol = Policy {
            keep_newest: 2,
            max_deprecations: 2,
            ..policy()
        };
        let p = plan(&facts, &pol, now());
        assert_eq!(action_of(&p, "m"), Action::Undeprecate);
        assert_eq!(action_of(&p, "t"), Action::Keep);
        // Three stale, the oldest two deprecated, the third capped.
        assert_eq!(action_of(&p, "x"), Action::Deprecate);
        assert_eq!(action_of(&p, "y"), Action::Deprecate);
        assert_eq!(action_of(&p, "w"), Action::Keep);
        assert_eq!(p.capped, 1);
    }
}
