//! A trained VLA checkpoint (flow or tokens head) behind the tabletop loop (`rudder eval`,
//! `rudder steer sweep`, launch files with `policy.kind = "checkpoint"`), optionally steered.
//! The checkpoint is read once ([`LoadedVla`]); steering takes its geometry from the loaded
//! model.
//!
//! The policy was trained on LIBERO's 8-D state; the loop's observation carries it at the end
//! of the tabletop layout (`ArmStateLayout::ur5_libero`), which is where it is read from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Context;
use rudder_policy::train::TrainingInfo;
use rudder_policy::VlaPolicy;
use rudder_robot::{ActionChunk, ArmStateLayout, Observation, Policy, PolicyError};
use rudder_steering::{Dictionary, Geometry, Steerer, SteeringHandle};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The loaded model, locked (a poisoned lock only means another thread panicked mid-call).
pub fn lock_model(vla: &LoadedVla) -> MutexGuard<'_, VlaPolicy> {
    lock(&vla.model)
}

/// Half of the trained chunk of 8, as openpi's LIBERO client does with its chunks (replan
/// after 5 of 10): the steering sweep's and launch files' default, kept so their recorded runs
/// reproduce. `rudder eval` follows whole chunks by default instead: on the goal suite a flow
/// checkpoint solved 42/100 held-out episodes following all 8 points of each chunk, 22/100
/// following 4 and 21/100 following 2 (the policy switches between modes of the demos when
/// asked too often).
pub const DEFAULT_REPLAN_STEPS: usize = 4;

/// The observation layout the tabletop VLA reads.
const LAYOUT: ArmStateLayout = ArmStateLayout::ur5_libero();

/// A checkpoint read once: its folder, its training record and the model.
#[derive(Clone)]
pub struct LoadedVla {
    /// The resolved checkpoint folder.
    pub dir: PathBuf,
    /// `training.json`, when the checkpoint has a readable one.
    pub info: Option<TrainingInfo>,
    pub model: Arc<Mutex<VlaPolicy>>,
}

impl LoadedVla {
    /// Loads a checkpoint folder or a run folder's `latest`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let dir = rudder_tune::train::checkpoint::resolve(path)?;
        let info = std::fs::read_to_string(dir.join("training.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let model = VlaPolicy::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
        Ok(Self {
            dir,
            info,
            model: Arc::new(Mutex::new(model)),
        })
    }

    /// Points per chunk (at least 1): no chunk can be followed for longer.
    pub fn horizon(&self) -> usize {
        lock(&self.model).action_horizon().max(1)
    }

    /// The steering geometry of the prefix language model.
    pub fn geometry(&self) -> Geometry {
        Geometry::of(lock(&self.model).language_model())
    }

    /// A handle over `dictionary`'s clusters named in `alphas`, each set to its alpha.
    pub fn steering(
        &self,
        dictionary: &Path,
        alphas: &BTreeMap<String, f32>,
    ) -> anyhow::Result<SteeringHandle> {
        let geo = self.geometry();
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

    /// The loop policy over this model: optionally steered, optionally keeping latencies.
    pub fn policy(
        &self,
        steering: Option<&SteeringHandle>,
        latency_ms: Option<Arc<Mutex<Vec<f64>>>>,
    ) -> TabletopVla {
        TabletopVla {
            inner: Arc::clone(&self.model),
            latency_ms,
            steerer: steering.map(SteeringHandle::steerer),
        }
    }
}

pub struct TabletopVla {
    pub inner: Arc<Mutex<VlaPolicy>>,
    /// Model-call latency of every inference, ms (when someone wants it).
    pub latency_ms: Option<Arc<Mutex<Vec<f64>>>>,
    pub steerer: Option<Steerer>,
}

impl Policy for TabletopVla {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let libero = LAYOUT
            .eef_state(&obs.state)
            .map_err(|e| PolicyError::BadObservation {
                field: "state",
                reason: e.to_string(),
            })?;
        let view = Observation {
            images: obs.images.clone(),
            state: libero.to_vec(),
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

/// A reset-free RL run's actor steering the noise of a loaded VLA, as the loop's policy: the
/// actor's mode, no exploration, no learning. Clones share one agent.
#[derive(Clone)]
pub struct RlActor {
    agent: Arc<Mutex<rudder_policy::rl::LatentAgent>>,
    latency_ms: Arc<Mutex<Vec<f64>>>,
}

impl RlActor {
    /// The agent in `dir` (an `OUT` of `rudder train rl`, or one of its checkpoints) for
    /// `vla`'s checkpoint.
    pub fn load(
        vla: &LoadedVla,
        dir: &Path,
        latency_ms: Arc<Mutex<Vec<f64>>>,
    ) -> anyhow::Result<Self> {
        let dir = rudder_tune::train::checkpoint::latest(dir)?.unwrap_or_else(|| dir.to_path_buf());
        let policy = Arc::new(
            VlaPolicy::load(&vla.dir).with_context(|| format!("loading {}", vla.dir.display()))?,
        );
        let mut agent = rudder_policy::rl::LatentAgent::load(policy, &dir)
            .with_context(|| format!("--rl {}", dir.display()))?
            .with_layout(LAYOUT);
        agent.explore = false;
        agent.learn = false;
        Ok(Self {
            agent: Arc::new(Mutex::new(agent)),
            latency_ms,
        })
    }
}

impl Policy for RlActor {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let t0 = Instant::now();
        let out = lock(&self.agent).infer(obs);
        lock(&self.latency_ms).push(t0.elapsed().as_secs_f64() * 1e3);
        out
    }

    fn reset(&mut self) {
        lock(&self.agent).reset();
    }
}
