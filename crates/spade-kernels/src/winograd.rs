//! 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 output tile is `A^T [ sum_ci (G g G^T) . (B^T d B) ] A` over the 4x4 input patch
//! `d` around it: 16 products per tile and input channel where the direct convolution takes 36,
//! so the matrix products do 2.25x fewer multiply-adds. The 16 element-wise products become 16
//! matrix products `M[xi] (cout x tiles) = U[xi] (cout x cin) V[xi] (cin x tiles)`.
//!
//! Tiles are taken [`NR`] at a time (one panel of the AVX-512 micro-kernel). For each such
//! block, on one thread: the input transform writes `V` straight into the micro-kernel's packed
//! B panel layout (channel rows, 48 tile columns), the 16 products run on the packed transformed
//! weights, and the output transform writes the 2x2 tiles (with the optional bias and
//! LeakyReLU) into the output. `V` and `M` of a block stay in L2; nothing of the size of the
//! transformed input is ever written out.
//!
//! The transforms are vectorised over 16 horizontally adjacent tiles: a row of 34 input
//! columns de-interleaved into the tiles' four columns, and the outputs interleaved back.
//! F(2x2, 3x3)'s transforms only add, subtract and halve, so its rounding error is of the order
//! of the direct convolution's.
//!
//! The weight gradient ([`filter_grad3x3`]) is `G^T [ sum_tiles (A dy A^T) . (B^T d B) ] G`:
//! 16 products whose inner dimension is the tiles, from pixel-major copies of the input and of
//! the output gradient (transforms vectorised over 16 channels).
#![allow(unsafe_op_in_unsafe_fn)]
#[cfg(target_arch = "x86_64")]
use super::avx512::micro;
use super::avx512::{KC, MR, NR};
use super::with_scratch;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A raw pointer to the output that the blocks share; each writes a disjoint set of tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Extra zeros after the padded input: a vector row read of the last tiles goes up to 34
/// columns past the tile's first column.
const SLACK: usize = 64;

