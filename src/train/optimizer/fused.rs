//! The fused AdamW update, in place and in two stages: one pass over the optimizer's
//! arena (first and second moments) with the flat gradients, the clip and loss-scale
//! multiplier folded in; then one pass over each parameter's weights (the model's own
//! variables) with its new moments. On the CPU large ranges are split into chunks on
//! candle's worker pool; on CUDA the first stage is one kernel per run of parameters
//! that have a gradient (usually one), the second one kernel per parameter. Each
//! element follows candle-nn's composed AdamW operation for operation
//! (`reference::step`), so the CPU result is bit for bit the composed one.

use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor};

use crate::model::row_kernels::{contiguous_values, fill_rows, SharedMut};

/// Elements per task on the worker pool.
const CHUNK: usize = 1 << 14;

/// The scalars of one update, in f64 (each kernel converts them to its element type,
/// as candle's affine ops do).
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub lr: f64,
    /// `1 - lr * weight_decay`.
    pub decay: f64,
    /// Bias corrections `1 / (1 - beta^t)`.
    pub scale_m: f64,
    pub scale_v: f64,
    /// What each gradient is multiplied by first (clip scale, loss-scale and
    /// accumulation corrections); None: used as it is.
    pub grad_multiplier: Option<f64>,
}

/// Stage 1 of an update: the moments `[2, n]` (rows m, v) of the parameters that have a
/// gradient (the `segments`: start, length), from the flat gradients `[n]`.
pub struct MomentsUpdate {
    pub hyper: Hyper,
    pub segments: Vec<(usize, usize)>,
}

/// Stage 2: one parameter's weights, in place, from its new moments at `offset` in the
/// arena. The weights stay in the model's own variables (no second copy of them).
pub struct WeightsUpdate {
    pub hyper: Hyper,
    pub offset: usize,
}

/// The element types of the fused update.
trait AdamFloat: candle_core::WithDType {
    fn sqrt(self) -> Self;
}
impl AdamFloat for f32 {
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}
impl AdamFloat for f64 {
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// [`Hyper`] in the element type.
struct Scalars<T> {
    mult: Option<T>,
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    scale_m: T,
    scale_v: T,
    decay: T,
    lr: T,
    eps: T,
}

impl<T: AdamFloat> Scalars<T> {
    fn new(h: &Hyper) -> Self {
        Scalars {
            mult: h.grad_multiplier.map(T::from_f64),
            beta1: T::from_f64(h.beta1),
            one_minus_beta1: T::from_f64(1.0 - h.beta1),
            beta2: T::from_f64(h.beta2),
            one_minus_beta2: T::from_f64(1.0 - h.beta2),
            scale_m: T::from_f64(h.scale_m),
            scale_v: T::from_f64(h.scale_v),
            decay: T::from_f64(h.decay),
            lr: T::from_f64(h.lr),
            eps: T::from_f64(h.eps),
        }
    }

    // Both stages compute as the composed ops do: every `* s` of a tensor by a scalar
    // is candle's affine `x * s + 0`, and `+ eps` is `x * 1 + eps`.

    #[inline]
    fn moments(&self, m: &mut T, v: &mut T, g: T) {
        let zero = T::zero();
        let g = match self.mult {
            Some(s) => g * s + zero,
            None => g,
        };
        *m = (*m * self.beta1 + zero) + (g * self.one_minus_beta1 + zero);
        *v = (*v * self.beta2 + zero) + ((g * g) * self.one_minus_beta2 + zero);
    }

