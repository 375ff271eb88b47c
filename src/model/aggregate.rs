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
//!   endpoint ([`Grouping`]): the sum into receivers walks the edges grouped by
//!   receiver (CSR), and a gather's backward sums the edge gradients into their
//!   senders (CSC) or receivers (CSR). Every output row is written by one thread (CPU:
//!   candle's worker pool; CUDA: src/model/segment_sum.cu), with no atomics and no
//!   scatter, and within a group edges are added in COO order, as `index_add` adds them.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, Context, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

/// The strategy these functions switch on (defined with the edge tensors it selects).
pub use super::graph_tensors::Aggregation;
use super::graph_tensors::{EdgeTensors, Grouping};
use super::row_kernels::{contiguous_values, fill_rows};

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

/// Sums the rows of `messages` `[B, E, F]` into the groups of `grouping`:
/// `[B, groups, F]`. `endpoint[e]` is edge `e`'s group (for the backward gather).
pub(crate) fn segment_sum(
    messages: &Tensor,
    endpoint: &Tensor,
    grouping: &Grouping,
) -> Result<Tensor> {
    let (_, e, _) = messages.dims3()?;
    if e != grouping.n_edges() {
        bail!(
            "segment sum: {e} messages for a grouping of {} edges",
            grouping.n_edges()
        );
    }
    messages.contiguous()?.apply_op3(
        &grouping.offsets,
        &grouping.edge_ids,
        SegmentSum {
            endpoint: endpoint.clone(),
        },
    )
}

/// `nodes[:, ids, :]` whose backward is the segment sum over `grouping` (the edges
/// grouped by `ids`), instead of `index_add`.
fn grouped_gather(nodes: &Tensor, ids: &Tensor, grouping: &Grouping) -> Result<Tensor> {
    nodes.apply_op2(
        ids,
        GroupedGather {
            grouping: grouping.clone(),
        },
    )
}

/// The segment sum `[B, E, F] -> [B, groups, F]` as a candle custom op with its
/// backward; its arguments are the messages, the group offsets and the grouped edge ids.
pub struct SegmentSum {
    /// `[E]` U32: each edge's group, for the backward gather.
    pub endpoint: Tensor,
}

impl CustomOp3 for SegmentSum {
    fn name(&self) -> &'static str {
        "csr-segment-sum"
    }

    fn cpu_fwd(
        &self,
        msg: &CpuStorage,
        msg_layout: &Layout,
        offsets: &CpuStorage,
        offsets_layout: &Layout,
        edge_ids: &CpuStorage,
        edge_ids_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, e, f) = msg_layout.shape().dims3()?;
        let (start, end) = msg_layout
            .contiguous_offsets()
            .context("csr-segment-sum needs contiguous messages")?;
        let offsets = contiguous_values::<u32>(offsets, offsets_layout, "segment sum offsets")?;
        let edge_ids = contiguous_values::<u32>(edge_ids, edge_ids_layout, "segment sum edge ids")?;
        let groups = offsets.len() - 1;
        let sum = |msg: &[f32]| segment_sum_rows(msg, b, e, f, offsets, edge_ids);
        let out = match msg {
            CpuStorage::F32(v) => CpuStorage::F32(sum(&v[start..end])),
            CpuStorage::F64(v) => {
                CpuStorage::F64(segment_sum_rows(&v[start..end], b, e, f, offsets, edge_ids))
            }
            // Half precision is summed in f32 and rounded once per output value.
            CpuStorage::BF16(v) => {
                let wide: Vec<f32> = v[start..end].iter().map(|x| x.to_f32()).collect();
                CpuStorage::BF16(sum(&wide).into_iter().map(half::bf16::from_f32).collect())
            }
            CpuStorage::F16(v) => {
                let wide: Vec<f32> = v[start..end].iter().map(|x| x.to_f32()).collect();
                CpuStorage::F16(sum(&wide).into_iter().map(half::f16::from_f32).collect())
            }
            other => bail!(
                "csr-segment-sum supports f32, f64, bf16 and f16, got {:?}",
                other.dtype()
            ),
        };
        Ok((out, Shape::from((b, groups, f))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        msg: &candle_core::CudaStorage,
        msg_layout: &Layout,
        offsets: &candle_core::CudaStorage,
        offsets_layout: &Layout,
        edge_ids: &candle_core::CudaStorage,
        edge_ids_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::segment_sum(
            msg,
            msg_layout,
            offsets,
            offsets_layout,
            edge_ids,
            edge_ids_layout,
        )
    }

    fn bwd(
        &self,
        _msg: &Tensor,
        _offsets: &Tensor,
        _edge_ids: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // d out[b, g] / d msg[b, e] = 1 when endpoint[e] == g: gather the gradient.
        Ok((Some(grad_res.index_select(&self.endpoint, 1)?), None, None))
    }
}

