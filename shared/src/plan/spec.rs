//! The image spec: every setting of an upload, validated.
//!
//! Settings come from three layers, later ones winning: the function's defaults (environment,
//! set by template parameters), the object's user metadata (`x-amz-meta-<key>`), and the
//! overrides of a manual invoke. [`resolve`] validates the merged result and lists **every**
//! problem at once. The spec is stored on the import task as tags ([`ImageSpec::to_tags`]) and
//! read back by the sweep ([`ImageSpec::from_tags`]), so the sweep needs nothing else.

use super::lineage::{self, FAMILY, MAX_EC2_TAG_KEY, MAX_TAG_VALUE, NS};
use super::naming::{self, check_image_name};
use crate::model::Tags;
use serde::Serialize;
use std::collections::BTreeMap;

/// CPU architecture of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Architecture {
    /// `x86_64`
    #[serde(rename = "x86_64")]
    X86_64,
    /// `arm64`
    #[serde(rename = "arm64")]
    Arm64,
}

/// Boot mode of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// `legacy-bios`
    LegacyBios,
    /// `uefi`
    Uefi,
    /// `uefi-preferred`
    UefiPreferred,
}

/// Root volume type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// General purpose SSD, gp3 (the default).
    Gp3,
    /// General purpose SSD, gp2.
    Gp2,
    /// Provisioned IOPS SSD, io1 (needs `iops`).
    Io1,
    /// Provisioned IOPS SSD, io2 (needs `iops`).
    Io2,
    /// Magnetic.
    Standard,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// The API spelling.
            pub fn as_str(self) -> &'static str { match self { $(Self::$v => $s),+ } }
            /// Parses the API spelling (case-insensitive).
            pub fn parse(s: &str) -> Option<Self> {
                $(if s.eq_ignore_ascii_case($s) { return Some(Self::$v); })+
                None
            }
            /// Every accepted spelling, for error messages.
            pub fn allowed() -> &'static str { concat!($($s, " "),+) }
        }
    };
}
str_enum!(Architecture { X86_64 => "x86_64", Arm64 => "arm64" });
str_enum!(BootMode { LegacyBios => "legacy-bios", Uefi => "uefi", UefiPreferred => "uefi-preferred" });
str_enum!(VolumeType { Gp3 => "gp3", Gp2 => "gp2", Io1 => "io1", Io2 => "io2", Standard => "standard" });

/// What RegisterImage accepts for a root volume of each type, in botocore's ec2 model
/// (`EbsBlockDevice`): `VolumeSize` "The following are the supported sizes for each volume
/// type", `Iops` "The following are the supported values for each volume type … This parameter
/// is required for io1 and io2 volumes", `Throughput` "valid only for gp3 volumes. Valid Range:
/// Minimum value of 125. Maximum value of 2,000." Checked before anything is imported, so an
/// upload EC2 would refuse at registration is refused up front.
impl VolumeType {
    /// The sizes of a volume of this type, GiB.
    pub fn sizes(self) -> std::ops::RangeInclusive<u32> {
        match self {
            VolumeType::Gp2 => 1..=16_384,
            VolumeType::Gp3 => 1..=65_536,
            VolumeType::Io1 => 4..=16_384,
            VolumeType::Io2 => 4..=65_536,
            VolumeType::Standard => 1..=1_024,
        }
    }

    /// The provisioned IOPS a volume of this type takes; `None`: it takes none.
    pub fn iops(self) -> Option<std::ops::RangeInclusive<u32>> {
        match self {
            VolumeType::Gp3 => Some(3_000..=80_000),
            VolumeType::Io1 => Some(100..=64_000),
            VolumeType::Io2 => Some(100..=256_000),
            VolumeType::Gp2 | VolumeType::Standard => None,
        }
    }

    /// Whether RegisterImage requires `Iops` for this type (io1, io2).
    pub fn needs_iops(self) -> bool {
        matches!(self, VolumeType::Io1 | VolumeType::Io2)
    }

    /// The throughput a volume of this type takes, MiB/s; `None`: it takes none (all but gp3).
    pub fn throughput(self) -> Option<std::ops::RangeInclusive<u32>> {
        (self == VolumeType::Gp3).then_some(125..=2_000)
    }

    /// The most provisioned IOPS per GiB of volume size; `None`: the type takes no IOPS. The
    /// EBS User Guide ("Amazon EBS volume types"): gp3 "The maximum ratio of provisioned IOPS to
    /// provisioned volume size is 500 IOPS per GiB"; io1 "The maximum ratio of provisioned IOPS
    /// to requested volume size (in GiB) is 50:1"; io2 Block Express (every io2 volume) 1,000:1.
    pub fn iops_per_gib(self) -> Option<u32> {
        match self {
            VolumeType::Gp3 => Some(500),
            VolumeType::Io1 => Some(50),
            VolumeType::Io2 => Some(1_000),
            VolumeType::Gp2 | VolumeType::Standard => None,
        }
    }

    /// The most IOPS a volume of this type and `size_gib` takes: its ratio to the size, capped
    /// by the type's range; a gp3 volume of any size has its baseline 3,000 ([`GP3_BASELINE_IOPS`]).
    pub fn max_iops(self, size_gib: u32) -> Option<u32> {
        let by_size = self.iops_per_gib()?.saturating_mul(size_gib);
        let floor = if self == VolumeType::Gp3 {
            GP3_BASELINE_IOPS
        } else {
            0
        };
        Some(by_size.max(floor).min(*self.iops()?.end()))
    }
}

/// A gp3 volume's IOPS when none are provisioned, whatever its size (EBS User Guide: "gp3
/// volumes deliver a consistent baseline IOPS performance of 3,000 IOPS").
pub const GP3_BASELINE_IOPS: u32 = 3_000;

/// The most gp3 throughput per provisioned IOPS, as IOPS per MiB/s: "The maximum ratio of
/// provisioned throughput to provisioned IOPS is .25 MiB/s per IOPS" (EBS User Guide).
pub const GP3_IOPS_PER_MIBPS: u32 = 4;

/// What a volume of type `t` cannot be given together, as `(setting, what is wrong)`: more IOPS
/// than its size takes ([`VolumeType::max_iops`]; `size_gib` is the volume's size, when known)
/// and, for gp3, more throughput than its IOPS (set, or the 3,000 baseline) take. Each value is
/// taken to be inside its own range (checked apart). EC2 creates no volume from such settings,
/// so an image registered with them could launch no instance.
pub fn performance_ties(
    t: VolumeType,
    size_gib: Option<u32>,
    iops: Option<u32>,
    throughput: Option<u32>,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let name = t.as_str();
    if let (Some(n), Some(size), Some(per)) = (iops, size_gib, t.iops_per_gib())
        && let Some(max) = t.max_iops(size)
        && n > max
    {
        problems.push((
            keys::IOPS,
            format!(
                "{} IOPS is more than {} {name} volume of {size} GiB takes: at most {} ({per} IOPS per GiB); set volume-size to at least {} GiB, or iops to at most {}",
                grouped(n),
                if name.starts_with('i') { "an" } else { "a" },
                grouped(max),
                grouped(n.div_ceil(per)),
                grouped(max)
            ),
        ));
    }
    if let (VolumeType::Gp3, Some(m)) = (t, throughput) {
        let with = iops.unwrap_or(GP3_BASELINE_IOPS);
        let needed = m.saturating_mul(GP3_IOPS_PER_MIBPS);
        if needed > with {
            let whose = if iops.is_some() {
                ""
            } else {
                " (the baseline; iops is not set)"
            };
            // The IOPS that would carry it may be more than the volume's size takes.
            let size_too = match (size_gib.and_then(|g| t.max_iops(g)), t.iops_per_gib()) {
                (Some(max), Some(per)) if needed > max => format!(
                    " and volume-size to at least {} GiB",
                    grouped(needed.div_ceil(per))
                ),
                _ => String::new(),
            };
            problems.push((
                keys::THROUGHPUT,
                format!(
                    "{m} MiB/s is more than a gp3 volume with {} IOPS{whose} takes: at most {} MiB/s (0.25 MiB/s per IOPS); set iops to at least {}{size_too}, or throughput to at most {}",
                    grouped(with),
                    with / GP3_IOPS_PER_MIBPS,
                    grouped(needed),
                    with / GP3_IOPS_PER_MIBPS
                ),
            ));
        }
    }
    problems
}

