//! The diffusion planner's network: shapes, adaLN-zero at initialisation, invariance to the
//! order of scene entities, and that it learns: trained on a few scenes whose expert future is
//! the ego's speed held for 8 s, DPM-Solver++ in 10 steps from noise draws those futures.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rudder_tune::diffusion::{add_noise, BetaSchedule, DpmSolverPP, Prediction, VpSchedule};
use rudder_tune::models::diffusion_planner::{empty_scene, Config, Model, SceneBatch};
use rudder_tune::train::Rng;

fn small() -> Config {
    Config {
        hidden: 32,
        heads: 4,
        encoder_layers: 1,
        decoder_layers: 2,
        chunk: 10,
        future: 80,
        neighbours: 4,
        history: 5,
        static_objects: 2,
        lanes: 6,
        route_lanes: 3,
        lane_points: 5,
    }
}

/// Scenes whose only non-zero inputs are the ego speed and a lane along x; the expert future
/// drives straight on at that speed (x = v t).
fn scenes(speeds: &[f32], cfg: &Config) -> (SceneBatch, Tensor) {
    let dev = Device::Cpu;
    let b = speeds.len();
    let mut s = empty_scene(cfg, b, &dev).unwrap();
    let mut ego = vec![0f32; b * 6];
    for (i, v) in speeds.iter().enumerate() {
        ego[i * 6] = *v;
    }
    s.ego = Tensor::from_vec(ego, (b, 6), &dev).unwrap();
    let mut lanes = vec![0f32; b * cfg.lanes * cfg.lane_points * 12];
    for i in 0..b {
        for k in 0..cfg.lane_points {
            let r = &mut lanes[(i * cfg.lanes * cfg.lane_points + k) * 12..][..12];
            r[0] = 10.0 * k as f32;
            r[2] = 10.0;
            r[5] = 1.75;
            r[7] = -1.75;
        }
    }
    s.lanes = Tensor::from_vec(lanes, (b, cfg.lanes, cfg.lane_points, 12), &dev).unwrap();
    // Futures scaled to about unit size (x / 10 m), as a trainer would normalise them.
    let mut fut = vec![0f32; b * cfg.future * 4];
    for (i, v) in speeds.iter().enumerate() {
        for k in 0..cfg.future {
            let r = &mut fut[(i * cfg.future + k) * 4..][..4];
            r[0] = v * 0.1 * (k + 1) as f32 / 10.0;
            r[2] = 1.0;
        }
    }
    (s, Tensor::from_vec(fut, (b, cfg.future, 4), &dev).unwrap())
}

#[test]
fn shapes_zero_init_and_entity_order() {
    let cfg = small();
    let vm = VarMap::new();
    let m = Model::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let (s, fut) = scenes(&[5.0, 8.0], &cfg);
    let enc = m.encode(&s).unwrap();
    assert_eq!(enc.0.dims(), &[2, 1 + 4 + 2 + 6, 32]);
    let t = Tensor::new(&[0.5f32, 0.9], &Device::Cpu).unwrap();
    let x0 = m.denoise(&enc, &fut, &t).unwrap();
    assert_eq!(x0.dims(), &[2, 80, 4]);
    // adaLN-zero: the output layer starts at zero, so does the estimate.
    let mx: f32 = x0.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert_eq!(mx, 0.0);
    // Give the output layer weights, then swap two lanes: the scene is a set, the estimate
    // must not change.
    for (name, var) in vm.data().lock().unwrap().iter() {
        if name.contains("future_out") || name.contains("ada") {
            let r = Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).unwrap();
            var.set(&r).unwrap();
        }
    }
    let mut lanes2 = s.clone();
    let l = &s.lanes;
    lanes2.lanes = Tensor::cat(
        &[
            l.narrow(1, 3, 1).unwrap(),
            l.narrow(1, 1, 2).unwrap(),
            l.narrow(1, 0, 1).unwrap(),
            l.narrow(1, 4, 2).unwrap(),
        ],
        1,
    )
    .unwrap();
    let a = m.denoise(&m.encode(&s).unwrap(), &fut, &t).unwrap();
    let b = m.denoise(&m.encode(&lanes2).unwrap(), &fut, &t).unwrap();
    let d: f32 = (a.clone() - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(
        scale > 1e-3 && d < 1e-4 * scale.max(1.0),
        "order changed the estimate by {d}"
    );
    // Bad configs are errors.
    let bad = Config { future: 75, ..cfg };
    assert!(Model::new(
        bad,
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu)
    )
    .is_err());
}

