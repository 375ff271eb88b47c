//! `meshcast inspect-data`.

use clap::Args;

use super::DataArgs;
use crate::data::{inspect::inspect, Dataset};

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let dataset = Dataset::open(&args.data.to_spec())?;
    let report = inspect(&dataset)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
