//! Lineage stamping: which lineage tags an image and its snapshots should carry, inferred from
//! what EC2 recorded and what the pipeline already tagged — and which existing values conflict.
//!
//! The planner never overwrites a lineage tag that holds a *different* value, with two
//! exceptions: the caller says `force`, or the image is a CopyImage copy and the value is the
//! one the copy inherited from its source through `CopyImageTags` (a copy inherits its parent's
//! `source_image`, dates and generation, which are the parent's lineage, not its own).
//! Any conflict stops the whole stamp: a half-stamped lineage would be worse than none.

use super::lineage::{
    self, ANCESTRY, CREATE_DATE, CREATE_TIMESTAMP, FAMILY, GENERATION, IMPORT_TASK, LINEAGE_KEYS,
    MANAGED, MAX_TAG_VALUE, READY_AT, SOURCE_IMAGE, SOURCE_INSTANCE, SOURCE_REGION,
    SOURCE_SNAPSHOT, SOURCE_TOKEN,
};
use crate::model::{Image, Snapshot, Tags};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The lineage keys a stamp copies from an image to its snapshots: what the stamp infers
/// (AMITools' keys, the family, the generation, the ancestry, a copy's source snapshot). Not the
/// managed marker: the function that creates a resource sets it at creation, and IAM refuses it
/// to every later write (template.yaml, `ManagedOnlyAtCreation`). Not the upload's provenance
/// (source URI, token, ETag, version, format, import task, upload method): create-image writes
/// it on the upload's own snapshot at registration; on any other snapshot it would be false (a
/// copy's snapshot was not imported) and a source token with an upload method would let
/// create-image's fast path take that snapshot for an upload's.
pub const SNAPSHOT_STAMP_KEYS: [&str; 9] = [
    SOURCE_IMAGE,
    SOURCE_INSTANCE,
    SOURCE_REGION,
    CREATE_DATE,
    CREATE_TIMESTAMP,
    FAMILY,
    GENERATION,
    ANCESTRY,
    SOURCE_SNAPSHOT,
];

/// How an image came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Registered by create-image from an uploaded disk.
    Upload,
    /// CopyImage (EC2 records `SourceImageId`).
    Copy,
    /// CreateImage from an instance (EC2 records `SourceInstanceId`).
    Instance,
    /// A person said where it came from (manual invoke).
    Manual,
    /// Nothing says: a root.
    Unknown,
}

/// Where the image's parent lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    /// `ami-…`.
    pub image_id: String,
    /// Its region.
    pub region: String,
}

/// What a person asserts in a manual invoke (already validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assertion {
    /// `source_image`.
    pub source_image: Option<String>,
    /// `source_instance`.
    pub source_instance: Option<String>,
    /// `source_region` (defaults to the image's region when `source_image` is given).
    pub source_region: Option<String>,
    /// The creation time (from `create_date` or `create_timestamp`).
    pub created: Option<DateTime<Utc>>,
    /// Overwrite conflicting values.
    pub force: bool,
}

/// The parent as seen in its region (`None` in [`Facts::parent`] when it is gone or invisible).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// Where it is.
    pub at: ImageRef,
    /// Its tags.
    pub tags: Tags,
    /// Its snapshots.
    pub snapshot_ids: Vec<String>,
    /// EC2's CopyImage record of the parent (`SourceImageId`, `SourceImageRegion`), when the
    /// parent is itself a copy.
    pub copied_from: Option<ImageRef>,
}

impl Parent {
    /// The parent's own lineage, whether or not it has been stamped yet: its tags, or, for a
    /// copy not stamped yet, what its stamp will say. An unstamped copy still carries the tags
    /// it inherited from its source through `CopyImageTags` (the source's generation, its
    /// `source_image`), so reading them as the copy's own would make a child of the copy one
    /// generation short and lose an ancestor, and the result would depend on which of the two
    /// events came first.
    pub fn lineage(&self) -> Cow<'_, Tags> {
        let Some(src) = &self.copied_from else {
            return Cow::Borrowed(&self.tags);
        };
        if self.tags.get(SOURCE_IMAGE) == Some(&src.image_id) {
            return Cow::Borrowed(&self.tags);
        }
        // The inherited tags are the source's lineage: the copy's is one step further.
        let mut own = self.tags.clone();
        match next_generation(&self.tags) {
            Some(g) => own.insert(GENERATION.into(), g.to_string()),
            None => own.remove(GENERATION),
        };
        let ancestry = ancestry_value(src, Some(&self.tags));
        if ancestry.is_empty() {
            own.remove(ANCESTRY);
        } else {
            own.insert(ANCESTRY.into(), ancestry);
        }
        own.insert(SOURCE_IMAGE.into(), src.image_id.clone());
        own.insert(SOURCE_REGION.into(), src.region.clone());
        Cow::Owned(own)
    }
}

