//! Parameter and buffer storage, and the `Vb` builder that networks use to create them.
//!
//! Networks ask for every tensor by its PyTorch state_dict key (`vb.pp("head_0").pp("conv_0")`),
//! so reference checkpoints load without renaming. A [`ParamStore`] either starts from a
//! checkpoint (every requested tensor must exist with the requested shape) or initialises
//! tensors fresh (training from scratch). Parameters are trainable [`Var`]s; buffers (batch-norm
//! running statistics, spectral-norm `u`/`v`) are `Var`s too so that training-mode forwards can
//! update them in place, but they are never handed to an optimiser.
use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::SeedableRng;
use rand_distr::Distribution;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Explains a checkpoint mismatch: (name, expected shape, found shape if present).
pub type HintFn = dyn Fn(&str, &[usize], Option<&[usize]>) -> String + Send + Sync;

/// What a stored tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Param,
    Buffer,
}

/// How a freshly created tensor is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Const(f64),
    /// Normal(mean, std).
    Normal {
        mean: f64,
        std: f64,
    },
    /// Xavier (Glorot) normal with the given gain; fans from dims 0 and 1 times the receptive field.
    XavierNormal {
        gain: f64,
    },
    /// A random unit vector (spectral-norm `u` and `v`).
    UnitNormal,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub var: Var,
}

struct Inner {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    source: Option<HashMap<String, Tensor>>,
    rng: rand::rngs::StdRng,
}

/// All the tensors of one network, in creation order (which is the state_dict order).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    device: Device,
    dtype: DType,
    /// When false (inference), parameters are handed out detached so no autograd graph is kept.
    trainable: bool,
    /// Extra text appended to shape errors, naming the option that probably differs.
    hint: Arc<HintFn>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().unwrap();
        f.debug_struct("ParamStore").field("tensors", &inner.entries.len()).finish()
    }
}

impl ParamStore {
    /// A store that initialises every tensor freshly from `seed`.
    pub fn fresh(seed: u64, dtype: DType, device: &Device) -> Self {
        Self::new(None, seed, dtype, device)
    }

    /// A store whose tensors all come from a checkpoint's state_dict.
    pub fn from_state_dict(tensors: Vec<(String, Tensor)>, dtype: DType, device: &Device) -> Self {
        Self::new(Some(tensors.into_iter().collect()), 0, dtype, device)
    }

