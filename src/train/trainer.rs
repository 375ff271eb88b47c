//! The training loop of `meshcast train-model`.
//!
//! files -> dataset -> batches (prefetched) -> predictor -> loss -> gradients
//! (accumulated, clipped) -> AdamW with warm-up + cosine schedule; a validation pass and
//! `last`/`best` checkpoints after every epoch; `metrics.jsonl` gets one typed record
//! per step, skipped step and epoch, and a summary. Ctrl-C (the `stop` flag) ends the
//! run after the current step with a `last` checkpoint.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::checkpoint::{self, Checkpoint, CheckpointInterval, CheckpointMeta, FORMAT_VERSION};
use super::config::RunConfig;
use super::fits::check_fits;
use super::loss_scale::{LossScaler, ScaleOutcome, MAX_CONSECUTIVE_SKIPS};
use super::metrics::{MetricsCut, MetricsLog, Record};
use super::optimizer::{AdamW, AdamWParams, FlatGrads};
use super::replicas;
use super::run_dir::RunDir;
use super::schedule::LrSchedule;
use super::session::{valid_cells, variable_weights, Session};
use super::step::{apply_gradients, Applied};
use super::validation::{validate, Validation, ValidationSet};
use crate::data::{
    Batch, BatchAssembler, BatchLoader, Dataset, NormStats, Prefetch, Split, StatsSums,
};
use crate::distributed::{shard, Collective};
use crate::error::InputError;
use crate::predict::unroll::rollout_gradients;
use crate::predict::{LossTarget, Objective, StepGradients};

