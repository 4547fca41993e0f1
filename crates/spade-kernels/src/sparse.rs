//! Convolutions of a one-hot input. SPADE's first convolution reads the semantic map: a one-hot
//! label channel, plus at most a don't-care and an instance-edge channel, per pixel. Its product
//! with the weight is then a sum of a few gathered weight columns per output pixel instead of a
//! `Cin*k*k`-long dot product (111 of the 382 GFLOP of a paper-size COCO-Stuff inference), and
//! its weight gradient a scatter-add of output gradients.
use rayon::prelude::*;

/// Most nonzero channels per pixel for the sparse path.
const MAX_NZ: usize = 4;

/// One sample's nonzero channels per pixel.
pub(crate) struct SparsePixels {
    idx: Vec<u32>,
    val: Vec<f32>,
    count: Vec<u8>,
}

impl SparsePixels {
    /// `x (c x hw)`; `None` when a pixel has more than `MAX_NZ` nonzero channels, or the input
    /// is dense enough that the gather would not pay.
    pub(crate) fn new(x: &[f32], c: usize, hw: usize) -> Option<Self> {
        if c < 8 {
            return None;
        }
        let mut idx = vec![0u32; hw * MAX_NZ];
        let mut val = vec![0f32; hw * MAX_NZ];
        let mut count = vec![0u8; hw];
        // Threads take ranges of pixels and scan every channel over their range.
        const PX: usize = 2048;
        let ok = idx
            .par_chunks_mut(PX * MAX_NZ)
            .zip(val.par_chunks_mut(PX * MAX_NZ))
            .zip(count.par_chunks_mut(PX))
            .enumerate()
            .all(|(b, ((idx, val), count))| {
                let p0 = b * PX;
                for ch in 0..c {
                    for (q, &v) in x[ch * hw + p0..ch * hw + p0 + count.len()].iter().enumerate() {
                        if v != 0.0 {
                            let k = count[q] as usize;
                            if k == MAX_NZ {
                                return false;
                            }
                            idx[q * MAX_NZ + k] = ch as u32;
                            val[q * MAX_NZ + k] = v;
                            count[q] += 1;
                        }
                    }
                }
                true
            });
        ok.then_some(Self { idx, val, count })
    }

    /// The nonzeros of pixel `p` as (channel, value) pairs.
    #[inline(always)]
    fn nonzeros(&self, p: usize) -> (&[u32], &[f32]) {
        let n = self.count[p] as usize;
        (&self.idx[p * MAX_NZ..p * MAX_NZ + n], &self.val[p * MAX_NZ..p * MAX_NZ + n])
    }
}

/// Stride-1 geometry: input `h x w`, output `ho x wo`, kernel `k`, padding `pad`.
#[derive(Clone, Copy)]
pub(crate) struct Geom1 {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub k: usize,
    pub pad: usize,
}

/// The weight `(cout, cin, k, k)` as rows of `cout` per tap `(c, kh, kw)`.
fn taps_major(w: &[f32], g: &Geom1) -> Vec<f32> {
    let kd = g.cin * g.k * g.k;
    let mut t = vec![0f32; kd * g.cout];
    for co in 0..g.cout {
        for r in 0..kd {
            t[r * g.cout + co] = w[co * kd + r];
        }
    }
    t
}

/// A pointer to the output that threads share; each writes disjoint rows of pixels.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// Output pixels per block: a block's pixel-major accumulator (`BLK x cout`) stays in L1.
const BLK: usize = 16;

/// `acc[..cout] += v * w[..cout]`. Always inlined, so that it is compiled into the AVX-512
/// row functions.
#[inline(always)]
fn axpy(acc: &mut [f32], v: f32, w: &[f32]) {
    for (a, &wv) in acc.iter_mut().zip(w) {
        *a += v * wv;
    }
}

/// `y (cout x ho*wo) = conv(x, w)` for one sample given as sparse pixels.
pub(crate) fn forward(sp: &SparsePixels, w: &[f32], g: &Geom1, y: &mut [f32]) {
    let wt = taps_major(w, g);
    let (p, cout) = (g.ho * g.wo, g.cout);
    assert!(y.len() >= cout * p);
    let out = OutPtr(y.as_mut_ptr());
    // Per block of output pixels: pixel-major accumulation (each pixel adds a few contiguous
    // weight rows), then transposed into the channel-major output.
    (0..g.ho).into_par_iter().for_each_init(
        || vec![0f32; BLK * cout],
        |acc, oy| {
            #[cfg(target_arch = "x86_64")]
            if super::wide_available() {
                // SAFETY: the CPU has the features `forward_row_avx512` is compiled for.
                return unsafe { forward_row_avx512(sp, &wt, g, oy, acc, out) };
            }
            forward_row(sp, &wt, g, oy, acc, out)
        },
    );
}

/// [`forward_row`] compiled for AVX-512: too large a body for [`super::wide`]'s closure to be
/// inlined into its AVX-512 frame, it stayed 4 wide there (4x22x128x128 -> 128: 40 ms instead
/// of 28-30 alone).
///
/// # Safety
/// The CPU must support AVX-512F (and AVX2 and FMA where enabled): callers check `avx512::available()` / `wide_available()` first. The arguments are those of [`forward_row`], whose `out` must be valid for
/// the output row `oy` as it requires.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn forward_row_avx512(sp: &SparsePixels, wt: &[f32], g: &Geom1, oy: usize, acc: &mut [f32], out: OutPtr) {
    forward_row(sp, wt, g, oy, acc, out)
}

