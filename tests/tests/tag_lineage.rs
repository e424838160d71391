//! tag-lineage against the local emulator, through the real handler: each trigger, the manual
//! tag contract and its validation, ancestry over three generations in two regions, children,
//! a deregistered middle ancestor, a conflict, snapshots carrying the tags, and `image.ready`
//! received by an SQS subscriber of the topic.

use chrono::Utc;
use serde_json::{Value, json};
use shared::invocation::InvocationError;
use std::time::Duration;
use support::{aws_events, fixtures};
use tag_lineage::Deps;

const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";

type World = support::World<Deps>;

async fn world() -> World {
    world_waiting(1).await
}

/// A world whose tag-lineage looks an image up again for `visibility_wait` seconds.
async fn world_waiting(visibility_wait: u64) -> World {
    let wait = visibility_wait.to_string();
    World::new(&[
        ("LINEAGE_REGIONS", "us-east-1,us-west-2"),
        ("VISIBILITY_WAIT_SECONDS", wait.as_str()),
    ])
    .await
}

/// This file's helpers on the world.
trait Helpers {
    async fn try_run(&self, event: Value) -> Result<Value, InvocationError>;
    async fn run(&self, event: Value) -> Value;
    async fn available(&self, region: &str, image: &str) -> Value;
}

impl Helpers for World {
    async fn try_run(&self, event: Value) -> Result<Value, InvocationError> {
        let out = self.invoke(&event).await?;
        Ok(serde_json::to_value(out).expect("output serializes"))
    }

    async fn run(&self, event: Value) -> Value {
        self.try_run(event)
            .await
            .unwrap_or_else(|e| panic!("handler failed: {e}"))
    }

    /// Stamps `image` in `region` through the EventBridge trigger; returns its one result.
    async fn available(&self, region: &str, image: &str) -> Value {
        let out = self
            .run(aws_events::ami_state_change(region, image, "available", ""))
            .await;
        out["results"][0].clone()
    }
}

#[tokio::test]
async fn state_change_stamps_a_root_and_its_snapshot_once() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    let (image, snap) = fixtures::image(&ec2, "plain-root", &[("team", "web")]).await;

    let first = w.available(EAST, &image).await;
    assert_eq!(first["outcome"], "stamped", "{first}");
    assert_eq!(first["origin"], "unknown");
    let tags = fixtures::tags_of(&ec2, &image).await;
    let date = tags["create_date"].as_str().expect("create_date");
    let ts: i64 = tags["create_timestamp"]
        .as_str()
        .expect("ts")
        .parse()
        .expect("number");
    assert_eq!(
        chrono::DateTime::from_timestamp(ts, 0)
            .expect("valid")
            .format("%Y%m%dT%H%M%SZ")
            .to_string(),
        date,
        "create_date and create_timestamp agree"
    );
    assert_eq!(tags["ami-pipeline:generation"], "0");
    assert_eq!(tags["team"], "web", "the owner's tags are kept");
    assert!(tags.get("source_image").is_none(), "a root has no parent");
    let snap_tags = fixtures::tags_of(&ec2, &snap).await;
    for key in ["create_date", "create_timestamp", "ami-pipeline:generation"] {
        assert_eq!(snap_tags[key], tags[key], "snapshot carries {key}");
    }

    let again = w.available(EAST, &image).await;
    assert_eq!(again["outcome"], "unchanged", "{again}");
    assert!(again.get("written").is_none());
    assert_eq!(fixtures::tags_of(&ec2, &image).await, tags);
    assert!(
        w.acct.drain(&w.queue).await.is_empty(),
        "a foreign image is not announced as ready"
    );
}

/// EC2 is eventually consistent: the "available" event of a new image can arrive before
/// DescribeImages lists it. tag-lineage looks it up again (VISIBILITY_WAIT_SECONDS) and stamps
/// it and its snapshot once it is listed, rather than giving up or stamping nothing.
#[tokio::test]
async fn an_image_not_listed_yet_is_looked_up_again_and_stamped() {
    const LAG_SECONDS: u64 = 2;
    let w = world_waiting(8).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": LAG_SECONDS})),
    );
    let ec2 = w.ec2(EAST);
    // Before the image is registered: it is listed LAG_SECONDS after that at the earliest,
    // however slow the registration's answer.
    let started = std::time::Instant::now();
    let (image, snap) = fixtures::image(&ec2, "lagging-root", &[("team", "web")]).await;
    let result = w.available(EAST, &image).await;
    assert_eq!(result["outcome"], "stamped", "{result}");
    assert!(
        started.elapsed() >= Duration::from_secs(LAG_SECONDS),
        "the image could only be found after the lag"
    );
    tokio::time::sleep(Duration::from_secs(LAG_SECONDS) + Duration::from_millis(500)).await;
    let tags = fixtures::tags_of(&ec2, &image).await;
    assert_eq!(tags["ami-pipeline:generation"], "0", "{tags}");
    assert!(tags["create_date"].is_string(), "{tags}");
    let snap_tags = fixtures::tags_of(&ec2, &snap).await;
    assert_eq!(snap_tags["create_date"], tags["create_date"]);
}

#[tokio::test]
async fn a_pipeline_image_is_announced_ready_once_from_either_trigger() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    let (image, snap) = fixtures::image(
        &ec2,
        "web-20261122",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
            ("ami-pipeline:import-task", "import-snap-0123456789abcdef0"),
            ("ami-pipeline:source-uri", "s3://uploads/web/disk.raw"),
        ],
    )
    .await;
    let registered = json!({"version": "1", "event_type": "image.registered", "time": "2026-11-22T12:00:00Z",
        "region": EAST, "image_id": image, "image_name": "web-20261122"});
    let out = w.run(aws_events::sns(&w.topic, &registered)).await;
    assert_eq!(out["trigger"], "registered");
    assert_eq!(out["results"][0]["origin"], "upload");
    assert_eq!(out["results"][0]["ready_announced"], true, "{out}");
    // The state-change event for the same image arrives too: nothing new, no second message.
    let again = w.available(EAST, &image).await;
    assert_eq!(again["outcome"], "unchanged", "{again}");
    assert_eq!(again["ready_announced"], false);

    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = &msgs[0];
    assert_eq!(m["event_type"], "image.ready");
    assert_eq!(m["version"], "1");
    assert_eq!(m["image_id"], image.as_str());
    assert_eq!(m["region"], EAST);
    assert_eq!(m["family"], "web");
    assert_eq!(m["source_uri"], "s3://uploads/web/disk.raw");
    assert_eq!(m["snapshot_ids"], json!([snap]));
    assert_eq!(m["lineage"]["ami-pipeline:generation"], "0");
    assert!(m["lineage"]["create_date"].is_string());
    let tags = fixtures::tags_of(&ec2, &image).await;
    assert!(tags["ami-pipeline:ready-at"].is_string());
    let snap_tags = fixtures::tags_of(&ec2, &snap).await;
    assert_eq!(snap_tags["ami-pipeline:family"], "web");
    assert_eq!(snap_tags["create_date"], tags["create_date"]);
}

