//! The paper's evaluation protocol per dataset, in one place, for `spade evaluate` and
//! `cargo xtask reproduce` alike:
//!
//! - [`SegmenterKind`]: every segmentation network the project can score with, its names
//!   (aliases), its released weight files and [`SegmenterKind::open`]; [`SegmenterChoice`]
//!   adds `auto`, the paper's network for the dataset;
//! - [`Protocol::paper`]: per dataset, the segmenter (COCO-Stuff: DeepLabV2-ResNet101 MSC;
//!   ADE20K and ADE20K-outdoor: UperNet-ResNet101; Cityscapes: DRN-D-105), the image size the
//!   paper generates, segments and gives to FID, the label mapping and the don't-care handling;
//! - [`resolve_evaluation`]: finds every file a run's evaluation needs (segmenter weights,
//!   pytorch-fid's Inception weights), from paths or from the Hugging Face hub cache (repo ids,
//!   revisions, cache folder), and fails with the list of every missing file and where to put
//!   it. Call it before training: a missing file then stops the run before the first
//!   iteration, not after hours.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use spade_data::{DatasetConfig, DatasetMode};
use spade_metrics::weights::sha256_file;
use spade_metrics::{DontCare, FidInception, HubFile, Segmenter, FID_WEIGHTS_FILE};

use crate::segmenter::{SegmenterSpec, SyntheticSegmenter};

/// Errors of the protocol: missing files (all of them at once), bad flags, and what opening
/// the networks can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Missing(MissingFiles),
    #[error("{option} {value}: expected {expected}")]
    Invalid { option: String, value: String, expected: String },
    #[error(transparent)]
    Metrics(#[from] spade_metrics::MetricsError),
    #[error(transparent)]
    Train(#[from] crate::run::TrainError),
    #[error(transparent)]
    Data(#[from] spade_data::DataError),
}

pub type Result<T> = std::result::Result<T, ProtocolError>;

fn invalid(option: &str, value: impl fmt::Display, expected: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid { option: option.into(), value: value.to_string(), expected: expected.into() }
}

/// A segmentation network used as a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmenterKind {
    /// DeepLabV2-ResNet101 with multi-scale inputs (kazuto1011/deeplab-pytorch), COCO-Stuff.
    DeepLabV2,
    /// DRN-D-105 (fyu/drn `DRNSeg`), Cityscapes.
    Drn,
    /// UperNet-ResNet101 (CSAILVision/semantic-segmentation-pytorch), ADE20K.
    UperNet,
    /// SegFormer (candle-transformers; build with the `segformer` feature), not the paper's.
    Segformer,
    /// The project's own network for the synthetic dataset, trained and cached.
    Synthetic,
    /// No segmentation metrics.
    None,
}

/// Every kind with its names; the first is the canonical one.
const KIND_NAMES: &[(SegmenterKind, &[&str])] = &[
    (SegmenterKind::DeepLabV2, &["deeplabv2", "deeplab", "deeplabv2-resnet101", "deeplabv2_resnet101_msc"]),
    (SegmenterKind::Drn, &["drn", "drn-d-105", "drn_d_105"]),
    (SegmenterKind::UperNet, &["upernet", "upernet-resnet101", "upernet_resnet101"]),
    (SegmenterKind::Segformer, &["segformer"]),
    (SegmenterKind::Synthetic, &["synthetic"]),
    (SegmenterKind::None, &["none", "off"]),
];

/// A released weight file of a segmenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightFile {
    /// What it is, for messages.
    pub what: &'static str,
    /// Its release name (also the name looked for in a hub repository).
    pub file: &'static str,
    /// Where it is released.
    pub url: &'static str,
}

impl SegmenterKind {
    pub const ALL: [SegmenterKind; 6] = [
        SegmenterKind::DeepLabV2,
        SegmenterKind::Drn,
        SegmenterKind::UperNet,
        SegmenterKind::Segformer,
        SegmenterKind::Synthetic,
        SegmenterKind::None,
    ];

