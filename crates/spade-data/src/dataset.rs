//! Datasets: the file-based ones (COCO-Stuff, ADE20K, Cityscapes, custom folders) and the
//! synthetic one behind one trait; `check` validates a whole dataset; `export_synthetic`
//! writes the synthetic dataset in the folder format.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use crate::config::{DatasetConfig, DatasetMode, ResolvedConfig};
use crate::error::{DataError, FileKind, Result};
use crate::layout::{list_pairs, PairPaths};
use crate::pngio::{read_image, read_instance_png, read_label_png};
use crate::resample::{flip_horizontal, Plane};
use crate::rng::Rng;
use crate::synthetic;
use crate::transform::{get_params, to_normalized, transform_map, transform_rgb, LabelMapping};
use crate::{LabelMap, Sample};

/// A source of samples. `load` is a pure function of `(index, aug_seed)`.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn config(&self) -> &ResolvedConfig;
    /// Loads and preprocesses sample `index`; `aug_seed` draws its crop position and flip.
    fn load(&self, index: usize, aug_seed: u64) -> Result<Sample>;
}

/// Opens the dataset a config describes. Any missing partner file is an error here (use
/// [`check`] to list every problem).
pub fn open(cfg: &DatasetConfig) -> Result<Arc<dyn Dataset>> {
    let resolved = cfg.resolve()?;
    if resolved.dataset_mode == DatasetMode::Synthetic {
        return Ok(Arc::new(SyntheticDataset::new(resolved)));
    }
    Ok(Arc::new(FileDataset::new(resolved)?))
}

/// A dataset of files on disk.
pub struct FileDataset {
    cfg: ResolvedConfig,
    pairs: Vec<PairPaths>,
    mapping: LabelMapping,
}

fn expected_files(cfg: &ResolvedConfig) -> String {
    format!("{} label/image pairs for the {} split", cfg.dataset_mode, cfg.phase.name())
}

impl FileDataset {
    pub fn new(cfg: ResolvedConfig) -> Result<Self> {
        let listing = list_pairs(&cfg)?;
        if let Some(p) = listing.problems.into_iter().next() {
            return Err(p);
        }
        if listing.pairs.is_empty() {
            return Err(DataError::Empty {
                path: cfg.dataroot.clone(),
                kind: FileKind::Label,
                expected: expected_files(&cfg),
            });
        }
        let mapping = LabelMapping::new(cfg.dataset_mode, cfg.label_nc, cfg.contain_dontcare_label);
        Ok(FileDataset { cfg, pairs: listing.pairs, mapping })
    }

    pub fn pairs(&self) -> &[PairPaths] {
        &self.pairs
    }
}

fn check_size(path: &Path, kind: FileKind, w: usize, h: usize, label: &Path, lm: &LabelMap) -> Result<()> {
    if (w, h) != (lm.width, lm.height) {
        return Err(DataError::SizeMismatch {
            path: path.to_path_buf(),
            kind,
            width: w,
            height: h,
            label: label.to_path_buf(),
            label_width: lm.width,
            label_height: lm.height,
        });
    }
    Ok(())
}

impl Dataset for FileDataset {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn config(&self) -> &ResolvedConfig {
        &self.cfg
    }

    fn load(&self, index: usize, aug_seed: u64) -> Result<Sample> {
        let pair = &self.pairs[index];
        let p = &self.cfg.preprocess;
        let raw = read_label_png(&pair.label, self.cfg.palette.as_ref())?;
        let label = self.mapping.apply(&pair.label, raw)?;
        let mut rng = Rng::new(aug_seed);
        let params = get_params(p, label.width, label.height, &mut rng);
        let image = read_image(&pair.image)?;
        check_size(&pair.image, FileKind::Image, image.width, image.height, &pair.label, &label)?;
        let instance = match (&pair.instance, self.cfg.no_instance) {
            (Some(path), false) => {
                let m = read_instance_png(path)?;
                check_size(path, FileKind::Instance, m.width, m.height, &pair.label, &label)?;
                Some(transform_map(m, p, &params, 0))
            }
            _ => None,
        };
        let label = transform_map(label, p, &params, self.mapping.fill());
        let image = to_normalized(&transform_rgb(image, p, &params));
        Ok(Sample { label, instance, image: Some(image), path: pair.label.clone() })
    }
}

