//! LoRA fine-tuning of a trained success classifier ([`ClassifierTrainer::new_lora`]) on tiny
//! synthetic data sets: a base trained where both cameras are bright on success learns, through
//! adapters alone, a data set where only the wrist camera says it (the agent view says the
//! opposite); the checkpoint holds a PEFT adapter and merged weights that load as a plain
//! classifier; a resumed run is bit-identical; a base that is not a reward checkpoint is
//! refused by name.

use std::path::Path;

use rudder_reward::dataset::{DatasetWriter, FrameKind, SampleMeta, Source, Split, SuccessDataset};
use rudder_reward::train::{
    calibrate, classifier_margins, ClassifierSpec, ClassifierTrainer, TrainConfig,
};
use rudder_reward::SuccessClassifier;
use rudder_tune::peft::LoraConfig;

const S: usize = 16;
const BASE_INSTRUCTIONS: [&str; 2] = ["put the bowl on the plate", "open the top drawer"];
/// The second is new to the base's tokenizer (its BPE splits it).
const NEW_INSTRUCTIONS: [&str; 2] = ["put the bowl on the plate", "turn on the stove"];

fn spec() -> ClassifierSpec {
    ClassifierSpec {
        image_size: 16,
        patch_size: 8,
        vision_hidden: 16,
        vision_layers: 1,
        hidden: 32,
        layers: 1,
        heads: 2,
        head_dim: 16,
        max_prompt_tokens: 64,
        max_vocab: 512,
    }
}

fn config(steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        model: spec(),
        steps,
        batch_size: 16,
        lr,
        weight_decay: 0.0,
        warmup_steps: 5,
        max_grad_norm: Some(1.0),
        seed: 7,
        shift: 1,
        brightness: 0.1,
    }
}

/// A bright (200..=255) or dark (0..=55) S x S x 3 frame with per-pixel noise from `seed`.
fn frame(bright: bool, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..S * S * 3)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((x >> 33) % 56) as u8;
            if bright {
                200 + noise
            } else {
                noise
            }
        })
        .collect()
}

/// The signal of a data set: whether the agent view is bright, given the label (the wrist
/// camera is bright exactly on success).
#[derive(Clone, Copy)]
enum Signal {
    /// Both cameras bright on success (the base's data).
    Both,
    /// Only the wrist says it; the agent view is bright on failure.
    WristOnly,
}

