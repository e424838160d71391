//! Formats whose data region is the disk itself, byte for byte: raw images, and fixed VHDs
//! (the data region followed by the 512-byte footer). Every block is emitted, zero or not:
//! the formats cannot say which parts of the disk were never written.

use crate::assembler::Assembler;
use crate::block::{BLOCK_SIZE, BLOCK_SIZE_U64};
use crate::error::DecodeError;
use crate::input::Input;
use crate::stream::Progress;

/// Copies `[0, virtual_size)` of the file into blocks, then skips the rest (a VHD footer).
pub(crate) struct Linear {
    virtual_size: u64,
    /// The block being filled; `BLOCK_SIZE` long.
    block: Vec<u8>,
    /// Bytes of `block` filled.
    filled: usize,
}

impl Linear {
    /// A decoder for a disk stored as the first `virtual_size` bytes of the file.
    pub(crate) fn new(virtual_size: u64) -> Self {
        Self {
            virtual_size,
            block: Vec::new(),
            filled: 0,
        }
    }

    /// What the decoder waits for, for a truncation error.
    pub(crate) fn expecting(&self, input: &Input) -> String {
        if input.pos() < self.virtual_size {
            format!("disk data up to offset {}", self.virtual_size)
        } else {
            format!("the end of the file at offset {}", input.total_len())
        }
    }

    /// One decoding step: fills (and emits) at most one block.
    pub(crate) fn step(
        &mut self,
        input: &mut Input,
        asm: &mut Assembler,
    ) -> Result<Progress, DecodeError> {
        let pos = input.pos();
        if pos >= self.virtual_size {
            return Ok(if input.skip_to(input.total_len()) {
                Progress::Done
            } else {
                Progress::NeedInput
            });
        }
        let block_end = (pos / BLOCK_SIZE_U64 + 1) * BLOCK_SIZE_U64;
        let want = usize::try_from(block_end.min(self.virtual_size) - pos).unwrap_or(usize::MAX);
        let available = input.available();
        let n = want.min(available.len());
        if n == 0 {
            return Ok(Progress::NeedInput);
        }
        if self.block.is_empty() {
            self.block = vec![0; BLOCK_SIZE];
        }
        if let (Some(dst), Some(src)) = (
            self.block.get_mut(self.filled..self.filled + n),
            available.get(..n),
        ) {
            dst.copy_from_slice(src);
        }
        self.filled += n;
        input.consume(n);
        if n == want {
            let index = u32::try_from(pos / BLOCK_SIZE_U64)
                .map_err(|_| DecodeError::malformed("disk data", pos, "block index overflows"))?;
            asm.push_block(index, std::mem::take(&mut self.block));
            self.filled = 0;
        }
        Ok(Progress::Advanced)
    }
}
