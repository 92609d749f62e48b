//! The trade-off chart: wasted memory-time against cold starts, one panel
//! for the cold starts over the whole trace and one for the
//! 75th-percentile function's cold-start rate (the paper's axis). Drawn in
//! the style of the load tool's other charts (`crate::charts`).

use std::error::Error as StdError;
use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use super::evaluate::{Group, PolicyResult};
use super::goals::adaptive_line;
use crate::error::{Error, Result};

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1400, 620);
const FIXED: RGBColor = RGBColor(31, 119, 180);
const ADAPTIVE: RGBColor = RGBColor(44, 160, 44);
const PAPER: RGBColor = RGBColor(148, 103, 189);
const VARIATION: RGBColor = RGBColor(150, 150, 150);

type DrawResult = std::result::Result<(), Box<dyn StdError>>;

/// Draws the chart to `path`; without `text`, no captions, labels or legend.
pub fn tradeoff_chart(path: &Path, results: &[PolicyResult], text: bool) -> Result<()> {
    draw(path, results, text).map_err(|e| Error::Chart {
        chart: "tradeoff.png",
        message: e.to_string(),
    })
}

/// Which measure of cold starts a panel plots.
#[derive(Clone, Copy)]
enum Measure {
    /// Cold starts over the whole trace (log scale).
    All,
    /// The 75th-percentile function's cold-start rate, in %.
    P75,
}

impl Measure {
    fn of(self, r: &PolicyResult) -> f64 {
        match self {
            Measure::All => r.cold_starts.max(1) as f64,
            Measure::P75 => r.p75_function_rate * 100.0,
        }
    }
}

fn draw(path: &Path, results: &[PolicyResult], text: bool) -> DrawResult {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let body = if text {
        let (title, rest) = root.split_vertically(40);
        title.draw(&Text::new(
            "Keep-alive policies on the Azure Functions 2019 trace: cold starts against wasted memory-time",
            (14, 12),
            (FONT, 20).into_font(),
        ))?;
        let (rest, footer) = rest.split_vertically(SIZE.1 - 40 - 24);
        footer.draw(&Text::new(
            "Data: Azure Public Dataset, AzureFunctionsDataset2019 (CC-BY 4.0; Shahrad et al., USENIX ATC 2020). Down and left is better.",
            (14, 4),
            (FONT, 12).into_font().color(&BLACK.mix(0.7)),
        ))?;
        rest
    } else {
        root.clone()
    };
    let panels = body.split_evenly((1, 2));
    panel(
        &panels[0],
        results,
        Measure::All,
        "cold starts, whole trace (log scale)",
        text,
    )?;
    panel(
        &panels[1],
        results,
        Measure::P75,
        "cold-start rate of the 75th-percentile function (%)",
        text,
    )?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    results: &[PolicyResult],
    measure: Measure,
    y_desc: &str,
    text: bool,
) -> DrawResult {
    let x = |r: &PolicyResult| r.wasted_gb_s / 1e6;
    let xs: Vec<f64> = results.iter().map(x).collect();
    let ys: Vec<f64> = results.iter().map(|r| measure.of(r)).collect();
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_max = xs.iter().copied().fold(0.0, f64::max);
    let pad = (x_max - x_min).max(1e-9) * 0.06;
    let x_range = (x_min - pad).max(0.0)..x_max + pad;
    let y_lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let y_hi = ys.iter().copied().fold(0.0, f64::max);

    let mut builder = ChartBuilder::on(area);
    builder.margin(14);
    if text {
        builder.x_label_area_size(44).y_label_area_size(64);
    }
    match measure {
        Measure::All => {
            let mut chart = builder
                .build_cartesian_2d(x_range, ((y_lo * 0.8).max(0.5)..y_hi * 1.25).log_scale())?;
            mesh(&mut chart, y_desc, text)?;
            series(&mut chart, results, measure, x, text)?;
        }
        Measure::P75 => {
            let span = (y_hi - y_lo).max(1.0);
            let mut chart = builder
                .build_cartesian_2d(x_range, (y_lo - span * 0.08).max(0.0)..y_hi + span * 0.08)?;
            mesh(&mut chart, y_desc, text)?;
            series(&mut chart, results, measure, x, text)?;
        }
    }
    Ok(())
}

fn mesh<'a, Y>(
    chart: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    y_desc: &str,
    text: bool,
) -> DrawResult
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("wasted memory-time (million GB-s)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(RGBColor(245, 245, 245))
            .label_style((FONT, 13));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    Ok(())
}

fn series<'a, Y>(
    chart: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    results: &[PolicyResult],
    measure: Measure,
    x: impl Fn(&PolicyResult) -> f64,
    text: bool,
) -> DrawResult
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let point = |r: &PolicyResult| (x(r), measure.of(r));
    let of_group = |g: Group| results.iter().filter(move |r| r.candidate.group == g);

    // One knob away from the chosen parameters: light context.
    let variations: Vec<(f64, f64)> = of_group(Group::Variation).map(point).collect();
    let s = chart.draw_series(
        variations
            .iter()
            .map(|&p| Circle::new(p, 4, VARIATION.stroke_width(1))),
    )?;
    if text && !variations.is_empty() {
        s.label("adaptive, chosen with one knob changed")
            .legend(|(x, y)| Circle::new((x + 7, y), 4, VARIATION.stroke_width(1)));
    }

    // Fixed windows as a line, each point named.
    let fixed: Vec<(f64, f64)> = of_group(Group::Fixed).map(point).collect();
    let s = chart.draw_series(LineSeries::new(
        fixed.iter().copied(),
        FIXED.stroke_width(2),
    ))?;
    if text {
        s.label("fixed keep-alive window")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], FIXED.stroke_width(2)));
    }
    chart.draw_series(fixed.iter().map(|&p| Circle::new(p, 4, FIXED.filled())))?;
    if text {
        chart.draw_series(of_group(Group::Fixed).map(|r| {
            let name = r.candidate.label.trim_start_matches("fixed ").to_string();
            EmptyElement::at(point(r))
                + Text::new(name, (6, -16), (FONT, 12).into_font().color(&FIXED))
        }))?;
    }

    // The adaptive line over the margin, the chosen point marked.
    let line = adaptive_line(results);
    let s = chart.draw_series(LineSeries::new(
        line.iter().map(|r| point(r)),
        ADAPTIVE.stroke_width(2),
    ))?;
    if text {
        s.label("adaptive, chosen parameters, margin 0-50 %")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], ADAPTIVE.stroke_width(2)));
    }
    chart.draw_series(line.iter().map(|r| {
        EmptyElement::at(point(r)) + Rectangle::new([(-3, -3), (3, 3)], ADAPTIVE.filled())
    }))?;
    if let Some(chosen) = of_group(Group::Chosen).next() {
        let p = point(chosen);
        chart.draw_series(std::iter::once(TriangleMarker::new(
            p,
            9,
            ADAPTIVE.filled(),
        )))?;
        if text {
            chart.draw_series(std::iter::once(
                EmptyElement::at(p)
                    + Text::new("chosen", (8, 4), (FONT, 12).into_font().color(&ADAPTIVE)),
            ))?;
        }
    }

    // The paper's defaults.
    let paper: Vec<(f64, f64)> = of_group(Group::Paper).map(point).collect();
    let s = chart.draw_series(
        paper
            .iter()
            .map(|&p| TriangleMarker::new(p, 8, PAPER.filled())),
    )?;
    if text && !paper.is_empty() {
        s.label("adaptive, paper defaults")
            .legend(|(x, y)| TriangleMarker::new((x + 7, y), 6, PAPER.filled()));
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
    Ok(())
}
