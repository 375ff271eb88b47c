//! AdamW with its moments in the open, so checkpoints can save and restore them, plus
//! gradient clipping by global norm. The update is candle-nn's `AdamW`, operation for
//! operation (a test holds the two to bit-identical results).

use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        // candle-nn's defaults.
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter with its name and moments.
pub struct Slot {
    pub name: String,
    pub var: Var,
    pub m: Tensor,
    pub v: Tensor,
}

pub struct AdamW {
    pub slots: Vec<Slot>,
    pub params: AdamWParams,
    /// Number of updates applied so far.
    pub step_t: usize,
}

impl AdamW {
    /// `vars` in a fixed order (sorted by name), so checkpoints line up.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<AdamW> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let m = var.as_tensor().zeros_like()?;
                let v = var.as_tensor().zeros_like()?;
                Ok(Slot { name, var, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            slots,
            params,
            step_t: 0,
        })
    }

    /// Applies one update with `grads[i]` for `slots[i]` (None: parameter untouched).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step_t += 1;
        let p = self.params;
        let scale_m = 1f64 / (1f64 - p.beta1.powi(self.step_t as i32));
        let scale_v = 1f64 / (1f64 - p.beta2.powi(self.step_t as i32));
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let next_m = ((&slot.m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let next_v = ((&slot.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let theta = (slot.var.as_tensor() * (1f64 - lr * p.weight_decay))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            slot.var.set(&(theta - (adjusted * lr)?)?)?;
            slot.m = next_m;
            slot.v = next_v;
        }
        Ok(())
    }
}

/// Global L2 norm of all gradients, in f64.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sum = 0.0;
    for g in grads.iter().flatten() {
        sum += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// Scales the gradients down so their global norm is at most `max_norm`; returns the
/// norm before clipping.
pub fn clip_by_global_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    #[test]
    fn matches_candle_nn_adamw_bit_for_bit() {
        let dev = Device::Cpu;
        let init = Tensor::new(&[[0.3f32, -1.2, 2.0], [0.5, 0.0, -0.7]], &dev).unwrap();
        let ours = Var::from_tensor(&init).unwrap();
        let theirs = Var::from_tensor(&init).unwrap();
        let mut a = AdamW::new(vec![("w".into(), ours.clone())], AdamWParams::default()).unwrap();
        let mut b = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        for k in 0..20 {
            // loss = sum(w^3 * k) gives changing, nonzero gradients.
            let loss_a = (ours.as_tensor().powf(3.0).unwrap() * (k as f64 + 1.0))
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss_a.backward().unwrap();
            a.step(&[grads.get(ours.as_tensor()).cloned()], 0.01)
                .unwrap();
            let loss_b = (theirs.as_tensor().powf(3.0).unwrap() * (k as f64 + 1.0))
                .unwrap()
                .sum_all()
                .unwrap();
            b.backward_step(&loss_b).unwrap();
        }
        let x: Vec<f32> = ours.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = theirs.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x, y);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Some(Tensor::new(&[3.0f32, 4.0], &dev).unwrap()),
            None,
            Some(Tensor::new(&[12.0f32], &dev).unwrap()),
        ];
        let before = clip_by_global_norm(&mut g, 1.0).unwrap();
        assert!((before - 13.0).abs() < 1e-9);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let mut small = vec![Some(Tensor::new(&[0.3f32], &dev).unwrap())];
        clip_by_global_norm(&mut small, 1.0).unwrap();
        assert_eq!(
            small[0].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.3]
        );
    }
}