/// How to run (not what): where, from where, on what.
pub struct TrainOptions {
    pub output_dir: PathBuf,
    pub resume: bool,
    pub overwrite: bool,
    pub graph_cache: Option<PathBuf>,
    pub device: Device,
    /// Set to the signal's number by SIGINT or SIGTERM: finish the current step, save
    /// `last`, stop.
    pub stop: Arc<AtomicI32>,
    pub progress: bool,
    /// Without a progress bar on a terminal (batch jobs): log a line every this many
    /// optimizer steps.
    pub log_every: usize,
    /// Refuse a run the planner predicts not to fit the device's free memory.
    pub memory_check: bool,
    /// Saves of `last` inside an epoch (besides each epoch's end).
    pub checkpoint_interval: Option<CheckpointInterval>,
    /// The processes training this model together (data parallelism; one process:
    /// [`crate::distributed::Single`]). Only rank 0 writes the run's files.
    pub collective: Rc<dyn Collective>,
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
    pub memory: crate::memory::MemoryBreakdown,
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

/// The `last` checkpoint of `--resume`, refused when it belongs to another run or data.
fn resume_checkpoint(
    run: &RunConfig,
    opts: &TrainOptions,
    dataset: &Dataset,
) -> anyhow::Result<Option<Checkpoint>> {
    if !opts.resume {
        return Ok(None);
    }
    let ckpt_dir = opts.output_dir.join("checkpoints");
    let ck = checkpoint::load(&ckpt_dir, "last", &opts.device)?;
    if dataset.channel_names() != ck.meta.stats.channels {
        return Err(InputError(format!(
            "cannot resume from {}: it was trained on channels [{}], the data has [{}]",
            ckpt_dir.display(),
            ck.meta.stats.channels.join(", "),
            dataset.channel_names().join(", ")
        ))
        .into());
    }
    if let Some(why) = run.resume_mismatch(&ck.meta.run) {
        return Err(InputError(format!("cannot resume from {}: {why}", ckpt_dir.display())).into());
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
    Ok(Some(ck))
}

/// The run's session, once the planner predicts that its step fits the memory free
/// on the device (the graph is built first; no model tensor exists before the check).
fn checked_session(
    run: &RunConfig,
    opts: &TrainOptions,
    dataset: Arc<Dataset>,
) -> anyhow::Result<Session> {
    check_patch_parallel(run, opts)?;
    // Rank 0 builds (and caches) the graph first; the others then load it.
    let c = opts.collective.as_ref();
    let valid = valid_cells(&dataset, c)?;
    let graph = || Session::graph(run, &dataset, &valid, opts.graph_cache.as_deref());
    let (splits, graph) = match c.rank() {
        0 => graph().inspect(|_| c.barrier())?,
        _ => {
            c.barrier();
            graph()?
        }
    };
    match crate::memory::available_on(&opts.device) {
        Some(available) if opts.memory_check => {
            let mine = per_rank(run, opts);
            check_fits(
                &mine,
                &graph,
                &dataset.grid,
                &available,
                opts.device.is_cpu(),
            )?
        }
        _ => {}
    }
    let mut execution = run.execution();
    if patch_parallel(run, opts) {
        let c = &opts.collective;
        execution.patch_share = (c.rank(), c.size());
    }
    Session::with_graph(run, execution, dataset, splits, graph, &opts.device)
}

/// Refuses what patch-parallel training cannot do: ranks without a patch, rollouts
/// (each step's input gradient would need the other ranks' patches).
fn check_patch_parallel(run: &RunConfig, opts: &TrainOptions) -> anyhow::Result<()> {
    let ranks = opts.collective.size();
    if patch_parallel(run, opts) && run.train.patches < ranks {
        crate::bail_input!(
            "--patches {} over {ranks} ranks: patch-parallel training needs a patch per rank at least",
            run.train.patches
        );
    }
    if patch_parallel(run, opts) && run.train.max_rollout_steps() > 1 {
        return Err(InputError(
            "--rollout-steps above 1 with --patches over several ranks (patch-parallel training) is not supported: \
             drop --patches (the ranks then share out the samples) or train in one process"
                .into(),
        )
        .into());
    }
    Ok(())
}

/// The run as one rank of those at hand computes it (what its memory check plans): its
/// share of the global batch (a run resumed on fewer ranks than it started with takes
/// more samples per rank), or with patches its share of them.
fn per_rank(run: &RunConfig, opts: &TrainOptions) -> RunConfig {
    let mut mine = run.clone();
    let ranks = opts.collective.size();
    if !patch_parallel(run, opts) {
        mine.train.batch_size = run.train.global_batch().div_ceil(ranks);
    }
    mine.train.ranks = ranks;
    mine
}

/// Patches over several ranks: each rank takes the whole batch and the gradients of
/// its share of the patches (else, several ranks share out the samples).
fn patch_parallel(run: &RunConfig, opts: &TrainOptions) -> bool {
    run.execution().patches.is_some() && opts.collective.size() > 1
}

/// Refuses a checkpoint whose position lies outside the run (an edited sidecar).
fn check_position(
    meta: &CheckpointMeta,
    micro_per_epoch: usize,
    output_dir: &Path,
) -> anyhow::Result<()> {
    if meta.batch_in_epoch >= micro_per_epoch.max(1) {
        return Err(InputError(format!(
            "cannot resume from {}: the checkpoint is at batch {} of an epoch of {micro_per_epoch} (damaged or edited checkpoint)",
            checkpoint::sidecar(&output_dir.join("checkpoints"), "last").display(),
            meta.batch_in_epoch
        ))
        .into());
    }
    Ok(())
}

/// How much of `metrics.jsonl` a resumed run keeps: what was written up to its checkpoint.
fn metrics_cut(resumed: Option<&Checkpoint>) -> Option<MetricsCut> {
    resumed.map(|ck| match ck.meta.metrics_bytes {
        Some(bytes) => MetricsCut::Bytes(bytes),
        None => MetricsCut::ThroughStep(ck.meta.step),
    })
}

/// Trains `run` and returns the summary. The caller has validated nothing; this does.
pub fn train(run: &RunConfig, opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    Trainer::new(run, opts)?.run()
}

/// Where the run stands: what a checkpoint records and the summary reports.
#[derive(Debug, Default)]
struct Progress {
    /// Epoch in progress (0-based) and micro-batches of it consumed before this process
    /// started it (a resumed run skips them).
    epoch: usize,
    skip_micro: usize,
    best_val: Option<f64>,
    last_train: Option<f64>,
    last_val: Option<f64>,
    samples_seen: usize,
    interrupted: bool,
}

/// Micro-batch gradients and losses (this rank's parts) waiting for the optimizer.
#[derive(Default)]
struct Accumulator {
    /// The sum of the micro-batches' flat gradients (None before the first).
    grads: Option<FlatGrads>,
    losses: Vec<f64>,
    count: usize,
}

impl Accumulator {
    fn add(&mut self, grads: FlatGrads) -> candle_core::Result<()> {
        match &mut self.grads {
            Some(sum) => sum.add(&grads),
            None => {
                self.grads = Some(grads);
                Ok(())
            }
        }
    }
}

/// What an optimizer step leaves for the epoch's loop.
struct StepEnd {
    /// Each micro-batch's loss over the global batch.
    losses: Vec<f64>,
    /// SIGINT or SIGTERM arrived at some rank.
    signalled: bool,
    /// The progress bar's message; None when the step was skipped (f16 overflow).
    message: Option<String>,
}

/// The mean training loss of the epoch in progress (over finite micro-batch losses).
#[derive(Default)]
struct EpochLoss {
    sum: f64,
    batches: usize,
}

impl EpochLoss {
    /// Adds the finite ones of `losses`.
    fn add(&mut self, losses: &[f64]) {
        for loss in losses.iter().filter(|l| l.is_finite()) {
            self.sum += loss;
            self.batches += 1;
        }
    }

    fn mean(&self) -> f64 {
        self.sum / self.batches.max(1) as f64
    }
}

/// How an epoch ended.
enum EpochEnd {
    /// With its mean training loss and when its first batch was asked for.
    Completed { loss: f64, started: Instant },
    /// `--max-steps` or Ctrl-C inside the epoch: `last` is saved, the run ends.
    Stopped,
}

/// A new run's starting weights (`--init-from`): a checkpoint of the same model on
/// the same channels (a resumed run restores its own instead).
fn init_checkpoint(
    run: &RunConfig,
    opts: &TrainOptions,
    dataset: &Dataset,
) -> anyhow::Result<Option<Checkpoint>> {
    let Some(path) = run.train.init_from.as_ref().filter(|_| !opts.resume) else {
        return Ok(None);
    };
    let (dir, name) = checkpoint::locate(path, "best")?;
    let ck = checkpoint::load(&dir, &name, &opts.device)?;
    let theirs = &ck.meta.run.model;
    let refuse = |why: String| -> anyhow::Result<Option<Checkpoint>> {
        Err(InputError(format!("--init-from {}: {why}", path.display())).into())
    };
    if dataset.channel_names() != ck.meta.stats.channels {
        return refuse(format!(
            "trained on channels [{}], the data has [{}]",
            ck.meta.stats.channels.join(", "),
            dataset.channel_names().join(", ")
        ));
    }
    if theirs.forcings() != run.model.forcings() || theirs.static_inputs != run.model.static_inputs
    {
        return refuse(format!(
            "its model takes forcings {:?} and {} static inputs, this run's {:?} and {}",
            theirs.forcings(),
            theirs.static_inputs,
            run.model.forcings(),
            run.model.static_inputs
        ));
    }
    tracing::info!(
        "weights from {} (step {}), normalisation kept",
        checkpoint::sidecar(&dir, &name).display(),
        ck.meta.step
    );
    Ok(Some(ck))
}

/// The run's normalisation: the checkpoint's when it starts from one (every rank loaded
/// it); else computed from the training block, each of several ranks summing its share
/// of the steps. Rank 0 saves it as stats.json.
fn run_stats(
    from: Option<&Checkpoint>,
    opts: &TrainOptions,
    session: &Session,
) -> anyhow::Result<NormStats> {
    let path = opts.output_dir.join("stats.json");
    let c = opts.collective.as_ref();
    let (dataset, splits) = (session.dataset.as_ref(), &session.splits);
    let stats = match from {
        Some(ck) if opts.resume => return Ok(ck.meta.stats.clone()),
        Some(ck) => ck.meta.stats.clone(),
        None if c.size() == 1 => return NormStats::load_or_compute(&path, dataset, splits),
        None => {
            let share = shard(splits.steps(Split::Train).count(), c.rank(), c.size());
            let mut sums = StatsSums::over(dataset, splits, share)?.to_vec();
            c.all_reduce_f64(&mut sums)?;
            NormStats::from_sums(dataset, splits, &StatsSums::from_vec(&sums))?
        }
    };
    if c.rank() == 0 {
        stats.save(&path)?;
    }
    Ok(stats)
}

/// The training samples: windows that hold the run's longest rollout (refused when
/// there are none).
fn train_samples(run: &RunConfig, session: &Session) -> anyhow::Result<Vec<usize>> {
    let rollout = run.train.max_rollout_steps();
    let samples = session.splits.rollout_samples(Split::Train, rollout);
    if samples.is_empty() {
        let longest = match rollout {
            1 => String::new(),
            k => format!(" that holds a rollout of {k} steps"),
        };
        let files = session.dataset.file_list();
        return Err(InputError(format!(
            "{files}: the training block has no sample{longest}"
        ))
        .into());
    }
    Ok(samples)
}

/// Rank 0's run directory, locked and checked (the other ranks of a data-parallel run
/// write nothing).
fn writer_run_dir(opts: &TrainOptions) -> anyhow::Result<Option<RunDir>> {
    if opts.collective.rank() != 0 {
        return Ok(None);
    }
    let run_dir = RunDir::lock(&opts.output_dir)?;
    run_dir.check_start(opts.resume, opts.overwrite)?;
    Ok(Some(run_dir))
}

struct Trainer<'a> {
    run: &'a RunConfig,
    opts: &'a TrainOptions,
    session: Session,
    stats: Arc<NormStats>,
    train_samples: Vec<usize>,
    val_samples: Vec<usize>,
    lat_w: Vec<f32>,
    var_w: Vec<f32>,
    micro_per_epoch: usize,
    schedule: LrSchedule,
    adamw: AdamWParams,
    optimizer: AdamW,
    scaler: Option<LossScaler>,
    metrics: MetricsLog,
    prefetch: Prefetch,
    progress: Progress,
    /// Live bytes before graph and model existed: the memory breakdown's baseline.
    baseline: Option<u64>,
    started: Instant,
    /// The step this process started from (a resumed run's ETA counts its own steps).
    first_step: usize,
    /// When `last` was last saved (for a time-based --checkpoint-interval).
    last_save: Instant,
    /// Held for the run's lifetime: no second process writes into this directory
    /// (rank 0's; the other ranks of a data-parallel run write nothing).
    run_dir: Option<RunDir>,
    /// Seconds spent summing gradients over the ranks.
    exchange_seconds: f64,
}

impl<'a> Trainer<'a> {
    /// Validates the run, prepares the output directory, builds the session and the
    /// optimizer, and restores a resumed run's state.
    fn new(run: &'a RunConfig, opts: &'a TrainOptions) -> anyhow::Result<Trainer<'a>> {
        run.validate()?;
        let run_dir = writer_run_dir(opts)?;
        let dataset = Arc::new(Dataset::open(&run.data)?);
        tracing::info!("data: {}", dataset.summary_line());
        // A window the data cannot hold is refused before anything is written.
        crate::data::Splits::new(&dataset.time, &run.split, run.window)
            .map_err(|e| InputError(format!("{}: {}", dataset.file_list(), e.0)))?;
        let resumed = resume_checkpoint(run, opts, &dataset)?;
        let init = init_checkpoint(run, opts, &dataset)?;
        let baseline = crate::memory::current_on(&opts.device).map(|b| b as u64);
        let session = checked_session(run, opts, dataset.clone())?;
        let train_samples = train_samples(run, &session)?;
        let identity = format!("{run:?} {} {}", dataset.fingerprint, train_samples.len());
        replicas::check_same_run(opts.collective.as_ref(), &identity)?;
        // Everything that can refuse the run has run: only now may an old run go.
        // Every rank has read what it needs from the directory before rank 0 clears it.
        opts.collective.barrier();
        if let Some(dir) = &run_dir {
            dir.start(run, opts.overwrite && !opts.resume)?;
        }
        let from = resumed.as_ref().or(init.as_ref());
        let stats = Arc::new(run_stats(from, opts, &session)?);
        let rollout = run.train.max_rollout_steps();
        let micro_per_epoch = train_samples.len().div_ceil(run.train.global_batch());
        if let Some(ck) = &resumed {
            check_position(&ck.meta, micro_per_epoch, &opts.output_dir)?;
        }
        let adamw = AdamWParams {
            weight_decay: run.train.weight_decay,
            ..Default::default()
        };
        let vars = session.network().vars().to_vec();
        crate::predict::init::init_parameters(&vars, run.train.seed)?;
        if let Some(ck) = &init {
            ck.restore_weights(&vars)?;
        }
        let mut trainer = Trainer {
            run,
            opts,
            val_samples: session.splits.rollout_samples(Split::Validation, rollout),
            lat_w: session.node_latitude_weights(),
            var_w: variable_weights(run, &stats),
            schedule: schedule_for(run, micro_per_epoch.div_ceil(run.train.grad_accum_steps)),
            optimizer: AdamW::new(vars, adamw)?,
            scaler: run.train.mixed_precision.needs_loss_scaling().then(|| {
                LossScaler::new(
                    run.train.initial_loss_scale,
                    run.train.loss_scale_growth_interval,
                )
            }),
            metrics: match run_dir {
                Some(_) => MetricsLog::open(&opts.output_dir, metrics_cut(resumed.as_ref()))?,
                None => MetricsLog::discarding(),
            },
            prefetch: match run.train.use_prefetch {
                true => Prefetch::Buffer(run.train.prefetch_buffer_size),
                false => Prefetch::Off,
            },
            progress: Progress::default(),
            started: Instant::now(),
            last_save: Instant::now(),
            first_step: 0,
            run_dir,
            exchange_seconds: 0.0,
            session,
            stats,
            train_samples,
            micro_per_epoch,
            adamw,
            baseline,
        };
        if let Some(ck) = resumed {
            trainer.restore(&ck)?;
        }
        replicas::broadcast_state(opts.collective.as_ref(), &mut trainer.optimizer)?;
        trainer.log_start();
        Ok(trainer)
    }

