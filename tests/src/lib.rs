//! Test support: the local AWS emulator, one isolated AWS account per test, and helpers to
//! build real inputs (disk images made with `qemu-img`, S3 uploads, SNS→SQS subscribers).
//!
//! The emulator is `tests/emulator/serve` (moto + our fidelity extensions). When
//! `AWS_ENDPOINT_URL` is set (the README's test command starts one emulator for the whole run)
//! it is used; otherwise one is started for this test process on a free port and stopped when
//! the process ends. If it cannot start, the test **fails** with the reason — it never skips.
//! SDK clients are built through the production code path (`shared::aws::clients`).

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sts::config::Credentials;
use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::aws::clients::{self, ClientSettings, Clients};
use shared::deadline::Deadline;
use shared::invocation::InvocationError;
use shared::runner::{Function, parse_payload};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod chaos;

/// Region every test works in unless it says otherwise.
pub const REGION: &str = "us-east-1";
/// How long the emulator may take to start (a first start installs its virtualenv).
const START_TIMEOUT: Duration = Duration::from_secs(600);

static ENDPOINT: OnceLock<Result<String, String>> = OnceLock::new();

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Publish's copy targets for a publish that reaches more regions than one tag value can name
/// (24 regions besides [`REGION`] that moto 5.2.5 serves, sorted; their names joined are 285
/// characters): a subset of `shared::plan::ids::KNOWN_REGIONS`.
pub const MANY_REGIONS: [&str; 24] = [
    "af-south-1",
    "ap-east-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ca-central-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "me-south-1",
    "sa-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// The emulator's endpoint, starting one if none is configured. Panics (fails the test) with
/// the reason if it cannot be reached.
pub fn endpoint() -> String {
    let result = ENDPOINT.get_or_init(|| match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => wait_healthy(&url, Duration::from_secs(60)).map(|()| url),
        _ => start_emulator(),
    });
    match result {
        Ok(url) => url.clone(),
        Err(e) => panic!("the local AWS emulator is not available: {e}"),
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn start_emulator() -> Result<String, String> {
    let port = free_port()?;
    let serve = repo_root().join("tests/emulator/serve");
    // A watchdog shell keeps the emulator only as long as this test process lives.
    let script = format!(
        "\"{}\" --port {port} & child=$!; while kill -0 {pid} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 1; done; kill $child 2>/dev/null",
        serve.display(),
        pid = std::process::id()
    );
    let log = std::env::temp_dir().join(format!("ami-pipeline-emulator-{port}.log"));
    let file =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", serve.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url, START_TIMEOUT).map_err(|e| {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = tail
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!("{e}; emulator log {}:\n{tail}", log.display())
    })?;
    Ok(url)
}

fn wait_healthy(url: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match http(url, "GET", "/ami-pipeline-emulator/health", None) {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("health answered {status}: {body}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "no healthy emulator at {url} after {timeout:?} ({last})"
    ))
}

/// A minimal HTTP/1.1 request to the emulator's control API; returns status and body.
pub fn http(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).map_err(|e| format!("connect {hostport}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A fresh 12-digit account id, unique within this machine's test runs.
pub fn fresh_account_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0) as u64;
    let n = (nanos / 1000
        + u64::from(std::process::id()) * 7919
        + COUNTER.fetch_add(1, Ordering::SeqCst) * 104_729)
        % 900_000_000_000;
    format!("{}", 100_000_000_000 + n)
}

/// SDK configuration for STS AssumeRole credentials of `role` in `account_id` (the emulator
/// puts the returned keys in that account, and its IAM gate evaluates the role's policies).
pub async fn assume_role(endpoint: &str, account_id: &str, role: &str) -> aws_config::SdkConfig {
    let base = clients::sdk_config(ClientSettings {
        region: Some(REGION.into()),
        endpoint_url: Some(endpoint.to_owned()),
        credentials: Some(Credentials::new("testing", "testing", None, None, "tests")),
    })
    .await;
    let sts = aws_sdk_sts::Client::new(&base);
    let assumed = sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account_id}:role/{role}"))
        .role_session_name("test")
        .send()
        .await
        .unwrap_or_else(|e| panic!("sts:AssumeRole into {account_id} as {role} failed: {e:?}"));
    let c = assumed
        .credentials()
        .unwrap_or_else(|| panic!("AssumeRole returned no credentials"));
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "assumed",
    );
    clients::sdk_config(ClientSettings {
        region: Some(REGION.into()),
        endpoint_url: Some(endpoint.to_owned()),
        credentials: Some(creds),
    })
    .await
}

