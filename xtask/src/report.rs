//! `cargo xtask report <table>`: reports/<table>.md and .csv built only from the files of the
//! runs (config.yaml, run.json, metrics.json, row.json, losses.jsonl).
use crate::reproduce::{load_table, workspace_root, TableFile};
use anyhow::{Context, Result};
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

/// Writes reports/<table>.md and .csv (reports/<table>-<profile>.* for profiles other than mini).
pub fn build(t: &TableFile, profile: &str) -> Result<()> {
    let root = workspace_root();
    let runs = crate::reproduce::runs_dir(&t.table, profile);
    let stem = if profile == "mini" { t.table.clone() } else { format!("{}-{profile}", t.table) };
    let mut md = String::new();
    let mut csv = String::from("row,method,profile,dataset,params_G,paper_params,miou_generated,accuracy_generated,miou_generated_count_dontcare,miou_real_images,fid,paper_coco_miou,iterations,train_wall_s,eval_wall_s\n");
    let mut measured: Vec<(String, f64)> = Vec::new();
    let mut protocol = String::new();
    let mut header = String::new();
    writeln!(md, "# {}\n", t.title)?;
    let mut table = String::from("| method | #param (measured) | #param (paper) | mIoU generated | accuracy | mIoU (don't-care counted) | segmenter on real images: mIoU | FID | paper mIoU COCO* | iterations | train time |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut curves = String::new();
    let mut plot_rows = Vec::new();
    for row in &t.rows {
        let dir = runs.join(&row.id);
        if !dir.join("row.json").is_file() {
            writeln!(table, "| {} | not run | | | | | | | | | |", row.method)?;
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
        let params = run["parameters_G"].as_u64().unwrap_or(0);
        let paper_p = row
            .paper
            .get("params")
            .map(|v| serde_yaml_ng::to_string(v).unwrap_or_default().trim().to_string())
            .unwrap_or_default();
        let paper_coco = row.paper.get("coco").and_then(|v| v.as_f64()).map(|x| format!("{x}")).unwrap_or_default();
        let fid = m["fid"]["value"].as_f64().map(|x| format!("{x:.1}")).unwrap_or_else(|| "unavailable".into());
        let train_s = info["train_wall_s"].as_f64().unwrap_or(0.0);
        writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            row.method,
            fmt_params(params),
            paper_p,
            f(&gen["mIoU"]),
            f(&gen["accuracy"]),
            f(&gen_count["mIoU"]),
            f(&real["mIoU"]),
            fid,
            paper_coco,
            info["iterations"],
            train_s
        )?;
        writeln!(
            csv,
            "{},\"{}\",{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.1}",
            row.id,
            row.method,
            info["profile"].as_str().unwrap_or(""),
            info["dataset"].as_str().unwrap_or(""),
            params,
            paper_p,
            gen["mIoU"],
            gen["accuracy"],
            gen_count["mIoU"],
            real["mIoU"],
            m["fid"]["value"],
            paper_coco,
            info["iterations"],
            train_s,
            info["eval_wall_s"].as_f64().unwrap_or(0.0)
        )?;
        if let Some(x) = gen["mIoU"].as_f64() {
            measured.push((row.id.clone(), x));
        }
        plot_rows.push(crate::plots::PlotRow {
            id: row.id.clone(),
            measured: gen["mIoU"].as_f64().map(|x| 100.0 * x),
            paper: row.paper.get("coco").and_then(|v| v.as_f64()),
            dir: dir.clone(),
        });
        writeln!(
            curves,
            "- {}: {} (samples: `runs/{}/{}/eval_samples/grid.png`)",
            row.method,
            final_losses(&dir.join("losses.jsonl")),
            t.table,
            row.id
        )?;
    }
    md.push_str(&header);
    md.push('\n');
    md.push_str(&protocol);
    md.push('\n');
    md.push_str(&table);
    writeln!(md, "\n\\* {}", t.paper_note)?;
    writeln!(md, "\nmIoU and accuracy in percent, from the segmentation network on the generated images against the input label maps. #param (measured) is counted from the built generator.\n")?;
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
    std::fs::write(out.join(format!("{stem}.csv")), csv)?;
    eprintln!("wrote reports/{stem}.md and reports/{stem}.csv");
    Ok(())
}

/// Whether the paper's ordering appeared: SPADE rows above the Concat rows and above
/// pix2pixHD++ and pix2pixHD.
fn ordering(measured: &[(String, f64)]) -> String {
    let get = |id: &str| measured.iter().find(|(r, _)| r == id).map(|(_, v)| *v);
    let spade: Vec<(&str, f64)> =
        ["spade", "compact_spade", "pix2pixhdpp_spade"].iter().filter_map(|r| get(r).map(|v| (*r, v))).collect();
    let others: Vec<(&str, f64)> = ["concat", "pix2pixhdpp_concat", "pix2pixhdpp", "compact_pix2pixhdpp", "pix2pixhd"]
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
        format!("The paper's ordering appeared: every SPADE row (lowest {:.1}) is above every Concat / pix2pixHD row (highest {:.1}).", 100.0 * min_spade, 100.0 * max_other)
    } else {
        format!("The paper's ordering did NOT fully appear: {}.", violations.join("; "))
    }
}
