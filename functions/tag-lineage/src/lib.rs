//! tag-lineage: every image knows where it came from, and anyone can ask.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Output`].
//!
//! - **Stamp** (EventBridge "EC2 AMI State Change" `available`, SNS `image.registered`, manual
//!   `{"image_id", …}` — the AMITools `ami-tag-image` contract): read the image, its snapshots,
//!   the instance it was made from and its parent (in the parent's region), plan with
//!   [`shared::plan::stamp::plan_stamp`], write the missing lineage tags on the snapshots and then
//!   the image, and announce `image.ready` once for a pipeline image. A conflicting value is
//!   never overwritten without `"force": true`: it is logged and announced as
//!   `image.lineage-conflict` (and a manual invoke fails with `LineageConflict`).
//! - **Failed** (State Change `failed`): announced as `image.failed` with EC2's message.
//! - **Ancestors** / **Children** (manual `{"ancestors": "ami-…"}` / `{"children": "ami-…"}`):
//!   the chain (following `source_region` across regions, walking past deregistered ancestors
//!   through `ami-pipeline:ancestry`) or the tree (a tag query per region), with cycle and
//!   depth limits.
//!
//! An image that is not visible yet (EC2 is eventually consistent) is looked up again for up
//! to `VISIBILITY_WAIT_SECONDS`, then left to the next event: not an error.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use shared::aws::clients::Clients;
use shared::aws::ec2;
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::deadline::Deadline;
use shared::error::AwsError;
use shared::invocation::InvocationError;
use shared::model::{Image, Tags};
use shared::notify::{self, EventType, Message};
use shared::plan::ids;
use shared::plan::lineage::{
    self, CREATE_DATE, FAMILY, GENERATION, READY_AT, SOURCE_INSTANCE, SOURCE_URI,
};
use shared::plan::stamp::{self, Assertion, Conflict, Facts, ImageRef, Origin, Parent};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use tracing::{info, warn};

/// Settings of tag-lineage, from the environment (names as in `template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Topic and S3 addressing.
    pub common: CommonConfig,
    /// Regions searched for children besides the image's own (`LINEAGE_REGIONS`).
    pub regions: Vec<String>,
    /// Longest chain or deepest tree a query follows (`LINEAGE_MAX_DEPTH`, default 50, as EC2's
    /// own ancestry).
    pub max_depth: usize,
    /// How long an image that is not visible yet is looked up again (`VISIBILITY_WAIT_SECONDS`).
    pub visibility_wait: Duration,
}

impl Config {
    /// Every variable this function reads.
    pub fn vars() -> Vec<&'static str> {
        let mut v = CommonConfig::VARS.to_vec();
        v.extend([
            "LINEAGE_REGIONS",
            "LINEAGE_MAX_DEPTH",
            "VISIBILITY_WAIT_SECONDS",
        ]);
        v
    }

    /// Reads and validates the configuration; the error lists every problem.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader::new(lookup);
        let common = CommonConfig::read(&mut r);
        let regions = r.regions("LINEAGE_REGIONS");
        let max_depth = r.int_in("LINEAGE_MAX_DEPTH", 50, 1, 200) as usize;
        let wait = r.int_in("VISIBILITY_WAIT_SECONDS", 8, 0, 60) as u64;
        r.finish()?;
        Ok(Config {
            common,
            regions,
            max_depth,
            visibility_wait: Duration::from_secs(wait),
        })
    }
}

/// What the function needs to run.
#[derive(Debug, Clone)]
pub struct Deps {
    /// AWS clients of the function's region.
    pub clients: Clients,
    /// Settings.
    pub config: Config,
}

/// What triggered a stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// EventBridge "EC2 AMI State Change", state `available`.
    StateChange,
    /// SNS `image.registered` from create-image.
    Registered,
    /// A manual invoke.
    Manual,
}

