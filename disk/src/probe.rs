//! Format identification from the first bytes and the last 512 bytes of an upload, which a
//! caller fetches with two ranged GETs before streaming the whole object.

use crate::block::{MAX_VIRTUAL_SIZE, SECTOR};
use crate::error::DecodeError;
use crate::vhd::{self, DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, FOOTER_LEN, Footer};
use crate::vmdk;

/// How many leading bytes [`probe`] wants (it needs 512; the rest lets it name the createType
/// of a refused VMDK).
pub const PROBE_HEAD_LEN: usize = 64 * 1024;
/// How many trailing bytes [`probe`] wants (a VHD footer).
pub const PROBE_TAIL_LEN: usize = 512;

/// A disk image format this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Raw (`.raw`, `.img`): the bytes are the disk.
    Raw,
    /// VHD fixed disk: the disk, then a 512-byte footer.
    VhdFixed,
    /// VHD dynamic disk: footer copy, dynamic header, BAT, blocks, footer.
    VhdDynamic,
    /// VMDK stream-optimized sparse extent.
    VmdkStreamOptimized,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Raw => "raw",
            Self::VhdFixed => "VHD fixed",
            Self::VhdDynamic => "VHD dynamic",
            Self::VmdkStreamOptimized => "VMDK stream-optimized",
        })
    }
}

/// What a format decoder needs from the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The first `virtual_size` bytes are the disk (raw, VHD fixed).
    Linear,
    /// A dynamic VHD with this footer, `footer_len` bytes long.
    VhdDynamic { footer: Footer, footer_len: u64 },
    /// A stream-optimized VMDK with this header.
    Vmdk(vmdk::Header),
}

/// The result of [`probe`]: the format, the virtual disk size, and what the decoder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The format found.
    pub format: Format,
    /// Size of the virtual disk in bytes (not rounded; StartSnapshot wants whole GiB).
    pub virtual_size: u64,
    /// Length of the file, as given to [`probe`].
    pub total_len: u64,
    pub(crate) layout: Layout,
}

impl Probe {
    /// `VolumeSize` for StartSnapshot: the virtual size rounded up to whole GiB.
    ///
    /// qemu-img rounds a VHD's size up to a CHS geometry (unless `-o force_size=on`): a
    /// 1 GiB raw disk becomes a 1,073,995,776-byte VHD, hence a 2 GiB volume here.
    #[must_use]
    pub fn volume_size_gib(&self) -> u64 {
        self.virtual_size.div_ceil(1 << 30).max(1)
    }
}

/// Identifies the format of a file of `total_len` bytes from `head` (its first
/// `min(PROBE_HEAD_LEN, total_len)` bytes, at least the first 512) and `tail` (its last
/// `min(PROBE_TAIL_LEN, total_len)` bytes).
///
/// # Errors
/// [`DecodeError::Unsupported`] for formats recognised and refused (VMDK other than
/// stream-optimized, VMDK descriptor files, differencing VHDs, VHDX, qcow2, an empty file,
/// a disk over 64 TiB); [`DecodeError::Malformed`] for a damaged VHD footer or VMDK header;
/// [`DecodeError::Truncated`] for a dynamic VHD without its trailing footer;
/// [`DecodeError::Usage`] when `head` or `tail` have the wrong length.
pub fn probe(head: &[u8], tail: &[u8], total_len: u64) -> Result<Probe, DecodeError> {
    let want_head = total_len.min(SECTOR);
    let want_tail = total_len.min(PROBE_TAIL_LEN as u64);
    if (head.len() as u64) < want_head || head.len() as u64 > total_len {
        return Err(DecodeError::Usage(format!(
            "probe head is {} bytes; pass the first min({PROBE_HEAD_LEN}, total_len) bytes (at least {want_head})",
            head.len()
        )));
    }
    if tail.len() as u64 != want_tail {
        return Err(DecodeError::Usage(format!(
            "probe tail is {} bytes; pass the last {want_tail} bytes",
            tail.len()
        )));
    }
    if total_len == 0 {
        return Err(DecodeError::Unsupported("the file is empty".into()));
    }
    refuse_foreign(head)?;
    let found = if head.starts_with(vmdk::MAGIC) {
        probe_vmdk(head, total_len)?
    } else if let Some(found) = probe_vhd(head, tail, total_len)? {
        found
    } else {
        Probe {
            format: Format::Raw,
            virtual_size: total_len,
            total_len,
            layout: Layout::Linear,
        }
    };
    if found.virtual_size > MAX_VIRTUAL_SIZE {
        return Err(DecodeError::Unsupported(format!(
            "{} disk of {} bytes: larger than the 64 TiB an EBS snapshot can hold",
            found.format, found.virtual_size
        )));
    }
    if found.virtual_size == 0 {
        return Err(DecodeError::Unsupported(format!(
            "{} disk of size 0",
            found.format
        )));
    }
    Ok(found)
}

/// Refuses formats recognised by their magic that this crate does not decode.
fn refuse_foreign(head: &[u8]) -> Result<(), DecodeError> {
    let refused = [
        (
            &b"QFI\xfb"[..],
            "qcow2 (convert it to raw, VHD or stream-optimized VMDK)",
        ),
        (b"vhdxfile", "VHDX (convert it to VHD or raw)"),
        (b"COWD", "VMDK version 1 (ESX COWD sparse extent)"),
        (
            b"# Disk DescriptorFile",
            "a VMDK descriptor file: it references separate extent files (upload the flat extent as raw, or convert to stream-optimized)",
        ),
    ];
    for (magic, what) in refused {
        if head.starts_with(magic) {
            return Err(DecodeError::Unsupported(what.to_owned()));
        }
    }
    Ok(())
}

