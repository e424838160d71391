//! The tag keys each function writes are exactly those its role allows, per EC2 resource type.
//!
//! Every integration test already runs the functions under their `template.yaml` roles, so a
//! write the role does not allow fails there (writes ⊆ allowed). These tests check the other
//! direction: in a scenario that exercises all of a function's writes, every key pattern its
//! role allows on a resource type is used there, so no pattern is broader than the job. The keys
//! come from the emulator's log of what each role was allowed to write
//! (`/ami-pipeline-emulator/iam/tag-writes`); the patterns from the policies the emulator
//! rendered from `template.yaml` (`/ami-pipeline-emulator/iam/role-policies`).
//!
//! create-image's images and snapshots carry the uploader's own tags, which no IAM condition can
//! list: there the role's Deny list must cover every key of the pipeline's vocabulary
//! (`shared::plan::tags`) that create-image does not write.

use chrono::Utc;
use serde_json::{Value, json};
use shared::plan::tags;
use std::collections::{BTreeMap, BTreeSet};
use support::roles::Function;
use support::{MANY_REGIONS, TestAccount, aws_events, deps_as, disks, fixtures};

const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";
const PARTNER: &str = "111122223333";
const ORG: &str = "arn:aws:organizations::123456789012:organization/o-exampleorg1";
const OU: &str = "arn:aws:organizations::123456789012:ou/o-exampleorg1/ou-ab12-cdef3456";

