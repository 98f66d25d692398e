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

/// The run-folder flags every `rudder train ...` job takes.
pub struct RunLoop<'a> {
    pub out: &'a std::path::Path,
    pub resume: bool,
    /// Optimizer steps of the whole run.
    pub steps: u64,
    /// Write a checkpoint every N steps (0: only the caller's final one).
    pub save_every: u64,
    pub log_every: u64,
    pub quiet: bool,
}

impl RunLoop<'_> {
    /// `--resume` restores the newest checkpoint of `out` (`restore` returns its folder, or
    /// None when there is none yet); without it, a folder that already holds a run is refused
    /// so nothing is overwritten.
    pub fn open<T>(
        &self,
        trainer: &mut T,
        restore: impl FnOnce(&mut T, &std::path::Path) -> anyhow::Result<Option<std::path::PathBuf>>,
        step_count: impl Fn(&T) -> u64,
    ) -> anyhow::Result<()> {
        if self.resume {
            match restore(trainer, self.out)? {
                Some(dir) => eprintln!(
                    "resumed from {} at step {}",
                    dir.display(),
                    step_count(trainer)
                ),
                None => eprintln!(
                    "--resume: no checkpoint in {} yet, starting",
                    self.out.display()
                ),
            }
        } else if self.out.join("latest").exists() {
            anyhow::bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                self.out.display()
            );
        }
        Ok(())
    }

    /// Steps `trainer` to `steps` with the progress bar, saving every `save_every` steps
    /// before the last (the caller writes the final checkpoint).
    pub fn run<T>(
        &self,
        trainer: &mut T,
        done: u64,
        mut step: impl FnMut(&mut T) -> anyhow::Result<StepStats>,
        mut save: impl FnMut(&T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut progress = TrainProgress::new(self.steps, done, self.log_every, self.quiet);
        let mut at = done;
        while at < self.steps {
            let s = step(trainer)?;
            at = s.step;
            progress.record(&s);
            if self.save_every > 0 && s.step.is_multiple_of(self.save_every) && s.step < self.steps
            {
                save(trainer)?;
            }
        }
        progress.finish();
        Ok(())
    }
}
