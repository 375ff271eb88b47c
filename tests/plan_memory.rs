//! `meshcast plan-memory` and `train-model --memory-budget`: predictions land within 15%
//! of the peaks train-model measures, and the budget picks the cheapest configuration
//! that fits, or refuses plainly.

mod common;

use std::path::Path;

use common::*;

fn plan(data: &Path, extra: &[&str]) -> std::process::Output {
    meshcast()
        .args([
            "-q",
            "plan-memory",
            "--json",
            "--data",
            data.to_str().unwrap(),
        ])
        .args(MEMORY_MODEL)
        .args(extra)
        .output()
        .unwrap()
}

fn plan_json(data: &Path, extra: &[&str]) -> serde_json::Value {
    let out = plan(data, extra);
    succeeded(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Peak bytes above the baseline that a two-step train-model run measured.
fn measured(data: &Path, dir: &Path, extra: &[&str]) -> f64 {
    let out = meshcast()
        .args(["-q", "train-model", "--data", data.to_str().unwrap()])
        .args(MEMORY_MODEL)
        .args(["--max-steps", "2", "--no-progress", "--output-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    succeeded(&out);
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let summary: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|l| l["kind"] == "summary")
        .unwrap();
    let m = &summary["memory"];
    m["peak"].as_f64().unwrap() - m["baseline"].as_f64().unwrap()
}

#[test]
fn predictions_land_within_15_percent_of_measured_peaks() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g5.nc", &["--resolution", "5", "--steps", "12"]);
    for (name, flags) in [
        ("plain", &[][..]),
        ("checkpointing", &["--checkpointing"][..]),
        ("bf16", &["--mixed-precision", "bf16"][..]),
        ("f64", &["--mixed-precision", "f64"][..]),
        ("patches", &["--patches", "4"][..]),
    ] {
        let predicted = plan_json(&data, flags)["chosen"]["prediction"]["total"]
            .as_f64()
            .unwrap();
        let measured = measured(&data, &dir.path().join(name), flags);
        let error = (predicted - measured) / measured;
        assert!(
            error.abs() < 0.15,
            "{name}: predicted {:.1} MB, measured {:.1} MB ({:+.1}%)",
            predicted / 1e6,
            measured / 1e6,
            100.0 * error
        );
    }
}

#[test]
fn the_budget_picks_the_cheapest_configuration_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g5.nc", &["--resolution", "5", "--steps", "12"]);
    let total = |flags: &[&str]| {
        plan_json(&data, flags)["chosen"]["prediction"]["total"]
            .as_u64()
            .unwrap()
    };
    let (plain, ckpt) = (total(&[]), total(&["--checkpointing"]));
    assert!(ckpt < plain);
    // Between the two: the whole grid with checkpointing, in f32.
    let budget = format!("{}", (plain + ckpt) / 2);
    let chosen = plan_json(&data, &["--memory-budget", &budget]);
    assert_eq!(chosen["chosen"]["techniques"]["patches"], 1);
    assert_eq!(chosen["chosen"]["techniques"]["checkpointing"], true);
    assert_eq!(chosen["chosen"]["techniques"]["precision"], "off");
    assert_eq!(chosen["tried"].as_array().unwrap().len(), 2);
    // A generous budget keeps everything off.
    let roomy = plan_json(&data, &["--memory-budget", "100GB"]);
    assert_eq!(roomy["chosen"]["techniques"]["checkpointing"], false);

    // train-model follows the same choice.
    let out_dir = dir.path().join("run");
    let out = meshcast()
        .args(["-q", "train-model", "--data", data.to_str().unwrap()])
        .args(MEMORY_MODEL)
        .args([
            "--max-steps",
            "1",
            "--no-progress",
            "--memory-budget",
            &budget,
        ])
        .arg("--output-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    succeeded(&out);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["train"]["checkpointing"], true);
    assert_eq!(run["train"]["patches"], 1);
    assert_eq!(run["train"]["mixed_precision"], "off");
}

#[test]
fn an_impossible_budget_is_refused_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g5.nc", &["--resolution", "5", "--steps", "12"]);
    let out = plan(&data, &["--memory-budget", "1MB", "--max-patches", "4"]);
    assert_bad_input(&out, &["no configuration fits", "1 MB"]);
    let out = meshcast()
        .args(["-q", "train-model", "--data", data.to_str().unwrap()])
        .args(MEMORY_MODEL)
        .args(["--memory-budget", "1MB", "--output-dir"])
        .arg(dir.path().join("never"))
        .output()
        .unwrap();
    assert_bad_input(&out, &["--memory-budget", "no configuration fits"]);
    assert!(!dir.path().join("never").join("run.json").exists());
    // The budget chooses the precision: it cannot keep f64.
    let out = meshcast()
        .args(["-q", "train-model", "--data", data.to_str().unwrap()])
        .args(MEMORY_MODEL)
        .args(["--memory-budget", "100GB", "--mixed-precision", "f64"])
        .arg("--output-dir")
        .arg(dir.path().join("never"))
        .output()
        .unwrap();
    assert_bad_input(&out, &["--memory-budget", "--mixed-precision f64"]);
    assert!(!dir.path().join("never").join("run.json").exists());
    let out = plan(&data, &["--memory-budget", "four gigs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'four gigs' is not a size"));
}
