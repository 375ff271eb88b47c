//! Data-parallel training over MPI (cargo feature `mpi`; `scripts/test.sh` builds with
//! it): `mpirun -np N meshcast train-model` with N x batch b must end on the weights of
//! one process with batch N x b, resume on the same or another number of ranks, and
//! end every rank when one fails.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

use common::{checkpoint_dtype, generate, largest_difference, meshcast, succeeded, train_tiny_by};

/// `mpirun -np RANKS meshcast` with the test's environment, one compute thread per
/// rank (as each would have on a core of its own).
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    for (key, value) in meshcast().get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .args(["-x", "RAYON_NUM_THREADS=1"])
        .arg(meshcast().get_program());
    cmd
}

/// `meshcast` as one process with one compute thread, as each rank has.
fn alone() -> Command {
    let mut cmd = meshcast();
    cmd.env("RAYON_NUM_THREADS", "1");
    cmd
}

/// 10-degree synthetic data, 40 steps.
fn data(dir: &Path) -> PathBuf {
    generate(dir, "g.nc", &["--resolution", "10", "--steps", "40"])
}

const RUN: &[&str] = &[
    "--num-epochs",
    "2",
    "--seed",
    "5",
    "--learning-rate",
    "3e-3",
];

/// The bars of equality with one process: f32 within 1e-5, f64 within 1e-12 (what
/// remains there is the order of the sums over ranks).
const PRECISIONS: [(&str, f64); 2] = [("off", 1e-5), ("f64", 1e-12)];

#[test]
fn ranks_end_on_the_weights_of_one_process_with_their_combined_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    for (precision, tolerance) in PRECISIONS {
        let run = [RUN, &["--mixed-precision", precision]].concat();
        let one = dir.path().join(format!("one-{precision}"));
        succeeded(&train_tiny_by(
            alone(),
            &data,
            &one,
            &[&run[..], &["--batch-size", "4"]].concat(),
        ));
        for (ranks, batch) in [(2, "2"), (4, "1")] {
            let many = dir.path().join(format!("np{ranks}-{precision}"));
            let out = train_tiny_by(
                mpirun(ranks),
                &data,
                &many,
                &[&run[..], &["--batch-size", batch]].concat(),
            );
            succeeded(&out);
            assert_eq!(
                common::last_meta(&many)["step"],
                common::last_meta(&one)["step"]
            );
            let diff = largest_difference(&one, &many);
            assert!(
                diff < tolerance,
                "{precision}, {ranks} ranks: parameters differ by {diff}"
            );
            same_statistics_and_metrics(&one, &many, ranks);
            let dtype = match precision {
                "f64" => candle_core::DType::F64,
                _ => candle_core::DType::F32,
            };
            assert_eq!(checkpoint_dtype(&many), dtype);
        }
    }
}

/// The ranks summed their shares of the training block: one process's statistics (the
/// sums' order differs; the std's cancellation, mean^2 against the mean square, makes
/// that ~1e-12 relative). Only rank 0 wrote, and its metrics are the whole batch's.
fn same_statistics_and_metrics(one: &Path, many: &Path, ranks: usize) {
    let stats = |run: &Path| common::read_json(&run.join("stats.json"));
    for key in ["mean", "std", "diff_std"] {
        let (a, b) = (stats(one)[key].clone(), stats(many)[key].clone());
        for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                "{key}: {x} vs {y}"
            );
        }
    }
    let (m1, mn) = (common::metrics(one), common::metrics(many));
    let loss = |m: &[serde_json::Value]| m[0]["loss"].as_f64().unwrap();
    assert!((loss(&m1) - loss(&mn)).abs() < 1e-5 * loss(&m1));
    let summary = mn.iter().rfind(|r| r["kind"] == "summary").unwrap();
    assert_eq!(summary["ranks"], ranks);
    assert!(summary["exchange_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn accumulation_and_rollouts_compose_with_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    for (precision, tolerance) in PRECISIONS {
        let args = [
            RUN,
            &["--grad-accum-steps", "2", "--rollout-steps", "2"],
            &["--mixed-precision", precision],
        ]
        .concat();
        let one = dir.path().join(format!("one-{precision}"));
        succeeded(&train_tiny_by(
            alone(),
            &data,
            &one,
            &[&args[..], &["--batch-size", "6"]].concat(),
        ));
        // 26 samples: four global batches of 6, then one of 2 (shares of 1 and 1),
        // which is also a short accumulation.
        let two = dir.path().join(format!("two-{precision}"));
        let out = train_tiny_by(
            mpirun(2),
            &data,
            &two,
            &[&args[..], &["--batch-size", "3"]].concat(),
        );
        succeeded(&out);
        let diff = largest_difference(&one, &two);
        assert!(diff < tolerance, "{precision}: parameters differ by {diff}");
    }
}

