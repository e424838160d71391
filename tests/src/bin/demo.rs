//! The demo: the main job end to end on the local emulator.
//!
//! Makes a real disk image (MBR partition table + ext4 filesystem) and its stream-optimized
//! VMDK conversion with `qemu-img`, uploads both with settings in their metadata, invokes
//! create-image with the S3 notification AWS would send, lets the imports finish, runs the
//! sweep, and prints what came out. Exits non-zero if anything is missing.

use chrono::Utc;
use create_image::IngestOutcome;
use serde_json::json;
use shared::model::ImportStatus;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;
use support::{TestAccount, deps_as, disks, invoke};

const BUCKET: &str = "ami-uploads";

fn disk_with_filesystem() -> Vec<u8> {
    let mut disk = disks::raw_disk(64);
    let path = std::env::temp_dir().join(format!("ami-pipeline-demo-{}.raw", std::process::id()));
    if std::fs::write(&path, &disk).is_ok() {
        // ext4 inside partition 1 (starts at 1 MiB), when mkfs.ext4 is there.
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "demo-root", "-E", "offset=1048576"])
            .arg(&path)
            .arg("63M")
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            if let Ok(bytes) = std::fs::read(&path) {
                disk = bytes;
                println!("  made a 64 MiB raw disk: MBR + ext4 partition labelled demo-root");
            }
        } else {
            println!(
                "  made a 64 MiB raw disk: MBR partition table (mkfs.ext4 not found, no filesystem)"
            );
        }
        let _ = std::fs::remove_file(&path);
    }
    disk
}

fn notification(records: &[(&str, &str)]) -> serde_json::Value {
    let records: Vec<_> = records
        .iter()
        .map(|(key, etag)| {
            json!({"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": Utc::now().to_rfc3339(), "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"}, "requestParameters": {"sourceIPAddress": "203.0.113.7"},
                "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "example"},
                "s3": {"s3SchemaVersion": "1.0", "configurationId": "ami-uploads",
                    "bucket": {"name": BUCKET, "ownerIdentity": {"principalId": "EXAMPLE"}, "arn": format!("arn:aws:s3:::{BUCKET}")},
                    "object": {"key": form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>().replace("%2F", "/"), "size": 1, "eTag": etag, "sequencer": "0A1B2C3D4E5F678901"}}})
        })
        .collect();
    json!({ "Records": records })
}

