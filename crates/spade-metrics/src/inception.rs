//! pytorch-fid's Inception-v3 (`pt_inception-2015-12-05`), up to the pool3 features (2048).
//!
//! The structure is torchvision's Inception-v3 with pytorch-fid's FID-specific blocks:
//! the A, C and E_1 blocks average-pool their pool branch without counting padding
//! (TensorFlow's behaviour), and E_2 (`Mixed_7c`) max-pools it. Every `BasicConv2d` is a
//! convolution without bias followed by an eval-mode BatchNorm (eps 1e-3) and a ReLU; the
//! BatchNorm is folded into the convolution at load time (in f64, then cast to f32).
//!
//! Parameter names follow the PyTorch state dict (`Mixed_5b.branch1x1.conv.weight`,
//! `Mixed_5b.branch1x1.bn.running_var`, ...), so the released `.pth` loads as is.
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::resize::resize_bilinear;

/// Side of the square input the network is run on.
pub const FID_INPUT_SIZE: usize = 299;
/// Width of the pool3 features.
pub const POOL3_DIM: usize = 2048;
const BN_EPS: f64 = 1e-3;

/// `BasicConv2d` with its BatchNorm folded in: `relu(conv(x, w) + b)`.
#[derive(Debug, Clone)]
struct BasicConv {
    w: Tensor,
    b: Tensor,
    pad: (usize, usize),
    stride: usize,
}

/// Loads a `BasicConv2d` (`conv.weight`, `bn.{weight,bias,running_mean,running_var}`) and
/// folds the BatchNorm: `w' = w * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)`.
fn fold_conv_bn(vb: &VarBuilder, cin: usize, cout: usize, k: (usize, usize)) -> Result<(Tensor, Tensor)> {
    let w = vb.get((cout, cin, k.0, k.1), "conv.weight")?;
    let g = vb.get(cout, "bn.weight")?.to_dtype(DType::F64)?;
    let beta = vb.get(cout, "bn.bias")?.to_dtype(DType::F64)?;
    let mean = vb.get(cout, "bn.running_mean")?.to_dtype(DType::F64)?;
    let var = vb.get(cout, "bn.running_var")?.to_dtype(DType::F64)?;
    let scale = g.div(&(var + BN_EPS)?.sqrt()?)?;
    let w = w.to_dtype(DType::F64)?.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?.to_dtype(DType::F32)?;
    let b = (beta - mean.mul(&scale)?)?.to_dtype(DType::F32)?.reshape((1, cout, 1, 1))?;
    Ok((w, b))
}

impl BasicConv {
    fn load(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self> {
        let (w, b) = fold_conv_bn(&vb, cin, cout, k)?;
        Ok(Self { w, b, pad, stride })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, kh, kw) = self.w.dims4()?;
        let y = if (kh, kw, self.stride) == (1, 1, 1) {
            conv1x1(x, &self.w)?
        } else if self.pad.0 == self.pad.1 {
            x.conv2d(&self.w, self.pad.0, self.stride, 1, 1)?
        } else {
            let x = x.pad_with_zeros(2, self.pad.0, self.pad.0)?.pad_with_zeros(3, self.pad.1, self.pad.1)?;
            x.conv2d(&self.w, 0, self.stride, 1, 1)?
        };
        Ok(y.broadcast_add(&self.b)?.relu()?)
    }
}

/// A 1x1, stride 1 convolution as one matrix product per image: `(Cout, Cin) @ (Cin, H*W)`
/// (no im2col copy, output already NCHW).
fn conv1x1(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    let xm = x.contiguous()?.reshape((b, c, h * wd))?;
    let wm = w.reshape((cout, c))?;
    Ok(wm.broadcast_matmul(&xm)?.reshape((b, cout, h, wd))?)
}

/// Several 1x1 `BasicConv2d`s reading the same input, run as one convolution and split.
#[derive(Debug, Clone)]
struct Fused1x1 {
    w: Tensor,
    b: Tensor,
    splits: Vec<usize>,
}

