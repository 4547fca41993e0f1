//! `cargo xtask reproduce <table>`: every row of `experiments/<table>.yaml` trained with each
//! seed (or reused when a finished run has the same resolved config, evaluator and code
//! revision), evaluated, and reported.
//!
//! Runs live in a store shared by all tables of a profile and dataset,
//! `runs/<dataset>-<profile>/<key>/`, where `key` hashes the run's resolved config (seed
//! included) and its evaluator's settings: rows of different tables with the same config are
//! one run. Each run's `row.json` ([`RowInfo`]) records the code revision it was made at.
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spade_data::DatasetMode;
use spade_train::config::ExperimentConfig;
use spade_train::evaluate::evaluate_run;
use spade_train::layout::{RowInfo, RunDir};
use spade_train::run::{train, RunOptions};
use spade_train::segmenter::SegmenterSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Table name (experiments/<table>.yaml) or the path of a table or ablation YAML.
    pub table: String,
    /// smoke, mini (the default) or paper.
    #[arg(long, default_value = "mini")]
    pub profile: String,
    /// synthetic (built in), coco-stuff, ade20k, ade20k-outdoor, cityscapes or folder.
    #[arg(long, default_value = "synthetic")]
    pub dataset: DatasetMode,
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Only these rows (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Retrain rows even when a finished run with the same config exists.
    #[arg(long)]
    pub fresh: bool,
    /// Extra overrides for every row (`--set train.lr=0.0001`).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Seeds per row (`train.seed` 0..N); default: the profile's `seeds`.
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Reuse finished runs made at another code revision (the report then names each row's
    /// revisions). Without it, such runs are retrained.
    #[arg(long)]
    pub allow_other_revisions: bool,
    /// `--cuda`, and the segmenter and FID weights (resolved before any row trains).
    #[command(flatten)]
    pub eval: crate::eval_setup::EvalArgs,
}

impl Args {
    /// The arguments of a report over the runs on disk.
    pub fn for_report(table: &str, profile: &str, dataset: DatasetMode) -> Self {
        Args {
            table: table.into(),
            profile: profile.into(),
            dataset,
            data_root: None,
            rows: Vec::new(),
            fresh: false,
            sets: Vec::new(),
            seeds: None,
            allow_other_revisions: true,
            eval: Default::default(),
        }
    }
}

/// A table or ablation file (`experiments/*.yaml`). A file may start with `extends: <table>` (a
/// name in the same folder, or a path relative to it): it then takes that file's `base` and
/// `profiles`, with its own merged over them key by key ([`load_table`]), so that a profile
/// several tables share has one home.
#[derive(Debug, Deserialize)]
pub struct TableFile {
    pub table: String,
    pub title: String,
    pub metric: String,
    #[serde(default)]
    pub paper_note: String,
    /// The paper's columns shown beside the measured values (the key of `paper:` in each row
    /// and the column's title); by default COCO-Stuff's mIoU (Table 3).
    #[serde(default = "default_paper_columns")]
    pub paper_columns: Vec<PaperColumn>,
    pub base: serde_yaml_ng::Value,
    pub profiles: BTreeMap<String, Profile>,
    #[serde(default)]
    pub rows: Vec<Row>,
    /// Ablations: every combination of these overrides becomes a row (after `rows`).
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<serde_yaml_ng::Value>>,
    /// The claims the paper makes of this table, judged by the report.
    #[serde(default)]
    pub claims: Vec<crate::report::Claim>,
}

impl TableFile {
    /// Adds one row per combination of the `grid` values.
    fn expand_grid(&mut self) {
        let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
        for (key, values) in &self.grid {
            let vals: Vec<String> =
                values.iter().map(|v| serde_yaml_ng::to_string(v).unwrap_or_default().trim().to_string()).collect();
            combos = combos
                .into_iter()
                .flat_map(|c| vals.iter().map(move |v| [c.clone(), vec![(key.clone(), v.clone())]].concat()))
                .collect();
        }
        if self.grid.is_empty() {
            return;
        }
        for c in combos {
            let id = c
                .iter()
                .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
                .collect::<Vec<_>>()
                .join(",");
            self.rows.push(Row {
                id: id.replace(['/', ' '], "_"),
                method: id.clone(),
                paper: BTreeMap::new(),
                set: c.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                compact: false,
                not_run: None,
            });
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaperColumn {
    pub key: String,
    pub title: String,
}

fn default_paper_columns() -> Vec<PaperColumn> {
    vec![PaperColumn { key: "coco".into(), title: "COCO".into() }]
}

#[derive(Debug, Deserialize)]
pub struct Profile {
    pub description: String,
    pub scale: String,
    #[serde(default)]
    pub set: Vec<String>,
    #[serde(default)]
    pub segmenter: Option<SegmenterSpec>,
    pub compact_ngf: Option<usize>,
    /// Seeds per row by default (`--seeds` overrides).
    #[serde(default = "one")]
    pub seeds: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
pub struct Row {
    pub id: String,
    pub method: String,
    #[serde(default)]
    pub paper: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub set: Vec<String>,
    #[serde(default)]
    pub compact: bool,
    /// A row the project does not run, with the reason (SIMS in Table 1): the report shows the
    /// reason and the paper's values, never a number of its own.
    #[serde(default)]
    pub not_run: Option<String>,
}

/// The workspace the runs, reports and experiments belong to: `SPADE_WORKSPACE_ROOT` when set
/// (a built xtask run over another checkout, e.g. a worktree frozen at one commit for long
/// experiments), else the one xtask was built in.
pub fn workspace_root() -> PathBuf {
    match std::env::var_os("SPADE_WORKSPACE_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf(),
    }
}

/// `experiments/<name>.yaml`, or a path to a table or ablation file.
pub fn load_table(name: &str) -> Result<TableFile> {
    let path = table_path(name, &workspace_root().join("experiments"), Path::new(""));
    let value = table_value(&path, &mut Vec::new())?;
    let mut t: TableFile =
        serde_yaml_ng::from_value(value).with_context(|| format!("{}: not a table file", path.display()))?;
    t.expand_grid();
    if t.rows.is_empty() {
        bail!("{}: no rows and no grid", path.display());
    }
    Ok(t)
}

/// A table named `name`: a path ending in `.yaml`/`.yml` (relative to `paths_from`), else the
/// file `<name>.yaml` in `names_in`.
fn table_path(name: &str, names_in: &Path, paths_from: &Path) -> PathBuf {
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        paths_from.join(name)
    } else {
        names_in.join(format!("{name}.yaml"))
    }
}

/// The two parts of a table file that `extends` inherits.
const INHERITED: [&str; 2] = ["base", "profiles"];

/// The YAML of the table file at `path` with its `extends` chain resolved: the parent's `base`
/// and `profiles`, with this file's merged over them (mappings key by key, recursively; any
/// other value, a list included, replaces the parent's). `chain` holds the files being read, to
/// refuse a cycle.
fn table_value(path: &Path, chain: &mut Vec<PathBuf>) -> Result<serde_yaml_ng::Value> {
    use serde_yaml_ng::Value;
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the table", path.display()))?;
    let mut value: Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: not a table file", path.display()))?;
    let Some(parent) = value.get("extends") else { return Ok(value) };
    let parent = parent
        .as_str()
        .with_context(|| format!("{}: expected `extends` to name a table file, found {parent:?}", path.display()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let parent_path = table_path(parent, folder, folder);
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&canonical) || chain.len() >= 8 {
        bail!("{}: `extends` chains back to itself or is more than 8 files deep", path.display());
    }
    chain.push(canonical);
    let inherited = table_value(&parent_path, chain).with_context(|| format!("{}: extends", path.display()))?;
    chain.pop();
    let map = value.as_mapping_mut().with_context(|| format!("{}: expected a mapping", path.display()))?;
    for key in INHERITED {
        if let Some(from_parent) = inherited.get(key) {
            let own = map.remove(key);
            map.insert(key.into(), merge_yaml(from_parent.clone(), own));
        }
    }
    Ok(value)
}

/// `own` merged over `inherited`: mappings key by key, anything else replaced.
fn merge_yaml(inherited: serde_yaml_ng::Value, own: Option<serde_yaml_ng::Value>) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value;
    match (inherited, own) {
        (inherited, None) => inherited,
        (Value::Mapping(mut parent), Some(Value::Mapping(child))) => {
            for (k, v) in child {
                let from_parent = parent.remove(&k);
                let merged = match from_parent {
                    Some(p) => merge_yaml(p, Some(v)),
                    None => v,
                };
                parent.insert(k, merged);
            }
            Value::Mapping(parent)
        }
        (_, Some(own)) => own,
    }
}

/// The resolved experiment of one row under a profile and dataset.
pub fn row_config(t: &TableFile, profile: &Profile, row: &Row, args: &Args, seed: u64) -> Result<ExperimentConfig> {
    let base = serde_yaml_ng::to_string(&t.base)?;
    let mut sets = profile.set.clone();
    if args.dataset != DatasetMode::Synthetic {
        let root = args.data_root.as_ref().context("--dataset needs --data-root")?;
        sets.push(format!("data.dataset_mode={}", args.dataset.config_name()));
        sets.push(format!("data.dataroot={}", root.display()));
        sets.retain(|s| !s.starts_with("data.synthetic_"));
    }
    sets.extend(row.set.iter().cloned());
    if row.compact {
        let ngf = profile.compact_ngf.context("the profile has no compact_ngf for compact rows")?;
        sets.push(format!("model.ngf={ngf}"));
    }
    sets.extend(args.sets.iter().cloned());
    // One name for every run, so that equal configs of different tables are one run.
    sets.push("name=run".into());
    sets.push(format!("train.seed={seed}"));
    Ok(ExperimentConfig::from_yaml(&base, &sets).with_context(|| format!("row {}", row.id))?)
}

/// The dataset name used in run and report paths.
pub fn dataset_key(args: &Args) -> String {
    args.dataset.cli_name().to_string()
}

/// The seeds of a job: `--seeds`, else the profile's.
pub fn seed_count(args: &Args, profile: &Profile) -> usize {
    args.seeds.unwrap_or(profile.seeds).max(1)
}

/// The store key of a run: its resolved config and the evaluator's settings.
pub fn run_key(cfg_yaml: &str, profile: &Profile) -> String {
    let seg = serde_json::to_string(&profile.segmenter).unwrap_or_default();
    sha256(format!("{cfg_yaml}\n--- evaluator v2\n{seg}").as_bytes())[..16].to_string()
}

/// The run directory of `row` with `seed` in the store under `root`, and its config.
pub fn run_dir_for_in(
    root: &Path,
    t: &TableFile,
    profile: &Profile,
    row: &Row,
    args: &Args,
    seed: u64,
) -> Result<(PathBuf, ExperimentConfig)> {
    let cfg = row_config(t, profile, row, args, seed)?;
    let key = run_key(&cfg.to_yaml(), profile);
    Ok((store_dir(root, &args.profile, &dataset_key(args)).join(key), cfg))
}

/// The source trees whose code produces a run's numbers.
const RESULT_SOURCES: [&str; 7] = [
    "crates/spade-io",
    "crates/spade-data",
    "crates/spade-kernels",
    "crates/spade-models",
    "crates/spade-metrics",
    "crates/spade-train",
    "Cargo.lock",
];

/// The code revision of the numbers: a hash of the git tree ids of [`RESULT_SOURCES`] at HEAD,
/// plus the diff of their uncommitted changes. Commits that touch only other parts (the CLI,
/// xtask, docs) keep it; any change to the code that trains or scores changes it.
pub fn code_revision(root: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let o = std::process::Command::new("git").current_dir(root).args(args).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).to_string())
    };
    let mut text = String::new();
    for src in RESULT_SOURCES {
        match git(&["rev-parse", &format!("HEAD:{src}")]) {
            Some(id) => text.push_str(&id),
            None => return "unknown (not a git checkout)".into(),
        }
    }
    let mut diff_args = vec!["diff", "HEAD", "--"];
    diff_args.extend(RESULT_SOURCES);
    let diff = git(&diff_args).unwrap_or_default();
    let rev = sha256(text.as_bytes())[..12].to_string();
    if diff.is_empty() {
        rev
    } else {
        format!("{rev}+dirty-{}", &sha256(diff.as_bytes())[..8])
    }
}

pub fn run(args: Args) -> Result<()> {
    let t = load_table(&args.table)?;
    let profile = t.profiles.get(&args.profile).with_context(|| {
        format!(
            "profile {} not in experiments/{}.yaml (have: {:?})",
            args.profile,
            args.table,
            t.profiles.keys().collect::<Vec<_>>()
        )
    })?;
    let rows: Vec<&Row> = t.rows.iter().filter(|r| args.rows.is_empty() || args.rows.contains(&r.id)).collect();
    if rows.is_empty() {
        bail!("--rows {:?} selects no row of {}", args.rows, args.table);
    }
    let root = workspace_root();
    let store = store_dir(&root, &args.profile, &dataset_key(&args));
    std::fs::create_dir_all(&store)?;
    let code_rev = code_revision(&root);
    let git_rev = spade_train::run::git_revision();
    for row in rows.iter().filter(|r| r.not_run.is_some()) {
        eprintln!("{}: not run: {}", row.id, row.not_run.as_deref().unwrap_or(""));
    }
    let rows: Vec<&Row> = rows.into_iter().filter(|r| r.not_run.is_none()).collect();
    // Every file the evaluation needs, found and opened before any row trains.
    let first = match rows.first() {
        Some(r) => row_config(&t, profile, r, &args, 0)?,
        None => return crate::report::build(&t, &args),
    };
    let eval = crate::eval_setup::prepare(&args.eval, &first, profile.segmenter.clone(), &root.join("runs/cache"))?;
    let device = eval.device.clone();
    let seeds = seed_count(&args, profile);
    let jobs: Vec<(&Row, u64)> = rows.iter().flat_map(|r| (0..seeds as u64).map(move |s| (*r, s))).collect();
    let job = JobBar::new(jobs.len());
    for (i, (row, seed)) in jobs.iter().enumerate() {
        let (row, seed) = (*row, *seed);
        job.start_row(i, row, seed);
        let (dir, cfg) = run_dir_for_in(&root, &t, profile, row, &args, seed)?;
        let yaml = cfg.to_yaml();
        let rd = RunDir::new(&dir);
        // Another job on the same store (two tables run at once) may be training or evaluating
        // this run now: wait for it, then look again, so that its run is reused rather than
        // cleared under it. Held until this run's row.json is written (the end of the iteration).
        let _held = hold_run(&dir, |line| job.println(line))?;
        if let (false, Some(info)) = (args.fresh, rd.finished_row(&yaml)) {
            if info.code_revision == code_rev || args.allow_other_revisions {
                job.println(format!(
                    "{} seed {seed}: reusing the finished run {} (code revision {})",
                    row.id,
                    dir.display(),
                    info.code_revision
                ));
                job.row_done(i);
                // A reused row takes no time: keep it out of the job's speed estimate.
                job.bar.reset_eta();
                continue;
            }
            job.println(format!(
                "{} seed {seed}: the finished run {} was made at code revision {}, not {code_rev}: retraining (--allow-other-revisions reuses it)",
                row.id,
                dir.display(),
                info.code_revision
            ));
        }
        clear_run_dir(&dir)?;
        let t0 = Instant::now();
        let ro = RunOptions {
            output_dir: dir.clone(),
            resume: false,
            max_iters: None,
            progress: true,
            device: device.clone(),
            job: Some(job.for_training(i, row, seed)),
        };
        let summary = train(&cfg, &ro).with_context(|| format!("training row {} seed {seed}", row.id))?;
        let train_s = t0.elapsed().as_secs_f64();
        job.evaluating(i, row, seed);
        let t1 = Instant::now();
        evaluate_run(&dir, &cfg, eval.segmenter(), eval.fid(), &device)
            .with_context(|| format!("evaluating row {} seed {seed}", row.id))?;
        eval.setup.write(&dir)?;
        let info = RowInfo {
            table: t.table.clone(),
            row: row.id.clone(),
            profile: args.profile.clone(),
            profile_scale: profile.scale.clone(),
            dataset: dataset_key(&args),
            seed,
            iterations: summary.iterations,
            train_wall_s: train_s,
            eval_wall_s: t1.elapsed().as_secs_f64(),
            config_sha256: sha256(yaml.as_bytes()),
            key: dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
            code_revision: code_rev.clone(),
            git_revision: git_rev.clone(),
        };
        rd.write_row_info(&info)?;
        job.println(format!(
            "{} seed {seed}: {} iterations in {:.0} s, evaluated in {:.0} s",
            row.id,
            summary.iterations,
            train_s,
            t1.elapsed().as_secs_f64()
        ));
        job.row_done(i);
    }
    job.finish();
    crate::report::build(&t, &args)
}

/// Progress of the whole job: rows done, the current row's phase and progress (training
/// iterations, then evaluation), elapsed time and an ETA for the whole job; the training
/// run's own bar (iterations, speed, its ETA, losses) is drawn beneath. Position is counted
/// in thousandths of a row: a row's training fills 80% of it, its evaluation the rest.
struct JobBar {
    multi: indicatif::MultiProgress,
    bar: indicatif::ProgressBar,
    n: usize,
}

const ROW_UNITS: u64 = 1000;
const TRAIN_SHARE: f64 = 0.8;

impl JobBar {
    fn new(n: usize) -> Self {
        let multi = indicatif::MultiProgress::new();
        let bar = multi.add(indicatif::ProgressBar::new(n as u64 * ROW_UNITS));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "job {bar:20} {percent:>3}% [{elapsed_precise} elapsed, ETA {eta}] {prefix} {wide_msg}",
            )
            .expect("template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_secs(1));
        Self { multi, bar, n }
    }

    fn label(&self, i: usize, row: &Row, seed: u64) -> String {
        format!("run {}/{} {} seed {seed} ({})", i + 1, self.n, row.id, row.method)
    }

    fn start_row(&self, i: usize, row: &Row, seed: u64) {
        self.bar.set_prefix(format!("runs done {i}/{}", self.n));
        self.bar.set_message(format!("{}: preparing", self.label(i, row, seed)));
        self.bar.set_position(i as u64 * ROW_UNITS);
    }

    /// The training run's hook: moves the job bar with the run's iterations.
    fn for_training(&self, i: usize, row: &Row, seed: u64) -> spade_train::run::JobProgress {
        let bar = self.bar.clone();
        let label = self.label(i, row, seed);
        bar.set_message(format!("{label}: training"));
        spade_train::run::JobProgress {
            multi: self.multi.clone(),
            on_iteration: std::sync::Arc::new(move |done, total| {
                let frac = TRAIN_SHARE * done as f64 / total.max(1) as f64;
                bar.set_position(i as u64 * ROW_UNITS + (frac * ROW_UNITS as f64) as u64);
                bar.set_message(format!("{label}: training {done}/{total} it"));
            }),
        }
    }

    fn evaluating(&self, i: usize, row: &Row, seed: u64) {
        self.bar.set_position(i as u64 * ROW_UNITS + (TRAIN_SHARE * ROW_UNITS as f64) as u64);
        self.bar.set_message(format!("{}: evaluating", self.label(i, row, seed)));
    }

    fn row_done(&self, i: usize) {
        self.bar.set_position((i as u64 + 1) * ROW_UNITS);
        self.bar.set_prefix(format!("runs done {}/{}", i + 1, self.n));
    }

    /// A line above the bars; on stderr directly when the bars are hidden (not a terminal,
    /// as in CI logs).
    fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    fn finish(&self) {
        self.bar.set_message("");
        self.bar.finish();
    }
}

/// The run store of a profile and dataset: `root/runs/<dataset>-<profile>/`. CI's smoke runs
/// never overwrite the runs a mini report was built from, and runs of different datasets are
/// never mixed.
pub fn store_dir(root: &Path, profile: &str, dataset: &str) -> PathBuf {
    root.join("runs").join(format!("{dataset}-{profile}"))
}

/// The lock file that `reproduce` holds on a run directory from the moment it looks at the run
/// until the run is reused, or trained, evaluated and its `row.json` written. `train` takes the
/// run's own lock (`RUN/.lock`, `spade_train::rundir::RunLock`) for training alone, so a second
/// job must wait on this one, which also covers the evaluation.
const JOB_LOCK: &str = ".reproduce.lock";

/// Creates the run directory `dir` if needed and holds its [`JOB_LOCK`], waiting while another
/// process holds it and saying so once through `say`.
fn hold_run(dir: &Path, say: impl Fn(String)) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the run directory", dir.display()))?;
    let path = dir.join(JOB_LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the run lock", path.display()))?;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if !said {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    say(format!(
                        "{}: process {} is working on this run (another job on the same store): waiting for it",
                        dir.display(),
                        holder.trim()
                    ));
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("{}: cannot lock the run directory", path.display()))
            }
        }
    }
    use std::io::Write;
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| writeln!(file, "{pid}"))
        .with_context(|| format!("{}: cannot write the holder's PID", path.display()))?;
    Ok(file)
}

