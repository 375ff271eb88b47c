//! Does reading batches in a background thread hide the I/O behind the model's compute?
//!
//! A 1-degree global dataset (64,800 cells, 5 variables) is written as deflate-compressed
//! netCDF-4, so reading a batch costs real decompression time. Each batch then goes
//! through a stand-in for a training step: node-wise MLP matmuls on its inputs, with
//! candle on the CPU (which uses the machine's cores, as training does). One epoch is
//! timed with `--no-prefetch` behaviour and with a prefetch buffer of 4. The same data
//! copied into a Zarr v3 store (zstd, one chunk per time step, as WeatherBench2 chunks)
//! is loaded alone beside the NetCDF-4 file.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use meshcast::data::generate::{generate, GenerateOptions, NcFormat};
use meshcast::data::{
    BatchLoader, DataSpec, Dataset, NormStats, Prefetch, Split, SplitSpec, Splits, WindowSpec,
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

/// Copies every variable of the NetCDF file `nc` into a Zarr v3 store at `out`: the
/// same values, dimension names and text/number attributes; zstd chunks of one step.
fn zarr_twin(nc: &std::path::Path, out: &std::path::Path) {
    use netcdf::types::{FloatType, NcVariableType};
    use zarrs::array::Array;
    use zarrs::metadata::ArrayMetadata;
    use zarrs::storage::ReadableWritableListableStorage;

    std::fs::create_dir_all(out).unwrap();
    let root = r#"{"zarr_format": 3, "node_type": "group", "attributes": {}}"#;
    std::fs::write(out.join("zarr.json"), root).unwrap();
    let store: ReadableWritableListableStorage =
        Arc::new(zarrs::filesystem::FilesystemStore::new(out).unwrap());
    let file = netcdf::open(nc).unwrap();
    for var in file.variables() {
        let dims: Vec<String> = var.dimensions().iter().map(|d| d.name()).collect();
        let shape: Vec<usize> = var.dimensions().iter().map(|d| d.len()).collect();
        let mut chunks = shape.clone();
        if dims.len() > 1 && dims[0] == "time" {
            chunks[0] = 1;
        }
        let attrs: serde_json::Map<String, serde_json::Value> = var
            .attributes()
            .filter_map(|a| {
                let value = match a.value().ok()? {
                    netcdf::AttributeValue::Str(s) => serde_json::json!(s),
                    netcdf::AttributeValue::Float(x) => serde_json::json!(x),
                    netcdf::AttributeValue::Double(x) => serde_json::json!(x),
                    _ => return None,
                };
                Some((a.name().to_string(), value))
            })
            .collect();
        let f32_values = matches!(var.vartype(), NcVariableType::Float(FloatType::F32));
        let meta = serde_json::json!({"zarr_format": 3, "node_type": "array", "shape": shape,
            "data_type": if f32_values { "float32" } else { "float64" }, "fill_value": "NaN",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": 3, "checksum": false}}],
            "dimension_names": dims, "attributes": attrs});
        let meta = ArrayMetadata::try_from(meta.to_string().as_str()).unwrap();
        let array =
            Array::new_with_metadata(store.clone(), &format!("/{}", var.name()), meta).unwrap();
        array.store_metadata().unwrap();
        let all: Vec<std::ops::Range<u64>> = shape.iter().map(|&n| 0..n as u64).collect();
        if f32_values {
            let values: Vec<f32> = var.get_values(..).unwrap();
            array.store_array_subset(&all, values).unwrap();
        } else {
            let values: Vec<f64> = var.get_values(..).unwrap();
            array.store_array_subset(&all, values).unwrap();
        }
    }
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
            files: vec![path.clone()],
            ..Default::default()
        })
        .unwrap(),
    );
    let window = WindowSpec::lead_spaced(2, 1);
    let splits = Splits::new(
        &ds.time,
        &SplitSpec {
            train: 1.0,
            validation: 0.0,
            periods: None,
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
                let loader = BatchLoader::new(
                    ds.clone(),
                    stats.clone(),
                    (window, 1),
                    &order,
                    BATCH,
                    prefetch,
                )
                .unwrap();
                let mut acc = 0.0;
                for batch in loader {
                    acc += model_step(&batch.unwrap(), &w1, &w2);
                }
                acc
            })
        });
    }
    // The two halves of the work alone, to read the overlap against; the loading also
    // from the Zarr twin of the file.
    let zarr = dir.path().join("bench-1deg.zarr");
    zarr_twin(&path, &zarr);
    let zarr_ds = Arc::new(
        Dataset::open(&DataSpec {
            files: vec![zarr],
            ..Default::default()
        })
        .unwrap(),
    );
    // The store lists its arrays by name: its own statistics, in its channel order.
    let zarr_stats = Arc::new(NormStats::compute(&zarr_ds, &splits).unwrap());
    for (name, data, norm) in [
        ("loading_only", &ds, &stats),
        ("loading_only_zarr", &zarr_ds, &zarr_stats),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                BatchLoader::new(
                    data.clone(),
                    norm.clone(),
                    (window, 1),
                    &order,
                    BATCH,
                    Prefetch::Off,
                )
                .unwrap()
                .count()
            })
        });
    }
    let batches: Vec<_> = BatchLoader::new(
        ds.clone(),
        stats.clone(),
        (window, 1),
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
