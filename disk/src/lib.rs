//! Streaming decoder of uploaded disk images into EBS-direct blocks (issue #18).
//!
//! A caller fetches the first [`PROBE_HEAD_LEN`] and last [`PROBE_TAIL_LEN`] bytes of the
//! object (two ranged GETs), calls [`probe`] to learn the format and the virtual disk size
//! (for StartSnapshot's `VolumeSize`, [`Probe::volume_size_gib`]), then pushes the whole
//! object in order into a [`Decoder`] and pulls complete 512 KiB [`Block`]s for
//! PutSnapshotBlock, checksummed with [`BlockChecksum`] and aggregated for CompleteSnapshot
//! with [`LinearChecksum`]. Nothing here does I/O or depends on an AWS SDK.
//!
//! # Formats, each decoded from its published specification
//! - **raw** (`.raw`, `.img`): the bytes are the disk; every block is emitted.
//! - **VHD fixed** (Microsoft "Virtual Hard Disk Image Format Specification" 1.0): the disk
//!   then a 512-byte footer (511 from Virtual PC before 2004); the footer's checksum is
//!   verified and its "Current Size" is the disk size. Every block is emitted.
//! - **VHD dynamic**: footer copy, dynamic disk header, Block Allocation Table, blocks (a
//!   sector bitmap then the data), footer. Footer and header checksums (one's complement of
//!   the byte sum) are verified; the copy at offset 0 must agree with the footer at the end.
//!   Blocks whose BAT entry is 0xFFFFFFFF are holes and are not emitted. The BAT must come
//!   before the blocks in the file (true of every writer; the spec's own layout).
//! - **VMDK stream-optimized** (VMware "Virtual Disk Format 1.1"): sparse extent header
//!   (`KDMV`, version 1–3, flags with compressed grains and markers, deflate), grain
//!   markers in any order decoded on their own, metadata markers (grain table, grain
//!   directory, footer, end-of-stream) skipped except the footer, which must describe the
//!   same disk. Grains not present are holes and are not emitted.
//!
//! # Refused, each with an error naming what was found
//! VMDK sparse extents without compressed grains and markers (monolithicSparse,
//! twoGbMaxExtentSparse): their grain tables precede the grains so they could be streamed,
//! but no uploader in scope produces them; VMDK descriptor-only files (monolithicFlat etc.:
//! the data is in other files); VMDK version-1 COWD extents; VHD differencing disks (their
//! parent is not uploaded); VHDX and qcow2 (other formats: convert); disks over 64 TiB (the
//! EBS limit) or of size 0.
//!
//! # Holes, zero blocks and partial blocks
//! A block a format marks unallocated is never emitted. A block partly covered by data is
//! emitted whole with its unwritten sectors as zeros, which is right for encrypted and
//! unencrypted snapshots alike. [`Block::is_zero`] flags all-zero blocks, which the caller
//! may skip only for an unencrypted snapshot (an unwritten block of an encrypted snapshot
//! does not read back as zeros: awslabs/coldsnap#395).
//!
//! # Memory bounds
//! Per [`Decoder`]: the caller's pushed-but-undecoded chunk; at most
//! [`DecoderOptions::max_partial_blocks`] partially filled blocks of 512 KiB (default 64,
//! 32 MiB); at most 33 ready blocks between pushes; VHD: the BAT (4 bytes per block of the
//! disk, capped at 64 MiB); VMDK: one grain (64 KiB usual, 16 MiB cap); two bitsets of
//! one bit per 512 KiB block written (256 KiB per TiB). VMDK grains out of disk order by
//! more than the partial bound fail cleanly ([`DecodeError::BlockAlreadyEmitted`]) rather
//! than grow memory. [`LinearChecksum`]: 32 bytes of digest per written block (1 GiB for a
//! fully written 16 TiB volume).
//!
//! # Throughput (measured on this project's 2-core x86_64 build machine, SHA-NI present)
//! SHA-256 of 512 KiB blocks (`examples/sha_throughput.rs`): 1.37–1.44 GB/s on one core
//! when the sha2 crate is built at opt-level 3, but only ~0.4 GB/s under the workspace's
//! release `opt-level = "s"` (the SHA-NI path is not inlined well at "s"): give sha2
//! `[profile.release.package.sha2] opt-level = 3`. On aarch64 (Lambda arm64), sha2 0.10
//! uses the ARMv8 SHA2 instructions only with its `asm` feature; without it the hashing is
//! software. Decoding a 1 GiB image and hashing its non-zero blocks
//! (`examples/decode_throughput.rs`, sha2 at opt-level 3): raw ~470 MB/s of file, dynamic
//! VHD ~960 MB/s, stream-optimized VMDK ~600 MB/s of file (~810 MB/s of blocks out); all
//! three give the same LINEAR aggregate for the same disk.
//!
//! # Checksums
//! See [`checksum`]: SHA-256 per block, base64; LINEAR aggregate = SHA-256 of the raw
//! per-block digests concatenated in ascending block index order (CompleteSnapshot API
//! reference; EBS user guide "Use EBS direct APIs checksums to validate snapshot data").

mod assembler;
mod block;
pub mod checksum;
mod decoder;
mod error;
mod fields;
mod input;
mod linear;
mod probe;
mod stream;
mod vhd;
mod vmdk;

pub use block::{BLOCK_SIZE, Block, MAX_VIRTUAL_SIZE, block_count, is_all_zero};
pub use checksum::{BlockChecksum, ChecksumStateError, LinearChecksum};
pub use decoder::{DEFAULT_MAX_PARTIAL_BLOCKS, Decoder, DecoderOptions, Stats, decode_reader};
pub use error::DecodeError;
pub use probe::{Format, PROBE_HEAD_LEN, PROBE_TAIL_LEN, Probe, probe};
