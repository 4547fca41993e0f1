//! Parity of the paper's three evaluation segmenters (DeepLabV2-ResNet101 MSC, DRN-D-105,
//! UperNet-ResNet101) with their reference PyTorch code, on the fixtures of
//! `shared/fixtures/segmenters` (its README describes them): weights defined by a formula (no
//! weight files), the input images, and the reference's preprocessed tensors, logits,
//! full-resolution outputs, predictions and metrics.
//!
//! The fixture folder is `$SPADE_SEGMENTER_FIXTURES`, by default `../shared/fixtures/segmenters`
//! relative to the workspace root. The formula's constants (A, B, C, gain2) are read from
//! `weight_rule` in each `case.json`, and the state_dict layout (entry order, keys, shapes, and
//! the sum / first / last value of each tensor) from `<net>/weights_manifest.json`, so other
//! cases in the same format are checked the same way.
//!
//! Tolerances: logits within 1e-3 of the reference's largest logit (max abs error / max abs
//! value); predictions identical except at near-ties (pixels whose reference top-1 / top-2
//! margin is below 1e-4 or below twice the measured full-resolution error); the metrics of the
//! predictions against `label.png` as the reference's `metrics` when the predictions agree.
//! Run in release: `cargo test --release -p spade-metrics --features shared-fixtures --test
//! shared_segmenters -- --nocapture` (prints the figures).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use spade_metrics::deeplabv2::{DeepLabV2, DeepLabV2Config, DeepLabV2Segmenter};
use spade_metrics::drn::{DrnConfig, DrnSeg, DrnSegmenter};
use spade_metrics::resize::{resize_bilinear, resize_bilinear_by_factor, rgb8_to_tensor};
use spade_metrics::segmentation::{ConfusionMatrix, DontCare, Preprocessing, Segmenter};
use spade_metrics::upernet::{UperNetConfig, UperNetDecoder, UperNetEncoder, UperNetSegmenter};
use spade_metrics::{deeplabv2, drn, segnet, upernet};

/// Logits: max abs error over max abs reference value.
const LOGIT_REL_TOL: f64 = 1e-3;
/// Preprocessed input: max abs error (the reference rounds once from float64, we in float32).
const INPUT_ABS_TOL: f64 = 1e-4;
/// Reference margins below this are float32 noise (the fixture README's bound).
const NEAR_TIE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    let dir = match std::env::var_os("SPADE_SEGMENTER_FIXTURES") {
        Some(d) => PathBuf::from(d),
        // The workspace root is two levels above this crate.
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/segmenters"),
    };
    assert!(
        dir.join("README.md").is_file(),
        "segmenter fixtures not found at {} (set SPADE_SEGMENTER_FIXTURES to the folder with deeplabv2/, drn/, upernet/)",
        dir.display()
    );
    dir
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The case folders of a network (`case0`, `case1`, ...), in order.
fn cases(net_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(net_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", net_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no case*/case.json in {}", net_dir.display());
    v
}

/// The formula's constants, from `weight_rule` of a case.json.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rule {
    a: f64,
    b: f64,
    c: f64,
    gain2: f64,
}

impl Rule {
    fn from_case(case: &Value) -> Rule {
        let r = &case["weight_rule"];
        let get = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("weight_rule.{k} missing or not a number: {r}"));
        Rule { a: get("A"), b: get("B"), c: get("C"), gain2: get("gain2") }
    }

    /// `s = sin(((A*i) + (B*k)) + (C*(i*i)))` in float64 for the `n` elements of entry `k`.
    fn s(&self, n: usize, k: usize) -> impl Iterator<Item = f64> + '_ {
        let k = k as f64;
        (0..n).map(move |i| {
            let i = i as f64;
            (((self.a * i) + (self.b * k)) + (self.c * (i * i))).sin()
        })
    }
}

/// One entry of a `weights_manifest.json`: `[k, key, shape, rule, sum, first, last]`.
struct Entry {
    k: usize,
    key: String,
    shape: Vec<usize>,
    sum: Option<f64>,
    first: Option<f64>,
    last: Option<f64>,
}

