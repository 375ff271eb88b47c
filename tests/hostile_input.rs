//! Input that must never crash or hang meshcast (issue #19): absurd sizes, pipes and
//! devices given as files, a closed stdout, names NetCDF forbids, missing output
//! directories, edited checkpoint sidecars, and a run predicted not to fit in memory.
//! Each ends with exit 2 and one error line, before anything is allocated or written.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use sha2::{Digest, Sha256};

fn run(args: &[&str]) -> std::process::Output {
    meshcast().arg("-q").args(args).output().unwrap()
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let out = dir.path().join("run");
    let max = u64::MAX.to_string();
    for (flag, value) in [
        ("--latent-size", "0"),
        ("--latent-size", "100000"),
        ("--num-gnn-layers", "100000"),
        ("--mlp-hidden-layers", "1000000"),
        ("--prefetch-buffer-size", "1000000000"),
        ("--prefetch-buffer-size", max.as_str()),
        ("--input-steps", max.as_str()),
        ("--batch-size", max.as_str()),
        ("--patches", "1000000"),
        ("--grad-clip", "nan"),
    ] {
        // The tiny model's flags, but for the one under test.
        let tiny: Vec<&str> = TINY
            .chunks(2)
            .filter(|pair| pair[0] != flag)
            .flatten()
            .copied()
            .collect();
        let o = meshcast()
            .args(["-q", "train-model"])
            .arg(&data)
            .arg("--output-dir")
            .arg(&out)
            .args(tiny)
            .args([flag, value])
            .output()
            .unwrap();
        assert_bad_input(&o, &[flag]);
        assert!(!out.join("run.json").exists(), "{flag} {value}");
    }
    assert_bad_input(
        &run(&[
            "inspect-data",
            data.to_str().unwrap(),
            "--input-steps",
            &max,
        ]),
        &["--input-steps"],
    );
    assert_bad_input(
        &run(&["describe-graph", "--global-grid", "0.0001"]),
        &["--global-grid 0.0001", "more than meshcast handles"],
    );
    let big = dir.path().join("big.nc");
    assert_bad_input(
        &run(&[
            "generate-data",
            "-o",
            big.to_str().unwrap(),
            "--resolution",
            "0.001",
        ]),
        &["--resolution 0.001"],
    );
    assert!(!big.exists());
    assert_bad_input(
        &run(&["plan-memory", "--global-grid", "5", "--batch-size", &max]),
        &["--batch-size"],
    );
    assert_bad_input(
        &run(&[
            "plan-memory",
            "--global-grid",
            "5",
            "--latent-size",
            "100000",
        ]),
        &["--latent-size"],
    );
}

#[test]
fn a_netcdf4_file_declaring_ten_billion_cells_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.nc");
    let mut f = netcdf::create(&path).unwrap();
    f.add_dimension("time", 2).unwrap();
    f.add_dimension("lat", 100_000).unwrap();
    f.add_dimension("lon", 100_000).unwrap();
    let mut t = f.add_variable::<f64>("time", &["time"]).unwrap();
    t.put_attribute("units", "hours since 2000-01-01").unwrap();
    t.put_values(&[0.0, 6.0], ..).unwrap();
    for (name, n, span, units) in [
        ("lat", 100_000, 180.0, "degrees_north"),
        ("lon", 100_000, 360.0, "degrees_east"),
    ] {
        let values: Vec<f64> = (0..n)
            .map(|i| -span / 2.0 + span * i as f64 / n as f64)
            .collect();
        let mut v = f.add_variable::<f64>(name, &[name]).unwrap();
        v.put_attribute("units", units).unwrap();
        v.put_values(&values, ..).unwrap();
    }
    f.add_variable::<f32>("x", &["time", "lat", "lon"]).unwrap();
    f.close().unwrap();
    assert_bad_input(
        &run(&["inspect-data", path.to_str().unwrap()]),
        &["huge.nc", "100000 x 100000", "more than meshcast handles"],
    );
}

#[test]
fn a_fifo_given_as_data_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.nc");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    assert_bad_input(
        &run(&["inspect-data", fifo.to_str().unwrap()]),
        &["pipe.nc", "not a regular file"],
    );
}

/// `meshcast ... | head -c 1`: the reader goes away; meshcast must end quietly.
fn with_closed_stdout(args: &[&str]) {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("meshcast"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
}

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    with_closed_stdout(&[
        "describe-graph",
        "--global-grid",
        "2",
        "--json",
        "--no-graph-cache",
    ]);
    with_closed_stdout(&["plan-memory", "--global-grid", "5", "--json"]);
}

