//! Figures of a reproduction report, from the run files only:
//! - `<stem>_metric.{png,svg}`: mIoU, accuracy and uniform-map accuracy per row, mean with its
//!   95% confidence interval as an error bar (measured values only: the paper's numbers, on other
//!   datasets, are never drawn on the same axis);
//! - `<stem>_diversity.{png,svg}`: the mean pairwise L1 between outputs for the same label per
//!   row, with its CI, when some row's generator takes z;
//! - `<stem>_losses.{png,svg}`: the generator's and the discriminator's loss per iteration
//!   (moving average), one line per row (seed 0), the legend beside the plot;
//! - `<stem>_samples.png`: validation labels, every row's output and the real images, in
//!   columns with headers;
//! - `<stem>_uniform.png`: the wash-away test, one line of single-class outputs per row;
//! - `<stem>_multimodal.png`: rows whose generator takes z: each label with several z, and
//!   style-guided results when the run has an encoder.
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use spade_train::layout::{eval_samples, LossRecord, RunDir};
use std::path::{Path, PathBuf};

/// One row of a report as the figures need it.
pub struct PlotRow {
    pub id: String,
    /// (metric title, mean, 95% CI half-width), in percent.
    pub bars: Vec<(String, Option<f64>, Option<f64>)>,
    /// The diversity column (mean pairwise L1 between outputs for one label): mean and 95% CI
    /// half-width.
    pub diversity: (Option<f64>, Option<f64>),
    /// Run directories, seed 0 first.
    pub dirs: Vec<PathBuf>,
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("{err:?}")
}

/// Registers a system TrueType font for the text of the plots; false when none is found (the
/// charts are then skipped, the mosaics drawn without headers).
fn register_font() -> bool {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/Library/Fonts/Arial.ttf",
    ];
    for c in CANDIDATES {
        if let Ok(bytes) = std::fs::read(c) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

const SERIES: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

/// Space for rotated row names under a chart: about 7 px per character at 13 px.
fn label_area(rows: &[PlotRow]) -> u32 {
    (rows.iter().map(|r| r.id.len()).max().unwrap_or(4) as u32 * 8 + 30).max(60)
}

/// The y axis of a bar chart: its title and top.
struct Axis<'a> {
    desc: &'a str,
    top: f64,
}

const PERCENT: Axis<'static> = Axis { desc: "percent", top: 105.0 };

