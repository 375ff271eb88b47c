//! Rollout training: the model's own output is fed back for K steps and the loss is
//! averaged over the steps, with gradients through the whole rollout (as GraphCast's
//! autoregressive fine-tuning).
//!
//! In normalised units the rollout is linear in the residuals: with `r_k` the output of
//! step k and `S_k = r_1 + ... + r_k`, the predicted state after k steps is
//! `u + S_k * a` (u: the last input state normalised, a missing value as 0 = the mean;
//! `a = diff_std / std`), and its error is `S_k - y_k` with `y_k` the residual of the
//! truth from the current state. Step k's inputs hold the observed states still in the
//! window and the predictions `u + S_j * a` (flags 1) of the steps before, then the
//! forcings of their times.
//!
//! Memory grows by one boundary per step, not by K graphs: the forward pass runs the
//! inference view and keeps only each step's inputs and `S_k`; the backward pass
//! recomputes the steps from the last to the first, each with its own autograd graph
//! (checkpointed inside too with `checkpoint_every`), and carries the gradient for
//! `S_k` back by hand: `dL/dS_k = dL_k/dS_k + dL/dS_{k+1} + a * (dL/d inputs of later
//! steps at S_k's slots)`. Tested equal to backprop through the whole unrolled chain.

use candle_core::{DType, Device, Result, Tensor};

use super::gradients::accumulate;
use super::loss::{loss_weights, scalar, weighted_mse};
use super::{inputs, LossTarget, Objective, Predictor, StepGradients};
use crate::data::{Batch, NormStats};

/// A batch for rollout training on the graph's grid nodes.
pub struct RolloutBatch {
    /// `[B, nodes, 2 S C + E]`: the first step's inputs.
    pub x: Tensor,
    /// Each step's loss target: `y_k` and its weights; every denominator is multiplied
    /// by K, so the summed losses are the mean over the steps.
    pub targets: Vec<LossTarget>,
    /// `[B, nodes, E]`: each step's extra inputs (forcings of its times, static fields).
    pub extras: Vec<Tensor>,
    /// `[C]`: `diff_std / std`, a residual in normalised state units.
    pub residual_scale: Tensor,
    /// The first step's target validity, `[B, nodes, C]` flattened (what validation
    /// scores against persistence).
    pub first_valid: Vec<bool>,
    pub input_steps: usize,
    pub channels: usize,
}

impl RolloutBatch {
    /// From a batch with K targets on `cells`; `extras[k]` are step k's extra inputs
    /// (`[B, nodes, E]`, host), the loss weighted by `lat_w` and `var_w`. Its tensors
    /// on `device` in the model's master `dtype`.
    pub fn new(
        batch: &Batch,
        (cells, extras): (&[u32], &[Vec<f32>]),
        (lat_w, var_w): (&[f32], &[f32]),
        stats: &NormStats,
        (device, dtype): (&Device, DType),
    ) -> Result<RolloutBatch> {
        let k_steps = batch.rollout_steps;
        let (b, n, c) = (batch.len(), cells.len(), batch.channels);
        let place = (device, dtype);
        let (x, first, first_valid) =
            inputs::batch_target(batch, (cells, &extras[0]), lat_w, var_w, place)?;
        let mut targets = vec![first];
        for k in 1..k_steps {
            targets.push(step_target(batch, k, cells, (lat_w, var_w), place)?);
        }
        for t in &mut targets {
            t.denominator *= k_steps as f64;
        }
        let extras = extras
            .iter()
            .map(|e| {
                Tensor::from_slice(e, (b, n, e.len() / (b * n).max(1)), device)?.to_dtype(dtype)
            })
            .collect::<Result<_>>()?;
        let scale: Vec<f32> = (0..c)
            .map(|ch| (stats.diff_std[ch] / stats.std[ch]) as f32)
            .collect();
        Ok(RolloutBatch {
            x,
            targets,
            extras,
            residual_scale: Tensor::from_vec(scale, c, device)?.to_dtype(dtype)?,
            first_valid,
            input_steps: batch.input_steps,
            channels: c,
        })
    }

