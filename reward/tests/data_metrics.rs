//! The labelled-frame data set (round trip, corruption), the balance, the metrics and the
//! calibration on synthetic data.

use std::collections::BTreeMap;
use std::path::Path;

use rudder_reward::calibration::{
    ece, fit_temperature, pick_threshold, reliability, reliability_png, sigmoid,
};
use rudder_reward::dataset::{
    balance, DatasetError, DatasetWriter, FrameKind, SampleMeta, Source, Split, SuccessDataset,
};
use rudder_reward::metrics::{report, Confusion};
use rudder_tune::train::Rng;

const S: usize = 4;

fn meta(i: usize, kind: FrameKind, split: Split) -> SampleMeta {
    SampleMeta {
        task: format!("task_{}", i % 3),
        suite: if i.is_multiple_of(2) {
            "libero_object"
        } else {
            "libero_goal"
        }
        .into(),
        instruction: format!("do thing {}", i % 3),
        episode: format!("ep_{}", i / 4),
        init: i % 7,
        step: i,
        label: kind == FrameKind::Success,
        kind,
        source: [Source::Expert, Source::Perturbed, Source::Vla][i % 3],
        split,
    }
}

fn frame(i: usize, cam: u8) -> Vec<u8> {
    (0..S * S * 3)
        .map(|k| (i.wrapping_mul(31) ^ k.wrapping_mul(7) ^ cam as usize) as u8)
        .collect()
}

fn kind_of(i: usize) -> FrameKind {
    FrameKind::ALL[i % FrameKind::ALL.len()]
}

fn split_of(i: usize) -> Split {
    Split::ALL[(i / 5) % Split::ALL.len()]
}

/// Writes `n` samples with `rows` rows per shard; returns what was pushed.
fn write(dir: &Path, n: usize, rows: usize) -> Vec<SampleMeta> {
    let mut w = DatasetWriter::create(dir, S, 42)
        .unwrap()
        .with_shard_rows(rows);
    let mut metas = Vec::new();
    for i in 0..n {
        let m = meta(i, kind_of(i), split_of(i));
        w.push(m.clone(), &frame(i, 0), &frame(i, 1)).unwrap();
        metas.push(m);
    }
    let summary = w.finish().unwrap();
    assert_eq!(summary.samples, n);
    assert_eq!(summary.shards, n.div_ceil(rows.min(1024)));
    metas
}

#[test]
fn round_trip_is_bit_exact_over_several_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let metas = write(tmp.path(), 23, 5);
    let d = SuccessDataset::load(tmp.path()).unwrap();
    assert_eq!(d.image_size, S);
    assert_eq!(d.samples, metas);
    assert_eq!(d.meta.shards.len(), 5);
    assert_eq!(d.meta.seed, 42);
    for i in 0..metas.len() {
        let (a, w) = d.frames(i);
        assert_eq!(a, frame(i, 0).as_slice(), "agentview {i}");
        assert_eq!(w, frame(i, 1).as_slice(), "wrist {i}");
    }
    let train = d.indices(Split::Train);
    assert!(train.iter().all(|&i| d.samples[i].split == Split::Train));
    assert_eq!(
        train.len(),
        metas.iter().filter(|m| m.split == Split::Train).count()
    );
    assert_eq!(d.tasks(Split::Train), vec!["task_0", "task_1", "task_2"]);
    let total: usize = d
        .meta
        .counts
        .values()
        .map(|c| c.positive + c.negative)
        .sum();
    assert_eq!(total, 23);
}

#[test]
fn full_shards_hold_1024_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 1030;
    write(tmp.path(), n, usize::MAX);
    let d = SuccessDataset::load(tmp.path()).unwrap();
    assert_eq!(d.meta.shards.len(), 2);
    assert_eq!(d.frames(1029).0, frame(1029, 0).as_slice());
}

