//! What a training run is: data, window, split, graph, model and optimisation settings.
//! Saved as `run.json` in the output directory; a checkpoint carries it too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::{DataSpec, SplitSpec, WindowSpec};
use crate::error::InputError;
use crate::graph::{GraphOptions, PatchOptions};
use crate::model::{MixedPrecision, ModelConfig};
use crate::predict::Execution;

/// Optimisation settings (the names users of graph_weather and friends know).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub learning_rate: f64,
    pub num_epochs: usize,
    /// Stop after this many optimizer steps (the schedule still spans `num_epochs`).
    pub max_steps: Option<usize>,
    pub warmup_steps: usize,
    /// Cosine decay ends at this fraction of the peak rate.
    pub final_lr_fraction: f64,
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm (0: no clipping).
    pub grad_clip: f64,
    /// Micro-batches whose gradients are summed before one optimizer step.
    pub grad_accum_steps: usize,
    pub seed: u64,
    pub use_prefetch: bool,
    pub prefetch_buffer_size: usize,
    /// Loss weight per channel name (default 1).
    pub variable_weights: BTreeMap<String, f64>,
    /// Gradient checkpointing of the processor: keep only segment boundaries, recompute in backward.
    pub checkpointing: bool,
    /// Processor blocks per checkpointed segment.
    pub checkpoint_every: usize,
    /// Train (and infer) on this many spatial patches, one at a time (1: whole grid).
    pub patches: usize,
    /// Halo around each patch, degrees of great-circle distance.
    pub patch_halo: f64,
    /// Activations, matmuls and message passing in bf16 or f16 (f32 master weights), or
    /// everything in f64.
    pub mixed_precision: MixedPrecision,
    /// f16: the dynamic loss scaler's first scale, and clean steps before it doubles.
    pub initial_loss_scale: f64,
    pub loss_scale_growth_interval: usize,
    /// Autoregressive steps each sample is trained on (1: one-step training): the
    /// model's own output is fed back and the loss averaged over the steps, with
    /// gradients through the whole rollout. With a schedule, the first epoch's.
    pub rollout_steps: usize,
    /// A curriculum: the rollout grows as the epochs pass.
    pub rollout_schedule: Option<RolloutSchedule>,
    /// Start from this checkpoint's weights and normalisation (a run directory's `best`,
    /// or a sidecar `.json`), with a fresh optimizer: fine-tuning, e.g. on rollouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
    /// Processes the run started with (data parallelism): a global batch holds
    /// `batch_size x ranks` samples (with patches: `batch_size`, each rank taking its
    /// share of the patches), split over the processes at hand, so a run resumed on
    /// another number of them trains on the same batches.
    pub ranks: usize,
}

/// Rollout curriculum: one more step every `every_epochs` epochs, up to `max_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSchedule {
    pub every_epochs: usize,
    pub max_steps: usize,
}

impl RolloutSchedule {
    /// `every=N,max=M` (either order).
    pub fn parse(text: &str) -> Result<RolloutSchedule, String> {
        let (mut every, mut max) = (None, None);
        for part in text.split(',').map(str::trim) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("'{part}' in '{text}': expected every=N,max=M"))?;
            match key.trim() {
                "every" => every = Some(n),
                "max" => max = Some(n),
                _ => return Err(format!("'{part}' in '{text}': expected every=N,max=M")),
            }
        }
        match (every, max) {
            (Some(every_epochs), Some(max_steps)) => Ok(RolloutSchedule {
                every_epochs,
                max_steps,
            }),
            _ => Err(format!("'{text}': expected every=N,max=M")),
        }
    }
}

/// The longest rollout a run may train on: GraphCast's curriculum ends at 12 steps (3
/// days of 6-hour steps); a month of them is far beyond.
pub const MAX_ROLLOUT_STEPS: usize = 128;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 4,
            learning_rate: 1e-3,
            num_epochs: 10,
            max_steps: None,
            warmup_steps: 20,
            final_lr_fraction: 0.05,
            weight_decay: 0.01,
            grad_clip: 1.0,
            grad_accum_steps: 1,
            seed: 0,
            use_prefetch: true,
            prefetch_buffer_size: 4,
            variable_weights: BTreeMap::new(),
            checkpointing: false,
            checkpoint_every: 1,
            patches: 1,
            patch_halo: crate::graph::patches::DEFAULT_PATCH_HALO_DEG,
            mixed_precision: MixedPrecision::Off,
            initial_loss_scale: 65536.0,
            loss_scale_growth_interval: 2000,
            rollout_steps: 1,
            rollout_schedule: None,
            init_from: None,
            ranks: 1,
        }
    }
}

