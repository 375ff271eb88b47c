//! AdamW over one flat arena: both moments of every parameter live in one `[2, n]`
//! tensor, the gradients of a step in one `[n]` tensor, so that the moments' update,
//! the global norm, checkpoints and the replicas' exchange each touch one buffer. The
//! weights stay in the model's f32 variables (candle `Var`s cannot be views of another
//! tensor, and a master copy would cost memory): the second stage of the fused update
//! writes them in place, one pass per parameter. Both stages ([`fused`]) equal, bit for
//! bit on the CPU, candle-nn's composed `AdamW` ([`reference`]).

pub mod fused;
pub mod reference;

use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
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

/// One parameter: its name, the model's variable and its place in the arena.
pub struct Slot {
    pub name: String,
    pub var: Var,
    pub offset: usize,
}

impl Slot {
    fn len(&self) -> usize {
        self.var.elem_count()
    }
}

/// Every parameter's gradient in one flat tensor, in the optimizer's slot order, and
/// which parameters have one (the others hold zeros and are left untouched, as a
/// missing gradient leaves a parameter in candle-nn's AdamW).
#[derive(Clone)]
pub struct FlatGrads {
    pub values: Tensor,
    pub present: Vec<bool>,
}

impl FlatGrads {
    /// Adds `other`'s gradients (a second micro-batch) in one op.
    pub fn add(&mut self, other: &FlatGrads) -> Result<()> {
        self.values = (&self.values + &other.values)?;
        for (p, o) in self.present.iter_mut().zip(&other.present) {
            *p |= o;
        }
        Ok(())
    }

    /// Global L2 norm (accumulated in f64): one host sync.
    pub fn norm(&self) -> Result<f64> {
        Ok(fused::sum_of_squares(&self.values)?.sqrt())
    }
}

pub struct AdamW {
    pub slots: Vec<Slot>,
    pub params: AdamWParams,
    /// Number of updates applied so far.
    pub step_t: usize,
    /// `[2, n]`: first moments, second moments.
    state: Tensor,
}