    /// The canonical name (`--segmenter`, metrics files).
    pub fn name(self) -> &'static str {
        self.aliases()[0]
    }

    /// Every name `--segmenter` accepts for it.
    pub fn aliases(self) -> &'static [&'static str] {
        KIND_NAMES.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).expect("every kind has names")
    }

    /// The paper's segmenter for a dataset (the project's own for the synthetic dataset, none
    /// for custom folders).
    pub fn paper_for(mode: DatasetMode) -> SegmenterKind {
        match mode {
            DatasetMode::Coco => SegmenterKind::DeepLabV2,
            DatasetMode::Ade20k | DatasetMode::Ade20kOutdoor => SegmenterKind::UperNet,
            DatasetMode::Cityscapes => SegmenterKind::Drn,
            DatasetMode::Synthetic => SegmenterKind::Synthetic,
            DatasetMode::Custom => SegmenterKind::None,
        }
    }

    /// The weight files it is opened from, in the order [`SegmenterKind::open`] takes them.
    pub fn weight_files(self) -> Vec<WeightFile> {
        use spade_metrics::{deeplabv2, drn, upernet};
        match self {
            SegmenterKind::DeepLabV2 => vec![WeightFile {
                what: "DeepLabV2-ResNet101 MSC weights (COCO-Stuff 164k segmenter)",
                file: deeplabv2::DEEPLABV2_COCOSTUFF_FILE,
                url: deeplabv2::DEEPLABV2_COCOSTUFF_URL,
            }],
            SegmenterKind::Drn => vec![WeightFile {
                what: "DRN-D-105 weights (Cityscapes segmenter)",
                file: drn::DRN_CITYSCAPES_FILE,
                url: drn::DRN_CITYSCAPES_URL,
            }],
            SegmenterKind::UperNet => vec![
                WeightFile {
                    what: "UperNet-ResNet101 encoder weights (ADE20K segmenter)",
                    file: upernet::UPERNET_ENCODER_FILE,
                    url: upernet::UPERNET_URL,
                },
                WeightFile {
                    what: "UperNet-ResNet101 decoder weights (ADE20K segmenter)",
                    file: upernet::UPERNET_DECODER_FILE,
                    url: upernet::UPERNET_URL,
                },
            ],
            SegmenterKind::Segformer => vec![
                WeightFile { what: "SegFormer config", file: "config.json", url: SEGFORMER_URL },
                WeightFile { what: "SegFormer weights", file: "model.safetensors", url: SEGFORMER_URL },
            ],
            SegmenterKind::Synthetic | SegmenterKind::None => vec![],
        }
    }

    /// Opens a segmenter from its weight files (in [`SegmenterKind::weight_files`] order),
    /// with strict key checking, for images of `resolution` (height, width). The synthetic
    /// segmenter is trained and cached instead ([`open_synthetic`]); `None` opens nothing.
    pub fn open(self, files: &[PathBuf], resolution: (usize, usize), device: &Device) -> Result<Box<dyn Segmenter>> {
        let want = self.weight_files();
        if files.len() != want.len() || want.is_empty() {
            return Err(invalid(
                &format!("weight files of the {} segmenter", self.name()),
                format!("{} file(s)", files.len()),
                format!("{} file(s): {}", want.len(), want.iter().map(|w| w.file).collect::<Vec<_>>().join(" then ")),
            ));
        }
        Ok(match self {
            SegmenterKind::DeepLabV2 => {
                let cfg = spade_metrics::DeepLabV2Config::cocostuff164k();
                Box::new(spade_metrics::DeepLabV2Segmenter::load(&cfg, &files[0], resolution, device)?)
            }
            SegmenterKind::Drn => {
                let cfg = spade_metrics::DrnConfig::drn_d_105_cityscapes();
                Box::new(spade_metrics::DrnSegmenter::load(&cfg, &files[0], resolution, device)?)
            }
            SegmenterKind::UperNet => {
                let cfg = spade_metrics::UperNetConfig::ade20k_resnet101();
                Box::new(spade_metrics::UperNetSegmenter::load(&cfg, &files[0], &files[1], resolution, device)?)
            }
            SegmenterKind::Segformer => open_segformer(&files[0], &files[1], resolution, device)?,
            SegmenterKind::Synthetic | SegmenterKind::None => unreachable!("no weight files"),
        })
    }
}

impl SegmenterKind {
    /// Writes weights with deterministic random values for this segmenter into `dir`, under
    /// its release file names (one `.pth` per [`SegmenterKind::weight_files`] entry), in the
    /// layout of the reference's `state_dict` and read back by [`SegmenterKind::open`] through
    /// the same reader as users' files. They test the pipeline on real data (the numbers mean
    /// nothing): an evaluation that uses them is marked `test_weights`, since their hash is not
    /// a released one. DeepLabV2, DRN and UperNet only.
    pub fn write_test_weights(self, dir: &Path, seed: u64, device: &Device) -> Result<Vec<PathBuf>> {
        use spade_metrics::segnet::{random_state_dict, TORCH_BN_BUFFERS};
        std::fs::create_dir_all(dir).map_err(|e| invalid("test weights folder", dir.display(), e.to_string()))?;
        let files = self.weight_files();
        let paths: Vec<PathBuf> = files.iter().map(|w| dir.join(w.file)).collect();
        let save = |path: &Path, sd: Vec<(String, candle_core::Tensor)>| -> Result<()> {
            spade_io::pth::save(path, &sd).map_err(|e| invalid("test weights", path.display(), e.to_string()))
        };
        match self {
            SegmenterKind::DeepLabV2 => {
                let cfg = spade_metrics::DeepLabV2Config::cocostuff164k();
                let (_, sd) = random_state_dict(seed, device, TORCH_BN_BUFFERS, |vb| {
                    spade_metrics::deeplabv2::DeepLabV2::new(&cfg, vb)
                })?;
                save(&paths[0], sd)?;
            }
            SegmenterKind::Drn => {
                let cfg = spade_metrics::DrnConfig::drn_d_105_cityscapes();
                let (_, sd) =
                    random_state_dict(seed, device, TORCH_BN_BUFFERS, |vb| spade_metrics::drn::DrnSeg::new(&cfg, vb))?;
                save(&paths[0], sd)?;
            }
            SegmenterKind::UperNet => {
                let cfg = spade_metrics::UperNetConfig::ade20k_resnet101();
                let (_, enc) = random_state_dict(seed, device, TORCH_BN_BUFFERS, |vb| {
                    spade_metrics::upernet::UperNetEncoder::new(&cfg, vb)
                })?;
                save(&paths[0], enc)?;
                let (_, dec) = random_state_dict(seed + 1, device, TORCH_BN_BUFFERS, |vb| {
                    spade_metrics::upernet::UperNetDecoder::new(&cfg, vb)
                })?;
                save(&paths[1], dec)?;
            }
            other => {
                return Err(invalid("test weights for the segmenter", other, "deeplabv2, drn or upernet"));
            }
        }
        Ok(paths)
    }
}

