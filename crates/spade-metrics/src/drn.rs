//! DRN-D-105 (`DRNSeg("drn_d_105", 19)` of fyu/drn), the paper's Cityscapes segmenter; the
//! released checkpoint is `drn_d_105_cityscapes.pth` (go.yf.io/drn-cityscapes-models).
//!
//! Structure (weight names are `DRNSeg`'s state_dict keys): `base` is the DRN's children
//! without its average pool and classifier, as a `Sequential`, so its parts are numbered:
//! - `base.0`: 7x7 convolution (`base.0.0`) + BatchNorm (`base.0.1`) + ReLU;
//! - `base.1`, `base.2`: 3x3 conv + BN + ReLU (`.0`, `.1`), strides 1 and 2;
//! - `base.3`..`base.6`: torchvision-style bottlenecks (`conv1`/`bn1` 1x1, `conv2`/`bn2` 3x3
//!   carrying the stride and the dilation, `conv3`/`bn3` 1x1, `downsample.0`/`.1` in the first
//!   block), strides 2, 2, 1, 1 and dilations 1, 1, 2, 4;
//! - `base.7`, `base.8`: 3x3 conv + BN + ReLU with dilations 2 and 1 (no residual);
//! - `seg`: 1x1 convolution with bias to the 19 trainId classes;
//! - `up`: depthwise `ConvTranspose2d(19, 19, 16, stride 8, padding 4)` without bias (fixed
//!   bilinear weights, stored in the checkpoint as `up.weight`), back to the input size.
//!
//! Preprocessing (`segment.py test`): RGB in `[0, 1]` normalised by the Cityscapes training
//! mean and standard deviation of `info.json`. The network predicts trainIds; ground truth in
//! labelIds goes through [`cityscapes_label_to_train_id`] (255 = ignore).
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{MetricsError, Result};
use crate::segmentation::{GroundTruthMap, Preprocessing};
use crate::segnet::{self, Bottleneck, Conv, ConvSpec, NetSegmenter, PaperNet};
use crate::weights::sha256_file;

/// File name of the released Cityscapes checkpoint.
pub const DRN_CITYSCAPES_FILE: &str = "drn_d_105_cityscapes.pth";
/// Where it is released (a redirect to the author's file host).
pub const DRN_CITYSCAPES_URL: &str = "http://go.yf.io/drn-cityscapes-models";

const BN_EPS: f64 = 1e-5;

/// Cityscapes mean and standard deviation (RGB, `[0, 1]`) of fyu/drn's `info.json`.
pub const CITYSCAPES_MEAN: [f32; 3] = [0.290_100_95, 0.328_081_45, 0.286_963_94];
pub const CITYSCAPES_STD: [f32; 3] = [0.182_954_05, 0.186_565_61, 0.184_475_09];

/// trainId of each Cityscapes labelId 0..=33 (cityscapesScripts `labels.py`); 255 = ignored.
pub const CITYSCAPES_TRAIN_IDS: [u32; 34] = [
    255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 255, 255, 16, 17, 18,
];

/// Cityscapes labelIds (and anything above 33, e.g. a don't-care id) to the 19 trainIds.
pub fn cityscapes_label_to_train_id() -> GroundTruthMap {
    GroundTruthMap {
        name: "cityscapes labelId -> trainId (19 classes, 255 ignored)".into(),
        table: CITYSCAPES_TRAIN_IDS.to_vec(),
        ignore: 255,
    }
}

/// Hyper-parameters of [`DrnSeg`] (architecture D with bottlenecks).
#[derive(Debug, Clone, PartialEq)]
pub struct DrnConfig {
    pub n_classes: usize,
    /// Blocks or convolutions per level (`drn_d_105`: 1, 1, 3, 4, 23, 3, 1, 1); levels 6 to 8
    /// must be present.
    pub layers: [usize; 8],
    /// Channels per level (16, 32, 64, 128, 256, 512, 512, 512); bottleneck levels output 4x.
    pub channels: [usize; 8],
}

