//! 2-d convolution and transposed convolution (NCHW, square kernels, zero padding) as im2col +
//! one matrix product per sample, with the backward as matrix products too:
//! - forward: `Y_n (Cout x P) = W (Cout x K) * cols(X_n) (K x P)`, K = Cin*k*k, P = Ho*Wo;
//! - input gradient: `dX_n = col2im(W^T * dY_n)`;
//! - weight gradient: `dW = sum_n dY_n * cols(X_n)^T`.
//!
//! A transposed convolution is the input gradient of the convolution with the same weight, so
//! it reuses these three kernels with their roles exchanged.
use super::avx512::{self, Operand};
use super::gemm::{sgemm, use_avx512, MatRef};
use super::pointwise::{bias_act_grads, bias_act_in_place};
use super::sparse::{self, Geom1, SparsePixels};
use super::winograd;
use super::{applies, f32_slice, with_scratch};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The geometry of one convolution `X (cin, h, w) -> Y (cout, ho, wo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    ho: usize,
    wo: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geom {
    fn kdim(&self) -> usize {
        self.cin * self.k * self.k
    }
    fn in_px(&self) -> usize {
        self.h * self.w
    }
    fn out_px(&self) -> usize {
        self.ho * self.wo
    }
    /// A 1x1 convolution with stride 1 and no padding needs no im2col.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Output pixel range `ox` of one kernel column whose input index `ox*stride + kw - pad` lies
/// in `[0, len)`.
fn valid_range(out: usize, len: usize, kw: usize, stride: usize, pad: usize) -> (usize, usize) {
    // ox*stride + kw >= pad  and  ox*stride + kw - pad <= len - 1
    let lo = if kw >= pad { 0 } else { (pad - kw).div_ceil(stride) };
    let hi = if len + pad > kw { ((len + pad - kw - 1) / stride + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// Output rows `[oy0, oy1)` of `cols (K x rows*wo)` from one sample `x (cin x h x w)`, rows
/// of cols ordered (c, kh, kw) as the weight.
fn im2col(x: &[f32], g: &Geom, oy0: usize, oy1: usize, cols: &mut [f32]) {
    let (k, p) = (g.k, (oy1 - oy0) * g.wo);
    cols[..g.kdim() * p].par_chunks_mut(k * k * p).enumerate().for_each(|(c, chunk)| {
        let xc = &x[c * g.in_px()..(c + 1) * g.in_px()];
        for kh in 0..k {
            let (ylo, yhi) = valid_range(g.ho, g.h, kh, g.stride, g.pad);
            for kw in 0..k {
                let (xlo, xhi) = valid_range(g.wo, g.w, kw, g.stride, g.pad);
                let row = &mut chunk[(kh * k + kw) * p..(kh * k + kw + 1) * p];
                for oy in oy0..oy1 {
                    let dst = &mut row[(oy - oy0) * g.wo..(oy - oy0 + 1) * g.wo];
                    if oy < ylo || oy >= yhi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = oy * g.stride + kh - g.pad;
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    dst[..xlo].fill(0.0);
                    dst[xhi..].fill(0.0);
                    if xlo >= xhi {
                        continue;
                    }
                    if g.stride == 1 {
                        let ix0 = xlo + kw - g.pad;
                        dst[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                    } else {
                        for ox in xlo..xhi {
                            dst[ox] = src[ox * g.stride + kw - g.pad];
                        }
                    }
                }
            }
        }
    });
}

/// `dx (cin x h x w) += ` the taps of output rows `[oy0, oy1)` in `cols`, the adjoint of
/// [`im2col`].
fn col2im(cols: &[f32], g: &Geom, oy0: usize, oy1: usize, dx: &mut [f32]) {
    let (k, p) = (g.k, (oy1 - oy0) * g.wo);
    dx[..g.cin * g.in_px()].par_chunks_mut(g.in_px()).enumerate().for_each(|(c, xc)| {
        let chunk = &cols[c * k * k * p..(c + 1) * k * k * p];
        for kh in 0..k {
            let (ylo, yhi) = valid_range(g.ho, g.h, kh, g.stride, g.pad);
            for kw in 0..k {
                let (xlo, xhi) = valid_range(g.wo, g.w, kw, g.stride, g.pad);
                let row = &chunk[(kh * k + kw) * p..(kh * k + kw + 1) * p];
                if xlo >= xhi {
                    continue;
                }
                for oy in ylo.max(oy0)..yhi.min(oy1) {
                    let iy = oy * g.stride + kh - g.pad;
                    let src = &row[(oy - oy0) * g.wo..(oy - oy0 + 1) * g.wo];
                    let dst = &mut xc[iy * g.w..(iy + 1) * g.w];
                    if g.stride == 1 {
                        let ix0 = xlo + kw - g.pad;
                        for (d, s) in dst[ix0..ix0 + (xhi - xlo)].iter_mut().zip(&src[xlo..xhi]) {
                            *d += *s;
                        }
                    } else {
                        for ox in xlo..xhi {
                            dst[ox * g.stride + kw - g.pad] += src[ox];
                        }
                    }
                }
            }
        }
    });
}

/// One sample's im2col `(K x P)` as an operand computed while packing, so that the matrix is
/// never written out: each run of a row is a (zero-padded) piece of an input row.
struct Im2Col<'a> {
    x: &'a [f32],
    g: Geom,
}

impl Im2Col<'_> {
    /// Elements `(r, j0..j0 + dst.len())`: tap r = (c, kh, kw) at output pixels j.
    fn run(&self, r: usize, j0: usize, dst: &mut [f32]) {
        let g = &self.g;
        let (c, kh, kw) = (r / (g.k * g.k), (r / g.k) % g.k, r % g.k);
        let xc = &self.x[c * g.in_px()..(c + 1) * g.in_px()];
        let (ylo, yhi) = valid_range(g.ho, g.h, kh, g.stride, g.pad);
        let (xlo, xhi) = valid_range(g.wo, g.w, kw, g.stride, g.pad);
        let (mut j, mut d) = (j0, 0);
        while d < dst.len() {
            let (oy, ox0) = (j / g.wo, j % g.wo);
            let seg = (g.wo - ox0).min(dst.len() - d);
            let out = &mut dst[d..d + seg];
            if oy < ylo || oy >= yhi {
                out.fill(0.0);
            } else {
                let src = &xc[(oy * g.stride + kh - g.pad) * g.w..][..g.w];
                let (a, b) = (xlo.max(ox0), xhi.min(ox0 + seg));
                if a >= b {
                    out.fill(0.0);
                } else {
                    out[..a - ox0].fill(0.0);
                    out[b - ox0..].fill(0.0);
                    if g.stride == 1 {
                        out[a - ox0..b - ox0].copy_from_slice(&src[a + kw - g.pad..b + kw - g.pad]);
                    } else {
                        for ox in a..b {
                            out[ox - ox0] = src[ox * g.stride + kw - g.pad];
                        }
                    }
                }
            }
            j += seg;
            d += seg;
        }
    }
}

impl Operand for Im2Col<'_> {
    fn rows(&self) -> usize {
        self.g.kdim()
    }
    fn cols(&self) -> usize {
        self.g.out_px()
    }
    fn row_run(&self, r: usize, j0: usize, dst: &mut [f32]) {
        self.run(r, j0, dst)
    }
}

/// The transpose `(P x K)` of [`Im2Col`], as the right operand of the weight gradient: its
/// panels are filled column by column from the im2col rows.
struct Im2ColT<'a>(Im2Col<'a>);

impl Operand for Im2ColT<'_> {
    fn rows(&self) -> usize {
        self.0.g.out_px()
    }
    fn cols(&self) -> usize {
        self.0.g.kdim()
    }
    fn row_run(&self, p: usize, r0: usize, dst: &mut [f32]) {
        let mut one = [0f32];
        for (j, d) in dst.iter_mut().enumerate() {
            self.0.run(r0 + j, p, &mut one);
            *d = one[0];
        }
    }
    fn pack_b(&self, p0: usize, j0: usize, kc: usize, cols: usize, out: &mut [f32]) {
        avx512::pack_b_by_cols(|j, p0, dst| self.0.run(j, p0, dst), p0, j0, kc, cols, out)
    }
}

/// Stride-1 convolution over a zero-padded copy of the input, without im2col: with the input
/// padded to `hp x wp`, the tap `(c, kh, kw)` at output pixel `j = oy*wp + ox` reads
/// `xp[c*hp*wp + kh*wp + kw + j]`, so each row of the product's right operand is a contiguous
/// run of the padded input and a panel is packed by plain copies. The output is computed `wp`
/// wide (the `wp - wo` extra columns of each row are discarded).
struct Shifted<'a> {
    xp: &'a [f32],
    cin: usize,
    k: usize,
    hp: usize,
    wp: usize,
    ho: usize,
}

impl Shifted<'_> {
    fn base(&self, r: usize) -> usize {
        let (c, t) = (r / (self.k * self.k), r % (self.k * self.k));
        c * self.hp * self.wp + (t / self.k) * self.wp + t % self.k
    }
}

impl Operand for Shifted<'_> {
    fn rows(&self) -> usize {
        self.cin * self.k * self.k
    }
    fn cols(&self) -> usize {
        self.ho * self.wp
    }
    fn row_run(&self, r: usize, j0: usize, dst: &mut [f32]) {
        let n = dst.len();
        dst.copy_from_slice(&self.xp[self.base(r) + j0..][..n]);
    }
    fn pack_b(&self, p0: usize, j0: usize, kc: usize, cols: usize, out: &mut [f32]) {
        const NR: usize = avx512::NR;
        let (k, plane) = (self.k, self.hp * self.wp);
        // (c, kh, kw) of row p0, stepped along with the rows.
        let (mut c, t) = (p0 / (k * k), p0 % (k * k));
        let (mut kh, mut kw) = (t / k, t % k);
        for dst in out[..kc * NR].chunks_exact_mut(NR) {
            let b = c * plane + kh * self.wp + kw + j0;
            if cols == NR {
                let dst: &mut [f32; NR] = dst.try_into().expect("panel row");
                *dst = self.xp[b..b + NR].try_into().expect("panel row");
            } else {
                dst[..cols].copy_from_slice(&self.xp[b..b + cols]);
                dst[cols..].fill(0.0);
            }
            kw += 1;
            if kw == k {
                kw = 0;
                kh += 1;
                if kh == k {
                    kh = 0;
                    c += 1;
                }
            }
        }
    }

    /// Every row is a run of the padded input: full panels are read from it in place.
    fn row_starts(&self, p0: usize, offs: &mut [usize]) -> Option<&[f32]> {
        for (p, o) in offs.iter_mut().enumerate() {
            *o = self.base(p0 + p);
        }
        Some(self.xp)
    }
}

/// Length of the padded copy of `n x cin x h x w` with `pad` on every side, plus the slack that
/// the last channel's shifted runs read past its end (into discarded columns).
fn padded_len(n: usize, cin: usize, h: usize, w: usize, pad: usize, k: usize) -> usize {
    cin * n * (h + 2 * pad) * (w + 2 * pad) + k
}

/// `xp = x (n x cin x h x w)` zero-padded by `pad`, laid out `cin x (n * hp) x wp`: per
/// channel, the samples' padded planes stacked into one tall plane.
fn pad_into(x: &[f32], n: usize, cin: usize, h: usize, w: usize, pad: usize, xp: &mut [f32]) {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let plane = n * hp * wp;
    xp[cin * plane..].fill(0.0);
    xp[..cin * plane].par_chunks_mut(plane).enumerate().for_each(|(c, tall)| {
        for (s, dst) in tall.chunks_mut(hp * wp).enumerate() {
            let src = &x[(s * cin + c) * h * w..(s * cin + c + 1) * h * w];
            dst[..pad * wp].fill(0.0);
            dst[(pad + h) * wp..].fill(0.0);
            for iy in 0..h {
                let row = &mut dst[(iy + pad) * wp..(iy + pad + 1) * wp];
                row[..pad].fill(0.0);
                row[pad + w..].fill(0.0);
                row[pad..pad + w].copy_from_slice(&src[iy * w..(iy + 1) * w]);
            }
        }
    });
}

thread_local! {
    /// Padded input and wide output of [`shifted_conv`], reused across calls.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y (n x cout x ho x wo) = conv(x (n x cin x h x w), w (cout x cin*k*k))`, stride 1, padding