const SEGFORMER_URL: &str = "https://huggingface.co/nvidia/segformer-b0-finetuned-ade-512-512";

#[cfg(feature = "segformer")]
fn open_segformer(config: &Path, weights: &Path, res: (usize, usize), device: &Device) -> Result<Box<dyn Segmenter>> {
    Ok(Box::new(spade_metrics::segformer::SegformerSegmenter::from_files(config, weights, res, "segformer", device)?))
}

#[cfg(not(feature = "segformer"))]
fn open_segformer(
    _config: &Path,
    _weights: &Path,
    _res: (usize, usize),
    _device: &Device,
) -> Result<Box<dyn Segmenter>> {
    Err(invalid(
        "--segmenter",
        "segformer",
        "a build with the `segformer` feature (cargo build -p spade-cli --features segformer)",
    ))
}

impl fmt::Display for SegmenterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn kind_names() -> String {
    KIND_NAMES.iter().map(|(_, n)| n[0]).collect::<Vec<_>>().join(", ")
}

impl FromStr for SegmenterKind {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        KIND_NAMES
            .iter()
            .find(|(_, names)| names.contains(&t.as_str()))
            .map(|(k, _)| *k)
            .ok_or_else(|| invalid("--segmenter", s, format!("auto, {}", kind_names())))
    }
}

/// `--segmenter`: a kind, or `auto` (the paper's for the dataset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmenterChoice {
    Auto,
    Kind(SegmenterKind),
}

impl FromStr for SegmenterChoice {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(SegmenterChoice::Auto)
        } else {
            s.parse().map(SegmenterChoice::Kind)
        }
    }
}

impl SegmenterChoice {
    /// The kind for a dataset; the synthetic segmenter scores the synthetic dataset only.
    pub fn resolve(self, mode: DatasetMode) -> Result<SegmenterKind> {
        let kind = match self {
            SegmenterChoice::Auto => SegmenterKind::paper_for(mode),
            SegmenterChoice::Kind(k) => k,
        };
        if (kind == SegmenterKind::Synthetic) != (mode == DatasetMode::Synthetic) && kind != SegmenterKind::None {
            return Err(invalid(
                "--segmenter",
                kind,
                format!(
                    "{} for the {mode} dataset (the synthetic segmenter scores the synthetic dataset only, and the synthetic dataset only that one or none)",
                    if mode == DatasetMode::Synthetic { "synthetic or none" } else { "a network trained on real photos" }
                ),
            ));
        }
        Ok(kind)
    }
}

/// The paper's evaluation protocol for one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Protocol {
    pub dataset: DatasetMode,
    /// The segmenter the paper scores this dataset with.
    pub segmenter: SegmenterKind,
    /// `(height, width)` of the images the paper generates: the segmenter and FID see them at
    /// this size (FID's Inception then resizes to 299x299). Runs at other sizes (the smoke and
    /// mini profiles) are segmented at their own size.
    pub image_size: (usize, usize),
    /// Classes the segmenter predicts.
    pub segmenter_classes: usize,
    /// How the dataset's label files become the segmenter's class ids.
    pub label_mapping: &'static str,
    /// How don't-care pixels are scored.
    pub dont_care: &'static str,
    /// The don't-care setting of the paper's accuracy column (both are always computed).
    pub headline_dont_care: DontCare,
    /// How FID is computed.
    pub fid: &'static str,
}

