//! Loop behaviour: following a planner, blending, and the watchdog. The deterministic tests
//! step `ControlCore` on a simulated clock; the threaded ones run the real threads but assert
//! only safety and state, never microsecond timing (the machine may be loaded).

use rudder_robot::bench::{bench_workspace, SinusoidPolicy, HOME};
use rudder_robot::control::{
    ChunkConverter, ControlCore, EefDeltaScale, Health, HoldReason, LoopState, WatchdogConfig,
};
use rudder_robot::safety::SafetyConfig;
use rudder_robot::types::{Action, ActionChunk, ActionSpace, JointCommand, Observation};
use rudder_robot::ur5::Ur5Model;
use rudder_robot::{ControlConfig, ControlLoop, KinematicUr5, Policy, PolicyError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RATE: f64 = 500.0;

fn converter() -> ChunkConverter {
    let s = SafetyConfig::ur5(RATE);
    ChunkConverter {
        dof: 6,
        model: Some(Ur5Model::ur5()),
        lower: s.limits.lower,
        upper: s.limits.upper,
        eef_scale: EefDeltaScale::default(),
    }
}

fn boxed_safety() -> SafetyConfig {
    let mut s = SafetyConfig::ur5(RATE);
    s.workspace = Some((Ur5Model::ur5(), bench_workspace()));
    s
}

/// An inference in flight: ready tick, result, observed joints, observation time.
type Pending = (u64, Result<ActionChunk, PolicyError>, Vec<f64>, f64);

/// A simulated run: inference takes `latency` ticks, then its chunk is offered. `fault(tick)`
/// can spoil the health. Returns (states, commands).
struct Sim {
    core: ControlCore,
    policy: Box<dyn Policy>,
    conv: ChunkConverter,
    q: Vec<f64>,
    tick: u64,
    pending: Option<Pending>,
    latency_ticks: u64,
    policy_enabled: bool,
    states: Vec<LoopState>,
    commands: Vec<Vec<f64>>,
}

impl Sim {
    fn new(policy: Box<dyn Policy>, latency_ticks: u64) -> Self {
        let core = ControlCore::new(boxed_safety(), WatchdogConfig::default(), 0.1, &HOME)
            .expect("valid start");
        Self {
            core,
            policy,
            conv: converter(),
            q: HOME.to_vec(),
            tick: 0,
            pending: None,
            latency_ticks,
            policy_enabled: true,
            states: vec![],
            commands: vec![],
        }
    }

    fn t(&self) -> f64 {
        self.tick as f64 / RATE
    }

    fn step(&mut self, health: Health) -> LoopState {
        let t = self.t();
        if let Some((ready, _, _, _)) = &self.pending {
            if *ready <= self.tick {
                if let Some((_, Ok(chunk), obs_q, obs_t)) = self.pending.take() {
                    let (traj, _) = self.conv.convert(&chunk, &obs_q, obs_t).expect("convert");
                    self.core.offer(Arc::new(traj), t);
                }
            }
        }
        if self.pending.is_none() && self.policy_enabled {
            let obs = Observation {
                state: self.q.clone(),
                timestamp: t,
                ..Default::default()
            };
            let r = self.policy.infer(&obs);
            self.pending = Some((self.tick + self.latency_ticks, r, self.q.clone(), t));
        }
        let mut cmd = JointCommand {
            positions: vec![],
            gripper: None,
        };
        let st = self.core.step(t, &health, &mut cmd);
        self.q.clone_from(&cmd.positions);
        self.commands.push(cmd.positions);
        self.states.push(st);
        self.tick += 1;
        st
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step(Health::default());
        }
    }

    fn velocity(&self, k: usize) -> Vec<f64> {
        let (a, b) = (&self.commands[k - 1], &self.commands[k]);
        a.iter().zip(b).map(|(x, y)| (y - x) * RATE).collect()
    }
}

fn instant_sinusoid(seed: u64) -> Box<dyn Policy> {
    let mut p = SinusoidPolicy::new(seed);
    p.latency = (0.0, 0.0);
    Box::new(p)
}

