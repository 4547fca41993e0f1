//! Evaluation: generate a training run's validation images from their labels
//! ([`evaluate_run`]), or take images generated elsewhere paired with the validation labels by
//! file stem ([`evaluate_generated`]); score them with a segmentation network (mIoU, pixel
//! accuracy, both don't-care settings) and FID when Inception weights are given ([`Scorer`]),
//! and write `metrics.json` with every protocol setting.
use crate::config::ExperimentConfig;
use crate::layout::{
    checkpoint, eval_samples, write_json, GeneratedMetrics, Measured, Metrics, RunDir, Score, Scores, Segmentation,
    UniformMaps,
};
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

fn scores(cm: &ConfusionMatrix) -> Scores {
    let score = |d: DontCare| {
        let s = cm.report().into_iter().find(|s| s.dont_care == d).expect("a report has both don't-care settings");
        Score { miou: s.mean_iou, accuracy: s.pixel_accuracy, pixels: s.pixels }
    };
    Scores { dontcare_ignore: score(DontCare::Ignore), dontcare_count: score(DontCare::Count) }
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
    /// The segmenter's penultimate features (when it exposes them), for the Fréchet distance
    /// in the evaluator's feature space.
    eval_fake: Vec<f64>,
    eval_real: Vec<f64>,
    eval_dim: usize,
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
            eval_fake: Vec::new(),
            eval_real: Vec::new(),
            eval_dim: 0,
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
            for (dst, x) in [(&mut self.eval_fake, fake01), (&mut self.eval_real, real01)] {
                if let Some(f) = seg.penultimate_features(x) {
                    let f = f?;
                    self.eval_dim = f.dim(1)?;
                    dst.extend(f.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from));
                }
            }
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
    pub fn segmentation(&self) -> Segmentation {
        match (self.segmenter, &self.cm_fake, &self.cm_real) {
            (Some(s), Some(cf), Some(cr)) => {
                let pre = s.preprocessing().map(|p| {
                    serde_json::json!({"channel_order": p.channel_order, "value_scale": p.value_scale,
                        "mean": p.mean, "std": p.std, "output": p.output})
                });
                let gt = s.ground_truth_map().map(|m| serde_json::json!({"name": m.name, "ignore_id": m.ignore}));
                Segmentation::Scored {
                    generated: scores(cf),
                    real_images: scores(cr),
                    protocol: serde_json::json!({"segmenter": s.name(), "weights_sha256": s.weights_hash(),
                        "input_resolution": s.input_resolution(), "input_resize": "bilinear, align_corners false, no antialias",
                        "num_classes": s.num_classes(), "preprocessing": pre, "ground_truth_map": gt,
                        "dataset_dontcare_id": self.dataset_dont_care,
                        "label_resize": self.resize.as_str(), "dontcare": [DontCare::Ignore.as_str(), DontCare::Count.as_str()]}),
                }
            }
            _ => {
                Segmentation::Unavailable { unavailable: "no segmentation network was given (--segmenter none)".into() }
            }
        }
    }

    /// The `fd_evaluator` part of `metrics.json`: the Fréchet distance between the generated
    /// and the real images' penultimate features of the segmentation network (globally
    /// average-pooled). Not FID: another network, another feature space, another scale.
    pub fn fd_evaluator(&self) -> Result<Measured> {
        let n = if self.eval_dim == 0 { 0 } else { self.eval_fake.len() / self.eval_dim };
        Ok(if n >= 2 {
            let a = GaussianStats::from_features(&self.eval_fake, self.eval_dim)?;
            let b = GaussianStats::from_features(&self.eval_real, self.eval_dim)?;
            Measured::value(
                spade_metrics::frechet_distance(&a, &b)?,
                serde_json::json!({"images": n, "dim": self.eval_dim,
                    "name": "Fréchet distance in the evaluator's penultimate features",
                    "network": self.segmenter.map(|s| s.name())}),
            )
        } else {
            Measured::unavailable(
                "the segmentation network exposes no penultimate features (or fewer than 2 images were scored)",
            )
        })
    }

    /// The `fid` part of `metrics.json`; `reference_set` says what the real images are.
    pub fn fid(&self, reference_set: &str) -> Result<Measured> {
        Ok(match &self.fid {
            Some(f) if self.images >= 2 => {
                let a = GaussianStats::from_features(&self.feats_fake, spade_metrics::POOL3_DIM)?;
                let b = GaussianStats::from_features(&self.feats_real, spade_metrics::POOL3_DIM)?;
                Measured::value(
                    spade_metrics::frechet_distance(&a, &b)?,
                    serde_json::json!({"weights_sha256": f.weights_sha256, "reference_set": reference_set,
                        "images": self.images, "resize": "bilinear 299x299, align_corners false"}),
                )
            }
            Some(_) => Measured::unavailable(format!("FID needs at least 2 images; {} were scored", self.images)),
            None => {
                Measured::unavailable("no Inception weights (pt_inception-2015-12-05) were given: FID not computed")
            }
        })
    }
}