    pub fn steps(&self) -> usize {
        self.targets.len()
    }

    /// Step `k`'s (0-based) inputs from the residual sums of the steps before
    /// (`sums[j]` = `S_{j+1}`): autograd flows through them when they carry it.
    pub fn step_inputs(&self, k: usize, sums: &[Tensor]) -> Result<Tensor> {
        if k == 0 {
            return Ok(self.x.clone());
        }
        let (s, c) = (self.input_steps, self.channels);
        let last = self.x.narrow(2, (s - 1) * c, c)?;
        let mut values = Vec::with_capacity(s);
        let mut flags = Vec::with_capacity(s);
        for slot in 0..s {
            let i = k + slot;
            if i < s {
                values.push(self.x.narrow(2, i * c, c)?);
                flags.push(self.x.narrow(2, (s + i) * c, c)?);
            } else {
                let predicted = (&last + sums[i - s].broadcast_mul(&self.residual_scale)?)?;
                flags.push(predicted.ones_like()?);
                values.push(predicted);
            }
        }
        values.extend(flags);
        values.push(self.extras[k].clone());
        Tensor::cat(&values, 2)
    }
}

/// The loss target of rollout step `k` (its block of the batch's targets) on `cells`.
fn step_target(
    batch: &Batch,
    k: usize,
    cells: &[u32],
    (lat_w, var_w): (&[f32], &[f32]),
    (device, dtype): (&Device, DType),
) -> Result<LossTarget> {
    let (b, n, c) = (batch.len(), cells.len(), batch.channels);
    let mut y = Vec::with_capacity(b * n * c);
    let mut valid = Vec::with_capacity(b * n * c);
    for i in 0..b {
        for &cell in cells {
            let at = ((k * b + i) * batch.nodes + cell as usize) * c;
            y.extend_from_slice(&batch.targets[at..at + c]);
            valid.extend_from_slice(&batch.target_valid[at..at + c]);
        }
    }
    let (w, entries) = loss_weights(&valid, lat_w, var_w, (b, n, c), device)?;
    let y = Tensor::from_vec(y, (b, n, c), device)?;
    Ok(LossTarget::new(
        y.to_dtype(dtype)?,
        w.to_dtype(dtype)?,
        entries,
    ))
}

/// A rollout run forward on the inference view: what its backward pass needs.
pub struct RolloutForward {
    /// Each step's inputs.
    pub inputs: Vec<Tensor>,
    /// `S_k`, each step's residual sum from the current state `[B, nodes, C]` (in the
    /// master dtype).
    pub sums: Vec<Tensor>,
    /// The loss: the mean over the steps.
    pub loss: f64,
}

/// Runs the rollout forward, keeping each step's inputs and `S_k` only.
pub fn rollout_forward(predictor: &dyn Predictor, batch: &RolloutBatch) -> Result<RolloutForward> {
    let k_steps = batch.steps();
    let mut out = RolloutForward {
        inputs: Vec::with_capacity(k_steps),
        sums: Vec::with_capacity(k_steps),
        loss: 0.0,
    };
    for k in 0..k_steps {
        let x = batch.step_inputs(k, &out.sums)?;
        let r = predictor.forward(&x)?;
        let sum = match out.sums.last() {
            Some(prev) => (prev + r)?,
            None => r,
        };
        let t = &batch.targets[k];
        out.loss += scalar(&weighted_mse(&sum, &t.y, &t.w, t.denominator)?)?;
        out.inputs.push(x);
        out.sums.push(sum);
    }
    Ok(out)
}

