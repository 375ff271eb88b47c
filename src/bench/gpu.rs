//! `meshcast check-gpu`: what this binary and machine can run, checked by running it.
//!
//! Reports the CPU, the candle backends built in, and on CUDA builds every CUDA
//! device (name, compute capability, total and free memory, driver versions). Then
//! on every device it runs a matmul and a message-passing step (gather by sender,
//! sum into receivers), checks each against the CPU (the CPU's own matmul against a
//! plain f64 loop) and reports GFLOP/s. Finally it recommends a training
//! configuration for the memory available (a table by memory tier, from measured
//! peaks; the memory planner will replace it).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::machine::{
    cuda_devices, nvidia_driver_version, BackendInfo, BuildInfo, CpuInfo, CudaDevices,
};
use crate::model::aggregate::{sum_into_receivers, Aggregation};
use crate::model::EdgeTensors;
use crate::table::render_table;

/// One kernel run on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelCheck {
    pub name: String,
    /// Problem size, in words.
    pub size: String,
    pub median_s: Option<f64>,
    pub gflops: Option<f64>,
    /// Largest |result - check| relative to the largest |check| entry.
    pub max_rel_diff: Option<f64>,
    /// What the result was checked against.
    pub checked_against: String,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCheck {
    pub device: String,
    pub kernels: Vec<KernelCheck>,
}

/// A configuration that fits a memory tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tier {
    pub memory_gib: f64,
    pub grid: String,
    pub latent_size: usize,
    pub num_gnn_layers: usize,
    pub batch_size: usize,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The memory the recommendation is for.
    pub device: String,
    pub memory_bytes: Option<u64>,
    /// The largest tier that fits (None: below the smallest).
    pub tier: Option<Tier>,
    pub tiers: Vec<Tier>,
    pub basis: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckGpuReport {
    pub meshcast: BuildInfo,
    pub cpu: CpuInfo,
    pub backend: BackendInfo,
    pub backends: Vec<String>,
    pub cuda: CudaDevices,
    pub gpu_driver_version: Option<String>,
    /// At least one CUDA device answered.
    pub cuda_usable: bool,
    pub checks: Vec<DeviceCheck>,
    pub recommendation: Recommendation,
}

/// Memory tiers and what fits in them, with 20% headroom, from the measured case
/// peaks of `benchmark-graph-format` on dev-2core, 2026-11-24 (docs/benchmarks.md:
/// f32, shared batching, no checkpointing; host memory of the CPU backend, which a
/// CUDA run needs in device memory about as much of). Activation memory grows
/// linearly with batch size and processor layers (measured), and with latent width.
pub fn tiers() -> Vec<Tier> {
    let t = |memory_gib: f64, grid: &str, latent, layers, batch, note: &str| Tier {
        memory_gib,
        grid: grid.into(),
        latent_size: latent,
        num_gnn_layers: layers,
        batch_size: batch,
        note: note.into(),
    };
    TIERS
        .iter()
        .map(|&(m, g, l, k, b, n)| t(m, g, l, k, b, n))
        .collect()
}

/// (GiB, grid, latent, layers, batch, note). Measured activations per sample at latent
/// 128 (docs/benchmarks.md, "Graph formats"): 5 deg 1.65 GiB with 8 layers; 2.5 deg
/// 3.9 GiB with 4 layers; 1 deg 12.4 GiB with 1 layer. With 4x the edges of 5 deg,
/// 2.5 deg takes about 0.7 GiB per layer and 1.2 GiB for encoder, decoder and
/// embedders; 1 deg (another 4x on the mesh) about 2.8 GiB per layer and 9.6 GiB fixed.
/// Each row is the largest model that fits 80% of the tier.
const TIERS: &[(f64, &str, usize, usize, usize, &str)] = &[
    (4.0, "5 deg", 128, 8, 1, ""),
    (8.0, "5 deg", 128, 8, 3, "or 2.5 deg with 4 layers, batch 1"),
    (
        16.0,
        "2.5 deg",
        128,
        8,
        1,
        "or 5 deg with 8 layers, batch 7",
    ),
    (
        24.0,
        "1 deg",
        128,
        3,
        1,
        "or 2.5 deg with 8 layers, batch 2",
    ),
    (
        40.0,
        "1 deg",
        128,
        7,
        1,
        "or 2.5 deg with 8 layers, batch 4",
    ),
    (80.0, "1 deg", 128, 16, 1, "GraphCast's processor depth"),
    (141.0, "1 deg", 128, 16, 2, ""),
];

