//! EC2 gateway: one function per API call; SDK types in, [`crate::model`] types out.
//!
//! Paginated listings use the SDK's paginators. Every error is an [`AwsError`] naming the
//! operation and the resource.

use crate::error::AwsError;
use crate::model::{Image, ImportStatus, ImportTask, Select, Snapshot, Tags};
use crate::plan::publish::Grants;
use crate::plan::spec::ImageSpec;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter,
    ImdsSupportValues, ResourceType, SnapshotDiskContainer, Tag, TagSpecification,
    TpmSupportValues, UserBucket, VolumeType,
};

/// A tag filter, `tag:<key>` = any of `values`.
fn tag_filter(key: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

/// A filter on an attribute (`state`, `source-image-id`, …) = any of `values`.
fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

/// A `tag-key` filter: resources carrying `key`, whatever its value.
fn tag_key_filter(key: &str) -> Filter {
    Filter::builder().name("tag-key").values(key).build()
}

/// The API's filters for a selection. `state_filter` is the operation's name for the state
/// filter: `state` for DescribeImages, `status` for DescribeSnapshots ("status - The status of
/// the snapshot (pending | completed | error)", botocore's ec2 model, DescribeSnapshotsRequest
/// Filters; AWS refuses an unknown filter name).
fn filters_named(select: &[Select], state_filter: &str) -> Vec<Filter> {
    select
        .iter()
        .map(|s| match s {
            Select::Tag(key, values) => tag_filter(key, values.iter().cloned()),
            Select::TagKey(key) => tag_key_filter(key),
            Select::State(values) => filter(state_filter, values.iter().cloned()),
            Select::Name(name) => filter("name", [name.clone()]),
        })
        .collect()
}

/// [`filters_named`] for the operations whose state filter is `state` (images).
fn filters(select: &[Select]) -> Vec<Filter> {
    filters_named(select, "state")
}

fn to_sdk_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn from_sdk_tags(tags: &[Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn tag_spec(resource: ResourceType, tags: &Tags) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(to_sdk_tags(tags)))
        .build()
}

/// What ImportSnapshot needs.
#[derive(Debug, Clone)]
pub struct ImportRequest<'a> {
    /// Source bucket.
    pub bucket: &'a str,
    /// Source key.
    pub key: &'a str,
    /// `RAW` / `VMDK` / `VHD`.
    pub format: &'a str,
    /// Idempotency token (64 characters at most).
    pub client_token: &'a str,
    /// The VM Import service role.
    pub role_name: &'a str,
    /// Description of the task and snapshot.
    pub description: &'a str,
    /// Tags on the import task (the full spec and source).
    pub tags: &'a Tags,
    /// Encrypt the snapshot with this KMS key (`Encrypted` true, `KmsKeyId`: "The identifier
    /// for the KMS key ... Specify a key ARN", EC2 API reference); None: unencrypted unless
    /// the account encrypts by default.
    pub kms_key_id: Option<&'a str>,
}

/// ImportSnapshot: starts importing an S3 object as a snapshot; returns the task id.
pub async fn import_snapshot(ec2: &Client, req: ImportRequest<'_>) -> Result<String, AwsError> {
    let resource = format!("s3://{}/{}", req.bucket, req.key);
    let out = ec2
        .import_snapshot()
        .client_token(req.client_token)
        .description(req.description)
        .role_name(req.role_name)
        .set_encrypted(req.kms_key_id.map(|_| true))
        .set_kms_key_id(req.kms_key_id.map(str::to_owned))
        .disk_container(
            SnapshotDiskContainer::builder()
                .format(req.format)
                .description(req.description)
                .user_bucket(
                    UserBucket::builder()
                        .s3_bucket(req.bucket)
                        .s3_key(req.key)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::ImportSnapshotTask, req.tags))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:ImportSnapshot", resource.clone(), e)
                .in_region(ec2.config().region())
        })?;
    out.import_task_id()
        .map(str::to_owned)
        .ok_or_else(|| AwsError {
            region: ec2.config().region().map(ToString::to_string),
            operation: "ec2:ImportSnapshot",
            resource,
            kind: crate::error::ErrorKind::Other,
            code: None,
            message: "the response carried no ImportTaskId".into(),
        })
}

