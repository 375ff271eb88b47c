//! `meshcast benchmark-graph-format`: the same GraphCast-style model trained over the
//! same graph stored and batched in different ways, case by case.
//!
//! A case is grid x batch size x format (`coo-replicated`, `coo-shared`, `csr-shared`)
//! x precision x checkpointing (patches are recorded so later reports align; the cases
//! run whole grids). For each grid the graph is built (timed, repeated) and loaded
//! from an on-disk cache in a temporary directory (timed, repeated). For each batch
//! size one synthetic batch is made and the reference format (coo-shared, f32) runs it
//! once. Then each case:
//!
//! 1. resets the allocator's peak and builds its graph tensors and model (parameters
//!    initialised from the seed, so identical across formats);
//! 2. on the model's inference view (detached parameters, no autograd graph) runs the
//!    forward pass and loss and compares them with the reference
//!    (elementwise `|a - b| <= atol + rtol |b|`); a case that differs records
//!    `verified: false` and gets no timings; then times `forward_repeats` forward
//!    passes and records their peak (`inference_peak`);
//! 3. creates the AdamW state, runs `warmup_steps` training steps (forward, loss,
//!    backward, clipping, AdamW), then times `timed_steps` steps;
//! 4. reads the peak of the counting allocator and fills the memory breakdown.
//!
//! Inputs are synthetic: uniform values in [-1, 1) for the normalised input states,
//! validity flags of 1, and uniform targets, from a ChaCha stream seeded by the run's
//! seed, the grid and the batch size. The numbers the model sees do not change the
//! work it does, so no data files are read.

mod case;
mod graphs;
mod plan;
mod tables;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::report::{
    CaseConfig, CaseResult, GraphInfo, PatchBoundaryError, Report, RunSettings, SCHEMA_VERSION,
};
use crate::data::{named_grid, Grid};
use crate::graph::WeatherGraph;
use crate::machine::{BackendInfo, BuildInfo, MachineInfo};
use crate::verify::tolerance::{ATOL, RTOL};
use case::{
    patch_boundary_errors, run_case, skipped_for_memory, CaseInputs, Reference, SyntheticBatch,
};
use graphs::graph_for;
use plan::plan_grid_key;
pub use plan::{precision_name, BenchPlan, GridOverride};
pub use tables::{patch_boundary_table, summary_table};

/// Learning rate of the timed steps (small: the weights should barely move).
const LEARNING_RATE: f64 = 1e-4;

/// The grid the cases run on now (cases come grouped by grid): built once.
struct GridCases {
    name: String,
    mesh_level: u32,
    grid: Grid,
    graph: WeatherGraph,
    info: GraphInfo,
}

impl GridCases {
    fn build(plan: &BenchPlan, cfg: &CaseConfig) -> anyhow::Result<GridCases> {
        let (_, grid, valid) = named_grid(&plan_grid_key(plan, cfg))?;
        let (graph, info) = graph_for(&grid, &valid, cfg.mesh_level, plan.graph_repeats)?;
        tracing::info!(
            "{}: {} grid nodes, {} mesh nodes (level {}), {} + {} + {} edges; built in {:.3} s, cache load {:.3} s",
            cfg.grid,
            info.grid_nodes,
            info.mesh_nodes,
            cfg.mesh_level,
            info.grid2mesh_edges,
            info.mesh_edges,
            info.mesh2grid_edges,
            info.build.median_s,
            info.cache_load.median_s
        );
        Ok(GridCases {
            name: cfg.grid.clone(),
            mesh_level: cfg.mesh_level,
            grid,
            graph,
            info,
        })
    }
}

/// The synthetic batch of the cases of one (batch size, latent size, layers), and the
/// reference format's result on it.
struct BatchCases {
    key: (usize, usize, usize),
    batch: SyntheticBatch,
    reference: Reference,
}

impl BatchCases {
    fn key(cfg: &CaseConfig) -> (usize, usize, usize) {
        (cfg.batch_size, cfg.latent_size, cfg.num_gnn_layers)
    }

    fn new(
        plan: &BenchPlan,
        cfg: &CaseConfig,
        on: &GridCases,
        device: &Device,
    ) -> anyhow::Result<BatchCases> {
        let batch = SyntheticBatch::new(&on.graph, &on.grid, plan.seed, cfg, device)?;
        let reference = Reference::of(&on.graph, &batch, plan.seed, cfg, device)?;
        Ok(BatchCases {
            key: BatchCases::key(cfg),
            batch,
            reference,
        })
    }
}