const FID_PROTOCOL: &str = "pytorch-fid: Inception-v3 pool3 (pt_inception-2015-12-05-6726825d.pth) of the generated images and of the real validation photos after the same preprocessing, both at the generated size resized bilinearly to 299x299; Frechet distance of the two Gaussians";
const DONT_CARE_BOTH: &str = "both settings are computed from one confusion matrix: `ignore` leaves don't-care pixels out of accuracy and IoU, `count` counts them as wrong";

impl Protocol {
    /// The paper's protocol for a dataset (the synthetic dataset and custom folders get the
    /// project's own choices, named as such).
    pub fn paper(mode: DatasetMode) -> Protocol {
        let segmenter = SegmenterKind::paper_for(mode);
        let (image_size, segmenter_classes, label_mapping, headline) = match mode {
            DatasetMode::Coco => (
                (256, 256),
                182,
                "COCO-Stuff 164k label PNGs: value v in 0..=181 is class v, the id DeepLabV2 predicts; 255 is don't care",
                DontCare::Ignore,
            ),
            DatasetMode::Ade20k | DatasetMode::Ade20kOutdoor => (
                (256, 256),
                150,
                "ADE20K annotations: raw 0 ('other') is don't care, raw v in 1..=150 is class v - 1, the id UperNet predicts",
                DontCare::Ignore,
            ),
            DatasetMode::Cityscapes => (
                (256, 512),
                19,
                "Cityscapes gtFine labelIds 0..=33 -> the 19 trainIds DRN-D-105 predicts (cityscapesScripts' table); every other labelId is don't care (255)",
                DontCare::Count,
            ),
            DatasetMode::Synthetic => (
                (256, 256),
                spade_data::synthetic::NUM_CLASSES,
                "the synthetic dataset's class ids, which the project's segmenter predicts",
                DontCare::Ignore,
            ),
            DatasetMode::Custom => ((256, 256), 0, "none (no segmenter for custom folders)", DontCare::Ignore),
        };
        Protocol {
            dataset: mode,
            segmenter,
            image_size,
            segmenter_classes,
            label_mapping,
            dont_care: DONT_CARE_BOTH,
            headline_dont_care: headline,
            fid: FID_PROTOCOL,
        }
    }

    /// The protocol as JSON (for `eval_protocol.json` and reports).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dataset": self.dataset.cli_name(),
            "segmenter": self.segmenter.name(),
            "image_size": [self.image_size.0, self.image_size.1],
            "segmenter_classes": self.segmenter_classes,
            "label_mapping": self.label_mapping,
            "dont_care": self.dont_care,
            "headline_dont_care": self.headline_dont_care.as_str(),
            "fid": self.fid,
        })
    }
}

/// `(height, width)` of a dataset's labels after its evaluation preprocessing: the size of
/// the generated images, which the segmenter sees.
pub fn eval_label_size(data: &DatasetConfig) -> Result<(usize, usize)> {
    let mut d = data.clone();
    d.phase = spade_data::Phase::Val;
    d.is_train = Some(false);
    let p = d.resolve()?.preprocess;
    let w = p.crop_size;
    Ok((((w as f64 / p.aspect_ratio).round_ties_even() as usize).max(1), w))
}

/// Where the evaluation's weights come from: the flags of `spade evaluate` and `cargo xtask
/// reproduce` (clap arguments with the `cli` feature).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct EvalFlags {
    /// Segmentation network: auto (the paper's for the dataset: deeplabv2 for coco-stuff,
    /// upernet for ade20k and ade20k-outdoor, drn for cityscapes, synthetic for synthetic, none
    /// for folder), deeplabv2, drn, upernet, segformer, synthetic or none.
    #[cfg_attr(feature = "cli", arg(long, default_value = "auto"))]
    pub segmenter: String,
    /// The segmenter's weight files: deeplabv2 and drn one .pth, upernet the encoder then the
    /// decoder .pth, segformer config.json then model.safetensors.
    #[cfg_attr(feature = "cli", arg(long, num_args = 1..=2))]
    pub segmenter_weights: Vec<PathBuf>,
    /// A Hugging Face hub repository (org/name) holding the segmenter's files under their
    /// release names (or org/name:FILE for one-file segmenters), looked up in the hub cache.
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "segmenter_weights"))]
    pub segmenter_hub: Option<String>,
    /// Revision (branch, tag or commit) of --segmenter-hub (default main).
    #[cfg_attr(feature = "cli", arg(long, requires = "segmenter_hub"))]
    pub segmenter_revision: Option<String>,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth).
    #[cfg_attr(feature = "cli", arg(long))]
    pub fid_weights: Option<PathBuf>,
    /// A hub repository holding the Inception weights: org/name (file
    /// pt_inception-2015-12-05-6726825d.pth) or org/name:FILE.
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "fid_weights"))]
    pub fid_hub: Option<String>,
    /// Revision of --fid-hub (default main).
    #[cfg_attr(feature = "cli", arg(long, requires = "fid_hub"))]
    pub fid_revision: Option<String>,
    /// Compute no FID (reported as not computed).
    #[cfg_attr(feature = "cli", arg(long, conflicts_with_all = ["fid_weights", "fid_hub"]))]
    pub no_fid: bool,
    /// Hub cache folder (the one holding models--org--name); default $HF_HOME/hub or
    /// ~/.cache/huggingface/hub.
    #[cfg_attr(feature = "cli", arg(long))]
    pub hub_cache: Option<PathBuf>,
    /// Only look in the hub cache; never download.
    #[cfg_attr(feature = "cli", arg(long))]
    pub offline: bool,
}

