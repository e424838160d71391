//! publish: copy an image to its target regions, share it, announce it — and never announce a
//! half-published image.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Output`].
//!
//! A reconciler: the desired state is the image's policy ([`shared::plan::publish::resolve`]:
//! the function's defaults and the image's `publish:*` tags), the current state is read from
//! EC2, and each run does the next steps. An `image.ready` event or a manual invoke starts a
//! publish; the schedule advances every image whose `ami-pipeline:publish-state` is
//! `in-progress`. Per image:
//!
//! 1. mark the source `in-progress` (cleanup leaves it alone) and record manual overrides as
//!    its `publish:*` tags;
//! 2. per target region: find the copy (tag `ami-pipeline:publish-source`), else CopyImage with
//!    `CopyImageTags` and a deterministic `ClientToken`, at most `COPY_CONCURRENCY` copies in
//!    flight per destination; when the copy is `available`, stamp its lineage there; a failed
//!    copy is deregistered and retried by the next run;
//! 3. only when no copy is still pending: per region, deprecation (if asked), then the
//!    snapshots' `createVolumePermission`, then the image's `launchPermission` — public only
//!    where the region's image block public access allows it;
//! 4. every grant is read back; then, once, `image.published` (every region published) and the
//!    source is marked `published`; or `image.publish-partial` when some regions failed (sent
//!    again only when the set of failed regions changes; the schedule retries them).
//!
//! A revoke (`{"image_id", "revoke": [...]}`, or `"public": false`) removes launch permissions
//! first, then the snapshots' create-volume permissions, in the source region and every copy,
//! reads them back, records the removal in the image's `publish:*` tags (so no later run shares
//! again) and announces `image.revoked`.

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{Map, Value, json};
use shared::aws::clients::Clients;
use shared::aws::ec2::{self, Change, CopyRequest};
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::invocation::InvocationError;
use shared::model::{Image, Tags};
use shared::notify::{self, EventType, Message};
use shared::plan::ids;
use shared::plan::lineage::FAMILY;
use shared::plan::publish::{
    self as plan, COPY, CopyStep, Defaults, FAILED_REGIONS, Grants, IN_PROGRESS, Overrides,
    PUBLISH_SOURCE, PUBLISH_STATE, PUBLISHED, PUBLISHED_AT, Policy, PublicMode,
};
use shared::plan::stamp::{self, Facts, ImageRef, Parent};
use std::collections::{BTreeMap, BTreeSet};
use tracing::{info, warn};

/// Regions worked on in parallel for one image.
const REGION_CONCURRENCY: usize = 4;

/// Settings of publish, from the environment (names as in `template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Topic and S3 addressing.
    pub common: CommonConfig,
    /// The default policy.
    pub defaults: Defaults,
    /// Regions whose in-flight publishes the schedule advances (`SOURCE_REGIONS`; default the
    /// function's own).
    pub source_regions: Vec<String>,
    /// Copies in flight per destination region (`COPY_CONCURRENCY`).
    pub copy_concurrency: usize,
}

impl Config {
    /// Every variable this function reads.
    pub fn vars() -> Vec<&'static str> {
        let mut v = CommonConfig::VARS.to_vec();
        v.extend([
            "PUBLISH_REGIONS",
            "PUBLISH_DENY_REGIONS",
            "SOURCE_REGIONS",
            "SHARE_ACCOUNTS",
            "SHARE_ORGANIZATIONS",
            "SHARE_OUS",
            "PUBLIC",
            "DEPRECATE_AFTER_DAYS",
            "COPY_CONCURRENCY",
        ]);
        v
    }

    /// Reads and validates the configuration; the error lists every problem.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader::new(lookup);
        let common = CommonConfig::read(&mut r);
        let public = match r.optional("PUBLIC") {
            None => PublicMode::Never,
            Some(v) => PublicMode::parse(&v).unwrap_or_else(|| {
                r.problem(format!("PUBLIC={v:?} is not never, opt-in or always"));
                PublicMode::Never
            }),
        };
        let defaults = Defaults {
            regions: r.list("PUBLISH_REGIONS"),
            deny_regions: r.list("PUBLISH_DENY_REGIONS").into_iter().collect(),
            accounts: r.list("SHARE_ACCOUNTS"),
            organizations: r.list("SHARE_ORGANIZATIONS"),
            ous: r.list("SHARE_OUS"),
            public,
            deprecate_after_days: r.int_in("DEPRECATE_AFTER_DAYS", 0, 0, plan::MAX_DEPRECATE_DAYS),
        };
        for p in defaults.problems() {
            r.problem(format!("publish defaults: {p}"));
        }
        let source_regions = r.regions("SOURCE_REGIONS");
        let copy_concurrency = r.int_in("COPY_CONCURRENCY", 20, 1, 50) as usize;
        r.finish()?;
        Ok(Config {
            common,
            defaults,
            source_regions,
            copy_concurrency,
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

/// What started a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// SNS `image.ready` (a duplicate for an image already published changes nothing).
    ImageReady,
    /// A manual invoke (always reconciles, so a changed policy is applied).
    Manual,
    /// The schedule.
    Schedule,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Publish (or continue publishing) one image.
    Publish {
        /// The trigger.
        trigger: Trigger,
        /// The image.
        image_id: String,
        /// Its region (else the function's).
        region: Option<String>,
        /// A manual invoke's overrides, recorded on the image.
        overrides: Overrides,
    },
    /// The schedule: advance every publish in flight.
    Advance,
    /// Remove shares / the public flag.
    Revoke {
        /// The image.
        image_id: String,
        /// Its region (else the function's).
        region: Option<String>,
        /// What to remove.
        principals: Grants,
    },
    /// Nothing to do (another event type on the topic).
    Ignore(String),
}

const MANUAL_FIELDS: [&str; 9] = [
    "image_id",
    "region",
    "regions",
    "accounts",
    "organizations",
    "ous",
    "public",
    "deprecate_after_days",
    "revoke",
];

fn refused(error_type: &'static str, message: String) -> InvocationError {
    InvocationError::Refused {
        error_type,
        message,
    }
}

fn aws_failed(e: AwsError) -> InvocationError {
    InvocationError::Partial {
        failed: 1,
        total: 1,
        errors: vec![e.to_string()],
    }
}

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        let map = InvocationError::event_object(v, "SNS, a Scheduled Event or a manual request")?;
        if let Some(records) = map.get("Records") {
            return sns(records);
        }
        if let Some(dt) = map.get("detail-type").and_then(Value::as_str) {
            if dt == "Scheduled Event" {
                return Ok(Command::Advance);
            }
            return Err(InvocationError::invalid_event(format!(
                "EventBridge event {dt:?} is not a \"Scheduled Event\""
            )));
        }
        manual(map)
    }
}

