//! The benchmark subcommands through the real binary: benchmark-graph-format --quick,
//! compare-benchmarks on hand-made reports, check-gpu on a CPU build.

mod common;

use std::path::{Path, PathBuf};

use common::meshcast;
use serde_json::Value;

/// A hand-made report with one verified case whose step times are `times` (seconds).
fn report(times: [f64; 3], cpu: &str, schema_version: u32) -> Value {
    let mut sorted = times;
    sorted.sort_by(f64::total_cmp);
    let summary = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        serde_json::json!({"median_s": s[s.len() / 2], "min_s": s[0], "max_s": s[s.len() - 1], "samples_s": v})
    };
    serde_json::json!({
        "schema_version": schema_version,
        "kind": "graph-format",
        "label": "hand-made",
        "created_utc": "2026-11-24T10:00:00Z",
        "command": ["meshcast", "benchmark-graph-format"],
        "meshcast": {"version": "0.1.0", "git_revision": "abc1234", "git_revision_source": "build time", "profile": "release"},
        "backend": {"cuda": false, "metal": false, "mkl": false, "accelerate": false, "with_avx": true,
                    "with_f16c": true, "with_neon": false, "with_simd128": false, "cpu_threads": 2},
        "machine": {"hostname": null, "cpu": {"model": cpu, "logical_cores": 2, "physical_cores": 2, "simd": ["avx2"],
                    "arch": "x86_64", "os": "linux", "memory_total_bytes": 25000000000u64},
                    "gpu_driver_version": null, "cuda_driver_api_version": null, "gpus": []},
        "settings": {"warmup_steps": 1, "timed_steps": 3, "forward_repeats": 3, "graph_repeats": 3, "seed": 0,
                     "learning_rate": 1e-4, "rtol": 1e-5, "atol": 1e-6, "data": "synthetic"},
        "cases": [case("coo-shared", &times, &summary), case("csr-shared", &[0.05, 0.051, 0.049], &summary)]
    })
}