/// The functions' IAM roles as `template.yaml` defines them (the emulator enforces them).
pub mod roles {
    use saphyr::{LoadableYamlNode, YamlOwned};
    use serde_json::{Map, Value, json};
    use std::sync::OnceLock;

    /// A function of the pipeline, as template.yaml names it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Function {
        /// functions/create-image
        CreateImage,
        /// functions/tag-lineage
        TagLineage,
        /// functions/publish
        Publish,
        /// functions/cleanup
        Cleanup,
    }

    impl Function {
        /// Every function.
        pub const ALL: [Function; 4] = [
            Function::CreateImage,
            Function::TagLineage,
            Function::Publish,
            Function::Cleanup,
        ];

        /// The function's logical id in template.yaml.
        pub fn logical_id(self) -> &'static str {
            match self {
                Function::CreateImage => "CreateImageFunction",
                Function::TagLineage => "TagLineageFunction",
                Function::Publish => "PublishFunction",
                Function::Cleanup => "CleanupFunction",
            }
        }

        /// The role SAM generates for it (logical id `<Function>Role`).
        pub fn role_name(self) -> String {
            format!("{}Role", self.logical_id())
        }

        /// The function whose crate is `functions/<dir>`.
        pub fn from_dir(dir: &str) -> Option<Function> {
            Some(match dir {
                "create-image" => Function::CreateImage,
                "tag-lineage" => Function::TagLineage,
                "publish" => Function::Publish,
                "cleanup" => Function::Cleanup,
                _ => return None,
            })
        }
    }

    /// template.yaml, parsed once. saphyr (YAML 1.2, pure Rust) keeps CloudFormation's short-form
    /// tags (`!Ref`, `!Sub`, ...) as [`YamlOwned::Tagged`] nodes and refuses duplicate keys.
    pub fn template() -> &'static YamlOwned {
        static T: OnceLock<YamlOwned> = OnceLock::new();
        T.get_or_init(|| {
            let path = super::repo_root().join("template.yaml");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let mut docs = YamlOwned::load_from_str(&text)
                .unwrap_or_else(|e| panic!("template.yaml is not YAML: {e}"));
            assert_eq!(
                docs.len(),
                1,
                "template.yaml must hold exactly one YAML document"
            );
            docs.remove(0)
        })
    }

    /// The node at `path` (mapping keys, outermost first) under `node`, if every step is a
    /// mapping holding the key.
    pub fn yaml_at<'a>(node: &'a YamlOwned, path: &[&str]) -> Option<&'a YamlOwned> {
        path.iter()
            .try_fold(node, |node, key| node.as_mapping_get(key))
    }

    /// The template parameters a function environment implies: each variable the template
    /// sets to `!Ref <Parameter>` gives that parameter the value `env` has for the variable.
    pub fn parameters(
        function: Function,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Map<String, Value> {
        let vars = yaml_at(
            template(),
            &[
                "Resources",
                function.logical_id(),
                "Properties",
                "Environment",
                "Variables",
            ],
        );
        let parameters = yaml_at(template(), &["Parameters"]);
        let mut out = Map::new();
        for (name, value) in vars.and_then(YamlOwned::as_mapping).into_iter().flatten() {
            let (Some(name), YamlOwned::Tagged(tag, param)) = (name.as_str(), value) else {
                continue;
            };
            if (tag.handle.as_str(), tag.suffix.as_str()) != ("!", "Ref") {
                continue;
            }
            if let (Some(param), Some(v)) = (param.as_str(), env(name))
                && parameters.and_then(|p| p.as_mapping_get(param)).is_some()
            {
                out.insert(param.to_owned(), Value::String(v));
            }
        }
        out
    }

    /// The state bucket of a test account (the template's `StateBucket`), for `STATE_BUCKET`.
    pub fn state_bucket_name(account_id: &str) -> String {
        format!("ami-pipeline-state-{account_id}")
    }

    /// The template's resources as they exist in a test account: the uploads bucket, the
    /// topic, a dead-letter queue and the VM Import role.
    pub fn resources(account_id: &str, bucket: &str, topic_arn: &str) -> Value {
        json!({
            "UploadsBucket": {"Ref": bucket},
            "Topic": {"Ref": topic_arn},
            "DeadLetterQueue": {
                "Ref": format!("https://sqs.{}.amazonaws.com/{account_id}/ami-pipeline-dlq", super::REGION),
                "Arn": format!("arn:aws:sqs:{}:{account_id}:ami-pipeline-dlq", super::REGION),
            },
            "ImportRole": {"Ref": "vmimport"},
            "StateBucket": {"Ref": state_bucket_name(account_id)},
        })
    }
}

