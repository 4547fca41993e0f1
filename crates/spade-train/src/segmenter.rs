//! A small segmentation network for the built-in synthetic dataset, trained by the project on
//! the synthetic real images and cached, so that generated images can be scored by mIoU and
//! pixel accuracy. Its own score on real synthetic images is reported beside every result.
use crate::optim::{Adam, AdamConfig};
use crate::run::{Result, TrainError};
use candle_core::{DType, Device, Tensor, D};
use spade_data::{BatchLoader, DatasetConfig, DatasetMode, LoaderOptions, Phase};
use spade_metrics::segmentation::Segmenter;
use spade_models::layers::conv::{Conv2d, ConvSpec};
use spade_models::layers::ops::upsample2x;
use spade_models::ParamStore;
use std::path::Path;

/// Training settings of the synthetic segmenter (part of its cache key).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmenterSpec {
    pub size: usize,
    pub iterations: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// The synthetic split it trains on: `data.synthetic_style` (default all styles).
    #[serde(default)]
    pub style: Option<String>,
    /// `data.synthetic_uniform` of its training split (default 0).
    #[serde(default)]
    pub uniform: f64,
}

impl SegmenterSpec {
    pub fn cache_name(&self) -> String {
        let mut name = format!(
            "synthetic_segmenter_v2_s{}_it{}_b{}_seed{}",
            self.size, self.iterations, self.batch_size, self.seed
        );
        if let Some(st) = &self.style {
            name.push_str(&format!("_style-{st}"));
        }
        if self.uniform > 0.0 {
            name.push_str(&format!("_uniform{}", self.uniform));
        }
        name + ".safetensors"
    }

    /// The synthetic split of `phase` that it trains (and is validated) on.
    pub fn data(&self, phase: Phase) -> DatasetConfig {
        let mut d = DatasetConfig::new(DatasetMode::Synthetic, None);
        d.load_size = Some(self.size);
        d.crop_size = Some(self.size);
        d.phase = phase;
        d.synthetic_style = self.style.clone();
        d.synthetic_uniform = Some(self.uniform);
        d
    }
}

/// Conv encoder-decoder with a skip connection; 64 channels at 1/4 resolution. The output of
/// `c5` (64 channels at full resolution, after its ReLU) is its penultimate feature map.
pub struct SyntheticSegmenter {
    c1: Conv2d,
    c2: Conv2d,
    c3: Conv2d,
    c4: Conv2d,
    c5: Conv2d,
    c6: Conv2d,
    store: ParamStore,
    spec: SegmenterSpec,
    hash: String,
}

pub const NUM_CLASSES: usize = spade_data::synthetic::NUM_CLASSES;

impl SyntheticSegmenter {
    fn build(store: ParamStore, spec: SegmenterSpec) -> Result<Self> {
        let vb = store.root();
        let g = 1.0;
        let c = |name: &str, s: ConvSpec| Conv2d::new(&vb.pp(name), s, g);
        Ok(Self {
            c1: c("c1", ConvSpec::new(3, 32, 3))?,
            c2: c("c2", ConvSpec::new(32, 64, 3).stride(2))?,
            c3: c("c3", ConvSpec::new(64, 64, 3).stride(2))?,
            c4: c("c4", ConvSpec::new(64, 64, 3))?,
            c5: c("c5", ConvSpec::new(96, 64, 3))?,
            c6: c("c6", ConvSpec::new(64, NUM_CLASSES as usize, 1))?,
            store,
            spec,
            hash: String::new(),
        })
    }

