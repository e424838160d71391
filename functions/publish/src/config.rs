//! publish's settings, read once from the environment, and what a run needs (`Deps`).

use shared::aws::clients::{Clients, RegionalClients};
use shared::claim::Claims;
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::plan::ids;
use shared::plan::publish::{self as plan, Defaults, PublicMode};

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
    /// Where announcements are claimed so that each is sent once (`STATE_BUCKET`; unset: no
    /// claims).
    pub claims: Claims,
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
            "STATE_BUCKET",
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
        if let Some(home) = r.home_region() {
            for region in defaults.regions.iter().filter(|x| ids::is_region(x)) {
                if let Err(why) = ids::check_region(region, &home) {
                    r.problem(format!("PUBLISH_REGIONS: {why}"));
                }
            }
        }
        let source_regions = r.regions("SOURCE_REGIONS");
        let copy_concurrency = r.int_in("COPY_CONCURRENCY", 20, 1, 50) as usize;
        let claims = Claims {
            bucket: r.optional("STATE_BUCKET"),
        };
        r.finish()?;
        Ok(Config {
            common,
            defaults,
            source_regions,
            copy_concurrency,
            claims,
        })
    }
}

/// What the function needs to run.
#[derive(Debug, Clone)]
pub struct Deps {
    /// AWS clients of the function's region.
    pub clients: Clients,
    /// The clients of every region the configuration names, each built once per process.
    pub regional: RegionalClients,
    /// Settings.
    pub config: Config,
}

impl Deps {
    /// The function's dependencies: the home clients, one set per configured region.
    pub fn new(clients: Clients, config: Config) -> Self {
        let regional = RegionalClients::new(
            &clients,
            config
                .defaults
                .regions
                .iter()
                .chain(&config.source_regions)
                .map(String::as_str),
        );
        Deps {
            clients,
            regional,
            config,
        }
    }
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
    fn a_commercial_deployment_refuses_regions_of_other_partitions() {
        let err = Config::from_lookup(&lookup(&[
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:t"),
            ("AWS_REGION", "us-east-1"),
            ("PUBLISH_REGIONS", "eu-west-1,cn-north-1"),
            ("SOURCE_REGIONS", "us-east-1,us-gov-west-1"),
        ]))
        .expect_err("other partitions");
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].starts_with("PUBLISH_REGIONS: \"cn-north-1\" is in partition aws-cn"),
            "{err}"
        );
        assert!(
            err.problems[1]
                .starts_with("SOURCE_REGIONS: \"us-gov-west-1\" is in partition aws-us-gov"),
            "{err}"
        );
    }
}
