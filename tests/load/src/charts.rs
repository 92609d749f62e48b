//! PNG charts of a run, drawn with plotters' bitmap backend.
//!
//! Text needs a font: [`load_font`] registers a TrueType file (DejaVu Sans by
//! default) at run time. Without one, the charts are drawn without any text.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::invoke::{InvocationRecord, Outcome};
use crate::scale::ScaleRow;

/// The font used for chart text when none is given.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 500);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

static FONT_LOADED: OnceLock<bool> = OnceLock::new();

/// Registers the font at `path` for chart text, once per process. Returns
/// whether text can be drawn (false if the file is missing or not a font).
pub fn load_font(path: &Path) -> bool {
    *FONT_LOADED.get_or_init(|| match std::fs::read(path) {
        Ok(bytes) => {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    })
}

/// A sampled value held until the next sample.
fn step_after(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push((p.0, points[i - 1].1));
        }
        out.push(*p);
    }
    out
}

/// A value that describes the interval ending at its sample.
fn step_before(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    let mut previous_t = 0.0;
    for p in points {
        out.push((previous_t, p.1));
        out.push(*p);
        previous_t = p.0;
    }
    out
}

type DrawResult = std::result::Result<(), Box<dyn StdError>>;

fn chart_error(chart: &'static str) -> impl FnOnce(Box<dyn StdError>) -> Error {
    move |e| Error::Chart {
        chart,
        message: e.to_string(),
    }
}

/// Latency of every answered invocation over its intended send time (log
/// scale), with cold starts and failures marked.
pub fn latency_chart(path: &Path, records: &[InvocationRecord], text: bool) -> Result<()> {
    draw_latency(path, records, text).map_err(chart_error("latency.png"))
}

