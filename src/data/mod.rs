//! NetCDF files -> merged dataset -> normalised sample windows -> batches.

pub mod dataset;
pub mod generate;
pub mod grid;
pub mod inspect;
pub mod source;
pub mod spec;
pub mod time;

pub use dataset::{Dataset, State};
pub use grid::{Grid, Region};
pub use spec::{DataSpec, VarPick};
