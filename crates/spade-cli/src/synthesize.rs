//! `spade synthesize`: label maps (files, a folder, or a dataset split) -> images, in batches,
//! as the reference's test script does, with a results page (`OUT/index.html`).
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use spade_data::{read_image, read_instance_png, read_label_png, Dataset, DatasetConfig, DatasetMode, Palette, Phase};
use spade_synth::page::{ResultsPage, Row};
use spade_synth::{palette, rgb_from_tensor, Input, Synthesizer, ZSource};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["labels", "labels_dir", "dataset"])))]
pub struct Args {
    /// Checkpoint directory: `<which-epoch>_net_G.pth` (or .safetensors), `opt.txt`, and
    /// `<which-epoch>_net_E.pth` for --style; or a run directory of `spade train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Label map PNG (class ids; 255 = don't care when the options say so; RGB colours of the
    /// palette). Repeatable.
    #[arg(long = "label")]
    pub labels: Vec<PathBuf>,
    /// Instance map PNG, one per --label (without them, a model that needs instance maps gets
    /// the label map's regions as instances).
    #[arg(long = "instance")]
    pub instances: Vec<PathBuf>,
    /// A folder of label maps (every PNG in it, in natural order).
    #[arg(long = "labels")]
    pub labels_dir: Option<PathBuf>,
    /// A folder of instance maps, paired with --labels by file stem.
    #[arg(long = "instances", requires = "labels_dir")]
    pub instances_dir: Option<PathBuf>,
    /// A dataset split: coco-stuff, ade20k, cityscapes, folder or synthetic, read with the
    /// checkpoint's options (label_nc, crop_size, ...) and the evaluation preprocessing.
    #[arg(long)]
    pub dataset: Option<DatasetMode>,
    /// The dataset's root directory (not needed for synthetic).
    #[arg(long, requires = "dataset")]
    pub data_root: Option<PathBuf>,
    /// The dataset split.
    #[arg(long, default_value = "val", requires = "dataset")]
    pub split: Phase,
    /// Synthesize at most N inputs (the first N in order).
    #[arg(long)]
    pub how_many: Option<usize>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// classes.json (`{"classes": [{"id", "name", "color"}]}`): reads RGB colour-coded labels
    /// and colours the results page. Default: the built-in palette of the checkpoint's dataset.
    #[arg(long)]
    pub palette: Option<PathBuf>,
    /// float32 .npy of shape (N, z_dim): row i is the z of input i (VAE generators).
    #[arg(long, conflicts_with_all = ["styles"])]
    pub z: Option<PathBuf>,
    /// Style image, one per --label: encoded by the VAE encoder (multimodal / style-guided).
    #[arg(long = "style")]
    pub styles: Vec<PathBuf>,
    /// Seed for random z (VAE generators without --z) and the encoder's sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Also write `<stem>.npy` (float32, 3xHxW, in [-1, 1]).
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value = "latest")]
    pub which_epoch: String,
    /// Run on the first CUDA GPU (needs a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
}

pub fn device(cuda: bool) -> Result<Device> {
    if cuda {
        Device::new_cuda(0).context("opening CUDA device 0 (build with --features cuda)")
    } else {
        Ok(Device::Cpu)
    }
}

/// A checkpoint directory, or the checkpoint a training run's `latest` names.
pub fn resolve_checkpoint(dir: &Path) -> PathBuf {
    match spade_train::run::latest_checkpoint(dir) {
        Some(ck) if !dir.join(spade_train::layout::checkpoint::OPT_TXT).exists() => ck,
        _ => dir.to_path_buf(),
    }
}

/// The palette of `--palette`, or none.
pub fn load_palette(path: Option<&Path>) -> Result<Option<Palette>> {
    Ok(match path {
        Some(p) => Some(Palette::load(p)?),
        None => None,
    })
}

/// One input to make, before it is read.
enum Job {
    File { label: PathBuf, instance: Option<PathBuf>, style: Option<PathBuf> },
    Sample(usize),
}

/// An input read: ids at the model's size, and what the results page shows.
struct Loaded {
    stem: String,
    input: Input,
    real: Option<image::RgbImage>,
}

fn stem_of(p: &Path) -> Result<String> {
    Ok(p.file_stem().with_context(|| format!("{}: no file name", p.display()))?.to_string_lossy().to_string())
}

fn list_pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list the folder", dir.display()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    v.sort_by(|a, b| spade_data::layout::natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(v)
}

