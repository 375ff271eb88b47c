//! `generate-data` then `inspect-data` round trips, and properties of the generated
//! dynamics (smooth fields, a wave that travels at the speed the equations give).

mod common;

use std::sync::Arc;

use common::*;
use meshcast::data::{DataSpec, Dataset, StepReader};

#[test]
fn round_trip_at_5_degrees() {
    let dir = tempfile::tempdir().unwrap();
    let path = generate(dir.path(), "g5.nc", &["--resolution", "5", "--steps", "12"]);
    let r = inspect_json(&[path.display().to_string()]);
    assert_eq!(r["grid"]["nlat"], 36);
    assert_eq!(r["grid"]["nlon"], 72);
    assert_eq!(r["grid"]["global"], true);
    assert_eq!(r["time"]["steps"], 12);
    assert_eq!(r["time"]["step_seconds"], 21600);
    assert_eq!(r["time"]["start"], "2000-01-01 00:00");
    let names: Vec<&str> = r["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["z", "u", "v", "t2m", "msl"]);
    for v in r["variables"].as_array().unwrap() {
        assert_eq!(v["fill_fraction"], 0.0);
        assert!(v["units"].is_string());
    }
}

#[test]
fn round_trip_at_1_degree_packed_classic() {
    let dir = tempfile::tempdir().unwrap();
    let plain = generate(dir.path(), "g1.nc", &["--resolution", "1", "--steps", "3"]);
    let packed = generate(
        dir.path(),
        "g1p.nc",
        &[
            "--resolution",
            "1",
            "--steps",
            "3",
            "--pack",
            "--format",
            "classic",
        ],
    );
    let a = inspect_json(&[plain.display().to_string()]);
    let b = inspect_json(&[packed.display().to_string()]);
    assert_eq!(a["grid"]["nlat"], 180);
    assert_eq!(a["grid"]["nlon"], 360);
    for (va, vb) in a["variables"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["variables"].as_array().unwrap())
    {
        // int16 packing with scale_factor/add_offset: means agree to the quantisation step.
        let (ma, mb) = (va["mean"].as_f64().unwrap(), vb["mean"].as_f64().unwrap());
        let spread = va["max"].as_f64().unwrap() - va["min"].as_f64().unwrap();
        assert!(
            (ma - mb).abs() < 1e-3 * spread.max(1.0),
            "{}: {ma} vs {mb}",
            va["name"]
        );
    }
}

#[test]
fn same_seed_same_file_other_seed_other_wave() {
    let dir = tempfile::tempdir().unwrap();
    let a = generate(dir.path(), "a.nc", &["--steps", "2", "--seed", "7"]);
    let b = generate(dir.path(), "b.nc", &["--steps", "2", "--seed", "7"]);
    let c = generate(dir.path(), "c.nc", &["--steps", "2", "--seed", "8"]);
    let read = |p: &std::path::Path| {
        let ds = Dataset::open(&DataSpec {
            files: vec![p.to_path_buf()],
            ..Default::default()
        })
        .unwrap();
        StepReader::default().read(&ds, 1).unwrap().values
    };
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
}

/// Phase (radians) of zonal wavenumber `k` of `row`, sampled at longitudes `lon_deg`.
fn phase(row: &[f32], lon_deg: &[f64], k: f64) -> f64 {
    let (mut re, mut im) = (0.0, 0.0);
    for (x, lo) in row.iter().zip(lon_deg) {
        let a = k * lo.to_radians();
        re += *x as f64 * a.cos();
        im -= *x as f64 * a.sin();
    }
    im.atan2(re)
}

#[test]
fn fields_are_smooth_and_the_wave_travels_east_at_the_rossby_haurwitz_speed() {
    let dir = tempfile::tempdir().unwrap();
    let path = generate(
        dir.path(),
        "g.nc",
        &["--resolution", "2.5", "--steps", "9", "--seed", "3"],
    );
    let ds = Arc::new(
        Dataset::open(&DataSpec {
            files: vec![path],
            ..Default::default()
        })
        .unwrap(),
    );
    let mut reader = StepReader::default();
    let (nlat, nlon) = (ds.grid.nlat(), ds.grid.nlon());
    let z = ds.channel_names().iter().position(|n| n == "z").unwrap();
    let row_at = |state: &meshcast::data::State, lat: f64| -> Vec<f32> {
        let i = ds
            .grid
            .lat
            .iter()
            .position(|&l| (l - lat).abs() < 1e-6)
            .unwrap();
        state.values[z * nlat * nlon + i * nlon..z * nlat * nlon + (i + 1) * nlon].to_vec()
    };
    let s0 = reader.read(&ds, 0).unwrap();
    let s8 = reader.read(&ds, 8).unwrap();

    // Smooth: neighbouring cells differ by a small part of the field's range.
    let field = &s0.values[z * nlat * nlon..(z + 1) * nlat * nlon];
    let range = field.iter().cloned().fold(f32::MIN, f32::max)
        - field.iter().cloned().fold(f32::MAX, f32::min);
    for i in 0..nlat {
        for j in 0..nlon {
            let here = field[i * nlon + j];
            let east = field[i * nlon + (j + 1) % nlon];
            assert!((east - here).abs() < 0.1 * range, "jump at ({i},{j})");
            if i + 1 < nlat {
                assert!(
                    (field[(i + 1) * nlon + j] - here).abs() < 0.1 * range,
                    "jump at ({i},{j})"
                );
            }
        }
    }

    // The pattern moves: 48 h later the wavenumber-4 phase at 46.25N has shifted east by
    // nu * 48 h, nu = (R(3+R)w - 2 Omega) / ((1+R)(2+R)) (Williamson et al. 1992).
    let nu = (4.0 * 7.0 * 7.848e-6 - 2.0 * 7.292e-5) / 30.0;
    let expected_shift = nu * 48.0 * 3600.0; // radians of longitude
    let (p0, p8) = (
        phase(&row_at(&s0, 46.25), &ds.grid.lon, 4.0),
        phase(&row_at(&s8, 46.25), &ds.grid.lon, 4.0),
    );
    let moved = -(p8 - p0) / 4.0; // a pattern cos(4(lon - s)) has phase -4s
    let moved = (moved + std::f64::consts::PI / 4.0).rem_euclid(std::f64::consts::PI / 2.0)
        - std::f64::consts::PI / 4.0;
    assert!(
        (moved - expected_shift).abs() < 0.02,
        "wave moved {:.2} deg, theory {:.2} deg",
        moved.to_degrees(),
        expected_shift.to_degrees()
    );
    assert!(moved > 0.0, "eastward");
}
