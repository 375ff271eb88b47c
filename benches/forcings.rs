//! The forcings of one window (two input times and the target time, every forcing,
//! TOA averaged over 6 h) for every node of a 1-degree and a 0.25-degree global grid:
//! what training adds to each sample of a batch. Run with `cargo bench --bench forcings`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use meshcast::data::forcings::Forcing;
use meshcast::data::grid::Grid;
use meshcast::data::time::{Calendar, DateTime};
use meshcast::predict::NodeExtras;

fn forcings(c: &mut Criterion) {
    let mut group = c.benchmark_group("forcings");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let cal = Calendar::ProlepticGregorian;
    let t = |hour| {
        DateTime::parse(&format!("2020-06-01 {hour:02}:00"), cal)
            .unwrap()
            .to_instant(cal)
    };
    let window = vec![vec![t(0), t(6), t(12)]];
    for deg in [1.0, 0.25] {
        let grid = Grid::global_cell_centred(deg);
        let lat_lon = (0..grid.len()).map(|i| grid.node_lat_lon(i)).collect();
        let extras = NodeExtras::new(&Forcing::ALL, cal, 6 * 3600, lat_lon, (Vec::new(), 0));
        group.bench_function(format!("window/{deg}deg"), |b| {
            b.iter(|| extras.for_windows(&window))
        });
    }
    group.finish();
}

criterion_group!(benches, forcings);
criterion_main!(benches);
