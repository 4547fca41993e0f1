//! Experiment configuration: the YAML sections `data`, `model`, `loss`, `train`, `eval`, with
//! the reference's flag names where one exists. Unknown keys are errors.
use crate::trainer::{LossOptions, OptimOptions};
use serde::{Deserialize, Serialize};
use spade_data::DatasetConfig;
use spade_models::loss::GanMode;
use spade_models::options::{GeneratorKind, NetOptions, NormString, Upsampling};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("--set {arg}: {message}")]
    Set { arg: String, message: String },
    /// A value outside its allowed range: one line naming the key, the value and the range.
    #[error("config value {key} = {value} is out of range: expected {allowed}")]
    Range { key: String, value: String, allowed: String },
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
    /// The generator (`spade`, `pix2pixhd`, ...: [`GeneratorKind`]).
    pub netG: GeneratorKind,
    pub ngf: usize,
    pub ndf: usize,
    pub norm_G: NormString,
    pub norm_D: NormString,
    pub norm_E: NormString,
    pub use_vae: bool,
    /// With use_vae: train without the style encoder, z ~ N(0, 1) (Table 4's noise input).
    pub no_encoder: bool,
    pub z_dim: usize,
    pub num_upsampling_layers: Upsampling,
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
            netG: o.net_g,
            ngf: o.ngf,
            ndf: o.ndf,
            norm_G: o.norm_g,
            norm_D: o.norm_d,
            norm_E: o.norm_e,
            use_vae: o.use_vae,
            no_encoder: false,
            z_dim: o.z_dim,
            num_upsampling_layers: o.num_upsampling_layers,
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
    pub gan_mode: GanMode,
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
    /// The trainer's defaults ([`LossOptions`]), with the VGG loss on.
    fn default() -> Self {
        let o = LossOptions::default();
        Self {
            gan_mode: o.gan_mode,
            lambda_feat: o.lambda_feat,
            lambda_vgg: o.lambda_vgg,
            lambda_kld: o.lambda_kld,
            no_ganFeat_loss: o.no_gan_feat_loss,
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
    /// The optimiser's defaults from [`OptimOptions`]; the schedule's are the reference's.
    fn default() -> Self {
        let o = OptimOptions::default();
        Self {
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            no_TTUR: o.no_ttur,
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

impl LossConfig {
    /// The trainer's loss options.
    pub fn options(&self) -> LossOptions {
        LossOptions {
            gan_mode: self.gan_mode,
            lambda_feat: self.lambda_feat,
            lambda_vgg: self.lambda_vgg,
            lambda_kld: self.lambda_kld,
            no_gan_feat_loss: self.no_ganFeat_loss,
        }
    }
}

impl TrainConfig {
    /// The optimiser's options.
    pub fn optim(&self) -> OptimOptions {
        OptimOptions { lr: self.lr, beta1: self.beta1, beta2: self.beta2, no_ttur: self.no_TTUR }
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
        let cfg: Self = serde_yaml_ng::from_value(value).map_err(|e| file_err(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value against its allowed range (each section's `validate`), so that a
    /// bad value is one line naming it before anything runs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.data.validate().map_err(|e| match e {
            spade_data::DataError::Config { option, value, expected } => {
                ConfigError::Range { key: format!("data.{option}"), value, allowed: expected }
            }
            e => ConfigError::Data(e),
        })?;
        self.model.validate()?;
        self.loss.validate()?;
        self.train.validate()?;
        self.eval.validate()
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }

    /// The network options this experiment builds (data options from the resolved dataset).
    pub fn net_options(&self) -> Result<NetOptions, ConfigError> {
        let data = self.data.resolve()?;
        let m = &self.model;
        let net_g = m.netG;
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
            num_upsampling_layers: m.num_upsampling_layers,
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

fn range_err(key: &str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError::Range { key: key.into(), value: value.to_string(), allowed: allowed.into() }
}

/// `value` within `lo..=hi`.
fn check_int(key: &str, value: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(range_err(key, value, &format!("an integer in {lo}..={hi}")));
    }
    Ok(())
}

/// `value` finite, within `[lo, hi]` (or `(lo, hi]` with `open_lo`, `[lo, hi)` with `open_hi`).
fn check_float(key: &str, value: f64, lo: f64, hi: f64, open_lo: bool, open_hi: bool) -> Result<(), ConfigError> {
    let above = if open_lo { value > lo } else { value >= lo };
    let below = if open_hi { value < hi } else { value <= hi };
    let ok = value.is_finite() && above && below;
    if !ok {
        let range = format!("{}{lo}, {hi}{}", if open_lo { "(" } else { "[" }, if open_hi { ")" } else { "]" });
        return Err(range_err(key, format!("{value:?}"), &format!("a finite number in {range}")));
    }
    Ok(())
}

impl ModelConfig {
    /// Ranges of the `model:` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Which norm strings the generator reads: a SPADE one or a plain one (CRN reads none).
        let norm_g = if self.netG.spade_norm_string() {
            self.norm_G.spade().map(|_| ())
        } else if self.netG == GeneratorKind::Crn {
            Ok(())
        } else {
            self.norm_G.conv().map(|_| ())
        };
        for (key, r) in [
            ("model.norm_G", norm_g),
            ("model.norm_D", self.norm_D.conv().map(|_| ())),
            ("model.norm_E", self.norm_E.conv().map(|_| ())),
        ] {
            if let Err(spade_models::Error::Option { value, expected, .. }) = r {
                return Err(range_err(key, value, &expected));
            }
        }
        check_int("model.ngf", self.ngf, 1, 4096)?;
        check_int("model.ndf", self.ndf, 1, 4096)?;
        check_int("model.z_dim", self.z_dim, 1, 65536)?;
        check_int("model.num_D", self.num_D, 1, 8)?;
        check_int("model.n_layers_D", self.n_layers_D, 1, 8)?;
        check_int("model.resnet_n_downsample", self.resnet_n_downsample, 0, 8)?;
        check_int("model.resnet_n_blocks", self.resnet_n_blocks, 0, 64)?;
        check_int("model.resnet_kernel_size", self.resnet_kernel_size, 1, 31)?;
        check_int("model.resnet_initial_kernel_size", self.resnet_initial_kernel_size, 1, 31)?;
        check_float("model.init_variance", self.init_variance, 0.0, 1.0, false, false)
    }
}

impl LossConfig {
    /// Ranges of the `loss:` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_float("loss.lambda_feat", self.lambda_feat, 0.0, 1e6, false, false)?;
        check_float("loss.lambda_vgg", self.lambda_vgg, 0.0, 1e6, false, false)?;
        check_float("loss.lambda_kld", self.lambda_kld, 0.0, 1e6, false, false)
    }
}

impl TrainConfig {
    /// Ranges of the `train:` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_float("train.lr", self.lr, 0.0, 1.0, true, false)?;
        check_float("train.beta1", self.beta1, 0.0, 1.0, false, true)?;
        check_float("train.beta2", self.beta2, 0.0, 1.0, false, true)?;
        check_int("train.batch_size", self.batch_size, 1, 4096)?;
        check_int("train.accumulate", self.accumulate, 1, self.batch_size)?;
        if self.batch_size % self.accumulate != 0 {
            return Err(range_err(
                "train.accumulate",
                self.accumulate,
                &format!("a divisor of train.batch_size ({})", self.batch_size),
            ));
        }
        check_int("train.D_steps_per_G", self.D_steps_per_G, 1, 1000)?;
        if self.niter.checked_add(self.niter_decay).is_none_or(|e| e > 1_000_000) {
            return Err(range_err(
                "train.niter + train.niter_decay",
                format!("{} + {}", self.niter, self.niter_decay),
                "at most 1000000 epochs",
            ));
        }
        Ok(())
    }
}

impl EvalConfig {
    /// Ranges of the `eval:` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_int("eval.num_samples", self.num_samples, 1, 10_000_000)?;
        check_int("eval.batch_size", self.batch_size, 1, 4096)
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
        assert_eq!(c.model.norm_G.as_str(), "spectralspadeinstance3x3");
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

    #[test]
    fn out_of_range_values_are_one_line_naming_key_value_and_range() {
        let cases = [
            ("train.batch_size=0", "train.batch_size = 0", "1..=4096"),
            ("model.init_variance=.inf", "model.init_variance = inf", "finite"),
            ("model.init_variance=-0.5", "model.init_variance = -0.5", "[0, 1]"),
            ("model.init_variance=.nan", "model.init_variance = NaN", "finite"),
            ("model.num_D=0", "model.num_D = 0", "1..=8"),
            ("model.n_layers_D=0", "model.n_layers_D = 0", "1..=8"),
            ("model.ndf=0", "model.ndf = 0", "1..=4096"),
            ("train.lr=0", "train.lr = 0.0", "(0, 1]"),
            ("train.lr=-1e-4", "train.lr = -0.0001", "(0, 1]"),
            ("train.beta1=1.0", "train.beta1 = 1.0", "[0, 1)"),
            ("train.beta2=.nan", "train.beta2 = NaN", "[0, 1)"),
            ("train.accumulate=0", "train.accumulate = 0", "1..=2"),
            ("train.accumulate=3", "train.accumulate = 3", "1..=2"),
            ("train.D_steps_per_G=0", "train.D_steps_per_G = 0", "1..=1000"),
            ("loss.lambda_feat=-1", "loss.lambda_feat = -1.0", "[0, 1000000]"),
            ("eval.batch_size=0", "eval.batch_size = 0", "1..=4096"),
            ("data.crop_size=0", "data.crop_size = 0", "1..=65536"),
            ("data.aspect_ratio=.inf", "data.aspect_ratio = inf", "(0, 1000]"),
            ("data.label_nc=0", "data.label_nc = 0", "1..=65536"),
        ];
        for (set, key_value, range) in cases {
            let e = ExperimentConfig::from_yaml(SMOKE, &[set.into()]).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, ConfigError::Range { .. }), "{set}: {msg}");
            assert!(msg.contains(key_value) && msg.contains(range) && !msg.contains('\n'), "{set}: {msg}");
        }
        // The defaults and the smoke config are in range.
        ExperimentConfig::from_yaml(SMOKE, &[]).unwrap();
        ExperimentConfig::from_yaml("data:\n  dataset_mode: synthetic\n", &[]).unwrap();
    }
}
