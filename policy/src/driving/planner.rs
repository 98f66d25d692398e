//! The diffusion planner behind robot's `Planner` interface: each step it builds the scene
//! (objects of the frames it has seen, lights, map, route), draws the ego's 8 s future from
//! noise with DPM-Solver++ (2M) or DDIM in a few steps, optionally guided away from collisions
//! and off-road poses ([`super::guidance`]), and hands the tracker that future with its first
//! state clamped to the current one.
//!
//! A failure (non-finite input from a log, a plan with NaNs) never reaches the tracker: the
//! planner falls back to holding its heading while braking to a stop at 3 m/s^2, and counts it.

use super::guidance::{Guidance, GuidanceReport};
use super::normalize::{scene_tensors, PlannerNormalization, SCENE_ARRAYS};
use super::scene::{build_scene, EgoFrame, Scene, SceneConfig, SceneHistory};
use super::train::{schedule, time_input, PlannerFile, PlannerTrainConfig, TRAIN_TIMESTEPS};
use crate::error::FlowError;
use candle_core::{DType, Device, Tensor};
use rudder_robot::driving::{
    MapView, Observation, Planner, PlannerSetup, Trajectory, TrajectoryPoint, P2,
};
use rudder_tune::diffusion::{Ddim, DpmSolverPP, Prediction, VpSchedule};
use rudder_tune::models::diffusion_planner::{Model, SceneBatch};
use rudder_tune::train::Rng;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Seconds between future poses (10 Hz).
pub const FUTURE_DT: f64 = 0.1;
/// The fallback's braking (m/s^2).
const FALLBACK_DECEL: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Multistep DPM-Solver++ of order 2 (diffusers' DPMSolverMultistepScheduler).
    DpmSolver,
    /// Deterministic DDIM (eta 0).
    Ddim,
}

