//! `meshcast train-model`: flags over a config (TOML/JSON) over the built-in defaults.
//! With no data and no config it runs the embedded demo (`configs/demo.toml`): it
//! generates the synthetic 5-degree dataset into the output directory and trains on it.
//!
//! `settings`: flags merged over the config into a run; `budget`: fitting the memory
//! techniques to `--memory-budget`; this file: the flags, Ctrl-C and the summary.

mod budget;
mod settings;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use clap::Args;

use super::choices::choice;
use super::{DataArgs, GraphArgs, WindowArgs};
use crate::distributed::Collective;
use crate::model::Batching;
use crate::train::config::RolloutSchedule;
use crate::train::trainer::{best_checkpoint, train, TrainOptions};
use settings::{run_from_flags, saved_ranks, saved_run};

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
    #[arg(long, conflicts_with = "no_prefetch")]
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
    /// stay f32; f16 scales the loss dynamically and skips steps whose gradients overflow);
    /// f64: everything, weights and optimizer too, in float64 (a reference run; slow).
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
    /// Forcings computed for every grid node at the input and target times, comma
    /// separated: cos_zenith, toa_radiation (mean over the model step), local_time,
    /// year_progress (sin/cos pairs); `all` or `none`.
    #[arg(long, value_parser = parse_forcings)]
    pub forcings: Option<::std::vec::Vec<crate::data::forcings::Forcing>>,
    /// Train on autoregressive rollouts of K steps: the model's own output is fed back,
    /// the loss averaged over the K steps, gradients through the whole rollout (each
    /// step recomputed in the backward pass, so memory grows by one boundary per step).
    /// With --rollout-schedule, the first epoch's K.
    #[arg(long)]
    pub rollout_steps: Option<usize>,
    /// A rollout curriculum, `every=N,max=M`: one more rollout step every N epochs, up
    /// to M steps (GraphCast fine-tunes up to 12). By default none: the rollout stays at
    /// --rollout-steps.
    #[arg(long, value_parser = RolloutSchedule::parse)]
    pub rollout_schedule: Option<RolloutSchedule>,
    /// Start from the weights and normalisation of another run's checkpoint (its
    /// directory: `best`; or a checkpoint's .json), with a fresh optimizer and schedule:
    /// fine-tuning, e.g. a one-step model on rollouts. The model and channels must match.
    #[arg(long, value_name = "RUN_DIR|CHECKPOINT.json")]
    pub init_from: Option<PathBuf>,
    /// Save checkpoints/last every N optimizer steps (`500`) or every so often (`30m`,
    /// `2h`, `90s`), besides the end of every epoch; a killed run loses at most this much.
    #[arg(long, value_parser = crate::train::checkpoint::CheckpointInterval::parse)]
    pub checkpoint_interval: Option<crate::train::checkpoint::CheckpointInterval>,
    /// Run even when the memory planner predicts a peak above the memory free on the
    /// device (by default such a run is refused before its first step, with the
    /// configuration that would fit).
    #[arg(long)]
    pub skip_memory_check: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// At the end, draw the loss and learning-rate curves to OUTPUT_DIR/training.png
    /// (as `meshcast plot training`).
    #[arg(long)]
    pub plots: bool,
    /// Without a progress bar (--no-progress, or stderr not a terminal, as in a batch
    /// job): log loss, learning rate, samples/s and ETA every this many steps (0: never).
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
    /// Data parallelism: `auto` joins the other processes when mpirun or srun started
    /// several (each takes --batch-size samples of every global batch, gradients summed
    /// over MPI; rank 0 writes the run); `mpi` always initialises MPI; `nccl` (a build
    /// with the `nccl` feature, on GPUs) sums the gradients GPU to GPU; `off` trains alone.
    #[arg(long, default_value = "auto", value_parser = choice::<crate::distributed::Distributed>())]
    pub distributed: crate::distributed::Distributed,
}

