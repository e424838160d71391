//! Exactly once across concurrent invocations: claims on an announcement.
//!
//! Lambda runs many copies of a function at once, and SNS, EventBridge and S3 deliver events
//! at least once, so two invocations can decide at the same moment to send the same
//! announcement. EC2 cannot arbitrate (CreateTags is last-writer-wins, and what a Describe
//! shows lags behind). S3 can: PutObject with `If-None-Match: *` creates a key only when it
//! does not exist, and of concurrent writers exactly one succeeds (S3 User Guide, "How to
//! prevent object overwrites with conditional writes").
//!
//! A claim is such an object in the deployment's state bucket (`STATE_BUCKET`, written by the
//! functions only — never the uploads bucket, where an uploader could plant one), key
//! `claims/<announcement key>`:
//! - the invocation that creates it sends the announcement, then records it on the image (a
//!   tag); every other one sees [`Claim::Held`] and sends nothing;
//! - a holder whose send fails releases its claim ([`Claims::release`]) before it returns the
//!   error, so the retry of its event (or another delivery) claims and sends again;
//! - a claim carries its holder (a token per attempt), so a caller whose PutObject took effect
//!   and whose answer was lost (the SDK's retry then meets its own object) knows the claim
//!   for its own and sends, instead of waiting for the claim to go stale;
//! - an invocation that stops between its claim and its record leaves a claim that never gets
//!   a record: once the claim is older than [`STALE_AFTER`] (by the `claimed_at` it carries, on
//!   the callers' clock, not S3's LastModified), a caller that still finds no record
//!   takes it over with a PutObject `If-Match` on the ETag it read (two takers cannot both win)
//!   and announces — so a crash delays an announcement and never loses it; only a crash between
//!   the send and its record repeats it, once, under the same `dedup_key`.
//!
//! A caller with no resource of its own to record the announcement on (create-image's fast
//! path: the image's tags are written only at RegisterImage), or whose record on the resource
//! can be overwritten by a stale write (publish's `publish-state` tag: last-writer-wins, and an
//! SDK retry of an earlier mark can land after the record), records it in the state bucket too
//! ([`Claims::record_sent`], `claims/<announcement key>.sent`), and a later run that finds the
//! work done asks [`Claims::was_sent`] before it announces again. A crash between the send and
//! that record leaves only the resource's record, as before.
//!
//! Without a state bucket there are no claims: announcements are at least once, and each
//! message's `dedup_key` lets a subscriber drop repeats.

use crate::aws::s3::{self, Condition};
use crate::error::AwsError;
use crate::model::ObjectRef;
use aws_sdk_s3::Client;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use tracing::{info, warn};

/// How old a claim without its record must be before it is taken over: far beyond one
/// announcement (a publish of an SNS message and a CreateTags) and beyond the few seconds a
/// tag takes to show in DescribeImages.
pub const STALE_AFTER: Duration = Duration::minutes(10);

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This invocation holds the claim: it announces (and releases the claim if it cannot).
    Won {
        /// The claim object's ETag (None without a state bucket), for [`Claims::release`].
        etag: Option<String>,
    },
    /// Another invocation holds it (made `age` ago): it announces, this one does not.
    Held {
        /// How long ago the holder claimed it.
        age: Duration,
    },
}

/// Where claims are kept: the state bucket, or none (no claims, at least once).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// The bucket (`STATE_BUCKET`); None: every claim is won at once.
    pub bucket: Option<String>,
}

impl Claims {
    /// Claims `key` (an announcement's key, e.g. `image.ready/us-east-1/ami-…`) at `now`.
    pub async fn claim(
        &self,
        s3: &Client,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Claim, AwsError> {
        let Some(obj) = self.object(key) else {
            return Ok(Claim::Won { etag: None });
        };
        // Who claims: so that a claim whose PutObject took effect and whose answer was lost
        // (the SDK's retry then meets its own object: 412) is known as this caller's own.
        let holder = holder_token();
        let body = || {
            serde_json::json!({
                "claimed_at": now.to_rfc3339_opts(SecondsFormat::Secs, true),
                "holder": holder,
            })
            .to_string()
            .into_bytes()
        };
        match s3::put_if(s3, &obj, body(), Condition::Absent).await {
            Ok(etag) => return Ok(Claim::Won { etag: Some(etag) }),
            Err(e) if s3::lost_race(&e) => {}
            Err(e) => return Err(e),
        }
        // The claim's age by the `claimed_at` it carries, on the callers' clock (the same clock
        // every caller judges staleness by), not by S3's LastModified. A claim without a
        // readable `claimed_at` (never written so by this code) is treated as stale.
        let (bytes, etag) = match s3::get_object(s3, &obj).await {
            Ok(held) => held,
            // Released meanwhile: the next delivery claims it.
            Err(e) if e.is_not_found() => {
                return Ok(Claim::Held {
                    age: Duration::zero(),
                });
            }
            Err(e) => return Err(e),
        };
        if holder_of(&bytes).as_deref() == Some(holder.as_str()) {
            info!(claim = %obj.uri(), "the claim is this caller's own (its first answer was lost)");
            return Ok(Claim::Won {
                etag: Some(format!("\"{etag}\"")),
            });
        }
        let age = claimed_at(&bytes).map_or(STALE_AFTER, |t| now - t);
        if age < STALE_AFTER {
            return Ok(Claim::Held { age });
        }
        // The holder stopped before recording its announcement: take the claim over, against
        // the ETag read, so that of several takers one wins.
        match s3::put_if(s3, &obj, body(), Condition::Is(&format!("\"{etag}\""))).await {
            Ok(etag) => {
                info!(claim = %obj.uri(), age_seconds = age.num_seconds(), "stale claim taken over");
                Ok(Claim::Won { etag: Some(etag) })
            }
            // Another taker won, or this one's write took effect and its answer was lost (the
            // SDK's retry then fails the If-Match it changed): the claim says which.
            Err(e) if s3::lost_race(&e) || e.is_not_found() => match s3::get_object(s3, &obj).await
            {
                Ok((bytes, etag)) if holder_of(&bytes).as_deref() == Some(holder.as_str()) => {
                    Ok(Claim::Won {
                        etag: Some(format!("\"{etag}\"")),
                    })
                }
                _ => Ok(Claim::Held {
                    age: Duration::zero(),
                }),
            },
            Err(e) => Err(e),
        }
    }
}

impl Claims {
    /// Whether there is a state bucket (else every claim is won and nothing is recorded).
    pub fn enabled(&self) -> bool {
        self.bucket.is_some()
    }

