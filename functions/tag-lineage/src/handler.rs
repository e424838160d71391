//! The run: dispatch the command, look images up (waiting briefly for visibility), report once.

use crate::config::{Config, Deps};
use crate::event::{Command, Target, Trigger};
use crate::output::{Output, StampOutcome, StampReport};
use crate::query::{ancestors, children};
use crate::stamp::stamp_one;
use chrono::{DateTime, Utc};
use shared::aws::clients::Clients;
use shared::aws::ec2;
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::invocation::InvocationError;
use shared::model::{Image, Select};
use shared::notify::{self, EventType, Message};
use shared::plan::lineage::{FAMILY, MANAGED};
use shared::plan::stamp;
use std::borrow::Cow;
use std::time::Duration;
use tracing::{info, warn};

shared::impl_function! {
    deps: Deps,
    config: Config,
    command: Command,
    output: Output,
    new: Deps::new,
    handle: handle,
}

/// Stamps each target; failures are collected and reported once.
async fn stamp_all(
    deps: &Deps,
    trigger: Trigger,
    targets: Vec<Target>,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    let total = targets.len();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for t in targets {
        match stamp_one(deps, &t, trigger, now, deadline).await {
            Ok(r) => results.push(r),
            Err(e) => {
                // The schedule only, for a permission or a refusal: what an event meets may be
                // EC2's lag or another invocation's write (a family tag refused while the
                // other's does not show yet), which its retry or the schedule clears. By the
                // schedule (images 15 minutes old and more) those have settled.
                if trigger == Trigger::Schedule
                    && matches!(e.kind, ErrorKind::AccessDenied | ErrorKind::InvalidInput)
                {
                    report_stamp_failure(deps, &t, &e, now).await;
                }
                errors.push(e.to_string());
            }
        }
    }
    if let Some(e) = InvocationError::from_failures(total, errors) {
        return Err(e);
    }
    if trigger == Trigger::Manual
        && let Some(r) = results.first()
    {
        refuse_manual(r)?;
    }
    Ok(Output::Stamp { trigger, results })
}

/// Sends `image.failed` for an image the schedule could not stamp for a reason that will not
/// clear by itself (a permission, a refusal): without a stamp there is no
/// `image.ready`, so the image is never published, and after 7 days the schedule stops looking
/// at it. Once per image and failing call (operation, resource, code: AWS's message may carry a
/// per-request part), claimed and recorded in the state bucket; a failure to send is logged (the
/// invocation fails for the stamp anyway).
async fn report_stamp_failure(deps: &Deps, target: &Target, error: &AwsError, now: DateTime<Utc>) {
    let region = target.region.as_deref().unwrap_or(&deps.clients.region);
    let what = format!("{} {} {:?}", error.operation, error.resource, error.code);
    let msg = Message {
        image_id: Some(target.image_id.clone()),
        error: Some(format!("its lineage could not be stamped: {error}")),
        dedup_detail: Some(shared::claim::digest(&what)),
        ..Message::new(EventType::ImageFailed, now, region)
    };
    let c = &deps.clients;
    match deps
        .config
        .claims
        .report_once(&c.s3, &c.sns, &deps.config.common.topic_arn, &msg, now)
        .await
    {
        Ok(sent) => info!(image = %target.image_id, ?sent, "stamp failed; image.failed"),
        Err(e) => {
            warn!(image = %target.image_id, error = %e, "stamp failed; image.failed not sent")
        }
    }
}

