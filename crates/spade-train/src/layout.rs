//! The run directory: its layout and the formats of its files, in one place. The trainer, the
//! evaluator, the CLI and xtask write and read a run only through [`RunDir`] and the structs
//! here; nothing else spells a run's file names or JSON keys.
//!
//! ```text
//! RUN/
//!   config.yaml            the experiment config the run was started with
//!   run.json               RunInfo: what trained (seed, objective, parameter counts, VGG file)
//!   losses.jsonl           one LossRecord per iteration
//!   samples/               training sample grids (iter_NNNNNNNN.png) and index.html
//!   checkpoints/iter_N/    latest_net_{G,D,E}.safetensors, optim_{G,D}.safetensors,
//!                          opt.txt, config.yaml, state.json
//!   latest                 the name of the newest complete checkpoint
//!   eval_protocol.json     the evaluation protocol and the weights it used
//!   metrics.json           Metrics: the scores of the latest checkpoint
//!   eval_samples/          grid.png, uniform.png, multimodal.png, style_guided.png
//!   row.json               RowInfo: the table row and code revision (runs of xtask's store)
//!   .lock                  held while a process works on the run
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run::{Result, TrainError};

/// A run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// The files of a checkpoint directory (`checkpoints/iter_N/`).
pub mod checkpoint {
    pub const NET_G: &str = "latest_net_G.safetensors";
    pub const NET_D: &str = "latest_net_D.safetensors";
    pub const NET_E: &str = "latest_net_E.safetensors";
    pub const OPTIM_G: &str = "optim_G.safetensors";
    pub const OPTIM_D: &str = "optim_D.safetensors";
    /// The network options in the reference's `opt.txt` format.
    pub const OPT_TXT: &str = "opt.txt";
    pub const CONFIG: &str = "config.yaml";
    /// The training state (`CheckpointState`).
    pub const STATE: &str = "state.json";

    /// The directory name of the checkpoint after `iteration` iterations.
    pub fn name(iteration: usize) -> String {
        format!("iter_{iteration:08}")
    }
}

/// The images of the evaluation (`eval_samples/`).
pub mod eval_samples {
    /// Label | generated | real for the first validation samples.
    pub const GRID: &str = "grid.png";
    /// The wash-away test's single-class maps.
    pub const UNIFORM: &str = "uniform.png";
    /// Several z for the same label.
    pub const MULTIMODAL: &str = "multimodal.png";
    /// Labels generated in the style of real images (the image encoder's posterior mean).
    pub const STYLE_GUIDED: &str = "style_guided.png";
}

