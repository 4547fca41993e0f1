//! `cargo xtask test-weights <segmenter> <dir>`: weights with deterministic random values for
//! one of the paper's segmenters, written as `.pth` under their release names. They let the
//! whole evaluation (reading the file, the network, mIoU and accuracy in the report) run on a
//! real dataset without the released files; every report built from them says "test weights".
use anyhow::Result;
use candle_core::Device;
use spade_train::protocol::SegmenterKind;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// deeplabv2, drn or upernet.
    pub segmenter: String,
    /// The folder the files are written to (created if needed).
    pub dir: PathBuf,
    /// Seed of the random values.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let kind: SegmenterKind = args.segmenter.parse()?;
    for p in kind.write_test_weights(&args.dir, args.seed, &Device::Cpu)? {
        println!("{}", p.display());
    }
    Ok(())
}
