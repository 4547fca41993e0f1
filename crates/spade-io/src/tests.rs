//! Unit tests: checkpoint byte streams are assembled here, no external files needed.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::pickle::{PickleWriter, TorchDType, Unpickler, Value};
use crate::pth::tests_support::{legacy_bytes, View};
use crate::{atomic, checkpoint, pth, IoError};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn names(sd: &[(String, Tensor)]) -> Vec<&str> {
    sd.iter().map(|(n, _)| n.as_str()).collect()
}

fn get<'a>(sd: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &sd.iter().find(|(n, _)| n == name).unwrap().1
}

fn flat_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Storage "a": 0..24 as f32; "b": one i64; "c": four f16; "d": 10 f32 (for a storage view).
fn legacy_fixture(ordered: bool) -> Vec<u8> {
    let a: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let d: Vec<f32> = (0..10).map(|i| 100.0 + i as f32).collect();
    let f16: Vec<u8> = [0x3C00u16, 0xC100, 0x3800, 0x7BFF].iter().flat_map(|x| x.to_le_bytes()).collect();
    let storages = vec![
        ("140001", TorchDType::F32, f32_bytes(&a)),
        ("140002", TorchDType::I64, 7i64.to_le_bytes().to_vec()),
        ("140003", TorchDType::F16, f16),
        ("140004", TorchDType::F32, f32_bytes(&d)),
    ];
    let views = [
        View {
            name: "zeta.weight",
            storage_key: "140001",
            offset: 0,
            size: &[2, 3, 4],
            stride: &[12, 4, 1],
            storage_view: None,
        },
        View {
            name: "alpha.transposed",
            storage_key: "140001",
            offset: 1,
            size: &[3, 2],
            stride: &[1, 4],
            storage_view: None,
        },
        View {
            name: "mid.bn.num_batches_tracked",
            storage_key: "140002",
            offset: 0,
            size: &[],
            stride: &[],
            storage_view: None,
        },
        View { name: "beta.half", storage_key: "140003", offset: 0, size: &[4], stride: &[1], storage_view: None },
        View {
            name: "alpha.sliced",
            storage_key: "140001",
            offset: 13,
            size: &[2, 2],
            stride: &[6, 2],
            storage_view: None,
        },
        View {
            name: "gamma.view",
            storage_key: "140004",
            offset: 1,
            size: &[3],
            stride: &[2],
            storage_view: Some((2, 7)),
        },
    ];
    legacy_bytes(&storages, &views, ordered)
}

fn check_legacy_fixture(sd: &[(String, Tensor)]) {
    assert_eq!(
        names(sd),
        ["zeta.weight", "alpha.transposed", "mid.bn.num_batches_tracked", "beta.half", "alpha.sliced", "gamma.view"]
    );
    let w = get(sd, "zeta.weight");
    assert_eq!(w.dims(), [2, 3, 4]);
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(flat_f32(w), (0..24).map(|i| i as f32).collect::<Vec<_>>());

    // t[i][j] = a[1 + i + 4j]
    let t = get(sd, "alpha.transposed");
    assert_eq!(t.dims(), [3, 2]);
    assert_eq!(t.to_vec2::<f32>().unwrap(), [[1., 5.], [2., 6.], [3., 7.]]);
    assert!(t.is_contiguous());

    let n = get(sd, "mid.bn.num_batches_tracked");
    assert_eq!(n.dtype(), DType::I64);
    assert_eq!(n.dims(), [] as [usize; 0]);
    assert_eq!(n.to_scalar::<i64>().unwrap(), 7);

    let h = get(sd, "beta.half");
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(flat_f32(h), [1.0, -2.5, 0.5, 65504.0]);

    // s[i][j] = a[13 + 6i + 2j]
    let s = get(sd, "alpha.sliced");
    assert_eq!(s.to_vec2::<f32>().unwrap(), [[13., 15.], [19., 21.]]);

    // The storage view starts at element 2 of d: v[i] = d[2 + 1 + 2i]
    let v = get(sd, "gamma.view");
    assert_eq!(v.to_vec1::<f32>().unwrap(), [103., 105., 107.]);
}

#[test]
fn legacy_ordered_dict() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "legacy.pth", &legacy_fixture(true));
    let sd = pth::load(&p).unwrap();
    check_legacy_fixture(&sd);
    // Through the extension dispatcher too.
    let sd = checkpoint::load_state_dict(&p).unwrap();
    check_legacy_fixture(&sd);
}

