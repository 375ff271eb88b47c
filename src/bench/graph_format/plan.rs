//! What a benchmark runs: a plan (a config file, `--quick`, or flags) expanded into
//! cases.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::bench::report::{CaseConfig, Format};
use crate::data::named_grid;
use crate::error::InputError;
use crate::graph;
use crate::model::MixedPrecision;

/// Per-grid changes to the plan (a config's `[overrides."1"]` table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GridOverride {
    pub batch_sizes: Option<Vec<usize>>,
    pub latent_size: Option<usize>,
    pub num_gnn_layers: Option<usize>,
    pub mesh_level: Option<u32>,
    pub timed_steps: Option<usize>,
}

/// What to run: a config file (`configs/bench-*.toml`) or flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchPlan {
    /// The report's label (and the start of its file name).
    pub label: String,
    /// Global cell-centred grids by spacing in degrees (`5`, `2.5`, `1`) and/or
    /// `storm1996` (33 x 36 regional, corners masked like the real files).
    pub grids: Vec<String>,
    pub batch_sizes: Vec<usize>,
    pub formats: Vec<Format>,
    /// Gradient checkpointing of every processor block, off and/or on.
    pub checkpointing: Vec<bool>,
    /// Mixed precision of the activations (`off` is f32).
    pub precisions: Vec<MixedPrecision>,
    pub latent_size: usize,
    pub num_gnn_layers: usize,
    pub mlp_hidden_layers: usize,
    /// Mesh level for every grid; None: the grid's default (5 deg: 4, 2.5: 5, 1: 6).
    pub mesh_level: Option<u32>,
    pub input_steps: usize,
    /// Variables per state (5, as the synthetic datasets).
    pub channels: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub forward_repeats: usize,
    /// Graph builds and cache loads timed per grid.
    pub graph_repeats: usize,
    pub seed: u64,
    /// Keyed by the grid as written in `grids`.
    pub overrides: BTreeMap<String, GridOverride>,
    /// Halos (degrees) at which a forward pass over `boundary_patches` patches is
    /// compared with the whole grid, per grid (empty: not measured).
    pub patch_halos: Vec<f64>,
    pub boundary_patches: usize,
}

impl Default for BenchPlan {
    fn default() -> Self {
        BenchPlan {
            label: "graph-format".into(),
            grids: vec!["5".into()],
            batch_sizes: vec![1, 4],
            formats: Format::ALL.to_vec(),
            checkpointing: vec![false],
            precisions: vec![MixedPrecision::Off],
            latent_size: 128,
            num_gnn_layers: 8,
            mlp_hidden_layers: 1,
            mesh_level: None,
            input_steps: 2,
            channels: 5,
            warmup_steps: 2,
            timed_steps: 10,
            forward_repeats: 5,
            graph_repeats: 3,
            seed: 0,
            overrides: BTreeMap::new(),
            patch_halos: Vec::new(),
            boundary_patches: 4,
        }
    }
}

impl BenchPlan {
    /// `--quick`: seconds in a debug build on 2 cores (CI): two small grids, a tiny
    /// model, few steps.
    pub fn quick() -> BenchPlan {
        BenchPlan {
            label: "quick".into(),
            grids: vec!["5".into(), "storm1996".into()],
            batch_sizes: vec![1, 2],
            formats: Format::ALL.to_vec(),
            checkpointing: vec![false, true],
            precisions: vec![MixedPrecision::Off],
            latent_size: 16,
            num_gnn_layers: 2,
            mlp_hidden_layers: 1,
            mesh_level: Some(2),
            input_steps: 2,
            channels: 5,
            warmup_steps: 1,
            timed_steps: 3,
            forward_repeats: 3,
            graph_repeats: 2,
            seed: 0,
            overrides: BTreeMap::new(),
            patch_halos: vec![10.0, 180.0],
            boundary_patches: 4,
        }
    }

    /// Reads a TOML or JSON plan (unknown keys are refused).
    pub fn load(path: &Path) -> anyhow::Result<BenchPlan> {
        let value = crate::config::load_value(path)?;
        serde_json::from_value(value).map_err(|e| InputError::file(path, e).into())
    }

