//! The first layer of an edge MLP, `e W_e^T + s[senders] + r[receivers]`, as one op
//! that keeps no edge-sized tensor but its output.
//!
//! Under the concat trick the sender and receiver parts are projected per node and
//! gathered ([`gather_sum`]), but the edge part `e W_e^T` is still a `[B, E, L]` product
//! that the backward pass of the gather-sum keeps alive. [`EdgeInputOp`] forms the sum
//! in one output buffer (the gathered node rows first, then the product accumulated
//! onto them by `gemm`), keeps `e` (the previous block's output, alive anyway) and
//! recomputes nothing: its backward needs only `e`, `W_e` and the output gradient.
//!
//! The fused op is for f32 and f64 on the CPU with the csr aggregation; elsewhere
//! [`edge_input`] composes the product and [`gather_sum`].

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use candle_nn::{Linear, Module};

use super::aggregate::{gather_sum, host_index, segment_sum, Aggregation};
use super::dense::{gemm_accumulate, runs_fused};
use super::graph_tensors::EdgeTensors;
use super::row_kernels::{contiguous_values, fill_rows, KernelFloat};

/// `e W^T + s[:, senders] + r[:, receivers]` for edge latents `e` `[B|1, E, in]`, the
/// edge block `weight` `[out, in]` of the first layer, and node projections `s`
/// `[B|1, n_senders, out]` and `r` `[B|1, n_receivers, out]` (batch 1 broadcasts):
/// `[B, E, out]`.
pub fn edge_input(
    edges: &EdgeTensors,
    e: &Tensor,
    weight: &Tensor,
    s: &Tensor,
    r: &Tensor,
) -> Result<Tensor> {
    if !fused(edges, e, &[weight, s, r]) {
        let projected = Linear::new(weight.clone(), None).forward(e)?;
        return gather_sum(edges, &projected, s, r);
    }
    // Sender and receiver projections stacked on the node axis, at one batch size.
    let batch = s.dim(0)?.max(r.dim(0)?);
    let nodes = Tensor::cat(
        &[
            s.broadcast_as((batch, s.dim(1)?, s.dim(2)?))?,
            r.broadcast_as((batch, r.dim(1)?, r.dim(2)?))?,
        ],
        1,
    )?;
    apply(edges, e, weight, &nodes, NodeLayout::Stacked)
}

/// [`edge_input`] on an edge set whose senders and receivers are the same nodes, with
/// both projections of those nodes side by side: `sr` `[B|1, n, 2 out]`, the sender
/// projection in the first `out` columns. One product of the nodes with both weight
/// blocks makes `sr`, so no stacked copy is formed.
pub fn edge_input_same_nodes(
    edges: &EdgeTensors,
    e: &Tensor,
    weight: &Tensor,
    sr: &Tensor,
) -> Result<Tensor> {
    if !fused(edges, e, &[weight, sr]) {
        let out = weight.dim(0)?;
        let projected = Linear::new(weight.clone(), None).forward(e)?;
        return gather_sum(
            edges,
            &projected,
            &sr.narrow(2, 0, out)?.contiguous()?,
            &sr.narrow(2, out, out)?.contiguous()?,
        );
    }
    apply(edges, e, weight, &sr.contiguous()?, NodeLayout::SideBySide)
}

/// Whether the fused op applies: csr, on the CPU, f32 or f64 throughout.
fn fused(edges: &EdgeTensors, e: &Tensor, others: &[&Tensor]) -> bool {
    edges.aggregation == Aggregation::Csr && runs_fused(e, others)
}

fn apply(
    edges: &EdgeTensors,
    e: &Tensor,
    weight: &Tensor,
    nodes: &Tensor,
    layout: NodeLayout,
) -> Result<Tensor> {
    e.contiguous()?.apply_op3(
        &weight.contiguous()?,
        nodes,
        EdgeInputOp {
            edges: edges.clone(),
            layout,
        },
    )
}

/// Where the sender and receiver projections sit in [`EdgeInputOp`]'s node operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLayout {
    /// `[B|1, n_senders + n_receivers, out]`: the senders' rows, then the receivers'.
    Stacked,
    /// `[B|1, n, 2 out]`: one node set, sender projection then receiver projection.
    SideBySide,
}

/// See [`edge_input`]; its arguments are `e`, `weight` and the node projections in
/// `layout`.
pub struct EdgeInputOp {
    pub edges: EdgeTensors,
    pub layout: NodeLayout,
}

/// Sizes of one [`EdgeInputOp`] call.
struct Sizes {
    batch: usize,
    e_batched: bool,
    nodes_batched: bool,
    /// Rows and values per row of the node operand.
    node_rows: usize,
    node_width: usize,
    edges: usize,
    inputs: usize,
    outputs: usize,
}

