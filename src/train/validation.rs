//! The validation pass after each epoch: the loss, and per variable the
//! latitude-weighted RMSE of the model's next state and of persistence, in physical
//! units. Runs the predictor's inference path (no gradients). A run that trains on
//! rollouts is validated on its longest one from the first epoch (the loss the
//! curriculum aims at, comparable across epochs, so `best` means best at it); the
//! RMSEs stay those of the first step.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::session::Session;
use candle_core::{DType, Tensor};

use crate::data::{Batch, BatchAssembler, BatchLoader, NormStats, Prefetch, WindowSpec};
use crate::distributed::{shard, Collective};
use crate::predict::loss::{scalar, weighted_mse};
use crate::predict::unroll::rollout_forward;
use crate::predict::LossTarget;

#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub loss: f64,
    pub rmse: BTreeMap<String, f64>,
    pub persistence_rmse: BTreeMap<String, f64>,
    /// Variables without a valid target in the validation samples (a time step missing
    /// in the data): no RMSE rather than a zero.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unscored: Vec<String>,
}

/// What a validation pass reads, besides the session.
pub struct ValidationSet<'a> {
    pub samples: &'a [usize],
    pub stats: Arc<NormStats>,
    pub window: WindowSpec,
    /// The rollout the loss is taken over (1: one step).
    pub rollout_steps: usize,
    pub batch_size: usize,
    pub prefetch: Prefetch,
    /// Each rank validates its share of the samples; the sums are added over the ranks.
    pub collective: &'a dyn Collective,
    pub lat_w: &'a [f32],
    pub var_w: &'a [f32],
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// Weighted squared errors per channel.
struct ChannelSums {
    model: Vec<f64>,
    persistence: Vec<f64>,
    weight: Vec<f64>,
}

