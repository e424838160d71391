//! S3 gateway: HeadObject, ranged GetObject, listing, conditional writes, object tagging.

use super::rfc2047;
use crate::error::{AwsError, ErrorKind};
use crate::model::{ObjectInfo, ObjectRef, Tags};
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Tag, Tagging};
use chrono::{DateTime, Utc};

/// HeadObject: size, ETag, version and user metadata of the object (of its `version_id` when
/// given). Metadata keys are lowercased, and values S3 returns as RFC 2047 encoded-words (every
/// value that is not US-ASCII) are decoded ([`super::rfc2047`]).
pub async fn head_object(s3: &Client, obj: &ObjectRef) -> Result<ObjectInfo, AwsError> {
    let out = s3
        .head_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .set_version_id(obj.version_id.clone())
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:GetObject", obj.uri(), e).in_region(s3.config().region())
        })?;
    Ok(ObjectInfo {
        size: out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        etag: out.e_tag().map(|e| e.trim_matches('"').to_owned()),
        version_id: out.version_id().filter(|v| *v != "null").map(str::to_owned),
        metadata: out
            .metadata()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), rfc2047::decode(v).into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        last_modified: out
            .last_modified()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
    })
}

/// GetObject with `Range: bytes=<range>` (e.g. `0-511`, `-512`); returns the bytes. With
/// `etag` (unquoted, as [`head_object`] gives it), `If-Match` that ETag: a request for an object
/// replaced since it was validated fails with 412 `PreconditionFailed` instead of mixing two
/// contents (what an unversioned bucket would otherwise serve; S3 API reference, GetObject
/// `If-Match`).
pub async fn get_range(
    s3: &Client,
    obj: &ObjectRef,
    range: &str,
    etag: Option<&str>,
) -> Result<Vec<u8>, AwsError> {
    let out = s3
        .get_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .set_version_id(obj.version_id.clone())
        .set_if_match(etag.map(|e| format!("\"{}\"", e.trim_matches('"'))))
        .range(format!("bytes={range}"))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:GetObject", obj.uri(), e).in_region(s3.config().region())
        })?;
    collect(s3, obj, out.body).await
}

/// The body of a GetObject answer.
async fn collect(
    s3: &Client,
    obj: &ObjectRef,
    body: aws_sdk_s3::primitives::ByteStream,
) -> Result<Vec<u8>, AwsError> {
    let bytes = body.collect().await.map_err(|e| AwsError {
        region: s3.config().region().map(ToString::to_string),
        operation: "s3:GetObject",
        resource: obj.uri(),
        kind: ErrorKind::Other,
        code: None,
        message: format!("reading the body failed: {e}"),
    })?;
    Ok(bytes.into_bytes().to_vec())
}

/// GetObject of a whole (small) object: its bytes and its ETag (quotes removed).
pub async fn get_object(s3: &Client, obj: &ObjectRef) -> Result<(Vec<u8>, String), AwsError> {
    let out = s3
        .get_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .set_version_id(obj.version_id.clone())
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:GetObject", obj.uri(), e).in_region(s3.config().region())
        })?;
    let etag = out.e_tag().unwrap_or_default().trim_matches('"').to_owned();
    Ok((collect(s3, obj, out.body).await?, etag))
}

/// PutObject of `body` (replacing what is there).
pub async fn put_object(s3: &Client, obj: &ObjectRef, body: Vec<u8>) -> Result<(), AwsError> {
    s3.put_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .content_type("application/octet-stream")
        .body(body.into())
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:PutObject", obj.uri(), e).in_region(s3.config().region())
        })?;
    Ok(())
}

