//! Runs that survive (issue #19): a kill -9 or a full disk inside a checkpoint save
//! leaves a loadable checkpoint, a second process cannot write into a running run's
//! directory, --overwrite deletes nothing before the new run is certain to start, a
//! diverged run is never checkpointed, metrics.jsonl has one row per step after any
//! number of kills, and SIGTERM saves `last` and exits 143.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// A model whose checkpoint (23 MB) takes about as long to write as a step takes to
/// compute, on a 30-degree grid: kills land inside saves often.
const HEAVY_SAVES: &[&str] = &[
    "--latent-size",
    "256",
    "--num-gnn-layers",
    "1",
    "--mesh-level",
    "1",
    "--batch-size",
    "1",
    "--no-progress",
    "--no-graph-cache",
];

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("meshcast")
}

fn train_command(data: &Path, out: &Path, model: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_remove("RUST_LOG")
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .arg("-q")
        .arg("train-model")
        .arg(data)
        .arg("--output-dir")
        .arg(out)
        .args(model)
        .args(args);
    cmd
}

fn sidecar(out: &Path, name: &str) -> serde_json::Value {
    let path = out.join(format!("checkpoints/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The sidecar points at files whose SHA-256 it records: the checkpoint loads.
fn assert_loadable(out: &Path, name: &str) {
    let meta = sidecar(out, name);
    for (file, sha) in [
        ("weights_file", "weights_sha256"),
        ("optimizer_file", "optimizer_sha256"),
    ] {
        let path = out.join("checkpoints").join(meta[file].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(
            format!("{:x}", Sha256::digest(&bytes)),
            meta[sha].as_str().unwrap(),
            "{path:?} does not match {name}.json"
        );
    }
}

/// Files a killed save left: temporary files and tensor files no sidecar points at.
fn leftovers(out: &Path) -> Vec<String> {
    let dir = out.join("checkpoints");
    let mut current = vec![];
    for name in ["last", "best"] {
        if dir.join(format!("{name}.json")).exists() {
            let meta = sidecar(out, name);
            for file in ["weights_file", "optimizer_file"] {
                current.push(meta[file].as_str().unwrap().to_string());
            }
            current.push(format!("{name}.safetensors"));
            current.push(format!("{name}.optimizer.safetensors"));
        }
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.contains(".tmp-") || (f.ends_with(".safetensors") && !current.contains(f)))
        .collect()
}

/// Step rows of metrics.jsonl; every line must be complete JSON.
fn step_rows(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .filter(|r| r["kind"] == "step")
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

/// Data for a run that does not end by itself (30 degrees, 400 steps), its output
/// directory and the file its stderr goes to.
fn long_run_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = generate(dir, "g.nc", &["--resolution", "30", "--steps", "400"]);
    (data, dir.join("run"), dir.join("stderr.txt"))
}

/// Waits until the run has written `rows` more bytes of metrics (it is training), or
/// fails the test with its stderr if it ended.
fn wait_for_training(child: &mut Child, metrics: &Path, stderr: &Path) {
    let start = std::fs::metadata(metrics).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(metrics).map_or(0, |m| m.len()) <= start {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before it was killed: {}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no training step in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_9_inside_checkpoint_saves_always_leaves_a_loadable_checkpoint() {
    let want_inside: usize = std::env::var("MESHCAST_KILLS_INSIDE_SAVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let (data, out, stderr) = long_run_files(dir.path());
    let (mut inside, mut kills) = (0, 0);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    while inside < want_inside {
        assert!(
            kills < 20 * want_inside.max(10),
            "only {inside} of {kills} kills landed inside a save"
        );
        let start = match out.join("checkpoints/last.json").exists() {
            true => "--resume",
            false => "--overwrite",
        };
        let mut child = train_command(
            &data,
            &out,
            HEAVY_SAVES,
            &["--num-epochs", "1000", "--checkpoint-interval", "1", start],
        )
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
        wait_for_training(&mut child, &out.join("metrics.jsonl"), &stderr);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 150_000));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if !leftovers(&out).is_empty() {
            inside += 1;
        }
        if out.join("checkpoints/last.json").exists() {
            assert_loadable(&out, "last");
        }
    }
    eprintln!("{kills} kills, {inside} inside a save, every checkpoint loadable");
    // The next start cleans up, resumes, and the metrics hold every step once.
    let done = train_command(
        &data,
        &out,
        HEAVY_SAVES,
        &["--num-epochs", "1000", "--resume"],
    )
    .arg("--max-steps")
    .arg((sidecar(&out, "last")["step"].as_u64().unwrap() + 2).to_string())
    .output()
    .unwrap();
    succeeded(&done);
    assert_eq!(leftovers(&out), Vec::<String>::new());
    let steps = step_rows(&out);
    let expected: Vec<u64> = (1..=steps.len() as u64).collect();
    assert_eq!(steps, expected, "one metrics row per step, in order");
}

/// Sets a file-size limit on the child, so that a write past it fails (EFBIG) the way
/// a full disk fails it, without filling a disk.
fn with_file_size_limit(cmd: &mut Command, bytes: u64) {
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            match libc::setrlimit(libc::RLIMIT_FSIZE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
}

#[test]
fn a_failed_write_during_a_save_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = small_run(dir.path());
    let before = sidecar(&out, "last");
    let file_len = |key: &str| {
        std::fs::metadata(out.join("checkpoints").join(before[key].as_str().unwrap()))
            .unwrap()
            .len()
    };
    // Room for the weights, not for the optimizer moments (twice their size).
    let limit = (file_len("weights_file") + file_len("optimizer_file")) / 2;
    let mut cmd = train_command(&data, &out, TINY, &["--num-epochs", "2", "--resume"]);
    with_file_size_limit(&mut cmd, limit);
    let failed = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the previous one") && err.contains("is kept"),
        "{err}"
    );
    assert_eq!(sidecar(&out, "last")["step"], before["step"]);
    assert_loadable(&out, "last");
    assert_eq!(
        leftovers(&out),
        Vec::<String>::new(),
        "the failed set is removed"
    );
    let eval = meshcast()
        .args(["-q", "eval", "--checkpoint"])
        .arg(&out)
        .args(["--which", "last", "--rollout-steps", "1"])
        .output()
        .unwrap();
    succeeded(&eval);
    // And the run continues from it once there is room.
    succeeded(&train_tiny(&data, &out, &["--num-epochs", "2", "--resume"]));
}

#[test]
fn overwrite_deletes_nothing_until_the_new_run_is_certain_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = small_run(dir.path());
    let weights = std::fs::read(out.join("checkpoints/last.safetensors")).unwrap();
    for bad in [
        &["--radius-factor", "nan"][..],
        &["--mesh-level", "9"],
        &["--patches", "1000"],
        &["--latent-size", "0"],
    ] {
        let o = train_tiny(&data, &out, &[&["--overwrite"], bad].concat());
        assert_ne!(o.status.code(), Some(0), "{bad:?} accepted");
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("panicked"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for f in [
            "run.json",
            "stats.json",
            "metrics.jsonl",
            "checkpoints/last.json",
        ] {
            assert!(out.join(f).exists(), "{bad:?} deleted {f}");
        }
        assert_eq!(
            std::fs::read(out.join("checkpoints/last.safetensors")).unwrap(),
            weights,
            "{bad:?}"
        );
    }
}

#[test]
fn a_run_directory_in_use_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let mut lock = std::fs::File::create(out.join(".meshcast.lock")).unwrap();
    lock.try_lock().unwrap();
    write!(lock, "4242").unwrap();
    let o = train_tiny(&data, &out, &["--num-epochs", "1"]);
    assert_bad_input(&o, &["in use by another meshcast process (PID 4242)"]);
    assert!(!out.join("run.json").exists());
    drop(lock);
    succeeded(&train_tiny(&data, &out, &["--num-epochs", "1"]));
}

#[test]
fn a_diverged_run_is_never_checkpointed_nor_made_best() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let out = dir.path().join("run");
    let o = train_tiny(
        &data,
        &out,
        &[
            "--num-epochs",
            "3",
            "--learning-rate",
            "1000",
            "--warmup-steps",
            "0",
        ],
    );
    for name in ["last", "best"] {
        let path = out.join(format!("checkpoints/{name}.json"));
        if !path.exists() {
            continue;
        }
        let meta = sidecar(&out, name);
        if name == "best" {
            assert!(
                meta["val_loss"].is_f64(),
                "best without a validation loss: {meta}"
            );
        }
        let moments = candle_core::safetensors::load(
            out.join("checkpoints")
                .join(meta["optimizer_file"].as_str().unwrap()),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        for (key, t) in moments {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name}: {key} not finite");
        }
    }
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("diverged") || err.contains("loss became"),
            "{err}"
        );
    }
}

