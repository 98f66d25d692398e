//! `rudder bench viz`: what Rerun logging costs the control thread per tick, as a fraction of the
//! tick budget, with everything enabled (joint series, arm, objects, chunks, both cameras, loop
//! timing) and a real recording written by the logger thread.

use super::{
    chunk_tcp_path, spawn_logger, EpisodeSetup, ObjectState, Record, Recorder, Sink, TickRecord,
    VizOptions, MAX_OBJECTS,
};
use rudder_robot::bench::SinusoidPolicy;
use rudder_robot::control::Histogram;
use rudder_robot::{
    ActionChunk, ControlConfig, ControlLoop, Embodiment, EmbodimentError, ImageRgb8, JointCommand,
    JointLimits, JointState, KinematicUr5, Observation, Policy, PolicyError, Ur5Model,
};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// One rate's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VizBenchRow {
    pub rate_hz: f64,
    pub ticks: u64,
    /// Time the control thread spends recording one tick, microseconds.
    pub log_mean_us: f64,
    pub log_p99_us: f64,
    pub log_max_us: f64,
    /// Mean logging time / tick period.
    pub budget_fraction_mean: f64,
    /// p99 logging time / tick period.
    pub budget_fraction_p99: f64,
    /// The loop's own work per tick (read, filter, command + recording), microseconds.
    pub tick_work_mean_us: f64,
    /// The same without any recording.
    pub tick_work_mean_us_no_viz: f64,
    pub records_dropped: u64,
    pub images_logged: u64,
    pub chunks_logged: u64,
    pub rrd_bytes: u64,
}

/// The kinematic UR5 recording each tick exactly as the tabletop embodiment does (the object
/// slots filled too), timing the recording.
struct LoggedArm {
    inner: KinematicUr5,
    rec: Recorder,
    rate_hz: f64,
    tick: u64,
    epoch: Instant,
    last: Option<Instant>,
    last_q: [f64; 6],
    cost: Histogram,
}

impl Embodiment for LoggedArm {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn joint_names(&self) -> Vec<String> {
        self.inner.joint_names()
    }
    fn control_rate_hz(&self) -> f64 {
        self.inner.control_rate_hz()
    }
    fn state_layout(&self) -> rudder_robot::ArmStateLayout {
        self.inner.state_layout()
    }
    fn limits(&self) -> JointLimits {
        self.inner.limits()
    }
    fn read_state(&mut self) -> Result<JointState, EmbodimentError> {
        let s = self.inner.read_state()?;
        for (d, v) in self.last_q.iter_mut().zip(s.positions.iter()) {
            *d = *v;
        }
        Ok(s)
    }
    fn observe(&mut self) -> Result<Observation, EmbodimentError> {
        self.inner.observe()
    }
    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        let r = self.inner.command(cmd);
        if self.rec.enabled() {
            let t0 = Instant::now();
            let period_error_us = match self.last {
                Some(p) => {
                    (t0.saturating_duration_since(p).as_secs_f64() - 1.0 / self.rate_hz).abs() * 1e6
                }
                None => f64::NAN,
            };
            self.last = Some(t0);
            let mut rec = TickRecord {
                tick: self.tick,
                sim_time: self.tick as f64 / self.rate_hz,
                wall_time: t0.saturating_duration_since(self.epoch).as_secs_f64(),
                period_error_us,
                measured: self.last_q,
                gripper_commanded: cmd.gripper.unwrap_or(0.0),
                gripper_measured: self.inner.gripper(),
                n_objects: 6,
                ..TickRecord::default()
            };
            for (j, c) in rec.commanded.iter_mut().enumerate() {
                *c = cmd.positions.get(j).copied().unwrap_or(0.0);
            }
            for (i, o) in rec.objects.iter_mut().enumerate().take(MAX_OBJECTS) {
                *o = ObjectState {
                    pos: [0.4 + 0.01 * i as f64, 0.0, 0.0],
                    joint: 0.0,
                };
            }
            self.rec.send(Record::Tick(rec));
            self.cost
                .record(t0.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        }
        self.tick += 1;
        r
    }
}

/// The benchmark planner plus what the tabletop policy records: its chunk as a path, its
/// latency, and two 128x128 camera images per inference.
struct LoggedSinusoid {
    inner: SinusoidPolicy,
    model: Ur5Model,
    rec: Recorder,
    rate_hz: f64,
    epoch: Instant,
    images: [ImageRgb8; 2],
}

