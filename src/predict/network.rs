//! The one place a model is built: parameters in a fixed order, the autograd model,
//! its detached inference view, and the activations' precision.

use candle_core::{DType, Device, Result, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::model::{GraphCast, GraphTensors, MixedPrecision, ModelConfig};

pub struct Network {
    /// The model over the parameters as variables: its forward builds the autograd graph.
    model: GraphCast,
    /// The same model over detached views of the same parameter storage: forward
    /// passes through it build no autograd graph, so inference frees each activation
    /// as soon as it is used (and sees every optimizer update, which writes in place).
    inference: GraphCast,
    /// Parameters sorted by name: the order of initialisation, the optimizer and checkpoints.
    vars: Vec<(String, Var)>,
    device: Device,
}

impl Network {
    /// A model of `config` with parameters in `precision`'s master dtype (zero until
    /// initialised or restored) on `graph`'s device, its activations in `precision`.
    pub fn new(
        config: ModelConfig,
        precision: MixedPrecision,
        graph: &GraphTensors,
    ) -> Result<Network> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, precision.master_dtype(), graph.device());
        let mut model = GraphCast::new(config, graph, vb)?;
        model.set_precision(precision);
        let vars = crate::model::named_parameters(&varmap);
        let inference = model.detached(&vars, graph)?;
        Ok(Network {
            model,
            inference,
            vars,
            device: graph.device().clone(),
        })
    }

    /// [`Network::new`] with parameters initialised from `seed` (`predict::init`).
    pub fn initialised(
        config: ModelConfig,
        precision: MixedPrecision,
        graph: &GraphTensors,
        seed: u64,
    ) -> anyhow::Result<Network> {
        let net = Network::new(config, precision, graph)?;
        crate::predict::init::init_parameters(&net.vars, seed)?;
        Ok(net)
    }

    /// The autograd model (training).
    pub fn model(&self) -> &GraphCast {
        &self.model
    }

    /// The detached view (inference).
    pub fn inference(&self) -> &GraphCast {
        &self.inference
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters' dtype, which predictions and the loss come in.
    pub fn dtype(&self) -> DType {
        self.model.master_dtype()
    }

    pub fn parameter_count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }
}
