//! `spade fid`: FID between two image folders or pytorch-fid statistics files, exactly as
//! pytorch-fid computes it; `--save-stats` writes a folder's statistics for reuse.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use spade_metrics::weights::{HubFile, ResolvedWeights};
use spade_metrics::{load_fid_inception, FidInception, FidInput, MetricsError};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Two paths: image folders or statistics .npz files (`mu`, `sigma`). With --save-stats:
    /// an image folder and the .npz to write.
    #[arg(num_args = 2, required = true, value_names = ["PATH_A", "PATH_B"])]
    pub paths: Vec<PathBuf>,
    /// Write the statistics of the first path (a folder) to the second (an .npz).
    #[arg(long)]
    pub save_stats: bool,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth).
    #[arg(long, conflicts_with = "weights_hub")]
    pub weights: Option<PathBuf>,
    /// The weights from the Hugging Face hub, as REPO:FILE (org/name:file.pth); read from the
    /// hub cache, downloaded into it when missing unless --offline.
    #[arg(long, value_name = "REPO:FILE")]
    pub weights_hub: Option<String>,
    /// Hub revision for --weights-hub.
    #[arg(long, default_value = "main")]
    pub hub_revision: String,
    /// Hub cache folder (holding models--org--name); default HF_HOME/hub or
    /// ~/.cache/huggingface/hub.
    #[arg(long)]
    pub hub_cache: Option<PathBuf>,
    /// Never download: the hub file must already be in the cache.
    #[arg(long)]
    pub offline: bool,
    /// Expected SHA-256 of the weights (full, or a prefix of at least 8 hex digits); default:
    /// the prefix in the file name when it has one (pt_inception-...-6726825d.pth).
    #[arg(long)]
    pub weights_sha256: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Run the network on CUDA device 0 (needs a build with the `cuda` feature).
    #[arg(long)]
    pub cuda: bool,
}

fn resolve_weights(args: &Args) -> Result<Option<ResolvedWeights>> {
    if let Some(p) = &args.weights {
        return Ok(Some(ResolvedWeights::from_path(p, args.weights_sha256.as_deref())?));
    }
    if let Some(spec) = &args.weights_hub {
        let mut hf = HubFile::parse(spec)?;
        hf.revision = Some(args.hub_revision.clone());
        hf.cache_dir = args.hub_cache.clone();
        hf.allow_download = !args.offline;
        hf.sha256 = args.weights_sha256.clone();
        return Ok(Some(hf.resolve()?));
    }
    Ok(None)
}

fn load_net(args: &Args, weights: &ResolvedWeights) -> Result<FidInception> {
    let device = if args.cuda {
        Device::new_cuda(0).context("--cuda: no CUDA device (build with --features cuda)")?
    } else {
        Device::Cpu
    };
    eprintln!(
        "Inception weights: {} (sha256 {}{})",
        weights.path.display(),
        weights.sha256,
        if weights.verified { ", verified" } else { ", not checked" }
    );
    Ok(load_fid_inception(&weights.path, &device)?)
}

fn progress_bar(total: usize) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "pool3 features {bar:40} {pos}/{len} images [{elapsed_precise}<{eta_precise}, {per_sec}]",
        )
        .expect("valid progress template"),
    );
    pb
}

fn unavailable(dir: &Path) -> anyhow::Error {
    MetricsError::FidUnavailable {
        reason: format!(
            "{} is an image folder and no Inception weights were given (--weights FILE or --weights-hub REPO:FILE)",
            dir.display()
        ),
    }
    .into()
}

pub fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size: got 0, expected at least 1");
    }
    let weights = resolve_weights(&args)?;
    if args.save_stats {
        let (dir, out) = (&args.paths[0], &args.paths[1]);
        if !dir.is_dir() {
            bail!("--save-stats: {} is not an image folder", dir.display());
        }
        if out.extension().is_none_or(|e| e != "npz") {
            bail!("--save-stats: output {} should end in .npz", out.display());
        }
        let Some(weights) = weights else {
            return Err(unavailable(dir));
        };
        let net = load_net(&args, &weights)?;
        let input = FidInput::Images(dir.clone());
        let pb = progress_bar(input.image_count()?);
        let stats = input.stats(Some(&net), args.batch_size, &mut |n| pb.set_position(n as u64))?;
        pb.finish();
        spade_metrics::save_stats(out, &stats)?;
        println!("Saved statistics of {} to {}", dir.display(), out.display());
        return Ok(());
    }

    let a = FidInput::from_path(&args.paths[0])?;
    let b = FidInput::from_path(&args.paths[1])?;
    let net = match &weights {
        Some(w) => Some(load_net(&args, w)?),
        None => {
            for input in [&a, &b] {
                if let FidInput::Images(d) = input {
                    return Err(unavailable(d));
                }
            }
            None
        }
    };
    let total = a.image_count()? + b.image_count()?;
    let pb = progress_bar(total);
    let sa = a.stats(net.as_ref(), args.batch_size, &mut |n| pb.set_position(n as u64))?;
    let done_a = a.image_count()?;
    let sb = b.stats(net.as_ref(), args.batch_size, &mut |n| pb.set_position((done_a + n) as u64))?;
    pb.finish_and_clear();
    let value = spade_metrics::frechet_distance(&sa, &sb)?;
    println!("FID: {value}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spade_metrics::GaussianStats;

    fn args(paths: [&Path; 2]) -> Args {
        Args {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            save_stats: false,
            weights: None,
            weights_hub: None,
            hub_revision: "main".into(),
            hub_cache: None,
            offline: true,
            weights_sha256: None,
            batch_size: 4,
            cuda: false,
        }
    }

    fn stats(shift: f64) -> GaussianStats {
        let d = spade_metrics::POOL3_DIM;
        let mut sigma = vec![0.0; d * d];
        for i in 0..d {
            sigma[i * d + i] = 1.0;
        }
        let mut mu = vec![0.0; d];
        mu[0] = shift;
        GaussianStats { mu, sigma, dim: d }
    }

    #[test]
    fn image_folder_without_weights_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        image::RgbImage::new(8, 8).save(dir.path().join("x.png")).unwrap();
        let e = run(args([dir.path(), dir.path()])).unwrap_err().to_string();
        assert!(e.starts_with("FID unavailable"), "{e}");
        let mut a = args([dir.path(), &dir.path().join("out.npz")]);
        a.save_stats = true;
        let e = run(a).unwrap_err().to_string();
        assert!(e.starts_with("FID unavailable"), "{e}");
        assert!(!dir.path().join("out.npz").exists());
    }

    #[test]
    fn two_statistics_files_need_no_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
        spade_metrics::save_stats(&a, &stats(0.0)).unwrap();
        spade_metrics::save_stats(&b, &stats(2.0)).unwrap();
        run(args([&a, &b])).unwrap();
    }

    #[test]
    fn hub_weights_missing_from_offline_cache_name_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.npz");
        spade_metrics::save_stats(&a, &stats(0.0)).unwrap();
        let mut x = args([&a, &a]);
        x.weights_hub = Some("org/inception:pt_inception-2015-12-05-6726825d.pth".into());
        x.hub_cache = Some(dir.path().to_path_buf());
        let e = run(x).unwrap_err().to_string();
        assert!(e.contains("models--org--inception"), "{e}");
    }

    #[test]
    fn zero_batch_size_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = args([dir.path(), dir.path()]);
        x.batch_size = 0;
        assert!(run(x).unwrap_err().to_string().contains("--batch-size"));
    }
}
