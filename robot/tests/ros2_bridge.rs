//! rudder-robot's ROS 2 bridge against real rclpy peers (needs the `ros2` feature and a
//! sourced ROS 2 Jazzy: scripts/test-ros2.sh).
#![cfg(feature = "ros2")]

mod ros2_common;

use ros2_common::*;
use rudder_robot::ros2::{CameraTopic, CommandMode, InputError, Ros2Error, Ros2Ur5, Ros2Ur5Config};
use rudder_robot::{
    Action, ActionChunk, ActionSpace, ControlConfig, ControlLoop, Embodiment, HoldReason,
    JointCommand, LoopState, Observation, Policy, PolicyError, Ur5Model,
};
use std::time::Duration;

fn cfg(mode: CommandMode) -> Ros2Ur5Config {
    let mut c = Ros2Ur5Config::ur5(Ur5Model::ur5());
    c.tf_prefix = "ur_".into();
    c.cameras = vec![CameraTopic {
        name: "agentview".into(),
        topic: "/camera/rgb".into(),
    }];
    c.command = mode;
    c.connect_timeout = Duration::from_secs(15);
    c
}

/// peer.py prints floats as Python repr() strings; Rust's parser rounds them exactly.
fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_str().expect("repr string").parse().expect("float"))
        .collect()
}

fn forward() -> CommandMode {
    CommandMode::ForwardPosition {
        topic: "/forward_position_controller/commands".into(),
    }
}

#[test]
fn rclpy_joint_state_and_image_reach_rudder_exactly() {
    isolated("rclpy_joint_state_and_image_reach_rudder_exactly", |dom| {
        let _pub = peer(dom, "peer.py", &["publish", "30"]);
        let mut arm = Ros2Ur5::connect(cfg(forward())).expect("connects");
        let s = arm.read_state().expect("state");
        assert_eq!(s.positions, POS.to_vec());
        assert_eq!(s.velocities, vec![0.0; 6]);
        assert!(wait_for(10.0, || arm.observe().is_ok()), "no image");
        let o = arm.observe().expect("observation");
        let img = &o.images["agentview"];
        assert_eq!((img.width, img.height), (W, H));
        assert_eq!(img.data, peer_image());
        assert_eq!(&o.state[..6], &POS);
        let h = arm.handle();
        assert!(wait_for(5.0, || h.speed_scaling() == 0.75));
        // Instruction and steering coefficients are settable at run time.
        let ctx = r2r::Context::create().expect("context");
        let mut node = r2r::Node::create(ctx, "operator", "").expect("node");
        let qos = r2r::QosProfile::default;
        let p_instr = node
            .create_publisher::<r2r::std_msgs::msg::String>(topics::INSTRUCTION, qos())
            .expect("publisher");
        let p_steer = node
            .create_publisher::<r2r::std_msgs::msg::Float64MultiArray>(topics::STEERING, qos())
            .expect("publisher");
        let mut spinner =
            Spinner::start("operator", node, vec![], Duration::from_millis(5)).expect("spinner");
        let text = "put the black bowl on the plate slowly";
        assert!(wait_for(10.0, || {
            let _ = p_instr.publish(&r2r::std_msgs::msg::String { data: text.into() });
            let _ = p_steer.publish(&r2r::std_msgs::msg::Float64MultiArray {
                data: vec![0.5, -1.25],
                ..Default::default()
            });
            h.instruction().as_deref() == Some(text) && h.steering() == vec![0.5, -1.25]
        }));
        assert_eq!(arm.observe().expect("observation").instruction, text);
        spinner.stop();
        // (Samples queued while discovery completed may arrive > 0.04 s old and be refused as
        // stale; the stream itself is accepted.)
        assert_eq!(h.joint_error(), None, "{:?}", h.counts());
        assert_eq!(arm.read_state().expect("state").positions, POS.to_vec());
    });
}

