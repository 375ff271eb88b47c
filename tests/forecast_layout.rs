//! `forecast` writes the WeatherBench2 layout in the input's own conventions: coordinate
//! names, latitude order, longitude range, value types, levels and attributes, so that
//! `forecast - truth` in xarray keeps the input's shape. Checked with the netCDF library
//! on an ERA5-style file (latitude/longitude, 90..-90, 0..360, pressure levels), a
//! region across the prime meridian, and storm1996; then with xarray itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use common::*;

const LEVELS: [i32; 3] = [1000, 850, 500];
const NLAT: usize = 19;
const NLON: usize = 36;

/// An ERA5/WeatherBench2-style file: `latitude` 90..-90 and `longitude` 0..350 (10 deg,
/// float32), `level` (int32 hPa), 6-hourly int64 time, `temperature(time, level,
/// latitude, longitude)` and `mean_sea_level_pressure(time, latitude, longitude)`
/// made of waves that travel, so a model has something to learn.
fn write_era5_style(path: &Path, steps: usize) {
    no_hdf5_locking();
    let mut f = netcdf::create(path).unwrap();
    f.add_dimension("time", steps).unwrap();
    f.add_dimension("level", LEVELS.len()).unwrap();
    f.add_dimension("latitude", NLAT).unwrap();
    f.add_dimension("longitude", NLON).unwrap();
    let mut v = f.add_variable::<i64>("time", &["time"]).unwrap();
    v.put_attribute("units", "hours since 2000-01-01").unwrap();
    v.put_attribute("calendar", "proleptic_gregorian").unwrap();
    let hours: Vec<i64> = (0..steps as i64).map(|k| 6 * k).collect();
    v.put_values(&hours, ..).unwrap();
    let mut v = f.add_variable::<i32>("level", &["level"]).unwrap();
    v.put_attribute("units", "millibars").unwrap();
    v.put_attribute("long_name", "pressure_level").unwrap();
    v.put_values(&LEVELS, ..).unwrap();
    let mut v = f.add_variable::<f32>("latitude", &["latitude"]).unwrap();
    v.put_attribute("units", "degrees_north").unwrap();
    v.put_attribute("long_name", "latitude").unwrap();
    v.put_values(&latitudes(), ..).unwrap();
    let mut v = f.add_variable::<f32>("longitude", &["longitude"]).unwrap();
    v.put_attribute("units", "degrees_east").unwrap();
    v.put_values(&longitudes(), ..).unwrap();
    let dims = ["time", "level", "latitude", "longitude"];
    let mut v = f.add_variable::<f32>("temperature", &dims).unwrap();
    v.put_attribute("units", "K").unwrap();
    v.put_attribute("standard_name", "air_temperature").unwrap();
    v.put_attribute("long_name", "Temperature").unwrap();
    v.put_values(&field(steps, LEVELS.len(), 250.0, 8.0), ..)
        .unwrap();
    let dims = ["time", "latitude", "longitude"];
    let mut v = f
        .add_variable::<f32>("mean_sea_level_pressure", &dims)
        .unwrap();
    v.put_attribute("units", "Pa").unwrap();
    v.put_values(&field(steps, 1, 101_000.0, 800.0), ..)
        .unwrap();
}

fn latitudes() -> Vec<f32> {
    (0..NLAT).map(|i| 90.0 - 10.0 * i as f32).collect()
}

fn longitudes() -> Vec<f32> {
    (0..NLON).map(|j| 10.0 * j as f32).collect()
}

/// `base + amplitude * (cos(lat) sin(lon - 0.3 t + level) + 0.5 cos(2 lon + 0.2 t))`.
fn field(steps: usize, levels: usize, base: f32, amplitude: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(steps * levels * NLAT * NLON);
    for t in 0..steps {
        for l in 0..levels {
            for lat in latitudes() {
                for lon in longitudes() {
                    let (la, lo, t) = (lat.to_radians(), lon.to_radians(), t as f32);
                    let wave = la.cos() * (lo - 0.3 * t + l as f32).sin()
                        + 0.5 * (2.0 * lo + 0.2 * t).cos();
                    out.push(base - 10.0 * l as f32 + amplitude * wave);
                }
            }
        }
    }
    out
}

