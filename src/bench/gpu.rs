//! `meshcast check-gpu`: what this binary and machine can run, checked by running it.
//!
//! Reports the CPU, the candle backends built in, and on CUDA builds every CUDA
//! device (name, compute capability, total and free memory, driver versions). Then
//! on every device it runs a matmul and a message-passing step (gather by sender,
//! sum into receivers) and a fused AdamW update, checks each against the CPU (the CPU's
//! own matmul against a plain f64 loop, the fused update against candle's composed ops)
//! and reports GFLOP/s. Finally it asks the memory planner what
//! fits the memory free on the device: the largest batch per grid.

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

/// The largest batch of one grid and model that the planner predicts to fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedFit {
    pub grid: String,
    pub latent_size: usize,
    pub num_gnn_layers: usize,
    /// 0 when not even batch 1 fits.
    pub batch_size: usize,
    /// The cheapest whole-grid techniques for that batch (checkpointing, precision).
    pub techniques: Option<String>,
    pub predicted_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The memory the recommendation is for.
    pub device: String,
    pub memory_bytes: Option<u64>,
    /// Per grid: the largest batch that fits `memory_bytes`.
    pub fits: Vec<PlannedFit>,
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

/// The grids (degrees) and the model the recommendation plans for: meshcast's
/// benchmark grids with GraphCast's processor depth at latent 128.
const PLANNED_GRIDS: [f64; 3] = [5.0, 2.5, 1.0];
const PLANNED_LATENT: usize = 128;
const PLANNED_LAYERS: usize = 16;
/// Batches tried (powers of two up to this).
const MAX_PLANNED_BATCH: usize = 64;

/// What fits `memory_bytes` on each planned grid, by the memory planner (the one
/// behind `plan-memory` and `train-model --memory-budget`), whole grid, cheapest
/// techniques first.
fn recommend(device: String, memory_bytes: Option<u64>, on_cpu: bool) -> Recommendation {
    let fits = PLANNED_GRIDS
        .iter()
        .filter_map(|&deg| match memory_bytes {
            Some(budget) => planned_fit(deg, budget, on_cpu)
                .map_err(|e| tracing::warn!("planning {deg} deg: {e:#}"))
                .ok(),
            None => None,
        })
        .collect();
    Recommendation {
        device,
        memory_bytes,
        fits,
        basis: concat!(
            "meshcast's memory planner (as `meshcast plan-memory`): f32 weights, 5 channels, ",
            "2 input steps, the default mesh level of each grid; patches extend any of these further"
        )
        .into(),
    }
}

fn planned_fit(deg: f64, budget: u64, on_cpu: bool) -> anyhow::Result<PlannedFit> {
    use crate::memory::planner::{choose, predict, StepSetting, Techniques};
    let grid = crate::data::Grid::global_cell_centred(deg);
    let valid = vec![true; grid.len()];
    let options = crate::graph::GraphOptions {
        mesh_level: crate::graph::default_mesh_level(&grid),
        ..Default::default()
    };
    let (graph, _, _) = crate::graph::load_or_build(
        &grid,
        &valid,
        &options,
        crate::graph::default_cache_dir().as_deref(),
    )?;
    let model = crate::model::ModelConfig {
        latent_size: PLANNED_LATENT,
        num_gnn_layers: PLANNED_LAYERS,
        ..Default::default()
    }
    .for_data(2, 5, 0);
    let whole_grid: Vec<Techniques> = crate::memory::planner::candidates(1);
    let mut best = PlannedFit {
        grid: format!("{deg} deg"),
        latent_size: PLANNED_LATENT,
        num_gnn_layers: PLANNED_LAYERS,
        batch_size: 0,
        techniques: None,
        predicted_bytes: None,
    };
    let mut batch = 1;
    while batch <= MAX_PLANNED_BATCH {
        let setting = StepSetting {
            graph: &graph,
            grid: &grid,
            model: &model,
            batch_size: batch,
            patch_halo: 0.0,
            on_cpu,
            rollout_steps: 1,
            patch_ranks: 1,
        };
        let (rows, chosen) = choose(budget, &whole_grid, |t| setting.shape(t))?;
        let Some(row) = chosen.map(|i| &rows[i]) else {
            break;
        };
        best.batch_size = batch;
        best.techniques = Some(row.techniques.to_string());
        best.predicted_bytes = Some(predict(&setting.shape(row.techniques)?).total);
        batch *= 2;
    }
    Ok(best)
}

pub(super) fn max_rel(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-30);
    Ok(diff / scale)
}

pub(super) fn random(dims: &[usize], seed: u64, device: &Device) -> candle_core::Result<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, device)
}