#[test]
fn follows_sinusoid_planner_with_zero_violations_and_no_jumps() {
    let mut sim = Sim::new(instant_sinusoid(1), 40);
    sim.run(1000);
    let early = sim.core.safety_report().interventions.total();
    sim.run(4000);
    // Once the first chunk has faded in, blending chunks needs no clamping.
    let late = sim.core.safety_report().interventions.total() - early;
    assert_eq!(late, 0, "{:?}", sim.core.safety_report());
    let v = sim.core.monitor().counts();
    assert_eq!(v.total(), 0, "{v:?}");
    assert!(sim.core.monitor().max_step_seen() <= std::f64::consts::PI / RATE + 1e-12);
    // After the first chunk has faded in, the arm tracks the planner's curve closely.
    let p = SinusoidPolicy::new(1);
    let mut worst: f64 = 0.0;
    for k in 1000..5000 {
        assert_eq!(sim.states[k], LoopState::Running, "tick {k}");
        let r = p.reference(k as f64 / RATE);
        for (c, r) in sim.commands[k].iter().zip(r.iter()) {
            worst = worst.max((c - r).abs());
        }
    }
    if worst >= 0.01 {
        for k in (1000..5000).step_by(400) {
            eprintln!(
                "{k} {:?} {:?} {:?}",
                sim.commands[k],
                p.reference(k as f64 / RATE),
                sim.states[k]
            );
        }
        eprintln!("{:?}", sim.core.safety_report());
    }
    assert!(worst < 0.01, "tracking error {worst} rad");
    let holds = sim.core.holds();
    assert_eq!(holds.chunk_exhausted + holds.inference_error, 0);
}

/// Small end-effector deltas (a slow circle in the horizontal plane) through IK.
struct CirclePolicy;

impl Policy for CirclePolicy {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let actions = (0..20)
            .map(|k| {
                let a = 2.0 * (obs.timestamp + k as f64 * 0.05);
                Action::EefDelta {
                    dpos: [0.05 * a.cos(), 0.05 * a.sin(), 0.0],
                    drot: [0.0, 0.0, 0.02],
                    gripper: 1.0,
                }
            })
            .collect();
        ActionChunk::new(ActionSpace::EefDelta7, obs.timestamp, 0.05, actions)
            .map_err(|e| PolicyError::Inference(e.to_string()))
    }
}

#[test]
fn end_effector_chunks_run_through_ik_without_violations() {
    let mut sim = Sim::new(Box::new(CirclePolicy), 30);
    sim.run(3000);
    assert_eq!(sim.core.monitor().counts().total(), 0);
    assert!(sim.states[2000..].iter().all(|s| *s == LoopState::Running));
    let moved = (0..6).any(|j| (sim.commands[2999][j] - HOME[j]).abs() > 0.01);
    assert!(moved, "the arm should have followed the deltas");
}

/// OpenVLA-style: one end-effector delta per inference, due one control period (20 Hz) after
/// its observation, so every chunk is over by the time it arrives.
struct OneStepPolicy;

impl Policy for OneStepPolicy {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let up = Action::EefDelta {
            dpos: [0.0, 0.0, 0.2],
            drot: [0.0; 3],
            gripper: 1.0,
        };
        ActionChunk::new(ActionSpace::EefDelta7, obs.timestamp, 0.05, vec![up])
            .map_err(|e| PolicyError::Inference(e.to_string()))
    }
}

