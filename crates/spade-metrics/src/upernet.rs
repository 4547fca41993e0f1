//! UperNet-ResNet101, the paper's ADE20K segmenter, as CSAILVision/semantic-segmentation-pytorch
//! builds it (`arch_encoder: resnet101`, `arch_decoder: upernet`, 150 classes; released as
//! `ade20k-resnet101-upernet/encoder_epoch_50.pth` and `decoder_epoch_50.pth`).
//!
//! Encoder (keys of `encoder_epoch_*.pth`): the CSAIL ResNet with a deep stem, `conv1`/`bn1`
//! (3x3 stride 2, 3 -> 64), `conv2`/`bn2` (64 -> 64), `conv3`/`bn3` (64 -> 128), a 3x3 stride-2
//! max pool with padding 1, then `layer1`..`layer4` of torchvision bottlenecks (`conv1`..`conv3`,
//! `bn1`..`bn3`, `downsample.0`/`.1`; the stride on the 3x3), strides 1, 2, 2, 2; its four
//! outputs feed the decoder.
//!
//! Decoder (keys of `decoder_epoch_*.pth`): a pyramid pooling module on the last feature map
//! (`ppm_conv.{0..3}`: adaptive average pools 1, 2, 3, 6, 1x1 conv + BN + ReLU, bilinear back),
//! `ppm_last_conv` (3x3), the FPN (`fpn_in.{0..2}` 1x1 laterals, top-down bilinear upsampling
//! and sums, `fpn_out.{0..2}.0` 3x3), the fusion of all levels at 1/4 (`conv_last.0` 3x3 conv +
//! BN + ReLU, `conv_last.1` 1x1 with bias to the classes). Every BatchNorm (the synchronized BN
//! of the reference, eps 1e-5) is in eval mode and folded.
//!
//! Preprocessing (`mit_semseg/dataset.py`): RGB in `[0, 1]` normalised with the ImageNet mean
//! and standard deviation. The logits at 1/4 are bilinearly upsampled to the input size
//! (`segSize`) before the softmax and argmax; the reference's multi-size test averaging is not
//! done (single scale at the input resolution). ADE20K's label 0 ("other") is don't care and
//! 1..150 are the classes 0..149, which is the dataset's own id mapping here.
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::resize::resize_bilinear;
use crate::segmentation::Preprocessing;
use crate::segnet::{self, Bottleneck, Conv, ConvSpec, NetSegmenter, PaperNet};
use crate::weights::sha256_file;

/// File names of the released ADE20K model (`ade20k-resnet101-upernet/`).
pub const UPERNET_ENCODER_FILE: &str = "encoder_epoch_50.pth";
pub const UPERNET_DECODER_FILE: &str = "decoder_epoch_50.pth";
/// Where they are released.
pub const UPERNET_URL: &str = "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/";

