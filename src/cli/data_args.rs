//! The data arguments every subcommand that reads data shares.

use std::path::PathBuf;

use clap::Args;

use crate::data::{DataSpec, Region, VarPick};

#[derive(Debug, Clone, Args, Default)]
pub struct DataArgs {
    /// NetCDF files (classic, 64-bit offset or netCDF-4); each contributes all its gridded variables.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// One variable of a file, optionally renamed: FILE:NAME or FILE:NAME=ALIAS (repeatable),
    /// e.g. --var Ustorm.cdf:u=u10 --var U500storm.cdf:u=u500.
    #[arg(long = "var", value_name = "FILE:NAME[=ALIAS]")]
    pub vars: Vec<VarPick>,
    /// Keep only this box: lat_min,lat_max,lon_min,lon_max in degrees (lon_min > lon_max crosses the dateline).
    #[arg(long, value_name = "LAT0,LAT1,LON0,LON1", allow_hyphen_values = true)]
    pub region: Option<Region>,
    /// Vertical levels to take from multi-level variables (coordinate values, e.g. 500,850).
    #[arg(long, value_delimiter = ',', value_name = "LEVELS")]
    pub levels: Option<Vec<f64>>,
    /// Time units for files without CF time, e.g. "hours since 1996-01-05 00:00".
    #[arg(long, value_name = "UNITS")]
    pub time_units: Option<String>,
}

impl DataArgs {
    pub fn to_spec(&self) -> DataSpec {
        DataSpec {
            files: self.files.clone(),
            vars: self.vars.clone(),
            region: self.region,
            levels: self.levels.clone(),
            time_units: self.time_units.clone(),
        }
    }
}