/// One test's own AWS account on the emulator, with clients built by the production code.
pub struct TestAccount {
    /// The emulator endpoint.
    pub endpoint: String,
    /// The account id.
    pub account_id: String,
    /// Clients for [`REGION`].
    pub clients: Clients,
    /// SQS, for subscribing to the topic.
    pub sqs: aws_sdk_sqs::Client,
    /// Loaded SDK config (for other clients / regions).
    pub sdk: aws_config::SdkConfig,
}

impl TestAccount {
    /// Assumes a role into a fresh account and builds the clients.
    pub async fn new() -> Self {
        Self::for_account(fresh_account_id()).await
    }

    /// Assumes a role into `account_id` (e.g. one a parent process set up) and builds the clients.
    /// This identity has no IAM policies in the emulator, so it may do anything: it is the test
    /// set-up's identity. The functions under test run as their template roles
    /// ([`TestAccount::clients_as`]).
    pub async fn for_account(account_id: String) -> Self {
        let endpoint = endpoint();
        let sdk = assume_role(&endpoint, &account_id, "ami-pipeline-test").await;
        let clients = Clients::new(&sdk, true);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        TestAccount {
            endpoint,
            account_id,
            clients,
            sqs,
            sdk,
        }
    }

    /// Clients acting as `function`'s IAM role: the emulator is given the policies that
    /// `template.yaml` grants that role in this account (rendered with the template parameters
    /// that `env` — the function's environment — implies, this account's uploads bucket
    /// `uploads-<account>` and the topic in `TOPIC_ARN`), and every call these clients make is
    /// authorized against them, as on AWS.
    pub async fn clients_as(
        &self,
        function: roles::Function,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Clients {
        let bucket = format!("uploads-{}", self.account_id);
        self.clients_as_with_bucket(function, env, &bucket).await
    }

    /// [`TestAccount::clients_as`] with another uploads bucket (the template's `UploadsBucket`).
    pub async fn clients_as_with_bucket(
        &self,
        function: roles::Function,
        env: &dyn Fn(&str) -> Option<String>,
        bucket: &str,
    ) -> Clients {
        Clients::new(&self.sdk_as(function, env, bucket).await, true)
    }

    /// The SDK configuration of `function`'s role (see [`TestAccount::clients_as`]).
    pub async fn sdk_as(
        &self,
        function: roles::Function,
        env: &dyn Fn(&str) -> Option<String>,
        bucket: &str,
    ) -> aws_config::SdkConfig {
        let parameters = roles::parameters(function, env);
        let topic = env("TOPIC_ARN")
            .unwrap_or_else(|| format!("arn:aws:sns:{REGION}:{}:ami-pipeline", self.account_id));
        let body = serde_json::json!({
            "region": REGION,
            "template_path": repo_root().join("template.yaml").to_string_lossy(),
            "parameters": parameters,
            "resources": roles::resources(&self.account_id, bucket, &topic),
        });
        self.control(
            "POST",
            "/ami-pipeline-emulator/iam/template-roles",
            Some(body),
        );
        assume_role(&self.endpoint, &self.account_id, &function.role_name()).await
    }

    /// Invokes function `F` once, the way the Lambda runtime does: its dependencies built from
    /// `env` under its template role ([`deps_as`]), then the event's JSON text through
    /// [`invoke_text`].
    pub async fn invoke<F: UnderTest>(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        bucket: &str,
        event_text: &str,
    ) -> Result<F::Output, InvocationError> {
        let deps: F = deps_as(self, env, bucket).await?;
        invoke_text(&deps, event_text, chrono::Utc::now()).await
    }

    /// Sets this account's emulator config (e.g. `{"import_delay_seconds": 0}`).
    pub fn emulator_config(&self, settings: Value) {
        let mut body = settings;
        body["account_id"] = Value::String(self.account_id.clone());
        let (status, text) = http(
            &self.endpoint,
            "POST",
            "/ami-pipeline-emulator/config",
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("emulator config call failed: {e}"));
        assert_eq!(status, 200, "emulator config answered {status}: {text}");
    }

    /// The emulator's request counts for this account since the last [`TestAccount::reset_requests`]
    /// (`{"ec2:DeregisterImage": n, …}`; an action not called is absent).
    pub fn requests(&self) -> Value {
        self.control("GET", &self.requests_path(), None)["requests"].clone()
    }

    /// Sets this account's request counts back to nothing.
    pub fn reset_requests(&self) {
        self.control("DELETE", &self.requests_path(), None);
    }

    /// The emulator's request counter of this account.
    fn requests_path(&self) -> String {
        format!(
            "/ami-pipeline-emulator/requests?account_id={}",
            self.account_id
        )
    }

    /// Calls one of the emulator's control endpoints for this account (`account_id` is added to
    /// the body); returns the answer as JSON.
    pub fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|mut b| {
            b["account_id"] = Value::String(self.account_id.clone());
            b
        });
        let (status, text) = http(&self.endpoint, method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("control call {path} failed: {e}"));
        assert!(
            (200..300).contains(&status),
            "control call {path} answered {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Backdates an image's CreationDate (emulator control endpoint).
    pub fn backdate_image(
        &self,
        region: &str,
        image_id: &str,
        when: chrono::DateTime<chrono::Utc>,
    ) {
        self.control(
            "POST",
            "/ami-pipeline-emulator/image-creation-date",
            Some(serde_json::json!({"region": region, "image_id": image_id,
                "creation_date": when.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})),
        );
    }

    /// Adds a fault rule for this account (see tests/emulator/README.md).
    pub fn inject_fault(&self, rule: Value) {
        let mut body = rule;
        body["account_id"] = Value::String(self.account_id.clone());
        let (status, text) = http(
            &self.endpoint,
            "POST",
            "/ami-pipeline-emulator/faults",
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("fault call failed: {e}"));
        assert!(
            (200..300).contains(&status),
            "fault call answered {status}: {text}"
        );
    }

    /// Removes this account's fault rules.
    pub fn clear_faults(&self) {
        let path = format!(
            "/ami-pipeline-emulator/faults?account_id={}",
            self.account_id
        );
        let (status, text) = http(&self.endpoint, "DELETE", &path, None)
            .unwrap_or_else(|e| panic!("fault call failed: {e}"));
        assert!(
            (200..300).contains(&status),
            "fault clear answered {status}: {text}"
        );
    }

    /// Creates a bucket (optionally versioned).
    pub async fn bucket(&self, name: &str, versioned: bool) {
        let s3 = &self.clients.s3;
        s3.create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
        if versioned {
            s3.put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .unwrap_or_else(|e| panic!("enable versioning on {name}: {e:?}"));
        }
    }

    /// The keys under `prefix` in `bucket` (one page, up to 1,000: the tests' buckets are small).
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self
            .clients
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list {bucket}/{prefix}: {e:?}"));
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// Uploads `body` with user metadata; returns (etag, version id).
    ///
    /// A large fixture (a GiB disk) gets minutes per attempt instead of the functions' 30 s:
    /// the emulator is one Python process that the other tests of the binary use at the same
    /// time, and the set-up upload is not what any test measures.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, &str)],
    ) -> (String, Option<String>) {
        const LARGE: usize = 64 << 20;
        let large = body.len() > LARGE;
        let mut req = self
            .clients
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into());
        for (k, v) in metadata {
            req = req.metadata(*k, *v);
        }
        let out = if large {
            req.customize()
                .config_override(
                    aws_sdk_s3::config::Builder::default().timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(Duration::from_secs(300))
                            .operation_timeout(Duration::from_secs(600))
                            .build(),
                    ),
                )
                .send()
                .await
        } else {
            req.send().await
        };
        let out = out.unwrap_or_else(|e| panic!("put s3://{bucket}/{key}: {e:?}"));
        (
            out.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
            out.version_id().map(str::to_owned),
        )
    }

    /// Creates the pipeline topic and an SQS queue subscribed to it (raw delivery); returns
    /// (topic ARN, queue URL).
    pub async fn topic_with_queue(&self, name: &str) -> (String, String) {
        let topic = self
            .clients
            .sns
            .create_topic()
            .name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create topic: {e:?}"));
        let topic_arn = topic.topic_arn().unwrap_or_default().to_owned();
        let q = self
            .sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create queue: {e:?}"));
        let queue_url = q.queue_url().unwrap_or_default().to_owned();
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("queue attributes: {e:?}"));
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default();
        self.clients
            .sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .unwrap_or_else(|e| panic!("subscribe: {e:?}"));
        (topic_arn, queue_url)
    }

    /// Every message waiting on the queue, parsed as JSON, with its `event_type` attribute
    /// checked against the body.
    pub async fn drain(&self, queue_url: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap_or_else(|e| panic!("receive: {e:?}"));
            let msgs = out.messages();
            if msgs.is_empty() {
                return all;
            }
            for m in msgs {
                let body: Value = serde_json::from_str(m.body().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("message is not JSON ({e}): {:?}", m.body()));
                let attr = m
                    .message_attributes()
                    .and_then(|a| a.get("event_type"))
                    .and_then(|v| v.string_value());
                assert_eq!(
                    attr,
                    body["event_type"].as_str(),
                    "event_type attribute must match the body"
                );
                all.push(body);
                if let Some(h) = m.receipt_handle() {
                    let _ = self
                        .sqs
                        .delete_message()
                        .queue_url(queue_url)
                        .receipt_handle(h)
                        .send()
                        .await;
                }
            }
        }
    }
}

