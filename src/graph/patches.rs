//! Spatial patches: self-contained pieces of the graph for training or running
//! on one part of the grid at a time (memory-bound resolutions, data parallelism).
//!
//! The grid is split into latitude bands (global grids, and regional grids taller
//! than wide) or tiles (wide regional grids with few latitude rows), each *owning*
//! its cells. A patch also carries a *halo*: every valid grid node within
//! `halo_deg` of great-circle distance of an owned node, giving messages context
//! from beyond the patch's edge. Its subgraphs are cut out of the full graph with
//! local indices: mesh nodes within the halo distance of the owned nodes (plus the
//! decoder triangle vertices of every owned node, so owned nodes always decode from
//! a full triangle), and every edge whose two ends are in the patch. Edge features
//! are the full graph's, so a model trained on patches runs unchanged on the whole.
//! Losses and outputs use owned nodes only (`owned` mask); halo nodes are context.

use std::ops::Range;

use anyhow::Result;
use kiddo::{ImmutableKdTree, SquaredEuclidean};

use crate::bail_input;
use crate::data::grid::Grid;

use super::formats::Coo;
use super::region::Reindex;
use super::sets::{EdgeSet, EDGE_FEATURES};
use super::sphere::{arc_to_chord, Vec3};
use super::WeatherGraph;

/// The halo every subcommand uses unless told otherwise (degrees of great-circle
/// distance): context for the boundary nodes at a fraction of the receptive field.
pub const DEFAULT_PATCH_HALO_DEG: f64 = 10.0;

/// How to split the grid.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchOptions {
    pub n_patches: usize,
    /// Halo width, degrees of great-circle distance.
    pub halo_deg: f64,
}

/// One spatial patch with its own local-index subgraphs.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// Latitude rows of the grid this patch owns.
    pub rows: Range<usize>,
    /// Longitude columns of the grid this patch owns.
    pub cols: Range<usize>,
    /// Full-graph grid-node ids of the patch's grid nodes (owned and halo), ascending;
    /// local grid node `k` is `grid_nodes[k]`.
    pub grid_nodes: Vec<u32>,
    /// Whether local grid node `k` is owned (false: halo).
    pub owned: Vec<bool>,
    /// Full-graph mesh-node ids of the patch's mesh nodes, ascending.
    pub mesh_nodes: Vec<u32>,
    pub grid2mesh: EdgeSet,
    pub mesh: EdgeSet,
    pub mesh2grid: EdgeSet,
}

impl Patch {
    pub fn n_owned(&self) -> usize {
        self.owned.iter().filter(|&&o| o).count()
    }

    pub fn n_halo(&self) -> usize {
        self.owned.len() - self.n_owned()
    }

    pub fn n_edges(&self) -> usize {
        self.grid2mesh.len() + self.mesh.len() + self.mesh2grid.len()
    }

    /// The patch as a graph of its own (local indices), so a model runs on it unchanged.
    /// Its grid map translates the full grid's cells to the patch's grid nodes.
    pub fn subgraph(&self, full: &WeatherGraph) -> WeatherGraph {
        let pick = |set: &super::NodeSet, ids: &[u32]| {
            super::NodeSet::new(
                ids.iter().map(|&i| set.lat[i as usize]).collect(),
                ids.iter().map(|&i| set.lon[i as usize]).collect(),
            )
        };
        let cells = self
            .grid_nodes
            .iter()
            .map(|&n| full.grid_map.cell_of_node(n as usize) as u32)
            .collect();
        WeatherGraph {
            options: full.options.clone(),
            grid_nodes: pick(&full.grid_nodes, &self.grid_nodes),
            mesh_nodes: pick(&full.mesh_nodes, &self.mesh_nodes),
            grid2mesh: self.grid2mesh.clone(),
            mesh: self.mesh.clone(),
            mesh2grid: self.mesh2grid.clone(),
            grid_map: super::GridNodeMap::from_cells(cells, full.grid_map.n_cells()),
        }
    }
}

/// The latitude rows some patches need (their owned and halo grid nodes, from the
/// first node's row to the last's) and the graph's grid nodes on those rows: one range,
/// as grid nodes ascend by cell. What a patch-parallel rank reads and holds of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWindow {
    pub rows: Range<usize>,
    pub nodes: Range<usize>,
}

impl RowWindow {
    /// Every row of `grid` and every grid node of `graph`.
    pub fn all(graph: &WeatherGraph, grid: &Grid) -> RowWindow {
        RowWindow {
            rows: 0..grid.nlat(),
            nodes: 0..graph.grid_map.n_nodes(),
        }
    }

