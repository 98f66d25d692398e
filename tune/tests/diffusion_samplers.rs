//! DDIM and DPM-Solver++ step for step against diffusers 0.42.1's DDIMScheduler and
//! DPMSolverMultistepScheduler: three beta schedules, x0 and epsilon prediction, 3-20 steps,
//! DDIM with eta 0 and 1, DPM-Solver++ of order 1 and 2. The reference trajectories come from
//! diffusers itself (scripts/diffusers-reference.sh, which needs PyTorch: ~5 GB from PyPI, so
//! they are committed in tests/fixtures/diffusers_samplers.json); the model function and the
//! noise are the same formulas on both sides.

use candle_core::{Device, Tensor};
use rudder_tune::diffusion::{BetaSchedule, Ddim, DpmSolverPP, Prediction, VpSchedule};
use serde_json::Value;

/// Absolute for |x| <= 1, relative above.
const TOLERANCE: f32 = 1e-5;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/diffusers_samplers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn schedule(name: &str) -> VpSchedule {
    let betas = match name {
        "linear" => BetaSchedule::Linear {
            start: 1e-4,
            end: 0.02,
        },
        "scaled_linear" => BetaSchedule::ScaledLinear {
            start: 0.00085,
            end: 0.012,
        },
        "cosine" => BetaSchedule::Cosine,
        other => panic!("unknown schedule {other}"),
    };
    VpSchedule::new(1000, betas).unwrap()
}

fn vector(f: impl Fn(usize) -> f64, dim: usize) -> Tensor {
    let v: Vec<f32> = (0..dim).map(|i| f(i) as f32).collect();
    Tensor::from_vec(v, dim, &Device::Cpu).unwrap()
}

fn model(x: &Tensor, t: usize, prediction: Prediction) -> Tensor {
    match prediction {
        Prediction::Sample => ((x * 0.5).unwrap() + 0.001 * t as f64)
            .unwrap()
            .tanh()
            .unwrap()
            .affine(0.8, 0.0)
            .unwrap(),
        Prediction::Epsilon => (x + 0.002 * t as f64)
            .unwrap()
            .sin()
            .unwrap()
            .affine(0.9, 0.0)
            .unwrap(),
    }
}

/// The largest difference, relative to the reference where it exceeds 1 in magnitude (an
/// epsilon model that is no trained model drives some samples to hundreds, where 1e-5 absolute
/// is below f32's resolution).
fn max_diff(a: &Tensor, b: &[Value]) -> f32 {
    let a: Vec<f32> = a.to_vec1().unwrap();
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let y = y.as_f64().unwrap() as f32;
            (x - y).abs() / y.abs().max(1.0)
        })
        .fold(0.0, f32::max)
}

#[test]
fn every_step_matches_diffusers() {
    let f = fixture();
    let dim = f["dim"].as_u64().unwrap() as usize;
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 96);
    let mut worst = 0.0f32;
    for c in cases {
        let name = format!("{c:.80}");
        let prediction = match c["prediction"].as_str().unwrap() {
            "sample" => Prediction::Sample,
            _ => Prediction::Epsilon,
        };
        let steps = c["steps"].as_u64().unwrap() as usize;
        let sched = schedule(c["schedule"].as_str().unwrap());
        let want_t: Vec<usize> = c["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        let samples = c["samples"].as_array().unwrap();
        let mut x = vector(|i| 1.3 * (1.7 * i as f64 + 0.3).sin(), dim);
        match c["sampler"].as_str().unwrap() {
            "ddim" => {
                let eta = c["eta"].as_f64().unwrap();
                let s = Ddim::new(sched, steps, eta, prediction).unwrap();
                assert_eq!(s.timesteps(), &want_t[..], "{name}");
                for (k, &t) in s.timesteps().iter().enumerate() {
                    let noise = vector(|i| (0.9 * i as f64 + 1.1 * k as f64).cos(), dim);
                    x = s
                        .step(k, &model(&x, t, prediction), &x, Some(&noise))
                        .unwrap()
                        .prev_sample;
                    let d = max_diff(&x, samples[k].as_array().unwrap());
                    worst = worst.max(d);
                    assert!(d < TOLERANCE, "{name}: step {k} differs by {d}");
                }
            }
            _ => {
                let order = c["order"].as_u64().unwrap() as usize;
                let mut s = DpmSolverPP::new(sched, steps, order, prediction).unwrap();
                assert_eq!(s.timesteps(), &want_t[..], "{name}");
                let ts = s.timesteps().to_vec();
                for (k, &t) in ts.iter().enumerate() {
                    x = s.step(&model(&x, t, prediction), &x).unwrap();
                    let d = max_diff(&x, samples[k].as_array().unwrap());
                    worst = worst.max(d);
                    assert!(d < TOLERANCE, "{name}: step {k} differs by {d}");
                }
            }
        }
    }
    eprintln!("largest difference from diffusers over all steps: {worst:e}");
}

#[test]
fn bad_settings_are_errors() {
    let s = schedule("linear");
    assert!(Ddim::new(s.clone(), 0, 0.0, Prediction::Sample).is_err());
    assert!(Ddim::new(s.clone(), 2000, 0.0, Prediction::Sample).is_err());
    assert!(Ddim::new(s.clone(), 10, f64::NAN, Prediction::Sample).is_err());
    assert!(DpmSolverPP::new(s.clone(), 10, 3, Prediction::Sample).is_err());
    let mut d = DpmSolverPP::new(s.clone(), 1, 2, Prediction::Sample).unwrap();
    let x = vector(|i| i as f64, 4);
    d.step(&x, &x).unwrap();
    let e = d.step(&x, &x).unwrap_err().to_string();
    assert!(e.contains("reset"), "{e}");
    let ddim = Ddim::new(s, 10, 1.0, Prediction::Sample).unwrap();
    assert!(ddim
        .step(0, &x, &x, None)
        .unwrap_err()
        .to_string()
        .contains("noise"));
    assert!(VpSchedule::new(1, BetaSchedule::Cosine).is_err());
    assert!(VpSchedule::new(
        10,
        BetaSchedule::Linear {
            start: 0.0,
            end: 0.5
        }
    )
    .is_err());
}
