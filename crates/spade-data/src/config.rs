//! Dataset options, named after the reference's command-line flags, and the per-dataset
//! defaults the reference sets in each dataset's `modify_commandline_options`.
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// `dataset_mode`: which on-disk layout to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetMode {
    /// COCO-Stuff: `{train,val}_{img,label,inst}/` or `train2017/` + `stuffthingmaps_trainval2017/`.
    Coco,
    /// ADE20K: `ADEChallengeData2016/{images,annotations}/{training,validation}/`.
    Ade20k,
    /// ADE20K-outdoor: the ADE20K images whose scene category (`sceneCategories.txt`) is
    /// outdoor ([`crate::ade20k_outdoor`]); same layout, classes and label mapping as ADE20K.
    Ade20kOutdoor,
    /// Cityscapes: `leftImg8bit/` + `gtFine/`.
    Cityscapes,
    /// Custom folders (the reference's `custom`): images, labels, optional instances, by stem.
    Custom,
    /// The built-in procedural dataset; reads no files.
    Synthetic,
}

impl DatasetMode {
    pub const ALL: [DatasetMode; 6] = [
        DatasetMode::Coco,
        DatasetMode::Ade20k,
        DatasetMode::Ade20kOutdoor,
        DatasetMode::Cityscapes,
        DatasetMode::Custom,
        DatasetMode::Synthetic,
    ];

    /// The reference's `dataset_mode` value, written in configs.
    pub fn config_name(self) -> &'static str {
        match self {
            DatasetMode::Coco => "coco",
            DatasetMode::Ade20k => "ade20k",
            DatasetMode::Ade20kOutdoor => "ade20k_outdoor",
            DatasetMode::Cityscapes => "cityscapes",
            DatasetMode::Custom => "custom",
            DatasetMode::Synthetic => "synthetic",
        }
    }

    /// The name on the command line (`--dataset`, `spade dataset check --format`) and in
    /// report and run-store paths.
    pub fn cli_name(self) -> &'static str {
        match self {
            DatasetMode::Coco => "coco-stuff",
            DatasetMode::Ade20k => "ade20k",
            DatasetMode::Ade20kOutdoor => "ade20k-outdoor",
            DatasetMode::Cityscapes => "cityscapes",
            DatasetMode::Custom => "folder",
            DatasetMode::Synthetic => "synthetic",
        }
    }

    /// ADE20K or its outdoor subset: the same layout, classes and label mapping.
    pub fn is_ade20k(self) -> bool {
        matches!(self, DatasetMode::Ade20k | DatasetMode::Ade20kOutdoor)
    }
}

impl fmt::Display for DatasetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// Configs hold the reference's name; any alias of [`FromStr`] reads.
impl Serialize for DatasetMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.config_name())
    }
}

impl<'de> Deserialize<'de> for DatasetMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Every name and alias of a dataset, in one place.
impl FromStr for DatasetMode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "coco" | "coco-stuff" | "coco_stuff" => DatasetMode::Coco,
            "ade20k" => DatasetMode::Ade20k,
            "ade20k-outdoor" | "ade20k_outdoor" => DatasetMode::Ade20kOutdoor,
            "cityscapes" => DatasetMode::Cityscapes,
            "custom" | "folder" => DatasetMode::Custom,
            "synthetic" => DatasetMode::Synthetic,
            _ => {
                return Err(DataError::Config {
                    option: "dataset_mode",
                    value: s.to_string(),
                    expected: "coco-stuff, ade20k, ade20k-outdoor, cityscapes, folder or synthetic".into(),
                })
            }
        })
    }
}

/// `phase`: the split to read. The reference's `test` phase reads the `val` split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Train,
    #[serde(alias = "test")]
    Val,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Train => "train",
            Phase::Val => "val",
        }
    }
}

impl FromStr for Phase {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Phase::Train),
            "val" | "test" => Ok(Phase::Val),
            _ => Err(DataError::Config { option: "phase", value: s.to_string(), expected: "train or val".into() }),
        }
    }
}

/// `preprocess_mode`, with the reference's eight choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreprocessMode {
    ResizeAndCrop,
    Crop,
    ScaleWidth,
    ScaleWidthAndCrop,
    ScaleShortside,
    ScaleShortsideAndCrop,
    Fixed,
    None,
}

