//! `spade synthesize`: label maps (+ instance maps, + z or style images) -> images, as the
//! reference test script writes them.
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::Distribution;
use spade_data::resample::{resize_bicubic, resize_nearest, Plane};
use spade_data::{read_image, read_instance_png, read_label_png, LabelMap};
use spade_models::checkpoint::{load_network, Generator};
use spade_models::networks::encoder::reparameterize;
use spade_models::{ConvEncoder, NetOptions, SemanticsSpec};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory: `<which-epoch>_net_G.pth` (or .safetensors), `opt.txt`, and
    /// `<which-epoch>_net_E.pth` for --style.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Label map PNG (class ids; 255 = don't care when the options say so). Repeatable.
    #[arg(long = "label", required = true)]
    pub labels: Vec<PathBuf>,
    /// Instance map PNG, one per label (needed unless the options say no_instance).
    #[arg(long = "instance")]
    pub instances: Vec<PathBuf>,
    /// float32 .npy of shape (N, z_dim): row i is the z of label i (VAE generators).
    #[arg(long, conflicts_with_all = ["styles"])]
    pub z: Option<PathBuf>,
    /// Style image, one per label: encoded by the VAE encoder (multimodal / style-guided).
    #[arg(long = "style")]
    pub styles: Vec<PathBuf>,
    /// Seed for random z (VAE generators without --z) and the encoder's sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Also write `<stem>.npy` (float32, 3xHxW, in [-1, 1]).
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value = "latest")]
    pub which_epoch: String,
    /// Run on the first CUDA GPU (needs a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
}

