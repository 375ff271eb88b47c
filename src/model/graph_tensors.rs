//! The graph as device tensors: built once from a [`WeatherGraph`] and shared by
//! every sample and every batch (never copied per sample).

use candle_core::{DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::graph::{CsrIndex, EdgeSet, NodeSet, WeatherGraph, EDGE_FEATURES, NODE_FEATURES};
use serde::{Deserialize, Serialize};

/// How edge messages are gathered from and summed into nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Aggregation {
    /// candle's `index_select` and `index_add` over the COO indices (serial on CUDA).
    /// Spelled `index-add` everywhere (`indexadd` and `index_add` are read too: runs
    /// and reports written before the spelling was unified used `indexadd`).
    #[serde(rename = "index-add", alias = "indexadd", alias = "index_add")]
    IndexAdd,
    /// CSR/CSC segment sums (parallel over output rows; CPU and CUDA kernels). The
    /// same sums as index-add, 2.3x faster on 2 CPU cores and 109x on an H100 for a
    /// gather, sum and their backward (`meshcast check-gpu`, docs/benchmarks.md).
    #[default]
    #[serde(rename = "csr")]
    Csr,
}

impl Aggregation {
    /// The spellings of flags, configs and JSON, in declaration order.
    pub const NAMES: &'static [&'static str] = &["index-add", "csr"];
}

impl std::fmt::Display for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Aggregation::NAMES[*self as usize])
    }
}

impl std::str::FromStr for Aggregation {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            "index-add" | "indexadd" | "index_add" => Ok(Aggregation::IndexAdd),
            "csr" => Ok(Aggregation::Csr),
            other => Err(format!(
                "unknown aggregation '{other}' (expected index-add or csr)"
            )),
        }
    }
}

/// The edges of one edge set grouped by one endpoint ([`CsrIndex`]) as tensors on the
/// model's device, for the segment-sum kernels.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// `[groups + 1]` U32.
    pub offsets: Tensor,
    /// `[E]` U32.
    pub edge_ids: Tensor,
}

impl Grouping {
    pub fn new(index: &CsrIndex, device: &Device) -> Result<Grouping> {
        Ok(Grouping {
            offsets: Tensor::from_slice(&index.offsets, index.offsets.len(), device)?,
            edge_ids: Tensor::from_slice(&index.edge_ids, index.edge_ids.len(), device)?,
        })
    }

    /// The index back on the host.
    pub fn to_index(&self) -> Result<CsrIndex> {
        Ok(CsrIndex {
            offsets: self.offsets.to_vec1()?,
            edge_ids: self.edge_ids.to_vec1()?,
        })
    }

    pub fn n_groups(&self) -> usize {
        self.offsets.elem_count() - 1
    }

    pub fn n_edges(&self) -> usize {
        self.edge_ids.elem_count()
    }

    /// Bytes of the two index tensors.
    pub fn bytes(&self) -> usize {
        4 * (self.offsets.elem_count() + self.edge_ids.elem_count())
    }

    /// The grouping of `copies` disjoint copies (see [`CsrIndex::replicated`]).
    pub fn replicated(&self, copies: usize) -> Result<Grouping> {
        Grouping::new(&self.to_index()?.replicated(copies), self.offsets.device())
    }
}

/// Bytes of a tensor's elements.
fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// One node set's static features.
#[derive(Debug, Clone)]
pub struct NodeTensors {
    /// `[count, NODE_FEATURES]`.
    pub features: Tensor,
    pub count: usize,
}

/// One directed edge set: indices for gathering and aggregation, and features.
#[derive(Debug, Clone)]
pub struct EdgeTensors {
    /// `[E]`, U32, indices into the sender node set.
    pub senders: Tensor,
    /// `[E]`, U32, indices into the receiver node set.
    pub receivers: Tensor,
    /// `[E, EDGE_FEATURES]`.
    pub features: Tensor,
    pub n_senders: usize,
    pub n_receivers: usize,
    /// The edges grouped by receiver (CSR), for [`Aggregation::Csr`].
    pub by_receiver: Grouping,
    /// The edges grouped by sender (CSC), for [`Aggregation::Csr`].
    pub by_sender: Grouping,
    /// How messages are gathered and summed on this edge set (`model::aggregate`).
    pub aggregation: Aggregation,
}

