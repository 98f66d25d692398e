//! Latent-noise RL of a flow VLA (DSRL, REFERENCE §2a) with Cal-QL (§2a): the VLA stays
//! frozen, and an actor chooses the noise its flow head decodes into a chunk. The critic and
//! actor read the VLA's pooled prefix features (what it sees and was asked) and its normalised
//! state; the critic scores a chunk by the noise that produces it, which identifies the chunk
//! exactly because the flow is a deterministic, invertible map for a given observation.
//! Demonstrated chunks enter this space by inverting the flow ([`VlaPolicy::encode_latent`]).
//! The losses, replay buffers, critic and tanh-Gaussian come from tune's shared RL core.
//!
//! As a `robot::Policy` the agent samples noise from its actor (or, when `explore` is off,
//! takes the actor's mode) and learns inside `infer`: the loop runs in simulated time, so
//! learning between chunks is the update-to-data ratio, not a deadline miss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rudder_robot::{ActionChunk, AttemptEnd, Learner, Observation, Policy, PolicyError};
use rudder_tune::checkpoint::{save_safetensors_atomic, TensorStore};
use rudder_tune::rl::{
    actor_loss, cal_ql_penalty, critic_loss, entropy_alpha_loss, mc_returns, soft_update,
    td_target, CalQlConfig, Critic, CriticConfig, Mlp, PenaltyInputs, ReplayBuffer, TanhGaussian,
    Transition,
};
use rudder_tune::train::{AdamW, AdamWConfig, Rng};
use serde::{Deserialize, Serialize};

use crate::vla::VlaPolicy;
use crate::FlowError;

/// What the agent is and how it learns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatentRlConfig {
    pub cal_ql: CalQlConfig,
    /// Hidden sizes of the actor's MLP (the critic's are in `cal_ql`'s defaults, `[256, 256]`).
    pub actor_hidden: Vec<usize>,
    pub critic_hidden: Vec<usize>,
    /// The actor's noise lies in `(-noise_scale, noise_scale)` per entry (tanh squashing).
    pub noise_scale: f64,
    /// Online transitions collected before online updates start.
    pub warmup: usize,
    pub offline_capacity: usize,
    pub online_capacity: usize,
    pub seed: u64,
    /// Initial entropy temperature (tuned towards `-noise_dim` entropy, SAC's rule).
    pub init_entropy_alpha: f64,
}

impl Default for LatentRlConfig {
    fn default() -> Self {
        let cal_ql = CalQlConfig {
            // Cal-QL's 256 at 10 sampled actions costs ~0.3 s per update on two cores; 64
            // keeps one update per chunk inside the chunk's simulated time budget.
            batch_size: 64,
            bc_weight: 1.0,
            ..CalQlConfig::default()
        };
        Self {
            cal_ql,
            actor_hidden: vec![256, 256],
            critic_hidden: vec![256, 256],
            noise_scale: 2.0,
            warmup: 64,
            offline_capacity: 100_000,
            online_capacity: 100_000,
            seed: 0,
            init_entropy_alpha: 0.01,
        }
    }
}

/// Diagnostics of one update, averaged by the caller for curves.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UpdateStats {
    pub critic_loss: f32,
    pub actor_loss: f32,
    pub q_data: f32,
    pub penalty: f32,
    pub clipped_pi: f32,
    pub entropy_alpha: f32,
}

/// The actor: features -> (mean, log_std) of the noise.
struct Actor {
    net: Mlp,
    dim: usize,
    scale: f64,
}

impl Actor {
    fn dist(&self, obs: &Tensor) -> Result<TanhGaussian, FlowError> {
        let out = self.net.forward(obs)?;
        let mean = out.narrow(1, 0, self.dim)?;
        let log_std = out.narrow(1, self.dim, self.dim)?;
        Ok(TanhGaussian::new(&mean, &log_std, self.scale)?)
    }
}

/// One decision not yet closed by the next observation.
struct Pending {
    obs: Vec<f32>,
    action: Vec<f32>,
}

