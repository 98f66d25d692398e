//! Latent-noise RL on the tiny pi0 fixture: the flow's inversion, the agent's updates and its
//! checkpoint.

use std::path::PathBuf;
use std::sync::Arc;

use rudder_policy::rl::{LatentAgent, LatentRlConfig};
use rudder_policy::VlaPolicy;
use rudder_robot::{AttemptEnd, ImageRgb8, Learner, Observation, Policy};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf-tiny/pi0")
}

fn obs(p: &VlaPolicy, seed: u8) -> Observation {
    let image = |s: u8| {
        let data = (0..32 * 32 * 3)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(s))
            .collect();
        ImageRgb8::new("test", 32, 32, data).unwrap()
    };
    let cams = p.cameras().to_vec();
    Observation {
        images: [
            (cams[0].clone(), image(seed)),
            (cams[1].clone(), image(seed + 1)),
        ]
        .into_iter()
        .collect(),
        state: vec![0.1, -0.2, 0.3, 0.0, 0.5, 0.6, 0.02, -0.02],
        instruction: "pick up the bowl".into(),
        timestamp: 0.0,
    }
}

#[test]
fn inverting_the_flow_recovers_the_noise_of_a_decoded_chunk() {
    let p = VlaPolicy::load(&fixture()).unwrap();
    let o = obs(&p, 3);
    let n = p.noise_dim();
    let w: Vec<f32> = rudder_policy::noise::gaussian(7, n);
    let c = p.decode_latent(&o, &w).unwrap();
    assert_eq!(c.features.len(), p.feature_dim());
    assert_eq!(c.rows.len(), p.action_horizon());
    let (features, w2) = p.encode_latent(&o, &c.rows).unwrap();
    assert_eq!(features, c.features);
    assert_eq!(features, p.latent_features(&o).unwrap());
    // The sampler's Euler steps undone by fixed-point iteration: close, not bit-exact.
    let c2 = p.decode_latent(&o, &w2).unwrap();
    let d = p.action_dim();
    let mut worst = 0f32;
    for (r1, r2) in c.rows.iter().zip(&c2.rows) {
        for k in 0..d {
            worst = worst.max((r1[k] - r2[k]).abs());
        }
    }
    let scale = c
        .rows
        .iter()
        .flat_map(|r| r[..d].iter())
        .fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        worst <= 0.01 * scale.max(1e-3),
        "round trip {worst} vs scale {scale}"
    );
    // Another noise gives another chunk: the latent space is what the actor moves in.
    let other = p
        .decode_latent(&o, &rudder_policy::noise::gaussian(8, n))
        .unwrap();
    assert_ne!(other.rows, c.rows);
    // Bad noise is refused, naming it.
    let e = p.decode_latent(&o, &w[..n - 1]).unwrap_err().to_string();
    assert!(e.contains("noise"), "{e}");
    let mut nan = w.clone();
    nan[0] = f32::NAN;
    assert!(p.decode_latent(&o, &nan).is_err());
}

fn small() -> LatentRlConfig {
    let mut cfg = LatentRlConfig {
        actor_hidden: vec![32],
        critic_hidden: vec![32],
        warmup: 4,
        ..LatentRlConfig::default()
    };
    cfg.cal_ql.batch_size = 8;
    cfg
}

#[test]
fn the_agent_learns_online_and_resumes_from_its_checkpoint_exactly() {
    let p = Arc::new(VlaPolicy::load(&fixture()).unwrap());
    let mut agent = LatentAgent::new(Arc::clone(&p), small()).unwrap();
    // One offline episode from inverted chunks, ending in success.
    let mut steps = Vec::new();
    for s in 0..3u8 {
        let o = obs(&p, 10 * s);
        let w = rudder_policy::noise::gaussian(u64::from(s), p.noise_dim());
        let c = p.decode_latent(&o, &w).unwrap();
        steps.push(p.encode_latent(&o, &c.rows).unwrap());
    }
    agent
        .add_offline_episode(&steps, &[0.0, 0.0, 1.0], true)
        .unwrap();
    assert_eq!(agent.offline_len(), 3);
    for _ in 0..3 {
        let s = agent.update(true).unwrap();
        assert!(s.critic_loss.is_finite() && s.actor_loss.is_finite());
    }
    // Online: chunks from the actor, an attempt that succeeds, then learning inside infer.
    for s in 0..6u8 {
        let chunk = agent.infer(&obs(&p, s)).unwrap();
        assert_eq!(chunk.actions.len(), p.action_horizon());
    }
    agent.end_attempt(&obs(&p, 9), AttemptEnd::Success).unwrap();
    assert_eq!(agent.online_len(), 6);
    let before = agent.updates;
    agent.infer(&obs(&p, 1)).unwrap();
    assert_eq!(
        agent.updates,
        before + 1,
        "learning starts after the warm-up"
    );

    let dir = std::env::temp_dir().join(format!("latent-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    agent.save(&dir).unwrap();
    let mut back = LatentAgent::load(Arc::clone(&p), &dir).unwrap();
    assert_eq!((back.updates, back.online_len()), (agent.updates, 6));
    let a = agent.update(false).unwrap();
    let b = back.update(false).unwrap();
    assert_eq!(a.critic_loss.to_bits(), b.critic_loss.to_bits());
    assert_eq!(a.actor_loss.to_bits(), b.actor_loss.to_bits());
    // A corrupt checkpoint is an error naming the file.
    std::fs::write(dir.join("agent.safetensors"), b"not safetensors").unwrap();
    let e = match LatentAgent::load(Arc::clone(&p), &dir) {
        Ok(_) => panic!("a corrupt checkpoint loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("agent.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