/// DescribeImportSnapshotTasks, every page, filtered.
pub async fn describe_import_tasks(
    ec2: &Client,
    select: &[Select],
) -> Result<Vec<ImportTask>, AwsError> {
    let filters = filters(select);
    let mut pages = ec2
        .describe_import_snapshot_tasks()
        .set_filters(Some(filters))
        .max_results(200)
        .into_paginator()
        .items()
        .send();
    let mut tasks = Vec::new();
    while let Some(item) = pages.next().await {
        let t = item.map_err(|e| {
            AwsError::from_sdk("ec2:DescribeImportSnapshotTasks", "import tasks", e)
                .in_region(ec2.config().region())
        })?;
        let detail = t.snapshot_task_detail();
        let Some(id) = t.import_task_id() else {
            continue;
        };
        tasks.push(ImportTask {
            id: id.to_owned(),
            status: ImportStatus::parse(detail.and_then(|d| d.status()).unwrap_or_default()),
            status_message: detail
                .and_then(|d| d.status_message())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            progress: detail.and_then(|d| d.progress()).map(str::to_owned),
            snapshot_id: detail
                .and_then(|d| d.snapshot_id())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            bucket: detail
                .and_then(|d| d.user_bucket())
                .and_then(|b| b.s3_bucket())
                .map(str::to_owned),
            key: detail
                .and_then(|d| d.user_bucket())
                .and_then(|b| b.s3_key())
                .map(str::to_owned),
            tags: from_sdk_tags(t.tags()),
        });
    }
    Ok(tasks)
}

/// An image of a DescribeImages listing; `None` for one without an id, and for one already
/// deregistered: "Recently deregistered images appear in the returned results for a short
/// interval" (DescribeImages, botocore's ec2 model). For a listing's readers such an image is
/// gone: publish would take a failed copy it deregistered for a new failure (and deregister it
/// again), a name check would take it for the name's holder, cleanup for a user of its
/// snapshots. An image asked for by its id is still answered with its state
/// ([`describe_image`]): tag-lineage reads a just-deregistered parent's tags that way.
fn listed(i: &aws_sdk_ec2::types::Image) -> Option<Image> {
    if i.state() == Some(&aws_sdk_ec2::types::ImageState::Deregistered) {
        return None;
    }
    to_image(i)
}

fn to_image(i: &aws_sdk_ec2::types::Image) -> Option<Image> {
    Some(Image {
        id: i.image_id()?.to_owned(),
        name: i.name().unwrap_or_default().to_owned(),
        state: i.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        state_reason: i.state_reason().and_then(|r| {
            match (
                r.code().filter(|c| !c.is_empty()),
                r.message().filter(|m| !m.is_empty()),
            ) {
                (Some(code), Some(message)) => Some(format!("{code}: {message}")),
                (code, message) => code.or(message).map(str::to_owned),
            }
        }),
        creation_date: i.creation_date().map(str::to_owned),
        architecture: i.architecture().map(|a| a.as_str().to_owned()),
        boot_mode: i.boot_mode().map(|b| b.as_str().to_owned()),
        ena_support: i.ena_support(),
        root_device_name: i.root_device_name().map(str::to_owned),
        snapshot_ids: i
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
            .collect(),
        encrypted: i
            .block_device_mappings()
            .iter()
            .any(|m| m.ebs().and_then(|e| e.encrypted()) == Some(true)),
        tags: from_sdk_tags(i.tags()),
        source_instance_id: i.source_instance_id().map(str::to_owned),
        source_image_id: i.source_image_id().map(str::to_owned),
        source_image_region: i.source_image_region().map(str::to_owned),
        public: i.public().unwrap_or(false),
        deprecation_time: i.deprecation_time().map(str::to_owned),
        last_launched_time: i.last_launched_time().map(str::to_owned),
        deregistration_protection: i.deregistration_protection().map(str::to_owned),
        owner_id: i.owner_id().map(str::to_owned),
    })
}

/// DescribeImages for one image id, whoever owns it; `None` when EC2 does not know it (never
/// existed, deregistered, or not visible to this account).
pub async fn describe_image(ec2: &Client, image_id: &str) -> Result<Option<Image>, AwsError> {
    describe_one_image(ec2, image_id, false).await
}

/// This account's image `image_id`; `None` when it does not exist (yet), is deregistered or
/// belongs to someone else.
pub async fn describe_own_image(ec2: &Client, image_id: &str) -> Result<Option<Image>, AwsError> {
    describe_one_image(ec2, image_id, true).await
}

