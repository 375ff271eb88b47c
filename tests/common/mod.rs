//! Helpers shared by the integration tests: the real binary, the storm1996 files,
//! and generated data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The `meshcast` binary built by cargo for this test run.
///
/// HDF5 file locking is off: a test thread writing a netCDF-4 file can leak its
/// descriptor (and its lock) into a child spawned at that moment by another test, and
/// the child's lock then makes the file unreadable to this test's own `meshcast`.
pub fn meshcast() -> Command {
    let mut cmd = Command::cargo_bin("meshcast").expect("meshcast binary");
    cmd.env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("HDF5_USE_FILE_LOCKING", "FALSE");
    cmd
}

/// The storm1996 files: `$MESHCAST_STORM_DIR`, else `../shared/data/storm1996`.
/// Missing data is a test failure, not a skip: the README's test command fetches it.
pub fn storm_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("MESHCAST_STORM_DIR").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/storm1996")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-data/storm1996")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("Pstorm.cdf").exists())
        .expect("storm1996 data not found: run the README's test command (scripts/test.sh), which fetches it, or set MESHCAST_STORM_DIR")
}

pub fn storm(name: &str) -> String {
    storm_dir().join(name).display().to_string()
}

/// The six storm1996 files merged, with the clashing u/v renamed.
pub fn storm_args() -> Vec<String> {
    vec![
        storm("Pstorm.cdf"),
        storm("Tstorm.cdf"),
        "--var".into(),
        format!("{}:u=u10", storm("Ustorm.cdf")),
        "--var".into(),
        format!("{}:v=v10", storm("Vstorm.cdf")),
        "--var".into(),
        format!("{}:u=u500", storm("U500storm.cdf")),
        "--var".into(),
        format!("{}:v=v500", storm("V500storm.cdf")),
    ]
}

/// Runs `meshcast generate-data -o DIR/NAME ARGS...` and returns the path.
pub fn generate(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    meshcast()
        .arg("-q")
        .arg("generate-data")
        .arg("-o")
        .arg(&path)
        .args(args)
        .assert()
        .success();
    path
}

/// Fails the test with the command's stderr unless it exited successfully.
pub fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "meshcast failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs inspect-data --json and parses the report.
pub fn inspect_json(args: &[String]) -> serde_json::Value {
    let out = meshcast()
        .arg("-q")
        .arg("inspect-data")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    succeeded(&out);
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// Asserts a bad-input run: exit code 2, exactly one line on stderr starting with
/// `error:`, mentioning every `needles`, no panic or backtrace.
pub fn assert_bad_input(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

/// Flags for a tiny, fast model.
pub const TINY: &[&str] = &[
    "--latent-size",
    "8",
    "--num-gnn-layers",
    "1",
    "--mesh-level",
    "2",
    "--no-progress",
    "--no-graph-cache",
];

/// The model whose memory the planner's tests predict and measure.
pub const MEMORY_MODEL: &[&str] = &[
    "--latent-size",
    "32",
    "--num-gnn-layers",
    "4",
    "--batch-size",
    "2",
    "--no-graph-cache",
];

/// `train-model DATA --output-dir OUT`, quiet, with the tiny model and `args`.
pub fn train_tiny(data: &Path, out: &Path, args: &[&str]) -> Output {
    train_tiny_by(meshcast(), data, out, args)
}

/// `train_tiny` run by `cmd` (the binary, or a launcher of it such as mpirun).
pub fn train_tiny_by(mut cmd: Command, data: &Path, out: &Path, args: &[&str]) -> Output {
    cmd.args(["-q", "train-model"])
        .arg(data)
        .arg("--output-dir")
        .arg(out)
        .args(TINY)
        .args(args)
        .output()
        .unwrap()
}

/// A 10-degree, 24-step synthetic file in `dir`, and `dir/run` trained on it with the
/// tiny model for one epoch: (data, run directory).
pub fn small_run(dir: &Path) -> (PathBuf, PathBuf) {
    let data = generate(dir, "g.nc", &["--resolution", "10", "--steps", "24"]);
    let out = dir.join("run");
    succeeded(&train_tiny(&data, &out, &["--num-epochs", "1"]));
    (data, out)
}

/// `eval --checkpoint RUN --which last ARGS` (no graph cache), as it ran.
pub fn eval_last_output(run: &Path, args: &[&str]) -> Output {
    meshcast()
        .args(["-q", "eval", "--checkpoint"])
        .arg(run)
        .args(["--which", "last", "--no-graph-cache"])
        .args(args)
        .output()
        .unwrap()
}

/// `eval --checkpoint RUN --which last --rollout-steps 2 --json ARGS` (no graph cache),
/// parsed.
pub fn eval_last(run: &Path, args: &[&str]) -> serde_json::Value {
    let out = eval_last_output(
        run,
        &[&["--rollout-steps", "2", "--json"][..], args].concat(),
    );
    succeeded(&out);
    serde_json::from_slice(&out.stdout).expect("eval JSON")
}

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The sidecar of the run's `last` checkpoint.
pub fn last_meta(dir: &Path) -> serde_json::Value {
    read_json(&dir.join("checkpoints/last.json"))
}

/// Every record of the run's metrics.jsonl.
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first score record of an eval report whose fields equal every `(key, value)`.
pub fn score_record<'r>(
    report: &'r serde_json::Value,
    want: &[(&str, serde_json::Value)],
) -> Option<&'r serde_json::Value> {
    report["records"]
        .as_array()?
        .iter()
        .find(|r| want.iter().all(|(k, v)| &r[*k] == v))
}

