//! publish against the local emulator, through the real handler: copies to three regions with
//! their lineage, shares with accounts and an OU (images and snapshots, read back), public
//! with and without image block public access, a region that refuses and its retry by the
//! schedule, duplicate events, the schedule finishing what an event started, manual overrides
//! recorded on the image, deprecation, revoke, the `image.published` message on an SQS
//! subscriber, and bad input that changes nothing.

use aws_sdk_ec2::types::ImageBlockPublicAccessEnabledState;
use chrono::Utc;
use publish::{Deps, Output};
use serde_json::{Value, json};
use shared::invocation::InvocationError;
use shared::model::Select;
use shared::plan::publish::{self as plan, Grants, PublishStatus};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{MANY_REGIONS, aws_events, fixtures};

const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";
const EU: &str = "eu-west-1";
const SYD: &str = "ap-southeast-2";
const PARTNER: &str = "111122223333";
const OU: &str = "arn:aws:organizations::123456789012:ou/o-exampleorg1/ou-ab12-cdef3456";

type World = support::World<Deps>;

async fn world(env: &[(&str, &str)]) -> World {
    World::new(env).await
}

/// The tags of a managed, stamped source image, with `extra`.
fn source_tags<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut tags = vec![
        ("ami-pipeline:managed", "true"),
        ("ami-pipeline:family", "web"),
        ("ami-pipeline:generation", "0"),
        ("create_date", "20261122T120000Z"),
        ("create_timestamp", "1795435200"),
    ];
    tags.extend_from_slice(extra);
    tags
}

/// This file's helpers on the world.
trait Helpers {
    async fn source(&self, name: &str, extra: &[(&str, &str)]) -> (String, String);
    async fn encrypted_source(&self, name: &str, extra: &[(&str, &str)]) -> (String, String);
    async fn try_run(&self, event: Value) -> Result<Output, InvocationError>;
    async fn run(&self, event: Value) -> Output;
    fn ready_event(&self, image: &str) -> Value;
    fn schedule() -> Value;
    async fn image(&self, region: &str, id: &str) -> shared::model::Image;
    async fn launch(&self, region: &str, id: &str) -> Grants;
    async fn volume(&self, region: &str, snap: &str) -> Grants;
    async fn copies(&self, region: &str, source: &str) -> Vec<shared::model::Image>;
    async fn messages(&self, event_type: &str) -> Vec<Value>;
    async fn block_public(&self, region: &str, which: Block, on: bool);
}

impl Helpers for World {
    /// A managed, stamped source image in us-east-1 with extra tags; returns (image, snapshot).
    async fn source(&self, name: &str, extra: &[(&str, &str)]) -> (String, String) {
        fixtures::image(&self.ec2(EAST), name, &source_tags(extra)).await
    }

    /// [`Helpers::source`] with its snapshot encrypted with the account's default EBS key (the
    /// AWS managed `aws/ebs`).
    async fn encrypted_source(&self, name: &str, extra: &[(&str, &str)]) -> (String, String) {
        let (ec2, tags) = (self.ec2(EAST), source_tags(extra));
        let snap = fixtures::encrypted_snapshot(&ec2, &tags).await;
        (fixtures::register(&ec2, name, &snap, &tags).await, snap)
    }

    async fn try_run(&self, event: Value) -> Result<Output, InvocationError> {
        self.invoke(&event).await
    }

    async fn run(&self, event: Value) -> Output {
        self.try_run(event.clone())
            .await
            .unwrap_or_else(|e| panic!("publish failed on {event}: {e}"))
    }

    fn ready_event(&self, image: &str) -> Value {
        aws_events::sns(
            &self.topic,
            &json!({"version": "1", "event_type": "image.ready", "time": "2026-11-22T12:00:00Z",
                    "region": EAST, "image_id": image}),
        )
    }

    fn schedule() -> Value {
        json!({"version": "0", "id": "5e0b1c2d-0000-4000-8000-000000000001",
               "detail-type": "Scheduled Event", "source": "aws.events",
               "account": "123456789012", "time": "2026-11-22T12:05:00Z", "region": EAST,
               "resources": ["arn:aws:events:us-east-1:123456789012:rule/publish-advance"], "detail": {}})
    }

    async fn image(&self, region: &str, id: &str) -> shared::model::Image {
        shared::aws::ec2::describe_own_image(&self.ec2(region), id)
            .await
            .expect("describe")
            .unwrap_or_else(|| panic!("{id} not found in {region}"))
    }

    async fn launch(&self, region: &str, id: &str) -> Grants {
        Grants::from_entries(
            &shared::aws::ec2::launch_permissions(&self.ec2(region), id)
                .await
                .expect("launch permissions"),
        )
    }

    async fn volume(&self, region: &str, snap: &str) -> Grants {
        Grants::from_entries(
            &shared::aws::ec2::create_volume_permissions(&self.ec2(region), snap)
                .await
                .expect("create volume permissions"),
        )
    }

    async fn copies(&self, region: &str, source: &str) -> Vec<shared::model::Image> {
        shared::aws::ec2::describe_own_images(
            &self.ec2(region),
            &[Select::tag(plan::PUBLISH_SOURCE, [source])],
        )
        .await
        .expect("describe copies")
    }

    async fn messages(&self, event_type: &str) -> Vec<Value> {
        self.acct
            .drain(&self.queue)
            .await
            .into_iter()
            .filter(|m| m["event_type"] == event_type)
            .collect()
    }

    async fn block_public(&self, region: &str, which: Block, on: bool) {
        let ec2 = self.ec2(region);
        match (which, on) {
            (Block::Images, true) => {
                ec2.enable_image_block_public_access()
                    .image_block_public_access_state(
                        ImageBlockPublicAccessEnabledState::BlockNewSharing,
                    )
                    .send()
                    .await
                    .expect("enable block public access for AMIs");
            }
            (Block::Images, false) => {
                ec2.disable_image_block_public_access()
                    .send()
                    .await
                    .expect("disable block public access for AMIs");
            }
            (Block::Snapshots, true) => {
                ec2.enable_snapshot_block_public_access()
                    .state(aws_sdk_ec2::types::SnapshotBlockPublicAccessState::BlockNewSharing)
                    .send()
                    .await
                    .expect("enable block public access for snapshots");
            }
            (Block::Snapshots, false) => {
                ec2.disable_snapshot_block_public_access()
                    .send()
                    .await
                    .expect("disable block public access for snapshots");
            }
        }
    }
}

/// Which block public access setting a test turns on.
#[derive(Clone, Copy)]
enum Block {
    Images,
    Snapshots,
}

/// A public publish into us-west-2 while `which` blocks public sharing there: a manual request
/// is refused with nothing changed (its error naming `refusal`); the event path publishes
/// us-east-1 and reports us-west-2 failed (its detail naming `detail`); once unblocked, the
/// schedule makes the copy and its snapshot public, announced once.
async fn blocked_then_finished(which: Block, name: &str, refusal: &str, detail: &str) {
    let w = world(&[("PUBLISH_REGIONS", WEST), ("PUBLIC", "opt-in")]).await;
    let (src, snap) = w.source(name, &[("publish:public", "true")]).await;
    w.block_public(WEST, which, true).await;

    // A manual request is refused outright, with nothing changed.
    let err = w
        .try_run(json!({"image_id": src}))
        .await
        .expect_err("blocked");
    assert_eq!(err.error_type(), "PublicAccessBlocked");
    assert!(
        err.to_string().contains(refusal) && err.to_string().contains(&src),
        "{err}"
    );
    assert!(w.copies(WEST, &src).await.is_empty());
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert!(tags.get(plan::PUBLISH_STATE).is_none(), "{tags}");

    // The event path publishes where it can and names the blocked region.
    w.run(w.ready_event(&src)).await;
    let partial = w.run(World::schedule()).await;
    let r = &advanced(&partial)[0];
    assert_eq!(r.status, "partial", "{r:#?}");
    assert_eq!(r.regions[EAST].outcome, "published");
    assert_eq!(r.regions[WEST].outcome, "failed");
    assert!(
        r.regions[WEST]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains(detail)),
        "{r:#?}"
    );
    assert!(w.image(EAST, &src).await.public);
    assert!(w.volume(EAST, &snap).await.public);
    let copy = w.copies(WEST, &src).await[0].clone();
    assert!(!w.image(WEST, &copy.id).await.public);
    let partials = w.messages("image.publish-partial").await;
    assert_eq!(partials.len(), 1);
    assert_eq!(partials[0]["publication"]["failed_regions"], json!([WEST]));
    // The same failure again is not announced again.
    w.run(World::schedule()).await;
    assert!(w.messages("image.publish-partial").await.is_empty());

    w.block_public(WEST, which, false).await;
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    assert!(w.image(WEST, &copy.id).await.public);
    assert!(w.volume(WEST, &copy.snapshot_ids[0]).await.public);
    let msgs = w.messages("image.published").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["publication"]["public"], true);
}

fn result(out: &Output) -> &publish::ImageReport {
    match out {
        Output::Publish { result, .. } => result,
        other => panic!("expected a publish result, got {other:?}"),
    }
}