pub(super) fn median_time(
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
pub(super) const MP_NODES: usize = 10_242;
pub(super) const MP_DEGREE: usize = 6;
pub(super) const MP_FEATURES: usize = 128;
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
pub(super) fn mp_edges(
    device: &Device,
    aggregation: Aggregation,
) -> candle_core::Result<EdgeTensors> {
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

const ADAMW_VALUES: usize = 1 << 20;
const ADAMW_STEPS: usize = 5;

/// Five fused AdamW updates (with a clip multiplier folded in) of `ADAMW_VALUES`
/// parameters on `device`, against five updates by candle's composed ops on the CPU.
fn adamw_check(device: &Device) -> KernelCheck {
    use crate::train::optimizer::{reference, AdamW, AdamWParams};
    let mut check = KernelCheck {
        name: "fused AdamW update (clip folded in)".into(),
        size: format!("{ADAMW_VALUES} parameters, {ADAMW_STEPS} steps"),
        median_s: None,
        gflops: None,
        max_rel_diff: None,
        checked_against: "candle's composed ops on the CPU".into(),
        ok: false,
        error: None,
    };
    let (lr, multiplier, params) = (1e-3, 0.5, AdamWParams::default());
    let run = || -> candle_core::Result<(f64, f64)> {
        let w = random(&[ADAMW_VALUES], 6, &Device::Cpu)?;
        let g = random(&[ADAMW_VALUES], 7, &Device::Cpu)?;
        let var = candle_core::Var::from_tensor(&w.to_device(device)?)?;
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], params)?;
        let flat = opt.pack(&[Some(g.to_device(device)?)])?;
        let (secs, out) = median_time(ADAMW_STEPS, || {
            opt.step(&flat, lr, multiplier)?;
            Ok(var.as_tensor().clone())
        })?;
        let mut states = vec![reference::ParamState::new(&w)?];
        let scaled = [Some((g * multiplier)?)];
        for t in 1..=ADAMW_STEPS {
            reference::step(&mut states, &scaled, params, t, lr)?;
        }
        Ok((secs, max_rel(&out, &states[0].weight)?))
    };
    match run() {
        Ok((secs, rel)) => {
            check.median_s = Some(secs);
            check.max_rel_diff = Some(rel);
            // Bit for bit on the CPU; on a GPU, fused multiply-adds round differently.
            check.ok = if device.is_cpu() {
                rel == 0.0
            } else {
                rel < 1e-6
            };
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
            adamw_check(&Device::Cpu),
            super::fused_check::fused_ops_check(&Device::Cpu),
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
                        adamw_check(&dev),
                        super::fused_check::fused_ops_check(&dev),
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
            g.memory_free_bytes.or(g.memory_total_bytes),
            false,
        ),
        None => recommend(
            "cpu (memory available now)".into(),
            crate::memory::available_on(&Device::Cpu).map(|a| a.bytes),
            true,
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

/// The recommended configurations: per grid, the largest batch that fits.
fn render_recommendation(rec: &Recommendation) -> String {
    let mut out = format!(
        "\nWhat fits {} with {} (latent {PLANNED_LATENT}, {PLANNED_LAYERS} processor layers, whole grid):\n",
        rec.device,
        rec.memory_bytes.map_or("unknown memory".into(), gib)
    );
    let mut rows = vec![vec![
        "grid".to_string(),
        "largest batch".into(),
        "techniques".into(),
        "predicted peak".into(),
    ]];
    for f in &rec.fits {
        rows.push(vec![
            f.grid.clone(),
            match f.batch_size {
                0 => "none (use --patches)".into(),
                b => b.to_string(),
            },
            f.techniques.clone().unwrap_or_else(|| "-".into()),
            f.predicted_bytes.map_or("-".into(), gib),
        ]);
    }
    out.push_str(&render_table(&rows));
    out.push_str(&format!("(basis: {})\n", rec.basis));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planner_recommends_larger_batches_for_more_memory_and_coarser_grids() {
        let small = recommend("x".into(), Some(2 << 30), true);
        let large = recommend("x".into(), Some(64 << 30), true);
        assert_eq!(small.fits.len(), 3);
        for (s, l) in small.fits.iter().zip(&large.fits) {
            assert!(s.batch_size <= l.batch_size, "{s:?} {l:?}");
            if let Some(p) = s.predicted_bytes {
                assert!(p <= 2 << 30, "{s:?}");
            }
        }
        assert!(small.fits[0].batch_size >= small.fits[2].batch_size);
        assert!(large.fits[0].batch_size >= 1);
    }

    #[test]
    fn cpu_kernels_check_out() {
        let m = matmul_check(&Device::Cpu);
        assert!(m.ok, "{m:?}");
        for a in [Aggregation::IndexAdd, Aggregation::Csr] {
            let k = message_passing_check(&Device::Cpu, a);
            assert!(k.ok, "{k:?}");
        }
        let k = adamw_check(&Device::Cpu);
        assert!(k.ok, "{k:?}");
    }
}