/// One image by id, deprecated and disabled ones included: "A disabled AMI does not appear in
/// DescribeImages API calls by default" (DisableImage), ids asked for included, so without
/// `IncludeDisabled` a disabled parent would read as gone and a disabled image as not there.
async fn describe_one_image(
    ec2: &Client,
    image_id: &str,
    own: bool,
) -> Result<Option<Image>, AwsError> {
    let mut call = ec2
        .describe_images()
        .image_ids(image_id)
        .include_deprecated(true)
        .include_disabled(true);
    if own {
        call = call.owners("self");
    }
    match call.send().await {
        Ok(out) => Ok(out.images().iter().find_map(to_image)),
        Err(e) => {
            let e = AwsError::from_sdk("ec2:DescribeImages", image_id, e)
                .in_region(ec2.config().region());
            if e.kind == crate::error::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// The image an instance was launched from; `None` when the instance is unknown.
pub async fn instance_image(ec2: &Client, instance_id: &str) -> Result<Option<String>, AwsError> {
    match ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.image_id().map(str::to_owned))),
        Err(e) => {
            let e = AwsError::from_sdk("ec2:DescribeInstances", instance_id, e)
                .in_region(ec2.config().region());
            if e.kind == crate::error::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

fn to_snapshot(s: &aws_sdk_ec2::types::Snapshot) -> Option<Snapshot> {
    Some(Snapshot {
        id: s.snapshot_id()?.to_owned(),
        volume_size_gib: s.volume_size(),
        state: s.state().map(|st| st.as_str().to_owned()),
        tags: from_sdk_tags(s.tags()),
        start_time: s
            .start_time()
            .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
    })
}

/// DescribeSnapshots of this account's snapshots among `snapshot_ids` (a `snapshot-id` filter,
/// so ids that no longer exist are simply absent instead of failing the call).
pub async fn describe_own_snapshots(
    ec2: &Client,
    snapshot_ids: &[String],
) -> Result<Vec<Snapshot>, AwsError> {
    if snapshot_ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name("snapshot-id")
                .set_values(Some(snapshot_ids.to_vec()))
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DescribeSnapshots", snapshot_ids.join(","), e)
                .in_region(ec2.config().region())
        })?;
    Ok(out.snapshots().iter().filter_map(to_snapshot).collect())
}

/// DescribeImages owned by this account, every page, filtered (disabled images not included:
/// EC2's default).
pub async fn describe_own_images(ec2: &Client, select: &[Select]) -> Result<Vec<Image>, AwsError> {
    own_images(ec2, select, false).await
}

/// Every image this account owns, disabled ones included (state `disabled`). DescribeImages
/// leaves them out unless asked ("Default: No disabled AMIs are included in the response",
/// botocore's `IncludeDisabled`), yet a disabled AMI still holds its snapshots ("You cannot
/// delete a snapshot of the root device of an EBS volume used by a registered AMI",
/// DeleteSnapshot) and can be enabled again: a listing that decides which snapshots are
/// orphans, or which folder owns a family, must see them (filtered by `select`).
pub async fn describe_every_own_image(
    ec2: &Client,
    select: &[Select],
) -> Result<Vec<Image>, AwsError> {
    own_images(ec2, select, true).await
}

async fn own_images(
    ec2: &Client,
    select: &[Select],
    include_disabled: bool,
) -> Result<Vec<Image>, AwsError> {
    let filters = filters(select);
    let mut pages = ec2
        .describe_images()
        .owners("self")
        .set_filters(Some(filters))
        .include_disabled(include_disabled)
        .max_results(1000)
        .into_paginator()
        .items()
        .send();
    let mut images = Vec::new();
    while let Some(item) = pages.next().await {
        let i = item.map_err(|e| {
            AwsError::from_sdk("ec2:DescribeImages", "own images", e)
                .in_region(ec2.config().region())
        })?;
        images.extend(listed(&i));
    }
    Ok(images)
}

/// The own image holding AMI name `name` in this region, if DescribeImages lists it (disabled
/// and deprecated images hold names too, so both are included).
pub async fn image_holding_name(ec2: &Client, name: &str) -> Result<Option<Image>, AwsError> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(filter("name", [name]))
        .include_disabled(true)
        .include_deprecated(true)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DescribeImages", name, e).in_region(ec2.config().region())
        })?;
    Ok(out.images().iter().filter_map(listed).next())
}

/// DescribeSnapshots for one snapshot id.
pub async fn describe_snapshot(ec2: &Client, snapshot_id: &str) -> Result<Snapshot, AwsError> {
    let out = ec2
        .describe_snapshots()
        .snapshot_ids(snapshot_id)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DescribeSnapshots", snapshot_id, e)
                .in_region(ec2.config().region())
        })?;
    let s = out.snapshots().first().ok_or_else(|| AwsError {
        region: ec2.config().region().map(ToString::to_string),
        operation: "ec2:DescribeSnapshots",
        resource: snapshot_id.to_owned(),
        kind: crate::error::ErrorKind::NotFound,
        code: None,
        message: "no such snapshot".into(),
    })?;
    Ok(to_snapshot(s).unwrap_or(Snapshot {
        id: snapshot_id.to_owned(),
        volume_size_gib: s.volume_size(),
        state: None,
        tags: Tags::new(),
        start_time: None,
    }))
}

/// What RegisterImage needs.
#[derive(Debug, Clone)]
pub struct RegisterRequest<'a> {
    /// Image name.
    pub name: &'a str,
    /// Root snapshot.
    pub snapshot_id: &'a str,
    /// Root volume size in GiB.
    pub volume_size_gib: i32,
    /// Settings.
    pub spec: &'a ImageSpec,
    /// Tags for the image (applied atomically at creation).
    pub tags: &'a Tags,
}

