//! Errors of the models crate. Every message names the tensor or file, what was found and
//! what was expected.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] spade_io::IoError),

    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },

    #[error("checkpoint tensor `{name}` has shape {found:?}, but the options build {expected:?}{hint}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize>, hint: String },

    #[error("checkpoint has no tensor `{name}` (shape {expected:?}) that the options need{hint}")]
    MissingTensor { name: String, expected: Vec<usize>, hint: String },

    #[error("checkpoint has tensors the options do not build: {names}{hint}")]
    UnexpectedTensors { names: String, hint: String },

    #[error("invalid option {option} = {value:?}: expected {expected}")]
    Option { option: String, value: String, expected: String },

    #[error("{file}: label value {value} at (x={x}, y={y}) is outside the valid range {valid}")]
    LabelOutOfRange { file: String, value: u32, x: usize, y: usize, valid: String },
}

pub type Result<T> = std::result::Result<T, Error>;
