//! Assembly of complete 512 KiB blocks from pieces that arrive in file order but not in disk
//! order (VHD blocks placed anywhere in the file, VMDK grains in any order).
//!
//! Memory bound: at most `max_partial_blocks` partially filled blocks of 512 KiB each, plus
//! the blocks ready for the caller (one format step produces at most 33 of them), plus two
//! bitsets of one bit per block of the disk (256 KiB each per TiB of virtual size).

use std::collections::{BTreeMap, VecDeque};

use crate::block::{BLOCK_SIZE, BLOCK_SIZE_U64, Block, SECTOR};
use crate::error::DecodeError;

/// Sectors in one 512 KiB block.
const SECTORS_PER_BLOCK: usize = BLOCK_SIZE / 512;

/// What to do when more than the allowed number of blocks are partially filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnPressure {
    /// Emit the least recently written partial block with its unwritten sectors as zeros
    /// (VMDK: an unwritten sector is a hole, which reads as zeros). A later write into it
    /// fails with [`DecodeError::BlockAlreadyEmitted`].
    EmitOldest,
    /// Fail: the format said more data is coming for every partial block (VHD's BAT).
    Fail,
}

/// A block some of whose bytes have arrived.
struct Partial {
    data: Vec<u8>,
    /// One bit per sector already written.
    filled: [u64; SECTORS_PER_BLOCK / 64],
    /// Bytes still expected before the block is complete.
    remaining: u64,
    /// Value of the assembler's write counter at the last write (for least-recently-written).
    last_write: u64,
}

/// A growable bitset indexed by block.
#[derive(Default)]
struct BlockSet(Vec<u64>);

impl BlockSet {
    fn contains(&self, i: u32) -> bool {
        let i = i as usize;
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn insert(&mut self, i: u32) {
        let i = i as usize;
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
}

/// One piece of data for [`Assembler::write`].
pub(crate) struct Piece<'a> {
    /// The structure carrying it, for errors ("VMDK grain marker").
    pub(crate) what: &'static str,
    /// File offset of that structure.
    pub(crate) file_offset: u64,
    /// Virtual disk offset of `data[0]`; a multiple of 512.
    pub(crate) virtual_offset: u64,
    /// Whole sectors of data.
    pub(crate) data: &'a [u8],
}

/// Collects pieces into complete blocks; see the module doc for the memory bound.
pub(crate) struct Assembler {
    virtual_size: u64,
    max_partials: usize,
    on_pressure: OnPressure,
    partials: BTreeMap<u32, Partial>,
    emitted: BlockSet,
    emitted_partial: BlockSet,
    ready: VecDeque<Block>,
    writes: u64,
}

impl Assembler {
    /// An assembler for a disk of `virtual_size` bytes.
    pub(crate) fn new(virtual_size: u64, max_partials: usize, on_pressure: OnPressure) -> Self {
        Self {
            virtual_size,
            max_partials: max_partials.max(1),
            on_pressure,
            partials: BTreeMap::new(),
            emitted: BlockSet::default(),
            emitted_partial: BlockSet::default(),
            ready: VecDeque::new(),
            writes: 0,
        }
    }

    /// Bytes of block `index` inside the virtual disk.
    pub(crate) fn block_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * BLOCK_SIZE_U64;
        self.virtual_size.saturating_sub(start).min(BLOCK_SIZE_U64)
    }

    /// The next complete block, if any.
    pub(crate) fn pop(&mut self) -> Option<Block> {
        self.ready.pop_front()
    }

    /// Number of blocks waiting in [`Assembler::pop`].
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Number of partially filled blocks held.
    pub(crate) fn partial_len(&self) -> usize {
        self.partials.len()
    }

    /// Writes `piece` into the blocks it covers (clipped to the virtual size). `expected(i)`
    /// is the number of bytes block `i` will receive in total (at most [`Self::block_len`]).
    pub(crate) fn write(
        &mut self,
        piece: &Piece<'_>,
        expected: &dyn Fn(u32) -> u64,
    ) -> Result<(), DecodeError> {
        let end = piece
            .virtual_offset
            .saturating_add(piece.data.len() as u64)
            .min(self.virtual_size);
        let mut at = piece.virtual_offset;
        while at < end {
            let index = u32::try_from(at / BLOCK_SIZE_U64).map_err(|_| {
                DecodeError::malformed(piece.what, piece.file_offset, "virtual offset overflows")
            })?;
            let in_block = at % BLOCK_SIZE_U64;
            let n = (BLOCK_SIZE_U64 - in_block).min(end - at);
            let from = usize::try_from(at - piece.virtual_offset).unwrap_or(usize::MAX);
            let bytes = piece
                .data
                .get(from..from.saturating_add(n as usize))
                .unwrap_or_default();
            self.write_in_block(piece, index, in_block, bytes, expected)?;
            at += n;
        }
        Ok(())
    }

