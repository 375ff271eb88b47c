//! Building the [`WeatherGraph`] from a grid, its valid-cell mask and options.

use anyhow::Result;

use crate::bail_input;
use crate::data::grid::Grid;

use super::connect::{grid2mesh, mesh2grid};
use super::formats::Coo;
use super::icosahedron::MeshHierarchy;
use super::region::{LatLonBox, Reindex};
use super::sets::{EdgeSet, NodeSet};
use super::sphere::{chord_to_arc, lat_lon};
use super::{GraphOptions, GridNodeMap, WeatherGraph};

/// Finest mesh level accepted: level 8 already has 655,362 nodes, far finer than
/// any grid this crate trains on.
pub const MAX_MESH_LEVEL: u32 = 8;

/// Fewest valid grid nodes a graph is built for; fewer means a mask or region mistake.
pub const MIN_VALID_NODES: usize = 8;

/// Builds the graph for `grid` with cells masked out where `valid` is false.
///
/// Global grids use the whole multi-mesh; regional ones (`grid.global == false`)
/// keep the mesh nodes within `options.regional_margin` of the grid's box.
pub fn build(grid: &Grid, valid: &[bool], options: &GraphOptions) -> Result<WeatherGraph> {
    validate(grid, valid, options)?;
    let hierarchy = MeshHierarchy::new(options.mesh_level);
    let max_edge = hierarchy.finest_max_edge_chord();
    let mut mesh_pos = hierarchy.vertices.clone();
    let mut mesh_edges = hierarchy.multi_mesh_edges();
    let mut faces = hierarchy.finest_faces().to_vec();
    if !grid.global {
        let margin = options.regional_margin.unwrap_or(2.0 * chord_to_arc(max_edge));
        let bbox = LatLonBox::of_grid(grid);
        let keep: Vec<bool> = mesh_pos.iter().map(|p| bbox.distance(p) <= margin).collect();
        let reindex = Reindex::new(&keep);
        faces = reindex.faces(&faces);
        if faces.is_empty() {
            bail_input!(
                "no mesh triangle lies within {:.2} degrees of the region at mesh level {}; \
                 raise the mesh level or the regional margin",
                margin.to_degrees(),
                options.mesh_level
            );
        }
        mesh_edges = reindex.edges(&mesh_edges);
        mesh_pos = reindex.kept.iter().map(|&i| mesh_pos[i as usize]).collect();
    }
    let grid_map = GridNodeMap::from_valid(valid);
    let (grid_lat, grid_lon): (Vec<f64>, Vec<f64>) =
        grid_map.cells().iter().map(|&c| grid.node_lat_lon(c as usize)).unzip();
    let grid_nodes = NodeSet::new(grid_lat, grid_lon);
    let grid_pos = grid_nodes.positions();
    let (mesh_lat, mesh_lon): (Vec<f64>, Vec<f64>) = mesh_pos.iter().map(lat_lon).unzip();
    let mesh_nodes = NodeSet::new(mesh_lat, mesh_lon);

    let g2m = grid2mesh(&grid_pos, &mesh_pos, options.radius_factor * max_edge);
    let m2g = mesh2grid(&grid_pos, &mesh_pos, &faces);
    let (senders, receivers) = mesh_edges.into_iter().unzip();
    let mm = Coo { n_senders: mesh_pos.len(), n_receivers: mesh_pos.len(), senders, receivers };
    tracing::debug!(
        grid_nodes = grid_pos.len(),
        mesh_nodes = mesh_pos.len(),
        grid2mesh = g2m.len(),
        mesh = mm.len(),
        mesh2grid = m2g.len(),
        "built graph"
    );
    Ok(WeatherGraph {
        options: options.clone(),
        grid2mesh: EdgeSet::with_geometry(g2m, &grid_pos, &mesh_pos),
        mesh: EdgeSet::with_geometry(mm, &mesh_pos, &mesh_pos),
        mesh2grid: EdgeSet::with_geometry(m2g, &mesh_pos, &grid_pos),
        grid_nodes,
        mesh_nodes,
        grid_map,
    })
}

fn validate(grid: &Grid, valid: &[bool], options: &GraphOptions) -> Result<()> {
    if grid.is_empty() {
        bail_input!("the grid has no nodes");
    }
    if grid.lat.iter().chain(&grid.lon).any(|x| !x.is_finite()) {
        bail_input!("grid coordinates are not all finite");
    }
    if valid.len() != grid.len() {
        bail_input!("valid-cell mask has {} entries but the grid has {} cells", valid.len(), grid.len());
    }
    if options.mesh_level > MAX_MESH_LEVEL {
        bail_input!("mesh level {} is above the maximum of {MAX_MESH_LEVEL}", options.mesh_level);
    }
    if !(options.radius_factor.is_finite() && options.radius_factor > 0.0) {
        bail_input!("grid2mesh radius factor must be a positive number, got {}", options.radius_factor);
    }
    if let Some(m) = options.regional_margin {
        if !(m.is_finite() && m >= 0.0) {
            bail_input!("regional margin must be a non-negative number of radians, got {m}");
        }
    }
    let n_valid = valid.iter().filter(|&&v| v).count();
    if n_valid < MIN_VALID_NODES {
        bail_input!(
            "only {n_valid} of {} grid cells are valid (need at least {MIN_VALID_NODES}); \
             check the mask variable or the region",
            grid.len()
        );
    }
    Ok(())
}
