//! `plot training RUN_DIR`: the loss (training per step, validation per epoch) and the
//! learning rate against the optimizer step, from the run's metrics.jsonl.

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{colour, draw_legend, labelled_line, range, render, Picture, FONT};
use crate::error::InputError;

/// The curves of one run.
#[derive(Debug, Default)]
struct Curves {
    /// `(step, loss)` of every optimizer step.
    train: Vec<(f64, f64)>,
    /// `(step, validation loss)` at the end of each epoch with a validation.
    validation: Vec<(f64, f64)>,
    /// `(step, learning rate)`.
    lr: Vec<(f64, f64)>,
}

/// Draws `run_dir/metrics.jsonl` to `out`.
pub fn plot_training(run_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| InputError::file(&path, format!("cannot read the run's metrics: {e}")))?;
    let curves = parse(&text).map_err(|e| InputError::file(&path, e))?;
    render(out, &curves).with_context(|| format!("{}: cannot draw the plot", out.display()))
}

/// The step and epoch rows of metrics.jsonl; other rows (skip, summary) are ignored.
fn parse(text: &str) -> Result<Curves, String> {
    let mut curves = Curves::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
        let num = |key: &str| row[key].as_f64();
        match (row["kind"].as_str(), num("step")) {
            (Some("step"), Some(step)) => {
                curves.train.extend(num("loss").map(|l| (step, l)));
                curves.lr.extend(num("lr").map(|l| (step, l)));
            }
            (Some("epoch"), Some(step)) => {
                curves.validation.extend(num("val_loss").map(|l| (step, l)))
            }
            _ => {}
        }
    }
    if curves.train.is_empty() {
        return Err("no training steps recorded yet".into());
    }
    Ok(curves)
}

impl Picture for Curves {
    fn size(&self) -> (u32, u32) {
        (1000, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (top, bottom) = root.split_vertically(440);
        let steps = range(self.train.iter().map(|p| p.0));
        let (lo, hi) = range(self.train.iter().chain(&self.validation).map(|p| p.1));
        let mut chart = ChartBuilder::on(&top)
            .caption("loss", (FONT, 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(steps.0..steps.1, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss")
            .label_style((FONT, 14))
            .draw()?;
        let series = [("training", &self.train), ("validation", &self.validation)];
        for (i, (name, points)) in series
            .into_iter()
            .enumerate()
            .filter(|(_, (_, p))| !p.is_empty())
        {
            let c = colour(i);
            let dots = if name == "validation" { 4 } else { 0 };
            labelled_line(&mut chart, points, c, name, dots)?;
        }
        draw_legend(&mut chart, 14)?;
        let (lr_lo, lr_hi) = range(self.lr.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(&bottom)
            .caption("learning rate", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(steps.0..steps.1, lr_lo..lr_hi)?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .label_style((FONT, 14))
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()?;
        chart.draw_series(LineSeries::new(
            self.lr.iter().copied(),
            colour(2).stroke_width(2),
        ))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_and_epochs_and_refuses_an_empty_run() {
        let text = r#"{"kind":"step","step":1,"loss":2.0,"lr":0.001}
{"kind":"skip","step":2,"loss":9.0}
{"kind":"epoch","step":2,"train_loss":1.5,"val_loss":1.2}
{"kind":"summary","steps":2}"#;
        let c = parse(text).unwrap();
        assert_eq!(c.train, [(1.0, 2.0)]);
        assert_eq!(c.validation, [(2.0, 1.2)]);
        assert_eq!(c.lr, [(1.0, 0.001)]);
        assert!(parse("").unwrap_err().contains("no training steps"));
        assert!(parse("{oops").unwrap_err().contains("line 1"));
    }
}
