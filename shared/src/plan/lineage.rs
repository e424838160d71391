//! Lineage tag keys and values.
//!
//! The AMITools keys (`source_image`, `source_instance`, `source_region`, `create_date`,
//! `create_timestamp`) are kept verbatim so existing tooling reads them. The pipeline's own keys
//! live under the `ami-pipeline:` namespace and are documented in the README ("Tags").

use crate::model::Tags;
use chrono::{DateTime, Utc};

pub use super::tags::{
    ANCESTRY, CREATE_DATE, CREATE_TIMESTAMP, FAMILY, GENERATION, IMPORT_TASK, MANAGED, NS,
    OBJECT_REASON, OBJECT_STATUS, OUTCOME, READY_AT, REGISTER_ATTEMPTED, SOURCE_ETAG,
    SOURCE_FORMAT, SOURCE_IMAGE, SOURCE_INSTANCE, SOURCE_REGION, SOURCE_SNAPSHOT, SOURCE_TOKEN,
    SOURCE_URI, SOURCE_VERSION, STALE_WARNED, STARTED_AT, UPLOAD_METHOD,
};

/// The tags that make up an image's lineage; its snapshots carry the same ones.
pub const LINEAGE_KEYS: [&str; 17] = [
    SOURCE_IMAGE,
    SOURCE_INSTANCE,
    SOURCE_REGION,
    CREATE_DATE,
    CREATE_TIMESTAMP,
    MANAGED,
    FAMILY,
    SOURCE_URI,
    SOURCE_ETAG,
    SOURCE_VERSION,
    SOURCE_TOKEN,
    SOURCE_FORMAT,
    IMPORT_TASK,
    UPLOAD_METHOD,
    SOURCE_SNAPSHOT,
    GENERATION,
    ANCESTRY,
];

