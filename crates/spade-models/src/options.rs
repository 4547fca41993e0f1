//! Network options, read from the reference `opt.txt`, and the norm strings parsed once into enums.
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The param-free normalisation inside SPADE, or the norm after a plain conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormType {
    /// Batch norm (`batch`, and `syncbatch`/`sync_batch`, which are the same on one device).
    Batch,
    /// Instance norm (no affine, no running statistics).
    Instance,
    /// No normalisation (`spectralnone`, or an empty remainder).
    None,
}

/// A parsed `norm_G`/`norm_D`/`norm_E` string for plain conv layers, e.g. `spectralinstance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvNorm {
    pub spectral: bool,
    pub norm: NormType,
}

/// A parsed SPADE norm string, e.g. `spectralspadesyncbatch3x3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpadeNorm {
    /// Spectral norm on the ResBlk convs (conv_0, conv_1, conv_s).
    pub spectral: bool,
    /// The param-free norm of each SPADE layer.
    pub param_free: NormType,
    /// Kernel size of the SPADE convs.
    pub kernel: usize,
}

impl ConvNorm {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Option {
            option: "norm".into(),
            value: s.into(),
            expected: "[spectral](instance|batch|sync_batch|syncbatch|none), e.g. spectralinstance".into(),
        };
        let (spectral, rest) = match s.strip_prefix("spectral") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let norm = match rest {
            "" | "none" => NormType::None,
            "instance" => NormType::Instance,
            "batch" | "sync_batch" | "syncbatch" => NormType::Batch,
            _ => return Err(bad()),
        };
        Ok(Self { spectral, norm })
    }
}

impl SpadeNorm {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Option {
            option: "norm_G".into(),
            value: s.into(),
            expected: "[spectral]spade(batch|syncbatch|instance)<k>x<k>, e.g. spectralspadesyncbatch3x3".into(),
        };
        let spectral = s.contains("spectral");
        let rest = s.replace("spectral", "");
        let rest = rest.strip_prefix("spade").ok_or_else(bad)?;
        let digit = rest.find(|c: char| c.is_ascii_digit()).ok_or_else(bad)?;
        let (name, ks) = rest.split_at(digit);
        let param_free = match name {
            "instance" => NormType::Instance,
            "batch" | "syncbatch" => NormType::Batch,
            _ => return Err(bad()),
        };
        let (k1, k2) = ks.split_once('x').ok_or_else(bad)?;
        let kernel: usize = k1.parse().map_err(|_| bad())?;
        if k2.parse::<usize>().ok() != Some(kernel) || kernel % 2 == 0 {
            return Err(bad());
        }
        Ok(Self { spectral, param_free, kernel })
    }
}

/// Serde, `FromStr` and `Display` for a kind enum through its `parse` (names and aliases, with
/// the error that lists them) and `as_str` (the canonical name): configs deserialize straight
/// into the enum, and write the canonical name back.
#[macro_export]
macro_rules! kind_by_name {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = $crate::Error;
            fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

kind_by_name!(Upsampling);
kind_by_name!(NormString);
kind_by_name!(GeneratorKind);
kind_by_name!(crate::loss::GanMode);

/// What a norm option means: a SPADE norm (`norm_G` of the SPADE generators) or a plain one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParsedNorm {
    Spade(SpadeNorm),
    Conv(ConvNorm),
}

/// A norm option (`norm_G`, `norm_D`, `norm_E`) as written, e.g. `spectralinstance` or
/// `spectralspadesyncbatch3x3`: kept verbatim for `opt.txt` and configs, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormString {
    text: String,
    parsed: ParsedNorm,
}

