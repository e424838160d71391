//! The ancestry walk's rules, as a pure state machine: where to look next, when to stop (root,
//! depth limit, cycle, gap), and how to walk past a deregistered ancestor through the
//! `ami-pipeline:ancestry` tag its nearest known descendant recorded. The executor only looks
//! each image up.

use super::stamp::{ImageRef, recorded_ancestry, tagged_parent};
use crate::model::Image;
use std::collections::{BTreeSet, VecDeque};

/// Why the walk ended (the report's `stopped`).
pub type Stop = &'static str;

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Look this image up, then call [`Walk::found`] or [`Walk::gap`].
    Visit(ImageRef),
    /// The walk is over: `root`, `depth-limit` or `cycle`.
    Stop(Stop),
}

/// An ancestry walk in progress.
#[derive(Debug, Clone)]
pub struct Walk {
    seen: BTreeSet<(String, String)>,
    /// What the nearest known descendant recorded beyond its parent.
    recorded: VecDeque<ImageRef>,
    next: Option<ImageRef>,
    visited: usize,
    max_depth: usize,
}

impl Walk {
    /// Starts at `start` (visible in `region`): its tagged parent, else EC2's source image.
    pub fn start(start: &Image, region: &str, max_depth: usize) -> Self {
        let next = tagged_parent(&start.tags, region).or_else(|| {
            start.source_image_id.clone().map(|id| ImageRef {
                image_id: id,
                region: start
                    .source_image_region
                    .clone()
                    .unwrap_or_else(|| region.to_owned()),
            })
        });
        Walk {
            seen: BTreeSet::from([(region.to_owned(), start.id.clone())]),
            recorded: recorded_ancestry(&start.tags).into(),
            next,
            visited: 0,
            max_depth,
        }
    }

    /// The next image to look up, or why the walk ends.
    pub fn step(&mut self) -> Next {
        let Some(at) = self.next.take() else {
            return Next::Stop("root");
        };
        if self.visited >= self.max_depth {
            return Next::Stop("depth-limit");
        }
        if !self.seen.insert((at.region.clone(), at.image_id.clone())) {
            return Next::Stop("cycle");
        }
        self.visited += 1;
        Next::Visit(at)
    }

    /// The visited image exists (not deregistered): continue with its tagged parent.
    pub fn found(&mut self, image: &Image, region: &str) {
        self.recorded = recorded_ancestry(&image.tags).into();
        self.next = tagged_parent(&image.tags, region);
    }

    /// The visited image is gone: continue with the next recorded ancestor, or stop (`gap`).
    pub fn gap(&mut self) -> Option<Stop> {
        self.next = self.recorded.pop_front();
        self.next.is_none().then_some("gap")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::lineage::{ANCESTRY, SOURCE_IMAGE, SOURCE_REGION};

    fn image(id: &str, parent: Option<(&str, &str)>, ancestry: &str) -> Image {
        let mut tags = crate::model::Tags::new();
        if let Some((p, r)) = parent {
            tags.insert(SOURCE_IMAGE.into(), p.into());
            tags.insert(SOURCE_REGION.into(), r.into());
        }
        if !ancestry.is_empty() {
            tags.insert(ANCESTRY.into(), ancestry.into());
        }
        Image {
            id: id.into(),
            tags,
            ..Image::default()
        }
    }

    fn at(id: &str, region: &str) -> Next {
        Next::Visit(ImageRef {
            image_id: id.into(),
            region: region.into(),
        })
    }

    #[test]
    fn walks_across_regions_to_the_root() {
        let start = image("ami-3", Some(("ami-2", "eu-west-1")), "");
        let mut w = Walk::start(&start, "us-east-1", 10);
        assert_eq!(w.step(), at("ami-2", "eu-west-1"));
        w.found(
            &image("ami-2", Some(("ami-1", "eu-west-1")), ""),
            "eu-west-1",
        );
        assert_eq!(w.step(), at("ami-1", "eu-west-1"));
        w.found(&image("ami-1", None, ""), "eu-west-1");
        assert_eq!(w.step(), Next::Stop("root"));
    }

    #[test]
    fn walks_past_a_gap_through_the_recorded_ancestry_then_stops_at_the_next_gap() {
        let start = image(
            "ami-3",
            Some(("ami-2", "us-east-1")),
            "us-east-1/ami-1 us-east-1/ami-0",
        );
        let mut w = Walk::start(&start, "us-east-1", 10);
        assert_eq!(w.step(), at("ami-2", "us-east-1"));
        assert_eq!(w.gap(), None);
        assert_eq!(w.step(), at("ami-1", "us-east-1"));
        assert_eq!(w.gap(), None);
        assert_eq!(w.step(), at("ami-0", "us-east-1"));
        assert_eq!(w.gap(), Some("gap"));
    }

    #[test]
    fn stops_at_a_cycle_and_at_the_depth_limit() {
        let start = image("ami-1", Some(("ami-2", "us-east-1")), "");
        let mut w = Walk::start(&start, "us-east-1", 10);
        assert_eq!(w.step(), at("ami-2", "us-east-1"));
        w.found(
            &image("ami-2", Some(("ami-1", "us-east-1")), ""),
            "us-east-1",
        );
        assert_eq!(w.step(), Next::Stop("cycle"));
        let mut w = Walk::start(&start, "us-east-1", 0);
        assert_eq!(w.step(), Next::Stop("depth-limit"));
    }
}