fn text(file: &netcdf::File, var: &str, attr: &str) -> String {
    match file.variable(var).unwrap().attribute_value(attr) {
        Some(Ok(netcdf::AttributeValue::Str(s))) => s,
        other => panic!("{var}:{attr} is {other:?}"),
    }
}

fn f32s(file: &netcdf::File, var: &str) -> Vec<f32> {
    file.variable(var)
        .unwrap()
        .get_values::<f32, _>(..)
        .unwrap()
}

/// An ERA5-style file of `steps` steps in `dir` and a run trained briefly on its
/// temperature at 850 and 500 hPa and its pressure: (data, run directory).
fn era5_run(dir: &Path, steps: usize) -> (PathBuf, PathBuf) {
    let data = dir.join("era5.nc");
    write_era5_style(&data, steps);
    let args = [
        data.display().to_string(),
        "--levels".into(),
        "850,500".into(),
    ];
    let run = train_briefly(dir, "run", &args);
    (data, run)
}

#[test]
fn an_era5_style_forecast_keeps_names_order_range_levels_and_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = era5_run(dir.path(), 24);
    let fc = dir.path().join("fc.nc");
    let inits = "2000-01-03 00:00..2000-01-03 12:00";
    forecast_last(
        &run,
        &fc,
        &["--init-times", inits, "--steps", "2", "--include-initial"],
    );

    let (f, input) = (open_nc(&fc), open_nc(&data));
    assert_eq!(
        dim_names(&f, "temperature"),
        [
            "time",
            "prediction_timedelta",
            "level",
            "latitude",
            "longitude"
        ]
    );
    assert_eq!(
        dim_names(&f, "mean_sea_level_pressure"),
        ["time", "prediction_timedelta", "latitude", "longitude"]
    );
    // Descending latitudes, 0..360 longitudes and float32, exactly as in the input.
    assert_eq!(f32s(&f, "latitude"), latitudes());
    assert_eq!(f32s(&f, "longitude"), longitudes());
    let level = f.variable("level").unwrap();
    assert_eq!(level.get_values::<i32, _>(..).unwrap(), [850, 500]);
    assert_eq!(text(&f, "level", "units"), "millibars");
    assert_eq!(text(&f, "latitude", "axis"), "Y");
    assert_eq!(text(&f, "longitude", "axis"), "X");
    assert_eq!(text(&f, "temperature", "standard_name"), "air_temperature");
    assert_eq!(text(&f, "temperature", "long_name"), "Temperature");
    assert_eq!(text(&f, "temperature", "units"), "K");
    // Three initialisations 6 h apart; leads 0, 6 and 12 h; valid = init + lead.
    let time = f.variable("time").unwrap();
    assert_eq!(time.get_values::<f64, _>(..).unwrap(), [0.0, 6.0, 12.0]);
    assert_eq!(text(&f, "time", "units"), "hours since 2000-01-03 00:00:00");
    let lead = f.variable("prediction_timedelta").unwrap();
    assert_eq!(lead.get_values::<i64, _>(..).unwrap(), [0, 6, 12]);
    let valid = f.variable("valid_time").unwrap();
    assert_eq!(
        valid.get_values::<f64, _>(..).unwrap()[3..6],
        [6.0, 12.0, 18.0]
    );

    // Lead 0 is the input at the initial time, cell for cell on the native grid: every
    // value landed where the input has it. 2000-01-03 06:00 is time index 9.
    let cells = NLAT * NLON;
    let t_in = input.variable("temperature").unwrap();
    let t_fc = f.variable("temperature").unwrap();
    for (l_fc, l_in) in [(0, 1), (1, 2)] {
        let want: Vec<f32> = t_in
            .get_values(([9, l_in, 0, 0], [1, 1, NLAT, NLON]))
            .unwrap();
        let got: Vec<f32> = t_fc
            .get_values(([1, 0, l_fc, 0, 0], [1, 1, 1, NLAT, NLON]))
            .unwrap();
        assert_eq!(got, want, "level {}", LEVELS[l_in]);
        // Lead 12 h is a forecast of the same field: near the truth, not a copy of it.
        let truth: Vec<f32> = t_in
            .get_values(([11, l_in, 0, 0], [1, 1, NLAT, NLON]))
            .unwrap();
        let fc12: Vec<f32> = t_fc
            .get_values(([1, 2, l_fc, 0, 0], [1, 1, 1, NLAT, NLON]))
            .unwrap();
        let err = (0..cells).map(|c| (fc12[c] - truth[c]).abs()).sum::<f32>() / cells as f32;
        assert!(err > 0.0 && err < 30.0, "mean error {err} K");
    }
    // Read back as data, a forecast is refused with the reason, not taken for levels.
    let o = meshcast()
        .args(["-q", "inspect-data"])
        .arg(&fc)
        .output()
        .unwrap();
    assert_bad_input(&o, &["forecast with lead times on 'prediction_timedelta'"]);
}

