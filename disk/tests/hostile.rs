//! Hostile input: every structural boundary of small qemu-made images cut, every byte of
//! their checksummed metadata flipped, and pseudo-random flips everywhere. The decoder must
//! never panic, must report a cut stream as truncated, and must catch every flip in a
//! checksummed VHD structure.

mod common;

use std::sync::OnceLock;

use common::{OrFail, convert, decode_bytes, decode_with, make_raw, pattern, probe_bytes, scratch};
use disk::{DecodeError, DecoderOptions};

const MIB: u64 = 1 << 20;

/// Small images (3 MiB disk with data in three places) in the three container formats,
/// made once for all tests of this file.
fn images() -> Vec<(&'static str, Vec<u8>)> {
    static IMAGES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    IMAGES.get_or_init(make_images).clone()
}

fn make_images() -> Vec<(&'static str, Vec<u8>)> {
    let dir = scratch("hostile");
    let raw = dir.join("disk.raw");
    make_raw(
        &raw,
        3 * MIB,
        &[
            (1000, pattern(1, 5000)),
            (MIB + 77, pattern(2, 300_000)),
            (3 * MIB - 512, pattern(3, 512)),
        ],
    );
    [
        ("dynamic.vhd", "vpc", "subformat=dynamic"),
        ("fixed.vhd", "vpc", "subformat=fixed"),
        ("stream.vmdk", "vmdk", "subformat=streamOptimized"),
    ]
    .into_iter()
    .map(|(name, format, options)| {
        let path = dir.join(name);
        convert(&raw, &path, format, options);
        (name, std::fs::read(path).or_fail("read image"))
    })
    .collect()
}

/// Offsets where a structure starts, found by walking the image as its format says:
/// VMDK markers from `overHead`; VHD blocks from the BAT; the footer of both VHDs.
fn structures(name: &str, bytes: &[u8]) -> Vec<usize> {
    let le64 =
        |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().or_fail("field")) as usize;
    let be32 =
        |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().or_fail("field")) as usize;
    let mut starts = vec![0, 512, bytes.len() - 512];
    if name.ends_with(".vmdk") {
        let mut at = le64(64) * 512;
        while at + 512 <= bytes.len() {
            starts.push(at);
            let size =
                u32::from_le_bytes(bytes[at + 8..at + 12].try_into().or_fail("field")) as usize;
            at += if size > 0 {
                (12 + size).div_ceil(512) * 512
            } else {
                512 + le64(at) * 512
            };
        }
    } else if name == "dynamic.vhd" {
        let table = 1536;
        starts.push(table);
        for entry in (table..table + 4 * 2).step_by(4) {
            if be32(entry) != 0xFFFF_FFFF {
                starts.extend([be32(entry) * 512, be32(entry) * 512 + 512]);
            }
        }
    }
    starts
}

