//! Experiment configuration: the YAML sections `data`, `model`, `loss`, `train`, `eval`, with
//! the reference's flag names where one exists. Unknown keys are errors.
use serde::{Deserialize, Serialize};
use spade_data::DatasetConfig;
use spade_models::options::{GeneratorKind, NetOptions, Upsampling};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("--set {arg}: {message}")]
    Set { arg: String, message: String },
    #[error(transparent)]
    Model(#[from] spade_models::Error),
    #[error(transparent)]
    Data(#[from] spade_data::DataError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub data: DatasetConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[allow(non_snake_case)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `spade` or `pix2pixhd`.
    pub netG: String,
    pub ngf: usize,
    pub ndf: usize,
    pub norm_G: String,
    pub norm_D: String,
    pub norm_E: String,
    pub use_vae: bool,
    /// With use_vae: train without the style encoder, z ~ N(0, 1) (Table 4's noise input).
    pub no_encoder: bool,
    pub z_dim: usize,
    pub num_upsampling_layers: String,
    pub num_D: usize,
    pub n_layers_D: usize,
    pub resnet_n_downsample: usize,
    pub resnet_n_blocks: usize,
    pub resnet_kernel_size: usize,
    pub resnet_initial_kernel_size: usize,
    pub init_variance: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        let o = NetOptions::default();
        Self {
            netG: "spade".into(),
            ngf: o.ngf,
            ndf: o.ndf,
            norm_G: o.norm_g,
            norm_D: o.norm_d,
            norm_E: o.norm_e,
            use_vae: o.use_vae,
            no_encoder: false,
            z_dim: o.z_dim,
            num_upsampling_layers: "normal".into(),
            num_D: o.num_d,
            n_layers_D: o.n_layers_d,
            resnet_n_downsample: o.resnet_n_downsample,
            resnet_n_blocks: o.resnet_n_blocks,
            resnet_kernel_size: o.resnet_kernel_size,
            resnet_initial_kernel_size: o.resnet_initial_kernel_size,
            init_variance: o.init_variance,
        }
    }
}

#[allow(non_snake_case)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// `hinge`, `ls`, `original` or `w`.
    pub gan_mode: String,
    pub lambda_feat: f64,
    pub lambda_vgg: f64,
    pub lambda_kld: f64,
    pub no_ganFeat_loss: bool,
    /// Train without the VGG19 perceptual loss. The reference trains with it; leaving it out
    /// must be said here, and the run records it.
    pub no_vgg_loss: bool,
    /// VGG19 ImageNet weights (torchvision `vgg19` state_dict, .pth or .safetensors).
    pub vgg_weights: Option<PathBuf>,
    /// Or the same from the Hugging Face hub cache, `org/name:file` (downloaded when absent and
    /// the network allows), e.g. `timm/vgg19.tv_in1k:model.safetensors` (`features.*` keys).
    pub vgg_weights_hub: Option<String>,
    /// Expected SHA-256 (or a prefix of at least 8 hex digits) of the VGG19 weights file.
    pub vgg_weights_sha256: Option<String>,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            gan_mode: "hinge".into(),
            lambda_feat: 10.0,
            lambda_vgg: 10.0,
            lambda_kld: 0.05,
            no_ganFeat_loss: false,
            no_vgg_loss: false,
            vgg_weights: None,
            vgg_weights_hub: None,
            vgg_weights_sha256: None,
        }
    }
}

#[allow(non_snake_case)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub no_TTUR: bool,
    pub batch_size: usize,
    /// Gradient accumulation: each batch of `batch_size` runs as this many micro-batches.
    pub accumulate: usize,
    /// Epochs at the initial learning rate.
    pub niter: usize,
    /// Epochs of linear decay to 0 after `niter`.
    pub niter_decay: usize,
    /// Stop after this many iterations (overrides the epochs when smaller).
    pub max_iters: Option<usize>,
    pub D_steps_per_G: usize,
    pub seed: u64,
    /// Write a checkpoint every this many iterations (and at the end).
    pub save_latest_freq: usize,
    /// Save a sample grid (label | generated | real) every this many iterations.
    pub display_freq: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.0,
            beta2: 0.9,
            no_TTUR: false,
            batch_size: 1,
            accumulate: 1,
            niter: 50,
            niter_decay: 0,
            max_iters: None,
            D_steps_per_G: 1,
            seed: 0,
            save_latest_freq: 5000,
            display_freq: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Number of validation samples to generate and score.
    pub num_samples: usize,
    pub batch_size: usize,
    /// The wash-away test (synthetic dataset): z samples per single-class label map (one per
    /// class); generators without z are deterministic and run once.
    pub uniform_z: usize,
    /// Diversity: the first validation labels, each generated with `diversity_z` samples of z.
    pub diversity_labels: usize,
    pub diversity_z: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { num_samples: 64, batch_size: 4, uniform_z: 3, diversity_labels: 16, diversity_z: 4 }
    }
}

