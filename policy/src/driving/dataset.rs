//! Driving demonstration data sets: one sample per (scenario, step) with the scene arrays of
//! [`super::scene`] and the expert's future, written in shards of safetensors (one tensor per
//! array, the sample index first) with a `meta.json` that holds the [`SceneConfig`], the count
//! and the scenario types. The format is in policy/README.md ("Driving demos").

use super::scene::{build_scene, future_target, Scene, SceneConfig, SceneHistory, FUTURE_FEATURES};
use crate::error::FlowError;
use candle_core::{Device, Tensor};
use rudder_robot::driving::{AgentObs, EgoPose, EgoState, LaneId, LightStatus, MapView};
use rudder_tune::checkpoint::{save_safetensors_atomic, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;
/// Samples per shard.
pub const SHARD_SAMPLES: usize = 512;

/// One training sample: a scene and what the expert did next.
#[derive(Debug, Clone)]
pub struct DrivingSample {
    pub scene: Scene,
    /// [future, 4]: (x, y, cos, sin) in the scene's frame.
    pub future: Vec<f32>,
    /// [future]: 1 where the log has the pose.
    pub future_mask: Vec<f32>,
    pub scenario_type: String,
}

impl DrivingSample {
    /// The sample of a logged scene: the ego on its logged state `ego` (pose `now`), the
    /// objects of the frames seen so far (oldest first), lights, map and route, and the logged
    /// poses after `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_log<M: MapView + ?Sized>(
        cfg: &SceneConfig,
        ego: &EgoState,
        frames: &[Vec<AgentObs>],
        lights: &[(LaneId, LightStatus)],
        map: &M,
        route: &[LaneId],
        future: &[EgoPose],
        scenario_type: &str,
    ) -> DrivingSample {
        let mut history = SceneHistory::new(cfg.history);
        for f in frames {
            history.push(f);
        }
        let scene = build_scene(cfg, ego, &history, lights, map, route);
        let v = &ego.vehicle;
        let now = EgoPose {
            x: v.x,
            y: v.y,
            heading: v.heading,
            speed: v.speed,
            acceleration: v.acceleration,
        };
        let (future, future_mask) = future_target(cfg, &now, future);
        DrivingSample {
            scene,
            future,
            future_mask,
            scenario_type: scenario_type.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrivingMeta {
    pub format_version: u32,
    pub scene: SceneConfig,
    pub samples: usize,
    pub shards: Vec<String>,
    /// Samples per scenario type.
    pub scenario_types: BTreeMap<String, usize>,
    /// Where the scenarios came from (generated with a seed, or a log).
    pub source: String,
}

/// Writes samples as they come, a shard at a time.
pub struct DrivingDemoWriter {
    dir: PathBuf,
    cfg: SceneConfig,
    pending: Vec<DrivingSample>,
    meta: DrivingMeta,
}

fn io(path: &Path, e: impl std::fmt::Display) -> FlowError {
    FlowError::Data(format!("{}: {e}", path.display()))
}

impl DrivingDemoWriter {
    /// Starts a data set in `dir`, which must not hold one already.
    pub fn create(dir: &Path, cfg: SceneConfig, source: &str) -> Result<Self, FlowError> {
        if dir.join("meta.json").exists() {
            return Err(io(
                dir,
                "already holds a data set (meta.json); choose an empty folder",
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(DrivingDemoWriter {
            dir: dir.to_path_buf(),
            cfg,
            pending: Vec::new(),
            meta: DrivingMeta {
                format_version: FORMAT_VERSION,
                scene: cfg,
                samples: 0,
                shards: Vec::new(),
                scenario_types: BTreeMap::new(),
                source: source.to_string(),
            },
        })
    }

    pub fn push(&mut self, sample: DrivingSample) -> Result<(), FlowError> {
        let shapes = self.cfg.shapes();
        for ((name, shape), got) in shapes.iter().zip(sample.scene.arrays()) {
            let want: usize = shape.iter().product();
            if got.len() != want {
                return Err(FlowError::Data(format!(
                    "driving sample: `{name}` has {} values, the scene config gives {want}",
                    got.len()
                )));
            }
        }
        if sample.future.len() != self.cfg.future * FUTURE_FEATURES
            || sample.future_mask.len() != self.cfg.future
        {
            return Err(FlowError::Data(format!(
                "driving sample: future has {} values and mask {}, expected {} and {}",
                sample.future.len(),
                sample.future_mask.len(),
                self.cfg.future * FUTURE_FEATURES,
                self.cfg.future
            )));
        }
        *self
            .meta
            .scenario_types
            .entry(sample.scenario_type.clone())
            .or_default() += 1;
        self.pending.push(sample);
        if self.pending.len() == SHARD_SAMPLES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), FlowError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let b = self.pending.len();
        let mut tensors = HashMap::new();
        let cx = |e: candle_core::Error| FlowError::Data(format!("driving shard: {e}"));
        for (k, (name, shape)) in self.cfg.shapes().into_iter().enumerate() {
            let mut all = Vec::with_capacity(b * shape.iter().product::<usize>());
            for s in &self.pending {
                all.extend_from_slice(s.scene.arrays()[k]);
            }
            let mut dims = vec![b];
            dims.extend(shape);
            tensors.insert(
                name.to_string(),
                Tensor::from_vec(all, dims, &Device::Cpu).map_err(cx)?,
            );
        }
        let future: Vec<f32> = self.pending.iter().flat_map(|s| s.future.clone()).collect();
        let mask: Vec<f32> = self
            .pending
            .iter()
            .flat_map(|s| s.future_mask.clone())
            .collect();
        tensors.insert(
            "future".into(),
            Tensor::from_vec(future, (b, self.cfg.future, FUTURE_FEATURES), &Device::Cpu)
                .map_err(cx)?,
        );
        tensors.insert(
            "future_mask".into(),
            Tensor::from_vec(mask, (b, self.cfg.future), &Device::Cpu).map_err(cx)?,
        );
        let name = format!("shard-{:04}.safetensors", self.meta.shards.len());
        let path = self.dir.join(&name);
        save_safetensors_atomic(&tensors, None, &path)
            .map_err(|e| FlowError::Data(e.to_string()))?;
        self.meta.shards.push(name);
        self.meta.samples += b;
        self.pending.clear();
        Ok(())
    }

    /// Writes the last shard and `meta.json` (last, so a folder with a meta is complete).
    pub fn finish(mut self) -> Result<DrivingMeta, FlowError> {
        self.flush()?;
        let path = self.dir.join("meta.json");
        let text = serde_json::to_string_pretty(&self.meta)
            .map_err(|e| FlowError::Data(format!("meta.json: {e}")))?;
        write_atomic(&path, text.as_bytes()).map_err(|e| FlowError::Data(e.to_string()))?;
        Ok(self.meta)
    }
}

/// Reads a data set's `meta.json`, checking its version.
pub fn read_meta(dir: &Path) -> Result<DrivingMeta, FlowError> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    let meta: DrivingMeta = serde_json::from_str(&text)
        .map_err(|e| io(&path, format!("not a driving data set: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(io(
            &path,
            format!(
                "format_version {} (this build reads {FORMAT_VERSION})",
                meta.format_version
            ),
        ));
    }
    Ok(meta)
}

/// Loads every shard: tensor name -> the samples of all shards concatenated, checked against
/// the meta's shapes.
pub fn load(dir: &Path) -> Result<(DrivingMeta, HashMap<String, Tensor>), FlowError> {
    let meta = read_meta(dir)?;
    let mut names: Vec<(String, Vec<usize>)> = meta
        .scene
        .shapes()
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
    names.push(("future".into(), vec![meta.scene.future, FUTURE_FEATURES]));
    names.push(("future_mask".into(), vec![meta.scene.future]));
    let mut parts: HashMap<String, Vec<Tensor>> = HashMap::new();
    for shard in &meta.shards {
        let path = dir.join(shard);
        let t = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| io(&path, e))?;
        for (name, shape) in &names {
            let x = t
                .get(name)
                .ok_or_else(|| io(&path, format!("no tensor `{name}`")))?;
            if &x.dims()[1..] != shape.as_slice() {
                return Err(io(
                    &path,
                    format!(
                        "tensor `{name}` has shape {:?}, meta gives [B, {shape:?}]",
                        x.dims()
                    ),
                ));
            }
            parts.entry(name.clone()).or_default().push(x.clone());
        }
    }
    let mut out = HashMap::new();
    for (name, ts) in parts {
        let cat = Tensor::cat(&ts, 0).map_err(|e| FlowError::Data(format!("`{name}`: {e}")))?;
        out.insert(name, cat);
    }
    if let Some(f) = out.get("future") {
        if f.dims()[0] != meta.samples {
            return Err(io(
                dir,
                format!(
                    "meta.json says {} samples, the shards hold {}",
                    meta.samples,
                    f.dims()[0]
                ),
            ));
        }
    }
    Ok((meta, out))
}