/// One image to stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `ami-…`.
    pub image_id: String,
    /// Its region (`None`: the function's).
    pub region: Option<String>,
    /// A manual invoke's assertion.
    pub assertion: Option<Assertion>,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stamp these images.
    Stamp {
        /// Why.
        trigger: Trigger,
        /// The images.
        targets: Vec<Target>,
    },
    /// An image failed to become available: announce it.
    Failed {
        /// `ami-…`.
        image_id: String,
        /// Its region.
        region: Option<String>,
        /// EC2's `ErrorMessage`.
        error: Option<String>,
    },
    /// Nothing to do (another state, another SNS event type), with why.
    Ignore(String),
    /// The chain of ancestors.
    Ancestors {
        /// Start.
        image_id: String,
        /// Its region.
        region: Option<String>,
    },
    /// The tree of descendants.
    Children {
        /// Root of the query.
        image_id: String,
        /// Its region.
        region: Option<String>,
        /// Regions to search (`None`: the configured ones).
        regions: Option<Vec<String>>,
    },
}

const TAG_FIELDS: [&str; 8] = [
    "image_id",
    "region",
    "source_image",
    "source_instance",
    "source_region",
    "create_date",
    "create_timestamp",
    "force",
];

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        let map = InvocationError::event_object(
            v,
            "an EventBridge event, an SNS event or a manual request",
        )?;
        if map.contains_key("detail-type") {
            return state_change(map);
        }
        if let Some(records) = map.get("Records") {
            return sns(records);
        }
        if map.contains_key("ancestors") || map.contains_key("children") {
            return query(map);
        }
        if map.contains_key("image_id") {
            return manual_tag(map);
        }
        Err(InvocationError::invalid_event(format!(
            "unrecognised event with keys [{}]: expected an EventBridge \"EC2 AMI State Change\" event, an SNS event, {{\"image_id\": …}}, {{\"ancestors\": …}} or {{\"children\": …}}",
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }
}

fn str_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

fn state_change(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let detail_type = str_field(map, "detail-type").unwrap_or_default();
    if detail_type != "EC2 AMI State Change" || str_field(map, "source") != Some("aws.ec2") {
        return Err(InvocationError::invalid_event(format!(
            "EventBridge event {detail_type:?} from {:?} is not an \"EC2 AMI State Change\" from aws.ec2",
            str_field(map, "source").unwrap_or_default()
        )));
    }
    let detail = map
        .get("detail")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            InvocationError::invalid_event("EC2 AMI State Change event without a detail object")
        })?;
    let image_id = str_field(detail, "ImageId")
        .filter(|s| ids::is_image_id(s))
        .ok_or_else(|| {
            InvocationError::invalid_event(format!(
                "EC2 AMI State Change: detail.ImageId {} is not an image id",
                detail.get("ImageId").unwrap_or(&Value::Null)
            ))
        })?
        .to_owned();
    let region = str_field(map, "region").map(str::to_owned);
    if let Some(r) = &region
        && !ids::is_region(r)
    {
        return Err(InvocationError::invalid_event(format!(
            "EC2 AMI State Change for {image_id}: region {r:?} is not an AWS region"
        )));
    }
    match str_field(detail, "State").unwrap_or_default() {
        "available" => Ok(Command::Stamp {
            trigger: Trigger::StateChange,
            targets: vec![Target {
                image_id,
                region,
                assertion: None,
            }],
        }),
        "failed" => Ok(Command::Failed {
            image_id,
            region,
            error: str_field(detail, "ErrorMessage")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }),
        other => Ok(Command::Ignore(format!(
            "{image_id} is now {other:?}: only available and failed are acted on"
        ))),
    }
}

