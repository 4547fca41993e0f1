//! SegFormer (candle-transformers) as a [`Segmenter`]: the modern track for ADE20K and
//! Cityscapes, e.g. `nvidia/segformer-b0-finetuned-ade-512-512` from a Hugging Face hub cache.
//!
//! Preprocessing as `SegformerImageProcessor`: RGB in `[0, 1]` normalised with the ImageNet
//! mean and standard deviation (the resize to the input resolution happens in
//! [`crate::segmentation::accumulate`], bilinear without antialias). The decoder's logits
//! (at 1/4 resolution) are bilinearly upsampled to the input resolution before the argmax, as
//! `post_process_semantic_segmentation` does.
//!
//! candle-transformers builds the decode head's 1x1 classifier without its bias, while the
//! PyTorch model has one (`decode_head.classifier.bias`); it is added here when present.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::segformer::{Config, SemanticSegmentationModel};

use crate::error::{MetricsError, Result};
use crate::resize::resize_bilinear;
use crate::segmentation::Segmenter;
use crate::weights::{sha256_file, HubFile};

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Default hub repository for ADE20K (150 classes, 512x512).
pub const SEGFORMER_ADE_REPO: &str = "nvidia/segformer-b0-finetuned-ade-512-512";

/// Reads a Hugging Face `config.json` of a SegFormer and its number of labels (`id2label`).
pub fn read_config(path: &Path) -> Result<(Config, usize)> {
    let text = std::fs::read_to_string(path).map_err(|e| MetricsError::io(path, e))?;
    parse_config(&text).map_err(|msg| MetricsError::Weights { path: path.to_path_buf(), msg })
}

/// Parses a SegFormer `config.json`; the number of labels is the size of `id2label`.
pub fn parse_config(text: &str) -> std::result::Result<(Config, usize), String> {
    let config: Config = serde_json::from_str(text).map_err(|e| format!("not a SegFormer config.json: {e}"))?;
    let n = config.id2label.len();
    if n == 0 {
        return Err("config.json has an empty 'id2label'; expected one entry per class".into());
    }
    if config.depths.len() != config.num_encoder_blocks || config.hidden_sizes.len() != config.num_encoder_blocks {
        return Err(format!(
            "config.json: {} encoder blocks but {} depths and {} hidden sizes",
            config.num_encoder_blocks,
            config.depths.len(),
            config.hidden_sizes.len()
        ));
    }
    Ok((config, n))
}

/// A SegFormer semantic segmentation model with its protocol settings.
pub struct SegformerSegmenter {
    model: SemanticSegmentationModel,
    classifier_bias: Option<Tensor>,
    num_classes: usize,
    resolution: (usize, usize),
    name: String,
    weights_hash: String,
    device: Device,
}

impl SegformerSegmenter {
    /// Builds the model from a VarBuilder over the Hugging Face state dict names
    /// (`segformer.encoder...`, `decode_head...`).
    pub fn from_varbuilder(
        config: &Config,
        num_classes: usize,
        vb: VarBuilder,
        resolution: (usize, usize),
        name: impl Into<String>,
        weights_hash: impl Into<String>,
    ) -> Result<Self> {
        let device = vb.device().clone();
        let model = SemanticSegmentationModel::new(config, num_classes, vb.clone())?;
        let bias_name = "decode_head.classifier.bias";
        let classifier_bias = if vb.contains_tensor(bias_name) {
            Some(vb.get(num_classes, bias_name)?.reshape((1, num_classes, 1, 1))?)
        } else {
            None
        };
        Ok(Self {
            model,
            classifier_bias,
            num_classes,
            resolution,
            name: name.into(),
            weights_hash: weights_hash.into(),
            device,
        })
    }

    /// Loads `config.json` and the weights (`model.safetensors`, or `pytorch_model.bin`
    /// through the `.pth` reader) from a folder.
    pub fn from_files(
        config_json: &Path,
        weights: &Path,
        resolution: (usize, usize),
        name: impl Into<String>,
        device: &Device,
    ) -> Result<Self> {
        let (config, n) = read_config(config_json)?;
        let hash = sha256_file(weights)?;
        let is_safetensors = weights.extension().is_some_and(|e| e == "safetensors");
        let vb = if is_safetensors {
            // SAFETY: the file is not modified while mapped (read-only weights).
            unsafe {
                VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)
                    .map_err(|e| MetricsError::Weights { path: weights.to_path_buf(), msg: e.to_string() })?
            }
        } else {
            let t = crate::weights::load_state_dict(weights)?;
            VarBuilder::from_tensors(t.into_iter().collect(), DType::F32, device)
        };
        Self::from_varbuilder(&config, n, vb, resolution, name, hash).map_err(|e| MetricsError::Weights {
            path: weights.to_path_buf(),
            msg: format!("does not match the SegFormer config {}: {e}", config_json.display()),
        })
    }

    /// Loads a hub repository (e.g. [`SEGFORMER_ADE_REPO`]) from the hub cache, downloading
    /// when `allow_download`: `config.json` plus `model.safetensors`, else
    /// `pytorch_model.bin`.
    pub fn from_hub(
        repo: &str,
        cache_dir: Option<PathBuf>,
        allow_download: bool,
        resolution: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let file = |name: &str| {
            let mut h = HubFile::parse(&format!("{repo}:{name}"))?;
            h.cache_dir = cache_dir.clone();
            h.allow_download = allow_download;
            h.resolve()
        };
        let config = file("config.json")?;
        let weights = file("model.safetensors").or_else(|_| file("pytorch_model.bin"))?;
        Self::from_files(&config.path, &weights.path, resolution, repo, device)
    }

    /// Class logits `(B, num_classes, H, W)` at the input resolution.
    pub fn logits(&self, images01: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = images01.dims4()?;
        if c != 3 {
            return Err(MetricsError::invalid("image channels", c, "3 (RGB)"));
        }
        let x = images01.to_device(&self.device)?.to_dtype(DType::F32)?;
        let mean = Tensor::new(&IMAGENET_MEAN, &self.device)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&IMAGENET_STD, &self.device)?.reshape((1, 3, 1, 1))?;
        let x = x.broadcast_sub(&mean)?.broadcast_div(&std)?;
        let mut logits = self.model.forward(&x)?;
        if let Some(b) = &self.classifier_bias {
            logits = logits.broadcast_add(b)?;
        }
        resize_bilinear(&logits, h, w)
    }
}