/// The generation of a child of an image whose lineage is `parent`: one more than the
/// parent's; 1 under a root that carries no generation (no `source_image`); unknown when the
/// parent's generation is unreadable or missing below a root.
fn next_generation(parent: &Tags) -> Option<u32> {
    match parent.get(GENERATION).map(|g| g.parse::<u32>()) {
        Some(Ok(g)) => Some(g.saturating_add(1)),
        Some(Err(_)) => None,
        None if !parent.contains_key(SOURCE_IMAGE) => Some(1),
        None => None,
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The image, as DescribeImages reports it.
    pub image: &'a Image,
    /// Its region.
    pub region: &'a str,
    /// Its snapshots as DescribeSnapshots reports them (missing ones are simply not tagged).
    pub snapshots: &'a [Snapshot],
    /// For an image made from an instance: the instance's image, when the instance is visible.
    pub instance_image: Option<&'a str>,
    /// The parent, when there is one and it is visible.
    pub parent: Option<&'a Parent>,
    /// The manual invoke's assertion, if any.
    pub assertion: Option<&'a Assertion>,
}

/// A lineage tag that holds another value than the one inferred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The image or snapshot.
    pub resource: String,
    /// The tag key.
    pub key: String,
    /// What it holds.
    pub existing: String,
    /// What the lineage says it should hold.
    pub inferred: String,
}

/// Tags EC2 keeps on one resource (CreateTags: "Each resource can have a maximum of 50 tags").
/// Keys with the `aws:` prefix, in any case, do not count (AWS's tag restrictions, the same
/// text in every service's: "Don't use aws:, AWS:, or any upper or lowercase combination of
/// such as a prefix ... Tags with this prefix do not count against your tags-per-resource
/// limit").
pub const MAX_TAGS_PER_RESOURCE: usize = 50;

/// A resource whose lineage tags do not fit beside the tags it has: EC2 would refuse the write
/// (`TagLimitExceeded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoRoom {
    /// The image or snapshot.
    pub resource: String,
    /// Tags it has (those that count against the limit).
    pub has: usize,
    /// Lineage keys it lacks.
    pub adds: Vec<String>,
}

impl NoRoom {
    /// How many of its tags must go before its lineage fits.
    pub fn to_remove(&self) -> usize {
        (self.has + self.adds.len()).saturating_sub(MAX_TAGS_PER_RESOURCE)
    }
}

/// What to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StampPlan {
    /// How the image came to be.
    pub origin: Origin,
    /// The image's complete lineage once stamped.
    pub lineage: Tags,
    /// Tags to write per resource (image first, then snapshots); empty when nothing changes.
    pub writes: BTreeMap<String, Tags>,
    /// Values that differ; when not empty, nothing is written.
    pub conflicts: Vec<Conflict>,
    /// Resources whose lineage tags would pass EC2's limit of tags per resource; when not
    /// empty, nothing is written (a lineage written in part is one no query can trust).
    pub no_room: Vec<NoRoom>,
}

impl StampPlan {
    /// The writes in the order to make them: the snapshots first, the image last, so the image
    /// (what people query) is complete only once its snapshots are; a crash in between is
    /// finished by the next event.
    pub fn ordered_writes(&self, image_id: &str) -> Vec<(&String, &Tags)> {
        let mut order: Vec<(&String, &Tags)> = self
            .writes
            .iter()
            .filter(|(r, _)| r.as_str() != image_id)
            .collect();
        if let Some(w) = self.writes.get_key_value(image_id) {
            order.push(w);
        }
        order
    }

    /// Whether the pipeline should announce `image.ready` for this image now: it is a pipeline
    /// image (managed marker) that is not a copy, fully stamped, and not announced before.
    pub fn ready_to_announce(&self, image: &Image) -> bool {
        self.conflicts.is_empty()
            && self.no_room.is_empty()
            && image.state == "available"
            && self.origin != Origin::Copy
            && image.source_image_id.is_none()
            && self.lineage.get(MANAGED).map(String::as_str) == Some("true")
            && !image.tags.contains_key(READY_AT)
    }
}

/// For how long after an upload's registration the EventBridge "available" trigger leaves
/// `image.ready` to the SNS `image.registered` one (both arrive for every upload, often at the
/// same moment: two announcers would send it twice), in a deployment without claims (no
/// `STATE_BUCKET`; with claims the first to claim announces, `shared::claim`).
pub const REGISTERED_LEADS_SECONDS: i64 = 120;

