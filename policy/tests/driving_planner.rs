//! The diffusion planner end to end on a small network: demos from generated scenarios, the
//! shared trainer (loss falls; a run stopped and resumed equals the uninterrupted one bit for
//! bit, EMA included), the checkpoint loaded as a planner that drives whole scenarios in the
//! simulator's closed loop with valid plans, deterministic noise, and bad input refused or
//! caught by the fallback stop.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rudder_policy::driving::planner::{fallback_stop, PlanLog};
use rudder_policy::driving::train::PlannerData;
use rudder_policy::driving::{
    DiffusionPlanner, DrivingDemoWriter, DrivingSample, PlannerModel, PlannerTrainConfig,
    PlannerTrainer, SamplerKind, SamplingOptions, SceneConfig,
};
use rudder_robot::driving::{Observation, Planner};
use rudder_sim::driving::generator::generate;
use rudder_sim::driving::scenario::HISTORY_STEPS;
use rudder_sim::driving::simulation::{simulate, Mode};

fn scene_cfg() -> SceneConfig {
    SceneConfig {
        neighbours: 8,
        history: 5,
        static_objects: 3,
        lanes: 16,
        route_lanes: 8,
        lane_points: 8,
        radius: 60.0,
        future: 80,
    }
}

fn write_demos(dir: &Path, scenarios: usize) -> usize {
    let cfg = scene_cfg();
    let mut w = DrivingDemoWriter::create(dir, cfg, "test").unwrap();
    for i in 0..scenarios {
        let s = generate(100, i);
        for k in (0..s.num_steps() - 1).step_by(8) {
            w.push(DrivingSample::from_log(
                &cfg,
                &s.logged_ego(k),
                &s.frames_up_to(k, cfg.history),
                s.lights_at(k),
                s.map.as_ref(),
                &s.route,
                &s.expert[HISTORY_STEPS + k + 1..],
                &s.scenario_type,
            ))
            .unwrap();
        }
    }
    w.finish().unwrap().samples
}

fn train_cfg(steps: u64) -> PlannerTrainConfig {
    PlannerTrainConfig {
        hidden: 32,
        heads: 2,
        encoder_layers: 1,
        decoder_layers: 1,
        chunk: 10,
        steps,
        batch_size: 8,
        lr: 2e-3,
        warmup_steps: 5,
        ema_decay: 0.9,
        noise_draws: 2,
        seed: 3,
        ..Default::default()
    }
}

fn bits(t: &PlannerTrainer) -> Vec<u32> {
    let (params, ema) = t.weights();
    let mut out = Vec::new();
    for (_, v) in params {
        out.extend(
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits()),
        );
    }
    for e in ema.unwrap() {
        out.extend(
            e.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits()),
        );
    }
    out
}

