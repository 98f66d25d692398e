//! `rudder sim ur5-driver` and `rudder launch launch/ur5.toml` as two processes talking only
//! over real ROS 2 (feature `ros2`; run by scripts/test-ros2.sh with the PyPI Jazzy env), with
//! each of the three command interfaces of the UR driver.
#![cfg(feature = "ros2")]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Kills the process when dropped, so a failing assertion leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rudder(domain: u32) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rudder"));
    c.current_dir(root())
        .env("ROS_DOMAIN_ID", domain.to_string())
        .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST");
    c
}

fn domain(n: u32) -> u32 {
    1 + (std::process::id() * 7 + n * 41 + 53) % 200
}

/// One run of driver + launch in a fresh domain: `Err` says what went wrong, with both sides'
/// reports.
fn attempt(n: u32, controller: &str) -> Result<(), String> {
    let d = domain(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = std::fs::read_to_string(root().join("launch/ur5.toml")).expect("ur5.toml");
    let src = src.replace(
        "controller = \"scaled_joint_trajectory_controller\"",
        &format!("controller = \"{controller}\""),
    );
    let file = dir.path().join("ur5.toml");
    std::fs::write(&file, src).expect("write launch file");
    let mut driver = Proc(
        rudder(d)
            .args([
                "sim",
                "ur5-driver",
                "--camera-size",
                "0",
                "--exit-when-done",
                "--timeout",
                "120",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("driver starts"),
    );
    let launch = rudder(d)
        .args([
            "launch",
            file.to_str().expect("utf-8"),
            "--no-viz",
            "--quiet",
        ])
        .output()
        .expect("launch runs");
    let out = String::from_utf8_lossy(&launch.stdout).to_string();
    let err = String::from_utf8_lossy(&launch.stderr).to_string();
    if !launch.status.success() {
        // The driver's side of the story (its outcome, commands received and refused).
        let _ = driver.0.kill();
        let _ = driver.0.wait();
        let mut text = String::new();
        if let Some(mut so) = driver.0.stdout.take() {
            let _ = so.read_to_string(&mut text);
        }
        return Err(format!(
            "{controller}: launch failed\n{out}\n{err}\ndriver:\n{text}"
        ));
    }
    if !out.contains("task done") {
        return Err(format!("{controller}: no `task done`:\n{out}"));
    }
    // The driver decides the real outcome and exits once the task is done.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = driver.0.try_wait().expect("driver status") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("{controller}: the driver did not finish"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = String::new();
    if let Some(mut so) = driver.0.stdout.take() {
        let _ = so.read_to_string(&mut text);
    }
    if !(status.success() && text.contains("SUCCESS")) {
        return Err(format!("{controller}: driver: {text}\nlaunch:\n{out}"));
    }
    // The loop ran at the UR5's rate.
    if !out.contains("@ 125 Hz") {
        return Err(format!("{controller}: not at 125 Hz:\n{out}"));
    }
    Ok(())
}

/// Two processes over real DDS on a shared 2-core CI machine. A run that stalled there once
/// (never in 40 runs here, with load, CPU quotas, UDP-only DDS) is reported with both sides'
/// figures and retried once in a fresh domain; two failures in a row fail the test.
fn closed_loop(n: u32, controller: &str) {
    let Err(first) = attempt(n, controller) else {
        return;
    };
    eprintln!("first attempt failed, retrying once in a fresh domain:\n{first}");
    if let Err(second) = attempt(n + 3, controller) {
        panic!("failed twice.\nfirst:\n{first}\nsecond:\n{second}");
    }
}

#[test]
fn ur5_launch_completes_the_task_over_ros2_with_scaled_trajectories() {
    closed_loop(0, "scaled_joint_trajectory_controller");
}

#[test]
fn ur5_launch_completes_the_task_over_ros2_with_forward_velocities() {
    closed_loop(1, "forward_velocity_controller");
}

#[test]
fn ur5_launch_without_a_driver_says_what_to_start() {
    let d = domain(2);
    let out = rudder(d)
        .args(["launch", "launch/ur5.toml", "--no-viz", "--quiet"])
        .output()
        .expect("launch runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ur5-driver"), "{err}");
}

/// A VLA checkpoint drives the arm over ROS 2 (cameras from the driver's image topics, LIBERO's
/// state from the joint states), and `/rudder/steering` messages from an rclpy node set the
/// launch file's steering cluster while it runs.
#[test]
fn ur5_launch_runs_a_vla_checkpoint_steered_live_over_ros2() {
    let d = domain(9);
    let tmp = tempfile::tempdir().expect("tempdir");
    let ckpt = common::tiny_checkpoint(tmp.path(), rudder_policy::train::ModelSpec::tiny());
    let dict = common::layer0_dictionary(tmp.path());
    let src = std::fs::read_to_string(root().join("launch/ur5.toml")).expect("ur5.toml");
    let src = src
        .replace("camera_size = 0", "camera_size = 32")
        .replace(
            "kind = \"scripted\"",
            &format!("kind = \"checkpoint\"\ncheckpoint = \"{}\"", ckpt.display()),
        )
        .replace("timeout_s = 90.0", "timeout_s = 60.0\nmax_ticks = 750")
        + &format!(
            "\n[steering]\nenabled = true\ndictionary = \"{}\"\nalphas = {{ all_l0 = 0.0 }}\n",
            dict.display()
        );
    let file = tmp.path().join("ur5_vla.toml");
    std::fs::write(&file, src).expect("write launch file");
    let _driver = Proc(
        rudder(d)
            .args([
                "sim",
                "ur5-driver",
                "--camera-size",
                "32",
                "--timeout",
                "90",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("driver starts"),
    );
    let python = std::env::var("ROS2_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut publisher = Proc(
        Command::new(python)
            .arg(root().join("tests/ros2/steer_pub.py"))
            .args(["60", "7.5"])
            .env("ROS_DOMAIN_ID", d.to_string())
            .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rclpy publisher starts (is the ROS 2 env sourced?)"),
    );
    let mut ready = [0u8; 5];
    publisher
        .0
        .stdout
        .as_mut()
        .expect("publisher stdout")
        .read_exact(&mut ready)
        .expect("publisher says READY");
    assert_eq!(&ready, b"READY");
    let launch = rudder(d)
        .args([
            "launch",
            file.to_str().expect("utf-8"),
            "--no-viz",
            "--quiet",
        ])
        .output()
        .expect("launch runs");
    let out = String::from_utf8_lossy(&launch.stdout).to_string();
    let err = String::from_utf8_lossy(&launch.stderr).to_string();
    assert!(launch.status.success(), "launch failed:\n{out}\n{err}");
    assert!(out.contains("VLA checkpoint: ran to its limit"), "{out}");
    let ticks: u64 = out
        .split("Hz: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ticks >= 750, "the loop did not run to max_ticks:\n{out}");
    assert!(
        out.contains("final alphas all_l0=7.5"),
        "the ROS 2 steering message was not applied:\n{out}"
    );
    let updates: u64 = out
        .split("steering: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(updates >= 1, "no steering update counted:\n{out}");
    // The VLA ran: chunks were received from the model (not only holds).
    let chunks: u64 = out
        .split("chunks ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(chunks > 0, "no chunk from the VLA:\n{out}");
}
