//! Building blocks shared by the paper's evaluation segmenters ([`crate::deeplabv2`],
//! [`crate::drn`], [`crate::upernet`]): strict loading of a PyTorch state dict (every key the
//! network asks for must exist with its shape, and every key in the file must be used), random
//! state dicts in the same layout (tests, parity checks), eval-mode convolution + BatchNorm
//! folded into one convolution, torch-exact max pooling (padding, `ceil_mode`) and adaptive
//! average pooling, and the caffe/ImageNet input normalisation.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{MetricsError, Result};
use crate::segmentation::{GroundTruthMap, Preprocessing, Segmenter};

/// BatchNorm buffers that no eval-mode forward reads: torch's `num_batches_tracked` and the
/// training sums of CSAIL's `SynchronizedBatchNorm2d`. Accepted in a file, never required.
pub const OPTIONAL_SUFFIXES: [&str; 4] =
    ["num_batches_tracked", "_tmp_running_mean", "_tmp_running_var", "_running_iter"];

/// The extra buffers torch's `nn.BatchNorm2d` has in a state dict.
pub const TORCH_BN_BUFFERS: &[&str] = &["num_batches_tracked"];
/// The extra buffers of CSAIL's `SynchronizedBatchNorm2d`.
pub const SYNC_BN_BUFFERS: &[&str] = &["num_batches_tracked", "_tmp_running_mean", "_tmp_running_var", "_running_iter"];

struct Tracked {
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<HashSet<String>>>,
}

impl Tracked {
    fn fetch(&self, name: &str) -> candle_core::Result<&Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("missing tensor '{name}' (the network needs it; the file has no such key)"))
        })?;
        self.used.lock().expect("lock").insert(name.to_string());
        Ok(t)
    }
}

