//! cleanup against the local emulator, through the real handler: keep-N and min-age with ties,
//! the staged deprecate → deregister, every exclusion with its reason, a snapshot shared by two
//! images, the orphan sweep, the cap, dry run = real run, two regions, and bad input.
//! The clock is a parameter of the handler, so "a later run" is the same code at a later `now`.

use chrono::{DateTime, Duration as Days, Utc};
use cleanup::{Deps, Report, StepResult};
use serde_json::{Value, json};
use shared::invocation::InvocationError;
use shared::model::Tags;
use std::collections::BTreeMap;
use std::time::Duration;
use support::fixtures;

const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";

type World = support::World<Deps>;

async fn world() -> World {
    World::new(&[
        ("KEEP_NEWEST", "2"),
        ("MIN_AGE_DAYS", "30"),
        ("GRACE_DAYS", "7"),
        ("MAX_DELETIONS", "10"),
    ])
    .await
}

/// This file's helpers on the world.
trait Helpers {
    async fn managed(&self, region: &str, family: &str, name: &str, days: i64) -> (String, String);
    async fn try_run(&self, event: Value, now: DateTime<Utc>) -> Result<Report, InvocationError>;
    async fn run(&self, event: Value, now: DateTime<Utc>) -> Report;
    async fn exists(&self, region: &str, image: &str) -> bool;
    async fn snapshot_exists(&self, region: &str, snap: &str) -> bool;
}

impl Helpers for World {
    /// A managed image of `family` created `days` ago; returns (image, snapshot).
    async fn managed(&self, region: &str, family: &str, name: &str, days: i64) -> (String, String) {
        let (image, snap) = fixtures::image(
            &self.ec2(region),
            name,
            &[
                ("ami-pipeline:managed", "true"),
                ("ami-pipeline:family", family),
            ],
        )
        .await;
        self.acct
            .backdate_image(region, &image, Utc::now() - Days::days(days));
        (image, snap)
    }

    async fn try_run(&self, event: Value, now: DateTime<Utc>) -> Result<Report, InvocationError> {
        self.invoke_at(&event, now).await
    }

    async fn run(&self, event: Value, now: DateTime<Utc>) -> Report {
        self.try_run(event, now)
            .await
            .unwrap_or_else(|e| panic!("cleanup failed: {e}"))
    }

    async fn exists(&self, region: &str, image: &str) -> bool {
        shared::aws::ec2::describe_own_image(&self.ec2(region), image)
            .await
            .expect("describe")
            .is_some()
    }

    async fn snapshot_exists(&self, region: &str, snap: &str) -> bool {
        !shared::aws::ec2::describe_own_snapshots(&self.ec2(region), &[snap.to_owned()])
            .await
            .expect("describe snapshots")
            .is_empty()
    }
}

fn decision<'a>(r: &'a Report, image: &str) -> &'a shared::plan::retention::Decision {
    r.decisions
        .iter()
        .find(|d| d.image_id == image)
        .unwrap_or_else(|| panic!("{image} not in the report: {:#?}", r.decisions))
}

fn action(r: &Report, image: &str) -> String {
    serde_json::to_value(decision(r, image).action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn keep_newest_and_min_age_then_deprecate_then_deregister_later() {
    let w = world().await;
    let (young, _) = w.managed(EAST, "web", "web-young", 1).await;
    let (second, _) = w.managed(EAST, "web", "web-second", 70).await;
    let (old1, s1) = w.managed(EAST, "web", "web-old1", 80).await;
    let (old2, s2) = w.managed(EAST, "web", "web-old2", 90).await;
    let (recent, _) = w.managed(EAST, "web", "web-recent", 10).await;
    // Three images created at the very same instant: the greater ids count as newer.
    let when = Utc::now() - Days::days(200);
    let mut ties = Vec::new();
    for n in 0..3 {
        let (i, _) = w.managed(EAST, "tie", &format!("tie-{n}"), 0).await;
        w.acct.backdate_image(EAST, &i, when);
        ties.push(i);
    }
    ties.sort();

    let now = Utc::now();
    let r = w.run(json!({"dry_run": false}), now).await;
    assert!(!r.dry_run);
    assert_eq!(action(&r, &young), "keep");
    assert_eq!(action(&r, &recent), "keep");
    assert!(
        decision(&r, &recent)
            .reasons
            .iter()
            .any(|x| x.contains("among the newest 2"))
    );
    assert_eq!(
        action(&r, &second),
        "deprecate",
        "beyond the newest 2 and older than 30 days"
    );
    assert_eq!(action(&r, &old1), "deprecate");
    assert_eq!(action(&r, &old2), "deprecate");
    assert_eq!(action(&r, &ties[2]), "keep");
    assert_eq!(action(&r, &ties[1]), "keep");
    assert_eq!(action(&r, &ties[0]), "deprecate");
    let desc = shared::aws::ec2::describe_own_image(&w.ec2(EAST), &old1)
        .await
        .expect("describe")
        .expect("still there");
    assert!(desc.deprecation_time.is_some(), "deprecated, not deleted");
    assert!(w.exists(EAST, &old2).await);

    // A day later: still in the grace period.
    let r = w.run(json!({"dry_run": false}), now + Days::days(1)).await;
    assert_eq!(action(&r, &old1), "keep");
    assert!(decision(&r, &old1).reasons[0].contains("grace period"));

    // Eight days later: deregistered, and their snapshots deleted.
    let r = w.run(json!({"dry_run": false}), now + Days::days(8)).await;
    assert_eq!(action(&r, &old1), "deregister");
    assert_eq!(decision(&r, &old1).delete_snapshots, vec![s1.clone()]);
    assert!(!w.exists(EAST, &old1).await && !w.exists(EAST, &old2).await);
    assert!(!w.snapshot_exists(EAST, &s1).await && !w.snapshot_exists(EAST, &s2).await);
    assert!(w.exists(EAST, &young).await && w.exists(EAST, &recent).await);
    assert!(!w.exists(EAST, &second).await);
    assert!(r.steps.iter().all(|s| s.result.is_done()), "{:#?}", r.steps);

    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(msgs.len(), 3, "one cleanup.report per run");
    let last = &msgs[2];
    assert_eq!(last["event_type"], "cleanup.report");
    assert_eq!(last["summary"]["counts"]["us-east-1/web"]["deregister"], 3);
    assert_eq!(last["summary"]["dry_run"], false);
    assert_eq!(
        last["decisions"][0]["action"], "deregister",
        "removals come first"
    );
}

/// EC2 is eventually consistent: an image registered moments ago is not listed yet. Cleanup then
/// plans without it, which may only keep more (an unseen newer image cannot push an older one
/// out of keep-newest), never remove more; the unseen image itself is never touched. Once it is
/// listed, the plan is the lag-free one.
#[tokio::test]
async fn an_image_not_listed_yet_only_makes_cleanup_keep_more() {
    // Long enough that the first listing falls within it on a loaded machine.
    const LAG_SECONDS: u64 = 5;
    let w = world().await;
    let (old1, _) = w.managed(EAST, "web", "web-old1", 80).await;
    let (old2, _) = w.managed(EAST, "web", "web-old2", 90).await;
    let (old3, _) = w.managed(EAST, "web", "web-old3", 70).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": LAG_SECONDS})),
    );
    let (new, _) = fixtures::image(
        &w.ec2(EAST),
        "web-new",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
        ],
    )
    .await;
    let r = w.run(json!({"dry_run": true}), Utc::now()).await;
    assert!(
        r.decisions.iter().all(|d| d.image_id != new),
        "{:#?}",
        r.decisions
    );
    assert_eq!(action(&r, &old3), "keep");
    assert_eq!(
        action(&r, &old1),
        "keep",
        "still among the newest 2 it can see"
    );
    assert_eq!(action(&r, &old2), "deprecate");

    tokio::time::sleep(Duration::from_secs(LAG_SECONDS) + Duration::from_millis(500)).await;
    let r = w.run(json!({"dry_run": true}), Utc::now()).await;
    assert_eq!(action(&r, &new), "keep");
    assert_eq!(action(&r, &old3), "keep");
    assert_eq!(action(&r, &old1), "deprecate");
    assert_eq!(action(&r, &old2), "deprecate");
}

