//! CRN: the cascaded refinement network of Chen & Koltun, "Photographic Image Synthesis with
//! Cascaded Refinement Networks" (ICCV 2017), Table 1's first baseline.
//!
//! A cascade of refinement modules at doubling resolutions, from a coarsest map whose smaller
//! side is at most 4 (4x4 for square images, 4x8 for 2:1) up to the output size. Module `k`
//! takes the semantic map area-downsampled to its resolution (average pooling, as CRN's
//! `resize_area`), concatenated with the previous module's features upsampled bilinearly
//! (the coarsest module takes the semantic map alone), and applies twice
//! conv3x3 (no bias) -> layer norm -> LeakyReLU(0.2). A final 1x1 conv maps the finest
//! features to RGB; its output is linear, as in CRN (the image writers clamp to [-1, 1]).
//!
//! Width: 16 * ngf features in every module but the finest, which has 8 * ngf (with ngf 64:
//! 1024 and 512, CRN's widths for its 256-pixel-high model). Keys: `module_<k>.conv_<j>.weight`,
//! `module_<k>.norm_<j>.{weight,bias}` (k = 0 is the coarsest), `conv_img.{weight,bias}`.
//!
//! Differences from CRN's code, for the record: bilinear upsampling with align_corners=False
//! (CRN: True); layer-norm epsilon 1e-5 (TensorFlow's 1e-12); one output image rather than
//! CRN's nine diverse ones; xavier init with gain init_variance as the other generators here.
use crate::error::Result;
use crate::layers::conv::{Conv2d, ConvSpec};
use crate::layers::ops::{leaky_relu, resize_bilinear};
use crate::options::{GeneratorKind, NetOptions};
use crate::store::{Init, Vb};
use crate::Error;
use candle_core::Tensor;

