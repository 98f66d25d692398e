//! The success classifier end to end at library level, on a tiny synthetic data set whose
//! signal is trivially learnable (positives bright, negatives dark): training reaches high
//! accuracy, calibration is written and obeyed, a resumed run is bit-identical to a straight
//! one, and every bad input is refused with a message that names it.

use std::path::{Path, PathBuf};

use rudder_reward::calibration::sigmoid;
use rudder_reward::classifier::Query;
use rudder_reward::dataset::{DatasetWriter, FrameKind, SampleMeta, Source, Split, SuccessDataset};
use rudder_reward::train::{
    calibrate, classifier_margins, ClassifierSpec, ClassifierTrainer, TrainConfig,
};
use rudder_reward::{RewardConfig, SuccessClassifier};
use rudder_robot::{ImageRgb8, Observation};

const S: usize = 16;
const INSTRUCTIONS: [&str; 2] = ["put the bowl on the plate", "open the top drawer"];

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

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        model: spec(),
        steps,
        batch_size: 16,
        lr: 3e-3,
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

/// Writes the synthetic data set: per split and instruction `n` positives and `n` negatives
/// (the negatives' kinds cycle through early, failed and a hard kind). `with_val` false leaves
/// the `val` split out.
fn write_data(dir: &Path, n_train: usize, n_eval: usize, with_val: bool) -> SuccessDataset {
    let mut w = DatasetWriter::create(dir, S, 3).unwrap();
    let mut seed = 0u64;
    for (split, n) in [
        (Split::Train, n_train),
        (Split::Val, n_eval),
        (Split::Test, n_eval),
    ] {
        if split == Split::Val && !with_val {
            continue;
        }
        for (t, instr) in INSTRUCTIONS.iter().enumerate() {
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
                seed += 1;
                w.push(meta, &frame(label, 2 * seed), &frame(label, 2 * seed + 1))
                    .unwrap();
            }
        }
    }
    w.finish().unwrap();
    SuccessDataset::load(dir).unwrap()
}