/// The dataset config for `--dataset`: the checkpoint's semantics and sizes, evaluation mode.
fn dataset_config(args: &Args, mode: DatasetMode, synth: &Synthesizer) -> Result<DatasetConfig> {
    let opt = synth.options();
    let mut cfg = DatasetConfig::new(mode, args.data_root.clone());
    cfg.phase = args.split;
    cfg.is_train = Some(false);
    cfg.label_nc = Some(opt.label_nc);
    cfg.contain_dontcare_label = Some(opt.contain_dontcare_label);
    cfg.no_instance = Some(opt.no_instance);
    cfg.crop_size = Some(opt.crop_size);
    cfg.aspect_ratio = Some(opt.aspect_ratio);
    if let Some(v) = opt.raw.get("load_size").and_then(|v| v.trim().parse().ok()) {
        cfg.load_size = Some(v);
    }
    if let Some(v) = opt.raw.get("preprocess_mode").and_then(|v| v.trim().parse().ok()) {
        cfg.preprocess_mode = Some(v);
    }
    if let Some(p) = &args.palette {
        cfg.palette = Some(p.clone());
    }
    Ok(cfg)
}

fn jobs(args: &Args, synth: &Synthesizer) -> Result<(Vec<Job>, Option<Arc<dyn Dataset>>)> {
    if let Some(mode) = args.dataset {
        let ds = spade_data::open(&dataset_config(args, mode, synth)?)?;
        return Ok(((0..ds.len()).map(Job::Sample).collect(), Some(ds)));
    }
    if let Some(dir) = &args.labels_dir {
        let labels = list_pngs(dir)?;
        if labels.is_empty() {
            bail!("{}: no .png label maps in the folder", dir.display());
        }
        let by_stem: BTreeMap<String, PathBuf> = match &args.instances_dir {
            Some(d) => list_pngs(d)?
                .into_iter()
                .map(|p| -> Result<(String, PathBuf)> { Ok((stem_of(&p)?, p)) })
                .collect::<Result<_>>()?,
            None => BTreeMap::new(),
        };
        let mut out = Vec::with_capacity(labels.len());
        for l in labels {
            let instance = match &args.instances_dir {
                Some(d) => Some(by_stem.get(&stem_of(&l)?).cloned().with_context(|| {
                    format!(
                        "{}: no instance map {}.png in {} (paired by file stem)",
                        l.display(),
                        stem_of(&l).unwrap_or_default(),
                        d.display()
                    )
                })?),
                None => None,
            };
            out.push(Job::File { label: l, instance, style: None });
        }
        if !args.styles.is_empty() {
            bail!("--style goes with --label (one style image per label); use --z with --labels");
        }
        return Ok((out, None));
    }
    let n = args.labels.len();
    if !args.instances.is_empty() && args.instances.len() != n {
        bail!("--instance: {} instance maps for {n} labels; give one per label", args.instances.len());
    }
    if !args.styles.is_empty() && args.styles.len() != n {
        bail!("--style: {} style images for {n} labels; give one per label", args.styles.len());
    }
    Ok((
        (0..n)
            .map(|i| Job::File {
                label: args.labels[i].clone(),
                instance: args.instances.get(i).cloned(),
                style: args.styles.get(i).cloned(),
            })
            .collect(),
        None,
    ))
}

