//! The `meshcast` binary: everything lives in the library; see `meshcast::cli`.

/// mimalloc instead of glibc malloc: candle allocates and frees large tensors every
/// step, and glibc returns them to the kernel each time (measured: 7.4 s of a 9.8 s run
/// spent in the kernel; see docs/benchmarks.md). Wrapped in a counter of live and peak
/// bytes (two relaxed atomics per call) so benchmarks report measured memory.
#[global_allocator]
static GLOBAL: meshcast::device::memory::Counting<mimalloc::MiMalloc> =
    meshcast::device::memory::Counting::new(mimalloc::MiMalloc);

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Keep freed memory instead of returning it to the kernel after mimalloc's purge
    // delay (1 s): a training step frees and re-allocates gigabytes, and every page given
    // back is zeroed by the kernel when it is touched again. Measured: 27% of the 5-degree
    // bar case's step (12.6-13.0 s -> 9.1-9.5 s, docs/benchmarks.md). The resident size
    // stays at the step's peak, which the run needs anyway. MIMALLOC_PURGE_DELAY, when
    // set, still decides.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one option before other threads exist; no memory is involved.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    meshcast::device::memory::register(&GLOBAL);
    meshcast::cli::main()
}
