//! create-image: an uploaded disk image becomes a registered AMI, exactly once.
//!
//! Event → [`Command`] ([`Command::from_event`]) → [`handle`] → [`Output`].
//!
//! - **Ingest** (S3 notification, EventBridge "Object Created", manual `{"bucket","key",…}`):
//!   validate the object (extension, magic bytes, settings) before changing anything; reject
//!   with every problem listed (object tagged, `image.failed` sent, invocation succeeds so S3
//!   does not retry forever); else start ImportSnapshot with a ClientToken derived from the
//!   upload, the full spec stored as the task's tags. No waiting.
//! - **Sweep** (schedule, and after every ingest): plan with
//!   [`shared::plan::import::plan_sweep`] over the pipeline's import tasks, then register
//!   completed imports (`image.registered`), report failed ones (`image.failed`), warn once
//!   about slow ones — with bounded concurrency, stopping near the deadline.
//!
//! Infrastructure failures (access denied, throttling past retries, service errors) are
//! collected across the whole run and fail the invocation once at the end, naming each.

use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::Value;
use shared::aws::clients::Clients;
use shared::aws::{ec2, s3};
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::deadline::Deadline;
use shared::error::{AwsError, ErrorKind};
use shared::events;
use shared::model::{Image, ObjectInfo, ObjectRef, Tags};
use shared::notify::{self, EventType, Message};
use shared::plan::import::{self, OnDuplicate, Registration, SweepAction, SweepPolicy};
use shared::plan::spec::{self, ImageSpec, Problem};
use shared::plan::{disk, lineage, naming};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Settings of create-image, from the environment (names as in `template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Topic and S3 addressing.
    pub common: CommonConfig,
    /// The VM Import service role (`IMPORT_ROLE_NAME`, default `vmimport`).
    pub import_role_name: String,
    /// Minutes after which a running import gets one warning (`STALE_IMPORT_MINUTES`).
    pub stale_import_minutes: i64,
    /// Imports advanced in parallel by the sweep (`SWEEP_CONCURRENCY`).
    pub concurrency: usize,
    /// Function-wide defaults of the per-upload settings (`DEFAULT_<SETTING>`).
    pub defaults: BTreeMap<String, String>,
}

/// Default-setting variables: `DEFAULT_` + the setting key upper-cased with `_`.
pub const DEFAULT_VARS: [&str; 8] = [
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_BOOT_MODE",
    "DEFAULT_ENA",
    "DEFAULT_IMDS_V2",
    "DEFAULT_TPM",
    "DEFAULT_ROOT_DEVICE",
    "DEFAULT_VOLUME_TYPE",
    "DEFAULT_TAGS",
];

impl Config {
    /// Every variable this function reads.
    pub fn vars() -> Vec<&'static str> {
        let mut v = CommonConfig::VARS.to_vec();
        v.extend([
            "IMPORT_ROLE_NAME",
            "STALE_IMPORT_MINUTES",
            "SWEEP_CONCURRENCY",
        ]);
        v.extend(DEFAULT_VARS);
        v
    }

    /// Reads and validates the configuration; the error lists every problem.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader::new(lookup);
        let common = CommonConfig::read(&mut r);
        let import_role_name = r
            .optional("IMPORT_ROLE_NAME")
            .unwrap_or_else(|| "vmimport".to_owned());
        let stale_import_minutes = r.int_in("STALE_IMPORT_MINUTES", 120, 15, 7 * 24 * 60);
        let concurrency = r.int_in("SWEEP_CONCURRENCY", 4, 1, 32) as usize;
        let mut defaults = BTreeMap::new();
        for var in DEFAULT_VARS {
            if let Some(v) = r.optional(var) {
                let key = var
                    .trim_start_matches("DEFAULT_")
                    .to_ascii_lowercase()
                    .replace('_', "-");
                defaults.insert(key, v);
            }
        }
        if let Err(problems) = spec::resolve(&[&defaults], "") {
            for p in problems {
                r.problem(format!(
                    "DEFAULT_{}: {}",
                    p.setting.to_ascii_uppercase().replace('-', "_"),
                    p.message
                ));
            }
        }
        r.finish()?;
        Ok(Config {
            common,
            import_role_name,
            stale_import_minutes,
            concurrency,
            defaults,
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

/// One object to ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestItem {
    /// The object.
    pub object: ObjectRef,
    /// Settings given in a manual invoke (win over metadata and defaults).
    pub overrides: BTreeMap<String, String>,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Validate and import these objects, then sweep. `ignored` lists records that are not
    /// uploads (e.g. `ObjectRemoved:*`), reported in the output.
    Ingest {
        /// Objects to import.
        items: Vec<IngestItem>,
        /// Records skipped, with why.
        ignored: Vec<String>,
    },
    /// Advance every import in flight.
    Sweep,
}

pub use shared::invocation::InvocationError;

/// Manual-invoke fields besides the settings.
const MANUAL_FIELDS: [&str; 3] = ["bucket", "key", "version_id"];

impl Command {
    /// Parses raw JSON text (what `cargo lambda invoke --data-file` sends).
    pub fn from_json(text: &str) -> Result<Self, InvocationError> {
        Self::from_event(&InvocationError::parse_json(text)?)
    }

    /// Recognises the trigger and turns it into a command.
    pub fn from_event(v: &Value) -> Result<Self, InvocationError> {
        if !v.is_object() {
            return Err(InvocationError::InvalidEvent(format!(
                "expected a JSON object, got {}",
                kind_of(v)
            )));
        }
        if events::is_notification(v) {
            let records = events::parse_notification(v)?;
            if records.is_empty() && v["Records"].as_array().is_none_or(|r| r.is_empty()) {
                return Err(InvocationError::InvalidEvent(
                    "the S3 notification has no Records".into(),
                ));
            }
            return Ok(ingest_from(records));
        }
        if events::is_eventbridge_s3(v) {
            return Ok(ingest_from(vec![events::parse_eventbridge(v)?]));
        }
        if v.get("source").and_then(Value::as_str) == Some("aws.events")
            && v.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        {
            return Ok(Command::Sweep);
        }
        if let Some(map) = v.as_object() {
            if map.get("sweep").and_then(Value::as_bool) == Some(true) && map.len() == 1 {
                return Ok(Command::Sweep);
            }
            if map.contains_key("bucket") || map.contains_key("key") {
                return manual(map);
            }
        }
        Err(InvocationError::InvalidEvent(
            "unrecognised event: expected an S3 notification, an EventBridge S3 \"Object Created\" event, a scheduled event, {\"sweep\": true} or {\"bucket\", \"key\", …settings}".into(),
        ))
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn ingest_from(records: Vec<events::ObjectEvent>) -> Command {
    let (created, other): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.created);
    Command::Ingest {
        items: created
            .into_iter()
            .map(|r| IngestItem {
                object: r.object,
                overrides: BTreeMap::new(),
            })
            .collect(),
        ignored: other
            .into_iter()
            .map(|r| format!("{} ({}): not an upload", r.object, r.event_name))
            .collect(),
    }
}

fn manual(map: &serde_json::Map<String, Value>) -> Result<Command, InvocationError> {
    let mut problems = Vec::new();
    let text = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let bucket = text("bucket");
    let key = map
        .get("key")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if bucket.is_none() {
        problems.push("\"bucket\" must be a non-empty string".to_owned());
    }
    if key.is_none() {
        problems.push("\"key\" must be a non-empty string".to_owned());
    }
    let mut overrides = BTreeMap::new();
    for (k, v) in map {
        if MANUAL_FIELDS.contains(&k.as_str()) {
            continue;
        }
        if !spec::keys::ALL.contains(&k.as_str()) {
            problems.push(format!(
                "unknown field {k:?}; settings are: {}",
                spec::keys::ALL.join(", ")
            ));
            continue;
        }
        match v {
            Value::String(s) => overrides.insert(k.clone(), s.clone()),
            Value::Bool(b) => overrides.insert(k.clone(), b.to_string()),
            Value::Number(n) => overrides.insert(k.clone(), n.to_string()),
            Value::Object(tags) if k == spec::keys::TAGS => {
                let pairs = tags.iter().map(|(tk, tv)| {
                    (
                        tk.clone(),
                        tv.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| tv.to_string()),
                    )
                });
                overrides.insert(
                    k.clone(),
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pairs)
                        .finish(),
                )
            }
            other => {
                problems.push(format!(
                    "field {k:?} must be a string, number or boolean, got {}",
                    kind_of(other)
                ));
                None
            }
        };
    }
    match (bucket, key) {
        (Some(bucket), Some(key)) if problems.is_empty() => Ok(Command::Ingest {
            items: vec![IngestItem {
                object: ObjectRef {
                    bucket,
                    key,
                    version_id: text("version_id"),
                },
                overrides,
            }],
            ignored: vec![],
        }),
        _ => Err(InvocationError::InvalidEvent(format!(
            "manual invoke: {}",
            problems.join("; ")
        ))),
    }
}

/// What happened to one uploaded object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum IngestOutcome {
    /// ImportSnapshot started (or was already running: same ClientToken, same task).
    ImportStarted {
        /// The object.
        object: String,
        /// The task.
        import_task_id: String,
        /// The validated settings.
        spec: Box<ImageSpec>,
    },
    /// An image made from this exact upload already exists.
    AlreadyImported {
        /// The object.
        object: String,
        /// The image.
        image_id: String,
    },
    /// A newer version of the key exists; its own event imports it.
    Superseded {
        /// The object.
        object: String,
        /// The current version.
        current_version: String,
    },
    /// The upload is invalid; nothing was imported.
    Rejected {
        /// The object.
        object: String,
        /// Every problem.
        problems: Vec<String>,
    },
    /// An AWS call failed; the same event can be retried safely.
    Error {
        /// The object.
        object: String,
        /// The failure.
        error: String,
    },
}

/// What one sweep step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The task.
    pub task_id: String,
    /// The planned action (`register`, `announce`, `report-failure`, `warn-stale`, `skip`).
    pub action: String,
    /// What came of it: an image id, a reason, `deferred`, or the error.
    pub result: String,
    /// Whether it failed.
    pub failed: bool,
}

/// The sweep's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SweepReport {
    /// Import tasks of the pipeline seen.
    pub tasks_seen: usize,
    /// One entry per task.
    pub steps: Vec<StepReport>,
    /// Steps not started because the deadline was near.
    pub deferred: usize,
}

/// The invocation's JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Output {
    /// One entry per uploaded object.
    pub ingested: Vec<IngestOutcome>,
    /// Records that were not uploads.
    pub ignored: Vec<String>,
    /// The sweep.
    pub sweep: SweepReport,
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

/// Runs a command. `now` is the clock; `deadline` bounds the work started.
///
/// Returns the full report, or — when any AWS call failed — [`InvocationError::Partial`] after
/// everything else was done.
pub async fn handle(
    cmd: Command,
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<Output, InvocationError> {
    let mut out = Output::default();
    if let Command::Ingest { items, ignored } = cmd {
        out.ignored = ignored;
        out.ingested = stream::iter(items)
            .map(|item| ingest(deps, item, now))
            .buffer_unordered(deps.config.concurrency)
            .collect()
            .await;
    }
    out.sweep = match sweep(deps, now, deadline).await {
        Ok(report) => report,
        Err(e) => SweepReport {
            steps: vec![StepReport {
                task_id: "-".into(),
                action: "list".into(),
                result: e.to_string(),
                failed: true,
            }],
            ..Default::default()
        },
    };
    let mut errors: Vec<String> = out
        .ingested
        .iter()
        .filter_map(|o| match o {
            IngestOutcome::Error { object, error } => Some(format!("{object}: {error}")),
            _ => None,
        })
        .collect();
    errors.extend(
        out.sweep
            .steps
            .iter()
            .filter(|s| s.failed)
            .map(|s| format!("{}: {}", s.task_id, s.result)),
    );
    let total = out.ingested.len()
        + out
            .sweep
            .steps
            .iter()
            .filter(|s| s.action != "skip")
            .count();
    info!(
        ingested = out.ingested.len(),
        ignored = out.ignored.len(),
        tasks = out.sweep.tasks_seen,
        deferred = out.sweep.deferred,
        failed = errors.len(),
        "create-image run finished"
    );
    match InvocationError::from_failures(total, errors) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

async fn ingest(deps: &Deps, item: IngestItem, now: DateTime<Utc>) -> IngestOutcome {
    let uri = item.object.uri();
    match try_ingest(deps, &item, now).await {
        Ok(outcome) => outcome,
        Err(e) => {
            warn!(object = %uri, error = %e, "ingest failed");
            let msg = Message {
                source_uri: Some(uri.clone()),
                error: Some(e.to_string()),
                ..failed_message(deps, now)
            };
            if let Err(sns_err) =
                notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await
            {
                warn!(object = %uri, error = %sns_err, "could not report the failure on SNS");
            }
            IngestOutcome::Error {
                object: uri,
                error: e.to_string(),
            }
        }
    }
}

fn failed_message(deps: &Deps, now: DateTime<Utc>) -> Message {
    Message::new(EventType::ImageFailed, now, &deps.clients.region)
}

async fn try_ingest(
    deps: &Deps,
    item: &IngestItem,
    now: DateTime<Utc>,
) -> Result<IngestOutcome, AwsError> {
    let c = &deps.clients;
    // Always look at the latest version: ImportSnapshot imports the key's current content.
    let latest = ObjectRef {
        version_id: None,
        ..item.object.clone()
    };
    let info = match s3::head_object(&c.s3, &latest).await {
        Ok(info) => info,
        Err(e) if e.is_not_found() => {
            let problem = format!(
                "{} does not exist (deleted before the import could start, or the bucket is missing)",
                latest.uri()
            );
            return reject(deps, &item.object, vec![problem], now, false).await;
        }
        Err(e) => return Err(e),
    };
    if let (Some(wanted), Some(current)) = (&item.object.version_id, &info.version_id)
        && wanted != current
    {
        info!(object = %item.object, current_version = %current, "superseded by a newer version");
        return Ok(IngestOutcome::Superseded {
            object: item.object.uri(),
            current_version: current.clone(),
        });
    }
    let object = ObjectRef {
        version_id: info.version_id.clone(),
        ..latest
    };
    let mut problems = Vec::new();
    let format = match disk::format_from_key(&object.key) {
        Ok(f) => Some(f),
        Err(e) => {
            problems.push(format!("file: {e}"));
            None
        }
    };
    if let Some(format) = format
        && let Err(e) = check_disk(c, &object, &info, format).await?
    {
        problems.push(format!("content: {e}"));
    }
    let spec = match spec::resolve(
        &[&deps.config.defaults, &info.metadata, &item.overrides],
        &object.key,
    ) {
        Ok(spec) => Some(spec),
        Err(ps) => {
            problems.extend(ps.iter().map(Problem::to_string));
            None
        }
    };
    let (Some(format), Some(spec), true) = (format, spec, problems.is_empty()) else {
        return reject(deps, &object, problems, now, true).await;
    };
    let version_or_etag = info
        .version_id
        .clone()
        .or_else(|| info.etag.clone())
        .unwrap_or_default();
    let token = naming::source_token(&object.bucket, &object.key, &version_or_etag);
    let existing = ec2::describe_own_images(
        &c.ec2,
        vec![ec2::tag_filter(lineage::SOURCE_TOKEN, [token.as_str()])],
    )
    .await?;
    if let Some(image) = existing.first() {
        info!(object = %object, image_id = %image.id, "already imported");
        return Ok(IngestOutcome::AlreadyImported {
            object: object.uri(),
            image_id: image.id.clone(),
        });
    }
    let mut tags = spec.to_tags();
    tags.insert(lineage::MANAGED.into(), "true".into());
    tags.insert(
        lineage::SOURCE_URI.into(),
        lineage::fit_tag_value(&object.uri()),
    );
    tags.insert(lineage::SOURCE_TOKEN.into(), token.clone());
    tags.insert(lineage::SOURCE_FORMAT.into(), format.as_api().into());
    tags.insert(
        lineage::STARTED_AT.into(),
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    if let Some(etag) = &info.etag {
        tags.insert(lineage::SOURCE_ETAG.into(), etag.clone());
    }
    if let Some(v) = &info.version_id {
        tags.insert(lineage::SOURCE_VERSION.into(), v.clone());
    }
    let description = lineage::fit_tag_value(&format!("ami-pipeline import of {}", object.uri()));
    let task_id = ec2::import_snapshot(
        &c.ec2,
        ec2::ImportRequest {
            bucket: &object.bucket,
            key: &object.key,
            format: format.as_api(),
            client_token: &token,
            role_name: &deps.config.import_role_name,
            description: &description,
            tags: &tags,
        },
    )
    .await?;
    info!(object = %object, import_task_id = %task_id, format = %format, family = %spec.family, "import started");
    Ok(IngestOutcome::ImportStarted {
        object: object.uri(),
        import_task_id: task_id,
        spec: Box::new(spec),
    })
}

/// Reads both ends of the object and checks its magic numbers. The outer error is an AWS
/// failure; the inner one a content problem.
async fn check_disk(
    c: &Clients,
    object: &ObjectRef,
    info: &ObjectInfo,
    format: shared::model::DiskFormat,
) -> Result<Result<(), String>, AwsError> {
    if info.size == 0 {
        return Ok(disk::check_content(format, 0, &[], &[]));
    }
    let head = s3::get_range(&c.s3, object, &format!("0-{}", disk::PROBE_BYTES - 1)).await?;
    let tail = s3::get_range(&c.s3, object, &format!("-{}", disk::PROBE_BYTES)).await?;
    Ok(disk::check_content(format, info.size, &head, &tail))
}

/// Rejects an upload: tags the object (when it exists), sends `image.failed`, reports.
async fn reject(
    deps: &Deps,
    object: &ObjectRef,
    problems: Vec<String>,
    now: DateTime<Utc>,
    object_exists: bool,
) -> Result<IngestOutcome, AwsError> {
    warn!(object = %object, problems = ?problems, "upload rejected");
    if object_exists {
        tag_object(&deps.clients, object, "rejected", &problems.join("; ")).await?;
    }
    let msg = Message {
        source_uri: Some(object.uri()),
        error: Some(format!("upload rejected: {} problem(s)", problems.len())),
        problems: problems.clone(),
        ..failed_message(deps, now)
    };
    notify::send(&deps.clients.sns, &deps.config.common.topic_arn, &msg).await?;
    Ok(IngestOutcome::Rejected {
        object: object.uri(),
        problems,
    })
}

async fn tag_object(
    c: &Clients,
    object: &ObjectRef,
    status: &str,
    reason: &str,
) -> Result<(), AwsError> {
    let existing = match s3::get_tags(&c.s3, object).await {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    match lineage::object_status_tags(&existing, status, reason) {
        Some(tags) => s3::put_tags(&c.s3, object, &tags).await,
        None => {
            warn!(object = %object, "object already has 10 tags; status not recorded on it");
            Ok(())
        }
    }
}

/// Lists the pipeline's import tasks, plans, and executes.
pub async fn sweep(
    deps: &Deps,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Result<SweepReport, AwsError> {
    let c = &deps.clients;
    let tasks =
        ec2::describe_import_tasks(&c.ec2, vec![ec2::tag_key_filter(lineage::MANAGED)]).await?;
    let pending: Vec<&str> = tasks
        .iter()
        .filter(|t| {
            t.status == shared::model::ImportStatus::Completed
                && !t.tags.contains_key(lineage::OUTCOME)
        })
        .map(|t| t.id.as_str())
        .collect();
    let mut images_by_task = BTreeMap::new();
    for chunk in pending.chunks(100) {
        for image in ec2::describe_own_images(
            &c.ec2,
            vec![ec2::tag_filter(lineage::IMPORT_TASK, chunk.iter().copied())],
        )
        .await?
        {
            if let Some(task) = image.tags.get(lineage::IMPORT_TASK) {
                images_by_task.insert(task.clone(), image);
            }
        }
    }
    let policy = SweepPolicy {
        stale_after: chrono::Duration::minutes(deps.config.stale_import_minutes),
    };
    let actions = import::plan_sweep(&tasks, &images_by_task, policy, now);
    info!(
        tasks = tasks.len(),
        to_do = actions.iter().filter(|a| a.mutates()).count(),
        "sweep planned"
    );
    let images_by_task = &images_by_task;
    let steps: Vec<Option<StepReport>> = stream::iter(actions)
        .map(|action| async move {
            if action.mutates() && !deadline.may_start() {
                return None;
            }
            Some(execute(deps, action, images_by_task, now).await)
        })
        .buffer_unordered(deps.config.concurrency)
        .collect()
        .await;
    let deferred = steps.iter().filter(|s| s.is_none()).count();
    let mut steps: Vec<StepReport> = steps.into_iter().flatten().collect();
    steps.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    Ok(SweepReport {
        tasks_seen: tasks.len(),
        steps,
        deferred,
    })
}

fn action_name(a: &SweepAction) -> &'static str {
    match a {
        SweepAction::Register { .. } => "register",
        SweepAction::Announce { .. } => "announce",
        SweepAction::ReportFailure { .. } => "report-failure",
        SweepAction::WarnStale { .. } => "warn-stale",
        SweepAction::Skip { .. } => "skip",
    }
}

async fn execute(
    deps: &Deps,
    action: SweepAction,
    images: &BTreeMap<String, Image>,
    now: DateTime<Utc>,
) -> StepReport {
    let task_id = action.task_id().to_owned();
    let name = action_name(&action);
    let result = match action {
        SweepAction::Skip { reason, .. } => Ok(reason),
        SweepAction::Register {
            task_id,
            registration,
        } => register(deps, &task_id, &registration, now).await,
        SweepAction::Announce { task_id, image_id } => match images.get(&task_id) {
            Some(image) => announce(deps, &task_id, image, now)
                .await
                .map(|()| image_id),
            None => Ok(format!("{image_id} no longer listed")),
        },
        SweepAction::ReportFailure {
            task_id,
            message,
            object,
        } => report_failure(deps, &task_id, &message, object.as_ref(), now)
            .await
            .map(|()| message),
        SweepAction::WarnStale {
            task_id,
            age_minutes,
        } => warn_stale(deps, &task_id, age_minutes, now).await,
    };
    match result {
        Ok(result) => StepReport {
            task_id,
            action: name.into(),
            result,
            failed: false,
        },
        Err(e) => {
            warn!(import_task_id = %task_id, action = name, error = %e, "sweep step failed");
            StepReport {
                task_id,
                action: name.into(),
                result: e.to_string(),
                failed: true,
            }
        }
    }
}

async fn register(
    deps: &Deps,
    task_id: &str,
    reg: &Registration,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let c = &deps.clients;
    let snapshot = ec2::describe_snapshot(&c.ec2, &reg.snapshot_id).await?;
    let snapshot_gib = snapshot.volume_size_gib.unwrap_or(1).max(1);
    let size = match reg.spec.volume_size_gib {
        Some(n) if (n as i32) < snapshot_gib => {
            let message = format!(
                "volume-size {n} GiB is smaller than the imported disk ({snapshot_gib} GiB); the image was not registered"
            );
            let object = object_of(reg);
            report_failure(deps, task_id, &message, object.as_ref(), now).await?;
            return Ok(message);
        }
        Some(n) => n as i32,
        None => snapshot_gib,
    };
    // The snapshot's lineage first, with its own CreateTags (RegisterImage cannot tag it): a
    // crash after this and before RegisterImage leaves a tagged snapshot and an unfinished
    // task, which the next sweep registers; the other order could leave an AMI whose snapshot
    // is never tagged. CreateTags overwrites with the same values, so repeating it is harmless.
    ec2::create_tags(&c.ec2, &[&reg.snapshot_id], &reg.tags).await?;
    let mut attempt = 0;
    let image_id = loop {
        let name = if attempt == 0 {
            reg.name.clone()
        } else {
            naming::auto_name(
                &reg.spec.name_prefix,
                reg.started_at,
                &reg.source_token,
                attempt,
            )
        };
        let req = ec2::RegisterRequest {
            name: &name,
            snapshot_id: &reg.snapshot_id,
            volume_size_gib: size,
            spec: &reg.spec,
            tags: &reg.tags,
        };
        match ec2::register_image(&c.ec2, req).await {
            Ok(id) => {
                info!(import_task_id = task_id, image_id = %id, name = %name, "registered image");
                break id;
            }
            Err(e) if e.has_code("InvalidAMIName.Duplicate") => {
                let holder = ec2::image_holding_name(&c.ec2, &name).await?;
                match import::on_duplicate(task_id, holder.as_ref(), reg) {
                    OnDuplicate::Adopt(id) => {
                        info!(import_task_id = task_id, image_id = %id, "image already registered by an earlier run");
                        break id;
                    }
                    OnDuplicate::TryAnotherName if attempt + 1 < import::MAX_NAME_ATTEMPTS => {
                        attempt += 1
                    }
                    OnDuplicate::TryAnotherName => {
                        let message = format!(
                            "no free image name after {} attempts (last: {name:?})",
                            import::MAX_NAME_ATTEMPTS
                        );
                        report_failure(deps, task_id, &message, object_of(reg).as_ref(), now)
                            .await?;
                        return Ok(message);
                    }
                    OnDuplicate::Fail(message) => {
                        report_failure(deps, task_id, &message, object_of(reg).as_ref(), now)
                            .await?;
                        return Ok(message);
                    }
                    OnDuplicate::HolderNotVisible => {
                        return Err(AwsError {
                            operation: "ec2:RegisterImage",
                            resource: name,
                            kind: ErrorKind::Conflict,
                            code: e.code.clone(),
                            message: "the name is taken but no image holding it is listed yet (DescribeImages is eventually consistent); the next sweep retries".into(),
                        });
                    }
                }
            }
            Err(e) if e.kind == ErrorKind::InvalidInput => {
                let message = format!("EC2 refused to register the image: {e}");
                report_failure(deps, task_id, &message, object_of(reg).as_ref(), now).await?;
                return Ok(message);
            }
            Err(e) => return Err(e),
        }
    };
    let image = Image {
        id: image_id.clone(),
        name: reg.name.clone(),
        state: "pending".into(),
        creation_date: None,
        architecture: Some(reg.spec.architecture.as_str().into()),
        boot_mode: Some(reg.spec.boot_mode.as_str().into()),
        ena_support: Some(reg.spec.ena),
        root_device_name: Some(reg.spec.root_device.clone()),
        snapshot_ids: vec![reg.snapshot_id.clone()],
        tags: reg.tags.clone(),
        ..Image::default()
    };
    let listed = ec2::describe_own_images(
        &c.ec2,
        vec![ec2::tag_filter(lineage::IMPORT_TASK, [task_id])],
    )
    .await?;
    announce(deps, task_id, listed.first().unwrap_or(&image), now).await?;
    Ok(image_id)
}

fn object_of(reg: &Registration) -> Option<ObjectRef> {
    let uri = reg.tags.get(lineage::SOURCE_URI)?;
    let rest = uri.strip_prefix("s3://")?;
    let rest = rest.split("?versionId=").next()?;
    let (bucket, key) = rest.split_once('/')?;
    if uri.contains('…') {
        return None;
    }
    Some(ObjectRef {
        bucket: bucket.into(),
        key: key.into(),
        version_id: reg.tags.get(lineage::SOURCE_VERSION).cloned(),
    })
}

/// Sends `image.registered` and records the outcome on the task (after the message, so a
/// crash in between repeats the message rather than losing it).
async fn announce(
    deps: &Deps,
    task_id: &str,
    image: &Image,
    now: DateTime<Utc>,
) -> Result<(), AwsError> {
    let c = &deps.clients;
    let msg = Message {
        image_id: Some(image.id.clone()),
        image_name: Some(image.name.clone()),
        snapshot_ids: image.snapshot_ids.clone(),
        family: image.tags.get(lineage::FAMILY).cloned(),
        source_uri: image.tags.get(lineage::SOURCE_URI).cloned(),
        import_task_id: Some(task_id.to_owned()),
        lineage: image.tags.clone(),
        ..Message::new(EventType::ImageRegistered, now, &c.region)
    };
    notify::send(&c.sns, &deps.config.common.topic_arn, &msg).await?;
    let outcome = Tags::from([(
        lineage::OUTCOME.to_owned(),
        format!("registered:{}", image.id),
    )]);
    ec2::create_tags(&c.ec2, &[task_id], &outcome).await
}

async fn report_failure(
    deps: &Deps,
    task_id: &str,
    message: &str,
    object: Option<&ObjectRef>,
    now: DateTime<Utc>,
) -> Result<(), AwsError> {
    let c = &deps.clients;
    warn!(import_task_id = task_id, error = message, "import failed");
    if let Some(object) = object {
        tag_object(c, object, "failed", message).await?;
    }
    let msg = Message {
        source_uri: object.map(ObjectRef::uri),
        import_task_id: Some(task_id.to_owned()),
        error: Some(message.to_owned()),
        ..failed_message(deps, now)
    };
    notify::send(&c.sns, &deps.config.common.topic_arn, &msg).await?;
    ec2::create_tags(
        &c.ec2,
        &[task_id],
        &Tags::from([(lineage::OUTCOME.to_owned(), "failed".to_owned())]),
    )
    .await
}

async fn warn_stale(
    deps: &Deps,
    task_id: &str,
    age_minutes: i64,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let c = &deps.clients;
    let text = format!("import still running after {age_minutes} minutes");
    let msg = Message {
        import_task_id: Some(task_id.to_owned()),
        error: Some(text.clone()),
        ..Message::new(EventType::ImportStalled, now, &c.region)
    };
    notify::send(&c.sns, &deps.config.common.topic_arn, &msg).await?;
    let tag = Tags::from([(
        lineage::STALE_WARNED.to_owned(),
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
    )]);
    ec2::create_tags(&c.ec2, &[task_id], &tag).await?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_lists_every_problem_and_maps_defaults() {
        let env = BTreeMap::from([
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:t"),
            ("DEFAULT_ARCHITECTURE", "arm64"),
            ("DEFAULT_BOOT_MODE", "legacy-bios"),
            ("SWEEP_CONCURRENCY", "0"),
        ]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let err = Config::from_lookup(&lookup)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "invalid configuration: SWEEP_CONCURRENCY=0 is out of range 1..=32; DEFAULT_BOOT_MODE: arm64 images must boot with uefi; legacy-bios is x86_64 only"
        );
        let env = BTreeMap::from([
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:1:t"),
            ("DEFAULT_IMDS_V2", "false"),
        ]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let cfg = Config::from_lookup(&lookup).expect("valid");
        assert_eq!(
            cfg.defaults.get("imds-v2").map(String::as_str),
            Some("false")
        );
        assert_eq!(cfg.import_role_name, "vmimport");
        assert_eq!(cfg.concurrency, 4);
    }

    #[test]
    fn recognises_each_trigger() {
        let sched = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(Command::from_event(&sched).ok(), Some(Command::Sweep));
        assert_eq!(
            Command::from_event(&json!({"sweep": true})).ok(),
            Some(Command::Sweep)
        );
        let manual = json!({"bucket": "b", "key": "k.raw", "architecture": "arm64", "tpm": true, "volume-size": 8, "tags": {"team": "web"}});
        let Ok(Command::Ingest { items, .. }) = Command::from_event(&manual) else {
            panic!("manual")
        };
        assert_eq!(items[0].overrides["tpm"], "true");
        assert_eq!(items[0].overrides["volume-size"], "8");
        assert_eq!(items[0].overrides["tags"], "team=web");
    }

    #[test]
    fn bad_events_get_precise_errors() {
        let cases = [
            (
                "not json",
                "invalid event: the event is not valid JSON: expected ident at line 1 column 2",
            ),
            ("[]", "invalid event: expected a JSON object, got an array"),
            (
                "{\"bucket\": \"b\", \"arch\": \"x\"}",
                "invalid event: manual invoke: \"key\" must be a non-empty string; unknown field \"arch\"; settings are: architecture, boot-mode, ena, imds-v2, tpm, root-device, volume-size, volume-type, name, name-prefix, description, family, tags",
            ),
        ];
        for (text, want) in cases {
            let got = Command::from_json(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn removed_objects_are_ignored_with_a_reason() {
        let v = json!({"Records": [{"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "k.raw"}}}]});
        let Ok(Command::Ingest { items, ignored }) = Command::from_event(&v) else {
            panic!("parses")
        };
        assert!(items.is_empty());
        assert_eq!(
            ignored,
            ["s3://b/k.raw (ObjectRemoved:Delete): not an upload"]
        );
    }
}