/// root (registered, us-east-1) → copy (us-west-2) → image of an instance of the copy.
async fn three_generations(w: &World) -> (String, String, String, String) {
    let east = w.ec2(EAST);
    let west = w.ec2(WEST);
    let (root, _) = fixtures::image(
        &east,
        "base",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "base"),
        ],
    )
    .await;
    assert_eq!(w.available(EAST, &root).await["outcome"], "stamped");
    let copy = fixtures::copy(&west, &root, EAST, "base-west").await;
    let stamped = w.available(WEST, &copy).await;
    assert_eq!(stamped["outcome"], "stamped", "{stamped}");
    assert_eq!(stamped["origin"], "copy");
    let instance = fixtures::instance(&west, &copy).await;
    let child = fixtures::image_from_instance(&west, &instance, "app").await;
    let stamped = w.available(WEST, &child).await;
    assert_eq!(stamped["outcome"], "stamped", "{stamped}");
    assert_eq!(stamped["origin"], "instance");
    (root, copy, instance, child)
}

#[tokio::test]
async fn ancestry_over_three_generations_and_two_regions() {
    let w = world().await;
    let (root, copy, instance, child) = three_generations(&w).await;
    let west = w.ec2(WEST);

    let copy_tags = fixtures::tags_of(&west, &copy).await;
    assert_eq!(copy_tags["source_image"], root.as_str());
    assert_eq!(copy_tags["source_region"], EAST);
    assert_eq!(copy_tags["ami-pipeline:generation"], "1");
    assert_eq!(copy_tags["ami-pipeline:family"], "base");
    let child_tags = fixtures::tags_of(&west, &child).await;
    assert_eq!(child_tags["source_image"], copy.as_str());
    assert_eq!(child_tags["source_region"], WEST);
    assert_eq!(child_tags["source_instance"], instance.as_str());
    assert_eq!(child_tags["ami-pipeline:generation"], "2");
    assert_eq!(child_tags["ami-pipeline:family"], "base");
    assert_eq!(
        child_tags["ami-pipeline:ancestry"],
        format!("{EAST}/{root}")
    );

    let out = w.run(json!({"ancestors": child, "region": WEST})).await;
    assert_eq!(out["command"], "ancestors");
    assert_eq!(out["image"]["image_id"], child.as_str());
    assert_eq!(out["stopped"], "root");
    let chain: Vec<(String, String)> = out["ancestors"]
        .as_array()
        .expect("list")
        .iter()
        .map(|e| {
            (
                e["image_id"].as_str().unwrap_or("").to_owned(),
                e["region"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        chain,
        vec![
            (copy.clone(), WEST.to_owned()),
            (root.clone(), EAST.to_owned())
        ]
    );
    assert_eq!(out["ancestors"][0]["name"], "base-west");
    assert_eq!(out["ancestors"][0]["state"], "available");
    assert_eq!(out["ancestors"][1]["generation"], "0");
    assert!(out["ancestors"][1]["create_date"].is_string());
    assert_eq!(out["image"]["source_instance"], instance.as_str());
}

#[tokio::test]
async fn lineage_is_the_same_whatever_order_the_events_come_in() {
    // The same three generations as above, but the instance image's event comes before its
    // parent copy's (the copy still carries the root's tags through CopyImageTags), and again
    // after it: the child's lineage is right the first time and nothing conflicts later.
    let w = world().await;
    let east = w.ec2(EAST);
    let west = w.ec2(WEST);
    let (root, _) = fixtures::image(
        &east,
        "base",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "base"),
        ],
    )
    .await;
    assert_eq!(w.available(EAST, &root).await["outcome"], "stamped");
    let copy = fixtures::copy(&west, &root, EAST, "base-west").await;
    let instance = fixtures::instance(&west, &copy).await;
    let child = fixtures::image_from_instance(&west, &instance, "app").await;
    let first = w.available(WEST, &child).await;
    assert_eq!(first["outcome"], "stamped", "{first}");
    let early = fixtures::tags_of(&west, &child).await;
    assert_eq!(early["ami-pipeline:generation"], "2", "{early}");
    assert_eq!(early["ami-pipeline:ancestry"], format!("{EAST}/{root}"));
    assert_eq!(w.available(WEST, &copy).await["outcome"], "stamped");
    let again = w.available(WEST, &child).await;
    assert_ne!(again["outcome"], "conflict", "{again}");
    assert_eq!(fixtures::tags_of(&west, &child).await, early);
    assert!(
        w.acct
            .drain(&w.queue)
            .await
            .iter()
            .all(|m| m["event_type"] != "image.lineage-conflict")
    );
}

#[tokio::test]
async fn children_of_a_root_with_several_descendants() {
    let w = world().await;
    let (root, copy, _, grandchild) = three_generations(&w).await;
    let east = w.ec2(EAST);
    let copy2 = fixtures::copy(&east, &root, EAST, "base-east-copy").await;
    assert_eq!(w.available(EAST, &copy2).await["outcome"], "stamped");
    let instance = fixtures::instance(&east, &root).await;
    let direct = fixtures::image_from_instance(&east, &instance, "direct").await;
    assert_eq!(w.available(EAST, &direct).await["outcome"], "stamped");
    // An unrelated image is not a child.
    let (other, _) = fixtures::image(&east, "other", &[]).await;
    assert_eq!(w.available(EAST, &other).await["outcome"], "stamped");

    let out = w.run(json!({"children": root})).await;
    assert_eq!(out["command"], "children");
    assert_eq!(out["descendants"], 4, "{out}");
    assert_eq!(out["truncated"], false);
    assert_eq!(out["unsearched"], 0);
    assert_eq!(out["regions"], json!([EAST, WEST]));
    let tree = &out["tree"];
    assert_eq!(tree["image_id"], root.as_str());
    let mut kids: Vec<&str> = tree["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| c["image_id"].as_str().unwrap_or(""))
        .collect();
    kids.sort();
    let mut want = vec![copy.as_str(), copy2.as_str(), direct.as_str()];
    want.sort();
    assert_eq!(kids, want);
    let west_copy = tree["children"]
        .as_array()
        .expect("children")
        .iter()
        .find(|c| c["image_id"] == copy.as_str())
        .expect("the west copy");
    assert_eq!(west_copy["region"], WEST);
    assert_eq!(west_copy["children"][0]["image_id"], grandchild.as_str());

    // Asking with one region only finds what lives there.
    let east_only = w.run(json!({"children": root, "regions": [EAST]})).await;
    assert_eq!(east_only["descendants"], 2, "{east_only}");

    // Disabled images are still in the tree, both ways (DescribeImages leaves a disabled AMI
    // out unless asked: IncludeDisabled).
    east.disable_image()
        .image_id(&direct)
        .send()
        .await
        .expect("disable");
    let west = w.ec2(WEST);
    west.disable_image()
        .image_id(&copy)
        .send()
        .await
        .expect("disable");
    let with_disabled = w.run(json!({"children": root})).await;
    assert_eq!(with_disabled["descendants"], 4, "{with_disabled}");
    let up = w
        .run(json!({"ancestors": grandchild, "region": WEST}))
        .await;
    assert_eq!(up["stopped"], "root", "{up}");
    assert_eq!(up["ancestors"][0]["image_id"], copy.as_str(), "{up}");
    assert_eq!(up["ancestors"][0]["state"], "disabled", "{up}");
    assert_eq!(up["ancestors"][1]["image_id"], root.as_str(), "{up}");
}

/// A query answered by an invocation that may start calls for `left` more (its deadline's
/// safety margin comes after).
async fn query_with_time_left(w: &World, query: Value, left: Duration) -> Value {
    use shared::runner::Function;
    let deadline = shared::deadline::Deadline::after(shared::deadline::SAFETY_MARGIN + left);
    let event = shared::runner::parse_payload(&query.to_string()).expect("event");
    let out = w
        .deps
        .invoke(&event, Utc::now(), deadline)
        .await
        .expect("the query answers");
    serde_json::to_value(out).expect("output serializes")
}

/// Found by review: the queries had no deadline: a tree over many regions and generations could
/// time the Lambda out with no answer at all. With two seconds left and the image's first
/// search held for three, `children` still gives the image's own children (the least answer),
/// but not their children, and says so; `ancestors`, with the parent's read held as long, stops
/// before the root.
#[tokio::test]
async fn the_queries_answer_with_what_they_found_when_the_deadline_comes() {
    const LEFT: Duration = Duration::from_secs(2);
    let w = world().await;
    let (root, copy, _, child) = three_generations(&w).await;

    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeImages",
        "resource": "tag:source_image", "delay_seconds": 3.0, "count": 1}));
    let out = query_with_time_left(&w, json!({"children": root}), LEFT).await;
    // The image's own children are always looked for (in both regions); the copy's are not.
    assert_eq!(out["descendants"], 1, "{out}");
    assert_eq!(
        out["tree"]["children"][0]["image_id"],
        copy.as_str(),
        "{out}"
    );
    assert_eq!(out["truncated"], true, "{out}");
    assert_eq!(out["unsearched"], 1, "{out}");

    // With no time at all, the least answer still comes: the image's children.
    let out = query_with_time_left(&w, json!({"children": root}), Duration::ZERO).await;
    assert_eq!(out["descendants"], 1, "{out}");
    assert_eq!(out["unsearched"], 1, "{out}");

    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeImages",
        "resource": copy, "delay_seconds": 3.0, "count": 1}));
    let out = query_with_time_left(&w, json!({"ancestors": child, "region": WEST}), LEFT).await;
    assert_eq!(out["stopped"], "deadline", "{out}");
    let chain: Vec<&str> = out["ancestors"]
        .as_array()
        .expect("ancestors")
        .iter()
        .filter_map(|a| a["image_id"].as_str())
        .collect();
    assert_eq!(chain, vec![copy.as_str()], "{out}");
}

