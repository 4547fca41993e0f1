//! `cargo xtask fetch-weights`: brings the weights that the perceptual loss and the evaluation
//! need into the Hugging Face hub cache through hf-hub, verifying SHA-256 where known; offline
//! (or when a download fails) it says which files are missing and how to place them by hand.
use anyhow::{bail, Result};
use spade_metrics::HubFile;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// VGG19 ImageNet weights with torchvision's `features.*` keys (for `loss.vgg_weights_hub`).
    #[arg(long, default_value = "timm/vgg19.tv_in1k:model.safetensors")]
    pub vgg: String,
    /// pytorch-fid's Inception weights in a hub repo of your choice (`org/name:file`); there is
    /// no official hub copy, so by default only the manual instructions are printed.
    #[arg(long)]
    pub inception: Option<String>,
    /// SegFormer checkpoint for ADE20K/Cityscapes evaluation (`org/name:file`).
    #[arg(long, default_value = "nvidia/segformer-b0-finetuned-ade-512-512:model.safetensors")]
    pub segformer: String,
    /// Only look in the cache; never download.
    #[arg(long)]
    pub offline: bool,
}

const INCEPTION_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

pub fn run(args: Args) -> Result<()> {
    let mut missing = Vec::new();
    let mut items: Vec<(&str, String)> =
        vec![("VGG19 (perceptual loss)", args.vgg.clone()), ("SegFormer (evaluation)", args.segformer.clone())];
    if let Some(i) = &args.inception {
        items.push(("Inception (FID)", i.clone()));
    }
    for (what, spec) in items {
        let mut hub = HubFile::parse(&spec)?;
        hub.allow_download = !args.offline;
        match hub.resolve() {
            Ok(r) => println!(
                "ok       {what}: {} (sha256 {}{})",
                r.path.display(),
                r.sha256,
                if r.verified { ", verified" } else { "" }
            ),
            Err(e) => {
                let (repo, file) = spec.split_once(':').unwrap_or((&spec, ""));
                println!("missing  {what}: {e}");
                println!(
                    "         place it by hand: $HF_HOME/hub/models--{}/snapshots/<rev>/{file} with refs/main containing <rev> (HF_HOME defaults to ~/.cache/huggingface)",
                    repo.replace('/', "--")
                );
                missing.push(what);
            }
        }
    }
    if args.inception.is_none() {
        println!(
            "note     Inception (FID): no official hub copy. Download {INCEPTION_URL} and pass it with `spade fid --weights FILE` (its SHA-256 starts with 6726825d, checked from the file name), or put it in a hub repo of yours and use --inception org/name:file"
        );
    }
    if !missing.is_empty() {
        bail!("{} weight file(s) missing: {}", missing.len(), missing.join(", "));
    }
    Ok(())
}