    /// The rows that `patches` (of `graph` over `grid`) need.
    pub fn covering(patches: &[Patch], graph: &WeatherGraph, grid: &Grid) -> RowWindow {
        let cells = graph.grid_map.cells();
        let first = patches.iter().filter_map(|p| p.grid_nodes.first()).min();
        let last = patches.iter().filter_map(|p| p.grid_nodes.last()).max();
        let (Some(&first), Some(&last)) = (first, last) else {
            return RowWindow {
                rows: 0..0,
                nodes: 0..0,
            };
        };
        let nlon = grid.nlon();
        let rows = cells[first as usize] as usize / nlon..cells[last as usize] as usize / nlon + 1;
        let node_at = |row: usize| cells.partition_point(|&c| (c as usize) < row * nlon);
        RowWindow {
            nodes: node_at(rows.start)..node_at(rows.end),
            rows,
        }
    }

    /// The window's first cell on the grid (the band's cells are numbered from it).
    pub fn first_cell(&self, grid: &Grid) -> usize {
        self.rows.start * grid.nlon()
    }
}

/// Splits `graph` (built for `grid`) into `options.n_patches` patches.
pub fn split_into_patches(
    graph: &WeatherGraph,
    grid: &Grid,
    options: &PatchOptions,
) -> Result<Vec<Patch>> {
    let n = options.n_patches;
    if n == 0 {
        bail_input!("the number of patches must be at least 1");
    }
    if n > grid.nlat() {
        bail_input!(
            "{n} patches requested but the grid has only {} latitude rows",
            grid.nlat()
        );
    }
    if !(options.halo_deg.is_finite() && options.halo_deg >= 0.0) {
        bail_input!(
            "patch halo must be a non-negative number of degrees, got {}",
            options.halo_deg
        );
    }
    if graph.grid_map.n_cells() != grid.len() {
        bail_input!(
            "the graph was built for {} grid cells, not {}",
            graph.grid_map.n_cells(),
            grid.len()
        );
    }
    let (n_rows, n_cols) = layout(grid, n);
    let grid_pos = graph.grid_nodes.positions();
    let mesh_pos = graph.mesh_nodes.positions();
    let nlon = grid.nlon();
    let mut patches = Vec::with_capacity(n);
    for rows in split(grid.nlat(), n_rows) {
        for cols in split(nlon, n_cols) {
            let owned: Vec<bool> = graph
                .grid_map
                .cells()
                .iter()
                .map(|&c| {
                    rows.contains(&(c as usize / nlon)) && cols.contains(&(c as usize % nlon))
                })
                .collect();
            patches.push(cut(
                graph,
                &grid_pos,
                &mesh_pos,
                rows.clone(),
                cols,
                owned,
                options.halo_deg,
            ));
        }
    }
    Ok(patches)
}

/// Rows x columns of tiles: bands for global grids (longitude wraps, so bands have
/// no east/west edges); otherwise the factorisation of `n` whose tiles are closest
/// to square in grid cells, preferring bands on ties.
fn layout(grid: &Grid, n: usize) -> (usize, usize) {
    if grid.global {
        return (n, 1);
    }
    let badness = |r: usize| {
        ((grid.nlat() as f64 / r as f64) / (grid.nlon() as f64 * r as f64 / n as f64))
            .ln()
            .abs()
    };
    (1..=n)
        .rev()
        .filter(|r| n.is_multiple_of(*r) && *r <= grid.nlat() && n / r <= grid.nlon())
        .min_by(|&a, &b| badness(a).total_cmp(&badness(b)))
        .map(|r| (r, n / r))
        .unwrap_or((n, 1))
}

/// `0..len` in `parts` contiguous ranges whose lengths differ by at most one.
fn split(len: usize, parts: usize) -> Vec<Range<usize>> {
    (0..parts)
        .map(|i| i * len / parts..(i + 1) * len / parts)
        .collect()
}

