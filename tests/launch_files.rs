//! Launch-file validation: one test per kind of mistake, each checking that the error names the
//! file, the line and the field.

use rudder::launchfile::run::{run, RunOptions};
use rudder::launchfile::{LaunchError, LaunchFile};
use std::path::Path;

mod common;

const GOOD: &str = r#"[embodiment]
kind = "sim.tabletop"

[task]
suite = "spatial"
index = 2

[policy]
kind = "scripted"
"#;

fn parse_err(src: &str) -> LaunchError {
    match LaunchFile::parse("bad.toml", src) {
        Ok(lf) => panic!("expected an error, parsed {lf:?}"),
        Err(e) => e,
    }
}

fn check(e: &LaunchError, line: usize, field: &str, words: &str) {
    assert_eq!(e.file, "bad.toml", "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.field, field, "{e}");
    assert!(
        e.message.contains(words),
        "`{words}` not in the message: {e}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("bad.toml:{line}: field `{field}`")),
        "{shown}"
    );
}

#[test]
fn the_shipped_launch_files_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        "launch/tabletop.toml",
        "launch/driving.toml",
        "launch/ur5.toml",
    ] {
        let lf = LaunchFile::load(&root.join(f)).unwrap_or_else(|e| panic!("{e}"));
        assert!(lf.rate_hz() > 0.0, "{f}");
    }
    let lf = LaunchFile::parse("good.toml", GOOD).expect("good file");
    assert_eq!(lf.rate_hz(), 20.0);
    assert_eq!(lf.recording.rrd, Path::new("rudder.rrd"));
}

#[test]
fn unknown_field_names_its_line() {
    let src = GOOD.replace("index = 2", "index = 2\ncolour = \"red\"");
    let e = parse_err(&src);
    check(&e, 7, "colour", "unknown field");
}

#[test]
fn wrong_type_names_the_field() {
    let src = GOOD.replace("index = 2", "index = \"two\"");
    let e = parse_err(&src);
    check(&e, 6, "task.index", "invalid type");
}

