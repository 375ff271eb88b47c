//! `meshcast train-model`: flags over a config (TOML/JSON) over the built-in defaults.
//! With no data and no config it runs the embedded demo (`configs/demo.toml`): it
//! generates the synthetic 5-degree dataset into the output directory and trains on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;

use super::choices::choice;
use super::graph_args::GraphTable;
use super::{DataArgs, GraphArgs, WindowArgs};
use crate::config::load_value;
use crate::data::generate::{generate, GenerateOptions};
use crate::data::{Dataset, SplitFractions, WindowSpec};
use crate::model::{Batching, ModelConfig};
use crate::train::config::{RunConfig, TrainConfig};
use crate::train::trainer::{best_checkpoint, train, TrainOptions};

/// The embedded default run.
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Where run.json, stats.json, metrics.jsonl and checkpoints/ go [default: runs/demo, or runs/train with data].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Continue the run in --output-dir from checkpoints/last.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace a run already in --output-dir.
    #[arg(long)]
    pub overwrite: bool,
    /// Samples per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (after linear warm-up, before cosine decay).
    #[arg(long, allow_hyphen_values = true)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub num_epochs: Option<usize>,
    /// Stop after this many optimizer steps (the schedule still spans --num-epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Clip gradients to this global L2 norm (0 disables).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Micro-batches accumulated per optimizer step.
    #[arg(long)]
    pub grad_accum_steps: Option<usize>,
    /// Seed of parameter initialisation and sample order.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Read batches ahead in a background thread (default).
    #[arg(long, overrides_with = "no_prefetch")]
    pub use_prefetch: bool,
    /// Read batches in line with the computation.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Batches the background reader keeps ready.
    #[arg(long)]
    pub prefetch_buffer_size: Option<usize>,
    /// Width of every latent vector (node and edge embeddings, MLP hidden layers).
    #[arg(long)]
    pub latent_size: Option<usize>,
    /// Interaction-network layers of the processor on the multi-mesh.
    #[arg(long)]
    pub num_gnn_layers: Option<usize>,
    /// Hidden layers per MLP.
    #[arg(long)]
    pub mlp_hidden_layers: Option<usize>,
    /// `shared`: one graph for the whole batch; `replicated`: the PyG-style block-diagonal baseline.
    #[arg(long, value_parser = choice::<Batching>())]
    pub batching: Option<Batching>,
    /// Gradient checkpointing: keep only processor-segment boundaries in the forward pass
    /// and recompute each segment in backward (less activation memory, more compute).
    #[arg(long)]
    pub checkpointing: bool,
    /// Processor blocks per checkpointed segment (implies --checkpointing).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Train on this many spatial patches one at a time (latitude bands or tiles), gradients
    /// summed before each optimizer step; the loss counts owned nodes only.
    #[arg(long)]
    pub patches: Option<usize>,
    /// Halo around each patch in degrees: context nodes that send messages but own no loss.
    #[arg(long)]
    pub patch_halo: Option<f64>,
    /// Run activations, matmuls and message passing in bf16 or f16 (weights and optimizer
    /// stay f32; f16 scales the loss dynamically and skips steps whose gradients overflow).
    #[arg(long, value_parser = choice::<crate::model::MixedPrecision>())]
    pub mixed_precision: Option<crate::model::MixedPrecision>,
    /// f16: the loss scaler's starting scale (halved on overflow, doubled after
    /// --loss-scale-growth-interval clean steps).
    #[arg(long)]
    pub initial_loss_scale: Option<f64>,
    /// f16: clean optimizer steps before the loss scale doubles.
    #[arg(long)]
    pub loss_scale_growth_interval: Option<usize>,
    /// Choose patches, checkpointing and precision so that the predicted peak of a
    /// training step fits this budget (e.g. 4GB): the cheapest configuration that does
    /// (fewest patches, then checkpointing, then bf16), as `meshcast plan-memory` shows.
    /// Freed memory then goes back to the system, so the resident size stays near the
    /// counted peak (a little slower on the CPU).
    #[arg(long, value_parser = crate::memory::planner::parse_bytes)]
    pub memory_budget: Option<u64>,
    /// Gathers and edge -> node sums: `csr` (segment sums by receiver and by sender, CPU and
    /// CUDA kernels; the default) or `index-add` (candle's index_select/index_add).
    #[arg(long, value_parser = choice::<crate::model::Aggregation>())]
    pub aggregation: Option<crate::model::Aggregation>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The config file's tables besides [data].
