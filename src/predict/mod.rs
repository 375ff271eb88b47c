//! One prediction path: every subcommand that runs the model (train, eval, forecast,
//! benchmark-graph-format, export-reference) goes through a [`Predictor`].
//!
//! In the spirit of DeepMind graphcast's `predictor_base.Predictor` and its stacked
//! wrappers, the layers are:
//!
//! ```text
//! Rollout              (rollout.rs)   autoregressive: each next state joins the history
//!  NormalisedResidual  (residual.rs)  physical states -> model inputs (inputs.rs: values,
//!                                     then validity flags); output residual -> next state
//!   Predictor          (this file)    forward (inference view) and gradients of the loss
//!    WholeGraph        (whole.rs)     the graph in one piece (shared or replicated batch)
//!    Patched           (patched.rs)   spatial patches, each with its own subgraph
//!     Network          (network.rs)   the model, its detached inference view, parameters,
//!                                     precision; built and initialised in one place
//! ```
//!
//! Precision is a property of the [`Network`] rather than a wrapper: meshcast casts
//! the f32 master weights inside every linear layer, so gradients come home in f32.
//! Replicated (block-diagonal) batching is the model's `Batching` option, run by
//! [`GraphCast`](crate::model::GraphCast) on the replicated graph.

pub mod extras;
pub mod gradients;
pub mod init;
pub mod inputs;
pub mod loss;
pub mod network;
pub mod patched;
pub mod residual;
pub mod rollout;
pub mod synthetic;
pub mod unroll;
pub mod whole;

use candle_core::{Result, Tensor};

use crate::graph::PatchOptions;
use crate::model::MixedPrecision;

pub use extras::NodeExtras;
pub use gradients::StepGradients;
pub use network::Network;
pub use patched::{PatchTensors, Patched};
pub use residual::{NodeState, NormalisedResidual};
pub use rollout::Rollout;
pub use whole::WholeGraph;

/// How the network runs, not what it is: the memory techniques of a run. Each gives
/// the same function (patches when the halo covers the receptive field; precision to
/// its rounding), at another cost in memory and time. Batching and aggregation, the
/// other execution choices, are the model's (`ModelConfig`), which applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Execution {
    pub precision: MixedPrecision,
    /// Gradient checkpointing: recompute the processor in segments of this many blocks.
    pub checkpoint_every: Option<usize>,
    /// Run patch by patch (None: the whole graph at once).
    pub patches: Option<PatchOptions>,
    /// Patch-parallel training, `(rank, ranks)`: this process holds and runs its share
    /// of the patches only (the ranks' gradients add up to all patches'). `(0, 1)`:
    /// all of them.
    pub patch_share: (usize, usize),
}

impl Execution {
    /// The whole graph in f32, plain backprop.
    pub const PLAIN: Execution = Execution {
        precision: MixedPrecision::Off,
        checkpoint_every: None,
        patches: None,
        patch_share: (0, 1),
    };

    /// Patches of `options` (at least two), or the whole graph.
    pub fn with_patches(self, options: PatchOptions) -> Execution {
        Execution {
            patches: (options.n_patches > 1).then_some(options),
            ..self
        }
    }

    /// Patches run (1: the whole graph).
    pub fn patch_count(&self) -> usize {
        self.patches.map_or(1, |p| p.n_patches)
    }
}

/// What the loss compares the output with: `sum(w * (output - y)^2) / denominator`.
pub struct LossTarget {
    /// `[B, nodes, C]` normalised residual targets.
    pub y: Tensor,
    /// `[B, nodes, C]` per-entry weights (validity x latitude x variable weight).
    pub w: Tensor,
    /// Valid entries (x accumulation steps / loss scale during training).
    pub denominator: f64,
    /// Valid entries of this batch (of this rank's share of it, in data parallelism).
    pub entries: usize,
}

impl LossTarget {
    /// The mean over the `entries` valid entries of `w` (at least 1).
    pub fn new(y: Tensor, w: Tensor, entries: usize) -> LossTarget {
        LossTarget {
            y,
            w,
            denominator: entries.max(1) as f64,
            entries,
        }
    }

    /// For one rank's share of a batch split over ranks: the mean over all shares'
    /// `global` valid entries (other factors of the denominator kept), so that the
    /// shares' losses and gradients add up to those of the whole batch.
    pub fn count_globally(&mut self, global: usize) {
        self.denominator *= global.max(1) as f64 / self.entries.max(1) as f64;
    }
}

/// What the gradients are of.
#[derive(Clone, Copy)]
pub enum Objective<'a> {
    /// The loss against a target.
    Loss(&'a LossTarget),
    /// `sum(output * g)` for `g` `[B, nodes, C]`: the vector-Jacobian product that
    /// carries a later loss's gradient back through this forward (rollout training).
    /// Its gradients come with the inputs' gradient.
    OutputGradient(&'a Tensor),
}

/// A way to run the network over the graph.
pub trait Predictor {
    /// The parameters, model and inference view this predictor runs.
    fn network(&self) -> &Network;

    /// Outputs `[B, nodes, C]` for inputs `[B, nodes, F]`, on the inference view: no
    /// autograd graph is kept, so each activation is freed once it has been read.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// The objective's value and every parameter's gradient (and, for
    /// [`Objective::OutputGradient`], the gradient for `x`); `checkpoint_every` =
    /// Some(k) recomputes the processor in segments of k blocks.
    fn gradients(
        &self,
        x: &Tensor,
        objective: Objective,
        checkpoint_every: Option<usize>,
    ) -> Result<StepGradients>;

    /// Bytes of the graph tensors this predictor holds on the device.
    fn graph_bytes(&self) -> usize;

    /// Forward passes over a graph run by [`Predictor::forward`] so far: one per call
    /// on the whole graph, one per patch per call when patched.
    fn graph_forwards(&self) -> usize;

    /// The grid nodes the outputs cover, when not all: one rank's patches in
    /// patch-parallel training (its other outputs are zero).
    fn owned_nodes(&self) -> Option<&[bool]> {
        None
    }
}
