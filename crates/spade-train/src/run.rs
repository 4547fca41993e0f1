//! A training run: the loop, learning-rate schedule, checkpoints (atomic, resumable), loss log,
//! sample grids and progress bar. Everything a run produces lives in its directory.
use crate::config::{ConfigError, ExperimentConfig};
use crate::layout::{checkpoint, FileHash, LossRecord, RunDir, RunInfo};
use crate::trainer::{Nets, Trainer};
use candle_core::{DType, Device, Tensor};
use spade_data::{BatchLoader, LoaderOptions, Sample};
use spade_models::loss::Vgg19;
use spade_models::{NetOptions, ParamStore, SemanticsSpec};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] spade_models::Error),
    #[error(transparent)]
    Data(#[from] spade_data::DataError),
    #[error(transparent)]
    Io(#[from] spade_io::IoError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Metrics(#[from] spade_metrics::MetricsError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("iteration {iteration}: loss {term} is {value}; stopping (the last good checkpoint is {checkpoint})")]
    NonFinite { iteration: usize, term: String, value: f64, checkpoint: String },
}

pub type Result<T> = std::result::Result<T, TrainError>;

fn file_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::File { path: path.to_path_buf(), message: e.to_string() }
}

/// How to run (not part of the experiment's identity).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub output_dir: PathBuf,
    pub resume: bool,
    /// Stop after this many iterations in total (overrides the config's schedule when smaller).
    pub max_iters: Option<usize>,
    pub progress: bool,
    pub device: Device,
    /// Set when the run is one step of a larger job (`cargo xtask reproduce`).
    pub job: Option<JobProgress>,
}

/// The progress display of a job of several runs: the run's bar is drawn inside `multi`
/// (under the job's own bars), and `on_iteration(done, total)` is called after every
/// iteration so the job can show its overall progress and ETA.
#[derive(Clone)]
pub struct JobProgress {
    pub multi: indicatif::MultiProgress,
    pub on_iteration: std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>,
}

impl std::fmt::Debug for JobProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobProgress")
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckpointState {
    pub iteration: usize,
    pub epoch: usize,
    pub lr_g: f64,
    pub lr_d: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub iterations: usize,
    pub wall_s: f64,
    pub last_losses: Vec<(String, f64)>,
    pub checkpoint: PathBuf,
}

/// The git revision of the working tree (with `-dirty` when it has changes), or "unknown".
pub fn git_revision() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// Base learning rate during `epoch` (0-based): constant for `niter` epochs, then the
/// reference's linear decay by lr / niter_decay after each later epoch.
pub fn lr_at_epoch(lr: f64, niter: usize, niter_decay: usize, epoch: usize) -> f64 {
    if niter_decay == 0 || epoch <= niter {
        return lr;
    }
    (lr - lr / niter_decay as f64 * (epoch - niter) as f64).max(0.0)
}

/// The directory the `latest` pointer of a run names, or the newest complete checkpoint when
/// `latest` is missing or dangling (see [`crate::rundir::resolve_latest`]).
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    crate::rundir::resolve_latest(run).map(|l| l.dir)
}

/// Builds (N, C, H, W) semantics and (N, 3, H, W) real images from loader samples.
pub fn batch_tensors(samples: &[Sample], spec: &SemanticsSpec, device: &Device) -> Result<(Tensor, Tensor)> {
    let (h, w) = (samples[0].label.height, samples[0].label.width);
    let ids: Vec<&[u32]> = samples.iter().map(|s| s.label.data.as_slice()).collect();
    let insts: Option<Vec<&[u32]>> = if spec.no_instance {
        None
    } else {
        Some(samples.iter().map(|s| s.instance.as_ref().map(|m| m.data.as_slice()).unwrap_or(&[])).collect())
    };
    let sem = spec.build(&ids, insts.as_deref(), h, w, device)?;
    let mut img = Vec::with_capacity(samples.len() * 3 * h * w);
    for s in samples {
        let im = s.image.as_ref().ok_or_else(|| file_err(&s.path, "the sample has no image to train on"))?;
        img.extend_from_slice(&im.data);
    }
    let real = Tensor::from_vec(img, (samples.len(), 3, h, w), device)?;
    Ok((sem, real))
}

