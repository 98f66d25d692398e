//! Closed loop over real ROS 2: robot's control loop with a scripted tabletop expert drives
//! `Ros2SimDriver` only through topics (feature `ros2`; run by scripts/test-ros2.sh).
#![cfg(feature = "ros2")]

use rudder_robot::ros2::{CameraTopic, Ros2Ur5, Ros2Ur5Config};
use rudder_robot::{
    Action, ActionChunk, ActionSpace, ControlConfig, ControlLoop, Observation, Policy, PolicyError,
    Ur5Model,
};
use rudder_sim::ros2_driver::{run_sim_driver, SimDriverConfig};
use rudder_sim::tabletop::{load_suite, CameraConfig, Expert, Suite, TabletopEnv, Task};
use std::time::{Duration, Instant};

/// The scripted expert as a policy. It sees the arm only through the observation (joint
/// positions from `/joint_states`); its knowledge of the objects is a private copy of the
/// scene it re-poses to the observed joints at every step (a stand-in for perception).
struct ExpertPolicy {
    shadow: TabletopEnv,
    expert: Expert,
    grip: f64,
    last: Option<Instant>,
}

impl Policy for ExpertPolicy {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        // The expert is a 20 Hz controller: one step per 50 ms.
        if let Some(t) = self.last {
            let wait = Duration::from_millis(50).saturating_sub(t.elapsed());
            std::thread::sleep(wait);
        }
        self.last = Some(Instant::now());
        let q: [f64; 6] = obs.state.get(..6).and_then(|s| s.try_into().ok()).ok_or(
            PolicyError::BadObservation {
                field: "state",
                reason: format!("{} values, need 6 joints first", obs.state.len()),
            },
        )?;
        self.shadow
            .command_joints(&q, Some(self.grip))
            .map_err(PolicyError::Inference)?;
        let a = self.expert.act(&self.shadow);
        self.grip = a[6];
        self.shadow.step(&a);
        let target = Action::JointPositions {
            q: self.shadow.joints().to_vec(),
            gripper: Some(a[6]),
        };
        ActionChunk::new(
            ActionSpace::JointPositions { dof: 6 },
            obs.timestamp + 0.05,
            0.05,
            vec![target; 3],
        )
        .map_err(|e| PolicyError::Inference(e.to_string()))
    }
}

fn task(id: &str) -> Task {
    load_suite(Suite::Spatial)
        .expect("suite")
        .into_iter()
        .find(|t| t.id == id)
        .expect("task")
}

fn domain(n: u32) -> u32 {
    let id = 1 + (std::process::id() * 13 + n * 37 + 101) % 200;
    std::env::set_var("ROS_DOMAIN_ID", id.to_string());
    std::env::set_var("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST");
    id
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

#[test]
fn expert_completes_a_tabletop_task_through_ros2_only() {
    domain(0);
    let t = task("spatial_between_plate_ramekin");
    let (seed, k) = (7, 0);
    let cams = CameraConfig {
        width: 32,
        height: 24,
    };
    let env = TabletopEnv::new(&t, seed, k, Some(cams)).expect("env");
    let instruction = env.instruction().to_string();
    let dcfg = SimDriverConfig {
        budget_scale: 4.0,
        ..SimDriverConfig::default()
    };
    let driver = run_sim_driver(env, dcfg).expect("driver");

    let mut cfg = Ros2Ur5Config::ur5(Ur5Model::ur5());
    cfg.node_name = "rudder_policy_side".into();
    cfg.gripper_joint = Some("gripper".into());
    cfg.gripper_topic = Some(rudder_robot::ros2::topics::GRIPPER_COMMAND.into());
    cfg.cameras = vec![CameraTopic {
        name: "agentview".into(),
        topic: "/camera/agentview/image_raw".into(),
    }];
    cfg.instruction = instruction;
    let arm = Ros2Ur5::connect(cfg).expect("connects to the simulated driver");
    let h = arm.handle();
    let shadow = TabletopEnv::new(&t, seed, k, None)
        .expect("shadow env")
        .without_audit();
    let policy = ExpertPolicy {
        expert: Expert::new(&shadow),
        shadow,
        grip: -1.0,
        last: None,
    };
    let mut lc = ControlConfig::ur5(Ur5Model::ur5(), 125.0);
    lc.watchdog.inference_timeout = 1.0;
    let lp = ControlLoop::start(arm, policy, lc).expect("loop");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) && !driver.status().done {
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = driver.status();
    let (_arm, m) = lp.stop().expect("loop stops");
    let env = driver.stop().expect("driver stops");
    let mut lat = h.latency_samples();
    let tcp = env.tcp();
    eprintln!("final tcp {tcp:?}");
    eprintln!(
        "closed loop: success={} in {:.1} s, env steps {}, driver ticks {}, commands {} \
         (refused {}), loop ticks {}, period error p50/p99/max {:?} us, \
         obs->command latency p50 {:.3} ms p99 {:.3} ms ({} samples), holds {:?}",
        st.success,
        t0.elapsed().as_secs_f64(),
        st.env_steps,
        st.ticks,
        st.commands_received,
        st.commands_refused,
        m.ticks,
        m.period_error_us,
        pct(&mut lat, 0.5) * 1e3,
        pct(&mut lat, 0.99) * 1e3,
        lat.len(),
        m.holds
    );
    assert!(env.success(), "task not completed over ROS 2: {st:?}");
    assert_eq!(m.violations.total(), 0, "{:?}", m.violations);
    assert_eq!(st.commands_refused, 0);
    assert_eq!(h.counts().joint_states_rejected, 0);
}
