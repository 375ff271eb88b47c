//! Layer normalisation over the last dimension, as one custom op with its own backward.
//!
//! candle-nn's `LayerNorm` (and `ops::layer_norm`) dispatch to a fused kernel that has
//! no backward pass on contiguous inputs: gradients silently stop at it. Built from
//! basic tensor ops instead, a norm is differentiable but keeps about five row-sized
//! intermediates alive for the backward pass, the largest share of a block's
//! activations. [`LayerNormOp`] runs the forward pass as one kernel (CPU: rows on
//! candle's worker pool; CUDA: src/model/kernels/layer_norm.cu) and keeps only its
//! input; the backward recomputes the row statistics and applies the closed-form
//! gradient.

use candle_core::backend::BackendStorage;
use candle_core::{bail, Context, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use candle_nn::{Init, Module, VarBuilder};

use super::dense::{cuda_runs_fused, runs_fused};
use super::row_kernels::{cpu_values, fill_rows, KernelFloat};

/// Added to the variance before the square root, as in PyTorch's default.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
///
/// Parameters: `weight` (`[dim]`, initialised to 1) and `bias` (`[dim]`, 0),
/// the names and layout of PyTorch's `nn.LayerNorm`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(LayerNorm { weight, bias })
    }
}

impl LayerNorm {
    /// `residual + LayerNorm(x)`, with `residual` of `x`'s shape or broadcasting over
    /// `x`'s first dimension. On the CPU in f32 and f64, and on CUDA under
    /// `--cuda-fused-ops`, one op ([`ResidualLayerNormOp`]): the normalised rows are
    /// never kept, only `x` and the sum.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let broadcasts = residual.rank() == dims.len()
            && residual.dims().first() == Some(&1)
            && residual.dims()[1..] == dims[1..];
        let on_cuda = cuda_runs_fused(x)
            && residual.dtype() == x.dtype()
            && cuda_norm_dtypes(x.dtype(), self.weight.dtype());
        let fused = (runs_fused(x, &[residual, &self.weight]) || on_cuda)
            && (residual.dims() == dims || broadcasts);
        if !fused {
            return residual.broadcast_add(&self.forward(x)?);
        }
        let affine = Tensor::stack(&[&self.weight, &self.bias], 0)?;
        x.contiguous()?.apply_op3(
            &residual.contiguous()?,
            &affine,
            ResidualLayerNormOp {
                eps: LAYER_NORM_EPS,
            },
        )
    }
}

impl Module for LayerNorm {
    /// Statistics in f32 (f64 for f64 inputs) and the affine map with the parameters as
    /// they are (f32 master weights under mixed precision); the result in the input's
    /// dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op3(
            &self.weight,
            &self.bias,
            LayerNormOp {
                eps: LAYER_NORM_EPS,
            },
        )
    }
}

/// The LayerNorm of `x` (`[.., dim]`, any float dtype) with `weight` and `bias`
/// (`[dim]`, f64 for f64 inputs, else f32).
pub struct LayerNormOp {
    pub eps: f64,
}

