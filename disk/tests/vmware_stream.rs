//! Stream-optimized VMDKs in VMware's own layout, built here from the "Virtual Disk Format
//! 1.1" spec (qemu-img writes a different layout: tables in the overhead, no markers for
//! them): header with gdOffset = GD_AT_END, embedded descriptor, grains in any order, grain
//! table, grain directory and footer markers, end-of-stream marker. Also the error cases.

mod common;

use std::io::Write;

use common::{OrFail, decode_bytes, pattern};
use disk::{BLOCK_SIZE, DecodeError, DecoderOptions};
use flate2::Compression;
use flate2::write::ZlibEncoder;

const GRAIN: u64 = 128; // sectors: 64 KiB
const GRAIN_BYTES: usize = 64 * 1024;
const GD_AT_END: u64 = u64::MAX;

fn header(capacity: u64, gd_offset: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&(1u32 | 1 << 16 | 1 << 17).to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor at sector 1
    h[36..44].copy_from_slice(&1u64.to_le_bytes()); // one sector long
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&2u64.to_le_bytes()); // overHead: header + descriptor
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

fn metadata_marker(sectors: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; 512];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn grain_marker(lba: u64, data: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
    z.write_all(data).or_fail("compress");
    let compressed = z.finish().or_fail("compress");
    let mut m = Vec::new();
    m.extend_from_slice(&lba.to_le_bytes());
    m.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    m.extend_from_slice(&compressed);
    m.resize(m.len().div_ceil(512) * 512, 0);
    m
}

/// A VMware-layout stream of a disk of `capacity` sectors with `grains` (LBA, data) in the
/// given order.
fn stream(capacity: u64, grains: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut s = header(capacity, GD_AT_END);
    let mut descriptor =
        b"# Disk DescriptorFile\nversion=1\ncreateType=\"streamOptimized\"\n".to_vec();
    descriptor.resize(512, 0);
    s.extend_from_slice(&descriptor);
    for (lba, data) in grains {
        s.extend_from_slice(&grain_marker(*lba, data));
    }
    s.extend_from_slice(&metadata_marker(4, 1)); // one grain table of 512 entries
    s.extend_from_slice(&[0; 2048]);
    s.extend_from_slice(&metadata_marker(1, 2)); // the grain directory
    s.extend_from_slice(&[0; 512]);
    let gd = (s.len() / 512 - 1) as u64;
    s.extend_from_slice(&metadata_marker(1, 3));
    s.extend_from_slice(&header(capacity, gd));
    s.extend_from_slice(&metadata_marker(0, 0));
    s
}

/// The disk the grains describe (holes are zeros).
fn expected(capacity: u64, grains: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut disk = vec![0u8; capacity as usize * 512];
    for (lba, data) in grains {
        let at = *lba as usize * 512;
        let end = (at + data.len()).min(disk.len());
        disk[at..end].copy_from_slice(&data[..end - at]);
    }
    disk
}

fn grain_at(index: u64, seed: u64) -> (u64, Vec<u8>) {
    (index * GRAIN, pattern(seed, GRAIN_BYTES))
}

#[test]
fn grains_in_any_order_rebuild_the_disk() {
    let capacity = 4 * 1024 * 2 + 64; // 4 MiB + 32 KiB: the last grain is cut by the capacity
    // Shuffled: backwards across blocks, holes in blocks 1 and 3, a half grain at the end.
    let mut grains: Vec<_> = [
        63, 2, 0, 9, 1, 30, 31, 24, 25, 26, 27, 28, 29, 3, 4, 5, 6, 7,
    ]
    .iter()
    .map(|&g| grain_at(g, g + 100))
    .collect();
    grains.push((64 * GRAIN, pattern(7, GRAIN_BYTES / 2)));
    let bytes = stream(capacity, &grains);
    let decoded = decode_bytes(&bytes, 1000, DecoderOptions::default()).unwrap();
    assert_eq!(decoded.disk(), expected(capacity, &grains));
    assert_eq!(
        decoded.blocks.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 3, 7, 8]
    );
    assert_eq!(decoded.stats.grains, grains.len() as u64);
}

#[test]
fn grains_too_far_out_of_order_fail_instead_of_growing_memory() {
    let capacity = 4 * 1024 * 2;
    // Block 0 gets one grain, then blocks 1 and 2 start, then block 0 again.
    let grains = vec![
        grain_at(0, 1),
        grain_at(8, 2),
        grain_at(16, 3),
        grain_at(1, 4),
    ];
    let bytes = stream(capacity, &grains);
    let tight = DecoderOptions {
        max_partial_blocks: 2,
    };
    let err = decode_bytes(&bytes, 4096, tight).err().unwrap();
    let DecodeError::BlockAlreadyEmitted {
        block,
        offset,
        reason,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*block, 0);
    assert_eq!(
        *offset,
        1024 + 3 * grain_marker(0, &pattern(1, GRAIN_BYTES)).len() as u64
    );
    assert!(
        reason.contains("more than 2 blocks were partially filled"),
        "{err}"
    );
    // With room for three partial blocks the same stream decodes.
    let roomy = DecoderOptions {
        max_partial_blocks: 3,
    };
    let decoded = decode_bytes(&bytes, 4096, roomy).unwrap();
    assert_eq!(decoded.disk(), expected(capacity, &grains));
}

