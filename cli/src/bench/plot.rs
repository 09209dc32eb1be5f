//! The log-log plot of forget latency vs n (docs/forget-latency.png).

use std::path::Path;

use super::results::{BenchReport, ForgetRow};
use crate::units::{fmt_n, fmt_secs};
use lethe::{Error, Result};

/// The plot's file name, next to the report.
pub const PLOT_FILE: &str = "forget-latency.png";

/// One series of the plot: its legend, its colour, its points.
type Line = (String, plotters::style::RGBColor, Vec<(f64, f64)>);

/// The log-log plot of forget latency vs n at the first (d, C) of the plan.
pub fn plot_forget(report: &BenchReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let (d, c) = (report.breakdown.d, report.breakdown.c);
    let rows: Vec<&ForgetRow> = report
        .forget
        .iter()
        .filter(|r| r.d == d && r.c == c)
        .collect();
    let series = |k: usize, f: &dyn Fn(&ForgetRow) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.k == k)
            .filter_map(|r| f(r).map(|v| (r.n as f64, v)))
            .collect()
    };
    let lines: Vec<Line> = vec![
        (
            "full retrain (extrapolated), k = 1".into(),
            RGBColor(120, 120, 120),
            series(1, &|r| r.retrain),
        ),
        (
            "refit baseline, k = 1".into(),
            RGBColor(200, 40, 40),
            series(1, &|r| Some(r.refit)),
        ),
        (
            "Lethe: canonical weights ready, k = 1".into(),
            RGBColor(40, 110, 200),
            series(1, &|r| Some(r.canonical)),
        ),
        (
            "Lethe: forget returns, k = 100".into(),
            RGBColor(60, 170, 90),
            series(100, &|r| Some(r.forget)),
        ),
        (
            "Lethe: forget returns, in memory, k = 1".into(),
            RGBColor(150, 90, 200),
            series(1, &|r| r.memory),
        ),
        (
            "Lethe: forget returns, k = 1".into(),
            RGBColor(20, 20, 20),
            series(1, &|r| Some(r.forget)),
        ),
    ];
    let points: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    if points.is_empty() {
        return Err(Error::InvalidInput("nothing to plot".into()));
    }
    let (x0, x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let decade = |v: f64, up: bool| {
        let e = v.log10();
        10f64.powf(if up { e.ceil() } else { e.floor() })
    };
    let plot_err =
        |e: &dyn std::fmt::Display| Error::io(path, std::io::Error::other(e.to_string()));
    register_font()?;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Forget latency vs n (d = {d}, C = {c}, log-log)"),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (x0 / 1.3..x1 * 1.3).log_scale(),
            // Two decades of room below the lowest line for the legend.
            (decade(y0, false) / 100.0..decade(y1, true)).log_scale(),
        )
        .map_err(|e| plot_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("n (samples held)")
        .y_desc("time")
        .x_label_formatter(&|v| {
            nice(*v, &[1.0, 2.0, 5.0]).map_or(String::new(), |v| fmt_n(v as usize))
        })
        .y_label_formatter(&|v| nice(*v, &[1.0]).map_or(String::new(), fmt_secs))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| plot_err(&e))?;
    for (name, color, data) in lines.into_iter().filter(|l| !l.2.is_empty()) {
        let style = ShapeStyle::from(color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(data.clone(), style))
            .map_err(|e| plot_err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        chart
            .draw_series(data.into_iter().map(|p| Circle::new(p, 4, style.filled())))
            .map_err(|e| plot_err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))?;
    Ok(())
}

/// `v` rounded to the nearest m·10^e with m in `mantissas`, if it is within 1 % of it: the
/// values a log axis labels.
fn nice(v: f64, mantissas: &[f64]) -> Option<f64> {
    let e = v.log10().floor();
    mantissas
        .iter()
        .chain([&10.0])
        .map(|m| m * 10f64.powf(e))
        .find(|&c| (v / c - 1.0).abs() < 0.01)
}

/// Plot text uses DejaVu Sans compiled into the binary: no system fonts needed.
fn register_font() -> Result<()> {
    use std::sync::OnceLock;
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(
            "the embedded plot font failed to load".into(),
        ))
    }
}