impl LayerNormOp {
    fn check(x: &Layout, weight: &Layout, bias: &Layout) -> Result<(usize, usize)> {
        let cols = x
            .shape()
            .dims()
            .last()
            .copied()
            .context("layer norm of a scalar")?;
        if weight.shape().dims() != [cols] || bias.shape().dims() != [cols] {
            bail!("layer norm: weight and bias must be [{cols}]");
        }
        Ok((x.shape().elem_count() / cols.max(1), cols))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "meshcast-layer-norm"
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
        let (rows, cols) = Self::check(x_layout, weight_layout, bias_layout)?;
        let affine = |s: &CpuStorage, l: &Layout| -> Result<Vec<f64>> {
            let (a, b) = l
                .contiguous_offsets()
                .context("layer norm: strided weight")?;
            Ok(match s {
                CpuStorage::F32(v) => v[a..b].iter().map(|&w| w as f64).collect(),
                CpuStorage::F64(v) => v[a..b].to_vec(),
                other => bail!("layer norm: f32 or f64 weights, got {:?}", other.dtype()),
            })
        };
        let (w, b) = (affine(weight, weight_layout)?, affine(bias, bias_layout)?);
        let (start, end) = x_layout
            .contiguous_offsets()
            .context("layer norm needs a contiguous input")?;
        let norm = Rows {
            rows,
            cols,
            w: &w,
            b: &b,
            eps: self.eps,
        };
        let out = match x {
            CpuStorage::F32(v) => CpuStorage::F32(norm.run(&v[start..end])),
            CpuStorage::F64(v) => CpuStorage::F64(norm.run(&v[start..end])),
            CpuStorage::BF16(v) => CpuStorage::BF16(norm.run(&v[start..end])),
            CpuStorage::F16(v) => CpuStorage::F16(norm.run(&v[start..end])),
            other => bail!("layer norm of {:?}", other.dtype()),
        };
        Ok((out, x_layout.shape().clone()))
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
        let (rows, cols) = Self::check(x_layout, weight_layout, bias_layout)?;
        cuda::layer_norm(
            x,
            x_layout,
            None,
            (weight, weight_layout),
            (bias, bias_layout),
            (rows, cols),
            self.eps,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dweight, dbias) = backward(x, weight, grad, self.eps)?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// The dtypes of input and weights CUDA's LayerNorm kernel takes: one dtype, or half
/// precision inputs with f32 weights (mixed precision).
fn cuda_norm_dtypes(x: DType, weight: DType) -> bool {
    matches!(
        (x, weight),
        (DType::F32, DType::F32)
            | (DType::F64, DType::F64)
            | (DType::BF16, DType::F32)
            | (DType::F16, DType::F32)
    )
}

/// `residual + LayerNorm(x)`, with `affine` the stacked `[weight, bias]` (`[2, dim]`)
/// and `residual`'s rows repeating when it has fewer (a first dimension of 1). CPU:
/// f32 and f64, `affine` in the dtype of `x`; CUDA: the dtypes of [`LayerNormOp`].
pub struct ResidualLayerNormOp {
    pub eps: f64,
}

impl ResidualLayerNormOp {
    /// The width of a row, or an error for operands that do not fit together.
    fn check(x: &Layout, residual: &Layout, affine: &Layout) -> Result<usize> {
        let cols = x.shape().dims().last().copied().unwrap_or(0);
        let residual_values = residual.shape().elem_count();
        if affine.shape().dims() != [2, cols]
            || residual_values == 0
            || !x.shape().elem_count().is_multiple_of(residual_values)
            || !residual_values.is_multiple_of(cols.max(1))
        {
            bail!(
                "residual layer norm: input {:?}, residual {:?}, affine {:?}",
                x.shape().dims(),
                residual.shape().dims(),
                affine.shape().dims()
            );
        }
        Ok(cols)
    }
}

impl CustomOp3 for ResidualLayerNormOp {
    fn name(&self) -> &'static str {
        "meshcast-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
        affine: &CpuStorage,
        affine_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let cols = Self::check(x_layout, residual_layout, affine_layout)?;
        let range = |l: &Layout| {
            l.contiguous_offsets()
                .context("residual layer norm needs contiguous operands")
        };
        let ((xs, xe), (rs, re), (a_start, _)) = (
            range(x_layout)?,
            range(residual_layout)?,
            range(affine_layout)?,
        );
        macro_rules! run {
            ($variant:ident) => {{
                let (
                    CpuStorage::$variant(x),
                    CpuStorage::$variant(residual),
                    CpuStorage::$variant(affine),
                ) = (x, residual, affine)
                else {
                    bail!("residual layer norm: operands of one dtype")
                };
                let affine: Vec<f64> = affine[a_start..a_start + 2 * cols]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let norm = Rows {
                    rows: (xe - xs) / cols.max(1),
                    cols,
                    w: &affine[..cols],
                    b: &affine[cols..],
                    eps: self.eps,
                };
                CpuStorage::$variant(norm.run_residual(&x[xs..xe], &residual[rs..re]))
            }};
        }
        let out = match x {
            CpuStorage::F32(_) => run!(F32),
            CpuStorage::F64(_) => run!(F64),
            other => bail!("residual layer norm of {:?}", other.dtype()),
        };
        Ok((out, x_layout.shape().clone()))
    }

    /// CUDA's LayerNorm kernel with the residual added to each row as it is written.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        residual: &candle_core::CudaStorage,
        residual_layout: &Layout,
        affine: &candle_core::CudaStorage,
        affine_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let cols = Self::check(x_layout, residual_layout, affine_layout)?;
        let (start, _) = affine_layout
            .contiguous_offsets()
            .context("residual layer norm: strided weights")?;
        let weight = Layout::contiguous_with_offset(cols, start);
        let bias = Layout::contiguous_with_offset(cols, start + cols);
        let rows = x_layout.shape().elem_count() / cols.max(1);
        cuda::layer_norm(
            x,
            x_layout,
            Some((residual, residual_layout)),
            (affine, &weight),
            (affine, &bias),
            (rows, cols),
            self.eps,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        affine: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dweight, dbias) = backward(x, &affine.detach().get(0)?, grad, self.eps)?;
        let grad = grad.detach();
        let dresidual = if residual.dims() == grad.dims() {
            grad
        } else {
            grad.sum_keepdim(0)?
        };
        let daffine = Tensor::stack(&[dweight, dbias], 0)?;
        Ok((Some(dx), Some(dresidual), Some(daffine)))
    }
}

