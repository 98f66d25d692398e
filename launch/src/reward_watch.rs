//! A success classifier beside a running tabletop episode (`rudder eval --reward`, launch
//! files with `[reward]`): the campaign's frame tap only swaps the newest frame into a slot,
//! and a worker thread classifies it, so the control tick never waits for the model. Per
//! episode it reports when the classifier first said yes against when the predicate first
//! held, and its verdict on the final state against the simulator's.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rudder_reward::SuccessClassifier;
use rudder_robot::ImageRgb8;
use rudder_sim::tabletop::campaign::{FrameEvent, FrameTap};
use serde::Serialize;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per episode: when the classifier first said yes against when the predicate first held.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EpisodeDetection {
    pub task_index: usize,
    pub episode: usize,
    /// Frames classified while the episode ran.
    pub classified: usize,
    pub first_yes_step: Option<usize>,
    pub first_true_step: Option<usize>,
    /// The verdict on the episode's last frame, and the simulator's.
    pub final_verdict: Option<bool>,
    pub final_p: Option<f64>,
    pub final_truth: bool,
}

/// Classifies the newest frame of a running evaluation on its own thread: the tap only swaps
/// the frame into a slot, so the control tick never waits for the model; frames that arrive
/// while one is being classified replace each other (only the newest matters).
pub struct RewardWatcher {
    slot: Arc<(Mutex<WatchState>, Condvar)>,
    worker: Option<std::thread::JoinHandle<()>>,
    clf: Arc<SuccessClassifier>,
}

/// A classification as the watcher's sink sees it (to log it beside the simulator's truth).
#[derive(Debug, Clone, Copy)]
pub struct Classified {
    pub task_index: usize,
    pub episode: usize,
    /// The frame's step as the tap reported it.
    pub step: usize,
    /// The simulator's predicate at that frame.
    pub truth: bool,
    pub verdict: rudder_reward::Verdict,
}

/// Told every classification, on the watcher's thread.
pub type ClassifiedSink = Arc<dyn Fn(&Classified) + Send + Sync>;

#[derive(Default)]
struct WatchState {
    pending: Option<Pending>,
    stop: bool,
    episodes: BTreeMap<(usize, usize), EpisodeDetection>,
    /// The final state of each episode, classified when the episode ends.
    last: BTreeMap<(usize, usize), Pending>,
    errors: usize,
    first_error: Option<String>,
    latencies_ms: Vec<f64>,
}

#[derive(Clone)]
struct Pending {
    task_index: usize,
    episode: usize,
    step: usize,
    goal_holds: bool,
    frames: [ImageRgb8; 2],
    instruction: String,
}

/// What the watcher saw over a whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchReport {
    pub episodes: Vec<EpisodeDetection>,
    /// Episodes whose final verdict agrees with the simulator's.
    pub final_agreement: usize,
    pub final_judged: usize,
    pub classification_errors: usize,
    pub first_error: Option<String>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Mean of (first yes step - first true step) over episodes with both, in steps.
    pub mean_detection_delay_steps: Option<f64>,
    /// Episodes where the classifier said yes before the predicate ever held.
    pub early_yes: usize,
}

impl RewardWatcher {
    pub fn start(clf: SuccessClassifier) -> Self {
        Self::start_with_sink(clf, None)
    }

    /// [`RewardWatcher::start`] with `sink` told every classification (Rerun logging).
    pub fn start_with_sink(clf: SuccessClassifier, sink: Option<ClassifiedSink>) -> Self {
        let slot: Arc<(Mutex<WatchState>, Condvar)> = Arc::default();
        let clf = Arc::new(clf);
        let (s, c) = (Arc::clone(&slot), Arc::clone(&clf));
        let worker = std::thread::Builder::new()
            .name("reward".into())
            .spawn(move || loop {
                let job = {
                    let mut st = lock(&s.0);
                    loop {
                        if let Some(p) = st.pending.take() {
                            break p;
                        }
                        if st.stop {
                            return;
                        }
                        st = s.1.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                };
                let t0 = Instant::now();
                let r = c.classify(&[&job.frames[0], &job.frames[1]], &job.instruction);
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                let mut st = lock(&s.0);
                st.latencies_ms.push(ms);
                let e = st
                    .episodes
                    .entry((job.task_index, job.episode))
                    .or_insert_with(|| EpisodeDetection {
                        task_index: job.task_index,
                        episode: job.episode,
                        ..Default::default()
                    });
                match r {
                    Ok(v) => {
                        e.classified += 1;
                        if v.success && e.first_yes_step.is_none() {
                            e.first_yes_step = Some(job.step);
                        }
                        drop(st);
                        if let Some(sink) = &sink {
                            sink(&Classified {
                                task_index: job.task_index,
                                episode: job.episode,
                                step: job.step,
                                truth: job.goal_holds,
                                verdict: v,
                            });
                        }
                    }
                    Err(err) => {
                        st.errors += 1;
                        st.first_error.get_or_insert(err.to_string());
                    }
                }
            })
            .ok();
        Self { slot, worker, clf }
    }

    /// The tap to hand the campaign.
    pub fn tap(&self) -> FrameTap {
        let slot = Arc::clone(&self.slot);
        Arc::new(move |e: &FrameEvent<'_>| {
            let (Some(av), Some(wr)) = (
                e.observation.images.get("agentview"),
                e.observation.images.get("wrist"),
            ) else {
                return;
            };
            let p = Pending {
                task_index: e.task_index,
                episode: e.episode,
                step: e.step,
                goal_holds: e.goal_holds,
                frames: [av.clone(), wr.clone()],
                instruction: e.observation.instruction.clone(),
            };
            let mut st = lock(&slot.0);
            if e.last {
                // Judged after the episode by `finish_episode`, not raced by the worker.
                if let Some(d) = st.episodes.get_mut(&(e.task_index, e.episode)) {
                    if e.goal_holds && d.first_true_step.is_none() {
                        d.first_true_step = Some(e.step);
                    }
                }
                st.last.insert((e.task_index, e.episode), p);
                return;
            }
            let d = st
                .episodes
                .entry((e.task_index, e.episode))
                .or_insert_with(|| EpisodeDetection {
                    task_index: e.task_index,
                    episode: e.episode,
                    ..Default::default()
                });
            if e.goal_holds && d.first_true_step.is_none() {
                d.first_true_step = Some(e.step);
            }
            st.pending = Some(p);
            drop(st);
            slot.1.notify_one();
        })
    }

