//! Training: the loop, its loss, optimizer, schedule, initialisation and checkpoints.
//!
//! Batches from [`crate::data`] go through the [`crate::model`] over the graph of
//! [`crate::graph`]; [`trainer::train`] runs the whole thing and [`checkpoint`] makes it
//! survive being stopped (`--resume` gives the same weights as an uninterrupted run).

pub mod checkpoint;
pub mod checkpointing;
pub mod config;
pub mod init;
pub mod loss;
pub mod loss_scale;
pub mod optimizer;
pub mod schedule;
pub mod session;
pub mod trainer;

pub use config::{RunConfig, TrainConfig};
pub use trainer::{train, TrainOptions, TrainSummary};