/// Runs the schedule once a second until it publishes `src` (for at most a minute: copies are
/// pending for the emulator's copy delay, however slow the machine), each run before that still
/// copying with nothing shared; returns the run that published.
async fn schedule_until_published(w: &World, src: &str) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sched = w.run(World::schedule()).await;
        let done = advanced(&sched);
        if done.first().is_some_and(|r| r.status == "published") {
            return sched;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not published in 60 s: {done:#?}"
        );
        assert!(done.iter().all(|r| r.status == "copying"), "{done:#?}");
        assert!(w.launch(EAST, src).await.is_empty(), "shared while copying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn advanced(out: &Output) -> &[publish::ImageReport] {
    match out {
        Output::Advance { results, .. } => results,
        other => panic!("expected an advance result, got {other:?}"),
    }
}

#[tokio::test]
async fn copies_to_three_regions_with_lineage_shares_and_announces_once() {
    let w = world(&[
        ("PUBLISH_REGIONS", "us-west-2,eu-west-1,ap-southeast-2"),
        ("SHARE_ACCOUNTS", PARTNER),
        ("SHARE_OUS", OU),
        ("DEPRECATE_AFTER_DAYS", "30"),
    ])
    .await;
    // Long enough that the duplicate below finds the copies pending on a loaded machine.
    w.acct.emulator_config(json!({"copy_delay_seconds": 10}));
    let (src, src_snap) = w.source("web-base-1", &[]).await;

    // The event starts the copies; nothing is shared while any copy is in flight.
    let first = w.run(w.ready_event(&src)).await;
    let r = result(&first);
    assert_eq!(r.status, "copying", "{r:#?}");
    for region in [WEST, EU, SYD] {
        assert_eq!(r.regions[region].outcome, "copying", "{region}: {r:#?}");
    }
    assert!(w.launch(EAST, &src).await.is_empty(), "shared too early");
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert_eq!(tags[plan::PUBLISH_STATE], "in-progress");
    assert!(w.messages("image.published").await.is_empty());

    // A duplicate event while copying starts no second copy (found by tag; same ClientToken).
    let again = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&again).status, "copying");
    for region in [WEST, EU, SYD] {
        assert_eq!(w.copies(region, &src).await.len(), 1, "{region}");
    }

    // The schedule finishes it once the copies are available.
    let sched = schedule_until_published(&w, &src).await;
    let done = advanced(&sched);
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(done[0].status, "published", "{:#?}", done[0]);
    assert_eq!(done[0].announced, Some("image.published"));

    let src_image = w.image(EAST, &src).await;
    let deprecation = src_image
        .deprecation_time
        .clone()
        .expect("deprecation set on the source");
    let in_30_days = Utc::now() + chrono::Duration::days(30);
    assert!(
        deprecation.starts_with(&in_30_days.format("%Y-%m-%d").to_string())
            || deprecation.starts_with(
                &(in_30_days - chrono::Duration::days(1))
                    .format("%Y-%m-%d")
                    .to_string()
            ),
        "{deprecation}"
    );
    let want = Grants {
        accounts: [PARTNER.to_owned()].into(),
        ous: [OU.to_owned()].into(),
        ..Grants::default()
    };
    assert_eq!(w.launch(EAST, &src).await, want);
    assert_eq!(
        w.volume(EAST, &src_snap).await.accounts,
        want.accounts,
        "the source snapshot is shared with the account (snapshots have no OU form)"
    );
    for region in [WEST, EU, SYD] {
        let copies = w.copies(region, &src).await;
        assert_eq!(copies.len(), 1, "{region}");
        let copy = w.image(region, &copies[0].id).await;
        assert_eq!(copy.state, "available");
        assert_eq!(copy.source_image_id.as_deref(), Some(src.as_str()));
        assert_eq!(copy.tags["source_image"], src, "{region} lineage");
        assert_eq!(copy.tags["source_region"], EAST);
        assert_eq!(copy.tags["ami-pipeline:generation"], "1");
        assert_eq!(copy.tags["ami-pipeline:family"], "web");
        assert_eq!(copy.tags[plan::PUBLISH_STATE], "copy");
        assert_eq!(copy.deprecation_time.as_deref(), Some(deprecation.as_str()));
        assert_eq!(w.launch(region, &copy.id).await, want, "{region}");
        for snap in &copy.snapshot_ids {
            let snap_tags = fixtures::tags_of(&w.ec2(region), snap).await;
            assert_eq!(snap_tags["source_image"], src, "{region} snapshot lineage");
            assert_eq!(w.volume(region, snap).await.accounts, want.accounts);
        }
    }
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert_eq!(tags[plan::PUBLISH_STATE], "published");

    // The message, as a subscriber receives it.
    let msgs = w.messages("image.published").await;
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    let m = &msgs[0];
    assert_eq!(m["image_id"], src.as_str());
    assert_eq!(m["region"], EAST);
    assert_eq!(m["family"], "web");
    assert_eq!(m["lineage"]["create_date"], "20261122T120000Z");
    let p = &m["publication"];
    assert_eq!(p["regions"].as_object().map(|o| o.len()), Some(4), "{p}");
    for region in [EAST, WEST, EU, SYD] {
        assert_eq!(p["regions"][region]["outcome"], "published", "{region}");
        assert!(
            p["regions"][region]["image_id"]
                .as_str()
                .is_some_and(|i| i.starts_with("ami-"))
        );
    }
    assert_eq!(p["shares"]["accounts"], json!([PARTNER]));
    assert_eq!(p["shares"]["ous"], json!([OU]));
    assert_eq!(p["public"], false);
    assert_eq!(p["deprecation_time"], deprecation.as_str());
    assert_eq!(p["failed_regions"], json!([]));

    // Duplicates change nothing and announce nothing.
    let dup = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&dup).status, "already-published");
    let idle = w.run(World::schedule()).await;
    assert!(advanced(&idle).is_empty());
    assert!(w.acct.drain(&w.queue).await.is_empty());
    for region in [WEST, EU, SYD] {
        assert_eq!(w.copies(region, &src).await.len(), 1, "{region}");
    }
}

#[tokio::test]
async fn the_schedule_completes_slow_copies_and_manual_overrides_are_recorded() {
    let w = world(&[("PUBLISH_REGIONS", "eu-west-1,us-west-2")]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 10}));
    let (src, _) = w.source("web-slow-1", &[]).await;
    // A manual publish to one of the allowed regions only, and another account than the
    // defaults say.
    let out = w
        .run(json!({"image_id": src, "regions": [WEST], "accounts": [PARTNER]}))
        .await;
    assert_eq!(result(&out).status, "copying");
    assert!(
        !result(&out).regions.contains_key(EU),
        "the override replaced the default regions"
    );
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert_eq!(tags["publish:regions"], WEST);
    assert_eq!(tags["publish:accounts"], PARTNER);

    // Still pending: the schedule waits and shares nothing.
    let waiting = w.run(World::schedule()).await;
    assert_eq!(advanced(&waiting)[0].status, "copying");
    assert_eq!(advanced(&waiting)[0].regions[WEST].outcome, "copying");
    assert!(w.launch(EAST, &src).await.is_empty());

    schedule_until_published(&w, &src).await;
    let copy = &w.copies(WEST, &src).await[0];
    assert_eq!(
        w.launch(WEST, &copy.id).await.accounts,
        [PARTNER.to_owned()].into()
    );
    assert_eq!(w.messages("image.published").await.len(), 1);
}

/// EC2 is eventually consistent: a copy just started is not listed by its tag, and the source's
/// publish state just written is not seen by the schedule's tag query. A duplicate event within
/// that window must not start a second copy (the ClientToken returns the first), and the
/// schedule finishes the publication once the state is visible: one copy, one announcement.
#[tokio::test]
async fn with_eventual_consistency_a_duplicate_event_makes_no_second_copy_and_the_schedule_finishes()
 {
    // Long enough for two runs on a loaded machine (the guard below says when it was not).
    const LAG_SECONDS: u64 = 8;
    let w = world(&[
        ("PUBLISH_REGIONS", "us-west-2"),
        ("SHARE_ACCOUNTS", PARTNER),
    ])
    .await;
    let (src, _) = w.source("web-lag-1", &[]).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": LAG_SECONDS})),
    );
    let started = std::time::Instant::now();
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).status, "copying", "{first:#?}");
    assert!(
        w.copies(WEST, &src).await.is_empty(),
        "the lag hides the new copy"
    );
    let again = w.run(w.ready_event(&src)).await;
    assert!(
        started.elapsed() < Duration::from_secs(LAG_SECONDS),
        "the duplicate must arrive within the lag for this test to mean anything"
    );
    assert_ne!(result(&again).status, "failed", "{again:#?}");
    tokio::time::sleep(Duration::from_secs(LAG_SECONDS) + Duration::from_millis(500)).await;
    assert_eq!(w.copies(WEST, &src).await.len(), 1, "one copy per region");
    let mut status = String::new();
    // Each schedule run may wait out the lag verifying the shares (about 9 s each here, alone):
    // room for a few, and for a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(8 * LAG_SECONDS);
    while std::time::Instant::now() < deadline {
        let sched = w.run(World::schedule()).await;
        if let Some(r) = advanced(&sched).first() {
            status = r.status.to_string();
        }
        if status == "published" {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(status, "published");
    assert_eq!(w.copies(WEST, &src).await.len(), 1, "one copy per region");
    assert_eq!(w.messages("image.published").await.len(), 1);
    assert_eq!(
        w.launch(EAST, &src).await.accounts,
        [PARTNER.to_owned()].into()
    );
}

#[tokio::test]
async fn public_is_refused_while_blocked_and_finished_once_unblocked() {
    blocked_then_finished(
        Block::Images,
        "web-public-1",
        "in us-west-2 block public access for AMIs is on (block-new-sharing",
        "DisableImageBlockPublicAccess",
    )
    .await;

    // PUBLIC=never refuses an image that asks for it.
    let strict = world(&[("PUBLIC", "never")]).await;
    let (other, _) = strict
        .source("web-public-2", &[("publish:public", "true")])
        .await;
    let err = strict
        .try_run(strict.ready_event(&other))
        .await
        .expect_err("never");
    assert_eq!(err.error_type(), "InvalidPolicy");
    assert!(!strict.image(EAST, &other).await.public);
}

/// EC2 holds public images to a quota per Region (Service Quotas "Public AMIs", 5 unless
/// raised): past it, ModifyImageAttribute refuses the whole call. Before, the account shares
/// went in the same call as `all`, so they were refused with it. Now they go first: the image
/// is shared with the account, the region fails naming the quota, and once a place is free the
/// schedule makes it public.
#[tokio::test]
async fn past_the_public_image_quota_the_other_shares_land_and_the_schedule_finishes() {
    let w = world(&[("PUBLIC", "opt-in"), ("SHARE_ACCOUNTS", PARTNER)]).await;
    let ec2 = w.ec2(EAST);
    let mut others = Vec::new();
    for n in 0..5 {
        let (id, _) = fixtures::image(&ec2, &format!("other-public-{n}"), &[]).await;
        fixtures::make_public(&ec2, &id).await.expect("public");
        others.push(id);
    }
    let (src, _) = w.source("web-quota", &[("publish:public", "true")]).await;
    w.run(w.ready_event(&src)).await;
    let out = w.run(World::schedule()).await;
    let r = &advanced(&out)[0];
    assert_eq!(r.status, "partial", "{r:#?}");
    let detail = r.regions[EAST].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("not made public, the other shares are in place")
            && detail.contains("quota of 5"),
        "{detail}"
    );
    let shared = w.launch(EAST, &src).await;
    assert!(
        shared.accounts.contains(PARTNER) && !shared.public,
        "{shared:?}"
    );
    assert!(!w.image(EAST, &src).await.public);

    // A place freed: the schedule finishes the publication.
    fixtures::set_public(&ec2, &others[0], false)
        .await
        .expect("private");
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    assert!(w.image(EAST, &src).await.public);
    assert_eq!(w.messages("image.published").await.len(), 1);
}

