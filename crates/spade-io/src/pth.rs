//! PyTorch checkpoints (`torch.save` of a state_dict): the zip format (PyTorch >= 1.6) and the
//! legacy format (PyTorch <= 1.5, or `_use_new_zipfile_serialization=False`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use crate::pickle::{DictItems, PickleError, PickleWriter, StorageRef, TensorRef, TorchDType, Unpickler, Value};
use crate::IoError;

/// Magic number at the start of legacy checkpoints (a pickled int).
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Keys under which checkpoints commonly nest their state_dict, in order of preference.
const STATE_DICT_KEYS: &[&str] =
    &["state_dict", "model_state_dict", "model", "net_G", "netG", "generator", "net", "params_ema", "params", "module"];

/// Reads a PyTorch checkpoint (a state_dict, or a dict holding one under an obvious key such
/// as `"state_dict"` or `"model"`). Returns the tensors in state_dict order, on the CPU, with
/// their stored dtype (bool becomes u8). Both the zip and the legacy format are read.
pub fn load(path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let mut file = File::open(path).map_err(|e| IoError::io(path, "open the checkpoint for reading", e))?;
    let mut head = Vec::new();
    (&mut file).take(512).read_to_end(&mut head).map_err(|e| IoError::io(path, "read the checkpoint header", e))?;
    file.rewind().map_err(|e| IoError::io(path, "seek in the checkpoint", e))?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        load_zip(path, file)
    } else if head.first() == Some(&0x80) {
        load_legacy(path, file)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Err(IoError::format(
            path,
            "a zip (PyTorch >= 1.6) or legacy pickle (PyTorch 0.4-1.5) checkpoint",
            "a tar archive (PyTorch < 0.4 checkpoint format, not supported)",
        ))
    } else {
        Err(IoError::format(
            path,
            "a PyTorch checkpoint starting with a zip signature (PK\\x03\\x04) or a pickle \
             (0x80)",
            format!("first bytes {:02x?}", &head[..head.len().min(8)]),
        ))
    }
}

fn pickle_err(path: &Path, what: &str, base: u64, e: PickleError) -> IoError {
    IoError::Pickle {
        path: path.to_path_buf(),
        location: format!("byte {} of {what}", base + e.pos),
        expected: e.expected,
        found: e.found,
    }
}

/// The persistent id of a storage: `('storage', storage_type, key, location, numel[, view])`.
fn parse_storage_pid(pid: &Value, legacy: bool) -> Result<StorageRef, (String, String)> {
    let expected_shape = if legacy {
        "a persistent id ('storage', storage_type, key, location, size, view_metadata)"
    } else {
        "a persistent id ('storage', storage_type, key, location, numel)"
    };
    let Some(items) = pid.items() else {
        return Err((expected_shape.into(), pid.describe()));
    };
    if items.first().and_then(Value::as_str) != Some("storage") || items.len() < 5 {
        return Err((
            expected_shape.into(),
            format!("{} starting with {}", pid.describe(), items.first().map(Value::describe).unwrap_or_default()),
        ));
    }
    let dtype = match &items[1] {
        Value::Global { module, name } => TorchDType::from_storage_class(module, name).ok_or_else(|| {
            ("a storage class (torch.FloatStorage, torch.LongStorage, ...)".to_string(), format!("{module}.{name}"))
        })?,
        other => return Err(("a storage class".into(), other.describe())),
    };
    let key = match &items[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return Err(("a storage key string".into(), other.describe())),
    };
    let numel = match items[4].as_int() {
        Some(n) if n >= 0 => n as usize,
        _ => return Err(("a non-negative storage size".into(), items[4].describe())),
    };
    let (mut view_offset, mut view_numel) = (0, None);
    if let Some(view) = items.get(5) {
        match view {
            Value::None => {}
            v => match v.items().as_deref() {
                Some([_view_key, off, size]) => match (off.as_int(), size.as_int()) {
                    (Some(o), Some(s)) if o >= 0 && s >= 0 => {
                        view_offset = o as usize;
                        view_numel = Some(s as usize);
                    }
                    _ => {
                        return Err((
                            "a storage view (key, offset, size)".into(),
                            format!("({}, {})", off.describe(), size.describe()),
                        ))
                    }
                },
                _ => return Err(("a storage view (key, offset, size)".into(), v.describe())),
            },
        }
    }
    Ok(StorageRef { key, dtype, numel, view_offset, view_numel })
}

