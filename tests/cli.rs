//! The `rudder` binary end to end: what a user types, with the exit codes and outputs they see.

use std::path::PathBuf;
use std::process::Command;

fn rudder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rudder"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn verify_passes_on_every_fixture_with_json() {
    for name in ["llama", "gemma", "siglip_vision", "paligemma", "pi0"] {
        let out = rudder()
            .args(["model", "verify", "--json", "--atol", "1e-5", "--model"])
            .arg(root().join("fixtures/hf-tiny").join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["pass"], true, "{name}");
        assert!(v["model"].as_str().unwrap().contains(name));
        let outputs = v["outputs"].as_array().unwrap();
        assert!(outputs.len() >= 5, "{name}: {outputs:?}");
        for o in outputs {
            assert!(o["max_abs_diff"].as_f64().unwrap() <= 1e-5, "{name}: {o}");
        }
    }
}

#[test]
fn verify_fails_with_exit_1_above_atol() {
    let out = rudder()
        .args(["model", "verify", "--atol", "1e-9", "--model"])
        .arg(root().join("fixtures/hf-tiny/llama"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}

#[test]
fn verify_with_adapter() {
    let out = rudder()
        .args(["model", "verify", "--json", "--model"])
        .arg(root().join("fixtures/hf-tiny/llama"))
        .arg("--adapter")
        .arg(root().join("fixtures/hf-tiny/llama_lora"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for n in ["out.base_logits", "out.lora_logits", "out.merged_logits"] {
        assert!(names.contains(&n), "{names:?}");
    }
}

#[test]
fn bad_input_exits_2_and_names_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rudder()
        .args(["model", "verify", "--model"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn sft_trains_a_lora_adapter_that_loads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let mut lines = String::new();
    for i in 0..16u32 {
        let toks: Vec<u32> = (0..10).map(|k| 3 + (i * 7 + k * 3) % 400).collect();
        lines.push_str(&serde_json::json!({ "tokens": toks }).to_string());
        lines.push('\n');
    }
    std::fs::write(&data, lines).unwrap();
    let out_dir = tmp.path().join("run");
    let out = rudder()
        .args([
            "train",
            "sft",
            "--lora",
            "--lora-r",
            "4",
            "--steps",
            "6",
            "--batch-size",
            "4",
            "--lr",
            "5e-3",
            "--quiet",
            "--save-every",
            "3",
            "--log-every",
            "3",
            "--model",
        ])
        .arg(root().join("fixtures/hf-tiny/llama"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("step      3") && stdout.contains("loss"),
        "{stdout}"
    );
    // LoRA without dropout on a Llama takes the hand-written backward pass.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gradients: hand-written LoRA backward pass"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("latest"))
            .unwrap()
            .trim(),
        "checkpoint-6"
    );
    // The adapter is in PEFT format and loads onto the base model.
    let out = rudder()
        .args(["model", "intruders", "--json", "--model"])
        .arg(root().join("fixtures/hf-tiny/llama"))
        .arg("--adapter")
        .arg(out_dir.join("adapter"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["matrices"].as_array().unwrap().len(), 4);
    // Bad data names the file and line.
    std::fs::write(&data, "{\"tokens\": [1, 2, 3]}\n{\"tokens\": [1, 99999]}\n").unwrap();
    let out = rudder()
        .args([
            "train", "sft", "--lora", "--steps", "1", "--quiet", "--model",
        ])
        .arg(root().join("fixtures/hf-tiny/llama"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data.jsonl:2") && err.contains("99999"),
        "{err}"
    );
}

#[test]
fn help_shows_examples() {
    for args in [
        vec!["model", "verify", "--help"],
        vec!["train", "sft", "--help"],
        vec!["bench", "loop", "--help"],
    ] {
        let out = rudder().args(&args).output().unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{args:?}"
        );
    }
}

/// `--record`, `--connect` and `--no-viz` belong to the commands that record (`launch`,
/// `steer sweep`): there they work and show in `--help`; every other command refuses them as
/// unknown arguments, and `--help` does not offer them.
#[test]
fn recording_flags_only_on_commands_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let rrd = dir.path().join("after.rrd");
    let out = rudder()
        .current_dir(root())
        .args([
            "launch",
            "tests/golden/tabletop_short.toml",
            "--lockstep",
            "--quiet",
            "--record",
        ])
        .arg(&rrd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&rrd).unwrap().len() > 1000);
    for args in [
        &["sim", "driving", "--scenarios", "1", "--record", "x.rrd"][..],
        &[
            "model",
            "verify",
            "--model",
            "fixtures/hf-tiny/llama",
            "--no-viz",
        ][..],
        &[
            "--record",
            "x.rrd",
            "launch",
            "tests/golden/tabletop_short.toml",
        ][..],
    ] {
        let out = rudder().current_dir(root()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
    }
    for (cmd, offers) in [
        (&["launch", "--help"][..], true),
        (&["steer", "sweep", "--help"][..], true),
        (&["eval", "--help"][..], false),
        (&["sim", "driving", "--help"][..], false),
        (&["train", "vla", "--help"][..], false),
    ] {
        let out = rudder().args(cmd).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(help.contains("--no-viz"), offers, "{cmd:?}: {help}");
        assert_eq!(help.contains("--connect"), offers, "{cmd:?}: {help}");
    }
}

#[test]
fn driving_logs_written_then_scored_from_their_folder() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let out = rudder()
        .args([
            "sim",
            "driving",
            "--scenarios",
            "3",
            "--seed",
            "7",
            "--write-db",
        ])
        .arg(&logs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dbs = std::fs::read_dir(&logs)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "db")
        })
        .count();
    assert_eq!(dbs, 3);
    // The logs score as the generated scenarios they came from, up to the route: a log's
    // route is extracted from the expert's drive (as nuPlan's), the generator's is its lane
    // plan, which may run a lane further, and ego_progress measures along it.
    let score = |extra: &[&str]| {
        let out = rudder()
            .args([
                "sim",
                "driving",
                "--planner",
                "idm",
                "--mode",
                "reactive",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["scenarios"].as_u64().unwrap(),
            v["score"].as_f64().unwrap(),
        )
    };
    let from_logs = score(&["--db", logs.to_str().unwrap()]);
    let generated = score(&["--scenarios", "3", "--seed", "7"]);
    assert_eq!(from_logs.0, 3);
    assert!(
        (from_logs.1 - generated.1).abs() < 5e-3,
        "{from_logs:?} vs {generated:?}"
    );
    // Writing into a folder that already holds them is refused, naming the file.
    let out = rudder()
        .args(["sim", "driving", "--scenarios", "1", "--write-db"])
        .arg(&logs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // An empty folder is an error that says so.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = rudder()
        .args(["sim", "driving", "--db"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *.db log"));
}

#[test]
fn driving_demos_written_from_generated_scenarios_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dd");
    let run = |args: &[&str]| rudder().args(args).output().unwrap();
    let o = run(&[
        "demos",
        "driving",
        "--scenarios",
        "2",
        "--stride",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    // Steps 0, 50, 100 of each 151-step scenario.
    assert_eq!(meta["samples"], 6);
    assert_eq!(meta["scenario_types"].as_object().unwrap().len(), 2);
    // Into a folder that already holds a data set: refused.
    let o = run(&[
        "demos",
        "driving",
        "--scenarios",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a data set"));
    // From logs written by `sim driving --write-db`.
    let logs = dir.path().join("logs");
    assert!(run(&[
        "sim",
        "driving",
        "--scenarios",
        "1",
        "--write-db",
        logs.to_str().unwrap()
    ])
    .status
    .success());
    let out2 = dir.path().join("dd2");
    let o = run(&[
        "demos",
        "driving",
        "--db",
        logs.to_str().unwrap(),
        "--stride",
        "75",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 samples from 1 scenarios"));
    // --stride 0 is refused by the parser.
    let o = run(&[
        "demos",
        "driving",
        "--stride",
        "0",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn diffusion_planner_trains_resumes_scores_benches_and_launches() {
    let dir = tempfile::tempdir().unwrap();
    let p = |x: &str| dir.path().join(x).to_str().unwrap().to_string();
    let run = |args: &[&str]| rudder().args(args).output().unwrap();
    let ok = |o: &std::process::Output| {
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    ok(&run(&[
        "demos",
        "driving",
        "--scenarios",
        "3",
        "--seed",
        "100",
        "--stride",
        "10",
        "--out",
        &p("dd"),
    ]));
    let train = |steps: &str, resume: bool| {
        let mut a = vec![
            "train",
            "planner",
            "--data",
            &p("dd"),
            "--out",
            &p("run"),
            "--steps",
            steps,
            "--hidden",
            "32",
            "--heads",
            "2",
            "--encoder-layers",
            "1",
            "--decoder-layers",
            "1",
            "--batch-size",
            "4",
            "--noise-draws",
            "2",
            "--save-every",
            "10",
            "--quiet",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if resume {
            a.push("--resume".into());
        }
        rudder().args(&a).output().unwrap()
    };
    ok(&train("20", false));
    assert!(dir
        .path()
        .join("run/checkpoint-20/model.safetensors")
        .is_file());
    // Again into the same folder: refused unless resuming; resuming continues the count.
    let o = train("30", false);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--resume"),
        "{o:?}"
    );
    let o = train("30", true);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("at step 20"));
    assert!(dir.path().join("run/checkpoint-30").is_dir());

    // Scored in closed loop beside nothing else: every plan valid, none replaced.
    let o = run(&[
        "sim",
        "driving",
        "--planner",
        "diffusion",
        "--checkpoint",
        &p("run"),
        "--scenarios",
        "2",
        "--solver-steps",
        "3",
        "--sampler",
        "ddim",
        "--json",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["planner"], "diffusion");
    assert_eq!(v["plans"]["fallbacks"], 0);
    assert!(v["plans"]["plans"].as_u64().unwrap() > 200);
    assert!(v["score"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["sampling"]["steps"], 3);
    // Refusals name the flag.
    let o = run(&[
        "sim",
        "driving",
        "--planner",
        "diffusion",
        "--scenarios",
        "1",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--checkpoint"),
        "{o:?}"
    );
    let o = run(&[
        "sim",
        "driving",
        "--planner",
        "diffusion",
        "--checkpoint",
        &p("run"),
        "--sampler",
        "euler",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--sampler"),
        "{o:?}"
    );
    let o = run(&[
        "sim",
        "driving",
        "--planner",
        "diffusion",
        "--checkpoint",
        &p("dd"),
        "--scenarios",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("planner"),
        "{o:?}"
    );

    // Latency figures.
    let o = run(&[
        "bench",
        "planner",
        "--checkpoint",
        &p("run"),
        "--runs",
        "5",
        "--solver-steps",
        "5",
        "--json",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["runs"], 5);
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

    // The wall-clock loop from a launch file.
    let lf = dir.path().join("driving.toml");
    std::fs::write(
        &lf,
        format!(
            "[embodiment]\nkind = \"sim.driving\"\n[scenarios]\ntypes = [\"following_lane_with_lead\"]\n\
             count = 1\nseed = 7\nmode = \"closed_loop_nonreactive\"\n[policy]\nkind = \"diffusion\"\n\
             checkpoint = \"{}\"\nsolver_steps = 3\n[control]\nrate_hz = 50.0\n",
            p("run")
        ),
    )
    .unwrap();
    let o = run(&[
        "launch",
        lf.to_str().unwrap(),
        "--quiet",
        "--record",
        &p("d.rrd"),
    ]);
    ok(&o);
    assert!(dir.path().join("d.rrd").is_file());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("wall-clock loop at 50 Hz") && out.contains("planner diffusion"),
        "{out}"
    );
}
