//! One training iteration (G step, D step) with the fast kernels against the same iteration on
//! stock candle ops: losses and every gradient agree.
use candle_core::{DType, Device, Tensor};
use spade_kernels::{self as kernels, KernelOptions};
use spade_models::{NetOptions, SemanticsSpec};
use spade_train::trainer::{LossOptions, Nets, OptimOptions, Trainer};

fn run(fast: bool, opt: &NetOptions) -> (Vec<(String, f64)>, Trainer) {
    kernels::set_options(KernelOptions { enabled: fast, ..KernelOptions::default() });
    let dev = Device::Cpu;
    let nets = Nets::fresh(opt, 0, &dev).unwrap();
    // lr 0: Adam's first step turns float noise in near-zero gradients into full steps of
    // either sign, which would make the D step see different generators on the two paths.
    let optim = OptimOptions { lr: 0.0, ..OptimOptions::default() };
    let mut tr = Trainer::new(opt.clone(), LossOptions::default(), optim, nets, None, 0).unwrap();
    let (h, w) = opt.output_size();
    let n = 2;
    let ids: Vec<Vec<u32>> =
        (0..n).map(|i| (0..h * w).map(|p| ((p / 7 + i * 3 + p % 5) % opt.label_nc) as u32).collect()).collect();
    let inst: Vec<Vec<u32>> = (0..n).map(|_| (0..h * w).map(|p| ((p / 9) % 4) as u32).collect()).collect();
    let ids_r: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let inst_r: Vec<&[u32]> = inst.iter().map(|v| v.as_slice()).collect();
    let sem = SemanticsSpec::from(opt).build(&ids_r, Some(&inst_r), h, w, &dev).unwrap();
    let real = ((Tensor::arange(0f32, (n * 3 * h * w) as f32, &dev).unwrap().reshape((n, 3, h, w)).unwrap() * 0.37)
        .unwrap()
        .sin())
    .unwrap();
    let (mut losses, _) = tr.generator_step(&sem, &real).unwrap();
    losses.extend(tr.discriminator_step(&sem, &real).unwrap());
    (losses, tr)
}

#[test]
fn training_iteration_matches_stock_ops() {
    let opt = NetOptions { label_nc: 6, ngf: 4, ndf: 8, crop_size: 64, ..Default::default() };
    let (lf, tf) = run(true, &opt);
    let (ls, ts) = run(false, &opt);
    kernels::set_options(KernelOptions::default());
    for ((name, a), (_, b)) in lf.iter().zip(&ls) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "loss {name}: {a} vs stock {b}");
    }
    for (net, sf, ss, gf, gs) in [
        ("G", &tf.nets.g_store, &ts.nets.g_store, &tf.last_grads.0, &ts.last_grads.0),
        ("D", &tf.nets.d_store, &ts.nets.d_store, &tf.last_grads.1, &ts.last_grads.1),
    ] {
        let (gf, gs) = (gf.as_ref().unwrap(), gs.as_ref().unwrap());
        for (ef, es) in sf.entries().iter().zip(ss.entries()) {
            let (Some(a), Some(b)) = (gf.get(ef.var.as_tensor()), gs.get(es.var.as_tensor())) else { continue };
            let m = |t: &Tensor| {
                t.abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let scale = m(b).max(1e-3);
            let e = m(&(a - b).unwrap()) / scale;
            assert!(e < 1e-3, "{net} gradient of {}: differs by {e:e} of its max {scale:e}", ef.name);
        }
    }
}
