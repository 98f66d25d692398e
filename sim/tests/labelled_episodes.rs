//! Labelled episodes for success classifiers: the plain expert's successes carry frames after
//! the goal first holds; every perturbation (hard negative) ends with the goal false and in the
//! end state it describes.

// A module named like the file, so `cargo test -p rudder-sim labelled_episodes` selects these.
mod labelled_episodes {
    use rudder_sim::tabletop::physics::Held;
    use rudder_sim::tabletop::scene::{Joint, Scene, Support};
    use rudder_sim::tabletop::*;
    use std::collections::BTreeMap;
    use std::time::Instant;

    const SEED: u64 = 7;
    const INITS: [usize; 3] = [0, 1, 2];
    const CAMS: CameraConfig = CameraConfig {
        width: 32,
        height: 32,
    };

    fn all_tasks() -> Vec<Task> {
        Suite::ALL
            .iter()
            .flat_map(|&s| load_suite(s).expect("embedded suite"))
            .collect()
    }

    /// The episode's end state, replayed without cameras.
    fn end_state(task: &Task, init: usize, p: Option<Perturbation>, steps: usize) -> TabletopEnv {
        let mut env = TabletopEnv::new(task, SEED, init, None)
            .expect("env")
            .without_audit();
        let mut ex = match p {
            Some(p) => Expert::with_perturbation(&env, p),
            None => Expert::new(&env),
        };
        for _ in 0..steps {
            let a = ex.act(&env);
            env.step(&a);
        }
        env
    }

    fn last_pair(task: &Task) -> Option<(String, String)> {
        match task.goal.last()? {
            Predicate::On(a, b) | Predicate::In(a, b) | Predicate::Above(a, b) => {
                Some((a.clone(), b.clone()))
            }
            _ => None,
        }
    }

    fn centre(scene: &Scene, i: usize) -> [f64; 3] {
        scene.objects[i].bounds().centre()
    }

    fn dist_xy(p: [f64; 3], q: [f64; 3]) -> f64 {
        (p[0] - q[0]).hypot(p[1] - q[1])
    }

    fn check_frames(ep: &LabelledEpisode, s: &FrameSampling) -> Result<(), String> {
        let last = ep.frames.last().ok_or("no frames")?;
        if last.step != ep.steps || !last.in_tail {
            return Err(format!("last frame {} of {} steps", last.step, ep.steps));
        }
        if ep.frames[0].step != 0 || ep.frames[0].goal_holds {
            return Err("first frame is not the start, or the goal holds there".into());
        }
        for w in ep.frames.windows(2) {
            if w[0].step >= w[1].step {
                return Err("frames out of order".into());
            }
        }
        for f in &ep.frames {
            if f.in_tail != (f.step + s.tail_steps > ep.steps) {
                return Err(format!("frame {} misplaced in or out of the tail", f.step));
            }
            if f.agentview.width != CAMS.width || f.wrist.data.len() != 32 * 32 * 3 {
                return Err(format!("frame {} has the wrong image size", f.step));
            }
        }
        Ok(())
    }

