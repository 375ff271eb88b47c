//! `eval` scores any period of any file with the checkpoint's channels and grid:
//! `--split all` on a file the model never saw, `--start/--end` inside it; its JSON is a
//! header and flat records.

mod common;

use common::*;

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
    let all = eval_last(&run, &["--data", other_arg, "--split", "all"]);
    assert_eq!(all["split"], "all");
    assert_eq!(all["data_files"][0].as_str().unwrap(), other_arg);
    // 12 steps, 2-step rollouts: every initial time from the first with a full input
    // history to the last with two steps after it (2001-01-03 06:00, step 9).
    let inits = initial_times(&all);
    assert_eq!(inits.last().unwrap(), "2001-01-03 06:00");
    let input_steps = 11 - inits.len();
    assert!((1..=3).contains(&input_steps), "{inits:?}");
    // A period: forecasts from their first input to their last lead inside it.
    let period = eval_last(
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

/// A daily file of `days` days on a 30-degree grid whose `t` has an annual cycle of
/// 15 K amplitude (times cos(latitude)) and a small travelling wave.
fn write_annual_cycle(path: &std::path::Path, days: usize) {
    no_hdf5_locking();
    let (lats, lons): (Vec<f32>, Vec<f32>) = (
        (0..6).map(|i| -75.0 + 30.0 * i as f32).collect(),
        (0..12).map(|j| 30.0 * j as f32).collect(),
    );
    let mut f = netcdf::create(path).unwrap();
    f.add_dimension("time", days).unwrap();
    f.add_dimension("lat", lats.len()).unwrap();
    f.add_dimension("lon", lons.len()).unwrap();
    let mut v = f.add_variable::<f64>("time", &["time"]).unwrap();
    v.put_attribute("units", "days since 2001-01-01").unwrap();
    let time: Vec<f64> = (0..days).map(|d| d as f64).collect();
    v.put_values(&time, ..).unwrap();
    let mut v = f.add_variable::<f32>("lat", &["lat"]).unwrap();
    v.put_attribute("units", "degrees_north").unwrap();
    v.put_values(&lats, ..).unwrap();
    let mut v = f.add_variable::<f32>("lon", &["lon"]).unwrap();
    v.put_attribute("units", "degrees_east").unwrap();
    v.put_values(&lons, ..).unwrap();
    let mut values = Vec::new();
    for d in 0..days {
        let season = (2.0 * std::f32::consts::PI * d as f32 / 365.25).sin();
        for lat in &lats {
            for lon in &lons {
                let wave = (lon.to_radians() - 0.4 * d as f32).sin();
                values.push(280.0 + 15.0 * lat.to_radians().cos() * season + wave);
            }
        }
    }
    let mut v = f.add_variable::<f32>("t", &["time", "lat", "lon"]).unwrap();
    v.put_attribute("units", "K").unwrap();
    v.put_values(&values, ..).unwrap();
}

fn climatology_rmse(report: &serde_json::Value) -> f64 {
    let want = [("system", "climatology".into()), ("metric", "rmse".into())];
    score_record(report, &want).unwrap()["value"]
        .as_f64()
        .unwrap()
}

/// With two years of data the climatology follows the seasons: the climatology
/// forecast of the last months misses by about the travelling wave (1 K), not by the
/// annual cycle (~10 K); with two months of data it is the plain mean, and says so.
#[test]
fn the_climatology_is_seasonal_when_the_training_block_spans_a_year() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("two_years.nc");
    write_annual_cycle(&long, 730);
    let run = dir.path().join("run");
    succeeded(&train_tiny(&long, &run, &["--max-steps", "2"]));
    let report = eval_last(&run, &[]);
    let description = report["climatology"].as_str().unwrap();
    assert!(description.contains("monthly means"), "{description}");
    let seasonal = climatology_rmse(&report);
    eprintln!("seasonal climatology RMSE {seasonal:.3} K");
    assert!(seasonal < 1.5, "seasonal climatology RMSE {seasonal} K");

    let short = dir.path().join("two_months.nc");
    write_annual_cycle(&short, 60);
    let run = dir.path().join("short_run");
    succeeded(&train_tiny(&short, &run, &["--max-steps", "2"]));
    let report = eval_last(&run, &[]);
    let description = report["climatology"].as_str().unwrap();
    assert!(description.contains("shorter than a year"), "{description}");
}