/// `index_select` along dimension 1 whose backward is a [`SegmentSum`] over the edges
/// grouped by the gathered index; its arguments are the nodes and the index.
pub struct GroupedGather {
    pub grouping: Grouping,
}

impl CustomOp2 for GroupedGather {
    fn name(&self) -> &'static str {
        "grouped-gather"
    }

    fn cpu_fwd(
        &self,
        nodes: &CpuStorage,
        nodes_layout: &Layout,
        ids: &CpuStorage,
        ids_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = gathered_shape(nodes_layout, ids_layout)?;
        Ok((nodes.index_select(ids, nodes_layout, ids_layout, 1)?, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        nodes: &candle_core::CudaStorage,
        nodes_layout: &Layout,
        ids: &candle_core::CudaStorage,
        ids_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = gathered_shape(nodes_layout, ids_layout)?;
        Ok((nodes.index_select(ids, nodes_layout, ids_layout, 1)?, shape))
    }

    fn bwd(
        &self,
        _nodes: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(segment_sum(grad_res, ids, &self.grouping)?), None))
    }
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

/// See [`gather_sum`]; its arguments are `e`, `s` and `r`.
pub struct GatherSum {
    pub edges: EdgeTensors,
}

/// Batch and per-input batchedness of a [`GatherSum`] call, checked.
#[derive(Clone, Copy)]
struct GatherSumShape {
    batch: usize,
    edges: usize,
    features: usize,
    batched: [bool; 3],
}

impl GatherSum {
    fn shape(&self, e: &Layout, s: &Layout, r: &Layout) -> Result<GatherSumShape> {
        let (be, n_e, f) = e.shape().dims3()?;
        let (bs, n_s, fs) = s.shape().dims3()?;
        let (br, n_r, fr) = r.shape().dims3()?;
        let batch = be.max(bs).max(br);
        let ok_batch = |b: usize| b == 1 || b == batch;
        if n_e != self.edges.len()
            || n_s != self.edges.n_senders
            || n_r != self.edges.n_receivers
            || fs != f
            || fr != f
            || !(ok_batch(be) && ok_batch(bs) && ok_batch(br))
        {
            bail!(
                "gather-sum: edges {:?}, senders {:?}, receivers {:?} for a graph of {} edges, {} senders, {} receivers",
                e.shape(),
                s.shape(),
                r.shape(),
                self.edges.len(),
                self.edges.n_senders,
                self.edges.n_receivers
            );
        }
        Ok(GatherSumShape {
            batch,
            edges: n_e,
            features: f,
            batched: [
                be == batch && batch > 1,
                bs == batch && batch > 1,
                br == batch && batch > 1,
            ],
        })
    }
}

/// The values of a U32 index tensor on the CPU.
pub(crate) fn host_index(t: &Tensor) -> Result<Vec<u32>> {
    t.to_vec1::<u32>()
}

