//! The CNN baseline end to end at library level, on the same kind of tiny synthetic data set as
//! the VLM's tests (positives bright, negatives dark): it learns the signal, calibrates, resumes
//! bit-identically and refuses a checkpoint with a file missing, naming it.

use std::path::Path;

use rudder_reward::baseline::{
    calibrate_cnn, is_cnn_checkpoint, CnnCalibration, CnnClassifier, CnnSpec, CnnTrainer,
    TrainConfigCnn, CNN_FILES,
};
use rudder_reward::calibration::sigmoid;
use rudder_reward::classifier::Query;
use rudder_reward::dataset::Split;
use rudder_robot::ImageRgb8;

mod common;
use common::{
    accuracy, assert_same_after_resume, copy_dir, err_text, first_and_last_loss, read_json,
    straight_and_resumed, write_data, write_data_with, DataSpec, Run, INSTRUCTIONS, S,
};

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

#[test]
fn learns_calibrates_and_classifies_a_learnable_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 16, 8);
    let steps = 60;
    let mut t = CnnTrainer::new(config(steps), &data).unwrap();
    let (first, last) = first_and_last_loss(&mut t, &data, steps);
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
    let cal_acc = accuracy(&m, &data, &idx, |z| clf.verdict(z).success);
    let raw_acc = accuracy(&m, &data, &idx, |z| z > 0.0);
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

#[test]
fn resumed_run_is_bit_identical_to_a_straight_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 8, 2);
    let n = 10u64;
    let (straight, split) = straight_and_resumed(tmp.path(), &data, n, || {
        CnnTrainer::new(config(n), &data).unwrap()
    });
    assert_same_after_resume(&straight, &split, n, "model.safetensors");
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

fn load_err(dir: &Path) -> String {
    err_text(CnnClassifier::load(dir), &dir.display().to_string())
}

#[test]
fn missing_or_bad_files_are_refused_with_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(&tmp.path().join("data"), 2, 1);
    let ckpt = CnnTrainer::new(config(1), &data)
        .unwrap()
        .save(&tmp.path().join("run"), &data);
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
    let noval = write_data_with(
        &tmp.path().join("data_noval"),
        DataSpec {
            with_val: false,
            ..DataSpec::new(1, 0)
        },
    );
    let e = match calibrate_cnn(&ckpt, &noval, 0.9) {
        Ok(_) => panic!("calibrated without a val split"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("val"), "{e}");
}
