//! `spade serve`: the local painting demo (the library is `spade-serve`).
use anyhow::{Context, Result};
use spade_serve::{App, Limits};
use spade_synth::{palette, Synthesizer};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (`latest_net_G.pth` or .safetensors, `opt.txt`, and
    /// `latest_net_E.pth` for style images), or a run directory of `spade train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Address to bind: 127.0.0.1 (this machine only) unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// classes.json with the model's class names and colours (default: the built-in palette of
    /// the checkpoint's dataset, else generated names and colours).
    #[arg(long)]
    pub palette: Option<PathBuf>,
    #[arg(long, default_value = "latest")]
    pub which_epoch: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest width or height of an uploaded image, in pixels.
    #[arg(long, default_value_t = Limits::default().max_side)]
    pub max_side: u32,
    /// Syntheses running at once (further requests wait).
    #[arg(long, default_value_t = Limits::default().max_concurrent)]
    pub max_concurrent: usize,
    /// Run on the first CUDA GPU (needs a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dev = crate::synthesize::device(args.cuda)?;
    let ckpt = crate::synthesize::resolve_checkpoint(&args.checkpoint);
    let synth = Synthesizer::load(&ckpt, &args.which_epoch, &dev, true)?;
    let pal = palette::for_options(synth.options(), crate::synthesize::load_palette(args.palette.as_deref())?)?;
    let limits =
        Limits { max_body_bytes: args.max_body_bytes, max_side: args.max_side, max_concurrent: args.max_concurrent };
    let (h, w) = synth.size();
    let about = format!(
        "{}: netG {}, {} classes, {w}x{h}{}",
        ckpt.display(),
        synth.options().net_g.as_str(),
        synth.label_nc(),
        if synth.has_encoder() { ", style encoder" } else { "" }
    );
    let app = App::new(synth, pal, limits);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        println!("{about}");
        println!("serving the painting demo on http://{local}/ (Ctrl+C to stop)");
        spade_serve::serve(listener, app).await.context("serving")
    })
}
