//! Vocabulary projection, concept clusters, dictionaries and the Eq. 2 intervention on the tiny
//! Hugging Face fixtures (Llama with its own lm_head, Gemma tied, PaliGemma's language model).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rudder_steering::concepts::{build_dictionary, parse_concepts, rank, Concept};
use rudder_steering::dict::Dictionary;
use rudder_steering::intervene::parse_alphas;
use rudder_steering::projection::{layer_scores, project, project_model};
use rudder_steering::{parse_layers, SteerModel, SteeringHandle, Vocab};
use rudder_tune::candle_core::{safetensors, DType, Device, Tensor};
use rudder_tune::hooks::{HookAction, HookPoint, Site, Tower};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hf-tiny")
        .join(name)
}

fn open(dir: &Path) -> SteerModel {
    SteerModel::open(dir, &Device::Cpu).unwrap()
}

fn raw(dir: &Path) -> HashMap<String, Tensor> {
    safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// (down_proj prefix, unembedding name) in a fixture's safetensors.
fn names(model: &str) -> (&'static str, &'static str) {
    match model {
        "llama" => ("model.layers", "lm_head.weight"),
        "gemma" => ("model.layers", "model.embed_tokens.weight"),
        "paligemma" => (
            "language_model.model.layers",
            "language_model.model.embed_tokens.weight",
        ),
        _ => unreachable!(),
    }
}

/// A copy of a fixture's config.json and model.safetensors in a temp dir.
fn copy_fixture(model: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(model).join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

#[test]
fn batched_projection_equals_naive_per_neuron() {
    for model in ["llama", "gemma", "paligemma"] {
        let m = open(&fixture(model));
        let dec = m.decoder();
        let w = raw(&fixture(model));
        let (prefix, unemb) = names(model);
        // Hub layout: W_U [V, d], W_down [d, d_ff] (value vector i = column i).
        let u: Vec<Vec<f32>> = w[unemb].to_vec2().unwrap();
        for l in 0..dec.layers.len() {
            let wd: Vec<Vec<f32>> = w[&format!("{prefix}.{l}.mlp.down_proj.weight")]
                .to_vec2()
                .unwrap();
            let (d, d_ff) = (wd.len(), wd[0].len());
            let batched: Vec<Vec<f32>> = layer_scores(dec, l).unwrap().to_vec2().unwrap();
            assert_eq!((batched.len(), batched[0].len()), (d_ff, u.len()));
            let proj = project(dec, &m.vocab, l..l + 1, 10).unwrap();
            let mut worst = 0f64;
            for i in 0..d_ff {
                let naive: Vec<f64> = u
                    .iter()
                    .map(|row| (0..d).map(|j| row[j] as f64 * wd[j][i] as f64).sum())
                    .collect();
                for (t, &n) in naive.iter().enumerate() {
                    worst = worst.max((batched[i][t] as f64 - n).abs());
                }
                let mut order: Vec<usize> = (0..naive.len()).collect();
                order.sort_by(|&a, &b| naive[b].total_cmp(&naive[a]).then(a.cmp(&b)));
                let got: Vec<usize> = proj[0].neurons[i]
                    .top
                    .iter()
                    .map(|t| t.id as usize)
                    .collect();
                assert_eq!(got, order[..10].to_vec(), "{model} layer {l} neuron {i}");
                assert_eq!(proj[0].neurons[i].flat, l * d_ff + i);
                for t in &proj[0].neurons[i].top {
                    assert!((t.score as f64 - naive[t.id as usize]).abs() < 1e-5);
                    assert_eq!(t.token, format!("<{}>", t.id));
                }
            }
            assert!(
                worst < 1e-5,
                "{model} layer {l}: max |batched - naive| = {worst:e}"
            );
        }
    }
}

/// Overwrites W_down columns of `layer` so that neuron `n_j` writes `U[a_j] + U[b_j]`.
fn plant(dir: &Path, model: &str, layer: usize, plants: &[(usize, u32, u32)]) {
    let mut w = raw(dir);
    let (prefix, unemb) = names(model);
    let u: Vec<Vec<f32>> = w[unemb].to_vec2().unwrap();
    let key = format!("{prefix}.{layer}.mlp.down_proj.weight");
    let mut wd: Vec<Vec<f32>> = w[&key].to_vec2().unwrap();
    for &(n, a, b) in plants {
        for (j, row) in wd.iter_mut().enumerate() {
            row[n] = u[a as usize][j] + u[b as usize][j];
        }
    }
    let (d, f) = (wd.len(), wd[0].len());
    let flat: Vec<f32> = wd.into_iter().flatten().collect();
    w.insert(key, Tensor::from_vec(flat, (d, f), &Device::Cpu).unwrap());
    safetensors::save(&w, dir.join("model.safetensors")).unwrap();
}

fn write_tokenizer(dir: &Path, vocab: usize, words: &[(u32, &str)]) {
    let mut map = serde_json::Map::new();
    for i in 0..vocab as u32 {
        let tok = words
            .iter()
            .find(|(id, _)| *id == i)
            .map(|(_, w)| w.to_string())
            .unwrap_or_else(|| format!("tok{i}"));
        map.insert(tok, serde_json::json!(i));
    }
    let j = serde_json::json!({"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": map}});
    std::fs::write(dir.join("tokenizer.json"), j.to_string()).unwrap();
}

#[test]
fn planted_concept_is_recovered_llama_with_tokenizer() {
    let tmp = copy_fixture("llama");
    // SentencePiece / byte-level markers must not stop a match.
    let words = [
        (10u32, "▁fast"),
        (20, "Ġquick"),
        (30, "Rapid"),
        (40, "swift"),
    ];
    write_tokenizer(tmp.path(), 512, &words);
    let plants = [
        (3, 10, 20),
        (50, 20, 30),
        (99, 30, 40),
        (150, 40, 10),
        (170, 10, 30),
        (7, 20, 40),
    ];
    plant(tmp.path(), "llama", 1, &plants);
    let m = open(tmp.path());
    assert_eq!(m.vocab.token(10), "▁fast");
    let p = project_model(&m, 0..2, 10).unwrap();
    let d_ff = p.d_ff;
    let want: HashSet<usize> = plants.iter().map(|(n, _, _)| d_ff + n).collect();
    // The built-in `fast` concept ranks exactly the planted neurons first.
    let fast = Concept::new(
        "fast",
        &[
            "fast", "quick", "quickly", "rapid", "rapidly", "speed", "hurry", "swift",
        ],
    );
    let ranked = rank(&p, &fast.token_ids(&m.vocab), 0..2);
    let first: HashSet<usize> = ranked.iter().take(6).map(|r| r.flat).collect();
    assert_eq!(first, want);
    let sixth = ranked[5].score;
    let seventh = ranked.get(6).map(|r| r.score).unwrap_or(0.0);
    eprintln!("planted scores: min {sixth:.3}, best other {seventh:.3}");
    assert!(sixth > seventh + 0.05, "{sixth} vs {seventh}");
    for r in &ranked[..6] {
        assert_eq!(r.layer, 1);
        assert!(r.hits >= 2);
    }
    // Clusters of size 6 over layers 1..2, with seeded random controls in the same layer.
    let (dict, reports) = build_dictionary(
        &p,
        &m.vocab,
        &rudder_steering::default_concepts(),
        &[6],
        1..2,
        7,
    )
    .unwrap();
    let got: HashSet<usize> = dict.clusters["fast"].iter().copied().collect();
    assert_eq!(got, want);
    let ctl = &dict.controls["random_fast"];
    assert_eq!(ctl.len(), 6);
    assert!(ctl.iter().all(|&i| i / d_ff == 1 && !want.contains(&i)));
    let (dict2, _) = build_dictionary(
        &p,
        &m.vocab,
        &rudder_steering::default_concepts(),
        &[6],
        1..2,
        7,
    )
    .unwrap();
    assert_eq!(dict, dict2, "same seed, same dictionary");
    let fast_report = reports.iter().find(|r| r.concept == "fast").unwrap();
    assert_eq!(fast_report.tokens, 4);
    // `find` locates the neurons by token.
    let hits = p.find(&m.vocab, "swift");
    let found: HashSet<usize> = hits.iter().filter(|h| h.2 < 2).map(|h| h.1.flat).collect();
    assert!(found.contains(&(d_ff + 99)) && found.contains(&(d_ff + 150)));
    // Layer range restricted to layer 0: none of the planted neurons.
    let (d0, _) = build_dictionary(&p, &m.vocab, &[fast], &[6], 0..1, 7).unwrap();
    assert!(d0
        .clusters
        .get("fast")
        .is_none_or(|c| c.iter().all(|i| i / d_ff == 0)));
}

#[test]
fn planted_concept_is_recovered_gemma_tied_with_id_words() {
    let tmp = copy_fixture("gemma");
    let plants = [
        (5, 100, 200),
        (60, 200, 300),
        (127, 300, 100),
        (64, 100, 200),
    ];
    plant(tmp.path(), "gemma", 0, &plants);
    let m = open(tmp.path());
    assert!(m.vocab.source().is_none());
    let p = project_model(&m, 0..2, 10).unwrap();
    assert!(p.unembedding.contains("embed_tokens"), "{}", p.unembedding);
    let c = Concept::new("planted", &["<100>", "<200>", "<300>"]);
    let ranked = rank(&p, &c.token_ids(&m.vocab), 0..2);
    let first: HashSet<usize> = ranked.iter().take(4).map(|r| r.flat).collect();
    let want: HashSet<usize> = plants.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(first, want);
}

#[test]
fn steering_sets_exactly_the_cluster_neurons_and_moves_logits() {
    let m = open(&fixture("llama"));
    let dec = m.decoder();
    let d_ff = dec.d_ff();
    let ids = Tensor::new(&[[5u32, 17, 300, 42, 7, 9, 100, 3]], &Device::Cpu).unwrap();
    let p0 = HookPoint::new(0, Site::MlpAct);
    let p1 = HookPoint::new(1, Site::MlpAct);
    let (plain, _) = dec.forward_ids(&ids, 0, None, None, false).unwrap();
    let mut cap = rudder_tune::hooks::Hooks::new();
    cap.capture(p0).capture(p1);
    let (plain2, _) = dec
        .forward_ids(&ids, 0, None, Some(&mut cap), false)
        .unwrap();
    let plain_act0: Vec<Vec<f32>> = cap
        .captured(&p0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();

    let handle = SteeringHandle::new(
        m.geometry(),
        vec![
            ("a".into(), vec![3, 77, d_ff + 175]),
            ("b".into(), vec![d_ff + 5, d_ff + 6, d_ff + 175]),
        ],
    )
    .unwrap();
    let mut steerer = handle.steerer();
    // Nothing on: the unhooked path, bit-identical.
    assert!(steerer.hooks().is_none());
    let (off, _) = dec
        .forward_ids(&ids, 0, None, steerer.hooks(), false)
        .unwrap();
    assert_eq!(
        off.to_vec3::<f32>().unwrap(),
        plain.to_vec3::<f32>().unwrap()
    );
    assert_eq!(
        plain2.to_vec3::<f32>().unwrap(),
        plain.to_vec3::<f32>().unwrap()
    );

    // Set from another thread, as a UI would; the inference side sees it at the next call.
    let h2 = handle.clone();
    std::thread::spawn(move || h2.set("a", Some(4.0)).unwrap())
        .join()
        .unwrap();
    steerer.add_hook(p0, HookAction::Capture);
    steerer.add_hook(p1, HookAction::Capture);
    let (steered, _) = dec
        .forward_ids(&ids, 0, None, steerer.hooks(), false)
        .unwrap();
    let a0: Vec<Vec<f32>> = steerer
        .hooks_ref()
        .captured(&p0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let a1: Vec<Vec<f32>> = steerer
        .hooks_ref()
        .captured(&p1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(a0.len(), 8);
    for (t, row) in a0.iter().enumerate() {
        for (i, &v) in row.iter().enumerate() {
            if i == 3 || i == 77 {
                assert_eq!(v, 4.0, "layer 0 neuron {i} position {t}");
            } else {
                // Layer 0's other neurons are untouched (nothing upstream changed).
                assert_eq!(
                    v.to_bits(),
                    plain_act0[t][i].to_bits(),
                    "layer 0 neuron {i}"
                );
            }
        }
        assert_eq!(a1[t][175], 4.0);
        assert_ne!(a1[t][5], 4.0);
    }
    let diff = (&steered - &plain)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("max |logit change| with alpha 4: {diff:.4}");
    assert!(diff > 1e-3);

    // Two clusters at once; on a shared neuron the later cluster (b) wins.
    handle.set("b", Some(-2.0)).unwrap();
    let _ = dec
        .forward_ids(&ids, 0, None, steerer.hooks(), false)
        .unwrap();
    let a1: Vec<Vec<f32>> = steerer
        .hooks_ref()
        .captured(&p1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for row in &a1 {
        assert_eq!((row[5], row[6], row[175]), (-2.0, -2.0, -2.0));
    }
    assert_eq!(
        handle.snapshot(),
        vec![("a".into(), Some(4.0)), ("b".into(), Some(-2.0))]
    );

    // Back to off: bit-identical logits again (captures still registered: hooked path).
    handle.clear();
    let (back, _) = dec
        .forward_ids(&ids, 0, None, steerer.hooks(), false)
        .unwrap();
    assert!(!steerer.is_active());
    assert_eq!(
        back.to_vec3::<f32>().unwrap(),
        plain.to_vec3::<f32>().unwrap()
    );
    // Bad inputs: an unknown cluster, a non-finite alpha, a neuron beyond the model.
    assert!(handle
        .set("nope", Some(1.0))
        .unwrap_err()
        .to_string()
        .contains("nope"));
    assert!(handle.set("a", Some(f32::NAN)).is_err());
    let e = SteeringHandle::new(m.geometry(), vec![("x".into(), vec![2 * d_ff])]).unwrap_err();
    assert!(
        e.to_string().contains("`x`") && e.to_string().contains("2 layers x 176"),
        "{e}"
    );
    assert_eq!(
        parse_alphas("fast=4, up=off").unwrap(),
        vec![("fast".into(), Some(4.0)), ("up".into(), None)]
    );
    assert!(parse_alphas("fast").is_err() && parse_alphas("fast=inf").is_err());
}

#[test]
fn paligemma_steers_the_language_model_only() {
    let m = open(&fixture("paligemma"));
    let rudder_tune::load::AnyModel::PaliGemma(pg) = &m.loaded.model else {
        panic!("not paligemma")
    };
    assert_eq!(m.geometry().tower, Tower::Main);
    let mut ids = vec![511u32; 16];
    ids.extend([2u32, 40, 41, 42]);
    let inp = rudder_tune::models::paligemma::Inputs {
        input_ids: Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
        pixel_values: Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap(),
        attention_mask: None,
        token_type_ids: None,
    };
    let plain = pg.forward(&inp, None, false).unwrap();
    let handle = SteeringHandle::new(m.geometry(), vec![("c".into(), vec![1, 128 + 9])]).unwrap();
    handle.set("c", Some(10.0)).unwrap();
    let mut s = handle.steerer();
    let lm0 = HookPoint::new(0, Site::MlpAct);
    let vis = HookPoint {
        tower: Tower::Vision,
        layer: 0,
        site: Site::MlpAct,
    };
    s.add_hook(lm0, HookAction::Capture);
    s.add_hook(vis, HookAction::Capture);
    let steered = pg.forward(&inp, s.hooks(), false).unwrap();
    let a: Vec<Vec<f32>> = s
        .hooks_ref()
        .captured(&lm0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(a.len(), 20);
    assert!(a.iter().all(|r| r[1] == 10.0 && r[2] != 10.0));
    // The vision tower's neuron 1 is not the language model's.
    let v: Vec<Vec<f32>> = s
        .hooks_ref()
        .captured(&vis)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert!(v.iter().all(|r| r[1] != 10.0));
    assert_eq!(
        steered.image_features.to_vec3::<f32>().unwrap(),
        plain.image_features.to_vec3::<f32>().unwrap()
    );
    let diff = (&steered.logits - &plain.logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-3, "{diff}");
    handle.set("c", None).unwrap();
    let (_, _) = (s.hooks(), ());
    let back = pg.forward(&inp, handle.steerer().hooks(), false).unwrap();
    assert_eq!(
        back.logits.to_vec3::<f32>().unwrap(),
        plain.logits.to_vec3::<f32>().unwrap()
    );
}

#[test]
fn dictionary_toml_round_trips() {
    let m = open(&fixture("llama"));
    let p = project_model(&m, 0..2, 10).unwrap();
    let concepts = vec![
        Concept::new(
            "c1",
            &["<1>", "<2>", "<3>", "<4>", "<5>", "<6>", "<7>", "<8>"],
        ),
        Concept::new(
            "weird name",
            &["<9>", "<10>", "<11>", "<12>", "<13>", "<14>"],
        ),
    ];
    let (dict, _) = build_dictionary(&p, &m.vocab, &concepts, &[3, 5], 0..2, 42).unwrap();
    assert_eq!(dict.clusters.len(), 4, "{:?}", dict.clusters.keys());
    assert_eq!(dict.clusters["c1_5"].len(), 5);
    assert_eq!(dict.controls["random_c1_5"].len(), 5);
    let tops: BTreeMap<usize, String> = p
        .neurons()
        .map(|(_, n)| {
            (
                n.flat,
                n.top
                    .iter()
                    .map(|t| t.token.clone())
                    .collect::<Vec<_>>()
                    .join(" # "),
            )
        })
        .collect();
    let text = dict.to_toml(&|i| tops.get(&i).cloned());
    let back = Dictionary::parse(Path::new("dict.toml"), &text).unwrap();
    assert_eq!(back, dict, "{text}");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("dict.toml");
    dict.save(&path, &|_| None).unwrap();
    assert_eq!(Dictionary::load(&path).unwrap(), dict);
    back.check(&path, 2, 176).unwrap();
    // The paper's annotated form (flat id -> top tokens) reads as the same ids.
    let paper = "[clusters]\nup = { \"237\" = [\"up\", \"Up\"], \"30\" = [\"raise\"] }\n";
    let d = Dictionary::parse(Path::new("p.toml"), paper).unwrap();
    assert_eq!(d.clusters["up"], vec![237, 30]);
    // A handle built from the file steers the same neurons.
    let h =
        SteeringHandle::from_dictionary(&back, Some(&["c1_3".to_string()]), m.geometry()).unwrap();
    assert_eq!(h.neurons("c1_3").unwrap(), dict.clusters["c1_3"].as_slice());
}

#[test]
fn bad_inputs_name_the_file_and_field() {
    // Layer ranges.
    assert_eq!(parse_layers(Some("1..=1"), 2).unwrap(), 1..2);
    assert_eq!(parse_layers(Some("1.."), 2).unwrap(), 1..2);
    assert_eq!(parse_layers(None, 2).unwrap(), 0..2);
    let e = parse_layers(Some("0..5"), 2).unwrap_err().to_string();
    assert!(e.contains("0..5") && e.contains("0..2"), "{e}");
    assert!(parse_layers(Some("2..1"), 4).is_err() && parse_layers(Some("x"), 4).is_err());
    let m = open(&fixture("llama"));
    let e = m.layers(Some("3")).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("2 decoder layers"),
        "{e}"
    );
    assert!(project(m.decoder(), &m.vocab, 1..3, 10).is_err());
    assert!(project(m.decoder(), &m.vocab, 0..2, 0).is_err());

    // Missing lm_head (untied Llama) and missing embeddings (tied Gemma).
    for (model, tensor) in [
        ("llama", "lm_head.weight"),
        ("gemma", "model.embed_tokens.weight"),
    ] {
        let tmp = copy_fixture(model);
        let mut w = raw(tmp.path());
        w.remove(tensor);
        safetensors::save(&w, tmp.path().join("model.safetensors")).unwrap();
        let e = SteerModel::open(tmp.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(tensor) && e.contains("model.safetensors") && e.contains("missing"),
            "{e}"
        );
    }
    // A model without a language model.
    let e = SteerModel::open(&fixture("siglip_vision"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no language model"), "{e}");

    // Malformed dictionaries.
    let p = Path::new("dicts/bad.toml");
    let e = Dictionary::parse(p, "[clusters]\nfast = [1, 2,")
        .unwrap_err()
        .to_string();
    assert!(e.contains("dicts/bad.toml") && e.contains("TOML"), "{e}");
    let e = Dictionary::parse(p, "[clusters]\nfast = [1, -2]")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dicts/bad.toml") && e.contains("clusters.fast[1]"),
        "{e}"
    );
    let e = Dictionary::parse(p, "[clusters]\nfast = \"12\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("clusters.fast"), "{e}");
    let e = Dictionary::parse(p, "[meta]\nlayers = [3, 1]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("meta.layers"), "{e}");
    let e = Dictionary::parse(p, "[cluster]\nfast = [1]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`cluster`"), "{e}");
    let d = Dictionary::parse(p, "[meta]\nd_ff = 128\n[clusters]\nfast = [1]").unwrap();
    let e = d.check(p, 2, 176).unwrap_err().to_string();
    assert!(e.contains("meta.d_ff") && e.contains("176"), "{e}");
    let d = Dictionary::parse(p, "[clusters]\nfast = [1, 400]").unwrap();
    let e = d.check(p, 2, 176).unwrap_err().to_string();
    assert!(e.contains("clusters.fast") && e.contains("400"), "{e}");

    // Malformed concept files; a valid one overrides and extends the defaults.
    let c = Path::new("concepts.toml");
    let e = parse_concepts(c, "fast = \"quick\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("concepts.toml") && e.contains("`fast`"), "{e}");
    let e = parse_concepts(c, "[concepts]\nfast = [1]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("concepts.fast[0]"), "{e}");
    let e = parse_concepts(c, "fast = [").unwrap_err().to_string();
    assert!(e.contains("not valid TOML"), "{e}");
    let cs = parse_concepts(c, "fast = [\"zoom\"]\ngrip = [\"grasp\", \"grab\"]").unwrap();
    assert_eq!(cs.len(), 7);
    assert_eq!(
        cs.iter().find(|x| x.name == "fast").unwrap().words,
        vec!["zoom"]
    );
    let cs = parse_concepts(c, "defaults = false\n[concepts]\ngrip = [\"grasp\"]").unwrap();
    assert_eq!(cs.len(), 1);

    // A broken tokenizer.json.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tokenizer.json");
    std::fs::write(&t, "{\"model\": {\"type\": \"BPE\"}}").unwrap();
    let e = Vocab::from_tokenizer_json(&t, 10).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("model.vocab"),
        "{e}"
    );
    std::fs::write(&t, "{").unwrap();
    assert!(Vocab::from_tokenizer_json(&t, 10)
        .unwrap_err()
        .to_string()
        .contains("JSON"));
    // A Unigram vocabulary ([piece, score] list) and added tokens.
    std::fs::write(
        &t,
        r#"{"added_tokens": [{"id": 3, "content": "<image>"}], "model": {"type": "Unigram", "vocab": [["<pad>", 0.0], ["▁Up", -1.0], ["▁down", -2.0]]}}"#,
    )
    .unwrap();
    let v = Vocab::from_tokenizer_json(&t, 5).unwrap();
    assert_eq!(
        (v.token(1), v.token(3), v.token(4)),
        ("▁Up".into(), "<image>".into(), "<4>".into())
    );
    assert_eq!(v.lookup("up"), vec![1]);
    assert_eq!(v.lookup("<2>"), vec![2]);
    let _ = DType::F32;
}