/// RegisterImage from a snapshot, tagging the image at creation; returns the image id.
///
/// RegisterImage's `TagSpecifications` accept the `image` resource type only: "To tag the AMI,
/// the value for ResourceType must be image. If you specify another value for ResourceType,
/// the request fails" (API reference / botocore model, RegisterImage → TagSpecifications). The
/// snapshot is tagged by the caller with its own CreateTags, before this call.
pub async fn register_image(ec2: &Client, req: RegisterRequest<'_>) -> Result<String, AwsError> {
    let spec = req.spec;
    let mut call = ec2
        .register_image()
        .name(req.name)
        .architecture(ArchitectureValues::from(spec.architecture.as_str()))
        .boot_mode(BootModeValues::from(spec.boot_mode.as_str()))
        .virtualization_type("hvm")
        .ena_support(spec.ena)
        .root_device_name(&spec.root_device)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(&spec.root_device)
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(req.snapshot_id)
                        .volume_size(req.volume_size_gib)
                        .volume_type(VolumeType::from(spec.volume_type.as_str()))
                        .set_iops(spec.iops.and_then(|n| i32::try_from(n).ok()))
                        .set_throughput(spec.throughput.and_then(|n| i32::try_from(n).ok()))
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Image, req.tags));
    if let Some(d) = &spec.description {
        call = call.description(d);
    }
    if spec.imds_v2 {
        call = call.imds_support(ImdsSupportValues::V20);
    }
    if spec.tpm {
        call = call.tpm_support(TpmSupportValues::V20);
    }
    let out = call.send().await.map_err(|e| {
        AwsError::from_sdk("ec2:RegisterImage", req.name, e).in_region(ec2.config().region())
    })?;
    out.image_id().map(str::to_owned).ok_or_else(|| AwsError {
        region: ec2.config().region().map(ToString::to_string),
        operation: "ec2:RegisterImage",
        resource: req.name.to_owned(),
        kind: crate::error::ErrorKind::Other,
        code: None,
        message: "the response carried no ImageId".into(),
    })
}

/// CreateTags on any EC2 resources (images, snapshots, import tasks).
pub async fn create_tags(ec2: &Client, resource_ids: &[&str], tags: &Tags) -> Result<(), AwsError> {
    ec2.create_tags()
        .set_resources(Some(resource_ids.iter().map(|s| s.to_string()).collect()))
        .set_tags(Some(to_sdk_tags(tags)))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:CreateTags", resource_ids.join(","), e)
                .in_region(ec2.config().region())
        })?;
    Ok(())
}

/// How old a launch template must be (at `now`) for a NotFound on its versions to mean it was
/// deleted: a younger one may only not have propagated yet (EC2's eventual consistency: "if
/// you run a command to modify or describe the resource that you just created, its ID might not
/// have propagated throughout the system"), and its references are then unknown.
pub const TEMPLATE_SETTLED_MINUTES: i64 = 10;

/// The images referenced by launch templates: every template's `$Default` and `$Latest`
/// versions, or every version when `all_versions`. Returns image id → `template-name
/// (version n)`.
///
/// `$Default`/`$Latest` are read in one paginated DescribeLaunchTemplateVersions for the whole
/// account ("To describe all launch templates in your account that are defined as the latest
/// version, the valid value is $Latest. To describe all launch templates in your account that
/// are defined as the default version, the valid value is $Default. You can specify $Latest and
/// $Default in the same request", botocore's `Versions`): one call per 200 versions, not one per
/// template (accounts with Auto Scaling, EKS node groups or Karpenter hold thousands), and no
/// template can be deleted between a listing and its read. Every version needs a read per
/// template (DescribeLaunchTemplates, every page): a template not found then, created at least
/// [`TEMPLATE_SETTLED_MINUTES`] before `now`, was deleted since the listing and references
/// nothing. Every read sets `IncludeManagedResources`: "the output includes resources that are
/// managed by Amazon Web Services services, even if managed resource visibility is set to
/// hidden" (botocore) — a template a service manages launches instances all the same.
pub async fn images_in_launch_templates(
    ec2: &Client,
    all_versions: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<std::collections::BTreeMap<String, String>, AwsError> {
    if !all_versions {
        let mut used = std::collections::BTreeMap::new();
        let mut pages = ec2
            .describe_launch_template_versions()
            .include_managed_resources(true)
            .versions("$Default")
            .versions("$Latest")
            .max_results(200)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                AwsError::from_sdk(
                    "ec2:DescribeLaunchTemplateVersions",
                    "$Default and $Latest of every launch template",
                    e,
                )
                .in_region(ec2.config().region())
            })?;
            note_template_images(&mut used, page.launch_template_versions(), "");
        }
        return Ok(used);
    }
    let mut templates = Vec::new();
    let mut pages = ec2
        .describe_launch_templates()
        .include_managed_resources(true)
        .max_results(200)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            AwsError::from_sdk("ec2:DescribeLaunchTemplates", "launch templates", e)
                .in_region(ec2.config().region())
        })?;
        for t in page.launch_templates() {
            if let Some(id) = t.launch_template_id() {
                let created = t
                    .create_time()
                    .and_then(|c| chrono::DateTime::from_timestamp(c.secs(), 0));
                templates.push((id.to_owned(), created));
            }
        }
    }
    let settled = |created: Option<chrono::DateTime<chrono::Utc>>| {
        created.is_some_and(|c| now - c >= chrono::Duration::minutes(TEMPLATE_SETTLED_MINUTES))
    };
    let mut used = std::collections::BTreeMap::new();
    for (t, created) in templates {
        let mut pages = ec2
            .describe_launch_template_versions()
            .include_managed_resources(true)
            .launch_template_id(&t)
            .max_results(200)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    let e = AwsError::from_sdk("ec2:DescribeLaunchTemplateVersions", &t, e)
                        .in_region(ec2.config().region());
                    // Deleted since the listing (InvalidLaunchTemplateId.NotFound; Auto Scaling,
                    // Karpenter and EKS node groups delete templates all the time): it
                    // references nothing any more, and must not fail the whole gathering. A
                    // young one's references are unknown: the error stands (the next run).
                    // Only that code: `InvalidLaunchTemplateId.VersionNotFound` (a version
                    // deleted between pages of `all_versions`) also ends in NotFound, and
                    // skipping the template's remaining pages for it would drop the references
                    // of versions that still exist.
                    if e.has_code("InvalidLaunchTemplateId.NotFound") && settled(created) {
                        break;
                    }
                    return Err(e);
                }
            };
            note_template_images(&mut used, page.launch_template_versions(), &t);
        }
    }
    Ok(used)
}

