//! VHD (Microsoft "Virtual Hard Disk Image Format Specification", version 1.0, 2006):
//! the hard disk footer, the dynamic disk header, and the streaming decoder of dynamic disks.
//! Fixed disks are a raw data region followed by the footer and are decoded by `linear`.
//!
//! All VHD fields are big-endian. Checksums are "the one's complement of the sum of all the
//! bytes in the footer [header] without the checksum field" (spec, "Hard Disk Footer Format"
//! and "Dynamic Disk Header Format").

use crate::assembler::{Assembler, Piece};
use crate::block::{BLOCK_SIZE_U64, SECTOR};
use crate::error::DecodeError;
use crate::fields::{be32, be64};
use crate::input::Input;
use crate::stream::Progress;

/// Footer cookie (spec: "conectix").
pub(crate) const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// Dynamic disk header cookie (spec: "cxsparse").
const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// Size of the footer. Spec: "Versions previous to Microsoft Virtual PC 2004 create disk
/// images that have a 511-byte disk footer", which `probe` also accepts.
pub(crate) const FOOTER_LEN: usize = 512;
/// Size of the dynamic disk header.
const HEADER_LEN: usize = 1024;
/// File format version 1.0 (spec: "File Format Version ... 0x00010000"); major in the high word.
const VERSION_MAJOR_1: u32 = 0x0001;
/// Disk types (spec, "Disk Type" field).
pub(crate) const DISK_FIXED: u32 = 2;
/// Dynamic hard disk.
pub(crate) const DISK_DYNAMIC: u32 = 3;
/// Differencing hard disk: needs its parent image, so it cannot stand alone as a snapshot.
pub(crate) const DISK_DIFFERENCING: u32 = 4;
/// BAT entry of a block that is not allocated (spec: "unused table entries ... 0xFFFFFFFF").
const BAT_UNUSED: u32 = 0xFFFF_FFFF;
/// Largest BAT this decoder buffers (16 Mi entries, 64 MiB): with the default 2 MiB blocks
/// that is 32 TiB, past VHD's own 2040 GiB limit (the 2 TiB of VHDX's motivation).
const MAX_BAT_ENTRIES: u64 = 16 << 20;
/// Largest block size accepted (256 MiB); the spec's default is 2 MiB.
const MAX_BLOCK_SIZE: u32 = 256 << 20;

/// The fields of a hard disk footer this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    /// Absolute offset of the dynamic disk header (dynamic and differencing disks).
    pub(crate) data_offset: u64,
    /// "Current Size": the virtual disk size in bytes.
    pub(crate) current_size: u64,
    /// "Disk Type".
    pub(crate) disk_type: u32,
}

