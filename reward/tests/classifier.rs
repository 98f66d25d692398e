//! The success classifier end to end at library level, on a tiny synthetic data set whose
//! signal is trivially learnable (positives bright, negatives dark): training reaches high
//! accuracy, calibration is written and obeyed, a resumed run is bit-identical to a straight
//! one, and every bad input is refused with a message that names it.

use std::path::{Path, PathBuf};

use rudder_reward::calibration::sigmoid;
use rudder_reward::classifier::Query;
use rudder_reward::dataset::{Split, SuccessDataset};
use rudder_reward::train::{calibrate, classifier_margins, ClassifierTrainer, TrainConfig};
use rudder_reward::{RewardConfig, SuccessClassifier};
use rudder_robot::{ImageRgb8, Observation};

mod common;
use common::{
    accuracy, assert_same_after_resume, copy_dir, err_text, expect_err, first_and_last_loss,
    read_json, straight_and_resumed, write_data, write_data_with, DataSpec, Run, INSTRUCTIONS, S,
};

fn config(steps: u64) -> TrainConfig {
    common::config(steps, 3e-3)
}

fn image(data: &[u8]) -> ImageRgb8 {
    ImageRgb8 {
        width: S as u32,
        height: S as u32,
        data: data.to_vec(),
    }
}

#[test]
fn trains_calibrates_and_classifies_a_learnable_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 16, 8);
    assert_eq!(data.indices(Split::Train).len(), 64);
    assert_eq!(data.indices(Split::Val).len(), 32);
    assert_eq!(data.indices(Split::Test).len(), 32);

    let steps = 100;
    let mut t = ClassifierTrainer::new(config(steps), &data).unwrap();
    let (first, last) = first_and_last_loss(&mut t, &data, steps);
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
    let cal_acc = accuracy(&m, &data, &idx, |z| clf.verdict(z).success);
    let raw_acc = accuracy(&m, &data, &idx, |z| z > 0.0);
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

#[test]
fn resumed_run_is_bit_identical_to_a_straight_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 8, 2);
    let n = 10u64;
    let (straight, split) = straight_and_resumed(tmp.path(), &data, n, || {
        ClassifierTrainer::new(config(n), &data).unwrap()
    });
    assert_same_after_resume(&straight, &split, n, "model.safetensors");
    let rj = read_json(&split.join(format!("checkpoint-{n}/reward.json")));
    assert_eq!(rj["calibrated"], false);
    assert_eq!(rj["temperature"], 1.0);
}

/// An untrained, uncalibrated checkpoint (cheap) and its data set.
fn untrained(root: &Path) -> (SuccessDataset, PathBuf) {
    let data = write_data(&root.join("data"), 2, 1);
    let dir = ClassifierTrainer::new(config(1), &data)
        .unwrap()
        .save(&root.join("run"), &data);
    (data, dir)
}

fn load_err(dir: &Path) -> String {
    err_text(SuccessClassifier::load(dir), &dir.display().to_string())
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
    let noval = write_data_with(
        &tmp.path().join("noval"),
        DataSpec {
            with_val: false,
            ..DataSpec::new(2, 1)
        },
    );
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
    let data = write_data(&tmp.path().join("data"), 2, 1);
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
