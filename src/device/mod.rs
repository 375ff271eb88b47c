//! Compute device selection: `--device cpu|cuda[:N]|auto`, parsed once and shared,
//! and the set-up of a CUDA device for training (`prepare_cuda`).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;

use crate::error::InputError;

/// Which device the user asked for, before any driver is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The host CPU (always available).
    #[default]
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
    /// CUDA device 0 (a rank's local index under mpirun or srun) when this binary has
    /// CUDA and a GPU answers, else the CPU.
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            // Several ranks on one machine take one GPU each, by their local rank.
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(
                crate::distributed::local_rank().unwrap_or(0),
            )),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| format!("bad CUDA ordinal in '{other}' (expected cuda:N)")),
                None => Err(format!(
                    "unknown device '{other}' (expected cpu, cuda, cuda:N or auto)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => write!(f, "auto"),
        }
    }
}

/// How a CUDA device computes (the flags `--tf32` and `--cuda-fused-ops`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// f32 matmuls on TF32 tensor cores.
    pub tf32: bool,
    /// meshcast's fused ops on CUDA (see [`cuda_fused_ops`]).
    pub fused_ops: bool,
}

impl CudaOptions {
    /// The flags set, as the user spelled them.
    fn flags(self) -> Vec<&'static str> {
        [(self.tf32, "--tf32"), (self.fused_ops, "--cuda-fused-ops")]
            .into_iter()
            .filter_map(|(on, flag)| on.then_some(flag))
            .collect()
    }
}

/// Set when a CUDA device opens with [`CudaOptions::fused_ops`].
static CUDA_FUSED_OPS: AtomicBool = AtomicBool::new(false);

/// Whether CUDA runs meshcast's fused ops (the dense layer and residual + LayerNorm,
/// each keeping only its inputs for the backward pass) instead of the composed candle
/// ops. Off by default until a GPU run has verified them against the composed ops
/// (`scripts/gpu-measure.sh ... fused`); the CPU always runs its own fused kernels.
pub fn cuda_fused_ops() -> bool {
    CUDA_FUSED_OPS.load(Ordering::Relaxed)
}

/// Runs `f` with the CUDA fused ops on, then restores the setting: for `check-gpu`,
/// which checks them on every GPU whatever the flags say and runs nothing else
/// meanwhile.
pub fn with_cuda_fused_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = CUDA_FUSED_OPS.swap(true, Ordering::Relaxed);
    let result = f();
    CUDA_FUSED_OPS.store(before, Ordering::Relaxed);
    result
}

impl DeviceSpec {
    /// Opens the device with `options` for CUDA. An explicit `cuda` request on a
    /// binary without CUDA, or on a machine without a GPU, is an input error, as is a
    /// CUDA option on the CPU; `auto` falls back to the CPU (with a warning).
    pub fn open(self, options: CudaOptions) -> anyhow::Result<Device> {
        let flags = options.flags();
        if self == DeviceSpec::Cpu && !flags.is_empty() {
            return Err(InputError(format!(
                "{} {} --device cuda: TF32 and the CUDA fused ops are for NVIDIA GPUs (the CPU computes f32 in full and always runs its own fused kernels)",
                flags.join(" and "),
                if flags.len() > 1 { "need" } else { "needs" }
            ))
            .into());
        }
        let device = self.open_plain()?;
        match &device {
            Device::Cpu if !flags.is_empty() => tracing::warn!(
                "{}: no GPU answered, so the CPU computes as it always does",
                flags.join(" and ")
            ),
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => {
                prepare_cuda(cuda, self.ordinal(), options.tf32)?;
                CUDA_FUSED_OPS.store(options.fused_ops, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(device)
    }

    /// The CUDA ordinal `cuda` and `auto` open.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn ordinal(self) -> usize {
        match self {
            DeviceSpec::Cuda(n) => n,
            _ => crate::distributed::local_rank().unwrap_or(0),
        }
    }

    fn open_plain(self) -> anyhow::Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(InputError(format!(
                        "--device cuda:{n}: this meshcast binary was built without the `cuda` feature \
                         (rebuild with `cargo build --release --features cuda`, see scripts/build-cuda.sh)"
                    ))
                    .into());
                }
                Device::new_cuda(n).map_err(|e| {
                    InputError(format!(
                        "--device cuda:{n}: cannot open the CUDA device: {e} \
                         (under mpirun or srun, `cuda` takes the GPU of the rank's index on its machine: \
                         start at most one rank per GPU)"
                    ))
                    .into()
                })
            }
            DeviceSpec::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(dev) = Device::new_cuda(self.ordinal()) {
                        return Ok(dev);
                    }
                    tracing::warn!(
                        "--device auto: CUDA is built in but no GPU answered; using the CPU"
                    );
                }
                Ok(Device::Cpu)
            }
        }
    }
}

/// Whether CUDA f32 matmuls run on TF32 tensor cores (`--tf32` on a CUDA device).
pub fn tf32_enabled() -> bool {
    #[cfg(feature = "cuda")]
    return candle_core::cuda_backend::gemm_reduced_precision_f32();
    #[cfg(not(feature = "cuda"))]
    false
}

/// Sets a freshly opened CUDA device up for meshcast's training loop, before it
/// allocates anything:
/// - cudarc's event tracking off: it records CUDA events on every allocation and use
///   so that tensors may cross streams, but meshcast runs all device work on one
///   stream from one thread (batches are assembled on the host, uploaded by the
///   training thread), so the events are pure overhead;
/// - the default memory pool keeps freed memory (release threshold: no limit), as
///   PyTorch's caching allocator does, instead of handing it back to the driver at
///   every synchronisation;
/// - f32 matmuls in full precision unless `tf32` (PyTorch's default is off too).
#[cfg(feature = "cuda")]
fn prepare_cuda(cuda: &candle_core::CudaDevice, ordinal: usize, tf32: bool) -> anyhow::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    // SAFETY: one stream and one thread use the device's tensors (see above).
    unsafe { cuda.disable_event_tracking() };
    // SAFETY: plain driver calls on valid out-pointers; the attribute takes a u64.
    unsafe {
        let mut device: sys::CUdevice = 0;
        sys::cuDeviceGet(&mut device, ordinal as i32).result()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        sys::cuDeviceGetDefaultMemPool(&mut pool, device).result()?;
        let mut threshold = u64::MAX;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()?;
    }
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(tf32);
    tracing::debug!(
        "cuda:{ordinal}: event tracking off, memory pool keeps freed memory, TF32 {}",
        if tf32 { "on" } else { "off" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn auto_falls_back_to_cpu_without_cuda() {
        if !candle_core::utils::cuda_is_available() {
            let tf32 = CudaOptions {
                tf32: true,
                ..CudaOptions::default()
            };
            assert!(DeviceSpec::Auto
                .open(CudaOptions::default())
                .unwrap()
                .is_cpu());
            assert!(DeviceSpec::Auto.open(tf32).unwrap().is_cpu());
            assert!(DeviceSpec::Cuda(0).open(CudaOptions::default()).is_err());
        }
        let fused = CudaOptions {
            fused_ops: true,
            ..CudaOptions::default()
        };
        let refused = DeviceSpec::Cpu.open(fused).unwrap_err().to_string();
        assert!(
            refused.starts_with("--cuda-fused-ops needs --device cuda"),
            "{refused}"
        );
    }
}