/// `children` searches the tree in the order it shows it (oldest first). When the deadline
/// comes while the first of two siblings is searched in its first region, its second region is
/// not searched, nor is the second sibling, nor the children found under the first: all three
/// are counted, and what was found is in the tree.
#[tokio::test]
async fn children_counts_every_image_the_deadline_left_unsearched() {
    const LEFT: Duration = Duration::from_secs(2);
    let w = world().await;
    let east = w.ec2(EAST);
    let (root, _) = fixtures::image(
        &east,
        "tree",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "tree"),
        ],
    )
    .await;
    assert_eq!(w.available(EAST, &root).await["outcome"], "stamped");
    let older = fixtures::copy(&east, &root, EAST, "tree-copy").await;
    assert_eq!(w.available(EAST, &older).await["outcome"], "stamped");
    // The lineage's create_date has whole seconds: the second sibling is a second younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let instance = fixtures::instance(&east, &root).await;
    let younger = fixtures::image_from_instance(&east, &instance, "tree-direct").await;
    assert_eq!(w.available(EAST, &younger).await["outcome"], "stamped");
    let instance = fixtures::instance(&east, &older).await;
    let grandchild = fixtures::image_from_instance(&east, &instance, "tree-app").await;
    assert_eq!(w.available(EAST, &grandchild).await["outcome"], "stamped");

    // The older sibling's search is held past the deadline.
    w.acct
        .inject_fault(json!({"service": "ec2", "action": "DescribeImages",
        "resource": older, "delay_seconds": 3.0, "count": 1}));
    let out = query_with_time_left(&w, json!({"children": root}), LEFT).await;
    assert_eq!(out["regions"], json!([EAST, WEST]), "{out}");
    assert_eq!(out["descendants"], 3, "{out}");
    // The older sibling (searched in its first region only), the younger one, and the
    // grandchild found under the older one.
    assert_eq!(out["unsearched"], 3, "{out}");
    assert_eq!(out["truncated"], true, "{out}");
    let kids = out["tree"]["children"].as_array().expect("children");
    assert_eq!(kids[0]["image_id"], older.as_str(), "{out}");
    assert_eq!(
        kids[0]["children"][0]["image_id"],
        grandchild.as_str(),
        "{out}"
    );
    assert_eq!(kids[1]["image_id"], younger.as_str(), "{out}");
}

