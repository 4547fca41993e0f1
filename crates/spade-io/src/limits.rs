//! Limits that keep reading hostile files bounded: zip entries are read through a limit,
//! never to a size they declare, and compressed entries may not inflate past a budget.

use std::io::Read;
use std::path::Path;

use crate::IoError;

/// Compressed zip entries may inflate to at most this many times the file's size in total
/// (with [`INFLATE_FLOOR`] as the least budget). `torch.save` and `np.savez` store entries
/// uncompressed; `np.savez_compressed` of float data compresses about 1.1x.
pub const INFLATE_RATIO: u64 = 16;
/// The least total budget for inflated entries, whatever the file's size: 64 MiB.
pub const INFLATE_FLOOR: u64 = 64 << 20;

/// The bytes the compressed entries of one zip file may still inflate to.
#[derive(Debug, Clone)]
pub struct EntryBudget {
    file_len: u64,
    inflate_left: u64,
}

impl EntryBudget {
    /// The budget for a zip file of `file_len` bytes.
    pub fn new(file_len: u64) -> Self {
        EntryBudget { file_len, inflate_left: file_len.saturating_mul(INFLATE_RATIO).max(INFLATE_FLOOR) }
    }

    /// Reads the entry `name` of the file `path`: `want` bytes (an error when the entry holds
    /// fewer), or, with `want` None, the whole entry, which may declare at most `cap` bytes.
    /// Nothing is allocated from a declared size before it was checked against the bytes the
    /// file has (stored entries) or the inflate budget (compressed entries), and a compressed
    /// entry reserves at most [`INFLATE_RATIO`] times the file's size up front.
    pub fn read<R: Read>(
        &mut self,
        path: &Path,
        name: &str,
        entry: zip::read::ZipFile<'_, R>,
        want: Option<u64>,
        cap: u64,
    ) -> Result<Vec<u8>, IoError> {
        let declared = entry.size();
        let stored = entry.compression() == zip::CompressionMethod::Stored;
        let n = match want {
            Some(w) if declared < w => {
                return Err(IoError::format(
                    path,
                    format!("zip entry {name} to hold {w} bytes (the size its tensor storage declares)"),
                    format!("an entry of {declared} bytes"),
                ))
            }
            Some(w) => w,
            None if declared > cap => {
                return Err(IoError::format(
                    path,
                    format!("zip entry {name} of at most {cap} bytes"),
                    format!("an entry declaring {declared} bytes"),
                ))
            }
            None => declared,
        };
        if stored && n > self.file_len {
            return Err(IoError::format(
                path,
                format!("zip entry {name} to fit in the file's {} bytes", self.file_len),
                format!("an entry declaring {n} bytes (truncated or corrupt file)"),
            ));
        }
        if !stored && n > self.inflate_left {
            return Err(IoError::format(
                path,
                format!(
                    "compressed zip entries inflating to at most {} bytes in all ({INFLATE_RATIO} times the file's \
                     size, at least {INFLATE_FLOOR}); torch.save and np.savez store entries uncompressed",
                    self.file_len.saturating_mul(INFLATE_RATIO).max(INFLATE_FLOOR)
                ),
                format!("entry {name} declaring {n} bytes ({} compressed)", entry.compressed_size()),
            ));
        }
        // Reserve no more than the file could hold at the usual ratio: a compressed entry that
        // declares a large size but inflates to little costs only what it inflates to.
        let reserve = if stored { n } else { n.min(self.file_len.saturating_mul(INFLATE_RATIO)) };
        let mut buf = Vec::with_capacity(reserve.min(INFLATE_FLOOR) as usize);
        let got =
            entry.take(n).read_to_end(&mut buf).map_err(|e| IoError::io(path, format!("read zip entry {name}"), e))?
                as u64;
        if got < n {
            return Err(IoError::format(
                path,
                format!("zip entry {name} to hold the {n} bytes it declares"),
                format!("{got} bytes (truncated or corrupt file)"),
            ));
        }
        if !stored {
            self.inflate_left -= got;
        }
        Ok(buf)
    }
}
