//! Zarr input: the WeatherBench2-layout fixture that xarray wrote as a Zarr v2 store, a
//! Zarr v3 store and a NetCDF-4 file (tests/fixtures/make_wb2_fixture.py) reads the
//! same from all three, trains on identical batches, and forecasts in the store's own
//! conventions; broken stores are one error line.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

const STORES: [&str; 2] = ["wb2-v2.zarr", "wb2-v3.zarr"];

#[test]
fn zarr_v2_and_v3_stores_read_exactly_as_their_netcdf_twin() {
    let levels = ["--levels".to_string(), "all".to_string()];
    let nc = inspect_json(&[&[arg(&fixture("wb2.nc"))][..], &levels[..]].concat());
    let channels = nc["variables"].as_array().unwrap();
    // geopotential and temperature on 3 levels, 2m_temperature, mean_sea_level_pressure.
    assert_eq!(channels.len(), 8);
    for store in STORES {
        let z = inspect_json(&[&[arg(&fixture(store))][..], &levels[..]].concat());
        assert_eq!(z["grid"], nc["grid"], "{store}");
        assert_eq!(z["time"], nc["time"], "{store}");
        assert_eq!(z["samples"], nc["samples"], "{store}");
        let zc = z["variables"].as_array().unwrap();
        assert_eq!(zc.len(), channels.len(), "{store}");
        for b in channels {
            // A store lists its arrays by name; the NetCDF file in its own order.
            let a = zc
                .iter()
                .find(|a| a["name"] == b["name"])
                .expect("same channel");
            for key in [
                "name",
                "units",
                "long_name",
                "fill_fraction",
                "min",
                "max",
                "mean",
                "std",
            ] {
                assert_eq!(a[key], b[key], "{store} {} {key}", b["name"]);
            }
        }
    }
    assert_eq!(nc["time"]["start"], "2020-01-01 00:00");
}

/// The training losses of 3 steps on every variable of `data` (picked in one order, so
/// that the channels are the same whatever order the container lists them in).
fn losses(data: &Path, run: &Path) -> Vec<f64> {
    let mut args = vec!["-q".to_string(), "train-model".into()];
    for name in [
        "geopotential",
        "temperature",
        "2m_temperature",
        "mean_sea_level_pressure",
    ] {
        args.extend(["--var".into(), format!("{}:{name}", data.display())]);
    }
    let flags = [
        "--levels",
        "all",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--output-dir",
    ];
    let o = meshcast()
        .args(args)
        .args(flags)
        .arg(run)
        .args(TINY)
        .output()
        .unwrap();
    succeeded(&o);
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|row| row["kind"] == "step")
        .map(|row| row["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn training_on_a_zarr_store_sees_the_batches_of_the_netcdf_twin() {
    let dir = tempfile::tempdir().unwrap();
    let want = losses(&fixture("wb2.nc"), &dir.path().join("nc"));
    assert_eq!(want.len(), 3);
    for store in STORES {
        let run = dir.path().join(store);
        // Bit for bit: the same values, normalised by the same statistics.
        assert_eq!(losses(&fixture(store), &run), want, "{store}");
    }
    // The forecast of a run trained on a store keeps the store's conventions.
    let fc = dir.path().join("fc.nc");
    let run = dir.path().join("wb2-v3.zarr");
    forecast_last(
        &run,
        &fc,
        &["--init-times", "2020-01-02 00:00", "--steps", "1"],
    );
    let f = open_nc(&fc);
    let dims: Vec<String> = f
        .variable("temperature")
        .unwrap()
        .dimensions()
        .iter()
        .map(|d| d.name())
        .collect();
    let want_dims = [
        "time",
        "prediction_timedelta",
        "level",
        "latitude",
        "longitude",
    ];
    assert_eq!(dims, want_dims);
    let lat: Vec<f64> = f.variable("latitude").unwrap().get_values(..).unwrap();
    assert_eq!((lat[0], lat[lat.len() - 1]), (90.0, -90.0));
    let level: Vec<i64> = f.variable("level").unwrap().get_values(..).unwrap();
    assert_eq!(level, [500, 700, 850]);
}

/// A copy of fixture store `name` in `dir`, to be damaged.
fn copy_store(name: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(name);
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(fixture(name))
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    to
}

fn inspect(path: &Path) -> std::process::Output {
    meshcast()
        .args(["-q", "inspect-data", "--levels", "all"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn broken_zarr_stores_are_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let v3 = copy_store("wb2-v3.zarr", dir.path());
    std::fs::write(v3.join("temperature/zarr.json"), "{").unwrap();
    assert_bad_input(&inspect(&v3), &["wb2-v3.zarr", "zarr.json", "not JSON"]);

    let v2 = copy_store("wb2-v2.zarr", dir.path());
    std::fs::write(v2.join("temperature/.zattrs"), r#"{"units": "K"}"#).unwrap();
    assert_bad_input(
        &inspect(&v2),
        &["wb2-v2.zarr", "temperature", "no dimension names"],
    );

    let empty = dir.path().join("empty.zarr");
    std::fs::create_dir(&empty).unwrap();
    assert_bad_input(
        &inspect(&empty),
        &["empty.zarr", "neither a NetCDF file nor a Zarr store"],
    );

    // A chunk that cannot be decoded is named when it is read.
    let v2 = copy_store("wb2-v2.zarr", &dir.path().join("chunk"));
    std::fs::write(v2.join("temperature/3.0.0.0"), b"not blosc").unwrap();
    let o = inspect(&v2);
    assert_bad_input(&o, &["wb2-v2.zarr", "temperature"]);
}