#[test]
fn rudder_commands_reach_rclpy_exactly() {
    isolated("rudder_commands_reach_rclpy_exactly", |dom| {
        let _pub = peer(dom, "peer.py", &["publish", "30"]);
        let mut listener = peer(dom, "peer.py", &["listen", "30"]);
        // Streaming: holding at the measured pose sends exactly that pose.
        let mut arm = Ros2Ur5::connect(cfg(forward())).expect("connects");
        let mut traj_arm = Ros2Ur5::connect(cfg(CommandMode::ScaledTrajectory {
            topic: "/scaled_joint_trajectory_controller/joint_trajectory".into(),
        }))
        .expect("connects");
        let points: Vec<Vec<f64>> = (1..=4)
            .map(|k| POS.iter().map(|q| q + 0.001 * k as f64).collect())
            .collect();
        let cmd = JointCommand {
            positions: POS.to_vec(),
            gripper: None,
        };
        let mut lines = Vec::new();
        let reader = std::thread::spawn(move || {
            for _ in 0..2 {
                lines.push(listener.line(Duration::from_secs(30)));
            }
            lines
        });
        let mut sent = None;
        for _ in 0..300 {
            arm.command(&cmd).expect("command");
            sent = Some(traj_arm.send_chunk(&points, 0.1).expect("chunk"));
            std::thread::sleep(Duration::from_millis(8));
            if reader.is_finished() {
                break;
            }
        }
        let lines = reader.join().expect("reader");
        let sent = sent.expect("sent");
        let mut fwd = None;
        let mut traj = None;
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l.trim()).expect("json line");
            if let Some(f) = v.get("forward") {
                fwd = Some(f.clone());
            }
            if let Some(t) = v.get("trajectory") {
                traj = Some(t.clone());
            }
        }
        let fwd = floats(&fwd.expect("forward received"));
        assert_eq!(fwd, POS.to_vec());
        let traj = traj.expect("trajectory received");
        let names: Vec<String> = NAMES.iter().map(|n| format!("ur_{n}")).collect();
        assert_eq!(traj["joint_names"], serde_json::json!(names));
        let pts = traj["points"].as_array().expect("points");
        assert_eq!(pts.len(), 4);
        for (k, p) in pts.iter().enumerate() {
            let pos = floats(&p["positions"]);
            assert_eq!(pos, sent.points[k].positions, "point {k}");
            assert_eq!(pos, points[k], "the filter left point {k} alone");
            let vel = floats(&p["velocities"]);
            assert_eq!(vel, sent.points[k].velocities);
            assert_eq!(
                (p["sec"].as_i64(), p["nanosec"].as_u64()),
                (
                    Some(sent.points[k].time_from_start.sec as i64),
                    Some(sent.points[k].time_from_start.nanosec as u64)
                )
            );
        }
        assert_eq!(sent.points[3].time_from_start.sec, 0);
        assert_eq!(sent.points[3].time_from_start.nanosec, 400_000_000);
    });
}

macro_rules! bad_joint_state_test {
    ($name:ident, $kind:expr, $words:expr) => {
        #[test]
        fn $name() {
            isolated(stringify!($name), |dom| {
                let _bad = peer(dom, "peer.py", &["bad", $kind, "30"]);
                let mut c = cfg(forward());
                c.connect_timeout = Duration::from_secs(3);
                match Ros2Ur5::connect(c) {
                    Err(Ros2Error::NoJointStates { last, .. }) => {
                        assert!(last.contains($words), "{}: {last}", $kind)
                    }
                    Err(e) => panic!("{}: unexpected error {e}", $kind),
                    Ok(_) => panic!("{}: connected on bad joint states", $kind),
                }
            });
        }
    };
}

bad_joint_state_test!(bad_joint_state_nan, "nan", "not finite");
bad_joint_state_test!(bad_joint_state_stale, "stale", "old");
bad_joint_state_test!(bad_joint_state_unknown, "unknown", "unknown joint");
bad_joint_state_test!(bad_joint_state_length, "length", "values for");