#[derive(Debug, Default, Deserialize)]
struct ConfigTables {
    #[serde(default)]
    window: Option<WindowSpec>,
    #[serde(default)]
    split: Option<SplitFractions>,
    #[serde(default)]
    graph: Option<GraphTable>,
    #[serde(default)]
    model: Option<ModelConfig>,
    #[serde(default)]
    train: Option<TrainConfig>,
    #[serde(default)]
    generate: Option<GenerateTable>,
}

/// `[generate]`: data the run makes for itself if its file is missing (the demo).
#[derive(Debug, Deserialize)]
struct GenerateTable {
    /// File name, inside the output directory.
    output: PathBuf,
    #[serde(flatten)]
    options: GenerateOptions,
}

fn parse_tables(text: &str, path: &Path) -> anyhow::Result<ConfigTables> {
    let value = if path.as_os_str().is_empty() {
        serde_json::to_value(toml::from_str::<toml::Value>(text)?)?
    } else {
        load_value(path)?
    };
    let mut tables = serde_json::Map::new();
    for key in ["window", "split", "graph", "model", "train", "generate"] {
        if let Some(v) = value.get(key) {
            tables.insert(key.into(), v.clone());
        }
    }
    if let Some(unknown) = value.as_object().and_then(|o| {
        o.keys()
            .find(|k| {
                ![
                    "data", "window", "split", "graph", "model", "train", "generate",
                ]
                .contains(&k.as_str())
            })
            .cloned()
    }) {
        crate::bail_input!("{}: unknown table [{unknown}]", path.display());
    }
    serde_json::from_value(serde_json::Value::Object(tables))
        .map_err(|e| crate::error::InputError::file(path, format!("{e}")).into())
}

/// The run the flags (over a config, over the embedded demo) describe, and its output directory.
/// The run the flags (and config) describe; a memory budget is fitted for a step on the
/// CPU when `on_cpu`.
fn run_from_flags(args: &TrainArgs, on_cpu: bool) -> anyhow::Result<(RunConfig, PathBuf)> {
    // Data: the config's [data] table overridden by flags; neither means the embedded demo.
    let mut data = args.data.to_spec()?;
    let config = args.data.config_path()?;
    let tables = match &config {
        Some(path) => parse_tables("", path)?,
        None if data.is_empty() => parse_tables(DEMO_CONFIG, Path::new(""))?,
        None => ConfigTables::default(),
    };
    let default_dir = if config.is_none() && data.is_empty() {
        "runs/demo"
    } else {
        "runs/train"
    };
    let output_dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_dir));
    // A [generate] table makes the data only when none is given.
    if let (true, Some(gen)) = (data.is_empty(), &tables.generate) {
        let path = output_dir.join(&gen.output);
        if !path.exists() {
            std::fs::create_dir_all(&output_dir)?;
            tracing::info!(
                "generating {} (the config's [generate] table)",
                path.display()
            );
            generate(&path, &gen.options, "meshcast train-model [generate]")?;
        }
        data.files = vec![path];
    }

    let window = args.window.spec(tables.window.unwrap_or_default());
    let split = args.window.fractions(tables.split.unwrap_or_default());
    let mut train_cfg = tables.train.unwrap_or_default();
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { train_cfg.$field = v; } )* };
    }
    set!(
        batch_size,
        learning_rate,
        num_epochs,
        warmup_steps,
        grad_clip,
        grad_accum_steps,
        seed,
        prefetch_buffer_size,
        patches,
        patch_halo,
        mixed_precision,
        initial_loss_scale,
        loss_scale_growth_interval
    );
    if args.max_steps.is_some() {
        train_cfg.max_steps = args.max_steps;
    }
    if args.checkpointing || args.checkpoint_every.is_some() {
        train_cfg.checkpointing = true;
    }
    if let Some(k) = args.checkpoint_every {
        train_cfg.checkpoint_every = k;
    }
    if args.no_prefetch {
        train_cfg.use_prefetch = false;
    } else if args.use_prefetch {
        train_cfg.use_prefetch = true;
    }
    train_cfg.validate()?;

    // The data decide the grid (mesh level default) and the channels (model inputs/outputs).
    let dataset = Dataset::open(&data)?;
    let graph = args
        .graph
        .options_over(tables.graph.unwrap_or_default(), &dataset.grid);
    let mut model = tables.model.unwrap_or_default();
    if let Some(v) = args.latent_size {
        model.latent_size = v;
    }
    if let Some(v) = args.num_gnn_layers {
        model.num_gnn_layers = v;
    }
    if let Some(v) = args.mlp_hidden_layers {
        model.mlp_hidden_layers = v;
    }
    if let Some(v) = args.batching {
        model.batching = v;
    }
    if let Some(v) = args.aggregation {
        model.aggregation = v;
    }
    let model = model.for_data(window.input_steps, dataset.num_channels());
    if let Some(budget) = args.memory_budget {
        fit_budget(
            budget,
            &dataset,
            &graph,
            &model,
            &mut train_cfg,
            args,
            on_cpu,
        )?;
    }
    let run = RunConfig {
        data,
        window,
        split,
        graph,
        model,
        train: train_cfg,
    };
    Ok((run, output_dir))
}

