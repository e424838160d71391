//! The push-style streaming decoder: the caller pushes the file's bytes in order and pulls
//! complete 512 KiB blocks; plus [`decode_reader`] for a synchronous `Read`.

use std::io::Read;

use crate::assembler::{Assembler, OnPressure};
use crate::block::Block;
use crate::error::DecodeError;
use crate::input::Input;
use crate::linear::Linear;
use crate::probe::{Layout, Probe};
use crate::stream::Progress;
use crate::vhd::VhdDynamic;
use crate::vmdk::VmdkStream;

/// Default bound on partially filled blocks held at once (64 × 512 KiB = 32 MiB).
pub const DEFAULT_MAX_PARTIAL_BLOCKS: usize = 64;

/// Tunables of a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderOptions {
    /// Most partially filled 512 KiB blocks held at once. VMDK: past it, the least recently
    /// written one is emitted with its unwritten sectors as zeros (a later grain for it then
    /// fails); VHD: past it, decoding fails (the BAT promises more data for each of them).
    pub max_partial_blocks: usize,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        Self {
            max_partial_blocks: DEFAULT_MAX_PARTIAL_BLOCKS,
        }
    }
}

/// Counters of a finished (or running) decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks handed out by [`Decoder::next_block`].
    pub blocks: u64,
    /// Of those, blocks whose bytes are all zero.
    pub zero_blocks: u64,
    /// VMDK grains decoded (0 for other formats).
    pub grains: u64,
}

enum Format {
    Linear(Linear),
    VhdDynamic(Box<VhdDynamic>),
    Vmdk(Box<VmdkStream>),
}

/// Decodes one disk image pushed in file order into complete 512 KiB blocks.
///
/// Protocol: [`Decoder::push`] a chunk, then call [`Decoder::next_block`] until it returns
/// `Ok(None)`; repeat; after the last chunk call [`Decoder::finish`] and drain
/// [`Decoder::next_block`] once more: its final `Ok(None)` means the image was complete and
/// valid. Blocks come in the order the image stores them (ascending for raw, fixed VHD and
/// images written sequentially); a block index never repeats; holes are never emitted.
///
/// Memory: the bytes pushed and not yet decoded (the caller's chunk size), the assembler's
/// partial blocks (at most [`DecoderOptions::max_partial_blocks`] × 512 KiB), at most 33
/// ready blocks between two `push` calls, and the per-format tables (VHD: 4 bytes per
/// block of the disk; VMDK: one grain) — about 32 MiB plus the chunk with the defaults.
pub struct Decoder {
    format: Format,
    input: Input,
    asm: Assembler,
    done: bool,
    stats: Stats,
}

impl Decoder {
    /// A decoder for the image `probe` identified, with default options.
    #[must_use]
    pub fn new(probe: &Probe) -> Self {
        Self::with_options(probe, DecoderOptions::default())
    }

    /// A decoder for the image `probe` identified.
    #[must_use]
    pub fn with_options(probe: &Probe, options: DecoderOptions) -> Self {
        let (format, on_pressure) = match &probe.layout {
            Layout::Linear => (
                Format::Linear(Linear::new(probe.virtual_size)),
                OnPressure::Fail,
            ),
            Layout::VhdDynamic { footer, footer_len } => (
                Format::VhdDynamic(Box::new(VhdDynamic::new(
                    footer,
                    probe.total_len,
                    *footer_len,
                ))),
                OnPressure::Fail,
            ),
            Layout::Vmdk(header) => (
                Format::Vmdk(Box::new(VmdkStream::new(header.clone()))),
                OnPressure::EmitOldest,
            ),
        };
        Self {
            format,
            input: Input::new(probe.total_len),
            asm: Assembler::new(probe.virtual_size, options.max_partial_blocks, on_pressure),
            done: false,
            stats: Stats::default(),
        }
    }

    /// A decoder that continues the image at file offset `offset`, as if its first `offset`
    /// bytes had been pushed and their blocks taken: the caller then pushes the file from
    /// `offset` on. Only formats whose decoder carries no state across a block boundary can
    /// resume so: raw and VHD fixed (the file's first `virtual_size` bytes are the disk), at an
    /// offset that is a multiple of [`crate::BLOCK_SIZE`]. None for the others (VHD dynamic
    /// needs its header and BAT, VMDK its grain stream from the start: re-read them).
    #[must_use]
    pub fn resume_at(probe: &Probe, offset: u64) -> Option<Self> {
        let aligned = offset.is_multiple_of(crate::block::BLOCK_SIZE_U64);
        if !matches!(probe.layout, Layout::Linear) || !aligned || offset > probe.total_len {
            return None;
        }
        let mut decoder = Self::new(probe);
        decoder.input = Input::starting_at(probe.total_len, offset);
        Some(decoder)
    }

