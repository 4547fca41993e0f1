//! SPADEGenerator: a decoder of SPADE ResBlks from a latent map (downsampled segmap or VAE z).
use crate::error::Result;
use crate::layers::conv::{Conv2d, ConvSpec, Linear};
use crate::layers::ops::{leaky_relu, resize_nearest, upsample2x};
use crate::layers::spade::SpadeResBlk;
use crate::options::{NetOptions, Upsampling};
use crate::store::Vb;
use candle_core::Tensor;

#[derive(Debug, Clone)]
enum Input {
    /// `fc` = Linear(z_dim -> 16nf*sh*sw) on z.
    Z(Linear),
    /// `fc` = conv3x3(semantic_nc -> 16nf) on the segmap resized to (sh, sw).
    Segmap(Conv2d),
}

/// A residual block conditioned on the full-resolution semantic map.
pub trait SegBlock {
    fn forward_t(&self, x: &Tensor, seg: &Tensor, train: bool) -> candle_core::Result<Tensor>;
}

impl SegBlock for SpadeResBlk {
    fn forward_t(&self, x: &Tensor, seg: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        SpadeResBlk::forward_t(self, x, seg, train)
    }
}

/// The SPADE generator's decoder after `fc`: head_0, up, G_middle_0, [up], G_middle_1, then
/// up + up_0..up_3 [+ up_4 with `most`], and conv_img(lrelu(x)), tanh. Shared by the SPADE
/// generator and the decoder w/ Concat, which differ only in the block type `B`.
#[derive(Debug, Clone)]
pub struct DecoderTrunk<B> {
    head_0: B,
    g_middle_0: B,
    g_middle_1: B,
    ups: Vec<B>,
    conv_img: Conv2d,
    upsampling: Upsampling,
}

impl<B: SegBlock> DecoderTrunk<B> {
    /// `block(name, fin, fout)` builds the block stored under `name`.
    pub fn new(opt: &NetOptions, vb: &Vb, block: impl Fn(&str, usize, usize) -> Result<B>) -> Result<Self> {
        let nf = opt.ngf;
        let head_0 = block("head_0", 16 * nf, 16 * nf)?;
        let g_middle_0 = block("G_middle_0", 16 * nf, 16 * nf)?;
        let g_middle_1 = block("G_middle_1", 16 * nf, 16 * nf)?;
        let mut ups = vec![
            block("up_0", 16 * nf, 8 * nf)?,
            block("up_1", 8 * nf, 4 * nf)?,
            block("up_2", 4 * nf, 2 * nf)?,
            block("up_3", 2 * nf, nf)?,
        ];
        let mut final_nc = nf;
        if opt.num_upsampling_layers == Upsampling::Most {
            ups.push(block("up_4", nf, nf / 2)?);
            final_nc = nf / 2;
        }
        let conv_img = Conv2d::new(&vb.pp("conv_img"), ConvSpec::new(final_nc, 3, 3), opt.init_variance)?;
        Ok(Self { head_0, g_middle_0, g_middle_1, ups, conv_img, upsampling: opt.num_upsampling_layers })
    }

    /// From the latent map `x` (N, 16nf, sh, sw) to the image (N, 3, H, W) in [-1, 1].
    pub fn forward_t(&self, x: &Tensor, seg: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        // The map at each block's resolution, resized once (each block's SPADEs would resize it
        // again, three per block, to the same size).
        let at = |x: &Tensor| -> candle_core::Result<Tensor> {
            let (_, _, h, w) = x.dims4()?;
            resize_nearest(seg, h, w)
        };
        let mut x = self.head_0.forward_t(x, &at(x)?, train)?;
        x = upsample2x(&x)?;
        let mut seg_r = at(&x)?;
        x = self.g_middle_0.forward_t(&x, &seg_r, train)?;
        if self.upsampling != Upsampling::Normal {
            x = upsample2x(&x)?;
            seg_r = at(&x)?;
        }
        x = self.g_middle_1.forward_t(&x, &seg_r, train)?;
        for up in &self.ups {
            x = upsample2x(&x)?;
            x = up.forward_t(&x, &at(&x)?, train)?;
        }
        self.conv_img.forward_t(&leaky_relu(&x, 0.2)?, train)?.tanh()
    }
}

