//! SVG plots (plotters, SVG backend only: text is emitted as SVG `<text>` elements, so no
//! font files or system font libraries are needed to build or draw).
use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// (latency µs, cumulative fraction) points of a histogram in ns, ~200 of them.
fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut pts: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let q = i as f64 / 200.0;
            (h.value_at_quantile(q).max(1) as f64 / 1000.0, q)
        })
        .collect();
    // Finer steps in the tail.
    for q in [0.995, 0.999, 0.9995, 0.9999] {
        pts.push((h.value_at_quantile(q).max(1) as f64 / 1000.0, q));
    }
    pts.sort_by(|a, b| a.1.total_cmp(&b.1));
    pts
}

fn draw_cdf<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let all: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, h)| cdf_points(h)).collect();
    let lo = all
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .max(0.1);
    let hi = all.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let lo = if lo.is_finite() { lo * 0.8 } else { 0.1 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi * 1.25).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (us, log scale)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(err)?;
    for (i, ((name, _), pts)) in series.iter().zip(all).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One latency CDF per series (histograms in ns) into an SVG file.
pub fn latency_cdf(path: &Path, title: &str, series: &[(String, &Histogram<u64>)]) -> Result<()> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    draw_cdf(&root, title, series)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Throughput bars per transport (left) and latency CDFs (right) into an SVG file.
pub fn compare(
    path: &Path,
    title: &str,
    throughput: &[(String, f64)],
    series: &[(String, &Histogram<u64>)],
) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(420);
    let max = throughput.iter().map(|t| t.1).fold(1.0, f64::max) / 1000.0;
    let n = throughput.len().max(1);
    let mut chart = ChartBuilder::on(&left)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n as f64, 0.0..max * 1.15)
        .map_err(err)?;
    let names: Vec<String> = throughput.iter().map(|t| t.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("throughput (k ops/s)")
        .draw()
        .map_err(err)?;
    for (i, (_, v)) in throughput.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.2, 0.0), (x + 0.8, v / 1000.0)],
                color.filled(),
            )))
            .map_err(err)?;
    }
    draw_cdf(&right, "latency CDF", series)?;
    root.present().map_err(err)?;
    Ok(())
}
