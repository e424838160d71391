//! tag-lineage's settings, read once from the environment, and what a run needs (`Deps`).

use shared::aws::clients::{Clients, RegionalClients};
use shared::claim::Claims;
use shared::config::{CommonConfig, ConfigError, Reader};
use std::time::Duration;

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
    /// Where `image.ready` is claimed so that it is sent once (`STATE_BUCKET`; unset: no claims).
    pub claims: Claims,
}

impl Config {
    /// Every variable this function reads.
    pub fn vars() -> Vec<&'static str> {
        let mut v = CommonConfig::VARS.to_vec();
        v.extend([
            "LINEAGE_REGIONS",
            "LINEAGE_MAX_DEPTH",
            "VISIBILITY_WAIT_SECONDS",
            "STATE_BUCKET",
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
        let claims = Claims {
            bucket: r.optional("STATE_BUCKET"),
        };
        r.finish()?;
        Ok(Config {
            common,
            regions,
            max_depth,
            visibility_wait: Duration::from_secs(wait),
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
        let regional = RegionalClients::new(&clients, config.regions.iter().map(String::as_str));
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

    #[test]
    fn lineage_regions_must_be_in_the_functions_partition() {
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
            ("LINEAGE_REGIONS", "us-east-1,cn-north-1"),
        ]))
        .expect_err("another partition");
        assert_eq!(
            err.problems,
            [
                "LINEAGE_REGIONS: \"cn-north-1\" is in partition aws-cn, not in this deployment's partition aws (region us-east-1)"
            ]
        );
        assert!(
            Config::from_lookup(&env(&[
                ("TOPIC_ARN", "arn:aws-cn:sns:cn-north-1:123456789012:t"),
                ("AWS_REGION", "cn-north-1"),
                ("LINEAGE_REGIONS", "cn-north-1,cn-northwest-1"),
            ]))
            .is_ok()
        );
    }
}
