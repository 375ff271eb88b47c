//! NetCDF files -> merged dataset -> normalised sample windows -> batches.
//!
//! [`source`] reads one variable of one file; [`dataset`] merges many on one grid and
//! time axis; [`samples`] cuts the time axis into windows and splits; [`stats`] holds
//! the normalisation; [`batch`] assembles batches and [`loader`] reads them ahead.

pub mod batch;
pub mod dataset;
pub mod forcings;
pub mod generate;
pub mod grid;
pub mod inspect;
pub mod loader;
pub mod named_grids;
pub mod samples;
pub mod source;
pub mod spec;
pub mod statics;
pub mod stats;
pub mod time;

pub use batch::{Batch, BatchAssembler, ExtrasFn};
pub use dataset::{Dataset, State, StepReader};
pub use grid::{Grid, Region};
pub use loader::{BatchLoader, Prefetch};
pub use named_grids::{named_grid, storm1996_grid};
pub use samples::{Split, SplitPeriods, SplitSpec, Splits, WindowSpec};
pub use spec::{DataSpec, VarPick};
pub use stats::{NormStats, StatsSums};