#[test]
fn names_and_paths_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = small_run(dir.path());
    let d = data.to_str().unwrap();
    assert_bad_input(
        &run(&["inspect-data", d, "--levels", "500"]),
        &["--levels 500", "g.nc", "no variable"],
    );
    let o = run(&["inspect-data", "--var", &format!("{d}:z=z/500")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a NetCDF variable name"));
    let missing = dir.path().join("no/such/dir/out.nc");
    assert_bad_input(
        &run(&["generate-data", "-o", missing.to_str().unwrap()]),
        &["out.nc", "does not exist"],
    );
    let o = run(&[
        "forecast",
        "--checkpoint",
        out.to_str().unwrap(),
        "--init-time",
        "2000-01-01 00:00",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert_bad_input(&o, &["out.nc", "does not exist"]);
    let o = run(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--which",
        "../../other/last",
    ]);
    assert_bad_input(&o, &["--which", "not a path"]);
    let o = meshcast()
        .args(["-q", "train-model", d, "--use-prefetch", "--no-prefetch"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn an_edited_checkpoint_sidecar_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, clean) = small_run(dir.path());
    let copy = |name: &str| {
        let to = dir.path().join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&clean)
            .arg(&to)
            .status()
            .unwrap();
        assert!(status.success());
        to
    };
    let eval = |run: &Path| {
        meshcast()
            .args(["-q", "eval", "--checkpoint"])
            .arg(run)
            .args(["--which", "last", "--rollout-steps", "1"])
            .output()
            .unwrap()
    };
    let zero_std = copy("zero-std");
    edit_json(&zero_std.join("checkpoints/last.json"), |m| {
        m["stats"]["std"] = serde_json::json!(vec![0.0; 5]);
    });
    assert_bad_input(
        &eval(&zero_std),
        &["last.json", "damaged checkpoint", "std"],
    );
    let short = copy("short-channels");
    edit_json(&short.join("checkpoints/last.json"), |m| {
        m["stats"]["channels"].as_array_mut().unwrap().pop();
    });
    assert_bad_input(&eval(&short), &["last.json", "damaged checkpoint"]);
    let far = copy("far-position");
    edit_json(&far.join("checkpoints/last.json"), |m| {
        m["batch_in_epoch"] = serde_json::json!(1_000_000);
    });
    assert_bad_input(
        &train_tiny(&data, &far, &["--num-epochs", "2", "--resume"]),
        &["batch 1000000", "damaged or edited checkpoint"],
    );
    // A NaN weight whose file hash was recomputed into the sidecar.
    let nan = copy("nan-weight");
    let sidecar = nan.join("checkpoints/last.json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
    let file = nan
        .join("checkpoints")
        .join(meta["weights_file"].as_str().unwrap());
    let mut weights = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let (name, w) = weights
        .iter()
        .next()
        .map(|(n, w)| (n.clone(), w.clone()))
        .unwrap();
    let poisoned = (w.ones_like().unwrap() * f64::NAN).unwrap();
    weights.insert(name, poisoned);
    std::fs::remove_file(&file).unwrap();
    candle_core::safetensors::save(&weights, &file).unwrap();
    let sha = format!("{:x}", Sha256::digest(std::fs::read(&file).unwrap()));
    edit_json(&sidecar, |m| m["weights_sha256"] = serde_json::json!(sha));
    assert_bad_input(&eval(&nan), &["NaN or infinite"]);
    succeeded(&eval(&clean));
}

#[test]
fn a_run_predicted_not_to_fit_is_refused_with_what_would() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g1.nc", &["--resolution", "1", "--steps", "6"]);
    let out = dir.path().join("run");
    // Hundreds of terabytes on any machine of today.
    let o = meshcast()
        .args(["-q", "train-model"])
        .arg(&data)
        .arg("--output-dir")
        .arg(&out)
        .args([
            "--latent-size",
            "4096",
            "--batch-size",
            "256",
            "--mesh-level",
            "3",
        ])
        .args(["--no-graph-cache", "--no-progress"])
        .output()
        .unwrap();
    assert_bad_input(&o, &["predicted peak", "--skip-memory-check"]);
    assert!(!out.join("run.json").exists());
    let plan = run(&[
        "plan-memory",
        data.to_str().unwrap(),
        "--latent-size",
        "4096",
        "--batch-size",
        "256",
        "--mesh-level",
        "3",
        "--no-graph-cache",
    ]);
    succeeded(&plan);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("does not fit"),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
}
