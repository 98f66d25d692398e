//! VlaPolicy on the tiny pi0 fixture: shapes, determinism, masking, errors, robot::Policy.

use std::path::PathBuf;

use rudder_policy::VlaPolicy;
use rudder_robot::{ActionSpace, ImageRgb8, Observation, Policy};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf-tiny/pi0")
}

/// The fixture's config and weights in a fresh temp folder named `{name}-{pid}`.
fn fixture_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    dir
}

fn image(h: u32, w: u32, seed: u8) -> ImageRgb8 {
    let data = (0..h * w * 3)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    ImageRgb8::new("test", w, h, data).unwrap()
}

#[test]
fn chunk_shape_determinism_and_inputs_matter() {
    let p = VlaPolicy::load(&fixture()).unwrap();
    assert_eq!(
        (p.action_horizon(), p.action_dim(), p.state_dim()),
        (4, 6, 8)
    );
    assert_eq!(p.image_size(), 32);
    let cams = p.cameras().to_vec();
    let imgs = vec![
        (cams[0].clone(), image(48, 64, 1)),
        (cams[1].clone(), image(32, 32, 2)),
    ];
    let state = [0.1, -0.2, 0.3, 0.0, 0.5, 0.6, 0.02, -0.02];
    let a = p.infer_raw(&imgs, &state, "pick up the bowl", 0).unwrap();
    assert_eq!(a.len(), 4);
    assert!(a
        .iter()
        .all(|r| r.len() == 6 && r.iter().all(|v| v.is_finite())));
    assert_eq!(
        a,
        p.infer_raw(&imgs, &state, "pick up the bowl", 0).unwrap()
    );
    assert_ne!(
        a,
        p.infer_raw(&imgs, &state, "pick up the bowl", 1).unwrap()
    );
    assert_ne!(a, p.infer_raw(&imgs, &state, "open the drawer", 0).unwrap());
    assert_ne!(
        a,
        p.infer_raw(&imgs, &[0.0; 8], "pick up the bowl", 0)
            .unwrap()
    );
    // A masked wrist camera still gives a chunk, different from the two-camera one.
    let one = p
        .infer_raw(&imgs[..1], &state, "pick up the bowl", 0)
        .unwrap();
    assert_ne!(a, one);
    // Short and long states are padded / truncated.
    p.infer_raw(&imgs, &[0.1, 0.2], "x", 0).unwrap();
    p.infer_raw(&imgs, &[0.1; 20], "x", 0).unwrap();
}

#[test]
fn bad_inputs_name_the_input() {
    let p = VlaPolicy::load(&fixture()).unwrap();
    let cams = p.cameras().to_vec();
    let e = p
        .infer_raw(&[("nope".into(), image(8, 8, 0))], &[0.0; 8], "x", 0)
        .unwrap_err();
    assert!(e.to_string().contains("`nope`"), "{e}");
    let e = p.infer_raw(&[], &[0.0; 8], "x", 0).unwrap_err();
    assert!(e.to_string().contains("`images`"), "{e}");
    let imgs = vec![(cams[0].clone(), image(8, 8, 0))];
    let e = p.infer_raw(&imgs, &[f64::NAN], "x", 0).unwrap_err();
    assert!(e.to_string().contains("`state`"), "{e}");
    let bad = ImageRgb8 {
        width: 4,
        height: 4,
        data: vec![0; 5],
    };
    let e = p
        .infer_raw(&[(cams[0].clone(), bad)], &[0.0; 8], "x", 0)
        .unwrap_err();
    assert!(
        e.to_string().contains(&cams[0]) && e.to_string().contains("48 bytes"),
        "{e}"
    );
}