/// `pad`, through [`Shifted`]: one product over the samples' padded planes stacked into one
/// tall plane, whose output rows that straddle two samples are discarded with the extra columns.
#[allow(clippy::too_many_arguments)]
fn shifted_conv(
    x: &[f32],
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    pad: usize,
    wt: &[f32],
    cout: usize,
    k: usize,
    y: &mut [f32],
    epi: Option<Epilogue>,
) {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let (ho, wo) = (hp + 1 - k, wp + 1 - k);
    let tall = n * hp + 1 - k;
    with_scratch(&PADDED, padded_len(n, cin, h, w, pad, k), |xp| {
        pad_into(x, n, cin, h, w, pad, xp);
        let b = Shifted { xp, cin, k, hp: n * hp, wp, ho: tall };
        let wm = MatRef::row_major(wt, cout, cin * k * k);
        with_scratch(&WIDE, cout * tall * wp, |wide| {
            avx512::sgemm(wide, tall * wp, &wm, &b, false);
            y[..n * cout * ho * wo].par_chunks_mut(ho * wo).enumerate().for_each(|(q, yc)| {
                let (s, co) = (q / cout, q % cout);
                let wc = &wide[co * tall * wp + s * hp * wp..];
                for oy in 0..ho {
                    let row = &mut yc[oy * wo..(oy + 1) * wo];
                    row.copy_from_slice(&wc[oy * wp..oy * wp + wo]);
                    if let Some(e) = epi {
                        bias_act_in_place(row, e.bias[co], e.slope);
                    }
                }
            });
        })
    })
}

