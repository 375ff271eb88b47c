//! Moving latents between nodes and edges: gathering node rows onto edges and
//! summing edge messages into their receivers.
//!
//! Every gather and scatter of the model goes through these functions, so a
//! faster kernel (e.g. a CSR segment-sum custom op with its own backward) can
//! replace them in one place.
//!
//! Aggregation uses `index_add`, whose backward is an `index_select` of the
//! output gradient. (candle 0.11's `scatter_add` backward is wrong when the
//! index and destination shapes differ, which they do here.)

use candle_core::{Result, Tensor};

use super::graph_tensors::EdgeTensors;

/// Sender rows per edge: `[B, n_senders, F] -> [B, E, F]`.
pub fn gather_senders(edges: &EdgeTensors, nodes: &Tensor) -> Result<Tensor> {
    nodes.index_select(&edges.senders, 1)
}

/// Receiver rows per edge: `[B, n_receivers, F] -> [B, E, F]`.
pub fn gather_receivers(edges: &EdgeTensors, nodes: &Tensor) -> Result<Tensor> {
    nodes.index_select(&edges.receivers, 1)
}

/// Sum of the messages into each receiver: `[B, E, F] -> [B, n_receivers, F]`
/// (zero for a receiver without incoming edges).
pub fn sum_into_receivers(edges: &EdgeTensors, messages: &Tensor) -> Result<Tensor> {
    let (batch, _, features) = messages.dims3()?;
    Tensor::zeros(
        (batch, edges.n_receivers, features),
        messages.dtype(),
        messages.device(),
    )?
    .index_add(&edges.receivers, &messages.contiguous()?, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{formats::Coo, EdgeSet, EDGE_FEATURES};
    use crate::model::testing::{check_gradients, random_tensor};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn edges() -> Result<EdgeTensors> {
        // 3 senders -> 4 receivers, receiver 3 has no edges, receiver 1 has three.
        let coo = Coo {
            n_senders: 3,
            n_receivers: 4,
            senders: vec![0, 2, 1, 0, 2],
            receivers: vec![1, 0, 1, 1, 2],
        };
        let set = EdgeSet::new(coo, vec![0.0; 5 * EDGE_FEATURES]);
        let dev = Device::Cpu;
        Ok(EdgeTensors {
            senders: Tensor::from_slice(set.senders(), 5, &dev)?,
            receivers: Tensor::from_slice(set.receivers(), 5, &dev)?,
            features: Tensor::zeros((5, EDGE_FEATURES), DType::F64, &dev)?,
            n_senders: 3,
            n_receivers: 4,
        })
    }

    #[test]
    fn sums_by_receiver() -> Result<()> {
        let e = edges()?;
        // Batch 2, one feature: message value = 10 * batch + edge.
        let m: Vec<f64> = (0..2)
            .flat_map(|b| (0..5).map(move |k| (10 * b + k) as f64))
            .collect();
        let m = Tensor::from_vec(m, (2, 5, 1), &Device::Cpu)?;
        let s = sum_into_receivers(&e, &m)?.squeeze(2)?.to_vec2::<f64>()?;
        assert_eq!(
            s,
            vec![vec![1.0, 5.0, 4.0, 0.0], vec![11.0, 35.0, 14.0, 0.0]]
        );
        let nodes = Tensor::from_vec(vec![0.0, 1.0, 2.0], (1, 3, 1), &Device::Cpu)?;
        let g = gather_senders(&e, &nodes)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert_eq!(g, vec![0.0, 2.0, 1.0, 0.0, 2.0]);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let e = edges()?;
        let varmap = VarMap::new();
        let x = random_tensor(&[2, 3, 2], DType::F64, 5)?;
        // Gather to edges, a non-linearity so the check is not trivially linear, sum back.
        let w = Var::from_tensor(&random_tensor(&[2, 5, 2], DType::F64, 6)?)?;
        check_gradients(
            &varmap,
            &x,
            |x| {
                let on_edges = gather_senders(&e, x)?.mul(w.as_tensor())?.tanh()?;
                let at_receivers = sum_into_receivers(&e, &on_edges)?;
                gather_receivers(&e, &at_receivers)
            },
            &[],
        )
    }
}