fn recommend(device: String, memory_bytes: Option<u64>) -> Recommendation {
    let tiers = tiers();
    let tier = memory_bytes.and_then(|m| {
        tiers
            .iter()
            .rev()
            .find(|t| t.memory_gib * (1u64 << 30) as f64 <= m as f64)
            .cloned()
    });
    Recommendation {
        device,
        memory_bytes,
        tier,
        tiers,
        basis: "measured case peaks of `meshcast benchmark-graph-format` (docs/benchmarks.md, 2026-11-24), \
                scaled linearly in batch size, latent width and layers, with 20% headroom; \
                a memory planner will replace this table"
            .into(),
    }
}

fn max_rel(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-30);
    Ok(diff / scale)
}

fn random(dims: &[usize], seed: u64, device: &Device) -> candle_core::Result<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, device)
}

fn median_time(
    repeats: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(f64, Tensor)> {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats {
        let t = Instant::now();
        let r = f()?;
        r.device().synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], last.expect("repeats >= 1")))
}

const MATMUL_N: usize = 512;
const MP_NODES: usize = 10_242;
const MP_DEGREE: usize = 6;
const MP_FEATURES: usize = 128;
/// Relative tolerance against the CPU: f32 sums in different orders (and TF32 on GPUs).
const TOLERANCE: f64 = 1e-2;

fn matmul_check(device: &Device) -> KernelCheck {
    let n = MATMUL_N;
    let mut check = KernelCheck {
        name: "matmul f32".into(),
        size: format!("{n} x {n} x {n}"),
        median_s: None,
        gflops: None,
        max_rel_diff: None,
        checked_against: String::new(),
        ok: false,
        error: None,
    };
    let run = || -> candle_core::Result<(f64, f64, String)> {
        let a = random(&[n, n], 1, &Device::Cpu)?;
        let b = random(&[n, n], 2, &Device::Cpu)?;
        let (ad, bd) = (a.to_device(device)?, b.to_device(device)?);
        ad.matmul(&bd)?; // warm-up (kernel loading, thread pool)
        let (secs, c) = median_time(5, || ad.matmul(&bd))?;
        let (rel, against) = if device.is_cpu() {
            // A plain f64 loop over the first 16 rows.
            let (av, bv): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (a.to_vec2()?, b.to_vec2()?);
            let rows: Vec<f64> = (0..16)
                .flat_map(|i| {
                    let (av, bv) = (&av, &bv);
                    (0..n).map(move |j| (0..n).map(|k| av[i][k] as f64 * bv[k][j] as f64).sum())
                })
                .collect();
            let reference = Tensor::from_vec(rows, (16, n), &Device::Cpu)?;
            (
                max_rel(&c.narrow(0, 0, 16)?, &reference)?,
                "an f64 loop (16 rows)",
            )
        } else {
            (max_rel(&c, &a.matmul(&b)?)?, "the CPU")
        };
        Ok((secs, rel, against.into()))
    };
    match run() {
        Ok((secs, rel, against)) => {
            check.median_s = Some(secs);
            check.gflops = Some(2.0 * (n * n * n) as f64 / secs / 1e9);
            check.max_rel_diff = Some(rel);
            check.checked_against = against;
            check.ok = rel < TOLERANCE;
        }
        Err(e) => check.error = Some(e.to_string()),
    }
    check
}

/// A random graph of MP_NODES nodes and MP_DEGREE incoming edges per node on `device`.
fn mp_edges(device: &Device, aggregation: Aggregation) -> candle_core::Result<EdgeTensors> {
    let e = MP_NODES * MP_DEGREE;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let coo = crate::graph::Coo {
        n_senders: MP_NODES,
        n_receivers: MP_NODES,
        senders: (0..e)
            .map(|_| rng.random_range(0..MP_NODES as u32))
            .collect(),
        receivers: (0..e).map(|k| (k % MP_NODES) as u32).collect(),
    };
    let features = Tensor::zeros((e, crate::graph::EDGE_FEATURES), DType::F32, device)?;
    let mut edges = EdgeTensors::from_coo(&coo, features)?;
    edges.aggregation = aggregation;
    Ok(edges)
}

/// Gather to edges, sum into receivers, and the backward of both (the gradient of
/// `sum(out * weights)` with respect to the node latents): `[out, gradient]`.
fn message_passing_step(
    edges: &EdgeTensors,
    nodes: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let nodes = candle_core::Var::from_tensor(nodes)?;
    let messages = crate::model::aggregate::gather_senders(edges, nodes.as_tensor())?;
    let out = sum_into_receivers(edges, &messages)?;
    let grads = (&out * weights)?.sum_all()?.backward()?;
    let grad = grads
        .get(nodes.as_tensor())
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("no gradient for the node latents".into()))?;
    Tensor::cat(&[&out, &grad], 0)
}