impl DrnConfig {
    /// `DRNSeg("drn_d_105", 19)`.
    pub fn drn_d_105_cityscapes() -> Self {
        Self { n_classes: 19, layers: [1, 1, 3, 4, 23, 3, 1, 1], channels: [16, 32, 64, 128, 256, 512, 512, 512] }
    }
}

#[derive(Debug, Clone)]
enum Level {
    Convs(Vec<Conv>),
    Blocks(Vec<Bottleneck>),
}

/// fyu/drn's `DRNSeg` in eval mode: [`DrnSeg::forward`] gives the upsampled logits.
#[derive(Debug, Clone)]
pub struct DrnSeg {
    levels: Vec<Level>,
    seg: Conv,
    up: Tensor,
}

fn conv_layers(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    n: usize,
    stride: usize,
    dilation: usize,
) -> Result<Vec<Conv>> {
    (0..n)
        .map(|i| {
            let s = ConvSpec::new(if i == 0 { cin } else { cout }, cout, 3).dilated(dilation).stride(if i == 0 {
                stride
            } else {
                1
            });
            Conv::with_bn(&vb.pp(3 * i), &vb.pp(3 * i + 1), s, BN_EPS)
        })
        .collect()
}

impl DrnSeg {
    /// Builds `DRNSeg` from `vb` at the state dict's root (`base.*`, `seg.*`, `up.weight`).
    pub fn new(cfg: &DrnConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.layers[5..].contains(&0) {
            return Err(MetricsError::invalid(
                "DRN levels 6 to 8",
                format!("{:?}", &cfg.layers[5..]),
                "all present (> 0)",
            ));
        }
        let base = vb.pp("base");
        let ch = cfg.channels;
        let mut levels = Vec::new();
        let l0 = Conv::with_bn(&base.pp("0").pp(0), &base.pp("0").pp(1), ConvSpec::new(3, ch[0], 7), BN_EPS)?;
        levels.push(Level::Convs(vec![l0]));
        levels.push(Level::Convs(conv_layers(&base.pp(1), ch[0], ch[0], cfg.layers[0], 1, 1)?));
        levels.push(Level::Convs(conv_layers(&base.pp(2), ch[0], ch[1], cfg.layers[1], 2, 1)?));
        let mut inplanes = ch[1];
        // (level, stride, dilation) of the bottleneck levels; new_level is false for the dilated ones.
        for (li, stride, dil) in [(2usize, 2usize, 1usize), (3, 2, 1), (4, 1, 2), (5, 1, 4)] {
            let lvb = base.pp(li + 1);
            let planes = ch[li];
            let out = planes * 4;
            let mut blocks = Vec::new();
            for i in 0..cfg.layers[li] {
                let b = lvb.pp(i);
                let (cin, s) = if i == 0 { (inplanes, stride) } else { (out, 1) };
                let down = if i == 0 && (stride != 1 || inplanes != out) {
                    Some(Conv::with_bn(
                        &b.pp("downsample").pp(0),
                        &b.pp("downsample").pp(1),
                        ConvSpec::new(cin, out, 1).stride(s),
                        BN_EPS,
                    )?)
                } else {
                    None
                };
                blocks.push(Bottleneck {
                    reduce: Conv::with_bn(&b.pp("conv1"), &b.pp("bn1"), ConvSpec::new(cin, planes, 1), BN_EPS)?,
                    conv3x3: Conv::with_bn(
                        &b.pp("conv2"),
                        &b.pp("bn2"),
                        ConvSpec::new(planes, planes, 3).dilated(dil).stride(s),
                        BN_EPS,
                    )?,
                    increase: Conv::with_bn(&b.pp("conv3"), &b.pp("bn3"), ConvSpec::new(planes, out, 1), BN_EPS)?,
                    shortcut: down,
                });
            }
            inplanes = out;
            levels.push(Level::Blocks(blocks));
        }
        levels.push(Level::Convs(conv_layers(&base.pp(7), inplanes, ch[6], cfg.layers[6], 1, 2)?));
        levels.push(Level::Convs(conv_layers(&base.pp(8), ch[6], ch[7], cfg.layers[7], 1, 1)?));
        let seg = Conv::new(&vb.pp("seg"), ConvSpec::new(ch[7], cfg.n_classes, 1), true)?;
        let up = vb.get((cfg.n_classes, 1, 16, 16), "up.weight")?;
        Ok(Self { levels, seg, up })
    }

