//! Live and peak bytes where a device keeps tensors: the host heap (through the
//! counting allocator) for the CPU, the CUDA memory pool on a GPU.

use super::allocator::{current, peak, reset_peak};

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
