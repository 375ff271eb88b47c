//! One variable of one NetCDF file: where its latitude, longitude, time and level
//! dimensions are, how its raw numbers become physical values and a validity mask,
//! and how to read one time step of it.
//!
//! Only metadata is read when a source is opened; values are read one time step at a
//! time ([`SourceVariable::read_step`]) so a dataset larger than memory can be used.
//!
//! [`open_file`] (in `format`, with `hdf5`) opens a file; [`describe_variable`] (in
//! `describe`) finds the dimensions' roles (`roles`, `layout`), the horizontal axes
//! (`axes`), the time axis (`time_axis`), the levels (`levels`) and the CF packing
//! (`cf`) from attributes (`attributes`); `read` reads one time step.

use std::path::PathBuf;

use serde::Serialize;

use super::grid::{AxisMap, Region};
use super::time::TimeAxis;
use crate::error::InputError;

mod attributes;
mod axes;
mod cf;
mod classic_header;
mod conventions;
mod describe;
mod format;
mod hdf5;
mod layout;
mod levels;
mod read;
mod roles;
mod store;
mod time_axis;
mod zarr;

pub use attributes::{attr_numbers, attr_string};
pub use cf::Packing;
pub use conventions::{CoordinateType, HorizontalAxes, OutputAxis};
pub use describe::{describe_static, describe_variable};
pub use format::{open_file, open_netcdf};
pub use levels::{LevelChoice, LevelSelection};
pub use roles::{gridded_variables, static_fields};
pub use store::Store;

use layout::Layout;
use levels::format_level;

type Result<T> = std::result::Result<T, InputError>;

/// Options that change how files are read, shared by every source.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub region: Option<Region>,
    /// Vertical levels to select from multi-level variables (coordinate values).
    pub levels: Option<LevelChoice>,
    /// Overrides a file's time units, e.g. `hours since 1996-01-05 00:00`.
    pub time_units: Option<String>,
}

/// One variable of one file, described; one *channel* per selected level.
#[derive(Debug, Clone, Serialize)]
pub struct SourceVariable {
    pub path: PathBuf,
    pub var_name: String,
    /// The name it goes by in the dataset (alias or file name).
    pub name: String,
    pub units: Option<String>,
    pub long_name: Option<String>,
    pub standard_name: Option<String>,
    pub dims: Vec<(String, usize)>,
    #[serde(skip)]
    pub lat: AxisMap,
    #[serde(skip)]
    pub lon: AxisMap,
    pub global: bool,
    pub time: TimeAxis,
    /// Where the time axis came from, in words, for the log and `inspect-data`.
    pub time_note: Option<String>,
    pub packing: Packing,
    pub levels: Vec<LevelSelection>,
    #[serde(skip)]
    layout: Layout,
}

impl SourceVariable {
    /// The variable on latitude rows `rows` of its canonical grid only.
    pub fn latitude_band(&self, rows: std::ops::Range<usize>) -> SourceVariable {
        SourceVariable {
            lat: crate::data::grid::AxisMap {
                values: self.lat.values[rows.clone()].to_vec(),
                file_index: self.lat.file_index[rows].to_vec(),
            },
            ..self.clone()
        }
    }

    /// Channel names: the variable's name, or `name<level>` per selected level.
    pub fn channel_names(&self) -> Vec<String> {
        match self.layout.level_dim {
            Some(d) if self.dims[d].1 > 1 => self
                .levels
                .iter()
                .map(|l| format!("{}{}", self.name, format_level(l.value)))
                .collect(),
            _ => vec![self.name.clone()],
        }
    }

    pub fn num_channels(&self) -> usize {
        self.levels.len().max(1)
    }

    pub fn grid_shape(&self) -> (usize, usize) {
        (self.lat.values.len(), self.lon.values.len())
    }
}