impl RunDir {
    pub const CONFIG: &'static str = "config.yaml";
    pub const RUN_INFO: &'static str = "run.json";
    pub const LOSSES: &'static str = "losses.jsonl";
    pub const SAMPLES: &'static str = "samples";
    pub const CHECKPOINTS: &'static str = "checkpoints";
    pub const LATEST: &'static str = "latest";
    pub const EVAL_PROTOCOL: &'static str = "eval_protocol.json";
    pub const METRICS: &'static str = "metrics.json";
    pub const EVAL_SAMPLES: &'static str = "eval_samples";
    pub const ROW_INFO: &'static str = "row.json";
    pub const LOCK: &'static str = ".lock";

    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(Self::CONFIG)
    }
    pub fn run_info(&self) -> PathBuf {
        self.root.join(Self::RUN_INFO)
    }
    pub fn losses(&self) -> PathBuf {
        self.root.join(Self::LOSSES)
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join(Self::SAMPLES)
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(Self::CHECKPOINTS)
    }
    /// The checkpoint directory `name` (see [`checkpoint::name`]).
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.checkpoints().join(name)
    }
    pub fn latest(&self) -> PathBuf {
        self.root.join(Self::LATEST)
    }
    pub fn eval_protocol(&self) -> PathBuf {
        self.root.join(Self::EVAL_PROTOCOL)
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join(Self::METRICS)
    }
    pub fn eval_samples(&self) -> PathBuf {
        self.root.join(Self::EVAL_SAMPLES)
    }
    pub fn row_info(&self) -> PathBuf {
        self.root.join(Self::ROW_INFO)
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join(Self::LOCK)
    }

    pub fn read_run_info(&self) -> Result<RunInfo> {
        read_json(&self.run_info())
    }
    pub fn write_run_info(&self, v: &RunInfo) -> Result<()> {
        write_json(&self.run_info(), v)
    }
    pub fn read_metrics(&self) -> Result<Metrics> {
        read_json(&self.metrics())
    }
    pub fn write_metrics(&self, v: &Metrics) -> Result<()> {
        write_json(&self.metrics(), v)
    }
    pub fn read_row_info(&self) -> Result<RowInfo> {
        read_json(&self.row_info())
    }
    pub fn write_row_info(&self, v: &RowInfo) -> Result<()> {
        write_json(&self.row_info(), v)
    }
    /// The `row.json` of a finished store run: one whose config is `config_yaml`, with metrics
    /// and a readable `row.json`; None otherwise (not started, killed, or another config).
    pub fn finished_row(&self, config_yaml: &str) -> Option<RowInfo> {
        let same = std::fs::read_to_string(self.config()).ok().as_deref() == Some(config_yaml);
        (same && self.metrics().is_file()).then(|| self.read_row_info().ok()).flatten()
    }
    /// The `test_weights` flag of `eval_protocol.json` (false when the file is absent).
    pub fn used_test_weights(&self) -> Result<bool> {
        #[derive(Deserialize)]
        struct Flag {
            #[serde(default)]
            test_weights: bool,
        }
        let p = self.eval_protocol();
        Ok(p.is_file() && read_json::<Flag>(&p)?.test_weights)
    }
}

/// Reads a JSON file as `T`; errors name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let err = |m: String| TrainError::File { path: path.to_path_buf(), message: m };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(format!("not the expected JSON: {e}")))
}

/// Writes `v` as pretty JSON, atomically (creating the parent directory).
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::File { path: dir.into(), message: e.to_string() })?;
    }
    let text = serde_json::to_string_pretty(v).expect("run-directory structs serialise");
    spade_io::atomic::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes()))?;
    Ok(())
}

/// A file used by a run, by its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHash {
    pub file: String,
    pub sha256: String,
}

/// `run.json`: what trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The config's file name inside the run.
    pub config: String,
    pub seed: u64,
    /// `git rev-parse HEAD` at the start (`-dirty` with uncommitted changes; `unknown` outside
    /// a git checkout).
    pub git_revision: String,
    pub device: String,
    pub vgg_loss: bool,
    /// The generator's objective in words (e.g. "GAN", "L1 pixel regression").
    pub objective: String,
    pub discriminator: bool,
    pub vgg_weights: Option<FileHash>,
    #[serde(rename = "parameters_G")]
    pub parameters_g: usize,
    #[serde(rename = "parameters_D")]
    pub parameters_d: usize,
}

/// One line of `losses.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub iter: usize,
    pub epoch: usize,
    pub lr: f64,
    /// Every loss term of the iteration's G and D steps, by name.
    pub losses: BTreeMap<String, f64>,
    pub elapsed_s: f64,
    /// Mean |fake - real| of the G step's output (a monitor, not part of the objective).
    pub l1_fake_real: Option<f64>,
}

/// Segmentation scores under one don't-care setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    #[serde(rename = "mIoU")]
    pub miou: f64,
    pub accuracy: f64,
    pub pixels: u64,
}

/// Scores under both don't-care settings (`dontcare_ignore`: the paper's, don't-care pixels left
/// out; `dontcare_count`: counted as a class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub dontcare_ignore: Score,
    pub dontcare_count: Score,
}