fn sns(records: &Value) -> Result<Command, InvocationError> {
    let [record] = records.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(InvocationError::invalid_event(
            "an SNS event must carry exactly one record (Lambda delivers SNS messages one at a time)",
        ));
    };
    let Some(message) = record.pointer("/Sns/Message").and_then(Value::as_str) else {
        return Err(InvocationError::invalid_event(
            "the SNS record has no Sns.Message",
        ));
    };
    let body: Value = serde_json::from_str(message)
        .map_err(|e| InvocationError::invalid_event(format!("the SNS message is not JSON: {e}")))?;
    let event_type = record
        .pointer("/Sns/MessageAttributes/event_type/Value")
        .and_then(Value::as_str)
        .or_else(|| body.get("event_type").and_then(Value::as_str))
        .unwrap_or("");
    if event_type != EventType::ImageReady.as_str() {
        return Ok(Command::Ignore(format!(
            "SNS event_type {event_type:?} is not image.ready"
        )));
    }
    let image_id = body.get("image_id").and_then(Value::as_str).unwrap_or("");
    let region = body.get("region").and_then(Value::as_str);
    let mut problems = Vec::new();
    if !ids::is_image_id(image_id) {
        problems.push(format!("image_id {image_id:?} is not an AMI id"));
    }
    if let Some(r) = region
        && !ids::is_region(r)
    {
        problems.push(format!("region {r:?} is not an AWS region"));
    }
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "image.ready message refused: {}",
            problems.join("; ")
        )));
    }
    Ok(Command::Publish {
        trigger: Trigger::ImageReady,
        image_id: image_id.to_owned(),
        region: region.map(str::to_owned),
        overrides: Overrides::default(),
    })
}

fn manual(map: &Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    for key in map.keys() {
        if !MANUAL_FIELDS.contains(&key.as_str()) {
            problems.push(format!(
                "unknown field {key:?} (allowed: {})",
                MANUAL_FIELDS.join(", ")
            ));
        }
    }
    let image_id = match map.get("image_id").and_then(Value::as_str) {
        Some(i) if ids::is_image_id(i) => i.to_owned(),
        Some(i) => {
            problems.push(format!("image_id {i:?} is not an AMI id (ami-…)"));
            String::new()
        }
        None => {
            problems.push("image_id is required".to_owned());
            String::new()
        }
    };
    let region = match map.get("region") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if ids::is_region(r) => Some(r.clone()),
        Some(other) => {
            problems.push(format!("region {other} is not an AWS region"));
            None
        }
    };
    let strings = |key: &str, problems: &mut Vec<String>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                    _ => {
                        problems.push(format!("{key}: {i} is not a non-empty string"));
                        None
                    }
                })
                .collect::<Vec<_>>(),
        ),
        Some(other) => {
            problems.push(format!("{key} must be a list of strings, not {other}"));
            None
        }
    };
    let regions = strings("regions", &mut problems);
    let accounts = strings("accounts", &mut problems);
    let organizations = strings("organizations", &mut problems);
    let ous = strings("ous", &mut problems);
    let revoke = strings("revoke", &mut problems);
    let check =
        |list: &Option<Vec<String>>, ok: fn(&str) -> bool, what: &str, p: &mut Vec<String>| {
            for i in list.iter().flatten() {
                if !ok(i) {
                    p.push(format!("{i:?} is not {what}"));
                }
            }
        };
    check(&regions, ids::is_region, "an AWS region", &mut problems);
    check(
        &accounts,
        ids::is_account_id,
        "a 12-digit account id",
        &mut problems,
    );
    check(
        &organizations,
        ids::is_organization_arn,
        "an organization ARN",
        &mut problems,
    );
    check(&ous, ids::is_ou_arn, "an OU ARN", &mut problems);
    let public = match map.get("public") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            problems.push(format!("public must be true or false, not {other}"));
            None
        }
    };
    let deprecate_after_days = match map.get("deprecate_after_days") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(d) if (0..=plan::MAX_DEPRECATE_DAYS).contains(&d) => Some(d),
            _ => {
                problems.push(format!(
                    "deprecate_after_days must be a whole number from 0 to {}, not {v}",
                    plan::MAX_DEPRECATE_DAYS
                ));
                None
            }
        },
    };
    let overrides = Overrides {
        regions,
        accounts,
        organizations,
        ous,
        public,
        deprecate_after_days,
    };
    let principals = match &revoke {
        Some(items) => {
            if !overrides.is_empty() {
                problems.push(
                    "revoke cannot be combined with publish settings (regions, accounts, organizations, ous, public, deprecate_after_days)"
                        .to_owned(),
                );
            }
            if items.is_empty() {
                problems.push("revoke lists nothing to remove".to_owned());
            }
            match plan::parse_principals(items) {
                Ok(g) => Some(g),
                Err(p) => {
                    problems.extend(p.into_iter().map(|x| format!("revoke: {x}")));
                    None
                }
            }
        }
        None => None,
    };
    if !problems.is_empty() {
        return Err(InvocationError::invalid_event(format!(
            "publish request refused, nothing changed: {}",
            problems.join("; ")
        )));
    }
    if let Some(principals) = principals {
        return Ok(Command::Revoke {
            image_id,
            region,
            principals,
        });
    }
    // `{"image_id", "public": false}` alone is an unpublish of the public flag.
    if overrides
        == (Overrides {
            public: Some(false),
            ..Overrides::default()
        })
    {
        return Ok(Command::Revoke {
            image_id,
            region,
            principals: Grants {
                public: true,
                ..Grants::default()
            },
        });
    }
    Ok(Command::Publish {
        trigger: Trigger::Manual,
        image_id,
        region,
        overrides,
    })
}