/// A pipeline function under test: its dependencies (`Deps`) and the template role it runs as.
pub trait UnderTest: Function {
    /// The function, as template.yaml names it.
    const ROLE: roles::Function;
}

impl UnderTest for create_image::Deps {
    const ROLE: roles::Function = roles::Function::CreateImage;
}
impl UnderTest for tag_lineage::Deps {
    const ROLE: roles::Function = roles::Function::TagLineage;
}
impl UnderTest for publish::Deps {
    const ROLE: roles::Function = roles::Function::Publish;
}
impl UnderTest for cleanup::Deps {
    const ROLE: roles::Function = roles::Function::Cleanup;
}

/// The invocation deadline every test gives a function (Lambda's maximum, 15 minutes).
pub fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(900))
}

/// `F`'s dependencies as the runtime builds them (`Function::from_env` over `env`), acting as
/// `F`'s template role in `acct` with `bucket` as the template's uploads bucket. Fails as the
/// runtime's start would when the configuration is invalid.
pub async fn deps_as<F: UnderTest>(
    acct: &TestAccount,
    env: &dyn Fn(&str) -> Option<String>,
    bucket: &str,
) -> Result<F, InvocationError> {
    let sdk = acct.sdk_as(F::ROLE, env, bucket).await;
    F::from_env(env, &sdk)
}