/// The function's variable that gives `key`'s default: `DEFAULT_` + the key upper-cased with `_`.
fn default_var(key: &str) -> String {
    format!("DEFAULT_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// `a..=b` as people read it: `3,000–80,000`.
fn range_text(r: &std::ops::RangeInclusive<u32>) -> String {
    format!("{}–{}", grouped(*r.start()), grouped(*r.end()))
}

fn grouped(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The setting keys, as metadata keys (`x-amz-meta-<key>`), manual-invoke fields and, under
/// `ami-pipeline:spec:`, import-task tags.
pub mod keys {
    /// `x86_64` | `arm64`
    pub const ARCHITECTURE: &str = "architecture";
    /// `legacy-bios` | `uefi` | `uefi-preferred`
    pub const BOOT_MODE: &str = "boot-mode";
    /// `true` | `false`
    pub const ENA: &str = "ena";
    /// `true` | `false`: require IMDSv2.
    pub const IMDS_V2: &str = "imds-v2";
    /// `true` | `false`: NitroTPM 2.0.
    pub const TPM: &str = "tpm";
    /// e.g. `/dev/xvda`
    pub const ROOT_DEVICE: &str = "root-device";
    /// Root volume size in GiB (default: the snapshot's size).
    pub const VOLUME_SIZE: &str = "volume-size";
    /// `gp3` | `gp2` | `io1` | `io2` | `standard`
    pub const VOLUME_TYPE: &str = "volume-type";
    /// Provisioned IOPS of the root volume (gp3, io1, io2; required for io1 and io2).
    pub const IOPS: &str = "iops";
    /// Throughput of the root volume, MiB/s (gp3 only).
    pub const THROUGHPUT: &str = "throughput";
    /// Exact image name (else automatic).
    pub const NAME: &str = "name";
    /// Prefix of the automatic name (default: the family).
    pub const NAME_PREFIX: &str = "name-prefix";
    /// Image description.
    pub const DESCRIPTION: &str = "description";
    /// Retention group (default: from the key prefix).
    pub const FAMILY: &str = "family";
    /// Extra tags, URL-query encoded: `team=web&env=prod`.
    pub const TAGS: &str = "tags";
    /// Every key, in documentation order.
    pub const ALL: [&str; 15] = [
        ARCHITECTURE,
        BOOT_MODE,
        ENA,
        IMDS_V2,
        TPM,
        ROOT_DEVICE,
        VOLUME_SIZE,
        VOLUME_TYPE,
        IOPS,
        THROUGHPUT,
        NAME,
        NAME_PREFIX,
        DESCRIPTION,
        FAMILY,
        TAGS,
    ];
}

pub use super::tags::{EXTRA_TAG_PREFIX, SPEC_TAG_PREFIX};
/// Most extra tags per upload. EC2 allows 50 tags per resource: a published image carries up to
/// 26 keys of the pipeline's own besides (registration, ready marker, publish's state, record and
/// policy, cleanup's mark, protection), its copies one more at CopyImage, and 3 are left spare;
/// the import task carries the spec besides (`plan::import` tests count both).
pub const MAX_EXTRA_TAGS: usize = 20;
/// Largest root volume of any type, GiB (gp3 and io2; each type's own range:
/// [`VolumeType::sizes`]).
pub const MAX_VOLUME_GIB: u32 = 65_536;
/// Longest description RegisterImage accepts.
pub const MAX_DESCRIPTION: usize = 255;

/// Every setting of an image, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSpec {
    /// CPU architecture.
    pub architecture: Architecture,
    /// Boot mode.
    pub boot_mode: BootMode,
    /// ENA support.
    pub ena: bool,
    /// Require IMDSv2 (`ImdsSupport: v2.0`).
    pub imds_v2: bool,
    /// NitroTPM (`TpmSupport: v2.0`).
    pub tpm: bool,
    /// Root device name.
    pub root_device: String,
    /// Root volume size; None = the snapshot's size.
    pub volume_size_gib: Option<u32>,
    /// Root volume type.
    pub volume_type: VolumeType,
    /// Provisioned IOPS of the root volume; None = the type's default (none for io1/io2, which
    /// need it).
    pub iops: Option<u32>,
    /// Throughput of the root volume, MiB/s; None = the type's default.
    pub throughput: Option<u32>,
    /// Exact name; None = automatic.
    pub name: Option<String>,
    /// Prefix of the automatic name.
    pub name_prefix: String,
    /// Description.
    pub description: Option<String>,
    /// Retention group.
    pub family: String,
    /// The user's extra tags for the image and its snapshot.
    pub extra_tags: Tags,
}

/// One thing wrong with an upload's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The setting (metadata key) at fault.
    pub setting: String,
    /// What is wrong, and what is allowed.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

/// Merges settings (later maps win) and validates them into an [`ImageSpec`].
///
/// `layers[0]` is the function's defaults when there is more than one layer: a default `iops`
/// or `throughput` is not applied to a volume type a later layer chose that takes none (a
/// `DEFAULT_IOPS` for gp3 does not refuse an upload that asks for gp2); the same value set by
/// the upload itself is refused. `key` is the object key, used for the default family. Returns
/// every problem found, in the order of the settings: boot, volume, naming, description, tags.
pub fn resolve(layers: &[&BTreeMap<String, String>], key: &str) -> Result<ImageSpec, Vec<Problem>> {
    validate(layers, key, Check::All)
}

/// The problems of one layer's values on their own: each value's form and bounds, not the
/// rules that tie settings together (those may be met by another layer, e.g. `tpm=true` given
/// in a manual invoke with `boot-mode=uefi` in the object's metadata). A manual invoke is
/// refused on these before its object is touched.
pub fn value_problems(layer: &BTreeMap<String, String>, key: &str) -> Vec<Problem> {
    validate(&[layer], key, Check::OneLayer)
        .err()
        .unwrap_or_default()
}

/// What [`validate`] checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Everything: a new upload's merged settings.
    All,
    /// One layer's values on their own, not the rules that tie settings together.
    OneLayer,
    /// A spec read back from an import task: everything but the bounds on how many extra tags
    /// an upload may ask for, which held when the task was started (a task started before a
    /// lower bound is still registered).
    ReadBack,
}

fn validate(
    layers: &[&BTreeMap<String, String>],
    key: &str,
    check: Check,
) -> Result<ImageSpec, Vec<Problem>> {
    let mut merged: BTreeMap<&'static str, &str> = BTreeMap::new();
    // The layer each merged value came from.
    let mut origin: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (n, layer) in layers.iter().enumerate() {
        for (k, v) in layer.iter() {
            if let Some(known) = keys::ALL.iter().find(|known| **known == k.as_str()) {
                merged.insert(known, v.as_str());
                origin.insert(known, n);
            }
        }
    }
    if check == Check::All {
        drop_defaults_the_chosen_type_takes_not(&mut merged, &origin);
    }
    // The settings the function's defaults gave (a later layer set none of them), named in
    // a problem so the uploader knows it did not set the value.
    let from_defaults = if layers.len() > 1 {
        origin
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect()
    } else {
        std::collections::BTreeSet::new()
    };
    let mut s = Settings {
        merged,
        problems: Vec::new(),
        ties: check != Check::OneLayer,
        count_tags: check != Check::ReadBack,
        from_defaults,
    };
    let (architecture, boot_mode, ena, imds_v2, tpm) = s.boot();
    let root_device = s.root_device();
    let volume_size_gib = s.volume_size();
    let volume_type = match s.get(keys::VOLUME_TYPE) {
        None => VolumeType::Gp3,
        Some(v) => s.choice(
            keys::VOLUME_TYPE,
            v,
            VolumeType::parse,
            VolumeType::allowed(),
            VolumeType::Gp3,
        ),
    };
    let iops = s.positive(keys::IOPS);
    let throughput = s.positive(keys::THROUGHPUT);
    s.volume_ties(volume_type, volume_size_gib, iops, throughput);
    let name = s.get(keys::NAME).map(str::to_owned);
    if let Some(Err(e)) = name.as_deref().map(check_image_name) {
        s.bad(keys::NAME, e);
    }
    let family = s.family(key);
    let name_prefix = s.name_prefix(&family);
    let description = s.description();
    let extra_tags = s.extra_tags();
    if !s.problems.is_empty() {
        return Err(s.problems);
    }
    Ok(ImageSpec {
        architecture,
        boot_mode,
        ena,
        imds_v2,
        tpm,
        root_device,
        volume_size_gib,
        volume_type,
        iops,
        throughput,
        name,
        name_prefix,
        description,
        family,
        extra_tags,
    })
}

/// Drops a default (layer 0) `iops` or `throughput` when a later layer chose a volume type that
/// takes none: a default holds where it applies. A volume type from the defaults too is left to
/// be refused with its setting (the function's settings contradict themselves).
fn drop_defaults_the_chosen_type_takes_not(
    merged: &mut BTreeMap<&'static str, &str>,
    origin: &BTreeMap<&'static str, usize>,
) {
    let chosen = match (merged.get(keys::VOLUME_TYPE), origin.get(keys::VOLUME_TYPE)) {
        (Some(v), Some(n)) if *n > 0 => VolumeType::parse(v.trim()),
        _ => None,
    };
    let Some(t) = chosen else { return };
    for (k, takes) in [
        (keys::IOPS, t.iops().is_some()),
        (keys::THROUGHPUT, t.throughput().is_some()),
    ] {
        if !takes && origin.get(k) == Some(&0) {
            merged.remove(k);
        }
    }
}

/// The merged settings being validated, and every problem found so far.
struct Settings<'a> {
    merged: BTreeMap<&'static str, &'a str>,
    problems: Vec<Problem>,
    /// Check the rules that tie settings together (off when one layer is checked alone).
    ties: bool,
    /// Check the number of extra tags (off for a spec read back from its import task).
    count_tags: bool,
    /// Settings whose value is the function's default (`DEFAULT_<SETTING>`), not an upload's.
    from_defaults: std::collections::BTreeSet<&'static str>,
}