/// One region's outcome for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegionReport {
    /// The image in that region (the source in its own region, else the copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// `published`, `copying`, `waiting`, `failed`.
    pub outcome: &'static str,
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
    fn failed(image_id: Option<String>, detail: String) -> Self {
        RegionReport {
            image_id,
            outcome: "failed",
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
    pub status: &'static str,
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

/// Runs a command. A request about an image that is missing, not ours, not available or a copy,
/// or whose policy is invalid, is refused with nothing changed; AWS failures are returned as
/// `AwsCallsFailed` (the same event is safe to retry); a region that fails is reported in the
/// output and in `image.publish-partial`, and retried by the schedule.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    match cmd {
        Command::Ignore(reason) => {
            info!(%reason, "ignored");
            Ok(Output::Ignored { reason })
        }
        Command::Publish {
            trigger,
            image_id,
            region,
            overrides,
        } => {
            let c = clients_for(deps, region.as_deref());
            let source = source_image(&c, &image_id).await?;
            let result = publish_one(deps, &c, source, trigger, &overrides, now, deadline).await?;
            Ok(Output::Publish { trigger, result })
        }
        Command::Advance => {
            let regions = if deps.config.source_regions.is_empty() {
                vec![deps.clients.region.clone()]
            } else {
                deps.config.source_regions.clone()
            };
            let mut results = Vec::new();
            let mut errors = Vec::new();
            let mut total = 0;
            for r in &regions {
                let c = clients_for(deps, Some(r));
                let sources = match ec2::describe_own_images(
                    &c.ec2,
                    vec![ec2::tag_filter(PUBLISH_STATE, [IN_PROGRESS])],
                )
                .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        total += 1;
                        errors.push(e.to_string());
                        continue;
                    }
                };
                for s in sources
                    .into_iter()
                    .filter(|s| !s.tags.contains_key(PUBLISH_SOURCE))
                {
                    total += 1;
                    if !deadline.may_start() {
                        errors.push(format!(
                            "{} in {r}: not started, the invocation's deadline is near; the next run continues",
                            s.id
                        ));
                        continue;
                    }
                    let id = s.id.clone();
                    match publish_one(
                        deps,
                        &c,
                        s,
                        Trigger::Schedule,
                        &Overrides::default(),
                        now,
                        deadline,
                    )
                    .await
                    {
                        Ok(rep) => results.push(rep),
                        Err(e) => errors.push(format!("{id} in {r}: {e}")),
                    }
                }
            }
            if let Some(e) = InvocationError::from_failures(total, errors) {
                return Err(e);
            }
            Ok(Output::Advance { regions, results })
        }
        Command::Revoke {
            image_id,
            region,
            principals,
        } => {
            let c = clients_for(deps, region.as_deref());
            let source = source_image(&c, &image_id).await?;
            revoke(deps, &c, &source, &principals, now).await
        }
    }
}

fn clients_for(deps: &Deps, region: Option<&str>) -> Clients {
    match region {
        Some(r) if r != deps.clients.region => deps.clients.for_region(r),
        _ => deps.clients.clone(),
    }
}

