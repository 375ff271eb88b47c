//! Autoregressive rollout: the model's next state becomes an input of the step after.

use super::{NodeState, NormalisedResidual};

/// A batch of histories (each `input_steps` states, oldest first) stepped forward
/// together.
pub struct Rollout {
    histories: Vec<Vec<NodeState>>,
}

impl Rollout {
    pub fn new(histories: Vec<Vec<NodeState>>) -> Rollout {
        Rollout { histories }
    }

    /// Advances every history by one model step.
    pub fn step(&mut self, model: &NormalisedResidual) -> anyhow::Result<()> {
        let next = model.next_states(&self.histories)?;
        for (history, state) in self.histories.iter_mut().zip(next) {
            history.remove(0);
            history.push(state);
        }
        Ok(())
    }

    /// The newest state of history `i` (the initial state before the first step).
    pub fn current(&self, i: usize) -> &NodeState {
        self.histories[i].last().expect("non-empty history")
    }

    pub fn len(&self) -> usize {
        self.histories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histories.is_empty()
    }
}
