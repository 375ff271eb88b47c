//! `meshcast eval` and `meshcast forecast`.

use std::path::PathBuf;

use clap::Args;

use super::{DataArgs, GraphArgs};
use crate::eval::{
    evaluate, find_times, forecast, load, EvalPeriod, EvalReport, ForecastRequest, Loaded,
    ScoredSplit,
};

/// Which checkpoint, on which data, run how: shared by `eval` and `forecast`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// A run directory (from train-model --output-dir), its checkpoints/ directory, or a checkpoint .json.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which checkpoint of a directory: best (lowest validation loss) or last.
    #[arg(long, default_value = "best")]
    pub which: String,
    /// Run the model patch by patch (latitude bands or tiles) to bound memory.
    #[arg(long)]
    pub patches: Option<usize>,
    /// Halo around each patch, degrees [default: 10].
    #[arg(long, requires = "patches")]
    pub patch_halo: Option<f64>,
    /// Data to run on (default: the checkpoint's data).
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
}

impl CheckpointArgs {
    /// The checkpoint's model on its data, for `batch_size` initial times at once, on
    /// `device`, set up together with the other ranks of `collective`.
    fn load(
        &self,
        batch_size: usize,
        on: (&candle_core::Device, &dyn crate::distributed::Collective),
    ) -> anyhow::Result<Loaded> {
        let data = self.data.to_spec()?;
        let patches = self.patches.map(|n| crate::graph::PatchOptions {
            n_patches: n,
            halo_deg: self
                .patch_halo
                .unwrap_or(crate::graph::patches::DEFAULT_PATCH_HALO_DEG),
        });
        load(
            &self.checkpoint,
            &self.which,
            (!data.is_empty()).then_some(data),
            (patches, self.graph.cache_dir().as_deref()),
            batch_size,
            on,
        )
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint; its data's test block is scored (see --split).
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    /// Which forecasts to score: the data's test or validation block, or all of it
    /// (for a file the model never saw, given with --data).
    #[arg(long, value_parser = super::choices::choice::<ScoredSplit>(), default_value = "test")]
    pub split: ScoredSplit,
    /// Score only forecasts that start (first input step) at or after this time.
    #[arg(long, value_name = "YYYY-MM-DD hh:mm")]
    pub start: Option<String>,
    /// Score only forecasts whose last lead is at or before this time (a date alone:
    /// the end of that day).
    #[arg(long, value_name = "YYYY-MM-DD hh:mm")]
    pub end: Option<String>,
    /// Model steps rolled out from each initial time.
    #[arg(long, default_value_t = 4)]
    pub rollout_steps: usize,
    /// Initial times run together.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Also write the report to this file: JSON (a header and flat `records`:
    /// `pandas.DataFrame(json["records"])` is the table), or, for a `.nc` name, NetCDF
    /// in WeatherBench2's results layout (`system, metric, region, lead_time[, level]`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also draw RMSE and ACC against lead (as `meshcast plot scores`) to
    /// RUN_DIR/scores-SPLIT.png, beside the checkpoints scored.
    #[arg(long)]
    pub plots: bool,
    /// Under mpirun or srun (`auto`) each rank rolls out its share of the initial
    /// times, the score sums are added over MPI, rank 0 reports; `off`: each alone.
    #[arg(long, default_value = "auto", value_parser = super::choices::choice::<crate::distributed::Distributed>())]
    pub distributed: crate::distributed::Distributed,
}

pub fn run_eval(
    args: EvalArgs,
    device: candle_core::Device,
    collective: &dyn crate::distributed::Collective,
) -> anyhow::Result<()> {
    if args.rollout_steps == 0 || args.batch_size == 0 {
        crate::bail_input!("--rollout-steps and --batch-size must be at least 1");
    }
    if let Some(path) = &args.output {
        crate::util::check_output_path(path)?;
    }
    let loaded = args
        .checkpoint
        .load(args.batch_size, (&device, collective))?;
    let picture = scores_picture(&loaded.checkpoint, args.split);
    if args.plots {
        crate::util::check_output_path(&picture)?;
    }
    let period = EvalPeriod {
        split: args.split,
        start: args.start,
        end: args.end,
    };
    let report = evaluate(
        &loaded,
        (args.rollout_steps, args.batch_size),
        &period,
        collective,
    )?;
    if collective.rank() > 0 {
        return Ok(());
    }
    if let Some(path) = &args.output {
        write_report(&report, &loaded, path)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if args.plots {
        let json = (loaded.checkpoint.clone(), serde_json::to_value(&report)?);
        crate::plot::plot_score_reports(&[json], &picture)?;
        tracing::info!("scores drawn to {}", picture.display());
    }
    Ok(())
}

/// Writes the report as NetCDF for a `.nc` name, else as JSON.
fn write_report(
    report: &EvalReport,
    loaded: &Loaded,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let netcdf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("nc"));
    if netcdf {
        let region = match loaded.session.dataset.grid.global {
            true => "global",
            false => "region",
        };
        crate::eval::write_scores_netcdf(report, region, path)
    } else {
        crate::util::write_atomic(path, serde_json::to_string_pretty(report)?.as_bytes())
    }
}

/// `RUN_DIR/scores-SPLIT.png` for the checkpoint sidecar `RUN_DIR/checkpoints/NAME.json`
/// (or beside a sidecar kept elsewhere).
fn scores_picture(sidecar: &std::path::Path, split: ScoredSplit) -> PathBuf {
    let dir = sidecar.parent().unwrap_or(std::path::Path::new("."));
    let run_dir = match dir.file_name() {
        Some(name) if name == "checkpoints" => dir.parent().unwrap_or(dir),
        _ => dir,
    };
    run_dir.join(format!("scores-{}.png", split.name()))
}

#[derive(Debug, Args)]
pub struct ForecastArgs {
    /// The checkpoint; its data hold the initial states.
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    /// Initial times, times of the data: `YYYY-MM-DD hh:mm`, a comma-separated list, or
    /// `START..END` (every time of the data from START to END, both included; an end
    /// date alone covers its day); one file holds them all.
    #[arg(long = "init-times", alias = "init-time", value_name = "TIMES")]
    pub init_times: String,
    /// Model steps to roll out from each initial time.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Also write the initial state, at lead 0.
    #[arg(long)]
    pub include_initial: bool,
    /// Output CF-NetCDF file (WeatherBench2 layout, the input's coordinates).
    #[arg(short, long, default_value = "forecast.nc")]
    pub output: PathBuf,
}

pub fn run_forecast(args: ForecastArgs, device: candle_core::Device) -> anyhow::Result<()> {
    if args.steps == 0 {
        crate::bail_input!("--steps must be at least 1");
    }
    crate::util::check_output_path(&args.output)?;
    let loaded = args
        .checkpoint
        .load(1, (&device, &crate::distributed::Single))?;
    let request = ForecastRequest {
        inits: find_times(&loaded.session.dataset, &args.init_times)?,
        steps: args.steps,
        include_initial: args.include_initial,
    };
    let path = forecast(&loaded, &request, &args.output)?;
    println!("{}", path.display());
    Ok(())
}
