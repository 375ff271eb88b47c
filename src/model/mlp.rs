//! The multi-layer perceptron every GraphCast block is made of, with a first
//! layer that can be applied block by block (the "concat trick").
//!
//! An edge MLP's input is the concatenation `[edge, sender, receiver]`, so its
//! first layer computes `W_e e + W_s h_s + W_r h_r + b`. Gathering node latents
//! onto edges and then concatenating costs `[B, E, 3L]` memory and `E` row
//! products per node block; projecting node latents once per node
//! (`[B, N, L] x W_s -> [B, N, H]`) and gathering the projected rows gives the
//! same sum with `N <= E` products and no concatenated tensor. [`Mlp::project`]
//! and [`Mlp::forward_preactivation`] expose that split; [`Mlp::forward`] takes the
//! concatenation, as a plain reference implementation would.
//!
//! Parameters (VarMap keys under the MLP's prefix): `layers.{i}.weight`
//! (`[out, in]`) and `layers.{i}.bias` (`[out]`) for `i = 0..=hidden_layers`, and
//! `norm.weight` / `norm.bias` when it ends in a LayerNorm. The first layer's
//! weight is ONE matrix over the whole concatenated input, its column blocks in
//! the order of the input parts, so it maps one-to-one onto a PyTorch
//! `nn.Linear` applied to `torch.cat(parts, -1)`.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{linear, Linear, Module, VarBuilder};

use super::dense::{dense, dense_runs_fused};
use super::layer_norm::LayerNorm;

/// `in -> hidden (x hidden_layers, SiLU after each) -> out`, then an optional LayerNorm.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
    norm: Option<LayerNorm>,
    /// Width of each part of the concatenated input (first-layer column blocks).
    input_widths: Vec<usize>,
}

impl Mlp {
    /// An MLP over the concatenation of inputs of widths `input_widths`. With
    /// `hidden_layers == 0` it is a single linear layer (plus the norm).
    pub fn new(
        input_widths: &[usize],
        hidden: usize,
        out: usize,
        hidden_layers: usize,
        layer_norm: bool,
        vb: VarBuilder,
    ) -> Result<Mlp> {
        let in_total = input_widths.iter().sum();
        let widths: Vec<usize> = std::iter::once(in_total)
            .chain(std::iter::repeat_n(hidden, hidden_layers))
            .chain(std::iter::once(out))
            .collect();
        let lvb = vb.pp("layers");
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], lvb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = if layer_norm {
            Some(LayerNorm::new(out, vb.pp("norm"))?)
        } else {
            None
        };
        Ok(Mlp {
            layers,
            norm,
            input_widths: input_widths.to_vec(),
        })
    }

    /// Input part `part` times its block of the first layer's weight, without
    /// the bias: `[.., width_part] -> [.., hidden]`. Summing the projections of
    /// all parts (broadcasting as needed) plus the first layer's bias and passing the
    /// sum to [`Mlp::forward_preactivation`] equals [`Mlp::forward`] on their
    /// concatenation.
    pub fn project(&self, part: usize, x: &Tensor) -> Result<Tensor> {
        Linear::new(self.first_layer_block(part, x.dtype())?, None).forward(x)
    }

    /// [`Mlp::project`] plus the first layer's bias: adding it to one (small, per-node)
    /// part instead of to the summed edge rows saves a pass over them.
    pub fn project_with_bias(&self, part: usize, x: &Tensor) -> Result<Tensor> {
        let bias = self.layers[0]
            .bias()
            .expect("layers are built with a bias")
            .to_dtype(x.dtype())?;
        dense(x, &self.first_layer_block(part, x.dtype())?, &bias, false)
    }

    /// `x` projected for two input parts at once: `[.., 2 hidden]`, part `first`'s
    /// projection plus the first layer's bias, then part `second`'s projection. One
    /// product for an edge MLP whose senders and receivers are the same nodes.
    pub fn project_pair_with_bias(
        &self,
        first: usize,
        second: usize,
        x: &Tensor,
    ) -> Result<Tensor> {
        let bias = self.layers[0]
            .bias()
            .expect("layers are built with a bias")
            .to_dtype(x.dtype())?;
        let weight = Tensor::cat(
            &[
                self.first_layer_block(first, x.dtype())?,
                self.first_layer_block(second, x.dtype())?,
            ],
            0,
        )?;
        let bias = Tensor::cat(&[&bias, &bias.zeros_like()?], 0)?;
        dense(x, &weight, &bias, false)
    }

    /// The first layer's weight columns that act on input part `part`, in `dtype`.
    pub fn first_layer_block(&self, part: usize, dtype: DType) -> Result<Tensor> {
        let offset = self.input_widths[..part].iter().sum();
        self.layers[0]
            .weight()
            .narrow(1, offset, self.input_widths[part])?
            // CUDA's matmul rejects the column slice's strides.
            .contiguous()?
            .to_dtype(dtype)
    }

    /// The MLP after its first layer, given that layer's output with the bias already
    /// added (see [`Mlp::project_with_bias`]), plus `residual` when given.
    pub fn forward_preactivation(
        &self,
        preactivation: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = preactivation.clone();
        for layer in &self.layers[1..] {
            h = apply(layer, &h, true)?;
        }
        match (&self.norm, residual) {
            (Some(norm), Some(r)) => norm.forward_residual(&h, r),
            (Some(norm), None) => norm.forward(&h),
            (None, Some(r)) => r.broadcast_add(&h),
            (None, None) => Ok(h),
        }
    }

    /// The MLP on input parts given separately, each `[batch, rows, width_part]`
    /// with batch dimensions that broadcast against each other, plus `residual` when
    /// given. Where the dense op is fused ([`dense_runs_fused`]: the CPU in f32/f64,
    /// CUDA under `--cuda-fused-ops`) the parts are concatenated (see the comment
    /// inside); elsewhere each is projected on its own and no concatenation is formed.
    pub fn forward_parts(&self, parts: &[&Tensor], residual: Option<&Tensor>) -> Result<Tensor> {
        assert_eq!(
            parts.len(),
            self.input_widths.len(),
            "one tensor per input part"
        );
        let x0 = parts[0];
        if dense_runs_fused(x0, &[]) {
            // With the fused dense op, one product over the concatenation keeps less
            // than the split: the concatenation (inputs' width) instead of each part's
            // projection and their sums (the hidden width each).
            let batch = parts
                .iter()
                .map(|p| p.dim(0))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .fold(1, usize::max);
            let parts = parts
                .iter()
                .map(|p| p.broadcast_as((batch, p.dim(1)?, p.dim(2)?)))
                .collect::<Result<Vec<_>>>()?;
            let x = Tensor::cat(&parts, D::Minus1)?;
            return self.forward_preactivation(&apply(&self.layers[0], &x, false)?, residual);
        }
        let mut sum = self.project_with_bias(0, x0)?;
        for (i, x) in parts.iter().enumerate().skip(1) {
            sum = sum.broadcast_add(&self.project(i, x)?)?;
        }
        self.forward_preactivation(&sum, residual)
    }

    /// `x + MLP(x)` (the input widths must add up to the output width).
    pub fn forward_residual(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_preactivation(&apply(&self.layers[0], x, false)?, Some(x))
    }
}

