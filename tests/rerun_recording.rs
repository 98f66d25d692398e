//! Recordings checked with the real Rerun tool (rerun-sdk 0.36.3, installed by
//! scripts/setup-rerun.sh into .venv-rerun; `RUDDER_RERUN_VENV` overrides the place):
//! `rerun rrd verify`, a Python read-back of logged values, `rerun rrd compare` against the
//! committed golden file (regenerate on purpose with `RUDDER_REGEN_GOLDEN=1`), and streaming to
//! a `rerun --save` gRPC server with `--connect`.
//!
//! These tests fail (they do not skip) when the venv is missing: CI runs the setup script.

use rudder::launchfile::run::{run, RunOptions};
use rudder::launchfile::LaunchFile;
use rudder::viz::{Sink, VizOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv() -> PathBuf {
    let v = std::env::var_os("RUDDER_RERUN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-rerun"));
    assert!(
        v.join("bin/python").exists(),
        "the Rerun venv is missing at {}: run `bash scripts/setup-rerun.sh` first \
         (scripts/test.sh does; set RUDDER_RERUN_VENV to use another place)",
        v.display()
    );
    v
}

/// The real CLI binary shipped in the wheel (the `rerun` on PATH is a Python wrapper).
fn rerun_bin() -> PathBuf {
    let lib = venv().join("lib");
    let found = std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/rerun_sdk/rerun_cli/rerun"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "no rerun binary under {}/python*/site-packages/rerun_sdk/rerun_cli: run \
             `bash scripts/setup-rerun.sh`",
            lib.display()
        )
    })
}

/// Keeps the CLI's config, cache and analytics inside a temp folder.
fn tool(bin: &Path, xdg: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("XDG_CONFIG_HOME", xdg.join("config"))
        .env("XDG_CACHE_HOME", xdg.join("cache"))
        .env("XDG_DATA_HOME", xdg.join("data"))
        .env("RERUN_TELEMETRY_ENABLED", "false");
    c
}

fn ok(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rerun_cli(xdg: &Path, args: &[&str]) -> Output {
    let bin = rerun_bin();
    let _ = tool(&bin, xdg).args(["analytics", "disable"]).output();
    ok(
        &format!("rerun {}", args.join(" ")),
        tool(&bin, xdg).args(args).output(),
    )
}

fn rudder(args: &[&str]) -> Output {
    ok(
        &format!("rudder {}", args.join(" ")),
        Command::new(env!("CARGO_BIN_EXE_rudder"))
            .current_dir(root())
            .args(args)
            .output(),
    )
}

const GOLDEN_LAUNCH: &str = "tests/golden/tabletop_short.toml";
const GOLDEN_RRD: &str = "tests/golden/tabletop_short.rrd";

fn lockstep_recording(out: &Path) {
    let out = out.to_str().expect("utf-8 temp path");
    rudder(&[
        "launch",
        GOLDEN_LAUNCH,
        "--lockstep",
        "--quiet",
        "--recording-id",
        "rudder-golden",
        "--no-blueprint",
        "--record",
        out,
    ]);
}

#[test]
fn lockstep_recording_verifies_and_matches_the_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.rrd");
    let b = dir.path().join("b.rrd");
    lockstep_recording(&a);
    lockstep_recording(&b);
    let (sa, sb) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
    rerun_cli(dir.path(), &["rrd", "verify", sa]);
    // Two runs give the same content.
    // `--unordered`: the SDK's batcher may cut chunks differently from run to run.
    rerun_cli(dir.path(), &["rrd", "compare", "--unordered", sa, sb]);
    let printed = rerun_cli(dir.path(), &["rrd", "print", sa]);
    let text = String::from_utf8_lossy(&printed.stdout).to_string()
        + &String::from_utf8_lossy(&printed.stderr);
    for entity in [
        "/world/arm/links",
        "/world/arm/frame_6",
        "/world/arm/gripper",
        "/world/objects",
        "/world/plan/chunk",
        "/world/ee_trace",
        "/cameras/agentview",
        "/cameras/wrist",
        "/joints/shoulder_lift_joint/commanded",
        "/joints/shoulder_lift_joint/measured",
        "/safety/clamped_commands",
        "/task/instruction",
        "/task/result",
    ] {
        assert!(
            text.contains(entity),
            "{entity} missing from `rrd print`:\n{text}"
        );
    }
    let golden = root().join(GOLDEN_RRD);
    if std::env::var("RUDDER_REGEN_GOLDEN").as_deref() == Ok("1") {
        std::fs::copy(&a, &golden).expect("write the golden file");
        eprintln!("regenerated {}", golden.display());
    }
    assert!(
        golden.exists(),
        "{} is missing: regenerate it on purpose with RUDDER_REGEN_GOLDEN=1",
        golden.display()
    );
    rerun_cli(
        dir.path(),
        &[
            "rrd",
            "compare",
            "--unordered",
            sa,
            golden.to_str().expect("utf-8"),
        ],
    );
}

