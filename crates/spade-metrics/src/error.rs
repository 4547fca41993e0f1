//! The crate's error type: every variant names the file or value at fault and what was expected.
use std::path::PathBuf;

/// Errors of `spade-metrics`.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A weights file could not be read or does not hold what the network expects.
    #[error("weights {}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },

    /// A file's SHA-256 differs from the expected digest.
    #[error("{}: SHA-256 is {actual}, expected {expected}", path.display())]
    HashMismatch { path: PathBuf, expected: String, actual: String },

    /// A Hugging Face hub file could not be resolved.
    #[error("hub file {repo}:{file}: {msg}")]
    Hub { repo: String, file: String, msg: String },

    /// A statistics `.npz` (pytorch-fid layout: `mu`, `sigma`) is malformed.
    #[error("{}: statistics file: {msg}", path.display())]
    Stats { path: PathBuf, msg: String },

    /// An image could not be decoded.
    #[error("image {}: {msg}", path.display())]
    Image { path: PathBuf, msg: String },

    /// A folder holds no image pytorch-fid would read.
    #[error("{}: no image files (expected bmp, jpg, jpeg, pgm, png, ppm, tif, tiff or webp)", path.display())]
    NoImages { path: PathBuf },

    /// FID cannot be computed (no Inception weights); never replaced by another number.
    #[error("FID unavailable: {reason}")]
    FidUnavailable { reason: String },

    /// A numeric argument is out of its domain (shapes, class counts, sample sizes).
    #[error("{what}: got {got}, expected {expected}")]
    Invalid { what: String, got: String, expected: String },

    /// A linear-algebra routine failed.
    #[error("linear algebra: {0}")]
    Linalg(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, MetricsError>;

impl MetricsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MetricsError::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(what: impl Into<String>, got: impl std::fmt::Display, expected: impl Into<String>) -> Self {
        MetricsError::Invalid { what: what.into(), got: got.to_string(), expected: expected.into() }
    }
}
