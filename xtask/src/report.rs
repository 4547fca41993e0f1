//! `cargo xtask report <table>`: reports/<table>.md and .csv built only from the files of the
//! runs (config.yaml, run.json, metrics.json, row.json, losses.jsonl). The CSV is written from
//! a polars DataFrame, one row per table row (rows not run included, with their reason).
use crate::reproduce::{load_table, runs_dir_in, workspace_root, Row, TableFile};
use anyhow::{Context, Result};
use polars::prelude::{Column, CsvWriter, DataFrame, SerWriter};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(default_value = "table3")]
    pub table: String,
    #[arg(long, default_value = "mini")]
    pub profile: String,
}

pub fn run(args: Args) -> Result<()> {
    let t = load_table(&args.table)?;
    build(&t, &args.profile)
}

fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("{}: missing", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
}

fn fmt_params(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.1}k", n as f64 / 1e3)
    }
}

/// Mean of each loss over the last 10% of logged iterations.
fn final_losses(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return "-".into() };
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let tail = &lines[lines.len() - (lines.len() / 10).max(1).min(lines.len())..];
    let mut sums: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for l in tail {
        if let Some(m) = l["losses"].as_object() {
            for (k, v) in m {
                let e = sums.entry(k.clone()).or_default();
                e.0 += v.as_f64().unwrap_or(f64::NAN);
                e.1 += 1;
            }
        }
    }
    sums.iter().map(|(k, (s, n))| format!("{k} {:.3}", s / *n as f64)).collect::<Vec<_>>().join(", ")
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
        paper_part(row, key, "miou").map(|x| format!("{x:.1}")).unwrap_or_default()
    }
}

/// One table row as the report needs it (None where a value is unavailable or not run).
#[derive(Debug, Default)]
struct Record {
    id: String,
    method: String,
    status: String,
    objective: Option<String>,
    profile: Option<String>,
    dataset: Option<String>,
    params_g: Option<u64>,
    paper_params: Option<String>,
    miou: Option<f64>,
    accuracy: Option<f64>,
    miou_count: Option<f64>,
    miou_real: Option<f64>,
    fid: Option<f64>,
    /// One value per paper CSV column.
    paper: Vec<Option<f64>>,
    iterations: Option<u64>,
    train_s: Option<f64>,
    eval_s: Option<f64>,
}

/// The CSV's paper columns: (row key, part, column name), every part some row has.
fn paper_csv_columns(t: &TableFile) -> Vec<(String, &'static str, String)> {
    let mut cols = Vec::new();
    for c in &t.paper_columns {
        for part in PAPER_PARTS {
            if t.rows.iter().any(|r| paper_part(r, &c.key, part).is_some()) || (part == "miou" && !paper_triples(t)) {
                cols.push((c.key.clone(), part, format!("paper_{}_{part}", c.key)));
            }
        }
    }
    cols
}