/// Calls `f(i, r, v)` for every nonzero that output pixel `ox0 + i` (`i < bl`) of row `oy`
/// reads: weight tap row `r = (c*k + kh)*k + kw`, input value `v`. The one walk over the
/// one-hot input that the forward (gather) and the weight gradient (scatter-add) share.
#[inline(always)]
fn block_taps(sp: &SparsePixels, g: &Geom1, oy: usize, ox0: usize, bl: usize, mut f: impl FnMut(usize, usize, f32)) {
    for kh in 0..g.k {
        let iy = oy + kh;
        if iy < g.pad || iy - g.pad >= g.h {
            continue;
        }
        let row = (iy - g.pad) * g.w;
        for kw in 0..g.k {
            // Block pixels whose input column ox + kw - pad lies in [0, w).
            let lo = g.pad.saturating_sub(kw).max(ox0);
            let hi = (g.w + g.pad).saturating_sub(kw).min(ox0 + bl);
            for ox in lo..hi {
                let (cs, vs) = sp.nonzeros(row + ox + kw - g.pad);
                for (&c, &v) in cs.iter().zip(vs) {
                    f(ox - ox0, (c as usize * g.k + kh) * g.k + kw, v);
                }
            }
        }
    }
}

/// Output row `oy` of [`forward`], block by block.
#[inline(always)]
fn forward_row(sp: &SparsePixels, wt: &[f32], g: &Geom1, oy: usize, acc: &mut [f32], out: OutPtr) {
    let (p, cout) = (g.ho * g.wo, g.cout);
    for ox0 in (0..g.wo).step_by(BLK) {
        let bl = BLK.min(g.wo - ox0);
        acc[..bl * cout].fill(0.0);
        block_taps(sp, g, oy, ox0, bl, |i, r, v| {
            axpy(&mut acc[i * cout..(i + 1) * cout], v, &wt[r * cout..(r + 1) * cout])
        });
        for co in 0..cout {
            // SAFETY: pixels ox0..ox0+bl of row oy in channel co lie inside y (asserted in
            // `forward`); each task owns its row oy in every channel.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.at(co * p + oy * g.wo + ox0), bl) };
            for (i, d) in dst.iter_mut().enumerate() {
                *d = acc[i * cout + co];
            }
        }
    }
}

/// `dw (cout x cin x k x k) (+)= ` the weight gradient of one sample, `dy (cout x ho*wo)`.
pub(crate) fn backward_filter(sp: &SparsePixels, dy: &[f32], g: &Geom1, dw: &mut [f32], accumulate: bool) {
    let kd = g.cin * g.k * g.k;
    let cout = g.cout;
    // Threads take bands of output rows, each into its own taps-major buffer, summed after.
    // Each block of output pixels is first transposed to pixel-major (in L1), so that each
    // scatter-add is a contiguous row of `cout`.
    let threads = rayon::current_num_threads().max(1);
    let band = g.ho.div_ceil(threads).max(1);
    let partial: Vec<Vec<f32>> = (0..g.ho.div_ceil(band))
        .into_par_iter()
        .map(|t| {
            let rows = (t * band, ((t + 1) * band).min(g.ho));
            #[cfg(target_arch = "x86_64")]
            if super::wide_available() {
                // SAFETY: the CPU has the features `filter_band_avx512` is compiled for.
                return unsafe { filter_band_avx512(sp, dy, g, rows) };
            }
            filter_band(sp, dy, g, rows)
        })
        .collect();
    dw[..cout * kd].par_chunks_mut(kd).enumerate().for_each(|(co, row)| {
        for (r, out) in row.iter_mut().enumerate() {
            let v: f32 = partial.iter().map(|a| a[r * cout + co]).sum();
            *out = if accumulate { *out + v } else { v };
        }
    });
}

/// The taps-major weight gradient `(kd x cout)` of output rows `rows.0..rows.1`.
#[inline(always)]
fn filter_band(sp: &SparsePixels, dy: &[f32], g: &Geom1, rows: (usize, usize)) -> Vec<f32> {
    let kd = g.cin * g.k * g.k;
    let (p, cout) = (g.ho * g.wo, g.cout);
    let mut acc = vec![0f32; kd * cout];
    let mut blk = vec![0f32; BLK * cout];
    for oy in rows.0..rows.1 {
        for ox0 in (0..g.wo).step_by(BLK) {
            let bl = BLK.min(g.wo - ox0);
            for co in 0..cout {
                let src = &dy[co * p + oy * g.wo + ox0..][..bl];
                for (i, &v) in src.iter().enumerate() {
                    blk[i * cout + co] = v;
                }
            }
            block_taps(sp, g, oy, ox0, bl, |i, r, v| {
                axpy(&mut acc[r * cout..(r + 1) * cout], v, &blk[i * cout..(i + 1) * cout])
            });
        }
    }
    acc
}

/// [`filter_band`] compiled for AVX-512 (see [`forward_row_avx512`]).
///
/// # Safety
/// The CPU must support AVX-512F (and AVX2 and FMA where enabled): callers check `avx512::available()` / `wide_available()` first. Otherwise as safe as [`filter_band`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn filter_band_avx512(sp: &SparsePixels, dy: &[f32], g: &Geom1, rows: (usize, usize)) -> Vec<f32> {
    filter_band(sp, dy, g, rows)
}