fn load(job: &Job, synth: &Synthesizer, pal: &Palette, ds: Option<&dyn Dataset>, z: ZSource) -> Result<Loaded> {
    match job {
        Job::File { label, instance, style } => {
            let ids = synth.ids_from_map(read_label_png(label, Some(pal))?, &label.display().to_string())?;
            let instance = match instance {
                Some(p) if synth.needs_instances() => Some(synth.instances_from_map(read_instance_png(p)?)),
                _ => None,
            };
            let z = match style {
                Some(s) => ZSource::Style(read_image(s)?),
                None => z,
            };
            Ok(Loaded { stem: stem_of(label)?, input: Input { ids, instance, z }, real: None })
        }
        Job::Sample(i) => {
            let ds = ds.expect("dataset jobs come with their dataset");
            let s = ds.load(*i, 0)?;
            let ids = synth.ids_from_dataset(s.label);
            let instance = if synth.needs_instances() { s.instance.map(|m| synth.instances_from_map(m)) } else { None };
            let real = s.image.map(|im| {
                let (h, w) = (im.height, im.width);
                let buf: Vec<u8> = (0..h * w * 3)
                    .map(|k| ((im.data[(k % 3) * h * w + k / 3] + 1.0) / 2.0 * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect();
                image::RgbImage::from_raw(w as u32, h as u32, buf).expect("3 * h * w values")
            });
            Ok(Loaded { stem: stem_of(&s.path)?, input: Input { ids, instance, z }, real })
        }
    }
}

fn save(img: &image::RgbImage, path: &Path) -> Result<()> {
    img.save(path).with_context(|| format!("{}: writing PNG", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let dev = device(args.cuda)?;
    let ckpt = resolve_checkpoint(&args.checkpoint);
    let synth = Synthesizer::load(&ckpt, &args.which_epoch, &dev, !args.styles.is_empty())?;
    let opt_path = ckpt.join(spade_train::layout::checkpoint::OPT_TXT);
    if !synth.uses_z() && (args.z.is_some() || !args.styles.is_empty()) {
        bail!("{}: use_vae is False, so the generator takes no z: drop --z/--style", opt_path.display());
    }
    if !args.styles.is_empty() && !synth.has_encoder() {
        bail!("{}: --style needs {}_net_E.pth (or .safetensors), the encoder", ckpt.display(), args.which_epoch);
    }
    let pal = palette::for_options(synth.options(), load_palette(args.palette.as_deref())?)
        .with_context(|| format!("--palette {}", args.palette.as_deref().unwrap_or(Path::new("")).display()))?;
    let (mut jobs, ds) = jobs(&args, &synth)?;
    if let Some(n) = args.how_many {
        jobs.truncate(n);
    }
    let n = jobs.len();
    if n == 0 {
        bail!("nothing to synthesize: the input has no label maps");
    }
    let z_all = match &args.z {
        Some(p) => {
            // Parsed with the shape checked against the bytes present (a header may declare
            // any shape), then made a tensor.
            let bytes = std::fs::read(p).with_context(|| format!("{}: reading z", p.display()))?;
            let arr =
                spade_metrics::stats_io::parse_npy(&bytes, &p.display().to_string()).map_err(anyhow::Error::msg)?;
            let data: Vec<f32> = arr.data.iter().map(|&v| v as f32).collect();
            let z = Tensor::from_vec(data, arr.shape.as_slice(), &Device::Cpu)?.to_device(&dev)?;
            let z_dim = synth.options().z_dim;
            if z.dims().len() != 2 || z.dims()[1] != z_dim || z.dims()[0] < n {
                bail!(
                    "{}: z has shape {:?}, expected ({n}, {z_dim}) (one row of z_dim per input)",
                    p.display(),
                    z.dims()
                );
            }
            Some(z)
        }
        None => None,
    };
    if synth.needs_instances() && ds.is_none() && args.instances.is_empty() && args.instances_dir.is_none() {
        eprintln!(
            "note: {}: no_instance is False and no instance maps were given: each region of the label map is taken as one instance",
            opt_path.display()
        );
    }

    let out = &args.output_dir;
    for d in [out.clone(), out.join("label"), out.join("real")] {
        std::fs::create_dir_all(&d).with_context(|| format!("{}: cannot create the output directory", d.display()))?;
    }
    let (h, w) = synth.size();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}")
            .expect("template"),
    );
    let mut rows = Vec::with_capacity(n);
    let mut stems = HashSet::new();
    let mut any_real = false;
    let bs = args.batch_size as usize;
    for (b, chunk) in jobs.chunks(bs).enumerate() {
        let mut loaded = Vec::with_capacity(chunk.len());
        for (k, job) in chunk.iter().enumerate() {
            let z = match &z_all {
                Some(z) => ZSource::Given(z.narrow(0, b * bs + k, 1)?),
                None => ZSource::Random,
            };
            let l = load(job, &synth, &pal, ds.as_deref(), z)?;
            if !stems.insert(l.stem.clone()) {
                bail!("two inputs are named {}: outputs are named by file stem, so stems must be unique", l.stem);
            }
            loaded.push(l);
        }
        let inputs: Vec<Input> = loaded.iter().map(|l| l.input.clone()).collect();
        let imgs = synth.synthesize(&inputs, &mut rng)?;
        for (k, l) in loaded.iter().enumerate() {
            let img = imgs.get(k)?;
            let name = format!("{}.png", l.stem);
            save(&rgb_from_tensor(&img)?, &out.join(&name))?;
            if args.raw {
                let npy = out.join(format!("{}.npy", l.stem));
                img.write_npy(&npy).with_context(|| format!("{}: writing", npy.display()))?;
            }
            save(&palette::colorize(&l.input.ids, w, h, &pal), &out.join("label").join(&name))?;
            let real = match &l.real {
                Some(r) => {
                    save(r, &out.join("real").join(&name))?;
                    any_real = true;
                    Some(format!("real/{name}"))
                }
                None => None,
            };
            rows.push(Row { name: l.stem.clone(), cells: vec![Some(format!("label/{name}")), Some(name), real] });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir(out.join("real")); // only when empty
    if !any_real {
        for r in &mut rows {
            r.cells.pop();
        }
    }
    let mut columns = vec!["label".to_string(), "synthesized".to_string()];
    if any_real {
        columns.push("real".into());
    }
    let source = match (&args.dataset, &args.labels_dir) {
        (Some(m), _) => format!("dataset {m}, split {}", args.split.name()),
        (None, Some(d)) => format!("labels {}", d.display()),
        _ => format!("{} label files", args.labels.len()),
    };
    ResultsPage {
        title: format!("spade synthesize: {}", ckpt.display()),
        notes: vec![
            format!(
                "checkpoint {} ({}), {n} inputs from {source}, seed {}",
                ckpt.display(),
                args.which_epoch,
                args.seed
            ),
            format!("netG {}, {} classes, {w}x{h}", synth.options().net_g.as_str(), synth.label_nc()),
        ],
        columns,
        rows,
    }
    .write(out)?;
    println!("{n} images in {}; results page {}", out.display(), out.join("index.html").display());
    Ok(())
}
