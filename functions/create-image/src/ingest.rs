//! Ingest one upload: validate it (object, extension, magic bytes, settings), reject it with every
//! problem listed, or make its snapshot: the EBS direct fast path ([`crate::fast`]) or, for
//! what that path does not take, ImportSnapshot.

use crate::announce;
use crate::config::Deps;
use crate::event::IngestItem;
use crate::fast;
use crate::output::IngestOutcome;
use chrono::{DateTime, Utc};
use shared::aws::clients::Clients;
use shared::aws::{ec2, s3};
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::model::{DiskFormat, ObjectInfo, ObjectRef, Select};
use shared::notify::{self, EventType, Message};
use shared::plan::import;
use shared::plan::spec::{self, ImageSpec, Problem};
use shared::plan::upload::UploadMethod;
use shared::plan::{disk, lineage, naming, retention};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Ingests one upload. A stop on a transient error is also recorded in the state bucket, for
/// the scheduled sweep to take up again when the cause outlasts the event's retries
/// ([`crate::deferred`]).
pub(crate) async fn ingest(
    deps: &Deps,
    item: IngestItem,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> IngestOutcome {
    let (outcome, stop) = ingest_classified(deps, &item, now, deadline).await;
    match (stop, &outcome) {
        // Concluded.
        (None, _) => crate::deferred::forget(deps, &item).await,
        // A stop near the deadline is not recorded: its checkpoint is (crate::continuation).
        (Some(ErrorKind::Stopped), _) => {}
        (Some(_), IngestOutcome::Error { error, .. }) => {
            crate::deferred::note(deps, &item, error, now).await;
        }
        (Some(_), _) => {}
    }
    outcome
}

/// [`ingest`] without the record, and the kind of the transient error it stopped on, if it did.
pub(crate) async fn ingest_classified(
    deps: &Deps,
    item: &IngestItem,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> (IngestOutcome, Option<ErrorKind>) {
    let uri = item.object.uri();
    match try_ingest(deps, item, now, deadline).await {
        Ok(outcome) => (outcome, None),
        Err(e) if e.kind.is_transient() => {
            // Throttling or a service error past the SDK's retries: the invocation fails and
            // Lambda runs the event again (AsyncMaxRetries, at most twice: about a minute later,
            // then two minutes after that), then keeps it in the dead-letter queue. EventBridge's own 24-hour
            // RetryPolicy covers only its delivery to Lambda, not the function's errors. No
            // image.failed: the upload has not failed, and its retry announces what it makes.
            // The scheduled sweep takes it up too when the cause outlasts those retries, and
            // reports it after a day (crate::deferred).
            warn!(object = %uri, error = %e, "ingest stopped by a transient error; the event's retry or the scheduled sweep takes it up again");
            (
                IngestOutcome::Error {
                    object: uri,
                    error: e.to_string(),
                },
                Some(e.kind),
            )
        }
        Err(e) => {
            warn!(object = %uri, error = %e, "ingest failed");
            // Once per object and failing call (operation, resource, code; AWS's message can
            // carry a per-request part), claimed in the state bucket: Lambda delivers a failed
            // event again twice, and the sweep takes a stopped fast-path upload up again, each
            // meeting the same missing permission.
            let what = format!("{} {} {:?}", e.operation, e.resource, e.code);
            let msg = Message {
                source_uri: Some(uri.clone()),
                error: Some(e.to_string()),
                dedup_detail: Some(shared::claim::digest(&what)),
                ..failed_message(deps, now)
            };
            let c = &deps.clients;
            if let Err(sns_err) = deps
                .config
                .claims
                .report_once(&c.s3, &c.sns, &deps.config.common.topic_arn, &msg, now)
                .await
            {
                warn!(object = %uri, error = %sns_err, "could not report the failure on SNS");
            }
            (
                IngestOutcome::Error {
                    object: uri,
                    error: e.to_string(),
                },
                None,
            )
        }
    }
}

pub(crate) fn failed_message(deps: &Deps, now: DateTime<Utc>) -> Message {
    Message::new(EventType::ImageFailed, now, &deps.clients.region)
}

pub(crate) async fn try_ingest(
    deps: &Deps,
    item: &IngestItem,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<IngestOutcome, AwsError> {
    let c = &deps.clients;
    // Always look at the latest version: ImportSnapshot imports the key's current content.
    let latest = ObjectRef {
        version_id: None,
        ..item.object.clone()
    };
    let info = match s3::head_object(&c.s3, &latest).await {
        Ok(info) => info,
        Err(e) if e.is_not_found() => {
            let problem = format!(
                "{} does not exist (deleted before the import could start, or the bucket is missing)",
                latest.uri()
            );
            return reject(deps, &item.object, vec![problem], now, false).await;
        }
        Err(e) => return Err(e),
    };
    if let Some(current) = import::superseded(
        item.object.version_id.as_deref(),
        info.version_id.as_deref(),
    ) {
        info!(object = %item.object, current_version = %current, "superseded by a newer version");
        return Ok(IngestOutcome::Superseded {
            object: item.object.uri(),
            current_version: current.to_owned(),
        });
    }
    let object = ObjectRef {
        version_id: info.version_id.clone(),
        ..latest
    };
    let (format, spec) = match validate(deps, item, &object, &info).await? {
        Ok(valid) => valid,
        Err(problems) => return reject(deps, &object, problems, now, true).await,
    };
    let token = import::upload_token(&object, info.etag.as_deref());
    let existing = ec2::describe_own_images(
        &c.ec2,
        &[Select::tag(lineage::SOURCE_TOKEN, [token.as_str()])],
    )
    .await?;
    if let Some(image) = existing.first() {
        info!(object = %object, image_id = %image.id, "already imported");
        let announced = announce::repair(deps, image, now).await?;
        return Ok(IngestOutcome::AlreadyImported {
            object: object.uri(),
            image_id: image.id.clone(),
            announced,
        });
    }
    if let Some(problem) = family_taken(deps, &object, &spec).await? {
        return reject(deps, &object, vec![problem], now, true).await;
    }
    let up = fast::Upload {
        object: &object,
        info: &info,
        format,
        spec: &spec,
        token: &token,
        overrides: &item.overrides,
    };
    let fallback_reason = match fast::try_fast(deps, up, now, deadline).await? {
        Ok(outcome) => return Ok(outcome),
        Err(reason) => reason,
    };
    let etag = info.etag.as_deref();
    let start = ImportStart {
        object: &object,
        etag,
        format,
        token: &token,
        fallback_reason,
    };
    start_import(deps, start, spec, now).await
}

/// Why the upload may not join its family: another folder owns it. Two well-formed folders
/// such as `a-b/` and `a/b/` give the same family, and cleanup counts and removes a family's
/// images only for the folder that owns it. A family with images is owned by the folder of its
/// oldest image, as cleanup decides. A family with none yet is owned by the first folder that
/// claims it: the claim is decided once in the state bucket
/// ([`Claims::decide_once`](shared::claim::Claims::decide_once),
/// `claims/family/<region>/<family>`, a conditional PutObject of which one concurrent writer
/// wins), so the first uploads of two such folders cannot both start an image, whether they
/// arrive together or the second while the first one's import is still running — the image
/// list alone cannot arbitrate that (nothing is listed until the first image is registered,
/// and on AWS a while after). The claim lapses with the state bucket's lifecycle (30 days);
/// by then a family whose first upload produced an image is decided by its images. Without a
/// state bucket there is no claim, and only the images decide. None when the family is new or
/// this folder's.
async fn family_taken(
    deps: &Deps,
    object: &ObjectRef,
    spec: &ImageSpec,
) -> Result<Option<String>, AwsError> {
    let c = &deps.clients;
    // Disabled images included, as cleanup lists them: a disabled oldest image still owns its
    // family there (and may be enabled again), so both functions name the same owner.
    let images = ec2::describe_every_own_image(
        &c.ec2,
        &[
            Select::tag(lineage::FAMILY, [spec.family.as_str()]),
            Select::tag(lineage::MANAGED, ["true"]),
        ],
    )
    .await?;
    let ours = format!("s3://{}/{}", object.bucket, object.key);
    let Some(folder) = naming::upload_folder(&ours) else {
        return Ok(None);
    };
    let (owner, how) = match retention::family_owner(&images) {
        Some((owner, image_id)) => (owner.to_owned(), format!("its oldest image {image_id}")),
        None => {
            let key = format!("family/{}/{}", c.region, spec.family);
            // Boxed: the S3 calls' future is large; unboxed it would be part of this future's
            // size, and so of every ingest's stack frame, whichever path the upload takes.
            let owner = Box::pin(deps.config.claims.decide_once(&c.s3, &key, folder)).await?;
            let claim = deps.config.claims.bucket.as_deref().map_or_else(
                || format!("claims/{key}"),
                |bucket| format!("s3://{bucket}/claims/{key}"),
            );
            (
                owner,
                format!(
                    "it claimed the family with its first upload, which has no image yet; if \
                     none will come, deleting {claim} releases the family, and the state \
                     bucket's lifecycle expires the claim"
                ),
            )
        }
    };
    Ok((owner != folder).then(|| {
        shared::text::escape_controls(&format!(
            "family: {:?} belongs to {owner} ({how}); this upload's folder {folder} gives the \
             same family, and cleanup neither counts nor removes images uploaded into another \
             folder's family: upload from a folder that gives another family",
            spec.family
        ))
        .into_owned()
    }))
}

/// What ImportSnapshot is started with.
struct ImportStart<'a> {
    object: &'a ObjectRef,
    etag: Option<&'a str>,
    format: DiskFormat,
    token: &'a str,
    fallback_reason: String,
}

/// Starts ImportSnapshot (the fallback), the task tagged with the spec and the source.
async fn start_import(
    deps: &Deps,
    start: ImportStart<'_>,
    spec: ImageSpec,
    now: DateTime<Utc>,
) -> Result<IngestOutcome, AwsError> {
    let c = &deps.clients;
    let ImportStart {
        object,
        etag,
        format,
        token,
        fallback_reason,
    } = start;
    info!(object = %object, reason = %fallback_reason, "fast path not taken: ImportSnapshot");
    let tags = import::import_task_tags(&spec, object, etag, format, now);
    let description = lineage::fit_tag_value(&format!("ami-pipeline import of {}", object.uri()));
    let task_id = ec2::import_snapshot(
        &c.ec2,
        ec2::ImportRequest {
            bucket: &object.bucket,
            key: &object.key,
            format: format.as_api(),
            client_token: token,
            role_name: &deps.config.import_role_name,
            description: &description,
            tags: &tags,
            kms_key_id: deps.config.kms_key_arn.as_deref(),
        },
    )
    .await?;
    info!(object = %object, import_task_id = %task_id, format = %format, family = %spec.family, "import started");
    Ok(IngestOutcome::ImportStarted {
        object: object.uri(),
        import_task_id: task_id,
        upload_method: UploadMethod::ImportSnapshot,
        fallback_reason,
        spec: Box::new(spec),
    })
}

/// Validates an upload before anything changes: its extension, its content (magic bytes at
/// both ends) and its settings (defaults < object metadata < manual overrides). The outer
/// error is an AWS failure; the inner one lists every problem.
async fn validate(
    deps: &Deps,
    item: &IngestItem,
    object: &ObjectRef,
    info: &ObjectInfo,
) -> Result<Result<(DiskFormat, ImageSpec), Vec<String>>, AwsError> {
    let mut problems = Vec::new();
    let format = match disk::format_from_key(&object.key) {
        Ok(f) => Some(f),
        Err(e) => {
            problems.push(format!("file: {e}"));
            None
        }
    };
    if let Some(format) = format
        && let Err(e) = check_disk(&deps.clients, object, info, format).await?
    {
        problems.push(format!("content: {e}"));
    }
    // The uploader's layer first: what it may not choose is refused, not silently dropped
    // (unless a manual invoke, the operator, sets that setting itself).
    let uploaders: BTreeMap<String, String> = info
        .metadata
        .iter()
        .filter(|(k, _)| !item.overrides.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bounded = spec::upload_problems(&uploaders, &object.key, &deps.config.upload);
    problems.extend(bounded.iter().map(Problem::to_string));
    let spec = match spec::resolve(
        &[&deps.config.defaults, &info.metadata, &item.overrides],
        &object.key,
    ) {
        Ok(spec) if bounded.is_empty() => Some(spec),
        Ok(_) => None,
        Err(ps) => {
            problems.extend(ps.iter().map(Problem::to_string));
            None
        }
    };
    Ok(match (format, spec) {
        (Some(format), Some(spec)) if problems.is_empty() => Ok((format, spec)),
        _ => Err(problems),
    })
}

/// Reads both ends of the object and checks its magic numbers. The outer error is an AWS
/// failure; the inner one a content problem.
pub(crate) async fn check_disk(
    c: &Clients,
    object: &ObjectRef,
    info: &ObjectInfo,
    format: shared::model::DiskFormat,
) -> Result<Result<(), String>, AwsError> {
    if info.size == 0 {
        return Ok(disk::check_content(format, 0, &[], &[]));
    }
    let etag = info.etag.as_deref();
    let head = s3::get_range(&c.s3, object, &format!("0-{}", disk::PROBE_BYTES - 1), etag).await?;
    let tail = s3::get_range(&c.s3, object, &format!("-{}", disk::PROBE_BYTES), etag).await?;
    Ok(disk::check_content(format, info.size, &head, &tail))
}

/// Rejects an upload: tags the object (when it exists), sends `image.failed`, reports.
pub(crate) async fn reject(
    deps: &Deps,
    object: &ObjectRef,
    problems: Vec<String>,
    now: DateTime<Utc>,
    object_exists: bool,
) -> Result<IngestOutcome, AwsError> {
    warn!(object = %object, problems = ?problems, "upload rejected");
    if object_exists {
        tag_object(&deps.clients, object, "rejected", &problems.join("; ")).await?;
    }
    let msg = Message {
        source_uri: Some(object.uri()),
        error: Some(format!("upload rejected: {} problem(s)", problems.len())),
        problems: problems.clone(),
        ..failed_message(deps, now)
    };
    notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await?;
    Ok(IngestOutcome::Rejected {
        object: object.uri(),
        problems,
    })
}

pub(crate) async fn tag_object(
    c: &Clients,
    object: &ObjectRef,
    status: &str,
    reason: &str,
) -> Result<(), AwsError> {
    let existing = match s3::get_tags(&c.s3, object).await {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    match lineage::object_status_tags(&existing, status, reason) {
        Some(tags) => s3::put_tags(&c.s3, object, &tags).await,
        None => {
            warn!(object = %object, "object already has 10 tags; status not recorded on it");
            Ok(())
        }
    }
}