const BN_EPS: f64 = 1e-5;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Hyper-parameters of [`UperNetEncoder`] and [`UperNetDecoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct UperNetConfig {
    pub n_classes: usize,
    /// Bottlenecks per ResNet stage (ResNet-101: 3, 4, 23, 3).
    pub blocks: [usize; 4],
    /// Base width (64): the stem has 64, 64, 128 channels, the stages 4x (1, 2, 4, 8) x width.
    pub width: usize,
    /// PPM branch channels (512) and pooled sizes (1, 2, 3, 6).
    pub ppm_dim: usize,
    pub pool_scales: Vec<usize>,
    /// FPN channels (`upernet`: 512; `upernet_lite`: 256).
    pub fpn_dim: usize,
}

impl UperNetConfig {
    /// `ade20k-resnet101-upernet`.
    pub fn ade20k_resnet101() -> Self {
        Self {
            n_classes: 150,
            blocks: [3, 4, 23, 3],
            width: 64,
            ppm_dim: 512,
            pool_scales: vec![1, 2, 3, 6],
            fpn_dim: 512,
        }
    }

    /// Channels of the four encoder outputs (256, 512, 1024, 2048).
    pub fn fpn_inplanes(&self) -> [usize; 4] {
        [4 * self.width, 8 * self.width, 16 * self.width, 32 * self.width]
    }
}

fn cbr(vb: &VarBuilder, conv: &str, bn: &str, s: ConvSpec) -> Result<Conv> {
    Conv::with_bn(&vb.pp(conv), &vb.pp(bn), s, BN_EPS)
}

/// CSAIL's `Resnet` encoder (no dilation): four feature maps at 1/4, 1/8, 1/16, 1/32.
#[derive(Debug, Clone)]
pub struct UperNetEncoder {
    stem: [Conv; 3],
    stages: Vec<Vec<Bottleneck>>,
}

impl UperNetEncoder {
    /// Builds the encoder from `vb` at the encoder file's root (`conv1.weight`, `layer1...`).
    pub fn new(cfg: &UperNetConfig, vb: VarBuilder) -> Result<Self> {
        let w = cfg.width;
        let stem = [
            cbr(&vb, "conv1", "bn1", ConvSpec::new(3, w, 3).stride(2))?,
            cbr(&vb, "conv2", "bn2", ConvSpec::new(w, w, 3))?,
            cbr(&vb, "conv3", "bn3", ConvSpec::new(w, 2 * w, 3))?,
        ];
        let mut inplanes = 2 * w;
        let mut stages = Vec::new();
        for (si, &n) in cfg.blocks.iter().enumerate() {
            let planes = w << si;
            let out = planes * 4;
            let stride = if si == 0 { 1 } else { 2 };
            let svb = vb.pp(format!("layer{}", si + 1));
            let mut blocks = Vec::new();
            for i in 0..n {
                let b = svb.pp(i);
                let (cin, s) = if i == 0 { (inplanes, stride) } else { (out, 1) };
                let down = if i == 0 && (stride != 1 || inplanes != out) {
                    Some(cbr(&b.pp("downsample"), "0", "1", ConvSpec::new(cin, out, 1).stride(s))?)
                } else {
                    None
                };
                blocks.push(Bottleneck {
                    reduce: cbr(&b, "conv1", "bn1", ConvSpec::new(cin, planes, 1))?,
                    conv3x3: cbr(&b, "conv2", "bn2", ConvSpec::new(planes, planes, 3).stride(s))?,
                    increase: cbr(&b, "conv3", "bn3", ConvSpec::new(planes, out, 1))?,
                    shortcut: down,
                });
            }
            inplanes = out;
            stages.push(blocks);
        }
        Ok(Self { stem, stages })
    }

    /// The four stage outputs (`return_feature_maps=True`).
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = x.clone();
        for c in &self.stem {
            h = c.forward(&h)?.relu()?;
        }
        h = segnet::max_pool2d(&h, 3, 2, 1, false)?;
        let mut outs = Vec::new();
        for stage in &self.stages {
            for b in stage {
                h = b.forward(&h)?;
            }
            outs.push(h.clone());
        }
        Ok(outs)
    }
}

/// CSAIL's `UPerNet` decoder: logits at 1/4 of the input.
#[derive(Debug, Clone)]
pub struct UperNetDecoder {
    pool_scales: Vec<usize>,
    ppm_conv: Vec<Conv>,
    ppm_last: Conv,
    fpn_in: Vec<Conv>,
    fpn_out: Vec<Conv>,
    fuse: Conv,
    classifier: Conv,
}

impl UperNetDecoder {
    /// Builds the decoder from `vb` at the decoder file's root (`ppm_conv.0.0.weight`, ...).
    pub fn new(cfg: &UperNetConfig, vb: VarBuilder) -> Result<Self> {
        let inplanes = cfg.fpn_inplanes();
        let fc_dim = inplanes[3];
        let (f, p) = (cfg.fpn_dim, cfg.ppm_dim);
        let ppm_conv = (0..cfg.pool_scales.len())
            .map(|i| cbr(&vb.pp("ppm_conv").pp(i), "0", "1", ConvSpec::new(fc_dim, p, 1)))
            .collect::<Result<Vec<_>>>()?;
        let ppm_last = cbr(&vb.pp("ppm_last_conv"), "0", "1", ConvSpec::new(fc_dim + cfg.pool_scales.len() * p, f, 3))?;
        let fpn_in = (0..3)
            .map(|i| cbr(&vb.pp("fpn_in").pp(i), "0", "1", ConvSpec::new(inplanes[i], f, 1)))
            .collect::<Result<Vec<_>>>()?;
        let fpn_out = (0..3)
            .map(|i| cbr(&vb.pp("fpn_out").pp(i).pp(0), "0", "1", ConvSpec::new(f, f, 3)))
            .collect::<Result<Vec<_>>>()?;
        let fuse = cbr(&vb.pp("conv_last").pp(0), "0", "1", ConvSpec::new(4 * f, f, 3))?;
        let classifier = Conv::new(&vb.pp("conv_last").pp(1), ConvSpec::new(f, cfg.n_classes, 1), true)?;
        Ok(Self { pool_scales: cfg.pool_scales.clone(), ppm_conv, ppm_last, fpn_in, fpn_out, fuse, classifier })
    }

    /// Logits at the size of the first feature map (1/4).
    pub fn forward(&self, feats: &[Tensor]) -> Result<Tensor> {
        let conv5 = &feats[3];
        let (_, _, h5, w5) = conv5.dims4()?;
        let mut ppm = vec![conv5.clone()];
        for (&s, conv) in self.pool_scales.iter().zip(&self.ppm_conv) {
            // The reference upsamples the pooled map first, then convolves (1x1 + BN + ReLU).
            let pooled = resize_bilinear(&segnet::adaptive_avg_pool2d(conv5, s)?, h5, w5)?;
            ppm.push(conv.forward(&pooled)?.relu()?);
        }
        let mut f = self.ppm_last.forward(&Tensor::cat(&ppm, 1)?)?.relu()?;
        let mut pyramid = vec![f.clone()];
        for i in (0..3).rev() {
            let lateral = self.fpn_in[i].forward(&feats[i])?.relu()?;
            let (_, _, h, w) = lateral.dims4()?;
            f = (lateral + resize_bilinear(&f, h, w)?)?;
            pyramid.push(self.fpn_out[i].forward(&f)?.relu()?);
        }
        pyramid.reverse();
        let (_, _, h, w) = pyramid[0].dims4()?;
        let fused = pyramid.iter().map(|p| resize_bilinear(p, h, w)).collect::<Result<Vec<_>>>()?;
        let x = self.fuse.forward(&Tensor::cat(&fused, 1)?)?.relu()?;
        self.classifier.forward(&x)
    }
}

/// ImageNet normalisation of CSAIL's dataset code.
pub fn preprocessing() -> Preprocessing {
    Preprocessing {
        channel_order: "RGB",
        value_scale: 1.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        output: "single scale; logits at 1/4 bilinear (align_corners false) to the input size (segSize), argmax".into(),
    }
}

/// UperNet: the ResNet encoder and the UperNet decoder, two state dicts.
#[derive(Debug, Clone)]
pub struct UperNet {
    pub encoder: UperNetEncoder,
    pub decoder: UperNetDecoder,
}

impl PaperNet for UperNet {
    fn name(&self) -> String {
        "upernet-resnet101 (CSAILVision semantic-segmentation-pytorch, ADE20K)".into()
    }
    fn preprocessing(&self) -> Preprocessing {
        preprocessing()
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.encoder.forward(x)?)
    }
}

/// UperNet as a [`crate::Segmenter`] over ADE20K's 150 classes.
pub type UperNetSegmenter = NetSegmenter<UperNet>;

impl NetSegmenter<UperNet> {
    /// Loads the encoder and decoder state dicts (`.pth`), each with strict key checking.
    pub fn load(
        cfg: &UperNetConfig,
        encoder: &Path,
        decoder: &Path,
        resolution: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let enc =
            segnet::load_strict(encoder, "the UperNet ResNet encoder", device, |vb| UperNetEncoder::new(cfg, vb))?;
        let dec = segnet::load_strict(decoder, "the UperNet decoder", device, |vb| UperNetDecoder::new(cfg, vb))?;
        let hash = format!("encoder:{},decoder:{}", sha256_file(encoder)?, sha256_file(decoder)?);
        Ok(Self::from_nets(enc, dec, cfg, resolution, hash, device))
    }

    pub fn from_nets(
        encoder: UperNetEncoder,
        decoder: UperNetDecoder,
        cfg: &UperNetConfig,
        resolution: (usize, usize),
        weights_hash: String,
        device: &Device,
    ) -> Self {
        Self::new(UperNet { encoder, decoder }, cfg.n_classes, resolution, weights_hash, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segmentation::Segmenter;
    use candle_core::DType;

    /// `len(ModelBuilder.build_encoder("resnet101").state_dict())` and
    /// `len(ModelBuilder.build_decoder("upernet", fc_dim=2048, num_class=150).state_dict())`
    /// with torch 2.x: every `SynchronizedBatchNorm2d` has 8 keys (`num_batches_tracked`,
    /// `_tmp_running_mean`, `_tmp_running_var`, `_running_iter` included); 106 conv + BN units
    /// in the encoder, 12 and the classifier (weight, bias) in the decoder.
    const ENCODER_KEYS: usize = 954;
    const DECODER_KEYS: usize = 110;

    #[test]
    fn full_model_keys_and_shapes_are_the_released_files() {
        let dev = Device::Cpu;
        let cfg = UperNetConfig::ade20k_resnet101();
        let (_, enc) =
            segnet::random_state_dict(0, &dev, segnet::SYNC_BN_BUFFERS, |vb| UperNetEncoder::new(&cfg, vb)).unwrap();
        let (_, dec) =
            segnet::random_state_dict(0, &dev, segnet::SYNC_BN_BUFFERS, |vb| UperNetDecoder::new(&cfg, vb)).unwrap();
        let shape = |sd: &[(String, Tensor)], k: &str| sd.iter().find(|(n, _)| n == k).map(|(_, t)| t.dims().to_vec());
        assert_eq!(shape(&enc, "conv1.weight"), Some(vec![64, 3, 3, 3]));
        assert_eq!(shape(&enc, "conv3.weight"), Some(vec![128, 64, 3, 3]));
        assert_eq!(shape(&enc, "layer1.0.downsample.0.weight"), Some(vec![256, 128, 1, 1]));
        assert_eq!(shape(&enc, "layer3.22.conv2.weight"), Some(vec![256, 256, 3, 3]));
        assert_eq!(shape(&enc, "layer4.2.bn3.running_var"), Some(vec![2048]));
        assert_eq!(shape(&dec, "ppm_conv.3.0.weight"), Some(vec![512, 2048, 1, 1]));
        assert_eq!(shape(&dec, "ppm_last_conv.0.weight"), Some(vec![512, 4096, 3, 3]));
        assert_eq!(shape(&dec, "fpn_in.0.0.weight"), Some(vec![512, 256, 1, 1]));
        assert_eq!(shape(&dec, "fpn_out.2.0.1.running_mean"), Some(vec![512]));
        assert_eq!(shape(&dec, "conv_last.0.0.weight"), Some(vec![512, 2048, 3, 3]));
        assert_eq!(shape(&dec, "conv_last.1.weight"), Some(vec![150, 512, 1, 1]));
        assert_eq!(shape(&dec, "conv_last.1.bias"), Some(vec![150]));
        assert_eq!((enc.len(), dec.len()), (ENCODER_KEYS, DECODER_KEYS));
    }

    #[test]
    fn round_trip_through_pth_and_segment() {
        let dev = Device::Cpu;
        let cfg = UperNetConfig {
            n_classes: 150,
            blocks: [1, 1, 2, 1],
            width: 4,
            ppm_dim: 8,
            pool_scales: vec![1, 2, 3, 6],
            fpn_dim: 8,
        };
        let (_, enc) =
            segnet::random_state_dict(3, &dev, segnet::SYNC_BN_BUFFERS, |vb| UperNetEncoder::new(&cfg, vb)).unwrap();
        let (_, dec) =
            segnet::random_state_dict(4, &dev, segnet::SYNC_BN_BUFFERS, |vb| UperNetDecoder::new(&cfg, vb)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (pe, pd) = (dir.path().join(UPERNET_ENCODER_FILE), dir.path().join(UPERNET_DECODER_FILE));
        spade_io::pth::save(&pe, &enc).unwrap();
        spade_io::pth::save(&pd, &dec).unwrap();
        let seg = UperNetSegmenter::load(&cfg, &pe, &pd, (64, 64), &dev).unwrap();
        let x = Tensor::rand(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
        let y = seg.segment(&x).unwrap();
        assert_eq!(y.dims(), &[2, 64, 64]);
        assert!(y.flatten_all().unwrap().to_vec1::<u32>().unwrap().iter().all(|&k| k < 150));
        assert!(seg.weights_hash().starts_with("encoder:") && seg.weights_hash().contains(",decoder:"));

        // The encoder and decoder swapped: the error names the file and a key.
        let e = UperNetSegmenter::load(&cfg, &pd, &pe, (64, 64), &dev).err().unwrap().to_string();
        assert!(e.contains(UPERNET_DECODER_FILE) && e.contains("conv1.weight"), "{e}");
        let mut bad = dec.clone();
        let i = bad.iter().position(|(k, _)| k == "conv_last.1.weight").unwrap();
        bad[i].1 = Tensor::zeros((151, 8, 1, 1), DType::F32, &dev).unwrap();
        spade_io::pth::save(&pd, &bad).unwrap();
        let e = UperNetSegmenter::load(&cfg, &pe, &pd, (64, 64), &dev).err().unwrap().to_string();
        assert!(e.contains(UPERNET_DECODER_FILE) && e.contains("conv_last.1.weight") && e.contains("151"), "{e}");
    }
}
