//! The validation pass after each epoch: the loss, and per variable the
//! latitude-weighted RMSE of the model's next state and of persistence, in physical
//! units. Runs the predictor's inference path (no gradients).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::session::Session;
use crate::data::{BatchLoader, NormStats, Prefetch, WindowSpec};
use crate::predict::loss::weighted_mse;

#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub loss: f64,
    pub rmse: BTreeMap<String, f64>,
    pub persistence_rmse: BTreeMap<String, f64>,
}

/// What a validation pass reads, besides the session.
pub struct ValidationSet<'a> {
    pub samples: &'a [usize],
    pub stats: Arc<NormStats>,
    pub window: WindowSpec,
    pub batch_size: usize,
    pub prefetch: Prefetch,
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
    let loader = BatchLoader::new(
        session.dataset.clone(),
        set.stats.clone(),
        (set.window, 1),
        set.samples,
        set.batch_size,
        set.prefetch,
    )?;
    let channels = set.stats.channels.len();
    let (mut total, mut count) = (0.0, 0.0);
    let mut sums = ChannelSums {
        model: vec![0.0; channels],
        persistence: vec![0.0; channels],
        weight: vec![0.0; channels],
    };
    let bar = crate::util::progress_bar(
        set.progress,
        set.samples.len().div_ceil(set.batch_size.max(1)),
        "validation",
    );
    for batch in loader {
        bar.inc(1);
        let (x, target, valid) = session.tensors(&batch?, set.lat_w, set.var_w)?;
        let pred = session.predictor.forward(&x)?;
        let valid_entries = valid.iter().filter(|&&v| v).count() as f64;
        let loss = weighted_mse(&pred, &target.y, &target.w, target.denominator)?;
        total += loss.to_scalar::<f32>()? as f64 * valid_entries;
        count += valid_entries;
        let pred: Vec<f32> = pred
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let truth: Vec<f32> = target.y.flatten_all()?.to_vec1()?;
        add_squared_errors(&mut sums, (&pred, &truth, &valid), set.lat_w);
    }
    bar.finish_and_clear();
    let rmse = |sq: &[f64]| -> BTreeMap<String, f64> {
        (0..channels)
            .map(|c| {
                let mean = sq[c] / sums.weight[c].max(1e-12);
                (
                    set.stats.channels[c].clone(),
                    mean.sqrt() * set.stats.diff_std[c],
                )
            })
            .collect()
    };
    Ok(Some(Validation {
        loss: total / count.max(1.0),
        rmse: rmse(&sums.model),
        persistence_rmse: rmse(&sums.persistence),
    }))
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
