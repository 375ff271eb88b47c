//! Every bad input of the foundation issue: one error line naming the file and the
//! problem, exit code 2, no panic. The bad files are made here.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn inspect(args: &[&str]) -> std::process::Output {
    meshcast()
        .arg("-q")
        .arg("inspect-data")
        .args(args)
        .output()
        .unwrap()
}

/// Writes a NetCDF file in this (multi-threaded) test process: one writer at a time,
/// and closed explicitly so a failed close is an error here, not a puzzle in the
/// subprocess that reads it.
fn write_nc(path: &Path, fill: impl FnOnce(&mut netcdf::FileMut)) {
    static ONE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = netcdf::create(path).unwrap();
    fill(&mut f);
    f.close().unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small CF file written with the netcdf crate: `var(time, lat, lon)` with the given
/// time values and data (missing cells as `fill`).
fn write_cf(
    path: &Path,
    times: &[f64],
    nlat: usize,
    nlon: usize,
    value: impl Fn(usize, usize) -> f32,
) -> PathBuf {
    write_nc(path, |f| {
        f.add_dimension("time", times.len()).unwrap();
        f.add_dimension("lat", nlat).unwrap();
        f.add_dimension("lon", nlon).unwrap();
        let mut t = f.add_variable::<f64>("time", &["time"]).unwrap();
        t.put_attribute("units", "hours since 2000-01-01").unwrap();
        t.put_values(times, ..).unwrap();
        let lat: Vec<f64> = (0..nlat).map(|i| -40.0 + 10.0 * i as f64).collect();
        let lon: Vec<f64> = (0..nlon).map(|j| 10.0 * j as f64).collect();
        let mut v = f.add_variable::<f64>("lat", &["lat"]).unwrap();
        v.put_attribute("units", "degrees_north").unwrap();
        v.put_values(&lat, ..).unwrap();
        let mut v = f.add_variable::<f64>("lon", &["lon"]).unwrap();
        v.put_attribute("units", "degrees_east").unwrap();
        v.put_values(&lon, ..).unwrap();
        let mut v = f.add_variable::<f32>("x", &["time", "lat", "lon"]).unwrap();
        v.put_attribute("_FillValue", -999.0f32).unwrap();
        v.put_attribute("units", "K").unwrap();
        let data: Vec<f32> = (0..times.len() * nlat * nlon)
            .map(|k| value(k / (nlat * nlon), k % (nlat * nlon)))
            .collect();
        v.put_values(&data, ..).unwrap();
    });
    path.to_path_buf()
}

#[test]
fn missing_file() {
    let out = inspect(&["/nonexistent/dir/era5.nc"]);
    assert_bad_input(&out, &["/nonexistent/dir/era5.nc", "no such file"]);
}

#[test]
fn file_that_is_not_netcdf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.nc");
    std::fs::write(&p, "this is a text file, not NetCDF\n").unwrap();
    assert_bad_input(&inspect(&[s(&p)]), &["notes.nc", "not a NetCDF file"]);
}

#[test]
fn truncated_netcdf_files() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["netcdf4", "classic"] {
        let full = generate(
            dir.path(),
            &format!("full-{format}.nc"),
            &["--steps", "4", "--format", format],
        );
        let bytes = std::fs::read(&full).unwrap();
        // A third of the file, and the file short by less than its header's length (the
        // missing tail once read as zeros).
        for keep in [bytes.len() / 3, bytes.len() - 8] {
            let cut = dir.path().join(format!("cut-{format}-{keep}.nc"));
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            let out = inspect(&[s(&cut)]);
            assert_bad_input(&out, &[&format!("cut-{format}-{keep}.nc")]);
            let line = String::from_utf8_lossy(&out.stderr);
            assert!(
                line.contains("truncated") || line.contains("cannot read"),
                "{line}"
            );
        }
    }
}

#[test]
fn variable_not_in_the_file() {
    let p = storm("Pstorm.cdf");
    let out = inspect(&["--var", &format!("{p}:slp")]);
    assert_bad_input(&out, &["Pstorm.cdf", "no variable 'slp'", "p"]);
}

