//! Adam exactly as `torch.optim.Adam` (no weight decay), with its state exposed for checkpoints,
//! and the parameter gradients it steps from.
use candle_core::{
    backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, TensorId, Var,
};
use rayon::prelude::*;
use spade_kernels::{f32_slice, f32_slice_mut};
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
    /// Update CPU f32 tensors in place, in one pass each ([`Moment`], [`Update`]); off, candle's
    /// ops compute the same values (tests compare the two).
    in_place: bool,
}

impl Adam {
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        let m = params.iter().map(|(_, p)| Var::zeros(p.shape(), p.dtype(), p.device())).collect::<Result<_>>()?;
        let v = params.iter().map(|(_, p)| Var::zeros(p.shape(), p.dtype(), p.device())).collect::<Result<_>>()?;
        Ok(Self { config, params, m, v, step: 0, in_place: true })
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
            let (m, v) = (self.m[i].as_tensor(), self.v[i].as_tensor());
            if self.in_place && in_place_applies(&[p.as_tensor(), g, m, v]) {
                m.inplace_op2(g, &Moment { decay: beta1, square: false })?;
                v.inplace_op2(g, &Moment { decay: beta2, square: true })?;
                p.inplace_op3(m, v, &Update { inv_sqrt_bc2: 1.0 / bc2.sqrt(), eps, step_size: lr / bc1 })?;
                continue;
            }
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

/// The in-place update runs on contiguous f32 CPU tensors; elsewhere candle's ops do.
fn in_place_applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// Elements per task of the in-place update.
const CHUNK: usize = 1 << 14;

/// `m = m * decay + g * (1 - decay)` (or `g * g` for the second moment), in place: the same f32
/// operations, in the same order, as the candle ops of [`Adam::step`]'s general path (an f64
/// scalar factor is applied as candle's affine applies it, `x * (k as f32) + 0`).
struct Moment {
    decay: f64,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (m, g) = (f32_slice_mut(s1, l1, "adam")?, f32_slice(s2, l2, "adam")?);
        let (d, c) = (self.decay as f32, (1.0 - self.decay) as f32);
        let square = self.square;
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            for (m, &g) in m.iter_mut().zip(g) {
                let g = if square { g * g } else { g };
                *m = (*m * d + 0.0) + (g * c + 0.0);
            }
        });
        Ok(())
    }
}

/// `p = p - (m / (sqrt(v) / sqrt(bc2) + eps)) * (lr / bc1)`, in place, as [`Moment`] mirrors
/// the general path.
struct Update {
    inv_sqrt_bc2: f64,
    eps: f64,
    step_size: f64,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (p, m, v) = (f32_slice_mut(s1, l1, "adam")?, f32_slice(s2, l2, "adam")?, f32_slice(s3, l3, "adam")?);
        let (inv, eps, step) = (self.inv_sqrt_bc2 as f32, self.eps as f32, self.step_size as f32);
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(p, (m, v))| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                let denom = (v.sqrt() * inv + 0.0) * 1.0 + eps;
                *p -= (m / denom) * step + 0.0;
            }
        });
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

    /// The in-place update gives bit for bit what candle's ops give, over several steps.
    #[test]
    fn in_place_update_equals_candle_ops() {
        use rand::{Rng, SeedableRng};
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 40_000; // more than one chunk
        let init: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let cfg = AdamConfig { lr: 2e-4, beta1: 0.0, beta2: 0.9, eps: 1e-8 };
        let cfg1 = AdamConfig { beta1: 0.5, ..cfg };
        for cfg in [cfg, cfg1] {
            let mut out = Vec::new();
            for in_place in [true, false] {
                let p = Var::new(init.as_slice(), &dev).unwrap();
                let mut adam = Adam::new(vec![("p".into(), p.clone())], cfg).unwrap();
                adam.in_place = in_place;
                let mut rng = rand::rngs::StdRng::seed_from_u64(2);
                for _ in 0..3 {
                    let g: Vec<f32> = (0..n).map(|_| rng.random_range(-1e-2..1e-2)).collect();
                    let g = Tensor::new(g.as_slice(), &dev).unwrap();
                    let y = (p.as_tensor() * &g).unwrap().sum_all().unwrap();
                    adam.step_from_store(&y.backward().unwrap()).unwrap();
                }
                let state: Vec<Vec<f32>> =
                    adam.state().unwrap().iter().take(2).map(|(_, t)| t.to_vec1().unwrap()).collect();
                out.push((p.as_tensor().to_vec1::<f32>().unwrap(), state));
            }
            assert_ne!(out[0].0, init, "the parameters moved");
            assert!(out[0] == out[1], "in-place and candle-op updates differ");
        }
    }
}