/// Whether [`shifted_conv`] serves this geometry: stride 1 and maps wide enough that the
/// discarded columns (`2 * pad` per row) cost little.
fn use_shifted(g: &Geom) -> bool {
    g.stride == 1 && !g.pointwise() && g.wo >= 16 && use_avx512()
}

/// Stride-1 convolutions of maps narrower than [`use_shifted`]'s: all samples go through one
/// shifted product (one product per sample would be too small to share between threads).
fn use_shifted_batch(g: &Geom) -> bool {
    g.stride == 1 && !g.pointwise() && g.wo < 16 && use_avx512()
}

/// Whether [`winograd`] serves this convolution of `n` maps (forward, input gradient and weight
/// gradient): 3x3, stride 1, padding 1 (so the input gradient is one too), on maps with enough
/// tiles.
fn use_winograd(g: &Geom, n: usize) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == 1 && winograd::worth_it(n, g.h, g.w)
}

/// `W (cout, cin, k, k) -> Wf (cin, cout, k, k)` flipped in space: the weight of the
/// convolution that is the input gradient of a stride-1 convolution.
fn flip_transpose(w: &[f32], g: &Geom) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut wf = output_vec(w.len());
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for t in 0..kk {
                wf[(ci * g.cout + co) * kk + kk - 1 - t] = w[(co * g.cin + ci) * kk + t];
            }
        }
    }
    wf
}

/// The padded input transposed to pixel-major `(hp*wp + k) x cin` as the right operand of the
/// weight gradient: `B(j, (kh*k + kw)*cin + c) = xt[((oy + kh)*wp + ox + kw)*cin + c]` for the
/// output pixel `j = oy*wo + ox`, so a panel row is a run of channels at one input pixel.
struct ShiftedT<'a> {
    xt: &'a [f32],
    cin: usize,
    k: usize,
    wp: usize,
    ho: usize,
    wo: usize,
}

