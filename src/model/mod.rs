//! The neural network: a GraphCast-style encode-process-decode graph network
//! ([`GraphCast`]) over the typed graph of [`crate::graph`], as candle modules.
//!
//! One concept per file: [`layer_norm`] (a differentiable LayerNorm), [`mlp`]
//! (MLPs with a split first layer), [`graph_tensors`] (the graph on the device),
//! [`aggregate`] (gather and edge-to-node sums), [`interaction`] (one
//! message-passing step), [`precision`] (mixed precision) and [`graphcast`] (the
//! model and its config).
//!
//! meshcast's own kernels share [`row_kernels`]; their CUDA sources are in
//! src/model/kernels/, compiled to PTX by build.rs with the `cuda` feature.
//!
//! Parameters live in a `candle_nn::VarMap`; their names are documented in
//! [`graphcast`], [`interaction`] and [`mlp`].

pub mod aggregate;
pub mod dense;
pub mod edge_input;
pub mod graph_tensors;
pub mod graphcast;
pub mod interaction;
pub mod layer_norm;
pub mod mlp;
pub mod precision;
pub mod row_kernels;
#[cfg(test)]
pub(crate) mod testing;

use candle_nn::VarMap;

pub use graph_tensors::{Aggregation, EdgeTensors, GraphTensors, Grouping, NodeTensors};
pub use graphcast::{Batching, GraphCast, Latents, ModelConfig};
pub use interaction::InteractionNetwork;
pub use layer_norm::LayerNorm;
pub use mlp::Mlp;
pub use precision::MixedPrecision;

/// The parameters of `varmap` with their names, sorted by name: the fixed order that
/// initialisation, the optimizer and checkpoints rely on.
pub fn named_parameters(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let mut vars: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Number of scalar parameters in `varmap`.
pub fn parameter_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    #[test]
    fn counts_parameters() -> candle_core::Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Mlp::new(&[3, 4, 2], 5, 6, 1, true, vb)?;
        // 9x5 + 5, 5x6 + 6, norm 2x6.
        assert_eq!(parameter_count(&varmap), 50 + 36 + 12);
        Ok(())
    }
}
