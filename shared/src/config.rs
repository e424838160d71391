//! Configuration, parsed once from a lookup function.
//!
//! Production passes `|k| std::env::var(k).ok()`; tests pass a map. A [`Reader`] collects
//! every missing or invalid variable so that one [`ConfigError`] lists them all. Variable names
//! match `template.yaml` one for one; each function's config lists the names it reads.

use std::fmt;
use std::str::FromStr;

/// Every problem found in the environment, listed together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One line per bad or missing variable.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

/// Reads variables through a lookup function and remembers every problem.
pub struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    /// A reader over `lookup`.
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Reader {
            lookup,
            problems: Vec::new(),
        }
    }

    /// The raw value, trimmed; empty counts as unset.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A variable that must be set.
    pub fn required(&mut self, name: &str) -> String {
        self.optional(name).unwrap_or_else(|| {
            self.problems
                .push(format!("{name} is required but not set"));
            String::new()
        })
    }

    /// A comma-separated list (blanks around items ignored, empty items dropped).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.optional(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A list of AWS region names, each a known region
    /// ([`crate::plan::ids::KNOWN_REGIONS`]) of the deployment's partition
    /// ([`crate::plan::ids::check_region`] against [`Reader::home_region`]), each once (a
    /// region named twice is one region: planned twice, its second copy would be read without
    /// the first copy's checks).
    pub fn regions(&mut self, name: &str) -> Vec<String> {
        let mut regions = self.list(name);
        let mut seen = std::collections::HashSet::new();
        regions.retain(|r| seen.insert(r.clone()));
        self.check_regions(name, &regions);
        regions
    }

    /// Records a problem for each of `regions` (read from `name`) that is not a known region of
    /// the deployment's partition.
    pub fn check_regions(&mut self, name: &str, regions: &[String]) {
        let home = self.home_region();
        for r in regions {
            let checked = match &home {
                Some(home) => crate::plan::ids::check_region(r, home),
                None if crate::plan::ids::is_region(r) => Ok(()),
                None => Err(format!("{r:?} is not an AWS region")),
            };
            if let Err(why) = checked {
                self.problems.push(format!("{name}: {why}"));
            }
        }
    }

    /// The function's own region: `AWS_REGION`, which Lambda always sets (a reserved variable,
    /// Lambda Developer Guide, "Defined runtime environment variables"); without it (a local
    /// run), regions are only checked to exist.
    pub fn home_region(&self) -> Option<String> {
        self.optional("AWS_REGION")
    }

    /// A parsed value, or `default` when unset; `what` describes the allowed values.
    pub fn parse_or<T: FromStr>(&mut self, name: &str, default: T, what: &str) -> T {
        match self.optional(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.problems.push(format!("{name}={v:?} is not {what}"));
                default
            }),
        }
    }

    /// An integer within `min..=max`, or `default` when unset.
    pub fn int_in(&mut self, name: &str, default: i64, min: i64, max: i64) -> i64 {
        let v = self.parse_or(name, default, &format!("an integer from {min} to {max}"));
        if !(min..=max).contains(&v) {
            self.problems
                .push(format!("{name}={v} is out of range {min}..={max}"));
            return default;
        }
        v
    }

    /// `true`/`false`, or `default` when unset.
    pub fn bool_or(&mut self, name: &str, default: bool) -> bool {
        match self.optional(name).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}={v:?} is not true or false"));
                default
            }
        }
    }

    /// Records a problem found by the caller's own validation.
    pub fn problem(&mut self, text: String) {
        self.problems.push(text);
    }

    /// Ends reading: `Err` lists every problem met.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// Settings every function shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonConfig {
    /// The pipeline's SNS topic (`TOPIC_ARN`).
    pub topic_arn: String,
    /// Use path-style S3 addressing (`S3_FORCE_PATH_STYLE`), for S3-compatible endpoints.
    pub s3_force_path_style: bool,
}

impl CommonConfig {
    /// Variables read by [`CommonConfig::read`].
    pub const VARS: [&'static str; 2] = ["TOPIC_ARN", "S3_FORCE_PATH_STYLE"];

    /// Reads the shared settings.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let topic_arn = r.required("TOPIC_ARN");
        if !topic_arn.is_empty() && !topic_arn.starts_with("arn:") {
            r.problem(format!("TOPIC_ARN={topic_arn:?} is not an SNS topic ARN"));
        }
        CommonConfig {
            topic_arn,
            s3_force_path_style: r.bool_or("S3_FORCE_PATH_STYLE", false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_problem_is_listed_at_once() {
        let env: HashMap<&str, &str> =
            HashMap::from([("S3_FORCE_PATH_STYLE", "yes"), ("N", "500")]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let mut r = Reader::new(&lookup);
        let common = CommonConfig::read(&mut r);
        assert!(!common.s3_force_path_style);
        assert_eq!(r.int_in("N", 5, 1, 100), 5);
        let err = r.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err,
            "invalid configuration: TOPIC_ARN is required but not set; S3_FORCE_PATH_STYLE=\"yes\" is not true or false; N=500 is out of range 1..=100"
        );
    }

    #[test]
    fn regions_are_checked_against_the_functions_partition() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("AWS_REGION", "us-east-1"),
            ("R", "eu-west-1, cn-north-1,us-gov-west-1"),
        ]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let mut r = Reader::new(&lookup);
        assert_eq!(r.regions("R").len(), 3);
        let err = r.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err,
            "invalid configuration: R: \"cn-north-1\" is in partition aws-cn, not in this deployment's partition aws (region us-east-1); R: \"us-gov-west-1\" is in partition aws-us-gov, not in this deployment's partition aws (region us-east-1)"
        );
        let china: HashMap<&str, &str> =
            HashMap::from([("AWS_REGION", "cn-north-1"), ("R", "cn-northwest-1")]);
        let lookup = |k: &str| china.get(k).map(|v| v.to_string());
        let mut r = Reader::new(&lookup);
        r.regions("R");
        assert!(r.finish().is_ok());
    }
}