/// The source image: ours, available, and not itself a copy made by publish.
async fn source_image(c: &Clients, image_id: &str) -> Result<Image, InvocationError> {
    let Some(image) = ec2::describe_own_image(&c.ec2, image_id)
        .await
        .map_err(aws_failed)?
    else {
        let other = ec2::describe_image(&c.ec2, image_id)
            .await
            .map_err(aws_failed)?;
        return Err(match other {
            Some(i) => refused(
                "ImageNotOwned",
                format!(
                    "{image_id} in {} belongs to account {}, not this one; only the owner can publish it",
                    c.region,
                    i.owner_id.as_deref().unwrap_or("unknown")
                ),
            ),
            None => refused(
                "ImageNotFound",
                format!("{image_id} is not an image of this account in {}", c.region),
            ),
        });
    };
    if image.state != "available" {
        return Err(refused(
            "ImageNotAvailable",
            format!(
                "{image_id} in {} is {}; it can be published once it is available",
                c.region, image.state
            ),
        ));
    }
    if let Some(src) = image.tags.get(PUBLISH_SOURCE) {
        return Err(refused(
            "ImageIsCopy",
            format!(
                "{image_id} in {} is a copy publish made of {src}; publish {src} instead",
                c.region
            ),
        ));
    }
    Ok(image)
}

