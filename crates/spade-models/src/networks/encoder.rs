//! ConvEncoder: the VAE style encoder (image -> mu, logvar of a 256-d z).
use crate::error::Result;
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
    /// Any `crop_size` works: like the reference, `forward_t` resizes its input to 256x256,
    /// the size at which six stride-2 layers leave the 4x4 map that `fc_mu`/`fc_var` flatten.
    pub fn new(opt: &NetOptions, vb: &Vb) -> Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ParamStore;
    use candle_core::{DType, Device};

    #[test]
    fn encoder_takes_images_smaller_than_256_like_the_reference() {
        // The reference's ConvEncoder interpolates any input to 256x256 before its six
        // stride-2 layers, so a 64x64 run has an encoder too.
        let opt = NetOptions { ngf: 2, crop_size: 64, ..Default::default() };
        let store = ParamStore::fresh(3, DType::F32, &Device::Cpu);
        let e = ConvEncoder::new(&opt, &store.root()).unwrap();
        let small = Tensor::rand(-1f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let (mu, logvar) = e.forward_t(&small, false).unwrap();
        assert_eq!(mu.dims(), &[2, CODE_DIM]);
        assert_eq!(logvar.dims(), &[2, CODE_DIM]);
        // The same picture at 256x256 gives the same code up to the resize: the 64x64 input
        // upsampled by the encoder equals the encoder seeing the upsampled image itself.
        let big = resize_bilinear(&small, 256, 256).unwrap();
        let (mu_big, _) = e.forward_t(&big, false).unwrap();
        let d = (mu - mu_big).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
