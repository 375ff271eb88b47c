//! `--memory-budget`: the cheapest patches, checkpointing and precision whose
//! predicted peak fits, found by the planner's one budget search.

use super::TrainArgs;
use crate::data::Dataset;
use crate::model::ModelConfig;
use crate::train::config::TrainConfig;

/// Sets patches, checkpointing and precision to the cheapest configuration whose
/// predicted peak fits `budget`, or refuses the run when none does.
pub(super) fn fit_budget(
    budget: u64,
    dataset: &Dataset,
    options: &crate::graph::GraphOptions,
    model: &ModelConfig,
    train_cfg: &mut TrainConfig,
    args: &TrainArgs,
    on_cpu: bool,
) -> anyhow::Result<()> {
    use crate::memory::planner::{fit_budget, human_bytes, StepSetting};
    if train_cfg.mixed_precision == crate::model::MixedPrecision::F64 {
        crate::bail_input!(
            "--memory-budget chooses the precision (f32 or bf16): it cannot keep --mixed-precision f64"
        );
    }
    let valid = dataset.ever_valid(0..dataset.time.len())?;
    let (graph, _, _) = crate::graph::load_or_build(
        &dataset.grid,
        &valid,
        options,
        args.graph.cache_dir().as_deref(),
    )?;
    let setting = StepSetting {
        graph: &graph,
        grid: &dataset.grid,
        model,
        batch_size: train_cfg.batch_size,
        patch_halo: train_cfg.patch_halo,
        on_cpu,
        rollout_steps: train_cfg.max_rollout_steps(),
        patch_ranks: 1,
    };
    let fit = fit_budget(budget, 64, &setting)?;
    let row = fit.chosen_or_refuse("")?;
    let t = row.techniques;
    tracing::info!(
        "--memory-budget {}: {t} (predicted peak {})",
        human_bytes(budget),
        human_bytes(row.prediction.total)
    );
    train_cfg.patches = t.patches;
    train_cfg.checkpointing = t.checkpointing;
    if t.checkpointing {
        train_cfg.checkpoint_every = 1;
    }
    train_cfg.mixed_precision = t.precision;
    Ok(())
}
