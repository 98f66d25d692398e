//! The CNN baseline end to end at library level, on the same kind of tiny synthetic data set as
//! the VLM's tests (positives bright, negatives dark): it learns the signal, calibrates, resumes
//! bit-identically and refuses a checkpoint with a file missing, naming it.

use std::path::{Path, PathBuf};

use rudder_reward::baseline::{
    calibrate_cnn, is_cnn_checkpoint, CnnCalibration, CnnClassifier, CnnSpec, CnnTrainer,
    TrainConfigCnn, CNN_FILES,
};
use rudder_reward::calibration::sigmoid;
use rudder_reward::classifier::Query;
use rudder_reward::dataset::{DatasetWriter, FrameKind, SampleMeta, Source, Split, SuccessDataset};
use rudder_robot::ImageRgb8;

const S: usize = 16;
const INSTRUCTIONS: [&str; 2] = ["put the bowl on the plate", "open the top drawer"];

fn spec() -> CnnSpec {
    CnnSpec {
        image_size: 16,
        channels: vec![8, 16],
        embed_dim: 8,
        hidden: 16,
        max_vocab: 512,
    }
}

fn config(steps: u64) -> TrainConfigCnn {
    TrainConfigCnn {
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

/// Per split and instruction `n` positives and `n` negatives.
fn write_data(dir: &Path, n_train: usize, n_eval: usize) -> SuccessDataset {
    let mut w = DatasetWriter::create(dir, S, 3).unwrap();
    let mut seed = 0u64;
    for (split, n) in [
        (Split::Train, n_train),
        (Split::Val, n_eval),
        (Split::Test, n_eval),
    ] {
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

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn learns_calibrates_and_classifies_a_learnable_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 16, 8);
    let steps = 60;
    let mut t = CnnTrainer::new(config(steps), &data).unwrap();
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
    assert!(last < first * 0.5, "loss should fall: {first} -> {last}");

    let out = tmp.path().join("run");
    let mut cal = None;
    let dir = t
        .trainer
        .save(&out, 2, &data, |tmp| {
            cal = Some(calibrate_cnn(tmp, &data, 0.97)?.1);
            Ok(())
        })
        .unwrap();
    assert_eq!(dir, out.join(format!("checkpoint-{steps}")));
    let cal = cal.expect("calibration ran inside the save");
    assert_eq!(cal.samples, 32);
    for f in CNN_FILES
        .iter()
        .chain(&["training.json", "trainer_state.json"])
    {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    assert!(!dir.join("config.json").exists(), "no config.json");
    assert_eq!(read_json(&dir.join("training.json"))["arch"], "cnn");
    let cj = read_json(&dir.join("calibration.json"));
    assert_eq!(cj["calibrated"], true, "{cj}");
    assert_eq!(cj["temperature"].as_f64().unwrap(), cal.temperature);
    assert_eq!(cj["threshold"].as_f64().unwrap(), cal.threshold);

    assert!(is_cnn_checkpoint(&out));
    assert!(is_cnn_checkpoint(&dir));
    assert!(!is_cnn_checkpoint(tmp.path()));
    let clf = CnnClassifier::load(&out).unwrap();
    assert_eq!(clf.dir, dir);
    assert!(clf.calibration.calibrated);
    assert_eq!(clf.calibration.temperature, cal.temperature);
    assert_eq!(clf.calibration.threshold, cal.threshold);

    let idx = data.indices(Split::Test);
    let m = clf.margins(&data, &idx, 7).unwrap();
    assert_eq!(m.len(), idx.len());
    // The loaded model says what the trained one said.
    let live = t.trainer.family.margins(&data, &idx, 64).unwrap();
    for (a, b) in m.iter().zip(&live) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
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
        "cnn: loss {first:.4} -> {last:.4}; T {:.3}, threshold {:.2}; test accuracy \
         {cal_acc:.3} calibrated, {raw_acc:.3} raw",
        cal.temperature, cal.threshold
    );
    assert!(cal_acc >= 0.9, "calibrated test accuracy {cal_acc}");
    assert!(raw_acc >= 0.9, "raw-rule test accuracy {raw_acc}");
    for z in m.iter().copied() {
        let v = clf.verdict(z);
        assert_eq!(v.p_raw, sigmoid(z));
        assert_eq!(v.p_success, sigmoid(z / cal.temperature));
        assert_eq!(v.success, v.p_success > cal.threshold);
    }

    // Queries (any frame size) agree with the data set path; bad ones are named.
    let img = |d: &[u8]| ImageRgb8 {
        width: S as u32,
        height: S as u32,
        data: d.to_vec(),
    };
    let (a, w) = data.frames(idx[0]);
    let (a, w) = (img(a), img(w));
    let q = [Query {
        frames: &[&a, &w],
        instruction: &data.samples[idx[0]].instruction,
    }];
    let one = clf.margins_queries(&q).unwrap();
    assert!((one[0] - m[0]).abs() < 1e-4 * (1.0 + m[0].abs()));
    let bad = [Query {
        frames: &[&a],
        instruction: INSTRUCTIONS[0],
    }];
    assert!(clf
        .margins_queries(&bad)
        .unwrap_err()
        .to_string()
        .contains("frames"));
    let blank = [Query {
        frames: &[&a, &w],
        instruction: "  ",
    }];
    assert!(clf
        .margins_queries(&blank)
        .unwrap_err()
        .to_string()
        .contains("instruction"));
    assert!(clf.margins_queries(&[]).unwrap().is_empty());
}

fn model_bytes(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoint-{step}/model.safetensors"))).unwrap()
}

#[test]
fn resumed_run_is_bit_identical_to_a_straight_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 8, 2);
    let n = 10u64;

    let straight = tmp.path().join("straight");
    let mut t = CnnTrainer::new(config(n), &data).unwrap();
    let input = t.input(&data);
    let mut losses = Vec::new();
    for _ in 0..n {
        losses.push(t.trainer.step(&input).unwrap().loss);
    }
    t.trainer.save(&straight, 2, &data, |_| Ok(())).unwrap();

    let split = tmp.path().join("split");
    let mut t = CnnTrainer::new(config(n), &data).unwrap();
    let input = t.input(&data);
    let mut resumed = Vec::new();
    for _ in 0..n / 2 {
        resumed.push(t.trainer.step(&input).unwrap().loss);
    }
    t.trainer.save(&split, 2, &data, |_| Ok(())).unwrap();
    drop(t);
    let mut t = CnnTrainer::new(config(n), &data).unwrap();
    let from = t.trainer.resume(&split).unwrap().expect("a checkpoint");
    assert_eq!(from, split.join(format!("checkpoint-{}", n / 2)));
    assert_eq!(t.trainer.step_count(), n / 2);
    let input = t.input(&data);
    for _ in n / 2..n {
        resumed.push(t.trainer.step(&input).unwrap().loss);
    }
    t.trainer.save(&split, 2, &data, |_| Ok(())).unwrap();

    assert_eq!(losses, resumed, "per-step losses");
    let a = model_bytes(&straight, n);
    assert!(a == model_bytes(&split, n), "model.safetensors differs");
    assert!(model_bytes(&split, n / 2) != a, "the weights moved");
    let cj: CnnCalibration = serde_json::from_value(read_json(
        &split.join(format!("checkpoint-{n}/calibration.json")),
    ))
    .unwrap();
    assert_eq!(cj, CnnCalibration::default());

    // Another architecture does not resume this run.
    let mut other = config(n);
    other.model.channels = vec![8];
    let mut t = CnnTrainer::new(other, &data).unwrap();
    let e = t.trainer.resume(&split).unwrap_err().to_string();
    assert!(e.contains("architecture"), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match CnnClassifier::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_or_bad_files_are_refused_with_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 2, 1);
    let t = CnnTrainer::new(config(1), &data).unwrap();
    let ckpt: PathBuf = t
        .trainer
        .save(&tmp.path().join("run"), 1, &data, |_| Ok(()))
        .unwrap();
    let clf = CnnClassifier::load(&ckpt).unwrap();
    assert!(!clf.calibration.calibrated);

    for name in CNN_FILES {
        let d = tmp.path().join(format!("without_{name}"));
        copy_dir(&ckpt, &d);
        std::fs::remove_file(d.join(name)).unwrap();
        let e = load_err(&d);
        assert!(e.contains(name) && e.contains("missing"), "{name}: {e}");
    }
    // Not a checkpoint at all, and a VLM-looking folder.
    let e = load_err(&tmp.path().join("data"));
    assert!(e.contains("cnn.json"), "{e}");

    // Bad contents are named by file and field.
    let d = tmp.path().join("bad_cal");
    copy_dir(&ckpt, &d);
    std::fs::write(
        d.join("calibration.json"),
        r#"{"format_version":1,"temperature":0.0,"threshold":0.5,"calibrated":true}"#,
    )
    .unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("calibration.json") && e.contains("temperature"),
        "{e}"
    );

    let d = tmp.path().join("bad_spec");
    copy_dir(&ckpt, &d);
    let mut spec = read_json(&d.join("cnn.json"));
    spec["channels"] = serde_json::json!([8, 32]);
    std::fs::write(d.join("cnn.json"), spec.to_string()).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors"), "{e}");

    let d = tmp.path().join("bad_weights");
    copy_dir(&ckpt, &d);
    std::fs::write(d.join("model.safetensors"), b"nope").unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors"), "{e}");

    // calibrate_cnn needs a `val` split.
    let d = tmp.path().join("data_noval");
    let mut w = DatasetWriter::create(&d, S, 1).unwrap();
    for k in 0..2 {
        w.push(
            SampleMeta {
                task: "t".into(),
                suite: "s".into(),
                instruction: INSTRUCTIONS[0].into(),
                episode: format!("e{k}"),
                init: 0,
                step: k,
                label: k == 0,
                kind: if k == 0 {
                    FrameKind::Success
                } else {
                    FrameKind::Early
                },
                source: Source::Expert,
                split: Split::Train,
            },
            &frame(k == 0, k as u64),
            &frame(k == 0, k as u64 + 9),
        )
        .unwrap();
    }
    w.finish().unwrap();
    let noval = SuccessDataset::load(&d).unwrap();
    let e = match calibrate_cnn(&ckpt, &noval, 0.9) {
        Ok(_) => panic!("calibrated without a val split"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("val"), "{e}");
}