fn cut(
    graph: &WeatherGraph,
    grid_pos: &[Vec3],
    mesh_pos: &[Vec3],
    rows: Range<usize>,
    cols: Range<usize>,
    owned: Vec<bool>,
    halo_deg: f64,
) -> Patch {
    let owned_pos: Vec<Vec3> = grid_pos
        .iter()
        .zip(&owned)
        .filter(|(_, &o)| o)
        .map(|(p, _)| *p)
        .collect();
    let lats = &graph.grid_nodes.lat;
    let (lat_lo, lat_hi) = owned
        .iter()
        .zip(lats)
        .filter(|(&o, _)| o)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, &la)| {
            (lo.min(la), hi.max(la))
        });
    // Great-circle distance is at least the latitude difference: a cheap pre-filter.
    let near = |lat: f64| lat >= lat_lo - halo_deg - 1e-9 && lat <= lat_hi + halo_deg + 1e-9;
    let h2 = arc_to_chord(halo_deg.to_radians()).powi(2) * (1.0 + 1e-12) + 1e-24;
    let tree =
        (!owned_pos.is_empty()).then(|| ImmutableKdTree::<f64, 3>::new_from_slice(&owned_pos));
    let within = |p: &Vec3, lat: f64| {
        tree.as_ref()
            .is_some_and(|t| near(lat) && t.nearest_one::<SquaredEuclidean>(p).distance <= h2)
    };

    let in_grid: Vec<bool> = (0..grid_pos.len())
        .map(|g| owned[g] || within(&grid_pos[g], lats[g]))
        .collect();
    let mut in_mesh: Vec<bool> = (0..mesh_pos.len())
        .map(|m| within(&mesh_pos[m], graph.mesh_nodes.lat[m]))
        .collect();
    let csr = &graph.mesh2grid.by_receiver;
    for g in (0..grid_pos.len()).filter(|&g| owned[g]) {
        for k in csr.offsets[g] as usize..csr.offsets[g + 1] as usize {
            in_mesh[csr.senders[k] as usize] = true;
        }
    }
    let grid_ids = Reindex::new(&in_grid);
    let mesh_ids = Reindex::new(&in_mesh);
    Patch {
        rows,
        cols,
        owned: grid_ids.kept.iter().map(|&g| owned[g as usize]).collect(),
        grid2mesh: sub_edges(&graph.grid2mesh, &grid_ids, &mesh_ids),
        mesh: sub_edges(&graph.mesh, &mesh_ids, &mesh_ids),
        mesh2grid: sub_edges(&graph.mesh2grid, &mesh_ids, &grid_ids),
        grid_nodes: grid_ids.kept,
        mesh_nodes: mesh_ids.kept,
    }
}

/// The edges of `set` with both ends kept, renumbered, features carried along.
fn sub_edges(set: &EdgeSet, senders: &Reindex, receivers: &Reindex) -> EdgeSet {
    let mut coo = Coo {
        n_senders: senders.kept.len(),
        n_receivers: receivers.kept.len(),
        senders: vec![],
        receivers: vec![],
    };
    let mut features = Vec::new();
    for (e, (&s, &r)) in set.senders().iter().zip(set.receivers()).enumerate() {
        if let (Some(s), Some(r)) = (senders.get(s), receivers.get(r)) {
            coo.senders.push(s);
            coo.receivers.push(r);
            features.extend_from_slice(&set.features[e * EDGE_FEATURES..(e + 1) * EDGE_FEATURES]);
        }
    }
    EdgeSet::new(coo, features)
}

#[cfg(test)]
mod tests {
    use super::super::build::tests::regional_box;
    use super::super::sphere::chord;
    use super::super::{build, GraphOptions};
    use super::*;
    use crate::error::is_input_error;

