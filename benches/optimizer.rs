//! The optimizer half of a training step (global-norm clipping + AdamW) on the
//! parameters of the 5-degree bar model (latent 128, 8 processor layers, 2 input steps
//! of 5 channels), side by side in one run:
//! - `composed`: clipping and AdamW as candle ops per parameter tensor (what meshcast
//!   ran before the arena; `train::optimizer::reference`);
//! - `fused`: the gradients packed into the flat arena, one norm, one fused pass and
//!   the parameters written back (`train::step::apply_gradients`).
//!
//! Both clip (the clip is set below the gradients' norm). Run with
//! `cargo bench --bench optimizer`.

use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use meshcast::data::grid::Grid;
use meshcast::graph::{build, GraphOptions};
use meshcast::model::{MixedPrecision, ModelConfig};
use meshcast::predict::{Predictor, WholeGraph};
use meshcast::train::optimizer::{reference, AdamW, AdamWParams};
use meshcast::train::step::apply_gradients;

/// The binary's allocator, so both sides allocate as they do in training.
#[global_allocator]
static GLOBAL: meshcast::memory::Counting<mimalloc::MiMalloc> =
    meshcast::memory::Counting::new(mimalloc::MiMalloc);

fn optimizer(c: &mut Criterion) {
    // As the binary: freed pages are kept, so neither side pays page faults for them.
    meshcast::memory::set_freed_pages(meshcast::memory::FreedPages::Keep);
    let grid = Grid::global_cell_centred(5.0);
    let valid = vec![true; grid.len()];
    let options = GraphOptions {
        mesh_level: 4,
        ..GraphOptions::default()
    };
    let graph = build(&grid, &valid, &options).unwrap();
    let config = ModelConfig {
        latent_size: 128,
        num_gnn_layers: 8,
        ..ModelConfig::default()
    }
    .for_data(2, 5, 0);
    let predictor =
        WholeGraph::initialised(&graph, config, MixedPrecision::Off, 1, &Device::Cpu).unwrap();
    let vars = predictor.network().vars().to_vec();
    let grads: Vec<Option<Tensor>> = vars
        .iter()
        .map(|(_, v)| Some(Tensor::randn(0f32, 1e-2, v.shape(), &Device::Cpu).unwrap()))
        .collect();
    let count: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    println!("{} parameter tensors, {count} values", vars.len());
    let (clip, lr, params) = (1e-3, 1e-4, AdamWParams::default());

    let mut group = c.benchmark_group("optimizer_step");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut states: Vec<reference::ParamState> = vars
        .iter()
        .map(|(_, v)| reference::ParamState::new(v.as_tensor()).unwrap())
        .collect();
    let mut t = 0;
    group.bench_function("composed/5deg_latent128_layers8", |b| {
        b.iter(|| {
            let mut g = grads.clone();
            reference::clip_by_global_norm(&mut g, clip).unwrap();
            t += 1;
            reference::step(&mut states, &g, params, t, lr).unwrap();
        })
    });
    let mut fused = AdamW::new(vars, params).unwrap();
    group.bench_function("fused/5deg_latent128_layers8", |b| {
        b.iter(|| {
            let flat = fused.pack(&grads).unwrap();
            apply_gradients(&mut fused, &flat, 1.0, clip, lr).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, optimizer);
criterion_main!(benches);