/// The latent-noise Cal-QL agent around a frozen flow VLA.
pub struct LatentAgent {
    vla: Arc<VlaPolicy>,
    cfg: LatentRlConfig,
    device: Device,
    actor: Actor,
    actor_vars: VarMap,
    critic: Critic,
    critic_vars: VarMap,
    target: Critic,
    target_vars: VarMap,
    log_alpha: Var,
    actor_opt: AdamW,
    critic_opt: AdamW,
    alpha_opt: AdamW,
    offline: ReplayBuffer,
    online: ReplayBuffer,
    rng: Rng,
    /// The current attempt's closed transitions (their MC returns come at its end).
    attempt: Vec<Transition>,
    pending: Option<Pending>,
    /// Sample the actor (training) or take its mode (evaluation).
    pub explore: bool,
    /// Learn inside `infer` (online fine-tuning) or not (evaluation, data collection).
    pub learn: bool,
    pub updates: u64,
    pub decisions: u64,
    last_stats: UpdateStats,
    last_q: f32,
    /// (decision, critic value of the chosen noise) since the last [`Self::take_q_log`].
    q_log: Vec<(u64, f32)>,
    /// Where the VLA's state sits in the loop's observation (None: the observation's state is
    /// the VLA's own, as in demos).
    layout: Option<rudder_robot::ArmStateLayout>,
}

fn params(vars: &VarMap) -> Result<Vec<(String, Var)>, FlowError> {
    Ok(rudder_tune::rl::sorted_params(vars)?)
}