#[tokio::test]
async fn a_deregistered_middle_ancestor_is_a_gap_and_the_walk_goes_on() {
    let w = world().await;
    let (root, copy, _, child) = three_generations(&w).await;
    w.ec2(WEST)
        .deregister_image()
        .image_id(&copy)
        .send()
        .await
        .expect("deregister the middle");
    let out = w.run(json!({"ancestors": child, "region": WEST})).await;
    assert_eq!(out["ancestors"][0]["image_id"], copy.as_str());
    assert_eq!(out["ancestors"][0]["gap"], true, "{out}");
    assert_eq!(out["ancestors"][0]["state"], "deregistered");
    assert_eq!(out["ancestors"][1]["image_id"], root.as_str());
    assert_eq!(out["ancestors"][1]["region"], EAST);
    assert!(out["ancestors"][1].get("gap").is_none());
    assert_eq!(out["stopped"], "root");
}

#[tokio::test]
async fn a_conflict_is_reported_and_nothing_changes_until_forced() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    let (parent, _) = fixtures::image(&ec2, "parent", &[]).await;
    let (image, snap) = fixtures::image(
        &ec2,
        "claimed",
        &[("source_image", "ami-0aaaaaaaaaaaaaaaa"), ("team", "x")],
    )
    .await;
    let before = fixtures::tags_of(&ec2, &image).await;
    let snap_before = fixtures::tags_of(&ec2, &snap).await;

    let err = w
        .try_run(json!({"image_id": image, "source_image": parent}))
        .await
        .expect_err("a conflict refuses the manual stamp");
    assert_eq!(err.error_type(), "LineageConflict");
    let text = err.to_string();
    assert!(
        text.contains(&image) && text.contains("ami-0aaaaaaaaaaaaaaaa") && text.contains(&parent),
        "{text}"
    );
    assert_eq!(
        fixtures::tags_of(&ec2, &image).await,
        before,
        "nothing written"
    );
    assert_eq!(fixtures::tags_of(&ec2, &snap).await, snap_before);

    // The event path infers nothing against the tagged parent: it only adds the dates.
    let out = w.available(EAST, &image).await;
    assert_eq!(out["outcome"], "stamped", "{out}");
    assert_eq!(
        fixtures::tags_of(&ec2, &image).await["source_image"],
        "ami-0aaaaaaaaaaaaaaaa"
    );

    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["event_type"], "image.lineage-conflict");
    assert_eq!(msgs[0]["image_id"], image.as_str());
    assert!(
        msgs[0]["problems"][0]
            .as_str()
            .unwrap_or("")
            .contains("source_image")
    );

    let forced = w
        .run(json!({"image_id": image, "source_image": parent, "force": true}))
        .await;
    assert_eq!(forced["results"][0]["outcome"], "stamped", "{forced}");
    assert_eq!(
        fixtures::tags_of(&ec2, &image).await["source_image"],
        parent.as_str()
    );
    assert_eq!(
        fixtures::tags_of(&ec2, &snap).await["source_image"],
        parent.as_str()
    );
}

/// EC2 keeps 50 tags on a resource. An image (and its snapshot) with 48 tags of a team's own has
/// no room for its lineage: before, CreateTags failed with `TagLimitExceeded` and the event
/// failed on every retry with EC2's bare message. Now nothing is written, the report and an
/// `image.lineage-conflict` message name each resource, its tags and the keys it lacks, a
/// manual stamp is refused with `TagLimitExceeded`, and once tags are removed the next event
/// stamps it.
#[tokio::test]
async fn lineage_that_does_not_fit_beside_the_tags_is_reported_and_nothing_is_written() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    let team: Vec<(String, String)> = (0..48)
        .map(|n| (format!("team:key-{n:02}"), format!("v{n}")))
        .collect();
    let pairs: Vec<(&str, &str)> = team.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (image, snap) = fixtures::image(&ec2, "crowded", &pairs).await;
    let before = fixtures::tags_of(&ec2, &image).await;
    let snap_before = fixtures::tags_of(&ec2, &snap).await;
    w.acct.drain(&w.queue).await;

    let out = w.available(EAST, &image).await;
    assert_eq!(out["outcome"], "no-room", "{out}");
    let rooms = out["no_room"].as_array().expect("no_room").clone();
    let resources: Vec<&str> = rooms
        .iter()
        .filter_map(|r| r["resource"].as_str())
        .collect();
    assert!(resources.contains(&image.as_str()), "{out}");
    for room in &rooms {
        assert_eq!(room["has"], 48, "{room}");
    }
    let detail = out["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&image)
            && detail.contains("has 48 tags")
            && detail.contains("remove at least"),
        "{detail}"
    );
    assert_eq!(
        fixtures::tags_of(&ec2, &image).await,
        before,
        "nothing written"
    );
    assert_eq!(fixtures::tags_of(&ec2, &snap).await, snap_before);
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["event_type"], "image.lineage-conflict");
    assert_eq!(msgs[0]["image_id"], image.as_str());
    assert!(
        msgs[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("at most 50 tags"),
        "{}",
        msgs[0]
    );

    let err = w
        .try_run(json!({"image_id": image}))
        .await
        .expect_err("a manual stamp is refused");
    assert_eq!(err.error_type(), "TagLimitExceeded");
    assert!(err.to_string().contains(&image), "{err}");

    // Room made on both: the next event stamps them.
    for resource in [&image, &snap] {
        ec2.delete_tags()
            .resources(resource.as_str())
            .set_tags(Some(
                team[..6]
                    .iter()
                    .map(|(k, _)| aws_sdk_ec2::types::Tag::builder().key(k).build())
                    .collect(),
            ))
            .send()
            .await
            .expect("delete six tags");
    }
    let out = w.available(EAST, &image).await;
    assert_eq!(out["outcome"], "stamped", "{out}");
    assert!(fixtures::tags_of(&ec2, &image).await["create_date"].is_string());
}

