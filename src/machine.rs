//! What a measurement ran on: the build (version, git revision, candle backends) and
//! the machine (CPU model, cores, SIMD features, memory; GPUs on CUDA builds).

use serde::{Deserialize, Serialize};

/// The meshcast build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    /// `git rev-parse --short HEAD` of the source tree, taken at build time by
    /// build.rs; None when built outside git.
    pub git_revision: Option<String>,
    /// How `git_revision` was obtained.
    pub git_revision_source: String,
    /// `release` or `debug` (debug builds are not comparable with release ones).
    pub profile: String,
}

impl BuildInfo {
    pub fn current() -> BuildInfo {
        let rev = env!("MESHCAST_GIT_REVISION");
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            git_revision: (!rev.is_empty()).then(|| rev.to_string()),
            git_revision_source: "build time (build.rs: git rev-parse --short HEAD)".into(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
        }
    }
}

/// Which candle backends and CPU kernels this binary has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Built with the `cuda` feature.
    pub cuda: bool,
    pub metal: bool,
    pub mkl: bool,
    pub accelerate: bool,
    /// candle's CPU kernels use AVX2 (`candle_core::utils::with_avx`).
    pub with_avx: bool,
    pub with_f16c: bool,
    pub with_neon: bool,
    pub with_simd128: bool,
    /// Threads of candle's CPU pool.
    pub cpu_threads: usize,
}

impl BackendInfo {
    pub fn current() -> BackendInfo {
        use candle_core::utils;
        BackendInfo {
            cuda: utils::cuda_is_available(),
            metal: utils::metal_is_available(),
            mkl: utils::has_mkl(),
            accelerate: utils::has_accelerate(),
            with_avx: utils::with_avx(),
            with_f16c: utils::with_f16c(),
            with_neon: utils::with_neon(),
            with_simd128: utils::with_simd128(),
            cpu_threads: utils::get_num_threads(),
        }
    }

    /// The backends, as a list of names.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec!["cpu"];
        for (on, name) in [
            (self.cuda, "cuda"),
            (self.metal, "metal"),
            (self.mkl, "mkl"),
            (self.accelerate, "accelerate"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// The host CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `model name` from /proc/cpuinfo (None where unreadable).
    pub model: Option<String>,
    /// Logical CPUs this process may use.
    pub logical_cores: usize,
    /// Distinct (physical id, core id) pairs in /proc/cpuinfo, where present.
    pub physical_cores: Option<usize>,
    /// SIMD features detected at run time (`is_x86_feature_detected!` on x86_64).
    pub simd: Vec<String>,
    pub arch: String,
    pub os: String,
    /// MemTotal of /proc/meminfo.
    pub memory_total_bytes: Option<u64>,
}

impl CpuInfo {
    pub fn detect() -> CpuInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, key: &str| -> Option<String> {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        };
        let model = cpuinfo.lines().find_map(|l| field(l, "model name"));
        let mut cores = std::collections::BTreeSet::new();
        let mut physical = None;
        for l in cpuinfo.lines() {
            if let Some(p) = field(l, "physical id") {
                physical = Some(p);
            }
            if let Some(c) = field(l, "core id") {
                cores.insert((physical.clone(), c));
            }
        }
        CpuInfo {
            model,
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            physical_cores: (!cores.is_empty()).then_some(cores.len()),
            simd: simd_features(),
            arch: std::env::consts::ARCH.into(),
            os: std::env::consts::OS.into(),
            memory_total_bytes: meminfo("MemTotal"),
        }
    }
}

/// A value of /proc/meminfo in bytes (`MemTotal`, `MemAvailable`).
pub fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

#[cfg(target_arch = "x86_64")]
fn simd_features() -> Vec<String> {
    let mut v = Vec::new();
    macro_rules! detect {
        ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { v.push($f.to_string()); } )* };
    }
    detect!(
        "sse2",
        "sse4.1",
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avx512bf16"
    );
    v
}

#[cfg(target_arch = "aarch64")]
fn simd_features() -> Vec<String> {
    let mut v = Vec::new();
    macro_rules! detect {
        ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { v.push($f.to_string()); } )* };
    }
    detect!("neon", "fp16", "sve", "sve2", "bf16");
    v
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn simd_features() -> Vec<String> {
    Vec::new()
}

/// One CUDA device as the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: Option<String>,
    /// `major.minor`.
    pub compute_capability: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
}

/// The machine of a report: the CPU, and on CUDA builds the driver and GPUs (null /
/// empty on CPU builds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub hostname: Option<String>,
    pub cpu: CpuInfo,
    /// NVIDIA kernel driver version (/proc/driver/nvidia/version).
    pub gpu_driver_version: Option<String>,
    /// CUDA version the driver supports (`cuDriverGetVersion`), CUDA builds only.
    pub cuda_driver_api_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
}

