//! VMDK stream-optimized sparse extents (VMware "Virtual Disk Format 1.1", sections "Hosted
//! Sparse Extent Header" and "Stream-Optimized Compressed Sparse Extents").
//!
//! Layout: the 512-byte sparse extent header (little-endian), the embedded descriptor, then
//! from sector `overHead` a sequence of sector-aligned markers: grain markers (`lba` u64,
//! `size` u32 > 0, then `size` bytes of zlib data, padded to a sector) in any order, and
//! metadata markers (`numSectors` u64, `size` 0, `type` u32 padded to a sector, then
//! `numSectors` sectors of grain table, grain directory or footer) up to the end-of-stream
//! marker. The grain directory and tables are not needed: each grain carries its LBA, and
//! a grain that is absent is a hole (never emitted). qemu-img writes its tables in the
//! overhead before the grains instead of as markers; both layouts decode the same way.

use flate2::{Decompress, FlushDecompress, Status};

use crate::assembler::{Assembler, Piece};
use crate::block::SECTOR;
use crate::error::DecodeError;
use crate::fields::{le16, le32, le64};
use crate::input::Input;
use crate::stream::Progress;

/// Magic number: spec `SPARSE_MAGICNUMBER` 0x564d444b ("VMDK") stored little-endian, so
/// the file starts with the bytes "KDMV".
pub(crate) const MAGIC: &[u8; 4] = b"KDMV";
/// flags bit 0: the newline-detection characters are valid.
const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// flags bit 16: grains are compressed.
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
/// flags bit 17: the extent carries markers (stream-optimized).
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` value for deflate (spec: `COMPRESSION_DEFLATE 1`; the data is in the
/// zlib format of RFC 1950, as written by VMware and by qemu's `compress()`).
pub(crate) const COMPRESS_DEFLATE: u16 = 1;
/// Metadata marker types (spec: `MARKER_EOS`, `MARKER_GT`, `MARKER_GD`, `MARKER_FOOTER`).
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// `gdOffset` of a header whose grain directory is only known from the footer (spec:
/// `GD_AT_END`), the layout of a true stream, which must end with footer and end-of-stream.
const GD_AT_END: u64 = 0xFFFF_FFFF_FFFF_FFFF;
/// Bytes of a grain marker before its compressed data (`lba` u64 + `size` u32).
const GRAIN_MARKER_HEAD: u64 = 12;
/// Largest grain accepted: 32768 sectors (16 MiB). VMware and qemu write 128 (64 KiB); the
/// bound caps the decompression buffer and the blocks one grain can produce.
const MAX_GRAIN_SECTORS: u64 = 1 << 15;
/// Largest embedded descriptor read (1 MiB; qemu writes 20 sectors).
const MAX_DESCRIPTOR_LEN: u64 = 1 << 20;

/// The sparse extent header fields this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) flags: u32,
    /// Virtual size in sectors.
    pub(crate) capacity: u64,
    /// Grain size in sectors.
    pub(crate) grain_size: u64,
    pub(crate) descriptor_offset: u64,
    pub(crate) descriptor_size: u64,
    /// Sectors before the first grain marker.
    pub(crate) overhead: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub(crate) gd_offset: u64,
    pub(crate) compress_algorithm: u16,
}

impl Header {
    /// Grains compressed and markers present: the stream-optimized variant.
    pub(crate) fn is_stream_optimized(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0 && self.flags & FLAG_MARKERS != 0
    }
}

/// Parses the 512-byte sparse extent header at `offset` (0, or the footer copy).
pub(crate) fn parse_header(b: &[u8], offset: u64) -> Result<Header, DecodeError> {
    if b.len() < SECTOR as usize || !b.starts_with(MAGIC) {
        return Err(DecodeError::malformed(
            "VMDK sparse extent header",
            offset,
            "expected the magic \"KDMV\" and 512 bytes",
        ));
    }
    let header = Header {
        version: le32(b, 4),
        flags: le32(b, 8),
        capacity: le64(b, 12),
        grain_size: le64(b, 20),
        descriptor_offset: le64(b, 28),
        descriptor_size: le64(b, 36),
        overhead: le64(b, 64),
        gd_offset: le64(b, 56),
        compress_algorithm: le16(b, 77),
    };
    if !(1..=3).contains(&header.version) {
        return Err(DecodeError::Unsupported(format!(
            "VMDK sparse extent version {} (header at offset {offset}); versions 1 to 3 are specified",
            header.version
        )));
    }
    // Spec: singleEndLineChar '\n', nonEndLineChar ' ', doubleEndLineChar1 '\r',
    // doubleEndLineChar2 '\n' detect a file damaged by a text-mode transfer.
    if header.flags & FLAG_NEWLINE_TEST != 0 && b.get(73..77) != Some(b"\n \r\n".as_slice()) {
        return Err(DecodeError::malformed(
            "VMDK sparse extent header",
            offset,
            "the newline-detection bytes (offset 73..77) are not \"\\n \\r\\n\": the file was altered by a text-mode transfer",
        ));
    }
    if !header.grain_size.is_power_of_two() || header.grain_size > MAX_GRAIN_SECTORS {
        return Err(DecodeError::malformed(
            "VMDK sparse extent header",
            offset,
            format!(
                "grain size {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                header.grain_size
            ),
        ));
    }
    Ok(header)
}

/// `createType` of an embedded descriptor, if it names one.
pub(crate) fn create_type(descriptor: &[u8]) -> Option<String> {
    let end = descriptor
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(descriptor.len());
    let text = String::from_utf8_lossy(descriptor.get(..end).unwrap_or_default());
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "createType").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Where the stream decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the embedded descriptor.
    Descriptor,
    /// Skipping to sector `overHead`.
    Overhead,
    /// At a marker.
    Marker,
    /// Skipping metadata up to this file offset.
    Skip(u64),
    /// After the end-of-stream marker.
    Done,
}

/// Streaming decoder of a stream-optimized extent. Memory: one decompressed grain
/// (`grainSize` sectors) and the compressed grain being read, besides the assembler.
pub(crate) struct VmdkStream {
    header: Header,
    state: State,
    inflater: Decompress,
    grain: Vec<u8>,
    /// Grain markers decoded.
    pub(crate) grains: u64,
    /// A footer marker was read.
    footer_seen: bool,
}

impl VmdkStream {
    /// A decoder for the extent whose header (at offset 0) is `header`.
    pub(crate) fn new(header: Header) -> Self {
        Self {
            header,
            state: State::Descriptor,
            inflater: Decompress::new(true),
            grain: Vec::new(),
            grains: 0,
            footer_seen: false,
        }
    }

    fn grain_bytes(&self) -> u64 {
        self.header.grain_size * SECTOR
    }

    /// What the decoder waits for, for a truncation error.
    pub(crate) fn expecting(&self) -> String {
        match self.state {
            State::Descriptor => "the VMDK embedded descriptor".to_owned(),
            State::Overhead => format!(
                "the VMDK metadata up to sector {} (overHead)",
                self.header.overhead
            ),
            State::Marker => "a VMDK marker (grain, metadata or end-of-stream)".to_owned(),
            State::Skip(end) => format!("VMDK metadata up to offset {end}"),
            State::Done => "the end of the file".to_owned(),
        }
    }

    /// One decoding step: at most one marker.
    pub(crate) fn step(
        &mut self,
        input: &mut Input,
        asm: &mut Assembler,
    ) -> Result<Progress, DecodeError> {
        match self.state {
            State::Descriptor => self.read_descriptor(input),
            State::Overhead => Ok(self.skip(input, self.header.overhead.saturating_mul(SECTOR))),
            State::Marker => self.read_marker(input, asm),
            State::Skip(end) => Ok(self.skip(input, end)),
            State::Done => Ok(Progress::Done),
        }
    }

    fn skip(&mut self, input: &mut Input, end: u64) -> Progress {
        if input.skip_to(end) {
            self.state = State::Marker;
            Progress::Advanced
        } else {
            Progress::NeedInput
        }
    }

    fn read_descriptor(&mut self, input: &mut Input) -> Result<Progress, DecodeError> {
        let (offset, size) = (self.header.descriptor_offset, self.header.descriptor_size);
        if offset == 0 || size == 0 {
            self.state = State::Overhead;
            return Ok(Progress::Advanced);
        }
        let (start, len) = (offset.saturating_mul(SECTOR), size.saturating_mul(SECTOR));
        if start < SECTOR
            || len > MAX_DESCRIPTOR_LEN
            || start.saturating_add(len) > self.header.overhead.saturating_mul(SECTOR)
        {
            return Err(DecodeError::malformed(
                "VMDK sparse extent header",
                0,
                format!(
                    "descriptor at sector {offset} ({size} sectors) is not inside the overhead of {} sectors (or is larger than {MAX_DESCRIPTOR_LEN} bytes)",
                    self.header.overhead
                ),
            ));
        }
        if !input.skip_to(start) {
            return Ok(Progress::NeedInput);
        }
        let Some(text) = input.peek(usize::try_from(len).unwrap_or(usize::MAX)) else {
            return Ok(Progress::NeedInput);
        };
        if let Some(kind) = create_type(text)
            && kind != "streamOptimized"
        {
            return Err(DecodeError::Unsupported(format!(
                "VMDK descriptor at offset {start} says createType=\"{kind}\" but the header flags say stream-optimized; refusing the contradiction"
            )));
        }
        self.state = State::Overhead;
        Ok(Progress::Advanced)
    }

    fn read_marker(
        &mut self,
        input: &mut Input,
        asm: &mut Assembler,
    ) -> Result<Progress, DecodeError> {
        // qemu-img writes its grain directory in the overhead and ends the file after the
        // last grain, without an end-of-stream marker; a stream whose directory is at the end
        // (GD_AT_END, VMware's layout) must reach its footer and end-of-stream marker.
        if input.pos() == input.total_len() && self.header.gd_offset != GD_AT_END {
            self.state = State::Done;
            return Ok(Progress::Done);
        }
        let Some(sector) = input.peek(SECTOR as usize) else {
            return Ok(Progress::NeedInput);
        };
        let (val, size) = (le64(sector, 0), le32(sector, 8));
        if size > 0 {
            return self.read_grain(input, asm, val, u64::from(size));
        }
        let at = input.pos();
        let kind = le32(sector, 12);
        let end = val
            .checked_mul(SECTOR)
            .and_then(|n| n.checked_add(at + SECTOR))
            .filter(|end| *end <= input.total_len())
            .ok_or_else(|| {
                DecodeError::truncated(
                    input.total_len(),
                    format!(
                        "the {val} sectors of metadata announced by the VMDK marker at offset {at}"
                    ),
                )
            })?;
        match kind {
            MARKER_EOS => {
                if self.header.gd_offset == GD_AT_END && !self.footer_seen {
                    return Err(DecodeError::malformed(
                        "VMDK end-of-stream marker",
                        at,
                        "the header's gdOffset is GD_AT_END but no footer marker came before the end of the stream",
                    ));
                }
                input.consume(SECTOR as usize);
                self.state = State::Done;
                return Ok(Progress::Done);
            }
            MARKER_GT | MARKER_GD => {}
            MARKER_FOOTER => {
                let Some(footer) = input.peek(2 * SECTOR as usize) else {
                    return Ok(Progress::NeedInput);
                };
                self.check_footer(
                    footer.get(SECTOR as usize..).unwrap_or_default(),
                    at + SECTOR,
                )?;
                self.footer_seen = true;
            }
            other => {
                return Err(DecodeError::malformed(
                    "VMDK metadata marker",
                    at,
                    format!(
                        "unknown marker type {other} (0 end-of-stream, 1 grain table, 2 grain directory, 3 footer)"
                    ),
                ));
            }
        }
        input.consume(SECTOR as usize);
        self.state = State::Skip(end);
        Ok(Progress::Advanced)
    }

    /// The footer repeats the header with the real `gdOffset`; it must describe the same disk.
    fn check_footer(&self, footer: &[u8], at: u64) -> Result<(), DecodeError> {
        let copy = parse_header(footer, at)?;
        if copy.capacity != self.header.capacity || copy.grain_size != self.header.grain_size {
            return Err(DecodeError::malformed(
                "VMDK footer",
                at,
                format!(
                    "capacity {} / grain size {} differ from the header's {} / {}",
                    copy.capacity, copy.grain_size, self.header.capacity, self.header.grain_size
                ),
            ));
        }
        Ok(())
    }

    fn read_grain(
        &mut self,
        input: &mut Input,
        asm: &mut Assembler,
        lba: u64,
        size: u64,
    ) -> Result<Progress, DecodeError> {
        let at = input.pos();
        let grain_bytes = self.grain_bytes();
        // zlib's worst case grows incompressible data by ~0.03 %; anything far larger is
        // not a grain of this extent.
        let max_size = grain_bytes + grain_bytes / 16 + 4096;
        if size > max_size {
            return Err(DecodeError::malformed(
                "VMDK grain marker",
                at,
                format!(
                    "compressed size {size} exceeds the {max_size} bytes a grain of {grain_bytes} bytes can take"
                ),
            ));
        }
        if lba >= self.header.capacity {
            return Err(DecodeError::malformed(
                "VMDK grain marker claims LBA beyond capacity",
                at,
                format!("LBA {lba}, capacity {} sectors", self.header.capacity),
            ));
        }
        if !lba.is_multiple_of(self.header.grain_size) {
            return Err(DecodeError::malformed(
                "VMDK grain marker",
                at,
                format!(
                    "LBA {lba} is not a multiple of the grain size {}",
                    self.header.grain_size
                ),
            ));
        }
        let total = (GRAIN_MARKER_HEAD + size).div_ceil(SECTOR) * SECTOR;
        if at + total > input.total_len() {
            return Err(DecodeError::truncated(
                input.total_len(),
                format!(
                    "the {size} bytes of compressed grain data of the VMDK grain marker at offset {at}"
                ),
            ));
        }
        let Some(bytes) = input.peek(usize::try_from(total).unwrap_or(usize::MAX)) else {
            return Ok(Progress::NeedInput);
        };
        let compressed = bytes
            .get(GRAIN_MARKER_HEAD as usize..(GRAIN_MARKER_HEAD + size) as usize)
            .unwrap_or_default();
        let len = self.inflate(compressed, at)?;
        let piece = Piece {
            what: "VMDK grain marker",
            file_offset: at,
            virtual_offset: lba * SECTOR,
            data: self.grain.get(..len).unwrap_or_default(),
        };
        asm.write(&piece, &|b| asm_block_len(b, self.header.capacity))?;
        input.consume(usize::try_from(total).unwrap_or(usize::MAX));
        self.grains += 1;
        Ok(Progress::Advanced)
    }

    /// Inflates one grain into `self.grain`; returns its length rounded up to whole sectors.
    fn inflate(&mut self, compressed: &[u8], at: u64) -> Result<usize, DecodeError> {
        let grain_bytes = usize::try_from(self.grain_bytes()).unwrap_or(usize::MAX);
        // One spare byte tells a grain that inflates past its size from one that fills it.
        self.grain.clear();
        self.grain.resize(grain_bytes + 1, 0);
        self.inflater.reset(true);
        let status = self
            .inflater
            .decompress(compressed, &mut self.grain, FlushDecompress::Finish)
            .map_err(|e| {
                DecodeError::malformed(
                    "VMDK grain data",
                    at + GRAIN_MARKER_HEAD,
                    format!("not a valid zlib stream: {e}"),
                )
            })?;
        let out = usize::try_from(self.inflater.total_out()).unwrap_or(usize::MAX);
        if out > grain_bytes {
            return Err(DecodeError::malformed(
                "VMDK grain data",
                at + GRAIN_MARKER_HEAD,
                format!("inflates to more than the grain size of {grain_bytes} bytes"),
            ));
        }
        if status != Status::StreamEnd {
            return Err(DecodeError::malformed(
                "VMDK grain data",
                at + GRAIN_MARKER_HEAD,
                format!(
                    "the zlib stream ends early ({} of {} compressed bytes used, {out} bytes out)",
                    self.inflater.total_in(),
                    compressed.len()
                ),
            ));
        }
        let len = out.div_ceil(SECTOR as usize) * SECTOR as usize;
        // Zero the tail of a short last sector (the buffer may hold an older grain there).
        if let Some(tail) = self.grain.get_mut(out..len) {
            tail.fill(0);
        }
        Ok(len)
    }
}

/// A VMDK block is complete when every byte of it inside the disk is written: the format
/// does not say in advance which grains are holes.
fn asm_block_len(index: u32, capacity_sectors: u64) -> u64 {
    let start = u64::from(index) * crate::block::BLOCK_SIZE_U64;
    (capacity_sectors * SECTOR)
        .saturating_sub(start)
        .min(crate::block::BLOCK_SIZE_U64)
}
