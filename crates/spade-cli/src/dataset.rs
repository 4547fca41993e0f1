//! `spade dataset`: validate a dataset on disk, or write the synthetic dataset to disk.
//!
//! ```text
//! spade dataset check --format coco-stuff|ade20k|cityscapes|folder|synthetic --root DIR
//!     [--split train|val] [--label-nc N] [--contain-dontcare-label] [--no-instance]
//!     [--palette classes.json] [--count N --size S --seed K (synthetic)]
//! spade dataset export-synthetic --output-dir D --count N --size S [--seed K]
//! ```
//! `check` prints one JSON object on stdout, `{"format", "split", "pairs", "label_nc",
//! "labels_seen"}`, and one line per problem on stderr (each naming its file); it exits with
//! status 1 when there is any problem.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use spade_data::{DatasetConfig, DatasetMode, Phase};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Validate every (label, image, instance) pair of a dataset and list the labels it uses.
    Check(CheckArgs),
    /// Write the built-in synthetic dataset in the folder format (images/, labels/,
    /// instances/, classes.json).
    ExportSynthetic(ExportArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    CocoStuff,
    Ade20k,
    /// ADE20K's outdoor scenes (sceneCategories.txt).
    Ade20kOutdoor,
    Cityscapes,
    Folder,
    Synthetic,
}

impl Format {
    fn mode(self) -> DatasetMode {
        match self {
            Format::CocoStuff => DatasetMode::Coco,
            Format::Ade20k => DatasetMode::Ade20k,
            Format::Ade20kOutdoor => DatasetMode::Ade20kOutdoor,
            Format::Cityscapes => DatasetMode::Cityscapes,
            Format::Folder => DatasetMode::Custom,
            Format::Synthetic => DatasetMode::Synthetic,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Split {
    Train,
    Val,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Dataset layout.
    #[arg(long, value_enum)]
    format: Format,
    /// Dataset root (not needed for synthetic).
    #[arg(long)]
    root: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "train")]
    split: Split,
    /// Number of classes (default: the dataset's; folder: classes.json's, else 13).
    #[arg(long)]
    label_nc: Option<usize>,
    /// Raw value 255 is "don't care" (default: the dataset's).
    #[arg(long)]
    contain_dontcare_label: bool,
    /// Do not read instance maps (default: the dataset's).
    #[arg(long)]
    no_instance: bool,
    /// Folder format: classes.json for RGB colour-coded labels (default <root>/classes.json).
    #[arg(long)]
    palette: Option<PathBuf>,
    /// Synthetic: number of scenes to validate.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Synthetic: scene size in pixels.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Synthetic: generator seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    #[arg(long)]
    output_dir: PathBuf,
    /// Number of scenes.
    #[arg(long)]
    count: usize,
    /// Width and height in pixels.
    #[arg(long)]
    size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        DatasetCommand::Check(a) => {
            let (json, problems) = check(&a)?;
            println!("{json}");
            for p in &problems {
                eprintln!("{p}");
            }
            if !problems.is_empty() {
                use std::io::Write;
                std::io::stdout().flush().ok();
                std::process::exit(1);
            }
            Ok(())
        }
        DatasetCommand::ExportSynthetic(a) => {
            export(&a)?;
            println!(
                "wrote {} synthetic pairs ({}x{}, seed {}) to {}",
                a.count,
                a.size,
                a.size,
                a.seed,
                a.output_dir.display()
            );
            Ok(())
        }
    }
}

fn config(a: &CheckArgs) -> anyhow::Result<DatasetConfig> {
    let mode = a.format.mode();
    if mode != DatasetMode::Synthetic && a.root.is_none() {
        bail!("--root DIR is required for --format {}", mode.cli_name());
    }
    let mut cfg = DatasetConfig::new(mode, a.root.clone());
    cfg.phase = match a.split {
        Split::Train => Phase::Train,
        Split::Val => Phase::Val,
    };
    cfg.label_nc = a.label_nc;
    cfg.contain_dontcare_label = a.contain_dontcare_label.then_some(true);
    cfg.no_instance = a.no_instance.then_some(true);
    cfg.palette = a.palette.clone();
    if mode == DatasetMode::Synthetic {
        cfg.synthetic_count = Some(a.count);
        cfg.crop_size = Some(a.size);
        cfg.synthetic_seed = a.seed;
    }
    Ok(cfg)
}

