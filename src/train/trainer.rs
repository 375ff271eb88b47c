//! The training loop of `meshcast train-model`.
//!
//! files -> dataset -> batches (prefetched) -> model -> loss -> gradients (accumulated,
//! clipped) -> AdamW with warm-up + cosine schedule; a validation pass and `last`/`best`
//! checkpoints after every epoch; `metrics.jsonl` gets one line per step and per epoch.
//! Ctrl-C (the `stop` flag) ends the run after the current step with a `last` checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::checkpoint::{self, CheckpointMeta, FORMAT_VERSION};
use super::config::RunConfig;
use super::init::init_parameters;
use super::loss::{loss_weights, weighted_mse};
use super::loss_scale::{LossScaler, ScaleOutcome, MAX_CONSECUTIVE_SKIPS};
use super::optimizer::{clip_by_global_norm, AdamW, AdamWParams};
use super::schedule::LrSchedule;
use super::session::{variable_weights, Session};
use crate::data::{BatchLoader, Dataset, NormStats, Prefetch, Split};
use crate::error::InputError;

/// How to run (not what): where, from where, on what.
pub struct TrainOptions {
    pub output_dir: PathBuf,
    pub resume: bool,
    pub overwrite: bool,
    pub graph_cache: Option<PathBuf>,
    pub device: Device,
    /// Set by Ctrl-C: finish the current step, save `last`, stop.
    pub stop: Arc<AtomicBool>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs_completed: usize,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub parameters: usize,
    pub interrupted: bool,
    /// Optimizer steps skipped because f16 gradients overflowed (not counted in `steps`).
    pub skipped_steps: usize,
    pub output_dir: PathBuf,
    /// Peak bytes allocated on the host during the run (None without the counting allocator).
    pub peak_host_bytes: Option<usize>,
    /// Peak bytes of the GPU's memory pool (None on the CPU).
    pub peak_device_bytes: Option<usize>,
    /// Where the peak went (parts computed from tensor sizes, peak measured).
    pub memory: crate::device::memory::MemoryBreakdown,
}