impl LatentAgent {
    /// A fresh agent (seeded initialisation) for `vla`, which must have a flow head.
    pub fn new(vla: Arc<VlaPolicy>, cfg: LatentRlConfig) -> Result<Self, FlowError> {
        let (obs_dim, dim) = (vla.feature_dim(), vla.noise_dim());
        if dim == 0 {
            return Err(FlowError::input(
                "policy",
                format!(
                    "{} has a tokens head; latent-noise RL needs the flow head",
                    vla.dir().display()
                ),
            ));
        }
        if !(cfg.noise_scale.is_finite() && cfg.noise_scale > 0.0) {
            return Err(FlowError::input(
                "noise_scale",
                format!("{} must be finite and > 0", cfg.noise_scale),
            ));
        }
        let device = Device::Cpu;
        let actor_vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&actor_vars, DType::F32, &device);
        let net = Mlp::new(obs_dim, &cfg.actor_hidden, 2 * dim, true, vb.pp("actor"))?;
        let actor = Actor {
            net,
            dim,
            scale: cfg.noise_scale,
        };
        let actor_params = rudder_tune::rl::init_seeded(&actor_vars, cfg.seed)?;
        // Start as the VLA's own sampler: mean 0, unit spread.
        for (name, var) in &actor_params {
            if name.starts_with("actor.out") {
                var.set(&var.zeros_like()?)?;
            }
        }
        let critic_vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&critic_vars, DType::F32, &device);
        let mut ccfg = CriticConfig::new(obs_dim, dim);
        ccfg.hidden = cfg.critic_hidden.clone();
        let critic = Critic::new(&ccfg, vb.pp("critic"))?;
        let critic_params = rudder_tune::rl::init_seeded(&critic_vars, cfg.seed ^ 0xc1)?;
        let (target, target_vars) = critic.target_copy(&critic_vars, &device)?;
        let log_alpha = Var::from_tensor(&Tensor::new(
            cfg.init_entropy_alpha.max(1e-8).ln() as f32,
            &device,
        )?)?;
        let opt = |lr: f64| AdamWConfig {
            lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let actor_opt = AdamW::new(actor_params, opt(cfg.cal_ql.policy_lr))?;
        let critic_opt = AdamW::new(critic_params, opt(cfg.cal_ql.q_lr))?;
        let alpha_opt = AdamW::new(
            vec![("log_alpha".into(), log_alpha.clone())],
            opt(cfg.cal_ql.policy_lr),
        )?;
        Ok(Self {
            offline: ReplayBuffer::new(cfg.offline_capacity, obs_dim, dim)?,
            online: ReplayBuffer::new(cfg.online_capacity, obs_dim, dim)?,
            rng: Rng::new(cfg.seed ^ 0xa9e7),
            vla,
            cfg,
            device,
            actor,
            actor_vars,
            critic,
            critic_vars,
            target,
            target_vars,
            log_alpha,
            actor_opt,
            critic_opt,
            alpha_opt,
            attempt: Vec::new(),
            pending: None,
            explore: true,
            learn: true,
            updates: 0,
            decisions: 0,
            last_stats: UpdateStats::default(),
            last_q: 0.0,
            q_log: Vec::new(),
            layout: None,
        })
    }

    /// Reads the VLA's state from the loop's observation through `layout` (the tabletop's
    /// `ArmStateLayout::ur5_libero`, which carries LIBERO's 8-D state at its end).
    pub fn with_layout(mut self, layout: rudder_robot::ArmStateLayout) -> Self {
        self.layout = Some(layout);
        self
    }

    /// The observation as the VLA reads it.
    fn view(&self, obs: &Observation) -> Result<Observation, FlowError> {
        let Some(layout) = &self.layout else {
            return Ok(obs.clone());
        };
        let state = layout
            .eef_state(&obs.state)
            .map_err(|e| FlowError::input("state", e.to_string()))?;
        Ok(Observation {
            images: obs.images.clone(),
            state: state.to_vec(),
            instruction: obs.instruction.clone(),
            timestamp: obs.timestamp,
        })
    }

    pub fn config(&self) -> &LatentRlConfig {
        &self.cfg
    }

    pub fn vla(&self) -> &Arc<VlaPolicy> {
        &self.vla
    }

    pub fn offline_len(&self) -> usize {
        self.offline.len()
    }

    pub fn online_len(&self) -> usize {
        self.online.len()
    }

    pub fn last_stats(&self) -> UpdateStats {
        self.last_stats
    }

    /// The critic's values of the noises chosen since the last call, by decision (for curves).
    pub fn take_q_log(&mut self) -> Vec<(u64, f32)> {
        std::mem::take(&mut self.q_log)
    }

    /// The critic's (ensemble-minimum) value of the last chosen noise.
    pub fn last_q(&self) -> f32 {
        self.last_q
    }

    /// Adds one offline episode: `steps` of (features, noise), the episode's rewards, and
    /// whether it ended in a true terminal (success).
    pub fn add_offline_episode(
        &mut self,
        steps: &[(Vec<f32>, Vec<f32>)],
        rewards: &[f32],
        terminal: bool,
    ) -> Result<(), FlowError> {
        if steps.len() != rewards.len() || steps.is_empty() {
            return Err(FlowError::input(
                "offline episode",
                format!("{} steps but {} rewards", steps.len(), rewards.len()),
            ));
        }
        let returns = mc_returns(rewards, self.cfg.cal_ql.gamma as f32, terminal, None);
        for (i, ((obs, action), (&r, &g))) in
            steps.iter().zip(rewards.iter().zip(&returns)).enumerate()
        {
            let last = i + 1 == steps.len();
            let next_obs = if last {
                obs.clone()
            } else {
                steps[i + 1].0.clone()
            };
            self.offline.push(&Transition {
                obs: obs.clone(),
                action: action.clone(),
                reward: r,
                next_obs,
                done: last && terminal,
                mc_return: g,
            })?;
        }
        Ok(())
    }

    fn row(&self, v: &[f32]) -> Result<Tensor, FlowError> {
        Ok(Tensor::from_vec(v.to_vec(), (1, v.len()), &self.device)?)
    }

    /// The noise for `features`: a sample of the actor or its mode.
    fn choose(&mut self, features: &[f32]) -> Result<Vec<f32>, FlowError> {
        let obs = self.row(features)?;
        let dist = self.actor.dist(&obs)?;
        let a = if self.explore {
            dist.sample(&mut self.rng)?.0
        } else {
            dist.mode()?
        };
        let q = self.critic.forward(&obs, &a)?;
        self.last_q = Critic::min_q(&q)?.flatten_all()?.to_vec1::<f32>()?[0];
        if self.learn && self.q_log.len() < 100_000 {
            self.q_log.push((self.decisions, self.last_q));
        }
        Ok(a.flatten_all()?.to_vec1()?)
    }

    /// One Cal-QL update from the offline buffer alone (pre-training) or mixed with the
    /// online one.
    pub fn update(&mut self, offline_only: bool) -> Result<UpdateStats, FlowError> {
        let cfg = self.cfg.cal_ql.clone();
        let b = cfg.batch_size;
        let batch = if offline_only || self.online.is_empty() {
            self.offline.sample(&mut self.rng, b, &self.device)?
        } else if self.offline.is_empty() {
            self.online.sample(&mut self.rng, b, &self.device)?
        } else {
            ReplayBuffer::sample_mixed(
                &self.offline,
                &self.online,
                cfg.mixing_ratio,
                &mut self.rng,
                b,
                &self.device,
            )?
        };
        let dim = self.actor.dim;
        let n = cfg.n_actions;
        let alpha = self.log_alpha.as_tensor().exp()?.to_scalar::<f32>()? as f64;

        // Critic.
        let dist_next = self.actor.dist(&batch.next_obs)?;
        let (a_next, _) = dist_next.sample(&mut self.rng)?;
        let q_next = Critic::min_q(&self.target.forward(&batch.next_obs, &a_next.detach())?)?;
        let target = td_target(&batch.reward, &batch.done, &q_next, cfg.gamma)?;
        let q_data = self.critic.forward(&batch.obs, &batch.action)?;
        let rows = batch.len();
        let uniform: Vec<f32> = (0..rows * n * dim)
            .map(|_| ((2.0 * self.rng.next_f64() - 1.0) * self.cfg.noise_scale) as f32)
            .collect();
        let a_rand = Tensor::from_vec(uniform, (rows, n, dim), &self.device)?;
        let q_rand = self.critic.forward_n(&batch.obs, &a_rand)?;
        let dist = self.actor.dist(&batch.obs)?;
        let (a_pi, logp_pi) = dist.sample_n(&mut self.rng, n)?;
        let q_pi = self.critic.forward_n(&batch.obs, &a_pi.detach())?;
        let (a_npi, logp_next) = dist_next.sample_n(&mut self.rng, n)?;
        // As CQL's and Cal-QL's code: actions drawn at the next states, scored at these.
        let q_next_pi = self.critic.forward_n(&batch.obs, &a_npi.detach())?;
        let pen_cfg = CalQlConfig {
            action_scale: self.cfg.noise_scale,
            ..cfg.clone()
        };
        let penalty = cal_ql_penalty(
            &PenaltyInputs {
                q_data: &q_data,
                q_rand: &q_rand,
                q_pi: &q_pi,
                logp_pi: &logp_pi.detach(),
                q_next_pi: &q_next_pi,
                logp_next: &logp_next.detach(),
                mc_return: &batch.mc_return,
            },
            dim,
            &pen_cfg,
        )?;
        let c_loss = critic_loss(&q_data, &target, &penalty.loss)?;
        let grads = c_loss.backward()?;
        let g = rudder_tune::train::adamw::collect_grads(&self.critic_opt.params, &grads);
        self.critic_opt.step(&g, cfg.q_lr)?;

        // Actor: maximise the critic, keep entropy, stay near the data's noise (BC).
        let (a, logp) = dist.sample(&mut self.rng)?;
        let q_pi_min = Critic::min_q(&self.critic.forward(&batch.obs, &a)?)?;
        let bc = if cfg.bc_weight != 0.0 {
            Some(dist.log_prob(&batch.action)?.mean_all()?.neg()?)
        } else {
            None
        };
        let a_loss = actor_loss(&q_pi_min, &logp, alpha, bc.as_ref(), cfg.bc_weight)?;
        let grads = a_loss.backward()?;
        let g = rudder_tune::train::adamw::collect_grads(&self.actor_opt.params, &grads);
        self.actor_opt.step(&g, cfg.policy_lr)?;

        let target_entropy = cfg.target_entropy_for(dim);
        let al = entropy_alpha_loss(self.log_alpha.as_tensor(), &logp.detach(), target_entropy)?;
        let grads = al.backward()?;
        let g = rudder_tune::train::adamw::collect_grads(&self.alpha_opt.params, &grads);
        self.alpha_opt.step(&g, cfg.policy_lr)?;

        soft_update(&self.target_vars, &self.critic_vars, cfg.tau)?;
        self.updates += 1;
        let scalar = |t: &Tensor| -> Result<f32, FlowError> {
            Ok(t.detach()
                .to_dtype(DType::F32)?
                .mean_all()?
                .to_scalar::<f32>()?)
        };
        let stats = UpdateStats {
            critic_loss: scalar(&c_loss)?,
            actor_loss: scalar(&a_loss)?,
            q_data: scalar(&q_data)?,
            penalty: scalar(&penalty.loss)?,
            clipped_pi: penalty.clipped_pi,
            entropy_alpha: alpha as f32,
        };
        for (name, v) in [
            ("critic loss", stats.critic_loss),
            ("actor loss", stats.actor_loss),
        ] {
            if !v.is_finite() {
                return Err(FlowError::input(
                    "rl update",
                    format!("{name} is {v} at update {}", self.updates),
                ));
            }
        }
        self.last_stats = stats;
        Ok(stats)
    }

    /// Closes the pending decision with `next` and `reward`.
    fn close(&mut self, next: Option<Vec<f32>>, reward: f32, done: bool) {
        if let Some(p) = self.pending.take() {
            let next_obs = next.unwrap_or_else(|| p.obs.clone());
            self.attempt.push(Transition {
                obs: p.obs,
                action: p.action,
                reward,
                next_obs,
                done,
                mc_return: 0.0,
            });
        }
    }

    fn infer_inner(&mut self, obs: &Observation) -> Result<ActionChunk, FlowError> {
        let obs = &self.view(obs)?;
        let vla = Arc::clone(&self.vla);
        let (decoded, noise) = vla.decode_chosen(obs, &mut |features| {
            self.close(Some(features.to_vec()), 0.0, false);
            self.choose(features)
        })?;
        self.pending = Some(Pending {
            obs: decoded.features,
            action: noise,
        });
        self.decisions += 1;
        if self.learn && self.online.len() + self.attempt.len() >= self.cfg.warmup {
            for _ in 0..self.cfg.cal_ql.utd_ratio.max(1) {
                self.update(false)?;
            }
        }
        self.vla
            .chunk_from_rows(obs.timestamp, &decoded.rows)
            .map_err(|e| FlowError::input("actions", e.to_string()))
    }

    /// Writes the agent (networks, optimisers, buffers, generator, counters) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), FlowError> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (prefix, vars) in [
            ("actor", &self.actor_vars),
            ("critic", &self.critic_vars),
            ("target", &self.target_vars),
        ] {
            for (name, var) in params(vars)? {
                t.insert(format!("{prefix}/{name}"), var.as_tensor().clone());
            }
        }
        t.insert("log_alpha".into(), self.log_alpha.as_tensor().clone());
        for (prefix, opt) in [
            ("opt.actor", &self.actor_opt),
            ("opt.critic", &self.critic_opt),
            ("opt.alpha", &self.alpha_opt),
        ] {
            for (i, (name, _)) in opt.params.iter().enumerate() {
                t.insert(format!("{prefix}.m/{name}"), opt.m[i].clone());
                t.insert(format!("{prefix}.v/{name}"), opt.v[i].clone());
            }
        }
        save_safetensors_atomic(&t, None, &dir.join("agent.safetensors"))?;
        self.offline.save(&dir.join("offline.safetensors"))?;
        self.online.save(&dir.join("online.safetensors"))?;
        let state = AgentState {
            config: self.cfg.clone(),
            rng: self.rng.state,
            updates: self.updates,
            decisions: self.decisions,
            steps: [
                self.actor_opt.step,
                self.critic_opt.step,
                self.alpha_opt.step,
            ],
            policy: self.vla.dir().to_path_buf(),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| FlowError::input("agent state", e.to_string()))?;
        rudder_tune::checkpoint::write_atomic(&dir.join("agent.json"), &json)?;
        Ok(())
    }

    /// Loads an agent saved by [`Self::save`] for `vla` (checked against the saved sizes).
    pub fn load(vla: Arc<VlaPolicy>, dir: &Path) -> Result<Self, FlowError> {
        let json_path = dir.join("agent.json");
        let text = std::fs::read_to_string(&json_path).map_err(|e| FlowError::File {
            path: json_path.clone(),
            problem: e.to_string(),
        })?;
        let state: AgentState = serde_json::from_str(&text).map_err(|e| FlowError::File {
            path: json_path.clone(),
            problem: e.to_string(),
        })?;
        let mut agent = Self::new(vla, state.config.clone())?;
        let path = dir.join("agent.safetensors");
        let store = TensorStore::load_file(&path, &agent.device)?;
        let set = |name: &str, var: &Var| -> Result<(), FlowError> {
            let t = store.get(name)?;
            if t.dims() != var.dims() {
                return Err(FlowError::File {
                    path: path.clone(),
                    problem: format!(
                        "tensor `{name}` is {:?}, the agent for this policy needs {:?}",
                        t.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(t)?;
            Ok(())
        };
        for (prefix, vars) in [
            ("actor", &agent.actor_vars),
            ("critic", &agent.critic_vars),
            ("target", &agent.target_vars),
        ] {
            for (name, var) in params(vars)? {
                set(&format!("{prefix}/{name}"), &var)?;
            }
        }
        set("log_alpha", &agent.log_alpha)?;
        for (prefix, opt) in [
            ("opt.actor", &mut agent.actor_opt),
            ("opt.critic", &mut agent.critic_opt),
            ("opt.alpha", &mut agent.alpha_opt),
        ] {
            for i in 0..opt.params.len() {
                let name = opt.params[i].0.clone();
                opt.m[i] = store.get(&format!("{prefix}.m/{name}"))?.clone();
                opt.v[i] = store.get(&format!("{prefix}.v/{name}"))?.clone();
            }
        }
        agent.actor_opt.step = state.steps[0];
        agent.critic_opt.step = state.steps[1];
        agent.alpha_opt.step = state.steps[2];
        let (o, a) = (agent.vla.feature_dim(), agent.vla.noise_dim());
        agent.offline = ReplayBuffer::load_expecting(&dir.join("offline.safetensors"), o, a)?;
        agent.online = ReplayBuffer::load_expecting(&dir.join("online.safetensors"), o, a)?;
        agent.rng = Rng { state: state.rng };
        agent.updates = state.updates;
        agent.decisions = state.decisions;
        Ok(agent)
    }
}

/// `agent.json`: what the tensors do not hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AgentState {
    config: LatentRlConfig,
    rng: u64,
    updates: u64,
    decisions: u64,
    steps: [u64; 3],
    /// The VLA the agent steers (informational; the caller passes the policy).
    policy: PathBuf,
}

impl Policy for LatentAgent {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        self.infer_inner(obs).map_err(|e| match e {
            FlowError::Input { input, problem } if input == "state" => {
                PolicyError::BadObservation {
                    field: "state",
                    reason: problem,
                }
            }
            other => PolicyError::Inference(other.to_string()),
        })
    }

    fn reset(&mut self) {
        self.pending = None;
    }
}

impl Learner for LatentAgent {
    fn end_attempt(&mut self, last: &Observation, end: AttemptEnd) -> Result<(), PolicyError> {
        let terminal = end == AttemptEnd::Success;
        let next = if terminal {
            None
        } else {
            let view = self
                .view(last)
                .map_err(|e| PolicyError::Inference(e.to_string()))?;
            Some(
                self.vla
                    .latent_features(&view)
                    .map_err(|e| PolicyError::Inference(e.to_string()))?,
            )
        };
        self.close(next, if terminal { 1.0 } else { 0.0 }, terminal);
        let rewards: Vec<f32> = self.attempt.iter().map(|t| t.reward).collect();
        if rewards.is_empty() {
            return Ok(());
        }
        let returns = mc_returns(&rewards, self.cfg.cal_ql.gamma as f32, terminal, None);
        for (mut t, g) in std::mem::take(&mut self.attempt).into_iter().zip(returns) {
            t.mc_return = g;
            self.online
                .push(&t)
                .map_err(|e| PolicyError::Inference(e.to_string()))?;
        }
        Ok(())
    }
}

/// How demonstrations become offline transitions.
#[derive(Debug, Clone)]
pub struct OfflineOptions {
    /// A decision every this many demo steps (the loop's replan interval).
    pub replan_steps: usize,
    /// Demonstrations used per task (the first ones).
    pub episodes_per_task: usize,
    /// Consecutive "yes" judgements that end an episode (as online).
    pub debounce: usize,
}

/// What [`add_demos`] added.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OfflineSummary {
    pub episodes: usize,
    pub transitions: usize,
    /// Episodes the detector judged successful (the rest are offline failures).
    pub judged_successes: usize,
    /// Mean |noise| of the inverted chunks (the flow's prior has mean |N(0,1)| = 0.80).
    pub mean_abs_noise: f32,
}