#[tokio::main]
async fn main() -> ExitCode {
    println!("== ami-pipeline demo: S3 upload -> import -> registered AMI (local emulator)");
    let acct = TestAccount::new().await;
    acct.emulator_config(json!({"import_delay_seconds": 3}));
    let (topic, queue) = acct.topic_with_queue("ami-pipeline-events").await;
    acct.bucket(BUCKET, true).await;
    println!(
        "  account {} at {}, bucket s3://{BUCKET}, topic {topic}",
        acct.account_id, acct.endpoint
    );

    let raw = disk_with_filesystem();
    let vmdk = disks::convert(&raw, "vmdk");
    let vhd = disks::convert(&raw, "vpc");
    println!(
        "  converted it with qemu-img to a stream-optimized VMDK ({} bytes) and a fixed VHD ({} bytes)",
        vmdk.len(),
        vhd.len()
    );
    // Families are the uploads' folders: platform/web-base → platform-web-base.
    let raw_key = "platform/web-base/disk 2026.raw";
    let vmdk_key = "platform/arm/disk.vmdk";
    let vhd_key = "platform/vhd-base/disk.vhd";
    let (raw_etag, _) = acct
        .put(
            BUCKET,
            raw_key,
            raw,
            &[
                ("tags", "team=platform&env=demo"),
                ("description", "web base from raw"),
            ],
        )
        .await;
    let (vmdk_etag, _) = acct
        .put(
            BUCKET,
            vmdk_key,
            vmdk,
            &[
                ("architecture", "arm64"),
                ("tpm", "true"),
                ("name-prefix", "arm-base"),
            ],
        )
        .await;

    let (vhd_etag, _) = acct
        .put(
            BUCKET,
            vhd_key,
            vhd,
            &[("description", "web base from a VHD")],
        )
        .await;

    // The operator lets uploads add two tag keys (team, env) besides the default settings.
    let env = BTreeMap::from([
        ("TOPIC_ARN", topic.as_str()),
        ("S3_FORCE_PATH_STYLE", "true"),
        (
            "UPLOAD_SETTINGS",
            "architecture,boot-mode,ena,tpm,name,name-prefix,description,tags",
        ),
        ("UPLOAD_TAG_KEYS", "team,env"),
    ]);
    // create-image runs as its template role (the emulator enforces its IAM policies), built
    // as the runtime builds it.
    let deps: create_image::Deps =
        match deps_as(&acct, &|k| env.get(k).map(|v| v.to_string()), BUCKET).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("FAIL: {e}");
                return ExitCode::FAILURE;
            }
        };

    println!("\n== invoking create-image with the S3 notification (3 records: raw, VMDK, VHD)");
    let event = notification(&[
        (raw_key, &raw_etag),
        (vmdk_key, &vmdk_etag),
        (vhd_key, &vhd_etag),
    ]);
    let out = match invoke(&deps, &event, Utc::now()).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The fast path (EBS direct APIs) writes and registers in the invocation; the ImportSnapshot
    // fallback leaves a task for the sweep.
    let mut task_ids = Vec::new();
    let mut fast = 0;
    for o in &out.ingested {
        println!("  {}", serde_json::to_string(o).unwrap_or_default());
        match o {
            IngestOutcome::ImportStarted { import_task_id, .. } => {
                task_ids.push(import_task_id.clone());
            }
            IngestOutcome::Registered { .. } => fast += 1,
            _ => {}
        }
    }
    if task_ids.len() + fast != 3 {
        eprintln!(
            "FAIL: expected 3 uploads taken, got {fast} registered and {} imports",
            task_ids.len()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "  {fast} registered through the EBS direct APIs, {} imports started",
        task_ids.len()
    );

    println!("\n== waiting for any import (the scheduled sweep would pick them up)");
    for _ in 0..100 {
        let tasks = shared::aws::ec2::describe_import_tasks(&acct.clients.ec2, &[])
            .await
            .unwrap_or_default();
        let done = tasks
            .iter()
            .filter(|t| t.status == ImportStatus::Completed)
            .count();
        if done == task_ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("== running the sweep (scheduled event)");
    let sweep = json!({"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": acct.account_id, "time": Utc::now().to_rfc3339(), "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/create-image-sweep"], "detail": {}});
    match invoke(&deps, &sweep, Utc::now()).await {
        Ok(o) => {
            for s in &o.sweep.steps {
                println!("  {} {} -> {}", s.task_id, s.action, s.result);
            }
        }
        Err(e) => {
            eprintln!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    }

    println!("\n== what came out");
    let images = shared::aws::ec2::describe_own_images(&acct.clients.ec2, &[])
        .await
        .unwrap_or_default();
    for img in &images {
        println!("  {}  {}", img.id, img.name);
        println!(
            "    architecture={} boot-mode={} ena={} root={} snapshots={:?}",
            img.architecture.as_deref().unwrap_or("?"),
            img.boot_mode.as_deref().unwrap_or("?"),
            img.ena_support.unwrap_or(false),
            img.root_device_name.as_deref().unwrap_or("?"),
            img.snapshot_ids
        );
        for (k, v) in &img.tags {
            println!("    tag {k} = {v}");
        }
    }
    let msgs = acct.drain(&queue).await;
    println!("\n== SNS messages received by a subscriber");
    for m in &msgs {
        println!(
            "  {} {} {}",
            m["event_type"], m["image_id"], m["image_name"]
        );
    }
    let registered: Vec<&serde_json::Value> = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.registered")
        .collect();
    let tagged = images
        .iter()
        .all(|i| i.tags.contains_key("create_date") && !i.snapshot_ids.is_empty());
    let fast_path = images
        .iter()
        .filter(|i| {
            i.tags.get("ami-pipeline:upload-method").map(String::as_str) == Some("ebs-direct")
        })
        .count();
    if images.len() != 3 || registered.len() != 3 || !tagged || fast_path != 3 {
        eprintln!(
            "\nFAIL: {} images ({fast_path} through the EBS direct fast path), {} image.registered events, all tagged: {tagged}",
            images.len(),
            registered.len()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "\nOK: 3 uploads (raw, VMDK, VHD) -> 3 tagged AMIs, all through the EBS direct fast path, 3 image.registered events"
    );
    match lineage(&acct, &topic, &queue, &registered).await {
        Ok(()) => {
            println!(
                "\nOK: lineage stamped, 3 image.ready events, published to eu-west-1 (image.published), ancestry and children answered"
            );
        }
        Err(e) => {
            eprintln!("\nFAIL: {e}");
            return ExitCode::FAILURE;
        }
    }
    match cleanup_demo(&acct, &topic).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nFAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

/// cleanup on a backdated family: six images of `legacy-base` made 10 to 60 days ago, one of
/// them protected; a dry run (each decision with its reason), the real run, what is left.
async fn cleanup_demo(acct: &TestAccount, topic: &str) -> Result<(), String> {
    println!(
        "\n== cleanup: the family legacy-base, six images made 10..60 days ago, one protected"
    );
    let mut family = Vec::new();
    for (n, days) in [10i64, 20, 35, 40, 50, 60].into_iter().enumerate() {
        let mut tags = vec![
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "legacy-base"),
        ];
        if days == 50 {
            tags.push(("ami-pipeline:protect", "true"));
        }
        let (image, _) =
            support::fixtures::image(&acct.clients.ec2, &format!("legacy-base-{n}"), &tags).await;
        acct.backdate_image(
            "us-east-1",
            &image,
            Utc::now() - chrono::Duration::days(days),
        );
        family.push(image);
    }
    let env = BTreeMap::from([
        ("TOPIC_ARN", topic),
        ("KEEP_NEWEST", "2"),
        ("MIN_AGE_DAYS", "30"),
        ("GRACE_DAYS", "0"),
        ("FAMILIES", "legacy-base"),
    ]);
    let deps: cleanup::Deps = deps_as(acct, &|k| env.get(k).map(|v| v.to_string()), BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    for dry in [true, false] {
        let r = invoke(&deps, &json!({"dry_run": dry}), Utc::now())
            .await
            .map_err(|e| format!("cleanup: {e}"))?;
        println!("-- {} run", if dry { "dry" } else { "real" });
        for d in &r.decisions {
            println!(
                "  {} {:<11} {}",
                d.image_id,
                serde_json::to_value(d.action)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("?"),
                d.reasons.join("; ")
            );
        }
        for s in r
            .steps
            .iter()
            .filter(|s| !dry || s.action != "delete-snapshot")
        {
            println!("  step {} {} -> {}", s.action, s.resource, s.result);
        }
    }
    let left = shared::aws::ec2::describe_own_images(&acct.clients.ec2, &[])
        .await
        .map_err(|e| e.to_string())?;
    let kept: Vec<&String> = family
        .iter()
        .filter(|i| left.iter().any(|l| &l.id == *i))
        .collect();
    println!("-- what is left of legacy-base: {kept:?}");
    // Kept: the newest two, the protected one; removed: the other three (35, 40, 60 days).
    if kept != [&family[0], &family[1], &family[4]] {
        return Err(format!("cleanup left {kept:?} of {family:?}"));
    }
    println!(
        "\nOK: cleanup removed 3 stale images in one run, kept the newest 2 and the protected one"
    );
    Ok(())
}

/// tag-lineage: the image.registered messages go to tag-lineage as SNS delivers them; the first
/// image.ready goes to publish (copy to eu-west-1, share, announce); the copy's "EC2 AMI State
/// Change" event goes back to tag-lineage; then the two queries.
async fn lineage(
    acct: &TestAccount,
    topic: &str,
    queue: &str,
    registered: &[&serde_json::Value],
) -> Result<(), String> {
    let env = BTreeMap::from([
        ("TOPIC_ARN", topic),
        ("LINEAGE_REGIONS", "us-east-1,eu-west-1"),
    ]);
    let deps: tag_lineage::Deps = deps_as(acct, &|k| env.get(k).map(|v| v.to_string()), BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let invoke = |event: serde_json::Value| {
        let deps = &deps;
        async move {
            let out = invoke(deps, &event, chrono::Utc::now())
                .await
                .map_err(|e| format!("{}: {e}", e.error_type()))?;
            serde_json::to_value(out).map_err(|e| e.to_string())
        }
    };
    println!("\n== invoking tag-lineage with each image.registered (SNS)");
    for m in registered {
        let out = invoke(support::aws_events::sns(topic, m)).await?;
        println!("  {}", out["results"][0]);
    }
    let ready: Vec<serde_json::Value> = acct
        .drain(queue)
        .await
        .into_iter()
        .filter(|m| m["event_type"] == "image.ready")
        .collect();
    if ready.len() != 3 {
        return Err(format!(
            "expected 3 image.ready events, got {}",
            ready.len()
        ));
    }
    let root = ready[0]["image_id"].as_str().unwrap_or_default().to_owned();
    let copy = publish(acct, topic, queue, &ready[0]).await?;
    println!(
        "\n== the copy's EC2 AMI State Change event in eu-west-1 (publish already stamped it):"
    );
    let out = invoke(support::aws_events::ami_state_change(
        "eu-west-1",
        &copy,
        "available",
        "",
    ))
    .await?;
    println!("  {}", out["results"][0]);

    println!("\n== {{\"ancestors\": \"{copy}\", \"region\": \"eu-west-1\"}}");
    let anc = invoke(json!({"ancestors": copy, "region": "eu-west-1"})).await?;
    println!("{}", serde_json::to_string_pretty(&anc).unwrap_or_default());
    println!("\n== {{\"children\": \"{root}\"}}");
    let kids = invoke(json!({"children": root})).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&kids).unwrap_or_default()
    );

    if anc["ancestors"][0]["image_id"] != root.as_str() || kids["descendants"] != 1 {
        return Err("the copy's lineage does not lead back to its source".into());
    }
    Ok(())
}

/// publish: the image.ready message as SNS delivers it (starts the copy), then the schedule
/// (finishes it: lineage in eu-west-1, shares, read back, `image.published`). Returns the copy.
async fn publish(
    acct: &TestAccount,
    topic: &str,
    queue: &str,
    ready: &serde_json::Value,
) -> Result<String, String> {
    let env = BTreeMap::from([
        ("TOPIC_ARN", topic),
        ("PUBLISH_REGIONS", "eu-west-1"),
        ("SHARE_ACCOUNTS", "111122223333"),
        ("DEPRECATE_AFTER_DAYS", "365"),
    ]);
    let deps: publish::Deps = deps_as(acct, &|k| env.get(k).map(|v| v.to_string()), BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let invoke = |event: serde_json::Value| {
        let deps = &deps;
        async move {
            let out = invoke(deps, &event, chrono::Utc::now())
                .await
                .map_err(|e| format!("{}: {e}", e.error_type()))?;
            serde_json::to_value(out).map_err(|e| e.to_string())
        }
    };
    println!(
        "\n== invoking publish with {} image.ready (SNS)",
        ready["image_id"]
    );
    let out = invoke(support::aws_events::sns(topic, ready)).await?;
    println!(
        "  status {} {}",
        out["result"]["status"], out["result"]["regions"]
    );
    println!("== the publish schedule (EventBridge Scheduled Event) advances it");
    let out = invoke(
        json!({"detail-type": "Scheduled Event", "source": "aws.events",
        "region": "us-east-1", "resources": [], "detail": {}}),
    )
    .await?;
    println!("  status {}", out["results"][0]["status"]);
    let published: Vec<serde_json::Value> = acct
        .drain(queue)
        .await
        .into_iter()
        .filter(|m| m["event_type"] == "image.published")
        .collect();
    let [msg] = published.as_slice() else {
        return Err(format!(
            "expected 1 image.published, got {}",
            published.len()
        ));
    };
    println!("== image.published received by the subscriber:");
    println!(
        "{}",
        serde_json::to_string_pretty(&msg["publication"]).unwrap_or_default()
    );
    msg["publication"]["regions"]["eu-west-1"]["image_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "image.published names no eu-west-1 image".to_owned())
}