/// The rollout loss (mean over the steps) and every parameter's gradient.
pub fn rollout_gradients(
    predictor: &dyn Predictor,
    batch: &RolloutBatch,
    checkpoint_every: Option<usize>,
) -> Result<StepGradients> {
    let k_steps = batch.steps();
    let mut total = StepGradients::empty(predictor.network().vars().len());
    let RolloutForward { inputs, sums, loss } = rollout_forward(predictor, batch)?;
    total.loss = loss;
    // Backward, last step first; `carried[j]`: dL/dS_{j+1} from later steps' inputs.
    let (s, c) = (batch.input_steps, batch.channels);
    let mut carried: Vec<Option<Tensor>> = vec![None; k_steps];
    let mut later: Option<Tensor> = None;
    for k in (0..k_steps).rev() {
        let t = &batch.targets[k];
        let mut g = ((((&sums[k] - &t.y)? * &t.w)? * 2.0)? / t.denominator)?;
        for extra in [later.take(), carried[k].take()].into_iter().flatten() {
            g = (g + extra)?;
        }
        let step =
            predictor.gradients(&inputs[k], Objective::OutputGradient(&g), checkpoint_every)?;
        accumulate(&mut total.grads, step.grads)?;
        if let Some(gx) = step.input_grad {
            for slot in (0..s).filter(|slot| k + slot >= s) {
                let j = k + slot - s;
                let part = gx
                    .narrow(2, slot * c, c)?
                    .broadcast_mul(&batch.residual_scale)?;
                accumulate(&mut carried[j..=j], vec![Some(part)])?;
            }
        }
        later = Some(g);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::samples::WindowSpec;
    use crate::model::testing::tiny_graph;
    use crate::model::{MixedPrecision, ModelConfig};
    use crate::predict::{Patched, WholeGraph};

    const S: usize = 2;
    const C: usize = 2;
    const E: usize = 1;

    /// A batch of 2 samples, 3 rollout steps, on every node of `graph`, with some
    /// missing inputs and targets.
    fn batch(nodes: usize) -> (Batch, Vec<Vec<f32>>) {
        let k_steps = 3;
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        let b = 2;
        let batch = Batch {
            t0: vec![1, 2],
            nodes,
            channels: C,
            input_steps: S,
            inputs: (0..b * nodes * S * C).map(value).collect(),
            input_valid: (0..b * nodes * S * C).map(|i| i % 13 != 0).collect(),
            rollout_steps: k_steps,
            targets: (0..k_steps * b * nodes * C)
                .map(|i| value(i + 5) / 2.0)
                .collect(),
            target_valid: (0..k_steps * b * nodes * C).map(|i| i % 11 != 0).collect(),
            extras: Vec::new(),
        };
        let extras = (0..k_steps)
            .map(|k| (0..b * nodes * E).map(|i| value(i + 31 * k)).collect())
            .collect();
        (batch, extras)
    }

    fn stats() -> NormStats {
        NormStats {
            channels: vec!["a".into(), "b".into()],
            mean: vec![0.0, 0.0],
            std: vec![2.0, 1.0],
            diff_std: vec![0.5, 0.25],
            lead_steps: WindowSpec::default().lead_steps,
            train_steps: vec![(0, 1)],
            dataset_fingerprint: String::new(),
        }
    }

    fn whole() -> WholeGraph {
        let config = ModelConfig {
            latent_size: 8,
            num_gnn_layers: 2,
            ..Default::default()
        }
        .for_data(S, C, 0);
        let config = ModelConfig {
            grid_input_features: config.grid_input_features + E,
            ..config
        };
        WholeGraph::initialised(&tiny_graph(1), config, MixedPrecision::Off, 5, &Device::Cpu)
            .unwrap()
    }

    /// Backprop through the whole unrolled chain, on the autograd view: the reference.
    fn unrolled_reference(model: &WholeGraph, rb: &RolloutBatch) -> StepGradients {
        let net = model.network();
        let mut sums: Vec<Tensor> = Vec::new();
        let mut loss: Option<Tensor> = None;
        for (k, t) in rb.targets.iter().enumerate() {
            let x = rb.step_inputs(k, &sums).unwrap();
            let r = net.model().forward(model.graph(), &x).unwrap();
            let sum = match sums.last() {
                Some(prev) => (prev + r).unwrap(),
                None => r,
            };
            let l = weighted_mse(&sum, &t.y, &t.w, t.denominator).unwrap();
            loss = Some(match loss {
                Some(a) => (a + l).unwrap(),
                None => l,
            });
            sums.push(sum);
        }
        let loss = loss.unwrap();
        let store = loss.backward().unwrap();
        StepGradients {
            loss: loss.to_scalar::<f32>().unwrap() as f64,
            grads: net
                .vars()
                .iter()
                .map(|(_, v)| store.get(v).cloned())
                .collect(),
            input_grad: None,
        }
    }

    fn assert_close(a: &StepGradients, b: &StepGradients, tol: f64) {
        assert!(
            (a.loss - b.loss).abs() <= tol * a.loss.abs(),
            "{} vs {}",
            a.loss,
            b.loss
        );
        for (i, (x, y)) in a.grads.iter().zip(&b.grads).enumerate() {
            let flat = |t: &Option<Tensor>| -> Vec<f32> {
                t.as_ref()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let (x, y) = (flat(x), flat(y));
            let scale = x.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = x
                .iter()
                .zip(&y)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                worst / scale <= tol as f32,
                "parameter {i}: relative difference {}",
                worst / scale
            );
        }
    }

    fn rollout_batch(model: &WholeGraph) -> RolloutBatch {
        let nodes = model.graph().grid_nodes.count;
        let (b, extras) = batch(nodes);
        let cells: Vec<u32> = (0..nodes as u32).collect();
        let lat_w = vec![1.0; nodes];
        RolloutBatch::new(
            &b,
            (&cells, &extras),
            (&lat_w, &[1.0, 0.5]),
            &stats(),
            (&Device::Cpu, model.network().dtype()),
        )
        .unwrap()
    }

    #[test]
    fn rollout_gradients_equal_backprop_through_the_unrolled_chain() {
        let model = whole();
        let rb = rollout_batch(&model);
        let reference = unrolled_reference(&model, &rb);
        for every in [None, Some(1)] {
            assert_close(
                &reference,
                &rollout_gradients(&model, &rb, every).unwrap(),
                2e-5,
            );
        }
    }

    #[test]
    fn patched_rollout_gradients_equal_the_whole_graph_s() {
        let model = whole();
        let rb = rollout_batch(&model);
        let reference = rollout_gradients(&model, &rb, None).unwrap();
        let graph = tiny_graph(1);
        let options = crate::graph::PatchOptions {
            n_patches: 2,
            halo_deg: 180.0,
        };
        let grid = crate::data::Grid::global_cell_centred(30.0);
        let patches = Patched::split(&graph, &grid, &options, (&Device::Cpu, DType::F32)).unwrap();
        let patched = Patched::new(model.shared_network(), patches);
        assert_close(
            &reference,
            &rollout_gradients(&patched, &rb, None).unwrap(),
            2e-5,
        );
    }

    #[test]
    fn the_second_step_sees_the_first_prediction_in_the_newest_slot() {
        let model = whole();
        let rb = rollout_batch(&model);
        let s1 = rb.targets[0].y.clone();
        let x1 = rb.step_inputs(1, std::slice::from_ref(&s1)).unwrap();
        let want_old = rb.x.narrow(2, C, C).unwrap();
        let got_old = x1.narrow(2, 0, C).unwrap();
        assert_eq!(
            want_old.to_vec3::<f32>().unwrap(),
            got_old.to_vec3::<f32>().unwrap()
        );
        let predicted = (rb.x.narrow(2, C, C).unwrap()
            + s1.broadcast_mul(&rb.residual_scale).unwrap())
        .unwrap();
        let got_new = x1.narrow(2, C, C).unwrap();
        assert_eq!(
            predicted.to_vec3::<f32>().unwrap(),
            got_new.to_vec3::<f32>().unwrap()
        );
        let flags = x1.narrow(2, 3 * C, C).unwrap().flatten_all().unwrap();
        assert!(flags.to_vec1::<f32>().unwrap().iter().all(|&f| f == 1.0));
        let extras = x1.narrow(2, 4 * C, E).unwrap();
        assert_eq!(
            extras.to_vec3::<f32>().unwrap(),
            rb.extras[1].to_vec3::<f32>().unwrap()
        );
    }
}
