//! Transient faults on the functions' AWS calls, through the emulator's fault rules
//! (`tests/emulator/ami_emulator/faults.py`): per service two rules, a throttling and a
//! service-unavailable error as that service sends them, each failing a seeded share of the
//! requests made with a function role (`principal` "FunctionRole": the four template roles,
//! never the harness's own identity). The SDK retries them (five attempts, adaptive); what gets
//! through is what the functions must survive.

use crate::{TestAccount, http};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// (service, HTTP status, code, message): each service's own transient errors. EC2:
/// `RequestLimitExceeded` (503, https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html)
/// and `ServiceUnavailable` (503, EC2 API reference, "Server error codes"); S3: `SlowDown` and
/// `ServiceUnavailable` (503, S3 API reference, "List of error codes"); SNS: `ServiceUnavailable`
/// (503, SNS API reference, "Common errors") and Publish's own throttling error `Throttled`
/// (HTTP 429, botocore's SNS model, `ThrottledException`), which is not among the Rust SDK's
/// retryable codes (aws-runtime `THROTTLING_ERRORS`, transient statuses 500/502/503/504): it
/// reaches the functions on the first attempt, as it would on AWS; EBS direct:
/// `ThrottlingException` (400) and `InternalServerException` (500) (EBS API reference, "Errors").
const RULES: [(&str, u16, &str, &str); 8] = [
    (
        "ec2",
        503,
        "RequestLimitExceeded",
        "Request limit exceeded.",
    ),
    (
        "ec2",
        503,
        "ServiceUnavailable",
        "The request has failed due to a temporary failure of the server.",
    ),
    ("s3", 503, "SlowDown", "Please reduce your request rate."),
    (
        "s3",
        503,
        "ServiceUnavailable",
        "Service is unable to handle request.",
    ),
    (
        "sns",
        503,
        "ServiceUnavailable",
        "The request has failed due to a temporary failure of the server.",
    ),
    ("sns", 429, "Throttled", "Rate exceeded"),
    (
        "ebs",
        400,
        "ThrottlingException",
        "The request was denied due to request throttling.",
    ),
    (
        "ebs",
        500,
        "InternalServerException",
        "An internal error has occurred.",
    ),
];

/// With `--retried-only`, SNS's second rule is this retried error instead of `Throttled`
/// (`InternalError`, 500, SNS API reference, "Common errors"): every fault is then one the SDK
/// retries, and reaches a function only when all five attempts fail.
const SNS_RETRIED: (&str, u16, &str, &str) = (
    "sns",
    500,
    "InternalError",
    "We encountered an internal error. Please try again.",
);

/// Whether a function's error comes from an injected fault: its text names one of the codes
/// the rules answer with (the gateways' errors read "… failed (<code>): …").
pub fn injected(error: &str) -> bool {
    RULES
        .iter()
        .chain(std::iter::once(&SNS_RETRIED))
        .any(|(_, _, code, _)| error.contains(&format!("({code})")))
}

/// The role-name substring the rules match: every `<Function>Role` of template.yaml.
const PRINCIPAL: &str = "FunctionRole";

/// A run's fault switch and its counters.
pub struct Faults {
    endpoint: String,
    account: String,
    rate: f64,
    seed: u64,
    unretried: bool,
    on: bool,
    /// Figures of rules already cleared: (service, code) → (matched, fired).
    past: BTreeMap<(String, String), (u64, u64)>,
    generation: u64,
}

impl Faults {
    /// Faults at `rate` (the share of each service's calls that fail) for `acct`, off for now;
    /// `unretried`: SNS's `Throttled`, which the SDK does not retry, is among them.
    pub fn new(acct: &TestAccount, rate: f64, seed: u64, unretried: bool) -> Self {
        Faults {
            endpoint: acct.endpoint.clone(),
            account: acct.account_id.clone(),
            rate,
            seed,
            unretried,
            on: false,
            past: BTreeMap::new(),
            generation: 0,
        }
    }

    /// Turns the rules on (added, seeded from the run's seed) or off (their counts kept).
    pub fn set(&mut self, on: bool) {
        let on = on && self.rate > 0.0;
        if on == self.on {
            return;
        }
        if on {
            // Two rules per service, each failing q of what reaches it: 1-(1-q)^2 = rate.
            let q = 1.0 - (1.0 - self.rate).sqrt();
            let rules = RULES.iter().map(|r| {
                if r.2 == "Throttled" && !self.unretried {
                    &SNS_RETRIED
                } else {
                    r
                }
            });
            for (n, (service, status, code, message)) in rules.enumerate() {
                let seed = self
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(self.generation * 16 + n as u64)
                    % (1 << 31);
                let rule = json!({"account_id": self.account, "service": service,
                    "status": status, "code": code, "message": message,
                    "principal": PRINCIPAL, "probability": q, "seed": seed});
                let (s, body) = http(
                    &self.endpoint,
                    "POST",
                    "/ami-pipeline-emulator/faults",
                    Some(&rule),
                )
                .unwrap_or_else(|e| panic!("fault rule: {e}"));
                assert_eq!(s, 200, "fault rule refused: {body}");
            }
            self.generation += 1;
        } else {
            for ((service, code), (matched, fired)) in self.current() {
                let e = self.past.entry((service, code)).or_default();
                e.0 += matched;
                e.1 += fired;
            }
            let path = format!("/ami-pipeline-emulator/faults?account_id={}", self.account);
            let (s, body) = http(&self.endpoint, "DELETE", &path, None)
                .unwrap_or_else(|e| panic!("fault clear: {e}"));
            assert_eq!(s, 200, "fault clear refused: {body}");
        }
        self.on = on;
    }

    fn current(&self) -> BTreeMap<(String, String), (u64, u64)> {
        let path = format!("/ami-pipeline-emulator/faults?account_id={}", self.account);
        let (s, body) =
            http(&self.endpoint, "GET", &path, None).unwrap_or_else(|e| panic!("fault list: {e}"));
        assert_eq!(s, 200, "fault list refused: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut out: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for r in v["faults"].as_array().into_iter().flatten() {
            let key = (
                r["service"].as_str().unwrap_or_default().to_owned(),
                r["code"].as_str().unwrap_or_default().to_owned(),
            );
            let e = out.entry(key).or_default();
            e.0 += r["matched"].as_u64().unwrap_or(0);
            e.1 += r["fired"].as_u64().unwrap_or(0);
        }
        out
    }

    /// The functions' calls per service (the first rule of a service draws for every one)
    /// and the faults fired: service → (calls, fired).
    pub fn per_service(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((service, _), (matched, fired)) in self.figures() {
            let e = out.entry(service).or_default();
            e.0 = e.0.max(matched);
            e.1 += fired;
        }
        out
    }

    /// Requests drawn for and faults fired so far: (service, code) → (matched, fired).
    pub fn figures(&self) -> BTreeMap<(String, String), (u64, u64)> {
        let mut all = self.past.clone();
        if self.on {
            for (k, (m, f)) in self.current() {
                let e = all.entry(k).or_default();
                e.0 += m;
                e.1 += f;
            }
        }
        all
    }
}
