//! The tables printed at the end of a benchmark run.

use crate::bench::report::Report;
use crate::table::render_table;

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

/// The patch boundary errors as a table (empty when none were measured).
pub fn patch_boundary_table(report: &Report) -> String {
    if report.patch_boundary.is_empty() {
        return String::new();
    }
    let mut rows = vec![vec![
        "grid".to_string(),
        "patches".into(),
        "halo deg".into(),
        "largest patch nodes".into(),
        "max |patched - whole|".into(),
        "relative (max)".into(),
        "relative (rms)".into(),
    ]];
    for p in &report.patch_boundary {
        rows.push(vec![
            p.grid.clone(),
            p.patches.to_string(),
            format!("{}", p.halo_deg),
            p.largest_patch_nodes.to_string(),
            format!("{:.2e}", p.max_abs_error),
            format!("{:.2e}", p.relative_error),
            format!("{:.2e}", p.relative_rms_error),
        ]);
    }
    render_table(&rows)
}

/// The table printed at the end of a run: one row per case.
pub fn summary_table(report: &Report) -> String {
    let mut rows = vec![vec![
        "grid".to_string(),
        "mesh".into(),
        "batch".into(),
        "format".into(),
        "ckpt".into(),
        "precision".into(),
        "verified (max diff)".into(),
        "forward ms".into(),
        "step ms median (min..max)".into(),
        "samples/s".into(),
        "Medges/s".into(),
        "case peak MiB".into(),
        "predicted MiB".into(),
        "activations MiB".into(),
        "graph MiB".into(),
        "inference peak MiB".into(),
    ]];
    for c in &report.cases {
        let v = match (&c.verification, &c.error) {
            _ if c.skipped.is_some() => "skipped (memory)".to_string(),
            (_, Some(_)) => "error".to_string(),
            (Some(v), None) => format!(
                "{} ({:.1e})",
                if v.verified { "yes" } else { "NO" },
                v.max_output_diff
            ),
            (None, None) => "-".into(),
        };
        let (fwd, step, sps, eps) = match &c.timings {
            Some(t) => (
                format!("{:.1}", t.forward.median_s * 1e3),
                format!(
                    "{:.1} ({:.1}..{:.1})",
                    t.step.median_s * 1e3,
                    t.step.min_s * 1e3,
                    t.step.max_s * 1e3
                ),
                format!("{:.2}", t.samples_per_s),
                format!("{:.2}", t.edges_per_s / 1e6),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let (peak, act) = match &c.memory {
            Some(m) => (
                m.case_peak().map_or("-".into(), mib),
                m.activations.map_or("-".into(), mib),
            ),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            c.config.grid.clone(),
            c.config.mesh_level.to_string(),
            c.config.batch_size.to_string(),
            c.config.format.to_string(),
            if c.config.checkpointing { "yes" } else { "no" }.into(),
            c.config.precision.clone(),
            v,
            fwd,
            step,
            sps,
            eps,
            peak,
            c.predicted_peak.map_or("-".into(), mib),
            act,
            mib(c.graph.case_bytes as u64),
            c.inference_peak.map_or("-".into(), mib),
        ]);
    }
    render_table(&rows)
}
