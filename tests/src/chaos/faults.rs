//! Faults on the functions' AWS calls, through the emulator's fault rules
//! (`tests/emulator/ami_emulator/faults.py`), each failing a seeded share of the requests made
//! with a function role (`principal` "FunctionRole": the four template roles, never the
//! harness's own identity):
//! - transient faults (`--fault-rate`): per service two rules, a throttling and a
//!   service-unavailable error as that service sends them, answered before the call reaches
//!   the service (no side effect). The SDK retries them (five attempts, adaptive); what gets
//!   through is what the functions must survive;
//! - crashes (`--crash-rate`): per service one rule with `after: true` (the call takes effect,
//!   then the answer is replaced) and an error the SDK does not retry: the function sees a
//!   failure of a call that happened, and stops that step; Lambda's async retry redelivers;
//! - lost responses (`--lost-rate`): per service one rule with `after: true` and a 500 the SDK
//!   retries, so it repeats a call that already took effect.

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

/// The crash's error code and message (`--crash-rate`).
pub const CRASH_CODE: &str = "InvocationCrashed";
const CRASH_MESSAGE: &str = "the call took effect; the invocation stops here (chaos harness)";
/// The crash's HTTP status: 499, nginx's "client closed request" (the caller went away before
/// the answer). Not among the statuses the SDK retries (aws-smithy-runtime
/// `TRANSIENT_ERROR_STATUS_CODES`: 500, 502, 503, 504), nor the code among its throttling or
/// transient codes (aws-runtime `THROTTLING_ERRORS`, `TRANSIENT_ERRORS`), so the function sees
/// it on the first attempt; and not 400, which `shared::error::classify` reads as a request
/// refused as invalid (`InvalidInput`, e.g. create-image reports a refused RegisterImage) where
/// a crash is none of the function's doing (`Other`: the invocation fails and is retried).
pub const CRASH_STATUS: u16 = 499;

/// The services the functions call, and each one's retried server error for a lost response
/// (`--lost-rate`): EC2 `InternalError` (500, EC2 API reference, "Server error codes"), S3
/// `InternalError` (500, S3 API reference, "List of error codes"), SNS `InternalError` (500, SNS
/// API reference, "Common errors"), EBS direct `InternalServerException` (500, EBS API
/// reference, "Errors").
const LOST: [(&str, u16, &str, &str); 4] = [
    (
        "ec2",
        500,
        "InternalError",
        "An internal error has occurred.",
    ),
    (
        "s3",
        500,
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    (
        "sns",
        500,
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    (
        "ebs",
        500,
        "InternalServerException",
        "An internal error has occurred.",
    ),
];

/// Whether a function's error comes from an injected fault: its text names one of the codes
/// the rules answer with (the gateways' errors read "… failed (<code>): …").
pub fn injected(error: &str) -> bool {
    RULES
        .iter()
        .chain(std::iter::once(&SNS_RETRIED))
        .chain(LOST.iter())
        .map(|(_, _, code, _)| *code)
        .chain(std::iter::once(CRASH_CODE))
        .any(|code| error.contains(&format!("({code})")))
        // A crash on a HEAD request (S3 HeadObject): no body, no code, only the status.
        || error.contains(&format!("HTTP status {CRASH_STATUS}, no error body"))
}

/// Whether a function's error is its own report of EC2's eventual consistency (a resource
/// just made is "not listed yet": the functions fail the invocation so that the event is
/// retried, their words "… is eventually consistent …"). With `--lag` that is the injected
/// lag at work, not a race.
pub fn lag_induced(error: &str) -> bool {
    error.contains("is eventually consistent")
}

/// What a rule injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A transient error before the call reaches the service (no side effect).
    Transient,
    /// The call took effect, then a non-retried error: the invocation stops there.
    Crash,
    /// The call took effect, then a retried 500: the SDK repeats it.
    Lost,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 3] = [Kind::Transient, Kind::Crash, Kind::Lost];

    /// As printed.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Transient => "transient",
            Kind::Crash => "crash",
            Kind::Lost => "lost response",
        }
    }
}

/// The rates of each kind of fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Transient faults (`--fault-rate`).
    pub transient: f64,
    /// Crashes after the call (`--crash-rate`).
    pub crash: f64,
    /// Lost responses (`--lost-rate`).
    pub lost: f64,
}

impl Rates {
    /// Whether any fault is injected.
    pub fn any(&self) -> bool {
        self.transient > 0.0 || self.crash > 0.0 || self.lost > 0.0
    }

    /// Whether faults that fire after the call took effect are injected.
    pub fn after(&self) -> bool {
        self.crash > 0.0 || self.lost > 0.0
    }
}

/// A rule's figures key: (service, code, kind).
pub type RuleKey = (String, String, Kind);

/// The role-name substring the rules match: every `<Function>Role` of template.yaml.
const PRINCIPAL: &str = "FunctionRole";

