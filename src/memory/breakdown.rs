//! Where a step's peak memory went: parts computed from tensor sizes, the rest
//! (activations and buffers) from the measured peak.

use serde::{Deserialize, Serialize};

/// Where the memory of a training step goes, in bytes.
///
/// `weights`, `optimizer_state`, `gradients` and `graph` are computed from tensor
/// sizes; `peak` and `baseline` are measured (the counting allocator on the CPU, the
/// CUDA memory pool on a GPU: [`super::peak_on`]), and
/// `activations` is what the measured peak holds beyond the baseline (the process
/// before the case: data, runtime) and the four computed parts: the saved
/// activations of the backward pass, plus transient buffers of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBreakdown {
    /// Parameters (`sum(numel) * dtype size`).
    pub weights: u64,
    /// The optimizer's arena: AdamW's two moments per parameter.
    pub optimizer_state: u64,
    /// One gradient per parameter.
    pub gradients: u64,
    /// The graph on the device: index and feature tensors (and CSR offsets when used).
    pub graph: u64,
    /// Measured live bytes before the case allocated anything.
    pub baseline: Option<u64>,
    /// Measured peak live bytes during the case.
    pub peak: Option<u64>,
    /// `peak - baseline - weights - optimizer_state - gradients - graph` (saturating).
    pub activations: Option<u64>,
}

impl MemoryBreakdown {
    /// The breakdown from computed sizes and measured `baseline` and `peak` (None
    /// when memory is not measured).
    pub fn new(
        weights: u64,
        optimizer_state: u64,
        gradients: u64,
        graph: u64,
        baseline: Option<u64>,
        peak: Option<u64>,
    ) -> MemoryBreakdown {
        let activations = match (baseline, peak) {
            (Some(b), Some(p)) => Some(
                p.saturating_sub(b)
                    .saturating_sub(weights + optimizer_state + gradients + graph),
            ),
            _ => None,
        };
        MemoryBreakdown {
            weights,
            optimizer_state,
            gradients,
            graph,
            baseline,
            peak,
            activations,
        }
    }

    /// Memory the case itself used at its peak (`peak - baseline`).
    pub fn case_peak(&self) -> Option<u64> {
        Some(self.peak?.saturating_sub(self.baseline?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdown_attributes_the_rest_to_activations() {
        let m = MemoryBreakdown::new(10, 20, 10, 5, Some(100), Some(200));
        assert_eq!(m.activations, Some(55));
        assert_eq!(m.case_peak(), Some(100));
        let n = MemoryBreakdown::new(10, 20, 10, 5, None, Some(200));
        assert_eq!(n.activations, None);
    }
}
