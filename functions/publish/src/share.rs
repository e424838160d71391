//! Share one region's image and snapshots (snapshots first), then read every grant back (for a
//! few seconds, as EC2's reads may not list a grant just made).

use crate::config::Deps;
use crate::handler::clients_for;
use crate::output::{RegionOutcome, RegionReport};
use chrono::{DateTime, Utc};
use serde_json::json;
use shared::aws::clients::Clients;
use shared::aws::ec2::{self, Change};
use shared::error::AwsError;
use shared::model::Image;
use shared::plan::publish::{Grants, PUBLISH_SOURCE, Policy};
use std::future::Future;
use std::time::Duration;

/// Deprecation, snapshot permissions, then launch permissions for one region's image, each read
/// back. Never fails the invocation: a failure is that region's outcome.
pub(crate) async fn share_region(
    deps: &Deps,
    region: &str,
    image: &Image,
    policy: &Policy,
    public_blocked: Option<&str>,
    deprecate_at: Option<&str>,
) -> RegionReport {
    let rc = clients_for(deps, Some(region));
    let mut rep = RegionReport {
        image_id: Some(image.id.clone()),
        outcome: RegionOutcome::Published,
        ..RegionReport::default()
    };
    let mut policy = policy.clone();
    if public_blocked.is_some() {
        policy.public = false;
    }
    match share_checked(&rc, image, &policy, deprecate_at, &mut rep).await {
        Ok(()) if let Some(why) = public_blocked => RegionReport {
            outcome: RegionOutcome::Failed,
            detail: Some(format!(
                "public sharing was asked for, but in {region} {why} (shared with the other principals; once it is lifted there, the schedule finishes it)"
            )),
            ..rep
        },
        Ok(()) => rep,
        Err(e) => RegionReport {
            outcome: RegionOutcome::Failed,
            detail: Some(e.to_string()),
            ..rep
        },
    }
}

/// EC2's refusal to share an encrypted image or snapshot with other accounts, organizations or
/// OUs because of its key, said in full: what the AWS managed key for EBS (`aws/ebs`)
/// encrypts is never shared with another account. That key encrypts what has no customer
/// managed key: an image built without create-image's `KMS_KEY_ARN` in an account that
/// encrypts by default, and a copy made without publish's `COPY_KMS_KEYS` key for its region
/// (CopyImage uses the region's default EBS key, `aws/ebs` unless the account changed it).
/// Recognised by `code` (ModifyImageAttribute answers InvalidParameter, ModifySnapshotAttribute
/// OperationNotPermitted) and EC2's own words for it; any other error is passed on as it is.
fn aws_managed_key_refusal(e: AwsError, image: &Image, to: &Grants, code: &str) -> GrantError {
    let about_the_key = ["EBS default key", "AWS Managed CMK"]
        .iter()
        .any(|words| e.message.contains(words));
    if !image.encrypted || !e.has_code(code) || !about_the_key {
        return GrantError::Aws(e);
    }
    let way_out = if image.tags.contains_key(PUBLISH_SOURCE) {
        "set publish's COPY_KMS_KEYS to a customer managed key of this region that the accounts \
         may use, then deregister this copy: the next run copies the image again with the key"
    } else {
        "build the image with a customer managed key the accounts may use (create-image's \
         KMS_KEY_ARN)"
    };
    GrantError::NotApplied(format!(
        "{}: not shared with {}: its snapshots are encrypted with the AWS managed key for EBS \
         (aws/ebs), which EC2 never shares with another account; {way_out}: {e}",
        image.id,
        json!(to)
    ))
}

/// Why a region's grants could not be put in place (or removed) and verified.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrantError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The deprecation time the plan gave does not parse.
    #[error("{0}")]
    DeprecationTime(String),
    /// The permissions read back differ from what was just granted or removed.
    #[error("{0}")]
    NotApplied(String),
}

/// How long a grant or removal just made is read back before it counts as not applied: EC2's
/// reads are eventually consistent ("the result of an API command you run that creates or
/// modifies resources might not be immediately available to all subsequent commands you run",
/// EC2 developer guide, "Eventual consistency"), DescribeImageAttribute and
/// DescribeSnapshotAttribute included.
pub(crate) const READ_BACK_WAIT: Duration = Duration::from_secs(8);

/// Reads grants with `read` until `settled` holds for them, with growing pauses for up to
/// [`READ_BACK_WAIT`]; returns the last read.
pub(crate) async fn read_back<F, Fut>(
    read: F,
    settled: impl Fn(&Grants) -> bool,
) -> Result<Grants, GrantError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Grants, GrantError>>,
{
    let mut pause = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    loop {
        let grants = read().await?;
        if settled(&grants) || waited + pause > READ_BACK_WAIT {
            return Ok(grants);
        }
        tokio::time::sleep(pause).await;
        waited += pause;
        pause *= 2;
    }
}