impl AdamW {
    /// `vars` in a fixed order (sorted by name), so checkpoints line up; the moments
    /// start at zero.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<AdamW> {
        let mut offset = 0;
        let slots: Vec<Slot> = vars
            .into_iter()
            .map(|(name, var)| {
                let slot = Slot { name, var, offset };
                offset += slot.len();
                slot
            })
            .collect();
        let (dtype, device) = match slots.first() {
            Some(s) => (s.var.dtype(), s.var.device().clone()),
            None => (DType::F32, Device::Cpu),
        };
        Ok(AdamW {
            slots,
            params,
            step_t: 0,
            state: Tensor::zeros((2, offset), dtype, &device)?,
        })
    }

    /// Values in the arena (all parameters).
    pub fn len(&self) -> usize {
        self.state.dim(1).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every parameter's weights, flat `[n]` (a copy).
    pub fn weights(&self) -> Result<Tensor> {
        let vars = self.slots.iter().map(|s| s.var.as_tensor().clone());
        flat(vars, self.state.dtype(), self.state.device())
    }

    /// Slot `i`'s first and second moments, shaped as its parameter (views of the arena).
    pub fn moments(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let s = &self.slots[i];
        let view = |row: usize| {
            self.state
                .i(row)?
                .narrow(0, s.offset, s.len())?
                .reshape(s.var.shape())
        };
        Ok((view(0)?, view(1)?))
    }

    /// The weights, then the moments, as f64 values (exact for f32 state): what rank 0
    /// sends the others.
    pub fn state_values(&self) -> Result<Vec<f64>> {
        let all = Tensor::cat(&[&self.weights()?, &self.state.flatten_all()?], 0)?;
        all.to_dtype(DType::F64)?.to_vec1()
    }

    /// Takes `values` (as [`Self::state_values`] gives them) as the weights and moments.
    pub fn set_state_values(&mut self, values: Vec<f64>) -> Result<()> {
        let n = self.len();
        let device = self.state.device().clone();
        let all = Tensor::from_vec(values, 3 * n, &device)?.to_dtype(self.state.dtype())?;
        for s in &self.slots {
            s.var
                .set(&all.narrow(0, s.offset, s.len())?.reshape(s.var.shape())?)?;
        }
        self.state = all.narrow(0, n, 2 * n)?.reshape((2, n))?;
        Ok(())
    }

    /// Takes `moments` (m and v for each slot, in order) as the moments: how a
    /// checkpoint is restored (its weights go into the variables).
    pub fn load(&mut self, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        let (dtype, device) = (self.state.dtype(), self.state.device().clone());
        let (m, v): (Vec<Tensor>, Vec<Tensor>) = moments.into_iter().unzip();
        let (m, v) = (flat(m, dtype, &device)?, flat(v, dtype, &device)?);
        if m.dims() != [self.len()] || v.dims() != [self.len()] {
            candle_core::bail!(
                "optimizer moments of {:?} values for {} parameters",
                m.dims(),
                self.len()
            )
        }
        self.state = Tensor::stack(&[&m, &v], 0)?;
        Ok(())
    }

    /// `grads[i]` for slot `i` packed into one flat tensor (None: zeros, not present).
    pub fn pack(&self, grads: &[Option<Tensor>]) -> Result<FlatGrads> {
        let (dtype, device) = (self.state.dtype(), self.state.device());
        let parts = self.slots.iter().zip(grads).map(|(s, g)| match g {
            Some(g) => Ok(g.clone()),
            None => Tensor::zeros(s.len(), dtype, device),
        });
        Ok(FlatGrads {
            values: flat(parts.collect::<Result<Vec<_>>>()?, dtype, device)?,
            present: grads.iter().map(Option::is_some).collect(),
        })
    }

    /// Zero gradients for every parameter, none present (an empty share of a batch).
    pub fn no_grads(&self) -> Result<FlatGrads> {
        Ok(FlatGrads {
            values: Tensor::zeros(self.len(), self.state.dtype(), self.state.device())?,
            present: vec![false; self.slots.len()],
        })
    }

    /// Applies one update at `lr` with each gradient multiplied by `grad_multiplier`
    /// first (clipping and loss-scale corrections; 1: none): one fused pass over the
    /// moments, then one over the weights of each parameter with a gradient.
    pub fn step(&mut self, grads: &FlatGrads, lr: f64, grad_multiplier: f64) -> Result<()> {
        self.step_t += 1;
        let p = self.params;
        let hyper = fused::Hyper {
            beta1: p.beta1,
            beta2: p.beta2,
            eps: p.eps,
            lr,
            decay: 1f64 - lr * p.weight_decay,
            scale_m: 1f64 / (1f64 - p.beta1.powi(self.step_t as i32)),
            scale_v: 1f64 / (1f64 - p.beta2.powi(self.step_t as i32)),
            grad_multiplier: (grad_multiplier != 1.0).then_some(grad_multiplier),
        };
        if self.is_empty() {
            return Ok(());
        }
        let segments = self.present_segments(&grads.present);
        let moments = fused::MomentsUpdate { hyper, segments };
        self.state.inplace_op2(&grads.values, &moments)?;
        for (s, _) in self.slots.iter().zip(&grads.present).filter(|(_, &p)| p) {
            let weights = fused::WeightsUpdate {
                hyper,
                offset: s.offset,
            };
            s.var.as_tensor().inplace_op2(&self.state, &weights)?;
        }
        Ok(())
    }

    /// (start, length) of each run of consecutive slots with a gradient.
    fn present_segments(&self, present: &[bool]) -> Vec<(usize, usize)> {
        let mut segments: Vec<(usize, usize)> = Vec::new();
        for (s, _) in self.slots.iter().zip(present).filter(|(_, &p)| p) {
            match segments.last_mut() {
                Some((start, len)) if *start + *len == s.offset => *len += s.len(),
                _ => segments.push((s.offset, s.len())),
            }
        }
        segments
    }
}