/// The JSON line and the problem lines of `dataset check`.
fn check(a: &CheckArgs) -> anyhow::Result<(String, Vec<String>)> {
    let cfg = config(a)?;
    let report = spade_data::check(&cfg)?;
    let json = serde_json::to_string(&report).context("serialise the check report")?;
    Ok((json, report.problems.iter().map(|p| p.to_string()).collect()))
}

fn export(a: &ExportArgs) -> anyhow::Result<()> {
    if a.size == 0 || a.count == 0 {
        bail!("--count and --size must be positive (got count {}, size {})", a.count, a.size);
    }
    spade_data::export_synthetic(&a.output_dir, a.count, a.size, a.size, a.seed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("dataset").chain(argv.iter().copied())).unwrap().args
    }

    fn check_of(argv: &[&str]) -> anyhow::Result<(String, Vec<String>)> {
        match parse(argv).command {
            DatasetCommand::Check(a) => check(&a),
            _ => panic!("not a check"),
        }
    }

    #[test]
    fn export_then_check_the_folder_dataset() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("synth");
        let out_s = out.to_str().unwrap();
        match parse(&["export-synthetic", "--output-dir", out_s, "--count", "3", "--size", "24", "--seed", "2"]).command
        {
            DatasetCommand::ExportSynthetic(a) => export(&a).unwrap(),
            _ => panic!("not an export"),
        }
        for sub in ["images", "labels", "instances"] {
            assert_eq!(std::fs::read_dir(out.join(sub)).unwrap().count(), 3, "{sub}");
        }
        let (json, problems) = check_of(&["check", "--format", "folder", "--root", out_s]).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let at = |k: &str| json.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("{k} in {json}"));
        let order = ["format", "split", "pairs", "label_nc", "labels_seen"].map(at);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "key order in {json}");
        assert_eq!(v.as_object().unwrap().len(), 5);
        assert_eq!(
            (v["format"].as_str(), v["split"].as_str(), v["pairs"].as_u64(), v["label_nc"].as_u64()),
            (Some("folder"), Some("train"), Some(3), Some(14))
        );

        // Break it: a label value beyond label_nc and a missing image.
        std::fs::remove_file(out.join("images/000001.png")).unwrap();
        let (_, problems) = check_of(&["check", "--format", "folder", "--root", out_s, "--label-nc", "3"]).unwrap();
        assert!(problems.len() >= 2, "{problems:?}");
        assert_eq!(
            problems[0],
            format!(
                "{}: missing image partner: expected an image 000001.<jpg|jpeg|png|...> in {}",
                out.join("labels/000001.png").display(),
                out.join("images").display()
            )
        );
        assert!(
            problems[1].starts_with(&format!("{}: label value ", out.join("labels/000000.png").display())),
            "{}",
            problems[1]
        );
        assert!(problems[1].contains("is outside the valid range 0..=2 for label_nc 3"), "{}", problems[1]);
    }

    #[test]
    fn synthetic_check_needs_no_root_but_files_do() {
        let (json, problems) = check_of(&["check", "--format", "synthetic", "--count", "4", "--size", "16"]).unwrap();
        assert!(problems.is_empty());
        assert!(
            json.starts_with(r#"{"format":"synthetic","split":"train","pairs":4,"label_nc":14,"labels_seen":["#),
            "{json}"
        );
        let err = check_of(&["check", "--format", "ade20k"]).unwrap_err();
        assert_eq!(err.to_string(), "--root DIR is required for --format ade20k");
    }
}