/// `(dx, dweight, dbias)` of the LayerNorm of `x` for the output gradient `grad`.
fn backward(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    if x.device().is_cpu() && weight.dtype() == x.dtype() {
        match x.dtype() {
            DType::F32 => return cpu_backward::<f32>(x, weight, grad, eps),
            DType::F64 => return cpu_backward::<f64>(x, weight, grad, eps),
            _ => {}
        }
    }
    #[cfg(feature = "cuda")]
    if crate::model::dense::cuda_runs_fused(x) {
        if let Some(grads) = cuda::backward(x, weight, grad, eps)? {
            return Ok(grads);
        }
    }
    composed_backward(x, weight, grad, eps)
}

/// [`backward`] from candle ops, on any device.
fn composed_backward(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    // With xhat = (x - mean) * rstd and g = grad * weight:
    //   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
    //   dweight = sum over rows of grad * xhat, dbias = sum over rows of grad.
    // In the weights' dtype (f32 under mixed precision), as the forward pass; on
    // detached inputs, or the gradients would keep this step's graph alive.
    let (x, weight) = (x.detach(), weight.detach());
    let dtype = weight.dtype();
    let cols = weight.elem_count();
    let x32 = x.to_dtype(dtype)?;
    let grad32 = grad.detach().to_dtype(dtype)?;
    let centred = x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?;
    let rstd = (centred.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let xhat = centred.broadcast_mul(&rstd)?;
    let g = grad32.broadcast_mul(&weight)?;
    let dx = g
        .broadcast_sub(&g.mean_keepdim(D::Minus1)?)?
        .sub(&xhat.broadcast_mul(&(&g * &xhat)?.mean_keepdim(D::Minus1)?)?)?
        .broadcast_mul(&rstd)?
        .to_dtype(x.dtype())?;
    let rows = |t: Tensor| t.reshape(((), cols))?.sum(0);
    let dweight = rows((&grad32 * &xhat)?)?;
    let dbias = rows(grad32)?;
    Ok((dx, dweight, dbias))
}

/// [`backward`] on the CPU in two passes over the rows (statistics in f64), with no
/// row-sized intermediates: the gradient's share of the step's peak memory is `dx`.
fn cpu_backward<T: KernelFloat>(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let cols = weight.elem_count();
    let (x, grad) = (x.detach().contiguous()?, grad.detach().contiguous()?);
    let w: Vec<f64> = weight.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let (xs, xl) = x.storage_and_layout();
    let (gs, gl) = grad.storage_and_layout();
    let xv = cpu_values::<T>(&xs, xl, "layer norm backward")?;
    let gv = cpu_values::<T>(&gs, gl, "layer norm backward")?;
    let rows = xv.len() / cols.max(1);
    let n = cols as f64;
    let wide = |v: &T| v.to_f64();
    // Row r's mean and 1/std, and xhat_j = (x_j - mean) * rstd.
    let stats = |r: usize| {
        let row = &xv[r * cols..(r + 1) * cols];
        let mean = row.iter().map(&wide).sum::<f64>() / n;
        let var = row.iter().map(|v| (wide(v) - mean).powi(2)).sum::<f64>() / n;
        (row, mean, 1.0 / (var + eps).sqrt())
    };
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = grad * weight.
    let mut dx = vec![T::zero(); xv.len()];
    fill_rows(&mut dx, cols, xv.len(), |r, out| {
        let (row, mean, rstd) = stats(r);
        let grow = &gv[r * cols..(r + 1) * cols];
        let (mut g_mean, mut gx_mean) = (0.0, 0.0);
        for ((v, gr), wj) in row.iter().zip(grow).zip(&w) {
            let g = wide(gr) * wj;
            g_mean += g;
            gx_mean += g * (wide(v) - mean) * rstd;
        }
        let (g_mean, gx_mean) = (g_mean / n, gx_mean / n);
        for (((o, v), gr), wj) in out.iter_mut().zip(row).zip(grow).zip(&w) {
            let xhat = (wide(v) - mean) * rstd;
            *o = T::from_f64(rstd * (wide(gr) * wj - g_mean - xhat * gx_mean));
        }
    });
    // dweight = sum over rows of grad * xhat, dbias = sum of grad: partial sums over
    // blocks of rows in parallel, then summed.
    const BLOCK: usize = 256;
    let blocks = rows.div_ceil(BLOCK);
    let mut partial = vec![0f64; blocks * 2 * cols];
    fill_rows(&mut partial, 2 * cols, xv.len(), |b, out| {
        let (dw, db) = out.split_at_mut(cols);
        for r in b * BLOCK..((b + 1) * BLOCK).min(rows) {
            let (row, mean, rstd) = stats(r);
            let grow = &gv[r * cols..(r + 1) * cols];
            for (((w, b), v), gr) in dw.iter_mut().zip(db.iter_mut()).zip(row).zip(grow) {
                let g = wide(gr);
                *w += g * (wide(v) - mean) * rstd;
                *b += g;
            }
        }
    });
    let mut sums = vec![0f64; 2 * cols];
    for block in partial.chunks(2 * cols) {
        for (s, p) in sums.iter_mut().zip(block) {
            *s += p;
        }
    }
    let sums: Vec<T> = sums.into_iter().map(T::from_f64).collect();
    let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
    let dweight = Tensor::from_slice(&sums[..cols], cols, x.device())?;
    let dbias = Tensor::from_slice(&sums[cols..], cols, x.device())?;
    Ok((dx, dweight, dbias))
}

/// One LayerNorm call on the CPU: each row's statistics in f64, in two passes.
struct Rows<'a> {
    rows: usize,
    cols: usize,
    w: &'a [f64],
    b: &'a [f64],
    eps: f64,
}

