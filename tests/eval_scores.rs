//! `eval` scores any period of any file with the checkpoint's channels and grid:
//! `--split all` on a file the model never saw, `--start/--end` inside it; its JSON is a
//! header and flat records.

mod common;

use common::*;

fn eval_json(run: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = meshcast()
        .args(["-q", "eval", "--checkpoint"])
        .arg(run)
        .args([
            "--which",
            "last",
            "--no-graph-cache",
            "--rollout-steps",
            "2",
            "--json",
        ])
        .args(args)
        .output()
        .unwrap();
    succeeded(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn initial_times(report: &serde_json::Value) -> Vec<String> {
    report["initial_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn eval_scores_a_whole_independent_file_or_a_period_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = small_run(dir.path());
    let other = generate(
        dir.path(),
        "other.nc",
        &[
            "--resolution",
            "10",
            "--steps",
            "12",
            "--seed",
            "7",
            "--start",
            "2001-01-01 00:00",
        ],
    );
    let other_arg = other.to_str().unwrap();
    let all = eval_json(&run, &["--data", other_arg, "--split", "all"]);
    assert_eq!(all["split"], "all");
    assert_eq!(all["data_files"][0].as_str().unwrap(), other_arg);
    // 12 steps, 2-step rollouts: every initial time from the first with a full input
    // history to the last with two steps after it (2001-01-03 06:00, step 9).
    let inits = initial_times(&all);
    assert_eq!(inits.last().unwrap(), "2001-01-03 06:00");
    let input_steps = 11 - inits.len();
    assert!((1..=3).contains(&input_steps), "{inits:?}");
    // A period: forecasts from their first input to their last lead inside it.
    let period = eval_json(
        &run,
        &[
            "--data",
            other_arg,
            "--split",
            "all",
            "--start",
            "2001-01-02 00:00",
            "--end",
            "2001-01-03 00:00",
        ],
    );
    let inside = initial_times(&period);
    assert_eq!(inside.last().unwrap(), "2001-01-02 12:00");
    assert_eq!(inside.len(), 3 - (input_steps - 1));
    assert_eq!(period["start"], "2001-01-02 00:00");

    let none = meshcast()
        .args(["-q", "eval", "--checkpoint"])
        .arg(&run)
        .args([
            "--which",
            "last",
            "--no-graph-cache",
            "--data",
            other_arg,
            "--split",
            "all",
        ])
        .args(["--start", "2001-01-03 12:00"])
        .output()
        .unwrap();
    assert_bad_input(
        &none,
        &[
            "no 4-step forecast fits",
            "between 2001-01-03 12:00 and the end",
        ],
    );
}
