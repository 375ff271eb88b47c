//! Deterministic parameter initialisation from `--seed`.
//!
//! candle's CPU random generator cannot be seeded, so after the model is built every
//! parameter is drawn again from a ChaCha stream, in name order: weight matrices
//! uniform in +-sqrt(6 / fan_in) (He/Kaiming uniform, as candle-nn's `linear`), biases
//! zero, layer-norm scales one and shifts zero. Same seed, same model, on any machine.

use candle_core::{Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// Re-initialises `vars` (sorted by name) from `seed`.
pub fn init_parameters(vars: &[(String, Var)], seed: u64) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in vars {
        let shape = var.shape().clone();
        let dims = shape.dims();
        let values: Vec<f64> = if dims.len() == 2 {
            let bound = (6.0 / dims[1] as f64).sqrt();
            (0..shape.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect()
        } else if is_norm_scale(name) {
            vec![1.0; shape.elem_count()]
        } else {
            vec![0.0; shape.elem_count()]
        };
        let t = Tensor::from_vec(values, shape, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

fn is_norm_scale(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.contains("norm")
        && (lower.ends_with(".weight") || lower.ends_with(".scale") || lower.ends_with(".gamma"))
}
