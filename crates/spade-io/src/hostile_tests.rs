//! Hostile inputs: each case of issue 15's table (and more) ends in an error naming the file,
//! quickly and without large allocations. Files are assembled here.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::pickle::{PickleWriter, TorchDType, Unpickler, Value};
use crate::pth::tests_support::{legacy_bytes, View};
use crate::{checkpoint, pth};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A zip checkpoint `archive/{data.pkl, data/<k>}` with stored (or deflated) entries.
fn zip_file(path: &Path, pkl: &[u8], storages: &[(&str, Vec<u8>)], deflate_pkl: bool) {
    let f = std::fs::File::create(path).unwrap();
    let mut zw = zip::ZipWriter::new(f);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zw.start_file("archive/data.pkl", if deflate_pkl { deflated } else { stored }).unwrap();
    zw.write_all(pkl).unwrap();
    for (k, data) in storages {
        zw.start_file(format!("archive/data/{k}"), stored).unwrap();
        zw.write_all(data).unwrap();
    }
    zw.finish().unwrap();
}

/// `{name: _rebuild_tensor_v2(storage(key, numel), offset, size, stride)}` as a pickle.
fn one_tensor_pickle(numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut w = PickleWriter::new();
    w.op(b'}').str("w");
    w.global("torch._utils", "_rebuild_tensor_v2").mark();
    w.mark().str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(numel).op(b't').op(b'Q');
    w.int(offset);
    w.mark();
    for &s in size {
        w.int(s);
    }
    w.op(b't').mark();
    for &s in stride {
        w.int(s);
    }
    w.op(b't').bool(false);
    w.global("collections", "OrderedDict").op(b')').op(b'R');
    w.op(b't').op(b'R').op(b's');
    w.finish()
}

/// Loads `path`, expecting an error that names the file and contains every `needles`, within
/// a few seconds.
fn expect_error(path: &Path, needles: &[&str]) -> String {
    let t0 = Instant::now();
    let e = checkpoint::load_state_dict(path).expect_err("hostile file must be refused").to_string();
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}: {e}", t0.elapsed());
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in: {e}");
    }
    e
}

#[test]
fn self_containing_dict_is_an_error() {
    // d = {}; d['state_dict'] = d
    let mut w = PickleWriter::new();
    w.op(b'}').op(b'q').op(0).str("state_dict").op(b'h').op(0).op(b's');
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("self.pth");
    zip_file(&p, &w.finish(), &[], false);
    expect_error(&p, &["contain itself"]);

    // Indirectly: d = {'model': e}, e = {'state_dict': d}.
    let mut w = PickleWriter::new();
    w.op(b'}').op(b'q').op(0).str("model").op(b'}').op(b'q').op(1);
    w.str("state_dict").op(b'h').op(0).op(b's').op(b's');
    let p2 = dir.path().join("cycle.pth");
    zip_file(&p2, &w.finish(), &[], false);
    expect_error(&p2, &["contains itself"]);
}

#[test]
fn deep_nesting_is_refused_early() {
    // A tuple nested 3 million deep, as one pickle (3 MB): refused at depth 257.
    let mut pkl = vec![0x80, 2, b')'];
    pkl.extend(std::iter::repeat_n(0x85u8, 3_000_000));
    pkl.push(b'.');
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("deep.pth");
    zip_file(&p, &pkl, &[], true);
    expect_error(&p, &["nested at most 256 deep", "byte 258 of archive/data.pkl"]);

    // Lists grown by appends, and dicts by set-items, are counted too.
    let mut pkl = vec![0x80, 2];
    for _ in 0..300 {
        pkl.push(b']');
    }
    for _ in 0..299 {
        pkl.push(b'a');
    }
    pkl.push(b'.');
    let mut up = Unpickler::new(&pkl[..], |_| Err(("no pid".into(), String::new())));
    let e = up.load().unwrap_err();
    assert!(e.expected.contains("256"), "{e:?}");

    // Dropping a deep structure built under the cap (or shared) never recurses: a chain
    // of 200-deep tuples repeated through the memo loads fine.
    let mut pkl = vec![0x80, 2, b')'];
    pkl.extend(std::iter::repeat_n(0x85u8, 200));
    pkl.push(b'.');
    let mut up = Unpickler::new(&pkl[..], |_| Err(("no pid".into(), String::new())));
    assert!(matches!(up.load().unwrap(), Value::Tuple(_)));
}

