//! The fused AdamW update: one in-place pass over the optimizer arena (master weights,
//! first and second moments) with the flat gradients, the clip and loss-scale
//! multiplier folded in. On the CPU the arena is split into chunks on candle's worker
//! pool; on CUDA one kernel runs per run of parameters that have a gradient (usually
//! one). Each element follows candle-nn's composed AdamW operation for operation
//! (`reference::step`), so the CPU result is bit for bit the composed one.

use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor};

use crate::model::row_kernels::{contiguous_values, SharedMut};

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

/// The update of arena `[3, n]` (rows: weights, m, v) with gradients `[n]` over the
/// `segments` (start, length) of parameters that have a gradient.
pub struct AdamWUpdate {
    pub hyper: Hyper,
    pub segments: Vec<(usize, usize)>,
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

    /// One element, as the composed ops compute it: every `* s` of a tensor by a
    /// scalar is candle's affine `x * s + 0`, and `+ eps` is `x * 1 + eps`.
    #[inline]
    fn update(&self, w: &mut T, m: &mut T, v: &mut T, g: T) {
        let zero = T::zero();
        let g = match self.mult {
            Some(s) => g * s + zero,
            None => g,
        };
        let next_m = (*m * self.beta1 + zero) + (g * self.one_minus_beta1 + zero);
        let next_v = (*v * self.beta2 + zero) + ((g * g) * self.one_minus_beta2 + zero);
        let m_hat = next_m * self.scale_m + zero;
        let v_hat = next_v * self.scale_v + zero;
        let theta = *w * self.decay + zero;
        let adjusted = m_hat / (v_hat.sqrt() * T::one() + self.eps);
        *w = theta - (adjusted * self.lr + zero);
        *m = next_m;
        *v = next_v;
    }
}

impl AdamWUpdate {
    fn cpu<T: AdamFloat>(&self, state: &mut [T], grads: &[T]) -> Result<()> {
        let n = grads.len();
        if state.len() != 3 * n {
            bail!(
                "fused AdamW: an arena of {} values for {n} gradients",
                state.len()
            )
        }
        let s = Scalars::<T>::new(&self.hyper);
        let (w, rest) = state.split_at_mut(n);
        let (m, v) = rest.split_at_mut(n);
        let (w, m, v) = (SharedMut::new(w), SharedMut::new(m), SharedMut::new(v));
        for &(start, len) in &self.segments {
            if start + len > n {
                bail!("fused AdamW: segment {start}+{len} beyond {n} values")
            }
            let run = |chunks: std::ops::Range<usize>| {
                let from = start + chunks.start * CHUNK;
                let to = (start + chunks.end * CHUNK).min(start + len);
                // SAFETY: chunk ranges of one segment are disjoint, segments do not
                // overlap, and all lie inside the arena (checked above).
                let (w, m, v) =
                    unsafe { (w.range(from, to), m.range(from, to), v.range(from, to)) };
                for (i, g) in grads[from..to].iter().enumerate() {
                    s.update(&mut w[i], &mut m[i], &mut v[i], *g);
                }
            };
            let chunks = len.div_ceil(CHUNK);
            if chunks > 1 {
                candle_core::utils::barrier_pool().execute_chunked(chunks, run);
            } else {
                run(0..chunks);
            }
        }
        Ok(())
    }
}

