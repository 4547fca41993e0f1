//! Building networks from reference checkpoints (`.pth`, zip or legacy, and `.safetensors`).
use crate::error::{Error, Result};
use crate::networks::crn::CrnGenerator;
use crate::networks::generator::SpadeGenerator;
use crate::networks::pix2pixhd::Pix2PixHDGenerator;
use crate::networks::variants::{Pix2PixHDVariantGenerator, SpadeConcatGenerator};
use crate::options::{GeneratorKind, NetOptions};
use crate::store::{ParamStore, Vb};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Whichever generator the options' `netG` names.
#[derive(Debug, Clone)]
pub enum Generator {
    Spade(SpadeGenerator),
    Pix2PixHD(Pix2PixHDGenerator),
    /// Table 3's "decoder w/ Concat" (`netG: spadeconcat`).
    SpadeConcat(SpadeConcatGenerator),
    /// Table 3's "pix2pixHD++ w/ SPADE" (`netG: pix2pixhd_spade`).
    Pix2PixHDSpade(Pix2PixHDVariantGenerator),
    /// Table 3's "pix2pixHD++ w/ Concat" (`netG: pix2pixhd_concat`).
    Pix2PixHDConcat(Pix2PixHDVariantGenerator),
    /// Table 1's CRN (`netG: crn`), trained without a discriminator.
    Crn(CrnGenerator),
}

impl Generator {
    pub fn new(opt: &NetOptions, vb: &Vb) -> Result<Self> {
        Ok(match opt.net_g {
            GeneratorKind::Spade => Generator::Spade(SpadeGenerator::new(opt, vb)?),
            GeneratorKind::Pix2PixHD => Generator::Pix2PixHD(Pix2PixHDGenerator::new(opt, vb)?),
            GeneratorKind::SpadeConcat => Generator::SpadeConcat(SpadeConcatGenerator::new(opt, vb)?),
            GeneratorKind::Pix2PixHDSpade => Generator::Pix2PixHDSpade(Pix2PixHDVariantGenerator::new_spade(opt, vb)?),
            GeneratorKind::Pix2PixHDConcat => {
                Generator::Pix2PixHDConcat(Pix2PixHDVariantGenerator::new_concat(opt, vb)?)
            }
            GeneratorKind::Crn => Generator::Crn(CrnGenerator::new(opt, vb)?),
        })
    }

    /// `z` is used by a SPADE generator built with use_vae (random when None), ignored otherwise.
    pub fn forward_t(&self, seg: &Tensor, z: Option<&Tensor>, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Generator::Spade(g) => g.forward_t(seg, z, train),
            Generator::Pix2PixHD(g) => g.forward_t(seg, train),
            Generator::SpadeConcat(g) => g.forward_t(seg, train),
            Generator::Pix2PixHDSpade(g) | Generator::Pix2PixHDConcat(g) => g.forward_t(seg, train),
            Generator::Crn(g) => g.forward_t(seg, train),
        }
    }

    pub fn uses_z(&self) -> bool {
        matches!(self, Generator::Spade(g) if g.uses_z())
    }

    /// Inference on a batch of semantics: with z ~ N(0, 1) drawn from `seed` (one row of
    /// `z_dim` per sample) when the generator takes z, deterministic otherwise.
    pub fn generate(&self, seg: &Tensor, z_dim: usize, seed: u64) -> candle_core::Result<Tensor> {
        use rand::SeedableRng;
        let z = if self.uses_z() {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            Some(crate::networks::encoder::randn(&mut rng, (seg.dim(0)?, z_dim), seg.device())?)
        } else {
            None
        };
        self.forward_t(seg, z.as_ref(), false)
    }
}

/// Builds a network with `build` from the state_dict in `path`, checking that every tensor the
/// options need is there with the right shape and that nothing is left over. Errors name the
/// file, the tensor, both shapes and the option that probably differs.
pub fn load_network<T>(
    path: &Path,
    opt: &NetOptions,
    device: &Device,
    frozen: bool,
    build: impl FnOnce(&Vb) -> Result<T>,
) -> Result<(T, ParamStore)> {
    let tensors = spade_io::checkpoint::load_state_dict(path)?;
    let hint_opt = opt.clone();
    let mut store = ParamStore::from_state_dict(tensors, DType::F32, device)
        .with_hint(move |name, e, f| hint_opt.mismatch_hint(name, e, f));
    if frozen {
        store = store.frozen();
    }
    let in_file = |e: Error| match e {
        e @ (Error::ShapeMismatch { .. } | Error::MissingTensor { .. } | Error::UnexpectedTensors { .. }) => {
            Error::File { file: path.to_path_buf(), message: e.to_string() }
        }
        e => e,
    };
    let net = build(&store.root()).map_err(in_file)?;
    store.check_all_used().map_err(in_file)?;
    Ok((net, store))
}
