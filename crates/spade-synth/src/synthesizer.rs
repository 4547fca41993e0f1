//! A checkpoint's generator (and encoder) behind one call: label ids in, images out.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use spade_data::resample::{resize_bicubic, resize_nearest, Plane};
use spade_data::{LabelMap, RgbImage};
use spade_models::checkpoint::{load_network, Generator};
use spade_models::networks::encoder::reparameterize;
use spade_models::{ConvEncoder, NetOptions, SemanticsSpec};

use crate::{Error, Result};

/// Where the z of a VAE generator comes from (ignored by generators without z).
#[derive(Debug, Clone)]
pub enum ZSource {
    /// Drawn from the standard normal with the call's random generator.
    Random,
    /// A given (1, z_dim) row.
    Given(Tensor),
    /// Encoded from a style image: the encoder's mean and variance, sampled with the call's
    /// random generator (as the reference's test does).
    Style(RgbImage),
}

/// One image to make.
#[derive(Debug, Clone)]
pub struct Input {
    /// Class ids at the model's size (`0..label_nc`, and `label_nc` for don't care), as
    /// [`Synthesizer::ids_from_map`] makes them.
    pub ids: Vec<u32>,
    /// Instance ids at the model's size. `None` for a model that needs them: the label map's
    /// regions are the instances (each connected region of one class is one instance, so the
    /// instance edges are the regions' outlines).
    pub instance: Option<Vec<u32>>,
    pub z: ZSource,
}

/// A generator with its options, and the encoder when the checkpoint has one and it was asked
/// for. Read-only after loading: one `Synthesizer` serves any number of threads at once.
pub struct Synthesizer {
    opt: NetOptions,
    spec: SemanticsSpec,
    g: Generator,
    encoder: Option<ConvEncoder>,
    device: Device,
}

/// `<dir>/<which>_net_<net>.pth`, or `.safetensors`; `None` when neither exists.
pub fn find_weights(dir: &Path, which: &str, net: &str) -> Option<PathBuf> {
    ["pth", "safetensors"].iter().map(|ext| dir.join(format!("{which}_net_{net}.{ext}"))).find(|p| p.is_file())
}

impl Synthesizer {
    /// Loads `<ckpt>/opt.txt` and `<ckpt>/<which>_net_G.{pth,safetensors}`; with `encoder`,
    /// also `<which>_net_E` when the options say use_vae and the file exists.
    pub fn load(ckpt: &Path, which: &str, device: &Device, encoder: bool) -> Result<Self> {
        let opt = NetOptions::from_opt_file(&ckpt.join("opt.txt"))?;
        let g_path = find_weights(ckpt, which, "G").ok_or_else(|| Error::File {
            path: ckpt.to_path_buf(),
            detail: format!("no {which}_net_G.pth or {which}_net_G.safetensors (is --which-epoch right?)"),
        })?;
        let (g, _) = load_network(&g_path, &opt, device, true, |vb| Generator::new(&opt, vb))?;
        let encoder = match find_weights(ckpt, which, "E") {
            Some(p) if encoder && opt.use_vae => {
                Some(load_network(&p, &opt, device, true, |vb| ConvEncoder::new(&opt, vb))?.0)
            }
            _ => None,
        };
        Ok(Self::new(opt, g, encoder, device.clone()))
    }

    /// From networks already built (random weights in the bench, tests).
    pub fn new(opt: NetOptions, g: Generator, encoder: Option<ConvEncoder>, device: Device) -> Self {
        let spec = SemanticsSpec::from(&opt);
        Synthesizer { opt, spec, g, encoder, device }
    }