impl EdgeInputOp {
    fn sizes(&self, e: &Layout, weight: &Layout, nodes: &Layout) -> Result<Sizes> {
        let (be, n_e, inputs) = e.shape().dims3()?;
        let (outputs, w_in) = weight.shape().dims2()?;
        let (bn, n_nodes, width) = nodes.shape().dims3()?;
        let batch = be.max(bn);
        let (ns, nr) = (self.edges.n_senders, self.edges.n_receivers);
        let nodes_fit = match self.layout {
            NodeLayout::Stacked => n_nodes == ns + nr && width == outputs,
            NodeLayout::SideBySide => n_nodes == ns && n_nodes == nr && width == 2 * outputs,
        };
        if n_e != self.edges.len()
            || w_in != inputs
            || !nodes_fit
            || (be != batch && be != 1)
            || (bn != batch && bn != 1)
        {
            bail!(
                "edge input: edges {:?}, weight {:?}, nodes {:?} for a graph of {} edges",
                e.shape(),
                weight.shape(),
                nodes.shape(),
                self.edges.len()
            );
        }
        Ok(Sizes {
            batch,
            e_batched: be == batch && batch > 1,
            nodes_batched: bn == batch && batch > 1,
            node_rows: n_nodes,
            node_width: width,
            edges: n_e,
            inputs,
            outputs,
        })
    }

    fn forward<T: KernelFloat>(
        &self,
        z: &Sizes,
        e: &[T],
        weight: &[T],
        nodes: &[T],
    ) -> Result<Vec<T>> {
        let senders = host_index(&self.edges.senders)?;
        let receivers = host_index(&self.edges.receivers)?;
        let f = z.outputs;
        // Receiver k's projection: rows after the senders' (stacked) or columns after
        // the sender projection (side by side).
        let (receiver_row, receiver_col) = match self.layout {
            NodeLayout::Stacked => (self.edges.n_senders, 0),
            NodeLayout::SideBySide => (0, f),
        };
        let width = z.node_width;
        let len = z.batch * z.edges * f;
        let mut out = vec![T::zero(); len];
        fill_rows(&mut out, f, len, |row, dst| {
            let (b, k) = (row / z.edges, row % z.edges);
            let base = if z.nodes_batched { b * z.node_rows } else { 0 };
            let s0 = (base + senders[k] as usize) * width;
            let r0 = (base + receiver_row + receivers[k] as usize) * width + receiver_col;
            for ((d, &s), &r) in dst.iter_mut().zip(&nodes[s0..s0 + f]).zip(&nodes[r0..]) {
                *d = s + r;
            }
        });
        if z.e_batched || z.batch == 1 {
            gemm_accumulate(&mut out, e, weight, z.inputs, f);
        } else {
            for chunk in out.chunks_mut(z.edges * f) {
                gemm_accumulate(chunk, e, weight, z.inputs, f);
            }
        }
        Ok(out)
    }
}

