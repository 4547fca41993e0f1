//! `cargo xtask report <table>`: `reports/<stem>.md`, `<stem>.csv` and `<stem>_claims.csv`
//! built only from the files of the runs in the store (config.yaml, run.json, metrics.json,
//! row.json, losses.jsonl). Per row, the seeds' values are aggregated with polars (mean,
//! standard deviation, count), the 95% confidence half-width comes from Student's t, and each
//! claim of the paper's table is judged by Welch's t-test ([`crate::stats`]).
use crate::reproduce::{load_table, run_dir_for_in, seed_count, store_dir, workspace_root, Profile, Row, TableFile};
use crate::stats::{self, Verdict};
use anyhow::{Context, Result};
use polars::prelude::{Column, CsvWriter, DataFrame, SerWriter};
use serde::Deserialize;
use spade_train::layout::{Metrics, RowInfo, RunDir};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(default_value = "table3")]
    pub table: String,
    #[arg(long, default_value = "mini")]
    pub profile: String,
    /// The dataset whose runs are reported.
    #[arg(long, default_value = "synthetic")]
    pub dataset: spade_data::DatasetMode,
    /// The dataset's root as the runs were made with (part of their configs, so of where they
    /// are stored); needed for every dataset but the built-in one.
    #[arg(long)]
    pub data_root: Option<std::path::PathBuf>,
    /// Seeds per row (default: the profile's).
    #[arg(long)]
    pub seeds: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let t = load_table(&args.table)?;
    let mut ra = crate::reproduce::Args::for_report(&args.table, &args.profile, args.dataset);
    ra.seeds = args.seeds;
    ra.data_root = args.data_root;
    build(&t, &ra)
}

/// A measured column of the report: one list for the markdown table, the CSV and the claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    #[default]
    Miou,
    Accuracy,
    UniformAccuracy,
    FdEvaluator,
    Fid,
    Diversity,
}

impl Metric {
    pub const ALL: [Metric; 6] =
        [Metric::Miou, Metric::Accuracy, Metric::UniformAccuracy, Metric::FdEvaluator, Metric::Fid, Metric::Diversity];

    /// The CSV prefix (`<key>_mean`, `<key>_std`, `<key>_ci95`).
    pub fn key(self) -> &'static str {
        match self {
            Metric::Miou => "miou",
            Metric::Accuracy => "accuracy",
            Metric::UniformAccuracy => "uniform_accuracy",
            Metric::FdEvaluator => "fd_evaluator",
            Metric::Fid => "fid",
            Metric::Diversity => "diversity",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Metric::Miou => "mIoU",
            Metric::Accuracy => "accuracy",
            Metric::UniformAccuracy => "uniform-map accuracy",
            Metric::FdEvaluator => "FD in evaluator features",
            Metric::Fid => "FID",
            Metric::Diversity => "diversity (mean pairwise L1)",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::FdEvaluator | Metric::Fid)
    }

    /// Shown in percent (fractions in the run files).
    fn percent(self) -> bool {
        matches!(self, Metric::Miou | Metric::Accuracy | Metric::UniformAccuracy)
    }

    fn decimals(self) -> usize {
        match self {
            Metric::Diversity => 3,
            _ => 1,
        }
    }

    fn format(self, x: f64) -> String {
        format!("{x:.*}", self.decimals())
    }

    /// The value of one run, in report units.
    fn of(self, m: &Metrics) -> Option<f64> {
        let scale = if self.percent() { 100.0 } else { 1.0 };
        let v = match self {
            Metric::Miou => m.segmentation.generated().map(|s| s.miou),
            Metric::Accuracy => m.segmentation.generated().map(|s| s.accuracy),
            Metric::UniformAccuracy => m.uniform_maps.pixel_accuracy(),
            Metric::FdEvaluator => m.fd_evaluator.value,
            Metric::Fid => m.fid.value,
            Metric::Diversity => m.diversity.value,
        };
        v.filter(|x| x.is_finite()).map(|x| x * scale)
    }
}

/// A claim of the paper's table, as `claims:` in the table file gives it.
#[derive(Debug, Clone, Deserialize)]
pub struct Claim {
    #[serde(flatten)]
    pub kind: ClaimKind,
    #[serde(default)]
    pub metric: Metric,
    /// The claim in words.
    pub paper: String,
    /// Where the paper says it (quoted).
    #[serde(default)]
    pub source: String,
    /// The margin of `similar` and `no_gain` claims, in the metric's units (default 3).
    #[serde(default)]
    pub margin: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ClaimKind {
    Better { better: String, worse: String },
    Similar { similar: [String; 2] },
    NoGain { no_gain: String, over: String },
}

impl Claim {
    fn rows(&self) -> (&str, &str) {
        match &self.kind {
            ClaimKind::Better { better, worse } => (better, worse),
            ClaimKind::Similar { similar } => (&similar[0], &similar[1]),
            ClaimKind::NoGain { no_gain, over } => (no_gain, over),
        }
    }

    fn margin(&self) -> f64 {
        self.margin.unwrap_or(DEFAULT_MARGIN)
    }

