//! Layer normalisation over the last dimension, as one custom op with its own backward.
//!
//! candle-nn's `LayerNorm` (and `ops::layer_norm`) dispatch to a fused kernel that has
//! no backward pass on contiguous inputs: gradients silently stop at it. Built from
//! basic tensor ops instead, a norm is differentiable but keeps about five row-sized
//! intermediates alive for the backward pass, the largest share of a block's
//! activations. [`LayerNormOp`] runs the forward pass as one kernel (CPU: rows on
//! candle's worker pool; CUDA: src/model/layer_norm.cu) and keeps only its input; the
//! backward recomputes the row statistics and applies the closed-form gradient.

use candle_core::backend::BackendStorage;
use candle_core::{bail, Context, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use candle_nn::{Init, Module, VarBuilder};

use super::row_kernels::fill_rows;

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
            (weight, weight_layout),
            (bias, bias_layout),
            rows,
            cols,
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
        let rstd = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
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
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// One LayerNorm call on the CPU: each row's statistics in f64, in two passes.
struct Rows<'a> {
    rows: usize,
    cols: usize,
    w: &'a [f64],
    b: &'a [f64],
    eps: f64,
}

/// A float element the CPU kernel reads and writes.
trait Element: Copy + Default + Send + Sync {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $to:expr, $from:expr) => {
        impl Element for $t {
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}
element!(f32, |v: f32| v as f64, |v: f64| v as f32);
element!(f64, |v: f64| v, |v: f64| v);
element!(half::bf16, |v: half::bf16| v.to_f64(), half::bf16::from_f64);
element!(half::f16, |v: half::f16| v.to_f64(), half::f16::from_f64);

impl Rows<'_> {
    fn run<T: Element>(&self, x: &[T]) -> Vec<T> {
        let cols = self.cols;
        let mut out = vec![T::default(); self.rows * cols];
        fill_rows(&mut out, cols, x.len(), |r, y| {
            self.row(&x[r * cols..(r + 1) * cols], y)
        });
        out
    }

    fn row<T: Element>(&self, x: &[T], y: &mut [T]) {
        let n = self.cols as f64;
        let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
        let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + self.eps).sqrt();
        for (((o, v), w), b) in y.iter_mut().zip(x).zip(self.w).zip(self.b) {
            *o = T::from_f64((v.to_f64() - mean) * rstd * w + b);
        }
    }
}