impl CustomOp3 for EdgeInputOp {
    fn name(&self) -> &'static str {
        "meshcast-edge-input"
    }

    fn cpu_fwd(
        &self,
        e: &CpuStorage,
        e_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        nodes: &CpuStorage,
        nodes_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = self.sizes(e_layout, weight_layout, nodes_layout)?;
        macro_rules! run {
            ($t:ty, $variant:ident) => {
                CpuStorage::$variant(self.forward::<$t>(
                    &z,
                    contiguous_values(e, e_layout, "edge input")?,
                    contiguous_values(weight, weight_layout, "edge input")?,
                    contiguous_values(nodes, nodes_layout, "edge input")?,
                )?)
            };
        }
        let out = match e.dtype() {
            DType::F32 => run!(f32, F32),
            DType::F64 => run!(f64, F64),
            other => bail!("edge input: f32 or f64, got {other:?}"),
        };
        Ok((out, Shape::from((z.batch, z.edges, z.outputs))))
    }

    fn bwd(
        &self,
        e: &Tensor,
        weight: &Tensor,
        nodes: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // On detached tensors, so that no gradient keeps this step's graph alive.
        let (e, weight, grad) = (e.detach(), weight.detach(), grad.detach());
        let (outputs, inputs) = weight.dims2()?;
        // An operand broadcast over the batch gets the batch's summed gradient.
        let fold = |g: &Tensor, operand: &Tensor| -> Result<Tensor> {
            if operand.dim(0)? == 1 && g.dim(0)? > 1 {
                g.sum_keepdim(0)
            } else {
                Ok(g.clone())
            }
        };
        let g_e = fold(&grad, &e)?;
        let rows = |t: &Tensor, width: usize| t.reshape(((), width));
        let de = rows(&g_e, outputs)?.matmul(&weight)?.reshape(e.shape())?;
        let dweight = rows(&g_e, outputs)?.t()?.matmul(&rows(&e, inputs)?)?;
        drop(g_e);
        let ds = segment_sum(&grad, &self.edges.senders, &self.edges.by_sender)?;
        let dr = segment_sum(&grad, &self.edges.receivers, &self.edges.by_receiver)?;
        let axis = match self.layout {
            NodeLayout::Stacked => 1,
            NodeLayout::SideBySide => 2,
        };
        let dnodes = fold(&Tensor::cat(&[ds, dr], axis)?, nodes)?;
        Ok((Some(de), Some(dweight), Some(dnodes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph_tensors::GraphTensors;
    use crate::model::testing::{random_tensor, tiny_graph};
    use candle_core::{Device, Var};

    /// The fused op against the composed product and gather-sum, forward and every
    /// gradient, for edge latents that broadcast over the batch and ones that do not,
    /// and node projections of batch 1 and 3.
    #[test]
    fn equals_the_composed_layer_with_gradients() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(2), &Device::Cpu, DType::F64)?
            .with_aggregation(Aggregation::Csr);
        let edges = &graph.mesh;
        let n = graph.mesh_nodes.count;
        for (be, bs, br) in [(1, 3, 3), (3, 3, 1), (3, 1, 1)] {
            let e = Var::from_tensor(&random_tensor(&[be, edges.len(), 5], DType::F64, 1)?)?;
            let w = Var::from_tensor(&random_tensor(&[6, 5], DType::F64, 2)?)?;
            let s = Var::from_tensor(&random_tensor(&[bs, n, 6], DType::F64, 3)?)?;
            let r = Var::from_tensor(&random_tensor(&[br, n, 6], DType::F64, 4)?)?;
            let fused = edge_input(edges, &e, &w, &s, &r)?;
            let projected = Linear::new(w.as_tensor().clone(), None).forward(&e)?;
            let composed = gather_sum(edges, &projected, &s, &r)?;
            assert_eq!(fused.dims(), &[3, edges.len(), 6]);
            let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "forward {diff}");
            let weights = random_tensor(fused.dims(), DType::F64, 5)?;
            let g = (fused * &weights)?.sum_all()?.backward()?;
            let g_ref = (composed * &weights)?.sum_all()?.backward()?;
            for v in [&e, &w, &s, &r] {
                let mine = g.get(v.as_tensor()).expect("a gradient");
                assert!(!mine.track_op(), "the gradient holds the graph");
                assert_eq!(mine.dims(), v.dims());
                let theirs = g_ref.get(v.as_tensor()).expect("a gradient");
                let d = (mine - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(d < 1e-12, "({be}, {bs}, {br}): gradient {d}");
            }
        }
        Ok(())
    }

    /// The side-by-side layout of one node set against the composed layer.
    #[test]
    fn same_nodes_equals_the_composed_layer_with_gradients() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(2), &Device::Cpu, DType::F64)?
            .with_aggregation(Aggregation::Csr);
        let edges = &graph.mesh;
        let n = graph.mesh_nodes.count;
        for (be, bn) in [(1, 3), (3, 3), (3, 1)] {
            let e = Var::from_tensor(&random_tensor(&[be, edges.len(), 5], DType::F64, 1)?)?;
            let w = Var::from_tensor(&random_tensor(&[6, 5], DType::F64, 2)?)?;
            let sr = Var::from_tensor(&random_tensor(&[bn, n, 12], DType::F64, 3)?)?;
            let fused = edge_input_same_nodes(edges, &e, &w, &sr)?;
            let projected = Linear::new(w.as_tensor().clone(), None).forward(&e)?;
            let (s, r) = (sr.narrow(2, 0, 6)?, sr.narrow(2, 6, 6)?);
            let composed = gather_sum(edges, &projected, &s, &r)?;
            let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "forward {diff}");
            let weights = random_tensor(fused.dims(), DType::F64, 5)?;
            let g = (fused * &weights)?.sum_all()?.backward()?;
            let g_ref = (composed * &weights)?.sum_all()?.backward()?;
            for v in [&e, &w, &sr] {
                let mine = g.get(v.as_tensor()).expect("a gradient");
                assert_eq!(mine.dims(), v.dims());
                let theirs = g_ref.get(v.as_tensor()).expect("a gradient");
                let d = (mine - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(d < 1e-12, "({be}, {bn}): gradient {d}");
            }
        }
        Ok(())
    }
}