/// The report's table as a DataFrame (the CSV's content), columns in this order.
fn dataframe(records: &[Record], paper_cols: &[(String, &'static str, String)]) -> Result<DataFrame> {
    fn col<T>(name: &str, values: Vec<T>) -> Column
    where
        polars::prelude::Series: polars::prelude::NamedFrom<Vec<T>, [T]>,
    {
        Column::new(name.into(), values)
    }
    let s = |f: fn(&Record) -> Option<String>| records.iter().map(f).collect::<Vec<_>>();
    let x = |f: fn(&Record) -> Option<f64>| records.iter().map(f).collect::<Vec<_>>();
    let u = |f: fn(&Record) -> Option<u64>| records.iter().map(f).collect::<Vec<_>>();
    let mut cols = vec![
        col("row", s(|r| Some(r.id.clone()))),
        col("method", s(|r| Some(r.method.clone()))),
        col("status", s(|r| Some(r.status.clone()))),
        col("objective", s(|r| r.objective.clone())),
        col("profile", s(|r| r.profile.clone())),
        col("dataset", s(|r| r.dataset.clone())),
        col("params_G", u(|r| r.params_g)),
        col("paper_params", s(|r| r.paper_params.clone())),
        col("miou_generated", x(|r| r.miou)),
        col("accuracy_generated", x(|r| r.accuracy)),
        col("miou_generated_count_dontcare", x(|r| r.miou_count)),
        col("miou_real_images", x(|r| r.miou_real)),
        col("fid", x(|r| r.fid)),
    ];
    for (i, (_, _, name)) in paper_cols.iter().enumerate() {
        cols.push(col(name, records.iter().map(|r| r.paper.get(i).copied().flatten()).collect()));
    }
    cols.push(col("iterations", u(|r| r.iterations)));
    cols.push(col("train_wall_s", x(|r| r.train_s)));
    cols.push(col("eval_wall_s", x(|r| r.eval_s)));
    Ok(DataFrame::new_infer_height(cols)?)
}

fn write_csv(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    CsvWriter::new(&mut f).include_header(true).finish(df).with_context(|| format!("{}: writing", path.display()))
}

/// Writes reports/<table>.md and .csv (reports/<table>-<profile>.* for profiles other than mini).
pub fn build(t: &TableFile, profile: &str) -> Result<()> {
    build_in(&workspace_root(), t, profile)
}

/// [`build`] with the runs under `root/runs` and the reports written to `root/reports`.
pub fn build_in(root: &Path, t: &TableFile, profile: &str) -> Result<()> {
    let runs = runs_dir_in(root, &t.table, profile);
    let stem = if profile == "mini" { t.table.clone() } else { format!("{}-{profile}", t.table) };
    let triples = paper_triples(t);
    let paper_cols = paper_csv_columns(t);
    let mut md = String::new();
    let mut records: Vec<Record> = Vec::new();
    let mut measured: Vec<(String, f64)> = Vec::new();
    let mut protocol = String::new();
    let mut header = String::new();
    writeln!(md, "# {}\n", t.title)?;
    let paper_heads: Vec<String> = t
        .paper_columns
        .iter()
        .map(|c| {
            if triples {
                format!("paper {} (mIoU / accu / FID)", c.title)
            } else {
                format!("paper {} {}*", t.metric, c.title)
            }
        })
        .collect();
    let ncols = 10 + paper_heads.len();
    let mut table = format!(
        "| method | #param (measured) | #param (paper) | mIoU generated | accuracy | mIoU (don't-care counted) | segmenter on real images: mIoU | FID | {} | iterations | train time | G objective |\n|{}\n",
        paper_heads.join(" | "),
        "---|".repeat(ncols + 1)
    );
    let mut curves = String::new();
    let mut plot_rows = Vec::new();
    for row in &t.rows {
        let dir = runs.join(&row.id);
        let paper_p = row
            .paper
            .get("params")
            .map(|v| serde_yaml_ng::to_string(v).unwrap_or_default().trim().to_string())
            .filter(|s| !s.is_empty());
        let paper_cells: Vec<String> = t.paper_columns.iter().map(|c| paper_cell(row, &c.key, triples)).collect();
        let paper_vals: Vec<Option<f64>> = paper_cols.iter().map(|(k, p, _)| paper_part(row, k, p)).collect();
        let not_run = match &row.not_run {
            Some(reason) => Some(format!("not run: {reason}")),
            None if !dir.join("row.json").is_file() => Some("not run".to_string()),
            None => None,
        };
        if let Some(status) = not_run {
            let mut cells = vec![row.method.clone(), status.clone(), paper_p.clone().unwrap_or_default()];
            cells.extend(std::iter::repeat_n(String::new(), 5));
            cells.extend(paper_cells.iter().cloned());
            cells.extend(std::iter::repeat_n(String::new(), 3));
            writeln!(table, "| {} |", cells.join(" | "))?;
            records.push(Record {
                id: row.id.clone(),
                method: row.method.clone(),
                status,
                paper_params: paper_p,
                paper: paper_vals,
                ..Default::default()
            });
            continue;
        }
        let info = read_json(&dir.join("row.json"))?;
        let run = read_json(&dir.join("run.json"))?;
        let m = read_json(&dir.join("metrics.json"))?;
        if header.is_empty() {
            let prof = info["profile"].as_str().unwrap_or("?");
            let desc = t.profiles.get(prof).map(|p| p.description.as_str()).unwrap_or("");
            header = format!(
                "Metric: {}. Profile **{}** ({desc}) on dataset **{}**: {}.\n\nGit revision of the first row's run: `{}`; device {}.\n",
                t.metric,
                prof,
                info["dataset"].as_str().unwrap_or("?"),
                info["profile_scale"].as_str().unwrap_or(""),
                run["git_revision"].as_str().unwrap_or("?"),
                run["device"].as_str().unwrap_or("?")
            );
        }
        let seg = &m["segmentation"];
        let gen = &seg["generated"]["dontcare_ignore"];
        let gen_count = &seg["generated"]["dontcare_count"];
        let real = &seg["real_images"]["dontcare_ignore"];
        if protocol.is_empty() {
            protocol = match seg.get("protocol") {
                Some(p) => format!(
                    "Segmentation protocol: {} (weights sha256 `{}`), input {}x{}, label resize {}, don't-care: both settings reported; {} validation images per row. FID: {}.\n",
                    p["segmenter"].as_str().unwrap_or("?"),
                    &p["weights_sha256"].as_str().unwrap_or("?")[..12.min(p["weights_sha256"].as_str().unwrap_or("?").len())],
                    p["input_resolution"][0], p["input_resolution"][1],
                    p["label_resize"].as_str().unwrap_or("?"),
                    m["samples"],
                    m["fid"]["unavailable"].as_str().unwrap_or("computed with pytorch-fid's Inception")
                ),
                None => format!("Segmentation: {}\n", seg["unavailable"].as_str().unwrap_or("?")),
            };
        }
        let f = |v: &Value| v.as_f64().map(|x| format!("{:.1}", 100.0 * x)).unwrap_or_else(|| "n/a".into());
        let params = run["parameters_G"].as_u64();
        let fid = m["fid"]["value"].as_f64();
        let train_s = info["train_wall_s"].as_f64();
        // Runs from before the objective was recorded say so rather than guess.
        let objective = run["objective"].as_str().unwrap_or("not recorded").to_string();
        writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s | {} |",
            row.method,
            params.map(fmt_params).unwrap_or_else(|| "?".into()),
            paper_p.clone().unwrap_or_default(),
            f(&gen["mIoU"]),
            f(&gen["accuracy"]),
            f(&gen_count["mIoU"]),
            f(&real["mIoU"]),
            fid.map(|x| format!("{x:.1}")).unwrap_or_else(|| "unavailable".into()),
            paper_cells.join(" | "),
            info["iterations"],
            train_s.unwrap_or(0.0),
            objective
        )?;
        records.push(Record {
            id: row.id.clone(),
            method: row.method.clone(),
            status: "run".into(),
            objective: Some(objective.clone()),
            profile: info["profile"].as_str().map(String::from),
            dataset: info["dataset"].as_str().map(String::from),
            params_g: params,
            paper_params: paper_p,
            miou: gen["mIoU"].as_f64(),
            accuracy: gen["accuracy"].as_f64(),
            miou_count: gen_count["mIoU"].as_f64(),
            miou_real: real["mIoU"].as_f64(),
            fid,
            paper: paper_vals,
            iterations: info["iterations"].as_u64(),
            train_s,
            eval_s: info["eval_wall_s"].as_f64(),
        });
        if let Some(x) = gen["mIoU"].as_f64() {
            measured.push((row.id.clone(), x));
        }
        plot_rows.push(crate::plots::PlotRow {
            id: row.id.clone(),
            measured: gen["mIoU"].as_f64().map(|x| 100.0 * x),
            paper: t.paper_columns.first().and_then(|c| paper_part(row, &c.key, "miou")),
            dir: dir.clone(),
        });
        writeln!(
            curves,
            "- {}: {} (objective: {objective}; samples: `runs/{}/{}/eval_samples/grid.png`)",
            row.method,
            final_losses(&dir.join("losses.jsonl")),
            runs.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
            row.id
        )?;
    }
    md.push_str(&header);
    md.push('\n');
    md.push_str(&protocol);
    md.push('\n');
    md.push_str(&table);
    writeln!(md, "\n\\* {}", t.paper_note)?;
    writeln!(md, "\nmIoU and accuracy in percent, from the segmentation network on the generated images against the input label maps. #param (measured) is counted from the built generator. G objective: what the generator was trained with, from the run's run.json.\n")?;
    writeln!(md, "## Ordering\n\n{}\n", ordering(&measured))?;
    writeln!(md, "## Final losses (mean of the last 10% of iterations)\n\n{curves}")?;
    let out = root.join("reports");
    std::fs::create_dir_all(&out)?;
    let plots = crate::plots::write_all(&out, &stem, &t.metric, &plot_rows)?;
    if !plots.is_empty() {
        writeln!(md, "## Plots\n")?;
        for p in &plots {
            let name = p.file_name().unwrap().to_string_lossy();
            if name.ends_with(".png") {
                writeln!(md, "![{name}]({name})\n")?;
            }
        }
        writeln!(md, "`{stem}_samples.png`: the validation labels, then one column per row in table order, then the real images.\n")?;
    }
    std::fs::write(out.join(format!("{stem}.md")), md)?;
    let mut df = dataframe(&records, &paper_cols)?;
    write_csv(&out.join(format!("{stem}.csv")), &mut df)?;
    eprintln!("wrote reports/{stem}.md and reports/{stem}.csv");
    Ok(())
}

/// Whether the paper's ordering appeared: SPADE rows above the Concat, pix2pixHD(++) and CRN
/// rows.
fn ordering(measured: &[(String, f64)]) -> String {
    let get = |id: &str| measured.iter().find(|(r, _)| r == id).map(|(_, v)| *v);
    let spade: Vec<(&str, f64)> =
        ["spade", "compact_spade", "pix2pixhdpp_spade"].iter().filter_map(|r| get(r).map(|v| (*r, v))).collect();
    let others: Vec<(&str, f64)> =
        ["concat", "pix2pixhdpp_concat", "pix2pixhdpp", "compact_pix2pixhdpp", "pix2pixhd", "crn"]
            .iter()
            .filter_map(|r| get(r).map(|v| (*r, v)))
            .collect();
    if spade.is_empty() || others.is_empty() {
        return "Not enough rows were measured to compare.".into();
    }
    let min_spade = spade.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
    let max_other = others.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
    let violations: Vec<String> = spade
        .iter()
        .flat_map(|(s, vs)| {
            others
                .iter()
                .filter(move |(_, vo)| vo >= vs)
                .map(move |(o, vo)| format!("{o} ({:.1}) >= {s} ({:.1})", 100.0 * vo, 100.0 * vs))
        })
        .collect();
    if min_spade > max_other {
        format!("The paper's ordering appeared: every SPADE row (lowest {:.1}) is above every other measured row (highest {:.1}).", 100.0 * min_spade, 100.0 * max_other)
    } else {
        format!("The paper's ordering did NOT fully appear: {}.", violations.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::{CsvReadOptions, SerReader};

    const TABLE: &str = r#"
table: t1
title: "test table"
metric: mIoU
paper_columns:
  - {key: coco, title: "COCO-Stuff"}
  - {key: cityscapes, title: "Cityscapes"}
base: {data: {dataset_mode: synthetic}}
profiles:
  smoke: {description: d, scale: s}
rows:
  - id: crn
    method: "CRN"
    paper: {coco: {miou: 23.7, accu: 40.4, fid: 70.4}, cityscapes: {miou: 52.4, accu: 77.1, fid: 104.7}}
  - id: sims
    method: "SIMS"
    not_run: "SIMS is not implemented"
    paper: {cityscapes: {miou: 47.2, accu: 75.5, fid: 49.7}}
  - id: spade
    method: "SPADE, with a comma"
    paper: {coco: {miou: 37.4, accu: 67.9, fid: 22.6}}
"#;

    fn write_run(dir: &Path, miou: f64, objective: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let w = |name: &str, v: Value| std::fs::write(dir.join(name), v.to_string()).unwrap();
        w(
            "row.json",
            serde_json::json!({"profile": "smoke", "dataset": "synthetic", "profile_scale": "s", "iterations": 2, "train_wall_s": 1.5, "eval_wall_s": 0.5}),
        );
        w(
            "run.json",
            serde_json::json!({"git_revision": "abc", "device": "Cpu", "parameters_G": 1234, "objective": objective}),
        );
        w(
            "metrics.json",
            serde_json::json!({"samples": 4, "fid": {"value": null, "unavailable": "no weights"},
            "segmentation": {"generated": {"dontcare_ignore": {"mIoU": miou, "accuracy": 0.5}, "dontcare_count": {"mIoU": miou}},
                             "real_images": {"dontcare_ignore": {"mIoU": 0.9}}}}),
        );
        std::fs::write(dir.join("losses.jsonl"), "{\"iter\": 0, \"losses\": {\"L1_pixel\": 0.4}}\n").unwrap();
    }

    #[test]
    fn csv_from_the_dataframe_has_the_header_and_rows() {
        let t: TableFile = serde_yaml_ng::from_str(TABLE).unwrap();
        let root = tempfile::tempdir().unwrap();
        let runs = runs_dir_in(root.path(), "t1", "smoke");
        write_run(&runs.join("crn"), 0.25, "L1 pixel regression (no VGG19 weights)");
        write_run(&runs.join("spade"), 0.5, "GAN (hinge) + feature matching");
        build_in(root.path(), &t, "smoke").unwrap();
        let path = root.path().join("reports/t1-smoke.csv");
        let df = CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.clone()))
            .unwrap()
            .finish()
            .unwrap();
        let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            [
                "row",
                "method",
                "status",
                "objective",
                "profile",
                "dataset",
                "params_G",
                "paper_params",
                "miou_generated",
                "accuracy_generated",
                "miou_generated_count_dontcare",
                "miou_real_images",
                "fid",
                "paper_coco_miou",
                "paper_coco_accu",
                "paper_coco_fid",
                "paper_cityscapes_miou",
                "paper_cityscapes_accu",
                "paper_cityscapes_fid",
                "iterations",
                "train_wall_s",
                "eval_wall_s",
            ],
            "{df}"
        );
        assert_eq!(df.height(), 3, "{df}");
        let text = |c: &str, i: usize| df.column(c).unwrap().get(i).unwrap().get_str().map(String::from);
        let num = |c: &str, i: usize| df.column(c).unwrap().get(i).unwrap().extract::<f64>();
        assert_eq!(text("row", 0).as_deref(), Some("crn"));
        assert_eq!(text("status", 1).as_deref(), Some("not run: SIMS is not implemented"));
        assert_eq!(text("method", 2).as_deref(), Some("SPADE, with a comma"));
        assert_eq!(num("miou_generated", 0), Some(0.25));
        assert_eq!(num("miou_generated", 1), None, "a row not run has no measured value");
        assert_eq!(num("paper_cityscapes_fid", 1), Some(49.7));
        assert_eq!(num("paper_coco_miou", 1), None);
        assert_eq!(num("fid", 2), None, "unavailable FID stays empty");
        assert_eq!(num("params_G", 2), Some(1234.0));
        assert!(text("objective", 0).unwrap().starts_with("L1 pixel regression"));

        let md = std::fs::read_to_string(root.path().join("reports/t1-smoke.md")).unwrap();
        assert!(md.contains("| SIMS | not run: SIMS is not implemented |"), "{md}");
        assert!(md.contains("| - | 47.2 / 75.5 / 49.7 |"), "{md}");
        assert_eq!(md.matches("not run").count(), 1, "{md}");
        assert!(md.contains("| 23.7 / 40.4 / 70.4 | 52.4 / 77.1 / 104.7 |"), "{md}");
        assert!(md.contains("L1 pixel regression"), "{md}");
    }

    #[test]
    fn table_files_parse_and_table1_marks_sims_not_run() {
        for name in ["table1", "table3", "table4", "table5"] {
            let t = load_table(name).unwrap();
            assert!(!t.profiles.is_empty(), "{name}");
        }
        let t = load_table("table1").unwrap();
        let ids: Vec<&str> = t.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["crn", "sims", "pix2pixhd", "spade"]);
        let sims = &t.rows[1];
        assert_eq!(sims.not_run.as_deref(), Some("SIMS is not implemented"));
        assert_eq!(paper_part(sims, "cityscapes", "fid"), Some(49.7));
        assert_eq!(paper_part(&t.rows[3], "coco", "miou"), Some(37.4));
        // The table-3 style: a number is the mIoU.
        let t3 = load_table("table3").unwrap();
        assert!(!paper_triples(&t3));
        assert_eq!(paper_csv_columns(&t3).iter().map(|c| c.2.as_str()).collect::<Vec<_>>(), ["paper_coco_miou"]);
    }
}