/// The one invoke helper: the event's JSON text parsed by `shared::runner::parse_payload`, then
/// `Function::invoke` at `now` — what `shared::runner::run` does with each Lambda payload.
pub async fn invoke_text<F: Function>(
    deps: &F,
    event_text: &str,
    now: DateTime<Utc>,
) -> Result<F::Output, InvocationError> {
    let event = parse_payload(event_text)?;
    deps.invoke(&event, now, deadline()).await
}

/// [`invoke_text`] for an event given as JSON.
pub async fn invoke<F: Function>(
    deps: &F,
    event: &Value,
    now: DateTime<Utc>,
) -> Result<F::Output, InvocationError> {
    invoke_text(deps, &event.to_string(), now).await
}

/// One test's world for function `F`: a fresh account, the pipeline topic with an SQS queue
/// subscribed to it, and `F`'s dependencies built by the runtime's code (`Function::from_env`)
/// under `F`'s template role. Each test file adds its own helpers through an extension trait.
pub struct World<F: UnderTest> {
    /// The test's account (its clients act as the set-up identity, not as `F`).
    pub acct: TestAccount,
    /// The pipeline topic (`TOPIC_ARN`).
    pub topic: String,
    /// The SQS queue subscribed to the topic (raw delivery).
    pub queue: String,
    /// The uploads bucket the function's role is granted (`uploads-<account>` unless told).
    pub bucket: String,
    /// The function's dependencies, as the runtime builds them.
    pub deps: F,
}

impl<F: UnderTest> World<F> {
    /// A world in a fresh account, `F` configured with `env` plus `TOPIC_ARN` (the world's
    /// topic) and `S3_FORCE_PATH_STYLE=true` unless `env` sets it.
    pub async fn new(env: &[(&str, &str)]) -> Self {
        Self::in_account(TestAccount::new().await, env).await
    }

