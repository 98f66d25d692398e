//! The reset-free run's bookkeeping with a policy that keeps the arm still: which task each
//! attempt gets, what ends it, what is counted, and that nothing resets the scene.

use rudder_robot::{
    Action, ActionChunk, ActionSpace, AttemptEnd, Judgement, Learner, Observation, Policy,
    PolicyError, SuccessJudge,
};
use rudder_sim::tabletop::reset_free::{run_reset_free, ResetFreeOptions, ResetFreeRun};
use rudder_sim::tabletop::CameraConfig;

/// Zero end-effector deltas with the gripper open, and a log of attempt ends.
#[derive(Default)]
struct Still {
    ends: Vec<(String, AttemptEnd)>,
    resets: usize,
}

impl Policy for Still {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let a = Action::EefDelta {
            dpos: [0.0; 3],
            drot: [0.0; 3],
            gripper: -1.0,
        };
        ActionChunk::new(ActionSpace::EefDelta7, obs.timestamp, 0.05, vec![a; 8])
            .map_err(|e| PolicyError::Inference(e.to_string()))
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

impl Learner for Still {
    fn end_attempt(&mut self, last: &Observation, end: AttemptEnd) -> Result<(), PolicyError> {
        self.ends.push((last.instruction.clone(), end));
        Ok(())
    }
}

/// Always the same verdict, counting its calls.
struct Fixed(bool, usize);

impl SuccessJudge for Fixed {
    fn judge(&mut self, obs: &Observation) -> Result<Judgement, String> {
        if obs.images.is_empty() {
            return Err("no images".into());
        }
        self.1 += 1;
        Ok(Judgement {
            probability: if self.0 { 0.9 } else { 0.1 },
            success: self.0,
        })
    }
}

fn opts(steps: u64) -> ResetFreeOptions {
    ResetFreeOptions {
        tasks: vec![1, 5],
        steps,
        attempt_steps: Some(30),
        judge_every: 2,
        debounce: 3,
        replan_steps: 8,
        cameras: CameraConfig {
            width: 32,
            height: 32,
        },
        ..ResetFreeOptions::default()
    }
}

#[test]
fn a_yes_switches_after_the_debounce_and_tasks_alternate_forward_and_backward() {
    let mut p = Still::default();
    let mut j = Fixed(true, 0);
    let r = run_reset_free(&opts(24), &mut p, &mut j, &mut ()).unwrap();
    // Three "yes" judged every 2 steps: each attempt lasts 6 steps.
    assert_eq!(r.steps, 24);
    let tasks: Vec<(&str, bool, usize)> = r
        .attempts
        .iter()
        .map(|a| (a.task.as_str(), a.backward, a.steps))
        .collect();
    assert_eq!(
        tasks,
        [
            ("goal_bowl_on_stove", false, 6),
            ("goal_back_bowl_on_stove", true, 6),
            ("goal_turn_on_stove", false, 6),
            ("goal_back_turn_on_stove", true, 6),
        ]
    );
    assert!(r.attempts.iter().all(|a| a.end == AttemptEnd::Success));
    assert_eq!(j.1, 12);
    assert_eq!(p.ends.len(), 4);
    assert_eq!(p.ends[1].0, r.attempts[1].instruction);
    assert_eq!(p.resets, 4, "the policy is told each attempt is new");
    // The arm never moved the bowl onto the stove: the predicate disagrees with each "yes"
    // on the forward tasks (the backward goals held from the start are counted as agreeing).
    assert_eq!((r.interventions, r.manual_resets), (0, 0));
    let (judged, predicate, n) = r.rates(false);
    assert_eq!((judged, predicate, n), (2, 0, 2));
}

#[test]
fn a_no_ends_each_attempt_at_its_budget_and_the_run_at_its_steps() {
    let mut p = Still::default();
    let mut j = Fixed(false, 0);
    let r = run_reset_free(&opts(100), &mut p, &mut j, &mut ()).unwrap();
    let steps: Vec<usize> = r.attempts.iter().map(|a| a.steps).collect();
    assert_eq!(steps, [30, 30, 30, 10]);
    assert!(r.attempts.iter().all(|a| a.end == AttemptEnd::TimeOut));
    assert_eq!(r.steps, 100);
    assert!(r.attempts.iter().all(|a| a.max_probability == 0.1));
}

#[test]
fn advancing_in_pieces_continues_the_same_scene_and_cycle() {
    let mut p = Still::default();
    let mut j = Fixed(true, 0);
    let mut run = ResetFreeRun::new(&opts(24), None).unwrap();
    run.advance(10, &mut p, &mut j, &mut ()).unwrap();
    // Whole attempts: 10 steps asked, two attempts of 6 run.
    assert_eq!(run.report().steps, 12);
    run.advance(100, &mut p, &mut j, &mut ()).unwrap();
    assert!(run.finished());
    let whole = run_reset_free(
        &opts(24),
        &mut Still::default(),
        &mut Fixed(true, 0),
        &mut (),
    )
    .unwrap();
    let a: Vec<&str> = run
        .report()
        .attempts
        .iter()
        .map(|a| a.task.as_str())
        .collect();
    let b: Vec<&str> = whole.attempts.iter().map(|a| a.task.as_str()).collect();
    assert_eq!(a, b);
    // A resumed run restarts its scene once and goes on with the next pair's forward task.
    let resumed = ResetFreeRun::new(&opts(48), Some(run.report().clone())).unwrap();
    assert_eq!(resumed.report().restarts, 1);
}

#[test]
fn unknown_tasks_and_a_failing_detector_are_clear_errors() {
    let mut o = opts(10);
    o.tasks = vec![42];
    let e = run_reset_free(&o, &mut Still::default(), &mut Fixed(true, 0), &mut ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("no task 42"), "{e}");

    struct Broken;
    impl SuccessJudge for Broken {
        fn judge(&mut self, _: &Observation) -> Result<Judgement, String> {
            Err("model file gone".into())
        }
    }
    let e = run_reset_free(&opts(10), &mut Still::default(), &mut Broken, &mut ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("attempt 0")
            && e.contains("goal_bowl_on_stove")
            && e.contains("model file gone"),
        "{e}"
    );
}