fn image(data: &[u8]) -> ImageRgb8 {
    ImageRgb8 {
        width: S as u32,
        height: S as u32,
        data: data.to_vec(),
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn trains_calibrates_and_classifies_a_learnable_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 16, 8, true);
    assert_eq!(data.indices(Split::Train).len(), 64);
    assert_eq!(data.indices(Split::Val).len(), 32);
    assert_eq!(data.indices(Split::Test).len(), 32);

    let steps = 100;
    let mut t = ClassifierTrainer::new(config(steps), &data).unwrap();
    let input = t.input(&data);
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..steps {
        let s = t.trainer.step(&input).unwrap();
        assert!(s.loss.is_finite());
        first.get_or_insert(s.loss);
        last = s.loss;
    }
    let first = first.unwrap();
    assert!(
        last < first * 0.5,
        "loss should fall: first {first}, last {last}"
    );
    let out = tmp.path().join("run");
    let mut cal = None;
    let dir = t
        .trainer
        .save(&out, 2, &data, |tmp| {
            cal = Some(calibrate(tmp, &data, 0.97, 64)?.1);
            Ok(())
        })
        .unwrap();
    assert_eq!(dir, out.join(format!("checkpoint-{steps}")));
    let cal = cal.expect("calibration ran inside the save");
    assert_eq!(cal.samples, 32);

    // reward.json says calibrated, with the temperature and threshold found.
    let rj = read_json(&dir.join("reward.json"));
    assert_eq!(rj["calibrated"], true, "{rj}");
    let temp = rj["temperature"].as_f64().expect("temperature is a number");
    assert!(temp.is_finite() && temp > 0.0, "temperature {temp}");
    assert_eq!(temp, cal.temperature);
    let thr = rj["threshold"].as_f64().unwrap();
    assert!((0.5..1.0).contains(&thr), "threshold {thr}");
    assert_eq!(thr, cal.threshold);

    // The run folder (through `latest`) loads to the calibrated checkpoint.
    let clf = SuccessClassifier::load(&out).unwrap();
    assert_eq!(clf.dir, dir);
    assert!(clf.config().calibrated);
    assert_eq!(clf.config().temperature, temp);
    assert_eq!(clf.config().threshold, thr);

    // Held-out accuracy, under the calibrated verdict and RoboFuME's raw rule.
    let idx = data.indices(Split::Test);
    let m = classifier_margins(&clf, &data, &idx, 64).unwrap();
    assert_eq!(m.len(), idx.len());
    let labels: Vec<bool> = idx.iter().map(|&i| data.samples[i].label).collect();
    let acc = |said: &dyn Fn(f64) -> bool| {
        m.iter()
            .zip(&labels)
            .filter(|(&z, &l)| said(z) == l)
            .count() as f64
            / m.len() as f64
    };
    let cal_acc = acc(&|z| clf.verdict(z).success);
    let raw_acc = acc(&|z| z > 0.0);
    eprintln!(
        "loss {first:.4} -> {last:.4}; T {temp:.3}, threshold {thr:.2}; test accuracy \
         {cal_acc:.3} calibrated, {raw_acc:.3} raw"
    );
    assert!(cal_acc >= 0.9, "calibrated test accuracy {cal_acc}");
    assert!(raw_acc >= 0.9, "raw-rule test accuracy {raw_acc}");

    // The verdict follows the checkpoint's calibration, for the real margins and a sweep.
    let sweep = (-40..=40).map(|k| k as f64 * 0.25);
    for z in m.iter().copied().chain(sweep) {
        let v = clf.verdict(z);
        assert_eq!(v.margin, z);
        assert_eq!(v.p_raw, sigmoid(z));
        assert_eq!(v.p_success, sigmoid(z / temp));
        assert_eq!(v.success, sigmoid(z / temp) > thr, "margin {z}");
    }
    // At exactly the threshold the verdict is "not done" (strictly above is required).
    let z_at = temp * (thr / (1.0 - thr)).ln();
    let v = clf.verdict(z_at);
    assert!((v.p_success - thr).abs() < 1e-9);

    // One frame pair: classify, classify_observation and the batched margins agree.
    for &i in &[idx[0], idx[1], idx[idx.len() - 1]] {
        let (a, w) = data.frames(i);
        let (a, w) = (image(a), image(w));
        let instr = &data.samples[i].instruction;
        let direct = clf.classify(&[&a, &w], instr).unwrap();
        let mut obs = Observation {
            instruction: instr.clone(),
            ..Default::default()
        };
        obs.images.insert("agentview".into(), a.clone());
        obs.images.insert("wrist".into(), w.clone());
        // An extra camera is ignored.
        obs.images.insert("third".into(), ImageRgb8::black(4, 4));
        let via_obs = clf.classify_observation(&obs).unwrap();
        assert_eq!(direct, via_obs);
        let k = idx.iter().position(|&j| j == i).unwrap();
        assert!(
            (direct.margin - m[k]).abs() < 1e-3 * (1.0 + m[k].abs()),
            "single {} vs batched {}",
            direct.margin,
            m[k]
        );
        assert_eq!(direct.success, data.samples[i].label, "row {i}");
        // The cameras' order matters: swapped frames go through the model differently.
        let q = [
            Query {
                frames: &[&a, &w],
                instruction: instr,
            },
            Query {
                frames: &[&a, &w],
                instruction: instr,
            },
        ];
        let two = clf.margins(&q).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0], two[1]);
    }
    assert!(clf.margins(&[]).unwrap().is_empty());

    // Frames of another size are resized to the tower's input, not refused.
    let big_bright = ImageRgb8 {
        width: 40,
        height: 24,
        data: vec![230; 40 * 24 * 3],
    };
    let big_dark = ImageRgb8 {
        width: 40,
        height: 24,
        data: vec![20; 40 * 24 * 3],
    };
    let yes = clf
        .classify(&[&big_bright, &big_bright], INSTRUCTIONS[0])
        .unwrap();
    let no = clf
        .classify(&[&big_dark, &big_dark], INSTRUCTIONS[0])
        .unwrap();
    assert!(
        yes.margin > no.margin,
        "bright {} vs dark {}",
        yes.margin,
        no.margin
    );
}

