//! Disk format detection: the format named by the key's extension must match the content.
//!
//! Only the first and last 512 bytes are needed (two S3 ranged reads): a VMDK sparse extent
//! starts with `KDMV`; a VHD (fixed or dynamic) ends with a 512-byte footer starting with
//! `conectix`, and a dynamic VHD also starts with a copy of it; a qcow2 image starts with
//! `QFI\xfb`. A `.raw`/`.img` that carries one of those headers is a lying extension.

use crate::model::DiskFormat;

/// Bytes read from each end of the object.
pub const PROBE_BYTES: u64 = 512;
const VMDK_MAGIC: &[u8] = b"KDMV";
const VHD_COOKIE: &[u8] = b"conectix";
const QCOW_MAGIC: &[u8] = b"QFI\xfb";

/// The extension of the key's last path segment, if any.
pub fn extension(key: &str) -> Option<&str> {
    let file = key.rsplit('/').next().unwrap_or(key);
    file.rsplit_once('.')
        .map(|(_, ext)| ext)
        .filter(|e| !e.is_empty())
}

/// The format the extension promises, or why the key is unsupported.
pub fn format_from_key(key: &str) -> Result<DiskFormat, String> {
    match extension(key) {
        None => Err("the key has no file extension; expected .raw, .img, .vmdk or .vhd".into()),
        Some(ext) => DiskFormat::from_extension(ext).ok_or_else(|| {
            format!("unsupported file extension .{ext}; expected .raw, .img, .vmdk or .vhd")
        }),
    }
}

/// What the content looks like, judging by its magic numbers.
fn sniff(head: &[u8], tail: &[u8]) -> Option<&'static str> {
    if head.starts_with(VMDK_MAGIC) {
        Some("VMDK")
    } else if head.starts_with(QCOW_MAGIC) {
        Some("qcow2")
    } else if tail.starts_with(VHD_COOKIE) || head.starts_with(VHD_COOKIE) {
        Some("VHD")
    } else {
        None
    }
}

/// Checks that the content (`head` = first bytes, `tail` = last [`PROBE_BYTES`]) is a disk of
/// `format`; the error says what it is instead.
pub fn check_content(
    format: DiskFormat,
    size: u64,
    head: &[u8],
    tail: &[u8],
) -> Result<(), String> {
    if size == 0 {
        return Err("the object is empty (0 bytes)".into());
    }
    let seen = sniff(head, tail);
    match (format, seen) {
        (DiskFormat::Vmdk, Some("VMDK"))
        | (DiskFormat::Vhd, Some("VHD"))
        | (DiskFormat::Raw, None) => Ok(()),
        (DiskFormat::Vmdk, other) => Err(format!(
            "the extension says VMDK but the content is {} (no KDMV sparse-extent header; flat or descriptor-only VMDKs are not importable)",
            other.unwrap_or("not a VMDK")
        )),
        (DiskFormat::Vhd, other) => Err(format!(
            "the extension says VHD but the content is {} (no conectix footer in the last 512 bytes)",
            other.unwrap_or("not a VHD")
        )),
        (DiskFormat::Raw, Some(other)) => Err(format!(
            "the extension says raw but the content is a {other} image; use the matching extension"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_names_the_format() {
        assert_eq!(format_from_key("a/b/disk.RAW"), Ok(DiskFormat::Raw));
        assert_eq!(format_from_key("disk.img"), Ok(DiskFormat::Raw));
        assert_eq!(format_from_key("x.y/disk.vmdk"), Ok(DiskFormat::Vmdk));
        assert_eq!(format_from_key("disk.vhd"), Ok(DiskFormat::Vhd));
        assert_eq!(
            format_from_key("disk.qcow2"),
            Err("unsupported file extension .qcow2; expected .raw, .img, .vmdk or .vhd".into())
        );
        assert!(format_from_key("dir.raw/disk").is_err_and(|e| e.contains("no file extension")));
    }

    #[test]
    fn content_must_match_the_extension() {
        let zeros = [0u8; 512];
        let mut vhd_footer = [0u8; 512];
        vhd_footer[..8].copy_from_slice(VHD_COOKIE);
        assert_eq!(check_content(DiskFormat::Raw, 512, &zeros, &zeros), Ok(()));
        assert_eq!(
            check_content(DiskFormat::Vmdk, 512, b"KDMV\x01\x00", &zeros),
            Ok(())
        );
        assert_eq!(
            check_content(DiskFormat::Vhd, 1024, &zeros, &vhd_footer),
            Ok(())
        );
        assert!(check_content(DiskFormat::Raw, 0, &[], &[]).is_err_and(|e| e.contains("empty")));
        assert!(
            check_content(DiskFormat::Vmdk, 512, &zeros, &zeros)
                .is_err_and(|e| e.contains("no KDMV"))
        );
        assert!(
            check_content(DiskFormat::Vhd, 512, &zeros, &zeros)
                .is_err_and(|e| e.contains("conectix"))
        );
        assert!(
            check_content(DiskFormat::Raw, 512, b"QFI\xfb\x00", &zeros)
                .is_err_and(|e| e.contains("qcow2"))
        );
        assert!(
            check_content(DiskFormat::Raw, 512, b"KDMV", &zeros).is_err_and(|e| e.contains("VMDK"))
        );
        assert!(
            check_content(DiskFormat::Vmdk, 512, &zeros, &vhd_footer)
                .is_err_and(|e| e.contains("content is VHD"))
        );
    }
}