#[test]
fn unknown_embodiment_lists_the_known_ones() {
    let src = GOOD.replace("sim.tabletop", "sim.kitchen");
    let e = parse_err(&src);
    check(&e, 2, "embodiment.kind", "sim.kitchen");
    assert!(
        e.message.contains("sim.tabletop") && e.message.contains("ros2.ur5"),
        "{e}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let e = LaunchFile::load(Path::new("launch/does-not-exist.toml")).expect_err("missing");
    assert_eq!(e.file, "launch/does-not-exist.toml");
    assert_eq!(e.line, None);
    assert!(e.to_string().contains("cannot read the launch file"), "{e}");
}

#[test]
fn bad_rate_is_rejected() {
    let src = format!("{GOOD}\n[control]\nrate_hz = -5.0\n");
    check(&parse_err(&src), 12, "control.rate_hz", "0 < rate_hz");
    let src = format!("{GOOD}\n[control]\nrate_hz = nan\n");
    check(&parse_err(&src), 12, "control.rate_hz", "0 < rate_hz");
}

#[test]
fn tabletop_rate_must_be_the_simulators() {
    let src = format!("{GOOD}\n[control]\nrate_hz = 125.0\n");
    check(&parse_err(&src), 12, "control.rate_hz", "20 Hz");
}

#[test]
fn missing_section_names_the_embodiment() {
    let src = "[embodiment]\nkind = \"sim.tabletop\"\n\n[policy]\nkind = \"scripted\"\n";
    let e = parse_err(src);
    check(&e, 2, "task", "needs a [task] section");
}

#[test]
fn missing_required_field() {
    let src = GOOD.replace("kind = \"scripted\"", "chunk_len = 4");
    let e = parse_err(&src);
    assert_eq!(e.field, "kind", "{e}");
    assert!(e.message.contains("missing field"), "{e}");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn section_that_does_not_apply() {
    let src = format!("{GOOD}\n[scenarios]\ncount = 2\n");
    check(&parse_err(&src), 11, "scenarios", "does not apply");
}

#[test]
fn task_index_out_of_range() {
    let src = GOOD.replace("index = 2", "index = 99");
    check(&parse_err(&src), 6, "task.index", "has 10 tasks");
}

#[test]
fn unknown_suite() {
    let src = GOOD.replace("\"spatial\"", "\"kitchen\"");
    check(&parse_err(&src), 5, "task.suite", "unknown suite");
}

#[test]
fn checkpoint_needs_a_path() {
    let src = GOOD.replace("\"scripted\"", "\"checkpoint\"");
    check(
        &parse_err(&src),
        8,
        "policy.checkpoint",
        "needs `checkpoint",
    );
}

#[test]
fn unknown_policy_kind() {
    let src = GOOD.replace("\"scripted\"", "\"oracle\"");
    check(&parse_err(&src), 9, "policy.kind", "unknown variant");
}

#[test]
fn steering_needs_a_checkpoint_a_dictionary_and_alphas() {
    let src = format!("{GOOD}\n[steering]\nenabled = true\n");
    check(&parse_err(&src), 12, "steering.enabled", "policy.kind");
    let ckpt = GOOD.replace(
        "kind = \"scripted\"",
        "kind = \"checkpoint\"\ncheckpoint = \"runs/vla\"",
    );
    let src = format!("{ckpt}\n[steering]\nenabled = true\n");
    check(
        &parse_err(&src),
        12,
        "steering.dictionary",
        "rudder steer clusters",
    );
    let src = format!("{ckpt}\n[steering]\nenabled = true\ndictionary = \"d.toml\"\n");
    check(
        &parse_err(&src),
        12,
        "steering.alphas",
        "at least one cluster",
    );
    let src = format!("{ckpt}\n[steering]\nenabled = true\nconcept = \"slow\"\n");
    let e = parse_err(&src);
    assert!(e.message.contains("concept"), "{e}");
}

#[test]
fn toml_syntax_error_names_the_line() {
    let src = GOOD.replace("index = 2", "index = = 2");
    let e = parse_err(&src);
    assert_eq!(e.line, Some(6), "{e}");
}

#[test]
fn zero_max_ticks() {
    let src = format!("{GOOD}\n[control]\nmax_ticks = 0\n");
    check(&parse_err(&src), 12, "control.max_ticks", "at least 1");
}

fn run_err(src: &str) -> String {
    let lf = LaunchFile::parse("x.toml", src).expect("valid file");
    let opts = RunOptions {
        viz: None,
        episodes: 1,
        lockstep: true,
        progress: false,
    };
    match run(&lf, &opts) {
        Ok(_) => panic!("expected a run-time error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn run_time_rejections_say_what_is_missing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ur5 = std::fs::read_to_string(root.join("launch/ur5.toml")).expect("ur5.toml");
    let e = run_err(&ur5);
    assert!(
        e.contains("--features ros2") && e.contains("setup-ros2.sh"),
        "{e}"
    );
    let ckpt = GOOD.replace(
        "kind = \"scripted\"",
        "kind = \"checkpoint\"\ncheckpoint = \"ckpt/vla\"",
    );
    let e = run_err(&ckpt);
    assert!(
        e.contains("ckpt/vla") && e.contains("neither a checkpoint folder"),
        "{e}"
    );
    let driving = std::fs::read_to_string(root.join("launch/driving.toml")).expect("driving");
    let open_loop = driving.replace("closed_loop_nonreactive", "open_loop");
    let lf = LaunchFile::parse("open.toml", &open_loop).expect("valid");
    let e = match rudder::launchfile::driving::run_driving(&lf, None, false, false) {
        Ok(_) => panic!("open-loop driving ran"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("open_loop") && e.contains("closed-loop"), "{e}");
}

#[test]
fn driving_launch_file_runs_and_scores_every_scenario() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lf = LaunchFile::load(&root.join("launch/driving.toml")).expect("driving.toml");
    let r = rudder::launchfile::driving::run_driving(&lf, None, false, false).expect("runs");
    // 12 generated types x 2 per type.
    assert_eq!(r.scenarios.len(), 24);
    for s in &r.scenarios {
        assert!((0.0..=1.0).contains(&s.metrics.score), "{s:?}");
        assert!(s.samples > 100, "{s:?}");
    }
    // The IDM planner's closed-loop score on these scenarios (0.59 when written) stays far
    // from both failure and the expert's 1.0.
    assert!(r.score > 0.4 && r.score < 0.9, "CLS-NR {}", r.score);
}

#[test]
fn unknown_planner_and_scenario_type_are_named() {
    let src = "[embodiment]\nkind = \"sim.driving\"\n[scenarios]\ntypes = [\"drifting\"]\n\
               [policy]\nkind = \"scripted\"\n";
    let e = parse_err(src);
    assert_eq!(e.field, "scenarios.types", "{e}");
    assert!(e.to_string().contains("drifting"), "{e}");
    let src = "[embodiment]\nkind = \"sim.driving\"\n[scenarios]\ncount = 1\n\
               [policy]\nkind = \"scripted\"\nplanner = \"rrt\"\n";
    let e = parse_err(src);
    assert_eq!(e.field, "policy.planner", "{e}");
    assert!(e.to_string().contains("rrt"), "{e}");
}

#[test]
fn scripted_tabletop_runs_in_lockstep_without_viz() {
    let src = format!("{GOOD}\n[control]\nmax_ticks = 30\n");
    let src = src.replace("index = 2", "index = 2\ncamera_size = 0");
    let lf = LaunchFile::parse("x.toml", &src).expect("valid");
    let opts = RunOptions {
        viz: None,
        episodes: 1,
        lockstep: true,
        progress: false,
    };
    let r = run(&lf, &opts).expect("runs");
    assert_eq!(r.episodes.len(), 1);
    let e = &r.episodes[0];
    assert_eq!(e.ticks, 30);
    assert_eq!(e.measured.len(), 30);
    // The expert moves the arm.
    let moved = e.measured[0]
        .iter()
        .zip(e.measured[29].iter())
        .any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(moved, "{:?} -> {:?}", e.measured[0], e.measured[29]);
}

/// The scripted expert, seeing the arm only through the loop's observations, completes the
/// tasks of the three suites through the loop's tick logic (safety filter, chunk following).
#[test]
fn scripted_expert_succeeds_through_the_loop_on_every_suite_task() {
    let mut failures = Vec::new();
    let mut total = 0;
    for suite in ["spatial", "object", "goal"] {
        let n = rudder_sim::tabletop::load_suite(
            rudder_sim::tabletop::Suite::parse(suite).expect("suite name"),
        )
        .expect("suite")
        .len();
        for index in 0..n {
            let src = format!(
                "[embodiment]\nkind = \"sim.tabletop\"\n[task]\nsuite = \"{suite}\"\n\
                 index = {index}\nepisode = {index}\nseed = 3\ncamera_size = 0\n\
                 [policy]\nkind = \"scripted\"\nchunk_len = 4\n"
            );
            let lf = LaunchFile::parse("suite.toml", &src).expect("valid");
            let opts = RunOptions {
                viz: None,
                episodes: 1,
                lockstep: true,
                progress: false,
            };
            let r = run(&lf, &opts).expect("runs");
            let e = &r.episodes[0];
            total += 1;
            assert_eq!(
                e.held_commands, 0,
                "{suite}/{index}: the filter had to brake"
            );
            if !e.success {
                failures.push(format!(
                    "{suite}/{index} ({}) steps {}/{} refused {} clamped {}",
                    e.instruction, e.steps, e.max_steps, e.refused_contacts, e.clamped_commands
                ));
            }
        }
    }
    assert!(total >= 30, "only {total} tasks");
    // Stepped directly the expert solves all 30; through the loop (one tick of observation
    // latency, the loop's own safety filter) it measured 27/30 when this was written: the
    // misses are a slow "slowly" variant running out of steps and two approaches that end
    // against a container's rim. 90% is the floor.
    assert!(
        failures.len() * 10 <= total,
        "{} of {total} failed through the loop: {failures:?}",
        failures.len()
    );
}

/// `policy.kind = "checkpoint"` runs a trained VLA through the tabletop loop, and `[steering]`
/// sets its clusters: the steered run moves the arm differently from the unsteered one.
#[test]
fn checkpoint_policy_runs_and_the_launch_files_steering_changes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ckpt = common::tiny_checkpoint(tmp.path(), rudder_policy::train::ModelSpec::tiny());
    let dict = common::layer0_dictionary(tmp.path());
    let base = GOOD
        .replace(
            "kind = \"scripted\"",
            &format!("kind = \"checkpoint\"\ncheckpoint = \"{}\"", ckpt.display()),
        )
        .replace("index = 2", "index = 2\ncamera_size = 32");
    let opts = RunOptions {
        viz: None,
        episodes: 1,
        lockstep: true,
        progress: false,
    };
    let path_of = |src: &str| {
        let lf = LaunchFile::parse("x.toml", src).expect("valid");
        let r = run(&lf, &opts).expect("runs");
        assert_eq!(r.episodes.len(), 1);
        assert_eq!(r.episodes[0].ticks, 12);
        r.episodes[0].measured.clone()
    };
    let plain = path_of(&format!("{base}\n[control]\nmax_ticks = 12\n"));
    let steered = path_of(&format!(
        "{base}\n[control]\nmax_ticks = 12\n\n[steering]\nenabled = true\ndictionary = \"{}\"\n\
         alphas = {{ all_l0 = 50.0 }}\n",
        dict.display()
    ));
    let diff = plain
        .iter()
        .zip(&steered)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f64::max);
    assert!(diff > 1e-6, "steering changed nothing ({diff})");
    // A dictionary that does not fit the model is named.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[meta]\nmodel = \"x\"\nd_ff = 128\nnum_layers = 2\n\n[clusters]\nfar = [9999]\n",
    )
    .expect("dict");
    let src = format!(
        "{base}\n[control]\nmax_ticks = 3\n\n[steering]\nenabled = true\ndictionary = \"{}\"\n\
         alphas = {{ far = 1.0 }}\n",
        bad.display()
    );
    let e = run_err(&src);
    assert!(e.contains("bad.toml") && e.contains("9999"), "{e}");
}

#[test]
fn diffusion_planner_fields_are_checked_where_they_are_parsed() {
    let base = "[embodiment]\nkind = \"sim.driving\"\n[scenarios]\ncount = 1\n[policy]\n";
    // The planner needs its checkpoint.
    let e = parse_err(&format!("{base}kind = \"diffusion\"\n"));
    assert_eq!(e.field, "policy.checkpoint", "{e}");
    assert!(e.to_string().contains("rudder train planner"), "{e}");
    // Each sampling field has a range, in the message.
    let with = |extra: &str| {
        format!("{base}kind = \"diffusion\"\ncheckpoint = \"no-such-dir/planner\"\n{extra}")
    };
    for (extra, field, says) in [
        ("sampler = \"euler\"\n", "policy.sampler", "dpm, ddim"),
        ("solver_steps = 0\n", "policy.solver_steps", "1..=1000"),
        ("solver_steps = 100000\n", "policy.solver_steps", "1..=1000"),
        ("guidance = nan\n", "policy.guidance", "0..=1000"),
        ("guidance = -1.0\n", "policy.guidance", "0..=1000"),
    ] {
        let e = parse_err(&with(extra));
        assert_eq!(e.field, field, "{extra}: {e}");
        assert!(e.to_string().contains(says), "{extra}: {e}");
    }
    assert!(LaunchFile::parse(
        "ok.toml",
        &with("sampler = \"ddim\"\nsolver_steps = 5\nguidance = 0.5\n")
    )
    .is_ok());
    // Sampling fields without the diffusion planner, and the planner on the arm: refused.
    let e = parse_err(&format!("{base}kind = \"scripted\"\nsolver_steps = 5\n"));
    assert_eq!(e.field, "policy.solver_steps", "{e}");
    let tabletop = GOOD.replace(
        "kind = \"scripted\"",
        "kind = \"diffusion\"\ncheckpoint = \"x\"",
    );
    let e = parse_err(&tabletop);
    assert_eq!(e.field, "policy.kind", "{e}");
    // A checkpoint that is not a planner: the run names the folder.
    let lf = LaunchFile::parse("x.toml", &with("")).expect("valid");
    let e = match rudder::launchfile::driving::run_driving(&lf, None, false, true) {
        Ok(_) => panic!("ran without a checkpoint"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("no-such-dir/planner"), "{e}");
}
