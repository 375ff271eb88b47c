//! `meshcast export-reference` and `scripts/pytorch_reference.py check`: a tiny model
//! trained on generated data, exported, and recomputed in plain PyTorch; outputs, loss,
//! every parameter gradient and the AdamW step must agree to 1e-5.
//!
//! The PyTorch part runs with `$MESHCAST_TORCH_PYTHON` (then it must work: CI sets it
//! to make the comparison mandatory), else with `python3` when it imports torch, numpy
//! and safetensors; without either it is skipped with a note. The export itself is
//! always tested.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use candle_core::{DType, Device, Tensor};
use common::*;

/// The Python with torch to run the reference with, if any.
fn torch_python() -> Option<PathBuf> {
    python_with("torch, numpy, safetensors")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pytorch_reference.py")
}

/// Trains a tiny model on `data` into `dir/name` with extra flags; returns the run dir.
fn tiny_run(dir: &Path, data: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let o = meshcast()
        .args(["-q", "train-model", "--data"])
        .arg(data)
        .arg("--output-dir")
        .arg(&out)
        .args([
            "--latent-size",
            "8",
            "--num-gnn-layers",
            "2",
            "--mesh-level",
            "2",
            "--num-epochs",
            "2",
            "--no-progress",
            "--no-graph-cache",
        ])
        .args(extra)
        .output()
        .unwrap();
    succeeded(&o);
    out
}

fn export(args: &[&str], out: &Path) {
    let o = meshcast()
        .args(["-q", "export-reference", "--no-graph-cache", "--output-dir"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    succeeded(&o);
}

fn sidecar(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn exports_a_checkpoint_step_and_pytorch_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let python = torch_python();
    if python.is_none() {
        eprintln!(
            "note: no Python with torch (set MESHCAST_TORCH_PYTHON or install scripts/requirements.txt): \
             the PyTorch comparison is skipped, the export is still tested"
        );
    }
    // The three ways meshcast sums and batches; the last run also trains on patches
    // with checkpointing, which the export sets aside (recorded in its notes).
    let cases: [(&str, &[&str]); 3] = [
        ("shared-index-add", &[]),
        ("shared-csr", &["--aggregation", "csr"]),
        (
            "replicated",
            &[
                "--batching",
                "replicated",
                "--patches",
                "2",
                "--checkpointing",
            ],
        ),
    ];
    for (name, flags) in cases {
        let run = tiny_run(dir.path(), &data, name, flags);
        let out = dir.path().join(format!("{name}-ref"));
        export(&["--checkpoint", run.to_str().unwrap()], &out);

        let meta = sidecar(&out);
        assert_eq!(meta["format_version"], 1);
        assert_eq!(meta["source"], "checkpoint");
        assert_eq!(meta["batch"]["split"], "train");
        assert_eq!(meta["batch"]["size"], 4);
        assert!(meta["step"]["step_before"].as_u64().unwrap() > 0);
        assert_eq!(meta["model"]["latent_size"], 8);
        assert_eq!(
            meta["notes"].as_array().unwrap().len(),
            if name == "replicated" { 2 } else { 0 },
            "{}",
            meta["notes"]
        );
        let t = candle_core::safetensors::load(out.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
        let w =
            candle_core::safetensors::load(meta["weights_file"].as_str().unwrap(), &Device::Cpu)
                .unwrap();
        let names: Vec<&str> = meta["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names.len(), w.len());
        for n in &names {
            let g = &t[&format!("grad.{n}")];
            assert_eq!(g.dims(), w[*n].dims(), "{n}");
            assert!(max_abs(g) > 0.0, "{n}: zero gradient");
            // One AdamW step moved every weight.
            let moved = max_abs(&(&t[&format!("step.weight.{n}")] - &w[*n]).unwrap());
            assert!(moved > 0.0, "{n} did not move");
        }
        // The exported loss is the weighted MSE of the exported output.
        let (out_t, y, wt) = (&t["meshcast.output"], &t["batch.y"], &t["batch.w"]);
        let sse = ((out_t - y).unwrap().sqr().unwrap() * wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let loss = sse / meta["batch"]["count"].as_f64().unwrap();
        let exported = meta["loss"].as_f64().unwrap();
        assert!(
            (loss - exported).abs() <= 1e-5 * exported,
            "{loss} vs {exported}"
        );

        if let Some(py) = &python {
            let o = StdCommand::new(py)
                .arg(script())
                .arg("check")
                .arg(&out)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "{name}: PyTorch disagrees with meshcast:\n{stdout}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(stdout.contains("OK: every group within 1e-05"), "{stdout}");
            assert!(stdout.contains("grad processor.1"), "{stdout}");
        }
    }
}

#[test]
fn exports_a_synthetic_benchmark_case() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ref");
    export(
        &[
            "--synthetic-grid",
            "storm1996",
            "--mesh-level",
            "2",
            "--batch-size",
            "2",
            "--latent-size",
            "8",
            "--num-gnn-layers",
            "1",
            "--aggregation",
            "csr",
        ],
        &out,
    );
    let meta = sidecar(&out);
    assert_eq!(meta["source"], "synthetic");
    assert_eq!(meta["grid"], "storm1996");
    assert_eq!(meta["model"]["aggregation"], "csr");
    // Masked corners are not graph nodes.
    let nodes = meta["grid_nodes"].as_u64().unwrap();
    assert!(nodes < 33 * 36, "{nodes}");
    assert!(out.join("weights.safetensors").exists());
    assert_eq!(meta["step"]["lr"], 1e-4);
}

#[test]
fn refuses_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = meshcast()
        .args(["export-reference", "--out"])
        .arg(dir.path().join("x"))
        .arg("--checkpoint")
        .arg(dir.path().join("no-such-run"))
        .output()
        .unwrap();
    assert_bad_input(&out, &["no checkpoint"]);
    let out = meshcast()
        .args([
            "export-reference",
            "--synthetic-grid",
            "europe",
            "--output-dir",
        ])
        .arg(dir.path().join("y"))
        .output()
        .unwrap();
    assert_bad_input(&out, &["unknown grid"]);
}
