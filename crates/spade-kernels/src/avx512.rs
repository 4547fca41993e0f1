//! Single-precision matrix product with an AVX-512 micro-kernel (BLIS-style blocking).
//!
//! The `gemm` crate only reaches AVX2 on stable Rust, about half of what these machines' cores
//! do with AVX-512. This kernel packs A into panels of `MR` rows and B into panels of `NR`
//! columns (zero-padded), and computes each `MR x NR` (8 x 48) tile of C in 24 zmm accumulators:
//! 8 rows divide the channel counts of these networks, where 12 would leave tiles part empty.
//! Threads split the B panels of each block.
#![allow(unsafe_op_in_unsafe_fn)]

use super::gemm::MatRef;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

pub(super) const MR: usize = 8;
/// Columns of C per micro-kernel tile (two zmm registers).
pub const NR: usize = 48;
/// zmm registers per row of a tile.
const NV: usize = NR / 16;
pub(super) const KC: usize = 256;

/// Whether this CPU can run the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A raw pointer to C that threads share; each writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer `off` elements further (a method, so closures capture the whole `CPtr`).
    fn offset(self, off: usize) -> CPtr {
        CPtr(self.0.wrapping_add(off))
    }
}

/// A matrix operand of [`sgemm`], read through packing (or, for B panels whose rows are runs
/// of one slice, in place: [`Operand::row_starts`]): a strided view ([`MatRef`]) or a matrix
/// computed on the fly (the convolution's im2col and shifted inputs).
pub trait Operand: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Elements `(r, j0..j0 + dst.len())` into `dst`.
    fn row_run(&self, r: usize, j0: usize, dst: &mut [f32]);

    /// `Ap[p*MR + i] = A(i0 + i, p0 + p)` for one panel, zero beyond the rows.
    fn pack_a(&self, i0: usize, p0: usize, kc: usize, out: &mut [f32]) {
        pack_a_by_rows(self, i0, p0, kc, out)
    }

    /// One panel: `Bp[p*NR + j] = B(p0 + p, j0 + j)` for `j < cols` (`cols <= NR`, the columns
    /// left from `j0`), zero beyond. Called by the thread that then uses the panel.
    fn pack_b(&self, p0: usize, j0: usize, kc: usize, cols: usize, out: &mut [f32]) {
        pack_b_by_rows(self, p0, j0, kc, cols, out)
    }

    /// For an operand whose rows are runs of one slice: that slice, with `offs[p]` set to where
    /// row `p0 + p` starts (`B(p0 + p, j) = slice[offs[p] + j]`), so that full panels are read
    /// in place instead of packed. `None` (the default): always pack.
    fn row_starts(&self, p0: usize, offs: &mut [usize]) -> Option<&[f32]> {
        let _ = (p0, offs);
        None
    }
}

/// [`Operand::pack_a`] from row runs: each of the panel's rows read in order.
fn pack_a_by_rows<O: Operand + ?Sized>(o: &O, i0: usize, p0: usize, kc: usize, out: &mut [f32]) {
    let rows = MR.min(o.rows() - i0);
    let mut run = [0f32; KC];
    for i in 0..rows {
        o.row_run(i0 + i, p0, &mut run[..kc]);
        for (p, &v) in run[..kc].iter().enumerate() {
            out[p * MR + i] = v;
        }
    }
    for p in 0..kc {
        out[p * MR + rows..(p + 1) * MR].fill(0.0);
    }
}

/// [`Operand::pack_b`] from row runs.
pub fn pack_b_by_rows<O: Operand + ?Sized>(o: &O, p0: usize, j0: usize, kc: usize, cols: usize, out: &mut [f32]) {
    for (p, dst) in out[..kc * NR].chunks_exact_mut(NR).enumerate() {
        o.row_run(p0 + p, j0, &mut dst[..cols]);
        dst[cols..].fill(0.0);
    }
}

/// [`Operand::pack_b`] from column runs (`col_run(j, p0, dst)` fills `B(p0.., j)`), scattered
/// down the panel: for operands whose columns are contiguous.
pub fn pack_b_by_cols(
    col_run: impl Fn(usize, usize, &mut [f32]),
    p0: usize,
    j0: usize,
    kc: usize,
    cols: usize,
    out: &mut [f32],
) {
    let mut run = [0f32; KC];
    for j in 0..cols {
        col_run(j0 + j, p0, &mut run[..kc]);
        for (p, &v) in run[..kc].iter().enumerate() {
            out[p * NR + j] = v;
        }
    }
    if cols < NR {
        for p in 0..kc {
            out[p * NR + cols..(p + 1) * NR].fill(0.0);
        }
    }
}