#[test]
fn legacy_plain_dict() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "legacy.pt", &legacy_fixture(false));
    check_legacy_fixture(&pth::load(&p).unwrap());
}

#[test]
fn legacy_truncated_and_bad_magic() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = legacy_fixture(true);
    let p = write_file(dir.path(), "short.pth", &bytes[..bytes.len() - 3]);
    let e = pth::load(&p).unwrap_err().to_string();
    assert!(e.contains("short.pth"), "{e}");
    assert!(e.contains("truncated"), "{e}");

    let mut bad = bytes.clone();
    bad[5] ^= 0xff; // inside the magic number
    let p = write_file(dir.path(), "bad.pth", &bad);
    let e = pth::load(&p).unwrap_err().to_string();
    assert!(e.contains("bad.pth") && e.contains("magic"), "{e}");

    let p = write_file(dir.path(), "text.pth", b"hello world");
    let e = pth::load(&p).unwrap_err().to_string();
    assert!(e.contains("text.pth") && e.contains("expected"), "{e}");
}

#[test]
fn legacy_view_out_of_bounds_is_an_error() {
    let storages = vec![("1", TorchDType::F32, f32_bytes(&[1.0, 2.0, 3.0]))];
    let views = [View { name: "w", storage_key: "1", offset: 1, size: &[3], stride: &[1], storage_view: None }];
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "oob.pth", &legacy_bytes(&storages, &views, true));
    let e = pth::load(&p).unwrap_err().to_string();
    assert!(e.contains("oob.pth") && e.contains("within its storage"), "{e}");
}

fn sample_tensors() -> Vec<(String, Tensor)> {
    let dev = Device::Cpu;
    let w = Tensor::arange(0f32, 24., &dev).unwrap().reshape((2, 3, 4)).unwrap();
    vec![
        ("z.weight".to_string(), w.clone()),
        // Non-contiguous input: saved contiguous.
        ("a.weight_t".to_string(), w.transpose(1, 2).unwrap()),
        ("m.f64".to_string(), Tensor::new(&[1.5f64, -2.25, 1e300], &dev).unwrap()),
        ("m.num_batches_tracked".to_string(), Tensor::new(123_456_789_012i64, &dev).unwrap()),
        ("m.f16".to_string(), Tensor::new(&[1.0f32, -2.5, 0.5], &dev).unwrap().to_dtype(DType::F16).unwrap()),
        ("m.bf16".to_string(), Tensor::new(&[1.0f32, -2.0], &dev).unwrap().to_dtype(DType::BF16).unwrap()),
        ("m.u8".to_string(), Tensor::new(&[0u8, 1, 255], &dev).unwrap()),
        ("m.i32".to_string(), Tensor::new(&[[-1i32, 2], [3, -4]], &dev).unwrap()),
        ("m.empty".to_string(), Tensor::zeros((0, 3), DType::F32, &dev).unwrap()),
    ]
}

fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(names(a), names(b));
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.dtype(), y.dtype(), "{name}");
        assert_eq!(x.dims(), y.dims(), "{name}");
        let (xs, ys) = (x.to_dtype(DType::F64).unwrap(), y.to_dtype(DType::F64).unwrap());
        let xs: Vec<f64> = xs.flatten_all().unwrap().to_vec1().unwrap();
        let ys: Vec<f64> = ys.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(xs, ys, "{name}");
    }
}

