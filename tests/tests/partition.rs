//! A manual invoke naming a region outside the deployment's partition is refused before
//! anything is read or changed (issue #16, "regions checked against the deployment's
//! partition"): a commercial deployment (us-east-1 here) asked for `cn-north-1` would fail on
//! every call, in a partition its credentials do not exist in.

use serde_json::json;
use shared::invocation::InvocationError;
use support::{TestAccount, fixtures};

fn refused<T: std::fmt::Debug>(r: Result<T, InvocationError>, what: &str) -> String {
    match r {
        Err(InvocationError::InvalidEvent(m)) => m,
        other => panic!("{what}: expected InvalidEvent, got {other:?}"),
    }
}

#[tokio::test]
async fn every_function_refuses_regions_of_another_partition() {
    let acct = TestAccount::new().await;
    let (topic, queue) = acct.topic_with_queue("partition").await;
    let env = |k: &str| match k {
        "TOPIC_ARN" => Some(topic.clone()),
        "S3_FORCE_PATH_STYLE" => Some("true".into()),
        _ => None,
    };
    let (image, _) = fixtures::image(
        &acct.clients.ec2,
        "partition-src",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
        ],
    )
    .await;
    let cases = [
        (
            "cleanup",
            json!({"regions": ["us-east-1", "cn-north-1"], "dry_run": true}),
        ),
        (
            "publish",
            json!({"image_id": image, "regions": ["us-gov-west-1"]}),
        ),
        (
            "publish revoke",
            json!({"image_id": image, "region": "cn-northwest-1", "revoke": ["111122223333"]}),
        ),
        (
            "tag-lineage stamp",
            json!({"image_id": image, "region": "cn-north-1"}),
        ),
        (
            "tag-lineage children",
            json!({"children": image, "regions": ["cn-north-1"]}),
        ),
    ];
    for (what, event) in cases {
        let text = event.to_string();
        let message = match what {
            "cleanup" => refused(acct.invoke::<cleanup::Deps>(&env, "b", &text).await, what),
            w if w.starts_with("publish") => {
                refused(acct.invoke::<publish::Deps>(&env, "b", &text).await, what)
            }
            _ => refused(
                acct.invoke::<tag_lineage::Deps>(&env, "b", &text).await,
                what,
            ),
        };
        assert!(
            message.starts_with("invalid event: refused, nothing changed: ")
                && message.contains("not in this deployment's partition aws (region us-east-1)"),
            "{what}: {message}"
        );
    }
    // Nothing was announced and the image was not touched.
    assert!(acct.drain(&queue).await.is_empty());
    let tags = fixtures::tags_of(&acct.clients.ec2, &image).await;
    assert_eq!(tags.as_object().map(|t| t.len()), Some(2), "{tags:?}");
}