/// ListObjectsV2 over every page: the keys of `bucket` that begin with `prefix` (the IAM
/// action is `s3:ListBucket`, named so in errors).
pub async fn list_keys(s3: &Client, bucket: &str, prefix: &str) -> Result<Vec<String>, AwsError> {
    Ok(list(s3, bucket, prefix)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// [`list_keys`] with each object's LastModified (None when S3 gives none).
pub async fn list(
    s3: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, Option<DateTime<Utc>>)>, AwsError> {
    let mut objects = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            AwsError::from_sdk("s3:ListBucket", format!("s3://{bucket}/{prefix}"), e)
                .in_region(s3.config().region())
        })?;
        objects.extend(page.contents().iter().filter_map(|o| {
            let when = o
                .last_modified()
                .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
            Some((o.key()?.to_owned(), when))
        }));
    }
    Ok(objects)
}

/// DeleteObject (a key that does not exist is no error: S3 answers 204 either way).
pub async fn delete_object(s3: &Client, obj: &ObjectRef) -> Result<(), AwsError> {
    s3.delete_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:DeleteObject", obj.uri(), e).in_region(s3.config().region())
        })?;
    Ok(())
}

/// GetObjectTagging.
pub async fn get_tags(s3: &Client, obj: &ObjectRef) -> Result<Tags, AwsError> {
    let out = s3
        .get_object_tagging()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .set_version_id(obj.version_id.clone())
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:GetObjectTagging", obj.uri(), e).in_region(s3.config().region())
        })?;
    Ok(out
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect())
}

/// PutObjectTagging: replaces the object's whole tag set with `tags`.
pub async fn put_tags(s3: &Client, obj: &ObjectRef, tags: &Tags) -> Result<(), AwsError> {
    let set: Result<Vec<Tag>, _> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let tagging = set
        .and_then(|s| Tagging::builder().set_tag_set(Some(s)).build())
        .map_err(|e| AwsError {
            region: s3.config().region().map(ToString::to_string),
            operation: "s3:PutObjectTagging",
            resource: obj.uri(),
            kind: ErrorKind::InvalidInput,
            code: None,
            message: e.to_string(),
        })?;
    s3.put_object_tagging()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .set_version_id(obj.version_id.clone())
        .tagging(tagging)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:PutObjectTagging", obj.uri(), e).in_region(s3.config().region())
        })?;
    Ok(())
}

/// How a conditional PutObject may replace what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    /// `If-None-Match: *`: only when the key does not exist.
    Absent,
    /// `If-Match: <etag>`: only while the object is the one with this ETag.
    Is(&'a str),
}

/// PutObject of a small `body` under a [`Condition`]. Of concurrent conditional writes of one
/// key exactly one succeeds; the others fail with 412 `PreconditionFailed` (or 409
/// `ConditionalRequestConflict` while another is in flight) (S3 User Guide, "How to prevent
/// object overwrites with conditional writes"). Returns the new ETag.
pub async fn put_if(
    s3: &Client,
    obj: &ObjectRef,
    body: Vec<u8>,
    condition: Condition<'_>,
) -> Result<String, AwsError> {
    let req = s3
        .put_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .content_type("application/json")
        .body(body.into());
    let req = match condition {
        Condition::Absent => req.if_none_match("*"),
        Condition::Is(etag) => req.if_match(etag),
    };
    let out = req.send().await.map_err(|e| {
        AwsError::from_sdk("s3:PutObject", obj.uri(), e).in_region(s3.config().region())
    })?;
    Ok(out.e_tag().unwrap_or_default().to_owned())
}

/// Whether a conditional write ([`put_if`], [`delete_if`]) lost to another writer: 412
/// `PreconditionFailed`, or 409 `ConditionalRequestConflict` while another is in flight.
pub fn lost_race(e: &AwsError) -> bool {
    e.has_code("PreconditionFailed") || e.has_code("ConditionalRequestConflict")
}

/// DeleteObject `If-Match: <etag>`: deletes the object only while it is the one with this ETag.
pub async fn delete_if(s3: &Client, obj: &ObjectRef, etag: &str) -> Result<(), AwsError> {
    s3.delete_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .if_match(etag)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("s3:DeleteObject", obj.uri(), e).in_region(s3.config().region())
        })?;
    Ok(())
}
