//! ConvEncoder: the VAE style encoder (image -> mu, logvar of a 256-d z).
use crate::error::{Error, Result};
use crate::layers::conv::{ConvSpec, Linear, NormConv};
use crate::layers::ops::{leaky_relu, resize_bilinear};
use crate::options::NetOptions;
use crate::store::Vb;
use candle_core::Tensor;

/// Size of the encoder's output code, fixed by the reference (independent of z_dim).
pub const CODE_DIM: usize = 256;

#[derive(Debug, Clone)]
pub struct ConvEncoder {
    layers: Vec<NormConv>,
    fc_mu: Linear,
    fc_var: Linear,
}

impl ConvEncoder {
    pub fn new(opt: &NetOptions, vb: &Vb) -> Result<Self> {
        if opt.crop_size < 256 {
            return Err(Error::Option {
                option: "crop_size".into(),
                value: opt.crop_size.to_string(),
                expected: "at least 256 for the VAE encoder (the reference's ConvEncoder flattens an 8*ngf x 4 x 4 map, which needs six stride-2 layers from 256x256)".into(),
            });
        }
        let norm = opt.norm_e.conv()?;
        let ndf = opt.ngf;
        let gain = opt.init_variance;
        let chans = [3, ndf, ndf * 2, ndf * 4, ndf * 8, ndf * 8, ndf * 8];
        let layers = (0..6)
            .map(|i| {
                let spec = ConvSpec::new(chans[i], chans[i + 1], 3).stride(2).padding(1);
                NormConv::new(&vb.pp(format!("layer{}", i + 1)), spec, norm, gain)
            })
            .collect::<Result<Vec<_>>>()?;
        let fc_mu = Linear::new(&vb.pp("fc_mu"), ndf * 8 * 4 * 4, CODE_DIM, gain)?;
        let fc_var = Linear::new(&vb.pp("fc_var"), ndf * 8 * 4 * 4, CODE_DIM, gain)?;
        Ok(Self { layers, fc_mu, fc_var })
    }

    /// `image`: (N, 3, H, W) in [-1, 1], resized to 256x256 bilinearly. Returns (mu, logvar).
    pub fn forward_t(&self, image: &Tensor, train: bool) -> candle_core::Result<(Tensor, Tensor)> {
        let mut x = resize_bilinear(image, 256, 256)?;
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                x = leaky_relu(&x, 0.2)?;
            }
            x = layer.forward_t(&x, train)?;
        }
        let x = leaky_relu(&x, 0.2)?.flatten_from(1)?;
        Ok((self.fc_mu.forward(&x)?, self.fc_var.forward(&x)?))
    }
}

/// `(n, k)` samples of N(0, 1) from `rng`: the one place z (and the encoder's eps) is drawn,
/// so that a seed gives the same z in the trainer, the evaluator and the synthesizer.
pub fn randn(
    rng: &mut rand::rngs::StdRng,
    (n, k): (usize, usize),
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    use rand_distr::Distribution;
    let v: Vec<f32> = (0..n * k).map(|_| rand_distr::StandardNormal.sample(rng)).collect();
    Tensor::from_vec(v, (n, k), device)
}

/// z = mu + eps * exp(0.5 * logvar).
pub fn reparameterize(mu: &Tensor, logvar: &Tensor, eps: &Tensor) -> candle_core::Result<Tensor> {
    mu + (eps * (logvar * 0.5)?.exp()?)?
}
