//! The latency-by-percentile plot, drawn as HdrHistogram's plotter draws it: the x axis is
//! `1/(1-percentile)` on a log scale (so 90%, 99%, 99.9%... are evenly spaced) and the y
//! axis is latency in milliseconds.

use plotters::coord::types::RangedCoordf64;
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

/// Latency ticks on a linear axis, as many as plotters is asked for, so that the
/// labels can be formatted knowing all of them.
const Y_LABELS: usize = 11;

/// The fewest decimals that write every one of `ticks` exactly (at most 6): one precision
/// for the whole axis, so `0`, `5`, `45` or `0.0`, `0.5`, `4.5`, never `0.000` next to `45.0`.
fn decimals(ticks: &[f64]) -> usize {
    (0..6)
        .find(|&d| {
            let scale = 10f64.powi(d as i32);
            ticks
                .iter()
                .all(|t| ((t * scale).round() / scale - t).abs() <= 1e-9 * t.abs())
        })
        .unwrap_or(6)
}

/// Draws `series` into an SVG file at `path`. With `log_latency` the latency axis is
/// logarithmic too (for curves a hundred times apart, as herald's and the Node.js
/// `ws` server's are).
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
    let linear_decimals = decimals(&RangedCoordf64::from(y_range.clone()).key_points(Y_LABELS));
    if series.iter().all(|(_, p)| p.is_empty()) {
        return Err(err(&"no data to plot"));
    }
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        // The rightmost x label is centred on the axis' end: room for its other half.
        .margin_right(50)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..cap).log_scale(), y_range)
        .map_err(|e| err(&e))?;
    // A log axis labels whole decades, each written plainly (0.01, 0.1, 1, 10).
    let y_label = |y: &f64| match log_latency {
        true => {
            let ms = 10f64.powf(*y);
            format!("{ms:.*}", decimals(&[ms]))
        }
        false => format!("{y:.linear_decimals$}"),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("Percentile")
        .y_desc(match log_latency {
            true => "Latency (milliseconds, log scale)",
            false => "Latency (milliseconds)",
        })
        .x_label_formatter(&|x| label(*x))
        .y_label_formatter(&y_label);
    mesh.y_labels(match log_latency {
        true => decades + 1,
        false => Y_LABELS,
    });
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
        assert!(svg.contains("log scale") && svg.contains("\n0.1\n") && svg.contains("\n10\n"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A drawn text: its x, its anchor, its font size and what it says.
    struct Text {
        x: f64,
        anchor: String,
        size: f64,
        text: String,
    }

    /// The texts of a plot of `points`.
    fn texts_of(points: Vec<(f64, f64)>, log_latency: bool) -> Vec<Text> {
        let dir = std::env::temp_dir().join(format!(
            "loadgen-plot-texts-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        draw(&path, "t", &[("a".into(), points)], log_latency).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        let attr = |tag: &str, name: &str| {
            let from = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            tag[from..from + tag[from..].find('"').unwrap()].to_string()
        };
        svg.split("<text")
            .skip(1)
            .map(|t| {
                let (tag, rest) = t.split_once('>').unwrap();
                Text {
                    x: attr(tag, "x").parse().unwrap(),
                    anchor: attr(tag, "text-anchor"),
                    size: attr(tag, "font-size").parse().unwrap(),
                    text: rest.split("</text>").next().unwrap().trim().to_string(),
                }
            })
            .collect()
    }

    /// A curve up to 99.9999%, the longest x label, rising to `top` ms.
    fn curve(top: f64) -> Vec<(f64, f64)> {
        [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &q)| (q, top * (i + 1) as f64 / 9.0))
            .collect()
    }

    #[test]
    fn the_last_percentile_label_fits_in_the_picture() {
        let texts = texts_of(curve(45.0), false);
        let last = texts
            .iter()
            .filter(|t| t.text.ends_with('%'))
            .max_by(|a, b| a.x.total_cmp(&b.x))
            .unwrap();
        assert_eq!(
            (last.text.as_str(), last.anchor.as_str()),
            ("99.9999%", "middle")
        );
        // Wider than sans-serif digits and '%' really are, on average.
        let half_width = last.text.len() as f64 * 0.65 * last.size / 2.0;
        assert!(
            last.x + half_width <= 960.0,
            "{} ends past 960",
            last.x + half_width
        );
    }

    #[test]
    fn latency_labels_share_one_precision() {
        for (top, want) in [(45.0, 0), (4.0, 1), (0.04, 3), (0.001, 4)] {
            let labels: Vec<String> = texts_of(curve(top), false)
                .into_iter()
                .filter(|t| t.anchor == "end")
                .map(|t| t.text)
                .collect();
            assert!(labels.len() >= 4, "{labels:?}");
            for l in &labels {
                let places = l.split_once('.').map_or(0, |(_, d)| d.len());
                assert_eq!(places, want, "{top} ms: {labels:?}");
            }
        }
    }

    #[test]
    fn decimals_are_the_fewest_that_write_every_tick() {
        assert_eq!(decimals(&[0.0, 5.0, 45.0]), 0);
        assert_eq!(decimals(&[0.0, 0.5, 4.5]), 1);
        assert_eq!(decimals(&[0.1 + 0.2, 0.6]), 1);
        assert_eq!(decimals(&[0.0, 0.002, 0.004]), 3);
        assert_eq!(decimals(&[1e-9]), 6);
    }
}
