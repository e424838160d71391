//! Deterministic names and idempotency tokens.
//!
//! The same upload must always map to the same token and the same default image name, so that
//! an event delivered five times, or a sweep repeated after a crash, converges on one import
//! task and one AMI.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// EC2's limits on an AMI name (RegisterImage API reference).
pub const NAME_MIN: usize = 3;
/// See [`NAME_MIN`].
pub const NAME_MAX: usize = 128;

/// Whether `c` is allowed in an AMI name: letters, digits, `()[] ./-'@_`.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c)
}

/// Checks an AMI name against EC2's rules; the error says what is wrong.
pub fn check_image_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if !(NAME_MIN..=NAME_MAX).contains(&len) {
        return Err(format!(
            "image name must be {NAME_MIN}–{NAME_MAX} characters, got {len}"
        ));
    }
    let bad: String = name.chars().filter(|c| !is_name_char(*c)).collect();
    if !bad.is_empty() {
        return Err(format!(
            "image name {name:?} contains characters EC2 does not allow ({bad:?}); allowed: letters, digits and ()[] ./-'@_"
        ));
    }
    Ok(())
}

/// The idempotency token of an upload: sha256 over bucket, key and version (or ETag when the
/// bucket is unversioned), hex-encoded — 64 ASCII characters, the most ClientToken allows.
pub fn source_token(bucket: &str, key: &str, version_or_etag: &str) -> String {
    let mut h = Sha256::new();
    for part in [bucket, key, version_or_etag] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Turns arbitrary text (a key prefix, a file name) into a family/prefix slug: lowercase ASCII
/// letters, digits and `-`, no leading/trailing/double dashes, at most `max` characters.
pub fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// The default family of an upload: its key prefix (the "folder"), or the file's stem when it
/// sits at the bucket root; `image` when neither gives anything usable.
pub fn family_from_key(key: &str) -> String {
    let (dir, file) = match key.rsplit_once('/') {
        Some((dir, file)) => (dir, file),
        None => ("", key),
    };
    let from_dir = slug(dir, 64);
    if !from_dir.is_empty() {
        return from_dir;
    }
    let stem = file.split('.').next().unwrap_or_default();
    let from_file = slug(stem, 64);
    if from_file.is_empty() {
        "image".to_owned()
    } else {
        from_file
    }
}

/// Why `key`'s folder (or, at the bucket root, its file stem) cannot name a family as it is,
/// or None when it can.
///
/// A family is cleanup's retention group, so two folders must never share one: a folder
/// names a family only when [`family_from_key`] keeps it verbatim (lowercase letters, digits
/// and single dashes, `/` becoming `-`, at most 64 characters). `Web Base/`, `web_base/` and
/// `web-base/` would all become `web-base`; only the last is accepted, and the others are
/// refused with the spelling to use rather than merged into its family.
/// An empty key (settings checked without an upload, e.g. the function's defaults) has
/// nothing to derive from and no problem.
pub fn family_source_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let (what, source, joined) = match key.rsplit_once('/') {
        Some((dir, _)) => ("folder", dir, dir.replace('/', "-")),
        None => {
            let stem = key.split('.').next().unwrap_or_default();
            ("file name", stem, stem.to_owned())
        }
    };
    let family = family_from_key(key);
    if family == joined {
        return None;
    }
    Some(format!(
        "the {what} {source:?} does not name a family as it is: families are derived from it \
         verbatim so that no two folders share one; use lowercase letters, digits and single \
         dashes, at most 64 characters (e.g. {family:?})"
    ))
}

/// The folder of an upload's `s3://bucket/key` URI, up to and including its last `/`
/// (`s3://bucket/` for a key at the root): what owns the upload's family. None when the URI
/// was shortened to fit a tag value ([`super::lineage::fit_tag_value`] cuts the middle, which
/// may cut the folder; a fast-path upload's URI is cut to the EBS limit, one character shorter)
/// or has no folder at all.
pub fn upload_folder(source_uri: &str) -> Option<&str> {
    if source_uri.contains('…') && source_uri.chars().count() >= super::lineage::MAX_EBS_TAG_VALUE
    {
        return None;
    }
    let after_scheme = source_uri.find("://").map_or(0, |i| i + 3);
    source_uri[after_scheme..]
        .rfind('/')
        .map(|i| &source_uri[..after_scheme + i + 1])
}