thread_local! {
    /// The padded input, and one block's transformed input and products, reused across calls.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static BLOCK_V: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static BLOCK_M: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the Winograd path is on ([`crate::KernelOptions::winograd`]; off, 3x3 convolutions
/// take the direct product).
pub(super) fn enabled() -> bool {
    super::WINOGRAD.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether [`conv3x3`] (and [`filter_grad3x3`]) serves a convolution of `n` maps of `h x w`:
/// enough tiles for every thread to get two blocks (with fewer, one thread idles while the
/// other runs the last one).
pub(super) fn worth_it(n: usize, h: usize, w: usize) -> bool {
    let tiles = n * h.div_ceil(2) * w.div_ceil(2);
    enabled() && super::avx512::available() && w >= 8 && tiles >= 2 * NR * rayon::current_num_threads().max(1)
}

/// `U[xi] = (G g G^T)[xi]` for every `(co, ci)`, packed as the micro-kernel's A panels: for each
/// `xi`, `KC` slices of the input channels, each a run of `MR`-row panels (`p * MR + i` inside a
/// panel), rows past `cout` zero.
fn transform_weights(wt: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mpad = cout.div_ceil(MR) * MR;
    let mut u = vec![0f32; 16 * mpad * cin];
    u.par_chunks_mut(mpad * cin).enumerate().for_each(|(xi, ux)| {
        let (a, b) = (xi / 4, xi % 4);
        // Row `a` of G and column `b` of G^T.
        let gr = |r: usize, v: [f32; 3]| match r {
            0 => v[0],
            1 => (v[0] + v[1] + v[2]) * 0.5,
            2 => (v[0] - v[1] + v[2]) * 0.5,
            _ => v[2],
        };
        for co in 0..cout {
            for ci in 0..cin {
                let g = &wt[(co * cin + ci) * 9..][..9];
                // (G g) row a: three values, one per kernel column; then times G^T column b.
                let row = [0, 1, 2].map(|kw| gr(a, [g[kw], g[3 + kw], g[6 + kw]]));
                let v = gr(b, row);
                let (pc, ip) = ((ci / KC) * KC, co / MR);
                let kc = KC.min(cin - pc);
                ux[pc * mpad + ip * kc * MR + (ci - pc) * MR + co % MR] = v;
            }
        }
    });
    u
}

/// `x (n x cin x h x w)` zero-padded into planes of `(2*th + 2) x (2*tw + 2)` (one row and
/// column before, the rest after), plus [`SLACK`] zeros.
fn pad_input(x: &[f32], planes: usize, h: usize, w: usize, hq: usize, wq: usize, xp: &mut [f32]) {
    xp[planes * hq * wq..].fill(0.0);
    xp[..planes * hq * wq].par_chunks_mut(hq * wq).enumerate().for_each(|(q, dst)| {
        let src = &x[q * h * w..(q + 1) * h * w];
        dst[..wq].fill(0.0);
        for iy in 0..h {
            let row = &mut dst[(iy + 1) * wq..(iy + 2) * wq];
            row[0] = 0.0;
            row[1..1 + w].copy_from_slice(&src[iy * w..(iy + 1) * w]);
            row[1 + w..].fill(0.0);
        }
        dst[(h + 1) * wq..].fill(0.0);
    });
}

/// `y (n x cout x h x w) = conv(x (n x cin x h x w), w (cout x cin x 3 x 3))`, stride 1,
/// padding 1, with `epi = (bias, slope)` applied as `y + b`, LeakyReLU. Callers check
/// [`worth_it`] (which checks AVX-512).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv3x3(
    x: &[f32],
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    wt: &[f32],
    cout: usize,
    y: &mut [f32],
    epi: Option<(&[f32], f32)>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(x.len() >= n * cin * h * w && wt.len() >= cout * cin * 9 && y.len() >= n * cout * h * w);
        assert!(super::avx512::available(), "winograd::conv3x3 needs AVX-512");
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let (hq, wq) = (2 * th + 2, 2 * tw + 2);
        let tiles = n * th * tw;
        let mpad = cout.div_ceil(MR) * MR;
        let u = transform_weights(wt, cout, cin);
        let out = OutPtr(y.as_mut_ptr());
        let geo = Tiles { cin, cout, mpad, h, w, th, tw, hq, wq };
        with_scratch(&PADDED, n * cin * hq * wq + SLACK, |xp| {
            pad_input(x, n * cin, h, w, hq, wq, xp);
            let (xp, u) = (&*xp, &u[..]);
            (0..tiles.div_ceil(NR)).into_par_iter().for_each(|blk| {
                let t0 = blk * NR;
                let t1 = (t0 + NR).min(tiles);
                with_scratch(&BLOCK_V, 16 * cin * NR, |v| {
                    with_scratch(&BLOCK_M, 16 * mpad * NR + 16, |m| {
                        // SAFETY: AVX-512F is available (asserted above); the buffers have the
                        // sizes the block reads and writes (see `Tiles`), and blocks write
                        // disjoint output tiles.
                        unsafe { block(&geo, xp, u, v, m, out, (t0, t1), epi) }
                    })
                })
            });
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, n, cin, h, w, wt, cout, y, epi);
        unreachable!("winograd::conv3x3 is only called where worth_it() is true")
    }
}

/// The sizes one block works with.
struct Tiles {
    cin: usize,
    cout: usize,
    /// `cout` rounded up to whole `MR` panels.
    mpad: usize,
    h: usize,
    w: usize,
    /// Tile rows and columns per map.
    th: usize,
    tw: usize,
    /// The padded plane's rows and columns.
    hq: usize,
    wq: usize,
}

impl Tiles {
    /// The runs of horizontally adjacent tiles in `[t0, t1)`: `(sample, tile row, first tile
    /// column, count, position in the block)`.
    fn runs(&self, t0: usize, t1: usize) -> impl Iterator<Item = (usize, usize, usize, usize, usize)> + '_ {
        let mut t = t0;
        std::iter::from_fn(move || {
            if t >= t1 {
                return None;
            }
            let (s, r) = (t / (self.th * self.tw), t % (self.th * self.tw));
            let (ty, tx) = (r / self.tw, r % self.tw);
            let len = (self.tw - tx).min(t1 - t);
            let run = (s, ty, tx, len, t - t0);
            t += len;
            Some(run)
        })
    }
}