#[tokio::test]
async fn manual_tag_contract_computes_the_other_date() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    let (parent, _) = fixtures::image(&ec2, "parent", &[]).await;
    let (image, snap) = fixtures::image(&ec2, "child", &[]).await;
    let out = w
        .run(json!({"image_id": image, "source_image": parent, "source_instance": "i-0123456789abcdef0",
                    "create_timestamp": 1315611360}))
        .await;
    assert_eq!(out["results"][0]["origin"], "manual");
    let tags = fixtures::tags_of(&ec2, &image).await;
    assert_eq!(tags["create_date"], "20110909T233600Z");
    assert_eq!(tags["create_timestamp"], "1315611360");
    assert_eq!(tags["source_image"], parent.as_str());
    assert_eq!(tags["source_region"], EAST);
    assert_eq!(tags["source_instance"], "i-0123456789abcdef0");
    assert_eq!(
        fixtures::tags_of(&ec2, &snap).await["create_date"],
        "20110909T233600Z"
    );

    let (other, _) = fixtures::image(&ec2, "dated", &[]).await;
    w.run(json!({"image_id": other, "create_date": "20200101T000000Z"}))
        .await;
    assert_eq!(
        fixtures::tags_of(&ec2, &other).await["create_timestamp"],
        "1577836800"
    );
}

#[tokio::test]
async fn manual_tag_validation_lists_every_problem_and_changes_nothing() {
    let w = world().await;
    let cases = [
        (
            json!({"image_id": "ami-12", "source_image": "img-1", "source_instance": "i-xyz",
                   "source_region": "us-east1", "create_date": "2011-09-09", "colour": "red"}),
            vec![
                "unknown field \"colour\"",
                "image_id: \"ami-12\" is not an image id",
                "source_image: \"img-1\" is not an image id",
                "source_instance: \"i-xyz\" is not an instance id",
                "source_region: \"us-east1\" is not an AWS region",
                "create_date: \"2011-09-09\" is not a UTC time like \"20110909T233600Z\"",
            ],
        ),
        (
            json!({"image_id": "ami-0123456789abcdef0", "create_date": "20110909T233600Z", "create_timestamp": 1}),
            vec!["give create_date or create_timestamp, not both"],
        ),
        (
            json!({"image_id": "ami-0123456789abcdef0", "create_timestamp": "soon", "force": "yes"}),
            vec![
                "create_timestamp: \"soon\" is not a number of seconds since 1970",
                "force must be true or false",
            ],
        ),
        (
            json!({"image_id": "ami-0123456789abcdef0", "source_region": "us-west-2"}),
            vec!["source_region is given without source_image"],
        ),
        (
            json!({"ancestors": "ami-1", "regions": ["mars-1"]}),
            vec![
                "ancestors: \"ami-1\" is not an image id",
                "regions: \"mars-1\" is not an AWS region",
            ],
        ),
    ];
    for (event, wanted) in cases {
        let err = w.try_run(event.clone()).await.expect_err("refused");
        assert_eq!(err.error_type(), "InvalidEvent", "{event}");
        let text = err.to_string();
        for piece in wanted {
            assert!(text.contains(piece), "{event}: {text:?} lacks {piece:?}");
        }
    }
    let err = w
        .try_run(json!({"image_id": "ami-0123456789abcdef0"}))
        .await
        .expect_err("not ours");
    assert_eq!(err.error_type(), "ImageNotFound");
    assert!(err.to_string().contains("ami-0123456789abcdef0"));
    assert!(w.acct.drain(&w.queue).await.is_empty());
}

#[tokio::test]
async fn failed_and_other_states_and_unseen_images() {
    let w = world().await;
    let (image, _) = fixtures::image(&w.ec2(EAST), "broken", &[]).await;
    let out = w
        .run(aws_events::ami_state_change(
            EAST,
            &image,
            "failed",
            "Snapshot is not in a valid state",
        ))
        .await;
    assert_eq!(out["command"], "failed");
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["event_type"], "image.failed");
    assert_eq!(msgs[0]["image_id"], image.as_str());
    assert!(
        msgs[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("Snapshot is not in a valid state")
    );

    // An image of another region: the message still goes to the topic in the function's
    // region (an SNS client of the image's region cannot reach it).
    let (far, _) = fixtures::image(&w.ec2("eu-west-1"), "broken-far", &[]).await;
    let out = w
        .run(aws_events::ami_state_change(
            "eu-west-1",
            &far,
            "failed",
            "Copy failed",
        ))
        .await;
    assert_eq!(out["command"], "failed", "{out}");
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["image_id"], far.as_str());
    assert_eq!(msgs[0]["region"], "eu-west-1");

    let out = w
        .run(aws_events::ami_state_change(
            EAST,
            &image,
            "deregistered",
            "",
        ))
        .await;
    assert_eq!(out["command"], "ignored");

    let other =
        json!({"version": "1", "event_type": "image.ready", "image_id": image, "region": EAST});
    let out = w.run(aws_events::sns(&w.topic, &other)).await;
    assert_eq!(out["command"], "ignored");

    // Not visible (yet): looked up again for VISIBILITY_WAIT_SECONDS, then left for later.
    let out = w
        .run(aws_events::ami_state_change(
            EAST,
            "ami-0fedcba9876543210",
            "available",
            "",
        ))
        .await;
    assert_eq!(out["results"][0]["outcome"], "not-visible", "{out}");

    let err = w
        .try_run(json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}}))
        .await
        .expect_err("wrong event");
    assert_eq!(err.error_type(), "InvalidEvent");
    assert!(w.acct.drain(&w.queue).await.is_empty());
}