impl Default for EvalFlags {
    fn default() -> Self {
        Self {
            segmenter: "auto".into(),
            segmenter_weights: vec![],
            segmenter_hub: None,
            segmenter_revision: None,
            fid_weights: None,
            fid_hub: None,
            fid_revision: None,
            no_fid: false,
            hub_cache: None,
            offline: false,
        }
    }
}

/// Whether a run must have FID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FidRequirement {
    /// Missing Inception weights are a missing file (unless `--no-fid`).
    Required,
    /// FID is computed when weights are given, else reported as not computed.
    IfGiven,
}

/// A file the evaluation needs and does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFile {
    pub what: String,
    /// Why it is missing (no such file, not in the hub cache, not given).
    pub problem: String,
    /// Where to put it, or which flag to give.
    pub remedy: String,
}

/// Every missing file of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFiles(pub Vec<MissingFile>);

impl fmt::Display for MissingFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the evaluation needs {} file(s) that are not there (nothing was trained or scored):",
            self.0.len()
        )?;
        for (i, m) in self.0.iter().enumerate() {
            write!(f, "  {}. {}: {}\n     {}", i + 1, m.what, m.problem, m.remedy)?;
            if i + 1 < self.0.len() {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// A weight file found, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundWeights {
    pub path: PathBuf,
    pub sha256: String,
    /// `file` or `hub:org/name@revision`.
    pub source: String,
    /// Whether its digest matches the released file's (known for pytorch-fid's Inception
    /// only); `false` means test or other weights, and reports mark the scores so.
    pub released: bool,
}

impl FoundWeights {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"path": self.path.display().to_string(), "sha256": self.sha256,
            "source": self.source, "released_weights": self.released})
    }
}

/// Everything a run's evaluation needs, found: the protocol, the segmenter and its files, and
/// the Inception weights (or why FID is not computed).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSetup {
    pub protocol: Protocol,
    /// The segmenter chosen (the protocol's unless `--segmenter` says otherwise).
    pub segmenter: SegmenterKind,
    pub segmenter_files: Vec<FoundWeights>,
    pub fid_weights: Option<FoundWeights>,
    /// Why there is no FID, when there is none.
    pub fid_off: Option<String>,
}

fn hub_cache_layout(cache: &Option<PathBuf>, repo: &str, rev: &Option<String>, file: &str) -> String {
    format!(
        "{}/models--{}/snapshots/<commit>/{file}, with refs/{} holding <commit>",
        cache
            .as_ref()
            .map(|c| c.display().to_string())
            .unwrap_or_else(|| "$HF_HOME/hub (default ~/.cache/huggingface/hub)".into()),
        repo.replace('/', "--"),
        rev.as_deref().unwrap_or("main")
    )
}

fn from_hub(
    repo: &str,
    file: &str,
    revision: &Option<String>,
    flags: &EvalFlags,
) -> std::result::Result<FoundWeights, String> {
    let hub = HubFile {
        repo: repo.into(),
        file: file.into(),
        revision: revision.clone(),
        sha256: None,
        cache_dir: flags.hub_cache.clone(),
        allow_download: !flags.offline,
    };
    let r = hub.resolve().map_err(|e| e.to_string())?;
    let source = format!("hub:{repo}@{}", revision.as_deref().unwrap_or("main"));
    Ok(FoundWeights { path: r.path, sha256: r.sha256, source, released: false })
}

fn from_file(path: &Path) -> std::result::Result<FoundWeights, String> {
    if !path.is_file() {
        return Err(format!("{}: no such file", path.display()));
    }
    let sha256 = sha256_file(path).map_err(|e| e.to_string())?;
    Ok(FoundWeights { path: path.to_path_buf(), sha256, source: "file".into(), released: false })
}

/// Splits `org/name[:file]`.
fn hub_spec<'a>(option: &str, spec: &'a str) -> Result<(&'a str, Option<&'a str>)> {
    let (repo, file) = match spec.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (spec, None),
    };
    if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) || file == Some("") {
        return Err(invalid(option, spec, "org/name or org/name:FILE"));
    }
    Ok((repo, file))
}