#[cfg(target_arch = "x86_64")]
const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
#[cfg(target_arch = "x86_64")]
const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
#[cfg(target_arch = "x86_64")]
const INTERLEAVE_LO: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
#[cfg(target_arch = "x86_64")]
const INTERLEAVE_HI: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];

/// The low `n` lanes (n <= 16).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// `B^T [d0, d1, d2, d3]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn bt(d: [__m512; 4]) -> [__m512; 4] {
    [_mm512_sub_ps(d[0], d[2]), _mm512_add_ps(d[1], d[2]), _mm512_sub_ps(d[2], d[1]), _mm512_sub_ps(d[1], d[3])]
}

/// `A^T [m0, m1, m2, m3]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn at(m: [__m512; 4]) -> [__m512; 2] {
    [_mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]), _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3])]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
/// One block of tiles `[t0, t1)` (at most `NR`): input transform into `v` (`16 x cin x NR`),
/// the 16 products into `m` (`16 x mpad x NR`), output transform into `out`.
///
/// # Safety
/// The CPU must support AVX-512F (and AVX2 and FMA where enabled): callers check `avx512::available()` / `wide_available()` first. `xp`, `u`, `v` and `m` hold at least the sizes `g` gives them (padded input,
/// transformed weights, `16 x cin x NR`, `16 x mpad x NR`); `out` is valid for writes of every
/// output pixel of tiles `[t0, t1)`, which no other thread writes; `epi`'s bias has `g.cout` values.
unsafe fn block(
    g: &Tiles,
    xp: &[f32],
    u: &[f32],
    v: &mut [f32],
    m: &mut [f32],
    out: OutPtr,
    (t0, t1): (usize, usize),
    epi: Option<(&[f32], f32)>,
) {
    let (cin, mpad) = (g.cin, g.mpad);
    let even = _mm512_loadu_si512(EVEN.as_ptr().cast());
    let odd = _mm512_loadu_si512(ODD.as_ptr().cast());
    let vp = v.as_mut_ptr();
    // Input transform, 16 adjacent tiles at a time.
    for (s, ty, tx, len, j0) in g.runs(t0, t1) {
        for c in 0..cin {
            let plane = xp.as_ptr().add((s * cin + c) * g.hq * g.wq + 2 * ty * g.wq);
            for q0 in (0..len).step_by(16) {
                let mask = lanes(len - q0);
                let col = 2 * (tx + q0);
                let mut h = [[_mm512_setzero_ps(); 4]; 4];
                for (r, hr) in h.iter_mut().enumerate() {
                    let row = plane.add(r * g.wq + col);
                    let (lo, hi) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
                    let (lo2, hi2) = (_mm512_loadu_ps(row.add(2)), _mm512_loadu_ps(row.add(18)));
                    *hr = bt([
                        _mm512_permutex2var_ps(lo, even, hi),
                        _mm512_permutex2var_ps(lo, odd, hi),
                        _mm512_permutex2var_ps(lo2, even, hi2),
                        _mm512_permutex2var_ps(lo2, odd, hi2),
                    ]);
                }
                for b in 0..4 {
                    let col = bt([h[0][b], h[1][b], h[2][b], h[3][b]]);
                    for (a, va) in col.iter().enumerate() {
                        _mm512_mask_storeu_ps(vp.add(((4 * a + b) * cin + c) * NR + j0 + q0), mask, *va);
                    }
                }
            }
        }
    }
    // The 16 products, each over the input channels in `KC` slices.
    for xi in 0..16 {
        let (ux, vx, mx) = (u.as_ptr().add(xi * mpad * cin), v.as_ptr().add(xi * cin * NR), m.as_mut_ptr());
        for pc in (0..cin).step_by(KC) {
            let kc = KC.min(cin - pc);
            for ip in 0..mpad / MR {
                micro(
                    kc,
                    ux.add(pc * mpad + ip * kc * MR),
                    vx.add(pc * NR),
                    mx.add((xi * mpad + ip * MR) * NR),
                    NR,
                    pc > 0,
                );
            }
        }
    }
    // Output transform, 16 adjacent tiles at a time, interleaved back into output rows.
    let ilo = _mm512_loadu_si512(INTERLEAVE_LO.as_ptr().cast());
    let ihi = _mm512_loadu_si512(INTERLEAVE_HI.as_ptr().cast());
    let mp = m.as_ptr();
    for (s, ty, tx, len, j0) in g.runs(t0, t1) {
        for co in 0..g.cout {
            let (bias, slope) = match epi {
                Some((b, sl)) => (Some(_mm512_set1_ps(b[co])), _mm512_set1_ps(sl)),
                None => (None, _mm512_setzero_ps()),
            };
            let yplane = out.0.add((s * g.cout + co) * g.h * g.w);
            for q0 in (0..len).step_by(16) {
                let mut mm = [_mm512_setzero_ps(); 16];
                for (xi, v) in mm.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(mp.add((xi * mpad + co) * NR + j0 + q0));
                }
                // A^T over rows (a), then over columns (b).
                let mut t = [[_mm512_setzero_ps(); 4]; 2];
                for b in 0..4 {
                    let r = at([mm[b], mm[4 + b], mm[8 + b], mm[12 + b]]);
                    t[0][b] = r[0];
                    t[1][b] = r[1];
                }
                let col = 2 * (tx + q0);
                let ncols = (2 * (len - q0)).min(g.w - col);
                for (uy, tu) in t.iter().enumerate() {
                    let oy = 2 * ty + uy;
                    if oy >= g.h {
                        break;
                    }
                    let mut pair = at(*tu);
                    if let Some(b) = bias {
                        for p in &mut pair {
                            let y = _mm512_add_ps(*p, b);
                            let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, _mm512_setzero_ps());
                            *p = _mm512_mask_blend_ps(pos, _mm512_mul_ps(y, slope), y);
                        }
                    }
                    let row = yplane.add(oy * g.w + col);
                    _mm512_mask_storeu_ps(row, lanes(ncols), _mm512_permutex2var_ps(pair[0], ilo, pair[1]));
                    if ncols > 16 {
                        _mm512_mask_storeu_ps(
                            row.add(16),
                            lanes(ncols - 16),
                            _mm512_permutex2var_ps(pair[0], ihi, pair[1]),
                        );
                    }
                }
            }
        }
    }
}