/// Whether a state-change trigger should leave the announcement of `image` to the
/// `image.registered` trigger: a pipeline upload (create-image announces it) registered less
/// than [`REGISTERED_LEADS_SECONDS`] ago. Later, either trigger (or the schedule) announces.
pub fn leave_ready_to_registered(image: &Image, now: DateTime<Utc>) -> bool {
    let created = image
        .creation_date
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    image.tags.contains_key(SOURCE_TOKEN)
        && created.is_some_and(|t| now - t < chrono::Duration::seconds(REGISTERED_LEADS_SECONDS))
}

/// How long after its creation an image left unannounced is the schedule's (its own events come
/// first), and how far back the schedule looks.
pub const SWEEP_AFTER_MINUTES: i64 = 15;
/// See [`SWEEP_AFTER_MINUTES`].
pub const SWEEP_WITHIN_DAYS: i64 = 7;

/// The pipeline images tag-lineage's schedule stamps and announces: managed, available, not a
/// copy (no CopyImage record, no publish source), never announced (`ready-at`), created between
/// [`SWEEP_WITHIN_DAYS`] and [`SWEEP_AFTER_MINUTES`] ago: an image whose two triggers (SNS
/// `image.registered`, EventBridge "available") both failed still gets `image.ready`.
pub fn awaiting_ready(images: Vec<Image>, now: DateTime<Utc>) -> Vec<Image> {
    images
        .into_iter()
        .filter(|i| {
            let created = i
                .creation_date
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            i.state == "available"
                && i.tags.get(MANAGED).map(String::as_str) == Some("true")
                && !i.tags.contains_key(READY_AT)
                && !i.tags.contains_key(super::tags::PUBLISH_SOURCE)
                && i.source_image_id.is_none()
                && created.is_some_and(|t| {
                    now - t >= chrono::Duration::minutes(SWEEP_AFTER_MINUTES)
                        && now - t <= chrono::Duration::days(SWEEP_WITHIN_DAYS)
                })
        })
        .collect()
}

/// The parent the image's lineage points to: the assertion, else EC2's CopyImage record, else the
/// instance's image, else a `source_image` tag already on the image.
pub fn parent_of(
    image: &Image,
    region: &str,
    instance_image: Option<&str>,
    assertion: Option<&Assertion>,
) -> Option<ImageRef> {
    let region_or = |r: Option<&String>| r.cloned().unwrap_or_else(|| region.to_owned());
    if let Some(a) = assertion
        && let Some(id) = &a.source_image
    {
        return Some(ImageRef {
            image_id: id.clone(),
            region: region_or(a.source_region.as_ref()),
        });
    }
    if let Some(id) = &image.source_image_id {
        return Some(ImageRef {
            image_id: id.clone(),
            region: region_or(image.source_image_region.as_ref()),
        });
    }
    if let Some(id) = instance_image {
        return Some(ImageRef {
            image_id: id.to_owned(),
            region: region.to_owned(),
        });
    }
    tagged_parent(&image.tags, region)
}

/// The parent recorded in lineage tags (`source_image`, `source_region` or the image's region).
pub fn tagged_parent(tags: &Tags, region: &str) -> Option<ImageRef> {
    let id = tags.get(SOURCE_IMAGE).filter(|s| !s.is_empty())?;
    Some(ImageRef {
        image_id: id.clone(),
        region: tags
            .get(SOURCE_REGION)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| region.to_owned()),
    })
}