#[test]
fn huge_declared_tensors_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 2^40 elements over a 1-element storage (zip).
    let p = dir.path().join("huge.pth");
    zip_file(&p, &one_tensor_pickle(1, 0, &[1 << 20, 1 << 20], &[1 << 20, 1]), &[("0", f32_bytes(&[1.0]))], false);
    expect_error(&p, &["\"w\"", "at most as many elements as its storage"]);
    // The same in the legacy format.
    let storages = [("s", TorchDType::F32, f32_bytes(&[1.0]))];
    let views = [View {
        name: "w",
        storage_key: "s",
        offset: 0,
        size: &[1 << 20, 1 << 20],
        stride: &[1 << 20, 1],
        storage_view: None,
    }];
    let p = dir.path().join("huge_legacy.pth");
    std::fs::write(&p, legacy_bytes(&storages, &views, true)).unwrap();
    expect_error(&p, &["\"w\"", "at most as many elements"]);
    // A storage declaring 2^40 elements in a small legacy file.
    let mut bytes = legacy_bytes(&storages, &[View { size: &[1], stride: &[1], ..views[0] }], false);
    // Patch the raw record's element count (the 8 bytes before the last 4 data bytes) and the pid.
    let n = bytes.len();
    bytes[n - 12..n - 4].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = dir.path().join("huge_storage_legacy.pth");
    std::fs::write(&p, &bytes).unwrap();
    let e = checkpoint::load_state_dict(&p).unwrap_err().to_string();
    assert!(e.contains("1099511627776") || e.contains("elements"), "{e}");
    // A zip storage entry shorter than its storage declares.
    let p = dir.path().join("short.pth");
    zip_file(&p, &one_tensor_pickle(1 << 30, 0, &[4], &[1]), &[("0", f32_bytes(&[1.0; 4]))], false);
    expect_error(&p, &["archive/data/0", "4294967296 bytes"]);
}

#[test]
fn overflowing_strides_and_offsets_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ovf.pth");
    zip_file(&p, &one_tensor_pickle(4, 0, &[2, 2], &[i64::MAX, 1]), &[("0", f32_bytes(&[1.0; 4]))], false);
    expect_error(&p, &["\"w\"", "overflow"]);
    let p = dir.path().join("ovf_off.pth");
    zip_file(&p, &one_tensor_pickle(4, i64::MAX, &[1], &[1]), &[("0", f32_bytes(&[1.0; 4]))], false);
    expect_error(&p, &["\"w\""]);
    let p = dir.path().join("ovf_size.pth");
    zip_file(&p, &one_tensor_pickle(4, 0, &[i64::MAX, 4], &[1, 1]), &[("0", f32_bytes(&[1.0; 4]))], false);
    expect_error(&p, &["\"w\"", "overflow"]);
}

#[test]
fn expanding_stride_zero_view_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("expand.pth");
    zip_file(&p, &one_tensor_pickle(1, 0, &[1 << 30], &[0]), &[("0", f32_bytes(&[1.0]))], false);
    expect_error(&p, &["stride-0", "1073741824 elements"]);
    // A stride-0 dimension of size 1 is a plain tensor.
    let p = dir.path().join("ok.pth");
    zip_file(&p, &one_tensor_pickle(2, 0, &[1, 2], &[0, 1]), &[("0", f32_bytes(&[1.0, 2.0]))], false);
    let sd = pth::load(&p).unwrap();
    assert_eq!(sd[0].1.to_vec2::<f32>().unwrap(), [[1.0, 2.0]]);
}

#[test]
fn inflating_entry_is_read_through_a_limit() {
    // A deflated storage entry of 200 MiB of zeros (about 200 KB on disk): over the 64 MiB
    // floor of the inflate budget, refused before it is read.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.pth");
    let numel = 50 << 20; // f32: 200 MiB
    let pkl = one_tensor_pickle(numel, 0, &[numel], &[1]);
    let f = std::fs::File::create(&p).unwrap();
    let mut zw = zip::ZipWriter::new(f);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    zw.start_file("archive/data.pkl", stored).unwrap();
    zw.write_all(&pkl).unwrap();
    zw.start_file("archive/data/0", deflated).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        zw.write_all(&zeros).unwrap();
    }
    zw.finish().unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 4 << 20);
    expect_error(&p, &["archive/data/0", "inflating to at most 67108864 bytes"]);
}

#[test]
fn copying_a_big_list_over_and_over_runs_out_of_budget() {
    // L = [None] * 300000 (one byte per item), then tuple(L) 100 times.
    let mut w = PickleWriter::new();
    w.op(b']').op(b'q').op(0).mark();
    for _ in 0..300_000 {
        w.op(b'N');
    }
    w.op(b'e').op(b'0');
    for _ in 0..100 {
        w.global("builtins", "tuple").op(b'h').op(0).op(0x85).op(b'R').op(b'0');
    }
    w.op(b'N');
    let pkl = w.finish();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("copies.pth");
    zip_file(&p, &pkl, &[], true);
    expect_error(&p, &["container items", "copies containers"]);
}