    fn relation(&self) -> String {
        let (a, b) = self.rows();
        match self.kind {
            ClaimKind::Better { .. } => format!("{a} better than {b}"),
            ClaimKind::Similar { .. } => format!("{a} within ±{} of {b}", self.margin()),
            ClaimKind::NoGain { .. } => format!("{a} no better than {b} (margin {})", self.margin()),
        }
    }
}

/// The margin of `similar` / `no_gain` claims unless a claim gives its own.
pub const DEFAULT_MARGIN: f64 = 3.0;

/// The rules, as the report prints them.
pub fn rules_text() -> String {
    format!(
        "Each claim is judged on the per-seed values of its metric with Welch's t-test (unequal variances), at alpha = {a}. \
         For lower-is-better metrics (FD, FID) \"better\" means lower. \
         **better A than B**: reproduced when A is better with one-sided p < {a}; not reproduced when B is better with one-sided p < {a}; otherwise inconclusive. \
         **A within ±m of B**: reproduced when the 95% confidence interval of A - B lies inside (-m, m); not reproduced when the difference is significant (two-sided p < {a}) and its estimate lies outside ±m; otherwise inconclusive. \
         **A no better than B**: not reproduced when A is better with one-sided p < {a}; reproduced when the upper end of the 95% CI of A - B (oriented so that higher is better) is below m; otherwise inconclusive. \
         Fewer than 2 seeds on either side: inconclusive. Two rows that are the same runs in this profile (identical configs): not tested. \
         The margin m is {m} points unless the claim gives its own.",
        a = stats::ALPHA,
        m = DEFAULT_MARGIN
    )
}

/// One finished run of a row.
#[derive(Debug)]
pub struct RunRecord {
    pub seed: u64,
    pub dir: PathBuf,
    pub info: RowInfo,
    pub metrics: Metrics,
    pub objective: Option<String>,
    /// The evaluation used weights that are not the released ones (`eval_protocol.json`'s
    /// `test_weights`): its segmentation and FID numbers test the pipeline, nothing more.
    pub test_weights: bool,
}

/// A row of the table with its runs.
pub struct RowRuns<'a> {
    pub row: &'a Row,
    pub runs: Vec<RunRecord>,
    /// Run directories of every seed, finished or not (for "same runs" detection).
    pub dirs: Vec<PathBuf>,
}

impl RowRuns<'_> {
    fn values(&self, m: Metric) -> Vec<f64> {
        self.runs.iter().filter_map(|r| m.of(&r.metrics)).collect()
    }
    fn status(&self, seeds: usize) -> String {
        if let Some(reason) = &self.row.not_run {
            return format!("not run: {reason}");
        }
        match self.runs.len() {
            0 => "not run".into(),
            n if n < seeds => format!("partial: {n} of {seeds} seeds"),
            _ => "run".into(),
        }
    }
}

/// The finished runs of every row and seed, from the store under `root`.
pub fn collect<'a>(
    root: &Path,
    t: &'a TableFile,
    profile: &Profile,
    args: &crate::reproduce::Args,
) -> Result<Vec<RowRuns<'a>>> {
    let seeds = seed_count(args, profile);
    let mut out = Vec::new();
    for row in &t.rows {
        let mut rr = RowRuns { row, runs: Vec::new(), dirs: Vec::new() };
        if row.not_run.is_none() {
            for seed in 0..seeds as u64 {
                let (dir, cfg) = run_dir_for_in(root, t, profile, row, args, seed)?;
                rr.dirs.push(dir.clone());
                let rd = RunDir::new(&dir);
                let Some(info) = rd.finished_row(&cfg.to_yaml()) else { continue };
                rr.runs.push(RunRecord {
                    test_weights: rd.used_test_weights()?,
                    seed,
                    info,
                    metrics: rd.read_metrics()?,
                    objective: rd.read_run_info().ok().map(|r| r.objective),
                    dir,
                });
            }
        }
        out.push(rr);
    }
    Ok(out)
}