/// How deep [`select_state_dict`] looks for a state_dict under the keys of
/// [`STATE_DICT_KEYS`] (`{"model": {"state_dict": ...}}` is two levels).
const STATE_DICT_SEARCH_DEPTH: usize = 8;

/// Picks the state_dict out of the unpickled object. On failure returns what was found.
fn select_state_dict(root: &Value) -> Result<Vec<(String, Rc<TensorRef>)>, String> {
    select_state_dict_in(root, &mut Vec::new())
}

/// `seen`: the dicts on the path from the root (a dict found again is one that contains itself).
fn select_state_dict_in(
    root: &Value,
    seen: &mut Vec<*const std::cell::RefCell<DictItems>>,
) -> Result<Vec<(String, Rc<TensorRef>)>, String> {
    fn as_tensor_dict(v: &Value) -> Option<Vec<(String, Rc<TensorRef>)>> {
        let Value::Dict(d) = v else { return None };
        d.borrow()
            .iter()
            .map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => Some((k.clone(), t.clone())),
                _ => None,
            })
            .collect()
    }
    if let Some(sd) = as_tensor_dict(root) {
        return Ok(sd);
    }
    let Value::Dict(d) = root else {
        return Err(root.describe());
    };
    if seen.contains(&Rc::as_ptr(d)) {
        return Err(format!("a dict that contains itself (under the keys {})", STATE_DICT_KEYS.join(", ")));
    }
    if seen.len() >= STATE_DICT_SEARCH_DEPTH {
        return Err(format!("a state_dict within {STATE_DICT_SEARCH_DEPTH} levels of nested dicts"));
    }
    seen.push(Rc::as_ptr(d));
    let d = d.borrow();
    for want in STATE_DICT_KEYS {
        if let Some(v) = d.get_str(want) {
            match select_state_dict_in(v, seen) {
                Ok(sd) => return Ok(sd),
                Err(e) if e.starts_with("a dict that contains itself") || e.starts_with("a state_dict within") => {
                    return Err(e)
                }
                Err(_) => {}
            }
        }
    }
    seen.pop();
    let candidates: Vec<_> = d.iter().filter_map(|(_, v)| as_tensor_dict(v).filter(|sd| !sd.is_empty())).collect();
    if let [only] = candidates.as_slice() {
        return Ok(only.clone());
    }
    let mut listing: Vec<String> = d
        .iter()
        .take(40)
        .map(|(k, v)| {
            let k = match k {
                Value::Str(s) if s.len() <= 80 => format!("{s:?}"),
                other => other.describe(),
            };
            format!("{k}: {}", v.describe())
        })
        .collect();
    if d.len() > 40 {
        listing.push(format!("... ({} more)", d.len() - 40));
    }
    let why = if candidates.len() > 1 {
        format!("{} entries are state_dicts, so none is the obvious one", candidates.len())
    } else {
        "no entry is a state_dict".to_string()
    };
    Err(format!("a dict whose values are not all tensors ({why}); its keys: {{{}}}", listing.join(", ")))
}

fn candle_dtype(path: &Path, name: &str, d: TorchDType) -> Result<DType, IoError> {
    Ok(match d {
        TorchDType::F64 => DType::F64,
        TorchDType::F32 => DType::F32,
        TorchDType::F16 => DType::F16,
        TorchDType::BF16 => DType::BF16,
        TorchDType::I64 => DType::I64,
        TorchDType::I32 => DType::I32,
        TorchDType::I16 => DType::I16,
        TorchDType::U8 | TorchDType::Bool | TorchDType::Untyped => DType::U8,
        TorchDType::I8 => {
            return Err(IoError::format(
                path,
                "a tensor dtype candle supports (f64, f32, f16, bf16, i64, i32, i16, u8, bool)",
                format!("tensor {name:?} of dtype int8 (torch.CharStorage)"),
            ))
        }
    })
}

/// The bytes a storage declares (`numel` elements of its dtype), with overflow checked.
fn storage_nbytes(path: &Path, st: &StorageRef) -> Result<usize, IoError> {
    st.numel.checked_mul(st.dtype.size()).ok_or_else(|| {
        IoError::format(
            path,
            format!("a storage size that fits in memory for storage {:?}", st.key),
            format!("{} elements of {:?}", st.numel, st.dtype),
        )
    })
}

