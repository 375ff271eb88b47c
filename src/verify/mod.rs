//! Verification against independent references: the tolerances meshcast's own
//! comparisons use, and the export of one training step for
//! `scripts/pytorch_reference.py`.

pub mod export;
pub mod tolerance;