#[test]
fn trains_resumes_bit_for_bit_and_drives_closed_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("demos");
    let n = write_demos(&data_dir, 4);
    assert!(n > 40, "{n} samples");
    let data = PlannerData::load(&data_dir).unwrap();

    // Uninterrupted, against stopped at 5 + resumed.
    let mut whole = PlannerTrainer::new(train_cfg(10), &data).unwrap();
    for _ in 0..10 {
        whole.step(&data).unwrap();
    }
    let run = tmp.path().join("run");
    let mut first = PlannerTrainer::new(train_cfg(10), &data).unwrap();
    for _ in 0..5 {
        first.step(&data).unwrap();
    }
    first.save(&run, 1, &data).unwrap();
    drop(first);
    let mut resumed = PlannerTrainer::new(train_cfg(10), &data).unwrap();
    assert!(resumed.resume(&run).unwrap().is_some());
    assert_eq!(resumed.step_count(), 5);
    for _ in 0..5 {
        resumed.step(&data).unwrap();
    }
    assert_eq!(bits(&whole), bits(&resumed));
    // Another architecture does not resume from it.
    let mut other = PlannerTrainer::new(
        PlannerTrainConfig {
            hidden: 64,
            ..train_cfg(10)
        },
        &data,
    )
    .unwrap();
    let e = other.resume(&run).unwrap_err().to_string();
    assert!(
        e.contains("trainer_state.json") && e.contains("hidden"),
        "{e}"
    );

    // Training lowers the loss: the mean of the last 20 steps against the first 20.
    let mut t = PlannerTrainer::new(train_cfg(300), &data).unwrap();
    let losses: Vec<f64> = (0..300).map(|_| t.step(&data).unwrap().loss).collect();
    let head: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let tail: f64 = losses[280..].iter().sum::<f64>() / 20.0;
    assert!(tail < 0.5 * head, "loss {head:.3} -> {tail:.3}");
    let ckpt = tmp.path().join("planner");
    let dir = t.save(&ckpt, 1, &data).unwrap();
    for f in [
        "planner.json",
        "model.safetensors",
        "normalization.json",
        "training.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }

    // Closed loop on a scenario training never saw, with both samplers.
    let model = Arc::new(PlannerModel::load(&ckpt).unwrap());
    let s = generate(7, 1);
    for sampler in [SamplerKind::DpmSolver, SamplerKind::Ddim] {
        let log = Arc::new(Mutex::new(PlanLog::default()));
        let opts = SamplingOptions {
            sampler,
            steps: 5,
            seed: 1,
            guidance: 0.0,
            fixed_noise: sampler == SamplerKind::Ddim,
            anchor: sampler == SamplerKind::DpmSolver,
            temperature: 1.0,
        };
        let mut p = DiffusionPlanner::new(model.clone(), opts, 0).with_log(log.clone());
        let hist = simulate(&s, &mut p, Mode::NonReactive).unwrap();
        let l = log.lock().unwrap();
        assert_eq!(l.latencies().len(), hist.ego.len());
        assert!(l.fallbacks().is_empty(), "{:?}", l.fallbacks());
        assert!(hist.ego.iter().all(|e| e.vehicle.x.is_finite()));
    }

    // The same seed and scene give the same plan; another stream gives another.
    let ego = s.logged_ego(0);
    let agents = s.agents_at(0);
    let obs = Observation {
        step: 0,
        time_s: 0.0,
        ego: &ego,
        ego_history: std::slice::from_ref(&ego),
        agents: &agents,
        lights: s.lights_at(0),
        map: s.map.as_ref(),
        route: &s.route,
    };
    let opts = SamplingOptions::default();
    let plan = |stream| {
        let mut p = DiffusionPlanner::new(model.clone(), opts, stream);
        Planner::<rudder_sim::driving::map::Map>::plan(&mut p, &obs)
    };
    let (a, b, c) = (plan(0), plan(0), plan(1));
    assert_eq!(a.points.len(), 81);
    assert_eq!(
        a.points[0].x, ego.vehicle.x,
        "the first state is the current one"
    );
    assert_eq!(a, b);
    assert_ne!(a, c);

    // No route (a scenario whose route is empty): the planner still plans from the lanes
    // around it (the route embedding is zero), a valid trajectory from the current state.
    let mut p = DiffusionPlanner::new(model.clone(), opts, 0);
    let tr =
        Planner::<rudder_sim::driving::map::Map>::plan(&mut p, &Observation { route: &[], ..obs });
    assert!(tr.is_valid() && tr.points[0].x == ego.vehicle.x);

    // A NaN state (from a broken log) gets the fallback stop, counted, never a panic.
    let mut bad = ego;
    bad.vehicle.speed = f64::NAN;
    let log = Arc::new(Mutex::new(PlanLog::default()));
    let mut p = DiffusionPlanner::new(model.clone(), opts, 0).with_log(log.clone());
    let tr =
        Planner::<rudder_sim::driving::map::Map>::plan(&mut p, &Observation { ego: &bad, ..obs });
    assert!(tr.is_valid());
    assert_eq!(tr, fallback_stop(0.0, &bad));
    assert_eq!(log.lock().unwrap().fallbacks().len(), 1);
    let stop = fallback_stop(0.0, &ego);
    assert!(stop.points.last().unwrap().speed == 0.0);

    // Checkpoints that do not fit are refused, naming the file or tensor.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["planner.json", "model.safetensors", "normalization.json"] {
        std::fs::copy(dir.join(f), broken.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(broken.join("planner.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["scene"]["lanes"] = 40.into();
    std::fs::write(broken.join("planner.json"), v.to_string()).unwrap();
    let e = PlannerModel::load(&broken).err().unwrap().to_string();
    assert!(e.contains("planner.json"), "{e}");
    std::fs::write(broken.join("planner.json"), &text).unwrap();
    let mut w =
        candle_core::safetensors::load(broken.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let name = "future_in.weight".to_string();
    let t = &w[&name];
    let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
    w.insert(name, nan);
    candle_core::safetensors::save(&w, broken.join("model.safetensors")).unwrap();
    let e = PlannerModel::load(&broken).err().unwrap().to_string();
    assert!(
        e.contains("future_in.weight") && e.contains("non-finite"),
        "{e}"
    );
    let e = PlannerModel::load(tmp.path()).err().unwrap().to_string();
    assert!(e.contains("planner"), "{e}");
}
