//! `meshcast describe-graph`.

use clap::Args;

use super::{DataArgs, GraphArgs};
use crate::data::{Dataset, Grid};
use crate::graph::{load_or_build, split_into_patches, PatchOptions};

#[derive(Debug, Args)]
pub struct DescribeGraphArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Describe the graph of a regular global grid of this spacing (degrees) instead of data files
    /// (cell centres off the poles: 1 gives 180 x 360 = 64,800 nodes).
    #[arg(long, value_name = "DEG", conflicts_with_all = ["files", "vars", "config"])]
    pub global_grid: Option<f64>,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Split the grid into this many spatial patches and describe them too.
    #[arg(long)]
    pub patches: Option<usize>,
    /// Halo around each patch, in degrees of great-circle distance.
    #[arg(long, default_value_t = crate::graph::patches::DEFAULT_PATCH_HALO_DEG)]
    pub patch_halo: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The grid a graph is built for: a regular global grid of `global_grid` degrees, or
/// the data's grid with the cells valid in any step; and the data's channel count.
pub(super) fn grid_of(
    data: &DataArgs,
    global_grid: Option<f64>,
) -> anyhow::Result<(Grid, Vec<bool>, Option<usize>)> {
    match global_grid {
        Some(deg) => {
            if !(deg > 0.0 && deg <= 30.0) {
                crate::bail_input!("--global-grid {deg}: spacing must be in (0, 30] degrees");
            }
            crate::data::grid::check_grid_size(
                (180.0 / deg).round() as usize,
                (360.0 / deg).round() as usize,
            )
            .map_err(|e| crate::error::InputError(format!("--global-grid {deg}: {}", e.0)))?;
            let grid = Grid::global_cell_centred(deg);
            let valid = vec![true; grid.len()];
            Ok((grid, valid, None))
        }
        None => {
            let dataset = Dataset::open(&data.to_spec()?)?;
            tracing::info!("{}", dataset.summary_line());
            let valid = dataset.ever_valid(0..dataset.time.len())?;
            let channels = dataset.channels.len();
            Ok((dataset.grid, valid, Some(channels)))
        }
    }
}

pub fn run(args: DescribeGraphArgs) -> anyhow::Result<()> {
    let (grid, valid, _) = grid_of(&args.data, args.global_grid)?;
    let options = args.graph.options(&grid);
    let cache = args.graph.cache_dir();
    let (graph, outcome, seconds) = load_or_build(&grid, &valid, &options, cache.as_deref())?;
    let mut summary = graph.summary().with_load(outcome, seconds);
    if let Some(n) = args.patches {
        let patch_options = PatchOptions {
            n_patches: n,
            halo_deg: args.patch_halo,
        };
        let patches = split_into_patches(&graph, &grid, &patch_options)?;
        summary = summary.with_patches(&patches, &patch_options);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}
