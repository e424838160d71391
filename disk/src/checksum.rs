//! Checksums of the EBS direct APIs: the SHA-256 of each block for PutSnapshotBlock, and the
//! LINEAR aggregate for CompleteSnapshot.
//!
//! Definition (CompleteSnapshot, `x-amz-Checksum`, <https://docs.aws.amazon.com/ebs/latest/APIReference/API_CompleteSnapshot.html>):
//! "To generate the aggregated checksum using the linear aggregation method, arrange the
//! checksums for each written block in ascending order of their block index, concatenate
//! them to form a single string, and then generate the checksum on the entire string using
//! the SHA256 algorithm." The checksums concatenated are the raw 32-byte digests (not their
//! base64 text), as awslabs/coldsnap's `upload.rs` does against the real service; the result
//! is sent base64-encoded with `x-amz-Checksum-Algorithm: SHA256` and
//! `x-amz-Checksum-Aggregation-Method: LINEAR` (user guide, "Use EBS direct APIs checksums
//! to validate snapshot data", <https://docs.aws.amazon.com/ebs/latest/userguide/ebsapis-using-checksums.html>).
//!
//! Memory: [`LinearChecksum`] keeps one 32-byte digest per written block (about 40 bytes with
//! the index and the B-tree): 16 TiB fully written is 32 Mi blocks, ~1.3 GiB (1 GiB of digests);
//! an 8 GiB image with 2 GiB of data, ~160 KiB. The serialized state is 36 bytes per block.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// SHA-256 of one block's data, as PutSnapshotBlock's `x-amz-Checksum` wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockChecksum(pub [u8; 32]);

impl BlockChecksum {
    /// The SHA-256 of `data` (a whole 512 KiB block).
    #[must_use]
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The base64 text for the `x-amz-Checksum` header (algorithm `SHA256`).
    #[must_use]
    pub fn base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

/// Why a serialized [`LinearChecksum`] state was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChecksumStateError {
    /// Not produced by [`LinearChecksum::to_bytes`] (magic or length wrong).
    #[error("checksum state is not a linear-checksum state: {0}")]
    Format(String),
    /// Entries not in strictly ascending block order.
    #[error("checksum state lists block {next} after block {previous}: entries must ascend")]
    Order {
        /// The earlier entry.
        previous: u32,
        /// The entry that does not ascend.
        next: u32,
    },
}

/// Magic and version of the serialized state.
const STATE_MAGIC: &[u8; 8] = b"EBSLIN1\0";
/// Bytes per serialized entry: block index (u32 big-endian) and digest.
const ENTRY_LEN: usize = 4 + 32;

/// The LINEAR aggregate of the blocks written to one snapshot, fed in any order and
/// resumable across invocations through [`LinearChecksum::to_bytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinearChecksum {
    digests: BTreeMap<u32, [u8; 32]>,
}

impl LinearChecksum {
    /// No block written yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that block `index` was written with `checksum`; writing a block again
    /// replaces its checksum (the snapshot keeps the last write).
    pub fn record(&mut self, index: u32, checksum: BlockChecksum) {
        self.digests.insert(index, checksum.0);
    }

    /// The checksum recorded for block `index`, if it was written.
    #[must_use]
    pub fn get(&self, index: u32) -> Option<BlockChecksum> {
        self.digests.get(&index).copied().map(BlockChecksum)
    }

    /// `ChangedBlocksCount` for CompleteSnapshot: the number of distinct blocks written.
    #[must_use]
    pub fn changed_blocks_count(&self) -> u64 {
        self.digests.len() as u64
    }

    /// The aggregate: SHA-256 over the digests in ascending block order.
    #[must_use]
    pub fn aggregate(&self) -> [u8; 32] {
        let mut sha = Sha256::new();
        for digest in self.digests.values() {
            sha.update(digest);
        }
        sha.finalize().into()
    }

    /// The aggregate as base64, for CompleteSnapshot's `x-amz-Checksum`.
    #[must_use]
    pub fn aggregate_base64(&self) -> String {
        STANDARD.encode(self.aggregate())
    }

    /// The state: magic, entry count (u32 BE), then per block its index (u32 BE) and digest,
    /// ascending.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.digests.len() * ENTRY_LEN);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(
            &u32::try_from(self.digests.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (index, digest) in &self.digests {
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(digest);
        }
        out
    }

