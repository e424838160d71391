//! Register a completed import's snapshot as an image (volume size, naming retry, adoption).

use crate::config::Deps;
use crate::sweep::{announce, object_of, report_failure};
use chrono::{DateTime, SecondsFormat, Utc};
use shared::aws::{ec2, s3};
use shared::error::{AwsError, ErrorKind};
use shared::model::{Image, ObjectRef, Select, Tags};
use shared::plan::import::{self, OnDuplicate, Registration};
use shared::plan::lineage;
use tracing::info;

/// A registration attempt's AWS failure (the next sweep retries it), and whether it came once
/// RegisterImage may have taken effect: then the image may exist (not listed yet, or
/// registered before the failure of what followed), so the attempt must never be reported as
/// failed or given up on; the next sweep adopts or announces it.
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: AwsError,
    pub may_have_registered: bool,
}

impl Failed {
    /// A failure before any RegisterImage of this attempt.
    fn before(error: AwsError) -> Self {
        Failed {
            error,
            may_have_registered: false,
        }
    }

    /// A failure once RegisterImage was called: only a call EC2 refused outright (a denied
    /// permission) did not take effect; a 5xx, a lost answer, or a throttle (the SDK's last
    /// retry may hide an earlier attempt that took effect) may have.
    fn at_or_after_register(error: AwsError) -> Self {
        let refused =
            error.operation == "ec2:RegisterImage" && error.kind == ErrorKind::AccessDenied;
        Failed {
            error,
            may_have_registered: !refused,
        }
    }
}

/// Registers the task's snapshot as an image and announces it. `Ok` carries the image id, or
/// the failure reported for the task (refused size, no free name, EC2 refusal); `Err` is an
/// AWS failure the next sweep retries. The object is checked for a replacement before the
/// first RegisterImage only (`last_attempt` is None); every RegisterImage is preceded by the
/// task's [`lineage::REGISTER_ATTEMPTED`] tag. With a state bucket the object check is
/// decided once per task ([`replaced_once`]), so no sweep can report the upload replaced once
/// another has registered its image.
pub(crate) async fn register(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
    last_attempt: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<String, Failed> {
    let c = &deps.clients;
    // The snapshot's lineage first, with its own CreateTags (RegisterImage cannot tag it), and
    // before anything can refuse the registration: a crash or a refusal after this leaves a
    // tagged, managed snapshot that the next sweep registers or, if it never is, cleanup's
    // orphan sweep finds (an untagged one would be invisible to both once the task drops out
    // of DescribeImportSnapshotTasks after 7 days); the other order could leave an AMI whose
    // snapshot is never tagged. CreateTags overwrites with the same values, so repeating it is
    // harmless.
    ec2::create_tags(&c.ec2, &[&reg.snapshot_id], &reg.tags)
        .await
        .map_err(Failed::before)?;
    if last_attempt.is_none()
        && let Some(why) = replaced_once(deps, task_id, reg)
            .await
            .map_err(Failed::before)?
    {
        // Not the object's failure (its new content is another upload): the object is not
        // tagged; the snapshot, tagged managed above, is left to cleanup's orphan sweep.
        report_failure(deps, task_id, &why, None, now)
            .await
            .map_err(Failed::before)?;
        return Ok(why);
    }
    let snapshot = ec2::describe_snapshot(&c.ec2, &reg.snapshot_id)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                // Just tagged, so it exists: EC2's reads lag (Developer Guide, "Eventual
                // consistency"). A transient failure: the next sweep registers it.
                AwsError {
                    kind: ErrorKind::Other,
                    message: format!(
                        "{} (not listed yet: DescribeSnapshots is eventually consistent; the next sweep retries)",
                        e.message
                    ),
                    ..e
                }
            } else {
                e
            }
        })
        .map_err(Failed::before)?;
    let size = match import::root_volume(&reg.spec, snapshot.volume_size_gib) {
        Ok(size) => size,
        Err(message) => {
            return fail(deps, task_id, reg, message, now)
                .await
                .map_err(Failed::before);
        }
    };
    // Before every RegisterImage (and so only once the object was checked): a later attempt
    // that finds the object replaced since, while this one's image is not listed yet (EC2's
    // eventual consistency) or was not announced (a stop), adopts and announces it instead of
    // reporting the upload replaced; and the sweep gives up only once this is old enough.
    let attempted = Tags::from([(
        lineage::REGISTER_ATTEMPTED.to_owned(),
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
    )]);
    ec2::create_tags(&c.ec2, &[task_id], &attempted)
        .await
        .map_err(Failed::before)?;
    let image_id = match register_named(deps, task_id, reg, size)
        .await
        .map_err(Failed::at_or_after_register)?
    {
        Registered::Image(id) => id,
        // Another invocation registered it (a concurrent sweep won the name): that one
        // announces it; a later sweep does if it stopped. No second image.registered.
        Registered::Adopted(id) => return Ok(id),
        Registered::Refused(message) => {
            return fail(deps, task_id, reg, message, now)
                .await
                .map_err(Failed::before);
        }
    };
    let registered = async {
        let listed =
            ec2::describe_own_images(&c.ec2, &[Select::tag(lineage::IMPORT_TASK, [task_id])])
                .await?;
        let image = registered_image(reg, &image_id);
        announce(deps, task_id, listed.first().unwrap_or(&image), now).await?;
        Ok(image_id)
    };
    registered.await.map_err(|e| Failed {
        error: e,
        may_have_registered: true,
    })
}

