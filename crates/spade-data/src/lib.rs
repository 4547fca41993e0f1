//! Data for semantic image synthesis, following NVlabs/SPADE's `data/` package.
//!
//! - [`DatasetConfig`]: the reference's dataset flags (`dataset_mode`, `dataroot`, `label_nc`,
//!   `contain_dontcare_label`, `no_instance`, `preprocess_mode`, `load_size`, `crop_size`,
//!   `aspect_ratio`, `no_flip`, ...), with each dataset's defaults filled in by
//!   [`DatasetConfig::resolve`].
//! - [`open`]: COCO-Stuff (sample and official layouts), ADE20K, ADE20K-outdoor
//!   ([`ade20k_outdoor`]), Cityscapes, custom folders
//!   (paired by file stem) and the procedural [`synthetic`] dataset, behind [`Dataset`].
//! - [`transform`]: `get_params` / `get_transform` as the reference: resize_and_crop, crop,
//!   scale_width(_and_crop), scale_shortside(_and_crop), fixed, none; flip; nearest for labels
//!   and instances, PIL-exact bicubic for images; images to [-1, 1].
//! - [`BatchLoader`]: parallel (rayon), prefetching, deterministic from a seed.
//! - [`check`]: validates every pair of a dataset; [`export_synthetic`] writes the synthetic
//!   dataset to disk.
//!
//! The data crate hands out label ids, not one-hot tensors: the models crate builds the
//! network input (one-hot, don't-care channel, instance edges) from a [`Sample`].
use std::path::PathBuf;

pub mod ade20k_outdoor;
pub mod config;
pub mod dataset;
pub mod error;
pub mod layout;
pub mod loader;
pub mod pngio;
pub mod resample;
pub mod rng;
pub mod synthetic;
pub mod transform;

pub use config::{DatasetConfig, DatasetMode, Phase, Preprocess, PreprocessMode, ResolvedConfig};
pub use dataset::{check, export_synthetic, open, CheckReport, Dataset, FileDataset, SyntheticDataset};
pub use error::{DataError, FileKind};
pub use layout::{list_pairs, Listing, PairPaths};
pub use loader::{BatchLoader, LoaderOptions};
pub use pngio::{decode_label_png, read_image, read_instance_png, read_label_png, ClassInfo, Palette};

/// An integer map (labels or instance ids), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u32>,
}

impl LabelMap {
    #[inline]
    pub fn get(&self, x: usize, y: usize) -> u32 {
        self.data[y * self.width + x]
    }
}

/// A network-ready image: f32, CHW, RGB, in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub height: usize,
    pub width: usize,
    /// `3 * height * width` values, channel-major.
    pub data: Vec<f32>,
}

/// An 8-bit RGB image, HWC (as decoded from a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// One preprocessed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Ids after the dataset's mapping: `0..label_nc`, and `label_nc` for don't care (raw 255
    /// with `contain_dontcare_label`; ADE20K raw 0).
    pub label: LabelMap,
    /// Instance ids; `None` with `no_instance`.
    pub instance: Option<LabelMap>,
    /// The photo, f32 CHW RGB in [-1, 1].
    pub image: Option<Image>,
    /// The label file (for error messages and output names).
    pub path: PathBuf,
}

/// A batch of samples, in the order the loader drew them.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub samples: Vec<Sample>,
    /// Dataset indices of the samples.
    pub indices: Vec<usize>,
    pub epoch: usize,
    /// Batch number within the epoch.
    pub step: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}