impl Operand for ShiftedT<'_> {
    fn rows(&self) -> usize {
        self.ho * self.wo
    }
    fn cols(&self) -> usize {
        self.k * self.k * self.cin
    }
    fn row_run(&self, j: usize, r0: usize, dst: &mut [f32]) {
        let (oy, ox) = (j / self.wo, j % self.wo);
        let mut d = 0;
        while d < dst.len() {
            let r = r0 + d;
            let (t, c) = (r / self.cin, r % self.cin);
            let seg = (self.cin - c).min(dst.len() - d);
            let px = (oy + t / self.k) * self.wp + ox + t % self.k;
            dst[d..d + seg].copy_from_slice(&self.xt[px * self.cin + c..][..seg]);
            d += seg;
        }
    }
    fn pack_b(&self, p0: usize, j0: usize, kc: usize, cols: usize, out: &mut [f32]) {
        const NR: usize = avx512::NR;
        // The panel's columns as runs of channels at one tap: (offset of the tap's pixel,
        // first channel, first column, length), the same for every row.
        let mut segs = [(0usize, 0usize, 0usize, 0usize); NR];
        let (mut nseg, mut d) = (0, 0);
        while d < cols {
            let r = j0 + d;
            let (t, c) = (r / self.cin, r % self.cin);
            let len = (self.cin - c).min(cols - d);
            segs[nseg] = ((t / self.k) * self.wp + t % self.k, c, d, len);
            nseg += 1;
            d += len;
        }
        let segs = &segs[..nseg];
        let (mut oy, mut ox) = (p0 / self.wo, p0 % self.wo);
        for dst in out[..kc * NR].chunks_exact_mut(NR) {
            let px = oy * self.wp + ox;
            if cols == NR && nseg == 1 {
                let (off, c, _, _) = segs[0];
                let b = (px + off) * self.cin + c;
                let dst: &mut [f32; NR] = dst.try_into().expect("panel row");
                *dst = self.xt[b..b + NR].try_into().expect("panel row");
            } else {
                for &(off, c, d, len) in segs {
                    let b = (px + off) * self.cin + c;
                    dst[d..d + len].copy_from_slice(&self.xt[b..b + len]);
                }
                dst[cols..].fill(0.0);
            }
            ox += 1;
            if ox == self.wo {
                ox = 0;
                oy += 1;
            }
        }
    }
}

/// `xt ((hp*wp + k) x cin)`: `x (cin x h x w)` zero-padded by `pad` and transposed to
/// pixel-major.
fn pad_transpose_into(x: &[f32], cin: usize, h: usize, w: usize, pad: usize, xt: &mut [f32]) {
    let wp = w + 2 * pad;
    xt[..pad * wp * cin].fill(0.0);
    xt[(pad + h) * wp * cin..].fill(0.0);
    xt[pad * wp * cin..(pad + h) * wp * cin].par_chunks_mut(wp * cin).enumerate().for_each(|(iy, row)| {
        super::wide(|| {
            row[..pad * cin].fill(0.0);
            row[(pad + w) * cin..].fill(0.0);
            for ix in 0..w {
                let px = &mut row[(pad + ix) * cin..(pad + ix + 1) * cin];
                for (c, v) in px.iter_mut().enumerate() {
                    *v = x[c * h * w + iy * w + ix];
                }
            }
        })
    });
}

/// Largest im2col block, in floats (16 MB): a sample's output rows are processed in blocks
/// that fit, so the scratch stays small at any resolution.
const COLS_BLOCK: usize = 1 << 22;

/// Blocks of output rows `[oy0, oy1)` whose im2col fits [`COLS_BLOCK`].
fn row_blocks(g: &Geom) -> impl Iterator<Item = (usize, usize)> {
    let rows = (COLS_BLOCK / (g.kdim() * g.wo).max(1)).clamp(1, g.ho.max(1));
    let ho = g.ho;
    (0..ho).step_by(rows).map(move |r| (r, (r + rows).min(ho)))
}

