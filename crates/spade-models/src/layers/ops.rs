//! Tensor operations the networks need that candle does not provide in the reference's exact
//! form: nearest resize with PyTorch's index rule, reflection padding, average pooling without
//! counting padding, bilinear resize. All are differentiable.
use candle_core::{Device, Result, Tensor};

/// Source index of output pixel `i` for PyTorch's `nearest` mode: floor(i * in / out).
pub fn nearest_indices(input: usize, output: usize) -> Vec<u32> {
    let scale = input as f32 / output as f32;
    (0..output).map(|i| ((i as f32 * scale).floor() as usize).min(input - 1) as u32).collect()
}

/// `F.interpolate(x, size=(h, w), mode='nearest')` for NCHW tensors.
pub fn resize_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(x.clone());
    }
    if h == 2 * ih && w == 2 * iw {
        return upsample2x(x);
    }
    let dev = x.device();
    let x = if ih == h { x.clone() } else { x.index_select(&Tensor::new(nearest_indices(ih, h), dev)?, 2)? };
    if iw == w {
        Ok(x)
    } else {
        x.index_select(&Tensor::new(nearest_indices(iw, w), dev)?, 3)
    }
}

/// Nearest-neighbour x2 upsampling (`nn.Upsample(scale_factor=2)`), as a broadcast so that
/// its backward is a cheap sum.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    spade_kernels::pointwise::upsample2x(x)
}

/// Indices of reflection padding by `pad` on both sides of a length-`len` axis.
fn reflect_indices(len: usize, pad: usize) -> Vec<u32> {
    (0..len + 2 * pad)
        .map(|i| {
            let j = i as i64 - pad as i64;
            let j = if j < 0 {
                -j
            } else if j >= len as i64 {
                2 * (len as i64 - 1) - j
            } else {
                j
            };
            j as u32
        })
        .collect()
}

/// `nn.ReflectionPad2d(pad)`.
pub fn reflection_pad2d(x: &Tensor, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    if pad >= h || pad >= w {
        candle_core::bail!("reflection padding {pad} needs an input larger than {pad}, got {h}x{w}")
    }
    let dev = x.device();
    let x = x.index_select(&Tensor::new(reflect_indices(h, pad), dev)?, 2)?;
    x.index_select(&Tensor::new(reflect_indices(w, pad), dev)?, 3)
}

/// A (out, in) matrix whose rows average the windows of a 1-d pooling, not counting padding.
fn pool_matrix(len: usize, kernel: usize, stride: usize, pad: usize, dev: &Device) -> Result<Tensor> {
    let out = (len + 2 * pad - kernel) / stride + 1;
    let mut m = vec![0f32; out * len];
    for o in 0..out {
        let start = (o * stride) as i64 - pad as i64;
        let lo = start.max(0) as usize;
        let hi = ((start + kernel as i64) as usize).min(len);
        let count = (hi - lo) as f32;
        for i in lo..hi {
            m[o * len + i] = 1.0 / count;
        }
    }
    Tensor::from_vec(m, (out, len), dev)
}

/// `F.avg_pool2d(x, kernel, stride, padding, count_include_pad=False)`: separable, computed as
/// two small matrix products so that its backward is exact and cheap.
pub fn avg_pool2d_no_pad_count(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let dev = x.device();
    let ph = pool_matrix(h, kernel, stride, pad, dev)?.to_dtype(x.dtype())?;
    let pw = pool_matrix(w, kernel, stride, pad, dev)?.to_dtype(x.dtype())?;
    let (oh, ow) = (ph.dim(0)?, pw.dim(0)?);
    // (n*c*h, w) x (w, ow) -> (n*c, h, ow)
    let y = x.reshape((n * c * h, w))?.matmul(&pw.t()?)?.reshape((n * c, h, ow))?;
    // (oh, h) x (n*c, h, ow) -> (n*c, oh, ow)
    let y = ph.unsqueeze(0)?.broadcast_as((n * c, oh, h))?.contiguous()?.matmul(&y)?;
    y.reshape((n, c, oh, ow))
}

/// A (out, in) interpolation matrix for bilinear resizing with align_corners=False, as PyTorch.
fn bilinear_matrix(input: usize, output: usize, dev: &Device) -> Result<Tensor> {
    let scale = input as f32 / output as f32;
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
        let l1 = src - i0 as f32;
        m[o * input + i0] += 1.0 - l1;
        m[o * input + i1] += l1;
    }
    Tensor::from_vec(m, (output, input), dev)
}

/// `F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False)` (no antialias).
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (n, c, ih, iw) = x.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let mh = bilinear_matrix(ih, h, dev)?.to_dtype(x.dtype())?;
    let mw = bilinear_matrix(iw, w, dev)?.to_dtype(x.dtype())?;
    let y = x.reshape((n * c * ih, iw))?.matmul(&mw.t()?)?.reshape((n * c, ih, w))?;
    let y = mh.unsqueeze(0)?.broadcast_as((n * c, h, ih))?.contiguous()?.matmul(&y)?;
    y.reshape((n, c, h, w))
}

/// LeakyReLU with the given slope.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    spade_kernels::pointwise::leaky_relu(x, slope)
}

pub use spade_kernels::norm::mean_var;
