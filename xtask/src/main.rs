//! `cargo xtask`: project automation. A thin `main` dispatching to one module per subcommand.
use clap::{Parser, Subcommand};

mod bench;
mod eval_setup;
mod fetch_weights;
mod plots;
mod report;
mod reproduce;
mod stats;
mod test_weights;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train and evaluate every row of a paper table, then build its report.
    Reproduce(reproduce::Args),
    /// Bring VGG19 / SegFormer (/ Inception) weights into the hub cache, or say how to.
    FetchWeights(fetch_weights::Args),
    /// Time the configurations of ../shared/bench (training iterations, a SPADE ResBlk,
    /// paper-size inference, a served request); see `bench.rs`.
    Bench(bench::Args),
    /// Run an ablation file (a table whose rows are a grid of overrides): same outputs.
    Ablation(reproduce::Args),
    /// Rebuild reports/<table>.md and .csv from the runs on disk.
    Report(report::Args),
    /// Write random weights of a paper segmenter (.pth, release names) for pipeline tests.
    TestWeights(test_weights::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The kernel paths: process-wide, so chosen here, from the environment (SPADE_STOCK_OPS,
    // SPADE_WINOGRAD, SPADE_GEMM, SPADE_PROFILE), and the allocator tuned for them.
    spade_kernels::set_options(
        spade_kernels::KernelOptions::from_vars(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?,
    );
    spade_kernels::tune_allocator();
    match cli.command {
        Command::Reproduce(a) | Command::Ablation(a) => reproduce::run(a),
        Command::Report(a) => report::run(a),
        Command::Bench(a) => bench::run(a),
        Command::FetchWeights(a) => fetch_weights::run(a),
        Command::TestWeights(a) => test_weights::run(a),
    }
}
