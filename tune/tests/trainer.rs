//! The one trainer on a toy family (least squares on three weights, with noise drawn from the
//! run's generator): accumulation equals one big batch, a non-finite loss stops the run at a
//! named step without touching the weights, hand-computed gradients train as autograd does,
//! and a resumed run (family state included) continues bit for bit.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rudder_tune::train::{
    AdamWConfig, Family, Gradients, MicroBatch, Rng, Snapshot, Trainer, TrainerConfig,
};
use rudder_tune::{Result, TuneError};
use serde_json::{Map, Value};

/// `y = w . x + noise`, noise N(0, 0.01) drawn per example from the run's generator.
struct Toy {
    /// Hand the gradient over computed (2 x^T (w.x - y) / n) instead of on the graph.
    computed: bool,
    /// Return a NaN loss on this call of `micro_batch` (1-based).
    poison_call: Option<u64>,
    calls: u64,
}

type Data = Vec<([f32; 3], f32)>;

impl Family for Toy {
    type Error = TuneError;
    type Input<'a> = Data;
    type SaveInput<'a> = ();

    fn micro_batch(
        &mut self,
        data: &Data,
        idx: &[usize],
        rng: &mut Rng,
        params: &[(String, Var)],
    ) -> Result<MicroBatch> {
        self.calls += 1;
        let noise = rng.gaussian(idx.len());
        let x: Vec<f32> = idx.iter().flat_map(|&i| data[i].0).collect();
        let y: Vec<f32> = idx
            .iter()
            .zip(&noise)
            .map(|(&i, n)| data[i].1 + 0.1 * n)
            .collect();
        let n = idx.len();
        let w = params[0].1.as_tensor();
        let x = Tensor::from_vec(x, (n, 3), &Device::Cpu).map_err(cerr)?;
        let y = Tensor::from_vec(y, (n, 1), &Device::Cpu).map_err(cerr)?;
        let r = x
            .matmul(&w.unsqueeze(1).map_err(cerr)?)
            .and_then(|p| p - &y)
            .map_err(cerr)?;
        let mut loss = r.sqr().and_then(|s| s.mean_all()).map_err(cerr)?;
        if self.poison_call == Some(self.calls) {
            loss = (loss * f64::NAN).map_err(cerr)?;
        }
        let gradients = if self.computed {
            let g = x
                .t()
                .and_then(|xt| xt.matmul(&r))
                .and_then(|g| g.squeeze(1))
                .and_then(|g| g * (2.0 / n as f64))
                .map_err(cerr)?;
            let v = loss.to_scalar::<f32>().map_err(cerr)? as f64;
            Gradients::Computed {
                loss: v,
                grads: vec![Some(g.detach())],
            }
        } else {
            Gradients::Graph(loss)
        };
        Ok(MicroBatch {
            counted: n,
            items: n,
            gradients,
        })
    }

    fn write_files(&self, dir: &Path, snap: &Snapshot<'_>, _: &()) -> Result<()> {
        rudder_tune::train::trainer::save_params(snap.params, &dir.join("w.safetensors"))
    }

    fn weights_file(&self) -> &str {
        "w.safetensors"
    }

    fn state(&self) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("calls".into(), self.calls.into());
        Ok(m)
    }

    fn restore(&mut self, state: &Map<String, Value>, _: &Path) -> Result<()> {
        self.calls = state.get("calls").and_then(Value::as_u64).unwrap_or(0);
        Ok(())
    }
}

fn cerr(e: candle_core::Error) -> TuneError {
    TuneError::Invalid(e.to_string())
}

fn data() -> Data {
    let mut rng = Rng::new(9);
    (0..24)
        .map(|_| {
            let x = [
                rng.next_f64() as f32,
                rng.next_f64() as f32,
                rng.next_f64() as f32,
            ];
            (x, 0.5 * x[0] - 2.0 * x[1] + x[2])
        })
        .collect()
}

fn trainer(batch: usize, accum: usize, computed: bool) -> Trainer<Toy> {
    let w = Var::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let cfg = TrainerConfig {
        optim: AdamWConfig {
            lr: 0.2,
            ..Default::default()
        },
        warmup_steps: 2,
        total_steps: 30,
        max_grad_norm: Some(1.0),
        grad_accum: accum,
        batch_size: batch,
    };
    let toy = Toy {
        computed,
        poison_call: None,
        calls: 0,
    };
    Trainer::new(toy, vec![("w".into(), w)], cfg, 24, Rng::new(4)).unwrap()
}

fn weights(t: &Trainer<Toy>) -> Vec<f32> {
    t.params()[0].1.as_tensor().to_vec1().unwrap()
}

