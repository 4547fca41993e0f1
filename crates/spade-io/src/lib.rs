//! File formats used across the workspace: PyTorch `.pth` checkpoints (zip and legacy),
//! safetensors, and atomic writes.
//!
//! * [`pth::load`] / [`pth::save`]: PyTorch checkpoints, read with an own pickle interpreter.
//!   candle's `pickle` module reads only the zip format (`torch.save` since 1.6); the official
//!   2019 SPADE checkpoints and the segmenters' released weights are in the legacy format (a bare
//!   pickle stream followed by the storages), and every reader here must also stay bounded on
//!   hostile input ([`limits`]).
//! * [`checkpoint::load_state_dict`] / [`checkpoint::save_safetensors`]: by file extension.
//! * [`atomic::write_atomic`]: write-to-temp, fsync, rename.

use std::path::{Path, PathBuf};

pub mod atomic;
pub mod checkpoint;
pub mod limits;
mod pickle;
pub mod pth;

/// Errors of this crate. Every message starts with the file path.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// An operating-system error while accessing the file.
    #[error("{}: could not {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        /// What was being done, e.g. "open the checkpoint for reading".
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// The zip container of a PyTorch checkpoint could not be read or written.
    #[error("{}: zip archive error while trying to {action}: {source}", .path.display())]
    Zip {
        path: PathBuf,
        action: String,
        #[source]
        source: Box<zip::result::ZipError>,
    },
    /// The file content is not what the format requires.
    #[error("{}: expected {expected}, found {found}", .path.display())]
    Format { path: PathBuf, expected: String, found: String },
    /// The pickle stream of a PyTorch checkpoint is malformed or uses something unsupported.
    #[error("{}: unpickling failed at {location}: expected {expected}, found {found}", .path.display())]
    Pickle {
        path: PathBuf,
        /// e.g. "byte 123 of archive/data.pkl".
        location: String,
        expected: String,
        found: String,
    },
    /// `checkpoint::load_state_dict` got a file it does not know how to read.
    #[error(
        "{}: unsupported checkpoint extension {found}; expected one of .pth, .pt, .safetensors",
        .path.display()
    )]
    UnsupportedExtension {
        path: PathBuf,
        /// The extension found (quoted), or "(none)".
        found: String,
    },
    /// The checkpoint holds something other than a state_dict.
    #[error("{}: expected a state_dict (a dict of tensors), found {found}", .path.display())]
    NotAStateDict { path: PathBuf, found: String },
    /// The safetensors header or buffer is invalid.
    #[error("{}: expected a valid safetensors file, found an invalid one: {source}", .path.display())]
    Safetensors {
        path: PathBuf,
        #[source]
        source: Box<safetensors::SafeTensorError>,
    },
    /// A candle operation on a tensor failed.
    #[error("{}: tensor {name:?}: {source}", .path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

impl IoError {
    pub(crate) fn io(path: &Path, action: impl Into<String>, source: std::io::Error) -> Self {
        IoError::Io { path: path.to_path_buf(), action: action.into(), source }
    }

    pub(crate) fn format(path: &Path, expected: impl Into<String>, found: impl Into<String>) -> Self {
        IoError::Format { path: path.to_path_buf(), expected: expected.into(), found: found.into() }
    }

    pub(crate) fn tensor(path: &Path, name: &str, source: candle_core::Error) -> Self {
        IoError::Tensor { path: path.to_path_buf(), name: name.to_string(), source: Box::new(source) }
    }

    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            IoError::Io { path, .. }
            | IoError::Zip { path, .. }
            | IoError::Format { path, .. }
            | IoError::Pickle { path, .. }
            | IoError::UnsupportedExtension { path, .. }
            | IoError::NotAStateDict { path, .. }
            | IoError::Safetensors { path, .. }
            | IoError::Tensor { path, .. } => path,
        }
    }
}

/// Little-endian bytes of a tensor (moved to the CPU and made contiguous), in row-major order.
pub(crate) fn tensor_bytes(path: &Path, name: &str, t: &candle_core::Tensor) -> Result<Vec<u8>, IoError> {
    use candle_core::{CpuStorage, Device, Storage};
    let t = t.to_device(&Device::Cpu).and_then(|t| t.contiguous()).map_err(|e| IoError::tensor(path, name, e))?;
    let (storage, layout) = t.storage_and_layout();
    let start = layout.start_offset();
    let n = t.elem_count();
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for &x in v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    let bytes = match &*storage {
        Storage::Cpu(cpu) => match cpu {
            CpuStorage::U8(v) => v[start..start + n].to_vec(),
            CpuStorage::U32(v) => le(&v[start..start + n], u32::to_le_bytes),
            CpuStorage::I16(v) => le(&v[start..start + n], i16::to_le_bytes),
            CpuStorage::I32(v) => le(&v[start..start + n], i32::to_le_bytes),
            CpuStorage::I64(v) => le(&v[start..start + n], i64::to_le_bytes),
            CpuStorage::BF16(v) => le(&v[start..start + n], |x| x.to_bits().to_le_bytes()),
            CpuStorage::F16(v) => le(&v[start..start + n], |x| x.to_bits().to_le_bytes()),
            CpuStorage::F32(v) => le(&v[start..start + n], f32::to_le_bytes),
            CpuStorage::F64(v) => le(&v[start..start + n], f64::to_le_bytes),
            _ => {
                return Err(IoError::format(
                    path,
                    "a tensor of dtype u8, u32, i16, i32, i64, bf16, f16, f32 or f64",
                    format!("tensor {name:?} of dtype {:?}", t.dtype()),
                ))
            }
        },
        _ => unreachable!("tensor was moved to the CPU"),
    };
    Ok(bytes)
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