#[tokio::test]
async fn the_schedule_announces_a_pipeline_image_whose_triggers_were_both_lost() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    let managed = [
        ("ami-pipeline:managed", "true"),
        ("ami-pipeline:family", "web"),
        ("ami-pipeline:import-task", "import-snap-0123456789abcdef0"),
    ];
    let (lost, _) = fixtures::image(&ec2, "web-lost", &managed).await;
    w.acct
        .backdate_image(EAST, &lost, Utc::now() - chrono::Duration::hours(2));
    // Made a minute ago: its own events may still come; not the schedule's yet.
    let (fresh, _) = fixtures::image(&ec2, "web-fresh", &managed).await;
    let schedule = json!({"version": "0", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": w.acct.account_id, "time": "2026-11-22T12:00:00Z", "region": EAST,
        "resources": [], "detail": {}});
    let out = w.run(schedule.clone()).await;
    assert_eq!(out["trigger"], "schedule", "{out}");
    assert_eq!(out["results"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(out["results"][0]["image_id"], lost.as_str());
    assert_eq!(out["results"][0]["ready_announced"], true, "{out}");
    // Again: nothing left to announce.
    let again = w.run(schedule).await;
    assert_eq!(again["results"], json!([]), "{again}");
    let msgs = w.acct.drain(&w.queue).await;
    let ready: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.ready")
        .collect();
    assert_eq!(ready.len(), 1, "{msgs:?}");
    assert_eq!(ready[0]["image_id"], lost.as_str());
    assert!(!fixtures::tags_of(&ec2, &fresh).await["ami-pipeline:ready-at"].is_string());
}

/// A claim released between another invocation's refused PutObject and its GetObject (the
/// holder could not send) must read as absent: S3 answers a missing key with 404 only to a
/// caller allowed s3:ListBucket, else 403 AccessDenied, which failed the invocation (counted by
/// a chaos run, seed 41000's batch). The role now has it, as create-image's and publish's do.
#[tokio::test]
async fn a_claim_released_before_it_is_read_is_absent_not_denied() {
    let w = World::with_claims(&[]).await;
    let state = support::roles::state_bucket_name(&w.acct.account_id);
    let released = shared::model::ObjectRef {
        bucket: state,
        key: "claims/image.ready/us-east-1/ami-0123456789abcdef0".to_owned(),
        version_id: None,
    };
    match shared::aws::s3::get_object(&w.deps.clients.s3, &released).await {
        Err(e) => assert!(e.is_not_found(), "{e}"),
        Ok(_) => panic!("{} exists", released.uri()),
    }
}

/// A stamp refused for a reason that will not clear by itself (here every CreateTags on the
/// image is refused, as a missing permission is) fails each invocation; the schedule, which
/// looks at images 15 minutes old and more, reports it once as `image.failed` naming the image:
/// without a stamp there is no `image.ready`, so the image would never be published and no one
/// told. Events send nothing (what they meet may be EC2's lag or another invocation's write,
/// which their retry or the schedule clears), and neither does a failure that may clear.
#[tokio::test]
async fn an_image_that_cannot_be_stamped_is_reported_once_by_the_schedule() {
    let w = World::with_claims(&[("VISIBILITY_WAIT_SECONDS", "1")]).await;
    let (image, _) = fixtures::image(
        &w.ec2(EAST),
        "unstampable",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
        ],
    )
    .await;
    // Made two hours ago: the schedule looks at it.
    w.acct
        .backdate_image(EAST, &image, Utc::now() - chrono::Duration::hours(2));
    let schedule = json!({"version": "0", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": w.acct.account_id, "time": "2026-11-22T12:00:00Z", "region": EAST,
        "resources": [], "detail": {}});
    // A failure of no known kind counts as one that may clear: nothing is sent.
    w.acct.inject_fault(
        json!({"service": "ec2", "action": "CreateTags", "status": 409,
        "code": "SomethingUnexpected", "message": "an error of no known kind",
        "resource": image, "count": 1}),
    );
    w.try_run(schedule.clone()).await.expect_err("failed once");
    assert!(w.acct.drain(&w.queue).await.is_empty(), "nothing sent");
    w.acct.clear_faults();
    w.acct.inject_fault(json!({"service": "ec2", "action": "CreateTags", "status": 403,
        "code": "UnauthorizedOperation",
        "message": "You are not authorized to perform this operation. Encoded authorization failure message: per-request",
        "resource": image}));
    let available = aws_events::ami_state_change(EAST, &image, "available", "");
    for event in [available.clone(), available, schedule.clone(), schedule] {
        let err = w.try_run(event).await.expect_err("refused");
        assert!(err.to_string().contains("UnauthorizedOperation"), "{err}");
    }
    let msgs = w.acct.drain(&w.queue).await;
    let failed: Vec<_> = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.failed")
        .collect();
    assert_eq!(failed.len(), 1, "{msgs:#?}");
    assert_eq!(failed[0]["image_id"], image.as_str());
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("UnauthorizedOperation")),
        "{failed:#?}"
    );
    assert!(
        msgs.iter().all(|m| m["event_type"] != "image.ready"),
        "{msgs:#?}"
    );
}

#[tokio::test]
async fn the_same_event_delivered_eight_times_at_once_announces_ready_once() {
    // SNS delivers at least once, and Lambda runs the copies at the same moment: with the
    // state bucket, one invocation claims image.ready (S3 conditional write) and sends it.
    let w = World::with_claims(&[("VISIBILITY_WAIT_SECONDS", "1")]).await;
    let (image, _) = fixtures::image(
        &w.ec2(EAST),
        "web-eight",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
            ("ami-pipeline:import-task", "import-snap-0123456789abcdef1"),
            ("ami-pipeline:source-token", "tok-eight"),
        ],
    )
    .await;
    let registered = json!({"version": "1", "event_type": "image.registered", "time": "2026-11-22T12:00:00Z",
        "region": EAST, "image_id": image, "image_name": "web-eight"});
    let event = aws_events::sns(&w.topic, &registered);
    let runs = futures::future::join_all((0..8).map(|_| w.run(event.clone()))).await;
    let announced = runs
        .iter()
        .filter(|r| r["results"][0]["ready_announced"] == true)
        .count();
    assert_eq!(announced, 1, "{runs:#?}");
    let msgs = w.acct.drain(&w.queue).await;
    let ready = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.ready")
        .count();
    assert_eq!(ready, 1, "{msgs:#?}");
    let tags = fixtures::tags_of(&w.ec2(EAST), &image).await;
    assert!(tags["ami-pipeline:ready-at"].is_string(), "{tags}");
}

