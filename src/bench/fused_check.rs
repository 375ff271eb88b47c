//! `check-gpu`'s check of the fused ops (on a GPU those of `--cuda-fused-ops`; the CPU
//! always runs its own): an edge MLP's first layer, a dense layer through SiLU and
//! residual + LayerNorm, forward and backward, against the same function composed from
//! plain candle ops on the CPU in f64. Run it before trusting the flag on a new GPU.

use candle_core::{DType, Device, Tensor, Var, D};

use super::gpu::{max_rel, median_time, mp_edges, random, KernelCheck, MP_FEATURES, MP_NODES};
use crate::model::aggregate::Aggregation;
use crate::model::dense::DenseOp;
use crate::model::edge_input::{EdgeInputOp, NodeLayout};
use crate::model::layer_norm::{ResidualLayerNormOp, LAYER_NORM_EPS};
use crate::model::EdgeTensors;

/// The operands, in order: edge latents `[1, E, F]`, the edge block `[F, F]`, sender and
/// receiver projections `[1, N, F]` each, the dense layer's weight `[F, F]` and bias
/// `[F]`, the LayerNorm's stacked weight and bias `[2, F]`, and the output's weights
/// `[1, E, F]` (what the backward differentiates: `sum(out * weights)`).
fn operands(edges: usize) -> candle_core::Result<Vec<Tensor>> {
    let (n, f) = (MP_NODES, MP_FEATURES);
    let shapes: [&[usize]; 8] = [
        &[1, edges, f],
        &[f, f],
        &[1, n, f],
        &[1, n, f],
        &[f, f],
        &[f],
        &[2, f],
        &[1, edges, f],
    ];
    let scale = (f as f64).sqrt().recip();
    shapes
        .iter()
        .enumerate()
        .map(|(i, dims)| {
            let t = random(dims, 10 + i as u64, &Device::Cpu)?;
            // Weights of unit gain, so activations stay of order one.
            match i {
                1 | 4 => t * scale,
                _ => Ok(t),
            }
        })
        .collect()
}

/// The fused ops on `edges`' device: the output, then every operand's gradient, flat.
fn fused_chain(edges: &EdgeTensors, ops: &[Tensor]) -> candle_core::Result<Tensor> {
    with_gradients(ops, |[e, w1, s, r, w2, b2, affine]| {
        let nodes = Tensor::cat(&[s, r], 1)?;
        let edge_op = EdgeInputOp {
            edges: edges.clone(),
            layout: NodeLayout::Stacked,
        };
        let h = e.apply_op3(w1, &nodes, edge_op)?;
        let y = h.apply_op3(w2, b2, DenseOp { silu_input: true })?;
        let norm = ResidualLayerNormOp {
            eps: LAYER_NORM_EPS,
        };
        y.apply_op3(e, affine, norm)
    })
}

/// The same function from plain candle ops (index_select, matmul, SiLU, the
/// LayerNorm's definition), in whatever dtype and on whatever device `ops` are.
fn composed_chain(edges: &EdgeTensors, ops: &[Tensor]) -> candle_core::Result<Tensor> {
    with_gradients(ops, |[e, w1, s, r, w2, b2, affine]| {
        let gathered =
            (s.index_select(&edges.senders, 1)? + r.index_select(&edges.receivers, 1)?)?;
        let h = (e.broadcast_matmul(&w1.t()?)? + gathered)?;
        let y = h.silu()?.broadcast_matmul(&w2.t()?)?.broadcast_add(b2)?;
        let centred = y.broadcast_sub(&y.mean_keepdim(D::Minus1)?)?;
        let rstd = (centred.sqr()?.mean_keepdim(D::Minus1)? + LAYER_NORM_EPS)?
            .sqrt()?
            .recip()?;
        let normed = centred.broadcast_mul(&rstd)?;
        let affine_out = normed
            .broadcast_mul(&affine.get(0)?)?
            .broadcast_add(&affine.get(1)?)?;
        e + affine_out
    })
}

/// `chain` of the first seven operands (as variables), then the gradients of
/// `sum(out * weights)` (`weights` the eighth operand) for them, flattened after the
/// output into one tensor.
fn with_gradients(
    ops: &[Tensor],
    chain: impl Fn([&Tensor; 7]) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let vars = ops[..7]
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let out = chain([0, 1, 2, 3, 4, 5, 6].map(|i| vars[i].as_tensor()))?;
    let grads = (&out * &ops[7])?.sum_all()?.backward()?;
    let mut parts = vec![out.flatten_all()?];
    for v in &vars {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("an operand without a gradient".into()))?;
        parts.push(g.flatten_all()?);
    }
    Tensor::cat(&parts, 0)
}

/// The fused ops on `device` (in f32) against the composed function on the CPU in f64.
pub fn fused_ops_check(device: &Device) -> KernelCheck {
    let mut check = KernelCheck {
        name: "fused ops: edge input, dense through SiLU, residual LayerNorm; forward and backward"
            .into(),
        size: format!(
            "{MP_NODES} nodes, {} edges, {MP_FEATURES} features",
            MP_NODES * super::gpu::MP_DEGREE
        ),
        median_s: None,
        gflops: None,
        max_rel_diff: None,
        checked_against: "candle's composed ops on the CPU in f64".into(),
        ok: false,
        error: None,
    };
    let run = || -> candle_core::Result<(f64, f64)> {
        let edges = mp_edges(device, Aggregation::Csr)?;
        let ops = operands(edges.len())?;
        let here = ops
            .iter()
            .map(|t| t.to_device(device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (secs, fused) = crate::device::with_cuda_fused_ops(|| {
            fused_chain(&edges, &here)?;
            median_time(3, || fused_chain(&edges, &here))
        })?;
        let exact = ops
            .iter()
            .map(|t| t.to_dtype(DType::F64))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let reference = composed_chain(&mp_edges(&Device::Cpu, Aggregation::IndexAdd)?, &exact)?;
        Ok((secs, max_rel(&fused, &reference)?))
    };
    match run() {
        Ok((secs, rel)) => {
            check.median_s = Some(secs);
            check.max_rel_diff = Some(rel);
            check.ok = rel < 1e-4;
        }
        Err(err) => check.error = Some(err.to_string()),
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's fused kernels pass; and the check can fail: the composed function with
    /// the LayerNorm's weight and bias shifted by 1e-2 is far from it.
    #[test]
    fn the_cpu_passes_and_a_wrong_function_does_not() -> candle_core::Result<()> {
        let check = fused_ops_check(&Device::Cpu);
        assert!(check.ok, "{check:?}");
        let edges = mp_edges(&Device::Cpu, Aggregation::Csr)?;
        let ops = operands(edges.len())?;
        let fused = fused_chain(&edges, &ops)?;
        let mut shifted = ops.clone();
        shifted[6] = (&shifted[6] + 1e-2)?;
        let wrong = composed_chain(&edges, &shifted)?;
        assert!(max_rel(&fused, &wrong)? > 1e-4);
        Ok(())
    }
}