/// Layer normalisation over (C, H, W) of each sample, with a per-channel scale and offset
/// (TensorFlow's `slim.layer_norm` on NHWC maps, as CRN uses it).
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm2d {
    pub fn new(vb: &Vb, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.param(channels, "weight", Init::Const(1.0))?,
            bias: vb.param(channels, "bias", Init::Const(0.0))?,
            eps: 1e-5,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let flat = x.reshape((n, c * h * w))?;
        let mean = flat.mean_keepdim(1)?;
        let centered = flat.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?.reshape((n, c, h, w))?;
        normed.broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

/// One refinement module: two conv3x3 -> layer norm -> LeakyReLU(0.2).
#[derive(Debug, Clone)]
struct Module {
    convs: [(Conv2d, LayerNorm2d); 2],
    /// (H, W) of this module's output.
    size: (usize, usize),
}

impl Module {
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (conv, norm) in &self.convs {
            x = leaky_relu(&norm.forward(&conv.forward_t(&x, train)?)?, 0.2)?;
        }
        Ok(x)
    }
}

#[derive(Debug, Clone)]
pub struct CrnGenerator {
    /// Coarsest first.
    modules: Vec<Module>,
    conv_img: Conv2d,
}

/// The module resolutions, coarsest first: the output size halved (floor) until the smaller
/// side is at most 4 or odd.
pub fn module_sizes(h: usize, w: usize) -> Vec<(usize, usize)> {
    let mut sizes = vec![(h, w)];
    let (mut h, mut w) = (h, w);
    while h.min(w) > 4 && h % 2 == 0 && w % 2 == 0 {
        h /= 2;
        w /= 2;
        sizes.push((h, w));
    }
    sizes.reverse();
    sizes
}

impl CrnGenerator {
    pub fn new(opt: &NetOptions, vb: &Vb) -> Result<Self> {
        opt.validate()?;
        if opt.net_g != GeneratorKind::Crn {
            return Err(Error::Option {
                option: "netG".into(),
                value: opt.net_g.as_str().into(),
                expected: "crn for the CRN generator".into(),
            });
        }
        let (h, w) = opt.output_size();
        let sizes = module_sizes(h, w);
        let snc = opt.semantic_nc();
        let gain = opt.init_variance;
        let mut modules = Vec::with_capacity(sizes.len());
        let mut prev = 0;
        for (k, &size) in sizes.iter().enumerate() {
            let nf = if k + 1 == sizes.len() { 8 * opt.ngf } else { 16 * opt.ngf };
            let m = vb.pp(format!("module_{k}"));
            let conv = |j: usize, cin: usize| -> Result<(Conv2d, LayerNorm2d)> {
                Ok((
                    Conv2d::new(&m.pp(format!("conv_{j}")), ConvSpec::new(cin, nf, 3).bias(false), gain)?,
                    LayerNorm2d::new(&m.pp(format!("norm_{j}")), nf)?,
                ))
            };
            modules.push(Module { convs: [conv(0, snc + prev)?, conv(1, nf)?], size });
            prev = nf;
        }
        let conv_img = Conv2d::new(&vb.pp("conv_img"), ConvSpec::new(prev, opt.output_nc, 1), gain)?;
        Ok(Self { modules, conv_img })
    }

    /// The number of refinement modules.
    pub fn num_modules(&self) -> usize {
        self.modules.len()
    }

    /// `seg`: (N, semantic_nc, H, W) at the output size. Returns (N, output_nc, H, W), linear.
    pub fn forward_t(&self, seg: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        // The semantic map at every module's resolution, finest first (area downsampling by 2).
        let mut segs = vec![seg.clone()];
        for m in self.modules.iter().rev().skip(1) {
            let last = segs.last().expect("one map");
            let (_, _, h, w) = last.dims4()?;
            let down = if (h, w) == (2 * m.size.0, 2 * m.size.1) {
                last.avg_pool2d(2)?
            } else {
                candle_core::bail!("CRN: cannot area-downsample {h}x{w} to {:?}", m.size)
            };
            segs.push(down);
        }
        segs.reverse();
        let mut x: Option<Tensor> = None;
        for (m, s) in self.modules.iter().zip(&segs) {
            let input = match &x {
                None => s.clone(),
                Some(prev) => Tensor::cat(&[s, &resize_bilinear(prev, m.size.0, m.size.1)?], 1)?,
            };
            x = Some(m.forward(&input, train)?);
        }
        self.conv_img.forward_t(&x.expect("at least one module"), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ParamStore;
    use candle_core::{DType, Device};

    fn tiny() -> NetOptions {
        NetOptions { net_g: GeneratorKind::Crn, label_nc: 3, ngf: 2, crop_size: 32, ..Default::default() }
    }

    #[test]
    fn module_resolutions_double_up_to_the_output() {
        assert_eq!(module_sizes(32, 32), vec![(4, 4), (8, 8), (16, 16), (32, 32)]);
        assert_eq!(module_sizes(256, 512).first(), Some(&(4, 8)));
        assert_eq!(module_sizes(256, 512).len(), 7);
        assert_eq!(module_sizes(4, 4), vec![(4, 4)]);
        assert_eq!(module_sizes(24, 48), vec![(3, 6), (6, 12), (12, 24), (24, 48)]);
    }

    #[test]
    fn output_shape_any_aspect_ratio() {
        for (crop, aspect, hw) in [(32, 1.0, (32, 32)), (64, 2.0, (32, 64))] {
            let opt = NetOptions { crop_size: crop, aspect_ratio: aspect, ..tiny() };
            let store = ParamStore::fresh(0, DType::F32, &Device::Cpu);
            let g = CrnGenerator::new(&opt, &store.root()).unwrap();
            store.check_all_used().unwrap();
            let seg = Tensor::rand(0f32, 1f32, (2, opt.semantic_nc(), hw.0, hw.1), &Device::Cpu).unwrap();
            let out = g.forward_t(&seg, true).unwrap();
            assert_eq!(out.dims(), &[2, 3, hw.0, hw.1]);
            let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()));
        }
    }

    /// The parameter count follows from the options alone (same for every seed) and matches
    /// the closed form of the module plan.
    #[test]
    fn parameter_count_is_deterministic_and_matches_the_plan() {
        let count = |seed: u64, opt: &NetOptions| {
            let store = ParamStore::fresh(seed, DType::F32, &Device::Cpu);
            CrnGenerator::new(opt, &store.root()).unwrap();
            store.num_params()
        };
        let opt = tiny();
        let n = count(0, &opt);
        assert_eq!(n, count(7, &opt));
        // 4 modules: 3 of 16 * ngf = 32 features, the finest 8 * ngf = 16; semantic_nc 5.
        let snc = opt.semantic_nc();
        let module = |cin: usize, nf: usize| cin * nf * 9 + nf * nf * 9 + 4 * nf;
        let plan = module(snc, 32) + module(snc + 32, 32) + module(snc + 32, 32) + module(snc + 32, 16) + 16 * 3 + 3;
        assert_eq!(n, plan);
        // The paper's scale (ngf 64, COCO-Stuff's 184 channels, 256x256): 7 modules.
        let big = NetOptions { net_g: GeneratorKind::Crn, ..Default::default() };
        let store = ParamStore::fresh(0, DType::F32, &Device::Cpu);
        let g = CrnGenerator::new(&big, &store.root()).unwrap();
        assert_eq!(g.num_modules(), 7);
        println!("CRN ngf 64, 184 channels, 256x256: {} parameters", store.num_params());
    }

    #[test]
    fn layer_norm_normalises_each_sample() {
        let store = ParamStore::fresh(0, DType::F32, &Device::Cpu);
        let ln = LayerNorm2d::new(&store.root(), 3).unwrap();
        let x = (Tensor::rand(0f32, 10f32, (2, 3, 4, 5), &Device::Cpu).unwrap() + 3.0).unwrap();
        let y = ln.forward(&x).unwrap().reshape((2, 60)).unwrap();
        let mean: Vec<f32> = y.mean(1).unwrap().to_vec1().unwrap();
        let var: Vec<f32> = y.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
        for (m, v) in mean.iter().zip(&var) {
            assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-3, "{m} {v}");
        }
    }
}