    /// Classifies episode (`task_index`, `episode`)'s last frame (after the episode, off the
    /// loop) and records the simulator's final verdict beside it.
    pub fn finish_episode(&self, task_index: usize, episode: usize, truth: bool) {
        let last = lock(&self.slot.0).last.remove(&(task_index, episode));
        let verdict = last.map(|p| {
            self.clf
                .classify(&[&p.frames[0], &p.frames[1]], &p.instruction)
        });
        let mut st = lock(&self.slot.0);
        let e = st
            .episodes
            .entry((task_index, episode))
            .or_insert_with(|| EpisodeDetection {
                task_index,
                episode,
                ..Default::default()
            });
        e.final_truth = truth;
        match verdict {
            Some(Ok(v)) => {
                e.final_verdict = Some(v.success);
                e.final_p = Some(v.p_success);
            }
            Some(Err(err)) => {
                st.errors += 1;
                st.first_error.get_or_insert(err.to_string());
            }
            None => {}
        }
    }

    pub fn stop(mut self) -> WatchReport {
        {
            let mut st = lock(&self.slot.0);
            st.stop = true;
        }
        self.slot.1.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        let st = std::mem::take(&mut *lock(&self.slot.0));
        let episodes: Vec<EpisodeDetection> = st.episodes.into_values().collect();
        let judged: Vec<&EpisodeDetection> = episodes
            .iter()
            .filter(|e| e.final_verdict.is_some())
            .collect();
        let agree = judged
            .iter()
            .filter(|e| e.final_verdict == Some(e.final_truth))
            .count();
        let delays: Vec<f64> = episodes
            .iter()
            .filter_map(|e| Some(e.first_yes_step? as f64 - e.first_true_step? as f64))
            .collect();
        let early_yes = episodes
            .iter()
            .filter(|e| matches!((e.first_yes_step, e.first_true_step), (Some(y), t) if t.is_none_or(|t| y < t)))
            .count();
        let mut lat = st.latencies_ms;
        lat.sort_by(f64::total_cmp);
        WatchReport {
            final_agreement: agree,
            final_judged: judged.len(),
            classification_errors: st.errors,
            first_error: st.first_error,
            latency_p50_ms: rudder_robot::stats::percentile(&lat, 0.5),
            latency_p99_ms: rudder_robot::stats::percentile(&lat, 0.99),
            mean_detection_delay_steps: (!delays.is_empty())
                .then(|| delays.iter().sum::<f64>() / delays.len() as f64),
            early_yes,
            episodes,
        }
    }
}

/// The watcher's figures under an evaluation's table.
pub fn print_watch(w: &WatchReport) {
    println!(
        "reward classifier: final verdict agrees with the simulator in {}/{} episodes; \
         classification p50 {:.1} ms, p99 {:.1} ms; {} errors{}",
        w.final_agreement,
        w.final_judged,
        w.latency_p50_ms,
        w.latency_p99_ms,
        w.classification_errors,
        w.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "  first yes vs predicate true: mean delay {} steps; {} episodes with a yes before the \
         predicate held",
        w.mean_detection_delay_steps
            .map_or("n/a".to_string(), |d| format!("{d:.1}")),
        w.early_yes
    );
    for e in &w.episodes {
        println!(
            "  task {:>2} episode {:>3}: first yes {:>5}  predicate true {:>5}  final {} (p {}) vs {}",
            e.task_index,
            e.episode,
            e.first_yes_step.map_or("-".into(), |s| s.to_string()),
            e.first_true_step.map_or("-".into(), |s| s.to_string()),
            match e.final_verdict {
                Some(true) => "yes",
                Some(false) => "no ",
                None => " - ",
            },
            e.final_p.map_or("-".into(), |p| format!("{p:.2}")),
            if e.final_truth { "success" } else { "failure" }
        );
    }
}