/// EC2's reads are eventually consistent, DescribeImageAttribute and DescribeSnapshotAttribute
/// included. Before, publish read each grant back once, right after making it: with the
/// account's reads a few seconds behind (the emulator's lag), every share was reported as not
/// applied and the image as partial. Now the read-back waits a few seconds for the grant, and
/// the image is published in one run, announced once, with no partial.
#[tokio::test]
async fn grants_read_back_a_few_seconds_behind_still_publish_in_one_run() {
    let w = world(&[("SHARE_ACCOUNTS", PARTNER)]).await;
    let (src, src_snap) = w.source("web-lagging-reads", &[]).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": 2})),
    );
    let out = w.run(w.ready_event(&src)).await;
    let r = result(&out);
    assert_eq!(r.status, "published", "{r:#?}");
    assert_eq!(r.regions[EAST].outcome, "published", "{r:#?}");
    assert_eq!(r.announced, Some("image.published"), "{r:#?}");
    // One drain: the queue is read once.
    let sent: Vec<Value> = w.acct.drain(&w.queue).await;
    let kinds: Vec<&str> = sent
        .iter()
        .filter_map(|m| m["event_type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["image.published"], "{sent:?}");
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": 0})),
    );
    assert!(w.launch(EAST, &src).await.accounts.contains(PARTNER));
    let volume = shared::aws::ec2::create_volume_permissions(&w.ec2(EAST), &src_snap)
        .await
        .expect("read");
    assert!(volume.iter().any(|p| p == PARTNER), "{volume:?}");
}

/// EC2 makes neither an encrypted snapshot nor an AMI with encrypted volumes public (images
/// are encrypted by `KMS_KEY_ARN` or the account's EBS encryption by default). Before, a public
/// publish of such an image failed at ModifySnapshotAttribute in every region on every run,
/// with the other shares done and the image left in progress. Now it is refused before
/// anything changes, saying why: a manual request outright, an event with one `image.failed`.
#[tokio::test]
async fn an_encrypted_image_is_refused_public_before_anything_changes() {
    let w = World::with_claims(&[("PUBLISH_REGIONS", WEST), ("PUBLIC", "opt-in")]).await;
    let ec2 = w.ec2(EAST);
    let (src, _) = w
        .encrypted_source("web-encrypted", &[("publish:public", "true")])
        .await;
    assert!(w.image(EAST, &src).await.encrypted);
    let err = w
        .try_run(json!({"image_id": src}))
        .await
        .expect_err("refused");
    assert_eq!(err.error_type(), "InvalidPolicy");
    assert!(
        err.to_string().contains(&src) && err.to_string().contains("encrypted"),
        "{err}"
    );
    assert!(w.copies(WEST, &src).await.is_empty());
    let marks = fixtures::tags_of(&ec2, &src).await;
    assert!(marks.get(plan::PUBLISH_STATE).is_none(), "{marks}");
    for _ in 0..2 {
        let err = w.try_run(w.ready_event(&src)).await.expect_err("refused");
        assert_eq!(err.error_type(), "InvalidPolicy");
    }
    let failed = w.messages("image.failed").await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("encrypted")),
        "{failed:#?}"
    );
    assert!(!w.image(EAST, &src).await.public);
    assert!(w.copies(WEST, &src).await.is_empty());
}

/// EC2 shares nothing encrypted with the AWS managed key for EBS (`aws/ebs`, what encrypts an
/// image built without `KMS_KEY_ARN` in an account that encrypts by default, and every copy made
/// without a key) with another account. Before, the region failed with EC2's bare
/// OperationNotPermitted; now the failure names the image, who it was not shared with, why, and
/// what to do, and nothing was shared.
#[tokio::test]
async fn an_image_encrypted_with_the_aws_managed_key_is_not_shared_and_says_why() {
    let w = World::with_claims(&[("SHARE_ACCOUNTS", PARTNER)]).await;
    let (src, snap) = w.encrypted_source("web-managed-key", &[]).await;
    let out = w.run(w.ready_event(&src)).await;
    let r = result(&out);
    let east = &r.regions[EAST];
    assert_eq!(east.outcome, "failed", "{r:#?}");
    let detail = east.detail.as_deref().unwrap_or_default();
    for part in [
        &src,
        PARTNER,
        "aws/ebs",
        "KMS_KEY_ARN",
        "OperationNotPermitted",
    ] {
        assert!(detail.contains(part), "{part} not in {detail}");
    }
    assert!(w.launch(EAST, &src).await.is_empty());
    assert!(w.volume(EAST, &snap).await.is_empty());
    assert_eq!(r.announced, Some("image.publish-partial"), "{r:#?}");
    let partial = w.messages("image.publish-partial").await;
    assert_eq!(partial.len(), 1, "{partial:#?}");
    assert!(partial[0].to_string().contains("aws/ebs"), "{partial:#?}");
}

/// The same through ModifyImageAttribute (InvalidParameter): an organization has no
/// create-volume form, so the image's launch permission is the first refused call.
#[tokio::test]
async fn an_image_encrypted_with_the_aws_managed_key_is_not_shared_with_an_organization() {
    const ORG: &str = "arn:aws:organizations::123456789012:organization/o-exampleorg1";
    let w = World::with_claims(&[("SHARE_ORGANIZATIONS", ORG)]).await;
    let (src, _) = w.encrypted_source("web-managed-key-org", &[]).await;
    let out = w.run(w.ready_event(&src)).await;
    let east = &result(&out).regions[EAST];
    assert_eq!(east.outcome, "failed", "{out:#?}");
    let detail = east.detail.as_deref().unwrap_or_default();
    for part in [&src, ORG, "aws/ebs", "KMS_KEY_ARN", "InvalidParameter"] {
        assert!(detail.contains(part), "{part} not in {detail}");
    }
    assert!(w.launch(EAST, &src).await.is_empty());
}

/// The way out of the test above for copies: with `COPY_KMS_KEYS`, the copy of an encrypted
/// image is encrypted with its region's customer managed key (CopyImage `Encrypted` +
/// `KmsKeyId`) and shared. Without it, the copy got the region's AWS managed key and could not
/// be shared with any account.
#[tokio::test]
async fn a_copy_of_an_encrypted_image_takes_its_regions_key_and_is_shared() {
    let acct = support::TestAccount::new().await;
    let kms = |region: &'static str| {
        aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&acct.sdk)
                .region(aws_sdk_kms::config::Region::new(region))
                .build(),
        )
    };
    let mut keys = Vec::new();
    for region in [EAST, WEST] {
        let key = kms(region).create_key().send().await.expect("create key");
        keys.push(
            key.key_metadata()
                .map(|m| m.arn().unwrap_or_default().to_owned())
                .unwrap_or_default(),
        );
    }
    let (east_key, west_key) = (keys[0].clone(), keys[1].clone());
    let w = World::in_account(
        acct,
        &[
            ("PUBLISH_REGIONS", WEST),
            ("SHARE_ACCOUNTS", PARTNER),
            ("COPY_KMS_KEYS", &west_key),
        ],
    )
    .await;
    // The source is encrypted with a customer managed key too (the account's default in EAST).
    w.ec2(EAST)
        .modify_ebs_default_kms_key_id()
        .kms_key_id(&east_key)
        .send()
        .await
        .expect("default key");
    let (src, _) = w.encrypted_source("web-cmk", &[]).await;
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).status, "copying", "{first:#?}");
    let done = schedule_until_published(&w, &src).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    copy_encrypted_with_and_shared(&w, &src, &west_key).await;
    let want = Grants {
        accounts: [PARTNER.to_owned()].into(),
        ..Grants::default()
    };
    assert_eq!(w.launch(EAST, &src).await, want);
}

/// A region that encrypts EBS by default encrypts the copy of an unencrypted image too, with
/// its default key for EBS (aws/ebs unless changed), which EC2 never shares with another
/// account. Before, the copy was made that way and every share of it was refused, on every run,
/// and the refusal's way out (`COPY_KMS_KEYS`) was ignored for an unencrypted image. Now the
/// copy there is encrypted with the region's `COPY_KMS_KEYS` key, and shared.
#[tokio::test]
async fn a_copy_into_a_region_that_encrypts_by_default_takes_its_key_and_is_shared() {
    let acct = support::TestAccount::new().await;
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&acct.sdk)
            .region(aws_sdk_kms::config::Region::new(WEST))
            .build(),
    );
    let key = kms.create_key().send().await.expect("create key");
    let west_key = key
        .key_metadata()
        .map(|m| m.arn().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let w = World::in_account(
        acct,
        &[
            ("PUBLISH_REGIONS", WEST),
            ("SHARE_ACCOUNTS", PARTNER),
            ("COPY_KMS_KEYS", &west_key),
        ],
    )
    .await;
    w.ec2(WEST)
        .enable_ebs_encryption_by_default()
        .send()
        .await
        .expect("encryption by default");
    let (src, _) = w.source("web-plain-to-encrypting-region", &[]).await;
    assert!(!w.image(EAST, &src).await.encrypted);
    w.run(w.ready_event(&src)).await;
    let done = schedule_until_published(&w, &src).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    copy_encrypted_with_and_shared(&w, &src, &west_key).await;
}

