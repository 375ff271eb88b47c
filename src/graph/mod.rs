//! The mesh graph a GraphCast-style model passes messages over.
//!
//! As in DeepMind's graphcast, the graph is typed: two node sets (the grid the
//! data lives on and an icosahedral multi-mesh, [`icosahedron`]) and three edge
//! sets: `grid2mesh` (encoder), `mesh` (processor) and `mesh2grid` (decoder). It
//! depends only on the grid, its valid-cell mask and [`GraphOptions`], is built
//! once ([`build`]), cached on disk ([`cache`]) and shared by every sample;
//! [`patches`] cuts it into self-contained spatial pieces for training on patches.
//!
//! Grid cells that are masked in every sample (e.g. fill-value corners) are not
//! nodes of the graph at all; [`GridNodeMap`] translates between grid cell indices
//! (`i_lat * nlon + i_lon`) and graph grid-node indices.

mod build;
pub mod cache;
mod connect;
pub mod formats;
mod grouping;
pub mod icosahedron;
pub mod patches;
mod region;
mod sets;
pub mod sphere;
mod summary;

use serde::{Deserialize, Serialize};

pub use build::{build, MAX_MESH_LEVEL, MIN_VALID_NODES};
pub use cache::{clear as clear_cache, default_cache_dir, load_or_build, CacheOutcome};
pub use formats::{Coo, Csc, Csr, FormatBytes};
pub use grouping::CsrIndex;
pub use patches::{split_into_patches, Patch, PatchOptions, RowWindow};
pub use sets::{EdgeSet, NodeSet, EDGE_FEATURES, NODE_FEATURES};
pub use summary::{DegreeStats, EdgeSetSummary, GraphSummary, PatchSummary};

/// Everything that shapes the graph besides the grid and its mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphOptions {
    /// Refinement level of the finest icosahedral mesh (6 gives 40,962 nodes, GraphCast's 1-degree choice).
    pub mesh_level: u32,
    /// Regional grids only: how far beyond the grid's lat/lon box mesh nodes are
    /// kept, in radians of great-circle distance; `None` means twice the longest
    /// finest-mesh edge.
    pub regional_margin: Option<f64>,
    /// grid2mesh radius as a fraction of the longest finest-mesh edge (chord).
    pub radius_factor: f64,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            mesh_level: 6,
            regional_margin: None,
            radius_factor: 0.6,
        }
    }
}

/// Translates between grid cells and graph grid nodes (the valid cells, in cell order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridNodeMap {
    cell_of_node: Vec<u32>,
    node_of_cell: Vec<u32>,
}

impl GridNodeMap {
    const MASKED: u32 = u32::MAX;

    /// Valid cells become nodes `0..`, in cell order.
    pub fn from_valid(valid: &[bool]) -> GridNodeMap {
        let cells = valid
            .iter()
            .enumerate()
            .filter(|(_, &v)| v)
            .map(|(c, _)| c as u32)
            .collect();
        GridNodeMap::from_cells(cells, valid.len())
    }

    /// From the ascending cell index of every node.
    pub(crate) fn from_cells(cell_of_node: Vec<u32>, n_cells: usize) -> GridNodeMap {
        let mut node_of_cell = vec![Self::MASKED; n_cells];
        for (n, &c) in cell_of_node.iter().enumerate() {
            node_of_cell[c as usize] = n as u32;
        }
        GridNodeMap {
            cell_of_node,
            node_of_cell,
        }
    }

    /// Graph node of grid cell `cell`, or `None` where the cell is masked.
    pub fn node_of_cell(&self, cell: usize) -> Option<usize> {
        Some(self.node_of_cell[cell])
            .filter(|&n| n != Self::MASKED)
            .map(|n| n as usize)
    }

    /// Grid cell of graph node `node`.
    pub fn cell_of_node(&self, node: usize) -> usize {
        self.cell_of_node[node] as usize
    }

    /// Latitude weights of the graph nodes on `grid` (cos lat, mean 1 over the nodes).
    pub fn latitude_weights(&self, grid: &crate::data::Grid) -> Vec<f32> {
        let valid: Vec<bool> = self
            .node_of_cell
            .iter()
            .map(|&n| n != Self::MASKED)
            .collect();
        let w = grid.latitude_weights(&valid);
        self.cell_of_node.iter().map(|&c| w[c as usize]).collect()
    }

    /// The grid cell of every graph node, ascending.
    pub fn cells(&self) -> &[u32] {
        &self.cell_of_node
    }

    pub fn n_cells(&self) -> usize {
        self.node_of_cell.len()
    }

    pub fn n_nodes(&self) -> usize {
        self.cell_of_node.len()
    }
}

/// The typed graph: grid and mesh node sets, the three edge sets, and the map
/// between grid cells and grid nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct WeatherGraph {
    /// The options it was built with.
    pub options: GraphOptions,
    pub grid_nodes: NodeSet,
    pub mesh_nodes: NodeSet,
    /// Encoder: grid node -> mesh node.
    pub grid2mesh: EdgeSet,
    /// Processor: mesh node -> mesh node (the multi-mesh).
    pub mesh: EdgeSet,
    /// Decoder: mesh node -> grid node.
    pub mesh2grid: EdgeSet,
    pub grid_map: GridNodeMap,
}

/// The mesh level whose finest edges are about as long as the grid spacing (the
/// coarser of the two axes): 5 deg -> 4, 2.5 deg -> 5, 1 deg -> 6, capped at 8.
pub fn default_mesh_level(grid: &crate::data::Grid) -> u32 {
    const LEVEL0_EDGE_DEG: f64 = 63.43;
    let spacing = grid.lat_spacing().max(grid.lon_spacing());
    let mut level = 0;
    while level < MAX_MESH_LEVEL && LEVEL0_EDGE_DEG / f64::from(1u32 << level) > spacing {
        level += 1;
    }
    level
}
