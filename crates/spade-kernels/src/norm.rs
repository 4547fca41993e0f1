//! Normalisation fused with SPADE's modulation and the activation that follows:
//! `a = act(x̂ * (1 + gamma) + beta)`, where `x̂` is x normalised per channel over (N, H, W)
//! (batch statistics), per sample and channel over (H, W) (instance norm), or with given
//! running statistics, and `act` is LeakyReLU with a slope (1 for none). One pass forward, two
//! passes backward, instead of a dozen element-wise candle ops and their gradients.
use super::{applies, f32_slice};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Where the normalisation statistics come from.
#[derive(Debug, Clone)]
pub enum NormStats {
    /// Mean and biased variance over (N, H, W) of this batch (batch norm in training).
    Batch,
    /// Mean and biased variance over (H, W) of each sample (instance norm).
    Instance,
    /// Given per-channel mean and variance (batch norm in evaluation).
    Fixed { mean: Vec<f32>, var: Vec<f32> },
}

/// Batch mean and biased variance per channel, as computed by a [`NormStats::Batch`] forward.
pub type BatchStats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

#[derive(Debug, Clone)]
struct NormAct {
    stats: NormStats,
    eps: f64,
    slope: f32,
    dims: (usize, usize, usize),
    /// Filled with the batch statistics by the forward of a `Batch` op.
    batch_stats: Option<BatchStats>,
}

/// Gamma and beta: two tensors shaped as x, or one `(n, 2c, ...)` tensor with gamma's channels
/// then beta's (`stacked`, as one convolution computes them).
#[derive(Clone, Copy)]
struct Gb<'a> {
    g: &'a [f32],
    b: &'a [f32],
    stacked: bool,
}

/// The gradients of gamma and beta, laid out as their [`Gb`].
enum DGb {
    Separate(Vec<f32>, Vec<f32>),
    Stacked(Vec<f32>),
}

/// A pointer that threads writing disjoint planes share.
#[derive(Clone, Copy)]
struct PlanePtr(*mut f32);
unsafe impl Send for PlanePtr {}
unsafe impl Sync for PlanePtr {}

impl NormAct {
    fn groups(&self) -> usize {
        let (n, c, _) = self.dims;
        match self.stats {
            NormStats::Instance => n * c,
            _ => c,
        }
    }

    fn group_of(&self, plane: usize) -> usize {
        let c = self.dims.1;
        match self.stats {
            NormStats::Instance => plane,
            _ => plane % c,
        }
    }

    /// Offsets of plane `pl`'s gamma and beta in their slices.
    fn gb_offsets(&self, pl: usize, stacked: bool) -> (usize, usize) {
        let (_, c, p) = self.dims;
        if stacked {
            let (ni, ci) = (pl / c, pl % c);
            ((ni * 2 * c + ci) * p, (ni * 2 * c + c + ci) * p)
        } else {
            (pl * p, pl * p)
        }
    }

