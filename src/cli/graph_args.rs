//! Graph flags shared by every subcommand that builds the mesh graph.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use crate::data::Grid;
use crate::graph::{default_cache_dir, default_mesh_level, GraphOptions};

#[derive(Debug, Clone, Args)]
pub struct GraphArgs {
    /// Icosahedral mesh refinement level (0..8; level 6 has 40,962 nodes).
    /// Default: the level whose edges match the grid spacing (5 deg: 4, 2.5 deg: 5, 1 deg: 6).
    #[arg(long)]
    pub mesh_level: Option<u32>,
    /// grid->mesh radius as a fraction of the longest finest-mesh edge [default: 0.6, as GraphCast].
    #[arg(long)]
    pub radius_factor: Option<f64>,
    /// Directory of the graph cache (default: the user's cache dir, meshcast/graphs).
    #[arg(long, value_name = "DIR")]
    pub graph_cache: Option<PathBuf>,
    /// Build the graph every time; neither read nor write the cache.
    #[arg(long, conflicts_with = "graph_cache")]
    pub no_graph_cache: bool,
}

/// A config's `[graph]` table: any field may be left out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphTable {
    pub mesh_level: Option<u32>,
    pub radius_factor: Option<f64>,
    /// Radians of great-circle distance kept around a regional grid.
    pub regional_margin: Option<f64>,
}

impl GraphArgs {
    /// Flags over the config's table over the defaults (mesh level from the grid spacing).
    pub fn options_over(&self, table: GraphTable, grid: &Grid) -> GraphOptions {
        GraphOptions {
            mesh_level: self
                .mesh_level
                .or(table.mesh_level)
                .unwrap_or_else(|| default_mesh_level(grid)),
            radius_factor: self
                .radius_factor
                .or(table.radius_factor)
                .unwrap_or(GraphOptions::default().radius_factor),
            regional_margin: table.regional_margin,
        }
    }

    pub fn options(&self, grid: &Grid) -> GraphOptions {
        self.options_over(GraphTable::default(), grid)
    }

    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_graph_cache {
            None
        } else {
            self.graph_cache.clone().or_else(default_cache_dir)
        }
    }
}