/// Evaluates the latest checkpoint of `run`; writes and returns `metrics.json`.
pub fn evaluate_run(
    run: &Path,
    cfg: &ExperimentConfig,
    segmenter: Option<&dyn Segmenter>,
    fid: Option<FidNet>,
    device: &Device,
) -> Result<Metrics> {
    let rd = RunDir::new(run);
    let ck = latest_checkpoint(run)
        .ok_or_else(|| TrainError::File { path: run.into(), message: "no checkpoint to evaluate".into() })?;
    let opt = NetOptions::from_opt_file(&ck.join(checkpoint::OPT_TXT))?;
    let (g, store) = load_network(&ck.join(checkpoint::NET_G), &opt, device, true, |vb| Generator::new(&opt, vb))?;
    let spec = SemanticsSpec::from(&opt);
    let mut data = cfg.data.clone();
    data.phase = Phase::Val;
    data.is_train = Some(false);
    let ds = spade_data::open(&data)?;
    let n = cfg.eval.num_samples.min(ds.len());
    let resolved = ds.config().clone();
    let loader = BatchLoader::new(ds, LoaderOptions::eval(cfg.eval.batch_size.max(1)))?;
    let dont_care = spec.contain_dontcare_label.then_some(opt.label_nc as u32);
    let mut scorer = Scorer::new(segmenter, fid, dont_care);
    let (mut l1_sum, mut l1_n) = (0f64, 0usize);
    let samples_dir = rd.eval_samples();
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
        let fake = g.generate(&sem, opt.z_dim, done as u64)?;
        l1_sum += (&fake - &real)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64 * sem.dim(0)? as f64;
        l1_n += sem.dim(0)?;
        if done == 0 {
            crate::run::save_grid(&samples_dir.join(eval_samples::GRID), &batch.samples, &fake)?;
        }
        let (h, w) = (batch.samples[0].label.height, batch.samples[0].label.width);
        let labels: Vec<u32> = batch.samples.iter().flat_map(|s| s.label.data.iter().copied()).collect();
        let labels = Tensor::from_vec(labels, (batch.samples.len(), h, w), device)?;
        let to01 = |x: &Tensor| -> candle_core::Result<Tensor> { ((x + 1.0)? / 2.0)?.clamp(0f32, 1f32) };
        scorer.add(&to01(&fake)?, &to01(&real)?, &labels)?;
        done += batch.samples.len();
    }
    let fid = scorer.fid(&format!("{done} validation images of the same labels"))?;
    let segmentation = scorer.segmentation();
    let fd_evaluator = scorer.fd_evaluator()?;
    let uniform = match (segmenter, resolved.dataset_mode) {
        (Some(seg), DatasetMode::Synthetic) => {
            uniform_maps(&g, &opt, &spec, &resolved, seg, cfg.eval.uniform_z, &samples_dir, device)?
        }
        _ => UniformMaps::Unavailable {
            unavailable: "the wash-away test runs on the synthetic dataset with its segmenter".into(),
        },
    };
    let diversity = diversity(&g, &opt, &spec, &data, &cfg.eval, &samples_dir, device)?;
    let e_path = ck.join(checkpoint::NET_E);
    if g.uses_z() && e_path.is_file() {
        let (e, _) = load_network(&e_path, &opt, device, true, |vb| spade_models::ConvEncoder::new(&opt, vb))?;
        style_guided(&g, &e, &spec, &data, &samples_dir, device)?;
    }
    let metrics = Metrics {
        checkpoint: ck.file_name().map(|s| s.to_string_lossy().to_string()),
        samples: done,
        parameters_g: store.num_params(),
        segmentation,
        fid,
        fd_evaluator,
        uniform_maps: uniform,
        diversity,
        l1_generated_vs_real: l1_sum / l1_n.max(1) as f64,
    };
    rd.write_metrics(&metrics)?;
    Ok(metrics)
}

