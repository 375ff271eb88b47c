//! `meshcast inspect-data` on the real storm1996 files and on generated data.

mod common;

use common::*;

#[test]
fn storm1996_merged_with_renaming() {
    let report = inspect_json(&storm_args());
    assert_eq!(report["grid"]["nlat"], 33);
    assert_eq!(report["grid"]["nlon"], 36);
    assert_eq!(report["grid"]["global"], false);
    assert_eq!(report["grid"]["lat_min"], 20.0);
    assert_eq!(report["grid"]["lat_max"], 60.0);
    assert_eq!(report["grid"]["lon_min"], -140.0);
    assert_eq!(report["grid"]["lon_max"], -52.5);
    assert_eq!(report["time"]["steps"], 64);
    assert_eq!(report["time"]["step_seconds"], 6 * 3600);
    assert_eq!(report["time"]["start"], "1996-01-05 00:00");
    assert_eq!(report["time"]["regular"], true);
    let vars = report["variables"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["p", "t", "u10", "v10", "u500", "v500"]);
    // Fill fractions from the data's README: 14336, 15300, 14336, 16264, 14336, 15300 of 76032.
    let expected = [14336.0, 15300.0, 14336.0, 16264.0, 14336.0, 15300.0];
    for (v, cells) in vars.iter().zip(expected) {
        let frac = v["fill_fraction"].as_f64().unwrap();
        assert!(
            (frac - cells / 76032.0).abs() < 1e-9,
            "{}: {frac}",
            v["name"]
        );
    }
    let p = &vars[0];
    assert!((p["fill_fraction"].as_f64().unwrap() * 100.0 - 18.9).abs() < 0.05);
    // Sea-level pressure in Pa, never the -9999 fill value.
    assert!(p["min"].as_f64().unwrap() > 90_000.0 && p["max"].as_f64().unwrap() < 110_000.0);
    assert!(
        vars[1]["min"].as_f64().unwrap() > 200.0,
        "temperature in K, fill excluded"
    );
    assert!(vars[0]["time_note"].as_str().unwrap().contains("not CF"));
}

#[test]
fn storm1996_table_names_the_non_cf_time_and_region_subset() {
    let mut args = storm_args();
    args.extend(["--region".into(), "30,50,-120,-70".into()]);
    let out = meshcast().arg("inspect-data").args(&args).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("grid: 17 x 21 (regional)"), "{stdout}");
    assert!(
        stdout.contains("64 steps every 6 h from 1996-01-05 00:00"),
        "{stdout}"
    );
    assert!(stdout.contains("not CF"), "{stdout}");
}

#[test]
fn time_units_flag_overrides_the_file() {
    let mut args = vec![storm("Pstorm.cdf")];
    args.extend(["--time-units".into(), "hours since 2001-02-03 12:00".into()]);
    let report = inspect_json(&args);
    assert_eq!(report["time"]["start"], "2001-02-03 12:00");
}

#[test]
fn config_data_section_gives_the_same_merge() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/storm1996.toml");
    let args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--data-dir".into(),
        storm_dir().display().to_string(),
    ];
    let from_config = inspect_json(&args);
    let from_flags = inspect_json(&storm_args());
    assert_eq!(from_config["variables"].as_array().unwrap().len(), 6);
    assert_eq!(from_config["grid"], from_flags["grid"]);
    for (a, b) in from_config["variables"]
        .as_array()
        .unwrap()
        .iter()
        .zip(from_flags["variables"].as_array().unwrap())
    {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(a["fill_fraction"], b["fill_fraction"]);
    }
}
