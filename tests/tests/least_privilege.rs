//! What a compromised function could try with its role, refused by the role `template.yaml`
//! gives it (evaluated by the emulator's IAM gate as AWS would). Each test acts as one role with
//! the SDK directly - the attacker is the role, not the function's code - and checks the exact
//! refusal. That each function still does its job under its role is the rest of the suite.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, ImageBlockPublicAccessEnabledState, OperationType,
    ResourceType, SnapshotAttributeName, Tag, TagSpecification,
};
use shared::aws::clients::Clients;
use shared::plan::tags;
use std::fmt::Debug;
use support::roles::Function;
use support::{TestAccount, fixtures};

const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";

/// Asserts an EC2 call was refused with `code`, its message containing `needle`.
fn refused<T: Debug, E: ProvideErrorMetadata + Debug>(r: Result<T, E>, code: &str, needle: &str) {
    match r {
        Ok(v) => panic!("expected {code} ({needle}), the call succeeded: {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), Some(code), "{e:?}");
            let message = e.message().unwrap_or_default();
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn spec(resource: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(pairs.iter().map(|(k, v)| tag(k, v)).collect()))
        .build()
}

/// The role of `function` in `acct`, rendered from template.yaml with `vars` as the function's
/// environment.
async fn role(acct: &TestAccount, function: Function, vars: &[(&str, &str)]) -> Clients {
    let topic = format!("arn:aws:sns:{EAST}:{}:ami-pipeline", acct.account_id);
    let env = |k: &str| {
        if k == "TOPIC_ARN" {
            return Some(topic.clone());
        }
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    };
    acct.clients_as(function, &env).await
}

async fn create_tags(
    ec2: &aws_sdk_ec2::Client,
    resource: &str,
    pairs: &[(&str, &str)],
) -> Result<(), aws_sdk_ec2::Error> {
    ec2.create_tags()
        .resources(resource)
        .set_tags(Some(pairs.iter().map(|(k, v)| tag(k, v)).collect()))
        .send()
        .await
        .map(|_| ())
        .map_err(Into::into)
}

async fn delete_tag(
    ec2: &aws_sdk_ec2::Client,
    resource: &str,
    key: &str,
) -> Result<(), aws_sdk_ec2::Error> {
    ec2.delete_tags()
        .resources(resource)
        .tags(Tag::builder().key(key).build())
        .send()
        .await
        .map(|_| ())
        .map_err(Into::into)
}

async fn register(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    snapshot: &str,
    pairs: &[(&str, &str)],
) -> Result<String, aws_sdk_ec2::Error> {
    ec2.register_image()
        .name(name)
        .architecture("x86_64".into())
        .virtualization_type("hvm")
        .root_device_name("/dev/xvda")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().snapshot_id(snapshot).build())
                .build(),
        )
        .tag_specifications(spec(ResourceType::Image, pairs))
        .send()
        .await
        .map(|o| o.image_id().unwrap_or_default().to_owned())
        .map_err(Into::into)
}

const MANAGED: (&str, &str) = (tags::MANAGED, "true");