    /// Restores a state written by [`LinearChecksum::to_bytes`].
    ///
    /// # Errors
    /// [`ChecksumStateError`] when the bytes are not such a state.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ChecksumStateError> {
        let body = bytes
            .strip_prefix(STATE_MAGIC)
            .ok_or_else(|| ChecksumStateError::Format("missing magic".into()))?;
        let (count, entries) = body
            .split_first_chunk::<4>()
            .ok_or_else(|| ChecksumStateError::Format("missing entry count".into()))?;
        let count = u32::from_be_bytes(*count) as usize;
        if entries.len() != count.saturating_mul(ENTRY_LEN) {
            return Err(ChecksumStateError::Format(format!(
                "{count} entries announced, {} bytes of entries present",
                entries.len()
            )));
        }
        let mut digests = BTreeMap::new();
        let mut previous: Option<u32> = None;
        for entry in entries.chunks_exact(ENTRY_LEN) {
            let (index, digest) = entry
                .split_first_chunk::<4>()
                .ok_or_else(|| ChecksumStateError::Format("short entry".into()))?;
            let index = u32::from_be_bytes(*index);
            if let Some(previous) = previous
                && index <= previous
            {
                return Err(ChecksumStateError::Order {
                    previous,
                    next: index,
                });
            }
            previous = Some(index);
            let digest: [u8; 32] = digest
                .try_into()
                .map_err(|_| ChecksumStateError::Format("short digest".into()))?;
            digests.insert(index, digest);
        }
        Ok(Self { digests })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BLOCK_SIZE;

    // Expected values computed independently with Python's hashlib and base64.
    const ZEROS: &str = "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE=";
    const ONES: &str = "M6FQvOsTwamSIx5ltPrRaBUhL8Bs20CJltMu6yzvnrs=";
    /// sha256(sha256(zeros) || sha256(ones)): raw digests in ascending index order.
    const AGGREGATE: &str = "HFRGTdrSd+vfQo2s4W+AwgFjuBSYcNtoI3LPFCEQbPw=";

    fn two_blocks() -> (BlockChecksum, BlockChecksum) {
        (
            BlockChecksum::of(&vec![0; BLOCK_SIZE]),
            BlockChecksum::of(&vec![1; BLOCK_SIZE]),
        )
    }

    #[test]
    fn block_checksum_is_base64_sha256() {
        let (zeros, ones) = two_blocks();
        assert_eq!(zeros.base64(), ZEROS);
        assert_eq!(ones.base64(), ONES);
    }

    #[test]
    fn aggregate_orders_raw_digests_by_block_index_whatever_the_recording_order() {
        let (zeros, ones) = two_blocks();
        let mut forward = LinearChecksum::new();
        forward.record(3, zeros);
        forward.record(900, ones);
        let mut backward = LinearChecksum::new();
        backward.record(900, ones);
        backward.record(3, zeros);
        assert_eq!(forward.aggregate_base64(), AGGREGATE);
        assert_eq!(backward.aggregate_base64(), AGGREGATE);
        assert_eq!(forward.changed_blocks_count(), 2);
        // Index order, not recording order, and not digest order: ones at a lower index.
        let mut swapped = LinearChecksum::new();
        swapped.record(3, ones);
        swapped.record(900, zeros);
        assert_ne!(swapped.aggregate_base64(), AGGREGATE);
    }

    #[test]
    fn rewriting_a_block_replaces_its_digest() {
        let (zeros, ones) = two_blocks();
        let mut c = LinearChecksum::new();
        c.record(0, ones);
        c.record(0, zeros);
        c.record(1, ones);
        assert_eq!(c.changed_blocks_count(), 2);
        assert_eq!(c.aggregate_base64(), AGGREGATE);
    }

    #[test]
    fn state_round_trips_and_resumes() {
        let (zeros, ones) = two_blocks();
        let mut first = LinearChecksum::new();
        first.record(7, zeros);
        let bytes = first.to_bytes();
        assert_eq!(bytes.len(), 12 + 36);
        let mut resumed = LinearChecksum::from_bytes(&bytes).unwrap();
        assert_eq!(resumed, first);
        resumed.record(8, ones);
        assert_eq!(resumed.aggregate_base64(), AGGREGATE);
        assert_eq!(
            LinearChecksum::from_bytes(&LinearChecksum::new().to_bytes()).unwrap(),
            LinearChecksum::new()
        );
    }

    #[test]
    fn damaged_state_is_refused() {
        let (zeros, ones) = two_blocks();
        let mut c = LinearChecksum::new();
        c.record(1, zeros);
        c.record(2, ones);
        let bytes = c.to_bytes();
        assert!(matches!(
            LinearChecksum::from_bytes(&bytes[1..]),
            Err(ChecksumStateError::Format(_))
        ));
        assert!(matches!(
            LinearChecksum::from_bytes(&bytes[..bytes.len() - 1]),
            Err(ChecksumStateError::Format(_))
        ));
        let mut swapped = bytes.clone();
        swapped[12..16].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            LinearChecksum::from_bytes(&swapped),
            Err(ChecksumStateError::Order {
                previous: 5,
                next: 2
            })
        );
    }
}
