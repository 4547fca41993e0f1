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

/// Layer plan of vgg19.features[:30]: channel counts, 'M' = max pool.
const VGG19_PLAN: [i32; 17] = [64, 64, -1, 128, 128, -1, 256, 256, 256, 256, -1, 512, 512, 512, 512, -1, 512];

impl Vgg19 {
    pub fn new(vb: &Vb) -> Result<Self> {
        let mut convs = Vec::new();
        let mut idx = 0;
        let mut cin = 3;
        for &c in VGG19_PLAN.iter() {
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
        for (i, conv) in self.convs.iter().enumerate() {
            if i > 0 && block_starts.contains(&i) {
                x = x.max_pool2d(2)?;
            }
            x = conv.forward_t(&x, false)?.relu()?;
            if block_starts.contains(&i) {
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