/// Per row and metric: (mean, standard deviation, count), aggregated with polars from one
/// line per run.
pub fn aggregate(rows: &[RowRuns]) -> Result<Vec<[(f64, f64, usize); 6]>> {
    let mut ids = Vec::new();
    let mut cols: Vec<Vec<Option<f64>>> = vec![Vec::new(); Metric::ALL.len()];
    for r in rows {
        for run in &r.runs {
            ids.push(r.row.id.clone());
            for (k, m) in Metric::ALL.iter().enumerate() {
                cols[k].push(m.of(&run.metrics));
            }
        }
    }
    let mut columns = vec![Column::new("row".into(), ids)];
    for (k, m) in Metric::ALL.iter().enumerate() {
        columns.push(Column::new(m.key().into(), std::mem::take(&mut cols[k])));
    }
    let df = DataFrame::new_infer_height(columns)?;
    let keys: Vec<&str> = Metric::ALL.iter().map(|m| m.key()).collect();
    // The eager group-by aggregations: the lazy engine is not compiled in (compile time).
    #[allow(deprecated)]
    let (mean, sd, count) = (
        df.group_by_stable(["row"])?.select(keys.clone()).mean()?,
        df.group_by_stable(["row"])?.select(keys.clone()).std(1)?,
        df.group_by_stable(["row"])?.select(keys.clone()).count()?,
    );
    let index_of = |frame: &DataFrame, id: &str| -> Option<usize> {
        let c = frame.column("row").ok()?;
        (0..frame.height()).find(|&i| c.get(i).ok().and_then(|v| v.get_str().map(|s| s == id)).unwrap_or(false))
    };
    let num = |frame: &DataFrame, name: &str, i: usize| -> Option<f64> {
        frame.column(name).ok()?.get(i).ok()?.extract::<f64>()
    };
    let mut out = Vec::new();
    for r in rows {
        let mut s = [(f64::NAN, f64::NAN, 0usize); 6];
        if let Some(i) = index_of(&mean, &r.row.id) {
            for (k, m) in Metric::ALL.iter().enumerate() {
                let mu = num(&mean, &format!("{}_mean", m.key()), i).unwrap_or(f64::NAN);
                let sdv = index_of(&sd, &r.row.id)
                    .and_then(|j| num(&sd, &format!("{}_agg_std", m.key()), j))
                    .unwrap_or(f64::NAN);
                let n = index_of(&count, &r.row.id)
                    .and_then(|j| num(&count, &format!("{}_count", m.key()), j))
                    .unwrap_or(0.0) as usize;
                s[k] = (mu, sdv, n);
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// What a claim came to.
pub struct ClaimResult<'a> {
    pub claim: &'a Claim,
    pub mean_a: f64,
    pub mean_b: f64,
    pub welch: Option<stats::Welch>,
    pub verdict: Verdict,
    pub note: String,
}

/// Judges every claim of the table (see [`rules_text`]).
pub fn judge<'a>(t: &'a TableFile, rows: &[RowRuns]) -> Vec<ClaimResult<'a>> {
    let find = |id: &str| rows.iter().find(|r| r.row.id == id);
    t.claims
        .iter()
        .map(|c| {
            let (a, b) = c.rows();
            let (Some(ra), Some(rb)) = (find(a), find(b)) else {
                return ClaimResult {
                    claim: c,
                    mean_a: f64::NAN,
                    mean_b: f64::NAN,
                    welch: None,
                    verdict: Verdict::NotTested,
                    note: format!("no row {a} or {b} in the table"),
                };
            };
            // Orient so that higher is better.
            let sign = if c.metric.higher_is_better() { 1.0 } else { -1.0 };
            let va: Vec<f64> = ra.values(c.metric).iter().map(|x| sign * x).collect();
            let vb: Vec<f64> = rb.values(c.metric).iter().map(|x| sign * x).collect();
            let (mean_a, mean_b) = (sign * stats::summary(&va).0, sign * stats::summary(&vb).0);
            if !ra.dirs.is_empty() && ra.dirs == rb.dirs {
                return ClaimResult {
                    claim: c,
                    mean_a,
                    mean_b,
                    welch: None,
                    verdict: Verdict::NotTested,
                    note: "the two rows are the same runs in this profile (identical configs)".into(),
                };
            }
            let welch = stats::welch(&va, &vb);
            let verdict = match (&c.kind, &welch) {
                (_, None) => Verdict::Inconclusive,
                (ClaimKind::Better { .. }, Some(w)) => stats::better(w),
                (ClaimKind::Similar { .. }, Some(w)) => stats::similar(w, c.margin()),
                (ClaimKind::NoGain { .. }, Some(w)) => stats::no_gain(w, c.margin()),
            };
            let note = if welch.is_none() {
                format!("{} and {} seeds: fewer than 2 on a side", va.len(), vb.len())
            } else {
                String::new()
            };
            ClaimResult { claim: c, mean_a, mean_b, welch, verdict, note }
        })
        .collect()
}

/// `reports/<stem>.*`: the table's name, then the profile unless mini, then the dataset unless
/// the built-in one.
pub fn report_stem(table: &str, profile: &str, dataset: &str) -> String {
    let mut s = table.to_string();
    if profile != "mini" {
        s.push_str(&format!("-{profile}"));
    }
    if dataset != "synthetic" {
        s.push_str(&format!("-{dataset}"));
    }
    s
}

fn fmt_params(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.1}k", n as f64 / 1e3)
    }
}

fn fmt_p(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The paper's sub-values of a cell: a number is the table's metric (mIoU); a mapping holds
/// `miou`, `accu`, `fid` (Table 1).
const PAPER_PARTS: [&str; 3] = ["miou", "accu", "fid"];

fn paper_part(row: &Row, key: &str, part: &str) -> Option<f64> {
    match row.paper.get(key)? {
        serde_yaml_ng::Value::Mapping(m) => m.get(part).and_then(|v| v.as_f64()),
        v if part == "miou" => v.as_f64(),
        _ => None,
    }
}

/// Whether the table's paper cells are mIoU / accu / FID triples.
fn paper_triples(t: &TableFile) -> bool {
    t.rows.iter().any(|r| r.paper.values().any(|v| v.is_mapping()))
}

fn paper_cell(row: &Row, key: &str, triples: bool) -> String {
    let f = |x: Option<f64>| x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    if triples {
        if !row.paper.contains_key(key) {
            return "-".into();
        }
        PAPER_PARTS.iter().map(|p| f(paper_part(row, key, p))).collect::<Vec<_>>().join(" / ")
    } else {
        f(paper_part(row, key, "miou"))
    }
}

/// The CSV's paper columns: (row key, part, column name), every part some row has.
fn paper_csv_columns(t: &TableFile) -> Vec<(String, &'static str, String)> {
    let mut cols = Vec::new();
    for c in &t.paper_columns {
        for part in PAPER_PARTS {
            if t.rows.iter().any(|r| paper_part(r, &c.key, part).is_some()) {
                cols.push((c.key.clone(), part, format!("paper_{}_{part}", c.key)));
            }
        }
    }
    cols
}

/// A row's value in one CSV column.
enum Cell {
    Text(Option<String>),
    Count(Option<u64>),
    Number(Option<f64>),
    Flag(Option<bool>),
}

/// A polars column of `cells` (all of one kind).
fn cell_column(name: &str, cells: Vec<Cell>) -> Column {
    macro_rules! gather {
        ($variant:ident) => {
            cells.into_iter().map(|c| if let Cell::$variant(v) = c { v } else { None }).collect::<Vec<_>>()
        };
    }
    match cells.first() {
        Some(Cell::Count(_)) => Column::new(name.into(), gather!(Count)),
        Some(Cell::Number(_)) => Column::new(name.into(), gather!(Number)),
        Some(Cell::Flag(_)) => Column::new(name.into(), gather!(Flag)),
        _ => Column::new(name.into(), gather!(Text)),
    }
}

/// A row's aggregates: (mean, sd, count) per metric of [`Metric::ALL`].
type RowAgg = [(f64, f64, usize); 6];
type MdCell<'a> = Box<dyn Fn(&RowRuns, &RowAgg) -> String + 'a>;
type CsvCell<'a> = Box<dyn Fn(&RowRuns, &RowAgg) -> Cell + 'a>;

/// One column of the results table: its markdown title and cell (when the markdown shows it)
/// and its CSV columns. The markdown table and the CSV are both generated from one list.
struct ResultColumn<'a> {
    md: Option<(String, MdCell<'a>)>,
    csv: Vec<(String, CsvCell<'a>)>,
}

impl<'a> ResultColumn<'a> {
    fn both(
        title: &str,
        csv: &str,
        md: impl Fn(&RowRuns, &RowAgg) -> String + 'a,
        value: impl Fn(&RowRuns, &RowAgg) -> Cell + 'a,
    ) -> Self {
        ResultColumn { md: Some((title.into(), Box::new(md))), csv: vec![(csv.into(), Box::new(value))] }
    }
    fn csv(csv: &str, value: impl Fn(&RowRuns, &RowAgg) -> Cell + 'a) -> Self {
        ResultColumn { md: None, csv: vec![(csv.into(), Box::new(value))] }
    }
}

/// A row's first run (for what all its runs share: parameter count, objective, evaluator).
fn first<'r>(r: &'r RowRuns) -> Option<&'r RunRecord> {
    r.runs.first()
}

