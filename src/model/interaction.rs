//! One message-passing step over one edge set (GraphCast's / MeshGraphNets'
//! interaction network), with residual connections on edges and nodes.
//!
//! ```text
//! e'   = e   + MLP_e([e, h_sender, h_receiver])     every edge
//! h_r' = h_r + MLP_n([h_r, sum of incoming e'])     receiver nodes
//! h_s' = h_s + MLP_s(h_s)                            sender nodes (encoder only)
//! ```
//!
//! The sender update is GraphCast's encoder, where grid nodes send but receive
//! nothing and are still passed through an MLP before the decoder uses them.
//! On the homogeneous mesh, senders and receivers are the same nodes and only
//! the receiver update applies.
//!
//! Tensors: nodes `[B, N, L]` and edges `[B, E, L]`, where a batch dimension of 1
//! broadcasts (embeddings of static features do not depend on the sample; after
//! the first edge update the edges do). The edge MLP's first layer is applied
//! per node and gathered ([`Mlp::project`]), never on a `[B, E, 3L]` concatenation.
//!
//! Parameters: `edge_mlp.*` (input `[edge, sender, receiver]`), `node_mlp.*`
//! (input `[receiver, aggregated]`) and, with a sender update, `sender_mlp.*`;
//! see [`Mlp`] for the names inside each. All MLPs end in LayerNorm.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::aggregate::sum_into_receivers;
use super::edge_input::{edge_input, edge_input_same_nodes};
use super::graph_tensors::EdgeTensors;
use super::mlp::Mlp;

#[derive(Debug, Clone)]
pub struct InteractionNetwork {
    edge_mlp: Mlp,
    node_mlp: Mlp,
    sender_mlp: Option<Mlp>,
}

impl InteractionNetwork {
    /// Latent width `latent` everywhere (MLP hidden width too); `update_senders`
    /// adds the sender MLP of a bipartite encoder.
    pub fn new(
        latent: usize,
        hidden_layers: usize,
        update_senders: bool,
        vb: VarBuilder,
    ) -> Result<InteractionNetwork> {
        let mlp = |inputs: usize, name: &str| {
            Mlp::new(
                &vec![latent; inputs],
                latent,
                latent,
                hidden_layers,
                true,
                vb.pp(name),
            )
        };
        Ok(InteractionNetwork {
            edge_mlp: mlp(3, "edge_mlp")?,
            node_mlp: mlp(2, "node_mlp")?,
            sender_mlp: if update_senders {
                Some(mlp(1, "sender_mlp")?)
            } else {
                None
            },
        })
    }

    /// The message-passing step: `(receivers', edges')` from sender and receiver
    /// node latents and the edge latents of `edges`.
    pub fn forward(
        &self,
        edges: &EdgeTensors,
        senders: &Tensor,
        receivers: &Tensor,
        edge_latents: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let m = &self.edge_mlp;
        let edge_block = m.first_layer_block(0, edge_latents.dtype())?;
        let preactivation = if senders.id() == receivers.id() {
            // The processor: one node set sends and receives, one product projects it.
            let sr = m.project_pair_with_bias(1, 2, senders)?;
            edge_input_same_nodes(edges, edge_latents, &edge_block, &sr)?
        } else {
            edge_input(
                edges,
                edge_latents,
                &edge_block,
                &m.project_with_bias(1, senders)?,
                &m.project(2, receivers)?,
            )?
        };
        let new_edges = m.forward_preactivation(&preactivation, Some(edge_latents))?;
        let aggregated = sum_into_receivers(edges, &new_edges)?;
        let new_receivers = self
            .node_mlp
            .forward_parts(&[receivers, &aggregated], Some(receivers))?;
        Ok((new_receivers, new_edges))
    }

    /// `h_s + MLP_s(h_s)`; the identity for a network built without a sender update.
    pub fn update_senders(&self, senders: &Tensor) -> Result<Tensor> {
        match &self.sender_mlp {
            Some(mlp) => mlp.forward_residual(senders),
            None => Ok(senders.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::aggregate::{gather_receivers, gather_senders};
    use crate::model::graph_tensors::GraphTensors;
    use crate::model::testing::{check_gradients, random_tensor, tiny_graph};
    use candle_core::{DType, Device, Module, D};
    use candle_nn::VarMap;

    /// The textbook version: gather, concatenate, one MLP call per update.
    fn reference(
        net: &InteractionNetwork,
        edges: &EdgeTensors,
        senders: &Tensor,
        receivers: &Tensor,
        edge_latents: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let b = senders.dim(0)?;
        let e = edge_latents.broadcast_as((b, edges.len(), edge_latents.dim(D::Minus1)?))?;
        let cat = Tensor::cat(
            &[
                &e,
                &gather_senders(edges, senders)?,
                &gather_receivers(edges, &receivers.broadcast_as(senders.dims())?)?,
            ],
            D::Minus1,
        )?;
        let new_edges = (&e + net.edge_mlp.forward(&cat)?)?;
        let agg = sum_into_receivers(edges, &new_edges)?;
        let r = receivers.broadcast_as(agg.dims())?;
        let node_in = Tensor::cat(&[&r, &agg], D::Minus1)?;
        Ok(((&r + net.node_mlp.forward(&node_in)?)?, new_edges))
    }

    #[test]
    fn equals_the_concatenating_reference() -> Result<()> {
        let graph = GraphTensors::new(&tiny_graph(1), &Device::Cpu, DType::F64)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let net = InteractionNetwork::new(8, 1, false, vb)?;
        let n = graph.mesh_nodes.count;
        let nodes = random_tensor(&[3, n, 8], DType::F64, 1)?;
        let edge_latents = random_tensor(&[1, graph.mesh.len(), 8], DType::F64, 2)?;
        let (h, e) = net.forward(&graph.mesh, &nodes, &nodes, &edge_latents)?;
        let (h_ref, e_ref) = reference(&net, &graph.mesh, &nodes, &nodes, &edge_latents)?;
        assert_eq!(h.dims(), &[3, n, 8]);
        assert_eq!(e.dims(), &[3, graph.mesh.len(), 8]);
        for (a, b) in [(h, h_ref), (e, e_ref)] {
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "max difference {diff}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // The bipartite encoder case: grid senders per sample, static mesh receivers.
        let graph = GraphTensors::new(&tiny_graph(0), &Device::Cpu, DType::F64)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let net = InteractionNetwork::new(8, 1, true, vb)?;
        let grid = random_tensor(&[2, graph.grid_nodes.count, 8], DType::F64, 3)?;
        let mesh = random_tensor(&[1, graph.mesh_nodes.count, 8], DType::F64, 4)?;
        let edge_latents = random_tensor(&[1, graph.grid2mesh.len(), 8], DType::F64, 5)?;
        let g2m = &graph.grid2mesh;
        let params = [
            "edge_mlp.layers.0.weight",
            "edge_mlp.layers.1.bias",
            "edge_mlp.norm.weight",
            "node_mlp.layers.0.weight",
            "node_mlp.layers.1.weight",
            "node_mlp.norm.bias",
            "sender_mlp.layers.0.weight",
            "sender_mlp.norm.weight",
        ];
        check_gradients(
            &varmap,
            &grid,
            |grid| {
                let (mesh, edges) = net.forward(g2m, grid, &mesh, &edge_latents)?;
                let grid = net.update_senders(grid)?;
                // One output that depends on all three results.
                let pooled = edges.sum_keepdim(1)?.broadcast_add(&mesh.sum_keepdim(1)?)?;
                grid.broadcast_mul(&pooled)
            },
            &params,
        )
    }
}
