//! Evaluation: generate a training run's validation images from their labels
//! ([`evaluate_run`]), or take images generated elsewhere paired with the validation labels by
//! file stem ([`evaluate_generated`]); score them with a segmentation network (mIoU, pixel
//! accuracy, both don't-care settings) and FID when Inception weights are given ([`Scorer`]),
//! and write `metrics.json` with every protocol setting.
use crate::config::ExperimentConfig;
use crate::run::{latest_checkpoint, Result, TrainError};
use candle_core::{Device, Tensor};
use spade_data::{BatchLoader, Dataset, DatasetConfig, DatasetMode, LoaderOptions, Phase};
use spade_metrics::{ConfusionMatrix, DontCare, FidInception, GaussianStats, LabelResize, Segmenter};
use spade_models::checkpoint::{load_network, Generator};
use spade_models::{NetOptions, SemanticsSpec};
use std::collections::HashMap;
use std::path::Path;

/// FID network and the hash of its weights file.
pub struct FidNet<'a> {
    pub net: &'a FidInception,
    pub weights_sha256: String,
}

fn scores_json(cm: &ConfusionMatrix) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for s in cm.report() {
        m.insert(
            format!("dontcare_{}", s.dont_care.as_str()),
            serde_json::json!({"mIoU": s.mean_iou, "accuracy": s.pixel_accuracy, "pixels": s.pixels}),
        );
    }
    serde_json::Value::Object(m)
}

/// Accumulates the scores of generated images against their labels (and of the real images,
/// when given, as the segmenter's own reference): the confusion matrices and the Inception
/// features. The one place that turns them into the `segmentation` and `fid` parts of
/// `metrics.json`, for `evaluate_run` and `evaluate_generated` alike.
pub struct Scorer<'a> {
    segmenter: Option<&'a dyn Segmenter>,
    fid: Option<FidNet<'a>>,
    resize: LabelResize,
    dataset_dont_care: Option<u32>,
    cm_fake: Option<ConfusionMatrix>,
    cm_real: Option<ConfusionMatrix>,
    feats_fake: Vec<f64>,
    feats_real: Vec<f64>,
    images: usize,
}

impl<'a> Scorer<'a> {
    /// `dataset_dont_care`: the label id of don't-care pixels after the dataset's mapping.
    pub fn new(segmenter: Option<&'a dyn Segmenter>, fid: Option<FidNet<'a>>, dataset_dont_care: Option<u32>) -> Self {
        Self {
            segmenter,
            fid,
            resize: LabelResize::PredictionToLabel,
            dataset_dont_care,
            cm_fake: segmenter.map(|s| spade_metrics::confusion_matrix_for(s, dataset_dont_care)),
            cm_real: segmenter.map(|s| spade_metrics::confusion_matrix_for(s, dataset_dont_care)),
            feats_fake: Vec::new(),
            feats_real: Vec::new(),
            images: 0,
        }
    }

    /// Images scored so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Adds a batch: generated and real images `(B, 3, H, W)` in `[0, 1]`, label ids `(B, H, W)`.
    pub fn add(&mut self, fake01: &Tensor, real01: &Tensor, labels: &Tensor) -> Result<()> {
        if let (Some(seg), Some(cf), Some(cr)) = (self.segmenter, self.cm_fake.as_mut(), self.cm_real.as_mut()) {
            spade_metrics::segmentation::accumulate(cf, seg, fake01, labels, self.resize)?;
            spade_metrics::segmentation::accumulate(cr, seg, real01, labels, self.resize)?;
        }
        if let Some(f) = &self.fid {
            for (dst, x) in [(&mut self.feats_fake, fake01), (&mut self.feats_real, real01)] {
                let p: Vec<f32> = f.net.pool3(x)?.flatten_all()?.to_vec1()?;
                dst.extend(p.into_iter().map(f64::from));
            }
        }
        self.images += fake01.dim(0)?;
        Ok(())
    }

    /// The `segmentation` part of `metrics.json`: scores under both don't-care settings for the
    /// generated and the real images, and every protocol setting.
    pub fn segmentation_json(&self) -> serde_json::Value {
        match (self.segmenter, &self.cm_fake, &self.cm_real) {
            (Some(s), Some(cf), Some(cr)) => {
                let pre = s.preprocessing().map(|p| {
                    serde_json::json!({"channel_order": p.channel_order, "value_scale": p.value_scale,
                        "mean": p.mean, "std": p.std, "output": p.output})
                });
                let gt = s.ground_truth_map().map(|m| serde_json::json!({"name": m.name, "ignore_id": m.ignore}));
                serde_json::json!({
                    "generated": scores_json(cf),
                    "real_images": scores_json(cr),
                    "protocol": {"segmenter": s.name(), "weights_sha256": s.weights_hash(),
                        "input_resolution": s.input_resolution(), "input_resize": "bilinear, align_corners false, no antialias",
                        "num_classes": s.num_classes(), "preprocessing": pre, "ground_truth_map": gt,
                        "dataset_dontcare_id": self.dataset_dont_care,
                        "label_resize": self.resize.as_str(), "dontcare": [DontCare::Ignore.as_str(), DontCare::Count.as_str()]},
                })
            }
            _ => serde_json::json!({"unavailable": "no segmentation network was given (--segmenter none)"}),
        }
    }

