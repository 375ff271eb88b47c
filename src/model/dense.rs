//! A dense layer, `x W^T + b` or `silu(x) W^T + b`, as one op that keeps nothing but
//! its input for the backward pass.
//!
//! Composed from candle ops, `silu(h) W^T + b` keeps three row-sized tensors alive
//! until the backward pass (the SiLU output, the product and the biased sum): on an
//! edge MLP that is three of its seven `[B, E, L]` activations. [`DenseOp`] keeps only
//! `h` (which the previous op keeps anyway) and its output, and recomputes `silu(h)` in
//! the backward pass, one element-wise pass against two matmuls. The product runs on
//! the `gemm` crate that candle's own CPU matmul uses, starting from the bias, so the
//! bias costs no extra pass either.
//!
//! The fused path is for f32 and f64 on the CPU, and for every float dtype on CUDA
//! under `--cuda-fused-ops` ([`crate::device::cuda_fused_ops`]), where the forward pass
//! is composed from the backend's own kernels (SiLU, cuBLAS, a broadcast add) with
//! every temporary freed on return, and the backward through SiLU is one kernel
//! (src/model/kernels/dense.cu). Elsewhere [`dense`] composes the same function from
//! candle ops.

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Silu};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use candle_nn::{Linear, Module};

use super::row_kernels::{contiguous_values, fill_rows, KernelFloat};

/// Whether meshcast's fused CPU kernels run on activations of `dtype`: on the CPU, in
/// f32 or f64 (elsewhere the composed candle ops run). The one rule, so that the memory
/// planner (`StepShape::fused_kernels`) predicts the kernels the model takes.
pub fn fused_kernels_run(on_cpu: bool, dtype: DType) -> bool {
    on_cpu && matches!(dtype, DType::F32 | DType::F64)
}

/// [`fused_kernels_run`] for `x`, with `others` of its dtype.
pub fn runs_fused(x: &Tensor, others: &[&Tensor]) -> bool {
    fused_kernels_run(x.device().is_cpu(), x.dtype())
        && others.iter().all(|t| t.dtype() == x.dtype())
}

/// Whether `x` is on a CUDA device that runs meshcast's fused ops (`--cuda-fused-ops`).
pub fn cuda_runs_fused(x: &Tensor) -> bool {
    x.device().is_cuda() && crate::device::cuda_fused_ops()
}

/// Whether [`dense`] runs [`DenseOp`] on `x` with `others` (of its dtype): the CPU
/// kernels, or CUDA's with `--cuda-fused-ops`. The MLP's choice between one product
/// over its concatenated inputs and one per part follows it too.
pub fn dense_runs_fused(x: &Tensor, others: &[&Tensor]) -> bool {
    runs_fused(x, others) || (cuda_runs_fused(x) && others.iter().all(|t| t.dtype() == x.dtype()))
}

/// `act(x) W^T + b` for `x` `[.., in]`, `weight` `[out, in]` and `bias` `[out]`, where
/// `act` is SiLU when `silu_input` and the identity otherwise.
pub fn dense(x: &Tensor, weight: &Tensor, bias: &Tensor, silu_input: bool) -> Result<Tensor> {
    if dense_runs_fused(x, &[weight, bias]) {
        return x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, bias, DenseOp { silu_input });
    }
    let x = if silu_input { x.silu()? } else { x.clone() };
    Linear::new(weight.clone(), Some(bias.clone())).forward(&x)
}

/// The op behind [`dense`] (CPU: f32 and f64; CUDA: any float dtype; contiguous
/// operands).
pub struct DenseOp {
    pub silu_input: bool,
}