impl<'a> Settings<'a> {
    /// A setting's value, trimmed; an empty value counts as absent.
    fn get(&self, k: &str) -> Option<&'a str> {
        self.merged
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn bad(&mut self, setting: &str, message: String) {
        self.problems.push(Problem {
            setting: setting.to_owned(),
            message,
        });
    }

    /// One of an enum's values, or a problem naming the allowed ones (then `fallback`).
    fn choice<T>(
        &mut self,
        k: &str,
        v: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
        fallback: T,
    ) -> T {
        parse(v).unwrap_or_else(|| {
            self.bad(k, format!("{v:?} is not one of: {}", allowed.trim()));
            fallback
        })
    }

    fn flag(&mut self, k: &str, default: bool) -> bool {
        match self.get(k) {
            None => default,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                _ => {
                    self.bad(k, format!("{v:?} is not a boolean (true or false)"));
                    default
                }
            },
        }
    }

    /// Architecture, boot mode, ENA, IMDSv2 and TPM, with the rules that tie them.
    fn boot(&mut self) -> (Architecture, BootMode, bool, bool, bool) {
        let architecture = match self.get(keys::ARCHITECTURE) {
            None => Architecture::X86_64,
            Some(v) => self.choice(
                keys::ARCHITECTURE,
                v,
                Architecture::parse,
                Architecture::allowed(),
                Architecture::X86_64,
            ),
        };
        let boot_mode = match self.get(keys::BOOT_MODE) {
            None if architecture == Architecture::Arm64 => BootMode::Uefi,
            None => BootMode::LegacyBios,
            Some(v) => self.choice(
                keys::BOOT_MODE,
                v,
                BootMode::parse,
                BootMode::allowed(),
                BootMode::Uefi,
            ),
        };
        let ena = self.flag(keys::ENA, true);
        let imds_v2 = self.flag(keys::IMDS_V2, true);
        let tpm = self.flag(keys::TPM, false);
        if !self.ties {
            return (architecture, boot_mode, ena, imds_v2, tpm);
        }
        if architecture == Architecture::Arm64 && boot_mode == BootMode::LegacyBios {
            self.bad(
                keys::BOOT_MODE,
                "arm64 images must boot with uefi; legacy-bios is x86_64 only".into(),
            );
        }
        if tpm && boot_mode != BootMode::Uefi {
            self.bad(
                keys::TPM,
                format!(
                    "NitroTPM requires boot-mode uefi, not {}",
                    boot_mode.as_str()
                ),
            );
        }
        (architecture, boot_mode, ena, imds_v2, tpm)
    }

    fn root_device(&mut self) -> String {
        let root_device = self
            .get(keys::ROOT_DEVICE)
            .unwrap_or("/dev/xvda")
            .to_owned();
        if !is_device_name(&root_device) {
            self.bad(
                keys::ROOT_DEVICE,
                format!("{root_device:?} is not a device name like /dev/xvda or /dev/sda1"),
            );
        }
        root_device
    }

    /// A whole number above 0, or a problem.
    fn positive(&mut self, k: &str) -> Option<u32> {
        let v = self.get(k)?;
        match v.parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.bad(k, format!("{v:?} is not a whole number above 0"));
                None
            }
        }
    }

    /// The rules that tie the root volume's settings to its type ([`VolumeType`]'s ranges).
    fn volume_ties(
        &mut self,
        volume_type: VolumeType,
        size: Option<u32>,
        iops: Option<u32>,
        throughput: Option<u32>,
    ) {
        if !self.ties {
            return;
        }
        let t = volume_type.as_str();
        if let Some(n) = size
            && !volume_type.sizes().contains(&n)
        {
            self.bad(
                keys::VOLUME_SIZE,
                format!(
                    "{n} GiB is outside {} GiB, the sizes of a {t} volume",
                    range_text(&volume_type.sizes())
                ),
            );
        }
        self.performance(
            keys::IOPS,
            iops,
            volume_type.iops(),
            t,
            ("provisioned IOPS", "", "gp3, io1 and io2 do"),
        );
        if let (Some(r), None) = (volume_type.iops(), iops)
            && volume_type.needs_iops()
        {
            self.bad(
                keys::VOLUME_TYPE,
                format!(
                    "{t} volumes need provisioned IOPS, which RegisterImage requires: set iops ({})",
                    range_text(&r)
                ),
            );
        }
        self.performance(
            keys::THROUGHPUT,
            throughput,
            volume_type.throughput(),
            t,
            ("throughput", " MiB/s", "only gp3 does"),
        );
        // The ratios, once every value is in its own range (one problem per setting).
        let refused = |k: &str| self.problems.iter().any(|p| p.setting == k);
        if [keys::VOLUME_SIZE, keys::IOPS, keys::THROUGHPUT]
            .iter()
            .any(|k| refused(k))
        {
            return;
        }
        for (key, message) in performance_ties(volume_type, size, iops, throughput) {
            // The function's defaults this problem involves: an IOPS problem its IOPS, a
            // throughput problem its throughput and the IOPS that bound it.
            let involved: &[&str] = if key == keys::IOPS {
                &[keys::IOPS]
            } else {
                &[keys::THROUGHPUT, keys::IOPS]
            };
            let defaulted: Vec<String> = involved
                .iter()
                .filter(|k| self.from_defaults.contains(*k))
                .map(|k| format!("{k} from {}", default_var(k)))
                .collect();
            let source = if defaulted.is_empty() {
                String::new()
            } else {
                format!(" ({})", defaulted.join(", "))
            };
            self.bad(key, format!("{message}{source}"));
        }
    }

    /// ` (from DEFAULT_<SETTING>)` when the function's default gave `key`'s value, else nothing.
    fn source(&self, key: &str) -> String {
        if self.from_defaults.contains(key) {
            format!(" (from {})", default_var(key))
        } else {
            String::new()
        }
    }

    /// One performance setting of a `t` volume against the range the type takes (`None`: it
    /// takes none). `(what, unit, takers)` word the problem.
    fn performance(
        &mut self,
        key: &str,
        value: Option<u32>,
        range: Option<std::ops::RangeInclusive<u32>>,
        t: &str,
        (what, unit, takers): (&str, &str, &str),
    ) {
        match (range, value) {
            (None, Some(_)) => self.bad(
                key,
                format!("{t} volumes take no {what} ({takers}); leave {key} unset"),
            ),
            (Some(r), Some(n)) if !r.contains(&n) => {
                let source = self.source(key);
                self.bad(
                    key,
                    format!(
                        "{n}{unit}{source} is outside {}{unit}, the {what} of a {t} volume",
                        range_text(&r)
                    ),
                )
            }
            _ => {}
        }
    }

    fn volume_size(&mut self) -> Option<u32> {
        let v = self.get(keys::VOLUME_SIZE)?;
        match v.parse::<u32>() {
            Ok(n) if (1..=MAX_VOLUME_GIB).contains(&n) => Some(n),
            _ => {
                self.bad(
                    keys::VOLUME_SIZE,
                    format!("{v:?} is not a whole number of GiB from 1 to {MAX_VOLUME_GIB}"),
                );
                None
            }
        }
    }

    fn family(&mut self, key: &str) -> String {
        let Some(v) = self.get(keys::FAMILY) else {
            if let Some(problem) = naming::family_source_problem(key) {
                self.bad(keys::FAMILY, problem);
            }
            return naming::family_from_key(key);
        };
        let s = naming::slug(v, 64);
        if s != v {
            self.bad(
                keys::FAMILY,
                format!(
                    "{v:?} must be lowercase letters, digits and single dashes, at most 64 (e.g. {s:?})"
                ),
            );
        }
        s
    }

    fn name_prefix(&mut self, family: &str) -> String {
        let name_prefix = self
            .get(keys::NAME_PREFIX)
            .map_or_else(|| family.to_owned(), str::to_owned);
        let bad_chars: String = name_prefix
            .chars()
            .filter(|c| !naming::is_name_char(*c))
            .collect();
        if !bad_chars.is_empty() {
            self.bad(
                keys::NAME_PREFIX,
                format!(
                    "{name_prefix:?} contains characters EC2 does not allow in names ({bad_chars:?})"
                ),
            );
        } else if name_prefix.chars().count() > 96 {
            self.bad(
                keys::NAME_PREFIX,
                "must be at most 96 characters (the timestamp and suffix take the rest)".into(),
            );
        }
        name_prefix
    }

    fn description(&mut self) -> Option<String> {
        let description = self.get(keys::DESCRIPTION).map(str::to_owned);
        if let Some(n) = description
            .as_ref()
            .map(|d| d.chars().count())
            .filter(|n| *n > MAX_DESCRIPTION)
        {
            self.bad(
                keys::DESCRIPTION,
                format!("must be at most {MAX_DESCRIPTION} characters, got {n}"),
            );
        }
        if description
            .as_deref()
            .is_some_and(|d| d.chars().any(crate::text::is_hidden))
        {
            self.bad(
                keys::DESCRIPTION,
                "contains control or bidi characters".into(),
            );
        }
        description
    }

    /// The user's extra tags (`key=value&…`): reserved keys, lengths and count checked.
    fn extra_tags(&mut self) -> Tags {
        let mut extra_tags = Tags::new();
        let Some(v) = self.get(keys::TAGS) else {
            return extra_tags;
        };
        // The key also goes on the import task under EXTRA_TAG_PREFIX, within EC2's limit.
        let max_key = MAX_EC2_TAG_KEY - EXTRA_TAG_PREFIX.len();
        for (k, val) in form_urlencoded::parse(v.as_bytes()) {
            if k.is_empty() || k.chars().count() > max_key {
                self.bad(
                    keys::TAGS,
                    format!("tag key {k:?} must be 1–{max_key} characters"),
                );
            } else if k.starts_with("aws:") || k.starts_with(NS) || lineage_key(&k) {
                self.bad(
                    keys::TAGS,
                    format!("tag key {k:?} is reserved (aws:, {NS} and the lineage keys)"),
                );
            } else if k.starts_with(PUBLISH_TAG_PREFIX) {
                self.bad(
                    keys::TAGS,
                    format!(
                        "tag key {k:?} is reserved: publish policy comes from the operator's \
                         configuration and manual publish invokes, not from an upload"
                    ),
                );
            } else if k.chars().chain(val.chars()).any(crate::text::is_hidden) {
                // Refused rather than escaped: the uploader's tag is written as given or not
                // at all (shared::text names the characters).
                self.bad(
                    keys::TAGS,
                    format!("tag {k:?} contains control or bidi characters"),
                );
            } else if val.chars().count() > MAX_TAG_VALUE {
                self.bad(
                    keys::TAGS,
                    format!("value of tag {k:?} is longer than {MAX_TAG_VALUE} characters"),
                );
            } else {
                extra_tags.insert(k.into_owned(), val.into_owned());
            }
        }
        if self.count_tags && extra_tags.len() > MAX_EXTRA_TAGS {
            self.bad(
                keys::TAGS,
                format!(
                    "at most {MAX_EXTRA_TAGS} extra tags, got {}",
                    extra_tags.len()
                ),
            );
        }
        extra_tags
    }
}

