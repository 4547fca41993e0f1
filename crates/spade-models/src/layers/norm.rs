//! Normalisation layers: batch norm (affine or param-free, training and running statistics)
//! and instance norm.
use crate::error::Result;
use crate::options::NormType;
use crate::store::{Init, Vb};
use candle_core::{DType, Tensor, Var};
use spade_kernels::norm::{norm_modulate_act, norm_modulate_act_stacked, NormStats};
use spade_kernels::pointwise::leaky_relu;

pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.1;

/// `nn.BatchNorm2d(c, affine)` with running statistics (and `sync_batch`, the same on one device).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
}

impl BatchNorm {
    pub fn new(vb: &Vb, channels: usize, affine: bool, init_gain: f64) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(vb.param(channels, "weight", Init::Normal { mean: 1.0, std: init_gain })?),
                Some(vb.param(channels, "bias", Init::Const(0.0))?),
            )
        } else {
            (None, None)
        };
        let running_mean = vb.buffer(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.buffer(channels, "running_var", Init::Const(1.0))?;
        let num_batches_tracked = vb.buffer_dtype((), "num_batches_tracked", Init::Const(0.0), DType::I64)?;
        Ok(Self { weight, bias, running_mean, running_var, num_batches_tracked })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.normalize(x, None, 1.0, train)?;
        let (w, b) = (self.weight.as_ref().map(super::param), self.bias.as_ref().map(super::param));
        affine(y, w.as_ref(), b.as_ref())
    }

    /// `act(x̂ * (1 + gamma) + beta)` without the affine parameters (SPADE's param-free norm):
    /// batch statistics in training (updating the running ones), running statistics otherwise.
    pub fn normalize(
        &self,
        x: &Tensor,
        gamma_beta: Option<(&Tensor, &Tensor)>,
        slope: f64,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        self.normalize_by(x, train, |stats| norm_modulate_act(x, stats, EPS, gamma_beta, slope))
    }

    /// [`Self::normalize`] with gamma and beta stacked in one `(n, 2c, h, w)` tensor.
    pub fn normalize_stacked(
        &self,
        x: &Tensor,
        gamma_beta: &Tensor,
        slope: f64,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        self.normalize_by(x, train, |stats| norm_modulate_act_stacked(x, stats, EPS, gamma_beta, slope))
    }

    /// Runs the fused kernel `f` with this mode's statistics and updates the running ones.
    fn normalize_by(
        &self,
        x: &Tensor,
        train: bool,
        f: impl FnOnce(NormStats) -> candle_core::Result<(Tensor, Option<(Tensor, Tensor)>)>,
    ) -> candle_core::Result<Tensor> {
        let c = x.dim(1)?;
        let stats = if train {
            NormStats::Batch
        } else {
            NormStats::Fixed {
                mean: self.running_mean.as_tensor().to_dtype(DType::F32)?.to_vec1()?,
                var: self.running_var.as_tensor().to_dtype(DType::F32)?.to_vec1()?,
            }
        };
        let (y, batch) = f(stats)?;
        if let Some((mean, var)) = batch {
            let n = x.elem_count() / c;
            let dt = self.running_mean.dtype();
            let unbiased = (var.to_dtype(dt)? * (n as f64 / (n as f64 - 1.0).max(1.0)))?;
            let m = MOMENTUM;
            let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.to_dtype(dt)? * m)?)?;
            let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
            self.running_mean.set(&rm)?;
            self.running_var.set(&rv)?;
            let t = (self.num_batches_tracked.as_tensor() + 1.0)?;
            self.num_batches_tracked.set(&t)?;
        }
        Ok(y)
    }
}

fn affine(y: Tensor, w: Option<&Tensor>, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let y = match w {
        Some(w) => y.broadcast_mul(&w.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// `nn.InstanceNorm2d(c, affine=False)`: per sample and channel over H, W, biased variance.
pub fn instance_norm(x: &Tensor) -> candle_core::Result<Tensor> {
    Ok(norm_modulate_act(x, NormStats::Instance, EPS, None, 1.0)?.0)
}

/// A normalisation chosen by a norm string: batch (affine or not), instance or none.
#[derive(Debug, Clone)]
pub enum Norm {
    Batch(BatchNorm),
    Instance,
    None,
}

impl Norm {
    /// `affine` selects the non-SPADE (affine) batch norm; SPADE's param-free norm has none.
    pub fn new(vb: &Vb, kind: NormType, channels: usize, affine: bool, init_gain: f64) -> Result<Self> {
        Ok(match kind {
            NormType::Batch => Norm::Batch(BatchNorm::new(vb, channels, affine, init_gain)?),
            NormType::Instance => Norm::Instance,
            NormType::None => Norm::None,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Norm::Batch(bn) => bn.forward_t(x, train),
            Norm::Instance => instance_norm(x),
            Norm::None => Ok(x.clone()),
        }
    }

    /// `leaky_relu(norm(x), slope)`, fused where the norm allows it.
    pub fn forward_act(&self, x: &Tensor, slope: f64, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Norm::Instance => Ok(norm_modulate_act(x, NormStats::Instance, EPS, None, slope)?.0),
            Norm::Batch(bn) if bn.weight.is_none() => bn.normalize(x, None, slope, train),
            _ => leaky_relu(&self.forward_t(x, train)?, slope),
        }
    }

    /// `act(norm(x) * (1 + gamma) + beta)` in one fused step (SPADE's modulation, then
    /// LeakyReLU with `slope`, 1 for none). Only for param-free norms: an affine batch norm
    /// would apply its own scale and shift first.
    pub fn modulate_act(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        slope: f64,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        match self {
            Norm::Batch(bn) if bn.weight.is_none() => bn.normalize(x, Some((gamma, beta)), slope, train),
            Norm::Instance => Ok(norm_modulate_act(x, NormStats::Instance, EPS, Some((gamma, beta)), slope)?.0),
            Norm::Batch(_) | Norm::None => {
                let y = ((self.forward_t(x, train)? * (gamma + 1.0)?)? + beta)?;
                if slope == 1.0 {
                    Ok(y)
                } else {
                    leaky_relu(&y, slope)
                }
            }
        }
    }

    /// [`Self::modulate_act`] with gamma and beta stacked in one `(n, 2c, h, w)` tensor (gamma's
    /// channels first), as one convolution computes them.
    pub fn modulate_act_stacked(
        &self,
        x: &Tensor,
        gamma_beta: &Tensor,
        slope: f64,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        match self {
            Norm::Batch(bn) if bn.weight.is_none() => bn.normalize_stacked(x, gamma_beta, slope, train),
            Norm::Instance => Ok(norm_modulate_act_stacked(x, NormStats::Instance, EPS, gamma_beta, slope)?.0),
            Norm::Batch(_) | Norm::None => {
                let c = x.dim(1)?;
                let (gamma, beta) = (gamma_beta.narrow(1, 0, c)?, gamma_beta.narrow(1, c, c)?);
                self.modulate_act(x, &gamma, &beta, slope, train)
            }
        }
    }
}