/// The one copy of `src` in us-west-2: encrypted, every snapshot with `key`, shared with the
/// partner account.
async fn copy_encrypted_with_and_shared(w: &World, src: &str, key: &str) {
    let copies = w.copies(WEST, src).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    let copy = w.image(WEST, &copies[0].id).await;
    assert!(copy.encrypted);
    let snaps = w
        .ec2(WEST)
        .describe_snapshots()
        .set_snapshot_ids(Some(copy.snapshot_ids.clone()))
        .send()
        .await
        .expect("copy's snapshots");
    for snap in snaps.snapshots() {
        assert_eq!(snap.kms_key_id(), Some(key), "{snap:?}");
    }
    let want = Grants {
        accounts: [PARTNER.to_owned()].into(),
        ..Grants::default()
    };
    assert_eq!(w.launch(WEST, &copy.id).await, want);
}

/// A public publication makes no copy where the region encrypts EBS by default: the copy would
/// be encrypted, and EC2 makes no encrypted image public. The region fails with the reason;
/// the source's own region is published.
#[tokio::test]
async fn a_public_image_is_not_copied_into_a_region_that_encrypts_by_default() {
    let w = world(&[("PUBLISH_REGIONS", WEST), ("PUBLIC", "opt-in")]).await;
    w.ec2(WEST)
        .enable_ebs_encryption_by_default()
        .send()
        .await
        .expect("encryption by default");
    let (src, _) = w
        .source(
            "web-public-encrypting-region",
            &[("publish:public", "true")],
        )
        .await;
    let out = w.run(w.ready_event(&src)).await;
    let r = result(&out);
    assert_eq!(r.status, "partial", "{r:#?}");
    let west = &r.regions[WEST];
    assert_eq!(west.outcome, "failed", "{r:#?}");
    let detail = west.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("encrypts new EBS snapshots by default"),
        "{detail}"
    );
    assert!(w.copies(WEST, &src).await.is_empty());
    assert_eq!(r.regions[EAST].outcome, "published", "{r:#?}");
    assert!(w.image(EAST, &src).await.public);
}

/// Block public access for snapshots: "users can no longer request public sharing for
/// snapshots in that Region", and publish makes an image's snapshots public with it. Before,
/// only the AMI setting was read, so a public publish failed at ModifySnapshotAttribute in that
/// region on every run with EC2's bare refusal, and a manual request was not refused up front.
/// Now it is handled as the AMI setting is.
#[tokio::test]
async fn public_is_refused_while_snapshot_sharing_is_blocked_and_finished_once_unblocked() {
    blocked_then_finished(
        Block::Snapshots,
        "web-public-snap",
        "in us-west-2 block public access for snapshots is on (block-new-sharing",
        "DisableSnapshotBlockPublicAccess",
    )
    .await;
}

/// An image whose recorded policy the function's settings now refuse (a manual publish recorded
/// `publish:regions=eu-west-1`, then eu-west-1 was denied) is refused by every event and
/// schedule run, and stays `in-progress` (out of cleanup's reach): `image.failed` names it,
/// once, not only failed invocations.
#[tokio::test]
async fn an_image_whose_recorded_policy_is_now_refused_is_reported_once() {
    let w = World::with_claims(&[
        ("PUBLISH_REGIONS", "us-west-2"),
        ("PUBLISH_DENY_REGIONS", "eu-west-1"),
    ])
    .await;
    let (src, _) = w
        .source(
            "web-denied-1",
            &[
                ("publish:regions", "eu-west-1"),
                ("ami-pipeline:publish-state", "in-progress"),
            ],
        )
        .await;
    for event in [World::schedule(), w.ready_event(&src), World::schedule()] {
        let err = w.try_run(event).await.expect_err("refused");
        assert!(err.to_string().contains(&src), "{err}");
    }
    let failed = w.messages("image.failed").await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["image_id"], src.as_str());
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("eu-west-1")),
        "{failed:#?}"
    );
    // A manual invoke's caller gets the refusal itself: nothing more is sent.
    let manual = w.try_run(json!({"image_id": src})).await;
    assert!(manual.is_err());
    assert!(w.messages("image.failed").await.is_empty());
}

#[tokio::test]
async fn a_region_that_refuses_is_reported_and_retried_by_the_schedule() {
    let w = world(&[
        ("PUBLISH_REGIONS", "us-west-2,eu-west-1"),
        ("SHARE_ACCOUNTS", PARTNER),
    ])
    .await;
    let (src, _) = w.source("web-refused-1", &[]).await;
    // eu-west-1 refuses exactly this copy (matched by its deterministic ClientToken).
    w.acct.inject_fault(json!({"service": "ec2", "action": "CopyImage", "status": 400,
        "code": "OperationNotPermitted", "message": "Copying to this Region is not permitted for this account.",
        "resource": plan::client_token(EAST, &src, EU, plan::Attempt::First(0), None)}));

    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).regions[EU].outcome, "failed");
    assert!(
        result(&first).regions[EU]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("OperationNotPermitted")),
        "{first:#?}"
    );
    let second = w.run(World::schedule()).await;
    let r = &advanced(&second)[0];
    assert_eq!(r.status, "partial", "{r:#?}");
    assert_eq!(r.regions[WEST].outcome, "published");
    assert_eq!(r.regions[EAST].outcome, "published");
    let west_copy = w.copies(WEST, &src).await[0].id.clone();
    assert_eq!(
        w.launch(WEST, &west_copy).await.accounts,
        [PARTNER.to_owned()].into()
    );
    let partial = w.messages("image.publish-partial").await;
    assert_eq!(partial.len(), 1, "{partial:#?}");
    assert_eq!(partial[0]["publication"]["failed_regions"], json!([EU]));
    assert!(partial[0]["publication"]["retry"].as_str().is_some());
    assert!(
        w.messages("image.published").await.is_empty(),
        "never announced half-published"
    );
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert_eq!(
        tags[plan::PUBLISH_STATE],
        "in-progress",
        "cleanup must leave it alone"
    );

    // The region recovers; the schedule copies, then publishes and announces.
    w.acct.clear_faults();
    let copying = w.run(World::schedule()).await;
    assert_eq!(advanced(&copying)[0].regions[EU].outcome, "copying");
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    let msgs = w.messages("image.published").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0]["publication"]["regions"][EU]["outcome"],
        "published"
    );
}

#[tokio::test]
async fn more_failed_regions_than_a_tag_holds_are_recorded_announced_once_and_retried() {
    // Every copy refused (say, a KMS key or an SCP the account lacks everywhere): the failed
    // regions no longer fit one tag value. Before, the record's CreateTags was refused, the run
    // failed after announcing, and each schedule retried and announced again.
    let regions = MANY_REGIONS.join(",");
    assert!(MANY_REGIONS.join(" ").len() > 256);
    let w = world(&[("PUBLISH_REGIONS", &regions), ("SHARE_ACCOUNTS", PARTNER)]).await;
    let (src, _) = w.source("web-everywhere-1", &[]).await;
    w.acct.inject_fault(
        json!({"service": "ec2", "action": "CopyImage", "status": 400,
        "code": "OperationNotPermitted", "message": "Copying is not permitted for this account."}),
    );
    let first = w.run(w.ready_event(&src)).await;
    let r = result(&first);
    assert_eq!(r.status, "partial", "{r:#?}");
    let failed: Vec<&str> = r
        .regions
        .iter()
        .filter(|(_, rep)| rep.outcome == "failed")
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(failed, MANY_REGIONS);
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    let first_part = tags[plan::FAILED_REGIONS].as_str().unwrap_or_default();
    let rest = tags["ami-pipeline:publish-failed-regions:2"]
        .as_str()
        .unwrap_or_default();
    assert!(first_part.len() <= 256 && !rest.is_empty(), "{tags}");
    assert_eq!(
        format!("{first_part} {rest}")
            .split(' ')
            .collect::<Vec<_>>(),
        MANY_REGIONS,
        "{tags}"
    );
    // The same failures again: nothing new announced, every recorded region retried.
    for _ in 0..2 {
        let again = w.run(World::schedule()).await;
        let r = &advanced(&again)[0];
        assert_eq!(r.status, "partial", "{r:#?}");
        assert_eq!(
            r.regions
                .values()
                .filter(|rep| rep.outcome == "failed")
                .count(),
            MANY_REGIONS.len()
        );
    }
    assert_eq!(w.messages("image.publish-partial").await.len(), 1);
    // Copying allowed again: the schedule copies everywhere, publishes, announces once and
    // empties both keys.
    w.acct.clear_faults();
    let copying = w.run(World::schedule()).await;
    assert_eq!(advanced(&copying)[0].status, "copying", "{copying:#?}");
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    assert_eq!(w.messages("image.published").await.len(), 1);
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert_eq!(tags[plan::FAILED_REGIONS], "", "{tags}");
    assert_eq!(tags["ami-pipeline:publish-failed-regions:2"], "", "{tags}");
    assert_eq!(tags[plan::PUBLISH_STATE], "published", "{tags}");
}

#[tokio::test]
async fn a_public_image_is_deprecated_no_later_than_two_years_after_its_creation() {
    // EC2 refuses a public image's deprecation more than 2 years after its creation. A public
    // image published without deprecation, 400 days old, then given 700 days by a manual
    // invoke: before, EnableImageDeprecation was refused and the publish stayed partial.
    let w = world(&[("PUBLIC", "opt-in")]).await;
    let (src, _) = w
        .source("web-public-old-1", &[("publish:public", "true")])
        .await;
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).status, "published", "{first:#?}");
    assert!(w.image(EAST, &src).await.public);
    let created = chrono::Utc::now() - chrono::Duration::days(400);
    w.acct.backdate_image(EAST, &src, created);
    let again = w
        .run(json!({"image_id": src, "deprecate_after_days": 700}))
        .await;
    let r = result(&again);
    assert_eq!(r.status, "published", "{r:#?}");
    let limit = created + chrono::Months::new(24);
    let expected = limit.format("%Y-%m-%dT%H:%M:00.000Z").to_string();
    assert_eq!(
        r.regions[EAST].deprecation_time.as_deref(),
        Some(expected.as_str()),
        "{r:#?}"
    );
    assert_eq!(
        w.image(EAST, &src).await.deprecation_time.as_deref(),
        Some(expected.as_str())
    );
    // The reason reaches the region's report (and its detail in a publication message).
    assert!(
        r.regions[EAST]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("2 years after its creation") && d.contains("700 days")),
        "{r:#?}"
    );
}