/// By default (`$Default` and `$Latest`), every template's versions are read with one
/// account-wide DescribeLaunchTemplateVersions per 200 versions, not one per template after a
/// listing: 12 templates cost one call, and the images of their `$Default` and `$Latest`
/// versions stay while an older version's image goes.
#[tokio::test]
async fn default_and_latest_versions_of_every_template_are_read_in_one_call() {
    let w = one_run_world(&[]).await;
    let ec2 = w.ec2(EAST);
    w.managed(EAST, "lts", "lts-new", 1).await;
    let (by_default, _) = w.managed(EAST, "lts", "lts-default", 100).await;
    let (by_latest, _) = w.managed(EAST, "lts", "lts-latest", 101).await;
    let (by_old_version, _) = w.managed(EAST, "lts", "lts-old-version", 102).await;
    let data = |image: &str| {
        aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
            .image_id(image)
            .build()
    };
    for n in 0..11 {
        ec2.create_launch_template()
            .launch_template_name(format!("lts-{n}"))
            .launch_template_data(data(&by_default))
            .send()
            .await
            .expect("launch template");
    }
    // "lts-versions": version 1 launches `by_old_version`, version 2 `by_latest`, version 3
    // `by_default`; version 2 is made the default, so $Default (2) and $Latest (3) differ and
    // version 1 is neither: its image goes.
    let t = ec2
        .create_launch_template()
        .launch_template_name("lts-versions")
        .launch_template_data(data(&by_old_version))
        .send()
        .await
        .expect("launch template");
    let id = t
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .expect("id")
        .to_owned();
    for image in [&by_latest, &by_default] {
        ec2.create_launch_template_version()
            .launch_template_id(&id)
            .launch_template_data(data(image))
            .send()
            .await
            .expect("version");
    }
    ec2.modify_launch_template()
        .launch_template_id(&id)
        .default_version("2")
        .send()
        .await
        .expect("default version 2");
    w.acct.reset_requests();
    let r = w.run(json!({"dry_run": false}), Utc::now()).await;
    let calls = w.acct.requests();
    assert_eq!(calls["ec2:DescribeLaunchTemplateVersions"], 1, "{calls}");
    assert!(
        calls.get("ec2:DescribeLaunchTemplates").is_none(),
        "{calls}"
    );
    for (kept, why) in [
        (&by_default, "launch template lts-"),
        (&by_latest, "launch template lts-versions (version 2)"),
    ] {
        assert_eq!(action(&r, kept), "skip", "{:?}", decision(&r, kept));
        assert!(
            decision(&r, kept).reasons.iter().any(|r| r.contains(why)),
            "{:?}",
            decision(&r, kept)
        );
    }
    assert_eq!(action(&r, &by_old_version), "deregister");
    assert!(!w.exists(EAST, &by_old_version).await);
}

/// With `LAUNCH_TEMPLATE_VERSIONS=all` each template's versions are read on their own, after a
/// listing. A launch template deleted between the listing and the read of its versions (EC2
/// answers InvalidLaunchTemplateId.NotFound; node groups and autoscalers delete templates all
/// the time) references nothing: the run goes on, and the other templates' images stay. A
/// template created minutes ago and not found may only not have propagated: its references are
/// unknown, and the run fails with nothing removed.
#[tokio::test]
async fn a_launch_template_deleted_while_cleanup_reads_it_does_not_fail_the_run() {
    let w = one_run_world(&[("LAUNCH_TEMPLATE_VERSIONS", "all")]).await;
    let ec2 = w.ec2(EAST);
    w.managed(EAST, "lt", "lt-new", 1).await;
    let (held, _) = w.managed(EAST, "lt", "lt-held", 100).await;
    let (stale, _) = w.managed(EAST, "lt", "lt-stale", 110).await;
    let mut ids = Vec::new();
    for (name, image) in [("lt-keeps", &held), ("lt-going", &stale)] {
        let out = ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(image)
                    .build(),
            )
            .send()
            .await
            .expect("launch template");
        ids.push(
            out.launch_template()
                .and_then(|t| t.launch_template_id())
                .expect("id")
                .to_owned(),
        );
    }
    // "lt-going" is deleted after the listing: its versions are not found.
    w.acct.inject_fault(json!({"service": "ec2", "action": "DescribeLaunchTemplateVersions",
        "resource": ids[1], "code": "InvalidLaunchTemplateId.NotFound",
        "message": format!("The specified launch template, with template ID {}, does not exist.", ids[1])}));
    let err = w
        .try_run(json!({"dry_run": false}), Utc::now())
        .await
        .expect_err("a template created just now: its references are unknown");
    assert!(err.to_string().contains("NotFound"), "{err}");
    assert!(w.exists(EAST, &stale).await);
    let later = Utc::now()
        + chrono::Duration::minutes(shared::aws::ec2::TEMPLATE_SETTLED_MINUTES)
        + chrono::Duration::minutes(1);
    // A version not found (another code ending in NotFound) is not the template's deletion:
    // its other versions' references stay unknown, and the run stops.
    w.acct.inject_fault(
        json!({"service": "ec2", "action": "DescribeLaunchTemplateVersions",
        "resource": ids[0], "code": "InvalidLaunchTemplateId.VersionNotFound",
        "message": "Could not find launch template version 2", "count": 1}),
    );
    w.try_run(json!({"dry_run": false}), later)
        .await
        .expect_err("a version not found is not a deleted template");
    assert!(w.exists(EAST, &stale).await);
    let r = w.run(json!({"dry_run": false}), later).await;
    assert_eq!(action(&r, &held), "skip", "{:?}", decision(&r, &held));
    assert!(
        decision(&r, &held)
            .reasons
            .iter()
            .any(|why| why.contains("launch template lt-keeps")),
        "{:?}",
        decision(&r, &held)
    );
    assert_eq!(
        action(&r, &stale),
        "deregister",
        "{:?}",
        decision(&r, &stale)
    );
    assert!(!w.exists(EAST, &stale).await);
    assert!(w.exists(EAST, &held).await);
}