impl SamplerKind {
    pub fn parse(s: &str) -> Option<SamplerKind> {
        match s {
            "dpm" | "dpm-solver" | "dpm_solver" | "dpmsolver++" => Some(SamplerKind::DpmSolver),
            "ddim" => Some(SamplerKind::Ddim),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingOptions {
    pub sampler: SamplerKind,
    /// Solver steps (1..=1000).
    pub steps: usize,
    /// Seed of the planner's noise (each planner instance draws its own stream from it).
    pub seed: u64,
    /// Classifier-guidance scale (0: none).
    pub guidance: f64,
    /// Draw the initial noise once per scenario and start every plan from it (a plan then
    /// changes only as the scene does), instead of fresh noise every step (the default: one
    /// unlucky draw then cannot hold for a whole scenario; it scored 0.41 against 0.56 on 24
    /// scenarios, policy/README.md).
    pub fixed_noise: bool,
    /// Fade the first sampled pose's offset from one step of the current motion out over the
    /// first second (see [`to_trajectory`]).
    pub anchor: bool,
    /// Scale of the initial noise (1: the model's distribution; below 1 samples nearer its
    /// modes, with less variety from plan to plan).
    pub temperature: f64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            sampler: SamplerKind::DpmSolver,
            steps: 10,
            seed: 0,
            guidance: 0.0,
            fixed_noise: false,
            anchor: true,
            temperature: 1.0,
        }
    }
}

impl SamplingOptions {
    pub fn validate(&self) -> Result<(), FlowError> {
        if !(1..=TRAIN_TIMESTEPS).contains(&self.steps) {
            return Err(FlowError::input(
                "--solver-steps",
                format!("{}: expected 1..={TRAIN_TIMESTEPS}", self.steps),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0 && self.temperature <= 2.0) {
            return Err(FlowError::input(
                "--temperature",
                format!("{}: expected a scale in (0, 2]", self.temperature),
            ));
        }
        if !(self.guidance.is_finite() && (0.0..=1e3).contains(&self.guidance)) {
            return Err(FlowError::input(
                "--guidance",
                format!("{}: expected a scale in 0..=1000", self.guidance),
            ));
        }
        Ok(())
    }
}

/// Sampled futures (per sample, 80 poses (x, y, cos, sin) in metres in the ego frame) and,
/// with guidance, what it did.
pub type Sampled = (Vec<Vec<[f32; 4]>>, Option<GuidanceReport>);

/// A trained planner checkpoint, loaded once and shared by every planner that samples from it.
pub struct PlannerModel {
    pub dir: PathBuf,
    pub file: PlannerFile,
    pub norm: PlannerNormalization,
    model: Model,
    schedule: VpSchedule,
    device: Device,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FlowError> {
    let text = std::fs::read_to_string(path).map_err(|e| FlowError::File {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| FlowError::File {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

/// A checkpoint folder: `dir` itself, or the newest checkpoint of a run folder.
fn resolve(dir: &Path) -> Result<PathBuf, FlowError> {
    if dir.join("planner.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let newest = rudder_tune::train::checkpoint::latest(dir)?;
    if let Some(r) = newest.filter(|r| r.join("planner.json").is_file()) {
        Ok(r)
    } else {
        Err(FlowError::File {
            path: dir.to_path_buf(),
            problem: "no planner.json: not a diffusion planner checkpoint (rudder train planner)"
                .into(),
        })
    }
}

impl PlannerModel {
    /// Loads `dir` (a checkpoint, or a run folder: its newest checkpoint).
    pub fn load(dir: &Path) -> Result<PlannerModel, FlowError> {
        let dir = resolve(dir)?;
        let file: PlannerFile = read_json(&dir.join("planner.json"))?;
        let norm: PlannerNormalization = read_json(&dir.join("normalization.json"))?;
        norm.check().map_err(|e| FlowError::File {
            path: dir.join("normalization.json"),
            problem: e.to_string(),
        })?;
        if !PlannerTrainConfig::fits_scene(&file.model, &file.scene) {
            return Err(FlowError::File {
                path: dir.join("planner.json"),
                problem: format!(
                    "the network's scene sizes {:?} differ from the scene's {:?}",
                    file.model, file.scene
                ),
            });
        }
        if file.prediction != "sample" || file.train_timesteps != TRAIN_TIMESTEPS {
            return Err(FlowError::File {
                path: dir.join("planner.json"),
                problem: format!(
                    "prediction `{}` over {} steps: this build samples x0-prediction models over \
                     {TRAIN_TIMESTEPS} steps",
                    file.prediction, file.train_timesteps
                ),
            });
        }
        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        let store = rudder_tune::checkpoint::TensorStore::load_file(&weights, &device)?;
        store.check_finite()?;
        let vb = store.var_builder(DType::F32, &device);
        let model = Model::new(file.model, vb).map_err(|e| FlowError::File {
            path: weights.clone(),
            problem: e.to_string(),
        })?;
        Ok(PlannerModel {
            dir,
            file,
            norm,
            model,
            schedule: schedule()?,
            device,
        })
    }

    pub fn scene_config(&self) -> SceneConfig {
        self.file.scene
    }

    /// `n` futures for one scene, from `rng`'s noise: per sample 80 poses (x, y, cos, sin) in
    /// metres in the scene's ego frame. With guidance, also its report.
    pub fn sample(
        &self,
        scene: &Scene,
        n: usize,
        opts: &SamplingOptions,
        rng: &mut Rng,
    ) -> Result<Sampled, FlowError> {
        let noise = rng.gaussian(n * self.file.scene.future * 4);
        self.sample_from(scene, noise, opts)
    }

    /// [`PlannerModel::sample`] from the given initial noise (n x 80 x 4 standard normals).
    pub fn sample_from(
        &self,
        scene: &Scene,
        noise: Vec<f32>,
        opts: &SamplingOptions,
    ) -> Result<Sampled, FlowError> {
        let per = self.file.scene.future * 4;
        if noise.is_empty() || !noise.len().is_multiple_of(per) {
            return Err(FlowError::input(
                "noise",
                format!("{} values: expected a multiple of {per}", noise.len()),
            ));
        }
        let n = noise.len() / per;
        opts.validate()?;
        let cfg = self.file.scene;
        for (name, a) in SCENE_ARRAYS.iter().zip(scene.arrays()) {
            if let Some(i) = a.iter().position(|v| !v.is_finite()) {
                return Err(FlowError::input(
                    *name,
                    format!("non-finite scene value at flat index {i}"),
                ));
            }
        }
        let raw = scene_tensors(&cfg, scene, &self.device)?;
        let batch = self.norm.scene_batch(&raw)?;
        let batch = repeat_batch(&batch, n)?;
        let enc = self.model.encode(&batch)?;
        let guide = (opts.guidance > 0.0).then(|| Guidance::from_scene(&cfg, scene, opts.guidance));
        let shape = (n, cfg.future, 4);
        let dev = &self.device;
        let cx = |e: candle_core::Error| FlowError::Inference(e);
        let mut x = Tensor::from_vec(noise, shape, dev)
            .and_then(|t| t.affine(opts.temperature, 0.0))
            .map_err(cx)?;
        let mut report = guide.as_ref().map(|_| GuidanceReport::default());
        let mut denoise = |x: &Tensor, t: usize| -> Result<Tensor, FlowError> {
            let tt = Tensor::from_vec(vec![time_input(t); n], n, dev).map_err(cx)?;
            let x0 = self.model.denoise(&enc, x, &tt)?;
            match (&guide, &mut report) {
                (Some(g), Some(r)) => {
                    let metres = self.norm.denormalize_future(&x0).map_err(cx)?;
                    let guided = g.apply(&metres, r)?;
                    self.norm.normalize_future(&guided).map_err(cx)
                }
                _ => Ok(x0),
            }
        };
        match opts.sampler {
            SamplerKind::DpmSolver => {
                let order = if opts.steps >= 2 { 2 } else { 1 };
                let mut s =
                    DpmSolverPP::new(self.schedule.clone(), opts.steps, order, Prediction::Sample)?;
                for t in s.timesteps().to_vec() {
                    let x0 = denoise(&x, t)?;
                    x = s.step(&x0, &x)?;
                }
            }
            SamplerKind::Ddim => {
                let s = Ddim::new(self.schedule.clone(), opts.steps, 0.0, Prediction::Sample)?;
                for (i, t) in s.timesteps().to_vec().into_iter().enumerate() {
                    let x0 = denoise(&x, t)?;
                    x = s.step(i, &x0, &x, None)?.prev_sample;
                }
            }
        }
        let out: Vec<f32> = self
            .norm
            .denormalize_future(&x)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(cx)?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(FlowError::input(
                "plan",
                format!("the sampled future holds a non-finite value (index {i})"),
            ));
        }
        let futures = out
            .chunks(cfg.future * 4)
            .map(|s| s.chunks(4).map(|p| [p[0], p[1], p[2], p[3]]).collect())
            .collect();
        Ok((futures, report))
    }
}

fn repeat_batch(b: &SceneBatch, n: usize) -> Result<SceneBatch, FlowError> {
    if n == 1 {
        return Ok(b.clone());
    }
    let r = |t: &Tensor| Tensor::cat(&vec![t.clone(); n], 0).map_err(FlowError::Inference);
    Ok(SceneBatch {
        ego: r(&b.ego)?,
        neighbours: r(&b.neighbours)?,
        static_objects: r(&b.static_objects)?,
        lanes: r(&b.lanes)?,
        lane_limits: r(&b.lane_limits)?,
        route_lanes: r(&b.route_lanes)?,
    })
}

/// One plan: when, how long it took, whether the fallback replaced it, what guidance did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlanRecord {
    pub step: usize,
    pub latency_s: f64,
    /// Why the fallback stop replaced the plan.
    pub fallback: Option<String>,
    pub guidance: Option<GuidanceReport>,
}

/// What planners record about their plans (one log may be shared by a campaign's planners).
#[derive(Debug, Clone, Default)]
pub struct PlanLog {
    pub records: Vec<PlanRecord>,
}

impl PlanLog {
    pub fn latencies(&self) -> Vec<f64> {
        self.records.iter().map(|r| r.latency_s).collect()
    }

    pub fn fallbacks(&self) -> Vec<&str> {
        self.records
            .iter()
            .filter_map(|r| r.fallback.as_deref())
            .collect()
    }

    /// Guidance summed over the plans.
    pub fn guidance(&self) -> GuidanceReport {
        let mut g = GuidanceReport::default();
        for r in self.records.iter().filter_map(|r| r.guidance.as_ref()) {
            g.moved += r.moved;
            g.before += r.before;
            g.after += r.after;
        }
        g
    }
}

/// The ego's state as the scene shows it: what the demos can know from a log (its yaw rate
/// from the headings), so training and closed loop see the same features.
fn scene_ego(ego: &rudder_robot::driving::EgoState) -> rudder_robot::driving::EgoState {
    let mut e = *ego;
    e.steering_rate = 0.0;
    e.yaw_acceleration = 0.0;
    e
}

/// The planner one scenario runs with.
pub struct DiffusionPlanner {
    model: Arc<PlannerModel>,
    opts: SamplingOptions,
    history: SceneHistory,
    rng: Rng,
    /// The scenario's initial noise (with `fixed_noise`).
    noise: Option<Vec<f32>>,
    log: Option<Arc<Mutex<PlanLog>>>,
}

impl DiffusionPlanner {
    /// A planner sampling from `model`; `stream` separates the noise of planners made from
    /// the same options (e.g. the scenario's index).
    pub fn new(model: Arc<PlannerModel>, opts: SamplingOptions, stream: u64) -> Self {
        let frames = model.scene_config().history;
        DiffusionPlanner {
            model,
            opts,
            history: SceneHistory::new(frames),
            rng: Rng::new(opts.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            noise: None,
            log: None,
        }
    }

    /// Records latencies, fallbacks and guidance into `log`.
    pub fn with_log(mut self, log: Arc<Mutex<PlanLog>>) -> Self {
        self.log = Some(log);
        self
    }

    /// The plan for `obs` (map frame), or why there is none.
    pub fn try_plan<M: MapView + ?Sized>(
        &mut self,
        obs: &Observation<'_, M>,
    ) -> Result<(Trajectory, Option<GuidanceReport>), FlowError> {
        let v = &obs.ego.vehicle;
        let state = [
            v.x,
            v.y,
            v.heading,
            v.speed,
            v.acceleration,
            v.steering_angle,
        ];
        if state.iter().any(|x| !x.is_finite()) {
            return Err(FlowError::input(
                "ego",
                format!("non-finite ego state {state:?}"),
            ));
        }
        let cfg = self.model.scene_config();
        let scene = build_scene(
            &cfg,
            &scene_ego(obs.ego),
            &self.history,
            obs.lights,
            obs.map,
            obs.route,
        );
        let per = cfg.future * 4;
        let noise = if self.opts.fixed_noise {
            self.noise
                .get_or_insert_with(|| self.rng.gaussian(per))
                .clone()
        } else {
            self.rng.gaussian(per)
        };
        let (futures, report) = self.model.sample_from(&scene, noise, &self.opts)?;
        let frame = EgoFrame::new(P2::new(v.x, v.y), v.heading);
        Ok((
            to_trajectory(obs.time_s, obs.ego, &frame, &futures[0], self.opts.anchor),
            report,
        ))
    }
}

/// The future in the ego frame as a map-frame trajectory whose first point is the current
/// state; speeds from the steps between poses; never backwards.
pub fn to_trajectory(
    time_s: f64,
    ego: &rudder_robot::driving::EgoState,
    frame: &EgoFrame,
    future: &[[f32; 4]],
    anchor: bool,
) -> Trajectory {
    let v = &ego.vehicle;
    let mut points = Vec::with_capacity(future.len() + 1);
    points.push(TrajectoryPoint {
        t: time_s,
        x: v.x,
        y: v.y,
        heading: v.heading,
        speed: v.speed,
    });
    // The sampled future's first pose is rarely exactly one step of the current motion ahead;
    // its offset from that is faded out over the first second, so the plan continues the
    // current state smoothly (the tracker otherwise sees a jump at the start of every plan).
    let (e0x, e0y) = match future.first() {
        Some(p) if anchor => (p[0] as f64 - v.speed.max(0.0) * FUTURE_DT, p[1] as f64),
        _ => (0.0, 0.0),
    };
    for (k, p) in future.iter().enumerate() {
        let w = anchor_weight(k);
        let mut at = frame.to_map(p[0] as f64 - w * e0x, p[1] as f64 - w * e0y);
        let prev = points[points.len() - 1];
        // A car does not reverse in traffic: a step backwards along the previous heading (a
        // sampled wobble around a stop) holds the previous position instead.
        let (sh, ch) = prev.heading.sin_cos();
        if (at.x - prev.x) * ch + (at.y - prev.y) * sh < 0.0 {
            at = P2::new(prev.x, prev.y);
        }
        let speed = at.dist(P2::new(prev.x, prev.y)) / FUTURE_DT;
        points.push(TrajectoryPoint {
            t: time_s + (k + 1) as f64 * FUTURE_DT,
            x: at.x,
            y: at.y,
            heading: v.heading + (p[3] as f64).atan2(p[2] as f64),
            speed,
        });
    }
    Trajectory { points }
}

/// Future steps over which the first pose's offset is faded out (1 s).
const ANCHOR_STEPS: usize = 10;

/// 1 at the first future pose, 0 from [`ANCHOR_STEPS`] on, smooth (quintic) between.
fn anchor_weight(k: usize) -> f64 {
    let u = (k as f64 / ANCHOR_STEPS as f64).clamp(0.0, 1.0);
    1.0 - u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)
}

/// Holding the current heading while braking to a stop (or standing, if stopped).
pub fn fallback_stop(time_s: f64, ego: &rudder_robot::driving::EgoState) -> Trajectory {
    let v = &ego.vehicle;
    let (s, c) = if v.heading.is_finite() {
        v.heading.sin_cos()
    } else {
        (0.0, 1.0)
    };
    let speed0 = if v.speed.is_finite() {
        v.speed.max(0.0)
    } else {
        0.0
    };
    let (x0, y0) = if v.x.is_finite() && v.y.is_finite() {
        (v.x, v.y)
    } else {
        (0.0, 0.0)
    };
    let heading = if v.heading.is_finite() {
        v.heading
    } else {
        0.0
    };
    let t0 = if time_s.is_finite() { time_s } else { 0.0 };
    let points = (0..=80)
        .map(|k| {
            let t = k as f64 * FUTURE_DT;
            let stop = speed0 / FALLBACK_DECEL;
            let tt = t.min(stop);
            let dist = speed0 * tt - 0.5 * FALLBACK_DECEL * tt * tt;
            TrajectoryPoint {
                t: t0 + t,
                x: x0 + c * dist,
                y: y0 + s * dist,
                heading,
                speed: (speed0 - FALLBACK_DECEL * t).max(0.0),
            }
        })
        .collect();
    Trajectory { points }
}

impl<M: MapView + ?Sized> Planner<M> for DiffusionPlanner {
    fn name(&self) -> &'static str {
        "diffusion"
    }

    fn initialize(&mut self, _setup: &PlannerSetup<'_, M>) {
        self.history = SceneHistory::new(self.model.scene_config().history);
        self.noise = None;
    }

    fn plan(&mut self, obs: &Observation<'_, M>) -> Trajectory {
        let t0 = Instant::now();
        self.history.push(obs.agents);
        let planned = self.try_plan(obs);
        let secs = t0.elapsed().as_secs_f64();
        let (traj, why, report) = match planned {
            Ok((t, r)) if t.is_valid() => (t, None, r),
            Ok(_) => (
                fallback_stop(obs.time_s, obs.ego),
                Some(format!(
                    "step {}: the plan is not a valid trajectory",
                    obs.step
                )),
                None,
            ),
            Err(e) => (
                fallback_stop(obs.time_s, obs.ego),
                Some(format!("step {}: {e}", obs.step)),
                None,
            ),
        };
        if let Some(log) = &self.log {
            if let Ok(mut l) = log.lock() {
                l.records.push(PlanRecord {
                    step: obs.step,
                    latency_s: secs,
                    fallback: why,
                    guidance: report,
                });
            }
        }
        traj
    }
}