impl CustomOp3 for GatherSum {
    fn name(&self) -> &'static str {
        "gather-sum"
    }

    fn cpu_fwd(
        &self,
        e: &CpuStorage,
        e_layout: &Layout,
        s: &CpuStorage,
        s_layout: &Layout,
        r: &CpuStorage,
        r_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = self.shape(e_layout, s_layout, r_layout)?;
        let senders = host_index(&self.edges.senders)?;
        let receivers = host_index(&self.edges.receivers)?;
        let run = GatherSumRows {
            shape: &shape,
            senders: &senders,
            receivers: &receivers,
            n_senders: self.edges.n_senders,
            n_receivers: self.edges.n_receivers,
        };
        macro_rules! run {
            ($t:ty, $variant:ident) => {
                CpuStorage::$variant(run.run::<$t>(
                    contiguous_values(e, e_layout, "gather-sum")?,
                    contiguous_values(s, s_layout, "gather-sum")?,
                    contiguous_values(r, r_layout, "gather-sum")?,
                ))
            };
        }
        let out = match e.dtype() {
            DType::F32 => run!(f32, F32),
            DType::F64 => run!(f64, F64),
            DType::BF16 => run!(half::bf16, BF16),
            DType::F16 => run!(half::f16, F16),
            other => bail!("gather-sum: inputs of one float dtype, got {other:?}"),
        };
        Ok((out, Shape::from((shape.batch, shape.edges, shape.features))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        e: &candle_core::CudaStorage,
        e_layout: &Layout,
        s: &candle_core::CudaStorage,
        s_layout: &Layout,
        r: &candle_core::CudaStorage,
        r_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(e_layout, s_layout, r_layout)?;
        let out = cuda::gather_sum(
            [(e, e_layout), (s, s_layout), (r, r_layout)],
            &self.edges,
            &shape,
        )?;
        Ok((out, Shape::from((shape.batch, shape.edges, shape.features))))
    }

    fn bwd(
        &self,
        e: &Tensor,
        s: &Tensor,
        r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach();
        // An input broadcast over the batch gets the batch's summed gradient.
        let fold = |g: Tensor, input: &Tensor| -> Result<Tensor> {
            if input.dim(0)? == 1 && g.dim(0)? > 1 {
                g.sum_keepdim(0)
            } else {
                Ok(g)
            }
        };
        let de = fold(grad.clone(), e)?;
        let ds = fold(
            segment_sum(&grad, &self.edges.senders, &self.edges.by_sender)?,
            s,
        )?;
        let dr = fold(
            segment_sum(&grad, &self.edges.receivers, &self.edges.by_receiver)?,
            r,
        )?;
        Ok((Some(de), Some(ds), Some(dr)))
    }
}

/// One [`GatherSum`] on the CPU: output rows (batch, edge) in parallel.
struct GatherSumRows<'a> {
    shape: &'a GatherSumShape,
    senders: &'a [u32],
    receivers: &'a [u32],
    n_senders: usize,
    n_receivers: usize,
}

/// A float element the CPU kernels add in f32 (f64 for f64).
trait Summand: Copy + Default + Send + Sync {
    fn add3(a: Self, b: Self, c: Self) -> Self;
}

impl Summand for f32 {
    fn add3(a: f32, b: f32, c: f32) -> f32 {
        a + b + c
    }
}

impl Summand for f64 {
    fn add3(a: f64, b: f64, c: f64) -> f64 {
        a + b + c
    }
}

impl Summand for half::bf16 {
    fn add3(a: Self, b: Self, c: Self) -> Self {
        half::bf16::from_f32(a.to_f32() + b.to_f32() + c.to_f32())
    }
}

impl Summand for half::f16 {
    fn add3(a: Self, b: Self, c: Self) -> Self {
        half::f16::from_f32(a.to_f32() + b.to_f32() + c.to_f32())
    }
}

