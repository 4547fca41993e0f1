//! Single-precision matrix product with an AVX-512 micro-kernel (BLIS-style blocking).
//!
//! The `gemm` crate only reaches AVX2 on stable Rust, about half of what these machines' cores
//! do with AVX-512. This kernel packs A into panels of `MR` rows and B into panels of `NR`
//! columns (zero-padded), and computes each `MR x NR` tile of C in 24 zmm accumulators.
//! Threads split the B panels of each block.
#![allow(unsafe_op_in_unsafe_fn)]

use super::gemm::MatRef;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

const MR: usize = 12;
/// Columns of C per micro-kernel tile (two zmm registers).
pub const NR: usize = 32;
const KC: usize = 256;
const MC: usize = 12 * 24;
const NC: usize = NR * 128;

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

/// A matrix operand of [`sgemm`], read only through packing: a strided view ([`MatRef`]) or a
/// matrix computed on the fly (the convolution's im2col).
pub trait Operand: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Elements `(r, j0..j0 + dst.len())` into `dst`.
    fn row_run(&self, r: usize, j0: usize, dst: &mut [f32]);

    /// `Ap[p*MR + i] = A(i0 + i, p0 + p)` for one panel, zero beyond the rows.
    fn pack_a(&self, i0: usize, p0: usize, kc: usize, out: &mut [f32]) {
        pack_a_by_rows(self, i0, p0, kc, out)
    }

    /// Every panel of a `kc x nc` block: panel `jp` at `jp*kc*NR` holds
    /// `Bp[p*NR + j] = B(p0 + p, j0 + jp*NR + j)`, zero beyond the columns.
    fn pack_b(&self, p0: usize, j0: usize, kc: usize, nc: usize, out: &mut [f32]) {
        pack_b_by_rows(self, p0, j0, kc, nc, out)
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

/// [`Operand::pack_b`] from row runs: rows produced in order, split between threads.
fn pack_b_by_rows<O: Operand + ?Sized>(o: &O, p0: usize, j0: usize, kc: usize, nc: usize, out: &mut [f32]) {
    let npanels = nc.div_ceil(NR);
    assert!(out.len() >= npanels * kc * NR);
    let base = CPtr(out.as_mut_ptr());
    let threads = rayon::current_num_threads().max(1);
    let per = kc.div_ceil(threads).max(1);
    (0..kc.div_ceil(per)).into_par_iter().for_each(|t| {
        for p in t * per..((t + 1) * per).min(kc) {
            for jp in 0..npanels {
                let cols = NR.min(nc - jp * NR);
                // SAFETY: row p of panel jp lies inside `out` (checked above); threads own
                // disjoint rows p.
                let dst = unsafe { std::slice::from_raw_parts_mut(base.offset(jp * kc * NR + p * NR).0, NR) };
                o.row_run(p0 + p, j0 + jp * NR, &mut dst[..cols]);
                dst[cols..].fill(0.0);
            }
        }
    });
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

    fn pack_b(&self, p0: usize, j0: usize, kc: usize, nc: usize, out: &mut [f32]) {
        let npanels = nc.div_ceil(NR);
        assert!(out.len() >= npanels * kc * NR);
        if !(self.rs == 1 && self.cs != 1) {
            return pack_b_by_rows(self, p0, j0, kc, nc, out);
        }
        // A transposed matrix: its columns are contiguous, so read each column in order and
        // scatter it down its panel.
        out[..npanels * kc * NR].par_chunks_mut(kc * NR).enumerate().for_each(|(jp, panel)| {
            let cols = NR.min(nc - jp * NR);
            for j in 0..cols {
                let src = &self.data[p0 + (j0 + jp * NR + j) * self.cs..][..kc];
                for (p, &v) in src.iter().enumerate() {
                    panel[p * NR + j] = v;
                }
            }
            if cols < NR {
                for p in 0..kc {
                    panel[p * NR + cols..(p + 1) * NR].fill(0.0);
                }
            }
        });
    }
}

/// `C[MR x NR] (+)= Ap * Bp` over `kc`; C rows `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, load: bool) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (ap, bp);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for (i, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*ap.add(i));
            row[0] = _mm512_fmadd_ps(a, b0, row[0]);
            row[1] = _mm512_fmadd_ps(a, b1, row[1]);
        }
        ap = ap.add(MR);
        bp = bp.add(NR);
    }
    for (i, row) in acc.iter().enumerate() {
        let cr = c.add(i * ldc);
        if load {
            _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), row[0]));
            _mm512_storeu_ps(cr.add(16), _mm512_add_ps(_mm512_loadu_ps(cr.add(16)), row[1]));
        } else {
            _mm512_storeu_ps(cr, row[0]);
            _mm512_storeu_ps(cr.add(16), row[1]);
        }
    }
}

/// One `MR x NR` tile, through a scratch tile where it overhangs C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(kc: usize, ap: *const f32, bp: *const f32, c: CPtr, ldc: usize, rows: usize, cols: usize, load: bool) {
    if rows == MR && cols == NR {
        micro(kc, ap, bp, c.0, ldc, load);
        return;
    }
    let mut tmp = [0f32; MR * NR];
    micro(kc, ap, bp, tmp.as_mut_ptr(), NR, false);
    for i in 0..rows {
        let cr = c.0.add(i * ldc);
        for j in 0..cols {
            let v = tmp[i * NR + j];
            *cr.add(j) = if load { *cr.add(j) + v } else { v };
        }
    }
}

/// `dst (m x n, rows ldc apart) (+)= a * b`. Callers check `available()`.
pub fn sgemm<A: Operand, B: Operand>(dst: &mut [f32], ldc: usize, a: &A, b: &B, accumulate: bool) {
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
        let mut bpack = vec![0f32; KC * NC.min(n.div_ceil(NR) * NR)];
        let mut apack = vec![0f32; KC * MC];
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let npanels = nc.div_ceil(NR);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let load = accumulate || pc > 0;
                b.pack_b(pc, jc, kc, nc, &mut bpack);
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let mpanels = mc.div_ceil(MR);
                    apack[..mpanels * kc * MR]
                        .par_chunks_mut(kc * MR)
                        .enumerate()
                        .for_each(|(ip, out)| a.pack_a(ic + ip * MR, pc, kc, out));
                    let (ap, bp) = (&apack, &bpack);
                    let per = npanels.div_ceil(threads);
                    (0..npanels.div_ceil(per)).into_par_iter().for_each(|t| {
                        for jp in t * per..((t + 1) * per).min(npanels) {
                            let j = jc + jp * NR;
                            let cols = NR.min(n - j);
                            for ip in 0..mpanels {
                                let i = ic + ip * MR;
                                let rows = MR.min(m - i);
                                // SAFETY: AVX-512 was detected by the caller; the packed panels
                                // hold kc*MR and kc*NR values; the tile lies inside C (rows,
                                // cols clipped) and threads write disjoint column ranges.
                                unsafe {
                                    tile(
                                        kc,
                                        ap[ip * kc * MR..].as_ptr(),
                                        bp[jp * kc * NR..].as_ptr(),
                                        c.offset(i * ldc + j),
                                        ldc,
                                        rows,
                                        cols,
                                        load,
                                    )
                                }
                            }
                        }
                    });
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, ldc, a, b, accumulate);
        unreachable!("the AVX-512 kernel is only called where available() is true")
    }
}
