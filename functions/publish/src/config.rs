//! publish's settings, read once from the environment, and what a run needs (`Deps`).

use shared::aws::clients::{Clients, RegionalClients};
use shared::claim::Claims;
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::plan::ids;
use shared::plan::publish::{self as plan, Defaults, PublicMode};
use std::collections::BTreeMap;

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
    /// The customer managed KMS key each destination region's copies of an encrypted image are
    /// encrypted with (`COPY_KMS_KEYS`: key ARNs, the region of each naming its destination).
    /// A region without one gets its default EBS key, by default the AWS managed `aws/ebs`,
    /// which EC2 never shares with another account.
    pub copy_kms_keys: BTreeMap<String, String>,
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
            "COPY_KMS_KEYS",
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
        let mut copy_kms_keys = BTreeMap::new();
        for arn in r.list("COPY_KMS_KEYS") {
            if let Some(why) = ids::kms_key_problem(&arn, None) {
                r.problem(format!("COPY_KMS_KEYS: {why}"));
                continue;
            }
            // A valid key ARN names its region (arn:<partition>:kms:<region>:...).
            let region = arn.split(':').nth(3).unwrap_or_default().to_owned();
            if let Some(Err(why)) = r
                .home_region()
                .map(|home| ids::check_region(&region, &home))
            {
                r.problem(format!("COPY_KMS_KEYS: {arn:?}: {why}"));
                continue;
            }
            if let Some(other) = copy_kms_keys.insert(region.clone(), arn.clone()) {
                r.problem(format!(
                    "COPY_KMS_KEYS: two keys for {region} ({other:?} and {arn:?}); a region's copies are encrypted with one"
                ));
            }
        }
        let claims = Claims {
            bucket: r.optional("STATE_BUCKET"),
        };
        r.finish()?;
        Ok(Config {
            common,
            defaults,
            source_regions,
            copy_concurrency,
            copy_kms_keys,
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
    fn copy_keys_are_key_arns_one_per_region_of_the_partition() {
        const EAST: &str =
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        const WEST: &str =
            "arn:aws:kms:us-west-2:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let ok = Config::from_lookup(&lookup(&[
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:t"),
            ("AWS_REGION", "us-east-1"),
            ("COPY_KMS_KEYS", "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab, arn:aws:kms:us-west-2:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"),
        ]))
        .expect("valid");
        assert_eq!(ok.copy_kms_keys.len(), 2);
        assert_eq!(ok.copy_kms_keys["us-east-1"], EAST);
        assert_eq!(ok.copy_kms_keys["us-west-2"], WEST);
        let err = Config::from_lookup(&lookup(&[
            ("TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:t"),
            ("AWS_REGION", "us-east-1"),
            ("COPY_KMS_KEYS", "alias/aws/ebs,arn:aws:kms:us-west-2:123456789012:key/a,arn:aws:kms:us-west-2:123456789012:key/b,arn:aws-cn:kms:cn-north-1:123456789012:key/c"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(
            err.problems[0].contains("\"alias/aws/ebs\" is not a KMS key ARN"),
            "{err}"
        );
        assert!(err.problems[1].contains("two keys for us-west-2"), "{err}");
        assert!(err.problems[2].contains("partition aws-cn"), "{err}");
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