    /// The penultimate feature map (B, 64, H, W) of images (B, 3, H, W) in [-1, 1].
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let f1 = self.c1.forward_t(x, false)?.relu()?;
        let f = self.c2.forward_t(&f1, false)?.relu()?;
        let f = self.c3.forward_t(&f, false)?.relu()?;
        let f = self.c4.forward_t(&f, false)?.relu()?;
        let f = upsample2x(&upsample2x(&f)?)?;
        self.c5.forward_t(&Tensor::cat(&[&f, &f1], 1)?, false)?.relu()
    }

    /// Logits (B, classes, H, W) of images (B, 3, H, W) in [-1, 1].
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.c6.forward_t(&self.features(x)?, false)
    }

    /// Loads the cached network for `spec` from `cache_dir`, or trains and caches it.
    pub fn load_or_train(cache_dir: &Path, spec: SegmenterSpec, device: &Device, progress: bool) -> Result<Self> {
        let path = cache_dir.join(spec.cache_name());
        let mut net = if path.is_file() {
            let store =
                ParamStore::from_state_dict(spade_io::checkpoint::load_state_dict(&path)?, DType::F32, device).frozen();
            Self::build(store, spec)?
        } else {
            let net = Self::train(spec, device, progress)?;
            std::fs::create_dir_all(cache_dir)
                .map_err(|e| TrainError::File { path: cache_dir.into(), message: e.to_string() })?;
            spade_io::checkpoint::save_safetensors(&path, &net.store.state_dict())?;
            net
        };
        net.hash = sha256_file(&path)?;
        Ok(net)
    }

    fn train(spec: SegmenterSpec, device: &Device, progress: bool) -> Result<Self> {
        let store = ParamStore::fresh(spec.seed, DType::F32, device);
        let net = Self::build(store.clone(), spec.clone())?;
        let params = store.entries().into_iter().map(|e| (e.name, e.var)).collect();
        let mut adam = Adam::new(params, AdamConfig { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 })?;
        let ds = spade_data::open(&spec.data(Phase::Train))?;
        let loader = BatchLoader::new(ds, LoaderOptions::train(spec.batch_size, spec.seed))?;
        let bar = if progress {
            indicatif::ProgressBar::new(spec.iterations as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("segmenter {bar:30} {pos}/{len}  ETA {eta}  {msg}")
                .expect("template"),
        );
        for (it, batch) in loader.take(spec.iterations).enumerate() {
            let batch = batch?;
            let (labels, images) = label_image_tensors(&batch.samples, device)?;
            let logits = net.logits(&images)?;
            let loss = cross_entropy(&logits, &labels)?;
            adam.set_lr(2e-3 * (1.0 - it as f64 / spec.iterations as f64).max(0.05));
            adam.step_from_store(&loss.backward()?)?;
            bar.set_message(format!("loss {:.3}", loss.to_scalar::<f32>()?));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(net)
    }
}

/// Class ids (B, H, W) as u32 and images (B, 3, H, W) from samples.
pub fn label_image_tensors(samples: &[spade_data::Sample], device: &Device) -> Result<(Tensor, Tensor)> {
    let (h, w) = (samples[0].label.height, samples[0].label.width);
    let ids: Vec<u32> = samples.iter().flat_map(|s| s.label.data.iter().copied()).collect();
    let mut img = Vec::with_capacity(samples.len() * 3 * h * w);
    for s in samples {
        img.extend_from_slice(&s.image.as_ref().expect("synthetic samples have images").data);
    }
    Ok((
        Tensor::from_vec(ids, (samples.len(), h, w), device)?,
        Tensor::from_vec(img, (samples.len(), 3, h, w), device)?,
    ))
}

/// Mean pixel cross-entropy of logits (B, C, H, W) against ids (B, H, W).
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let c = logits.dim(1)?;
    let flat = logits.permute((0, 2, 3, 1))?.reshape(((), c))?;
    let logp = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
    let idx = labels.flatten_all()?.to_dtype(DType::U32)?.unsqueeze(1)?;
    logp.gather(&idx, 1)?.mean_all()?.neg()
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| TrainError::File { path: path.into(), message: e.to_string() })?;
    Ok(format!("{:x}", sha2::Sha256::digest(bytes)))
}

impl Segmenter for SyntheticSegmenter {
    fn name(&self) -> String {
        format!(
            "synthetic-segmenter ({} iterations on synthetic train images at {}x{}, style {}, {}% single-class scenes)",
            self.spec.iterations,
            self.spec.size,
            self.spec.size,
            self.spec.style.as_deref().unwrap_or("all"),
            self.spec.uniform * 100.0
        )
    }
    fn weights_hash(&self) -> String {
        self.hash.clone()
    }
    fn input_resolution(&self) -> (usize, usize) {
        (self.spec.size, self.spec.size)
    }
    fn num_classes(&self) -> usize {
        NUM_CLASSES
    }
    fn segment(&self, images: &Tensor) -> spade_metrics::Result<Tensor> {
        // The trait takes [0, 1]; the network was trained on [-1, 1].
        let x = ((images * 2.0)? - 1.0)?;
        Ok(self.logits(&x)?.argmax(1)?.to_dtype(DType::U32)?)
    }
    fn penultimate_features(&self, images: &Tensor) -> Option<spade_metrics::Result<Tensor>> {
        let f = || -> candle_core::Result<Tensor> { self.features(&((images * 2.0)? - 1.0)?)?.mean((2, 3)) };
        Some(f().map_err(Into::into))
    }
}