/// A run's fault switch and its counters.
pub struct Faults {
    endpoint: String,
    account: String,
    rates: Rates,
    seed: u64,
    unretried: bool,
    on: bool,
    /// Figures of rules already cleared: (service, code, kind) → (matched, fired).
    past: BTreeMap<RuleKey, (u64, u64)>,
    generation: u64,
}

impl Faults {
    /// Faults at `rates` (the share of each service's calls that fail, per kind) for `acct`,
    /// off for now; `unretried`: SNS's `Throttled`, which the SDK does not retry, is among the
    /// transient ones.
    pub fn new(acct: &TestAccount, rates: Rates, seed: u64, unretried: bool) -> Self {
        Faults {
            endpoint: acct.endpoint.clone(),
            account: acct.account_id.clone(),
            rates,
            seed,
            unretried,
            on: false,
            past: BTreeMap::new(),
            generation: 0,
        }
    }

    /// The rules to add: (service, status, code, message, probability, kind). Rules are tried
    /// in this order: the transient ones first (answered before the call), then the crash and
    /// the lost-response rule of the service (each drawing for what the earlier ones let pass).
    fn rules(&self) -> Vec<(&'static str, u16, &'static str, &'static str, f64, Kind)> {
        let mut out = Vec::new();
        if self.rates.transient > 0.0 {
            // Two rules per service, each failing q of what reaches it: 1-(1-q)^2 = rate.
            let q = 1.0 - (1.0 - self.rates.transient).sqrt();
            for r in &RULES {
                let (service, status, code, message) = if r.2 == "Throttled" && !self.unretried {
                    SNS_RETRIED
                } else {
                    *r
                };
                out.push((service, status, code, message, q, Kind::Transient));
            }
        }
        for (service, status, code, message) in LOST {
            if self.rates.crash > 0.0 {
                out.push((
                    service,
                    CRASH_STATUS,
                    CRASH_CODE,
                    CRASH_MESSAGE,
                    self.rates.crash,
                    Kind::Crash,
                ));
            }
            if self.rates.lost > 0.0 {
                out.push((service, status, code, message, self.rates.lost, Kind::Lost));
            }
        }
        out
    }

    /// Turns the rules on (added, seeded from the run's seed) or off (their counts kept).
    pub fn set(&mut self, on: bool) {
        let on = on && self.rates.any();
        if on == self.on {
            return;
        }
        if on {
            for (n, (service, status, code, message, probability, kind)) in
                self.rules().into_iter().enumerate()
            {
                let seed = self
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(self.generation * 32 + n as u64)
                    % (1 << 31);
                let rule = json!({"account_id": self.account, "service": service,
                    "status": status, "code": code, "message": message,
                    "principal": PRINCIPAL, "probability": probability, "seed": seed,
                    "after": kind != Kind::Transient});
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
            for (key, (matched, fired)) in self.current() {
                let e = self.past.entry(key).or_default();
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

    fn current(&self) -> BTreeMap<RuleKey, (u64, u64)> {
        let path = format!("/ami-pipeline-emulator/faults?account_id={}", self.account);
        let (s, body) =
            http(&self.endpoint, "GET", &path, None).unwrap_or_else(|e| panic!("fault list: {e}"));
        assert_eq!(s, 200, "fault list refused: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut out: BTreeMap<RuleKey, (u64, u64)> = BTreeMap::new();
        for r in v["faults"].as_array().into_iter().flatten() {
            let code = r["code"].as_str().unwrap_or_default().to_owned();
            let kind = if !r["after"].as_bool().unwrap_or(false) {
                Kind::Transient
            } else if code == CRASH_CODE {
                Kind::Crash
            } else {
                Kind::Lost
            };
            let key = (
                r["service"].as_str().unwrap_or_default().to_owned(),
                code,
                kind,
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
        for ((service, _, _), (matched, fired)) in self.figures() {
            let e = out.entry(service).or_default();
            e.0 = e.0.max(matched);
            e.1 += fired;
        }
        out
    }

    /// Faults fired per kind.
    pub fn per_kind(&self) -> BTreeMap<Kind, u64> {
        let mut out: BTreeMap<Kind, u64> = BTreeMap::new();
        for ((_, _, kind), (_, fired)) in self.figures() {
            *out.entry(kind).or_default() += fired;
        }
        out
    }

    /// Faults fired after the call took effect (crashes and lost responses) on `service`.
    pub fn after_fired(&self, service: &str) -> u64 {
        self.figures()
            .iter()
            .filter(|((s, _, k), _)| s == service && *k != Kind::Transient)
            .map(|(_, (_, fired))| fired)
            .sum()
    }

    /// Requests drawn for and faults fired so far: (service, code, kind) → (matched, fired).
    pub fn figures(&self) -> BTreeMap<RuleKey, (u64, u64)> {
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
