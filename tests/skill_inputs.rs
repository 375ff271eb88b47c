//! Forcings, static fields and rollout training through the real binary (issue #21):
//! what a run records, that eval and forecast feed the model what training fed it,
//! that a curriculum resumes exactly, and that bad settings are refused up front.

mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use common::*;
use meshcast::data::{
    Batch, BatchAssembler, BatchLoader, Dataset, NormStats, Prefetch, StepReader,
};
use meshcast::predict::{Execution, NodeState, NormalisedResidual};
use meshcast::train::session::Session;
use meshcast::train::RunConfig;

fn run_json(run: &Path) -> serde_json::Value {
    read_json(&run.join("run.json"))
}

#[test]
fn new_runs_record_their_forcings_and_none_gives_the_plain_input_width() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = small_run(dir.path());
    let model = &run_json(&run)["model"];
    // Six days of data: the year progress is left out (its later values were never seen).
    assert_eq!(
        model["forcings"],
        serde_json::json!(["cos_zenith", "toa_radiation", "local_time"])
    );
    // 2 steps x 5 variables x (value, flag) + 4 forcing features x (2 inputs + target).
    assert_eq!(model["grid_input_features"], 20 + 12);
    let plain = dir.path().join("plain");
    succeeded(&train_tiny(
        &data,
        &plain,
        &["--num-epochs", "1", "--forcings", "none"],
    ));
    assert_eq!(run_json(&plain)["model"]["grid_input_features"], 20);
    let all = dir.path().join("all");
    succeeded(&train_tiny(
        &data,
        &all,
        &["--max-steps", "1", "--forcings", "all"],
    ));
    assert_eq!(run_json(&all)["model"]["grid_input_features"], 20 + 18);
    let bad = train_tiny(&data, &dir.path().join("bad"), &["--forcings", "cos_zenit"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown forcing 'cos_zenit'"));
}

/// The inputs a rollout builds from states and their times equal the training inputs
/// of the same window: eval and forecast compute the same forcings training did.
#[test]
fn rollout_inputs_equal_the_training_inputs_of_the_same_window() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run_dir) = small_run(dir.path());
    assert_rollout_inputs_equal_training_inputs(&run_dir);
    // Two steps per lead: the input states, and their forcings, lie one lead apart.
    let lead2 = dir.path().join("lead2");
    succeeded(&train_tiny(
        &data,
        &lead2,
        &["--num-epochs", "1", "--lead-steps", "2"],
    ));
    assert_rollout_inputs_equal_training_inputs(&lead2);
}

fn assert_rollout_inputs_equal_training_inputs(run_dir: &Path) {
    let run: RunConfig = serde_json::from_value(run_json(run_dir)).unwrap();
    let stats: NormStats = serde_json::from_value(read_json(&run_dir.join("stats.json"))).unwrap();
    let dataset = Arc::new(Dataset::open(&run.data).unwrap());
    let session =
        Session::new(&run, Execution::PLAIN, dataset.clone(), None, &Device::Cpu).unwrap();
    let t0 = 7;
    let batch = BatchLoader::new(
        dataset.clone(),
        Arc::new(stats.clone()),
        (run.window, 1),
        &[t0],
        1,
        Prefetch::Off,
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    let lat_w = session.node_latitude_weights();
    let (x_train, _, _) = session.tensors(&batch, &lat_w, &[1.0; 5]).unwrap();
    assert_prefetched_extras_equal_computed(&session, &stats, run.window, t0);
    let mut reader = StepReader::default();
    let cells = session.graph.grid_map.cells();
    let history: Vec<NodeState> = (0..run.window.input_steps)
        .map(|slot| run.window.input_time(t0, slot))
        .map(|t| {
            let state = reader.read(&dataset, t).unwrap();
            NodeState::from_state(
                (&state, dataset.time.instants[t]),
                cells,
                5,
                dataset.grid.len(),
            )
        })
        .collect();
    let model = NormalisedResidual {
        predictor: session.predictor.as_ref(),
        stats: &stats,
        extras: &session.extras,
    };
    let x_roll = model.inputs(&[history]).unwrap();
    assert_eq!(x_train.dims(), x_roll.dims());
    let a: Vec<f32> = x_train.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = x_roll.flatten_all().unwrap().to_vec1().unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(worst < 1e-5, "largest difference {worst}");
}

/// Training batches get their forcings on the prefetch thread (`Session::extras_fn`):
/// the same inputs, bit for bit, as computed on the training thread, for one step and
/// for each step of a rollout.
fn assert_prefetched_extras_equal_computed(
    session: &Session,
    stats: &NormStats,
    window: meshcast::data::WindowSpec,
    t0: usize,
) {
    let lat_w = session.node_latitude_weights();
    let flat =
        |t: &candle_core::Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    for rollout in [1, 2] {
        let load = |with_extras: bool| {
            let mut assembler = BatchAssembler::new(
                session.batch_data.clone(),
                Arc::new(stats.clone()),
                (window, rollout),
                1,
            );
            if with_extras {
                assembler = assembler.with_extras(session.extras_fn());
            }
            let prefetch = Prefetch::Buffer(2);
            let mut loader =
                BatchLoader::from_assembler(assembler, vec![vec![t0]], prefetch).unwrap();
            loader.next().unwrap().unwrap()
        };
        let (plain, prefetched) = (load(false), load(true));
        assert!(plain.extras.is_empty());
        assert_eq!(prefetched.extras.len(), rollout);
        let rb = |b: &Batch| {
            session
                .rollout_batch(b, (&lat_w, &[1.0; 5]), stats)
                .unwrap()
        };
        let (a, b) = (rb(&plain), rb(&prefetched));
        assert_eq!(flat(&a.x), flat(&b.x), "rollout {rollout}");
        for (ea, eb) in a.extras.iter().zip(&b.extras) {
            assert_eq!(flat(ea), flat(eb), "rollout {rollout}");
        }
    }
}

/// A 10-degree static file on the generated grid: a land-sea mask and an orography
/// missing over the sea.
fn write_statics(data: &Path, path: &Path) {
    let src = open_nc(data);
    let lat: Vec<f64> = src.variable("lat").unwrap().get_values(..).unwrap();
    let lon: Vec<f64> = src.variable("lon").unwrap().get_values(..).unwrap();
    let mut f = netcdf::create(path).unwrap();
    f.add_dimension("lat", lat.len()).unwrap();
    f.add_dimension("lon", lon.len()).unwrap();
    put_lat_lon(&mut f, &lat, &lon);
    let land: Vec<f32> = (0..lat.len() * lon.len())
        .map(|i| (i % 3 == 0) as u8 as f32)
        .collect();
    f.add_variable::<f32>("lsm", &["lat", "lon"])
        .unwrap()
        .put_values(&land, ..)
        .unwrap();
    let mut z = f.add_variable::<f32>("z_sfc", &["lat", "lon"]).unwrap();
    z.put_attribute("_FillValue", -999f32).unwrap();
    let orog: Vec<f32> = land
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l > 0.0 {
                (i * 37 % 500) as f32
            } else {
                -999.0
            }
        })
        .collect();
    z.put_values(&orog, ..).unwrap();
}

