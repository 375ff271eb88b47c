//! Benchmarks and machine checks: `benchmark-graph-format` ([`graph_format`]),
//! `compare-benchmarks` ([`compare`]) and `check-gpu` ([`gpu`]).
//!
//! A benchmark run writes one JSON [`report::Report`]: what was built and on which
//! machine ([`crate::machine`]), every case's configuration, whether its numbers were
//! verified against the reference format, and its timings and measured memory.

pub mod compare;
mod fused_check;
pub mod gpu;
pub mod graph_format;
pub mod report;
pub mod stats;

pub use report::{Report, SCHEMA_VERSION};
