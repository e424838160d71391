//! Register a completed import's snapshot as an image (volume size, naming retry, adoption).

use crate::config::Deps;
use crate::sweep::{announce, object_of, report_failure};
use chrono::{DateTime, Utc};
use shared::aws::ec2;
use shared::error::{AwsError, ErrorKind};
use shared::model::Image;
use shared::plan::import::{self, OnDuplicate, Registration};
use shared::plan::{lineage, naming};
use tracing::info;

pub(crate) async fn register(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let c = &deps.clients;
    let snapshot = ec2::describe_snapshot(&c.ec2, &reg.snapshot_id).await?;
    let snapshot_gib = snapshot.volume_size_gib.unwrap_or(1).max(1);
    let size = match reg.spec.volume_size_gib {
        Some(n) if (n as i32) < snapshot_gib => {
            let message = format!(
                "volume-size {n} GiB is smaller than the imported disk ({snapshot_gib} GiB); the image was not registered"
            );
            let object = object_of(reg);
            report_failure(deps, task_id, &message, object.as_ref(), now).await?;
            return Ok(message);
        }
        Some(n) => n as i32,
        None => snapshot_gib,
    };
    // The snapshot's lineage first, with its own CreateTags (RegisterImage cannot tag it): a
    // crash after this and before RegisterImage leaves a tagged snapshot and an unfinished
    // task, which the next sweep registers; the other order could leave an AMI whose snapshot
    // is never tagged. CreateTags overwrites with the same values, so repeating it is harmless.
    ec2::create_tags(&c.ec2, &[&reg.snapshot_id], &reg.tags).await?;
    let mut attempt = 0;
    let image_id = loop {
        let name = if attempt == 0 {
            reg.name.clone()
        } else {
            naming::auto_name(
                &reg.spec.name_prefix,
                reg.started_at,
                &reg.source_token,
                attempt,
            )
        };
        let req = ec2::RegisterRequest {
            name: &name,
            snapshot_id: &reg.snapshot_id,
            volume_size_gib: size,
            spec: &reg.spec,
            tags: &reg.tags,
        };
        match ec2::register_image(&c.ec2, req).await {
            Ok(id) => {
                info!(import_task_id = task_id, image_id = %id, name = %name, "registered image");
                break id;
            }
            Err(e) if e.has_code("InvalidAMIName.Duplicate") => {
                let holder = ec2::image_holding_name(&c.ec2, &name).await?;
                match import::on_duplicate(task_id, holder.as_ref(), reg) {
                    OnDuplicate::Adopt(id) => {
                        info!(import_task_id = task_id, image_id = %id, "image already registered by an earlier run");
                        break id;
                    }
                    OnDuplicate::TryAnotherName if attempt + 1 < import::MAX_NAME_ATTEMPTS => {
                        attempt += 1
                    }
                    OnDuplicate::TryAnotherName => {
                        let message = format!(
                            "no free image name after {} attempts (last: {name:?})",
                            import::MAX_NAME_ATTEMPTS
                        );
                        report_failure(deps, task_id, &message, object_of(reg).as_ref(), now)
                            .await?;
                        return Ok(message);
                    }
                    OnDuplicate::Fail(message) => {
                        report_failure(deps, task_id, &message, object_of(reg).as_ref(), now)
                            .await?;
                        return Ok(message);
                    }
                    OnDuplicate::HolderNotVisible => {
                        return Err(AwsError {
                            operation: "ec2:RegisterImage",
                            resource: name,
                            kind: ErrorKind::Conflict,
                            code: e.code.clone(),
                            message: "the name is taken but no image holding it is listed yet (DescribeImages is eventually consistent); the next sweep retries".into(),
                        });
                    }
                }
            }
            Err(e) if e.kind == ErrorKind::InvalidInput => {
                let message = format!("EC2 refused to register the image: {e}");
                report_failure(deps, task_id, &message, object_of(reg).as_ref(), now).await?;
                return Ok(message);
            }
            Err(e) => return Err(e),
        }
    };
    let image = Image {
        id: image_id.clone(),
        name: reg.name.clone(),
        state: "pending".into(),
        creation_date: None,
        architecture: Some(reg.spec.architecture.as_str().into()),
        boot_mode: Some(reg.spec.boot_mode.as_str().into()),
        ena_support: Some(reg.spec.ena),
        root_device_name: Some(reg.spec.root_device.clone()),
        snapshot_ids: vec![reg.snapshot_id.clone()],
        tags: reg.tags.clone(),
        ..Image::default()
    };
    let listed = ec2::describe_own_images(
        &c.ec2,
        vec![ec2::tag_filter(lineage::IMPORT_TASK, [task_id])],
    )
    .await?;
    announce(deps, task_id, listed.first().unwrap_or(&image), now).await?;
    Ok(image_id)
}
