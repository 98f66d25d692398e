//! Hook points: capture, set neurons, add vectors and per-head offsets; KV-cache consistency.

use std::path::PathBuf;

use rudder_tune::blocks::KvCache;
use rudder_tune::candle_core::{Device, Tensor, D};
use rudder_tune::hooks::{HookAction, HookPoint, Hooks, Site, Tower};
use rudder_tune::load::load_model;
use rudder_tune::verify::max_abs_diff;

fn llama() -> rudder_tune::load::LoadedModel {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf-tiny/llama");
    load_model(&p, &Device::Cpu).unwrap()
}

fn ids() -> Tensor {
    Tensor::new(&[[5u32, 17, 300, 42, 7, 9, 100, 3]], &Device::Cpu).unwrap()
}

#[test]
fn hook_names_round_trip() {
    for n in [
        "blocks.0.mlp.act",
        "blocks.12.resid_post",
        "blocks.3.attn.head_out",
        "vision.blocks.1.mlp.in",
        "expert.blocks.2.mlp.out",
    ] {
        assert_eq!(HookPoint::parse(n).unwrap().name(), n);
    }
    for bad in ["blocks.x.mlp.act", "blocks.1.mlp", "layers.1.mlp.act", ""] {
        assert!(HookPoint::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn empty_hooks_change_nothing() {
    let m = llama();
    let d = m.model.decoder().unwrap();
    let (a, _) = d.forward_ids(&ids(), 0, None, None, false).unwrap();
    let mut h = Hooks::new();
    let (b, _) = d.forward_ids(&ids(), 0, None, Some(&mut h), false).unwrap();
    assert_eq!(max_abs_diff(&a, &b).unwrap(), 0.0);
}

#[test]
fn set_neurons_overrides_mlp_act() {
    let m = llama();
    let d = m.model.decoder().unwrap();
    let p = HookPoint::new(1, Site::MlpAct);
    let mut h = Hooks::new();
    h.add(
        p,
        HookAction::SetNeurons {
            indices: vec![3, 77, 175],
            value: 8.0,
        },
    );
    h.add(p, HookAction::Capture);
    let (steered, _) = d.forward_ids(&ids(), 0, None, Some(&mut h), false).unwrap();
    let act = h.captured(&p).unwrap();
    assert_eq!(act.dims(), &[1, 8, 176]);
    let v: Vec<Vec<f32>> = act.squeeze(0).unwrap().to_vec2().unwrap();
    for row in &v {
        assert_eq!(row[3], 8.0);
        assert_eq!(row[77], 8.0);
        assert_eq!(row[175], 8.0);
        assert!(row[4] != 8.0);
    }
    let (plain, _) = d.forward_ids(&ids(), 0, None, None, false).unwrap();
    assert!(max_abs_diff(&plain, &steered).unwrap() > 1e-3);
    // Out-of-range neuron: an error, not a panic.
    let mut bad = Hooks::new();
    bad.add(
        p,
        HookAction::SetNeurons {
            indices: vec![176],
            value: 1.0,
        },
    );
    assert!(d
        .forward_ids(&ids(), 0, None, Some(&mut bad), false)
        .is_err());
}

#[test]
fn head_out_capture_and_offsets() {
    let m = llama();
    let d = m.model.decoder().unwrap();
    let p = HookPoint::new(0, Site::AttnHeadOut);
    let mut h = Hooks::new();
    h.capture(p);
    let (plain, _) = d.forward_ids(&ids(), 0, None, Some(&mut h), false).unwrap();
    assert_eq!(h.captured(&p).unwrap().dims(), &[1, 4, 8, 16]);
    let mut z = Hooks::new();
    z.add(
        p,
        HookAction::AddPerHead(
            Tensor::zeros((4, 16), rudder_tune::candle_core::DType::F32, &Device::Cpu).unwrap(),
        ),
    );
    let (same, _) = d.forward_ids(&ids(), 0, None, Some(&mut z), false).unwrap();
    assert!(max_abs_diff(&plain, &same).unwrap() < 1e-6);
    // An offset on head 2 only moves the output.
    let mut off = vec![0f32; 64];
    for (i, o) in off.iter_mut().enumerate().skip(32).take(16) {
        *o = 0.1 * (i as f32 - 40.0);
    }
    let mut o = Hooks::new();
    o.add(
        p,
        HookAction::AddPerHead(Tensor::from_vec(off, (4, 16), &Device::Cpu).unwrap()),
    );
    o.capture(p);
    let (moved, _) = d.forward_ids(&ids(), 0, None, Some(&mut o), false).unwrap();
    assert!(max_abs_diff(&plain, &moved).unwrap() > 1e-3);
    // The capture after the add sees the offset on head 2 and nothing on head 0.
    let before = h.captured(&p).unwrap();
    let after = o.captured(&p).unwrap();
    let diff = (after - before).unwrap();
    assert!(
        diff.narrow(1, 0, 1)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0
    );
    assert!(
        diff.narrow(1, 2, 1)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.5
    );
}

#[test]
fn kv_cache_matches_full_forward() {
    let m = llama();
    let d = m.model.decoder().unwrap();
    let all = ids();
    let (full, _) = d.forward_ids(&all, 0, None, None, false).unwrap();
    let mut cache: Vec<KvCache> = Vec::new();
    let (first, _) = d
        .forward_ids(
            &all.narrow(1, 0, 5).unwrap(),
            0,
            Some(&mut cache),
            None,
            false,
        )
        .unwrap();
    assert!(max_abs_diff(&first, &full.narrow(1, 0, 5).unwrap()).unwrap() < 1e-5);
    for t in 5..8 {
        let (step, _) = d
            .forward_ids(
                &all.narrow(1, t, 1).unwrap(),
                t,
                Some(&mut cache),
                None,
                false,
            )
            .unwrap();
        let want = full.narrow(1, t, 1).unwrap();
        assert!(max_abs_diff(&step, &want).unwrap() < 1e-5, "position {t}");
    }
    assert_eq!(cache[0].len(), 8);
}

#[test]
fn vision_tower_hooks_are_separate() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf-tiny/paligemma");
    let m = load_model(&p, &Device::Cpu).unwrap();
    let rudder_tune::load::AnyModel::PaliGemma(pg) = &m.model else {
        panic!("not paligemma")
    };
    let px = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let vp = HookPoint {
        tower: Tower::Vision,
        layer: 0,
        site: Site::MlpAct,
    };
    let mut h = Hooks::new();
    h.capture(vp);
    h.capture(HookPoint::new(0, Site::MlpAct));
    let (feats, _) = pg.image_features(&px, Some(&mut h), false).unwrap();
    assert_eq!(feats.dims(), &[1, 16, 64]);
    assert_eq!(h.captured(&vp).unwrap().dim(D::Minus1).unwrap(), 96);
    // Only the vision tower ran: the LM hook saw nothing.
    assert!(h.captured(&HookPoint::new(0, Site::MlpAct)).is_none());
}
