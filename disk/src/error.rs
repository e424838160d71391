//! The one error type of the crate: every variant says where in the input (byte offset) the
//! problem was found and what was expected there, so an operator can act on the message alone.

use thiserror::Error;

/// Why a disk image could not be probed or decoded.
///
/// Offsets are byte offsets in the uploaded file (not in the virtual disk) unless the field
/// says otherwise. No variant is ever produced by a panic: hostile input ends in one of these.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A structure is present but its content is invalid (bad magic, checksum, field value).
    #[error("{what} at offset {offset}: {detail}")]
    Malformed {
        /// The structure and the failed rule, e.g. "VHD dynamic header checksum mismatch".
        what: String,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// The values found and expected.
        detail: String,
    },
    /// The input ended (or `total_len` was reached) while a structure was still expected.
    #[error("input ends at offset {offset} but {expected} was expected there (file truncated?)")]
    Truncated {
        /// Byte offset where more input was needed.
        offset: u64,
        /// What the decoder was about to read.
        expected: String,
    },
    /// A recognised format or variant that this crate deliberately does not decode.
    #[error("unsupported disk image: {0}")]
    Unsupported(String),
    /// A grain or block arrived for a 512 KiB block that was already emitted.
    #[error(
        "{what} at offset {offset} writes virtual offset {virtual_offset} in block {block}, \
         which was already emitted{reason}"
    )]
    BlockAlreadyEmitted {
        /// The structure carrying the data (e.g. "VMDK grain marker").
        what: &'static str,
        /// Byte offset of that structure in the file.
        offset: u64,
        /// Byte offset in the virtual disk the data belongs to.
        virtual_offset: u64,
        /// EBS block index (512 KiB units).
        block: u32,
        /// Why the block was already out: duplicate data, or flushed under memory pressure.
        reason: String,
    },
    /// Reading the image failed ([`crate::decode_reader`]).
    #[error("reading the image at offset {offset}: {message}")]
    Io {
        /// File offset of the failed read.
        offset: u64,
        /// The I/O error's text.
        message: String,
    },
    /// The caller used the decoder out of protocol (input past `total_len`, push after finish).
    #[error("decoder misuse: {0}")]
    Usage(String),
}

impl DecodeError {
    /// A [`DecodeError::Malformed`] from its three parts.
    pub(crate) fn malformed(
        what: impl Into<String>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        Self::Malformed {
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// A [`DecodeError::Truncated`] at `offset`.
    pub(crate) fn truncated(offset: u64, expected: impl Into<String>) -> Self {
        Self::Truncated {
            offset,
            expected: expected.into(),
        }
    }
}