thread_local! {
    /// The im2col scratch of this thread, reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

use super::output_vec;

/// `y (n x cout x ho x wo) = conv(x, w)`.
/// The one-hot path's geometry and this sample's nonzeros, where it applies.
fn sparse_sample(xn: &[f32], g: &Geom, sparse_input: bool) -> Option<(SparsePixels, Geom1)> {
    if !sparse_input || g.stride != 1 {
        return None;
    }
    let sp = SparsePixels::new(xn, g.cin, g.in_px())?;
    let g1 = Geom1 { cin: g.cin, cout: g.cout, h: g.h, w: g.w, ho: g.ho, wo: g.wo, k: g.k, pad: g.pad };
    Some((sp, g1))
}

/// A stride-2 convolution with an even kernel as a stride-1 one (space to depth): with the
/// input zero-padded and each 2x2 block of pixels turned into 4 channels,
/// `xs[(c, a, b), i, j] = xpad[c, 2i + a, 2j + b]`, the convolution with
/// `W'[o, (c, a, b), kh, kw] = W[o, c, 2kh + a, 2kw + b]` (kernel k/2, no padding) gives the
/// same outputs (plus one extra row and column where the padded size is odd, cropped), and can
/// take the shifted path. Used by the discriminators' strided layers.
struct SpaceToDepth {
    g: Geom,
    /// The stride-1 geometry on the rearranged input.
    g1: Geom,
}

impl SpaceToDepth {
    fn new(g: &Geom) -> Option<Self> {
        if g.stride != 2 || g.k % 2 != 0 || !use_avx512() {
            return None;
        }
        let (h2, w2) = ((g.h + 2 * g.pad).div_ceil(2), (g.w + 2 * g.pad).div_ceil(2));
        let k = g.k / 2;
        let g1 =
            Geom { cin: 4 * g.cin, h: h2, w: w2, cout: g.cout, ho: h2 + 1 - k, wo: w2 + 1 - k, k, stride: 1, pad: 0 };
        (use_shifted(&g1) && g1.ho >= g.ho && g1.wo >= g.wo).then_some(Self { g: *g, g1 })
    }

    /// `x (n, cin, h, w) -> xs (n, 4cin, h2, w2)`.
    fn input(&self, x: &[f32], n: usize) -> Vec<f32> {
        let (g, g1) = (&self.g, &self.g1);
        let mut xs = output_vec(n * g1.cin * g1.in_px());
        xs.par_chunks_mut(g1.in_px()).enumerate().for_each(|(q, plane)| {
            let (s, c1) = (q / g1.cin, q % g1.cin);
            let (c, a, b) = (c1 / 4, (c1 / 2) % 2, c1 % 2);
            let src = &x[(s * g.cin + c) * g.in_px()..][..g.in_px()];
            for i in 0..g1.h {
                let row = &mut plane[i * g1.w..(i + 1) * g1.w];
                let y = 2 * i + a;
                if y < g.pad || y - g.pad >= g.h {
                    row.fill(0.0);
                    continue;
                }
                let srow = &src[(y - g.pad) * g.w..][..g.w];
                for (j, v) in row.iter_mut().enumerate() {
                    let xx = 2 * j + b;
                    *v = if xx < g.pad || xx - g.pad >= g.w { 0.0 } else { srow[xx - g.pad] };
                }
            }
        });
        xs
    }

    /// The adjoint of [`Self::input`]: `dxs (n, 4cin, h2, w2) -> dx (n, cin, h, w)`.
    fn input_grad(&self, dxs: &[f32], n: usize) -> Vec<f32> {
        let (g, g1) = (&self.g, &self.g1);
        let mut dx = output_vec(n * g.cin * g.in_px());
        dx.par_chunks_mut(g.in_px()).enumerate().for_each(|(q, plane)| {
            let (s, c) = (q / g.cin, q % g.cin);
            for y in 0..g.h {
                let (i, a) = ((y + g.pad) / 2, (y + g.pad) % 2);
                for xx in 0..g.w {
                    let (j, b) = ((xx + g.pad) / 2, (xx + g.pad) % 2);
                    plane[y * g.w + xx] = dxs[((s * g1.cin + c * 4 + a * 2 + b) * g1.h + i) * g1.w + j];
                }
            }
        });
        dx
    }

    /// `(index in W, index in W')` for every weight element, `W (cout, cin, k, k)` and
    /// `W' (cout, 4cin, k/2, k/2)`.
    fn weight_pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (g, k1) = (&self.g, self.g1.k);
        (0..g.cout * g.cin * g.k * g.k).map(move |i| {
            let (o, c, kh, kw) = (i / (g.cin * g.k * g.k), (i / (g.k * g.k)) % g.cin, (i / g.k) % g.k, i % g.k);
            let c1 = c * 4 + (kh % 2) * 2 + kw % 2;
            (i, ((o * 4 * g.cin + c1) * k1 + kh / 2) * k1 + kw / 2)
        })
    }

    /// `W -> W'`.
    fn weight(&self, w: &[f32]) -> Vec<f32> {
        let mut w1 = output_vec(w.len());
        self.weight_pairs().for_each(|(i, j)| w1[j] = w[i]);
        w1
    }

    /// The inverse of [`Self::weight`] (for the weight gradient).
    fn weight_back(&self, w1: &[f32]) -> Vec<f32> {
        let mut w = output_vec(w1.len());
        self.weight_pairs().for_each(|(i, j)| w[i] = w1[j]);
        w
    }

    /// Crops the stride-1 output `(n, cout, ho1, wo1)` to `(n, cout, ho, wo)`, or pads an
    /// output gradient back with zeros (`back`).
    fn fit(&self, t: &[f32], n: usize, back: bool) -> Vec<f32> {
        let (g, g1) = (&self.g, &self.g1);
        let (src_px, dst_px) = if back { (g.out_px(), g1.out_px()) } else { (g1.out_px(), g.out_px()) };
        let mut out = output_vec(n * g.cout * dst_px);
        out.par_chunks_mut(dst_px).zip(t.par_chunks(src_px)).for_each(|(d, s)| {
            if back {
                d.fill(0.0);
                for oy in 0..g.ho {
                    d[oy * g1.wo..oy * g1.wo + g.wo].copy_from_slice(&s[oy * g.wo..(oy + 1) * g.wo]);
                }
            } else {
                for oy in 0..g.ho {
                    d[oy * g.wo..(oy + 1) * g.wo].copy_from_slice(&s[oy * g1.wo..oy * g1.wo + g.wo]);
                }
            }
        });
        out
    }
}

/// A per-channel bias and LeakyReLU applied to a convolution's output as it is written.
#[derive(Clone, Copy)]
struct Epilogue<'a> {
    bias: &'a [f32],
    slope: f32,
}