/// Who may launch `image_id`, read back.
pub(crate) async fn launch_grants(rc: &Clients, image_id: &str) -> Result<Grants, GrantError> {
    ec2::launch_permissions(&rc.ec2, image_id)
        .await
        .map(|e| Grants::from_entries(&e))
        .map_err(GrantError::from)
}

/// Who may create volumes from `snapshot_id`, read back.
pub(crate) async fn volume_grants(rc: &Clients, snapshot_id: &str) -> Result<Grants, GrantError> {
    ec2::create_volume_permissions(&rc.ec2, snapshot_id)
        .await
        .map(|e| Grants::from_entries(&e))
        .map_err(GrantError::from)
}

/// The create-volume permissions `policy` gives, on each of `image`'s snapshots, read back.
async fn share_snapshots(rc: &Clients, image: &Image, policy: &Policy) -> Result<(), GrantError> {
    let volume = Grants::create_volume(policy);
    if volume.is_empty() {
        return Ok(());
    }
    for snap in &image.snapshot_ids {
        let current = volume_grants(rc, snap).await?;
        let missing = volume.missing_from(&current);
        if !missing.is_empty() {
            ec2::modify_create_volume_permission(&rc.ec2, snap, Change::Add, &missing)
                .await
                .map_err(|e| {
                    aws_managed_key_refusal(e, image, &missing, "OperationNotPermitted")
                })?;
        }
        let after = read_back(
            || volume_grants(rc, snap),
            |g| volume.missing_from(g).is_empty(),
        )
        .await?;
        let still = volume.missing_from(&after);
        if !still.is_empty() {
            return Err(GrantError::NotApplied(format!(
                "snapshot {snap}: create-volume permission still lacks {} after granting it",
                json!(still)
            )));
        }
    }
    Ok(())
}

/// Puts `policy`'s grants on `image` in its region (the deprecation time first, then the
/// snapshots' create-volume permissions, then the launch permissions, `all` in a call of its
/// own) and reads them back; records in `rep` what it granted.
pub(crate) async fn share_checked(
    rc: &Clients,
    image: &Image,
    policy: &Policy,
    deprecate_at: Option<&str>,
    rep: &mut RegionReport,
) -> Result<(), GrantError> {
    if let Some(at) = deprecate_at {
        match &image.deprecation_time {
            Some(t) => rep.deprecation_time = Some(t.clone()),
            None => {
                let when = DateTime::parse_from_rfc3339(at)
                    .map_err(|e| {
                        GrantError::DeprecationTime(format!("deprecation time {at}: {e}"))
                    })?
                    .with_timezone(&Utc);
                ec2::enable_image_deprecation(&rc.ec2, &image.id, when).await?;
                rep.deprecation_time = Some(at.to_owned());
            }
        }
    }
    share_snapshots(rc, image, policy).await?;
    let launch = Grants::launch(policy);
    let current = launch_grants(rc, &image.id).await?;
    let missing = launch.missing_from(&current);
    // The accounts, organizations and OUs first, `all` in a call of its own: EC2 holds public
    // images to a per-Region quota (Service Quotas "Public AMIs", 5 unless raised), and its
    // refusal of one call (ResourceLimitExceeded) must not take the other shares with it.
    let principals = Grants {
        public: false,
        ..missing.clone()
    };
    if !principals.is_empty() {
        ec2::modify_launch_permission(&rc.ec2, &image.id, Change::Add, &principals)
            .await
            .map_err(|e| aws_managed_key_refusal(e, image, &principals, "InvalidParameter"))?;
        rep.granted = principals;
    }
    if missing.public {
        let public = Grants {
            public: true,
            ..Grants::default()
        };
        ec2::modify_launch_permission(&rc.ec2, &image.id, Change::Add, &public)
            .await
            .map_err(|e| {
                if e.has_code("ResourceLimitExceeded") {
                    GrantError::NotApplied(format!(
                        "{}: not made public, the other shares are in place: {e} (Service Quotas code L-0E3CBAB9; cleanup removes public images only with ALLOW_PUBLIC); the schedule retries",
                        image.id
                    ))
                } else {
                    GrantError::Aws(e)
                }
            })?;
        rep.granted.public = true;
    }
    let after = read_back(
        || launch_grants(rc, &image.id),
        |g| launch.missing_from(g).is_empty(),
    )
    .await?;
    let still = launch.missing_from(&after);
    if !still.is_empty() {
        return Err(GrantError::NotApplied(format!(
            "{}: launch permission still lacks {} after granting it",
            image.id,
            json!(still)
        )));
    }
    Ok(())
}