#[test]
fn no_recognizable_latitude_longitude() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("xy.nc");
    write_nc(&p, |f| {
        f.add_dimension("time", 4).unwrap();
        f.add_dimension("y", 3).unwrap();
        f.add_dimension("x", 5).unwrap();
        f.add_variable::<f32>("field", &["time", "y", "x"])
            .unwrap()
            .put_values(&[1.0f32; 60], ..)
            .unwrap();
    });
    assert_bad_input(
        &inspect(&["--var", &format!("{}:field", s(&p))]),
        &["xy.nc", "no recognizable latitude/longitude"],
    );
    assert_bad_input(&inspect(&[s(&p)]), &["xy.nc", "latitude/longitude"]);
}

#[test]
fn unstructured_grid() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("icon.nc");
    write_nc(&p, |f| {
        f.add_dimension("time", 3).unwrap();
        f.add_dimension("ncells", 20).unwrap();
        let mut t = f.add_variable::<f64>("time", &["time"]).unwrap();
        t.put_attribute("units", "hours since 2000-01-01").unwrap();
        t.put_values(&[0.0, 6.0, 12.0], ..).unwrap();
        let mut v = f.add_variable::<f64>("clat", &["ncells"]).unwrap();
        v.put_attribute("units", "radian").unwrap();
        v.put_attribute("standard_name", "latitude").unwrap();
        v.put_values(&[0.1f64; 20], ..).unwrap();
        f.add_variable::<f32>("temp", &["time", "ncells"])
            .unwrap()
            .put_values(&[280.0f32; 60], ..)
            .unwrap();
    });
    let out = inspect(&["--var", &format!("{}:temp", s(&p))]);
    assert_bad_input(&out, &["icon.nc", "unstructured grid", "ncells"]);
}

#[test]
fn grids_that_do_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let a = generate(dir.path(), "a.nc", &["--resolution", "5", "--steps", "4"]);
    let b = generate(dir.path(), "b.nc", &["--resolution", "2.5", "--steps", "4"]);
    let out = inspect(&[
        "--var",
        &format!("{}:z", s(&a)),
        "--var",
        &format!("{}:u", s(&b)),
    ]);
    assert_bad_input(&out, &["a.nc", "b.nc", "grids do not match"]);
}

#[test]
fn time_axes_that_do_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let a = generate(dir.path(), "a.nc", &["--steps", "4"]);
    let b = generate(dir.path(), "b.nc", &["--steps", "4", "--step-hours", "3"]);
    let out = inspect(&[
        "--var",
        &format!("{}:z", s(&a)),
        "--var",
        &format!("{}:u", s(&b)),
    ]);
    assert_bad_input(&out, &["a.nc", "b.nc", "time axes do not match"]);
}

#[test]
fn clashing_names_need_renaming() {
    let out = inspect(&[&storm("Ustorm.cdf"), &storm("U500storm.cdf")]);
    assert_bad_input(&out, &["Ustorm.cdf", "U500storm.cdf", "'u'", "rename"]);
}

#[test]
fn fewer_time_steps_than_one_window() {
    let dir = tempfile::tempdir().unwrap();
    let p = generate(dir.path(), "short.nc", &["--steps", "3"]);
    let window = ["--input-steps", "2", "--lead-steps", "4"];
    // inspect-data still describes the file, then says why no sample fits.
    let out = inspect(&[&[s(&p)][..], &window[..]].concat());
    succeeded(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("needs 9 time steps") && text.contains("has 3"),
        "{text}"
    );
    // Training refuses it.
    let run = dir.path().join("run");
    let out = train_tiny(&p, &run, &window);
    assert_bad_input(&out, &["short.nc", "needs 9 time steps", "has 3"]);
}

#[test]
fn all_missing_variable() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_cf(
        &dir.path().join("empty.nc"),
        &[0.0, 6.0, 12.0, 18.0],
        4,
        5,
        |_, _| -999.0,
    );
    assert_bad_input(&inspect(&[s(&p)]), &["empty.nc", "'x'", "no valid value"]);
}

#[test]
fn time_axis_not_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_cf(
        &dir.path().join("shuffled.nc"),
        &[0.0, 12.0, 6.0, 18.0],
        4,
        5,
        |t, k| (t * 100 + k) as f32,
    );
    assert_bad_input(&inspect(&[s(&p)]), &["shuffled.nc", "not monotonic"]);
}

#[test]
fn region_outside_the_grid() {
    let out = inspect(&[&storm("Pstorm.cdf"), "--region", "-30,-10,0,20"]);
    assert_bad_input(&out, &["Pstorm.cdf", "region"]);
}

