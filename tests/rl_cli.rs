//! `rudder train rl` end to end on tiny models: backward demos, a classifier that knows the
//! backward tasks, offline pre-training, a reset-free run, its resume and `rudder eval --rl`;
//! then the inputs it must refuse before anything runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rudder_policy::dataset::DemoDataset;
use rudder_policy::train::{ModelSpec, TrainConfig, VlaTrainer};

fn rudder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rudder"))
}

fn run(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = rudder();
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().expect("rudder runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn refused(o: &Output, needle: &str) {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "accepted; stdout {}", text(&o.stdout));
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

fn latest_report(out: &Path) -> serde_json::Value {
    let name = std::fs::read_to_string(out.join("latest")).expect("latest");
    let p = out.join(name.trim()).join("report.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("report")).expect("json")
}

/// A 32 px flow VLA trained two steps on forward and backward goal demos.
fn tiny_vla(dir: &Path) -> PathBuf {
    let o = run(
        &[
            "demos",
            "--suite",
            "goal",
            "--with-backward",
            "--episodes",
            "1",
            "--size",
            "32",
        ],
        &[("--out", &dir.join("demos"))],
    );
    ok(&o, "demos --with-backward");
    let data = DemoDataset::load(&dir.join("demos"), true).expect("data");
    assert_eq!(data.meta.tasks.len(), 20);
    let cfg = TrainConfig {
        model: ModelSpec::tiny(),
        steps: 2,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut tr = VlaTrainer::new(cfg, &data).expect("trainer");
    tr.step(&data).expect("step");
    tr.save(&dir.join("vla"), 1, &data).expect("save")
}

/// A 32 px classifier trained two steps on goal frames with the backward tasks (the last
/// forward task and its backward task held out).
fn tiny_reward(dir: &Path) -> PathBuf {
    let data = dir.join("reward-data");
    let o = run(
        &[
            "reward",
            "data",
            "--suite",
            "goal",
            "--with-backward",
            "--train-inits",
            "1",
            "--val-inits",
            "1",
            "--test-inits",
            "1",
            "--size",
            "32",
            "--quiet",
        ],
        &[("--out", &data)],
    );
    ok(&o, "reward data --with-backward");
    let out = dir.join("reward");
    let o = run(
        &[
            "train",
            "reward",
            "--steps",
            "2",
            "--batch",
            "8",
            "--image-size",
            "32",
            "--patch",
            "8",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--vision-hidden",
            "16",
            "--vision-layers",
            "1",
            "--quiet",
        ],
        &[("--data", &data), ("--out", &out)],
    );
    ok(&o, "train reward");
    out
}

#[test]
fn a_reset_free_run_trains_resumes_evaluates_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let vla = tiny_vla(tmp.path());
    let reward = tiny_reward(tmp.path());
    let demos = tmp.path().join("demos");
    let out = tmp.path().join("rl");
    let rl = |steps: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "rl",
            "--tasks",
            "bowl_on_stove,4",
            "--steps",
            steps,
            "--demos-per-task",
            "1",
            "--offline-updates",
            "3",
            "--checkpoint-every",
            "100",
            "--batch-size",
            "8",
            "--attempt-steps",
            "40",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        run(
            &args,
            &[
                ("--policy", &vla),
                ("--reward", &reward),
                ("--out", &out),
                ("--demos", &demos),
            ],
        )
    };
    let rrd = tmp.path().join("rl.rrd");
    let rrd_s = rrd.to_string_lossy().into_owned();
    let o = rl("200", &["--rerun", &rrd_s]);
    ok(&o, "train rl");
    let size = std::fs::metadata(&rrd).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 1000,
        "the Rerun recording holds the curves ({size} bytes)"
    );
    let stdout = text(&o.stdout);
    assert!(stdout.contains("offline:"), "{stdout}");
    let r = latest_report(&out);
    assert_eq!(r["steps"], 200, "{r}");
    assert_eq!(r["manual_resets"], 0);
    let attempts = r["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 5, "40-step budget over 200 steps: {r}");
    assert_eq!(attempts[0]["task"], "goal_bowl_on_stove");
    assert_eq!(attempts[1]["task"], "goal_back_bowl_on_stove");
    assert!(attempts.iter().all(|a| a["steps"].as_u64().unwrap() <= 40));

    // Started again with a longer run, it resumes from the checkpoint: the scene starts again,
    // counted once.
    let o = rl("300", &[]);
    ok(&o, "train rl (resume)");
    assert!(text(&o.stdout).contains("resuming"), "{}", text(&o.stdout));
    let r = latest_report(&out);
    assert_eq!(
        (r["steps"].as_u64(), r["restarts"].as_u64()),
        (Some(300), Some(1))
    );

    // The trained actor in the evaluation campaign.
    let o = run(
        &[
            "eval",
            "--suite",
            "goal",
            "--tasks",
            "1",
            "--episodes",
            "1",
            "--lockstep",
            "--max-steps",
            "20",
            "--json",
        ],
        &[("--policy", &vla), ("--rl", &out)],
    );
    ok(&o, "eval --rl");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["episodes"], 1);

    // Refused before anything runs.
    let fresh = tmp.path().join("rl-bad");
    let bad = |extra: &[&str], policy: &Path, reward: &Path| {
        let mut args = vec!["train", "rl", "--steps", "10"];
        args.extend_from_slice(extra);
        run(
            &args,
            &[
                ("--policy", policy),
                ("--reward", reward),
                ("--out", &fresh),
            ],
        )
    };
    refused(
        &bad(&["--tasks", "make_coffee"], &vla, &reward),
        "unknown task `make_coffee`",
    );
    refused(
        &bad(&["--tasks", "1", "--suite", "spatial"], &vla, &reward),
        "goal suite only",
    );
    // The held-out forward task and its backward task were never shown to the classifier.
    refused(
        &bad(&["--tasks", "close_drawer"], &vla, &reward),
        "not trained on task",
    );
    // A classifier that reads 16 px images beside a 32 px policy.
    let norm = tmp.path().join("vla-no-norm");
    std::fs::create_dir_all(&norm).unwrap();
    for f in std::fs::read_dir(&vla).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().is_some_and(|n| n != "normalization.json") && f.is_file() {
            std::fs::copy(&f, norm.join(f.file_name().unwrap())).unwrap();
        }
    }
    refused(
        &bad(&["--tasks", "1"], &norm, &reward),
        "normalization.json",
    );
    assert!(!fresh.exists(), "nothing was written for refused runs");
}