/// VGG19 for the perceptual loss, from `loss.vgg_weights` or the hub cache
/// (`loss.vgg_weights_hub`); returns it with the weights file and its SHA-256.
fn load_vgg(cfg: &ExperimentConfig, device: &Device) -> Result<Option<(Vgg19, PathBuf, String)>> {
    if cfg.loss.no_vgg_loss {
        return Ok(None);
    }
    let (path, sha256) = match (&cfg.loss.vgg_weights, &cfg.loss.vgg_weights_hub) {
        (Some(path), _) => {
            let sha = match &cfg.loss.vgg_weights_sha256 {
                Some(h) => spade_metrics::weights::verify_sha256(path, h)?,
                None => spade_metrics::weights::sha256_file(path)?,
            };
            (path.clone(), sha)
        }
        (None, Some(spec)) => {
            let mut hub = spade_metrics::HubFile::parse(spec)?;
            hub.sha256 = cfg.loss.vgg_weights_sha256.clone();
            let r = hub.resolve()?;
            (r.path, r.sha256)
        }
        (None, None) => {
            return Err(TrainError::Config(ConfigError::File {
                file: "loss.vgg_weights".into(),
                message: "the VGG19 perceptual loss needs ImageNet weights (torchvision vgg19 state_dict): set loss.vgg_weights to the file or loss.vgg_weights_hub to org/name:file (`cargo xtask fetch-weights`), or train without it with loss.no_vgg_loss: true".into(),
            }))
        }
    };
    let tensors = spade_io::checkpoint::load_state_dict(&path)?;
    // Only the convs up to relu5_1 are used; classifier weights in the file are ignored.
    let tensors: Vec<_> = tensors.into_iter().filter(|(k, _)| k.starts_with("features.")).collect();
    let store = ParamStore::from_state_dict(tensors, DType::F32, device).frozen();
    let vgg = Vgg19::with_convs(&store.root(), cfg.model.netG.vgg_convs()).map_err(|e| file_err(&path, e))?;
    Ok(Some((vgg, path, sha256)))
}

fn store_to_file(store: &ParamStore, path: &Path) -> Result<()> {
    Ok(spade_io::checkpoint::save_safetensors(path, &store.state_dict())?)
}

/// Writes a checkpoint directory atomically (temporary directory, then rename), then points
/// `latest` at it, then removes all but the two newest checkpoints.
fn write_checkpoint(run: &Path, tr: &Trainer, state: &CheckpointState, cfg_yaml: &str) -> Result<PathBuf> {
    let ckdir = RunDir::new(run).checkpoints();
    std::fs::create_dir_all(&ckdir).map_err(|e| file_err(&ckdir, e))?;
    let name = checkpoint::name(state.iteration);
    let tmp = ckdir.join(format!(".tmp_{name}"));
    // Non-finite weights never become the last good checkpoint.
    crate::rundir::check_finite("G", &tr.nets.g_store.state_dict(), &ckdir.join(&name))?;
    if tr.has_discriminator() {
        crate::rundir::check_finite("D", &tr.nets.d_store.state_dict(), &ckdir.join(&name))?;
    }
    if let Some((_, s)) = &tr.nets.e {
        crate::rundir::check_finite("E", &s.state_dict(), &ckdir.join(&name))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| file_err(&tmp, e))?;
    store_to_file(&tr.nets.g_store, &tmp.join(checkpoint::NET_G))?;
    if tr.has_discriminator() {
        store_to_file(&tr.nets.d_store, &tmp.join(checkpoint::NET_D))?;
    }
    if let Some((_, s)) = &tr.nets.e {
        store_to_file(s, &tmp.join(checkpoint::NET_E))?;
    }
    spade_io::checkpoint::save_safetensors(&tmp.join(checkpoint::OPTIM_G), &tr.opt_g.state()?)?;
    if tr.has_discriminator() {
        spade_io::checkpoint::save_safetensors(&tmp.join(checkpoint::OPTIM_D), &tr.opt_d.state()?)?;
    }
    let write = |p: PathBuf, text: String| -> Result<()> {
        spade_io::atomic::write_atomic(&p, |f| f.write_all(text.as_bytes()))?;
        Ok(())
    };
    write(tmp.join(checkpoint::OPT_TXT), tr.opt.to_opt_text())?;
    write(tmp.join(checkpoint::CONFIG), cfg_yaml.to_string())?;
    write(tmp.join(checkpoint::STATE), serde_json::to_string_pretty(state).expect("state"))?;
    let dest = ckdir.join(&name);
    crate::rundir::sync_dir(&tmp)?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|e| file_err(&dest, e))?;
    // The checkpoint's rename is durable before `latest` names it.
    crate::rundir::sync_dir(&ckdir)?;
    write(RunDir::new(run).latest(), name.clone())?;
    crate::rundir::prune_checkpoints(run, &name)?;
    Ok(dest)
}

