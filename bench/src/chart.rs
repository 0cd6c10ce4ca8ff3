//! A PNG of the uncontended latency distributions (CDFs).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Draws one CDF line per series (name, samples in µs) to `path`.
pub fn cdf(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Result<()> {
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| {
            anyhow!("no DejaVuSans.ttf for the chart's text (apt-get install fonts-dejavu-core)")
        })?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("bad font"))?;

    let x_max = series
        .iter()
        .filter_map(|(_, s)| s.iter().copied().reduce(f64::max))
        .fold(1.0, f64::max)
        .min(
            series
                .iter()
                .map(|(_, s)| crate::measure::pct(s, 99.5))
                .fold(1.0, f64::max)
                * 1.2,
        )
        / 1000.0;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("acquire + release latency (ms)")
        .y_desc("percentile")
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, samples)) in series.iter().enumerate() {
        let mut v = samples.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len().max(1) as f64;
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                v.iter()
                    .enumerate()
                    .map(|(j, x)| (x / 1000.0, 100.0 * (j as f64 + 1.0) / n)),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
