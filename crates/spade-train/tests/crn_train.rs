//! CRN's training step: regression alone, no discriminator. Without VGG19 weights the loss is
//! the L1 pixel loss (named so); with a VGG19 (random weights here) CRN's perceptual loss.
use candle_core::{DType, Device, Tensor};
use spade_models::loss::Vgg19;
use spade_models::options::GeneratorKind;
use spade_models::{NetOptions, ParamStore, SemanticsSpec};
use spade_train::trainer::{LossOptions, Nets, OptimOptions, Trainer};

fn opt() -> NetOptions {
    NetOptions {
        net_g: GeneratorKind::Crn,
        label_nc: 3,
        contain_dontcare_label: false,
        no_instance: true,
        ngf: 2,
        crop_size: 16,
        ..Default::default()
    }
}

fn trainer(vgg: Option<Vgg19>) -> Trainer {
    let opt = opt();
    let nets = Nets::fresh(&opt, 3, &Device::Cpu).unwrap();
    assert!(nets.d.is_none(), "CRN is trained without a discriminator");
    assert_eq!(nets.d_store.num_params(), 0);
    // CRN's optimiser: Adam, lr 1e-4 in its code; larger here so that a few steps show.
    let optim = OptimOptions { lr: 1e-2, beta1: 0.9, beta2: 0.999, no_ttur: true };
    Trainer::new(opt, LossOptions::default(), optim, nets, vgg, 0).unwrap()
}

fn batch() -> (Tensor, Tensor) {
    let spec = SemanticsSpec { label_nc: 3, contain_dontcare_label: false, no_instance: true };
    let ids: Vec<Vec<u32>> = (0..2).map(|k| (0..16 * 16).map(|p| ((p / 5 + k) % 3) as u32).collect()).collect();
    let ids_r: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let sem = spec.build(&ids_r, None, 16, 16, &Device::Cpu).unwrap();
    // Each class has its own colour: a target the generator can regress to.
    let palette = Tensor::new(&[[0.8f32, -0.5, 0.1], [-0.7, 0.6, -0.2], [0.2, 0.3, -0.9]], &Device::Cpu).unwrap();
    let pixels = sem.permute((0, 2, 3, 1)).unwrap().reshape((2, 16 * 16, 3)).unwrap();
    let real = pixels.matmul(&palette.unsqueeze(0).unwrap().repeat((2, 1, 1)).unwrap()).unwrap();
    let real = real.reshape((2, 16, 16, 3)).unwrap().permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
    (sem, real)
}

fn grads_reach_every_param(tr: &Trainer) {
    let g = tr.last_grads.0.as_ref().expect("a generator step ran");
    for e in tr.nets.g_store.entries() {
        let grad = g.get(e.var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient", e.name));
        let n = grad.abs().unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
        assert!(n.is_finite() && n > 0.0, "{}: gradient norm {n}", e.name);
    }
}

#[test]
fn l1_regression_decreases_and_skips_the_discriminator() {
    let mut tr = trainer(None);
    assert!(!tr.has_discriminator());
    assert!(tr.objective().starts_with("L1 pixel regression"), "{}", tr.objective());
    assert!(tr.objective().contains("not CRN's perceptual loss"), "{}", tr.objective());
    let (sem, real) = batch();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..20 {
        let (losses, fake) = tr.generator_step(&sem, &real).unwrap();
        assert_eq!(losses.len(), 1);
        assert_eq!(losses[0].0, "L1_pixel");
        assert_eq!(fake.dims(), real.dims());
        first.get_or_insert(losses[0].1);
        last = losses[0].1;
        assert!(tr.discriminator_step(&sem, &real).unwrap().is_empty());
    }
    grads_reach_every_param(&tr);
    let first = first.unwrap();
    assert!(last.is_finite() && last < 0.9 * first, "L1 {first} -> {last}");
}

#[test]
fn perceptual_regression_with_a_vgg_is_finite_and_reaches_every_param() {
    let store = ParamStore::fresh(9, DType::F32, &Device::Cpu);
    let vgg = Vgg19::with_convs(&store.root(), 14).unwrap();
    let mut tr = trainer(Some(vgg));
    assert!(tr.objective().starts_with("CRN perceptual regression"), "{}", tr.objective());
    let (sem, real) = batch();
    let (losses, _) = tr.generator_step(&sem, &real).unwrap();
    assert_eq!(losses[0].0, "CRN_perceptual");
    assert!(losses[0].1.is_finite() && losses[0].1 > 0.0);
    grads_reach_every_param(&tr);
}
