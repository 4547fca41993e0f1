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
        for ch in 0..c {
            for (p, &v) in x[ch * hw..(ch + 1) * hw].iter().enumerate() {
                if v != 0.0 {
                    let k = count[p] as usize;
                    if k == MAX_NZ {
                        return None;
                    }
                    idx[p * MAX_NZ + k] = ch as u32;
                    val[p * MAX_NZ + k] = v;
                    count[p] += 1;
                }
            }
        }
        Some(Self { idx, val, count })
    }

    fn at(&self, p: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        (0..self.count[p] as usize).map(move |k| (self.idx[p * MAX_NZ + k] as usize, self.val[p * MAX_NZ + k]))
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

impl Geom1 {
    /// Input pixel under output pixel (oy, ox) at tap (kh, kw), if inside.
    fn src(&self, oy: usize, ox: usize, kh: usize, kw: usize) -> Option<usize> {
        let (iy, ix) = ((oy + kh) as isize - self.pad as isize, (ox + kw) as isize - self.pad as isize);
        (iy >= 0 && ix >= 0 && (iy as usize) < self.h && (ix as usize) < self.w)
            .then(|| iy as usize * self.w + ix as usize)
    }
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

/// `y (cout x ho*wo) = conv(x, w)` for one sample given as sparse pixels.
pub(crate) fn forward(sp: &SparsePixels, w: &[f32], g: &Geom1, y: &mut [f32]) {
    let wt = taps_major(w, g);
    let p = g.ho * g.wo;
    assert!(y.len() >= g.cout * p);
    let out = OutPtr(y.as_mut_ptr());
    // Per output row: pixel-major accumulation (each output pixel adds a few contiguous weight
    // rows) into a small buffer, then transposed into the channel-major output.
    (0..g.ho).into_par_iter().for_each_init(
        || vec![0f32; g.wo * g.cout],
        |acc, oy| {
            acc.fill(0.0);
            for kh in 0..g.k {
                let iy = oy + kh;
                if iy < g.pad || iy - g.pad >= g.h {
                    continue;
                }
                let iy = iy - g.pad;
                for kw in 0..g.k {
                    // Output columns whose input column ox + kw - pad lies in [0, w).
                    let lo = g.pad.saturating_sub(kw);
                    let hi = (g.w + g.pad).saturating_sub(kw).min(g.wo);
                    for ox in lo..hi {
                        let src = iy * g.w + ox + kw - g.pad;
                        let a = &mut acc[ox * g.cout..(ox + 1) * g.cout];
                        for (c, v) in sp.at(src) {
                            let wr = &wt[((c * g.k + kh) * g.k + kw) * g.cout..][..g.cout];
                            for (a, &wv) in a.iter_mut().zip(wr) {
                                *a += v * wv;
                            }
                        }
                    }
                }
            }
            for co in 0..g.cout {
                // SAFETY: row oy of channel co lies inside y (asserted above); each task owns
                // its row oy in every channel.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(co * p + oy * g.wo), g.wo) };
                for (ox, d) in dst.iter_mut().enumerate() {
                    *d = acc[ox * g.cout + co];
                }
            }
        },
    );
}

/// `dw (cout x cin x k x k) (+)= ` the weight gradient of one sample, `dy (cout x ho*wo)`.
pub(crate) fn backward_filter(sp: &SparsePixels, dy: &[f32], g: &Geom1, dw: &mut [f32], accumulate: bool) {
    let kd = g.cin * g.k * g.k;
    let p = g.ho * g.wo;
    // Pixel-major output gradient, so that each scatter-add is a contiguous row of `cout`.
    let mut dyt = vec![0f32; p * g.cout];
    dyt.par_chunks_mut(g.cout).enumerate().for_each(|(j, row)| {
        for (co, v) in row.iter_mut().enumerate() {
            *v = dy[co * p + j];
        }
    });
    // Threads take bands of output rows, each into its own taps-major buffer, summed after.
    let threads = rayon::current_num_threads().max(1);
    let band = g.ho.div_ceil(threads).max(1);
    let partial: Vec<Vec<f32>> = (0..g.ho.div_ceil(band))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; kd * g.cout];
            for oy in t * band..((t + 1) * band).min(g.ho) {
                for ox in 0..g.wo {
                    let d = &dyt[(oy * g.wo + ox) * g.cout..][..g.cout];
                    for kh in 0..g.k {
                        for kw in 0..g.k {
                            let Some(src) = g.src(oy, ox, kh, kw) else { continue };
                            for (c, v) in sp.at(src) {
                                let r = (c * g.k + kh) * g.k + kw;
                                for (a, &dv) in acc[r * g.cout..(r + 1) * g.cout].iter_mut().zip(d) {
                                    *a += v * dv;
                                }
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    dw[..g.cout * kd].par_chunks_mut(kd).enumerate().for_each(|(co, row)| {
        for (r, out) in row.iter_mut().enumerate() {
            let v: f32 = partial.iter().map(|a| a[r * g.cout + co]).sum();
            *out = if accumulate { *out + v } else { v };
        }
    });
}