#[tokio::test]
async fn a_claim_whose_holder_stopped_is_taken_over_after_ten_minutes() {
    // An invocation claimed image.ready and stopped before sending it (the claim exists, the
    // image has no ready-at). Within 10 minutes the others leave it to the holder; after, one
    // takes the claim over and announces — even when the takeover's PutObject takes effect and
    // its answer is lost (the SDK's retry then fails the If-Match it changed: the claim's holder
    // says it is this caller's own).
    let w = World::with_claims(&[("VISIBILITY_WAIT_SECONDS", "1")]).await;
    let (image, _) = fixtures::image(
        &w.ec2(EAST),
        "web-stopped",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
            ("ami-pipeline:import-task", "import-snap-0123456789abcdef2"),
            ("ami-pipeline:source-token", "tok-stopped"),
        ],
    )
    .await;
    let state = support::roles::state_bucket_name(&w.acct.account_id);
    w.acct
        .put(
            &state,
            &format!("claims/image.ready/{EAST}/{image}"),
            // As a holder writes it (shared::claim): its age is read from `claimed_at`.
            json!({"claimed_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)})
                .to_string()
                .into_bytes(),
            &[],
        )
        .await;
    let registered = json!({"version": "1", "event_type": "image.registered", "time": "2026-11-22T12:00:00Z",
        "region": EAST, "image_id": image, "image_name": "web-stopped"});
    let event = aws_events::sns(&w.topic, &registered);
    let held = w.invoke_at(&event, Utc::now()).await.expect("runs");
    let held = serde_json::to_value(held).expect("json");
    assert_eq!(held["results"][0]["ready_announced"], false, "{held}");
    assert!(
        held["results"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("another invocation")),
        "{held}"
    );
    assert!(w.acct.drain(&w.queue).await.is_empty());
    // The first claim PutObject (If-None-Match, refused: the claim exists) goes through; the
    // second, the takeover (If-Match), takes effect and its answer is lost.
    w.acct.inject_fault(
        json!({"service": "s3", "action": "PutObject", "delay_seconds": 0.01,
        "resource": "claims/image.ready", "count": 1}),
    );
    w.acct.inject_fault(
        json!({"service": "s3", "action": "PutObject", "status": 500,
        "code": "InternalError", "message": "injected", "after": true,
        "resource": "claims/image.ready", "count": 1}),
    );
    let later = w
        .invoke_at(&event, Utc::now() + chrono::Duration::minutes(11))
        .await
        .expect("runs");
    w.acct.clear_faults();
    let later = serde_json::to_value(later).expect("json");
    assert_eq!(later["results"][0]["ready_announced"], true, "{later}");
    let msgs = w.acct.drain(&w.queue).await;
    assert_eq!(
        msgs.iter()
            .filter(|m| m["event_type"] == "image.ready")
            .count(),
        1
    );
}

#[tokio::test]
async fn both_triggers_of_an_upload_at_once_announce_it_once() {
    let w = world().await;
    let ec2 = w.ec2(EAST);
    let (image, _) = fixtures::image(
        &ec2,
        "web-both",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
            ("ami-pipeline:import-task", "import-snap-0123456789abcdef0"),
            ("ami-pipeline:source-token", "tok-both"),
        ],
    )
    .await;
    let registered = json!({"version": "1", "event_type": "image.registered", "time": "2026-11-22T12:00:00Z",
        "region": EAST, "image_id": image, "image_name": "web-both"});
    // Every upload gets both: create-image's image.registered and EC2's "available".
    let (sns, state) = tokio::join!(
        w.run(aws_events::sns(&w.topic, &registered)),
        w.available(EAST, &image)
    );
    assert_eq!(sns["results"][0]["ready_announced"], true, "{sns}");
    assert_eq!(state["ready_announced"], false, "{state}");
    let msgs = w.acct.drain(&w.queue).await;
    let ready: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.ready")
        .collect();
    assert_eq!(ready.len(), 1, "{msgs:?}");
}

/// A fresh pipeline upload's image in `EAST` (managed, a family, an import task and a source
/// token, as create-image registers it) and its `image.registered` message.
async fn fresh_upload(w: &World, name: &str) -> (String, Value) {
    let token = format!("tok-{name}");
    let (image, _) = fixtures::image(
        &w.ec2(EAST),
        name,
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "web"),
            ("ami-pipeline:import-task", "import-snap-0123456789abcdef0"),
            ("ami-pipeline:source-token", token.as_str()),
        ],
    )
    .await;
    let registered = json!({"version": "1", "event_type": "image.registered", "time": "2026-11-22T12:00:00Z",
        "region": EAST, "image_id": image, "image_name": name});
    (image, registered)
}

/// Exactly one `image.ready` message reached the world's queue since it was last drained.
async fn one_ready_sent(w: &World) {
    let msgs = w.acct.drain(&w.queue).await;
    let ready = msgs
        .iter()
        .filter(|m| m["event_type"] == "image.ready")
        .count();
    assert_eq!(ready, 1, "{msgs:?}");
}

/// Sets `image`'s state in `EAST` (the emulator's image-state control).
fn set_state(w: &World, image: &str, state: &str) {
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/image-state",
        Some(json!({"region": EAST, "image_id": image, "state": state})),
    );
}

