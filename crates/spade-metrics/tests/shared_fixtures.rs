//! Parity with pytorch-fid on the shared fixtures (`shared/fixtures/fid`): pool3 features of
//! every fixture image (sizes 64x64, 299x299, 70x50) within 1e-3 relative of
//! `expected_pool3.npy`, and the Frechet distance of `features_a/b` within 1e-6 relative of
//! `case.json`. Run in release: `cargo test --release -p spade-metrics --features
//! shared-fixtures --test shared_fixtures`.
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use spade_metrics::{frechet_distance, load_fid_inception, load_image, FidInput, GaussianStats, POOL3_DIM};

fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("SPADE_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    assert!(
        dir.join("fixtures/fid").is_dir(),
        "shared fixtures not found: {}/fixtures/fid is missing (set SPADE_SHARED to the shared folder)",
        dir.display()
    );
    dir
}

fn fixture() -> PathBuf {
    shared_dir().join("fixtures/fid")
}

fn case() -> String {
    std::fs::read_to_string(fixture().join("case.json")).expect("case.json")
}

/// The image names of case.json's "images" array, in order.
fn case_images() -> Vec<String> {
    let c = case();
    let start = c.find("\"images\"").expect("images key") + 8;
    let open = start + c[start..].find('[').unwrap();
    let close = open + c[open..].find(']').unwrap();
    c[open + 1..close].split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect()
}

fn case_number(key: &str) -> f64 {
    let c = case();
    let start = c.find(&format!("\"{key}\"")).expect(key) + key.len() + 2;
    let rest = c[start..].trim_start().trim_start_matches(':').trim_start();
    let end = rest.find(|ch: char| !(ch.is_ascii_digit() || "+-.eE".contains(ch))).unwrap_or(rest.len());
    rest[..end].parse().expect("number")
}

fn rows_f64(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(candle_core::DType::F64).unwrap().to_vec2().unwrap()
}

#[test]
fn pool3_matches_pytorch_fid() {
    let dir = fixture();
    let net = load_fid_inception(&dir.join("pt_inception_random.pth"), &Device::Cpu).unwrap();
    let expected = rows_f64(&Tensor::read_npy(dir.join("expected_pool3.npy")).unwrap());
    let names = case_images();
    assert_eq!(names.len(), expected.len());
    let imgs: Vec<Tensor> =
        names.iter().map(|n| load_image(&dir.join("images").join(n), &Device::Cpu).unwrap()).collect();
    // All in one batch (different sizes, each resized on its own) ...
    let got = rows_f64(&net.pool3_list(&imgs).unwrap());
    // ... and one at a time must agree with the reference.
    let mut worst = 0f64;
    for (i, (name, exp)) in names.iter().zip(&expected).enumerate() {
        assert_eq!(exp.len(), POOL3_DIM);
        let single = rows_f64(&net.pool3(&imgs[i]).unwrap());
        for g in [&got[i], &single[0]] {
            let num: f64 = g.iter().zip(exp).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            let den: f64 = exp.iter().map(|b| b * b).sum::<f64>();
            let rel_l2 = (num / den).sqrt();
            let max_abs_err = g.iter().zip(exp).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let max_abs = exp.iter().map(|b| b.abs()).fold(0.0, f64::max);
            let rel_max = max_abs_err / max_abs;
            // Element-wise relative error where the reference is not tiny.
            let elem = g
                .iter()
                .zip(exp)
                .filter(|(_, b)| b.abs() > 1e-3 * max_abs)
                .map(|(a, b)| ((a - b) / b).abs())
                .fold(0.0, f64::max);
            println!(
                "{name} ({:?}): rel L2 {rel_l2:.3e}, max |err|/max|ref| {rel_max:.3e}, max elementwise rel {elem:.3e}",
                imgs[i].dims()
            );
            worst = worst.max(rel_max);
            assert!(rel_l2 < 1e-3, "{name}: relative L2 error {rel_l2}");
            assert!(rel_max < 1e-3, "{name}: max error / max |ref| = {rel_max}");
            assert!(elem < 1e-3, "{name}: element-wise relative error {elem}");
        }
    }
    println!("worst relative error over images: {worst:.3e}");
}

