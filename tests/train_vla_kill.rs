//! `rudder train vla` and `rudder train planner` killed with SIGKILL mid-run and started again
//! with `--resume` end at the same weights and optimizer state (and the planner's EMA), bit for
//! bit, as a run that was never interrupted: checkpoints are written atomically and hold
//! everything the next step draws from (data order, cursor, generator).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Optimizer steps of both runs; a checkpoint every `SAVE_EVERY`.
const STEPS: u64 = 40;
const SAVE_EVERY: u64 = 4;
/// The interrupted run is killed once it has logged this step (past a checkpoint).
const KILL_AFTER: u64 = 7;

fn rudder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rudder"))
}

/// `rudder train vla` on a ~0.1M-parameter flow model (ModelSpec::tiny's shape) into `out`.
fn train(data: &Path, out: &Path) -> Command {
    let mut c = rudder();
    c.args(["train", "vla", "--variant", "flow", "--quiet"])
        .args([
            "--hidden",
            "32",
            "--layers",
            "2",
            "--heads",
            "2",
            "--head-dim",
            "16",
        ])
        .args([
            "--vision-layers",
            "1",
            "--image-size",
            "32",
            "--patch",
            "16",
        ])
        .args([
            "--chunk",
            "4",
            "--max-prompt-tokens",
            "24",
            "--inference-steps",
            "2",
        ])
        .args([
            "--batch", "8", "--lr", "3e-3", "--warmup", "5", "--seed", "3",
        ])
        .args(["--steps", &STEPS.to_string()])
        .args(["--save-every", &SAVE_EVERY.to_string(), "--keep", "2"])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    c
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn killed_vla_run_resumes_to_bit_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demos");
    let out = rudder()
        .args(["demos", "--episodes", "1", "--size", "32", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demos: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    kill_and_resume(
        tmp.path(),
        |out| train(&data, out),
        &["model.safetensors", "optimizer.safetensors"],
    );
}

/// Runs `train` to the end into `root/whole`; runs it into `root/cut`, kills it with SIGKILL
/// after step KILL_AFTER, resumes it, and compares `files` of the final checkpoints.
fn kill_and_resume(root: &Path, train: impl Fn(&Path) -> Command, files: &[&str]) {
    let whole = root.join("whole");
    let out = train(&whole).args(["--log-every", "0"]).output().unwrap();
    assert!(
        out.status.success(),
        "uninterrupted run: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The interrupted run logs every step; it is killed as soon as it reports KILL_AFTER.
    let cut = root.join("cut");
    let mut child = train(&cut)
        .args(["--log-every", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut logged = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(step) = line
            .strip_prefix("step")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|s| s.parse::<u64>().ok())
        {
            logged = step;
            if step >= KILL_AFTER {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no final save
    let status = child.wait().unwrap();
    assert!(logged >= KILL_AFTER, "the run logged only {logged} steps");
    assert!(!status.success(), "the run finished before it was killed");
    let latest = std::fs::read_to_string(cut.join("latest")).unwrap();
    let at: u64 = latest
        .trim()
        .strip_prefix("checkpoint-")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("latest names {latest:?}"));
    assert!(
        (SAVE_EVERY..STEPS).contains(&at),
        "killed at step {logged}, latest is {latest}"
    );

    let out = train(&cut)
        .args(["--log-every", "0", "--resume"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resumed run: {err}");
    assert!(err.contains("resumed from"), "{err}");

    let last = format!("checkpoint-{STEPS}");
    for f in files {
        assert!(
            read(whole.join(&last).join(f)) == read(cut.join(&last).join(f)),
            "{f} differs between the uninterrupted and the killed-and-resumed run"
        );
    }
}

#[test]
fn killed_planner_run_resumes_to_bit_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demos");
    let out = rudder()
        .args([
            "demos",
            "driving",
            "--scenarios",
            "2",
            "--stride",
            "10",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demos: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let train = |out: &Path| {
        let mut c = rudder();
        c.args([
            "train", "planner", "--quiet", "--hidden", "32", "--heads", "2",
        ])
        .args([
            "--encoder-layers",
            "1",
            "--decoder-layers",
            "1",
            "--batch-size",
            "4",
        ])
        .args(["--noise-draws", "2", "--warmup", "5", "--seed", "3"])
        .args(["--steps", &STEPS.to_string()])
        .args(["--save-every", &SAVE_EVERY.to_string(), "--keep", "2"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(out);
        c
    };
    kill_and_resume(
        tmp.path(),
        train,
        &[
            "model.safetensors",
            "weights.safetensors",
            "ema.safetensors",
            "optimizer.safetensors",
        ],
    );
}
