//! Reset-free tabletop (issue 26): the `At` predicate, the goal suite's backward tasks, their
//! scripted experts chained after the forward ones, `switch_task`, `objects_off_table`,
//! `intervene` and backward demos.

// A module named like the file, so `cargo test -p rudder-sim reset_free` selects these tests.
mod reset_free {
    use rudder_sim::tabletop::demos::DemoError;
    use rudder_sim::tabletop::scene::{Scene, Support};
    use rudder_sim::tabletop::tasks::{Placement, INIT_STATES};
    use rudder_sim::tabletop::*;

    const SEED: u64 = 7;
    /// Init states 0..INITS of `SEED` per forward/backward pair in the chained test.
    const INITS: usize = 10;

    fn goal_tasks() -> Vec<Task> {
        load_suite(Suite::Goal).expect("goal suite")
    }

    fn backward() -> Vec<(String, Task)> {
        load_backward(Suite::Goal).expect("backward suite")
    }

    fn goal_task(id: &str) -> Task {
        goal_tasks()
            .into_iter()
            .find(|t| t.id == id)
            .expect("task exists")
    }

    /// Runs the expert on `env` until it is done.
    fn run_expert(env: &mut TabletopEnv) {
        let mut ex = Expert::new(env);
        while !env.done() {
            let a = ex.act(env);
            env.step(&a);
        }
    }

    fn bits(scene: &Scene) -> Vec<u64> {
        scene
            .objects
            .iter()
            .flat_map(|o| o.pos.map(f64::to_bits))
            .collect()
    }

    // ---- the At predicate ----

    /// A goal-suite scene with the cream cheese resting on the table at `xy` (bounds centre).
    fn cheese_at(xy: [f64; 2]) -> (Scene, usize) {
        let t = goal_task("goal_cheese_in_bowl");
        let mut s = t.init_state(SEED, 0).expect("init");
        let i = s.index("cream_cheese").expect("cheese");
        let c = s.objects[i].bounds().centre();
        s.objects[i].pos[0] += xy[0] - c[0];
        s.objects[i].pos[1] += xy[1] - c[1];
        assert_eq!(s.objects[i].support, Support::Table);
        (s, i)
    }

    #[test]
    fn at_holds_within_the_radius_only_on_the_table() {
        let at = |x: f64, y: f64, r: f64| Predicate::At("cream_cheese".into(), x, y, r);
        // Free table spot well away from everything.
        let (mut s, i) = cheese_at([0.30, -0.30]);
        assert!(at(0.30, -0.30, 0.06).holds(&s), "distance 0");
        assert!(at(0.25, -0.30, 0.06).holds(&s), "distance 0.05, r 0.06");
        assert!(at(0.30, -0.25, 0.06).holds(&s), "distance 0.05 along y");
        assert!(!at(0.23, -0.30, 0.06).holds(&s), "distance 0.07, r 0.06");
        assert!(!at(0.30, -0.37, 0.06).holds(&s), "distance 0.07 along y");
        assert!(at(0.23, -0.30, 0.08).holds(&s), "distance 0.07, r 0.08");
        // In the gripper: nowhere, even right over the spot.
        s.objects[i].support = Support::Held;
        assert!(!at(0.30, -0.30, 0.06).holds(&s), "held");
        // On the plate, centred over the spot: not on the table.
        let t = goal_task("goal_cheese_in_bowl");
        let mut s = t.init_state(SEED, 0).expect("init");
        let (ic, ip) = (
            s.index("cream_cheese").expect("cheese"),
            s.index("plate").expect("plate"),
        );
        let pc = s.objects[ip].bounds().centre();
        let cc = s.objects[ic].bounds().centre();
        s.objects[ic].pos[0] += pc[0] - cc[0];
        s.objects[ic].pos[1] += pc[1] - cc[1];
        s.objects[ic].pos[2] = 0.1;
        s.settle(ic);
        assert!(matches!(s.objects[ic].support, Support::Part { obj, .. } if obj == ip));
        let c = s.objects[ic].bounds().centre();
        assert!(!at(c[0], c[1], 0.06).holds(&s), "on the plate");
        assert!(!at(pc[0], pc[1], 0.06).holds(&s), "on the plate");
        // Unknown object: false, not a panic.
        assert!(!Predicate::At("ghost".into(), 0.3, 0.0, 0.1).holds(&s));
        assert_eq!(at(0.3, 0.0, 0.1).args(), vec!["cream_cheese"]);
    }

