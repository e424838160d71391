//! cleanup's settings, read once from the environment, and what a run needs (`Deps`).

use shared::aws::clients::Clients;
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::deadline::Deadline;
use shared::pace::{MAX_PERCENT, Pacer};
use shared::plan::retention::{Policy, Selector};
use std::sync::Arc;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Settings of cleanup, from the environment (names as in `template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Topic and S3 addressing.
    pub common: CommonConfig,
    /// Regions cleaned (`CLEANUP_REGIONS`; default the function's own).
    pub regions: Vec<String>,
    /// The policy of scheduled runs.
    pub policy: Policy,
    /// Scheduled runs only report (`DRY_RUN`, default `true` until you have read a report).
    pub dry_run: bool,
    /// Every launch template version protects its image, not only `$Default`/`$Latest`
    /// (`LAUNCH_TEMPLATE_VERSIONS=all`).
    pub all_template_versions: bool,
    /// EC2 calls in flight at once (`CLEANUP_CONCURRENCY`), over the reads, the removals and
    /// the rest of the plan together.
    pub concurrency: usize,
    /// The share of EC2's documented request rates this function may use, in percent
    /// (`API_BUDGET_PERCENT`, default 50: half is left to the account's other workloads;
    /// 0 turns pacing off).
    pub api_budget_percent: u32,
}

impl Config {
    /// Every variable this function reads.
    pub fn vars() -> Vec<&'static str> {
        let mut v = CommonConfig::VARS.to_vec();
        v.extend([
            "CLEANUP_REGIONS",
            "KEEP_NEWEST",
            "MIN_AGE_DAYS",
            "GRACE_DAYS",
            "MAX_DELETIONS",
            "FAMILIES",
            "FOREIGN_SELECTORS",
            "ALLOW_PUBLIC",
            "ALLOW_SHARED",
            "ORPHAN_SWEEP",
            "DRY_RUN",
            "LAUNCH_TEMPLATE_VERSIONS",
            "CLEANUP_CONCURRENCY",
            "MAX_DEPRECATIONS",
            "API_BUDGET_PERCENT",
        ]);
        v
    }

    /// Reads and validates the configuration; the error lists every problem.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader::new(lookup);
        let common = CommonConfig::read(&mut r);
        let regions = r.regions("CLEANUP_REGIONS");
        let mut selectors = Vec::new();
        for s in r.list("FOREIGN_SELECTORS") {
            match Selector::parse(&s) {
                Ok(sel) => selectors.push(sel),
                Err(e) => r.problem(format!("FOREIGN_SELECTORS: {e}")),
            }
        }
        let policy = Policy {
            keep_newest: r.int_in("KEEP_NEWEST", 3, 0, 1000) as usize,
            min_age_days: r.int_in("MIN_AGE_DAYS", 30, 0, 3650),
            grace_days: r.int_in("GRACE_DAYS", 7, 0, 365),
            max_deletions: r.int_in("MAX_DELETIONS", 10, 0, 10_000) as usize,
            max_deprecations: r.int_in("MAX_DEPRECATIONS", 100, 0, 10_000) as usize,
            families: r.list("FAMILIES").into_iter().collect(),
            selectors,
            allow_public: r.bool_or("ALLOW_PUBLIC", false),
            allow_shared: r.bool_or("ALLOW_SHARED", false),
            orphan_sweep: r.bool_or("ORPHAN_SWEEP", true),
        };
        let dry_run = r.bool_or("DRY_RUN", true);
        let all_template_versions = match r.optional("LAUNCH_TEMPLATE_VERSIONS").as_deref() {
            None | Some("default-and-latest") => false,
            Some("all") => true,
            Some(other) => {
                r.problem(format!(
                    "LAUNCH_TEMPLATE_VERSIONS={other:?} is not default-and-latest or all"
                ));
                false
            }
        };
        let concurrency = r.int_in("CLEANUP_CONCURRENCY", 4, 1, 16) as usize;
        let api_budget_percent =
            r.int_in("API_BUDGET_PERCENT", 50, 0, i64::from(MAX_PERCENT)) as u32;
        r.finish()?;
        Ok(Config {
            common,
            regions,
            policy,
            dry_run,
            all_template_versions,
            concurrency,
            api_budget_percent,
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
    /// EC2 calls paced at `API_BUDGET_PERCENT` of the documented rates (one per invocation
    /// environment: a warm environment's buckets carry over to its next run).
    pub pacer: Arc<Pacer>,
    /// At most `concurrency` EC2 calls of a run in flight at once, whichever stage makes them
    /// (the reads, the removals made as their checks clear, the rest of the plan).
    slots: Arc<Semaphore>,
}

impl Deps {
    /// The function's dependencies.
    pub fn new(clients: Clients, config: Config) -> Self {
        let pacer = Arc::new(Pacer::new(config.api_budget_percent));
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Deps {
            clients,
            config,
            pacer,
            slots,
        }
    }

    /// A turn for one EC2 call of `action` in `region`: the pacer's token, then one of the
    /// `concurrency` call slots, held until the returned turn is dropped. The token comes first,
    /// so a call waiting for its turn in the bucket does not hold a slot another stage could
    /// use. None when the deadline leaves no room for the call: before the token (the pacer
    /// says so), or after the wait for a slot (the calls ahead of it took that long).
    pub(crate) async fn turn(
        &self,
        region: &str,
        action: &str,
        deadline: &Deadline,
    ) -> Option<Turn<'_>> {
        if !self.pacer.acquire(region, action, deadline).await {
            return None;
        }
        // The semaphore is never closed; were it, calls would go on unbounded, not stop.
        let slot = self.slots.acquire().await.ok();
        deadline.may_start().then_some(Turn(slot))
    }
}

/// One call's turn (see [`Deps::turn`]): its slot is given back when this is dropped.
pub(crate) struct Turn<'a>(#[allow(dead_code)] Option<SemaphorePermit<'a>>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_regions_must_be_in_the_functions_partition() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err = Config::from_lookup(&env(&[
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:t"),
            ("AWS_REGION", "us-east-1"),
            ("CLEANUP_REGIONS", "us-east-1,cn-north-1"),
        ]))
        .expect_err("another partition");
        assert_eq!(
            err.problems,
            [
                "CLEANUP_REGIONS: \"cn-north-1\" is in partition aws-cn, not in this deployment's partition aws (region us-east-1)"
            ]
        );
        assert!(
            Config::from_lookup(&env(&[
                ("TOPIC_ARN", "arn:aws-cn:sns:cn-north-1:123456789012:t"),
                ("AWS_REGION", "cn-north-1"),
                ("CLEANUP_REGIONS", "cn-north-1,cn-northwest-1"),
            ]))
            .is_ok()
        );
        // A region named twice is one region (planned twice, the second copy would be read
        // without the first copy's checks).
        let twice = Config::from_lookup(&env(&[
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:t"),
            ("AWS_REGION", "us-east-1"),
            ("CLEANUP_REGIONS", "us-east-1, eu-west-1,us-east-1"),
        ]))
        .expect("valid");
        assert_eq!(twice.regions, ["us-east-1", "eu-west-1"]);
    }
}
