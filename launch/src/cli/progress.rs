//! The progress bar and step lines every long `rudder` job shows (training runs, data sets).

use indicatif::{ProgressBar, ProgressStyle};
use rudder_tune::train::StepStats;

/// A bar of `n` positions with elapsed time and ETA; hidden when `quiet` (e.g. JSON output).
pub fn bar(n: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(n);
    b.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// A training run's progress: the bar at the optimizer step, the loss beside its moving
/// average (single steps are noisy), and a printed line every `log_every` steps (0: none) that
/// survives in logs where the bar does not.
pub struct TrainProgress {
    bar: ProgressBar,
    avg: Option<f64>,
    log_every: u64,
}

impl TrainProgress {
    /// For a run of `steps` steps, `done` of them already taken (a resumed run).
    pub fn new(steps: u64, done: u64, log_every: u64, quiet: bool) -> Self {
        let bar = bar(steps, quiet);
        bar.set_position(done);
        Self {
            bar,
            avg: None,
            log_every,
        }
    }

    pub fn record(&mut self, s: &StepStats) {
        let e = self.avg.map_or(s.loss, |e| 0.95 * e + 0.05 * s.loss);
        self.avg = Some(e);
        self.bar.set_position(s.step);
        self.bar
            .set_message(format!("loss {:.4} (avg {e:.4}) lr {:.2e}", s.loss, s.lr));
        if self.log_every > 0 && s.step.is_multiple_of(self.log_every) {
            self.bar.suspend(|| {
                println!(
                    "step {:>6}  loss {:.5}  avg {e:.5}  lr {:.3e}  grad_norm {:.3}  {:.2} s/step",
                    s.step, s.loss, s.lr, s.grad_norm, s.seconds
                )
            });
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