/// What a role's `ec2:CreateTags` statements say about the keys of one resource type.
#[derive(Debug, Default)]
struct KeyRules {
    /// `aws:TagKeys` patterns of the Allow statements that apply (ForAllValues).
    allowed: BTreeSet<String>,
    /// An applicable Allow statement has no `aws:TagKeys` bound.
    unbounded: bool,
    /// `aws:TagKeys` patterns of the Deny statements that apply whatever else the request
    /// holds (ForAnyValue and no other condition).
    denied: BTreeSet<String>,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

/// The keys under `aws:TagKeys` of the first of `operators` the condition uses.
fn tag_keys(condition: &Value, operators: &[&str]) -> Option<Vec<String>> {
    operators
        .iter()
        .find_map(|op| condition.get(*op).and_then(|c| c.get("aws:TagKeys")))
        .map(strings)
}

fn key_rules(acct: &TestAccount, function: Function, rtype: &str) -> KeyRules {
    let path = format!(
        "/ami-pipeline-emulator/iam/role-policies?account_id={}&role_name={}",
        acct.account_id,
        function.role_name()
    );
    let policies = acct.control("GET", &path, None);
    let mut rules = KeyRules::default();
    for policy in policies["policies"].as_array().into_iter().flatten() {
        let statements = match &policy["Statement"] {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for st in statements {
            let applies = strings(&st["Resource"])
                .iter()
                .any(|r| r == "*" || r.contains(&format!(":{rtype}/")));
            if !strings(&st["Action"]).iter().any(|a| a == "ec2:CreateTags") || !applies {
                continue;
            }
            let condition = &st["Condition"];
            if st["Effect"] == "Allow" {
                match tag_keys(
                    condition,
                    &["ForAllValues:StringLike", "ForAllValues:StringEquals"],
                ) {
                    Some(keys) => rules.allowed.extend(keys),
                    None => rules.unbounded = true,
                }
            } else if condition.as_object().is_some_and(|c| c.len() == 1)
                && let Some(keys) = tag_keys(
                    condition,
                    &["ForAnyValue:StringLike", "ForAnyValue:StringEquals"],
                )
            {
                rules.denied.extend(keys);
            }
        }
    }
    rules
}

/// Keys the role wrote on each resource type.
fn written(acct: &TestAccount, function: Function) -> BTreeMap<String, BTreeSet<String>> {
    let path = format!(
        "/ami-pipeline-emulator/iam/tag-writes?account_id={}",
        acct.account_id
    );
    let log = acct.control("GET", &path, None);
    let mut out = BTreeMap::new();
    if let Some(types) = log["roles"][function.role_name()].as_object() {
        for (rtype, keys) in types {
            out.insert(rtype.clone(), strings(keys).into_iter().collect());
        }
    }
    out
}

/// IAM's StringLike for the patterns the template uses (a trailing `*` at most).
fn matches(pattern: &str, key: &str) -> bool {
    assert!(
        !pattern.contains('?') && pattern.find('*').is_none_or(|i| i == pattern.len() - 1),
        "pattern {pattern:?}: only a trailing * is handled here"
    );
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    }
}

/// The pipeline's EC2 tag vocabulary (the S3 object status keys aside) as patterns: each key,
/// and each prefix as `<prefix>*`.
fn vocabulary() -> BTreeSet<String> {
    tags::ALL
        .iter()
        .filter(|k| **k != tags::OBJECT_STATUS && **k != tags::OBJECT_REASON)
        .map(|k| (*k).to_owned())
        .chain(tags::PREFIXES.iter().map(|p| format!("{p}*")))
        .collect()
}

/// A key an entry of [`vocabulary`] stands for.
fn sample(entry: &str) -> String {
    entry.replace('*', "x")
}

/// Checks `function`'s writes on each of `rtypes` against its role: a bounded type uses every
/// allowed pattern and writes nothing else; an unbounded one (the uploader's own tags) writes or
/// denies every key of the vocabulary; nothing written is denied.
fn assert_exact(acct: &TestAccount, function: Function, rtypes: &[&str]) {
    let wrote = written(acct, function);
    for rtype in rtypes {
        let rules = key_rules(acct, function, rtype);
        let keys = wrote.get(*rtype).cloned().unwrap_or_default();
        assert!(!keys.is_empty(), "{function:?} wrote no tag on {rtype}");
        let denied: Vec<_> = keys
            .iter()
            .filter(|k| rules.denied.iter().any(|p| matches(p, k)))
            .collect();
        assert!(
            denied.is_empty(),
            "{function:?} wrote keys its role denies on {rtype}: {denied:?}"
        );
        let used = |entry: &String| keys.iter().any(|k| matches(entry, k));
        let denies = |entry: &String| rules.denied.iter().any(|p| matches(p, &sample(entry)));
        if rules.unbounded {
            let unclassified: Vec<_> = vocabulary()
                .into_iter()
                .filter(|e| !used(e) && !denies(e))
                .collect();
            assert!(
                unclassified.is_empty(),
                "{function:?}'s role neither uses nor denies these pipeline keys on {rtype}: {unclassified:?} (wrote {keys:?})"
            );
            continue;
        }
        assert!(
            !rules.allowed.is_empty(),
            "{function:?}'s role limits no tag key on {rtype}"
        );
        let unused: Vec<_> = rules
            .allowed
            .iter()
            .filter(|p| !keys.iter().any(|k| matches(p, k)))
            .collect();
        assert!(
            unused.is_empty(),
            "{function:?}'s role allows keys on {rtype} the function never writes: {unused:?} (wrote {keys:?})"
        );
        let outside: Vec<_> = keys
            .iter()
            .filter(|k| !rules.allowed.iter().any(|p| matches(p, k)))
            .collect();
        assert!(
            outside.is_empty(),
            "{function:?} wrote keys on {rtype} not allowed: {outside:?}"
        );
        // A pattern is used, and no broader than the job: every pipeline key it admits (and no
        // Deny refuses) is one the function writes there.
        let broader: Vec<_> = vocabulary()
            .into_iter()
            .filter(|e| rules.allowed.iter().any(|p| matches(p, &sample(e))))
            .filter(|e| !used(e) && !denies(e))
            .collect();
        assert!(
            broader.is_empty(),
            "{function:?}'s role allows pipeline keys on {rtype} the function never writes there: {broader:?}"
        );
    }
}

#[tokio::test]
async fn tag_lineage_writes_exactly_the_keys_its_role_allows() {
    let acct = TestAccount::new().await;
    let (topic, _queue) = acct.topic_with_queue("ami-pipeline").await;
    let env = |k: &str| match k {
        "TOPIC_ARN" => Some(topic.clone()),
        "S3_FORCE_PATH_STYLE" => Some("true".into()),
        "LINEAGE_REGIONS" => Some(format!("{EAST},{WEST}")),
        "VISIBILITY_WAIT_SECONDS" => Some("1".into()),
        _ => None,
    };
    let east = acct.clients.ec2.clone();
    let west = acct.clients.for_region(WEST).ec2;
    let stamp = |region: &'static str, image: String| {
        let event = aws_events::ami_state_change(region, &image, "available", "").to_string();
        let acct = &acct;
        let env = &env;
        async move {
            acct.invoke::<tag_lineage::Deps>(env, "unused-bucket", &event)
                .await
                .unwrap_or_else(|e| panic!("stamping {image}: {e}"));
        }
    };
    // A pipeline root (announced ready), an image made from an instance of it (its family is
    // inherited), and a copy of that one in another region (ancestry, source snapshot): every
    // key tag-lineage writes.
    let managed = [(tags::MANAGED, "true"), (tags::FAMILY, "web")];
    let (root, _) = fixtures::image(&east, "keys-root", &managed).await;
    stamp(EAST, root.clone()).await;
    let instance = fixtures::instance(&east, &root).await;
    let child = fixtures::image_from_instance(&east, &instance, "keys-child").await;
    stamp(EAST, child.clone()).await;
    let copy = fixtures::copy(&west, &child, EAST, "keys-copy").await;
    stamp(WEST, copy).await;
    assert_exact(&acct, Function::TagLineage, &["image", "snapshot"]);
}

