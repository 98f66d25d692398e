//! A trained VLA checkpoint (flow or tokens head) behind the tabletop loop (`rudder eval`, `rudder steer sweep`,
//! launch files with `policy.kind = "checkpoint"`), optionally steered.
//!
//! The loop's tabletop observation state is the UR5 layout (6 joint positions, 6 velocities,
//! gripper closure) followed by LIBERO's 8-value state; the policy was trained on the latter,
//! so it gets the last 8 values.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Context;
use rudder_policy::VlaPolicy;
use rudder_robot::{ActionChunk, Observation, Policy, PolicyError};
use rudder_steering::{Dictionary, Geometry, SteerModel, Steerer, SteeringHandle};
use rudder_tune::candle_core::Device;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// LIBERO's state size, the tail of the loop's tabletop state.
const LIBERO_STATE: usize = 8;

pub struct TabletopVla {
    pub inner: Arc<Mutex<VlaPolicy>>,
    /// Model-call latency of every inference, ms (when someone wants it).
    pub latency_ms: Option<Arc<Mutex<Vec<f64>>>>,
    pub steerer: Option<Steerer>,
}

impl TabletopVla {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let p = VlaPolicy::load(dir).with_context(|| format!("loading {}", dir.display()))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(p)),
            latency_ms: None,
            steerer: None,
        })
    }
}

impl Policy for TabletopVla {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        if obs.state.len() < LIBERO_STATE {
            return Err(PolicyError::BadObservation {
                field: "state",
                reason: format!(
                    "{} values, LIBERO's state needs {LIBERO_STATE}",
                    obs.state.len()
                ),
            });
        }
        let view = Observation {
            images: obs.images.clone(),
            state: obs.state[obs.state.len() - LIBERO_STATE..].to_vec(),
            instruction: obs.instruction.clone(),
            timestamp: obs.timestamp,
        };
        let hooks = self.steerer.as_mut().and_then(|s| s.hooks());
        let t0 = Instant::now();
        let out = lock(&self.inner).infer_chunk(&view, hooks);
        if let Some(l) = &self.latency_ms {
            lock(l).push(t0.elapsed().as_secs_f64() * 1e3);
        }
        out
    }
}

/// The steering geometry of a checkpoint's prefix language model.
pub fn geometry(dir: &Path) -> anyhow::Result<Geometry> {
    let m = SteerModel::open(dir, &Device::Cpu)
        .with_context(|| format!("opening {} for steering", dir.display()))?;
    Ok(m.geometry())
}

/// A handle over `dictionary`'s clusters named in `alphas`, each set to its alpha.
pub fn steering(
    checkpoint: &Path,
    dictionary: &Path,
    alphas: &BTreeMap<String, f32>,
) -> anyhow::Result<SteeringHandle> {
    let geo = geometry(checkpoint)?;
    let dict = Dictionary::load(dictionary)?;
    dict.check(dictionary, geo.num_layers, geo.d_ff)?;
    let names: Vec<String> = alphas.keys().cloned().collect();
    let h = SteeringHandle::from_dictionary(&dict, Some(&names), geo)
        .with_context(|| format!("steering clusters from {}", dictionary.display()))?;
    for (n, a) in alphas {
        h.set(n, Some(*a))?;
    }
    Ok(h)
}