    fn new(source: Option<HashMap<String, Tensor>>, seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: Vec::new(),
                index: HashMap::new(),
                source,
                rng: rand::rngs::StdRng::seed_from_u64(seed),
            })),
            device: device.clone(),
            dtype,
            trainable: true,
            hint: Arc::new(|_, _, _| String::new()),
        }
    }

    /// Inference only: parameters are returned detached (no autograd graph, less memory).
    /// Must be called before the network is built.
    pub fn frozen(mut self) -> Self {
        self.trainable = false;
        self
    }

    /// Sets the function that explains a shape mismatch of a given tensor name.
    pub fn with_hint(
        mut self,
        hint: impl Fn(&str, &[usize], Option<&[usize]>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.hint = Arc::new(hint);
        self
    }

    pub fn root(&self) -> Vb {
        Vb { store: self.clone(), path: Vec::new() }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn get(&self, name: &str, shape: Shape, kind: Kind, init: Init, dtype: DType) -> Result<Tensor> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(&i) = inner.index.get(name) {
            let var = &inner.entries[i].var;
            if var.shape() != &shape {
                return Err(Error::ShapeMismatch {
                    name: name.to_string(),
                    expected: shape.dims().to_vec(),
                    found: var.dims().to_vec(),
                    hint: String::new(),
                });
            }
            return Ok(self.hand_out(var));
        }
        let tensor = match &inner.source {
            Some(source) => match source.get(name) {
                Some(t) => {
                    if t.shape() != &shape {
                        return Err(Error::ShapeMismatch {
                            name: name.to_string(),
                            expected: shape.dims().to_vec(),
                            found: t.dims().to_vec(),
                            hint: (self.hint)(name, shape.dims(), Some(t.dims())),
                        });
                    }
                    t.to_device(&self.device)?.to_dtype(dtype)?
                }
                None => {
                    return Err(Error::MissingTensor {
                        name: name.to_string(),
                        expected: shape.dims().to_vec(),
                        hint: (self.hint)(name, shape.dims(), None),
                    })
                }
            },
            None => init_tensor(&mut inner.rng, &shape, init, dtype, &self.device)?,
        };
        let var = Var::from_tensor(&tensor)?;
        let t = self.hand_out(&var);
        let idx = inner.entries.len();
        inner.entries.push(Entry { name: name.to_string(), kind, var });
        inner.index.insert(name.to_string(), idx);
        Ok(t)
    }

    fn hand_out(&self, var: &Var) -> Tensor {
        if self.trainable {
            var.as_tensor().clone()
        } else {
            var.as_tensor().detach()
        }
    }

    /// The `Var` behind a stored name (buffers are updated through it).
    pub fn var(&self, name: &str) -> Option<Var> {
        let inner = self.inner.lock().unwrap();
        inner.index.get(name).map(|&i| inner.entries[i].var.clone())
    }

    /// Every stored tensor, in creation order.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner.lock().unwrap().entries.clone()
    }

    /// The trainable parameters, in creation order.
    pub fn params(&self) -> Vec<Var> {
        self.entries().into_iter().filter(|e| e.kind == Kind::Param).map(|e| e.var).collect()
    }

    /// Number of scalar parameters (buffers excluded), as PyTorch's `sum(p.numel())`.
    pub fn num_params(&self) -> usize {
        self.entries().iter().filter(|e| e.kind == Kind::Param).map(|e| e.var.elem_count()).sum()
    }

    /// The state_dict: every parameter and buffer, in creation order.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.entries().into_iter().map(|e| (e.name, e.var.as_tensor().clone())).collect()
    }

    /// After building a network from a checkpoint: an error if the checkpoint holds tensors
    /// that the network did not ask for (it was built with other options).
    pub fn check_all_used(&self) -> Result<()> {
        let inner = self.inner.lock().unwrap();
        let Some(source) = &inner.source else { return Ok(()) };
        let mut unused: Vec<&String> = source.keys().filter(|k| !inner.index.contains_key(*k)).collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let hint = (self.hint)(unused[0], &[], None);
        let shown: Vec<String> = unused.iter().take(6).map(|s| format!("`{s}`")).collect();
        let more = if unused.len() > 6 { format!(" and {} more", unused.len() - 6) } else { String::new() };
        Err(Error::UnexpectedTensors { names: format!("{}{more}", shown.join(", ")), hint })
    }

    /// Overwrites stored tensors with the given values (same names and shapes).
    pub fn load_values(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        for (name, t) in tensors {
            let var = self
                .var(name)
                .ok_or_else(|| Error::UnexpectedTensors { names: format!("`{name}`"), hint: String::new() })?;
            if var.shape() != t.shape() {
                return Err(Error::ShapeMismatch {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                    hint: (self.hint)(name, var.dims(), Some(t.dims())),
                });
            }
            var.set(&t.to_device(&self.device)?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

fn init_tensor(
    rng: &mut rand::rngs::StdRng,
    shape: &Shape,
    init: Init,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n = shape.elem_count();
    let normal = |rng: &mut rand::rngs::StdRng, mean: f64, std: f64| -> Vec<f32> {
        let d = rand_distr::Normal::new(mean, std.max(0.0)).unwrap();
        (0..n).map(|_| d.sample(rng) as f32).collect()
    };
    let data: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Normal { mean, std } => normal(rng, mean, std),
        Init::XavierNormal { gain } => {
            let dims = shape.dims();
            let receptive: usize = dims.iter().skip(2).product();
            let (fan_out, fan_in) = match dims.len() {
                0 | 1 => (n, n),
                _ => (dims[0] * receptive, dims[1] * receptive),
            };
            let std = gain * (2.0 / (fan_in + fan_out) as f64).sqrt();
            normal(rng, 0.0, std)
        }
        Init::UnitNormal => {
            let v = normal(rng, 0.0, 1.0);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / norm).collect()
        }
    };
    let t = Tensor::from_vec(data, shape.clone(), device)?;
    Ok(if dtype == DType::F32 { t } else { t.to_dtype(dtype)? })
}

/// A position in the state_dict key tree: `vb.pp("a").pp("b").param(.., "weight")` is `a.b.weight`.
#[derive(Clone, Debug)]
pub struct Vb {
    store: ParamStore,
    path: Vec<String>,
}

impl Vb {
    pub fn pp(&self, name: impl ToString) -> Self {
        let mut path = self.path.clone();
        path.push(name.to_string());
        Self { store: self.store.clone(), path }
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.path.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.path.join("."))
        }
    }

    pub fn prefix(&self) -> String {
        self.path.join(".")
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    pub fn dtype(&self) -> DType {
        self.store.dtype
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// A trainable parameter.
    pub fn param(&self, shape: impl Into<Shape>, leaf: &str, init: Init) -> Result<Tensor> {
        self.store.get(&self.name(leaf), shape.into(), Kind::Param, init, self.store.dtype)
    }

    /// A buffer in the network's dtype; returns its `Var` so the owner can update it.
    pub fn buffer(&self, shape: impl Into<Shape>, leaf: &str, init: Init) -> Result<Var> {
        self.buffer_dtype(shape, leaf, init, self.store.dtype)
    }

    /// A buffer with an explicit dtype (batch norm's `num_batches_tracked` is i64).
    pub fn buffer_dtype(&self, shape: impl Into<Shape>, leaf: &str, init: Init, dtype: DType) -> Result<Var> {
        let name = self.name(leaf);
        self.store.get(&name, shape.into(), Kind::Buffer, init, dtype)?;
        Ok(self.store.var(&name).expect("just inserted"))
    }
}