impl Operand for MatRef<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_run(&self, r: usize, j0: usize, dst: &mut [f32]) {
        let start = r * self.rs + j0 * self.cs;
        if self.cs == 1 {
            dst.copy_from_slice(&self.data[start..start + dst.len()]);
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = self.data[start + j * self.cs];
            }
        }
    }

    fn pack_a(&self, i0: usize, p0: usize, kc: usize, out: &mut [f32]) {
        if self.rs != 1 {
            return pack_a_by_rows(self, i0, p0, kc, out);
        }
        // A transposed matrix: the MR values of one p are contiguous.
        let rows = MR.min(self.rows - i0);
        for p in 0..kc {
            let src = &self.data[i0 + (p0 + p) * self.cs..][..rows];
            out[p * MR..p * MR + rows].copy_from_slice(src);
            out[p * MR + rows..(p + 1) * MR].fill(0.0);
        }
    }

    fn pack_b(&self, p0: usize, j0: usize, kc: usize, cols: usize, out: &mut [f32]) {
        if !(self.rs == 1 && self.cs != 1) {
            return pack_b_by_rows(self, p0, j0, kc, cols, out);
        }
        // A transposed matrix: its columns are contiguous.
        let col = |j: usize, p0: usize, dst: &mut [f32]| {
            let n = dst.len();
            dst.copy_from_slice(&self.data[p0 + j * self.cs..][..n]);
        };
        pack_b_by_cols(col, p0, j0, kc, cols, out)
    }
}

/// `C[MR x NR] (+)= Ap * Bp` over `kc`; C rows `ldc` apart.
///
/// # Safety
/// The CPU must support AVX-512F (`available()`). `ap` is valid for `kc * MR` reads, `bp` for
/// `kc * NR`, and `c` for reads and writes of `MR` rows of `NR` values, `ldc` apart, that no
/// other thread touches meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn micro(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, load: bool) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut ap, mut bp) = (ap, bp);
    for _ in 0..kc {
        kstep(&mut acc, ap, bp);
        ap = ap.add(MR);
        bp = bp.add(NR);
    }
    store_tile(&acc, c, ldc, load);
}

/// One step of the inner dimension: `acc += Ap[p] * Bp[p]` (an `MR` column of A, an `NR` row of B).
///
/// # Safety
/// AVX-512F; `ap` valid for `MR` reads and `bp` for `NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn kstep(acc: &mut [[__m512; NV]; MR], ap: *const f32, bp: *const f32) {
    let mut b = [_mm512_setzero_ps(); NV];
    for (v, bv) in b.iter_mut().enumerate() {
        *bv = _mm512_loadu_ps(bp.add(16 * v));
    }
    for (i, row) in acc.iter_mut().enumerate() {
        let a = _mm512_set1_ps(*ap.add(i));
        for (r, bv) in row.iter_mut().zip(&b) {
            *r = _mm512_fmadd_ps(a, *bv, *r);
        }
    }
}

/// [`micro`] with B read in place: row `p` of the panel at `b.add(offs[p])`.
///
/// # Safety
/// As [`micro`], with `offs` valid for `kc` reads and every `b.add(offs[p])` for `NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_rows(
    kc: usize,
    ap: *const f32,
    b: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut ap = ap;
    for p in 0..kc {
        kstep(&mut acc, ap, b.add(*offs.add(p)));
        ap = ap.add(MR);
    }
    store_tile(&acc, c, ldc, load);
}

/// Writes (or adds, with `load`) the accumulators to C.
///
/// # Safety
/// AVX-512F; `c` valid for reads and writes of `MR` rows of `NR` values, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile(acc: &[[__m512; NV]; MR], c: *mut f32, ldc: usize, load: bool) {
    for (i, row) in acc.iter().enumerate() {
        let cr = c.add(i * ldc);
        for (v, r) in row.iter().enumerate() {
            let cv = cr.add(16 * v);
            if load {
                _mm512_storeu_ps(cv, _mm512_add_ps(_mm512_loadu_ps(cv), *r));
            } else {
                _mm512_storeu_ps(cv, *r);
            }
        }
    }
}

