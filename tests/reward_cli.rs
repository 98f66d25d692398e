//! The success classifier's commands end to end through the `rudder` binary: `rudder reward
//! data`, `rudder train reward`, `rudder eval reward`, `rudder bench reward`, on a tiny data
//! set and model (seconds), and their refusals of bad input.

use std::path::Path;
use std::process::{Command, Output};

fn rudder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rudder"))
}

fn run(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = rudder();
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// The JSON object that starts at the first `{` of stdout (commands may print a line before).
fn json_in(o: &Output) -> serde_json::Value {
    let s = text(&o.stdout);
    let at = s.find('{').unwrap_or_else(|| panic!("no JSON in {s}"));
    serde_json::from_str(&s[at..]).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const MODEL: &[&str] = &[
    "--batch",
    "8",
    "--image-size",
    "16",
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
];

fn train(data: &Path, out: &Path, steps: &str, extra: &[&str]) -> Output {
    let mut args = vec!["train", "reward", "--steps", steps];
    args.extend_from_slice(MODEL);
    args.extend_from_slice(extra);
    run(&args, &[("--data", data), ("--out", out)])
}

#[test]
fn data_train_eval_bench_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let runs = tmp.path().join("run");

    // rudder reward data: balanced splits, a finished data set.
    let o = run(
        &[
            "reward",
            "data",
            "--suite",
            "goal",
            "--train-inits",
            "2",
            "--val-inits",
            "1",
            "--test-inits",
            "1",
            "--size",
            "16",
            "--quiet",
        ],
        &[("--out", &data)],
    );
    ok(&o, "reward data");
    let summary = json_in(&o);
    assert_eq!(summary["shards"].as_u64().unwrap(), 1, "{summary}");
    let counts = summary["counts"].as_object().unwrap();
    let mut total = 0;
    for split in ["train", "val", "test"] {
        let c = counts
            .get(split)
            .unwrap_or_else(|| panic!("no {split} in {summary}"));
        let (pos, neg) = (c[0].as_u64().unwrap(), c[1].as_u64().unwrap());
        assert!(pos > 0, "{split}: no positives");
        assert_eq!(pos, neg, "{split}: not 50 % positives");
    }
    for c in counts.values() {
        assert_eq!(c[0], c[1], "{summary}");
        total += c[0].as_u64().unwrap() + c[1].as_u64().unwrap();
    }
    assert_eq!(summary["samples"].as_u64().unwrap(), total);
    let meta = read_json(&data.join("meta.json"));
    assert_eq!(meta["samples"].as_u64().unwrap(), total);
    assert_eq!(meta["image_size"], 16);
    let test_n = {
        let c = &summary["counts"]["test"];
        c[0].as_u64().unwrap() + c[1].as_u64().unwrap()
    };
    // A second data set into the same folder is refused.
    let o = run(
        &["reward", "data", "--suite", "goal", "--train-inits", "1"],
        &[("--out", &data)],
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("meta.json"), "{}", text(&o.stderr));

    // rudder train reward: checkpoints every 3 steps, the final one calibrated.
    let t0 = std::time::Instant::now();
    let o = train(&data, &runs, "6", &["--save-every", "3"]);
    ok(&o, "train reward");
    eprintln!("train reward: {:.2} s", t0.elapsed().as_secs_f64());
    let latest = std::fs::read_to_string(runs.join("latest")).unwrap();
    assert_eq!(latest.trim(), "checkpoint-6");
    let ckpt = runs.join("checkpoint-6");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "reward.json",
        "training.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing");
    }
    let rj = read_json(&ckpt.join("reward.json"));
    assert_eq!(rj["calibrated"], true, "{rj}");
    let temp = rj["temperature"].as_f64().unwrap();
    assert!(temp.is_finite() && temp > 0.0, "{rj}");
    let thr = rj["threshold"].as_f64().unwrap();
    assert!((0.5..1.0).contains(&thr), "{rj}");
    // The intermediate checkpoint is not calibrated (calibration happens at the end only).
    let mid = read_json(&runs.join("checkpoint-3/reward.json"));
    assert_eq!(mid["calibrated"], false);
    assert_eq!(read_json(&ckpt.join("training.json"))["step"], 6);

    // A second run into the same folder without --resume is refused and touches nothing.
    let before = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    let o = train(&data, &runs, "6", &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("--resume"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
        before
    );

    // rudder eval reward: the test split's scores, and a reliability diagram.
    let png = tmp.path().join("plots/rel.png");
    let o = run(
        &["eval", "reward", "--json"],
        &[
            ("--model", &runs),
            ("--data", &data),
            ("--reliability", &png),
        ],
    );
    ok(&o, "eval reward");
    let v = json_in(&o);
    assert_eq!(v["calibrated"], true);
    assert_eq!(v["temperature"].as_f64().unwrap(), temp);
    assert_eq!(v["threshold"].as_f64().unwrap(), thr);
    let test = &v["splits"]["test"];
    assert_eq!(test["n"].as_u64().unwrap(), test_n, "{test}");
    let overall = &test["overall"];
    let acc = overall["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{overall}");
    assert_eq!(overall["n"].as_u64().unwrap(), test_n);
    let c = &overall["confusion"];
    let (tp, fp, tn, fn_) = (
        c["tp"].as_u64().unwrap(),
        c["fp"].as_u64().unwrap(),
        c["tn"].as_u64().unwrap(),
        c["fn"].as_u64().unwrap(),
    );
    assert_eq!(tp + fp + tn + fn_, test_n, "{c}");
    assert_eq!(tp + fn_, test_n / 2, "half of the test split is positive");
    assert!(((tp + tn) as f64 / test_n as f64 - acc).abs() < 1e-12);
    let raw = v["raw_rule_accuracy"]["test"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&raw));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // Only the splits asked for.
    let o = run(
        &["eval", "reward", "--json", "--splits", "val"],
        &[("--model", &runs), ("--data", &data)],
    );
    ok(&o, "eval reward --splits val");
    let v = json_in(&o);
    let keys: Vec<&String> = v["splits"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["val"]);

    // rudder bench reward: ordered percentiles of 20 timed classifications.
    let o = run(
        &["bench", "reward", "--iters", "20", "--json"],
        &[("--model", &runs), ("--data", &data)],
    );
    ok(&o, "bench reward");
    let b = json_in(&o);
    assert_eq!(b["iters"], 20);
    let p50 = b["p50_ms"].as_f64().unwrap();
    let p90 = b["p90_ms"].as_f64().unwrap();
    let p99 = b["p99_ms"].as_f64().unwrap();
    let mean = b["mean_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 > 0.0, "{b}");
    assert!(p50 <= p90 && p90 <= p99, "{b}");
    // p99 of 20 timings is the slowest, which no mean exceeds; the median of 20 distinct
    // timings lies strictly below the slowest (percentiles taken as fractions, not percent).
    assert!(mean <= p99, "{b}");
    assert!(
        p50 < p99,
        "p50 equals p99: percentiles are not quantiles: {b}"
    );
    // Without --data, frames rendered by the simulator.
    let o = run(
        &["bench", "reward", "--iters", "20", "--json"],
        &[("--model", &runs)],
    );
    ok(&o, "bench reward without --data");
    let b = json_in(&o);
    assert!(b["p50_ms"].as_f64().unwrap() <= b["p99_ms"].as_f64().unwrap());
    assert!(b["p50_ms"].as_f64().unwrap() > 0.0);

    // --resume continues the run to a longer horizon, calibrated again.
    let o = train(&data, &runs, "8", &["--resume"]);
    ok(&o, "train reward --resume");
    assert!(text(&o.stderr).contains("step 6"), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(runs.join("latest")).unwrap().trim(),
        "checkpoint-8"
    );
    assert_eq!(
        read_json(&runs.join("checkpoint-8/reward.json"))["calibrated"],
        true
    );
}

#[test]
fn bad_input_is_refused_without_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");

    let o = train(Path::new("/nonexistent/reward-data"), &out, "2", &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("/nonexistent/reward-data"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.join("latest").exists());

    let o = run(
        &[
            "reward", "data", "--suite", "goal", "--size", "0", "--quiet",
        ],
        &[("--out", &tmp.path().join("data0"))],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("--size"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!tmp.path().join("data0/meta.json").exists());

    let o = run(
        &["reward", "data", "--suite", "nosuch", "--quiet"],
        &[("--out", &tmp.path().join("data1"))],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("nosuch"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    for (args, needle) in [
        (&["eval", "reward", "--json"][..], "nonexistent"),
        (&["bench", "reward", "--iters", "2"][..], "nonexistent"),
    ] {
        let o = run(
            args,
            &[
                ("--model", Path::new("/nonexistent/run")),
                ("--data", Path::new("/nonexistent/data")),
            ],
        );
        assert!(!o.status.success(), "{args:?}");
        let err = text(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
