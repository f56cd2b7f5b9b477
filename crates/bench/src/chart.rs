//! Latency against throughput across runs, as SVG (plotters' SVG backend with its built-in text
//! measurement: no system fonts needed). One colour per label and workload; p99 as a solid line
//! with points, p50 dashed-looking (thin, same colour), points in order of throughput.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::report::RunResult;
use crate::BenchError;

/// Draws `results` into the SVG file `path`.
pub fn draw(results: &[RunResult], path: &Path) -> Result<(), BenchError> {
    // A memory result measures no load: it has no point on these axes.
    let results: Vec<&RunResult> = results.iter().filter(|r| r.workload != "memory").collect();
    if results.is_empty() {
        return Err(BenchError::Usage("a chart needs at least one result of a workload".into()));
    }
    let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for r in &results {
        let name =
            if r.label.is_empty() { r.workload.clone() } else { format!("{} {}", r.label, r.workload) };
        series.entry(name).or_default().push((
            r.throughput,
            r.latency.p50_us / 1000.0,
            r.latency.p99_us / 1000.0,
        ));
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let max_x = results.iter().map(|r| r.throughput).fold(0.0, f64::max).max(1.0) * 1.1;
    let max_y = results.iter().map(|r| r.latency.p99_us / 1000.0).fold(0.0, f64::max).max(0.001) * 1.1;
    let failed = |e: &dyn std::fmt::Display| BenchError::Usage(format!("{}: {e}", path.display()));
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency against throughput (solid: p99, thin: p50)", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("throughput (ops/s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| failed(&e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let p99: Vec<(f64, f64)> = points.iter().map(|&(x, _, p99)| (x, p99)).collect();
        let p50: Vec<(f64, f64)> = points.iter().map(|&(x, p50, _)| (x, p50)).collect();
        chart
            .draw_series(LineSeries::new(p99.clone(), colour.stroke_width(2)))
            .map_err(|e| failed(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(p99.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(|e| failed(&e))?;
        chart.draw_series(LineSeries::new(p50.clone(), colour.stroke_width(1))).map_err(|e| failed(&e))?;
        chart
            .draw_series(p50.iter().map(|&p| Circle::new(p, 2, colour.stroke_width(1))))
            .map_err(|e| failed(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}