#[tokio::test]
async fn every_exclusion_is_respected_and_named() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    w.managed(EAST, "ex", "ex-newest", 1).await;
    w.managed(EAST, "ex", "ex-second", 2).await;
    let mut stale = BTreeMap::new();
    for (n, what) in [
        "running",
        "stopped",
        "terminated",
        "template",
        "public",
        "shared",
        "protect-tag",
        "dereg-protection",
        "dereg-cooldown",
        "launched",
        "publishing",
        "plain",
    ]
    .iter()
    .enumerate()
    {
        let (image, _) = w
            .managed(EAST, "ex", &format!("ex-{what}"), 100 + n as i64)
            .await;
        stale.insert(*what, image);
    }
    let running = fixtures::instance(&ec2, &stale["running"]).await;
    let stopped = fixtures::instance(&ec2, &stale["stopped"]).await;
    ec2.stop_instances()
        .instance_ids(&stopped)
        .send()
        .await
        .expect("stop");
    let terminated = fixtures::instance(&ec2, &stale["terminated"]).await;
    ec2.terminate_instances()
        .instance_ids(&terminated)
        .send()
        .await
        .expect("terminate");
    let _ = running;
    ec2.create_launch_template()
        .launch_template_name("web-lt")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&stale["template"])
                .build(),
        )
        .send()
        .await
        .expect("launch template");
    fixtures::make_public(&ec2, &stale["public"])
        .await
        .expect("make public");
    ec2.modify_image_attribute()
        .image_id(&stale["shared"])
        .launch_permission(
            aws_sdk_ec2::types::LaunchPermissionModifications::builder()
                .add(
                    aws_sdk_ec2::types::LaunchPermission::builder()
                        .user_id("111122223333")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("share");
    ec2.create_tags()
        .resources(&stale["protect-tag"])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ami-pipeline:protect")
                .value("true")
                .build(),
        )
        .send()
        .await
        .expect("tag");
    ec2.enable_image_deregistration_protection()
        .image_id(&stale["dereg-protection"])
        .send()
        .await
        .expect("protect");
    // Protection disabled with its 24-hour cooldown: DeregisterImage still refuses it.
    ec2.enable_image_deregistration_protection()
        .image_id(&stale["dereg-cooldown"])
        .with_cooldown(true)
        .send()
        .await
        .expect("protect with a cooldown");
    ec2.disable_image_deregistration_protection()
        .image_id(&stale["dereg-cooldown"])
        .send()
        .await
        .expect("unprotect");
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/image-last-launched-time",
        Some(json!({"region": EAST, "image_id": stale["launched"],
                    "last_launched_time": (Utc::now() - Days::days(3)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})),
    );
    ec2.create_tags()
        .resources(&stale["publishing"])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ami-pipeline:publish-state")
                .value("in-progress")
                .build(),
        )
        .send()
        .await
        .expect("tag");
    // Not managed and not selected: never considered.
    let (foreign, _) = fixtures::image(&ec2, "foreign-old", &[]).await;
    w.acct
        .backdate_image(EAST, &foreign, Utc::now() - Days::days(500));

    let r = w.run(json!({"dry_run": false}), Utc::now()).await;
    let reason = |what: &str| decision(&r, &stale[what]).reasons.join("; ");
    for (what, expected) in [
        ("running", "in use: referenced by arn:aws:ec2:us-east-1:"),
        ("stopped", "in use: referenced by arn:aws:ec2:us-east-1:"),
        ("template", "referenced by launch template web-lt"),
        ("public", "public"),
        ("shared", "shared with 111122223333"),
        ("protect-tag", "protected by tag ami-pipeline:protect"),
        ("dereg-protection", "deregistration protection (enabled"),
        (
            "dereg-cooldown",
            "deregistration protection (disabled-until ",
        ),
        ("launched", "launched within 30 days"),
        ("publishing", "publish in progress"),
    ] {
        assert_eq!(action(&r, &stale[what]), "skip", "{what}: {}", reason(what));
        assert!(
            reason(what).contains(expected),
            "{what}: {:?}",
            reason(what)
        );
    }
    assert_eq!(
        action(&r, &stale["terminated"]),
        "deprecate",
        "a terminated instance does not protect"
    );
    assert_eq!(action(&r, &stale["plain"]), "deprecate");
    assert!(r.decisions.iter().all(|d| d.image_id != foreign));

    // Eight days later nothing protected has been touched, and only the two unprotected go.
    let r = w
        .run(json!({"dry_run": false}), Utc::now() + Days::days(8))
        .await;
    for (what, image) in &stale {
        let gone = !w.exists(EAST, image).await;
        assert_eq!(
            gone,
            ["terminated", "plain"].contains(what),
            "{what}: {:?}",
            decision(&r, image)
        );
    }
    assert!(w.exists(EAST, &foreign).await);
}

#[tokio::test]
async fn a_shared_snapshot_survives_and_orphans_are_swept() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    w.managed(EAST, "snap", "snap-newest", 1).await;
    w.managed(EAST, "snap", "snap-second", 2).await;
    let (stale, shared_snap) = w.managed(EAST, "snap", "snap-stale", 100).await;
    // A kept image registered from the same snapshot.
    let other = fixtures::register(&ec2, "snap-other", &shared_snap, &[]).await;
    // An orphan: a managed snapshot no image uses, 20 days old; and a young one.
    let orphan = fixtures::snapshot(&ec2, &[("ami-pipeline:managed", "true")]).await;
    let young_orphan = fixtures::snapshot(&ec2, &[("ami-pipeline:managed", "true")]).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/snapshot-start-time",
        Some(json!({"region": EAST, "snapshot_id": orphan,
                    "start_time": (Utc::now() - Days::days(20)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})),
    );
    let now = Utc::now();
    let first = w.run(json!({"dry_run": false}), now).await;
    let swept: Vec<&str> = first
        .orphans
        .iter()
        .map(|o| o.snapshot_id.as_str())
        .collect();
    assert_eq!(
        swept,
        vec![orphan.as_str()],
        "only the old orphan, not the young one"
    );
    assert!(!w.snapshot_exists(EAST, &orphan).await, "orphan swept");
    assert!(w.snapshot_exists(EAST, &young_orphan).await);
    assert!(!swept.contains(&shared_snap.as_str()));

    let r = w.run(json!({"dry_run": false}), now + Days::days(8)).await;
    assert_eq!(action(&r, &stale), "deregister");
    assert_eq!(
        decision(&r, &stale).keep_snapshots,
        vec![shared_snap.clone()]
    );
    assert!(decision(&r, &stale).delete_snapshots.is_empty());
    assert!(!w.exists(EAST, &stale).await);
    assert!(
        w.snapshot_exists(EAST, &shared_snap).await,
        "still used by {other}"
    );
    assert!(w.exists(EAST, &other).await);
}

