//! DeepLabV2-ResNet101 with multi-scale inputs (MSC), the paper's COCO-Stuff segmenter, as
//! kazuto1011/deeplab-pytorch builds it (`DeepLabV2_ResNet101_MSC`, released checkpoint
//! `deeplabv2_resnet101_msc-cocostuff164k-100000.pth`, 182 classes).
//!
//! Structure (weight names are that checkpoint's state_dict keys, under `base.`):
//! - `layer1`: stem `conv1` (`_ConvBnReLU` 7x7 stride 2: `conv.weight`, `bn.*`) and a 3x3
//!   stride-2 max pool with padding 1 and `ceil_mode=True`;
//! - `layer2`..`layer5`: MSRA bottlenecks `block{i}` (`reduce` 1x1 carrying the stride,
//!   `conv3x3` dilated, `increase` 1x1, `shortcut` 1x1 in the first block only), strides
//!   1, 2, 1, 1 and dilations 1, 1, 2, 4 (output stride 8);
//! - `aspp`: `c0`..`c3`, 3x3 convolutions with bias, dilation = padding = 6, 12, 18, 24, summed.
//!
//! BatchNorm is frozen (eval statistics, eps 1e-5) and folded into the convolutions. MSC runs
//! the base on the input and on bilinear rescalings by 0.5 and 0.75 (`scale_factor`, no
//! `align_corners`), upsamples those logits to the full-scale logits' size and takes the
//! pixel-wise max.
//!
//! Preprocessing (deeplab-pytorch's `demo.py`/`main.py test`): caffe style, BGR in `[0, 255]`
//! minus the mean (B 104.008, G 116.669, R 122.675), no scaling by a standard deviation. The
//! logits (1/8 of the input) are bilinearly upsampled to the input size before the argmax.
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::resize::{resize_bilinear, resize_bilinear_by_factor};
use crate::segmentation::Preprocessing;
use crate::segnet::{self, Bottleneck, Conv, ConvSpec, NetSegmenter, PaperNet};
use crate::weights::sha256_file;

/// File name of the released COCO-Stuff 164k checkpoint.
pub const DEEPLABV2_COCOSTUFF_FILE: &str = "deeplabv2_resnet101_msc-cocostuff164k-100000.pth";
/// Where it is released.
pub const DEEPLABV2_COCOSTUFF_URL: &str =
    "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/deeplabv2_resnet101_msc-cocostuff164k-100000.pth";

const BN_EPS: f64 = 1e-5;

/// Hyper-parameters of [`DeepLabV2`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeepLabV2Config {
    pub n_classes: usize,
    /// Bottlenecks in `layer2`..`layer5` (ResNet-101: 3, 4, 23, 3).
    pub n_blocks: [usize; 4],
    /// ASPP dilations (6, 12, 18, 24).
    pub atrous_rates: Vec<usize>,
    /// Extra MSC input scales besides 1 (0.5, 0.75).
    pub scales: Vec<f64>,
    /// Channels of the stem (64); the layers have 4, 8, 16 and 32 times as many.
    pub width: usize,
}

impl DeepLabV2Config {
    /// The released COCO-Stuff 164k model.
    pub fn cocostuff164k() -> Self {
        Self {
            n_classes: 182,
            n_blocks: [3, 4, 23, 3],
            atrous_rates: vec![6, 12, 18, 24],
            scales: vec![0.5, 0.75],
            width: 64,
        }
    }
}

fn conv_bn_relu(vb: &VarBuilder, s: ConvSpec) -> Result<Conv> {
    Conv::with_bn(&vb.pp("conv"), &vb.pp("bn"), s, BN_EPS)
}

/// deeplab-pytorch's `_Bottleneck` (`reduce`, `conv3x3`, `increase`, `shortcut`).
fn bottleneck(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    stride: usize,
    dilation: usize,
    downsample: bool,
) -> Result<Bottleneck> {
    let mid = cout / 4;
    Ok(Bottleneck {
        reduce: conv_bn_relu(&vb.pp("reduce"), ConvSpec::new(cin, mid, 1).stride(stride))?,
        conv3x3: conv_bn_relu(&vb.pp("conv3x3"), ConvSpec::new(mid, mid, 3).dilated(dilation))?,
        increase: conv_bn_relu(&vb.pp("increase"), ConvSpec::new(mid, cout, 1))?,
        shortcut: if downsample {
            Some(conv_bn_relu(&vb.pp("shortcut"), ConvSpec::new(cin, cout, 1).stride(stride))?)
        } else {
            None
        },
    })
}

/// DeepLabV2 with its MSC wrapper: [`DeepLabV2::forward`] gives the fused logits at 1/8 of the
/// (normalised) input.
#[derive(Debug, Clone)]
pub struct DeepLabV2 {
    stem: Conv,
    layers: Vec<Vec<Bottleneck>>,
    aspp: Vec<Conv>,
    scales: Vec<f64>,
}

