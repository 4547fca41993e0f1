//! MultiscaleDiscriminator of PatchGAN NLayerDiscriminators, returning every intermediate
//! output for the feature-matching loss.
use crate::error::Result;
use crate::layers::conv::{Conv2d, ConvSpec, NormConv};
use crate::layers::ops::avg_pool2d_no_pad_count;
use crate::options::NetOptions;
use crate::store::Vb;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct NLayerDiscriminator {
    first: Conv2d,
    middle: Vec<NormConv>,
    last: Conv2d,
}

impl NLayerDiscriminator {
    /// `input_nc` = semantic_nc + output_nc.
    pub fn new(opt: &NetOptions, input_nc: usize, vb: &Vb) -> Result<Self> {
        let norm = opt.norm_d.conv()?;
        let gain = opt.init_variance;
        let (kw, padw) = (4, 2);
        let mut nf = opt.ndf;
        let first =
            Conv2d::new(&vb.pp("model0").pp("0"), ConvSpec::new(input_nc, nf, kw).stride(2).padding(padw), gain)?;
        let mut middle = Vec::new();
        for n in 1..opt.n_layers_d {
            let prev = nf;
            nf = (nf * 2).min(512);
            let stride = if n == opt.n_layers_d - 1 { 1 } else { 2 };
            let spec = ConvSpec::new(prev, nf, kw).stride(stride).padding(padw);
            middle.push(NormConv::new(&vb.pp(format!("model{n}")).pp("0"), spec, norm, gain)?);
        }
        let last = Conv2d::new(
            &vb.pp(format!("model{}", opt.n_layers_d)).pp("0"),
            ConvSpec::new(nf, 1, kw).padding(padw),
            gain,
        )?;
        Ok(Self { first, middle, last })
    }

    /// Every layer's output; the last is the patch map.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(self.middle.len() + 2);
        let mut x = self.first.forward_act(x, train, 0.2)?;
        outs.push(x.clone());
        for layer in &self.middle {
            x = layer.forward_act(&x, 0.2, train)?;
            outs.push(x.clone());
        }
        outs.push(self.last.forward_t(&x, train)?);
        Ok(outs)
    }
}

#[derive(Debug, Clone)]
pub struct MultiscaleDiscriminator {
    scales: Vec<NLayerDiscriminator>,
}

impl MultiscaleDiscriminator {
    pub fn new(opt: &NetOptions, vb: &Vb) -> Result<Self> {
        let input_nc = opt.semantic_nc() + opt.output_nc;
        let scales = (0..opt.num_d)
            .map(|i| NLayerDiscriminator::new(opt, input_nc, &vb.pp(format!("discriminator_{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { scales })
    }

    /// Per scale, every intermediate output (the last being the patch map).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Vec<Vec<Tensor>>> {
        let mut results = Vec::with_capacity(self.scales.len());
        let mut x = x.clone();
        for (i, d) in self.scales.iter().enumerate() {
            results.push(d.forward_t(&x, train)?);
            if i + 1 < self.scales.len() {
                x = avg_pool2d_no_pad_count(&x, 3, 2, 1)?;
            }
        }
        Ok(results)
    }
}