impl Policy for LoggedSinusoid {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let t0 = Instant::now();
        let out = self.inner.infer(obs);
        let tick = (obs.timestamp * self.rate_hz).max(0.0) as u64;
        let sim_time = obs.timestamp;
        let wall_time = self.epoch.elapsed().as_secs_f64();
        if let Ok(c) = &out {
            self.rec.send(Record::Chunk {
                tick,
                sim_time,
                wall_time,
                path: chunk_tcp_path(&self.model, &obs.state, c, 0.16),
                latency_ms: t0.elapsed().as_secs_f64() * 1e3,
            });
        }
        self.rec.send(Record::Images {
            tick,
            sim_time,
            wall_time,
            images: vec![
                ("agentview".into(), self.images[0].clone()),
                ("wrist".into(), self.images[1].clone()),
            ],
        });
        out
    }
}

fn test_image(seed: u8) -> ImageRgb8 {
    let (w, h) = (128u32, 128u32);
    let data = (0..w * h * 3)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    ImageRgb8 {
        width: w,
        height: h,
        data,
    }
}

fn run_once(
    rate_hz: f64,
    seconds: f64,
    rrd: Option<&Path>,
) -> anyhow::Result<(Histogram, rudder_robot::LoopMetrics, u64, u64, u64)> {
    let model = if rate_hz >= 500.0 {
        Ur5Model::ur5e()
    } else {
        Ur5Model::ur5()
    };
    let q0 = SinusoidPolicy::new(1).home;
    let arm = KinematicUr5::new(model, q0)?.with_rate(rate_hz);
    let logger = match rrd {
        Some(p) => Some(spawn_logger(
            &VizOptions {
                sink: Sink::File(p.to_path_buf()),
                application_id: "rudder_bench_viz".into(),
                recording_id: None,
                wall_time: true,
                blueprint: true,
            },
            4096,
        )?),
        None => None,
    };
    let rec = logger
        .as_ref()
        .map(|l| l.recorder.clone())
        .unwrap_or_else(Recorder::disabled);
    let epoch = Instant::now();
    rec.send(Record::Episode(Box::new(EpisodeSetup {
        episode: 0,
        task: "bench".into(),
        instruction: "follow the sinusoid".into(),
        model,
        scene: None,
        rate_hz,
    })));
    let emb = LoggedArm {
        inner: arm,
        rec: rec.clone(),
        rate_hz,
        tick: 0,
        epoch,
        last: None,
        last_q: q0,
        cost: Histogram::new(100, 100_000),
    };
    let policy = LoggedSinusoid {
        inner: SinusoidPolicy::new(1),
        model,
        rec: rec.clone(),
        rate_hz,
        epoch,
        images: [test_image(1), test_image(2)],
    };
    let lp = ControlLoop::start(emb, policy, ControlConfig::ur5(model, rate_hz))?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (emb, m) = lp.stop()?;
    // Every sender must be gone before the logger can finish.
    let cost = emb.cost.clone();
    drop(emb);
    drop(rec);
    let (dropped, images, chunks) = match logger {
        Some(l) => {
            let r = l.finish()?;
            (r.dropped, r.images, r.chunks)
        }
        None => (0, 0, 0),
    };
    Ok((cost, m, dropped, images, chunks))
}

/// Runs the loop at each rate for `seconds`, with and without recording.
pub fn run(rates: &[f64], seconds: f64, dir: &Path) -> anyhow::Result<Vec<VizBenchRow>> {
    let mut rows = Vec::new();
    for &rate in rates {
        let (_, base, ..) = run_once(rate, seconds, None)?;
        let path = dir.join(format!("bench-viz-{rate}.rrd"));
        let (cost, m, dropped, images, chunks) = run_once(rate, seconds, Some(&path))?;
        let s = cost.summary_us();
        let period_us = 1e6 / rate;
        rows.push(VizBenchRow {
            rate_hz: rate,
            ticks: m.ticks,
            log_mean_us: s.mean,
            log_p99_us: s.p99,
            log_max_us: s.max,
            budget_fraction_mean: s.mean / period_us,
            budget_fraction_p99: s.p99 / period_us,
            tick_work_mean_us: m.tick_work_us.mean,
            tick_work_mean_us_no_viz: base.tick_work_us.mean,
            records_dropped: dropped,
            images_logged: images,
            chunks_logged: chunks,
            rrd_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        });
    }
    Ok(rows)
}