#[test]
fn normalization_and_robot_policy() {
    let dir = fixture_copy("rudder-flow");
    let imgs = |p: &VlaPolicy| vec![(p.cameras()[0].clone(), image(32, 32, 3))];
    let plain = VlaPolicy::load(&dir).unwrap();
    let base = plain.infer_raw(&imgs(&plain), &[0.0; 8], "go", 0).unwrap();
    std::fs::write(
        dir.join("normalization.json"),
        r#"{"actions": {"mean": [10, 0, 0, 0, 0, 0], "std": [1, 2, 1, 1, 1, 1]}}"#,
    )
    .unwrap();
    let norm = VlaPolicy::load(&dir).unwrap();
    let scaled = norm.infer_raw(&imgs(&norm), &[0.0; 8], "go", 0).unwrap();
    for (b, s) in base.iter().zip(&scaled) {
        assert!((s[0] - (b[0] + 10.0)).abs() < 1e-4 && (s[1] - 2.0 * b[1]).abs() < 1e-4);
        assert!((s[2] - b[2]).abs() < 1e-6);
    }
    std::fs::write(
        dir.join("policy.json"),
        r#"{"cameras": ["agentview", "wrist"], "dt": 0.1}"#,
    )
    .unwrap();
    let mut p = VlaPolicy::load(&dir).unwrap();
    let mut obs = Observation {
        state: vec![0.0; 8],
        instruction: "go".into(),
        timestamp: 2.0,
        ..Default::default()
    };
    obs.images.insert("agentview".into(), image(16, 16, 5));
    let chunk = p.infer(&obs).unwrap();
    assert_eq!(chunk.space, ActionSpace::JointPositions { dof: 6 });
    assert_eq!(
        (chunk.actions.len(), chunk.dt, chunk.start_time),
        (4, 0.1, 2.0)
    );
    std::fs::write(dir.join("policy.json"), r#"{"action_space": "eef_delta7"}"#).unwrap();
    let e = VlaPolicy::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("action_space") && e.contains("eef_delta7"),
        "{e}"
    );
    std::fs::remove_file(dir.join("policy.json")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let e = VlaPolicy::load(&dir).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    // A tokenizer whose ids reach the image token is refused; one below it is used.
    let bpe = rudder_policy::tokenizer::train_bpe(["pick up the bowl slowly"], 400).unwrap();
    assert!(bpe.vocab_size() > 100 && bpe.vocab_size() < 511);
    bpe.save(&dir.join("tokenizer.json")).unwrap();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let low = config.replace("\"image_token_index\": 511", "\"image_token_index\": 100");
    assert_ne!(low, config);
    std::fs::write(dir.join("config.json"), low).unwrap();
    let e = VlaPolicy::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("image token 100"),
        "{e}"
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let p = VlaPolicy::load(&dir).unwrap();
    assert!(p.tokenizer().is_bpe());
    assert!(p.tokenizer().single_token("slowly"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Real-time chunking's inpainting: a new chunk that overlaps the previous one's unplayed tail
/// starts on that tail (hard: the whole overlap; decay: its first point), and nothing is tied
/// when the chunks do not overlap or after a reset.
#[test]
fn inpainting_ties_each_chunk_to_the_previous_tail() {
    use rudder_policy::Inpainting;
    let dir = fixture_copy("rudder-inpaint");
    std::fs::write(
        dir.join("policy.json"),
        r#"{"cameras": ["agentview", "wrist"], "dt": 0.1, "inpainting": "hard"}"#,
    )
    .unwrap();
    let obs = |t: f64, seed: u8| {
        let mut o = Observation {
            state: vec![0.1 * seed as f64; 8],
            instruction: "go".into(),
            timestamp: t,
            ..Default::default()
        };
        o.images.insert("agentview".into(), image(16, 16, seed));
        o
    };
    let q = |c: &rudder_robot::ActionChunk| -> Vec<Vec<f64>> {
        c.actions
            .iter()
            .map(|a| match a {
                rudder_robot::Action::JointPositions { q, .. } => q.clone(),
                other => panic!("unexpected action {other:?}"),
            })
            .collect()
    };
    let max_diff = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let mut hard = VlaPolicy::load(&dir).unwrap();
    assert_eq!(hard.settings().inpainting, Inpainting::Hard);
    let mut off = VlaPolicy::load(&dir).unwrap();
    off.set_inpainting(Inpainting::Off);
    let mut decay = VlaPolicy::load(&dir).unwrap();
    decay.set_inpainting(Inpainting::Decay);

    // Same first chunk (nothing to tie to yet), then a chunk one point later: 3 of 4 overlap.
    let first = q(&hard.infer(&obs(2.0, 1)).unwrap());
    assert_eq!(first, q(&off.infer(&obs(2.0, 1)).unwrap()));
    assert_eq!(first, q(&decay.infer(&obs(2.0, 1)).unwrap()));
    let h2 = q(&hard.infer(&obs(2.1, 9)).unwrap());
    let o2 = q(&off.infer(&obs(2.1, 9)).unwrap());
    let d2 = q(&decay.infer(&obs(2.1, 9)).unwrap());
    for j in 0..3 {
        assert!(max_diff(&h2[j], &first[j + 1]) < 1e-5, "hard point {j}");
    }
    assert!(max_diff(&d2[0], &first[1]) < 1e-5, "decay point 0");
    // Untied, the new observation gives another chunk, so the ties above are not free.
    assert!(max_diff(&o2[0], &first[1]) > 1e-3);
    assert!(
        max_diff(&h2[3], &o2[3]) > 0.0,
        "the free point sees its neighbours"
    );

    // No overlap (4 points later): the same chunk as untied.
    let h3 = q(&hard.infer(&obs(2.5, 4)).unwrap());
    let o3 = q(&off.infer(&obs(2.5, 4)).unwrap());
    assert_eq!(h3, o3);
    // A reset forgets the last chunk.
    hard.reset();
    let h4 = q(&hard.infer(&obs(2.6, 5)).unwrap());
    let o4 = q(&off.infer(&obs(2.6, 5)).unwrap());
    assert_eq!(h4, o4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inpainting_weights() {
    use rudder_policy::Inpainting;
    assert_eq!(Inpainting::Off.weights(4, 3), vec![0.0; 4]);
    assert_eq!(Inpainting::Hard.weights(4, 3), vec![1.0, 1.0, 1.0, 0.0]);
    assert_eq!(Inpainting::Decay.weights(4, 4), vec![1.0, 0.75, 0.5, 0.25]);
    assert_eq!(Inpainting::Hard.weights(4, 9), vec![1.0; 4]);
    assert_eq!(Inpainting::Decay.weights(3, 0), vec![0.0; 3]);
}