/// The order of the training samples in `epoch`: a pure function of (seed, epoch), so a
/// resumed run sees exactly the batches the uninterrupted one would have.
pub fn epoch_order(samples: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = samples.to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

fn prepare_output_dir(run: &RunConfig, opts: &TrainOptions) -> anyhow::Result<()> {
    let run_file = opts.output_dir.join("run.json");
    if run_file.exists() && !opts.resume && !opts.overwrite {
        return Err(InputError::file(
            &opts.output_dir,
            "already holds a training run: pass --resume to continue it or --overwrite to start over",
        )
        .into());
    }
    if opts.overwrite && !opts.resume {
        for name in ["run.json", "stats.json", "metrics.jsonl"] {
            let _ = std::fs::remove_file(opts.output_dir.join(name));
        }
        let _ = std::fs::remove_dir_all(opts.output_dir.join("checkpoints"));
    }
    if opts.resume
        && !checkpoint::files(&opts.output_dir.join("checkpoints"), "last")
            .meta
            .exists()
    {
        return Err(InputError::file(
            &opts.output_dir,
            "has no checkpoint to resume (checkpoints/last.json)",
        )
        .into());
    }
    crate::util::write_atomic(&run_file, serde_json::to_string_pretty(run)?.as_bytes())
}

/// Trains `run` and returns the summary. The caller has validated nothing; this does.
pub fn train(run: &RunConfig, opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    run.train.validate()?;
    let dataset = Arc::new(Dataset::open(&run.data)?);
    tracing::info!("data: {}", dataset.summary_line());
    // A window the data cannot hold is refused before anything is written.
    crate::data::Splits::new(dataset.time.len(), run.split, run.window)
        .map_err(|e| InputError(format!("{}: {}", dataset.file_list(), e.0)))?;
    let ckpt_dir = opts.output_dir.join("checkpoints");
    let resumed = if opts.resume {
        let ck = checkpoint::load(&ckpt_dir, "last", &opts.device)?;
        if let Some(why) = run.resume_mismatch(&ck.meta.run) {
            return Err(
                InputError(format!("cannot resume from {}: {why}", ckpt_dir.display())).into(),
            );
        }
        if ck.meta.data_fingerprint != dataset.fingerprint {
            return Err(InputError(format!(
                "cannot resume from {}: the data files changed since the checkpoint (fingerprint {} vs {})",
                ckpt_dir.display(),
                ck.meta.data_fingerprint,
                dataset.fingerprint
            ))
            .into());
        }
        Some(ck)
    } else {
        None
    };
    prepare_output_dir(run, opts)?;

    // Live bytes before graph and model exist: the baseline of the memory breakdown.
    let baseline = crate::device::memory::current_on(&opts.device).map(|b| b as u64);
    let session = Session::new(
        run,
        dataset.clone(),
        opts.graph_cache.as_deref(),
        &opts.device,
    )?;
    let stats = Arc::new(match &resumed {
        Some(ck) => ck.meta.stats.clone(),
        None => NormStats::load_or_compute(
            &opts.output_dir.join("stats.json"),
            &dataset,
            &session.splits,
        )?,
    });
    let train_samples = session.splits.samples(Split::Train);
    let val_samples = session.splits.samples(Split::Validation);
    if train_samples.is_empty() {
        return Err(InputError(format!(
            "{}: the training block has no sample",
            dataset.file_list()
        ))
        .into());
    }
    let micro_per_epoch = train_samples.len().div_ceil(run.train.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(run.train.grad_accum_steps);
    let schedule = LrSchedule {
        peak: run.train.learning_rate,
        warmup_steps: run
            .train
            .warmup_steps
            .min(steps_per_epoch * run.train.num_epochs / 2),
        total_steps: steps_per_epoch * run.train.num_epochs,
        final_fraction: run.train.final_lr_fraction,
    };
    let adamw_params = AdamWParams {
        weight_decay: run.train.weight_decay,
        ..Default::default()
    };
    let mut optimizer = AdamW::new(session.vars.clone(), adamw_params)?;
    init_parameters(&session.vars, run.train.seed)?;
    let (mut epoch, mut skip_micro, mut best_val) = (0, 0, None);
    let mut scaler = run.train.mixed_precision.needs_loss_scaling().then(|| {
        LossScaler::new(
            run.train.initial_loss_scale,
            run.train.loss_scale_growth_interval,
        )
    });
    if let Some(ck) = &resumed {
        ck.restore(&mut optimizer)?;
        if scaler.is_some() {
            scaler = ck.meta.loss_scaler.or(scaler);
        }
        (epoch, skip_micro, best_val) =
            (ck.meta.epoch, ck.meta.batch_in_epoch, ck.meta.best_val_loss);
        tracing::info!(
            "resumed at step {} (epoch {}, batch {})",
            ck.meta.step,
            epoch + 1,
            skip_micro
        );
    }
    tracing::info!(
        "model: {} parameters, latent {}, {} processor layers; {} training samples, {} validation; {} steps per epoch",
        session.parameter_count(),
        run.model.latent_size,
        run.model.num_gnn_layers,
        train_samples.len(),
        val_samples.len(),
        steps_per_epoch
    );

    let lat_w = session.node_latitude_weights();
    let var_w = variable_weights(run, &stats);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.output_dir.join("metrics.jsonl"))
        .with_context(|| format!("{}: cannot open metrics.jsonl", opts.output_dir.display()))?;
    let prefetch = if run.train.use_prefetch {
        Prefetch::Buffer(run.train.prefetch_buffer_size)
    } else {
        Prefetch::Off
    };
    let started = Instant::now();
    let mut samples_seen = 0usize;
    let (mut last_train, mut last_val) = (None, None);
    let mut epochs_completed = epoch;
    let mut interrupted = false;
    let meta_for = |optimizer: &AdamW,
                    epoch: usize,
                    batch: usize,
                    train: Option<f64>,
                    val: Option<f64>,
                    best: Option<f64>,
                    loss_scaler: Option<LossScaler>| CheckpointMeta {
        format_version: FORMAT_VERSION,
        meshcast_version: env!("CARGO_PKG_VERSION").into(),
        step: optimizer.step_t,
        epoch,
        batch_in_epoch: batch,
        train_loss: train,
        val_loss: val,
        best_val_loss: best,
        run: run.clone(),
        stats: (*stats).clone(),
        adamw: adamw_params,
        schedule,
        rng: format!("chacha8(seed {} ^ epoch * golden)", run.train.seed),
        data_fingerprint: dataset.fingerprint.clone(),
        loss_scaler,
        weights_sha256: String::new(),
        optimizer_sha256: String::new(),
    };

    'epochs: while epoch < run.train.num_epochs {
        let order = epoch_order(&train_samples, run.train.seed, epoch);
        let remaining = &order[(skip_micro * run.train.batch_size).min(order.len())..];
        let loader = BatchLoader::new(
            dataset.clone(),
            stats.clone(),
            run.window,
            remaining,
            run.train.batch_size,
            prefetch,
        )?;
        let bar = progress_bar(
            opts.progress,
            micro_per_epoch,
            skip_micro,
            epoch,
            run.train.num_epochs,
        );
        let mut micro = skip_micro;
        skip_micro = 0;
        let (mut epoch_loss, mut epoch_batches) = (0.0, 0usize);
        let mut accum: Vec<Option<Tensor>> = vec![None; optimizer.slots.len()];
        let mut accum_count = 0;
        let epoch_started = Instant::now();
        for batch in loader {
            let batch = batch?;
            let (x, y, valid) = session.tensors(&batch)?;
            let (w, count) = loss_weights(&valid, &lat_w, &var_w, y.dims3()?, &opts.device)?;
            // Gradients of this micro-batch, scaled for accumulation and by the f16 loss
            // scale (plain or checkpointed).
            let accum_scale = run.train.grad_accum_steps as f64;
            let loss_scale = scaler.map_or(1.0, |s| s.scale);
            let step = session.gradients(
                &x,
                &y,
                &w,
                count * accum_scale / loss_scale,
                run.train
                    .checkpointing
                    .then_some(run.train.checkpoint_every),
            )?;
            let loss_value = step.loss * accum_scale / loss_scale;
            // Under f16 an overflow is the loss scaler's to handle (the step is skipped).
            if !loss_value.is_finite() && scaler.is_none() {
                anyhow::bail!(
                    "the loss became {loss_value} at step {} (epoch {}): stopping without writing a checkpoint; \
                     try a lower --learning-rate",
                    optimizer.step_t + 1,
                    epoch + 1
                );
            }
            for (g, acc) in step.grads.into_iter().zip(accum.iter_mut()) {
                if let Some(g) = g {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g,
                    });
                }
            }
            accum_count += 1;
            micro += 1;
            samples_seen += batch.len();
            if loss_value.is_finite() {
                epoch_loss += loss_value;
                epoch_batches += 1;
            }
            let end_of_epoch = micro == micro_per_epoch;
            if accum_count == run.train.grad_accum_steps || end_of_epoch {
                if accum_count < run.train.grad_accum_steps {
                    // A short last accumulation: rescale to the mean over the micro-batches taken.
                    let scale = run.train.grad_accum_steps as f64 / accum_count as f64;
                    for g in accum.iter_mut().flatten() {
                        *g = (&*g * scale)?;
                    }
                }
                if let Some(s) = scaler.as_mut() {
                    if let ScaleOutcome::Skip { from, to } = s.unscale(&mut accum)? {
                        accum = vec![None; optimizer.slots.len()];
                        accum_count = 0;
                        tracing::warn!(
                            "step {} skipped: f16 gradients overflowed (not finite); loss scale {from} -> {to}",
                            optimizer.step_t + 1
                        );
                        writeln!(
                            metrics,
                            "{}",
                            serde_json::json!({"kind": "skip", "step": optimizer.step_t, "epoch": epoch + 1,
                                "reason": "non-finite gradients", "loss": loss_value,
                                "loss_scale_from": from, "loss_scale_to": to})
                        )?;
                        if s.consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
                            anyhow::bail!(
                                "{MAX_CONSECUTIVE_SKIPS} optimizer steps in a row overflowed in f16 (loss scale now {to}): \
                                 the activations themselves leave f16's range; use --mixed-precision bf16"
                            );
                        }
                        bar.inc(1);
                        continue;
                    }
                }
                let grad_norm = clip_by_global_norm(&mut accum, run.train.grad_clip)?;
                let lr = schedule.at(optimizer.step_t);
                optimizer.step(&accum, lr)?;
                accum = vec![None; optimizer.slots.len()];
                accum_count = 0;
                let rate = samples_seen as f64 / started.elapsed().as_secs_f64();
                writeln!(
                    metrics,
                    "{}",
                    serde_json::json!({"kind": "step", "step": optimizer.step_t, "epoch": epoch + 1, "loss": loss_value,
                        "lr": lr, "grad_norm": grad_norm, "samples_per_s": rate,
                        "loss_scale": scaler.map(|s| s.scale)})
                )?;
                bar.set_message(format!(
                    "loss {loss_value:.4} lr {lr:.2e} {rate:.1} samples/s"
                ));
                let hit_max = run.train.max_steps.is_some_and(|m| optimizer.step_t >= m);
                let stop_now = opts.stop.load(Ordering::Relaxed);
                if (hit_max || stop_now) && !end_of_epoch {
                    bar.finish_and_clear();
                    let mut meta = meta_for(
                        &optimizer,
                        epoch,
                        micro,
                        Some(epoch_loss / epoch_batches.max(1) as f64),
                        last_val,
                        best_val,
                        scaler,
                    );
                    checkpoint::save(&ckpt_dir, "last", &optimizer, &mut meta)?;
                    last_train = meta.train_loss;
                    interrupted = stop_now;
                    if stop_now {
                        tracing::warn!("interrupted: saved checkpoints/last at step {}; continue with --resume", optimizer.step_t);
                    } else {
                        tracing::info!(
                            "--max-steps {} reached: saved checkpoints/last",
                            optimizer.step_t
                        );
                    }
                    break 'epochs;
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_loss = epoch_loss / epoch_batches.max(1) as f64;
        let validation = validate(
            &session,
            &stats,
            run,
            &val_samples,
            &lat_w,
            &var_w,
            prefetch,
        )?;
        let val_loss = validation.as_ref().map(|v| v.loss);
        let improved = match (val_loss, best_val) {
            (Some(v), Some(b)) => v < b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if improved {
            best_val = val_loss;
        }
        epoch += 1;
        epochs_completed = epoch;
        let mut meta = meta_for(
            &optimizer,
            epoch,
            0,
            Some(train_loss),
            val_loss,
            best_val,
            scaler,
        );
        checkpoint::save(&ckpt_dir, "last", &optimizer, &mut meta)?;
        if improved || (val_samples.is_empty() && epoch == run.train.num_epochs) {
            checkpoint::save(&ckpt_dir, "best", &optimizer, &mut meta)?;
        }
        writeln!(
            metrics,
            "{}",
            serde_json::json!({"kind": "epoch", "epoch": epoch, "step": optimizer.step_t, "train_loss": train_loss,
                "val_loss": val_loss, "best_val_loss": best_val, "seconds": epoch_started.elapsed().as_secs_f64(),
                "peak_host_bytes": crate::device::memory::peak(),
                "peak_device_bytes": device_peak(&opts.device),
                "val_rmse": validation.as_ref().map(|v| &v.rmse),
                "persistence_rmse": validation.as_ref().map(|v| &v.persistence_rmse)})
        )?;
        tracing::info!(
            "epoch {epoch}/{}: train loss {train_loss:.5}, validation loss {}, {:.1} s",
            run.train.num_epochs,
            val_loss.map_or("-".into(), |v| format!("{v:.5}")),
            epoch_started.elapsed().as_secs_f64()
        );
        if let Some(v) = &validation {
            let parts: Vec<String> = v
                .rmse
                .iter()
                .map(|(name, r)| {
                    format!(
                        "{name} {r:.4} (persistence {:.4})",
                        v.persistence_rmse[name]
                    )
                })
                .collect();
            tracing::info!(
                "validation RMSE at lead {}: {}",
                run.window.lead_steps,
                parts.join(", ")
            );
        }
        (last_train, last_val) = (Some(train_loss), val_loss);
        let hit_max = run.train.max_steps.is_some_and(|m| optimizer.step_t >= m);
        if opts.stop.load(Ordering::Relaxed) || hit_max {
            interrupted = opts.stop.load(Ordering::Relaxed);
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let memory = session.memory_breakdown(baseline);
    if let (Some(peak), Some(act)) = (memory.peak, memory.activations) {
        let mb = |b: u64| b as f64 / 1e6;
        tracing::info!(
            "peak memory {:.1} MB: weights {:.1}, optimizer state {:.1}, gradients {:.1}, graph {:.1}, \
             activations and buffers {:.1}, before the run {:.1} MB",
            mb(peak),
            mb(memory.weights),
            mb(memory.optimizer_state),
            mb(memory.gradients),
            mb(memory.graph),
            mb(act),
            mb(memory.baseline.unwrap_or(0))
        );
    }
    writeln!(
        metrics,
        "{}",
        serde_json::json!({"kind": "summary", "steps": optimizer.step_t, "seconds": seconds,
            "skipped_steps": scaler.map_or(0, |s| s.skipped_steps),
            "mixed_precision": run.train.mixed_precision,
            "samples_per_s": samples_seen as f64 / seconds.max(1e-9), "memory": memory})
    )?;
    Ok(TrainSummary {
        steps: optimizer.step_t,
        epochs_completed,
        train_loss: last_train,
        val_loss: last_val,
        best_val_loss: best_val,
        seconds,
        samples_per_second: samples_seen as f64 / seconds.max(1e-9),
        parameters: session.parameter_count(),
        interrupted,
        skipped_steps: scaler.map_or(0, |s| s.skipped_steps),
        output_dir: opts.output_dir.clone(),
        peak_host_bytes: crate::device::memory::peak(),
        peak_device_bytes: device_peak(&opts.device),
        memory,
    })
}

/// The GPU memory pool's peak, when training on a GPU.
fn device_peak(device: &Device) -> Option<usize> {
    (!device.is_cpu())
        .then(|| crate::device::memory::peak_on(device))
        .flatten()
}

/// The validation pass: the loss, and per channel the latitude-weighted RMSE of the
/// model's next state and of persistence (no change), in physical units.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub loss: f64,
    pub rmse: std::collections::BTreeMap<String, f64>,
    pub persistence_rmse: std::collections::BTreeMap<String, f64>,
}

/// Runs the model on `samples` without gradients (None when there are none).
pub fn validate(
    session: &Session,
    stats: &Arc<NormStats>,
    run: &RunConfig,
    samples: &[usize],
    lat_w: &[f32],
    var_w: &[f32],
    prefetch: Prefetch,
) -> anyhow::Result<Option<Validation>> {
    if samples.is_empty() {
        return Ok(None);
    }
    let loader = BatchLoader::new(
        session.dataset.clone(),
        stats.clone(),
        run.window,
        samples,
        run.train.batch_size,
        prefetch,
    )?;
    let channels = stats.channels.len();
    let (mut total, mut count) = (0.0, 0.0);
    let (mut model_sq, mut persist_sq, mut weight) = (
        vec![0.0; channels],
        vec![0.0; channels],
        vec![0.0; channels],
    );
    for batch in loader {
        let batch = batch?;
        let (x, y, valid) = session.tensors(&batch)?;
        let (w, n) = loss_weights(&valid, lat_w, var_w, y.dims3()?, &session.device)?;
        let pred = session.predict(&x)?;
        let valid_entries = valid.iter().filter(|&&v| v).count() as f64;
        total += weighted_mse(&pred, &y, &w, n)?.to_scalar::<f32>()? as f64 * valid_entries;
        count += valid_entries;
        let pred: Vec<f32> = pred
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let target: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let nodes = lat_w.len();
        for (i, ok) in valid.iter().enumerate() {
            if *ok {
                let (c, node) = (i % channels, (i / channels) % nodes);
                let lw = lat_w[node] as f64;
                model_sq[c] += lw * ((pred[i] - target[i]) as f64).powi(2);
                persist_sq[c] += lw * (target[i] as f64).powi(2);
                weight[c] += lw;
            }
        }
    }
    let rmse = |sq: &[f64]| -> std::collections::BTreeMap<String, f64> {
        (0..channels)
            .map(|c| {
                (
                    stats.channels[c].clone(),
                    (sq[c] / weight[c].max(1e-12)).sqrt() * stats.diff_std[c],
                )
            })
            .collect()
    };
    Ok(Some(Validation {
        loss: total / count.max(1.0),
        rmse: rmse(&model_sq),
        persistence_rmse: rmse(&persist_sq),
    }))
}

fn progress_bar(
    show: bool,
    total: usize,
    done: usize,
    epoch: usize,
    epochs: usize,
) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "epoch {}/{epochs} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ETA {{eta}}",
            epoch + 1
        ))
        .expect("valid template"),
    );
    bar.set_position(done as u64);
    bar
}

/// Path of the `best` checkpoint's sidecar in an output directory (for messages).
pub fn best_checkpoint(output_dir: &Path) -> PathBuf {
    checkpoint::files(&output_dir.join("checkpoints"), "best").meta
}