fn entries(manifest: &Value, list: &str) -> Vec<Entry> {
    let cols: Vec<&str> =
        manifest["columns"].as_array().expect("columns").iter().map(|c| c.as_str().unwrap()).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name).unwrap_or_else(|| panic!("manifest column {name}"));
    let (ck, ckey, cshape, csum, cfirst, clast) =
        (col("k"), col("key"), col("shape"), col("sum"), col("first"), col("last"));
    manifest[list]
        .as_array()
        .unwrap_or_else(|| panic!("manifest has no {list}"))
        .iter()
        .map(|e| Entry {
            k: e[ck].as_u64().unwrap() as usize,
            key: e[ckey].as_str().unwrap().to_string(),
            shape: e[cshape].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            sum: e[csum].as_f64(),
            first: e[cfirst].as_f64(),
            last: e[clast].as_f64(),
        })
        .collect()
}

/// fyu/drn's `fill_up_weights`: the bilinear kernel in every channel.
fn bilinear_up(shape: &[usize]) -> Vec<f32> {
    let (c, kh, kw) = (shape[0], shape[2], shape[3]);
    let f = (kw as f64 / 2.0).ceil();
    let cc = (2.0 * f - 1.0 - f % 2.0) / (2.0 * f);
    let mut one = vec![0f32; kh * kw];
    for i in 0..kh {
        for j in 0..kw {
            one[i * kw + j] = ((1.0 - (i as f64 / f - cc).abs()) * (1.0 - (j as f64 / f - cc).abs())) as f32;
        }
    }
    (0..c * shape[1]).flat_map(|_| one.iter().copied()).collect()
}

/// The state dict of the README's weight rule, in the manifest's order, each tensor checked
/// against the manifest's sum / first / last.
fn state_dict(entries: &[Entry], rule: &Rule, dev: &Device) -> Vec<(String, Tensor)> {
    let bn: HashSet<String> =
        entries.iter().filter_map(|e| e.key.strip_suffix(".running_mean").map(str::to_string)).collect();
    let mut out = Vec::with_capacity(entries.len());
    for (pos, e) in entries.iter().enumerate() {
        assert_eq!(e.k, pos, "manifest entry {} is out of order", e.key);
        let n: usize = e.shape.iter().product();
        let (prefix, leaf) = e.key.rsplit_once('.').unwrap_or(("", e.key.as_str()));
        let is_bn = bn.contains(prefix);
        let s = || rule.s(n, e.k);
        let values: Option<Vec<f32>> = match leaf {
            "num_batches_tracked" => None,
            "_tmp_running_mean" => Some(vec![0.0; n]),
            "_tmp_running_var" | "_running_iter" => Some(vec![1.0; n]),
            "running_mean" => Some(s().map(|v| (0.1 * v) as f32).collect()),
            "running_var" => Some(s().map(|v| (1.0 + 0.5 * v.abs()) as f32).collect()),
            "weight" if is_bn => Some(s().map(|v| (1.0 + 0.1 * v) as f32).collect()),
            "bias" if is_bn => Some(s().map(|v| (0.1 * v) as f32).collect()),
            // DRNSeg's `up` (requires_grad=False) keeps its bilinear construction.
            "weight" if e.key == "up.weight" => Some(bilinear_up(&e.shape)),
            "weight" => {
                let fan_in = (n / e.shape[0]) as f64;
                let g = (rule.gain2 / fan_in).sqrt();
                Some(s().map(|v| (g * v) as f32).collect())
            }
            "bias" => Some(s().map(|v| (0.01 * v) as f32).collect()),
            other => panic!("{}: no rule for a `{other}` entry", e.key),
        };
        let t = match values {
            None => Tensor::new(0i64, dev).unwrap(),
            Some(v) => {
                let sum: f64 = v.iter().map(|&x| x as f64).sum();
                let abs: f64 = v.iter().map(|&x| (x as f64).abs()).sum();
                if let Some(ms) = e.sum {
                    assert!((sum - ms).abs() <= 1e-9 * abs.max(1.0), "{}: sum {sum} but the manifest has {ms}", e.key);
                }
                if let (Some(f), Some(l)) = (e.first, e.last) {
                    // The float32 values exactly: serde_json's float parsing may be one f64
                    // ulp off (no `float_roundtrip`), far below one f32 ulp.
                    let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-30);
                    assert!(
                        same(v[0] as f64, f) && same(v[n - 1] as f64, l),
                        "{}: first / last value {} / {} but the manifest has {f} / {l}",
                        e.key,
                        v[0],
                        v[n - 1]
                    );
                }
                Tensor::from_vec(v, e.shape.as_slice(), dev).unwrap()
            }
        };
        out.push((e.key.clone(), t));
    }
    out
}

