//! Retention: which stale AMIs to deprecate, which to deregister (and which of their snapshots
//! to delete), and which orphaned snapshots to delete — a pure function of
//! `(facts, policy, now)`.
//!
//! Safety rules, in the order they are applied to each image in scope:
//! 1. **Scope:** images with `ami-pipeline:managed=true`, plus foreign images matched by an
//!    explicit [`Selector`]; optionally only some families.
//! 2. **Retention per (region, family):** the newest `keep_newest` available images are kept
//!    (ties in creation time broken by image id, the greater id counting as newer), anything
//!    younger than `min_age_days` is kept, and the newest one is kept whatever the numbers say.
//! 3. **Exclusions** (each reported as the reason): in use by an instance not terminated,
//!    referenced by a launch template version in scope, public or shared (unless allowed), the
//!    protection tag [`PROTECT_TAG`], deregistration protection, launched within
//!    `min_age_days`, a publish in flight ([`PUBLISH_STATE`] `in-progress`), and any state but
//!    `available`.
//! 4. **Staged removal:** a stale image is first deprecated; it is deregistered on a later run,
//!    once `grace_days` have passed since its deprecation time.
//! 5. **Per-run cap** on deregistrations (oldest first); the rest wait for the next run.
//! 6. **Snapshots** of a deregistered image are deleted only when no other image uses them;
//!    a snapshot shared with another image is left (the orphan sweep takes it once unused).
//!    **Orphan sweep:** managed snapshots no image uses, older than `grace_days`, unprotected.

use crate::model::{Image, Snapshot};
use crate::plan::lineage::{FAMILY, MANAGED};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Tag that protects an image or snapshot from cleanup (any value but `false`).
pub const PROTECT_TAG: &str = "ami-pipeline:protect";
/// Tag publish keeps on an image while copies or shares are in flight (`in-progress`).
pub const PUBLISH_STATE: &str = "ami-pipeline:publish-state";

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
    /// Images used by instances not terminated.
    pub used_by_instances: BTreeSet<String>,
    /// Images referenced by launch template versions in scope, with the template named.
    pub used_by_templates: BTreeMap<String, String>,
    /// Images with launch permissions for accounts / organizations / OUs (what they list).
    pub shared: BTreeMap<String, Vec<String>>,
    /// This account's managed snapshots (candidates of the orphan sweep).
    pub managed_snapshots: Vec<Snapshot>,
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
}

/// The decision about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Region.
    pub region: String,
    /// Family.
    pub family: String,
    /// `ami-…`.
    pub image_id: String,
    /// Name.
    pub name: String,
    /// CreationDate.
    pub created: String,
    /// What happens.
    pub action: Action,
    /// Why (every reason that applies).
    pub reasons: Vec<String>,
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
    pub region: String,
    /// `snap-…`.
    pub snapshot_id: String,
    /// Why.
    pub reason: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// One per image in scope, ordered by region, family, newest first.
    pub decisions: Vec<Decision>,
    /// Orphaned snapshots to delete.
    pub orphans: Vec<OrphanSnapshot>,
    /// Deregistrations (and orphan deletions) held back by the per-run cap.
    pub capped: usize,
}

/// An image id's first 24 bytes, zero-padded, inline: ordering by it equals ordering by the
/// string for ids up to 24 bytes (`ami-` + 17 hex is 21), without a pointer chase per
/// comparison; longer ids tie here and fall back to the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IdKey([u8; 24]);

