//! Fast CPU kernels as candle custom ops, each with a hand-written backward.
//!
//! Stock candle ops are several times slower than PyTorch on a SPADE block on the CPU: the
//! convolution backward goes through a direct transposed convolution, and every norm,
//! modulation and activation is a chain of small element-wise ops, each allocating. The ops
//! here do the same arithmetic in fewer, larger steps:
//! - [`conv::conv2d`] / [`conv::conv_transpose2d`]: im2col + one matrix product per sample for
//!   the forward, the input gradient and the weight gradient (col2im for the input gradient);
//! - [`norm`]: batch / instance normalisation fused with SPADE's modulation
//!   `x̂ * (1 + gamma) + beta` and the LeakyReLU that follows it, with their backward;
//! - [`pointwise`]: LeakyReLU;
//! - [`sparse`]: SPADE's first convolution of the one-hot semantic map as gathers.
//!
//! Every op falls back to the composed candle ops on other devices and dtypes (CUDA keeps
//! candle's cuDNN path), and [`set_enabled`] switches the fast path off process-wide, which the
//! tests use to compare both paths.
use std::sync::atomic::{AtomicBool, Ordering};

pub mod avx512;
pub mod conv;
pub mod gemm;
pub mod norm;
pub mod pointwise;
pub mod sparse;
pub mod winograd;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn the fast kernels on or off for the whole process (on by default; `SPADE_STOCK_OPS=1`
/// in the environment starts with them off).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether the fast path may be used for `t` (CPU, f32, kernels enabled).
pub fn applies(t: &candle_core::Tensor) -> bool {
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| {
        if std::env::var("SPADE_STOCK_OPS").is_ok_and(|v| v == "1") {
            set_enabled(false);
        }
        keep_freed_memory();
    });
    ENABLED.load(Ordering::SeqCst) && t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// Every op allocates its output, and glibc serves large blocks with fresh `mmap`s whose pages
/// fault in (zeroed by the kernel) on first touch: a sixth of a training iteration went there.
/// Serving every block from the heap (no mmap at all: the threshold's maximum, 32 MB, is below
/// a 128-channel 128x128 activation of a batch of 4) and never trimming it lets freed blocks be
/// reused instead (about 5% of a mini training iteration, for 5% more peak memory).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; the values are in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Whether the CPU has what [`wide`] compiles for (AVX-512F, AVX2, FMA).
#[inline]
pub(crate) fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `f` compiled for AVX-512 (with AVX2 and FMA) where the CPU has it, so that its loops
/// vectorise 16 wide instead of the baseline's 4. The crate is built for baseline x86-64; each
/// hot loop body goes through here (inside the per-thread closure: rayon's own calls are not
/// covered), and the functions such a body calls are `#[inline(always)]`. Element-wise results
/// are unchanged: the same IEEE operations, no contraction into FMA, no reassociation of sums.
/// LLVM may decline to inline a large closure into `run`, which leaves it 4 wide: such bodies
/// get a `#[target_feature]` function of their own instead (the one-hot convolution's rows).
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must support AVX-512F, AVX2 and FMA (`wide_available()`, checked below).
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if wide_available() {
            // SAFETY: the CPU has the features `run` is compiled for (checked just above).
            return unsafe { run(f) };
        }
    }
    f()
}

/// Runs `f` on this thread's buffer `buf`, grown to at least `len` (contents unspecified):
/// scratch space reused across calls. Where the buffer is already in use on this thread (a
/// thread that waits inside a parallel region can run another task that wants it), `f` gets a
/// fresh one.
pub(crate) fn with_scratch<R>(
    buf: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    buf.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            if b.len() < len {
                b.resize(len, 0.0);
            }
            f(&mut b[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// A vector whose every element the caller overwrites before reading: skips the zeroing pass
/// (and, for fresh pages, the faults it would take) of `vec![0.0; len]`.
#[allow(clippy::uninit_vec)]
pub(crate) fn uninit_vec(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns; every caller writes all `len` elements before
    // the vector is read.
    unsafe { v.set_len(len) };
    v
}

/// The f32 slice behind a contiguous CPU storage (for `CustomOp`s and in-place ops).
pub fn f32_slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        candle_core::CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: expected f32 data"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor, got strides {:?}", l.stride()),
    }
}

/// [`f32_slice`], mutable (for in-place ops).
pub fn f32_slice_mut<'a>(
    s: &'a mut candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let data = match s {
        candle_core::CpuStorage::F32(v) => v.as_mut_slice(),
        _ => candle_core::bail!("{op}: expected f32 data"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor, got strides {:?}", l.stride()),
    }
}

#[cfg(test)]
mod tests;

/// Time spent in each kernel, collected when `SPADE_PROFILE=1` (for `cargo xtask bench`).
pub mod profile {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Instant;

    static TABLE: Mutex<BTreeMap<&'static str, (f64, u64)>> = Mutex::new(BTreeMap::new());

    fn level() -> u8 {
        static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| std::env::var("SPADE_PROFILE").ok().and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn on() -> bool {
        level() >= 1
    }

    /// With `SPADE_PROFILE=2`, `name` followed by the detail `what()` (e.g. a geometry), so
    /// that the table breaks a kernel down by shape; otherwise `name`.
    pub fn detailed(name: &'static str, what: impl FnOnce() -> String) -> &'static str {
        if level() < 2 {
            return name;
        }
        static NAMES: Mutex<BTreeMap<String, &'static str>> = Mutex::new(BTreeMap::new());
        let key = format!("{name} {}", what());
        let mut names = NAMES.lock().expect("profile names");
        names.entry(key.clone()).or_insert_with(|| Box::leak(key.into_boxed_str()))
    }

    /// Runs `f`, adding its wall time to `name` when profiling.
    pub fn time<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
        if !on() {
            return f();
        }
        let t = Instant::now();
        let r = f();
        let mut tab = TABLE.lock().expect("profile table");
        let e = tab.entry(name).or_insert((0.0, 0));
        e.0 += t.elapsed().as_secs_f64();
        e.1 += 1;
        r
    }

    /// The table so far (name, seconds, calls), and clears it.
    pub fn take() -> Vec<(&'static str, f64, u64)> {
        let mut tab = TABLE.lock().expect("profile table");
        let out = tab.iter().map(|(k, v)| (*k, v.0, v.1)).collect();
        tab.clear();
        out
    }
}