/// The ancestors recorded in [`ANCESTRY`] (beyond the parent), nearest first.
pub fn recorded_ancestry(tags: &Tags) -> Vec<ImageRef> {
    tags.get(ANCESTRY)
        .map(|s| {
            s.split_whitespace()
                .filter_map(|e| {
                    let (region, id) = e.split_once('/')?;
                    Some(ImageRef {
                        image_id: id.to_owned(),
                        region: region.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ancestry_value(parent: &ImageRef, parent_tags: Option<&Tags>) -> String {
    let mut entries = Vec::new();
    if let Some(tags) = parent_tags
        && let Some(grand) = tagged_parent(tags, &parent.region)
    {
        entries.push(grand);
        entries.extend(recorded_ancestry(tags));
    }
    let mut out = String::new();
    for e in entries.iter().take(8) {
        let item = format!("{}/{}", e.region, e.image_id);
        if out.len() + item.len() + 1 > MAX_TAG_VALUE {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&item);
    }
    out
}

fn origin_of(image: &Image, instance_image: Option<&str>, assertion: Option<&Assertion>) -> Origin {
    if assertion.is_some_and(|a| a.source_image.is_some() || a.source_instance.is_some()) {
        Origin::Manual
    } else if image.source_image_id.is_some() {
        Origin::Copy
    } else if image.source_instance_id.is_some() || instance_image.is_some() {
        Origin::Instance
    } else if image.tags.contains_key(IMPORT_TASK) || image.tags.contains_key(SOURCE_TOKEN) {
        Origin::Upload
    } else {
        Origin::Unknown
    }
}

/// The lineage values the image should carry (only the keys the facts determine).
fn inferred(facts: &Facts<'_>, origin: Origin, parent: Option<&ImageRef>) -> Tags {
    let image = facts.image;
    let assertion = facts.assertion;
    let mut want = Tags::new();
    let inherited = |key: &str, value: &String| {
        origin == Origin::Copy && facts.parent.and_then(|p| p.tags.get(key)) == Some(value)
    };

    if let Some(p) = parent {
        want.insert(SOURCE_IMAGE.into(), p.image_id.clone());
        want.insert(SOURCE_REGION.into(), p.region.clone());
        let parent_lineage = facts.parent.map(Parent::lineage);
        let ancestry = ancestry_value(p, parent_lineage.as_deref());
        if !ancestry.is_empty() {
            want.insert(ANCESTRY.into(), ancestry);
        }
        if let Some(parent) = facts.parent {
            if let Some(g) = parent_lineage.as_deref().and_then(next_generation) {
                want.insert(GENERATION.into(), g.to_string());
            }
            if let Some(f) = parent.tags.get(FAMILY)
                && !image.tags.contains_key(FAMILY)
            {
                want.insert(FAMILY.into(), f.clone());
            }
            if origin == Origin::Copy
                && let Some(s) = parent.snapshot_ids.first()
            {
                want.insert(SOURCE_SNAPSHOT.into(), s.clone());
            }
        }
    } else if matches!(origin, Origin::Upload | Origin::Unknown) {
        want.insert(GENERATION.into(), "0".into());
    }
    let instance = assertion
        .and_then(|a| a.source_instance.clone())
        .or_else(|| image.source_instance_id.clone());
    if let Some(i) = instance {
        want.insert(SOURCE_INSTANCE.into(), i);
    }

    // Dates: asserted > already on the image (and not inherited) > EC2's CreationDate.
    let own = |key: &str| image.tags.get(key).filter(|v| !inherited(key, v));
    let created = match (
        assertion.and_then(|a| a.created),
        own(CREATE_DATE).and_then(|d| lineage::parse_create_date(d)),
        own(CREATE_TIMESTAMP).and_then(|t| t.parse::<i64>().ok()),
    ) {
        (Some(t), _, _) => Some(t),
        (None, Some(d), _) => Some(d),
        (None, None, Some(ts)) => DateTime::from_timestamp(ts, 0),
        (None, None, None) => image
            .creation_date
            .as_deref()
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.with_timezone(&Utc)),
    };
    if let Some(t) = created {
        want.extend(lineage::date_tags(t));
    }
    want
}

/// Plans the stamp: inferred lineage, the writes it needs, and the conflicts that block it.
pub fn plan_stamp(facts: &Facts<'_>) -> StampPlan {
    let image = facts.image;
    let origin = origin_of(image, facts.instance_image, facts.assertion);
    let parent = parent_of(image, facts.region, facts.instance_image, facts.assertion);
    let want = inferred(facts, origin, parent.as_ref());
    let force = facts.assertion.is_some_and(|a| a.force);
    let parent_tags = facts.parent.map(|p| &p.tags);
    let overwritable = |key: &str, existing: &String| {
        force || (origin == Origin::Copy && parent_tags.and_then(|t| t.get(key)) == Some(existing))
    };

    let mut conflicts = Vec::new();
    let mut writes = BTreeMap::new();
    let mut lineage: Tags = image
        .tags
        .iter()
        .filter(|(k, _)| LINEAGE_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut image_writes = Tags::new();
    for (key, value) in &want {
        match image.tags.get(key) {
            Some(existing) if existing == value => {}
            Some(existing) if !overwritable(key, existing) => conflicts.push(Conflict {
                resource: image.id.clone(),
                key: key.clone(),
                existing: existing.clone(),
                inferred: value.clone(),
            }),
            _ => {
                image_writes.insert(key.clone(), value.clone());
                lineage.insert(key.clone(), value.clone());
            }
        }
    }
    if !image_writes.is_empty() {
        writes.insert(image.id.clone(), image_writes);
    }

    for snapshot in facts.snapshots {
        let mut snap_writes = Tags::new();
        let stamped = lineage
            .iter()
            .filter(|(k, _)| SNAPSHOT_STAMP_KEYS.contains(&k.as_str()));
        for (key, value) in stamped {
            match snapshot.tags.get(key) {
                Some(existing) if existing == value => {}
                Some(existing)
                    if !overwritable(key, existing) && image.tags.get(key) != Some(existing) =>
                {
                    conflicts.push(Conflict {
                        resource: snapshot.id.clone(),
                        key: key.clone(),
                        existing: existing.clone(),
                        inferred: value.clone(),
                    })
                }
                _ => {
                    snap_writes.insert(key.clone(), value.clone());
                }
            }
        }
        if !snap_writes.is_empty() {
            writes.insert(snapshot.id.clone(), snap_writes);
        }
    }
    let no_room = if conflicts.is_empty() {
        over_limit(facts, &writes)
    } else {
        Vec::new()
    };
    if !conflicts.is_empty() || !no_room.is_empty() {
        writes.clear();
    }
    StampPlan {
        origin,
        lineage,
        writes,
        conflicts,
        no_room,
    }
}

/// Whether `key` has AWS's reserved prefix (`aws:` in any case), which EC2 does not count.
fn reserved_key(key: &str) -> bool {
    key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:"))
}

/// How many of `tags` count against [`MAX_TAGS_PER_RESOURCE`].
pub fn counted(tags: &Tags) -> usize {
    tags.keys().filter(|k| !reserved_key(k)).count()
}

/// The resources of `writes` whose tags, with the keys written, would pass
/// [`MAX_TAGS_PER_RESOURCE`].
fn over_limit(facts: &Facts<'_>, writes: &BTreeMap<String, Tags>) -> Vec<NoRoom> {
    let held = |id: &str| -> Option<&Tags> {
        if id == facts.image.id {
            return Some(&facts.image.tags);
        }
        facts.snapshots.iter().find(|s| s.id == id).map(|s| &s.tags)
    };
    writes
        .iter()
        .filter_map(|(resource, new)| {
            let tags = held(resource)?;
            let has = counted(tags);
            let adds: Vec<String> = new
                .keys()
                .filter(|k| !tags.contains_key(*k))
                .cloned()
                .collect();
            (has + adds.len() > MAX_TAGS_PER_RESOURCE).then(|| NoRoom {
                resource: resource.clone(),
                has,
                adds,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn image(id: &str, t: &[(&str, &str)]) -> Image {
        Image {
            id: id.into(),
            name: "n".into(),
            state: "available".into(),
            creation_date: Some("2026-11-22T10:00:00.000Z".into()),
            snapshot_ids: vec!["snap-11111111".into()],
            tags: tags(t),
            ..Image::default()
        }
    }

    #[test]
    fn the_schedule_takes_unannounced_pipeline_images_only() {
        let at = |t: &str| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .expect("time")
        };
        let now = at("2026-11-22T12:00:00Z");
        let managed = [(MANAGED, "true")];
        let mut copy = image("ami-copy", &managed);
        copy.source_image_id = Some("ami-src".into());
        let mut fresh = image("ami-fresh", &managed);
        fresh.creation_date = Some("2026-11-22T11:55:00.000Z".into());
        let mut old = image("ami-old", &managed);
        old.creation_date = Some("2026-11-01T00:00:00.000Z".into());
        let mut pending = image("ami-pending", &managed);
        pending.state = "pending".into();
        let picked = awaiting_ready(
            vec![
                image("ami-due", &managed),
                image("ami-announced", &[(MANAGED, "true"), (READY_AT, "x")]),
                image("ami-foreign", &[]),
                image(
                    "ami-published-copy",
                    &[
                        (MANAGED, "true"),
                        (super::super::tags::PUBLISH_SOURCE, "ami-src"),
                    ],
                ),
                copy,
                fresh,
                old,
                pending,
            ],
            now,
        );
        let ids: Vec<&str> = picked.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["ami-due"]);
    }

    #[test]
    fn the_state_change_trigger_leaves_a_fresh_upload_to_image_registered() {
        let at = |t: &str| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .expect("time")
        };
        let upload = image("ami-up", &[(MANAGED, "true"), (SOURCE_TOKEN, "tok")]);
        assert!(leave_ready_to_registered(
            &upload,
            at("2026-11-22T10:01:00Z")
        ));
        assert!(!leave_ready_to_registered(
            &upload,
            at("2026-11-22T10:05:00Z")
        ));
        let from_instance = image("ami-inst", &[(MANAGED, "true")]);
        assert!(!leave_ready_to_registered(
            &from_instance,
            at("2026-11-22T10:01:00Z")
        ));
    }

    fn snap(id: &str, t: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            id: id.into(),
            volume_size_gib: Some(1),
            state: Some("completed".into()),
            tags: tags(t),
            start_time: None,
        }
    }

    fn facts<'a>(image: &'a Image, snapshots: &'a [Snapshot]) -> Facts<'a> {
        Facts {
            image,
            region: "us-east-1",
            snapshots,
            instance_image: None,
            parent: None,
            assertion: None,
        }
    }

    #[test]
    fn an_unknown_root_gets_dates_from_creation_date_and_generation_zero() {
        let img = image("ami-00000001", &[]);
        let snaps = [snap("snap-11111111", &[])];
        let plan = plan_stamp(&facts(&img, &snaps));
        assert_eq!(plan.origin, Origin::Unknown);
        assert_eq!(plan.lineage[CREATE_DATE], "20261122T100000Z");
        assert_eq!(plan.lineage[CREATE_TIMESTAMP], "1795341600");
        assert_eq!(plan.lineage[GENERATION], "0");
        assert!(!plan.lineage.contains_key(SOURCE_IMAGE));
        assert_eq!(plan.writes["snap-11111111"], plan.lineage);
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn snapshots_get_the_inferred_lineage_but_never_the_marker_or_the_provenance() {
        let img = image(
            "ami-00000001",
            &[
                (MANAGED, "true"),
                (FAMILY, "web"),
                (SOURCE_TOKEN, "tok"),
                (IMPORT_TASK, "import-snap-1"),
                (lineage::UPLOAD_METHOD, "import-snapshot"),
                (lineage::SOURCE_URI, "s3://b/k"),
            ],
        );
        let snaps = [snap("snap-11111111", &[])];
        let plan = plan_stamp(&facts(&img, &snaps));
        assert_eq!(plan.lineage[MANAGED], "true");
        assert_eq!(plan.lineage[SOURCE_TOKEN], "tok");
        let written = &plan.writes["snap-11111111"];
        assert!(
            written
                .keys()
                .all(|k| SNAPSHOT_STAMP_KEYS.contains(&k.as_str())),
            "{written:?}"
        );
        assert_eq!(written[FAMILY], "web");
        assert_eq!(written[GENERATION], "0");
        assert!(!written.contains_key(MANAGED) && !written.contains_key(SOURCE_TOKEN));
    }

    #[test]
    fn stamping_a_stamped_image_writes_nothing() {
        let mut img = image("ami-00000001", &[]);
        let snaps = [snap("snap-11111111", &[])];
        let plan = plan_stamp(&facts(&img, &snaps));
        img.tags = plan.lineage.clone();
        let snaps = [snap("snap-11111111", &[])
            .tags
            .into_iter()
            .chain(plan.lineage.clone())
            .collect::<Tags>()]
        .map(|t| Snapshot {
            tags: t,
            ..snap("snap-11111111", &[])
        });
        let again = plan_stamp(&facts(&img, &snaps));
        assert!(again.writes.is_empty(), "{:?}", again.writes);
        assert_eq!(again.lineage, plan.lineage);
    }

    #[test]
    fn a_copy_replaces_what_it_inherited_and_records_its_parent() {
        let parent_tags = tags(&[
            (MANAGED, "true"),
            (FAMILY, "web"),
            (GENERATION, "0"),
            (CREATE_DATE, "20261101T000000Z"),
            (CREATE_TIMESTAMP, "1793491200"),
        ]);
        let mut img = image(
            "ami-00000002",
            &parent_tags
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        img.source_image_id = Some("ami-00000001".into());
        img.source_image_region = Some("us-west-2".into());
        let parent = Parent {
            at: ImageRef {
                image_id: "ami-00000001".into(),
                region: "us-west-2".into(),
            },
            tags: parent_tags,
            snapshot_ids: vec!["snap-99999999".into()],
            copied_from: None,
        };
        let snaps = [snap("snap-11111111", &[])];
        let f = Facts {
            parent: Some(&parent),
            ..facts(&img, &snaps)
        };
        let plan = plan_stamp(&f);
        assert_eq!(plan.origin, Origin::Copy);
        assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
        assert_eq!(plan.lineage[SOURCE_IMAGE], "ami-00000001");
        assert_eq!(plan.lineage[SOURCE_REGION], "us-west-2");
        assert_eq!(plan.lineage[GENERATION], "1");
        assert_eq!(plan.lineage[CREATE_DATE], "20261122T100000Z");
        assert_eq!(plan.lineage[SOURCE_SNAPSHOT], "snap-99999999");
        assert_eq!(plan.lineage[FAMILY], "web");
        assert!(!plan.ready_to_announce(&img), "copies are not announced");
    }

    #[test]
    fn an_instance_image_points_at_the_instances_image_and_extends_ancestry() {
        let mut img = image("ami-00000003", &[]);
        img.source_instance_id = Some("i-0123456789abcdef0".into());
        let parent = Parent {
            at: ImageRef {
                image_id: "ami-00000002".into(),
                region: "us-east-1".into(),
            },
            tags: tags(&[
                (SOURCE_IMAGE, "ami-00000001"),
                (SOURCE_REGION, "us-west-2"),
                (GENERATION, "1"),
            ]),
            snapshot_ids: vec![],
            copied_from: None,
        };
        let f = Facts {
            instance_image: Some("ami-00000002"),
            parent: Some(&parent),
            ..facts(&img, &[])
        };
        let plan = plan_stamp(&f);
        assert_eq!(plan.origin, Origin::Instance);
        assert_eq!(plan.lineage[SOURCE_INSTANCE], "i-0123456789abcdef0");
        assert_eq!(plan.lineage[SOURCE_IMAGE], "ami-00000002");
        assert_eq!(plan.lineage[SOURCE_REGION], "us-east-1");
        assert_eq!(plan.lineage[GENERATION], "2");
        assert_eq!(plan.lineage[ANCESTRY], "us-west-2/ami-00000001");
        assert_eq!(
            recorded_ancestry(&plan.lineage),
            vec![ImageRef {
                image_id: "ami-00000001".into(),
                region: "us-west-2".into()
            }]
        );
    }

    #[test]
    fn a_child_of_a_copy_gets_the_same_lineage_before_and_after_the_copy_is_stamped() {
        // A (root, us-west-2, generation 0) → C (copy in us-east-1) → I (made from an
        // instance launched from C). I's event may come before C's: C then still carries A's
        // tags through CopyImageTags.
        let a_tags = tags(&[(MANAGED, "true"), (FAMILY, "web"), (GENERATION, "0")]);
        let a_ref = ImageRef {
            image_id: "ami-0000000a".into(),
            region: "us-west-2".into(),
        };
        let mut c_img = image("ami-0000000c", &[]);
        c_img.tags = a_tags.clone();
        c_img.source_image_id = Some(a_ref.image_id.clone());
        c_img.source_image_region = Some(a_ref.region.clone());
        let a = Parent {
            at: a_ref.clone(),
            tags: a_tags.clone(),
            snapshot_ids: vec![],
            copied_from: None,
        };
        let c_stamp = plan_stamp(&Facts {
            parent: Some(&a),
            ..facts(&c_img, &[])
        });
        let c_ref = ImageRef {
            image_id: "ami-0000000c".into(),
            region: "us-east-1".into(),
        };
        let unstamped_c = Parent {
            at: c_ref.clone(),
            tags: a_tags.clone(),
            snapshot_ids: vec![],
            copied_from: Some(a_ref.clone()),
        };
        let stamped_c = Parent {
            tags: a_tags
                .clone()
                .into_iter()
                .chain(c_stamp.lineage.clone())
                .collect(),
            ..unstamped_c.clone()
        };
        assert_eq!(
            unstamped_c.lineage().get(GENERATION),
            stamped_c.tags.get(GENERATION)
        );
        let mut i_img = image("ami-0000000d", &[]);
        i_img.source_instance_id = Some("i-0123456789abcdef0".into());
        let stamp_under = |parent: &Parent| {
            plan_stamp(&Facts {
                instance_image: Some("ami-0000000c"),
                parent: Some(parent),
                ..facts(&i_img, &[])
            })
            .lineage
        };
        let early = stamp_under(&unstamped_c);
        let late = stamp_under(&stamped_c);
        assert_eq!(early, late);
        assert_eq!(early[GENERATION], "2");
        assert_eq!(early[ANCESTRY], "us-west-2/ami-0000000a");
        assert_eq!(early[SOURCE_IMAGE], "ami-0000000c");
    }

    #[test]
    fn a_different_value_is_a_conflict_unless_forced_and_blocks_every_write() {
        let img = image("ami-00000003", &[(SOURCE_IMAGE, "ami-0000000a")]);
        let snaps = [snap("snap-11111111", &[])];
        let a = Assertion {
            source_image: Some("ami-0000000b".into()),
            ..Assertion::default()
        };
        let f = Facts {
            assertion: Some(&a),
            ..facts(&img, &snaps)
        };
        let plan = plan_stamp(&f);
        assert_eq!(plan.origin, Origin::Manual);
        assert_eq!(
            plan.conflicts,
            vec![Conflict {
                resource: "ami-00000003".into(),
                key: SOURCE_IMAGE.into(),
                existing: "ami-0000000a".into(),
                inferred: "ami-0000000b".into(),
            }]
        );
        assert!(plan.writes.is_empty());
        let forced = Assertion { force: true, ..a };
        let plan = plan_stamp(&Facts {
            assertion: Some(&forced),
            ..facts(&img, &snaps)
        });
        assert!(plan.conflicts.is_empty());
        assert_eq!(plan.writes["ami-00000003"][SOURCE_IMAGE], "ami-0000000b");
        assert_eq!(plan.writes["snap-11111111"][SOURCE_IMAGE], "ami-0000000b");
    }

    /// EC2 keeps 50 tags per resource, `aws:` keys aside: lineage that does not fit beside a
    /// resource's tags is not written at all (nor any other resource's), and the plan names
    /// the resource, what it has and the keys it lacks; a tag that already holds its value
    /// takes no room.
    #[test]
    fn lineage_that_does_not_fit_beside_a_resources_tags_is_not_written() {
        let mut full: Vec<(String, String)> = (0..45)
            .map(|n| (format!("team:key-{n:02}"), "v".to_string()))
            .collect();
        full.push(("aws:backup:source-resource".into(), "x".into()));
        full.push(("AWS:Reserved".into(), "x".into()));
        let pairs: Vec<(&str, &str)> = full.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let img = image("ami-00000005", &[]);
        let snaps = [snap("snap-11111111", &pairs)];
        let fits = plan_stamp(&facts(&img, &snaps));
        let lacking = fits.writes["snap-11111111"].len();
        assert!(fits.no_room.is_empty(), "{:?}", fits.no_room);

        let mut crowded = full.clone();
        for n in 45..(51 - lacking) {
            crowded.push((format!("team:key-{n:02}"), "v".into()));
        }
        let pairs: Vec<(&str, &str)> = crowded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let snaps = [snap("snap-11111111", &pairs)];
        let plan = plan_stamp(&facts(&img, &snaps));
        assert!(plan.writes.is_empty(), "{:?}", plan.writes);
        assert!(!plan.ready_to_announce(&img));
        assert_eq!(plan.no_room.len(), 1, "{:?}", plan.no_room);
        let room = &plan.no_room[0];
        assert_eq!(room.resource, "snap-11111111");
        assert_eq!(room.has, 51 - lacking);
        assert_eq!(room.adds.len(), lacking);
        assert_eq!(room.to_remove(), 1);
        // One of the team's tags replaced by one of the lineage's keys with its value: exactly
        // 50 tags once stamped, which fits.
        let key = room.adds[0].clone();
        let value = fits.writes["snap-11111111"][&key].clone();
        let mut placed = crowded.clone();
        placed.pop();
        placed.push((key, value));
        let pairs: Vec<(&str, &str)> = placed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let snaps = [snap("snap-11111111", &pairs)];
        assert!(plan_stamp(&facts(&img, &snaps)).no_room.is_empty());
    }

    #[test]
    fn existing_date_pairs_are_kept_and_a_lone_half_completes_the_pair() {
        let img = image("ami-00000004", &[(CREATE_DATE, "20261122T095959Z")]);
        let plan = plan_stamp(&facts(&img, &[]));
        assert_eq!(plan.lineage[CREATE_DATE], "20261122T095959Z");
        assert_eq!(plan.lineage[CREATE_TIMESTAMP], "1795341599");
        let img = image(
            "ami-00000004",
            &[(CREATE_DATE, "20261122T095959Z"), (CREATE_TIMESTAMP, "1")],
        );
        let plan = plan_stamp(&facts(&img, &[]));
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(plan.conflicts[0].key, CREATE_TIMESTAMP);
    }

    #[test]
    fn only_uncopied_managed_images_are_announced_once() {
        let img = image(
            "ami-00000005",
            &[(MANAGED, "true"), (IMPORT_TASK, "import-snap-1")],
        );
        let plan = plan_stamp(&facts(&img, &[]));
        assert_eq!(plan.origin, Origin::Upload);
        assert!(plan.ready_to_announce(&img));
        let announced = image(
            "ami-00000005",
            &[(MANAGED, "true"), (READY_AT, "2026-11-22T10:00:00Z")],
        );
        assert!(!plan_stamp(&facts(&announced, &[])).ready_to_announce(&announced));
        let foreign = image("ami-00000006", &[]);
        assert!(!plan_stamp(&facts(&foreign, &[])).ready_to_announce(&foreign));
    }
}