#[test]
fn frechet_distance_matches_case() {
    let dir = fixture();
    let stats = |name: &str| {
        let t = Tensor::read_npy(dir.join(name)).unwrap();
        let (n, d) = t.dims2().unwrap();
        let v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v.len(), n * d);
        GaussianStats::from_features(&v, d).unwrap()
    };
    let a = stats("features_a.npy");
    let b = stats("features_b.npy");
    let got = frechet_distance(&a, &b).unwrap();
    let expected = case_number("frechet_distance_a_b");
    let rel = ((got - expected) / expected).abs();
    println!("frechet: got {got:.12}, expected {expected:.12}, relative error {rel:.3e}");
    assert!(rel < 1e-6, "Frechet distance {got} vs {expected} (relative {rel})");
    // Symmetric in its arguments.
    let back = frechet_distance(&b, &a).unwrap();
    assert!(((back - expected) / expected).abs() < 1e-6);
}

#[test]
fn stats_of_fixture_folder_roundtrip_through_npz() {
    let dir = fixture();
    let net = load_fid_inception(&dir.join("pt_inception_random.pth"), &Device::Cpu).unwrap();
    let input = FidInput::from_path(&dir.join("images")).unwrap();
    let mut seen = Vec::new();
    let s = input.stats(Some(&net), 4, &mut |n| seen.push(n)).unwrap();
    assert_eq!(seen, vec![4, 6]);
    // Mean of pool3 equals the mean of the reference rows (files sorted = case order here).
    let expected = rows_f64(&Tensor::read_npy(dir.join("expected_pool3.npy")).unwrap());
    for j in [0, 1000, 2047] {
        let m: f64 = expected.iter().map(|r| r[j]).sum::<f64>() / expected.len() as f64;
        assert!((s.mu[j] - m).abs() <= 1e-3 * m.abs().max(1e-3), "mu[{j}] {} vs {m}", s.mu[j]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ref.npz");
    spade_metrics::save_stats(&p, &s).unwrap();
    let back = spade_metrics::load_stats(&p).unwrap();
    assert_eq!(back, s);
    // 6 samples in 2048 dimensions: rank-5 covariance, so the eigenvalues that should be 0
    // carry round-off whose square roots add up; bound the self-distance by the trace.
    let self_d = frechet_distance(&s, &back).unwrap();
    let tr: f64 = (0..s.dim).map(|i| s.sigma[i * s.dim + i]).sum();
    println!("self distance {self_d:.3e} (trace {tr:.3e})");
    assert!(self_d.abs() < 1e-4 * tr, "self distance {self_d} vs trace {tr}");
}

/// SHA-256 of `fixtures/fid/pt_inception_random.pth`.
const FIXTURE_WEIGHTS_SHA256: &str = "367b430990bb3fe5a67d1321fdc5261bd024948baf33392c84c0e05e2314cfb7";

#[test]
fn weights_through_a_hub_cache_layout() {
    // A cache laid out as hf-hub lays it out, the snapshot file a symlink (as hf-hub's blobs
    // are) to the fixture; no network.
    let weights = fixture().join("pt_inception_random.pth");
    let cache = tempfile::tempdir().unwrap();
    let repo_dir = cache.path().join("models--spade-test--fid-inception");
    let rev = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), rev).unwrap();
    let snap = repo_dir.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::os::unix::fs::symlink(&weights, snap.join("pt_inception_random.pth")).unwrap();

    let mut hf = spade_metrics::HubFile::parse("spade-test/fid-inception:pt_inception_random.pth").unwrap();
    hf.cache_dir = Some(cache.path().to_path_buf());
    hf.allow_download = false;
    hf.sha256 = Some(FIXTURE_WEIGHTS_SHA256.into());
    let r = hf.resolve().unwrap();
    assert!(r.verified);
    assert_eq!(r.sha256, FIXTURE_WEIGHTS_SHA256);

    let net = load_fid_inception(&r.path, &Device::Cpu).unwrap();
    let img = load_image(&fixture().join("images/img_5.png"), &Device::Cpu).unwrap();
    let got = rows_f64(&net.pool3(&img).unwrap());
    let expected = rows_f64(&Tensor::read_npy(fixture().join("expected_pool3.npy")).unwrap());
    let row = case_images().iter().position(|n| n == "img_5.png").unwrap();
    let max_abs = expected[row].iter().map(|b| b.abs()).fold(0.0, f64::max);
    let err = got[0].iter().zip(&expected[row]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-3 * max_abs, "max error {err} (max |ref| {max_abs})");

    // A wrong digest is refused before anything is loaded.
    hf.sha256 = Some("0000000000000000".into());
    assert!(matches!(hf.resolve().unwrap_err(), spade_metrics::MetricsError::HashMismatch { .. }));
}
