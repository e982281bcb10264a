//! The plots, PNG and SVG: cold-start latency per function and mode (grouped bars, warm
//! marked), and the concurrency sweep (lines).
//!
//! Text is drawn with a subset of DejaVu Sans (printable ASCII and a few symbols)
//! embedded in the binary (`font/`, Bitstream Vera license), so no system font library
//! is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const FONT: &[u8] = include_bytes!("font/DejaVuSans-subset.ttf");
const SANS: &str = "sans-serif";

const FILE_COLOR: RGBColor = RGBColor(214, 39, 40);
const LAZY_COLOR: RGBColor = RGBColor(255, 150, 40);
const REAP_COLOR: RGBColor = RGBColor(31, 119, 180);
const WARM_COLOR: RGBColor = RGBColor(20, 20, 20);

/// A plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {}: {message}", path.display())]
pub struct PlotError {
    /// The file being drawn.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(SANS, FontStyle::Normal, FONT).is_ok());
    ok.then_some(())
        .ok_or_else(|| "the embedded font is invalid".to_owned())
}

/// A series of a plot: its legend, its color, and how to get its value from a point.
struct Series<T> {
    label: &'static str,
    color: RGBColor,
    value: fn(&T) -> f64,
}

/// One function's bars: median latencies in ms.
#[derive(Debug, Clone)]
pub struct BarGroup {
    /// The function's name, the group's label.
    pub name: String,
    /// File mode's median cold start.
    pub file_ms: f64,
    /// Lazy mode's median cold start.
    pub lazy_ms: f64,
    /// Reap mode's median cold start.
    pub reap_ms: f64,
    /// Median warm invocation (the line across the group).
    pub warm_ms: f64,
}

/// One concurrency level: median latencies in ms.
#[derive(Debug, Clone, Copy)]
pub struct SweepPoint {
    /// How many cold starts ran at once (the x axis).
    pub concurrency: usize,
    /// File mode's median cold start.
    pub file_ms: f64,
    /// Reap mode's median cold start.
    pub reap_ms: f64,
}

fn plot_err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        path: path.to_path_buf(),
        message,
    }
}

