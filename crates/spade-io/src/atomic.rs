//! Atomic file replacement: write a temporary file next to the target, fsync, rename.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::IoError;

/// Removes the temporary file unless disarmed (also on panic inside the closure).
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a file atomically: calls `write` on a temp file in the same directory, fsyncs,
/// renames over `path`. On error the temp file is removed and an existing `path` stays intact.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<(), IoError> {
    let file_name =
        path.file_name().ok_or_else(|| IoError::format(path, "a path naming a file", "a path without a file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };

    // Create a fresh temp file (never clobber someone else's).
    let (tmp_path, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp.{}.{n}", std::process::id()));
        let candidate = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&candidate) {
            Ok(f) => break (candidate, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(IoError::io(path, format!("create the temporary file {}", candidate.display()), e)),
        }
    };
    let mut guard = TempGuard { path: Some(tmp_path.clone()) };

    write(&mut file).map_err(|e| IoError::io(path, "write the contents", e))?;
    file.sync_all().map_err(|e| IoError::io(path, "fsync the temporary file", e))?;
    drop(file);
    std::fs::rename(&tmp_path, path)
        .map_err(|e| IoError::io(path, format!("rename {} over the target", tmp_path.display()), e))?;
    guard.path = None;
    // Make the rename durable (best effort: not every platform can fsync a directory).
    #[cfg(unix)]
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