fn forward(x: &[f32], w: &[f32], g: &Geom, n: usize, sparse_input: bool, epi: Option<Epilogue>) -> Vec<f32> {
    if let Some(sd) = SpaceToDepth::new(g) {
        let y1 = forward(&sd.input(x, n), &sd.weight(w), &sd.g1, n, false, None);
        let mut y = sd.fit(&y1, n, false);
        if let Some(e) = epi {
            y.par_chunks_mut(g.out_px())
                .enumerate()
                .for_each(|(q, yc)| bias_act_in_place(yc, e.bias[q % g.cout], e.slope));
        }
        return y;
    }
    let (kd, p) = (g.kdim(), g.out_px());
    let mut y = output_vec(n * g.cout * p);
    if use_winograd(g, n) && !sparse_input {
        winograd::conv3x3(x, n, g.cin, g.h, g.w, w, g.cout, &mut y, epi.map(|e| (e.bias, e.slope)));
        return y;
    }
    if use_shifted_batch(g) && !sparse_input {
        shifted_conv(x, n, g.cin, g.h, g.w, g.pad, w, g.cout, g.k, &mut y, epi);
        return y;
    }
    let wm = MatRef::row_major(w, g.cout, kd);
    for (i, yn) in y.chunks_mut(g.cout * p).enumerate() {
        let xn = &x[i * g.cin * g.in_px()..(i + 1) * g.cin * g.in_px()];
        if use_shifted(g) && !sparse_input {
            shifted_conv(xn, 1, g.cin, g.h, g.w, g.pad, w, g.cout, g.k, yn, epi);
            continue;
        }
        if let Some((sp, g1)) = sparse_sample(xn, g, sparse_input) {
            sparse::forward(&sp, w, &g1, yn);
        } else if g.pointwise() {
            sgemm(yn, p, wm, MatRef::row_major(xn, kd, p), false);
        } else if use_shifted(g) {
            shifted_conv(xn, 1, g.cin, g.h, g.w, g.pad, w, g.cout, g.k, yn, None);
        } else if use_avx512() {
            avx512::sgemm(yn, p, &wm, &Im2Col { x: xn, g: *g }, false);
        } else {
            for (oy0, oy1) in row_blocks(g) {
                let q = (oy1 - oy0) * g.wo;
                with_scratch(&SCRATCH, kd * q, |cols| {
                    im2col(xn, g, oy0, oy1, cols);
                    sgemm(&mut yn[oy0 * g.wo..], p, wm, MatRef::row_major(cols, kd, q), false);
                });
            }
        }
        if let Some(e) = epi {
            yn.par_chunks_mut(p).enumerate().for_each(|(co, yc)| bias_act_in_place(yc, e.bias[co], e.slope));
        }
    }
    y
}

/// `dx (n x cin x h x w)` from `dy (n x cout x ho x wo)`.
fn backward_data(dy: &[f32], w: &[f32], g: &Geom, n: usize) -> Vec<f32> {
    if let Some(sd) = SpaceToDepth::new(g) {
        let dxs = backward_data(&sd.fit(dy, n, true), &sd.weight(w), &sd.g1, n);
        return sd.input_grad(&dxs, n);
    }
    let (kd, p) = (g.kdim(), g.out_px());
    if g.pad < g.k {
        // The input gradient of a stride-1 convolution is the convolution of dy, padded by
        // k - 1 - pad, with the flipped transposed weight.
        let flipped_pad = g.k - 1 - g.pad;
        if use_winograd(g, n) {
            let mut dx = output_vec(n * g.cin * g.in_px());
            winograd::conv3x3(dy, n, g.cout, g.ho, g.wo, &flip_transpose(w, g), g.cin, &mut dx, None);
            return dx;
        }
        if use_shifted(g) && g.w >= 16 {
            let wf = flip_transpose(w, g);
            let mut dx = output_vec(n * g.cin * g.in_px());
            for (i, dxn) in dx.chunks_mut(g.cin * g.in_px()).enumerate() {
                let dyn_ = &dy[i * g.cout * p..(i + 1) * g.cout * p];
                shifted_conv(dyn_, 1, g.cout, g.ho, g.wo, flipped_pad, &wf, g.cin, g.k, dxn, None);
            }
            return dx;
        }
        if use_shifted_batch(g) {
            let mut dx = output_vec(n * g.cin * g.in_px());
            shifted_conv(dy, n, g.cout, g.ho, g.wo, flipped_pad, &flip_transpose(w, g), g.cin, g.k, &mut dx, None);
            return dx;
        }
    }
    let mut dx = if g.pointwise() { output_vec(n * g.cin * g.in_px()) } else { vec![0f32; n * g.cin * g.in_px()] };
    let wt = MatRef::transposed(w, kd, g.cout);
    for (i, dxn) in dx.chunks_mut(g.cin * g.in_px()).enumerate() {
        let dyn_ = &dy[i * g.cout * p..(i + 1) * g.cout * p];
        if g.pointwise() {
            sgemm(dxn, p, wt, MatRef::row_major(dyn_, g.cout, p), false);
            continue;
        }
        for (oy0, oy1) in row_blocks(g) {
            let q = (oy1 - oy0) * g.wo;
            let dyb = MatRef { data: &dyn_[oy0 * g.wo..], rows: g.cout, cols: q, rs: p, cs: 1 };
            with_scratch(&SCRATCH, kd * q, |cols| {
                sgemm(cols, q, wt, dyb, false);
                col2im(cols, g, oy0, oy1, dxn);
            });
        }
    }
    dx
}

