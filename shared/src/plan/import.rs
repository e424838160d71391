//! The import sweep planner: from the pipeline's import tasks and the images already made from
//! them, decide what to do next for each task.
//!
//! State lives in AWS: the import task's tags hold the spec and the outcome
//! ([`lineage::OUTCOME`]), and a registered image carries its task id ([`lineage::IMPORT_TASK`]).
//! The planner is therefore re-runnable at any point: a crash between two calls leaves facts
//! from which the next sweep computes the remaining steps, never a duplicate.

use super::lineage::{self, IMPORT_TASK, OUTCOME, STALE_WARNED, STARTED_AT};
use super::naming;
use super::spec::{ImageSpec, VolumeType};
use crate::model::{DiskFormat, Image, ImportStatus, ImportTask, ObjectInfo, ObjectRef, Tags};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// Settings of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepPolicy {
    /// An import still active after this long gets one warning event.
    pub stale_after: Duration,
}

/// What to register for a completed import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// The name to try first.
    pub name: String,
    /// Whether the user chose the name (then a foreign image holding it is a failure, not a
    /// reason to pick another).
    pub name_is_explicit: bool,
    /// The imported snapshot.
    pub snapshot_id: String,
    /// The validated spec, from the task's tags.
    pub spec: ImageSpec,
    /// Tags for the image and its snapshot (lineage, managed marker, the user's extra tags).
    pub tags: Tags,
    /// Deterministic identity of the upload, for alternative names.
    pub source_token: String,
    /// When the import started (the timestamp in automatic names).
    pub started_at: DateTime<Utc>,
}

/// The next step for one import task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum SweepAction {
    /// Register the AMI, then announce `image.registered` and record the outcome.
    Register {
        /// Task id.
        task_id: String,
        /// What to register.
        registration: Box<Registration>,
        /// When the last attempt was about to call RegisterImage
        /// ([`lineage::REGISTER_ATTEMPTED`]): the object was checked then, so this attempt
        /// does not check again; None before the first.
        last_attempt: Option<DateTime<Utc>>,
    },
    /// The AMI exists (an earlier run stopped before recording it): announce and record.
    Announce {
        /// Task id.
        task_id: String,
        /// The existing image.
        image_id: String,
    },
    /// The import failed (or its spec is unusable): announce `image.failed`, tag the object,
    /// record the outcome.
    ReportFailure {
        /// Task id.
        task_id: String,
        /// Why, as precise as AWS said.
        message: String,
        /// The source object, to tag with the failure.
        object: Option<ObjectRef>,
    },
    /// Still running for longer than the policy allows: one warning event.
    WarnStale {
        /// Task id.
        task_id: String,
        /// Minutes since the import started.
        age_minutes: i64,
    },
    /// Nothing to do now.
    Skip {
        /// Task id.
        task_id: String,
        /// Why.
        reason: String,
    },
}

impl SweepAction {
    /// The task this action is about.
    pub fn task_id(&self) -> &str {
        match self {
            SweepAction::Register { task_id, .. }
            | SweepAction::Announce { task_id, .. }
            | SweepAction::ReportFailure { task_id, .. }
            | SweepAction::WarnStale { task_id, .. }
            | SweepAction::Skip { task_id, .. } => task_id,
        }
    }

    /// Whether the action changes anything in AWS.
    pub fn mutates(&self) -> bool {
        !matches!(self, SweepAction::Skip { .. })
    }
}

/// Tag keys copied from the import task onto the image and snapshot.
const INHERITED: [&str; 6] = [
    lineage::SOURCE_URI,
    lineage::SOURCE_ETAG,
    lineage::SOURCE_VERSION,
    lineage::SOURCE_TOKEN,
    lineage::SOURCE_FORMAT,
    lineage::FAMILY,
];

/// Whether an import task is the pipeline's: it carries [`lineage::MANAGED`]. The sweep lists
/// tasks with a `tag-key` filter, but DescribeImportSnapshotTasks documents its `Filters` only
/// as "The filters." (botocore's ec2 model), naming none, and EC2's sibling task listings have
/// ignored a filter silently (aws/aws-cli#9558: DescribeExportImageTasks returned every task
/// whatever its `task-state` filter said). Checked on the answer too, so another tool's
/// imports in the account are never registered, reported or warned about as the pipeline's.
pub fn is_managed_task(task: &ImportTask) -> bool {
    task.tags.contains_key(lineage::MANAGED)
}

/// Plans the next step for every task of the pipeline ([`is_managed_task`]). `images_by_task`
/// maps a task id to the image already registered from it (found by the [`IMPORT_TASK`] tag).
pub fn plan_sweep(
    tasks: &[ImportTask],
    images_by_task: &BTreeMap<String, Image>,
    policy: SweepPolicy,
    now: DateTime<Utc>,
) -> Vec<SweepAction> {
    tasks
        .iter()
        .filter(|task| is_managed_task(task))
        .map(|task| plan_task(task, images_by_task.get(&task.id), policy, now))
        .collect()
}

