//! `cargo xtask bench [--json] [--only KEYS]`: every configuration of `../shared/bench/README.md`,
//! after a warm-up run each, random weights:
//! - `train_mini_no_vgg_s`, `train_mini_vgg_s`: one training iteration (G step + D step) at
//!   128x128, ngf 16, ndf 16, batch 4, label_nc 20 + don't-care + instances;
//! - `infer_paper_coco_s`: the paper-size COCO-Stuff generator (ngf 64, 256x256, 182 classes +
//!   don't-care + instances, batch 1), one inference;
//! - `resblock_fwd_s`, `resblock_fwdbwd_s`: one SPADE ResBlk(128, 128) on 4x128x64x64 with 36
//!   label channels, batch-norm SPADE, training mode;
//! - `serve_coco_256_s`: one `POST /api/synthesize` of a 256x256 PNG label map to `spade serve`'s
//!   server (in this process, over a localhost socket) with that COCO-Stuff generator: PNG
//!   decoding, the inference, PNG encoding and the HTTP round trip;
//! - `peak_rss_mb`: the process's peak resident memory after the training iterations.
//!
//! `--cuda` (a build with `--features cuda`) runs the same configurations on CUDA device 0,
//! synchronizing before each clock read, and adds `cuda_vs_cpu_max_abs`: the largest difference
//! between the mini generator's output on the GPU and on the CPU for the same weights and input.
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use spade_models::loss::Vgg19;
use spade_models::{NetOptions, ParamStore, SemanticsSpec};
use spade_train::trainer::{LossOptions, Nets, OptimOptions, Trainer};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Timed iterations per configuration (after one warm-up).
    #[arg(long, default_value_t = 2)]
    pub iters: usize,
    /// Comma-separated keys to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Run on CUDA device 0 (needs a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
}

const KEYS: [&str; 6] = [
    "train_mini_no_vgg_s",
    "train_mini_vgg_s",
    "infer_paper_coco_s",
    "serve_coco_256_s",
    "resblock_fwd_s",
    "resblock_fwdbwd_s",
];

fn mini_options() -> NetOptions {
    NetOptions {
        label_nc: 20,
        contain_dontcare_label: true,
        no_instance: false,
        ngf: 16,
        ndf: 16,
        crop_size: 128,
        ..Default::default()
    }
}

/// Random labels, instances and images of the bench's shape (seeded), as the reference script
/// draws them (uniform labels, instance ids 0..5).
fn inputs(opt: &NetOptions, n: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (h, w) = opt.output_size();
    let spec = SemanticsSpec::from(opt);
    let ids: Vec<Vec<u32>> =
        (0..n).map(|_| (0..h * w).map(|_| rng.random_range(0..opt.label_nc as u32)).collect()).collect();
    let inst: Vec<Vec<u32>> = (0..n).map(|_| (0..h * w).map(|_| rng.random_range(0..5)).collect()).collect();
    let ids_r: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let inst_r: Vec<&[u32]> = inst.iter().map(|v| v.as_slice()).collect();
    let sem = spec.build(&ids_r, Some(&inst_r), h, w, dev)?;
    let real = ((Tensor::rand(0f32, 1., (n, 3, h, w), dev)? * 2.0)? - 1.0)?;
    Ok((sem, real))
}

/// Seconds per call of `step`, after one warm-up call; the device is synchronized before each
/// clock read, so that queued GPU work is counted.
fn per_iter(dev: &Device, iters: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

fn time_iteration(dev: &Device, vgg: bool, iters: usize) -> Result<f64> {
    let dev = dev.clone();
    let opt = mini_options();
    let nets = Nets::fresh(&opt, 0, &dev)?;
    let vgg = if vgg {
        // Frozen, as the trainer loads it (run.rs): VGG19 is a fixed feature extractor, so
        // no weight gradients are computed for it.
        let store = ParamStore::fresh(5, DType::F32, &dev).frozen();
        Some(Vgg19::new(&store.root())?)
    } else {
        None
    };
    let (loss, optim) = (LossOptions::default(), OptimOptions::default());
    let mut tr = Trainer::new(opt.clone(), loss, optim, nets, vgg, 0)?;
    let (sem, real) = inputs(&opt, 4, &dev)?;
    per_iter(&dev, iters, || {
        tr.generator_step(&sem, &real)?;
        tr.discriminator_step(&sem, &real)?;
        Ok(())
    })
}

fn paper_coco_options() -> NetOptions {
    NetOptions {
        label_nc: 182,
        contain_dontcare_label: true,
        no_instance: false,
        ngf: 64,
        crop_size: 256,
        ..Default::default()
    }
}

/// One inference of the paper-size COCO-Stuff generator (eval mode, batch 1).
fn time_inference(dev: &Device, iters: usize) -> Result<f64> {
    let dev = dev.clone();
    let opt = paper_coco_options();
    let store = ParamStore::fresh(0, DType::F32, &dev);
    let g = spade_models::checkpoint::Generator::new(&opt, &store.root())?;
    let (sem, _) = inputs(&opt, 1, &dev)?;
    per_iter(&dev, iters, || {
        g.forward_t(&sem, None, false)?;
        Ok(())
    })
}

/// One request to the painting demo's server with the paper-size COCO-Stuff generator: a
/// 256x256 grayscale PNG of four classes in, a PNG out.
fn time_serve(dev: &Device, iters: usize) -> Result<f64> {
    let opt = paper_coco_options();
    let store = ParamStore::fresh(0, DType::F32, dev);
    let g = spade_models::checkpoint::Generator::new(&opt, &store.root())?;
    let pal = spade_synth::palette::for_options(&opt, None)?;
    let synth = spade_synth::Synthesizer::new(opt, g, None, dev.clone());
    let app = spade_serve::App::new(synth, pal, spade_serve::Limits::default());
    let addr = spade_serve::spawn("127.0.0.1:0".parse()?, app)?;
    // sky-other, sea, sand, tree (COCO-Stuff file ids).
    let label = image::GrayImage::from_fn(256, 256, |x, y| {
        image::Luma([if y < 100 {
            156
        } else if y < 160 {
            154
        } else if x < 128 {
            153
        } else {
            168
        }])
    });
    let mut png = Vec::new();
    label.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    per_iter(dev, iters, || {
        let a = spade_serve::client::request(addr, "POST", "/api/synthesize?seed=0", Some("image/png"), &png)?;
        anyhow::ensure!(
            a.status == 200,
            "POST /api/synthesize: HTTP {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        Ok(())
    })
}

/// One SPADE ResBlk(128, 128), 4x128x64x64, 36 label channels, training mode; forward only or
/// forward + backward of the sum of the output.
fn time_resblock(dev: &Device, backward: bool, iters: usize) -> Result<f64> {
    use rand::{Rng, SeedableRng};
    let dev = dev.clone();
    let store = ParamStore::fresh(0, DType::F32, &dev);
    let norm = spade_models::options::SpadeNorm::parse("spectralspadesyncbatch3x3")?;
    let blk = spade_models::layers::spade::SpadeResBlk::new(&store.root(), 128, 128, norm, 36, 0.02)?;
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (4, 128, 64, 64), &dev)?)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..4 * 64 * 64).map(|_| rng.random_range(0..36)).collect();
    let ids = Tensor::from_vec(ids, (4, 1, 64, 64), &dev)?;
    let seg = ids.broadcast_eq(&Tensor::arange(0u32, 36, &dev)?.reshape((1, 36, 1, 1))?)?.to_dtype(DType::F32)?;
    per_iter(&dev, iters, || {
        let y = blk.forward_t(x.as_tensor(), &seg, true)?;
        if backward {
            y.sum_all()?.backward()?;
        }
        Ok(())
    })
}

