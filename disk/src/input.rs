//! The decoder's input queue: bytes pushed in file order, read back by absolute file offset.
//! Holds only what the caller pushed and the decoder has not consumed yet.

use crate::error::DecodeError;

/// Bytes `[base, base + buf.len() - start)` of the file not consumed yet.
#[derive(Debug, Default)]
pub(crate) struct Input {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
    /// File offset of `buf[start]`.
    pos: u64,
    /// The caller said no more input follows.
    pub(crate) ended: bool,
    /// Length of the file, from the probe: input past it is a caller error.
    total_len: u64,
    /// Bytes pushed so far.
    received: u64,
}

impl Input {
    /// An empty queue for a file of `total_len` bytes.
    pub(crate) fn new(total_len: u64) -> Self {
        Self {
            total_len,
            ..Self::default()
        }
    }

    /// An empty queue for a file of `total_len` bytes whose first `offset` bytes are not
    /// pushed: input starts at `offset` (a decoder resumed part way).
    pub(crate) fn starting_at(total_len: u64, offset: u64) -> Self {
        Self {
            total_len,
            pos: offset,
            received: offset,
            ..Self::default()
        }
    }

    /// Appends the next bytes of the file.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        if self.ended {
            return Err(DecodeError::Usage("push after finish".into()));
        }
        let received = self.received.saturating_add(chunk.len() as u64);
        if received > self.total_len {
            return Err(DecodeError::Usage(format!(
                "{received} bytes pushed but the probed file is {} bytes long",
                self.total_len
            )));
        }
        self.received = received;
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Marks the end of input; the whole file must have been pushed.
    pub(crate) fn end(&mut self) {
        self.ended = true;
    }

    /// File offset of the next unconsumed byte.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The unconsumed bytes.
    pub(crate) fn available(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// `n` unconsumed bytes if that many are buffered.
    pub(crate) fn peek(&self, n: usize) -> Option<&[u8]> {
        self.available().get(..n)
    }

    /// Drops `n` bytes (at most what is buffered).
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.available().len());
        self.start += n;
        self.pos += n as u64;
    }

    /// Consumes bytes up to file offset `target` as far as buffered; true once `pos == target`.
    pub(crate) fn skip_to(&mut self, target: u64) -> bool {
        let want = target.saturating_sub(self.pos);
        let n = usize::try_from(want).unwrap_or(usize::MAX);
        self.consume(n);
        self.pos >= target
    }

    /// Bytes of the file pushed so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Length of the file.
    pub(crate) fn total_len(&self) -> u64 {
        self.total_len
    }
}