    #[test]
    fn plain_expert_episodes_end_in_success_with_frames_after_it() {
        let s = FrameSampling::default();
        let t0 = Instant::now();
        let (mut n, mut ok, mut after_ok) = (0, 0, 0);
        for task in all_tasks() {
            for init in INITS {
                let ep = expert_episode(&task, SEED, init, None, CAMS, &s).expect("episode");
                check_frames(&ep, &s).unwrap_or_else(|e| panic!("{} #{init}: {e}", task.id));
                assert_eq!(ep.perturbation, None);
                n += 1;
                ok += ep.success as usize;
                let first = ep.frames.iter().position(|f| f.goal_holds);
                let after = first.map_or(0, |i| {
                    ep.frames[i + 1..].iter().filter(|f| f.goal_holds).count()
                });
                after_ok += (after >= 5) as usize;
                if !ep.success || after < 5 {
                    println!(
                        "{} #{init}: success {} frames holding after the first {after}",
                        task.id, ep.success
                    );
                }
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "plain: {ok}/{n} end with the goal held, {after_ok}/{n} with >= 5 holding frames after the first; {:.1} ms per episode",
            1e3 * dt / n as f64
        );
        assert!(ok as f64 >= 0.95 * n as f64, "{ok}/{n}");
        assert!(after_ok as f64 >= 0.95 * n as f64, "{after_ok}/{n}");
    }

    #[test]
    fn perturbations_apply_where_they_make_sense() {
        let tasks = all_tasks();
        for p in Perturbation::ALL {
            let k = tasks.iter().filter(|t| p.applies_to(t)).count();
            println!("{:>14}: applies to {k}/{} tasks", p.name(), tasks.len());
            assert!(k > 0, "{} applies to no task", p.name());
        }
        for t in &tasks {
            let place = last_pair(t).is_some();
            assert_eq!(Perturbation::HoldAbove.applies_to(t), place, "{}", t.id);
            assert_eq!(Perturbation::EmptyGripper.applies_to(t), place, "{}", t.id);
            if !place {
                assert!(!Perturbation::WrongObject.applies_to(t), "{}", t.id);
            }
            let drawer = matches!(
                t.goal.last(),
                Some(
                    Predicate::Open(_)
                        | Predicate::Closed(_)
                        | Predicate::TurnedOn(_)
                        | Predicate::TurnedOff(_)
                )
            );
            if !drawer {
                assert!(!Perturbation::DrawerHalf.applies_to(t), "{}", t.id);
            }
        }
        let names: Vec<_> = Perturbation::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "hold_above",
                "drop_beside",
                "empty_gripper",
                "wrong_object",
                "drawer_half"
            ]
        );
        let json = serde_json::to_string(&Perturbation::DropBeside).unwrap();
        assert_eq!(json, "\"drop_beside\"");
        let back: Perturbation = serde_json::from_str("\"wrong_object\"").unwrap();
        assert_eq!(back, Perturbation::WrongObject);
    }

    /// What the end state of a perturbed episode must show, beyond the goal being false.
    fn check_end(
        task: &Task,
        init: usize,
        p: Perturbation,
        env: &TabletopEnv,
        plain: &TabletopEnv,
    ) -> Result<String, String> {
        let w = env.world();
        let scene = &w.scene;
        let start = task.init_state(SEED, init).expect("init");
        if p == Perturbation::DrawerHalf {
            let c = match task.goal.last() {
                Some(
                    Predicate::Open(c)
                    | Predicate::Closed(c)
                    | Predicate::TurnedOn(c)
                    | Predicate::TurnedOff(c),
                ) => scene.index(c).expect("fixture"),
                _ => return Err("no articulation goal".into()),
            };
            let (v0, v1, goal) = match (
                start.objects[c].joint,
                scene.objects[c].joint,
                task.goal.last(),
            ) {
                (
                    Joint::Slide { value: a, max },
                    Joint::Slide { value: b, .. },
                    Some(Predicate::Open(_)),
                ) => (a, b, 0.75 * max),
                (Joint::Slide { value: a, max }, Joint::Slide { value: b, .. }, _) => {
                    (a, b, 0.05 * max)
                }
                (
                    Joint::Knob { value: a, .. },
                    Joint::Knob { value: b, .. },
                    Some(Predicate::TurnedOn(_)),
                ) => (a, b, 0.6),
                (Joint::Knob { value: a, .. }, Joint::Knob { value: b, .. }, _) => (a, b, 0.1),
                _ => return Err("joint kind changed".into()),
            };
            let frac = (v1 - v0) / (goal - v0);
            if w.held.is_some() || !(0.25..=0.8).contains(&frac) {
                return Err(format!("moved {frac:.2} of the way (held {:?})", w.held));
            }
            return Ok(format!("moved {frac:.2} of the way"));
        }
        let (a, b) = last_pair(task).ok_or("no place goal")?;
        let (ia, ib) = (scene.index(&a).unwrap(), scene.index(&b).unwrap());
        // Where the plain expert put the object: the release point.
        let put = centre(&plain.world().scene, ia);
        let put_bottom = plain.world().scene.objects[ia].bounds().min[2];
        match p {
            Perturbation::HoldAbove => {
                let held = matches!(w.held, Some(Held::Object { obj, .. }) if obj == ia);
                let off = dist_xy(centre(scene, ia), put);
                let up = scene.objects[ia].bounds().min[2] - put_bottom;
                if !held || off > 0.03 || !(0.06..=0.12).contains(&up) {
                    return Err(format!(
                        "held {held}, {off:.3} m off the release point, {up:.3} m up"
                    ));
                }
                Ok(format!("{up:.3} m above"))
            }
            Perturbation::DropBeside => {
                let off = dist_xy(centre(scene, ia), put);
                let gap = scene.objects[ia]
                    .bounds()
                    .xy_gap(&scene.objects[ib].bounds());
                if w.held.is_some()
                    || scene.objects[ia].support != Support::Table
                    || gap <= 0.0
                    || !(0.06..=0.25).contains(&off)
                {
                    return Err(format!("held {:?}, {off:.3} m off, gap {gap:.3}", w.held));
                }
                Ok(format!("{off:.3} m off"))
            }
            Perturbation::EmptyGripper => {
                let off = dist_xy(env.tcp(), put);
                if w.held.is_some() || off > 0.05 || scene.objects[ia] != start.objects[ia] {
                    return Err(format!("held {:?}, TCP {off:.3} m off", w.held));
                }
                Ok(format!("TCP {off:.3} m off"))
            }
            Perturbation::WrongObject => {
                let moved: Vec<usize> = (0..scene.objects.len())
                    .filter(|&i| {
                        i != ia && i != ib && dist_xy(centre(scene, i), centre(&start, i)) > 0.02
                    })
                    .collect();
                let Some(&iw) = moved.first() else {
                    return Err("nothing else moved".into());
                };
                let off = dist_xy(centre(scene, iw), put);
                let on_target =
                    matches!(scene.objects[iw].support, Support::Part { obj, .. } if obj == ib);
                let still = dist_xy(centre(scene, ia), centre(&start, ia)) < 1e-6;
                if w.held.is_some() || !still || !on_target || off > 0.05 {
                    return Err(format!(
                        "{} moved, on target {on_target}, {off:.3} m off, goal object still {still}",
                        scene.objects[iw].name
                    ));
                }
                Ok(format!("{} {off:.3} m off", scene.objects[iw].name))
            }
            Perturbation::DrawerHalf => unreachable!(),
        }
    }

    #[test]
    fn perturbed_episodes_end_with_the_goal_false_in_the_state_they_describe() {
        let s = FrameSampling::default();
        let t0 = Instant::now();
        // kind -> (episodes, goal false at the end, end state as described)
        let mut rates: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        let mut episodes = 0;
        for task in all_tasks() {
            for init in INITS {
                let mut plain = None;
                for p in Perturbation::ALL {
                    if !p.applies_to(&task) {
                        continue;
                    }
                    let plain = plain.get_or_insert_with(|| {
                        let ep =
                            expert_episode(&task, SEED, init, None, CAMS, &s).expect("episode");
                        end_state(&task, init, None, ep.steps)
                    });
                    let ep = expert_episode(&task, SEED, init, Some(p), CAMS, &s).expect("episode");
                    episodes += 1;
                    check_frames(&ep, &s)
                        .unwrap_or_else(|e| panic!("{} #{init} {}: {e}", task.id, p.name()));
                    assert_eq!(ep.perturbation, Some(p));
                    let r = rates.entry(p.name()).or_default();
                    r.0 += 1;
                    r.1 += !ep.success as usize;
                    let env = end_state(&task, init, Some(p), ep.steps);
                    assert_eq!(env.goal_holds(), ep.success, "replay differs");
                    match check_end(&task, init, p, &env, plain) {
                        Ok(m) => {
                            r.2 += 1;
                            if init == 0 {
                                println!(
                                    "{} #{init} {}: {m} ({} steps)",
                                    task.id,
                                    p.name(),
                                    ep.steps
                                );
                            }
                        }
                        Err(m) => println!(
                            "{} #{init} {}: FAILED {m} (success {})",
                            task.id,
                            p.name(),
                            ep.success
                        ),
                    }
                }
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "{episodes} perturbed episodes, {:.1} ms each (with the plain reference)",
            1e3 * dt / episodes as f64
        );
        for (k, (n, neg, state)) in &rates {
            println!(
                "{k:>14}: goal false at the end in {neg}/{n} ({:.0} %), end state as described in {state}/{n}",
                100.0 * *neg as f64 / *n as f64
            );
        }
        for (k, (n, neg, state)) in &rates {
            assert!(
                *neg as f64 >= 0.9 * *n as f64,
                "{k}: goal false in {neg}/{n}"
            );
            assert!(
                *state as f64 >= 0.9 * *n as f64,
                "{k}: end state in {state}/{n}"
            );
        }
        assert_eq!(rates.len(), Perturbation::ALL.len());
    }
}
