//! Moving latents between nodes and edges: gathering node rows onto edges and
//! summing edge messages into their receivers.
//!
//! Every gather and scatter of the model goes through these functions, so a
//! faster kernel can replace them in one place. Two implementations, chosen by
//! [`ModelConfig::aggregation`](super::ModelConfig):
//! - [`Aggregation::IndexAdd`]: candle's `index_select` to gather and `index_add` over
//!   the COO receivers to sum. The backward of each is the other. (candle 0.11's
//!   `scatter_add` backward is wrong when the index and destination shapes differ,
//!   which they do here.) On CUDA candle's `index_add` kernel walks the indexed
//!   dimension serially, so every gather's backward and every sum is slow there.
//! - [`Aggregation::Csr`]: custom ops built on one segment sum over edges grouped by an
//!   endpoint ([`Grouping`](super::Grouping)): the sum into receivers walks the edges
//!   grouped by receiver (CSR), and a gather's backward sums the edge gradients into
//!   their senders (CSC) or receivers (CSR). Every output row is written by one thread
//!   (CPU: candle's worker pool; CUDA: src/model/kernels/segment_sum.cu), with no
//!   atomics and no scatter, and within a group edges are added in COO order, as
//!   `index_add` adds them.
//!
//! This file holds the functions that switch on [`Aggregation`]; each custom op has its
//! own file with its CPU kernel and CUDA launcher (segment_sum.rs, grouped_gather.rs,
//! gather_sum.rs).

mod gather_sum;
mod grouped_gather;
mod segment_sum;

use candle_core::{bail, Result, Tensor};

/// The strategy these functions switch on (defined with the edge tensors it selects).
pub use super::graph_tensors::Aggregation;
use super::graph_tensors::EdgeTensors;
pub use gather_sum::GatherSum;
use grouped_gather::grouped_gather;
pub use grouped_gather::GroupedGather;
pub(crate) use segment_sum::segment_sum;
pub use segment_sum::SegmentSum;

/// Sender rows per edge: `[B, n_senders, F] -> [B, E, F]`.
pub fn gather_senders(edges: &EdgeTensors, nodes: &Tensor) -> Result<Tensor> {
    match edges.aggregation {
        Aggregation::IndexAdd => nodes.index_select(&edges.senders, 1),
        Aggregation::Csr => grouped_gather(nodes, &edges.senders, &edges.by_sender),
    }
}

/// Receiver rows per edge: `[B, n_receivers, F] -> [B, E, F]`.
pub fn gather_receivers(edges: &EdgeTensors, nodes: &Tensor) -> Result<Tensor> {
    match edges.aggregation {
        Aggregation::IndexAdd => nodes.index_select(&edges.receivers, 1),
        Aggregation::Csr => grouped_gather(nodes, &edges.receivers, &edges.by_receiver),
    }
}

/// Sum of the messages into each receiver: `[B, E, F] -> [B, n_receivers, F]`
/// (zero for a receiver without incoming edges), by `edges.aggregation`.
pub fn sum_into_receivers(edges: &EdgeTensors, messages: &Tensor) -> Result<Tensor> {
    match edges.aggregation {
        Aggregation::IndexAdd => index_add_sum(edges, messages),
        Aggregation::Csr => csr_segment_sum(edges, messages),
    }
}

/// [`sum_into_receivers`] with `index_add`.
pub fn index_add_sum(edges: &EdgeTensors, messages: &Tensor) -> Result<Tensor> {
    let (batch, _, features) = messages.dims3()?;
    Tensor::zeros(
        (batch, edges.n_receivers, features),
        messages.dtype(),
        messages.device(),
    )?
    .index_add(&edges.receivers, &messages.contiguous()?, 1)
}

/// [`sum_into_receivers`] with the [`SegmentSum`] custom op.
pub fn csr_segment_sum(edges: &EdgeTensors, messages: &Tensor) -> Result<Tensor> {
    if edges.n_receivers != edges.by_receiver.n_groups() {
        bail!(
            "csr segment sum: a CSR of {} receivers for an edge set of {}",
            edges.by_receiver.n_groups(),
            edges.n_receivers
        );
    }
    segment_sum(messages, &edges.receivers, &edges.by_receiver)
}

