//! The benchmark report: one JSON file per run, `schema_version` first.
//!
//! A case is identified by its [`CaseConfig`]; `compare-benchmarks` aligns two
//! reports' cases on it. Version 1 of the schema; any change to a field's meaning
//! bumps [`SCHEMA_VERSION`], and reports of another version are refused by
//! `compare-benchmarks`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats::Summary;
use crate::error::InputError;
use crate::machine::{BackendInfo, BuildInfo, MachineInfo};
use crate::memory::MemoryBreakdown;

pub const SCHEMA_VERSION: u32 = 1;

/// How a case stores the graph and batches samples over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// PyG-style block-diagonal batch graph (`Batching::Replicated`), `index_add` sums.
    CooReplicated,
    /// One shared graph broadcast over the batch (`Batching::Shared`), `index_add` sums.
    CooShared,
    /// One shared graph, CSR segment sums (`Aggregation::Csr`).
    CsrShared,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::CooReplicated, Format::CooShared, Format::CsrShared];
    /// The format every case is verified against.
    pub const REFERENCE: Format = Format::CooShared;

    pub fn name(self) -> &'static str {
        match self {
            Format::CooReplicated => "coo-replicated",
            Format::CooShared => "coo-shared",
            Format::CsrShared => "csr-shared",
        }
    }

    pub fn batching(self) -> crate::model::Batching {
        match self {
            Format::CooReplicated => crate::model::Batching::Replicated,
            _ => crate::model::Batching::Shared,
        }
    }

    pub fn aggregation(self) -> crate::model::Aggregation {
        match self {
            Format::CsrShared => crate::model::Aggregation::Csr,
            _ => crate::model::Aggregation::IndexAdd,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown format '{s}' (expected coo-replicated, coo-shared or csr-shared)")
            })
    }
}

/// Everything that defines a case (the key `compare-benchmarks` aligns on).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CaseConfig {
    /// `global-<deg>` (cell-centred global grid) or `storm1996` (33 x 36 regional, masked corners).
    pub grid: String,
    pub mesh_level: u32,
    pub batch_size: usize,
    pub format: Format,
    /// Activation dtype: `f32`, or `bf16`/`f16` mixed precision (f32 master weights).
    pub precision: String,
    /// Gradient checkpointing of the processor, one block per segment.
    pub checkpointing: bool,
    /// Spatial patches per sample (the graph-format benchmark runs whole grids: 1).
    pub patches: usize,
    pub latent_size: usize,
    pub num_gnn_layers: usize,
    pub mlp_hidden_layers: usize,
    pub input_steps: usize,
    pub channels: usize,
    /// `cpu` or `cuda`.
    pub device: String,
}

impl CaseConfig {
    /// A short name for tables: `global-5 b4 csr-shared`.
    pub fn short(&self) -> String {
        let ckpt = if self.checkpointing {
            " checkpointing"
        } else {
            ""
        };
        let precision = if self.precision == "f32" {
            String::new()
        } else {
            format!(" {}", self.precision)
        };
        format!(
            "{} b{} {}{ckpt}{precision}",
            self.grid, self.batch_size, self.format
        )
    }

    /// The key two reports' cases are aligned on.
    pub fn key(&self) -> String {
        serde_json::to_string(self).expect("a case config serialises")
    }
}

/// Sizes of the graph and the model of a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphInfo {
    pub grid_cells: usize,
    /// Grid cells that are graph nodes (masked cells are not).
    pub grid_nodes: usize,
    pub mesh_nodes: usize,
    pub grid2mesh_edges: usize,
    pub mesh_edges: usize,
    pub mesh2grid_edges: usize,
    /// Index bytes of the three edge sets in each storage format.
    pub coo_index_bytes: usize,
    pub csr_index_bytes: usize,
    pub csc_index_bytes: usize,
    /// Node and edge feature bytes (f32, COO order).
    pub feature_bytes: usize,
    /// Bytes of the graph as this case holds it: tensors (replicated B times for
    /// coo-replicated) plus the host CSR index for csr-shared.
    pub case_bytes: usize,
    /// Building the graph from scratch, repeated.
    pub build: Summary,
    /// Loading it from the on-disk cache, repeated.
    pub cache_load: Summary,
}

/// Parameters of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSize {
    pub parameters: usize,
    pub bytes: usize,
}

/// How a case's result compares with the reference format's on the same weights and batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub verified: bool,
    /// Largest |output - reference output|.
    pub max_output_diff: f64,
    /// |loss - reference loss|.
    pub loss_diff: f64,
    pub rtol: f64,
    /// Absolute tolerance in output units: `RunSettings::atol` x the largest reference output.
    pub atol: f64,
    pub reference: Format,
}

