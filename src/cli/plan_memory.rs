//! `meshcast plan-memory`: predicted peak memory of a training step, and the cheapest
//! configuration within a budget.

use clap::Args;

use super::choices::choice;
use super::{DataArgs, GraphArgs};
use crate::graph::load_or_build;
use crate::memory::planner::{self, fit_budget, PlanRow, StepSetting, Techniques};
use crate::model::{MixedPrecision, ModelConfig};

#[derive(Debug, Args)]
pub struct PlanMemoryArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Plan for a regular global grid of this spacing (degrees) instead of data files
    /// (1 gives 180 x 360 = 64,800 grid nodes).
    #[arg(long, value_name = "DEG", conflicts_with_all = ["files", "vars", "config"])]
    pub global_grid: Option<f64>,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Channels per state (data files: counted from them).
    #[arg(long, default_value_t = 5)]
    pub channels: usize,
    #[arg(long, default_value_t = 2)]
    pub input_steps: usize,
    #[arg(long, default_value_t = 128)]
    pub latent_size: usize,
    #[arg(long, default_value_t = 8)]
    pub num_gnn_layers: usize,
    #[arg(long, default_value_t = 1)]
    pub mlp_hidden_layers: usize,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Autoregressive steps per sample of rollout training (each recomputed in the
    /// backward pass: the step's activations stay those of one step).
    #[arg(long, default_value_t = 1)]
    pub rollout_steps: usize,
    /// Without --memory-budget: the configuration to predict.
    #[arg(long, default_value_t = 1)]
    pub patches: usize,
    /// Processes training together (`mpirun -np N`): the prediction is per rank. Without
    /// patches each rank takes --batch-size samples of a global batch of N x that; with
    /// patches every rank takes the whole batch and P/N of the patches.
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    #[arg(long, default_value_t = crate::graph::patches::DEFAULT_PATCH_HALO_DEG)]
    pub patch_halo: f64,
    #[arg(long)]
    pub checkpointing: bool,
    #[arg(long, value_parser = choice::<MixedPrecision>(), default_value_t = MixedPrecision::Off)]
    pub mixed_precision: MixedPrecision,
    /// Choose the cheapest configuration whose predicted peak fits (e.g. 4GB, 3.5GiB):
    /// fewest patches, then checkpointing, then bf16.
    #[arg(long, value_parser = planner::parse_bytes)]
    pub memory_budget: Option<u64>,
    /// The most patches the budget search tries (powers of two).
    #[arg(long, default_value_t = 64)]
    pub max_patches: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Predicts for `device` (the global `--device`): the CPU runs f32 on fused kernels.
pub fn run(args: PlanMemoryArgs, device: candle_core::Device) -> anyhow::Result<()> {
    let (grid, valid, data_channels) =
        super::describe_graph::grid_of(&args.data, args.global_grid)?;
    let channels = data_channels.unwrap_or(args.channels);
    check_sizes(&args)?;
    let options = args.graph.options(&grid);
    let (graph, _, _) = load_or_build(&grid, &valid, &options, args.graph.cache_dir().as_deref())?;
    let model = planned_model(&args, channels)?;
    let setting = StepSetting {
        graph: &graph,
        grid: &grid,
        model: &model,
        batch_size: args.batch_size,
        patch_halo: args.patch_halo,
        on_cpu: device.is_cpu(),
        rollout_steps: args.rollout_steps,
        patch_ranks: args.ranks,
    };
    // Without a budget, "fits" means this machine's free memory now.
    let available = crate::memory::available_on(&device);
    let fit = match args.memory_budget {
        Some(budget) => Some(fit_budget(budget, args.max_patches, &setting)?),
        None => None,
    };
    let rows = match &fit {
        Some(fit) => fit.rows.clone(),
        None => vec![as_configured(&args, &setting, available.as_ref())?],
    };
    let chosen = fit.as_ref().map_or(Some(0), |f| f.chosen);
    if args.json {
        let report = serde_json::json!({
            "graph": planner::GraphSizes::of(&graph), "budget": args.memory_budget,
            "available_bytes": available.as_ref().map(|a| a.bytes),
            "ranks": args.ranks, "per_rank": true,
            "exchange_bytes": exchange_bytes(&model, args.ranks),
            "tried": rows, "chosen": chosen.map(|i| &rows[i])});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} grid nodes, mesh level {}, latent {}, {} layers, batch {}",
            graph.grid_nodes.len(),
            options.mesh_level,
            args.latent_size,
            args.num_gnn_layers,
            args.batch_size
        );
        if args.ranks > 1 {
            println!("{}", ranks_line(&args, &model));
        }
        print!("{}", table(&rows));
        if let (None, Some(a)) = (args.memory_budget, &available) {
            println!(
                "this machine: {} {} now: {}",
                gb(a.bytes),
                a.source,
                if rows[0].fits { "fits" } else { "does not fit" }
            );
        }
    }
    if let Some(fit) = &fit {
        let row = fit.chosen_or_refuse(", or allow more --max-patches")?;
        let t = row.techniques;
        if !args.json {
            println!(
                "chosen: {t} (predicted peak {} of {}): train-model {}",
                gb(row.prediction.total),
                gb(fit.budget),
                t.flags()
            );
        }
    }
    Ok(())
}

