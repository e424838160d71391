//! The sweep: plan over the pipeline's import tasks and execute each step (announce, report a
//! failure, warn about a slow import); then, in the scheduled sweep only, the fast path's loose
//! ends: ingest again the uploads whose snapshot ended in error with no event left to retry them
//! ([`crate::abandoned`]), send the `image.registered` never recorded as sent
//! ([`crate::announce::repair_recent`]), and continue the pending writes that stopped near a
//! deadline with a checkpoint ([`crate::continuation`]), and ingest again the uploads a
//! transient error stopped ([`crate::deferred`]).

use crate::abandoned;
use crate::announce::{self, registered_message};
use crate::config::Deps;
use crate::continuation;
use crate::ingest::{failed_message, tag_object};
use crate::output::{StepAction, StepReport, SweepReport};
use crate::register::register;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use shared::aws::ec2;
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::model::{Image, ObjectRef, Select, Tags};
use shared::notify::{EventType, Message};
use shared::plan::import::{self, Registration, SweepAction, SweepPolicy};
use shared::plan::lineage;
use shared::plan::upload::UploadMethod;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Lists the pipeline's import tasks, plans, and executes; with `loose_ends` (the scheduled
/// sweep) also the fast path's loose ends ([`loose_ends`]). The sweep that follows every ingest
/// leaves those to the schedule: they are, by definition, what no event is left to finish, and
/// each costs listings (and a checkpoint's reads per pending snapshot) that a burst of N
/// uploads would otherwise repeat N times.
pub async fn sweep(
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
    loose_ends: bool,
) -> Result<SweepReport, AwsError> {
    let c = &deps.clients;
    let mut tasks =
        ec2::describe_import_tasks(&c.ec2, &[Select::tag_key(lineage::MANAGED)]).await?;
    // The filter is not documented for this listing: checked on the answer as well.
    tasks.retain(import::is_managed_task);
    let pending: Vec<&str> = tasks
        .iter()
        .filter(|t| {
            t.status == shared::model::ImportStatus::Completed
                && !t.tags.contains_key(lineage::OUTCOME)
        })
        .map(|t| t.id.as_str())
        .collect();
    let mut images_by_task = BTreeMap::new();
    for chunk in pending.chunks(100) {
        for image in ec2::describe_own_images(
            &c.ec2,
            &[Select::tag(lineage::IMPORT_TASK, chunk.iter().copied())],
        )
        .await?
        {
            if let Some(task) = image.tags.get(lineage::IMPORT_TASK) {
                images_by_task.insert(task.clone(), image);
            }
        }
    }
    let policy = SweepPolicy {
        stale_after: chrono::Duration::minutes(deps.config.stale_import_minutes),
    };
    let actions = import::plan_sweep(&tasks, &images_by_task, policy, now);
    info!(
        tasks = tasks.len(),
        to_do = actions.iter().filter(|a| a.mutates()).count(),
        "sweep planned"
    );
    let images_by_task = &images_by_task;
    let steps: Vec<Option<StepReport>> = stream::iter(actions)
        .map(|action| async move {
            if action.mutates() && !deadline.may_start() {
                return None;
            }
            Some(execute(deps, action, images_by_task, now).await)
        })
        .buffer_unordered(deps.config.concurrency)
        .collect()
        .await;
    let mut deferred = steps.iter().filter(|s| s.is_none()).count();
    let mut steps: Vec<StepReport> = steps.into_iter().flatten().collect();
    if loose_ends {
        let (more, later) = self::loose_ends(deps, &tasks, now, deadline).await;
        steps.extend(more);
        deferred += later;
    }
    steps.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    Ok(SweepReport {
        tasks_seen: tasks.len(),
        steps,
        deferred,
    })
}

/// The fast path's loose ends, after the import tasks: uploads whose snapshot AWS cancelled
/// with no event left to retry them ([`abandoned::resume`]), images whose `image.registered`
/// was never recorded as sent ([`announce::repair_recent`]), and writes stopped by a deadline
/// with no delivery left to continue them ([`continuation::continue_pending`]). Returns their
/// steps and how many were left for the next run (the deadline).
async fn loose_ends(
    deps: &Deps,
    tasks: &[shared::model::ImportTask],
    now: DateTime<Utc>,
    deadline: Deadline,
) -> (Vec<StepReport>, usize) {
    let mut steps = Vec::new();
    let mut deferred = 0;
    let mut gather =
        |action: StepAction, part: Result<(Vec<StepReport>, usize), AwsError>| match part {
            Ok((done, later)) => {
                steps.extend(done);
                deferred += later;
            }
            Err(e) => steps.push(StepReport {
                task_id: "-".into(),
                action,
                result: e.to_string(),
                failed: true,
            }),
        };
    gather(
        StepAction::Resume,
        abandoned::resume(deps, tasks, now, deadline).await,
    );
    gather(
        StepAction::Announce,
        announce::repair_recent(deps, now, deadline)
            .await
            .map(|repaired| (repaired, 0)),
    );
    gather(
        StepAction::Continue,
        continuation::continue_pending(deps, now, deadline).await,
    );
    gather(
        StepAction::Retry,
        crate::deferred::retry(deps, now, deadline).await,
    );
    (steps, deferred)
}

