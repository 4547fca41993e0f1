//! Pix2PixHDGenerator: the global generator of pix2pixHD (encoder, residual blocks, decoder),
//! with keys `model.<index>` of the reference's flat `nn.Sequential`.
use crate::error::Result;
use crate::layers::conv::{Conv2d, ConvSpec, NormConv};
use crate::layers::ops::reflection_pad2d;
use crate::options::NetOptions;
use crate::store::Vb;
use candle_core::Tensor;

#[derive(Debug, Clone)]
enum Step {
    ReflectionPad(usize),
    NormConv(NormConv),
    Relu,
    ResnetBlock { pad: usize, conv1: NormConv, conv2: NormConv },
    Conv(Conv2d),
    Tanh,
}

#[derive(Debug, Clone)]
pub struct Pix2PixHDGenerator {
    steps: Vec<Step>,
}

impl Pix2PixHDGenerator {
    pub fn new(opt: &NetOptions, vb: &Vb) -> Result<Self> {
        let norm = opt.norm_g.conv()?;
        let gain = opt.init_variance;
        let ngf = opt.ngf;
        let model = vb.pp("model");
        let mut steps = Vec::new();
        let k0 = opt.resnet_initial_kernel_size;
        steps.push(Step::ReflectionPad(k0 / 2));
        let at = |steps: &Vec<Step>| model.pp(steps.len());
        steps.push(Step::NormConv(NormConv::new(
            &at(&steps),
            ConvSpec::new(opt.semantic_nc(), ngf, k0).padding(0),
            norm,
            gain,
        )?));
        steps.push(Step::Relu);
        let mut mult = 1;
        for _ in 0..opt.resnet_n_downsample {
            let spec = ConvSpec::new(ngf * mult, ngf * mult * 2, 3).stride(2).padding(1);
            steps.push(Step::NormConv(NormConv::new(&at(&steps), spec, norm, gain)?));
            steps.push(Step::Relu);
            mult *= 2;
        }
        let k = opt.resnet_kernel_size;
        let pad = (k - 1) / 2;
        for _ in 0..opt.resnet_n_blocks {
            let blk = at(&steps).pp("conv_block");
            let dim = ngf * mult;
            let conv1 = NormConv::new(&blk.pp("1"), ConvSpec::new(dim, dim, k).padding(0), norm, gain)?;
            let conv2 = NormConv::new(&blk.pp("4"), ConvSpec::new(dim, dim, k).padding(0), norm, gain)?;
            steps.push(Step::ResnetBlock { pad, conv1, conv2 });
        }
        let mut nc_out = ngf * mult;
        for _ in 0..opt.resnet_n_downsample {
            let nc_in = ngf * mult;
            nc_out = nc_in / 2;
            let spec = ConvSpec::new(nc_in, nc_out, 3).stride(2).padding(1);
            steps.push(Step::NormConv(NormConv::new_transposed(&at(&steps), spec, 1, norm, gain)?));
            steps.push(Step::Relu);
            mult /= 2;
        }
        steps.push(Step::ReflectionPad(3));
        steps.push(Step::Conv(Conv2d::new(&at(&steps), ConvSpec::new(nc_out, opt.output_nc, 7).padding(0), gain)?));
        steps.push(Step::Tanh);
        Ok(Self { steps })
    }

    pub fn forward_t(&self, seg: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut x = seg.clone();
        for step in &self.steps {
            x = match step {
                Step::ReflectionPad(p) => reflection_pad2d(&x, *p)?,
                Step::NormConv(c) => c.forward_t(&x, train)?,
                Step::Relu => x.relu()?,
                Step::ResnetBlock { pad, conv1, conv2 } => {
                    let y = conv1.forward_t(&reflection_pad2d(&x, *pad)?, train)?.relu()?;
                    let y = conv2.forward_t(&reflection_pad2d(&y, *pad)?, train)?;
                    (x + y)?
                }
                Step::Conv(c) => c.forward_t(&x, train)?,
                Step::Tanh => x.tanh()?,
            };
        }
        Ok(x)
    }
}
