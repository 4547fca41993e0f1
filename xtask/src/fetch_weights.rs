//! `cargo xtask fetch-weights`: brings the weights that the perceptual loss and the evaluation
//! need into the Hugging Face hub cache through hf-hub, verifying SHA-256 where known; offline
//! (or when a download fails) it says which files are missing and how to place them by hand.
//! The paper's segmenters (DeepLabV2, DRN-D-105, UperNet) and pytorch-fid's Inception have no
//! official hub copies: by default it prints where they are released; with a hub repo of yours
//! (`--deeplabv2`, `--drn`, `--upernet`, `--inception`) it resolves them like the others.
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
    /// DeepLabV2-ResNet101 COCO-Stuff weights in a hub repo of your choice (`org/name:file`,
    /// file `deeplabv2_resnet101_msc-cocostuff164k-100000.pth`); no official hub copy.
    #[arg(long)]
    pub deeplabv2: Option<String>,
    /// DRN-D-105 Cityscapes weights in a hub repo of your choice (`org/name:file`, file
    /// `drn_d_105_cityscapes.pth`); no official hub copy.
    #[arg(long)]
    pub drn: Option<String>,
    /// A hub repo of your choice (`org/name`) holding UperNet-ResNet101's ADE20K
    /// `encoder_epoch_50.pth` and `decoder_epoch_50.pth`; no official hub copy.
    #[arg(long)]
    pub upernet: Option<String>,
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
    if let Some(s) = &args.deeplabv2 {
        items.push(("DeepLabV2 COCO-Stuff (evaluation)", s.clone()));
    }
    if let Some(s) = &args.drn {
        items.push(("DRN-D-105 Cityscapes (evaluation)", s.clone()));
    }
    if let Some(r) = &args.upernet {
        items.push((
            "UperNet-ResNet101 ADE20K encoder (evaluation)",
            format!("{r}:{}", spade_metrics::upernet::UPERNET_ENCODER_FILE),
        ));
        items.push((
            "UperNet-ResNet101 ADE20K decoder (evaluation)",
            format!("{r}:{}", spade_metrics::upernet::UPERNET_DECODER_FILE),
        ));
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
    for (given, what, how) in segmenter_sources() {
        if !given(&args) {
            println!("note     {what}: {how}");
        }
    }
    if !missing.is_empty() {
        bail!("{} weight file(s) missing: {}", missing.len(), missing.join(", "));
    }
    Ok(())
}

type Given = fn(&Args) -> bool;

/// The paper's evaluation segmenters: their released files, where they come from, and how
/// `spade evaluate` takes them (no official hub copies, so by default only these notes print).
fn segmenter_sources() -> Vec<(Given, &'static str, String)> {
    use spade_metrics::{deeplabv2, drn, upernet};
    vec![
        (
            |a| a.deeplabv2.is_some(),
            "DeepLabV2-ResNet101 (COCO-Stuff evaluation)",
            format!(
                "download {} ({} from kazuto1011/deeplab-pytorch's v1.0 release) and pass it with `spade evaluate --segmenter deeplabv2 --segmenter-weights FILE`, or put it in a hub repo of yours and use --deeplabv2 org/name:{}",
                deeplabv2::DEEPLABV2_COCOSTUFF_URL,
                deeplabv2::DEEPLABV2_COCOSTUFF_FILE,
                deeplabv2::DEEPLABV2_COCOSTUFF_FILE
            ),
        ),
        (
            |a| a.drn.is_some(),
            "DRN-D-105 (Cityscapes evaluation)",
            format!(
                "download {} from the models linked at {} (fyu/drn's README) and pass it with `spade evaluate --segmenter drn --segmenter-weights FILE`, or use --drn org/name:{}",
                drn::DRN_CITYSCAPES_FILE,
                drn::DRN_CITYSCAPES_URL,
                drn::DRN_CITYSCAPES_FILE
            ),
        ),
        (
            |a| a.upernet.is_some(),
            "UperNet-ResNet101 (ADE20K evaluation)",
            format!(
                "download {url}{enc} and {url}{dec} (CSAILVision/semantic-segmentation-pytorch) and pass them with `spade evaluate --segmenter upernet --segmenter-weights ENCODER DECODER`, or put both in a hub repo of yours and use --upernet org/name",
                url = upernet::UPERNET_URL,
                enc = upernet::UPERNET_ENCODER_FILE,
                dec = upernet::UPERNET_DECODER_FILE
            ),
        ),
    ]
}