pub(crate) fn action_name(a: &SweepAction) -> StepAction {
    match a {
        SweepAction::Register { .. } => StepAction::Register,
        SweepAction::Announce { .. } => StepAction::Announce,
        SweepAction::ReportFailure { .. } => StepAction::ReportFailure,
        SweepAction::WarnStale { .. } => StepAction::WarnStale,
        SweepAction::Skip { .. } => StepAction::Skip,
    }
}

pub(crate) async fn execute(
    deps: &Deps,
    action: SweepAction,
    images: &BTreeMap<String, Image>,
    now: DateTime<Utc>,
) -> StepReport {
    let task_id = action.task_id().to_owned();
    let name = action_name(&action);
    let result = match action {
        SweepAction::Skip { reason, .. } => Ok(reason),
        SweepAction::Register {
            task_id,
            registration,
            last_attempt,
        } => match register(deps, &task_id, &registration, last_attempt, now).await {
            // Given up now only when no RegisterImage can have taken effect: none in this
            // attempt, and none of an earlier one that may still show up. Otherwise a later
            // sweep announces the image, or, once none can appear, gives the upload up
            // (`import::plan_sweep`, `import::REGISTER_SETTLE`).
            Err(f)
                if !f.may_have_registered
                    && import::give_up_registering(registration.started_at, now)
                    && last_attempt.is_none_or(|t| now - t >= import::REGISTER_SETTLE) =>
            {
                give_up(deps, &task_id, &registration, &f.error, now).await
            }
            Err(f) => {
                // A missing permission, and nothing registered: NotFound here is EC2's reads
                // lagging a new snapshot, and after a RegisterImage that may have taken effect
                // the image may exist (and may have been announced).
                if !f.may_have_registered && f.error.kind == ErrorKind::AccessDenied {
                    report_refused(deps, &task_id, &registration, &f.error, now).await;
                }
                Err(f.error)
            }
            Ok(result) => Ok(result),
        },
        SweepAction::Announce { task_id, image_id } => match images.get(&task_id) {
            Some(image) => announce(deps, &task_id, image, now).await,
            None => Ok(format!("{image_id} no longer listed")),
        },
        SweepAction::ReportFailure {
            task_id,
            message,
            object,
        } => report_failure(deps, &task_id, &message, object.as_ref(), now)
            .await
            .map(|()| message),
        SweepAction::WarnStale {
            task_id,
            age_minutes,
        } => warn_stale(deps, &task_id, age_minutes, now).await,
    };
    match result {
        Ok(result) => StepReport {
            task_id,
            action: name,
            result,
            failed: false,
        },
        Err(e) => {
            warn!(import_task_id = %task_id, action = %name, error = %e, "sweep step failed");
            StepReport {
                task_id,
                action: name,
                result: e.to_string(),
                failed: true,
            }
        }
    }
}

/// A completed import that still cannot be registered [`import::GIVE_UP_REGISTERING_AFTER`]
/// after it started: reported (`image.failed`, the object tagged `failed`, the outcome recorded
/// so later sweeps leave it), naming the snapshot, before DescribeImportSnapshotTasks stops
/// listing the task and no sweep could see it again.
async fn give_up(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
    error: &AwsError,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let message = import::give_up_message(reg.started_at, &reg.snapshot_id, &error.to_string());
    report_failure(deps, task_id, &message, object_of(reg).as_ref(), now).await?;
    Ok(message)
}