/// Builds a contiguous CPU tensor from its (possibly strided/offset) view of a storage.
///
/// Every size is checked (with overflow checks) against the bytes present before anything
/// is allocated, and a view with more elements than its storage (a stride-0 or overlapping
/// view that would expand the file's data) is refused: memory stays within the file's size.
fn materialize(path: &Path, name: &str, t: &TensorRef, data: &[u8], big_endian: bool) -> Result<Tensor, IoError> {
    let dtype = candle_dtype(path, name, t.dtype)?;
    let st = &t.storage;
    let es = t.dtype.size();
    let storage_bytes = storage_nbytes(path, st)?;
    if data.len() < storage_bytes {
        return Err(IoError::format(
            path,
            format!("{storage_bytes} bytes for storage {:?} ({} x {:?})", st.key, st.numel, st.dtype),
            format!("{} bytes", data.len()),
        ));
    }
    let shape_err = |what: String| {
        IoError::format(
            path,
            format!("tensor {name:?} (offset {}, size {:?}, stride {:?}) to {what}", t.offset, t.size, t.stride),
            "sizes whose product or offsets overflow",
        )
    };
    let sdt = st.dtype.size();
    let view_start = st.view_offset.checked_mul(sdt).ok_or_else(|| shape_err("have a storage view in range".into()))?;
    let view_end = match st.view_numel {
        Some(n) => n
            .checked_mul(sdt)
            .and_then(|n| n.checked_add(view_start))
            .ok_or_else(|| shape_err("have a storage view in range".into()))?,
        None => data.len(),
    };
    let avail_end = view_end.min(data.len());
    let avail = avail_end.saturating_sub(view_start);
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .ok_or_else(|| shape_err("have an element count that fits in memory".into()))?;
    let nbytes = numel.checked_mul(es).ok_or_else(|| shape_err("have a byte size that fits in memory".into()))?;
    if nbytes > avail {
        return Err(IoError::format(
            path,
            format!(
                "tensor {name:?} (size {:?}, stride {:?}) to have at most as many elements as its storage {:?} \
                 holds ({avail} bytes); stride-0 or overlapping views that expand the data are not read",
                t.size, t.stride, st.key
            ),
            format!("{numel} elements ({nbytes} bytes)"),
        ));
    }
    let mut buf = Vec::with_capacity(nbytes);
    if numel > 0 {
        let base = t
            .offset
            .checked_mul(es)
            .and_then(|o| o.checked_add(view_start))
            .ok_or_else(|| shape_err("have an offset in range".into()))?;
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(0usize, |a, (&n, &s)| (n - 1).checked_mul(s).and_then(|x| a.checked_add(x)))
            .ok_or_else(|| shape_err("have strides whose offsets fit in memory".into()))?;
        let end = last
            .checked_add(1)
            .and_then(|l| l.checked_mul(es))
            .and_then(|l| l.checked_add(base))
            .ok_or_else(|| shape_err("have strides whose offsets fit in memory".into()))?;
        if end > avail_end {
            return Err(IoError::format(
                path,
                format!(
                    "tensor {name:?} (offset {}, size {:?}, stride {:?}) to lie within its \
                     storage {:?}",
                    t.offset, t.size, t.stride, st.key
                ),
                format!("it ends at byte {end} of a storage of {} bytes", avail),
            ));
        }
        let rank = t.size.len();
        // Copy the innermost dimension as one run when it is dense.
        let (run, outer) = if rank > 0 && t.stride[rank - 1] == 1 { (t.size[rank - 1], rank - 1) } else { (1, rank) };
        let contiguous = {
            let mut expect = 1;
            let mut ok = true;
            for d in (0..rank).rev() {
                if t.size[d] != 1 && t.stride[d] != expect {
                    ok = false;
                }
                expect *= t.size[d];
            }
            ok
        };
        if contiguous {
            buf.extend_from_slice(&data[base..base + numel * es]);
        } else {
            let mut idx = vec![0usize; outer];
            'outer: loop {
                let off: usize = idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum();
                let start = base + off * es;
                buf.extend_from_slice(&data[start..start + run * es]);
                let mut d = outer;
                loop {
                    if d == 0 {
                        break 'outer;
                    }
                    d -= 1;
                    idx[d] += 1;
                    if idx[d] < t.size[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        if big_endian && es > 1 {
            for chunk in buf.chunks_exact_mut(es) {
                chunk.reverse();
            }
        }
    }
    Tensor::from_raw_buffer(&buf, dtype, &t.size, &Device::Cpu).map_err(|e| IoError::tensor(path, name, e))
}

fn zip_err(path: &Path, action: impl Into<String>) -> impl FnOnce(zip::result::ZipError) -> IoError {
    let path = path.to_path_buf();
    let action = action.into();
    move |source| IoError::Zip { path, action, source: Box::new(source) }
}

fn load_zip(path: &Path, file: File) -> Result<Vec<(String, Tensor)>, IoError> {
    let file_len = file.metadata().map_err(|e| IoError::io(path, "read the checkpoint's size", e))?.len();
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err(path, "open the zip checkpoint"))?;
    let entry_names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(zip_err(path, "read the zip entry names"))?;
    let pkl_name = entry_names
        .iter()
        .filter(|n| {
            n.strip_suffix("data.pkl")
                .is_some_and(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        })
        .min_by_key(|n| n.len())
        .cloned();
    let Some(pkl_name) = pkl_name else {
        let mut names: Vec<_> = entry_names.iter().take(10).cloned().collect();
        names.sort();
        return Err(IoError::format(
            path,
            "a zip checkpoint with an <archive>/data.pkl entry",
            format!("entries {names:?}"),
        ));
    };
    let prefix = pkl_name.strip_suffix("data.pkl").unwrap().to_string();
    let mut limit = crate::limits::EntryBudget::new(file_len);
    // `want`: the exact size needed, or None for the whole entry of at most `cap` bytes.
    let read_entry = |zip: &mut zip::ZipArchive<BufReader<File>>,
                      name: &str,
                      want: Option<u64>,
                      cap: u64,
                      limit: &mut crate::limits::EntryBudget| {
        let entry = zip.by_name(name).map_err(zip_err(path, format!("find entry {name}")))?;
        limit.read(path, name, entry, want, cap)
    };

    let big_endian = if entry_names.iter().any(|n| *n == format!("{prefix}byteorder")) {
        let bo = read_entry(&mut zip, &format!("{prefix}byteorder"), None, 64, &mut limit)?;
        match bo.trim_ascii() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(IoError::format(
                    path,
                    format!("{prefix}byteorder to be \"little\" or \"big\""),
                    format!("{:?}", String::from_utf8_lossy(other)),
                ))
            }
        }
    } else {
        false
    };

    let pkl = read_entry(&mut zip, &pkl_name, None, u64::MAX, &mut limit)?;
    let root = {
        let mut up =
            Unpickler::new(&pkl[..], |pid: Value| parse_storage_pid(&pid, false).map(|s| Value::Storage(Rc::new(s))));
        up.load().map_err(|e| pickle_err(path, &pkl_name, 0, e))?
    };
    let sd = select_state_dict(&root).map_err(|found| IoError::NotAStateDict { path: path.to_path_buf(), found })?;
    drop(root);
    drop(pkl);

    // Read each storage once; keep it only while tensors still need it.
    let mut remaining: HashMap<String, usize> = HashMap::new();
    for (_, t) in &sd {
        *remaining.entry(t.storage.key.clone()).or_default() += 1;
    }
    let mut cache: HashMap<String, Rc<Vec<u8>>> = HashMap::new();
    let mut out = Vec::with_capacity(sd.len());
    for (name, t) in &sd {
        let key = &t.storage.key;
        let data = match cache.get(key) {
            Some(d) => d.clone(),
            None => {
                let want = storage_nbytes(path, &t.storage)? as u64;
                let d =
                    Rc::new(read_entry(&mut zip, &format!("{prefix}data/{key}"), Some(want), u64::MAX, &mut limit)?);
                cache.insert(key.clone(), d.clone());
                d
            }
        };
        out.push((name.clone(), materialize(path, name, t, &data, big_endian)?));
        let left = remaining.get_mut(key).unwrap();
        *left -= 1;
        if *left == 0 {
            cache.remove(key);
        }
    }
    Ok(out)
}

fn load_legacy(path: &Path, file: File) -> Result<Vec<(String, Tensor)>, IoError> {
    let file_len = file.metadata().map_err(|e| IoError::io(path, "read the checkpoint's size", e))?.len();
    let mut reader = BufReader::new(file);
    let mut pos = 0u64;
    let mut no_pid =
        |pid: Value| -> Result<Value, (String, String)> { Err(("no persistent id here".into(), pid.describe())) };

    // 1. Magic number.
    let magic = {
        let mut up = Unpickler::new(&mut reader, &mut no_pid);
        let v = up.load().map_err(|e| pickle_err(path, "the legacy magic-number pickle", pos, e))?;
        pos += up.position();
        v
    };
    let magic_ok = match &magic {
        Value::BigInt(b) if b.len() <= 16 => {
            let mut buf = [0u8; 16];
            buf[..b.len()].copy_from_slice(b);
            u128::from_le_bytes(buf) == LEGACY_MAGIC
        }
        _ => false,
    };
    if !magic_ok {
        return Err(IoError::format(
            path,
            format!("the legacy PyTorch magic number 0x{LEGACY_MAGIC:x}"),
            magic.describe(),
        ));
    }
    // 2. Protocol version.
    let version = {
        let mut up = Unpickler::new(&mut reader, &mut no_pid);
        let v = up.load().map_err(|e| pickle_err(path, "the legacy protocol-version pickle", pos, e))?;
        pos += up.position();
        v
    };
    if version.as_int() != Some(LEGACY_PROTOCOL_VERSION) {
        return Err(IoError::format(
            path,
            format!("legacy protocol version {LEGACY_PROTOCOL_VERSION}"),
            version.describe(),
        ));
    }
    // 3. sys_info: only endianness matters.
    let sys_info = {
        let mut up = Unpickler::new(&mut reader, &mut no_pid);
        let v = up.load().map_err(|e| pickle_err(path, "the legacy sys_info pickle", pos, e))?;
        pos += up.position();
        v
    };
    let big_endian = match &sys_info {
        Value::Dict(d) => d
            .borrow()
            .iter()
            .find(|(k, _)| k.as_str() == Some("little_endian"))
            .map(|(_, v)| matches!(v, Value::Bool(false)))
            .unwrap_or(false),
        _ => false,
    };
    // 4. The object, with storages as persistent ids.
    let mut roots: HashMap<String, (TorchDType, usize)> = HashMap::new();
    let root = {
        let mut up = Unpickler::new(&mut reader, |pid: Value| {
            let s = parse_storage_pid(&pid, true)?;
            let root = roots.entry(s.key.clone()).or_insert((s.dtype, s.numel));
            // All references to a root storage use its first-seen type (as torch.load does).
            let s = StorageRef { dtype: root.0, numel: root.1, ..s };
            Ok(Value::Storage(Rc::new(s)))
        });
        let v = up.load().map_err(|e| pickle_err(path, "the legacy object pickle", pos, e))?;
        pos += up.position();
        v
    };
    // 5. The list of storage keys, in the order of the raw data that follows.
    let keys = {
        let mut up = Unpickler::new(&mut reader, &mut no_pid);
        let v = up.load().map_err(|e| pickle_err(path, "the legacy storage-key list", pos, e))?;
        pos += up.position();
        v
    };
    let keys: Vec<String> = match keys.items() {
        Some(items) => items
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.clone()),
                Value::Int(i) => Ok(i.to_string()),
                other => Err(IoError::format(
                    path,
                    "a list of storage keys (strings)",
                    format!("an item {}", other.describe()),
                )),
            })
            .collect::<Result<_, _>>()?,
        None => return Err(IoError::format(path, "a list of storage keys after the object pickle", keys.describe())),
    };

    let sd = select_state_dict(&root).map_err(|found| IoError::NotAStateDict { path: path.to_path_buf(), found })?;
    let needed: HashSet<&str> = sd.iter().map(|(_, t)| t.storage.key.as_str()).collect();

    // 6. Raw storages: u64 element count, then the elements.
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for key in &keys {
        let Some(&(dtype, numel)) = roots.get(key) else {
            return Err(IoError::format(
                path,
                format!("storage key {key:?} of the key list to appear in the object pickle"),
                "no such storage",
            ));
        };
        let mut count = [0u8; 8];
        reader.read_exact(&mut count).map_err(|e| {
            IoError::io(path, format!("read the size of storage {key:?} at byte {pos} (file truncated?)"), e)
        })?;
        pos += 8;
        let count = if big_endian { u64::from_be_bytes(count) } else { u64::from_le_bytes(count) };
        if count != numel as u64 {
            return Err(IoError::format(
                path,
                format!("{numel} elements for storage {key:?} (as its persistent id says)"),
                format!("a record of {count} elements at byte {}", pos - 8),
            ));
        }
        let nbytes =
            numel.checked_mul(dtype.size()).filter(|&n| n as u64 <= file_len.saturating_sub(pos)).ok_or_else(|| {
                IoError::format(
                    path,
                    format!(
                        "storage {key:?} ({numel} x {dtype:?}) to fit in the {} bytes left after byte {pos}",
                        file_len.saturating_sub(pos)
                    ),
                    "a declared size larger than the file (truncated or corrupt)",
                )
            })?;
        if needed.contains(key.as_str()) {
            let mut buf = vec![0u8; nbytes];
            reader.read_exact(&mut buf).map_err(|e| {
                IoError::io(path, format!("read {nbytes} bytes of storage {key:?} at byte {pos} (file truncated?)"), e)
            })?;
            data.insert(key.clone(), buf);
        } else {
            reader.seek_relative(nbytes as i64).map_err(|e| IoError::io(path, format!("skip storage {key:?}"), e))?;
        }
        pos += nbytes as u64;
    }

    sd.iter()
        .map(|(name, t)| {
            let d = data.get(&t.storage.key).ok_or_else(|| {
                IoError::format(
                    path,
                    format!("the data of storage {:?} (used by tensor {name:?}) after the key list", t.storage.key),
                    "the key missing from the storage key list",
                )
            })?;
            Ok((name.clone(), materialize(path, name, t, d, big_endian)?))
        })
        .collect()
}

