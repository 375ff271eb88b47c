//! The run a `train-model` invocation describes: flags over a config's tables over
//! the built-in defaults (or the saved run.json of `--resume`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::budget::fit_budget;
use super::TrainArgs;
use crate::cli::graph_args::GraphTable;
use crate::config::load_value;
use crate::data::generate::{generate, GenerateOptions};
use crate::data::{Dataset, Split, SplitSpec, Splits, WindowSpec};
use crate::model::ModelConfig;
use crate::train::config::{RunConfig, TrainConfig};

/// The embedded default run.
const DEMO_CONFIG: &str = include_str!("../../../configs/demo.toml");

/// The config file's tables besides [data].
#[derive(Debug, Default, Deserialize)]
struct ConfigTables {
    #[serde(default)]
    window: Option<WindowSpec>,
    #[serde(default)]
    split: Option<SplitSpec>,
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

/// The run the flags (over a config, over the embedded demo) describe, and its output
/// directory; a memory budget is fitted for a step on the CPU when `on_cpu`.
pub(super) fn run_from_flags(
    args: &TrainArgs,
    on_cpu: bool,
) -> anyhow::Result<(RunConfig, PathBuf)> {
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
    if data.is_empty() {
        if let Some(gen) = &tables.generate {
            data.files = vec![generated_data(gen, &output_dir)?];
        }
    }
    let window = args.window.spec(tables.window.unwrap_or_default());
    window.validate()?;
    let split = args.window.split(tables.split.unwrap_or_default())?;
    let mut train_cfg = train_settings(args, tables.train.unwrap_or_default())?;
    // The data decide the grid (mesh level default) and the channels (model inputs/outputs).
    let dataset = Dataset::open(&data)?;
    let graph = args
        .graph
        .options_over(tables.graph.unwrap_or_default(), &dataset.grid);
    let model = model_settings(args, tables.model.unwrap_or_default())
        .resolved(training_days(&dataset, &split, window))
        .for_data(
            window.input_steps,
            dataset.num_channels(),
            dataset.statics.count(),
        );
    model.validate()?;
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
        data: data.absolute(),
        window,
        split,
        graph,
        model,
        train: train_cfg,
    };
    Ok((run, output_dir))
}

/// The file of a `[generate]` table (the demo), written into `output_dir` unless it
/// is there already.
fn generated_data(gen: &GenerateTable, output_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = output_dir.join(&gen.output);
    if !path.exists() {
        std::fs::create_dir_all(output_dir)?;
        tracing::info!(
            "generating {} (the config's [generate] table)",
            path.display()
        );
        generate(&path, &gen.options, "meshcast train-model [generate]")?;
    }
    Ok(path)
}

/// The `[train]` table overridden by flags, validated.
fn train_settings(args: &TrainArgs, mut train_cfg: TrainConfig) -> anyhow::Result<TrainConfig> {
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
        loss_scale_growth_interval,
        rollout_steps
    );
    if args.rollout_schedule.is_some() {
        train_cfg.rollout_schedule = args.rollout_schedule;
    }
    if let Some(path) = &args.init_from {
        train_cfg.init_from = Some(std::path::absolute(path)?);
    }
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
    Ok(train_cfg)
}

/// The `[model]` table overridden by flags.
fn model_settings(args: &TrainArgs, mut model: ModelConfig) -> ModelConfig {
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { model.$field = v; } )* };
    }
    set!(
        latent_size,
        num_gnn_layers,
        mlp_hidden_layers,
        batching,
        aggregation
    );
    if let Some(forcings) = &args.forcings {
        model.forcings = Some(forcings.clone());
    }
    model
}

/// Days the training block spans, its periods' spans added up (0 if there is none).
fn training_days(dataset: &Dataset, split: &SplitSpec, window: WindowSpec) -> f64 {
    Splits::new(&dataset.time, split, window)
        .map_or(0, |s| s.seconds_spanned(Split::Train, &dataset.time)) as f64
        / 86_400.0
}

/// The processes the run in `dir` started with (its `last` checkpoint's, which
/// resuming compares against; 1 before runs recorded it): a resumed run keeps them
/// whatever flags it is given, so its global batch stays the same.
pub(super) fn saved_ranks(dir: &std::path::Path) -> Option<usize> {
    let sidecar = crate::train::checkpoint::sidecar(&dir.join("checkpoints"), "last");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sidecar).ok()?).ok()?;
    Some(meta["run"]["train"]["ranks"].as_u64().unwrap_or(1) as usize)
}

/// `--resume` with no data or config flags continues the run saved in the output
/// directory (run.json); only --num-epochs and --max-steps may change it.
pub(super) fn saved_run(args: &TrainArgs) -> anyhow::Result<Option<(RunConfig, PathBuf)>> {
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