fn plan_task(
    task: &ImportTask,
    image: Option<&Image>,
    policy: SweepPolicy,
    now: DateTime<Utc>,
) -> SweepAction {
    let task_id = task.id.clone();
    if let Some(outcome) = task.tags.get(OUTCOME) {
        return SweepAction::Skip {
            task_id,
            reason: format!("already concluded: {outcome}"),
        };
    }
    let object = match (&task.bucket, &task.key) {
        (Some(bucket), Some(key)) => Some(ObjectRef {
            bucket: bucket.clone(),
            key: key.clone(),
            version_id: task.tags.get(lineage::SOURCE_VERSION).cloned(),
        }),
        _ => None,
    };
    let started_at = task
        .tags
        .get(STARTED_AT)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    match &task.status {
        ImportStatus::Completed => plan_completed(task, image, object, started_at, now),
        ImportStatus::Deleted | ImportStatus::Deleting | ImportStatus::Error => {
            let why = task
                .status_message
                .clone()
                .unwrap_or_else(|| "no status message".into());
            SweepAction::ReportFailure {
                task_id,
                message: format!("import failed: {why}"),
                object,
            }
        }
        ImportStatus::Active | ImportStatus::Unknown(_) => {
            let age = started_at.map(|t| now - t);
            match age {
                Some(age) if age > policy.stale_after && !task.tags.contains_key(STALE_WARNED) => {
                    SweepAction::WarnStale {
                        task_id,
                        age_minutes: age.num_minutes(),
                    }
                }
                _ => SweepAction::Skip {
                    task_id,
                    reason: format!(
                        "import in progress ({}%{})",
                        task.progress.as_deref().unwrap_or("?"),
                        task.status_message
                            .as_deref()
                            .map(|m| format!(", {m}"))
                            .unwrap_or_default()
                    ),
                },
            }
        }
    }
}

/// Why an import's snapshot may not hold the content create-image validated: ImportSnapshot
/// names a bucket and key, not a version (EC2 API reference, `UserBucket`), and VM Import reads
/// the key's content when it runs. When the key's current object (`current`, HeadObject without
/// a version) is no longer the validated one (the task's `source-version`, else its
/// `source-etag`), the upload was replaced after validation and the snapshot may hold either
/// content. None when it is the same object.
pub fn replaced_since_validation(task_tags: &Tags, current: &ObjectInfo) -> Option<String> {
    let versions = (
        task_tags.get(lineage::SOURCE_VERSION),
        current.version_id.as_ref(),
    );
    if let (Some(validated), Some(now)) = versions
        && validated != now
    {
        return Some(format!(
            "the object was replaced after it was validated (version {validated}, now {now}): VM Import reads the key's current content, so the imported snapshot may hold either; not registered (the new version's own event imports it)"
        ));
    }
    let etags = (task_tags.get(lineage::SOURCE_ETAG), current.etag.as_ref());
    if let (Some(validated), Some(now)) = etags
        && validated.trim_matches('"') != now.trim_matches('"')
    {
        return Some(format!(
            "the object was replaced after it was validated (ETag {validated}, now {now}): VM Import reads the key's current content, so the imported snapshot may hold either; not registered (the new content's own event imports it)"
        ));
    }
    None
}

/// DescribeImportSnapshotTasks lists a task "currently active or ... completed or canceled in
/// the previous 7 days" (API reference, `importSnapshotTaskSet`). A completed import whose
/// registration still fails this long after the import **started** (earlier than its
/// completion, so a day or more before the task leaves the listing) is given up and reported,
/// with its snapshot, instead of vanishing from every sweep with no word.
pub const GIVE_UP_REGISTERING_AFTER: Duration = Duration::days(6);

/// Whether a registration that failed now is past [`GIVE_UP_REGISTERING_AFTER`].
pub fn give_up_registering(started_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - started_at >= GIVE_UP_REGISTERING_AFTER
}

/// How long after a registration attempt no image of it can still appear: the longest a
/// Lambda invocation runs (15 minutes) and EC2's listing lag (seconds). An upload is given up
/// only once its last attempt is this old and no image of the task is listed, or when an
/// attempt failed before any RegisterImage and no other attempt is this recent: a RegisterImage
/// whose answer was lost, or an image not listed yet, is never given up on.
pub const REGISTER_SETTLE: Duration = Duration::minutes(16);