    /// The `fid` part of `metrics.json`; `reference_set` says what the real images are.
    pub fn fid_json(&self, reference_set: &str) -> Result<serde_json::Value> {
        Ok(match &self.fid {
            Some(f) if self.images >= 2 => {
                let a = GaussianStats::from_features(&self.feats_fake, spade_metrics::POOL3_DIM)?;
                let b = GaussianStats::from_features(&self.feats_real, spade_metrics::POOL3_DIM)?;
                serde_json::json!({"value": spade_metrics::frechet_distance(&a, &b)?, "weights_sha256": f.weights_sha256,
                    "reference_set": reference_set, "images": self.images, "resize": "bilinear 299x299, align_corners false"})
            }
            Some(_) => {
                serde_json::json!({"value": null, "unavailable": format!("FID needs at least 2 images; {} were scored", self.images)})
            }
            None => {
                serde_json::json!({"value": null, "unavailable": "no Inception weights (pt_inception-2015-12-05) were given: FID not computed"})
            }
        })
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::File { path: dir.into(), message: e.to_string() })?;
    }
    spade_io::atomic::write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(serde_json::to_string_pretty(v).unwrap().as_bytes())
    })?;
    Ok(())
}

/// Evaluates the latest checkpoint of `run`; writes and returns `metrics.json`.
pub fn evaluate_run(
    run: &Path,
    cfg: &ExperimentConfig,
    segmenter: Option<&dyn Segmenter>,
    fid: Option<FidNet>,
    device: &Device,
) -> Result<serde_json::Value> {
    let ck = latest_checkpoint(run)
        .ok_or_else(|| TrainError::File { path: run.into(), message: "no checkpoint to evaluate".into() })?;
    let opt = NetOptions::from_opt_file(&ck.join("opt.txt"))?;
    let (g, store) =
        load_network(&ck.join("latest_net_G.safetensors"), &opt, device, true, |vb| Generator::new(&opt, vb))?;
    let spec = SemanticsSpec::from(&opt);
    let mut data = cfg.data.clone();
    data.phase = Phase::Val;
    data.is_train = Some(false);
    let ds = spade_data::open(&data)?;
    let n = cfg.eval.num_samples.min(ds.len());
    let loader = BatchLoader::new(ds, LoaderOptions::eval(cfg.eval.batch_size.max(1)))?;
    let dont_care = spec.contain_dontcare_label.then_some(opt.label_nc as u32);
    let mut scorer = Scorer::new(segmenter, fid, dont_care);
    let (mut l1_sum, mut l1_n) = (0f64, 0usize);
    let samples_dir = run.join("eval_samples");
    std::fs::create_dir_all(&samples_dir)
        .map_err(|e| TrainError::File { path: samples_dir.clone(), message: e.to_string() })?;
    let mut done = 0;
    for batch in loader {
        if done >= n {
            break;
        }
        let mut batch = batch?;
        batch.samples.truncate(n - done);
        let (sem, real) = crate::run::batch_tensors(&batch.samples, &spec, device)?;
        let z = if g.uses_z() {
            use rand::SeedableRng;
            use rand_distr::Distribution;
            let mut rng = rand::rngs::StdRng::seed_from_u64(done as u64);
            let v: Vec<f32> =
                (0..sem.dim(0)? * opt.z_dim).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
            Some(Tensor::from_vec(v, (sem.dim(0)?, opt.z_dim), device)?)
        } else {
            None
        };
        let fake = g.forward_t(&sem, z.as_ref(), false)?;
        l1_sum += (&fake - &real)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64 * sem.dim(0)? as f64;
        l1_n += sem.dim(0)?;
        if done == 0 {
            crate::run::save_grid(&samples_dir.join("grid.png"), &batch.samples, &fake)?;
        }
        let (h, w) = (batch.samples[0].label.height, batch.samples[0].label.width);
        let labels: Vec<u32> = batch.samples.iter().flat_map(|s| s.label.data.iter().copied()).collect();
        let labels = Tensor::from_vec(labels, (batch.samples.len(), h, w), device)?;
        let to01 = |x: &Tensor| -> candle_core::Result<Tensor> { ((x + 1.0)? / 2.0)?.clamp(0f32, 1f32) };
        scorer.add(&to01(&fake)?, &to01(&real)?, &labels)?;
        done += batch.samples.len();
    }
    let fid_json = scorer.fid_json(&format!("{done} validation images of the same labels"))?;
    let seg_json = scorer.segmentation_json();
    let metrics = serde_json::json!({
        "checkpoint": ck.file_name().map(|s| s.to_string_lossy().to_string()),
        "samples": done,
        "parameters_G": store.num_params(),
        "segmentation": seg_json,
        "fid": fid_json,
        "l1_generated_vs_real": l1_sum / l1_n.max(1) as f64,
    });
    write_json(&run.join("metrics.json"), &metrics)?;
    Ok(metrics)
}