#[test]
fn writer_refuses_existing_data_set_and_bad_samples() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), 3, 2);
    let e = DatasetWriter::create(tmp.path(), S, 1).err().unwrap();
    assert!(e.to_string().contains("meta.json"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(tmp.path(), S, 1).unwrap();
    let e = w
        .push(
            meta(0, FrameKind::Success, Split::Train),
            &[0; 5],
            &frame(0, 1),
        )
        .unwrap_err();
    assert!(e.to_string().contains("agentview"), "{e}");
    let mut bad = meta(1, FrameKind::Early, Split::Train);
    bad.label = true;
    let e = w.push(bad, &frame(1, 0), &frame(1, 1)).unwrap_err();
    assert!(matches!(e, DatasetError::Sample { .. }), "{e}");
    assert!(e.to_string().contains("label"), "{e}");
    assert!(w.finish().is_err(), "nothing valid was pushed");
}

/// Writes a good data set, lets `corrupt` damage it, and returns the loader's message.
fn corrupted(corrupt: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), 12, 5);
    corrupt(tmp.path());
    let e = SuccessDataset::load(tmp.path()).expect_err("load must fail");
    e.to_string()
}

fn edit_meta(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("meta.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn edit_samples(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let p = dir.join("samples.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    f(&mut lines);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
}

fn write_shard(path: &Path, tensors: &[(&str, Vec<usize>, safetensors::Dtype, Vec<u8>)]) {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, dt, data)| {
            (
                *n,
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A name, what damages the data set, what the loader's message must contain.
type Corruption = (
    &'static str,
    Box<dyn FnOnce(&Path)>,
    &'static [&'static str],
);

#[test]
fn loader_catches_every_corruption_and_names_the_file() {
    let u8t = safetensors::Dtype::U8;
    let cases: Vec<Corruption> = vec![
        (
            "missing meta",
            Box::new(|d| std::fs::remove_file(d.join("meta.json")).unwrap()),
            &["meta.json", "missing"],
        ),
        (
            "meta not JSON",
            Box::new(|d| std::fs::write(d.join("meta.json"), "{oops").unwrap()),
            &["meta.json", "JSON"],
        ),
        (
            "wrong version",
            Box::new(|d| edit_meta(d, |v| v["format_version"] = 2.into())),
            &["meta.json", "format_version"],
        ),
        (
            "meta field missing",
            Box::new(|d| {
                edit_meta(d, |v| {
                    v.as_object_mut().unwrap().remove("image_size");
                })
            }),
            &["meta.json", "image_size"],
        ),
        (
            "wrong cameras",
            Box::new(|d| edit_meta(d, |v| v["cameras"] = serde_json::json!(["wrist"]))),
            &["meta.json", "cameras"],
        ),
        (
            "wrong counts",
            Box::new(|d| edit_meta(d, |v| v["counts"]["train"]["positive"] = 99.into())),
            &["meta.json", "counts"],
        ),
        (
            "sample count in meta",
            Box::new(|d| edit_meta(d, |v| v["samples"] = 11.into())),
            &["samples.jsonl", "11"],
        ),
        (
            "bad jsonl line",
            Box::new(|d| edit_samples(d, |l| l[3] = "{not json".into())),
            &["samples.jsonl", "line 4"],
        ),
        (
            "bad jsonl field",
            Box::new(|d| edit_samples(d, |l| l[6] = l[6].replace("\"val\"", "\"valid\""))),
            &["samples.jsonl", "line 7", "valid"],
        ),
        (
            "bad kind",
            Box::new(|d| edit_samples(d, |l| l[0] = l[0].replace("\"success\"", "\"sucess\""))),
            &["samples.jsonl", "line 1", "sucess"],
        ),
        (
            "label disagrees with kind",
            Box::new(|d| {
                edit_samples(d, |l| {
                    l[1] = l[1].replace("\"label\":false", "\"label\":true")
                })
            }),
            &["samples.jsonl", "line 2", "label"],
        ),
        (
            "empty task",
            Box::new(|d| edit_samples(d, |l| l[2] = l[2].replace("\"task_2\"", "\"\""))),
            &["samples.jsonl", "line 3", "task"],
        ),
        (
            "line missing",
            Box::new(|d| {
                edit_samples(d, |l| {
                    l.pop();
                })
            }),
            &["samples.jsonl", "11 samples"],
        ),
        (
            "missing shard",
            Box::new(|d| std::fs::remove_file(d.join("shard_0001.safetensors")).unwrap()),
            &["shard_0001.safetensors"],
        ),
        (
            "shard not safetensors",
            Box::new(|d| std::fs::write(d.join("shard_0002.safetensors"), b"garbage").unwrap()),
            &["shard_0002.safetensors", "safetensors"],
        ),
        (
            "shard with wrong shape",
            Box::new(move |d| {
                write_shard(
                    &d.join("shard_0000.safetensors"),
                    &[
                        (
                            "agentview_rgb",
                            vec![5, S, S + 1, 3],
                            u8t,
                            vec![0; 5 * S * (S + 1) * 3],
                        ),
                        ("wrist_rgb", vec![5, S, S, 3], u8t, vec![0; 5 * S * S * 3]),
                    ],
                )
            }),
            &["shard_0000.safetensors", "agentview_rgb", "shape"],
        ),
        (
            "shard with wrong dtype",
            Box::new(move |d| {
                write_shard(
                    &d.join("shard_0000.safetensors"),
                    &[
                        (
                            "agentview_rgb",
                            vec![5, S, S, 3],
                            u8t,
                            vec![0; 5 * S * S * 3],
                        ),
                        (
                            "wrist_rgb",
                            vec![5, S, S, 3],
                            safetensors::Dtype::I8,
                            vec![0; 5 * S * S * 3],
                        ),
                    ],
                )
            }),
            &["shard_0000.safetensors", "wrist_rgb", "dtype"],
        ),
        (
            "shard missing a camera",
            Box::new(move |d| {
                write_shard(
                    &d.join("shard_0001.safetensors"),
                    &[(
                        "agentview_rgb",
                        vec![5, S, S, 3],
                        u8t,
                        vec![0; 5 * S * S * 3],
                    )],
                )
            }),
            &["shard_0001.safetensors", "wrist_rgb", "missing"],
        ),
        (
            "cameras disagree on rows",
            Box::new(move |d| {
                write_shard(
                    &d.join("shard_0001.safetensors"),
                    &[
                        (
                            "agentview_rgb",
                            vec![5, S, S, 3],
                            u8t,
                            vec![0; 5 * S * S * 3],
                        ),
                        ("wrist_rgb", vec![4, S, S, 3], u8t, vec![0; 4 * S * S * 3]),
                    ],
                )
            }),
            &["shard_0001.safetensors", "wrist_rgb", "rows"],
        ),
        (
            "shard short of rows",
            Box::new(move |d| {
                write_shard(
                    &d.join("shard_0002.safetensors"),
                    &[
                        ("agentview_rgb", vec![1, S, S, 3], u8t, vec![0; S * S * 3]),
                        ("wrist_rgb", vec![1, S, S, 3], u8t, vec![0; S * S * 3]),
                    ],
                )
            }),
            &["samples.jsonl", "11 rows"],
        ),
        (
            "shard with too many rows",
            Box::new(move |d| {
                write_shard(
                    &d.join("shard_0002.safetensors"),
                    &[
                        (
                            "agentview_rgb",
                            vec![3, S, S, 3],
                            u8t,
                            vec![0; 3 * S * S * 3],
                        ),
                        ("wrist_rgb", vec![3, S, S, 3], u8t, vec![0; 3 * S * S * 3]),
                    ],
                )
            }),
            &["shard_0002.safetensors", "rows"],
        ),
        (
            "shard list renamed",
            Box::new(|d| edit_meta(d, |v| v["shards"][1] = "../x.safetensors".into())),
            &["meta.json", "shards"],
        ),
    ];
    for (name, corrupt, needles) in cases {
        let msg = corrupted(corrupt);
        for n in needles {
            assert!(msg.contains(n), "{name}: `{msg}` lacks `{n}`");
        }
    }
}

fn candidates() -> Vec<SampleMeta> {
    // Per split: 40 positives, 100 negatives of which 30 hard (spread unevenly over 3 kinds).
    let mut v = Vec::new();
    let mut i = 0;
    for split in [Split::Train, Split::Val, Split::Test] {
        let mut push = |kind: FrameKind, n: usize| {
            for _ in 0..n {
                v.push(meta(i, kind, split));
                i += 1;
            }
        };
        push(FrameKind::Success, 40);
        push(FrameKind::Early, 40);
        push(FrameKind::Failed, 30);
        push(FrameKind::HoldAbove, 20);
        push(FrameKind::WrongObject, 2);
        push(FrameKind::DrawerHalf, 8);
    }
    // A split with more positives than negatives.
    for _ in 0..12 {
        v.push(meta(i, FrameKind::Success, Split::HeldoutTask));
        i += 1;
    }
    for _ in 0..5 {
        v.push(meta(i, FrameKind::DropBeside, Split::HeldoutTask));
        i += 1;
    }
    v
}

#[test]
fn balance_gives_half_positives_per_split_and_keeps_hard_negatives() {
    let c = candidates();
    let keep = balance(&c, 0.5, 9);
    assert_eq!(keep, balance(&c, 0.5, 9), "deterministic");
    assert!(keep.windows(2).all(|w| w[0] < w[1]));
    for split in Split::ALL {
        let k: Vec<&SampleMeta> = keep
            .iter()
            .map(|&i| &c[i])
            .filter(|m| m.split == split)
            .collect();
        let pos = k.iter().filter(|m| m.label).count();
        assert_eq!(2 * pos, k.len(), "{split:?}");
        if split == Split::HeldoutTask {
            assert_eq!(pos, 5);
            continue;
        }
        assert_eq!(pos, 40, "every positive kept");
        let mut per_kind: BTreeMap<FrameKind, usize> = BTreeMap::new();
        for m in k.iter().filter(|m| !m.label) {
            *per_kind.entry(m.kind).or_default() += 1;
        }
        // 20 hard ones first, by round robin: the 2 wrong-object and 8 drawer ones, 10 held above.
        let hard: usize = per_kind
            .iter()
            .filter(|(k, _)| k.is_hard_negative())
            .map(|(_, n)| n)
            .sum();
        assert!(hard >= 20, "{split:?}: {per_kind:?}");
        assert_eq!(per_kind[&FrameKind::WrongObject], 2);
        assert!(per_kind[&FrameKind::DrawerHalf] >= 8, "{per_kind:?}");
        assert!(per_kind[&FrameKind::HoldAbove] >= 10, "{per_kind:?}");
    }
    // All hard negatives are kept when the share asks for more than there are.
    let keep = balance(&c, 1.0, 3);
    let hard_kept = keep
        .iter()
        .filter(|&&i| c[i].kind.is_hard_negative() && c[i].split == Split::Train)
        .count();
    assert_eq!(hard_kept, 30);
    // Another seed draws other ordinary negatives.
    assert_ne!(balance(&c, 0.5, 9), balance(&c, 0.5, 10));
}

#[test]
fn confusion_on_a_hand_example() {
    // truth, said
    let pairs = [
        (true, true),
        (true, true),
        (true, true),
        (true, false),
        (false, true),
        (false, false),
        (false, false),
        (false, false),
        (false, false),
        (false, false),
    ];
    let mut c = Confusion::default();
    for (t, s) in pairs {
        c.add(t, s);
    }
    assert_eq!(
        c,
        Confusion {
            tp: 3,
            fp: 1,
            tn: 5,
            fn_: 1
        }
    );
    assert_eq!(c.n(), 10);
    assert!((c.accuracy() - 0.8).abs() < 1e-12);
    assert!((c.precision() - 0.75).abs() < 1e-12);
    assert!((c.recall() - 0.75).abs() < 1e-12);
    assert!((c.f1() - 0.75).abs() < 1e-12);
    assert!((c.false_positive_rate() - 1.0 / 6.0).abs() < 1e-12);
}

#[test]
fn report_groups_and_serialises_without_nan() {
    let metas = [
        meta(0, FrameKind::Success, Split::Test),
        meta(1, FrameKind::Success, Split::Test),
        meta(2, FrameKind::HoldAbove, Split::Test),
        meta(3, FrameKind::HoldAbove, Split::Test),
        meta(4, FrameKind::Early, Split::Test),
        meta(5, FrameKind::Success, Split::HeldoutTask),
    ];
    let refs: Vec<&SampleMeta> = metas.iter().collect();
    let p_cal = [0.9, 0.4, 0.8, 0.2, 0.1, 0.95];
    let p_raw = [0.99, 0.3, 0.97, 0.1, 0.01, 0.999];
    let r = report(&refs, &p_raw, &p_cal, 0.5, 1.7);
    assert_eq!(r.n, 6);
    assert_eq!(r.positives, 3);
    assert_eq!(
        r.overall.confusion,
        Confusion {
            tp: 2,
            fp: 1,
            tn: 2,
            fn_: 1
        }
    );
    assert_eq!(r.per_kind_false_positive_rate["hold_above"], (1, 2, 0.5));
    assert_eq!(r.per_kind_false_positive_rate["early"], (0, 1, 0.0));
    assert!(!r.per_kind_false_positive_rate.contains_key("success"));
    assert_eq!(r.per_split["heldout_task"].n, 1);
    assert_eq!(r.per_task.values().map(|s| s.n).sum::<usize>(), 6);
    assert_eq!(r.per_suite.len(), 2);
    let (lo, hi) = r.overall.accuracy_ci95;
    assert!(lo < 4.0 / 6.0 && 4.0 / 6.0 < hi);
    assert_eq!(r.temperature, 1.7);
    let j = serde_json::to_string(&r).unwrap();
    assert!(!j.contains("null") && !j.contains("NaN"), "{j}");
    assert!(j.contains("\"fn\":1"));
}

#[test]
fn temperature_fit_recovers_the_true_temperature() {
    for (t_true, seed) in [(2.5, 1u64), (0.4, 2), (6.0, 3)] {
        let mut rng = Rng::new(seed);
        let n = 40_000;
        let z: Vec<f64> = rng.gaussian(n).iter().map(|&g| 2.0 * g as f64).collect();
        let labels: Vec<bool> = z.iter().map(|&z| rng.next_f64() < sigmoid(z)).collect();
        let margins: Vec<f64> = z.iter().map(|&z| z * t_true).collect();
        let t = fit_temperature(&margins, &labels);
        assert!(
            (t - t_true).abs() / t_true < 0.05,
            "T_true {t_true}: fitted {t}"
        );
        assert_eq!(t, fit_temperature(&margins, &labels), "deterministic");
    }
}

#[test]
fn ece_of_calibrated_and_overconfident_sets() {
    let mut rng = Rng::new(5);
    let n = 50_000;
    let p: Vec<f64> = (0..n).map(|_| rng.next_f64()).collect();
    let y: Vec<bool> = p.iter().map(|&p| rng.next_f64() < p).collect();
    let e = ece(&p, &y, 10);
    assert!(e < 0.02, "calibrated ECE {e}");
    let over: Vec<f64> = p
        .iter()
        .map(|&p| sigmoid(4.0 * (p / (1.0 - p)).ln()))
        .collect();
    let e = ece(&over, &y, 10);
    assert!(e > 0.1, "overconfident ECE {e}");
    let bins = reliability(&over, &y, 10);
    assert_eq!(bins.len(), 10);
    assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), n);
}

