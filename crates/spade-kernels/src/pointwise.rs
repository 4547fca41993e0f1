//! Element-wise ops with a one-pass backward.
use super::{applies, f32_slice};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

struct LeakyRelu(f32);

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "spade-leaky-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "leaky_relu")?;
        let slope = self.0;
        let mut y = super::output_vec(x.len());
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            super::wide(|| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = if x > 0.0 { x } else { x * slope };
                }
            })
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // The sign of the output is the sign of the input (slope > 0).
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &LeakyReluGrad(self.0))?))
    }
}

/// `(y, dy) -> dx` of [`LeakyRelu`].
pub(crate) struct LeakyReluGrad(pub(crate) f32);

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "spade-leaky-relu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (f32_slice(s1, l1, "leaky_relu backward")?, f32_slice(s2, l2, "leaky_relu backward")?);
        let slope = self.0;
        let mut dx = super::output_vec(y.len());
        dx.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (y, dy))| {
            super::wide(|| {
                for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                    *dx = if y > 0.0 { dy } else { dy * slope };
                }
            })
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// LeakyReLU with slope `0 < slope < 1`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if !applies(x) || slope <= 0.0 {
        return x.maximum(&(x * slope)?);
    }
    x.contiguous()?.apply_op1(LeakyRelu(slope as f32))
}

/// `act(y + b)` with a per-channel bias `b` over `(n, c, ...)`, `act` LeakyReLU(slope) (0: ReLU,
/// 1: none).
struct BiasAct {
    slope: f32,
    channels: usize,
    plane: usize,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "spade-bias-act"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, b) = (f32_slice(s1, l1, "bias")?, f32_slice(s2, l2, "bias")?);
        let (c, p, slope) = (self.channels, self.plane, self.slope);
        let mut out = super::output_vec(y.len());
        out.par_chunks_mut(p).zip(y.par_chunks(p)).enumerate().for_each(|(pl, (o, y))| {
            super::wide(|| {
                let b = b[pl % c];
                for (o, &y) in o.iter_mut().zip(y) {
                    let v = y + b;
                    *o = if v > 0.0 || slope == 1.0 { v } else { v * slope };
                }
            })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(&self, y: &Tensor, b: &Tensor, out: &Tensor, da: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dv, db) = bias_act_grads(out, b, da, self.slope, self.channels, self.plane)?;
        Ok((y.track_op().then_some(dv), db))
    }
}

/// `act(v + b)`'s gradients from its output `out` and output gradient `da`: that of `v`, and
/// that of `b` (when `b` is tracked).
pub(crate) fn bias_act_grads(
    out: &Tensor,
    b: &Tensor,
    da: &Tensor,
    slope: f32,
    channels: usize,
    plane: usize,
) -> Result<(Tensor, Option<Tensor>)> {
    let dv =
        if slope == 1.0 { da.contiguous()? } else { out.apply_op2_no_bwd(&da.contiguous()?, &LeakyReluGrad(slope))? };
    let db = if b.track_op() { Some(dv.apply_op1_no_bwd(&ChannelSum { channels, plane })?) } else { None };
    Ok((dv, db))
}

/// `v + b` then LeakyReLU(`slope`) in place (1: none, 0: ReLU), as [`BiasAct`] computes it.
#[inline]
pub(crate) fn bias_act_in_place(v: &mut [f32], b: f32, slope: f32) {
    super::wide(|| bias_act_loop(v, b, slope))
}

#[inline(always)]
fn bias_act_loop(v: &mut [f32], b: f32, slope: f32) {
    for v in v {
        let y = *v + b;
        *v = if y > 0.0 || slope == 1.0 { y } else { y * slope };
    }
}

/// `(n, c, ...) -> (c)`: the sum over everything but the channel.
pub(crate) struct ChannelSum {
    pub(crate) channels: usize,
    pub(crate) plane: usize,
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "spade-channel-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "channel sum")?;
        let (c, p) = (self.channels, self.plane);
        let planes: Vec<f64> = x.par_chunks(p).map(|pl| pl.iter().map(|&v| v as f64).sum()).collect();
        let mut sums = vec![0f64; c];
        for (i, v) in planes.iter().enumerate() {
            sums[i % c] += v;
        }
        Ok((CpuStorage::F32(sums.into_iter().map(|v| v as f32).collect()), c.into()))
    }
}

/// `act(y + b.reshape(1, c, 1, 1))` with `act` LeakyReLU(`slope`): 0 for ReLU, 1 for none.
pub fn bias_act(y: &Tensor, b: &Tensor, slope: f64) -> Result<Tensor> {
    if !applies(y) {
        let v = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
        return if slope == 1.0 {
            Ok(v)
        } else if slope == 0.0 {
            v.relu()
        } else {
            v.maximum(&(&v * slope)?)
        };
    }
    let dims = y.dims();
    let (c, plane) = (dims[1], dims[2..].iter().product());
    y.contiguous()?.apply_op2(&b.contiguous()?, BiasAct { slope: slope as f32, channels: c, plane })
}

/// Nearest-neighbour x2 upsampling of `(n, c, h, w)`; backward sums each 2x2 block.
struct Upsample2x {
    h: usize,
    w: usize,
}

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "spade-upsample2x"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "upsample2x")?;
        let (h, w) = (self.h, self.w);
        let mut y = super::output_vec(x.len() * 4);
        y.par_chunks_mut(4 * h * w).zip(x.par_chunks(h * w)).for_each(|(yp, xp)| {
            super::wide(|| {
                for i in 0..h {
                    let src = &xp[i * w..(i + 1) * w];
                    let (r0, r1) = yp[2 * i * 2 * w..(2 * i + 2) * 2 * w].split_at_mut(2 * w);
                    for (j, &v) in src.iter().enumerate() {
                        r0[2 * j] = v;
                        r0[2 * j + 1] = v;
                    }
                    r1.copy_from_slice(r0);
                }
            })
        });
        let d = l.dims();
        Ok((CpuStorage::F32(y), (d[0], d[1], 2 * h, 2 * w).into()))
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Upsample2xGrad { h: self.h, w: self.w })?))
    }
}

/// `(n, c, 2h, 2w) -> (n, c, h, w)`: the sum of each 2x2 block.
struct Upsample2xGrad {
    h: usize,
    w: usize,
}

impl CustomOp1 for Upsample2xGrad {
    fn name(&self) -> &'static str {
        "spade-upsample2x-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s, l, "upsample2x backward")?;
        let (h, w) = (self.h, self.w);
        let mut dx = super::output_vec(dy.len() / 4);
        dx.par_chunks_mut(h * w).zip(dy.par_chunks(4 * h * w)).for_each(|(xp, yp)| {
            super::wide(|| {
                for i in 0..h {
                    let r0 = &yp[2 * i * 2 * w..(2 * i + 1) * 2 * w];
                    let r1 = &yp[(2 * i + 1) * 2 * w..(2 * i + 2) * 2 * w];
                    for j in 0..w {
                        xp[i * w + j] = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
                    }
                }
            })
        });
        let d = l.dims();
        Ok((CpuStorage::F32(dx), (d[0], d[1], h, w).into()))
    }
}

/// `nn.Upsample(scale_factor=2)` (nearest) of an NCHW tensor.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if !applies(x) {
        return x.reshape((n, c, h, 1, w, 1))?.broadcast_as((n, c, h, 2, w, 2))?.reshape((n, c, 2 * h, 2 * w));
    }
    x.contiguous()?.apply_op1(Upsample2x { h, w })
}