/// When the task's last registration attempt was about to call RegisterImage
/// ([`lineage::REGISTER_ATTEMPTED`]).
fn last_attempt(task: &ImportTask) -> Option<DateTime<Utc>> {
    task.tags
        .get(lineage::REGISTER_ATTEMPTED)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The give-up report of a completed task with no image listed, when an attempt made past the
/// give-up mark failed and none can still be registering ([`REGISTER_SETTLE`]): no further
/// RegisterImage.
fn settled_give_up(
    started_at: DateTime<Utc>,
    last_attempt: Option<DateTime<Utc>>,
    snapshot_id: &str,
    now: DateTime<Utc>,
) -> Option<String> {
    let t = last_attempt?;
    (give_up_registering(started_at, t) && now - t >= REGISTER_SETTLE).then(|| {
        give_up_message(
            started_at,
            snapshot_id,
            "an attempt past the give-up mark; its error is in the sweep's log",
        )
    })
}

/// The report of an upload given up ([`GIVE_UP_REGISTERING_AFTER`]), naming its snapshot and
/// the last failure.
pub fn give_up_message(started_at: DateTime<Utc>, snapshot_id: &str, last: &str) -> String {
    format!(
        "the import completed but its registration has failed since {} (last: {last}); \
         DescribeImportSnapshotTasks lists a completed task for 7 days only, so the sweep stops \
         retrying: register snapshot {snapshot_id} by hand (re-uploading the object imports it \
         again), or delete it (cleanup's orphan sweep deletes it once it carries \
         ami-pipeline:managed)",
        started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// How long after an image's registration a sweep leaves its announcement to the invocation
/// that registered it.
pub const ANNOUNCE_GRACE_SECONDS: i64 = 120;

/// A completed task: announce the image already registered from it, or plan its registration
/// (the name: explicit, or automatic from the prefix, start time and token).
fn plan_completed(
    task: &ImportTask,
    image: Option<&Image>,
    object: Option<ObjectRef>,
    started_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> SweepAction {
    let task_id = task.id.clone();
    if let Some(image) = image {
        // Registered moments ago: the invocation that registered it announces it; a sweep that
        // overlaps it would announce it a second time. Once the grace has passed without the
        // outcome recorded, that invocation stopped: this sweep announces.
        let registered = image
            .creation_date
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        if registered.is_some_and(|t| now - t < Duration::seconds(ANNOUNCE_GRACE_SECONDS)) {
            return SweepAction::Skip {
                task_id,
                reason: format!(
                    "{} was registered moments ago; the invocation that registered it announces it (a later sweep does if it stopped)",
                    image.id
                ),
            };
        }
        return SweepAction::Announce {
            task_id,
            image_id: image.id.clone(),
        };
    }
    let Some(snapshot_id) = task.snapshot_id.clone() else {
        return SweepAction::Skip {
            task_id,
            reason: "completed but no snapshot id reported yet".into(),
        };
    };
    let spec = match ImageSpec::from_tags(&task.tags) {
        Ok(spec) => spec,
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return SweepAction::ReportFailure {
                task_id,
                message: format!(
                    "the import task's settings are invalid: {}",
                    list.join("; ")
                ),
                object,
            };
        }
    };
    let Some(source_token) = task.tags.get(lineage::SOURCE_TOKEN).cloned() else {
        return SweepAction::ReportFailure {
            task_id,
            message: format!("the import task lacks its {} tag", lineage::SOURCE_TOKEN),
            object,
        };
    };
    let started_at = started_at.unwrap_or(now);
    let (name, name_is_explicit) = match &spec.name {
        Some(n) => (n.clone(), true),
        None => (
            naming::auto_name(&spec.name_prefix, started_at, &source_token, 0),
            false,
        ),
    };
    // The import's start, not this sweep's clock: every sweep registering the task writes the
    // same tags on the snapshot before RegisterImage (see `registration_tags`).
    let tags = registration_tags(task, &spec, started_at);
    let last_attempt = last_attempt(task);
    if let Some(message) = settled_give_up(started_at, last_attempt, &snapshot_id, now) {
        return SweepAction::ReportFailure {
            task_id,
            message,
            object,
        };
    }
    SweepAction::Register {
        last_attempt,
        task_id,
        registration: Box::new(Registration {
            name,
            name_is_explicit,
            snapshot_id,
            spec,
            tags,
            source_token,
            started_at,
        }),
    }
}

/// Tags for a registered image and its snapshot: the AMITools date pair (`started_at`: when the
/// import started, the instant the automatic name carries), the upload's lineage copied from
/// the task, the task id, the managed marker, and the user's extra tags. A function of the task
/// alone: two sweeps registering it at once write identical tags on the snapshot, whichever
/// wins the RegisterImage race (issue #15).
pub fn registration_tags(task: &ImportTask, spec: &ImageSpec, started_at: DateTime<Utc>) -> Tags {
    let mut tags = spec.extra_tags.clone();
    for key in INHERITED {
        if let Some(v) = task.tags.get(key) {
            tags.insert(key.to_owned(), v.clone());
        }
    }
    tags.extend(lineage::date_tags(started_at));
    tags.insert(lineage::MANAGED.to_owned(), "true".to_owned());
    tags.insert(lineage::FAMILY.to_owned(), spec.family.clone());
    tags.insert(IMPORT_TASK.to_owned(), task.id.clone());
    tags.insert(
        lineage::UPLOAD_METHOD.to_owned(),
        "import-snapshot".to_owned(),
    );
    tags.insert(lineage::GENERATION.to_owned(), "0".to_owned());
    tags
}

/// The ingest rule for an older version: when the event names a version and the key's current
/// version is another one, the upload is superseded (ImportSnapshot would import the current
/// content; that version's own event imports it). Returns the current version.
pub fn superseded<'a>(wanted: Option<&str>, current: Option<&'a str>) -> Option<&'a str> {
    match (wanted, current) {
        (Some(wanted), Some(current)) if wanted != current => Some(current),
        _ => None,
    }
}

/// The idempotency key of an upload: bucket, key and version (or ETag when unversioned).
pub fn upload_token(object: &ObjectRef, etag: Option<&str>) -> String {
    let version_or_etag = object.version_id.as_deref().or(etag).unwrap_or_default();
    naming::source_token(&object.bucket, &object.key, version_or_etag)
}

/// The import task's tag set: the full validated spec, the managed marker and the upload's
/// lineage (URI, token, format, start time, ETag, version), so a sweep can register the task's
/// snapshot from the task alone. `object` carries the version that was validated.
pub fn import_task_tags(
    spec: &ImageSpec,
    object: &ObjectRef,
    etag: Option<&str>,
    format: DiskFormat,
    now: DateTime<Utc>,
) -> Tags {
    let mut tags = spec.to_tags();
    tags.insert(lineage::MANAGED.into(), "true".into());
    tags.insert(
        lineage::SOURCE_URI.into(),
        lineage::fit_tag_value(&object.uri()),
    );
    tags.insert(lineage::SOURCE_TOKEN.into(), upload_token(object, etag));
    tags.insert(lineage::SOURCE_FORMAT.into(), format.as_api().into());
    tags.insert(
        STARTED_AT.into(),
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    if let Some(etag) = etag {
        tags.insert(lineage::SOURCE_ETAG.into(), etag.to_owned());
    }
    if let Some(v) = &object.version_id {
        tags.insert(lineage::SOURCE_VERSION.into(), v.clone());
    }
    tags
}

/// The volume size rule: the size asked for, else the imported disk's, at least the volume
/// type's least (4 GiB for io1/io2, 1 otherwise). A size smaller than the imported disk, or a
/// disk larger than a volume of the type can be ([`VolumeType::sizes`]), is refused with the
/// message reported as the upload's failure, before RegisterImage.
pub fn volume_size(
    requested: Option<u32>,
    snapshot_gib: Option<i32>,
    volume_type: VolumeType,
) -> Result<i32, String> {
    let snapshot_gib = snapshot_gib.unwrap_or(1).max(1);
    let sizes = volume_type.sizes();
    let size = match requested {
        Some(n) if (n as i32) < snapshot_gib => {
            return Err(format!(
                "volume-size {n} GiB is smaller than the imported disk ({snapshot_gib} GiB); the image was not registered"
            ));
        }
        Some(n) => n as i32,
        None => snapshot_gib.max(*sizes.start() as i32),
    };
    if size > *sizes.end() as i32 {
        return Err(format!(
            "the imported disk ({snapshot_gib} GiB) is larger than a {} volume can be ({} GiB); the image was not registered: choose another volume-type",
            volume_type.as_str(),
            sizes.end()
        ));
    }
    Ok(size)
}

/// The root volume's size for `spec` over a disk of `disk_gib` ([`volume_size`]), refused, as
/// its sizes are, when the volume's IOPS or throughput do not fit that size
/// ([`spec::performance_ties`](super::spec::performance_ties)): with no `volume-size` set, the
/// disk decides the size only here, so an upload that set `iops` beyond what its disk's size
/// takes is refused with what to change, before RegisterImage, not registered as an image
/// that could launch no instance.
pub fn root_volume(spec: &ImageSpec, disk_gib: Option<i32>) -> Result<i32, String> {
    let size = volume_size(spec.volume_size_gib, disk_gib, spec.volume_type)?;
    let ties = super::spec::performance_ties(
        spec.volume_type,
        u32::try_from(size).ok(),
        spec.iops,
        spec.throughput,
    );
    if ties.is_empty() {
        return Ok(size);
    }
    let why: Vec<String> = ties.into_iter().map(|(k, m)| format!("{k}: {m}")).collect();
    Err(format!("{}; the image was not registered", why.join("; ")))
}

/// The image name tried at `attempt` (0: the planned name; then automatic names with a suffix).
pub fn attempt_name(reg: &Registration, attempt: u32) -> String {
    if attempt == 0 {
        reg.name.clone()
    } else {
        naming::auto_name(
            &reg.spec.name_prefix,
            reg.started_at,
            &reg.source_token,
            attempt,
        )
    }
}

/// What to do when RegisterImage says the name is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDuplicate {
    /// The image holding the name was made from this task by an earlier run: use it.
    Adopt(String),
    /// A foreign image holds an automatic name: try the next candidate.
    TryAnotherName,
    /// A foreign image holds the name the user chose.
    Fail(String),
    /// EC2 says the name is taken but no image holding it is visible yet (DescribeImages is
    /// eventually consistent: an image registered moments ago, perhaps by this very task in a
    /// run that crashed, may not be listed), or the holder was registered from this upload's
    /// snapshot and shows no tags yet. Neither adopting, renaming nor failing is safe:
    /// renaming could register a second AMI for one upload. Fail this step; the next sweep
    /// retries and then sees the holder.
    HolderNotVisible,
}

/// Most alternative automatic names tried before giving up.
pub const MAX_NAME_ATTEMPTS: u32 = 3;

/// Decides about a duplicate name, given the image that holds it (if it could be found).
pub fn on_duplicate(
    task_id: &str,
    holder: Option<&Image>,
    registration: &Registration,
) -> OnDuplicate {
    match holder {
        Some(img) if img.tags.get(IMPORT_TASK).map(String::as_str) == Some(task_id) => {
            OnDuplicate::Adopt(img.id.clone())
        }
        // The fast path has no task: an image registered from this very snapshot for this
        // upload (a concurrent duplicate event won the name) is ours.
        Some(img)
            if img.snapshot_ids.contains(&registration.snapshot_id)
                && img.tags.get(lineage::SOURCE_TOKEN) == Some(&registration.source_token) =>
        {
            OnDuplicate::Adopt(img.id.clone())
        }
        // Registered from this upload's own snapshot, but no tag shows yet: EC2's tags are
        // eventually consistent too, and the pipeline registers with its tags, so this is most
        // likely our image listed before its tags. Renaming it away would register a second AMI
        // from one snapshot (and an explicit name would be reported taken): wait for the tags,
        // as for a holder not listed yet. One someone registered by hand from our snapshot
        // under our name and never tagged is given up on with the task, never adopted.
        Some(img)
            if img.snapshot_ids.contains(&registration.snapshot_id)
                && !img.tags.contains_key(IMPORT_TASK)
                && !img.tags.contains_key(lineage::SOURCE_TOKEN) =>
        {
            OnDuplicate::HolderNotVisible
        }
        Some(img) if registration.name_is_explicit => OnDuplicate::Fail(format!(
            "image name {:?} is already used by {}, which this upload did not create; choose another name",
            registration.name, img.id
        )),
        None => OnDuplicate::HolderNotVisible,
        Some(_) => OnDuplicate::TryAnotherName,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::spec::{self, ImageSpec};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .single()
            .expect("valid date")
    }

    fn policy() -> SweepPolicy {
        SweepPolicy {
            stale_after: Duration::minutes(90),
        }
    }

    fn task(id: &str, status: ImportStatus, extra: &[(&str, &str)]) -> ImportTask {
        let spec = spec::resolve(&[], "team/disk.raw").expect("valid");
        let mut tags = spec.to_tags();
        tags.insert(lineage::SOURCE_TOKEN.into(), "tok".into());
        tags.insert(lineage::SOURCE_URI.into(), "s3://b/team/disk.raw".into());
        tags.insert(STARTED_AT.into(), "2026-11-22T11:00:00Z".into());
        tags.insert(lineage::MANAGED.into(), "true".into());
        for (k, v) in extra {
            tags.insert(k.to_string(), v.to_string());
        }
        ImportTask {
            id: id.into(),
            status,
            status_message: None,
            progress: None,
            snapshot_id: Some("snap-1".into()),
            bucket: Some("b".into()),
            key: Some("team/disk.raw".into()),
            tags,
        }
    }

    fn image(id: &str, task: &str) -> Image {
        Image {
            id: id.into(),
            name: "n".into(),
            state: "available".into(),
            creation_date: None,
            architecture: None,
            boot_mode: None,
            ena_support: None,
            root_device_name: None,
            snapshot_ids: vec![],
            tags: Tags::from([(IMPORT_TASK.to_string(), task.to_string())]),
            ..Image::default()
        }
    }

    /// The import task of an upload with every optional setting and the most extra tags.
    fn fullest_task() -> (ImportTask, ImageSpec) {
        let extra: Vec<String> = (0..spec::MAX_EXTRA_TAGS)
            .map(|i| format!("k{i}=v"))
            .collect();
        let settings: BTreeMap<String, String> = [
            ("architecture", "x86_64"),
            ("boot-mode", "uefi"),
            ("tpm", "true"),
            ("volume-size", "40"),
            ("volume-type", "gp3"),
            ("iops", "6000"),
            ("throughput", "500"),
            ("name", "web-1"),
            ("description", "web"),
            ("family", "web"),
            ("tags", &extra.join("&")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let spec = spec::resolve(&[&settings], "web/disk.raw").expect("valid");
        let object = ObjectRef {
            bucket: "b".into(),
            key: "web/disk.raw".into(),
            version_id: Some("v1".into()),
        };
        let mut t = task(
            "import-snap-0123456789abcdef0",
            ImportStatus::Completed,
            &[],
        );
        t.tags = import_task_tags(&spec, &object, Some("e"), DiskFormat::Raw, now());
        (t, spec)
    }

    /// EC2 keeps at most 50 tags on a resource (CreateTags: "Each resource can have a maximum
    /// of 50 tags"), the import task included: every optional setting, the most extra tags, the
    /// upload's lineage and every state key the sweep adds must fit.
    #[test]
    fn the_most_tags_an_import_task_carries_fit_ec2s_limit() {
        let (mut t, _) = fullest_task();
        for key in [OUTCOME, STALE_WARNED, lineage::REGISTER_ATTEMPTED] {
            t.tags.insert(key.into(), "x".into());
        }
        assert!(t.tags.len() <= 50, "{} tags: {:?}", t.tags.len(), t.tags);
    }

    /// …and on the image: what registration writes, then every key the other functions may add
    /// to a published source (tag-lineage's ready marker, publish's state, record and policy,
    /// cleanup's mark, a person's protection), and the key a copy adds at CopyImage (it gets
    /// every tag of the source besides), with 3 to spare.
    #[test]
    fn the_most_tags_a_published_image_carries_leave_room_to_spare() {
        use crate::plan::publish::{
            self, FAILED_REGIONS_MORE_PREFIX, PUBLISH_SOURCE, PUBLISH_STATE, PUBLISHED_AT,
        };
        use crate::plan::tags::{DEPRECATED_BY, PROTECT_TAG, READY_AT};
        let (t, spec) = fullest_task();
        let mut tags = registration_tags(&t, &spec, now());
        let every_region: Vec<String> = (0..34).map(|i| format!("xx-region-{i:02}")).collect();
        let failed: Vec<&str> = every_region.iter().map(String::as_str).collect();
        tags.extend(publish::failed_region_tags(&Tags::new(), &failed));
        assert!(tags.contains_key(&format!("{FAILED_REGIONS_MORE_PREFIX}2")));
        for key in [
            READY_AT,
            PUBLISH_STATE,
            PUBLISHED_AT,
            DEPRECATED_BY,
            PROTECT_TAG,
            PUBLISH_SOURCE,
        ]
        .into_iter()
        .chain(publish::tags::ALL)
        {
            tags.insert(key.into(), "x".into());
        }
        const SPARE: usize = 3;
        assert!(tags.len() + SPARE <= 50, "{} tags: {tags:?}", tags.len());
    }

    #[test]
    fn another_tools_import_tasks_are_not_planned_whatever_the_listing_returned() {
        let mut foreign = task("t-foreign", ImportStatus::Completed, &[]);
        foreign.tags.remove(lineage::MANAGED);
        let mut deleted = task("t-foreign-deleted", ImportStatus::Deleted, &[]);
        deleted.tags.remove(lineage::MANAGED);
        let ours = task("t-ours", ImportStatus::Completed, &[]);
        assert!(!is_managed_task(&foreign) && is_managed_task(&ours));
        let actions = plan_sweep(&[foreign, deleted, ours], &BTreeMap::new(), policy(), now());
        assert_eq!(
            actions.iter().map(SweepAction::task_id).collect::<Vec<_>>(),
            ["t-ours"]
        );
    }

    #[test]
    fn completed_task_is_registered_with_lineage_tags() {
        let actions = plan_sweep(
            &[task("t1", ImportStatus::Completed, &[])],
            &BTreeMap::new(),
            policy(),
            now(),
        );
        let SweepAction::Register { registration, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(registration.snapshot_id, "snap-1");
        assert!(
            registration.name.starts_with("team-20261122T110000Z-"),
            "{}",
            registration.name
        );
        assert!(!registration.name_is_explicit);
        let t = &registration.tags;
        assert_eq!(t[lineage::MANAGED], "true");
        assert_eq!(t[lineage::FAMILY], "team");
        assert_eq!(t[IMPORT_TASK], "t1");
        assert_eq!(t[lineage::SOURCE_URI], "s3://b/team/disk.raw");
        // The import's start (the task's started-at, the instant the name carries), not the
        // sweep's clock: every sweep registering it writes the same tags.
        assert_eq!(t[lineage::CREATE_DATE], "20261122T110000Z");
        let started = now() - Duration::hours(1);
        assert_eq!(
            t[lineage::CREATE_TIMESTAMP],
            started.timestamp().to_string()
        );
        assert!(
            !t.keys().any(|k| k.starts_with(spec::SPEC_TAG_PREFIX)),
            "spec tags stay on the task"
        );
    }

    /// The six-day give-up waits until no RegisterImage can still show an image: an attempt
    /// made past the mark is retried until it is [`REGISTER_SETTLE`] old, then the upload is
    /// given up without another RegisterImage; an attempt before the mark never counts.
    #[test]
    fn an_upload_is_given_up_only_once_its_last_attempt_past_the_mark_has_settled() {
        let started = now() - Duration::hours(1);
        let mark = started + GIVE_UP_REGISTERING_AFTER;
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let plan = |attempt: Option<DateTime<Utc>>, when: DateTime<Utc>| {
            let extra: Vec<(&str, String)> = attempt
                .map(|t| vec![(lineage::REGISTER_ATTEMPTED, at(t))])
                .unwrap_or_default();
            let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let t = task("t1", ImportStatus::Completed, &pairs);
            plan_sweep(std::slice::from_ref(&t), &BTreeMap::new(), policy(), when).remove(0)
        };
        let registers = |a: &SweepAction| matches!(a, SweepAction::Register { .. });
        let gives_up = |a: &SweepAction| matches!(a, SweepAction::ReportFailure { message, .. } if message.contains("7 days"));
        // No attempt yet, or the last one before the mark: another RegisterImage.
        assert!(registers(&plan(None, mark + Duration::hours(1))));
        let early = plan(Some(mark - Duration::hours(1)), mark + Duration::hours(1));
        assert!(registers(&early), "{early:?}");
        // The last attempt past the mark, 15 minutes ago: it may still show an image.
        let fresh = plan(Some(mark), mark + Duration::minutes(15));
        assert!(registers(&fresh), "{fresh:?}");
        // 16 minutes: given up, with the snapshot named.
        let settled = plan(Some(mark), mark + REGISTER_SETTLE);
        assert!(gives_up(&settled), "{settled:?}");
        // An attempt recorded means the object was checked: the next one does not check again.
        let SweepAction::Register { last_attempt, .. } = plan(Some(mark), mark) else {
            panic!("registers")
        };
        assert_eq!(last_attempt, Some(mark));
    }

    /// Issue #15, found by the chaos harness: two sweeps (or a sweep and an ingest) register
    /// one completed import seconds apart; each tags the snapshot before RegisterImage and the
    /// loser adopts the winner's image, so the snapshot kept the loser's create_date and the
    /// image the winner's: tag-lineage refused it for good as a lineage conflict.
    #[test]
    fn every_sweep_registering_one_import_writes_the_same_tags() {
        let t = task("t1", ImportStatus::Completed, &[]);
        let plan = |at| plan_sweep(std::slice::from_ref(&t), &BTreeMap::new(), policy(), at);
        let (a, b) = (plan(now()), plan(now() + Duration::seconds(7)));
        let (
            SweepAction::Register {
                registration: ra, ..
            },
            SweepAction::Register {
                registration: rb, ..
            },
        ) = (&a[0], &b[0])
        else {
            panic!("{a:?} {b:?}")
        };
        assert_eq!(ra.tags, rb.tags);
        assert_eq!(ra.name, rb.name);
    }

    #[test]
    fn a_sweep_leaves_a_just_registered_image_to_its_registering_invocation() {
        // Registered 30 s ago: its registering invocation announces; after the grace, the sweep.
        let mut fresh = image("ami-7", "t7");
        fresh.creation_date = Some((now() - Duration::seconds(30)).to_rfc3339());
        let completed = [task("t7", ImportStatus::Completed, &[])];
        let with = |img: Image| BTreeMap::from([("t7".to_string(), img)]);
        let actions = plan_sweep(&completed, &with(fresh.clone()), policy(), now());
        assert!(
            matches!(&actions[0], SweepAction::Skip { reason, .. } if reason.contains("registered moments ago")),
            "{actions:?}"
        );
        fresh.creation_date = Some((now() - Duration::minutes(5)).to_rfc3339());
        let actions = plan_sweep(&completed, &with(fresh), policy(), now());
        assert!(
            matches!(&actions[0], SweepAction::Announce { .. }),
            "{actions:?}"
        );
    }

    #[test]
    fn a_task_in_error_is_reported_failed_not_waited_on() {
        assert_eq!(ImportStatus::parse("error"), ImportStatus::Error);
        let mut failed = task("t-error", ImportStatus::Error, &[]);
        failed.status_message = Some("ClientError: Disk validation failed".into());
        let actions = plan_sweep(&[failed], &BTreeMap::new(), policy(), now());
        assert!(
            matches!(&actions[0], SweepAction::ReportFailure { message, object: Some(o), .. }
            if message == "import failed: ClientError: Disk validation failed" && o.key == "team/disk.raw"),
            "{actions:?}"
        );
    }

    #[test]
    fn each_status_gets_its_step() {
        let mut failed = task("t2", ImportStatus::Deleted, &[]);
        failed.status_message = Some("ClientError: Unknown object".into());
        let mut young = task(
            "t3",
            ImportStatus::Active,
            &[(STARTED_AT, "2026-11-22T11:30:00Z")],
        );
        young.progress = Some("40".into());
        let old = task("t4", ImportStatus::Active, &[]);
        let warned = task("t5", ImportStatus::Active, &[(STALE_WARNED, "x")]);
        let done = task(
            "t6",
            ImportStatus::Completed,
            &[(OUTCOME, "registered:ami-1")],
        );
        let crashed = task("t7", ImportStatus::Completed, &[]);
        let images = BTreeMap::from([("t7".to_string(), image("ami-7", "t7"))]);
        let actions = plan_sweep(
            &[failed, young, old, warned, done, crashed],
            &images,
            policy(),
            now(),
        );
        assert!(
            matches!(&actions[0], SweepAction::ReportFailure { message, object: Some(o), .. }
            if message == "import failed: ClientError: Unknown object" && o.key == "team/disk.raw")
        );
        assert!(
            matches!(&actions[1], SweepAction::Skip { reason, .. } if reason.starts_with("import in progress (40%"))
        );
        assert_eq!(
            actions[2],
            SweepAction::Skip {
                task_id: "t4".into(),
                reason: "import in progress (?%)".into()
            }
        );
        assert!(
            matches!(&actions[4], SweepAction::Skip { reason, .. } if reason == "already concluded: registered:ami-1")
        );
        assert_eq!(
            actions[5],
            SweepAction::Announce {
                task_id: "t7".into(),
                image_id: "ami-7".into()
            }
        );
        let stale_policy = SweepPolicy {
            stale_after: Duration::minutes(30),
        };
        let actions = plan_sweep(
            &[
                task("t4", ImportStatus::Active, &[]),
                task("t5", ImportStatus::Active, &[(STALE_WARNED, "x")]),
            ],
            &BTreeMap::new(),
            stale_policy,
            now(),
        );
        assert_eq!(
            actions[0],
            SweepAction::WarnStale {
                task_id: "t4".into(),
                age_minutes: 60
            }
        );
        assert!(
            matches!(actions[1], SweepAction::Skip { .. }),
            "warned once only"
        );
    }

    #[test]
    fn tampered_spec_tags_are_reported_not_registered() {
        let t = task(
            "t8",
            ImportStatus::Completed,
            &[("ami-pipeline:spec:architecture", "sparc")],
        );
        let actions = plan_sweep(&[t], &BTreeMap::new(), policy(), now());
        assert!(
            matches!(&actions[0], SweepAction::ReportFailure { message, .. } if message.contains("architecture"))
        );
    }

    #[test]
    fn duplicate_names_adopt_our_image_or_fail_for_explicit_names() {
        let spec = ImageSpec {
            name: Some("fixed".into()),
            ..spec::resolve(&[], "k").expect("valid")
        };
        let mut reg = Registration {
            name: "fixed".into(),
            name_is_explicit: true,
            snapshot_id: "s".into(),
            spec,
            tags: Tags::new(),
            source_token: "tok".into(),
            started_at: now(),
        };
        assert_eq!(
            on_duplicate("t1", Some(&image("ami-1", "t1")), &reg),
            OnDuplicate::Adopt("ami-1".into())
        );
        assert!(
            matches!(on_duplicate("t1", Some(&image("ami-2", "other")), &reg), OnDuplicate::Fail(m) if m.contains("ami-2"))
        );
        assert_eq!(
            on_duplicate("t1", None, &reg),
            OnDuplicate::HolderNotVisible
        );
        reg.name_is_explicit = false;
        assert_eq!(
            on_duplicate("t1", Some(&image("ami-2", "other")), &reg),
            OnDuplicate::TryAnotherName
        );
        // An automatic name whose holder is not listed yet may be this task's own image: never
        // rename (that could register a second AMI), retry later.
        assert_eq!(
            on_duplicate("t1", None, &reg),
            OnDuplicate::HolderNotVisible
        );
    }

    #[test]
    fn a_holder_registered_from_our_snapshot_is_adopted_once_its_tags_show() {
        let spec = spec::resolve(&[], "k").expect("valid");
        let mut reg = Registration {
            name: "auto".into(),
            name_is_explicit: false,
            snapshot_id: "s".into(),
            spec,
            tags: Tags::new(),
            source_token: "tok".into(),
            started_at: now(),
        };
        // The holder is listed but its tags do not show yet: registered from this upload's
        // snapshot, it is most likely ours; wait for its tags (before: renamed, a second AMI of
        // one snapshot, or an explicit name reported taken), whether the name was chosen or not.
        let untagged = Image {
            snapshot_ids: vec!["s".into()],
            tags: Tags::new(),
            ..image("ami-3", "")
        };
        assert_eq!(
            on_duplicate("t1", Some(&untagged), &reg),
            OnDuplicate::HolderNotVisible
        );
        reg.name_is_explicit = true;
        assert_eq!(
            on_duplicate("t1", Some(&untagged), &reg),
            OnDuplicate::HolderNotVisible
        );
        reg.name_is_explicit = false;
        // Once its tags show: adopted.
        let tagged = Image {
            snapshot_ids: vec!["s".into()],
            ..image("ami-3", "t1")
        };
        assert_eq!(
            on_duplicate("t1", Some(&tagged), &reg),
            OnDuplicate::Adopt("ami-3".into())
        );
        // Our snapshot, but tags that name another task or upload: not ours.
        let other_task = Image {
            snapshot_ids: vec!["s".into()],
            ..image("ami-4", "other")
        };
        assert_eq!(
            on_duplicate("t1", Some(&other_task), &reg),
            OnDuplicate::TryAnotherName
        );
        let other_upload = Image {
            snapshot_ids: vec!["s".into()],
            tags: Tags::from([(lineage::SOURCE_TOKEN.to_string(), "another".to_string())]),
            ..image("ami-5", "")
        };
        assert_eq!(
            on_duplicate("t1", Some(&other_upload), &reg),
            OnDuplicate::TryAnotherName
        );
        // Fast path (its snapshot stands for the task; its token, no task tag): ours.
        let fast = Image {
            snapshot_ids: vec!["s".into()],
            tags: Tags::from([(lineage::SOURCE_TOKEN.to_string(), "tok".to_string())]),
            ..image("ami-6", "")
        };
        assert_eq!(
            on_duplicate("s", Some(&fast), &reg),
            OnDuplicate::Adopt("ami-6".into())
        );
    }

    #[test]
    fn the_volume_size_fits_its_type() {
        // io1/io2 start at 4 GiB: a smaller disk gets a 4 GiB root volume.
        assert_eq!(volume_size(None, Some(2), VolumeType::Io2), Ok(4));
        assert_eq!(volume_size(None, Some(8), VolumeType::Io1), Ok(8));
        // A magnetic volume stops at 1,024 GiB: a larger disk is refused before RegisterImage.
        let e = volume_size(None, Some(1_500), VolumeType::Standard).expect_err("too large");
        assert!(
            e.contains("larger than a standard volume can be (1024 GiB)"),
            "{e}"
        );
        assert_eq!(volume_size(None, Some(1_500), VolumeType::Gp3), Ok(1_500));
    }

    #[test]
    fn the_root_volume_is_refused_when_the_disk_size_does_not_take_its_iops() {
        let spec = |pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            spec::resolve(&[&m], "k.raw").expect("valid alone: the size is the disk's")
        };
        let fast = spec(&[("iops", "16000")]);
        // A 32 GiB disk takes 16,000 IOPS; an 8 GiB one 4,000.
        assert_eq!(root_volume(&fast, Some(32)), Ok(32));
        let e = root_volume(&fast, Some(8)).expect_err("8 GiB takes 4,000 IOPS");
        assert_eq!(
            e,
            "iops: 16,000 IOPS is more than a gp3 volume of 8 GiB takes: at most 4,000 (500 IOPS per GiB); set volume-size to at least 32 GiB, or iops to at most 4,000; the image was not registered"
        );
        // io1's least size (4 GiB) is what a 1 GiB disk gets, and what the IOPS are held to.
        let io1 = spec(&[("volume-type", "io1"), ("iops", "300")]);
        assert!(
            root_volume(&io1, Some(1)).is_err_and(|e| e.contains("at most 200")),
            "4 GiB of io1 take 200 IOPS"
        );
        assert_eq!(root_volume(&io1, Some(6)), Ok(6));
        // The size rules come first, with their own message.
        let small = spec(&[("volume-size", "1")]);
        assert!(
            root_volume(&small, Some(2))
                .is_err_and(|e| e.contains("smaller than the imported disk"))
        );
    }

    #[test]
    fn volume_size_is_the_request_or_the_disk_never_smaller() {
        let volume_size = |r, s| volume_size(r, s, VolumeType::Gp3);
        assert_eq!(volume_size(None, Some(8)), Ok(8));
        assert_eq!(volume_size(None, None), Ok(1));
        assert_eq!(volume_size(None, Some(0)), Ok(1));
        assert_eq!(volume_size(Some(20), Some(8)), Ok(20));
        assert_eq!(volume_size(Some(8), Some(8)), Ok(8));
        assert_eq!(
            volume_size(Some(4), Some(8)),
            Err("volume-size 4 GiB is smaller than the imported disk (8 GiB); the image was not registered".into())
        );
    }

    #[test]
    fn ingest_rules_supersede_and_tag_the_task() {
        assert_eq!(superseded(Some("v1"), Some("v2")), Some("v2"));
        assert_eq!(superseded(Some("v2"), Some("v2")), None);
        assert_eq!(superseded(None, Some("v2")), None);
        assert_eq!(superseded(Some("v1"), None), None);
        let object = ObjectRef {
            bucket: "b".into(),
            key: "web/app.raw".into(),
            version_id: Some("v2".into()),
        };
        let spec = spec::resolve(&[], &object.key).expect("defaults are valid");
        let tags = import_task_tags(&spec, &object, Some("\"e\""), DiskFormat::Raw, now());
        assert_eq!(tags[lineage::MANAGED], "true");
        assert_eq!(tags[lineage::SOURCE_URI], object.uri());
        assert_eq!(tags[lineage::SOURCE_VERSION], "v2");
        assert_eq!(tags[lineage::SOURCE_ETAG], "\"e\"");
        assert_eq!(tags[lineage::SOURCE_FORMAT], "RAW");
        assert_eq!(tags[STARTED_AT], "2026-11-22T12:00:00Z");
        assert_eq!(
            tags[lineage::SOURCE_TOKEN],
            naming::source_token("b", "web/app.raw", "v2")
        );
        let unversioned = ObjectRef {
            version_id: None,
            ..object
        };
        assert_eq!(
            upload_token(&unversioned, Some("\"e\"")),
            naming::source_token("b", "web/app.raw", "\"e\"")
        );
        let tags = import_task_tags(&spec, &unversioned, None, DiskFormat::Raw, now());
        assert!(!tags.contains_key(lineage::SOURCE_VERSION));
        assert!(!tags.contains_key(lineage::SOURCE_ETAG));
    }

    #[test]
    fn registration_is_given_up_a_day_before_the_task_leaves_the_listing() {
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap();
        assert!(!give_up_registering(start, start));
        assert!(!give_up_registering(
            start,
            start + Duration::days(6) - Duration::seconds(1)
        ));
        assert!(give_up_registering(start, start + Duration::days(6)));
        assert!(give_up_registering(start, start + Duration::days(30)));
    }

    #[test]
    fn an_object_replaced_after_validation_is_detected_by_version_then_etag() {
        let tags = Tags::from([
            (lineage::SOURCE_VERSION.to_owned(), "v1".to_owned()),
            (lineage::SOURCE_ETAG.to_owned(), "e1".to_owned()),
        ]);
        let info = |version: Option<&str>, etag: &str| ObjectInfo {
            version_id: version.map(str::to_owned),
            etag: Some(etag.to_owned()),
            ..ObjectInfo::default()
        };
        assert_eq!(
            replaced_since_validation(&tags, &info(Some("v1"), "e1")),
            None
        );
        let by_version = replaced_since_validation(&tags, &info(Some("v2"), "e1"));
        assert!(by_version.is_some_and(|w| w.contains("version v1, now v2")));
        let unversioned = Tags::from([(lineage::SOURCE_ETAG.to_owned(), "e1".to_owned())]);
        assert_eq!(
            replaced_since_validation(&unversioned, &info(None, "\"e1\"")),
            None
        );
        let by_etag = replaced_since_validation(&unversioned, &info(None, "e2"));
        assert!(by_etag.is_some_and(|w| w.contains("ETag e1, now e2")));
    }
}
