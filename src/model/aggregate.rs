//! Moving latents between nodes and edges: gathering node rows onto edges and
//! summing edge messages into their receivers.
//!
//! Every gather and scatter of the model goes through these functions, so a
//! faster kernel can replace them in one place.
//!
//! The edge -> node sum has two implementations, chosen by
//! [`ModelConfig::aggregation`](super::ModelConfig):
//! - [`Aggregation::IndexAdd`]: candle's `index_add` over the COO receivers, whose
//!   backward is an `index_select` of the output gradient. (candle 0.11's
//!   `scatter_add` backward is wrong when the index and destination shapes differ,
//!   which they do here.)
//! - [`Aggregation::Csr`]: a CPU custom op, [`CsrSegmentSum`], that walks the
//!   receivers in CSR order and sums the rows of their incoming edges: each output
//!   row is written by one thread (parallel over receivers on candle's worker pool,
//!   no atomics, no scatter). Within a receiver edges keep their COO order, so it adds
//!   in the same order as `index_add` and gives the same numbers. Its backward is the
//!   same gather: `index_select(grad_out, receivers)`.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use serde::{Deserialize, Serialize};

use super::graph_tensors::EdgeTensors;

/// How edge messages are summed into their receivers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// candle's `index_add` over the COO receiver index (any device).
    #[default]
    #[serde(alias = "index-add", alias = "index_add")]
    #[value(name = "index-add")]
    IndexAdd,
    /// A CSR segment sum by receiver (CPU custom op; no CUDA kernel yet).
    Csr,
}

impl std::fmt::Display for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Aggregation::IndexAdd => "index-add",
            Aggregation::Csr => "csr",
        })
    }
}

/// The edges of one edge set grouped by receiver, as host index arrays: the edges into
/// receiver `r` are `edge_ids[offsets[r]..offsets[r + 1]]` (COO edge ids, in COO order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrIndex {
    pub offsets: Vec<u32>,
    pub edge_ids: Vec<u32>,
}

impl CsrIndex {
    /// From the graph's CSR by receiver.
    pub fn from_csr(csr: &crate::graph::Csr) -> CsrIndex {
        CsrIndex {
            offsets: csr.offsets.clone(),
            edge_ids: csr.edge_ids.clone(),
        }
    }

    /// From COO receivers (`receivers[e]` < `n_receivers`), grouping stably.
    pub fn from_receivers(receivers: &[u32], n_receivers: usize) -> CsrIndex {
        let mut offsets = vec![0u32; n_receivers + 1];
        for &r in receivers {
            offsets[r as usize + 1] += 1;
        }
        for r in 0..n_receivers {
            offsets[r + 1] += offsets[r];
        }
        let mut next: Vec<u32> = offsets[..n_receivers].to_vec();
        let mut edge_ids = vec![0u32; receivers.len()];
        for (e, &r) in receivers.iter().enumerate() {
            edge_ids[next[r as usize] as usize] = e as u32;
            next[r as usize] += 1;
        }
        CsrIndex { offsets, edge_ids }
    }

