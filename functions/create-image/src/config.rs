//! create-image's settings, read once from the environment, and what a run needs (`Deps`).

use shared::aws::clients::Clients;
use shared::claim::Claims;
use shared::config::{CommonConfig, ConfigError, Reader};
use shared::plan::ids;
use shared::plan::spec::{self, UploadBounds};
use shared::plan::upload::MethodSetting;
use std::collections::BTreeMap;

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
    /// `UPLOAD_METHOD`: `auto` (the EBS direct fast path for what it takes, default) or
    /// `import-snapshot` (VM Import for every upload).
    pub upload_method: MethodSetting,
    /// `FAST_PATH_MAX_GIB`: the largest virtual disk the fast path takes (larger ones go to
    /// ImportSnapshot). No longer what one invocation can write — a write continues across
    /// invocations from its checkpoint — but the operator's bound on what one upload may hold:
    /// the LINEAR state in memory and the checkpoint (36 bytes per written block: 72 MiB at
    /// 1,024 GiB), and the invocations it takes.
    pub fast_path_max_gib: u64,
    /// Function-wide defaults of the per-upload settings (`DEFAULT_<SETTING>`).
    pub defaults: BTreeMap<String, String>,
    /// What an upload's metadata may choose (`UPLOAD_SETTINGS`, `UPLOAD_MAX_VOLUME_GIB`,
    /// `UPLOAD_TAG_KEYS`).
    pub upload: UploadBounds,
    /// Where the fast path's `image.registered` is claimed and recorded, so that it is sent
    /// once and a lost one is sent by the retry (`STATE_BUCKET`; unset: no claims, no repair).
    pub claims: Claims,
    /// `KMS_KEY_ARN`: the KMS key both paths encrypt snapshots with (StartSnapshot
    /// `KmsKeyArn`, ImportSnapshot `KmsKeyId`); unset: unencrypted unless the account encrypts
    /// EBS by default.
    pub kms_key_arn: Option<String>,
}

/// Default-setting variables: `DEFAULT_` + the setting key upper-cased with `_`.
pub const DEFAULT_VARS: [&str; 10] = [
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_BOOT_MODE",
    "DEFAULT_ENA",
    "DEFAULT_IMDS_V2",
    "DEFAULT_TPM",
    "DEFAULT_ROOT_DEVICE",
    "DEFAULT_VOLUME_TYPE",
    "DEFAULT_IOPS",
    "DEFAULT_THROUGHPUT",
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
            "UPLOAD_METHOD",
            "FAST_PATH_MAX_GIB",
            "UPLOAD_SETTINGS",
            "UPLOAD_MAX_VOLUME_GIB",
            "UPLOAD_TAG_KEYS",
            "STATE_BUCKET",
            "KMS_KEY_ARN",
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
        let upload_method = match r.optional("UPLOAD_METHOD") {
            None => MethodSetting::Auto,
            Some(v) => MethodSetting::parse(&v).unwrap_or_else(|| {
                r.problem(format!(
                    "UPLOAD_METHOD={v} is not one of auto, import-snapshot"
                ));
                MethodSetting::Auto
            }),
        };
        // 1 GiB .. 64 TiB (the EBS volume limit). 1,024 GiB at ~200 MB/s is ~90 minutes: about
        // seven 15-minute invocations, each continuing from the checkpoint (crate::progress).
        let fast_path_max_gib = r.int_in("FAST_PATH_MAX_GIB", 1024, 1, 65536) as u64;
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
        let upload = upload_bounds(&mut r);
        let claims = Claims {
            bucket: r.optional("STATE_BUCKET"),
        };
        let kms_key_arn = r.optional("KMS_KEY_ARN");
        if let Some(arn) = &kms_key_arn
            && let Some(why) = ids::kms_key_problem(arn, r.home_region().as_deref())
        {
            r.problem(format!("KMS_KEY_ARN: {why}"));
        }
        r.finish()?;
        Ok(Config {
            common,
            import_role_name,
            stale_import_minutes,
            concurrency,
            upload_method,
            fast_path_max_gib,
            defaults,
            upload,
            claims,
            kms_key_arn,
        })
    }
}

/// The operator's bounds on uploads; `UPLOAD_SETTINGS=none` lets the metadata choose nothing.
fn upload_bounds(r: &mut Reader<'_>) -> UploadBounds {
    let default = UploadBounds::default();
    let settings = match r.optional("UPLOAD_SETTINGS") {
        None => default.settings,
        Some(v) if v.trim().eq_ignore_ascii_case("none") => Vec::new(),
        Some(_) => r.list("UPLOAD_SETTINGS"),
    };
    let max_volume_gib = r.int_in(
        "UPLOAD_MAX_VOLUME_GIB",
        i64::from(spec::DEFAULT_UPLOAD_MAX_VOLUME_GIB),
        1,
        i64::from(spec::MAX_VOLUME_GIB),
    ) as u32;
    let bounds = UploadBounds {
        settings,
        max_volume_gib,
        tag_keys: r.list("UPLOAD_TAG_KEYS"),
    };
    for (var, problem) in bounds.problems() {
        r.problem(format!("{var}: {problem}"));
    }
    bounds
}

/// What the function needs to run.
#[derive(Debug, Clone)]
pub struct Deps {
    /// AWS clients of the function's region.
    pub clients: Clients,
    /// Settings.
    pub config: Config,
}

impl Deps {
    /// The function's dependencies.
    pub fn new(clients: Clients, config: Config) -> Self {
        Deps { clients, config }
    }

    /// The fast path's checkpoints and leases, in the state bucket (none without one).
    pub(crate) fn progress(&self) -> Option<crate::progress::Progress<'_>> {
        self.config
            .claims
            .bucket
            .as_deref()
            .map(|bucket| crate::progress::Progress {
                s3: &self.clients.s3,
                bucket,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn defaults_whose_throughput_their_iops_cannot_carry_are_a_configuration_error() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut env = BTreeMap::from([("TOPIC_ARN", "arn:aws:sns:us-east-1:1:t")]);
            env.extend(pairs.iter().copied());
            Config::from_lookup(&|k: &str| env.get(k).map(|v| v.to_string()))
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            with(&[("DEFAULT_THROUGHPUT", "1000")]).as_deref(),
            Some(
                "invalid configuration: DEFAULT_THROUGHPUT: 1000 MiB/s is more than a gp3 volume with 3,000 IOPS (the baseline; iops is not set) takes: at most 750 MiB/s (0.25 MiB/s per IOPS); set iops to at least 4,000, or throughput to at most 750"
            )
        );
        assert_eq!(
            with(&[("DEFAULT_THROUGHPUT", "1000"), ("DEFAULT_IOPS", "4000")]),
            None
        );
    }
}