/// Whether the upload's object was replaced since it was validated, decided once for the task
/// ([`Claims::decide_once`](shared::claim::Claims::decide_once), `claims/source-check/<region>/<task>`):
/// the first sweep to record its answer decides for every sweep after it. The task's
/// [`lineage::REGISTER_ATTEMPTED`] tag alone cannot: on AWS it shows in
/// DescribeImportSnapshotTasks only after a delay (EC2's eventual consistency), so a sweep
/// that listed the task before it (a concurrent one, or one seconds later) would check the
/// object again and, finding it replaced since, report the upload replaced over an image
/// registered from the validated content. Once the import has completed, "not replaced" is
/// final: the import read the object before it completed, and the object was unchanged until
/// the check.
async fn replaced_once(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
) -> Result<Option<String>, AwsError> {
    const REPLACED: &str = "replaced: ";
    let claims = &deps.config.claims;
    let key = format!("source-check/{}/{task_id}", deps.clients.region);
    // An answer already kept is followed without checking the object again (one call less,
    // and a sweep that could not read the object still follows it).
    let kept = match claims.decision(&deps.clients.s3, &key).await? {
        Some(kept) => kept,
        None => {
            let own = replaced(deps, reg).await?;
            let verdict = own.map_or_else(
                || "not replaced".to_owned(),
                |why| format!("{REPLACED}{why}"),
            );
            claims.decide_once(&deps.clients.s3, &key, &verdict).await?
        }
    };
    Ok(kept.strip_prefix(REPLACED).map(str::to_owned))
}

/// Why the imported snapshot may not hold the validated upload: the key's object now is
/// another ([`import::replaced_since_validation`]). A key deleted since is not a replacement.
async fn replaced(deps: &Deps, reg: &Registration) -> Result<Option<String>, AwsError> {
    let Some(object) = object_of(reg) else {
        return Ok(None);
    };
    let latest = ObjectRef {
        version_id: None,
        ..object
    };
    match s3::head_object(&deps.clients.s3, &latest).await {
        Ok(info) => Ok(import::replaced_since_validation(&reg.tags, &info)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reports the task's failure and returns its message (the step's result).
async fn fail(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
    message: String,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    report_failure(deps, task_id, &message, object_of(reg).as_ref(), now).await?;
    Ok(message)
}

/// How a registration attempt ended, short of an AWS failure.
pub(crate) enum Registered {
    /// The image, registered now.
    Image(String),
    /// The image registered by an earlier run of this task (or, on the fast path, by a
    /// concurrent duplicate event from the same snapshot).
    Adopted(String),
    /// It cannot be registered; the message is the failure to report on the upload.
    Refused(String),
}

/// RegisterImage under the planned name, then automatic ones while the name is taken by
/// another image ([`import::on_duplicate`] decides).
pub(crate) async fn register_named(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
    size: i32,
) -> Result<Registered, AwsError> {
    let c = &deps.clients;
    let mut attempt = 0;
    loop {
        let name = import::attempt_name(reg, attempt);
        let req = ec2::RegisterRequest {
            name: &name,
            snapshot_id: &reg.snapshot_id,
            volume_size_gib: size,
            spec: &reg.spec,
            tags: &reg.tags,
        };
        let e = match ec2::register_image(&c.ec2, req).await {
            Ok(id) => {
                info!(import_task_id = task_id, image_id = %id, name = %name, "registered image");
                return Ok(Registered::Image(id));
            }
            Err(e) if e.has_code("InvalidAMIName.Duplicate") => e,
            Err(e) if e.kind == ErrorKind::InvalidInput => {
                return Ok(Registered::Refused(format!(
                    "EC2 refused to register the image: {e}"
                )));
            }
            Err(e) => return Err(e),
        };
        let holder = ec2::image_holding_name(&c.ec2, &name).await?;
        match import::on_duplicate(task_id, holder.as_ref(), reg) {
            OnDuplicate::Adopt(id) => {
                info!(import_task_id = task_id, image_id = %id, "image already registered by an earlier run");
                return Ok(Registered::Adopted(id));
            }
            OnDuplicate::TryAnotherName if attempt + 1 < import::MAX_NAME_ATTEMPTS => attempt += 1,
            OnDuplicate::TryAnotherName => {
                return Ok(Registered::Refused(format!(
                    "no free image name after {} attempts (last: {name:?})",
                    import::MAX_NAME_ATTEMPTS
                )));
            }
            OnDuplicate::Fail(message) => return Ok(Registered::Refused(message)),
            OnDuplicate::HolderNotVisible => {
                // Transient (`Other`), not `Conflict`: the holder shows once DescribeImages
                // catches up, and then the retry adopts it or takes another name. As a conflict
                // the fast path reported the upload failed (image.failed) when its own earlier
                // delivery had registered the image and stopped before announcing it.
                return Err(AwsError {
                    region: Some(c.region.clone()),
                    operation: "ec2:RegisterImage",
                    resource: name,
                    kind: ErrorKind::Other,
                    code: e.code.clone(),
                    message: "the name is taken but no image holding it is listed yet, or it holds this upload's snapshot and its tags do not show yet (DescribeImages is eventually consistent); the next sweep retries".into(),
                });
            }
        }
    }
}

/// The image as registered, for the announcement when the listing does not show it yet.
pub(crate) fn registered_image(reg: &Registration, image_id: &str) -> Image {
    Image {
        id: image_id.to_owned(),
        name: reg.name.clone(),
        state: "pending".into(),
        creation_date: None,
        architecture: Some(reg.spec.architecture.as_str().into()),
        boot_mode: Some(reg.spec.boot_mode.as_str().into()),
        ena_support: Some(reg.spec.ena),
        root_device_name: Some(reg.spec.root_device.clone()),
        snapshot_ids: vec![reg.snapshot_id.clone()],
        tags: reg.tags.clone(),
        ..Image::default()
    }
}