impl SimpleBackend for Tracked {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.fetch(name)?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "tensor '{name}' has shape {:?} in the file, the network expects {:?}",
                t.dims(),
                s.dims()
            )));
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Builds a network from named tensors with strict key checking: a missing or misshaped key
/// fails the build, and keys left unused (other than [`OPTIONAL_SUFFIXES`]) are an error
/// listing them. Errors name `origin` (the file).
pub fn build_strict<T>(
    tensors: Vec<(String, Tensor)>,
    origin: &Path,
    what: &str,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let used = Arc::new(Mutex::new(HashSet::new()));
    let names: Vec<String> = tensors.iter().map(|(k, _)| k.clone()).collect();
    let backend = Tracked { tensors: tensors.into_iter().collect(), used: used.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let err = |msg: String| MetricsError::Weights { path: origin.to_path_buf(), msg };
    let net = build(vb).map_err(|e| err(format!("does not match {what}: {e}")))?;
    let used = used.lock().expect("lock");
    let mut unused: Vec<&String> = names
        .iter()
        .filter(|k| !used.contains(*k) && !OPTIONAL_SUFFIXES.iter().any(|s| k.ends_with(&format!(".{s}"))))
        .collect();
    if !unused.is_empty() {
        unused.sort();
        let n = unused.len();
        let shown: Vec<&str> = unused.iter().take(8).map(|s| s.as_str()).collect();
        return Err(err(format!(
            "does not match {what}: {n} unexpected key(s) in the file: {}{}",
            shown.join(", "),
            if n > 8 { ", ..." } else { "" }
        )));
    }
    Ok(net)
}

/// Reads a `.pth` state dict (through [`crate::weights::load_state_dict`]) and builds a network
/// from it with [`build_strict`].
pub fn load_strict<T>(
    path: &Path,
    what: &str,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let tensors = crate::weights::load_state_dict(path)?;
    build_strict(tensors, path, what, device, build)
}

struct RandomInit {
    seed: u64,
    counter: Mutex<u64>,
    recorded: Arc<Mutex<Vec<(String, Tensor)>>>,
}

impl RandomInit {
    fn values(&self, n: usize) -> Vec<f32> {
        // SplitMix64 -> uniform [0, 1): deterministic from the seed and the request order.
        let mut c = self.counter.lock().expect("lock");
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            *c += 1;
            let mut z = self.seed.wrapping_add(c.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            out.push((z >> 40) as f32 / (1u64 << 24) as f32);
        }
        out
    }
}

impl SimpleBackend for RandomInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let u = self.values(n);
        let dims = s.dims();
        // Scales that keep activations finite through a hundred layers.
        let v: Vec<f32> = if name.ends_with("running_var") || (dims.len() == 1 && name.ends_with("weight")) {
            u.iter().map(|x| 0.5 + x).collect()
        } else if dims.len() == 1 {
            u.iter().map(|x| 0.2 * (x - 0.5)).collect()
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let a = (6.0 / fan_in.max(1) as f32).sqrt() * 0.5;
            u.iter().map(|x| a * (2.0 * x - 1.0)).collect()
        };
        let t = Tensor::from_vec(v, s, dev)?.to_dtype(dtype)?;
        self.recorded.lock().expect("lock").push((name.to_string(), t.clone()));
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("random init needs a shape for '{name}'")))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// Builds a network with deterministic random weights and returns it with its state dict in
/// the reference layout: every tensor it asked for, plus the `bn_buffers` (e.g.
/// [`TORCH_BN_BUFFERS`]) beside every BatchNorm's `running_var`, as torch's `state_dict()` has.
pub fn random_state_dict<T>(
    seed: u64,
    device: &Device,
    bn_buffers: &[&str],
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<(T, Vec<(String, Tensor)>)> {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let backend = RandomInit { seed, counter: Mutex::new(0), recorded: recorded.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let net = build(vb)?;
    let mut out = Vec::new();
    for (k, t) in recorded.lock().expect("lock").drain(..) {
        let prefix = k.strip_suffix("running_var").map(str::to_string);
        out.push((k, t.clone()));
        if let Some(p) = prefix {
            for &b in bn_buffers {
                let v = match b {
                    "num_batches_tracked" => Tensor::new(0i64, device)?,
                    "_running_iter" => Tensor::ones(1, DType::F32, device)?,
                    _ => t.clone(),
                };
                out.push((format!("{p}{b}"), v));
            }
        }
    }
    Ok((net, out))
}

/// A 2-D convolution (torch `nn.Conv2d` in eval mode), possibly with a BatchNorm folded in.
#[derive(Debug, Clone)]
pub struct Conv {
    w: Tensor,
    b: Option<Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
}

/// Geometry of a square convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl ConvSpec {
    /// `k x k`, stride 1, no dilation, padding `k / 2`.
    pub fn new(cin: usize, cout: usize, k: usize) -> Self {
        Self { cin, cout, k, stride: 1, padding: k / 2, dilation: 1 }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    /// Dilation `d` with padding `d * (k / 2)` (same size).
    pub fn dilated(mut self, d: usize) -> Self {
        self.dilation = d;
        self.padding = d * (self.k / 2);
        self
    }
}

impl Conv {
    /// `weight` (and `bias` when `bias`) under `vb`.
    pub fn new(vb: &VarBuilder, s: ConvSpec, bias: bool) -> Result<Self> {
        let w = vb.get((s.cout, s.cin, s.k, s.k), "weight")?;
        let b = if bias { Some(vb.get(s.cout, "bias")?.reshape((1, s.cout, 1, 1))?) } else { None };
        Ok(Self { w, b, stride: s.stride, padding: s.padding, dilation: s.dilation })
    }

    /// A bias-free convolution under `conv` followed by the eval-mode BatchNorm under `bn`
    /// (`weight`, `bias`, `running_mean`, `running_var`), folded in f64:
    /// `w' = w * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)`.
    pub fn with_bn(conv: &VarBuilder, bn: &VarBuilder, s: ConvSpec, eps: f64) -> Result<Self> {
        let w = conv.get((s.cout, s.cin, s.k, s.k), "weight")?;
        let g = bn.get(s.cout, "weight")?.to_dtype(DType::F64)?;
        let beta = bn.get(s.cout, "bias")?.to_dtype(DType::F64)?;
        let mean = bn.get(s.cout, "running_mean")?.to_dtype(DType::F64)?;
        let var = bn.get(s.cout, "running_var")?.to_dtype(DType::F64)?;
        let scale = g.div(&(var + eps)?.sqrt()?)?;
        let w = w.to_dtype(DType::F64)?.broadcast_mul(&scale.reshape((s.cout, 1, 1, 1))?)?.to_dtype(DType::F32)?;
        let b = (beta - mean.mul(&scale)?)?.to_dtype(DType::F32)?.reshape((1, s.cout, 1, 1))?;
        Ok(Self { w, b: Some(b), stride: s.stride, padding: s.padding, dilation: s.dilation })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (cout, cin, kh, kw) = self.w.dims4()?;
        let y = if (kh, kw, self.stride, self.padding) == (1, 1, 1, 0) {
            // One matrix product per image: (Cout, Cin) @ (Cin, H*W).
            let (b, c, h, wd) = x.dims4()?;
            let xm = x.contiguous()?.reshape((b, c, h * wd))?;
            self.w.reshape((cout, cin))?.broadcast_matmul(&xm)?.reshape((b, cout, h, wd))?
        } else {
            x.conv2d(&self.w, self.padding, self.stride, self.dilation, 1)?
        };
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// torch's `F.max_pool2d(x, k, s, padding, ceil_mode=ceil)`: padding with -inf, and in ceil
/// mode a last window that starts inside the input or its left padding.
pub fn max_pool2d(x: &Tensor, k: usize, s: usize, padding: usize, ceil: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let out = |n: usize| -> usize {
        let span = n + 2 * padding - k;
        let mut o = if ceil { span.div_ceil(s) + 1 } else { span / s + 1 };
        if ceil && (o - 1) * s >= n + padding {
            o -= 1;
        }
        o
    };
    let pad_axis = |x: Tensor, dim: usize, n: usize| -> Result<Tensor> {
        let needed = (out(n) - 1) * s + k;
        let right = needed.saturating_sub(n + padding);
        let mut parts = Vec::new();
        let mut shape = x.dims().to_vec();
        if padding > 0 {
            shape[dim] = padding;
            parts.push(Tensor::full(f32::NEG_INFINITY, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
        }
        parts.push(x.clone());
        if right > 0 {
            shape[dim] = right;
            parts.push(Tensor::full(f32::NEG_INFINITY, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
        }
        let y = if parts.len() == 1 { x } else { Tensor::cat(&parts, dim)? };
        Ok(y.narrow(dim, 0, needed)?)
    };
    let y = pad_axis(x.clone(), 3, w)?;
    let y = pad_axis(y, 2, h)?;
    Ok(y.contiguous()?.max_pool2d_with_stride(k, s)?)
}

/// torch's `nn.AdaptiveAvgPool2d(out)`: window `[floor(i * n / out), ceil((i + 1) * n / out))`.
pub fn adaptive_avg_pool2d(x: &Tensor, out: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let bounds = |i: usize, n: usize| (i * n / out, ((i + 1) * n).div_ceil(out));
    let mut rows = Vec::with_capacity(out);
    for i in 0..out {
        let (h0, h1) = bounds(i, h);
        let band = x.narrow(2, h0, h1 - h0)?;
        let mut cells = Vec::with_capacity(out);
        for j in 0..out {
            let (w0, w1) = bounds(j, w);
            cells.push(band.narrow(3, w0, w1 - w0)?.mean_keepdim(3)?.mean_keepdim(2)?);
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Ok(Tensor::cat(&rows, 2)?)
}

/// Applies a [`Preprocessing`] to RGB images `(B, 3, H, W)` in `[0, 1]`.
pub fn normalize(images01: &Tensor, p: &Preprocessing, device: &Device) -> Result<Tensor> {
    let (_, c, _, _) = images01.dims4()?;
    if c != 3 {
        return Err(MetricsError::invalid("image channels", c, "3 (RGB)"));
    }
    let mut x = images01.to_device(device)?.to_dtype(DType::F32)?;
    if p.channel_order == "BGR" {
        let idx = Tensor::new(&[2u32, 1, 0], device)?;
        x = x.index_select(&idx, 1)?;
    }
    let mean = Tensor::new(&p.mean, device)?.reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&p.std, device)?.reshape((1, 3, 1, 1))?;
    Ok((x * p.value_scale as f64)?.broadcast_sub(&mean)?.broadcast_div(&std)?)
}

/// ResNet's bottleneck block (1x1 reduce, 3x3, 1x1 increase, each with its batch norm; the
/// shortcut a 1x1 conv + BN where the shape changes), shared by the three paper segmenters.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    pub reduce: Conv,
    pub conv3x3: Conv,
    pub increase: Conv,
    pub shortcut: Option<Conv>,
}

impl Bottleneck {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.reduce.forward(x)?.relu()?;
        let h = self.conv3x3.forward(&h)?.relu()?;
        let h = self.increase.forward(&h)?;
        let s = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok((h + s)?.relu()?)
    }
}

/// What differs between the paper's segmentation networks behind one [`NetSegmenter`].
pub trait PaperNet: Send + Sync {
    /// The segmenter's name in `metrics.json`.
    fn name(&self) -> String;
    fn preprocessing(&self) -> Preprocessing;
    /// The map from the dataset's label ids to the network's classes, when they differ.
    fn ground_truth_map(&self) -> Option<GroundTruthMap> {
        None
    }
    /// Logits of preprocessed images.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Whether the logits are resized bilinearly to the input size (false: the network
    /// upsamples them itself, as DRN's learned x8).
    fn resize_to_input(&self) -> bool {
        true
    }
}

/// One of the paper's segmentation networks as a [`Segmenter`]: preprocessing, the network,
/// logits at the input size, argmax.
pub struct NetSegmenter<N> {
    net: N,
    n_classes: usize,
    resolution: (usize, usize),
    weights_hash: String,
    device: Device,
}

impl<N: PaperNet> NetSegmenter<N> {
    pub fn new(net: N, n_classes: usize, resolution: (usize, usize), weights_hash: String, device: &Device) -> Self {
        Self { net, n_classes, resolution, weights_hash, device: device.clone() }
    }

    pub fn net(&self) -> &N {
        &self.net
    }

    /// Logits `(B, n_classes, H, W)` of RGB images in `[0, 1]`.
    pub fn logits(&self, images01: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = images01.dims4()?;
        let x = normalize(images01, &self.net.preprocessing(), &self.device)?;
        let y = self.net.forward(&x)?;
        if self.net.resize_to_input() {
            crate::resize::resize_bilinear(&y, h, w)
        } else {
            Ok(y)
        }
    }
}

impl<N: PaperNet> Segmenter for NetSegmenter<N> {
    fn name(&self) -> String {
        self.net.name()
    }
    fn weights_hash(&self) -> String {
        self.weights_hash.clone()
    }
    fn input_resolution(&self) -> (usize, usize) {
        self.resolution
    }
    fn num_classes(&self) -> usize {
        self.n_classes
    }
    fn segment(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.logits(images)?.argmax(1)?.to_dtype(DType::U32)?)
    }
    fn preprocessing(&self) -> Option<Preprocessing> {
        Some(self.net.preprocessing())
    }
    fn ground_truth_map(&self) -> Option<GroundTruthMap> {
        self.net.ground_truth_map()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_ceil_mode_and_padding_match_torch() {
        // torch: F.max_pool2d(arange(25).view(1,1,5,5), 3, 2, 1, ceil_mode=True) is 3x3
        // [[6, 8, 9], [16, 18, 19], [21, 23, 24]]; a 6x6 input gives 4x4 in ceil mode (the last
        // window starts at 6 < 6 + 1) and 3x3 without.
        let x = Tensor::arange(0f32, 25., &Device::Cpu).unwrap().reshape((1, 1, 5, 5)).unwrap();
        let y = max_pool2d(&x, 3, 2, 1, true).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 3]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![6., 8., 9., 16., 18., 19., 21., 23., 24.]);
        let x6 = Tensor::arange(0f32, 36., &Device::Cpu).unwrap().reshape((1, 1, 6, 6)).unwrap();
        assert_eq!(max_pool2d(&x6, 3, 2, 1, true).unwrap().dims(), &[1, 1, 4, 4]);
        assert_eq!(max_pool2d(&x6, 3, 2, 1, false).unwrap().dims(), &[1, 1, 3, 3]);
    }

    #[test]
    fn adaptive_pool_windows_overlap_as_torch() {
        // n = 5, out = 3: windows [0,2), [1,4), [3,5).
        let x = Tensor::arange(0f32, 5., &Device::Cpu).unwrap().reshape((1, 1, 1, 5)).unwrap();
        let x = x.broadcast_as((1, 1, 5, 5)).unwrap().contiguous().unwrap();
        let y = adaptive_avg_pool2d(&x, 3).unwrap();
        let v: Vec<f32> = y.narrow(2, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.5, 2.0, 3.5]);
    }
}