/// The CUDA side of [`LayerNormOp`]: src/model/layer_norm.cu, compiled to PTX by build.rs.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{bail, Context, CudaStorage, DType, Layout, Result, Shape};

    use crate::model::row_kernels::launch_config;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/layer_norm.ptx"));
    /// Threads per block: 8 warps, one row each.
    const THREADS: u32 = 256;

    pub fn layer_norm(
        x: &CudaStorage,
        x_layout: &Layout,
        (weight, weight_layout): (&CudaStorage, &Layout),
        (bias, bias_layout): (&CudaStorage, &Layout),
        rows: usize,
        cols: usize,
        eps: f64,
    ) -> Result<(CudaStorage, Shape)> {
        let (start, end) = x_layout
            .contiguous_offsets()
            .context("layer norm needs a contiguous input")?;
        let dev = &x.device;
        let config = launch_config(rows.div_ceil((THREADS / 32) as usize), THREADS);
        let (rows32, cols32) = (rows as u32, cols as u32);
        macro_rules! launch {
            ($t:ty, $acc:ty, $kernel:literal) => {{
                let src = x.as_cuda_slice::<$t>()?.slice(start..end);
                let w = weight.as_cuda_slice::<$acc>()?;
                let w = w.slice(weight_layout.start_offset()..);
                let b = bias.as_cuda_slice::<$acc>()?;
                let b = b.slice(bias_layout.start_offset()..);
                // SAFETY: the kernel writes every one of the rows * cols values.
                let out = unsafe { dev.alloc::<$t>(rows * cols)? };
                let func = dev.get_or_load_custom_func($kernel, "meshcast_layer_norm", PTX)?;
                let eps = eps as $acc;
                let mut launch = func.builder();
                launch.arg(&src);
                launch.arg(&w);
                launch.arg(&b);
                launch.arg(&out);
                launch.arg(&rows32);
                launch.arg(&cols32);
                launch.arg(&eps);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { launch.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match (x.dtype(), weight.dtype(), bias.dtype()) {
            (DType::F32, DType::F32, DType::F32) => launch!(f32, f32, "layer_norm_f32"),
            (DType::F64, DType::F64, DType::F64) => launch!(f64, f64, "layer_norm_f64"),
            (DType::BF16, DType::F32, DType::F32) => launch!(half::bf16, f32, "layer_norm_bf16"),
            (DType::F16, DType::F32, DType::F32) => launch!(half::f16, f32, "layer_norm_f16"),
            (x, w, _) => bail!("layer norm of {x:?} with {w:?} weights"),
        };
        Ok((out, x_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{check_gradients, random_tensor};
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

    #[test]
    fn every_dtype_matches_the_definition_and_its_gradients() -> Result<()> {
        // Enough rows (> 2^15 values) for the parallel path; f32 master weights for
        // low-precision inputs, as under mixed precision.
        let w = random_tensor(&[64], DType::F32, 3)?;
        let b = random_tensor(&[64], DType::F32, 4)?;
        let x64 = random_tensor(&[2, 300, 64], DType::F64, 5)?;
        let r = Tensor::from_vec(
            (0..2 * 300 * 64)
                .map(|i| ((i % 7) as f64 - 3.0) / 3.0)
                .collect::<Vec<_>>(),
            (2, 300, 64),
            &Device::Cpu,
        )?;
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2), (DType::F16, 2e-3)] {
            let x = candle_core::Var::from_tensor(&x64.to_dtype(dtype)?)?;
            let (wv, bv) = (
                candle_core::Var::from_tensor(&w)?,
                candle_core::Var::from_tensor(&b)?,
            );
            let op = LayerNormOp {
                eps: LAYER_NORM_EPS,
            };
            let y = x
                .as_tensor()
                .apply_op3(wv.as_tensor(), bv.as_tensor(), op)?;
            assert_eq!(y.dtype(), dtype);
            let expected = reference(x.as_tensor(), &w, &b)?;
            let rel = |a: &Tensor, e: &Tensor| -> Result<f64> {
                let a = a.to_dtype(DType::F64)?;
                let d = (a - e)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
                Ok(d / e.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?)
            };
            assert!(rel(&y, &expected)? < tol, "{dtype:?} forward");
            // Gradients against autograd through the f64 definition.
            let g = (y.to_dtype(DType::F64)? * &r)?.sum_all()?.backward()?;
            let (x_ref, w_ref, b_ref) = (
                candle_core::Var::from_tensor(&x.as_tensor().to_dtype(DType::F64)?)?,
                candle_core::Var::from_tensor(&w.to_dtype(DType::F64)?)?,
                candle_core::Var::from_tensor(&b.to_dtype(DType::F64)?)?,
            );
            let g_ref = (reference(x_ref.as_tensor(), w_ref.as_tensor(), b_ref.as_tensor())? * &r)?
                .sum_all()?
                .backward()?;
            for (mine, theirs) in [(&x, &x_ref), (&wv, &w_ref), (&bv, &b_ref)] {
                let a = g.get(mine.as_tensor()).expect("a gradient");
                assert_eq!(a.dtype(), mine.dtype());
                // A gradient that tracks its inputs would keep the step's graph alive.
                assert!(!a.track_op(), "{dtype:?}: the gradient holds the graph");
                let e = g_ref.get(theirs.as_tensor()).expect("a gradient");
                assert!(rel(a, e)? < 2.0 * tol, "{dtype:?} gradient");
            }
        }
        Ok(())
    }

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
        check_gradients(&varmap, &x, |x| norm.forward(x), &["weight", "bias"])
    }
}
