//! Losses: GAN (hinge, least squares, original) over multiscale outputs, feature matching,
//! KL divergence, and the VGG19 perceptual loss.
use crate::error::{Error, Result};
use crate::layers::conv::{Conv2d, ConvSpec};
use crate::store::Vb;
use candle_core::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GanMode {
    Hinge,
    /// Least squares (LSGAN).
    Ls,
    /// Binary cross-entropy on logits.
    Original,
    /// WGAN (the reference's fallback).
    W,
}

impl GanMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "hinge" => Ok(Self::Hinge),
            "ls" => Ok(Self::Ls),
            "original" => Ok(Self::Original),
            "w" => Ok(Self::W),
            _ => Err(Error::Option {
                option: "gan_mode".into(),
                value: s.into(),
                expected: "hinge, ls, original or w".into(),
            }),
        }
    }

    /// The `gan_mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hinge => "hinge",
            Self::Ls => "ls",
            Self::Original => "original",
            Self::W => "w",
        }
    }
}

fn single(pred: &Tensor, real: bool, for_d: bool, mode: GanMode) -> candle_core::Result<Tensor> {
    let target = if real { 1.0 } else { 0.0 };
    match mode {
        GanMode::Hinge => {
            if for_d {
                let shifted = if real { (pred - 1.0)? } else { (pred.neg()? - 1.0)? };
                shifted.minimum(0.0)?.mean_all()?.neg()
            } else {
                if !real {
                    candle_core::bail!("the generator's hinge loss must aim for real")
                }
                pred.mean_all()?.neg()
            }
        }
        GanMode::Ls => (pred - target)?.sqr()?.mean_all(),
        GanMode::Original => {
            // BCE with logits: max(x,0) - x*t + log(1 + exp(-|x|))
            let relu = pred.relu()?;
            let log_term = (pred.abs()?.neg()?.exp()? + 1.0)?.log()?;
            ((relu - (pred * target)?)? + log_term)?.mean_all()
        }
        GanMode::W => {
            if real {
                pred.mean_all()?.neg()
            } else {
                pred.mean_all()
            }
        }
    }
}

/// The GAN loss averaged over the scales' last outputs (the patch maps).
pub fn gan_loss(preds: &[Vec<Tensor>], real: bool, for_d: bool, mode: GanMode) -> candle_core::Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for scale in preds {
        let last = scale.last().expect("a discriminator scale has outputs");
        let l = single(last, real, for_d, mode)?;
        total = Some(match total {
            None => l,
            Some(t) => (t + l)?,
        });
    }
    total.expect("at least one scale") / preds.len() as f64
}

/// Feature matching: L1 between every intermediate output (all but the last) of fake and real
/// (real detached), summed over layers and scales, times lambda_feat / num_D.
pub fn feature_matching(fake: &[Vec<Tensor>], real: &[Vec<Tensor>], lambda_feat: f64) -> candle_core::Result<Tensor> {
    let num_d = fake.len() as f64;
    let mut total = Tensor::zeros((), fake[0][0].dtype(), fake[0][0].device())?;
    for (f, r) in fake.iter().zip(real) {
        for j in 0..f.len() - 1 {
            let l1 = (&f[j] - r[j].detach())?.abs()?.mean_all()?;
            total = (total + (l1 * (lambda_feat / num_d))?)?;
        }
    }
    Ok(total)
}

/// KL divergence of N(mu, exp(logvar)) from N(0, 1): -0.5 * sum(1 + logvar - mu^2 - exp(logvar)).
pub fn kld(mu: &Tensor, logvar: &Tensor) -> candle_core::Result<Tensor> {
    let inner = ((logvar + 1.0)? - mu.sqr()?)?.sub(&logvar.exp()?)?;
    inner.sum_all()? * -0.5
}

/// torchvision's `vgg19().features` up to relu5_1, weights under `features.<i>.*` keys.
#[derive(Debug, Clone)]
pub struct Vgg19 {
    /// (index in `features`, conv) for the 13 convs up to relu5_1.
    convs: Vec<Conv2d>,
}

/// Layer plan of vgg19.features[:32] (up to conv5_2): channel counts, -1 = max pool.
const VGG19_PLAN: [i32; 18] = [64, 64, -1, 128, 128, -1, 256, 256, 256, 256, -1, 512, 512, 512, 512, -1, 512, 512];

/// Conv indices (0-based, counting convs only) after which a max pool follows.
const VGG19_POOL_BEFORE: [usize; 4] = [2, 4, 8, 12];

impl Vgg19 {
    /// The 13 convs up to relu5_1 (SPADE's perceptual loss).
    pub fn new(vb: &Vb) -> Result<Self> {
        Self::with_convs(vb, 13)
    }

    /// The first `n` convs (at most 14, up to conv5_2).
    pub fn with_convs(vb: &Vb, n: usize) -> Result<Self> {
        let mut convs = Vec::new();
        let mut idx = 0;
        let mut cin = 3;
        for &c in VGG19_PLAN.iter() {
            if convs.len() == n {
                break;
            }
            if c < 0 {
                idx += 1;
            } else {
                let c = c as usize;
                convs.push(Conv2d::new(&vb.pp("features").pp(idx), ConvSpec::new(cin, c, 3), 1.0)?);
                cin = c;
                idx += 2;
            }
        }
        Ok(Self { convs })
    }

