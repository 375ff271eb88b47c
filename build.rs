//! Build script: records the git revision of the source tree being built, so benchmark
//! reports name the code they measured (`MESHCAST_GIT_REVISION`, empty outside git);
//! with the `cuda` feature, compiles meshcast's CUDA kernels to PTX.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let revision = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=MESHCAST_GIT_REVISION={revision}");
    // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs
    // (paths from git, so worktrees work too; only existing ones, as a missing
    // path would rerun this script on every build).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    .filter(|p| std::path::Path::new(p).exists())
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rerun-if-changed=src/model/kernels/float_acc.cuh");
        for kernel in [
            "segment_sum",
            "gather_sum",
            "layer_norm",
            "adamw",
            "dense",
            "edge_input",
        ] {
            compile_kernel(kernel);
        }
    }
}

/// src/model/kernels/NAME.cu to `$OUT_DIR/NAME.ptx` with nvcc (`$CUDA_ROOT/bin` or the
/// PATH), for the compute capability candle's own kernels are built for
/// (`CUDA_COMPUTE_CAP`, default 90: Hopper).
fn compile_kernel(name: &str) {
    let source = format!("src/model/kernels/{name}.cu");
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join(format!("{name}.ptx"));
    let nvcc = std::env::var("CUDA_ROOT")
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .unwrap_or_else(|_| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=sm_{cap}"))
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    assert!(status.success(), "nvcc failed on {source}");
}
