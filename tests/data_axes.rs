//! Time and level axes of NetCDF files climate users have: CF time in calendar months
//! (NCEP/NCAR and CMIP monthly means), a file too short for one sample, and a
//! 13-level variable taken whole (`--levels all`) or by ranges. The tests write their
//! files themselves.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const NLAT: usize = 4;
const NLON: usize = 8;
/// WeatherBench2's 13 pressure levels, top of the file first as in ERA5.
const LEVELS: [f64; 13] = [
    50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 700.0, 850.0, 925.0, 1000.0,
];

/// A global 45-degree file with `t(time, [plev,] lat, lon)`: time values `times` in
/// `units`, and `levels` on a `plev` dimension (none when empty).
fn write_file(path: &Path, units: &str, times: &[f64], levels: &[f64]) -> PathBuf {
    no_hdf5_locking();
    let mut f = netcdf::create(path).unwrap();
    f.add_dimension("time", times.len()).unwrap();
    f.add_dimension("lat", NLAT).unwrap();
    f.add_dimension("lon", NLON).unwrap();
    let mut v = f.add_variable::<f64>("time", &["time"]).unwrap();
    v.put_attribute("units", units).unwrap();
    v.put_attribute("calendar", "standard").unwrap();
    v.put_values(times, ..).unwrap();
    let lat: Vec<f64> = (0..NLAT).map(|i| -67.5 + 45.0 * i as f64).collect();
    let lon: Vec<f64> = (0..NLON).map(|j| 45.0 * j as f64).collect();
    put_lat_lon(&mut f, &lat, &lon);
    let mut dims = vec!["time"];
    if !levels.is_empty() {
        f.add_dimension("plev", levels.len()).unwrap();
        let mut v = f.add_variable::<f64>("plev", &["plev"]).unwrap();
        v.put_attribute("units", "hPa").unwrap();
        v.put_attribute("axis", "Z").unwrap();
        v.put_values(levels, ..).unwrap();
        dims.push("plev");
    }
    dims.extend(["lat", "lon"]);
    let cells = times.len() * levels.len().max(1) * NLAT * NLON;
    let values: Vec<f32> = (0..cells).map(|i| 250.0 + (i % 97) as f32 * 0.3).collect();
    let mut v = f.add_variable::<f32>("t", &dims).unwrap();
    v.put_attribute("units", "K").unwrap();
    v.put_values(&values, ..).unwrap();
    path.to_path_buf()
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn integer_months_since_a_date_are_calendar_months() {
    let dir = tempfile::tempdir().unwrap();
    // 21 monthly means from January 1958, as NCEP/NCAR writes them.
    let times: Vec<f64> = (0..21).map(f64::from).collect();
    let monthly = write_file(
        &dir.path().join("m.nc"),
        "months since 1958-1-1",
        &times,
        &[],
    );
    let report = inspect_json(&[arg(&monthly)]);
    assert_eq!(report["time"]["start"], "1958-01-01 00:00");
    assert_eq!(report["time"]["end"], "1959-09-01 00:00");
    assert_eq!(report["time"]["steps"], 21);
    let years = write_file(
        &dir.path().join("y.nc"),
        "years since 1850-01-01",
        &[0.0, 150.0, 151.0],
        &[],
    );
    let report = inspect_json(&[arg(&years)]);
    assert_eq!(report["time"]["end"], "2001-01-01 00:00");

    // Fractions of a month have no calendar meaning: refused, naming the value.
    let half = write_file(
        &dir.path().join("h.nc"),
        "months since 1958-1-1",
        &[0.0, 0.5, 1.0],
        &[],
    );
    let o = meshcast()
        .args(["-q", "inspect-data"])
        .arg(&half)
        .output()
        .unwrap();
    assert_bad_input(
        &o,
        &["h.nc", "step 1", "0.5 is not a whole number of months"],
    );

    // Reading the months as days on purpose is allowed, and the report says so.
    let forced = inspect_json(&[
        arg(&monthly),
        "--time-units".into(),
        "days since 1958-01-01".into(),
    ]);
    let note = forced["variables"][0]["time_note"].as_str().unwrap();
    assert!(
        note.contains("not its own 'months since 1958-1-1'"),
        "{note}"
    );
}

#[test]
fn a_file_too_short_for_one_sample_is_described_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let single = write_file(
        &dir.path().join("one.nc"),
        "hours since 2000-01-01",
        &[0.0],
        &[],
    );
    let report = inspect_json(&[arg(&single)]);
    assert_eq!(report["time"]["steps"], 1);
    assert_eq!(report["variables"][0]["name"], "t");
    assert!(report["samples"].is_null());
    let why = report["no_samples"].as_str().unwrap();
    assert!(
        why.contains("needs 3 time steps") && why.contains("has 1"),
        "{why}"
    );
    let o = meshcast()
        .args(["-q", "inspect-data"])
        .arg(&single)
        .output()
        .unwrap();
    succeeded(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("samples: none fit, so training could not use this data"),
        "{text}"
    );
    // Training still refuses it, with the same reason.
    let run = dir.path().join("run");
    assert_bad_input(&train_tiny(&single, &run, &[]), &["needs 3 time steps"]);
    // A window flag that is wrong in itself is still an error, not a note.
    let o = meshcast()
        .args(["-q", "inspect-data", "--input-steps", "0"])
        .arg(&single)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// The channel names inspect-data reports for `--levels LEVELS`.
fn channels(file: &Path, levels: &str) -> Vec<String> {
    let report = inspect_json(&[arg(file), "--levels".into(), levels.into()]);
    report["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn thirteen_levels_are_taken_whole_or_by_ranges_and_kept_in_the_forecast() {
    let dir = tempfile::tempdir().unwrap();
    let times: Vec<f64> = (0..12).map(|k| 6.0 * k as f64).collect();
    let file = write_file(
        &dir.path().join("plev.nc"),
        "hours since 2000-01-01",
        &times,
        &LEVELS,
    );
    let all = channels(&file, "all");
    assert_eq!(all.len(), 13);
    assert_eq!((all[0].as_str(), all[12].as_str()), ("t50", "t1000"));
    assert_eq!(
        channels(&file, "300..700"),
        ["t300", "t400", "t500", "t600", "t700"]
    );
    assert_eq!(
        channels(&file, "850,100..200,850"),
        ["t850", "t100", "t150", "t200"]
    );
    // Pascals given for a file in hPa still match, and the channel keeps the file's value.
    assert_eq!(channels(&file, "85000..92500"), ["t850", "t925"]);
    let o = meshcast()
        .args(["-q", "inspect-data", "--levels", "2000..3000"])
        .arg(&file)
        .output()
        .unwrap();
    assert_bad_input(&o, &["plev.nc", "no level 2000..3000", "50, 100"]);
    let o = meshcast()
        .args(["-q", "inspect-data", "--levels", "500,lots"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "a level that is not a number");

    // Trained on every level, the forecast writes all 13 on the file's level axis.
    let run = dir.path().join("run");
    succeeded(&train_tiny(
        &file,
        &run,
        &["--levels", "all", "--max-steps", "2"],
    ));
    let run_json = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(
        run_json.contains("\"all\""),
        "run.json keeps the choice: {run_json}"
    );
    let fc = dir.path().join("fc.nc");
    forecast_last(
        &run,
        &fc,
        &["--init-times", "2000-01-02 12:00", "--steps", "1"],
    );
    let f = open_nc(&fc);
    let plev: Vec<f64> = f.variable("plev").unwrap().get_values(..).unwrap();
    assert_eq!(plev, LEVELS);
    let dims = dim_names(&f, "t");
    assert_eq!(dims, ["time", "prediction_timedelta", "plev", "lat", "lon"]);
}