/// Per split and instruction `n` positives and `n` negatives.
fn write_data(
    dir: &Path,
    n_train: usize,
    n_eval: usize,
    instructions: &[&str],
    signal: Signal,
    seed0: u64,
) -> SuccessDataset {
    let mut w = DatasetWriter::create(dir, S, 3).unwrap();
    let mut seed = seed0;
    for (split, n) in [
        (Split::Train, n_train),
        (Split::Val, n_eval),
        (Split::Test, n_eval),
    ] {
        for (t, instr) in instructions.iter().enumerate() {
            for k in 0..2 * n {
                let label = k % 2 == 0;
                let kind = if label {
                    FrameKind::Success
                } else {
                    [FrameKind::Early, FrameKind::Failed, FrameKind::HoldAbove][k % 3]
                };
                let meta = SampleMeta {
                    task: format!("task_{t}"),
                    suite: "libero_goal".into(),
                    instruction: instr.to_string(),
                    episode: format!("{}/t{t}/e{k}", split.name()),
                    init: k,
                    step: k,
                    label,
                    kind,
                    source: Source::Expert,
                    split,
                };
                let agent_bright = match signal {
                    Signal::Both => label,
                    Signal::WristOnly => !label,
                };
                seed += 1;
                w.push(
                    meta,
                    &frame(agent_bright, 2 * seed),
                    &frame(label, 2 * seed + 1),
                )
                .unwrap();
            }
        }
    }
    w.finish().unwrap();
    SuccessDataset::load(dir).unwrap()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Trains a base classifier for `steps` on the both-cameras signal; returns its checkpoint.
fn base(root: &Path, steps: u64) -> std::path::PathBuf {
    let data = write_data(
        &root.join("base_data"),
        16,
        4,
        &BASE_INSTRUCTIONS,
        Signal::Both,
        0,
    );
    let mut t = ClassifierTrainer::new(config(steps, 3e-3), &data).unwrap();
    let input = t.input(&data);
    for _ in 0..steps {
        t.trainer.step(&input).unwrap();
    }
    t.trainer
        .save(&root.join("base"), 1, &data, |_| Ok(()))
        .unwrap()
}

fn accuracy(m: &[f64], data: &SuccessDataset, idx: &[usize]) -> f64 {
    m.iter()
        .zip(idx)
        .filter(|(&z, &i)| (z > 0.0) == data.samples[i].label)
        .count() as f64
        / m.len() as f64
}

fn lora_cfg() -> LoraConfig {
    LoraConfig::new(8, 16.0, &["q_proj", "v_proj"])
}

#[test]
fn lora_learns_a_new_signal_and_writes_a_peft_adapter_and_merged_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = base(tmp.path(), 100);
    let base_weights = std::fs::read(base_dir.join("model.safetensors")).unwrap();
    let data = write_data(
        &tmp.path().join("new_data"),
        16,
        8,
        &NEW_INSTRUCTIONS,
        Signal::WristOnly,
        10_000,
    );
    let test = data.indices(Split::Test);

    // The base on the new data.
    let base_clf = SuccessClassifier::load(&base_dir).unwrap();
    let base_acc = accuracy(
        &classifier_margins(&base_clf, &data, &test, 64).unwrap(),
        &data,
        &test,
    );

    let steps = 120;
    // cfg.model is replaced by the base's: a different one here must not matter.
    let mut cfg = config(steps, 1e-2);
    cfg.model.hidden = 64;
    let mut t = ClassifierTrainer::new_lora(cfg, &data, &tmp.path().join("base"), lora_cfg())
        .expect("LoRA on the base run (through latest)");
    assert_eq!(t.trainer.family.cfg.model, spec());
    // Only the adapters train: A and B of q_proj and v_proj of the one layer.
    let names: Vec<String> = t.trainer.params().iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for n in &names {
        assert!(
            n.starts_with("base_model.model.language_model.model.layers.0.self_attn.")
                && (n.contains("q_proj") || n.contains("v_proj"))
                && (n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")),
            "{n}"
        );
    }
    let input = t.input(&data);
    let (mut first, mut last) = (None, 0.0);
    for _ in 0..steps {
        let s = t.trainer.step(&input).unwrap();
        assert!(s.loss.is_finite());
        first.get_or_insert(s.loss);
        last = s.loss;
    }
    let unmerged = t.trainer.family.margins(&data, &test, 64).unwrap();
    let lora_acc = accuracy(&unmerged, &data, &test);
    eprintln!(
        "loss {:.4} -> {last:.4}; test accuracy on the wrist-only signal: base {base_acc:.3}, \
         LoRA {lora_acc:.3}",
        first.unwrap()
    );
    assert!(base_acc < 0.9, "the base already knows it: {base_acc}");
    assert!(lora_acc >= 0.9, "LoRA accuracy {lora_acc}");
    assert!(lora_acc > base_acc);

    let out = tmp.path().join("lora");
    let mut cal = None;
    let dir = t
        .trainer
        .save(&out, 2, &data, |d| {
            cal = Some(calibrate(d, &data, 0.97, 64)?.1);
            Ok(())
        })
        .unwrap();
    assert_eq!(cal.unwrap().samples, data.indices(Split::Val).len());

    // The base is untouched.
    assert!(std::fs::read(base_dir.join("model.safetensors")).unwrap() == base_weights);

    // adapter_config.json in PEFT's format.
    let ac = read_json(&dir.join("adapter_config.json"));
    assert_eq!(ac["peft_type"], "LORA");
    assert_eq!(ac["r"], 8);
    assert_eq!(ac["lora_alpha"], 16);
    assert_eq!(
        ac["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert_eq!(
        ac["base_model_name_or_path"],
        base_dir.display().to_string()
    );
    // adapter_model.safetensors holds the adapter tensors only.
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut keys: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    keys.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(keys, want);
    let a = st
        .tensor("base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), &[8, 32]);

    // training.json names the base and the adapters.
    let tj = read_json(&dir.join("training.json"));
    assert_eq!(tj["lora_base"], base_dir.display().to_string());
    assert_eq!(tj["lora"]["r"], 8);

    // The merged checkpoint loads as a plain classifier, calibrated, with the adapted margins.
    let clf = SuccessClassifier::load(&out).unwrap();
    assert!(clf.config().calibrated);
    assert_eq!(clf.config().yes_id, base_clf.config().yes_id);
    assert_eq!(clf.config().no_id, base_clf.config().no_id);
    let merged = classifier_margins(&clf, &data, &test, 64).unwrap();
    for (k, (m, u)) in merged.iter().zip(&unmerged).enumerate() {
        assert!((m - u).abs() < 1e-4, "row {k}: merged {m} vs adapted {u}");
    }
    // The tokenizer is the base's.
    assert_eq!(
        std::fs::read(dir.join("tokenizer.json")).unwrap(),
        std::fs::read(base_dir.join("tokenizer.json")).unwrap()
    );
    // And a LoRA checkpoint is itself a base for another LoRA run.
    ClassifierTrainer::new_lora(config(1, 1e-2), &data, &out, lora_cfg()).unwrap();
}

fn adapter_bytes(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoint-{step}/adapter_model.safetensors"))).unwrap()
}

fn expect_err<T>(r: Result<T, rudder_reward::RewardError>, needles: &[&str], what: &str) {
    let msg = match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e.to_string(),
    };
    eprintln!("{what}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{what}: `{msg}` lacks `{n}`");
    }
}

#[test]
fn resumed_lora_run_is_bit_identical_and_checks_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = base(tmp.path(), 2);
    let data = write_data(
        &tmp.path().join("new_data"),
        4,
        1,
        &NEW_INSTRUCTIONS,
        Signal::WristOnly,
        10_000,
    );
    let n = 10u64;
    let new = || ClassifierTrainer::new_lora(config(n, 1e-2), &data, &base_dir, lora_cfg());

    let straight = tmp.path().join("straight");
    let mut t = new().unwrap();
    let input = t.input(&data);
    let losses: Vec<f64> = (0..n)
        .map(|_| t.trainer.step(&input).unwrap().loss)
        .collect();
    t.trainer.save(&straight, 2, &data, |_| Ok(())).unwrap();

    let split = tmp.path().join("split");
    let mut t = new().unwrap();
    let input = t.input(&data);
    let mut resumed: Vec<f64> = (0..n / 2)
        .map(|_| t.trainer.step(&input).unwrap().loss)
        .collect();
    t.trainer.save(&split, 2, &data, |_| Ok(())).unwrap();
    drop(t);
    let mut t = new().unwrap();
    let from = t.trainer.resume(&split).unwrap().expect("a checkpoint");
    assert_eq!(from, split.join(format!("checkpoint-{}", n / 2)));
    assert_eq!(t.trainer.step_count(), n / 2);
    let input = t.input(&data);
    resumed.extend((n / 2..n).map(|_| t.trainer.step(&input).unwrap().loss));
    t.trainer.save(&split, 2, &data, |_| Ok(())).unwrap();

    assert_eq!(losses, resumed, "per-step losses");
    let a = adapter_bytes(&straight, n);
    assert!(!a.is_empty());
    assert!(
        a == adapter_bytes(&split, n),
        "adapter differs after resume"
    );
    assert!(adapter_bytes(&split, n / 2) != a, "the adapters moved");
    let model = |run: &Path| std::fs::read(run.join(format!("checkpoint-{n}/model.safetensors")));
    assert!(model(&straight).unwrap() == model(&split).unwrap());

    // Resuming with other adapters, or as a full run, is refused.
    let mut other = lora_cfg();
    other.r = 4;
    let mut t = ClassifierTrainer::new_lora(config(n, 1e-2), &data, &base_dir, other).unwrap();
    expect_err(
        t.trainer.resume(&split),
        &["trainer_state.json", "r 4"],
        "other r",
    );
    let mut t = ClassifierTrainer::new(config(n, 1e-2), &data).unwrap();
    expect_err(
        t.trainer.resume(&split),
        &["LoRA", "no LoRA"],
        "full run on a LoRA run",
    );
    let mut t = new().unwrap();
    expect_err(
        t.trainer.resume(&tmp.path().join("base")),
        &["LoRA", "no LoRA"],
        "LoRA run on a full run",
    );
}