/// Found by review: an orphan whose DeleteSnapshot answered "in use" was retried (0.5, 1 and
/// 2 s later) while it held its call slot, without a pacer token for the retries, and the
/// orphans were deleted one after another: with one slot, every other orphan waited 3.5 s
/// behind it, and past the deadline was deferred. Now each attempt takes its own turn and gives
/// the slot back while it waits, and the orphans are swept side by side: with one slot and three
/// seconds left, the free orphans go while the busy one waits, and its retry that could not
/// start before the deadline (2 s after the third call) is not waited for.
#[tokio::test]
async fn an_orphan_in_use_waits_without_its_slot_and_others_are_swept_meanwhile() {
    const LEFT: Duration = Duration::from_secs(3);
    let w = one_run_world(&[("CLEANUP_CONCURRENCY", "1")]).await;
    let ec2 = w.ec2(EAST);
    let mut orphans = Vec::new();
    for _ in 0..3 {
        let snap = fixtures::snapshot(&ec2, &[("ami-pipeline:managed", "true")]).await;
        w.acct.control(
            "POST",
            "/ami-pipeline-emulator/snapshot-start-time",
            Some(json!({"region": EAST, "snapshot_id": snap,
                        "start_time": (Utc::now() - Days::days(20)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})),
        );
        orphans.push(snap);
    }
    // The busy orphan is the one swept first (a dry run shows the order), so the others can
    // only be swept meanwhile if it gives its slot back while it waits.
    let dry = w.run(json!({"dry_run": true}), Utc::now()).await;
    let busy = dry
        .orphans
        .first()
        .expect("three orphans")
        .snapshot_id
        .clone();
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DeleteSnapshot",
        "status": 400, "code": "InvalidSnapshot.InUse", "resource": busy,
        "message": format!("The snapshot {busy} is currently in use by ami-0123456789abcdef0")}));
    w.acct.reset_requests();
    let r = real_run_with_time_left(&w, LEFT).await;
    let swept: Vec<&str> = r.orphans.iter().map(|o| o.snapshot_id.as_str()).collect();
    assert_eq!(swept.len(), 3, "{swept:?}");
    assert_eq!(swept[0], busy, "the same order as the dry run");
    assert_eq!(
        step_result(&r, &busy, "delete-snapshot"),
        &StepResult::LeftInUse
    );
    assert!(w.snapshot_exists(EAST, &busy).await);
    for free in orphans.iter().filter(|o| **o != busy) {
        assert_eq!(step_result(&r, free, "delete-snapshot"), &StepResult::Done);
        assert!(!w.snapshot_exists(EAST, free).await, "{free}");
    }
    // The busy orphan: its first call and the retries that could start in the three seconds
    // (0.5 and 1.5 s after it), not the one 3.5 s after it.
    let calls = w.acct.requests();
    let busy_calls = calls["ec2:DeleteSnapshot"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(2);
    assert!((2..=3).contains(&busy_calls), "{calls}");
}

/// A disabled image still holds its snapshot and can be enabled again, but DescribeImages
/// leaves disabled images out unless asked (`IncludeDisabled`). Before, cleanup did not list
/// them, so a stale disabled image's snapshot was planned as an orphan (refused `InUse` for a
/// root volume on every run; another volume's could have been deleted). Now the image is
/// listed, left with its reason, and its snapshot is not an orphan.
#[tokio::test]
async fn a_disabled_images_snapshot_is_no_orphan_and_the_image_is_left_with_its_reason() {
    let w = world().await;
    w.managed(EAST, "dis", "dis-newest", 1).await;
    w.managed(EAST, "dis", "dis-second", 2).await;
    let (disabled, snap) = w.managed(EAST, "dis", "dis-disabled", 100).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/snapshot-start-time",
        Some(json!({"region": EAST, "snapshot_id": snap,
                    "start_time": (Utc::now() - Days::days(100)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})),
    );
    w.ec2(EAST)
        .disable_image()
        .image_id(&disabled)
        .send()
        .await
        .expect("disable the image");
    let r = w
        .run(json!({"dry_run": false}), Utc::now() + Days::days(8))
        .await;
    assert!(r.orphans.is_empty(), "{:?}", r.orphans);
    assert!(w.snapshot_exists(EAST, &snap).await);
    assert_eq!(action(&r, &disabled), "skip", "{r:?}");
    assert!(
        decision(&r, &disabled)
            .reasons
            .iter()
            .any(|why| why.contains("state is disabled")),
        "{:?}",
        decision(&r, &disabled).reasons
    );
}

#[tokio::test]
async fn the_cap_holds_and_a_dry_run_is_exactly_the_real_run() {
    let w = world().await;
    w.managed(EAST, "cap", "cap-newest", 1).await;
    w.managed(EAST, "cap", "cap-second", 2).await;
    let mut stale = Vec::new();
    for n in 0..5 {
        stale.push(
            w.managed(EAST, "cap", &format!("cap-old-{n}"), 100 + n)
                .await
                .0,
        );
    }
    let now = Utc::now();
    w.run(json!({"dry_run": false}), now).await;
    let later = now + Days::days(8);
    w.acct.reset_requests();
    let dry = w.run(json!({"max_deletions": 2}), later).await;
    assert!(dry.dry_run, "manual runs are dry unless told otherwise");
    assert_eq!(dry.capped, 3);
    for i in &stale {
        assert!(w.exists(EAST, i).await, "a dry run changes nothing");
    }
    // It reads the checks as the real run does, and makes no change at all.
    let calls = w.acct.requests();
    assert_eq!(calls["ec2:DescribeImageAttribute"], 2, "{calls}");
    for change in [
        "ec2:DeregisterImage",
        "ec2:EnableImageDeprecation",
        "ec2:CreateTags",
        "ec2:DeleteSnapshot",
    ] {
        assert!(
            calls.get(change).is_none(),
            "{change} in a dry run: {calls}"
        );
    }
    let real = w
        .run(json!({"max_deletions": 2, "dry_run": false}), later)
        .await;
    assert_eq!(
        real.decisions, dry.decisions,
        "the dry run printed exactly the plan"
    );
    assert_eq!(real.orphans, dry.orphans);
    let planned: Vec<(&str, &str)> = dry
        .steps
        .iter()
        .map(|s| (s.resource.as_str(), s.action))
        .collect();
    let mut done: Vec<(&str, &str)> = real
        .steps
        .iter()
        .map(|s| (s.resource.as_str(), s.action))
        .collect();
    let mut planned = planned;
    planned.sort();
    done.sort();
    assert_eq!(done, planned);
    assert_eq!(real.capped, 3);
    // The two oldest went.
    assert!(!w.exists(EAST, &stale[4]).await && !w.exists(EAST, &stale[3]).await);
    for i in &stale[..3] {
        assert!(w.exists(EAST, i).await);
        assert!(decision(&real, i).reasons[0].contains("per-run cap of 2"));
    }
}