    #[inline]
    fn weight(&self, w: &mut T, m: T, v: T) {
        let zero = T::zero();
        let m_hat = m * self.scale_m + zero;
        let v_hat = v * self.scale_v + zero;
        let theta = *w * self.decay + zero;
        let adjusted = m_hat / (v_hat.sqrt() * T::one() + self.eps);
        *w = theta - (adjusted * self.lr + zero);
    }
}

/// Calls `run(from, to)` over `start..start + len` in chunks of [`CHUNK`], on the
/// worker pool when there is more than one.
fn in_chunks(start: usize, len: usize, run: impl Fn(usize, usize) + Sync) {
    let chunks = len.div_ceil(CHUNK);
    let range = |c: std::ops::Range<usize>| {
        run(
            start + c.start * CHUNK,
            (start + c.end * CHUNK).min(start + len),
        )
    };
    if chunks > 1 {
        candle_core::utils::barrier_pool().execute_chunked(chunks, range);
    } else {
        range(0..chunks);
    }
}

impl MomentsUpdate {
    fn cpu<T: AdamFloat>(&self, state: &mut [T], grads: &[T]) -> Result<()> {
        let n = grads.len();
        if state.len() != 2 * n {
            bail!(
                "fused AdamW: moments of {} values for {n} gradients",
                state.len()
            )
        }
        let s = Scalars::<T>::new(&self.hyper);
        let (m, v) = state.split_at_mut(n);
        let (m, v) = (SharedMut::new(m), SharedMut::new(v));
        for &(start, len) in &self.segments {
            if start + len > n {
                bail!("fused AdamW: segment {start}+{len} beyond {n} values")
            }
            in_chunks(start, len, |from, to| {
                // SAFETY: chunks of one segment are disjoint, segments do not overlap,
                // and all lie inside the arena (checked above).
                let (m, v) = unsafe { (m.range(from, to), v.range(from, to)) };
                for (i, g) in grads[from..to].iter().enumerate() {
                    s.moments(&mut m[i], &mut v[i], *g);
                }
            });
        }
        Ok(())
    }
}

impl WeightsUpdate {
    fn cpu<T: AdamFloat>(&self, weights: &mut [T], state: &[T]) -> Result<()> {
        let (n, len) = (state.len() / 2, weights.len());
        if self.offset + len > n {
            bail!(
                "fused AdamW: weights at {}+{len} beyond {n} moments",
                self.offset
            )
        }
        let s = Scalars::<T>::new(&self.hyper);
        let m = &state[self.offset..self.offset + len];
        let v = &state[n + self.offset..n + self.offset + len];
        let w = SharedMut::new(weights);
        in_chunks(0, len, |from, to| {
            // SAFETY: disjoint chunks inside `weights`.
            let w = unsafe { w.range(from, to) };
            for (i, w) in w.iter_mut().enumerate() {
                s.weight(w, m[from + i], v[from + i]);
            }
        });
        Ok(())
    }
}

/// The values of a contiguous in-place operand.
fn contiguous_mut<'a, T: candle_core::WithDType>(
    values: &'a mut [T],
    layout: &Layout,
) -> Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut values[start..end]),
        None => bail!("fused AdamW: needs contiguous tensors"),
    }
}

