//! Safety of run directories: an exclusive lock per run, stale temporary files swept on start,
//! the `latest` pointer resolved with a fallback to the newest complete checkpoint, pruning
//! that never touches `latest` or anything newer, directory fsyncs, and a finite-parameter
//! check before a checkpoint is written.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::layout::{checkpoint, RunDir};
use crate::run::{Result, TrainError};

fn file_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::File { path: path.to_path_buf(), message: e.to_string() }
}

/// An exclusive lock on a run directory (an OS file lock on `RUN/.lock`, released when this
/// value is dropped or the process dies, SIGKILL included). The file holds the holder's PID.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `run` (created if needed), or fails naming the process that holds it.
    pub fn acquire(run: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(run).map_err(|e| file_err(run, e))?;
        let path = RunDir::new(run).lock();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| file_err(&path, format!("cannot open the run lock: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
                return Err(file_err(
                    run,
                    format!(
                        "the run directory is in use: {who} holds its lock ({}); wait for that run to \
                         finish, or choose another --output-dir",
                        path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(file_err(&path, format!("cannot lock the run directory: {e}")))
            }
        }
        let pid = std::process::id();
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{pid}")?;
            f.flush()
        };
        write(&mut file).map_err(|e| file_err(&path, format!("cannot write the lock holder's PID: {e}")))?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `name` is a temporary left by a killed run: a checkpoint being written
/// (`.tmp_iter_*`) or a file of `spade_io::atomic::write_atomic` (`.NAME.tmp.PID.N`).
fn is_stale_temp(name: &str) -> bool {
    name.starts_with(".tmp_")
        || (name.starts_with('.') && {
            let mut parts = name.rsplitn(3, '.');
            let (n, pid, rest) = (parts.next(), parts.next(), parts.next());
            n.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                && pid.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && rest.is_some_and(|r| r.ends_with(".tmp"))
        })
}

/// Removes the temporaries of killed runs from `run` and `run/checkpoints` (call with the
/// lock held: no other process can be writing them). Returns what was removed.
pub fn sweep_stale_temps(run: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for dir in [run.to_path_buf(), RunDir::new(run).checkpoints()] {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !is_stale_temp(&name) {
                continue;
            }
            let p = entry.path();
            let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            res.map_err(|e| file_err(&p, format!("cannot remove a stale temporary: {e}")))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Whether `dir` is a complete checkpoint (written under a temporary name and renamed only
/// once complete; `state.json` is its last file).
fn is_complete(dir: &Path) -> bool {
    dir.join(checkpoint::STATE).is_file() && dir.join(checkpoint::NET_G).is_file()
}

/// The `iter_*` checkpoint directory names of a run, oldest first.
pub fn checkpoint_names(run: &Path) -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_dir(RunDir::new(run).checkpoints())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("iter_"))
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

/// Where the `latest` pointer of a run leads.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Set when `latest` was missing or dangling and the newest complete checkpoint was taken
    /// instead: says so.
    pub fallback: Option<String>,
}

/// Resolves `RUN/latest`; when it is missing or names no complete checkpoint, falls back to
/// the newest complete `checkpoints/iter_*` (with a note saying so). None when there is none.
pub fn resolve_latest(run: &Path) -> Option<Latest> {
    let pointer = RunDir::new(run).latest();
    let why = match std::fs::read_to_string(&pointer) {
        Ok(name) => {
            let name = name.trim();
            let dir = RunDir::new(run).checkpoint(name);
            if !name.is_empty() && !name.contains('/') && is_complete(&dir) {
                return Some(Latest { dir, fallback: None });
            }
            format!("{} names {name:?}, which is not a complete checkpoint", pointer.display())
        }
        Err(_) => format!("{} is missing", pointer.display()),
    };
    let newest =
        checkpoint_names(run).into_iter().rev().map(|n| RunDir::new(run).checkpoint(&n)).find(|d| is_complete(d))?;
    let note = format!("{why}; using the newest complete checkpoint {}", newest.display());
    Some(Latest { dir: newest, fallback: Some(note) })
}

/// Fsyncs a directory (its entries: renames and new files in it become durable).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| file_err(dir, format!("cannot open the directory to fsync it: {e}")))?;
        d.sync_all().map_err(|e| file_err(dir, format!("cannot fsync the directory: {e}")))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Removes old checkpoints: keeps the one `latest` names (`keep`), everything newer than it,
/// and the newest one older than it; removes the rest.
pub fn prune_checkpoints(run: &Path, keep: &str) -> Result<Vec<String>> {
    let ckdir = RunDir::new(run).checkpoints();
    let older: Vec<String> = checkpoint_names(run).into_iter().filter(|n| n.as_str() < keep).collect();
    let mut removed = Vec::new();
    for old in older.iter().rev().skip(1) {
        // Renamed to a temporary name first: a run killed while deleting leaves a `.tmp_*`
        // directory (swept on the next start), never a half-deleted `iter_*`.
        let p = ckdir.join(old);
        let doomed = ckdir.join(format!(".tmp_pruned_{old}"));
        std::fs::rename(&p, &doomed).map_err(|e| file_err(&p, format!("cannot remove an old checkpoint: {e}")))?;
        std::fs::remove_dir_all(&doomed)
            .map_err(|e| file_err(&doomed, format!("cannot remove an old checkpoint: {e}")))?;
        removed.push(old.clone());
    }
    Ok(removed)
}

/// Fails naming the first parameter or buffer with a NaN or infinite value, so that such
/// weights never become the last good checkpoint.
pub fn check_finite(what: &str, tensors: &[(String, candle_core::Tensor)], dest: &Path) -> Result<()> {
    use candle_core::{DType, Device};
    for (name, t) in tensors {
        if !t.dtype().is_float() {
            continue;
        }
        let v: Vec<f32> = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(file_err(
                dest,
                format!(
                    "not saving this checkpoint: {what} tensor `{name}` holds a non-finite value ({x} at flat \
                     index {i}); the previous checkpoint stays the latest"
                ),
            ));
        }
    }
    Ok(())
}

/// Appends one complete line to a JSON-lines log with a single `write` (a killed run leaves
/// at most one partial last line, which [`read_log_before`] drops).
pub fn append_line(log: &mut File, path: &Path, line: &str) -> Result<()> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    log.write_all(buf.as_bytes()).map_err(|e| file_err(path, e))
}

/// The complete lines of the loss log whose `iter` is below `start`: what a resume keeps.
/// A partial last line (a killed run) and lines of iterations at or after `start` are dropped.
pub fn read_log_before(path: &Path, start: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut kept = String::new();
    let mut seen = std::collections::HashSet::new();
    for l in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let iter = serde_json::from_str::<serde_json::Value>(l.trim_end())
            .ok()
            .and_then(|v| v["iter"].as_u64())
            .map(|i| i as usize);
        if let Some(i) = iter {
            if i < start && seen.insert(i) {
                kept.push_str(l);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_ck(run: &Path, name: &str) {
        let d = run.join("checkpoints").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("state.json"), "{}").unwrap();
        std::fs::write(d.join("latest_net_G.safetensors"), "x").unwrap();
    }

    #[test]
    fn second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("process {}", std::process::id())), "{e}");
        assert!(e.contains(".lock"), "{e}");
        drop(a);
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn stale_temps_are_swept_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        make_ck(run, "iter_00000002");
        std::fs::create_dir_all(run.join("checkpoints/.tmp_iter_00000004")).unwrap();
        std::fs::write(run.join(".latest.tmp.1234.0"), "x").unwrap();
        std::fs::write(run.join(".config.yaml.tmp.99.7"), "x").unwrap();
        std::fs::write(run.join("losses.jsonl"), "").unwrap();
        std::fs::write(run.join(".lock"), "").unwrap();
        let removed = sweep_stale_temps(run).unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(run.join("checkpoints/iter_00000002").is_dir());
        assert!(run.join("losses.jsonl").is_file() && run.join(".lock").is_file());
        assert!(!run.join("checkpoints/.tmp_iter_00000004").exists());
    }

    #[test]
    fn latest_falls_back_to_the_newest_complete_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert_eq!(resolve_latest(run), None);
        make_ck(run, "iter_00000002");
        make_ck(run, "iter_00000004");
        std::fs::create_dir_all(run.join("checkpoints/iter_00000006")).unwrap(); // incomplete
        let l = resolve_latest(run).unwrap();
        assert_eq!(l.dir, run.join("checkpoints/iter_00000004"));
        assert!(l.fallback.as_deref().unwrap().contains("is missing"), "{l:?}");
        std::fs::write(run.join("latest"), "iter_00000009").unwrap();
        let l = resolve_latest(run).unwrap();
        assert_eq!(l.dir, run.join("checkpoints/iter_00000004"));
        assert!(l.fallback.as_deref().unwrap().contains("\"iter_00000009\""), "{l:?}");
        std::fs::write(run.join("latest"), "iter_00000002\n").unwrap();
        assert_eq!(resolve_latest(run).unwrap(), Latest { dir: run.join("checkpoints/iter_00000002"), fallback: None });
    }

    #[test]
    fn pruning_keeps_latest_and_newer() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        for n in ["iter_00000001", "iter_00000002", "iter_00000003", "iter_00000050", "iter_00000060"] {
            make_ck(run, n);
        }
        let removed = prune_checkpoints(run, "iter_00000003").unwrap();
        assert_eq!(removed, vec!["iter_00000001".to_string()]);
        assert_eq!(checkpoint_names(run), vec!["iter_00000002", "iter_00000003", "iter_00000050", "iter_00000060"]);
    }

    #[test]
    fn log_keeps_complete_lines_before_start_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("losses.jsonl");
        std::fs::write(&p, "{\"iter\":0}\n{\"iter\":1}\n{\"iter\":1}\n{\"iter\":2}\n{\"iter\":3}\n{\"it").unwrap();
        assert_eq!(read_log_before(&p, 3), "{\"iter\":0}\n{\"iter\":1}\n{\"iter\":2}\n");
        // A partial last line that happens to parse is still dropped (no newline).
        std::fs::write(&p, "{\"iter\":0}\n{\"iter\":1}").unwrap();
        assert_eq!(read_log_before(&p, 5), "{\"iter\":0}\n");
    }

    #[test]
    fn non_finite_parameters_are_named() {
        let t = candle_core::Tensor::new(&[1f32, f32::NAN], &candle_core::Device::Cpu).unwrap();
        let ok = candle_core::Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
        let e = check_finite("G", &[("a".into(), ok), ("b.weight".into(), t)], Path::new("/r/ck")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("`b.weight`") && e.contains("NaN") && e.contains("/r/ck"), "{e}");
    }
}