impl PreprocessMode {
    pub(crate) fn resizes_square(self) -> bool {
        self == PreprocessMode::ResizeAndCrop
    }
    pub(crate) fn scales_width(self) -> bool {
        matches!(self, PreprocessMode::ScaleWidth | PreprocessMode::ScaleWidthAndCrop)
    }
    pub(crate) fn scales_shortside(self) -> bool {
        matches!(self, PreprocessMode::ScaleShortside | PreprocessMode::ScaleShortsideAndCrop)
    }
    pub(crate) fn crops(self) -> bool {
        matches!(
            self,
            PreprocessMode::ResizeAndCrop
                | PreprocessMode::Crop
                | PreprocessMode::ScaleWidthAndCrop
                | PreprocessMode::ScaleShortsideAndCrop
        )
    }
}

impl FromStr for PreprocessMode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            DataError::Config {
                option: "preprocess_mode",
                value: s.to_string(),
                expected: "resize_and_crop, crop, scale_width, scale_width_and_crop, scale_shortside, scale_shortside_and_crop, fixed or none".into(),
            }
        })
    }
}

/// The `data:` section of an experiment: the reference's dataset flags. Options left out take
/// the dataset's defaults (see [`DatasetConfig::resolve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub dataset_mode: DatasetMode,
    /// Dataset root (unused by `synthetic`).
    #[serde(default)]
    pub dataroot: Option<PathBuf>,
    #[serde(default)]
    pub phase: Phase,
    /// Training-time behaviour (random crop position, flips, train `load_size`). Defaults to
    /// `phase == train`, as the reference's train.py / test.py do.
    #[serde(default)]
    pub is_train: Option<bool>,
    #[serde(default)]
    pub label_nc: Option<usize>,
    #[serde(default)]
    pub contain_dontcare_label: Option<bool>,
    #[serde(default)]
    pub no_instance: Option<bool>,
    #[serde(default)]
    pub preprocess_mode: Option<PreprocessMode>,
    #[serde(default)]
    pub load_size: Option<usize>,
    #[serde(default)]
    pub crop_size: Option<usize>,
    /// Width / height of the `fixed` output (Cityscapes: 2).
    #[serde(default)]
    pub aspect_ratio: Option<f64>,
    #[serde(default)]
    pub no_flip: bool,
    #[serde(default)]
    pub max_dataset_size: Option<usize>,
    /// COCO-Stuff: do not add `{split}_*_portrait/` folders in training.
    #[serde(default)]
    pub coco_no_portraits: bool,
    /// Folder format: label directory (default `<dataroot>/labels`).
    #[serde(default)]
    pub label_dir: Option<PathBuf>,
    /// Folder format: image directory (default `<dataroot>/images`).
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
    /// Folder format: instance directory (default `<dataroot>/instances` when it exists).
    #[serde(default)]
    pub instance_dir: Option<PathBuf>,
    /// Folder format: `classes.json` mapping label colours to ids (default
    /// `<dataroot>/classes.json` when it exists). Needed for RGB colour-coded labels.
    #[serde(default)]
    pub palette: Option<PathBuf>,
    /// Synthetic: number of samples in the split (default 10000 train, 500 val).
    #[serde(default)]
    pub synthetic_count: Option<usize>,
    /// Synthetic: generator seed.
    #[serde(default)]
    pub synthetic_seed: u64,
    /// Synthetic: draw every scene in this style (`day-summer`, ..., `night-winter`), or `all`
    /// (the default: each scene in its own of the nine styles).
    #[serde(default)]
    pub synthetic_style: Option<String>,
    /// Synthetic: fraction of single-class scenes, in [0, 1] (default 0).
    #[serde(default)]
    pub synthetic_uniform: Option<f64>,
}

impl DatasetConfig {
    /// A config with every option at the dataset's default.
    pub fn new(dataset_mode: DatasetMode, dataroot: Option<PathBuf>) -> Self {
        DatasetConfig {
            dataset_mode,
            dataroot,
            phase: Phase::Train,
            is_train: None,
            label_nc: None,
            contain_dontcare_label: None,
            no_instance: None,
            preprocess_mode: None,
            load_size: None,
            crop_size: None,
            aspect_ratio: None,
            no_flip: false,
            max_dataset_size: None,
            coco_no_portraits: false,
            label_dir: None,
            image_dir: None,
            instance_dir: None,
            palette: None,
            synthetic_count: None,
            synthetic_seed: 0,
            synthetic_style: None,
            synthetic_uniform: None,
        }
    }