/// Grouped bars of cold-start latency (log scale) per function: file, lazy, reap, with
/// the warm latency marked by a black line across each group. Writes `STEM.png` and
/// `STEM.svg`.
pub fn cold_starts(
    groups: &[BarGroup],
    title: &str,
    stem: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let size = ((180 * groups.len() as u32).max(700) + 120, 620);
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    register_font().map_err(plot_err(&png))?;
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw_bars(&root, groups, title).map_err(plot_err(&png))?;
        root.present().map_err(|e| plot_err(&png)(e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_bars(&root, groups, title).map_err(plot_err(&svg))?;
        root.present().map_err(|e| plot_err(&svg)(e.to_string()))?;
    }
    Ok(vec![png, svg])
}

/// Median latency of one cold start against how many start at once, file and reap
/// (and the warm latency, if given, as a flat line). Writes `STEM.png` and `STEM.svg`.
pub fn sweep(
    points: &[SweepPoint],
    warm_ms: Option<f64>,
    title: &str,
    stem: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let size = (900, 560);
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    register_font().map_err(plot_err(&png))?;
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw_sweep(&root, points, warm_ms, title).map_err(plot_err(&png))?;
        root.present().map_err(|e| plot_err(&png)(e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_sweep(&root, points, warm_ms, title).map_err(plot_err(&svg))?;
        root.present().map_err(|e| plot_err(&svg)(e.to_string()))?;
    }
    Ok(vec![png, svg])
}

/// The decade at or below `v` (and above, for `ceil`).
fn decade(v: f64, ceil: bool) -> f64 {
    let e = v.max(1e-6).log10();
    10f64.powf(if ceil { e.ceil() } else { e.floor() })
}

fn axis_ms(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    groups: &[BarGroup],
    title: &str,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let values = groups
        .iter()
        .flat_map(|g| [g.file_ms, g.lazy_ms, g.reap_ms, g.warm_ms])
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y_min, y_max) = if lo.is_finite() {
        (decade(lo, false), decade(hi * 12.0, true))
    } else {
        (0.01, 1000.0)
    };
    let n = groups.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (SANS, 20))
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (y_min..y_max).log_scale())
        .map_err(e)?;
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let x_fmt = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 {
            names
                .get(i as usize)
                .map_or(String::new(), |s| (*s).to_owned())
        } else {
            String::new()
        }
    };
    let y_fmt = |y: &f64| axis_ms(*y);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .y_desc("latency, ms (log scale)")
        .label_style((SANS, 14))
        .axis_desc_style((SANS, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;

    let width = 0.27;
    let label_style =
        TextStyle::from((SANS, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    let modes = [
        (
            Series {
                label: "file (vanilla snapshot)",
                color: FILE_COLOR,
                value: |g: &BarGroup| g.file_ms,
            },
            -width,
        ),
        (
            Series {
                label: "lazy (userfaultfd)",
                color: LAZY_COLOR,
                value: |g: &BarGroup| g.lazy_ms,
            },
            0.0,
        ),
        (
            Series {
                label: "reap (prefetch)",
                color: REAP_COLOR,
                value: |g: &BarGroup| g.reap_ms,
            },
            width,
        ),
    ];
    for (
        Series {
            label,
            color,
            value,
        },
        offset,
    ) in modes
    {
        chart
            .draw_series(groups.iter().enumerate().map(|(i, g)| {
                let x = i as f64 + offset;
                Rectangle::new(
                    [
                        (x - width / 2.0 + 0.01, y_min),
                        (x + width / 2.0 - 0.01, value(g).max(y_min)),
                    ],
                    color.filled(),
                )
            }))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(groups.iter().enumerate().map(|(i, g)| {
                Text::new(
                    super::report::ms(value(g)),
                    (i as f64 + offset, value(g).max(y_min) * 1.06),
                    label_style.clone(),
                )
            }))
            .map_err(e)?;
    }
    chart
        .draw_series(groups.iter().enumerate().map(|(i, g)| {
            let x = i as f64;
            PathElement::new(
                vec![(x - 1.5 * width, g.warm_ms), (x + 1.5 * width, g.warm_ms)],
                WARM_COLOR.stroke_width(3),
            )
        }))
        .map_err(e)?
        .label("warm")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], WARM_COLOR.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font((SANS, 14))
        .draw()
        .map_err(e)?;
    Ok(())
}

fn draw_sweep<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[SweepPoint],
    warm_ms: Option<f64>,
    title: &str,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let n = points.len().max(1);
    let y_max = points
        .iter()
        .flat_map(|p| [p.file_ms, p.reap_ms])
        .chain(warm_ms)
        .fold(0f64, f64::max)
        .max(0.001)
        * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (SANS, 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.3f64..(n as f64 - 0.7), 0f64..y_max)
        .map_err(e)?;
    let levels: Vec<usize> = points.iter().map(|p| p.concurrency).collect();
    let x_fmt = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 {
            levels
                .get(i as usize)
                .map_or(String::new(), |k| k.to_string())
        } else {
            String::new()
        }
    };
    let y_fmt = |y: &f64| axis_ms(*y);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc("concurrent cold starts")
        .y_desc("latency of each, ms (median)")
        .label_style((SANS, 14))
        .axis_desc_style((SANS, 15))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(e)?;
    let label_style =
        TextStyle::from((SANS, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    let series = [
        Series {
            label: "file (vanilla snapshot)",
            color: FILE_COLOR,
            value: |p: &SweepPoint| p.file_ms,
        },
        Series {
            label: "reap (prefetch)",
            color: REAP_COLOR,
            value: |p: &SweepPoint| p.reap_ms,
        },
    ];
    for Series {
        label,
        color,
        value,
    } in series
    {
        let xy: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, value(p)))
            .collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(3)))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                xy.iter()
                    .map(|&(x, y)| Circle::new((x, y), 5, color.filled())),
            )
            .map_err(e)?;
        chart
            .draw_series(xy.iter().map(|&(x, y)| {
                Text::new(
                    super::report::ms(y),
                    (x, y + y_max * 0.015),
                    label_style.clone(),
                )
            }))
            .map_err(e)?;
    }
    if let Some(w) = warm_ms {
        chart
            .draw_series(LineSeries::new(
                vec![(-0.3, w), (n as f64 - 0.7, w)],
                WARM_COLOR.mix(0.6).stroke_width(2),
            ))
            .map_err(e)?
            .label("warm (one instance)")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 16, y)],
                    WARM_COLOR.mix(0.6).stroke_width(2),
                )
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font((SANS, 14))
        .draw()
        .map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decades_bracket_values() {
        assert_eq!(decade(0.04, false), 0.01);
        assert_eq!(decade(350.0, true), 1000.0);
        assert_eq!(decade(1.0, false), 1.0);
    }

    #[test]
    fn plots_are_written_as_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("reap-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let groups = vec![
            BarGroup {
                name: "helloworld".into(),
                file_ms: 22.0,
                lazy_ms: 10.0,
                reap_ms: 1.5,
                warm_ms: 0.04,
            },
            BarGroup {
                name: "video_processing".into(),
                file_ms: 210.0,
                lazy_ms: 380.0,
                reap_ms: 220.0,
                warm_ms: 200.0,
            },
        ];
        let files = cold_starts(&groups, "cold starts", &dir.join("bars")).unwrap();
        let points = [1, 2, 4].map(|k| SweepPoint {
            concurrency: k,
            file_ms: 20.0 * k as f64,
            reap_ms: 2.0 * k as f64,
        });
        let more = sweep(&points, Some(0.05), "sweep", &dir.join("sweep")).unwrap();
        for f in files.iter().chain(&more) {
            let len = std::fs::metadata(f).unwrap().len();
            assert!(len > 1000, "{}: {len} bytes", f.display());
        }
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        assert!(svg.contains("<svg") && svg.contains("helloworld"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