impl IdKey {
    fn of(id: &str) -> Self {
        let mut k = [0u8; 24];
        let b = id.as_bytes();
        let n = b.len().min(24);
        k[..n].copy_from_slice(&b[..n]);
        IdKey(k)
    }
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn family_of(image: &Image, policy: &Policy) -> Option<String> {
    if image.tags.get(MANAGED).map(String::as_str) == Some("true") {
        return Some(
            image
                .tags
                .get(FAMILY)
                .cloned()
                .unwrap_or_else(|| "(none)".into()),
        );
    }
    let sel = policy.selectors.iter().find(|s| s.matches(image))?;
    Some(
        image
            .tags
            .get(FAMILY)
            .cloned()
            .unwrap_or_else(|| sel.text()),
    )
}

fn protected(tags: &crate::model::Tags) -> bool {
    tags.get(PROTECT_TAG)
        .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
}

/// Why an image may not be touched (empty: it may).
fn exclusions(
    image: &Image,
    facts: &RegionFacts,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut why = Vec::new();
    if image.state != "available" {
        why.push(format!("state is {}", image.state));
    }
    if facts.used_by_instances.contains(&image.id) {
        why.push("in use by an instance".into());
    }
    if let Some(t) = facts.used_by_templates.get(&image.id) {
        why.push(format!("referenced by launch template {t}"));
    }
    if image.public && !policy.allow_public {
        why.push("public".into());
    }
    if let Some(with) = facts.shared.get(&image.id).filter(|w| !w.is_empty())
        && !policy.allow_shared
    {
        why.push(format!("shared with {}", with.join(", ")));
    }
    if protected(&image.tags) {
        why.push(format!("protected by tag {PROTECT_TAG}"));
    }
    if image
        .deregistration_protection
        .as_deref()
        .is_some_and(|p| p.starts_with("enabled"))
    {
        why.push("deregistration protection is enabled".into());
    }
    if let Some(t) = parse_time(image.last_launched_time.as_deref())
        && now - t < Duration::days(policy.min_age_days)
    {
        why.push(format!(
            "launched within {} days ({})",
            policy.min_age_days,
            image.last_launched_time.as_deref().unwrap_or_default()
        ));
    }
    if image.tags.get(PUBLISH_STATE).map(String::as_str) == Some("in-progress") {
        why.push("publish in progress".into());
    }
    why
}

/// Plans one cleanup run over every region's facts.
pub fn plan(facts: &[RegionFacts], policy: &Policy, now: DateTime<Utc>) -> Plan {
    let mut decisions = Vec::new();
    let mut orphans = Vec::new();
    for rf in facts {
        // Snapshot → (an image using it, whether another one does too), over every image of
        // the account, in scope or not. A hash map: with 100,000 images a B-tree's string
        // comparisons (a pointer chase each) were most of the planner's time.
        let mut users: HashMap<&str, (&str, bool)> = HashMap::with_capacity(rf.images.len());
        for img in &rf.images {
            for s in &img.snapshot_ids {
                users
                    .entry(s.as_str())
                    .and_modify(|(first, more)| *more |= *first != img.id.as_str())
                    .or_insert((img.id.as_str(), false));
            }
        }
        let mut families: BTreeMap<String, Vec<&Image>> = BTreeMap::new();
        for img in &rf.images {
            if let Some(f) = family_of(img, policy)
                && (policy.families.is_empty() || policy.families.contains(&f))
            {
                families.entry(f).or_default().push(img);
            }
        }
        for (family, images) in families {
            // Newest first; equal creation times: the greater image id counts as newer.
            // (Times are parsed once, not in the comparator.)
            let mut images: Vec<(Option<DateTime<Utc>>, IdKey, &Image)> = images
                .into_iter()
                .map(|i| (parse_time(i.creation_date.as_deref()), IdKey::of(&i.id), i))
                .collect();
            images.sort_unstable_by(|(ta, ka, a), (tb, kb, b)| {
                tb.cmp(ta)
                    .then_with(|| kb.cmp(ka))
                    .then_with(|| b.id.cmp(&a.id))
            });
            let mut rank = 0usize;
            for (created, _, img) in images {
                let is_available = img.state == "available";
                let mut keep_reasons = Vec::new();
                if is_available {
                    if rank == 0 {
                        keep_reasons.push("newest of its family".to_string());
                    } else if rank < policy.keep_newest {
                        keep_reasons.push(format!("among the newest {}", policy.keep_newest));
                    }
                    rank += 1;
                }
                match created {
                    Some(t) if now - t < Duration::days(policy.min_age_days) => {
                        keep_reasons.push(format!("younger than {} days", policy.min_age_days))
                    }
                    None => keep_reasons.push("creation date unknown".into()),
                    _ => {}
                }
                let excluded = if keep_reasons.is_empty() {
                    exclusions(img, rf, policy, now)
                } else {
                    Vec::new()
                };
                let mut d = Decision {
                    region: rf.region.clone(),
                    family: family.clone(),
                    image_id: img.id.clone(),
                    name: img.name.clone(),
                    created: img.creation_date.clone().unwrap_or_default(),
                    action: Action::Keep,
                    reasons: Vec::new(),
                    delete_snapshots: Vec::new(),
                    keep_snapshots: Vec::new(),
                };
                if !keep_reasons.is_empty() {
                    d.reasons = keep_reasons;
                } else if !excluded.is_empty() {
                    d.action = Action::Skip;
                    d.reasons = excluded;
                } else {
                    let deprecated =
                        parse_time(img.deprecation_time.as_deref()).filter(|t| *t <= now);
                    match deprecated {
                        None => {
                            d.action = Action::Deprecate;
                            d.reasons.push(format!(
                                "stale: beyond the newest {} and older than {} days",
                                policy.keep_newest.max(1),
                                policy.min_age_days
                            ));
                        }
                        Some(t) if now - t < Duration::days(policy.grace_days) => {
                            d.reasons.push(format!(
                                "deprecated at {}; deregistered after the {}-day grace period",
                                img.deprecation_time.as_deref().unwrap_or_default(),
                                policy.grace_days
                            ));
                        }
                        Some(_) => {
                            d.action = Action::Deregister;
                            d.reasons.push(format!(
                                "stale and deprecated for more than {} days",
                                policy.grace_days
                            ));
                            for s in &img.snapshot_ids {
                                let shared = users.get(s.as_str()).is_some_and(|(first, more)| {
                                    *more || *first != img.id.as_str()
                                });
                                if shared {
                                    d.keep_snapshots.push(s.clone());
                                } else {
                                    d.delete_snapshots.push(s.clone());
                                }
                            }
                        }
                    }
                }
                decisions.push(d);
            }
        }
        if policy.orphan_sweep {
            for s in &rf.managed_snapshots {
                if users.contains_key(s.id.as_str()) || protected(&s.tags) {
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
                if now - started < Duration::days(policy.grace_days) {
                    continue;
                }
                orphans.push(OrphanSnapshot {
                    region: rf.region.clone(),
                    snapshot_id: s.id.clone(),
                    reason: format!(
                        "managed snapshot used by no image, older than {} days",
                        policy.grace_days
                    ),
                });
            }
        }
    }
    // The cap: the oldest deregistrations go first; the rest wait for the next run.
    let mut order: Vec<(Option<DateTime<Utc>>, IdKey, usize)> = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| d.action == Action::Deregister)
        .map(|(i, d)| (parse_time(Some(&d.created)), IdKey::of(&d.image_id), i))
        .collect();
    order.sort_unstable_by(|(ta, ka, a), (tb, kb, b)| {
        ta.cmp(tb)
            .then_with(|| ka.cmp(kb))
            .then_with(|| decisions[*a].image_id.cmp(&decisions[*b].image_id))
    });
    let mut capped = 0;
    for (_, _, i) in order.into_iter().skip(policy.max_deletions) {
        let d = &mut decisions[i];
        d.action = Action::Keep;
        d.reasons = vec![format!(
            "stale, but the per-run cap of {} deregistrations is reached; next run",
            policy.max_deletions
        )];
        d.delete_snapshots.clear();
        d.keep_snapshots.clear();
        capped += 1;
    }
    if orphans.len() > policy.max_deletions {
        capped += orphans.len() - policy.max_deletions;
        orphans.truncate(policy.max_deletions);
    }
    Plan {
        decisions,
        orphans,
        capped,
    }
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

    fn random_world(rng: &mut Rng) -> (Vec<RegionFacts>, Policy) {
        let mut regions = Vec::new();
        for r in 0..1 + rng.below(2) {
            let mut rf = RegionFacts {
                region: format!("region-{r}"),
                ..RegionFacts::default()
            };
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
                if rng.chance(8) {
                    im.deregistration_protection = Some("enabled".into());
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
                    rf.used_by_instances.insert(im.id.clone());
                }
                if rng.chance(10) {
                    rf.used_by_templates.insert(im.id.clone(), "lt-1".into());
                }
                if rng.chance(10) {
                    rf.shared.insert(im.id.clone(), vec!["111122223333".into()]);
                }
                rf.images.push(im);
            }
            regions.push(rf);
        }
        let p = Policy {
            keep_newest: rng.below(4) as usize,
            min_age_days: rng.below(60) as i64,
            grace_days: rng.below(14) as i64,
            max_deletions: rng.below(20) as usize,
            allow_public: rng.chance(20),
            allow_shared: rng.chance(20),
            ..policy()
        };
        (regions, p)
    }

