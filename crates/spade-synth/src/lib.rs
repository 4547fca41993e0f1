//! Synthesis for people: what `spade synthesize` and `spade serve` share.
//!
//! - [`Synthesizer`]: a checkpoint's generator (and encoder, when it has one) with the
//!   options it was built from; label ids (+ instance ids, + z or a style image) in, images
//!   out, in batches. The one place where a label map becomes a picture outside training.
//! - [`palette`]: class names and colours. The palettes of COCO-Stuff (182 classes), ADE20K
//!   (150), Cityscapes (35) and the built-in synthetic dataset (14) ship in `palettes/` and
//!   are embedded in the binary; [`palette::for_options`] picks one for a checkpoint.
//! - [`page`]: the results page (`index.html`, one row per input: colourised label, output,
//!   real image), written by `spade synthesize` and by training runs for their samples.
pub mod page;
pub mod palette;
mod synthesizer;

pub use synthesizer::{rgb_from_tensor, Input, Synthesizer, ZSource};

use std::path::PathBuf;

/// Everything synthesis can fail with. [`Error::BadInput`] is the caller's input (a served
/// request answers it with a 4xx); the others are the checkpoint's or the machine's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Models(#[from] spade_models::Error),
    #[error(transparent)]
    Data(#[from] spade_data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An input that cannot be synthesized from, named and explained.
    #[error("{0}")]
    BadInput(String),
    /// A file that could not be read or written.
    #[error("{}: {detail}", path.display())]
    File { path: PathBuf, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;
