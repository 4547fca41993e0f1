//! Statistics files compatible with pytorch-fid: an `.npz` holding `mu` (`(D,)`, float64) and
//! `sigma` (`(D, D)`, float64), as written by `np.savez(path, mu=mu, sigma=sigma)` and read by
//! `np.load(path)["mu"]`. Reading accepts stored or deflated entries (`np.savez_compressed`),
//! little-endian `<f8` or `<f4`, C or Fortran order.
//!
//! Not candle's `Tensor::read_npz`: these files come from users and the network, and candle's
//! reader sizes its buffers from the headers it reads (no budget against a hostile archive), has
//! no float64 path that keeps the statistics' precision without a tensor round trip, and gives
//! errors without the file's name. Entries here go through `spade_io::limits::EntryBudget`.
use std::io::Write;
use std::path::Path;

use crate::error::{MetricsError, Result};
use crate::frechet::GaussianStats;

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// One array of an `.npy`: shape and values in C order, as f64.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let start = header.find(&pat)? + pat.len();
    Some(header[start..].trim_start())
}

/// Parses an `.npy` byte stream of float32/float64 little-endian values.
pub fn parse_npy(bytes: &[u8], what: &str) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(format!("{what}: not an .npy array (magic \\x93NUMPY missing)"));
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(format!("{what}: truncated .npy header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("{what}: .npy format version {v}, expected 1, 2 or 3")),
    };
    let header = bytes.get(hstart..hstart + hlen).ok_or_else(|| format!("{what}: truncated .npy header"))?;
    let header = std::str::from_utf8(header).map_err(|_| format!("{what}: header not UTF-8"))?;
    let descr = header_value(header, "descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or_else(|| format!("{what}: no 'descr' in header {header:?}"))?;
    let fortran = header_value(header, "fortran_order")
        .map(|v| v.starts_with("True"))
        .ok_or_else(|| format!("{what}: no 'fortran_order' in header {header:?}"))?;
    let shape_str = header_value(header, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| format!("{what}: no 'shape' in header {header:?}"))?;
    let mut shape = Vec::new();
    for part in shape_str.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n = part.trim_end_matches('L').parse::<usize>().map_err(|_| format!("{what}: bad shape entry {part:?}"))?;
        shape.push(n);
    }
    let body = &bytes[hstart + hlen..];
    let width = match descr {
        "<f8" | "f8" => 8,
        "<f4" | "f4" => 4,
        d => return Err(format!("{what}: dtype {d:?}, expected '<f8' or '<f4'")),
    };
    // Checked against the bytes present before anything is allocated.
    let count = shape
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .filter(|c| c.checked_mul(width).is_some_and(|b| b <= body.len()))
        .ok_or_else(|| {
            format!("{what}: shape {shape:?} of {descr} needs more than the {} data bytes present", body.len())
        })?;
    let data: Vec<f64> = if width == 8 {
        body.chunks_exact(8).take(count).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    } else {
        body.chunks_exact(4).take(count).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
    };
    let data = if fortran && shape.len() == 2 {
        let (r, c) = (shape[0], shape[1]);
        let mut out = vec![0f64; r * c];
        for i in 0..r {
            for j in 0..c {
                out[i * c + j] = data[j * r + i];
            }
        }
        out
    } else if fortran && shape.len() > 2 {
        return Err(format!("{what}: Fortran-order arrays of rank > 2 are not supported"));
    } else {
        data
    };
    Ok(NpyArray { shape, data })
}

/// Serialises a float64 array as `.npy` version 1.0 (C order).
pub fn npy_bytes(shape: &[usize], data: &[f64]) -> Vec<u8> {
    let shape_str = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Pad so that magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads every array of an `.npz` as f64 (`name` without the `.npy` suffix).
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let err = |msg: String| MetricsError::Stats { path: path.to_path_buf(), msg };
    let file = std::fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| MetricsError::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| err(format!("not a zip (.npz) archive: {e}")))?;
    // Entries are read through a limit: never more than the file holds (stored) or a
    // bounded multiple of it (deflated), whatever sizes they declare.
    let mut budget = spade_io::limits::EntryBudget::new(file_len);
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| err(format!("zip entry {i}: {e}")))?;
        let name = entry.name().map_err(|e| err(format!("zip entry {i}: {e}")))?.into_owned();
        let bytes =
            budget.read(path, &name, entry, None, u64::MAX).map_err(|e| err(strip_path(&e.to_string(), path)))?;
        let arr = parse_npy(&bytes, &name).map_err(err)?;
        out.push((name.trim_end_matches(".npy").to_string(), arr));
    }
    Ok(out)
}

/// An `IoError` message without its leading `path: ` (the caller's error names the file).
fn strip_path(msg: &str, path: &Path) -> String {
    msg.strip_prefix(&format!("{}: ", path.display())).unwrap_or(msg).to_string()
}

/// Loads pytorch-fid statistics (`mu`, `sigma`) from an `.npz`.
pub fn load_stats(path: &Path) -> Result<GaussianStats> {
    let err = |msg: String| MetricsError::Stats { path: path.to_path_buf(), msg };
    let arrays = read_npz(path)?;
    let find = |key: &str| {
        arrays.iter().find(|(n, _)| n == key).map(|(_, a)| a.clone()).ok_or_else(|| {
            let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
            err(format!("no array '{key}' (found {names:?}; expected 'mu' and 'sigma')"))
        })
    };
    let mu = find("mu")?;
    let sigma = find("sigma")?;
    if mu.shape.len() != 1 {
        return Err(err(format!("'mu' has shape {:?}, expected (D,)", mu.shape)));
    }
    let d = mu.shape[0];
    if sigma.shape != [d, d] {
        return Err(err(format!("'sigma' has shape {:?}, expected ({d}, {d}) to match 'mu'", sigma.shape)));
    }
    Ok(GaussianStats { mu: mu.data, sigma: sigma.data, dim: d })
}