#[derive(Debug, Clone)]
pub struct SpadeGenerator {
    fc: Input,
    trunk: DecoderTrunk<SpadeResBlk>,
    nf: usize,
    sh: usize,
    sw: usize,
    z_dim: usize,
}

impl SpadeGenerator {
    pub fn new(opt: &NetOptions, vb: &Vb) -> Result<Self> {
        opt.validate()?;
        let norm = opt.spade_norm()?;
        let nf = opt.ngf;
        let gain = opt.init_variance;
        let snc = opt.semantic_nc();
        let (sh, sw) = opt.latent_size();
        let fc = if opt.use_vae {
            Input::Z(Linear::new(&vb.pp("fc"), opt.z_dim, 16 * nf * sh * sw, gain)?)
        } else {
            Input::Segmap(Conv2d::new(&vb.pp("fc"), ConvSpec::new(snc, 16 * nf, 3), gain)?)
        };
        let trunk =
            DecoderTrunk::new(opt, vb, |name, fin, fout| SpadeResBlk::new(&vb.pp(name), fin, fout, norm, snc, gain))?;
        Ok(Self { fc, trunk, nf, sh, sw, z_dim: opt.z_dim })
    }

    pub fn uses_z(&self) -> bool {
        matches!(self.fc, Input::Z(_))
    }

    pub fn z_dim(&self) -> usize {
        self.z_dim
    }

    /// `seg`: (N, semantic_nc, H, W); `z`: (N, z_dim) when the generator was built with use_vae
    /// (drawn from N(0, 1) when None). Returns (N, 3, H, W) in [-1, 1].
    pub fn forward_t(&self, seg: &Tensor, z: Option<&Tensor>, train: bool) -> candle_core::Result<Tensor> {
        let n = seg.dim(0)?;
        let x = match &self.fc {
            Input::Z(fc) => {
                let z = match z {
                    Some(z) => z.clone(),
                    None => Tensor::randn(0f32, 1f32, (n, self.z_dim), seg.device())?.to_dtype(seg.dtype())?,
                };
                fc.forward(&z)?.reshape((n, 16 * self.nf, self.sh, self.sw))?
            }
            Input::Segmap(fc) => fc.forward_t(&resize_nearest(seg, self.sh, self.sw)?, train)?,
        };
        self.trunk.forward_t(&x, seg, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ParamStore;
    use candle_core::{DType, Device};

    #[test]
    fn coco_generator_has_97_5m_parameters() {
        // ngf 64, COCO-Stuff: 182 labels + don't care + instance edges = 184 input channels.
        let opt = NetOptions::default();
        assert_eq!(opt.semantic_nc(), 184);
        let store = ParamStore::fresh(0, DType::F32, &Device::Cpu);
        SpadeGenerator::new(&opt, &store.root()).unwrap();
        let n = store.num_params();
        println!("SPADEGenerator ngf 64, 184 channels: {n} parameters");
        assert_eq!((n as f64 / 1e5).round() / 10.0, 97.5, "{n}");
    }

    #[test]
    fn small_generator_shapes_any_aspect_ratio() {
        let opt = NetOptions {
            label_nc: 3,
            ngf: 2,
            crop_size: 128,
            aspect_ratio: 2.0,
            num_upsampling_layers: Upsampling::More,
            ..Default::default()
        };
        let store = ParamStore::fresh(1, DType::F32, &Device::Cpu);
        let g = SpadeGenerator::new(&opt, &store.root()).unwrap();
        let (h, w) = opt.output_size();
        assert_eq!((h, w), (64, 128));
        let seg = Tensor::zeros((2, opt.semantic_nc(), h, w), DType::F32, &Device::Cpu).unwrap();
        let out = g.forward_t(&seg, None, true).unwrap();
        assert_eq!(out.dims(), &[2, 3, 64, 128]);
        let m = out.abs().unwrap().max_keepdim(0).unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(m.to_scalar::<f32>().unwrap() <= 1.0);
    }
}
