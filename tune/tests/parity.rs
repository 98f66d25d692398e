//! Numerical parity with transformers 5.24 on the tiny reference checkpoints.

use std::path::PathBuf;

use rudder_tune::verify::verify;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hf-tiny")
        .join(name)
}

fn assert_parity(name: &str, must_have: &[&str]) {
    let dir = fixture(name);
    let report = verify(&dir, &dir.join("reference.safetensors"), 1e-5).expect("verify runs");
    for o in &report.outputs {
        eprintln!("{name}: {:40} {:.3e}", o.name, o.max_abs_diff);
    }
    let failed: Vec<_> = report.outputs.iter().filter(|o| !o.pass).collect();
    assert!(failed.is_empty(), "{name}: outside 1e-5: {failed:?}");
    for m in must_have {
        assert!(
            report.outputs.iter().any(|o| o.name == *m),
            "{name}: {m} was not compared; compared: {:?}",
            report.outputs.iter().map(|o| &o.name).collect::<Vec<_>>()
        );
    }
    assert!(report.pass);
}

#[test]
fn llama_matches_transformers() {
    assert_parity(
        "llama",
        &[
            "out.logits",
            "hf.hidden_states.0",
            "hf.hidden_states.1",
            "hf.hidden_states.2",
            "layer.0.mlp.act",
            "layer.1.mlp.act",
            "layer.1.out",
            "steer.logits",
            "gen.output_ids",
        ],
    );
}

#[test]
fn gemma_matches_transformers() {
    assert_parity(
        "gemma",
        &[
            "out.logits",
            "hf.hidden_states.2",
            "layer.0.mlp.act",
            "layer.1.mlp.act",
        ],
    );
}

#[test]
fn siglip_matches_transformers() {
    assert_parity(
        "siglip_vision",
        &[
            "out.last_hidden_state",
            "out.pooler_output",
            "hf.hidden_states.2",
            "layer.0.mlp.act",
            "layer.1.mlp.act",
        ],
    );
}

#[test]
fn paligemma_matches_transformers() {
    assert_parity(
        "paligemma",
        &[
            "out.logits",
            "out.logits_causal_no_token_type_ids",
            "out.image_features",
            "hf.hidden_states.0",
            "hf.hidden_states.2",
            "layer.0.mlp.act",
            "layer.1.mlp.act",
            "vision.layer.0.mlp.act",
            "vision.layer.1.mlp.act",
        ],
    );
}

#[test]
fn pi0_matches_transformers() {
    assert_parity(
        "pi0",
        &[
            "out.velocity",
            "out.loss",
            "out.sample_actions_3steps",
            "dit.layer.0.mlp.in",
            "dit.layer.0.mlp.act",
            "dit.layer.0.mlp.out",
            "dit.layer.0.out",
            "dit.layer.1.mlp.act",
            "dit.layer.1.out",
        ],
    );
}
