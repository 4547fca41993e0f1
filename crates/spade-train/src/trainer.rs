//! One training iteration as the reference's `Pix2PixTrainer` runs it: a generator step
//! (fake from G in training mode, D on [fake; real] along the batch, G losses, Adam on G (+E)),
//! then a discriminator step (fake regenerated without gradient, D losses, Adam on D).
use crate::optim::{Adam, AdamConfig, ParamGrads};
use candle_core::{DType, Device, Result, Tensor};
use spade_models::checkpoint::Generator;
use spade_models::loss::{crn_perceptual, feature_matching, gan_loss, kld, l1_pixel, GanMode, Vgg19};
use spade_models::networks::encoder::reparameterize;
use spade_models::{ConvEncoder, MultiscaleDiscriminator, NetOptions, ParamStore};

/// Loss weights and switches (the reference's flags).
#[derive(Debug, Clone)]
pub struct LossOptions {
    pub gan_mode: GanMode,
    pub lambda_feat: f64,
    pub lambda_vgg: f64,
    pub lambda_kld: f64,
    pub no_gan_feat_loss: bool,
}

impl Default for LossOptions {
    /// The reference's defaults: hinge, lambda_feat 10, lambda_vgg 10, lambda_kld 0.05.
    fn default() -> Self {
        Self {
            gan_mode: GanMode::Hinge,
            lambda_feat: 10.0,
            lambda_vgg: 10.0,
            lambda_kld: 0.05,
            no_gan_feat_loss: false,
        }
    }
}

/// Optimiser settings (the reference's flags).
#[derive(Debug, Clone, Copy)]
pub struct OptimOptions {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub no_ttur: bool,
}

impl Default for OptimOptions {
    /// The reference's defaults: lr 2e-4, betas (0, 0.9), TTUR.
    fn default() -> Self {
        Self { lr: 2e-4, beta1: 0.0, beta2: 0.9, no_ttur: false }
    }
}

impl OptimOptions {
    /// (G config, D config) as the reference derives them: with TTUR, betas (0, 0.9),
    /// G lr / 2 and D lr * 2; without, the given betas and one lr.
    pub fn adam_configs(&self, lr: f64) -> (AdamConfig, AdamConfig) {
        let (b1, b2, lg, ld) =
            if self.no_ttur { (self.beta1, self.beta2, lr, lr) } else { (0.0, 0.9, lr / 2.0, lr * 2.0) };
        let c = |lr| AdamConfig { lr, beta1: b1, beta2: b2, eps: 1e-8 };
        (c(lg), c(ld))
    }
}

/// The networks of a run and their stores.
pub struct Nets {
    pub g: Generator,
    pub g_store: ParamStore,
    /// None for generators trained without a discriminator (CRN); `d_store` is then empty.
    pub d: Option<MultiscaleDiscriminator>,
    pub d_store: ParamStore,
    pub e: Option<(ConvEncoder, ParamStore)>,
}

impl Nets {
    /// Fresh networks, initialised as the reference (xavier, gain init_variance) from `seed`.
    /// With use_vae the style encoder is built too; `with_encoder: false` instead feeds the
    /// generator z ~ N(0, 1) (the paper's Table 4 "noise input" generator).
    pub fn fresh(opt: &NetOptions, seed: u64, device: &Device) -> spade_models::Result<Self> {
        Self::fresh_with(opt, seed, device, true)
    }

    pub fn fresh_with(opt: &NetOptions, seed: u64, device: &Device, with_encoder: bool) -> spade_models::Result<Self> {
        let g_store = ParamStore::fresh(seed, DType::F32, device);
        let g = Generator::new(opt, &g_store.root())?;
        let d_store = ParamStore::fresh(seed.wrapping_add(1), DType::F32, device);
        let d = if opt.net_g.uses_discriminator() {
            Some(MultiscaleDiscriminator::new(opt, &d_store.root())?)
        } else {
            None
        };
        let e = if opt.use_vae && with_encoder {
            let s = ParamStore::fresh(seed.wrapping_add(2), DType::F32, device);
            Some((ConvEncoder::new(opt, &s.root())?, s))
        } else {
            None
        };
        Ok(Self { g, g_store, d, d_store, e })
    }
}

