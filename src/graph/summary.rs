//! What `meshcast describe-graph` prints: sizes, degrees and memory of the graph.

use std::fmt;

use serde::Serialize;

use super::cache::CacheOutcome;
use super::formats::{Coo, FormatBytes};
use super::patches::{Patch, PatchOptions};
use super::sets::EdgeSet;
use super::WeatherGraph;

/// Minimum, mean and maximum of a count over items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DegreeStats {
    pub min: usize,
    pub mean: f64,
    pub max: usize,
}

impl DegreeStats {
    fn of(counts: impl IntoIterator<Item = usize>) -> DegreeStats {
        let (mut min, mut max, mut sum, mut n) = (usize::MAX, 0, 0usize, 0usize);
        for c in counts {
            (min, max, sum, n) = (min.min(c), max.max(c), sum + c, n + 1);
        }
        if n == 0 {
            return DegreeStats {
                min: 0,
                mean: 0.0,
                max: 0,
            };
        }
        DegreeStats {
            min,
            mean: sum as f64 / n as f64,
            max,
        }
    }
}

impl fmt::Display for DegreeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:.2}/{}", self.min, self.mean, self.max)
    }
}

/// One edge set's size, receiver in-degrees and bytes per storage format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeSetSummary {
    pub name: String,
    pub edges: usize,
    pub in_degree: DegreeStats,
    /// Index arrays per format.
    pub bytes: FormatBytes,
    /// The f32 edge features.
    pub feature_bytes: usize,
}

impl EdgeSetSummary {
    fn new(name: &str, coo: &Coo, bytes: FormatBytes, n_features: usize) -> EdgeSetSummary {
        EdgeSetSummary {
            name: name.to_string(),
            edges: coo.len(),
            in_degree: DegreeStats::of(coo.in_degrees().into_iter().map(|d| d as usize)),
            bytes,
            feature_bytes: 4 * n_features,
        }
    }

    fn of(name: &str, set: &EdgeSet) -> EdgeSetSummary {
        EdgeSetSummary::new(name, &set.coo, set.format_bytes(), set.features.len())
    }
}

/// Sizes of the patches a graph was split into.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchSummary {
    pub count: usize,
    pub halo_deg: f64,
    pub owned_grid_nodes: DegreeStats,
    pub halo_grid_nodes: DegreeStats,
    pub mesh_nodes: DegreeStats,
    pub edges: DegreeStats,
}

/// Summary of a built or loaded graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphSummary {
    pub mesh_level: u32,
    pub grid_cells: usize,
    pub grid_nodes: usize,
    pub mesh_nodes: usize,
    pub edge_sets: Vec<EdgeSetSummary>,
    /// Seconds spent building or loading, when known.
    pub seconds: Option<f64>,
    pub cache: Option<CacheOutcome>,
    pub patches: Option<PatchSummary>,
}

impl WeatherGraph {
    pub fn summary(&self) -> GraphSummary {
        GraphSummary {
            mesh_level: self.options.mesh_level,
            grid_cells: self.grid_map.n_cells(),
            grid_nodes: self.grid_nodes.len(),
            mesh_nodes: self.mesh_nodes.len(),
            edge_sets: vec![
                EdgeSetSummary::of("grid2mesh", &self.grid2mesh),
                EdgeSetSummary::of("mesh", &self.mesh),
                EdgeSetSummary::of("mesh2grid", &self.mesh2grid),
            ],
            seconds: None,
            cache: None,
            patches: None,
        }
    }
}

impl GraphSummary {
    /// Adds how the graph was obtained (from [`super::load_or_build`]).
    pub fn with_load(mut self, outcome: CacheOutcome, seconds: f64) -> GraphSummary {
        self.cache = Some(outcome);
        self.seconds = Some(seconds);
        self
    }

    /// Adds the sizes of `patches`, split with `options`.
    pub fn with_patches(mut self, patches: &[Patch], options: &PatchOptions) -> GraphSummary {
        self.patches = Some(PatchSummary {
            count: patches.len(),
            halo_deg: options.halo_deg,
            owned_grid_nodes: DegreeStats::of(patches.iter().map(Patch::n_owned)),
            halo_grid_nodes: DegreeStats::of(patches.iter().map(Patch::n_halo)),
            mesh_nodes: DegreeStats::of(patches.iter().map(|p| p.mesh_nodes.len())),
            edges: DegreeStats::of(patches.iter().map(Patch::n_edges)),
        });
        self
    }
}

impl fmt::Display for GraphSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mesh level {}: {} mesh nodes; {} grid nodes of {} cells ({} masked)",
            self.mesh_level,
            self.mesh_nodes,
            self.grid_nodes,
            self.grid_cells,
            self.grid_cells - self.grid_nodes
        )?;
        match (&self.cache, self.seconds) {
            (Some(c), Some(s)) => writeln!(f, "cache: {c}, {s:.3} s")?,
            (None, Some(s)) => writeln!(f, "built in {s:.3} s")?,
            _ => {}
        }
        writeln!(
            f,
            "{:<10} {:>10} {:>22} {:>12} {:>12} {:>12} {:>12}",
            "edge set",
            "edges",
            "in-degree min/mean/max",
            "COO bytes",
            "CSR bytes",
            "CSC bytes",
            "feat. bytes"
        )?;
        for e in &self.edge_sets {
            writeln!(
                f,
                "{:<10} {:>10} {:>22} {:>12} {:>12} {:>12} {:>12}",
                e.name,
                e.edges,
                e.in_degree.to_string(),
                e.bytes.coo,
                e.bytes.csr,
                e.bytes.csc,
                e.feature_bytes
            )?;
        }
        if let Some(p) = &self.patches {
            writeln!(
                f,
                "{} patches, halo {} deg (min/mean/max per patch):",
                p.count, p.halo_deg
            )?;
            writeln!(
                f,
                "  owned grid nodes {:>24}",
                p.owned_grid_nodes.to_string()
            )?;
            writeln!(
                f,
                "  halo grid nodes  {:>24}",
                p.halo_grid_nodes.to_string()
            )?;
            writeln!(f, "  mesh nodes       {:>24}", p.mesh_nodes.to_string())?;
            writeln!(f, "  edges            {:>24}", p.edges.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{build, GraphOptions};
    use super::*;
    use crate::data::grid::Grid;

    #[test]
    fn summary_counts_and_table() {
        let grid = Grid::global_cell_centred(10.0);
        let g = build(
            &grid,
            &vec![true; grid.len()],
            &GraphOptions {
                mesh_level: 2,
                ..GraphOptions::default()
            },
        )
        .unwrap();
        let s = g.summary().with_load(CacheOutcome::Disabled, 0.5);
        assert_eq!((s.grid_nodes, s.mesh_nodes, s.grid_cells), (648, 162, 648));
        let m2g = &s.edge_sets[2];
        assert_eq!((m2g.name.as_str(), m2g.edges), ("mesh2grid", 3 * 648));
        assert_eq!((m2g.in_degree.min, m2g.in_degree.max), (3, 3));
        assert_eq!(
            m2g.bytes,
            FormatBytes {
                coo: 8 * 1944,
                csr: 4 * (649 + 2 * 1944),
                csc: 4 * (163 + 2 * 1944)
            }
        );
        let mesh = &s.edge_sets[1];
        assert_eq!(mesh.edges, 2 * (30 + 120 + 480));
        assert!(s.edge_sets[0].in_degree.min >= 1);
        let text = s.to_string();
        assert!(
            text.contains("mesh2grid") && text.contains("3/3.00/3") && text.contains("disabled"),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["edge_sets"][1]["edges"], 1260);
    }
}
