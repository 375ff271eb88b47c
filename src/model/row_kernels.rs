//! What meshcast's own kernels share: on the CPU, one float trait for every kernel
//! (`KernelFloat`) and filling an output row by row on candle's worker pool (the pool
//! its element-wise ops use, so no second set of threads competes for the cores); on
//! CUDA, the launch shape.

use candle_core::{bail, Context, CpuStorage, Layout, Result, Storage, WithDType};

/// A float element of meshcast's CPU kernels. f32 and f64 compute in their own
/// precision; bf16 and f16 are widened to f32 and rounded once per result. candle's
/// `WithDType` brings zero, one and the f64 conversions (LayerNorm's statistics).
pub(crate) trait KernelFloat: WithDType {
    /// `a + b + c`.
    fn add3(a: Self, b: Self, c: Self) -> Self;
    /// `silu(x) = x sigmoid(x)`.
    fn silu(self) -> Self;
    /// `d silu(x) / dx = s (1 + x (1 - s))` with `s = sigmoid(x)`.
    fn silu_derivative(self) -> Self;
}

/// [`KernelFloat`] for `$t`, computing in `$wide` (`$widen` there, `$narrow` back).
macro_rules! kernel_float {
    ($t:ty, $wide:ty, $widen:expr, $narrow:expr) => {
        impl KernelFloat for $t {
            fn add3(a: Self, b: Self, c: Self) -> Self {
                $narrow($widen(a) + $widen(b) + $widen(c))
            }
            fn silu(self) -> Self {
                let x: $wide = $widen(self);
                $narrow(x / (1.0 + (-x).exp()))
            }
            fn silu_derivative(self) -> Self {
                let x: $wide = $widen(self);
                let s = 1.0 / (1.0 + (-x).exp());
                $narrow(s * (1.0 + x * (1.0 - s)))
            }
        }
    };
}
kernel_float!(f32, f32, |v: f32| v, |v: f32| v);
kernel_float!(f64, f64, |v: f64| v, |v: f64| v);
kernel_float!(half::bf16, f32, half::bf16::to_f32, half::bf16::from_f32);
kernel_float!(half::f16, f32, half::f16::to_f32, half::f16::from_f32);

/// The values of a contiguous CPU operand, as a custom op's `cpu_fwd` receives it
/// (`what` names the op and operand in the error).
pub fn contiguous_values<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .with_context(|| format!("{what}: needs a contiguous operand"))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// [`contiguous_values`] of a tensor's storage (`Tensor::storage_and_layout`), which
/// must be on the CPU: how a backward pass reads its operands without a copy.
pub fn cpu_values<'a, T: WithDType>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = storage else {
        bail!("{what}: expected a CPU tensor")
    };
    contiguous_values(cpu, layout, what)
}

/// Calls `fill(r, row)` for every row `r` of `out` (rows of `width` values), on candle's
/// worker pool when `work` (values touched) is large enough to pay for waking it (about
/// 2^15), else on this thread. Every row is handed to exactly one call.
pub fn fill_rows<T, F>(out: &mut [T], width: usize, work: usize, fill: F)
where
    T: Send + Sync,
    F: Fn(usize, &mut [T]) + Sync,
{
    if width == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / width;
    let dst = SharedMut::new(out);
    let fill_range = |range: std::ops::Range<usize>| {
        for r in range {
            // SAFETY: row `r` lies inside `out` (r < rows), and each row index reaches
            // exactly one call, so no two threads write the same row.
            fill(r, unsafe { dst.range(r * width, (r + 1) * width) });
        }
    };
    if work < 1 << 15 {
        fill_range(0..rows);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(rows, fill_range);
    }
}

/// A mutable slice shared with workers that each write their own disjoint ranges of
/// it (candle's pool hands out index ranges, not sub-slices).
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        SharedMut {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// Elements `from..to`.
    ///
    /// # Safety
    /// `from <= to <= len`, and no two live ranges (on any thread) may overlap.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn range(&self, from: usize, to: usize) -> &mut [T] {
        // Checked in debug builds (and tests) only: kernels call this once per row.
        debug_assert!(
            from <= to && to <= self.len,
            "range {from}..{to} of {}",
            self.len
        );
        // SAFETY: inside the borrowed slice (the caller's contract); disjointness too.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(from), to - from) }
    }
}

// SAFETY: the pointer is only used to write disjoint ranges while the slice is
// borrowed; T itself is Send + Sync.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send + Sync> Sync for SharedMut<'_, T> {}

/// A 1-D launch of `blocks` blocks of `threads` threads (kernels loop over the rest).
#[cfg(feature = "cuda")]
pub fn launch_config(
    blocks: usize,
    threads: u32,
) -> candle_core::cuda_backend::cudarc::driver::LaunchConfig {
    candle_core::cuda_backend::cudarc::driver::LaunchConfig {
        grid_dim: (blocks.clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_filled_once_on_both_paths() {
        for rows in [3usize, 40_000] {
            let mut out = vec![0u32; rows * 2];
            fill_rows(&mut out, 2, rows * 2, |r, row| {
                row[0] += r as u32;
                row[1] += 1;
            });
            for (r, row) in out.chunks(2).enumerate() {
                assert_eq!(row, [r as u32, 1]);
            }
        }
    }
}
