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
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = if x > 0.0 { x } else { x * slope };
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // The sign of the output is the sign of the input (slope > 0).
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &LeakyReluGrad(self.0))?))
    }
}

/// `(y, dy) -> dx` of [`LeakyRelu`].
struct LeakyReluGrad(f32);

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "spade-leaky-relu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (f32_slice(s1, l1, "leaky_relu backward")?, f32_slice(s2, l2, "leaky_relu backward")?);
        let slope = self.0;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (y, dy))| {
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = if y > 0.0 { dy } else { dy * slope };
            }
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