fn metric_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    rows: &[PlotRow],
    axis: &Axis,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(e)?;
    let top = axis.top;
    let names: Vec<String> = rows.first().map(|r| r.bars.iter().map(|b| b.0.clone()).collect()).unwrap_or_default();
    let k = names.len().max(1) as i32;
    let n = rows.len() as i32;
    let legend = names
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {t}", ["blue:", "orange:", "green:"].get(i).unwrap_or(&"")))
        .collect::<Vec<_>>()
        .join(", ");
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("mean over seeds with 95% CI ({legend})"), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(label_area(rows))
        .y_label_area_size(75)
        .build_cartesian_2d((0..n * (k + 1)).into_segmented(), 0f64..top)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels((n * (k + 1)) as usize)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) if i % (k + 1) == k / 2 && (*i / (k + 1)) < n => {
                // Rotated labels are centred on the tick: twice as many leading spaces as characters (a space is about half a letter wide)
                // put the whole name below the axis.
                let id = &rows[(*i / (k + 1)) as usize].id;
                format!("{}{id}", " ".repeat(2 * id.chars().count() + 4))
            }
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 13).into_font().transform(FontTransform::Rotate90))
        .y_desc(axis.desc)
        .draw()
        .map_err(e)?;
    for (ri, r) in rows.iter().enumerate() {
        for (bi, (_, mean, ci)) in r.bars.iter().enumerate() {
            let Some(m) = mean else { continue };
            let x = ri as i32 * (k + 1) + bi as i32;
            let c = SERIES[bi % SERIES.len()];
            let mut rect =
                Rectangle::new([(SegmentValue::Exact(x), 0.0), (SegmentValue::Exact(x + 1), *m)], c.filled());
            rect.set_margin(0, 0, 2, 2);
            chart.draw_series([rect]).map_err(e)?;
            if let Some(h) = ci {
                let mid = SegmentValue::CenterOf(x);
                chart
                    .draw_series([ErrorBar::new_vertical(
                        mid,
                        (m - h).max(0.0),
                        *m,
                        (m + h).min(top),
                        BLACK.stroke_width(2),
                        8,
                    )])
                    .map_err(e)?;
            }
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

/// A bar chart as `<base>.png` and `<base>.svg`.
fn bar_chart_files(base: &Path, size: (u32, u32), rows: &[PlotRow], axis: &Axis) -> Result<()> {
    metric_chart(BitMapBackend::new(&base.with_extension("png"), size).into_drawing_area(), rows, axis)?;
    metric_chart(SVGBackend::new(&base.with_extension("svg"), size).into_drawing_area(), rows, axis)
}

/// The rows as one-bar rows of their diversity, when some row's is above zero (a generator
/// that takes z); `None` when every row's output is a function of its label alone.
fn diversity_rows(rows: &[PlotRow]) -> Option<Vec<PlotRow>> {
    if !rows.iter().any(|r| r.diversity.0.is_some_and(|d| d > 0.0)) {
        return None;
    }
    Some(
        rows.iter()
            .map(|r| PlotRow {
                id: r.id.clone(),
                bars: vec![("diversity (mean pairwise L1)".into(), r.diversity.0, r.diversity.1)],
                diversity: r.diversity,
                dirs: Vec::new(),
            })
            .collect(),
    )
}

/// (iteration, G loss total, D loss total) from a run's losses.jsonl, smoothed by a centred
/// moving average over `window` iterations.
fn loss_series(dir: &Path, window: usize) -> Vec<(f64, f64, f64)> {
    let text = std::fs::read_to_string(RunDir::new(dir).losses()).unwrap_or_default();
    let raw: Vec<(f64, f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<LossRecord>(l).ok())
        .map(|r| {
            let g: f64 = r.losses.iter().filter(|(k, _)| !k.starts_with("D_")).map(|(_, v)| v).sum();
            let d: f64 = r.losses.iter().filter(|(k, _)| k.starts_with("D_")).map(|(_, v)| v).sum();
            (r.iter as f64, g, d)
        })
        .collect();
    let h = window / 2;
    (0..raw.len())
        .map(|i| {
            let lo = i.saturating_sub(h);
            let hi = (i + h + 1).min(raw.len());
            let s = &raw[lo..hi];
            let n = s.len() as f64;
            (raw[i].0, s.iter().map(|p| p.1).sum::<f64>() / n, s.iter().map(|p| p.2).sum::<f64>() / n)
        })
        .collect()
}

fn loss_chart<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, rows: &[PlotRow]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(e)?;
    let (plots, legend) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 230);
    let panels = plots.split_evenly((2, 1));
    let series: Vec<(String, Vec<(f64, f64, f64)>)> =
        rows.iter().filter_map(|r| Some((r.id.clone(), loss_series(r.dirs.first()?, 21)))).collect();
    let xmax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(1.0, f64::max);
    for (pi, panel) in panels.iter().enumerate() {
        let pick = |p: &(f64, f64, f64)| if pi == 0 { p.1 } else { p.2 };
        let vals = || series.iter().flat_map(|(_, s)| s.iter().map(pick));
        let (lo, hi) = (vals().fold(f64::INFINITY, f64::min), vals().fold(f64::NEG_INFINITY, f64::max));
        let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi + 0.05 * (hi - lo)) } else { (0.0, 1.0) };
        let title = if pi == 0 {
            "generator: sum of its loss terms (moving average, 21 iterations)"
        } else {
            "discriminator: D_real + D_fake (moving average, 21 iterations)"
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..xmax, lo..hi)
            .map_err(e)?;
        chart.configure_mesh().x_desc("iteration").draw().map_err(e)?;
        for (i, (_, s)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(LineSeries::new(s.iter().map(|p| (p.0, pick(p))), color.stroke_width(2))).map_err(e)?;
        }
    }
    for (i, (id, _)) in series.iter().enumerate() {
        let y = 40 + 22 * i as i32;
        let color = Palette99::pick(i).to_rgba();
        legend.draw(&PathElement::new([(8, y), (34, y)], color.stroke_width(3))).map_err(e)?;
        legend.draw(&Text::new(id.clone(), (40, y - 7), ("sans-serif", 13))).map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// A mosaic: a header band of column titles, then rows of tiles. Tiles are RGB images of one
/// size; titles are drawn when a font is registered.
struct Mosaic {
    tile: (u32, u32),
    cols: Vec<String>,
    rows: Vec<(String, Vec<image::RgbImage>)>,
}

impl Mosaic {
    fn save(&self, out: &Path, font: bool) -> Result<()> {
        let (tw, th) = self.tile;
        let scale = (128 / tw.max(1)).max(1);
        let (tw, th) = (tw * scale, th * scale);
        let gap = 4;
        let head = if font { 24 } else { 0 };
        let left = if font { self.rows.iter().map(|r| r.0.len() as u32 * 7 + 12).max().unwrap_or(0) } else { 0 };
        let ncols = self.cols.len() as u32;
        let (w, h) = (left + ncols * (tw + gap), head + self.rows.len() as u32 * (th + gap));
        let mut img = image::RgbImage::from_pixel(w.max(1), h.max(1), image::Rgb([255, 255, 255]));
        for (ri, (_, tiles)) in self.rows.iter().enumerate() {
            for (ci, t) in tiles.iter().enumerate().take(ncols as usize) {
                let (x0, y0) = (left + ci as u32 * (tw + gap), head + ri as u32 * (th + gap));
                for y in 0..th.min(t.height() * scale) {
                    for x in 0..tw.min(t.width() * scale) {
                        img.put_pixel(x0 + x, y0 + y, *t.get_pixel(x / scale, y / scale));
                    }
                }
            }
        }
        if font {
            let mut buf = img.into_raw();
            {
                let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
                for (ci, title) in self.cols.iter().enumerate() {
                    let x = (left + ci as u32 * (tw + gap)) as i32;
                    let max_chars = (tw / 7) as usize;
                    let t: String = title.chars().take(max_chars).collect();
                    root.draw(&Text::new(t, (x + 2, 5), ("sans-serif", 12))).map_err(e)?;
                }
                for (ri, (name, _)) in self.rows.iter().enumerate() {
                    let y = (head + ri as u32 * (th + gap) + th / 2) as i32 - 6;
                    root.draw(&Text::new(name.clone(), (4, y), ("sans-serif", 12))).map_err(e)?;
                }
                root.present().map_err(e)?;
            }
            img = image::RgbImage::from_raw(w, h, buf).context("mosaic buffer")?;
        }
        img.save(out).with_context(|| format!("{}: writing", out.display()))
    }
}

/// Cuts a grid image (rows of tiles of `tw x th`) into its tiles.
fn tiles(grid: &image::RgbImage, tw: u32, th: u32) -> Vec<Vec<image::RgbImage>> {
    let (cols, rows) = (grid.width() / tw.max(1), grid.height() / th.max(1));
    (0..rows)
        .map(|r| (0..cols).map(|c| image::imageops::crop_imm(grid, c * tw, r * th, tw, th).to_image()).collect())
        .collect()
}

fn open_rgb(p: &Path) -> Option<image::RgbImage> {
    image::open(p).ok().map(|i| i.to_rgb8())
}

/// (row id, `eval_samples/<file>` of its seed-0 run) for the rows that have it.
fn seed0_images(rows: &[PlotRow], file: &str) -> Vec<(String, image::RgbImage)> {
    rows.iter()
        .filter_map(|r| Some((r.id.clone(), open_rgb(&RunDir::new(r.dirs.first()?).eval_samples().join(file))?)))
        .collect()
}

/// Labels | each row's output (seed 0) | real, for the first validation samples.
fn sample_mosaic(rows: &[PlotRow], out: &Path, font: bool) -> Result<bool> {
    let grids = seed0_images(rows, eval_samples::GRID);
    let Some((_, first)) = grids.first() else { return Ok(false) };
    let tw = first.width() / 3;
    let n = (first.height() / tw.max(1)) as usize;
    let cut: Vec<Vec<Vec<image::RgbImage>>> = grids.iter().map(|(_, g)| tiles(g, tw, tw)).collect();
    let mut cols = vec!["label".to_string()];
    cols.extend(grids.iter().map(|(id, _)| id.clone()));
    cols.push("real".into());
    let rows_out = (0..n)
        .map(|i| {
            let mut t = vec![cut[0][i][0].clone()];
            t.extend(cut.iter().map(|c| c[i][1].clone()));
            t.push(cut[0][i][2].clone());
            (String::new(), t)
        })
        .collect();
    Mosaic { tile: (tw, tw), cols, rows: rows_out }.save(out, font)?;
    Ok(true)
}

/// The wash-away test: per row, the generated single-class images (seed 0), class by class;
/// the label colours first and the real single-class images last.
fn uniform_mosaic(rows: &[PlotRow], out: &Path, font: bool) -> Result<bool> {
    let grids = seed0_images(rows, eval_samples::UNIFORM);
    let Some((_, first)) = grids.first() else { return Ok(false) };
    let tw = first.width() / 3;
    let classes = spade_data::synthetic::CLASS_NAMES;
    let column = |g: &image::RgbImage, c: usize| -> Vec<image::RgbImage> {
        tiles(g, tw, tw).into_iter().map(|row| row[c].clone()).collect()
    };
    let mut rows_out = vec![("label".to_string(), column(first, 0))];
    for (id, g) in &grids {
        rows_out.push((id.clone(), column(g, 1)));
    }
    rows_out.push(("real".to_string(), column(first, 2)));
    let cols = classes.iter().map(|s| s.to_string()).collect();
    Mosaic { tile: (tw, tw), cols, rows: rows_out }.save(out, font)?;
    Ok(true)
}

/// Rows whose runs wrote `multimodal.png` (a label and several z) and `style_guided.png`.
fn multimodal_mosaic(rows: &[PlotRow], out: &Path, font: bool) -> Result<bool> {
    let mut rows_out = Vec::new();
    let mut tile = None;
    let mut ncols = 0;
    for r in rows {
        let Some(dir) = r.dirs.first() else { continue };
        // Square tiles of the run's image size (the sample grid is label | generated | real).
        let Some(tw) = open_rgb(&RunDir::new(dir).eval_samples().join(eval_samples::GRID)).map(|g| g.width() / 3)
        else {
            continue;
        };
        for (file, what) in [(eval_samples::MULTIMODAL, "z"), (eval_samples::STYLE_GUIDED, "style")] {
            let Some(g) = open_rgb(&RunDir::new(dir).eval_samples().join(file)) else { continue };
            let th = tw;
            tile.get_or_insert((tw, th));
            for (i, row) in tiles(&g, tw, th).into_iter().enumerate() {
                ncols = ncols.max(row.len());
                let name = if file == eval_samples::STYLE_GUIDED && i == 0 {
                    format!("{} styles", r.id)
                } else {
                    format!("{} {what}", r.id)
                };
                rows_out.push((name, row));
            }
        }
    }
    let Some(tile) = tile else { return Ok(false) };
    let mut cols = vec!["label".to_string()];
    cols.extend((1..ncols).map(|i| format!("output {i}")));
    Mosaic { tile, cols, rows: rows_out }.save(out, font)?;
    Ok(true)
}

/// Writes the figures; returns (file name, caption) of each PNG written.
pub fn write_all(out_dir: &Path, stem: &str, rows: &[PlotRow]) -> Result<Vec<(String, String)>> {
    let mut written = Vec::new();
    let font = register_font();
    if !font {
        eprintln!("plots: no TrueType font found (looked for DejaVuSans); charts skipped, mosaics without headers");
    }
    if font && !rows.is_empty() {
        let w = 240 + 70 * rows.len() as u32;
        let h = 420 + label_area(rows);
        bar_chart_files(&out_dir.join(format!("{stem}_metric")), (w.max(700), h), rows, &PERCENT)?;
        written.push((
            format!("{stem}_metric.png"),
            "Measured values per row: mean over seeds, error bars the 95% confidence interval.".into(),
        ));
        if let Some(diversity) = diversity_rows(rows) {
            let top =
                rows.iter().filter_map(|r| Some(r.diversity.0? + r.diversity.1.unwrap_or(0.0))).fold(0.0, f64::max);
            let axis = Axis { desc: "mean pairwise L1 (pixels in [0, 1])", top: top * 1.15 };
            bar_chart_files(&out_dir.join(format!("{stem}_diversity")), (w.max(700), h), &diversity, &axis)?;
            written.push((
                format!("{stem}_diversity.png"),
                "Diversity: for each of the first validation labels, several samples of z ~ N(0, 1); the mean pairwise L1 distance between the outputs for the same label (pixels in [0, 1]), mean over seeds with the 95% confidence interval. Zero for generators that take no z.".into(),
            ));
        }
        let p = out_dir.join(format!("{stem}_losses.png"));
        loss_chart(BitMapBackend::new(&p, (1100, 760)).into_drawing_area(), rows)?;
        loss_chart(
            SVGBackend::new(&out_dir.join(format!("{stem}_losses.svg")), (1100, 760)).into_drawing_area(),
            rows,
        )?;
        written.push((
            format!("{stem}_losses.png"),
            "Training losses of each row's seed-0 run: generator (top) and discriminator (bottom), smoothed.".into(),
        ));
    }
    let p = out_dir.join(format!("{stem}_samples.png"));
    if sample_mosaic(rows, &p, font)? {
        written.push((
            format!("{stem}_samples.png"),
            "Validation labels, each row's output (seed 0) in table order, and the real images.".into(),
        ));
    }
    let p = out_dir.join(format!("{stem}_uniform.png"));
    if uniform_mosaic(rows, &p, font)? {
        written.push((format!("{stem}_uniform.png"), "The wash-away test: one single-class label map per class (top line), each row's output for it (seed 0, first z), and the real single-class image (bottom line).".into()));
    }
    let p = out_dir.join(format!("{stem}_multimodal.png"));
    if multimodal_mosaic(rows, &p, font)? {
        written.push((format!("{stem}_multimodal.png"), "Generators that take z: each label with four samples of z (\"z\" lines) and, with the image encoder, with the style of four real images (\"styles\": the style images, then one line per label).".into()));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, diversity: f64) -> PlotRow {
        PlotRow { id: id.into(), bars: Vec::new(), diversity: (Some(diversity), Some(0.01)), dirs: Vec::new() }
    }

    #[test]
    fn the_diversity_chart_is_drawn_only_when_some_generator_takes_z() {
        assert!(diversity_rows(&[row("spade", 0.0), row("concat", 0.0)]).is_none());
        let d = diversity_rows(&[row("vae", 0.12), row("spade", 0.0)]).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].bars, vec![("diversity (mean pairwise L1)".to_string(), Some(0.12), Some(0.01))]);
        assert_eq!(d[1].bars[0].1, Some(0.0), "a row without z is drawn at zero, beside the others");
    }
}