#[tokio::test]
async fn two_regions_in_one_run() {
    let w = world().await;
    for region in [EAST, WEST] {
        w.managed(region, "multi", "multi-new", 1).await;
        w.managed(region, "multi", "multi-mid", 2).await;
        w.managed(region, "multi", "multi-old", 100).await;
    }
    let r = w
        .run(
            json!({"regions": [EAST, WEST], "dry_run": false}),
            Utc::now(),
        )
        .await;
    assert_eq!(r.regions, vec![EAST, WEST]);
    for region in [EAST, WEST] {
        let c = &r.summary[&format!("{region}/multi")];
        assert_eq!((c.keep, c.deprecate), (2, 1), "{region}");
    }
    assert_eq!(
        r.steps
            .iter()
            .filter(|s| s.result == StepResult::Done)
            .count(),
        2
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_changes() {
    let w = world().await;
    w.managed(EAST, "web", "web-new", 1).await;
    let (old, _) = w.managed(EAST, "web", "web-old", 100).await;
    let (older, _) = w.managed(EAST, "web", "web-older", 120).await;
    for (event, expected) in [
        (
            json!({"families": ["wbe"], "dry_run": false}),
            "unknown family \"wbe\" (families in scope: web)",
        ),
        (
            json!({"keep_newest": -1, "dry_run": false}),
            "keep_newest must be a whole number from 0 to 1000, not -1",
        ),
        (
            json!({"max_deletions": "5", "dry_run": false}),
            "max_deletions must be a whole number",
        ),
        (json!({"dry_run": "no"}), "dry_run must be true or false"),
        (
            json!({"regions": ["us-east1"], "dry_run": false}),
            "regions: \"us-east1\" is not an AWS region",
        ),
        (
            json!({"keep": 1, "dry_run": false}),
            "unknown field \"keep\"",
        ),
        (
            json!({"regions": (0..100_000).map(|n| format!("xx-{n}-1")).collect::<Vec<_>>(), "dry_run": false}),
            "regions: 100000 distinct regions, at most 64 per request",
        ),
        (
            json!({"detail-type": "Object Created", "source": "aws.s3"}),
            "is not a \"Scheduled Event\"",
        ),
        (json!([1, 2]), "must be a JSON object"),
    ] {
        let err = w
            .try_run(event.clone(), Utc::now())
            .await
            .expect_err("refused");
        assert_eq!(err.error_type(), "InvalidEvent", "{event}");
        assert!(err.to_string().contains(expected), "{event}: {err}");
    }
    // A manual invoke without dry_run only reports.
    let r = w.run(json!({}), Utc::now() + Days::days(30)).await;
    assert!(r.dry_run);
    assert_eq!(
        r.steps
            .iter()
            .filter(|s| s.result == StepResult::Planned)
            .count(),
        1
    );
    for i in [&old, &older] {
        let d = shared::aws::ec2::describe_own_image(&w.ec2(EAST), i)
            .await
            .expect("describe")
            .expect("still there");
        assert!(d.deprecation_time.is_none(), "nothing was deprecated");
    }
    // The scheduled run follows DRY_RUN (default true).
    let r = w
        .run(json!({"version": "0", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}), Utc::now())
        .await;
    assert!(r.dry_run);
    assert!(w.exists(EAST, &older).await);
}

/// A world removing stale images in one run (`GRACE_DAYS=0`).
async fn one_run_world(extra: &[(&str, &str)]) -> World {
    let mut env = vec![
        ("KEEP_NEWEST", "1"),
        ("MIN_AGE_DAYS", "30"),
        ("GRACE_DAYS", "0"),
        ("MAX_DELETIONS", "100"),
    ];
    env.extend_from_slice(extra);
    World::new(&env).await
}

/// A real run (`{"dry_run": false}`) whose invocation may start calls for `left` more (its
/// deadline's safety margin comes after).
async fn real_run_with_time_left(w: &World, left: Duration) -> Report {
    use shared::runner::Function;
    let deadline = shared::deadline::Deadline::after(shared::deadline::SAFETY_MARGIN + left);
    let event =
        shared::runner::parse_payload(&json!({"dry_run": false}).to_string()).expect("event");
    w.deps
        .invoke(&event, Utc::now(), deadline)
        .await
        .expect("the run reports what it did and left")
}

fn step_result<'a>(r: &'a Report, resource: &str, action: &str) -> &'a StepResult {
    &r.steps
        .iter()
        .find(|s| s.resource == resource && s.action == action)
        .unwrap_or_else(|| panic!("no {action} step for {resource}: {:?}", r.steps))
        .result
}

#[tokio::test]
async fn grace_zero_removes_in_one_run_with_the_snapshots_in_the_same_call() {
    let w = one_run_world(&[]).await;
    let ec2 = w.ec2(EAST);
    w.managed(EAST, "one", "one-new", 1).await;
    let (old, old_snap) = w.managed(EAST, "one", "one-old", 100).await;
    let (older, older_snap) = w.managed(EAST, "one", "one-older", 120).await;
    // A kept, foreign image uses older's snapshot: EC2 skips it.
    let other = fixtures::register(&ec2, "one-other", &older_snap, &[]).await;
    // An SSM parameter points at a third stale image: it is in use.
    let (param_image, _) = w.managed(EAST, "one", "one-param", 110).await;
    let ssm = aws_sdk_ssm::Client::new(&w.acct.sdk);
    ssm.put_parameter()
        .name("/golden/web")
        .value(&param_image)
        .data_type("aws:ec2:image")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("put parameter");
    w.acct.reset_requests();
    let r = w.run(json!({"dry_run": false}), Utc::now()).await;
    assert_eq!(action(&r, &old), "deregister", "{:?}", decision(&r, &old));
    assert!(decision(&r, &old).reasons[0].contains("without a deprecation"));
    assert!(!w.exists(EAST, &old).await && !w.exists(EAST, &older).await);
    assert_eq!(
        step_result(&r, &old_snap, "delete-snapshot"),
        &StepResult::Done
    );
    assert!(!w.snapshot_exists(EAST, &old_snap).await);
    assert!(
        matches!(
            step_result(&r, &older_snap, "delete-snapshot"),
            StepResult::Kept(_)
        ),
        "{:?}",
        r.steps
    );
    assert!(
        w.snapshot_exists(EAST, &older_snap).await,
        "{other} uses it"
    );
    assert_eq!(action(&r, &param_image), "skip");
    let why = decision(&r, &param_image).reasons.join("; ");
    assert!(why.contains("parameter/golden/web"), "{why}");
    // One call per removal: no separate DeleteSnapshot, no deprecation.
    let calls = w.acct.requests();
    assert_eq!(calls["ec2:DeregisterImage"], 2, "{calls}");
    assert!(calls.get("ec2:DeleteSnapshot").is_none(), "{calls}");
    assert!(calls.get("ec2:EnableImageDeprecation").is_none(), "{calls}");
    assert!(calls.get("ec2:DescribeInstances").is_none(), "{calls}");
    assert_eq!(calls["ec2:DescribeImageReferences"], 1, "{calls}");
}

/// Issue #15, found by the chaos harness (cleanup runs overlapping, seed 7): two runs plan the
/// same removal; the second DeregisterImage gets `InvalidAMIID.Unavailable` (EC2's answer for an
/// image already deregistered) and the whole run failed for a removal that is done. Here the
/// fault rule answers what EC2 answers the second run.
#[tokio::test]
async fn an_image_another_run_deregistered_first_is_done_not_a_failure() {
    let w = one_run_world(&[]).await;
    w.managed(EAST, "race", "race-new", 1).await;
    let (gone, _) = w.managed(EAST, "race", "race-old", 100).await;
    let (other, _) = w.managed(EAST, "race", "race-older", 120).await;
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DeregisterImage",
        "status": 400, "code": "InvalidAMIID.Unavailable",
        "message": format!("The image id '[{gone}]' is no longer available"),
        "resource": gone, "count": 1}));
    let r = w.run(json!({"dry_run": false}), Utc::now()).await;
    assert_eq!(
        step_result(&r, &gone, "deregister"),
        &StepResult::AlreadyGone
    );
    assert!(!w.exists(EAST, &other).await, "the others go on");
}

