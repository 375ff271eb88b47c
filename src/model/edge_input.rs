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
//! The fused op is for f32 and f64 on the CPU with the csr aggregation, and for every
//! float dtype on CUDA under `--cuda-fused-ops` (the product from cuBLAS, then one
//! kernel adds the gathered node rows, src/model/kernels/edge_input.cu); elsewhere
//! [`edge_input`] composes the product and [`gather_sum`].

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use candle_nn::{Linear, Module};

use super::aggregate::{gather_sum, host_index, segment_sum, Aggregation};
use super::dense::{dense_runs_fused, gemm_accumulate};
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
    fused_edge_input(edges, e, weight, (s, r))
}

/// [`edge_input`] as [`EdgeInputOp`], on any device that runs it.
fn fused_edge_input(
    edges: &EdgeTensors,
    e: &Tensor,
    weight: &Tensor,
    (s, r): (&Tensor, &Tensor),
) -> Result<Tensor> {
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

/// Whether the fused op applies: csr, with the dense op's rule (the CPU in f32 or
/// f64, CUDA under `--cuda-fused-ops`), one dtype throughout.
fn fused(edges: &EdgeTensors, e: &Tensor, others: &[&Tensor]) -> bool {
    edges.aggregation == Aggregation::Csr && dense_runs_fused(e, others)
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
    /// Where receiver k's projection starts in the node operand, `(row, column)` before
    /// k's own row: after the senders' rows (stacked) or after the sender projection's
    /// `outputs` columns (side by side).
    fn receiver_offset(&self, outputs: usize) -> (usize, usize) {
        match self.layout {
            NodeLayout::Stacked => (self.edges.n_senders, 0),
            NodeLayout::SideBySide => (0, outputs),
        }
    }

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
        let (receiver_row, receiver_col) = self.receiver_offset(f);
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

    /// The edge product from cuBLAS, then one kernel that adds the gathered node rows
    /// into the output; the product is freed on return.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        e: &candle_core::CudaStorage,
        e_layout: &Layout,
        weight: &candle_core::CudaStorage,
        weight_layout: &Layout,
        nodes: &candle_core::CudaStorage,
        nodes_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let z = self.sizes(e_layout, weight_layout, nodes_layout)?;
        if !(e_layout.is_contiguous() && weight_layout.is_contiguous()) {
            bail!("edge input: contiguous operands only")
        }
        let e_rows = e_layout.shape().elem_count() / z.inputs.max(1);
        let e_layout = Layout::contiguous_with_offset((e_rows, z.inputs), e_layout.start_offset());
        let product = super::dense::backend_product(
            (e, &e_layout),
            (weight, weight_layout),
            (e_rows, z.inputs, z.outputs),
        )?;
        let out = cuda::gather(self, &z, &product, (nodes, nodes_layout))?;
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

/// The CUDA side of [`EdgeInputOp`]: src/model/kernels/edge_input.cu, compiled to PTX by
/// build.rs.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{bail, Context, CudaStorage, DType, Layout, Result};

    use super::{EdgeInputOp, Sizes};
    use crate::model::row_kernels::launch_config;

    const THREADS: u32 = 256;
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/edge_input.ptx"));

    /// `product` (`[B|1 x E, out]`, contiguous) plus the gathered rows of `nodes`, as
    /// [`EdgeInputOp`]'s CPU forward adds them: `[B, E, out]`.
    pub(super) fn gather(
        op: &EdgeInputOp,
        z: &Sizes,
        product: &CudaStorage,
        (nodes, nodes_layout): (&CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let (n0, n1) = nodes_layout
            .contiguous_offsets()
            .context("edge input needs contiguous node projections")?;
        let (receiver_row, receiver_col) = op.receiver_offset(z.outputs);
        let dims = [
            z.batch,
            z.edges,
            z.outputs,
            z.e_batched as usize,
            z.nodes_batched as usize,
            z.node_rows,
            z.node_width,
            receiver_row,
            receiver_col,
        ]
        .map(|d| d as u32);
        let total = z.batch * z.edges * z.outputs;
        let dev = &product.device;
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let p = product.as_cuda_slice::<$t>()?;
                let n = nodes.as_cuda_slice::<$t>()?.slice(n0..n1);
                // SAFETY: the kernel writes every one of the `total` values.
                let out = unsafe { dev.alloc::<$t>(total)? };
                let func = dev.get_or_load_custom_func($kernel, "meshcast_edge_input", PTX)?;
                op.edges
                    .with_cuda_indices("edge input", |senders, receivers| {
                        let mut launch = func.builder();
                        launch.arg(p);
                        launch.arg(&n);
                        launch.arg(senders);
                        launch.arg(receivers);
                        launch.arg(&out);
                        for d in &dims {
                            launch.arg(d);
                        }
                        let config = launch_config(total.div_ceil(THREADS as usize), THREADS);
                        // SAFETY: argument types and order match the kernel's signature.
                        unsafe { launch.launch(config) }.w()
                    })?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        Ok(match product.dtype() {
            DType::F32 => launch!(f32, "edge_input_gather_f32"),
            DType::F64 => launch!(f64, "edge_input_gather_f64"),
            DType::BF16 => launch!(half::bf16, "edge_input_gather_bf16"),
            DType::F16 => launch!(half::f16, "edge_input_gather_f16"),
            other => bail!("edge input of {other:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph_tensors::GraphTensors;
    use crate::model::testing::{random_tensor, test_device, tiny_graph};
    use candle_core::{Device, Var};

    /// The op on `device` in its dtypes (CPU: f64; CUDA: f32 and bf16), with the
    /// composed product and gather-sum on the CPU in f64 of the same values as the
    /// reference.
    fn device_cases(device: &Device) -> Vec<(DType, f64)> {
        match device.is_cpu() {
            true => vec![(DType::F64, 1e-12)],
            false => vec![(DType::F32, 1e-5), (DType::BF16, 2e-2)],
        }
    }

    /// The largest difference relative to the largest reference value.
    fn relative(mine: &Tensor, reference: &Tensor) -> Result<f64> {
        let mine = mine.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        let d = (mine - reference)?.abs()?.max_all()?.to_scalar::<f64>()?;
        Ok(d / reference.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-300))
    }

    /// Runs `fused` on `device` and the composed layer on the CPU in f64 over `inputs`
    /// (made in f64, rounded to the device's dtype, the reference taking the rounded
    /// values), comparing the outputs and every input's gradient.
    fn check_against_composed(
        device: &Device,
        inputs: &[Tensor],
        fused: impl Fn(&GraphTensors, &[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&GraphTensors, &[Tensor]) -> Result<Tensor>,
        case: &str,
    ) -> Result<()> {
        let graph_cpu = GraphTensors::new(&tiny_graph(2), &Device::Cpu, DType::F64)?
            .with_aggregation(Aggregation::Csr);
        for (dtype, tol) in device_cases(device) {
            let graph = GraphTensors::new(&tiny_graph(2), device, dtype)?
                .with_aggregation(Aggregation::Csr);
            let mine: Vec<Var> = inputs
                .iter()
                .map(|t| Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?))
                .collect::<Result<_>>()?;
            let exact: Vec<Var> = mine
                .iter()
                .map(|v| Var::from_tensor(&v.to_device(&Device::Cpu)?.to_dtype(DType::F64)?))
                .collect::<Result<_>>()?;
            let as_tensors = |vars: &[Var]| {
                vars.iter()
                    .map(|v| v.as_tensor().clone())
                    .collect::<Vec<_>>()
            };
            let out = fused(&graph, &as_tensors(&mine))?;
            let expected = composed(&graph_cpu, &as_tensors(&exact))?;
            assert_eq!(out.dims(), expected.dims(), "{case}");
            assert!(
                relative(&out, &expected)? < tol,
                "{case}, {dtype:?}: forward"
            );
            let weights = random_tensor(expected.dims(), DType::F64, 5)?;
            let g = (&out * weights.to_dtype(dtype)?.to_device(device)?)?
                .sum_all()?
                .backward()?;
            let g_ref = (expected * &weights)?.sum_all()?.backward()?;
            for (v, e) in mine.iter().zip(&exact) {
                let grad = g.get(v.as_tensor()).expect("a gradient");
                assert!(!grad.track_op(), "{case}: the gradient holds the graph");
                assert_eq!(grad.dims(), v.dims());
                let expected = g_ref.get(e.as_tensor()).expect("a gradient");
                assert!(
                    relative(grad, expected)? < 4.0 * tol,
                    "{case}, {dtype:?}: gradient"
                );
            }
        }
        Ok(())
    }

    /// The fused op against the composed product and gather-sum, forward and every
    /// gradient, for edge latents that broadcast over the batch and ones that do not,
    /// and node projections of batch 1 and 3.
    fn equals_the_composed_layer_with_gradients(device: &Device) -> Result<()> {
        let graph = tiny_graph(2);
        let (edges, n) = (graph.mesh.len(), graph.mesh_nodes.len());
        for (be, bs, br) in [(1, 3, 3), (3, 3, 1), (3, 1, 1)] {
            let inputs = [
                random_tensor(&[be, edges, 5], DType::F64, 1)?,
                random_tensor(&[6, 5], DType::F64, 2)?,
                random_tensor(&[bs, n, 6], DType::F64, 3)?,
                random_tensor(&[br, n, 6], DType::F64, 4)?,
            ];
            check_against_composed(
                device,
                &inputs,
                |g, t| fused_edge_input(&g.mesh, &t[0], &t[1], (&t[2], &t[3])),
                |g, t| {
                    let projected = Linear::new(t[1].clone(), None).forward(&t[0])?;
                    gather_sum(&g.mesh, &projected, &t[2], &t[3])
                },
                &format!("stacked ({be}, {bs}, {br})"),
            )?;
        }
        Ok(())
    }

    /// The side-by-side layout of one node set against the composed layer.
    fn same_nodes_equals_the_composed_layer_with_gradients(device: &Device) -> Result<()> {
        let graph = tiny_graph(2);
        let (edges, n) = (graph.mesh.len(), graph.mesh_nodes.len());
        for (be, bn) in [(1, 3), (3, 3), (3, 1)] {
            let inputs = [
                random_tensor(&[be, edges, 5], DType::F64, 1)?,
                random_tensor(&[6, 5], DType::F64, 2)?,
                random_tensor(&[bn, n, 12], DType::F64, 3)?,
            ];
            check_against_composed(
                device,
                &inputs,
                |g, t| {
                    apply(
                        &g.mesh,
                        &t[0],
                        &t[1],
                        &t[2].contiguous()?,
                        NodeLayout::SideBySide,
                    )
                },
                |g, t| {
                    let projected = Linear::new(t[1].clone(), None).forward(&t[0])?;
                    let (s, r) = (t[2].narrow(2, 0, 6)?, t[2].narrow(2, 6, 6)?);
                    gather_sum(&g.mesh, &projected, &s, &r)
                },
                &format!("side by side ({be}, {bn})"),
            )?;
        }
        Ok(())
    }

    test_device!(
        equals_the_composed_layer_with_gradients,
        equals_the_composed_layer_with_gradients_cpu,
        equals_the_composed_layer_with_gradients_cuda
    );
    test_device!(
        same_nodes_equals_the_composed_layer_with_gradients,
        same_nodes_equals_the_composed_layer_with_gradients_cpu,
        same_nodes_equals_the_composed_layer_with_gradients_cuda
    );
}
