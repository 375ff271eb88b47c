//! meshcast: GraphCast-style graph neural network weather models on NetCDF data.
//!
//! Data flows one way: files ([`data`]) -> dataset -> batches -> model ([`model`]) ->
//! loss -> optimizer ([`train`]), over a mesh graph ([`graph`]) built once and shared
//! by every sample; [`eval`] scores and rolls out checkpoints. The `meshcast` binary is
//! a thin layer ([`cli`]) that parses flags and dispatches.

pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod graph;
pub mod machine;
pub mod memory;
pub mod model;
pub mod plot;
pub mod predict;
pub mod table;
pub mod train;
pub mod util;
pub mod verify;
