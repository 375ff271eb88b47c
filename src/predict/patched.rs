//! Spatial patches: each patch (owned grid nodes plus a halo) runs on its own
//! self-contained subgraph, so only one patch's activations are alive at a time. The
//! output and the loss come from owned nodes only: the patched loss is the sum of the
//! patches' losses, which equals the whole grid's when the halo covers the receptive
//! field.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::gradients::step_gradients;
use super::{Network, Objective, Predictor, StepGradients};
use crate::data::Grid;
use crate::graph::{split_into_patches, Patch, PatchOptions, RowWindow, WeatherGraph};
use crate::model::GraphTensors;
use crate::predict::loss::ObjectiveScalar;

/// One spatial patch on the device: its own graph, which full-graph grid nodes it
/// holds, and which of those it owns (loss and outputs come from owned nodes only).
pub struct PatchTensors {
    pub graph: GraphTensors,
    /// The patch's grid nodes among the inputs' nodes (u32): full-graph ids less the
    /// inputs' first node (0 unless the inputs are a patch-parallel rank's rows).
    pub nodes: Tensor,
    /// `[1, nodes, 1]`: 1 for owned nodes, 0 for halo (in the model's dtype).
    pub owned: Tensor,
    /// Owned nodes: local ids and ids among the inputs' nodes (u32).
    pub owned_local: Tensor,
    pub owned_full: Tensor,
}

impl PatchTensors {
    /// A patch's tensors on `device` (its subgraph of `full` in `dtype`, node maps and
    /// owned mask) for inputs whose first node is full-graph grid node `first_node`.
    pub fn new(
        patch: &Patch,
        full: &WeatherGraph,
        first_node: usize,
        (device, dtype): (&Device, DType),
    ) -> Result<PatchTensors> {
        let n = patch.grid_nodes.len();
        let first = first_node as u32;
        let input_nodes: Vec<u32> = patch.grid_nodes.iter().map(|&g| g - first).collect();
        let owned_local: Vec<u32> = (0..n as u32).filter(|&k| patch.owned[k as usize]).collect();
        let owned_full: Vec<u32> = owned_local
            .iter()
            .map(|&k| input_nodes[k as usize])
            .collect();
        let mask: Vec<f32> = patch
            .owned
            .iter()
            .map(|&o| f32::from(u8::from(o)))
            .collect();
        let owned = owned_local.len();
        Ok(PatchTensors {
            graph: GraphTensors::new(&patch.subgraph(full), device, dtype)?,
            nodes: Tensor::from_vec(input_nodes, n, device)?,
            owned: Tensor::from_vec(mask, (1, n, 1), device)?.to_dtype(dtype)?,
            owned_local: Tensor::from_vec(owned_local, owned, device)?,
            owned_full: Tensor::from_vec(owned_full, owned, device)?,
        })
    }
}

pub struct Patched {
    net: Arc<Network>,
    patches: Vec<PatchTensors>,
    /// The full graph's grid nodes these patches own, when they are one rank's share of
    /// the patches of patch-parallel training (None: all patches, every node).
    owned_nodes: Option<Vec<bool>>,
    forwards: AtomicUsize,
}

impl Patched {
    /// Cuts `graph` (over `grid`) into patches and places them on `device`, in the
    /// model's `dtype`.
    pub fn split(
        graph: &WeatherGraph,
        grid: &Grid,
        options: &PatchOptions,
        place: (&Device, DType),
    ) -> anyhow::Result<Vec<PatchTensors>> {
        Ok(Patched::split_share(graph, grid, options, (0, 1), place)?.0)
    }