impl DeepLabV2 {
    /// Builds the network from `vb` at the state dict's root (keys `base.layer1...`).
    pub fn new(cfg: &DeepLabV2Config, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("base");
        let ch: Vec<usize> = (0..6).map(|p| cfg.width << p).collect();
        let stem = conv_bn_relu(&vb.pp("layer1").pp("conv1"), ConvSpec::new(3, ch[0], 7).stride(2))?;
        // (blocks, in, out, stride, dilation) of layer2..layer5.
        let plan = [
            (cfg.n_blocks[0], ch[0], ch[2], 1, 1),
            (cfg.n_blocks[1], ch[2], ch[3], 2, 1),
            (cfg.n_blocks[2], ch[3], ch[4], 1, 2),
            (cfg.n_blocks[3], ch[4], ch[5], 1, 4),
        ];
        let mut layers = Vec::new();
        for (li, &(n, cin, cout, stride, dil)) in plan.iter().enumerate() {
            let lvb = vb.pp(format!("layer{}", li + 2));
            let blocks = (0..n)
                .map(|i| {
                    let (bin, bs) = if i == 0 { (cin, stride) } else { (cout, 1) };
                    bottleneck(&lvb.pp(format!("block{}", i + 1)), bin, cout, bs, dil, i == 0)
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(blocks);
        }
        let aspp = cfg
            .atrous_rates
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                Conv::new(&vb.pp("aspp").pp(format!("c{i}")), ConvSpec::new(ch[5], cfg.n_classes, 3).dilated(r), true)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stem, layers, aspp, scales: cfg.scales.clone() })
    }

    /// The base network (no MSC): logits at 1/8.
    pub fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.stem.forward(x)?.relu()?;
        h = segnet::max_pool2d(&h, 3, 2, 1, true)?;
        for layer in &self.layers {
            for b in layer {
                h = b.forward(&h)?;
            }
        }
        let mut out = self.aspp[0].forward(&h)?;
        for c in &self.aspp[1..] {
            out = (out + c.forward(&h)?)?;
        }
        Ok(out)
    }

    /// MSC in eval mode: the pixel-wise max of the logits at scale 1 and at each extra scale
    /// (upsampled to scale 1's logits).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.forward_base(x)?;
        let (_, _, h, w) = logits.dims4()?;
        let mut max = logits;
        for &p in &self.scales {
            let xs = resize_bilinear_by_factor(x, p)?;
            let l = resize_bilinear(&self.forward_base(&xs)?, h, w)?;
            max = max.maximum(&l)?;
        }
        Ok(max)
    }
}

/// caffe-style input of deeplab-pytorch: BGR `[0, 255]` minus the ImageNet BGR mean.
pub fn preprocessing() -> Preprocessing {
    Preprocessing {
        channel_order: "BGR",
        value_scale: 255.0,
        mean: [104.008, 116.669, 122.675],
        std: [1.0, 1.0, 1.0],
        output: "MSC (scales 1, 0.5, 0.75; pixel-wise max) logits at 1/8, bilinear (align_corners false) to the input size, argmax".into(),
    }
}

impl PaperNet for DeepLabV2 {
    fn name(&self) -> String {
        "deeplabv2-resnet101-msc (kazuto1011/deeplab-pytorch, COCO-Stuff 164k)".into()
    }
    fn preprocessing(&self) -> Preprocessing {
        preprocessing()
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        DeepLabV2::forward(self, x)
    }
}

/// [`DeepLabV2`] as a [`crate::Segmenter`].
pub type DeepLabV2Segmenter = NetSegmenter<DeepLabV2>;

impl NetSegmenter<DeepLabV2> {
    /// Loads a deeplab-pytorch state dict (`.pth`) with strict key checking.
    pub fn load(cfg: &DeepLabV2Config, path: &Path, resolution: (usize, usize), device: &Device) -> Result<Self> {
        let net = segnet::load_strict(path, "DeepLabV2-ResNet101 (MSC)", device, |vb| DeepLabV2::new(cfg, vb))?;
        Ok(Self::from_net(net, cfg, resolution, sha256_file(path)?, device))
    }