impl NormString {
    pub fn parse(s: &str) -> Result<Self> {
        let parsed = if s.contains("spade") {
            ParsedNorm::Spade(SpadeNorm::parse(s)?)
        } else {
            ParsedNorm::Conv(ConvNorm::parse(s)?)
        };
        Ok(Self { text: s.to_string(), parsed })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The plain norm, or the error that says a plain one was expected.
    pub fn conv(&self) -> Result<ConvNorm> {
        match self.parsed {
            ParsedNorm::Conv(c) => Ok(c),
            ParsedNorm::Spade(_) => ConvNorm::parse(&self.text),
        }
    }

    /// The SPADE norm, or the error that says a SPADE one was expected.
    pub fn spade(&self) -> Result<SpadeNorm> {
        match self.parsed {
            ParsedNorm::Spade(s) => Ok(s),
            ParsedNorm::Conv(_) => SpadeNorm::parse(&self.text),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsampling {
    Normal,
    More,
    Most,
}

impl Upsampling {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "normal" => Ok(Self::Normal),
            "more" => Ok(Self::More),
            "most" => Ok(Self::Most),
            _ => Err(Error::Option {
                option: "num_upsampling_layers".into(),
                value: s.into(),
                expected: "normal, more or most".into(),
            }),
        }
    }

    pub fn num_layers(self) -> usize {
        match self {
            Self::Normal => 5,
            Self::More => 6,
            Self::Most => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::More => "more",
            Self::Most => "most",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratorKind {
    /// `spade`: the SPADE generator (Table 3's "decoder w/ SPADE").
    Spade,
    /// `pix2pixhd`: pix2pixHD's global generator (pix2pixHD, pix2pixHD++ by its options).
    Pix2PixHD,
    /// `spadeconcat`: Table 3's "decoder w/ Concat" (SPADE norm_G string; no VAE).
    SpadeConcat,
    /// `pix2pixhd_spade`: Table 3's "pix2pixHD++ w/ SPADE" (SPADE norm_G string).
    Pix2PixHDSpade,
    /// `pix2pixhd_concat`: Table 3's "pix2pixHD++ w/ Concat" (plain norm_G string).
    Pix2PixHDConcat,
    /// `crn`: Table 1's CRN (Chen & Koltun 2017), a cascaded refinement network trained by
    /// regression without a discriminator; norm_G is not read (layer norm throughout).
    Crn,
}

impl GeneratorKind {
    pub const ALL: [GeneratorKind; 6] =
        [Self::Spade, Self::Pix2PixHD, Self::SpadeConcat, Self::Pix2PixHDSpade, Self::Pix2PixHDConcat, Self::Crn];

    /// Parses a `netG` value.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| Error::Option {
            option: "netG".into(),
            value: s.into(),
            expected: "spade, pix2pixhd, spadeconcat, pix2pixhd_spade, pix2pixhd_concat or crn".into(),
        })
    }

    /// The `netG` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spade => "spade",
            Self::Pix2PixHD => "pix2pixhd",
            Self::SpadeConcat => "spadeconcat",
            Self::Pix2PixHDSpade => "pix2pixhd_spade",
            Self::Pix2PixHDConcat => "pix2pixhd_concat",
            Self::Crn => "crn",
        }
    }

    /// Whether the generator is trained adversarially (with a discriminator). CRN is trained
    /// by regression alone.
    pub fn uses_discriminator(self) -> bool {
        self != Self::Crn
    }

    /// How many VGG19 convolutions its perceptual loss runs: CRN's reads conv5_2, one conv
    /// further than SPADE's relu5_1.
    pub fn vgg_convs(self) -> usize {
        if self == Self::Crn {
            14
        } else {
            13
        }
    }

    /// Whether norm_G is a SPADE string (`spectralspadesyncbatch3x3`) rather than a plain one.
    pub fn spade_norm_string(self) -> bool {
        matches!(self, Self::Spade | Self::SpadeConcat | Self::Pix2PixHDSpade)
    }
}