#[test]
fn static_fields_enter_the_model_and_fields_on_another_grid_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "40"]);
    let statics = dir.path().join("static.nc");
    write_statics(&data, &statics);
    let run = dir.path().join("run");
    let lsm = format!("{}:lsm", statics.display());
    let orog = format!("{}:z_sfc=orography", statics.display());
    succeeded(&train_tiny(
        &data,
        &run,
        &["--max-steps", "2", "--static", &lsm, "--static", &orog],
    ));
    let saved = run_json(&run);
    assert_eq!(saved["model"]["static_inputs"], 4);
    assert_eq!(
        saved["data"]["statics"][1],
        serde_json::json!(format!(
            "{}:z_sfc=orography",
            std::fs::canonicalize(&statics).unwrap().display()
        ))
    );
    let scores = eval_last(&run, &[]);
    assert!(scores["records"].as_array().is_some_and(|r| !r.is_empty()));
    let report = inspect_json(&[
        data.display().to_string(),
        "--static".into(),
        lsm.clone(),
        "--static".into(),
        orog.clone(),
    ]);
    let fields = report["static_fields"].as_array().unwrap();
    assert_eq!(fields[0], serde_json::json!(["lsm", 0.0]));
    assert_eq!(fields[1][0], "orography");
    // The orography is missing over the sea: two cells in three.
    assert!(
        (fields[1][1].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{fields:?}"
    );

    let other = generate(
        dir.path(),
        "other.nc",
        &["--resolution", "20", "--steps", "1"],
    );
    let wrong = format!("{}:z", other.display());
    let out = train_tiny(&data, &dir.path().join("wrong"), &["--static", &wrong]);
    assert_bad_input(&out, &["grids do not match", "not regridded"]);
    let varying = format!("{}:z", data.display());
    let out = train_tiny(&data, &dir.path().join("varying"), &["--static", &varying]);
    assert_bad_input(&out, &["'z' has 40 time steps", "static field"]);
}

#[test]
fn a_rollout_curriculum_stopped_and_resumed_ends_on_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "40"]);
    let args = [
        "--num-epochs",
        "3",
        "--rollout-schedule",
        "every=1,max=3",
        "--batch-size",
        "4",
        "--no-prefetch",
    ];
    let whole = dir.path().join("whole");
    succeeded(&train_tiny(&data, &whole, &args));
    let parts = dir.path().join("parts");
    // Epochs of 6 micro-batches: step 8 is inside the second epoch (rollout 2).
    succeeded(&train_tiny(
        &data,
        &parts,
        &[&args[..], &["--max-steps", "8"]].concat(),
    ));
    let resumed = meshcast()
        .args(["-q", "train-model", "--resume", "--output-dir"])
        .arg(&parts)
        .output()
        .unwrap();
    succeeded(&resumed);
    let (a, b) = (last_meta(&whole), last_meta(&parts));
    assert_eq!(a["step"], b["step"]);
    assert_eq!(
        a["weights_sha256"], b["weights_sha256"],
        "resumed weights differ"
    );
    let records = metrics(&whole);
    let rollouts: Vec<u64> = records
        .iter()
        .filter(|r| r["kind"] == "epoch")
        .filter_map(|r| r["rollout_steps"].as_u64())
        .collect();
    assert_eq!(rollouts, [1, 2, 3], "{records:?}");
}

