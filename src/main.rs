//! The `meshcast` binary: everything lives in the library; see `meshcast::cli`.

/// mimalloc instead of glibc malloc: candle allocates and frees large tensors every
/// step, and glibc returns them to the kernel each time (measured: 7.4 s of a 9.8 s run
/// spent in the kernel; see docs/benchmarks.md). Wrapped in a counter of live and peak
/// bytes (two relaxed atomics per call) so benchmarks report measured memory.
#[global_allocator]
static GLOBAL: meshcast::memory::Counting<mimalloc::MiMalloc> =
    meshcast::memory::Counting::new(mimalloc::MiMalloc);

fn main() -> std::process::ExitCode {
    meshcast::memory::register(&GLOBAL);
    meshcast::cli::main()
}
