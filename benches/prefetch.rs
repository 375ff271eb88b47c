//! Does reading batches in a background thread hide the I/O behind the model's compute?
//!
//! A 1-degree global dataset (64,800 cells, 5 variables) is written as deflate-compressed
//! netCDF-4, so reading a batch costs real decompression time. Each batch then goes
//! through a stand-in for a training step: node-wise MLP matmuls on its inputs, with
//! candle on the CPU (which uses the machine's cores, as training does). One epoch is
//! timed with `--no-prefetch` behaviour and with a prefetch buffer of 4.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use meshcast::data::generate::{generate, GenerateOptions, NcFormat};
use meshcast::data::{
    BatchLoader, DataSpec, Dataset, NormStats, Prefetch, Split, SplitFractions, Splits, WindowSpec,
};

const BATCH: usize = 2;

/// A node-wise MLP forward over the batch (the shape of a GraphCast embedder + one
/// processor MLP), repeated to cost about as much as reading the batch.
fn model_step(batch: &meshcast::data::Batch, w1: &Tensor, w2: &Tensor) -> f32 {
    let x = Tensor::from_slice(
        &batch.inputs,
        (batch.len() * batch.nodes, batch.input_features()),
        &Device::Cpu,
    )
    .unwrap();
    let mut h = x.matmul(w1).unwrap().relu().unwrap();
    for _ in 0..6 {
        h = h.matmul(w2).unwrap().relu().unwrap();
    }
    h.mean_all().unwrap().to_scalar::<f32>().unwrap()
}

fn bench_prefetch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench-1deg.nc");
    let opts = GenerateOptions {
        resolution: 1.0,
        steps: 26,
        format: NcFormat::Netcdf4,
        deflate: 4,
        ..Default::default()
    };
    generate(&path, &opts, "prefetch bench").unwrap();
    let ds = Arc::new(
        Dataset::open(&DataSpec {
            files: vec![path],
            ..Default::default()
        })
        .unwrap(),
    );
    let window = WindowSpec {
        input_steps: 2,
        lead_steps: 1,
    };
    let splits = Splits::new(
        ds.time.len(),
        SplitFractions {
            train: 1.0,
            validation: 0.0,
        },
        window,
    )
    .unwrap();
    let stats = Arc::new(NormStats::compute(&ds, &splits).unwrap());
    // Shuffled order, as in training: consecutive samples rarely share states.
    let mut order = splits.samples(Split::Train);
    let n = order.len();
    order = (0..n).map(|i| order[(i * 7) % n]).collect();
    let features = window.input_steps * ds.num_channels();
    let w1 = Tensor::randn(0f32, 0.1, (features, 32), &Device::Cpu).unwrap();
    let w2 = Tensor::randn(0f32, 0.1, (32, 32), &Device::Cpu).unwrap();

    let mut group = c.benchmark_group("epoch_1deg_batch2");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(10));
    for (name, prefetch) in [
        ("no_prefetch", Prefetch::Off),
        ("prefetch_4", Prefetch::Buffer(4)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let loader =
                    BatchLoader::new(ds.clone(), stats.clone(), window, &order, BATCH, prefetch)
                        .unwrap();
                let mut acc = 0.0;
                for batch in loader {
                    acc += model_step(&batch.unwrap(), &w1, &w2);
                }
                acc
            })
        });
    }
    // The two halves of the work alone, to read the overlap against.
    group.bench_function("loading_only", |b| {
        b.iter(|| {
            BatchLoader::new(
                ds.clone(),
                stats.clone(),
                window,
                &order,
                BATCH,
                Prefetch::Off,
            )
            .unwrap()
            .count()
        })
    });
    let batches: Vec<_> = BatchLoader::new(
        ds.clone(),
        stats.clone(),
        window,
        &order,
        BATCH,
        Prefetch::Off,
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    group.bench_function("compute_only", |b| {
        b.iter(|| {
            batches
                .iter()
                .map(|bt| model_step(bt, &w1, &w2))
                .sum::<f32>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_prefetch);
criterion_main!(benches);
