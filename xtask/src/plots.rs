//! Plots of a reproduction report, from the run files only: the metric per row beside the
//! paper's value, training-loss curves per row (PNG and SVG), and one sample grid of every row
//! on the same validation labels (PNG).
use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One row of a report as the plots need it.
pub struct PlotRow {
    pub id: String,
    pub measured: Option<f64>,
    pub paper: Option<f64>,
    pub dir: PathBuf,
}

/// Registers a system TrueType font for the text of the plots; false when none is found (the
/// plots are then drawn without text).
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

fn metric_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    rows: &[PlotRow],
    metric: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let ymax = rows.iter().flat_map(|r| [r.measured.unwrap_or(0.0), r.paper.unwrap_or(0.0)]).fold(1.0, f64::max) * 1.15;
    let n = rows.len() as i32;
    // Two segments per row: measured, then the paper's value; the row's name under the first.
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{metric}: measured (blue) and paper (grey)"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(130)
        .y_label_area_size(50)
        .build_cartesian_2d((0..2 * n).into_segmented(), 0f64..ymax)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n as usize)
        .x_label_formatter(&|x| match x {
            // Leading spaces keep the rotated names clear of the axis line.
            SegmentValue::CenterOf(k) if k % 2 == 0 && (*k / 2) < n => format!("      {}", rows[(*k / 2) as usize].id),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 12).into_font().transform(FontTransform::Rotate90))
        .y_desc(metric)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, r) in rows.iter().enumerate() {
        let k = 2 * i as i32;
        let bar = |a: i32, v: f64, c: RGBColor| {
            let mut rect = Rectangle::new([(SegmentValue::Exact(a), 0.0), (SegmentValue::Exact(a + 1), v)], c.filled());
            rect.set_margin(0, 0, 3, 3);
            rect
        };
        if let Some(m) = r.measured {
            chart.draw_series([bar(k, m, BLUE)]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        if let Some(p) = r.paper {
            chart.draw_series([bar(k + 1, p, RGBColor(160, 160, 160))]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// (iteration, G loss total, D loss total) from a run's losses.jsonl.
fn loss_series(dir: &Path) -> Vec<(f64, f64, f64)> {
    let text = std::fs::read_to_string(dir.join("losses.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let m = v["losses"].as_object()?;
            let g: f64 = m.iter().filter(|(k, _)| !k.starts_with("D_")).filter_map(|(_, v)| v.as_f64()).sum();
            let d: f64 = m.iter().filter(|(k, _)| k.starts_with("D_")).filter_map(|(_, v)| v.as_f64()).sum();
            Some((v["iter"].as_f64()?, g, d))
        })
        .collect()
}

fn loss_chart<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, rows: &[PlotRow]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let series: Vec<(String, Vec<(f64, f64, f64)>)> =
        rows.iter().map(|r| (r.id.clone(), loss_series(&r.dir))).collect();
    let xmax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(1.0, f64::max);
    let ymax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.05;
    let ymin = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(0.0, f64::min);
    let mut chart = ChartBuilder::on(&root)
        .caption("generator loss (sum of G terms) per iteration", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, ymin..ymax)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart.configure_mesh().x_desc("iteration").y_desc("G loss").draw().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, (id, s)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(id.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// One image: the label column of the first row's grid, then each row's generated column.
fn sample_mosaic(rows: &[PlotRow], out: &Path) -> Result<()> {
    let grids: Vec<image::RgbImage> = rows
        .iter()
        .filter_map(|r| image::open(r.dir.join("eval_samples/grid.png")).ok().map(|i| i.to_rgb8()))
        .collect();
    let Some(first) = grids.first() else { return Ok(()) };
    let (w3, h) = first.dimensions();
    let w = w3 / 3;
    let mut img = image::RgbImage::from_pixel(
        w * (grids.len() as u32 + 2) + 2 * (grids.len() as u32 + 1),
        h,
        image::Rgb([255, 255, 255]),
    );
    let mut put = |src: &image::RgbImage, col: u32, slot: u32| {
        for y in 0..h.min(src.height()) {
            for x in 0..w {
                img.put_pixel(slot * (w + 2) + x, y, *src.get_pixel(col * w + x, y));
            }
        }
    };
    put(first, 0, 0);
    for (i, g) in grids.iter().enumerate() {
        put(g, 1, i as u32 + 1);
    }
    put(first, 2, grids.len() as u32 + 1);
    img.save(out).with_context(|| format!("{}: writing", out.display()))
}

/// Writes `<stem>_metric.{png,svg}`, `<stem>_losses.{png,svg}` and `<stem>_samples.png`.
pub fn write_all(out_dir: &Path, stem: &str, metric: &str, rows: &[PlotRow]) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if !register_font() {
        eprintln!("plots: no TrueType font found (looked for DejaVuSans); only the sample mosaic is drawn");
        let p = out_dir.join(format!("{stem}_samples.png"));
        sample_mosaic(rows, &p)?;
        return Ok(vec![p]);
    }
    let p = out_dir.join(format!("{stem}_metric.png"));
    metric_chart(BitMapBackend::new(&p, (900, 560)).into_drawing_area(), rows, metric)?;
    written.push(p);
    let p = out_dir.join(format!("{stem}_metric.svg"));
    metric_chart(SVGBackend::new(&p, (900, 560)).into_drawing_area(), rows, metric)?;
    written.push(p);
    let p = out_dir.join(format!("{stem}_losses.png"));
    loss_chart(BitMapBackend::new(&p, (900, 560)).into_drawing_area(), rows)?;
    written.push(p);
    let p = out_dir.join(format!("{stem}_losses.svg"));
    loss_chart(SVGBackend::new(&p, (900, 560)).into_drawing_area(), rows)?;
    written.push(p);
    let p = out_dir.join(format!("{stem}_samples.png"));
    sample_mosaic(rows, &p)?;
    written.push(p);
    Ok(written)
}