/// The procedural dataset (see [`crate::synthetic`]). Scenes are generated directly at
/// `crop_size x round(crop_size / aspect_ratio)`; preprocessing is only the random flip.
pub struct SyntheticDataset {
    cfg: ResolvedConfig,
    width: usize,
    height: usize,
}

impl SyntheticDataset {
    pub fn new(cfg: ResolvedConfig) -> Self {
        let width = cfg.preprocess.crop_size;
        let height = ((width as f64 / cfg.preprocess.aspect_ratio).round_ties_even() as usize).max(1);
        SyntheticDataset { cfg, width, height }
    }

    /// The generator index of sample `index` of this split (train and val are disjoint).
    pub fn scene_index(&self, index: usize) -> u64 {
        match self.cfg.phase {
            crate::config::Phase::Train => index as u64,
            crate::config::Phase::Val => (1u64 << 40) + index as u64,
        }
    }

    pub fn scene(&self, index: usize) -> synthetic::Scene {
        synthetic::generate_with(
            &self.cfg.synthetic_scene,
            self.cfg.synthetic_seed,
            self.scene_index(index),
            self.width,
            self.height,
        )
    }
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> usize {
        self.cfg.synthetic_count.min(self.cfg.max_dataset_size)
    }

    fn config(&self) -> &ResolvedConfig {
        &self.cfg
    }

    fn load(&self, index: usize, aug_seed: u64) -> Result<Sample> {
        let scene = self.scene(index);
        let flip = self.cfg.preprocess.flip && Rng::new(aug_seed).next_f64() > 0.5;
        let mut label = Plane::new(scene.label.width, scene.label.height, 1, scene.label.data);
        let mut inst = Plane::new(scene.instance.width, scene.instance.height, 1, scene.instance.data);
        let mut rgb = Plane::new(scene.image.width, scene.image.height, 3, scene.image.data);
        if flip {
            flip_horizontal(&mut label);
            flip_horizontal(&mut inst);
            flip_horizontal(&mut rgb);
        }
        let rgb = crate::RgbImage { width: rgb.width, height: rgb.height, data: rgb.data };
        let as_map = |p: Plane<u32>| LabelMap { height: p.height, width: p.width, data: p.data };
        Ok(Sample {
            label: as_map(label),
            instance: (!self.cfg.no_instance).then(|| as_map(inst)),
            image: Some(to_normalized(&rgb)),
            path: PathBuf::from(format!(
                "synthetic/seed{}/{}/{:06}.png",
                self.cfg.synthetic_seed,
                self.cfg.phase.name(),
                index
            )),
        })
    }
}

/// What `spade dataset check` prints: the JSON object, and the problems (one line each).
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub format: String,
    pub split: String,
    /// Complete (label, image[, instance]) pairs found.
    pub pairs: usize,
    pub label_nc: usize,
    /// Ids after the dataset's mapping (don't care = `label_nc`), sorted.
    pub labels_seen: Vec<u32>,
    #[serde(skip)]
    pub problems: Vec<DataError>,
}