#[test]
fn patch_parallel_ranks_end_on_the_weights_of_one_patched_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let args = [RUN, &["--batch-size", "3", "--patches", "4"]].concat();
    let one = dir.path().join("one");
    succeeded(&train_tiny_by(alone(), &data, &one, &args));
    let val_losses = |run: &Path| -> Vec<f64> {
        let epochs = common::metrics(run).into_iter();
        let epochs = epochs.filter(|r| r["kind"] == "epoch");
        epochs.map(|r| r["val_loss"].as_f64().unwrap()).collect()
    };
    // 2 ranks: two patches each; 3 ranks: 1, 1 and 2. Each holds only its patches and
    // validates every sample on their nodes.
    for ranks in [2, 3] {
        let run = dir.path().join(format!("np{ranks}"));
        // As train_tiny_by, with rank 0's log: it reads only the rows its patches need.
        let mut cmd = mpirun(ranks);
        cmd.arg("train-model")
            .arg(&data)
            .arg("--output-dir")
            .arg(&run);
        let out = cmd.args(common::TINY).args(&args).output().unwrap();
        succeeded(&out);
        let log = String::from_utf8_lossy(&out.stderr);
        let band = log
            .split("this rank's patches need latitude rows ")
            .nth(1)
            .unwrap_or_else(|| panic!("no band logged: {log}"));
        let (rows, nlat) = band.split_once(" of ").unwrap();
        let nlat: usize = nlat.split(':').next().unwrap().parse().unwrap();
        let (first, end) = rows.split_once("..").unwrap();
        let (first, end): (usize, usize) = (first.parse().unwrap(), end.parse().unwrap());
        assert!(
            first == 0 && end < nlat,
            "rank 0 reads rows {first}..{end} of {nlat}"
        );
        assert_eq!(
            common::last_meta(&run)["step"],
            common::last_meta(&one)["step"]
        );
        let diff = largest_difference(&one, &run);
        assert!(diff < 1e-5, "{ranks} ranks: parameters differ by {diff}");
        for (a, b) in val_losses(&one).iter().zip(val_losses(&run)) {
            assert!((a - b).abs() < 1e-5 * a, "validation loss {a} vs {b}");
        }
    }
    let (precision, tolerance) = PRECISIONS[1];
    let args = [&args[..], &["--mixed-precision", precision]].concat();
    let one = dir.path().join(format!("one-{precision}"));
    succeeded(&train_tiny_by(alone(), &data, &one, &args));
    for ranks in [2, 3] {
        let run = dir.path().join(format!("np{ranks}-{precision}"));
        succeeded(&train_tiny_by(mpirun(ranks), &data, &run, &args));
        let diff = largest_difference(&one, &run);
        assert!(
            diff < tolerance,
            "{precision}, {ranks} ranks: differ by {diff}"
        );
    }
    let without_patch = train_tiny_by(mpirun(5), &data, &dir.path().join("np5"), &args);
    assert!(!without_patch.status.success());
    let stderr = String::from_utf8_lossy(&without_patch.stderr);
    assert!(stderr.contains("a patch per rank"), "{stderr}");
    let refused = train_tiny_by(
        mpirun(2),
        &data,
        &dir.path().join("k2"),
        &[&args[..], &["--rollout-steps", "2"]].concat(),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("patch-parallel"));
}

#[test]
fn a_run_resumes_on_the_same_or_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let batch = ["--batch-size", "2"];
    let whole = dir.path().join("whole");
    succeeded(&train_tiny_by(
        mpirun(2),
        &data,
        &whole,
        &[RUN, &batch].concat(),
    ));
    for ranks in [2, 1, 3] {
        let run = dir.path().join(format!("resumed{ranks}"));
        succeeded(&train_tiny_by(
            mpirun(2),
            &data,
            &run,
            &[RUN, &batch, &["--max-steps", "5"]].concat(),
        ));
        assert_eq!(common::last_meta(&run)["step"], 5);
        // Resumed from run.json alone: the global batch of 4 stays, whatever the ranks
        // (3 ranks: shares of 1, 1 and 2 samples).
        let resume = ["--resume", "--no-progress"];
        let out = match ranks {
            1 => alone()
                .args(["-q", "train-model", "--output-dir"])
                .arg(&run)
                .args(resume)
                .output()
                .unwrap(),
            n => mpirun(n)
                .args(["-q", "train-model", "--output-dir"])
                .arg(&run)
                .args(resume)
                .output()
                .unwrap(),
        };
        succeeded(&out);
        let diff = largest_difference(&whole, &run);
        match ranks {
            2 => assert_eq!(diff, 0.0, "resumed on 2 ranks: differs by {diff}"),
            _ => assert!(diff < 1e-5, "resumed on {ranks} ranks: differs by {diff}"),
        }
    }
}

#[test]
fn a_failure_on_one_rank_ends_every_rank_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = dir.path().join("run");
    succeeded(&train_tiny_by(
        mpirun(2),
        &data,
        &run,
        &["--num-epochs", "1"],
    ));
    // Only rank 0 checks the run directory: it refuses, the other rank must not wait.
    let out = train_tiny_by(mpirun(2), &data, &run, &["--num-epochs", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error (rank 0):") && stderr.contains("--overwrite"),
        "{stderr}"
    );
}