    fn write_in_block(
        &mut self,
        piece: &Piece<'_>,
        index: u32,
        in_block: u64,
        bytes: &[u8],
        expected: &dyn Fn(u32) -> u64,
    ) -> Result<(), DecodeError> {
        if self.emitted.contains(index) {
            let reason = if self.emitted_partial.contains(index) {
                format!(
                    " with its unwritten sectors as zeros, because more than {} blocks were \
                     partially filled at once: the data is too far out of order to stream with \
                     bounded memory",
                    self.max_partials
                )
            } else {
                " (the same virtual sectors appear twice in the image)".to_owned()
            };
            return Err(DecodeError::BlockAlreadyEmitted {
                what: piece.what,
                offset: piece.file_offset,
                virtual_offset: u64::from(index) * BLOCK_SIZE_U64 + in_block,
                block: index,
                reason,
            });
        }
        let whole = in_block == 0 && bytes.len() as u64 == self.block_len(index);
        if whole && !self.partials.contains_key(&index) {
            let mut data = vec![0; BLOCK_SIZE];
            data.get_mut(..bytes.len())
                .unwrap_or_default()
                .copy_from_slice(bytes);
            self.emit(index, data, false);
            return Ok(());
        }
        self.writes += 1;
        let writes = self.writes;
        let partial = self.partials.entry(index).or_insert_with(|| Partial {
            data: vec![0; BLOCK_SIZE],
            filled: [0; SECTORS_PER_BLOCK / 64],
            remaining: expected(index),
            last_write: writes,
        });
        partial.last_write = writes;
        fill(partial, piece, index, in_block, bytes)?;
        if partial.remaining == 0 {
            if let Some(done) = self.partials.remove(&index) {
                self.emit(index, done.data, false);
            }
        } else if self.partials.len() > self.max_partials {
            self.relieve_pressure(piece, index)?;
        }
        Ok(())
    }

    /// Applies the [`OnPressure`] policy after `index` made the partial set too large.
    fn relieve_pressure(&mut self, piece: &Piece<'_>, index: u32) -> Result<(), DecodeError> {
        match self.on_pressure {
            OnPressure::Fail => Err(DecodeError::Unsupported(format!(
                "{} at offset {} leaves more than {} blocks partially filled at once: the \
                 image's data is too far out of disk order to stream with bounded memory",
                piece.what, piece.file_offset, self.max_partials
            ))),
            OnPressure::EmitOldest => {
                let oldest = self
                    .partials
                    .iter()
                    .filter(|(i, _)| **i != index)
                    .min_by_key(|(_, p)| p.last_write)
                    .map(|(i, _)| *i);
                if let Some(i) = oldest
                    && let Some(p) = self.partials.remove(&i)
                {
                    self.emit(i, p.data, true);
                }
                Ok(())
            }
        }
    }

    /// Emits a whole block built by the caller (raw data); `data` is [`BLOCK_SIZE`] long.
    pub(crate) fn push_block(&mut self, index: u32, data: Vec<u8>) {
        self.emit(index, data, false);
    }

    /// Emits every partial block, unwritten sectors as zeros (end of input).
    pub(crate) fn flush(&mut self) {
        while let Some((index, p)) = self.partials.pop_first() {
            self.emit(index, p.data, true);
        }
    }

    fn emit(&mut self, index: u32, data: Vec<u8>, partial: bool) {
        self.emitted.insert(index);
        if partial {
            self.emitted_partial.insert(index);
        }
        self.ready.push_back(Block::new(index, data));
    }
}

/// Copies `bytes` into `partial` at `in_block`, refusing sectors written before.
fn fill(
    partial: &mut Partial,
    piece: &Piece<'_>,
    index: u32,
    in_block: u64,
    bytes: &[u8],
) -> Result<(), DecodeError> {
    let first = usize::try_from(in_block / SECTOR).unwrap_or(usize::MAX);
    let count = bytes.len().div_ceil(512);
    for s in first..first.saturating_add(count) {
        let (w, bit) = (s / 64, 1u64 << (s % 64));
        let word = partial.filled.get_mut(w).ok_or_else(|| {
            DecodeError::malformed(piece.what, piece.file_offset, "sector outside its block")
        })?;
        if *word & bit != 0 {
            return Err(DecodeError::malformed(
                format!("{} overlaps data already written", piece.what),
                piece.file_offset,
                format!(
                    "virtual offset {} (block {index}) appears twice in the image",
                    u64::from(index) * BLOCK_SIZE_U64 + s as u64 * SECTOR
                ),
            ));
        }
        *word |= bit;
    }
    let start = usize::try_from(in_block).unwrap_or(usize::MAX);
    if let Some(dst) = partial
        .data
        .get_mut(start..start.saturating_add(bytes.len()))
    {
        dst.copy_from_slice(bytes);
    }
    let n = bytes.len() as u64;
    if n > partial.remaining {
        return Err(DecodeError::malformed(
            format!("{} writes more data than its table announced", piece.what),
            piece.file_offset,
            format!(
                "block {index} expected {} more bytes, got {n}",
                partial.remaining
            ),
        ));
    }
    partial.remaining -= n;
    Ok(())
}
