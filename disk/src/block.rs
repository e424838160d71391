//! The unit of output: one EBS-direct block of 512 KiB at a block index, and the sizes that
//! follow from the EBS direct APIs.

/// Size of an EBS snapshot block: 524,288 bytes (512 KiB), the `BlockSize` StartSnapshot
/// returns; PutSnapshotBlock writes whole blocks at `BlockIndex` = logical offset / 524288
/// ("Block indexes", <https://docs.aws.amazon.com/ebs/latest/userguide/ebsapi-elements.html>).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// [`BLOCK_SIZE`] as a `u64`, for offset arithmetic.
pub(crate) const BLOCK_SIZE_U64: u64 = BLOCK_SIZE as u64;

/// Disk sector size all three formats are built on (VHD and VMDK count in 512-byte sectors).
pub(crate) const SECTOR: u64 = 512;

/// Largest virtual disk accepted: 64 TiB, the largest volume StartSnapshot's `VolumeSize`
/// (whole GiB) allows (reference/aws-facts.md, "EBS direct APIs"). Also bounds every table
/// this crate sizes from a header field, so a hostile header cannot make it allocate more.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// One complete 512 KiB block of the virtual disk, ready for PutSnapshotBlock.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    /// Block index in 512 KiB units (virtual offset / [`BLOCK_SIZE`]).
    pub index: u32,
    /// Exactly [`BLOCK_SIZE`] bytes; bytes past the end of the virtual disk and sectors the
    /// image leaves unwritten inside the block are zeros.
    pub data: Vec<u8>,
    /// Every byte is zero. An unencrypted snapshot reads an unwritten block as zeros, so the
    /// caller may skip such a block there; an encrypted one does not (awslabs/coldsnap#395),
    /// so it must be written.
    pub is_zero: bool,
}

impl Block {
    /// Builds a block, computing [`Block::is_zero`]. `data` must be [`BLOCK_SIZE`] long.
    pub(crate) fn new(index: u32, data: Vec<u8>) -> Self {
        let is_zero = is_all_zero(&data);
        Self {
            index,
            data,
            is_zero,
        }
    }

    /// Byte offset of the block in the virtual disk.
    #[must_use]
    pub fn offset(&self) -> u64 {
        u64::from(self.index) * BLOCK_SIZE_U64
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("index", &self.index)
            .field("len", &self.data.len())
            .field("is_zero", &self.is_zero)
            .finish()
    }
}

/// True when every byte of `data` is zero (compares 16-byte words; the tail bytewise).
#[must_use]
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    let words_zero = words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0);
    words_zero && words.remainder().iter().all(|&b| b == 0)
}

/// Number of 512 KiB blocks a virtual disk of `size` bytes spans (the last one possibly
/// partly past the end).
#[must_use]
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE_U64)
}