#[test]
fn plan_memory_predicts_the_peak_of_each_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g5.nc", &["--resolution", "5", "--steps", "12"]);
    for (name, flags) in [("data", &[][..]), ("patches", &["--patches", "4"][..])] {
        let out = meshcast()
            .args(["-q", "plan-memory", "--json", "--ranks", "2", "--data"])
            .arg(&data)
            .args(common::MEMORY_MODEL)
            .args(flags)
            .output()
            .unwrap();
        succeeded(&out);
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["ranks"], 2);
        let predicted = plan["chosen"]["prediction"]["total"].as_f64().unwrap();
        let run = dir.path().join(name);
        let out = mpirun(2)
            .args(["-q", "train-model", "--data"])
            .arg(&data)
            .args(common::MEMORY_MODEL)
            .args(flags)
            .args(["--max-steps", "2", "--no-progress", "--output-dir"])
            .arg(&run)
            .output()
            .unwrap();
        succeeded(&out);
        // Rank 0's summary: its own peak above its own baseline.
        let summary = common::metrics(&run)
            .into_iter()
            .rfind(|r| r["kind"] == "summary")
            .unwrap();
        let m = &summary["memory"];
        let measured = m["peak"].as_f64().unwrap() - m["baseline"].as_f64().unwrap();
        let error = (predicted - measured) / measured;
        assert!(
            error.abs() < 0.15,
            "{name}: predicted {:.1} MB per rank, rank 0 measured {:.1} MB ({:+.1}%)",
            predicted / 1e6,
            measured / 1e6,
            100.0 * error
        );
    }
}

#[test]
fn eval_over_ranks_reports_the_scores_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = dir.path().join("run");
    succeeded(&train_tiny_by(alone(), &data, &run, &["--num-epochs", "1"]));
    let eval = [
        "eval",
        "--which",
        "last",
        "--no-graph-cache",
        "--split",
        "all",
    ];
    let json = ["--rollout-steps", "2", "--batch-size", "3", "--json"];
    let eval_by = |mut cmd: Command| {
        let out = cmd.arg("-q").args(eval).arg("--checkpoint").arg(&run);
        let out = out.args(json).output().unwrap();
        succeeded(&out);
        out
    };
    let (one, three) = (eval_by(alone()), eval_by(mpirun(3)));
    // Rank 0 alone prints: one report, whose scores equal one process's.
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&one.stdout).unwrap(),
        serde_json::from_slice(&three.stdout).unwrap(),
    );
    assert_eq!(a["initial_times"], b["initial_times"]);
    assert_eq!(a["graph_forwards"], b["graph_forwards"]);
    let (ra, rb) = (
        a["records"].as_array().unwrap(),
        b["records"].as_array().unwrap(),
    );
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(rb) {
        let (vx, vy) = (x["value"].as_f64().unwrap(), y["value"].as_f64().unwrap());
        assert!((vx - vy).abs() <= 1e-9 * vx.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn a_subcommand_that_runs_alone_refuses_to_be_one_of_several() {
    let out = meshcast()
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .args(["describe-graph", "--global-grid", "10", "--no-graph-cache"])
        .output()
        .unwrap();
    common::assert_bad_input(&out, &["one of 2 processes", "alone"]);
}

/// `--distributed nccl` in a build without NCCL (this one; NCCL needs the CUDA build):
/// every rank refuses with one line saying how to rebuild, before any work.
#[test]
fn nccl_without_the_feature_is_refused_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = dir.path().join("run");
    let out = train_tiny_by(mpirun(2), &data, &run, &["--distributed", "nccl"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("built without NCCL").count(), 2, "{stderr}");
    assert!(stderr.contains("--features nccl"), "{stderr}");
    assert!(!run.exists(), "nothing written");
    let alone = train_tiny_by(meshcast(), &data, &run, &["--distributed", "nccl"]);
    common::assert_bad_input(&alone, &["built without NCCL", "--distributed mpi"]);
}

#[test]
fn ranks_started_with_other_settings_refuse_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = dir.path().join("run");
    // Open MPI's MPMD form: rank 0 with seed 1, rank 1 with seed 2.
    let mut cmd = mpirun(1);
    let rank = |seed: &str| {
        let mut args: Vec<String> = vec!["-q".into(), "train-model".into()];
        args.push(data.to_str().unwrap().into());
        args.extend(["--output-dir".into(), run.to_str().unwrap().into()]);
        args.extend(common::TINY.iter().map(|s| s.to_string()));
        args.extend(["--seed".into(), seed.into()]);
        args
    };
    cmd.args(rank("1"))
        .args([":", "-np", "1", "-x", "RAYON_NUM_THREADS=1"])
        .arg(meshcast().get_program())
        .args(rank("2"));
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resolved another run than rank 0"),
        "{stderr}"
    );
    assert!(!run.join("run.json").exists(), "nothing is written");
}
