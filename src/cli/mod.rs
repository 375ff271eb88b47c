//! The `meshcast` command line: parses flags and dispatches to the library.
//! Nothing here computes; each subcommand module maps its flags onto library calls.

mod bench;
mod choices;
mod clear_cache;
mod data_args;
mod describe_graph;
mod eval;
mod export;
mod generate;
mod graph_args;
mod inspect;
mod plan_memory;
mod plot;
mod train;

use std::process::ExitCode;
use std::rc::Rc;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};

use crate::device::DeviceSpec;
use crate::distributed::{self, Collective};
use crate::memory::FreedPages;

pub use data_args::{DataArgs, WindowArgs};
pub use graph_args::GraphArgs;

#[derive(Debug, Parser)]
#[command(
    name = "meshcast",
    version,
    about = "Train, evaluate and benchmark GraphCast-style graph weather models on NetCDF data",
    long_about = "meshcast trains, evaluates and benchmarks graph neural network weather models \
                  (grid -> mesh encoder, multi-mesh processor, mesh -> grid decoder) on NetCDF data, \
                  on the CPU or on NVIDIA GPUs.\n\nLogging follows RUST_LOG when set (e.g. RUST_LOG=meshcast=debug)."
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Compute device: cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, global = true, default_value = "cpu", env = "MESHCAST_DEVICE")]
    pub device: DeviceSpec,
    /// Let CUDA run f32 matmuls on TF32 tensor cores (10-bit mantissa inputs, f32
    /// accumulation): faster, about 1e-3 relative error per product. Off by default, as
    /// in PyTorch.
    #[arg(long, global = true, env = "MESHCAST_TF32", value_parser = BoolishValueParser::new())]
    pub tf32: bool,
    /// Run meshcast's fused ops on CUDA (the dense layer and residual + LayerNorm keep
    /// only their inputs for the backward pass: less activation memory). Off by default
    /// until a GPU run has verified them; the CPU always runs its fused kernels.
    #[arg(long, global = true, env = "MESHCAST_CUDA_FUSED_OPS", value_parser = BoolishValueParser::new())]
    pub cuda_fused_ops: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what the loader finds in NetCDF files: grid, time axis, variables, fill fraction, statistics.
    InspectData(inspect::InspectArgs),
    /// Write a synthetic CF-NetCDF dataset (Rossby-Haurwitz wave dynamics) for demos and benchmarks.
    GenerateData(generate::GenerateArgs),
    /// Train a GraphCast-style model (encoder, multi-mesh processor, decoder) on NetCDF data.
    /// With no data and no config: the embedded demo on synthetic 5-degree data.
    TrainModel(Box<train::TrainArgs>),
    /// Score a checkpoint on the test block: RMSE, bias and ACC per variable and lead time,
    /// against persistence and climatology.
    Eval(Box<eval::EvalArgs>),
    /// Roll a checkpoint out from an initial time and write the forecast as CF-NetCDF.
    Forecast(Box<eval::ForecastArgs>),
    /// Build (or load from the cache) the mesh graphs for a grid and describe them:
    /// node and edge counts, degrees, bytes per format, build or load time, patches.
    DescribeGraph(describe_graph::DescribeGraphArgs),
    /// Time and measure the memory of training steps per graph format (COO replicated,
    /// COO shared, CSR shared), grid and batch size, verified against each other;
    /// writes a JSON report.
    BenchmarkGraphFormat(Box<bench::BenchmarkGraphFormatArgs>),
    /// Compare two benchmark reports case by case: time, memory and throughput ratios;
    /// exit 1 on regressions.
    CompareBenchmarks(bench::CompareBenchmarksArgs),
    /// Report the CPU, the candle backends and CUDA devices, run a matmul and a
    /// message-passing step on each device, and recommend a configuration for its memory.
    CheckGpu(bench::CheckGpuArgs),
    /// Predict the peak memory of a training step from grid, mesh, model, batch,
    /// precision, checkpointing and patches; with --memory-budget, choose the cheapest
    /// configuration that fits.
    PlanMemory(Box<plan_memory::PlanMemoryArgs>),
    /// Write what an independent implementation needs to recompute one training step:
    /// the graph, a batch, and meshcast's outputs, loss, gradients and AdamW update
    /// (from a checkpoint, or a benchmark case's synthetic model); see
    /// scripts/pytorch_reference.py.
    ExportReference(Box<export::ExportReferenceArgs>),
    /// Remove the cached mesh graphs (rebuilt when next needed).
    ClearGraphCache(clear_cache::ClearGraphCacheArgs),
    /// Pictures: training curves of a run, eval scores against lead time (PNG or SVG).
    Plot(plot::PlotArgs),
}