#[test]
fn duplicate_grains_are_refused() {
    let capacity = 2048;
    let twice_in_partial = stream(capacity, &[grain_at(0, 1), grain_at(0, 2)]);
    let err = decode_bytes(&twice_in_partial, 4096, DecoderOptions::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("overlaps data already written"),
        "{err}"
    );
    let mut full_then_again: Vec<_> = (0..8).map(|g| grain_at(g, g)).collect();
    full_then_again.push(grain_at(3, 99));
    let err = decode_bytes(
        &stream(capacity, &full_then_again),
        4096,
        DecoderOptions::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("the same virtual sectors appear twice"),
        "{err}"
    );
}

fn error_of(bytes: &[u8]) -> String {
    decode_bytes(bytes, 4096, DecoderOptions::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn grain_beyond_capacity_names_offset_and_lba() {
    let bytes = stream(1024, &[grain_at(8, 1)]);
    assert_eq!(
        error_of(&bytes),
        "VMDK grain marker claims LBA beyond capacity at offset 1024: LBA 1024, capacity 1024 sectors"
    );
}

#[test]
fn misaligned_grain_is_refused() {
    let bytes = stream(1024, &[(5, pattern(1, GRAIN_BYTES))]);
    assert!(error_of(&bytes).contains("LBA 5 is not a multiple of the grain size 128"));
}

#[test]
fn grain_inflating_past_its_size_is_refused() {
    let bytes = stream(2048, &[(0, pattern(1, GRAIN_BYTES + 512))]);
    assert!(error_of(&bytes).contains("inflates to more than the grain size of 65536 bytes"));
}

#[test]
fn corrupt_grain_data_is_refused() {
    let mut bytes = stream(2048, &[grain_at(0, 1)]);
    bytes[1024 + 12 + 100] ^= 0x55;
    let err = error_of(&bytes);
    assert!(err.starts_with("VMDK grain data at offset 1036:"), "{err}");
}

#[test]
fn unknown_marker_type_is_refused() {
    let mut bytes = stream(2048, &[grain_at(0, 1)]);
    let gt = bytes.len() - 512 * 10;
    assert_eq!(bytes[gt + 12], 1, "grain table marker expected at {gt}");
    bytes[gt + 12] = 9;
    assert!(error_of(&bytes).contains(&format!(
        "VMDK metadata marker at offset {gt}: unknown marker type 9"
    )));
}

#[test]
fn footer_describing_another_disk_is_refused() {
    let mut bytes = stream(2048, &[grain_at(0, 1)]);
    let footer = bytes.len() - 1024;
    bytes[footer + 12] = 0x10;
    assert!(error_of(&bytes).contains("differ from the header's 2048 / 128"));
}

#[test]
fn stream_without_end_of_stream_is_truncated() {
    let bytes = stream(2048, &[grain_at(0, 1)]);
    let cut = &bytes[..bytes.len() - 512];
    let err = decode_bytes(cut, 4096, DecoderOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("a VMDK marker"), "{err}");
}

#[test]
fn end_of_stream_without_footer_is_refused() {
    let mut bytes = stream(2048, &[grain_at(0, 1)]);
    let footer_marker = bytes.len() - 1536;
    // Turn the footer marker and footer into a skipped grain directory of one sector.
    bytes[footer_marker + 12] = 2;
    assert!(error_of(&bytes).contains("no footer marker came before the end of the stream"));
}

#[test]
fn other_vmdk_variants_are_refused_by_name() {
    let mut sparse = header(2048, 1);
    sparse[8..12].copy_from_slice(&1u32.to_le_bytes()); // no compression, no markers
    let mut descriptor = b"# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\n".to_vec();
    descriptor.resize(512, 0);
    sparse.extend_from_slice(&descriptor);
    sparse.resize(2048 * 512 + 4096, 0);
    let err = common::probe_bytes(&sparse).err().unwrap().to_string();
    assert!(err.contains("createType \"monolithicSparse\""), "{err}");
    assert!(err.contains("only stream-optimized"), "{err}");
    let text = b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n".to_vec();
    let err = common::probe_bytes(&text).err().unwrap().to_string();
    assert!(err.contains("VMDK descriptor file"), "{err}");
    let mut block = vec![0u8; BLOCK_SIZE];
    block[..4].copy_from_slice(b"QFI\xfb");
    assert!(
        common::probe_bytes(&block)
            .err()
            .unwrap()
            .to_string()
            .contains("qcow2")
    );
}