/// The two stages share their dispatch: `dst` mutable, `src` read, both f32 or f64.
macro_rules! cpu_dispatch {
    ($self:ident, $dst:ident, $dst_l:ident, $src:ident, $src_l:ident) => {
        match $dst {
            CpuStorage::F32(d) => $self.cpu(
                contiguous_mut(d, $dst_l)?,
                contiguous_values::<f32>($src, $src_l, "fused AdamW")?,
            ),
            CpuStorage::F64(d) => $self.cpu(
                contiguous_mut(d, $dst_l)?,
                contiguous_values::<f64>($src, $src_l, "fused AdamW")?,
            ),
            other => bail!(
                "fused AdamW: {:?} values",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}

impl InplaceOp2 for MomentsUpdate {
    fn name(&self) -> &'static str {
        "meshcast-adamw-moments"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grads: &CpuStorage,
        grads_l: &Layout,
    ) -> Result<()> {
        cpu_dispatch!(self, dst, dst_l, grads, grads_l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        grads: &candle_core::CudaStorage,
        grads_l: &Layout,
    ) -> Result<()> {
        cuda::moments(self, (dst, dst_l), (grads, grads_l))
    }
}

impl InplaceOp2 for WeightsUpdate {
    fn name(&self) -> &'static str {
        "meshcast-adamw-weights"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        state: &CpuStorage,
        state_l: &Layout,
    ) -> Result<()> {
        cpu_dispatch!(self, dst, dst_l, state, state_l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        state: &candle_core::CudaStorage,
        state_l: &Layout,
    ) -> Result<()> {
        cuda::weights(self, (dst, dst_l), (state, state_l))
    }
}

/// Sum of the squares of `values` (a flat f32 or f64 tensor), accumulated in f64; the
/// one host sync of an optimizer step. On the CPU fixed chunks are summed on the
/// worker pool and their sums added in order, so the result never depends on the
/// threads.
pub fn sum_of_squares(values: &Tensor) -> Result<f64> {
    let (storage, layout) = values.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu @ CpuStorage::F32(_)) => {
            let v = contiguous_values::<f32>(cpu, layout, "sum of squares")?;
            Ok(chunked_sum(v.len(), |i| v[i] as f64 * v[i] as f64))
        }
        Storage::Cpu(cpu @ CpuStorage::F64(_)) => {
            let v = contiguous_values::<f64>(cpu, layout, "sum of squares")?;
            Ok(chunked_sum(v.len(), |i| v[i] * v[i]))
        }
        _ => {
            drop(storage);
            values
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()
        }
    }
}

/// `sum(term(i))` for i in 0..n, per fixed chunk (on the worker pool when large),
/// the chunks' sums added in order.
fn chunked_sum(n: usize, term: impl Fn(usize) -> f64 + Sync) -> f64 {
    let mut partial = vec![0f64; n.div_ceil(CHUNK)];
    fill_rows(&mut partial, 1, n, |c, sum| {
        sum[0] = (c * CHUNK..((c + 1) * CHUNK).min(n)).map(&term).sum();
    });
    partial.iter().sum()
}

/// The CUDA kernels (src/model/kernels/adamw.cu), compiled to PTX by build.rs.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{bail, CudaStorage, DType, Layout, Result};

    use super::{MomentsUpdate, WeightsUpdate};
    use crate::model::row_kernels::launch_config;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
    const THREADS: u32 = 256;

    fn whole(layout: &Layout) -> Result<(usize, usize)> {
        match layout.contiguous_offsets() {
            Some(range) => Ok(range),
            None => bail!("fused AdamW: needs contiguous tensors"),
        }
    }

    /// One launch per segment of parameters with a gradient.
    pub fn moments(
        op: &MomentsUpdate,
        (dst, dst_l): (&mut CudaStorage, &Layout),
        (grads, grads_l): (&CudaStorage, &Layout),
    ) -> Result<()> {
        let h = op.hyper;
        let dev = dst.device.clone();
        let ((d0, d1), (g0, g1)) = (whole(dst_l)?, whole(grads_l)?);
        let n = g1 - g0;
        if d1 - d0 != 2 * n {
            bail!(
                "fused AdamW: moments of {} values for {n} gradients",
                d1 - d0
            )
        }
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let g = grads.as_cuda_slice::<$t>()?;
                let state = dst.as_cuda_slice_mut::<$t>()?;
                let mut state = state.slice_mut(d0..d1);
                let func = dev.get_or_load_custom_func($kernel, "meshcast_adamw", PTX)?;
                let scalars = [
                    h.grad_multiplier.unwrap_or(1.0),
                    h.beta1,
                    1.0 - h.beta1,
                    h.beta2,
                    1.0 - h.beta2,
                ]
                .map(|v| v as $t);
                let scaled = h.grad_multiplier.is_some() as i32;
                for &(start, len) in &op.segments {
                    let g = g.slice(g0 + start..g0 + start + len);
                    let (n64, start64, len64) = (n as u64, start as u64, len as u64);
                    let mut launch = func.builder();
                    launch.arg(&mut state);
                    launch.arg(&g);
                    launch.arg(&n64);
                    launch.arg(&start64);
                    launch.arg(&len64);
                    launch.arg(&scaled);
                    for s in &scalars {
                        launch.arg(s);
                    }
                    let config = launch_config(len.div_ceil(THREADS as usize), THREADS);
                    // SAFETY: argument types and order match the kernel's signature;
                    // the segment lies inside the arena (2n values).
                    unsafe { launch.launch(config) }.w()?;
                }
                Ok(())
            }};
        }
        match (dst.dtype(), grads.dtype()) {
            (DType::F32, DType::F32) => launch!(f32, "adamw_moments_f32"),
            (DType::F64, DType::F64) => launch!(f64, "adamw_moments_f64"),
            (a, g) => bail!("fused AdamW: {a:?} moments with {g:?} gradients"),
        }
    }

    /// One launch for one parameter.
    pub fn weights(
        op: &WeightsUpdate,
        (dst, dst_l): (&mut CudaStorage, &Layout),
        (state, state_l): (&CudaStorage, &Layout),
    ) -> Result<()> {
        let h = op.hyper;
        let dev = dst.device.clone();
        let ((w0, w1), (s0, s1)) = (whole(dst_l)?, whole(state_l)?);
        let (n, len) = ((s1 - s0) / 2, w1 - w0);
        if op.offset + len > n {
            bail!(
                "fused AdamW: weights at {}+{len} beyond {n} moments",
                op.offset
            )
        }
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let moments = state.as_cuda_slice::<$t>()?.slice(s0..s1);
                let w = dst.as_cuda_slice_mut::<$t>()?;
                let mut w = w.slice_mut(w0..w1);
                let func = dev.get_or_load_custom_func($kernel, "meshcast_adamw", PTX)?;
                let scalars = [h.scale_m, h.scale_v, h.decay, h.lr, h.eps].map(|v| v as $t);
                let (n64, offset64, len64) = (n as u64, op.offset as u64, len as u64);
                let mut launch = func.builder();
                launch.arg(&mut w);
                launch.arg(&moments);
                launch.arg(&n64);
                launch.arg(&offset64);
                launch.arg(&len64);
                for s in &scalars {
                    launch.arg(s);
                }
                let config = launch_config(len.div_ceil(THREADS as usize), THREADS);
                // SAFETY: argument types and order match the kernel's signature; the
                // parameter's moments lie inside the arena (checked above).
                unsafe { launch.launch(config) }.w()?;
                Ok(())
            }};
        }
        match (dst.dtype(), state.dtype()) {
            (DType::F32, DType::F32) => launch!(f32, "adamw_weights_f32"),
            (DType::F64, DType::F64) => launch!(f64, "adamw_weights_f64"),
            (w, m) => bail!("fused AdamW: {w:?} weights with {m:?} moments"),
        }
    }
}
