//! The wall-clock driving loop with the planner on its own thread: a fast planner scores as in
//! lockstep; a planner slower than a tick is followed through its older plans (stale ticks,
//! plan age and latency measured) and still drives the scenario; a planner whose thread dies
//! stops the run with an error naming it, never a panic or a silent success.

use rudder_robot::driving::{Observation, Planner, PlannerSetup, Trajectory};
use rudder_sim::driving::generator::generate;
use rudder_sim::driving::map::Map;
use rudder_sim::driving::metrics::evaluate;
use rudder_sim::driving::simulation::{simulate, simulate_realtime, Mode};
use rudder_sim::driving::PlannerKind;
use std::time::Duration;

/// A planner that takes `delay` per plan, or panics at step `panic_at`.
struct Slow {
    inner: Box<dyn Planner<Map>>,
    delay: Duration,
    panic_at: Option<usize>,
}

impl Planner<Map> for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn initialize(&mut self, s: &PlannerSetup<'_, Map>) {
        self.inner.initialize(s)
    }
    fn plan(&mut self, obs: &Observation<'_, Map>) -> Trajectory {
        if Some(obs.step) == self.panic_at {
            panic!("planner failure injected at step {}", obs.step);
        }
        std::thread::sleep(self.delay);
        self.inner.plan(obs)
    }
}

#[test]
fn realtime_loop_follows_older_plans_and_reports_timing() {
    let s = generate(7, 0);
    let lockstep = evaluate(
        &s,
        &simulate(&s, &mut *PlannerKind::Idm.build(), Mode::NonReactive).unwrap(),
    );

    // Fast planner at 100 Hz (ten times real time): the newest plan is at most a tick old,
    // and the score stays close to the lockstep run's.
    let (hist, rt) = simulate_realtime(
        &s,
        PlannerKind::Idm.build(),
        Mode::NonReactive,
        100.0,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(rt.planning.ticks, hist.ego.len());
    assert_eq!(rt.followed.len(), hist.ego.len());
    assert!(rt.planning.plans >= hist.ego.len() / 2, "{:?}", rt.planning);
    let fast = evaluate(&s, &hist);
    assert!(
        (fast.score - lockstep.score).abs() < 0.15,
        "realtime {} vs lockstep {}",
        fast.score,
        lockstep.score
    );

    // A planner that needs 35 ms at 100 Hz: about one plan per four ticks, each tick follows
    // the newest plan there is, and the ego still gets through the scenario.
    let slow = Slow {
        inner: PlannerKind::Idm.build(),
        delay: Duration::from_millis(35),
        panic_at: None,
    };
    let (hist, rt) = simulate_realtime(
        &s,
        Box::new(slow),
        Mode::NonReactive,
        100.0,
        Duration::from_secs(10),
    )
    .unwrap();
    let p = &rt.planning;
    assert_eq!(p.ticks, hist.ego.len());
    assert!(p.plans < p.ticks / 2, "{p:?}");
    assert!(p.stale_ticks > p.ticks / 2, "{p:?}");
    assert!(p.latency_ms_p50 >= 35.0, "{p:?}");
    // Ages are simulation time: a 35 ms plan at 10 ms ticks is 4-5 ticks = 0.4-0.5 s old.
    assert!(p.plan_age_ms_max >= 300.0, "{p:?}");
    let m = evaluate(&s, &hist);
    assert!(m.no_ego_at_fault_collisions > 0.0, "{m:?}");

    // A planner whose thread dies: an error naming it and the step, after the first plan.
    let dying = Slow {
        inner: PlannerKind::Idm.build(),
        delay: Duration::ZERO,
        panic_at: Some(5),
    };
    let e = simulate_realtime(
        &s,
        Box::new(dying),
        Mode::NonReactive,
        100.0,
        Duration::from_secs(10),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("slow") && e.contains("no plan"), "{e}");

    // A rate outside what the loop can run is refused.
    assert!(simulate_realtime(
        &s,
        PlannerKind::Idm.build(),
        Mode::NonReactive,
        f64::NAN,
        Duration::from_secs(1)
    )
    .is_err());
}