    /// Refuses plans that cannot run, before any work.
    pub fn validate(&self) -> Result<(), InputError> {
        let bad = |m: String| Err(InputError(m));
        if self.grids.is_empty()
            || self.batch_sizes.is_empty()
            || self.formats.is_empty()
            || self.checkpointing.is_empty()
            || self.precisions.is_empty()
        {
            return bad(
                "the benchmark needs at least one grid, batch size, format, checkpointing and precision setting".into(),
            );
        }
        for g in &self.grids {
            named_grid(g)?;
        }
        if let Some(k) = self.overrides.keys().find(|k| !self.grids.contains(k)) {
            return bad(format!(
                "override for grid '{k}', which is not in grids {:?}",
                self.grids
            ));
        }
        let sizes = self
            .overrides
            .values()
            .filter_map(|o| o.batch_sizes.as_ref())
            .flatten();
        if self.batch_sizes.iter().chain(sizes).any(|&b| b == 0) {
            return bad("batch sizes must be at least 1".into());
        }
        if self.latent_size == 0 || self.timed_steps == 0 || self.forward_repeats == 0 {
            return bad("latent size, timed steps and forward repeats must be at least 1".into());
        }
        if self.input_steps == 0 || self.channels == 0 || self.graph_repeats == 0 {
            return bad("input steps, channels and graph repeats must be at least 1".into());
        }
        crate::model::ModelConfig {
            latent_size: self.latent_size,
            num_gnn_layers: self.num_gnn_layers,
            mlp_hidden_layers: self.mlp_hidden_layers,
            ..Default::default()
        }
        .validate()?;
        crate::data::WindowSpec::lead_spaced(self.input_steps, 1).validate()?;
        let max = crate::train::config::MAX_COUNT;
        if self.batch_sizes.iter().any(|&b| b > max) || self.channels > max {
            return bad(format!("batch sizes and channels must be at most {max}"));
        }
        if !self.patch_halos.is_empty()
            && (self.boundary_patches < 2
                || self.patch_halos.iter().any(|h| h.is_nan() || *h < 0.0))
        {
            return bad("patch_halos need boundary_patches >= 2 and halos >= 0 degrees".into());
        }
        if let Some(l) = self.mesh_level.filter(|&l| l > graph::MAX_MESH_LEVEL) {
            return bad(format!(
                "--mesh-level {l} is above {}",
                graph::MAX_MESH_LEVEL
            ));
        }
        Ok(())
    }

    /// The cases, in run order.
    pub fn cases(&self, device: &Device) -> anyhow::Result<Vec<CaseConfig>> {
        let dev = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut out = Vec::new();
        for g in &self.grids {
            let o = self.overrides.get(g).cloned().unwrap_or_default();
            let (name, grid, _) = named_grid(g)?;
            let mesh_level = o
                .mesh_level
                .or(self.mesh_level)
                .unwrap_or_else(|| graph::default_mesh_level(&grid));
            for &b in o.batch_sizes.as_ref().unwrap_or(&self.batch_sizes) {
                for (&format, &checkpointing, &precision) in self.formats.iter().flat_map(|f| {
                    self.checkpointing
                        .iter()
                        .flat_map(move |c| self.precisions.iter().map(move |p| (f, c, p)))
                }) {
                    out.push(CaseConfig {
                        grid: name.clone(),
                        mesh_level,
                        batch_size: b,
                        format,
                        precision: precision_name(precision).into(),
                        checkpointing,
                        patches: 1,
                        latent_size: o.latent_size.unwrap_or(self.latent_size),
                        num_gnn_layers: o.num_gnn_layers.unwrap_or(self.num_gnn_layers),
                        mlp_hidden_layers: self.mlp_hidden_layers,
                        input_steps: self.input_steps,
                        channels: self.channels,
                        device: dev.into(),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The key of `cfg`'s grid in `plan.grids` (the text the user wrote).
pub(super) fn plan_grid_key(plan: &BenchPlan, cfg: &CaseConfig) -> String {
    plan.grids
        .iter()
        .find(|g| named_grid(g).is_ok_and(|(name, _, _)| name == cfg.grid))
        .cloned()
        .unwrap_or_default()
}

/// How a case's precision is written in reports (`f32` for no mixed precision).
pub fn precision_name(p: MixedPrecision) -> &'static str {
    match p {
        MixedPrecision::Off => "f32",
        other => other.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_expand_to_cases() {
        let mut plan = BenchPlan {
            grids: vec!["5".into(), "1".into()],
            batch_sizes: vec![1, 4],
            ..BenchPlan::default()
        };
        plan.overrides.insert(
            "1".into(),
            GridOverride {
                batch_sizes: Some(vec![1]),
                num_gnn_layers: Some(2),
                ..Default::default()
            },
        );
        plan.validate().unwrap();
        let cases = plan.cases(&Device::Cpu).unwrap();
        assert_eq!(cases.len(), 2 * 3 + 3);
        assert!(cases[..6]
            .iter()
            .all(|c| c.mesh_level == 4 && c.num_gnn_layers == 8));
        assert!(cases[6..]
            .iter()
            .all(|c| c.mesh_level == 6 && c.batch_size == 1 && c.num_gnn_layers == 2));
        plan.overrides.insert("2.5".into(), GridOverride::default());
        assert!(plan.validate().is_err());
    }
}