    /// The claim object of `key`, when there is a state bucket.
    fn object(&self, key: &str) -> Option<ObjectRef> {
        self.bucket.as_ref().map(|bucket| ObjectRef {
            bucket: bucket.clone(),
            key: format!("claims/{key}"),
            version_id: None,
        })
    }

    /// The record that `key`'s announcement was sent, when there is a state bucket.
    fn sent_object(&self, key: &str) -> Option<ObjectRef> {
        self.object(&format!("{key}.sent"))
    }

    /// Records that the announcement claimed under `key` was sent (`If-None-Match: *`: a
    /// record that exists already is kept as it is). Nothing without a state bucket.
    pub async fn record_sent(
        &self,
        s3: &Client,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AwsError> {
        let Some(obj) = self.sent_object(key) else {
            return Ok(());
        };
        let body = serde_json::json!({"sent_at": now.to_rfc3339_opts(SecondsFormat::Secs, true)})
            .to_string()
            .into_bytes();
        match s3::put_if(s3, &obj, body, Condition::Absent).await {
            Ok(_) => Ok(()),
            Err(e) if s3::lost_race(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether [`Claims::record_sent`] recorded `key`'s announcement. False without a state
    /// bucket (callers then cannot tell, and must not repair).
    pub async fn was_sent(&self, s3: &Client, key: &str) -> Result<bool, AwsError> {
        let Some(obj) = self.sent_object(key) else {
            return Ok(false);
        };
        match s3::head_object(s3, &obj).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The announcement keys under `prefix` (e.g. `image.registered/us-east-1/`) that
    /// [`Claims::record_sent`] recorded, read with one listing (a page per 1,000 keys) instead
    /// of one [`Claims::was_sent`] per key. None without a state bucket (nothing is known).
    pub async fn sent_under(
        &self,
        s3: &Client,
        prefix: &str,
    ) -> Result<Option<std::collections::BTreeSet<String>>, AwsError> {
        let Some(bucket) = &self.bucket else {
            return Ok(None);
        };
        let keys = s3::list_keys(s3, bucket, &format!("claims/{prefix}")).await?;
        Ok(Some(
            keys.iter()
                .filter_map(|k| k.strip_prefix("claims/")?.strip_suffix(".sent"))
                .map(str::to_owned)
                .collect(),
        ))
    }

    /// The decision [`Claims::decide_once`] kept for `key`, if one was written (None without a
    /// state bucket), so that a caller can follow it without making its own check.
    pub async fn decision(&self, s3: &Client, key: &str) -> Result<Option<String>, AwsError> {
        let Some(obj) = self.object(key) else {
            return Ok(None);
        };
        match s3::get_object(s3, &obj).await {
            Ok((bytes, _)) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A decision taken once for every caller: the first `verdict` written for `key`
    /// (`claims/<key>`, PutObject `If-None-Match: *`) is kept, and every caller gets that one
    /// back, whatever its own. For a check whose answer can change over time (has the uploaded
    /// object been replaced?) where two callers acting on different answers would contradict
    /// each other, and where a tag cannot arbitrate (CreateTags is last-writer-wins, and what a
    /// Describe shows lags behind). A caller whose write took effect and whose answer was lost
    /// reads its own verdict back. Without a state bucket, the caller's own verdict.
    pub async fn decide_once(
        &self,
        s3: &Client,
        key: &str,
        verdict: &str,
    ) -> Result<String, AwsError> {
        let Some(obj) = self.object(key) else {
            return Ok(verdict.to_owned());
        };
        // Verdicts are never deleted by the functions; one missing right after a lost race
        // (the state bucket's lifecycle expiry) is written again, once.
        for _ in 0..2 {
            match s3::put_if(s3, &obj, verdict.as_bytes().to_vec(), Condition::Absent).await {
                Ok(_) => return Ok(verdict.to_owned()),
                Err(e) if s3::lost_race(&e) => {}
                Err(e) => return Err(e),
            }
            match s3::get_object(s3, &obj).await {
                Ok((bytes, _)) => {
                    let kept = String::from_utf8_lossy(&bytes).into_owned();
                    if kept != verdict {
                        info!(decision = %obj.uri(), kept = %kept, own = %verdict, "an earlier caller decided otherwise; its decision stands");
                    }
                    return Ok(kept);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Err(AwsError {
            operation: "s3:PutObject",
            resource: obj.uri(),
            kind: crate::error::ErrorKind::Other,
            code: None,
            message: "the decision was neither written nor readable (removed twice after a lost race); the next attempt decides again".to_owned(),
            region: None,
        })
    }

    /// Gives up a claim this invocation won (its `etag`) and could not announce: DeleteObject
    /// `If-Match` that ETag, so a claim another invocation took over since is left alone.
    /// Best effort: if the delete fails too, the claim is taken over once stale.
    pub async fn release(&self, s3: &Client, key: &str, etag: Option<&str>) {
        let (Some(obj), Some(etag)) = (self.object(key), etag) else {
            return;
        };
        if let Err(e) = s3::delete_if(s3, &obj, etag).await {
            warn!(claim = %obj.uri(), error = %e, "could not release the claim; it is taken over once stale");
        }
    }

    /// Sends `msg` on `topic_arn` once, under its `dedup_key`: unless it was recorded as sent
    /// already or another invocation holds the claim; releases the claim when the send fails
    /// (so a retry sends) and records the message once sent. Without a state bucket it is
    /// simply sent.
    pub async fn send_once(
        &self,
        s3: &Client,
        sns: &aws_sdk_sns::Client,
        topic_arn: &str,
        msg: &crate::notify::Message,
        now: DateTime<Utc>,
    ) -> Result<Sent, AwsError> {
        let key = msg.dedup_key();
        let key = key.as_str();
        if self.was_sent(s3, key).await? {
            return Ok(Sent::Before);
        }
        let etag = match self.claim(s3, key, now).await? {
            Claim::Won { etag } => etag,
            Claim::Held { age } => {
                info!(
                    claim = key,
                    claimed_seconds_ago = age.num_seconds(),
                    "being sent by another invocation"
                );
                return Ok(Sent::ByAnother);
            }
        };
        if let Err(e) = crate::notify::send(sns, topic_arn, msg).await {
            // Not sent: the retry must be able to claim it again.
            self.release(s3, key, etag.as_deref()).await;
            return Err(e);
        }
        if let Err(e) = self.record_sent(s3, key, now).await {
            // It went out: the claim, held until stale, keeps the others from sending it.
            warn!(claim = key, error = %e, "sent, but its record in the state bucket was not written");
        }
        Ok(Sent::Now)
    }

    /// [`Claims::send_once`] for a failure report, which must not be lost to the state bucket:
    /// when the bucket cannot be read or written (a missing permission, throttling), the
    /// message is sent anyway, at least once instead of once. An SNS failure is returned.
    pub async fn report_once(
        &self,
        s3: &Client,
        sns: &aws_sdk_sns::Client,
        topic_arn: &str,
        msg: &crate::notify::Message,
        now: DateTime<Utc>,
    ) -> Result<Sent, AwsError> {
        match self.send_once(s3, sns, topic_arn, msg, now).await {
            Err(e) if e.operation.starts_with("s3:") => {
                warn!(message = %msg.dedup_key(), error = %e, "the state bucket failed; the report is sent unclaimed");
                crate::notify::send(sns, topic_arn, msg).await?;
                Ok(Sent::Now)
            }
            other => other,
        }
    }
}

/// What [`Claims::send_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// This invocation sent it (and recorded it).
    Now,
    /// It was recorded as sent before.
    Before,
    /// Another invocation holds its claim: that one sends it (or, if it stopped, a later run
    /// does once the claim is stale).
    ByAnother,
}

/// A short, stable digest of `text` (16 hex digits of its SHA-256), for claim keys that name a
/// particular content (a publication's policy).
pub fn digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))[..16].to_owned()
}

/// The `claimed_at` a claim object's body carries.
fn claimed_at(body: &[u8]) -> Option<DateTime<Utc>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    DateTime::parse_from_rfc3339(v.get("claimed_at")?.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Who wrote a claim ([`holder_token`]), if it says.
fn holder_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v.get("holder")?.as_str()?.to_owned())
}

/// A token unique to one claim attempt: the process's randomly keyed hasher (the standard
/// library seeds it from the operating system) over the time, the process id and a counter.
fn holder_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_i64(Utc::now().timestamp_nanos_opt().unwrap_or_default());
    format!("{:016x}", h.finish())
}