#[test]
fn threshold_on_a_hand_example() {
    // Sorted by p: the positives sit high, two negatives at 0.55 and 0.72.
    let p = [0.52, 0.55, 0.6, 0.72, 0.8, 0.9, 0.95, 0.3];
    let y = [true, false, true, false, true, true, true, false];
    // t = 0.50: 5 tp, 2 fp -> 0.714; t = 0.53..0.55: 4 tp, 2 fp -> 0.667; t = 0.56..0.60:
    // 4 tp, 1 fp -> 0.8; t = 0.61..0.72: 3 tp, 1 fp -> 0.75; t = 0.73..0.80: 3 tp, 0 fp -> 1.
    assert_eq!(pick_threshold(&p, &y, 0.7), 0.5);
    assert_eq!(pick_threshold(&p, &y, 0.8), 0.56);
    assert_eq!(pick_threshold(&p, &y, 0.9), 0.73);
    // Unreachable: the best precision (ties: lowest t).
    let p = [0.6, 0.6, 0.9, 0.9];
    let y = [true, false, true, false];
    assert_eq!(pick_threshold(&p, &y, 0.99), 0.5);
}

#[test]
fn reliability_png_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(8);
    let p: Vec<f64> = (0..2000).map(|_| rng.next_f64()).collect();
    let y: Vec<bool> = p.iter().map(|&p| rng.next_f64() < p).collect();
    let over: Vec<f64> = p
        .iter()
        .map(|&p| sigmoid(3.0 * (p / (1.0 - p)).ln()))
        .collect();
    let path = tmp.path().join("sub/rel.png");
    reliability_png(&path, &reliability(&over, &y, 10), &reliability(&p, &y, 10)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let img = image::load_from_memory(&bytes).unwrap();
    assert!(img.width() > img.height());
}