    /// [`World::new`] with the template's state bucket created and `STATE_BUCKET` set: the
    /// function claims its announcements (shared::claim).
    pub async fn with_claims(env: &[(&str, &str)]) -> Self {
        let acct = TestAccount::new().await;
        let state = roles::state_bucket_name(&acct.account_id);
        acct.bucket(&state, false).await;
        let mut vars = env.to_vec();
        vars.push(("STATE_BUCKET", state.as_str()));
        Self::in_account(acct, &vars).await
    }

    /// [`World::new`] in `acct` (set up beforehand, e.g. its emulator config), with the
    /// uploads bucket `uploads-<account>`.
    pub async fn in_account(acct: TestAccount, env: &[(&str, &str)]) -> Self {
        let bucket = format!("uploads-{}", acct.account_id);
        Self::with_bucket(acct, env, bucket).await
    }

    /// [`World::in_account`] with another uploads bucket (the template's `UploadsBucket`).
    pub async fn with_bucket(acct: TestAccount, env: &[(&str, &str)], bucket: String) -> Self {
        let (topic, queue) = acct.topic_with_queue("ami-pipeline").await;
        let mut vars: BTreeMap<String, String> =
            BTreeMap::from([("S3_FORCE_PATH_STYLE".to_owned(), "true".to_owned())]);
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        vars.insert("TOPIC_ARN".to_owned(), topic.clone());
        let deps = deps_as::<F>(&acct, &|k| vars.get(k).cloned(), &bucket)
            .await
            .unwrap_or_else(|e| panic!("{:?} configuration: {e}", F::ROLE));
        World {
            acct,
            topic,
            queue,
            bucket,
            deps,
        }
    }

    /// Invokes the function with `event` as the runtime would, at the current time.
    pub async fn invoke(&self, event: &Value) -> Result<F::Output, InvocationError> {
        invoke(&self.deps, event, Utc::now()).await
    }

    /// [`World::invoke`] with the clock at `now`.
    pub async fn invoke_at(
        &self,
        event: &Value,
        now: DateTime<Utc>,
    ) -> Result<F::Output, InvocationError> {
        invoke(&self.deps, event, now).await
    }

    /// [`World::invoke`] with the event as JSON text (as Lambda hands it over).
    pub async fn invoke_text(&self, event_text: &str) -> Result<F::Output, InvocationError> {
        invoke_text(&self.deps, event_text, Utc::now()).await
    }

    /// EC2 in `region`, as the set-up identity.
    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        self.acct.clients.for_region(region).ec2
    }
}

/// Real disk images, made with the tools a platform team uses.
pub mod disks {
    use std::path::Path;
    use std::process::Command;

    /// A raw disk of `mib` MiB with an MBR partition table and one Linux partition.
    pub fn raw_disk(mib: u64) -> Vec<u8> {
        let mut disk = vec![0u8; (mib * 1024 * 1024) as usize];
        // MBR partition entry 1: type 0x83 (Linux), LBA start 2048, rest of the disk.
        let start: u32 = 2048;
        let sectors = (mib * 2048) as u32 - start;
        let e = 446;
        disk[e + 4] = 0x83;
        disk[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        disk[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk
    }

    /// An empty stream-optimized VMDK of `gib` GiB virtual size (a few KiB on disk), made with
    /// `qemu-img create`: for tests about sizes without gigabytes of data.
    pub fn empty_vmdk(gib: u64) -> Vec<u8> {
        qemu_img(|dir| {
            let dst = dir.join("disk.out");
            let mut cmd = Command::new("qemu-img");
            cmd.args(["create", "-f", "vmdk", "-o", "subformat=streamOptimized"])
                .arg(&dst)
                .arg(format!("{gib}G"));
            cmd
        })
    }

    /// Runs the `qemu-img` command `build` makes in a fresh directory and returns the bytes it
    /// wrote to `disk.out` there; fails the test with the tool's message if it is missing or
    /// fails.
    fn qemu_img(build: impl FnOnce(&Path) -> Command) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!(
            "ami-pipeline-disk-{}-{}",
            std::process::id(),
            super::fresh_account_id()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut cmd = build(&dir);
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("qemu-img is required to build test disks (apt-get install qemu-utils): {e}")
        });
        assert!(
            out.status.success(),
            "qemu-img failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dst = dir.join("disk.out");
        let bytes = std::fs::read(&dst).unwrap_or_else(|e| panic!("read {}: {e}", dst.display()));
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    }

    /// Converts a raw disk with `qemu-img convert -O <format>` (`vmdk` stream-optimized,
    /// `vmdk-monolithic` a hosted monolithicSparse VMDK, `vpc` fixed VHD, `vpc-dynamic` dynamic
    /// VHD); fails the test with
    /// the tool's message if `qemu-img` is missing or fails.
    pub fn convert(raw: &[u8], format: &str) -> Vec<u8> {
        qemu_img(|dir| {
            let src = dir.join("disk.raw");
            std::fs::write(&src, raw).unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
            let (output_format, options) = match format {
                "vmdk" => ("vmdk", Some("subformat=streamOptimized")),
                "vmdk-monolithic" => ("vmdk", Some("subformat=monolithicSparse")),
                "vpc" => ("vpc", Some("subformat=fixed,force_size=on")),
                "vpc-dynamic" => ("vpc", Some("subformat=dynamic,force_size=on")),
                other => (other, None),
            };
            let mut cmd = Command::new("qemu-img");
            cmd.args(["convert", "-f", "raw", "-O", output_format]);
            if let Some(o) = options {
                cmd.args(["-o", o]);
            }
            cmd.arg(&src).arg(dir.join("disk.out"));
            cmd
        })
    }
}

/// EC2 fixtures made with plain SDK calls, the way a user's own tooling would make them.
pub mod fixtures {
    use aws_sdk_ec2::Client;
    use aws_sdk_ec2::types::{
        BlockDeviceMapping, EbsBlockDevice, InstanceType, ResourceType, Tag, TagSpecification,
    };
    use serde_json::{Value, json};

