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
    // geopotential and temperature on 3 levels, 2m_temperature, mean_sea_level_pressure;
    // the static land_sea_mask (no time dimension) is left out, as WeatherBench2's
    // stores need.
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
    let dims = dim_names(&f, "temperature");
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

    let v2 = copy_store("wb2-v2.zarr", &dir.path().join("rank"));
    let attrs = r#"{"_ARRAY_DIMENSIONS": ["time", "latitude", "longitude"]}"#;
    std::fs::write(v2.join("temperature/.zattrs"), attrs).unwrap();
    assert_bad_input(
        &inspect(&v2),
        &["'temperature' names 3 dimensions", "shape of 4"],
    );

    let empty = dir.path().join("empty.zarr");
    std::fs::create_dir(&empty).unwrap();
    assert_bad_input(
        &inspect(&empty),
        &["empty.zarr", "neither a NetCDF file nor a Zarr store"],
    );

    // A store of static fields only has nothing to forecast.
    let fixed = copy_store("wb2-v2.zarr", &dir.path().join("static"));
    for name in [
        "geopotential",
        "temperature",
        "2m_temperature",
        "mean_sea_level_pressure",
    ] {
        std::fs::remove_dir_all(fixed.join(name)).unwrap();
    }
    assert_bad_input(&inspect(&fixed), &["only static fields", "land_sea_mask"]);

    // A chunk that cannot be decoded is named when it is read.
    let v2 = copy_store("wb2-v2.zarr", &dir.path().join("chunk"));
    std::fs::write(v2.join("temperature/3.0.0.0"), b"not blosc").unwrap();
    let o = inspect(&v2);
    assert_bad_input(&o, &["wb2-v2.zarr", "temperature"]);
}

const NT: usize = 6;
const NLAT: usize = 7;
const NLON: usize = 12;

/// int16 2 m temperature packed as ERA5 packs it (scale 0.01 K, offset 273.15 K), with
/// `-32768` marking a missing corner, and its coordinates.
fn packed_field() -> (Vec<i16>, Vec<i64>, Vec<f64>, Vec<f64>) {
    let lat: Vec<f64> = (0..NLAT).map(|i| -60.0 + 20.0 * i as f64).collect();
    let lon: Vec<f64> = (0..NLON).map(|j| 30.0 * j as f64).collect();
    let mut t2m = Vec::with_capacity(NT * NLAT * NLON);
    for t in 0..NT {
        for (i, la) in lat.iter().enumerate() {
            for (j, lo) in lon.iter().enumerate() {
                let kelvin = 280.0
                    + 20.0 * la.to_radians().cos()
                    + 3.0 * (lo.to_radians() - 0.4 * t as f64).sin();
                let packed = ((kelvin - 273.15) / 0.01).round() as i16;
                t2m.push(if i == 0 && j < 3 { -32768 } else { packed });
            }
        }
    }
    (t2m, (0..NT as i64).map(|k| 6 * k).collect(), lat, lon)
}

/// The same field as a NetCDF file, packed the same way.
fn write_packed_netcdf(path: &Path) {
    let (t2m, time, lat, lon) = packed_field();
    no_hdf5_locking();
    let mut f = netcdf::create(path).unwrap();
    for (name, len) in [("time", NT), ("lat", NLAT), ("lon", NLON)] {
        f.add_dimension(name, len).unwrap();
    }
    let mut v = f.add_variable::<i64>("time", &["time"]).unwrap();
    v.put_attribute("units", "hours since 2001-01-01").unwrap();
    v.put_values(&time, ..).unwrap();
    put_lat_lon(&mut f, &lat, &lon);
    let mut v = f
        .add_variable::<i16>("t2m", &["time", "lat", "lon"])
        .unwrap();
    v.put_attribute("_FillValue", -32768i16).unwrap();
    v.put_attribute("scale_factor", 0.01).unwrap();
    v.put_attribute("add_offset", 273.15).unwrap();
    v.put_attribute("units", "K").unwrap();
    v.put_values(&t2m, ..).unwrap();
}

