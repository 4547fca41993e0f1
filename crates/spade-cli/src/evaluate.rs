//! `spade evaluate --run RUN`: generate the validation images of a training run from their
//! labels and score them; writes RUN/metrics.json with every value and protocol setting.
use anyhow::{Context, Result};
use spade_data::DatasetMode;
use spade_train::config::ExperimentConfig;
use spade_train::evaluate::{evaluate_run, FidNet};
use spade_train::segmenter::{SegmenterSpec, SyntheticSegmenter};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `spade train` run directory (its config.yaml and latest checkpoint are used).
    #[arg(long)]
    pub run: PathBuf,
    /// pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth); without them FID is
    /// reported as unavailable.
    #[arg(long)]
    pub fid_weights: Option<PathBuf>,
    /// `synthetic` (the project's cached segmenter, for the built-in dataset) or `none`.
    #[arg(long, default_value = "synthetic")]
    pub segmenter: String,
    /// Where the synthetic segmenter is cached.
    #[arg(long, default_value = "runs/cache")]
    pub cache_dir: PathBuf,
    /// Training iterations of the synthetic segmenter (part of its cache key).
    #[arg(long, default_value_t = 300)]
    pub segmenter_iterations: usize,
    /// Override eval.num_samples of the run's config.
    #[arg(long)]
    pub num_samples: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let cfg_path = args.run.join("config.yaml");
    let mut cfg = ExperimentConfig::load(&cfg_path, &[])?;
    if let Some(n) = args.num_samples {
        cfg.eval.num_samples = n;
    }
    let device = candle_core::Device::Cpu;
    let seg = match args.segmenter.as_str() {
        "none" => None,
        "synthetic" => {
            anyhow::ensure!(
                cfg.data.dataset_mode == DatasetMode::Synthetic,
                "--segmenter synthetic scores the built-in synthetic dataset only; this run trained on {:?} (use --segmenter none)",
                cfg.data.dataset_mode
            );
            let size = cfg.data.resolve()?.preprocess.crop_size;
            let spec = SegmenterSpec { size, iterations: args.segmenter_iterations, batch_size: 8, seed: 0 };
            Some(SyntheticSegmenter::load_or_train(&args.cache_dir, spec, &device, true)?)
        }
        other => anyhow::bail!("--segmenter {other}: expected synthetic or none"),
    };
    let inception = match &args.fid_weights {
        Some(p) => Some((spade_metrics::load_fid_inception(p, &device)?, spade_metrics::weights::sha256_file(p)?)),
        None => None,
    };
    let fid = inception.as_ref().map(|(net, sha)| FidNet { net, weights_sha256: sha.clone() });
    let m = evaluate_run(&args.run, &cfg, seg.as_ref().map(|s| s as &dyn spade_metrics::Segmenter), fid, &device)
        .with_context(|| format!("evaluating {}", args.run.display()))?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}