/// Prefix of the publish policy tags ([`super::tags::publish`]): written by publish only.
pub const PUBLISH_TAG_PREFIX: &str = "publish:";

/// What an uploader may choose: the operator's bounds on the object-metadata layer.
///
/// Whoever can write to the upload bucket is not the operator. The function's defaults
/// (`DEFAULT_*`) and a manual invoke are the operator's; the object's metadata is the
/// uploader's, and only the settings listed here may come from it, each within its bound.
/// Sharing, publicity and target regions are never upload settings (the `publish:` tag keys
/// are reserved in every layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadBounds {
    /// Setting keys the metadata may set (`UPLOAD_SETTINGS`).
    pub settings: Vec<String>,
    /// Largest `volume-size` the metadata may ask for, GiB (`UPLOAD_MAX_VOLUME_GIB`).
    pub max_volume_gib: u32,
    /// Extra tag keys the metadata may set (`UPLOAD_TAG_KEYS`): exact keys, or prefixes
    /// ending in `*`.
    pub tag_keys: Vec<String>,
}

/// The settings an upload may choose unless the operator says otherwise: how the disk boots
/// and what the image is called. Not `imds-v2` (a security posture), `family` (cleanup's
/// retention group: derived from the key's folder) or `tags` (other IAM policies may trust
/// tags).
pub const DEFAULT_UPLOAD_SETTINGS: [&str; 10] = [
    keys::ARCHITECTURE,
    keys::BOOT_MODE,
    keys::ENA,
    keys::TPM,
    keys::ROOT_DEVICE,
    keys::VOLUME_SIZE,
    keys::VOLUME_TYPE,
    keys::NAME,
    keys::NAME_PREFIX,
    keys::DESCRIPTION,
];

