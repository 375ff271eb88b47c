//! Each grid's graph: built and loaded back from a fresh on-disk cache, both timed.

use std::path::PathBuf;
use std::time::Instant;

use crate::bench::report::GraphInfo;
use crate::bench::stats::{time_repeats, Summary};
use crate::data::Grid;
use crate::graph::{self, GraphOptions, WeatherGraph};

/// A fresh temporary directory for the graph cache of one grid.
fn temp_cache_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "meshcast-bench-cache-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Builds the graph of one grid `repeats` times and loads it from a fresh cache
/// `repeats` times: the graph and its sizes and timings.
pub(super) fn graph_for(
    grid: &Grid,
    valid: &[bool],
    mesh_level: u32,
    repeats: usize,
) -> anyhow::Result<(WeatherGraph, GraphInfo)> {
    let options = GraphOptions {
        mesh_level,
        ..GraphOptions::default()
    };
    let mut graph = None;
    let build = time_repeats(repeats, || {
        graph = Some(graph::build(grid, valid, &options)?);
        Ok(())
    })?;
    let graph = graph.expect("built at least once");
    let dir = temp_cache_dir()?;
    let loads = (|| -> anyhow::Result<Vec<f64>> {
        graph::load_or_build(grid, valid, &options, Some(&dir))?; // writes the file
        let mut loads = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let t = Instant::now();
            let (_, outcome, _) = graph::load_or_build(grid, valid, &options, Some(&dir))?;
            loads.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(
                outcome == graph::CacheOutcome::Hit,
                "the graph cache in {} did not load back ({outcome})",
                dir.display()
            );
        }
        Ok(loads)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let loads = loads?;
    let sets = [&graph.grid2mesh, &graph.mesh, &graph.mesh2grid];
    let fb: Vec<_> = sets.iter().map(|s| s.format_bytes()).collect();
    let feature_bytes = 4
        * (graph.grid_nodes.features.len()
            + graph.mesh_nodes.features.len()
            + sets.iter().map(|s| s.features.len()).sum::<usize>());
    let info = GraphInfo {
        grid_cells: grid.len(),
        grid_nodes: graph.grid_nodes.len(),
        mesh_nodes: graph.mesh_nodes.len(),
        grid2mesh_edges: graph.grid2mesh.len(),
        mesh_edges: graph.mesh.len(),
        mesh2grid_edges: graph.mesh2grid.len(),
        coo_index_bytes: fb.iter().map(|b| b.coo).sum(),
        csr_index_bytes: fb.iter().map(|b| b.csr).sum(),
        csc_index_bytes: fb.iter().map(|b| b.csc).sum(),
        feature_bytes,
        case_bytes: 0,
        build: Summary::of(&build).expect("repeats >= 1"),
        cache_load: Summary::of(&loads).expect("repeats >= 1"),
    };
    Ok((graph, info))
}
