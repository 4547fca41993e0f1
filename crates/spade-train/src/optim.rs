//! Adam exactly as `torch.optim.Adam` (no weight decay), with its state exposed for checkpoints,
//! and the parameter gradients it steps from.
use candle_core::{backprop::GradStore, Result, Tensor, TensorId, Var};
use std::collections::HashMap;

/// The gradients of a set of parameters, detached. candle's [`GradStore`] also keeps the
/// gradients of inputs and constants, and a leaf's gradient there still carries the ops that
/// computed it, which reference the forward pass's activations: kept as it is, a store holds the
/// whole forward graph alive (about 0.6 GB in the mini training iteration) until it is dropped.
#[derive(Debug, Default, Clone)]
pub struct ParamGrads(HashMap<TensorId, Tensor>);

impl ParamGrads {
    /// The gradients of `params` in `store` (those that have one), detached.
    pub fn from_store<'a>(store: &GradStore, params: impl IntoIterator<Item = &'a Var>) -> Self {
        let grads = params
            .into_iter()
            .filter_map(|p| store.get(p.as_tensor()).map(|g| (p.as_tensor().id(), g.detach())))
            .collect();
        Self(grads)
    }

    pub fn get(&self, param: &Tensor) -> Option<&Tensor> {
        self.0.get(&param.id())
    }

    /// Adds `other`'s gradients to these (micro-batch accumulation).
    pub fn accumulate(&mut self, other: ParamGrads) -> Result<()> {
        for (id, g) in other.0 {
            let sum = match self.0.remove(&id) {
                Some(old) => (old + g)?,
                None => g,
            };
            self.0.insert(id, sum);
        }
        Ok(())
    }
}

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
    pub fn step(&mut self, grads: &ParamGrads) -> Result<()> {
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

    /// One update from a whole backward pass's gradients (this optimiser's parameters' only).
    pub fn step_from_store(&mut self, store: &GradStore) -> Result<()> {
        let grads = ParamGrads::from_store(store, self.params.iter().map(|(_, p)| p));
        self.step(&grads)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Only the parameters' gradients are kept, with the right values and no ops behind them
    /// (an op would keep the forward pass's tensors alive).
    #[test]
    fn param_grads_keep_parameter_gradients_detached() {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2., 3.], &dev).unwrap();
        let x = Var::new(&[4f32, 5., 6.], &dev).unwrap();
        let c = Tensor::new(&[0.5f32, 0.5, 0.5], &dev).unwrap();
        // d/dw sum((w * x) * (w + c)) = x * (2w + c)
        let y = ((w.as_tensor() * x.as_tensor()).unwrap() * (w.as_tensor() + &c).unwrap()).unwrap();
        let store = y.sum_all().unwrap().backward().unwrap();
        let mut grads = ParamGrads::from_store(&store, [&w]);
        let g = grads.get(w.as_tensor()).expect("w has a gradient");
        assert_eq!(g.to_vec1::<f32>().unwrap(), vec![10., 22.5, 39.]);
        assert!(!g.track_op(), "a kept gradient must carry no op");
        assert!(grads.get(x.as_tensor()).is_none(), "only the given parameters are kept");
        assert!(grads.get(&c).is_none());
        grads.accumulate(ParamGrads::from_store(&store, [&w])).unwrap();
        assert_eq!(grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![20., 45., 78.]);
    }
}