#[test]
fn a_flipped_value_fails_the_comparison() {
    // `rrd compare` is the check that catches a changed value (verify alone would not).
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.rrd");
    lockstep_recording(&a);
    let src = std::fs::read_to_string(root().join(GOLDEN_LAUNCH)).expect("launch file");
    let changed = dir.path().join("changed.toml");
    std::fs::write(&changed, src.replace("max_ticks = 40", "max_ticks = 39")).expect("write");
    let b = dir.path().join("b.rrd");
    rudder(&[
        "launch",
        changed.to_str().expect("utf-8"),
        "--lockstep",
        "--quiet",
        "--recording-id",
        "rudder-golden",
        "--record",
        b.to_str().expect("utf-8"),
    ]);
    let bin = rerun_bin();
    let out = tool(&bin, dir.path())
        .args(["rrd", "compare", "--unordered"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("rerun runs");
    assert!(!out.status.success(), "different recordings compared equal");
}

#[test]
fn python_reads_back_the_joint_angles_the_loop_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rrd = dir.path().join("readback.rrd");
    let lf = LaunchFile::load(&root().join(GOLDEN_LAUNCH)).expect("launch file");
    let opts = RunOptions {
        viz: Some(VizOptions {
            sink: Sink::File(rrd.clone()),
            application_id: "rudder".into(),
            recording_id: Some("rudder-readback".into()),
            wall_time: false,
            blueprint: false,
        }),
        episodes: 1,
        lockstep: true,
        progress: false,
    };
    let report = run(&lf, &opts).expect("run");
    let measured = &report.episodes[0].measured;
    assert_eq!(measured.len(), 40);
    let python = venv().join("bin/python");
    let script = root().join("tests/golden/readback.py");
    for (k, joint, j) in [
        (25usize, "shoulder_lift_joint", 1usize),
        (39, "elbow_joint", 2),
    ] {
        let out = ok(
            "readback.py",
            Command::new(&python)
                .arg(&script)
                .arg(&rrd)
                .arg(format!("/joints/{joint}/measured"))
                .arg("tick")
                .arg(k.to_string())
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .env("XDG_CACHE_HOME", dir.path().join("cache"))
                .env("XDG_DATA_HOME", dir.path().join("data"))
                .env("RERUN_TELEMETRY_ENABLED", "false")
                .output(),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let read: f64 = text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("readback printed {text:?}: {e}"));
        assert_eq!(
            read.to_bits(),
            measured[k][j].to_bits(),
            "{joint} at tick {k}: recording {read}, loop {}",
            measured[k][j]
        );
    }
}

#[test]
fn real_time_launch_writes_a_valid_recording() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rrd = dir.path().join("rt.rrd");
    let out = rudder(&[
        "launch",
        GOLDEN_LAUNCH,
        "--quiet",
        "--record",
        rrd.to_str().expect("utf-8"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("loop @ 20 Hz"), "{stdout}");
    assert!(stdout.contains("logging on the control thread"), "{stdout}");
    assert!(stdout.contains("0 records dropped"), "{stdout}");
    rerun_cli(dir.path(), &["rrd", "verify", rrd.to_str().expect("utf-8")]);
    let printed = rerun_cli(dir.path(), &["rrd", "print", rrd.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&printed.stdout);
    for entity in [
        "/timing/period_error_us",
        "/timing/inference_latency_ms",
        "/joints/wrist_1_joint/measured",
    ] {
        assert!(text.contains(entity), "{entity} missing:\n{text}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Kills the child when dropped, so a failing assertion does not leave a server behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--connect` streams to a running gRPC server: `rerun --save` listens like a viewer does and
/// writes what arrives to a file, which must then hold the same joint angles the loop logged.
#[test]
fn connect_streams_to_a_grpc_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = rerun_bin();
    let _ = tool(&bin, dir.path())
        .args(["analytics", "disable"])
        .output();
    let port = free_port();
    let saved = dir.path().join("received.rrd");
    let mut server = Child(
        tool(&bin, dir.path())
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--save")
            .arg(&saved)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rerun --save starts"),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rerun --save did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("rerun+http://127.0.0.1:{port}/proxy");
    let out = rudder(&[
        "launch",
        GOLDEN_LAUNCH,
        "--lockstep",
        "--quiet",
        "--connect",
        &url,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("streamed to"), "{stdout}");
    assert!(stdout.contains("0 records dropped"), "{stdout}");
    // The same run recorded to a file gives the values the stream must carry.
    let lf = LaunchFile::load(&root().join(GOLDEN_LAUNCH)).expect("launch file");
    let opts = RunOptions {
        viz: None,
        episodes: 1,
        lockstep: true,
        progress: false,
    };
    let measured = run(&lf, &opts).expect("run").episodes[0].measured.clone();
    let python = venv().join("bin/python");
    let script = root().join("tests/golden/readback.py");
    let read = |k: usize, joint: &str| -> Option<f64> {
        let out = Command::new(&python)
            .arg(&script)
            .arg(&saved)
            .arg(format!("/joints/{joint}/measured"))
            .arg("tick")
            .arg(k.to_string())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("RERUN_TELEMETRY_ENABLED", "false")
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    // The server writes as data arrives; wait until the last tick is there.
    let last = measured.len() - 1;
    let start = Instant::now();
    let mut got = None;
    while start.elapsed() < Duration::from_secs(30) {
        got = read(last, "elbow_joint");
        if got.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = server.0.kill();
    let _ = server.0.wait();
    let got = got.unwrap_or_else(|| panic!("tick {last} never reached {}", saved.display()));
    assert_eq!(got.to_bits(), measured[last][2].to_bits());
    let first = read(0, "shoulder_lift_joint").expect("tick 0 received");
    assert_eq!(first.to_bits(), measured[0][1].to_bits());
}

/// A driving launch records the map, agents, the ego's plan and trace and nuPlan's metrics; the
/// final score read back with the Rerun SDK equals the one the run reports.
#[test]
fn driving_recording_holds_the_scene_and_the_reported_scores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("drive.toml");
    std::fs::write(
        &file,
        "[embodiment]\nkind = \"sim.driving\"\n[scenarios]\n\
         types = [\"following_lane_with_lead\", \"waiting_for_pedestrian_to_cross\"]\n\
         count = 1\nseed = 7\n[policy]\nkind = \"scripted\"\nplanner = \"idm\"\n",
    )
    .expect("write launch file");
    let rrd = dir.path().join("drive.rrd");
    let out = rudder(&[
        "launch",
        file.to_str().expect("utf-8"),
        "--quiet",
        "--record",
        rrd.to_str().expect("utf-8"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 scenarios"), "{stdout}");
    let srrd = rrd.to_str().expect("utf-8");
    rerun_cli(dir.path(), &["rrd", "verify", srrd]);
    let printed = rerun_cli(dir.path(), &["rrd", "print", srrd]);
    let text = String::from_utf8_lossy(&printed.stdout);
    for entity in [
        "/world/map/lane_centerlines",
        "/world/map/drivable_area",
        "/world/agents",
        "/world/ego",
        "/world/ego_plan",
        "/world/ego_executed",
        "/metrics/score",
        "/metrics/ego_progress",
        "/scenario/result",
    ] {
        assert!(text.contains(entity), "{entity} missing:\n{text}");
    }
    let lf = LaunchFile::load(&file).expect("launch file");
    let report = rudder::launchfile::driving::run_driving(&lf, None, false, false).expect("run");
    assert_eq!(report.scenarios.len(), 2);
    let python = venv().join("bin/python");
    let script = root().join("tests/golden/readback.py");
    // Scenario i's final metrics sit one step after its last sample.
    let mut step = 0;
    for s in &report.scenarios {
        step += s.samples;
        let out = ok(
            "readback.py",
            Command::new(&python)
                .arg(&script)
                .arg(&rrd)
                .arg("/metrics/score")
                .arg("step")
                .arg(step.to_string())
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .env("XDG_CACHE_HOME", dir.path().join("cache"))
                .env("XDG_DATA_HOME", dir.path().join("data"))
                .env("RERUN_TELEMETRY_ENABLED", "false")
                .output(),
        );
        let read: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a number");
        assert_eq!(
            read.to_bits(),
            s.metrics.score.to_bits(),
            "{}: recording {read}, run {}",
            s.token,
            s.metrics.score
        );
        step += 1;
    }
}

/// A launch file with `[reward]`: the classifier's P(success), its verdict and the simulator's
/// truth land in the recording on the episode's timeline, and the report compares them.
#[test]
fn reward_classifier_is_recorded_beside_the_simulator_truth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let (data, run, rrd, toml) = (p("data"), p("run"), p("reward.rrd"), p("reward.toml"));
    rudder(&[
        "reward",
        "data",
        "--suite",
        "spatial",
        "--train-inits",
        "1",
        "--val-inits",
        "1",
        "--test-inits",
        "1",
        "--size",
        "16",
        "--out",
        &data,
        "--quiet",
    ]);
    rudder(&[
        "train",
        "reward",
        "--data",
        &data,
        "--out",
        &run,
        "--steps",
        "4",
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
    ]);
    let launch = std::fs::read_to_string(root().join(GOLDEN_LAUNCH)).expect("golden launch file");
    std::fs::write(&toml, format!("{launch}\n[reward]\nmodel = \"{run}\"\n")).expect("write");
    let out = rudder(&["launch", &toml, "--lockstep", "--quiet", "--record", &rrd]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("reward classifier: final verdict agrees with the simulator in")
            && stdout.contains("predicate true"),
        "{stdout}"
    );
    rerun_cli(dir.path(), &["rrd", "verify", &rrd]);
    let printed = rerun_cli(dir.path(), &["rrd", "print", &rrd]);
    let text = String::from_utf8_lossy(&printed.stdout);
    for entity in [
        "/reward/p_success",
        "/reward/classifier_says_done",
        "/reward/simulator_success",
    ] {
        assert!(text.contains(entity), "{entity} missing:\n{text}");
    }
}
