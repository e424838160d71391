//! `image.registered`, once: the message of a registered image, and the claim on it.
//!
//! Both paths claim the announcement in the state bucket ([`shared::claim`]) before sending,
//! and record it there once sent ([`send_once`]); the import path also records it on its import
//! task (`ami-pipeline:outcome`, which ends the sweep's plan for the task). A later delivery of
//! the same upload that finds the image already made ([`repair`]) sends it when no record exists
//! and no other invocation holds the claim: an invocation that stopped (or whose SNS publish
//! failed) between RegisterImage and its announcement no longer loses `image.registered`.

use crate::config::Deps;
use crate::output::{StepAction, StepReport};
use chrono::{DateTime, Duration, Utc};
use shared::aws::ec2;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::model::{Image, Select};
use shared::notify::{EventType, Message};
use shared::plan::lineage;
use shared::plan::upload::UploadMethod;
use tracing::info;

/// `image.registered` for `image` (its tags are the lineage), made by `method`.
pub(crate) fn registered_message(
    image: &Image,
    method: UploadMethod,
    region: &str,
    now: DateTime<Utc>,
) -> Message {
    Message {
        image_id: Some(image.id.clone()),
        image_name: Some(image.name.clone()),
        snapshot_ids: image.snapshot_ids.clone(),
        family: image.tags.get(lineage::FAMILY).cloned(),
        source_uri: image.tags.get(lineage::SOURCE_URI).cloned(),
        upload_method: Some(method.as_str().to_owned()),
        lineage: image.tags.clone(),
        ..Message::new(EventType::ImageRegistered, now, region)
    }
}

pub(crate) use shared::claim::Sent;

/// Sends `msg` (an `image.registered`, or the sweep's `image.failed` / `image.import-stalled`
/// of a task) once, under its `dedup_key` ([`shared::claim::Claims::send_once`]).
pub(crate) async fn send_once(
    deps: &Deps,
    msg: &Message,
    now: DateTime<Utc>,
) -> Result<Sent, AwsError> {
    let c = &deps.clients;
    deps.config
        .claims
        .send_once(&c.s3, &c.sns, &deps.config.common.topic_arn, msg, now)
        .await
}

/// Sends the fast path's `image.registered` for `image` unless it was sent already or another
/// invocation holds its claim; records it once sent. True when this invocation sent it.
pub(crate) async fn announce_once(
    deps: &Deps,
    image: &Image,
    now: DateTime<Utc>,
) -> Result<bool, AwsError> {
    let msg = registered_message(image, UploadMethod::EbsDirect, &deps.clients.region, now);
    Ok(send_once(deps, &msg, now).await? == Sent::Now)
}

/// A delivery found `image` already made from its upload. When the fast path made it and its
/// `image.registered` was never recorded as sent, sends it now (under the claim). Without a
/// state bucket nothing is known about what was sent, and nothing is repaired. The import
/// path's announcements belong to the sweep.
pub(crate) async fn repair(
    deps: &Deps,
    image: &Image,
    now: DateTime<Utc>,
) -> Result<bool, AwsError> {
    let fast = image.tags.get(lineage::UPLOAD_METHOD).map(String::as_str)
        == Some(UploadMethod::EbsDirect.as_str());
    if !fast || !deps.config.claims.enabled() {
        return Ok(false);
    }
    let sent = announce_once(deps, image, now).await?;
    if sent {
        info!(image_id = %image.id, "image.registered had not been sent for this upload; sent now");
    }
    Ok(sent)
}

/// How far back the sweep looks for fast-path images whose `image.registered` was never
/// recorded as sent ([`repair_recent`]).
pub(crate) const REPAIR_WINDOW_HOURS: i64 = 24;

/// The sweep's part: a fast-path invocation that stopped between its claim and its send leaves
/// a claim and no record, and the deliveries that come back while the claim is fresh send
/// nothing (another invocation seems to be sending). Nothing would come back once the claim is
/// stale, so the sweep looks at this region's fast-path images registered in the last
/// [`REPAIR_WINDOW_HOURS`] and sends, under the claim, each one's lost `image.registered`
/// ([`repair`]). One step per image it sent for, or could not look at.
pub(crate) async fn repair_recent(
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Vec<StepReport>, AwsError> {
    let c = &deps.clients;
    // Every record of this region's image.registered, in one listing (not a HeadObject per
    // image): only images without one are looked at further.
    let prefix = format!("{}/{}/", EventType::ImageRegistered.as_str(), c.region);
    let Some(sent) = deps.config.claims.sent_under(&c.s3, &prefix).await? else {
        return Ok(Vec::new());
    };
    let images = ec2::describe_own_images(
        &c.ec2,
        &[
            Select::tag(lineage::MANAGED, ["true"]),
            Select::tag(lineage::UPLOAD_METHOD, [UploadMethod::EbsDirect.as_str()]),
        ],
    )
    .await?;
    let since = now - Duration::hours(REPAIR_WINDOW_HOURS);
    let mut steps = Vec::new();
    for image in images {
        let created = image
            .creation_date
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        // A copy carries its source's tags (CopyImageTags); only the upload's own image.
        if image.source_image_id.is_some() || created.is_none_or(|t| t < since) {
            continue;
        }
        let key = registered_message(&image, UploadMethod::EbsDirect, &c.region, now).dedup_key();
        if sent.contains(&key) {
            continue;
        }
        if !deadline.may_start() {
            break;
        }
        let result = match repair(deps, &image, now).await {
            Ok(false) => continue,
            Ok(true) => Ok("image.registered had not been sent; sent now".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        steps.push(StepReport {
            task_id: image.id.clone(),
            action: StepAction::Announce,
            failed: result.is_err(),
            result: result.unwrap_or_else(|e| e),
        });
    }
    Ok(steps)
}
