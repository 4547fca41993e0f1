//! Adam exactly as `torch.optim.Adam` (no weight decay), with its state exposed for checkpoints.
use candle_core::{backprop::GradStore, Result, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

#[derive(Debug)]
pub struct Adam {
    pub config: AdamConfig,
    params: Vec<(String, Var)>,
    m: Vec<Var>,
    v: Vec<Var>,
    step: u64,
}

impl Adam {
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        let m = params.iter().map(|(_, p)| Var::zeros(p.shape(), p.dtype(), p.device())).collect::<Result<_>>()?;
        let v = params.iter().map(|(_, p)| Var::zeros(p.shape(), p.dtype(), p.device())).collect::<Result<_>>()?;
        Ok(Self { config, params, m, v, step: 0 })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from the gradients of `grads`; parameters without a gradient are left alone
    /// (PyTorch skips parameters whose `.grad` is None).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let AdamConfig { lr, beta1, beta2, eps } = self.config;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let m = ((self.m[i].as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((self.v[i].as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            p.set(&(p.as_tensor() - update)?)?;
            self.m[i].set(&m)?;
            self.v[i].set(&v)?;
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`, `step`).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("{name}.exp_avg"), self.m[i].as_tensor().clone()));
            out.push((format!("{name}.exp_avg_sq"), self.v[i].as_tensor().clone()));
        }
        out.push(("step".into(), Tensor::new(self.step as i64, &candle_core::Device::Cpu)?));
        Ok(out)
    }

    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let get = |k: &str| state.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone());
        for (i, (name, p)) in self.params.iter().enumerate() {
            let (Some(m), Some(v)) = (get(&format!("{name}.exp_avg")), get(&format!("{name}.exp_avg_sq"))) else {
                candle_core::bail!("optimizer state has no moments for `{name}`")
            };
            self.m[i].set(&m.to_device(p.device())?.to_dtype(p.dtype())?)?;
            self.v[i].set(&v.to_device(p.device())?.to_dtype(p.dtype())?)?;
        }
        let step = get("step").ok_or_else(|| candle_core::Error::Msg("optimizer state has no `step`".into()))?;
        self.step = step.to_dtype(candle_core::DType::I64)?.to_scalar::<i64>()? as u64;
        Ok(())
    }
}
