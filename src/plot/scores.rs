//! `plot scores EVAL.json...`: RMSE and ACC against lead time for every channel, the
//! model of each report against the persistence and climatology of the first.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{colour, draw_legend, labelled_line, range, render, Picture, FONT};
use crate::error::InputError;

/// One line: a system's metric for one channel against lead hours.
#[derive(Debug, Clone)]
struct Line {
    label: String,
    channel: String,
    metric: String,
    points: Vec<(f64, f64)>,
}

#[derive(Debug)]
struct ScoreCharts {
    /// Channels in order, with their units.
    channels: Vec<(String, Option<String>)>,
    lines: Vec<Line>,
}

/// Draws the scores of `reports` (eval JSON files) to `out`.
pub fn plot_scores(reports: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for path in reports {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InputError::file(path, format!("cannot read the eval report: {e}")))?;
        let report: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| InputError::file(path, format!("not JSON: {e}")))?;
        parsed.push((path.clone(), report));
    }
    plot_score_reports(&parsed, out)
}

/// Draws the scores of eval reports already read, each with the file it came from
/// (which names it in the legend and in errors), to `out`.
pub fn plot_score_reports(
    reports: &[(PathBuf, serde_json::Value)],
    out: &Path,
) -> anyhow::Result<()> {
    let mut charts = ScoreCharts {
        channels: Vec::new(),
        lines: Vec::new(),
    };
    for (i, (path, report)) in reports.iter().enumerate() {
        let name = report_label(path, reports.len());
        charts
            .add(report, &name, i == 0)
            .map_err(|e| InputError::file(path, e))?;
    }
    render(out, &charts).with_context(|| format!("{}: cannot draw the plot", out.display()))
}

/// The model's label: "model", or the report's file stem when several are compared.
fn report_label(path: &Path, reports: usize) -> String {
    match reports {
        1 => "model".into(),
        _ => path
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
    }
}

impl ScoreCharts {
    /// Adds the records of one report: its model, and the baselines when `baselines`.
    fn add(
        &mut self,
        report: &serde_json::Value,
        model: &str,
        baselines: bool,
    ) -> Result<(), String> {
        let records = report["records"].as_array().ok_or(
            "no score records: is this `meshcast eval --output` JSON (meshcast 0.1 with records)?",
        )?;
        for r in records {
            let (Some(channel), Some(system), Some(metric), Some(lead), Some(value)) = (
                r["channel"].as_str(),
                r["system"].as_str(),
                r["metric"].as_str(),
                r["lead_hours"].as_f64(),
                r["value"].as_f64(),
            ) else {
                return Err(format!("a score record lacks a field: {r}"));
            };
            if metric == "bias" || (system != "model" && !baselines) {
                continue;
            }
            if !self.channels.iter().any(|(c, _)| c == channel) {
                self.channels
                    .push((channel.to_string(), r["units"].as_str().map(String::from)));
            }
            let label = if system == "model" { model } else { system };
            let found = self
                .lines
                .iter()
                .position(|l| l.label == label && l.channel == channel && l.metric == metric);
            let line = match found {
                Some(i) => &mut self.lines[i],
                None => {
                    self.lines.push(Line {
                        label: label.to_string(),
                        channel: channel.to_string(),
                        metric: metric.to_string(),
                        points: Vec::new(),
                    });
                    self.lines.last_mut().expect("just pushed")
                }
            };
            line.points.push((lead, value));
        }
        if self.channels.is_empty() {
            return Err("the report has no scores".into());
        }
        Ok(())
    }

    /// Every label, in the order first seen, for a consistent colour per system.
    fn labels(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for l in &self.lines {
            if !out.contains(&l.label.as_str()) {
                out.push(&l.label);
            }
        }
        out
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        (channel, units): (&str, Option<&str>),
        metric: &str,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let lines: Vec<&Line> = self
            .lines
            .iter()
            .filter(|l| l.channel == channel && l.metric == metric)
            .collect();
        let leads = range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
        let values = range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
        let title = match (metric, units) {
            ("rmse", Some(u)) => format!("{channel} RMSE ({u})"),
            ("rmse", None) => format!("{channel} RMSE"),
            _ => format!("{channel} ACC"),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 18))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(leads.0..leads.1, values.0..values.1)?;
        chart
            .configure_mesh()
            .x_desc("lead (hours)")
            .label_style((FONT, 13))
            .draw()?;
        let labels = self.labels();
        for line in lines {
            let c = colour(labels.iter().position(|&l| l == line.label).unwrap_or(0));
            let mut points = line.points.clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            labelled_line(&mut chart, &points, c, &line.label, 3)?;
        }
        draw_legend(&mut chart, 12)
    }
}

impl Picture for ScoreCharts {
    fn size(&self) -> (u32, u32) {
        (1000, 280 * self.channels.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let rows = root.split_evenly((self.channels.len(), 2));
        for (i, (channel, units)) in self.channels.iter().enumerate() {
            let key = (channel.as_str(), units.as_deref());
            self.draw_panel(&rows[2 * i], key, "rmse")?;
            self.draw_panel(&rows[2 * i + 1], key, "acc")?;
        }
        Ok(())
    }
}