fn check_pair(pair: &PairPaths, cfg: &ResolvedConfig, mapping: &LabelMapping) -> (BTreeSet<u32>, Vec<DataError>) {
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    let label = read_label_png(&pair.label, cfg.palette.as_ref()).and_then(|raw| mapping.apply(&pair.label, raw));
    let label = match label {
        Ok(l) => {
            let mut present = vec![false; cfg.label_nc + 1];
            for &v in &l.data {
                present[v as usize] = true;
            }
            seen.extend(present.iter().enumerate().filter(|(_, &p)| p).map(|(i, _)| i as u32));
            Some(l)
        }
        Err(e) => {
            problems.push(e);
            None
        }
    };
    match read_image(&pair.image) {
        Ok(img) => {
            if let Some(l) = &label {
                if let Err(e) = check_size(&pair.image, FileKind::Image, img.width, img.height, &pair.label, l) {
                    problems.push(e);
                }
            }
        }
        Err(e) => problems.push(e),
    }
    if let Some(path) = &pair.instance {
        match read_instance_png(path) {
            Ok(m) => {
                if let Some(l) = &label {
                    if let Err(e) = check_size(path, FileKind::Instance, m.width, m.height, &pair.label, l) {
                        problems.push(e);
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    (seen, problems)
}

/// Validates every pair of a dataset: partners present, every file decodable, label values in
/// range, sizes equal. Returns `Err` only for an invalid configuration.
pub fn check(cfg: &DatasetConfig) -> Result<CheckReport> {
    let resolved = cfg.resolve()?;
    let mut report = CheckReport {
        format: resolved.dataset_mode.cli_name().to_string(),
        split: resolved.phase.name().to_string(),
        pairs: 0,
        label_nc: resolved.label_nc,
        labels_seen: Vec::new(),
        problems: Vec::new(),
    };
    if resolved.dataset_mode == DatasetMode::Synthetic {
        let ds = SyntheticDataset::new(resolved.clone());
        let nc = resolved.label_nc;
        let results: Vec<(BTreeSet<u32>, Option<DataError>)> = (0..ds.len())
            .into_par_iter()
            .map(|i| {
                let s = ds.scene(i);
                let seen: BTreeSet<u32> = s.label.data.iter().copied().collect();
                let bad = seen.iter().find(|&&v| v as usize >= nc).map(|&v| DataError::LabelOutOfRange {
                    path: PathBuf::from(format!("synthetic/{i}")),
                    value: v,
                    valid: format!("0..={} for label_nc {nc}", nc - 1),
                    pixels: s.label.data.iter().filter(|&&x| x == v).count(),
                    values: vec![v],
                });
                (seen, bad)
            })
            .collect();
        let mut all = BTreeSet::new();
        for (seen, bad) in results {
            all.extend(seen);
            report.problems.extend(bad);
        }
        report.pairs = ds.len();
        report.labels_seen = all.into_iter().collect();
        return Ok(report);
    }
    let listing = match list_pairs(&resolved) {
        Ok(l) => l,
        Err(e) => {
            report.problems.push(e);
            return Ok(report);
        }
    };
    report.problems = listing.problems;
    report.pairs = listing.pairs.len();
    if listing.pairs.is_empty() && report.problems.is_empty() {
        report.problems.push(DataError::Empty {
            path: resolved.dataroot.clone(),
            kind: FileKind::Label,
            expected: expected_files(&resolved),
        });
    }
    let mapping = LabelMapping::new(resolved.dataset_mode, resolved.label_nc, resolved.contain_dontcare_label);
    let results: Vec<(BTreeSet<u32>, Vec<DataError>)> =
        listing.pairs.par_iter().map(|p| check_pair(p, &resolved, &mapping)).collect();
    let mut all = BTreeSet::new();
    for (seen, problems) in results {
        all.extend(seen);
        report.problems.extend(problems);
    }
    report.labels_seen = all.into_iter().collect();
    Ok(report)
}

/// Writes `count` synthetic scenes of `size x size` in the folder format: `images/*.png`,
/// `labels/*.png` (palette-indexed: the indices are the ids, the palette the class colours),
/// `instances/*.png` (8-bit ids) and `classes.json`. Files are named `{index:06}.png`.
pub fn export_synthetic(dir: &Path, count: usize, width: usize, height: usize, seed: u64) -> Result<()> {
    for sub in ["images", "labels", "instances"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| DataError::Write { path: d.clone(), detail: e.to_string() })?;
    }
    let palette = synthetic::palette();
    palette.save(&dir.join("classes.json"))?;
    (0..count).into_par_iter().try_for_each(|i| {
        let s = synthetic::generate(seed, i as u64, width, height);
        let name = format!("{i:06}.png");
        crate::pngio::write_rgb_png(&dir.join("images").join(&name), &s.image)?;
        crate::pngio::write_indexed_png(&dir.join("labels").join(&name), &s.label, &palette)?;
        crate::pngio::write_gray_png(&dir.join("instances").join(&name), &s.instance)
    })
}