/// Samples as a batch in the network's input form.
fn scene_sample(scene: spade_data::synthetic::Scene) -> spade_data::Sample {
    spade_data::Sample {
        label: scene.label,
        instance: Some(scene.instance),
        image: Some(spade_data::transform::to_normalized(&scene.image)),
        path: "synthetic/uniform".into(),
    }
}

/// Pixels of `pred` equal to `class`, as a fraction.
fn class_accuracy(pred: &Tensor, class: u32) -> Result<f64> {
    let p: Vec<u32> = pred.flatten_all()?.to_vec1()?;
    Ok(p.iter().filter(|&&v| v == class).count() as f64 / p.len().max(1) as f64)
}

/// The paper's "wash-away" test (Section 3): every class as a single-class label map (the
/// synthetic dataset's own single-class scenes, at the run's size and style), generated with
/// `z_count` samples of z (once for generators without z), segmented; the pixel accuracy is
/// the fraction of pixels the segmenter gives that class. The real single-class images are
/// scored too, as the segmenter's own reference. Writes `uniform.png` (class by class: label
/// colour, generated, real).
#[allow(clippy::too_many_arguments)]
fn uniform_maps(
    g: &Generator,
    opt: &NetOptions,
    spec: &SemanticsSpec,
    data: &spade_data::ResolvedConfig,
    seg: &dyn Segmenter,
    z_count: usize,
    dir: &Path,
    device: &Device,
) -> Result<UniformMaps> {
    use spade_data::synthetic::{generate_uniform, NUM_CLASSES};
    let w = data.preprocess.crop_size;
    let h = ((w as f64 / data.preprocess.aspect_ratio).round_ties_even() as usize).max(1);
    let runs = if g.uses_z() { z_count.max(1) } else { 1 };
    let (mut per_class, mut real_per_class) = (Vec::new(), Vec::new());
    let mut tiles = Vec::new();
    let to01 = |x: &Tensor| -> candle_core::Result<Tensor> { ((x + 1.0)? / 2.0)?.clamp(0f32, 1f32) };
    for c in 0..NUM_CLASSES {
        let scene =
            generate_uniform(c as u8, data.synthetic_scene.style, data.synthetic_seed, (1 << 41) + c as u64, w, h);
        let sample = scene_sample(scene);
        let (sem, real) = crate::run::batch_tensors(std::slice::from_ref(&sample), spec, device)?;
        let sem = sem.repeat((runs, 1, 1, 1))?;
        let fake = g.generate(&sem, opt.z_dim, 7000 + c as u64)?;
        let acc = class_accuracy(&seg.segment(&to01(&fake)?)?, c as u32)?;
        let real_acc = class_accuracy(&seg.segment(&to01(&real)?)?, c as u32)?;
        per_class.push(acc);
        real_per_class.push(real_acc);
        tiles.push((sample, fake.narrow(0, 0, 1)?));
    }
    let samples: Vec<spade_data::Sample> = tiles.iter().map(|(s, _)| s.clone()).collect();
    let fakes = Tensor::cat(&tiles.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(), 0)?;
    crate::run::save_grid_all(&dir.join(eval_samples::UNIFORM), &samples, &fakes)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(UniformMaps::Scored {
        pixel_accuracy: mean(&per_class),
        real_images_pixel_accuracy: mean(&real_per_class),
        per_class,
        real_per_class,
        classes: NUM_CLASSES,
        z_per_map: runs,
        rule: "fraction of pixels the segmenter assigns to the map's class, mean over the classes".into(),
    })
}