    /// [`Patched::split`], keeping only `rank`'s share of the patches (patch-parallel
    /// training over `ranks`): the others' subgraphs are never placed on the device,
    /// and the patches take inputs on the rows they need only (the window returned;
    /// all rows for one rank).
    pub fn split_share(
        graph: &WeatherGraph,
        grid: &Grid,
        options: &PatchOptions,
        (rank, ranks): (usize, usize),
        place: (&Device, DType),
    ) -> anyhow::Result<(Vec<PatchTensors>, RowWindow)> {
        let patches = split_into_patches(graph, grid, options)?;
        let sizes = patches.iter().map(|p| p.grid_nodes.len());
        tracing::info!(
            "{} patches, halo {} deg: {} to {} grid nodes each",
            patches.len(),
            options.halo_deg,
            sizes.clone().min().unwrap_or(0),
            sizes.max().unwrap_or(0)
        );
        let mine = &patches[crate::distributed::shard(patches.len(), rank, ranks)];
        let window = match ranks {
            1 => RowWindow::all(graph, grid),
            _ => RowWindow::covering(mine, graph, grid),
        };
        let tensors = mine
            .iter()
            .map(|p| PatchTensors::new(p, graph, window.nodes.start, place))
            .collect::<Result<_>>()?;
        Ok((tensors, window))
    }

    /// `net` runs on `patches` (from [`Patched::split`]).
    pub fn new(net: Arc<Network>, patches: Vec<PatchTensors>) -> Patched {
        Patched {
            net,
            patches,
            owned_nodes: None,
            forwards: AtomicUsize::new(0),
        }
    }

    /// Marks the patches as one rank's share of all, taking inputs of `grid_nodes`
    /// nodes (its window's): its forward passes give the nodes they own, and its
    /// gradients add up with the other ranks' to those of all patches.
    pub fn partial(self, grid_nodes: usize) -> Result<Patched> {
        let mut owned = vec![false; grid_nodes];
        for p in &self.patches {
            for node in p.owned_full.to_vec1::<u32>()? {
                owned[node as usize] = true;
            }
        }
        Ok(Patched {
            owned_nodes: Some(owned),
            ..self
        })
    }

    pub fn patches(&self) -> &[PatchTensors] {
        &self.patches
    }
}

impl Predictor for Patched {
    fn network(&self) -> &Network {
        &self.net
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let channels = self.net.config().output_channels;
        let mut out = Tensor::zeros((b, n, channels), self.net.dtype(), x.device())?;
        for (k, p) in self.patches.iter().enumerate() {
            let nodes = p.graph.grid_nodes.count;
            tracing::debug!(
                "patch {}/{}: forward on {nodes} grid nodes",
                k + 1,
                self.patches.len()
            );
            self.forwards.fetch_add(1, Ordering::Relaxed);
            let pred = self
                .net
                .inference()
                .forward(&p.graph, &x.index_select(&p.nodes, 1)?)?;
            let owned = pred.index_select(&p.owned_local, 1)?;
            out = out.index_add(&p.owned_full, &owned, 1)?;
        }
        Ok(out)
    }

    /// Each patch's objective counts its owned nodes; the inputs' gradient sums every
    /// patch's (halo nodes included: their inputs feed the owned nodes' outputs).
    fn gradients(
        &self,
        x: &Tensor,
        objective: Objective,
        checkpoint_every: Option<usize>,
    ) -> Result<StepGradients> {
        let mut total = StepGradients::empty(self.net.vars().len());
        let input_grad = matches!(objective, Objective::OutputGradient(_));
        if input_grad {
            total.input_grad = Some(x.zeros_like()?);
        }
        for p in &self.patches {
            let scalar = ObjectiveScalar::new(objective, Some((&p.nodes, &p.owned)))?;
            let mut step = step_gradients(
                self.net.model(),
                &p.graph,
                (&x.index_select(&p.nodes, 1)?, input_grad),
                self.net.vars(),
                |pred| scalar.of(pred),
                checkpoint_every,
            )?;
            if let (Some(sum), Some(g)) = (total.input_grad.take(), step.input_grad.take()) {
                total.input_grad = Some(sum.index_add(&p.nodes, &g.to_dtype(sum.dtype())?, 1)?);
            }
            total.add(step)?;
        }
        Ok(total)
    }

    fn graph_bytes(&self) -> usize {
        self.patches.iter().map(|p| p.graph.bytes()).sum()
    }

    fn graph_forwards(&self) -> usize {
        self.forwards.load(Ordering::Relaxed)
    }

    fn owned_nodes(&self) -> Option<&[bool]> {
        self.owned_nodes.as_deref()
    }
}