impl DenseOp {
    /// The output's dims and `(rows, inputs, outputs)`, or an error for operands that
    /// do not fit together.
    fn check(
        x: &Layout,
        weight: &Layout,
        bias: &Layout,
    ) -> Result<(Vec<usize>, (usize, usize, usize))> {
        let (outputs, inputs) = weight.shape().dims2()?;
        let dims = x.shape().dims();
        if dims.last() != Some(&inputs) || bias.shape().dims() != [outputs] {
            bail!(
                "dense: input {:?}, weight {:?}, bias {:?}",
                dims,
                weight.shape().dims(),
                bias.shape().dims()
            );
        }
        let rows = x.shape().elem_count() / inputs.max(1);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = outputs;
        Ok((out_dims, (rows, inputs, outputs)))
    }

    /// The forward pass from the backend's own kernels (CUDA's; tested on the CPU's):
    /// SiLU, one product with `W^T` read in place, and the bias broadcast over the
    /// rows. The activated input and the product are freed on return, so autograd
    /// keeps only the op's operands and output.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn storage_forward<S: BackendStorage>(
        &self,
        (x, x_layout): (&S, &Layout),
        (weight, weight_layout): (&S, &Layout),
        (bias, bias_layout): (&S, &Layout),
    ) -> Result<(S, Shape)> {
        let (out_dims, (rows, inputs, outputs)) =
            Self::check(x_layout, weight_layout, bias_layout)?;
        if !(x_layout.is_contiguous()
            && weight_layout.is_contiguous()
            && bias_layout.is_contiguous())
        {
            bail!("dense: contiguous operands only")
        }
        let lhs_layout = Layout::contiguous_with_offset((rows, inputs), x_layout.start_offset());
        let activated = match self.silu_input {
            true => Some(x.unary_impl::<Silu>(&lhs_layout)?),
            false => None,
        };
        let (lhs, lhs_layout) = match &activated {
            Some(a) => (a, Layout::contiguous((rows, inputs))),
            None => (x, lhs_layout),
        };
        let product = backend_product(
            (lhs, &lhs_layout),
            (weight, weight_layout),
            (rows, inputs, outputs),
        )?;
        drop(activated);
        let over_rows = Layout::new(
            Shape::from((rows, outputs)),
            vec![0, 1],
            bias_layout.start_offset(),
        );
        let out =
            product.binary_impl::<Add>(bias, &Layout::contiguous((rows, outputs)), &over_rows)?;
        Ok((out, Shape::from(out_dims)))
    }

    fn forward<T: KernelFloat>(
        &self,
        x: &[T],
        weight: &[T],
        bias: &[T],
        (rows, inputs, outputs): (usize, usize, usize),
    ) -> Vec<T> {
        let mut out = vec![T::zero(); rows * outputs];
        fill_rows(&mut out, outputs, rows * outputs, |_, row| {
            row.copy_from_slice(bias)
        });
        let activated;
        let lhs = if self.silu_input {
            let mut a = vec![T::zero(); x.len()];
            fill_rows(&mut a, inputs, x.len(), |r, row| {
                let src = &x[r * inputs..(r + 1) * inputs];
                for (o, &v) in row.iter_mut().zip(src) {
                    *o = v.silu();
                }
            });
            activated = a;
            &activated[..]
        } else {
            x
        };
        gemm_accumulate(&mut out, lhs, weight, inputs, outputs);
        out
    }
}