    pub fn n_receivers(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn n_edges(&self) -> usize {
        self.edge_ids.len()
    }

    /// Host bytes of the two index arrays.
    pub fn bytes(&self) -> usize {
        4 * (self.offsets.len() + self.edge_ids.len())
    }

    /// `copies` disjoint copies (the block-diagonal batch graph): copy `b`'s receivers
    /// and edges are offset by `b * n_receivers` and `b * n_edges`.
    pub fn replicated(&self, copies: usize) -> CsrIndex {
        let (n, e) = (self.n_receivers(), self.n_edges() as u32);
        let mut offsets = Vec::with_capacity(copies * n + 1);
        let mut edge_ids = Vec::with_capacity(copies * self.n_edges());
        for b in 0..copies as u32 {
            offsets.extend(self.offsets[..n].iter().map(|&o| o + b * e));
            edge_ids.extend(self.edge_ids.iter().map(|&id| id + b * e));
        }
        offsets.push(copies as u32 * e);
        CsrIndex { offsets, edge_ids }
    }
}

/// Sender rows per edge: `[B, n_senders, F] -> [B, E, F]`.
pub fn gather_senders(edges: &EdgeTensors, nodes: &Tensor) -> Result<Tensor> {
    nodes.index_select(&edges.senders, 1)
}

/// Receiver rows per edge: `[B, n_receivers, F] -> [B, E, F]`.
pub fn gather_receivers(edges: &EdgeTensors, nodes: &Tensor) -> Result<Tensor> {
    nodes.index_select(&edges.receivers, 1)
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

/// [`sum_into_receivers`] with the [`CsrSegmentSum`] custom op (CPU only).
pub fn csr_segment_sum(edges: &EdgeTensors, messages: &Tensor) -> Result<Tensor> {
    if !messages.device().is_cpu() {
        bail!(
            "the csr aggregation has a CPU kernel only; use --aggregation index-add on {:?}",
            messages.device()
        );
    }
    let (_, e, _) = messages.dims3()?;
    if e != edges.by_receiver.n_edges() || edges.n_receivers != edges.by_receiver.n_receivers() {
        bail!(
            "csr segment sum: {e} messages for a CSR of {} edges into {} receivers (expected {})",
            edges.by_receiver.n_edges(),
            edges.by_receiver.n_receivers(),
            edges.n_receivers
        );
    }
    messages.contiguous()?.apply_op1(CsrSegmentSum {
        csr: edges.by_receiver.clone(),
        receivers: edges.receivers.clone(),
    })
}

/// The CSR segment sum `[B, E, F] -> [B, N, F]` as a candle custom op with its backward.
pub struct CsrSegmentSum {
    /// Edges grouped by receiver.
    pub csr: Arc<CsrIndex>,
    /// `[E]` U32 COO receivers, for the backward gather.
    pub receivers: Tensor,
}

impl CustomOp1 for CsrSegmentSum {
    fn name(&self) -> &'static str {
        "csr-segment-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, e, f) = layout.shape().dims3()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("csr-segment-sum needs contiguous messages");
        };
        let n = self.csr.n_receivers();
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(segment_sum(&v[start..end], b, e, f, &self.csr)),
            CpuStorage::F64(v) => CpuStorage::F64(segment_sum(&v[start..end], b, e, f, &self.csr)),
            // Half precision is summed in f32 and rounded once per output row.
            CpuStorage::BF16(v) => {
                let wide: Vec<f32> = v[start..end].iter().map(|x| x.to_f32()).collect();
                let sum = segment_sum(&wide, b, e, f, &self.csr);
                CpuStorage::BF16(sum.into_iter().map(half::bf16::from_f32).collect())
            }
            CpuStorage::F16(v) => {
                let wide: Vec<f32> = v[start..end].iter().map(|x| x.to_f32()).collect();
                let sum = segment_sum(&wide, b, e, f, &self.csr);
                CpuStorage::F16(sum.into_iter().map(half::f16::from_f32).collect())
            }
            other => bail!(
                "csr-segment-sum supports f32, f64, bf16 and f16, got {:?}",
                other.dtype()
            ),
        };
        Ok((out, Shape::from((b, n, f))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d out[b, r] / d msg[b, e] = 1 when receivers[e] == r: gather the gradient.
        Ok(Some(grad_res.index_select(&self.receivers, 1)?))
    }
}

/// `out[b, r, :] = sum over k in offsets[r]..offsets[r+1] of msg[b, edge_ids[k], :]`,
/// output rows handed out in chunks to candle's own CPU worker pool (the pool its
/// element-wise ops use, so no second set of threads competes for the cores).
fn segment_sum<T>(msg: &[T], b: usize, e: usize, f: usize, csr: &CsrIndex) -> Vec<T>
where
    T: Copy + Default + std::ops::AddAssign + Send + Sync,
{
    let n = csr.n_receivers();
    let rows = b * n;
    let mut out = vec![T::default(); rows * f];
    if out.is_empty() {
        return out;
    }
    let dst = RowsPtr(out.as_mut_ptr());
    let sum_rows = |range: std::ops::Range<usize>| {
        for global in range {
            let (bi, r) = (global / n, global % n);
            // SAFETY: row `global` lies inside `out` (global < rows), and the pool hands
            // every row index to exactly one call, so no two threads write the same row.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.at(global * f), f) };
            let base = bi * e * f;
            for &id in &csr.edge_ids[csr.offsets[r] as usize..csr.offsets[r + 1] as usize] {
                let src = &msg[base + id as usize * f..base + (id as usize + 1) * f];
                for (d, s) in row.iter_mut().zip(src) {
                    *d += *s;
                }
            }
        }
    };
    // Below ~64k summed values the pool's wake-up costs more than it saves.
    if csr.n_edges() * b * f < 1 << 16 {
        sum_rows(0..rows);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(rows, sum_rows);
    }
    out
}

/// The output buffer, shared with the workers that fill disjoint rows of it.
struct RowsPtr<T>(*mut T);

impl<T> RowsPtr<T> {
    /// Pointer to element `offset` (a method, so closures capture the whole wrapper).
    fn at(&self, offset: usize) -> *mut T {
        // SAFETY: callers stay within the allocation (see `segment_sum`).
        unsafe { self.0.add(offset) }
    }
}

// SAFETY: the pointer is only used to write disjoint rows while `segment_sum` holds the
// buffer; T itself is Send + Sync.
unsafe impl<T: Send> Send for RowsPtr<T> {}
unsafe impl<T: Send + Sync> Sync for RowsPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{formats::Coo, EdgeSet, EDGE_FEATURES};
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
        let set = EdgeSet::new(coo, vec![0.0; 5 * EDGE_FEATURES]);
        let dev = Device::Cpu;
        Ok(EdgeTensors {
            senders: Tensor::from_slice(set.senders(), 5, &dev)?,
            receivers: Tensor::from_slice(set.receivers(), 5, &dev)?,
            features: Tensor::zeros((5, EDGE_FEATURES), DType::F64, &dev)?,
            n_senders: 3,
            n_receivers: 4,
            by_receiver: Arc::new(CsrIndex::from_csr(&set.by_receiver)),
            aggregation,
        })
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