#[test]
fn one_step_delta_chunks_that_arrive_after_their_end_still_move_the_arm() {
    // 30 ticks at 500 Hz = 60 ms of inference, longer than the chunk's 50 ms.
    let mut sim = Sim::new(Box::new(OneStepPolicy), 30);
    sim.run(1500);
    let (received, rejected) = sim.core.chunk_counts();
    assert!(received > 40, "{received} chunks");
    assert_eq!(
        rejected, 0,
        "late delta chunks start late instead of being dropped"
    );
    assert_eq!(sim.core.chunks_late(), received);
    assert_eq!(sim.core.monitor().counts().total(), 0);
    let model = Ur5Model::ur5();
    let joints = |q: &[f64]| -> [f64; 6] { std::array::from_fn(|j| q[j]) };
    let z0 = model.fk(&joints(&HOME)).translation.vector.z;
    let z1 = model.fk(&joints(&sim.commands[1499])).translation.vector.z;
    // Each delta asks for 0.2 x the position scale upward; the flange must have risen.
    assert!(z1 > z0 + 0.01, "flange z {z0} -> {z1}");
}

#[test]
fn absolute_chunks_that_are_over_are_still_rejected() {
    let mut core =
        ControlCore::new(boxed_safety(), WatchdogConfig::default(), 0.1, &HOME).expect("start");
    let chunk = ActionChunk::new(
        ActionSpace::JointPositions { dof: 6 },
        0.0,
        0.05,
        vec![Action::JointPositions {
            q: HOME.to_vec(),
            gripper: None,
        }],
    )
    .expect("chunk");
    let (traj, _) = converter().convert(&chunk, &HOME, 0.0).expect("convert");
    assert!(!core.offer(Arc::new(traj.clone()), 0.2));
    // A relative chunk older than the inference timeout is stale, late or not.
    let delta = ActionChunk::new(
        ActionSpace::EefDelta7,
        0.0,
        0.05,
        vec![Action::EefDelta {
            dpos: [0.0, 0.0, 0.1],
            drot: [0.0; 3],
            gripper: 1.0,
        }],
    )
    .expect("chunk");
    let (rel, _) = converter().convert(&delta, &HOME, 0.0).expect("convert");
    assert!(!core.offer(Arc::new(rel.clone()), 0.6));
    assert!(core.offer(Arc::new(rel), 0.1));
    assert_eq!(core.chunk_counts(), (3, 2));
}

/// Drives the sim to full motion, applies `fault` from then on, and checks the hold: the state
/// changes on the very tick the fault is seen, speed only decreases, never faster than the
/// acceleration limit, and reaches rest.
fn check_hold(fault: Health, reason: HoldReason) {
    let mut sim = Sim::new(instant_sinusoid(2), 40);
    sim.run(1500);
    let k0 = sim.commands.len() - 1;
    let v0 = sim.velocity(k0);
    assert!(
        v0.iter().any(|v| v.abs() > 0.05),
        "arm should be moving: {v0:?}"
    );
    let st = sim.step(fault);
    assert!(
        matches!(st, LoopState::Holding { reason: r, .. } if r == reason),
        "{st:?}"
    );
    let a_max = 10.0;
    let mut prev = v0;
    let mut rest_at = None;
    for i in 0..400 {
        let st = if i == 0 { st } else { sim.step(fault) };
        let k = sim.commands.len() - 1;
        let v = sim.velocity(k);
        for j in 0..6 {
            assert!(
                v[j].abs() <= prev[j].abs() + 1e-9,
                "speed grew on joint {j}"
            );
            assert!(
                (v[j] - prev[j]).abs() <= a_max / RATE + 1e-6,
                "decel too hard"
            );
        }
        prev = v;
        if let LoopState::Holding { at_rest: true, .. } = st {
            rest_at.get_or_insert(i);
        }
    }
    // From under 1 rad/s at 10 rad/s^2: at most 0.1 s = 50 ticks.
    let rest_at = rest_at.expect("must come to rest");
    assert!(rest_at <= 50, "rest after {rest_at} ticks");
    let last = sim.commands.len() - 1;
    assert_eq!(
        sim.commands[last],
        sim.commands[last - 100],
        "hold must stay put"
    );
    assert_eq!(sim.core.monitor().counts().total(), 0);
}

#[test]
fn inference_error_brakes_to_hold() {
    check_hold(
        Health {
            inference_failed: true,
            ..Health::default()
        },
        HoldReason::InferenceError,
    );
}

