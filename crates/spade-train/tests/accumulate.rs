//! Gradient accumulation: with per-sample networks (instance norms, no spectral norm), the
//! gradients of a batch run as two micro-batches equal those of the whole batch.
use candle_core::{DType, Device, Tensor};
use spade_models::{NetOptions, SemanticsSpec};
use spade_train::trainer::{LossOptions, Nets, OptimOptions, Trainer};

fn trainer(accumulate: usize) -> Trainer {
    let opt = NetOptions {
        label_nc: 3,
        contain_dontcare_label: false,
        ngf: 2,
        ndf: 4,
        n_layers_d: 2,
        crop_size: 32,
        norm_g: "spadeinstance3x3".parse().unwrap(),
        norm_d: "instance".parse().unwrap(),
        ..Default::default()
    };
    let nets = Nets::fresh(&opt, 11, &Device::Cpu).unwrap();
    let (loss, optim) = (LossOptions::default(), OptimOptions::default());
    let mut tr = Trainer::new(opt, loss, optim, nets, None, 0).unwrap();
    tr.accumulate = accumulate;
    tr
}

#[test]
fn two_micro_batches_give_the_whole_batch_gradient() {
    let (mut a, mut b) = (trainer(1), trainer(2));
    let spec = SemanticsSpec { label_nc: 3, contain_dontcare_label: false, no_instance: false };
    let ids: Vec<Vec<u32>> = (0..4).map(|k| (0..32 * 32).map(|p| ((p / 7 + k) % 3) as u32).collect()).collect();
    let inst: Vec<Vec<u32>> = (0..4).map(|k| (0..32 * 32).map(|p| ((p % 32) / (8 + k)) as u32).collect()).collect();
    let ids_r: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let inst_r: Vec<&[u32]> = inst.iter().map(|v| v.as_slice()).collect();
    let sem = spec.build(&ids_r, Some(&inst_r), 32, 32, &Device::Cpu).unwrap();
    let real = ((Tensor::rand(0f32, 1., (4, 3, 32, 32), &Device::Cpu).unwrap() * 2.0).unwrap() - 1.0).unwrap();
    let (la, fa) = a.generator_step(&sem, &real).unwrap();
    let (lb, fb) = b.generator_step(&sem, &real).unwrap();
    assert_eq!(fa.dims(), fb.dims());
    for ((na, va), (nb, vb)) in la.iter().zip(&lb) {
        assert_eq!(na, nb);
        assert!((va - vb).abs() < 1e-4 * va.abs().max(1.0), "{na}: {va} vs {vb}");
    }
    let (ga, gb) = (a.last_grads.0.as_ref().unwrap(), b.last_grads.0.as_ref().unwrap());
    let mut compared = 0;
    for (ea, eb) in a.nets.g_store.entries().iter().zip(b.nets.g_store.entries().iter()) {
        let (Some(x), Some(y)) = (ga.get(ea.var.as_tensor()), gb.get(eb.var.as_tensor())) else { continue };
        let scale = x
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        // Biases in front of an instance norm have a zero true gradient: what is left is float
        // noise of the sums that cancel, about 1e-6 here (the Winograd convolutions sum in
        // another order than the direct ones).
        assert!(d <= 1e-4 * scale + 1e-5, "{}: gradient differs by {d} (scale {scale})", ea.name);
        compared += 1;
    }
    assert!(compared > 20, "compared {compared} gradients");
    let ld_a = a.discriminator_step(&sem, &real).unwrap();
    let ld_b = b.discriminator_step(&sem, &real).unwrap();
    for ((n, va), (_, vb)) in ld_a.iter().zip(&ld_b) {
        assert!((va - vb).abs() < 1e-4, "{n}: {va} vs {vb}");
    }
}