    /// Weights, moments, loss scale and position of a resumed run.
    fn restore(&mut self, ck: &Checkpoint) -> anyhow::Result<()> {
        ck.restore(&mut self.optimizer)?;
        if self.scaler.is_some() {
            self.scaler = ck.meta.loss_scaler.or(self.scaler);
        }
        let p = &mut self.progress;
        (p.epoch, p.skip_micro, p.best_val) =
            (ck.meta.epoch, ck.meta.batch_in_epoch, ck.meta.best_val_loss);
        tracing::info!(
            "resumed at step {} (epoch {}, batch {})",
            ck.meta.step,
            p.epoch + 1,
            p.skip_micro
        );
        Ok(())
    }

    fn log_start(&self) {
        tracing::info!(
            "model: {} parameters, latent {}, {} processor layers; {} training samples, {} validation; {} steps per epoch",
            self.session.network().parameter_count(),
            self.run.model.latent_size,
            self.run.model.num_gnn_layers,
            self.train_samples.len(),
            self.val_samples.len(),
            self.micro_per_epoch.div_ceil(self.run.train.grad_accum_steps)
        );
        if let Some(line) = self.parallelism() {
            tracing::info!("{line}");
        }
    }

    /// How the ranks share the work, when there are several (or were at the start).
    fn parallelism(&self) -> Option<String> {
        let (c, train) = (self.opts.collective.as_ref(), &self.run.train);
        let (ranks, global) = (c.size(), train.global_batch());
        if patch_parallel(self.run, self.opts) {
            let share = crate::distributed::shard(train.patches, c.rank(), ranks);
            return Some(format!(
                "patch parallelism: {ranks} ranks ({}), each every sample of the batch of {global} on its patches' rows; rank {} takes patches {}..{} of {}",
                c.transport(),
                c.rank(),
                share.start + 1,
                share.end,
                train.patches
            ));
        }
        (ranks > 1 || train.ranks > 1).then(|| {
            format!(
                "data parallelism: {ranks} ranks ({}), global batch {global} (the run started on {} ranks), up to {} samples per rank",
                c.transport(),
                train.ranks,
                global.div_ceil(ranks)
            )
        })
    }

