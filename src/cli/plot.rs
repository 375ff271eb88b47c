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
    };
    println!("{}", written.display());
    Ok(())
}