#[test]
fn stale_observation_brakes_to_hold() {
    check_hold(
        Health {
            state_age: 0.05,
            ..Health::default()
        },
        HoldReason::StaleObservation,
    );
}

#[test]
fn inference_timeout_brakes_to_hold() {
    check_hold(
        Health {
            inference_busy_for: Some(0.6),
            ..Health::default()
        },
        HoldReason::InferenceTimeout,
    );
}

#[test]
fn exhausted_chunk_holds_then_resumes_smoothly() {
    let mut sim = Sim::new(instant_sinusoid(3), 40);
    sim.run(1500);
    sim.policy_enabled = false;
    sim.pending = None;
    // The last chunk lasts 0.95 s past its observation; give it that and a bit.
    sim.run(700);
    let st = *sim.states.last().expect("ran");
    assert_eq!(
        st,
        LoopState::Holding {
            reason: HoldReason::ChunkExhausted,
            at_rest: true
        }
    );
    sim.policy_enabled = true;
    sim.run(1000);
    assert_eq!(*sim.states.last().expect("ran"), LoopState::Running);
    assert_eq!(sim.core.monitor().counts().total(), 0);
    assert!(sim.core.monitor().max_step_seen() <= std::f64::consts::PI / RATE + 1e-12);
}

/// A policy that works `good` times, then fails (or stalls for `stall`).
struct FlakyPolicy {
    inner: SinusoidPolicy,
    good: usize,
    stall: Option<Duration>,
}

impl Policy for FlakyPolicy {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        if self.good == 0 {
            if let Some(d) = self.stall {
                std::thread::sleep(d);
            }
            return Err(PolicyError::Inference("synthetic failure".into()));
        }
        self.good -= 1;
        self.inner.infer(obs)
    }
}

fn threaded(
    policy: impl Policy + 'static,
    run_for: Duration,
) -> (LoopState, rudder_robot::LoopMetrics) {
    threaded_with(policy, run_for, Duration::ZERO)
}

fn threaded_with(
    policy: impl Policy + 'static,
    run_for: Duration,
    replan_interval: Duration,
) -> (LoopState, rudder_robot::LoopMetrics) {
    threaded_at(policy, run_for, replan_interval, RATE)
}

fn threaded_at(
    policy: impl Policy + 'static,
    run_for: Duration,
    replan_interval: Duration,
    rate: f64,
) -> (LoopState, rudder_robot::LoopMetrics) {
    let model = Ur5Model::ur5();
    let mut cfg = ControlConfig::ur5(model, rate);
    cfg.safety.workspace = Some((model, bench_workspace()));
    cfg.replan_interval = replan_interval;
    let arm = KinematicUr5::new(model, HOME)
        .expect("valid")
        .with_rate(rate);
    let lp = ControlLoop::start(arm, policy, cfg).expect("starts");
    let started = Instant::now();
    let mut last = lp.state();
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(20));
        last = lp.state();
    }
    let (arm, m) = lp.stop().expect("stops");
    assert_eq!(arm.commands_received(), m.ticks);
    (last, m)
}

#[test]
fn threaded_loop_follows_policy_safely() {
    let mut p = SinusoidPolicy::new(5);
    p.latency = (0.05, 0.12);
    let (state, m) = threaded(p, Duration::from_millis(1500));
    assert_eq!(m.violations.total(), 0, "{:?}", m.violations);
    assert!(m.max_command_step_rad <= std::f64::consts::PI / RATE + 1e-12);
    assert!(m.chunks_received >= 3, "{m:?}");
    assert!(m.inferences >= 3);
    assert!(m.inference_latency_ms.p50 >= 50.0);
    assert!(m.ticks > 100);
    // Under heavy load a tick can be late, but the loop keeps going and ends cleanly.
    assert!(matches!(
        state,
        LoopState::Running | LoopState::Holding { .. }
    ));
}

