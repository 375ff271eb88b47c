//! `meshcast clear-graph-cache`: removes the cached mesh graphs (they are rebuilt when
//! next needed).

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct ClearGraphCacheArgs {
    /// The cache directory (default: the user's cache dir, meshcast/graphs).
    #[arg(long, value_name = "DIR")]
    pub graph_cache: Option<PathBuf>,
}

pub fn run(args: ClearGraphCacheArgs) -> anyhow::Result<()> {
    let dir = args
        .graph_cache
        .or_else(crate::graph::default_cache_dir)
        .ok_or_else(|| {
            crate::error::InputError("no cache directory: pass --graph-cache DIR".into())
        })?;
    let (files, bytes) = crate::graph::clear_cache(&dir)?;
    println!(
        "removed {files} cached graph file(s), {} from {}",
        crate::memory::planner::human_bytes(bytes),
        dir.display()
    );
    Ok(())
}