/// The same field as a Zarr store written by the zarrs crate: v2 (zstd, `_FillValue` as
/// the array's fill value, dimensions in `_ARRAY_DIMENSIONS`) or v3 (gzip, `_FillValue`
/// an attribute), two time steps per chunk.
fn write_packed_zarr(path: &Path, v2: bool) {
    use std::sync::Arc;
    use zarrs::array::Array;
    use zarrs::metadata::ArrayMetadata;
    use zarrs::storage::ReadableWritableListableStorage;

    let (t2m, time, lat, lon) = packed_field();
    std::fs::create_dir_all(path).unwrap();
    let root = match v2 {
        true => (".zgroup", r#"{"zarr_format": 2}"#),
        false => (
            "zarr.json",
            r#"{"zarr_format": 3, "node_type": "group", "attributes": {}}"#,
        ),
    };
    std::fs::write(path.join(root.0), root.1).unwrap();
    let store: ReadableWritableListableStorage =
        Arc::new(zarrs::filesystem::FilesystemStore::new(path).unwrap());
    let meta =
        |name: &str, dims: &[&str], shape: &[usize], chunks: &[usize], dtype: &str, attrs| {
            let dtype_v2 = match dtype {
                "int16" => "<i2",
                "int64" => "<i8",
                _ => "<f8",
            };
            let json = match v2 {
                true => {
                    let mut attrs: serde_json::Value = attrs;
                    attrs["_ARRAY_DIMENSIONS"] = serde_json::json!(dims);
                    let fill = if dtype == "int16" {
                        serde_json::json!(-32768)
                    } else {
                        serde_json::Value::Null
                    };
                    serde_json::json!({"zarr_format": 2, "shape": shape, "chunks": chunks,
                    "dtype": dtype_v2, "fill_value": fill, "order": "C", "filters": null,
                    "compressor": {"id": "zstd", "level": 3}, "attributes": attrs})
                }
                false => serde_json::json!({"zarr_format": 3, "node_type": "array", "shape": shape,
                "data_type": dtype, "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "gzip", "configuration": {"level": 5}}],
                "dimension_names": dims, "attributes": attrs}),
            };
            let meta = ArrayMetadata::try_from(json.to_string().as_str()).unwrap();
            let array = Array::new_with_metadata(store.clone(), &format!("/{name}"), meta).unwrap();
            array.store_metadata().unwrap();
            array
        };
    let units = |u: &str| serde_json::json!({ "units": u });
    let whole = |shape: &[usize]| -> Vec<std::ops::Range<u64>> {
        shape.iter().map(|&n| 0..n as u64).collect()
    };
    let a = meta(
        "time",
        &["time"],
        &[NT],
        &[NT],
        "int64",
        units("hours since 2001-01-01"),
    );
    a.store_array_subset(&whole(&[NT]), &time).unwrap();
    for (name, values, u) in [
        ("lat", &lat, "degrees_north"),
        ("lon", &lon, "degrees_east"),
    ] {
        let n = values.len();
        let a = meta(name, &[name], &[n], &[n], "float64", units(u));
        a.store_array_subset(&whole(&[n]), values).unwrap();
    }
    let mut attrs = serde_json::json!({"units": "K", "scale_factor": 0.01, "add_offset": 273.15});
    if !v2 {
        attrs["_FillValue"] = serde_json::json!(-32768);
    }
    let shape = [NT, NLAT, NLON];
    let a = meta(
        "t2m",
        &["time", "lat", "lon"],
        &shape,
        &[2, NLAT, NLON],
        "int16",
        attrs,
    );
    a.store_array_subset(&whole(&shape), &t2m).unwrap();
}

#[test]
fn stores_written_by_zarrs_unpack_and_mask_as_netcdf_does() {
    let dir = tempfile::tempdir().unwrap();
    let nc = dir.path().join("packed.nc");
    write_packed_netcdf(&nc);
    let want = inspect_json(&[arg(&nc)]);
    let fill = want["variables"][0]["fill_fraction"].as_f64().unwrap();
    assert!(fill > 0.0 && fill < 1.0, "the corner is masked: {fill}");
    for v2 in [true, false] {
        let store = dir.path().join(if v2 {
            "packed-v2.zarr"
        } else {
            "packed-v3.zarr"
        });
        write_packed_zarr(&store, v2);
        let got = inspect_json(&[arg(&store)]);
        assert_eq!(got["grid"], want["grid"], "v2 {v2}");
        assert_eq!(got["time"], want["time"], "v2 {v2}");
        for key in ["fill_fraction", "min", "max", "mean", "std", "units"] {
            let (a, b) = (&got["variables"][0][key], &want["variables"][0][key]);
            assert_eq!(a, b, "v2 {v2}: {key}");
        }
    }
}