/// Named loss values of one step.
pub type Losses = Vec<(String, f64)>;

pub struct Trainer {
    pub opt: NetOptions,
    pub loss: LossOptions,
    pub optim: OptimOptions,
    pub nets: Nets,
    pub vgg: Option<Vgg19>,
    pub opt_g: Adam,
    pub opt_d: Adam,
    /// The gradients of the last generator and discriminator steps (for inspection and tests).
    pub last_grads: (Option<ParamGrads>, Option<ParamGrads>),
    /// Split each batch into this many micro-batches and sum their gradients (large effective
    /// batches on small machines; batch-norm statistics are then per micro-batch, as on
    /// several devices without synchronised batch norm).
    pub accumulate: usize,
    rng: rand::rngs::StdRng,
}

fn named(store: &ParamStore) -> Vec<(String, candle_core::Var)> {
    store
        .entries()
        .into_iter()
        .filter(|e| e.kind == spade_models::store::Kind::Param)
        .map(|e| (e.name, e.var))
        .collect()
}

impl Trainer {
    pub fn new(
        opt: NetOptions,
        loss: LossOptions,
        optim: OptimOptions,
        nets: Nets,
        vgg: Option<Vgg19>,
        seed: u64,
    ) -> Result<Self> {
        let (cg, cd) = optim.adam_configs(optim.lr);
        let mut g_params = named(&nets.g_store);
        if let Some((_, s)) = &nets.e {
            g_params.extend(named(s).into_iter().map(|(n, v)| (format!("netE.{n}"), v)));
        }
        let opt_g = Adam::new(g_params, cg)?;
        let opt_d = Adam::new(named(&nets.d_store), cd)?;
        use rand::SeedableRng;
        Ok(Self {
            opt,
            loss,
            optim,
            nets,
            vgg,
            opt_g,
            opt_d,
            last_grads: (None, None),
            accumulate: 1,
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed),
        })
    }

    /// Re-seeds the sampling noise (VAE eps, random z) from (seed, iteration), so that a
    /// resumed run draws exactly what an uninterrupted one would.
    pub fn reseed(&mut self, seed: u64, iteration: u64) {
        use rand::SeedableRng;
        self.rng = rand::rngs::StdRng::seed_from_u64(seed ^ iteration.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }

    /// Every parameter and buffer of G, D and E.
    fn all_entries(&self) -> Vec<spade_models::store::Entry> {
        let mut all = self.nets.g_store.entries();
        all.extend(self.nets.d_store.entries());
        if let Some((_, s)) = &self.nets.e {
            all.extend(s.entries());
        }
        all
    }

    /// Sets the base learning rate (TTUR splits it as at construction).
    pub fn set_lr(&mut self, lr: f64) {
        let (cg, cd) = self.optim.adam_configs(lr);
        self.opt_g.set_lr(cg.lr);
        self.opt_d.set_lr(cd.lr);
    }

    fn randn(&mut self, shape: (usize, usize), device: &Device) -> Result<Tensor> {
        spade_models::networks::encoder::randn(&mut self.rng, shape, device)
    }

    /// The generator's output (and mu, logvar with the encoder) in training mode.
    fn generate(&mut self, sem: &Tensor, real: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let (z, stats) = match &self.nets.e {
            Some((e, _)) => {
                let (mu, logvar) = e.forward_t(real, true)?;
                let eps = self.randn(mu.dims2()?, mu.device())?;
                (Some(reparameterize(&mu, &logvar, &eps)?), Some((mu, logvar)))
            }
            None => (None, None),
        };
        let z = match (z, self.nets.g.uses_z()) {
            (Some(z), _) => Some(z),
            (None, true) => Some(self.randn((sem.dim(0)?, self.opt.z_dim), sem.device())?),
            (None, false) => None,
        };
        Ok((self.nets.g.forward_t(sem, z.as_ref(), true)?, stats))
    }

    /// D on cat([sem, fake], [sem, real]) along the batch; returns (pred_fake, pred_real).
    fn discriminate(&self, sem: &Tensor, fake: &Tensor, real: &Tensor) -> Result<(Vec<Vec<Tensor>>, Vec<Vec<Tensor>>)> {
        let n = sem.dim(0)?;
        let d = self.nets.d.as_ref().ok_or_else(|| candle_core::Error::Msg("this run has no discriminator".into()))?;
        let input = Tensor::cat(&[Tensor::cat(&[sem, fake], 1)?, Tensor::cat(&[sem, real], 1)?], 0)?;
        let out = d.forward_t(&input, true)?;
        let half = |first: bool| -> Result<Vec<Vec<Tensor>>> {
            out.iter().map(|s| s.iter().map(|t| t.narrow(0, if first { 0 } else { n }, n)).collect()).collect()
        };
        Ok((half(true)?, half(false)?))
    }

    /// What the generator is trained with, in words (recorded in run.json and the reports).
    pub fn objective(&self) -> String {
        if self.nets.d.is_none() {
            return match self.vgg {
                Some(_) => {
                    "CRN perceptual regression (L1 on the image and VGG19 conv1_2..conv5_2; no discriminator)".into()
                }
                None => "L1 pixel regression (no VGG19 weights, so not CRN's perceptual loss; no discriminator)".into(),
            };
        }
        let mut parts = vec![format!("GAN ({})", self.loss.gan_mode)];
        if !self.loss.no_gan_feat_loss {
            parts.push("feature matching".into());
        }
        if self.vgg.is_some() {
            parts.push("VGG19 perceptual".into());
        }
        if self.nets.e.is_some() {
            parts.push("KLD".into());
        }
        parts.join(" + ")
    }

    /// Whether the run has a discriminator (and a discriminator step).
    pub fn has_discriminator(&self) -> bool {
        self.nets.d.is_some()
    }

    /// The loss terms of a generator trained by regression alone (CRN): CRN's perceptual
    /// regression loss with VGG19 weights, otherwise the L1 pixel loss (named as such).
    fn regression_terms(&mut self, sem: &Tensor, real: &Tensor) -> Result<(Vec<(String, Tensor)>, Tensor)> {
        let (fake, _) = self.generate(sem, real)?;
        let term = match &self.vgg {
            Some(vgg) => ("CRN_perceptual".to_string(), crn_perceptual(vgg, &fake, real)?),
            None => ("L1_pixel".to_string(), l1_pixel(&fake, real)?),
        };
        Ok((vec![term], fake))
    }

    /// The generator's loss terms on one (micro-)batch, and the fake.
    fn generator_terms(&mut self, sem: &Tensor, real: &Tensor) -> Result<(Vec<(String, Tensor)>, Tensor)> {
        if self.nets.d.is_none() {
            return self.regression_terms(sem, real);
        }
        let (fake, stats) = self.generate(sem, real)?;
        // D's weights get no gradient from G's loss (only G is stepped): its forward builds no
        // graph towards them.
        let (pred_fake, pred_real) = {
            let _no_d_grads = spade_models::layers::no_param_grads();
            self.discriminate(sem, &fake, real)?
        };
        let mut terms: Vec<(String, Tensor)> = Vec::new();
        if let Some((mu, logvar)) = &stats {
            terms.push(("KLD".into(), (kld(mu, logvar)? * self.loss.lambda_kld)?));
        }
        terms.push(("GAN".into(), gan_loss(&pred_fake, true, false, self.loss.gan_mode)?));
        if !self.loss.no_gan_feat_loss {
            terms.push(("GAN_Feat".into(), feature_matching(&pred_fake, &pred_real, self.loss.lambda_feat)?));
        }
        if let Some(vgg) = &self.vgg {
            terms.push(("VGG".into(), (vgg.loss(&fake, real)? * self.loss.lambda_vgg)?));
        }
        Ok((terms, fake))
    }

    /// The discriminator's loss terms on one (micro-)batch (the fake regenerated by G in
    /// training mode, without gradient).
    fn discriminator_terms(&mut self, sem: &Tensor, real: &Tensor) -> Result<Vec<(String, Tensor)>> {
        // G runs without a graph towards its weights (the reference's torch.no_grad()); the
        // graph-carrying output is dropped with this block.
        let fake = {
            let _no_g_grads = spade_models::layers::no_param_grads();
            self.generate(sem, real)?.0.detach()
        };
        let (pred_fake, pred_real) = self.discriminate(sem, &fake, real)?;
        Ok(vec![
            ("D_Fake".to_string(), gan_loss(&pred_fake, false, true, self.loss.gan_mode)?),
            ("D_real".to_string(), gan_loss(&pred_real, true, true, self.loss.gan_mode)?),
        ])
    }

    /// Runs `terms` on `accumulate` equal micro-batches, summing the gradients of the mean loss;
    /// returns the mean loss values, the gradients and the outputs of each micro-batch.
    fn accumulated<T>(
        &mut self,
        sem: &Tensor,
        real: &Tensor,
        mut terms: impl FnMut(&mut Self, &Tensor, &Tensor) -> Result<(Vec<(String, Tensor)>, T)>,
    ) -> Result<(Losses, ParamGrads, Vec<T>)> {
        let n = sem.dim(0)?;
        let k = if self.accumulate > 1 && n % self.accumulate == 0 { self.accumulate } else { 1 };
        let m = n / k;
        let mut losses: Losses = Vec::new();
        let mut grads = ParamGrads::default();
        let mut outs = Vec::with_capacity(k);
        for i in 0..k {
            let (s, r) = if k == 1 {
                (sem.clone(), real.clone())
            } else {
                (sem.narrow(0, i * m, m)?, real.narrow(0, i * m, m)?)
            };
            let (t, out) = terms(self, &s, &r)?;
            for (name, v) in values(&t)? {
                match losses.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => e.1 += v / k as f64,
                    None => losses.push((name, v / k as f64)),
                }
            }
            let total = (sum(&t)? / k as f64)?;
            let store = total.backward()?;
            let entries = self.all_entries();
            grads.accumulate(ParamGrads::from_store(&store, entries.iter().map(|e| &e.var)))?;
            outs.push(out);
        }
        Ok((losses, grads, outs))
    }

    /// The generator step. Returns the losses and the fake it produced.
    pub fn generator_step(&mut self, sem: &Tensor, real: &Tensor) -> Result<(Losses, Tensor)> {
        let (losses, grads, fakes) = self.accumulated(sem, real, |tr, s, r| tr.generator_terms(s, r))?;
        self.opt_g.step(&grads)?;
        self.last_grads.0 = Some(grads);
        let fakes: Vec<Tensor> = fakes.into_iter().map(|f| f.detach()).collect();
        Ok((losses, Tensor::cat(&fakes, 0)?))
    }

    /// The discriminator step (the fake regenerated by G in training mode, without gradient).
    /// Without a discriminator (CRN) nothing runs and no losses are returned.
    pub fn discriminator_step(&mut self, sem: &Tensor, real: &Tensor) -> Result<Losses> {
        if self.nets.d.is_none() {
            return Ok(Vec::new());
        }
        let (losses, grads, _) = self.accumulated(sem, real, |tr, s, r| Ok((tr.discriminator_terms(s, r)?, ())))?;
        self.opt_d.step(&grads)?;
        self.last_grads.1 = Some(grads);
        Ok(losses)
    }
}

fn values(terms: &[(String, Tensor)]) -> Result<Losses> {
    terms.iter().map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F64)?.to_scalar::<f64>()?))).collect()
}

fn sum(terms: &[(String, Tensor)]) -> Result<Tensor> {
    let mut total = terms[0].1.clone();
    for (_, t) in &terms[1..] {
        total = (total + t)?;
    }
    Ok(total)
}