    #[test]
    fn property_no_protected_image_no_empty_family_no_shared_snapshot() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut removals = 0;
        for case in 0..5000 {
            let (facts, pol) = random_world(&mut rng);
            let p = plan(&facts, &pol, now());
            for rf in &facts {
                for d in p.decisions.iter().filter(|d| d.region == rf.region) {
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
                        let ex = exclusions(im, rf, &pol, now());
                        assert!(
                            ex.is_empty(),
                            "case {case}: {} excluded by {ex:?} yet {:?}",
                            im.id,
                            d.action
                        );
                        assert_eq!(im.state, "available");
                        assert!(!rf.used_by_instances.contains(&im.id));
                        assert!(!rf.used_by_templates.contains_key(&im.id));
                        assert!(!protected(&im.tags));
                        assert!(pol.allow_public || !im.public);
                        assert!(pol.allow_shared || !rf.shared.contains_key(&im.id));
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
                for d in p.decisions.iter().filter(|d| d.region == rf.region) {
                    let im = rf
                        .images
                        .iter()
                        .find(|i| i.id == d.image_id)
                        .expect("exists");
                    let e = fams.entry(d.family.as_str()).or_default();
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
                for o in p.orphans.iter().filter(|o| o.region == rf.region) {
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
        }
        assert!(
            removals > 1000,
            "the generator must exercise removals, got {removals}"
        );
    }
}
