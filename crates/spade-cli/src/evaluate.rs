//! `spade evaluate`: segmentation metrics (mIoU, pixel accuracy) and FID into metrics.json with
//! every value and protocol setting, either of a training run (`--run RUN`: its generator makes
//! the validation images) or of images generated elsewhere (`--generated DIR --dataset ...
//! --data-root ...`: paired with the validation labels by file stem).
use anyhow::{bail, Context, Result};
use candle_core::Device;
use spade_data::{DatasetConfig, DatasetMode};
use spade_metrics::Segmenter;
use spade_train::config::ExperimentConfig;
use spade_train::evaluate::{evaluate_generated, evaluate_run, FidNet};
use spade_train::segmenter::{SegmenterSpec, SyntheticSegmenter};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["run", "generated"])))]
pub struct Args {
    /// A `spade train` run directory (its config.yaml and latest checkpoint are used).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// A folder of generated images, each named as the validation label (or photo) it was
    /// generated from (same stem), at the size of the label after the dataset's preprocessing.
    #[arg(long, requires = "dataset")]
    pub generated: Option<PathBuf>,
    /// The dataset of --generated: coco-stuff, ade20k, cityscapes, custom (folder) or synthetic.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Root of the dataset of --generated (not needed for synthetic).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// --generated: the dataset's load_size / crop_size (the dataset's defaults otherwise).
    #[arg(long)]
    pub load_size: Option<usize>,
    #[arg(long)]
    pub crop_size: Option<usize>,
    /// Where metrics.json goes (--generated: default DIR/metrics.json; --run: RUN/metrics.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth); without them FID is
    /// reported as unavailable.
    #[arg(long)]
    pub fid_weights: Option<PathBuf>,
    /// auto (the paper's network for the dataset: deeplabv2 for coco-stuff, drn for cityscapes,
    /// upernet for ade20k, synthetic for synthetic, none for custom), synthetic, deeplabv2, drn,
    /// upernet, segformer or none.
    #[arg(long, default_value = "auto")]
    pub segmenter: String,
    /// Weights of the segmenter: deeplabv2 one .pth, drn one .pth, upernet the encoder and the
    /// decoder .pth, segformer config.json and model.safetensors (default: the hub cache).
    #[arg(long, num_args = 1..=2)]
    pub segmenter_weights: Vec<PathBuf>,
    /// Input resolution of the segmenter, HxW (default: the size of the dataset's labels after
    /// preprocessing, i.e. the generated images' size).
    #[arg(long)]
    pub segmenter_resolution: Option<String>,
    /// Where the synthetic segmenter is cached.
    #[arg(long, default_value = "runs/cache")]
    pub cache_dir: PathBuf,
    /// Training iterations of the synthetic segmenter (part of its cache key).
    #[arg(long, default_value_t = 300)]
    pub segmenter_iterations: usize,
    /// --run: override eval.num_samples of the run's config.
    #[arg(long)]
    pub num_samples: Option<usize>,
}

fn parse_resolution(s: &str) -> Result<(usize, usize)> {
    let (h, w) =
        s.split_once(['x', 'X']).with_context(|| format!("--segmenter-resolution {s}: expected HxW, e.g. 256x512"))?;
    Ok((h.trim().parse()?, w.trim().parse()?))
}

/// The paper's segmenter for a dataset.
fn auto_segmenter(mode: DatasetMode) -> &'static str {
    match mode {
        DatasetMode::Coco => "deeplabv2",
        DatasetMode::Cityscapes => "drn",
        DatasetMode::Ade20k => "upernet",
        DatasetMode::Synthetic => "synthetic",
        DatasetMode::Custom => "none",
    }
}

fn weights<'a>(args: &'a Args, name: &str, n: usize, files: &str) -> Result<&'a [PathBuf]> {
    if args.segmenter_weights.len() != n {
        bail!(
            "--segmenter {name} needs --segmenter-weights with {n} file(s): {files} (`cargo xtask fetch-weights` says where to get them); got {}",
            args.segmenter_weights.len()
        );
    }
    Ok(&args.segmenter_weights)
}