fn message_passing_check(device: &Device, aggregation: Aggregation) -> KernelCheck {
    let e = MP_NODES * MP_DEGREE;
    let mut check = KernelCheck {
        name: format!("gather + segment sum, forward and backward ({aggregation})"),
        size: format!("{MP_NODES} nodes, {e} edges, {MP_FEATURES} features"),
        median_s: None,
        gflops: None,
        max_rel_diff: None,
        checked_against: String::new(),
        ok: false,
        error: None,
    };
    let run = || -> candle_core::Result<(f64, f64, String)> {
        let h = random(&[1, MP_NODES, MP_FEATURES], 4, &Device::Cpu)?;
        let w = random(&[1, MP_NODES, MP_FEATURES], 5, &Device::Cpu)?;
        let edges = mp_edges(device, aggregation)?;
        let (hd, wd) = (h.to_device(device)?, w.to_device(device)?);
        message_passing_step(&edges, &hd, &wd)?;
        let (secs, out) = median_time(5, || message_passing_step(&edges, &hd, &wd))?;
        // The check: the CPU with index_add, the reference aggregation.
        let cpu_edges = mp_edges(&Device::Cpu, Aggregation::IndexAdd)?;
        let reference = message_passing_step(&cpu_edges, &h, &w)?;
        let against = if device.is_cpu() && aggregation == Aggregation::IndexAdd {
            "itself (the CPU reference)"
        } else {
            "the CPU with index_add"
        };
        Ok((secs, max_rel(&out, &reference)?, against.into()))
    };
    match run() {
        Ok((secs, rel, against)) => {
            check.median_s = Some(secs);
            // One add per edge and feature in the sum, and again in the gather's backward.
            check.gflops = Some((2 * e * MP_FEATURES) as f64 / secs / 1e9);
            check.max_rel_diff = Some(rel);
            check.checked_against = against;
            check.ok = rel < 1e-5;
        }
        Err(err) => check.error = Some(err.to_string()),
    }
    check
}

/// Runs every check and builds the report.
pub fn check() -> CheckGpuReport {
    let cuda = cuda_devices();
    let mut checks = vec![DeviceCheck {
        device: "cpu".into(),
        kernels: vec![
            matmul_check(&Device::Cpu),
            message_passing_check(&Device::Cpu, Aggregation::IndexAdd),
            message_passing_check(&Device::Cpu, Aggregation::Csr),
        ],
    }];
    let mut cuda_usable = false;
    for gpu in &cuda.devices {
        let name = format!("cuda:{}", gpu.ordinal);
        match Device::new_cuda(gpu.ordinal) {
            Ok(dev) => {
                cuda_usable = true;
                checks.push(DeviceCheck {
                    device: name,
                    kernels: vec![
                        matmul_check(&dev),
                        message_passing_check(&dev, Aggregation::IndexAdd),
                        message_passing_check(&dev, Aggregation::Csr),
                    ],
                });
            }
            Err(e) => checks.push(DeviceCheck {
                device: name,
                kernels: vec![KernelCheck {
                    name: "open device".into(),
                    size: String::new(),
                    median_s: None,
                    gflops: None,
                    max_rel_diff: None,
                    checked_against: String::new(),
                    ok: false,
                    error: Some(e.to_string()),
                }],
            }),
        }
    }
    let recommendation = match cuda.devices.iter().find(|_| cuda_usable) {
        Some(g) => recommend(
            format!("cuda:{} ({})", g.ordinal, g.name.as_deref().unwrap_or("?")),
            g.memory_total_bytes,
        ),
        None => recommend(
            "cpu (available host memory)".into(),
            crate::machine::meminfo("MemAvailable"),
        ),
    };
    let backend = BackendInfo::current();
    CheckGpuReport {
        meshcast: BuildInfo::current(),
        cpu: CpuInfo::detect(),
        backends: backend.names().iter().map(|s| s.to_string()).collect(),
        backend,
        cuda,
        gpu_driver_version: nvidia_driver_version(),
        cuda_usable,
        checks,
        recommendation,
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The human-readable report.
pub fn render(r: &CheckGpuReport) -> String {
    let mut out = render_machine(r);
    out.push_str(&render_cuda(r));
    out.push('\n');
    out.push_str(&render_table(&check_rows(&r.checks)));
    out.push_str(&render_recommendation(&r.recommendation));
    out
}

/// The report's first lines: build, CPU and candle backends.
fn render_machine(r: &CheckGpuReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "meshcast {} ({}{})\n",
        r.meshcast.version,
        r.meshcast.profile,
        r.meshcast
            .git_revision
            .as_ref()
            .map_or(String::new(), |g| format!(", git {g}"))
    ));
    out.push_str(&format!(
        "CPU: {} ({} logical cores{}), {}; SIMD: {}\n",
        r.cpu.model.as_deref().unwrap_or("unknown model"),
        r.cpu.logical_cores,
        r.cpu
            .physical_cores
            .map_or(String::new(), |p| format!(", {p} physical")),
        r.cpu
            .memory_total_bytes
            .map_or("memory unknown".into(), gib),
        if r.cpu.simd.is_empty() {
            "none detected".into()
        } else {
            r.cpu.simd.join(" ")
        }
    ));
    out.push_str(&format!(
        "candle backends built in: {}; CPU kernels: avx2 {}, f16c {}, {} threads\n",
        r.backends.join(", "),
        r.backend.with_avx,
        r.backend.with_f16c,
        r.backend.cpu_threads
    ));
    out
}

