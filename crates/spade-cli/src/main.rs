//! `spade`: the command line. A thin `main` dispatching to one module per subcommand.
use clap::{Parser, Subcommand};

mod synthesize;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Synthesize(args) => synthesize::run(args),
    }
}
