//! `benchmark-graph-format`, `compare-benchmarks` and `check-gpu`: flags onto
//! [`crate::bench`].

use std::path::PathBuf;

use clap::Args;

use crate::bench::compare;
use crate::bench::graph_format::{self, BenchPlan};
use crate::bench::report::{Format, Report};

#[derive(Debug, Args)]
pub struct BenchmarkGraphFormatArgs {
    /// A plan (TOML or JSON, e.g. configs/bench-full.toml); flags override it.
    #[arg(long, conflicts_with = "quick")]
    pub config: Option<PathBuf>,
    /// The CI preset: small grids, a tiny model, few steps (seconds in a debug build).
    #[arg(long)]
    pub quick: bool,
    /// Grids: global spacings in degrees and/or `storm1996`, comma-separated [default: 5].
    #[arg(long, value_delimiter = ',')]
    pub grids: Option<Vec<String>>,
    /// Batch sizes, comma-separated [default: 1,4].
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Option<Vec<usize>>,
    /// Formats: coo-replicated (PyG-style block-diagonal batch), coo-shared, csr-shared.
    #[arg(long, value_delimiter = ',')]
    pub formats: Option<Vec<Format>>,
    /// Gradient checkpointing off and/or on, comma-separated: false, true [default: false].
    #[arg(long, value_delimiter = ',')]
    pub checkpointing: Option<Vec<bool>>,
    /// Precisions, comma-separated: off (f32), bf16, f16 (f16 here without loss scaling),
    /// f64 [default: off].
    #[arg(long, value_delimiter = ',', value_parser = super::choices::choice::<crate::model::MixedPrecision>())]
    pub precisions: Option<Vec<crate::model::MixedPrecision>>,
    /// Latent width [default: 128].
    #[arg(long)]
    pub latent_size: Option<usize>,
    /// Processor layers [default: 8].
    #[arg(long)]
    pub num_gnn_layers: Option<usize>,
    /// Hidden layers per MLP [default: 1].
    #[arg(long)]
    pub mlp_hidden_layers: Option<usize>,
    /// Mesh level for every grid [default: the grid's own: 5 deg 4, 2.5 deg 5, 1 deg 6].
    #[arg(long)]
    pub mesh_level: Option<u32>,
    /// Untimed training steps before the timed ones [default: 2].
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Timed training steps per case [default: 10].
    #[arg(long)]
    pub timed_steps: Option<usize>,
    /// Timed forward passes per case [default: 5].
    #[arg(long)]
    pub forward_repeats: Option<usize>,
    /// Seed of the weights and the synthetic batches [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Label of the report (the start of its file name).
    #[arg(long)]
    pub label: Option<String>,
    /// Where the report goes: <output-dir>/<label>_<UTC timestamp>.json.
    #[arg(long, default_value = "benchmarks")]
    pub output_dir: PathBuf,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run_graph_format(
    args: BenchmarkGraphFormatArgs,
    device: candle_core::Device,
) -> anyhow::Result<()> {
    let mut plan = match (&args.config, args.quick) {
        (Some(path), _) => BenchPlan::load(path)?,
        (None, true) => BenchPlan::quick(),
        (None, false) => BenchPlan::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { plan.$field = v; } )* };
    }
    set!(
        grids,
        batch_sizes,
        formats,
        checkpointing,
        precisions,
        latent_size,
        num_gnn_layers,
        mlp_hidden_layers,
        warmup_steps,
        timed_steps,
        forward_repeats,
        seed,
        label
    );
    if args.mesh_level.is_some() {
        plan.mesh_level = args.mesh_level;
    }
    let command: Vec<String> = std::env::args().collect();
    let report = graph_format::run(&plan, &device, command, !args.no_progress)?;
    let path = report.save_new(&graph_format::report_path(&args.output_dir, &report))?;
    print!("{}", graph_format::summary_table(&report));
    print!("{}", graph_format::patch_boundary_table(&report));
    println!("report: {}", path.display());

    let failed: Vec<String> = report
        .cases
        .iter()
        .filter(|c| c.failed())
        .map(|c| c.config.short())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} case(s) failed verification or errored and have no timings: {} (report written to {})",
            failed.len(),
            failed.join("; "),
            path.display()
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct CompareBenchmarksArgs {
    /// The baseline report.
    pub a: PathBuf,
    /// The report compared with it.
    pub b: PathBuf,
    /// Relative change that counts (0.05 = 5%); slower cases also need to lie beyond the measured spread.
    #[arg(long, default_value_t = 0.05)]
    pub threshold: f64,
    /// Compare reports from different machines (CPU model, cores, GPUs).
    #[arg(long)]
    pub allow_different_machine: bool,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 without regressions, 1 with (a plain error), 2 on unreadable or incompatible reports.
pub fn run_compare(args: CompareBenchmarksArgs) -> anyhow::Result<()> {
    let a = Report::load(&args.a)?;
    let b = Report::load(&args.b)?;
    let c = compare::compare(
        &a,
        &b,
        (&args.a, &args.b),
        args.threshold,
        args.allow_different_machine,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", compare::render(&c));
    }
    if c.regressions > 0 {
        anyhow::bail!(
            "{} regression(s) beyond {:.1}%",
            c.regressions,
            args.threshold * 100.0
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct CheckGpuArgs {
    /// Exit 1 when no CUDA device can be used (CPU-only build, no driver, no GPU).
    #[arg(long)]
    pub require_cuda: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Checks every device; the global `--device` is not used (every device is checked).
pub fn run_check_gpu(args: CheckGpuArgs) -> anyhow::Result<()> {
    let report = crate::bench::gpu::check();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::bench::gpu::render(&report));
    }
    let failed: Vec<String> = report
        .checks
        .iter()
        .flat_map(|d| {
            d.kernels
                .iter()
                .filter(|k| !k.ok)
                .map(move |k| format!("{} {}", d.device, k.name))
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("check failed: {}", failed.join("; "));
    }
    if args.require_cuda && !report.cuda_usable {
        anyhow::bail!(
            "--require-cuda: no usable CUDA device ({})",
            report.cuda.error.as_deref().unwrap_or("none found")
        );
    }
    Ok(())
}