fn torch_dtype(path: &Path, name: &str, d: DType) -> Result<TorchDType, IoError> {
    Ok(match d {
        DType::F64 => TorchDType::F64,
        DType::F32 => TorchDType::F32,
        DType::F16 => TorchDType::F16,
        DType::BF16 => TorchDType::BF16,
        DType::I64 => TorchDType::I64,
        DType::I32 => TorchDType::I32,
        DType::I16 => TorchDType::I16,
        DType::U8 => TorchDType::U8,
        other => {
            return Err(IoError::format(
                path,
                "a tensor dtype torch storages have (f64, f32, f16, bf16, i64, i32, i16, u8)",
                format!("tensor {name:?} of dtype {other:?}"),
            ))
        }
    })
}

/// The pickle of an `OrderedDict` of tensors whose storages are `data/<index>`.
fn state_dict_pickle(entries: &[(&str, TorchDType, &[usize])]) -> Vec<u8> {
    let mut w = PickleWriter::new();
    w.global("collections", "OrderedDict").op(b')').op(b'R');
    w.mark();
    for (i, (name, dtype, shape)) in entries.iter().enumerate() {
        let numel: usize = shape.iter().product();
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        w.str(name);
        w.global("torch._utils", "_rebuild_tensor_v2");
        w.mark();
        // Persistent id.
        w.mark()
            .str("storage")
            .global("torch", dtype.storage_class())
            .str(&i.to_string())
            .str("cpu")
            .int(numel as i64)
            .op(b't')
            .op(b'Q');
        w.int(0).int_tuple(shape).int_tuple(&stride).bool(false);
        w.global("collections", "OrderedDict").op(b')').op(b'R');
        w.op(b't').op(b'R');
    }
    w.op(b'u');
    w.finish()
}