/// Runs the plan and returns the report (not yet saved).
pub fn run(
    plan: &BenchPlan,
    device: &Device,
    command: Vec<String>,
    progress: bool,
) -> anyhow::Result<Report> {
    plan.validate()?;
    let cases = plan.cases(device)?;
    let bar = progress_bar(progress, cases.len());
    let mut results = Vec::with_capacity(cases.len());
    let mut patch_boundary = Vec::new();
    let (mut grid, mut batch): (Option<GridCases>, Option<BatchCases>) = (None, None);
    for cfg in &cases {
        if grid
            .as_ref()
            .is_none_or(|g| g.name != cfg.grid || g.mesh_level != cfg.mesh_level)
        {
            // Free the previous grid's graph and batch before building the next.
            drop(batch.take());
            drop(grid.take());
            bar.set_message(format!("{} (graph)", cfg.short()));
            let g = GridCases::build(plan, cfg)?;
            if !plan.patch_halos.is_empty() {
                bar.set_message(format!("{} (patch boundary error)", cfg.grid));
                patch_boundary.extend(patch_boundary_errors(plan, cfg, &g.grid, &g.graph, device)?);
            }
            grid = Some(g);
        }
        let g = grid.as_ref().expect("set above");
        if let Some(skipped) = skipped_for_memory(cfg, &g.info, device)? {
            tracing::warn!(
                "{}: skipped, {}",
                cfg.short(),
                skipped.skipped.as_deref().unwrap_or("")
            );
            results.push(skipped);
            bar.inc(1);
            continue;
        }
        if batch.as_ref().is_none_or(|b| b.key != BatchCases::key(cfg)) {
            drop(batch.take());
            bar.set_message(format!("{} (reference)", cfg.short()));
            batch = Some(BatchCases::new(plan, cfg, g, device)?);
        }
        let b = batch.as_ref().expect("set above");
        bar.set_message(cfg.short());
        let inputs = CaseInputs {
            graph: &g.graph,
            info: &g.info,
            batch: &b.batch,
            reference: &b.reference,
        };
        let result = run_case(cfg, plan, &inputs, device);
        log_failure(cfg, &result);
        results.push(result);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report(plan, command, results, patch_boundary))
}

/// A bar over the cases on a terminal; hidden otherwise (logs stay free of it).
fn progress_bar(progress: bool, cases: usize) -> indicatif::ProgressBar {
    if !(progress && std::io::stderr().is_terminal()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(cases as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{elapsed_precise}] [{bar:30}] {pos}/{len} cases: {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// One error line for a case that failed or did not verify.
fn log_failure(cfg: &CaseConfig, r: &CaseResult) {
    match (&r.error, &r.verification) {
        (Some(e), _) => tracing::error!("{}: {e}", cfg.short()),
        (None, Some(v)) if !v.verified => tracing::error!(
            "{}: differs from {} (max output difference {:.3e}, loss difference {:.3e}): no timings",
            cfg.short(),
            v.reference,
            v.max_output_diff,
            v.loss_diff
        ),
        _ => {}
    }
}

/// The report of a finished run.
fn report(
    plan: &BenchPlan,
    command: Vec<String>,
    cases: Vec<CaseResult>,
    patch_boundary: Vec<PatchBoundaryError>,
) -> Report {
    Report {
        schema_version: SCHEMA_VERSION,
        kind: "graph-format".into(),
        label: plan.label.clone(),
        created_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command,
        meshcast: BuildInfo::current(),
        backend: BackendInfo::current(),
        machine: MachineInfo::detect(),
        settings: RunSettings {
            warmup_steps: plan.warmup_steps,
            timed_steps: plan.timed_steps,
            forward_repeats: plan.forward_repeats,
            graph_repeats: plan.graph_repeats,
            seed: plan.seed,
            learning_rate: LEARNING_RATE,
            rtol: RTOL,
            atol: ATOL,
            data: format!("synthetic: {}", crate::predict::synthetic::DESCRIPTION),
            tf32: crate::device::tf32_enabled(),
            cuda_fused_ops: crate::device::cuda_fused_ops(),
        },
        cases,
        patch_boundary,
    }
}

/// `<dir>/<label>_<UTC timestamp>.json`.
pub fn report_path(dir: &Path, report: &Report) -> PathBuf {
    let stamp = chrono::DateTime::parse_from_rfc3339(&report.created_utc)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| "unknown-time".into());
    let label: String = report
        .label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{label}_{stamp}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Format;

    #[test]
    fn quick_plan_runs_and_verifies() {
        let plan = BenchPlan {
            grids: vec!["storm1996".into()],
            batch_sizes: vec![2],
            latent_size: 8,
            num_gnn_layers: 1,
            timed_steps: 2,
            forward_repeats: 1,
            graph_repeats: 1,
            ..BenchPlan::quick()
        };
        let report = run(&plan, &Device::Cpu, vec![], false).unwrap();
        // Three formats, each without and with checkpointing.
        assert_eq!(report.cases.len(), 6);
        for c in &report.cases {
            assert!(c.verified(), "{:?}", c.verification);
            let t = c.timings.as_ref().unwrap();
            assert_eq!(t.step.samples_s.len(), 2);
            assert!(t.final_loss.is_finite());
            // No counting allocator in unit tests: measured parts are null.
            assert!(c.memory.unwrap().peak.is_none());
        }
        let replicated = &report.cases[0];
        assert_eq!(replicated.config.format, Format::CooReplicated);
        let shared = report
            .cases
            .iter()
            .find(|c| c.config.format == Format::CooShared)
            .unwrap();
        assert!(replicated.graph.case_bytes > shared.graph.case_bytes);
        assert!(summary_table(&report).contains("csr-shared"));
        // Patch boundary error: a halo covering the globe reproduces the whole grid; a
        // 10-degree halo, shorter than the coarse mesh's edges, does not.
        let by_halo = |h: f64| {
            report
                .patch_boundary
                .iter()
                .find(|p| p.halo_deg == h)
                .unwrap()
        };
        assert_eq!(report.patch_boundary.len(), 2);
        assert!(by_halo(180.0).relative_error < 1e-5, "{:?}", by_halo(180.0));
        assert!(by_halo(10.0).relative_error > 1e-4, "{:?}", by_halo(10.0));
        assert!(by_halo(10.0).largest_patch_nodes < by_halo(180.0).largest_patch_nodes);
    }
}
