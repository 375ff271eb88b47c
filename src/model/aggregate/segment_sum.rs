//! The segment sum: the rows of `[B, E, F]` summed into the groups of a [`Grouping`],
//! one writer per output row, as a custom op whose backward is the gather.

use candle_core::backend::BackendStorage;
use candle_core::{bail, Context, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::model::graph_tensors::Grouping;
use crate::model::row_kernels::{contiguous_values, fill_rows, KernelFloat};

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

/// `out[b, g, :] = sum over k in offsets[g]..offsets[g+1] of msg[b, edge_ids[k], :]`,
/// output rows filled in parallel ([`fill_rows`]).
fn segment_sum_rows<T: KernelFloat>(
    msg: &[T],
    b: usize,
    e: usize,
    f: usize,
    offsets: &[u32],
    edge_ids: &[u32],
) -> Vec<T> {
    let n = offsets.len() - 1;
    let mut out = vec![T::zero(); b * n * f];
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

/// The CUDA side of [`SegmentSum`]: src/model/kernels/segment_sum.cu, compiled to PTX by
/// build.rs.
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
}

#[cfg(test)]
mod tests {
    use crate::model::aggregate::tests::random_edges;
    use crate::model::aggregate::{csr_segment_sum, index_add_sum};
    use crate::model::graph_tensors::EdgeTensors;
    use crate::model::testing::{random_tensor, test_device};
    use candle_core::{DType, Device, Result, Tensor, Var};

    /// The largest difference of two tensors (on any devices), in f64.
    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        let (a, b) = (a.to_device(&Device::Cpu)?, b.to_device(&Device::Cpu)?);
        let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
        d.abs()?.max_all()?.to_scalar::<f64>()
    }

    /// The CSR sum on `device` against `index_add` on the CPU.
    fn csr_forward_equals_index_add(device: &Device) -> Result<()> {
        // Enough values (3 x 4000 x 8 > 2^15) that the CPU's parallel path runs.
        let (sizes, seed) = ((300, 500, 4000), 7);
        let (e, on_cpu) = (
            random_edges(sizes, seed, device)?,
            random_edges(sizes, seed, &Device::Cpu)?,
        );
        for dtype in [DType::F64, DType::F32] {
            let m = random_tensor(&[3, 4000, 8], dtype, 8)?;
            let a = index_add_sum(&on_cpu, &m)?;
            let c = csr_segment_sum(&e, &m.to_device(device)?)?;
            assert_eq!(c.dims(), &[3, 500, 8]);
            let scale = a
                .to_dtype(DType::F64)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
            let diff = max_diff(&a, &c)?;
            assert!(diff <= tol * scale, "{dtype:?}: {diff} vs scale {scale}");
            // Receivers without edges are zero.
            let last = c.narrow(1, 498, 2)?;
            assert_eq!(max_diff(&last, &last.zeros_like()?)?, 0.0);
        }
        // A non-contiguous input (a transposed view) gives the same sum.
        let t = random_tensor(&[3, 8, 4000], DType::F64, 9)?.transpose(1, 2)?;
        let a = index_add_sum(&on_cpu, &t)?;
        let c = csr_segment_sum(&e, &t.to_device(device)?)?;
        assert!(max_diff(&a, &c)? < 1e-12);
        Ok(())
    }
    test_device!(
        csr_forward_equals_index_add,
        csr_forward_equals_index_add_cpu,
        csr_forward_equals_index_add_cuda
    );

    /// The CSR sum's gradient on `device` (the receivers' gather) against `index_add`'s
    /// on the CPU: the same values.
    fn csr_backward_is_the_receiver_gather(device: &Device) -> Result<()> {
        let (sizes, seed) = ((30, 40, 200), 3);
        let (e, on_cpu) = (
            random_edges(sizes, seed, device)?,
            random_edges(sizes, seed, &Device::Cpu)?,
        );
        let m = random_tensor(&[2, 200, 3], DType::F64, 4)?;
        let r = random_tensor(&[2, 40, 3], DType::F64, 5)?;
        type Sum = fn(&EdgeTensors, &Tensor) -> Result<Tensor>;
        let gradient = |edges: &EdgeTensors, m: &Tensor, sum: Sum| -> Result<Tensor> {
            let m = Var::from_tensor(m)?;
            let r = r.to_device(m.device())?;
            let g = (sum(edges, m.as_tensor())? * r)?.sum_all()?.backward()?;
            Ok(g.get(m.as_tensor()).expect("a gradient").clone())
        };
        let a = gradient(&e, &m.to_device(device)?, csr_segment_sum)?;
        let b = gradient(&on_cpu, &m, index_add_sum)?;
        assert_eq!(max_diff(&a, &b)?, 0.0);
        Ok(())
    }
    test_device!(
        csr_backward_is_the_receiver_gather,
        csr_backward_is_the_receiver_gather_cpu,
        csr_backward_is_the_receiver_gather_cuda
    );
}
