//! `meshcast generate-data`.

use std::path::PathBuf;

use clap::Args;

use crate::data::generate::{generate, variable_names, GenerateOptions, NcFormat};
use crate::data::Region;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Output NetCDF file.
    #[arg(short, long, default_value = "synthetic.nc")]
    pub output: PathBuf,
    /// Grid spacing in degrees (5, 2.5, 1, 0.25 ...); the global grid has cell centres
    /// off the poles (1 deg: 180 x 360 = 64,800 cells).
    #[arg(long, default_value_t = 5.0)]
    pub resolution: f64,
    /// A regional box lat_min,lat_max,lon_min,lon_max instead of the globe.
    #[arg(long, allow_hyphen_values = true)]
    pub region: Option<Region>,
    /// Number of time steps.
    #[arg(long, default_value_t = 120)]
    pub steps: usize,
    /// Hours between steps.
    #[arg(long, default_value_t = 6.0)]
    pub step_hours: f64,
    /// First time (YYYY-MM-DD hh:mm).
    #[arg(long, default_value = "2000-01-01 00:00")]
    pub start: String,
    /// Seed of the wave's phase and amplitude (same seed, same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction (0..0.5) of cells masked with _FillValue in the four corners, like real regional files.
    #[arg(long, default_value_t = 0.0)]
    pub fill_corners: f64,
    /// File format.
    #[arg(long, value_parser = super::choices::choice::<NcFormat>(), default_value_t = NcFormat::Netcdf4)]
    pub format: NcFormat,
    /// Deflate compression level (netCDF-4 only; 0 = none).
    #[arg(long, default_value_t = 0)]
    pub deflate: i32,
    /// Store int16 with scale_factor/add_offset, as ERA5 downloads do.
    #[arg(long)]
    pub pack: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    crate::util::check_output_path(&args.output)?;
    let opts = GenerateOptions {
        resolution: args.resolution,
        region: args.region,
        steps: args.steps,
        step_hours: args.step_hours,
        start: args.start,
        seed: args.seed,
        fill_corners: args.fill_corners,
        format: args.format,
        deflate: args.deflate,
        pack: args.pack,
    };
    let history = std::env::args().collect::<Vec<_>>().join(" ");
    let bytes = generate(&args.output, &opts, &history)?;
    tracing::info!(
        "wrote {} ({:.1} MB): {} at {} deg, {} steps every {} h",
        args.output.display(),
        bytes as f64 / 1e6,
        variable_names().join(", "),
        opts.resolution,
        opts.steps,
        opts.step_hours
    );
    println!("{}", args.output.display());
    Ok(())
}