/// The model of the flags, for data of `channels` (with every forcing).
fn planned_model(args: &PlanMemoryArgs, channels: usize) -> anyhow::Result<ModelConfig> {
    let model = ModelConfig {
        latent_size: args.latent_size,
        num_gnn_layers: args.num_gnn_layers,
        mlp_hidden_layers: args.mlp_hidden_layers,
        ..Default::default()
    }
    .resolved(f64::INFINITY)
    .for_data(args.input_steps, channels, 0);
    model.validate()?;
    Ok(model)
}

/// Sizes no machine could plan for are refused (the model's own bounds in `run`).
fn check_sizes(args: &PlanMemoryArgs) -> anyhow::Result<()> {
    let max_count = crate::train::config::MAX_COUNT;
    if !(1..=max_count).contains(&args.batch_size)
        || !(1..=crate::train::config::MAX_PATCHES).contains(&args.patches)
        || !(1..=max_count).contains(&args.ranks)
    {
        crate::bail_input!(
            "--batch-size and --ranks must be between 1 and {max_count}, --patches between 1 and {}",
            crate::train::config::MAX_PATCHES
        );
    }
    crate::data::WindowSpec::lead_spaced(args.input_steps, 1).validate()?;
    let max = crate::train::config::MAX_ROLLOUT_STEPS;
    if !(1..=max).contains(&args.rollout_steps) {
        crate::bail_input!(
            "--rollout-steps {}: must be between 1 and {max}",
            args.rollout_steps
        );
    }
    Ok(())
}

/// The prediction for the techniques given as flags; "fits" is against `available`.
fn as_configured(
    args: &PlanMemoryArgs,
    setting: &StepSetting,
    available: Option<&crate::memory::Available>,
) -> anyhow::Result<PlanRow> {
    let techniques = Techniques {
        patches: args.patches,
        checkpointing: args.checkpointing,
        precision: args.mixed_precision,
    };
    let prediction = planner::predict(&setting.shape(techniques)?);
    Ok(PlanRow {
        techniques,
        prediction,
        fits: available.is_none_or(|a| prediction.total <= a.bytes),
    })
}

/// Bytes the gradient all-reduce holds after the backward pass, when the activations
/// are gone: the packed gradients, the copy MPI sends from, the unpacked sums.
fn exchange_bytes(model: &ModelConfig, ranks: usize) -> u64 {
    match ranks {
        1 => 0,
        _ => 3 * 4 * crate::memory::planner::parameter_count(model) as u64,
    }
}

/// What each of several ranks takes, and what the all-reduce adds.
fn ranks_line(args: &PlanMemoryArgs, model: &ModelConfig) -> String {
    let work = match args.patches {
        1 => format!(
            "each {} samples of a global batch of {}",
            args.batch_size,
            args.batch_size * args.ranks
        ),
        p => format!(
            "each the whole batch of {} and {} of the {p} patches (patch parallelism)",
            args.batch_size,
            p.div_ceil(args.ranks)
        ),
    };
    format!(
        "per rank of {} ranks, {work}; the gradient all-reduce holds {} after the backward pass",
        args.ranks,
        gb(exchange_bytes(model, args.ranks))
    )
}

fn gb(bytes: u64) -> String {
    crate::memory::planner::human_bytes(bytes)
}

fn table(rows: &[PlanRow]) -> String {
    let mb = |b: u64| format!("{:.0}", b as f64 / 1e6);
    let mut out = vec![vec![
        "patches".to_string(),
        "ckpt".into(),
        "precision".into(),
        "weights+adam+grads MB".into(),
        "graph MB".into(),
        "activations MB".into(),
        "peak MB".into(),
        "fits".into(),
    ]];
    for r in rows {
        let p = &r.prediction;
        out.push(vec![
            r.techniques.patches.to_string(),
            if r.techniques.checkpointing {
                "yes"
            } else {
                "no"
            }
            .into(),
            r.techniques.precision.to_string(),
            mb(p.weights + p.optimizer_state + p.gradients),
            mb(p.graph),
            mb(p.activations),
            mb(p.total),
            if r.fits { "yes" } else { "no" }.into(),
        ]);
    }
    crate::table::render_table(&out)
}
