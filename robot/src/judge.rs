//! What decides that a task is done when no simulator predicate may: a success detector that
//! looks at the loop's observations (RoboFuME's VLM classifier), and the debounce that keeps
//! one lucky frame from switching tasks. Knows no ML: `rudder-reward` implements the trait.

use crate::types::Observation;

/// One judgement of one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Calibrated probability that the observation's instruction has been carried out.
    pub probability: f64,
    /// The detector's own decision (its threshold).
    pub success: bool,
}

/// Judges whether the instruction in an observation has been carried out.
pub trait SuccessJudge: Send {
    /// The judgement of `obs` (its images and its instruction); an error names what is wrong
    /// with the observation or the detector.
    fn judge(&mut self, obs: &Observation) -> Result<Judgement, String>;
}

/// Success once `needed` judgements in a row said so: a reset-free run switches tasks on this,
/// so a single false "yes" (RoboFuME's costly error) does not end an attempt.
#[derive(Debug, Clone)]
pub struct Debounce {
    needed: usize,
    run: usize,
}

impl Debounce {
    /// `needed` is clamped to at least 1.
    pub fn new(needed: usize) -> Self {
        Self {
            needed: needed.max(1),
            run: 0,
        }
    }

    /// Feeds one judgement; true once the last `needed` were all successes.
    pub fn update(&mut self, success: bool) -> bool {
        self.run = if success { self.run + 1 } else { 0 };
        self.run >= self.needed
    }

    pub fn reset(&mut self) {
        self.run = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_needs_consecutive_successes() {
        let mut d = Debounce::new(3);
        let seq = [true, true, false, true, true, true, true];
        let out: Vec<bool> = seq.iter().map(|&s| d.update(s)).collect();
        assert_eq!(out, [false, false, false, false, false, true, true]);
        d.reset();
        assert!(!d.update(true));
        assert!(Debounce::new(0).update(true));
    }
}
