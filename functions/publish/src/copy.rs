//! Advance one region's copy: find or start it, stamp its lineage when available, retry a failed one.

use crate::config::Deps;
use crate::handler::clients_for;
use crate::output::{RegionOutcome, RegionReport};
use shared::aws::clients::Clients;
use shared::aws::ec2::{self, CopyRequest};
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::model::{Image, Select, Tags};
use shared::plan::lineage::MANAGED;
use shared::plan::publish::{self as plan, COPY, CopyStep, PUBLISH_SOURCE, PUBLISH_STATE};
use shared::plan::stamp::{self, Facts, ImageRef, Parent};
use std::collections::BTreeMap;
use tracing::info;

/// A region's report, and its copy once available and stamped.
pub(crate) type CopyProgress = (RegionReport, Option<Image>);

/// Finds or starts the copy in `region`; returns the copy once it is available and stamped.
pub(crate) async fn advance_copy(
    deps: &Deps,
    source: &Image,
    home: &str,
    region: &str,
    deadline: Deadline,
) -> Result<CopyProgress, AwsError> {
    let rc = clients_for(deps, Some(region));
    let found = ec2::describe_own_images(
        &rc.ec2,
        &[Select::tag(PUBLISH_SOURCE, [source.id.as_str()])],
    )
    .await?;
    let copy = found
        .iter()
        .find(|i| i.state == "available")
        .or_else(|| found.first());
    let in_flight = if copy.is_none() {
        ec2::describe_own_images(
            &rc.ec2,
            &[Select::tag_key(PUBLISH_SOURCE), Select::state(["pending"])],
        )
        .await?
        .len()
    } else {
        0
    };
    let waiting = |detail: String| RegionReport {
        outcome: RegionOutcome::Waiting,
        detail: Some(detail),
        ..RegionReport::default()
    };
    match plan::copy_step(copy, in_flight, deps.config.copy_concurrency) {
        CopyStep::Start => {
            if !deadline.may_start() {
                return Ok((
                    waiting("not started: the deadline is near; the next run starts it".into()),
                    None,
                ));
            }
            let keys = &deps.config.copy_kms_keys;
            Ok((start_copy(&rc, source, home, region, keys).await, None))
        }
        CopyStep::Wait { reason } => {
            let mut rep = waiting(reason);
            if let Some(c) = copy {
                rep.outcome = RegionOutcome::Copying;
                rep.image_id = Some(c.id.clone());
            }
            Ok((rep, None))
        }
        CopyStep::Failed { reason } => {
            let id = copy.map(|c| c.id.clone());
            if let Some(id) = &id {
                // The next attempt first, then the deregistration: a new ClientToken, so the
                // next run's CopyImage starts a new copy instead of answering with this one.
                let attempts = plan::next_copy_attempt(&source.tags, region);
                let home_ec2 = &clients_for(deps, Some(home)).ec2;
                ec2::create_tags(home_ec2, &[source.id.as_str()], &attempts).await?;
                ec2::deregister_image(&rc.ec2, id).await?;
            }
            Ok((
                RegionReport::failed(
                    id,
                    format!("{reason}; deregistered, copied again by the next run"),
                ),
                None,
            ))
        }
        CopyStep::Ready => {
            let Some(copy) = copy else {
                return Ok((RegionReport::failed(None, "copy vanished".into()), None));
            };
            if let Some(conflict) = stamp_copy(&rc, copy, source, home).await? {
                return Ok((RegionReport::failed(Some(copy.id.clone()), conflict), None));
            }
            Ok((
                RegionReport {
                    image_id: Some(copy.id.clone()),
                    outcome: RegionOutcome::Published,
                    ..RegionReport::default()
                },
                Some(copy.clone()),
            ))
        }
    }
}