impl MachineInfo {
    pub fn detect() -> MachineInfo {
        let cuda = cuda_devices();
        MachineInfo {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            cpu: CpuInfo::detect(),
            gpu_driver_version: nvidia_driver_version(),
            cuda_driver_api_version: cuda.driver_api_version,
            gpus: cuda.devices,
        }
    }

    /// What identifies the machine for comparisons: the CPU model and core count and
    /// the GPU names (not the hostname, which containers change).
    pub fn identity(&self) -> String {
        let gpus: Vec<String> = self
            .gpus
            .iter()
            .map(|g| g.name.clone().unwrap_or_else(|| "?".into()))
            .collect();
        format!(
            "{} x{}{}",
            self.cpu.model.as_deref().unwrap_or("unknown CPU"),
            self.cpu.logical_cores,
            if gpus.is_empty() {
                String::new()
            } else {
                format!(" + {}", gpus.join(", "))
            }
        )
    }
}

/// The NVIDIA kernel module's version, from /proc/driver/nvidia/version (Linux).
pub fn nvidia_driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar 5 ..."
    let line = text.lines().next()?;
    line.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

/// CUDA as this binary sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaDevices {
    /// Built with the `cuda` feature.
    pub built: bool,
    /// CUDA version the driver supports (`cuDriverGetVersion`).
    pub driver_api_version: Option<String>,
    pub devices: Vec<GpuInfo>,
    /// Why no device could be queried (no driver, no GPU), if so.
    pub error: Option<String>,
}

/// The CUDA devices of this machine (none on a CPU-only build).
pub fn cuda_devices() -> CudaDevices {
    #[cfg(feature = "cuda")]
    {
        cuda_probe::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        CudaDevices {
            built: false,
            driver_api_version: None,
            devices: Vec::new(),
            error: Some("this meshcast binary was built without the `cuda` feature".into()),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda_probe {
    use super::{CudaDevices, GpuInfo};
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext};

    /// Queries the driver; a missing libcuda (a panic inside cudarc's loader) is
    /// reported as an error, not a crash.
    pub fn probe() -> CudaDevices {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = std::panic::catch_unwind(query);
        std::panic::set_hook(hook);
        result.unwrap_or_else(|_| CudaDevices {
            built: true,
            driver_api_version: None,
            devices: Vec::new(),
            error: Some("the CUDA driver library (libcuda) could not be loaded".into()),
        })
    }

    fn query() -> CudaDevices {
        let mut out = CudaDevices {
            built: true,
            driver_api_version: None,
            devices: Vec::new(),
            error: None,
        };
        let count = match CudaContext::device_count() {
            Ok(n) => n.max(0) as usize,
            Err(e) => {
                out.error = Some(format!("no CUDA device: {e}"));
                return out;
            }
        };
        let mut version: std::ffi::c_int = 0;
        // SAFETY: cuDriverGetVersion writes one int; the driver is initialised above.
        let status = unsafe { sys::cuDriverGetVersion(&mut version) };
        if status == sys::CUresult::CUDA_SUCCESS {
            out.driver_api_version = Some(format!("{}.{}", version / 1000, (version % 1000) / 10));
        }
        for ordinal in 0..count {
            match CudaContext::new(ordinal) {
                Ok(ctx) => out.devices.push(GpuInfo {
                    ordinal,
                    name: ctx.name().ok(),
                    compute_capability: ctx
                        .compute_capability()
                        .ok()
                        .map(|(major, minor)| format!("{major}.{minor}")),
                    memory_total_bytes: ctx.total_mem().ok().map(|b| b as u64),
                    memory_free_bytes: ctx.mem_get_info().ok().map(|(free, _)| free as u64),
                }),
                Err(e) => {
                    out.error = Some(format!("cuda:{ordinal}: {e}"));
                }
            }
        }
        if count == 0 {
            out.error = Some("the CUDA driver reports no device".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_this_machine() {
        let m = MachineInfo::detect();
        assert!(m.cpu.logical_cores >= 1);
        if !candle_core::utils::cuda_is_available() {
            assert!(m.gpus.is_empty());
            assert!(m.cuda_driver_api_version.is_none());
        }
        #[cfg(target_arch = "x86_64")]
        assert!(m.cpu.simd.iter().any(|s| s == "sse2"));
        assert!(m.identity().contains(&format!("x{}", m.cpu.logical_cores)));
        assert!(BackendInfo::current().names().contains(&"cpu"));
    }
}