fn npy(path: &Path) -> Tensor {
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_dtype(DType::F32).unwrap()
}

fn png_gray(path: &Path) -> (Vec<u32>, usize, usize) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_luma8();
    let (w, h) = img.dimensions();
    (img.as_raw().iter().map(|&v| v as u32).collect(), h as usize, w as usize)
}

fn image01(path: &Path, dev: &Device) -> Tensor {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    rgb8_to_tensor(&img, dev).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Max abs error and max abs reference value of two tensors of the same shape.
fn compare(what: &str, got: &Tensor, want: &Tensor) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (flat(got), flat(want));
    let err = g.iter().zip(&w).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max);
    let scale = w.iter().map(|b| (*b as f64).abs()).fold(0.0, f64::max);
    assert!(err.is_finite(), "{what}: non-finite values");
    (err, scale)
}

/// Asserts the logit tolerance; returns the relative error.
fn check_logits(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    let (err, scale) = compare(what, got, want);
    let rel = err / scale;
    println!("  {what}: max abs error {err:.3e} over max |ref| {scale:.3e} = {rel:.3e} relative");
    assert!(
        rel <= LOGIT_REL_TOL,
        "{what}: max abs error {err:.3e} is {rel:.3e} of max |ref| {scale:.3e} (> {LOGIT_REL_TOL})"
    );
    rel
}

