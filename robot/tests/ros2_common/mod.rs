//! Shared by the ROS 2 tests: one ROS domain per test, rclpy peers killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);
const CHILD: &str = "RUDDER_ROS2_TEST_CHILD";

/// This test's ROS domain (r2r has one context per process, so each test runs in a process of
/// its own: see [`isolated`]).
pub struct Domain {
    pub id: u32,
}

/// Runs `body` in a child process (this test binary, filtered to `name`) with a fresh
/// `ROS_DOMAIN_ID` and loopback-only discovery, one test at a time; fails if the child fails.
/// In the child, runs `body` directly.
pub fn isolated(name: &str, body: impl FnOnce(&Domain)) {
    if std::env::var(CHILD).as_deref() == Ok(name) {
        let id = std::env::var("ROS_DOMAIN_ID")
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("child has a domain");
        body(&Domain { id });
        return;
    }
    let _guard: MutexGuard<'static, ()> = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = 1 + (std::process::id() * 13 + n * 37) % 200;
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env("ROS_DOMAIN_ID", id.to_string())
        .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        .spawn()
        .expect("starting the test child");
    let t0 = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: timed out in domain {id}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "{name} failed in ROS domain {id}: {status}"
    );
}

/// A python process, killed (and reaped) on drop.
pub struct Peer {
    child: Child,
    pub stdout: BufReader<ChildStdout>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("ROS2_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Starts `script args...` from robot/tests/ros2_py and waits for its READY line.
pub fn peer(dom: &Domain, script: &str, args: &[&str]) -> Peer {
    let path = format!("{}/tests/ros2_py/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .env("ROS_DOMAIN_ID", dom.id.to_string())
        .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {path}: {e}"));
    let out = child.stdout.take().expect("piped stdout");
    let mut p = Peer {
        child,
        stdout: BufReader::new(out),
    };
    let line = p.line(Duration::from_secs(20));
    assert_eq!(line.trim(), "READY", "peer {script} {args:?} did not start");
    p
}

impl Peer {
    /// The next stdout line (blocking; the peers exit on their own deadline).
    pub fn line(&mut self, _max: Duration) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_line(&mut s);
        s
    }
}

/// Polls `f` every millisecond until it is true or `secs` pass.
pub fn wait_for(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f()
}

pub const NAMES: [&str; 6] = [
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
];
/// What peer.py publishes.
pub const POS: [f64; 6] = [0.25, -1.25, 1.5, -0.75, 1.0, 0.5];
pub const W: u32 = 8;
pub const H: u32 = 6;

/// peer.py's image, row padding stripped.
pub fn peer_image() -> Vec<u8> {
    let step = (W * 3 + 2) as usize;
    let raw: Vec<u8> = (0..step * H as usize)
        .map(|i| ((i * 7 + 3) % 256) as u8)
        .collect();
    let mut out = Vec::new();
    for y in 0..H as usize {
        out.extend_from_slice(&raw[y * step..y * step + W as usize * 3]);
    }
    out
}