/// Entry point of the binary: parse, set up logging, run, map errors to exit codes
/// (2 for bad input, 1 for anything else) with one line on stderr.
pub fn main() -> ExitCode {
    let command = <Cli as clap::CommandFactory>::command()
        .mut_subcommand("train-model", train::show_defaults);
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&command.get_matches())
        .unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::TrainModel(_)) {
        quiet_on_closed_pipe();
    }
    // Before any other thread exists: only a run under a memory budget gives freed
    // pages back, so that its resident size stays near the budgeted peak.
    crate::memory::set_freed_pages(match &cli.command {
        Command::TrainModel(args) if args.memory_budget.is_some() => FreedPages::Return,
        _ => FreedPages::Keep,
    });
    // Before logging (which names the rank) and before any other thread exists.
    let collective = match &cli.command {
        Command::TrainModel(args) => distributed::connect(args.distributed),
        Command::Eval(args) => distributed::connect(args.distributed),
        _ => distributed::alone(),
    };
    let collective = match collective {
        Ok(c) => c,
        Err(err) => return report(&err, None),
    };
    init_logging(cli.verbose, cli.quiet, collective.as_ref());
    if collective.size() > 1 {
        abort_on_panic();
    }
    let _rank = (collective.size() > 1)
        .then(|| tracing::info_span!("rank", r = collective.rank()).entered());
    // Opened once here so a device that cannot be had fails before any work.
    let cuda = crate::device::CudaOptions {
        tf32: cli.tf32,
        fused_ops: cli.cuda_fused_ops,
    };
    let result = cli.device.open(cuda).and_then(|device| {
        tracing::debug!("device: {device:?}");
        if collective.transport() == "nccl" && device.is_cpu() {
            crate::bail_input!(
                "--distributed nccl sums the gradients on GPUs: it needs --device cuda"
            );
        }
        dispatch(cli.command, device, collective.clone())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err, Some(collective.as_ref())),
    }
}

/// A panic on one rank of several ends the process at once (the launcher then ends
/// the others): unwinding would wait in MPI_Finalize while the others wait for it.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// The error on one line and its exit code (2 for bad input, 128 + signal when
/// stopped by one). A failure on one rank of several ends them all (MPI_Abort with
/// the code), so none waits for it in a collective; ranks stopped by a signal stop
/// together and exit normally.
fn report(err: &anyhow::Error, collective: Option<&dyn Collective>) -> ExitCode {
    let ranks = collective.filter(|c| c.size() > 1);
    match ranks {
        Some(c) => eprintln!("error (rank {}): {}", c.rank(), one_line(err)),
        None => eprintln!("error: {}", one_line(err)),
    }
    if let Some(stop) = err.downcast_ref::<crate::error::Interrupted>() {
        return ExitCode::from((128 + stop.signal).clamp(0, 255) as u8);
    }
    let code = if crate::error::is_input_error(err) {
        2
    } else {
        1
    };
    if let Some(c) = ranks {
        c.abort(code);
    }
    ExitCode::from(code as u8)
}

/// `meshcast describe-graph --json | head -1`: a reader that stops early ends the
/// process quietly, as it ends `cat` (Rust ignores SIGPIPE, so printing would panic).
/// Not for training: a closed pipe must not cost a run its last checkpoint.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn dispatch(
    command: Command,
    device: candle_core::Device,
    collective: Rc<dyn Collective>,
) -> anyhow::Result<()> {
    match command {
        Command::TrainModel(args) => train::run(*args, device, collective),
        Command::Eval(args) => eval::run_eval(*args, device, collective.as_ref()),
        Command::Forecast(args) => eval::run_forecast(*args, device),
        Command::InspectData(args) => inspect::run(args),
        Command::GenerateData(args) => generate::run(args),
        Command::DescribeGraph(args) => describe_graph::run(args),
        Command::BenchmarkGraphFormat(args) => bench::run_graph_format(*args, device),
        Command::CompareBenchmarks(args) => bench::run_compare(args),
        Command::CheckGpu(args) => bench::run_check_gpu(args),
        Command::PlanMemory(args) => plan_memory::run(*args, device),
        Command::ExportReference(args) => export::run(*args, device),
        Command::ClearGraphCache(args) => clear_cache::run(args),
        Command::Plot(args) => plot::run(args),
    }
}

/// The error chain on one line, without repeating a cause that a context already quotes.
fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// Logs on stderr; of several ranks, only rank 0 logs below warnings (each line then
/// names its rank).
fn init_logging(verbose: u8, quiet: bool, collective: &dyn Collective) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        _ if collective.rank() > 0 => "warn",
        (false, 0) => "warn,meshcast=info",
        (false, 1) => "info,meshcast=debug",
        _ => "debug,meshcast=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Batch jobs read these logs from files: a timestamp on every line, and colour
    // codes only on a terminal.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
