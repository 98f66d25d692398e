//! LoRA in PEFT's format against the PEFT oracle: adapted and merged logits, one AdamW step
//! (loss, gradients, updated weights), adapter round trips, bad adapters, and resumable
//! training that ends bit-identical to an uninterrupted run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rudder_tune::candle_core::{Device, Tensor};
use rudder_tune::checkpoint::TensorStore;
use rudder_tune::load::{load_model, LoadedModel};
use rudder_tune::peft::{self, LoraConfig};
use rudder_tune::train::adamw::{collect_grads, AdamW, AdamWConfig};
use rudder_tune::train::sft::causal_lm_loss;
use rudder_tune::train::{Rng, SftConfig, SftExample, SftTrainer};
use rudder_tune::verify::{max_abs_diff, verify_adapter};

fn fx(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hf-tiny")
        .join(name)
}

fn reference() -> TensorStore {
    TensorStore::load_file(
        &fx("llama_lora").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn llama_with_adapter() -> LoadedModel {
    let mut m = load_model(&fx("llama"), &Device::Cpu).unwrap();
    peft::load_adapter(&mut m.model, &fx("llama_lora"), "default", &Device::Cpu).unwrap();
    m
}

fn ids_rows(r: &TensorStore) -> Vec<Vec<u32>> {
    r.get("in.input_ids")
        .unwrap()
        .to_dtype(rudder_tune::candle_core::DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn adapted_and_merged_logits_match_peft() {
    let r = verify_adapter(
        &fx("llama"),
        &fx("llama_lora"),
        &fx("llama_lora").join("reference.safetensors"),
        1e-5,
        &Device::Cpu,
    )
    .unwrap();
    for name in [
        "out.base_logits",
        "out.lora_logits",
        "out.merged_logits",
        "merged.model.layers.0.self_attn.q_proj.weight",
    ] {
        let o = r
            .outputs
            .iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("{name} not compared"));
        assert!(o.pass, "{name}: {}", o.max_abs_diff);
    }
    assert!(r.pass);
}

#[test]
fn unmerge_restores_the_base() {
    let mut m = llama_with_adapter();
    let ids = Tensor::new(&[[3u32, 50, 7, 9]], &Device::Cpu).unwrap();
    let fwd = |m: &LoadedModel| {
        m.model
            .decoder()
            .unwrap()
            .forward_ids(&ids, 0, None, None, false)
            .unwrap()
            .0
    };
    let adapted = fwd(&m);
    assert_eq!(peft::merge(&mut m.model).unwrap(), 4);
    assert!(max_abs_diff(&adapted, &fwd(&m)).unwrap() < 1e-5);
    assert_eq!(peft::unmerge(&mut m.model).unwrap(), 4);
    assert!(
        max_abs_diff(&adapted, &fwd(&m)).unwrap() < 1e-5,
        "unmerged + active adapter"
    );
    peft::activate(&mut m.model, None).unwrap();
    let base = load_model(&fx("llama"), &Device::Cpu).unwrap();
    assert!(
        max_abs_diff(&fwd(&base), &fwd(&m)).unwrap() < 1e-5,
        "unmerged, adapter off == base"
    );
}

#[test]
fn one_adamw_step_matches_pytorch() {
    let reference = reference();
    let mut m = llama_with_adapter();
    let params = peft::make_trainable(&mut m.model, "default", None).unwrap();
    let rows = ids_rows(&reference);
    let examples: Vec<SftExample> = rows
        .iter()
        .map(|r| SftExample {
            tokens: r.clone(),
            loss_mask: vec![],
        })
        .collect();
    let batch: Vec<&SftExample> = examples.iter().collect();
    let (loss, n) = causal_lm_loss(m.model.decoder().unwrap(), &batch, 0).unwrap();
    assert_eq!(n, 2 * 11);
    let want_loss = reference
        .get("train.loss")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let got_loss = loss.to_scalar::<f32>().unwrap();
    assert!(
        (got_loss - want_loss).abs() < 1e-5,
        "loss {got_loss} vs {want_loss}"
    );
    let grads = collect_grads(&params, &loss.backward().unwrap());
    let runtime = |key: &str, kind: &str| {
        // PEFT's runtime names carry the adapter name: lora_A.default.weight.
        let k = key
            .replace(".lora_A.weight", ".lora_A.default.weight")
            .replace(".lora_B.weight", ".lora_B.default.weight");
        format!("train.{kind}.{k}")
    };
    for ((name, _), g) in params.iter().zip(&grads) {
        let want = reference.get(&runtime(name, "grad")).unwrap();
        let d = max_abs_diff(g.as_ref().unwrap(), want).unwrap();
        assert!(d < 1e-5, "grad {name}: {d}");
    }
    // The hand-written pass `rudder train` uses against the same oracle.
    let dec = m.model.decoder().unwrap();
    let pass = rudder_tune::train::lora_backprop::LoraBackprop::new(dec).unwrap();
    let (pass_loss, _, pass_grads) = pass.loss_and_grads(dec, &batch, 0).unwrap();
    assert!(
        (pass_loss as f32 - want_loss).abs() < 1e-5,
        "hand-written loss {pass_loss} vs {want_loss}"
    );
    for ((name, _), g) in params.iter().zip(pass_grads.for_params(&params)) {
        let want = reference.get(&runtime(name, "grad")).unwrap();
        let d = max_abs_diff(&g.unwrap(), want).unwrap();
        assert!(d < 1e-5, "hand-written grad {name}: {d}");
    }
    let cfg = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(params, cfg).unwrap();
    opt.step(&grads, 1e-2).unwrap();
    for (name, v) in &opt.params {
        let want = reference.get(&runtime(name, "updated")).unwrap();
        let d = max_abs_diff(v.as_tensor(), want).unwrap();
        assert!(d < 1e-5, "updated {name}: {d}");
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn adapter_save_load_round_trip_is_bit_exact() {
    let mut m = llama_with_adapter();
    let cfg = LoraConfig::from_json(
        &rudder_tune::config::JsonConfig::load(&fx("llama_lora").join("adapter_config.json"))
            .unwrap(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    peft::save_adapter(&mut m.model, &cfg, "default", out.path()).unwrap();
    let orig = rudder_tune::candle_core::safetensors::load(
        fx("llama_lora").join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let saved = rudder_tune::candle_core::safetensors::load(
        out.path().join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut ok: Vec<&String> = orig.keys().collect();
    let mut sk: Vec<&String> = saved.keys().collect();
    ok.sort();
    sk.sort();
    assert_eq!(ok, sk, "PEFT key names");
    for (k, v) in &orig {
        assert_eq!(bits(v), bits(&saved[k]), "{k}");
    }
    // The written config carries PEFT's fields with the fixture's values.
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx("llama_lora").join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    for f in [
        "r",
        "lora_alpha",
        "peft_type",
        "task_type",
        "bias",
        "use_rslora",
        "use_dora",
        "fan_in_fan_out",
        "lora_dropout",
        "base_model_name_or_path",
    ] {
        assert_eq!(written[f], fixture[f], "field {f}");
    }
    let mut t1: Vec<String> = written["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut t2: Vec<String> = fixture["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    t1.sort();
    t2.sort();
    assert_eq!(t1, t2);
    // And it loads back with identical logits.
    let mut again = load_model(&fx("llama"), &Device::Cpu).unwrap();
    peft::load_adapter(&mut again.model, out.path(), "default", &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 50, 7, 9]], &Device::Cpu).unwrap();
    let a = m
        .model
        .decoder()
        .unwrap()
        .forward_ids(&ids, 0, None, None, false)
        .unwrap()
        .0;
    let b = again
        .model
        .decoder()
        .unwrap()
        .forward_ids(&ids, 0, None, None, false)
        .unwrap()
        .0;
    assert_eq!(bits(&a), bits(&b));
}

fn adapter_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fx("llama_lora").join(f), d.path().join(f)).unwrap();
    }
    d
}

fn load_err(dir: &Path) -> String {
    let mut m = load_model(&fx("llama"), &Device::Cpu).unwrap();
    peft::load_adapter(&mut m.model, dir, "default", &Device::Cpu)
        .unwrap_err()
        .to_string()
}

fn edit_cfg(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

fn edit_weights(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let p = dir.join("adapter_model.safetensors");
    let mut w = rudder_tune::candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    f(&mut w);
    rudder_tune::candle_core::safetensors::save(&w, &p).unwrap();
}

#[test]
fn bad_adapters_are_reported() {
    // Target modules that do not match the weights in the file.
    let d = adapter_copy();
    edit_cfg(d.path(), |v| {
        v["target_modules"] = serde_json::json!(["q_proj"])
    });
    let e = load_err(d.path());
    assert!(e.contains("v_proj") && e.contains("target_modules"), "{e}");
    // Targets selecting modules the file has no weights for.
    let d = adapter_copy();
    edit_cfg(d.path(), |v| {
        v["target_modules"] = serde_json::json!(["q_proj", "v_proj", "k_proj"])
    });
    let e = load_err(d.path());
    assert!(e.contains("k_proj") && e.contains("missing"), "{e}");
    // Rank mismatch between config and tensors.
    let d = adapter_copy();
    edit_cfg(d.path(), |v| v["r"] = serde_json::json!(8));
    let e = load_err(d.path());
    assert!(e.contains("lora_A.weight") && e.contains("r=8"), "{e}");
    // A shape that does not fit the base model.
    let d = adapter_copy();
    edit_weights(d.path(), |w| {
        w.insert(
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight".into(),
            Tensor::zeros((64, 4), rudder_tune::candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(d.path());
    assert!(
        e.contains("layers.0.self_attn.v_proj.lora_B.weight") && e.contains("out=32"),
        "{e}"
    );
    // A module the base model does not have.
    let d = adapter_copy();
    edit_weights(d.path(), |w| {
        let a = w["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].clone();
        let b = w["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].clone();
        w.insert(
            "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(),
            a,
        );
        w.insert(
            "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight".into(),
            b,
        );
    });
    let e = load_err(d.path());
    assert!(e.contains("layers.7") && e.contains("do not exist"), "{e}");
    // Missing config fields.
    for field in ["r", "lora_alpha", "target_modules"] {
        let d = adapter_copy();
        edit_cfg(d.path(), |v| {
            v.as_object_mut().unwrap().remove(field);
        });
        let e = load_err(d.path());
        assert!(
            e.contains("adapter_config.json") && e.contains(field) && e.contains("missing"),
            "{field}: {e}"
        );
    }
    // DoRA is not plain LoRA.
    let d = adapter_copy();
    edit_cfg(d.path(), |v| v["use_dora"] = serde_json::json!(true));
    assert!(load_err(d.path()).contains("use_dora"));
}

#[test]
fn rslora_and_patterns_scale() {
    let mut c = LoraConfig::new(16, 8.0, &["q_proj"]);
    assert_eq!(c.scaling_for("model.layers.0.self_attn.q_proj"), 0.5);
    c.use_rslora = true;
    assert_eq!(c.scaling_for("model.layers.0.self_attn.q_proj"), 2.0);
    c.rank_pattern.insert("layers.1.self_attn.q_proj".into(), 4);
    assert_eq!(c.rank_for("model.layers.1.self_attn.q_proj"), 4);
    assert_eq!(c.scaling_for("model.layers.1.self_attn.q_proj"), 4.0);
    assert!(
        rudder_tune::peft::TargetModules::Regex(r".*\.(q|v)_proj".into())
            .matches("model.layers.0.self_attn.v_proj")
    );
    assert!(
        !rudder_tune::peft::TargetModules::Names(vec!["proj".into()])
            .matches("model.layers.0.self_attn.q_proj")
    );
}

fn toy_data() -> Vec<SftExample> {
    let mut rng = Rng::new(5);
    (0..12)
        .map(|i| {
            let len = 6 + (i % 5);
            let tokens: Vec<u32> = (0..len).map(|_| 3 + rng.below(500) as u32).collect();
            // Prompt/completion style mask: only the last half counts.
            let loss_mask = (0..len).map(|j| j >= len / 2).collect();
            SftExample { tokens, loss_mask }
        })
        .collect()
}

fn trainer_for(m: &mut LoadedModel, seed: u64) -> SftTrainer {
    let mut rng = Rng::new(seed);
    let drop = Arc::new(Mutex::new(Rng::new(seed + 1)));
    let mut cfg = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    cfg.lora_dropout = 0.1;
    let params =
        peft::attach_new(&mut m.model, &cfg, "default", &mut rng, Some(drop.clone())).unwrap();
    let sc = SftConfig {
        optim: AdamWConfig {
            lr: 5e-3,
            ..Default::default()
        },
        warmup_steps: 2,
        total_steps: 6,
        max_grad_norm: Some(1.0),
        grad_accum: 2,
        batch_size: 3,
        seed: 11,
        pad_id: 0,
    };
    SftTrainer::new(params, sc, 12, drop).unwrap()
}

#[test]
fn killed_run_resumes_bit_identical() {
    let data = toy_data();
    // Uninterrupted: 6 steps.
    let mut a = load_model(&fx("llama"), &Device::Cpu).unwrap();
    let mut ta = trainer_for(&mut a, 1);
    let mut losses = Vec::new();
    for _ in 0..6 {
        losses.push(ta.step(a.model.decoder().unwrap(), &data).unwrap().loss);
    }
    assert!(
        losses[5] < losses[0],
        "training reduces the loss: {losses:?}"
    );
    // Interrupted: 3 steps, checkpoint, then a fresh process (new model, different init) resumes.
    let ck = tempfile::tempdir().unwrap();
    let mut b = load_model(&fx("llama"), &Device::Cpu).unwrap();
    let mut tb = trainer_for(&mut b, 1);
    for _ in 0..3 {
        tb.step(b.model.decoder().unwrap(), &data).unwrap();
    }
    tb.save(ck.path(), 2, |_| Ok(())).unwrap();
    drop(tb);
    drop(b);
    let mut c = load_model(&fx("llama"), &Device::Cpu).unwrap();
    let mut tc = trainer_for(&mut c, 99);
    assert!(tc.resume(ck.path()).unwrap().is_some());
    assert_eq!(tc.step_count(), 3);
    for _ in 0..3 {
        tc.step(c.model.decoder().unwrap(), &data).unwrap();
    }
    for ((na, va), (nc, vc)) in ta.params().iter().zip(tc.params().iter()) {
        assert_eq!(na, nc);
        assert_eq!(
            bits(va.as_tensor()),
            bits(vc.as_tensor()),
            "{na} differs after resume"
        );
    }
}

#[test]
fn checkpoint_truncated_mid_write_keeps_the_previous_one() {
    let data = toy_data();
    let ck = tempfile::tempdir().unwrap();
    let mut m = load_model(&fx("llama"), &Device::Cpu).unwrap();
    let mut t = trainer_for(&mut m, 3);
    t.step(m.model.decoder().unwrap(), &data).unwrap();
    let first = t.save(ck.path(), 3, |_| Ok(())).unwrap();
    let saved_a: Vec<Vec<u32>> = t
        .params()
        .iter()
        .map(|(_, v)| bits(v.as_tensor()))
        .collect();
    t.step(m.model.decoder().unwrap(), &data).unwrap();
    // Simulate a crash while writing the second checkpoint: the extra writer fails after the
    // weights were written, leaving a partial temporary folder behind.
    let err = t.save(ck.path(), 3, |tmp| {
        let p = tmp.join("trainable.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
        Err(rudder_tune::TuneError::Invalid("simulated crash".into()))
    });
    assert!(err.is_err());
    assert_eq!(
        rudder_tune::train::checkpoint::latest(ck.path())
            .unwrap()
            .unwrap(),
        first
    );
    let mut m2 = load_model(&fx("llama"), &Device::Cpu).unwrap();
    let mut t2 = trainer_for(&mut m2, 42);
    t2.resume(ck.path()).unwrap();
    assert_eq!(t2.step_count(), 1);
    let restored: Vec<Vec<u32>> = t2
        .params()
        .iter()
        .map(|(_, v)| bits(v.as_tensor()))
        .collect();
    assert_eq!(saved_a, restored);
    // A checkpoint whose file was truncated in place is an error naming the file.
    let p = first.join("trainable.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let mut m3 = load_model(&fx("llama"), &Device::Cpu).unwrap();
    let mut t3 = trainer_for(&mut m3, 42);
    let e = t3.resume(ck.path()).unwrap_err().to_string();
    assert!(e.contains("trainable.safetensors"), "{e}");
}