#[test]
fn bases_that_are_not_reward_checkpoints_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(
        &tmp.path().join("data"),
        2,
        1,
        &NEW_INSTRUCTIONS,
        Signal::WristOnly,
        0,
    );
    let try_base = |p: &Path| ClassifierTrainer::new_lora(config(1, 1e-2), &data, p, lora_cfg());

    let empty = tmp.path().join("empty_dir");
    std::fs::create_dir_all(&empty).unwrap();
    expect_err(
        try_base(&empty),
        &["empty_dir", "rudder train reward"],
        "empty dir",
    );
    expect_err(
        try_base(&tmp.path().join("no_such_dir")),
        &["no_such_dir"],
        "missing dir",
    );
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf-tiny");
    for name in ["llama", "paligemma"] {
        expect_err(
            try_base(&fixtures.join(name)),
            &[name, "training.json", "rudder train reward"],
            name,
        );
    }

    // A reward checkpoint missing a file, or with another training.json, is refused by name.
    let base_dir = base(tmp.path(), 1);
    let copy = |to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(&base_dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    for name in ["tokenizer.json", "reward.json"] {
        let d = tmp.path().join(format!("without_{name}"));
        copy(&d);
        std::fs::remove_file(d.join(name)).unwrap();
        expect_err(try_base(&d), &[name], name);
    }
    let d = tmp.path().join("cnn_like");
    copy(&d);
    std::fs::write(d.join("training.json"), br#"{"arch": "cnn", "config": {}}"#).unwrap();
    expect_err(try_base(&d), &["training.json", "cnn"], "cnn base");

    // Every question must fit the base's max_prompt_tokens; new words are fine.
    let long = "word ".repeat(100);
    let long_data = write_data(
        &tmp.path().join("long"),
        1,
        1,
        &[long.as_str()],
        Signal::WristOnly,
        0,
    );
    expect_err(
        ClassifierTrainer::new_lora(config(1, 1e-2), &long_data, &base_dir, lora_cfg()),
        &["max_prompt_tokens"],
        "too long",
    );
    ClassifierTrainer::new_lora(config(1, 1e-2), &data, &base_dir, lora_cfg()).unwrap();
    // Targets that match no linear are refused.
    expect_err(
        ClassifierTrainer::new_lora(
            config(1, 1e-2),
            &data,
            &base_dir,
            LoraConfig::new(4, 8.0, &["nope_proj"]),
        ),
        &["nope_proj"],
        "bad targets",
    );
}