/// The typed graph of [`WeatherGraph`] on a device, in the model's dtype.
#[derive(Debug, Clone)]
pub struct GraphTensors {
    /// Distinguishes graphs (e.g. patches) for caches keyed on the graph;
    /// clones share it, as they share the tensors.
    id: u64,
    pub grid_nodes: NodeTensors,
    pub mesh_nodes: NodeTensors,
    /// Encoder edges: grid -> mesh.
    pub grid2mesh: EdgeTensors,
    /// Processor edges: mesh -> mesh.
    pub mesh: EdgeTensors,
    /// Decoder edges: mesh -> grid.
    pub mesh2grid: EdgeTensors,
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl NodeTensors {
    fn new(nodes: &NodeSet, device: &Device, dtype: DType) -> Result<NodeTensors> {
        let features = Tensor::from_slice(&nodes.features, (nodes.len(), NODE_FEATURES), device)?
            .to_dtype(dtype)?;
        Ok(NodeTensors {
            features,
            count: nodes.len(),
        })
    }

    fn replicated(&self, copies: usize) -> Result<NodeTensors> {
        Ok(NodeTensors {
            features: self.features.repeat((copies, 1))?,
            count: self.count * copies,
        })
    }

    /// Bytes of the feature tensor.
    pub fn bytes(&self) -> usize {
        tensor_bytes(&self.features)
    }
}

impl EdgeTensors {
    /// Runs `f` on the sender and receiver indices as CUDA views, their storage locked
    /// for reading until `f` returns (a kernel launch that reads them); `what` names the
    /// op in the error for indices that are not on a GPU.
    #[cfg(feature = "cuda")]
    pub fn with_cuda_indices<R>(
        &self,
        what: &str,
        f: impl FnOnce(
            &candle_core::cuda_backend::cudarc::driver::CudaView<u32>,
            &candle_core::cuda_backend::cudarc::driver::CudaView<u32>,
        ) -> Result<R>,
    ) -> Result<R> {
        let (senders_storage, senders_layout) = self.senders.storage_and_layout();
        let (receivers_storage, receivers_layout) = self.receivers.storage_and_layout();
        let (candle_core::Storage::Cuda(senders), candle_core::Storage::Cuda(receivers)) =
            (&*senders_storage, &*receivers_storage)
        else {
            candle_core::bail!("{what}: the graph's indices are not on the GPU");
        };
        let senders = senders.as_cuda_slice::<u32>()?;
        let receivers = receivers.as_cuda_slice::<u32>()?;
        f(
            &senders.slice(senders_layout.start_offset()..),
            &receivers.slice(receivers_layout.start_offset()..),
        )
    }

    fn new(edges: &EdgeSet, device: &Device, dtype: DType) -> Result<EdgeTensors> {
        let features = Tensor::from_slice(&edges.features, (edges.len(), EDGE_FEATURES), device)?
            .to_dtype(dtype)?;
        EdgeTensors::from_coo(&edges.coo, features)
    }

    /// From COO indices and `[E, EDGE_FEATURES]` features (on the device to use), with
    /// both groupings built and the default aggregation.
    pub fn from_coo(coo: &crate::graph::formats::Coo, features: Tensor) -> Result<EdgeTensors> {
        let device = features.device().clone();
        let e = coo.senders.len();
        Ok(EdgeTensors {
            senders: Tensor::from_slice(&coo.senders, e, &device)?,
            receivers: Tensor::from_slice(&coo.receivers, e, &device)?,
            features,
            n_senders: coo.n_senders,
            n_receivers: coo.n_receivers,
            by_receiver: Grouping::new(
                &CsrIndex::from_receivers(&coo.receivers, coo.n_receivers),
                &device,
            )?,
            by_sender: Grouping::new(
                &CsrIndex::from_receivers(&coo.senders, coo.n_senders),
                &device,
            )?,
            aggregation: Aggregation::default(),
        })
    }

    /// Bytes of the tensors: indices, features and both groupings.
    pub fn bytes(&self) -> usize {
        tensor_bytes(&self.senders)
            + tensor_bytes(&self.receivers)
            + tensor_bytes(&self.features)
            + self.by_receiver.bytes()
            + self.by_sender.bytes()
    }

    pub fn len(&self) -> usize {
        self.features.dim(0).expect("features are [E, F]")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `copies` disjoint copies: copy `b`'s indices are offset by `b * n`.
    fn replicated(&self, copies: usize) -> Result<EdgeTensors> {
        let offsets = |n: usize| {
            let o: Vec<u32> = (0..copies).map(|b| (b * n) as u32).collect();
            Tensor::from_vec(o, (copies, 1), self.senders.device())
        };
        let tile = |index: &Tensor, n: usize| {
            index
                .unsqueeze(0)?
                .broadcast_add(&offsets(n)?)?
                .flatten_all()
        };
        Ok(EdgeTensors {
            senders: tile(&self.senders, self.n_senders)?,
            receivers: tile(&self.receivers, self.n_receivers)?,
            features: self.features.repeat((copies, 1))?,
            n_senders: self.n_senders * copies,
            n_receivers: self.n_receivers * copies,
            by_receiver: self.by_receiver.replicated(copies)?,
            by_sender: self.by_sender.replicated(copies)?,
            aggregation: self.aggregation,
        })
    }
}

impl GraphTensors {
    pub fn new(graph: &WeatherGraph, device: &Device, dtype: DType) -> Result<GraphTensors> {
        Ok(GraphTensors {
            id: next_id(),
            grid_nodes: NodeTensors::new(&graph.grid_nodes, device, dtype)?,
            mesh_nodes: NodeTensors::new(&graph.mesh_nodes, device, dtype)?,
            grid2mesh: EdgeTensors::new(&graph.grid2mesh, device, dtype)?,
            mesh: EdgeTensors::new(&graph.mesh, device, dtype)?,
            mesh2grid: EdgeTensors::new(&graph.mesh2grid, device, dtype)?,
        })
    }

