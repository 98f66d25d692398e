//! LoRA fine-tuning of a trained success classifier ([`ClassifierTrainer::new_lora`]) on tiny
//! synthetic data sets: a base trained where both cameras are bright on success learns, through
//! adapters alone, a data set where only the wrist camera says it (the agent view says the
//! opposite); the checkpoint holds a PEFT adapter and merged weights that load as a plain
//! classifier; a resumed run is bit-identical; a base that is not a reward checkpoint is
//! refused by name.

use std::path::Path;

use rudder_reward::dataset::{Split, SuccessDataset};
use rudder_reward::train::{calibrate, classifier_margins, ClassifierTrainer};
use rudder_reward::SuccessClassifier;
use rudder_tune::peft::LoraConfig;

mod common;
use common::{
    accuracy, assert_same_after_resume, config, expect_err, first_and_last_loss, read_json, spec,
    straight_and_resumed, write_data_with, DataSpec, Signal,
};

const BASE_INSTRUCTIONS: [&str; 2] = ["put the bowl on the plate", "open the top drawer"];
/// The second is new to the base's tokenizer (its BPE splits it).
const NEW_INSTRUCTIONS: [&str; 2] = ["put the bowl on the plate", "turn on the stove"];

/// Per split and instruction `n` positives and `n` negatives.
fn write_data(
    dir: &Path,
    n_train: usize,
    n_eval: usize,
    instructions: &[&str],
    signal: Signal,
    seed0: u64,
) -> SuccessDataset {
    write_data_with(
        dir,
        DataSpec {
            instructions,
            signal,
            seed0,
            ..DataSpec::new(n_train, n_eval)
        },
    )
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
        |z| z > 0.0,
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
    let (first, last) = first_and_last_loss(&mut t, &data, steps);
    let unmerged = t.trainer.family.margins(&data, &test, 64).unwrap();
    let lora_acc = accuracy(&unmerged, &data, &test, |z| z > 0.0);
    eprintln!(
        "loss {first:.4} -> {last:.4}; test accuracy on the wrist-only signal: base \
         {base_acc:.3}, LoRA {lora_acc:.3}"
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
    let (straight, split) = straight_and_resumed(tmp.path(), &data, n, || new().unwrap());
    assert_same_after_resume(&straight, &split, n, "adapter_model.safetensors");
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
