//! Monte-Carlo discounted return-to-go: Cal-QL's reference value `V_mu(s)`, the lower bound its
//! penalty puts under the policy actions' Q-values.

/// The discounted return-to-go of every step of one trajectory:
/// `G_t = r_t + gamma * G_{t+1}`, summed in f64 and rounded once per step.
///
/// How the trajectory's end is treated:
/// - `terminal_at_end == true`: the last state is terminal, nothing follows it
///   (`G_{T-1} = r_{T-1}`); `bootstrap_value` is ignored.
/// - `terminal_at_end == false` (a time-out: the episode was cut, the task goes on):
///   `G_{T-1} = r_{T-1} + gamma * bootstrap_value`, with `None` counting as 0. `None` is what
///   Cal-QL's public code does (`calc_return_to_go` sums to the end of the stored trajectory
///   and masks only true terminals): for sparse success rewards the cut future is mostly 0
///   and the bound stays a valid lower bound. Its "infinite horizon" case, a trajectory whose
///   every reward is the failure reward `r`, is `bootstrap_value = Some(r / (1 - gamma))`,
///   which makes every step's return exactly `r / (1 - gamma)`.
///
/// An empty trajectory gives an empty vector.
pub fn mc_returns(
    rewards: &[f32],
    gamma: f32,
    terminal_at_end: bool,
    bootstrap_value: Option<f32>,
) -> Vec<f32> {
    let gamma = f64::from(gamma);
    let mut next = if terminal_at_end {
        0.0
    } else {
        f64::from(bootstrap_value.unwrap_or(0.0))
    };
    let mut out = vec![0f32; rewards.len()];
    for (o, &r) in out.iter_mut().zip(rewards).rev() {
        next = f64::from(r) + gamma * next;
        *o = next as f32;
    }
    out
}