/// Timings of a verified case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Forward pass and loss on the inference view (no autograd graph), no backward.
    pub forward: Summary,
    /// Forward, loss, backward, gradient clipping and the AdamW update.
    pub step: Summary,
    /// The optimizer's part of each timed step (packing the gradients, their norm, the
    /// fused AdamW), on the CPU only: on a GPU the host clock would also count the
    /// backward's queued kernels, and a device timer would add syncs to the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<Summary>,
    pub warmup_steps: usize,
    /// `batch_size / median step`.
    pub samples_per_s: f64,
    /// Edge updates per second: `batch_size * (grid2mesh + num_gnn_layers * mesh +
    /// mesh2grid edges) / median step`.
    pub edges_per_s: f64,
    /// Loss after the last timed step (a sanity value: finite, and below the first).
    pub final_loss: f64,
}

/// One case: its config and what was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub config: CaseConfig,
    pub graph: GraphInfo,
    pub model: ModelSize,
    /// None when the case failed before it could be verified (see `error`).
    pub verification: Option<Verification>,
    /// None for a case that failed verification or errored.
    pub timings: Option<Timings>,
    /// Computed sizes and measured host memory (measured parts null without the
    /// counting allocator or on CUDA, where device memory is not counted).
    pub memory: Option<MemoryBreakdown>,
    /// The planner's prediction of the case's peak above its baseline (bytes; see
    /// `memory::planner`), to set against the measured `memory.peak - memory.baseline`.
    #[serde(default)]
    pub predicted_peak: Option<u64>,
    /// Peak bytes above the case's baseline during its forward passes on the
    /// inference view (no autograd graph kept): weights, graph (and the replica of
    /// coo-replicated) and activations. What a forecast of this batch needs.
    #[serde(default)]
    pub inference_peak: Option<u64>,
    /// Why the case has no timings, if it failed.
    pub error: Option<String>,
    /// Why the case was not run: its predicted peak exceeds the device's free memory
    /// (a case the kernel would kill would lose the whole benchmark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl CaseResult {
    pub fn verified(&self) -> bool {
        self.verification.as_ref().is_some_and(|v| v.verified)
    }

    /// Ran, and failed its verification or errored.
    pub fn failed(&self) -> bool {
        self.skipped.is_none() && (!self.verified() || self.error.is_some())
    }
}

/// Run-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub forward_repeats: usize,
    pub graph_repeats: usize,
    pub seed: u64,
    pub learning_rate: f64,
    pub rtol: f64,
    /// f32 absolute tolerance, as a fraction of the largest reference output.
    pub atol: f64,
    /// How inputs are made.
    pub data: String,
    /// f32 matmuls ran on TF32 tensor cores (`--tf32`; f32 cases then verified with
    /// `verify::tolerance::TF32_TOLERANCES`).
    #[serde(default)]
    pub tf32: bool,
    /// CUDA ran meshcast's fused ops (`--cuda-fused-ops`), not the composed candle ops.
    #[serde(default)]
    pub cuda_fused_ops: bool,
}

/// A whole benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub kind: String,
    pub label: String,
    /// RFC 3339, UTC.
    pub created_utc: String,
    pub command: Vec<String>,
    pub meshcast: BuildInfo,
    pub backend: BackendInfo,
    pub machine: MachineInfo,
    pub settings: RunSettings,
    pub cases: Vec<CaseResult>,
    /// Patched against whole-grid forward passes, per grid and halo (the plan's
    /// `patch_halos`; empty when not asked for).
    #[serde(default)]
    pub patch_boundary: Vec<PatchBoundaryError>,
}

/// How far a patched forward pass lands from the whole-grid one when the halo is
/// smaller than the model's receptive field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchBoundaryError {
    pub grid: String,
    pub patches: usize,
    pub halo_deg: f64,
    /// Grid nodes (owned and halo) of the largest patch.
    pub largest_patch_nodes: usize,
    /// Largest |patched - whole| over every output, and that over the largest |whole|.
    pub max_abs_error: f64,
    pub relative_error: f64,
    /// RMS of the difference over the RMS of the whole-grid output.
    pub relative_rms_error: f64,
}