fn sns(records: &Value) -> Result<Command, InvocationError> {
    let records = records
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| InvocationError::invalid_event("Records must be a non-empty array"))?;
    let mut targets = Vec::new();
    let mut ignored = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let text = r
            .pointer("/Sns/Message")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                InvocationError::invalid_event(format!(
                    "Records[{i}] is not an SNS record (no Sns.Message)"
                ))
            })?;
        let msg: Value = serde_json::from_str(text).map_err(|e| {
            InvocationError::invalid_event(format!(
                "Records[{i}]: the SNS message is not an ami-pipeline JSON message: {e}"
            ))
        })?;
        let event_type = msg["event_type"].as_str().unwrap_or_default();
        if event_type != EventType::ImageRegistered.as_str() {
            ignored.push(format!("Records[{i}]: event_type {event_type:?}"));
            continue;
        }
        let image_id = msg["image_id"]
            .as_str()
            .filter(|s| ids::is_image_id(s))
            .ok_or_else(|| {
                InvocationError::invalid_event(format!(
                    "Records[{i}]: image.registered without a valid image_id ({})",
                    msg["image_id"]
                ))
            })?;
        let region = msg["region"].as_str().filter(|r| ids::is_region(r));
        targets.push(Target {
            image_id: image_id.to_owned(),
            region: region.map(str::to_owned),
            assertion: None,
        });
    }
    if targets.is_empty() {
        return Ok(Command::Ignore(format!(
            "no image.registered message: {}",
            ignored.join(", ")
        )));
    }
    Ok(Command::Stamp {
        trigger: Trigger::Registered,
        targets,
    })
}

/// Reads an optional string field, recording a problem when it has another type.
fn opt_str(map: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> Option<String> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!("{key} must be a string, not {other}"));
            None
        }
    }
}

fn check_region(field: &str, region: &Option<String>, problems: &mut Vec<String>) {
    if let Some(r) = region
        && !ids::is_region(r)
    {
        problems.push(format!("{field}: {r:?} is not an AWS region"));
    }
}

fn manual_tag(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    for key in map.keys() {
        if !TAG_FIELDS.contains(&key.as_str()) {
            problems.push(format!(
                "unknown field {key:?} (allowed: {})",
                TAG_FIELDS.join(", ")
            ));
        }
    }
    let image_id = opt_str(map, "image_id", &mut problems).unwrap_or_default();
    if !ids::is_image_id(&image_id) {
        problems.push(format!("image_id: {image_id:?} is not an image id (ami-…)"));
    }
    let region = opt_str(map, "region", &mut problems);
    check_region("region", &region, &mut problems);
    let source_image = opt_str(map, "source_image", &mut problems);
    if let Some(s) = &source_image
        && !ids::is_image_id(s)
    {
        problems.push(format!("source_image: {s:?} is not an image id (ami-…)"));
    }
    let source_instance = opt_str(map, "source_instance", &mut problems);
    if let Some(s) = &source_instance
        && !ids::is_instance_id(s)
    {
        problems.push(format!(
            "source_instance: {s:?} is not an instance id (i-…)"
        ));
    }
    let source_region = opt_str(map, "source_region", &mut problems);
    check_region("source_region", &source_region, &mut problems);
    if source_region.is_some() && source_image.is_none() {
        problems.push("source_region is given without source_image".into());
    }
    let created = match (map.get("create_date"), map.get("create_timestamp")) {
        (Some(_), Some(_)) => {
            problems.push(
                "give create_date or create_timestamp, not both (the other is computed)".into(),
            );
            None
        }
        (Some(d), None) => match d.as_str().and_then(lineage::parse_create_date) {
            Some(t) => Some(t),
            None => {
                problems.push(format!(
                    "create_date: {d} is not a UTC time like \"20110909T233600Z\""
                ));
                None
            }
        },
        (None, Some(t)) => {
            let secs = t
                .as_i64()
                .or_else(|| t.as_str().and_then(|s| s.parse().ok()));
            match secs
                .filter(|s| *s >= 0)
                .and_then(|s| DateTime::from_timestamp(s, 0))
            {
                Some(t) => Some(t),
                None => {
                    problems.push(format!(
                        "create_timestamp: {t} is not a number of seconds since 1970"
                    ));
                    None
                }
            }
        }
        (None, None) => None,
    };
    let force = match map.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            problems.push(format!("force must be true or false, not {other}"));
            false
        }
    };
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "manual tag request refused, nothing changed: {}",
            problems.join("; ")
        )));
    }
    Ok(Command::Stamp {
        trigger: Trigger::Manual,
        targets: vec![Target {
            image_id,
            region,
            assertion: Some(Assertion {
                source_image,
                source_instance,
                source_region,
                created,
                force,
            }),
        }],
    })
}

