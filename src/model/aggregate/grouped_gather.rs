//! A gather of node rows onto edges whose backward is a
//! [`SegmentSum`](super::SegmentSum) instead of candle's `index_add`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::segment_sum::segment_sum;
use crate::model::graph_tensors::Grouping;

/// `nodes[:, ids, :]` whose backward is the segment sum over `grouping` (the edges
/// grouped by `ids`), instead of `index_add`.
pub(super) fn grouped_gather(nodes: &Tensor, ids: &Tensor, grouping: &Grouping) -> Result<Tensor> {
    nodes.apply_op2(
        ids,
        GroupedGather {
            grouping: grouping.clone(),
        },
    )
}

/// `index_select` along dimension 1 whose backward is a
/// [`SegmentSum`](super::SegmentSum) over the edges grouped by the gathered index; its
/// arguments are the nodes and the index.
pub struct GroupedGather {
    pub grouping: Grouping,
}

impl CustomOp2 for GroupedGather {
    fn name(&self) -> &'static str {
        "grouped-gather"
    }

    fn cpu_fwd(
        &self,
        nodes: &CpuStorage,
        nodes_layout: &Layout,
        ids: &CpuStorage,
        ids_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = gathered_shape(nodes_layout, ids_layout)?;
        Ok((nodes.index_select(ids, nodes_layout, ids_layout, 1)?, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        nodes: &candle_core::CudaStorage,
        nodes_layout: &Layout,
        ids: &candle_core::CudaStorage,
        ids_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = gathered_shape(nodes_layout, ids_layout)?;
        Ok((nodes.index_select(ids, nodes_layout, ids_layout, 1)?, shape))
    }

    fn bwd(
        &self,
        _nodes: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(segment_sum(grad_res, ids, &self.grouping)?), None))
    }
}

/// `[B, N, F]` gathered by `[E]` ids: `[B, E, F]`.
fn gathered_shape(nodes: &Layout, ids: &Layout) -> Result<Shape> {
    let (b, _, f) = nodes.shape().dims3()?;
    Ok(Shape::from((b, ids.shape().dims1()?, f)))
}

#[cfg(test)]
mod tests {
    use crate::model::aggregate::tests::random_edges;
    use crate::model::aggregate::{gather_receivers, gather_senders, Aggregation};
    use crate::model::graph_tensors::EdgeTensors;
    use crate::model::testing::random_tensor;
    use candle_core::{DType, Result, Var};

    #[test]
    fn csr_gather_backward_equals_index_add() -> Result<()> {
        let csr = random_edges((30, 40, 200), 3, &candle_core::Device::Cpu)?;
        let mut index_add = csr.clone();
        index_add.aggregation = Aggregation::IndexAdd;
        type Grid3 = Vec<Vec<Vec<f64>>>;
        let grads = |e: &EdgeTensors| -> Result<(Grid3, Grid3)> {
            let s = Var::from_tensor(&random_tensor(&[2, 30, 3], DType::F64, 4)?)?;
            let r = Var::from_tensor(&random_tensor(&[2, 40, 3], DType::F64, 5)?)?;
            let w = random_tensor(&[2, 200, 3], DType::F64, 6)?;
            let on_edges =
                (gather_senders(e, s.as_tensor())? + gather_receivers(e, r.as_tensor())?)?;
            let g = (on_edges * w)?.sum_all()?.backward()?;
            Ok((
                g.get(s.as_tensor()).unwrap().to_vec3()?,
                g.get(r.as_tensor()).unwrap().to_vec3()?,
            ))
        };
        // Both add each node's edge gradients in COO order: the same numbers.
        assert_eq!(grads(&csr)?, grads(&index_add)?);
        Ok(())
    }
}