/// A removal that fails is named in the `cleanup.report` message, not only counted: the
/// decisions still say `deregister` for it (what the plan decided), so without the step a
/// subscriber could not tell which image stayed.
#[tokio::test]
async fn the_report_message_names_the_steps_that_did_not_happen() {
    let w = one_run_world(&[]).await;
    w.managed(EAST, "named", "named-new", 1).await;
    let (refused, _) = w.managed(EAST, "named", "named-old", 100).await;
    let (other, _) = w.managed(EAST, "named", "named-older", 120).await;
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DeregisterImage",
        "status": 400, "code": "UnauthorizedOperation",
        "message": "You are not authorized to perform this operation.", "resource": refused}));
    let err = w
        .try_run(json!({"dry_run": false}), Utc::now())
        .await
        .expect_err("one removal failed");
    assert!(err.to_string().contains(&refused), "{err}");
    assert!(!w.exists(EAST, &other).await, "the others go on");
    let messages = w.acct.drain(&w.queue).await;
    let summary = &messages
        .iter()
        .find(|m| m["event_type"] == "cleanup.report")
        .expect("report sent")["summary"];
    assert_eq!(summary["failed_steps"], 1, "{summary}");
    let unfinished = summary["unfinished_steps"].as_array().expect("a list");
    assert_eq!(unfinished.len(), 1, "{summary}");
    assert_eq!(unfinished[0]["resource"], refused.as_str());
    assert_eq!(unfinished[0]["action"], "deregister");
    assert_eq!(unfinished[0]["region"], EAST);
    assert!(
        unfinished[0]["result"]
            .as_str()
            .is_some_and(|r| r.contains("UnauthorizedOperation")),
        "{summary}"
    );
    assert_eq!(summary["unfinished_steps_omitted"], 0);
}

/// References are read ten images per call; a call that fails for one image (here an id EC2
/// answers "not found" for, as an image deregistered by someone else since the listing may be)
/// keeps only that image: the batch is read again one image at a time, and the other nine are
/// removed in the same run (before: all ten skipped with "references could not be read").
#[tokio::test]
async fn a_reference_read_that_fails_for_one_image_keeps_only_that_image() {
    let w = one_run_world(&[]).await;
    w.managed(EAST, "refs", "refs-new", 1).await;
    let mut stale = Vec::new();
    for days in 100..110 {
        stale.push(
            w.managed(EAST, "refs", &format!("refs-{days}"), days)
                .await
                .0,
        );
    }
    let odd = stale[4].clone();
    w.acct.inject_fault(
        json!({"service": "ec2", "action": "DescribeImageReferences",
        "status": 400, "code": "InvalidAMIID.NotFound",
        "message": format!("The image id '[{odd}]' does not exist"), "resource": odd}),
    );
    w.acct.reset_requests();
    let r = w.run(json!({"dry_run": false}), Utc::now()).await;
    assert_eq!(action(&r, &odd), "skip");
    let why = decision(&r, &odd).reasons.join("; ");
    assert!(
        why.contains("references could not be read") && why.contains(&odd),
        "{why}"
    );
    assert!(w.exists(EAST, &odd).await);
    for image in stale.iter().filter(|i| **i != odd) {
        assert_eq!(action(&r, image), "deregister", "{:?}", decision(&r, image));
        assert!(!w.exists(EAST, image).await, "{image} was held back");
    }
    // One batch call, then one per image of it.
    let calls = w.acct.requests();
    assert_eq!(calls["ec2:DescribeImageReferences"], 11, "{calls}");
}

/// A reference read refused for the whole batch (a denied permission) is not split into ten
/// more calls that would get the same answer: one call, every image of it skipped with the
/// reason, nothing removed.
#[tokio::test]
async fn a_reference_read_refused_for_the_batch_is_not_read_again_image_by_image() {
    let w = one_run_world(&[]).await;
    w.managed(EAST, "deny", "deny-new", 1).await;
    let mut stale = Vec::new();
    for days in 100..105 {
        stale.push(
            w.managed(EAST, "deny", &format!("deny-{days}"), days)
                .await
                .0,
        );
    }
    w.acct.inject_fault(
        json!({"service": "ec2", "action": "DescribeImageReferences",
        "status": 403, "code": "UnauthorizedOperation",
        "message": "You are not authorized to perform this operation."}),
    );
    w.acct.reset_requests();
    let r = w.run(json!({"dry_run": false}), Utc::now()).await;
    for image in &stale {
        assert_eq!(action(&r, image), "skip", "{:?}", decision(&r, image));
        let why = decision(&r, image).reasons.join("; ");
        assert!(why.contains("UnauthorizedOperation"), "{why}");
        assert!(w.exists(EAST, image).await);
    }
    let calls = w.acct.requests();
    assert_eq!(calls["ec2:DescribeImageReferences"], 1, "{calls}");
}

#[tokio::test]
async fn an_image_whose_sharing_cannot_be_read_is_skipped_and_the_rest_go_on() {
    let w = one_run_world(&[]).await;
    w.managed(EAST, "rd", "rd-new", 1).await;
    let (unreadable, _) = w.managed(EAST, "rd", "rd-old", 100).await;
    let (fine, _) = w.managed(EAST, "rd", "rd-older", 120).await;
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeImageAttribute",
        "status": 503, "code": "ServiceUnavailable", "resource": unreadable}));
    let r = w.run(json!({"dry_run": false}), Utc::now()).await;
    assert_eq!(action(&r, &unreadable), "skip");
    let why = decision(&r, &unreadable).reasons.join("; ");
    assert!(
        why.contains("launch permissions could not be read"),
        "{why}"
    );
    assert!(w.exists(EAST, &unreadable).await);
    assert!(!w.exists(EAST, &fine).await, "the others are not held back");
}