/// With a replan interval the loop asks for a chunk at most once per interval (and follows
/// the current one meanwhile, without holding); without one, as soon as a chunk is out.
#[test]
fn replan_interval_spaces_inferences() {
    let run_for = Duration::from_millis(1200);
    let (_, free) = threaded(SinusoidPolicy::new(3), run_for);
    let (_, spaced) = threaded_with(SinusoidPolicy::new(3), run_for, Duration::from_millis(300));
    // 1.2 s / 0.3 s: at most 5 starts (the first at once), at least 3 even on a loaded machine.
    assert!(
        (3..=5).contains(&spaced.inferences),
        "{} inferences with a 0.3 s interval",
        spaced.inferences
    );
    assert!(
        free.inferences > 2 * spaced.inferences,
        "{} vs {}",
        free.inferences,
        spaced.inferences
    );
    assert_eq!(spaced.violations.total(), 0);
    // Only the stop at the end holds: the chunk lasts past the interval.
    assert_eq!(spaced.holds.chunk_exhausted, 0, "{:?}", spaced.holds);
    assert_eq!(spaced.holds.inference_timeout, 0, "{:?}", spaced.holds);
}

/// Records the timestamp of every observation it is asked about.
struct StampingPolicy {
    inner: SinusoidPolicy,
    stamps: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl Policy for StampingPolicy {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        if let Ok(mut s) = self.stamps.lock() {
            s.push(obs.timestamp);
        }
        self.inner.infer(obs)
    }
}

/// The replan interval counts from the observation, not from the inference's start, so the
/// arm follows exactly `n` points of each chunk (as lockstep evaluation does); counting from
/// the start put every observation one tick later than asked.
#[test]
fn replan_interval_spaces_observations_by_whole_ticks() {
    // 50 Hz: the request has half a period (10 ms) of slack, more than a loaded machine's
    // sleep overshoot.
    let n = 5;
    let rate = 50.0;
    let period = 1.0 / rate;
    let stamps = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut inner = SinusoidPolicy::new(4);
    inner.latency = (0.0005, 0.001);
    let policy = StampingPolicy {
        inner,
        stamps: Arc::clone(&stamps),
    };
    let interval = Duration::from_secs_f64(n as f64 * period);
    let (_, m) = threaded_at(policy, Duration::from_millis(1500), interval, rate);
    assert_eq!(m.violations.total(), 0);
    let stamps = stamps.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(stamps.len() >= 10, "{} observations", stamps.len());
    let mut gaps: Vec<f64> = stamps.windows(2).map(|w| (w[1] - w[0]) / period).collect();
    gaps.sort_by(f64::total_cmp);
    // The median is robust to the odd late tick of a loaded machine.
    let median = gaps[gaps.len() / 2];
    assert!(
        (median - n as f64).abs() < 0.5,
        "median gap {median:.2} ticks, asked for {n}; gaps {gaps:?}"
    );
}

#[test]
fn threaded_loop_holds_on_policy_error_and_stall() {
    let failing = FlakyPolicy {
        inner: SinusoidPolicy::new(6),
        good: 3,
        stall: None,
    };
    let (state, m) = threaded(failing, Duration::from_millis(1200));
    assert_eq!(
        state,
        LoopState::Holding {
            reason: HoldReason::InferenceError,
            at_rest: true
        }
    );
    assert!(m.inference_errors > 0 && m.holds.inference_error >= 1);
    assert!(m
        .last_inference_error
        .as_deref()
        .is_some_and(|e| e.contains("synthetic")));
    assert_eq!(m.violations.total(), 0);

    let stalling = FlakyPolicy {
        inner: SinusoidPolicy::new(7),
        good: 3,
        stall: Some(Duration::from_millis(1500)),
    };
    let (state, m) = threaded(stalling, Duration::from_millis(1300));
    assert_eq!(
        state,
        LoopState::Holding {
            reason: HoldReason::InferenceTimeout,
            at_rest: true
        }
    );
    assert_eq!(m.violations.total(), 0);
}

