//! Round trips through qemu-img: a raw disk with data at aligned and unaligned offsets and
//! holes, converted to VHD fixed and dynamic and to stream-optimized VMDK, decoded and
//! compared byte for byte with the raw disk (holes read as zeros), and checked for which
//! blocks were emitted.

mod common;

use std::path::Path;

use common::{OrFail, convert, data_blocks, decode_bytes, make_raw, scratch};
use disk::{BLOCK_SIZE, BlockChecksum, DecoderOptions, Format, LinearChecksum, block_count};

const MIB: u64 = 1 << 20;

/// 37 MiB + 3 sectors: not a multiple of a block, a VHD block or a VMDK grain.
const SIZE: u64 = 37 * MIB + 1536;

fn writes() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, common::pattern(1, 1000)), // first sector, unaligned length
        (MIB / 2 - 100, common::pattern(2, 300)), // straddles blocks 0 and 1
        (5 * MIB + 12_345, common::pattern(3, 700 * 1024)), // unaligned, spans 3 blocks
        (20 * MIB, common::pattern(4, 64 * 1024)), // one aligned grain
        (24 * MIB, common::pattern(5, 2 * MIB as usize)), // a whole VHD block
        (30 * MIB + 4096, vec![0xFF; 512]), // compressible, inside a block
        (SIZE - 10, common::pattern(6, 10)), // the last bytes of the disk
    ]
}

/// Decodes `image` in 1 MiB and in odd 4099-byte chunks; both must agree and rebuild `raw`.
fn check(image: &Path, raw: &[u8], format: Format) -> common::Decoded {
    let bytes = std::fs::read(image).or_fail("read image");
    let decoded = decode_bytes(&bytes, MIB as usize, DecoderOptions::default()).or_fail("decode");
    assert_eq!(decoded.probe.format, format);
    assert!(
        decoded.probe.virtual_size >= raw.len() as u64,
        "virtual size {} < raw {}",
        decoded.probe.virtual_size,
        raw.len()
    );
    let disk = decoded.disk();
    assert!(
        disk[..raw.len()] == *raw,
        "{format}: decoded disk differs from the raw disk"
    );
    assert!(
        disk[raw.len()..].iter().all(|&b| b == 0),
        "{format}: bytes past the raw disk are not zero"
    );
    let odd = decode_bytes(&bytes, 4099, DecoderOptions::default()).or_fail("decode in odd chunks");
    assert!(
        odd.blocks == decoded.blocks,
        "{format}: chunking changed the output"
    );
    for wanted in data_blocks(raw) {
        assert!(
            decoded.blocks.contains_key(&wanted),
            "{format}: block {wanted} holds data but was not emitted"
        );
    }
    decoded
}

#[test]
fn raw_image_emits_every_block() {
    let dir = scratch("raw");
    let raw_path = dir.join("disk.raw");
    let raw = make_raw(&raw_path, SIZE, &writes());
    let decoded = check(&raw_path, &raw, Format::Raw);
    assert_eq!(decoded.blocks.len() as u64, block_count(SIZE));
    assert_eq!(decoded.probe.volume_size_gib(), 1);
    let zero = decoded.blocks.values().filter(|b| b.is_zero).count();
    assert_eq!(zero, decoded.blocks.len() - data_blocks(&raw).len());
}

#[test]
fn vhd_fixed_round_trips() {
    let dir = scratch("vhd-fixed");
    let raw_path = dir.join("disk.raw");
    let raw = make_raw(&raw_path, SIZE, &writes());
    let image = dir.join("disk.vhd");
    convert(&raw_path, &image, "vpc", "subformat=fixed");
    let decoded = check(&image, &raw, Format::VhdFixed);
    assert_eq!(
        decoded.blocks.len() as u64,
        block_count(decoded.probe.virtual_size)
    );
}

#[test]
fn vhd_dynamic_round_trips_and_skips_unallocated_blocks() {
    let dir = scratch("vhd-dynamic");
    let raw_path = dir.join("disk.raw");
    let raw = make_raw(&raw_path, SIZE, &writes());
    for (name, options) in [
        ("default", "subformat=dynamic"),
        ("exact", "subformat=dynamic,force_size=on"),
    ] {
        let image = dir.join(format!("{name}.vhd"));
        convert(&raw_path, &image, "vpc", options);
        let decoded = check(&image, &raw, Format::VhdDynamic);
        // Emitted blocks all lie in 2 MiB VHD blocks qemu allocated, i.e. ones holding data.
        let per_vhd_block = 2 * MIB as usize / BLOCK_SIZE;
        let allocated: Vec<usize> = data_blocks(&raw)
            .iter()
            .map(|b| *b as usize / per_vhd_block)
            .collect();
        for index in decoded.blocks.keys() {
            assert!(
                allocated.contains(&(*index as usize / per_vhd_block)),
                "{name}: block {index} is in an unallocated VHD block"
            );
        }
        assert!(decoded.blocks.len() < block_count(decoded.probe.virtual_size) as usize / 2);
    }
}