/// Runs the model on the validation samples (None when there are none).
pub fn validate(session: &Session, set: &ValidationSet) -> anyhow::Result<Option<Validation>> {
    if set.samples.is_empty() {
        return Ok(None);
    }
    // Ranks share out the samples; a rank holding some patches (patch-parallel) scores
    // every sample on its patches' nodes.
    let (rank, size) = (set.collective.rank(), set.collective.size());
    let owned = session.predictor.owned_nodes();
    let share = match owned {
        Some(_) => set.samples,
        None => &set.samples[shard(set.samples.len(), rank, size)],
    };
    let assembler = BatchAssembler::new(
        session.batch_data.clone(),
        set.stats.clone(),
        (set.window, set.rollout_steps),
        set.batch_size.max(1),
    )
    .with_extras(session.extras_fn());
    let chunks = share
        .chunks(set.batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let loader = BatchLoader::from_assembler(assembler, chunks, set.prefetch)?;
    let channels = set.stats.channels.len();
    let (mut total, mut count) = (0.0, 0.0);
    let mut sums = ChannelSums {
        model: vec![0.0; channels],
        persistence: vec![0.0; channels],
        weight: vec![0.0; channels],
    };
    let bar = crate::util::progress_bar(
        set.progress,
        share.len().div_ceil(set.batch_size.max(1)),
        "validation",
    );
    for batch in loader {
        bar.inc(1);
        let (mut errors, pred, truth, mut valid) = batch_errors(session, &batch?, set)?;
        if let Some(owned) = owned {
            errors = owned_errors(owned, (&pred, &truth, &mut valid), set);
        }
        total += errors.0;
        count += errors.1;
        add_squared_errors(&mut sums, (&pred, &truth, &valid), set.lat_w);
    }
    bar.finish_and_clear();
    let count = sum_over_ranks(set.collective, &mut total, count, &mut sums)?;
    if count == 0.0 {
        tracing::warn!("no valid target in the validation samples: no validation loss");
        return Ok(None);
    }
    let scored: Vec<usize> = (0..channels).filter(|&c| sums.weight[c] > 0.0).collect();
    let rmse = |sq: &[f64]| -> BTreeMap<String, f64> {
        scored
            .iter()
            .map(|&c| {
                let mean = sq[c] / sums.weight[c];
                (
                    set.stats.channels[c].clone(),
                    mean.sqrt() * set.stats.diff_std[c],
                )
            })
            .collect()
    };
    Ok(Some(Validation {
        loss: total / count,
        rmse: rmse(&sums.model),
        persistence_rmse: rmse(&sums.persistence),
        unscored: (0..channels)
            .filter(|c| !scored.contains(c))
            .map(|c| set.stats.channels[c].clone())
            .collect(),
    }))
}

/// The loss numerator, entry count and channel sums added over the ranks; returns the
/// count.
fn sum_over_ranks(
    collective: &dyn Collective,
    total: &mut f64,
    count: f64,
    sums: &mut ChannelSums,
) -> anyhow::Result<f64> {
    if collective.size() == 1 {
        return Ok(count);
    }
    let mut flat = vec![*total, count];
    for part in [&sums.model, &sums.persistence, &sums.weight] {
        flat.extend_from_slice(part);
    }
    collective.all_reduce_f64(&mut flat)?;
    let channels = sums.weight.len();
    let mut parts = flat[2..].chunks(channels);
    for part in [&mut sums.model, &mut sums.persistence, &mut sums.weight] {
        part.copy_from_slice(parts.next().expect("three channel sums"));
    }
    *total = flat[0];
    Ok(flat[1])
}

/// A batch's weighted squared errors and valid entries, summed over its rollout's
/// steps (so that the loss, their ratio, is the same however the samples are
/// batched or shared out over ranks), and the first step's predicted and true
/// residuals and their validity.
type BatchErrors = ((f64, f64), Vec<f32>, Vec<f32>, Vec<bool>);

fn batch_errors(
    session: &Session,
    batch: &Batch,
    set: &ValidationSet,
) -> anyhow::Result<BatchErrors> {
    let flat = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    };
    let squared = |pred: &Tensor, t: &LossTarget| -> candle_core::Result<(f64, f64)> {
        let sum = scalar(&weighted_mse(pred, &t.y, &t.w, 1.0)?)?;
        Ok((sum, t.entries as f64))
    };
    if batch.rollout_steps > 1 {
        let rb = session.rollout_batch(batch, (set.lat_w, set.var_w), &set.stats)?;
        let forward = rollout_forward(session.predictor.as_ref(), &rb)?;
        let mut errors = (0.0, 0.0);
        for (sum, target) in forward.sums.iter().zip(&rb.targets) {
            let (e, n) = squared(sum, target)?;
            (errors.0, errors.1) = (errors.0 + e, errors.1 + n);
        }
        let truth = flat(&rb.targets[0].y)?;
        return Ok((errors, flat(&forward.sums[0])?, truth, rb.first_valid));
    }
    let (x, target, valid) = session.tensors(batch, set.lat_w, set.var_w)?;
    let pred = session.predictor.forward(&x)?;
    Ok((
        squared(&pred, &target)?,
        flat(&pred)?,
        flat(&target.y)?,
        valid,
    ))
}

/// The loss sums on the nodes of one rank's patches only (its other outputs are zeros,
/// not predictions), whose entries alone stay valid.
fn owned_errors(
    owned: &[bool],
    (pred, truth, valid): (&[f32], &[f32], &mut [bool]),
    set: &ValidationSet,
) -> (f64, f64) {
    let (channels, nodes) = (set.var_w.len(), set.lat_w.len());
    let (mut sum, mut entries) = (0.0, 0.0);
    for (i, v) in valid.iter_mut().enumerate() {
        let node = (i / channels) % nodes;
        *v &= owned[node];
        if *v {
            let w = set.lat_w[node] as f64 * set.var_w[i % channels] as f64;
            sum += w * ((pred[i] - truth[i]) as f64).powi(2);
            entries += 1.0;
        }
    }
    (sum, entries)
}

/// Persistence predicts a zero residual, so its error is the target itself.
fn add_squared_errors(
    sums: &mut ChannelSums,
    (pred, truth, valid): (&[f32], &[f32], &[bool]),
    lat_w: &[f32],
) {
    let (channels, nodes) = (sums.weight.len(), lat_w.len());
    for (i, _) in valid.iter().enumerate().filter(|(_, ok)| **ok) {
        let (c, node) = (i % channels, (i / channels) % nodes);
        let lw = lat_w[node] as f64;
        sums.model[c] += lw * ((pred[i] - truth[i]) as f64).powi(2);
        sums.persistence[c] += lw * (truth[i] as f64).powi(2);
        sums.weight[c] += lw;
    }
}