/// `out[rows, outputs] += lhs[rows, inputs] W^T` for `weight` W `[outputs, inputs]`
/// (all row-major), on candle's thread count.
pub(crate) fn gemm_accumulate<T: KernelFloat>(
    out: &mut [T],
    lhs: &[T],
    weight: &[T],
    inputs: usize,
    outputs: usize,
) {
    let rows = out.len() / outputs.max(1);
    if rows == 0 || outputs == 0 || inputs == 0 {
        return;
    }
    assert!(lhs.len() >= rows * inputs && weight.len() >= outputs * inputs);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three buffers hold at least rows x outputs, rows x inputs and
    // outputs x inputs values (checked above), matching the dimensions and strides:
    // W^T's element (i, o) is weight[o * inputs + i].
    unsafe {
        gemm::gemm(
            rows,
            outputs,
            inputs,
            out.as_mut_ptr(),
            1,
            outputs as isize,
            true,
            lhs.as_ptr(),
            1,
            inputs as isize,
            weight.as_ptr(),
            inputs as isize,
            1,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `lhs W^T` from the backend's own matmul (cuBLAS on CUDA) for `lhs` `[rows, inputs]`
/// and `weight` `[outputs, inputs]`, both contiguous at their layouts' offsets, W^T
/// read in place (column by column): `[rows, outputs]`, contiguous.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn backend_product<S: BackendStorage>(
    (lhs, lhs_layout): (&S, &Layout),
    (weight, weight_layout): (&S, &Layout),
    (rows, inputs, outputs): (usize, usize, usize),
) -> Result<S> {
    let transposed = Layout::new(
        Shape::from((inputs, outputs)),
        vec![1, inputs],
        weight_layout.start_offset(),
    );
    lhs.matmul(weight, (1, rows, outputs, inputs), lhs_layout, &transposed)
}

/// `grad * silu'(x)` in one pass ([`SiluBackwardOp`]): the dense op's backward
/// through SiLU.
fn silu_backward(grad: &Tensor, x: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &SiluBackwardOp)
}

/// `(x, grad) -> grad * silu'(x)`. CPU: f32 and f64, rows on the worker pool; CUDA:
/// src/model/kernels/dense.cu, every float dtype.
struct SiluBackwardOp;

impl candle_core::CustomOp2 for SiluBackwardOp {
    fn name(&self) -> &'static str {
        "meshcast-silu-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if x_layout.shape() != grad_layout.shape() {
            bail!(
                "silu backward: input {:?}, gradient {:?}",
                x_layout.dims(),
                grad_layout.dims()
            )
        }
        fn run<T: KernelFloat>(x: &[T], grad: &[T], cols: usize) -> Vec<T> {
            let mut out = vec![T::zero(); x.len()];
            fill_rows(&mut out, cols, x.len(), |r, row| {
                let span = r * cols..(r + 1) * cols;
                for ((o, &v), &d) in row.iter_mut().zip(&x[span.clone()]).zip(&grad[span]) {
                    *o = d * v.silu_derivative();
                }
            });
            out
        }
        let cols = x_layout.dims().last().copied().unwrap_or(1).max(1);
        macro_rules! run {
            ($t:ty, $variant:ident) => {
                CpuStorage::$variant(run::<$t>(
                    contiguous_values(x, x_layout, "silu backward")?,
                    contiguous_values(grad, grad_layout, "silu backward")?,
                    cols,
                ))
            };
        }
        let out = match x.dtype() {
            DType::F32 => run!(f32, F32),
            DType::F64 => run!(f64, F64),
            other => bail!("silu backward on the CPU: f32 or f64, got {other:?}"),
        };
        Ok((out, x_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::silu_backward((x, x_layout), (grad, grad_layout))
    }
}

/// The CUDA side of [`SiluBackwardOp`] (src/model/kernels/dense.cu, compiled to PTX by
/// build.rs) and of [`DenseOp`]'s forward through cuBLASLt.
#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
    use candle_core::op::Silu;
    use candle_core::{bail, Context, CudaStorage, DType, Layout, Result, Shape};

    use super::DenseOp;
    use crate::model::row_kernels::launch_config;

    /// One cuBLASLt handle per device, with its workspace (32 MiB on Hopper), made at
    /// first use on the device's stream.
    fn blas_lt(dev: &CudaDevice) -> Result<Arc<CudaBlasLT>> {
        static HANDLES: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaBlasLT>>>> = OnceLock::new();
        let mut handles = HANDLES
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| candle_core::Error::Msg("cuBLASLt handles: a poisoned lock".into()))?;
        if let Some(handle) = handles.get(&dev.id()) {
            return Ok(handle.clone());
        }
        let handle = CudaBlasLT::new(dev.cuda_stream())
            .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt: no handle ({e:?})")))?;
        let handle = Arc::new(handle);
        handles.insert(dev.id(), handle.clone());
        Ok(handle)
    }

    type Operand<'a> = (&'a CudaStorage, &'a Layout);

    /// `act(x) W^T + b` as one cuBLASLt GEMM with the bias added in its epilogue (after
    /// the backend's SiLU), for bf16 and f16, and for f32 under `--tf32` only: cudarc's
    /// f32 cuBLASLt GEMM computes in TF32. None for the other cases.
    pub fn dense_lt(
        op: &DenseOp,
        ((x, x_layout), (weight, weight_layout), (bias, bias_layout)): (Operand, Operand, Operand),
    ) -> Result<Option<(CudaStorage, Shape)>> {
        let (out_dims, (rows, inputs, outputs)) =
            DenseOp::check(x_layout, weight_layout, bias_layout)?;
        let takes = match x.dtype() {
            DType::BF16 | DType::F16 => true,
            DType::F32 => crate::device::tf32_enabled(),
            _ => false,
        };
        let contiguous = [x_layout, weight_layout, bias_layout]
            .iter()
            .all(|l| l.is_contiguous());
        if !takes || !contiguous || rows == 0 || inputs == 0 || outputs == 0 {
            return Ok(None);
        }
        let x_rows = Layout::contiguous_with_offset((rows, inputs), x_layout.start_offset());
        let activated = match op.silu_input {
            true => Some(x.unary_impl::<Silu>(&x_rows)?),
            false => None,
        };
        let (lhs, lhs_start) = match &activated {
            Some(a) => (a, 0),
            None => (x, x_layout.start_offset()),
        };
        let dev = x.device.clone();
        let blas = blas_lt(&dev)?;
        // Column-major, as cuBLAS sees row-major buffers: out^T (outputs x rows) =
        // W (the weight buffer read transposed) times act(x)^T, the bias per output.
        let config = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: outputs as u64,
            n: rows as u64,
            k: inputs as u64,
            alpha: 1.0,
            lda: inputs as i64,
            ldb: inputs as i64,
            beta: 0.0,
            ldc: outputs as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let (w0, b0) = (weight_layout.start_offset(), bias_layout.start_offset());
        macro_rules! run {
            ($t:ty) => {{
                let a = weight
                    .as_cuda_slice::<$t>()?
                    .slice(w0..w0 + outputs * inputs);
                let b = lhs
                    .as_cuda_slice::<$t>()?
                    .slice(lhs_start..lhs_start + rows * inputs);
                let bias = bias.as_cuda_slice::<$t>()?.slice(b0..b0 + outputs);
                // SAFETY: cuBLASLt writes all rows x outputs values.
                let mut out = unsafe { dev.alloc::<$t>(rows * outputs)? };
                // SAFETY: the views hold exactly the matrices the configuration
                // describes (sizes checked above), on the device's stream.
                unsafe { blas.matmul(config, &a, &b, &mut out, Some(&bias), None) }
                    .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt: {e:?}")))?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match x.dtype() {
            DType::BF16 => run!(half::bf16),
            DType::F16 => run!(half::f16),
            _ => run!(f32),
        };
        Ok(Some((out, Shape::from(out_dims))))
    }

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dense.ptx"));
    const THREADS: u32 = 256;

    pub fn silu_backward(
        (x, x_layout): (&CudaStorage, &Layout),
        (grad, grad_layout): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let span = |l: &Layout| {
            l.contiguous_offsets()
                .context("silu backward: contiguous operands")
        };
        let ((xs, xe), (gs, ge)) = (span(x_layout)?, span(grad_layout)?);
        if xe - xs != ge - gs {
            bail!(
                "silu backward: input {:?}, gradient {:?}",
                x_layout.dims(),
                grad_layout.dims()
            )
        }
        let n = xe - xs;
        let dev = &x.device;
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let src = x.as_cuda_slice::<$t>()?.slice(xs..xe);
                let g = grad.as_cuda_slice::<$t>()?.slice(gs..ge);
                // SAFETY: the kernel writes all n values.
                let out = unsafe { dev.alloc::<$t>(n)? };
                let func = dev.get_or_load_custom_func($kernel, "meshcast_dense", PTX)?;
                let n64 = n as u64;
                let mut launch = func.builder();
                launch.arg(&src);
                launch.arg(&g);
                launch.arg(&out);
                launch.arg(&n64);
                let config = launch_config(n.div_ceil(THREADS as usize), THREADS);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { launch.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match (x.dtype(), grad.dtype()) {
            (DType::F32, DType::F32) => launch!(f32, "silu_backward_f32"),
            (DType::F64, DType::F64) => launch!(f64, "silu_backward_f64"),
            (DType::BF16, DType::BF16) => launch!(half::bf16, "silu_backward_bf16"),
            (DType::F16, DType::F16) => launch!(half::f16, "silu_backward_f16"),
            (x, g) => bail!("silu backward of {x:?} with {g:?} gradients"),
        };
        Ok((out, x_layout.shape().clone()))
    }
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "meshcast-dense"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out_dims, sizes) = Self::check(x_layout, weight_layout, bias_layout)?;
        macro_rules! run {
            ($t:ty, $variant:ident) => {
                CpuStorage::$variant(self.forward::<$t>(
                    contiguous_values(x, x_layout, "dense input")?,
                    contiguous_values(weight, weight_layout, "dense weight")?,
                    contiguous_values(bias, bias_layout, "dense bias")?,
                    sizes,
                ))
            };
        }
        let out = match x.dtype() {
            DType::F32 => run!(f32, F32),
            DType::F64 => run!(f64, F64),
            other => bail!("dense: f32 or f64, got {other:?}"),
        };
        Ok((out, Shape::from(out_dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        weight: &candle_core::CudaStorage,
        weight_layout: &Layout,
        bias: &candle_core::CudaStorage,
        bias_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let operands = ((x, x_layout), (weight, weight_layout), (bias, bias_layout));
        match cuda::dense_lt(self, operands) {
            Ok(Some(out)) => return Ok(out),
            Ok(None) => {}
            // cuBLASLt found no algorithm (e.g. for a misaligned bias): the same numbers
            // from the backend's product and add.
            Err(e) => tracing::debug!("dense: cuBLASLt declined ({e}); product and add instead"),
        }
        self.storage_forward(operands.0, operands.1, operands.2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // On detached tensors: gradients that tracked their inputs would keep this
        // step's graph alive.
        let (outputs, inputs) = weight.dims2()?;
        let x_shape = x.shape().clone();
        let x = x.detach().reshape(((), inputs))?;
        let weight = weight.detach();
        let grad = grad.detach().contiguous()?.reshape(((), outputs))?;
        let activated = if self.silu_input {
            x.silu()?
        } else {
            x.clone()
        };
        let dweight = grad.t()?.matmul(&activated)?;
        drop(activated);
        let dbias = grad.sum(0)?;
        let dactivated = grad.matmul(&weight)?;
        let dx = match self.silu_input {
            false => dactivated,
            true => silu_backward(&dactivated, &x)?,
        };
        Ok((Some(dx.reshape(x_shape)?), Some(dweight), Some(dbias)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{check_gradients, random_tensor, test_device};
    use candle_core::{Device, Storage, Var};
    use candle_nn::{VarBuilder, VarMap};

    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, silu: bool) -> Result<Tensor> {
        let x = if silu { x.silu()? } else { x.clone() };
        Linear::new(w.clone(), Some(b.clone())).forward(&x)
    }

    fn max_relative(a: &Tensor, e: &Tensor) -> Result<f64> {
        let (a, e) = (a.to_dtype(DType::F64)?, e.to_dtype(DType::F64)?);
        let d = (a - &e)?.abs()?.max_all()?.to_scalar::<f64>()?;
        Ok(d / e.abs()?.max_all()?.to_scalar::<f64>()?)
    }

    #[test]
    fn equals_candle_ops_with_their_gradients() -> Result<()> {
        // f32 with enough rows for the parallel paths, a strided (transposed) input,
        // both activations; gradients against autograd through candle's own ops.
        for silu in [false, true] {
            let x = Var::from_tensor(
                &random_tensor(&[2, 48, 700], DType::F32, 1)?
                    .transpose(1, 2)?
                    .to_dtype(DType::F32)?,
            )?;
            let w = Var::from_tensor(&random_tensor(&[40, 48], DType::F32, 2)?)?;
            let b = Var::from_tensor(&random_tensor(&[40], DType::F32, 3)?)?;
            let r = random_tensor(&[2, 700, 40], DType::F32, 4)?;
            let y = dense(&x, &w, &b, silu)?;
            let expected = composed(&x, &w, &b, silu)?;
            assert_eq!(y.dims(), &[2, 700, 40]);
            assert!(max_relative(&y, &expected)? < 1e-5, "silu {silu}: forward");
            let g = (y * &r)?.sum_all()?.backward()?;
            let g_ref = (expected * &r)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let mine = g.get(v.as_tensor()).expect("a gradient");
                assert!(!mine.track_op(), "the gradient holds the graph");
                let theirs = g_ref.get(v.as_tensor()).expect("a gradient");
                assert_eq!(mine.dims(), v.dims());
                assert!(max_relative(mine, theirs)? < 1e-5, "silu {silu}: gradient");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let w = vb.get_with_hints(
            (5, 4),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.5,
            },
        )?;
        let b = vb.get_with_hints(
            5,
            "bias",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.5,
            },
        )?;
        let x = random_tensor(&[2, 3, 4], DType::F64, 5)?;
        for silu in [false, true] {
            check_gradients(&varmap, &x, |x| dense(x, &w, &b, silu), &["weight", "bias"])?;
        }
        Ok(())
    }

    /// The backend-kernel forward pass (what CUDA runs) on the CPU's kernels equals the
    /// CPU's fused kernel, with an offset input and both activations.
    #[test]
    fn the_backend_forward_equals_the_cpu_kernel() -> Result<()> {
        let x = random_tensor(&[3, 2, 50, 24], DType::F32, 1)?.get(1)?;
        let w = random_tensor(&[2, 40, 24], DType::F32, 2)?.get(1)?;
        let b = random_tensor(&[3, 40], DType::F32, 3)?.get(2)?;
        for silu_input in [false, true] {
            let op = DenseOp { silu_input };
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (bs, bl) = b.storage_and_layout();
            let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(bs)) = (&*xs, &*ws, &*bs) else {
                unreachable!("CPU tensors")
            };
            let (out, shape) = op.storage_forward((xs, xl), (ws, wl), (bs, bl))?;
            assert_eq!(shape.dims(), &[2, 50, 40]);
            let kernel = x.apply_op3(&w, &b, DenseOp { silu_input })?;
            let backend = Tensor::from_vec(out.as_slice::<f32>()?.to_vec(), shape, &Device::Cpu)?;
            assert!(max_relative(&backend, &kernel)? < 1e-6, "silu {silu_input}");
        }
        Ok(())
    }

    /// The backward pass's SiLU derivative ([`SiluBackwardOp`]) on `device` against
    /// candle's sigmoid on the CPU in f64: `grad * s (1 + x (1 - s))`.
    fn the_silu_derivative_matches_sigmoid_s(device: &Device) -> Result<()> {
        let x64 = (random_tensor(&[30, 70], DType::F64, 4)? * 6.0)?;
        let g64 = random_tensor(&[30, 70], DType::F64, 5)?;
        let dtypes: &[(DType, f64)] = match device.is_cpu() {
            true => &[(DType::F32, 1e-6), (DType::F64, 1e-12)],
            false => &[
                (DType::F32, 1e-6),
                (DType::F64, 1e-12),
                (DType::BF16, 1e-2),
                (DType::F16, 2e-3),
            ],
        };
        for &(dtype, tol) in dtypes {
            let here = |t: &Tensor| t.to_dtype(dtype)?.to_device(device);
            let (x, g) = (here(&x64)?, here(&g64)?);
            let dx = silu_backward(&g, &x)?;
            assert_eq!(dx.dtype(), dtype);
            let (xe, ge) = (
                x.to_device(&Device::Cpu)?.to_dtype(DType::F64)?,
                g.to_device(&Device::Cpu)?.to_dtype(DType::F64)?,
            );
            let s = candle_nn::ops::sigmoid(&xe)?;
            let expected = (ge * ((&xe * (1.0 - &s)?)? + 1.0)?.mul(&s)?)?;
            let dx = dx.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
            assert!(max_relative(&dx, &expected)? < tol, "{dtype:?}");
        }
        Ok(())
    }

    test_device!(
        the_silu_derivative_matches_sigmoid_s,
        the_silu_derivative_matches_sigmoid_s_cpu,
        the_silu_derivative_matches_sigmoid_s_cuda
    );

    /// [`DenseOp`] on `device` (its CUDA kernels run whatever `--cuda-fused-ops` says),
    /// outputs and gradients against candle's composed ops on the CPU in f64.
    fn the_op_matches_the_composed_layer_in_every_dtype(device: &Device) -> Result<()> {
        let dtypes: &[(DType, f64)] = match device.is_cpu() {
            true => &[(DType::F32, 1e-5), (DType::F64, 1e-12)],
            false => &[(DType::F32, 1e-5), (DType::BF16, 3e-2), (DType::F16, 5e-3)],
        };
        let x64 = random_tensor(&[2, 300, 48], DType::F64, 6)?;
        let w64 = random_tensor(&[40, 48], DType::F64, 7)?;
        let b64 = random_tensor(&[40], DType::F64, 8)?;
        let r64 = random_tensor(&[2, 300, 40], DType::F64, 9)?;
        for &(dtype, tol) in dtypes {
            for silu_input in [false, true] {
                let here = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?);
                let (x, w, b) = (here(&x64)?, here(&w64)?, here(&b64)?);
                let y = x.apply_op3(&w, &b, DenseOp { silu_input })?;
                let r = r64.to_dtype(dtype)?.to_device(device)?;
                let grads = (&y * &r)?.sum_all()?.backward()?;
                // The reference: the operands as the device saw them, in f64.
                let exact =
                    |v: &Var| Var::from_tensor(&v.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
                let (xe, we, be) = (exact(&x)?, exact(&w)?, exact(&b)?);
                let expected = composed(&xe, &we, &be, silu_input)?;
                let on_cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F64);
                let case = format!("{dtype:?}, silu {silu_input}");
                assert!(
                    max_relative(&on_cpu(&y)?, &expected)? < tol,
                    "{case}: forward"
                );
                let expected_grads = (expected * &r64)?.sum_all()?.backward()?;
                for (mine, theirs) in [(&x, &xe), (&w, &we), (&b, &be)] {
                    let g = grads.get(mine.as_tensor()).expect("a gradient");
                    assert_eq!(g.dtype(), dtype);
                    assert!(!g.track_op(), "{case}: the gradient holds the graph");
                    let e = expected_grads.get(theirs.as_tensor()).expect("a gradient");
                    assert!(
                        max_relative(&on_cpu(g)?, e)? < 4.0 * tol,
                        "{case}: gradient"
                    );
                }
            }
        }
        Ok(())
    }

    test_device!(
        the_op_matches_the_composed_layer_in_every_dtype,
        the_op_matches_the_composed_layer_in_every_dtype_cpu,
        the_op_matches_the_composed_layer_in_every_dtype_cuda
    );
}