#[tokio::test]
async fn progress_accumulates_when_the_failing_regions_change_from_run_to_run() {
    // Faults that move from region to region (as under a steady rate of transient errors):
    // eu-west-1 fails one run, us-west-2 would fail the next. The schedule retries only the
    // recorded failures, so the publish completes and is announced partial once, then
    // published once, instead of flapping between failed sets.
    let w = world(&[
        ("PUBLISH_REGIONS", "us-west-2,eu-west-1"),
        ("SHARE_ACCOUNTS", PARTNER),
    ])
    .await;
    let (src, _) = w.source("web-flap-1", &[]).await;
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).status, "copying", "{first:#?}");
    let eu_copy = w.copies(EU, &src).await[0].id.clone();
    let west_copy = w.copies(WEST, &src).await[0].id.clone();
    let fault = |image: &str| {
        json!({"service": "ec2", "action": "DescribeImageAttribute", "status": 503,
            "code": "ServiceUnavailable", "message": "The service is unavailable.",
            "resource": image})
    };
    w.acct.inject_fault(fault(&eu_copy));
    let second = w.run(World::schedule()).await;
    let r = &advanced(&second)[0];
    assert_eq!(r.status, "partial", "{r:#?}");
    assert_eq!(r.regions[EU].outcome, "failed");
    assert_eq!(r.regions[WEST].outcome, "published");
    // Now us-west-2 would fail and eu-west-1 works.
    w.acct.clear_faults();
    w.acct.inject_fault(fault(&west_copy));
    let third = w.run(World::schedule()).await;
    let r = &advanced(&third)[0];
    assert_eq!(r.status, "published", "{r:#?}");
    assert!(
        r.regions[WEST]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("earlier run")),
        "{r:#?}"
    );
    w.acct.clear_faults();
    let sent: Vec<Value> = w.acct.drain(&w.queue).await;
    let count = |t: &str| sent.iter().filter(|m| m["event_type"] == t).count();
    assert_eq!(count("image.publish-partial"), 1, "{sent:#?}");
    assert_eq!(count("image.published"), 1, "{sent:#?}");
    assert_eq!(
        w.launch(EU, &eu_copy).await.accounts,
        [PARTNER.to_owned()].into()
    );
}

#[tokio::test]
async fn the_same_ready_event_eight_times_at_once_is_published_and_announced_once() {
    let w = World::with_claims(&[("SHARE_ACCOUNTS", PARTNER)]).await;
    let (src, _) = w.source("web-eight-1", &[]).await;
    let event = w.ready_event(&src);
    let runs = futures::future::join_all((0..8).map(|_| w.try_run(event.clone()))).await;
    for r in &runs {
        assert!(r.is_ok(), "{r:?}");
    }
    let published = w.messages("image.published").await;
    assert_eq!(published.len(), 1, "{published:#?}");
    assert_eq!(
        w.launch(EAST, &src).await.accounts,
        [PARTNER.to_owned()].into()
    );
    // The schedule finds nothing left to do and says nothing.
    w.run(World::schedule()).await;
    assert!(w.messages("image.published").await.is_empty());
}

/// A world with claims and a source image `name` published by its `image.ready` and announced
/// once (that message drained).
async fn published_once(name: &str) -> (World, String) {
    let w = World::with_claims(&[("SHARE_ACCOUNTS", PARTNER)]).await;
    let (src, _) = w.source(name, &[]).await;
    w.run(w.ready_event(&src)).await;
    assert_eq!(w.messages("image.published").await.len(), 1);
    (w, src)
}

/// Chaos seed 23000 (`--lost-rate 0.01 --lag 1`): the state tag that records a publication is
/// last-writer-wins, and a duplicate `image.ready`'s mark (`in-progress`), whose first answer was
/// lost, was written again by the SDK's retry seconds later, after the conclusion's record. A
/// scheduled run then published the image again and, the claim being stale after 10 minutes,
/// announced `image.published` a second time. The state bucket's record of the send now keeps
/// a run that adds no grant from announcing it again; the state is put back.
#[tokio::test]
async fn a_publication_whose_state_tag_went_back_to_in_progress_is_not_announced_again() {
    let (w, src) = published_once("web-regressed-1").await;
    let in_progress =
        BTreeMap::from([(plan::PUBLISH_STATE.to_owned(), plan::IN_PROGRESS.to_owned())]);
    let regress = || async {
        shared::aws::ec2::create_tags(&w.ec2(EAST), &[src.as_str()], &in_progress)
            .await
            .expect("tag the state back");
    };
    regress().await;
    let later = Utc::now() + chrono::Duration::minutes(20);
    let out = support::invoke(&w.deps, &World::schedule(), later)
        .await
        .expect("the schedule");
    let report = advanced(&out)
        .iter()
        .find(|r| r.image_id == src)
        .unwrap_or_else(|| panic!("{src} not advanced: {out:?}"));
    assert_eq!(report.status, PublishStatus::Published);
    assert_eq!(report.announced, None);
    assert_eq!(
        w.image(EAST, &src).await.tags[plan::PUBLISH_STATE],
        plan::PUBLISHED
    );
    // A late duplicate image.ready that reads the regressed state ends the same way.
    regress().await;
    let out = support::invoke(&w.deps, &w.ready_event(&src), later)
        .await
        .expect("a late image.ready");
    assert_eq!(result(&out).status, PublishStatus::Published);
    assert_eq!(result(&out).announced, None);
    assert!(w.messages("image.published").await.is_empty());
    assert_eq!(
        w.image(EAST, &src).await.tags[plan::PUBLISH_STATE],
        plan::PUBLISHED
    );
}

/// The record of a sent `image.published` does not silence a publication that grants again:
/// after a revoke, publishing to the same account restores the original policy (the same
/// announcement key) and is announced once the first announcement's claim is stale, as it was
/// before the record.
#[tokio::test]
async fn a_grant_restored_after_a_revoke_is_announced_again() {
    let (w, src) = published_once("web-regrant-1").await;
    w.run(json!({"image_id": src, "revoke": [PARTNER]})).await;
    assert!(w.launch(EAST, &src).await.is_empty());
    // Later than the first announcement's claim (10 minutes): that claim is stale, not held.
    let later = Utc::now() + chrono::Duration::minutes(20);
    let out = support::invoke(
        &w.deps,
        &json!({"image_id": src, "accounts": [PARTNER]}),
        later,
    )
    .await
    .expect("publish again");
    assert_eq!(result(&out).announced, Some("image.published"), "{out:#?}");
    assert_eq!(w.messages("image.published").await.len(), 1);
    assert_eq!(
        w.launch(EAST, &src).await.accounts,
        [PARTNER.to_owned()].into()
    );
}

#[tokio::test]
async fn revoke_removes_image_then_snapshot_permissions_and_is_recorded() {
    let w = world(&[("SHARE_ACCOUNTS", PARTNER), ("PUBLIC", "opt-in")]).await;
    let (src, snap) = w.source("web-revoke-1", &[]).await;
    let out = w.run(json!({"image_id": src, "public": true})).await;
    assert_eq!(result(&out).status, "published", "{out:#?}");
    assert!(w.image(EAST, &src).await.public);
    assert!(w.volume(EAST, &snap).await.public);
    assert_eq!(
        w.launch(EAST, &src).await.accounts,
        [PARTNER.to_owned()].into()
    );
    w.acct.drain(&w.queue).await;

    let out = w
        .run(json!({"image_id": src, "revoke": [PARTNER, "public"]}))
        .await;
    let Output::Revoke {
        regions, announced, ..
    } = &out
    else {
        panic!("{out:#?}")
    };
    assert_eq!(regions[EAST].outcome, "revoked");
    assert!(regions[EAST].revoked.public);
    assert_eq!(*announced, Some("image.revoked"));
    assert!(w.launch(EAST, &src).await.is_empty());
    assert!(w.volume(EAST, &snap).await.is_empty());
    assert!(!w.image(EAST, &src).await.public);
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert_eq!(tags["publish:accounts"], "");
    assert_eq!(tags["publish:public"], "false");
    let msgs = w.messages("image.revoked").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0]["publication"]["revoked"]["accounts"],
        json!([PARTNER])
    );

    // Publishing again does not share what was revoked; unpublishing twice is harmless.
    w.run(json!({"image_id": src, "regions": []})).await;
    assert!(w.launch(EAST, &src).await.is_empty());
    w.run(json!({"image_id": src, "public": false})).await;
    assert!(!w.image(EAST, &src).await.public);
}

