//! Parity with the reference implementation on `../shared/fixtures/parity` (SPEC.md section 8).
//! Run by `.ci/run`; fails loudly when the shared folder is missing.
use candle_core::{DType, Device, Tensor};
use spade_models::checkpoint::{load_network, Generator};
use spade_models::loss::{feature_matching, gan_loss, kld, GanMode};
use spade_models::{ConvEncoder, MultiscaleDiscriminator, NetOptions, SemanticsSpec};
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-4;

fn shared() -> PathBuf {
    let p = std::env::var_os("SPADE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(
        p.join("fixtures/parity").is_dir(),
        "the shared fixtures are missing: expected {}/fixtures/parity (set SPADE_SHARED)",
        p.display()
    );
    p
}

fn case(name: &str) -> PathBuf {
    shared().join("fixtures/parity").join(name)
}

fn npy(path: &Path) -> Tensor {
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_dtype(DType::F32).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn gray(path: &Path) -> (Vec<u32>, usize, usize) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let g = img.to_luma8();
    let (w, h) = g.dimensions();
    (g.into_raw().into_iter().map(u32::from).collect(), h as usize, w as usize)
}

/// The network input built by our one conversion from the fixture's PNGs.
fn semantics_from_pngs(dir: &Path, opt: &NetOptions, n: usize) -> Tensor {
    let spec = SemanticsSpec::from(opt);
    let mut ids = Vec::new();
    let mut insts = Vec::new();
    let (mut h, mut w) = (0, 0);
    for i in 0..n {
        let (mut l, lh, lw) = gray(&dir.join(format!("label_{i}.png")));
        spec.ids_from_raw(&mut l, lw, &format!("label_{i}.png")).unwrap();
        ids.push(l);
        insts.push(gray(&dir.join(format!("instance_{i}.png"))).0);
        (h, w) = (lh, lw);
    }
    let ids: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let insts: Vec<&[u32]> = insts.iter().map(|v| v.as_slice()).collect();
    spec.build(&ids, Some(&insts), h, w, &Device::Cpu).unwrap()
}

fn check_generator(name: &str, ckpt: &str) {
    let dir = case(name);
    let opt = NetOptions::from_opt_file(&dir.join("opt.txt")).unwrap();
    let sem = npy(&dir.join("semantics.npy"));
    let ours = semantics_from_pngs(&dir, &opt, sem.dim(0).unwrap());
    assert_eq!(max_abs(&ours, &sem), 0.0, "{name}: semantics differ from semantics.npy");
    let (g, store) = load_network(&dir.join(ckpt), &opt, &Device::Cpu, true, |vb| Generator::new(&opt, vb)).unwrap();
    let case_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    assert_eq!(store.num_params() as u64, case_json["parameters"].as_u64().unwrap(), "{name}: parameter count");
    let z = dir.join("z.npy");
    let z = z.exists().then(|| npy(&z));
    let out = g.forward_t(&sem, z.as_ref(), false).unwrap();
    let err = max_abs(&out, &npy(&dir.join("expected.npy")));
    println!("{name}: max abs error {err:.3e}");
    assert!(err <= TOL, "{name}: max abs error {err} > {TOL}");
}

#[test]
fn spade_generator() {
    check_generator("spade_generator", "latest_net_G.pth");
}

#[test]
fn spade_generator_vae_with_z() {
    check_generator("spade_generator_vae", "latest_net_G.pth");
}

#[test]
fn pix2pixhd_generator() {
    check_generator("pix2pixhd_generator", "latest_net_G.pth");
}

#[test]
fn image_encoder_legacy_pth() {
    let dir = case("image_encoder");
    let opt = NetOptions::from_opt_file(&dir.join("opt.txt")).unwrap();
    let (e, _) =
        load_network(&dir.join("latest_net_E.pth"), &opt, &Device::Cpu, true, |vb| ConvEncoder::new(&opt, vb)).unwrap();
    let (mu, logvar) = e.forward_t(&npy(&dir.join("style.npy")), false).unwrap();
    let e_mu = max_abs(&mu, &npy(&dir.join("expected_mu.npy")));
    let e_lv = max_abs(&logvar, &npy(&dir.join("expected_logvar.npy")));
    println!("encoder: mu {e_mu:.3e} logvar {e_lv:.3e}");
    assert!(e_mu <= TOL && e_lv <= TOL, "encoder: mu {e_mu}, logvar {e_lv}");
}

#[test]
fn multiscale_discriminator_eval_train_and_losses() {
    let dir = case("multiscale_discriminator");
    let opt = NetOptions::from_opt_file(&dir.join("opt.txt")).unwrap();
    let sem = npy(&dir.join("semantics.npy"));
    let ours = semantics_from_pngs(&dir, &opt, sem.dim(0).unwrap());
    assert_eq!(max_abs(&ours, &sem), 0.0, "semantics differ");
    let fake = npy(&dir.join("fake.npy"));
    let real = npy(&dir.join("real.npy"));
    let input =
        Tensor::cat(&[Tensor::cat(&[&sem, &fake], 1).unwrap(), Tensor::cat(&[&sem, &real], 1).unwrap()], 0).unwrap();
    let expected: std::collections::HashMap<String, Tensor> =
        Tensor::read_npz(dir.join("expected.npz")).unwrap().into_iter().collect();
    let case_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    for mode in ["eval", "train"] {
        let (d, _) = load_network(&dir.join("latest_net_D.pth"), &opt, &Device::Cpu, true, |vb| {
            MultiscaleDiscriminator::new(&opt, vb)
        })
        .unwrap();
        let outs = d.forward_t(&input, mode == "train").unwrap();
        assert_eq!(outs.len(), opt.num_d);
        let mut worst = 0f32;
        for (i, scale) in outs.iter().enumerate() {
            assert_eq!(scale.len(), opt.n_layers_d + 1);
            for (j, t) in scale.iter().enumerate() {
                let key = format!("{mode}_D{i}_layer{j}");
                let exp = expected.get(&key).unwrap_or_else(|| panic!("no {key}")).to_dtype(DType::F32).unwrap();
                let err = max_abs(t, &exp);
                worst = worst.max(err);
                assert!(err <= TOL, "{key}: max abs error {err}");
            }
        }
        println!("discriminator {mode}: max abs error {worst:.3e}");
        if mode == "eval" {
            let n = sem.dim(0).unwrap();
            let split = |outs: &Vec<Vec<Tensor>>, first: bool| -> Vec<Vec<Tensor>> {
                outs.iter()
                    .map(|s| {
                        s.iter().map(|t| if first { t.narrow(0, 0, n) } else { t.narrow(0, n, n) }.unwrap()).collect()
                    })
                    .collect()
            };
            let (pf, pr) = (split(&outs, true), split(&outs, false));
            let losses = &case_json["losses"];
            let val = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            let check = |name: &str, got: f64| {
                let want = losses[name].as_f64().unwrap();
                println!("loss {name}: ours {got:.7} reference {want:.7}");
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{name}: {got} vs {want}");
            };
            check("D_fake", val(gan_loss(&pf, false, true, GanMode::Hinge).unwrap()));
            check("D_real", val(gan_loss(&pr, true, true, GanMode::Hinge).unwrap()));
            check("G_GAN", val(gan_loss(&pf, true, false, GanMode::Hinge).unwrap()));
            check("G_GAN_Feat", val(feature_matching(&pf, &pr, 10.0).unwrap()));
            let k = kld(&npy(&dir.join("kld_mu.npy")), &npy(&dir.join("kld_logvar.npy"))).unwrap();
            check("KLD", val((k * 0.05).unwrap()));
        }
    }
}
