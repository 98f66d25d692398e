//! The reinforcement-learning core shared by the VLA's reset-free RL (Cal-QL, RoboFuME) and,
//! later, the driving planner's DDPO: a replay buffer ([`ReplayBuffer`]) with the offline/online
//! mix, Monte-Carlo returns-to-go ([`mc_returns`]), a Q-ensemble ([`Critic`]) with its target
//! copy and Polyak averaging ([`soft_update`]), the tanh-squashed Gaussian policy head
//! ([`TanhGaussian`]) and Cal-QL's loss pieces ([`cal_ql`]).
//!
//! Everything runs on candle's autograd and reuses the fine-tuning core: the run's generator is
//! [`crate::train::Rng`], the optimiser [`crate::train::AdamW`], seeded initialisation
//! [`crate::train::init_from_scratch`] and files [`crate::checkpoint::save_safetensors_atomic`].
//! Networks keep their variables in a `VarMap` under `vb.pp(...)` names; the networks read the
//! variables' own storage, so an optimiser step or a Polyak update is seen by the next forward
//! pass without rebuilding anything.
//!
//! Files, one concept each: `replay.rs` (transitions, the ring buffer, batches, files),
//! `returns.rs` (discounted return-to-go), `params.rs` (a `VarMap`'s sorted variables, seeded
//! initialisation, Polyak averaging), `mlp.rs` (the MLP both heads are built from),
//! `critic.rs` (the Q-ensemble), `actor.rs` (the tanh-Gaussian), `cal_ql.rs` (the losses).

pub mod actor;
pub mod cal_ql;
pub mod critic;
pub mod mlp;
pub mod params;
pub mod replay;
pub mod returns;

pub use actor::TanhGaussian;
pub use cal_ql::{
    actor_loss, cal_ql_penalty, critic_loss, entropy_alpha_loss, td_target, CalQlConfig, Penalty,
    PenaltyInputs,
};
pub use critic::{Critic, CriticConfig};
pub use mlp::Mlp;
pub use params::{copy_params, init_seeded, soft_update, sorted_params};
pub use replay::{Batch, ReplayBuffer, Transition};
pub use returns::mc_returns;