impl TrainConfig {
    /// Samples per optimizer micro-step over all ranks: each rank's batch, or with
    /// patches one batch that every rank takes (patch-parallel training).
    pub fn global_batch(&self) -> usize {
        match self.patches > 1 {
            true => self.batch_size,
            false => self.batch_size * self.ranks,
        }
    }

    /// Rollout steps in epoch `epoch` (0-based).
    pub fn rollout_steps_at(&self, epoch: usize) -> usize {
        match self.rollout_schedule {
            Some(s) => (self.rollout_steps + epoch / s.every_epochs.max(1)).min(s.max_steps),
            None => self.rollout_steps,
        }
    }

    /// The longest rollout of the run: every epoch's samples are windows that hold it,
    /// so an epoch has the same samples and length whatever its rollout.
    pub fn max_rollout_steps(&self) -> usize {
        self.rollout_schedule
            .map_or(self.rollout_steps, |s| s.max_steps.max(self.rollout_steps))
    }

    fn validate_rollout(&self) -> Result<(), InputError> {
        let max = self.max_rollout_steps();
        if !(1..=MAX_ROLLOUT_STEPS).contains(&self.rollout_steps) || max > MAX_ROLLOUT_STEPS {
            return Err(InputError(format!(
                "--rollout-steps {} (schedule up to {max}): must be between 1 and {MAX_ROLLOUT_STEPS}",
                self.rollout_steps
            )));
        }
        if let Some(s) = self.rollout_schedule {
            if s.every_epochs == 0 || s.max_steps < self.rollout_steps {
                return Err(InputError(format!(
                    "rollout schedule every {} epochs up to {} steps: needs every_epochs >= 1 and max_steps >= --rollout-steps ({})",
                    s.every_epochs, s.max_steps, self.rollout_steps
                )));
            }
        }
        Ok(())
    }

    /// Refuses settings that make no sense, before any work.
    pub fn validate(&self) -> Result<(), InputError> {
        let bad = |m: String| Err(InputError(m));
        let steps = [
            ("--batch-size", self.batch_size),
            ("ranks", self.ranks),
            ("--grad-accum-steps", self.grad_accum_steps),
            ("--checkpoint-every", self.checkpoint_every),
        ];
        if let Some((flag, n)) = steps.iter().find(|(_, n)| *n > MAX_COUNT) {
            return bad(format!("{flag} {n}: must be at most {MAX_COUNT}"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "--learning-rate {} must be > 0",
                self.learning_rate
            ));
        }
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if self.ranks == 0 {
            return bad("ranks must be at least 1".into());
        }
        if self.num_epochs == 0 {
            return bad("--num-epochs must be at least 1".into());
        }
        if self.grad_accum_steps == 0 {
            return bad("--grad-accum-steps must be at least 1".into());
        }
        if !(1..=MAX_PREFETCH_BATCHES).contains(&self.prefetch_buffer_size) {
            return bad(format!(
                "--prefetch-buffer-size {}: must be between 1 and {MAX_PREFETCH_BATCHES} (or use --no-prefetch)",
                self.prefetch_buffer_size
            ));
        }
        let patches_ok = (1..=MAX_PATCHES).contains(&self.patches);
        if !(patches_ok && self.patch_halo.is_finite() && self.patch_halo >= 0.0) {
            return bad(format!(
                "--patches must be between 1 and {MAX_PATCHES} and --patch-halo a number >= 0"
            ));
        }
        if self.checkpoint_every == 0 {
            return bad("--checkpoint-every must be at least 1".into());
        }
        if !(self.initial_loss_scale >= 1.0 && self.initial_loss_scale.is_finite())
            || self.loss_scale_growth_interval == 0
        {
            return bad(
                "--initial-loss-scale must be a finite number >= 1 and the growth interval >= 1"
                    .into(),
            );
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1".into());
        }
        self.validate_rollout()?;
        let clip_ok = self.grad_clip >= 0.0 && self.grad_clip.is_finite();
        if !(clip_ok && (0.0..=1.0).contains(&self.final_lr_fraction)) {
            return bad(
                "--grad-clip must be >= 0 and the final learning-rate fraction in [0, 1]".into(),
            );
        }
        if let Some((name, w)) = self
            .variable_weights
            .iter()
            .find(|(_, w)| w.is_nan() || **w < 0.0)
        {
            return bad(format!(
                "variable weight for '{name}' is {w}; weights must be >= 0"
            ));
        }
        Ok(())
    }
}

/// Batches a prefetch thread may keep ready: more only costs memory.
pub const MAX_PREFETCH_BATCHES: usize = 1_024;
/// Patches of one grid: beyond this a patch holds a handful of cells.
pub const MAX_PATCHES: usize = 4_096;
/// Any other count of a run (batch size, accumulation, checkpoint segment).
pub const MAX_COUNT: usize = 1 << 20;

