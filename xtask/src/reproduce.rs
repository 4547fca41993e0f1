//! `cargo xtask reproduce <table>`: every row of `experiments/<table>.yaml` trained (or reused
//! when a finished run has the same resolved config), evaluated, and reported.
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spade_train::config::ExperimentConfig;
use spade_train::evaluate::evaluate_run;
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
    pub dataset: String,
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
    /// `--cuda`, and the segmenter and FID weights (resolved before any row trains).
    #[command(flatten)]
    pub eval: crate::eval_setup::EvalArgs,
}

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

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// `experiments/<name>.yaml`, or a path to a table or ablation file.
pub fn load_table(name: &str) -> Result<TableFile> {
    let path = if name.ends_with(".yaml") || name.ends_with(".yml") {
        PathBuf::from(name)
    } else {
        workspace_root().join("experiments").join(format!("{name}.yaml"))
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read the table", path.display()))?;
    let mut t: TableFile =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: not a table file", path.display()))?;
    t.expand_grid();
    if t.rows.is_empty() {
        bail!("{}: no rows and no grid", path.display());
    }
    Ok(t)
}

/// The resolved experiment of one row under a profile and dataset.
pub fn row_config(t: &TableFile, profile: &Profile, row: &Row, args: &Args) -> Result<ExperimentConfig> {
    let base = serde_yaml_ng::to_string(&t.base)?;
    let mut sets = profile.set.clone();
    if args.dataset != "synthetic" {
        let mode = match args.dataset.as_str() {
            "coco-stuff" | "coco" => "coco",
            "ade20k" => "ade20k",
            "ade20k-outdoor" | "ade20k_outdoor" => "ade20k_outdoor",
            "cityscapes" => "cityscapes",
            "folder" | "custom" => "custom",
            other => {
                bail!("--dataset {other}: expected synthetic, coco-stuff, ade20k, ade20k-outdoor, cityscapes or folder")
            }
        };
        let root = args.data_root.as_ref().context("--dataset needs --data-root")?;
        sets.push(format!("data.dataset_mode={mode}"));
        sets.push(format!("data.dataroot={}", root.display()));
        sets.retain(|s| !s.starts_with("data.synthetic_count"));
    }
    sets.extend(row.set.iter().cloned());
    if row.compact {
        let ngf = profile.compact_ngf.context("the profile has no compact_ngf for compact rows")?;
        sets.push(format!("model.ngf={ngf}"));
    }
    sets.extend(args.sets.iter().cloned());
    sets.push(format!("name={}/{}", t.table, row.id));
    Ok(ExperimentConfig::from_yaml(&base, &sets).with_context(|| format!("row {}", row.id))?)
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
    let runs = runs_dir(&t.table, &args.profile);
    std::fs::create_dir_all(&runs)?;
    for row in rows.iter().filter(|r| r.not_run.is_some()) {
        eprintln!("{}: not run: {}", row.id, row.not_run.as_deref().unwrap_or(""));
    }
    let rows: Vec<&Row> = rows.into_iter().filter(|r| r.not_run.is_none()).collect();
    // Every file the evaluation needs, found and opened before any row trains.
    let first = match rows.first() {
        Some(r) => row_config(&t, profile, r, &args)?,
        None => return crate::report::build(&t, &args.profile),
    };
    let eval = crate::eval_setup::prepare(&args.eval, &first, profile.segmenter, &root.join("runs/cache"))?;
    let device = eval.device.clone();
    let job = JobBar::new(rows.len());
    for (i, row) in rows.iter().enumerate() {
        job.start_row(i, row);
        let cfg = row_config(&t, profile, row, &args)?;
        let dir = runs.join(&row.id);
        let yaml = cfg.to_yaml();
        let finished = std::fs::read_to_string(dir.join("config.yaml")).ok().as_deref() == Some(yaml.as_str())
            && dir.join("metrics.json").is_file()
            && dir.join("row.json").is_file();
        if finished && !args.fresh {
            job.println(format!("{}: reusing the finished run with the same config", row.id));
            job.row_done(i);
            // A reused row takes no time: keep it out of the job's speed estimate.
            job.bar.reset_eta();
            continue;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("{}: cannot clear the old run", dir.display()))?;
        }
        let t0 = Instant::now();
        let ro = RunOptions {
            output_dir: dir.clone(),
            resume: false,
            max_iters: None,
            progress: true,
            device: device.clone(),
            job: Some(job.for_training(i, row)),
        };
        let summary = train(&cfg, &ro).with_context(|| format!("training row {}", row.id))?;
        let train_s = t0.elapsed().as_secs_f64();
        job.evaluating(i, row);
        let t1 = Instant::now();
        evaluate_run(&dir, &cfg, eval.segmenter(), eval.fid(), &device)
            .with_context(|| format!("evaluating row {}", row.id))?;
        eval.setup.write(&dir)?;
        let row_info = serde_json::json!({
            "table": t.table, "row": row.id, "method": row.method, "profile": args.profile,
            "profile_scale": profile.scale, "dataset": args.dataset,
            "iterations": summary.iterations, "train_wall_s": train_s, "eval_wall_s": t1.elapsed().as_secs_f64(),
            "config_sha256": sha256(yaml.as_bytes()),
        });
        std::fs::write(dir.join("row.json"), serde_json::to_string_pretty(&row_info)?)?;
        job.println(format!(
            "{}: {} iterations in {:.0} s, evaluated in {:.0} s",
            row.id,
            summary.iterations,
            train_s,
            t1.elapsed().as_secs_f64()
        ));
        job.row_done(i);
    }
    job.finish();
    crate::report::build(&t, &args.profile)
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

    fn label(&self, i: usize, row: &Row) -> String {
        format!("row {}/{} {} ({})", i + 1, self.n, row.id, row.method)
    }

    fn start_row(&self, i: usize, row: &Row) {
        self.bar.set_prefix(format!("rows done {i}/{}", self.n));
        self.bar.set_message(format!("{}: preparing", self.label(i, row)));
        self.bar.set_position(i as u64 * ROW_UNITS);
    }

    /// The training run's hook: moves the job bar with the run's iterations.
    fn for_training(&self, i: usize, row: &Row) -> spade_train::run::JobProgress {
        let bar = self.bar.clone();
        let label = self.label(i, row);
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

    fn evaluating(&self, i: usize, row: &Row) {
        self.bar.set_position(i as u64 * ROW_UNITS + (TRAIN_SHARE * ROW_UNITS as f64) as u64);
        self.bar.set_message(format!("{}: evaluating", self.label(i, row)));
    }

    fn row_done(&self, i: usize) {
        self.bar.set_position((i as u64 + 1) * ROW_UNITS);
        self.bar.set_prefix(format!("rows done {}/{}", i + 1, self.n));
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

/// `runs/<table>/<row>` for the default profile (mini), `runs/<table>-<profile>/<row>` otherwise,
/// so that a CI smoke run never overwrites the runs a report was built from.
pub fn runs_dir(table: &str, profile: &str) -> PathBuf {
    runs_dir_in(&workspace_root(), table, profile)
}

/// [`runs_dir`] under another root.
pub fn runs_dir_in(root: &Path, table: &str, profile: &str) -> PathBuf {
    let name = if profile == "mini" { table.to_string() } else { format!("{table}-{profile}") };
    root.join("runs").join(name)
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
