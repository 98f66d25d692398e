//! The planner's input and output scaling (`normalization.json` of a checkpoint), and the one
//! function that turns raw scene arrays into the network's batch, used by training and by the
//! planner alike.
//!
//! - Scene arrays are divided feature by feature by the root mean square of that feature over
//!   the entities present in the data (never by less than 1), so positions and speeds reach the
//!   network at about unit size while padding stays exactly zero (the network finds padding by
//!   its zeros).
//! - Entity slots past the last one present anywhere in the batch are cut off: the scene
//!   builder puts the present ones first, nearest first, so this drops only padding, and a
//!   quiet road costs a fraction of a busy one.
//! - The future's (x, y) are standardised with the data's mean and standard deviation; (cos,
//!   sin) are left as they are (Diffusion Planner's normaliser does the same).

use super::scene::{Scene, SceneConfig, FUTURE_FEATURES};
use crate::error::FlowError;
use candle_core::{DType, Device, Tensor, D};
use rudder_tune::models::diffusion_planner::SceneBatch;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The scene arrays by name, in [`SceneConfig::shapes`] order.
pub const SCENE_ARRAYS: [&str; 6] = [
    "ego",
    "neighbours",
    "static_objects",
    "lanes",
    "lane_limits",
    "route_lanes",
];

/// Samples the statistics are taken from (the first ones of the data set): enough for stable
/// scales, cheap on a large set.
const STATS_SAMPLES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerNormalization {
    /// Per array (by [`SCENE_ARRAYS`] name), the divisor of each feature (last dimension).
    pub scene: HashMap<String, Vec<f32>>,
    /// Mean and standard deviation of the future's (x, y, cos, sin).
    pub future_mean: [f32; FUTURE_FEATURES],
    pub future_std: [f32; FUTURE_FEATURES],
}

fn data_err(what: &str, e: impl std::fmt::Display) -> FlowError {
    FlowError::Data(format!("{what}: {e}"))
}

impl PlannerNormalization {
    /// Scales from a loaded data set (its tensors by name, samples first).
    pub fn from_data(arrays: &HashMap<String, Tensor>) -> Result<Self, FlowError> {
        let mut scene = HashMap::new();
        for name in SCENE_ARRAYS {
            let t = arrays
                .get(name)
                .ok_or_else(|| data_err(name, "missing from the data set"))?;
            let n = t.dim(0).map_err(|e| data_err(name, e))?;
            let head = t
                .narrow(0, 0, n.min(STATS_SAMPLES))
                .map_err(|e| data_err(name, e))?;
            scene.insert(
                name.to_string(),
                feature_rms(&head).map_err(|e| data_err(name, e))?,
            );
        }
        let fut = arrays
            .get("future")
            .ok_or_else(|| data_err("future", "missing from the data set"))?;
        let mask = arrays
            .get("future_mask")
            .ok_or_else(|| data_err("future_mask", "missing from the data set"))?;
        let f: Vec<f32> = fut
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| data_err("future", e))?;
        let m: Vec<f32> = mask
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| data_err("future_mask", e))?;
        let mut sum = [0f64; 2];
        let mut sq = [0f64; 2];
        let mut count = 0f64;
        for (k, &present) in m.iter().enumerate() {
            if present > 0.0 {
                for d in 0..2 {
                    let v = f[k * FUTURE_FEATURES + d] as f64;
                    sum[d] += v;
                    sq[d] += v * v;
                }
                count += 1.0;
            }
        }
        if count == 0.0 {
            return Err(data_err("future_mask", "no future pose in the data set"));
        }
        let mut future_mean = [0.0, 0.0, 0.0, 0.0];
        let mut future_std = [1.0, 1.0, 1.0, 1.0];
        for d in 0..2 {
            let mean = sum[d] / count;
            future_mean[d] = mean as f32;
            future_std[d] = ((sq[d] / count - mean * mean).max(0.0).sqrt() as f32).max(1.0);
        }
        let out = PlannerNormalization {
            scene,
            future_mean,
            future_std,
        };
        out.check()?;
        Ok(out)
    }

    /// Every divisor finite and > 0, every array present with its feature count.
    pub fn check(&self) -> Result<(), FlowError> {
        for name in SCENE_ARRAYS {
            let v = self.scene.get(name).ok_or_else(|| {
                FlowError::input("normalization.json", format!("no scales for `{name}`"))
            })?;
            if v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(FlowError::input(
                    "normalization.json",
                    format!("`{name}` has a scale that is not a positive number: {v:?}"),
                ));
            }
        }
        let ok = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !ok(&self.future_mean)
            || !ok(&self.future_std)
            || self.future_std.iter().any(|s| *s <= 0.0)
        {
            return Err(FlowError::input(
                "normalization.json",
                "future_mean / future_std must be finite with std > 0",
            ));
        }
        Ok(())
    }

    /// The network's batch from raw scene arrays [B, ...]: cut to the entity slots in use,
    /// scaled feature by feature.
    pub fn scene_batch(&self, raw: &SceneBatch) -> Result<SceneBatch, FlowError> {
        let scale = |name: &str, t: &Tensor| -> Result<Tensor, FlowError> {
            let s = &self.scene[name];
            let f = t.dim(D::Minus1).map_err(|e| data_err(name, e))?;
            if f != s.len() {
                return Err(FlowError::input(
                    name,
                    format!("{f} features, the checkpoint's scales have {}", s.len()),
                ));
            }
            let d = Tensor::from_slice(s, f, t.device()).map_err(|e| data_err(name, e))?;
            t.broadcast_div(&d).map_err(|e| data_err(name, e))
        };
        let nb = used_slots(&raw.neighbours).map_err(|e| data_err("neighbours", e))?;
        let st = used_slots(&raw.static_objects).map_err(|e| data_err("static_objects", e))?;
        let ln = used_slots(&raw.lanes).map_err(|e| data_err("lanes", e))?;
        let rt = used_slots(&raw.route_lanes).map_err(|e| data_err("route_lanes", e))?;
        let cut = |name: &str, t: &Tensor, n: usize| -> Result<Tensor, FlowError> {
            t.narrow(1, 0, n).map_err(|e| data_err(name, e))
        };
        Ok(SceneBatch {
            ego: scale("ego", &raw.ego)?,
            neighbours: scale("neighbours", &cut("neighbours", &raw.neighbours, nb)?)?,
            static_objects: scale(
                "static_objects",
                &cut("static_objects", &raw.static_objects, st)?,
            )?,
            lanes: scale("lanes", &cut("lanes", &raw.lanes, ln)?)?,
            lane_limits: scale("lane_limits", &cut("lane_limits", &raw.lane_limits, ln)?)?,
            route_lanes: scale("route_lanes", &cut("route_lanes", &raw.route_lanes, rt)?)?,
        })
    }

    fn future_consts(&self, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_slice(&self.future_mean, FUTURE_FEATURES, dev)?,
            Tensor::from_slice(&self.future_std, FUTURE_FEATURES, dev)?,
        ))
    }

    /// [B, T, 4] in metres to the network's units.
    pub fn normalize_future(&self, f: &Tensor) -> candle_core::Result<Tensor> {
        let (m, s) = self.future_consts(f.device())?;
        f.broadcast_sub(&m)?.broadcast_div(&s)
    }

    /// The network's units back to metres.
    pub fn denormalize_future(&self, f: &Tensor) -> candle_core::Result<Tensor> {
        let (m, s) = self.future_consts(f.device())?;
        f.broadcast_mul(&s)?.broadcast_add(&m)
    }
}

