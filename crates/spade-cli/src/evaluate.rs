//! `spade evaluate`: segmentation metrics (mIoU, pixel accuracy) and FID into metrics.json with
//! every value and protocol setting, either of a training run (`--run RUN`: its generator makes
//! the validation images) or of images generated elsewhere (`--generated DIR --dataset ...
//! --data-root ...`: paired with the validation labels by file stem). The protocol (which
//! segmenter for which dataset, its weights, FID) is `spade_train::protocol`'s.
use anyhow::{Context, Result};
use spade_data::{DatasetConfig, DatasetMode};
use spade_train::config::ExperimentConfig;
use spade_train::evaluate::{evaluate_generated, evaluate_run, FidNet};
use spade_train::protocol::{eval_label_size, resolve_evaluation, EvalFlags, FidRequirement, SyntheticSource};
use spade_train::segmenter::SegmenterSpec;
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
    /// The dataset of --generated: coco-stuff, ade20k, ade20k-outdoor, cityscapes, folder or
    /// synthetic.
    #[arg(long)]
    pub dataset: Option<DatasetMode>,
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
    /// Segmenter and FID weights (from files or the hub cache).
    #[command(flatten)]
    pub eval: EvalFlags,
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
    /// Run the segmenter, Inception and (with --run) the generator on CUDA device 0 (build with
    /// `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
}

fn parse_resolution(s: &str) -> Result<(usize, usize)> {
    let (h, w) =
        s.split_once(['x', 'X']).with_context(|| format!("--segmenter-resolution {s}: expected HxW, e.g. 256x512"))?;
    Ok((h.trim().parse()?, w.trim().parse()?))
}

/// Resolves the evaluation's files (all missing ones listed at once), then opens the segmenter
/// for images of the dataset's label size (or --segmenter-resolution) and the Inception.
struct Opened {
    setup: spade_train::protocol::EvalSetup,
    segmenter: Option<Box<dyn spade_metrics::Segmenter>>,
    fid: Option<(spade_metrics::FidInception, String)>,
}

fn open(args: &Args, data: &DatasetConfig, device: &candle_core::Device) -> Result<Opened> {
    let setup = resolve_evaluation(data.dataset_mode, &args.eval, FidRequirement::IfGiven)?;
    let res = match &args.segmenter_resolution {
        Some(s) => parse_resolution(s)?,
        None => eval_label_size(data)?,
    };
    let synthetic = SyntheticSource {
        cache_dir: args.cache_dir.clone(),
        spec: SegmenterSpec {
            size: data.resolve()?.preprocess.crop_size,
            iterations: args.segmenter_iterations,
            batch_size: 8,
            seed: 0,
            // The split the run's own data is drawn from (`data.synthetic_style`, `_uniform`).
            style: data.synthetic_style.clone().filter(|s| s != "all"),
            uniform: data.synthetic_uniform.unwrap_or(0.0),
        },
        progress: true,
    };
    let segmenter = setup.open_segmenter(res, Some(&synthetic), device)?;
    let fid = setup.open_fid(device)?;
    if let Some(why) = &setup.fid_off {
        eprintln!("{why}");
    }
    Ok(Opened { setup, segmenter, fid })
}

pub fn run(args: Args) -> Result<()> {
    let device = crate::synthesize::device(args.cuda)?;
    let m = if let Some(run) = &args.run {
        let mut cfg = ExperimentConfig::load(&spade_train::layout::RunDir::new(run).config(), &[])?;
        if let Some(n) = args.num_samples {
            cfg.eval.num_samples = n;
        }
        let o = open(&args, &cfg.data, &device)?;
        let fid = o.fid.as_ref().map(|(net, sha)| FidNet { net, weights_sha256: sha.clone() });
        let m = evaluate_run(run, &cfg, o.segmenter.as_deref(), fid, &device)
            .with_context(|| format!("evaluating {}", run.display()))?;
        o.setup.write(run)?;
        if let Some(out) = &args.out {
            std::fs::write(out, serde_json::to_string_pretty(&m)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        serde_json::to_string_pretty(&m)?
    } else {
        let generated = args.generated.as_ref().expect("clap requires --run or --generated");
        let mode = args.dataset.expect("clap requires --dataset with --generated");
        let mut data = DatasetConfig::new(mode, args.data_root.clone());
        data.phase = spade_data::Phase::Val;
        data.is_train = Some(false);
        data.load_size = args.load_size;
        data.crop_size = args.crop_size;
        let o = open(&args, &data, &device)?;
        let fid = o.fid.as_ref().map(|(net, sha)| FidNet { net, weights_sha256: sha.clone() });
        let out = args.out.clone().unwrap_or_else(|| generated.join("metrics.json"));
        let m = evaluate_generated(generated, &data, o.segmenter.as_deref(), fid, &device, &out)
            .with_context(|| format!("evaluating the images in {}", generated.display()))?;
        if let Some(dir) = out.parent() {
            o.setup.write(if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir })?;
        }
        serde_json::to_string_pretty(&m)?
    };
    println!("{m}");
    Ok(())
}
