//! Tabletop simulator: suites, experts, physics invariants, determinism, task-file errors,
//! cameras, demos, the embodiment and throughput.

// A module named like the file, so `cargo test -p rudder-sim tabletop` selects these tests.
mod tabletop {
    use rudder_robot::safety::LimitMonitor;
    use rudder_robot::{
        Action, ActionChunk, ActionSpace, ControlConfig, ControlLoop, Embodiment, JointCommand,
        Observation, Policy, PolicyError, Ur5Model,
    };
    use rudder_sim::tabletop::geom::TOUCH_EPS;
    use rudder_sim::tabletop::physics::{Held, World};
    use rudder_sim::tabletop::scene::{Joint, Support};
    use rudder_sim::tabletop::*;
    use std::time::Duration;

    fn task(suite: Suite, id: &str) -> Task {
        load_suite(suite)
            .expect("embedded suite")
            .into_iter()
            .find(|t| t.id == id)
            .expect("task exists")
    }

    #[test]
    fn embedded_suites_have_ten_tasks_and_fifty_distinct_init_states() {
        for s in Suite::ALL {
            let tasks = load_suite(s).expect("embedded suites parse");
            assert_eq!(tasks.len(), 10, "{s:?}");
            for t in &tasks {
                let a = t.init_state(7, 0).expect("init");
                let b = t.init_state(7, 1).expect("init");
                assert_ne!(a, b, "{}: init states 0 and 1 coincide", t.id);
                assert_eq!(a, t.init_state(7, 0).expect("init"));
                assert_ne!(a, t.init_state(8, 0).expect("init"));
                assert!(
                    !t.goal.iter().all(|g| g.holds(&a)),
                    "{}: goal true at start",
                    t.id
                );
            }
        }
        assert!(matches!(Suite::parse("libero_goal"), Ok(Suite::Goal)));
        assert!(Suite::parse("libero_90").is_err());
    }

    #[test]
    fn scripted_expert_succeeds_on_98_percent_of_every_suite() {
        for s in Suite::ALL {
            let r = run_suite(s, 50, 7, false).expect("suite runs");
            assert!(r.success_rate >= 0.98, "{}: {}", r.suite, r.success_rate);
            for t in &r.tasks {
                assert!(t.success_rate >= 0.94, "{}: {}", t.task, t.success_rate);
            }
            assert_eq!(r.episodes, 500);
            // The physics invariants hold over every step of every episode.
            assert!(r.max_penetration <= TOUCH_EPS, "{}", r.max_penetration);
            assert_eq!(r.limit_violations, 0);
            assert_eq!(r.ik_failures, 0);
            assert!(r.refused_contacts <= 20, "{}", r.refused_contacts);
            let json = serde_json::to_string(&r).expect("serialises");
            assert!(json.contains("\"success_rate\"") && json.contains("\"steps_per_s\""));
        }
    }

    #[test]
    fn suite_runs_with_both_cameras_rendered() {
        let r = run_suite(Suite::Goal, 1, 3, true).expect("suite runs");
        assert!(r.render);
        assert_eq!(r.episodes, 10);
        assert!(r.success_rate >= 0.9, "{}", r.success_rate);
        assert!(r.steps_per_s > 0.0 && r.steps > 0);
        assert!(matches!(
            run_suite(Suite::Goal, 0, 3, false),
            Err(SuiteError::NoEpisodes)
        ));
    }

