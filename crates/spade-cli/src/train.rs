//! `spade train`: train a model from an experiment YAML.
use anyhow::Result;
use spade_train::config::ExperimentConfig;
use spade_train::run::{train, RunOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Experiment YAML (sections data, model, loss, train, eval).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set train.lr=0.0001` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Continue the run in --output-dir from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many iterations in total.
    #[arg(long)]
    pub max_iters: Option<usize>,
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Train on the first CUDA GPU (build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = ExperimentConfig::load(&args.config, &args.sets)?;
    let ro = RunOptions {
        output_dir: args.output_dir,
        resume: args.resume,
        max_iters: args.max_iters,
        progress: !args.quiet,
        device: crate::synthesize::device(args.cuda)?,
        job: None,
    };
    let s = train(&cfg, &ro)?;
    let losses: Vec<String> = s.last_losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    println!(
        "trained {} iterations in {:.1} s; last losses: {}; checkpoint {}",
        s.iterations,
        s.wall_s,
        losses.join(", "),
        s.checkpoint.display()
    );
    Ok(())
}