    /// relu1_1, relu2_1, relu3_1, relu4_1, relu5_1. The input goes in as the reference feeds it
    /// (the generator's [-1, 1] range, no ImageNet normalisation).
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        // conv index -> is the first conv of a block (its relu is taken), pools before blocks 2..5
        let block_starts = [0usize, 2, 4, 8, 12];
        let mut outs = Vec::with_capacity(5);
        let mut x = x.clone();
        for (i, conv) in self.convs.iter().enumerate().take(13) {
            if i > 0 && block_starts.contains(&i) {
                x = x.max_pool2d(2)?;
            }
            x = conv.forward_act(&x, false, 0.0)?;
            if block_starts.contains(&i) {
                outs.push(x.clone());
            }
        }
        Ok(outs)
    }

    /// The ReLU outputs after the convs with the given indices (counting convs from 0;
    /// conv1_2 = 1, conv2_2 = 3, conv3_2 = 5, conv4_2 = 9, conv5_2 = 13), in that order.
    pub fn activations(&self, x: &Tensor, taps: &[usize]) -> candle_core::Result<Vec<Tensor>> {
        let last = *taps.iter().max().expect("at least one tap");
        if last >= self.convs.len() {
            candle_core::bail!("VGG19 tap conv {last} but the network has {} convs", self.convs.len())
        }
        let mut outs = Vec::with_capacity(taps.len());
        let mut x = x.clone();
        for (i, conv) in self.convs.iter().enumerate().take(last + 1) {
            if VGG19_POOL_BEFORE.contains(&i) {
                x = x.max_pool2d(2)?;
            }
            x = conv.forward_act(&x, false, 0.0)?;
            if taps.contains(&i) {
                outs.push(x.clone());
            }
        }
        Ok(outs)
    }

    /// sum_i w_i * L1(vgg_i(x), vgg_i(y).detach()), w = 1/32, 1/16, 1/8, 1/4, 1.
    pub fn loss(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let weights = [1.0 / 32.0, 1.0 / 16.0, 1.0 / 8.0, 1.0 / 4.0, 1.0];
        let fx = self.features(x)?;
        let fy = self.features(&y.detach())?;
        let mut total = Tensor::zeros((), x.dtype(), x.device())?;
        for ((a, b), w) in fx.iter().zip(&fy).zip(weights) {
            total = (total + ((a - b.detach())?.abs()?.mean_all()? * w)?)?;
        }
        Ok(total)
    }
}

/// CRN's training objective (Chen & Koltun 2017): a feature-matching regression loss, L1
/// between the images and between VGG19 activations conv1_2, conv2_2, conv3_2, conv4_2 and
/// conv5_2 (after ReLU), with the layer weights 1, 1/2.6, 1/4.8, 1/3.7, 1/5.6 and 10/1.5 of
/// CRN's reference code (recalled, not checked against it). Images in [-1, 1] go into VGG
/// as torchvision expects them (ImageNet mean/std on [0, 1]); CRN's code feeds [0, 255] minus
/// the mean to MatConvNet's VGG, so the balance of the terms is not CRN's exactly. `vgg` needs
/// 14 convs ([`Vgg19::with_convs`]).
pub fn crn_perceptual(vgg: &Vgg19, fake: &Tensor, real: &Tensor) -> candle_core::Result<Tensor> {
    const TAPS: [usize; 5] = [1, 3, 5, 9, 13];
    const WEIGHTS: [f64; 5] = [1.0 / 2.6, 1.0 / 4.8, 1.0 / 3.7, 1.0 / 5.6, 10.0 / 1.5];
    let real = real.detach();
    let norm = |x: &Tensor| -> candle_core::Result<Tensor> {
        let dev = x.device();
        let mean = Tensor::new(&[0.485f32, 0.456, 0.406], dev)?.to_dtype(x.dtype())?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&[0.229f32, 0.224, 0.225], dev)?.to_dtype(x.dtype())?.reshape((1, 3, 1, 1))?;
        ((x + 1.0)? / 2.0)?.broadcast_sub(&mean)?.broadcast_div(&std)
    };
    let ff = vgg.activations(&norm(fake)?, &TAPS)?;
    let fr = vgg.activations(&norm(&real)?, &TAPS)?;
    let mut total = (fake - &real)?.abs()?.mean_all()?;
    for ((a, b), w) in ff.iter().zip(&fr).zip(WEIGHTS) {
        total = (total + ((a - b.detach())?.abs()?.mean_all()? * w)?)?;
    }
    Ok(total)
}

/// The L1 pixel regression loss mean |fake - real|: what CRN's objective reduces to without
/// VGG19 weights (its image term alone). Not a perceptual loss.
pub fn l1_pixel(fake: &Tensor, real: &Tensor) -> candle_core::Result<Tensor> {
    (fake - real.detach())?.abs()?.mean_all()
}
