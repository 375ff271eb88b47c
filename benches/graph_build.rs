//! Graph build and cache-load times at GraphCast-like resolutions:
//! 5 deg / mesh level 4, 2.5 deg / level 5 and 1 deg / level 6 (64,800 grid
//! nodes, 40,962 mesh nodes). Run with `cargo bench --bench graph_build`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use meshcast::data::grid::Grid;
use meshcast::graph::{build, load_or_build, CacheOutcome, GraphOptions};

fn graph_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("graph");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (deg, level) in [(5.0, 4), (2.5, 5), (1.0, 6)] {
        let grid = Grid::global_cell_centred(deg);
        let valid = vec![true; grid.len()];
        let options = GraphOptions {
            mesh_level: level,
            ..GraphOptions::default()
        };
        let name = format!("{deg}deg_level{level}");
        group.bench_function(format!("build/{name}"), |b| {
            b.iter(|| build(&grid, &valid, &options).unwrap())
        });

        let dir = tempfile::tempdir().unwrap();
        let (_, outcome, _) = load_or_build(&grid, &valid, &options, Some(dir.path())).unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        group.bench_function(format!("cache_load/{name}"), |b| {
            b.iter(|| {
                let (graph, outcome, _) =
                    load_or_build(&grid, &valid, &options, Some(dir.path())).unwrap();
                assert_eq!(outcome, CacheOutcome::Hit);
                graph
            })
        });
    }
    group.finish();
}

criterion_group!(benches, graph_build);
criterion_main!(benches);