/// The options the networks read, with the reference's names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NetOptions {
    pub net_g: GeneratorKind,
    pub label_nc: usize,
    pub contain_dontcare_label: bool,
    pub no_instance: bool,
    pub output_nc: usize,
    pub ngf: usize,
    pub ndf: usize,
    pub norm_g: NormString,
    pub norm_d: NormString,
    pub norm_e: NormString,
    pub use_vae: bool,
    pub z_dim: usize,
    pub crop_size: usize,
    pub aspect_ratio: f64,
    pub num_upsampling_layers: Upsampling,
    pub resnet_n_downsample: usize,
    pub resnet_n_blocks: usize,
    pub resnet_kernel_size: usize,
    pub resnet_initial_kernel_size: usize,
    pub num_d: usize,
    pub n_layers_d: usize,
    pub no_gan_feat_loss: bool,
    pub init_variance: f64,
    /// Every key of the options file, as written (for options this struct does not model).
    pub raw: BTreeMap<String, String>,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            net_g: GeneratorKind::Spade,
            label_nc: 182,
            contain_dontcare_label: true,
            no_instance: false,
            output_nc: 3,
            ngf: 64,
            ndf: 64,
            norm_g: NormString::parse("spectralspadesyncbatch3x3").expect("the default norm_G"),
            norm_d: NormString::parse("spectralinstance").expect("the default norm_D"),
            norm_e: NormString::parse("spectralinstance").expect("the default norm_E"),
            use_vae: false,
            z_dim: 256,
            crop_size: 256,
            aspect_ratio: 1.0,
            num_upsampling_layers: Upsampling::Normal,
            resnet_n_downsample: 4,
            resnet_n_blocks: 9,
            resnet_kernel_size: 3,
            resnet_initial_kernel_size: 7,
            num_d: 2,
            n_layers_d: 4,
            no_gan_feat_loss: false,
            init_variance: 0.02,
            raw: BTreeMap::new(),
        }
    }
}

impl NetOptions {
    /// Number of input channels of the generator: label_nc (+1 don't-care) (+1 instance edges).
    pub fn semantic_nc(&self) -> usize {
        self.label_nc + usize::from(self.contain_dontcare_label) + usize::from(!self.no_instance)
    }

    /// Number of one-hot channels (label_nc, plus one for don't-care).
    pub fn one_hot_nc(&self) -> usize {
        self.label_nc + usize::from(self.contain_dontcare_label)
    }

    /// (sh, sw): the size of the generator's first feature map.
    pub fn latent_size(&self) -> (usize, usize) {
        let sw = self.crop_size / (1 << self.num_upsampling_layers.num_layers());
        let sh = round_half_even(sw as f64 / self.aspect_ratio);
        (sh, sw)
    }

    /// (H, W) of the generated image.
    pub fn output_size(&self) -> (usize, usize) {
        match self.net_g {
            GeneratorKind::Spade | GeneratorKind::SpadeConcat => {
                let (sh, sw) = self.latent_size();
                let f = 1 << self.num_upsampling_layers.num_layers();
                (sh * f, sw * f)
            }
            GeneratorKind::Pix2PixHD
            | GeneratorKind::Pix2PixHDSpade
            | GeneratorKind::Pix2PixHDConcat
            | GeneratorKind::Crn => {
                let w = self.crop_size;
                (round_half_even(w as f64 / self.aspect_ratio), w)
            }
        }
    }

    pub fn spade_norm(&self) -> Result<SpadeNorm> {
        self.norm_g.spade()
    }