    const HEAD: &str = "[task]\nid = \"t\"\ninstruction = \"put the cube back\"\nmax_steps = 100\n";
    const CUBE: &str = "[[object]]\nname = \"cube\"\nkind = \"block\"\nat = [0.4, 0.0]\n[[object]]\nname = \"plate\"\nkind = \"plate\"\nat = [0.5, 0.2]\n";

    fn parse(goal: &str) -> Result<Task, TaskError> {
        Task::parse(
            "at.toml",
            &format!("{HEAD}goal = [\"(On cube plate)\",\n  \"{goal}\"]\n{CUBE}"),
        )
    }

    #[test]
    fn at_parses_and_malformed_at_names_its_line() {
        let t = Task::parse(
            "at.toml",
            &format!("{HEAD}goal = [\"(At cube 0.3 -0.1 0.06)\"]\n{CUBE}"),
        )
        .expect("valid At");
        assert_eq!(t.goal, vec![Predicate::At("cube".into(), 0.3, -0.1, 0.06)]);
        // The At goal sits on line 6 (line 5 holds the first goal).
        for (goal, why) in [
            ("(At cube 0.3 0.1)", "takes 4 argument(s), got 3"),
            ("(At cube 0.3 0.1 0.05 0.2)", "takes 4 argument(s), got 5"),
            ("(At cube)", "takes 4 argument(s), got 1"),
            ("(At cube 0.3 0.1 0)", "radius must be > 0"),
            ("(At cube 0.3 0.1 -0.05)", "radius must be > 0"),
            ("(At cube 0.3 0.1 inf)", "bad radius `inf`"),
            ("(At cube nan 0.1 0.06)", "bad x `nan`"),
            ("(At cube 0.3 zero 0.06)", "bad y `zero`"),
            ("(At cube 2.0 0.1 0.06)", "off the table"),
            ("(At ghost 0.3 0.1 0.06)", "unknown object `ghost`"),
            ("(At plate 0.3 0.1 0.06)", "cannot be picked up"),
        ] {
            let e = parse(goal).expect_err(goal);
            assert_eq!((e.file.as_str(), e.line), ("at.toml", 6), "{goal}: {e}");
            assert!(e.message.contains(why), "{goal}: {e}");
            assert!(e.to_string().starts_with("at.toml:6: "), "{e}");
        }
        // At needs the table, On the plate: never both.
        let e = parse("(At cube 0.3 0.1 0.06)").expect_err("contradiction");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("contradictory"), "{e}");
        // Near's optional distance is a number, not an object name.
        let t = parse("(Near cube plate 0.2)");
        assert!(t.is_ok(), "{t:?}");
    }

    // ---- the backward suite ----

    #[test]
    fn backward_suite_pairs_every_goal_task_with_its_undo() {
        let fwd = goal_tasks();
        let back = backward();
        assert_eq!(back.len(), 10);
        let forward_instr: Vec<&str> = fwd.iter().map(|t| t.instruction.as_str()).collect();
        let mut seen = Vec::new();
        for (f, (fid, b)) in fwd.iter().zip(&back) {
            assert_eq!(&f.id, fid);
            let stem = f.id.strip_prefix("goal_").expect("goal_ prefix");
            assert_eq!(b.id, format!("goal_back_{stem}"));
            assert!(
                b.file.ends_with(&format!("goal_backward/{stem}.toml")),
                "{}",
                b.file
            );
            assert!(
                !forward_instr.contains(&b.instruction.as_str()),
                "`{}` is a forward instruction",
                b.instruction
            );
            assert!(!seen.contains(&b.instruction), "{} twice", b.instruction);
            seen.push(b.instruction.clone());
            assert_eq!((b.max_steps, &b.manners), (f.max_steps, &f.manners));
            // Same scene: every init state is the forward one.
            assert_eq!(b.objects.len(), f.objects.len());
            for k in [0, 17, 49] {
                let (sf, sb) = (
                    f.init_state(SEED, k).expect("fwd"),
                    b.init_state(SEED, k).expect("back"),
                );
                assert_eq!(
                    sf.objects.iter().map(|o| &o.name).collect::<Vec<_>>(),
                    sb.objects.iter().map(|o| &o.name).collect::<Vec<_>>()
                );
            }
            // A pick-and-place undo sends the object to its home region's centre, r 0.06.
            for g in &b.goal {
                if let Predicate::At(a, x, y, r) = g {
                    let spec = f.objects.iter().find(|o| &o.name == a).expect("object");
                    let Placement::Region(home) = spec.placement else {
                        panic!("{a} has no home region");
                    };
                    let c = home.centre();
                    assert!(
                        (c[0] - x).abs() < 1e-9 && (c[1] - y).abs() < 1e-9,
                        "{}",
                        b.id
                    );
                    assert_eq!(*r, 0.06);
                }
            }
        }
        for s in [Suite::Spatial, Suite::Object] {
            assert!(load_backward(s).expect("no backward").is_empty());
        }
    }

    /// (forward succeeded, backward goal false at its start, backward succeeded, steps).
    fn chain(fwd: &Task, back: &Task, k: usize) -> (bool, bool, bool, usize) {
        let mut env = TabletopEnv::new(fwd, SEED, k, None).expect("env");
        run_expert(&mut env);
        if !env.success() {
            return (false, false, false, 0);
        }
        let mut env =
            TabletopEnv::continuing(env, back, &back.instruction_for(k)).expect("same scene");
        let fresh = !env.goal_holds();
        run_expert(&mut env);
        (true, fresh, env.success(), env.steps())
    }

    #[test]
    fn forward_then_backward_expert_succeeds_without_reset() {
        let fwd = goal_tasks();
        let back = backward();
        let mut worst = INITS;
        for (f, (_, b)) in fwd.iter().zip(&back) {
            let (mut ok_f, mut ok_b, mut fresh_n, mut steps) = (0, 0, 0, 0);
            for k in 0..INITS {
                let (sf, fresh, sb, n) = chain(f, b, k);
                ok_f += sf as usize;
                fresh_n += fresh as usize;
                ok_b += sb as usize;
                if sb {
                    steps += n;
                }
            }
            println!(
                "{:34} forward {ok_f}/{INITS}, then backward {ok_b}/{INITS} \
                 (goal false at its start {fresh_n}/{ok_f}, mean {} steps)",
                b.id,
                steps / ok_b.max(1)
            );
            assert_eq!(fresh_n, ok_f, "{}: backward goal held at its start", b.id);
            worst = worst.min(ok_b);
        }
        assert!(worst >= 9, "a pair succeeded in only {worst}/{INITS}");
    }

    #[test]
    fn forward_and_backward_alternate_twice_without_reset() {
        for (f, (_, b)) in goal_tasks().iter().zip(&backward()) {
            for k in 0..5 {
                let mut env = TabletopEnv::new(f, SEED, k, None).expect("env");
                for (c, t) in [f, b, f, b].into_iter().enumerate() {
                    env.switch_task(t, &t.instruction_for(k + c))
                        .expect("same scene");
                    run_expert(&mut env);
                    assert!(env.success(), "{} init {k}, attempt {c}", t.id);
                    assert!(env.objects_off_table().is_empty());
                }
            }
        }
    }

    // ---- reset-free env API ----

    #[test]
    fn switch_task_keeps_the_world_bit_for_bit() {
        let fwd = goal_tasks();
        let back = backward();
        for (f, (_, b)) in fwd.iter().zip(&back) {
            let mut env = TabletopEnv::new(f, SEED, 3, None).expect("env");
            run_expert(&mut env);
            assert!(env.success() && env.steps() > 0);
            let (world, q, qd) = (env.world().clone(), env.joints(), env.joint_velocities());
            env.switch_task(b, "undo it").expect("same scene");
            assert_eq!(bits(&env.world().scene), bits(&world.scene), "{}", b.id);
            assert_eq!(env.world(), &world);
            assert_eq!(env.world().width.to_bits(), world.width.to_bits());
            assert_eq!(env.joints().map(f64::to_bits), q.map(f64::to_bits));
            assert_eq!(
                env.joint_velocities().map(f64::to_bits),
                qd.map(f64::to_bits)
            );
            assert_eq!(
                (env.task().id.as_str(), env.instruction()),
                (b.id.as_str(), "undo it")
            );
            assert_eq!(
                (env.steps(), env.success(), env.stats().steps),
                (0, false, 0)
            );
        }
        // Another scene cannot be continued.
        let spatial = load_suite(Suite::Spatial).expect("spatial");
        let mut env = TabletopEnv::new(&fwd[0], SEED, 0, None).expect("env");
        let e = env
            .switch_task(&spatial[0], "x")
            .expect_err("other objects");
        assert!(e.message.contains("other objects"), "{e}");
        assert_eq!(env.task().id, fwd[0].id);
    }

    #[test]
    fn objects_off_table_and_intervene() {
        let mut tasks = goal_tasks();
        tasks.extend(backward().into_iter().map(|(_, b)| b));
        for t in &tasks {
            for k in 0..INIT_STATES {
                let env = TabletopEnv::new(t, SEED, k, None).expect("env");
                assert!(env.objects_off_table().is_empty(), "{} init {k}", t.id);
            }
        }
        let t = goal_task("goal_bowl_on_plate");
        let mut env = TabletopEnv::new(&t, SEED, 4, None).expect("env");
        for _ in 0..20 {
            env.step(&[0.3, 0.2, -0.2, 0.0, 0.0, 0.0, -1.0]);
        }
        assert!(env.objects_off_table().is_empty());
        let i = env.world().scene.index("bowl").expect("bowl");
        env.world_mut().scene.objects[i].pos[0] = 2.0;
        assert_eq!(env.objects_off_table(), vec!["bowl".to_string()]);
        let j = env.world().scene.index("cream_cheese").expect("cheese");
        env.world_mut().scene.objects[j].pos[2] = -0.2;
        assert_eq!(
            env.objects_off_table(),
            vec!["bowl".to_string(), "cream_cheese".to_string()]
        );
        // Intervention: init state 9 of the current task, arm home, counters restarted.
        env.intervene(SEED, 9).expect("intervene");
        let fresh = TabletopEnv::new(&t, SEED, 9, None).expect("env");
        assert!(env.objects_off_table().is_empty());
        assert_eq!(env.world(), fresh.world());
        assert_eq!(env.joints(), fresh.joints());
        assert_eq!((env.steps(), env.success()), (0, false));
        // The run goes on from there like a fresh episode.
        run_expert(&mut env);
        assert!(env.success());
    }

    // ---- demos ----

    #[test]
    fn demos_with_backward_hold_both_directions() {
        let dir = tempfile::tempdir().expect("tmp");
        let cams = CameraConfig {
            width: 24,
            height: 24,
        };
        let opts = DemoOptions {
            with_backward: true,
            ..DemoOptions::default()
        };
        let sum = write_demos_with(Suite::Goal, 1, dir.path(), SEED, cams, opts).expect("demos");
        let fwd = goal_tasks();
        let back = backward();
        let ids: Vec<String> = fwd
            .iter()
            .map(|t| t.id.clone())
            .chain(back.iter().map(|(_, b)| b.id.clone()))
            .collect();
        assert_eq!(sum.tasks, ids);
        assert_eq!(sum.episodes.len(), 20);
        assert_eq!(sum.success_rate, 1.0);
        for (n, ep) in sum.episodes.iter().enumerate() {
            assert_eq!(ep.task_index, n);
            assert_eq!(ep.task, ids[n]);
            assert_eq!(ep.file, format!("episode_{n:02}_0000.safetensors"));
        }
        // The backward episode starts where the forward one ended: replaying the forward
        // expert and switching gives its first recorded state.
        let (ti, (_, b)) = (4, &back[4]);
        let mut env = TabletopEnv::new(&fwd[ti], SEED, 0, None).expect("env");
        run_expert(&mut env);
        let env = TabletopEnv::continuing(env, b, &b.instruction_for(0)).expect("switch");
        let ep = &sum.episodes[10 + ti];
        assert_eq!(ep.instruction, b.instruction_for(0));
        let bytes = std::fs::read(dir.path().join(&ep.file)).expect("shard");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let state = st.tensor("state").expect("state");
        let first: Vec<f32> = state.data()[..32]
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let want: Vec<f32> = env.state().iter().map(|x| *x as f32).collect();
        assert_eq!(first, want);
        assert_eq!(
            st.tensor("task_index").expect("task").data(),
            &(10i64 + ti as i64).to_le_bytes()
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).expect("meta"))
                .expect("json");
        assert_eq!(meta["tasks"].as_array().map(Vec::len), Some(20));
        assert_eq!(meta["suite"], "goal");
        // Other suites have no backward tasks.
        let e = write_demos_with(Suite::Spatial, 1, dir.path(), SEED, cams, opts)
            .expect_err("spatial has no backward tasks");
        assert!(matches!(e, DemoError::Options(_)), "{e}");
        assert!(e.to_string().contains("goal suite only"), "{e}");
    }
}