impl GatherSumRows<'_> {
    fn run<T: Summand>(&self, e: &[T], s: &[T], r: &[T]) -> Vec<T> {
        let GatherSumShape {
            batch,
            edges,
            features: f,
            batched: [eb, sb, rb],
        } = *self.shape;
        let mut out = vec![T::default(); batch * edges * f];
        fill_rows(&mut out, f, batch * edges * f, |row, dst| {
            let (b, k) = (row / edges, row % edges);
            let e0 = (if eb { b * edges } else { 0 } + k) * f;
            let s0 = (if sb { b * self.n_senders } else { 0 } + self.senders[k] as usize) * f;
            let r0 = (if rb { b * self.n_receivers } else { 0 } + self.receivers[k] as usize) * f;
            for (j, d) in dst.iter_mut().enumerate() {
                *d = T::add3(e[e0 + j], s[s0 + j], r[r0 + j]);
            }
        });
        out
    }
}

/// `[B, N, F]` gathered by `[E]` ids: `[B, E, F]`.
fn gathered_shape(nodes: &Layout, ids: &Layout) -> Result<Shape> {
    let (b, _, f) = nodes.shape().dims3()?;
    Ok(Shape::from((b, ids.shape().dims1()?, f)))
}

/// `out[b, g, :] = sum over k in offsets[g]..offsets[g+1] of msg[b, edge_ids[k], :]`,
/// output rows filled in parallel ([`fill_rows`]).
fn segment_sum_rows<T>(
    msg: &[T],
    b: usize,
    e: usize,
    f: usize,
    offsets: &[u32],
    edge_ids: &[u32],
) -> Vec<T>
where
    T: Copy + Default + std::ops::AddAssign + Send + Sync,
{
    let n = offsets.len() - 1;
    let mut out = vec![T::default(); b * n * f];
    fill_rows(&mut out, f, edge_ids.len() * b * f, |global, row| {
        let (bi, r) = (global / n, global % n);
        let base = bi * e * f;
        for &id in &edge_ids[offsets[r] as usize..offsets[r + 1] as usize] {
            let src = &msg[base + id as usize * f..base + (id as usize + 1) * f];
            for (d, s) in row.iter_mut().zip(src) {
                *d += *s;
            }
        }
    });
    out
}