impl Module for Mlp {
    /// The MLP on the concatenated input `[.., sum(input_widths)]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_preactivation(&apply(&self.layers[0], x, false)?, None)
    }
}

/// `layer` applied to `x` (to `silu(x)` with `silu_input`) in the dtype of `x`: under
/// mixed precision the master weights are cast to the activations' dtype here, and the
/// cast's backward returns their gradients in the master dtype.
fn apply(layer: &Linear, x: &Tensor, silu_input: bool) -> Result<Tensor> {
    let bias = layer.bias().expect("layers are built with a bias");
    dense(
        x,
        &layer.weight().to_dtype(x.dtype())?,
        &bias.to_dtype(x.dtype())?,
        silu_input,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{check_gradients, random_tensor};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn mlp(varmap: &VarMap, dtype: DType, hidden_layers: usize, norm: bool) -> Result<Mlp> {
        let vb = VarBuilder::from_varmap(varmap, dtype, &Device::Cpu);
        Mlp::new(&[3, 4, 2], 5, 6, hidden_layers, norm, vb)
    }

    #[test]
    fn names_and_shapes() -> Result<()> {
        let varmap = VarMap::new();
        mlp(&varmap, DType::F32, 2, true)?;
        let data = varmap.data().lock().unwrap();
        let mut keys: Vec<(&str, Vec<usize>)> = data
            .iter()
            .map(|(k, v)| (k.as_str(), v.dims().to_vec()))
            .collect();
        keys.sort();
        let expected = vec![
            ("layers.0.bias", vec![5]),
            ("layers.0.weight", vec![5, 9]),
            ("layers.1.bias", vec![5]),
            ("layers.1.weight", vec![5, 5]),
            ("layers.2.bias", vec![6]),
            ("layers.2.weight", vec![6, 5]),
            ("norm.bias", vec![6]),
            ("norm.weight", vec![6]),
        ];
        assert_eq!(keys, expected);
        Ok(())
    }

    #[test]
    fn split_first_layer_equals_concat() -> Result<()> {
        let varmap = VarMap::new();
        let m = mlp(&varmap, DType::F64, 1, true)?;
        // Parts with different batch dimensions, as on edges: [1,E,..] and [B,E,..].
        let a = random_tensor(&[1, 7, 3], DType::F64, 1)?;
        let b = random_tensor(&[2, 7, 4], DType::F64, 2)?;
        let c = random_tensor(&[2, 7, 2], DType::F64, 3)?;
        let concat = Tensor::cat(&[&a.broadcast_as((2, 7, 3))?, &b, &c], 2)?;
        let reference = m.forward(&concat)?;
        let split = m.forward_parts(&[&a, &b, &c], None)?;
        assert_eq!(split.dims(), &[2, 7, 6]);
        let diff = (reference - split)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "max difference {diff}");
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let varmap = VarMap::new();
        let m = mlp(&varmap, DType::F64, 1, true)?;
        for var in varmap.all_vars().iter().filter(|v| v.rank() == 1) {
            // LayerNorm weight/bias off their 1/0 initialisation.
            var.set(&random_tensor(var.dims(), DType::F64, 9)?)?;
        }
        let x = random_tensor(&[2, 4, 9], DType::F64, 4)?;
        let params = [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
            "norm.weight",
            "norm.bias",
        ];
        check_gradients(&varmap, &x, |x| m.forward(x), &params)?;
        // The split path, too.
        check_gradients(
            &varmap,
            &x,
            |x| {
                let parts = [x.narrow(2, 0, 3)?, x.narrow(2, 3, 4)?, x.narrow(2, 7, 2)?];
                m.forward_parts(&[&parts[0], &parts[1], &parts[2]], None)
            },
            &params,
        )
    }
}