/// Finds every file the evaluation of a `mode` dataset needs; with any missing, fails with
/// [`ProtocolError::Missing`] listing all of them and where to put them. Files given by path
/// are hashed; hub files are looked up in the cache (and downloaded unless `flags.offline`).
pub fn resolve_evaluation(mode: DatasetMode, flags: &EvalFlags, fid: FidRequirement) -> Result<EvalSetup> {
    let protocol = Protocol::paper(mode);
    let segmenter = flags.segmenter.parse::<SegmenterChoice>()?.resolve(mode)?;
    let mut missing = Vec::new();
    let mut segmenter_files = Vec::new();
    let wanted = segmenter.weight_files();
    if wanted.is_empty() && (!flags.segmenter_weights.is_empty() || flags.segmenter_hub.is_some()) {
        return Err(invalid(
            "--segmenter-weights / --segmenter-hub",
            segmenter,
            "no weight files: this segmenter has none",
        ));
    }
    let flag_remedy = |w: &WeightFile| {
        format!(
            "download {} ({}) and pass it with --segmenter-weights{}, or put it in a hub repository of yours and pass --segmenter-hub org/name (or score without a segmenter: --segmenter none)",
            w.file,
            w.url,
            if wanted.len() > 1 { format!(" ({} in this order)", wanted.iter().map(|w| w.file).collect::<Vec<_>>().join(" ")) } else { String::new() }
        )
    };
    if !wanted.is_empty() {
        if let Some(spec) = &flags.segmenter_hub {
            let (repo, file) = hub_spec("--segmenter-hub", spec)?;
            if file.is_some() && wanted.len() > 1 {
                return Err(invalid(
                    "--segmenter-hub",
                    spec,
                    format!(
                        "org/name for {segmenter}, whose files are {}",
                        wanted.iter().map(|w| w.file).collect::<Vec<_>>().join(" and ")
                    ),
                ));
            }
            for w in &wanted {
                let name = file.unwrap_or(w.file);
                match from_hub(repo, name, &flags.segmenter_revision, flags) {
                    Ok(f) => segmenter_files.push(f),
                    Err(e) => missing.push(MissingFile {
                        what: format!("{} ({name})", w.what),
                        problem: e,
                        remedy: format!(
                            "put it at {} (from {})",
                            hub_cache_layout(&flags.hub_cache, repo, &flags.segmenter_revision, name),
                            w.url
                        ),
                    }),
                }
            }
        } else if flags.segmenter_weights.is_empty() {
            for w in &wanted {
                missing.push(MissingFile {
                    what: format!("{} ({})", w.what, w.file),
                    problem: "not given".into(),
                    remedy: flag_remedy(w),
                });
            }
        } else if flags.segmenter_weights.len() != wanted.len() {
            return Err(invalid(
                "--segmenter-weights",
                format!("{} file(s)", flags.segmenter_weights.len()),
                format!(
                    "{} file(s) for {segmenter}: {}",
                    wanted.len(),
                    wanted.iter().map(|w| w.file).collect::<Vec<_>>().join(" then ")
                ),
            ));
        } else {
            for (w, p) in wanted.iter().zip(&flags.segmenter_weights) {
                match from_file(p) {
                    Ok(f) => segmenter_files.push(f),
                    Err(e) => missing.push(MissingFile {
                        what: format!("{} ({})", w.what, w.file),
                        problem: e,
                        remedy: format!("download it from {} to {}", w.url, p.display()),
                    }),
                }
            }
        }
    }
    let fid_prefix = spade_metrics::weights::hash_prefix_from_filename(FID_WEIGHTS_FILE).unwrap_or_default();
    let fid_what = format!("pytorch-fid Inception weights ({FID_WEIGHTS_FILE})");
    let fid_url =
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
    let mut fid_weights = None;
    let mut fid_off = None;
    let found = if flags.no_fid {
        fid_off = Some("FID not computed (--no-fid)".to_string());
        None
    } else if let Some(p) = &flags.fid_weights {
        Some(from_file(p).map_err(|e| (e, format!("download {fid_url} to {}", p.display()))))
    } else if let Some(spec) = &flags.fid_hub {
        let (repo, file) = hub_spec("--fid-hub", spec)?;
        let name = file.unwrap_or(FID_WEIGHTS_FILE);
        Some(from_hub(repo, name, &flags.fid_revision, flags).map_err(|e| {
            (
                e,
                format!(
                    "put it at {} (from {fid_url})",
                    hub_cache_layout(&flags.hub_cache, repo, &flags.fid_revision, name)
                ),
            )
        }))
    } else if fid == FidRequirement::Required {
        Some(Err((
            "not given".to_string(),
            format!("download {fid_url} and pass it with --fid-weights FILE (or --fid-hub org/name with it in the hub cache), or run without FID with --no-fid"),
        )))
    } else {
        fid_off = Some("no Inception weights were given (--fid-weights or --fid-hub): FID not computed".to_string());
        None
    };
    match found {
        Some(Ok(mut f)) => {
            f.released = f.sha256.starts_with(&fid_prefix);
            fid_weights = Some(f);
        }
        Some(Err((problem, remedy))) => missing.push(MissingFile { what: fid_what, problem, remedy }),
        None => {}
    }
    if !missing.is_empty() {
        return Err(ProtocolError::Missing(MissingFiles(missing)));
    }
    Ok(EvalSetup { protocol, segmenter, segmenter_files, fid_weights, fid_off })
}

