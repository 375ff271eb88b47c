//! Memory checked before the first step: the planner's predicted peak of the run's
//! training step against what its device has free. The rule: a run predicted not to
//! fit is refused, and the error names the cheapest configuration (patches,
//! checkpointing, precision) that fits, as flags; meshcast never changes the techniques
//! a user chose unless asked to (`--memory-budget`). `--skip-memory-check` overrides.

use crate::data::Grid;
use crate::graph::WeatherGraph;
use crate::memory::planner::{
    fit_budget, human_bytes, inference_floor, predict, StepSetting, Techniques,
};
use crate::memory::Available;
use crate::predict::Execution;

use super::config::RunConfig;

/// The most patches the suggestion's search tries.
const MAX_SUGGESTED_PATCHES: usize = 64;

/// Refuses `run` when its predicted peak exceeds `available`. `run` as one rank runs
/// it: its per-rank batch, and `ranks` those at hand (patch-parallel ranks each hold
/// their share of the patches).
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
        rollout_steps: run.train.max_rollout_steps(),
        patch_ranks: run.train.ranks,
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

/// Refuses an evaluation or forecast of `run` (executed as `execution`, `batch_size`
/// initial times at once) whose forward pass at that batch size certainly exceeds
/// `available`: the check uses the planner's lower bound, not its estimate.
pub fn check_inference_fits(
    run: &RunConfig,
    execution: &Execution,
    graph: &WeatherGraph,
    grid: &Grid,
    batch_size: usize,
    available: &Available,
) -> anyhow::Result<()> {
    let setting = StepSetting {
        graph,
        grid,
        model: &run.model,
        batch_size,
        patch_halo: execution.patches.map_or(0.0, |p| p.halo_deg),
        on_cpu: true,
        rollout_steps: 1,
        patch_ranks: 1,
    };
    let techniques = Techniques {
        patches: execution.patch_count(),
        checkpointing: false,
        precision: execution.precision,
    };
    let floor = inference_floor(&setting.shape(techniques)?);
    if floor <= available.bytes {
        return Ok(());
    }
    crate::bail_input!(
        "this model's forward pass needs at least {} at --batch-size {batch_size} ({techniques}) but {} is {} now: \
         use a smaller --batch-size, or --patches to run it patch by patch",
        human_bytes(floor),
        human_bytes(available.bytes),
        available.source
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_run() -> (RunConfig, WeatherGraph, Grid) {
        let grid = Grid::global_cell_centred(30.0);
        let valid = vec![true; grid.len()];
        let options = crate::graph::GraphOptions {
            mesh_level: 1,
            ..Default::default()
        };
        let graph = crate::graph::load_or_build(&grid, &valid, &options, None)
            .unwrap()
            .0;
        let mut run: RunConfig = serde_json::from_value(serde_json::json!({
            "data": {}, "window": {"input_steps": 2, "lead_steps": 1},
            "split": {"train": 0.7, "validation": 0.15}, "graph": options,
            "model": crate::model::ModelConfig::default().for_data(2, 5, 0),
            "train": crate::train::TrainConfig::default()
        }))
        .unwrap();
        run.train.batch_size = 2;
        (run, graph, grid)
    }

    fn free(bytes: u64) -> Available {
        Available {
            bytes,
            source: "free in this test".into(),
        }
    }

    #[test]
    fn a_step_that_does_not_fit_is_refused_with_flags_that_fit() {
        let (run, graph, grid) = small_run();
        check_fits(&run, &graph, &grid, &free(u64::MAX), true).unwrap();
        let err = check_fits(&run, &graph, &grid, &free(1 << 20), true).unwrap_err();
        assert!(crate::error::is_input_error(&err));
        let text = err.to_string();
        assert!(
            text.contains("predicted peak") && text.contains("--skip-memory-check"),
            "{text}"
        );
    }

    #[test]
    fn an_evaluation_below_its_floor_is_refused() {
        let (run, graph, grid) = small_run();
        let plain = Execution::PLAIN;
        check_inference_fits(&run, &plain, &graph, &grid, 4, &free(u64::MAX)).unwrap();
        let err = check_inference_fits(&run, &plain, &graph, &grid, 4, &free(1 << 10)).unwrap_err();
        assert!(err.to_string().contains("--batch-size"), "{err}");
    }
}