impl Rows<'_> {
    fn run<T: KernelFloat>(&self, x: &[T]) -> Vec<T> {
        let cols = self.cols;
        let mut out = vec![T::zero(); self.rows * cols];
        fill_rows(&mut out, cols, x.len(), |r, y| {
            self.row(&x[r * cols..(r + 1) * cols], y)
        });
        out
    }

    /// `residual + LayerNorm(x)`, the residual's rows repeating when it has fewer.
    fn run_residual<T: KernelFloat>(&self, x: &[T], residual: &[T]) -> Vec<T> {
        let cols = self.cols;
        let residual_rows = residual.len() / cols.max(1);
        let mut out = vec![T::zero(); self.rows * cols];
        fill_rows(&mut out, cols, x.len(), |r, y| {
            self.row(&x[r * cols..(r + 1) * cols], y);
            let k = r % residual_rows;
            for (o, &v) in y.iter_mut().zip(&residual[k * cols..(k + 1) * cols]) {
                *o += v;
            }
        });
        out
    }

    fn row<T: KernelFloat>(&self, x: &[T], y: &mut [T]) {
        let n = self.cols as f64;
        let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
        let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + self.eps).sqrt();
        for (((o, v), w), b) in y.iter_mut().zip(x).zip(self.w).zip(self.b) {
            *o = T::from_f64((v.to_f64() - mean) * rstd * w + b);
        }
    }
}

