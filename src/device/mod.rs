//! Compute device selection: `--device cpu|cuda[:N]|auto`, parsed once and shared.

use std::fmt;
use std::str::FromStr;

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

impl DeviceSpec {
    /// Opens the device. An explicit `cuda` request on a binary without CUDA, or on a
    /// machine without a GPU, is an input error; `auto` falls back to the CPU.
    pub fn open(self) -> anyhow::Result<Device> {
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
                    let gpu = crate::distributed::local_rank().unwrap_or(0);
                    if let Ok(dev) = Device::new_cuda(gpu) {
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
            assert!(DeviceSpec::Auto.open().unwrap().is_cpu());
            assert!(DeviceSpec::Cuda(0).open().is_err());
        }
    }
}
