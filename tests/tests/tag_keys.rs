//! The tag keys each function writes are exactly those its role allows.
//!
//! Every integration test already runs the functions under their `template.yaml` roles, so a
//! write the role does not allow fails there (writes ⊆ allowed). These tests check the other
//! direction for the roles whose CreateTags statements limit the keys (`aws:TagKeys`): each
//! allowed key pattern is used by the function in a scenario that exercises all of its writes,
//! so no pattern is broader than the job. The keys come from the emulator's log of what each
//! role was allowed to write (`/ami-pipeline-emulator/iam/tag-writes`); the patterns from the
//! policies the emulator rendered from `template.yaml` (`/ami-pipeline-emulator/iam/role-policies`).

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use support::roles::Function;
use support::{TestAccount, aws_events, fixtures};

const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";
const PARTNER: &str = "111122223333";

/// `aws:TagKeys` patterns of the role's Allow statements on `ec2:CreateTags`.
fn allowed_patterns(acct: &TestAccount, function: Function) -> BTreeSet<String> {
    let path = format!(
        "/ami-pipeline-emulator/iam/role-policies?account_id={}&role_name={}",
        acct.account_id,
        function.role_name()
    );
    let policies = acct.control("GET", &path, None);
    let mut out = BTreeSet::new();
    for policy in policies["policies"].as_array().into_iter().flatten() {
        let statements = match &policy["Statement"] {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for st in statements {
            let actions = match &st["Action"] {
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
                Value::String(s) => vec![s.as_str()],
                _ => vec![],
            };
            if st["Effect"] != "Allow" || !actions.contains(&"ec2:CreateTags") {
                continue;
            }
            match &st["Condition"]["ForAllValues:StringLike"]["aws:TagKeys"] {
                Value::Array(keys) => {
                    out.extend(keys.iter().filter_map(Value::as_str).map(str::to_owned))
                }
                Value::String(k) => {
                    out.insert(k.clone());
                }
                _ => {}
            }
        }
    }
    out
}

/// Keys the role wrote, over all resource types.
fn written(acct: &TestAccount, function: Function) -> BTreeMap<String, BTreeSet<String>> {
    let path = format!(
        "/ami-pipeline-emulator/iam/tag-writes?account_id={}",
        acct.account_id
    );
    let log = acct.control("GET", &path, None);
    let mut out = BTreeMap::new();
    if let Some(types) = log["roles"][function.role_name()].as_object() {
        for (rtype, keys) in types {
            out.insert(
                rtype.clone(),
                keys.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    out
}

fn matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    }
}

/// Every pattern is used, and every key written is allowed by a pattern.
fn assert_exact(patterns: &BTreeSet<String>, wrote: &BTreeMap<String, BTreeSet<String>>) {
    assert!(!patterns.is_empty(), "the role limits no tag keys");
    let all: BTreeSet<&String> = wrote.values().flatten().collect();
    let unused: Vec<_> = patterns
        .iter()
        .filter(|p| !all.iter().any(|k| matches(p, k)))
        .collect();
    assert!(
        unused.is_empty(),
        "the role allows tag keys the function never writes: {unused:?} (wrote {wrote:?})"
    );
    let outside: Vec<_> = all
        .iter()
        .filter(|k| !patterns.iter().any(|p| matches(p, k)))
        .collect();
    assert!(outside.is_empty(), "written but not allowed: {outside:?}");
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
    // A root, an image made from an instance of it, and a copy of that one in another region:
    // every lineage key there is.
    let (root, _) = fixtures::image(&east, "keys-root", &[]).await;
    let instance = fixtures::instance(&east, &root).await;
    let child = fixtures::image_from_instance(&east, &instance, "keys-child").await;
    let copy = fixtures::copy(&west, &child, EAST, "keys-copy").await;
    for (region, image) in [(EAST, &root), (EAST, &child), (WEST, &copy)] {
        let event = aws_events::ami_state_change(region, image, "available", "");
        acct.invoke::<tag_lineage::Deps>(&env, "unused-bucket", &event.to_string())
            .await
            .unwrap_or_else(|e| panic!("stamping {image}: {e}"));
    }
    let wrote = written(&acct, Function::TagLineage);
    assert_exact(&allowed_patterns(&acct, Function::TagLineage), &wrote);
}

#[tokio::test]
async fn publish_writes_exactly_the_keys_its_role_allows() {
    let acct = TestAccount::new().await;
    let (topic, _queue) = acct.topic_with_queue("ami-pipeline").await;
    let env = |k: &str| match k {
        "TOPIC_ARN" => Some(topic.clone()),
        "S3_FORCE_PATH_STYLE" => Some("true".into()),
        "PUBLISH_REGIONS" => Some(WEST.into()),
        _ => None,
    };
    let (src, _) = fixtures::image(
        &acct.clients.ec2,
        "keys-publish",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
            ("ami-pipeline:generation", "0"),
            ("create_date", "20261122T120000Z"),
            ("create_timestamp", "1795435200"),
        ],
    )
    .await;
    // A manual publish with overrides (recorded as publish:* tags), which copies, stamps the
    // copy's lineage and finishes; then a revoke (recorded as publish:* tags).
    let requests = [
        json!({"image_id": src, "regions": [WEST], "accounts": [PARTNER]}),
        json!({"image_id": src}),
        json!({"image_id": src, "revoke": [PARTNER]}),
    ];
    for request in requests {
        acct.invoke::<publish::Deps>(&env, "unused-bucket", &request.to_string())
            .await
            .unwrap_or_else(|e| panic!("publish {request}: {e}"));
    }
    let wrote = written(&acct, Function::Publish);
    assert!(
        wrote.values().flatten().any(|k| k.starts_with("publish:")),
        "{wrote:?}"
    );
    assert_exact(&allowed_patterns(&acct, Function::Publish), &wrote);
}
