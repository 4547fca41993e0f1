//! Loading state dicts by file extension, and writing safetensors.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use crate::IoError;

/// Loads `.pth`/`.pt` through [`crate::pth::load`], `.safetensors` through safetensors
/// (tensors in file data order); other extensions: an error naming the file and the accepted
/// extensions.
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("pth") | Some("pt") => crate::pth::load(path),
        Some("safetensors") => load_safetensors(path),
        other => Err(IoError::UnsupportedExtension {
            path: path.to_path_buf(),
            found: match other {
                Some(e) => format!("\".{e}\""),
                None => "(none)".to_string(),
            },
        }),
    }
}

fn load_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "read the safetensors file", e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|source| IoError::Safetensors { path: path.to_path_buf(), source: Box::new(source) })?;
    let mut views = st.tensors();
    // The header is a JSON map: keep the order of the data in the file instead.
    views.sort_by_key(|(name, v)| (v.data().as_ptr() as usize, name.clone()));
    views
        .into_iter()
        .map(|(name, v)| {
            let dtype = match v.dtype() {
                StDtype::BOOL | StDtype::U8 => DType::U8,
                StDtype::I16 => DType::I16,
                StDtype::I32 => DType::I32,
                StDtype::U32 => DType::U32,
                StDtype::I64 => DType::I64,
                StDtype::F16 => DType::F16,
                StDtype::BF16 => DType::BF16,
                StDtype::F32 => DType::F32,
                StDtype::F64 => DType::F64,
                other => {
                    return Err(IoError::format(
                        path,
                        "safetensors dtypes BOOL, U8, I16, I32, U32, I64, F16, BF16, F32 or F64",
                        format!("tensor {name:?} of dtype {other:?}"),
                    ))
                }
            };
            let t = Tensor::from_raw_buffer(v.data(), dtype, v.shape(), &Device::Cpu)
                .map_err(|e| IoError::tensor(path, &name, e))?;
            Ok((name, t))
        })
        .collect()
}

struct RawView {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &RawView {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes safetensors atomically (temporary file in the same directory, fsync, rename).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), IoError> {
    let mut seen = HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(IoError::format(path, "unique tensor names", format!("{name:?} twice")));
        }
        let dtype = match t.dtype() {
            DType::U8 => StDtype::U8,
            DType::U32 => StDtype::U32,
            DType::I16 => StDtype::I16,
            DType::I32 => StDtype::I32,
            DType::I64 => StDtype::I64,
            DType::BF16 => StDtype::BF16,
            DType::F16 => StDtype::F16,
            DType::F32 => StDtype::F32,
            DType::F64 => StDtype::F64,
            other => {
                return Err(IoError::format(
                    path,
                    "a tensor of dtype u8, u32, i16, i32, i64, bf16, f16, f32 or f64",
                    format!("tensor {name:?} of dtype {other:?}"),
                ))
            }
        };
        let data = crate::tensor_bytes(path, name, t)?;
        views.push((name.clone(), RawView { dtype, shape: t.dims().to_vec(), data }));
    }
    let bytes = safetensors::tensor::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), None)
        .map_err(|source| IoError::Safetensors { path: path.to_path_buf(), source: Box::new(source) })?;
    crate::atomic::write_atomic(path, |f| f.write_all(&bytes))
}
