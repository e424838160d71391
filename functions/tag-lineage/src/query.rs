//! The read-only questions: an image's ancestors (across regions) and its children (a tree).
//! Both stop at the invocation's deadline with what they found and say so, rather than letting
//! the Lambda time out with no answer.

use crate::config::Deps;
use crate::handler::clients_for;
use crate::output::{AncestorsReport, ChildrenReport, Entry, Node};
use shared::aws::ec2;
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::model::{Image, Select};
use shared::plan::ancestry::{Next, Walk};
use shared::plan::lineage::{self};
use shared::plan::stamp::{self, ImageRef};
use std::collections::{BTreeMap, BTreeSet};

/// The image's ancestors, parent first, read region to region from the lineage tags; stops at
/// a root, a gap with nothing recorded past it, a cycle, the depth limit, or the deadline (the
/// parent is always read).
pub(crate) async fn ancestors(
    deps: &Deps,
    image_id: &str,
    region: Option<&str>,
    deadline: Deadline,
) -> Result<AncestorsReport, AwsError> {
    let c = clients_for(deps, region);
    let start = ec2::describe_image(&c.ec2, image_id).await?;
    let start_ref = ImageRef {
        image_id: image_id.to_owned(),
        region: c.region.clone(),
    };
    let Some(start) = start else {
        return Ok(AncestorsReport {
            image: Entry::gap(&start_ref),
            ancestors: Vec::new(),
            stopped: "gap",
        });
    };
    let mut walk = Walk::start(&start, &c.region, deps.config.max_depth);
    let mut chain = Vec::new();
    let stopped = loop {
        let at = match walk.step() {
            Next::Visit(at) => at,
            Next::Stop(why) => break why,
        };
        // The parent is always read: the least answer worth giving.
        if !chain.is_empty() && !deadline.may_start() {
            break "deadline";
        }
        let pc = clients_for(deps, Some(&at.region));
        match ec2::describe_image(&pc.ec2, &at.image_id).await? {
            Some(img) if img.state != "deregistered" => {
                chain.push(Entry::of(&img, &at.region));
                walk.found(&img, &at.region);
            }
            _ => {
                chain.push(Entry::gap(&at));
                if let Some(why) = walk.gap() {
                    break why;
                }
            }
        }
    };
    Ok(AncestorsReport {
        image: Entry::of(&start, &c.region),
        ancestors: chain,
        stopped,
    })
}

/// The image's descendants as a tree, breadth-first over `regions` (the configured ones by
/// default, with the image's own first), in the order the tree shows them (oldest first). The
/// image's own children are always looked for; past the deadline, the images left unsearched
/// (wholly or in some regions) are counted.
pub(crate) async fn children(
    deps: &Deps,
    image_id: &str,
    region: Option<&str>,
    regions: Option<Vec<String>>,
    deadline: Deadline,
) -> Result<ChildrenReport, AwsError> {
    let c = clients_for(deps, region);
    let mut search: Vec<String> = regions.unwrap_or_else(|| deps.config.regions.clone());
    if !search.contains(&c.region) {
        search.insert(0, c.region.clone());
    }
    let root_entry = match ec2::describe_image(&c.ec2, image_id).await? {
        Some(img) => Entry::of(&img, &c.region),
        None => Entry::gap(&ImageRef {
            image_id: image_id.to_owned(),
            region: c.region.clone(),
        }),
    };
    let mut seen = BTreeSet::from([(c.region.clone(), image_id.to_owned())]);
    let mut truncated = false;
    let mut descendants = 0;
    // Images whose children were not looked for: the deadline came first.
    let mut unsearched = 0;
    // Breadth-first: collect each node's children, then nest them bottom-up.
    let mut found: BTreeMap<(String, String), Vec<Entry>> = BTreeMap::new();
    let mut frontier = vec![(c.region.clone(), image_id.to_owned())];
    for depth in 0..=deps.config.max_depth {
        if frontier.is_empty() {
            break;
        }
        if depth == deps.config.max_depth {
            truncated = true;
            break;
        }
        let mut next = Vec::new();
        for (node_region, node_id) in frontier {
            // The image asked about is always searched: the least answer worth giving.
            let limit = (depth > 0).then_some(&deadline);
            if unsearched > 0 || limit.is_some_and(|d| !d.may_start()) {
                unsearched += 1;
                continue;
            }
            let (tagged, complete) =
                tagged_children(deps, &search, &node_region, &node_id, limit).await?;
            if !complete {
                unsearched += 1;
            }
            let mut kids = Vec::new();
            for (r, img) in tagged {
                if !seen.insert((r.clone(), img.id.clone())) {
                    truncated = true;
                    continue;
                }
                descendants += 1;
                kids.push(Entry::of(&img, &r));
            }
            kids.sort_by(|a, b| {
                (&a.create_date, &a.region, &a.image_id).cmp(&(
                    &b.create_date,
                    &b.region,
                    &b.image_id,
                ))
            });
            next.extend(kids.iter().map(|k| (k.region.clone(), k.image_id.clone())));
            found.insert((node_region, node_id), kids);
        }
        frontier = next;
        if unsearched > 0 {
            // The images found at this level are not searched either.
            unsearched += frontier.len();
            frontier.clear();
        }
    }
    Ok(ChildrenReport {
        tree: build(root_entry, &mut found),
        descendants,
        regions: search,
        truncated: truncated || unsearched > 0,
        unsearched,
    })
}

/// The tree under `entry`, from each image's children found.
fn build(entry: Entry, found: &mut BTreeMap<(String, String), Vec<Entry>>) -> Node {
    let kids = found
        .remove(&(entry.region.clone(), entry.image_id.clone()))
        .unwrap_or_default();
    Node {
        children: kids.into_iter().map(|k| build(k, found)).collect(),
        entry,
    }
}

/// The images in `search` whose lineage tags name `node_id` in `node_region` as their parent,
/// with their regions; and whether every region was searched (the deadline, when given, is
/// checked before each one).
async fn tagged_children(
    deps: &Deps,
    search: &[String],
    node_region: &str,
    node_id: &str,
    deadline: Option<&Deadline>,
) -> Result<(Vec<(String, Image)>, bool), AwsError> {
    let mut out = Vec::new();
    for r in search {
        if deadline.is_some_and(|d| !d.may_start()) {
            return Ok((out, false));
        }
        let rc = clients_for(deps, Some(r));
        // Disabled children too: they still exist (EnableImage brings them back).
        let images = ec2::describe_every_own_image(
            &rc.ec2,
            &[Select::tag(lineage::SOURCE_IMAGE, [node_id])],
        )
        .await?;
        out.extend(
            images
                .into_iter()
                .filter(|img| {
                    stamp::tagged_parent(&img.tags, r)
                        .is_some_and(|p| p.region == node_region && p.image_id == node_id)
                })
                .map(|img| (r.clone(), img)),
        );
    }
    Ok((out, true))
}