pub fn run(
    args: TrainArgs,
    device: candle_core::Device,
    collective: Rc<dyn Collective>,
) -> anyhow::Result<()> {
    // Rank 0 first: it may write the demo's data, which the other ranks then read.
    let resolve = || match saved_run(&args)? {
        Some(saved) => Ok(saved),
        None => run_from_flags(&args, device.is_cpu()),
    };
    let (mut run, output_dir) = match collective.rank() {
        0 => {
            let resolved = resolve();
            collective.barrier();
            resolved?
        }
        _ => {
            collective.barrier();
            resolve()?
        }
    };
    run.train.ranks = match args.resume {
        false => collective.size(),
        true => saved_ranks(&output_dir).unwrap_or(run.train.ranks),
    };
    let writer = collective.rank() == 0;
    let opts = TrainOptions {
        output_dir: output_dir.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        graph_cache: args.graph.cache_dir(),
        device,
        stop: stop_on_signals()?,
        progress: !args.no_progress && writer,
        checkpoint_interval: args.checkpoint_interval,
        memory_check: !args.skip_memory_check,
        log_every: args.log_every,
        collective,
    };
    let summary = train(&run, &opts)?;
    if !writer {
        return Ok(());
    }
    print_summary(&summary, &output_dir);
    if args.plots {
        draw_training_plot(&output_dir);
    }
    // A signal to another rank stops this one too (as SIGTERM, Slurm's).
    let signal = match (opts.stop.load(Ordering::SeqCst), summary.interrupted) {
        (0, true) => signal_hook::consts::SIGTERM,
        (signal, _) => signal,
    };
    match signal {
        0 => Ok(()),
        signal => Err(crate::error::Interrupted {
            signal,
            message: format!(
                "stopped by {} after saving checkpoints/last at step {}: continue with --resume",
                signal_name(signal),
                summary.steps
            ),
        }
        .into()),
    }
}

/// The signal the trainer checks after every step (0 while none came): the first
/// SIGINT (Ctrl-C) or SIGTERM (what Slurm sends before it kills a job) asks it to
/// finish the step and save `last`; a second one ends the process at once.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicI32>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicI32::new(0));
    let flag = stop.clone();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if flag.swap(signal, Ordering::SeqCst) != 0 {
                std::process::exit(128 + signal);
            }
            eprintln!(
                "\n{}: stopping after this step ({} again to quit now)",
                signal_name(signal),
                signal_name(signal)
            );
        }
    });
    Ok(stop)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "SIGINT",
    }
}

/// Appends the built-in value to the help of every flag that falls back to a config's
/// table (so the flag itself has no clap default): `--help` shows the effective default
/// of every flag. The demo's configs/demo.toml sets some of its own.
pub fn show_defaults(cmd: clap::Command) -> clap::Command {
    let (t, m) = (
        crate::train::TrainConfig::default(),
        crate::model::ModelConfig::default(),
    );
    let defaults = [
        ("batch_size", t.batch_size.to_string()),
        ("learning_rate", t.learning_rate.to_string()),
        ("num_epochs", t.num_epochs.to_string()),
        ("warmup_steps", t.warmup_steps.to_string()),
        ("grad_clip", t.grad_clip.to_string()),
        ("grad_accum_steps", t.grad_accum_steps.to_string()),
        ("seed", t.seed.to_string()),
        ("prefetch_buffer_size", t.prefetch_buffer_size.to_string()),
        ("latent_size", m.latent_size.to_string()),
        ("num_gnn_layers", m.num_gnn_layers.to_string()),
        ("mlp_hidden_layers", m.mlp_hidden_layers.to_string()),
        ("batching", m.batching.to_string()),
        ("checkpoint_every", t.checkpoint_every.to_string()),
        ("patches", t.patches.to_string()),
        ("patch_halo", t.patch_halo.to_string()),
        ("mixed_precision", t.mixed_precision.to_string()),
        ("initial_loss_scale", t.initial_loss_scale.to_string()),
        (
            "loss_scale_growth_interval",
            t.loss_scale_growth_interval.to_string(),
        ),
        ("aggregation", m.aggregation.to_string()),
        ("forcings", "all".to_string()),
        ("rollout_steps", t.rollout_steps.to_string()),
    ];
    defaults.into_iter().fold(cmd, |cmd, (id, value)| {
        cmd.mut_arg(id, |arg| {
            let with_default =
                |help: &clap::builder::StyledStr| format!("{help} [default: {value}]");
            let long = arg.get_long_help().map(with_default);
            let arg = match arg.get_help().map(with_default) {
                Some(help) => arg.help(help),
                None => arg.help(format!("[default: {value}]")),
            };
            match long {
                Some(long) => arg.long_help(long),
                None => arg,
            }
        })
    })
}

/// The one line a finished run prints.
/// `training.png` in the run directory; a picture that cannot be drawn is a warning,
/// never the loss of a finished run.
fn draw_training_plot(output_dir: &std::path::Path) {
    let out = output_dir.join("training.png");
    match crate::plot::plot_training(output_dir, &out) {
        Ok(()) => tracing::info!("training curves drawn to {}", out.display()),
        Err(e) => tracing::warn!("training curves not drawn: {e:#}"),
    }
}

fn print_summary(summary: &crate::train::TrainSummary, output_dir: &std::path::Path) {
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
        best_checkpoint(output_dir).parent().map(|p| p.display().to_string()).unwrap_or_default()
    );
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.5}"))
}

fn parse_forcings(text: &str) -> Result<Vec<crate::data::forcings::Forcing>, String> {
    crate::data::forcings::Forcing::parse_list(text)
}