/// Where the synthetic segmenter is cached and how it is trained.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    pub cache_dir: PathBuf,
    pub spec: SegmenterSpec,
    pub progress: bool,
}

/// The synthetic dataset's segmenter: loaded from the cache, or trained and cached.
pub fn open_synthetic(src: &SyntheticSource, device: &Device) -> Result<Box<dyn Segmenter>> {
    Ok(Box::new(SyntheticSegmenter::load_or_train(&src.cache_dir, src.spec.clone(), device, src.progress)?))
}

impl EvalSetup {
    /// Opens the segmenter for images of `resolution` (height, width) on `device`; `synthetic`
    /// says where the synthetic segmenter is cached (needed for that kind only).
    pub fn open_segmenter(
        &self,
        resolution: (usize, usize),
        synthetic: Option<&SyntheticSource>,
        device: &Device,
    ) -> Result<Option<Box<dyn Segmenter>>> {
        Ok(match self.segmenter {
            SegmenterKind::None => None,
            SegmenterKind::Synthetic => {
                let src = synthetic.ok_or_else(|| {
                    invalid("synthetic segmenter", "no cache", "a cache folder and training settings")
                })?;
                Some(open_synthetic(src, device)?)
            }
            k => {
                let files: Vec<PathBuf> = self.segmenter_files.iter().map(|f| f.path.clone()).collect();
                Some(k.open(&files, resolution, device)?)
            }
        })
    }

    /// Opens pytorch-fid's Inception, with the SHA-256 of its weights, when FID is on.
    pub fn open_fid(&self, device: &Device) -> Result<Option<(FidInception, String)>> {
        Ok(match &self.fid_weights {
            Some(f) => Some((spade_metrics::load_fid_inception(&f.path, device)?, f.sha256.clone())),
            None => None,
        })
    }

    /// Whether any score comes from weights that are not the released ones (test weights):
    /// reports mark those scores.
    pub fn uses_test_weights(&self) -> bool {
        self.segmenter_files.iter().chain(&self.fid_weights).any(|f| !f.released)
    }