    #[test]
    fn same_seed_gives_bit_identical_observations() {
        let t = task(Suite::Goal, "goal_open_drawer_bowl_inside");
        let cams = Some(CameraConfig {
            width: 48,
            height: 40,
        });
        let run = |seed: u64| {
            let mut env = TabletopEnv::new(&t, seed, 3, cams).expect("env");
            let mut ex = Expert::new(&env);
            let mut obs = Vec::new();
            for _ in 0..120 {
                obs.push(env.observe());
                let a = ex.act(&env);
                env.step(&a);
            }
            obs
        };
        let (a, b) = (run(11), run(11));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.state.map(f64::to_bits), y.state.map(f64::to_bits));
            assert_eq!(x.agentview, y.agentview);
            assert_eq!(x.wrist, y.wrist);
        }
        let c = run(12);
        assert_ne!(
            a[0].agentview, c[0].agentview,
            "another seed, another layout"
        );
        assert_eq!(
            a[0].agentview.as_ref().map(|i| i.data.len()),
            Some(48 * 40 * 3)
        );
    }

    #[test]
    fn actions_pass_through_ik_and_the_safety_filter() {
        let t = task(Suite::Spatial, "spatial_table_center");
        let mut env = TabletopEnv::new(&t, 7, 0, None).expect("env");
        let mut mon = LimitMonitor::new(env.safety_config().clone(), &env.joints());
        let mut prev = env.tcp();
        // Saturated and out-of-range commands, then NaN: clamped, filtered, never a violation.
        for i in 0..60 {
            let a = if i == 30 {
                [f64::NAN; 7]
            } else {
                [5.0, -3.0, 2.0, 0.0, 0.0, 4.0, 1.0]
            };
            env.step(&a);
            assert_eq!(mon.check(&env.joints()), 0, "step {i}");
            let p = env.tcp();
            let moved = ((p[0] - prev[0]).powi(2) + (p[1] - prev[1]).powi(2)).sqrt();
            assert!(moved < 0.08, "step {i}: {moved}");
            prev = p;
        }
        let st = env.stats();
        assert_eq!(st.non_finite_actions, 1);
        assert!(env.safety_report().clamped_commands > 0 || st.ik_failures > 0);
        let s = env.state();
        assert!((s[6] + s[7]).abs() < 1e-12 && s[6] >= 0.0);
        // Joint-space steps take the same path: speed-limited, then arriving.
        let mut target = env.joints();
        target[0] += 0.4;
        let q0 = env.joints()[0];
        env.step_joints(&target, -1.0);
        assert_eq!(mon.check(&env.joints()), 0);
        let first = env.joints()[0] - q0;
        assert!(
            first > 0.0 && first <= std::f64::consts::PI / 20.0 + 1e-12,
            "{first}"
        );
        for _ in 0..40 {
            env.step_joints(&target, -1.0);
            assert_eq!(mon.check(&env.joints()), 0);
        }
        assert!((env.joints()[0] - target[0]).abs() < 1e-6);
    }

    #[test]
    fn the_hand_never_enters_the_table_or_objects() {
        let t = task(Suite::Object, "object_alphabet_soup");
        let mut env = TabletopEnv::new(&t, 7, 0, None).expect("env");
        // Straight down onto the table: refused once the fingertips reach it.
        for _ in 0..80 {
            env.step(&[0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0]);
        }
        assert!(env.stats().refused_contacts > 0);
        assert!(
            env.tcp()[2] > -TOUCH_EPS && env.tcp()[2] < 0.02,
            "{:?}",
            env.tcp()
        );
        // A seeded random walk: nothing interpenetrates, no joint limit is broken.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut env = TabletopEnv::new(&t, 7, 1, None).expect("env");
        let mut mon = LimitMonitor::new(env.safety_config().clone(), &env.joints());
        let mut at_contact = 0;
        for _ in 0..1500 {
            let mut a = [0.0; 7];
            for x in a.iter_mut() {
                *x = rng.random_range(-1.0..1.0);
            }
            a[2] -= 0.3;
            a[3..6].iter_mut().for_each(|r| *r *= 0.1);
            let info = env.step(&a);
            let v = mon.check(&env.joints());
            if info.refused.is_some() {
                at_contact += v;
            } else {
                assert_eq!(v, 0, "a limit broken away from any contact");
            }
        }
        let st = env.stats();
        assert!(st.max_penetration <= TOUCH_EPS, "{}", st.max_penetration);
        assert!(st.refused_contacts > 0);
        // A contact stops the arm within one tick: the one deceleration the limits cannot bound.
        let c = mon.counts();
        assert_eq!((c.position, c.velocity, c.step, c.non_finite), (0, 0, 0, 0));
        assert_eq!(c.acceleration, at_contact);
    }

    #[test]
    fn drawer_contents_move_with_the_drawer_and_released_objects_settle() {
        let t = task(Suite::Spatial, "spatial_in_drawer");
        let mut world = World::new(t.init_state(7, 0).expect("init"));
        let cab = world.scene.index("cabinet").expect("cabinet");
        let bowl = world.scene.index("bowl_1").expect("bowl");
        let Support::Part { obj, .. } = world.scene.objects[bowl].support else {
            panic!("bowl should rest in the drawer");
        };
        assert_eq!(obj, cab);
        let hp = world.scene.objects[cab].grip_part().expect("handle");
        let hb = world.scene.objects[cab].part_box(hp);
        let c = hb.centre();
        let tcp = [c[0], c[1], hb.min[2] + 0.004];
        let flange = env::down_pose(tcp, 0.0);
        world
            .move_hand(&flange)
            .expect("hand fits around the handle");
        for _ in 0..10 {
            world.actuate(&flange, 1.0);
        }
        assert!(matches!(world.held, Some(Held::Handle { .. })));
        let x0 = world.scene.objects[bowl].pos[0];
        let pushed = env::down_pose([tcp[0] + 0.05, tcp[1], tcp[2]], 0.0);
        world.move_hand(&pushed).expect("drawer slides in");
        let Joint::Slide { value, .. } = world.scene.objects[cab].joint else {
            panic!("cabinet has a slide");
        };
        assert!((value - 0.07).abs() < 1e-9, "{value}");
        assert!((world.scene.objects[bowl].pos[0] - (x0 + 0.05)).abs() < 1e-9);
        // Past the stop: refused, nothing moves.
        let too_far = env::down_pose([tcp[0] - 0.01, tcp[1], tcp[2]], 0.0);
        assert!(world.move_hand(&too_far).is_err());
        assert!(world.scene.worst_penetration() < 1e-12);
    }

    #[test]
    fn expert_leaves_the_object_resting_where_the_goal_wants_it() {
        let t = task(Suite::Goal, "goal_cheese_in_bowl");
        let mut env = TabletopEnv::new(&t, 7, 0, None).expect("env");
        let mut ex = Expert::new(&env);
        while !env.done() {
            let a = ex.act(&env);
            env.step(&a);
        }
        assert!(env.success());
        let s = &env.world().scene;
        let (cheese, bowl) = (s.index("cream_cheese").unwrap(), s.index("bowl").unwrap());
        assert!(matches!(s.objects[cheese].support, Support::Part { obj, .. } if obj == bowl));
        assert!(
            (s.objects[cheese].pos[2] - 0.006).abs() < 1e-9,
            "rests on the bowl floor"
        );
    }

    fn run_with(t: &Task, instruction: &str) -> (usize, f64, f64) {
        let mut env = TabletopEnv::with_instruction(t, 7, 2, instruction, None).expect("env");
        let mut ex = Expert::new(&env);
        let (mut max_z, mut max_y) = (f64::MIN, f64::MIN);
        while !env.done() {
            let a = ex.act(&env);
            env.step(&a);
            let p = env.tcp();
            max_z = max_z.max(p[2]);
            max_y = max_y.max(p[1]);
        }
        assert!(env.success(), "{instruction}");
        (env.steps(), max_z, max_y)
    }

    #[test]
    fn manner_words_change_speed_and_route() {
        let t = task(Suite::Spatial, "spatial_between_plate_ramekin");
        let base = t.instruction.clone();
        let (n, z, y) = run_with(&t, &base);
        let (slow, ..) = run_with(&t, &format!("{base} slowly"));
        let (quick, ..) = run_with(&t, &format!("{base} quickly"));
        let (careful, ..) = run_with(&t, &format!("{base} carefully"));
        assert!(slow as f64 > 1.4 * n as f64, "{slow} vs {n}");
        assert!((quick as f64) < 0.85 * n as f64, "{quick} vs {n}");
        assert!(careful > n, "{careful} vs {n}");
        let (_, za, _) = run_with(&t, &format!("{base} from above"));
        assert!(za > z + 0.07, "{za} vs {z}");
        let (_, _, yl) = run_with(&t, &format!("{base} from the left"));
        assert!(yl > y + 0.1, "{yl} vs {y}");
        assert_eq!(
            Manner::parse("put it down slowly from the left"),
            Manner {
                speed: 0.5,
                careful: false,
                from_above: false,
                from_left: true
            }
        );
    }

    fn parse_err(src: &str) -> TaskError {
        Task::parse("bad.toml", src).expect_err("must be rejected")
    }

    const HEAD: &str =
        "[task]\nid = \"t\"\ninstruction = \"put the cube on the plate\"\nmax_steps = 100\n";

    #[test]
    fn task_file_errors_name_file_and_line() {
        // Unknown object in a goal: the goal's line.
        let e = parse_err(&format!(
        "{HEAD}goal = [\"(On cube plate)\",\n  \"(On ghost plate)\"]\n[[object]]\nname = \"cube\"\nkind = \"block\"\nat = [0.4, 0.0]\n[[object]]\nname = \"plate\"\nkind = \"plate\"\nat = [0.5, 0.2]\n"
    ));
        assert_eq!((e.file.as_str(), e.line), ("bad.toml", 6), "{e}");
        assert!(
            e.to_string()
                .starts_with("bad.toml:6: unknown object `ghost`"),
            "{e}"
        );
        // Unknown kind.
        let e = parse_err(&format!(
        "{HEAD}goal = [\"(Open c)\"]\n[[object]]\nname = \"c\"\nkind = \"dragon\"\nat = [0.4, 0.0]\n"
    ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("unknown object kind `dragon`"), "{e}");
        // Unsatisfiable placement: two objects forced onto the same spot.
        let e = parse_err(&format!(
        "{HEAD}goal = [\"(On a b)\"]\n[[region]]\nname = \"r\"\nmin = [0.40, 0.0]\nmax = [0.41, 0.01]\n[[object]]\nname = \"b\"\nkind = \"plate\"\nregion = \"r\"\n[[object]]\nname = \"a\"\nkind = \"block\"\nregion = \"r\"\n"
    ));
        assert_eq!(e.line, 14, "{e}");
        assert!(e.message.contains("unsatisfiable placement of `a`"), "{e}");
        // Region off the table.
        let e = parse_err(&format!(
        "{HEAD}goal = [\"(Open c)\"]\n[[region]]\nname = \"r\"\nmin = [1.5, 0.0]\nmax = [1.6, 0.1]\n"
    ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("leaves the table"), "{e}");
        // Contradictory goals.
        let e = parse_err(&format!(
        "{HEAD}goal = [\"(Open c)\", \"(Closed c)\"]\n[[object]]\nname = \"c\"\nkind = \"cabinet\"\nat = [0.62, 0.2]\n"
    ));
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("contradictory"), "{e}");
        // A goal that can never hold: the plate cannot be picked up.
        let e = parse_err(&format!(
        "{HEAD}goal = [\"(On plate b)\"]\n[[object]]\nname = \"b\"\nkind = \"basket\"\nat = [0.4, 0.2]\n[[object]]\nname = \"plate\"\nkind = \"plate\"\nat = [0.4, -0.2]\n"
    ));
        assert!(e.message.contains("cannot be picked up"), "{e}");
        // Malformed TOML and unknown fields: toml's span gives the line.
        let e = parse_err(&format!("{HEAD}goal = [\"(Open c)\"\n[[object]]\n"));
        assert!(e.line >= 5, "{e}");
        let e = parse_err(&format!("{HEAD}goal = []\nspeed = 3\n"));
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("speed"), "{e}");
        // In needs a container; placement order matters.
        let e = parse_err(&format!(
            "{HEAD}goal = [\"(In a b)\"]\n[[object]]\nname = \"a\"\nkind = \"block\"\non = \"b\"\n"
        ));
        assert_eq!(e.line, 9, "{e}");
    }

    #[test]
    fn cameras_render_a_recognisable_scene() {
        let t = task(Suite::Goal, "goal_bowl_on_plate");
        let mut env = TabletopEnv::new(&t, 7, 0, Some(CameraConfig::default())).expect("env");
        let o = env.observe();
        let (a, w) = (o.agentview.expect("agent"), o.wrist.expect("wrist"));
        assert_eq!((a.width, a.height, a.data.len()), (128, 128, 128 * 128 * 3));
        let distinct = |img: &rudder_robot::ImageRgb8| {
            let mut v: Vec<[u8; 3]> = img.data.chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
            v.sort();
            v.dedup();
            v.len()
        };
        assert!(distinct(&a) > 20, "{}", distinct(&a));
        assert!(distinct(&w) > 5, "{}", distinct(&w));
        // The table fills the lower middle of the agent view.
        let p = a.pixel(64, 100).expect("pixel");
        assert!(p[0] > p[2], "table colour expected, got {p:?}");
        let mut ex = Expert::new(&env);
        for _ in 0..40 {
            let act = ex.act(&env);
            env.step(&act);
        }
        let o2 = env.observe();
        assert_ne!(o2.agentview.expect("agent").data, a.data);
        assert_ne!(o2.wrist.expect("wrist").data, w.data);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.png");
        render::save_png(&a, &path).expect("png");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[1..4], b"PNG");
    }

    #[test]
    #[ignore = "writes sim/docs/tabletop.png for the README"]
    fn write_readme_image() {
        let t = task(Suite::Goal, "goal_open_drawer_bowl_inside");
        let cam = CameraConfig {
            width: 256,
            height: 256,
        };
        let mut env = TabletopEnv::new(&t, 7, 0, Some(cam)).expect("env");
        let mut ex = Expert::new(&env);
        for _ in 0..75 {
            let a = ex.act(&env);
            env.step(&a);
        }
        let o = env.observe();
        let (a, w) = (o.agentview.expect("agent"), o.wrist.expect("wrist"));
        let mut data = Vec::with_capacity(a.data.len() * 2);
        for y in 0..256usize {
            data.extend_from_slice(&a.data[y * 768..(y + 1) * 768]);
            data.extend_from_slice(&w.data[y * 768..(y + 1) * 768]);
        }
        let both = rudder_robot::ImageRgb8::new("both", 512, 256, data).expect("size");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tabletop.png");
        render::save_png(&both, &path).expect("png");
    }

    #[test]
    fn demos_are_safetensors_shards_with_meta() {
        let dir = tempfile::tempdir().expect("tmp");
        let cams = CameraConfig {
            width: 32,
            height: 24,
        };
        let sum = write_demos(Suite::Goal, 1, dir.path(), 7, cams).expect("demos");
        assert_eq!(sum.episodes.len(), 10);
        assert_eq!(sum.success_rate, 1.0);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).expect("meta"))
                .expect("json");
        assert_eq!(meta["format_version"], DEMO_FORMAT_VERSION);
        assert_eq!(meta["cameras"][0]["name"], "agentview");
        for d in 0..7 {
            let (lo, hi) = (
                meta["action_q01"][d].as_f64().expect("q01"),
                meta["action_q99"][d].as_f64().expect("q99"),
            );
            assert!(lo <= hi && (-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi));
        }
        // Gripper: both open and closed appear in expert demos.
        assert_eq!(meta["action_q01"][6], -1.0);
        assert_eq!(meta["action_q99"][6], 1.0);
        let ep = &sum.episodes[3];
        let bytes = std::fs::read(dir.path().join(&ep.file)).expect("shard");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let img = st.tensor("agentview_rgb").expect("agentview");
        assert_eq!(img.shape(), &[ep.steps, 24, 32, 3]);
        assert_eq!(img.dtype(), safetensors::Dtype::U8);
        assert_eq!(
            st.tensor("wrist_rgb").expect("wrist").shape(),
            &[ep.steps, 24, 32, 3]
        );
        assert_eq!(st.tensor("state").expect("state").shape(), &[ep.steps, 8]);
        let act = st.tensor("actions").expect("actions");
        assert_eq!(act.shape(), &[ep.steps, 7]);
        assert_eq!(act.dtype(), safetensors::Dtype::F32);
        let instr = st.tensor("instruction").expect("instruction");
        assert_eq!(
            std::str::from_utf8(instr.data()).expect("utf8"),
            ep.instruction
        );
        assert_eq!(st.tensor("success").expect("success").data(), &[1u8]);
        assert_eq!(
            st.tensor("task_index").expect("task").data(),
            &3i64.to_le_bytes()
        );
    }

    #[test]
    fn dart_demos_perturb_the_arm_but_record_the_expert() {
        let cams = CameraConfig {
            width: 16,
            height: 16,
        };
        let clean_dir = tempfile::tempdir().expect("tmp");
        let noisy_dir = tempfile::tempdir().expect("tmp");
        let clean = write_demos(Suite::Spatial, 1, clean_dir.path(), 0, cams).expect("demos");
        let noisy = write_demos_with(
            Suite::Spatial,
            1,
            noisy_dir.path(),
            0,
            cams,
            DemoOptions {
                action_noise: 0.15,
                ..DemoOptions::default()
            },
        )
        .expect("demos");
        assert_eq!(noisy.action_noise, 0.15);
        assert_eq!(clean.action_noise, 0.0);
        assert!(noisy.success_rate >= 0.7, "{}", noisy.success_rate);
        let f32s = |dir: &std::path::Path, file: &str, name: &str| -> Vec<f32> {
            let bytes = std::fs::read(dir.join(file)).expect("shard");
            let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
            st.tensor(name)
                .expect(name)
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let mut largest_gap = 0f32;
        for (c, n) in clean.episodes.iter().zip(&noisy.episodes) {
            let (sc, sn) = (
                f32s(clean_dir.path(), &c.file, "state"),
                f32s(noisy_dir.path(), &n.file, "state"),
            );
            // The executed (noisy) path leaves the clean one.
            for (a, b) in sc.chunks_exact(8).zip(sn.chunks_exact(8)) {
                let d = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
                largest_gap = largest_gap.max(d);
            }
            // The recorded actions are the expert's: within its top speed (0.3 m/s x 1.7 for
            // "quickly", at 20 Hz, in 5 cm units = 0.51 per axis), which the noise would break.
            for a in f32s(noisy_dir.path(), &n.file, "actions").chunks_exact(7) {
                let norm = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
                assert!(
                    norm <= 0.52,
                    "recorded action {a:?} is faster than the expert"
                );
            }
        }
        assert!(
            largest_gap > 0.003,
            "noise moved the arm at most {largest_gap} m sideways"
        );
        for bad in [-0.1, f64::NAN, 2.0] {
            let e = write_demos_with(
                Suite::Spatial,
                1,
                noisy_dir.path(),
                0,
                cams,
                DemoOptions {
                    action_noise: bad,
                    ..DemoOptions::default()
                },
            )
            .expect_err("bad noise");
            assert!(e.to_string().contains("action noise"), "{e}");
        }
    }

    struct Descend;

    impl Policy for Descend {
        fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
            let step = Action::EefDelta {
                dpos: [0.0, 0.0, -0.2],
                drot: [0.0; 3],
                gripper: -1.0,
            };
            ActionChunk::new(ActionSpace::EefDelta7, obs.timestamp, 0.05, vec![step; 8])
                .map_err(|e| PolicyError::Inference(e.to_string()))
        }
    }

    #[test]
    fn robot_control_loop_drives_the_simulator() {
        let t = task(Suite::Spatial, "spatial_table_center");
        let env = TabletopEnv::new(
            &t,
            7,
            0,
            Some(CameraConfig {
                width: 32,
                height: 32,
            }),
        )
        .expect("env");
        let mut sim = TabletopSim::new(env);
        assert_eq!(sim.control_rate_hz(), 20.0);
        let o = sim.observe().expect("observe");
        // The loop's layout: joints, velocities and gripper, then LIBERO's 8-D state as the
        // env computes it.
        let layout = sim.state_layout();
        assert_eq!(o.state.len(), 21);
        let libero = sim.env_mut().observe().state;
        assert_eq!(layout.eef_state(&o.state).expect("eef"), libero.as_slice());
        assert_eq!(
            layout.joint_positions(&o.state).expect("joints"),
            sim.env().joints().as_slice()
        );
        assert_eq!(o.images.len(), 2);
        let bad = JointCommand {
            positions: vec![0.0; 5],
            gripper: None,
        };
        assert!(sim.command(&bad).is_err());
        let z0 = sim.env().tcp()[2];
        let cfg = ControlConfig::for_embodiment(&sim, Ur5Model::ur5());
        let lp = ControlLoop::start(sim, Descend, cfg).expect("loop starts");
        std::thread::sleep(Duration::from_millis(1500));
        let (sim, m) = lp.stop().expect("stops");
        assert!(m.ticks >= 15, "{}", m.ticks);
        assert_eq!(m.violations.total(), 0);
        let z1 = sim.env().tcp()[2];
        assert!(z1 < z0 - 0.05, "{z0} -> {z1}");
    }

    #[test]
    fn throughput_is_over_100x_real_libero_with_both_cameras() {
        let r = benchmark(400, Some(CameraConfig::default())).expect("bench");
        let n = benchmark(2000, None).expect("bench");
        assert!(r.speedup_vs_libero >= 100.0, "{r:?}");
        assert!(n.steps_per_s > r.steps_per_s, "{n:?} vs {r:?}");
        println!(
            "render {:.0} steps/s ({:.0}x LIBERO), no render {:.0} steps/s ({:.0}x)",
            r.steps_per_s, r.speedup_vs_libero, n.steps_per_s, n.speedup_vs_libero
        );
    }
}
