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

/// Ready and desired environments per function over time (left axis) against
/// the offered load in requests per second (right axis, grey).
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

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
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

    let grey = RGBColor(150, 150, 150);
    let series =
        chart.draw_secondary_series(AreaSeries::new(step_before(&offered), 0.0, grey.mix(0.25)))?;
    if text {
        series
            .label("offered load (req/s, right axis)")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 4), (x + 14, y + 4)], grey.mix(0.4).filled())
            });
    }
    // Where the load stopped.
    chart.draw_series(DashedLineSeries::new(
        [(load_end, 0.0), (load_end, env_max)],
        6,
        4,
        BLACK.mix(0.5).stroke_width(1),
    ))?;

    for (index, name) in functions.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let mine: Vec<&ScaleRow> = rows.iter().filter(|r| r.function == index).collect();
        let ready: Vec<(f64, f64)> = mine
            .iter()
            .filter_map(|r| r.scale.ready.map(|v| (r.t.as_secs_f64(), f64::from(v))))
            .collect();
        let desired: Vec<(f64, f64)> = mine
            .iter()
            .filter_map(|r| r.scale.desired.map(|v| (r.t.as_secs_f64(), f64::from(v))))
            .collect();
        let series =
            chart.draw_series(LineSeries::new(step_after(&ready), color.stroke_width(3)))?;
        if text {
            series.label(format!("{name} ready")).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 14, y)], color.stroke_width(3))
            });
        }
        let series = chart.draw_series(DashedLineSeries::new(
            step_after(&desired),
            8,
            5,
            color.mix(0.8).stroke_width(2),
        ))?;
        if text {
            series
                .label(format!("{name} desired"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.mix(0.5).stroke_width(2))
                });
        }
    }
    if text {
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