    /// Identifies this graph (shared by its clones, distinct for every other).
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn device(&self) -> &Device {
        self.grid_nodes.features.device()
    }

    pub fn dtype(&self) -> DType {
        self.grid_nodes.features.dtype()
    }

    /// How the edge -> node sums run (the same for every edge set).
    pub fn aggregation(&self) -> Aggregation {
        self.mesh.aggregation
    }

    /// This graph (same id, shared tensors) with every edge set aggregating by `aggregation`.
    pub fn with_aggregation(&self, aggregation: Aggregation) -> GraphTensors {
        let mut g = self.clone();
        for e in [&mut g.grid2mesh, &mut g.mesh, &mut g.mesh2grid] {
            e.aggregation = aggregation;
        }
        g
    }

    /// Bytes of every tensor of the graph (node features, edge indices and features)
    /// and of the CSR indices in use.
    pub fn bytes(&self) -> usize {
        self.grid_nodes.bytes()
            + self.mesh_nodes.bytes()
            + self.grid2mesh.bytes()
            + self.mesh.bytes()
            + self.mesh2grid.bytes()
    }

    /// Edges over all three edge sets.
    pub fn edge_count(&self) -> usize {
        self.grid2mesh.len() + self.mesh.len() + self.mesh2grid.len()
    }

    /// The PyG-style batched graph: `copies` disjoint copies of this graph as one
    /// block-diagonal graph, copy `b`'s nodes at `b * N..(b + 1) * N` in every
    /// node set. Inputs `[B, N, F]` reshaped to `[1, B * N, F]` then run on it as
    /// one sample.
    pub fn replicated(&self, copies: usize) -> Result<GraphTensors> {
        Ok(GraphTensors {
            id: next_id(),
            grid_nodes: self.grid_nodes.replicated(copies)?,
            mesh_nodes: self.mesh_nodes.replicated(copies)?,
            grid2mesh: self.grid2mesh.replicated(copies)?,
            mesh: self.mesh.replicated(copies)?,
            mesh2grid: self.mesh2grid.replicated(copies)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::tiny_graph;

    #[test]
    fn matches_the_graph_and_replicates_with_offsets() -> Result<()> {
        let graph = tiny_graph(0);
        let t = GraphTensors::new(&graph, &Device::Cpu, DType::F32)?;
        assert_eq!(t.grid_nodes.count, graph.grid_nodes.len());
        assert_eq!(t.mesh_nodes.features.dims(), &[12, NODE_FEATURES]);
        assert_eq!(t.mesh.len(), graph.mesh.len());
        assert_eq!(
            t.grid2mesh.senders.to_vec1::<u32>()?,
            graph.grid2mesh.senders()
        );
        assert_eq!(t.mesh2grid.n_receivers, graph.grid_nodes.len());

        let r = t.replicated(3)?;
        assert_ne!(r.id(), t.id());
        assert_eq!(r.id(), r.clone().id());
        let e = graph.mesh2grid.len();
        let (ns, nr) = (graph.mesh_nodes.len() as u32, graph.grid_nodes.len() as u32);
        let senders = r.mesh2grid.senders.to_vec1::<u32>()?;
        let receivers = r.mesh2grid.receivers.to_vec1::<u32>()?;
        assert_eq!(senders.len(), 3 * e);
        for b in 0..3 {
            for k in 0..e {
                assert_eq!(
                    senders[b * e + k],
                    graph.mesh2grid.senders()[k] + b as u32 * ns
                );
                assert_eq!(
                    receivers[b * e + k],
                    graph.mesh2grid.receivers()[k] + b as u32 * nr
                );
            }
        }
        assert_eq!(r.grid_nodes.count, 3 * t.grid_nodes.count);
        // The replicated groupings are those of the replicated indices.
        assert_eq!(
            r.mesh2grid.by_receiver.to_index()?,
            CsrIndex::from_receivers(&receivers, r.mesh2grid.n_receivers)
        );
        assert_eq!(
            r.mesh2grid.by_sender.to_index()?,
            CsrIndex::from_receivers(&senders, r.mesh2grid.n_senders)
        );
        let r = r.with_aggregation(Aggregation::Csr);
        assert_eq!(r.aggregation(), Aggregation::Csr);
        assert_eq!(r.mesh.features.dims(), &[3 * t.mesh.len(), EDGE_FEATURES]);
        Ok(())
    }
}