fn stamp_time(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn publish_one(
    deps: &Deps,
    c: &Clients,
    source: Image,
    trigger: Trigger,
    overrides: &Overrides,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<ImageReport, InvocationError> {
    let home = c.region.clone();
    let state = source.tags.get(PUBLISH_STATE).map(String::as_str);
    if trigger == Trigger::ImageReady && state == Some(PUBLISHED) {
        info!(image = %source.id, "already published; duplicate image.ready ignored");
        return Ok(ImageReport {
            policy: plan::resolve(&deps.config.defaults, &source.tags, &home).unwrap_or_default(),
            image_id: source.id,
            region: home,
            status: "already-published",
            regions: BTreeMap::new(),
            announced: None,
        });
    }
    let extra = plan::override_tags(overrides).map_err(|p| {
        refused(
            "InvalidPolicy",
            format!("{} in {home}: nothing changed: {}", source.id, p.join("; ")),
        )
    })?;
    let mut wanted_tags = source.tags.clone();
    wanted_tags.extend(extra.clone());
    let policy = plan::resolve(&deps.config.defaults, &wanted_tags, &home).map_err(|p| {
        refused(
            "InvalidPolicy",
            format!(
                "{} in {home}: nothing changed, its publish policy is invalid: {}",
                source.id,
                p.join("; ")
            ),
        )
    })?;
    // Public sharing is checked in every region before anything changes: a manual request is
    // refused outright; an event or the schedule reports those regions as failed.
    let mut blocked = BTreeSet::new();
    if policy.public {
        for r in std::iter::once(&home).chain(&policy.regions) {
            let rc = clients_for(deps, Some(r));
            let st = ec2::image_block_public_access_state(&rc.ec2)
                .await
                .map_err(aws_failed)?;
            if st != "unblocked" {
                blocked.insert(r.clone());
            }
        }
        if trigger == Trigger::Manual && !blocked.is_empty() {
            return Err(refused(
                "PublicAccessBlocked",
                format!(
                    "{} in {home}: nothing changed: public sharing was asked for, but image block public access is on in {} (DisableImageBlockPublicAccess there, or publish without \"public\")",
                    source.id,
                    blocked.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let mut mark = extra;
    if state != Some(IN_PROGRESS) {
        mark.insert(PUBLISH_STATE.to_owned(), IN_PROGRESS.to_owned());
    }
    if !mark.is_empty() {
        ec2::create_tags(&c.ec2, &[source.id.as_str()], &mark)
            .await
            .map_err(aws_failed)?;
    }

    // Copies.
    let copies: Vec<(String, Result<CopyProgress, AwsError>)> =
        stream::iter(policy.regions.iter().cloned())
            .map(|r| async {
                let res = advance_copy(deps, &source, &home, &r, deadline).await;
                (r, res)
            })
            .buffer_unordered(REGION_CONCURRENCY)
            .collect()
            .await;
    let mut regions = BTreeMap::new();
    let mut ready: Vec<(String, Image)> = vec![(home.clone(), source.clone())];
    for (r, res) in copies {
        match res {
            Ok((rep, Some(copy))) => {
                regions.insert(r.clone(), rep);
                ready.push((r, copy));
            }
            Ok((rep, None)) => {
                regions.insert(r, rep);
            }
            Err(e) => {
                regions.insert(r, RegionReport::failed(None, e.to_string()));
            }
        }
    }
    let pending = regions
        .values()
        .any(|r| matches!(r.outcome, "copying" | "waiting"));
    if pending {
        regions.insert(
            home.clone(),
            RegionReport {
                image_id: Some(source.id.clone()),
                outcome: "waiting",
                detail: Some("shared once every copy is available".into()),
                ..RegionReport::default()
            },
        );
        info!(image = %source.id, "copies in flight; the schedule continues");
        return Ok(ImageReport {
            image_id: source.id,
            region: home,
            status: "copying",
            policy,
            regions,
            announced: None,
        });
    }

    // Shares, region by region, each verified by reading it back.
    let deprecate_at = deprecation_time(&source, &policy, now);
    let shared: Vec<(String, RegionReport)> = stream::iter(ready)
        .map(|(r, image)| {
            let blocked = blocked.contains(&r);
            let policy = &policy;
            let deprecate_at = deprecate_at.as_deref();
            async move {
                let rep = share_region(deps, &r, &image, policy, blocked, deprecate_at).await;
                (r, rep)
            }
        })
        .buffer_unordered(REGION_CONCURRENCY)
        .collect()
        .await;
    regions.extend(shared);

    let failed: BTreeMap<&String, &RegionReport> = regions
        .iter()
        .filter(|(_, r)| r.outcome == "failed")
        .collect();
    let failed_list = failed
        .keys()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    // Decide what to announce and record, then do it: the message first, then the tags, so a
    // failed send leaves the state as it was and the next run sends again.
    let (status, event, record) = if failed.is_empty() {
        let changed = regions.values().any(|r| !r.granted.is_empty());
        let done = Tags::from([
            (PUBLISH_STATE.to_owned(), PUBLISHED.to_owned()),
            (PUBLISHED_AT.to_owned(), stamp_time(now)),
            (FAILED_REGIONS.to_owned(), String::new()),
        ]);
        let event = (state != Some(PUBLISHED) || changed).then_some(EventType::ImagePublished);
        info!(image = %source.id, regions = regions.len(), "published");
        ("published", event, Some(done))
    } else {
        warn!(image = %source.id, failed = %failed_list, "some regions failed; the schedule retries them");
        let new_failures =
            source.tags.get(FAILED_REGIONS).map(String::as_str) != Some(failed_list.as_str());
        let record = Tags::from([(FAILED_REGIONS.to_owned(), failed_list)]);
        (
            "partial",
            new_failures.then_some(EventType::PublishPartial),
            new_failures.then_some(record),
        )
    };
    if let Some(event) = event {
        let msg = publication_message(event, &source, &home, &policy, &regions, now);
        notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg)
            .await
            .map_err(aws_failed)?;
    }
    if let Some(tags) = record {
        ec2::create_tags(&c.ec2, &[source.id.as_str()], &tags)
            .await
            .map_err(aws_failed)?;
    }
    let announced = event.map(EventType::as_str);
    Ok(ImageReport {
        image_id: source.id,
        region: home,
        status,
        policy,
        regions,
        announced,
    })
}

/// The deprecation time every region gets: the source's own if it has one (a retry keeps the
/// first run's), else `now` + the policy's days; `None` when the policy sets none.
fn deprecation_time(source: &Image, policy: &Policy, now: DateTime<Utc>) -> Option<String> {
    if policy.deprecate_after_days == 0 {
        return None;
    }
    // Whole minutes, written as EC2 writes DeprecationTime (it rounds seconds to the minute),
    // so the time reported is exactly the one every region shows.
    source.deprecation_time.clone().or_else(|| {
        Some(
            (now + ChronoDuration::days(policy.deprecate_after_days))
                .format("%Y-%m-%dT%H:%M:00.000Z")
                .to_string(),
        )
    })
}

/// A region's report, and its copy once available and stamped.
type CopyProgress = (RegionReport, Option<Image>);

/// Finds or starts the copy in `region`; returns the copy once it is available and stamped.
async fn advance_copy(
    deps: &Deps,
    source: &Image,
    home: &str,
    region: &str,
    deadline: Deadline,
) -> Result<CopyProgress, AwsError> {
    let rc = clients_for(deps, Some(region));
    let found = ec2::describe_own_images(
        &rc.ec2,
        vec![ec2::tag_filter(PUBLISH_SOURCE, [source.id.as_str()])],
    )
    .await?;
    let copy = found
        .iter()
        .find(|i| i.state == "available")
        .or_else(|| found.first());
    let in_flight = if copy.is_none() {
        ec2::describe_own_images(
            &rc.ec2,
            vec![
                ec2::tag_key_filter(PUBLISH_SOURCE),
                ec2::filter("state", ["pending"]),
            ],
        )
        .await?
        .len()
    } else {
        0
    };
    let waiting = |detail: String| RegionReport {
        outcome: "waiting",
        detail: Some(detail),
        ..RegionReport::default()
    };
    match plan::copy_step(copy, in_flight, deps.config.copy_concurrency) {
        CopyStep::Start => {
            if !deadline.may_start() {
                return Ok((
                    waiting("not started: the deadline is near; the next run starts it".into()),
                    None,
                ));
            }
            let token = plan::client_token(home, &source.id, region);
            let tags = Tags::from([
                (PUBLISH_SOURCE.to_owned(), source.id.clone()),
                (PUBLISH_STATE.to_owned(), COPY.to_owned()),
            ]);
            match ec2::copy_image(
                &rc.ec2,
                CopyRequest {
                    source_image_id: &source.id,
                    source_region: home,
                    name: &source.name,
                    client_token: &token,
                    tags: &tags,
                },
            )
            .await
            {
                Ok(id) => {
                    info!(image = %source.id, %region, copy = %id, "copy started");
                    Ok((
                        RegionReport {
                            image_id: Some(id),
                            outcome: "copying",
                            ..RegionReport::default()
                        },
                        None,
                    ))
                }
                Err(e) if e.kind == ErrorKind::Throttled => Ok((
                    waiting(format!("copy not started yet: {e}; the next run retries")),
                    None,
                )),
                Err(e) => Ok((RegionReport::failed(None, e.to_string()), None)),
            }
        }
        CopyStep::Wait { reason } => {
            let mut rep = waiting(reason);
            if let Some(c) = copy {
                rep.outcome = "copying";
                rep.image_id = Some(c.id.clone());
            }
            Ok((rep, None))
        }
        CopyStep::Failed { reason } => {
            let id = copy.map(|c| c.id.clone());
            if let Some(id) = &id {
                ec2::deregister_image(&rc.ec2, id).await?;
            }
            Ok((
                RegionReport::failed(
                    id,
                    format!("{reason}; deregistered, copied again by the next run"),
                ),
                None,
            ))
        }
        CopyStep::Ready => {
            let Some(copy) = copy else {
                return Ok((RegionReport::failed(None, "copy vanished".into()), None));
            };
            if let Some(conflict) = stamp_copy(&rc, copy, source, home).await? {
                return Ok((RegionReport::failed(Some(copy.id.clone()), conflict), None));
            }
            Ok((
                RegionReport {
                    image_id: Some(copy.id.clone()),
                    outcome: "published",
                    ..RegionReport::default()
                },
                Some(copy.clone()),
            ))
        }
    }
}

/// Stamps the copy's lineage in its region (snapshots first, the image last); `Some` names the
/// conflicting tags when the copy holds other values (then nothing is written).
async fn stamp_copy(
    rc: &Clients,
    copy: &Image,
    source: &Image,
    home: &str,
) -> Result<Option<String>, AwsError> {
    let snapshots = ec2::describe_own_snapshots(&rc.ec2, &copy.snapshot_ids).await?;
    let parent = Parent {
        at: ImageRef {
            image_id: source.id.clone(),
            region: home.to_owned(),
        },
        tags: source.tags.clone(),
        snapshot_ids: source.snapshot_ids.clone(),
    };
    let stamp_plan = stamp::plan_stamp(&Facts {
        image: copy,
        region: &rc.region,
        snapshots: &snapshots,
        instance_image: None,
        parent: Some(&parent),
        assertion: None,
    });
    if !stamp_plan.conflicts.is_empty() {
        return Ok(Some(format!(
            "lineage conflict on copy {}: {}; nothing written (tag-lineage's manual invoke with \"force\" resolves it)",
            copy.id,
            stamp_plan
                .conflicts
                .iter()
                .map(|k| format!(
                    "{} {}={:?}, inferred {:?}",
                    k.resource, k.key, k.existing, k.inferred
                ))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    for (resource, tags) in stamp_plan.ordered_writes(&copy.id) {
        ec2::create_tags(&rc.ec2, &[resource.as_str()], tags).await?;
    }
    if copy.tags.get(PUBLISH_STATE).map(String::as_str) != Some(COPY) {
        let t = Tags::from([(PUBLISH_STATE.to_owned(), COPY.to_owned())]);
        ec2::create_tags(&rc.ec2, &[copy.id.as_str()], &t).await?;
    }
    Ok(None)
}

/// Deprecation, snapshot permissions, then launch permissions for one region's image, each read
/// back. Never fails the invocation: a failure is that region's outcome.
async fn share_region(
    deps: &Deps,
    region: &str,
    image: &Image,
    policy: &Policy,
    public_blocked: bool,
    deprecate_at: Option<&str>,
) -> RegionReport {
    let rc = clients_for(deps, Some(region));
    let mut rep = RegionReport {
        image_id: Some(image.id.clone()),
        outcome: "published",
        ..RegionReport::default()
    };
    let mut policy = policy.clone();
    if public_blocked {
        policy.public = false;
    }
    match share_checked(&rc, image, &policy, deprecate_at, &mut rep).await {
        Ok(()) if public_blocked => RegionReport {
            outcome: "failed",
            detail: Some(format!(
                "public sharing was asked for, but image block public access is on in {region} (shared with the other principals; DisableImageBlockPublicAccess there and the schedule finishes it)"
            )),
            ..rep
        },
        Ok(()) => rep,
        Err(e) => RegionReport {
            outcome: "failed",
            detail: Some(e),
            ..rep
        },
    }
}

/// Who may launch `image_id`, read back.
async fn launch_grants(rc: &Clients, image_id: &str) -> Result<Grants, String> {
    ec2::launch_permissions(&rc.ec2, image_id)
        .await
        .map(|e| Grants::from_entries(&e))
        .map_err(|e| e.to_string())
}

/// Who may create volumes from `snapshot_id`, read back.
async fn volume_grants(rc: &Clients, snapshot_id: &str) -> Result<Grants, String> {
    ec2::create_volume_permissions(&rc.ec2, snapshot_id)
        .await
        .map(|e| Grants::from_entries(&e))
        .map_err(|e| e.to_string())
}

async fn share_checked(
    rc: &Clients,
    image: &Image,
    policy: &Policy,
    deprecate_at: Option<&str>,
    rep: &mut RegionReport,
) -> Result<(), String> {
    let s = |e: AwsError| e.to_string();
    if let Some(at) = deprecate_at {
        match &image.deprecation_time {
            Some(t) => rep.deprecation_time = Some(t.clone()),
            None => {
                let when = DateTime::parse_from_rfc3339(at)
                    .map_err(|e| format!("deprecation time {at}: {e}"))?
                    .with_timezone(&Utc);
                ec2::enable_image_deprecation(&rc.ec2, &image.id, when)
                    .await
                    .map_err(s)?;
                rep.deprecation_time = Some(at.to_owned());
            }
        }
    }
    let volume = Grants::create_volume(policy);
    if !volume.is_empty() {
        for snap in &image.snapshot_ids {
            let current = volume_grants(rc, snap).await?;
            let missing = volume.missing_from(&current);
            if !missing.is_empty() {
                ec2::modify_create_volume_permission(&rc.ec2, snap, Change::Add, &missing)
                    .await
                    .map_err(s)?;
            }
            let after = volume_grants(rc, snap).await?;
            let still = volume.missing_from(&after);
            if !still.is_empty() {
                return Err(format!(
                    "snapshot {snap}: create-volume permission still lacks {} after granting it",
                    json!(still)
                ));
            }
        }
    }
    let launch = Grants::launch(policy);
    let current = launch_grants(rc, &image.id).await?;
    let missing = launch.missing_from(&current);
    if !missing.is_empty() {
        ec2::modify_launch_permission(&rc.ec2, &image.id, Change::Add, &missing)
            .await
            .map_err(s)?;
        rep.granted = missing;
    }
    let after = launch_grants(rc, &image.id).await?;
    let still = launch.missing_from(&after);
    if !still.is_empty() {
        return Err(format!(
            "{}: launch permission still lacks {} after granting it",
            image.id,
            json!(still)
        ));
    }
    Ok(())
}

fn publication_message(
    event: EventType,
    source: &Image,
    home: &str,
    policy: &Policy,
    regions: &BTreeMap<String, RegionReport>,
    now: DateTime<Utc>,
) -> Message {
    let images: BTreeMap<&String, Value> = regions
        .iter()
        .map(|(r, rep)| {
            (
                r,
                json!({"image_id": rep.image_id, "outcome": rep.outcome, "detail": rep.detail}),
            )
        })
        .collect();
    let failed: Vec<&String> = regions
        .iter()
        .filter(|(_, r)| r.outcome == "failed")
        .map(|(k, _)| k)
        .collect();
    Message {
        image_id: Some(source.id.clone()),
        image_name: Some(source.name.clone()),
        snapshot_ids: source.snapshot_ids.clone(),
        family: source.tags.get(FAMILY).cloned(),
        lineage: shared::plan::lineage::LINEAGE_KEYS
            .iter()
            .filter_map(|k| source.tags.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect(),
        publication: Some(json!({
            "regions": images,
            "shares": Grants::launch(policy),
            "public": policy.public,
            "deprecation_time": regions.get(home).and_then(|r| r.deprecation_time.clone()),
            "failed_regions": failed,
            "retry": if failed.is_empty() { Value::Null } else { json!("the failed regions are retried by the publish schedule") },
        })),
        ..Message::new(event, now, home)
    }
}

async fn revoke(
    deps: &Deps,
    c: &Clients,
    source: &Image,
    principals: &Grants,
    now: DateTime<Utc>,
) -> Result<Output, InvocationError> {
    let home = c.region.clone();
    // Where the image lives: its own region and every copy publish made in the policy's
    // regions. A revoke must work even when the image's policy no longer resolves (say, a
    // region was denied since): then the defaults name the regions to look in.
    let policy = plan::resolve(&deps.config.defaults, &source.tags, &home)
        .or_else(|_| plan::resolve(&deps.config.defaults, &Tags::new(), &home))
        .unwrap_or_default();
    let mut images = vec![(home.clone(), source.clone())];
    for r in &policy.regions {
        let rc = clients_for(deps, Some(r));
        let found = ec2::describe_own_images(
            &rc.ec2,
            vec![ec2::tag_filter(PUBLISH_SOURCE, [source.id.as_str()])],
        )
        .await
        .map_err(aws_failed)?;
        images.extend(found.into_iter().map(|i| (r.clone(), i)));
    }
    let results: Vec<(String, RegionReport)> = stream::iter(images)
        .map(|(r, image)| async move {
            let rc = clients_for(deps, Some(&r));
            let mut rep = RegionReport {
                image_id: Some(image.id.clone()),
                outcome: "revoked",
                ..RegionReport::default()
            };
            if let Err(e) = revoke_checked(&rc, &image, principals, &mut rep).await {
                rep.outcome = "failed";
                rep.detail = Some(e);
            }
            (r, rep)
        })
        .buffer_unordered(REGION_CONCURRENCY)
        .collect()
        .await;
    let regions: BTreeMap<String, RegionReport> = results.into_iter().collect();
    // Recorded on the image, so neither the schedule nor a later publish shares again.
    let t = principals.revoked_tags(&policy);
    ec2::create_tags(&c.ec2, &[source.id.as_str()], &t)
        .await
        .map_err(aws_failed)?;
    let failures: Vec<String> = regions
        .iter()
        .filter(|(_, r)| r.outcome == "failed")
        .map(|(k, r)| format!("{k}: {}", r.detail.as_deref().unwrap_or("failed")))
        .collect();
    let mut msg = publication_message(
        EventType::ImageRevoked,
        source,
        &home,
        &policy,
        &regions,
        now,
    );
    if let Some(Value::Object(p)) = msg.publication.as_mut() {
        p.insert("revoked".into(), json!(principals));
    }
    notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg)
        .await
        .map_err(aws_failed)?;
    if !failures.is_empty() {
        return Err(InvocationError::Partial {
            failed: failures.len(),
            total: regions.len(),
            errors: failures,
        });
    }
    info!(image = %source.id, "revoked");
    Ok(Output::Revoke {
        image_id: source.id.clone(),
        region: home,
        regions,
        announced: Some(EventType::ImageRevoked.as_str()),
    })
}

/// Image first (no new launches), then its snapshots; each read back.
async fn revoke_checked(
    rc: &Clients,
    image: &Image,
    principals: &Grants,
    rep: &mut RegionReport,
) -> Result<(), String> {
    let s = |e: AwsError| e.to_string();
    let current = launch_grants(rc, &image.id).await?;
    let remove = principals.common(&current);
    if !remove.is_empty() {
        ec2::modify_launch_permission(&rc.ec2, &image.id, Change::Remove, &remove)
            .await
            .map_err(s)?;
    }
    let after = launch_grants(rc, &image.id).await?;
    let left = principals.common(&after);
    if !left.is_empty() {
        return Err(format!(
            "{}: launch permission still holds {} after removing it",
            image.id,
            json!(left)
        ));
    }
    rep.revoked = remove;
    let volume = Grants {
        accounts: principals.accounts.clone(),
        public: principals.public,
        ..Grants::default()
    };
    if volume.is_empty() {
        return Ok(());
    }
    for snap in &image.snapshot_ids {
        let current = volume_grants(rc, snap).await?;
        let remove = volume.common(&current);
        if !remove.is_empty() {
            ec2::modify_create_volume_permission(&rc.ec2, snap, Change::Remove, &remove)
                .await
                .map_err(s)?;
        }
        let after = volume_grants(rc, snap).await?;
        if !volume.common(&after).is_empty() {
            return Err(format!(
                "snapshot {snap}: create-volume permission still holds {} after removing it",
                json!(volume.common(&after))
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn config_lists_every_problem() {
        let err = Config::from_lookup(&lookup(&[
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:t"),
            ("PUBLISH_REGIONS", "eu-west-1,us-west-2"),
            ("PUBLISH_DENY_REGIONS", "eu-west-1"),
            ("SHARE_ACCOUNTS", "123"),
            ("PUBLIC", "sometimes"),
            ("COPY_CONCURRENCY", "0"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.problems.len(), 4, "{err}");
        let ok = Config::from_lookup(&lookup(&[(
            "TOPIC_ARN",
            "arn:aws:sns:us-east-1:123456789012:t",
        )]))
        .expect("defaults are valid");
        assert_eq!(ok.defaults.public, PublicMode::Never);
        assert!(ok.defaults.regions.is_empty());
        assert_eq!(ok.copy_concurrency, 20);
    }

    #[test]
    fn manual_requests_parse_and_refuse_with_every_problem() {
        let cmd = Command::from_json(
            r#"{"image_id":"ami-0123456789abcdef0","regions":["eu-west-1"],"accounts":["111122223333"],"public":true}"#,
        )
        .expect("valid");
        assert!(
            matches!(cmd, Command::Publish { trigger: Trigger::Manual, ref overrides, .. } if overrides.public == Some(true))
        );
        let unpublish =
            Command::from_json(r#"{"image_id":"ami-0123456789abcdef0","public":false}"#)
                .expect("valid");
        assert!(matches!(unpublish, Command::Revoke { ref principals, .. } if principals.public));
        let err = Command::from_json(
            r#"{"image_id":"ami-xyz","regions":["mars-1"],"accounts":["12"],"public":"yes","colour":1}"#,
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in ["ami-xyz", "mars-1", "\"12\"", "public must be", "colour"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(err.error_type(), "InvalidEvent");
        let mixed = Command::from_json(
            r#"{"image_id":"ami-0123456789abcdef0","revoke":["111122223333"],"regions":["eu-west-1"]}"#,
        )
        .expect_err("revoke with settings");
        assert!(mixed.to_string().contains("cannot be combined"));
    }

    #[test]
    fn sns_other_event_types_are_ignored_and_bad_ids_refused() {
        let record = |et: &str, msg: &str| {
            json!({"Records": [{"EventSource": "aws:sns", "Sns": {
                "Message": msg,
                "MessageAttributes": {"event_type": {"Type": "String", "Value": et}}}}]})
        };
        let ignored = Command::from_event(&record("image.registered", "{}")).expect("parsed");
        assert!(matches!(ignored, Command::Ignore(_)));
        let bad = Command::from_event(&record("image.ready", r#"{"image_id":"nope"}"#));
        assert!(bad.is_err());
        let ok = Command::from_event(&record(
            "image.ready",
            r#"{"image_id":"ami-0123456789abcdef0","region":"us-west-2"}"#,
        ))
        .expect("valid");
        assert!(
            matches!(ok, Command::Publish { trigger: Trigger::ImageReady, region: Some(ref r), .. } if r == "us-west-2")
        );
    }

    #[test]
    fn the_message_stays_under_the_sns_limit_with_every_region() {
        let source = Image {
            id: "ami-0123456789abcdef0".into(),
            name: "n".into(),
            ..Image::default()
        };
        let policy = Policy {
            accounts: (0..5000).map(|i| format!("{i:012}")).collect(),
            ..Policy::default()
        };
        let regions: BTreeMap<String, RegionReport> = ids::KNOWN_REGIONS
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    RegionReport::failed(Some("ami-0123456789abcdef0".into()), "x".repeat(6000)),
                )
            })
            .collect();
        let m = publication_message(
            EventType::PublishPartial,
            &source,
            "us-east-1",
            &policy,
            &regions,
            Utc::now(),
        );
        let text = m.to_json();
        assert!(text.len() <= notify::MAX_MESSAGE_BYTES, "{}", text.len());
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["event_type"], "image.publish-partial");
    }
}