/// The `segmentation` part of the metrics: scores of the generated and the real images with the
/// protocol, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    Scored {
        generated: Scores,
        real_images: Scores,
        /// Every setting of the evaluation (segmenter, weights digest, resolution, mapping).
        protocol: serde_json::Value,
    },
    Unavailable {
        unavailable: String,
    },
}

impl Segmentation {
    /// The generated images' scores with the paper's don't-care setting.
    pub fn generated(&self) -> Option<&Score> {
        match self {
            Segmentation::Scored { generated, .. } => Some(&generated.dontcare_ignore),
            Segmentation::Unavailable { .. } => None,
        }
    }
    /// The real images' scores (the segmenter's own reference).
    pub fn real_images(&self) -> Option<&Score> {
        match self {
            Segmentation::Scored { real_images, .. } => Some(&real_images.dontcare_ignore),
            Segmentation::Unavailable { .. } => None,
        }
    }
    /// The segmenter's name.
    pub fn segmenter(&self) -> Option<&str> {
        match self {
            Segmentation::Scored { protocol, .. } => protocol["segmenter"].as_str(),
            Segmentation::Unavailable { .. } => None,
        }
    }
}

/// A distance or score with its settings, or `value: null` and why it is missing (a metric that
/// cannot be computed says so, nothing stands in for it).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Measured {
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// What was measured, how, and on what (images, weights digest, resize, ...).
    #[serde(flatten)]
    pub details: BTreeMap<String, serde_json::Value>,
}

impl Measured {
    pub fn value(value: f64, details: serde_json::Value) -> Self {
        let details = match details {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Measured { value: Some(value), unavailable: None, details }
    }
    pub fn unavailable(why: impl Into<String>) -> Self {
        Measured { value: None, unavailable: Some(why.into()), details: BTreeMap::new() }
    }
}

/// The paper's wash-away test: single-class maps, the fraction of pixels segmented as their class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UniformMaps {
    Scored {
        pixel_accuracy: f64,
        per_class: Vec<f64>,
        real_images_pixel_accuracy: f64,
        real_per_class: Vec<f64>,
        classes: usize,
        z_per_map: usize,
        rule: String,
    },
    Unavailable {
        unavailable: String,
    },
}

impl UniformMaps {
    pub fn pixel_accuracy(&self) -> Option<f64> {
        match self {
            UniformMaps::Scored { pixel_accuracy, .. } => Some(*pixel_accuracy),
            UniformMaps::Unavailable { .. } => None,
        }
    }
    pub fn real_images_pixel_accuracy(&self) -> Option<f64> {
        match self {
            UniformMaps::Scored { real_images_pixel_accuracy, .. } => Some(*real_images_pixel_accuracy),
            UniformMaps::Unavailable { .. } => None,
        }
    }
}

/// `metrics.json` of a training run: the scores of its latest checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub checkpoint: Option<String>,
    /// Validation samples generated and scored.
    pub samples: usize,
    #[serde(rename = "parameters_G")]
    pub parameters_g: usize,
    pub segmentation: Segmentation,
    /// FID (pytorch-fid's Inception).
    pub fid: Measured,
    /// The Fréchet distance in the segmenter's penultimate features (not FID).
    pub fd_evaluator: Measured,
    pub uniform_maps: UniformMaps,
    /// Mean pairwise L1 distance between outputs for the same label.
    pub diversity: Measured,
    pub l1_generated_vs_real: f64,
}

/// `metrics.json` of `spade evaluate --generated`: images generated elsewhere, scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedMetrics {
    /// The folder of generated images.
    pub generated: String,
    pub images: usize,
    /// The dataset, split, preprocessing and pairing rule.
    pub dataset: serde_json::Value,
    pub segmentation: Segmentation,
    pub fid: Measured,
}