fn model_bytes(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoint-{step}/model.safetensors"))).unwrap()
}

#[test]
fn resumed_run_is_bit_identical_to_a_straight_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 8, 2, true);
    let n = 10u64;

    let straight = tmp.path().join("straight");
    let mut t = ClassifierTrainer::new(config(n), &data).unwrap();
    let input = t.input(&data);
    let mut losses = Vec::new();
    for _ in 0..n {
        losses.push(t.trainer.step(&input).unwrap().loss);
    }
    t.trainer.save(&straight, 2, &data, |_| Ok(())).unwrap();

    let split = tmp.path().join("split");
    let mut t = ClassifierTrainer::new(config(n), &data).unwrap();
    let input = t.input(&data);
    let mut resumed_losses = Vec::new();
    for _ in 0..n / 2 {
        resumed_losses.push(t.trainer.step(&input).unwrap().loss);
    }
    t.trainer.save(&split, 2, &data, |_| Ok(())).unwrap();
    drop(t);
    let mut t = ClassifierTrainer::new(config(n), &data).unwrap();
    let from = t.trainer.resume(&split).unwrap().expect("a checkpoint");
    assert_eq!(from, split.join(format!("checkpoint-{}", n / 2)));
    assert_eq!(t.trainer.step_count(), n / 2);
    let input = t.input(&data);
    for _ in n / 2..n {
        resumed_losses.push(t.trainer.step(&input).unwrap().loss);
    }
    t.trainer.save(&split, 2, &data, |_| Ok(())).unwrap();

    assert_eq!(losses, resumed_losses, "per-step losses");
    let a = model_bytes(&straight, n);
    let b = model_bytes(&split, n);
    assert!(!a.is_empty());
    assert!(a == b, "model.safetensors differs after resume");
    // And the weights really moved from the half-way point.
    assert!(model_bytes(&split, n / 2) != b);
    let rj = read_json(&split.join(format!("checkpoint-{n}/reward.json")));
    assert_eq!(rj["calibrated"], false);
    assert_eq!(rj["temperature"], 1.0);
}

/// An untrained, uncalibrated checkpoint (cheap) and its data set.
fn untrained(root: &Path) -> (SuccessDataset, PathBuf) {
    let data = write_data(&root.join("data"), 2, 1, true);
    let t = ClassifierTrainer::new(config(1), &data).unwrap();
    let dir = t
        .trainer
        .save(&root.join("run"), 1, &data, |_| Ok(()))
        .unwrap();
    (data, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match SuccessClassifier::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn expect_err<T>(r: Result<T, rudder_reward::RewardError>, needles: &[&str], what: &str) {
    let msg = match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "{what}: `{msg}` lacks `{n}`");
    }
}

