//! SPADE (spatially-adaptive denormalisation) and the SPADE residual block.
use super::conv::{Conv2d, ConvSpec};
use super::norm::Norm;
use super::ops::resize_nearest;
use crate::error::Result;
use crate::options::SpadeNorm;
use crate::store::Vb;
use candle_core::Tensor;

/// Hidden channels of SPADE's shared conv, fixed by the reference.
pub const NHIDDEN: usize = 128;

/// `out = param_free_norm(x) * (1 + gamma(seg)) + beta(seg)`.
#[derive(Debug, Clone)]
pub struct Spade {
    param_free_norm: Norm,
    mlp_shared: Conv2d,
    mlp_gamma: Conv2d,
    mlp_beta: Conv2d,
}

impl Spade {
    pub fn new(vb: &Vb, norm: SpadeNorm, norm_nc: usize, label_nc: usize, gain: f64) -> Result<Self> {
        let k = norm.kernel;
        let param_free_norm = Norm::new(&vb.pp("param_free_norm"), norm.param_free, norm_nc, false, gain)?;
        let mlp_shared = Conv2d::new(&vb.pp("mlp_shared").pp("0"), ConvSpec::new(label_nc, NHIDDEN, k), gain)?;
        let mlp_gamma = Conv2d::new(&vb.pp("mlp_gamma"), ConvSpec::new(NHIDDEN, norm_nc, k), gain)?;
        let mlp_beta = Conv2d::new(&vb.pp("mlp_beta"), ConvSpec::new(NHIDDEN, norm_nc, k), gain)?;
        Ok(Self { param_free_norm, mlp_shared, mlp_gamma, mlp_beta })
    }

    /// `seg` is the full-resolution semantic map; it is resized (nearest) to x's size.
    pub fn forward_t(&self, x: &Tensor, seg: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_act(x, seg, 1.0, train)
    }

    /// `leaky_relu(SPADE(x, seg), slope)`, fused (`slope` 1: no activation).
    pub fn forward_act(&self, x: &Tensor, seg: &Tensor, slope: f64, train: bool) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let seg = resize_nearest(seg, h, w)?;
        let actv = self.mlp_shared.forward_sparse_input(&seg, train, 0.0)?;
        if spade_kernels::applies(&actv) {
            // One convolution for gamma and beta, read in place by the fused norm.
            let gamma_beta = Conv2d::forward_stacked(&self.mlp_gamma, &self.mlp_beta, &actv, train)?;
            return self.param_free_norm.modulate_act_stacked(x, &gamma_beta, slope, train);
        }
        let gamma = self.mlp_gamma.forward_t(&actv, train)?;
        let beta = self.mlp_beta.forward_t(&actv, train)?;
        self.param_free_norm.modulate_act(x, &gamma, &beta, slope, train)
    }
}

/// SPADE ResBlk(fin, fout): two SPADE-LeakyReLU-conv3x3 steps and a (learned when fin != fout)
/// shortcut.
#[derive(Debug, Clone)]
pub struct SpadeResBlk {
    conv_0: Conv2d,
    conv_1: Conv2d,
    conv_s: Option<Conv2d>,
    norm_0: Spade,
    norm_1: Spade,
    norm_s: Option<Spade>,
}

impl SpadeResBlk {
    pub fn new(vb: &Vb, fin: usize, fout: usize, norm: SpadeNorm, semantic_nc: usize, gain: f64) -> Result<Self> {
        let fmiddle = fin.min(fout);
        let sn = norm.spectral;
        let conv_0 = Conv2d::new(&vb.pp("conv_0"), ConvSpec::new(fin, fmiddle, 3).spectral(sn), gain)?;
        let conv_1 = Conv2d::new(&vb.pp("conv_1"), ConvSpec::new(fmiddle, fout, 3).spectral(sn), gain)?;
        let conv_s = if fin != fout {
            Some(Conv2d::new(&vb.pp("conv_s"), ConvSpec::new(fin, fout, 1).bias(false).spectral(sn), gain)?)
        } else {
            None
        };
        let norm_0 = Spade::new(&vb.pp("norm_0"), norm, fin, semantic_nc, gain)?;
        let norm_1 = Spade::new(&vb.pp("norm_1"), norm, fmiddle, semantic_nc, gain)?;
        let norm_s = if fin != fout { Some(Spade::new(&vb.pp("norm_s"), norm, fin, semantic_nc, gain)?) } else { None };
        Ok(Self { conv_0, conv_1, conv_s, norm_0, norm_1, norm_s })
    }

    pub fn forward_t(&self, x: &Tensor, seg: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let x_s = match (&self.conv_s, &self.norm_s) {
            (Some(conv), Some(norm)) => conv.forward_t(&norm.forward_t(x, seg, train)?, train)?,
            _ => x.clone(),
        };
        let dx = self.conv_0.forward_t(&self.norm_0.forward_act(x, seg, 0.2, train)?, train)?;
        let dx = self.conv_1.forward_t(&self.norm_1.forward_act(&dx, seg, 0.2, train)?, train)?;
        x_s + dx
    }
}