/// Tiles per block of the weight gradient: the inner dimension of its 16 products.
const KB: usize = 64;

thread_local! {
    /// The pixel-major copy of the output gradient for [`filter_grad3x3`] (the input's copy
    /// goes into the forward's padded-input buffer, which is free then).
    static DYT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `src (n x c x h x w)` into pixel-major `dst (n x hd x wd x cp)`, placed at row and column
/// offset `off` (0 or 1), zeros everywhere else (the border, the extra channels).
#[allow(clippy::too_many_arguments)]
fn pixel_major(
    src: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    hd: usize,
    wd: usize,
    cp: usize,
    off: usize,
    dst: &mut [f32],
) {
    dst[..n * hd * wd * cp].par_chunks_mut(wd * cp).enumerate().for_each(|(r, row)| {
        let (s, yd) = (r / hd, r % hd);
        row.fill(0.0);
        if yd < off || yd - off >= h {
            return;
        }
        let y = yd - off;
        for ch in 0..c {
            let line = &src[((s * c + ch) * h + y) * w..][..w];
            for (x, v) in line.iter().enumerate() {
                row[(x + off) * cp + ch] = *v;
            }
        }
    });
}

/// `dw (cout x cin x 3 x 3)`, the weight gradient of [`conv3x3`] at input `x (n x cin x h x w)`
/// for the output gradient `dy (n x cout x h x w)`: `G^T [ sum_tiles (A dy A^T) . (B^T d B) ] G`.
/// The 16 sums are products over the tiles, with the tiles as the inner dimension: each thread
/// takes a range of tiles, transforms them [`KB`] at a time into the micro-kernel's packed
/// panels (vectorised over 16 channels of pixel-major copies), and accumulates its own 16
/// `cout x cin` sums; the threads' sums are added at the end. Callers check [`worth_it`].
pub(super) fn filter_grad3x3(x: &[f32], dy: &[f32], n: usize, cin: usize, h: usize, w: usize, cout: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(x.len() >= n * cin * h * w && dy.len() >= n * cout * h * w);
        assert!(super::avx512::available(), "winograd::filter_grad3x3 needs AVX-512");
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let (hq, wq) = (2 * th + 2, 2 * tw + 2);
        let tiles = n * th * tw;
        // Channels padded: cin to whole B panels, cout to 16 (two A panels per vector).
        let npad = cin.div_ceil(NR) * NR;
        let mpad = cout.div_ceil(16) * 16;
        let threads = rayon::current_num_threads().max(1);
        let per = tiles.div_ceil(threads).div_ceil(KB) * KB;
        let geo = Tiles { cin, cout, mpad, h, w, th, tw, hq, wq };
        let sums = with_scratch(&PADDED, n * hq * wq * npad, |xt| {
            pixel_major(x, n, cin, h, w, hq, wq, npad, 1, xt);
            with_scratch(&DYT, n * 2 * th * 2 * tw * mpad, |dyt| {
                pixel_major(dy, n, cout, h, w, 2 * th, 2 * tw, mpad, 0, dyt);
                let (xt, dyt) = (&*xt, &*dyt);
                (0..tiles.div_ceil(per))
                    .into_par_iter()
                    .map(|r| {
                        let mut du = vec![0f32; 16 * mpad * npad];
                        let mut a = vec![0f32; 16 * mpad * KB];
                        let mut b = vec![0f32; 16 * npad * KB];
                        for t0 in (r * per..((r + 1) * per).min(tiles)).step_by(KB) {
                            let t1 = (t0 + KB).min(tiles);
                            // SAFETY: AVX-512F is available (asserted above); the buffers have
                            // the sizes `grad_block` indexes (see its comment).
                            unsafe { grad_block(&geo, npad, xt, dyt, &mut a, &mut b, &mut du, (t0, t1)) }
                        }
                        du
                    })
                    .reduce_with(|mut s, o| {
                        s.iter_mut().zip(&o).for_each(|(s, o)| *s += o);
                        s
                    })
                    .unwrap_or_else(|| vec![0f32; 16 * mpad * npad])
            })
        });
        // dw = G^T D G for every (co, ci), D[a][b] = sums[4a + b].
        let mut dw = vec![0f32; cout * cin * 9];
        dw.par_chunks_mut(cin * 9).enumerate().for_each(|(co, dwc)| {
            const GT: [[f32; 4]; 3] = [[1.0, 0.5, 0.5, 0.0], [0.0, 0.5, -0.5, 0.0], [0.0, 0.5, 0.5, 1.0]];
            for ci in 0..cin {
                let d = |a: usize, b: usize| sums[((4 * a + b) * mpad + co) * npad + ci];
                for kh in 0..3 {
                    // Row kh of G^T D, then times G.
                    let row: [f32; 4] = std::array::from_fn(|b| (0..4).map(|a| GT[kh][a] * d(a, b)).sum());
                    for kw in 0..3 {
                        dwc[ci * 9 + kh * 3 + kw] = (0..4).map(|b| row[b] * GT[kw][b]).sum();
                    }
                }
            }
        });
        dw
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, dy, n, cin, h, w, cout);
        unreachable!("winograd::filter_grad3x3 is only called where worth_it() is true")
    }
}