/// `row.json`: what a finished run of xtask's store records beside its config and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowInfo {
    /// The table and row that first asked for this run (other rows may share it).
    pub table: String,
    pub row: String,
    pub profile: String,
    pub profile_scale: String,
    pub dataset: String,
    pub seed: u64,
    pub iterations: usize,
    pub train_wall_s: f64,
    pub eval_wall_s: f64,
    pub config_sha256: String,
    /// The run's store key (config and evaluator).
    pub key: String,
    /// Hash of the source trees the numbers depend on (xtask's `code_revision`).
    pub code_revision: String,
    /// `git rev-parse HEAD` when it ran (`-dirty` with uncommitted changes).
    pub git_revision: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics.json as the evaluator wrote it before the structs existed reads back, and
    /// writes out again with the same values.
    #[test]
    fn metrics_round_trip_and_read_the_older_files() {
        let old = r#"{
          "checkpoint": "iter_00000120", "samples": 64, "parameters_G": 1234,
          "segmentation": {
            "generated": {"dontcare_ignore": {"mIoU": 0.25, "accuracy": 0.5, "pixels": 100},
                          "dontcare_count": {"mIoU": 0.2, "accuracy": 0.4, "pixels": 120}},
            "real_images": {"dontcare_ignore": {"mIoU": 0.75, "accuracy": 0.9, "pixels": 100},
                            "dontcare_count": {"mIoU": 0.7, "accuracy": 0.8, "pixels": 120}},
            "protocol": {"segmenter": "synthetic-segmenter"}},
          "fid": {"value": null, "unavailable": "no Inception weights"},
          "fd_evaluator": {"value": 12.5, "images": 64, "dim": 32, "name": "FD"},
          "uniform_maps": {"pixel_accuracy": 0.6, "per_class": [0.6], "real_images_pixel_accuracy": 0.9,
                           "real_per_class": [0.9], "classes": 1, "z_per_map": 2, "rule": "r"},
          "diversity": {"value": 0.0, "name": "d", "note": "no z"},
          "l1_generated_vs_real": 0.3
        }"#;
        let m: Metrics = serde_json::from_str(old).unwrap();
        assert_eq!(m.segmentation.generated().unwrap().miou, 0.25);
        assert_eq!(m.segmentation.real_images().unwrap().accuracy, 0.9);
        assert_eq!(m.segmentation.segmenter(), Some("synthetic-segmenter"));
        assert_eq!(m.fid.value, None);
        assert_eq!(m.fid.unavailable.as_deref(), Some("no Inception weights"));
        assert_eq!(m.fd_evaluator.value, Some(12.5));
        assert_eq!(m.fd_evaluator.details["dim"], 32);
        assert_eq!(m.uniform_maps.pixel_accuracy(), Some(0.6));
        let again: Metrics = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        // A missing measurement says why, and keeps `value: null` in the file.
        let text = serde_json::to_string(&Metrics {
            segmentation: Segmentation::Unavailable { unavailable: "no segmenter".into() },
            uniform_maps: UniformMaps::Unavailable { unavailable: "not synthetic".into() },
            ..m
        })
        .unwrap();
        assert!(text.contains(r#""fid":{"value":null,"unavailable":"no Inception weights"}"#), "{text}");
        assert!(text.contains(r#""segmentation":{"unavailable":"no segmenter"}"#), "{text}");
    }

    #[test]
    fn run_dir_paths() {
        let r = RunDir::new("/runs/a");
        assert_eq!(r.metrics(), Path::new("/runs/a/metrics.json"));
        assert_eq!(r.checkpoint(&checkpoint::name(120)), Path::new("/runs/a/checkpoints/iter_00000120"));
        let dir = tempfile::tempdir().unwrap();
        let r = RunDir::new(dir.path());
        assert!(!r.used_test_weights().unwrap());
        std::fs::write(r.eval_protocol(), r#"{"test_weights": true}"#).unwrap();
        assert!(r.used_test_weights().unwrap());
        let e = r.read_metrics().unwrap_err().to_string();
        assert!(e.contains("metrics.json"), "{e}");
    }
}
