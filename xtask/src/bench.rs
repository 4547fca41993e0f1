//! `cargo xtask bench [--json]`: seconds per training iteration of the "mini" configuration of
//! `../shared/bench/README.md` (128x128, ngf 16, ndf 16, batch 4, label_nc 20 + don't-care +
//! instances, random weights), with and without the VGG loss, after a warm-up iteration.
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
}

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

/// Random labels, instances and images of the bench's shape (seeded).
fn inputs(opt: &NetOptions, n: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (h, w) = opt.output_size();
    let spec = SemanticsSpec::from(opt);
    let ids: Vec<Vec<u32>> =
        (0..n).map(|_| (0..h * w).map(|_| rng.gen_range(0..opt.label_nc as u32)).collect()).collect();
    let inst: Vec<Vec<u32>> = (0..n).map(|_| (0..h * w).map(|_| rng.gen_range(0..5)).collect()).collect();
    let ids_r: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let inst_r: Vec<&[u32]> = inst.iter().map(|v| v.as_slice()).collect();
    let sem = spec.build(&ids_r, Some(&inst_r), h, w, dev)?;
    let real = ((Tensor::rand(0f32, 1., (n, 3, h, w), dev)? * 2.0)? - 1.0)?;
    Ok((sem, real))
}

fn time_iteration(vgg: bool, iters: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let opt = mini_options();
    let nets = Nets::fresh(&opt, 0, &dev)?;
    let vgg = if vgg {
        let store = ParamStore::fresh(5, DType::F32, &dev);
        Some(Vgg19::new(&store.root())?)
    } else {
        None
    };
    let (loss, optim) = (LossOptions::default(), OptimOptions::default());
    let mut tr = Trainer::new(opt.clone(), loss, optim, nets, vgg, 0)?;
    let (sem, real) = inputs(&opt, 4, &dev)?;
    tr.generator_step(&sem, &real)?;
    tr.discriminator_step(&sem, &real)?;
    let t = Instant::now();
    for _ in 0..iters {
        tr.generator_step(&sem, &real)?;
        tr.discriminator_step(&sem, &real)?;
    }
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

pub fn run(args: Args) -> Result<()> {
    let no_vgg = time_iteration(false, args.iters)?;
    let with_vgg = time_iteration(true, args.iters)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    if args.json {
        println!(
            "{}",
            serde_json::json!({"train_mini_no_vgg_s": no_vgg, "train_mini_vgg_s": with_vgg, "rayon_num_threads": threads})
        );
    } else {
        println!("train mini (128x128, ngf 16, ndf 16, batch 4), no VGG: {no_vgg:.2} s/iteration");
        println!("train mini, with VGG: {with_vgg:.2} s/iteration (RAYON_NUM_THREADS={threads})");
    }
    Ok(())
}
