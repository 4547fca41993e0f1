//! Property-based mutation tests of the statistics reader: random mutations of a valid
//! pytorch-fid `.npz` (stored and deflated) load as `Ok` or an error naming the file, never a
//! panic, and within a memory bound.

#[path = "../../spade-io/tests/support/mutate.rs"]
mod mutate;

use std::path::Path;

use mutate::{check_mutations, CASES};
use spade_metrics::frechet::GaussianStats;

fn load(path: &Path) -> Result<(), String> {
    spade_metrics::stats_io::load_stats(path).map(|_| ()).map_err(|e| e.to_string())
}

fn stats(dim: usize) -> GaussianStats {
    let mu: Vec<f64> = (0..dim).map(|i| i as f64 * 0.5).collect();
    let mut sigma = vec![0.0; dim * dim];
    for i in 0..dim {
        sigma[i * dim + i] = 1.0 + i as f64;
    }
    GaussianStats { mu, sigma, dim }
}

#[test]
fn mutated_npz_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stats.npz");
    spade_metrics::stats_io::save_stats(&p, &stats(8)).unwrap();
    check_mutations("stats.npz", &std::fs::read(&p).unwrap(), CASES, load);
}

/// Statistics of dimension 6 written as `np.savez_compressed` does (deflated entries).
fn deflated_npz(p: &Path) {
    use std::io::Write;
    let s = stats(6);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(p).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("mu.npy", opts).unwrap();
    zip.write_all(&spade_metrics::stats_io::npy_bytes(&[6], &s.mu)).unwrap();
    zip.start_file("sigma.npy", opts).unwrap();
    zip.write_all(&spade_metrics::stats_io::npy_bytes(&[6, 6], &s.sigma)).unwrap();
    zip.finish().unwrap();
}

#[test]
fn mutated_deflated_npz_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stats_c.npz");
    deflated_npz(&p);
    check_mutations("stats_c.npz", &std::fs::read(&p).unwrap(), CASES, load);
}

/// Found by the property above: a deflated entry whose declared size was overwritten (8 MB,
/// inside the inflate budget) must not reserve that size before anything inflates.
#[test]
fn deflated_entry_declaring_megabytes_reserves_little() {
    let _serial = mutate::serial();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stats_c.npz");
    deflated_npz(&p);
    let mut b = std::fs::read(&p).unwrap();
    // The first central-directory header (PK 1 2): its uncompressed size (offset 24) says 8 MB.
    let cd = b.windows(4).position(|w| w == b"PK\x01\x02").expect("a central directory");
    b[cd + 24..cd + 28].copy_from_slice(&8_000_000u32.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let (r, peak) = mutate::peak_of(|| load(&p));
    let e = r.unwrap_err();
    assert!(e.starts_with(&p.display().to_string()), "{e}");
    assert!(peak < 1 << 20, "peak {peak} bytes for a {}-byte file", b.len());
}
