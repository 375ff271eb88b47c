//! [`GatherSum`], the op behind [`gather_sum`](fn@super::gather_sum): the edge MLP's first
//! layer under the concat trick, `e + s[senders] + r[receivers]`, keeping only its
//! three inputs.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::host_index;
use super::segment_sum::segment_sum;
use crate::model::graph_tensors::EdgeTensors;
use crate::model::row_kernels::{contiguous_values, fill_rows, KernelFloat};

/// See [`gather_sum`](fn@super::gather_sum); its arguments are `e`, `s` and `r`.
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

impl GatherSumRows<'_> {
    fn run<T: KernelFloat>(&self, e: &[T], s: &[T], r: &[T]) -> Vec<T> {
        let GatherSumShape {
            batch,
            edges,
            features: f,
            batched: [eb, sb, rb],
        } = *self.shape;
        let mut out = vec![T::zero(); batch * edges * f];
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

/// The CUDA side of [`GatherSum`]: src/model/kernels/gather_sum.cu, compiled to PTX by
/// build.rs.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{bail, Context, CudaStorage, DType, Layout, Result};

    use crate::model::row_kernels::launch_config;

    const THREADS: u32 = 256;
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gather_sum.ptx"));

    /// [`super::GatherSum`]'s forward: `e`, `s`, `r` with their layouts.
    pub(super) fn gather_sum(
        [(e, el), (s, sl), (r, rl)]: [(&CudaStorage, &Layout); 3],
        edges: &crate::model::graph_tensors::EdgeTensors,
        shape: &super::GatherSumShape,
    ) -> Result<CudaStorage> {
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
                let func = dev.get_or_load_custom_func($kernel, "meshcast_gather_sum", PTX)?;
                edges.with_cuda_indices("gather-sum", |senders, receivers| {
                    let mut launch = func.builder();
                    launch.arg(&e);
                    launch.arg(&s);
                    launch.arg(&r);
                    launch.arg(senders);
                    launch.arg(receivers);
                    launch.arg(&out);
                    for d in &dims {
                        launch.arg(d);
                    }
                    // SAFETY: argument types and order match the kernel's signature.
                    unsafe { launch.launch(config) }.w()
                })?;
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
    use crate::model::aggregate::tests::random_edges;
    use crate::model::aggregate::{gather_sum, Aggregation};
    use crate::model::graph_tensors::EdgeTensors;
    use crate::model::testing::{random_tensor, test_device};
    use candle_core::{DType, Device, Result, Tensor, Var};

    /// The output and the three inputs' gradients of `gather_sum` over `edges` (on
    /// their device), as f64 vectors.
    fn outputs_and_gradients(
        edges: &EdgeTensors,
        inputs: [&Tensor; 3],
        w: &Tensor,
    ) -> Result<Vec<Vec<f64>>> {
        let device = edges.senders.device();
        let vars = inputs.map(|t| t.to_device(device).and_then(|t| Var::from_tensor(&t)));
        let [e, s, r] = vars.map(|v| v.expect("an input on the device"));
        let out = gather_sum(edges, e.as_tensor(), s.as_tensor(), r.as_tensor())?;
        let g = (out.broadcast_mul(&w.to_device(device)?)?)
            .sum_all()?
            .backward()?;
        let flat = |t: &Tensor| {
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1()
        };
        let mut all = vec![flat(&out)?];
        for v in [&e, &s, &r] {
            let grad = g.get(v.as_tensor()).expect("a gradient");
            assert_eq!(grad.dims(), v.dims());
            assert!(!grad.track_op());
            all.push(flat(grad)?);
        }
        Ok(all)
    }

    /// The fused gather-sum (CSR) on `device` against the gathers and `index_add` on
    /// the CPU, for every batch layout; half precision added in f32 and rounded once.
    fn gather_sum_equals_the_gathers_and_adds(device: &Device) -> Result<()> {
        let csr = random_edges((30, 40, 200), 3, device)?;
        let mut index_add = random_edges((30, 40, 200), 3, &Device::Cpu)?;
        index_add.aggregation = Aggregation::IndexAdd;
        // Every batch layout: each input either per sample or broadcast.
        for (be, bs, br) in [(2, 2, 2), (1, 2, 1), (2, 1, 2), (1, 1, 2)] {
            let e = random_tensor(&[be, 200, 3], DType::F64, 4)?;
            let s = random_tensor(&[bs, 30, 3], DType::F64, 5)?;
            let r = random_tensor(&[br, 40, 3], DType::F64, 6)?;
            let w = random_tensor(&[2, 200, 3], DType::F64, 7)?;
            let a = outputs_and_gradients(&csr, [&e, &s, &r], &w)?;
            let b = outputs_and_gradients(&index_add, [&e, &s, &r], &w)?;
            for (x, y) in a.iter().zip(&b) {
                let diff = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f64::max);
                assert!(diff < 1e-12, "batches {be}/{bs}/{br}: {diff}");
            }
        }
        let e = random_tensor(&[2, 200, 3], DType::F32, 8)?;
        let s = random_tensor(&[2, 30, 3], DType::F32, 9)?;
        let r = random_tensor(&[1, 40, 3], DType::F32, 10)?;
        let exact = gather_sum(&index_add, &e, &s, &r)?;
        let half = |t: &Tensor| t.to_dtype(DType::BF16)?.to_device(device);
        let half = gather_sum(&csr, &half(&e)?, &half(&s)?, &half(&r)?)?;
        let half = half.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let diff = (half - &exact)?.abs()?.max_all()?;
        let scale = exact.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff.to_scalar::<f32>()? < 2e-2 * scale);
        Ok(())
    }
    test_device!(
        gather_sum_equals_the_gathers_and_adds,
        gather_sum_equals_the_gathers_and_adds_cpu,
        gather_sum_equals_the_gathers_and_adds_cuda
    );
}
