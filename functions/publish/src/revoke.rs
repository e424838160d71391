//! Revoke a publication: launch permissions first, then the snapshots', in every region, read back.

use crate::config::Deps;
use crate::event::{aws_failed, refused};
use crate::handler::{clients_for, source_image};
use crate::image::{REGION_CONCURRENCY, publication_message};
use crate::output::{Output, RegionOutcome, RegionReport};
use crate::share::{GrantError, launch_grants, read_back, volume_grants};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use shared::aws::clients::Clients;
use shared::aws::ec2::{self, Change};
use shared::claim::Claim;
use shared::invocation::InvocationError;
use shared::model::{Image, Select, Tags};
use shared::notify::{self, EventType};
use shared::plan::publish::{self as plan, Grants, PUBLISH_SOURCE, Policy};
use std::collections::BTreeMap;
use tracing::info;

/// Revokes `principals` from `source`, one revoke of an image at a time: overlapping revokes
/// each write the image's record from what they read, so the second would drop the first's
/// (and a later publish would share again what was revoked). A revoke holds a claim on the
/// image in the state bucket (shared::claim; none without `STATE_BUCKET`) and reads the image
/// again once it holds it; a revoke that finds the claim held is refused, nothing changed.
pub(crate) async fn revoke(
    deps: &Deps,
    c: &Clients,
    source: &Image,
    principals: &Grants,
    now: DateTime<Utc>,
) -> Result<Output, InvocationError> {
    let claims = &deps.config.claims;
    let key = format!("revoke/{}/{}", c.region, source.id);
    let etag = match claims
        .claim(&deps.clients.s3, &key, now)
        .await
        .map_err(aws_failed)?
    {
        Claim::Won { etag } => etag,
        Claim::Held { age } => {
            return Err(refused(
                "RevokeInProgress",
                format!(
                    "{} in {}: another revoke of this image is in progress (claimed {} s ago); nothing changed, retry once it has ended",
                    source.id,
                    c.region,
                    age.num_seconds()
                ),
            ));
        }
    };
    let result = match source_image(c, &source.id).await {
        Ok(fresh) => revoke_claimed(deps, c, &fresh, principals, now).await,
        Err(e) => Err(e),
    };
    claims
        .release(&deps.clients.s3, &key, etag.as_deref())
        .await;
    result
}

async fn revoke_claimed(
    deps: &Deps,
    c: &Clients,
    source: &Image,
    principals: &Grants,
    now: DateTime<Utc>,
) -> Result<Output, InvocationError> {
    let home = c.region.clone();
    // Where the image lives: its own region and every copy publish made in the policy's
    // regions. A revoke must work even when the image's policy no longer resolves (say, a
    // region was denied since): then the defaults name the regions to look in.
    let policy = plan::resolve(&deps.config.defaults, &source.tags, &home)
        .or_else(|_| plan::resolve(&deps.config.defaults, &Tags::new(), &home))
        .unwrap_or_default();
    // The record first: a revoke that could not be recorded would be undone by the next
    // publish, so one that does not fit is refused before anything is removed.
    let record = principals
        .revoked_tags(&policy, &source.tags)
        .map_err(|e| {
            refused(
                "RevokeNotRecordable",
                format!("{} in {home}: {e}", source.id),
            )
        })?;
    let images = published_images(deps, source, &policy, &home).await?;
    let results: Vec<(String, RegionReport)> = stream::iter(images)
        .map(|(r, image)| async move {
            let rc = clients_for(deps, Some(&r));
            let mut rep = RegionReport {
                image_id: Some(image.id.clone()),
                outcome: RegionOutcome::Revoked,
                ..RegionReport::default()
            };
            if let Err(e) = revoke_checked(&rc, &image, principals, &mut rep).await {
                rep.outcome = RegionOutcome::Failed;
                rep.detail = Some(e.to_string());
            }
            (r, rep)
        })
        .buffer_unordered(REGION_CONCURRENCY)
        .collect()
        .await;
    let regions: BTreeMap<String, RegionReport> = results.into_iter().collect();
    // Recorded on the image, so neither the schedule nor a later publish shares again.
    if !record.is_empty() {
        ec2::create_tags(&c.ec2, &[source.id.as_str()], &record)
            .await
            .map_err(aws_failed)?;
    }
    let failures: Vec<String> = regions
        .iter()
        .filter(|(_, r)| r.outcome == RegionOutcome::Failed)
        .map(|(k, r)| format!("{k}: {}", r.detail.as_deref().unwrap_or("failed")))
        .collect();
    let mut msg = publication_message(
        EventType::ImageRevoked,
        source,
        &home,
        &policy,
        &regions,
        now,
    );
    if let Some(Value::Object(p)) = msg.publication.as_mut() {
        p.insert("revoked".into(), json!(principals));
    }
    notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg)
        .await
        .map_err(aws_failed)?;
    if !failures.is_empty() {
        return Err(InvocationError::Partial {
            failed: failures.len(),
            total: regions.len(),
            errors: failures,
        });
    }
    info!(image = %source.id, "revoked");
    Ok(Output::Revoke {
        image_id: source.id.clone(),
        region: home,
        regions,
        announced: Some(EventType::ImageRevoked.as_str()),
    })
}

/// The source (in `home`) and every copy publish made of it in the policy's regions.
async fn published_images(
    deps: &Deps,
    source: &Image,
    policy: &Policy,
    home: &str,
) -> Result<Vec<(String, Image)>, InvocationError> {
    let mut images = vec![(home.to_owned(), source.clone())];
    for r in &policy.regions {
        let rc = clients_for(deps, Some(r));
        let found = ec2::describe_own_images(
            &rc.ec2,
            &[Select::tag(PUBLISH_SOURCE, [source.id.as_str()])],
        )
        .await
        .map_err(aws_failed)?;
        images.extend(found.into_iter().map(|i| (r.clone(), i)));
    }
    Ok(images)
}

/// Image first (no new launches), then its snapshots; each read back.
pub(crate) async fn revoke_checked(
    rc: &Clients,
    image: &Image,
    principals: &Grants,
    rep: &mut RegionReport,
) -> Result<(), GrantError> {
    let current = launch_grants(rc, &image.id).await?;
    let remove = principals.common(&current);
    if !remove.is_empty() {
        ec2::modify_launch_permission(&rc.ec2, &image.id, Change::Remove, &remove).await?;
    }
    let after = read_back(
        || launch_grants(rc, &image.id),
        |g| principals.common(g).is_empty(),
    )
    .await?;
    let left = principals.common(&after);
    if !left.is_empty() {
        return Err(GrantError::NotApplied(format!(
            "{}: launch permission still holds {} after removing it",
            image.id,
            json!(left)
        )));
    }
    rep.revoked = remove;
    let volume = Grants {
        accounts: principals.accounts.clone(),
        public: principals.public,
        ..Grants::default()
    };
    if volume.is_empty() {
        return Ok(());
    }
    for snap in &image.snapshot_ids {
        let current = volume_grants(rc, snap).await?;
        let remove = volume.common(&current);
        if !remove.is_empty() {
            ec2::modify_create_volume_permission(&rc.ec2, snap, Change::Remove, &remove).await?;
        }
        let after = read_back(|| volume_grants(rc, snap), |g| volume.common(g).is_empty()).await?;
        if !volume.common(&after).is_empty() {
            return Err(GrantError::NotApplied(format!(
                "snapshot {snap}: create-volume permission still holds {} after removing it",
                json!(volume.common(&after))
            )));
        }
    }
    Ok(())
}