/// The CUDA side of [`SegmentSum`]: src/model/segment_sum.cu, compiled to PTX by build.rs.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{bail, Context, CudaStorage, DType, Layout, Result, Shape};

    use crate::model::row_kernels::launch_config;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/segment_sum.ptx"));
    const THREADS: u32 = 256;

    pub fn segment_sum(
        msg: &CudaStorage,
        msg_layout: &Layout,
        offsets: &CudaStorage,
        offsets_layout: &Layout,
        edge_ids: &CudaStorage,
        edge_ids_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, e, f) = msg_layout.shape().dims3()?;
        let (start, end) = msg_layout
            .contiguous_offsets()
            .context("csr-segment-sum needs contiguous messages")?;
        let groups = offsets_layout.shape().dims1()? - 1;
        let offsets = offsets.as_cuda_slice::<u32>()?;
        let offsets = offsets.slice(offsets_layout.start_offset()..);
        let edge_ids = edge_ids.as_cuda_slice::<u32>()?;
        let edge_ids = edge_ids.slice(edge_ids_layout.start_offset()..);
        let dev = &msg.device;
        let total = b * groups * f;
        let config = launch_config(total.div_ceil(THREADS as usize), THREADS);
        let (b, groups32, e, f) = (b as u32, groups as u32, e as u32, f as u32);
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let src = msg.as_cuda_slice::<$t>()?.slice(start..end);
                // SAFETY: the kernel writes every one of the `total` values.
                let out = unsafe { dev.alloc::<$t>(total)? };
                let func = dev.get_or_load_custom_func($kernel, "meshcast_segment_sum", PTX)?;
                let mut launch = func.builder();
                launch.arg(&src);
                launch.arg(&offsets);
                launch.arg(&edge_ids);
                launch.arg(&out);
                launch.arg(&b);
                launch.arg(&groups32);
                launch.arg(&e);
                launch.arg(&f);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { launch.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match msg.dtype() {
            DType::F32 => launch!(f32, "segment_sum_f32"),
            DType::F64 => launch!(f64, "segment_sum_f64"),
            DType::BF16 => launch!(half::bf16, "segment_sum_bf16"),
            DType::F16 => launch!(half::f16, "segment_sum_f16"),
            other => bail!("csr-segment-sum supports f32, f64, bf16 and f16, got {other:?}"),
        };
        Ok((out, Shape::from((b as usize, groups, f as usize))))
    }

    const GATHER_SUM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gather_sum.ptx"));

    /// [`super::GatherSum`]'s forward: `e`, `s`, `r` with their layouts.
    pub(super) fn gather_sum(
        [(e, el), (s, sl), (r, rl)]: [(&CudaStorage, &Layout); 3],
        edges: &crate::model::graph_tensors::EdgeTensors,
        shape: &super::GatherSumShape,
    ) -> Result<CudaStorage> {
        // The index tensors' storage stays locked for reading until the launch.
        let (senders_storage, senders_layout) = edges.senders.storage_and_layout();
        let (receivers_storage, receivers_layout) = edges.receivers.storage_and_layout();
        let (candle_core::Storage::Cuda(senders), candle_core::Storage::Cuda(receivers)) =
            (&*senders_storage, &*receivers_storage)
        else {
            bail!("gather-sum: the graph's indices are not on the GPU");
        };
        let senders = senders
            .as_cuda_slice::<u32>()?
            .slice(senders_layout.start_offset()..);
        let receivers = receivers
            .as_cuda_slice::<u32>()?
            .slice(receivers_layout.start_offset()..);
        let offsets = |l: &Layout| {
            l.contiguous_offsets()
                .context("gather-sum needs contiguous inputs")
        };
        let ((e0, e1), (s0, s1), (r0, r1)) = (offsets(el)?, offsets(sl)?, offsets(rl)?);
        let dev = &e.device;
        let total = shape.batch * shape.edges * shape.features;
        let config = launch_config(total.div_ceil(THREADS as usize), THREADS);
        let dims = [
            shape.batch as u32,
            shape.edges as u32,
            edges.n_senders as u32,
            edges.n_receivers as u32,
            shape.features as u32,
            shape.batched[0] as u32,
            shape.batched[1] as u32,
            shape.batched[2] as u32,
        ];
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let e = e.as_cuda_slice::<$t>()?.slice(e0..e1);
                let s = s.as_cuda_slice::<$t>()?.slice(s0..s1);
                let r = r.as_cuda_slice::<$t>()?.slice(r0..r1);
                // SAFETY: the kernel writes every one of the `total` values.
                let out = unsafe { dev.alloc::<$t>(total)? };
                let func =
                    dev.get_or_load_custom_func($kernel, "meshcast_gather_sum", GATHER_SUM_PTX)?;
                let mut launch = func.builder();
                launch.arg(&e);
                launch.arg(&s);
                launch.arg(&r);
                launch.arg(&senders);
                launch.arg(&receivers);
                launch.arg(&out);
                for d in &dims {
                    launch.arg(d);
                }
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { launch.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        Ok(match e.dtype() {
            DType::F32 => launch!(f32, "gather_sum_f32"),
            DType::F64 => launch!(f64, "gather_sum_f64"),
            DType::BF16 => launch!(half::bf16, "gather_sum_bf16"),
            DType::F16 => launch!(half::f16, "gather_sum_f16"),
            other => bail!("gather-sum supports f32, f64, bf16 and f16, got {other:?}"),
        })
    }
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
        let features = Tensor::zeros((e, EDGE_FEATURES), DType::F32, &Device::Cpu)?;
        let mut edges = EdgeTensors::from_coo(&coo, features)?;
        edges.aggregation = Aggregation::Csr;
        Ok(edges)
    }

    #[test]
    fn csr_forward_equals_index_add() -> Result<()> {
        // Enough values (3 x 4000 x 8 > 2^15) that the parallel path runs.
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
    fn csr_gather_backward_equals_index_add() -> Result<()> {
        let csr = random_edges(30, 40, 200, 3)?;
        let mut index_add = csr.clone();
        index_add.aggregation = Aggregation::IndexAdd;
        type Grid3 = Vec<Vec<Vec<f64>>>;
        let grads = |e: &EdgeTensors| -> Result<(Grid3, Grid3)> {
            let s = Var::from_tensor(&random_tensor(&[2, 30, 3], DType::F64, 4)?)?;
            let r = Var::from_tensor(&random_tensor(&[2, 40, 3], DType::F64, 5)?)?;
            let w = random_tensor(&[2, 200, 3], DType::F64, 6)?;
            let on_edges =
                (gather_senders(e, s.as_tensor())? + gather_receivers(e, r.as_tensor())?)?;
            let g = (on_edges * w)?.sum_all()?.backward()?;
            Ok((
                g.get(s.as_tensor()).unwrap().to_vec3()?,
                g.get(r.as_tensor()).unwrap().to_vec3()?,
            ))
        };
        // Both add each node's edge gradients in COO order: the same numbers.
        assert_eq!(grads(&csr)?, grads(&index_add)?);
        Ok(())
    }

    #[test]
    fn gather_sum_equals_the_gathers_and_adds() -> Result<()> {
        let csr = random_edges(30, 40, 200, 3)?;
        let mut index_add = csr.clone();
        index_add.aggregation = Aggregation::IndexAdd;
        // Every batch layout: each input either per sample or broadcast.
        for (be, bs, br) in [(2, 2, 2), (1, 2, 1), (2, 1, 2), (1, 1, 2)] {
            let e = Var::from_tensor(&random_tensor(&[be, 200, 3], DType::F64, 4)?)?;
            let s = Var::from_tensor(&random_tensor(&[bs, 30, 3], DType::F64, 5)?)?;
            let r = Var::from_tensor(&random_tensor(&[br, 40, 3], DType::F64, 6)?)?;
            let w = random_tensor(&[2, 200, 3], DType::F64, 7)?;
            let run = |edges: &EdgeTensors| -> Result<Vec<Vec<f64>>> {
                let out = gather_sum(edges, e.as_tensor(), s.as_tensor(), r.as_tensor())?;
                let g = (out.broadcast_mul(&w)?).sum_all()?.backward()?;
                let mut all = vec![out.flatten_all()?.to_vec1()?];
                for v in [&e, &s, &r] {
                    let grad = g.get(v.as_tensor()).expect("a gradient");
                    assert_eq!(grad.dims(), v.dims());
                    assert!(!grad.track_op());
                    all.push(grad.flatten_all()?.to_vec1()?);
                }
                Ok(all)
            };
            let (a, b) = (run(&csr)?, run(&index_add)?);
            for (x, y) in a.iter().zip(&b) {
                let diff = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f64::max);
                assert!(diff < 1e-12, "batches {be}/{bs}/{br}: {diff}");
            }
        }
        // Half precision is added in f32 and rounded once.
        let e = random_tensor(&[2, 200, 3], DType::F32, 8)?;
        let s = random_tensor(&[2, 30, 3], DType::F32, 9)?;
        let r = random_tensor(&[1, 40, 3], DType::F32, 10)?;
        let exact = gather_sum(&index_add, &e, &s, &r)?;
        let half = gather_sum(
            &csr,
            &e.to_dtype(DType::BF16)?,
            &s.to_dtype(DType::BF16)?,
            &r.to_dtype(DType::BF16)?,
        )?;
        let diff = (half.to_dtype(DType::F32)? - &exact)?.abs()?.max_all()?;
        let scale = exact.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff.to_scalar::<f32>()? < 2e-2 * scale);
        Ok(())
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
