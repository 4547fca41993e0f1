//! The evaluation setup of `cargo xtask reproduce`, made before any row trains: the device
//! (`--cuda`: training, generation, the segmenter and Inception all on CUDA device 0), and the
//! dataset's protocol (`spade_train::protocol`) with every weight file resolved and its
//! network opened. A missing file stops the job here, listing all of them and where to put
//! them; nothing has been trained yet.
use anyhow::{Context, Result};
use candle_core::Device;
use spade_data::DatasetMode;
use spade_metrics::{FidInception, Segmenter};
use spade_train::config::ExperimentConfig;
use spade_train::evaluate::FidNet;
use spade_train::protocol::{
    eval_label_size, resolve_evaluation, EvalFlags, EvalSetup, FidRequirement, SyntheticSource,
};
use spade_train::segmenter::SegmenterSpec;
use std::path::Path;

/// The device and evaluation flags of `reproduce` (flattened into its arguments).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EvalArgs {
    /// Train, generate and evaluate on CUDA device 0 (build xtask with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
    /// Segmenter and FID weights, from files or the hub cache. On a real dataset both are
    /// required (or `--segmenter none` / `--no-fid` said); a missing file stops the job before
    /// training.
    #[command(flatten)]
    pub weights: EvalFlags,
}

/// What every row's evaluation uses.
pub struct Evaluation {
    pub device: Device,
    pub setup: EvalSetup,
    segmenter: Option<Box<dyn Segmenter>>,
    fid: Option<(FidInception, String)>,
}

impl Evaluation {
    pub fn segmenter(&self) -> Option<&dyn Segmenter> {
        self.segmenter.as_deref()
    }

    pub fn fid(&self) -> Option<FidNet<'_>> {
        self.fid.as_ref().map(|(net, sha)| FidNet { net, weights_sha256: sha.clone() })
    }
}

/// The device of `--cuda`.
pub fn device(cuda: bool) -> Result<Device> {
    if cuda {
        Device::new_cuda(0).context("--cuda: opening CUDA device 0 (build xtask with --features cuda)")
    } else {
        Ok(Device::Cpu)
    }
}

/// Resolves and opens everything the evaluation of runs like `cfg` needs, before training:
/// the segmenter for images of `cfg`'s evaluation size (the synthetic one from `cache_dir`,
/// trained there with `synthetic` when absent), and Inception (required on real datasets).
pub fn prepare(
    args: &EvalArgs,
    cfg: &ExperimentConfig,
    synthetic: Option<SegmenterSpec>,
    cache_dir: &Path,
) -> Result<Evaluation> {
    let device = device(args.cuda)?;
    let mode = cfg.data.dataset_mode;
    let requirement = if mode == DatasetMode::Synthetic { FidRequirement::IfGiven } else { FidRequirement::Required };
    let setup = resolve_evaluation(mode, &args.weights, requirement)?;
    let source = synthetic.map(|spec| SyntheticSource { cache_dir: cache_dir.to_path_buf(), spec, progress: true });
    if setup.segmenter == spade_train::protocol::SegmenterKind::Synthetic && source.is_none() {
        anyhow::bail!("the profile has no segmenter settings for the synthetic dataset");
    }
    eprintln!(
        "evaluation: {} on {} (images {}x{}), FID {}",
        setup.segmenter,
        mode,
        eval_label_size(&cfg.data)?.0,
        eval_label_size(&cfg.data)?.1,
        match (&setup.fid_weights, &setup.fid_off) {
            (Some(f), _) => format!("with {}", f.path.display()),
            (None, Some(why)) => why.clone(),
            (None, None) => "off".into(),
        }
    );
    let segmenter = setup.open_segmenter(eval_label_size(&cfg.data)?, source.as_ref(), &device)?;
    let fid = setup.open_fid(&device)?;
    Ok(Evaluation { device, setup, segmenter, fid })
}