/// Everything that defines a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataSpec,
    pub window: WindowSpec,
    pub split: SplitSpec,
    pub graph: GraphOptions,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl RunConfig {
    /// Refuses what cannot be run, before anything is read, built or written.
    pub fn validate(&self) -> Result<(), InputError> {
        self.window.validate()?;
        self.split.validate()?;
        self.window.check_rollout(self.train.max_rollout_steps())?;
        self.model.validate()?;
        self.train.validate()
    }

    /// The run's memory techniques, read from its `[train]` settings in one place.
    pub fn execution(&self) -> Execution {
        let t = &self.train;
        let execution = Execution {
            precision: t.mixed_precision,
            checkpoint_every: t.checkpointing.then_some(t.checkpoint_every),
            patches: None,
            patch_share: (0, 1),
        };
        execution.with_patches(PatchOptions {
            n_patches: t.patches,
            halo_deg: t.patch_halo,
        })
    }

    /// What must be equal for a checkpoint to continue this run: everything but the
    /// stopping point (`num_epochs`, `max_steps`) and loading details.
    pub fn resume_mismatch(&self, saved: &RunConfig) -> Option<String> {
        if self.model != saved.model {
            return Some(format!(
                "the model differs (checkpoint: {}; now: {})",
                serde_json::to_string(&saved.model).unwrap_or_default(),
                serde_json::to_string(&self.model).unwrap_or_default()
            ));
        }
        if self.graph != saved.graph {
            return Some("the mesh graph options differ".into());
        }
        if self.data != saved.data || self.window != saved.window || self.split != saved.split {
            return Some("the data, window or split differ".into());
        }
        let strip = |t: &TrainConfig| TrainConfig {
            num_epochs: 0,
            max_steps: None,
            use_prefetch: true,
            prefetch_buffer_size: 1,
            ..t.clone()
        };
        if strip(&self.train) != strip(&saved.train) {
            return Some("the optimisation settings differ (only --num-epochs and --max-steps may change on --resume)".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_s_train_table_takes_a_rollout_schedule_table() {
        let text = "rollout_steps = 2\n[rollout_schedule]\nevery_epochs = 3\nmax_steps = 5\n";
        let train: TrainConfig = toml::from_str(text).unwrap();
        assert_eq!(train.rollout_steps, 2);
        assert_eq!(
            train.rollout_schedule,
            Some(RolloutSchedule {
                every_epochs: 3,
                max_steps: 5
            })
        );
        assert!(toml::from_str::<TrainConfig>("[rollout_schedule]\nevery = 1\n").is_err());
    }

    #[test]
    fn the_rollout_grows_by_the_schedule_and_stops_at_its_maximum() {
        let train = TrainConfig {
            rollout_steps: 1,
            rollout_schedule: Some(RolloutSchedule::parse("max=4, every=2").unwrap()),
            ..Default::default()
        };
        let steps: Vec<usize> = (0..9).map(|e| train.rollout_steps_at(e)).collect();
        assert_eq!(steps, [1, 1, 2, 2, 3, 3, 4, 4, 4]);
        assert_eq!(train.max_rollout_steps(), 4);
        let fixed = TrainConfig {
            rollout_steps: 3,
            ..Default::default()
        };
        assert_eq!(
            (fixed.rollout_steps_at(7), fixed.max_rollout_steps()),
            (3, 3)
        );
        for bad in ["every=2", "every=x,max=2", "each=1,max=2", ""] {
            assert!(RolloutSchedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn execution_reads_the_techniques_of_the_train_table() {
        let train = TrainConfig {
            patches: 4,
            patch_halo: 15.0,
            checkpointing: true,
            checkpoint_every: 2,
            mixed_precision: MixedPrecision::Bf16,
            ..TrainConfig::default()
        };
        let execution = |train: TrainConfig| {
            let run = RunConfig {
                data: DataSpec::default(),
                window: WindowSpec::default(),
                split: SplitSpec::default(),
                graph: GraphOptions::default(),
                model: ModelConfig::default(),
                train,
            };
            run.execution()
        };
        let e = execution(train.clone());
        assert_eq!(e.precision, MixedPrecision::Bf16);
        assert_eq!(e.checkpoint_every, Some(2));
        assert_eq!(
            e.patches,
            Some(PatchOptions {
                n_patches: 4,
                halo_deg: 15.0
            })
        );
        assert_eq!(e.patch_count(), 4);
        // One patch is the whole grid; checkpointing off ignores its segment length.
        let plain = execution(TrainConfig {
            patches: 1,
            checkpointing: false,
            mixed_precision: MixedPrecision::Off,
            ..train
        });
        assert_eq!(plain, Execution::PLAIN);
        assert_eq!(plain.patch_count(), 1);
    }
}