/// Builds the segmenter `args.segmenter` names for a dataset whose labels are `label_size`
/// (height, width) after preprocessing.
fn open_segmenter(
    args: &Args,
    data: &DatasetConfig,
    label_size: (usize, usize),
    device: &Device,
) -> Result<Option<Box<dyn Segmenter>>> {
    let name = match args.segmenter.as_str() {
        "auto" => auto_segmenter(data.dataset_mode),
        other => other,
    };
    let res = match &args.segmenter_resolution {
        Some(s) => parse_resolution(s)?,
        None => label_size,
    };
    Ok(match name {
        "none" => None,
        "synthetic" => {
            anyhow::ensure!(
                data.dataset_mode == DatasetMode::Synthetic,
                "--segmenter synthetic scores the built-in synthetic dataset only; this is {:?} (use --segmenter none or the dataset's network)",
                data.dataset_mode
            );
            let size = data.resolve()?.preprocess.crop_size;
            let spec = SegmenterSpec {
                size,
                iterations: args.segmenter_iterations,
                batch_size: 8,
                seed: 0,
                style: None,
                uniform: 0.0,
            };
            Some(Box::new(SyntheticSegmenter::load_or_train(&args.cache_dir, spec, device, true)?))
        }
        "deeplabv2" => {
            let w = weights(args, name, 1, spade_metrics::deeplabv2::DEEPLABV2_COCOSTUFF_FILE)?;
            let cfg = spade_metrics::DeepLabV2Config::cocostuff164k();
            Some(Box::new(spade_metrics::DeepLabV2Segmenter::load(&cfg, &w[0], res, device)?))
        }
        "drn" => {
            let w = weights(args, name, 1, spade_metrics::drn::DRN_CITYSCAPES_FILE)?;
            let cfg = spade_metrics::DrnConfig::drn_d_105_cityscapes();
            Some(Box::new(spade_metrics::DrnSegmenter::load(&cfg, &w[0], res, device)?))
        }
        "upernet" => {
            let w = weights(args, name, 2, "encoder_epoch_50.pth decoder_epoch_50.pth (in this order)")?;
            let cfg = spade_metrics::UperNetConfig::ade20k_resnet101();
            Some(Box::new(spade_metrics::UperNetSegmenter::load(&cfg, &w[0], &w[1], res, device)?))
        }
        "segformer" => Some(open_segformer(args, res, device)?),
        other => bail!("--segmenter {other}: expected auto, synthetic, deeplabv2, drn, upernet, segformer or none"),
    })
}

#[cfg(feature = "segformer")]
fn open_segformer(args: &Args, res: (usize, usize), device: &Device) -> Result<Box<dyn Segmenter>> {
    use spade_metrics::segformer::{SegformerSegmenter, SEGFORMER_ADE_REPO};
    Ok(Box::new(match args.segmenter_weights.as_slice() {
        [] => SegformerSegmenter::from_hub(SEGFORMER_ADE_REPO, None, true, res, device)?,
        [config, w] => SegformerSegmenter::from_files(config, w, res, "segformer", device)?,
        _ => bail!("--segmenter segformer: --segmenter-weights CONFIG_JSON WEIGHTS, or none for the hub"),
    }))
}

#[cfg(not(feature = "segformer"))]
fn open_segformer(_args: &Args, _res: (usize, usize), _device: &Device) -> Result<Box<dyn Segmenter>> {
    bail!("--segmenter segformer: this spade was built without the `segformer` feature (cargo build -p spade-cli --features segformer)")
}

fn open_fid(path: &Option<PathBuf>, device: &Device) -> Result<Option<(spade_metrics::FidInception, String)>> {
    Ok(match path {
        Some(p) => Some((spade_metrics::load_fid_inception(p, device)?, spade_metrics::weights::sha256_file(p)?)),
        None => None,
    })
}

/// Height and width of the dataset's validation labels after preprocessing.
fn label_size(data: &DatasetConfig) -> Result<(usize, usize)> {
    let p = data.resolve()?.preprocess;
    let w = p.crop_size;
    Ok((((w as f64 / p.aspect_ratio).round_ties_even() as usize).max(1), w))
}

pub fn run(args: Args) -> Result<()> {
    let device = Device::Cpu;
    let m = if let Some(run) = &args.run {
        let mut cfg = ExperimentConfig::load(&run.join("config.yaml"), &[])?;
        if let Some(n) = args.num_samples {
            cfg.eval.num_samples = n;
        }
        let seg = open_segmenter(&args, &cfg.data, label_size(&cfg.data)?, &device)?;
        let inception = open_fid(&args.fid_weights, &device)?;
        let fid = inception.as_ref().map(|(net, sha)| FidNet { net, weights_sha256: sha.clone() });
        let m = evaluate_run(run, &cfg, seg.as_deref(), fid, &device)
            .with_context(|| format!("evaluating {}", run.display()))?;
        if let Some(out) = &args.out {
            std::fs::write(out, serde_json::to_string_pretty(&m)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        m
    } else {
        let generated = args.generated.as_ref().expect("clap requires --run or --generated");
        let mode: DatasetMode = args.dataset.as_deref().unwrap_or_default().parse()?;
        let mut data = DatasetConfig::new(mode, args.data_root.clone());
        data.phase = spade_data::Phase::Val;
        data.is_train = Some(false);
        data.load_size = args.load_size;
        data.crop_size = args.crop_size;
        let seg = open_segmenter(&args, &data, label_size(&data)?, &device)?;
        let inception = open_fid(&args.fid_weights, &device)?;
        let fid = inception.as_ref().map(|(net, sha)| FidNet { net, weights_sha256: sha.clone() });
        let out = args.out.clone().unwrap_or_else(|| generated.join("metrics.json"));
        evaluate_generated(generated, &data, seg.as_deref(), fid, &device, &out)
            .with_context(|| format!("evaluating the images in {}", generated.display()))?
    };
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}