fn probe_vmdk(head: &[u8], total_len: u64) -> Result<Probe, DecodeError> {
    let header = vmdk::parse_header(head, 0)?;
    if !header.is_stream_optimized() {
        let kind = head
            .get(
                usize::try_from(header.descriptor_offset.saturating_mul(SECTOR))
                    .unwrap_or(usize::MAX)..,
            )
            .and_then(|d| {
                d.get(
                    ..usize::try_from(header.descriptor_size.saturating_mul(SECTOR))
                        .unwrap_or(0)
                        .min(d.len()),
                )
            })
            .and_then(vmdk::create_type)
            .unwrap_or_else(|| "unknown".to_owned());
        return Err(DecodeError::Unsupported(format!(
            "VMDK sparse extent version {}, flags {:#010x} (createType \"{kind}\"): only stream-optimized extents (compressed grains with markers, flags bits 16 and 17) are decoded; convert with `qemu-img convert -O vmdk -o subformat=streamOptimized` or to raw",
            header.version, header.flags
        )));
    }
    if header.compress_algorithm != vmdk::COMPRESS_DEFLATE {
        return Err(DecodeError::Unsupported(format!(
            "VMDK compressAlgorithm {} (only 1, deflate, is specified)",
            header.compress_algorithm
        )));
    }
    if header.overhead == 0 || header.overhead.saturating_mul(SECTOR) > total_len {
        return Err(DecodeError::malformed(
            "VMDK sparse extent header",
            0,
            format!(
                "overHead of {} sectors is not within the file of {total_len} bytes",
                header.overhead
            ),
        ));
    }
    Ok(Probe {
        format: Format::VmdkStreamOptimized,
        virtual_size: header.capacity.saturating_mul(SECTOR),
        total_len,
        layout: Layout::Vmdk(header),
    })
}

/// A VHD if the tail holds a footer (512 bytes, or 511 from Virtual PC before 2004).
fn probe_vhd(head: &[u8], tail: &[u8], total_len: u64) -> Result<Option<Probe>, DecodeError> {
    let footer_len = if vhd::is_footer(tail) && tail.len() == FOOTER_LEN {
        FOOTER_LEN
    } else if tail.len() == FOOTER_LEN && vhd::is_footer(tail.get(1..).unwrap_or_default()) {
        FOOTER_LEN - 1
    } else if vhd::is_footer(head) && head.len() >= FOOTER_LEN {
        let footer = vhd::parse_footer(head.get(..FOOTER_LEN).unwrap_or_default(), 0)?;
        if footer.disk_type == DISK_DYNAMIC || footer.disk_type == DISK_DIFFERENCING {
            return Err(DecodeError::truncated(
                total_len,
                format!(
                    "the VHD footer in the last 512 bytes (offset {}); the file starts with a footer copy",
                    total_len.saturating_sub(FOOTER_LEN as u64)
                ),
            ));
        }
        return Ok(None);
    } else {
        return Ok(None);
    };
    let footer_offset = total_len - footer_len as u64;
    let footer = vhd::parse_footer(
        tail.get(FOOTER_LEN - footer_len..).unwrap_or_default(),
        footer_offset,
    )?;
    let layout = match footer.disk_type {
        DISK_FIXED => {
            if footer.current_size > footer_offset {
                return Err(DecodeError::malformed(
                    "VHD fixed footer",
                    footer_offset,
                    format!(
                        "current size {} is larger than the {footer_offset} bytes of data before the footer",
                        footer.current_size
                    ),
                ));
            }
            Layout::Linear
        }
        DISK_DYNAMIC => {
            check_footer_copy(head, &footer)?;
            if !footer.current_size.is_multiple_of(SECTOR) {
                return Err(DecodeError::malformed(
                    "VHD footer",
                    footer_offset,
                    format!(
                        "current size {} is not a whole number of sectors",
                        footer.current_size
                    ),
                ));
            }
            Layout::VhdDynamic {
                footer: footer.clone(),
                footer_len: footer_len as u64,
            }
        }
        DISK_DIFFERENCING => {
            return Err(DecodeError::Unsupported(
                "VHD differencing disk: its unallocated sectors live in a parent image that is not uploaded; merge it (e.g. `qemu-img convert -O vpc`) first".into(),
            ));
        }
        other => {
            return Err(DecodeError::Unsupported(format!(
                "VHD disk type {other} (footer at offset {footer_offset}); only 2 (fixed) and 3 (dynamic) are decoded"
            )));
        }
    };
    Ok(Some(Probe {
        format: if matches!(layout, Layout::Linear) {
            Format::VhdFixed
        } else {
            Format::VhdDynamic
        },
        virtual_size: footer.current_size,
        total_len,
        layout,
    }))
}

/// A dynamic disk starts with a copy of its footer (spec: "a copy of the hard disk footer
/// [is] at the beginning of the file"); it must agree on what the decoder uses.
fn check_footer_copy(head: &[u8], footer: &Footer) -> Result<(), DecodeError> {
    let copy = vhd::parse_footer(head.get(..FOOTER_LEN).unwrap_or_default(), 0)?;
    if copy != *footer {
        return Err(DecodeError::malformed(
            "VHD footer copy",
            0,
            format!("{copy:?} differs from the footer at the end of the file {footer:?}"),
        ));
    }
    Ok(())
}