/// Notes the image each version launches (the first version naming an image is its reason),
/// as `template-name (version n)`; `template` names a version whose answer carries no name.
fn note_template_images(
    used: &mut std::collections::BTreeMap<String, String>,
    versions: &[aws_sdk_ec2::types::LaunchTemplateVersion],
    template: &str,
) {
    for v in versions {
        if let Some(image) = v.launch_template_data().and_then(|d| d.image_id()) {
            used.entry(image.to_owned()).or_insert_with(|| {
                format!(
                    "{} (version {})",
                    v.launch_template_name()
                        .or(v.launch_template_id())
                        .unwrap_or(template),
                    v.version_number().unwrap_or_default()
                )
            });
        }
    }
}

/// Who an image is shared with (DescribeImageAttribute `launchPermission`): account ids,
/// organization and OU ARNs, and `all` for public.
pub async fn launch_permissions(ec2: &Client, image_id: &str) -> Result<Vec<String>, AwsError> {
    let out = ec2
        .describe_image_attribute()
        .image_id(image_id)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DescribeImageAttribute", image_id, e)
                .in_region(ec2.config().region())
        })?;
    Ok(out
        .launch_permissions()
        .iter()
        .filter_map(|p| {
            p.user_id()
                .map(str::to_owned)
                .or_else(|| p.organization_arn().map(str::to_owned))
                .or_else(|| p.organizational_unit_arn().map(str::to_owned))
                .or_else(|| p.group().map(|g| g.as_str().to_owned()))
        })
        .collect())
}

/// This account's snapshots matching `filters` (DescribeSnapshots, every page).
pub async fn describe_own_snapshots_filtered(
    ec2: &Client,
    select: &[Select],
) -> Result<Vec<Snapshot>, AwsError> {
    let filters = filters_named(select, "status");
    let mut pages = ec2
        .describe_snapshots()
        .owner_ids("self")
        .set_filters(Some(filters))
        .max_results(1000)
        .into_paginator()
        .items()
        .send();
    let mut out = Vec::new();
    while let Some(s) = pages.next().await {
        let s = s.map_err(|e| {
            AwsError::from_sdk("ec2:DescribeSnapshots", "own snapshots", e)
                .in_region(ec2.config().region())
        })?;
        out.extend(to_snapshot(&s));
    }
    Ok(out)
}

/// EnableImageDeprecation at `at` (AWS rejects past times).
pub async fn enable_image_deprecation(
    ec2: &Client,
    image_id: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), AwsError> {
    ec2.enable_image_deprecation()
        .image_id(image_id)
        .deprecate_at(aws_smithy_types::DateTime::from_secs(at.timestamp()))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:EnableImageDeprecation", image_id, e)
                .in_region(ec2.config().region())
        })?;
    Ok(())
}

/// DisableImageDeprecation: the image is no longer deprecated.
pub async fn disable_image_deprecation(ec2: &Client, image_id: &str) -> Result<(), AwsError> {
    ec2.disable_image_deprecation()
        .image_id(image_id)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DisableImageDeprecation", image_id, e)
                .in_region(ec2.config().region())
        })?;
    Ok(())
}