#[test]
fn bad_inputs_are_refused_with_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, ckpt) = untrained(tmp.path());
    let clf = SuccessClassifier::load(&ckpt).unwrap();
    assert!(!clf.config().calibrated);
    let (a, w) = data.frames(0);
    let (a, w) = (image(a), image(w));
    let short = ImageRgb8 {
        width: S as u32,
        height: S as u32,
        data: vec![0; S * S * 3 - 1],
    };
    let instr = INSTRUCTIONS[0];
    // The good call works.
    clf.classify(&[&a, &w], instr).unwrap();

    expect_err(
        clf.classify(&[&short, &w], instr),
        &["agentview", "767"],
        "short agentview",
    );
    expect_err(
        clf.classify(&[&a, &short], instr),
        &["wrist", "767"],
        "short wrist",
    );
    expect_err(clf.classify(&[&a, &w], ""), &["instruction"], "empty");
    expect_err(clf.classify(&[&a, &w], "  \t "), &["instruction"], "blank");
    expect_err(clf.classify(&[&a], instr), &["frames", "1"], "one frame");
    expect_err(
        clf.classify(&[&a, &w, &w], instr),
        &["frames", "3"],
        "three frames",
    );
    let long = "word ".repeat(200);
    expect_err(
        clf.classify(&[&a, &w], &long),
        &["instruction", "max_prompt_tokens"],
        "too long",
    );
    // A bad row anywhere in a batch fails the batch.
    expect_err(
        clf.margins(&[
            Query {
                frames: &[&a, &w],
                instruction: instr,
            },
            Query {
                frames: &[&a, &short],
                instruction: instr,
            },
        ]),
        &["wrist"],
        "batch with a short frame",
    );

    let mut obs = Observation {
        instruction: instr.into(),
        ..Default::default()
    };
    obs.images.insert("agentview".into(), a.clone());
    expect_err(
        clf.classify_observation(&obs),
        &["wrist", "agentview"],
        "observation without wrist",
    );
    obs.images.insert("wrist".into(), w.clone());
    obs.instruction = String::new();
    expect_err(
        clf.classify_observation(&obs),
        &["instruction"],
        "observation without instruction",
    );

    // Checkpoint folders missing a file: the message names it.
    for name in [
        "config.json",
        "tokenizer.json",
        "reward.json",
        "model.safetensors",
    ] {
        let d = tmp.path().join(format!("without_{name}"));
        copy_dir(&ckpt, &d);
        std::fs::remove_file(d.join(name)).unwrap();
        let msg = load_err(&d);
        assert!(msg.contains(name), "without {name}: `{msg}`");
    }

    // reward.json fields out of range: the message names the field.
    let good = read_json(&ckpt.join("reward.json"));
    let yes = good["yes_id"].as_u64().unwrap();
    let edits: Vec<(&str, serde_json::Value, &str)> = vec![
        ("temperature", serde_json::json!(-1.0), "temperature"),
        ("temperature", serde_json::json!(0.0), "temperature"),
        ("temperature", serde_json::json!(1e9), "temperature"),
        ("threshold", serde_json::json!(1.5), "threshold"),
        ("threshold", serde_json::json!(-0.1), "threshold"),
        ("threshold", serde_json::json!(1.0), "threshold"),
        ("no_id", serde_json::json!(yes), "no_id"),
        ("yes_id", serde_json::json!(100_000), "yes_id"),
        ("no_id", serde_json::json!(100_000), "no_id"),
        ("image_size", serde_json::json!(32), "image_size"),
        ("format_version", serde_json::json!(9), "format_version"),
        ("question", serde_json::json!("done?"), "question"),
        ("cameras", serde_json::json!([]), "cameras"),
        (
            "max_prompt_tokens",
            serde_json::json!(1),
            "max_prompt_tokens",
        ),
    ];
    for (k, (field, value, needle)) in edits.into_iter().enumerate() {
        let d = tmp.path().join(format!("edit_{k}"));
        copy_dir(&ckpt, &d);
        let mut v = good.clone();
        v[field] = value.clone();
        std::fs::write(d.join("reward.json"), serde_json::to_vec(&v).unwrap()).unwrap();
        let msg = load_err(&d);
        assert!(
            msg.contains(needle) && msg.contains("reward.json"),
            "{field} = {value}: `{msg}`"
        );
    }
    // yes_id and no_id swapped: both in range, distinct, but not the tokenizer's.
    let d = tmp.path().join("swapped");
    copy_dir(&ckpt, &d);
    let mut v = good.clone();
    v["yes_id"] = good["no_id"].clone();
    v["no_id"] = good["yes_id"].clone();
    std::fs::write(d.join("reward.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("yes_id") && msg.contains("\"yes\""), "{msg}");
    // Not JSON / an unknown field.
    let d = tmp.path().join("garbage");
    copy_dir(&ckpt, &d);
    std::fs::write(d.join("reward.json"), b"{nope").unwrap();
    assert!(load_err(&d).contains("reward.json"));
    let mut v = good.clone();
    v["extra"] = serde_json::json!(1);
    std::fs::write(d.join("reward.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let msg = load_err(&d);
    assert!(
        msg.contains("reward.json") && msg.contains("extra"),
        "{msg}"
    );
    // JSON has no NaN: serde_json writes one as null, which must be refused, not read as 0.
    let mut v = good.clone();
    v["temperature"] = serde_json::Value::Null;
    std::fs::write(d.join("reward.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let msg = load_err(&d);
    eprintln!("null temperature: {msg}");
    assert!(msg.contains("reward.json"), "{msg}");

    // NaN through the checked type itself: every non-finite number names its field.
    let cfg: RewardConfig = serde_json::from_value(good.clone()).unwrap();
    let p = Path::new("x/reward.json");
    let vocab = yes.max(good["no_id"].as_u64().unwrap()) as usize + 1;
    cfg.check(p, vocab, 16).unwrap();
    for (field, f) in [
        (
            "temperature",
            Box::new(|c: &mut RewardConfig| c.temperature = f64::NAN)
                as Box<dyn Fn(&mut RewardConfig)>,
        ),
        (
            "temperature",
            Box::new(|c: &mut RewardConfig| c.temperature = f64::INFINITY),
        ),
        (
            "temperature",
            Box::new(|c: &mut RewardConfig| c.temperature = -1.0),
        ),
        (
            "threshold",
            Box::new(|c: &mut RewardConfig| c.threshold = f64::NAN),
        ),
        (
            "threshold",
            Box::new(|c: &mut RewardConfig| c.threshold = 1.5),
        ),
        ("no_id", Box::new(|c: &mut RewardConfig| c.no_id = c.yes_id)),
        (
            "yes_id",
            Box::new(|c: &mut RewardConfig| c.yes_id = vocab as u32),
        ),
    ] {
        let mut c = cfg.clone();
        f(&mut c);
        let e = c.check(p, vocab, 16).unwrap_err().to_string();
        assert!(
            e.contains(field) && e.contains("x/reward.json"),
            "{field}: {e}"
        );
    }

    // Calibrating on a data set without a `val` split: a clear error, no panic.
    let noval = write_data(&tmp.path().join("noval"), 2, 1, false);
    assert!(noval.indices(Split::Val).is_empty());
    let before = std::fs::read(ckpt.join("reward.json")).unwrap();
    expect_err(calibrate(&ckpt, &noval, 0.97, 64), &["val"], "no val split");
    assert_eq!(
        std::fs::read(ckpt.join("reward.json")).unwrap(),
        before,
        "a failed calibration leaves reward.json alone"
    );
    // A folder that is neither a checkpoint nor a run.
    let msg = load_err(&tmp.path().join("nothing_here"));
    assert!(msg.contains("nothing_here"), "{msg}");
}

#[test]
fn trainer_refuses_bad_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 2, 1, true);
    let mut c = config(1);
    c.batch_size = 0;
    expect_err(ClassifierTrainer::new(c, &data), &["batch_size"], "batch 0");
    let mut c = config(1);
    c.model.patch_size = 5;
    expect_err(ClassifierTrainer::new(c, &data), &["patch_size"], "patch 5");
    let mut c = config(1);
    c.model.max_prompt_tokens = 4;
    expect_err(
        ClassifierTrainer::new(c, &data),
        &["max_prompt_tokens"],
        "prompt limit 4",
    );
    // Resuming with another architecture is refused, naming the difference.
    let run = tmp.path().join("run");
    let t = ClassifierTrainer::new(config(1), &data).unwrap();
    t.trainer.save(&run, 1, &data, |_| Ok(())).unwrap();
    let mut c = config(1);
    c.model.hidden = 64;
    let mut t = ClassifierTrainer::new(c, &data).unwrap();
    expect_err(t.trainer.resume(&run), &["architecture"], "other hidden");
}
