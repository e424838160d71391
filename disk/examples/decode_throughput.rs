//! Decodes one image file the way the Lambda will (probe from head and tail, push 8 MiB
//! chunks, pull blocks, SHA-256 each emitted block) and reports the throughput.
//!
//! Run: `cargo run --release -p ami-pipeline-disk --example decode_throughput -- <image>`.

use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

use disk::{BlockChecksum, Decoder, LinearChecksum, PROBE_HEAD_LEN, PROBE_TAIL_LEN};

/// Chunk size of one ranged GET in the Lambda design.
const CHUNK: usize = 8 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: decode_throughput <image>")?;
    let mut file = std::fs::File::open(&path)?;
    let total = file.metadata()?.len();
    let mut head = vec![0; PROBE_HEAD_LEN.min(usize::try_from(total)?)];
    file.read_exact(&mut head)?;
    let tail_len = PROBE_TAIL_LEN.min(usize::try_from(total)?);
    let mut tail = vec![0; tail_len];
    file.seek(SeekFrom::End(-i64::try_from(tail_len)?))?;
    file.read_exact(&mut tail)?;
    file.seek(SeekFrom::Start(0))?;
    let probe = disk::probe(&head, &tail, total)?;
    println!(
        "{path}: {} bytes, {}, virtual size {} bytes ({} GiB volume)",
        total,
        probe.format,
        probe.virtual_size,
        probe.volume_size_gib()
    );
    let start = Instant::now();
    let mut decoder = Decoder::new(&probe);
    let mut checksum = LinearChecksum::new();
    let mut chunk = vec![0; CHUNK];
    let mut take = |decoder: &mut Decoder| -> Result<(), disk::DecodeError> {
        while let Some(block) = decoder.next_block()? {
            if !block.is_zero {
                checksum.record(block.index, BlockChecksum::of(&block.data));
            }
        }
        Ok(())
    };
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        decoder.push(chunk.get(..n).unwrap_or_default())?;
        take(&mut decoder)?;
    }
    decoder.finish();
    take(&mut decoder)?;
    let seconds = start.elapsed().as_secs_f64();
    let stats = decoder.stats();
    println!(
        "{} blocks ({} all-zero), {} grains; {:.0} MB/s of file, {:.0} MB/s of blocks out",
        stats.blocks,
        stats.zero_blocks,
        stats.grains,
        total as f64 / seconds / 1e6,
        stats.blocks as f64 * disk::BLOCK_SIZE as f64 / seconds / 1e6
    );
    println!(
        "non-zero blocks: {}, LINEAR aggregate: {}",
        checksum.changed_blocks_count(),
        checksum.aggregate_base64()
    );
    Ok(())
}