#[test]
fn resume_drops_metrics_rows_after_its_checkpoint_and_a_half_written_line() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = small_run(dir.path());
    let steps = step_rows(&out).len() as u64;
    // As a process killed after two more steps, in the middle of a row, leaves it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("metrics.jsonl"))
        .unwrap();
    for step in [steps + 1, steps + 2] {
        writeln!(
            f,
            "{{\"kind\":\"step\",\"step\":{step},\"epoch\":2,\"loss\":1.0}}"
        )
        .unwrap();
    }
    write!(f, "{{\"kind\":\"step\",\"st").unwrap();
    drop(f);
    succeeded(&train_tiny(&data, &out, &["--num-epochs", "2", "--resume"]));
    let expected: Vec<u64> = (1..=2 * steps).collect();
    assert_eq!(step_rows(&out), expected);
}

#[test]
fn sigterm_saves_last_and_exits_143() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out, stderr) = long_run_files(dir.path());
    let mut child = train_command(&data, &out, TINY, &["--num-epochs", "1000"])
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    wait_for_training(&mut child, &out.join("metrics.jsonl"), &stderr);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("SIGTERM") && err.contains("--resume"), "{err}");
    assert_loadable(&out, "last");
    let saved = sidecar(&out, "last")["step"].as_u64().unwrap();
    assert_eq!(step_rows(&out).last(), Some(&saved));
}