    fn tag_specs(resource: ResourceType, tags: &[(&str, &str)]) -> Option<TagSpecification> {
        (!tags.is_empty()).then(|| {
            TagSpecification::builder()
                .resource_type(resource)
                .set_tags(Some(
                    tags.iter()
                        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                        .collect(),
                ))
                .build()
        })
    }

    /// ModifyImageAttribute: adds `all` to the image's launch permissions (public), returning
    /// EC2's answer so a test can expect a refusal.
    pub async fn make_public(
        ec2: &Client,
        image: &str,
    ) -> Result<
        aws_sdk_ec2::operation::modify_image_attribute::ModifyImageAttributeOutput,
        aws_sdk_ec2::error::SdkError<
            aws_sdk_ec2::operation::modify_image_attribute::ModifyImageAttributeError,
        >,
    > {
        set_public(ec2, image, true).await
    }

    /// Adds (`public`) or removes the launch permission `all` of `image`.
    pub async fn set_public(
        ec2: &Client,
        image: &str,
        public: bool,
    ) -> Result<
        aws_sdk_ec2::operation::modify_image_attribute::ModifyImageAttributeOutput,
        aws_sdk_ec2::error::SdkError<
            aws_sdk_ec2::operation::modify_image_attribute::ModifyImageAttributeError,
        >,
    > {
        use aws_sdk_ec2::types::{
            LaunchPermission, LaunchPermissionModifications, PermissionGroup,
        };
        let all = vec![
            LaunchPermission::builder()
                .group(PermissionGroup::All)
                .build(),
        ];
        let change = if public {
            LaunchPermissionModifications::builder().set_add(Some(all))
        } else {
            LaunchPermissionModifications::builder().set_remove(Some(all))
        };
        ec2.modify_image_attribute()
            .image_id(image)
            .launch_permission(change.build())
            .send()
            .await
    }

    /// A 1 GiB snapshot (CreateVolume + CreateSnapshot), tagged at creation.
    pub async fn snapshot(ec2: &Client, tags: &[(&str, &str)]) -> String {
        volume_snapshot(ec2, tags, false).await
    }

    /// [`snapshot`] of an encrypted volume: encrypted with the account's default EBS key (the
    /// AWS managed `aws/ebs` unless the account changed it).
    pub async fn encrypted_snapshot(ec2: &Client, tags: &[(&str, &str)]) -> String {
        volume_snapshot(ec2, tags, true).await
    }

    async fn volume_snapshot(ec2: &Client, tags: &[(&str, &str)], encrypted: bool) -> String {
        let region = ec2
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| super::REGION.to_owned());
        let vol = ec2
            .create_volume()
            .availability_zone(format!("{region}a"))
            .size(1)
            .encrypted(encrypted)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create volume: {e:?}"));
        let snap = ec2
            .create_snapshot()
            .volume_id(vol.volume_id().unwrap_or_default())
            .set_tag_specifications(tag_specs(ResourceType::Snapshot, tags).map(|t| vec![t]))
            .send()
            .await
            .unwrap_or_else(|e| panic!("create snapshot: {e:?}"));
        snap.snapshot_id().unwrap_or_default().to_owned()
    }