#[test]
fn zip_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("net_G.pth");
    let tensors = sample_tensors();
    pth::save(&p, &tensors).unwrap();
    let back = pth::load(&p).unwrap();
    assert_same(&tensors, &back);
    assert_eq!(get(&back, "m.num_batches_tracked").to_scalar::<i64>().unwrap(), 123_456_789_012);
    // The archive folder is named after the file, as torch does.
    let zip = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    let entries: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    assert!(entries.iter().any(|n| n == "net_G/data.pkl"), "{entries:?}");
    assert!(entries.iter().any(|n| n == "net_G/data/8"), "{entries:?}");
    // Overwriting works and leaves no temporary files.
    pth::save(&p, &tensors[..2]).unwrap();
    assert_eq!(names(&pth::load(&p).unwrap()), ["z.weight", "a.weight_t"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn save_rejects_duplicates_and_unsupported_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dup.pth");
    let t = Tensor::new(&[1u32], &Device::Cpu).unwrap();
    let e = pth::save(&p, &[("x".into(), t.clone())]).unwrap_err().to_string();
    assert!(e.contains("dup.pth") && e.contains("U32"), "{e}");
    let f = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let e = pth::save(&p, &[("x".into(), f.clone()), ("x".into(), f)]).unwrap_err().to_string();
    assert!(e.contains("unique"), "{e}");
    assert!(!p.exists());
}

/// Writes a zip checkpoint with a custom pickle and storages under `prefix/`.
fn write_zip(path: &Path, prefix: &str, pkl: &[u8], storages: &[(&str, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut zw = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zw.start_file(format!("{prefix}/data.pkl"), opts).unwrap();
    zw.write_all(pkl).unwrap();
    zw.start_file(format!("{prefix}/byteorder"), opts).unwrap();
    zw.write_all(b"little").unwrap();
    for (k, data) in storages {
        zw.start_file(format!("{prefix}/data/{k}"), opts).unwrap();
        zw.write_all(data).unwrap();
    }
    zw.start_file(format!("{prefix}/version"), opts).unwrap();
    zw.write_all(b"3\n").unwrap();
    zw.finish().unwrap();
}

/// `_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())`.
fn tensor_pickle(
    w: &mut PickleWriter,
    class: &str,
    key: &str,
    numel: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
) {
    w.global("torch._utils", "_rebuild_tensor_v2").mark();
    w.mark().str("storage").global("torch", class).str(key).str("cuda:0").int(numel as i64).op(b't').op(b'Q');
    w.int(offset as i64).int_tuple(size).int_tuple(stride).bool(false);
    w.global("collections", "OrderedDict").op(b')').op(b'R');
    w.op(b't').op(b'R');
}

#[test]
fn zip_nested_state_dict_shared_strided_storage() {
    // {'epoch': 3, 'state_dict': {'b': <view of storage 0>, 'a': <storage 0>,
    //  'flag': <BoolStorage>}} under a prefix that is not "archive".
    let mut w = PickleWriter::new();
    w.op(b'}').mark();
    w.str("epoch").int(3);
    w.str("state_dict").op(b'}').mark();
    w.str("b");
    tensor_pickle(&mut w, "FloatStorage", "0", 6, 1, &[2, 2], &[1, 3]);
    w.str("a");
    tensor_pickle(&mut w, "FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    w.str("flag");
    tensor_pickle(&mut w, "BoolStorage", "1", 2, 0, &[2], &[1]);
    w.op(b'u');
    w.op(b'u');
    let pkl = w.finish();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ckpt.pt");
    write_zip(&p, "my_model_v2", &pkl, &[("0", f32_bytes(&[0., 1., 2., 3., 4., 5.])), ("1", vec![1, 0])]);
    let sd = pth::load(&p).unwrap();
    assert_eq!(names(&sd), ["b", "a", "flag"]);
    // b[i][j] = s[1 + i + 3j]
    assert_eq!(get(&sd, "b").to_vec2::<f32>().unwrap(), [[1., 4.], [2., 5.]]);
    assert_eq!(get(&sd, "a").to_vec2::<f32>().unwrap(), [[0., 1., 2.], [3., 4., 5.]]);
    let flag = get(&sd, "flag");
    assert_eq!(flag.dtype(), DType::U8);
    assert_eq!(flag.to_vec1::<u8>().unwrap(), [1, 0]);
}

#[test]
fn zip_dict_of_state_dicts_is_an_error_listing_keys() {
    let mut w = PickleWriter::new();
    w.op(b'}').mark();
    for key in ["net_D", "net_E"] {
        w.str(key).op(b'}').mark().str("w");
        tensor_pickle(&mut w, "FloatStorage", key, 1, 0, &[1], &[1]);
        w.op(b'u');
    }
    w.op(b'u');
    let pkl = w.finish();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("both.pth");
    let one = f32_bytes(&[1.0]);
    write_zip(&p, "archive", &pkl, &[("net_D", one.clone()), ("net_E", one)]);
    let e = pth::load(&p).unwrap_err();
    assert!(matches!(e, IoError::NotAStateDict { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("both.pth") && e.contains("\"net_D\"") && e.contains("\"net_E\""), "{e}");
}

#[test]
fn zip_protocol4_opcodes_and_memo_sharing() {
    // Hand-assembled protocol 4: FRAME, SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE, BINGET of a
    // dict that is filled after it was memoised, LONG1, negative BININT.
    let mut b: Vec<u8> = vec![0x80, 4, 0x95];
    b.extend(0u64.to_le_bytes());
    let sbu = |b: &mut Vec<u8>, s: &str| {
        b.push(0x8c);
        b.push(s.len() as u8);
        b.extend(s.as_bytes());
    };
    // outer = {'meta': inner, 'sd': sd} where inner is memo 0 and filled afterwards
    b.push(b'}'); // outer
    b.push(0x94); // memo 0 = outer
    sbu(&mut b, "sd");
    sbu(&mut b, "collections");
    sbu(&mut b, "OrderedDict");
    b.push(0x93);
    b.push(0x94); // memo 1 = OrderedDict global
    b.push(b')');
    b.push(b'R');
    b.push(0x94); // memo 2 = the state dict (still empty)
    b.push(b's'); // outer['sd'] = sd (empty so far)
    b.push(b'h');
    b.push(2); // BINGET 2: the same dict object
    sbu(&mut b, "w");
    let mut w = PickleWriter { buf: Vec::new() };
    tensor_pickle(&mut w, "DoubleStorage", "0", 2, 0, &[2], &[1]);
    b.extend(w.buf);
    b.push(b's'); // sd['w'] = tensor, visible through outer['sd']
    b.push(b'0'); // POP the BINGET'ed dict
    sbu(&mut b, "step");
    b.extend([0x8a, 2, 0x00, 0x80]); // LONG1 -32768
    b.push(b's');
    sbu(&mut b, "lr");
    b.push(b'J');
    b.extend((-5i32).to_le_bytes());
    b.push(b's');
    b.push(b'.');

    // The VM by itself.
    let mut up = Unpickler::new(&b[..], |_pid: Value| {
        Ok(Value::Storage(std::rc::Rc::new(crate::pickle::StorageRef {
            key: "0".into(),
            dtype: TorchDType::F64,
            numel: 2,
            view_offset: 0,
            view_numel: None,
        })))
    });
    let v = up.load().unwrap();
    let Value::Dict(d) = v else { panic!() };
    let d = d.borrow();
    assert_eq!(d.len(), 3);
    assert_eq!(d[1].1.as_int(), Some(-32768));
    assert_eq!(d[2].1.as_int(), Some(-5));

    // Through load: the nested dict is picked (only state_dict candidate).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p4.pth");
    let data: Vec<u8> = [0.25f64, -8.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_zip(&p, "p4", &b, &[("0", data)]);
    let sd = pth::load(&p).unwrap();
    assert_eq!(names(&sd), ["w"]);
    assert_eq!(get(&sd, "w").dtype(), DType::F64);
    assert_eq!(get(&sd, "w").to_vec1::<f64>().unwrap(), [0.25, -8.0]);
}

#[test]
fn zip_unknown_opcode_error_names_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ext.pth");
    write_zip(&p, "archive", &[0x80, 2, 0x82, 1, b'.'], &[]);
    let e = pth::load(&p).unwrap_err().to_string();
    assert!(e.contains("ext.pth") && e.contains("byte 2 of archive/data.pkl") && e.contains("0x82"), "{e}");
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    let tensors = sample_tensors();
    checkpoint::save_safetensors(&p, &tensors).unwrap();
    let mut back = checkpoint::load_state_dict(&p).unwrap();
    back.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = tensors.clone();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_same(&want, &back);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn unknown_extension_names_file() {
    let e = checkpoint::load_state_dict(Path::new("some/dir/model.ckpt")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("some/dir/model.ckpt"), "{msg}");
    assert!(msg.contains(".ckpt") && msg.contains(".pth") && msg.contains(".safetensors"));
    let e = checkpoint::load_state_dict(Path::new("noext")).unwrap_err();
    assert!(e.to_string().contains("noext") && e.to_string().contains("(none)"));
    // Missing files name the path too.
    let e = checkpoint::load_state_dict(Path::new("/nonexistent/x.pth")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.pth"), "{e}");
}

#[test]
fn atomic_write_keeps_old_file_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "target.bin", b"old contents");
    let e = atomic::write_atomic(&p, |f| {
        f.write_all(b"partial new")?;
        Err(std::io::Error::other("boom"))
    })
    .unwrap_err();
    assert!(e.to_string().contains("target.bin") && e.to_string().contains("boom"));
    assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A panic in the closure also cleans up.
    let r = std::panic::catch_unwind(|| {
        let _ = atomic::write_atomic(&p, |f| {
            f.write_all(b"x")?;
            panic!("inside");
        });
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    atomic::write_atomic(&p, |f| f.write_all(b"new")).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A file that does not exist yet.
    let q = dir.path().join("fresh.txt");
    atomic::write_atomic(&q, |f| f.write_all(b"hi")).unwrap();
    assert_eq!(std::fs::read(&q).unwrap(), b"hi");
}
