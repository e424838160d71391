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