    /// Plane `pl`'s gamma and beta.
    fn gb_plane<'a>(&self, gb: Gb<'a>, pl: usize) -> (&'a [f32], &'a [f32]) {
        let p = self.dims.2;
        let (og, ob) = self.gb_offsets(pl, gb.stacked);
        (&gb.g[og..og + p], &gb.b[ob..ob + p])
    }

    /// Per-group mean and 1/sqrt(var + eps) (and the biased variance), two-pass in f64.
    fn mean_istd(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (_, _, p) = self.dims;
        let groups = self.groups();
        let (mean, var): (Vec<f64>, Vec<f64>) = match &self.stats {
            NormStats::Fixed { mean, var } => {
                (mean.iter().map(|&v| v as f64).collect(), var.iter().map(|&v| v as f64).collect())
            }
            _ => {
                let per_group = (x.len() / p / groups * p) as f64;
                let sums: Vec<f64> = x.par_chunks(p).map(|pl| pl.iter().map(|&v| v as f64).sum()).collect();
                let mut mean = vec![0f64; groups];
                for (pl, s) in sums.iter().enumerate() {
                    mean[self.group_of(pl)] += s;
                }
                mean.iter_mut().for_each(|m| *m /= per_group);
                let sq: Vec<f64> = x
                    .par_chunks(p)
                    .enumerate()
                    .map(|(pl, v)| {
                        let m = mean[self.group_of(pl)];
                        v.iter().map(|&v| (v as f64 - m).powi(2)).sum()
                    })
                    .collect();
                let mut var = vec![0f64; groups];
                for (pl, s) in sq.iter().enumerate() {
                    var[self.group_of(pl)] += s;
                }
                var.iter_mut().for_each(|v| *v /= per_group);
                (mean, var)
            }
        };
        let istd = var.iter().map(|v| (1.0 / (v + self.eps).sqrt()) as f32).collect();
        (mean.iter().map(|&m| m as f32).collect(), istd, var.iter().map(|&v| v as f32).collect())
    }

    fn forward(&self, x: &[f32], gb: Option<Gb>) -> Vec<f32> {
        let (_, _, p) = self.dims;
        let (mean, istd, var) = self.mean_istd(x);
        if let (NormStats::Batch, Some(slot)) = (&self.stats, &self.batch_stats) {
            *slot.lock().expect("batch statistics lock") = Some((mean.clone(), var));
        }
        let mut out = super::output_vec(x.len());
        let slope = self.slope;
        out.par_chunks_mut(p).enumerate().for_each(|(pl, o)| {
            super::wide(|| {
                let gi = self.group_of(pl);
                let (m, s) = (mean[gi], istd[gi]);
                let xs = &x[pl * p..(pl + 1) * p];
                match gb {
                    Some(gb) => {
                        let (g, b) = self.gb_plane(gb, pl);
                        for j in 0..p {
                            let y = (xs[j] - m) * s * (1.0 + g[j]) + b[j];
                            o[j] = if y > 0.0 { y } else { y * slope };
                        }
                    }
                    None => {
                        for j in 0..p {
                            let y = (xs[j] - m) * s;
                            o[j] = if y > 0.0 { y } else { y * slope };
                        }
                    }
                }
            })
        });
        out
    }

    /// Gradients of x, gamma and beta from the output gradient `da` and the output `a`.
    fn backward(
        &self,
        x: &[f32],
        gb: Option<Gb>,
        a: &[f32],
        da: &[f32],
        want_x: bool,
        want_gb: bool,
    ) -> (Option<Vec<f32>>, Option<DGb>) {
        let (_, _, p) = self.dims;
        let planes = x.len() / p;
        let (mean, istd, _) = self.mean_istd(x);
        let slope = self.slope;
        // dy = da * act'(y); act' is read from the sign of the output (slope > 0).
        let dy_at = |i: usize| if a[i] > 0.0 { da[i] } else { da[i] * slope };
        // 1 + gamma of plane pl (1 without modulation).
        let scale = |pl: usize| gb.map(|gb| self.gb_plane(gb, pl).0);
        let mut dgb = match gb {
            Some(gb) if want_gb => Some(if gb.stacked {
                DGb::Stacked(super::output_vec(2 * x.len()))
            } else {
                DGb::Separate(super::output_vec(x.len()), super::output_vec(x.len()))
            }),
            _ => None,
        };
        let (pg, pb) = match dgb.as_mut() {
            Some(DGb::Stacked(v)) => (PlanePtr(v.as_mut_ptr()), PlanePtr(v.as_mut_ptr())),
            Some(DGb::Separate(g, b)) => (PlanePtr(g.as_mut_ptr()), PlanePtr(b.as_mut_ptr())),
            None => (PlanePtr(std::ptr::null_mut()), PlanePtr(std::ptr::null_mut())),
        };
        let write_gb = dgb.is_some();
        let stacked = gb.is_some_and(|gb| gb.stacked);
        // Pass 1: per-plane sums of dx̂ and dx̂ * x̂ (and dgamma, dbeta).
        let sums: Vec<(f64, f64)> = (0..planes)
            .into_par_iter()
            .map(|pl| {
                super::wide(|| {
                    let gi = self.group_of(pl);
                    let (m, s) = (mean[gi], istd[gi]);
                    let g = scale(pl);
                    let (og, ob) = self.gb_offsets(pl, stacked);
                    let (mut s1, mut s2) = (0f64, 0f64);
                    if write_gb {
                        let (pg, pb) = (pg, pb);
                        // SAFETY: plane pl's gamma and beta gradients are disjoint `p`-long ranges
                        // inside the vectors allocated above, written by this task only.
                        let (dg, db) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(pg.0.add(og), p),
                                std::slice::from_raw_parts_mut(pb.0.add(ob), p),
                            )
                        };
                        let g = g.expect("gamma");
                        for j in 0..p {
                            let i = pl * p + j;
                            let dy = dy_at(i);
                            let xh = (x[i] - m) * s;
                            db[j] = dy;
                            dg[j] = dy * xh;
                            let dxh = dy * (1.0 + g[j]);
                            s1 += dxh as f64;
                            s2 += (dxh * xh) as f64;
                        }
                    } else {
                        for j in 0..p {
                            let i = pl * p + j;
                            let dxh = dy_at(i) * g.map_or(1.0, |g| 1.0 + g[j]);
                            s1 += dxh as f64;
                            s2 += (dxh * (x[i] - m) * s) as f64;
                        }
                    }
                    (s1, s2)
                })
            })
            .collect();
        if !want_x {
            return (None, dgb);
        }
        let groups = self.groups();
        let (mut g1, mut g2) = (vec![0f64; groups], vec![0f64; groups]);
        for (pl, (s1, s2)) in sums.iter().enumerate() {
            g1[self.group_of(pl)] += s1;
            g2[self.group_of(pl)] += s2;
        }
        let per_group = (planes / groups * p) as f64;
        let fixed = matches!(self.stats, NormStats::Fixed { .. });
        let mut dx = super::output_vec(x.len());
        dx.par_chunks_mut(p).enumerate().for_each(|(pl, dxp)| {
            super::wide(|| {
                let gi = self.group_of(pl);
                let (m, s) = (mean[gi], istd[gi]);
                let (c1, c2) = ((g1[gi] / per_group) as f32, (g2[gi] / per_group) as f32);
                let g = scale(pl);
                for j in 0..p {
                    let i = pl * p + j;
                    let dxh = dy_at(i) * g.map_or(1.0, |g| 1.0 + g[j]);
                    dxp[j] = if fixed { dxh * s } else { s * (dxh - c1 - (x[i] - m) * s * c2) };
                }
            })
        });
        (Some(dx), dgb)
    }
}

