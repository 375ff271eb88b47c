//! What `eval` reports: a header saying what was scored (checkpoint, data, split,
//! initial times, climatology) and flat score records (`variable, level, lead, system,
//! metric, value, units`) so that `pandas.DataFrame(report["records"])` is the table.

use std::collections::BTreeMap;

use serde::Serialize;

use super::period::EvalPeriod;

/// Scores of one forecast system for one channel at one lead.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Scores {
    pub rmse: f64,
    pub bias: f64,
    pub acc: f64,
}

/// The forecast systems scored, in table order.
pub(super) const SYSTEMS: [&str; 3] = ["model", "persistence", "climatology"];

/// One score: one metric of one system for one variable (and level) at one lead.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreRecord {
    pub variable: String,
    pub level: Option<f64>,
    /// The model's channel (`variable` and level, as meshcast names it).
    pub channel: String,
    pub lead_hours: f64,
    pub lead_steps: usize,
    pub system: &'static str,
    pub metric: &'static str,
    pub value: f64,
    pub units: Option<String>,
}

/// Which channel a score is for.
pub(super) struct ChannelInfo {
    pub channel: String,
    pub variable: String,
    pub level: Option<f64>,
    pub units: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub meshcast_version: &'static str,
    pub checkpoint: String,
    pub checkpoint_step: usize,
    pub data_files: Vec<String>,
    #[serde(flatten)]
    pub period: EvalPeriod,
    pub initial_times: Vec<String>,
    pub rollout_steps: usize,
    /// What the climatology (the ACC reference and the climatology forecast) is.
    pub climatology: String,
    /// How the model ran: patches (1: whole grid) and graph forward passes in all
    /// (one per patch per model step and batch).
    pub patches: usize,
    pub graph_forwards: usize,
    /// Peak bytes allocated during the rollouts above what was held before them
    /// (weights, graph and data excluded; None without the counting allocator).
    pub rollout_peak_bytes: Option<u64>,
    pub records: Vec<ScoreRecord>,
}

/// Flat records from `scores[lead][channel][system]`; the climatology's ACC is left
/// out (a forecast equal to the climatology has no anomaly: its ACC is undefined).
pub(super) fn records(
    channels: &[ChannelInfo],
    scores: &[Vec<[Scores; 3]>],
    lead_steps: usize,
    step_hours: f64,
) -> Vec<ScoreRecord> {
    let mut out = Vec::new();
    for (c, info) in channels.iter().enumerate() {
        for (k, lead) in scores.iter().enumerate() {
            for (system, s) in SYSTEMS.iter().zip(&lead[c]) {
                let acc = (*system != "climatology").then_some(("acc", s.acc, None));
                let units = info.units.clone();
                let metrics = [("rmse", s.rmse, units.clone()), ("bias", s.bias, units)];
                for (metric, value, units) in metrics.into_iter().chain(acc) {
                    out.push(ScoreRecord {
                        variable: info.variable.clone(),
                        level: info.level,
                        channel: info.channel.clone(),
                        lead_hours: ((k + 1) * lead_steps) as f64 * step_hours,
                        lead_steps: (k + 1) * lead_steps,
                        system,
                        metric,
                        value,
                        units: units.or_else(|| (metric == "acc").then(|| "1".into())),
                    });
                }
            }
        }
    }
    out
}

impl EvalReport {
    /// The record of `(channel, lead_steps, system, metric)`, if there is one.
    pub fn value(
        &self,
        channel: &str,
        lead_steps: usize,
        system: &str,
        metric: &str,
    ) -> Option<f64> {
        self.records
            .iter()
            .find(|r| {
                r.channel == channel
                    && r.lead_steps == lead_steps
                    && r.system == system
                    && r.metric == metric
            })
            .map(|r| r.value)
    }
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} forecasts from {} to {} ({} split), checkpoint step {}; climatology: {}",
            self.initial_times.len(),
            self.initial_times.first().map_or("-", String::as_str),
            self.initial_times.last().map_or("-", String::as_str),
            self.period.split.name(),
            self.checkpoint_step,
            self.climatology
        )?;
        writeln!(
            f,
            "{:<14} {:>6} {:<8} {:>11} {:>11} {:>11} {:>10} {:>7} {:>7}",
            "variable",
            "lead",
            "units",
            "RMSE model",
            "persist.",
            "climat.",
            "bias",
            "ACC",
            "ACC p."
        )?;
        let mut rows: BTreeMap<(&str, usize), (&ScoreRecord, f64)> = BTreeMap::new();
        for r in self
            .records
            .iter()
            .filter(|r| r.system == "model" && r.metric == "rmse")
        {
            rows.insert((&r.channel, r.lead_steps), (r, r.lead_hours));
        }
        let get = |r: &ScoreRecord, system, metric| {
            self.value(&r.channel, r.lead_steps, system, metric)
                .unwrap_or(f64::NAN)
        };
        for (r, hours) in rows.values() {
            writeln!(
                f,
                "{:<14} {:>5}h {:<8} {:>11.4} {:>11.4} {:>11.4} {:>10.4} {:>7.3} {:>7.3}",
                r.channel,
                hours,
                r.units.as_deref().unwrap_or("-"),
                r.value,
                get(r, "persistence", "rmse"),
                get(r, "climatology", "rmse"),
                get(r, "model", "bias"),
                get(r, "model", "acc"),
                get(r, "persistence", "acc"),
            )?;
        }
        Ok(())
    }
}
