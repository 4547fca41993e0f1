//! Spectral normalisation (Miyato et al.), as `torch.nn.utils.spectral_norm` stores and runs it.
use crate::error::Result;
use crate::store::{Init, Vb};
use candle_core::{Tensor, Var};

const EPS: f64 = 1e-12;

/// A weight `weight_orig` divided by its largest singular value, estimated with the stored
/// power-iteration vectors `weight_u` (out entries) and `weight_v` (in*kh*kw entries).
#[derive(Debug, Clone)]
pub struct SpectralNorm {
    weight_orig: Tensor,
    u: Var,
    v: Var,
    /// A transposed convolution keeps its output channels in dim 1.
    transposed: bool,
}

impl SpectralNorm {
    /// `shape` is the weight's shape as PyTorch stores it.
    pub fn new(vb: &Vb, shape: &[usize], transposed: bool, init: Init) -> Result<Self> {
        let weight_orig = vb.param(shape.to_vec(), "weight_orig", init)?;
        let out = if transposed { shape[1] } else { shape[0] };
        let rest = shape.iter().product::<usize>() / out;
        let u = vb.buffer(out, "weight_u", Init::UnitNormal)?;
        let v = vb.buffer(rest, "weight_v", Init::UnitNormal)?;
        Ok(Self { weight_orig, u, v, transposed })
    }

    fn matrix(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        let w = if self.transposed { w.transpose(0, 1)? } else { w.clone() };
        let out = w.dim(0)?;
        w.contiguous()?.reshape((out, ()))
    }

    /// The normalised weight. In training, one power iteration updates `u` and `v` first.
    pub fn weight(&self, train: bool) -> candle_core::Result<Tensor> {
        let w_mat = self.matrix(&self.weight_orig)?;
        if train {
            let w = w_mat.detach();
            let u = self.u.as_tensor().detach();
            let v = normalize(&w.t()?.matmul(&u.unsqueeze(1)?)?.squeeze(1)?)?;
            let u = normalize(&w.matmul(&v.unsqueeze(1)?)?.squeeze(1)?)?;
            self.v.set(&v)?;
            self.u.set(&u)?;
        }
        let u = self.u.as_tensor().detach();
        let v = self.v.as_tensor().detach();
        // sigma = u . (W v), differentiable in W only.
        let sigma = u.unsqueeze(0)?.matmul(&w_mat.matmul(&v.unsqueeze(1)?)?)?.reshape(())?;
        self.weight_orig.broadcast_div(&sigma)
    }

    pub fn weight_orig(&self) -> &Tensor {
        &self.weight_orig
    }

    pub fn u(&self) -> Tensor {
        self.u.as_tensor().detach()
    }

    pub fn v(&self) -> Tensor {
        self.v.as_tensor().detach()
    }
}

/// x / max(||x||, eps), as `F.normalize(x, dim=0, eps=1e-12)`.
fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_all()?.sqrt()?.maximum(EPS)?;
    x.broadcast_div(&norm)
}