    /// Reads the reference `opt.txt` (lines `name: value [default: x]`).
    pub fn from_opt_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::File { file: path.to_path_buf(), message: format!("cannot read options file: {e}") })?;
        Self::from_opt_text(&text).map_err(|e| Error::File { file: path.to_path_buf(), message: e.to_string() })
    }

    pub fn from_opt_text(text: &str) -> Result<Self> {
        let mut raw = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('-') {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else { continue };
            let v = v.split('\t').next().unwrap_or("").split("[default").next().unwrap_or("").trim();
            raw.insert(k.trim().to_string(), v.to_string());
        }
        Self::from_map(raw)
    }

    /// Builds options from `name -> value` strings; absent names keep the reference defaults.
    pub fn from_map(raw: BTreeMap<String, String>) -> Result<Self> {
        let mut o = Self::default();
        let get = |k: &str| raw.get(k).map(|s| s.as_str());
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T> {
            v.parse().map_err(|_| Error::Option {
                option: k.into(),
                value: v.into(),
                expected: format!("a number ({})", std::any::type_name::<T>()),
            })
        }
        fn flag(k: &str, v: &str) -> Result<bool> {
            match v {
                "True" | "true" | "1" => Ok(true),
                "False" | "false" | "0" => Ok(false),
                _ => Err(Error::Option { option: k.into(), value: v.into(), expected: "True or False".into() }),
            }
        }
        if let Some(v) = get("netG") {
            o.net_g = GeneratorKind::parse(v)?;
        }
        macro_rules! set_num {
            ($field:ident, $key:expr) => {
                if let Some(v) = get($key) {
                    o.$field = num($key, v)?;
                }
            };
        }
        macro_rules! set_flag {
            ($field:ident, $key:expr) => {
                if let Some(v) = get($key) {
                    o.$field = flag($key, v)?;
                }
            };
        }
        set_num!(label_nc, "label_nc");
        set_flag!(contain_dontcare_label, "contain_dontcare_label");
        set_flag!(no_instance, "no_instance");
        set_num!(output_nc, "output_nc");
        set_num!(ngf, "ngf");
        set_num!(ndf, "ndf");
        set_flag!(use_vae, "use_vae");
        set_num!(z_dim, "z_dim");
        set_num!(crop_size, "crop_size");
        set_num!(aspect_ratio, "aspect_ratio");
        set_num!(resnet_n_downsample, "resnet_n_downsample");
        set_num!(resnet_n_blocks, "resnet_n_blocks");
        set_num!(resnet_kernel_size, "resnet_kernel_size");
        set_num!(resnet_initial_kernel_size, "resnet_initial_kernel_size");
        set_num!(num_d, "num_D");
        set_num!(n_layers_d, "n_layers_D");
        set_flag!(no_gan_feat_loss, "no_ganFeat_loss");
        set_num!(init_variance, "init_variance");
        if let Some(v) = get("norm_G") {
            o.norm_g = NormString::parse(v)?;
        }
        if let Some(v) = get("norm_D") {
            o.norm_d = NormString::parse(v)?;
        }
        if let Some(v) = get("norm_E") {
            o.norm_e = NormString::parse(v)?;
        }
        if let Some(v) = get("num_upsampling_layers") {
            o.num_upsampling_layers = Upsampling::parse(v)?;
        }
        o.raw = raw;
        o.validate()?;
        Ok(o)
    }

    /// Writes the options in the reference's `opt.txt` format (readable by [`Self::from_opt_text`]
    /// and by a human). Keys of `raw` that this struct does not model are kept.
    pub fn to_opt_text(&self) -> String {
        let mut m = self.raw.clone();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("netG", self.net_g.as_str().into());
        put("label_nc", self.label_nc.to_string());
        put("contain_dontcare_label", py_bool(self.contain_dontcare_label).into());
        put("no_instance", py_bool(self.no_instance).into());
        put("output_nc", self.output_nc.to_string());
        put("ngf", self.ngf.to_string());
        put("ndf", self.ndf.to_string());
        put("norm_G", self.norm_g.to_string());
        put("norm_D", self.norm_d.to_string());
        put("norm_E", self.norm_e.to_string());
        put("use_vae", py_bool(self.use_vae).into());
        put("z_dim", self.z_dim.to_string());
        put("crop_size", self.crop_size.to_string());
        put("aspect_ratio", format!("{:?}", self.aspect_ratio));
        put("num_upsampling_layers", self.num_upsampling_layers.as_str().into());
        put("resnet_n_downsample", self.resnet_n_downsample.to_string());
        put("resnet_n_blocks", self.resnet_n_blocks.to_string());
        put("resnet_kernel_size", self.resnet_kernel_size.to_string());
        put("resnet_initial_kernel_size", self.resnet_initial_kernel_size.to_string());
        put("num_D", self.num_d.to_string());
        put("n_layers_D", self.n_layers_d.to_string());
        put("no_ganFeat_loss", py_bool(self.no_gan_feat_loss).into());
        put("init_variance", self.init_variance.to_string());
        let mut out = String::from("----------------- Options ---------------\n");
        for (k, v) in &m {
            out.push_str(&format!("{k:>25}: {v:<30}\n"));
        }
        out.push_str("----------------- End -------------------\n");
        out
    }

    /// Checks the options that the networks need, with messages naming the option.
    pub fn validate(&self) -> Result<()> {
        let opt = |option: &str, value: String, expected: &str| Error::Option {
            option: option.into(),
            value,
            expected: expected.into(),
        };
        if self.label_nc == 0 {
            return Err(opt("label_nc", "0".into(), "at least 1"));
        }
        if self.ngf == 0 {
            return Err(opt("ngf", "0".into(), "at least 1"));
        }
        for (name, v, lo, hi) in [
            ("ndf", self.ndf, 1, 4096),
            ("output_nc", self.output_nc, 1, 64),
            ("z_dim", self.z_dim, 1, 65536),
            ("num_D", self.num_d, 1, 8),
            ("n_layers_D", self.n_layers_d, 1, 8),
            ("resnet_kernel_size", self.resnet_kernel_size, 1, 31),
            ("resnet_initial_kernel_size", self.resnet_initial_kernel_size, 1, 31),
            ("resnet_n_downsample", self.resnet_n_downsample, 0, 8),
            ("resnet_n_blocks", self.resnet_n_blocks, 0, 64),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(opt(name, v.to_string(), &format!("an integer in {lo}..={hi}")));
            }
        }
        if !(self.init_variance.is_finite() && (0.0..=1.0).contains(&self.init_variance)) {
            return Err(opt("init_variance", format!("{:?}", self.init_variance), "a finite number in [0, 1]"));
        }
        if !(self.aspect_ratio > 0.0) {
            return Err(opt("aspect_ratio", self.aspect_ratio.to_string(), "a positive number"));
        }
        self.norm_d.conv()?;
        self.norm_e.conv()?;
        if self.net_g == GeneratorKind::SpadeConcat && self.use_vae {
            return Err(opt(
                "use_vae",
                "True".into(),
                "False with netG spadeconcat (the decoder w/ Concat starts from the downsampled segmap)",
            ));
        }
        match self.net_g {
            GeneratorKind::Spade | GeneratorKind::SpadeConcat => {
                self.spade_norm()?;
                let (sh, sw) = self.latent_size();
                if sh == 0 || sw == 0 {
                    return Err(opt(
                        "crop_size",
                        self.crop_size.to_string(),
                        &format!(
                            "large enough for a latent map of at least 1x1 (crop_size / 2^{} = {sw}, / aspect_ratio {} = {sh}) with num_upsampling_layers {}",
                            self.num_upsampling_layers.num_layers(),
                            self.aspect_ratio,
                            self.num_upsampling_layers.as_str()
                        ),
                    ));
                }
            }
            GeneratorKind::Pix2PixHD | GeneratorKind::Pix2PixHDConcat => {
                self.norm_g.conv()?;
            }
            GeneratorKind::Pix2PixHDSpade => {
                self.spade_norm()?;
            }
            GeneratorKind::Crn => {
                let (h, w) = self.output_size();
                if h == 0 || w == 0 {
                    return Err(opt(
                        "crop_size",
                        self.crop_size.to_string(),
                        &format!("an output of at least 1x1 (aspect_ratio {})", self.aspect_ratio),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Names the option that most probably differs when checkpoint tensor `name` does not fit:
    /// `found` is the checkpoint's shape (None when the tensor is missing or unexpected).
    pub fn mismatch_hint(&self, name: &str, expected: &[usize], found: Option<&[usize]>) -> String {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let first = name.split('.').next().unwrap_or(name);
        let differs = |d: usize| match found {
            Some(f) => f.len() == expected.len() && f.get(d) != expected.get(d),
            None => false,
        };
        let semantic = |found_nc: Option<usize>| {
            let was =
                found_nc.map(|c| format!(" (the checkpoint was trained with {c} input channels)")).unwrap_or_default();
            format!(
                "label_nc (now {}), contain_dontcare_label (now {}) or no_instance (now {}): semantic_nc is {}{was}",
                self.label_nc,
                py_bool(self.contain_dontcare_label),
                py_bool(self.no_instance),
                self.semantic_nc()
            )
        };
        let rank_differs = matches!(found, Some(f) if f.len() != expected.len());
        let is_input_conv = name.ends_with("mlp_shared.0.weight")
            || (name.starts_with("fc.") && expected.len() == 4)
            || name.starts_with("model.1.")
            || name.contains("model0.0.weight");
        let which = if self.net_g == GeneratorKind::Crn && first.starts_with("module_") {
            format!(
                "ngf (now {}), crop_size (now {}, which sets the number of refinement modules) or {}",
                self.ngf,
                self.crop_size,
                semantic(None)
            )
        } else if name.starts_with("fc.") && (rank_differs || found.is_none()) {
            format!("use_vae (now {})", py_bool(self.use_vae))
        } else if is_input_conv && differs(1) {
            semantic(found.map(|f| f[1]))
        } else if name.starts_with("fc.") && expected.len() == 2 && differs(1) {
            format!("z_dim (now {})", self.z_dim)
        } else if name.starts_with("fc.") && expected.len() <= 2 {
            format!(
                "ngf (now {}) or crop_size / aspect_ratio / num_upsampling_layers (now {} / {} / {})",
                self.ngf,
                self.crop_size,
                self.aspect_ratio,
                self.num_upsampling_layers.as_str()
            )
        } else if first.starts_with("discriminator") {
            format!(
                "ndf (now {}), n_layers_D (now {}), num_D (now {}) or norm_D (now {})",
                self.ndf, self.n_layers_d, self.num_d, self.norm_d
            )
        } else if first == "up_4" {
            format!("num_upsampling_layers (now {})", self.num_upsampling_layers.as_str())
        } else if first == "layer6" {
            format!("crop_size (now {})", self.crop_size)
        } else if first.starts_with("layer") || first.starts_with("fc_") {
            format!("ngf (now {}) or norm_E (now {})", self.ngf, self.norm_e)
        } else if found.is_none()
            || leaf.starts_with("running")
            || leaf == "weight_u"
            || leaf == "weight_v"
            || leaf == "num_batches_tracked"
        {
            format!("norm_G (now {}) or netG (now {:?})", self.norm_g, self.net_g)
        } else if differs(2) || differs(3) {
            format!("norm_G's kernel size or resnet_kernel_size (norm_G now {})", self.norm_g)
        } else {
            format!("ngf (now {})", self.ngf)
        };
        format!("; the option that probably differs: {which}")
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Python 3's `round` (half to even), which the reference uses for the latent height.
pub fn round_half_even(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { r - x.signum() } else { r };
    r.max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_norm_strings() {
        let s = SpadeNorm::parse("spectralspadesyncbatch3x3").unwrap();
        assert_eq!(s, SpadeNorm { spectral: true, param_free: NormType::Batch, kernel: 3 });
        let s = SpadeNorm::parse("spadeinstance5x5").unwrap();
        assert_eq!(s, SpadeNorm { spectral: false, param_free: NormType::Instance, kernel: 5 });
        assert!(SpadeNorm::parse("spectralspadegroup3x3").is_err());
        assert!(SpadeNorm::parse("spadebatch3x5").is_err());
        assert_eq!(ConvNorm::parse("spectralsync_batch").unwrap(), ConvNorm { spectral: true, norm: NormType::Batch });
        assert_eq!(ConvNorm::parse("instance").unwrap(), ConvNorm { spectral: false, norm: NormType::Instance });
        assert_eq!(ConvNorm::parse("spectralnone").unwrap(), ConvNorm { spectral: true, norm: NormType::None });
        assert!(ConvNorm::parse("layer").is_err());
    }

    #[test]
    fn reads_opt_txt_lines() {
        let text = "----------------- Options ---------------\n            aspect_ratio: 2.0                           \n                crop_size: 512                            \t[default: 256]\n                 label_nc: 35                            \t[default: 182]\n   contain_dontcare_label: False\n    num_upsampling_layers: more\n                      ngf: 64\n";
        let o = NetOptions::from_opt_text(text).unwrap();
        assert_eq!(o.crop_size, 512);
        assert_eq!(o.label_nc, 35);
        assert!(!o.contain_dontcare_label);
        assert_eq!(o.num_upsampling_layers, Upsampling::More);
        assert_eq!(o.latent_size(), (4, 8));
        assert_eq!(o.output_size(), (256, 512));
        assert_eq!(o.semantic_nc(), 36);
    }

    #[test]
    fn bad_option_values_are_named() {
        let e = NetOptions::from_opt_text("ngf: many\n").unwrap_err().to_string();
        assert!(e.contains("ngf") && e.contains("many"), "{e}");
        let e = NetOptions::from_opt_text("crop_size: 16\n").unwrap_err().to_string();
        assert!(e.contains("crop_size") && e.contains("= 0"), "{e}");
    }

    #[test]
    fn opt_text_round_trips() {
        let mut o = NetOptions::default();
        o.net_g = GeneratorKind::Pix2PixHD;
        o.norm_g = "instance".parse().unwrap();
        o.label_nc = 35;
        o.aspect_ratio = 2.0;
        o.no_instance = true;
        let back = NetOptions::from_opt_text(&o.to_opt_text()).unwrap();
        assert_eq!(NetOptions { raw: Default::default(), ..back }, o);
    }

    #[test]
    fn table3_generator_kinds_parse_validate_and_round_trip() {
        for kind in GeneratorKind::ALL {
            assert_eq!(GeneratorKind::parse(kind.as_str()).unwrap(), kind);
        }
        let e = NetOptions::from_opt_text("netG: pix2pixhd_group\n").unwrap_err().to_string();
        assert!(e.contains("netG") && e.contains("pix2pixhd_concat"), "{e}");
        let text = "netG: spadeconcat\ncrop_size: 512\naspect_ratio: 2.0\nnum_upsampling_layers: more\n";
        let o = NetOptions::from_opt_text(text).unwrap();
        assert_eq!(o.net_g, GeneratorKind::SpadeConcat);
        assert_eq!(o.output_size(), (256, 512));
        let e = NetOptions::from_opt_text("netG: spadeconcat\nuse_vae: True\n").unwrap_err().to_string();
        assert!(e.contains("use_vae"), "{e}");
        assert!(NetOptions::from_opt_text("netG: spadeconcat\nnorm_G: spectralsync_batch\n").is_err());
        let o = NetOptions::from_opt_text("netG: pix2pixhd_spade\ncrop_size: 100\naspect_ratio: 2.0\n").unwrap();
        assert_eq!(o.output_size(), (50, 100));
        assert!(NetOptions::from_opt_text("netG: pix2pixhd_spade\nnorm_G: spectralsync_batch\n").is_err());
        assert!(NetOptions::from_opt_text("netG: pix2pixhd_concat\n").is_err(), "SPADE default norm_G is not plain");
        let mut o = NetOptions::from_opt_text("netG: pix2pixhd_concat\nnorm_G: spectralsync_batch\n").unwrap();
        o.raw.clear();
        let back = NetOptions::from_opt_text(&o.to_opt_text()).unwrap();
        assert_eq!(NetOptions { raw: Default::default(), ..back }, o);
    }

    #[test]
    fn hint_names_the_differing_option() {
        let o = NetOptions { label_nc: 6, ..Default::default() };
        let h = o.mismatch_hint("fc.weight", &[1024, 8, 3, 3], Some(&[1024, 9, 3, 3]));
        assert!(h.contains("label_nc (now 6)") && h.contains("9 input channels"), "{h}");
        let h = o.mismatch_hint("fc.weight", &[1024, 8, 3, 3], Some(&[16384, 256]));
        assert!(h.contains("use_vae (now False)"), "{h}");
        let h = o.mismatch_hint("head_0.conv_0.weight_orig", &[1024, 1024, 3, 3], Some(&[512, 512, 3, 3]));
        assert!(h.contains("ngf (now 64)"), "{h}");
    }

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(4.0 / 1.5), 3);
    }
}