/// Parses AMITools' `create_date` (`20110909T233600Z`).
pub fn parse_create_date(s: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Formats a time as AMITools' `create_date` (`20110909T233600Z`).
pub fn create_date(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The AMITools date pair for `t`: `create_date` and `create_timestamp`, which always agree.
pub fn date_tags(t: DateTime<Utc>) -> Tags {
    Tags::from([
        (CREATE_DATE.to_owned(), create_date(t)),
        (CREATE_TIMESTAMP.to_owned(), t.timestamp().to_string()),
    ])
}

/// Longest value EC2 and S3 accept for a tag.
pub const MAX_TAG_VALUE: usize = 256;

/// Longest key EC2 accepts for a tag (botocore's ec2 model, `Tag.Key`: "accept a maximum of 127
/// Unicode characters"; the EBS direct `TagKey` too).
pub const MAX_EC2_TAG_KEY: usize = 127;

/// Longest value the EBS direct APIs accept for a tag, and for StartSnapshot's description
/// (botocore's `ebs` model: `TagValue` and `Description`, max 255): one less than EC2's.
pub const MAX_EBS_TAG_VALUE: usize = 255;

/// `value` as an EC2 tag value: control and bidi characters escaped
/// ([`crate::text::escape_controls`]; EC2 itself accepts any character in tag values, EC2 User
/// Guide "Tag restrictions", but people and tools read them), then shortened to at most
/// [`MAX_TAG_VALUE`] characters by cutting the middle, so that both the start (bucket) and the
/// end (file name) of a long URI stay readable.
pub fn fit_tag_value(value: &str) -> String {
    fit_value(value, MAX_TAG_VALUE)
}

/// [`fit_tag_value`] for the EBS direct APIs (StartSnapshot's tags and description): at most
/// [`MAX_EBS_TAG_VALUE`] characters.
pub fn fit_ebs_tag_value(value: &str) -> String {
    fit_value(value, MAX_EBS_TAG_VALUE)
}

/// `value` with controls escaped, cut in the middle to at most `max` characters.
fn fit_value(value: &str, max: usize) -> String {
    let value = crate::text::escape_controls(value);
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= max {
        return value.into_owned();
    }
    let keep = max - 1;
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn create_date_and_timestamp_agree() {
        let t = Utc
            .with_ymd_and_hms(2011, 9, 9, 23, 36, 0)
            .single()
            .expect("valid date");
        let tags = date_tags(t);
        assert_eq!(tags[CREATE_DATE], "20110909T233600Z");
        assert_eq!(tags[CREATE_TIMESTAMP], "1315611360");
    }

    #[test]
    fn long_values_are_cut_in_the_middle() {
        assert_eq!(fit_tag_value("s3://b/k"), "s3://b/k");
        let long = format!("s3://bucket/{}/disk.raw", "d".repeat(400));
        let fitted = fit_tag_value(&long);
        assert_eq!(fitted.chars().count(), MAX_TAG_VALUE);
        assert!(fitted.starts_with("s3://bucket/"));
        assert!(fitted.ends_with("/disk.raw"));
        assert!(fitted.contains('…'));
        let for_ebs = fit_ebs_tag_value(&long);
        assert_eq!(for_ebs.chars().count(), MAX_EBS_TAG_VALUE);
        assert!(for_ebs.starts_with("s3://bucket/") && for_ebs.ends_with("/disk.raw"));
        assert_eq!(fit_ebs_tag_value("s3://b/k"), "s3://b/k");
        assert_eq!(
            fit_tag_value("s3://b/a\u{1b}\u{202e}.raw"),
            "s3://b/a\\u{1b}\\u{202e}.raw"
        );
    }
}

/// Most tags S3 allows on an object.
pub const MAX_OBJECT_TAGS: usize = 10;

/// The object's tag set after recording `status` and `reason` on it: existing tags are kept
/// (PutObjectTagging replaces the whole set), the reason is cut to 256 characters, control and
/// bidi characters are written as `U+202E` ([`crate::text::Style::Tag`]: visible, and made of
/// characters S3 tags allow) and every other character S3 tags do not allow becomes a space. `None` when the object already has
/// [`MAX_OBJECT_TAGS`] other tags, so ours cannot be added without dropping the owner's.
pub fn object_status_tags(existing: &Tags, status: &str, reason: &str) -> Option<Tags> {
    let mut tags = existing.clone();
    tags.remove(OBJECT_STATUS);
    tags.remove(OBJECT_REASON);
    if tags.len() + 2 > MAX_OBJECT_TAGS {
        return None;
    }
    let clean: String = crate::text::escape_as(reason, crate::text::Style::Tag)
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " +-=._:/@".contains(c) {
                c
            } else {
                ' '
            }
        })
        .collect();
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    tags.insert(OBJECT_STATUS.to_owned(), status.to_owned());
    tags.insert(
        OBJECT_REASON.to_owned(),
        clean.chars().take(MAX_TAG_VALUE).collect(),
    );
    Some(tags)
}

#[cfg(test)]
mod object_tag_tests {
    use super::*;

    #[test]
    fn status_tags_keep_the_owners_tags_and_fit_s3_rules() {
        let existing = Tags::from([("owner".to_string(), "web".to_string())]);
        let tags = object_status_tags(
            &existing,
            "rejected",
            "architecture: \"sparc\" is not one of (x86_64, arm64)",
        )
        .expect("room");
        assert_eq!(tags["owner"], "web");
        assert_eq!(tags[OBJECT_STATUS], "rejected");
        assert_eq!(
            tags[OBJECT_REASON],
            "architecture: sparc is not one of x86_64 arm64"
        );
        let hidden = object_status_tags(
            &existing,
            "rejected",
            "\"up/a\u{1b}[2J\u{202e}war.exe\" has no disk extension",
        )
        .expect("room");
        assert_eq!(
            hidden[OBJECT_REASON],
            "up/aU+001B 2JU+202Ewar.exe has no disk extension"
        );
        let full: Tags = (0..9).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert_eq!(object_status_tags(&full, "rejected", "x"), None);
        assert_eq!(
            object_status_tags(&tags, "failed", &"y".repeat(400)).map(|t| t[OBJECT_REASON].len()),
            Some(256)
        );
    }
}