impl ExperimentConfig {
    /// Reads a YAML file and applies `--set key.path=value` overrides (values parsed as YAML).
    pub fn load(path: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File { file: path.into(), message: format!("cannot read: {e}") })?;
        Self::from_yaml(&text, sets).map_err(|e| match e {
            ConfigError::File { message, .. } => ConfigError::File { file: path.into(), message },
            e => e,
        })
    }

    pub fn from_yaml(text: &str, sets: &[String]) -> Result<Self, ConfigError> {
        let file_err = |message: String| ConfigError::File { file: PathBuf::from("<config>"), message };
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| file_err(e.to_string()))?;
        for arg in sets {
            apply_set(&mut value, arg)?;
        }
        serde_yaml_ng::from_value(value).map_err(|e| file_err(e.to_string()))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }

    /// The network options this experiment builds (data options from the resolved dataset).
    pub fn net_options(&self) -> Result<NetOptions, ConfigError> {
        let data = self.data.resolve()?;
        let m = &self.model;
        let net_g = GeneratorKind::parse(&m.netG)?;
        let o = NetOptions {
            net_g,
            label_nc: data.label_nc,
            contain_dontcare_label: data.contain_dontcare_label,
            no_instance: data.no_instance,
            output_nc: 3,
            ngf: m.ngf,
            ndf: m.ndf,
            norm_g: m.norm_G.clone(),
            norm_d: m.norm_D.clone(),
            norm_e: m.norm_E.clone(),
            use_vae: m.use_vae,
            z_dim: m.z_dim,
            crop_size: data.preprocess.crop_size,
            aspect_ratio: data.preprocess.aspect_ratio,
            num_upsampling_layers: Upsampling::parse(&m.num_upsampling_layers)?,
            resnet_n_downsample: m.resnet_n_downsample,
            resnet_n_blocks: m.resnet_n_blocks,
            resnet_kernel_size: m.resnet_kernel_size,
            resnet_initial_kernel_size: m.resnet_initial_kernel_size,
            num_d: m.num_D,
            n_layers_d: m.n_layers_D,
            no_gan_feat_loss: self.loss.no_ganFeat_loss,
            init_variance: m.init_variance,
            raw: Default::default(),
        };
        o.validate()?;
        Ok(o)
    }
}

fn apply_set(root: &mut serde_yaml_ng::Value, arg: &str) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    let err = |m: &str| ConfigError::Set { arg: arg.into(), message: m.into() };
    let (path, raw) = arg.split_once('=').ok_or_else(|| err("expected key.path=value"))?;
    let value: Value = serde_yaml_ng::from_str(raw).map_err(|e| err(&format!("value is not YAML: {e}")))?;
    let mut node = root;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, k) in keys.iter().enumerate() {
        if !node.is_mapping() {
            if node.is_null() {
                *node = Value::Mapping(Default::default());
            } else {
                return Err(err(&format!("`{}` is not a section", keys[..i].join("."))));
            }
        }
        let map = node.as_mapping_mut().expect("mapping");
        let key = Value::String(k.to_string());
        if i + 1 == keys.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = "data:\n  dataset_mode: synthetic\n  crop_size: 64\n  load_size: 64\nmodel:\n  ngf: 8\nloss:\n  no_vgg_loss: true\ntrain:\n  batch_size: 2\n";

    #[test]
    fn reads_sections_and_overrides() {
        let c = ExperimentConfig::from_yaml(
            SMOKE,
            &["train.lr=0.001".into(), "model.norm_G=spectralspadeinstance3x3".into()],
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.001);
        assert_eq!(c.train.batch_size, 2);
        assert_eq!(c.model.ngf, 8);
        assert_eq!(c.model.norm_G, "spectralspadeinstance3x3");
        let o = c.net_options().unwrap();
        assert_eq!(o.crop_size, 64);
        let back = ExperimentConfig::from_yaml(&c.to_yaml(), &[]).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = ExperimentConfig::from_yaml(SMOKE, &["train.learning_rate=1".into()]).unwrap_err().to_string();
        assert!(e.contains("learning_rate"), "{e}");
        let e = ExperimentConfig::from_yaml(SMOKE, &["model.ngf".into()]).unwrap_err().to_string();
        assert!(e.contains("expected key.path=value"), "{e}");
    }
}