/// `dw (cout x cin x k x k)` from the input `x` and `dy`.
fn backward_filter(x: &[f32], dy: &[f32], g: &Geom, n: usize, sparse_input: bool) -> Vec<f32> {
    if let Some(sd) = SpaceToDepth::new(g).filter(|_| !sparse_input) {
        let dw1 = backward_filter(&sd.input(x, n), &sd.fit(dy, n, true), &sd.g1, n, false);
        return sd.weight_back(&dw1);
    }
    if use_winograd(g, n) && !sparse_input {
        return winograd::filter_grad3x3(x, dy, n, g.cin, g.h, g.w, g.cout);
    }
    let (kd, p) = (g.kdim(), g.out_px());
    let mut dw = output_vec(g.cout * kd);
    if use_shifted(g) && !sparse_input {
        // dW in (cout, kh, kw, cin) order from the pixel-major padded input, then permuted.
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        with_scratch(&PADDED, (hp * wp + g.k) * g.cin, |xt| {
            for i in 0..n {
                let xn = &x[i * g.cin * g.in_px()..(i + 1) * g.cin * g.in_px()];
                let dyn_ = &dy[i * g.cout * p..(i + 1) * g.cout * p];
                pad_transpose_into(xn, g.cin, g.h, g.w, g.pad, xt);
                let b = ShiftedT { xt, cin: g.cin, k: g.k, wp, ho: g.ho, wo: g.wo };
                avx512::sgemm(&mut dw, kd, &MatRef::row_major(dyn_, g.cout, p), &b, i > 0);
            }
        });
        let kk = g.k * g.k;
        let mut out = output_vec(g.cout * kd);
        out.par_chunks_mut(kd).zip(dw.par_chunks(kd)).for_each(|(o, d)| {
            for t in 0..kk {
                for c in 0..g.cin {
                    o[c * kk + t] = d[t * g.cin + c];
                }
            }
        });
        return out;
    }
    let mut first = true;
    for i in 0..n {
        let xn = &x[i * g.cin * g.in_px()..(i + 1) * g.cin * g.in_px()];
        let dyn_ = &dy[i * g.cout * p..(i + 1) * g.cout * p];
        if let Some((sp, g1)) = sparse_sample(xn, g, sparse_input) {
            sparse::backward_filter(&sp, dyn_, &g1, &mut dw, !first);
            first = false;
            continue;
        }
        if g.pointwise() {
            sgemm(&mut dw, kd, MatRef::row_major(dyn_, g.cout, p), MatRef::transposed(xn, p, kd), !first);
            first = false;
            continue;
        }
        if use_avx512() {
            let cols_t = Im2ColT(Im2Col { x: xn, g: *g });
            avx512::sgemm(&mut dw, kd, &MatRef::row_major(dyn_, g.cout, p), &cols_t, !first);
            first = false;
            continue;
        }
        for (oy0, oy1) in row_blocks(g) {
            let q = (oy1 - oy0) * g.wo;
            let dyb = MatRef { data: &dyn_[oy0 * g.wo..], rows: g.cout, cols: q, rs: p, cs: 1 };
            with_scratch(&SCRATCH, kd * q, |cols| {
                im2col(xn, g, oy0, oy1, cols);
                sgemm(&mut dw, kd, dyb, MatRef::transposed(cols, q, kd), !first);
            });
            first = false;
        }
    }
    dw
}

fn cpu(v: Vec<f32>, shape: impl Into<Shape>) -> (CpuStorage, Shape) {
    (CpuStorage::F32(v), shape.into())
}

/// Convolution `x (n, cin, h, w)`, `w (cout, cin, k, k)` [, `b (cout)`].
#[derive(Debug, Clone, Copy)]
struct ConvOp {
    g: Geom,
    n: usize,
    /// Try the one-hot path ([`super::sparse`]) for the forward and weight gradient.
    sparse_input: bool,
}

impl ConvOp {
    fn desc(&self) -> String {
        let g = &self.g;
        format!(
            "n{} {}x{}x{} -> {}x{}x{} k{} s{}{}",
            self.n,
            g.cin,
            g.h,
            g.w,
            g.cout,
            g.ho,
            g.wo,
            g.k,
            g.stride,
            if self.sparse_input { " sparse" } else { "" }
        )
    }
    fn grads(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() { Some(dy.apply_op2_no_bwd(w, &BwdData(*self))?) } else { None };
        let dw = if w.track_op() { Some(x.apply_op2_no_bwd(&dy, &BwdFilter(*self))?) } else { None };
        Ok((dx, dw))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "spade-conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "conv2d")?, f32_slice(s2, l2, "conv2d")?);
        let g = &self.g;
        Ok(cpu(
            super::profile::time(super::profile::detailed("conv fwd", || self.desc()), || {
                forward(x, w, g, self.n, self.sparse_input, None)
            }),
            (self.n, g.cout, g.ho, g.wo),
        ))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, dy)
    }
}

/// `act(conv(x, w) + b)`: a [`ConvOp`] whose output gets the per-channel bias and the
/// LeakyReLU(`slope`) (1: none) as it is written.
#[derive(Debug, Clone, Copy)]
struct ConvBiasAct {
    conv: ConvOp,
    slope: f32,
}

impl CustomOp3 for ConvBiasAct {
    fn name(&self) -> &'static str {
        "spade-conv2d-bias-act"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "conv2d")?, f32_slice(s2, l2, "conv2d")?);
        let bias = f32_slice(s3, l3, "conv2d bias")?;
        let c = &self.conv;
        let g = &c.g;
        if bias.len() != g.cout {
            candle_core::bail!("conv2d: bias has {} values for {} output channels", bias.len(), g.cout)
        }
        let epi = Epilogue { bias, slope: self.slope };
        Ok(cpu(
            super::profile::time(super::profile::detailed("conv fwd", || c.desc()), || {
                forward(x, w, g, c.n, c.sparse_input, Some(epi))
            }),
            (c.n, g.cout, g.ho, g.wo),
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        out: &Tensor,
        da: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.conv.g;
        let (dv, db) = bias_act_grads(out, b, da, self.slope, g.cout, g.out_px())?;
        let (dx, dw) = self.conv.grads(x, w, &dv)?;
        Ok((dx, dw, db))
    }
}

/// `dy, w -> dx` of a [`ConvOp`]; also the forward of a transposed convolution.
struct BwdData(ConvOp);

impl CustomOp2 for BwdData {
    fn name(&self) -> &'static str {
        "spade-conv2d-bwd-data"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dy, w) = (f32_slice(s1, l1, "conv2d backward")?, f32_slice(s2, l2, "conv2d backward")?);
        let ConvOp { g, n, .. } = self.0;
        Ok(cpu(
            super::profile::time(super::profile::detailed("conv bwd data", || self.0.desc()), || {
                backward_data(dy, w, &g, n)
            }),
            (n, g.cin, g.h, g.w),
        ))
    }
}

