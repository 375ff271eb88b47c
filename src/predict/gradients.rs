//! Gradients of a training step, plainly or with gradient checkpointing.
//!
//! candle has no checkpointing, so it is done by hand: the forward pass runs the
//! encoder, then each segment of `every` processor blocks, on a detached input and
//! keeps only the segment boundaries; the decoder runs on the last boundary as fresh
//! variables and is back-propagated at once (its graph freed); then, from the last
//! segment to the first, each segment is recomputed from its saved input (as fresh
//! variables) and back-propagated with the surrogate loss `sum(out * grad_out)`, which
//! yields the segment's parameter gradients and the gradient for its input; the encoder
//! is recomputed last the same way. So at most one stage's activations are alive at a
//! time, for one extra forward pass. The result equals plain back-propagation up to
//! floating-point summation order (tested).

use candle_core::backprop::GradStore;
use std::ops::Range;

use candle_core::{Result, Tensor, Var};

use crate::model::{GraphCast, GraphTensors, Latents};
use crate::predict::loss::scalar;

/// Loss value and one gradient per parameter (in `vars` order; None: untouched), and
/// the gradient for the inputs when it was asked for.
pub struct StepGradients {
    pub loss: f64,
    pub grads: Vec<Option<Tensor>>,
    pub input_grad: Option<Tensor>,
}

impl StepGradients {
    /// Adds `other`'s loss and gradients to these (patches of one batch).
    /// Input gradients are not added: their nodes differ from patch to patch.
    pub fn add(&mut self, other: StepGradients) -> Result<()> {
        self.loss += other.loss;
        accumulate(&mut self.grads, other.grads)
    }

    /// No loss and no gradient yet, for `n` parameters.
    pub fn empty(n: usize) -> StepGradients {
        StepGradients {
            loss: 0.0,
            grads: vec![None; n],
            input_grad: None,
        }
    }
}