fn dims3(l: &Layout) -> Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 {
        candle_core::bail!("norm: expected an (N, C, ...) tensor, got {d:?}")
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Run `f` on the f32 data of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(cpu) => Ok(f(f32_slice(cpu, l, "norm backward")?)),
        _ => candle_core::bail!("norm backward: expected a CPU tensor"),
    }
}

fn tensor_like(v: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, like.shape(), like.device())
}

impl CustomOp1 for NormAct {
    fn name(&self) -> &'static str {
        "spade-norm-act"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "norm")?;
        Ok((CpuStorage::F32(super::profile::time("norm fwd", || self.forward(x, None))), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, a: &Tensor, da: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(x, |x| {
            with_f32(a, |a| with_f32(da, |da| self.backward(x, None, a, da, true, false).0.expect("dx")))
        })???;
        Ok(Some(tensor_like(dx, x)?))
    }
}

impl CustomOp3 for NormAct {
    fn name(&self) -> &'static str {
        "spade-norm-modulate-act"
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
        let x = f32_slice(s1, l1, "SPADE modulation")?;
        let (g, b) = (f32_slice(s2, l2, "SPADE gamma")?, f32_slice(s3, l3, "SPADE beta")?);
        if g.len() != x.len() || b.len() != x.len() {
            candle_core::bail!(
                "SPADE modulation: x {:?}, gamma {:?}, beta {:?} must match",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let gb = Gb { g, b, stacked: false };
        Ok((CpuStorage::F32(super::profile::time("norm fwd", || self.forward(x, Some(gb)))), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        b: &Tensor,
        a: &Tensor,
        da: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_x = x.track_op();
        let want_gb = g.track_op() || b.track_op();
        let (dx, dgb) = super::profile::time("norm bwd", || {
            with_f32(x, |x| {
                with_f32(g, |g| {
                    with_f32(b, |b| {
                        let gb = Gb { g, b, stacked: false };
                        with_f32(a, |a| with_f32(da, |da| self.backward(x, Some(gb), a, da, want_x, want_gb)))
                    })
                })
            })
        })?????;
        let dx = dx.map(|v| tensor_like(v, x)).transpose()?;
        let (dg, db) = match dgb {
            Some(DGb::Stacked(_)) => unreachable!("separate gamma and beta give separate gradients"),
            Some(DGb::Separate(dg, db)) => (
                if g.track_op() { Some(tensor_like(dg, g)?) } else { None },
                if b.track_op() { Some(tensor_like(db, b)?) } else { None },
            ),
            None => (None, None),
        };
        Ok((dx, dg, db))
    }
}

/// [`NormAct`] with gamma and beta stacked in one `(n, 2c, ...)` tensor.
struct NormActStacked(NormAct);

impl CustomOp2 for NormActStacked {
    fn name(&self) -> &'static str {
        "spade-norm-modulate-act-stacked"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "SPADE modulation")?;
        let gb = f32_slice(s2, l2, "SPADE gamma and beta")?;
        if gb.len() != 2 * x.len() {
            candle_core::bail!(
                "SPADE modulation: x {:?} needs gamma and beta stacked as (n, 2c, ...), got {:?}",
                l1.dims(),
                l2.dims()
            )
        }
        let gb = Gb { g: gb, b: gb, stacked: true };
        Ok((CpuStorage::F32(super::profile::time("norm fwd", || self.0.forward(x, Some(gb)))), l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, gb: &Tensor, a: &Tensor, da: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_gb) = (x.track_op(), gb.track_op());
        let (dx, dgb) = super::profile::time("norm bwd", || {
            with_f32(x, |x| {
                with_f32(gb, |g| {
                    let gb = Gb { g, b: g, stacked: true };
                    with_f32(a, |a| with_f32(da, |da| self.0.backward(x, Some(gb), a, da, want_x, want_gb)))
                })
            })
        })????;
        let dx = dx.map(|v| tensor_like(v, x)).transpose()?;
        let dgb = match dgb {
            Some(DGb::Stacked(v)) => Some(tensor_like(v, gb)?),
            Some(DGb::Separate(..)) => unreachable!("stacked gamma and beta give a stacked gradient"),
            None => None,
        };
        Ok((dx, dgb))
    }
}

/// [`norm_modulate_act`] with gamma and beta stacked along the channels of one `(n, 2c, ...)`
/// tensor (gamma's `c` channels, then beta's), as one convolution of SPADE's hidden map
/// computes them: no copies to split them, and one gradient tensor.
pub fn norm_modulate_act_stacked(
    x: &Tensor,
    stats: NormStats,
    eps: f64,
    gamma_beta: &Tensor,
    slope: f64,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let c = x.dim(1)?;
    if !applies(x) {
        let (g, b) = (gamma_beta.narrow(1, 0, c)?, gamma_beta.narrow(1, c, c)?);
        return composed(x, stats, eps, Some((&g, &b)), slope);
    }
    if gamma_beta.dims()[0] != x.dims()[0] || gamma_beta.dim(1)? != 2 * c || gamma_beta.dims()[2..] != x.dims()[2..] {
        candle_core::bail!(
            "SPADE modulation: x {:?} needs gamma and beta stacked as (n, 2c, ...), got {:?}",
            x.dims(),
            gamma_beta.dims()
        )
    }
    let dims = dims3(x.layout())?;
    let batch_stats: Option<BatchStats> = matches!(stats, NormStats::Batch).then(|| Arc::new(Mutex::new(None)));
    let op = NormAct { stats, eps, slope: slope as f32, dims, batch_stats: batch_stats.clone() };
    let y = x.contiguous()?.apply_op2(&gamma_beta.contiguous()?, NormActStacked(op))?;
    Ok((y, take_batch_stats(batch_stats, x.device())?))
}

/// The batch statistics a `Batch` forward left in its slot, as tensors.
fn take_batch_stats(slot: Option<BatchStats>, dev: &candle_core::Device) -> Result<Option<(Tensor, Tensor)>> {
    match slot {
        Some(slot) => {
            let (m, v) =
                slot.lock().expect("batch statistics lock").take().expect("batch statistics written by forward");
            let c = m.len();
            Ok(Some((Tensor::from_vec(m, c, dev)?, Tensor::from_vec(v, c, dev)?)))
        }
        None => Ok(None),
    }
}

/// `act(norm(x) * (1 + gamma) + beta)` with `act` LeakyReLU(`slope`) (`slope` 1: identity).
/// Returns the output and, for [`NormStats::Batch`], the batch mean and biased variance per
/// channel (detached; for the running statistics).
pub fn norm_modulate_act(
    x: &Tensor,
    stats: NormStats,
    eps: f64,
    gamma_beta: Option<(&Tensor, &Tensor)>,
    slope: f64,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    if !applies(x) {
        return composed(x, stats, eps, gamma_beta, slope);
    }
    let dims = dims3(x.layout())?;
    let batch_stats: Option<BatchStats> = matches!(stats, NormStats::Batch).then(|| Arc::new(Mutex::new(None)));
    let op = NormAct { stats, eps, slope: slope as f32, dims, batch_stats: batch_stats.clone() };
    let x = x.contiguous()?;
    let y = match gamma_beta {
        Some((g, b)) => x.apply_op3(&g.contiguous()?, &b.contiguous()?, op)?,
        None => x.apply_op1(op)?,
    };
    Ok((y, take_batch_stats(batch_stats, x.device())?))
}

/// The mean and the biased variance of `x` over `dims` (kept as size-1 dims), with stock ops.
pub fn mean_var(x: &Tensor, dims: &[usize]) -> Result<(Tensor, Tensor)> {
    let count: usize = dims.iter().map(|&d| x.dims()[d]).product();
    let mut s = x.clone();
    for &d in dims {
        s = s.sum_keepdim(d)?;
    }
    let mean = (s / count as f64)?;
    let centered = x.broadcast_sub(&mean)?;
    let mut v = centered.sqr()?;
    for &d in dims {
        v = v.sum_keepdim(d)?;
    }
    Ok((mean, (v / count as f64)?))
}

/// The same computation with stock candle ops (other devices and dtypes, and the reference for
/// the tests).
pub fn composed(
    x: &Tensor,
    stats: NormStats,
    eps: f64,
    gamma_beta: Option<(&Tensor, &Tensor)>,
    slope: f64,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let c = x.dim(1)?;
    let (mean, var, out_stats) = match stats {
        NormStats::Batch => {
            let (m, v) = mean_var(x, &[0, 2, 3])?;
            let st = (m.detach().flatten_all()?, v.detach().flatten_all()?);
            (m, v, Some(st))
        }
        NormStats::Instance => {
            let (m, v) = mean_var(x, &[2, 3])?;
            (m, v, None)
        }
        NormStats::Fixed { mean, var } => (
            Tensor::from_vec(mean, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?,
            Tensor::from_vec(var, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?,
            None,
        ),
    };
    let mut y = x.broadcast_sub(&mean)?.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some((g, b)) = gamma_beta {
        y = ((y * (g + 1.0)?)? + b)?;
    }
    if slope != 1.0 {
        y = y.maximum(&(&y * slope)?)?;
    }
    Ok((y, out_stats))
}