/// A patch-parallel rank's band of rows reads the right rows of a file stored north to
/// south, with levels.
#[test]
fn a_latitude_band_of_a_north_to_south_file_reads_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("era5.nc");
    write_era5_style(&path, 6);
    let whole = meshcast::data::Dataset::open(&meshcast::data::DataSpec {
        files: vec![path],
        levels: Some("all".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    assert!(whole.num_channels() > 2, "levels are channels");
    for rows in [0..5, 7..12, 14..NLAT] {
        assert_band_reads_rows(&whole, &whole.latitude_band(rows.clone()), rows);
    }
}

#[test]
fn a_region_across_the_prime_meridian_keeps_the_files_longitudes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("era5.nc");
    write_era5_style(&data, 16);
    let args = [
        "--var".to_string(),
        format!("{}:mean_sea_level_pressure=msl", data.display()),
        "--region=-40,40,330,30".into(),
    ];
    let run = train_briefly(dir.path(), "run", &args);
    let fc = dir.path().join("fc.nc");
    forecast_last(
        &run,
        &fc,
        &[
            "--init-times",
            "2000-01-02 06:00",
            "--steps",
            "1",
            "--include-initial",
        ],
    );

    let (f, input) = (open_nc(&fc), open_nc(&data));
    assert_eq!(
        dim_names(&f, "msl"),
        ["time", "prediction_timedelta", "latitude", "longitude"]
    );
    // The file's order (0..30, then 330..350) and values; latitudes still descending.
    assert_eq!(f32s(&f, "longitude"), [0., 10., 20., 30., 330., 340., 350.]);
    assert_eq!(
        f32s(&f, "latitude"),
        [40., 30., 20., 10., 0., -10., -20., -30., -40.]
    );
    let all: Vec<f32> = input
        .variable("mean_sea_level_pressure")
        .unwrap()
        .get_values(([5, 0, 0], [1, NLAT, NLON]))
        .unwrap();
    let got = f
        .variable("msl")
        .unwrap()
        .get_values::<f32, _>(([0, 0, 0, 0], [1, 1, 9, 7]))
        .unwrap();
    let lon_index = [0, 1, 2, 3, 33, 34, 35];
    for (i, lat_index) in (5..=13).enumerate() {
        for (j, &lon) in lon_index.iter().enumerate() {
            assert_eq!(got[i * 7 + j], all[lat_index * NLON + lon], "cell {i},{j}");
        }
    }
    xarray_shape_check(&fc, "msl", &data, "mean_sea_level_pressure", (9, 7));
}

#[test]
fn a_storm1996_forecast_has_the_inputs_grid_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_briefly(dir.path(), "run", &storm_args());
    let fc = dir.path().join("fc.nc");
    forecast_last(
        &run,
        &fc,
        &[
            "--init-times",
            "1996-01-06 00:00,1996-01-07 00:00",
            "--steps",
            "2",
            "--include-initial",
        ],
    );
    let (f, input) = (open_nc(&fc), open_nc(Path::new(&storm("Pstorm.cdf"))));
    assert_eq!(
        dim_names(&f, "p"),
        ["time", "prediction_timedelta", "lat", "lon"]
    );
    assert_eq!(f32s(&f, "lat"), f32s(&input, "lat"));
    assert_eq!(f32s(&f, "lon"), f32s(&input, "lon"));
    assert_eq!(dim_names(&f, "u500"), dim_names(&f, "p"));
    // Lead 0 of the second initialisation is the input where it is valid and the fill
    // value where the input is masked (1996-01-07 00:00 is step 8 of the file).
    let want: Vec<f32> = input
        .variable("p")
        .unwrap()
        .get_values(([8, 0, 0], [1, 33, 36]))
        .unwrap();
    let got: Vec<f32> = f
        .variable("p")
        .unwrap()
        .get_values(([1, 0, 0, 0], [1, 1, 33, 36]))
        .unwrap();
    assert!(want.contains(&-9999.0), "the storm file has masked cells");
    assert_eq!(got, want);
    xarray_shape_check(&fc, "p", Path::new(&storm("Pstorm.cdf")), "p", (33, 36));
}