impl Fused1x1 {
    fn load(vb: &VarBuilder, cin: usize, parts: &[(&str, usize)]) -> Result<Self> {
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for (name, cout) in parts {
            let (w, b) = fold_conv_bn(&vb.pp(*name), cin, *cout, (1, 1))?;
            ws.push(w);
            bs.push(b);
        }
        Ok(Self { w: Tensor::cat(&ws, 0)?, b: Tensor::cat(&bs, 1)?, splits: parts.iter().map(|p| p.1).collect() })
    }

    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = x.conv2d(&self.w, 0, 1, 1, 1)?.broadcast_add(&self.b)?.relu()?;
        let mut out = Vec::with_capacity(self.splits.len());
        let mut start = 0;
        for &n in &self.splits {
            out.push(y.narrow(1, start, n)?.contiguous()?);
            start += n;
        }
        Ok(out)
    }
}

/// 3x3, stride 1, padding 1 average pool that divides by the number of non-padding cells
/// (`F.avg_pool2d(..., count_include_pad=False)`).
pub fn avg_pool3x3_exclude_pad(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    // Separable 3x3 window sum (three shifted adds per axis), then / (cells inside the image).
    let rows = ((padded.narrow(2, 0, h)? + padded.narrow(2, 1, h)?)? + padded.narrow(2, 2, h)?)?;
    let sum = ((rows.narrow(3, 0, w)? + rows.narrow(3, 1, w)?)? + rows.narrow(3, 2, w)?)?;
    let span = |i: usize, n: usize| -> f32 {
        let lo = i.saturating_sub(1);
        let hi = (i + 1).min(n - 1);
        (hi - lo + 1) as f32
    };
    let mut factor = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            factor.push(1.0 / (span(i, h) * span(j, w)));
        }
    }
    let factor = Tensor::from_vec(factor, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    Ok(sum.broadcast_mul(&factor)?)
}

/// 3x3 max pool without padding (`nn.MaxPool2d(3, stride)`, floor mode).
fn max_pool3x3(x: &Tensor, stride: usize) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride(3, stride)?)
}

/// 3x3, stride 1, padding 1 max pool (padding never wins, as with `-inf` padding).
fn max_pool3x3_same(x: &Tensor) -> Result<Tensor> {
    let padded = x.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?;
    max_pool3x3(&padded, 1)
}

#[derive(Debug, Clone)]
struct InceptionA {
    head: Fused1x1, // branch1x1 (64), branch5x5_1 (48), branch3x3dbl_1 (64)
    b5_2: BasicConv,
    b3_2: BasicConv,
    b3_3: BasicConv,
    pool: BasicConv,
}