/// Sets patches, checkpointing and precision to the cheapest configuration whose
/// predicted peak fits `budget`, or refuses the run when none does.
fn fit_budget(
    budget: u64,
    dataset: &Dataset,
    options: &crate::graph::GraphOptions,
    model: &ModelConfig,
    train_cfg: &mut TrainConfig,
    args: &TrainArgs,
    on_cpu: bool,
) -> anyhow::Result<()> {
    use crate::memory::planner::{fit_budget, human_bytes, StepSetting};
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
    };
    let fit = fit_budget(budget, 64, &setting)?;
    let row = fit.chosen_or_refuse()?;
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

/// `--resume` with no data or config flags continues the run saved in the output
/// directory (run.json); only --num-epochs and --max-steps may change it.
fn saved_run(args: &TrainArgs) -> anyhow::Result<Option<(RunConfig, PathBuf)>> {
    if !args.resume || !args.data.to_spec()?.is_empty() || args.data.config_path()?.is_some() {
        return Ok(None);
    }
    let dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/demo"));
    let path = dir.join("run.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| crate::error::InputError::file(&path, format!("no run to resume ({e})")))?;
    let mut run: RunConfig = serde_json::from_str(&text)
        .map_err(|e| crate::error::InputError::file(&path, format!("not a meshcast run: {e}")))?;
    if let Some(n) = args.num_epochs {
        run.train.num_epochs = n;
    }
    // --max-steps stops one invocation; a resumed run goes on unless given again.
    run.train.max_steps = args.max_steps;
    Ok(Some((run, dir)))
}

pub fn run(args: TrainArgs, device: candle_core::Device) -> anyhow::Result<()> {
    let (run, output_dir) = match saved_run(&args)? {
        Some(saved) => saved,
        None => run_from_flags(&args, device.is_cpu())?,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // A second Ctrl-C ends the process at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now)");
    });
    let opts = TrainOptions {
        output_dir: output_dir.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        graph_cache: args.graph.cache_dir(),
        device,
        stop,
        progress: !args.no_progress,
    };
    let summary = train(&run, &opts)?;
    let gb = |b: usize| format!("{:.2} GB", b as f64 / 1e9);
    let peak_memory = |host: Option<usize>, device: Option<usize>| match (host, device) {
        (host, Some(d)) => format!("{} on the GPU, {} host", gb(d), host.map_or("-".into(), gb)),
        (Some(h), None) => gb(h),
        (None, None) => "-".into(),
    };
    println!(
        "trained {} steps ({} epochs{}{}) in {:.1} s, {:.2} samples/s, {} parameters, peak memory {}: train loss {}, validation loss {}, best {}; checkpoints in {}",
        summary.steps,
        summary.epochs_completed,
        if summary.interrupted { ", interrupted" } else { "" },
        match summary.skipped_steps {
            0 => String::new(),
            n => format!(", {n} steps skipped on f16 overflow"),
        },
        summary.seconds,
        summary.samples_per_second,
        summary.parameters,
        peak_memory(summary.peak_host_bytes, summary.peak_device_bytes),
        fmt_opt(summary.train_loss),
        fmt_opt(summary.val_loss),
        fmt_opt(summary.best_val_loss),
        best_checkpoint(&output_dir).parent().map(|p| p.display().to_string()).unwrap_or_default()
    );
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.5}"))
}