impl Report {
    /// Reads a report, refusing unreadable files and other schema versions (input errors).
    pub fn load(path: &Path) -> anyhow::Result<Report> {
        let text = std::fs::read_to_string(path).map_err(|e| InputError::file(path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| InputError::file(path, format!("not JSON: {e}")))?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(InputError::file(
                    path,
                    format!(
                        "benchmark report schema_version {v}, this meshcast reads {SCHEMA_VERSION}"
                    ),
                )
                .into())
            }
            None => {
                return Err(InputError::file(
                    path,
                    "not a meshcast benchmark report (no schema_version)",
                )
                .into())
            }
        }
        serde_json::from_value(value)
            .map_err(|e| InputError::file(path, format!("bad benchmark report: {e}")).into())
    }

    /// Writes the report atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::util::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Writes the report under `path`, or a numbered variant of it when another report
    /// has that name: a report is never overwritten. Returns where it went.
    pub fn save_new(&self, path: &Path) -> anyhow::Result<std::path::PathBuf> {
        crate::util::write_new(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::machine::{CpuInfo, MachineInfo};

    fn summary(v: &[f64]) -> Summary {
        Summary::of(v).unwrap()
    }

    /// A small report with one verified case (timings around `step_s`).
    pub fn sample_report(step_s: f64) -> Report {
        let config = CaseConfig {
            grid: "global-5".into(),
            mesh_level: 2,
            batch_size: 2,
            format: Format::CsrShared,
            precision: "f32".into(),
            checkpointing: false,
            patches: 1,
            latent_size: 16,
            num_gnn_layers: 1,
            mlp_hidden_layers: 1,
            input_steps: 2,
            channels: 5,
            device: "cpu".into(),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            kind: "graph-format".into(),
            label: "test".into(),
            created_utc: "2026-11-24T10:00:00Z".into(),
            command: vec!["meshcast".into()],
            meshcast: BuildInfo::current(),
            backend: BackendInfo::current(),
            machine: MachineInfo {
                hostname: None,
                cpu: CpuInfo {
                    model: Some("Test CPU 0.1 (1/3 precision)".into()),
                    logical_cores: 2,
                    physical_cores: Some(1),
                    simd: vec!["avx2".into()],
                    arch: "x86_64".into(),
                    os: "linux".into(),
                    memory_total_bytes: Some(1 << 34),
                },
                gpu_driver_version: None,
                cuda_driver_api_version: None,
                gpus: vec![],
            },
            settings: RunSettings {
                warmup_steps: 1,
                timed_steps: 3,
                forward_repeats: 3,
                graph_repeats: 3,
                seed: 0,
                learning_rate: 1e-4,
                rtol: 1e-5,
                atol: 1e-6,
                data: "uniform".into(),
                tf32: false,
                cuda_fused_ops: false,
            },
            cases: vec![CaseResult {
                config,
                graph: GraphInfo {
                    grid_cells: 2592,
                    grid_nodes: 2592,
                    mesh_nodes: 162,
                    grid2mesh_edges: 3000,
                    mesh_edges: 1920,
                    mesh2grid_edges: 7776,
                    coo_index_bytes: 1,
                    csr_index_bytes: 2,
                    csc_index_bytes: 3,
                    feature_bytes: 4,
                    case_bytes: 5,
                    build: summary(&[0.1 / 3.0, 0.02]),
                    cache_load: summary(&[0.001]),
                },
                model: ModelSize {
                    parameters: 1000,
                    bytes: 4000,
                },
                verification: Some(Verification {
                    verified: true,
                    max_output_diff: 1.1920929e-7,
                    loss_diff: 0.0,
                    rtol: 1e-5,
                    atol: 1e-6,
                    reference: Format::CooShared,
                }),
                timings: Some(Timings {
                    forward: summary(&[step_s / 3.0, step_s / 2.9, step_s / 3.1]),
                    step: summary(&[step_s, step_s * 1.02, step_s * 0.98]),
                    optimizer: Some(summary(&[step_s / 20.0, step_s / 19.0, step_s / 21.0])),
                    warmup_steps: 1,
                    samples_per_s: 2.0 / step_s,
                    edges_per_s: 2.0 * 12696.0 / step_s,
                    final_loss: 0.123_456_789_012_345_68,
                }),
                memory: Some(MemoryBreakdown::new(
                    4000,
                    8000,
                    4000,
                    5,
                    Some(1 << 20),
                    Some(3 << 20),
                )),
                predicted_peak: None,
                inference_peak: None,
                error: None,
                skipped: None,
            }],
            patch_boundary: Vec::new(),
        }
    }

    #[test]
    fn round_trips_through_json() {
        let r = sample_report(0.0123456789);
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(text.starts_with("{\n  \"schema_version\": 1"));
        assert!(text.contains("\"format\": \"csr-shared\""));
    }

    #[test]
    fn formats_parse_and_map_to_the_model() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert!("coo".parse::<Format>().is_err());
        assert_eq!(
            Format::CooReplicated.batching(),
            crate::model::Batching::Replicated
        );
        assert_eq!(
            Format::CsrShared.aggregation(),
            crate::model::Aggregation::Csr
        );
    }
}
