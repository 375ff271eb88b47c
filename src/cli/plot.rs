//! `meshcast plot`: pictures of training curves and eval scores (PNG, or SVG by the
//! output's extension).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct PlotArgs {
    #[command(subcommand)]
    pub what: PlotCommand,
}

#[derive(Debug, Subcommand)]
pub enum PlotCommand {
    /// Loss (training and validation) and learning rate against the step, from a run's
    /// metrics.jsonl.
    Training {
        /// The run directory (train-model --output-dir).
        run_dir: PathBuf,
        /// Output picture [default: RUN_DIR/training.png].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// RMSE and ACC against lead time per channel from eval reports (eval --output):
    /// the model of each report against the persistence and climatology of the first.
    Scores {
        /// One or more eval JSON reports.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Output picture.
        #[arg(short, long, default_value = "scores.png")]
        output: PathBuf,
    },
    /// Maps of a forecast (meshcast forecast output), the truth at its valid time and
    /// their difference, on the grid's own coordinates; masked cells blank.
    Forecast {
        /// The forecast file.
        forecast: PathBuf,
        /// The data files holding the truth (the variable at the valid time).
        #[arg(long, required = true, num_args = 1..)]
        truth: Vec<PathBuf>,
        /// Variable name in the forecast file.
        #[arg(long)]
        variable: String,
        /// The variable's name in the truth files, when it was renamed at training.
        #[arg(long)]
        truth_variable: Option<String>,
        /// Level (coordinate value) of a multi-level variable.
        #[arg(long)]
        level: Option<f64>,
        /// Lead in hours [default: the longest in the file].
        #[arg(long)]
        lead: Option<f64>,
        /// Initialisation time [default: the file's first].
        #[arg(long)]
        init_time: Option<String>,
        /// Output picture.
        #[arg(short, long, default_value = "forecast.png")]
        output: PathBuf,
    },
    /// Median step time (min–max) and peak memory per case of a benchmark report
    /// (benchmark-graph-format --output), or of two reports side by side.
    Benchmark {
        /// One report, or two to compare (aligned on the case, as compare-benchmarks).
        #[arg(required = true, num_args = 1..=2)]
        reports: Vec<PathBuf>,
        /// Output picture.
        #[arg(short, long, default_value = "benchmark.png")]
        output: PathBuf,
    },
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let written = match args.what {
        PlotCommand::Training { run_dir, output } => {
            let out = output.unwrap_or_else(|| run_dir.join("training.png"));
            crate::plot::plot_training(&run_dir, &out)?;
            out
        }
        PlotCommand::Scores { reports, output } => {
            crate::plot::plot_scores(&reports, &output)?;
            output
        }
        PlotCommand::Forecast {
            forecast,
            truth,
            variable,
            truth_variable,
            level,
            lead,
            init_time,
            output,
        } => {
            let pick = crate::plot::ForecastPick {
                variable,
                truth_variable,
                level,
                lead_hours: lead,
                init_time,
            };
            crate::plot::plot_forecast(&forecast, &truth, &pick, &output)?;
            output
        }
        PlotCommand::Benchmark { reports, output } => {
            crate::plot::plot_benchmark(&reports, &output)?;
            output
        }
    };
    println!("{}", written.display());
    Ok(())
}