    /// Logits at 1/8 (`seg`'s output, before `up`).
    pub fn forward_coarse(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for level in &self.levels {
            match level {
                Level::Convs(cs) => {
                    for c in cs {
                        h = c.forward(&h)?.relu()?;
                    }
                }
                Level::Blocks(bs) => {
                    for b in bs {
                        h = b.forward(&h)?;
                    }
                }
            }
        }
        self.seg.forward(&h)
    }

    /// `up(seg(base(x)))`: logits at 8x the coarse size (the input size for multiples of 8).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let coarse = self.forward_coarse(x)?;
        let c = coarse.dim(1)?;
        // Depthwise transposed convolution, one channel at a time.
        let outs = (0..c)
            .map(|k| -> Result<Tensor> {
                let xk = coarse.narrow(1, k, 1)?.contiguous()?;
                let wk = self.up.narrow(0, k, 1)?.contiguous()?;
                Ok(xk.conv_transpose2d(&wk, 4, 0, 8, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 1)?)
    }
}

/// fyu/drn's Cityscapes input normalisation.
pub fn preprocessing() -> Preprocessing {
    Preprocessing {
        channel_order: "RGB",
        value_scale: 1.0,
        mean: CITYSCAPES_MEAN,
        std: CITYSCAPES_STD,
        output:
            "single scale; logits at 1/8 upsampled x8 by the checkpoint's depthwise ConvTranspose2d (k16 s8 p4), argmax"
                .into(),
    }
}

impl PaperNet for DrnSeg {
    fn name(&self) -> String {
        "drn-d-105 (fyu/drn DRNSeg, Cityscapes trainIds)".into()
    }
    fn preprocessing(&self) -> Preprocessing {
        preprocessing()
    }
    fn ground_truth_map(&self) -> Option<GroundTruthMap> {
        Some(cityscapes_label_to_train_id())
    }
    /// Logits `(B, n_classes, 8h', 8w')`: the network's own learned upsampling.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        DrnSeg::forward(self, x)
    }
    fn resize_to_input(&self) -> bool {
        false
    }
}

/// [`DrnSeg`] as a [`crate::Segmenter`] predicting Cityscapes trainIds.
pub type DrnSegmenter = NetSegmenter<DrnSeg>;

impl NetSegmenter<DrnSeg> {
    /// Loads a `DRNSeg` state dict (`.pth`) with strict key checking.
    pub fn load(cfg: &DrnConfig, path: &Path, resolution: (usize, usize), device: &Device) -> Result<Self> {
        let net = segnet::load_strict(path, "DRN-D-105 (DRNSeg)", device, |vb| DrnSeg::new(cfg, vb))?;
        Ok(Self::from_net(net, cfg, resolution, sha256_file(path)?, device))
    }

