//! The statistics of a steering sweep: how a cluster set to each alpha changes a running
//! policy's motion against the unsteered policy on the same episodes (same init states, same
//! noise draws, so episodes pair up). Per condition: success rate, mean TCP speed and velocity
//! per axis with 95 % intervals, the paired speed change and the direction bias. The episodes
//! come from whatever ran them (`rudder steer sweep` runs the tabletop campaign).

use serde::Serialize;

/// What the sweep reads of one episode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeMotion {
    pub success: bool,
    /// Mean TCP speed, m/s.
    pub mean_speed: f64,
    /// Mean TCP velocity per base axis (x, y, z), m/s.
    pub mean_velocity: [f64; 3],
}

/// A mean with its 95 % interval (mean +- 1.96 sd / sqrt(n)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanCi {
    pub mean: f64,
    pub ci95: [f64; 2],
}

impl MeanCi {
    pub const ZERO: MeanCi = MeanCi {
        mean: 0.0,
        ci95: [0.0, 0.0],
    };

    /// The mean of `v` with its interval (zero width for fewer than two values).
    pub fn of(v: &[f64]) -> MeanCi {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        let half = 1.96 * (var / n).sqrt();
        MeanCi {
            mean,
            ci95: [mean - half, mean + half],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    /// `unsteered`, the cluster's name or the control's.
    pub cluster: String,
    pub alpha: Option<f32>,
    pub episodes: usize,
    pub success_rate: f64,
    pub success_ci95: [f64; 2],
    /// m/s.
    pub mean_speed: MeanCi,
    /// m/s per base axis x, y, z.
    pub mean_velocity: [MeanCi; 3],
    /// Mean speed relative to unsteered, minus 1 (0.2 = 20 % faster).
    pub speed_change: f64,
    /// 95 % interval of `speed_change` from the per-episode differences to unsteered (every
    /// condition runs the same episodes with the same noise draws, so they pair up).
    pub speed_change_ci95: [f64; 2],
    /// Per base axis (x, y, z), m/s: the mean velocity minus the unsteered velocity of the same
    /// episode scaled by the speed ratio; positive z = more upward than a mere change of speed.
    pub direction_bias: [MeanCi; 3],
}

impl Condition {
    /// A condition's own statistics; `success_ci95` is the interval of its success rate (the
    /// campaign's Wilson interval). Relate it to unsteered with [`Self::relate_to_unsteered`].
    pub fn new(
        cluster: &str,
        alpha: Option<f32>,
        runs: &[EpisodeMotion],
        success_ci95: [f64; 2],
    ) -> Condition {
        let n = runs.len();
        let s = runs.iter().filter(|r| r.success).count();
        let speeds: Vec<f64> = runs.iter().map(|r| r.mean_speed).collect();
        let axis =
            |i: usize| MeanCi::of(&runs.iter().map(|r| r.mean_velocity[i]).collect::<Vec<_>>());
        Condition {
            cluster: cluster.into(),
            alpha,
            episodes: n,
            success_rate: s as f64 / n.max(1) as f64,
            success_ci95,
            mean_speed: MeanCi::of(&speeds),
            mean_velocity: [axis(0), axis(1), axis(2)],
            speed_change: 0.0,
            speed_change_ci95: [0.0, 0.0],
            direction_bias: [MeanCi::ZERO; 3],
        }
    }

    /// Sets the speed change and direction bias against the unsteered runs of the same
    /// episodes (paired: d_i = (s_i - u_i) / mean(u), whose mean is mean(s) / mean(u) - 1).
    pub fn relate_to_unsteered(&mut self, runs: &[EpisodeMotion], unsteered: &[EpisodeMotion]) {
        let base = (unsteered.iter().map(|u| u.mean_speed).sum::<f64>()
            / unsteered.len().max(1) as f64)
            .max(1e-12);
        let d: Vec<f64> = runs
            .iter()
            .zip(unsteered)
            .map(|(s, u)| (s.mean_speed - u.mean_speed) / base)
            .collect();
        let m = MeanCi::of(&d);
        self.speed_change = m.mean;
        self.speed_change_ci95 = m.ci95;
        // A cluster that only slows the arm scales its velocity; what is left after undoing
        // the episode's own speed ratio is a change of direction.
        self.direction_bias = std::array::from_fn(|k| {
            let d: Vec<f64> = runs
                .iter()
                .zip(unsteered)
                .map(|(s, u)| {
                    let ratio = if u.mean_speed > 1e-9 {
                        s.mean_speed / u.mean_speed
                    } else {
                        1.0
                    };
                    s.mean_velocity[k] - ratio * u.mean_velocity[k]
                })
                .collect();
            MeanCi::of(&d)
        });
    }
}

/// Whether the speed changes never reverse direction as alpha grows.
pub fn monotonic(changes: &[f64]) -> bool {
    let up = changes.windows(2).all(|w| w[1] >= w[0]);
    let down = changes.windows(2).all(|w| w[1] <= w[0]);
    up || down
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(speed: f64, velocity: [f64; 3]) -> EpisodeMotion {
        EpisodeMotion {
            success: false,
            mean_speed: speed,
            mean_velocity: velocity,
        }
    }

    #[test]
    fn paired_speed_change_has_the_ratio_of_means_and_a_paired_interval() {
        let un: Vec<_> = [0.10, 0.20, 0.30]
            .iter()
            .map(|&s| outcome(s, [0.0, 0.0, -s]))
            .collect();
        let steered: Vec<_> = [0.12, 0.22, 0.32]
            .iter()
            .map(|&s| outcome(s, [0.0, 0.0, -s]))
            .collect();
        let mut c = Condition::new("x", Some(1.0), &[], [0.0, 1.0]);
        c.relate_to_unsteered(&steered, &un);
        // mean 0.22 / 0.20 - 1 = +10 %, and every episode moved by exactly +0.02: no spread.
        assert!((c.speed_change - 0.1).abs() < 1e-12);
        assert!((c.speed_change_ci95[0] - 0.1).abs() < 1e-9);
        assert!((c.speed_change_ci95[1] - 0.1).abs() < 1e-9);
        // Faster along the same direction: no direction bias.
        assert!(c.direction_bias.iter().all(|b| b.mean.abs() < 1e-12));
        let noisy: Vec<_> = [0.14, 0.18, 0.34]
            .iter()
            .map(|&s| outcome(s, [0.0, 0.0, -s]))
            .collect();
        c.relate_to_unsteered(&noisy, &un);
        assert!((c.speed_change - 0.1).abs() < 1e-12);
        assert!(c.speed_change_ci95[0] < 0.1 && c.speed_change_ci95[1] > 0.1);
    }

    #[test]
    fn slowing_down_is_not_a_direction_but_turning_upward_is() {
        let un = vec![
            outcome(0.2, [0.0, 0.0, -0.2]),
            outcome(0.1, [0.0, 0.1, 0.0]),
        ];
        // Half the speed on the same headings.
        let slower = vec![
            outcome(0.1, [0.0, 0.0, -0.1]),
            outcome(0.05, [0.0, 0.05, 0.0]),
        ];
        let mut c = Condition::new("x", Some(1.0), &[], [0.0, 1.0]);
        c.relate_to_unsteered(&slower, &un);
        assert!(c.direction_bias.iter().all(|b| b.mean.abs() < 1e-12));
        // Same speeds, heading up instead.
        let up = vec![outcome(0.2, [0.0, 0.0, 0.2]), outcome(0.1, [0.0, 0.0, 0.1])];
        c.relate_to_unsteered(&up, &un);
        assert!((c.direction_bias[2].mean - 0.25).abs() < 1e-12);
        assert!((c.direction_bias[1].mean + 0.05).abs() < 1e-12);
    }

    #[test]
    fn mean_interval_and_monotonicity() {
        let m = MeanCi::of(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m.mean - 2.5).abs() < 1e-12);
        // sd = 1.29099, half = 1.96 * sd / 2
        assert!((m.ci95[1] - 2.5 - 1.96 * 1.290_994_4 / 2.0).abs() < 1e-6);
        assert_eq!(MeanCi::of(&[4.0]).ci95, [4.0, 4.0]);
        assert!(monotonic(&[0.0, 0.1, 0.1, 0.3]));
        assert!(monotonic(&[0.0, -0.1, -0.2]));
        assert!(!monotonic(&[0.0, 0.2, 0.1]));
    }
}