    fn check_patches(graph: &WeatherGraph, patches: &[Patch], halo_deg: f64) {
        let ng = graph.grid_nodes.len();
        let pos = graph.grid_nodes.positions();
        let halo = arc_to_chord(halo_deg.to_radians());
        // Every valid grid node is owned by exactly one patch.
        let mut owners = vec![0usize; ng];
        for p in patches {
            for (k, &g) in p.grid_nodes.iter().enumerate() {
                owners[g as usize] += p.owned[k] as usize;
            }
        }
        assert!(owners.iter().all(|&o| o == 1), "ownership is a partition");
        for p in patches {
            assert!(p.grid_nodes.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(p.owned.len(), p.grid_nodes.len());
            let owned: Vec<usize> = p
                .grid_nodes
                .iter()
                .zip(&p.owned)
                .filter(|(_, &o)| o)
                .map(|(&g, _)| g as usize)
                .collect();
            let members: std::collections::HashSet<u32> = p.grid_nodes.iter().copied().collect();
            // The halo holds every valid node within the halo distance of an owned node, and nothing else.
            for g in 0..ng {
                let near = owned
                    .iter()
                    .any(|&o| chord(&pos[g], &pos[o]) <= halo * (1.0 + 1e-9));
                assert_eq!(members.contains(&(g as u32)), near, "grid node {g}");
            }
            // Subgraphs use local indices; owned nodes decode from a full triangle.
            let (nl, ml) = (p.grid_nodes.len(), p.mesh_nodes.len());
            assert!(p.grid2mesh.senders().iter().all(|&s| (s as usize) < nl));
            assert!(p.grid2mesh.receivers().iter().all(|&r| (r as usize) < ml));
            assert!(p
                .mesh
                .senders()
                .iter()
                .chain(p.mesh.receivers())
                .all(|&m| (m as usize) < ml));
            let deg = p.mesh2grid.coo.in_degrees();
            assert_eq!(deg.len(), nl);
            assert!(deg.iter().zip(&p.owned).all(|(&d, &o)| !o || d == 3));
            // Local edges carry the full graph's features.
            let e = 0;
            let (s, r) = (p.mesh.senders()[e] as usize, p.mesh.receivers()[e] as usize);
            let (gs, gr) = (p.mesh_nodes[s], p.mesh_nodes[r]);
            let full = (0..graph.mesh.len())
                .find(|&k| graph.mesh.senders()[k] == gs && graph.mesh.receivers()[k] == gr)
                .unwrap();
            assert_eq!(
                p.mesh.features[..4],
                graph.mesh.features[4 * full..4 * full + 4]
            );
        }
    }

    /// Each patch's window holds its rows and grid nodes, and exactly the grid nodes on
    /// its rows; all patches' window is the whole grid's.
    fn check_windows(graph: &WeatherGraph, grid: &Grid, patches: &[Patch]) {
        assert_eq!(
            RowWindow::covering(patches, graph, grid),
            RowWindow::all(graph, grid)
        );
        let cells = graph.grid_map.cells();
        for p in patches {
            let w = RowWindow::covering(std::slice::from_ref(p), graph, grid);
            assert!(w.rows.start <= p.rows.start && p.rows.end <= w.rows.end);
            assert!(p
                .grid_nodes
                .iter()
                .all(|&g| w.nodes.contains(&(g as usize))));
            let on_rows = |n: usize| w.rows.contains(&(cells[n] as usize / grid.nlon()));
            assert!((0..cells.len()).all(|n| on_rows(n) == w.nodes.contains(&n)));
        }
    }

    #[test]
    fn global_bands_partition_and_halo() {
        let grid = Grid::global_cell_centred(5.0);
        let valid: Vec<bool> = (0..grid.len()).map(|c| c % 13 != 0).collect();
        let graph = build(
            &grid,
            &valid,
            &GraphOptions {
                mesh_level: 3,
                ..GraphOptions::default()
            },
        )
        .unwrap();
        let opts = PatchOptions {
            n_patches: 5,
            halo_deg: 8.0,
        };
        let patches = split_into_patches(&graph, &grid, &opts).unwrap();
        assert_eq!(patches.len(), 5);
        assert!(patches.iter().all(|p| p.cols == (0..72)));
        assert_eq!(patches.iter().map(|p| p.rows.len()).sum::<usize>(), 36);
        check_patches(&graph, &patches, opts.halo_deg);
        check_windows(&graph, &grid, &patches);
        let summary = graph.summary().with_patches(&patches, &opts);
        assert_eq!(summary.patches.as_ref().unwrap().count, 5);
        let whole = split_into_patches(
            &graph,
            &grid,
            &PatchOptions {
                n_patches: 1,
                halo_deg: 0.0,
            },
        )
        .unwrap();
        assert_eq!(whole[0].n_owned(), graph.grid_nodes.len());
        assert_eq!(whole[0].mesh.len(), graph.mesh.len());
    }

    #[test]
    fn regional_tiles_partition_and_halo() {
        let (grid, valid) = regional_box();
        let graph = build(
            &grid,
            &valid,
            &GraphOptions {
                mesh_level: 4,
                ..GraphOptions::default()
            },
        )
        .unwrap();
        let opts = PatchOptions {
            n_patches: 4,
            halo_deg: 3.0,
        };
        let patches = split_into_patches(&graph, &grid, &opts).unwrap();
        assert_eq!(
            patches
                .iter()
                .map(|p| (p.rows.clone(), p.cols.clone()))
                .collect::<Vec<_>>(),
            vec![
                (0..16, 0..18),
                (0..16, 18..36),
                (16..33, 0..18),
                (16..33, 18..36)
            ]
        );
        check_patches(&graph, &patches, opts.halo_deg);
        check_windows(&graph, &grid, &patches);
        assert!(patches.iter().all(|p| p.n_halo() > 0));
    }

    #[test]
    fn rejects_bad_patch_counts() {
        let (grid, valid) = regional_box();
        let graph = build(
            &grid,
            &valid,
            &GraphOptions {
                mesh_level: 3,
                ..GraphOptions::default()
            },
        )
        .unwrap();
        for (n, text) in [(0, "at least 1"), (34, "only 33 latitude rows")] {
            let err = split_into_patches(
                &graph,
                &grid,
                &PatchOptions {
                    n_patches: n,
                    halo_deg: 1.0,
                },
            )
            .unwrap_err();
            assert!(
                is_input_error(&err) && err.to_string().contains(text),
                "{err}"
            );
        }
        let err = split_into_patches(
            &graph,
            &grid,
            &PatchOptions {
                n_patches: 2,
                halo_deg: -1.0,
            },
        )
        .unwrap_err();
        assert!(is_input_error(&err));
    }
}