#[test]
fn learns_to_draw_the_expert_future() {
    let cfg = small();
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let m = Model::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let schedule = VpSchedule::new(
        1000,
        BetaSchedule::Linear {
            start: 1e-4,
            end: 0.02,
        },
    )
    .unwrap();
    let speeds = [2.0f32, 5.0, 8.0, 12.0];
    let (s, x0) = scenes(&speeds, &cfg);
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 2e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut first = None;
    let mut last = 0.0;
    // Seeded noise (and seeded initial weights below), so the run is the same every time.
    let mut rng = Rng::new(7);
    let mut randn = |shape: &candle_core::Shape| {
        Tensor::from_vec(rng.gaussian(shape.elem_count()), shape, &dev).unwrap()
    };
    for var in vm.all_vars() {
        let dims = var.shape().clone();
        if var
            .as_tensor()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
        {
            let init = (randn(&dims) * 0.05).unwrap();
            var.set(&init).unwrap();
        }
    }
    // A fixed sequence of timesteps and noises (the test must not depend on a global seed).
    // A last stretch at a lower rate settles the fit (the test runs beside others on two
    // cores, where the kernels' summation order, and so the run, can differ slightly).
    for step in 0..1500usize {
        if step == 1000 {
            opt.set_learning_rate(5e-4);
        }
        let t = (step * 389 + 17) % 1000;
        let noise = randn(x0.shape());
        let x_t = add_noise(&schedule, &x0, &noise, t).unwrap();
        let tt = Tensor::new(vec![t as f32 / 1000.0; speeds.len()], &dev).unwrap();
        let pred = m.denoise(&m.encode(&s).unwrap(), &x_t, &tt).unwrap();
        let loss = (pred - &x0).unwrap().sqr().unwrap().mean_all().unwrap();
        let l: f32 = loss.to_scalar().unwrap();
        first.get_or_insert(l);
        last = l;
        opt.backward_step(&loss).unwrap();
    }
    let first = first.unwrap();
    assert!(last < first / 10.0, "loss {first} -> {last}");
    // Sample: 10 DPM-Solver++ steps from noise, x0-prediction.
    let mut solver = DpmSolverPP::new(schedule, 10, 2, Prediction::Sample).unwrap();
    let enc = m.encode(&s).unwrap();
    let mut x = randn(x0.shape());
    for t in solver.timesteps().to_vec() {
        let tt = Tensor::new(vec![t as f32 / 1000.0; speeds.len()], &dev).unwrap();
        let pred = m.denoise(&enc, &x, &tt).unwrap();
        x = solver.step(&pred, &x).unwrap();
    }
    // The final position of each sample orders with the speeds and lands near v x 8 s.
    let end: Vec<f32> = x
        .narrow(1, 79, 1)
        .unwrap()
        .narrow(2, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (v, e) in speeds.iter().zip(&end) {
        let want = v * 8.0 / 10.0;
        assert!(
            (e - want).abs() < 0.25 * want.max(1.0),
            "speed {v}: end {e} vs {want}"
        );
    }
    let err: f32 = (x - &x0)
        .unwrap()
        .sqr()
        .unwrap()
        .mean(D::Minus1)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        err < 0.05,
        "mean squared error of the sampled futures {err}"
    );
}