impl InplaceOp2 for AdamWUpdate {
    fn name(&self) -> &'static str {
        "meshcast-fused-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grads: &CpuStorage,
        grads_l: &Layout,
    ) -> Result<()> {
        if !dst_l.is_contiguous() || dst_l.start_offset() != 0 {
            bail!("fused AdamW: the arena must be a whole contiguous tensor")
        }
        match dst {
            CpuStorage::F32(state) => self.cpu(
                state,
                contiguous_values::<f32>(grads, grads_l, "fused AdamW")?,
            ),
            CpuStorage::F64(state) => self.cpu(
                state,
                contiguous_values::<f64>(grads, grads_l, "fused AdamW")?,
            ),
            other => bail!(
                "fused AdamW: an arena of {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        grads: &candle_core::CudaStorage,
        grads_l: &Layout,
    ) -> Result<()> {
        if !dst_l.is_contiguous() || dst_l.start_offset() != 0 {
            bail!("fused AdamW: the arena must be a whole contiguous tensor")
        }
        cuda::update(self, dst, (grads, grads_l))
    }
}

/// Sum of the squares of `values` (a flat f32 or f64 tensor), accumulated in f64; the
/// one host sync of an optimizer step. On the CPU fixed chunks are summed on the
/// worker pool and their sums added in order, so the result never depends on the
/// threads.
pub fn sum_of_squares(values: &Tensor) -> Result<f64> {
    let (storage, layout) = values.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(_)) => {
            let v = contiguous_values::<f32>(cpu(&storage)?, layout, "sum of squares")?;
            Ok(chunked_sum(v.len(), |i| v[i] as f64 * v[i] as f64))
        }
        Storage::Cpu(CpuStorage::F64(_)) => {
            let v = contiguous_values::<f64>(cpu(&storage)?, layout, "sum of squares")?;
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

fn cpu(storage: &Storage) -> Result<&CpuStorage> {
    match storage {
        Storage::Cpu(s) => Ok(s),
        _ => bail!("expected a CPU tensor"),
    }
}

/// `sum(term(i))` for i in 0..n, per fixed chunk on the worker pool, chunks in order.
fn chunked_sum(n: usize, term: impl Fn(usize) -> f64 + Sync) -> f64 {
    let chunks = n.div_ceil(CHUNK);
    let mut partial = vec![0f64; chunks];
    let out = SharedMut::new(&mut partial);
    let run = |range: std::ops::Range<usize>| {
        for c in range {
            let sum = (c * CHUNK..((c + 1) * CHUNK).min(n)).map(&term).sum();
            // SAFETY: each chunk index reaches exactly one call.
            unsafe { out.range(c, c + 1)[0] = sum };
        }
    };
    if chunks > 1 {
        candle_core::utils::barrier_pool().execute_chunked(chunks, run);
    } else {
        run(0..chunks);
    }
    partial.iter().sum()
}

/// The CUDA kernel (src/model/kernels/adamw.cu), compiled to PTX by build.rs.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{backend::BackendStorage, bail, CudaStorage, DType, Layout, Result};

    use super::AdamWUpdate;
    use crate::model::row_kernels::launch_config;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
    const THREADS: u32 = 256;

    pub fn update(
        op: &AdamWUpdate,
        dst: &mut CudaStorage,
        (grads, grads_l): (&CudaStorage, &Layout),
    ) -> Result<()> {
        let h = op.hyper;
        let dev = dst.device.clone();
        let g_start = grads_l.start_offset();
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let g = grads.as_cuda_slice::<$t>()?;
                let n = grads_l.shape().elem_count();
                let state = dst.as_cuda_slice_mut::<$t>()?;
                if state.len() != 3 * n {
                    bail!(
                        "fused AdamW: an arena of {} values for {n} gradients",
                        state.len()
                    )
                }
                let func = dev.get_or_load_custom_func($kernel, "meshcast_adamw", PTX)?;
                let scalars: [$t; 10] = [
                    h.grad_multiplier.unwrap_or(1.0) as $t,
                    h.beta1 as $t,
                    (1.0 - h.beta1) as $t,
                    h.beta2 as $t,
                    (1.0 - h.beta2) as $t,
                    h.scale_m as $t,
                    h.scale_v as $t,
                    h.decay as $t,
                    h.lr as $t,
                    h.eps as $t,
                ];
                let scaled = h.grad_multiplier.is_some() as i32;
                let n64 = n as u64;
                for &(start, len) in &op.segments {
                    let g = g.slice(g_start + start..g_start + start + len);
                    let (start64, len64) = (start as u64, len as u64);
                    let config = launch_config(len.div_ceil(THREADS as usize), THREADS);
                    let mut launch = func.builder();
                    launch.arg(&mut *state);
                    launch.arg(&g);
                    launch.arg(&n64);
                    launch.arg(&start64);
                    launch.arg(&len64);
                    launch.arg(&scaled);
                    for s in &scalars {
                        launch.arg(s);
                    }
                    // SAFETY: argument types and order match the kernel's signature;
                    // the segment lies inside the arena (len of state is 3n).
                    unsafe { launch.launch(config) }.w()?;
                }
                Ok(())
            }};
        }
        match (dst.dtype(), grads.dtype()) {
            (DType::F32, DType::F32) => launch!(f32, "adamw_f32"),
            (DType::F64, DType::F64) => launch!(f64, "adamw_f64"),
            (a, g) => bail!("fused AdamW: an arena of {a:?} with {g:?} gradients"),
        }
    }
}
