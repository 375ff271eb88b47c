//! Measured memory: a counting global allocator for the host, the CUDA memory pool's
//! high-water mark for a GPU, and the memory breakdown of a training step.
//!
//! The binary installs [`Counting`] around mimalloc (src/main.rs) and registers it
//! with [`register`]; library code reads the counters through [`current`], [`peak`]
//! and [`reset_peak`], which return `None` when no counting allocator is registered
//! (unit tests, other binaries linking the library). Counters are bytes requested
//! from the allocator (`Layout::size`), not the allocator's own overhead or the
//! process's resident set.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Live and peak bytes of one allocator.
#[derive(Debug, Default)]
pub struct Counters {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn add(&self, bytes: usize) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        // A load first: the read-modify-write only when the peak moves.
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    #[inline]
    fn sub(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes allocated and not yet freed.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Highest `current` since the start or the last [`Counters::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak measurement from the current level; returns that level.
    pub fn reset_peak(&self) -> usize {
        let now = self.current();
        self.peak.store(now, Ordering::Relaxed);
        now
    }
}

/// A global allocator that forwards to `A` and counts live and peak bytes.
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: Counting<mimalloc::MiMalloc> = Counting::new(mimalloc::MiMalloc);
/// ```
pub struct Counting<A: GlobalAlloc> {
    inner: A,
    counters: Counters,
}

impl<A: GlobalAlloc> Counting<A> {
    pub const fn new(inner: A) -> Self {
        Counting {
            inner,
            counters: Counters::new(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn current(&self) -> usize {
        self.counters.current()
    }

    pub fn peak(&self) -> usize {
        self.counters.peak()
    }

    pub fn reset_peak(&self) -> usize {
        self.counters.reset_peak()
    }
}

// SAFETY: every call forwards to `inner` with the caller's arguments unchanged; the
// counters are atomics and never allocate.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc(layout);
        if !p.is_null() {
            self.counters.add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc_zeroed(layout);
        if !p.is_null() {
            self.counters.add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.inner.dealloc(ptr, layout);
        self.counters.sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.inner.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                self.counters.add(new_size - layout.size());
            } else {
                self.counters.sub(layout.size() - new_size);
            }
        }
        p
    }
}

/// What the process's mimalloc does with freed pages (see [`set_freed_pages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreedPages {
    /// Keep them: no page is zeroed twice; the resident size can stay above the live peak.
    Keep,
    /// Give them back after mimalloc's purge delay (1 s): the resident size follows the
    /// live bytes.
    Return,
}

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets what mimalloc does with freed pages. Call it before any other thread exists.
/// `MIMALLOC_PURGE_DELAY`, when set, decides instead.
///
/// Returning pages costs time: a training step frees and re-allocates gigabytes, and
/// the kernel zeroes every page given back when it is touched again (27% of the
/// 5-degree bar case's step). Keeping them costs resident memory above the live peak:
/// a 1-degree step in two patches with a counted peak of 3.04 GB reaches 4.07 GB RSS
/// keeping them, 3.42 GB returning them (docs/benchmarks.md). A run under a memory
/// budget cannot spend that.
pub fn set_freed_pages(policy: FreedPages) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() || policy == FreedPages::Return {
        return;
    }
    // SAFETY: sets one option before other threads exist; no memory is involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

static REGISTERED: OnceLock<&'static Counters> = OnceLock::new();

/// Makes `allocator` (the process's global allocator) the one [`current`], [`peak`]
/// and [`reset_peak`] read. The first registration wins.
pub fn register<A: GlobalAlloc>(allocator: &'static Counting<A>) {
    let _ = REGISTERED.set(allocator.counters());
}

/// True when a counting allocator is registered.
pub fn is_counting() -> bool {
    REGISTERED.get().is_some()
}

/// Live heap bytes, or None without a counting allocator.
pub fn current() -> Option<usize> {
    REGISTERED.get().map(|c| c.current())
}

/// Peak heap bytes since the last [`reset_peak`], or None without a counting allocator.
pub fn peak() -> Option<usize> {
    REGISTERED.get().map(|c| c.peak())
}

/// Starts a new peak measurement; returns the live bytes at that moment.
pub fn reset_peak() -> Option<usize> {
    REGISTERED.get().map(|c| c.reset_peak())
}

/// Live bytes where `device` keeps tensors: the host heap for the CPU, the device's
/// CUDA memory pool on a GPU (None when not measurable).
pub fn current_on(device: &candle_core::Device) -> Option<usize> {
    match device {
        candle_core::Device::Cpu => current(),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => cuda_pool::used(dev, cuda_pool::Level::Current),
        _ => None,
    }
}

/// Peak bytes on `device` since the last [`reset_peak_on`] (see [`current_on`]).
pub fn peak_on(device: &candle_core::Device) -> Option<usize> {
    match device {
        candle_core::Device::Cpu => peak(),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => cuda_pool::used(dev, cuda_pool::Level::Peak),
        _ => None,
    }
}

/// Starts a new peak measurement on `device`; returns the live bytes at that moment.
pub fn reset_peak_on(device: &candle_core::Device) -> Option<usize> {
    match device {
        candle_core::Device::Cpu => reset_peak(),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => cuda_pool::reset_peak(dev),
        _ => None,
    }
}

/// candle allocates CUDA memory with `cuMemAllocAsync` from the device's current memory
/// pool, which counts the bytes in use and their high-water mark: the device-side
/// twin of the counting allocator. (cuBLAS's workspace and the CUDA context are not
/// pool allocations and are not counted.)
#[cfg(feature = "cuda")]
mod cuda_pool {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::CudaDevice;

    pub enum Level {
        Current,
        Peak,
    }

    fn pool(dev: &CudaDevice) -> Option<sys::CUmemoryPool> {
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        if !ctx.has_async_alloc() {
            return None;
        }
        ctx.bind_to_thread().ok()?;
        // Stream-ordered frees land when the stream reaches them.
        stream.synchronize().ok()?;
        // SAFETY: the device comes from a live context.
        unsafe { result::device::get_mem_pool(ctx.cu_device()) }.ok()
    }

    pub fn used(dev: &CudaDevice, level: Level) -> Option<usize> {
        let pool = pool(dev)?;
        let attr = match level {
            Level::Current => sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            Level::Peak => sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        };
        let mut bytes: u64 = 0;
        // SAFETY: both attributes are a cuuint64_t.
        unsafe { result::mem_pool::get_attribute(pool, attr, (&mut bytes as *mut u64).cast()) }
            .ok()?;
        Some(bytes as usize)
    }

    pub fn reset_peak(dev: &CudaDevice) -> Option<usize> {
        let pool = pool(dev)?;
        let mut zero: u64 = 0;
        // SAFETY: the high-water mark is a cuuint64_t and may only be set to 0, which
        // resets it to the bytes now in use.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        }
        .ok()?;
        used(dev, Level::Current)
    }
}

/// Where the memory of a training step goes, in bytes.
///
/// `weights`, `optimizer_state`, `gradients` and `graph` are computed from tensor
/// sizes; `peak` and `baseline` are measured (the counting allocator on the CPU, the
/// CUDA memory pool on a GPU: [`peak_on`]), and
/// `activations` is what the measured peak holds beyond the baseline (the process
/// before the case: data, runtime) and the four computed parts: the saved
/// activations of the backward pass, plus transient buffers of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBreakdown {
    /// Parameters (`sum(numel) * dtype size`).
    pub weights: u64,
    /// AdamW's two moments per parameter.
    pub optimizer_state: u64,
    /// One gradient per parameter.
    pub gradients: u64,
    /// The graph on the device: index and feature tensors (and CSR offsets when used).
    pub graph: u64,
    /// Measured live bytes before the case allocated anything.
    pub baseline: Option<u64>,
    /// Measured peak live bytes during the case.
    pub peak: Option<u64>,
    /// `peak - baseline - weights - optimizer_state - gradients - graph` (saturating).
    pub activations: Option<u64>,
}

impl MemoryBreakdown {
    /// The breakdown from computed sizes and measured `baseline` and `peak` (None
    /// when memory is not measured).
    pub fn new(
        weights: u64,
        optimizer_state: u64,
        gradients: u64,
        graph: u64,
        baseline: Option<u64>,
        peak: Option<u64>,
    ) -> MemoryBreakdown {
        let activations = match (baseline, peak) {
            (Some(b), Some(p)) => Some(
                p.saturating_sub(b)
                    .saturating_sub(weights + optimizer_state + gradients + graph),
            ),
            _ => None,
        };
        MemoryBreakdown {
            weights,
            optimizer_state,
            gradients,
            graph,
            baseline,
            peak,
            activations,
        }
    }

    /// Memory the case itself used at its peak (`peak - baseline`).
    pub fn case_peak(&self) -> Option<u64> {
        Some(self.peak?.saturating_sub(self.baseline?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_live_and_peak_bytes() {
        static A: Counting<std::alloc::System> = Counting::new(std::alloc::System);
        let layout = Layout::from_size_align(1000, 8).unwrap();
        unsafe {
            let p = A.alloc(layout);
            let q = A.alloc_zeroed(layout);
            assert_eq!(A.current(), 2000);
            let q = A.realloc(q, layout, 3000);
            assert_eq!(A.current(), 4000);
            A.dealloc(p, layout);
            assert_eq!(A.current(), 3000);
            assert_eq!(A.peak(), 4000);
            assert_eq!(A.reset_peak(), 3000);
            assert_eq!(A.peak(), 3000);
            A.dealloc(q, Layout::from_size_align(3000, 8).unwrap());
        }
        assert_eq!(A.current(), 0);
        assert_eq!(A.peak(), 3000);
    }

    #[test]
    fn breakdown_attributes_the_rest_to_activations() {
        let m = MemoryBreakdown::new(10, 20, 10, 5, Some(100), Some(200));
        assert_eq!(m.activations, Some(55));
        assert_eq!(m.case_peak(), Some(100));
        let n = MemoryBreakdown::new(10, 20, 10, 5, None, Some(200));
        assert_eq!(n.activations, None);
    }
}