/// Runs a command. AWS failures are collected and returned as
/// [`InvocationError::Partial`] (the same event is safe to retry); a manual stamp that meets a
/// conflict returns `LineageConflict`, one for an image that is not ours `ImageNotFound`.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    InvocationError::check_partition(cmd.regions(), &deps.clients.region)?;
    match cmd {
        Command::Stamp { trigger, targets } => {
            stamp_all(deps, trigger, targets, now, deadline).await
        }
        Command::Sweep => {
            let images =
                ec2::describe_own_images(&deps.clients.ec2, &[Select::tag(MANAGED, ["true"])])
                    .await
                    .map_err(partial)?;
            let targets = stamp::awaiting_ready(images, now)
                .into_iter()
                .map(|i| Target {
                    image_id: i.id,
                    region: None,
                    assertion: None,
                })
                .collect();
            stamp_all(deps, Trigger::Schedule, targets, now, deadline).await
        }
        Command::Failed {
            image_id,
            region,
            error,
        } => {
            let c = clients_for(deps, region.as_deref());
            let image = ec2::describe_image(&c.ec2, &image_id)
                .await
                .map_err(partial)?;
            let msg = Message {
                image_id: Some(image_id.clone()),
                image_name: image.as_ref().map(|i| i.name.clone()),
                family: image.as_ref().and_then(|i| i.tags.get(FAMILY).cloned()),
                error: Some(format!(
                    "{image_id} failed to become available: {}",
                    error.as_deref().unwrap_or("EC2 gave no reason")
                )),
                lineage: image.map(|i| i.tags).unwrap_or_default(),
                ..Message::new(EventType::ImageFailed, now, &c.region)
            };
            warn!(image = %image_id, error = ?msg.error, "image failed");
            let message_id = notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg)
                .await
                .map_err(partial)?;
            Ok(Output::Failed {
                image_id,
                message_id,
            })
        }
        Command::Ignore(reason) => {
            info!(%reason, "ignored");
            Ok(Output::Ignored { reason })
        }
        Command::Ancestors { image_id, region } => {
            ancestors(deps, &image_id, region.as_deref(), deadline)
                .await
                .map(Output::Ancestors)
                .map_err(partial)
        }
        Command::Children {
            image_id,
            region,
            regions,
        } => children(deps, &image_id, region.as_deref(), regions, deadline)
            .await
            .map(Output::Children)
            .map_err(partial),
    }
}

pub(crate) fn partial(e: AwsError) -> InvocationError {
    InvocationError::Partial {
        failed: 1,
        total: 1,
        errors: vec![e.to_string()],
    }
}

/// A manual stamp is a request: refusing it is an error the caller sees.
pub(crate) fn refuse_manual(r: &StampReport) -> Result<(), InvocationError> {
    match r.outcome {
        StampOutcome::Conflict => Err(InvocationError::Refused {
            error_type: "LineageConflict",
            message: format!(
                "{} in {}: nothing changed, lineage tags hold other values ({}); pass \"force\": true to overwrite",
                r.image_id,
                r.region,
                r.conflicts
                    .iter()
                    .map(|c| format!(
                        "{} {}={:?}, inferred {:?}",
                        c.resource, c.key, c.existing, c.inferred
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }),
        StampOutcome::NoRoom => Err(InvocationError::Refused {
            error_type: "TagLimitExceeded",
            message: crate::stamp::no_room_text(&r.image_id, &r.region, &r.no_room),
        }),
        StampOutcome::NotVisible => Err(InvocationError::Refused {
            error_type: "ImageNotFound",
            message: format!(
                "{} is not an image of this account in {}",
                r.image_id, r.region
            ),
        }),
        StampOutcome::NotAvailable => Err(InvocationError::Refused {
            error_type: "ImageNotAvailable",
            message: format!(
                "{} in {}: {}",
                r.image_id,
                r.region,
                r.detail.as_deref().unwrap_or("not available")
            ),
        }),
        StampOutcome::Stamped | StampOutcome::Unchanged => Ok(()),
    }
}

/// The clients of `region` (the function's own when `None`): built once per process for the
/// configured regions, built on demand only for a region a manual request names.
pub(crate) fn clients_for<'a>(deps: &'a Deps, region: Option<&str>) -> Cow<'a, Clients> {
    match region {
        Some(r) => deps.regional.get(r),
        None => Cow::Borrowed(&deps.clients),
    }
}

/// This account's image `image_id`, looked up again with growing pauses for up to the
/// configured wait (EC2's DescribeImages is eventually consistent right after creation), and
/// for as long while it reads `pending` when `settling`: an "available" event's image whose
/// read lags behind the event, or an `image.registered` one sent right after RegisterImage.
pub(crate) async fn visible_image(
    deps: &Deps,
    c: &Clients,
    image_id: &str,
    deadline: Deadline,
    settling: bool,
) -> Result<Option<Image>, AwsError> {
    let mut waited = Duration::ZERO;
    let mut pause = Duration::from_millis(500);
    loop {
        let found = ec2::describe_own_image(&c.ec2, image_id).await?;
        let settled = found
            .as_ref()
            .is_some_and(|i| !(settling && i.state == "pending"));
        if settled || waited + pause > deps.config.visibility_wait || !deadline.may_start() {
            return Ok(found);
        }
        tokio::time::sleep(pause).await;
        waited += pause;
        pause *= 2;
    }
}
