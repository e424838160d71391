//! The fast path's checkpoints: a write too large for one invocation continues in the next one
//! (issue #18).
//!
//! **What is kept.** `progress/<upload token>` in the deployment's state bucket (`STATE_BUCKET`,
//! written by the functions only): a JSON header line — the snapshot, the upload's token, the
//! object (bucket, key, version) and its ETag, the format and file length the probe found, the
//! manual invoke's settings, the file offset reading restarts at, the counters — then the LINEAR
//! state of every block written so far ([`disk::LinearChecksum::to_bytes`]: its index and
//! SHA-256, 36 bytes per written block, ascending). **Size bound**: about 500 bytes + 36 bytes
//! per block written; a fully written disk of `FAST_PATH_MAX_GIB` = 1,024 GiB is 2 Mi blocks,
//! 72 MiB (what the LINEAR state already holds in memory, plus its map).
//!
//! **When.** Saved when the write starts (so that a crashed invocation leaves one for the sweep)
//! and when it stops near the Lambda deadline, after every PutSnapshotBlock in flight has
//! answered (so every block it lists is written, and every block written is listed); saved again
//! with `completed_at` once CompleteSnapshot is accepted (AWS seals the snapshot asynchronously
//! and it takes no block after that, so an invocation that stops while it seals leaves the next
//! one only the wait and the registration); deleted once the snapshot is completed, or refused.
//!
//! **How a write continues (the simplest sound design).** Raw and VHD fixed disks are the
//! file's first bytes: their decoder has no state at a block boundary, and a stop happens at a
//! part boundary (8 MiB, 16 blocks), so reading restarts there ([`disk::Decoder::resume_at`]) and
//! the blocks before it are taken from the checkpoint. A dynamic VHD (its BAT) and a
//! stream-optimized VMDK (grains anywhere, compressed) are read again from the start, which costs
//! reading and hashing, not writing: a block the checkpoint lists is not written again, and its
//! SHA-256 computed again must equal the one listed — a difference means the object changed, and
//! the snapshot is refused (deleted, never completed). Either way CompleteSnapshot's LINEAR
//! aggregate and `ChangedBlocksCount` cover exactly the blocks written: those listed plus those
//! this invocation wrote. A checkpoint is trusted only for the same snapshot and the same object:
//! its ETag and version must be the object's current ones (the parts are then read `If-Match`
//! that ETag, so a replacement during the read is refused too).
//!
//! **One writer at a time.** `progress/<token>.lease`, created with `If-None-Match: *` (of
//! concurrent creators one wins: S3 User Guide, "How to prevent object overwrites with
//! conditional writes"), holds the snapshot for [`LEASE`], longer than a Lambda invocation can
//! run (15 minutes); the holder deletes it (`If-Match` its ETag) when it stops. An expired lease
//! (its holder crashed) is taken over with `If-Match` on the ETag read, so two takers cannot both
//! win. A delivery that finds the lease held does not write (`in-progress`): the holder completes
//! the snapshot or checkpoints it. Without a state bucket nothing is checkpointed: a redelivered
//! event writes every block again on the same snapshot (same ClientToken), as before.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use disk::LinearChecksum;
use serde::{Deserialize, Serialize};
use shared::aws::s3::{self, Condition};
use shared::error::AwsError;
use shared::model::ObjectRef;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// How long a lease holds a snapshot: longer than a Lambda invocation may run (15 minutes),
/// so a live holder never loses it; a crashed one's is taken over after this.
pub const LEASE: Duration = Duration::minutes(16);

/// Version of the checkpoint's header; another version is not trusted (the write starts over).
const VERSION: u32 = 1;

/// What a continuing invocation needs from the one that stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    /// [`VERSION`].
    pub version: u32,
    /// The snapshot being written.
    pub snapshot_id: String,
    /// The upload's token (StartSnapshot's ClientToken).
    pub token: String,
    /// The object's bucket.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// Its version (versioned buckets).
    pub version_id: Option<String>,
    /// Its ETag when the write began.
    pub etag: Option<String>,
    /// The decoder's format name.
    pub format: String,
    /// The object's length.
    pub total_len: u64,
    /// File offset reading restarts at (0: read again from the start, writes skipped).
    pub resume_offset: u64,
    /// Settings a manual invoke gave (the sweep continues with them).
    pub overrides: BTreeMap<String, String>,
    /// When it was saved.
    pub saved_at: String,
    /// When CompleteSnapshot was accepted (the snapshot seals asynchronously and takes no more
    /// blocks): whoever continues only waits for `completed` and registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// A checkpoint: the header and the blocks written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Where and what.
    pub header: Header,
    /// Every block written so far, with its SHA-256.
    pub written: LinearChecksum,
}

impl Checkpoint {
    /// The object's bytes: the header's JSON, a newline, the LINEAR state.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.header).unwrap_or_default();
        out.push(b'\n');
        out.extend(self.written.to_bytes());
        out
    }

    /// Parses [`Checkpoint::to_bytes`]; None for anything else (another version, damage).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let split = bytes.iter().position(|&b| b == b'\n')?;
        let header: Header = serde_json::from_slice(bytes.get(..split)?).ok()?;
        let written = LinearChecksum::from_bytes(bytes.get(split + 1..)?).ok()?;
        (header.version == VERSION).then_some(Self { header, written })
    }

    /// The object this checkpoint was written from.
    pub fn object(&self) -> ObjectRef {
        ObjectRef {
            bucket: self.header.bucket.clone(),
            key: self.header.key.clone(),
            version_id: self.header.version_id.clone(),
        }
    }
}

/// What a lease attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lease {
    /// This invocation writes; the lease object's ETag, for [`Progress::release`].
    Won(String),
    /// Another invocation writes, until this time at the latest.
    Held(DateTime<Utc>),
}