#[tokio::test]
async fn publish_writes_exactly_the_keys_its_role_allows() {
    let acct = TestAccount::new().await;
    let (topic, _queue) = acct.topic_with_queue("ami-pipeline").await;
    let env = |k: &str| match k {
        "TOPIC_ARN" => Some(topic.clone()),
        "S3_FORCE_PATH_STYLE" => Some("true".into()),
        "PUBLISH_REGIONS" => Some(MANY_REGIONS.join(",")),
        // Longer than a tag value once one is revoked: the revoke records an exclusion.
        "SHARE_ACCOUNTS" => Some(
            (0..25)
                .map(|i| format!("{:012}", 300_000_000_000_u64 + i))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    };
    let (src, _) = fixtures::image(
        &acct.clients.ec2,
        "keys-publish",
        &[
            (tags::MANAGED, "true"),
            (tags::FAMILY, "web"),
            (tags::GENERATION, "1"),
            (tags::SOURCE_IMAGE, "ami-0123456789abcdef0"),
            // Its parent lived in another region: the copy's source_region differs from what
            // it inherits, so publish writes it.
            (tags::SOURCE_REGION, "eu-west-1"),
            (tags::CREATE_DATE, "20261122T120000Z"),
            (tags::CREATE_TIMESTAMP, "1795435200"),
        ],
    )
    .await;
    let run = |request: Value| {
        let acct = &acct;
        let env = &env;
        async move {
            acct.invoke::<publish::Deps>(env, "unused-bucket", &request.to_string())
                .await
                .unwrap_or_else(|e| panic!("publish {request}: {e}"))
        }
    };
    let schedule = json!({"version": "0", "id": "5e0b1c2d-0000-4000-8000-000000000001",
        "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
        "time": "2026-11-22T12:05:00Z", "region": EAST,
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/publish-advance"], "detail": {}});
    // A manual publish overriding every policy field (recorded as publish:* tags) starts a copy.
    acct.emulator_config(json!({"copy_delay_seconds": 30}));
    run(
        json!({"image_id": src, "regions": [WEST], "accounts": [PARTNER],
        "organizations": [ORG], "ous": [OU], "public": false, "deprecate_after_days": 30}),
    )
    .await;
    // The copy fails: replaced by a new copy, deregistered, the failed region recorded on the
    // source.
    let west = acct.clients.for_region(WEST).ec2;
    let copies = |ec2: aws_sdk_ec2::Client| {
        let src = src.clone();
        async move {
            shared::aws::ec2::describe_own_images(
                &ec2,
                &[shared::model::Select::tag(
                    tags::PUBLISH_SOURCE,
                    [src.as_str()],
                )],
            )
            .await
            .expect("copies")
        }
    };
    let dead = copies(west.clone()).await[0].id.clone();
    acct.control(
        "POST",
        "/ami-pipeline-emulator/image-state",
        Some(json!({"region": WEST, "image_id": dead, "state": "failed"})),
    );
    acct.emulator_config(json!({"copy_delay_seconds": 0}));
    run(schedule.clone()).await;
    // The new copy's publish state lost (as if CopyImageTags had overwritten it), so publish
    // writes it again when it stamps the copy; then shared, published, and a revoke recorded.
    let fresh = copies(west.clone()).await[0].id.clone();
    west.delete_tags()
        .resources(&fresh)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(tags::PUBLISH_STATE)
                .build(),
        )
        .send()
        .await
        .expect("untag the copy");
    run(schedule.clone()).await;
    run(json!({"image_id": src, "revoke": [PARTNER]})).await;
    let source_tags = fixtures::tags_of(&acct.clients.ec2, &src).await;
    assert_eq!(
        source_tags[tags::PUBLISH_STATE],
        "published",
        "{source_tags}"
    );
    // A second image whose copies are refused in every region: more failed regions than one
    // tag value holds, so the record goes on in a numbered key.
    let (everywhere, _) = fixtures::image(
        &acct.clients.ec2,
        "keys-publish-everywhere",
        &[(tags::MANAGED, "true"), (tags::FAMILY, "web")],
    )
    .await;
    acct.inject_fault(
        json!({"service": "ec2", "action": "CopyImage", "status": 400,
        "code": "OperationNotPermitted", "message": "Copying is not permitted for this account."}),
    );
    run(json!({"image_id": everywhere})).await;
    acct.clear_faults();
    // Shared with the 25 default accounts; revoking one leaves a list too long for its tag.
    run(json!({"image_id": everywhere, "revoke": ["300000000004"]})).await;
    let everywhere_tags = fixtures::tags_of(&acct.clients.ec2, &everywhere).await;
    assert!(
        everywhere_tags
            .get(format!("{}2", tags::FAILED_REGIONS_MORE_PREFIX))
            .is_some(),
        "{everywhere_tags}"
    );
    assert_eq!(
        everywhere_tags[tags::publish::REVOKED],
        "300000000004",
        "{everywhere_tags}"
    );
    assert_exact(&acct, Function::Publish, &["image", "snapshot"]);
}

/// One create-image invocation at `now`.
async fn run(deps: &create_image::Deps, event: Value, now: chrono::DateTime<Utc>) {
    support::invoke(deps, &event, now)
        .await
        .unwrap_or_else(|e| panic!("create-image {event}: {e}"));
}

#[tokio::test]
async fn create_image_writes_exactly_its_keys_and_its_role_denies_the_others() {
    let acct = TestAccount::new().await;
    let bucket = format!("uploads-{}", acct.account_id);
    acct.bucket(&bucket, true).await;
    let (topic, _queue) = acct.topic_with_queue("ami-pipeline").await;
    let env_with = |method: &'static str| {
        let topic = topic.clone();
        move |k: &str| match k {
            "TOPIC_ARN" => Some(topic.clone()),
            "S3_FORCE_PATH_STYLE" => Some("true".into()),
            "UPLOAD_METHOD" => Some(method.into()),
            _ => None,
        }
    };
    let import_env = env_with("import-snapshot");
    let fast_env = env_with("auto");
    let importer: create_image::Deps = deps_as(&acct, &import_env, &bucket)
        .await
        .expect("create-image deps");
    let manual = |key: &str| json!({"bucket": bucket, "key": key, "tags": {"team": "web"}});
    // An import that stalls (the warning is recorded on its task)...
    acct.emulator_config(json!({"import_delay_seconds": 3600}));
    acct.put(&bucket, "keys/slow.raw", disks::raw_disk(1), &[])
        .await;
    run(&importer, manual("keys/slow.raw"), Utc::now()).await;
    let later = Utc::now() + chrono::Duration::hours(3);
    run(&importer, json!({"sweep": true}), later).await;
    // ...one that completes and is registered (task, snapshot and image tags, the outcome)...
    acct.emulator_config(json!({"import_delay_seconds": 0}));
    acct.put(&bucket, "keys/import.raw", disks::raw_disk(1), &[])
        .await;
    run(&importer, manual("keys/import.raw"), Utc::now()).await;
    run(&importer, json!({"sweep": true}), Utc::now()).await;
    // ...and the fast path (StartSnapshot's tags, then the registration's).
    let fast: create_image::Deps = deps_as(&acct, &fast_env, &bucket)
        .await
        .expect("create-image deps");
    acct.put(&bucket, "keys/fast.raw", disks::raw_disk(1), &[])
        .await;
    run(&fast, manual("keys/fast.raw"), Utc::now()).await;
    let wrote = written(&acct, Function::CreateImage);
    assert!(wrote["image"].contains("team"), "{wrote:?}");
    assert!(wrote["snapshot"].contains(tags::IMPORT_TASK), "{wrote:?}");
    assert!(
        wrote["import-snapshot-task"].contains(tags::STALE_WARNED),
        "{wrote:?}"
    );
    assert_exact(
        &acct,
        Function::CreateImage,
        &["image", "snapshot", "import-snapshot-task"],
    );
}

#[tokio::test]
async fn cleanup_writes_exactly_the_keys_its_role_allows() {
    let acct = TestAccount::new().await;
    let (topic, _queue) = acct.topic_with_queue("ami-pipeline").await;
    let env = |k: &str| match k {
        "TOPIC_ARN" => Some(topic.clone()),
        "S3_FORCE_PATH_STYLE" => Some("true".into()),
        "KEEP_NEWEST" => Some("1".into()),
        "MIN_AGE_DAYS" => Some("1".into()),
        "GRACE_DAYS" => Some("7".into()),
        _ => None,
    };
    let managed = [(tags::MANAGED, "true"), (tags::FAMILY, "web")];
    let (old, _) = fixtures::image(&acct.clients.ec2, "keys-old", &managed).await;
    acct.backdate_image(EAST, &old, Utc::now() - chrono::Duration::days(90));
    fixtures::image(&acct.clients.ec2, "keys-new", &managed).await;
    let report = acct
        .invoke::<cleanup::Deps>(
            &env,
            "unused-bucket",
            &json!({"dry_run": false}).to_string(),
        )
        .await
        .unwrap_or_else(|e| panic!("cleanup: {e}"));
    assert!(
        report.decisions.iter().any(|d| d.image_id == old
            && serde_json::to_value(d.action).ok() == Some(json!("deprecate"))),
        "{report:#?}"
    );
    assert_exact(&acct, Function::Cleanup, &["image"]);
}