/// Splits by date: training on both sides of a held-out test period (blocked
/// cross-validation). run.json records the periods, inspect-data and the statistics
/// see two training ranges, and eval scores forecasts inside the test period only.
/// A period that holds no data is refused with one line before an old run is touched.
#[test]
fn a_test_period_held_out_of_the_middle_is_what_eval_scores() {
    let dir = tempfile::tempdir().unwrap();
    // 10 degrees, 6-hourly from 2000-01-01 00:00, 40 steps: to 2000-01-10 18:00.
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "40"]);
    let periods = [
        "--train-period",
        "2000-01-01..2000-01-03",
        "--train-period",
        "2000-01-07..2000-01-10 18:00",
        "--validation-period",
        "2000-01-06",
        "--test-period",
        "2000-01-04..2000-01-05",
    ]
    .map(String::from);
    let run = dir.path().join("run");
    succeeded(&train_tiny(&data, &run, &["--num-epochs", "1"]));
    let before = std::fs::read(run.join("run.json")).unwrap();
    let args = |p: &[String]| -> Vec<String> {
        [
            &["--num-epochs", "1", "--overwrite"].map(String::from)[..],
            p,
        ]
        .concat()
    };
    let train = |p: &[String]| {
        let a = args(p);
        train_tiny(
            &data,
            &run,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    // "2000-01-06" alone is no period: refused, one line.
    assert_bad_input(
        &train(&periods),
        &["validation period '2000-01-06'", "START..END"],
    );
    let mut good = periods.clone();
    good[5] = "2000-01-06..2000-01-06 18:00".into();
    let mut outside = good.clone();
    outside[7] = "2001-01-01..2001-01-02".into();
    assert_bad_input(
        &train(&outside),
        &["test period", "holds no time step", "2000-01-10 18:00"],
    );
    assert_eq!(
        std::fs::read(run.join("run.json")).unwrap(),
        before,
        "the old run is kept"
    );
    succeeded(&train(&good));
    let recorded = read_json(&run.join("run.json"));
    assert_eq!(
        recorded["split"]["periods"]["train"][1],
        "2000-01-07..2000-01-10 18:00"
    );
    let stats = read_json(&run.join("stats.json"));
    assert_eq!(stats["train_steps"], serde_json::json!([[0, 12], [24, 40]]));
    let inspect = inspect_json(&[&[data.display().to_string()][..], &good].concat());
    assert_eq!(
        inspect["samples"]["train"]["steps"],
        serde_json::json!([[0, 12], [24, 40]])
    );
    assert_eq!(inspect["samples"]["train"]["samples"], 10 + 14);
    assert_eq!(
        inspect["samples"]["test"]["steps"],
        serde_json::json!([[12, 20]])
    );
    // Two inputs and two leads inside 2000-01-04 00:00 .. 2000-01-05 18:00.
    let report = eval_last(&run, &[]);
    let first_last = |t: &[String]| (t[0].clone(), t[t.len() - 1].clone());
    assert_eq!(
        first_last(&initial_times(&report)),
        (
            "2000-01-04 06:00".to_string(),
            "2000-01-05 06:00".to_string()
        )
    );
    assert_eq!(initial_times(&report).len(), 5);
    // On a file of another month, outside every period of the run, eval scores all of it.
    let other = generate(
        dir.path(),
        "other.nc",
        &[
            "--resolution",
            "10",
            "--steps",
            "12",
            "--start",
            "2000-03-01 00:00",
        ],
    );
    let report = eval_last(&run, &["--data", other.to_str().unwrap(), "--split", "all"]);
    assert_eq!(initial_times(&report)[0], "2000-03-01 06:00");
    let climatology = report["climatology"].as_str().unwrap();
    assert!(climatology.contains("hold none of it"), "{climatology}");
}