/// `e + s[:, senders] + r[:, receivers]` for `e` `[B|1, E, F]`, `s` `[B|1, n_senders, F]`
/// and `r` `[B|1, n_receivers, F]` (batch 1 broadcasts): `[B, E, F]`. This is the
/// first layer of an edge MLP under the concat trick. With [`Aggregation::Csr`] it is
/// one op that keeps only its three inputs (no gathered copies, no partial sums) and
/// whose backward sums the edge gradients into senders and receivers by segment sums.
pub fn gather_sum(edges: &EdgeTensors, e: &Tensor, s: &Tensor, r: &Tensor) -> Result<Tensor> {
    match edges.aggregation {
        Aggregation::IndexAdd => e
            .broadcast_add(&gather_senders(edges, s)?)?
            .broadcast_add(&gather_receivers(edges, r)?),
        Aggregation::Csr => e.contiguous()?.apply_op3(
            &s.contiguous()?,
            &r.contiguous()?,
            GatherSum {
                edges: edges.clone(),
            },
        ),
    }
}

/// The values of a U32 index tensor on the CPU.
pub(crate) fn host_index(t: &Tensor) -> Result<Vec<u32>> {
    t.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{formats::Coo, EDGE_FEATURES};
    use crate::model::testing::{check_gradients, random_tensor};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn edges_with(aggregation: Aggregation) -> Result<EdgeTensors> {
        // 3 senders -> 4 receivers, receiver 3 has no edges, receiver 1 has three.
        let coo = Coo {
            n_senders: 3,
            n_receivers: 4,
            senders: vec![0, 2, 1, 0, 2],
            receivers: vec![1, 0, 1, 1, 2],
        };
        let features = Tensor::zeros((5, EDGE_FEATURES), DType::F64, &Device::Cpu)?;
        let mut edges = EdgeTensors::from_coo(&coo, features)?;
        edges.aggregation = aggregation;
        Ok(edges)
    }

    #[test]
    fn sums_by_receiver() -> Result<()> {
        for aggregation in [Aggregation::IndexAdd, Aggregation::Csr] {
            let e = edges_with(aggregation)?;
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
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for aggregation in [Aggregation::IndexAdd, Aggregation::Csr] {
            let e = edges_with(aggregation)?;
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
            )?;
        }
        Ok(())
    }

    /// A random graph with `n` receivers (some without edges) and `e` edges, on `device`.
    pub(super) fn random_edges(
        (n_senders, n, e): (usize, usize, usize),
        seed: u64,
        device: &Device,
    ) -> Result<EdgeTensors> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let coo = Coo {
            n_senders,
            n_receivers: n,
            senders: (0..e)
                .map(|_| rng.random_range(0..n_senders as u32))
                .collect(),
            // Receivers 0..n-3 only: the last two have no incoming edge.
            receivers: (0..e).map(|_| rng.random_range(0..n as u32 - 2)).collect(),
        };
        let features = Tensor::zeros((e, EDGE_FEATURES), DType::F32, device)?;
        let mut edges = EdgeTensors::from_coo(&coo, features)?;
        edges.aggregation = Aggregation::Csr;
        Ok(edges)
    }

    #[test]
    fn aggregation_names() {
        assert_eq!(
            serde_json::to_string(&Aggregation::IndexAdd).unwrap(),
            "\"index-add\""
        );
        assert_eq!(
            serde_json::from_str::<Aggregation>("\"index-add\"").unwrap(),
            Aggregation::IndexAdd
        );
        assert_eq!(
            serde_json::from_str::<Aggregation>("\"csr\"").unwrap(),
            Aggregation::Csr
        );
        assert_eq!(Aggregation::IndexAdd.to_string(), "index-add");
        // Runs written before the spelling was unified.
        assert_eq!(
            serde_json::from_str::<Aggregation>("\"indexadd\"").unwrap(),
            Aggregation::IndexAdd
        );
    }
}