    /// Checks the ranges of the options that are given (those left out take the dataset's
    /// defaults, which are in range). [`DatasetConfig::resolve`] checks them too.
    pub fn validate(&self) -> Result<()> {
        let bad = |option: &'static str, value: String, expected: &str| {
            Err(DataError::Config { option, value, expected: expected.into() })
        };
        for (option, v) in [("crop_size", self.crop_size), ("load_size", self.load_size)] {
            if let Some(v) = v {
                if !(1..=65536).contains(&v) {
                    return bad(option, v.to_string(), "a size in pixels in 1..=65536");
                }
            }
        }
        if let Some(n) = self.label_nc {
            if !(1..=65536).contains(&n) {
                return bad("label_nc", n.to_string(), "a class count in 1..=65536");
            }
        }
        if let Some(a) = self.aspect_ratio {
            if !(a.is_finite() && a > 0.0 && a <= 1000.0) {
                return bad("aspect_ratio", format!("{a:?}"), "a finite width / height ratio in (0, 1000]");
            }
        }
        if self.max_dataset_size == Some(0) {
            return bad("max_dataset_size", "0".into(), "at least 1 (or left out for all)");
        }
        if self.synthetic_count == Some(0) {
            return bad("synthetic_count", "0".into(), "at least 1 sample");
        }
        Ok(())
    }

    /// Fills every option left out with the dataset's default (the reference's
    /// `modify_commandline_options`), and checks the values.
    pub fn resolve(&self) -> Result<ResolvedConfig> {
        let is_train = self.is_train.unwrap_or(self.phase == Phase::Train);
        let train_load = if is_train { 286 } else { 256 };
        // (label_nc, dontcare, no_instance, preprocess, load, crop, aspect)
        let d = match self.dataset_mode {
            DatasetMode::Coco => (182, true, false, PreprocessMode::ResizeAndCrop, train_load, 256, 1.0),
            DatasetMode::Ade20k | DatasetMode::Ade20kOutdoor => {
                (150, true, true, PreprocessMode::ResizeAndCrop, train_load, 256, 1.0)
            }
            DatasetMode::Cityscapes => (35, false, false, PreprocessMode::Fixed, 512, 512, 2.0),
            DatasetMode::Custom => (13, false, false, PreprocessMode::ResizeAndCrop, train_load, 256, 1.0),
            DatasetMode::Synthetic => {
                (crate::synthetic::NUM_CLASSES, false, false, PreprocessMode::Fixed, 256, 256, 1.0)
            }
        };
        let dataroot = match (&self.dataroot, self.dataset_mode) {
            (Some(r), _) => r.clone(),
            (None, DatasetMode::Synthetic) => PathBuf::new(),
            (None, DatasetMode::Custom) if self.label_dir.is_some() && self.image_dir.is_some() => PathBuf::new(),
            (None, _) => {
                return Err(DataError::Config {
                    option: "dataroot",
                    value: "(none)".into(),
                    expected: format!("the {} dataset root directory", self.dataset_mode),
                })
            }
        };
        let mut label_nc = self.label_nc.unwrap_or(d.0);
        let mut no_instance = self.no_instance.unwrap_or(d.2);
        let (mut label_dir, mut image_dir, mut instance_dir, mut palette) = (None, None, None, None);
        if self.dataset_mode == DatasetMode::Custom {
            label_dir = Some(self.label_dir.clone().unwrap_or_else(|| dataroot.join("labels")));
            image_dir = Some(self.image_dir.clone().unwrap_or_else(|| dataroot.join("images")));
            instance_dir = self.instance_dir.clone().or_else(|| {
                let p = dataroot.join("instances");
                p.is_dir().then_some(p)
            });
            if self.no_instance.is_none() {
                no_instance = instance_dir.is_none();
            }
            let pal_path = self.palette.clone().or_else(|| {
                let p = dataroot.join("classes.json");
                p.is_file().then_some(p)
            });
            if let Some(p) = pal_path {
                let pal = crate::pngio::Palette::load(&p)?;
                if self.label_nc.is_none() {
                    label_nc = pal.label_nc();
                }
                palette = Some(pal);
            }
        }
        if self.dataset_mode == DatasetMode::Coco
            && self.no_instance.is_none()
            && crate::layout::coco_layout(&dataroot, self.phase) == Some(crate::layout::CocoLayout::Official)
            && !dataroot.join(format!("{}_inst", self.phase.name())).is_dir()
        {
            // The official layout has no instance maps unless they were generated.
            no_instance = true;
        }
        if self.dataset_mode == DatasetMode::Synthetic && label_nc != crate::synthetic::NUM_CLASSES {
            return Err(DataError::Config {
                option: "label_nc",
                value: label_nc.to_string(),
                expected: format!("{} for the synthetic dataset (its class count)", crate::synthetic::NUM_CLASSES),
            });
        }
        if label_nc == 0 {
            return Err(DataError::Config {
                option: "label_nc",
                value: "0".into(),
                expected: "at least 1 class".into(),
            });
        }
        let crop_size = self.crop_size.unwrap_or(d.5);
        let load_size = self.load_size.unwrap_or(d.4);
        let aspect_ratio = self.aspect_ratio.unwrap_or(d.6);
        for (option, v) in [("crop_size", crop_size), ("load_size", load_size)] {
            if v == 0 {
                return Err(DataError::Config {
                    option,
                    value: "0".into(),
                    expected: "a positive size in pixels".into(),
                });
            }
        }
        if !(aspect_ratio.is_finite() && aspect_ratio > 0.0) {
            return Err(DataError::Config {
                option: "aspect_ratio",
                value: aspect_ratio.to_string(),
                expected: "a positive width / height ratio".into(),
            });
        }
        let style = match self.synthetic_style.as_deref() {
            None | Some("all") => None,
            Some(name) => Some(crate::synthetic::Style::from_name(name).ok_or_else(|| DataError::Config {
                option: "synthetic_style",
                value: name.to_string(),
                expected: format!(
                    "all or one of {}",
                    crate::synthetic::Style::ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                ),
            })?),
        };
        let uniform_fraction = self.synthetic_uniform.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&uniform_fraction) {
            return Err(DataError::Config {
                option: "synthetic_uniform",
                value: uniform_fraction.to_string(),
                expected: "a fraction in [0, 1]".into(),
            });
        }
        Ok(ResolvedConfig {
            dataset_mode: self.dataset_mode,
            dataroot,
            phase: self.phase,
            is_train,
            label_nc,
            contain_dontcare_label: self.contain_dontcare_label.unwrap_or(d.1),
            no_instance,
            preprocess: Preprocess {
                mode: self.preprocess_mode.unwrap_or(d.3),
                load_size,
                crop_size,
                aspect_ratio,
                flip: is_train && !self.no_flip,
            },
            max_dataset_size: self.max_dataset_size.unwrap_or(usize::MAX),
            coco_no_portraits: self.coco_no_portraits,
            label_dir,
            image_dir,
            instance_dir,
            palette,
            synthetic_count: self.synthetic_count.unwrap_or(if self.phase == Phase::Train { 10_000 } else { 500 }),
            synthetic_seed: self.synthetic_seed,
            synthetic_scene: crate::synthetic::SceneOptions { style, uniform_fraction },
        })
    }
}

