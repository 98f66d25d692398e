//! Observation-to-command latency over loopback DDS and the control loop's period error with
//! ROS 2 in the loop, at 125 and 500 Hz: robot's control loop + `Ros2Ur5` drive the simulated
//! UR5 driver with a swaying joint-space policy.
//!
//! `source scripts/setup-ros2.sh && CARGO_TARGET_DIR=target-ros2 cargo run --release -p rudder-sim
//!  --features ros2 --example ros2_loop_timing -- 10`

#[cfg(feature = "ros2")]
fn main() {
    imp::main()
}

#[cfg(not(feature = "ros2"))]
fn main() {
    eprintln!("ros2_loop_timing needs `--features ros2` (see robot/README.md)");
}

#[cfg(feature = "ros2")]
mod imp {
    use rudder_robot::ros2::{Ros2Ur5, Ros2Ur5Config};
    use rudder_robot::{
        Action, ActionChunk, ActionSpace, ControlConfig, ControlLoop, Observation, Policy,
        PolicyError, Ur5Model,
    };
    use rudder_sim::ros2_driver::{run_sim_driver, SimDriverConfig};
    use rudder_sim::tabletop::{load_suite, Suite, TabletopEnv};
    use std::time::Duration;

    struct Sway;
    impl Policy for Sway {
        fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
            std::thread::sleep(Duration::from_millis(30));
            let q0 = obs
                .state
                .get(..6)
                .ok_or(PolicyError::Inference("state".into()))?;
            let actions = (0..20)
                .map(|k| Action::JointPositions {
                    q: q0
                        .iter()
                        .map(|q| q + 0.02 * ((obs.timestamp + k as f64 * 0.05) * 3.0).sin())
                        .collect(),
                    gripper: None,
                })
                .collect();
            ActionChunk::new(
                ActionSpace::JointPositions { dof: 6 },
                obs.timestamp,
                0.05,
                actions,
            )
            .map_err(|e| PolicyError::Inference(e.to_string()))
        }
    }

    fn pct(v: &mut [f64], p: f64) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }

    pub fn main() {
        let secs: f64 = std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(10.0);
        let domain = 150 + std::process::id() % 50;
        std::env::set_var("ROS_DOMAIN_ID", domain.to_string());
        std::env::set_var("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST");
        let Some(task) = load_suite(Suite::Spatial)
            .ok()
            .and_then(|s| s.into_iter().next())
        else {
            eprintln!("no embedded suite");
            return;
        };
        for (rate, model) in [(125.0, Ur5Model::ur5()), (500.0, Ur5Model::ur5e())] {
            let env = match TabletopEnv::new(&task, 1, 0, None) {
                Ok(e) => e,
                Err(e) => return eprintln!("env: {e}"),
            };
            let dcfg = SimDriverConfig {
                rate_hz: rate,
                cameras: vec![],
                ..SimDriverConfig::default()
            };
            let driver = match run_sim_driver(env, dcfg) {
                Ok(d) => d,
                Err(e) => return eprintln!("driver: {e}"),
            };
            let mut cfg = Ros2Ur5Config::ur5(model);
            cfg.rate_hz = rate;
            cfg.gripper_joint = Some("gripper".into());
            let arm = match Ros2Ur5::connect(cfg) {
                Ok(a) => a,
                Err(e) => return eprintln!("connect: {e}"),
            };
            let h = arm.handle();
            let lp = match ControlLoop::start(arm, Sway, ControlConfig::ur5(model, rate)) {
                Ok(l) => l,
                Err(e) => return eprintln!("loop: {e}"),
            };
            std::thread::sleep(Duration::from_secs_f64(secs));
            let m = match lp.stop() {
                Ok((_, m)) => m,
                Err(e) => return eprintln!("stop: {e}"),
            };
            drop(driver);
            let mut lat = h.latency_samples();
            let mut tr = h.transit_samples();
            println!(
                "{rate} Hz: /joint_states DDS transit p50 {:.3} ms p99 {:.3} ms (n={})",
                pct(&mut tr, 0.5) * 1e3,
                pct(&mut tr, 0.99) * 1e3,
                tr.len()
            );
            println!(
                "{rate} Hz over ROS 2 ({secs} s): obs->command latency p50 {:.3} ms p99 {:.3} ms \
                 max {:.3} ms (n={}); loop period error p50 {:.1} us p99 {:.1} us max {:.1} us; \
                 missed ticks {}, ticks {}, holds {:?}",
                pct(&mut lat, 0.5) * 1e3,
                pct(&mut lat, 0.99) * 1e3,
                pct(&mut lat, 1.0) * 1e3,
                lat.len(),
                m.period_error_us.p50,
                m.period_error_us.p99,
                m.period_error_us.max,
                m.missed_ticks,
                m.ticks,
                m.holds,
            );
        }
    }
}
