//! `spade`: the command line. A thin `main` dispatching to one module per subcommand.
use clap::{Parser, Subcommand};

mod dataset;
mod evaluate;
mod fid;
mod serve;
mod synthesize;
mod train;

#[derive(Parser)]
#[command(name = "spade", version, about = "Semantic image synthesis (SPADE / GauGAN) in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn label maps into images with a trained generator.
    Synthesize(synthesize::Args),
    /// Train a model from an experiment YAML.
    Train(train::Args),
    /// Score a training run: segmentation metrics (mIoU, accuracy) and FID into metrics.json.
    Evaluate(evaluate::Args),
    /// Check a dataset on disk, or export the built-in synthetic dataset.
    Dataset(dataset::Args),
    /// FID between two image folders or statistics .npz files, as pytorch-fid computes it.
    Fid(fid::Args),
    /// The painting demo: a local web page where painted label maps become images.
    Serve(serve::Args),
}

/// `SPADE_MAX_IMAGE_PIXELS`: the largest image (width x height) the readers decode.
fn apply_limits() -> anyhow::Result<()> {
    if let Ok(v) = std::env::var("SPADE_MAX_IMAGE_PIXELS") {
        let n: u64 = v.trim().parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
            anyhow::anyhow!("SPADE_MAX_IMAGE_PIXELS = {v:?} is out of range: expected a pixel count of at least 1")
        })?;
        spade_data::pngio::set_max_image_pixels(n);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    apply_limits()?;
    // The kernel paths: process-wide, so chosen here, from the environment (SPADE_STOCK_OPS,
    // SPADE_WINOGRAD, SPADE_GEMM, SPADE_PROFILE), and the allocator tuned for them.
    spade_kernels::set_options(
        spade_kernels::KernelOptions::from_vars(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?,
    );
    spade_kernels::tune_allocator();
    match cli.command {
        Command::Synthesize(args) => synthesize::run(args),
        Command::Train(args) => train::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Dataset(args) => dataset::run(args),
        Command::Fid(args) => fid::run(args),
        Command::Serve(args) => serve::run(args),
    }
}