/// DeleteTags of `keys` (any value) on many resources in one call.
pub async fn delete_tag_keys(
    ec2: &Client,
    resource_ids: &[&str],
    keys: &[&str],
) -> Result<(), AwsError> {
    ec2.delete_tags()
        .set_resources(Some(resource_ids.iter().map(|s| s.to_string()).collect()))
        .set_tags(Some(
            keys.iter()
                .map(|k| Tag::builder().key(*k).build())
                .collect(),
        ))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DeleteTags", resource_ids.join(","), e)
                .in_region(ec2.config().region())
        })?;
    Ok(())
}

/// DeleteTags of `key` on `resource_id` only while its value is `value` (DeleteTags: "Specify
/// a tag key and an optional tag value to delete specific tags"): a newer value another writer
/// put there stays.
pub async fn delete_tag_if(
    ec2: &Client,
    resource_id: &str,
    key: &str,
    value: &str,
) -> Result<(), AwsError> {
    ec2.delete_tags()
        .resources(resource_id)
        .tags(Tag::builder().key(key).value(value).build())
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DeleteTags", resource_id, e).in_region(ec2.config().region())
        })?;
    Ok(())
}

/// DeregisterImage with `DeleteAssociatedSnapshots`: EC2 deletes the image's snapshots in the
/// same call, skipping those another AMI uses. Returns each snapshot's result code
/// (`success`, `skipped`, `missing-permissions`, `internal-error`, `client-error`).
pub async fn deregister_image_and_snapshots(
    ec2: &Client,
    image_id: &str,
) -> Result<Vec<(String, String)>, AwsError> {
    let out = ec2
        .deregister_image()
        .image_id(image_id)
        .delete_associated_snapshots(true)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DeregisterImage", image_id, e).in_region(ec2.config().region())
        })?;
    Ok(out
        .delete_snapshot_results()
        .iter()
        .map(|r| {
            (
                r.snapshot_id().unwrap_or_default().to_owned(),
                r.return_code()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect())
}

/// Most image ids per DescribeImageReferences request (the model's list `max`).
pub const IMAGE_REFERENCES_BATCH: usize = 10;

/// What references each of `image_ids` (at most [`IMAGE_REFERENCES_BATCH`]):
/// DescribeImageReferences over instances that are not terminated and SSM parameters,
/// every page. Returns `(image id, ARN of the referencing resource)`.
pub async fn image_references(
    ec2: &Client,
    image_ids: &[String],
) -> Result<Vec<(String, String)>, AwsError> {
    use aws_sdk_ec2::types::{
        ImageReferenceOptionName, ImageReferenceResourceType, ResourceTypeOption,
        ResourceTypeRequest,
    };
    let instances = ResourceTypeRequest::builder()
        .resource_type(ImageReferenceResourceType::Ec2Instance)
        .resource_type_options(
            ResourceTypeOption::builder()
                .option_name(ImageReferenceOptionName::StateName)
                .set_option_values(Some(
                    ["pending", "running", "shutting-down", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        )
        .build();
    let parameters = ResourceTypeRequest::builder()
        .resource_type(ImageReferenceResourceType::SsmParameter)
        .build();
    let mut pages = ec2
        .describe_image_references()
        .set_image_ids(Some(image_ids.to_vec()))
        .resource_types(instances)
        .resource_types(parameters)
        .into_paginator()
        .items()
        .send();
    let mut out = Vec::new();
    while let Some(r) = pages.next().await {
        let r = r.map_err(|e| {
            AwsError::from_sdk("ec2:DescribeImageReferences", image_ids.join(","), e)
                .in_region(ec2.config().region())
        })?;
        if let (Some(image), Some(arn)) = (r.image_id(), r.arn()) {
            out.push((image.to_owned(), arn.to_owned()));
        }
    }
    Ok(out)
}

/// DeregisterImage, keeping its snapshots (the caller deletes the ones no other image uses).
pub async fn deregister_image(ec2: &Client, image_id: &str) -> Result<(), AwsError> {
    ec2.deregister_image()
        .image_id(image_id)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DeregisterImage", image_id, e).in_region(ec2.config().region())
        })?;
    Ok(())
}

/// DeleteSnapshot.
pub async fn delete_snapshot(ec2: &Client, snapshot_id: &str) -> Result<(), AwsError> {
    ec2.delete_snapshot()
        .snapshot_id(snapshot_id)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DeleteSnapshot", snapshot_id, e)
                .in_region(ec2.config().region())
        })?;
    Ok(())
}

/// Waits until the snapshot is `completed`, at most `max` (DescribeSnapshots, as the SDK's
/// `SnapshotCompleted` waiter polls it: success on `completed`, failure on `error`); fails when
/// the snapshot ends in `error` (`Other`) or the time runs out (`Stopped`: the wait gave up,
/// not the snapshot). `InvalidSnapshot.NotFound` counts as "not
/// visible yet", not as a failure: the caller has just created the snapshot, and "if you run a
/// command to modify or describe the resource that you just created, its ID might not have
/// propagated throughout the system, and you will get an error responding that the resource
/// does not exist" (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).
/// The SDK's waiter has no acceptor for that error and gives up at once.
pub async fn wait_snapshot_completed(
    ec2: &Client,
    snapshot_id: &str,
    max: std::time::Duration,
) -> Result<(), AwsError> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(500);
    let failed = |message: String| AwsError {
        region: ec2.config().region().map(ToString::to_string),
        operation: "ec2:DescribeSnapshots",
        resource: snapshot_id.to_owned(),
        kind: crate::error::ErrorKind::Other,
        code: None,
        message,
    };
    loop {
        let state = match describe_snapshot(ec2, snapshot_id).await {
            Ok(s) => s.state,
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        match state.as_deref() {
            Some("completed") => return Ok(()),
            Some("error") => {
                return Err(failed(
                    "the snapshot is in the error state, it will not complete".into(),
                ));
            }
            _ => {}
        }
        if started.elapsed() + pause > max {
            return Err(AwsError {
                kind: crate::error::ErrorKind::Stopped,
                ..failed(format!(
                    "waited {} s for the snapshot to be completed; it is {}",
                    max.as_secs(),
                    state.as_deref().unwrap_or("not listed yet")
                ))
            });
        }
        tokio::time::sleep(pause).await;
        // The SDK's waiter backs off up to 120 s; a fast-path snapshot completes within
        // seconds of CompleteSnapshot, so polls stay short.
        pause = (pause * 2).min(std::time::Duration::from_secs(15));
    }
}

/// What CopyImage needs (the client is the destination region's).
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    /// The image to copy.
    pub source_image_id: &'a str,
    /// Its region.
    pub source_region: &'a str,
    /// The copy's name (names are unique per account and region).
    pub name: &'a str,
    /// Idempotency token (64 characters at most).
    pub client_token: &'a str,
    /// Tags on the new image and its snapshots, on top of the source's user tags
    /// (`CopyImageTags`).
    pub tags: &'a Tags,
    /// Encrypt the copy's snapshots with this KMS key of the destination region (`Encrypted`
    /// true, `KmsKeyId`); None: as the source (an encrypted source's copy gets the
    /// destination's default EBS key).
    pub kms_key_id: Option<&'a str>,
}

