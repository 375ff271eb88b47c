//! Memory checked before the first step: the planner's predicted peak of the run's
//! training step against what its device has free. The rule: a run predicted not to
//! fit is refused, and the error names the cheapest configuration (patches,
//! checkpointing, precision) that fits, as flags; meshcast never changes the techniques
//! a user chose unless asked to (`--memory-budget`). `--skip-memory-check` overrides.

use crate::data::Grid;
use crate::graph::WeatherGraph;
use crate::memory::planner::{fit_budget, human_bytes, predict, StepSetting, Techniques};
use crate::memory::Available;

use super::config::RunConfig;

/// The most patches the suggestion's search tries.
const MAX_SUGGESTED_PATCHES: usize = 64;

/// Refuses `run` when its predicted peak exceeds `available`.
pub fn check_fits(
    run: &RunConfig,
    graph: &WeatherGraph,
    grid: &Grid,
    available: &Available,
    on_cpu: bool,
) -> anyhow::Result<()> {
    let setting = StepSetting {
        graph,
        grid,
        model: &run.model,
        batch_size: run.train.batch_size,
        patch_halo: run.train.patch_halo,
        on_cpu,
    };
    let t = &run.train;
    let chosen = Techniques {
        patches: t.patches,
        checkpointing: t.checkpointing,
        precision: t.mixed_precision,
    };
    let predicted = predict(&setting.shape(chosen)?).total;
    if predicted <= available.bytes {
        tracing::debug!(
            "memory: predicted peak {} of {} {}",
            human_bytes(predicted),
            human_bytes(available.bytes),
            available.source
        );
        return Ok(());
    }
    let fit = fit_budget(available.bytes, MAX_SUGGESTED_PATCHES, &setting)?;
    let suggestion = match fit.chosen.map(|i| &fit.rows[i]) {
        Some(row) => format!(
            "{} fits (predicted {})",
            row.techniques.flags(),
            human_bytes(row.prediction.total)
        ),
        None => "no configuration of patches, checkpointing and precision fits: shrink the model or the batch".into(),
    };
    crate::bail_input!(
        "this run's predicted peak is {} ({chosen}) but {} is {} now: {suggestion}; \
         --memory-budget chooses for you, --skip-memory-check runs anyway",
        human_bytes(predicted),
        human_bytes(available.bytes),
        available.source
    )
}