/// The CUDA side of [`LayerNormOp`]: src/model/kernels/layer_norm.cu, compiled to PTX
/// by build.rs.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{
        bail, Context, CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
    };

    use crate::model::row_kernels::launch_config;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/layer_norm.ptx"));
    /// Threads per block: 8 warps, one row each.
    const THREADS: u32 = 256;

    /// `LayerNorm(x)`, plus `residual` (contiguous, its rows repeating when it has
    /// fewer) when given, in one kernel.
    pub fn layer_norm(
        x: &CudaStorage,
        x_layout: &Layout,
        residual: Option<(&CudaStorage, &Layout)>,
        (weight, weight_layout): (&CudaStorage, &Layout),
        (bias, bias_layout): (&CudaStorage, &Layout),
        (rows, cols): (usize, usize),
        eps: f64,
    ) -> Result<(CudaStorage, Shape)> {
        let (start, end) = x_layout
            .contiguous_offsets()
            .context("layer norm needs a contiguous input")?;
        let residual = match residual {
            Some((r, l)) => Some((
                r,
                l.contiguous_offsets()
                    .context("layer norm: strided residual")?,
            )),
            None => None,
        };
        let residual_rows = residual.map_or(1, |(_, (s, e))| ((e - s) / cols.max(1)) as u32);
        let kernel = |suffix: &str| match residual {
            Some(_) => format!("residual_layer_norm_{suffix}"),
            None => format!("layer_norm_{suffix}"),
        };
        let dev = &x.device;
        let config = launch_config(rows.div_ceil((THREADS / 32) as usize), THREADS);
        let (rows32, cols32) = (rows as u32, cols as u32);
        macro_rules! launch {
            ($t:ty, $acc:ty, $suffix:literal) => {{
                let src = x.as_cuda_slice::<$t>()?.slice(start..end);
                let w = weight.as_cuda_slice::<$acc>()?;
                let w = w.slice(weight_layout.start_offset()..);
                let b = bias.as_cuda_slice::<$acc>()?;
                let b = b.slice(bias_layout.start_offset()..);
                let r = match residual {
                    Some((r, (s, e))) => Some(r.as_cuda_slice::<$t>()?.slice(s..e)),
                    None => None,
                };
                // SAFETY: the kernel writes every one of the rows * cols values.
                let out = unsafe { dev.alloc::<$t>(rows * cols)? };
                let eps = eps as $acc;
                let func =
                    dev.get_or_load_custom_func(&kernel($suffix), "meshcast_layer_norm", PTX)?;
                let mut launch = func.builder();
                launch.arg(&src);
                if let Some(r) = &r {
                    launch.arg(r);
                    launch.arg(&residual_rows);
                }
                launch.arg(&w);
                launch.arg(&b);
                launch.arg(&out);
                launch.arg(&rows32);
                launch.arg(&cols32);
                launch.arg(&eps);
                // SAFETY: argument types and order match the kernel's signature (the
                // residual kernel's two more after the input).
                unsafe { launch.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match (x.dtype(), weight.dtype(), bias.dtype()) {
            (DType::F32, DType::F32, DType::F32) => launch!(f32, f32, "f32"),
            (DType::F64, DType::F64, DType::F64) => launch!(f64, f64, "f64"),
            (DType::BF16, DType::F32, DType::F32) => launch!(half::bf16, f32, "bf16"),
            (DType::F16, DType::F32, DType::F32) => launch!(half::f16, f32, "f16"),
            (x, w, _) => bail!("layer norm of {x:?} with {w:?} weights"),
        };
        Ok((out, x_layout.shape().clone()))
    }

    /// Rows each warp of the backward kernel takes at least: its partial sums (2 rows of
    /// `cols` per warp) are then at most a quarter of dx, which keeps them alive (dx is
    /// a view of the kernel's one output in f32 and f64).
    const BACKWARD_ROWS_PER_WARP: usize = 8;
    /// Columns the backward kernel takes (`LAYER_NORM_BACKWARD_MAX_COLS`).
    const BACKWARD_MAX_COLS: usize = 512;
    /// Blocks of the backward kernel at most: its partial column sums are
    /// `8 x blocks x 2 x cols` values, summed on the host side by one reduction.
    const BACKWARD_MAX_BLOCKS: usize = 1024;

    /// The LayerNorm's `(dx, dweight, dbias)` from one kernel (dx and each warp's
    /// partial column sums) and one sum over the warps, or None for rows too wide for
    /// the kernel or dtypes it does not take.
    pub fn backward(
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
        eps: f64,
    ) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        let cols = weight.elem_count();
        let fits = super::cuda_norm_dtypes(x.dtype(), weight.dtype()) && grad.dtype() == x.dtype();
        if cols == 0 || cols > BACKWARD_MAX_COLS || !fits || grad.dims() != x.dims() {
            return Ok(None);
        }
        let rows = x.elem_count() / cols;
        let warp_rows = (THREADS / 32) as usize * BACKWARD_ROWS_PER_WARP;
        let blocks = rows.div_ceil(warp_rows).clamp(1, BACKWARD_MAX_BLOCKS);
        let (x, weight, grad) = (
            x.detach().contiguous()?,
            weight.detach().contiguous()?,
            grad.detach().contiguous()?,
        );
        let packed = x.apply_op3_no_bwd(&weight, &grad, &BackwardOp { eps, blocks })?;
        let dx = packed
            .narrow(0, 0, rows * cols)?
            .reshape(x.shape())?
            .to_dtype(x.dtype())?;
        let warps = blocks * (THREADS / 32) as usize;
        let sums = packed
            .narrow(0, rows * cols, warps * 2 * cols)?
            .reshape((warps, 2, cols))?
            .sum(0)?;
        Ok(Some((dx, sums.get(0)?, sums.get(1)?)))
    }

    /// The kernel behind [`backward`]: `(x, weight, grad)` in, dx then the warps'
    /// partial sums out, flat, in the weights' dtype.
    struct BackwardOp {
        eps: f64,
        blocks: usize,
    }

    impl CustomOp3 for BackwardOp {
        fn name(&self) -> &'static str {
            "meshcast-layer-norm-backward"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("the LayerNorm backward kernel is CUDA's (the CPU has its own)")
        }

        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            x_layout: &Layout,
            weight: &CudaStorage,
            weight_layout: &Layout,
            grad: &CudaStorage,
            grad_layout: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let span = |l: &Layout| {
                l.contiguous_offsets()
                    .context("layer norm backward: contiguous operands")
            };
            let ((xs, xe), (ws, we), (gs, ge)) =
                (span(x_layout)?, span(weight_layout)?, span(grad_layout)?);
            let cols = we - ws;
            let rows = (xe - xs) / cols.max(1);
            let warps = self.blocks * (THREADS / 32) as usize;
            let len = rows * cols + warps * 2 * cols;
            let dev = &x.device;
            let (rows32, cols32) = (rows as u32, cols as u32);
            macro_rules! launch {
                ($t:ty, $acc:ty, $kernel:literal) => {{
                    let src = x.as_cuda_slice::<$t>()?.slice(xs..xe);
                    let w = weight.as_cuda_slice::<$acc>()?.slice(ws..we);
                    let g = grad.as_cuda_slice::<$t>()?.slice(gs..ge);
                    // SAFETY: the kernel writes dx for every row and the partial sums of
                    // every warp of the launch (blocks x 8), all `len` values.
                    let out = unsafe { dev.alloc::<$acc>(len)? };
                    let func = dev.get_or_load_custom_func($kernel, "meshcast_layer_norm", PTX)?;
                    let eps = self.eps as $acc;
                    let mut launch = func.builder();
                    launch.arg(&src);
                    launch.arg(&w);
                    launch.arg(&g);
                    launch.arg(&out);
                    launch.arg(&rows32);
                    launch.arg(&cols32);
                    launch.arg(&eps);
                    let config = launch_config(self.blocks, THREADS);
                    // SAFETY: argument types and order match the kernel's signature.
                    unsafe { launch.launch(config) }.w()?;
                    CudaStorage::wrap_cuda_slice(out, dev.clone())
                }};
            }
            let out = match (x.dtype(), weight.dtype(), grad.dtype()) {
                (DType::F32, DType::F32, DType::F32) => {
                    launch!(f32, f32, "layer_norm_backward_f32")
                }
                (DType::F64, DType::F64, DType::F64) => {
                    launch!(f64, f64, "layer_norm_backward_f64")
                }
                (DType::BF16, DType::F32, DType::BF16) => {
                    launch!(half::bf16, f32, "layer_norm_backward_bf16")
                }
                (DType::F16, DType::F32, DType::F16) => {
                    launch!(half::f16, f32, "layer_norm_backward_f16")
                }
                (x, w, g) => {
                    bail!("layer norm backward of {x:?} with {w:?} weights and {g:?} gradients")
                }
            };
            Ok((out, Shape::from(len)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{check_gradients, random_tensor, test_device};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn normalises_like_the_definition() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let norm = LayerNorm::new(5, vb)?;
        let x = random_tensor(&[3, 5], DType::F64, 1)?;
        let y = norm.forward(&x)?.to_vec2::<f64>()?;
        for (row, out) in x.to_vec2::<f64>()?.iter().zip(&y) {
            let mean = row.iter().sum::<f64>() / 5.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
            for (v, o) in row.iter().zip(out) {
                let expected = (v - mean) / (var + LAYER_NORM_EPS).sqrt();
                assert!((o - expected).abs() < 1e-12, "{o} vs {expected}");
            }
        }
        Ok(())
    }

    /// The definition in plain f64 tensor ops, the reference for the custom op.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F64)?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let std = (centred.sqr()?.mean_keepdim(D::Minus1)? + LAYER_NORM_EPS)?.sqrt()?;
        centred
            .broadcast_div(&std)?
            .broadcast_mul(&w.to_dtype(DType::F64)?)?
            .broadcast_add(&b.to_dtype(DType::F64)?)
    }

    /// `|a - e| / |e|` (2-norms) for `a` on any device and dtype, `e` on the CPU in f64.
    fn normwise_error(a: &Tensor, e: &Tensor) -> Result<f64> {
        let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        let d = (a - e)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        Ok(d / e.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?)
    }

    /// The op on `device` against the f64 definition and its autograd on the CPU.
    fn every_dtype_matches_the_definition_and_its_gradients(device: &Device) -> Result<()> {
        // Enough rows (> 2^15 values) for the CPU's parallel path; f32 master weights
        // for low-precision inputs, as under mixed precision.
        let w = random_tensor(&[64], DType::F32, 3)?;
        let b = random_tensor(&[64], DType::F32, 4)?;
        let x64 = random_tensor(&[2, 300, 64], DType::F64, 5)?;
        let r = Tensor::from_vec(
            (0..2 * 300 * 64)
                .map(|i| ((i % 7) as f64 - 3.0) / 3.0)
                .collect::<Vec<_>>(),
            (2, 300, 64),
            device,
        )?;
        let on_device = |t: &Tensor| candle_core::Var::from_tensor(&t.to_device(device)?);
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2), (DType::F16, 2e-3)] {
            let x_cpu = x64.to_dtype(dtype)?;
            let (x, wv, bv) = (on_device(&x_cpu)?, on_device(&w)?, on_device(&b)?);
            let op = LayerNormOp {
                eps: LAYER_NORM_EPS,
            };
            let y = x
                .as_tensor()
                .apply_op3(wv.as_tensor(), bv.as_tensor(), op)?;
            assert_eq!(y.dtype(), dtype);
            let expected = reference(&x_cpu, &w, &b)?;
            assert!(normwise_error(&y, &expected)? < tol, "{dtype:?} forward");
            // Gradients against autograd through the f64 definition.
            let g = (y.to_dtype(DType::F64)? * &r)?.sum_all()?.backward()?;
            let (x_ref, w_ref, b_ref) = (
                candle_core::Var::from_tensor(&x_cpu.to_dtype(DType::F64)?)?,
                candle_core::Var::from_tensor(&w.to_dtype(DType::F64)?)?,
                candle_core::Var::from_tensor(&b.to_dtype(DType::F64)?)?,
            );
            let r = r.to_device(&Device::Cpu)?;
            let g_ref = (reference(x_ref.as_tensor(), w_ref.as_tensor(), b_ref.as_tensor())? * &r)?
                .sum_all()?
                .backward()?;
            for (mine, theirs) in [(&x, &x_ref), (&wv, &w_ref), (&bv, &b_ref)] {
                let a = g.get(mine.as_tensor()).expect("a gradient");
                assert_eq!(a.dtype(), mine.dtype());
                // A gradient that tracks its inputs would keep the step's graph alive.
                assert!(!a.track_op(), "{dtype:?}: the gradient holds the graph");
                let e = g_ref.get(theirs.as_tensor()).expect("a gradient");
                assert!(normwise_error(a, e)? < 2.0 * tol, "{dtype:?} gradient");
            }
        }
        Ok(())
    }

    test_device!(
        every_dtype_matches_the_definition_and_its_gradients,
        every_dtype_matches_the_definition_and_its_gradients_cpu,
        every_dtype_matches_the_definition_and_its_gradients_cuda
    );

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let norm = LayerNorm::new(6, vb)?;
        // Move weight and bias off their 1/0 initialisation so every term matters.
        for var in varmap.all_vars() {
            var.set(&random_tensor(var.dims(), DType::F64, 7)?)?;
        }
        let x = random_tensor(&[2, 3, 6], DType::F64, 2)?;
        check_gradients(&varmap, &x, |x| norm.forward(x), &["weight", "bias"])?;
        // The residual form, with a residual that broadcasts over the batch.
        check_gradients(
            &varmap,
            &x,
            |x| norm.forward_residual(&x.sqr()?, &x.narrow(0, 0, 1)?),
            &["weight", "bias"],
        )
    }

    #[test]
    fn residual_form_equals_norm_plus_residual_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let norm = LayerNorm::new(64, vb)?;
        for var in varmap.all_vars() {
            var.set(&random_tensor(var.dims(), DType::F32, 7)?)?;
        }
        let x = candle_core::Var::from_tensor(&random_tensor(&[3, 300, 64], DType::F32, 1)?)?;
        // A residual of x's shape, and one broadcasting over the batch.
        for residual_batch in [3, 1] {
            let residual = candle_core::Var::from_tensor(&random_tensor(
                &[residual_batch, 300, 64],
                DType::F32,
                2,
            )?)?;
            let r = random_tensor(&[3, 300, 64], DType::F32, 3)?;
            let fused = norm.forward_residual(&x, &residual)?;
            let composed = residual.broadcast_add(&norm.forward(&x)?)?;
            let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "forward");
            let g = (fused * &r)?.sum_all()?.backward()?;
            let g_ref = (composed * &r)?.sum_all()?.backward()?;
            let mut vars = varmap.all_vars();
            vars.extend([x.clone(), residual.clone()]);
            for v in &vars {
                let mine = g.get(v.as_tensor()).expect("a gradient");
                assert!(!mine.track_op(), "the gradient holds the graph");
                let theirs = g_ref.get(v.as_tensor()).expect("a gradient");
                assert_eq!(mine.dims(), v.dims());
                let d = (mine - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = theirs.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d <= 1e-5 * scale, "gradient {d} of {scale}");
            }
        }
        Ok(())
    }

    /// [`ResidualLayerNormOp`] on `device` (its CUDA path runs whatever
    /// `--cuda-fused-ops` says), with a residual of x's shape and one broadcasting over
    /// the batch: outputs and gradients against `residual + LayerNorm(x)` through the
    /// f64 definition on the CPU.
    fn the_residual_op_matches_the_definition(device: &Device) -> Result<()> {
        use candle_core::Var;
        let cases: &[(DType, DType, f64)] = match device.is_cpu() {
            true => &[
                (DType::F32, DType::F32, 1e-5),
                (DType::F64, DType::F64, 1e-12),
            ],
            false => &[
                (DType::F32, DType::F32, 1e-5),
                (DType::BF16, DType::F32, 2e-2),
                (DType::F16, DType::F32, 2e-3),
            ],
        };
        let x64 = random_tensor(&[3, 300, 64], DType::F64, 1)?;
        let (w64, b64) = (
            random_tensor(&[64], DType::F64, 3)?,
            random_tensor(&[64], DType::F64, 4)?,
        );
        let r64 = random_tensor(&[3, 300, 64], DType::F64, 5)?;
        let here = |t: &Tensor, d: DType| Var::from_tensor(&t.to_dtype(d)?.to_device(device)?);
        let exact = |v: &Var| Var::from_tensor(&v.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
        for &(dtype, weight_dtype, tol) in cases {
            for residual_batch in [3, 1] {
                let res64 = random_tensor(&[residual_batch, 300, 64], DType::F64, 2)?;
                let (x, residual) = (here(&x64, dtype)?, here(&res64, dtype)?);
                let (w, b) = (here(&w64, weight_dtype)?, here(&b64, weight_dtype)?);
                let affine = Tensor::stack(&[w.as_tensor(), b.as_tensor()], 0)?;
                let op = ResidualLayerNormOp {
                    eps: LAYER_NORM_EPS,
                };
                let y = x.apply_op3(&residual, &affine, op)?;
                assert_eq!(y.dtype(), dtype);
                let r = r64.to_dtype(dtype)?.to_device(device)?;
                let grads = (&y * &r)?.sum_all()?.backward()?;
                let (xe, re, we, be) = (exact(&x)?, exact(&residual)?, exact(&w)?, exact(&b)?);
                let expected = re.broadcast_add(&reference(&xe, &we, &be)?)?;
                let case = format!("{dtype:?}, residual batch {residual_batch}");
                assert!(normwise_error(&y, &expected)? < tol, "{case}: forward");
                let expected_grads = (expected * &r64)?.sum_all()?.backward()?;
                for (mine, theirs) in [(&x, &xe), (&residual, &re), (&w, &we), (&b, &be)] {
                    let g = grads.get(mine.as_tensor()).expect("a gradient");
                    assert_eq!((g.dtype(), g.dims()), (mine.dtype(), mine.dims()));
                    assert!(!g.track_op(), "{case}: the gradient holds the graph");
                    let e = expected_grads.get(theirs.as_tensor()).expect("a gradient");
                    assert!(normwise_error(g, e)? < 2.0 * tol, "{case}: gradient");
                }
            }
        }
        Ok(())
    }

    test_device!(
        the_residual_op_matches_the_definition,
        the_residual_op_matches_the_definition_cpu,
        the_residual_op_matches_the_definition_cuda
    );

    /// The backward kernel (`--cuda-fused-ops`) against the composed backward on the
    /// same GPU: more rows than the kernel has warps (its grid-stride loop), and rows
    /// of a width that is not a multiple of the warp.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_backward_kernel_equals_the_composed_backward_cuda() -> Result<()> {
        let Some(device) = crate::model::testing::test_gpu()? else {
            return Ok(());
        };
        let on_cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F64);
        for (dtype, weight_dtype, tol) in [
            (DType::F32, DType::F32, 1e-5),
            (DType::F64, DType::F64, 1e-12),
            (DType::BF16, DType::F32, 1e-2),
            (DType::F16, DType::F32, 2e-3),
        ] {
            for (rows, cols) in [(9000, 128), (300, 100)] {
                let here = |d: DType, shape: &[usize], seed| {
                    random_tensor(shape, DType::F64, seed)?
                        .to_dtype(d)?
                        .to_device(&device)
                };
                let x = here(dtype, &[rows, cols], 1)?;
                let g = here(dtype, &[rows, cols], 2)?;
                let w = here(weight_dtype, &[cols], 3)?;
                let kernel = super::cuda::backward(&x, &w, &g, LAYER_NORM_EPS)?
                    .expect("the kernel takes these");
                let composed = composed_backward(&x, &w, &g, LAYER_NORM_EPS)?;
                for (name, mine, theirs) in [
                    ("dx", &kernel.0, &composed.0),
                    ("dweight", &kernel.1, &composed.1),
                    ("dbias", &kernel.2, &composed.2),
                ] {
                    assert_eq!(
                        (mine.dtype(), mine.dims()),
                        (theirs.dtype(), theirs.dims()),
                        "{name}"
                    );
                    let error = normwise_error(mine, &on_cpu(theirs)?)?;
                    assert!(
                        error < tol,
                        "{dtype:?}, {rows} x {cols}: {name} differs by {error}"
                    );
                }
            }
        }
        Ok(())
    }
}
