//! Convolutions and linear layers, optionally spectrally normalised, and the reference's
//! "non-SPADE norm layer" (conv, then a norm; keys `<name>.0` and `<name>.1`).
use super::norm::Norm;
use super::spectral::SpectralNorm;
use crate::error::Result;
use crate::options::{ConvNorm, NormType};
use crate::store::{Init, Vb};
use candle_core::Tensor;
use spade_kernels as kernels;

#[derive(Debug, Clone)]
enum Weight {
    Plain(Tensor),
    Spectral(SpectralNorm),
}

impl Weight {
    fn new(vb: &Vb, shape: &[usize], spectral: bool, transposed: bool, gain: f64) -> Result<Self> {
        let init = Init::XavierNormal { gain };
        Ok(if spectral {
            Weight::Spectral(SpectralNorm::new(vb, shape, transposed, init)?)
        } else {
            Weight::Plain(vb.param(shape.to_vec(), "weight", init)?)
        })
    }

    fn get(&self, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Weight::Plain(w) => Ok(super::param(w)),
            Weight::Spectral(sn) => Ok(super::param(&sn.weight(train)?)),
        }
    }
}

/// Shape and placement of a 2-d convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    pub spectral: bool,
}

impl ConvSpec {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self { in_channels, out_channels, kernel, stride: 1, padding: kernel / 2, bias: true, spectral: false }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    pub fn spectral(mut self, s: bool) -> Self {
        self.spectral = s;
        self
    }
}

/// `nn.Conv2d`, optionally wrapped in spectral norm.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Weight,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(vb: &Vb, spec: ConvSpec, gain: f64) -> Result<Self> {
        let shape = [spec.out_channels, spec.in_channels, spec.kernel, spec.kernel];
        // PyTorch's spectral_norm re-registers the weight, so `bias` comes first in the state_dict.
        let bias = |vb: &Vb| -> Result<Option<Tensor>> {
            Ok(if spec.bias { Some(vb.param(spec.out_channels, "bias", Init::Const(0.0))?) } else { None })
        };
        let (weight, bias) = if spec.spectral {
            let b = bias(vb)?;
            (Weight::new(vb, &shape, true, false, gain)?, b)
        } else {
            let w = Weight::new(vb, &shape, false, false, gain)?;
            (w, bias(vb)?)
        };
        Ok(Self { weight, bias, stride: spec.stride, padding: spec.padding })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_act(x, train, 1.0)
    }

    /// `leaky_relu(self.forward_t(x), slope)` (0: ReLU, 1: none), the activation fused with
    /// the bias.
    pub fn forward_act(&self, x: &Tensor, train: bool, slope: f64) -> candle_core::Result<Tensor> {
        let w = self.weight.get(train)?;
        let b = self.bias.as_ref().map(super::param);
        kernels::conv::conv2d_act(x, &w, b.as_ref(), self.stride, self.padding, slope)
    }

    /// [`Self::forward_act`] of a mostly one-hot input (the semantic map), by gathers on the
    /// CPU.
    pub fn forward_sparse_input(&self, x: &Tensor, train: bool, slope: f64) -> candle_core::Result<Tensor> {
        let w = self.weight.get(train)?;
        let b = self.bias.as_ref().map(super::param);
        kernels::conv::conv2d_sparse_input(x, &w, b.as_ref(), self.stride, self.padding, slope)
    }

    /// The convolutions `a` and `b` of the same input as one, their outputs stacked along the
    /// channels (a's first): one product with twice the rows instead of two. They must share
    /// kernel size, stride, padding and whether they have a bias.
    pub fn forward_stacked(a: &Conv2d, b: &Conv2d, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if (a.stride, a.padding, a.bias.is_some()) != (b.stride, b.padding, b.bias.is_some()) {
            candle_core::bail!("stacked convolutions need the same stride, padding and bias presence")
        }
        let w = Tensor::cat(&[&a.weight.get(train)?, &b.weight.get(train)?], 0)?;
        let bias = match (&a.bias, &b.bias) {
            (Some(ba), Some(bb)) => Some(Tensor::cat(&[&super::param(ba), &super::param(bb)], 0)?),
            _ => None,
        };
        kernels::conv::conv2d_act(x, &w, bias.as_ref(), a.stride, a.padding, 1.0)
    }

    pub fn spectral(&self) -> Option<&SpectralNorm> {
        match &self.weight {
            Weight::Spectral(sn) => Some(sn),
            Weight::Plain(_) => None,
        }
    }
}

