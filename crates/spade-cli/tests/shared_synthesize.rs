//! `spade synthesize` on the reference fixtures: PNGs within one level of the reference's,
//! raw outputs within 1e-4. Run by `.ci/run`; fails loudly when `../shared` is missing.
use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> PathBuf {
    let p = std::env::var_os("SPADE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(p.join("fixtures/parity").is_dir(), "the shared fixtures are missing: {}", p.display());
    p
}

fn rgb(path: &Path) -> Vec<u8> {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8().into_raw()
}

fn synthesize_case(name: &str, use_z: bool) {
    let dir = shared().join("fixtures/parity").join(name);
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spade"));
    cmd.arg("synthesize").arg("--checkpoint").arg(&dir).arg("--output-dir").arg(out.path()).arg("--raw");
    for i in 0..2 {
        cmd.arg("--label").arg(dir.join(format!("label_{i}.png")));
        cmd.arg("--instance").arg(dir.join(format!("instance_{i}.png")));
    }
    if use_z {
        cmd.arg("--z").arg(dir.join("z.npy"));
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    let expected = candle_core::Tensor::read_npy(dir.join("expected.npy")).unwrap();
    for i in 0..2 {
        let ours = rgb(&out.path().join(format!("label_{i}.png")));
        let theirs = rgb(&dir.join(format!("expected_{i}.png")));
        assert_eq!(ours.len(), theirs.len());
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(worst <= 1, "{name} image {i}: PNG differs by {worst} levels");
        let raw = candle_core::Tensor::read_npy(out.path().join(format!("label_{i}.npy"))).unwrap();
        let err: f32 = (raw - expected.get(i).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err <= 1e-4, "{name} image {i}: raw max abs error {err}");
    }
}

#[test]
fn synthesize_spade_generator() {
    synthesize_case("spade_generator", false);
}

#[test]
fn synthesize_vae_generator_with_z() {
    synthesize_case("spade_generator_vae", true);
}

#[test]
fn synthesize_pix2pixhd_generator() {
    synthesize_case("pix2pixhd_generator", false);
}