    /// A random graph with `n` receivers (some without edges) and `e` edges.
    fn random_edges(n_senders: usize, n: usize, e: usize, seed: u64) -> Result<EdgeTensors> {
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
        let set = EdgeSet::new(coo, vec![0.0; e * EDGE_FEATURES]);
        let dev = Device::Cpu;
        Ok(EdgeTensors {
            senders: Tensor::from_slice(set.senders(), e, &dev)?,
            receivers: Tensor::from_slice(set.receivers(), e, &dev)?,
            features: Tensor::zeros((e, EDGE_FEATURES), DType::F32, &dev)?,
            n_senders,
            n_receivers: n,
            by_receiver: Arc::new(CsrIndex::from_csr(&set.by_receiver)),
            aggregation: Aggregation::Csr,
        })
    }

    #[test]
    fn csr_forward_equals_index_add() -> Result<()> {
        // Enough values (3 x 4000 x 8 > 2^16) that the parallel path runs.
        let e = random_edges(300, 500, 4000, 7)?;
        for dtype in [DType::F64, DType::F32] {
            let m = random_tensor(&[3, 4000, 8], dtype, 8)?;
            let a = index_add_sum(&e, &m)?.to_dtype(DType::F64)?;
            let c = csr_segment_sum(&e, &m)?.to_dtype(DType::F64)?;
            assert_eq!(c.dims(), &[3, 500, 8]);
            let diff = (&a - &c)?.abs()?.max_all()?.to_scalar::<f64>()?;
            let scale = a.abs()?.max_all()?.to_scalar::<f64>()?;
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
            assert!(diff <= tol * scale, "{dtype:?}: {diff} vs scale {scale}");
            // Receivers without edges are zero.
            let last = c.narrow(1, 498, 2)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert_eq!(last, 0.0);
        }
        // A non-contiguous input (a transposed view) gives the same sum.
        let t = random_tensor(&[3, 8, 4000], DType::F64, 9)?.transpose(1, 2)?;
        let a = index_add_sum(&e, &t)?;
        let c = csr_segment_sum(&e, &t)?;
        assert!((a - c)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        Ok(())
    }

    #[test]
    fn csr_backward_is_the_receiver_gather() -> Result<()> {
        let e = random_edges(30, 40, 200, 3)?;
        let m = Var::from_tensor(&random_tensor(&[2, 200, 3], DType::F64, 4)?)?;
        let r = random_tensor(&[2, 40, 3], DType::F64, 5)?;
        let g_csr = (csr_segment_sum(&e, m.as_tensor())? * &r)?
            .sum_all()?
            .backward()?;
        let g_add = (index_add_sum(&e, m.as_tensor())? * &r)?
            .sum_all()?
            .backward()?;
        let a = g_csr.get(m.as_tensor()).unwrap();
        let b = g_add.get(m.as_tensor()).unwrap();
        assert_eq!(a.to_vec3::<f64>()?, b.to_vec3::<f64>()?);
        Ok(())
    }

    #[test]
    fn csr_index_from_receivers_and_replicated() {
        let c = CsrIndex::from_receivers(&[1, 0, 1, 1, 2], 4);
        assert_eq!(c.offsets, vec![0, 1, 4, 5, 5]);
        assert_eq!(c.edge_ids, vec![1, 0, 2, 3, 4]);
        let r = c.replicated(2);
        assert_eq!(r.offsets, vec![0, 1, 4, 5, 5, 6, 9, 10, 10]);
        assert_eq!(r.edge_ids, vec![1, 0, 2, 3, 4, 6, 5, 7, 8, 9]);
        let rec: Vec<u32> = [1u32, 0, 1, 1, 2, 5, 4, 5, 5, 6].to_vec();
        assert_eq!(CsrIndex::from_receivers(&rec, 8), r);
    }

    #[test]
    fn aggregation_names() {
        assert_eq!(
            serde_json::to_string(&Aggregation::IndexAdd).unwrap(),
            "\"indexadd\""
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
    }
}