/// `<dir>/<which>_net_<net>.pth`, or `.safetensors`.
pub fn weights_file(dir: &Path, which: &str, net: &str) -> Result<PathBuf> {
    for ext in ["pth", "safetensors"] {
        let p = dir.join(format!("{which}_net_{net}.{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{}: no {which}_net_{net}.pth or {which}_net_{net}.safetensors (is --which-epoch right?)", dir.display())
}

pub fn device(cuda: bool) -> Result<Device> {
    if cuda {
        Device::new_cuda(0).context("opening CUDA device 0 (build with --features cuda)")
    } else {
        Ok(Device::Cpu)
    }
}

/// Reads a label PNG, resizes it (nearest, as PIL) to (h, w) and maps it to class ids.
fn read_ids(path: &Path, spec: &SemanticsSpec, h: usize, w: usize) -> Result<Vec<u32>> {
    let map = read_label_png(path, None)?;
    let mut ids = resize_map(map, h, w);
    spec.ids_from_raw(&mut ids, w, &path.display().to_string())?;
    Ok(ids)
}

fn resize_map(map: LabelMap, h: usize, w: usize) -> Vec<u32> {
    let plane = Plane::new(map.width, map.height, 1, map.data);
    resize_nearest(&plane, w, h).data
}

/// A style image as the reference's test loader gives it: bicubic to (h, w), then [-1, 1].
fn read_style(path: &Path, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    let img = read_image(path)?;
    let plane = resize_bicubic(&Plane::new(img.width, img.height, 3, img.data), w, h);
    let data: Vec<f32> = plane.data.iter().map(|&v| v as f32 / 255.0 * 2.0 - 1.0).collect();
    Ok(Tensor::from_vec(data, (1, h, w, 3), dev)?.permute((0, 3, 1, 2))?.contiguous()?)
}

pub fn run(args: Args) -> Result<()> {
    let dev = device(args.cuda)?;
    // A training run directory: use the checkpoint its `latest` names.
    let ckpt = match spade_train::run::latest_checkpoint(&args.checkpoint) {
        Some(dir) if !args.checkpoint.join("opt.txt").exists() => dir,
        _ => args.checkpoint.clone(),
    };
    let opt_path = ckpt.join("opt.txt");
    let opt = NetOptions::from_opt_file(&opt_path)?;
    let spec = SemanticsSpec::from(&opt);
    let (h, w) = opt.output_size();
    let n = args.labels.len();
    if !opt.no_instance && args.instances.len() != n {
        bail!(
            "{}: no_instance is False, so each of the {n} --label needs an --instance map (got {})",
            opt_path.display(),
            args.instances.len()
        );
    }
    if !args.styles.is_empty() && args.styles.len() != n {
        bail!("--style: {} style images for {n} labels; give one per label", args.styles.len());
    }
    let g_path = weights_file(&ckpt, &args.which_epoch, "G")?;
    let (g, _) = load_network(&g_path, &opt, &dev, true, |vb| Generator::new(&opt, vb))?;
    if !g.uses_z() && (args.z.is_some() || !args.styles.is_empty()) {
        bail!("{}: use_vae is False, so the generator takes no z: drop --z/--style", opt_path.display());
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut randn = |k: usize| -> Result<Tensor> {
        let d = rand_distr::StandardNormal;
        let v: Vec<f32> = (0..k).map(|_| d.sample(&mut rng)).collect();
        Ok(Tensor::from_vec(v, (1, k), &dev)?)
    };
    let z_all = match &args.z {
        Some(p) => {
            // Parsed with the shape checked against the bytes present (a header may declare
            // any shape), then made a tensor.
            let bytes = std::fs::read(p).with_context(|| format!("{}: reading z", p.display()))?;
            let arr = spade_metrics::stats_io::parse_npy(&bytes, &p.display().to_string()).map_err(anyhow::Error::msg)?;
            let data: Vec<f32> = arr.data.iter().map(|&v| v as f32).collect();
            let z = Tensor::from_vec(data, arr.shape.as_slice(), &Device::Cpu)?.to_device(&dev)?;
            if z.dims() != [n, opt.z_dim] {
                bail!(
                    "{}: z has shape {:?}, expected ({n}, {}) (one row of z_dim per label)",
                    p.display(),
                    z.dims(),
                    opt.z_dim
                );
            }
            Some(z)
        }
        None => None,
    };
    let encoder = if args.styles.is_empty() {
        None
    } else {
        let e_path = weights_file(&ckpt, &args.which_epoch, "E")?;
        Some(load_network(&e_path, &opt, &dev, true, |vb| ConvEncoder::new(&opt, vb))?.0)
    };

    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("{}: cannot create the output directory", args.output_dir.display()))?;
    for (i, label) in args.labels.iter().enumerate() {
        let ids = read_ids(label, &spec, h, w)?;
        let inst = if opt.no_instance {
            None
        } else {
            let p = &args.instances[i];
            Some(resize_map(read_instance_png(p)?, h, w))
        };
        let insts: Option<Vec<&[u32]>> = inst.as_ref().map(|v| vec![v.as_slice()]);
        let seg = spec.build(&[&ids], insts.as_deref(), h, w, &dev)?;
        let z = if !g.uses_z() {
            None
        } else if let Some(z) = &z_all {
            Some(z.narrow(0, i, 1)?)
        } else if let Some(e) = &encoder {
            let style = read_style(&args.styles[i], h, w, &dev)?;
            let (mu, logvar) = e.forward_t(&style, false)?;
            let eps = randn(mu.dim(1)?)?;
            Some(reparameterize(&mu, &logvar, &eps)?)
        } else {
            Some(randn(opt.z_dim)?)
        };
        let out = g.forward_t(&seg, z.as_ref(), false)?.squeeze(0)?.to_device(&Device::Cpu)?;
        let stem = label.file_stem().context("label path has no file name")?.to_string_lossy().to_string();
        let png = args.output_dir.join(format!("{stem}.png"));
        write_png(&out, &png)?;
        if args.raw {
            let npy = args.output_dir.join(format!("{stem}.npy"));
            out.write_npy(&npy).with_context(|| format!("{}: writing", npy.display()))?;
        }
        println!("{}", png.display());
    }
    Ok(())
}

/// (x + 1) / 2 * 255, clipped and truncated to u8, as the reference's `tensor2im`.
pub fn write_png(img: &Tensor, path: &Path) -> Result<()> {
    let (c, h, w) = img.dims3()?;
    let v: Vec<f32> = img.flatten_all()?.to_vec1()?;
    let mut buf = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3 {
                let val = v[(ch.min(c - 1)) * h * w + y * w + x];
                buf[(y * w + x) * 3 + ch] = ((val + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0) as u8;
            }
        }
    }
    image::RgbImage::from_raw(w as u32, h as u32, buf)
        .context("image buffer")?
        .save(path)
        .with_context(|| format!("{}: writing PNG", path.display()))
}