/// Where a tile's B panel comes from: packed, or rows read in place ([`Operand::row_starts`]).
#[derive(Clone, Copy)]
enum Panel {
    Packed(*const f32),
    Rows(*const f32, *const usize),
}

/// One `MR x NR` tile, through a scratch tile where it overhangs C.
///
/// # Safety
/// As [`micro`] (or [`micro_rows`] for `Panel::Rows`), with C valid for `rows x cols`
/// (at most `MR x NR`) values, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(kc: usize, ap: *const f32, b: Panel, c: CPtr, ldc: usize, rows: usize, cols: usize, load: bool) {
    let run = |c: *mut f32, ldc: usize, load: bool| match b {
        Panel::Packed(bp) => micro(kc, ap, bp, c, ldc, load),
        Panel::Rows(base, offs) => micro_rows(kc, ap, base, offs, c, ldc, load),
    };
    if rows == MR && cols == NR {
        run(c.0, ldc, load);
        return;
    }
    let mut tmp = [0f32; MR * NR];
    run(tmp.as_mut_ptr(), NR, false);
    for i in 0..rows {
        let cr = c.0.add(i * ldc);
        for j in 0..cols {
            let v = tmp[i * NR + j];
            *cr.add(j) = if load { *cr.add(j) + v } else { v };
        }
    }
}

thread_local! {
    /// This thread's packed panels of A and of B, reused across calls.
    static PACK_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PACK_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The whole of A, packed by [`pack_a_all`] on the thread that calls [`sgemm`].
    static PACK_A_ALL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows of A packed at once: the block stays in L2 while the B panels stream through L1.
const MC_BIG: usize = MR * 96;
/// Columns of C per block: C's block stays in cache across the `KC` slices.
const NC: usize = NR * 86;

/// `dst (m x n, rows ldc apart) (+)= a * b`. Panics on a CPU without AVX-512F (callers
/// check [`available`]; [`crate::gemm::sgemm`] is the entry point for any CPU).
///
/// A is packed whole, once, by all threads ([`pack_a_all`]); the B panels are split between
/// threads, and each thread packs a panel (or reads it in place) and runs it against every A
/// panel of a [`MC_BIG`] block while it is in cache, so no B block is written out whole. Where
/// B has too few panels to share (a narrow product), threads split the A panels instead.
pub fn sgemm<A: Operand, B: Operand>(dst: &mut [f32], ldc: usize, a: &A, b: &B, accumulate: bool) {
    assert!(available(), "avx512::sgemm: this CPU has no AVX-512F");
    #[cfg(target_arch = "x86_64")]
    {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        assert!(b.rows() == k && ldc >= n && (m == 0 || dst.len() >= (m - 1) * ldc + n));
        if m == 0 || n == 0 || k == 0 {
            if !accumulate {
                for r in 0..m {
                    dst[r * ldc..r * ldc + n].fill(0.0);
                }
            }
            return;
        }
        let c = CPtr(dst.as_mut_ptr());
        let threads = rayon::current_num_threads().max(1);
        let npanels = n.div_ceil(NR);
        let split_m = npanels < 2 * threads && m.div_ceil(MR) >= 2 * threads;
        if !split_m {
            // A packed whole, once, by all threads; then one parallel region: chunks of B
            // panels handed out by rayon (so a thread that is descheduled does not hold the
            // others at a barrier), each chunk running the whole inner dimension.
            let mpad = m.div_ceil(MR) * MR;
            super::with_scratch(&PACK_A_ALL, mpad * k, |apack| {
                pack_a_all(a, apack);
                let apack: &[f32] = apack;
                let chunk = (npanels / (threads * 4)).clamp(1, NC / NR);
                (0..npanels.div_ceil(chunk)).into_par_iter().for_each(|ch| {
                    let (j0, j1) = (ch * chunk * NR, ((ch + 1) * chunk * NR).min(n));
                    super::wide(|| chunk_product(c, ldc, (m, k), apack, b, (j0, j1), accumulate))
                });
            });
            return;
        }
        let mut bpack = Vec::new();
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let load = accumulate || pc > 0;
            {
                // Pack all of B's panels once, threads split the rows of A.
                bpack.resize(npanels * kc * NR, 0.0);
                bpack
                    .par_chunks_mut(kc * NR)
                    .enumerate()
                    .for_each(|(jp, out)| b.pack_b(pc, jp * NR, kc, NR.min(n - jp * NR), out));
                let bp = &bpack;
                let mpanels = m.div_ceil(MR);
                let per = mpanels.div_ceil(threads);
                (0..mpanels.div_ceil(per)).into_par_iter().for_each(|t| {
                    super::wide(|| {
                        super::with_scratch(&PACK_A, kc * MR, |ap| {
                            for ip in t * per..((t + 1) * per).min(mpanels) {
                                let i = ip * MR;
                                a.pack_a(i, pc, kc, ap);
                                for jp in 0..npanels {
                                    let j = jp * NR;
                                    // SAFETY: AVX-512 was detected by the caller; the packed
                                    // panels hold kc*MR and kc*NR values; the tile lies inside C
                                    // (rows, cols clipped) and threads write disjoint row ranges.
                                    unsafe {
                                        tile(
                                            kc,
                                            ap.as_ptr(),
                                            Panel::Packed(bp[jp * kc * NR..].as_ptr()),
                                            c.offset(i * ldc + j),
                                            ldc,
                                            MR.min(m - i),
                                            NR.min(n - j),
                                            load,
                                        )
                                    }
                                }
                            }
                        })
                    })
                });
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, ldc, a, b, accumulate);
        unreachable!("the AVX-512 kernel is only called where available() is true")
    }
}

/// A packed whole for [`chunk_product`]: for each `KC` slice of the inner dimension (starting
/// at `pc`), its `MR`-row panels one after another, at `pc * mpad + ip * kc * MR`. Threads pack
/// the panels in parallel.
fn pack_a_all<A: Operand>(a: &A, out: &mut [f32]) {
    let (m, k) = (a.rows(), a.cols());
    let mpad = m.div_ceil(MR) * MR;
    let mut slices = Vec::with_capacity(k.div_ceil(KC));
    let mut rest = &mut out[..mpad * k];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let (slice, r) = rest.split_at_mut(kc * mpad);
        slices.push((pc, kc, slice));
        rest = r;
    }
    slices.into_par_iter().for_each(|(pc, kc, slice)| {
        slice.par_chunks_mut(kc * MR).enumerate().for_each(|(ip, panel)| a.pack_a(ip * MR, pc, kc, panel));
    });
}

