//! Fast CPU kernels as candle custom ops, each with a hand-written backward.
//!
//! Stock candle ops are several times slower than PyTorch on a SPADE block on the CPU: the
//! convolution backward goes through a direct transposed convolution, and every norm,
//! modulation and activation is a chain of small element-wise ops, each allocating. The ops
//! here do the same arithmetic in fewer, larger steps:
//! - [`conv::conv2d`] / [`conv::conv_transpose2d`]: batched matrix products (the samples of a
//!   batch side by side) for the forward, the input gradient and the weight gradient, with
//!   Winograd F(2x2, 3x3) for 3x3 convolutions on large maps (AVX-512 only) and
//!   the bias and LeakyReLU fused into the product's epilogue;
//! - [`norm`]: batch / instance normalisation fused with SPADE's modulation
//!   `x̂ * (1 + gamma) + beta` and the LeakyReLU that follows it, with their backward;
//! - [`pointwise`]: LeakyReLU and nearest 2x upsampling;
//! - [`sparse`]: SPADE's first convolution of the one-hot semantic map as gathers;
//! - [`gemm::sgemm`]: the matrix product, our AVX-512 micro-kernel where the CPU has it, the
//!   `gemm` crate's otherwise.
//!
//! Every op falls back to the composed candle ops on other devices and dtypes (CUDA keeps
//! candle's cuDNN path). Which paths run is a [`KernelOptions`], set by the binaries
//! ([`set_options`]); the library reads no environment variable.
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

pub(crate) mod avx512;
pub mod conv;
pub mod gemm;
pub mod norm;
pub mod pointwise;
pub mod sparse;
pub(crate) mod winograd;

/// The matrix-product kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmKernel {
    /// Our AVX-512 kernel where the CPU has it, the `gemm` crate's otherwise.
    #[default]
    Auto,
    /// Always the `gemm` crate's (to compare with ours).
    Crate,
}

/// Which kernel paths run. One value per process, set with [`set_options`] by a binary (or a
/// test that compares paths); [`KernelOptions::default`] until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOptions {
    /// The fast kernels (false: every op runs as composed stock candle ops).
    pub enabled: bool,
    /// Winograd F(2x2, 3x3) for the 3x3 convolutions where it pays (only on AVX-512 CPUs).
    pub winograd: bool,
    /// The matrix-product kernel.
    pub gemm: GemmKernel,
    /// Time each kernel ([`profile`]): 0 off, 1 per kernel, 2 per kernel and shape.
    pub profile: u8,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions { enabled: true, winograd: true, gemm: GemmKernel::Auto, profile: 0 }
    }
}

impl KernelOptions {
    /// The options that `SPADE_STOCK_OPS` (1: stock ops), `SPADE_WINOGRAD` (0: off),
    /// `SPADE_GEMM` (`crate`: the gemm crate's product) and `SPADE_PROFILE` (1 or 2) ask for,
    /// `get` giving each variable's value (a binary passes `std::env::var`); unset variables
    /// keep the default.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut o = KernelOptions::default();
        let bad = |name: &str, v: &str, expected: &str| format!("{name}={v:?}: expected {expected}");
        if let Some(v) = get("SPADE_STOCK_OPS") {
            o.enabled = match v.as_str() {
                "1" => false,
                "0" | "" => true,
                _ => return Err(bad("SPADE_STOCK_OPS", &v, "0 or 1")),
            };
        }
        if let Some(v) = get("SPADE_WINOGRAD") {
            o.winograd = match v.as_str() {
                "0" => false,
                "1" | "" => true,
                _ => return Err(bad("SPADE_WINOGRAD", &v, "0 or 1")),
            };
        }
        if let Some(v) = get("SPADE_GEMM") {
            o.gemm = match v.as_str() {
                "crate" => GemmKernel::Crate,
                "auto" | "" => GemmKernel::Auto,
                _ => return Err(bad("SPADE_GEMM", &v, "auto or crate")),
            };
        }
        if let Some(v) = get("SPADE_PROFILE") {
            o.profile = match v.as_str() {
                "" => 0,
                _ => v.parse().ok().filter(|l| *l <= 2).ok_or_else(|| bad("SPADE_PROFILE", &v, "0, 1 or 2"))?,
            };
        }
        Ok(o)
    }
}

static ENABLED: AtomicBool = AtomicBool::new(true);
static WINOGRAD: AtomicBool = AtomicBool::new(true);
static GEMM_CRATE: AtomicBool = AtomicBool::new(false);
static PROFILE: AtomicU8 = AtomicU8::new(0);

/// Sets the kernel paths for the whole process.
pub fn set_options(o: KernelOptions) {
    ENABLED.store(o.enabled, Ordering::SeqCst);
    WINOGRAD.store(o.winograd, Ordering::SeqCst);
    GEMM_CRATE.store(o.gemm == GemmKernel::Crate, Ordering::SeqCst);
    PROFILE.store(o.profile, Ordering::SeqCst);
}

/// The kernel paths in effect.
pub fn options() -> KernelOptions {
    KernelOptions {
        enabled: ENABLED.load(Ordering::Relaxed),
        winograd: WINOGRAD.load(Ordering::Relaxed),
        gemm: if GEMM_CRATE.load(Ordering::Relaxed) { GemmKernel::Crate } else { GemmKernel::Auto },
        profile: PROFILE.load(Ordering::Relaxed),
    }
}

/// Whether the fast path may be used for `t` (CPU, f32, kernels enabled).
pub fn applies(t: &candle_core::Tensor) -> bool {
    ENABLED.load(Ordering::Relaxed) && t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// Tunes glibc's allocator for these kernels, for the whole process: a binary calls it once at
/// the start of `main` (a library never does). Every op allocates its output, and glibc serves
/// large blocks with fresh `mmap`s whose pages fault in (zeroed by the kernel) on first touch.
/// Serving every block from the heap (no mmap at all: the threshold's maximum, 32 MB, is below
/// a 128-channel 128x128 activation of a batch of 4) and never trimming it lets freed blocks be
/// reused instead, for somewhat more peak memory. Does nothing on other platforms.
pub fn tune_allocator() {
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

/// An output buffer of `len` zeros. Zeroed, not uninitialised: a `Vec<f32>` over uninitialised
/// memory is unsound whatever the element type, and the zeroing does not show in the bench.
pub(crate) fn output_vec(len: usize) -> Vec<f32> {
    vec![0.0; len]
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

/// Time spent in each kernel, collected when [`KernelOptions::profile`] is 1 or 2 (for `cargo
/// xtask bench`).
pub mod profile {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Instant;

    static TABLE: Mutex<BTreeMap<&'static str, (f64, u64)>> = Mutex::new(BTreeMap::new());

    fn level() -> u8 {
        super::PROFILE.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn on() -> bool {
        level() >= 1
    }

    /// At profile level 2, `name` followed by the detail `what()` (e.g. a geometry), so
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