/// Diversity of the outputs for the same label: the first `eval.diversity_labels` validation
/// labels, each generated with `eval.diversity_z` samples of z; the mean over labels of the
/// mean pairwise L1 distance between the outputs (pixels in [0, 1]). Zero by construction for
/// generators without z. Writes `multimodal.png` (per label: the label, then its outputs).
fn diversity(
    g: &Generator,
    opt: &NetOptions,
    spec: &SemanticsSpec,
    data: &DatasetConfig,
    eval: &crate::config::EvalConfig,
    dir: &Path,
    device: &Device,
) -> Result<Measured> {
    let name = "mean pairwise L1 distance between outputs for the same label (pixels in [0, 1])";
    if !g.uses_z() {
        return Ok(Measured::value(
            0.0,
            serde_json::json!({"name": name, "note": "the generator takes no z: one output per label"}),
        ));
    }
    let ds = spade_data::open(data)?;
    let k = eval.diversity_z.max(2);
    let n = eval.diversity_labels.min(ds.len()).max(1);
    let (mut sum, mut rows) = (0f64, Vec::new());
    for i in 0..n {
        let sample = ds.load(i, 0)?;
        let (sem, _) = crate::run::batch_tensors(std::slice::from_ref(&sample), spec, device)?;
        let fake = g.generate(&sem.repeat((k, 1, 1, 1))?, opt.z_dim, 9000 + i as u64)?;
        let f01 = ((fake.clone() + 1.0)? / 2.0)?.clamp(0f32, 1f32)?;
        let (mut d, mut pairs) = (0f64, 0usize);
        for a in 0..k {
            for b in a + 1..k {
                d += (f01.get(a)? - f01.get(b)?)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
                pairs += 1;
            }
        }
        sum += d / pairs as f64;
        if i < 4 {
            rows.push((sample, fake));
        }
    }
    crate::run::save_multimodal(&dir.join(eval_samples::MULTIMODAL), &rows)?;
    Ok(Measured::value(sum / n as f64, serde_json::json!({"name": name, "labels": n, "z_per_label": k})))
}

/// Style-guided synthesis (the paper's Figure 1, right): the first 4 validation labels, each
/// generated with the style of 4 real validation images (z = the mean of the encoder's
/// posterior for that image). Writes `style_guided.png`: the first row shows the style images
/// (after a white tile), each later row a label and its 4 outputs.
fn style_guided(
    g: &Generator,
    e: &spade_models::ConvEncoder,
    spec: &SemanticsSpec,
    data: &DatasetConfig,
    dir: &Path,
    device: &Device,
) -> Result<()> {
    let ds = spade_data::open(data)?;
    let n = 4.min(ds.len());
    if n == 0 {
        return Ok(());
    }
    // Style images from the end of the split, so that they are not the labels' own photos.
    let styles: Vec<spade_data::Sample> =
        (0..n).map(|i| ds.load(ds.len() - 1 - i * 7 % ds.len(), 0)).collect::<std::result::Result<_, _>>()?;
    let (_, style_imgs) = crate::run::batch_tensors(&styles, spec, device)?;
    let (mu, _logvar) = e.forward_t(&style_imgs, false)?;
    let mut rows = Vec::new();
    for i in 0..n {
        let sample = ds.load(i, 0)?;
        let (sem, _) = crate::run::batch_tensors(std::slice::from_ref(&sample), spec, device)?;
        let fake = g.forward_t(&sem.repeat((n, 1, 1, 1))?, Some(&mu), false)?;
        rows.push((sample, fake));
    }
    // The header row: a blank label tile, then the style images.
    let mut blank = styles[0].clone();
    blank.label.data.iter_mut().for_each(|v| *v = u32::MAX);
    rows.insert(0, (blank, style_imgs));
    crate::run::save_multimodal(&dir.join(eval_samples::STYLE_GUIDED), &rows)?;
    Ok(())
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
) -> Result<GeneratedMetrics> {
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
    let metrics = GeneratedMetrics {
        generated: generated.display().to_string(),
        images: scorer.images(),
        dataset: serde_json::json!({"mode": resolved.dataset_mode.cli_name(), "root": resolved.dataroot.display().to_string(), "split": "val",
            "label_nc": resolved.label_nc, "contain_dontcare_label": resolved.contain_dontcare_label,
            "preprocess": {"mode": format!("{:?}", p.mode), "load_size": p.load_size, "crop_size": p.crop_size, "aspect_ratio": p.aspect_ratio},
            "pairing": "generated file stem = label (or photo) file stem"}),
        segmentation: scorer.segmentation(),
        fid: scorer.fid(&format!("the {} paired validation photos after the same preprocessing", scorer.images()))?,
    };
    write_json(out, &metrics)?;
    Ok(metrics)
}