/// A registration step refused for a missing permission, before any RegisterImage could take
/// effect (no retry clears it by itself): every sweep still retries it until the give-up, but it is
/// reported now, once per task and failing call (claimed in the state bucket, as the ingest's
/// refusals are), so the operator can fix it within the six days instead of learning of it at
/// their end. Without a state bucket nothing would keep every sweep from sending it again, so
/// then only the give-up reports. A report that cannot be sent is logged: the step's own
/// failure already fails the scheduled sweep.
async fn report_refused(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
    error: &AwsError,
    now: DateTime<Utc>,
) {
    let claims = &deps.config.claims;
    if claims.bucket.is_none() {
        return;
    }
    let until = (reg.started_at + import::GIVE_UP_REGISTERING_AFTER)
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let what = format!("{} {} {:?}", error.operation, error.resource, error.code);
    let msg = Message {
        source_uri: object_of(reg).map(|o| o.uri()),
        import_task_id: Some(task_id.to_owned()),
        error: Some(format!(
            "registering snapshot {} of the completed import was refused: {error}; every sweep retries it until {until}, when the upload is given up",
            reg.snapshot_id
        )),
        dedup_detail: Some(shared::claim::digest(&what)),
        ..failed_message(deps, now)
    };
    let c = &deps.clients;
    if let Err(e) = claims
        .report_once(&c.s3, &c.sns, &deps.config.common.topic_arn, &msg, now)
        .await
    {
        warn!(import_task_id = task_id, error = %e, "could not report the refused registration on SNS");
    }
}

pub(crate) fn object_of(reg: &Registration) -> Option<ObjectRef> {
    crate::abandoned::object_of(&reg.tags)
}

/// Sends `image.registered` (claimed and recorded in the state bucket, [`announce::send_once`])
/// and records the outcome on the task, after the message: a crash in between leaves the
/// message recorded as sent, and the next sweep records the outcome without sending it again.
/// Two sweeps that overlap past [`import::ANNOUNCE_GRACE_SECONDS`] send it once: the claim's
/// loser records nothing, and a later sweep records the outcome once the message is recorded.
pub(crate) async fn announce(
    deps: &Deps,
    task_id: &str,
    image: &Image,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let c = &deps.clients;
    let msg = Message {
        import_task_id: Some(task_id.to_owned()),
        ..registered_message(image, UploadMethod::ImportSnapshot, &c.region, now)
    };
    let said = match announce::send_once(deps, &msg, now).await? {
        announce::Sent::Now => "announced",
        announce::Sent::Before => "already announced; outcome recorded",
        announce::Sent::ByAnother => {
            return Ok(format!(
                "{} is being announced by another invocation",
                image.id
            ));
        }
    };
    let outcome = Tags::from([(
        lineage::OUTCOME.to_owned(),
        format!("registered:{}", image.id),
    )]);
    ec2::create_tags(&c.ec2, &[task_id], &outcome).await?;
    Ok(format!("{} {said}", image.id))
}

pub(crate) async fn report_failure(
    deps: &Deps,
    task_id: &str,
    message: &str,
    object: Option<&ObjectRef>,
    now: DateTime<Utc>,
) -> Result<(), AwsError> {
    let c = &deps.clients;
    warn!(import_task_id = task_id, error = message, "import failed");
    if let Some(object) = object {
        tag_object(c, object, "failed", message).await?;
    }
    let msg = Message {
        source_uri: object.map(ObjectRef::uri),
        import_task_id: Some(task_id.to_owned()),
        error: Some(message.to_owned()),
        ..failed_message(deps, now)
    };
    // Once per task among overlapping sweeps (the task's outcome tag that guards it shows
    // late): the one holding the claim sends and records; the others leave both to it.
    if announce::send_once(deps, &msg, now).await? == announce::Sent::ByAnother {
        return Ok(());
    }
    ec2::create_tags(
        &c.ec2,
        &[task_id],
        &Tags::from([(lineage::OUTCOME.to_owned(), "failed".to_owned())]),
    )
    .await
}

pub(crate) async fn warn_stale(
    deps: &Deps,
    task_id: &str,
    age_minutes: i64,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let c = &deps.clients;
    let text = format!("import still running after {age_minutes} minutes");
    let msg = Message {
        import_task_id: Some(task_id.to_owned()),
        error: Some(text.clone()),
        ..Message::new(EventType::ImportStalled, now, &c.region)
    };
    // Once per task among overlapping sweeps, as `report_failure`.
    if announce::send_once(deps, &msg, now).await? == announce::Sent::ByAnother {
        return Ok(format!("{text}; warned by another invocation"));
    }
    let tag = Tags::from([(
        lineage::STALE_WARNED.to_owned(),
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
    )]);
    ec2::create_tags(&c.ec2, &[task_id], &tag).await?;
    Ok(text)
}