    /// The protocol, the segmenter and FID weights with their provenance, as JSON
    /// (`eval_protocol.json` in a run).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "protocol": self.protocol.to_json(),
            "segmenter": self.segmenter.name(),
            "segmenter_weights": self.segmenter_files.iter().map(FoundWeights::to_json).collect::<Vec<_>>(),
            "fid_weights": self.fid_weights.as_ref().map(FoundWeights::to_json),
            "fid_off": self.fid_off,
            "test_weights": self.uses_test_weights(),
        })
    }

    /// Writes [`EvalSetup::to_json`] to `RUN/eval_protocol.json`.
    pub fn write(&self, run: &Path) -> Result<PathBuf> {
        let path = crate::layout::RunDir::new(run).eval_protocol();
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON values serialise");
        spade_io::atomic::write_atomic(&path, |f| std::io::Write::write_all(f, text.as_bytes()))
            .map_err(crate::run::TrainError::from)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_every_alias_and_round_trip() {
        for k in SegmenterKind::ALL {
            for a in k.aliases() {
                assert_eq!(a.parse::<SegmenterKind>().unwrap(), k);
                assert_eq!(a.to_uppercase().parse::<SegmenterKind>().unwrap(), k);
            }
            assert_eq!(k.name().parse::<SegmenterKind>().unwrap(), k);
        }
        let e = "deeplabv3".parse::<SegmenterKind>().unwrap_err().to_string();
        assert!(e.contains("deeplabv3") && e.contains("upernet"), "{e}");
        assert_eq!("auto".parse::<SegmenterChoice>().unwrap(), SegmenterChoice::Auto);
        assert_eq!("drn-d-105".parse::<SegmenterChoice>().unwrap(), SegmenterChoice::Kind(SegmenterKind::Drn));
    }

    #[test]
    fn the_papers_segmenter_per_dataset() {
        let auto = |m| SegmenterChoice::Auto.resolve(m).unwrap();
        assert_eq!(auto(DatasetMode::Coco), SegmenterKind::DeepLabV2);
        assert_eq!(auto(DatasetMode::Ade20k), SegmenterKind::UperNet);
        assert_eq!(auto(DatasetMode::Ade20kOutdoor), SegmenterKind::UperNet);
        assert_eq!(auto(DatasetMode::Cityscapes), SegmenterKind::Drn);
        assert_eq!(auto(DatasetMode::Synthetic), SegmenterKind::Synthetic);
        assert_eq!(auto(DatasetMode::Custom), SegmenterKind::None);
        assert!(SegmenterChoice::Kind(SegmenterKind::Synthetic).resolve(DatasetMode::Coco).is_err());
        assert!(SegmenterChoice::Kind(SegmenterKind::DeepLabV2).resolve(DatasetMode::Synthetic).is_err());
        assert_eq!(SegmenterChoice::Kind(SegmenterKind::None).resolve(DatasetMode::Coco).unwrap(), SegmenterKind::None);
        let p = Protocol::paper(DatasetMode::Cityscapes);
        assert_eq!((p.image_size, p.segmenter_classes, p.headline_dont_care), ((256, 512), 19, DontCare::Count));
        assert_eq!(Protocol::paper(DatasetMode::Coco).image_size, (256, 256));
        assert_eq!(Protocol::paper(DatasetMode::Ade20kOutdoor).segmenter_classes, 150);
    }

    #[test]
    fn every_missing_file_is_listed_before_anything_runs() {
        let d = tempfile::tempdir().unwrap();
        let flags = EvalFlags {
            segmenter_hub: Some("someorg/segmenters".into()),
            hub_cache: Some(d.path().to_path_buf()),
            offline: true,
            ..EvalFlags::default()
        };
        // UperNet's two files from an empty cache, and no Inception weights: three entries.
        let e = resolve_evaluation(DatasetMode::Ade20k, &flags, FidRequirement::Required).unwrap_err();
        let ProtocolError::Missing(m) = &e else { panic!("{e}") };
        assert_eq!(m.0.len(), 3, "{e}");
        let s = e.to_string();
        assert!(s.contains("encoder_epoch_50.pth") && s.contains("decoder_epoch_50.pth"), "{s}");
        assert!(s.contains("models--someorg--segmenters/snapshots/<commit>/encoder_epoch_50.pth"), "{s}");
        assert!(s.contains(FID_WEIGHTS_FILE) && s.contains("--no-fid"), "{s}");

        // Files given by path: a missing one is named; FID optional is no missing file.
        let flags = EvalFlags { segmenter_weights: vec![d.path().join("nope.pth")], ..EvalFlags::default() };
        let e = resolve_evaluation(DatasetMode::Coco, &flags, FidRequirement::IfGiven).unwrap_err().to_string();
        assert!(e.contains("nope.pth: no such file") && e.contains("deeplabv2_resnet101_msc"), "{e}");
        assert!(!e.contains(FID_WEIGHTS_FILE), "{e}");

        // Present files: found and hashed; test weights are marked.
        let seg = d.path().join("drn.pth");
        let fid = d.path().join("inception.pth");
        std::fs::write(&seg, b"abc").unwrap();
        std::fs::write(&fid, b"abc").unwrap();
        let flags = EvalFlags { segmenter_weights: vec![seg], fid_weights: Some(fid), ..EvalFlags::default() };
        let s = resolve_evaluation(DatasetMode::Cityscapes, &flags, FidRequirement::Required).unwrap();
        assert_eq!(s.segmenter, SegmenterKind::Drn);
        assert_eq!(s.segmenter_files[0].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(s.uses_test_weights() && !s.fid_weights.as_ref().unwrap().released);
        assert_eq!(s.to_json()["protocol"]["segmenter"], "drn");

        // --no-fid and the synthetic segmenter need no file at all.
        let flags = EvalFlags { no_fid: true, ..EvalFlags::default() };
        let s = resolve_evaluation(DatasetMode::Synthetic, &flags, FidRequirement::Required).unwrap();
        assert_eq!((s.segmenter, s.fid_weights.is_none(), s.fid_off.is_some()), (SegmenterKind::Synthetic, true, true));
        // Wrong counts and bad hub ids are flag errors, not missing files.
        let flags = EvalFlags { segmenter_weights: vec!["a".into()], ..EvalFlags::default() };
        assert!(matches!(
            resolve_evaluation(DatasetMode::Ade20k, &flags, FidRequirement::IfGiven),
            Err(ProtocolError::Invalid { .. })
        ));
        let flags = EvalFlags { fid_hub: Some("noslash".into()), ..EvalFlags::default() };
        assert!(matches!(
            resolve_evaluation(DatasetMode::Coco, &flags, FidRequirement::IfGiven),
            Err(ProtocolError::Invalid { .. })
        ));
    }

    #[test]
    fn label_size_after_evaluation_preprocessing() {
        let c = DatasetConfig::new(DatasetMode::Cityscapes, Some("/x".into()));
        assert_eq!(eval_label_size(&c).unwrap(), (256, 512));
        let c = DatasetConfig::new(DatasetMode::Coco, Some("/x".into()));
        assert_eq!(eval_label_size(&c).unwrap(), (256, 256));
    }
}