fn load_checkpoint(dir: &Path, tr: &mut Trainer) -> Result<CheckpointState> {
    let load = |store: &ParamStore, file: &str| -> Result<()> {
        let t = spade_io::checkpoint::load_state_dict(&dir.join(file))?;
        store.load_values(&t)?;
        Ok(())
    };
    load(&tr.nets.g_store, checkpoint::NET_G)?;
    if tr.has_discriminator() {
        load(&tr.nets.d_store, checkpoint::NET_D)?;
    }
    if let Some((_, s)) = &tr.nets.e {
        load(s, checkpoint::NET_E)?;
    }
    tr.opt_g.load_state(&spade_io::checkpoint::load_state_dict(&dir.join(checkpoint::OPTIM_G))?)?;
    if tr.has_discriminator() {
        tr.opt_d.load_state(&spade_io::checkpoint::load_state_dict(&dir.join(checkpoint::OPTIM_D))?)?;
    }
    let p = dir.join(checkpoint::STATE);
    let text = std::fs::read_to_string(&p).map_err(|e| file_err(&p, e))?;
    serde_json::from_str(&text).map_err(|e| file_err(&p, e))
}

/// A colour for class `id` (the synthetic palette, then a hash).
fn class_colour(id: u32) -> [u8; 3] {
    match spade_data::synthetic::PALETTE.get(id as usize) {
        Some(c) => *c,
        None if id == u32::MAX => [255, 255, 255],
        None => {
            let h = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            [(h >> 16) as u8, (h >> 32) as u8, (h >> 48) as u8]
        }
    }
}

/// Rows of label | generated | real for up to 4 samples.
pub fn save_grid(path: &Path, samples: &[Sample], fake: &Tensor) -> Result<()> {
    save_grid_n(path, samples, fake, 4)
}

/// Rows of label | generated | real for every sample.
pub fn save_grid_all(path: &Path, samples: &[Sample], fake: &Tensor) -> Result<()> {
    save_grid_n(path, samples, fake, samples.len())
}

