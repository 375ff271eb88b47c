//! `meshcast inspect-data`.

use clap::Args;

use super::{DataArgs, WindowArgs};
use crate::data::inspect::{inspect, SamplesReport};
use crate::data::{Dataset, Splits};
use crate::error::InputError;

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let dataset = Dataset::open(&args.data.to_spec()?)?;
    let splits = Splits::new(
        dataset.time.len(),
        args.window.fractions(Default::default()),
        args.window.spec(Default::default()),
    )
    .map_err(|e| InputError(format!("{}: {}", dataset.file_list(), e.0)))?;
    let mut report = inspect(&dataset)?;
    report.samples = Some(SamplesReport::new(&splits));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