/// `acc += grads`, slot by slot (a None slot takes the gradient as it is).
pub fn accumulate(acc: &mut [Option<Tensor>], grads: Vec<Option<Tensor>>) -> Result<()> {
    for (slot, g) in acc.iter_mut().zip(grads) {
        if let Some(g) = g {
            *slot = Some(match slot.take() {
                Some(a) => (a + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

fn add_grads(acc: &mut [Option<Tensor>], vars: &[(String, Var)], store: &GradStore) -> Result<()> {
    let grads = vars.iter().map(|(_, v)| store.get(v.as_tensor()).cloned());
    accumulate(acc, grads.collect())
}

/// Gradients of `loss_fn(model(inputs))`; `checkpoint_every` = Some(k) checkpoints the
/// processor in segments of k blocks; `input_grad` also returns the inputs' gradient.
pub fn step_gradients(
    model: &GraphCast,
    graph: &GraphTensors,
    (inputs, input_grad): (&Tensor, bool),
    vars: &[(String, Var)],
    loss_fn: impl Fn(&Tensor) -> Result<Tensor>,
    checkpoint_every: Option<usize>,
) -> Result<StepGradients> {
    let input_var = input_grad.then(|| Var::from_tensor(inputs)).transpose()?;
    let inputs = input_var.as_ref().map_or(inputs, |v| v.as_tensor());
    let grad_of_inputs = |store: &GradStore| {
        input_var
            .as_ref()
            .and_then(|v| store.get(v.as_tensor()).cloned())
    };
    let Some(every) = checkpoint_every else {
        let mut grads = vec![None; vars.len()];
        let loss = loss_fn(&model.forward(graph, inputs)?)?;
        let store = loss.backward()?;
        add_grads(&mut grads, vars, &store)?;
        return Ok(StepGradients {
            loss: scalar(&loss)?,
            grads,
            input_grad: grad_of_inputs(&store),
        });
    };
    let (batch, nodes, _) = inputs.dims3()?;
    let (graph, inputs) = model.batched(graph, inputs)?;
    let blocks = model.processor_blocks().len();
    let segments: Vec<Range<usize>> = (0..blocks)
        .step_by(every.max(1))
        .map(|s| s..(s + every.max(1)).min(blocks))
        .collect();
    let run = Recompute {
        model,
        graph: &graph,
        vars,
    };
    let boundaries = run.boundaries(&inputs, &segments)?;
    // Decoder and loss on the last boundary, as variables.
    let mut grads = vec![None; vars.len()];
    let (last, last_vars) = as_vars(boundaries.last().expect("boundary"))?;
    let pred = model.unbatched(model.decode(&graph, &last)?, batch, nodes)?;
    let loss = loss_fn(&pred)?;
    let store = loss.backward()?;
    add_grads(&mut grads, vars, &store)?;
    let grad_out = grads_of(&last_vars, &store);
    // The decoder's graph is done with: free it before the segments are recomputed.
    let loss_value = scalar(&loss)?;
    drop((store, loss, pred, last));
    let store = run.backward(&inputs, &segments, &boundaries, grad_out, &mut grads)?;
    Ok(StepGradients {
        loss: loss_value,
        grads,
        input_grad: store.as_ref().and_then(grad_of_inputs),
    })
}

/// The model's stages run again from saved boundaries, for their gradients.
struct Recompute<'a> {
    model: &'a GraphCast,
    graph: &'a GraphTensors,
    vars: &'a [(String, Var)],
}

impl Recompute<'_> {
    fn segment(&self, range: Range<usize>, mut latents: Latents) -> Result<Latents> {
        for k in range {
            latents = self.model.process_block(k, self.graph, latents)?;
        }
        Ok(latents)
    }

    /// Forward keeping only the boundaries: the encoder's output, then each segment's.
    /// The encoder is a segment too: its graph is dropped now and rebuilt at the end.
    fn boundaries(&self, inputs: &Tensor, segments: &[Range<usize>]) -> Result<Vec<Latents>> {
        let mut boundaries = vec![detached(&self.model.encode(self.graph, inputs)?)];
        for range in segments {
            let input = detached(boundaries.last().expect("boundary"));
            boundaries.push(detached(&self.segment(range.clone(), input)?));
        }
        Ok(boundaries)
    }

    /// Backward through the segments, last first, each recomputed from its saved input
    /// with the surrogate `sum(out * grad_out)`; the encoder last, whose gradients (the
    /// inputs' among them) are returned.
    fn backward(
        &self,
        inputs: &Tensor,
        segments: &[Range<usize>],
        boundaries: &[Latents],
        mut grad_out: [Option<Tensor>; 3],
        grads: &mut [Option<Tensor>],
    ) -> Result<Option<GradStore>> {
        for (i, range) in segments.iter().enumerate().rev() {
            let (input, input_vars) = as_vars(&boundaries[i])?;
            let out = self.segment(range.clone(), input)?;
            let Some(surrogate) = surrogate(&out, &grad_out)? else {
                return Ok(None);
            };
            let store = surrogate.backward()?;
            add_grads(grads, self.vars, &store)?;
            grad_out = grads_of(&input_vars, &store);
        }
        let encoded = self.model.encode(self.graph, inputs)?;
        let Some(surrogate) = surrogate(&encoded, &grad_out)? else {
            return Ok(None);
        };
        let store = surrogate.backward()?;
        add_grads(grads, self.vars, &store)?;
        Ok(Some(store))
    }
}

fn detached(l: &Latents) -> Latents {
    Latents {
        grid: l.grid.detach(),
        mesh: l.mesh.detach(),
        mesh_edges: l.mesh_edges.detach(),
    }
}

/// Fresh variables holding the latents, so their gradients can be read.
fn as_vars(l: &Latents) -> Result<(Latents, [Var; 3])> {
    let vars = [
        Var::from_tensor(&l.grid)?,
        Var::from_tensor(&l.mesh)?,
        Var::from_tensor(&l.mesh_edges)?,
    ];
    let latents = Latents {
        grid: vars[0].as_tensor().clone(),
        mesh: vars[1].as_tensor().clone(),
        mesh_edges: vars[2].as_tensor().clone(),
    };
    Ok((latents, vars))
}

fn grads_of(vars: &[Var; 3], store: &GradStore) -> [Option<Tensor>; 3] {
    std::array::from_fn(|i| store.get(vars[i].as_tensor()).cloned())
}

/// `sum(out * grad_out)` over the latents that received a gradient (None if none did).
fn surrogate(out: &Latents, grad_out: &[Option<Tensor>; 3]) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for (t, g) in [&out.grid, &out.mesh, &out.mesh_edges]
        .into_iter()
        .zip(grad_out)
    {
        let Some(g) = g else { continue };
        let term = (t.broadcast_as(g.shape())? * g)?.sum_all()?;
        total = Some(match total {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{random_tensor, tiny_graph};
    use crate::model::Batching;
    use crate::model::ModelConfig;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    fn setup(
        dtype: DType,
        batching: Batching,
    ) -> (GraphCast, GraphTensors, Vec<(String, Var)>, Tensor, Tensor) {
        let dev = Device::Cpu;
        let graph = GraphTensors::new(&tiny_graph(1), &dev, dtype).unwrap();
        let config = ModelConfig {
            latent_size: 8,
            num_gnn_layers: 4,
            grid_input_features: 3,
            output_channels: 2,
            batching,
            ..Default::default()
        };
        let varmap = VarMap::new();
        let model = GraphCast::new(
            config,
            &graph,
            VarBuilder::from_varmap(&varmap, dtype, &dev),
        )
        .unwrap();
        let vars = crate::model::named_parameters(&varmap);
        crate::predict::init::init_parameters(&vars, 3).unwrap();
        let n = graph.grid_nodes.count;
        let x = random_tensor(&[2, n, 3], dtype, 11).unwrap();
        let w = random_tensor(&[2, n, 2], dtype, 12).unwrap();
        (model, graph, vars, x, w)
    }

    fn to_f64_vec(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn compare(dtype: DType, batching: Batching, tol: f64) {
        let (model, graph, vars, x, w) = setup(dtype, batching);
        let loss = |p: &Tensor| (p.sqr()? * &w)?.sum_all()?.to_dtype(DType::F32);
        let plain = step_gradients(&model, &graph, (&x, true), &vars, loss, None).unwrap();
        for every in [1, 2, 3] {
            let ck = step_gradients(&model, &graph, (&x, true), &vars, loss, Some(every)).unwrap();
            assert_eq!(plain.loss, ck.loss);
            let (a, b) = (plain.input_grad.as_ref(), ck.input_grad.as_ref());
            let (a, b) = (to_f64_vec(a.unwrap()), to_f64_vec(b.unwrap()));
            let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                scale > 0.0 && worst / scale <= tol,
                "input gradient (every {every}): {}",
                worst / scale
            );
            for ((name, _), (a, b)) in vars.iter().zip(plain.grads.iter().zip(&ck.grads)) {
                let (a, b) = (a.as_ref().expect(name), b.as_ref().expect(name));
                let a = to_f64_vec(a);
                let b = to_f64_vec(b);
                let scale = a.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
                let worst = a
                    .iter()
                    .zip(&b)
                    .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    worst / scale <= tol,
                    "{name} (every {every}): relative difference {}",
                    worst / scale
                );
            }
        }
    }

    #[test]
    fn checkpointed_gradients_equal_plain_backprop_f64() {
        compare(DType::F64, Batching::Shared, 1e-12);
        compare(DType::F64, Batching::Replicated, 1e-12);
    }

    #[test]
    fn checkpointed_gradients_equal_plain_backprop_f32() {
        compare(DType::F32, Batching::Shared, 1e-6);
    }
}