#[tokio::test]
async fn a_revoke_from_a_long_default_share_list_is_recorded_and_holds() {
    // 45 default accounts: what stays after a revoke (44 ids) does not fit a tag. Before, the permissions were removed but the record's CreateTags was refused, so
    // image.revoked was never sent and the next manual publish shared with the account again.
    let accounts: Vec<String> = (0..45)
        .map(|i| format!("{:012}", 200_000_000_000_u64 + i))
        .collect();
    let w = world(&[("SHARE_ACCOUNTS", &accounts.join(","))]).await;
    let (src, snap) = w.source("web-revoke-long-1", &[]).await;
    let out = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&out).status, "published", "{out:#?}");
    assert_eq!(w.launch(EAST, &src).await.accounts.len(), 45);
    w.acct.drain(&w.queue).await;

    let out = w
        .run(json!({"image_id": src, "revoke": [accounts[3]]}))
        .await;
    let Output::Revoke { regions, .. } = &out else {
        panic!("{out:#?}")
    };
    assert_eq!(regions[EAST].outcome, "revoked", "{out:#?}");
    assert!(!w.launch(EAST, &src).await.accounts.contains(&accounts[3]));
    assert!(!w.volume(EAST, &snap).await.accounts.contains(&accounts[3]));
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert_eq!(tags["publish:revoked"], accounts[3].as_str(), "{tags}");
    assert!(tags.get("publish:accounts").is_none(), "{tags}");
    assert_eq!(w.messages("image.revoked").await.len(), 1);
    // A manual publish reconciles every grant of the policy, but not the revoked one.
    w.run(json!({"image_id": src})).await;
    let launch = w.launch(EAST, &src).await.accounts;
    assert_eq!(launch.len(), 44);
    assert!(!launch.contains(&accounts[3]));

    // 19 more: neither the 25 left nor the 20 revoked (259 characters) fit a tag. Refused,
    // nothing removed.
    let err = w
        .try_run(json!({"image_id": src, "revoke": accounts[5..24].to_vec()}))
        .await
        .expect_err("cannot be recorded");
    assert_eq!(err.error_type(), "RevokeNotRecordable", "{err}");
    assert!(err.to_string().contains(&src), "{err}");
    assert_eq!(w.launch(EAST, &src).await.accounts.len(), 44);
    assert_eq!(
        fixtures::tags_of(&w.ec2(EAST), &src).await["publish:revoked"],
        accounts[3].as_str()
    );
    assert!(w.messages("image.revoked").await.is_empty());
}

#[tokio::test]
async fn overlapping_revokes_each_keep_their_record() {
    // Two revokes of one image at once, each of another account: each writes the record from
    // the tags it read, so without one revoke at a time the second dropped the first's and a
    // later publish shared the first account again.
    let accounts: Vec<String> = (0..45)
        .map(|i| format!("{:012}", 400_000_000_000_u64 + i))
        .collect();
    let w = World::with_claims(&[("SHARE_ACCOUNTS", &accounts.join(","))]).await;
    let (src, _) = w.source("web-revoke-overlap-1", &[]).await;
    w.run(w.ready_event(&src)).await;
    // A revoke in progress holds the image: another is refused, nothing changed.
    let state = support::roles::state_bucket_name(&w.acct.account_id);
    let claim = format!("claims/revoke/{EAST}/{src}");
    w.acct
        .put(
            &state,
            &claim,
            json!({"claimed_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)})
                .to_string()
                .into_bytes(),
            &[],
        )
        .await;
    let err = w
        .try_run(json!({"image_id": src, "revoke": [accounts[1]]}))
        .await
        .expect_err("held");
    assert_eq!(err.error_type(), "RevokeInProgress", "{err}");
    assert!(w.launch(EAST, &src).await.accounts.contains(&accounts[1]));
    w.acct
        .clients
        .s3
        .delete_object()
        .bucket(&state)
        .key(&claim)
        .send()
        .await
        .expect("the held claim ends");
    // Both at once, each retried while the other holds the image.
    let revoke = |account: String| {
        let w = &w;
        let src = src.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                match w
                    .try_run(json!({"image_id": src, "revoke": [account]}))
                    .await
                {
                    Err(e) if e.error_type() == "RevokeInProgress" => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other.map(|_| ()),
                }
            }
            panic!("{account}: the other revoke never ended");
        }
    };
    let (a, b) = tokio::join!(revoke(accounts[1].clone()), revoke(accounts[2].clone()));
    a.expect("first revoke");
    b.expect("second revoke");
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    let revoked = tags["publish:revoked"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        revoked,
        format!("{} {}", accounts[1], accounts[2]),
        "{tags}"
    );
    // The next publish shares with neither.
    w.run(json!({"image_id": src})).await;
    let launch = w.launch(EAST, &src).await.accounts;
    assert_eq!(launch.len(), 43);
    assert!(!launch.contains(&accounts[1]) && !launch.contains(&accounts[2]));
}

#[tokio::test]
async fn bad_input_is_refused_with_nothing_changed() {
    let w = world(&[
        ("PUBLISH_REGIONS", WEST),
        ("PUBLISH_DENY_REGIONS", "ap-south-1"),
    ])
    .await;
    let (src, _) = w.source("web-bad-1", &[]).await;
    let before = fixtures::tags_of(&w.ec2(EAST), &src).await;

    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"image_id": "ami-0000000000000dead"}),
            "ImageNotFound",
            "ami-0000000000000dead",
        ),
        (json!({"image_id": "ami-nope"}), "InvalidEvent", "ami-nope"),
        (
            json!({"image_id": src, "regions": ["us-east-9"]}),
            "InvalidEvent",
            "us-east-9",
        ),
        (
            json!({"image_id": src, "accounts": ["12345"]}),
            "InvalidEvent",
            "12345",
        ),
        (
            json!({"image_id": src, "organizations": ["o-123"]}),
            "InvalidEvent",
            "o-123",
        ),
        (
            json!({"image_id": src, "ous": ["ou-1"]}),
            "InvalidEvent",
            "ou-1",
        ),
        (
            json!({"image_id": src, "regions": ["ap-south-1"]}),
            "InvalidPolicy",
            "ap-south-1",
        ),
        // PUBLISH_REGIONS is the allow list: a manual invoke chooses among it, never adds.
        (
            json!({"image_id": src, "regions": ["eu-central-1"]}),
            "InvalidPolicy",
            "not in PUBLISH_REGIONS",
        ),
        (
            json!({"image_id": src, "public": true}),
            "InvalidPolicy",
            "PUBLIC=never",
        ),
        (
            json!({"image_id": src, "deprecate_after_days": 99999}),
            "InvalidEvent",
            "deprecate_after_days",
        ),
        (
            json!({"image_id": src, "revoke": ["someone"]}),
            "InvalidEvent",
            "someone",
        ),
        (
            json!({"image_id": src, "colour": "blue"}),
            "InvalidEvent",
            "colour",
        ),
        (
            json!({"detail-type": "EC2 AMI State Change"}),
            "InvalidEvent",
            "Scheduled Event",
        ),
        (json!([1, 2]), "InvalidEvent", "JSON object"),
    ];
    for (event, error_type, needle) in cases {
        let err = w
            .try_run(event.clone())
            .await
            .expect_err(&format!("{event} must be refused"));
        assert_eq!(err.error_type(), error_type, "{event}: {err}");
        assert!(err.to_string().contains(needle), "{event}: {err}");
    }
    assert_eq!(fixtures::tags_of(&w.ec2(EAST), &src).await, before);
    assert!(w.copies(WEST, &src).await.is_empty());
    assert!(w.acct.drain(&w.queue).await.is_empty());

    // A copy publish made is not itself a source; an image still pending is not published.
    w.acct.emulator_config(json!({"copy_delay_seconds": 30}));
    w.run(json!({"image_id": src})).await;
    let copy = w.copies(WEST, &src).await[0].id.clone();
    let err = w
        .try_run(json!({"image_id": copy, "region": WEST}))
        .await
        .expect_err("pending copy");
    assert_eq!(err.error_type(), "ImageNotAvailable", "{err}");
    w.acct.emulator_config(json!({"copy_delay_seconds": 0}));
    let copy2 = fixtures::copy(&w.ec2(EU), &src, EAST, "web-bad-1-manual-copy").await;
    shared::aws::ec2::create_tags(
        &w.ec2(EU),
        &[copy2.as_str()],
        &[(plan::PUBLISH_SOURCE.to_owned(), src.clone())].into(),
    )
    .await
    .expect("tag");
    let err = w
        .try_run(json!({"image_id": copy2, "region": EU}))
        .await
        .expect_err("a copy");
    assert_eq!(err.error_type(), "ImageIsCopy", "{err}");
    // Other event types on the topic are ignored.
    let other = aws_events::sns(
        &w.topic,
        &json!({"event_type": "image.registered", "image_id": src}),
    );
    assert!(matches!(w.run(other).await, Output::Ignored { .. }));
}

#[tokio::test]
async fn a_failed_copy_is_replaced_by_a_new_one_not_answered_by_its_token() {
    let w = world(&[("PUBLISH_REGIONS", "eu-west-1")]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 30}));
    // Markers of the source's own life, which CopyImageTags copies along.
    let (src, _) = w
        .source(
            "web-failing-copy",
            &[
                ("ami-pipeline:ready-at", "2026-11-22T10:00:00Z"),
                ("ami-pipeline:import-task", "import-snap-0123456789abcdef0"),
            ],
        )
        .await;
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).regions[EU].outcome, "copying");
    let dead = w.copies(EU, &src).await[0].id.clone();
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/image-state",
        Some(json!({"region": EU, "image_id": dead, "state": "failed",
                    "state_reason": {"code": "Client.InvalidKMSKey.InvalidState",
                                     "message": "The KMS key provided is in an incorrect state"}})),
    );
    // The schedule reports the region failed, with EC2's reason, deregisters the failed copy and
    // starts a new one (a ClientToken of its own, not the dead one's id again). Nothing is left
    // on the source.
    w.acct.emulator_config(json!({"copy_delay_seconds": 0}));
    let failed = w.run(World::schedule()).await;
    let rep = &advanced(&failed)[0].regions[EU];
    assert_eq!(rep.outcome, "failed", "{failed:#?}");
    assert_eq!(rep.image_id.as_deref(), Some(dead.as_str()));
    let copies = w.copies(EU, &src).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    let fresh = copies[0].id.clone();
    assert_ne!(fresh, dead, "{rep:#?}");
    let detail = rep.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("copying again as {fresh}")),
        "{detail}"
    );
    assert!(
        detail.contains(&format!(
            "copy {dead} is failed (Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state)"
        )),
        "{detail}"
    );
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    let text = tags.to_string();
    assert!(
        !text.contains("publish-copy-attempt") && !text.contains("publish-replacing"),
        "{tags}"
    );
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    assert_eq!(w.messages("image.published").await.len(), 1);
    // The copy does not pass for announced or imported.
    let copy = &w.copies(EU, &src).await[0];
    assert!(
        !copy.tags.contains_key("ami-pipeline:ready-at"),
        "{:?}",
        copy.tags
    );
    assert!(
        !copy.tags.contains_key("ami-pipeline:import-task"),
        "{:?}",
        copy.tags
    );
    assert_eq!(copy.tags["ami-pipeline:publish-source"], src);
}