/// AMITools-style automatic name `<prefix>-<YYYYMMDDTHHMMSSZ>-<8 hex>`.
///
/// The "random" part is derived from the upload's token and `attempt`, so a repeated sweep
/// produces the same name (and RegisterImage's duplicate check then guards against a second
/// image); `attempt` > 0 is used only when a foreign image already holds the name. The prefix is
/// cleaned and cut so the result always satisfies [`check_image_name`].
pub fn auto_name(prefix: &str, at: DateTime<Utc>, token: &str, attempt: u32) -> String {
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.update(attempt.to_be_bytes());
    let suffix = &hex::encode(h.finalize())[..8];
    let stamp = at.format("%Y%m%dT%H%M%SZ").to_string();
    let room = NAME_MAX - stamp.len() - suffix.len() - 2;
    let clean: String = prefix
        .chars()
        .filter(|c| is_name_char(*c))
        .take(room)
        .collect();
    let clean = clean.trim();
    let clean = if clean.is_empty() { "image" } else { clean };
    format!("{clean}-{stamp}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn upload_folders_own_families() {
        assert_eq!(
            upload_folder("s3://b/images/web/x.raw"),
            Some("s3://b/images/web/")
        );
        assert_eq!(upload_folder("s3://b/x.raw"), Some("s3://b/"));
        assert_eq!(upload_folder("s3://b"), None);
        let long =
            crate::plan::lineage::fit_tag_value(&format!("s3://b/web/{}.raw", "x".repeat(300)));
        assert_eq!(upload_folder(&long), None);
        let fast =
            crate::plan::lineage::fit_ebs_tag_value(&format!("s3://b/web/{}.raw", "x".repeat(300)));
        assert_eq!(upload_folder(&fast), None);
        assert_eq!(family_source_problem("images/web-2/x.raw"), None);
        assert_eq!(family_source_problem("web-2.raw"), None);
        let p = family_source_problem("images/Web Base/x.raw").unwrap_or_default();
        assert!(p.contains("\"images-web-base\""), "{p}");
    }

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 13, 5, 9)
            .single()
            .expect("valid date")
    }

    #[test]
    fn token_is_deterministic_64_hex_and_separates_fields() {
        let a = source_token("b", "k", "v1");
        assert_eq!(a, source_token("b", "k", "v1"));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, source_token("b", "k", "v2"));
        // length-prefixing: moving a character between fields changes the token
        assert_ne!(source_token("ab", "c", "v"), source_token("a", "bc", "v"));
    }

    #[test]
    fn family_comes_from_the_key_prefix_or_the_file_stem() {
        let cases = [
            ("images/Ubuntu Jammy/disk.raw", "images-ubuntu-jammy"),
            ("disk.raw", "disk"),
            ("My Disk+2.vmdk", "my-disk-2"),
            ("%%%/###.raw", "image"),
            ("a/b/c.vhd", "a-b"),
            ("ünïcode/x.raw", "n-code"),
        ];
        for (key, want) in cases {
            assert_eq!(family_from_key(key), want, "{key}");
        }
        assert!(family_from_key(&format!("{}/x.raw", "a".repeat(300))).len() <= 64);
    }

    #[test]
    fn auto_names_are_valid_deterministic_and_vary_by_attempt() {
        let n = auto_name("web-base", t(), "tok", 0);
        assert!(n.starts_with("web-base-20261122T130509Z-"), "{n}");
        assert_eq!(n, auto_name("web-base", t(), "tok", 0));
        assert_ne!(n, auto_name("web-base", t(), "tok", 1));
        for prefix in ["", "%%%", "ünïcödé name", &"x".repeat(500), "a:b*c?"] {
            let name = auto_name(prefix, t(), "tok", 0);
            assert_eq!(check_image_name(&name), Ok(()), "{name}");
        }
    }

    #[test]
    fn image_name_rules() {
        assert!(check_image_name("ok-name (1) [x] ./'@_").is_ok());
        assert!(check_image_name("ab").is_err());
        assert!(check_image_name(&"a".repeat(129)).is_err());
        let err = check_image_name("bad:name*").err().unwrap_or_default();
        assert!(err.contains("\":*\""), "{err}");
    }
}