#[test]
fn accumulation_equals_one_big_batch_and_the_loss_falls() {
    let d = data();
    // Same examples and noise either way: 2 x 4 takes the next 8 of the order as 1 x 8 does
    // (all micro-batches' examples are drawn before any noise, and 4 is even, so the
    // Box-Muller pairs line up).
    let mut big = trainer(8, 1, false);
    let mut acc = trainer(4, 2, false);
    let mut losses = Vec::new();
    for _ in 0..30 {
        let a = big.step(&d).unwrap();
        let b = acc.step(&d).unwrap();
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
        assert_eq!(a.items, 8);
        losses.push(a.loss);
    }
    for (a, b) in weights(&big).iter().zip(weights(&acc)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let (first, last) = (losses[0], losses[29]);
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn computed_gradients_train_as_autograd_does() {
    let d = data();
    let mut graph = trainer(6, 2, false);
    let mut hand = trainer(6, 2, true);
    for _ in 0..10 {
        let a = graph.step(&d).unwrap();
        let b = hand.step(&d).unwrap();
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-5 * a.grad_norm.max(1.0));
    }
    for (a, b) in weights(&graph).iter().zip(weights(&hand)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn a_non_finite_loss_stops_at_its_step_and_leaves_the_weights() {
    let d = data();
    let mut t = trainer(4, 2, false);
    t.family.poison_call = Some(6); // step 3, second micro-batch
    t.step(&d).unwrap();
    t.step(&d).unwrap();
    let before = weights(&t);
    let e = t.step(&d).unwrap_err().to_string();
    assert!(e.contains("step 3") && e.contains("micro-batch 2"), "{e}");
    assert_eq!(weights(&t), before);
    assert_eq!(t.step_count(), 2);
}

#[test]
fn resume_continues_bit_for_bit_with_the_family_state() {
    let d = data();
    let mut whole = trainer(5, 2, false);
    for _ in 0..9 {
        whole.step(&d).unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    let mut first = trainer(5, 2, false);
    for _ in 0..4 {
        first.step(&d).unwrap();
    }
    // keep = 0 still keeps the checkpoint just written.
    let dir = first.save(root.path(), 0, &(), |_| Ok(())).unwrap();
    assert!(dir.join("w.safetensors").is_file());
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json")).unwrap()).unwrap();
    // The family's fields sit beside the trainer's (the layout the older trainers wrote).
    assert_eq!(state["calls"], 8);
    assert_eq!(state["step"], 4);
    drop(first);
    let mut resumed = trainer(5, 2, false);
    assert_eq!(resumed.resume(root.path()).unwrap(), Some(dir));
    assert_eq!(resumed.family.calls, 8);
    for _ in 0..5 {
        resumed.step(&d).unwrap();
    }
    let bits = |t: &Trainer<Toy>| -> Vec<u32> { weights(t).iter().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&whole), bits(&resumed));
    // A data set of another size is refused.
    let w = Var::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let toy = Toy {
        computed: false,
        poison_call: None,
        calls: 0,
    };
    let mut other = Trainer::new(toy, vec![("w".into(), w)], whole.cfg, 23, Rng::new(4)).unwrap();
    let e = other.resume(root.path()).unwrap_err().to_string();
    assert!(e.contains("24 examples"), "{e}");
}

#[test]
fn the_ema_follows_the_weights_and_resumes_bit_for_bit() {
    let d = data();
    let decay = 0.9;
    let ema_bits = |t: &Trainer<Toy>| -> Vec<u32> {
        t.ema().unwrap()[0]
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    // By hand: ema_k = d_k * ema_{k-1} + (1 - d_k) * w_k from the initial weights, with
    // diffusers' warm-up d_k = min(decay, (1 + k) / (10 + k)).
    let mut t = trainer(5, 1, false).with_ema(decay).unwrap();
    let mut expect: Vec<f64> = weights(&t).iter().map(|&x| x as f64).collect();
    for k in 1..=12 {
        t.step(&d).unwrap();
        let dk = decay.min((1.0 + k as f64) / (10.0 + k as f64));
        for (e, w) in expect.iter_mut().zip(weights(&t)) {
            *e = dk * *e + (1.0 - dk) * w as f64;
        }
    }
    let got = t.ema().unwrap()[0].to_vec1::<f32>().unwrap();
    for (g, e) in got.iter().zip(&expect) {
        assert!((*g as f64 - e).abs() < 1e-5, "ema {g} vs {e}");
    }
    // It lags the weights, which have moved away from their start.
    assert!(got != weights(&t));
    // Saved beside the weights, restored on resume, and the same after more steps.
    let root = tempfile::tempdir().unwrap();
    let mut first = trainer(5, 1, false).with_ema(decay).unwrap();
    for _ in 0..3 {
        first.step(&d).unwrap();
    }
    let dir = first.save(root.path(), 2, &(), |_| Ok(())).unwrap();
    assert!(dir.join("ema.safetensors").is_file());
    let mut resumed = trainer(5, 1, false).with_ema(decay).unwrap();
    resumed.resume(root.path()).unwrap();
    for _ in 0..9 {
        resumed.step(&d).unwrap();
    }
    assert_eq!(ema_bits(&t), ema_bits(&resumed));
    // A run that keeps an EMA refuses a checkpoint without one; a bad decay is refused.
    let plain = tempfile::tempdir().unwrap();
    let mut p = trainer(5, 1, false);
    p.step(&d).unwrap();
    p.save(plain.path(), 1, &(), |_| Ok(())).unwrap();
    let e = trainer(5, 1, false)
        .with_ema(decay)
        .unwrap()
        .resume(plain.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("EMA"), "{e}");
    assert!(trainer(5, 1, false).with_ema(1.0).is_err());
}