fn query(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    let kind = if map.contains_key("ancestors") {
        "ancestors"
    } else {
        "children"
    };
    let allowed = ["ancestors", "children", "region", "regions"];
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            problems.push(format!(
                "unknown field {key:?} (allowed: {kind}, region, regions)"
            ));
        }
    }
    if map.contains_key("ancestors") && map.contains_key("children") {
        problems.push("ask for ancestors or children, not both".into());
    }
    let image_id = opt_str(map, kind, &mut problems).unwrap_or_default();
    if !ids::is_image_id(&image_id) {
        problems.push(format!("{kind}: {image_id:?} is not an image id (ami-…)"));
    }
    let region = opt_str(map, "region", &mut problems);
    check_region("region", &region, &mut problems);
    let regions = match map.get("regions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(r) if ids::is_region(r) => out.push(r.to_owned()),
                    _ => problems.push(format!("regions: {item} is not an AWS region")),
                }
            }
            Some(out)
        }
        Some(other) => {
            problems.push(format!(
                "regions must be a list of region names, not {other}"
            ));
            None
        }
    };
    if kind == "ancestors" && regions.is_some() {
        problems.push("regions applies to children only (ancestors follow source_region)".into());
    }
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "lineage query refused: {}",
            problems.join("; ")
        )));
    }
    Ok(if kind == "ancestors" {
        Command::Ancestors { image_id, region }
    } else {
        Command::Children {
            image_id,
            region,
            regions,
        }
    })
}