/// `parts` flattened (cast to `dtype`) and concatenated; an empty `[0]` for none.
fn flat(parts: impl IntoIterator<Item = Tensor>, dtype: DType, device: &Device) -> Result<Tensor> {
    let parts = parts
        .into_iter()
        .map(|t| t.to_dtype(dtype)?.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    if parts.is_empty() {
        return Tensor::zeros(0, dtype, device);
    }
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{random_tensor, test_device};
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
            let flat = a.pack(&[grads.get(ours.as_tensor()).cloned()]).unwrap();
            a.step(&flat, 0.01, 1.0).unwrap();
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

    /// Parameters large enough that the update runs in chunks on the worker pool, one
    /// of them without a gradient, on `device`.
    fn parameters(dtype: DType, device: &Device) -> Vec<(String, Var)> {
        [vec![40_000], vec![7, 3], vec![300, 11], vec![5]]
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let t = random_tensor(shape, dtype, i as u64).unwrap();
                (
                    format!("p{i}"),
                    Var::from_tensor(&t.to_device(device).unwrap()).unwrap(),
                )
            })
            .collect()
    }

    fn gradients(vars: &[(String, Var)], step: u64) -> Vec<Option<Tensor>> {
        vars.iter()
            .enumerate()
            .map(|(i, (_, v))| {
                (i != 1).then(|| {
                    let g = random_tensor(v.dims(), v.dtype(), 100 * step + i as u64).unwrap();
                    g.to_device(v.device()).unwrap()
                })
            })
            .collect()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The fused update on `device` against the composed ops on the CPU: bit for bit
    /// on the CPU, within 1e-6 (f32) and 1e-12 (f64) relative on a GPU (whose
    /// kernels may contract multiply-adds).
    fn fused_update_equals_the_composed_ops(device: &Device) -> Result<()> {
        for (dtype, gpu_tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let tol = if device.is_cpu() { 0.0 } else { gpu_tol };
            let same = |a: Vec<f64>, b: Vec<f64>, what: &str| {
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= tol * y.abs().max(1.0),
                        "{dtype:?} {what}: {x} vs {y}"
                    );
                }
            };
            let (vars, on_cpu) = (parameters(dtype, device), parameters(dtype, &Device::Cpu));
            let mut states: Vec<reference::ParamState> = (on_cpu.iter())
                .map(|(_, v)| reference::ParamState::new(v.as_tensor()))
                .collect::<Result<_>>()?;
            let params = AdamWParams::default();
            let mut fused = AdamW::new(vars.clone(), params)?;
            for step in 1..=5 {
                let mut grads = gradients(&on_cpu, step);
                // Steps 3 and 4 clip: the multiplier the fused pass folds in.
                let clip = if step >= 3 { 0.5 } else { 0.0 };
                let norm = fused.pack(&gradients(&vars, step))?.norm()?;
                let clipped = reference::clip_by_global_norm(&mut grads, clip)?;
                assert!((norm - clipped).abs() <= tol.max(1e-12) * norm);
                let multiplier = if clip > 0.0 {
                    clip / (clipped + 1e-6)
                } else {
                    1.0
                };
                reference::step(&mut states, &grads, params, step as usize, 1e-2)?;
                fused.step(&fused.pack(&gradients(&vars, step))?, 1e-2, multiplier)?;
            }
            for (i, ((_, var), state)) in vars.iter().zip(&states).enumerate() {
                let (m, v) = fused.moments(i)?;
                same(
                    values(var.as_tensor()),
                    values(&state.weight),
                    &format!("weights {i}"),
                );
                same(values(&m), values(&state.m), &format!("m {i}"));
                same(values(&v), values(&state.v), &format!("v {i}"));
            }
            // The parameter without a gradient is untouched, its moments zero.
            assert_eq!(values(vars[1].1.as_tensor()), values(&on_cpu[1].1));
        }
        Ok(())
    }
    test_device!(
        fused_update_equals_the_composed_ops,
        fused_update_equals_the_composed_ops_bit_for_bit_on_the_cpu,
        fused_update_equals_the_composed_ops_cuda
    );

    #[test]
    fn the_norm_is_the_same_whatever_the_threads() -> Result<()> {
        let g = random_tensor(&[100_003], DType::F32, 9)?;
        let direct: f64 = values(&g).iter().map(|v| v * v).sum::<f64>();
        let pooled = fused::sum_of_squares(&g)?;
        assert!(
            (pooled - direct).abs() <= 1e-12 * direct,
            "{pooled} vs {direct}"
        );
        assert_eq!(pooled.to_bits(), fused::sum_of_squares(&g)?.to_bits());
        Ok(())
    }

    #[test]
    fn state_round_trips_and_loads_from_moments() -> Result<()> {
        let vars = parameters(DType::F32, &Device::Cpu);
        let mut a = AdamW::new(vars.clone(), AdamWParams::default())?;
        a.step(&a.pack(&gradients(&vars, 1))?, 1e-2, 1.0)?;
        let saved = a.state_values()?;
        let moments: Vec<_> = (0..vars.len())
            .map(|i| a.moments(i))
            .collect::<Result<_>>()?;
        let fresh = parameters(DType::F32, &Device::Cpu);
        let mut b = AdamW::new(fresh.clone(), AdamWParams::default())?;
        b.set_state_values(saved.clone())?;
        assert_eq!(
            values(fresh[0].1.as_tensor()),
            values(vars[0].1.as_tensor())
        );
        let mut c = AdamW::new(vars.clone(), AdamWParams::default())?;
        c.load(moments)?;
        assert_eq!(c.state_values()?, saved);
        Ok(())
    }
}
