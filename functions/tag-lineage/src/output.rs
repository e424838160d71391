//! The invocation's JSON output: the stamp report, the ancestor chain or the children tree.

use crate::event::Trigger;
use serde::Serialize;
use shared::model::{Image, Tags};
use shared::plan::lineage::{CREATE_DATE, FAMILY, GENERATION, SOURCE_INSTANCE, SOURCE_URI};
use shared::plan::stamp::{Conflict, ImageRef, NoRoom, Origin};
use std::collections::BTreeMap;

/// What stamping one image came to (serialized as the strings the output has always carried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StampOutcome {
    /// Lineage tags written.
    Stamped,
    /// Every lineage tag already held its value: nothing written.
    Unchanged,
    /// Lineage tags hold other values: nothing written.
    Conflict,
    /// The lineage tags do not fit beside a resource's tags (EC2 keeps 50): nothing written.
    NoRoom,
    /// The image is not listed (yet) in this account.
    NotVisible,
    /// The image is not available (pending or failed).
    NotAvailable,
}

/// The result of stamping one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StampReport {
    /// `ami-…`.
    pub image_id: String,
    /// Its region.
    pub region: String,
    /// `stamped`, `unchanged`, `conflict`, `no-room`, `not-visible`, `not-available`.
    pub outcome: StampOutcome,
    /// How the image came to be (when it was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Tags written, per resource.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub written: BTreeMap<String, Tags>,
    /// Conflicting values (nothing was written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    /// Resources whose lineage tags would pass EC2's limit of tags (nothing was written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub no_room: Vec<NoRoom>,
    /// The image's lineage.
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub lineage: Tags,
    /// `image.ready` was announced by this invocation.
    pub ready_announced: bool,
    /// Why nothing happened, when nothing did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One image in a query's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `ami-…`.
    pub image_id: String,
    /// Its region.
    pub region: String,
    /// `available`, …, or `deregistered` for an image EC2 no longer knows (a gap).
    pub state: String,
    /// The name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `create_date` (else EC2's CreationDate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_date: Option<String>,
    /// `source_instance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_instance: Option<String>,
    /// The uploaded object it was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_object: Option<String>,
    /// The family.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// EC2 no longer knows this image; what is shown comes from its descendants' tags.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gap: bool,
}

impl Entry {
    pub(crate) fn of(image: &Image, region: &str) -> Self {
        let tag = |k: &str| image.tags.get(k).cloned();
        Entry {
            image_id: image.id.clone(),
            region: region.to_owned(),
            state: image.state.clone(),
            name: Some(image.name.clone()).filter(|n| !n.is_empty()),
            create_date: tag(CREATE_DATE).or_else(|| image.creation_date.clone()),
            source_instance: tag(SOURCE_INSTANCE).or_else(|| image.source_instance_id.clone()),
            source_object: tag(SOURCE_URI),
            family: tag(FAMILY),
            generation: tag(GENERATION),
            gap: false,
        }
    }

    pub(crate) fn gap(at: &ImageRef) -> Self {
        Entry {
            image_id: at.image_id.clone(),
            region: at.region.clone(),
            state: "deregistered".into(),
            name: None,
            create_date: None,
            source_instance: None,
            source_object: None,
            family: None,
            generation: None,
            gap: true,
        }
    }
}

/// Answer to `{"ancestors": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AncestorsReport {
    /// The image asked about.
    pub image: Entry,
    /// Parent first, root last.
    pub ancestors: Vec<Entry>,
    /// Why the walk ended: `root`, `gap` (a deregistered ancestor with nothing recorded past
    /// it), `cycle`, `depth-limit`, or `deadline` (the invocation's end came before the next
    /// ancestor was read: ask again with a longer timeout).
    pub stopped: &'static str,
}

/// A node of the children tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The image.
    #[serde(flatten)]
    pub entry: Entry,
    /// Its direct descendants.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

/// Answer to `{"children": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildrenReport {
    /// The tree rooted at the image asked about.
    pub tree: Node,
    /// Descendants found.
    pub descendants: usize,
    /// Regions searched.
    pub regions: Vec<String>,
    /// The depth limit cut the tree, a cycle was seen, or the deadline came.
    pub truncated: bool,
    /// Images of the tree whose own children were not looked for: the invocation's end came
    /// first (ask again with a longer timeout or fewer regions). 0 when the search finished.
    pub unsearched: usize,
}

/// What an invocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Output {
    /// Stamp results.
    Stamp {
        /// What triggered it.
        trigger: Trigger,
        /// One per image.
        results: Vec<StampReport>,
    },
    /// A failure was announced.
    Failed {
        /// The image.
        image_id: String,
        /// The message id of `image.failed`.
        message_id: String,
    },
    /// Nothing done.
    Ignored {
        /// Why.
        reason: String,
    },
    /// The ancestors query.
    Ancestors(AncestorsReport),
    /// The children query.
    Children(ChildrenReport),
}