    /// Epochs until the last, `--max-steps` or Ctrl-C; then the summary.
    fn run(mut self) -> anyhow::Result<TrainSummary> {
        self.started = Instant::now();
        self.first_step = self.optimizer.step_t;
        while self.progress.epoch < self.run.train.num_epochs {
            match self.train_epoch()? {
                EpochEnd::Stopped => break,
                EpochEnd::Completed { loss, started } => self.end_epoch(loss, started)?,
            }
            let hit_max = self
                .run
                .train
                .max_steps
                .is_some_and(|m| self.optimizer.step_t >= m);
            let signalled = self.agreed_signal()?;
            if signalled || hit_max {
                self.progress.interrupted = signalled;
                break;
            }
        }
        self.finish()
    }

    /// This rank's share of each global micro-batch of the epoch in progress (after
    /// those a resumed run consumed), and each global micro-batch's size.
    fn epoch_shares(&self, epoch: usize, skip: usize) -> (Vec<Vec<usize>>, Vec<usize>) {
        let train = &self.run.train;
        let order = epoch_order(&self.train_samples, train.seed, epoch);
        let global = train.global_batch();
        let remaining = &order[(skip * global).min(order.len())..];
        let c = self.opts.collective.as_ref();
        let (rank, ranks) = match patch_parallel(self.run, self.opts) {
            true => (0, 1),
            false => (c.rank(), c.size()),
        };
        remaining
            .chunks(global)
            .map(|chunk| (chunk[shard(chunk.len(), rank, ranks)].to_vec(), chunk.len()))
            .unzip()
    }

