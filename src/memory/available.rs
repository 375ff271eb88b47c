//! The memory a run may still take on its device, checked against the planner's
//! prediction before the first step: on the host the smaller of the kernel's
//! `MemAvailable` and what the cgroup limit leaves (a Slurm job or a container is
//! killed at its cgroup limit, not at the machine's); on a GPU the device's free memory.

use std::path::Path;

/// Free bytes on a device and where the figure comes from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Available {
    pub bytes: u64,
    pub source: String,
}

/// What `device` has free now; None when it cannot be read.
pub fn available_on(device: &candle_core::Device) -> Option<Available> {
    match device {
        candle_core::Device::Cpu => host_available(),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => cuda_free(dev),
        _ => None,
    }
}

fn host_available() -> Option<Available> {
    let meminfo = crate::machine::meminfo("MemAvailable");
    let cgroup = cgroup_headroom(Path::new("/sys/fs/cgroup"));
    let gb = |b: u64| crate::memory::planner::human_bytes(b);
    match (meminfo, cgroup) {
        (Some(m), Some(c)) if c < m => Some(Available {
            bytes: c,
            source: format!(
                "left under this cgroup's memory limit (the host has {} available)",
                gb(m)
            ),
        }),
        (Some(m), _) => Some(Available {
            bytes: m,
            source: "available on the host (MemAvailable)".into(),
        }),
        (None, Some(c)) => Some(Available {
            bytes: c,
            source: "left under this cgroup's memory limit".into(),
        }),
        (None, None) => None,
    }
}

/// Limit minus usage of the cgroup at `root` (v2 `memory.max`/`memory.current`, else
/// v1 `memory/memory.limit_in_bytes`/`usage_in_bytes`); None without a limit.
fn cgroup_headroom(root: &Path) -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    let number = |t: String| t.trim().parse::<u64>().ok();
    let (limit, used) = match read("memory.max") {
        Some(max) => (number(max)?, number(read("memory.current")?)?),
        None => (
            number(read("memory/memory.limit_in_bytes")?)?,
            number(read("memory/memory.usage_in_bytes")?)?,
        ),
    };
    // cgroup v1 reports "no limit" as a huge page-rounded number.
    (limit < 1 << 60).then(|| limit.saturating_sub(used))
}

#[cfg(feature = "cuda")]
fn cuda_free(dev: &candle_core::CudaDevice) -> Option<Available> {
    let (free, total) = dev.cuda_stream().context().mem_get_info().ok()?;
    Some(Available {
        bytes: free as u64,
        source: format!(
            "free on the GPU (of {})",
            crate::memory::planner::human_bytes(total as u64)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_headroom_reads_v2_and_v1_and_ignores_no_limit() {
        let dir = tempfile::tempdir().unwrap();
        let write = |p: &str, t: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        };
        write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        write("memory/memory.usage_in_bytes", "100\n");
        assert_eq!(cgroup_headroom(dir.path()), None, "v1 without a limit");
        write("memory/memory.limit_in_bytes", "1000\n");
        assert_eq!(cgroup_headroom(dir.path()), Some(900));
        write("memory.max", "max\n");
        write("memory.current", "5\n");
        assert_eq!(cgroup_headroom(dir.path()), None, "v2 without a limit");
        write("memory.max", "4096\n");
        assert_eq!(cgroup_headroom(dir.path()), Some(4091));
    }

    #[test]
    fn the_host_reports_some_memory() {
        let a = available_on(&candle_core::Device::Cpu).unwrap();
        assert!(a.bytes > 0, "{a:?}");
    }
}