#[tokio::test]
async fn tag_lineage_cannot_hand_an_image_to_cleanup_or_publish() {
    let acct = TestAccount::new().await;
    let ec2 = role(&acct, Function::TagLineage, &[]).await.ec2;
    let (foreign, foreign_snap) = fixtures::image(&acct.clients.ec2, "made-elsewhere", &[]).await;
    let (managed, _) = fixtures::image(
        &acct.clients.ec2,
        "pipeline-web",
        &[MANAGED, (tags::FAMILY, "web")],
    )
    .await;
    // The marker cleanup and publish trust: never writable by tag-lineage.
    refused(
        create_tags(&ec2, &foreign, &[MANAGED]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    refused(
        delete_tag(&ec2, &managed, tags::MANAGED).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    // Protection is a person's; publish's and cleanup's state and policy are theirs.
    refused(
        create_tags(&ec2, &managed, &[(tags::PROTECT_TAG, "false")]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    for key in [
        tags::PUBLISH_STATE,
        tags::DEPRECATED_BY,
        tags::publish::ACCOUNTS,
    ] {
        refused(
            create_tags(&ec2, &managed, &[(key, "x")]).await,
            "UnauthorizedOperation",
            &format!("image/{managed}"),
        );
    }
    // No move from one family to another (what cleanup keeps in both would change).
    refused(
        create_tags(&ec2, &managed, &[(tags::FAMILY, "db")]).await,
        "UnauthorizedOperation",
        &format!("image/{managed}"),
    );
    // No upload provenance on a foreign snapshot (create-image's fast path would take it for an
    // upload's snapshot).
    refused(
        create_tags(
            &ec2,
            &foreign_snap,
            &[
                (tags::SOURCE_TOKEN, "t"),
                (tags::UPLOAD_METHOD, "ebs-direct"),
            ],
        )
        .await,
        "UnauthorizedOperation",
        &format!("snapshot/{foreign_snap}"),
    );
    // Its job: lineage on any image, a family where there is none.
    create_tags(
        &ec2,
        &foreign,
        &[(tags::SOURCE_REGION, EAST), (tags::FAMILY, "web")],
    )
    .await
    .expect("lineage on a foreign image");
}

#[tokio::test]
async fn create_image_cannot_register_a_foreign_snapshot_or_choose_sharing() {
    let acct = TestAccount::new().await;
    let ec2 = role(&acct, Function::CreateImage, &[]).await.ec2;
    // A database backup: a snapshot of someone's volume, untagged by the pipeline.
    let backup = fixtures::snapshot(&acct.clients.ec2, &[("Name", "orders-db-backup")]).await;
    refused(
        register(&ec2, "stolen-db", &backup, &[MANAGED]).await,
        "UnauthorizedOperation",
        &format!("ec2:RegisterImage on resource: arn:aws:ec2:{EAST}::snapshot/{backup}"),
    );
    // Sharing, publicity and regions are not create-image's to choose, even on its own images.
    let pipeline_snap = fixtures::snapshot(&acct.clients.ec2, &[MANAGED]).await;
    for key in [
        tags::publish::ACCOUNTS,
        tags::publish::PUBLIC,
        tags::publish::REGIONS,
    ] {
        refused(
            register(&ec2, "upload-1", &pipeline_snap, &[MANAGED, (key, "x")]).await,
            "UnauthorizedOperation",
            "with an explicit deny",
        );
    }
    let image = register(
        &ec2,
        "upload-1",
        &pipeline_snap,
        &[MANAGED, ("team", "web")],
    )
    .await
    .expect("its job: a managed image from a pipeline snapshot, with the uploader's tags");
    // The marker only at creation; protection never.
    let (foreign, _) = fixtures::image(&acct.clients.ec2, "made-elsewhere", &[]).await;
    refused(
        create_tags(&ec2, &foreign, &[MANAGED]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    refused(
        create_tags(&ec2, &pipeline_snap, &[(tags::PROTECT_TAG, "true")]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    refused(
        create_tags(&ec2, &image, &[(tags::READY_AT, "2026-11-22T12:00:00Z")]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    // What IAM cannot tell (README, "IAM, per role"): an untagged snapshot of the region looks
    // like a fresh import, so the role may still mark it managed (the imported snapshot's one
    // exception); a snapshot marked otherwise is refused.
    create_tags(&ec2, &backup, &[MANAGED])
        .await
        .expect("the documented gap");
    let marked = fixtures::snapshot(&acct.clients.ec2, &[(tags::MANAGED, "false")]).await;
    refused(
        create_tags(&ec2, &marked, &[MANAGED]).await,
        "UnauthorizedOperation",
        &format!("snapshot/{marked}"),
    );
}

#[tokio::test]
async fn publish_copies_only_own_images_into_its_regions_and_never_makes_anything_public() {
    let acct = TestAccount::new().await;
    let clients = role(&acct, Function::Publish, &[("PUBLISH_REGIONS", WEST)]).await;
    let west = clients.for_region(WEST).ec2;
    let copy_tags = |source: &str| {
        let pairs = [
            (tags::PUBLISH_SOURCE, source),
            (tags::PUBLISH_STATE, "copy"),
            MANAGED,
        ];
        vec![
            spec(ResourceType::Image, &pairs),
            spec(ResourceType::Snapshot, &pairs),
        ]
    };
    let copy = |ec2: aws_sdk_ec2::Client, source: String, name: &'static str| {
        let specs = copy_tags(&source);
        async move {
            ec2.copy_image()
                .source_image_id(&source)
                .source_region(EAST)
                .name(name)
                .set_tag_specifications(Some(specs))
                .send()
                .await
                .map(|o| o.image_id().unwrap_or_default().to_owned())
                .map_err(aws_sdk_ec2::Error::from)
        }
    };
    // A public image of another account (ec2:Owner of the source is that account).
    let vendor = TestAccount::new().await;
    let (public, public_snap) = fixtures::image(&vendor.clients.ec2, "vendor-public", &[]).await;
    fixtures::make_public(&vendor.clients.ec2, &public)
        .await
        .expect("vendor makes its image public");
    vendor
        .clients
        .ec2
        .modify_snapshot_attribute()
        .snapshot_id(&public_snap)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .operation_type(OperationType::Add)
        .group_names("all")
        .send()
        .await
        .expect("and its snapshot");
    refused(
        copy(west.clone(), public.clone(), "vendor-copy").await,
        "UnauthorizedOperation",
        &format!("ec2:CopyImage on resource: arn:aws:ec2:{EAST}::image/{public}"),
    );
    // Its own managed image: copied into PublishRegions only.
    let (own, _) = fixtures::image(&acct.clients.ec2, "web-1", &[MANAGED]).await;
    refused(
        copy(clients.for_region("eu-west-1").ec2, own.clone(), "web-1-eu").await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    let copied = copy(west.clone(), own.clone(), "web-1-west")
        .await
        .expect("its job: a copy into PublishRegions");
    // Public=never (the default): no snapshot is made public...
    let copy_tags_read = fixtures::tags_of(&acct.clients.for_region(WEST).ec2, &copied).await;
    assert_eq!(copy_tags_read[tags::MANAGED], "true", "tagged at creation");
    let snap = acct
        .clients
        .for_region(WEST)
        .ec2
        .describe_images()
        .image_ids(&copied)
        .send()
        .await
        .expect("describe copy")
        .images()[0]
        .block_device_mappings()[0]
        .ebs()
        .and_then(|e| e.snapshot_id())
        .unwrap_or_default()
        .to_owned();
    let public_snapshot = west
        .modify_snapshot_attribute()
        .snapshot_id(&snap)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .operation_type(OperationType::Add)
        .group_names("all")
        .send()
        .await;
    refused(
        public_snapshot,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    // ...and with block public access for AMIs on (README: the operator's part), no image
    // either: EC2 refuses, and the role cannot lift the block.
    west.get_image_block_public_access_state()
        .send()
        .await
        .expect("publish reads the state");
    acct.clients
        .for_region(WEST)
        .ec2
        .enable_image_block_public_access()
        .image_block_public_access_state(ImageBlockPublicAccessEnabledState::BlockNewSharing)
        .send()
        .await
        .expect("operator enables block public access");
    let public_image = fixtures::make_public(&west, &copied).await;
    refused(public_image, "OperationNotPermitted", "block public access");
    refused(
        west.disable_image_block_public_access().send().await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    // The marker only at creation; protection never.
    let (foreign, _) = fixtures::image(&acct.clients.ec2, "made-elsewhere", &[]).await;
    refused(
        create_tags(&clients.ec2, &foreign, &[MANAGED]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    refused(
        delete_tag(&clients.ec2, &own, tags::PROTECT_TAG).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
}

#[tokio::test]
async fn cleanup_cannot_unprotect_adopt_or_remove_a_protected_image() {
    let acct = TestAccount::new().await;
    let ec2 = role(&acct, Function::Cleanup, &[]).await.ec2;
    let (protected, _) = fixtures::image(
        &acct.clients.ec2,
        "web-golden",
        &[MANAGED, (tags::PROTECT_TAG, "true")],
    )
    .await;
    let (foreign, _) = fixtures::image(&acct.clients.ec2, "made-elsewhere", &[]).await;
    refused(
        delete_tag(&ec2, &protected, tags::PROTECT_TAG).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    refused(
        create_tags(&ec2, &protected, &[(tags::PROTECT_TAG, "false")]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    refused(
        create_tags(&ec2, &foreign, &[MANAGED]).await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    refused(
        ec2.deregister_image().image_id(&foreign).send().await,
        "UnauthorizedOperation",
        &format!("image/{foreign}"),
    );
    // A protected image is the planner's first exclusion, and IAM's too.
    refused(
        ec2.deregister_image().image_id(&protected).send().await,
        "UnauthorizedOperation",
        "with an explicit deny",
    );
    let (unprotected, _) = fixtures::image(
        &acct.clients.ec2,
        "web-old",
        &[MANAGED, (tags::PROTECT_TAG, "False")],
    )
    .await;
    ec2.deregister_image()
        .image_id(&unprotected)
        .send()
        .await
        .expect("its job: a managed image whose protect tag says false");
    // Its job: its own mark on the images it deprecates.
    create_tags(&ec2, &protected, &[(tags::DEPRECATED_BY, "cleanup")])
        .await
        .expect("the deprecation mark");
}
