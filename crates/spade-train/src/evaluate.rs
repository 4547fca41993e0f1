//! Evaluation of a training run: generate the validation set's images from its labels, score
//! them with a segmentation network (mIoU, pixel accuracy, both don't-care settings) and FID
//! when Inception weights are given, and write `metrics.json` with every protocol setting.
use crate::config::ExperimentConfig;
use crate::run::{latest_checkpoint, Result, TrainError};
use candle_core::{Device, Tensor};
use spade_data::{BatchLoader, LoaderOptions, Phase};
use spade_metrics::{ConfusionMatrix, DontCare, FidInception, GaussianStats, LabelResize, Segmenter};
use spade_models::checkpoint::{load_network, Generator};
use spade_models::{NetOptions, SemanticsSpec};
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
    let classes = segmenter.map(|s| s.num_classes()).unwrap_or(opt.label_nc);
    let dont_care = spec.contain_dontcare_label.then_some(opt.label_nc as u32);
    let mut cm_fake = ConfusionMatrix::new(classes, dont_care);
    let mut cm_real = ConfusionMatrix::new(classes, dont_care);
    let (mut l1_sum, mut l1_n) = (0f64, 0usize);
    let (mut feats_fake, mut feats_real) = (Vec::new(), Vec::new());
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
        if let Some(seg) = segmenter {
            spade_metrics::segmentation::accumulate(
                &mut cm_fake,
                seg,
                &to01(&fake)?,
                &labels,
                LabelResize::PredictionToLabel,
            )?;
            spade_metrics::segmentation::accumulate(
                &mut cm_real,
                seg,
                &to01(&real)?,
                &labels,
                LabelResize::PredictionToLabel,
            )?;
        }
        if let Some(f) = &fid {
            let push = |dst: &mut Vec<f64>, x: &Tensor| -> Result<()> {
                let p: Vec<f32> = f.net.pool3(&to01(x)?)?.flatten_all()?.to_vec1()?;
                dst.extend(p.into_iter().map(f64::from));
                Ok(())
            };
            push(&mut feats_fake, &fake)?;
            push(&mut feats_real, &real)?;
        }
        done += batch.samples.len();
    }
    let fid_json = match &fid {
        Some(f) => {
            let a = GaussianStats::from_features(&feats_fake, spade_metrics::POOL3_DIM)?;
            let b = GaussianStats::from_features(&feats_real, spade_metrics::POOL3_DIM)?;
            serde_json::json!({"value": spade_metrics::frechet_distance(&a, &b)?, "weights_sha256": f.weights_sha256,
                "reference_set": format!("{done} validation images of the same labels"), "resize": "bilinear 299x299, align_corners false"})
        }
        None => {
            serde_json::json!({"value": null, "unavailable": "no Inception weights (pt_inception-2015-12-05) were given: FID not computed"})
        }
    };
    let seg_json = match segmenter {
        Some(s) => serde_json::json!({
            "generated": scores_json(&cm_fake),
            "real_images": scores_json(&cm_real),
            "protocol": {"segmenter": s.name(), "weights_sha256": s.weights_hash(), "input_resolution": s.input_resolution(),
                "label_resize": LabelResize::PredictionToLabel.as_str(), "dontcare": [DontCare::Ignore.as_str(), DontCare::Count.as_str()]},
        }),
        None => serde_json::json!({"unavailable": "no segmentation network for this dataset"}),
    };
    let metrics = serde_json::json!({
        "checkpoint": ck.file_name().map(|s| s.to_string_lossy().to_string()),
        "samples": done,
        "parameters_G": store.num_params(),
        "segmentation": seg_json,
        "fid": fid_json,
        "l1_generated_vs_real": l1_sum / l1_n.max(1) as f64,
    });
    let path = run.join("metrics.json");
    spade_io::atomic::write_atomic(&path, |f| {
        use std::io::Write;
        f.write_all(serde_json::to_string_pretty(&metrics).unwrap().as_bytes())
    })?;
    Ok(metrics)
}