/// `x, dy -> dw` of a [`ConvOp`].
struct BwdFilter(ConvOp);

impl CustomOp2 for BwdFilter {
    fn name(&self) -> &'static str {
        "spade-conv2d-bwd-filter"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (f32_slice(s1, l1, "conv2d backward")?, f32_slice(s2, l2, "conv2d backward")?);
        let ConvOp { g, n, .. } = self.0;
        Ok(cpu(
            super::profile::time(super::profile::detailed("conv bwd filter", || self.0.desc()), || {
                backward_filter(x, dy, &g, n, self.0.sparse_input)
            }),
            (g.cout, g.cin, g.k, g.k),
        ))
    }
}

/// Transposed convolution `x (n, ci, h, w)`, `w (ci, co, k, k)` -> `(n, co, ho, wo)`: the input
/// gradient of the convolution `(n, co, ho, wo) -> (n, ci, h, w)` with weight `w`.
#[derive(Debug, Clone, Copy)]
struct ConvTransposeOp(ConvOp);

impl CustomOp2 for ConvTransposeOp {
    fn name(&self) -> &'static str {
        "spade-conv-transpose2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        BwdData(self.0).cpu_fwd(s1, l1, s2, l2)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // y = conv^T(x): dx = conv(dy, w), dw = filter gradient of conv with input dy and output
        // gradient x.
        let dy = dy.contiguous()?;
        let dx = if x.track_op() { Some(dy.apply_op2_no_bwd(w, &self.0)?) } else { None };
        let dw = if w.track_op() { Some(dy.apply_op2_no_bwd(x, &BwdFilter(self.0))?) } else { None };
        Ok((dx, dw))
    }
}

fn conv_geom(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<(Geom, usize)> {
    let (n, cin, h, wd) = x.dims4()?;
    let (cout, wcin, kh, kw) = w.dims4()?;
    if wcin != cin || kh != kw {
        candle_core::bail!("conv2d: input has {cin} channels, weight is {:?} (expected (cout, {cin}, k, k))", w.dims())
    }
    if h + 2 * pad < kh || wd + 2 * pad < kw || stride == 0 {
        candle_core::bail!("conv2d: input {h}x{wd} with padding {pad} is smaller than the {kh}x{kw} kernel")
    }
    let (ho, wo) = ((h + 2 * pad - kh) / stride + 1, (wd + 2 * pad - kw) / stride + 1);
    Ok((Geom { cin, h, w: wd, cout, ho, wo, k: kh, stride, pad }, n))
}

/// [`conv2d`] of an input that is mostly one-hot per pixel (a semantic map): on the CPU each
/// sample whose pixels have at most four nonzero channels takes the gather path of
/// [`super::sparse`]; others the dense one. Same results either way.
pub fn conv2d_sparse_input(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
    slope: f64,
) -> Result<Tensor> {
    if !applies(x) {
        return conv2d_act(x, w, b, stride, pad, slope);
    }
    let (g, n) = conv_geom(x, w, stride, pad)?;
    apply_conv(x, w, b, slope, ConvOp { g, n, sparse_input: true })
}

/// `act(conv(x, w) + b)` on the CPU: with a bias, the bias and activation are applied as the
/// convolution writes its output.
fn apply_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, slope: f64, op: ConvOp) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, ConvBiasAct { conv: op, slope: slope as f32 }),
        None => bias_then_act(x.apply_op2(&w, op)?, None, slope),
    }
}

/// The bias and activation after a convolution, in one op.
fn bias_then_act(y: Tensor, b: Option<&Tensor>, slope: f64) -> Result<Tensor> {
    match b {
        Some(b) => super::pointwise::bias_act(&y, b, slope),
        None if slope == 1.0 => Ok(y),
        None => super::pointwise::leaky_relu(&y, slope),
    }
}

/// `F.conv2d(x, w, b, stride, padding)`; the fast kernel on the CPU, candle's elsewhere.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    conv2d_act(x, w, b, stride, pad, 1.0)
}

/// `act(conv2d(x, w, b))` with `act` LeakyReLU(`slope`) (0: ReLU, 1: none); on the CPU the
/// bias and activation are one pass after the product.
pub fn conv2d_act(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize, slope: f64) -> Result<Tensor> {
    if !applies(x) {
        let y = x.conv2d(w, pad, stride, 1, 1)?;
        return bias_then_act(y, b, slope);
    }
    let (g, n) = conv_geom(x, w, stride, pad)?;
    apply_conv(x, w, b, slope, ConvOp { g, n, sparse_input: false })
}

/// `F.conv_transpose2d(x, w, b, stride, padding, output_padding)` with `w (ci, co, k, k)`.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
    output_padding: usize,
) -> Result<Tensor> {
    let y = if !applies(x) {
        x.conv_transpose2d(w, pad, output_padding, stride, 1)?
    } else {
        let (n, ci, h, wd) = x.dims4()?;
        let (wci, co, k, k2) = w.dims4()?;
        if wci != ci || k != k2 {
            candle_core::bail!("conv_transpose2d: input has {ci} channels, weight is {:?}", w.dims())
        }
        let ho = (h - 1) * stride + k + output_padding - 2 * pad;
        let wo = (wd - 1) * stride + k + output_padding - 2 * pad;
        // The convolution (n, co, ho, wo) -> (n, ci, h, w) whose input gradient this is.
        let g = Geom { cin: co, h: ho, w: wo, cout: ci, ho: h, wo: wd, k, stride, pad };
        x.contiguous()?.apply_op2(&w.contiguous()?, ConvTransposeOp(ConvOp { g, n, sparse_input: false }))?
    };
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}