/// Rows of label | output 1 | output 2 | ... (several z for the same label), one row per entry.
pub fn save_multimodal(path: &Path, rows: &[(Sample, Tensor)]) -> Result<()> {
    let Some((first, f0)) = rows.first() else { return Ok(()) };
    let (h, w) = (first.label.height, first.label.width);
    let k = f0.dim(0)?;
    let to_u8 = |v: f32| ((v + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0) as u8;
    let mut img = image::RgbImage::new(((k + 1) * w) as u32, (rows.len() * h) as u32);
    for (i, (s, fake)) in rows.iter().enumerate() {
        let fake: Vec<f32> = fake.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        for y in 0..h {
            for x in 0..w {
                let p = y * w + x;
                img.put_pixel(x as u32, (i * h + y) as u32, image::Rgb(class_colour(s.label.data[p])));
                for j in 0..k {
                    let f = |c: usize| to_u8(fake[j * 3 * h * w + c * h * w + p]);
                    img.put_pixel(((j + 1) * w + x) as u32, (i * h + y) as u32, image::Rgb([f(0), f(1), f(2)]));
                }
            }
        }
    }
    img.save(path).map_err(|e| file_err(path, e))
}

fn save_grid_n(path: &Path, samples: &[Sample], fake: &Tensor, n: usize) -> Result<()> {
    let n = samples.len().min(n);
    let (h, w) = (samples[0].label.height, samples[0].label.width);
    let fake: Vec<f32> = fake.narrow(0, 0, n)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let mut img = image::RgbImage::new((3 * w) as u32, (n * h) as u32);
    let to_u8 = |v: f32| ((v + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0) as u8;
    for (i, s) in samples.iter().take(n).enumerate() {
        for y in 0..h {
            for x in 0..w {
                let p = y * w + x;
                img.put_pixel(x as u32, (i * h + y) as u32, image::Rgb(class_colour(s.label.data[p])));
                let f = |c: usize| to_u8(fake[i * 3 * h * w + c * h * w + p]);
                img.put_pixel((w + x) as u32, (i * h + y) as u32, image::Rgb([f(0), f(1), f(2)]));
                if let Some(r) = &s.image {
                    let g = |c: usize| to_u8(r.data[c * h * w + p]);
                    img.put_pixel((2 * w + x) as u32, (i * h + y) as u32, image::Rgb([g(0), g(1), g(2)]));
                }
            }
        }
    }
    img.save(path).map_err(|e| file_err(path, e))
}

/// Runs (or resumes) training as the config says.
pub fn train(cfg: &ExperimentConfig, ro: &RunOptions) -> Result<RunSummary> {
    let run = &ro.output_dir;
    let rd = RunDir::new(run);
    std::fs::create_dir_all(run).map_err(|e| file_err(run, e))?;
    // One run per directory; then whatever a killed run left half-written goes.
    let _lock = crate::rundir::RunLock::acquire(run)?;
    crate::rundir::sweep_stale_temps(run)?;
    let cfg_yaml = cfg.to_yaml();
    let cfg_path = rd.config();
    if ro.resume {
        if let Ok(old) = std::fs::read_to_string(&cfg_path) {
            if old != cfg_yaml {
                return Err(file_err(
                    &cfg_path,
                    "--resume with a config that differs from the run's resolved config.yaml",
                ));
            }
        }
    } else if latest_checkpoint(run).is_some() {
        return Err(file_err(
            run,
            "the directory holds a run already: pass --resume to continue it, or choose another --output-dir",
        ));
    }
    spade_io::atomic::write_atomic(&cfg_path, |f| f.write_all(cfg_yaml.as_bytes()))?;
    let opt: NetOptions = cfg.net_options()?;
    let spec = SemanticsSpec::from(&opt);
    let t = &cfg.train;
    let nets = Nets::fresh_with(&opt, t.seed, &ro.device, !cfg.model.no_encoder)?;
    let vgg = load_vgg(cfg, &ro.device)?;
    let vgg_info = vgg.as_ref().map(|(_, p, h)| FileHash { file: p.display().to_string(), sha256: h.clone() });
    let vgg = vgg.map(|(v, _, _)| v);
    let mut tr = Trainer::new(opt.clone(), cfg.loss.options(), t.optim(), nets, vgg, t.seed)?;
    if t.accumulate > 1 && t.batch_size % t.accumulate != 0 {
        return Err(file_err(
            &cfg_path,
            format!("train.accumulate {} must divide train.batch_size {}", t.accumulate, t.batch_size),
        ));
    }
    tr.accumulate = t.accumulate.max(1);

    let mut start = 0usize;
    let mut last_ck = String::from("none (no checkpoint written yet)");
    if ro.resume {
        let latest = crate::rundir::resolve_latest(run)
            .ok_or_else(|| file_err(run, "--resume: no checkpoint (no `latest` pointing at a complete checkpoint)"))?;
        if let Some(note) = &latest.fallback {
            eprintln!("warning: {note}");
        }
        let dir = latest.dir;
        let st = load_checkpoint(&dir, &mut tr)?;
        start = st.iteration;
        last_ck = dir.display().to_string();
    }
    rd.write_run_info(&RunInfo {
        config: RunDir::CONFIG.into(),
        seed: t.seed,
        git_revision: git_revision(),
        device: format!("{:?}", ro.device),
        vgg_loss: !cfg.loss.no_vgg_loss,
        objective: tr.objective(),
        discriminator: tr.has_discriminator(),
        vgg_weights: vgg_info,
        parameters_g: tr.nets.g_store.num_params(),
        parameters_d: tr.nets.d_store.num_params(),
    })?;

    let dataset = spade_data::open(&cfg.data)?;
    let per_epoch = spade_data::loader::batches_per_epoch(dataset.len(), t.batch_size, true);
    if per_epoch == 0 {
        return Err(file_err(
            run,
            format!("train.batch_size {} is larger than the dataset ({} samples)", t.batch_size, dataset.len()),
        ));
    }
    let mut total = (t.niter + t.niter_decay) * per_epoch;
    for cap in [t.max_iters, ro.max_iters].into_iter().flatten() {
        total = total.min(cap);
    }
    let mut lo = LoaderOptions::train(t.batch_size, t.seed);
    lo.start_epoch = start / per_epoch;
    let mut loader = BatchLoader::new(dataset, lo)?;
    for _ in 0..start % per_epoch {
        loader.next();
    }

    // Loss log: keep the lines of iterations before the resume point.
    let log_path = rd.losses();
    // (Complete lines only: a killed run's partial last line is dropped; replaced atomically.)
    let kept = crate::rundir::read_log_before(&log_path, start);
    spade_io::atomic::write_atomic(&log_path, |f| f.write_all(kept.as_bytes()))?;
    let mut log = std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| file_err(&log_path, e))?;
    std::fs::create_dir_all(rd.samples()).map_err(|e| file_err(run, e))?;

    let bar = match (&ro.job, ro.progress) {
        (Some(job), true) => job.multi.add(indicatif::ProgressBar::new(total as u64)),
        (None, true) => indicatif::ProgressBar::new(total as u64),
        (_, false) => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} it  {per_sec}  ETA {eta}  {msg}")
            .expect("template"),
    );
    bar.set_position(start as u64);
    let t0 = Instant::now();
    let mut last_losses = Vec::new();
    let mut checkpoint = latest_checkpoint(run).unwrap_or_default();
    for it in start..total {
        let batch = loader.next().expect("endless loader")?;
        let epoch = it / per_epoch;
        let lr = lr_at_epoch(t.lr, t.niter, t.niter_decay, epoch);
        tr.set_lr(lr);
        tr.reseed(t.seed, it as u64);
        let (sem, real) = batch_tensors(&batch.samples, &spec, &ro.device)?;
        let mut losses = Vec::new();
        let mut fake = None;
        if it % t.D_steps_per_G.max(1) == 0 {
            let (l, f) = tr.generator_step(&sem, &real)?;
            losses.extend(l);
            fake = Some(f);
        }
        // A monitor, not part of the objective: how far the G-step fake is from the real images.
        let l1 = match &fake {
            Some(f) => Some((f - &real)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64),
            None => None,
        };
        losses.extend(tr.discriminator_step(&sem, &real)?);
        if let Some((term, value)) = losses.iter().find(|(_, v)| !v.is_finite()) {
            return Err(TrainError::NonFinite {
                iteration: it,
                term: term.clone(),
                value: *value,
                checkpoint: last_ck,
            });
        }
        let line = LossRecord {
            iter: it,
            epoch,
            lr,
            losses: losses.iter().cloned().collect(),
            elapsed_s: t0.elapsed().as_secs_f64(),
            l1_fake_real: l1,
        };
        crate::rundir::append_line(&mut log, &log_path, &serde_json::to_string(&line).expect("a loss record"))?;
        bar.set_message(losses.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(" "));
        bar.inc(1);
        let done = it + 1;
        if let Some(job) = &ro.job {
            (job.on_iteration)(done, total);
        }
        if let Some(f) = &fake {
            if t.display_freq > 0 && (done % t.display_freq == 0 || done == total) {
                save_grid(&rd.samples().join(format!("{}.png", checkpoint::name(done))), &batch.samples, f)?;
                let name = run.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                spade_synth::page::write_samples_page(&rd.samples(), &name).map_err(|e| file_err(run, e))?;
            }
        }
        last_losses = losses;
        if (t.save_latest_freq > 0 && done % t.save_latest_freq == 0) || done == total {
            let (cg, cd) = (tr.opt_g.config.lr, tr.opt_d.config.lr);
            let st = CheckpointState { iteration: done, epoch: done / per_epoch, lr_g: cg, lr_d: cd, seed: t.seed };
            checkpoint = write_checkpoint(run, &tr, &st, &cfg_yaml)?;
            last_ck = checkpoint.display().to_string();
        }
    }
    if ro.job.is_some() {
        bar.finish_and_clear();
    } else {
        bar.finish();
    }
    Ok(RunSummary { iterations: total, wall_s: t0.elapsed().as_secs_f64(), last_losses, checkpoint })
}