/// Per feature (last dimension), the RMS over the rows with any non-zero feature, at least 1.
fn feature_rms(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    let f = t.dim(D::Minus1)?;
    let rows = t.reshape(((), f))?.to_dtype(DType::F32)?;
    let present = rows.abs()?.sum_keepdim(1)?.gt(0.0)?.to_dtype(DType::F32)?;
    let count = present.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let sq = rows
        .sqr()?
        .broadcast_mul(&present)?
        .sum(0)?
        .to_vec1::<f32>()?;
    Ok(sq.iter().map(|s| (s / count).sqrt().max(1.0)).collect())
}

/// The number of leading entity slots (dimension 1) in use by any sample: one past the last
/// slot with a non-zero feature, at least 1 (the network needs a token to attend to).
fn used_slots(t: &Tensor) -> candle_core::Result<usize> {
    let (b, n) = (t.dim(0)?, t.dim(1)?);
    let present: Vec<f32> = t.reshape((b, n, ()))?.abs()?.sum(2)?.max(0)?.to_vec1()?;
    Ok(present.iter().rposition(|v| *v > 0.0).map_or(1, |i| i + 1))
}

/// One scene's arrays as a raw batch of one.
pub fn scene_tensors(
    cfg: &SceneConfig,
    scene: &Scene,
    dev: &Device,
) -> Result<SceneBatch, FlowError> {
    let shapes = cfg.shapes();
    let arrays = scene.arrays();
    let mut out = Vec::with_capacity(6);
    for ((name, shape), data) in shapes.iter().zip(arrays) {
        let mut dims = vec![1];
        dims.extend(shape);
        if data.len() != dims.iter().product::<usize>() {
            return Err(FlowError::input(
                *name,
                format!("{} values for shape {dims:?}", data.len()),
            ));
        }
        out.push(Tensor::from_slice(data, dims, dev).map_err(|e| data_err(name, e))?);
    }
    let mut it = out.into_iter();
    let mut next = || it.next().ok_or_else(|| data_err("scene", "missing array"));
    Ok(SceneBatch {
        ego: next()?,
        neighbours: next()?,
        static_objects: next()?,
        lanes: next()?,
        lane_limits: next()?,
        route_lanes: next()?,
    })
}

/// The rows `idx` of a loaded data set's scene arrays, as a raw batch.
pub fn select_scenes(
    arrays: &HashMap<String, Tensor>,
    idx: &Tensor,
) -> Result<SceneBatch, FlowError> {
    let get = |name: &str| -> Result<Tensor, FlowError> {
        arrays
            .get(name)
            .ok_or_else(|| data_err(name, "missing from the data set"))?
            .index_select(idx, 0)
            .map_err(|e| data_err(name, e))
    };
    Ok(SceneBatch {
        ego: get("ego")?,
        neighbours: get("neighbours")?,
        static_objects: get("static_objects")?,
        lanes: get("lanes")?,
        lane_limits: get("lane_limits")?,
        route_lanes: get("route_lanes")?,
    })
}