/// Saves statistics as pytorch-fid does (`np.savez(path, mu=mu, sigma=sigma)`, float64,
/// stored entries). Writes to a temporary file beside `path`, then renames.
pub fn save_stats(path: &Path, stats: &GaussianStats) -> Result<()> {
    stats.validate()?;
    let tmp = path.with_extension("npz.tmp");
    let write = || -> std::result::Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, shape, data) in
            [("mu.npy", vec![stats.dim], &stats.mu), ("sigma.npy", vec![stats.dim, stats.dim], &stats.sigma)]
        {
            zip.start_file(name, opts).map_err(|e| e.to_string())?;
            zip.write_all(&npy_bytes(&shape, data)).map_err(|e| e.to_string())?;
        }
        zip.finish().map_err(|e| e.to_string())?;
        Ok(())
    };
    write().map_err(|msg| MetricsError::Stats { path: path.to_path_buf(), msg: format!("writing failed: {msg}") })?;
    std::fs::rename(&tmp, path).map_err(|e| MetricsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_roundtrip_and_header_alignment() {
        let b = npy_bytes(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let a = parse_npy(&b, "t").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b1 = npy_bytes(&[3], &[7.0, 8.0, 9.0]);
        let h = std::str::from_utf8(&b1[10..10 + u16::from_le_bytes([b1[8], b1[9]]) as usize]).unwrap();
        assert!(h.contains("'shape': (3,)"), "{h}");
    }

    #[test]
    fn parses_numpy_written_f4_fortran() {
        // Header as numpy writes it for np.asfortranarray(np.array([[1,2],[3,4]], 'f4')).
        let mut h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }".to_string();
        let total = 10 + h.len() + 1;
        h.push_str(&" ".repeat((64 - total % 64) % 64));
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        for v in [1f32, 3.0, 2.0, 4.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let a = parse_npy(&b, "t").unwrap();
        assert_eq!(a.data, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn stats_roundtrip_and_candle_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let s = GaussianStats { mu: vec![0.5, -1.25], sigma: vec![2.0, 0.1, 0.1, 3.0], dim: 2 };
        save_stats(&p, &s).unwrap();
        assert_eq!(load_stats(&p).unwrap(), s);
        // candle's independent npz reader agrees on names, dtype and values.
        let t = candle_core::Tensor::read_npz(&p).unwrap();
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["mu", "sigma"]);
        assert_eq!(t[1].1.dtype(), candle_core::DType::F64);
        assert_eq!(t[1].1.to_vec2::<f64>().unwrap(), vec![vec![2.0, 0.1], vec![0.1, 3.0]]);
    }

    fn npy_with_header(h: &str, body: &[u8]) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn hostile_npy_headers_are_errors() {
        let cases = [
            // Fortran-order sigma whose shape product overflows (issue 15).
            "{'descr': '<f8', 'fortran_order': True, 'shape': (4294967296, 4294967297), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (18446744073709551615, 2), }",
            // More elements than bytes.
            "{'descr': '<f4', 'fortran_order': True, 'shape': (100000, 100000), }",
            // Wrong dtype, missing keys, bad shape entries.
            "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
            "{'descr': '<f8', 'shape': (2,), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, x), }",
        ];
        for h in cases {
            let e = parse_npy(&npy_with_header(h, &[0u8; 64]), "sigma.npy").unwrap_err();
            assert!(e.starts_with("sigma.npy: "), "{h}: {e}");
        }
        // Truncations of a sound file.
        let b = npy_bytes(&[2, 3], &[1.0; 6]);
        for cut in 0..b.len() {
            assert!(parse_npy(&b[..cut], "t").is_err(), "cut {cut}");
        }
    }

    #[test]
    fn overflowing_sigma_in_an_npz_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad_sigma.npz");
        let f = std::fs::File::create(&p).unwrap();
        let mut zip = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("mu.npy", opts).unwrap();
        zip.write_all(&npy_bytes(&[2], &[0.0, 1.0])).unwrap();
        zip.start_file("sigma.npy", opts).unwrap();
        let h = "{'descr': '<f8', 'fortran_order': True, 'shape': (4294967296, 4294967297), }";
        zip.write_all(&npy_with_header(h, &[0u8; 32])).unwrap();
        zip.finish().unwrap();
        let e = load_stats(&p).unwrap_err().to_string();
        assert!(e.contains("bad_sigma.npz") && e.contains("sigma.npy") && e.contains("shape"), "{e}");
    }

    #[test]
    fn inflating_npz_entry_is_refused() {
        // A deflated entry of 100 MiB of zeros (about 100 KB on disk): over the 64 MiB budget.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.npz");
        let f = std::fs::File::create(&p).unwrap();
        let mut zip = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1));
        zip.start_file("mu.npy", opts).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            zip.write_all(&zeros).unwrap();
        }
        zip.finish().unwrap();
        let e = load_stats(&p).unwrap_err().to_string();
        assert!(e.contains("bomb.npz") && e.contains("mu.npy") && e.contains("inflating"), "{e}");
    }

    #[test]
    fn missing_sigma_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.npz");
        let mu = candle_core::Tensor::new(&[1f64, 2.0], &candle_core::Device::Cpu).unwrap();
        candle_core::Tensor::write_npz(&[("mu", &mu)], &p).unwrap();
        let e = load_stats(&p).unwrap_err().to_string();
        assert!(e.contains("bad.npz") && e.contains("'sigma'"), "{e}");
    }
}