/// The validation samples of a dataset, by file stem: the label file's stem and, for file
/// datasets, the photo's stem (Cityscapes names them differently); synthetic samples are
/// `{index:06}`.
fn samples_by_stem(ds: &dyn Dataset) -> Result<HashMap<String, usize>> {
    let cfg = ds.config();
    let mut m = HashMap::new();
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().to_string());
    if cfg.dataset_mode == DatasetMode::Synthetic {
        for i in 0..ds.len() {
            m.insert(format!("{i:06}"), i);
        }
    } else {
        let listing = spade_data::list_pairs(cfg)?;
        for (i, p) in listing.pairs.iter().enumerate().take(ds.len()) {
            for s in [stem(&p.label), stem(&p.image)].into_iter().flatten() {
                m.entry(s).or_insert(i);
            }
        }
    }
    Ok(m)
}

/// Scores images generated elsewhere: every image in `generated` (pytorch-fid's extensions) is
/// paired by file stem with a validation sample of `data` (its label after the dataset's
/// evaluation preprocessing, and its photo as the real image). An image without a label, or
/// whose size differs from its label's, is an error naming the file. Writes `out`
/// (`metrics.json`) and returns it.
pub fn evaluate_generated(
    generated: &Path,
    data: &DatasetConfig,
    segmenter: Option<&dyn Segmenter>,
    fid: Option<FidNet>,
    device: &Device,
    out: &Path,
) -> Result<serde_json::Value> {
    let mut data = data.clone();
    data.phase = Phase::Val;
    data.is_train = Some(false);
    let ds = spade_data::open(&data)?;
    let resolved = ds.config().clone();
    let files = spade_metrics::list_images(generated)?;
    let by_stem = samples_by_stem(ds.as_ref())?;
    let mut pairs = Vec::with_capacity(files.len());
    for f in &files {
        let stem = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        match by_stem.get(&stem) {
            Some(&i) => pairs.push((f.clone(), i)),
            None => {
                return Err(TrainError::File {
                    path: f.clone(),
                    message: format!(
                        "no {} validation label with the stem '{stem}' (generated images are paired with labels by file name; {} labels in {})",
                        resolved.dataset_mode,
                        ds.len(),
                        resolved.dataroot.display()
                    ),
                })
            }
        }
    }
    let dont_care = resolved.contain_dontcare_label.then_some(resolved.label_nc as u32);
    let mut scorer = Scorer::new(segmenter, fid, dont_care);
    for (file, index) in &pairs {
        let sample = ds.load(*index, 0)?;
        let fake = spade_metrics::load_image(file, device)?;
        let (_, _, h, w) = fake.dims4()?;
        let (lh, lw) = (sample.label.height, sample.label.width);
        if (h, w) != (lh, lw) {
            return Err(TrainError::File {
                path: file.clone(),
                message: format!(
                    "generated image is {w}x{h} but its label {} is {lw}x{lh} after the dataset's evaluation preprocessing (load_size/crop_size)",
                    sample.path.display()
                ),
            });
        }
        let labels = Tensor::from_vec(sample.label.data.clone(), (1, lh, lw), device)?;
        let img = sample.image.as_ref().expect("validation samples have photos");
        let real = Tensor::from_vec(img.data.clone(), (1, 3, img.height, img.width), device)?;
        let real = ((real + 1.0)? / 2.0)?.clamp(0f32, 1f32)?;
        scorer.add(&fake, &real, &labels)?;
    }
    let p = &resolved.preprocess;
    let metrics = serde_json::json!({
        "generated": generated.display().to_string(),
        "images": scorer.images(),
        "dataset": {"mode": resolved.dataset_mode.cli_name(), "root": resolved.dataroot.display().to_string(), "split": "val",
            "label_nc": resolved.label_nc, "contain_dontcare_label": resolved.contain_dontcare_label,
            "preprocess": {"mode": format!("{:?}", p.mode), "load_size": p.load_size, "crop_size": p.crop_size, "aspect_ratio": p.aspect_ratio},
            "pairing": "generated file stem = label (or photo) file stem"},
        "segmentation": scorer.segmentation_json(),
        "fid": scorer.fid_json(&format!("the {} paired validation photos after the same preprocessing", scorer.images()))?,
    });
    write_json(out, &metrics)?;
    Ok(metrics)
}
