//! Reads the real checkpoints in the shared fixture folder (`$SPADE_SHARED`, else
//! `<CARGO_MANIFEST_DIR>/../../../shared`). Expected numbers were obtained with
//! `torch.load` (PyTorch 2.x): sums are float64 sums of the stored values.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use spade_io::{checkpoint, pth};

fn shared() -> PathBuf {
    let dir = match std::env::var_os("SPADE_SHARED") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    assert!(
        dir.join("fixtures").is_dir(),
        "shared fixture folder not found at {} (set SPADE_SHARED to the folder holding \
         fixtures/)",
        dir.display()
    );
    dir
}

fn fixture(rel: &str) -> PathBuf {
    let p = shared().join("fixtures").join(rel);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p
}

fn sum(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().sum()
}

fn assert_close(name: &str, got: f64, want: f64) {
    let tol = 1e-7 * want.abs().max(1e-25);
    assert!((got - want).abs() <= tol, "{name}: sum {got:e}, expected {want:e}");
}

struct Expect {
    rel: &'static str,
    legacy: bool,
    count: usize,
    /// Number of i64 tensors (num_batches_tracked) and their common value.
    i64s: (usize, i64),
    /// Index of the first i64 tensor and its name.
    first_i64: Option<(usize, &'static str)>,
    /// (name, shape, sum) of the first three and the last two tensors.
    head: [(&'static str, &'static [usize], f64); 3],
    tail: [(&'static str, &'static [usize], f64); 2],
    /// Sum over all f32 tensors.
    total: f64,
}

const EXPECT: &[Expect] = &[
    Expect {
        rel: "parity/image_encoder/latest_net_E.pth",
        legacy: true,
        count: 22,
        i64s: (0, 0),
        first_i64: None,
        head: [
            ("layer1.0.weight_orig", &[8, 3, 3, 3], -2.7557694105198607),
            ("layer1.0.weight_u", &[8], 1.8294662251137197),
            ("layer1.0.weight_v", &[27], 1.1057296842336655),
        ],
        tail: [("fc_var.weight", &[256, 1024], -15.207080538049425), ("fc_var.bias", &[256], -2.792761879740283)],
        total: -20.432907004947957,
    },
    Expect {
        rel: "parity/multiscale_discriminator/latest_net_D.pth",
        legacy: false,
        count: 26,
        i64s: (0, 0),
        first_i64: None,
        head: [
            ("discriminator_0.model0.0.weight", &[8, 10, 4, 4], 2.4456733818187786),
            ("discriminator_0.model0.0.bias", &[8], -0.17665675142779946),
            ("discriminator_0.model1.0.0.weight_orig", &[16, 8, 4, 4], -0.4845893340998373),
        ],
        tail: [
            ("discriminator_1.model4.0.weight", &[1, 64, 4, 4], -0.3247365138859095),
            ("discriminator_1.model4.0.bias", &[1], 0.23237097263336182),
        ],
        total: -18.37534155253472,
    },
    Expect {
        rel: "parity/pix2pixhd_generator/latest_net_G.pth",
        legacy: false,
        count: 35,
        i64s: (0, 0),
        first_i64: None,
        head: [
            ("model.1.0.weight_orig", &[8, 7, 7, 7], -4.716075785447174),
            ("model.1.0.weight_u", &[8], 0.7287507951259613),
            ("model.1.0.weight_v", &[343], -0.32294610947428737),
        ],
        tail: [("model.18.weight", &[3, 8, 7, 7], 1.133845188533087), ("model.18.bias", &[3], -0.4113089367747307)],
        total: 13.956891466588118,
    },
    Expect {
        rel: "parity/spade_generator/latest_net_G.pth",
        legacy: false,
        count: 234,
        i64s: (18, 0),
        first_i64: Some((12, "head_0.norm_0.param_free_norm.num_batches_tracked")),
        head: [
            ("fc.weight", &[128, 8, 3, 3], -3.1787419802803925),
            ("fc.bias", &[128], 0.9545904350816272),
            ("head_0.conv_0.bias", &[128], 0.7406869787591859),
        ],
        tail: [("conv_img.weight", &[3, 8, 3, 3], -1.299049460208924e-19), ("conv_img.bias", &[3], 1.143473893404007)],
        total: 1297.0234220990544,
    },
    Expect {
        rel: "parity/spade_generator_vae/latest_net_G.pth",
        legacy: false,
        count: 234,
        i64s: (18, 0),
        first_i64: Some((12, "head_0.norm_0.param_free_norm.num_batches_tracked")),
        head: [
            ("fc.weight", &[512, 256], -3.759177314899347),
            ("fc.bias", &[512], -0.00499803083948791),
            ("head_0.conv_0.bias", &[128], -0.3760208876046818),
        ],
        tail: [
            ("conv_img.weight", &[3, 8, 3, 3], 3.422420250673887e-21),
            ("conv_img.bias", &[3], -0.15000562369823456),
        ],
        total: 1331.3345538338813,
    },
    Expect {
        rel: "parity/train_step/before_net_D.pth",
        legacy: false,
        count: 26,
        i64s: (0, 0),
        first_i64: None,
        head: [
            ("discriminator_0.model0.0.weight", &[8, 11, 4, 4], 1.202949336671736),
            ("discriminator_0.model0.0.bias", &[8], -0.135234730434604),
            ("discriminator_0.model1.0.0.weight_orig", &[16, 8, 4, 4], 2.3052442776988755),
        ],
        tail: [
            ("discriminator_1.model4.0.weight", &[1, 64, 4, 4], -0.08961226292740321),
            ("discriminator_1.model4.0.bias", &[1], -0.0698053315281868),
        ],
        total: -23.0406887735827,
    },
    Expect {
        rel: "parity/train_step/after_net_D.pth",
        legacy: false,
        count: 26,
        i64s: (0, 0),
        first_i64: None,
        head: [
            ("discriminator_0.model0.0.weight", &[8, 11, 4, 4], 1.2048023531679064),
            ("discriminator_0.model0.0.bias", &[8], -0.13363472593482584),
            ("discriminator_0.model1.0.0.weight_orig", &[16, 8, 4, 4], 2.2676459748181514),
        ],
        tail: [
            ("discriminator_1.model4.0.weight", &[1, 64, 4, 4], 0.061587117990711704),
            ("discriminator_1.model4.0.bias", &[1], -0.06940533220767975),
        ],
        total: -23.663102344607978,
    },
    Expect {
        rel: "parity/train_step/before_net_G.pth",
        legacy: false,
        count: 234,
        i64s: (18, 0),
        first_i64: Some((12, "head_0.norm_0.param_free_norm.num_batches_tracked")),
        head: [
            ("fc.weight", &[64, 8, 3, 3], 10.5943129410025),
            ("fc.bias", &[64], -0.8271906231530011),
            ("head_0.conv_0.bias", &[64], -0.8270058145280927),
        ],
        tail: [("conv_img.weight", &[3, 4, 3, 3], -1.6095266232441645), ("conv_img.bias", &[3], -0.011023826897144318)],
        total: 904.3177797013823,
    },
    Expect {
        rel: "parity/train_step/after_net_G.pth",
        legacy: false,
        count: 234,
        // Two training forwards happened between before and after.
        i64s: (18, 2),
        first_i64: Some((12, "head_0.norm_0.param_free_norm.num_batches_tracked")),
        head: [
            ("fc.weight", &[64, 8, 3, 3], 10.596312827723523),
            ("fc.bias", &[64], -0.8271962129510939),
            ("head_0.conv_0.bias", &[64], -0.8270432327408344),
        ],
        tail: [("conv_img.weight", &[3, 4, 3, 3], -1.6045266352884937), ("conv_img.bias", &[3], -0.010723823681473732)],
        total: 835.3554831454917,
    },
    Expect {
        // A plain dict (not an OrderedDict) of gradients.
        rel: "parity/train_step/grads_D.pth",
        legacy: false,
        count: 14,
        i64s: (0, 0),
        first_i64: None,
        head: [
            ("discriminator_0.model0.0.weight", &[8, 11, 4, 4], -0.140351135855326),
            ("discriminator_0.model0.0.bias", &[8], -0.02449675789102912),
            ("discriminator_0.model1.0.0.weight_orig", &[16, 8, 4, 4], 0.3453163688304812),
        ],
        tail: [
            ("discriminator_1.model4.0.weight", &[1, 64, 4, 4], -6.636686474228554),
            ("discriminator_1.model4.0.bias", &[1], -0.020408153533935547),
        ],
        total: -10.530588787322671,
    },
    Expect {
        rel: "parity/train_step/grads_G.pth",
        legacy: false,
        count: 144,
        i64s: (0, 0),
        first_i64: None,
        head: [
            ("fc.weight", &[64, 8, 3, 3], 4.2724423110485077e-07),
            ("fc.bias", &[64], 2.2817403078079224e-07),
            ("head_0.conv_0.bias", &[64], 2.4563632905483246e-08),
        ],
        tail: [("conv_img.weight", &[3, 4, 3, 3], -53.534887535497546), ("conv_img.bias", &[3], -1.3263334967195988)],
        total: 694.0659564735178,
    },
    Expect {
        rel: "fid/pt_inception_random.pth",
        legacy: false,
        count: 566,
        i64s: (94, 0),
        first_i64: Some((5, "Conv2d_1a_3x3.bn.num_batches_tracked")),
        head: [
            ("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3], 6.839901352141169),
            ("Conv2d_1a_3x3.bn.weight", &[32], 31.5090371966362),
            ("Conv2d_1a_3x3.bn.bias", &[32], -0.6672011497430503),
        ],
        tail: [("fc.weight", &[1008, 2048], -55.41719507690404), ("fc.bias", &[1008], -4.6353114190278575)],
        total: 34317.65255091549,
    },
];

fn check(e: &Expect) {
    let path = fixture(e.rel);
    let head = std::fs::read(&path).unwrap();
    assert_eq!(
        head.starts_with(&[0x80, 0x02, 0x8a, 0x0a]),
        e.legacy,
        "{}: legacy format expected: {}",
        e.rel,
        e.legacy
    );
    assert_eq!(head.starts_with(b"PK\x03\x04"), !e.legacy, "{}", e.rel);
    drop(head);

    let sd = checkpoint::load_state_dict(&path).unwrap();
    assert_eq!(sd.len(), e.count, "{}: tensor count", e.rel);

    let i64s: Vec<_> = sd.iter().enumerate().filter(|(_, (_, t))| t.dtype() == DType::I64).collect();
    assert_eq!(i64s.len(), e.i64s.0, "{}: number of i64 tensors", e.rel);
    for (_, (name, t)) in &i64s {
        assert!(name.ends_with("num_batches_tracked"), "{}: {name}", e.rel);
        assert_eq!(t.dims(), [] as [usize; 0], "{name}");
        assert_eq!(t.to_scalar::<i64>().unwrap(), e.i64s.1, "{name}");
    }
    if let Some((idx, name)) = e.first_i64 {
        assert_eq!(i64s[0].0, idx, "{}", e.rel);
        assert_eq!(i64s[0].1 .0, name, "{}", e.rel);
    }
    for (name, t) in &sd {
        assert!(t.dtype() == DType::F32 || t.dtype() == DType::I64, "{}: {name} is {:?}", e.rel, t.dtype());
    }

    let n = sd.len();
    let picks = e.head.iter().zip(0..).chain(e.tail.iter().zip([n - 2, n - 1]));
    for ((name, shape, s), idx) in picks {
        let (got_name, t) = &sd[idx];
        assert_eq!(got_name, name, "{}: name at index {idx}", e.rel);
        assert_eq!(t.dims(), *shape, "{}: {name}", e.rel);
        assert_close(name, sum(t), *s);
    }
    let total: f64 = sd.iter().filter(|(_, t)| t.dtype() == DType::F32).map(|(_, t)| sum(t)).sum();
    assert_close(&format!("{} total", e.rel), total, e.total);
}

#[test]
fn legacy_image_encoder() {
    check(&EXPECT[0]);
    let sd = pth::load(&fixture(EXPECT[0].rel)).unwrap();
    let names: Vec<&str> = sd.iter().map(|(n, _)| n.as_str()).collect();
    // Spectral-norm triplets per layer, then the two linear heads.
    for (i, layer) in (1..=6).enumerate() {
        assert_eq!(
            names[3 * i..3 * i + 3],
            [
                format!("layer{layer}.0.weight_orig"),
                format!("layer{layer}.0.weight_u"),
                format!("layer{layer}.0.weight_v"),
            ]
        );
    }
    assert_eq!(names[18..], ["fc_mu.weight", "fc_mu.bias", "fc_var.weight", "fc_var.bias"]);
    let get = |n: &str| &sd.iter().find(|(k, _)| k == n).unwrap().1;
    // ngf = 8: fc input is 8 * ngf * 4 * 4 = 1024.
    assert_eq!(get("fc_mu.weight").dims(), [256, 1024]);
    assert_eq!(get("layer6.0.weight_orig").dims(), [64, 64, 3, 3]);
    // Spectral-norm vectors are unit vectors sized (out) and (in * kh * kw).
    for layer in 1..=6 {
        let w = get(&format!("layer{layer}.0.weight_orig"));
        let u = get(&format!("layer{layer}.0.weight_u"));
        let v = get(&format!("layer{layer}.0.weight_v"));
        assert_eq!(u.dims(), [w.dims()[0]]);
        assert_eq!(v.dims(), [w.elem_count() / w.dims()[0]]);
        for x in [u, v] {
            let norm = x.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "layer{layer}: norm {norm}");
        }
    }
    // Exact first values (bit patterns as stored).
    let first = |n: &str| get(n).flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
    assert_eq!(first("layer1.0.weight_orig"), -0.18117569386959076);
    assert_eq!(first("fc_mu.weight"), -0.051655013114213943);
}

#[test]
fn zip_parity_networks() {
    for e in &EXPECT[1..5] {
        check(e);
    }
}

#[test]
fn zip_train_step() {
    for e in &EXPECT[5..11] {
        check(e);
    }
}

#[test]
fn zip_inception() {
    check(&EXPECT[11]);
}

#[test]
fn real_checkpoint_round_trips() {
    let src = fixture("parity/spade_generator/latest_net_G.pth");
    let sd = pth::load(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("latest_net_G.pth");
    pth::save(&out, &sd).unwrap();
    let st = dir.path().join("latest_net_G.safetensors");
    checkpoint::save_safetensors(&st, &sd).unwrap();
    let back = pth::load(&out).unwrap();
    let mut back_st = checkpoint::load_state_dict(&st).unwrap();
    assert_eq!(back.len(), sd.len());
    assert_eq!(back_st.len(), sd.len());
    back_st.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, t)) in sd.iter().enumerate() {
        assert_eq!(&back[i].0, name);
        let j = back_st.binary_search_by(|(n, _)| n.cmp(name)).unwrap();
        for u in [&back[i].1, &back_st[j].1] {
            assert_eq!(u.dtype(), t.dtype(), "{name}");
            assert_eq!(u.dims(), t.dims(), "{name}");
            let diff = (u.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
    }
}