/// The preprocessing options, as `get_params` / `get_transform` read them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub mode: PreprocessMode,
    pub load_size: usize,
    pub crop_size: usize,
    pub aspect_ratio: f64,
    /// Random horizontal flip (`isTrain and not no_flip`).
    pub flip: bool,
}

/// Every option with a concrete value.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    pub dataset_mode: DatasetMode,
    pub dataroot: PathBuf,
    pub phase: Phase,
    pub is_train: bool,
    pub label_nc: usize,
    pub contain_dontcare_label: bool,
    pub no_instance: bool,
    pub preprocess: Preprocess,
    pub max_dataset_size: usize,
    pub coco_no_portraits: bool,
    pub label_dir: Option<PathBuf>,
    pub image_dir: Option<PathBuf>,
    pub instance_dir: Option<PathBuf>,
    pub palette: Option<crate::pngio::Palette>,
    pub synthetic_count: usize,
    pub synthetic_seed: u64,
    pub synthetic_scene: crate::synthetic::SceneOptions,
}

impl ResolvedConfig {
    /// Channels of the network input: `label_nc + dontcare + instance edge`.
    pub fn semantic_nc(&self) -> usize {
        self.label_nc + self.contain_dontcare_label as usize + (!self.no_instance) as usize
    }
}
