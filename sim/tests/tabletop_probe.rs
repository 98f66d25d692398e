use rudder_sim::tabletop::*;

#[test]
#[ignore]
fn probe() {
    let eps: usize = std::env::var("EPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for s in Suite::ALL {
        let seed: u64 = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        let r = run_suite(s, eps, seed, false).expect("suite");
        println!(
            "{} sr={:.3} steps/s={:.0} refused={} pen={:.5} viol={} ik={}",
            r.suite,
            r.success_rate,
            r.steps_per_s,
            r.refused_contacts,
            r.max_penetration,
            r.limit_violations,
            r.ik_failures
        );
        for t in &r.tasks {
            println!(
                "   {:40} {:.2} steps {:.0}",
                t.task, t.success_rate, t.mean_steps
            );
        }
    }
}

#[test]
#[ignore]
fn probe_task() {
    let suite = Suite::parse(&std::env::var("SUITE").unwrap_or("spatial".into())).unwrap();
    let name = std::env::var("TASK").unwrap_or_default();
    let eps: usize = std::env::var("EPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for t in load_suite(suite)
        .unwrap()
        .iter()
        .filter(|t| t.id.contains(&name))
    {
        for k in 0..eps {
            let mut env = TabletopEnv::new(t, 7, k, None).unwrap();
            let mut ex = Expert::new(&env);
            let mut refusals = vec![];
            while !env.done() {
                let a = ex.act(&env);
                let tcp = env.tcp();
                let i = env.step(&a);
                if let Some(r) = i.refused {
                    refusals.push((env.steps(), r, tcp, a));
                }
            }
            if !env.success() || std::env::var("ALL").is_ok() {
                println!(
                    "{} k={} '{}' success={} steps={} stats={:?} held={:?} tcp={:?}",
                    t.id,
                    k,
                    env.instruction(),
                    env.success(),
                    env.steps(),
                    env.stats(),
                    env.world().held,
                    env.tcp()
                );
                for r in refusals.iter().take(5) {
                    println!("    refused {:?}", r);
                }
                for o in &env.world().scene.objects {
                    println!(
                        "    {} pos={:?} sup={:?} joint={:?}",
                        o.name, o.pos, o.support, o.joint
                    );
                }
            }
        }
    }
}

#[test]
#[ignore]
fn probe_load() {
    for s in Suite::ALL {
        for (p, src) in s.files() {
            if let Err(e) = Task::parse(p, src) {
                println!("{e}");
            }
        }
    }
}

#[test]
#[ignore]
fn probe_render() {
    let t = load_suite(Suite::Goal).unwrap().remove(0);
    let mut env = TabletopEnv::new(&t, 7, 0, Some(CameraConfig::default())).unwrap();
    let s = std::time::Instant::now();
    for _ in 0..200 {
        std::hint::black_box(env.observe());
    }
    println!(
        "observe {:.3} ms",
        s.elapsed().as_secs_f64() * 1000.0 / 200.0
    );
    let mut env = TabletopEnv::new(&t, 7, 0, None).unwrap().without_audit();
    let mut ex = Expert::new(&env);
    let s = std::time::Instant::now();
    let mut n = 0;
    while !env.done() {
        let a = ex.act(&env);
        env.step(&a);
        n += 1;
    }
    println!("step {:.3} us", s.elapsed().as_secs_f64() * 1e6 / n as f64);
}