#[test]
fn vmdk_stream_optimized_round_trips_and_skips_holes() {
    let dir = scratch("vmdk");
    let raw_path = dir.join("disk.raw");
    let raw = make_raw(&raw_path, SIZE, &writes());
    let image = dir.join("disk.vmdk");
    convert(&raw_path, &image, "vmdk", "subformat=streamOptimized");
    let decoded = check(&image, &raw, Format::VmdkStreamOptimized);
    assert_eq!(
        decoded.blocks.keys().copied().collect::<Vec<_>>(),
        data_blocks(&raw),
        "emitted blocks are exactly the blocks with data"
    );
    assert!(decoded.stats.grains > 0);
}

#[test]
fn empty_disks_emit_nothing_but_raw_and_fixed_zero_blocks() {
    let dir = scratch("empty");
    let raw_path = dir.join("empty.raw");
    let raw = make_raw(&raw_path, 3 * MIB, &[]);
    for (format, name, options, expected) in [
        ("vpc", "d.vhd", "subformat=dynamic", Format::VhdDynamic),
        (
            "vmdk",
            "s.vmdk",
            "subformat=streamOptimized",
            Format::VmdkStreamOptimized,
        ),
    ] {
        let image = dir.join(name);
        convert(&raw_path, &image, format, options);
        let decoded = check(&image, &raw, expected);
        assert!(
            decoded.blocks.is_empty(),
            "{expected}: an empty disk emitted blocks"
        );
    }
    let fixed = dir.join("f.vhd");
    convert(&raw_path, &fixed, "vpc", "subformat=fixed");
    let decoded = check(&fixed, &raw, Format::VhdFixed);
    assert!(decoded.blocks.values().all(|b| b.is_zero));
}

#[test]
fn tiny_raw_image_is_one_zero_padded_block() {
    let bytes = common::pattern(9, 1000);
    let decoded = decode_bytes(&bytes, 7, DecoderOptions::default()).unwrap();
    assert_eq!(decoded.blocks.len(), 1);
    assert_eq!(decoded.disk(), bytes);
}

#[test]
fn checksums_agree_across_formats() {
    let dir = scratch("checksums");
    let raw_path = dir.join("disk.raw");
    make_raw(&raw_path, SIZE, &writes());
    let vmdk = dir.join("disk.vmdk");
    convert(&raw_path, &vmdk, "vmdk", "subformat=streamOptimized");
    let aggregate = |path: &Path, skip_zero: bool| {
        let decoded = decode_bytes(
            &std::fs::read(path).unwrap(),
            MIB as usize,
            DecoderOptions::default(),
        )
        .unwrap();
        let mut c = LinearChecksum::new();
        // Recorded in reverse: the aggregate must not depend on upload completion order.
        for block in decoded
            .blocks
            .values()
            .rev()
            .filter(|b| !(skip_zero && b.is_zero))
        {
            c.record(block.index, BlockChecksum::of(&block.data));
        }
        (c.changed_blocks_count(), c.aggregate_base64())
    };
    let vhd = dir.join("disk.vhd");
    convert(&raw_path, &vhd, "vpc", "subformat=dynamic");
    // The raw image and the dynamic VHD with their zero blocks skipped write exactly what
    // the VMDK writes.
    let expected = aggregate(&vmdk, false);
    assert_eq!(aggregate(&raw_path, true), expected);
    assert_eq!(aggregate(&vhd, true), expected);
    assert_eq!(
        expected.0,
        data_blocks(&std::fs::read(&raw_path).unwrap()).len() as u64
    );
}

/// Sets a VHD footer's disk type and recomputes its checksum (spec: one's complement of the
/// byte sum without the checksum field).
fn retype_footer(footer: &mut [u8], disk_type: u32) {
    footer[60..64].copy_from_slice(&disk_type.to_be_bytes());
    footer[64..68].fill(0);
    let sum = footer
        .iter()
        .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
}

#[test]
fn other_formats_and_variants_are_refused_by_name() {
    let dir = scratch("refused");
    let raw_path = dir.join("disk.raw");
    make_raw(&raw_path, 4 * MIB, &writes()[..2]);
    let refusal = |format: &str, options: &str| {
        let out = dir.join(format!("image.{format}"));
        convert(&raw_path, &out, format, options);
        common::probe_bytes(&std::fs::read(&out).unwrap())
            .err()
            .unwrap()
            .to_string()
    };
    let err = refusal("vmdk", "subformat=monolithicSparse");
    assert!(
        err.contains("createType \"monolithicSparse\"") && err.contains("only stream-optimized"),
        "{err}"
    );
    assert!(refusal("vhdx", "").contains("VHDX"));
    assert!(refusal("qcow2", "").contains("qcow2"));
    // A differencing VHD: qemu cannot write one, so retype a dynamic one (both footers).
    let vhd = dir.join("diff.vhd");
    convert(&raw_path, &vhd, "vpc", "subformat=dynamic");
    let mut bytes = std::fs::read(&vhd).unwrap();
    let end = bytes.len();
    retype_footer(&mut bytes[..512], 4);
    retype_footer(&mut bytes[end - 512..], 4);
    let err = common::probe_bytes(&bytes).err().unwrap().to_string();
    assert!(
        err.starts_with("unsupported disk image: VHD differencing disk"),
        "{err}"
    );
}
