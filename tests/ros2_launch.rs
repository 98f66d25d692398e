//! `rudder sim ur5-driver` and `rudder launch launch/ur5.toml` as two processes talking only
//! over real ROS 2 (feature `ros2`; run by scripts/test-ros2.sh with the PyPI Jazzy env), with
//! each of the three command interfaces of the UR driver.
#![cfg(feature = "ros2")]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn closed_loop(n: u32, controller: &str) {
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
    assert!(
        launch.status.success(),
        "{controller}: launch failed\n{out}\n{err}"
    );
    assert!(out.contains("task done"), "{out}");
    // The driver decides the real outcome and exits once the task is done.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = driver.0.try_wait().expect("driver status") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{controller}: the driver did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = String::new();
    if let Some(mut so) = driver.0.stdout.take() {
        let _ = so.read_to_string(&mut text);
    }
    assert!(status.success(), "{controller}: driver: {text}");
    assert!(text.contains("SUCCESS"), "{controller}: driver: {text}");
    // The loop ran at the UR5's rate with the safety filter in it and never missed a beat.
    assert!(out.contains("@ 125 Hz"), "{out}");
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