impl InceptionA {
    fn load(vb: VarBuilder, cin: usize, pool_features: usize) -> Result<Self> {
        Ok(Self {
            head: Fused1x1::load(&vb, cin, &[("branch1x1", 64), ("branch5x5_1", 48), ("branch3x3dbl_1", 64)])?,
            b5_2: BasicConv::load(vb.pp("branch5x5_2"), 48, 64, (5, 5), 1, (2, 2))?,
            b3_2: BasicConv::load(vb.pp("branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
            b3_3: BasicConv::load(vb.pp("branch3x3dbl_3"), 96, 96, (3, 3), 1, (1, 1))?,
            pool: BasicConv::load(vb.pp("branch_pool"), cin, pool_features, (1, 1), 1, (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.head.forward(x)?;
        let b5 = self.b5_2.forward(&h[1])?;
        let b3 = self.b3_3.forward(&self.b3_2.forward(&h[2])?)?;
        let bp = self.pool.forward(&avg_pool3x3_exclude_pad(x)?)?;
        Ok(Tensor::cat(&[&h[0], &b5, &b3, &bp], 1)?)
    }
}

#[derive(Debug, Clone)]
struct InceptionB {
    b3: BasicConv,
    bd_1: BasicConv,
    bd_2: BasicConv,
    bd_3: BasicConv,
}

impl InceptionB {
    fn load(vb: VarBuilder, cin: usize) -> Result<Self> {
        Ok(Self {
            b3: BasicConv::load(vb.pp("branch3x3"), cin, 384, (3, 3), 2, (0, 0))?,
            bd_1: BasicConv::load(vb.pp("branch3x3dbl_1"), cin, 64, (1, 1), 1, (0, 0))?,
            bd_2: BasicConv::load(vb.pp("branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
            bd_3: BasicConv::load(vb.pp("branch3x3dbl_3"), 96, 96, (3, 3), 2, (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.b3.forward(x)?;
        let bd = self.bd_3.forward(&self.bd_2.forward(&self.bd_1.forward(x)?)?)?;
        let bp = max_pool3x3(x, 2)?;
        Ok(Tensor::cat(&[&b3, &bd, &bp], 1)?)
    }
}

#[derive(Debug, Clone)]
struct InceptionC {
    head: Fused1x1, // branch1x1 (192), branch7x7_1 (c7), branch7x7dbl_1 (c7)
    b7_2: BasicConv,
    b7_3: BasicConv,
    bd_2: BasicConv,
    bd_3: BasicConv,
    bd_4: BasicConv,
    bd_5: BasicConv,
    pool: BasicConv,
}

impl InceptionC {
    fn load(vb: VarBuilder, cin: usize, c7: usize) -> Result<Self> {
        let row = |name: &str, i: usize, o: usize| BasicConv::load(vb.pp(name), i, o, (1, 7), 1, (0, 3));
        let col = |name: &str, i: usize, o: usize| BasicConv::load(vb.pp(name), i, o, (7, 1), 1, (3, 0));
        Ok(Self {
            head: Fused1x1::load(&vb, cin, &[("branch1x1", 192), ("branch7x7_1", c7), ("branch7x7dbl_1", c7)])?,
            b7_2: row("branch7x7_2", c7, c7)?,
            b7_3: col("branch7x7_3", c7, 192)?,
            bd_2: col("branch7x7dbl_2", c7, c7)?,
            bd_3: row("branch7x7dbl_3", c7, c7)?,
            bd_4: col("branch7x7dbl_4", c7, c7)?,
            bd_5: row("branch7x7dbl_5", c7, 192)?,
            pool: BasicConv::load(vb.pp("branch_pool"), cin, 192, (1, 1), 1, (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.head.forward(x)?;
        let b7 = self.b7_3.forward(&self.b7_2.forward(&h[1])?)?;
        let mut bd = self.bd_2.forward(&h[2])?;
        for c in [&self.bd_3, &self.bd_4, &self.bd_5] {
            bd = c.forward(&bd)?;
        }
        let bp = self.pool.forward(&avg_pool3x3_exclude_pad(x)?)?;
        Ok(Tensor::cat(&[&h[0], &b7, &bd, &bp], 1)?)
    }
}

#[derive(Debug, Clone)]
struct InceptionD {
    head: Fused1x1, // branch3x3_1 (192), branch7x7x3_1 (192)
    b3_2: BasicConv,
    b7_2: BasicConv,
    b7_3: BasicConv,
    b7_4: BasicConv,
}

impl InceptionD {
    fn load(vb: VarBuilder, cin: usize) -> Result<Self> {
        Ok(Self {
            head: Fused1x1::load(&vb, cin, &[("branch3x3_1", 192), ("branch7x7x3_1", 192)])?,
            b3_2: BasicConv::load(vb.pp("branch3x3_2"), 192, 320, (3, 3), 2, (0, 0))?,
            b7_2: BasicConv::load(vb.pp("branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3))?,
            b7_3: BasicConv::load(vb.pp("branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0))?,
            b7_4: BasicConv::load(vb.pp("branch7x7x3_4"), 192, 192, (3, 3), 2, (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.head.forward(x)?;
        let b3 = self.b3_2.forward(&h[0])?;
        let b7 = self.b7_4.forward(&self.b7_3.forward(&self.b7_2.forward(&h[1])?)?)?;
        let bp = max_pool3x3(x, 2)?;
        Ok(Tensor::cat(&[&b3, &b7, &bp], 1)?)
    }
}

/// Pool branch of an E block: pytorch-fid's E_1 averages without padding, E_2 max-pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EPool {
    AvgExcludePad,
    Max,
}

#[derive(Debug, Clone)]
struct InceptionE {
    head: Fused1x1, // branch1x1 (320), branch3x3_1 (384), branch3x3dbl_1 (448)
    b3_2a: BasicConv,
    b3_2b: BasicConv,
    bd_2: BasicConv,
    bd_3a: BasicConv,
    bd_3b: BasicConv,
    pool: BasicConv,
    pool_kind: EPool,
}

impl InceptionE {
    fn load(vb: VarBuilder, cin: usize, pool_kind: EPool) -> Result<Self> {
        Ok(Self {
            head: Fused1x1::load(&vb, cin, &[("branch1x1", 320), ("branch3x3_1", 384), ("branch3x3dbl_1", 448)])?,
            b3_2a: BasicConv::load(vb.pp("branch3x3_2a"), 384, 384, (1, 3), 1, (0, 1))?,
            b3_2b: BasicConv::load(vb.pp("branch3x3_2b"), 384, 384, (3, 1), 1, (1, 0))?,
            bd_2: BasicConv::load(vb.pp("branch3x3dbl_2"), 448, 384, (3, 3), 1, (1, 1))?,
            bd_3a: BasicConv::load(vb.pp("branch3x3dbl_3a"), 384, 384, (1, 3), 1, (0, 1))?,
            bd_3b: BasicConv::load(vb.pp("branch3x3dbl_3b"), 384, 384, (3, 1), 1, (1, 0))?,
            pool: BasicConv::load(vb.pp("branch_pool"), cin, 192, (1, 1), 1, (0, 0))?,
            pool_kind,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.head.forward(x)?;
        let b3a = self.b3_2a.forward(&h[1])?;
        let b3b = self.b3_2b.forward(&h[1])?;
        let bd = self.bd_2.forward(&h[2])?;
        let bda = self.bd_3a.forward(&bd)?;
        let bdb = self.bd_3b.forward(&bd)?;
        let pooled = match self.pool_kind {
            EPool::AvgExcludePad => avg_pool3x3_exclude_pad(x)?,
            EPool::Max => max_pool3x3_same(x)?,
        };
        let bp = self.pool.forward(&pooled)?;
        Ok(Tensor::cat(&[&h[0], &b3a, &b3b, &bda, &bdb, &bp], 1)?)
    }
}

/// pytorch-fid's `InceptionV3(output_blocks=[3])` with `use_fid_inception=True`.
#[derive(Debug, Clone)]
pub struct FidInception {
    conv1a: BasicConv,
    conv2a: BasicConv,
    conv2b: BasicConv,
    conv3b: BasicConv,
    conv4a: BasicConv,
    mixed5: [InceptionA; 3],
    mixed6a: InceptionB,
    mixed6: [InceptionC; 4],
    mixed7a: InceptionD,
    mixed7b: InceptionE,
    mixed7c: InceptionE,
    device: Device,
}

impl FidInception {
    /// Builds the network from a VarBuilder over pytorch-fid's state dict names.
    pub fn load(vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        let c = |name: &str, i, o, k, s, p| BasicConv::load(vb.pp(name), i, o, k, s, p);
        Ok(Self {
            conv1a: c("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0))?,
            conv2a: c("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0))?,
            conv2b: c("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1))?,
            conv3b: c("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0))?,
            conv4a: c("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))?,
            mixed5: [
                InceptionA::load(vb.pp("Mixed_5b"), 192, 32)?,
                InceptionA::load(vb.pp("Mixed_5c"), 256, 64)?,
                InceptionA::load(vb.pp("Mixed_5d"), 288, 64)?,
            ],
            mixed6a: InceptionB::load(vb.pp("Mixed_6a"), 288)?,
            mixed6: [
                InceptionC::load(vb.pp("Mixed_6b"), 768, 128)?,
                InceptionC::load(vb.pp("Mixed_6c"), 768, 160)?,
                InceptionC::load(vb.pp("Mixed_6d"), 768, 160)?,
                InceptionC::load(vb.pp("Mixed_6e"), 768, 192)?,
            ],
            mixed7a: InceptionD::load(vb.pp("Mixed_7a"), 768)?,
            mixed7b: InceptionE::load(vb.pp("Mixed_7b"), 1280, EPool::AvgExcludePad)?,
            mixed7c: InceptionE::load(vb.pp("Mixed_7c"), 2048, EPool::Max)?,
            device,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pool3 features `(B, 2048)` of a network input `(B, 3, H, W)` already in `[-1, 1]`
    /// (normally `H = W = 299`; the network is fully convolutional up to the global pool).
    pub fn forward_normalized(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv1a.forward(x)?;
        x = self.conv2a.forward(&x)?;
        x = self.conv2b.forward(&x)?;
        x = max_pool3x3(&x, 2)?;
        x = self.conv3b.forward(&x)?;
        x = self.conv4a.forward(&x)?;
        x = max_pool3x3(&x, 2)?;
        for m in &self.mixed5 {
            x = m.forward(&x)?;
        }
        x = self.mixed6a.forward(&x)?;
        for m in &self.mixed6 {
            x = m.forward(&x)?;
        }
        x = self.mixed7a.forward(&x)?;
        x = self.mixed7b.forward(&x)?;
        x = self.mixed7c.forward(&x)?;
        Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
    }

    /// pytorch-fid's preprocessing of `(B, 3, H, W)` RGB in `[0, 1]`: bilinear resize to
    /// 299x299 (`align_corners=False`, no antialias), then `2x - 1`.
    pub fn preprocess(x: &Tensor) -> Result<Tensor> {
        let x = resize_bilinear(x, FID_INPUT_SIZE, FID_INPUT_SIZE)?;
        Ok(x.affine(2.0, -1.0)?)
    }

    /// Pool3 features `(B, 2048)` of RGB images `(B, 3, H, W)` in `[0, 1]`, as pytorch-fid's
    /// `InceptionV3()(x)[0].squeeze()`.
    pub fn pool3(&self, images01: &Tensor) -> Result<Tensor> {
        let x = images01.to_device(&self.device)?.to_dtype(DType::F32)?;
        self.forward_normalized(&Self::preprocess(&x)?)
    }

    /// Pool3 features of images of different sizes, each `(3, H, W)` or `(1, 3, H, W)` in
    /// `[0, 1]`: each is resized on its own, then they run as one batch.
    pub fn pool3_list(&self, images01: &[Tensor]) -> Result<Tensor> {
        let mut batch = Vec::with_capacity(images01.len());
        for img in images01 {
            let img = if img.rank() == 3 { img.unsqueeze(0)? } else { img.clone() };
            let img = img.to_device(&self.device)?.to_dtype(DType::F32)?;
            batch.push(Self::preprocess(&img)?);
        }
        self.forward_normalized(&Tensor::cat(&batch, 0)?)
    }
}

impl Module for FidInception {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.pool3(xs).map_err(|e| match e {
            crate::error::MetricsError::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_pool_excludes_padding() {
        // 3x3 of ones: every output must stay 1 when padding is not counted.
        let x = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let y = avg_pool3x3_exclude_pad(&x).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for a in v {
            assert!((a - 1.0).abs() < 1e-6, "{a}");
        }
        // 1..9: corner (0,0) averages {1,2,4,5} = 3; centre averages all = 5; edge (0,1)
        // averages {1,2,3,4,5,6} = 3.5.
        let x = Tensor::arange(1f32, 10.0, &Device::Cpu).unwrap().reshape((1, 1, 3, 3)).unwrap();
        let y: Vec<f32> = avg_pool3x3_exclude_pad(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!((y[0] - 3.0).abs() < 1e-6);
        assert!((y[1] - 3.5).abs() < 1e-6);
        assert!((y[4] - 5.0).abs() < 1e-6);
    }

    #[test]
    fn avg_pool_exclude_pad_on_random_input() {
        let x = Tensor::rand(0f32, 1.0, (2, 3, 9, 8), &Device::Cpu).unwrap();
        let y = avg_pool3x3_exclude_pad(&x).unwrap();
        let v: Vec<Vec<f32>> = y.get(1).unwrap().get(2).unwrap().to_vec2().unwrap();
        let xv: Vec<Vec<f32>> = x.get(1).unwrap().get(2).unwrap().to_vec2().unwrap();
        let inner: f32 = (3..6).flat_map(|i| (4..7).map(move |j| (i, j))).map(|(i, j)| xv[i][j]).sum();
        assert!((v[4][5] - inner / 9.0).abs() < 1e-6);
        assert!((v[0][7] - (xv[0][6] + xv[0][7] + xv[1][6] + xv[1][7]) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn max_pool_same_ignores_padding() {
        let x = Tensor::new(&[[[[-1f32, -2.0], [-3.0, -4.0]]]], &Device::Cpu).unwrap();
        let y: Vec<f32> = max_pool3x3_same(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(y, vec![-1.0, -1.0, -1.0, -1.0]);
    }
}