/// The rows `probe_rows` x columns `probe_cols` of a `(1, C, H, W)` tensor.
fn probe(full: &Tensor, case: &Value) -> Tensor {
    let idx = |k: &str| -> Tensor {
        let v: Vec<u32> = case[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let n = v.len();
        Tensor::from_vec(v, n, full.device()).unwrap()
    };
    full.index_select(&idx("probe_rows"), 2).unwrap().index_select(&idx("probe_cols"), 3).unwrap()
}

/// Max and top-1 minus top-2 over classes of `(1, C, H, W)` logits, as `(H, W)`.
fn max_and_margin(full: &Tensor) -> (Tensor, Tensor) {
    let (_, c, h, w) = full.dims4().unwrap();
    let v = flat(full);
    let (mut mx, mut mg) = (vec![0f32; h * w], vec![0f32; h * w]);
    for p in 0..h * w {
        let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for k in 0..c {
            let x = v[k * h * w + p];
            if x > a {
                b = a;
                a = x;
            } else if x > b {
                b = x;
            }
        }
        mx[p] = a;
        mg[p] = a - b;
    }
    let dev = full.device();
    (Tensor::from_vec(mx, (h, w), dev).unwrap(), Tensor::from_vec(mg, (h, w), dev).unwrap())
}

/// What a network gives for one case, to be compared with the reference.
struct Outputs {
    /// The network's own-resolution logits (`logits.npy`).
    logits: Tensor,
    /// Full-resolution pre-softmax logits (`up_max.npy`, `up_margin.npy`).
    up_logits: Tensor,
    /// The full-resolution output the reference probes (`up_probe.npy`).
    up_output: Tensor,
}

/// Class ids of the ground truth of `label.png`, mapped as the dataset's evaluation does, with
/// `None` for don't care.
type LabelMap = fn(u32) -> Option<u32>;

struct Figures {
    logits_rel: f64,
    pred_mismatch: usize,
    near_ties: usize,
}

/// Checks one case: the preprocessing of `image.png` against `input.npy`, the logits, the
/// full-resolution output, the predictions of `segmenter` on `image.png` (the whole pipeline:
/// normalisation, network, upsampling, argmax) against `pred.png`, and the metrics against
/// `label.png` with `label_map`.
fn check_case(
    dir: &Path,
    pre: &Preprocessing,
    run: &dyn Fn(&Tensor) -> Outputs,
    segmenter: &dyn Segmenter,
    n_classes: usize,
    label_map: LabelMap,
) -> Figures {
    let dev = Device::Cpu;
    let case = read_json(&dir.join("case.json"));
    println!("{}:", dir.display());
    let input = npy(&dir.join("input.npy"));
    let img = image01(&dir.join("image.png"), &dev);
    let ours = segnet::normalize(&img, pre, &dev).unwrap();
    let (err, _) = compare("input", &ours, &input);
    println!("  preprocessed input: max abs error {err:.3e}");
    assert!(err <= INPUT_ABS_TOL, "{}: preprocessing differs from input.npy by {err:.3e}", dir.display());

    let out = run(&input);
    let logits_rel = check_logits("logits", &out.logits, &npy(&dir.join("logits.npy")));
    check_logits("full-resolution output (probed)", &probe(&out.up_output, &case), &npy(&dir.join("up_probe.npy")));
    let (mx, mg) = max_and_margin(&out.up_logits);
    check_logits("full-resolution max logit", &mx, &npy(&dir.join("up_max.npy")));
    let (margin_err, _) = compare("margin", &mg, &npy(&dir.join("up_margin.npy")));
    println!("  full-resolution top-1 - top-2 margin: max abs error {margin_err:.3e}");

    // Predictions of the whole pipeline from the image.
    let (_, _, h, w) = img.dims4().unwrap();
    assert_eq!(segmenter.input_resolution(), (h, w));
    let pred: Vec<u32> =
        flat(&segmenter.segment(&img).unwrap().to_dtype(DType::F32).unwrap()).into_iter().map(|v| v as u32).collect();
    let (want, ph, pw) = png_gray(&dir.join("pred.png"));
    assert_eq!((ph, pw), (h, w), "pred.png size");
    let ref_margin = flat(&npy(&dir.join("up_margin.npy")));
    let tie = NEAR_TIE.max(2.0 * margin_err);
    let (mut mismatch, mut near_ties) = (0, 0);
    for p in 0..h * w {
        if ref_margin[p] as f64 <= tie {
            near_ties += 1;
        }
        if pred[p] != want[p] {
            mismatch += 1;
            assert!(
                ref_margin[p] as f64 <= tie,
                "{}: pixel ({}, {}) predicted {} but the reference has {} with margin {:.3e} (not a near-tie; tie bound {tie:.1e})",
                dir.display(),
                p / w,
                p % w,
                pred[p],
                want[p],
                ref_margin[p]
            );
        }
    }
    println!("  predictions: {mismatch} of {} pixels differ ({near_ties} near-ties below {tie:.1e})", h * w);

    // Metrics against the label, as the reference computes them.
    let (label, lh, lw) = png_gray(&dir.join("label.png"));
    assert_eq!((lh, lw), (h, w));
    let dont_care = n_classes as u32;
    let gt: Vec<u32> = label.iter().map(|&v| label_map(v).unwrap_or(dont_care)).collect();
    let mut cm = ConfusionMatrix::new(n_classes, Some(dont_care));
    cm.add(&gt, &pred).unwrap();
    let s = cm.scores(DontCare::Ignore);
    let m = &case["metrics"];
    let (acc, miou) = (m["pixel_accuracy"].as_f64().unwrap(), m["miou"].as_f64().unwrap());
    assert_eq!(s.pixels, m["valid_pixels"].as_u64().unwrap(), "valid pixels");
    println!(
        "  pixel accuracy {:.6} (reference {acc:.6}), mIoU {:.6} (reference {miou:.6})",
        s.pixel_accuracy, s.mean_iou
    );
    if mismatch == 0 {
        assert!((s.pixel_accuracy - acc).abs() < 1e-12 && (s.mean_iou - miou).abs() < 1e-12, "metrics differ");
    } else {
        // Each flipped pixel moves accuracy by at most one pixel's share.
        assert!((s.pixel_accuracy - acc).abs() <= mismatch as f64 / s.pixels as f64 + 1e-12);
    }
    Figures { logits_rel, pred_mismatch: mismatch, near_ties }
}

fn summary(net: &str, figs: &[Figures]) {
    let worst = figs.iter().map(|f| f.logits_rel).fold(0.0, f64::max);
    let mism: usize = figs.iter().map(|f| f.pred_mismatch).sum();
    let ties: usize = figs.iter().map(|f| f.near_ties).sum();
    println!("{net}: max relative logit error {worst:.3e} over {} cases; {mism} prediction(s) differ, at near-ties ({ties} near-tie pixels)", figs.len());
}

fn origin(dir: &Path) -> PathBuf {
    dir.join("weights_manifest.json")
}

fn rule_of(dir: &Path) -> Rule {
    let cs = cases(dir);
    let rule = Rule::from_case(&read_json(&cs[0].join("case.json")));
    for c in &cs[1..] {
        assert_eq!(Rule::from_case(&read_json(&c.join("case.json"))), rule, "{}: another weight rule", c.display());
    }
    rule
}

#[test]
fn deeplabv2_matches_deeplab_pytorch() {
    let dev = Device::Cpu;
    let dir = fixtures().join("deeplabv2");
    let rule = rule_of(&dir);
    let manifest = read_json(&dir.join("weights_manifest.json"));
    let sd = state_dict(&entries(&manifest, "entries"), &rule, &dev);
    let cfg = DeepLabV2Config::cocostuff164k();
    let net = segnet::build_strict(sd, &origin(&dir), "DeepLabV2", &dev, |vb| DeepLabV2::new(&cfg, vb)).unwrap();
    let mut figs = Vec::new();
    for case_dir in cases(&dir) {
        let case = read_json(&case_dir.join("case.json"));
        let [_, _, h, w] = <[usize; 4]>::try_from(
            case["shapes"]["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        // Every scale of the MSC wrapper on its own.
        let x = npy(&case_dir.join("input.npy"));
        for (p, file) in [(1.0, "base_s1.00.npy"), (0.5, "base_s0.50.npy"), (0.75, "base_s0.75.npy")] {
            let xs = if p == 1.0 { x.clone() } else { resize_bilinear_by_factor(&x, p).unwrap() };
            check_logits(
                &format!("base network at scale {p}"),
                &net.forward_base(&xs).unwrap(),
                &npy(&case_dir.join(file)),
            );
        }
        let run = |x: &Tensor| {
            let logits = net.forward(x).unwrap();
            let up = resize_bilinear(&logits, h, w).unwrap();
            Outputs { logits, up_logits: up.clone(), up_output: up }
        };
        let seg = DeepLabV2Segmenter::from_net(net.clone(), &cfg, (h, w), "formula".into(), &dev);
        figs.push(check_case(&case_dir, &deeplabv2::preprocessing(), &run, &seg, 182, |v| (v < 182).then_some(v)));
    }
    summary("deeplabv2", &figs);
}

#[test]
fn drn_d_105_matches_fyu_drn() {
    let dev = Device::Cpu;
    let dir = fixtures().join("drn");
    let rule = rule_of(&dir);
    let manifest = read_json(&dir.join("weights_manifest.json"));
    let sd = state_dict(&entries(&manifest, "entries"), &rule, &dev);
    let cfg = DrnConfig::drn_d_105_cityscapes();
    let net = segnet::build_strict(sd, &origin(&dir), "DRN-D-105", &dev, |vb| DrnSeg::new(&cfg, vb)).unwrap();
    let mut figs = Vec::new();
    for case_dir in cases(&dir) {
        let run = |x: &Tensor| {
            let logits = net.forward_coarse(x).unwrap();
            let up = net.forward(x).unwrap();
            let log_softmax = candle_nn::ops::log_softmax(&up, 1).unwrap();
            Outputs { logits, up_logits: up, up_output: log_softmax }
        };
        let (_, h, w) = png_gray(&case_dir.join("pred.png"));
        let seg = DrnSegmenter::from_net(net.clone(), &cfg, (h, w), "formula".into(), &dev);
        // The fixture's labels are trainIds already (the segmenter's labelId map is not applied).
        figs.push(check_case(&case_dir, &drn::preprocessing(), &run, &seg, 19, |v| (v < 19).then_some(v)));
    }
    summary("drn", &figs);
}

#[test]
fn upernet_resnet101_matches_csail() {
    let dev = Device::Cpu;
    let dir = fixtures().join("upernet");
    let rule = rule_of(&dir);
    let manifest = read_json(&dir.join("weights_manifest.json"));
    let cfg = UperNetConfig::ade20k_resnet101();
    let enc_sd = state_dict(&entries(&manifest, "encoder_entries"), &rule, &dev);
    let dec_sd = state_dict(&entries(&manifest, "decoder_entries"), &rule, &dev);
    let enc = segnet::build_strict(enc_sd, &origin(&dir), "UperNet encoder", &dev, |vb| UperNetEncoder::new(&cfg, vb))
        .unwrap();
    let dec = segnet::build_strict(dec_sd, &origin(&dir), "UperNet decoder", &dev, |vb| UperNetDecoder::new(&cfg, vb))
        .unwrap();
    let mut figs = Vec::new();
    for case_dir in cases(&dir) {
        let run = |x: &Tensor| {
            let (_, _, h, w) = x.dims4().unwrap();
            let logits = dec.forward(&enc.forward(x).unwrap()).unwrap();
            let up = resize_bilinear(&logits, h, w).unwrap();
            let softmax = candle_nn::ops::softmax(&up, 1).unwrap();
            Outputs { logits, up_logits: up, up_output: softmax }
        };
        let (_, h, w) = png_gray(&case_dir.join("pred.png"));
        let seg = UperNetSegmenter::from_nets(enc.clone(), dec.clone(), &cfg, (h, w), "formula".into(), &dev);
        // ADE20K: raw 0 is don't care, raw v is class v - 1.
        figs.push(check_case(&case_dir, &upernet::preprocessing(), &run, &seg, 150, |v| {
            v.checked_sub(1).filter(|&c| c < 150)
        }));
    }
    summary("upernet", &figs);
}

#[test]
fn weight_rule_reproduces_the_manifest_values() {
    // The formula for entry 0 of DeepLabV2 (conv1, 64x3x7x7): element 0 is sin(0) = 0 and the
    // manifest's last value follows from the rule's constants; a changed constant fails.
    let dir = fixtures().join("deeplabv2");
    let rule = rule_of(&dir);
    let manifest = read_json(&dir.join("weights_manifest.json"));
    let e = &entries(&manifest, "entries")[0];
    let n: usize = e.shape.iter().product();
    let g = (rule.gain2 / (n / e.shape[0]) as f64).sqrt();
    let last = (g * rule.s(n, 0).last().unwrap()) as f32 as f64;
    // Equal as float32 values (the JSON's f64 may be one f64 ulp off after parsing).
    let want = e.last.expect("the manifest's last value");
    assert_eq!(last as f32, want as f32, "{last} vs {want}");
    let other = Rule { c: rule.c * 2.0, ..rule };
    assert_ne!((g * other.s(n, 0).last().unwrap()) as f32, want as f32);
}