/// The columns of a table's results, in order.
fn result_columns<'a>(t: &'a TableFile, dataset: &'a str, profile: &'a str, seeds: usize) -> Vec<ResultColumn<'a>> {
    let mut cols = vec![
        ResultColumn::csv("row", |r, _| Cell::Text(Some(r.row.id.clone()))),
        ResultColumn::both(
            "method",
            "method",
            |r, _| r.row.method.clone(),
            |r, _| Cell::Text(Some(r.row.method.clone())),
        ),
        ResultColumn::csv("dataset", move |_, _| Cell::Text(Some(dataset.to_string()))),
        ResultColumn::csv("profile", move |_, _| Cell::Text(Some(profile.to_string()))),
        ResultColumn::both(
            "seeds",
            "seeds",
            |r, _| r.runs.len().to_string(),
            |r, _| Cell::Count(Some(r.runs.len() as u64)),
        ),
        ResultColumn::both(
            "#param G",
            "params_G",
            move |r, _| first(r).map(|x| fmt_params(x.metrics.parameters_g as u64)).unwrap_or_default(),
            move |r, _| Cell::Count(first(r).map(|x| x.metrics.parameters_g as u64)),
        ),
    ];
    for (k, m) in Metric::ALL.iter().copied().enumerate() {
        let md: MdCell = Box::new(move |_, s| {
            let (mu, sd, n) = s[k];
            match (nan_none(mu), n) {
                (None, _) => "unavailable".into(),
                (Some(mu), n) if n >= 2 && sd.is_finite() => {
                    format!("{} ± {}", m.format(mu), m.format(stats::ci95(sd, n)))
                }
                (Some(mu), _) => m.format(mu),
            }
        });
        cols.push(ResultColumn {
            md: Some((m.title().into(), md)),
            csv: vec![
                (format!("{}_mean", m.key()), Box::new(move |_, s| Cell::Number(nan_none(s[k].0)))),
                (format!("{}_std", m.key()), Box::new(move |_, s| Cell::Number(nan_none(s[k].1)))),
                (
                    format!("{}_ci95", m.key()),
                    Box::new(move |_, s| Cell::Number(nan_none(stats::ci95(s[k].1, s[k].2)))),
                ),
            ],
        });
    }
    cols.extend([
        ResultColumn::both(
            "G objective",
            "objective",
            move |r, _| first(r).and_then(|x| x.objective.clone()).unwrap_or_default(),
            move |r, _| Cell::Text(first(r).and_then(|x| x.objective.clone())),
        ),
        ResultColumn::both(
            "status",
            "status",
            move |r, _| r.status(seeds),
            move |r, _| Cell::Text(Some(r.status(seeds))),
        ),
        ResultColumn::csv("test_weights", |r, _| {
            Cell::Flag((!r.runs.is_empty()).then(|| r.runs.iter().any(|x| x.test_weights)))
        }),
        ResultColumn::csv("segmenter_real_miou", move |r, _| {
            Cell::Number(first(r).and_then(|x| x.metrics.segmentation.real_images()).map(|s| 100.0 * s.miou))
        }),
        ResultColumn::csv("segmenter_real_uniform_accuracy", move |r, _| {
            Cell::Number(first(r).and_then(|x| x.metrics.uniform_maps.real_images_pixel_accuracy()).map(|x| 100.0 * x))
        }),
    ]);
    for (key, part, name) in paper_csv_columns(t) {
        cols.push(ResultColumn::csv(&name, move |r, _| Cell::Number(paper_part(r.row, &key, part))));
    }
    cols.extend([
        ResultColumn::csv("iterations", move |r, _| Cell::Count(first(r).map(|x| x.info.iterations as u64))),
        ResultColumn::csv("train_wall_s_mean", |r, _| {
            Cell::Number(
                (!r.runs.is_empty())
                    .then(|| r.runs.iter().map(|x| x.info.train_wall_s).sum::<f64>() / r.runs.len() as f64),
            )
        }),
        ResultColumn::csv("code_revisions", |r, _| {
            let v: std::collections::BTreeSet<&str> = r.runs.iter().map(|x| x.info.code_revision.as_str()).collect();
            Cell::Text((!v.is_empty()).then(|| v.into_iter().collect::<Vec<_>>().join(" ")))
        }),
    ]);
    cols
}

