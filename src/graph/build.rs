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
        let margin = options
            .regional_margin
            .unwrap_or(2.0 * chord_to_arc(max_edge));
        let bbox = LatLonBox::of_grid(grid);
        let keep: Vec<bool> = mesh_pos
            .iter()
            .map(|p| bbox.distance(p) <= margin)
            .collect();
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
    let (grid_lat, grid_lon): (Vec<f64>, Vec<f64>) = grid_map
        .cells()
        .iter()
        .map(|&c| grid.node_lat_lon(c as usize))
        .unzip();
    let grid_nodes = NodeSet::new(grid_lat, grid_lon);
    let grid_pos = grid_nodes.positions();
    let (mesh_lat, mesh_lon): (Vec<f64>, Vec<f64>) = mesh_pos.iter().map(lat_lon).unzip();
    let mesh_nodes = NodeSet::new(mesh_lat, mesh_lon);

    let g2m = grid2mesh(&grid_pos, &mesh_pos, options.radius_factor * max_edge);
    let m2g = mesh2grid(&grid_pos, &mesh_pos, &faces);
    let (senders, receivers) = mesh_edges.into_iter().unzip();
    let mm = Coo {
        n_senders: mesh_pos.len(),
        n_receivers: mesh_pos.len(),
        senders,
        receivers,
    };
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
        bail_input!(
            "valid-cell mask has {} entries but the grid has {} cells",
            valid.len(),
            grid.len()
        );
    }
    if options.mesh_level > MAX_MESH_LEVEL {
        bail_input!(
            "mesh level {} is above the maximum of {MAX_MESH_LEVEL}",
            options.mesh_level
        );
    }
    if !(options.radius_factor.is_finite() && options.radius_factor > 0.0) {
        bail_input!(
            "grid2mesh radius factor must be a positive number, got {}",
            options.radius_factor
        );
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

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::super::sphere::{chord, inside_margin};
    use super::super::GridNodeMap;
    use super::*;
    use crate::error::is_input_error;

    /// A regional box the size of storm1996's grid (33 latitudes 20..60 by 1.25, 36
    /// longitudes -140..-52.5 by 2.5) with a small triangle (6 cells) cut from each
    /// corner; the named `storm1996` grid of benchmarks (`data::named_grids`) masks
    /// the corners as the real files do.
    pub(crate) fn regional_box() -> (Grid, Vec<bool>) {
        let grid = Grid {
            lat: (0..33).map(|i| 20.0 + 1.25 * i as f64).collect(),
            lon: (0..36).map(|j| -140.0 + 2.5 * j as f64).collect(),
            global: false,
        };
        let (nlat, nlon) = (grid.nlat(), grid.nlon());
        let valid = (0..grid.len())
            .map(|c| {
                let (i, j) = (c / nlon, c % nlon);
                let (i2, j2) = (nlat - 1 - i, nlon - 1 - j);
                [i + j, i + j2, i2 + j, i2 + j2].iter().all(|&d| d >= 3)
            })
            .collect();
        (grid, valid)
    }

    fn options(level: u32) -> GraphOptions {
        GraphOptions {
            mesh_level: level,
            ..GraphOptions::default()
        }
    }

    /// Structural checks every graph must pass.
    pub(crate) fn check_invariants(g: &WeatherGraph) {
        let (ng, nm) = (g.grid_nodes.len(), g.mesh_nodes.len());
        let grid_pos = g.grid_nodes.positions();
        let mesh_pos = g.mesh_nodes.positions();
        // Decoder: exactly three distinct senders per grid node, forming a triangle that contains it.
        assert_eq!(g.mesh2grid.by_receiver.n_receivers(), ng);
        assert_eq!(g.mesh2grid.len(), 3 * ng);
        let csr = &g.mesh2grid.by_receiver;
        for (r, p) in grid_pos.iter().enumerate() {
            let k = csr.offsets[r] as usize;
            assert_eq!(csr.offsets[r + 1] as usize - k, 3, "grid node {r}");
            let [i, j, l] = [0, 1, 2].map(|i| csr.senders[k + i]);
            assert!(i != j && j != l && l != i, "grid node {r}: repeated sender");
            let [a, b, c] = [i, j, l].map(|m| mesh_pos[m as usize]);
            assert!(
                inside_margin(p, &a, &b, &c) > -1e-6,
                "grid node {r} not in its triangle"
            );
        }
        // Encoder: every mesh node receives, senders are grid nodes.
        assert!(
            g.grid2mesh.coo.in_degrees().iter().all(|&d| d >= 1),
            "mesh node without grid2mesh edge"
        );
        assert!(g.grid2mesh.senders().iter().all(|&s| (s as usize) < ng));
        // Processor: every edge present in both directions, no duplicates or loops.
        let set: HashSet<(u32, u32)> = g
            .mesh
            .senders()
            .iter()
            .copied()
            .zip(g.mesh.receivers().iter().copied())
            .collect();
        assert_eq!(set.len(), g.mesh.len());
        assert!(set
            .iter()
            .all(|&(s, r)| s != r && set.contains(&(r, s)) && (s as usize) < nm));
        // Features: four per edge, normalised.
        for e in [&g.grid2mesh, &g.mesh, &g.mesh2grid] {
            assert_eq!(e.features.len(), 4 * e.len());
            assert!(e
                .features
                .iter()
                .all(|x| x.is_finite() && x.abs() <= 1.0 + 1e-6));
            assert_eq!(e.by_receiver, e.coo.to_csr());
        }
        assert_eq!(g.grid_nodes.features.len(), 4 * ng);
        assert_eq!(g.mesh_nodes.features.len(), 4 * nm);
    }

    #[test]
    fn global_graph_level_4() {
        let grid = Grid::global_cell_centred(5.0);
        let valid = vec![true; grid.len()];
        let g = build(&grid, &valid, &options(4)).unwrap();
        check_invariants(&g);
        assert_eq!(g.grid_nodes.len(), 36 * 72);
        assert_eq!(g.mesh_nodes.len(), 10 * 4usize.pow(4) + 2);
        let per_level: usize = (0..=4).map(|l| 30 * 4usize.pow(l)).sum();
        assert_eq!(g.mesh.len(), 2 * per_level);

        // Encoder edges are within the radius, except a lone nearest-node edge.
        let h = MeshHierarchy::new(4);
        let radius = 0.6 * h.finest_max_edge_chord();
        let (gp, mp) = (g.grid_nodes.positions(), g.mesh_nodes.positions());
        let deg = g.grid2mesh.coo.in_degrees();
        for (&s, &r) in g.grid2mesh.senders().iter().zip(g.grid2mesh.receivers()) {
            let d = chord(&gp[s as usize], &mp[r as usize]);
            assert!(d <= radius + 1e-12 || deg[r as usize] == 1);
        }
    }

    #[test]
    fn masked_cells_are_not_nodes() {
        let grid = Grid::global_cell_centred(10.0);
        let valid: Vec<bool> = (0..grid.len()).map(|c| c % 7 != 3).collect();
        let g = build(&grid, &valid, &options(3)).unwrap();
        check_invariants(&g);
        let n_valid = valid.iter().filter(|&&v| v).count();
        assert_eq!(g.grid_nodes.len(), n_valid);
        for (cell, &is_valid) in valid.iter().enumerate() {
            match g.grid_map.node_of_cell(cell) {
                Some(n) => {
                    assert!(is_valid);
                    assert_eq!(g.grid_map.cell_of_node(n), cell);
                    assert_eq!(
                        (g.grid_nodes.lat[n], g.grid_nodes.lon[n]),
                        grid.node_lat_lon(cell)
                    );
                }
                None => assert!(!is_valid),
            }
        }
        assert_eq!(g.grid_map, GridNodeMap::from_valid(&valid));
    }

    #[test]
    fn regional_grid_with_cut_corners() {
        let (grid, valid) = regional_box();
        for level in [4, 5] {
            let g = build(&grid, &valid, &options(level)).unwrap();
            check_invariants(&g);
            assert_eq!(g.grid_nodes.len(), 33 * 36 - 24);
            let full = 10 * 4usize.pow(level) + 2;
            assert!(
                g.mesh_nodes.len() < full / 5,
                "regional mesh is cropped: {}",
                g.mesh_nodes.len()
            );
            // Kept mesh nodes lie within the default margin of the box, and nodes
            // over the box are all kept.
            let h = MeshHierarchy::new(level);
            let margin = 2.0 * chord_to_arc(h.finest_max_edge_chord());
            let bbox = LatLonBox::of_grid(&grid);
            assert!(g
                .mesh_nodes
                .positions()
                .iter()
                .all(|p| bbox.distance(p) <= margin + 1e-9));
            let inside = h
                .vertices
                .iter()
                .filter(|p| bbox.distance(p) == 0.0)
                .count();
            assert!(inside > 0 && g.mesh_nodes.len() > inside);
            // Masked corner cells have no node.
            for corner in [0, grid.nlon() - 1, grid.len() - grid.nlon(), grid.len() - 1] {
                assert_eq!(g.grid_map.node_of_cell(corner), None);
            }
        }
    }

    #[test]
    fn regional_margin_zero_still_decodes_every_grid_node() {
        let (grid, valid) = regional_box();
        let opts = GraphOptions {
            mesh_level: 3,
            regional_margin: Some(0.0),
            radius_factor: 0.6,
        };
        let g = build(&grid, &valid, &opts).unwrap();
        assert_eq!(g.mesh2grid.len(), 3 * g.grid_nodes.len());
        assert!(g.grid2mesh.coo.in_degrees().iter().all(|&d| d >= 1));
        let wider = build(
            &grid,
            &valid,
            &GraphOptions {
                regional_margin: Some(0.3),
                ..opts
            },
        )
        .unwrap();
        assert!(wider.mesh_nodes.len() > g.mesh_nodes.len());
    }

    #[test]
    fn grid_with_poles_builds() {
        let grid = Grid::global_with_poles(5.0);
        let g = build(&grid, &vec![true; grid.len()], &options(3)).unwrap();
        check_invariants(&g);
    }

    #[test]
    fn rejects_bad_input() {
        let grid = Grid::global_cell_centred(10.0);
        let valid = vec![true; grid.len()];
        let err = build(&grid, &valid, &options(9)).unwrap_err();
        assert!(
            is_input_error(&err) && err.to_string().contains("mesh level 9"),
            "{err}"
        );
        let err = build(&grid, &valid[1..], &options(2)).unwrap_err();
        assert!(
            is_input_error(&err) && err.to_string().contains("mask"),
            "{err}"
        );
        let mut few = vec![false; grid.len()];
        few[..5].iter_mut().for_each(|v| *v = true);
        let err = build(&grid, &few, &options(2)).unwrap_err();
        assert!(
            is_input_error(&err) && err.to_string().contains("only 5 of 648"),
            "{err}"
        );
        let bad = GraphOptions {
            radius_factor: 0.0,
            ..options(2)
        };
        assert!(is_input_error(&build(&grid, &valid, &bad).unwrap_err()));
        let bad = GraphOptions {
            regional_margin: Some(-1.0),
            ..options(2)
        };
        assert!(is_input_error(&build(&grid, &valid, &bad).unwrap_err()));
    }
}