/// Answers with small end-effector steps for `good` observations, then with chunks no arm can
/// follow (a vehicle's actions), counting the observations it saw.
struct UnconvertibleAfter {
    good: usize,
    seen: Vec<f64>,
}

impl Policy for UnconvertibleAfter {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        self.seen.push(obs.timestamp);
        let (space, step) = if self.seen.len() <= self.good {
            (
                ActionSpace::EefDelta7,
                Action::EefDelta {
                    dpos: [0.01, 0.0, 0.0],
                    drot: [0.0; 3],
                    gripper: 0.0,
                },
            )
        } else {
            (
                ActionSpace::VehicleAccelSteer,
                Action::VehicleAccelSteer {
                    acceleration: 1.0,
                    steering_angle: 0.0,
                },
            )
        };
        ActionChunk::new(space, obs.timestamp, 0.01, vec![step; 40])
            .map_err(|e| PolicyError::Inference(e.to_string()))
    }
}

/// The lockstep driver: replans every `n` ticks when the interval is `n` periods (the same
/// rule as the threaded loop), drops and counts a chunk that cannot be converted while the
/// arm keeps following the trajectory it has, and refuses a rate the embodiment does not run
/// at.
#[test]
fn lockstep_driver_replans_by_loop_time_and_drops_unconvertible_chunks() {
    let model = Ur5Model::ur5();
    let rate = 100.0;
    let mut arm = KinematicUr5::new(model, HOME)
        .expect("valid")
        .with_rate(rate);
    let mut wrong = ControlConfig::ur5(model, 125.0);
    wrong.safety.workspace = Some((model, bench_workspace()));
    assert!(matches!(
        rudder_robot::LockstepDriver::new(&mut arm, wrong),
        Err(rudder_robot::ControlError::Config {
            field: "rate_hz",
            ..
        })
    ));
    let mut cfg = ControlConfig::for_embodiment(&arm, model);
    cfg.safety.workspace = Some((model, bench_workspace()));
    cfg.replan_every(3);
    let mut driver = rudder_robot::LockstepDriver::new(&mut arm, cfg).expect("driver");
    let mut policy = UnconvertibleAfter {
        good: 2,
        seen: Vec::new(),
    };
    let mut states = Vec::new();
    driver
        .run(
            &mut arm,
            &mut policy,
            |a| a.commands_received() >= 12,
            |_, core| states.push(core.state()),
        )
        .expect("runs");
    let ticks: Vec<u64> = policy
        .seen
        .iter()
        .map(|t| (t * rate).round() as u64)
        .collect();
    assert_eq!(ticks, vec![0, 3, 6, 9]);
    let m = driver.metrics();
    assert_eq!((m.ticks, m.inferences), (12, 4));
    assert_eq!((m.chunks_dropped, m.inference_errors), (2, 2), "{m:?}");
    assert!(m.last_inference_error.is_some());
    // The second chunk (planned at tick 3) is still followed after the drops: no hold.
    assert!(
        states[4..].iter().all(|s| *s == LoopState::Running),
        "{states:?}"
    );
    assert_eq!(m.holds.inference_error, 0);
    assert_eq!(m.violations.total(), 0);
}

/// The threaded loop applies the same policy: dropped chunks are counted, and they do not
/// hold the arm (it holds only when the last chunk it followed runs out).
#[test]
fn threaded_loop_drops_unconvertible_chunks_without_an_inference_error_hold() {
    let policy = UnconvertibleAfter {
        good: 2,
        seen: Vec::new(),
    };
    let (state, m) = threaded(policy, Duration::from_millis(1200));
    assert!(m.chunks_dropped > 0, "{m:?}");
    assert_eq!(m.inference_errors, m.chunks_dropped);
    assert_eq!(m.holds.inference_error, 0, "{:?}", m.holds);
    assert_eq!(
        state,
        LoopState::Holding {
            reason: HoldReason::ChunkExhausted,
            at_rest: true
        }
    );
    assert_eq!(m.violations.total(), 0);
}
