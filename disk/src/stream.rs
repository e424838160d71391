//! The contract between the format decoders and the driver in `decoder`.

/// What one decoding step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Consumed input or changed state; call again.
    Advanced,
    /// Needs more input than is buffered.
    NeedInput,
    /// The format's structures are complete; the rest of the input is ignored.
    Done,
}
