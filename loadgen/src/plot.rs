//! The latency-by-percentile plot, drawn as HdrHistogram's plotter draws it: the x axis is
//! `1/(1-percentile)` on a log scale (so 90%, 99%, 99.9%... are evenly spaced) and the y
//! axis is latency in milliseconds.

use plotters::prelude::*;
use std::path::Path;

/// One curve: a label and its (percentile in 0..=1, milliseconds) points.
pub type Series = (String, Vec<(f64, f64)>);

/// The x position of percentile `q`, capped where the data ends (q = 1 is infinite).
fn x_of(q: f64, cap: f64) -> f64 {
    if q >= 1.0 {
        cap
    } else {
        (1.0 / (1.0 - q)).min(cap)
    }
}

/// `x = 1/(1-q)` as a percentile label: 10 → "90%", 1000 → "99.9%".
fn label(x: f64) -> String {
    let pct = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10() - 2.0).ceil().max(0.0) as usize;
    format!("{pct:.decimals$}%")
}

/// Draws `series` into an SVG file at `path`.
///
/// # Errors
/// When there is nothing to draw or the file cannot be written.
pub fn draw(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    // The last finite percentile decides how far the axis goes (at least 99.99%).
    let max_q = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(q, _)| q))
        .filter(|&q| q < 1.0)
        .fold(0.9999f64, f64::max);
    let cap = 10f64.powf((1.0 / (1.0 - max_q)).log10().ceil());
    let max_ms = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, v)| v))
        .fold(0.0f64, f64::max);
    if series.iter().all(|(_, p)| p.is_empty()) {
        return Err(err(&"no data to plot"));
    }
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..cap).log_scale(), 0f64..(max_ms * 1.1).max(0.001))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("Percentile")
        .y_desc("Latency (milliseconds)")
        .x_label_formatter(&|x| label(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(q, v)| (x_of(q, cap), v)),
                color,
            ))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label(1.0), "0%");
        assert_eq!(label(10.0), "90%");
        assert_eq!(label(100.0), "99%");
        assert_eq!(label(1000.0), "99.9%");
        assert_eq!(label(100_000.0), "99.999%");
    }

    #[test]
    fn draws_an_svg() {
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        let a = vec![
            (0.0, 0.1),
            (0.5, 0.2),
            (0.99, 1.0),
            (0.9999, 3.0),
            (1.0, 4.0),
        ];
        let b = vec![(0.0, 1.0), (0.9, 9.0), (1.0, 20.0)];
        draw(&path, "test", &[("a".into(), a), ("b".into(), b)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("99.9%") && svg.contains("\nb\n"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