/// The result of stamping one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StampReport {
    /// `ami-…`.
    pub image_id: String,
    /// Its region.
    pub region: String,
    /// `stamped`, `unchanged`, `conflict`, `not-visible`, `not-available`.
    pub outcome: &'static str,
    /// How the image came to be (when it was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Tags written, per resource.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub written: BTreeMap<String, Tags>,
    /// Conflicting values (nothing was written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
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
    fn of(image: &Image, region: &str) -> Self {
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

    fn gap(at: &ImageRef) -> Self {
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
    /// it), `cycle` or `depth-limit`.
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
    /// The depth limit cut the tree, or a cycle was seen.
    pub truncated: bool,
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

impl shared::runner::Function for Deps {
    type Output = Output;

    fn from_env(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &shared::runner::SdkConfig,
    ) -> Result<Self, InvocationError> {
        let config = Config::from_lookup(lookup)?;
        Ok(Deps {
            clients: Clients::new(sdk, config.common.s3_force_path_style),
            config,
        })
    }

    async fn invoke(
        &self,
        event: &Value,
        now: DateTime<Utc>,
        deadline: Deadline,
    ) -> Result<Output, InvocationError> {
        handle(Command::from_event(event)?, self, now, deadline).await
    }
}

/// Runs a command. AWS failures are collected and returned as
/// [`InvocationError::Partial`] (the same event is safe to retry); a manual stamp that meets a
/// conflict returns `LineageConflict`, one for an image that is not ours `ImageNotFound`.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    match cmd {
        Command::Stamp { trigger, targets } => {
            let total = targets.len();
            let mut results = Vec::new();
            let mut errors = Vec::new();
            for t in targets {
                match stamp_one(deps, &t, now, deadline).await {
                    Ok(r) => results.push(r),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if let Some(e) = InvocationError::from_failures(total, errors) {
                return Err(e);
            }
            if trigger == Trigger::Manual
                && let Some(r) = results.first()
            {
                refuse_manual(r)?;
            }
            Ok(Output::Stamp { trigger, results })
        }
        Command::Failed {
            image_id,
            region,
            error,
        } => {
            let c = clients_for(deps, region.as_deref());
            let image = ec2::describe_image(&c.ec2, &image_id)
                .await
                .map_err(partial)?;
            let msg = Message {
                image_id: Some(image_id.clone()),
                image_name: image.as_ref().map(|i| i.name.clone()),
                family: image.as_ref().and_then(|i| i.tags.get(FAMILY).cloned()),
                error: Some(format!(
                    "{image_id} failed to become available: {}",
                    error.as_deref().unwrap_or("EC2 gave no reason")
                )),
                lineage: image.map(|i| i.tags).unwrap_or_default(),
                ..Message::new(EventType::ImageFailed, now, &c.region)
            };
            warn!(image = %image_id, error = ?msg.error, "image failed");
            let message_id = notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg)
                .await
                .map_err(partial)?;
            Ok(Output::Failed {
                image_id,
                message_id,
            })
        }
        Command::Ignore(reason) => {
            info!(%reason, "ignored");
            Ok(Output::Ignored { reason })
        }
        Command::Ancestors { image_id, region } => ancestors(deps, &image_id, region.as_deref())
            .await
            .map(Output::Ancestors)
            .map_err(partial),
        Command::Children {
            image_id,
            region,
            regions,
        } => children(deps, &image_id, region.as_deref(), regions)
            .await
            .map(Output::Children)
            .map_err(partial),
    }
}

fn partial(e: AwsError) -> InvocationError {
    InvocationError::Partial {
        failed: 1,
        total: 1,
        errors: vec![e.to_string()],
    }
}

/// A manual stamp is a request: refusing it is an error the caller sees.
fn refuse_manual(r: &StampReport) -> Result<(), InvocationError> {
    match r.outcome {
        "conflict" => Err(InvocationError::Refused {
            error_type: "LineageConflict",
            message: format!(
                "{} in {}: nothing changed, lineage tags hold other values ({}); pass \"force\": true to overwrite",
                r.image_id,
                r.region,
                r.conflicts
                    .iter()
                    .map(|c| format!(
                        "{} {}={:?}, inferred {:?}",
                        c.resource, c.key, c.existing, c.inferred
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }),
        "not-visible" => Err(InvocationError::Refused {
            error_type: "ImageNotFound",
            message: format!(
                "{} is not an image of this account in {}",
                r.image_id, r.region
            ),
        }),
        "not-available" => Err(InvocationError::Refused {
            error_type: "ImageNotAvailable",
            message: format!(
                "{} in {}: {}",
                r.image_id,
                r.region,
                r.detail.as_deref().unwrap_or("not available")
            ),
        }),
        _ => Ok(()),
    }
}

fn clients_for(deps: &Deps, region: Option<&str>) -> Clients {
    match region {
        Some(r) if r != deps.clients.region => deps.clients.for_region(r),
        _ => deps.clients.clone(),
    }
}

/// This account's image `image_id`, looked up again with growing pauses for up to the
/// configured wait (EC2's DescribeImages is eventually consistent right after creation).
async fn visible_image(
    deps: &Deps,
    c: &Clients,
    image_id: &str,
    deadline: Deadline,
) -> Result<Option<Image>, AwsError> {
    let mut waited = Duration::ZERO;
    let mut pause = Duration::from_millis(500);
    loop {
        let found = ec2::describe_own_image(&c.ec2, image_id).await?;
        if found.is_some() || waited + pause > deps.config.visibility_wait || !deadline.may_start()
        {
            return Ok(found);
        }
        tokio::time::sleep(pause).await;
        waited += pause;
        pause *= 2;
    }
}

async fn stamp_one(
    deps: &Deps,
    target: &Target,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<StampReport, AwsError> {
    let c = clients_for(deps, target.region.as_deref());
    let mut report = StampReport {
        image_id: target.image_id.clone(),
        region: c.region.clone(),
        outcome: "unchanged",
        origin: None,
        written: BTreeMap::new(),
        conflicts: Vec::new(),
        lineage: Tags::new(),
        ready_announced: false,
        detail: None,
    };
    let Some(image) = visible_image(deps, &c, &target.image_id, deadline).await? else {
        info!(image = %target.image_id, region = %c.region, "not visible yet; left to the next event");
        report.outcome = "not-visible";
        report.detail = Some(format!(
            "not among this account's images in {} after {} s; the next event or invoke will retry",
            c.region,
            deps.config.visibility_wait.as_secs()
        ));
        return Ok(report);
    };
    if image.state != "available" {
        report.outcome = "not-available";
        report.detail = Some(format!(
            "the image is {}; it is stamped when it becomes available",
            image.state
        ));
        return Ok(report);
    }
    let assertion = target.assertion.as_ref();
    let snapshots = ec2::describe_own_snapshots(&c.ec2, &image.snapshot_ids).await?;
    let instance = assertion
        .and_then(|a| a.source_instance.clone())
        .or_else(|| image.source_instance_id.clone())
        .filter(|_| {
            assertion.is_none_or(|a| a.source_image.is_none()) && image.source_image_id.is_none()
        });
    let instance_image = match &instance {
        Some(i) => ec2::instance_image(&c.ec2, i).await?,
        None => None,
    };
    let parent = match stamp::parent_of(&image, &c.region, instance_image.as_deref(), assertion) {
        Some(at) => {
            let pc = clients_for(deps, Some(&at.region));
            ec2::describe_image(&pc.ec2, &at.image_id)
                .await?
                .map(|p| Parent {
                    tags: p.tags,
                    snapshot_ids: p.snapshot_ids,
                    at,
                })
        }
        None => None,
    };
    let plan = stamp::plan_stamp(&Facts {
        image: &image,
        region: &c.region,
        snapshots: &snapshots,
        instance_image: instance_image.as_deref(),
        parent: parent.as_ref(),
        assertion,
    });
    report.origin = Some(plan.origin);
    report.lineage = plan.lineage.clone();
    if !plan.conflicts.is_empty() {
        report.outcome = "conflict";
        report.conflicts = plan.conflicts.clone();
        warn!(image = %image.id, conflicts = ?plan.conflicts, "lineage conflict; nothing written");
        let msg = Message {
            image_id: Some(image.id.clone()),
            image_name: Some(image.name.clone()),
            family: image.tags.get(FAMILY).cloned(),
            error: Some(format!(
                "lineage of {} in {} conflicts with tags already present; nothing was changed",
                image.id, c.region
            )),
            problems: plan
                .conflicts
                .iter()
                .map(|k| {
                    format!(
                        "{}: {} is {:?}, inferred {:?}",
                        k.resource, k.key, k.existing, k.inferred
                    )
                })
                .collect(),
            lineage: plan.lineage.clone(),
            ..Message::new(EventType::LineageConflict, now, &c.region)
        };
        notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await?;
        return Ok(report);
    }
    for (resource, tags) in plan.ordered_writes(&image.id) {
        ec2::create_tags(&c.ec2, &[resource.as_str()], tags).await?;
    }
    if !plan.writes.is_empty() {
        report.outcome = "stamped";
        report.written = plan.writes.clone();
        info!(image = %image.id, origin = ?plan.origin, "lineage stamped");
    }
    if plan.ready_to_announce(&image) {
        let msg = Message {
            image_id: Some(image.id.clone()),
            image_name: Some(image.name.clone()),
            snapshot_ids: image.snapshot_ids.clone(),
            family: plan.lineage.get(FAMILY).cloned(),
            source_uri: plan.lineage.get(SOURCE_URI).cloned(),
            import_task_id: plan.lineage.get(lineage::IMPORT_TASK).cloned(),
            lineage: plan.lineage.clone(),
            ..Message::new(EventType::ImageReady, now, &c.region)
        };
        notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await?;
        let marker = Tags::from([(
            READY_AT.to_owned(),
            now.to_rfc3339_opts(SecondsFormat::Secs, true),
        )]);
        ec2::create_tags(&c.ec2, &[image.id.as_str()], &marker).await?;
        report.ready_announced = true;
    }
    Ok(report)
}

async fn ancestors(
    deps: &Deps,
    image_id: &str,
    region: Option<&str>,
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
    let mut seen = BTreeSet::from([(start_ref.region.clone(), start_ref.image_id.clone())]);
    let mut chain = Vec::new();
    // What the nearest known descendant recorded beyond its parent: used to walk past gaps.
    let mut recorded: VecDeque<ImageRef> = stamp::recorded_ancestry(&start.tags).into();
    let mut next = stamp::tagged_parent(&start.tags, &c.region).or_else(|| {
        start.source_image_id.clone().map(|id| ImageRef {
            image_id: id,
            region: start
                .source_image_region
                .clone()
                .unwrap_or_else(|| c.region.clone()),
        })
    });
    let stopped = loop {
        let Some(at) = next.take() else {
            break "root";
        };
        if chain.len() >= deps.config.max_depth {
            break "depth-limit";
        }
        if !seen.insert((at.region.clone(), at.image_id.clone())) {
            break "cycle";
        }
        let pc = clients_for(deps, Some(&at.region));
        match ec2::describe_image(&pc.ec2, &at.image_id).await? {
            Some(img) if img.state != "deregistered" => {
                chain.push(Entry::of(&img, &at.region));
                recorded = stamp::recorded_ancestry(&img.tags).into();
                next = stamp::tagged_parent(&img.tags, &at.region);
            }
            _ => {
                chain.push(Entry::gap(&at));
                next = recorded.pop_front();
                if next.is_none() {
                    break "gap";
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

async fn children(
    deps: &Deps,
    image_id: &str,
    region: Option<&str>,
    regions: Option<Vec<String>>,
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
            let mut kids = Vec::new();
            for r in &search {
                let rc = clients_for(deps, Some(r));
                let images = ec2::describe_own_images(
                    &rc.ec2,
                    vec![ec2::tag_filter(lineage::SOURCE_IMAGE, [node_id.as_str()])],
                )
                .await?;
                for img in images {
                    let points_here = stamp::tagged_parent(&img.tags, r)
                        .is_some_and(|p| p.region == node_region && p.image_id == node_id);
                    if !points_here {
                        continue;
                    }
                    if !seen.insert((r.clone(), img.id.clone())) {
                        truncated = true;
                        continue;
                    }
                    descendants += 1;
                    next.push((r.clone(), img.id.clone()));
                    kids.push(Entry::of(&img, r));
                }
            }
            kids.sort_by(|a, b| {
                (&a.create_date, &a.region, &a.image_id).cmp(&(
                    &b.create_date,
                    &b.region,
                    &b.image_id,
                ))
            });
            found.insert((node_region, node_id), kids);
        }
        frontier = next;
    }
    fn build(entry: Entry, found: &mut BTreeMap<(String, String), Vec<Entry>>) -> Node {
        let kids = found
            .remove(&(entry.region.clone(), entry.image_id.clone()))
            .unwrap_or_default();
        Node {
            children: kids.into_iter().map(|k| build(k, found)).collect(),
            entry,
        }
    }
    Ok(ChildrenReport {
        tree: build(root_entry, &mut found),
        descendants,
        regions: search,
        truncated,
    })
}