    /// Appends the next bytes of the file (in order, starting at offset 0, or at the offset
    /// given to [`Decoder::resume_at`]).
    ///
    /// # Errors
    /// [`DecodeError::Usage`] after [`Decoder::finish`] or past the probed file length.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        self.input.push(chunk)
    }

    /// Declares that the whole file has been pushed.
    pub fn finish(&mut self) {
        self.input.end();
    }

    /// The next complete block, or `None` when more input is needed (before
    /// [`Decoder::finish`]) or the image is fully decoded (after it).
    ///
    /// # Errors
    /// A [`DecodeError`] naming the offset and the structure for malformed, truncated or
    /// unsupported content; the decoder is unusable afterwards.
    pub fn next_block(&mut self) -> Result<Option<Block>, DecodeError> {
        loop {
            if let Some(block) = self.asm.pop() {
                self.stats.blocks += 1;
                self.stats.zero_blocks += u64::from(block.is_zero);
                return Ok(Some(block));
            }
            if self.done {
                return self.check_complete();
            }
            let progress = match &mut self.format {
                Format::Linear(f) => f.step(&mut self.input, &mut self.asm)?,
                Format::VhdDynamic(f) => f.step(&mut self.input, &mut self.asm)?,
                Format::Vmdk(f) => {
                    let p = f.step(&mut self.input, &mut self.asm)?;
                    self.stats.grains = f.grains;
                    p
                }
            };
            match progress {
                Progress::Advanced => {}
                Progress::Done => {
                    self.asm.flush();
                    self.done = true;
                }
                Progress::NeedInput if self.input.ended => {
                    return Err(DecodeError::truncated(
                        self.input.received(),
                        self.expecting(),
                    ));
                }
                Progress::NeedInput => return Ok(None),
            }
        }
    }

    /// After the format's end: the rest of the file is ignored, but must be pushed.
    fn check_complete(&mut self) -> Result<Option<Block>, DecodeError> {
        let skipped = self.input.available().len();
        self.input.consume(skipped);
        if self.input.ended && self.input.received() < self.input.total_len() {
            return Err(DecodeError::truncated(
                self.input.received(),
                format!(
                    "the rest of the file up to offset {}",
                    self.input.total_len()
                ),
            ));
        }
        Ok(None)
    }

    fn expecting(&self) -> String {
        match &self.format {
            Format::Linear(f) => f.expecting(&self.input),
            Format::VhdDynamic(f) => f.expecting(),
            Format::Vmdk(f) => f.expecting(),
        }
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Partially filled blocks currently held (for memory reporting).
    #[must_use]
    pub fn partial_blocks(&self) -> usize {
        self.asm.partial_len()
    }

    /// Blocks decoded and not yet taken by [`Decoder::next_block`].
    #[must_use]
    pub fn ready_blocks(&self) -> usize {
        self.asm.ready_len()
    }
}

/// Decodes the whole image read from `reader` (positioned at offset 0) in `chunk`-byte
/// reads, handing each block to `on_block`.
///
/// # Errors
/// Any [`DecodeError`] of the decoder, or [`DecodeError::Io`] when reading fails.
pub fn decode_reader(
    probe: &Probe,
    mut reader: impl Read,
    chunk: usize,
    mut on_block: impl FnMut(Block),
) -> Result<Stats, DecodeError> {
    let mut decoder = Decoder::new(probe);
    let mut buf = vec![0; chunk.max(512)];
    let mut offset = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| DecodeError::Io {
            offset,
            message: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        decoder.push(buf.get(..n).unwrap_or_default())?;
        while let Some(block) = decoder.next_block()? {
            on_block(block);
        }
    }
    decoder.finish();
    while let Some(block) = decoder.next_block()? {
        on_block(block);
    }
    Ok(decoder.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks_of(decoder: &mut Decoder, bytes: &[u8]) -> Vec<Block> {
        let mut out = Vec::new();
        decoder.push(bytes).unwrap();
        decoder.finish();
        while let Some(b) = decoder.next_block().unwrap() {
            out.push(b);
        }
        out
    }

    #[test]
    fn a_raw_image_resumed_at_a_block_boundary_gives_the_remaining_blocks() {
        let size = 3 * crate::BLOCK_SIZE + 1000;
        let image: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let probe = crate::probe(&image[..512], &image[size - 512..], size as u64).unwrap();
        let whole = blocks_of(&mut Decoder::new(&probe), &image);
        let at = 2 * crate::BLOCK_SIZE;
        let mut resumed = Decoder::resume_at(&probe, at as u64).unwrap();
        let rest = blocks_of(&mut resumed, &image[at..]);
        assert_eq!(rest, whole[2..]);
        assert!(
            Decoder::resume_at(&probe, 1000).is_none(),
            "not at a block boundary"
        );
    }

    #[test]
    fn decoder_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Decoder>();
        assert_send::<crate::LinearChecksum>();
    }
}