/// One's complement of the byte sum of `bytes` with `[skip, skip + 4)` left out.
fn vhd_checksum(bytes: &[u8], skip: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// True when `bytes` starts with the footer cookie.
pub(crate) fn is_footer(bytes: &[u8]) -> bool {
    bytes.starts_with(FOOTER_COOKIE)
}

/// Parses and verifies a footer (512 bytes, or 511 for pre-2004 Virtual PC) found at `offset`.
pub(crate) fn parse_footer(bytes: &[u8], offset: u64) -> Result<Footer, DecodeError> {
    if bytes.len() < FOOTER_LEN - 1 || !is_footer(bytes) {
        return Err(DecodeError::malformed(
            "VHD footer",
            offset,
            "expected the cookie \"conectix\" and 511 or 512 bytes",
        ));
    }
    let stored = be32(bytes, 64);
    let computed = vhd_checksum(bytes, 64);
    if stored != computed {
        return Err(DecodeError::malformed(
            "VHD footer checksum mismatch",
            offset,
            format!("stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let version = be32(bytes, 12);
    if version >> 16 != VERSION_MAJOR_1 {
        return Err(DecodeError::Unsupported(format!(
            "VHD file format version {version:#010x} (footer at offset {offset}); only 1.x is specified"
        )));
    }
    Ok(Footer {
        data_offset: be64(bytes, 16),
        current_size: be64(bytes, 48),
        disk_type: be32(bytes, 60),
    })
}

/// The fields of a dynamic disk header this crate uses.
#[derive(Debug, Clone)]
struct DynamicHeader {
    table_offset: u64,
    max_table_entries: u32,
    block_size: u32,
}

/// Parses and verifies the dynamic disk header found at `offset`.
fn parse_header(bytes: &[u8], offset: u64) -> Result<DynamicHeader, DecodeError> {
    if !bytes.starts_with(HEADER_COOKIE) {
        return Err(DecodeError::malformed(
            "VHD dynamic header",
            offset,
            format!(
                "expected the cookie \"cxsparse\", found {:?}",
                String::from_utf8_lossy(bytes.get(..8).unwrap_or_default())
            ),
        ));
    }
    let stored = be32(bytes, 36);
    let computed = vhd_checksum(bytes, 36);
    if stored != computed {
        return Err(DecodeError::malformed(
            "VHD dynamic header checksum mismatch",
            offset,
            format!("stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let version = be32(bytes, 24);
    if version >> 16 != VERSION_MAJOR_1 {
        return Err(DecodeError::Unsupported(format!(
            "VHD dynamic header version {version:#010x} at offset {offset}; only 1.x is specified"
        )));
    }
    let block_size = be32(bytes, 32);
    // Spec, "Block Size": "The sectors per block must always be a power of two."
    if block_size < 512 || !block_size.is_power_of_two() || block_size > MAX_BLOCK_SIZE {
        return Err(DecodeError::malformed(
            "VHD dynamic header",
            offset,
            format!(
                "block size {block_size} is not a power of two between 512 and {MAX_BLOCK_SIZE}"
            ),
        ));
    }
    Ok(DynamicHeader {
        table_offset: be64(bytes, 16),
        max_table_entries: be32(bytes, 28),
        block_size,
    })
}

/// Where the decoder of a dynamic disk is.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for the dynamic disk header.
    Header,
    /// Waiting for the BAT.
    Table,
    /// At `plan[i]`: reading its sector bitmap (`data == None`) or `data` bytes into its data.
    Block { i: usize, data: Option<u64> },
    /// Past the last block: skipping to the end of the file.
    Tail,
}

/// Streaming decoder of a dynamic VHD: header → BAT → allocated blocks in file order.
///
/// The BAT must precede every block in the file (it does in every writer we know of: the
/// spec's layout is footer copy, header, BAT, blocks, footer); the blocks may be in any order
/// relative to the disk. Memory: the BAT (4 bytes per block of the disk, at most 64 MiB)
/// and a 16-byte plan entry per allocated block.
pub(crate) struct VhdDynamic {
    header_offset: u64,
    /// Offset of the footer at the end of the file.
    footer_offset: u64,
    virtual_size: u64,
    state: State,
    header: Option<DynamicHeader>,
    /// BAT entries for the blocks of the disk (sector offsets, or [`BAT_UNUSED`]).
    bat: Vec<u32>,
    /// Allocated blocks as (file offset, block number), ascending by file offset.
    plan: Vec<(u64, u32)>,
    /// Bytes of a block's sector bitmap (spec: padded to a sector boundary).
    bitmap_len: u64,
}

impl VhdDynamic {
    /// A decoder for a dynamic disk whose footer says `footer`; the file is `total_len`
    /// bytes with a `footer_len`-byte footer at its end.
    pub(crate) fn new(footer: &Footer, total_len: u64, footer_len: u64) -> Self {
        Self {
            header_offset: footer.data_offset,
            footer_offset: total_len.saturating_sub(footer_len),
            virtual_size: footer.current_size,
            state: State::Header,
            header: None,
            bat: Vec::new(),
            plan: Vec::new(),
            bitmap_len: 0,
        }
    }

    /// What the decoder waits for, for a truncation error.
    pub(crate) fn expecting(&self) -> String {
        match self.state {
            State::Header => format!("the VHD dynamic header at offset {}", self.header_offset),
            State::Table => "the VHD block allocation table".to_owned(),
            State::Block { i, .. } => match self.plan.get(i) {
                Some((at, n)) => format!("VHD block {n} (sector bitmap and data) at offset {at}"),
                None => "a VHD block".to_owned(),
            },
            State::Tail => format!("the VHD footer at offset {}", self.footer_offset),
        }
    }

    /// One decoding step.
    pub(crate) fn step(
        &mut self,
        input: &mut Input,
        asm: &mut Assembler,
    ) -> Result<Progress, DecodeError> {
        match self.state {
            State::Header => self.read_header(input),
            State::Table => self.read_table(input),
            State::Block { i, data } => self.read_block(input, asm, i, data),
            State::Tail => Ok(if input.skip_to(input.total_len()) {
                Progress::Done
            } else {
                Progress::NeedInput
            }),
        }
    }

    fn read_header(&mut self, input: &mut Input) -> Result<Progress, DecodeError> {
        if input.pos() > self.header_offset {
            return Err(DecodeError::malformed(
                "VHD footer",
                0,
                format!(
                    "data offset {} points inside the footer copy; the dynamic header must follow it",
                    self.header_offset
                ),
            ));
        }
        if !input.skip_to(self.header_offset) {
            return Ok(Progress::NeedInput);
        }
        let Some(bytes) = input.peek(HEADER_LEN) else {
            return Ok(Progress::NeedInput);
        };
        let header = parse_header(bytes, self.header_offset)?;
        input.consume(HEADER_LEN);
        let blocks = self.virtual_size.div_ceil(u64::from(header.block_size));
        if blocks > u64::from(header.max_table_entries) {
            return Err(DecodeError::malformed(
                "VHD dynamic header",
                self.header_offset,
                format!(
                    "max table entries {} cannot map a disk of {} bytes in blocks of {} bytes ({blocks} needed)",
                    header.max_table_entries, self.virtual_size, header.block_size
                ),
            ));
        }
        if blocks > MAX_BAT_ENTRIES {
            return Err(DecodeError::Unsupported(format!(
                "VHD dynamic disk with {blocks} blocks of {} bytes: more than the {MAX_BAT_ENTRIES} BAT entries this decoder buffers",
                header.block_size
            )));
        }
        if header.table_offset < input.pos() {
            return Err(DecodeError::malformed(
                "VHD dynamic header",
                self.header_offset,
                format!(
                    "the BAT at offset {} precedes the end of the header ({}): not streamable",
                    header.table_offset,
                    input.pos()
                ),
            ));
        }
        let sectors_per_block = u64::from(header.block_size) / SECTOR;
        self.bitmap_len = sectors_per_block.div_ceil(8).div_ceil(SECTOR) * SECTOR;
        self.header = Some(header);
        self.state = State::Table;
        Ok(Progress::Advanced)
    }

    fn read_table(&mut self, input: &mut Input) -> Result<Progress, DecodeError> {
        let Some(header) = self.header.clone() else {
            return Err(DecodeError::Usage("VHD table before header".into()));
        };
        if !input.skip_to(header.table_offset) {
            return Ok(Progress::NeedInput);
        }
        let blocks = self.virtual_size.div_ceil(u64::from(header.block_size));
        let len = usize::try_from(blocks * 4).unwrap_or(usize::MAX);
        let Some(bytes) = input.peek(len) else {
            return Ok(Progress::NeedInput);
        };
        self.bat = bytes.chunks_exact(4).map(|e| be32(e, 0)).collect();
        input.consume(len);
        // The table is max_table_entries long; entries past the disk's blocks are not used.
        let table_end = header
            .table_offset
            .saturating_add(u64::from(header.max_table_entries) * 4);
        self.plan = self.make_plan(&header, table_end)?;
        self.state = State::Block { i: 0, data: None };
        Ok(Progress::Advanced)
    }

    /// Allocated blocks in file order, each checked to lie between the BAT and the footer
    /// and not to overlap the next one.
    fn make_plan(
        &self,
        header: &DynamicHeader,
        table_end: u64,
    ) -> Result<Vec<(u64, u32)>, DecodeError> {
        let mut plan: Vec<(u64, u32)> = self
            .bat
            .iter()
            .zip(0u32..)
            .filter(|(e, _)| **e != BAT_UNUSED)
            .map(|(e, n)| (u64::from(*e) * SECTOR, n))
            .collect();
        plan.sort_unstable();
        let span = self.bitmap_len + u64::from(header.block_size);
        let mut previous_end = table_end;
        for &(at, n) in &plan {
            let bat_entry_offset = header.table_offset.saturating_add(u64::from(n) * 4);
            if at < previous_end {
                return Err(DecodeError::malformed(
                    "VHD BAT entry",
                    bat_entry_offset,
                    format!(
                        "block {n} at offset {at} overlaps the BAT or another block (which ends at {previous_end})"
                    ),
                ));
            }
            previous_end = at + span;
            if previous_end > self.footer_offset {
                return Err(DecodeError::malformed(
                    "VHD BAT entry",
                    bat_entry_offset,
                    format!(
                        "block {n} at offset {at} ends at {previous_end}, past the footer at {}",
                        self.footer_offset
                    ),
                ));
            }
        }
        Ok(plan)
    }

    fn read_block(
        &mut self,
        input: &mut Input,
        asm: &mut Assembler,
        i: usize,
        data: Option<u64>,
    ) -> Result<Progress, DecodeError> {
        let Some(&(at, n)) = self.plan.get(i) else {
            self.state = State::Tail;
            return Ok(Progress::Advanced);
        };
        let block_size = self.header.as_ref().map_or(0, |h| u64::from(h.block_size));
        let Some(done) = data else {
            // The bitmap only says which sectors were written; the spec requires unwritten
            // sectors to hold zeros ("All sectors within a block whose corresponding bits in
            // the bitmap are zero must contain 512 bytes of zero on disk"), so the data is
            // read as stored, as qemu's vpc driver does.
            if !input.skip_to(at + self.bitmap_len) {
                return Ok(Progress::NeedInput);
            }
            self.state = State::Block { i, data: Some(0) };
            return Ok(Progress::Advanced);
        };
        let left = block_size - done;
        let sectors = (input.available().len() as u64)
            .min(left)
            .min(BLOCK_SIZE_U64)
            / SECTOR;
        if sectors == 0 {
            return Ok(Progress::NeedInput);
        }
        let len = usize::try_from(sectors * SECTOR).unwrap_or(usize::MAX);
        let piece = Piece {
            what: "VHD block",
            file_offset: at,
            virtual_offset: u64::from(n) * block_size + done,
            data: input.peek(len).unwrap_or_default(),
        };
        let bat = &self.bat;
        let virtual_size = self.virtual_size;
        asm.write(&piece, &|b| expected(bat, block_size, virtual_size, b))?;
        input.consume(len);
        let done = done + len as u64;
        self.state = if done == block_size {
            State::Block {
                i: i + 1,
                data: None,
            }
        } else {
            State::Block {
                i,
                data: Some(done),
            }
        };
        Ok(Progress::Advanced)
    }
}

/// Bytes EBS block `index` receives from the allocated VHD blocks overlapping it.
fn expected(bat: &[u32], block_size: u64, virtual_size: u64, index: u32) -> u64 {
    let start = u64::from(index) * BLOCK_SIZE_U64;
    let end = (start + BLOCK_SIZE_U64).min(virtual_size);
    let first = start / block_size;
    let last = end.div_ceil(block_size);
    (first..last)
        .filter(|&n| {
            usize::try_from(n)
                .ok()
                .and_then(|n| bat.get(n))
                .is_some_and(|e| *e != BAT_UNUSED)
        })
        .map(|n| {
            let (a, b) = (n * block_size, (n + 1) * block_size);
            b.min(end).saturating_sub(a.max(start))
        })
        .sum()
}