/// Adds demonstrations to the agent's offline buffer: a decision every `replan_steps` steps,
/// its chunk (the next `horizon` demonstrated actions) inverted to noise, its reward decided
/// by `judge` on the decision's frames, never by the demonstrator's own label. An episode ends
/// at the detector's (debounced) success, a terminal with reward 1; an episode it never calls
/// done is a failure with reward 0 throughout.
pub fn add_demos(
    agent: &mut LatentAgent,
    data: &crate::dataset::DemoDataset,
    judge: &mut dyn rudder_robot::SuccessJudge,
    o: &OfflineOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<OfflineSummary, FlowError> {
    let horizon = agent.vla.action_horizon();
    let step = o.replan_steps.max(1);
    let mut taken: HashMap<usize, usize> = HashMap::new();
    let chosen: Vec<&crate::dataset::Episode> = data
        .episodes
        .iter()
        .filter(|e| {
            let n = taken.entry(e.task_index).or_default();
            *n += 1;
            *n <= o.episodes_per_task
        })
        .collect();
    let mut summary = OfflineSummary::default();
    let (mut abs_sum, mut abs_n) = (0f64, 0usize);
    for (k, ep) in chosen.iter().enumerate() {
        let mut steps = Vec::new();
        let mut rewards = Vec::new();
        let mut debounce = rudder_robot::Debounce::new(o.debounce);
        let mut success = false;
        let mut t = 0;
        let observe = |t: usize| {
            let image = |cam: usize| rudder_robot::ImageRgb8 {
                width: ep.width as u32,
                height: ep.height as u32,
                data: ep.image(cam, t).to_vec(),
            };
            Observation {
                images: [
                    ("agentview".to_string(), image(0)),
                    ("wrist".to_string(), image(1)),
                ]
                .into_iter()
                .collect(),
                state: ep.state_at(t).iter().map(|&v| f64::from(v)).collect(),
                instruction: ep.instruction.clone(),
                timestamp: 0.0,
            }
        };
        while t + 1 < ep.steps {
            let obs = observe(t);
            let rows: Vec<Vec<f32>> = (t..t + horizon).map(|i| ep.action_at(i).to_vec()).collect();
            let (features, noise) = agent.vla.encode_latent(&obs, &rows)?;
            abs_sum += noise.iter().map(|v| f64::from(v.abs())).sum::<f64>();
            abs_n += noise.len();
            steps.push((features, noise));
            // The chunk decided at t is judged by the frame after it was followed.
            let next = (t + step).min(ep.steps - 1);
            let j = judge
                .judge(&observe(next))
                .map_err(|e| FlowError::input("success detector", e))?;
            // A demonstration stops soon after its goal holds, too soon for the debounce's
            // run of verdicts: on its last frame one "yes" is enough.
            let done = debounce.update(j.success) || (next + 1 == ep.steps && j.success);
            rewards.push(if done { 1.0 } else { 0.0 });
            if done {
                success = true;
                break;
            }
            t = next;
        }
        summary.transitions += steps.len();
        summary.judged_successes += success as usize;
        summary.episodes += 1;
        agent.add_offline_episode(&steps, &rewards, success)?;
        progress(k + 1, chosen.len());
    }
    summary.mean_abs_noise = (abs_sum / abs_n.max(1) as f64) as f32;
    Ok(summary)
}
