//! AWS client construction.
//!
//! One path for production and tests: `aws_config::defaults(BehaviorVersion::latest())`, which
//! honours the standard environment (`AWS_REGION`, credentials, and `AWS_ENDPOINT_URL` for a
//! local emulator). [`ClientSettings`] can pin a region, endpoint or credentials explicitly
//! (used by the tests to give each test its own account), never a different code path.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;
use std::time::Duration;

/// Attempts per call, first try included. Throttling and 5xx are retried with backoff by the
/// SDK's adaptive strategy (the standard one plus a client-side rate limiter that slows down
/// after throttling); the sweep itself is the outer retry (next schedule).
pub const MAX_ATTEMPTS: u32 = 5;
/// Connect timeout: a dead endpoint should fail fast, not eat the Lambda's budget.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per attempt: no single EC2/S3/SNS call here should take longer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Per operation, retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(90);

/// Explicit overrides of the standard environment; all `None` in production.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// Region (else the environment's).
    pub region: Option<String>,
    /// Endpoint (else `AWS_ENDPOINT_URL` or the real AWS endpoints).
    pub endpoint_url: Option<String>,
    /// Credentials (else the default chain).
    pub credentials: Option<Credentials>,
}

/// Loads the shared SDK configuration with the pipeline's retry and timeout policy.
pub async fn sdk_config(settings: ClientSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if let Some(region) = settings.region {
        loader = loader.region(Region::new(region));
    }
    if let Some(url) = settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(creds) = settings.credentials {
        loader = loader.credentials_provider(creds);
    }
    loader.load().await
}

/// The clients one region needs.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The region these clients talk to.
    pub region: String,
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// S3.
    pub s3: aws_sdk_s3::Client,
    /// SNS.
    pub sns: aws_sdk_sns::Client,
    /// EBS direct APIs (create-image's fast path).
    pub ebs: aws_sdk_ebs::Client,
    config: SdkConfig,
    s3_force_path_style: bool,
}

impl Clients {
    /// Builds the clients from a loaded configuration.
    pub fn new(config: &SdkConfig, s3_force_path_style: bool) -> Self {
        let s3_conf = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(s3_force_path_style)
            .build();
        Clients {
            region: config.region().map(|r| r.to_string()).unwrap_or_default(),
            ec2: aws_sdk_ec2::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            sns: aws_sdk_sns::Client::new(config),
            ebs: aws_sdk_ebs::Client::new(config),
            config: config.clone(),
            s3_force_path_style,
        }
    }

    /// The same clients for another region (same credentials, endpoint and policy).
    pub fn for_region(&self, region: &str) -> Self {
        let config = self
            .config
            .to_builder()
            .region(Region::new(region.to_owned()))
            .build();
        Clients::new(&config, self.s3_force_path_style)
    }
}

/// The clients of every region a run works in, each built once (building one reads the
/// configuration and creates three SDK clients; a run over 10,000 images must not do that per
/// image).
#[derive(Debug, Clone)]
pub struct RegionalClients {
    home: Clients,
    others: std::collections::BTreeMap<String, Clients>,
}

impl RegionalClients {
    /// The home clients and one set per other region in `regions`.
    pub fn new<'a>(home: &Clients, regions: impl IntoIterator<Item = &'a str>) -> Self {
        let others = regions
            .into_iter()
            .filter(|r| *r != home.region)
            .map(|r| (r.to_owned(), home.for_region(r)))
            .collect();
        RegionalClients {
            home: home.clone(),
            others,
        }
    }

    /// The clients of `region` (built now, once more, only for a region not named up front).
    pub fn get(&self, region: &str) -> std::borrow::Cow<'_, Clients> {
        if region == self.home.region {
            return std::borrow::Cow::Borrowed(&self.home);
        }
        match self.others.get(region) {
            Some(c) => std::borrow::Cow::Borrowed(c),
            None => std::borrow::Cow::Owned(self.home.for_region(region)),
        }
    }
}