impl Segmenter for SegformerSegmenter {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn weights_hash(&self) -> String {
        self.weights_hash.clone()
    }

    fn input_resolution(&self) -> (usize, usize) {
        self.resolution
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn segment(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.logits(images)?.argmax(1)?.to_dtype(DType::U32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny SegFormer config (same keys as nvidia/segformer-b0's config.json).
    const TINY: &str = r#"{
        "id2label": {"0": "wall", "1": "floor", "2": "sky"},
        "num_channels": 3, "num_encoder_blocks": 2, "depths": [1, 1],
        "sr_ratios": [2, 1], "hidden_sizes": [8, 16], "patch_sizes": [7, 3],
        "strides": [4, 2], "num_attention_heads": [1, 2], "mlp_ratios": [2, 2],
        "hidden_act": "gelu", "layer_norm_eps": 1e-6, "decoder_hidden_size": 16,
        "model_type": "segformer"
    }"#;

    #[test]
    fn parses_config_and_counts_labels() {
        let (c, n) = parse_config(TINY).unwrap();
        assert_eq!(n, 3);
        assert_eq!(c.strides, vec![4, 2]);
        assert!(parse_config("{}").is_err());
        let bad = TINY.replace("\"depths\": [1, 1]", "\"depths\": [1]");
        assert!(parse_config(&bad).unwrap_err().contains("2 encoder blocks"));
    }

    #[test]
    fn segments_at_input_resolution_and_adds_classifier_bias() {
        let (c, n) = parse_config(TINY).unwrap();
        let dev = Device::Cpu;
        // Zero weights except the classifier bias: logits are the bias everywhere, so the
        // argmax is the class with the largest bias (candle alone would ignore it).
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let _ = SemanticSegmentationModel::new(&c, n, vb.clone()).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            var.set(&var.zeros_like().unwrap()).unwrap();
            assert!(!name.ends_with("classifier.bias"));
        }
        let mut tensors: std::collections::HashMap<String, Tensor> =
            varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        tensors.insert("decode_head.classifier.bias".into(), Tensor::new(&[0.1f32, 0.7, -0.2], &dev).unwrap());
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let seg = SegformerSegmenter::from_varbuilder(&c, n, vb, (32, 48), "tiny", "0").unwrap();
        assert_eq!(seg.num_classes(), 3);
        assert_eq!(seg.input_resolution(), (32, 48));
        let x = Tensor::rand(0f32, 1.0, (2, 3, 32, 48), &dev).unwrap();
        let logits = seg.logits(&x).unwrap();
        assert_eq!(logits.dims(), &[2, 3, 32, 48]);
        let y = seg.segment(&x).unwrap();
        assert_eq!(y.dims(), &[2, 32, 48]);
        assert_eq!(y.dtype(), DType::U32);
        let v: Vec<u32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|&k| k == 1));
    }

    #[test]
    fn loads_from_a_hub_cache_layout_offline() {
        let (c, n) = parse_config(TINY).unwrap();
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let _ = SemanticSegmentationModel::new(&c, n, vb).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--nvidia--segformer-tiny");
        let rev = "fedcba9876543210fedcba9876543210fedcba98";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), rev).unwrap();
        let snap = repo.join("snapshots").join(rev);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), TINY).unwrap();
        varmap.save(snap.join("model.safetensors")).unwrap();
        let seg = SegformerSegmenter::from_hub(
            "nvidia/segformer-tiny",
            Some(cache.path().to_path_buf()),
            false,
            (64, 64),
            &dev,
        )
        .unwrap();
        assert_eq!(seg.name(), "nvidia/segformer-tiny");
        assert_eq!(seg.weights_hash(), sha256_file(&snap.join("model.safetensors")).unwrap());
        let y = seg.segment(&Tensor::zeros((1, 3, 64, 64), DType::F32, &dev).unwrap()).unwrap();
        assert_eq!(y.dims(), &[1, 64, 64]);
        assert!(y.flatten_all().unwrap().to_vec1::<u32>().unwrap().iter().all(|&k| k < 3));
        // Missing repo, downloads off: the error names the cache layout.
        let e = SegformerSegmenter::from_hub("nvidia/absent", Some(cache.path().to_path_buf()), false, (64, 64), &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("models--nvidia--absent"), "{e}");
    }
}