#[test]
fn unsupported_image_encoding_is_refused_clearly() {
    isolated("unsupported_image_encoding_is_refused_clearly", |dom| {
        let _bad = peer(dom, "peer.py", &["bad", "encoding", "30"]);
        let mut arm = Ros2Ur5::connect(cfg(forward())).expect("joint states are fine");
        let h = arm.handle();
        assert!(wait_for(10.0, || h.image_error("agentview").is_some()));
        assert!(matches!(
            h.image_error("agentview"),
            Some(InputError::Encoding { .. })
        ));
        let e = arm
            .observe()
            .expect_err("no observation from a mono8 camera");
        assert!(e.to_string().contains("mono8"), "{e}");
        assert!(arm.read_state().is_ok(), "joint state itself is fine");
    });
}

/// Chunks that sway every joint around the observed pose.
struct Sway;

impl Policy for Sway {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let q0 = obs.state.get(..6).ok_or(PolicyError::BadObservation {
            field: "state",
            reason: "need 6 joints".into(),
        })?;
        let actions = (0..20)
            .map(|k| Action::JointPositions {
                q: q0
                    .iter()
                    .map(|q| q + 0.2 * (k as f64 * 0.05 + obs.timestamp).sin())
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

fn estop_publisher() -> (
    rudder_robot::ros2::Spinner,
    r2r::Publisher<r2r::std_msgs::msg::Bool>,
) {
    let ctx = r2r::Context::create().expect("context");
    let mut node = r2r::Node::create(ctx, "estop_button", "").expect("node");
    let p = node
        .create_publisher::<r2r::std_msgs::msg::Bool>(
            rudder_robot::ros2::topics::ESTOP,
            r2r::QosProfile::default(),
        )
        .expect("publisher");
    let s = rudder_robot::ros2::Spinner::start("estop", node, vec![], Duration::from_millis(5))
        .expect("spinner");
    (s, p)
}

use rudder_robot::ros2::{r2r, topics, Spinner};

#[test]
fn estop_holds_within_one_period_and_nan_input_holds() {
    isolated("estop_holds_within_one_period_and_nan_input_holds", |dom| {
        let good = peer(dom, "peer.py", &["publish", "60"]);
        let arm = Ros2Ur5::connect(cfg(forward())).expect("connects");
        let h = arm.handle();
        let rate = 125.0;
        let mut lc = ControlConfig::ur5(Ur5Model::ur5(), rate);
        lc.watchdog.inference_timeout = 1.0;
        let lp = ControlLoop::start(arm, Sway, lc).expect("loop");
        assert!(
            wait_for(10.0, || lp.state() == LoopState::Running),
            "{:?}",
            lp.state()
        );
        std::thread::sleep(Duration::from_millis(500));
        let (mut spinner, estop) = estop_publisher();
        assert!(wait_for(10.0, || {
            let _ = estop.publish(&r2r::std_msgs::msg::Bool { data: true });
            h.estopped()
        }));
        assert!(wait_for(1.0, || h.estop_reaction().is_some()));
        let reaction = h.estop_reaction().expect("reaction");
        eprintln!(
            "e-stop: first holding command {:.3} ms after the message",
            reaction * 1e3
        );
        assert!(
            reaction <= 1.0 / rate + 0.002,
            "first command after the e-stop came {reaction} s later"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            lp.state().hold_reason(),
            Some(HoldReason::EmbodimentError),
            "{:?}",
            lp.state()
        );
        // Release, then feed NaN joint states: the loop holds again, nothing panics.
        assert!(wait_for(10.0, || {
            let _ = estop.publish(&r2r::std_msgs::msg::Bool { data: false });
            !h.estopped()
        }));
        assert!(
            wait_for(10.0, || lp.state() == LoopState::Running),
            "{:?}",
            lp.state()
        );
        drop(good);
        let _nan = peer(dom, "peer.py", &["bad", "nan", "30"]);
        assert!(wait_for(10.0, || h.joint_error().is_some()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            matches!(
                lp.state().hold_reason(),
                Some(HoldReason::EmbodimentError | HoldReason::StaleObservation)
            ),
            "{:?}",
            lp.state()
        );
        let (arm, m) = lp.stop().expect("stops");
        assert_eq!(m.violations.total(), 0, "{:?}", m.violations);
        assert!(arm.handle().counts().joint_states_rejected > 0);
        spinner.stop();
    });
}
