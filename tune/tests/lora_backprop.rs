//! The hand-written LoRA forward/backward against candle autograd: same loss, same adapter
//! gradients, on the Llama (GQA, SiLU) and Gemma (MQA, GELU-tanh, head_dim != hidden/heads,
//! tied head, scaled embeddings, 1 + w norms) fixtures, with adapters on every projection,
//! padded batches of unequal length and a loss mask; and the models it must refuse.

use std::path::PathBuf;

use rudder_tune::candle_core::{Device, Tensor, Var};
use rudder_tune::load::{load_model, LoadedModel};
use rudder_tune::peft::{self, LoraConfig};
use rudder_tune::train::adamw::collect_grads;
use rudder_tune::train::lora_backprop::LoraBackprop;
use rudder_tune::train::sft::causal_lm_loss;
use rudder_tune::train::{Rng, SftExample};

fn fx(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hf-tiny")
        .join(name)
}

const ALL: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The model with fresh adapters whose B is random too (PEFT starts B at zero, which would
/// leave every A gradient zero and untested).
fn adapted(name: &str, targets: &[&str], seed: u64) -> (LoadedModel, Vec<(String, Var)>) {
    let mut m = load_model(&fx(name), &Device::Cpu).unwrap();
    let mut rng = Rng::new(seed);
    let params = peft::attach_new(
        &mut m.model,
        &LoraConfig::new(4, 8.0, targets),
        "default",
        &mut rng,
        None,
    )
    .unwrap();
    for (n, v) in &params {
        if n.ends_with("lora_B.weight") {
            let r = Tensor::randn(0f32, 0.05, v.dims(), &Device::Cpu).unwrap();
            v.set(&r).unwrap();
        }
    }
    (m, params)
}

fn data(vocab: usize, seed: u64) -> Vec<SftExample> {
    let mut rng = Rng::new(seed);
    [9usize, 13, 6, 13]
        .iter()
        .enumerate()
        .map(|(i, &len)| SftExample {
            tokens: (0..len).map(|_| rng.below(vocab) as u32).collect(),
            // One example masks its first half (a prompt), the others count every token.
            loss_mask: if i == 1 {
                (0..len).map(|j| j >= len / 2).collect()
            } else {
                vec![]
            },
        })
        .collect()
}

fn compare(name: &str, targets: &[&str]) {
    let (m, params) = adapted(name, targets, 3);
    let dec = m.model.decoder().unwrap();
    let examples = data(dec.cfg.vocab_size, 11);
    let batch: Vec<&SftExample> = examples.iter().collect();

    let (loss, n) = causal_lm_loss(dec, &batch, 0).unwrap();
    let want_loss = loss.to_scalar::<f32>().unwrap() as f64;
    let want = collect_grads(&params, &loss.backward().unwrap());

    let fast = LoraBackprop::new(dec).unwrap();
    let (got_loss, got_n, grads) = fast.loss_and_grads(dec, &batch, 0).unwrap();
    let got = grads.for_params(&params);
    assert_eq!(n, got_n);
    assert!(
        (want_loss - got_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
        "{name}: loss {got_loss} vs autograd {want_loss}"
    );
    let mut checked = 0;
    for ((pname, _), (w, g)) in params.iter().zip(want.iter().zip(&got)) {
        let w = w
            .as_ref()
            .unwrap_or_else(|| panic!("{pname}: autograd gave no gradient"));
        let g = g.as_ref().unwrap_or_else(|| panic!("{pname}: no gradient"));
        assert_eq!(w.dims(), g.dims(), "{pname}");
        let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let scale = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert!(scale > 0.0, "{pname}: zero gradient tests nothing");
        let diff = w
            .iter()
            .zip(&g)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "{name} {pname}: max abs diff {diff} against a gradient scale of {scale}"
        );
        checked += 1;
    }
    assert_eq!(checked, params.len());
}

#[test]
fn llama_every_projection_matches_autograd() {
    compare("llama", &ALL);
}

#[test]
fn llama_q_and_v_match_autograd() {
    compare("llama", &["q_proj", "v_proj"]);
}

#[test]
fn gemma_every_projection_matches_autograd() {
    compare("gemma", &ALL);
}

#[test]
fn swapped_base_weights_are_refused() {
    let (mut m, _) = adapted("llama", &["q_proj"], 1);
    let fast = LoraBackprop::new(m.model.decoder().unwrap()).unwrap();
    peft::merge(&mut m.model).unwrap();
    let dec = m.model.decoder().unwrap();
    let examples = data(dec.cfg.vocab_size, 2);
    let batch: Vec<&SftExample> = examples.iter().collect();
    let err = fast.loss_and_grads(dec, &batch, 0).unwrap_err().to_string();
    assert!(err.contains("lora-backprop"), "{err}");
    assert!(
        LoraBackprop::new(dec).is_err(),
        "a merged adapter is not covered"
    );
}

#[test]
fn out_of_vocabulary_ids_are_errors() {
    let (m, _) = adapted("llama", &["q_proj"], 1);
    let dec = m.model.decoder().unwrap();
    let fast = LoraBackprop::new(dec).unwrap();
    let bad = SftExample {
        tokens: vec![1, 2, dec.cfg.vocab_size as u32 + 5],
        loss_mask: vec![],
    };
    let err = fast
        .loss_and_grads(dec, &[&bad], 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out of range") || err.contains("outside"),
        "{err}"
    );
}

#[test]
fn a_single_sequence_runs_unsharded_and_matches() {
    let (m, params) = adapted("llama", &["q_proj", "v_proj", "down_proj"], 5);
    let dec = m.model.decoder().unwrap();
    let one = &data(dec.cfg.vocab_size, 4)[1];
    let (loss, _) = causal_lm_loss(dec, &[one], 0).unwrap();
    let want = collect_grads(&params, &loss.backward().unwrap());
    let fast = LoraBackprop::new(dec).unwrap();
    let (got_loss, _, grads) = fast.loss_and_grads(dec, &[one], 0).unwrap();
    assert!((loss.to_scalar::<f32>().unwrap() as f64 - got_loss).abs() < 1e-5);
    for ((pname, _), (w, g)) in params
        .iter()
        .zip(want.iter().zip(grads.for_params(&params)))
    {
        let d = (w.as_ref().unwrap() - g.unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{pname}: {d}");
    }
}

/// Four SFT steps (accumulation, clipping, cosine schedule) through the hand-written pass and
/// through autograd end at the same adapter weights.
#[test]
fn sft_trainer_uses_the_pass_and_trains_as_autograd_does() {
    use rudder_tune::train::{AdamWConfig, SftConfig, SftTrainer};
    use std::sync::{Arc, Mutex};
    let examples = data(512, 8);
    let run = |autograd: bool| {
        let mut m = load_model(&fx("llama"), &Device::Cpu).unwrap();
        let mut rng = Rng::new(21);
        let params = peft::attach_new(
            &mut m.model,
            &LoraConfig::new(4, 8.0, &["q_proj", "v_proj", "up_proj"]),
            "default",
            &mut rng,
            None,
        )
        .unwrap();
        let cfg = SftConfig {
            optim: AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            },
            warmup_steps: 1,
            total_steps: 4,
            max_grad_norm: Some(0.5),
            grad_accum: 2,
            batch_size: 2,
            seed: 3,
            pad_id: 0,
        };
        let mut tr = SftTrainer::new(
            params,
            cfg,
            examples.len(),
            Arc::new(Mutex::new(Rng::new(1))),
        )
        .unwrap();
        if autograd {
            tr.prefer_autograd();
        }
        let dec = m.model.decoder().unwrap();
        let how = tr.choose_backward(dec);
        let losses: Vec<f64> = (0..4)
            .map(|_| tr.step(dec, &examples).unwrap().loss)
            .collect();
        let weights: Vec<Vec<f32>> = tr
            .params()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (how, losses, weights)
    };
    let (how_fast, loss_fast, w_fast) = run(false);
    let (how_auto, loss_auto, w_auto) = run(true);
    assert!(how_fast.contains("hand-written"), "{how_fast}");
    assert!(how_auto.contains("autograd"), "{how_auto}");
    for (a, b) in loss_fast.iter().zip(&loss_auto) {
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "loss {a} vs {b}");
    }
    // The loss moved: the steps did something.
    assert!(loss_fast[3] < loss_fast[0], "{loss_fast:?}");
    for (a, b) in w_fast.iter().zip(&w_auto) {
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d < 1e-4, "adapter weights differ by {d}");
    }
}

#[test]
fn full_fine_tuning_stays_on_autograd() {
    let mut m = load_model(&fx("llama"), &Device::Cpu).unwrap();
    let params = match &mut m.model {
        rudder_tune::load::AnyModel::Llama(l) => {
            rudder_tune::state::decoder_full_trainable(&mut l.decoder, "model", &|_| false).unwrap()
        }
        _ => unreachable!(),
    };
    assert!(!LoraBackprop::covers(m.model.decoder().unwrap(), &params));
}