/// Turns HDF5 file locking off in the test process as well, before it writes or opens a
/// netCDF-4 file itself: a child that another test spawns at that moment inherits the
/// descriptor, and with it a lock that would make the file unreadable here.
pub fn no_hdf5_locking() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE"));
}

/// Trains the tiny model on `data_args` for a few steps into `dir/name`.
pub fn train_briefly(dir: &Path, name: &str, data_args: &[String]) -> PathBuf {
    let out = dir.join(name);
    let o = meshcast()
        .args(["-q", "train-model"])
        .args(data_args)
        .arg("--output-dir")
        .arg(&out)
        .args(TINY)
        .args(["--max-steps", "4"])
        .output()
        .unwrap();
    succeeded(&o);
    out
}

/// `forecast --checkpoint RUN --which last ARGS -o OUT`.
pub fn forecast_last(run: &Path, out: &Path, args: &[&str]) {
    let o = meshcast()
        .args(["-q", "forecast", "--checkpoint"])
        .arg(run)
        .args(["--which", "last", "--no-graph-cache", "-o"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    succeeded(&o);
}

/// Opens with meshcast's opener, which keeps HDF5 from printing its harmless
/// diagnostics on test threads.
pub fn open_nc(path: &Path) -> netcdf::File {
    no_hdf5_locking();
    meshcast::data::source::open_netcdf(path).unwrap()
}

/// Writes `lat` and `lon` coordinate variables (f64, CF units) on the file's `lat` and
/// `lon` dimensions, which must exist.
pub fn put_lat_lon(f: &mut netcdf::FileMut, lat: &[f64], lon: &[f64]) {
    for (name, values, units) in [("lat", lat, "degrees_north"), ("lon", lon, "degrees_east")] {
        let mut v = f.add_variable::<f64>(name, &[name]).unwrap();
        v.put_attribute("units", units).unwrap();
        v.put_values(values, ..).unwrap();
    }
}

/// A Python that can import `modules` (e.g. "xarray, netCDF4"): `$MESHCAST_TORCH_PYTHON`
/// (CI sets it and installs scripts/requirements.txt, so there the checks are
/// mandatory), else `python3` if it has them.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESHCAST_TORCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("python3"))
}

/// The dimension names of variable `var` of a NetCDF file.
pub fn dim_names(file: &netcdf::File, var: &str) -> Vec<String> {
    let v = file.variable(var).unwrap();
    v.dimensions().iter().map(|d| d.name()).collect()
}

/// `band` (`whole.latitude_band(rows)`) reads, at a few time steps, the values and
/// validity of `whole` on `rows`.
pub fn assert_band_reads_rows(
    whole: &meshcast::data::Dataset,
    band: &meshcast::data::Dataset,
    rows: std::ops::Range<usize>,
) {
    let nlon = whole.grid.nlon();
    let cells = rows.start * nlon..rows.end * nlon;
    let mut reader = meshcast::data::StepReader::default();
    let last = whole.time.len() - 1;
    for t in [0, last / 2, last] {
        let (all, part) = (
            reader.read(whole, t).unwrap(),
            reader.read(band, t).unwrap(),
        );
        let channels = whole.num_channels();
        assert_eq!(part.values.len(), channels * cells.len());
        for c in 0..channels {
            let on_rows = c * whole.grid.len() + cells.start..c * whole.grid.len() + cells.end;
            let mine = c * cells.len()..(c + 1) * cells.len();
            assert_eq!(
                part.values[mine.clone()],
                all.values[on_rows.clone()],
                "t {t}"
            );
            assert_eq!(part.valid[mine], all.valid[on_rows], "t {t}");
        }
    }
}

/// Every parameter of the run's `last` checkpoint, by name (as f64: f32 runs' exactly).
pub fn checkpoint_weights(run: &Path) -> Vec<(String, Vec<f64>)> {
    let dir = run.join("checkpoints");
    let meta = read_json(&dir.join("last.json"));
    let file = dir.join(meta["weights_file"].as_str().unwrap());
    let mut tensors: Vec<_> = candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let t = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64);
            (name, t.unwrap().to_vec1::<f64>().unwrap())
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// The dtype of the run's `last` checkpoint's parameters.
pub fn checkpoint_dtype(run: &Path) -> candle_core::DType {
    let dir = run.join("checkpoints");
    let meta = read_json(&dir.join("last.json"));
    let file = dir.join(meta["weights_file"].as_str().unwrap());
    let tensors = candle_core::safetensors::load(file, &candle_core::Device::Cpu).unwrap();
    tensors.values().next().unwrap().dtype()
}

/// The largest difference between two runs' parameters.
pub fn largest_difference(a: &Path, b: &Path) -> f64 {
    let (wa, wb) = (checkpoint_weights(a), checkpoint_weights(b));
    assert_eq!(wa.len(), wb.len());
    let mut worst = 0f64;
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}