/// Starts the copy into `region` (CopyImage with the copy's tags and a deterministic
/// ClientToken), encrypted with the region's key in `keys` when [`plan::copy_key`] says so.
/// Throttling leaves it waiting for the next run; another refusal fails the region.
async fn start_copy(
    rc: &Clients,
    source: &Image,
    home: &str,
    region: &str,
    keys: &BTreeMap<String, String>,
) -> RegionReport {
    let key = plan::copy_key(source, keys, region);
    let token = plan::client_token(
        home,
        &source.id,
        region,
        plan::copy_attempt(&source.tags, region),
        key,
    );
    // The copy and its snapshots are the pipeline's, marked so at creation: IAM allows
    // ami-pipeline:managed only as part of a create action (template.yaml,
    // ManagedOnlyAtCreation), and the snapshots do not inherit the source's tags.
    let tags = Tags::from([
        (PUBLISH_SOURCE.to_owned(), source.id.clone()),
        (PUBLISH_STATE.to_owned(), COPY.to_owned()),
        (MANAGED.to_owned(), "true".to_owned()),
    ]);
    match ec2::copy_image(
        &rc.ec2,
        CopyRequest {
            source_image_id: &source.id,
            source_region: home,
            name: &source.name,
            client_token: &token,
            tags: &tags,
            kms_key_id: key,
        },
    )
    .await
    {
        Ok(id) => {
            info!(image = %source.id, %region, copy = %id, "copy started");
            RegionReport {
                image_id: Some(id),
                outcome: RegionOutcome::Copying,
                ..RegionReport::default()
            }
        }
        Err(e) if e.kind == ErrorKind::Throttled => RegionReport {
            outcome: RegionOutcome::Waiting,
            detail: Some(format!("copy not started yet: {e}; the next run retries")),
            ..RegionReport::default()
        },
        Err(e) => RegionReport::failed(None, e.to_string()),
    }
}

/// Stamps the copy's lineage in its region (snapshots first, the image last); `Some` names the
/// conflicting tags when the copy holds other values (then nothing is written).
pub(crate) async fn stamp_copy(
    rc: &Clients,
    copy: &Image,
    source: &Image,
    home: &str,
) -> Result<Option<String>, AwsError> {
    let snapshots = ec2::describe_own_snapshots(&rc.ec2, &copy.snapshot_ids).await?;
    let parent = Parent {
        at: ImageRef {
            image_id: source.id.clone(),
            region: home.to_owned(),
        },
        tags: source.tags.clone(),
        snapshot_ids: source.snapshot_ids.clone(),
        // publish copies only source images that are not copies themselves.
        copied_from: None,
    };
    let stamp_plan = stamp::plan_stamp(&Facts {
        image: copy,
        region: &rc.region,
        snapshots: &snapshots,
        instance_image: None,
        parent: Some(&parent),
        assertion: None,
    });
    if !stamp_plan.conflicts.is_empty() {
        return Ok(Some(format!(
            "lineage conflict on copy {}: {}; nothing written (tag-lineage's manual invoke with \"force\" resolves it)",
            copy.id,
            stamp_plan
                .conflicts
                .iter()
                .map(|k| format!(
                    "{} {}={:?}, inferred {:?}",
                    k.resource, k.key, k.existing, k.inferred
                ))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    for (resource, tags) in stamp_plan.ordered_writes(&copy.id) {
        ec2::create_tags(&rc.ec2, &[resource.as_str()], tags).await?;
    }
    let inherited = plan::inherited_markers(copy, source);
    if !inherited.is_empty() {
        let keys: Vec<&str> = inherited.iter().map(String::as_str).collect();
        ec2::delete_tag_keys(&rc.ec2, &[copy.id.as_str()], &keys).await?;
    }
    if copy.tags.get(PUBLISH_STATE).map(String::as_str) != Some(COPY) {
        let t = Tags::from([(PUBLISH_STATE.to_owned(), COPY.to_owned())]);
        ec2::create_tags(&rc.ec2, &[copy.id.as_str()], &t).await?;
    }
    Ok(None)
}