/// Offsets worth cutting at: every sector of the first 8 KiB, each structure's start and the
/// bytes around and inside its first fields, and the end.
fn cut_points(name: &str, bytes: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..=16).map(|s| s * 512).collect();
    cuts.extend([
        1, 11, 12, 13, 511, 513, 1535, 1537, 65535, 65536, 65537, 65548,
    ]);
    for s in structures(name, bytes) {
        cuts.extend([
            s.saturating_sub(1),
            s,
            s + 1,
            s + 8,
            s + 12,
            s + 13,
            s + 100,
        ]);
    }
    cuts.extend([
        bytes.len() - 513,
        bytes.len() - 512,
        bytes.len() - 511,
        bytes.len() - 1,
    ]);
    cuts.retain(|&c| c < bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[test]
fn a_cut_stream_is_always_reported_truncated() {
    for (name, bytes) in images() {
        let probe = probe_bytes(&bytes).unwrap();
        let cuts = cut_points(name, &bytes);
        assert!(cuts.len() > 20, "{name}: only {} cut points", cuts.len());
        for cut in cuts {
            match decode_with(&probe, &bytes[..cut], 4096, DecoderOptions::default()) {
                Err(DecodeError::Truncated { offset, .. }) => {
                    assert!(offset <= cut as u64, "{name} cut at {cut}: offset {offset}")
                }
                Err(other) => panic!("{name} cut at {cut}: {other}"),
                Ok(_) => panic!("{name} cut at {cut}: decoded as complete"),
            }
        }
    }
}

#[test]
fn a_truncated_file_never_panics_and_dynamic_vhd_is_refused() {
    for (name, bytes) in images() {
        for cut in cut_points(name, &bytes) {
            let result = decode_bytes(&bytes[..cut], 4096, DecoderOptions::default());
            // Under 512 bytes nothing marks a VHD: such a file is raw.
            // Cut by one byte, the file ends in a valid 511-byte footer (pre-2004 Virtual
            // PC, which the spec says readers accept): indistinguishable from such a VHD.
            if name == "dynamic.vhd" && cut >= 512 && cut != bytes.len() - 1 {
                assert!(result.is_err(), "{name} truncated to {cut} decoded");
            }
        }
    }
}

#[test]
fn every_flip_in_vhd_checksummed_structures_is_caught() {
    let images = images();
    let (_, dynamic) = images.iter().find(|(n, _)| *n == "dynamic.vhd").unwrap();
    let (_, fixed) = images.iter().find(|(n, _)| *n == "fixed.vhd").unwrap();
    // Dynamic: footer copy (0..512), dynamic header (512..1536), footer (last 512).
    let mut positions: Vec<usize> = (0..1536).collect();
    positions.extend(dynamic.len() - 512..dynamic.len());
    for at in positions {
        for mask in [0x01, 0x80] {
            let mut bytes = dynamic.clone();
            bytes[at] ^= mask;
            let err = decode_bytes(&bytes, 65536, DecoderOptions::default());
            assert!(
                err.is_err(),
                "dynamic VHD with byte {at} ^ {mask:#x} decoded"
            );
        }
    }
    // Fixed: a flip in the footer either breaks its checksum or hides the cookie (then the
    // file is raw: nothing marks a fixed VHD but its footer; the caller checks the type).
    for at in fixed.len() - 512..fixed.len() {
        let mut bytes = fixed.clone();
        bytes[at] ^= 0x01;
        match probe_bytes(&bytes) {
            Err(e) => assert!(
                e.to_string().contains("VHD footer checksum mismatch"),
                "{e}"
            ),
            Ok(p) => assert!(
                at < fixed.len() - 504 && p.format == disk::Format::Raw,
                "byte {at}: {p:?}"
            ),
        }
    }
}

#[test]
fn header_checksum_error_names_offset_and_values() {
    let images = images();
    let (_, dynamic) = images.iter().find(|(n, _)| *n == "dynamic.vhd").unwrap();
    let mut bytes = dynamic.clone();
    bytes[512 + 100] ^= 0x01; // inside the dynamic header, not its checksum field
    let err = decode_bytes(&bytes, 65536, DecoderOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("VHD dynamic header checksum mismatch at offset 512: stored 0x"),
        "{err}"
    );
    assert!(err.contains(", computed 0x"), "{err}");
}

#[test]
fn flips_in_metadata_and_markers_never_panic() {
    for (name, bytes) in images() {
        // A fixed VHD is disk data and a footer, whose flips the test above covers.
        if name == "fixed.vhd" {
            continue;
        }
        // Every byte of the first 128 (the header fields), then every 16th up to 2 KiB.
        let mut positions: Vec<usize> = (0..2048).filter(|&i| i < 128 || i % 16 == 0).collect();
        for s in structures(name, &bytes) {
            positions.extend(s..(s + 16).min(bytes.len()));
        }
        positions.sort_unstable();
        positions.dedup();
        for at in positions {
            for value in [0xFF, bytes[at] ^ 0x10] {
                let mut copy = bytes.clone();
                copy[at] = value;
                let _ = decode_bytes(&copy, 65536, DecoderOptions::default());
            }
        }
    }
}

#[test]
fn random_flips_anywhere_never_panic() {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (_, bytes) in images() {
        for _ in 0..150 {
            let mut copy = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % copy.len() as u64) as usize;
                copy[at] = next() as u8;
            }
            let _ = decode_bytes(
                &copy,
                1 + (next() % 70_000) as usize,
                DecoderOptions::default(),
            );
        }
    }
}