fn draw_latency(path: &Path, records: &[InvocationRecord], text: bool) -> DrawResult {
    let points: Vec<(f64, f64, &InvocationRecord)> = records
        .iter()
        .filter_map(|r| {
            r.latency
                .map(|l| (r.intended.as_secs_f64(), l.as_secs_f64() * 1000.0, r))
        })
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.02;
    let y_min = points
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .clamp(0.01, 1.0)
        * 0.8;
    let y_max = points.iter().map(|p| p.1).fold(10.0, f64::max) * 1.5;

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(12);
    if text {
        builder
            .caption(
                "Invocation latency, measured from the intended send time",
                (FONT, 20),
            )
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since start")
            .y_desc("latency (ms, log scale)")
            .light_line_style(RGBColor(245, 245, 245))
            .label_style((FONT, 13));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;

    let warm = RGBColor(31, 119, 180);
    let cold = RGBColor(214, 39, 40);
    let failed = RGBColor(255, 127, 14);
    let ok = |p: &&(f64, f64, &InvocationRecord)| p.2.outcome.is_success();
    let series = chart.draw_series(
        points
            .iter()
            .filter(|p| ok(p) && !p.2.cold_start)
            .map(|p| Circle::new((p.0, p.1), 2, warm.mix(0.6).filled())),
    )?;
    if text {
        series
            .label("warm")
            .legend(move |(x, y)| Circle::new((x, y), 3, warm.filled()));
    }
    let series = chart.draw_series(
        points
            .iter()
            .filter(|p| p.2.outcome != Outcome::DroppedByClient && !ok(p))
            .map(|p| Cross::new((p.0, p.1), 3, failed)),
    )?;
    if text {
        series
            .label("throttled / error")
            .legend(move |(x, y)| Cross::new((x, y), 3, failed));
    }
    let series = chart.draw_series(
        points
            .iter()
            .filter(|p| p.2.cold_start)
            .map(|p| TriangleMarker::new((p.0, p.1), 5, cold.filled())),
    )?;
    if text {
        series
            .label("cold start")
            .legend(move |(x, y)| TriangleMarker::new((x, y), 5, cold.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// What one entry of the environments chart is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesKind {
    /// The offered load, a grey area on the right axis.
    Offered,
    /// A function's ready environments: a thick, light line.
    Ready,
    /// A function's desired environments: a thin, dark, dashed line drawn
    /// over its ready line, so that both show where they are equal.
    Desired,
}

/// One series of the environments chart and how it is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesStyle {
    /// Its legend text.
    pub label: String,
    /// What it is.
    pub kind: SeriesKind,
    /// Index of the function (0 for the offered load).
    pub function: usize,
    /// Line or area colour.
    pub color: RGBColor,
    /// Line width in pixels (0 for the area).
    pub width: u32,
    /// Dashed rather than solid.
    pub dashed: bool,
}

/// The series of the environments chart, in the order they are drawn
/// (each one over those before it).
pub fn environments_series(functions: &[String]) -> Vec<SeriesStyle> {
    let mut out = vec![SeriesStyle {
        label: "offered load (req/s, right axis)".into(),
        kind: SeriesKind::Offered,
        function: 0,
        color: RGBColor(150, 150, 150),
        width: 0,
        dashed: false,
    }];
    for (index, name) in functions.iter().enumerate() {
        let RGBColor(r, g, b) = PALETTE[index % PALETTE.len()];
        // Ready: the function's colour, lightened; desired: darkened.
        let light = |c: u8| c + (255 - c) / 2;
        let dark = |c: u8| c / 2;
        out.push(SeriesStyle {
            label: format!("{name} ready"),
            kind: SeriesKind::Ready,
            function: index,
            color: RGBColor(light(r), light(g), light(b)),
            width: 6,
            dashed: false,
        });
        out.push(SeriesStyle {
            label: format!("{name} desired"),
            kind: SeriesKind::Desired,
            function: index,
            color: RGBColor(dark(r), dark(g), dark(b)),
            width: 2,
            dashed: true,
        });
    }
    out
}

/// A rectangle in pixels: left, top, right, bottom (exclusive).
pub type PixelRect = (u32, u32, u32, u32);

/// Where the plot and its legend go in the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnvironmentsLayout {
    /// The chart: caption, axes and plot.
    pub chart: PixelRect,
    /// The legend, below the chart, outside every axis.
    pub legend: PixelRect,
    /// Legend entries on one row.
    pub per_row: usize,
}

/// Legend entries per row, and the height of one row.
const LEGEND_PER_ROW: usize = 3;
const LEGEND_ROW: u32 = 20;

/// The layout of the environments chart for `entries` legend entries: the
/// legend gets a strip of its own below the chart, so it can never cover
/// the data (a legend inside the plot covered the plateau of a run).
pub fn environments_layout(size: (u32, u32), entries: usize, text: bool) -> EnvironmentsLayout {
    let rows = if text {
        entries.div_ceil(LEGEND_PER_ROW) as u32
    } else {
        0
    };
    let legend_height = if rows == 0 { 0 } else { rows * LEGEND_ROW + 12 };
    let split = size.1.saturating_sub(legend_height);
    EnvironmentsLayout {
        chart: (0, 0, size.0, split),
        legend: (0, split, size.0, size.1),
        per_row: LEGEND_PER_ROW,
    }
}

/// Ready and desired environments per function over time (left axis) against
/// the offered load in requests per second (right axis, grey); the legend
/// below the chart.
pub fn environments_chart(
    path: &Path,
    rows: &[ScaleRow],
    functions: &[String],
    load_end: f64,
    text: bool,
) -> Result<()> {
    draw_environments(path, rows, functions, load_end, text)
        .map_err(chart_error("environments.png"))
}

fn draw_environments(
    path: &Path,
    rows: &[ScaleRow],
    functions: &[String],
    load_end: f64,
    text: bool,
) -> DrawResult {
    let x_max = rows
        .iter()
        .map(|r| r.t.as_secs_f64())
        .fold(load_end.max(1.0), f64::max)
        * 1.02;
    let env_max = rows
        .iter()
        .flat_map(|r| [r.scale.ready, r.scale.desired])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;
    // Offered load summed over functions, per sample time.
    let mut offered: Vec<(f64, f64)> = Vec::new();
    for row in rows {
        let t = row.t.as_secs_f64();
        match offered.last_mut() {
            Some(last) if last.0 == t => last.1 += row.offered_rps,
            _ => offered.push((t, row.offered_rps)),
        }
    }
    let rps_max = offered.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let series = environments_series(functions);
    let layout = environments_layout(SIZE, series.len(), text);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(layout.chart.3);
    let mut builder = ChartBuilder::on(&upper);
    builder.margin(12);
    if text {
        builder
            .caption("Environments against offered load", (FONT, 20))
            .x_label_area_size(40)
            .y_label_area_size(50)
            .right_y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..x_max, 0f64..env_max)?
        .set_secondary_coord(0f64..x_max, 0f64..rps_max);
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since start")
            .y_desc("environments")
            .light_line_style(RGBColor(245, 245, 245))
            .label_style((FONT, 13));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    if text {
        chart
            .configure_secondary_axes()
            .y_desc("offered load (req/s)")
            .label_style((FONT, 13))
            .draw()?;
    }

    // Where the load stopped.
    chart.draw_series(DashedLineSeries::new(
        [(load_end, 0.0), (load_end, env_max)],
        6,
        4,
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    for style in &series {
        let mine = rows.iter().filter(|r| r.function == style.function);
        let points = |value: fn(&ScaleRow) -> Option<u32>| -> Vec<(f64, f64)> {
            mine.clone()
                .filter_map(|r| value(r).map(|v| (r.t.as_secs_f64(), f64::from(v))))
                .collect()
        };
        match style.kind {
            SeriesKind::Offered => {
                chart.draw_secondary_series(AreaSeries::new(
                    step_before(&offered),
                    0.0,
                    style.color.mix(0.25),
                ))?;
            }
            SeriesKind::Ready => {
                chart.draw_series(LineSeries::new(
                    step_after(&points(|r| r.scale.ready)),
                    style.color.stroke_width(style.width),
                ))?;
            }
            SeriesKind::Desired => {
                chart.draw_series(DashedLineSeries::new(
                    step_after(&points(|r| r.scale.desired)),
                    8,
                    5,
                    style.color.stroke_width(style.width),
                ))?;
            }
        }
    }
    if text {
        draw_legend(&lower, &series, &layout)?;
    }
    root.present()?;
    Ok(())
}

/// The legend in its strip: a sample of each series and its label.
fn draw_legend(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    series: &[SeriesStyle],
    layout: &EnvironmentsLayout,
) -> DrawResult {
    let column = (layout.legend.2 - layout.legend.0) as i32 / layout.per_row as i32;
    for (i, style) in series.iter().enumerate() {
        let x = 60 + (i % layout.per_row) as i32 * (column - 20);
        let y = 10 + (i / layout.per_row) as i32 * LEGEND_ROW as i32;
        match style.kind {
            SeriesKind::Offered => {
                area.draw(&Rectangle::new(
                    [(x, y - 5), (x + 24, y + 5)],
                    style.color.mix(0.4).filled(),
                ))?;
            }
            SeriesKind::Ready => {
                area.draw(&PathElement::new(
                    [(x, y), (x + 24, y)],
                    style.color.stroke_width(style.width),
                ))?;
            }
            SeriesKind::Desired => {
                for dash in [0, 14] {
                    area.draw(&PathElement::new(
                        [(x + dash, y), (x + dash + 9, y)],
                        style.color.stroke_width(style.width),
                    ))?;
                }
            }
        }
        area.draw(&Text::new(style.label.clone(), (x + 32, y - 7), (FONT, 13)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: PixelRect, b: PixelRect) -> bool {
        a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
    }

    #[test]
    fn the_legend_lies_outside_the_chart() {
        for functions in 1..=4 {
            let entries = environments_series(&vec!["f".to_string(); functions]).len();
            let layout = environments_layout(SIZE, entries, true);
            assert!(!overlaps(layout.chart, layout.legend), "{layout:?}");
            assert!(layout.legend.3 <= SIZE.1 && layout.legend.1 >= layout.chart.3);
            // Every entry has a row in the strip.
            let rows = entries.div_ceil(layout.per_row) as u32;
            assert!(
                layout.legend.3 - layout.legend.1 >= rows * LEGEND_ROW,
                "{layout:?}"
            );
            assert!(
                layout.chart.3 >= SIZE.1 / 2,
                "the plot keeps most of the image"
            );
        }
        // Without text there is no legend, and the chart takes the image.
        let bare = environments_layout(SIZE, 3, false);
        assert_eq!(bare.chart, (0, 0, SIZE.0, SIZE.1));
    }

    #[test]
    fn desired_is_drawn_over_ready_and_looks_different() {
        let series = environments_series(&["a".to_string(), "b".to_string()]);
        for function in 0..2 {
            let at = |kind| {
                series
                    .iter()
                    .position(|s| s.function == function && s.kind == kind)
                    .expect("series")
            };
            let (ready, desired) = (
                &series[at(SeriesKind::Ready)],
                &series[at(SeriesKind::Desired)],
            );
            assert!(
                at(SeriesKind::Desired) > at(SeriesKind::Ready),
                "desired is drawn last"
            );
            assert!(desired.dashed && !ready.dashed);
            assert_ne!(desired.color, ready.color);
            assert!(ready.width > desired.width, "ready shows around desired");
        }
    }

    #[test]
    fn the_chart_is_written_with_and_without_text() {
        let dir = std::env::temp_dir().join(format!("porchlight-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("environments.png");
        let rows = vec![ScaleRow {
            t: std::time::Duration::from_secs(1),
            function: 0,
            profile_level: 1.0,
            offered_rps: 10.0,
            scale: crate::scale::FunctionScale {
                name: "f".into(),
                desired: Some(2),
                ready: Some(2),
                in_flight: None,
                queued: None,
            },
        }];
        let text = load_font(Path::new(DEFAULT_FONT));
        environments_chart(&path, &rows, &["f".into()], 2.0, text).expect("drawn");
        assert!(std::fs::metadata(&path).expect("png").len() > 100);
        environments_chart(&path, &rows, &["f".into()], 2.0, false).expect("drawn");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