    /// The micro-batches of the epoch in progress (after those a resumed run consumed).
    fn train_epoch(&mut self) -> anyhow::Result<EpochEnd> {
        let (run, epoch) = (self.run, self.progress.epoch);
        let skip = std::mem::take(&mut self.progress.skip_micro);
        let (shares, global_sizes) = self.epoch_shares(epoch, skip);
        let rollout = run.train.rollout_steps_at(epoch);
        if rollout > 1 {
            tracing::info!("epoch {}: rollout of {rollout} steps", epoch + 1);
        }
        let largest = shares.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let assembler = BatchAssembler::new(
            self.session.batch_data.clone(),
            self.stats.clone(),
            (run.window, rollout),
            largest,
        )
        .with_extras(self.session.extras_fn());
        let loader = BatchLoader::from_assembler(assembler, shares, self.prefetch)?;
        let bar = progress_bar(
            self.opts.progress,
            self.micro_per_epoch,
            skip,
            epoch,
            run.train.num_epochs,
        );
        let (mut micro, mut loss) = (skip, EpochLoss::default());
        let mut accum = Accumulator::default();
        let started = Instant::now();
        for (batch, global_size) in loader.zip(global_sizes) {
            self.micro_step(&batch?, &mut accum)?;
            self.progress.samples_seen += global_size;
            micro += 1;
            let end_of_epoch = micro == self.micro_per_epoch;
            if accum.count == run.train.grad_accum_steps || end_of_epoch {
                let step = self.optimizer_step(&mut accum)?;
                loss.add(&step.losses);
                if let Some(message) = step.message {
                    bar.set_message(message);
                    if !end_of_epoch && (step.signalled || self.hit_max_steps()) {
                        bar.finish_and_clear();
                        self.stop_mid_epoch(micro, loss.mean(), step.signalled)?;
                        return Ok(EpochEnd::Stopped);
                    }
                    if !end_of_epoch && self.interval_save_due() {
                        self.save(&["last"], micro, Some(loss.mean()), self.progress.last_val)?;
                    }
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(EpochEnd::Completed {
            loss: loss.mean(),
            started,
        })
    }

    /// Gradients of one micro-batch (this rank's share of it) added to `accum`, with
    /// its loss (this share's part of the mean over the global batch's valid entries,
    /// unscaled).
    fn micro_step(&mut self, batch: &Batch, accum: &mut Accumulator) -> anyhow::Result<()> {
        let train = &self.run.train;
        // Scaled for accumulation and by the f16 loss scale.
        let accum_scale = train.grad_accum_steps as f64;
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
        accum.count += 1;
        let Some(step) = self.batch_gradients(batch, accum_scale / loss_scale)? else {
            accum.losses.push(0.0);
            return Ok(());
        };
        let loss_value = step.loss * accum_scale / loss_scale;
        // Under f16 an overflow is the loss scaler's to handle (the step is skipped).
        if !loss_value.is_finite() && self.scaler.is_none() {
            anyhow::bail!(
                "the loss became {loss_value} at step {} (epoch {}): stopping without writing a checkpoint; \
                 try a lower --learning-rate",
                self.optimizer.step_t + 1,
                self.progress.epoch + 1
            );
        }
        accum.add(self.optimizer.pack(&step.grads)?)?;
        accum.losses.push(loss_value);
        Ok(())
    }

    /// Gradients of one batch (one step, or a rollout when it has K targets), its loss
    /// denominators counting every rank's share of the global batch and multiplied by
    /// `scale`; None for an empty share (which still takes part in the count).
    fn batch_gradients(&self, batch: &Batch, scale: f64) -> anyhow::Result<Option<StepGradients>> {
        let (session, weights) = (&self.session, (&self.lat_w[..], &self.var_w[..]));
        let checkpoint_every = session.execution.checkpoint_every;
        let present = !batch.is_empty();
        if batch.rollout_steps > 1 {
            let rollout = |b| session.rollout_batch(b, weights, &self.stats);
            let mut rb = present.then(|| rollout(batch)).transpose()?;
            let targets = rb.as_mut().map_or(&mut [][..], |rb| &mut rb.targets[..]);
            self.count_globally(targets, batch.rollout_steps, scale)?;
            let predictor = session.predictor.as_ref();
            return Ok(rb
                .map(|rb| rollout_gradients(predictor, &rb, checkpoint_every))
                .transpose()?);
        }
        let tensors = |b| session.tensors(b, weights.0, weights.1);
        let Some((x, target, _)) = present.then(|| tensors(batch)).transpose()? else {
            self.count_globally(&mut [], 1, scale)?;
            return Ok(None);
        };
        let mut targets = [target];
        self.count_globally(&mut targets, 1, scale)?;
        let objective = Objective::Loss(&targets[0]);
        Ok(Some(session.predictor.gradients(
            &x,
            objective,
            checkpoint_every,
        )?))
    }

    /// Each of `steps` loss targets (none for an empty share) takes the valid entries
    /// of every rank's share as its denominator, times `scale`. Every rank calls this
    /// once per micro-batch.
    fn count_globally(
        &self,
        targets: &mut [LossTarget],
        steps: usize,
        scale: f64,
    ) -> anyhow::Result<()> {
        let mut counts = vec![0.0; steps];
        for (count, t) in counts.iter_mut().zip(targets.iter()) {
            *count = t.entries as f64;
        }
        // Data-parallel ranks count their samples, patch-parallel ones their nodes.
        self.opts.collective.all_reduce_f64(&mut counts)?;
        for (t, count) in targets.iter_mut().zip(counts) {
            t.count_globally(count as usize);
            t.denominator *= scale;
        }
        Ok(())
    }

    /// Sums the micro-batches' gradients and losses over the ranks (and whether any
    /// rank was signalled), then applies them and logs the step; no message when f16
    /// gradients overflowed and the step was skipped.
    fn optimizer_step(&mut self, accum: &mut Accumulator) -> anyhow::Result<StepEnd> {
        let taken = std::mem::take(accum);
        let mut losses = taken.losses;
        let mut grads = match taken.grads {
            Some(g) => g,
            None => self.optimizer.no_grads()?,
        };
        let exchange = Instant::now();
        replicas::sum_gradients(self.opts.collective.as_ref(), &mut grads)?;
        losses.push(self.signalled() as u8 as f64);
        self.opts.collective.all_reduce_f64(&mut losses)?;
        self.exchange_seconds += exchange.elapsed().as_secs_f64();
        let signalled = losses.pop().is_some_and(|s| s > 0.0);
        let loss = *losses.last().expect("an optimizer step has a micro-batch");
        // A short last accumulation: rescaled to the mean over the micro-batches taken.
        let rescale = self.run.train.grad_accum_steps as f64 / taken.count as f64;
        let message = self.apply(&grads, rescale, loss)?;
        Ok(StepEnd {
            losses,
            signalled,
            message,
        })
    }

    /// Applies summed gradients (times `multiplier`, and unscaled under f16) and logs
    /// the step; None when f16 gradients overflowed and the step was skipped.
    fn apply(
        &mut self,
        grads: &FlatGrads,
        multiplier: f64,
        loss: f64,
    ) -> anyhow::Result<Option<String>> {
        let inverse_scale = self.scaler.map_or(1.0, |s| s.inverse());
        let lr = self.schedule.at(self.optimizer.step_t);
        let clip = self.run.train.grad_clip;
        let applied = apply_gradients(
            &mut self.optimizer,
            grads,
            multiplier * inverse_scale,
            clip,
            lr,
        )?;
        if let Some(s) = self.scaler.as_mut() {
            if let ScaleOutcome::Skip { from, to } = s.update(applied != Applied::NotFinite) {
                self.skip_step(loss, from, to)?;
                return Ok(None);
            }
        }
        let Applied::Updated { norm: grad_norm } = applied else {
            anyhow::bail!(
                "the gradients became NaN or infinite at step {} (epoch {}): stopping without writing a checkpoint; \
                 try a lower --learning-rate",
                self.optimizer.step_t + 1,
                self.progress.epoch + 1
            );
        };
        let rate = self.progress.samples_seen as f64 / self.started.elapsed().as_secs_f64();
        self.metrics.write(&Record::Step {
            step: self.optimizer.step_t,
            epoch: self.progress.epoch + 1,
            loss,
            lr,
            grad_norm,
            samples_per_s: rate,
            loss_scale: self.scaler.map(|s| s.scale),
        })?;
        self.log_step(loss, lr, rate);
        Ok(Some(format!(
            "loss {loss:.4} lr {lr:.2e} {rate:.1} samples/s"
        )))
    }

    /// Every `log_every` steps when no progress bar is drawn: a log line with the
    /// run's ETA (what a batch job's log file shows instead of the bar).
    fn log_step(&self, loss: f64, lr: f64, rate: f64) {
        let step = self.optimizer.step_t;
        let bar_drawn = self.opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
        if bar_drawn || self.opts.log_every == 0 || !step.is_multiple_of(self.opts.log_every) {
            return;
        }
        let last = self
            .run
            .train
            .max_steps
            .unwrap_or(self.schedule.total_steps)
            .min(self.schedule.total_steps);
        let done_here = step.saturating_sub(self.first_step).max(1);
        let per_step = self.started.elapsed().as_secs_f64() / done_here as f64;
        let eta = per_step * last.saturating_sub(step) as f64;
        tracing::info!(
            "step {step}/{last} (epoch {}): loss {loss:.5}, lr {lr:.2e}, {rate:.1} samples/s, ETA {}",
            self.progress.epoch + 1,
            format_duration(eta)
        );
    }

    /// Logs a step skipped for overflowing f16 gradients; stops a run that keeps overflowing.
    fn skip_step(&mut self, loss: f64, from: f64, to: f64) -> anyhow::Result<()> {
        tracing::warn!(
            "step {} skipped: f16 gradients overflowed (not finite); loss scale {from} -> {to}",
            self.optimizer.step_t + 1
        );
        self.metrics.write(&Record::Skip {
            step: self.optimizer.step_t,
            epoch: self.progress.epoch + 1,
            reason: "non-finite gradients",
            loss,
            loss_scale_from: from,
            loss_scale_to: to,
        })?;
        if self
            .scaler
            .is_some_and(|s| s.consecutive_skips >= MAX_CONSECUTIVE_SKIPS)
        {
            anyhow::bail!(
                "{MAX_CONSECUTIVE_SKIPS} optimizer steps in a row overflowed in f16 (loss scale now {to}): \
                 the activations themselves leave f16's range; use --mixed-precision bf16"
            );
        }
        Ok(())
    }

    /// `--max-steps` reached.
    fn hit_max_steps(&self) -> bool {
        self.run
            .train
            .max_steps
            .is_some_and(|m| self.optimizer.step_t >= m)
    }

    /// --checkpoint-interval says `last` is due.
    fn interval_save_due(&self) -> bool {
        self.opts
            .checkpoint_interval
            .is_some_and(|i| i.due(self.optimizer.step_t, self.last_save.elapsed()))
    }

    /// SIGINT or SIGTERM arrived at this process.
    fn signalled(&self) -> bool {
        self.opts.stop.load(Ordering::Relaxed) != 0
    }

    /// SIGINT or SIGTERM arrived at any rank: every rank stops at the same step.
    fn agreed_signal(&self) -> anyhow::Result<bool> {
        let mut flag = [self.signalled() as u8 as f64];
        self.opts.collective.all_reduce_f64(&mut flag)?;
        Ok(flag[0] > 0.0)
    }

    /// Saves `last` inside the epoch (at micro-batch `micro`) and ends the run
    /// (`stop_now`: for a signal, else for --max-steps).
    fn stop_mid_epoch(
        &mut self,
        micro: usize,
        train_loss: f64,
        stop_now: bool,
    ) -> anyhow::Result<()> {
        let meta = self.save(&["last"], micro, Some(train_loss), self.progress.last_val)?;
        self.progress.last_train = meta.train_loss;
        self.progress.interrupted = stop_now;
        let step = self.optimizer.step_t;
        if stop_now {
            tracing::warn!(
                "interrupted: saved checkpoints/last at step {step}; continue with --resume"
            );
        } else {
            tracing::info!("--max-steps {step} reached: saved checkpoints/last");
        }
        Ok(())
    }

    /// Validation, `last` (and `best`) checkpoints and the epoch's record.
    fn end_epoch(&mut self, train_loss: f64, epoch_started: Instant) -> anyhow::Result<()> {
        replicas::check_replicas(self.opts.collective.as_ref(), &self.optimizer)?;
        let validation = validate(&self.session, &self.validation_set())?;
        let val_loss = validation.as_ref().map(|v| v.loss);
        let p = &mut self.progress;
        // A missing or non-finite validation loss never makes a checkpoint the best.
        let improved = match (val_loss.filter(|v| v.is_finite()), p.best_val) {
            (Some(v), Some(b)) => v < b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if improved {
            p.best_val = val_loss;
        }
        p.epoch += 1;
        let last_epoch = p.epoch == self.run.train.num_epochs;
        let names: &[&str] = if improved || (self.val_samples.is_empty() && last_epoch) {
            &["last", "best"]
        } else {
            &["last"]
        };
        let seconds = epoch_started.elapsed().as_secs_f64();
        // The record first, so that the checkpoint's metrics length includes it.
        self.metrics.write(&Record::Epoch {
            epoch: self.progress.epoch,
            step: self.optimizer.step_t,
            train_loss,
            val_loss,
            best_val_loss: self.progress.best_val,
            seconds,
            peak_host_bytes: crate::memory::peak(),
            peak_device_bytes: device_peak(&self.opts.device),
            val_rmse: validation.as_ref().map(|v| &v.rmse),
            persistence_rmse: validation.as_ref().map(|v| &v.persistence_rmse),
            val_unscored: validation.as_ref().map_or(&[], |v| &v.unscored),
            rollout_steps: self.run.train.rollout_steps_at(self.progress.epoch - 1),
        })?;
        self.save(names, 0, Some(train_loss), val_loss)?;
        self.log_epoch(train_loss, val_loss, validation.as_ref(), seconds);
        (self.progress.last_train, self.progress.last_val) = (Some(train_loss), val_loss);
        Ok(())
    }

    fn validation_set(&self) -> ValidationSet<'_> {
        ValidationSet {
            samples: &self.val_samples,
            stats: self.stats.clone(),
            window: self.run.window,
            rollout_steps: self.run.train.max_rollout_steps(),
            batch_size: self.run.train.batch_size,
            prefetch: self.prefetch,
            collective: self.opts.collective.as_ref(),
            lat_w: &self.lat_w,
            var_w: &self.var_w,
            progress: self.opts.progress,
        }
    }

    fn log_epoch(
        &self,
        train_loss: f64,
        val_loss: Option<f64>,
        validation: Option<&Validation>,
        seconds: f64,
    ) {
        tracing::info!(
            "epoch {}/{}: train loss {train_loss:.5}, validation loss {}, {seconds:.1} s",
            self.progress.epoch,
            self.run.train.num_epochs,
            val_loss.map_or("-".into(), |v| format!("{v:.5}")),
        );
        if let Some(v) = validation {
            let mut parts: Vec<String> = v
                .rmse
                .iter()
                .map(|(name, r)| {
                    format!(
                        "{name} {r:.4} (persistence {:.4})",
                        v.persistence_rmse[name]
                    )
                })
                .collect();
            if !v.unscored.is_empty() {
                parts.push(format!("no valid target for {}", v.unscored.join(", ")));
            }
            tracing::info!(
                "validation RMSE at lead {}: {}",
                self.run.window.lead_steps,
                parts.join(", ")
            );
        }
    }

    /// Writes checkpoints `names` at the current step, micro-batch `batch_in_epoch` of
    /// the epoch in progress.
    fn save(
        &mut self,
        names: &[&str],
        batch_in_epoch: usize,
        train_loss: Option<f64>,
        val_loss: Option<f64>,
    ) -> anyhow::Result<CheckpointMeta> {
        let run = self.run;
        let mut meta = CheckpointMeta {
            format_version: FORMAT_VERSION,
            meshcast_version: env!("CARGO_PKG_VERSION").into(),
            step: self.optimizer.step_t,
            epoch: self.progress.epoch,
            batch_in_epoch,
            train_loss,
            val_loss,
            best_val_loss: self.progress.best_val,
            run: run.clone(),
            stats: (*self.stats).clone(),
            adamw: self.adamw,
            schedule: self.schedule,
            rng: format!("chacha8(seed {} ^ epoch * golden)", run.train.seed),
            data_fingerprint: self.session.dataset.fingerprint.clone(),
            loss_scaler: self.scaler,
            weights_sha256: String::new(),
            optimizer_sha256: String::new(),
            weights_file: None,
            optimizer_file: None,
            metrics_bytes: Some(self.metrics.bytes()),
        };
        let dir = self.opts.output_dir.join("checkpoints");
        // Rank 0 writes for every rank (their states are equal, `check_replicas`).
        let writes = if self.run_dir.is_some() { names } else { &[] };
        for name in writes {
            checkpoint::save(&dir, name, &self.optimizer, &mut meta)?;
        }
        self.last_save = Instant::now();
        Ok(meta)
    }

    /// The memory report, the summary record and the summary.
    fn finish(mut self) -> anyhow::Result<TrainSummary> {
        let seconds = self.started.elapsed().as_secs_f64();
        let memory = self.session.memory_breakdown(self.baseline);
        log_memory(&memory);
        let ranks = self.opts.collective.size();
        if ranks > 1 {
            tracing::info!(
                "data parallelism over {ranks} ranks: {:.2} s summing gradients ({:.1}% of the run)",
                self.exchange_seconds,
                100.0 * self.exchange_seconds / seconds.max(1e-9)
            );
        }
        let samples_per_second = self.progress.samples_seen as f64 / seconds.max(1e-9);
        let skipped_steps = self.scaler.map_or(0, |s| s.skipped_steps);
        self.metrics.write(&Record::Summary {
            steps: self.optimizer.step_t,
            seconds,
            skipped_steps,
            mixed_precision: self.run.train.mixed_precision,
            samples_per_s: samples_per_second,
            memory: &memory,
            ranks: self.opts.collective.size(),
            exchange_seconds: self.exchange_seconds,
        })?;
        let p = &self.progress;
        Ok(TrainSummary {
            steps: self.optimizer.step_t,
            epochs_completed: p.epoch,
            train_loss: p.last_train,
            val_loss: p.last_val,
            best_val_loss: p.best_val,
            seconds,
            samples_per_second,
            parameters: self.session.network().parameter_count(),
            interrupted: p.interrupted,
            skipped_steps,
            output_dir: self.opts.output_dir.clone(),
            peak_host_bytes: crate::memory::peak(),
            peak_device_bytes: device_peak(&self.opts.device),
            memory,
        })
    }
}

/// Linear warm-up (at most half the run) and cosine decay over every epoch's steps.
fn schedule_for(run: &RunConfig, steps_per_epoch: usize) -> LrSchedule {
    LrSchedule {
        peak: run.train.learning_rate,
        warmup_steps: run
            .train
            .warmup_steps
            .min(steps_per_epoch * run.train.num_epochs / 2),
        total_steps: steps_per_epoch * run.train.num_epochs,
        final_fraction: run.train.final_lr_fraction,
    }
}

/// `3h05m`, `12m30s`, `45s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

fn log_memory(memory: &crate::memory::MemoryBreakdown) {
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
}

/// The GPU memory pool's peak, when training on a GPU.
fn device_peak(device: &Device) -> Option<usize> {
    (!device.is_cpu())
        .then(|| crate::memory::peak_on(device))
        .flatten()
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
    checkpoint::sidecar(&output_dir.join("checkpoints"), "best")
}