    pub fn from_net(
        net: DeepLabV2,
        cfg: &DeepLabV2Config,
        resolution: (usize, usize),
        weights_hash: String,
        device: &Device,
    ) -> Self {
        Self::new(net, cfg.n_classes, resolution, weights_hash, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segmentation::Segmenter;
    use candle_core::DType;

    fn tiny() -> DeepLabV2Config {
        DeepLabV2Config {
            n_classes: 5,
            n_blocks: [1, 2, 1, 1],
            atrous_rates: vec![6, 12, 18, 24],
            scales: vec![0.5, 0.75],
            width: 4,
        }
    }

    #[test]
    fn full_model_keys_and_shapes_are_the_released_checkpoints() {
        let dev = Device::Cpu;
        let cfg = DeepLabV2Config { width: 64, ..DeepLabV2Config::cocostuff164k() };
        let (_, sd) =
            segnet::random_state_dict(0, &dev, segnet::TORCH_BN_BUFFERS, |vb| DeepLabV2::new(&cfg, vb)).unwrap();
        let shape = |k: &str| sd.iter().find(|(n, _)| n == k).map(|(_, t)| t.dims().to_vec());
        assert_eq!(shape("base.layer1.conv1.conv.weight"), Some(vec![64, 3, 7, 7]));
        assert_eq!(shape("base.layer1.conv1.bn.running_var"), Some(vec![64]));
        assert_eq!(shape("base.layer2.block1.shortcut.conv.weight"), Some(vec![256, 64, 1, 1]));
        assert_eq!(shape("base.layer4.block23.conv3x3.conv.weight"), Some(vec![256, 256, 3, 3]));
        assert_eq!(shape("base.layer5.block3.increase.bn.weight"), Some(vec![2048]));
        assert_eq!(shape("base.aspp.c3.weight"), Some(vec![182, 2048, 3, 3]));
        assert_eq!(shape("base.aspp.c0.bias"), Some(vec![182]));
        assert_eq!(shape("base.layer3.block2.shortcut.conv.weight"), None);
        assert_eq!(sd.len(), DEEPLABV2_KEYS);
    }

    /// `len(DeepLabV2_ResNet101_MSC(n_classes=182).state_dict())` in deeplab-pytorch (torch
    /// 2.x): 104 conv + BN units of 6 keys (with `num_batches_tracked`) and 4 ASPP convolutions
    /// with bias.
    const DEEPLABV2_KEYS: usize = 632;

    #[test]
    fn round_trip_through_pth_and_segment() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let (_, sd) =
            segnet::random_state_dict(1, &dev, segnet::TORCH_BN_BUFFERS, |vb| DeepLabV2::new(&cfg, vb)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deeplab.pth");
        spade_io::pth::save(&path, &sd).unwrap();
        let seg = DeepLabV2Segmenter::load(&cfg, &path, (40, 36), &dev).unwrap();
        let x = Tensor::rand(0f32, 1.0, (2, 3, 40, 36), &dev).unwrap();
        let logits = seg.logits(&x).unwrap();
        assert_eq!(logits.dims(), &[2, 5, 40, 36]);
        let y = seg.segment(&x).unwrap();
        assert_eq!(y.dims(), &[2, 40, 36]);
        assert!(y.flatten_all().unwrap().to_vec1::<u32>().unwrap().iter().all(|&k| k < 5));
        assert_eq!(seg.weights_hash(), sha256_file(&path).unwrap());
        // Base logits at 1/8 (ceil-mode pool): 40 -> 20 -> 11 (ceil) -> 6.
        let base = seg.net().forward_base(&x).unwrap();
        assert_eq!(base.dims(), &[2, 5, 6, 5]);

        // A misshaped key and a missing key: errors name the file and the key.
        let mut bad = sd.clone();
        let i = bad.iter().position(|(k, _)| k == "base.aspp.c1.bias").unwrap();
        bad[i].1 = Tensor::zeros(4, DType::F32, &dev).unwrap();
        spade_io::pth::save(&path, &bad).unwrap();
        let e = DeepLabV2Segmenter::load(&cfg, &path, (40, 36), &dev).err().unwrap().to_string();
        assert!(e.contains("deeplab.pth") && e.contains("base.aspp.c1.bias") && e.contains("[4]"), "{e}");
        let missing: Vec<_> =
            sd.iter().filter(|(k, _)| k != "base.layer3.block1.reduce.bn.running_mean").cloned().collect();
        spade_io::pth::save(&path, &missing).unwrap();
        let e = DeepLabV2Segmenter::load(&cfg, &path, (40, 36), &dev).err().unwrap().to_string();
        assert!(e.contains("deeplab.pth") && e.contains("base.layer3.block1.reduce.bn.running_mean"), "{e}");
        // An unexpected key is rejected too.
        let mut extra = sd.clone();
        extra.push(("base.fc.weight".into(), Tensor::zeros(3, DType::F32, &dev).unwrap()));
        spade_io::pth::save(&path, &extra).unwrap();
        let e = DeepLabV2Segmenter::load(&cfg, &path, (40, 36), &dev).err().unwrap().to_string();
        assert!(e.contains("unexpected") && e.contains("base.fc.weight"), "{e}");
    }
}
