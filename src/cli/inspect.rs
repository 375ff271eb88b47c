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
    let window = args.window.spec(Default::default());
    window.validate()?;
    let splits = Splits::new(
        &dataset.time,
        &args.window.split(Default::default())?,
        window,
    );
    let mut report = inspect(&dataset)?;
    match splits {
        Ok(splits) => report.samples = Some(SamplesReport::new(&splits)),
        // A file too short for one sample is still described: that is what a user
        // wants to see first.
        Err(why) if dataset.time.len() < window.span() => report.no_samples = Some(why.0),
        Err(e) => return Err(InputError(format!("{}: {}", dataset.file_list(), e.0)).into()),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
