//! NetCDF files -> merged dataset -> normalised sample windows -> batches.

pub mod grid;