/// Default of [`UploadBounds::max_volume_gib`].
pub const DEFAULT_UPLOAD_MAX_VOLUME_GIB: u32 = 1024;

impl Default for UploadBounds {
    fn default() -> Self {
        UploadBounds {
            settings: DEFAULT_UPLOAD_SETTINGS.map(str::to_owned).to_vec(),
            max_volume_gib: DEFAULT_UPLOAD_MAX_VOLUME_GIB,
            tag_keys: Vec::new(),
        }
    }
}

impl UploadBounds {
    /// Whether the uploader may set the extra tag `key`.
    pub fn allows_tag(&self, key: &str) -> bool {
        self.tag_keys.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => p == key,
        })
    }

    /// The problems of an operator's bounds (configuration errors), as `(variable, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for s in &self.settings {
            if !keys::ALL.contains(&s.as_str()) {
                out.push((
                    "UPLOAD_SETTINGS",
                    format!("{s:?} is not a setting (one of: {})", keys::ALL.join(", ")),
                ));
            }
        }
        if self.settings.iter().any(|s| s == keys::TAGS) && self.tag_keys.is_empty() {
            out.push((
                "UPLOAD_TAG_KEYS",
                "UPLOAD_SETTINGS lets uploads set tags, so list the keys they may set \
                 (e.g. team,env or app-*)"
                    .to_owned(),
            ));
        }
        for p in &self.tag_keys {
            let bare = p.strip_suffix('*').unwrap_or(p);
            if bare.is_empty()
                || bare.starts_with("aws:")
                || bare.starts_with(NS)
                || bare.starts_with(PUBLISH_TAG_PREFIX)
                || NS.starts_with(bare)
                || PUBLISH_TAG_PREFIX.starts_with(bare)
                || lineage_key(bare)
            {
                out.push((
                    "UPLOAD_TAG_KEYS",
                    format!(
                        "{p:?} would let uploads set reserved keys (aws:, {NS}, \
                         {PUBLISH_TAG_PREFIX} and the lineage keys)"
                    ),
                ));
            }
        }
        out
    }
}

/// What the object's metadata (the uploader's layer) asks for beyond the operator's
/// [`UploadBounds`]: settings the operator keeps, a volume above the bound, tag keys not
/// allowed, a family outside the key's folder. Each problem names the setting and the
/// variable that would allow it. The values' own form is checked by [`resolve`].
pub fn upload_problems(
    metadata: &BTreeMap<String, String>,
    key: &str,
    bounds: &UploadBounds,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |setting: &str, message: String| {
        out.push(Problem {
            setting: setting.to_owned(),
            message,
        });
    };
    for setting in keys::ALL {
        let Some(value) = metadata
            .get(setting)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        if !bounds.settings.iter().any(|s| s == setting) {
            bad(
                setting,
                "is chosen by the operator, not by an upload (UPLOAD_SETTINGS does not list it)"
                    .to_owned(),
            );
            continue;
        }
        match setting {
            keys::VOLUME_SIZE
                if value
                    .parse::<u32>()
                    .is_ok_and(|n| n > bounds.max_volume_gib) =>
            {
                bad(
                    setting,
                    format!(
                        "{value} GiB is above the {} GiB an upload may ask for \
                         (UPLOAD_MAX_VOLUME_GIB)",
                        bounds.max_volume_gib
                    ),
                );
            }
            keys::TAGS => {
                for (k, _) in form_urlencoded::parse(value.as_bytes()) {
                    if !bounds.allows_tag(&k) {
                        bad(
                            setting,
                            format!("tag key {k:?} is not one uploads may set (UPLOAD_TAG_KEYS)"),
                        );
                    }
                }
            }
            keys::FAMILY
                if value != naming::family_from_key(key)
                    && !value.starts_with(&format!("{}-", naming::family_from_key(key))) =>
            {
                let own = naming::family_from_key(key);
                bad(
                    setting,
                    format!(
                        "{value:?} is outside this upload's folder: an upload under it may \
                         name {own:?} or a family starting with \"{own}-\""
                    ),
                );
            }
            _ => {}
        }
    }
    out
}

fn lineage_key(k: &str) -> bool {
    [
        lineage::SOURCE_IMAGE,
        lineage::SOURCE_INSTANCE,
        lineage::SOURCE_REGION,
        lineage::CREATE_DATE,
        lineage::CREATE_TIMESTAMP,
    ]
    .contains(&k)
}