/// The copies that failed in a row before `copy` in its region, as publish recorded them.
fn failed_copies(copy: &shared::model::Image) -> Option<&str> {
    copy.tags.get(plan::FAILED_COPIES).map(String::as_str)
}

/// One schedule run that reports `EU` failed with a detail that `says`, and leaves the failed
/// copy `dead` the region's only copy.
async fn failed_and_kept(w: &World, src: &str, dead: &str, says: &str) {
    let out = w.run(World::schedule()).await;
    let rep = &advanced(&out)[0].regions[EU];
    assert_eq!(rep.outcome, "failed", "{out:#?}");
    let detail = rep.detail.as_deref().unwrap_or_default();
    assert!(detail.contains(says), "{detail}");
    let copies = w.copies(EU, src).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_eq!(copies[0].id, dead);
}

#[tokio::test]
async fn a_copy_that_keeps_failing_is_replaced_later_each_time_then_left_for_a_person() {
    // On AWS each replacement is a whole new copy of the snapshots: a cause that stays (a key
    // the region cannot use) must not cost one on every schedule run.
    let w = world(&[("PUBLISH_REGIONS", EU)]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 600}));
    let (src, _) = w.source("web-failing-for-good", &[]).await;
    w.run(w.ready_event(&src)).await;
    let mut made = vec![w.copies(EU, &src).await[0].id.clone()];
    // The first failed copy is replaced at once; the n-th in a row 15 min, 1 h, 4 h after it
    // started. Each replacement counts the failed copies before it.
    for (n, wait) in [(1, 0), (2, 15), (3, 60), (4, 240)] {
        let dead = fail_copies(&w, &[EU], &src).await[EU].clone();
        assert_eq!(&dead, made.last().expect("a copy"));
        if wait > 0 {
            // Not yet: the failed copy stays, and the region says when.
            let early = Utc::now() - chrono::Duration::minutes(wait - 1);
            w.acct.backdate_image(EU, &dead, early);
            let says = format!("{n} copies in a row have failed here, so it is replaced after");
            failed_and_kept(&w, &src, &dead, &says).await;
            w.acct
                .backdate_image(EU, &dead, Utc::now() - chrono::Duration::minutes(wait + 1));
        }
        let out = w.run(World::schedule()).await;
        let rep = &advanced(&out)[0].regions[EU];
        assert_eq!(rep.outcome, "failed", "{out:#?}");
        let copies = w.copies(EU, &src).await;
        assert_eq!(copies.len(), 1, "{copies:#?}");
        assert_ne!(copies[0].id, dead, "{n}: {rep:#?}");
        let count = n.to_string();
        assert_eq!(failed_copies(&copies[0]), Some(count.as_str()), "{n}");
        made.push(copies[0].id.clone());
    }
    // The fifth failed copy in a row, however long ago it started: not replaced again. The
    // region says what to do, run after run.
    let last = fail_copies(&w, &[EU], &src).await[EU].clone();
    w.acct
        .backdate_image(EU, &last, Utc::now() - chrono::Duration::days(3));
    let says = format!(
        "5 copies in a row have failed here, so it is not replaced again: fix the cause, then deregister {last}"
    );
    for _ in 0..2 {
        failed_and_kept(&w, &src, &last, &says).await;
    }
    assert_eq!(w.messages("image.publish-partial").await.len(), 1);
    // A person fixed the cause and deregistered the failed copy: the next run copies again,
    // from the first copy's token through the five gone copies it answers in turn, and the
    // new copy counts no failure.
    shared::aws::ec2::deregister_image(&w.ec2(EU), &last)
        .await
        .expect("deregister");
    w.acct.emulator_config(json!({"copy_delay_seconds": 0}));
    let again = w.run(World::schedule()).await;
    let rep = &advanced(&again)[0].regions[EU];
    assert_eq!(rep.outcome, "copying", "{again:#?}");
    let copies = w.copies(EU, &src).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert!(!made.contains(&copies[0].id), "{made:?} {copies:#?}");
    assert_eq!(failed_copies(&copies[0]), None);
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
}

/// Marks the one copy of `src` in each of `regions` failed (the emulator's image-state
/// control); returns each region's failed copy.
async fn fail_copies<'a>(w: &World, regions: &[&'a str], src: &str) -> BTreeMap<&'a str, String> {
    let mut failed = BTreeMap::new();
    for region in regions {
        let copies = w.copies(region, src).await;
        assert_eq!(copies.len(), 1, "{region}: {copies:#?}");
        w.acct.control(
            "POST",
            "/ami-pipeline-emulator/image-state",
            Some(json!({"region": region, "image_id": copies[0].id, "state": "failed"})),
        );
        failed.insert(*region, copies[0].id.clone());
    }
    failed
}

#[tokio::test]
async fn copies_failing_in_many_regions_are_replaced_without_counting_on_the_source() {
    // A source with 43 tags of its own and 10 regions whose copies fail, twice. Before, each
    // failed region added a copy-attempt key to the source: the 8th passed EC2's 50 tags, its
    // CreateTags was refused with TagLimitExceeded, and that region's dead copy was never
    // replaced. The second time, two schedule runs overlap.
    let regions = &MANY_REGIONS[..10];
    let w = world(&[("PUBLISH_REGIONS", &regions.join(","))]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 600}));
    let own: Vec<(String, String)> = (0..38)
        .map(|i| (format!("team:label-{i:02}"), format!("value-{i}")))
        .collect();
    let own: Vec<(&str, &str)> = own.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (src, _) = w.source("web-failing-everywhere", &own).await;
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).status, "copying", "{first:#?}");
    let dead = fail_copies(&w, regions, &src).await;
    let run = w.run(World::schedule()).await;
    let rep = &advanced(&run)[0];
    assert_eq!(rep.status, "partial", "{rep:#?}");
    let mut replacements = BTreeMap::new();
    for region in regions {
        let r = &rep.regions[*region];
        assert_eq!(r.outcome, "failed", "{region}: {r:#?}");
        let copies = w.copies(region, &src).await;
        assert_eq!(copies.len(), 1, "{region}: {copies:#?}");
        assert_ne!(copies[0].id, dead[region]);
        assert_eq!(copies[0].state, "pending");
        assert_eq!(failed_copies(&copies[0]), Some("1"), "{region}");
        replacements.insert(*region, copies[0].id.clone());
    }
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    let text = tags.to_string();
    assert!(
        !text.contains("publish-copy-attempt") && !text.contains("publish-replacing"),
        "{tags}"
    );

    // The replacements fail too; two schedule runs overlap. Each region gets one new copy:
    // both runs derive its token from the same failed copy. (A second failure in a row is
    // replaced 15 minutes after it started: they started 16 minutes ago.)
    let dead = fail_copies(&w, regions, &src).await;
    assert_eq!(dead, replacements);
    for (region, id) in &dead {
        w.acct
            .backdate_image(region, id, Utc::now() - chrono::Duration::minutes(16));
    }
    let (a, b) = tokio::join!(w.try_run(World::schedule()), w.try_run(World::schedule()));
    let mut outs = vec![];
    for out in [a, b] {
        let out = out.expect("an overlapping schedule run");
        // A run that read the region between the other's deregistration and its CopyImage
        // finds no copy there and waits for it.
        let status = advanced(&out)[0].status;
        assert!(status == "partial" || status == "copying", "{out:#?}");
        outs.push(out);
    }
    for region in regions {
        let copies = w.copies(region, &src).await;
        let reports: Vec<_> = outs
            .iter()
            .map(|o| &advanced(o)[0].regions[*region])
            .collect();
        assert_eq!(copies.len(), 1, "{region}: {copies:#?} {reports:#?}");
        assert_ne!(copies[0].id, dead[region], "{region}");
        assert_eq!(copies[0].state, "pending", "{region}");
        assert_eq!(failed_copies(&copies[0]), Some("2"), "{region}");
        // Every run that replaced the failed copy names the same replacement: the one there.
        let named: Vec<&str> = reports
            .iter()
            .filter_map(|r| r.detail.as_deref()?.split("copying again as ").nth(1))
            .collect();
        assert!(!named.is_empty(), "{region}: {reports:#?}");
        assert!(
            named.iter().all(|id| *id == copies[0].id),
            "{region}: {named:?}"
        );
    }
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert!(!tags.to_string().contains("publish-replacing"), "{tags}");
    assert_eq!(w.messages("image.publish-partial").await.len(), 1);
}

#[tokio::test]
async fn a_replacement_a_stopped_run_began_is_continued_by_the_next() {
    let w = world(&[("PUBLISH_REGIONS", EU)]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 600}));
    let (src, _) = w.source("web-stopped-replacement", &[]).await;
    w.run(w.ready_event(&src)).await;
    let dead = fail_copies(&w, &[EU], &src).await[EU].clone();
    // A run stopped between deregistering the failed copy and starting its replacement: the
    // source holds the record (with the failures in a row, one), the region no copy.
    let record = plan::replacing_tag(EU, &dead, 1);
    shared::aws::ec2::create_tags(&w.ec2(EAST), &[src.as_str()], &record)
        .await
        .expect("record");
    shared::aws::ec2::deregister_image(&w.ec2(EU), &dead)
        .await
        .expect("deregister");
    assert!(w.copies(EU, &src).await.is_empty());
    // The next run starts the replacement the record names (not the first copy's token, which
    // would answer with the dead copy's id), and clears the record.
    w.acct.emulator_config(json!({"copy_delay_seconds": 0}));
    let next = w.run(World::schedule()).await;
    let rep = &advanced(&next)[0].regions[EU];
    assert_eq!(rep.outcome, "copying", "{next:#?}");
    let copies = w.copies(EU, &src).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_ne!(copies[0].id, dead);
    assert_eq!(rep.image_id.as_deref(), Some(copies[0].id.as_str()));
    // The count the record carried: should the replacement fail too, it waits.
    assert_eq!(failed_copies(&copies[0]), Some("1"));
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert!(!tags.to_string().contains("publish-replacing"), "{tags}");
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    // The copy does not keep the record it inherited from the source at CopyImage.
    let copy = &w.copies(EU, &src).await[0];
    assert!(
        !copy
            .tags
            .keys()
            .any(|k| k.starts_with(plan::REPLACING_PREFIX)),
        "{:?}",
        copy.tags
    );
}