/// Removes everything in the run directory `dir` but its lock files (the caller holds the
/// [`JOB_LOCK`]).
fn clear_run_dir(dir: &Path) -> Result<()> {
    let locks = [RunDir::new(dir).lock(), dir.join(JOB_LOCK)];
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot clear the old run", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot clear the old run", dir.display()))?.path();
        if locks.contains(&path) {
            continue;
        }
        let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        gone.with_context(|| format!("{}: cannot clear the old run", path.display()))?;
    }
    Ok(())
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = r#"
table: parent
title: t
metric: mIoU
base: {model: {netG: spade, ngf: 64}, train: {lr: 0.0002}}
profiles:
  mini: {description: "parent mini", scale: "64x64", set: [model.ngf=16], seeds: 3, compact_ngf: 12}
  smoke: {description: "parent smoke", scale: "32x32", set: [model.ngf=4]}
rows: [{id: a, method: A}]
"#;

    #[test]
    fn a_run_in_use_by_another_job_is_waited_for_not_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("key");
        // Another job holds the run (training, then evaluating it); it is done after 600 ms.
        let other = hold_run(&run, |_| ()).unwrap();
        std::fs::write(run.join("losses.jsonl"), "{}\n").unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(600));
            std::fs::write(run.join("row.json"), "{}").unwrap();
            drop(other);
        });
        let said = std::cell::RefCell::new(Vec::new());
        let t0 = Instant::now();
        let run = dir.path().join("key");
        let _held = hold_run(&run, |l| said.borrow_mut().push(l)).unwrap();
        released.join().unwrap();
        assert!(t0.elapsed().as_millis() >= 500, "returned after {:?}, before the other job let go", t0.elapsed());
        let said = said.into_inner();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains(&format!("process {}", std::process::id())) && said[0].contains("waiting"),
            "{}",
            said[0]
        );
        // What the other job wrote is all there when the wait ends.
        assert!(run.join("row.json").is_file() && run.join("losses.jsonl").is_file());
        std::fs::write(run.join(".lock"), "").unwrap();
        clear_run_dir(&run).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, vec![std::ffi::OsString::from(".lock"), std::ffi::OsString::from(JOB_LOCK)]);
        // A run nobody has started: its directory is made and held at once.
        let fresh = dir.path().join("new");
        let _f = hold_run(&fresh, |l| panic!("nobody holds it: {l}")).unwrap();
        assert!(fresh.join(JOB_LOCK).is_file());
    }

    #[test]
    fn extends_merges_base_and_profiles_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("parent.yaml"), PARENT).unwrap();
        let child = dir.path().join("child.yaml");
        std::fs::write(
            &child,
            "extends: parent\ntable: child\ntitle: c\nmetric: mIoU\nbase: {model: {ngf: 32}}\n\
             profiles: {mini: {scale: \"64x64, longer\"}, extra: {description: e, scale: s}}\n\
             rows: [{id: b, method: B}]\n",
        )
        .unwrap();
        let t = load_table(child.to_str().unwrap()).unwrap();
        assert_eq!(t.table, "child");
        assert_eq!(t.rows.len(), 1, "rows are not inherited");
        // base: the child's ngf over the parent's, the rest inherited.
        assert_eq!(t.base["model"]["ngf"].as_u64(), Some(32));
        assert_eq!(t.base["model"]["netG"].as_str(), Some("spade"));
        assert_eq!(t.base["train"]["lr"].as_f64(), Some(0.0002));
        // profiles: the child's scale over the parent's mini, everything else of it kept.
        let mini = &t.profiles["mini"];
        assert_eq!((mini.description.as_str(), mini.scale.as_str()), ("parent mini", "64x64, longer"));
        assert_eq!((mini.set.clone(), mini.seeds, mini.compact_ngf), (vec!["model.ngf=16".to_string()], 3, Some(12)));
        assert_eq!(t.profiles["smoke"].description, "parent smoke");
        assert_eq!(t.profiles["extra"].scale, "s");
    }

    #[test]
    fn extends_refuses_a_cycle_and_a_missing_parent() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, "extends: b\ntable: a\ntitle: a\nmetric: mIoU\nrows: [{id: x, method: X}]\n").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "extends: a\ntable: b\n").unwrap();
        let e = format!("{:#}", load_table(a.to_str().unwrap()).unwrap_err());
        assert!(e.contains("chains back to itself"), "{e}");
        std::fs::write(&a, "extends: nothere\ntable: a\ntitle: a\nmetric: mIoU\nrows: [{id: x, method: X}]\n").unwrap();
        let e = format!("{:#}", load_table(a.to_str().unwrap()).unwrap_err());
        assert!(e.contains("nothere.yaml: cannot read the table"), "{e}");
    }

    #[test]
    fn tables_that_extend_table3_resolve_to_its_mini_configs() {
        // Table 4's first row and the norm ablation's sync-batch 3x3 row are Table 3's SPADE
        // decoder: one run in the store for all three.
        let root = Path::new("/store");
        let dir = |table: &str, row: &str| {
            let t = load_table(table).unwrap();
            let args = Args::for_report(table, "mini", DatasetMode::Synthetic);
            let r = t.rows.iter().find(|r| r.id == row).unwrap();
            run_dir_for_in(root, &t, &t.profiles["mini"], r, &args, 0).unwrap().0
        };
        let spade = dir("table3", "spade");
        assert_eq!(dir("table4", "segmap_input"), spade);
        assert_eq!(dir("ablation_spade_norm", "norm_G=spectralspadesyncbatch3x3"), spade);
        assert_eq!(dir("table1", "spade"), spade);
    }
}
