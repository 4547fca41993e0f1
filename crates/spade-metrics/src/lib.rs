//! Evaluation for the SPADE reproduction (SPEC.md section 6).
//!
//! - FID exactly as pytorch-fid computes it: [`inception::FidInception`] (pytorch-fid's
//!   Inception-v3 with its FID blocks), torch's bilinear resize to 299x299, pool3 features,
//!   [`frechet::GaussianStats`] with the `N - 1` covariance, [`frechet::frechet_distance`]
//!   through symmetric eigendecompositions, statistics `.npz` files compatible with
//!   pytorch-fid ([`stats_io`]), weights from a path or a Hugging Face hub cache
//!   ([`weights`]). Without weights, FID is [`MetricsError::FidUnavailable`].
//! - Segmentation metrics ([`segmentation`]): a confusion matrix over the dataset, pixel
//!   accuracy and mIoU with the don't-care handling explicit, and the [`Segmenter`] trait;
//!   with the `segformer` feature, a SegFormer segmenter (candle-transformers) from the hub.
//! - The paper's evaluation segmenters, loading the released PyTorch checkpoints by their
//!   state_dict keys ([`segnet`] holds the shared pieces): [`deeplabv2`] (COCO-Stuff),
//!   [`drn`] (DRN-D-105, Cityscapes), [`upernet`] (UperNet-ResNet101, ADE20K).
pub mod deeplabv2;
pub mod drn;
pub mod error;
pub mod fid;
pub mod frechet;
pub mod inception;
pub mod resize;
#[cfg(feature = "segformer")]
pub mod segformer;
pub mod segmentation;
pub mod segnet;
pub mod stats_io;
pub mod upernet;
pub mod weights;

pub use deeplabv2::{DeepLabV2, DeepLabV2Config, DeepLabV2Segmenter};
pub use drn::{DrnConfig, DrnSeg, DrnSegmenter};
pub use error::{MetricsError, Result};
pub use fid::{fid, list_images, load_image, pool3_of_files, FidInput};
pub use frechet::{frechet_distance, GaussianStats};
pub use inception::{FidInception, FID_INPUT_SIZE, POOL3_DIM};
pub use segmentation::{
    confusion_matrix_for, ConfusionMatrix, DontCare, GroundTruthMap, LabelResize, Preprocessing, SegScores, Segmenter,
};
pub use stats_io::{load_stats, save_stats};
pub use upernet::{UperNetConfig, UperNetSegmenter};
pub use weights::{load_fid_inception, HubFile, ResolvedWeights, FID_WEIGHTS_FILE};