/// Issue #17: each image is removed as soon as its own checks are clean, while the next ones
/// are still being read (on a rate-limited account the reads and the removals then drain their
/// buckets side by side, not one after the other). The checks are read ten images at a time,
/// newest first; the last batch's launch permissions are held for a few seconds, and the first
/// batch's images are gone before that read is answered.
#[tokio::test]
async fn images_are_removed_while_the_next_ones_are_still_being_read() {
    // The first batch's checks and removals must fit within it, on a loaded machine too (the
    // emulator holds a request for at most 30 s; an SDK attempt times out at 30 s).
    const HELD: Duration = Duration::from_secs(20);
    let w = one_run_world(&[]).await;
    w.managed(EAST, "stream", "stream-new", 1).await;
    let mut stale = Vec::new();
    for days in 100..115 {
        stale.push(
            w.managed(EAST, "stream", &format!("stream-{days}"), days)
                .await
                .0,
        );
    }
    let (first_batch, last) = (&stale[..10], &stale[14]);
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeImageAttribute",
        "delay_seconds": HELD.as_secs_f64(), "resource": last}));
    let start = std::time::Instant::now();
    let watch = async {
        loop {
            let mut gone = 0;
            for image in first_batch {
                gone += usize::from(!w.exists(EAST, image).await);
            }
            if gone == first_batch.len() || start.elapsed() > HELD * 2 {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (r, first_batch_gone) = tokio::join!(w.run(json!({"dry_run": false}), Utc::now()), watch);
    let whole_run = start.elapsed();
    assert!(
        whole_run >= HELD,
        "the held read took {whole_run:?}: the rule did not fire"
    );
    assert!(
        first_batch_gone < HELD,
        "the first ten were gone only after {first_batch_gone:?}, not while the last read was held"
    );
    // The report is the second plan's, and every removal is in it once.
    for image in &stale {
        assert_eq!(action(&r, image), "deregister", "{:?}", decision(&r, image));
        assert_eq!(step_result(&r, image, "deregister"), &StepResult::Done);
        assert!(!w.exists(EAST, image).await);
    }
    let deregistered = r.steps.iter().filter(|s| s.action == "deregister").count();
    assert_eq!(deregistered, stale.len(), "{:?}", r.steps);
    assert_eq!(w.acct.requests()["ec2:DeregisterImage"], stale.len());
}

/// Review of #17: an image the listing showed private and that was made public before its
/// launch permissions were read is public (`all` in the permissions), and kept: removing each
/// image as soon as its checks clear must not take it.
#[tokio::test]
async fn an_image_made_public_after_the_listing_is_kept_as_public() {
    let w = one_run_world(&[]).await;
    let ec2 = w.ec2(EAST);
    w.managed(EAST, "late", "late-new", 1).await;
    let (late, _) = w.managed(EAST, "late", "late-old", 100).await;
    w.acct.reset_requests();
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeImageAttribute",
        "delay_seconds": 3.0, "resource": late}));
    let make_public = async {
        // Its launch permissions are being read (the request is held): the listing is done.
        while w
            .acct
            .requests()
            .get("ec2:DescribeImageAttribute")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fixtures::make_public(&ec2, &late).await
    };
    let (r, made) = tokio::join!(w.run(json!({"dry_run": false}), Utc::now()), make_public);
    made.expect("make it public");
    assert_eq!(action(&r, &late), "skip", "{:?}", decision(&r, &late));
    let why = decision(&r, &late).reasons.join("; ");
    assert!(why.contains("public"), "{why}");
    assert!(w.exists(EAST, &late).await);
    assert!(w.acct.requests().get("ec2:DeregisterImage").is_none());
}

#[tokio::test]
async fn a_rerun_keeps_the_deprecation_time_and_a_kept_image_is_undeprecated() {
    let w = world().await;
    w.managed(EAST, "ud", "ud-new", 1).await;
    w.managed(EAST, "ud", "ud-second", 2).await;
    let (stale, _) = w.managed(EAST, "ud", "ud-old", 100).await;
    let now = Utc::now();
    let r = w.run(json!({"dry_run": false}), now).await;
    assert_eq!(action(&r, &stale), "deprecate");
    let first = shared::aws::ec2::describe_own_image(&w.ec2(EAST), &stale)
        .await
        .expect("describe")
        .expect("exists");
    let at = first.deprecation_time.clone().expect("deprecated");
    assert_eq!(
        first
            .tags
            .get("ami-pipeline:deprecated-by")
            .map(String::as_str),
        Some("cleanup")
    );
    // A run 10 minutes later (a 10-minute schedule) does not move it.
    let r = w
        .run(json!({"dry_run": false}), now + Days::minutes(10))
        .await;
    assert_eq!(action(&r, &stale), "keep");
    assert!(decision(&r, &stale).reasons[0].contains("takes effect at"));
    let again = shared::aws::ec2::describe_own_image(&w.ec2(EAST), &stale)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(again.deprecation_time.as_deref(), Some(at.as_str()));
    // The policy now keeps 5: the deprecation cleanup made is removed, with its mark.
    let r = w
        .run(json!({"dry_run": false, "keep_newest": 5}), now)
        .await;
    assert_eq!(action(&r, &stale), "undeprecate");
    let after = shared::aws::ec2::describe_own_image(&w.ec2(EAST), &stale)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(after.deprecation_time, None);
    assert!(!after.tags.contains_key("ami-pipeline:deprecated-by"));
}

#[tokio::test]
async fn an_image_with_no_room_for_the_mark_fails_alone_and_the_others_are_deprecated() {
    // The images to deprecate are marked in one CreateTags per region, which EC2 refuses as a
    // whole (TagLimitExceeded) when one of them already holds 50 tags. Before, that one image
    // kept every deprecation of its region from being made, on every run.
    let w = world().await;
    w.managed(EAST, "tl", "tl-new", 1).await;
    w.managed(EAST, "tl", "tl-second", 2).await;
    let (old, _) = w.managed(EAST, "tl", "tl-old", 100).await;
    let (full, _) = w.managed(EAST, "tl", "tl-full", 110).await;
    let (older, _) = w.managed(EAST, "tl", "tl-older", 120).await;
    let more: Tags = (0..48)
        .map(|i| (format!("team:label-{i:02}"), format!("v{i}")))
        .collect();
    shared::aws::ec2::create_tags(&w.ec2(EAST), &[full.as_str()], &more)
        .await
        .expect("48 more tags: 50 in all");
    // The run reports the one failed step, naming the image and EC2's answer for it.
    let err = w
        .try_run(json!({"dry_run": false}), Utc::now())
        .await
        .expect_err("one step failed");
    let text = err.to_string();
    for part in [
        "1 of 3 steps failed",
        &format!("deprecate {full}"),
        "TagLimitExceeded",
    ] {
        assert!(text.contains(part), "{part} not in {text}");
    }
    for image in [&old, &older] {
        let img = shared::aws::ec2::describe_own_image(&w.ec2(EAST), image)
            .await
            .expect("describe")
            .expect("exists");
        assert!(img.deprecation_time.is_some(), "{img:?}");
        assert_eq!(img.tags["ami-pipeline:deprecated-by"], "cleanup");
    }
    let img = shared::aws::ec2::describe_own_image(&w.ec2(EAST), &full)
        .await
        .expect("describe")
        .expect("exists");
    // An unmarked deprecation is not made.
    assert_eq!(img.deprecation_time, None, "{img:?}");
}

#[tokio::test]
async fn a_mark_refused_for_every_image_is_not_tried_again_image_by_image() {
    // A denial is the same for every image: the batch fails as it is, one call, not one more
    // per image (nor would a throttled one).
    let w = world().await;
    w.managed(EAST, "dn", "dn-new", 1).await;
    w.managed(EAST, "dn", "dn-second", 2).await;
    for n in 0..3 {
        w.managed(EAST, "dn", &format!("dn-old-{n}"), 100 + n).await;
    }
    w.acct.inject_fault(json!({"service": "ec2", "action": "CreateTags", "status": 403,
        "code": "UnauthorizedOperation", "message": "You are not authorized to perform this operation."}));
    w.acct.reset_requests();
    let err = w
        .try_run(json!({"dry_run": false}), Utc::now())
        .await
        .expect_err("every deprecation failed");
    assert!(err.to_string().contains("3 of 3 steps failed"), "{err}");
    assert_eq!(w.acct.requests()["ec2:CreateTags"].as_u64(), Some(1));
}