/// C's columns `j0..j1` of [`sgemm`] over the whole inner dimension, on the calling thread,
/// from A packed by [`pack_a_all`] (`m x k`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn chunk_product<B: Operand>(
    c: CPtr,
    ldc: usize,
    (m, k): (usize, usize),
    apack: &[f32],
    b: &B,
    (j0, j1): (usize, usize),
    accumulate: bool,
) {
    let mpad = m.div_ceil(MR) * MR;
    let mut offs = [0usize; KC];
    super::with_scratch(&PACK_B, KC * NR, |bp| {
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let load = accumulate || pc > 0;
            let aslice = &apack[pc * mpad..(pc + kc) * mpad];
            // Rows read in place where B allows it and the panel lies inside its slice.
            let rows =
                b.row_starts(pc, &mut offs[..kc]).map(|src| (src, offs[..kc].iter().max().copied().unwrap_or(0)));
            for ic in (0..m).step_by(MC_BIG) {
                let mpanels = MC_BIG.min(m - ic).div_ceil(MR);
                let ip0 = ic / MR;
                for j in (j0..j1).step_by(NR) {
                    let cols = NR.min(j1 - j);
                    let panel = match rows {
                        Some((src, top)) if cols == NR && top + j + NR <= src.len() => {
                            Panel::Rows(src[j..].as_ptr(), offs.as_ptr())
                        }
                        _ => {
                            b.pack_b(pc, j, kc, cols, bp);
                            Panel::Packed(bp.as_ptr())
                        }
                    };
                    for ip in ip0..ip0 + mpanels {
                        let i = ip * MR;
                        // SAFETY: AVX-512 was detected by the caller of sgemm; the packed
                        // panels hold kc*MR and kc*NR values; the tile lies inside C (rows,
                        // cols clipped) and chunks write disjoint column ranges.
                        unsafe {
                            tile(
                                kc,
                                aslice[ip * kc * MR..].as_ptr(),
                                panel,
                                c.offset(i * ldc + j),
                                ldc,
                                MR.min(m - i),
                                cols,
                                load,
                            )
                        }
                    }
                }
            }
        }
    })
}