/// The mini generator (training-mode batch norm, batch 4) on `dev` and on the CPU, same
/// weights and input: the largest absolute difference of the outputs.
fn device_vs_cpu(dev: &Device) -> Result<f64> {
    let opt = mini_options();
    let run = |d: &Device| -> Result<Tensor> {
        let store = ParamStore::fresh(3, DType::F32, d).frozen();
        let g = spade_models::checkpoint::Generator::new(&opt, &store.root())?;
        let (sem, _) = inputs(&opt, 4, &Device::Cpu)?;
        Ok(g.forward_t(&sem.to_device(d)?, None, true)?.to_device(&Device::Cpu)?)
    };
    let diff = (run(dev)? - run(&Device::Cpu)?)?.abs()?.flatten_all()?.max(0)?;
    Ok(diff.to_scalar::<f32>()? as f64)
}

fn device(cuda: bool) -> Result<Device> {
    if cuda {
        use anyhow::Context;
        Device::new_cuda(0).context("--cuda: opening CUDA device 0 (build xtask with --features cuda)")
    } else {
        Ok(Device::Cpu)
    }
}

/// Peak resident memory of this process so far (VmHWM), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: Args) -> Result<()> {
    for k in &args.only {
        anyhow::ensure!(KEYS.contains(&k.as_str()), "--only {k}: expected one of {}", KEYS.join(", "));
    }
    let want = |k: &str| args.only.is_empty() || args.only.iter().any(|o| o == k);
    let dev = device(args.cuda)?;
    let mut out = serde_json::Map::new();
    if args.cuda {
        out.insert("cuda_vs_cpu_max_abs".into(), device_vs_cpu(&dev)?.into());
    }
    // The training iterations first, so that the peak memory is theirs.
    for key in KEYS {
        if !want(key) {
            continue;
        }
        let secs = match key {
            "train_mini_no_vgg_s" => time_iteration(&dev, false, args.iters)?,
            "train_mini_vgg_s" => time_iteration(&dev, true, args.iters)?,
            "infer_paper_coco_s" => time_inference(&dev, args.iters)?,
            "serve_coco_256_s" => time_serve(&dev, args.iters)?,
            "resblock_fwd_s" => time_resblock(&dev, false, args.iters)?,
            _ => time_resblock(&dev, true, args.iters)?,
        };
        if !args.json {
            println!("{key}: {secs:.3} s");
            for (name, t, calls) in spade_kernels::profile::take() {
                println!(
                    "    {name}: {:.3} s per iteration ({} calls)",
                    t / (args.iters + 1) as f64,
                    calls / (args.iters as u64 + 1)
                );
            }
        }
        out.insert(key.into(), secs.into());
        if key == "train_mini_vgg_s" || (key == "train_mini_no_vgg_s" && !want("train_mini_vgg_s")) {
            if let Some(mb) = peak_rss_mb() {
                out.insert("peak_rss_mb".into(), mb.into());
            }
        }
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    out.insert("rayon_num_threads".into(), threads.clone().into());
    out.insert("device".into(), format!("{dev:?}").into());
    out.insert("avx512_gemm".into(), spade_kernels::gemm::use_avx512().into());
    let kernels = spade_kernels::options();
    out.insert("fast_kernels".into(), kernels.enabled.into());
    out.insert("winograd".into(), kernels.winograd.into());
    if args.json {
        println!("{}", serde_json::Value::Object(out));
    } else {
        if let Some(mb) = out.get("peak_rss_mb") {
            println!("peak_rss_mb (training iterations): {mb:.0}");
        }
        println!("(RAYON_NUM_THREADS={threads})");
    }
    Ok(())
}