#[tokio::test]
async fn a_copy_someone_deregistered_is_made_again_not_answered_by_its_token() {
    let w = world(&[("PUBLISH_REGIONS", EU)]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 600}));
    let (src, _) = w.source("web-copy-taken-away", &[]).await;
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).regions[EU].outcome, "copying", "{first:#?}");
    let gone = w.copies(EU, &src).await[0].id.clone();
    // Someone deregisters the region's only copy while it is being made: no record on the
    // source. The first copy's ClientToken answers the gone copy's id again (EC2 answers a
    // retried token with the original result, and does nothing more); before, the region
    // reported "copying" that id on every run and was never published.
    shared::aws::ec2::deregister_image(&w.ec2(EU), &gone)
        .await
        .expect("deregister");
    assert!(w.copies(EU, &src).await.is_empty());
    // Two overlapping schedule runs: both make it again as the same replacement (the same
    // ClientToken), or the later one finds the replacement the other made, holding the source's
    // name or (if it lists late enough) listed by its tag. Whoever made it says why.
    w.acct.emulator_config(json!({"copy_delay_seconds": 0}));
    let (a, b) = tokio::join!(w.run(World::schedule()), w.run(World::schedule()));
    let copies = w.copies(EU, &src).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    let again = copies[0].id.clone();
    assert_ne!(again, gone);
    let made = format!("copying again as {again}: EC2 answered with {gone}");
    let mut makers = 0;
    for out in [&a, &b] {
        let rep = &advanced(out)[0].regions[EU];
        assert_eq!(rep.image_id.as_deref(), Some(again.as_str()), "{rep:#?}");
        let Some(detail) = rep.detail.as_deref() else {
            // Listed by its tag, and available already (no copy delay): published.
            assert_eq!(rep.outcome, "published", "{out:#?}");
            continue;
        };
        assert_eq!(rep.outcome, "copying", "{out:#?}");
        let found = detail.starts_with(&format!("copy {again} is "))
            && detail.contains(&format!(
                "(EC2 answered with {gone}, deregistered since), not listed by its tag yet"
            ));
        makers += usize::from(detail.contains(&made));
        assert!(detail.contains(&made) || found, "{detail}");
    }
    assert!(makers >= 1, "{a:#?}\n{b:#?}");
    if [&a, &b]
        .iter()
        .all(|o| advanced(o)[0].status != "published")
    {
        let done = w.run(World::schedule()).await;
        assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    }
    assert_eq!(w.messages("image.published").await.len(), 1);
}

#[tokio::test]
async fn a_replacement_someone_deregistered_too_is_made_again_in_turn() {
    // The replacement's token then answers a gone copy too: the chain goes on to a copy that
    // is there.
    let w = world(&[("PUBLISH_REGIONS", EU)]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 600}));
    let (src2, _) = w.source("web-copies-taken-away", &[]).await;
    w.run(w.ready_event(&src2)).await;
    let gone1 = w.copies(EU, &src2).await[0].id.clone();
    shared::aws::ec2::deregister_image(&w.ec2(EU), &gone1)
        .await
        .expect("deregister");
    let second = w.run(World::schedule()).await;
    let gone2 = advanced(&second)[0].regions[EU]
        .image_id
        .clone()
        .expect("the replacement");
    shared::aws::ec2::deregister_image(&w.ec2(EU), &gone2)
        .await
        .expect("deregister");
    let third = w.run(World::schedule()).await;
    let rep = &advanced(&third)[0].regions[EU];
    let copies = w.copies(EU, &src2).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_eq!(
        rep.image_id.as_deref(),
        Some(copies[0].id.as_str()),
        "{rep:#?}"
    );
    assert!(
        rep.detail.as_deref().unwrap_or_default().contains(&format!(
            "EC2 answered with {gone1}, then {gone2}, deregistered since"
        )),
        "{rep:#?}"
    );
}

#[tokio::test]
async fn a_copy_someone_disabled_or_a_name_another_image_took_is_reported_not_copied_again() {
    let w = world(&[("PUBLISH_REGIONS", EU)]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 600}));
    let (src, _) = w.source("web-copy-disabled", &[]).await;
    w.run(w.ready_event(&src)).await;
    let copy = w.copies(EU, &src).await[0].id.clone();
    // Disabled: the region's listing leaves it out, and the first copy's token answers its id,
    // which reads as disabled (a read by id asks IncludeDisabled): reported, not copied again.
    w.ec2(EU)
        .disable_image()
        .image_id(&copy)
        .send()
        .await
        .expect("disable");
    let out = w.run(World::schedule()).await;
    let rep = &advanced(&out)[0].regions[EU];
    assert_eq!(rep.outcome, "failed", "{out:#?}");
    assert_eq!(rep.image_id.as_deref(), Some(copy.as_str()));
    let detail = rep.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("is disabled") && detail.contains("EnableImage"),
        "{detail}"
    );
    let every = |w: &World| {
        let ec2 = w.ec2(EU);
        let src = src.clone();
        async move {
            shared::aws::ec2::describe_every_own_image(
                &ec2,
                &[shared::model::Select::tag(plan::PUBLISH_SOURCE, [src])],
            )
            .await
            .expect("list")
        }
    };
    assert_eq!(every(&w).await.len(), 1, "no second copy");
    // Someone deregisters it and registers another image under the source's name: the region
    // fails naming that image, and no copy is started.
    shared::aws::ec2::deregister_image(&w.ec2(EU), &copy)
        .await
        .expect("deregister");
    let (other, _) = fixtures::image(&w.ec2(EU), "web-copy-disabled", &[]).await;
    let out = w.run(World::schedule()).await;
    let rep = &advanced(&out)[0].regions[EU];
    assert_eq!(rep.outcome, "failed", "{out:#?}");
    let detail = rep.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("held here by {other}")),
        "{detail}"
    );
    assert!(every(&w).await.is_empty());
}

#[tokio::test]
async fn a_replacement_record_of_a_region_the_policy_left_is_cleared() {
    // A run began replacing a failed copy in us-west-2, then the deployment stopped copying
    // there: nothing continues that record, so the next run clears it (its tag is the source's).
    let w = world(&[("PUBLISH_REGIONS", EU)]).await;
    let (src, _) = w.source("web-region-left", &[]).await;
    let record = plan::replacing_tag(WEST, "ami-0123456789abcdef0", 0);
    shared::aws::ec2::create_tags(&w.ec2(EAST), &[src.as_str()], &record)
        .await
        .expect("record");
    let first = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&first).regions[EU].outcome, "copying", "{first:#?}");
    let tags = fixtures::tags_of(&w.ec2(EAST), &src).await;
    assert!(!tags.to_string().contains("publish-replacing"), "{tags}");
}

#[tokio::test]
async fn a_copy_just_started_and_not_readable_yet_is_not_made_twice() {
    // EC2's reads lag behind its writes: the copy CopyImage just answered may not be found by
    // its id yet. Publish then asks for its replacement, which EC2 refuses because the copy
    // holds the source's name in the region: the copy is there, and it is the one reported.
    let w = world(&[("PUBLISH_REGIONS", EU)]).await;
    w.acct.emulator_config(json!({"copy_delay_seconds": 600}));
    let (src, _) = w.source("web-copy-not-readable-yet", &[]).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": 30})),
    );
    let first = w.run(w.ready_event(&src)).await;
    let rep = &result(&first).regions[EU];
    assert_eq!(rep.outcome, "copying", "{first:#?}");
    let detail = rep.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("not readable yet"), "{detail}");
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": 0})),
    );
    let copies = w.copies(EU, &src).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_eq!(rep.image_id.as_deref(), Some(copies[0].id.as_str()));
}

#[tokio::test]
async fn an_image_ready_whose_event_was_lost_is_published_by_the_schedule() {
    let w = world(&[("PUBLISH_REGIONS", "us-west-2")]).await;
    // image.ready went out an hour ago, but its publish event failed into the DLQ: nothing
    // marked the image in-progress. Another was announced a minute ago: its event may still come.
    let hour_ago = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let minute_ago = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let (lost, _) = w
        .source(
            "web-lost-event",
            &[("ami-pipeline:ready-at", hour_ago.as_str())],
        )
        .await;
    let (fresh, _) = w
        .source(
            "web-fresh-event",
            &[("ami-pipeline:ready-at", minute_ago.as_str())],
        )
        .await;
    let first = w.run(World::schedule()).await;
    let started = advanced(&first);
    assert_eq!(started.len(), 1, "{first:#?}");
    assert_eq!(started[0].image_id, lost);
    assert!(
        w.copies(WEST, &fresh).await.is_empty(),
        "the event's own turn"
    );
    let done = w.run(World::schedule()).await;
    assert_eq!(advanced(&done)[0].status, "published", "{done:#?}");
    assert_eq!(w.messages("image.published").await.len(), 1);
}

/// More accounts than one ModifySnapshotAttribute may change (500, which the emulator enforces
/// as AWS documents): the snapshot is shared in batches, with every account and the image's
/// launch permissions in one call (ModifyImageAttribute takes 10,000).
#[tokio::test]
async fn more_than_500_accounts_are_shared_the_snapshot_in_batches() {
    let accounts: Vec<String> = (0..1201)
        .map(|i| format!("{}", 200_000_000_000u64 + i))
        .collect();
    let list = accounts.join(",");
    let w = world(&[("SHARE_ACCOUNTS", list.as_str()), ("PUBLISH_REGIONS", "")]).await;
    let (src, snap) = w.source("web-many-1", &[]).await;
    let out = w.run(w.ready_event(&src)).await;
    assert_eq!(result(&out).status, PublishStatus::Published, "{out:?}");
    let want: std::collections::BTreeSet<String> = accounts.into_iter().collect();
    assert_eq!(w.volume(EAST, &snap).await.accounts, want);
    assert_eq!(w.launch(EAST, &src).await.accounts, want);
}