/// The state bucket's checkpoints and leases.
pub(crate) struct Progress<'a> {
    /// The S3 client.
    pub s3: &'a aws_sdk_s3::Client,
    /// The state bucket.
    pub bucket: &'a str,
}

impl Progress<'_> {
    fn object(&self, key: String) -> ObjectRef {
        ObjectRef {
            bucket: self.bucket.to_owned(),
            key,
            version_id: None,
        }
    }

    /// The checkpoint's object.
    pub fn checkpoint_object(&self, token: &str) -> ObjectRef {
        self.object(format!("progress/{token}"))
    }

    fn lease_object(&self, token: &str) -> ObjectRef {
        self.object(format!("progress/{token}.lease"))
    }

    /// The checkpoint of `token`'s write; None when there is none, or it cannot be read as one
    /// (then the write starts over: every block is written again, which is sound).
    pub async fn load(&self, token: &str) -> Result<Option<Checkpoint>, AwsError> {
        let obj = self.checkpoint_object(token);
        match s3::get_object(self.s3, &obj).await {
            Ok((bytes, _)) => {
                let cp = Checkpoint::from_bytes(&bytes);
                if cp.is_none() {
                    warn!(checkpoint = %obj.uri(), "checkpoint unreadable; the write starts over");
                }
                Ok(cp)
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves `cp` (the lease holder only writes it).
    pub async fn save(&self, cp: &Checkpoint) -> Result<(), AwsError> {
        let obj = self.checkpoint_object(&cp.header.token);
        s3::put_object(self.s3, &obj, cp.to_bytes()).await?;
        info!(checkpoint = %obj.uri(), snapshot_id = %cp.header.snapshot_id, blocks = cp.written.changed_blocks_count(), resume_offset = cp.header.resume_offset, "checkpoint saved");
        Ok(())
    }

    /// Deletes `token`'s checkpoint (the snapshot is completed, or refused). Best effort: a
    /// checkpoint left behind names a snapshot that is no longer pending, which nothing continues.
    pub async fn forget(&self, token: &str) {
        let obj = self.checkpoint_object(token);
        if let Err(e) = s3::delete_object(self.s3, &obj).await {
            warn!(checkpoint = %obj.uri(), error = %e, "could not delete the checkpoint");
        }
    }

    /// Takes the lease on `token`'s snapshot at `now`.
    pub async fn lease(&self, token: &str, now: DateTime<Utc>) -> Result<Lease, AwsError> {
        let obj = self.lease_object(token);
        let until = now + LEASE;
        let body = || {
            serde_json::json!({"until": until.to_rfc3339_opts(SecondsFormat::Secs, true)})
                .to_string()
                .into_bytes()
        };
        match s3::put_if(self.s3, &obj, body(), Condition::Absent).await {
            Ok(etag) => return Ok(Lease::Won(etag)),
            Err(e) if s3::lost_race(&e) => {}
            Err(e) => return Err(e),
        }
        let (bytes, etag) = match s3::get_object(self.s3, &obj).await {
            Ok(found) => found,
            // Released meanwhile: the holder is done or stopped; the next delivery takes it.
            Err(e) if e.is_not_found() => return Ok(Lease::Held(now)),
            Err(e) => return Err(e),
        };
        let held_until = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["until"].as_str().map(str::to_owned))
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or(now, |t| t.with_timezone(&Utc));
        if held_until > now {
            return Ok(Lease::Held(held_until));
        }
        match s3::put_if(self.s3, &obj, body(), Condition::Is(&format!("\"{etag}\""))).await {
            Ok(etag) => {
                info!(lease = %obj.uri(), "expired lease taken over");
                Ok(Lease::Won(etag))
            }
            Err(e) if s3::lost_race(&e) || e.is_not_found() => Ok(Lease::Held(until)),
            Err(e) => Err(e),
        }
    }

    /// Whether another invocation holds `token`'s lease at `now`.
    pub async fn leased(&self, token: &str, now: DateTime<Utc>) -> Result<bool, AwsError> {
        match s3::get_object(self.s3, &self.lease_object(token)).await {
            Ok((bytes, _)) => Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["until"].as_str().map(str::to_owned))
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .is_some_and(|t| t.with_timezone(&Utc) > now)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (`If-Match` its ETag: a lease taken over since is left alone). Best
    /// effort: one left behind expires after [`LEASE`].
    pub async fn release(&self, token: &str, etag: &str) {
        let obj = self.lease_object(token);
        if let Err(e) = s3::delete_if(self.s3, &obj, etag).await {
            warn!(lease = %obj.uri(), error = %e, "could not release the lease; it expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_damage_is_not_trusted() {
        let mut written = LinearChecksum::new();
        written.record(3, disk::BlockChecksum::of(&[1; 16]));
        let cp = Checkpoint {
            header: Header {
                version: VERSION,
                snapshot_id: "snap-1".into(),
                token: "t".into(),
                bucket: "b".into(),
                key: "k.raw".into(),
                version_id: None,
                etag: Some("e".into()),
                format: "raw".into(),
                total_len: 9 << 20,
                resume_offset: 8 << 20,
                overrides: BTreeMap::new(),
                saved_at: "2026-12-01T00:00:00Z".into(),
                completed_at: None,
            },
            written,
        };
        let bytes = cp.to_bytes();
        assert_eq!(Checkpoint::from_bytes(&bytes), Some(cp.clone()));
        assert!(Checkpoint::from_bytes(&bytes[..bytes.len() - 1]).is_none());
        let mut other = cp;
        other.header.version = 2;
        assert!(Checkpoint::from_bytes(&other.to_bytes()).is_none());
    }
}