#[test]
fn many_keys_load_in_linear_time() {
    // 300,000 distinct keys (plus a repeated one, replaced in place).
    let mut w = PickleWriter::new();
    w.op(b'}').mark();
    for i in 0..300_000 {
        w.str(&format!("k{i}")).int(i);
    }
    w.str("k7").int(-1);
    w.op(b'u');
    let pkl = w.finish();
    let t0 = Instant::now();
    let mut up = Unpickler::new(&pkl[..], |_| Err(("no pid".into(), String::new())));
    let v = up.load().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let Value::Dict(d) = v else { panic!("not a dict") };
    let d = d.borrow();
    assert_eq!(d.len(), 300_000);
    assert_eq!(d.get_str("k7").and_then(Value::as_int), Some(-1));
    assert_eq!(d[7].0.as_str(), Some("k7"));
    // Through load: not a state_dict, and the message lists a bounded number of keys.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("keys.pth");
    zip_file(&p, &pkl, &[], true);
    let e = expect_error(&p, &["not all tensors", "more)"]);
    assert!(e.len() < 4000, "{} chars", e.len());
}

#[test]
fn truncations_and_bit_flips_of_a_valid_checkpoint_are_errors_or_ok() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.pth");
    let t = candle_core::Tensor::arange(0f32, 24., &candle_core::Device::Cpu).unwrap().reshape((2, 3, 4)).unwrap();
    pth::save(&good, &[("a.weight".into(), t.clone()), ("b.bias".into(), t.narrow(0, 0, 1).unwrap())]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let p = dir.path().join("bad.pth");
    for cut in (0..bytes.len()).step_by(37) {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = pth::load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "cut {cut}: {e}");
    }
    for i in (0..bytes.len()).step_by(13) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        std::fs::write(&p, &b).unwrap();
        if let Err(e) = pth::load(&p) {
            assert!(e.to_string().starts_with(&p.display().to_string()), "byte {i}: {e}");
        }
    }
    // Legacy: truncations and wrong dtypes.
    let storages = [("s", TorchDType::F32, f32_bytes(&[1.0, 2.0, 3.0, 4.0]))];
    let views = [View { name: "w", storage_key: "s", offset: 0, size: &[2, 2], stride: &[2, 1], storage_view: None }];
    let legacy = legacy_bytes(&storages, &views, true);
    for cut in 0..legacy.len() {
        std::fs::write(&p, &legacy[..cut]).unwrap();
        assert!(pth::load(&p).is_err(), "cut {cut}");
    }
    let storages = [("s", TorchDType::I8, vec![1u8, 2, 3, 4])];
    std::fs::write(&p, legacy_bytes(&storages, &views, true)).unwrap();
    let e = pth::load(&p).unwrap_err().to_string();
    assert!(e.contains("int8"), "{e}");
    // Shape that disagrees with the storage.
    let views = [View { name: "w", storage_key: "s", offset: 2, size: &[2, 2], stride: &[2, 1], storage_view: None }];
    let storages = [("s", TorchDType::F32, f32_bytes(&[1.0, 2.0, 3.0, 4.0]))];
    std::fs::write(&p, legacy_bytes(&storages, &views, true)).unwrap();
    let e = pth::load(&p).unwrap_err().to_string();
    assert!(e.contains("lie within its storage"), "{e}");
}

#[test]
fn hostile_safetensors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 8],
        {
            // Header length far past the file.
            let mut b = (1u64 << 40).to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        },
        {
            // A shape whose product overflows.
            let h = br#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#;
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h);
            b.extend_from_slice(&[0; 4]);
            b
        },
        {
            // Data offsets past the buffer.
            let h = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h);
            b.extend_from_slice(&[0; 4]);
            b
        },
    ];
    for (i, b) in cases.iter().enumerate() {
        std::fs::write(&p, b).unwrap();
        let e = checkpoint::load_state_dict(&p).expect_err("refused").to_string();
        assert!(e.starts_with(&p.display().to_string()), "case {i}: {e}");
    }
}

#[test]
fn objects_chained_through_their_state_are_depth_checked() {
    // 300 objects on the stack, then BUILD 299 times: O1.state = O2, O2.state = O3, ...
    let mut pkl = vec![0x80, 2];
    for _ in 0..300 {
        pkl.extend(b"cm\nC\n)R");
    }
    for _ in 0..299 {
        pkl.push(b'b');
    }
    pkl.push(b'.');
    let mut up = Unpickler::new(&pkl[..], |_| Err(("no pid".into(), String::new())));
    let e = up.load().unwrap_err();
    assert!(e.expected.contains("256"), "{e:?}");
}
