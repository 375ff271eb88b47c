//! Graph flags shared by every subcommand that builds the mesh graph.

use std::path::PathBuf;

use clap::Args;

use crate::data::Grid;
use crate::graph::{default_cache_dir, default_mesh_level, GraphOptions};

#[derive(Debug, Clone, Args)]
pub struct GraphArgs {
    /// Icosahedral mesh refinement level (0..8; level 6 has 40,962 nodes).
    /// Default: the level whose edges match the grid spacing (5 deg: 4, 2.5 deg: 5, 1 deg: 6).
    #[arg(long)]
    pub mesh_level: Option<u32>,
    /// grid->mesh radius as a fraction of the longest finest-mesh edge (GraphCast: 0.6).
    #[arg(long, default_value_t = 0.6)]
    pub radius_factor: f64,
    /// Directory of the graph cache (default: the user's cache dir, meshcast/graphs).
    #[arg(long, value_name = "DIR")]
    pub graph_cache: Option<PathBuf>,
    /// Build the graph every time; neither read nor write the cache.
    #[arg(long, conflicts_with = "graph_cache")]
    pub no_graph_cache: bool,
}

impl GraphArgs {
    pub fn options(&self, grid: &Grid) -> GraphOptions {
        GraphOptions {
            mesh_level: self.mesh_level.unwrap_or_else(|| default_mesh_level(grid)),
            radius_factor: self.radius_factor,
            ..Default::default()
        }
    }

    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_graph_cache {
            None
        } else {
            self.graph_cache.clone().or_else(default_cache_dir)
        }
    }
}
