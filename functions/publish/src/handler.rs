//! The run: find the images to work on, publish or revoke each, report every failure once.

use crate::config::{Config, Deps};
use crate::event::{Command, Trigger, aws_failed, refused};
use crate::image::publish_one;
use crate::output::Output;
use crate::revoke::revoke;
use chrono::{DateTime, SecondsFormat, Utc};
use shared::aws::clients::Clients;
use shared::aws::ec2::{self};
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::model::{Image, Select};
use shared::plan::lineage::{MANAGED, READY_AT};
use shared::plan::publish::{self as plan, IN_PROGRESS, Overrides, PUBLISH_SOURCE, PUBLISH_STATE};
use std::borrow::Cow;
use tracing::info;

shared::impl_function! {
    deps: Deps,
    config: Config,
    command: Command,
    output: Output,
    new: Deps::new,
    handle: handle,
}

/// Runs a command. A request about an image that is missing, not ours, not available or a copy,
/// or whose policy is invalid, is refused with nothing changed; AWS failures are returned as
/// `AwsCallsFailed` (the same event is safe to retry); a region that fails is reported in the
/// output and in `image.publish-partial`, and retried by the schedule.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    InvocationError::check_partition(cmd.regions(), &deps.clients.region)?;
    match cmd {
        Command::Ignore(reason) => {
            info!(%reason, "ignored");
            Ok(Output::Ignored { reason })
        }
        Command::Publish {
            trigger,
            image_id,
            region,
            overrides,
        } => {
            let c = clients_for(deps, region.as_deref());
            let source = source_image(&c, &image_id).await?;
            let result = publish_one(deps, &c, source, trigger, &overrides, now, deadline).await?;
            Ok(Output::Publish { trigger, result })
        }
        Command::Advance => advance(deps, now, deadline).await,
        Command::Revoke {
            image_id,
            region,
            principals,
        } => {
            let c = clients_for(deps, region.as_deref());
            let source = source_image(&c, &image_id).await?;
            revoke(deps, &c, &source, &principals, now).await
        }
    }
}

/// The schedule: advance every source image marked `in-progress` in each source region, and
/// start those announced ready that publish never started.
/// Failures are counted per image and reported once at the end.
async fn advance(
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    let regions = if deps.config.source_regions.is_empty() {
        vec![deps.clients.region.clone()]
    } else {
        deps.config.source_regions.clone()
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut total = 0;
    for r in &regions {
        let c = clients_for(deps, Some(r));
        let sources = match sources_to_advance(&c, now).await {
            Ok(s) => s,
            Err(e) => {
                total += 1;
                errors.push(e.to_string());
                continue;
            }
        };
        for s in sources
            .into_iter()
            .filter(|s| !s.tags.contains_key(PUBLISH_SOURCE))
        {
            total += 1;
            if !deadline.may_start() {
                errors.push(format!(
                    "{} in {r}: not started, the invocation's deadline is near; the next run continues",
                    s.id
                ));
                continue;
            }
            let id = s.id.clone();
            match publish_one(
                deps,
                &c,
                s,
                Trigger::Schedule,
                &Overrides::default(),
                now,
                deadline,
            )
            .await
            {
                Ok(rep) => results.push(rep),
                Err(e) => errors.push(format!("{id} in {r}: {e}")),
            }
        }
    }
    if let Some(e) = InvocationError::from_failures(total, errors) {
        return Err(e);
    }
    Ok(Output::Advance { regions, results })
}

/// The images the schedule advances in one region: those marked `in-progress`, and those
/// announced ready that publish never started (their `image.ready` failed into the DLQ).
async fn sources_to_advance(c: &Clients, now: DateTime<Utc>) -> Result<Vec<Image>, AwsError> {
    let mut sources =
        ec2::describe_own_images(&c.ec2, &[Select::tag(PUBLISH_STATE, [IN_PROGRESS])]).await?;
    let ready = ec2::describe_own_images(
        &c.ec2,
        &[Select::tag_key(READY_AT), Select::tag(MANAGED, ["true"])],
    )
    .await?;
    sources.extend(plan::never_started(ready, now));
    Ok(sources)
}

/// The clients of `region` (the function's own when `None`): built once per process for the
/// configured regions, built on demand only for a region a manual request names.
pub(crate) fn clients_for<'a>(deps: &'a Deps, region: Option<&str>) -> Cow<'a, Clients> {
    match region {
        Some(r) => deps.regional.get(r),
        None => Cow::Borrowed(&deps.clients),
    }
}

/// The source image: ours, available, and not itself a copy made by publish.
pub(crate) async fn source_image(c: &Clients, image_id: &str) -> Result<Image, InvocationError> {
    let Some(image) = ec2::describe_own_image(&c.ec2, image_id)
        .await
        .map_err(aws_failed)?
    else {
        let other = ec2::describe_image(&c.ec2, image_id)
            .await
            .map_err(aws_failed)?;
        return Err(match other {
            Some(i) => refused(
                "ImageNotOwned",
                format!(
                    "{image_id} in {} belongs to account {}, not this one; only the owner can publish it",
                    c.region,
                    i.owner_id.as_deref().unwrap_or("unknown")
                ),
            ),
            None => refused(
                "ImageNotFound",
                format!("{image_id} is not an image of this account in {}", c.region),
            ),
        });
    };
    if image.state != "available" {
        return Err(refused(
            "ImageNotAvailable",
            format!(
                "{image_id} in {} is {}; it can be published once it is available",
                c.region, image.state
            ),
        ));
    }
    if let Some(src) = image.tags.get(PUBLISH_SOURCE) {
        return Err(refused(
            "ImageIsCopy",
            format!(
                "{image_id} in {} is a copy publish made of {src}; publish {src} instead",
                c.region
            ),
        ));
    }
    Ok(image)
}

pub(crate) fn stamp_time(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}