    pub fn from_net(
        net: DrnSeg,
        cfg: &DrnConfig,
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

    /// `len(DRNSeg("drn_d_105", 19).state_dict())` with torch 2.x (`num_batches_tracked`
    /// included): 105 conv + BN units of 6 keys, 4 downsample units, `seg` (2), `up` (1).
    const DRN_D_105_KEYS: usize = 651;

    #[test]
    fn full_model_keys_and_shapes_are_drnsegs() {
        let dev = Device::Cpu;
        let cfg = DrnConfig::drn_d_105_cityscapes();
        let (_, sd) = segnet::random_state_dict(0, &dev, segnet::TORCH_BN_BUFFERS, |vb| DrnSeg::new(&cfg, vb)).unwrap();
        let shape = |k: &str| sd.iter().find(|(n, _)| n == k).map(|(_, t)| t.dims().to_vec());
        assert_eq!(shape("base.0.0.weight"), Some(vec![16, 3, 7, 7]));
        assert_eq!(shape("base.0.1.running_mean"), Some(vec![16]));
        assert_eq!(shape("base.2.0.weight"), Some(vec![32, 16, 3, 3]));
        assert_eq!(shape("base.3.0.downsample.0.weight"), Some(vec![256, 32, 1, 1]));
        assert_eq!(shape("base.5.22.conv2.weight"), Some(vec![256, 256, 3, 3]));
        assert_eq!(shape("base.6.0.downsample.1.weight"), Some(vec![2048]));
        assert_eq!(shape("base.7.0.weight"), Some(vec![512, 2048, 3, 3]));
        assert_eq!(shape("base.8.1.running_var"), Some(vec![512]));
        assert_eq!(shape("seg.weight"), Some(vec![19, 512, 1, 1]));
        assert_eq!(shape("up.weight"), Some(vec![19, 1, 16, 16]));
        assert_eq!(shape("base.4.1.downsample.0.weight"), None);
        assert_eq!(sd.len(), DRN_D_105_KEYS);
    }

    #[test]
    fn round_trip_through_pth_and_segment() {
        let dev = Device::Cpu;
        let cfg = DrnConfig { n_classes: 19, layers: [1, 1, 1, 2, 1, 1, 1, 1], channels: [4, 4, 4, 4, 4, 8, 8, 8] };
        let (_, sd) = segnet::random_state_dict(2, &dev, segnet::TORCH_BN_BUFFERS, |vb| DrnSeg::new(&cfg, vb)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DRN_CITYSCAPES_FILE);
        spade_io::pth::save(&path, &sd).unwrap();
        let seg = DrnSegmenter::load(&cfg, &path, (32, 64), &dev).unwrap();
        let x = Tensor::rand(0f32, 1.0, (1, 3, 32, 64), &dev).unwrap();
        assert_eq!(seg.net().forward_coarse(&x).unwrap().dims(), &[1, 19, 4, 8]);
        let y = seg.segment(&x).unwrap();
        assert_eq!(y.dims(), &[1, 32, 64]);
        assert!(y.flatten_all().unwrap().to_vec1::<u32>().unwrap().iter().all(|&k| k < 19));

        let mut bad = sd.clone();
        let i = bad.iter().position(|(k, _)| k == "up.weight").unwrap();
        bad[i].1 = Tensor::zeros((19, 19, 16, 16), DType::F32, &dev).unwrap();
        spade_io::pth::save(&path, &bad).unwrap();
        let e = DrnSegmenter::load(&cfg, &path, (32, 64), &dev).err().unwrap().to_string();
        assert!(e.contains(DRN_CITYSCAPES_FILE) && e.contains("up.weight") && e.contains("[19, 19, 16, 16]"), "{e}");
        let missing: Vec<_> = sd.iter().filter(|(k, _)| k != "base.3.0.downsample.1.bias").cloned().collect();
        spade_io::pth::save(&path, &missing).unwrap();
        let e = DrnSegmenter::load(&cfg, &path, (32, 64), &dev).err().unwrap().to_string();
        assert!(e.contains(DRN_CITYSCAPES_FILE) && e.contains("base.3.0.downsample.1.bias"), "{e}");
    }

    #[test]
    fn label_ids_map_to_train_ids() {
        let m = cityscapes_label_to_train_id();
        assert_eq!(m.apply(&[0, 7, 8, 11, 23, 24, 26, 33, 34, 255]), vec![255, 0, 1, 2, 10, 11, 13, 18, 255, 255]);
        // Every trainId 0..19 appears exactly once.
        let mut ids: Vec<u32> = CITYSCAPES_TRAIN_IDS.iter().copied().filter(|&t| t != 255).collect();
        ids.sort();
        assert_eq!(ids, (0..19).collect::<Vec<u32>>());
    }
}