#[tokio::test]
async fn an_upload_still_pending_at_image_registered_is_announced_by_its_available_event() {
    // On AWS create-image's image.registered (sent right after RegisterImage) often reads the
    // image still pending; EC2's "available" event follows within seconds. Before, that event
    // left a fresh upload's image.ready to image.registered, which had already given up, and
    // the announcement waited for the schedule (15 minutes at least). With claims, the first
    // trigger to find it available announces it, once.
    let w = World::with_claims(&[("VISIBILITY_WAIT_SECONDS", "1")]).await;
    let (image, registered) = fresh_upload(&w, "web-pending").await;
    let state = |s: &str| set_state(&w, &image, s);
    state("pending");
    let sns = w.run(aws_events::sns(&w.topic, &registered)).await;
    assert_eq!(sns["results"][0]["outcome"], "not-available", "{sns}");
    assert_eq!(sns["results"][0]["ready_announced"], false, "{sns}");
    state("available");
    let avail = w.available(EAST, &image).await;
    assert_eq!(avail["ready_announced"], true, "{avail}");
    // A late duplicate of either trigger sends nothing more.
    let (again, late) = tokio::join!(
        w.run(aws_events::sns(&w.topic, &registered)),
        w.available(EAST, &image)
    );
    assert_eq!(again["results"][0]["ready_announced"], false, "{again}");
    assert_eq!(late["ready_announced"], false, "{late}");
    one_ready_sent(&w).await;
}

#[tokio::test]
async fn an_image_that_turns_available_while_its_event_waits_is_stamped_and_announced() {
    // image.registered reads the image pending; it becomes available a moment later, within
    // VISIBILITY_WAIT_SECONDS: the same invocation stamps and announces it.
    let w = World::with_claims(&[("VISIBILITY_WAIT_SECONDS", "8")]).await;
    let (image, registered) = fresh_upload(&w, "web-settling").await;
    let state = |s: &str| set_state(&w, &image, s);
    state("pending");
    let (sns, ()) = tokio::join!(w.run(aws_events::sns(&w.topic, &registered)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        state("available");
    });
    assert_eq!(sns["results"][0]["outcome"], "stamped", "{sns}");
    assert_eq!(sns["results"][0]["ready_announced"], true, "{sns}");
}

#[tokio::test]
async fn with_claims_both_triggers_of_an_upload_at_once_announce_it_once() {
    let w = World::with_claims(&[("VISIBILITY_WAIT_SECONDS", "1")]).await;
    let (image, registered) = fresh_upload(&w, "web-both-claimed").await;
    let (sns, state) = tokio::join!(
        w.run(aws_events::sns(&w.topic, &registered)),
        w.available(EAST, &image)
    );
    let announced = [&sns["results"][0], &state]
        .iter()
        .filter(|r| r["ready_announced"] == true)
        .count();
    assert_eq!(announced, 1, "{sns} {state}");
    one_ready_sent(&w).await;
}

/// The first snapshot of `image` in `ec2`'s region.
async fn snapshot_of(ec2: &aws_sdk_ec2::Client, image: &str) -> String {
    ec2.describe_images()
        .image_ids(image)
        .send()
        .await
        .expect("describe the image")
        .images()[0]
        .block_device_mappings()
        .iter()
        .find_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
        .expect("the image has a snapshot")
        .to_owned()
}

/// Tags `resource` with `ami-pipeline:family=family` as the set-up's identity (as publish would).
async fn set_family(ec2: &aws_sdk_ec2::Client, resource: &str, family: &str) {
    ec2.create_tags()
        .resources(resource)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ami-pipeline:family")
                .value(family)
                .build(),
        )
        .send()
        .await
        .expect("tag the family");
}

/// The role may add `ami-pipeline:family` only where a resource has none (`FamilyWhereNone`).
/// When publish writes a copy's snapshot's family between tag-lineage's read (which EC2's
/// eventual consistency makes older still) and its write, CreateTags is refused; tag-lineage
/// reads the family again and, as it is the same, writes the rest of the lineage without it
/// instead of failing the invocation (found by the chaos harness). A different family written
/// meanwhile is never overwritten: that stamp fails, naming the refusal.
#[tokio::test]
async fn a_family_written_meanwhile_with_the_same_value_does_not_fail_the_stamp() {
    // Long enough that tag-lineage reads within it on a loaded machine.
    const LAG_SECONDS: u64 = 6;
    let w = world_waiting(8).await;
    let east = w.ec2(EAST);
    let west = w.ec2(WEST);
    let (root, _) = fixtures::image(
        &east,
        "base",
        &[
            ("ami-pipeline:managed", "true"),
            ("ami-pipeline:family", "base"),
        ],
    )
    .await;
    assert_eq!(w.available(EAST, &root).await["outcome"], "stamped");
    let copy = fixtures::copy(&west, &root, EAST, "base-west").await;
    let other = fixtures::copy(&west, &root, EAST, "base-west-2").await;
    let copy_snapshot = snapshot_of(&west, &copy).await;
    let other_snapshot = snapshot_of(&west, &other).await;
    w.acct.control(
        "POST",
        "/ami-pipeline-emulator/consistency",
        Some(json!({"lag_seconds": LAG_SECONDS})),
    );
    // Writes that tag-lineage's reads do not show for LAG_SECONDS, each just before the stamp.
    set_family(&west, &other_snapshot, "elsewhere").await;
    let refused = w
        .try_run(aws_events::ami_state_change(WEST, &other, "available", ""))
        .await
        .expect_err("a different family is not overwritten");
    assert!(
        refused.to_string().contains("UnauthorizedOperation")
            && refused.to_string().contains(&other_snapshot),
        "{refused}"
    );
    set_family(&west, &copy_snapshot, "base").await;
    let stamped = w.available(WEST, &copy).await;
    assert_eq!(stamped["outcome"], "stamped", "{stamped}");

    tokio::time::sleep(Duration::from_secs(LAG_SECONDS) + Duration::from_millis(500)).await;
    let snap_tags = fixtures::tags_of(&west, &copy_snapshot).await;
    assert_eq!(snap_tags["ami-pipeline:family"], "base", "{snap_tags}");
    assert_eq!(snap_tags["source_image"], root.as_str(), "{snap_tags}");
    assert_eq!(snap_tags["ami-pipeline:generation"], "1", "{snap_tags}");
    let other_tags = fixtures::tags_of(&west, &other_snapshot).await;
    assert_eq!(
        other_tags["ami-pipeline:family"], "elsewhere",
        "{other_tags}"
    );
    assert!(other_tags.get("source_image").is_none(), "{other_tags}");
}