#[test]
fn multi_level_variable_needs_levels() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plev.nc");
    write_nc(&p, |f| {
        f.add_dimension("time", 3).unwrap();
        f.add_dimension("level", 2).unwrap();
        f.add_dimension("latitude", 3).unwrap();
        f.add_dimension("longitude", 4).unwrap();
        let mut t = f.add_variable::<i32>("time", &["time"]).unwrap();
        t.put_attribute("units", "hours since 1900-01-01 00:00:00.0")
            .unwrap();
        t.put_attribute("calendar", "gregorian").unwrap();
        t.put_values(&[876_576i32, 876_582, 876_588], ..).unwrap();
        let mut v = f.add_variable::<i32>("level", &["level"]).unwrap();
        v.put_attribute("units", "millibars").unwrap();
        v.put_values(&[500i32, 850], ..).unwrap();
        let mut v = f.add_variable::<f32>("latitude", &["latitude"]).unwrap();
        v.put_attribute("units", "degrees_north").unwrap();
        v.put_values(&[10.0f32, 0.0, -10.0], ..).unwrap();
        let mut v = f.add_variable::<f32>("longitude", &["longitude"]).unwrap();
        v.put_attribute("units", "degrees_east").unwrap();
        v.put_values(&[0.0f32, 90.0, 180.0, 270.0], ..).unwrap();
        let data: Vec<i16> = (0..3 * 2 * 3 * 4).map(|k| k as i16).collect();
        let mut v = f
            .add_variable::<i16>("t", &["time", "level", "latitude", "longitude"])
            .unwrap();
        v.put_attribute("scale_factor", 0.5f64).unwrap();
        v.put_attribute("add_offset", 250.0f64).unwrap();
        v.put_values(&data, ..).unwrap();
    });
    assert_bad_input(&inspect(&[s(&p)]), &["plev.nc", "2 levels", "--levels"]);
    // With --levels it loads: one channel per level, scale/offset applied, grid global.
    let r = inspect_json(&[
        s(&p).into(),
        "--levels".into(),
        "850,500".into(),
        "--input-steps".into(),
        "1".into(),
    ]);
    let names: Vec<&str> = r["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t850", "t500"]);
    assert_eq!(r["grid"]["global"], true);
    assert_eq!(r["time"]["start"], "2000-01-01 00:00");
    // Level 500 is the first of two levels: raw values k with k%24 in 0..12, decoded 250 + k/2.
    assert!(r["variables"][1]["min"].as_f64().unwrap() >= 250.0);
    assert_bad_input(
        &inspect(&[s(&p), "--levels", "700"]),
        &["plev.nc", "no level 700"],
    );
}

#[test]
fn cuda_device_on_a_cpu_build() {
    if candle_core::utils::cuda_is_available() {
        return; // a CUDA build: this case is for CPU-only binaries
    }
    let out = meshcast()
        .args([
            "-q",
            "--device",
            "cuda",
            "describe-graph",
            "--global-grid",
            "5",
        ])
        .output()
        .unwrap();
    assert_bad_input(&out, &["cuda", "without the `cuda` feature"]);
    let out = meshcast()
        .args([
            "-q",
            "--device",
            "tpu",
            "describe-graph",
            "--global-grid",
            "5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The CUDA options on the CPU: one line naming them, as flags or from the environment
/// (`1`, `true`, `on` set them; `0` does not).
#[test]
fn cuda_options_on_the_cpu() {
    let describe = [
        "-q",
        "describe-graph",
        "--global-grid",
        "10",
        "--no-graph-cache",
    ];
    let out = meshcast()
        .args(["--tf32", "--cuda-fused-ops"])
        .args(describe)
        .output()
        .unwrap();
    assert_bad_input(&out, &["--tf32 and --cuda-fused-ops need --device cuda"]);
    for on in ["1", "true", "on"] {
        let out = meshcast()
            .env("MESHCAST_CUDA_FUSED_OPS", on)
            .args(describe)
            .output()
            .unwrap();
        assert_bad_input(&out, &["--cuda-fused-ops needs --device cuda"]);
    }
    let off = meshcast()
        .env("MESHCAST_TF32", "0")
        .args(describe)
        .output()
        .unwrap();
    succeeded(&off);
}