fn nan_none(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn write_csv(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    CsvWriter::new(&mut f).include_header(true).finish(df).with_context(|| format!("{}: writing", path.display()))
}

/// Writes the reports of `t` from the runs of `args` (profile, dataset, seeds).
pub fn build(t: &TableFile, args: &crate::reproduce::Args) -> Result<()> {
    build_in(&workspace_root(), t, args)
}

/// [`build`] with the runs under `root/runs` and the reports written to `root/reports`.
pub fn build_in(root: &Path, t: &TableFile, args: &crate::reproduce::Args) -> Result<()> {
    let profile = t
        .profiles
        .get(&args.profile)
        .with_context(|| format!("profile {} not in the table {}", args.profile, t.table))?;
    let seeds = seed_count(args, profile);
    let dataset = crate::reproduce::dataset_key(args);
    let stem = report_stem(&t.table, &args.profile, &dataset);
    let rows = collect(root, t, profile, args)?;
    let agg = aggregate(&rows)?;
    let claims = judge(t, &rows);
    let code_rev = crate::reproduce::code_revision(root);
    let git_rev = spade_train::run::git_revision();
    let triples = paper_triples(t);
    let store = store_dir(root, &args.profile, &dataset);
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();

    // ---- markdown
    let mut md = String::new();
    let dataset_name =
        if dataset == "synthetic" { "the built-in synthetic dataset".to_string() } else { dataset.clone() };
    writeln!(md, "# {} — {dataset_name}, profile {}\n", t.title, args.profile)?;
    let revisions: std::collections::BTreeSet<String> =
        rows.iter().flat_map(|r| r.runs.iter().map(|x| x.info.code_revision.clone())).collect();
    let gits: std::collections::BTreeSet<String> =
        rows.iter().flat_map(|r| r.runs.iter().map(|x| x.info.git_revision.clone())).collect();
    writeln!(
        md,
        "Built by `cargo xtask report {}` at git revision `{git_rev}` (code revision `{code_rev}`), from the runs in `{}`. \
         The runs were made at code revision(s) {} (git {}). The code revision hashes the source of the crates that train and score \
         (spade-io, -data, -models, -metrics, -train) and Cargo.lock{}.\n",
        t.table,
        rel(&store),
        revisions.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "),
        gits.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "),
        if revisions.iter().any(|r| *r != code_rev) && !revisions.is_empty() {
            "; **some runs were made at another code revision than this report's** (reused with --allow-other-revisions); each row's revisions are listed under Runs"
        } else {
            ""
        }
    )?;
    writeln!(md, "**Profile {}:** {}. **Scale:** {}\n", args.profile, profile.description, profile.scale)?;
    // The evaluator, from the first run that has it.
    let first = rows.iter().flat_map(|r| r.runs.iter()).next();
    if let Some(run) = first {
        let real = run.metrics.segmentation.real_images();
        let real_miou = real.map(|s| 100.0 * s.miou);
        let real_acc = real.map(|s| 100.0 * s.accuracy);
        let real_uniform = run.metrics.uniform_maps.real_images_pixel_accuracy().map(|x| 100.0 * x);
        let f = |x: Option<f64>| x.map(|x| format!("{x:.1}%")).unwrap_or_else(|| "unavailable".into());
        writeln!(
            md,
            "**Evaluator:** {}. On real validation images: **mIoU {}**, pixel accuracy {}; on real single-class images: pixel accuracy {}.{}\n",
            run.metrics.segmentation.segmenter().unwrap_or("no segmentation network"),
            f(real_miou),
            f(real_acc),
            f(real_uniform),
            match real_miou {
                Some(x) if dataset == "synthetic" && x >= 80.0 => " It passes the project's bar (80% mIoU on real images).",
                Some(_) if dataset == "synthetic" => " **It is below the project's bar of 80% mIoU on real images: the segmentation scores below are weak evidence.**",
                _ => "",
            }
        )?;
    }
    if rows.iter().flat_map(|r| r.runs.iter()).any(|r| r.test_weights) {
        writeln!(
            md,
            "**Test weights.** Some runs were scored with segmenter or Inception weights that are not the released ones \
             (`eval_protocol.json`: `test_weights`, e.g. random weights written by a test). Their mIoU, accuracy and FID \
             check the pipeline and say nothing about image quality; the CSV marks them in `test_weights`.\n"
        )?;
    }
    writeln!(md, "## Results\n")?;
    writeln!(
        md,
        "Mean ± 95% confidence half-width (Student's t) over the seeds. mIoU and accuracy: the segmenter on the generated validation images against their label maps (percent). \
         Uniform-map accuracy: the paper's wash-away test (Section 3), the fraction of pixels the segmenter gives the map's class on single-class label maps, one per class (percent). \
         FD in evaluator features: the Fréchet distance between real and generated validation images in the segmenter's penultimate features (global average pool) — not FID. \
         FID: only with Inception weights. Diversity: the mean pairwise L1 distance between outputs for the same label (pixels in [0, 1]; 0 for generators without z).\n"
    )?;
    let columns = result_columns(t, &dataset, &args.profile, seeds);
    let head: Vec<&str> = columns.iter().filter_map(|c| c.md.as_ref().map(|(title, _)| title.as_str())).collect();
    writeln!(md, "| {} |\n|{}", head.join(" | "), "---|".repeat(head.len()))?;
    for (r, s) in rows.iter().zip(&agg) {
        let mut cells: Vec<String> = if r.runs.is_empty() {
            // A row without runs: its method, then why.
            vec![r.row.method.clone(), r.status(seeds)]
        } else {
            columns.iter().filter_map(|c| c.md.as_ref().map(|(_, cell)| cell(r, s))).collect()
        };
        cells.resize(head.len(), String::new());
        writeln!(md, "| {} |", cells.join(" | "))?;
    }
    writeln!(md)?;

    if !claims.is_empty() {
        writeln!(md, "## The paper's claims\n")?;
        writeln!(md, "| claim (the paper) | metric | test | measured A / B | A - B (95% CI) | p (one-sided / two-sided) | verdict |\n|---|---|---|---|---|---|---|")?;
        for c in &claims {
            let m = c.claim.metric;
            let (ci, p) = match &c.welch {
                Some(w) => {
                    let sign = if m.higher_is_better() { 1.0 } else { -1.0 };
                    let (lo, hi) = w.ci95();
                    let (lo, hi) = if sign > 0.0 { (lo, hi) } else { (-hi, -lo) };
                    (
                        format!("{} ({} .. {})", m.format(sign * w.diff), m.format(lo), m.format(hi)),
                        format!("{} / {}", fmt_p(w.p_greater), fmt_p(w.p_two_sided)),
                    )
                }
                None => ("-".into(), "-".into()),
            };
            let verdict = if c.note.is_empty() {
                format!("**{}**", c.verdict.as_str())
            } else {
                format!("**{}** ({})", c.verdict.as_str(), c.note)
            };
            writeln!(
                md,
                "| {} — {} | {} | {} | {} / {} | {ci} | {p} | {verdict} |",
                c.claim.paper,
                c.claim.source,
                m.title(),
                c.claim.relation(),
                if c.mean_a.is_finite() { m.format(c.mean_a) } else { "-".into() },
                if c.mean_b.is_finite() { m.format(c.mean_b) } else { "-".into() },
            )?;
        }
        writeln!(md, "\n{}\n", rules_text())?;
    }

    if t.rows.iter().any(|r| !r.paper.is_empty()) {
        writeln!(md, "## The paper's values\n")?;
        writeln!(
            md,
            "For reference only: the paper's numbers are on other datasets, at full scale and with other segmenters, so they do not compare with the measured values above in absolute terms; only orderings can. {}\n",
            t.paper_note
        )?;
        let mut head = vec!["method".to_string()];
        if t.rows.iter().any(|r| r.paper.contains_key("params")) {
            head.push("#param".into());
        }
        for c in &t.paper_columns {
            head.push(if triples {
                format!("{} (mIoU / accu / FID)", c.title)
            } else {
                format!("{} {}", c.title, t.metric)
            });
        }
        writeln!(md, "| {} |\n|{}", head.join(" | "), "---|".repeat(head.len()))?;
        for r in &t.rows {
            let mut cells = vec![r.method.clone()];
            if head.get(1).map(|h| h == "#param").unwrap_or(false) {
                cells.push(r.paper.get("params").and_then(|v| v.as_str().map(String::from)).unwrap_or_default());
            }
            for c in &t.paper_columns {
                cells.push(paper_cell(r, &c.key, triples));
            }
            writeln!(md, "| {} |", cells.join(" | "))?;
        }
        writeln!(md)?;
    } else {
        writeln!(md, "## The paper's values\n\n{}\n", t.paper_note)?;
    }

    // ---- plots
    let out = root.join("reports");
    std::fs::create_dir_all(&out)?;
    let plot_rows: Vec<crate::plots::PlotRow> = rows
        .iter()
        .zip(&agg)
        .filter(|(r, _)| !r.runs.is_empty())
        .map(|(r, s)| crate::plots::PlotRow {
            id: r.row.id.clone(),
            bars: [Metric::Miou, Metric::Accuracy, Metric::UniformAccuracy]
                .iter()
                .map(|m| {
                    let k = Metric::ALL.iter().position(|x| x == m).unwrap();
                    let (mu, sd, n) = s[k];
                    (m.title().to_string(), nan_none(mu), nan_none(stats::ci95(sd, n)))
                })
                .collect(),
            diversity: {
                let k = Metric::ALL.iter().position(|x| *x == Metric::Diversity).unwrap();
                let (mu, sd, n) = s[k];
                (nan_none(mu), nan_none(stats::ci95(sd, n)))
            },
            dirs: r.runs.iter().map(|x| x.dir.clone()).collect(),
        })
        .collect();
    let plots = crate::plots::write_all(&out, &stem, &plot_rows)?;
    if !plots.is_empty() {
        writeln!(md, "## Figures\n")?;
        for (name, caption) in &plots {
            writeln!(md, "{caption}\n\n![{name}]({name})\n")?;
        }
    }

    writeln!(md, "## Runs\n")?;
    for r in rows.iter().filter(|r| !r.runs.is_empty()) {
        let revs: std::collections::BTreeSet<&str> = r.runs.iter().map(|x| x.info.code_revision.as_str()).collect();
        let mean_s = r.runs.iter().map(|x| x.info.train_wall_s).sum::<f64>() / r.runs.len() as f64;
        writeln!(
            md,
            "- {}: seeds {} in {}; {} iterations, {:.0} s of training per seed; code revision {}",
            r.row.id,
            r.runs.iter().map(|x| x.seed.to_string()).collect::<Vec<_>>().join(", "),
            r.runs.iter().map(|x| format!("`{}`", rel(&x.dir))).collect::<Vec<_>>().join(", "),
            r.runs[0].info.iterations,
            mean_s,
            revs.iter().map(|x| format!("`{x}`")).collect::<Vec<_>>().join(", "),
        )?;
    }
    std::fs::write(out.join(format!("{stem}.md")), md)?;

    // ---- CSV: one line per row, the same column list
    let mut cols = Vec::new();
    for c in &columns {
        for (name, value) in &c.csv {
            let cells: Vec<Cell> = rows.iter().zip(&agg).map(|(r, s)| value(r, s)).collect();
            cols.push(cell_column(name, cells));
        }
    }
    let mut df = DataFrame::new_infer_height(cols)?;
    write_csv(&out.join(format!("{stem}.csv")), &mut df)?;

    // ---- claims CSV
    if !claims.is_empty() {
        let c_s = |f: &dyn Fn(&ClaimResult) -> String| claims.iter().map(f).collect::<Vec<_>>();
        let c_x = |f: &dyn Fn(&ClaimResult) -> Option<f64>| claims.iter().map(f).collect::<Vec<_>>();
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("claim".into(), c_s(&|c| c.claim.paper.clone())),
            Column::new("metric".into(), c_s(&|c| c.claim.metric.key().to_string())),
            Column::new("test".into(), c_s(&|c| c.claim.relation())),
            Column::new("row_a".into(), c_s(&|c| c.claim.rows().0.to_string())),
            Column::new("row_b".into(), c_s(&|c| c.claim.rows().1.to_string())),
            Column::new("mean_a".into(), c_x(&|c| nan_none(c.mean_a))),
            Column::new("mean_b".into(), c_x(&|c| nan_none(c.mean_b))),
            Column::new("welch_t".into(), c_x(&|c| c.welch.map(|w| w.t).and_then(nan_none))),
            Column::new("welch_df".into(), c_x(&|c| c.welch.map(|w| w.df).and_then(nan_none))),
            Column::new("p_one_sided".into(), c_x(&|c| c.welch.map(|w| w.p_greater))),
            Column::new("p_two_sided".into(), c_x(&|c| c.welch.map(|w| w.p_two_sided))),
            Column::new("verdict".into(), c_s(&|c| c.verdict.as_str().to_string())),
            Column::new("note".into(), c_s(&|c| c.note.clone())),
        ])?;
        write_csv(&out.join(format!("{stem}_claims.csv")), &mut df)?;
    }
    eprintln!(
        "wrote reports/{stem}.md, reports/{stem}.csv{}",
        if claims.is_empty() { "" } else { " and the claims CSV" }
    );
    for c in &claims {
        eprintln!("  claim: {} [{}]: {}", c.claim.paper, c.claim.metric.key(), c.verdict.as_str());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::{CsvReadOptions, SerReader};
    use spade_train::layout::{Measured, RunInfo, Score, Scores, Segmentation, UniformMaps};

    const TABLE: &str = r#"
table: t1
title: "test table"
metric: mIoU
paper_columns:
  - {key: coco, title: "COCO-Stuff"}
base: {data: {dataset_mode: synthetic}}
profiles:
  smoke: {description: d, scale: s, seeds: 3, set: [train.max_iters=2]}
claims:
  - {better: spade, worse: crn, paper: "SPADE above CRN", source: "Table 1"}
  - {similar: [spade, crn], paper: "close", source: "none", margin: 1.0}
  - {better: spade, worse: crn, metric: fd_evaluator, paper: "closer", source: "Table 1"}
rows:
  - id: crn
    method: "CRN"
    paper: {coco: {miou: 23.7, accu: 40.4, fid: 70.4}}
    set: [model.netG=crn]
  - id: sims
    method: "SIMS"
    not_run: "SIMS is not implemented"
  - id: spade
    method: "SPADE, with a comma"
    paper: {coco: {miou: 37.4, accu: 67.9, fid: 22.6}}
"#;

    /// Writes a finished run where the store expects `row`'s `seed`.
    fn write_run(root: &Path, t: &TableFile, row: &str, seed: u64, miou: f64, fd: f64) {
        let args = crate::reproduce::Args::for_report("t1", "smoke", spade_data::DatasetMode::Synthetic);
        let profile = &t.profiles["smoke"];
        let row = t.rows.iter().find(|r| r.id == row).unwrap();
        let (dir, cfg) = run_dir_for_in(root, t, profile, row, &args, seed).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), cfg.to_yaml()).unwrap();
        let info = RowInfo {
            table: "t1".into(),
            row: row.id.clone(),
            profile: "smoke".into(),
            profile_scale: "s".into(),
            dataset: "synthetic".into(),
            seed,
            iterations: 2,
            train_wall_s: 1.5,
            eval_wall_s: 0.5,
            config_sha256: "x".into(),
            key: "k".into(),
            code_revision: "rev1".into(),
            git_revision: "abc".into(),
        };
        let rd = RunDir::new(&dir);
        rd.write_row_info(&info).unwrap();
        rd.write_run_info(&RunInfo {
            config: RunDir::CONFIG.into(),
            seed,
            git_revision: "abc".into(),
            device: "Cpu".into(),
            vgg_loss: false,
            objective: "GAN".into(),
            discriminator: true,
            vgg_weights: None,
            parameters_g: 1234,
            parameters_d: 10,
        })
        .unwrap();
        let score = |miou: f64, accuracy: f64| Score { miou, accuracy, pixels: 100 };
        let scores = |miou: f64, accuracy: f64| Scores {
            dontcare_ignore: score(miou, accuracy),
            dontcare_count: score(miou, accuracy),
        };
        rd.write_metrics(&Metrics {
            checkpoint: Some("iter_00000002".into()),
            samples: 4,
            parameters_g: 1234,
            segmentation: Segmentation::Scored {
                generated: scores(miou, 0.5),
                real_images: scores(0.9, 0.95),
                protocol: serde_json::json!({"segmenter": "synthetic"}),
            },
            fid: Measured::unavailable("no weights"),
            fd_evaluator: Measured::value(fd, serde_json::json!({})),
            uniform_maps: UniformMaps::Scored {
                pixel_accuracy: 0.5,
                per_class: vec![0.5],
                real_images_pixel_accuracy: 0.9,
                real_per_class: vec![0.9],
                classes: 1,
                z_per_map: 1,
                rule: "r".into(),
            },
            diversity: Measured::value(0.0, serde_json::json!({})),
            l1_generated_vs_real: 0.1,
        })
        .unwrap();
    }

    #[test]
    fn report_aggregates_seeds_and_judges_claims() {
        let t: TableFile = serde_yaml_ng::from_str(TABLE).unwrap();
        let root = tempfile::tempdir().unwrap();
        for (seed, (a, b)) in [(0.30, 0.50), (0.32, 0.52), (0.31, 0.54)].into_iter().enumerate() {
            write_run(root.path(), &t, "crn", seed as u64, a, 20.0 + seed as f64);
            write_run(root.path(), &t, "spade", seed as u64, b, 10.0 + seed as f64);
        }
        let args = crate::reproduce::Args::for_report("t1", "smoke", spade_data::DatasetMode::Synthetic);
        build_in(root.path(), &t, &args).unwrap();
        let path = root.path().join("reports/t1-smoke.csv");
        let df = CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.clone()))
            .unwrap()
            .finish()
            .unwrap();
        let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
        for c in [
            "row",
            "method",
            "seeds",
            "miou_mean",
            "miou_ci95",
            "accuracy_mean",
            "accuracy_ci95",
            "uniform_accuracy_mean",
            "fd_evaluator_mean",
            "fid_mean",
            "segmenter_real_miou",
            "status",
        ] {
            assert!(names.iter().any(|n| n == c), "column {c} missing: {names:?}");
        }
        assert_eq!(df.height(), 3, "{df}");
        let text = |c: &str, i: usize| df.column(c).unwrap().get(i).unwrap().get_str().map(String::from);
        let num = |c: &str, i: usize| df.column(c).unwrap().get(i).unwrap().extract::<f64>();
        assert_eq!(text("row", 0).as_deref(), Some("crn"));
        assert_eq!(text("status", 1).as_deref(), Some("not run: SIMS is not implemented"));
        assert_eq!(num("seeds", 2), Some(3.0));
        assert!((num("miou_mean", 2).unwrap() - 52.0).abs() < 1e-9, "{df}");
        // sd of 50, 52, 54 is 2; t(0.975, 2) = 4.3027.
        assert!((num("miou_ci95", 2).unwrap() - 4.302_652_73 * 2.0 / 3f64.sqrt()).abs() < 1e-6, "{df}");
        assert_eq!(num("fid_mean", 2), None, "unavailable FID stays empty");
        assert_eq!(num("segmenter_real_miou", 0), Some(90.0));
        assert_eq!(num("paper_coco_fid", 2), Some(22.6));

        let md = std::fs::read_to_string(root.path().join("reports/t1-smoke.md")).unwrap();
        assert!(md.contains("| SIMS | not run: SIMS is not implemented |"), "{md}");
        assert!(md.contains("52.0 ± 5.0"), "{md}");
        assert!(md.contains("code revision(s) `rev1`"), "{md}");
        let claims = std::fs::read_to_string(root.path().join("reports/t1-smoke_claims.csv")).unwrap();
        let lines: Vec<&str> = claims.lines().collect();
        assert_eq!(lines.len(), 4, "{claims}");
        assert!(lines[1].contains(",reproduced,"), "{claims}");
        assert!(lines[2].contains(",not reproduced,"), "the rows differ by 21 points, far outside ±1: {claims}");
        assert!(lines[3].contains(",reproduced,"), "lower FD is better: {claims}");
    }

    #[test]
    fn training_length_ablation_shares_table3_runs_and_trains_the_long_rows_4x() {
        use crate::reproduce::Args;
        let root = std::path::Path::new("/store");
        let dir = |table: &str, row: &str| {
            let t = load_table(table).unwrap();
            let args = Args::for_report(table, "mini", spade_data::DatasetMode::Synthetic);
            let r = t.rows.iter().find(|r| r.id == row).unwrap();
            run_dir_for_in(root, &t, &t.profiles["mini"], r, &args, 1).unwrap()
        };
        for row in ["spade", "concat"] {
            assert_eq!(dir("table3", row).0, dir("ablation_training_length", row).0, "{row}: one run for both files");
            let (long, cfg) = dir("ablation_training_length", &format!("{row}_long"));
            assert_ne!(long, dir("table3", row).0);
            assert_eq!(cfg.train.max_iters, Some(512));
            // One epoch (synthetic_count / batch_size) holds the 512 iterations, so none is cut.
            assert!(cfg.data.synthetic_count.unwrap() / cfg.train.batch_size >= 512);
        }
    }

    #[test]
    fn table_files_parse_with_their_claims() {
        for name in
            ["table1", "table3", "table4", "table5", "ablation_spade_norm", "ablation_training_length", "multimodal"]
        {
            let t = load_table(name).unwrap();
            assert!(t.profiles.contains_key("smoke") && t.profiles.contains_key("mini"), "{name}");
            assert!(t.profiles["mini"].seeds >= 3, "{name}: the mini profile runs at least 3 seeds");
            assert!(!t.claims.is_empty(), "{name} has claims");
            for c in &t.claims {
                let (a, b) = c.rows();
                for id in [a, b] {
                    assert!(t.rows.iter().any(|r| r.id == id), "{name}: claim names row {id}, which the table lacks");
                }
            }
        }
        let t = load_table("table1").unwrap();
        let ids: Vec<&str> = t.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["crn", "sims", "pix2pixhd", "spade"]);
        assert_eq!(t.rows[1].not_run.as_deref(), Some("SIMS is not implemented"));
        assert_eq!(paper_part(&t.rows[1], "cityscapes", "fid"), Some(49.7));
        assert_eq!(paper_part(&t.rows[3], "coco", "miou"), Some(37.4));
        let t3 = load_table("table3").unwrap();
        assert!(!paper_triples(&t3));
        assert_eq!(paper_csv_columns(&t3).iter().map(|c| c.2.as_str()).collect::<Vec<_>>(), ["paper_coco_miou"]);
        assert_eq!(report_stem("table3", "mini", "synthetic"), "table3");
        assert_eq!(report_stem("table3", "smoke", "coco-stuff"), "table3-smoke-coco-stuff");
    }
}