/// The CUDA lines: why CUDA is unavailable, or the driver and every device.
fn render_cuda(r: &CheckGpuReport) -> String {
    if !r.cuda.built {
        return "CUDA: not available: this binary was built without the `cuda` feature \
             (build with `cargo build --release --features cuda`, see scripts/build-cuda.sh)\n"
            .to_string();
    }
    if r.cuda.devices.is_empty() {
        return format!(
            "CUDA: built in, but no usable device: {}\n",
            r.cuda.error.as_deref().unwrap_or("none found")
        );
    }
    let mut out = format!(
        "CUDA: driver {} (CUDA {})\n",
        r.gpu_driver_version.as_deref().unwrap_or("?"),
        r.cuda.driver_api_version.as_deref().unwrap_or("?")
    );
    for g in &r.cuda.devices {
        out.push_str(&format!(
            "  cuda:{}: {}, compute capability {}, {} total, {} free\n",
            g.ordinal,
            g.name.as_deref().unwrap_or("?"),
            g.compute_capability.as_deref().unwrap_or("?"),
            g.memory_total_bytes.map_or("?".into(), gib),
            g.memory_free_bytes.map_or("?".into(), gib)
        ));
    }
    out
}

/// Table rows (header first) with one row per kernel check on every device.
fn check_rows(checks: &[DeviceCheck]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "device".to_string(),
        "kernel".into(),
        "size".into(),
        "median ms".into(),
        "GFLOP/s".into(),
        "max rel diff".into(),
        "checked against".into(),
        "ok".into(),
    ]];
    for d in checks {
        for k in &d.kernels {
            rows.push(vec![
                d.device.clone(),
                k.name.clone(),
                k.size.clone(),
                k.median_s.map_or("-".into(), |s| format!("{:.2}", s * 1e3)),
                k.gflops.map_or("-".into(), |g| format!("{g:.1}")),
                k.max_rel_diff.map_or("-".into(), |d| format!("{d:.1e}")),
                k.checked_against.clone(),
                match &k.error {
                    Some(e) => format!("ERROR: {e}"),
                    None => if k.ok { "yes" } else { "NO" }.into(),
                },
            ]);
        }
    }
    rows
}

/// The recommended configuration: the table of memory tiers, this machine's marked.
fn render_recommendation(rec: &Recommendation) -> String {
    let mut out = format!(
        "\nRecommended training configuration for {} with {}:\n",
        rec.device,
        rec.memory_bytes.map_or("unknown memory".into(), gib)
    );
    let mut rows = vec![vec![
        "memory".to_string(),
        "grid".into(),
        "latent".into(),
        "layers".into(),
        "batch".into(),
        "note".into(),
    ]];
    for t in &rec.tiers {
        let mark = if rec.tier.as_ref() == Some(t) {
            " <- this machine"
        } else {
            ""
        };
        rows.push(vec![
            format!("{} GiB", t.memory_gib),
            t.grid.clone(),
            t.latent_size.to_string(),
            t.num_gnn_layers.to_string(),
            t.batch_size.to_string(),
            format!("{}{mark}", t.note),
        ]);
    }
    out.push_str(&render_table(&rows));
    if rec.tier.is_none() {
        out.push_str("below the smallest tier: use the 5-degree grid with a smaller latent size\n");
    }
    out.push_str(&format!("(basis: {})\n", rec.basis));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_grow_and_recommend_the_largest_that_fits() {
        let t = tiers();
        assert!(t.windows(2).all(|w| w[0].memory_gib < w[1].memory_gib));
        let r = recommend("x".into(), Some(20 * (1u64 << 30)));
        assert_eq!(r.tier.unwrap().memory_gib, 16.0);
        assert!(recommend("x".into(), Some(1 << 30)).tier.is_none());
    }

    #[test]
    fn cpu_kernels_check_out() {
        let m = matmul_check(&Device::Cpu);
        assert!(m.ok, "{m:?}");
        for a in [Aggregation::IndexAdd, Aggregation::Csr] {
            let k = message_passing_check(&Device::Cpu, a);
            assert!(k.ok, "{k:?}");
        }
    }
}