/// Tiles `[t0, t1)` (at most [`KB`]) of the weight gradient: the output gradient's transform
/// `A dy A^T` into `a` (`16 x (mpad / MR) x KB x MR`: for each `xi`, A panels of `MR` output
/// channels), the input's `B^T d B` into `b` (`16 x (npad / NR) x KB x NR`: B panels of `NR`
/// input channels), then `du[xi] (mpad x npad) += a[xi] b[xi]`. `xt` is the padded input,
/// pixel-major with `npad` channels; `dyt` the output gradient, `2th x 2tw`, `mpad` channels.
///
/// # Safety
/// The CPU must support AVX-512F (and AVX2 and FMA where enabled): callers check `avx512::available()` / `wide_available()` first. Every slice holds at least the size this comment gives it for `g` and `npad`;
/// `t1 - t0` is at most [`KB`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_block(
    g: &Tiles,
    npad: usize,
    xt: &[f32],
    dyt: &[f32],
    a: &mut [f32],
    b: &mut [f32],
    du: &mut [f32],
    (t0, t1): (usize, usize),
) {
    let mpad = g.mpad;
    let (mpanels, npanels) = (mpad / MR, npad / NR);
    let (ap, bp) = (a.as_mut_ptr(), b.as_mut_ptr());
    for t in t0..t1 {
        let j = t - t0;
        let (s, r) = (t / (g.th * g.tw), t % (g.th * g.tw));
        let (ty, tx) = (r / g.tw, r % g.tw);
        // A dy A^T, 16 output channels at a time: A = [[1, 0], [1, 1], [1, -1], [0, -1]].
        let dwd = 2 * g.tw;
        let d0 = dyt.as_ptr().add(((s * 2 * g.th + 2 * ty) * dwd + 2 * tx) * mpad);
        let d1 = d0.add(dwd * mpad);
        for c in (0..mpad).step_by(16) {
            let ld = |p: *const f32| _mm512_loadu_ps(p.add(c));
            let (d00, d01, d10, d11) = (ld(d0), ld(d0.add(mpad)), ld(d1), ld(d1.add(mpad)));
            let neg = |v: __m512| _mm512_sub_ps(_mm512_setzero_ps(), v);
            // Over rows, then columns.
            let rows = [
                [d00, d01],
                [_mm512_add_ps(d00, d10), _mm512_add_ps(d01, d11)],
                [_mm512_sub_ps(d00, d10), _mm512_sub_ps(d01, d11)],
                [neg(d10), neg(d11)],
            ];
            for (ai, [r0, r1]) in rows.iter().enumerate() {
                let e = [*r0, _mm512_add_ps(*r0, *r1), _mm512_sub_ps(*r0, *r1), neg(*r1)];
                for (bi, v) in e.iter().enumerate() {
                    let xi = 4 * ai + bi;
                    let ip = c / MR;
                    let lo = ap.add(((xi * mpanels + ip) * KB + j) * MR);
                    let hi = ap.add(((xi * mpanels + ip + 1) * KB + j) * MR);
                    _mm512_mask_storeu_ps(lo, 0x00ff, *v);
                    _mm512_mask_storeu_ps(hi.wrapping_sub(8), 0xff00, *v);
                }
            }
        }
        // B^T d B, 16 input channels at a time.
        let x0 = xt.as_ptr().add(((s * g.hq + 2 * ty) * g.wq + 2 * tx) * npad);
        for c in (0..npad).step_by(16) {
            let mut hrows = [[_mm512_setzero_ps(); 4]; 4];
            for (rr, hr) in hrows.iter_mut().enumerate() {
                let p = x0.add(rr * g.wq * npad + c);
                *hr = bt([
                    _mm512_loadu_ps(p),
                    _mm512_loadu_ps(p.add(npad)),
                    _mm512_loadu_ps(p.add(2 * npad)),
                    _mm512_loadu_ps(p.add(3 * npad)),
                ]);
            }
            let jp = c / NR;
            for bi in 0..4 {
                let col = bt([hrows[0][bi], hrows[1][bi], hrows[2][bi], hrows[3][bi]]);
                for (ai, v) in col.iter().enumerate() {
                    let xi = 4 * ai + bi;
                    _mm512_storeu_ps(bp.add(((xi * npanels + jp) * KB + j) * NR + c % NR), *v);
                }
            }
        }
    }
    let kc = t1 - t0;
    for xi in 0..16 {
        for ip in 0..mpanels {
            for jp in 0..npanels {
                micro(
                    kc,
                    ap.add((xi * mpanels + ip) * KB * MR),
                    bp.add((xi * npanels + jp) * KB * NR),
                    du.as_mut_ptr().add((xi * mpad + ip * MR) * npad + jp * NR),
                    npad,
                    true,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The direct convolution in f64, then the bias and LeakyReLU.
    fn direct(
        x: &[f32],
        n: usize,
        cin: usize,
        h: usize,
        w: usize,
        wt: &[f32],
        cout: usize,
        epi: Option<(&[f32], f32)>,
    ) -> Vec<f32> {
        let mut y = vec![0f32; n * cout * h * w];
        for s in 0..n {
            for co in 0..cout {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut acc = 0f64;
                        for ci in 0..cin {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let (iy, ix) = (oy + kh, ox + kw);
                                    if iy < 1 || ix < 1 || iy > h || ix > w {
                                        continue;
                                    }
                                    let xv = x[((s * cin + ci) * h + iy - 1) * w + ix - 1] as f64;
                                    acc += xv * wt[((co * cin + ci) * 3 + kh) * 3 + kw] as f64;
                                }
                            }
                        }
                        let mut v = acc as f32;
                        if let Some((b, slope)) = epi {
                            v += b[co];
                            if v <= 0.0 {
                                v *= slope;
                            }
                        }
                        y[((s * cout + co) * h + oy) * w + ox] = v;
                    }
                }
            }
        }
        y
    }

    fn rand(len: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn matches_direct_convolution() {
        if !super::super::avx512::available() {
            // Without AVX-512 the path must never be chosen: assert that, and stop.
            assert!(!super::worth_it(64, 256, 256), "Winograd chosen on a CPU without AVX-512");
            eprintln!("no AVX-512 on this CPU: checked only that the Winograd path is never taken");
            return;
        }
        // (n, cin, h, w, cout, epilogue): odd sizes (partial tiles), runs that cross tile rows
        // and blocks, more input channels than one KC slice, cout not a whole MR panel, maps one
        // row high.
        let cases = [
            (1, 3, 9, 7, 5, false),
            (2, 5, 17, 20, 7, true),
            (1, 300, 6, 10, 9, false),
            (3, 4, 34, 33, 16, true),
            (1, 2, 2, 2, 1, false),
            (2, 8, 1, 40, 3, true),
            (1, 16, 64, 64, 8, false),
        ];
        for (i, &(n, cin, h, w, cout, with_epi)) in cases.iter().enumerate() {
            let x = rand(n * cin * h * w, i as u64);
            let wt = rand(cout * cin * 9, 100 + i as u64);
            let bias = rand(cout, 200 + i as u64);
            let epi = with_epi.then_some((&bias[..], 0.2f32));
            let want = direct(&x, n, cin, h, w, &wt, cout, epi);
            let mut got = vec![f32::NAN; n * cout * h * w];
            super::conv3x3(&x, n, cin, h, w, &wt, cout, &mut got, epi);
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let err = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            assert!(err < 2e-6, "case {i} {:?}: max relative error {err}", cases[i]);
        }
    }
    #[test]
    fn filter_gradient_matches_direct() {
        if !super::super::avx512::available() {
            // Without AVX-512 the path must never be chosen: assert that, and stop.
            assert!(!super::worth_it(64, 256, 256), "Winograd chosen on a CPU without AVX-512");
            eprintln!("no AVX-512 on this CPU: checked only that the Winograd path is never taken");
            return;
        }
        // (n, cin, h, w, cout): odd sizes, tiles not a whole block, channel counts that are
        // not whole panels, more than one block per thread.
        let cases = [(1, 3, 9, 7, 5), (2, 50, 17, 20, 20), (3, 4, 34, 33, 16), (1, 2, 2, 2, 1), (2, 8, 1, 40, 3)];
        for (i, &(n, cin, h, w, cout)) in cases.iter().enumerate() {
            let x = rand(n * cin * h * w, i as u64);
            let dy = rand(n * cout * h * w, 300 + i as u64);
            let mut want = vec![0f64; cout * cin * 9];
            for s in 0..n {
                for co in 0..cout {
                    for ci in 0..cin {
                        for kh in 0..3 {
                            for kw in 0..3 {
                                let mut acc = 0f64;
                                for oy in 0..h {
                                    for ox in 0..w {
                                        let (iy, ix) = (oy + kh, ox + kw);
                                        if iy < 1 || ix < 1 || iy > h || ix > w {
                                            continue;
                                        }
                                        acc += x[((s * cin + ci) * h + iy - 1) * w + ix - 1] as f64
                                            * dy[((s * cout + co) * h + oy) * w + ox] as f64;
                                    }
                                }
                                want[((co * cin + ci) * 3 + kh) * 3 + kw] += acc;
                            }
                        }
                    }
                }
            }
            let got = super::filter_grad3x3(&x, &dy, n, cin, h, w, cout);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            let err = want.iter().zip(&got).fold(0f64, |m, (a, b)| m.max((a - *b as f64).abs())) / scale;
            assert!(err < 1e-5, "case {i} {:?}: max relative error {err}", cases[i]);
        }
    }
}
