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

/// A latency tick label, with as many decimals as its size needs.
fn ms_label(ms: f64) -> String {
    match ms {
        m if m >= 100.0 => format!("{m:.0}"),
        m if m >= 10.0 => format!("{m:.1}"),
        m if m >= 1.0 => format!("{m:.2}"),
        m => format!("{m:.3}"),
    }
}

/// Draws `series` into an SVG file at `path`. With `log_latency` the latency axis is
/// logarithmic too (for curves a hundred times apart, as herald's and the seed's are).
///
/// # Errors
/// When there is nothing to draw or the file cannot be written.
pub fn draw(path: &Path, title: &str, series: &[Series], log_latency: bool) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    // The last finite percentile decides how far the axis goes (at least 99.99%).
    let max_q = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(q, _)| q))
        .filter(|&q| q < 1.0)
        .fold(0.9999f64, f64::max);
    let cap = 10f64.powf((1.0 / (1.0 - max_q)).log10().ceil());
    let values = || series.iter().flat_map(|(_, p)| p.iter().map(|&(_, v)| v));
    let max_ms = values().fold(0.0f64, f64::max);
    // On a log axis, y is log10(ms): the range spans whole decades.
    let y_of = |ms: f64| match log_latency {
        true => ms.max(1e-3).log10(),
        false => ms,
    };
    let y_range = match log_latency {
        true => {
            let min_ms = values().filter(|&v| v > 0.0).fold(f64::MAX, f64::min);
            y_of(min_ms).floor()..y_of(max_ms).ceil().max(y_of(min_ms).floor() + 1.0)
        }
        false => 0f64..(max_ms * 1.1).max(0.001),
    };
    let decades = (y_range.end - y_range.start) as usize;
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
        .build_cartesian_2d((1f64..cap).log_scale(), y_range)
        .map_err(|e| err(&e))?;
    let y_label = |y: &f64| match log_latency {
        true => ms_label(10f64.powf(*y)),
        false => ms_label(*y),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("Percentile")
        .y_desc(match log_latency {
            true => "Latency (milliseconds, log scale)",
            false => "Latency (milliseconds)",
        })
        .x_label_formatter(&|x| label(*x))
        .y_label_formatter(&y_label);
    if log_latency {
        mesh.y_labels(decades + 1);
    }
    mesh.draw().map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(q, v)| (x_of(q, cap), y_of(v))),
                color,
            ))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        // Curves rise to the right: the empty corner is the upper left on a linear axis,
        // the lower right on a log one.
        .position(match log_latency {
            true => SeriesLabelPosition::LowerRight,
            false => SeriesLabelPosition::UpperLeft,
        })
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
        let series = [("a".into(), a), ("b".into(), b)];
        draw(&path, "test", &series, false).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("99.9%") && svg.contains("\nb\n"));
        draw(&path, "test", &series, true).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("log scale") && svg.contains("\n0.100\n") && svg.contains("\n10.0\n"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