/// A Python with xarray and netCDF4.
fn xarray_python() -> Option<PathBuf> {
    python_with("xarray, netCDF4")
}

/// In xarray: `forecast - truth` keeps the input's shape, and the latitude-weighted RMSE
/// computed there on the native coordinates equals what `eval` reports for the same
/// initial times; eval's NetCDF scores (WeatherBench2 layout) hold its JSON records.
#[test]
fn in_xarray_forecast_minus_truth_has_the_inputs_shape_and_evals_error_and_scores() {
    let Some(python) = xarray_python() else {
        eprintln!("note: no Python with xarray and netCDF4; the xarray check is skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = era5_run(dir.path(), 40);
    let scores = dir.path().join("scores.nc");
    let report = eval_last(&run, &["-o", scores.to_str().unwrap()]);
    let eval = dir.path().join("eval.json");
    std::fs::write(&eval, report.to_string()).unwrap();
    let inits: Vec<&str> = report["initial_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let fc = dir.path().join("fc.nc");
    forecast_last(
        &run,
        &fc,
        &["--init-times", &inits.join(","), "--steps", "2"],
    );
    run_xarray_check(
        &python,
        &[&fc, &data, &eval, &scores].map(|p| p.as_os_str()),
    );
}

/// Runs tests/forecast_xarray_check.py with `args` and requires it to pass.
fn run_xarray_check(python: &Path, args: &[&std::ffi::OsStr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/forecast_xarray_check.py");
    let o = StdCommand::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "xarray check failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
}

/// In xarray, forecast field `var` minus the truth's `truth_var` aligns on the native
/// coordinates to `grid` (when a Python with xarray is at hand; CI always has one).
fn xarray_shape_check(fc: &Path, var: &str, truth: &Path, truth_var: &str, grid: (usize, usize)) {
    let Some(python) = xarray_python() else {
        eprintln!("note: no Python with xarray and netCDF4; the xarray check is skipped");
        return;
    };
    let (nlat, nlon) = (grid.0.to_string(), grid.1.to_string());
    let args = [
        "shape".as_ref(),
        fc.as_os_str(),
        var.as_ref(),
        truth.as_os_str(),
    ];
    let rest = [truth_var, &nlat, &nlon].map(std::ffi::OsStr::new);
    run_xarray_check(&python, &[&args[..], &rest[..]].concat());
}
