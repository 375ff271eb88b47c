//! Precision: which dtype the parameters (the master dtype) and the activations,
//! matmuls and message passing run in.
//!
//! Under mixed precision the parameters (and the optimizer's state) stay in the master
//! dtype (f32); every
//! linear layer casts its weights to the dtype of its input, so the casts' backward
//! brings the gradients home in f32. LayerNorm statistics and the loss are computed in
//! the master dtype. `f16` needs a dynamic loss scaler (see `train::loss_scale`).

use candle_core::DType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    /// Everything in the master dtype.
    #[default]
    Off,
    /// bfloat16 activations: f32's range, 8 bits of mantissa; no loss scaling needed.
    Bf16,
    /// float16 activations: 11 bits of mantissa but a range of 6e-5..65504, so the
    /// loss is scaled up (dynamically) to keep small gradients from flushing to zero.
    F16,
    /// Everything in float64, parameters and optimizer state too: a reference run to
    /// hold a float32 one (or a change of summation order) against, on the CPU (slow;
    /// 2x the memory).
    F64,
}

impl MixedPrecision {
    /// The dtype activations run in when the parameters are `master`.
    pub fn compute_dtype(self, master: DType) -> DType {
        match self {
            MixedPrecision::Off => master,
            MixedPrecision::Bf16 => DType::BF16,
            MixedPrecision::F16 => DType::F16,
            MixedPrecision::F64 => DType::F64,
        }
    }

    /// The dtype of the parameters, the optimizer's state and the loss.
    pub fn master_dtype(self) -> DType {
        match self {
            MixedPrecision::F64 => DType::F64,
            _ => DType::F32,
        }
    }

    /// The spellings of flags, configs and JSON, in declaration order (`f32` is read
    /// as `off` too).
    pub const NAMES: &'static [&'static str] = &["off", "bf16", "f16", "f64"];

    pub fn name(self) -> &'static str {
        MixedPrecision::NAMES[self as usize]
    }

    /// Whether the loss must be scaled to keep gradients representable.
    pub fn needs_loss_scaling(self) -> bool {
        self == MixedPrecision::F16
    }
}

impl std::fmt::Display for MixedPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MixedPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "f32" => Ok(MixedPrecision::Off),
            "bf16" => Ok(MixedPrecision::Bf16),
            "f16" => Ok(MixedPrecision::F16),
            "f64" => Ok(MixedPrecision::F64),
            other => Err(format!(
                "unknown precision '{other}' (expected off, bf16, f16 or f64)"
            )),
        }
    }
}