    /// RegisterImage from `snapshot`, tagged at creation; returns the image id.
    pub async fn register(
        ec2: &Client,
        name: &str,
        snapshot: &str,
        tags: &[(&str, &str)],
    ) -> String {
        let out = ec2
            .register_image()
            .name(name)
            .architecture("x86_64".into())
            .virtualization_type("hvm")
            .root_device_name("/dev/xvda")
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(EbsBlockDevice::builder().snapshot_id(snapshot).build())
                    .build(),
            )
            .set_tag_specifications(tag_specs(ResourceType::Image, tags).map(|t| vec![t]))
            .send()
            .await
            .unwrap_or_else(|e| panic!("register {name}: {e:?}"));
        out.image_id().unwrap_or_default().to_owned()
    }

    /// A new snapshot and an image registered from it, both tagged; returns (image, snapshot).
    pub async fn image(ec2: &Client, name: &str, tags: &[(&str, &str)]) -> (String, String) {
        let snap = snapshot(ec2, tags).await;
        (register(ec2, name, &snap, tags).await, snap)
    }

    /// CopyImage into `to` (with CopyImageTags); returns the copy's id.
    pub async fn copy(to: &Client, source: &str, source_region: &str, name: &str) -> String {
        let out = to
            .copy_image()
            .source_image_id(source)
            .source_region(source_region)
            .name(name)
            .copy_image_tags(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("copy {source}: {e:?}"));
        out.image_id().unwrap_or_default().to_owned()
    }

    /// Launches an instance from `image`; returns its id.
    pub async fn instance(ec2: &Client, image: &str) -> String {
        let out = ec2
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .unwrap_or_else(|e| panic!("run instance of {image}: {e:?}"));
        out.instances()
            .first()
            .and_then(|i| i.instance_id())
            .unwrap_or_default()
            .to_owned()
    }

    /// CreateImage from an instance; returns the image id.
    pub async fn image_from_instance(ec2: &Client, instance: &str, name: &str) -> String {
        let out = ec2
            .create_image()
            .instance_id(instance)
            .name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create image from {instance}: {e:?}"));
        out.image_id().unwrap_or_default().to_owned()
    }

    /// The tags of an image or snapshot, as a JSON object.
    pub async fn tags_of(ec2: &Client, resource: &str) -> Value {
        let out = ec2
            .describe_tags()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("resource-id")
                    .values(resource)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe tags of {resource}: {e:?}"));
        let mut m = serde_json::Map::new();
        for t in out.tags() {
            m.insert(
                t.key().unwrap_or_default().to_owned(),
                json!(t.value().unwrap_or_default()),
            );
        }
        Value::Object(m)
    }
}

/// Sample events as AWS delivers them.
pub mod aws_events {
    use serde_json::{Value, json};

    /// EventBridge "EC2 AMI State Change" (shape from the EC2 user guide, "Monitor AMI events").
    pub fn ami_state_change(region: &str, image_id: &str, state: &str, error: &str) -> Value {
        json!({
            "version": "0",
            "id": "7c0dbc04-89f8-4a43-8c87-0e5c23e7e6b2",
            "detail-type": "EC2 AMI State Change",
            "source": "aws.ec2",
            "account": "123456789012",
            "time": "2026-11-22T12:00:00Z",
            "region": region,
            "resources": [format!("arn:aws:ec2:{region}::image/{image_id}")],
            "detail": {"RequestId": "2bd8a9b8-1b2f-4a7a-9d3e-3e1f0f5a1c11", "ImageId": image_id, "State": state, "ErrorMessage": error}
        })
    }

    /// The SNS → Lambda event carrying `message` (a pipeline message body).
    pub fn sns(topic_arn: &str, message: &Value) -> Value {
        json!({"Records": [{
            "EventSource": "aws:sns", "EventVersion": "1.0",
            "EventSubscriptionArn": format!("{topic_arn}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"),
            "Sns": {
                "Type": "Notification", "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
                "TopicArn": topic_arn, "Subject": "ami-pipeline",
                "Message": message.to_string(), "Timestamp": "2026-11-22T12:00:00.000Z",
                "SignatureVersion": "1", "Signature": "EXAMPLE",
                "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
                "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
                "MessageAttributes": {"event_type": {"Type": "String", "Value": message["event_type"]}}
            }
        }]})
    }
}
