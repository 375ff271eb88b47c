//! Training: the loop, the optimizer, its schedule, f16 loss scaling, metrics and
//! checkpoints (the loss and initialisation belong to [`crate::predict`]).
//!
//! Batches from [`crate::data`] go through a [`crate::predict::Predictor`] over the graph
//! of [`crate::graph`]; [`step`] is the training step every caller shares,
//! [`trainer::train`] runs the whole loop and [`checkpoint`] makes it survive being
//! stopped (`--resume` gives the same weights as an uninterrupted run).

pub mod checkpoint;
pub mod config;
pub mod fits;
pub mod loss_scale;
pub mod metrics;
pub mod optimizer;
pub mod replicas;
pub mod run_dir;
pub mod schedule;
pub mod session;
pub mod step;
pub mod trainer;
pub mod validation;

pub use config::{RunConfig, TrainConfig};
pub use trainer::{train, TrainOptions, TrainSummary};
