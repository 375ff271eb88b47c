//! `meshcast export-reference`: flags onto [`crate::verify::export::export`].

use std::path::PathBuf;

use clap::Args;

use super::choices::choice;
use crate::model::{Aggregation, Batching};
use crate::verify::export::{
    export, parse_split, split_name, CheckpointSource, Source, SyntheticSource,
};

#[derive(Debug, Args)]
pub struct ExportReferenceArgs {
    /// Output directory: reference.safetensors, reference.json (and weights.safetensors
    /// for --synthetic-grid).
    #[arg(short, long = "output-dir", alias = "out")]
    pub out: PathBuf,
    /// A run directory (from train-model --output-dir), its checkpoints/ directory, or a
    /// checkpoint .json: its weights, optimizer state and a batch of its data.
    #[arg(long, required_unless_present = "synthetic_grid")]
    pub checkpoint: Option<PathBuf>,
    /// Which checkpoint of a directory: best (lowest validation loss) or last.
    #[arg(long, default_value = "best")]
    pub which: String,
    /// The batch: the first samples of this block of the run's data, in time order
    /// (train, validation, test).
    #[arg(long, default_value = "train", value_parser = parse_split_arg)]
    pub split: crate::data::Split,
    /// Samples in the batch [default: the run's batch size; 4 with --synthetic-grid].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Instead of a checkpoint: a benchmark case's model (parameters from --seed, as
    /// benchmark-graph-format initialises them) on this grid (a global spacing in
    /// degrees such as 5 or 2.5, or storm1996) with a synthetic batch.
    #[arg(long, value_name = "GRID", conflicts_with = "checkpoint")]
    pub synthetic_grid: Option<String>,
    /// --synthetic-grid: icosahedral mesh level [default: the grid's, 5 deg: 4, 2.5 deg: 5].
    #[arg(long, requires = "synthetic_grid")]
    pub mesh_level: Option<u32>,
    /// --synthetic-grid: latent width.
    #[arg(long, default_value_t = 128)]
    pub latent_size: usize,
    /// --synthetic-grid: processor layers.
    #[arg(long, default_value_t = 8)]
    pub num_gnn_layers: usize,
    /// --synthetic-grid: hidden layers per MLP.
    #[arg(long, default_value_t = 1)]
    pub mlp_hidden_layers: usize,
    /// --synthetic-grid: past states per sample.
    #[arg(long, default_value_t = 2)]
    pub input_steps: usize,
    /// --synthetic-grid: variables per state.
    #[arg(long, default_value_t = 5)]
    pub channels: usize,
    /// --synthetic-grid: seed of the parameters and the batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// --synthetic-grid: how the batch runs over the graph.
    #[arg(long, value_parser = choice::<Batching>(), default_value_t = Batching::Shared)]
    pub batching: Batching,
    /// --synthetic-grid: how edge messages are summed into receivers.
    #[arg(long, value_parser = choice::<Aggregation>(), default_value_t = Aggregation::Csr)]
    pub aggregation: Aggregation,
    /// Directory of the graph cache (default: the user's cache dir, meshcast/graphs).
    #[arg(long, value_name = "DIR")]
    pub graph_cache: Option<PathBuf>,
    /// Build the graph every time; neither read nor write the cache.
    #[arg(long, conflicts_with = "graph_cache")]
    pub no_graph_cache: bool,
}

fn parse_split_arg(s: &str) -> Result<crate::data::Split, String> {
    parse_split(s)
}

pub fn run(args: ExportReferenceArgs, device: candle_core::Device) -> anyhow::Result<()> {
    let graph_cache = if args.no_graph_cache {
        None
    } else {
        args.graph_cache
            .clone()
            .or_else(crate::graph::default_cache_dir)
    };
    let source = match (&args.checkpoint, &args.synthetic_grid) {
        (Some(path), _) => Source::Checkpoint(CheckpointSource {
            path: path.clone(),
            which: args.which.clone(),
            split: args.split,
            batch_size: args.batch_size,
            graph_cache,
        }),
        (None, Some(grid)) => Source::Synthetic(SyntheticSource {
            grid: grid.clone(),
            mesh_level: args.mesh_level,
            batch_size: args.batch_size.unwrap_or(4),
            latent_size: args.latent_size,
            num_gnn_layers: args.num_gnn_layers,
            mlp_hidden_layers: args.mlp_hidden_layers,
            input_steps: args.input_steps,
            channels: args.channels,
            seed: args.seed,
            batching: args.batching,
            aggregation: args.aggregation,
            graph_cache,
        }),
        (None, None) => crate::bail_input!("give --checkpoint RUN_DIR or --synthetic-grid GRID"),
    };
    if args.batch_size == Some(0) {
        crate::bail_input!("--batch-size must be at least 1");
    }
    let exported = export(&source, &args.out, &device)?;
    let m = &exported.meta;
    tracing::info!(
        "{} source, {} batch of {} ({}), loss {:.6e}, gradient norm {:.4e}, lr {:.3e}",
        m.source,
        m.batch.split,
        m.batch.size,
        m.grid,
        m.loss,
        m.step.grad_norm,
        m.step.lr
    );
    if m.source == "checkpoint" {
        tracing::info!(
            "batch: samples t0 {:?} of the {} block",
            m.batch.t0,
            split_name(args.split)
        );
    }
    for note in &m.notes {
        tracing::info!("note: {note}");
    }
    for f in &exported.files {
        println!("{}", f.display());
    }
    Ok(())
}
