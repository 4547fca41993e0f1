//! FID over image folders and statistics files, as pytorch-fid's `fid_score.py` computes it:
//! the folder's images (non-recursive, by extension, sorted) as RGB `/255`, pool3 features of
//! pytorch-fid's Inception, mean and `N - 1` covariance, Frechet distance.
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{MetricsError, Result};
use crate::frechet::{frechet_distance, GaussianStats};
use crate::inception::{FidInception, POOL3_DIM};
use crate::resize::rgb8_to_tensor;
use crate::stats_io::load_stats;

/// Extensions pytorch-fid reads from a folder (compared case-insensitively here).
pub const IMAGE_EXTENSIONS: [&str; 9] = ["bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"];

/// The image files directly inside `dir`, sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| MetricsError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in rd {
        let path = entry.map_err(|e| MetricsError::io(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
        if path.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(MetricsError::NoImages { path: dir.to_path_buf() });
    }
    Ok(files)
}

/// An image file as `(1, 3, H, W)` f32 RGB in `[0, 1]` (PIL's `convert("RGB")` then `/255`).
pub fn load_image(path: &Path, device: &Device) -> Result<Tensor> {
    let img = image::open(path).map_err(|e| MetricsError::Image { path: path.to_path_buf(), msg: e.to_string() })?;
    rgb8_to_tensor(&img.to_rgb8(), device)
}

/// Pool3 features of image files, `batch_size` at a time (each image resized on its own, so
/// sizes may differ). Returns `files.len() * 2048` values, row-major, as f64 (pytorch-fid
/// stores them in a float64 array). `progress` is called with the number of images done.
pub fn pool3_of_files(
    net: &FidInception,
    files: &[PathBuf],
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f64>> {
    if batch_size == 0 {
        return Err(MetricsError::invalid("batch size", 0, "at least 1"));
    }
    let mut out = Vec::with_capacity(files.len() * POOL3_DIM);
    let mut done = 0;
    for chunk in files.chunks(batch_size) {
        let imgs = chunk.iter().map(|p| load_image(p, &Device::Cpu)).collect::<Result<Vec<_>>>()?;
        let feats = net.pool3_list(&imgs)?.to_device(&Device::Cpu)?;
        let feats: Vec<f32> = feats.flatten_all()?.to_vec1()?;
        out.extend(feats.into_iter().map(f64::from));
        done += chunk.len();
        progress(done);
    }
    Ok(out)
}

/// One side of an FID comparison: a folder of images or a pytorch-fid statistics `.npz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FidInput {
    Images(PathBuf),
    Stats(PathBuf),
}

impl FidInput {
    /// A file ending in `.npz` is statistics; a folder is images; anything else is an error.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(FidInput::Images(path.to_path_buf()))
        } else if path.is_file() && path.extension().is_some_and(|e| e == "npz") {
            Ok(FidInput::Stats(path.to_path_buf()))
        } else {
            Err(MetricsError::invalid(
                "FID input",
                path.display(),
                "an image folder or a pytorch-fid statistics .npz file",
            ))
        }
    }

    /// The number of images this input will run through the network (0 for statistics).
    pub fn image_count(&self) -> Result<usize> {
        match self {
            FidInput::Images(d) => Ok(list_images(d)?.len()),
            FidInput::Stats(_) => Ok(0),
        }
    }

    /// Statistics of this input: loaded, or computed with `net`. Without a network, a folder
    /// input yields [`MetricsError::FidUnavailable`].
    pub fn stats(
        &self,
        net: Option<&FidInception>,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<GaussianStats> {
        match self {
            FidInput::Stats(p) => load_stats(p),
            FidInput::Images(dir) => {
                let net = net.ok_or_else(|| MetricsError::FidUnavailable {
                    reason: format!(
                        "no Inception weights (pt_inception-2015-12-05) to compute features of {}",
                        dir.display()
                    ),
                })?;
                let files = list_images(dir)?;
                let feats = pool3_of_files(net, &files, batch_size, progress)?;
                GaussianStats::from_features(&feats, POOL3_DIM)
            }
        }
    }
}

/// FID between two inputs. Two statistics files need no network; any image folder does, and
/// without one the result is [`MetricsError::FidUnavailable`], never another number.
pub fn fid(
    net: Option<&FidInception>,
    a: &FidInput,
    b: &FidInput,
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<f64> {
    let sa = a.stats(net, batch_size, progress)?;
    let sb = b.stats(net, batch_size, progress)?;
    if sa.dim != POOL3_DIM || sb.dim != POOL3_DIM {
        return Err(MetricsError::invalid(
            "statistics dimension",
            format!("{} and {}", sa.dim, sb.dim),
            format!("{POOL3_DIM} (Inception pool3) on both sides"),
        ));
    }
    frechet_distance(&sa, &sb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_images_sorted() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.png", "a.PNG", "c.txt", "d.jpeg"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("sub.png")).unwrap();
        let names: Vec<String> = list_images(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.PNG", "b.png", "d.jpeg"]);
    }

    #[test]
    fn empty_folder_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(list_images(d.path()).unwrap_err(), MetricsError::NoImages { .. }));
    }

    #[test]
    fn fid_without_weights_is_unavailable() {
        let d = tempfile::tempdir().unwrap();
        image::RgbImage::new(4, 4).save(d.path().join("x.png")).unwrap();
        let input = FidInput::from_path(d.path()).unwrap();
        let e = fid(None, &input, &input, 8, &mut |_| {}).unwrap_err();
        assert!(matches!(e, MetricsError::FidUnavailable { .. }), "{e}");
    }

    #[test]
    fn fid_of_two_stats_files_needs_no_network() {
        let d = tempfile::tempdir().unwrap();
        let mut s = GaussianStats { mu: vec![0.0; POOL3_DIM], sigma: vec![0.0; POOL3_DIM * POOL3_DIM], dim: POOL3_DIM };
        for i in 0..POOL3_DIM {
            s.sigma[i * POOL3_DIM + i] = 1.0;
        }
        let pa = d.path().join("a.npz");
        crate::stats_io::save_stats(&pa, &s).unwrap();
        s.mu[0] = 3.0;
        let pb = d.path().join("b.npz");
        crate::stats_io::save_stats(&pb, &s).unwrap();
        let a = FidInput::from_path(&pa).unwrap();
        let b = FidInput::from_path(&pb).unwrap();
        let v = fid(None, &a, &b, 8, &mut |_| {}).unwrap();
        assert!((v - 9.0).abs() < 1e-9, "{v}");
    }
}