fn case(format: &str, times: &[f64], summary: &dyn Fn(&[f64]) -> Value) -> Value {
    let median = summary(times)["median_s"].as_f64().unwrap();
    serde_json::json!({
        "config": {"grid": "global-5", "mesh_level": 4, "batch_size": 4, "format": format, "precision": "f32",
                   "checkpointing": false, "patches": 1, "latent_size": 128, "num_gnn_layers": 8,
                   "mlp_hidden_layers": 1, "input_steps": 2, "channels": 5, "device": "cpu"},
        "graph": {"grid_cells": 2592, "grid_nodes": 2592, "mesh_nodes": 2562, "grid2mesh_edges": 1, "mesh_edges": 2,
                  "mesh2grid_edges": 3, "coo_index_bytes": 1, "csr_index_bytes": 1, "csc_index_bytes": 1,
                  "feature_bytes": 1, "case_bytes": 1, "build": summary(&[0.01]), "cache_load": summary(&[0.001])},
        "model": {"parameters": 10, "bytes": 40},
        "verification": {"verified": true, "max_output_diff": 0.0, "loss_diff": 0.0, "rtol": 1e-5, "atol": 1e-6,
                         "reference": "coo-shared"},
        "timings": {"forward": summary(&[0.01, 0.01, 0.01]), "step": summary(times), "warmup_steps": 1,
                    "samples_per_s": 4.0 / median, "edges_per_s": 24.0 / median, "final_loss": 0.5},
        "memory": {"weights": 40, "optimizer_state": 80, "gradients": 40, "graph": 1, "baseline": 1000,
                   "peak": 101000, "activations": 99839},
        "error": null
    })
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

fn compare(a: &Path, b: &Path, extra: &[&str]) -> std::process::Output {
    meshcast()
        .arg("compare-benchmarks")
        .arg(a)
        .arg(b)
        .args(extra)
        .output()
        .unwrap()
}

/// The first (in the tests, the only) report a benchmark wrote into `dir`, parsed.
fn only_report(dir: &Path) -> Value {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn compare_flags_regressions_improvements_and_noise() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "a.json",
        &report([0.100, 0.101, 0.099], "CPU X", 1),
    );
    // 30% slower, ranges apart: a regression, exit 1.
    let slow = write(
        dir.path(),
        "slow.json",
        &report([0.130, 0.131, 0.129], "CPU X", 1),
    );
    let o = compare(&base, &slow, &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("regression"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("error: 1 regression(s) beyond 5.0%"),
        "{}",
        stderr(&o)
    );
    // 30% faster: an improvement, exit 0.
    let fast = write(
        dir.path(),
        "fast.json",
        &report([0.070, 0.071, 0.069], "CPU X", 1),
    );
    let o = compare(&base, &fast, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["improvements"], 1);
    assert_eq!(v["regressions"], 0);
    assert_eq!(v["cases"][0]["status"], "improvement");
    assert!((v["cases"][0]["time_ratio"].as_f64().unwrap() - 0.70).abs() < 1e-9);
    // 8% slower but inside a wide spread: noise, exit 0.
    let wide = write(
        dir.path(),
        "wide.json",
        &report([0.100, 0.060, 0.140], "CPU X", 1),
    );
    let noisy = write(
        dir.path(),
        "noisy.json",
        &report([0.108, 0.070, 0.150], "CPU X", 1),
    );
    let o = compare(&wide, &noisy, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["cases"][0]["status"], "noise");
    // A higher threshold lets the slow run pass.
    let o = compare(&base, &slow, &["--threshold", "0.5"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn compare_lists_cases_in_one_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", &report([0.1, 0.1, 0.1], "CPU X", 1));
    let mut b = report([0.1, 0.1, 0.1], "CPU X", 1);
    b["cases"][1]["config"]["batch_size"] = 8.into();
    let b = write(dir.path(), "b.json", &b);
    let o = compare(&a, &b, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("only in A: global-5 b4 csr-shared"), "{out}");
    assert!(out.contains("only in B: global-5 b8 csr-shared"), "{out}");
}

#[test]
fn compare_refuses_incompatible_files_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", &report([0.1, 0.1, 0.1], "CPU X", 1));
    let future = write(dir.path(), "v2.json", &report([0.1, 0.1, 0.1], "CPU X", 2));
    let o = compare(&a, &future, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("schema_version 2"), "{err}");

    let other = write(
        dir.path(),
        "other.json",
        &report([0.1, 0.1, 0.1], "CPU Y", 1),
    );
    let o = compare(&a, &other, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--allow-different-machine"),
        "{}",
        stderr(&o)
    );
    let o = compare(&a, &other, &["--allow-different-machine"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    assert_eq!(compare(&a, &garbage, &[]).status.code(), Some(2));
    assert_eq!(
        compare(&a, &dir.path().join("missing.json"), &[])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn check_gpu_on_a_cpu_build() {
    if cfg!(feature = "cuda") {
        return; // this test is about CPU-only builds
    }
    let o = meshcast().arg("check-gpu").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("CUDA: not available"), "{out}");
    assert!(out.contains("matmul f32"), "{out}");
    assert!(
        out.contains("What fits cpu") && out.contains("largest batch"),
        "{out}"
    );

    let o = meshcast()
        .args(["check-gpu", "--require-cuda"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("error: --require-cuda"),
        "{}",
        stderr(&o)
    );

    let o = meshcast().args(["check-gpu", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["cuda"]["built"], false);
    assert_eq!(v["cuda_usable"], false);
    assert_eq!(v["backends"][0], "cpu");
    let fits = v["recommendation"]["fits"].as_array().unwrap();
    assert_eq!(fits.len(), 3, "5, 2.5 and 1 degree");
    assert!(fits[0]["batch_size"].as_u64().unwrap() >= fits[2]["batch_size"].as_u64().unwrap());
    assert!(v["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    let kernels = v["checks"][0]["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 5);
    assert!(kernels[..3]
        .iter()
        .all(|k| k["ok"] == true && k["gflops"].as_f64().unwrap() > 0.0));
    let adamw = &kernels[3];
    assert!(adamw["name"].as_str().unwrap().contains("AdamW"), "{adamw}");
    assert_eq!(adamw["ok"], true);
    assert_eq!(
        adamw["max_rel_diff"], 0.0,
        "bit for bit on the CPU: {adamw}"
    );
    let fused = &kernels[4];
    assert!(
        fused["name"].as_str().unwrap().contains("fused ops"),
        "{fused}"
    );
    assert_eq!(fused["ok"], true, "{fused}");
    assert!(fused["max_rel_diff"].as_f64().unwrap() < 1e-4, "{fused}");
}

#[test]
fn quick_benchmark_writes_a_verified_report() {
    let dir = tempfile::tempdir().unwrap();
    let o = meshcast()
        .args([
            "benchmark-graph-format",
            "--quick",
            "--grids",
            "storm1996",
            "--batch-sizes",
            "2",
            "--label",
            "ci test",
        ])
        .arg("--output-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("ci_test_") && name.ends_with("Z.json"),
        "{name}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["machine"]["gpus"], serde_json::json!([]));
    let cases = v["cases"].as_array().unwrap();
    // Three formats, each without and with gradient checkpointing.
    assert_eq!(cases.len(), 6);
    let with_ckpt = cases
        .iter()
        .filter(|c| c["config"]["checkpointing"] == true)
        .count();
    assert_eq!(with_ckpt, 3);
    for c in cases {
        assert_eq!(c["verification"]["verified"], true, "{c}");
        assert_eq!(c["config"]["precision"], "f32");
        let t = &c["timings"];
        assert!(t["step"]["median_s"].as_f64().unwrap() > 0.0);
        assert!(t["samples_per_s"].as_f64().unwrap() > 0.0);
        // On the CPU the optimizer's part of each step is timed, and is a part.
        let optimizer = t["optimizer"]["max_s"].as_f64().unwrap();
        assert!(optimizer > 0.0 && optimizer < t["step"]["max_s"].as_f64().unwrap());
        // The binary counts allocations: peak and activations are measured.
        let m = &c["memory"];
        assert!(m["peak"].as_u64().unwrap() > m["baseline"].as_u64().unwrap());
        assert!(m["activations"].as_u64().unwrap() > 0);
        // Inference holds weights and graph but no autograd graph: below the training
        // step's peak.
        let inference = c["inference_peak"].as_u64().unwrap();
        let case_peak = m["peak"].as_u64().unwrap() - m["baseline"].as_u64().unwrap();
        let held = m["weights"].as_u64().unwrap() + m["graph"].as_u64().unwrap();
        assert!(held < inference && inference < case_peak, "{c}");
    }
    assert!(stdout(&o).contains("csr-shared"));
    // Valid for compare-benchmarks: against itself, nothing changed.
    let o = compare(&files[0], &files[0], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("0 regression(s)"));
}

#[test]
fn benchmark_refuses_bad_plans() {
    let o = meshcast()
        .args(["benchmark-graph-format", "--quick", "--grids", "7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("grid spacing 7"), "{}", stderr(&o));
    let o = meshcast()
        .args(["benchmark-graph-format", "--quick", "--formats", "coo"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bench_configs_load() {
    for name in ["bench-quick.toml", "bench-full.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(name);
        let plan = meshcast::bench::graph_format::BenchPlan::load(&path).unwrap();
        plan.validate().unwrap();
    }
    let quick = meshcast::bench::graph_format::BenchPlan::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bench-quick.toml"),
    )
    .unwrap();
    assert_eq!(quick, meshcast::bench::graph_format::BenchPlan::quick());
}

#[test]
fn a_case_that_cannot_fit_is_skipped_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let o = meshcast()
        .args([
            "benchmark-graph-format",
            "--grids",
            "5",
            "--batch-sizes",
            "1000000",
        ])
        .args([
            "--formats",
            "csr-shared",
            "--no-progress",
            "--mesh-level",
            "2",
        ])
        .args(["--warmup-steps", "1", "--timed-steps", "1"])
        .arg("--output-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = only_report(dir.path());
    let case = &v["cases"][0];
    assert!(
        case["skipped"].as_str().unwrap().contains("predicted peak"),
        "{case}"
    );
    assert!(case["timings"].is_null());
}

/// An f64 case runs and verifies against the f32 reference format, elementwise.
#[test]
fn an_f64_case_verifies_against_the_f32_reference() {
    let dir = tempfile::tempdir().unwrap();
    let o = meshcast()
        .args([
            "-q",
            "benchmark-graph-format",
            "--grids",
            "10",
            "--batch-sizes",
            "1",
        ])
        .args([
            "--formats",
            "csr-shared",
            "--precisions",
            "f64",
            "--latent-size",
            "16",
        ])
        .args([
            "--num-gnn-layers",
            "2",
            "--mesh-level",
            "2",
            "--warmup-steps",
            "1",
        ])
        .args([
            "--timed-steps",
            "1",
            "--forward-repeats",
            "1",
            "--no-progress",
        ])
        .arg("--output-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = only_report(dir.path());
    let case = &v["cases"][0];
    assert_eq!(case["config"]["precision"], "f64");
    assert_eq!(case["verification"]["verified"], true, "{case}");
    assert!(case["verification"]["max_output_diff"].as_f64().unwrap() > 0.0);
}