#[tokio::test]
async fn paced_removals_stay_below_the_bucket_where_unpaced_ones_are_throttled() {
    // The account's DeregisterImage bucket (the emulator's) is set to 18 tokens and 1 per
    // second; cleanup paces at API_BUDGET_PERCENT=20 of the documented 100 / 5: 1 per second
    // and a burst of 10 (half its share of 20 tokens, the other half left in reserve), 8 below
    // it whatever the arrival jitter. 30 removals: paced, none is throttled; unpaced, some are
    // unless the 30 take longer than 12 s (and the SDK's retry completes most).
    let mut throttled = Vec::new();
    for percent in ["20", "0"] {
        let w = one_run_world(&[
            ("API_BUDGET_PERCENT", percent),
            ("CLEANUP_CONCURRENCY", "8"),
        ])
        .await;
        w.managed(EAST, "pace", "pace-new", 1).await;
        let mut stale = Vec::new();
        for n in 0..30 {
            stale.push(
                w.managed(EAST, "pace", &format!("pace-{n:02}"), 100 + n)
                    .await
                    .0,
            );
        }
        w.acct.control(
            "POST",
            "/ami-pipeline-emulator/rate-limits",
            Some(json!({"enabled": true,
                "actions": {"DeregisterImage": {"capacity": 18, "refill_per_second": 1.0}}})),
        );
        let result = w.try_run(json!({"dry_run": false}), Utc::now()).await;
        let path = format!(
            "/ami-pipeline-emulator/rate-limits?account_id={}",
            w.acct.account_id
        );
        let limits = w.acct.control("GET", &path, None);
        w.acct.control("DELETE", &path, None);
        if percent == "0" {
            // Unpaced, the SDK's adaptive retry completes most throttled calls; one whose
            // attempts all met an empty bucket (likelier on a loaded machine) fails its step,
            // and so the invocation, which the next run retries. Nothing else may fail.
            if let Err(e) = result {
                let text = e.to_string();
                let (_, errors) = text
                    .split_once(" steps failed: ")
                    .unwrap_or_else(|| panic!("not a step failure: {text}"));
                assert!(
                    errors
                        .split(" | ")
                        .all(|e| e.contains("RequestLimitExceeded")),
                    "{text}"
                );
            }
        } else {
            let r = result.unwrap_or_else(|e| panic!("paced cleanup failed: {e}"));
            assert!(
                r.steps.iter().all(|s| !s.result.is_failure()),
                "{:?}",
                r.steps
            );
            for i in &stale {
                assert!(!w.exists(EAST, i).await, "{i} removed");
            }
        }
        throttled.push((
            limits["throttled"]["total"].as_u64().unwrap_or(u64::MAX),
            limits["throttled"]["by_action"].clone(),
        ));
    }
    assert_eq!(throttled[0].0, 0, "paced: never throttled: {throttled:?}");
    assert!(throttled[1].0 > 0, "unpaced: throttled {throttled:?}");
}

#[tokio::test]
async fn a_manual_relaxation_of_safety_is_recorded_in_the_report_and_the_message() {
    let w = world().await;
    w.managed(EAST, "rx", "rx-new", 1).await;
    let r = w
        .run(
            json!({"allow_public": true, "min_age_days": 7, "keep_newest": 5}),
            Utc::now(),
        )
        .await;
    assert_eq!(
        r.relaxed,
        [
            "allow_public: false → true (manual invoke)",
            "min_age_days: 30 → 7 (manual invoke)"
        ],
        "keep_newest 5 only tightens"
    );
    let messages = w.acct.drain(&w.queue).await;
    let summary = &messages
        .iter()
        .find(|m| m["event_type"] == "cleanup.report")
        .expect("report sent")["summary"];
    assert_eq!(
        summary["relaxed"][0],
        "allow_public: false → true (manual invoke)"
    );
    // The schedule never relaxes anything.
    let r = w
        .run(json!({"version": "0", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}), Utc::now())
        .await;
    assert!(r.relaxed.is_empty());
}

/// Found by the benchmark: with `CLEANUP_CONCURRENCY=1` (a setting the function accepts) the
/// run stopped for good after its first four calls. A reference read queued for the one call
/// slot was handed the slot while nothing polled it: the stage that would have polled it was
/// itself full of launch-permission reads waiting for that slot. Every setting from 1 up must
/// finish, with three batches of reference reads (more than the two read ahead).
#[tokio::test]
async fn every_concurrency_setting_finishes_the_run() {
    // A liveness bound, not a timing: the run takes a few seconds; hung, it never ends.
    const HUNG: Duration = Duration::from_secs(120);
    for concurrency in ["1", "2", "3"] {
        let w = one_run_world(&[("CLEANUP_CONCURRENCY", concurrency)]).await;
        w.managed(EAST, "slots", "slots-new", 1).await;
        let mut stale = Vec::new();
        for days in 100..125 {
            stale.push(
                w.managed(EAST, "slots", &format!("slots-{days}"), days)
                    .await
                    .0,
            );
        }
        let r = tokio::time::timeout(HUNG, w.run(json!({"dry_run": false}), Utc::now()))
            .await
            .unwrap_or_else(|_| panic!("CLEANUP_CONCURRENCY={concurrency}: no end after {HUNG:?}"));
        for image in &stale {
            assert_eq!(step_result(&r, image, "deregister"), &StepResult::Done);
            assert!(!w.exists(EAST, image).await, "{image}");
        }
        let calls = w.acct.requests();
        assert_eq!(calls["ec2:DescribeImageReferences"], 3, "{calls}");
    }
}

/// Found by review: a call that waited for a slot behind slow calls was made once its slot came,
/// however close the invocation was to its end by then (the deadline was checked only before
/// the wait). With one slot held by a read that outlasts the deadline's safety margin, the
/// call queued behind it (the next batch's first launch-permission read) is not made, and
/// nothing is removed this run: the next schedule continues.
#[tokio::test]
async fn a_call_whose_slot_comes_past_the_deadline_is_not_made() {
    // The run may start calls for LEFT (the deadline's 30 s safety margin comes after it); the
    // first launch-permission read is held for longer, and the rest wait for its slot.
    const LEFT: Duration = Duration::from_secs(20);
    const HELD: Duration = Duration::from_secs(25);
    let w = one_run_world(&[("CLEANUP_CONCURRENCY", "1")]).await;
    w.managed(EAST, "late", "late-new", 1).await;
    let mut stale = Vec::new();
    // Two batches: the second batch's first read is queued for the slot from the start.
    for days in 100..112 {
        stale.push(
            w.managed(EAST, "late", &format!("late-{days}"), days)
                .await
                .0,
        );
    }
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeImageAttribute",
        "delay_seconds": HELD.as_secs_f64()}));
    w.acct.reset_requests();
    let start = std::time::Instant::now();
    let r = real_run_with_time_left(&w, LEFT).await;
    assert!(
        start.elapsed() >= HELD,
        "the held read took {:?}: the rule did not fire",
        start.elapsed()
    );
    let calls = w.acct.requests();
    assert_eq!(calls["ec2:DescribeImageAttribute"], 1, "{calls}");
    assert!(calls.get("ec2:DeregisterImage").is_none(), "{calls}");
    // The read image was cleared, and its removal deferred; the unread ones wait, named.
    assert_eq!(
        step_result(&r, &stale[0], "deregister"),
        &StepResult::Deferred
    );
    for image in &stale {
        assert!(w.exists(EAST, image).await, "{image}");
    }
    for image in &stale[1..] {
        assert_eq!(action(&r, image), "keep", "{:?}", decision(&r, image));
        let why = decision(&r, image).reasons.join("; ");
        assert!(
            why.contains("not read this run (the invocation's deadline"),
            "{why}"
        );
    }
}