/// CopyImage into the client's region, with the source's tags and `req.tags` on the copy and
/// its snapshots; returns the new image id (the same one again for a repeated token).
pub async fn copy_image(ec2: &Client, req: CopyRequest<'_>) -> Result<String, AwsError> {
    let out = ec2
        .copy_image()
        .source_image_id(req.source_image_id)
        .source_region(req.source_region)
        .name(req.name)
        .client_token(req.client_token)
        .copy_image_tags(true)
        .set_encrypted(req.kms_key_id.map(|_| true))
        .set_kms_key_id(req.kms_key_id.map(str::to_owned))
        .tag_specifications(tag_spec(ResourceType::Image, req.tags))
        .tag_specifications(tag_spec(ResourceType::Snapshot, req.tags))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:CopyImage", req.source_image_id, e)
                .in_region(ec2.config().region())
        })?;
    out.image_id().map(str::to_owned).ok_or_else(|| AwsError {
        region: ec2.config().region().map(ToString::to_string),
        operation: "ec2:CopyImage",
        resource: req.source_image_id.to_owned(),
        kind: crate::error::ErrorKind::Other,
        code: None,
        message: "the response carried no ImageId".into(),
    })
}

/// Whether a permission change adds or removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Grant.
    Add,
    /// Revoke.
    Remove,
}

/// ModifyImageAttribute `launchPermission`: adds or removes accounts, organizations, OUs and
/// the `all` group in one call.
pub async fn modify_launch_permission(
    ec2: &Client,
    image_id: &str,
    change: Change,
    grants: &Grants,
) -> Result<(), AwsError> {
    use aws_sdk_ec2::types::{LaunchPermission, LaunchPermissionModifications, PermissionGroup};
    let mut perms: Vec<LaunchPermission> = Vec::new();
    perms.extend(
        grants
            .accounts
            .iter()
            .map(|a| LaunchPermission::builder().user_id(a).build()),
    );
    perms.extend(
        grants
            .organizations
            .iter()
            .map(|o| LaunchPermission::builder().organization_arn(o).build()),
    );
    perms.extend(grants.ous.iter().map(|o| {
        LaunchPermission::builder()
            .organizational_unit_arn(o)
            .build()
    }));
    if grants.public {
        perms.push(
            LaunchPermission::builder()
                .group(PermissionGroup::All)
                .build(),
        );
    }
    let mods = match change {
        Change::Add => LaunchPermissionModifications::builder().set_add(Some(perms)),
        Change::Remove => LaunchPermissionModifications::builder().set_remove(Some(perms)),
    }
    .build();
    ec2.modify_image_attribute()
        .image_id(image_id)
        .launch_permission(mods)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:ModifyImageAttribute", image_id, e)
                .in_region(ec2.config().region())
        })?;
    Ok(())
}

