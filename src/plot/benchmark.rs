//! `plot benchmark REPORT.json [REPORT2.json]`: the median step time (with its min–max
//! range) and the measured peak memory of every case, as horizontal bars; with two
//! reports, each case's bars side by side, aligned on the case (as
//! `compare-benchmarks` aligns them).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{colour, render, Picture, FONT};
use crate::bench::report::{CaseResult, Report};
use crate::error::InputError;

/// One case's figures in one report.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Median, min and max step time in milliseconds.
    step_ms: Option<[f64; 3]>,
    /// Case peak memory (peak above the baseline) in MiB.
    peak_mib: Option<f64>,
}

/// One bar: a case's value in one report, with its min–max whisker.
#[derive(Debug, Clone, Copy)]
struct Bar {
    case: usize,
    report: usize,
    value: f64,
    whisker: Option<(f64, f64)>,
}

impl Bar {
    fn right_end(&self) -> f64 {
        self.whisker.map_or(self.value, |w| w.1.max(self.value))
    }

    fn label(&self) -> String {
        match self.value >= 100.0 {
            true => format!("{:.0}", self.value),
            false => format!("{:.1}", self.value),
        }
    }
}

#[derive(Debug)]
struct BenchmarkCharts {
    /// Legend label of each report.
    reports: Vec<String>,
    /// Case name and its figures in each report (None where a report lacks the case).
    cases: Vec<(String, Vec<Option<Figures>>)>,
}

/// Draws the cases of one or two benchmark reports to `out`.
pub fn plot_benchmark(paths: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=2).contains(&paths.len()),
        InputError("plot benchmark takes one report, or two to compare".into())
    );
    let reports: Vec<Report> = paths
        .iter()
        .map(|p| Report::load(p))
        .collect::<Result<_, _>>()?;
    let charts = BenchmarkCharts::new(paths, &reports);
    if charts.cases.is_empty() {
        let path = &paths[0];
        return Err(InputError::file(path, "no case of the report has timings or memory").into());
    }
    render(out, &charts).with_context(|| format!("{}: cannot draw the plot", out.display()))
}

impl Figures {
    fn of(case: &CaseResult) -> Option<Figures> {
        let step = case.timings.as_ref().map(|t| &t.step);
        let figures = Figures {
            step_ms: step.map(|s| [s.median_s, s.min_s, s.max_s].map(|v| v * 1e3)),
            peak_mib: case
                .memory
                .and_then(|m| m.case_peak())
                .map(|b| b as f64 / (1u64 << 20) as f64),
        };
        (figures.step_ms.is_some() || figures.peak_mib.is_some()).then_some(figures)
    }
}

impl BenchmarkCharts {
    /// The cases of every report in the order first seen, aligned on their config.
    fn new(paths: &[PathBuf], reports: &[Report]) -> BenchmarkCharts {
        let all = || reports.iter().flat_map(|r| &r.cases);
        let devices: std::collections::HashSet<&str> =
            all().map(|c| c.config.device.as_str()).collect();
        let mut keys: Vec<(String, String)> = Vec::new();
        for case in all() {
            let key = case.config.key();
            if Figures::of(case).is_some() && !keys.iter().any(|(k, _)| *k == key) {
                let name = match devices.len() {
                    1 => case.config.short(),
                    _ => format!("{} {}", case.config.short(), case.config.device),
                };
                keys.push((key, name));
            }
        }
        let cases = keys
            .into_iter()
            .map(|(key, name)| {
                let figures = reports
                    .iter()
                    .map(|r| {
                        r.cases
                            .iter()
                            .find(|c| c.config.key() == key)
                            .and_then(Figures::of)
                    })
                    .collect();
                (name, figures)
            })
            .collect();
        let labels = paths
            .iter()
            .zip(reports)
            .map(|(p, r)| {
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
                match (r.label.is_empty(), stem) {
                    (false, _) => r.label.clone(),
                    (true, Some(s)) => s,
                    (true, None) => "report".into(),
                }
            })
            .collect();
        BenchmarkCharts {
            reports: labels,
            cases,
        }
    }

    /// The bars of one panel: `value(figures)` gives a bar and an optional whisker.
    fn bars(&self, value: impl Fn(&Figures) -> Option<(f64, Option<(f64, f64)>)>) -> Vec<Bar> {
        let mut bars = Vec::new();
        for (case, (_, figures)) in self.cases.iter().enumerate() {
            for (report, f) in figures.iter().enumerate() {
                if let Some((value, whisker)) = f.as_ref().and_then(&value) {
                    bars.push(Bar {
                        case,
                        report,
                        value,
                        whisker,
                    });
                }
            }
        }
        bars
    }

    /// One panel of bars, with the case names beside the rows when `with_names`.
    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        title: &str,
        bars: &[Bar],
        with_names: bool,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.cases.len();
        let top = bars.iter().map(Bar::right_end).fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.12 } else { 1.0 };
        let names: Vec<&str> = self.cases.iter().map(|(name, _)| name.as_str()).collect();
        let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u32;
        let label_area = if with_names { 16 + 8 * longest } else { 10 };
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0.0..top, 0.0..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(6)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .label_style((FONT, 13))
            .draw()?;
        if with_names {
            // Case names beside their rows (top to bottom in the report's order).
            let base = area.get_base_pixel();
            let style =
                TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
            for (i, name) in names.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(0.0, (n - i) as f64 - 0.5));
                let at = (x - base.0 - 6, y - base.1);
                area.draw(&Text::new(name.to_string(), at, style.clone()))?;
            }
        }
        let reports = self.reports.len() as f64;
        let height = 0.8 / reports;
        for bar in bars {
            let y0 = (n - 1 - bar.case) as f64 + 0.1 + (reports - 1.0 - bar.report as f64) * height;
            let y1 = y0 + height;
            let fill = colour(bar.report).filled();
            chart.draw_series([Rectangle::new(
                [(0.0, y0 + 0.02), (bar.value, y1 - 0.02)],
                fill,
            )])?;
            if let Some((lo, hi)) = bar.whisker {
                let mid = (y0 + y1) / 2.0;
                let line = PathElement::new([(lo, mid), (hi, mid)], BLACK.stroke_width(2));
                chart.draw_series([line])?;
            }
            let at = (bar.right_end() + top * 0.01, y1 - height * 0.3);
            chart.draw_series([Text::new(bar.label(), at, (FONT, 12))])?;
        }
        Ok(())
    }

    fn draw_legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        for (r, label) in self.reports.iter().enumerate() {
            let x = 20 + 330 * r as i32;
            area.draw(&Rectangle::new([(x, 10), (x + 22, 26)], colour(r).filled()))?;
            area.draw(&Text::new(label.clone(), (x + 30, 10), (FONT, 15)))?;
        }
        Ok(())
    }
}

impl Picture for BenchmarkCharts {
    fn size(&self) -> (u32, u32) {
        let rows = self.cases.len() as u32 * (18 + 14 * self.reports.len() as u32);
        (1200, 120 + rows.max(120))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (legend, body) = root.split_vertically(36);
        self.draw_legend(&legend)?;
        let (left, right) = body.split_horizontally(640);
        let steps = self.bars(|f| f.step_ms.map(|[m, lo, hi]| (m, Some((lo, hi)))));
        let peaks = self.bars(|f| f.peak_mib.map(|m| (m, None)));
        self.draw_panel(&left, "step time (ms): median, min–max", &steps, true)?;
        self.draw_panel(&right, "peak memory (MiB)", &peaks, false)?;
        Ok(())
    }
}