/// Writes a state_dict in the zip format that `torch.load` reads (atomically). Dtypes f64,
/// f32, f16, bf16, i64, i32, i16 and u8 are supported.
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), IoError> {
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(tensors.len());
    let mut blobs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(IoError::format(path, "unique tensor names", format!("{name:?} twice")));
        }
        let dtype = torch_dtype(path, name, t.dtype())?;
        blobs.push(crate::tensor_bytes(path, name, t)?);
        entries.push((name.as_str(), dtype, t.dims()));
    }
    let pkl = state_dict_pickle(&entries);

    // torch names the archive's top folder after the file.
    let archive = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .unwrap_or("archive")
        .to_string();

    let mut zip_error = None;
    let result = crate::atomic::write_atomic(path, |file| {
        use zip::write::SimpleFileOptions;
        let mut zw = zip::ZipWriter::new(std::io::BufWriter::new(file));
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64);
        let put = |zw: &mut zip::ZipWriter<_>, name: String, data: &[u8]| {
            let large = data.len() as u64 >= u32::MAX as u64 - 1024;
            zw.start_file(name, opts.large_file(large))?;
            zw.write_all(data)?;
            Ok::<_, zip::result::ZipError>(())
        };
        let run = |zw: &mut zip::ZipWriter<_>| -> Result<(), zip::result::ZipError> {
            put(zw, format!("{archive}/data.pkl"), &pkl)?;
            put(zw, format!("{archive}/.format_version"), b"1")?;
            put(zw, format!("{archive}/.storage_alignment"), b"64")?;
            put(zw, format!("{archive}/byteorder"), b"little")?;
            for (i, blob) in blobs.iter().enumerate() {
                put(zw, format!("{archive}/data/{i}"), blob)?;
            }
            put(zw, format!("{archive}/version"), b"3\n")?;
            Ok(())
        };
        let res = run(&mut zw).and_then(|()| zw.finish().map(|_| ()));
        match res {
            Ok(()) => Ok(()),
            Err(zip::result::ZipError::Io(e)) => Err(e),
            Err(e) => {
                let msg = e.to_string();
                zip_error = Some(e);
                Err(std::io::Error::other(msg))
            }
        }
    });
    match (result, zip_error) {
        (Err(_), Some(source)) => Err(IoError::Zip {
            path: path.to_path_buf(),
            action: "write the zip checkpoint".into(),
            source: Box::new(source),
        }),
        (r, _) => r,
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! Builders of checkpoint byte streams for the unit tests.
    use super::*;

    /// A tensor view for the legacy writer.
    pub(crate) struct View<'a> {
        pub name: &'a str,
        pub storage_key: &'a str,
        pub offset: usize,
        pub size: &'a [usize],
        pub stride: &'a [usize],
        /// A legacy storage view (offset, numel) into the root storage.
        pub storage_view: Option<(usize, usize)>,
    }

    /// Writes a legacy-format checkpoint: `storages` are (key, dtype, raw little-endian bytes).
    /// When `ordered` the state dict is an OrderedDict (with `_metadata`), else a plain dict.
    pub(crate) fn legacy_bytes(storages: &[(&str, TorchDType, Vec<u8>)], views: &[View], ordered: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = PickleWriter::new();
        w.op(0x8a).op(10);
        w.buf.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
        out.extend(w.finish());
        let mut w = PickleWriter::new();
        w.int(LEGACY_PROTOCOL_VERSION);
        out.extend(w.finish());
        let mut w = PickleWriter::new();
        w.op(b'}').mark();
        w.str("protocol_version").int(1001);
        w.str("little_endian").bool(true);
        w.str("type_sizes").op(b'}').mark();
        w.str("short").int(2).str("int").int(4).str("long").int(4);
        w.op(b'u').op(b'u');
        out.extend(w.finish());

        let mut w = PickleWriter::new();
        if ordered {
            w.global("collections", "OrderedDict").op(b')').op(b'R');
            w.op(b'q').op(0); // BINPUT 0: memoised, then fetched by BUILD below.
        } else {
            w.op(b'}');
        }
        w.mark();
        for v in views {
            let (_, dtype, bytes) = storages.iter().find(|s| s.0 == v.storage_key).unwrap();
            w.str(v.name);
            w.global("torch._utils", "_rebuild_tensor_v2");
            w.mark();
            w.mark()
                .str("storage")
                .global("torch", dtype.storage_class())
                .str(v.storage_key)
                .str("cpu")
                .int((bytes.len() / dtype.size()) as i64);
            match v.storage_view {
                None => w.op(b'N'),
                Some((off, n)) => w.mark().str(&format!("{}_view", v.name)).int(off as i64).int(n as i64).op(b't'),
            };
            w.op(b't').op(b'Q');
            w.int(v.offset as i64).int_tuple(v.size).int_tuple(v.stride).bool(false);
            w.global("collections", "OrderedDict").op(b')').op(b'R');
            w.op(b't').op(b'R');
        }
        w.op(b'u');
        if ordered {
            // state = {'_metadata': OrderedDict({'': {'version': 1}})}
            w.op(b'}').str("_metadata");
            w.global("collections", "OrderedDict").op(b')').op(b'R');
            w.str("").op(b'}').str("version").int(1).op(b's').op(b's');
            w.op(b's').op(b'b');
        }
        out.extend(w.finish());

        let mut w = PickleWriter::new();
        w.op(b']').mark();
        for (k, _, _) in storages {
            w.str(k);
        }
        w.op(b'e');
        out.extend(w.finish());
        for (_, dtype, bytes) in storages {
            out.extend(((bytes.len() / dtype.size()) as u64).to_le_bytes());
            out.extend(bytes);
        }
        out
    }
}
