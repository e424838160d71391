//! The invocation's JSON output: per image, per region, what was done.

use crate::event::Trigger;
use serde::Serialize;
use shared::plan::publish::{Grants, Policy, PublishStatus};
use std::collections::BTreeMap;

/// Where one region stands, serialized as the report's kebab-case word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionOutcome {
    /// Shared and verified.
    Published,
    /// The copy is in flight.
    Copying,
    /// Waiting for something (the copies, the deadline, throttling).
    #[default]
    Waiting,
    /// Failed; the schedule retries it.
    Failed,
    /// The grants were removed.
    Revoked,
}

impl RegionOutcome {
    /// The report's word.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionOutcome::Published => "published",
            RegionOutcome::Copying => "copying",
            RegionOutcome::Waiting => "waiting",
            RegionOutcome::Failed => "failed",
            RegionOutcome::Revoked => "revoked",
        }
    }

    /// Still moving: a copy in flight or waiting.
    pub fn is_pending(self) -> bool {
        matches!(self, RegionOutcome::Copying | RegionOutcome::Waiting)
    }
}

impl PartialEq<&str> for RegionOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One region's outcome for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegionReport {
    /// The image in that region (the source in its own region, else the copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// `published`, `copying`, `waiting`, `failed`, `revoked`.
    pub outcome: RegionOutcome,
    /// Why (waiting, failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Permissions this run added (images; snapshots get the accounts and public).
    #[serde(skip_serializing_if = "Grants::is_empty")]
    pub granted: Grants,
    /// Permissions this run removed.
    #[serde(skip_serializing_if = "Grants::is_empty")]
    pub revoked: Grants,
    /// The deprecation time set or found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deprecation_time: Option<String>,
}

impl RegionReport {
    pub(crate) fn failed(image_id: Option<String>, detail: String) -> Self {
        RegionReport {
            image_id,
            outcome: RegionOutcome::Failed,
            detail: Some(detail),
            ..RegionReport::default()
        }
    }
}

/// One image's publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageReport {
    /// The source image.
    pub image_id: String,
    /// Its region.
    pub region: String,
    /// `published`, `already-published`, `copying` (copies pending), `partial` (some regions
    /// failed; retried by the schedule).
    pub status: PublishStatus,
    /// The effective policy.
    pub policy: Policy,
    /// Every region (the source's included) with its outcome.
    pub regions: BTreeMap<String, RegionReport>,
    /// The event sent, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announced: Option<&'static str>,
}

/// What an invocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Output {
    /// One image published or advanced.
    Publish {
        /// What started it.
        trigger: Trigger,
        /// The image.
        result: ImageReport,
    },
    /// The schedule's run over every publish in flight.
    Advance {
        /// Regions scanned for sources `in-progress`.
        regions: Vec<String>,
        /// Each image advanced.
        results: Vec<ImageReport>,
    },
    /// Shares removed.
    Revoke {
        /// The image.
        image_id: String,
        /// Its region.
        region: String,
        /// Per region, what was removed.
        regions: BTreeMap<String, RegionReport>,
        /// The event sent, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        announced: Option<&'static str>,
    },
    /// Nothing done.
    Ignored {
        /// Why.
        reason: String,
    },
}