#[test]
fn rollouts_train_with_patches_checkpointing_bf16_f16_and_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let cases: [&[&str]; 2] = [
        &[
            "--patches",
            "2",
            "--checkpointing",
            "--mixed-precision",
            "bf16",
        ],
        &["--mixed-precision", "f16", "--grad-accum-steps", "2"],
    ];
    for (i, case) in cases.iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        let args = [&["--max-steps", "2", "--rollout-steps", "3"][..], case].concat();
        succeeded(&train_tiny(&data, &run, &args));
        let records = metrics(&run);
        let losses: Vec<f64> = records.iter().filter_map(|r| r["loss"].as_f64()).collect();
        assert!(
            !losses.is_empty() && losses.iter().all(|l| l.is_finite()),
            "{case:?}: {records:?}"
        );
    }
}

#[test]
fn rollouts_the_data_cannot_hold_and_bad_schedules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let run = |args: &[&str], name: &str| train_tiny(&data, &dir.path().join(name), args);
    assert_bad_input(
        &run(&["--rollout-steps", "30"], "a"),
        &["no sample that holds a rollout of 30 steps"],
    );
    assert_bad_input(
        &run(&["--rollout-schedule", "every=0,max=2"], "b"),
        &["every_epochs >= 1"],
    );
    assert_bad_input(
        &run(
            &[
                "--rollout-steps",
                "3",
                "--rollout-schedule",
                "every=1,max=2",
            ],
            "c",
        ),
        &["max_steps >= --rollout-steps"],
    );
    assert_bad_input(&run(&["--rollout-steps", "0"], "d"), &["--rollout-steps 0"]);
    let bad = run(&["--rollout-schedule", "every=1"], "e");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("every=N,max=M"));
}

#[test]
fn init_from_starts_from_the_checkpoint_s_weights_and_refuses_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let (data, base) = small_run(dir.path());
    let tuned = dir.path().join("tuned");
    let base_arg = base.display().to_string();
    // A learning rate far below every weight's rounding: the step leaves them as loaded.
    let args = [
        "--init-from",
        &base_arg,
        "--max-steps",
        "1",
        "--learning-rate",
        "1e-30",
        "--rollout-steps",
        "2",
    ];
    succeeded(&train_tiny(&data, &tuned, &args));
    assert_eq!(
        std::fs::read(base.join("stats.json")).unwrap(),
        std::fs::read(tuned.join("stats.json")).unwrap(),
        "the checkpoint's normalisation is kept"
    );
    let rmse = |scores: &serde_json::Value| -> Vec<f64> {
        scores["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["system"] == "model" && r["metric"] == "rmse")
            .map(|r| r["value"].as_f64().unwrap())
            .collect()
    };
    let all = ["--split", "all"];
    let (a, b) = (
        rmse(&eval_last(&base, &all)),
        rmse(&eval_last(&tuned, &all)),
    );
    assert!(!a.is_empty() && a.len() == b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{x} vs {y}");
    }
    let wider = train_tiny(
        &data,
        &dir.path().join("w"),
        &["--init-from", &base_arg, "--mlp-hidden-layers", "2"],
    );
    assert_bad_input(&wider, &["another model shape"]);
    let plain = train_tiny(
        &data,
        &dir.path().join("p"),
        &["--init-from", &base_arg, "--forcings", "none"],
    );
    assert_bad_input(&plain, &["--init-from", "forcings"]);
}

#[test]
fn inputs_are_one_lead_apart_and_old_consecutive_runs_are_refused_longer_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "40"]);
    let run = dir.path().join("run");
    succeeded(&train_tiny(
        &data,
        &run,
        &["--max-steps", "2", "--lead-steps", "2"],
    ));
    assert_eq!(run_json(&run)["window"]["input_spacing"], 2);
    let split = ["--split", "all"];
    assert!(!eval_last(&run, &split)["records"]
        .as_array()
        .unwrap()
        .is_empty());
    // A run saved before the spacing existed had consecutive inputs.
    let sidecar = run.join("checkpoints/last.json");
    let mut meta = read_json(&sidecar);
    meta["run"]["window"]
        .as_object_mut()
        .unwrap()
        .remove("input_spacing");
    std::fs::write(&sidecar, serde_json::to_string(&meta).unwrap()).unwrap();
    let out = eval_last_output(&run, &["--rollout-steps", "2", "--split", "all"]);
    assert_bad_input(
        &out,
        &["predictions 2 steps apart", "inputs 1 step(s) apart"],
    );
    succeeded(&eval_last_output(
        &run,
        &["--rollout-steps", "1", "--split", "all", "--json"],
    ));
}
