//! Save/load round trips and bad-input errors: every error names the file and the tensor or
//! field, and nothing panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rudder_tune::candle_core::{DType, Device, Tensor};
use rudder_tune::checkpoint::TensorStore;
use rudder_tune::load::load_model;
use rudder_tune::verify::{max_abs_diff, verify};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hf-tiny")
        .join(name)
}

/// A writable copy of a fixture folder.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load_weights(path: &Path) -> HashMap<String, Tensor> {
    rudder_tune::candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn rewrite_weights(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let p = dir.join("model.safetensors");
    let mut w = load_weights(&p);
    f(&mut w);
    rudder_tune::candle_core::safetensors::save(&w, &p).unwrap();
}

fn load_err(dir: &Path) -> String {
    match load_model(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    for name in ["llama", "gemma", "siglip_vision", "paligemma", "pi0"] {
        let src = fixture(name);
        let a = load_model(&src, &Device::Cpu).unwrap();
        let out = tempfile::tempdir().unwrap();
        a.save_pretrained(out.path()).unwrap();
        // Every saved tensor equals the original file's tensor of the same name, bit for bit.
        let orig = load_weights(&src.join("model.safetensors"));
        let saved = load_weights(&out.path().join("model.safetensors"));
        assert_eq!(orig.len(), saved.len(), "{name}: tensor count");
        for (k, v) in &orig {
            let s = saved
                .get(k)
                .unwrap_or_else(|| panic!("{name}: {k} not saved"));
            assert_eq!(s.dims(), v.dims(), "{name}: {k}");
            let a: Vec<u32> = v
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let b: Vec<u32> = s
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert_eq!(a, b, "{name}: {k} differs after save");
        }
        // And the reloaded model still verifies.
        std::fs::copy(
            src.join("reference.safetensors"),
            out.path().join("reference.safetensors"),
        )
        .unwrap();
        let r = verify(out.path(), &out.path().join("reference.safetensors"), 1e-5).unwrap();
        assert!(r.pass, "{name}: reloaded model fails parity");
    }
}

#[test]
fn missing_tensor_is_named() {
    let d = copy_fixture("llama");
    rewrite_weights(d.path(), |w| {
        w.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(d.path());
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let d = copy_fixture("gemma");
    rewrite_weights(d.path(), |w| {
        w.insert(
            "model.layers.0.self_attn.k_proj.weight".into(),
            Tensor::zeros((16, 64), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(d.path());
    assert!(e.contains("model.layers.0.self_attn.k_proj.weight"), "{e}");
    assert!(e.contains("[16, 64]") && e.contains("[32, 64]"), "{e}");
}

#[test]
fn wrong_dtype_is_named() {
    let d = copy_fixture("llama");
    rewrite_weights(d.path(), |w| {
        w.insert(
            "model.norm.weight".into(),
            Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(d.path());
    assert!(e.contains("model.norm.weight") && e.contains("I64"), "{e}");
}

#[test]
fn half_precision_weights_load() {
    let d = copy_fixture("llama");
    rewrite_weights(d.path(), |w| {
        for v in w.values_mut() {
            *v = v.to_dtype(DType::BF16).unwrap();
        }
    });
    let m = load_model(d.path(), &Device::Cpu).unwrap();
    assert!(m.model.decoder().is_some());
}

#[test]
fn truncated_safetensors_is_reported() {
    let d = copy_fixture("llama");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn corrupt_header_is_reported() {
    let d = copy_fixture("siglip_vision");
    let p = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    for b in bytes.iter_mut().skip(8).take(40) {
        *b = b'#';
    }
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors"), "{e}");
    let short = d.path().join("model.safetensors");
    std::fs::write(&short, [1u8, 2, 3]).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("not a valid safetensors"), "{e}");
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn config_missing_field_is_named() {
    let d = copy_fixture("llama");
    edit_config(d.path(), |v| {
        v.as_object_mut().unwrap().remove("intermediate_size");
    });
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("intermediate_size") && e.contains("missing"),
        "{e}"
    );

    let d = copy_fixture("paligemma");
    edit_config(d.path(), |v| {
        v["vision_config"]
            .as_object_mut()
            .unwrap()
            .remove("patch_size");
    });
    let e = load_err(d.path());
    assert!(e.contains("vision_config.patch_size"), "{e}");
}

#[test]
fn config_bad_values_are_named() {
    let d = copy_fixture("llama");
    edit_config(d.path(), |v| {
        v["num_key_value_heads"] = serde_json::json!(3)
    });
    let e = load_err(d.path());
    assert!(e.contains("num_key_value_heads"), "{e}");

    let d = copy_fixture("llama");
    edit_config(d.path(), |v| {
        v["rope_parameters"]["rope_type"] = serde_json::json!("yarn-ish")
    });
    let e = load_err(d.path());
    assert!(e.contains("rope_type") && e.contains("yarn-ish"), "{e}");

    let d = copy_fixture("llama");
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let d = copy_fixture("llama");
    edit_config(d.path(), |v| {
        v["architectures"] = serde_json::json!(["FalconForCausalLM"]);
        v["model_type"] = serde_json::json!("falcon");
    });
    let e = load_err(d.path());
    assert!(
        e.contains("FalconForCausalLM") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn rope_theta_is_read_from_rope_parameters() {
    // A theta that differs from the family default must change the output: a loader that
    // ignored `rope_parameters` would silently produce the default-theta logits.
    let d = copy_fixture("llama");
    edit_config(d.path(), |v| {
        v["rope_parameters"]["rope_theta"] = serde_json::json!(500000.0)
    });
    let r = verify(d.path(), &d.path().join("reference.safetensors"), 1e-5).unwrap();
    let logits = r.outputs.iter().find(|o| o.name == "out.logits").unwrap();
    assert!(
        logits.max_abs_diff > 1e-3,
        "theta change had no effect: {}",
        logits.max_abs_diff
    );
    // v4 layout: top-level rope_theta.
    let d = copy_fixture("llama");
    edit_config(d.path(), |v| {
        let o = v.as_object_mut().unwrap();
        o.remove("rope_parameters");
        o.insert("rope_theta".into(), serde_json::json!(10000.0));
    });
    assert!(
        verify(d.path(), &d.path().join("reference.safetensors"), 1e-5)
            .unwrap()
            .pass
    );
}

#[test]
fn reference_without_inputs_is_reported() {
    let d = copy_fixture("llama");
    let p = d.path().join("reference.safetensors");
    let mut r = load_weights(&p);
    r.retain(|k, _| !k.starts_with("in."));
    rudder_tune::candle_core::safetensors::save(&r, &p).unwrap();
    let e = verify(d.path(), &p, 1e-4).unwrap_err().to_string();
    assert!(
        e.contains("reference.safetensors") && e.contains("in.*"),
        "{e}"
    );
}

#[test]
fn out_of_range_token_is_reported() {
    let d = copy_fixture("llama");
    let p = d.path().join("reference.safetensors");
    let mut r = load_weights(&p);
    r.insert(
        "in.input_ids".into(),
        Tensor::new(&[[1i64, 2, 99999]], &Device::Cpu).unwrap(),
    );
    rudder_tune::candle_core::safetensors::save(&r, &p).unwrap();
    let e = verify(d.path(), &p, 1e-4).unwrap_err().to_string();
    assert!(e.contains("99999") && e.contains("vocab_size"), "{e}");
}

#[test]
fn tensor_store_reports_missing_names() {
    let s = TensorStore::load_file(
        &fixture("llama").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let e = s.get("out.nothing").unwrap_err().to_string();
    assert!(
        e.contains("out.nothing") && e.contains("reference.safetensors"),
        "{e}"
    );
    let a = s.get("out.logits").unwrap();
    assert_eq!(max_abs_diff(a, a).unwrap(), 0.0);
}
