//! Property-based mutation tests: random mutations of valid `.pth` (zip and legacy) and
//! safetensors files load as `Ok` or an error naming the file, never a panic, and the memory
//! a load allocates stays under a bound (a counting global allocator measures it).

#[path = "support/mutate.rs"]
mod mutate;

use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use mutate::{apply, check_mutations, mutation, peak_of, serial, CASES};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn load(path: &Path) -> Result<(), String> {
    spade_io::checkpoint::load_state_dict(path).map(|_| ()).map_err(|e| e.to_string())
}

fn sample() -> Vec<(String, Tensor)> {
    let cpu = Device::Cpu;
    let a = Tensor::arange(0f32, 48., &cpu).unwrap().reshape((4, 3, 2, 2)).unwrap();
    let b = Tensor::new(&[1i64, -2, 3], &cpu).unwrap();
    let c = Tensor::new(&[0.5f64, 0.25], &cpu).unwrap();
    vec![("conv.weight".into(), a), ("bn.num_batches_tracked".into(), b), ("fc.bias".into(), c)]
}

#[test]
fn mutated_zip_pth_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("net.pth");
    spade_io::pth::save(&p, &sample()).unwrap();
    check_mutations("net.pth", &std::fs::read(&p).unwrap(), CASES, load);
}

/// The zip's pickle alone mutated, rewrapped in a sound zip (the zip's CRCs no longer stop
/// the mutations at the container).
#[test]
fn mutated_pickle_in_a_sound_zip_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("net.pth");
    spade_io::pth::save(&p, &sample()).unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut e = zip.by_index(i).unwrap();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut b).unwrap();
        entries.push((e.name().unwrap().into_owned(), b));
    }
    let pkl = entries.iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1.clone();
    let _serial = serial();
    let path = dir.path().join("pk.pth");
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    runner
        .run(&proptest::collection::vec(mutation(), 1..4), |muts| {
            let pkl = apply(&pkl, &muts);
            let f = std::fs::File::create(&path).unwrap();
            let mut zw = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            for (n, b) in &entries {
                zw.start_file(n.as_str(), opts).unwrap();
                zw.write_all(if n.ends_with("data.pkl") { &pkl } else { b }).unwrap();
            }
            zw.finish().unwrap();
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            let (r, peak) = peak_of(|| load(&path));
            let bound = 64 * len + (8 << 20);
            prop_assert!(peak <= bound, "{muts:?}: peak {peak} > {bound}");
            if let Err(e) = r {
                prop_assert!(e.starts_with(&path.display().to_string()), "{e}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_safetensors_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("net.safetensors");
    spade_io::checkpoint::save_safetensors(&p, &sample()).unwrap();
    check_mutations("net.safetensors", &std::fs::read(&p).unwrap(), CASES, load);
}

/// A legacy (PyTorch <= 1.5) checkpoint of `{'w': FloatTensor(2, 3)}`, assembled by hand.
fn legacy_checkpoint() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.push(b'X');
        out.extend((v.len() as u32).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let mut out = Vec::new();
    // Magic number 0x1950a86a20f9469cfc6c as LONG1, protocol 1001, sys_info.
    out.extend([0x80, 2, 0x8a, 10]);
    out.extend(&0x1950a86a20f9469cfc6cu128.to_le_bytes()[..10]);
    out.push(b'.');
    out.extend([0x80, 2, b'M']);
    out.extend(1001u16.to_le_bytes());
    out.push(b'.');
    out.extend([0x80, 2, b'}']);
    s(&mut out, "little_endian");
    out.extend([0x88, b's', b'.']);
    // {'w': _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', 6, None), 0, (2, 3), (3, 1), False, OrderedDict())}
    out.extend([0x80, 2, b'}']);
    s(&mut out, "w");
    out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    out.push(b'(');
    s(&mut out, "storage");
    out.extend(b"ctorch\nFloatStorage\n");
    s(&mut out, "0");
    s(&mut out, "cpu");
    out.extend([b'K', 6, b'N', b't', b'Q']);
    out.extend([b'K', 0, b'K', 2, b'K', 3, 0x86, b'K', 3, b'K', 1, 0x86, 0x89]);
    out.extend(b"ccollections\nOrderedDict\n)R");
    out.extend([b't', b'R', b's', b'.']);
    // ['0'], then the storage: count, data.
    out.extend([0x80, 2, b']', b'(']);
    s(&mut out, "0");
    out.extend([b'e', b'.']);
    out.extend(6u64.to_le_bytes());
    for i in 0..6 {
        out.extend((i as f32).to_le_bytes());
    }
    out
}

#[test]
fn mutated_legacy_pth_is_ok_or_an_error() {
    let valid = legacy_checkpoint();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("legacy.pth");
    std::fs::write(&p, &valid).unwrap();
    let sd = spade_io::pth::load(&p).unwrap();
    assert_eq!(sd[0].1.to_vec2::<f32>().unwrap(), [[0., 1., 2.], [3., 4., 5.]]);
    check_mutations("legacy.pth", &valid, CASES, load);
}
