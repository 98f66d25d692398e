//! Rerun logging, kept off the control thread.
//!
//! The control thread only builds a fixed-size [`TickRecord`] (no allocation) and `try_send`s it
//! into a bounded channel; when the channel is full the record is dropped and counted, so the
//! loop never waits for the logger. The inference and main threads send the larger records
//! (action chunks, camera images, loop metrics) through the same channel. One logger thread
//! drains it and owns the [`rerun::RecordingStream`]: forward kinematics, shapes, series,
//! encoding and I/O all happen there.

pub mod bench;
pub mod driving;
mod logger;
pub mod plot;

pub use logger::{blueprint, open_stream, spawn_logger, LoggerHandle, LoggerReport};

use rudder_robot::Ur5Model;
use rudder_sim::tabletop::scene::Scene;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

/// Most objects a tick record carries (the embedded suites use at most 6).
pub const MAX_OBJECTS: usize = 12;

/// Where the recording goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    /// An `.rrd` file.
    File(PathBuf),
    /// A running viewer or `rerun --serve-grpc` (`rerun+http://127.0.0.1:9876/proxy`).
    Connect(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VizOptions {
    pub sink: Sink,
    pub application_id: String,
    /// Fixed recording id (for reproducible files); random when `None`.
    pub recording_id: Option<String>,
    /// Log the `wall_time` timeline and wall-clock timing (off for deterministic recordings).
    pub wall_time: bool,
    /// Send the layout (3D view, cameras, plots).
    pub blueprint: bool,
}

/// Articulation and position of one object at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ObjectState {
    /// Bottom centre in the world.
    pub pos: [f64; 3],
    /// Drawer slide (m) or knob angle (rad); 0 for rigid objects.
    pub joint: f64,
}

/// What the control thread records every tick: plain numbers, fixed size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickRecord {
    /// Ticks since the recording began (continues across episodes).
    pub tick: u64,
    /// Simulation time of the tick, seconds (`tick / rate`).
    pub sim_time: f64,
    /// Wall-clock seconds since the recording began.
    pub wall_time: f64,
    /// |actual - nominal| period before this tick, microseconds (NaN on the first tick).
    pub period_error_us: f64,
    pub measured: [f64; 6],
    pub commanded: [f64; 6],
    /// -1 open .. +1 closed.
    pub gripper_commanded: f64,
    pub gripper_measured: f64,
    pub objects: [ObjectState; MAX_OBJECTS],
    pub n_objects: u8,
    /// Hand motions the simulator refused on contact, so far this episode.
    pub refused_contacts: u64,
    pub success: bool,
}

impl Default for TickRecord {
    fn default() -> Self {
        Self {
            tick: 0,
            sim_time: 0.0,
            wall_time: 0.0,
            period_error_us: f64::NAN,
            measured: [0.0; 6],
            commanded: [0.0; 6],
            gripper_commanded: 0.0,
            gripper_measured: 0.0,
            objects: [ObjectState::default(); MAX_OBJECTS],
            n_objects: 0,
            refused_contacts: 0,
            success: false,
        }
    }
}

/// Start of an episode: what stays fixed during it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeSetup {
    pub episode: usize,
    pub task: String,
    pub instruction: String,
    pub model: Ur5Model,
    /// The scene at the start (object shapes and colours; positions come with the ticks).
    pub scene: Option<Scene>,
    pub rate_hz: f64,
}

/// Loop-level counters, sampled off the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoopSample {
    pub sim_time: f64,
    pub wall_time: f64,
    /// Commands the safety filter changed (clamped) or replaced (held), so far.
    pub clamped_commands: u64,
    pub held_commands: u64,
    pub interventions: u64,
    pub hold_ticks: u64,
    pub missed_ticks: u64,
    pub period_error_p99_us: f64,
    pub inference_latency_p50_ms: f64,
}

/// `Tick` is kept inline on purpose: boxing it would allocate on the control thread.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Episode(Box<EpisodeSetup>),
    Tick(TickRecord),
    /// A new action chunk: its end-effector path (TCP positions, metres) from the tick it was
    /// computed at, and the inference latency.
    Chunk {
        tick: u64,
        sim_time: f64,
        wall_time: f64,
        path: Vec<[f64; 3]>,
        latency_ms: f64,
    },
    Images {
        tick: u64,
        sim_time: f64,
        wall_time: f64,
        images: Vec<(String, rudder_robot::ImageRgb8)>,
    },
    Loop(LoopSample),
    /// A success classifier's verdict on a frame, beside the simulator's predicate there.
    Reward {
        tick: u64,
        sim_time: f64,
        wall_time: f64,
        p_success: f64,
        verdict: bool,
        truth: bool,
    },
    Result {
        sim_time: f64,
        wall_time: f64,
        success: bool,
        text: String,
    },
}

/// The sending side, cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: Option<SyncSender<Record>>,
    dropped: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder that records nothing (`--no-viz`).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn new(tx: SyncSender<Record>) -> Self {
        Self {
            tx: Some(tx),
            ..Self::disabled()
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record, or drops and counts it if the logger is behind. Never blocks.
    #[inline]
    pub fn send(&self, r: Record) {
        if let Some(tx) = &self.tx {
            match tx.try_send(r) {
                Ok(()) => {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Drops the sender (so the logger can finish once every clone is gone).
    pub fn close(&mut self) {
        self.tx = None;
    }
}

/// The TCP path an end-effector-delta chunk asks for, starting from `q0` (joint positions):
/// deltas accumulate in the base frame, as robot's `ChunkConverter` reads them.
pub fn chunk_tcp_path(
    model: &Ur5Model,
    q0: &[f64],
    chunk: &rudder_robot::ActionChunk,
    flange_to_tcp: f64,
) -> Vec<[f64; 3]> {
    use nalgebra::{UnitQuaternion, Vector3};
    use rudder_robot::Action;
    if q0.len() < 6 {
        return Vec::new();
    }
    let q: [f64; 6] = std::array::from_fn(|j| q0[j]);
    let scale = rudder_robot::control::EefDeltaScale::default();
    let tcp = |f: &nalgebra::Isometry3<f64>| {
        let p = f.translation.vector + f.rotation * Vector3::new(0.0, 0.0, flange_to_tcp);
        [p.x, p.y, p.z]
    };
    let mut pose = model.fk(&q);
    let mut out = Vec::with_capacity(chunk.actions.len() + 1);
    out.push(tcp(&pose));
    for a in &chunk.actions {
        match a {
            Action::EefDelta { dpos, drot, .. } => {
                let dp = Vector3::from(dpos.map(|x| x.clamp(-1.0, 1.0))) * scale.position_m;
                let dr = Vector3::from(drot.map(|x| x.clamp(-1.0, 1.0))) * scale.rotation_rad;
                pose.translation.vector += dp;
                pose.rotation = UnitQuaternion::from_scaled_axis(dr) * pose.rotation;
            }
            Action::JointPositions { q, .. } if q.len() == 6 => {
                let qa: [f64; 6] = std::array::from_fn(|j| q[j]);
                pose = model.fk(&qa);
            }
            _ => continue,
        }
        out.push(tcp(&pose));
    }
    out
}
