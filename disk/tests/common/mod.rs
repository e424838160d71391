//! Helpers shared by the integration tests: decoding a file or a byte slice the way the
//! Lambda will (probe from the head and tail, then push chunks), rebuilding the disk from
//! the blocks, deterministic data patterns, and qemu-img.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use disk::{
    BLOCK_SIZE, Block, DecodeError, Decoder, DecoderOptions, PROBE_HEAD_LEN, PROBE_TAIL_LEN, Probe,
    Stats,
};

/// `unwrap` with the failure named, for helpers outside `#[test]` functions (where the
/// workspace denies `unwrap`/`expect`).
pub trait OrFail<T> {
    /// The value, or a panic naming `what` and the error.
    fn or_fail(self, what: &str) -> T;
}

impl<T, E: std::fmt::Debug> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }
}

impl<T> OrFail<T> for Option<T> {
    fn or_fail(self, what: &str) -> T {
        self.unwrap_or_else(|| panic!("{what}: nothing"))
    }
}

/// The blocks of one decode, by index (each index at most once).
pub struct Decoded {
    pub probe: Probe,
    pub blocks: BTreeMap<u32, Block>,
    pub stats: Stats,
}

impl Decoded {
    /// The virtual disk rebuilt from the blocks: holes are zeros.
    pub fn disk(&self) -> Vec<u8> {
        let size = usize::try_from(self.probe.virtual_size).or_fail("virtual size");
        let mut disk = vec![0; size];
        for block in self.blocks.values() {
            assert_eq!(
                block.data.len(),
                BLOCK_SIZE,
                "block {} is not 512 KiB",
                block.index
            );
            let start = block.index as usize * BLOCK_SIZE;
            let end = (start + BLOCK_SIZE).min(size);
            assert!(start < size, "block {} lies past the disk", block.index);
            disk[start..end].copy_from_slice(&block.data[..end - start]);
            assert!(
                block.data[end - start..].iter().all(|&b| b == 0),
                "block {} has data past the end of the disk",
                block.index
            );
        }
        disk
    }
}

/// Probes `bytes` from its head and tail as a ranged-GET caller would.
pub fn probe_bytes(bytes: &[u8]) -> Result<Probe, DecodeError> {
    let head = &bytes[..bytes.len().min(PROBE_HEAD_LEN)];
    let tail = &bytes[bytes.len() - bytes.len().min(PROBE_TAIL_LEN)..];
    disk::probe(head, tail, bytes.len() as u64)
}

/// Decodes `bytes` pushed in `chunk`-byte pieces.
pub fn decode_bytes(
    bytes: &[u8],
    chunk: usize,
    options: DecoderOptions,
) -> Result<Decoded, DecodeError> {
    let probe = probe_bytes(bytes)?;
    decode_with(&probe, bytes, chunk, options)
}

/// Decodes `bytes` with a given probe (which may describe a longer file: a cut stream).
pub fn decode_with(
    probe: &Probe,
    bytes: &[u8],
    chunk: usize,
    options: DecoderOptions,
) -> Result<Decoded, DecodeError> {
    let mut decoder = Decoder::with_options(probe, options);
    let mut blocks = BTreeMap::new();
    let take = |block: Block, blocks: &mut BTreeMap<u32, Block>| {
        let index = block.index;
        assert_eq!(
            block.is_zero,
            block.data.iter().all(|&b| b == 0),
            "is_zero wrong for block {index}"
        );
        assert!(
            blocks.insert(index, block).is_none(),
            "block {index} emitted twice"
        );
    };
    for piece in bytes.chunks(chunk) {
        decoder.push(piece)?;
        while let Some(block) = decoder.next_block()? {
            take(block, &mut blocks);
        }
    }
    decoder.finish();
    while let Some(block) = decoder.next_block()? {
        take(block, &mut blocks);
    }
    Ok(Decoded {
        probe: probe.clone(),
        blocks,
        stats: decoder.stats(),
    })
}

/// Deterministic non-zero-heavy bytes (xorshift), different per seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A scratch directory for one test, removed when dropped (the images are tens of MiB).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("disk-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).or_fail("scratch directory");
    Scratch(dir)
}

/// Runs qemu-img, failing the test with its stderr if it fails.
pub fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .or_fail("qemu-img is installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw image of `size` bytes made by `qemu-img create`, with each `(offset, bytes)` written
/// in place (like `dd conv=notrunc seek=`); returns its content.
pub fn make_raw(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    use std::io::{Seek, SeekFrom, Write};
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        path.to_str().or_fail("UTF-8 path"),
        &size.to_string(),
    ]);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .or_fail("open raw image");
    for (offset, bytes) in writes {
        file.seek(SeekFrom::Start(*offset)).or_fail("seek");
        file.write_all(bytes).or_fail("write");
    }
    drop(file);
    std::fs::read(path).or_fail("read raw image")
}

/// Converts `raw` to `out` with `qemu-img convert -O <format> [-o <options>]`.
pub fn convert(raw: &Path, out: &Path, format: &str, options: &str) {
    let mut args = vec!["convert", "-f", "raw", "-O", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([
        raw.to_str().or_fail("UTF-8 path"),
        out.to_str().or_fail("UTF-8 path"),
    ]);
    qemu_img(&args);
}

/// Indices of the 512 KiB blocks of `disk` holding a non-zero byte.
pub fn data_blocks(disk: &[u8]) -> Vec<u32> {
    disk.chunks(BLOCK_SIZE)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, _)| i as u32)
        .collect()
}