#[test]
fn batch_job_logs_have_timestamps_no_colour_and_a_line_every_n_steps() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let out = dir.path().join("run");
    // Data given relative to the working directory, as a batch script would.
    let o = Command::new(binary())
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .args([
            "train-model",
            "g.nc",
            "--output-dir",
            "run",
            "--num-epochs",
            "3",
        ])
        .args(["--log-every", "5"])
        .args(TINY)
        .output()
        .unwrap();
    succeeded(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains('\x1b'), "colour codes in a log file: {err}");
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        let stamp = line.split_whitespace().next().unwrap_or("");
        assert!(
            stamp.len() > 20 && stamp.starts_with("20") && stamp.ends_with('Z'),
            "no timestamp: {line}"
        );
    }
    assert!(err.contains("step 5/") && err.contains("ETA"), "{err}");
    // run.json records where the data are: eval works from any directory.
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let file = run["data"]["files"][0].as_str().unwrap();
    assert!(Path::new(file).is_absolute(), "{file}");
    let eval = meshcast()
        .current_dir("/")
        .args(["-q", "eval", "--checkpoint"])
        .arg(&out)
        .args(["--rollout-steps", "1"])
        .output()
        .unwrap();
    succeeded(&eval);
    // The tensor files are as readable as the JSON beside them.
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(out.join("checkpoints").join(name))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("last.safetensors"), mode("last.json"));
    assert_eq!(mode("last.optimizer.safetensors"), mode("last.json"));
    // The same file by another path continues the run.
    let other_path = dir.path().join(".").join("g.nc");
    succeeded(&train_tiny(
        &other_path,
        &out,
        &["--num-epochs", "4", "--resume"],
    ));
}