fn is_device_name(s: &str) -> bool {
    s.strip_prefix("/dev/").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 16 && rest.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

impl ImageSpec {
    /// The spec as settings (the inverse of [`resolve`]'s input).
    pub fn to_settings(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_owned(), v);
        };
        put(keys::ARCHITECTURE, self.architecture.as_str().into());
        put(keys::BOOT_MODE, self.boot_mode.as_str().into());
        put(keys::ENA, self.ena.to_string());
        put(keys::IMDS_V2, self.imds_v2.to_string());
        put(keys::TPM, self.tpm.to_string());
        put(keys::ROOT_DEVICE, self.root_device.clone());
        if let Some(n) = self.volume_size_gib {
            put(keys::VOLUME_SIZE, n.to_string());
        }
        put(keys::VOLUME_TYPE, self.volume_type.as_str().into());
        if let Some(n) = self.iops {
            put(keys::IOPS, n.to_string());
        }
        if let Some(n) = self.throughput {
            put(keys::THROUGHPUT, n.to_string());
        }
        if let Some(n) = &self.name {
            put(keys::NAME, n.clone());
        }
        put(keys::NAME_PREFIX, self.name_prefix.clone());
        if let Some(d) = &self.description {
            put(keys::DESCRIPTION, d.clone());
        }
        put(keys::FAMILY, self.family.clone());
        m
    }

    /// The spec as import-task tags: settings under [`SPEC_TAG_PREFIX`], extra tags under
    /// [`EXTRA_TAG_PREFIX`], and the family under its lineage key.
    pub fn to_tags(&self) -> Tags {
        let mut tags: Tags = self
            .to_settings()
            .into_iter()
            .map(|(k, v)| (format!("{SPEC_TAG_PREFIX}{k}"), v))
            .collect();
        for (k, v) in &self.extra_tags {
            tags.insert(format!("{EXTRA_TAG_PREFIX}{k}"), v.clone());
        }
        tags.insert(FAMILY.to_owned(), self.family.clone());
        tags
    }

    /// Reads a spec back from import-task tags, validating it again (tags can be edited by
    /// hand between import and registration).
    pub fn from_tags(tags: &Tags) -> Result<ImageSpec, Vec<Problem>> {
        let mut settings: BTreeMap<String, String> = tags
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(SPEC_TAG_PREFIX)
                    .map(|k| (k.to_owned(), v.clone()))
            })
            .collect();
        let extra: Vec<(String, String)> = tags
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(EXTRA_TAG_PREFIX)
                    .map(|k| (k.to_owned(), v.clone()))
            })
            .collect();
        if !extra.is_empty() {
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(extra)
                .finish();
            settings.insert(keys::TAGS.to_owned(), encoded);
        }
        validate(&[&settings], "", Check::ReadBack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let spec = resolve(&[], "images/web/disk.raw").expect("valid");
        assert_eq!(spec.architecture, Architecture::X86_64);
        assert_eq!(spec.boot_mode, BootMode::LegacyBios);
        assert!(spec.ena && spec.imds_v2 && !spec.tpm);
        assert_eq!(spec.root_device, "/dev/xvda");
        assert_eq!(spec.family, "images-web");
        assert_eq!(spec.name_prefix, "images-web");
        assert_eq!(spec.volume_type, VolumeType::Gp3);
    }

    #[test]
    fn later_layers_win_and_arm64_defaults_to_uefi() {
        let defaults = map(&[("architecture", "x86_64"), ("family", "base")]);
        let metadata = map(&[("architecture", "ARM64"), ("unrelated", "ignored")]);
        let spec = resolve(&[&defaults, &metadata], "k.raw").expect("valid");
        assert_eq!(spec.architecture, Architecture::Arm64);
        assert_eq!(spec.boot_mode, BootMode::Uefi);
        assert_eq!(spec.family, "base");
    }

    #[test]
    fn every_problem_is_listed() {
        let metadata = map(&[
            ("architecture", "sparc"),
            ("boot-mode", "bios"),
            ("ena", "maybe"),
            ("volume-size", "-3"),
            ("volume-type", "ssd"),
            ("name", "bad*name"),
            ("root-device", "xvda"),
            ("family", "Not A Slug"),
            ("tags", "aws:x=1&ok=2"),
        ]);
        let problems = resolve(&[&metadata], "k.raw").err().unwrap_or_default();
        let settings: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "architecture",
                "boot-mode",
                "ena",
                "root-device",
                "volume-size",
                "volume-type",
                "name",
                "family",
                "tags"
            ]
        );
    }

    /// (setting, message) of each problem of one layer of settings.
    fn problems_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        resolve(&[&map(pairs)], "k.raw")
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.setting, p.message))
            .collect()
    }

    #[test]
    fn provisioned_iops_need_iops_and_each_type_its_own_ranges() {
        // io1/io2 without IOPS: RegisterImage would refuse them after the import.
        for v in ["io1", "IO2"] {
            let p = problems_of(&[("volume-type", v)]);
            assert_eq!(p.len(), 1, "{v}: {p:?}");
            assert_eq!(p[0].0, "volume-type");
            assert!(p[0].1.contains("set iops (100–"), "{p:?}");
        }
        let spec = resolve(
            &[&map(&[
                ("volume-type", "io2"),
                ("iops", "4000"),
                ("volume-size", "8"),
            ])],
            "k.raw",
        )
        .expect("io2 with IOPS");
        assert_eq!(
            (spec.volume_type, spec.iops),
            (VolumeType::Io2, Some(4_000))
        );
        let spec = resolve(
            &[&map(&[
                ("iops", "6000"),
                ("throughput", "250"),
                ("volume-size", "12"),
            ])],
            "k.raw",
        )
        .expect("gp3 (the default) with IOPS and throughput");
        assert_eq!((spec.iops, spec.throughput), (Some(6_000), Some(250)));
    }

    #[test]
    fn a_default_iops_or_throughput_holds_only_where_the_chosen_type_takes_it() {
        let defaults = map(&[("iops", "6000"), ("throughput", "250")]);
        let layers = |upload: &[(&str, &str)]| {
            resolve(&[&defaults, &map(upload), &map(&[])], "k.raw")
                .map(|s| (s.volume_type, s.iops, s.throughput))
                .map_err(|ps| ps.iter().map(Problem::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            layers(&[]),
            Ok((VolumeType::Gp3, Some(6_000), Some(250))),
            "the default type takes both"
        );
        assert_eq!(
            layers(&[("volume-type", "gp2")]),
            Ok((VolumeType::Gp2, None, None))
        );
        assert_eq!(
            layers(&[("volume-type", "standard")]),
            Ok((VolumeType::Standard, None, None))
        );
        // io1 takes the IOPS (in its range), not the throughput.
        assert_eq!(
            layers(&[("volume-type", "io1")]),
            Ok((VolumeType::Io1, Some(6_000), None))
        );
        // A manual invoke's type (the last layer) is a choice as well.
        let spec = resolve(
            &[&defaults, &map(&[]), &map(&[("volume-type", "gp2")])],
            "k.raw",
        )
        .expect("the operator's gp2");
        assert_eq!((spec.iops, spec.throughput), (None, None));
        // What the upload sets itself is still refused.
        let p = layers(&[("volume-type", "gp2"), ("iops", "3000")]).expect_err("refused");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("iops: gp2 volumes take no provisioned IOPS"),
            "{p:?}"
        );
        // A default out of the chosen type's range is refused, not dropped.
        let p = resolve(
            &[&map(&[("iops", "80000")]), &map(&[("volume-type", "io1")])],
            "k.raw",
        )
        .expect_err("outside io1's range");
        assert!(p[0].message.contains("100–64,000"), "{p:?}");
        assert!(
            p[0].message
                .starts_with("80000 (from DEFAULT_IOPS) is outside"),
            "the uploader did not set it: {p:?}"
        );
        // The function's own defaults contradicting each other are refused (config checks them
        // as one layer).
        let p = problems_of(&[("volume-type", "gp2"), ("iops", "3000")]);
        assert_eq!(p.len(), 1, "{p:?}");
        // A read-back spec is what was resolved: nothing is dropped from it.
        let p = validate(
            &[&defaults, &map(&[("volume-type", "gp2")])],
            "k.raw",
            Check::ReadBack,
        )
        .expect_err("read back as stored");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn iops_beyond_what_the_size_takes_and_throughput_beyond_the_iops_are_refused() {
        // The EBS ratios: gp3 500 IOPS per GiB (its 3,000 baseline at any size), io1 50, io2
        // 1,000; gp3 0.25 MiB/s per IOPS. At the limit: accepted.
        for ok in [
            &[("iops", "16000"), ("volume-size", "32")][..],
            &[("iops", "3000"), ("volume-size", "1")][..],
            &[
                ("volume-type", "io1"),
                ("iops", "200"),
                ("volume-size", "4"),
            ][..],
            &[
                ("volume-type", "io2"),
                ("iops", "4000"),
                ("volume-size", "4"),
            ][..],
            &[("throughput", "750")][..],
            &[("throughput", "1000"), ("iops", "4000")][..],
            // Size unknown (the disk's): only the registration can tell.
            &[("iops", "80000")][..],
        ] {
            assert_eq!(problems_of(ok), [], "{ok:?}");
        }
        for (pairs, setting, text) in [
            (
                &[("iops", "16000"), ("volume-size", "31")][..],
                "iops",
                "16,000 IOPS is more than a gp3 volume of 31 GiB takes: at most 15,500 (500 IOPS per GiB); set volume-size to at least 32 GiB, or iops to at most 15,500",
            ),
            (
                &[("iops", "3001"), ("volume-size", "1")][..],
                "iops",
                "at most 3,000 (500 IOPS per GiB); set volume-size to at least 7 GiB",
            ),
            (
                &[
                    ("volume-type", "io1"),
                    ("iops", "201"),
                    ("volume-size", "4"),
                ][..],
                "iops",
                "more than an io1 volume of 4 GiB takes: at most 200 (50 IOPS per GiB); set volume-size to at least 5 GiB",
            ),
            (
                &[
                    ("volume-type", "io2"),
                    ("iops", "8001"),
                    ("volume-size", "8"),
                ][..],
                "iops",
                "at most 8,000 (1000 IOPS per GiB); set volume-size to at least 9 GiB",
            ),
            (
                &[("throughput", "751")][..],
                "throughput",
                "751 MiB/s is more than a gp3 volume with 3,000 IOPS (the baseline; iops is not set) takes: at most 750 MiB/s (0.25 MiB/s per IOPS); set iops to at least 3,004, or throughput to at most 750",
            ),
            (
                &[("throughput", "2000"), ("iops", "7999")][..],
                "throughput",
                "with 7,999 IOPS takes: at most 1999 MiB/s",
            ),
        ] {
            let p = problems_of(pairs);
            assert_eq!(p.len(), 1, "{pairs:?}: {p:?}");
            assert_eq!(p[0].0, setting, "{pairs:?}");
            assert!(p[0].1.contains(text), "{pairs:?}: {p:?}");
        }
        // Both at once: one problem each.
        let p = problems_of(&[
            ("iops", "4000"),
            ("volume-size", "4"),
            ("throughput", "1001"),
        ]);
        assert_eq!(
            p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["iops", "throughput"],
            "{p:?}"
        );
        // A value outside its own range is refused for that alone, not for the ratio as well.
        let p = problems_of(&[("iops", "90000"), ("volume-size", "1")]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("outside 3,000–80,000"), "{p:?}");
    }

    #[test]
    fn a_ratio_refusal_names_the_defaults_it_involves() {
        let p = resolve(
            &[
                &map(&[("iops", "16000"), ("throughput", "1000")]),
                &map(&[("volume-size", "8")]),
            ],
            "k.raw",
        )
        .expect_err("8 GiB takes 4,000 IOPS");
        // Each problem names the defaults it involves: the IOPS one its IOPS, the throughput
        // one its throughput and the IOPS that bound it.
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.ends_with(" (iops from DEFAULT_IOPS)"), "{p:?}");
        let p = resolve(
            &[
                &map(&[("iops", "3000"), ("throughput", "1000")]),
                &map(&[("volume-size", "1")]),
            ],
            "k.raw",
        )
        .expect_err("3,000 IOPS carry 750 MiB/s");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.ends_with(
                "set iops to at least 4,000 and volume-size to at least 8 GiB, or throughput to at most 750 (throughput from DEFAULT_THROUGHPUT, iops from DEFAULT_IOPS)"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn max_iops_follows_the_size_within_the_range() {
        assert_eq!(VolumeType::Gp3.max_iops(1), Some(3_000));
        assert_eq!(VolumeType::Gp3.max_iops(7), Some(3_500));
        assert_eq!(VolumeType::Gp3.max_iops(1_000), Some(80_000));
        assert_eq!(VolumeType::Io1.max_iops(4), Some(200));
        assert_eq!(VolumeType::Io1.max_iops(16_384), Some(64_000));
        assert_eq!(VolumeType::Io2.max_iops(65_536), Some(256_000));
        assert_eq!(VolumeType::Gp2.max_iops(100), None);
        assert_eq!(VolumeType::Standard.max_iops(100), None);
    }

    #[test]
    fn each_volume_type_refuses_what_ec2_would_with_its_range() {
        // Each refusal names the setting and the type's range.
        for (pairs, setting, text) in [
            (&[("iops", "2000")][..], "iops", "outside 3,000–80,000"),
            (
                &[("volume-type", "io1"), ("iops", "64001")][..],
                "iops",
                "100–64,000",
            ),
            (
                &[("volume-type", "gp2"), ("iops", "3000")][..],
                "iops",
                "take no provisioned IOPS",
            ),
            (
                &[
                    ("volume-type", "io1"),
                    ("iops", "100"),
                    ("throughput", "125"),
                ][..],
                "throughput",
                "only gp3",
            ),
            (&[("throughput", "2001")][..], "throughput", "125–2,000"),
            (
                &[("volume-type", "standard"), ("volume-size", "1025")][..],
                "volume-size",
                "1–1,024 GiB",
            ),
            (
                &[
                    ("volume-type", "io1"),
                    ("iops", "100"),
                    ("volume-size", "3"),
                ][..],
                "volume-size",
                "4–16,384",
            ),
            (&[("volume-size", "65537")][..], "volume-size", "1 to 65536"),
            (&[("iops", "many")][..], "iops", "not a whole number"),
        ] {
            let p = problems_of(pairs);
            assert_eq!(p.len(), 1, "{pairs:?}: {p:?}");
            assert_eq!(p[0].0, setting, "{pairs:?}: {p:?}");
            assert!(p[0].1.contains(text), "{pairs:?}: {p:?}");
        }
        // gp3 and io2 go to 64 TiB, gp2 stops at 16 TiB.
        assert!(resolve(&[&map(&[("volume-size", "65536")])], "k.raw").is_ok());
        assert!(problems_of(&[("volume-type", "gp2"), ("volume-size", "16385")]).len() == 1);
        for v in ["gp3", "gp2", "standard"] {
            let spec = resolve(&[&map(&[("volume-type", v)])], "k.raw").expect(v);
            assert_eq!(spec.volume_type.as_str(), v);
        }
        // One layer on its own: the ranges tie to the type, which another layer may set.
        assert!(value_problems(&map(&[("iops", "100")]), "k.raw").is_empty());
        assert_eq!(value_problems(&map(&[("iops", "0")]), "k.raw").len(), 1);
    }

    #[test]
    fn provisioned_iops_round_trip_through_the_task_tags() {
        let spec = resolve(
            &[&map(&[
                ("volume-type", "io1"),
                ("iops", "2000"),
                ("volume-size", "40"),
            ])],
            "k.raw",
        )
        .expect("valid");
        assert_eq!(
            ImageSpec::from_tags(&spec.to_tags()).expect("round trip"),
            spec
        );
        let spec = resolve(&[&map(&[("throughput", "500")])], "k.raw").expect("valid");
        assert_eq!(
            ImageSpec::from_tags(&spec.to_tags()).expect("round trip"),
            spec
        );
    }

    #[test]
    fn hidden_characters_in_tags_and_descriptions_are_refused() {
        for (k, v) in [
            ("tags", "owner=a%E2%80%AEb"),
            ("tags", "own%1Ber=x"),
            ("description", "a\u{202e}b"),
        ] {
            let problems = resolve(&[&map(&[(k, v)])], "k.raw")
                .err()
                .unwrap_or_default();
            assert_eq!(problems.len(), 1, "{k}={v}: {problems:?}");
            assert_eq!(problems[0].setting, k);
        }
    }

    #[test]
    fn arm64_with_legacy_bios_and_tpm_without_uefi_are_rejected() {
        let p = resolve(
            &[&map(&[
                ("architecture", "arm64"),
                ("boot-mode", "legacy-bios"),
            ])],
            "k",
        )
        .err();
        assert_eq!(
            p.map(|p| p[0].message.clone()),
            Some("arm64 images must boot with uefi; legacy-bios is x86_64 only".into())
        );
        let p = resolve(
            &[&map(&[("tpm", "true"), ("boot-mode", "uefi-preferred")])],
            "k",
        )
        .err();
        assert_eq!(p.map(|p| p[0].setting.clone()), Some("tpm".into()));
        assert!(resolve(&[&map(&[("tpm", "true"), ("boot-mode", "uefi")])], "k").is_ok());
    }

    #[test]
    fn uploads_choose_only_what_the_operator_lets_them() {
        let bounds = UploadBounds::default();
        let metadata = map(&[
            ("architecture", "arm64"),
            ("imds-v2", "false"),
            ("volume-size", "16384"),
            ("family", "other-team"),
            ("tags", "team=web"),
            ("unrelated", "x"),
        ]);
        let problems = upload_problems(&metadata, "web/disk.raw", &bounds);
        let settings: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(settings, ["imds-v2", "volume-size", "family", "tags"]);
        assert!(
            problems[0].message.contains("UPLOAD_SETTINGS"),
            "{problems:?}"
        );
        assert!(problems[1].message.contains("1024 GiB"), "{problems:?}");
        // Within the bounds: nothing to say.
        let fine = map(&[("architecture", "arm64"), ("volume-size", "1024")]);
        assert!(upload_problems(&fine, "web/disk.raw", &bounds).is_empty());
    }

    #[test]
    fn allowed_tags_and_families_stay_inside_their_bounds() {
        let bounds = UploadBounds {
            settings: vec!["tags".into(), "family".into()],
            max_volume_gib: 10,
            tag_keys: vec!["team".into(), "app-*".into()],
        };
        assert!(bounds.problems().is_empty());
        let ok = map(&[("tags", "team=a&app-name=b"), ("family", "web-canary")]);
        assert!(upload_problems(&ok, "web/disk.raw", &bounds).is_empty());
        let bad = map(&[("tags", "team=a&owner=b"), ("family", "webby")]);
        let problems = upload_problems(&bad, "web/disk.raw", &bounds);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].message.contains("\"webby\" is outside"),
            "{problems:?}"
        );
        assert!(problems[1].message.contains("\"owner\""), "{problems:?}");
    }

    #[test]
    fn operator_bounds_that_would_open_reserved_keys_are_refused() {
        for keys in [
            "ami-pipeline:*",
            "publish:regions",
            "pub*",
            "*",
            "aws:x",
            "source_image",
        ] {
            let b = UploadBounds {
                settings: vec!["tags".into()],
                tag_keys: vec![keys.into()],
                ..UploadBounds::default()
            };
            assert_eq!(b.problems().len(), 1, "{keys}: {:?}", b.problems());
        }
        let b = UploadBounds {
            settings: vec!["tags".into(), "colour".into()],
            ..UploadBounds::default()
        };
        let vars: Vec<&str> = b.problems().iter().map(|p| p.0).collect();
        assert_eq!(vars, ["UPLOAD_SETTINGS", "UPLOAD_TAG_KEYS"]);
    }

    #[test]
    fn publish_tags_are_reserved_in_every_layer() {
        let p = resolve(&[&map(&[("tags", "publish:public=true")])], "k.raw")
            .err()
            .unwrap_or_default();
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("publish policy"), "{p:?}");
    }

    #[test]
    fn a_folder_that_is_not_its_family_verbatim_is_refused() {
        for key in [
            "images/Web Base/x.raw",
            "web_base/x.raw",
            "Web.raw",
            "a//b/x.raw",
        ] {
            let p = resolve(&[], key).err().unwrap_or_default();
            assert_eq!(p.len(), 1, "{key}: {p:?}");
            assert_eq!(p[0].setting, "family");
        }
        assert_eq!(
            resolve(&[], "images/web-base/x.raw").map(|s| s.family),
            Ok("images-web-base".to_owned())
        );
        // The operator naming the family (a manual invoke) needs no canonical folder.
        let manual = map(&[("family", "web-base")]);
        assert!(resolve(&[&manual], "images/Web Base/x.raw").is_ok());
    }

    #[test]
    fn at_most_twenty_extra_tags() {
        let tags = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert!(resolve(&[&map(&[("tags", &tags(20))])], "k.raw").is_ok());
        let problems = resolve(&[&map(&[("tags", &tags(21))])], "k.raw")
            .err()
            .unwrap_or_default();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("at most 20 extra tags, got 21")
        );
    }

    #[test]
    fn a_task_started_with_more_extra_tags_than_now_allowed_is_still_read_back() {
        // 25 was the bound before 20: a task started then must still register.
        let mut tags = resolve(&[], "k.raw").expect("valid").to_tags();
        for i in 0..25 {
            tags.insert(format!("{EXTRA_TAG_PREFIX}k{i}"), "v".into());
        }
        let spec = ImageSpec::from_tags(&tags).expect("read back");
        assert_eq!(spec.extra_tags.len(), 25);
    }

    #[test]
    fn an_extra_tag_key_fits_ec2s_key_limit_under_the_task_prefix() {
        // 108 characters: 127 with "ami-pipeline:extra:" on the import task.
        let longest = "k".repeat(108);
        let spec = resolve(&[&map(&[("tags", &format!("{longest}=v"))])], "k.raw")
            .expect("108 characters fit");
        assert!(
            spec.to_tags()
                .keys()
                .all(|k| k.chars().count() <= MAX_EC2_TAG_KEY)
        );
        let problems = resolve(&[&map(&[("tags", &format!("{longest}k=v"))])], "k.raw")
            .err()
            .unwrap_or_default();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("1–108"), "{problems:?}");
    }

    #[test]
    fn spec_round_trips_through_tags() {
        let metadata = map(&[
            ("architecture", "arm64"),
            ("tpm", "true"),
            ("volume-size", "20"),
            ("name", "my image (1)"),
            ("description", "hello, world & more"),
            ("tags", "team=web&cost+center=a%26b"),
        ]);
        let spec = resolve(&[&metadata], "x/y.raw").expect("valid");
        assert_eq!(
            spec.extra_tags.get("cost center").map(String::as_str),
            Some("a&b")
        );
        let back = ImageSpec::from_tags(&spec.to_tags()).expect("round trip");
        assert_eq!(back, spec);
    }
}
