//! `image.registered`, once: the message of a registered image, and the fast path's claim on it.
//!
//! The import path records its announcement on the import task (`ami-pipeline:outcome`, the
//! sweep's plan). The fast path has no task: it claims the announcement in the state bucket
//! ([`shared::claim`]) before sending, and records it there once sent. A later delivery of the
//! same upload that finds the image already made ([`repair`]) sends it when no record exists
//! and no other invocation holds the claim: an invocation that stopped (or whose SNS publish
//! failed) between RegisterImage and its announcement no longer loses `image.registered`.

use crate::config::Deps;
use chrono::{DateTime, Utc};
use shared::claim::Claim;
use shared::error::AwsError;
use shared::model::Image;
use shared::notify::{self, EventType, Message};
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

/// Sends the fast path's `image.registered` for `image` unless it was sent already or another
/// invocation holds its claim; records it once sent. True when this invocation sent it.
pub(crate) async fn announce_once(
    deps: &Deps,
    image: &Image,
    now: DateTime<Utc>,
) -> Result<bool, AwsError> {
    let c = &deps.clients;
    let claims = &deps.config.claims;
    let msg = registered_message(image, UploadMethod::EbsDirect, &c.region, now);
    let key = msg.dedup_key();
    if claims.was_sent(&c.s3, &key).await? {
        return Ok(false);
    }
    let etag = match claims.claim(&c.s3, &key, now).await? {
        Claim::Won { etag } => etag,
        Claim::Held { age } => {
            info!(image_id = %image.id, claimed_seconds_ago = age.num_seconds(), "image.registered is being sent by another invocation");
            return Ok(false);
        }
    };
    if let Err(e) = notify::send(&c.sns, &deps.config.common.topic_arn, &msg).await {
        // Not sent: the retry of this event must be able to claim it again.
        claims.release(&c.s3, &key, etag.as_deref()).await;
        return Err(e);
    }
    claims.record_sent(&c.s3, &key, now).await?;
    Ok(true)
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