/// `nn.ConvTranspose2d(in, out, k, stride, padding, output_padding)`, optionally spectral.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Weight,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
}

impl ConvTranspose2d {
    pub fn new(vb: &Vb, spec: ConvSpec, output_padding: usize, gain: f64) -> Result<Self> {
        let shape = [spec.in_channels, spec.out_channels, spec.kernel, spec.kernel];
        let bias = |vb: &Vb| -> Result<Option<Tensor>> {
            Ok(if spec.bias { Some(vb.param(spec.out_channels, "bias", Init::Const(0.0))?) } else { None })
        };
        let (weight, bias) = if spec.spectral {
            let b = bias(vb)?;
            (Weight::new(vb, &shape, true, true, gain)?, b)
        } else {
            let w = Weight::new(vb, &shape, false, true, gain)?;
            (w, bias(vb)?)
        };
        Ok(Self { weight, bias, stride: spec.stride, padding: spec.padding, output_padding })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let w = self.weight.get(train)?;
        let b = self.bias.as_ref().map(super::param);
        kernels::conv::conv_transpose2d(x, &w, b.as_ref(), self.stride, self.padding, self.output_padding)
    }
}

/// `nn.Linear(in, out)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(vb: &Vb, in_features: usize, out_features: usize, gain: f64) -> Result<Self> {
        let weight = vb.param((out_features, in_features), "weight", Init::XavierNormal { gain })?;
        let bias = vb.param(out_features, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&super::param(&self.weight).t()?)?.broadcast_add(&super::param(&self.bias))
    }
}

#[derive(Debug, Clone)]
enum AnyConv {
    Conv(Conv2d),
    Transposed(ConvTranspose2d),
}

/// The reference's `get_nonspade_norm_layer(opt, norm)(conv)`: the conv (spectral if the norm
/// string says so; without bias when a norm follows), then the norm. With a norm the keys are
/// `<name>.0.*` and `<name>.1.*`; without one the conv sits at `<name>.*`.
#[derive(Debug, Clone)]
pub struct NormConv {
    conv: AnyConv,
    norm: Norm,
}

impl NormConv {
    fn parts(vb: &Vb, norm: ConvNorm) -> (Vb, Vb) {
        if norm.norm == NormType::None {
            (vb.clone(), vb.clone())
        } else {
            (vb.pp("0"), vb.pp("1"))
        }
    }

    pub fn new(vb: &Vb, spec: ConvSpec, norm: ConvNorm, gain: f64) -> Result<Self> {
        let (cvb, nvb) = Self::parts(vb, norm);
        let spec = spec.spectral(norm.spectral).bias(spec.bias && norm.norm == NormType::None);
        let conv = AnyConv::Conv(Conv2d::new(&cvb, spec, gain)?);
        let norm = Norm::new(&nvb, norm.norm, spec.out_channels, true, gain)?;
        Ok(Self { conv, norm })
    }

    pub fn new_transposed(vb: &Vb, spec: ConvSpec, output_padding: usize, norm: ConvNorm, gain: f64) -> Result<Self> {
        let (cvb, nvb) = Self::parts(vb, norm);
        let spec = spec.spectral(norm.spectral).bias(spec.bias && norm.norm == NormType::None);
        let conv = AnyConv::Transposed(ConvTranspose2d::new(&cvb, spec, output_padding, gain)?);
        let norm = Norm::new(&nvb, norm.norm, spec.out_channels, true, gain)?;
        Ok(Self { conv, norm })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = match &self.conv {
            AnyConv::Conv(c) => c.forward_t(x, train)?,
            AnyConv::Transposed(c) => c.forward_t(x, train)?,
        };
        self.norm.forward_t(&y, train)
    }

    /// `leaky_relu(self.forward_t(x), slope)`, with the norm and activation fused.
    pub fn forward_act(&self, x: &Tensor, slope: f64, train: bool) -> candle_core::Result<Tensor> {
        let y = match &self.conv {
            AnyConv::Conv(c) => c.forward_t(x, train)?,
            AnyConv::Transposed(c) => c.forward_t(x, train)?,
        };
        self.norm.forward_act(&y, slope, train)
    }
}