/// Most accounts and groups one ModifySnapshotAttribute may add or remove: "You can make up to
/// 500 modifications to a snapshot in a single operation" (the operation's reference).
pub const MAX_SNAPSHOT_MODIFICATIONS: usize = 500;

/// ModifySnapshotAttribute `createVolumePermission` for accounts and the `all` group
/// (snapshots have no organization form). Uses the `OperationType` + `UserIds`/`GroupNames`
/// form, which every EC2 implementation honours, in calls of at most
/// [`MAX_SNAPSHOT_MODIFICATIONS`] accounts (the `all` group in a call of its own). Adding or removing what is
/// already there changes nothing, so a call that fails midway is safe to repeat whole.
pub async fn modify_create_volume_permission(
    ec2: &Client,
    snapshot_id: &str,
    change: Change,
    grants: &Grants,
) -> Result<(), AwsError> {
    use aws_sdk_ec2::types::{OperationType, SnapshotAttributeName};
    let call = || {
        ec2.modify_snapshot_attribute()
            .snapshot_id(snapshot_id)
            .attribute(SnapshotAttributeName::CreateVolumePermission)
            .operation_type(match change {
                Change::Add => OperationType::Add,
                Change::Remove => OperationType::Remove,
            })
    };
    let failed = |e| {
        AwsError::from_sdk("ec2:ModifySnapshotAttribute", snapshot_id, e)
            .in_region(ec2.config().region())
    };
    if grants.public {
        call().group_names("all").send().await.map_err(failed)?;
    }
    let accounts: Vec<String> = grants.accounts.iter().cloned().collect();
    for batch in accounts.chunks(MAX_SNAPSHOT_MODIFICATIONS) {
        call()
            .set_user_ids(Some(batch.to_vec()))
            .send()
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// Who may create volumes from a snapshot (DescribeSnapshotAttribute
/// `createVolumePermission`): account ids, and `all` for public.
pub async fn create_volume_permissions(
    ec2: &Client,
    snapshot_id: &str,
) -> Result<Vec<String>, AwsError> {
    let out = ec2
        .describe_snapshot_attribute()
        .snapshot_id(snapshot_id)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:DescribeSnapshotAttribute", snapshot_id, e)
                .in_region(ec2.config().region())
        })?;
    Ok(out
        .create_volume_permissions()
        .iter()
        .filter_map(|p| {
            p.user_id()
                .map(str::to_owned)
                .or_else(|| p.group().map(|g| g.as_str().to_owned()))
        })
        .collect())
}

/// GetImageBlockPublicAccessState of the client's region: `unblocked` or
/// `block-new-sharing`.
pub async fn image_block_public_access_state(ec2: &Client) -> Result<String, AwsError> {
    let out = ec2
        .get_image_block_public_access_state()
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:GetImageBlockPublicAccessState", "account", e)
                .in_region(ec2.config().region())
        })?;
    Ok(out
        .image_block_public_access_state()
        .unwrap_or("unblocked")
        .to_owned())
}

/// GetSnapshotBlockPublicAccessState of the client's region: `unblocked`, `block-new-sharing`
/// or `block-all-sharing`.
pub async fn snapshot_block_public_access_state(ec2: &Client) -> Result<String, AwsError> {
    let out = ec2
        .get_snapshot_block_public_access_state()
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:GetSnapshotBlockPublicAccessState", "account", e)
                .in_region(ec2.config().region())
        })?;
    Ok(out.state().map_or("unblocked", |s| s.as_str()).to_owned())
}

/// GetEbsEncryptionByDefault of the client's region: whether new EBS volumes and snapshot
/// copies there are encrypted whatever the request says.
pub async fn ebs_encryption_by_default(ec2: &Client) -> Result<bool, AwsError> {
    let out = ec2
        .get_ebs_encryption_by_default()
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("ec2:GetEbsEncryptionByDefault", "account", e)
                .in_region(ec2.config().region())
        })?;
    Ok(out.ebs_encryption_by_default().unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{Image as SdkImage, ImageState};

    #[test]
    fn a_deregistered_image_still_listed_is_gone() {
        let image = |state: ImageState| {
            SdkImage::builder()
                .image_id("ami-0123456789abcdef0")
                .state(state)
                .build()
        };
        let from_listing = |state: ImageState| listed(&image(state));
        assert!(from_listing(ImageState::Deregistered).is_none());
        // Asked for by its id, it is answered with its state.
        assert_eq!(
            to_image(&image(ImageState::Deregistered)).map(|i| i.state),
            Some("deregistered".to_owned())
        );
        for state in [
            ImageState::Available,
            ImageState::Pending,
            ImageState::Disabled,
            ImageState::Failed,
        ] {
            let image = from_listing(state.clone()).expect("listed");
            assert_eq!(image.state, state.as_str());
        }
    }
}