    pub fn options(&self) -> &NetOptions {
        &self.opt
    }
    /// (height, width) of the images (and of the label maps it takes).
    pub fn size(&self) -> (usize, usize) {
        self.opt.output_size()
    }
    pub fn label_nc(&self) -> usize {
        self.opt.label_nc
    }
    pub fn uses_z(&self) -> bool {
        self.g.uses_z()
    }
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }
    pub fn needs_instances(&self) -> bool {
        !self.opt.no_instance
    }

    /// A raw label map (file values: 255 is don't care where the options have it) resized
    /// (nearest, as PIL) to the model's size and checked; errors name `name`, the value and
    /// its position.
    pub fn ids_from_map(&self, map: LabelMap, name: &str) -> Result<Vec<u32>> {
        let (h, w) = self.size();
        let mut ids = resize_map(map, h, w);
        self.spec.ids_from_raw(&mut ids, w, name)?;
        Ok(ids)
    }

    /// Class ids of a map already mapped by a dataset (don't care = `label_nc`), resized.
    pub fn ids_from_dataset(&self, map: LabelMap) -> Vec<u32> {
        let (h, w) = self.size();
        resize_map(map, h, w)
    }

    /// An instance map resized (nearest) to the model's size.
    pub fn instances_from_map(&self, map: LabelMap) -> Vec<u32> {
        let (h, w) = self.size();
        resize_map(map, h, w)
    }

    /// A style image as the reference's test loader gives it: bicubic to the model's size, then
    /// [-1, 1], (1, 3, H, W).
    fn style_tensor(&self, img: &RgbImage) -> Result<Tensor> {
        let (h, w) = self.size();
        let plane = resize_bicubic(&Plane::new(img.width, img.height, 3, img.data.clone()), w, h);
        let data: Vec<f32> = plane.data.iter().map(|&v| v as f32 / 255.0 * 2.0 - 1.0).collect();
        Ok(Tensor::from_vec(data, (1, h, w, 3), &self.device)?.permute((0, 3, 1, 2))?.contiguous()?)
    }

    /// Makes one image per input, in one forward pass: (N, 3, H, W) in [-1, 1], on the CPU.
    /// Random draws (z, the encoder's noise) come from `rng` in input order.
    pub fn synthesize(&self, inputs: &[Input], rng: &mut StdRng) -> Result<Tensor> {
        if inputs.is_empty() {
            return Err(Error::BadInput("nothing to synthesize: no label maps".into()));
        }
        let (h, w) = self.size();
        let ids: Vec<&[u32]> = inputs.iter().map(|i| i.ids.as_slice()).collect();
        let insts: Option<Vec<&[u32]>> = self
            .needs_instances()
            .then(|| inputs.iter().map(|i| i.instance.as_deref().unwrap_or(i.ids.as_slice())).collect());
        let seg = self.spec.build(&ids, insts.as_deref(), h, w, &self.device)?;
        let z = if self.uses_z() {
            let mut rows = Vec::with_capacity(inputs.len());
            for input in inputs {
                rows.push(match &input.z {
                    ZSource::Random => self.randn(self.opt.z_dim, rng)?,
                    ZSource::Given(z) => {
                        if z.dims() != [1, self.opt.z_dim] {
                            return Err(Error::BadInput(format!(
                                "z has shape {:?}, expected (1, {}) (z_dim)",
                                z.dims(),
                                self.opt.z_dim
                            )));
                        }
                        z.to_dtype(DType::F32)?.to_device(&self.device)?
                    }
                    ZSource::Style(img) => {
                        let e = self.encoder.as_ref().ok_or_else(|| {
                            Error::BadInput(
                                "a style image needs the checkpoint's encoder (net_E), and it has none".into(),
                            )
                        })?;
                        let (mu, logvar) = e.forward_t(&self.style_tensor(img)?, false)?;
                        let eps = self.randn(mu.dim(1)?, rng)?;
                        reparameterize(&mu, &logvar, &eps)?
                    }
                });
            }
            Some(Tensor::cat(&rows, 0)?)
        } else {
            None
        };
        Ok(self.g.forward_t(&seg, z.as_ref(), false)?.to_device(&Device::Cpu)?)
    }

    fn randn(&self, k: usize, rng: &mut StdRng) -> Result<Tensor> {
        Ok(spade_models::networks::encoder::randn(rng, (1, k), &self.device)?)
    }
}

fn resize_map(map: LabelMap, h: usize, w: usize) -> Vec<u32> {
    if map.height == h && map.width == w {
        return map.data;
    }
    resize_nearest(&Plane::new(map.width, map.height, 1, map.data), w, h).data
}

/// One (3, H, W) image in [-1, 1] as 8-bit RGB: (x + 1) / 2 * 255, clipped and truncated, as
/// the reference's `tensor2im`.
pub fn rgb_from_tensor(img: &Tensor) -> Result<image::RgbImage> {
    let (c, h, w) = img.dims3()?;
    let v: Vec<f32> = img.flatten_all()?.to_vec1()?;
    let mut buf = vec![0u8; h * w * 3];
    for p in 0..h * w {
        for ch in 0..3 {
            let val = v[ch.min(c - 1) * h * w + p];
            buf[p * 3 + ch] = ((val + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0) as u8;
        }
    }
    Ok(image::RgbImage::from_raw(w as u32, h as u32, buf).expect("h * w * 3 bytes"))
}
