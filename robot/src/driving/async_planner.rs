//! Planning off the control thread, for the wall-clock loop: a planner runs on its own
//! thread; each tick the loop hands it the newest observation if it is idle, picks up a plan
//! when one is ready, and otherwise keeps following the last one (a trajectory carries
//! absolute times, so a tracker follows an older plan at the right place). Plan age, inference
//! latency and stale ticks are recorded.

use super::map_view::{LaneId, LightStatus, MapView};
use super::planner::{Observation, Planner, PlannerSetup};
use super::state::{AgentObs, EgoPose, EgoState};
use super::trajectory::Trajectory;
use crate::stats::percentile;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An observation the planner thread can own.
#[derive(Debug, Clone)]
struct OwnedObservation {
    step: usize,
    time_s: f64,
    ego: EgoState,
    ego_history: Vec<EgoState>,
    agents: Vec<AgentObs>,
    lights: Vec<(LaneId, LightStatus)>,
    route: Vec<LaneId>,
}

enum Request {
    Initialize {
        route: Vec<LaneId>,
        expert: Vec<EgoPose>,
        dt: f64,
    },
    Plan(Box<OwnedObservation>),
}

struct Reply {
    plan: Trajectory,
    /// Simulation time of the observation it answers.
    observed_s: f64,
    latency_s: f64,
}

/// What the loop saw of its planner.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlanTimings {
    pub ticks: usize,
    pub plans: usize,
    /// Ticks that followed a plan made for an earlier tick (the next was still computing).
    pub stale_ticks: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// Age of the plan followed at each tick (simulation time since its observation).
    pub plan_age_ms_p50: f64,
    pub plan_age_ms_p99: f64,
    pub plan_age_ms_max: f64,
    #[serde(skip)]
    latencies: Vec<f64>,
    #[serde(skip)]
    ages: Vec<f64>,
}

impl PlanTimings {
    fn finish(&mut self) {
        let ms = |v: &[f64], q: f64| {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            if s.is_empty() {
                0.0
            } else {
                percentile(&s, q) * 1e3
            }
        };
        self.latency_ms_p50 = ms(&self.latencies, 0.5);
        self.latency_ms_p99 = ms(&self.latencies, 0.99);
        self.latency_ms_max = self.latencies.iter().copied().fold(0.0, f64::max) * 1e3;
        self.plan_age_ms_p50 = ms(&self.ages, 0.5);
        self.plan_age_ms_p99 = ms(&self.ages, 0.99);
        self.plan_age_ms_max = self.ages.iter().copied().fold(0.0, f64::max) * 1e3;
    }
}

/// A planner on its own thread.
pub struct AsyncPlanner {
    tx: Option<Sender<Request>>,
    rx: Receiver<Reply>,
    busy: bool,
    current: Option<(Trajectory, f64)>,
    timings: PlanTimings,
    worker: Option<JoinHandle<()>>,
    name: &'static str,
}

impl AsyncPlanner {
    /// Moves `planner` onto a thread of its own; it reads `map`.
    pub fn spawn<M: MapView + Send + Sync + 'static>(
        mut planner: Box<dyn Planner<M>>,
        map: Arc<M>,
    ) -> AsyncPlanner {
        let (tx, req) = channel::<Request>();
        let (rep, rx) = channel::<Reply>();
        let name = planner.name();
        let worker = std::thread::spawn(move || {
            for r in req {
                match r {
                    Request::Initialize { route, expert, dt } => {
                        planner.initialize(&PlannerSetup {
                            map: map.as_ref(),
                            route: &route,
                            expert: &expert,
                            dt,
                        });
                    }
                    Request::Plan(o) => {
                        let t0 = Instant::now();
                        let plan = planner.plan(&Observation {
                            step: o.step,
                            time_s: o.time_s,
                            ego: &o.ego,
                            ego_history: &o.ego_history,
                            agents: &o.agents,
                            lights: &o.lights,
                            map: map.as_ref(),
                            route: &o.route,
                        });
                        let reply = Reply {
                            plan,
                            observed_s: o.time_s,
                            latency_s: t0.elapsed().as_secs_f64(),
                        };
                        if rep.send(reply).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        AsyncPlanner {
            tx: Some(tx),
            rx,
            busy: false,
            current: None,
            timings: PlanTimings::default(),
            worker: Some(worker),
            name,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sets the planner up for a scenario (in order before any plan request).
    pub fn initialize<M: MapView + ?Sized>(&mut self, setup: &PlannerSetup<'_, M>) -> bool {
        self.current = None;
        self.send(Request::Initialize {
            route: setup.route.to_vec(),
            expert: setup.expert.to_vec(),
            dt: setup.dt,
        })
    }

    fn send(&mut self, r: Request) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(r).is_ok())
    }

    fn take(&mut self, reply: Reply) {
        self.busy = false;
        self.timings.plans += 1;
        self.timings.latencies.push(reply.latency_s);
        self.current = Some((reply.plan, reply.observed_s));
    }

    /// One tick: collects a finished plan, hands `obs` to the planner if it is idle, and
    /// returns the plan to follow now. Before the first plan of a scenario it waits for it
    /// (up to `first_timeout`). None when the planner's thread is gone (the caller stops in
    /// a controlled way rather than follow a plan nobody updates) or the first plan did not
    /// come in time.
    pub fn tick<M: MapView + ?Sized>(
        &mut self,
        obs: &Observation<'_, M>,
        first_timeout: Duration,
    ) -> Option<&Trajectory> {
        loop {
            match self.rx.try_recv() {
                Ok(r) => self.take(r),
                Err(TryRecvError::Empty) => break,
                // The planner's thread is gone (it panicked): no plan to follow any more.
                Err(TryRecvError::Disconnected) => return None,
            }
        }
        if !self.busy {
            let owned = OwnedObservation {
                step: obs.step,
                time_s: obs.time_s,
                ego: *obs.ego,
                ego_history: obs.ego_history.to_vec(),
                agents: obs.agents.to_vec(),
                lights: obs.lights.to_vec(),
                route: obs.route.to_vec(),
            };
            if !self.send(Request::Plan(Box::new(owned))) {
                return None;
            }
            self.busy = true;
        }
        if self.current.is_none() && self.busy {
            match self.rx.recv_timeout(first_timeout) {
                Ok(r) => self.take(r),
                Err(_) => return None,
            }
        }
        self.timings.ticks += 1;
        let (plan, observed) = self.current.as_ref()?;
        let age = (obs.time_s - observed).max(0.0);
        if age > 0.0 {
            self.timings.stale_ticks += 1;
        }
        self.timings.ages.push(age);
        Some(plan)
    }

    /// The age of the plan followed at each tick so far (s).
    pub fn ages(&self) -> &[f64] {
        &self.timings.ages
    }

    /// The timings so far, percentiles filled in.
    pub fn timings(&self) -> PlanTimings {
        let mut t = self.timings.clone();
        t.finish();
        t
    }
}

impl Drop for AsyncPlanner {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop once its current plan is done.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
