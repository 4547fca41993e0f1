//! Whole networks with the fast kernels against the same networks on stock candle ops: the
//! outputs and every parameter gradient agree. (Its own test binary: it switches the kernels
//! off process-wide for the stock runs.)
use candle_core::{DType, Device, Tensor};
use spade_kernels::{self as kernels, KernelOptions};
use spade_models::{MultiscaleDiscriminator, NetOptions, ParamStore, SpadeGenerator};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Run `f` (building the net from a fresh store with seed 0 each time) with and without the
/// kernels; compare the loss and the gradients of every parameter.
fn compare(what: &str, f: impl Fn(&ParamStore) -> Tensor) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = |fast: bool| {
        kernels::set_options(KernelOptions { enabled: fast, ..KernelOptions::default() });
        let store = ParamStore::fresh(0, DType::F32, &Device::Cpu);
        let loss = f(&store);
        let grads = loss.backward().unwrap();
        let g: Vec<(String, Option<Tensor>)> =
            store.entries().iter().map(|e| (e.name.clone(), grads.get(e.var.as_tensor()).cloned())).collect();
        (loss.to_scalar::<f32>().unwrap(), g)
    };
    let (lf, gf) = run(true);
    let (ls, gs) = run(false);
    kernels::set_options(KernelOptions::default());
    assert!((lf - ls).abs() <= 1e-4 * ls.abs().max(1.0), "{what}: loss {lf} vs stock {ls}");
    // A bias in front of a training-mode batch norm has a true gradient of 0: both paths hold
    // float noise there. Each tensor is compared relative to its own largest gradient, but never
    // to less than 1% of the network's largest.
    let global = gs.iter().filter_map(|(_, g)| g.as_ref().map(max_abs)).fold(0f32, f32::max);
    let mut checked = 0;
    for ((name, a), (_, b)) in gf.iter().zip(&gs) {
        match (a, b) {
            (Some(a), Some(b)) => {
                let scale = max_abs(b).max(1e-2 * global);
                let e = max_abs(&(a - b).unwrap()) / scale;
                assert!(e < 1e-3, "{what}: gradient of {name} differs by {e:e} of {scale:e}");
                checked += 1;
            }
            (None, None) => {}
            _ => panic!("{what}: {name} has a gradient on one path only"),
        }
    }
    assert!(checked > 10, "{what}: only {checked} gradients compared");
}

fn opt() -> NetOptions {
    NetOptions {
        label_nc: 5,
        contain_dontcare_label: false,
        no_instance: true,
        ngf: 8,
        ndf: 8,
        crop_size: 64,
        ..Default::default()
    }
}

#[test]
fn discriminator_matches_stock_ops() {
    let o = opt();
    compare("discriminator", |store| {
        let d = MultiscaleDiscriminator::new(&o, &store.root()).unwrap();
        let x = rand(&[4, 5 + 3, 64, 64], 1);
        let outs = d.forward_t(&x, true).unwrap();
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (i, scale) in outs.iter().enumerate() {
            for (j, t) in scale.iter().enumerate() {
                let w = rand(t.dims(), (10 * i + j) as u64);
                loss = (loss + (t * w).unwrap().sum_all().unwrap()).unwrap();
            }
        }
        loss
    });
}

#[test]
fn generator_matches_stock_ops() {
    let o = opt();
    compare("generator", |store| {
        let g = SpadeGenerator::new(&o, &store.root()).unwrap();
        let seg = rand(&[2, 5, 64, 64], 2).ge(0.0).unwrap().to_dtype(DType::F32).unwrap();
        let y = g.forward_t(&seg, None, true).unwrap();
        (y * rand(&[2, 3, 64, 64], 3)).unwrap().sum_all().unwrap()
    });
}
