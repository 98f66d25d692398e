//! The RL core (`rudder_tune::rl`): the replay buffer (ring, sampling, the offline/online mix,
//! its file), Monte-Carlo returns, the Q-ensemble and its target, the tanh-Gaussian against
//! its closed-form density, Cal-QL's loss pieces against hand-computed numbers, and a 1-step
//! bandit on which a few hundred Cal-QL updates centre the actor and keep Q calibrated.

/// Every test sits in `rl` so that `cargo test -p rudder-tune rl` selects them.
mod rl {
    use std::path::Path;

    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};
    use rudder_tune::rl::{
        actor_loss, cal_ql_penalty, copy_params, critic_loss, entropy_alpha_loss, init_seeded,
        mc_returns, soft_update, sorted_params, td_target, CalQlConfig, Critic, CriticConfig, Mlp,
        PenaltyInputs, ReplayBuffer, TanhGaussian, Transition,
    };
    use rudder_tune::train::adamw::collect_grads;
    use rudder_tune::train::{AdamW, AdamWConfig, Rng};

    const CPU: Device = Device::Cpu;

    fn t1(v: &[f32]) -> Tensor {
        Tensor::new(v, &CPU).expect("tensor")
    }

    fn t2(v: &[&[f32]]) -> Tensor {
        let rows: Vec<Tensor> = v.iter().map(|r| t1(r)).collect();
        Tensor::stack(&rows, 0).expect("stack")
    }

    fn v1(t: &Tensor) -> Vec<f32> {
        t.flatten_all().and_then(|t| t.to_vec1()).expect("to_vec1")
    }

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().expect("scalar")
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Transition `i`: every field encodes `i`, so a sampled row can be traced back.
    fn tr(i: usize) -> Transition {
        let x = i as f32;
        Transition {
            obs: vec![x, x + 0.5, x + 0.25],
            action: vec![-x, 2.0 * x],
            reward: 10.0 * x,
            next_obs: vec![x + 1.0, x + 1.5, x + 1.25],
            done: i.is_multiple_of(2),
            mc_return: 100.0 * x,
        }
    }

    // ---------------------------------------------------------------- replay buffer

    #[test]
    fn ring_buffer_overwrites_the_oldest_and_rejects_bad_transitions() {
        let mut buf = ReplayBuffer::new(3, 3, 2).expect("buffer");
        assert!(buf.is_empty());
        for i in 0..5 {
            buf.push(&tr(i)).expect("push");
        }
        assert_eq!(buf.len(), 3);
        assert_eq!(buf.pushed(), 5);
        let held: Vec<Transition> = (0..3).map(|i| buf.get(i).expect("get")).collect();
        assert_eq!(
            held,
            vec![tr(2), tr(3), tr(4)],
            "oldest first, 0 and 1 overwritten"
        );
        assert!(buf.get(3).is_none());

        // Wrong lengths and non-finite numbers are errors naming the field; nothing changes.
        let mut bad = tr(9);
        bad.obs.pop();
        let e = buf.push(&bad).expect_err("short obs").to_string();
        assert!(e.contains("obs") && e.contains("length 2"), "{e}");
        let mut bad = tr(9);
        bad.action.push(0.0);
        assert!(buf
            .push(&bad)
            .expect_err("long action")
            .to_string()
            .contains("action"));
        let mut bad = tr(9);
        bad.next_obs[1] = f32::NAN;
        assert!(buf
            .push(&bad)
            .expect_err("nan")
            .to_string()
            .contains("next_obs"));
        let mut bad = tr(9);
        bad.reward = f32::INFINITY;
        assert!(buf
            .push(&bad)
            .expect_err("inf")
            .to_string()
            .contains("reward"));
        assert_eq!(buf.pushed(), 5);
        assert_eq!(buf.get(0), Some(tr(2)));
        assert!(ReplayBuffer::new(0, 3, 2).is_err());
        assert!(ReplayBuffer::new(4, 0, 2).is_err());
    }

    #[test]
    fn samples_are_held_transitions_with_batch_shapes_and_follow_the_seed() {
        let mut buf = ReplayBuffer::new(8, 3, 2).expect("buffer");
        for i in 0..12 {
            buf.push(&tr(i)).expect("push");
        }
        let b = buf.sample(&mut Rng::new(1), 32, &CPU).expect("sample");
        assert_eq!(b.len(), 32);
        assert_eq!(b.obs.dims(), &[32, 3]);
        assert_eq!(b.action.dims(), &[32, 2]);
        assert_eq!(b.next_obs.dims(), &[32, 3]);
        for t in [&b.reward, &b.done, &b.mc_return] {
            assert_eq!(t.dims(), &[32]);
        }
        let (obs, act, rew, next, done, mc) = (
            v1(&b.obs),
            v1(&b.action),
            v1(&b.reward),
            v1(&b.next_obs),
            v1(&b.done),
            v1(&b.mc_return),
        );
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..32 {
            let i = obs[3 * r] as usize;
            assert!((4..12).contains(&i), "row {r} is transition {i}, not held");
            let t = tr(i);
            assert_eq!(&obs[3 * r..3 * r + 3], &t.obs[..]);
            assert_eq!(&act[2 * r..2 * r + 2], &t.action[..]);
            assert_eq!(&next[3 * r..3 * r + 3], &t.next_obs[..]);
            assert_eq!(rew[r], t.reward);
            assert_eq!(mc[r], t.mc_return);
            assert_eq!(done[r], if t.done { 1.0 } else { 0.0 });
            seen.insert(i);
        }
        assert!(
            seen.len() >= 6,
            "32 uniform draws of 8 reached only {seen:?}"
        );
        let again = buf.sample(&mut Rng::new(1), 32, &CPU).expect("sample");
        assert_eq!(v1(&again.obs), obs, "same seed, same batch");
        let empty = ReplayBuffer::new(4, 3, 2).expect("buffer");
        assert!(empty.sample(&mut Rng::new(1), 4, &CPU).is_err());
    }

    #[test]
    fn mixed_batches_take_the_offline_share_first() {
        let mut off = ReplayBuffer::new(16, 3, 2).expect("offline");
        let mut on = ReplayBuffer::new(16, 3, 2).expect("online");
        for i in 0..4 {
            off.push(&Transition {
                reward: 0.0,
                ..tr(i)
            })
            .expect("push");
            on.push(&Transition {
                reward: 1.0,
                ..tr(i)
            })
            .expect("push");
        }
        let mut rng = Rng::new(3);
        let b = ReplayBuffer::sample_mixed(&off, &on, 0.5, &mut rng, 10, &CPU).expect("mix");
        assert_eq!(v1(&b.reward), [vec![0.0; 5], vec![1.0; 5]].concat());
        let b = ReplayBuffer::sample_mixed(&off, &on, 0.25, &mut rng, 8, &CPU).expect("mix");
        assert_eq!(v1(&b.reward), [vec![0.0; 2], vec![1.0; 6]].concat());

        // A buffer that is not drawn from may be empty; one that is may not.
        let empty = ReplayBuffer::new(16, 3, 2).expect("empty");
        let b =
            ReplayBuffer::sample_mixed(&off, &empty, 1.0, &mut rng, 6, &CPU).expect("all offline");
        assert_eq!(v1(&b.reward), vec![0.0; 6]);
        let e = ReplayBuffer::sample_mixed(&off, &empty, 0.5, &mut rng, 6, &CPU)
            .expect_err("empty online")
            .to_string();
        assert!(e.contains("online") && e.contains("empty"), "{e}");
        assert!(ReplayBuffer::sample_mixed(&off, &on, 1.5, &mut rng, 6, &CPU).is_err());
        let other = ReplayBuffer::new(16, 4, 2).expect("other dims");
        assert!(ReplayBuffer::sample_mixed(&off, &other, 0.5, &mut rng, 6, &CPU).is_err());
    }

    #[test]
    fn buffer_file_round_trips_atomically_and_is_checked_on_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replay.safetensors");
        let mut buf = ReplayBuffer::new(5, 3, 2).expect("buffer");
        for i in 0..7 {
            buf.push(&tr(i)).expect("push");
        }
        buf.save(&path).expect("save");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["replay.safetensors".to_string()],
            "no temporary file left"
        );

        let mut back = ReplayBuffer::load(&path).expect("load");
        assert_eq!(
            (back.capacity(), back.obs_dim(), back.action_dim()),
            (5, 3, 2)
        );
        assert_eq!((back.len(), back.pushed()), (5, 7));
        // Same contents in the same order, and the ring goes on the same way.
        for k in 7..10 {
            buf.push(&tr(k)).expect("push");
            back.push(&tr(k)).expect("push");
        }
        for i in 0..5 {
            assert_eq!(back.get(i), buf.get(i), "transition {i}");
        }
        let a = buf.sample(&mut Rng::new(5), 16, &CPU).expect("sample");
        let b = back.sample(&mut Rng::new(5), 16, &CPU).expect("sample");
        assert_eq!(v1(&a.obs), v1(&b.obs));

        // An empty buffer round-trips too.
        let empty_path = dir.path().join("empty.safetensors");
        ReplayBuffer::new(4, 3, 2)
            .expect("buffer")
            .save(&empty_path)
            .expect("save");
        let e = ReplayBuffer::load(&empty_path).expect("load empty");
        assert!(e.is_empty() && e.capacity() == 4);

        // Dimensions other than the caller's: the error names the file and the tensor.
        let err = ReplayBuffer::load_expecting(&path, 4, 2)
            .expect_err("obs dim")
            .to_string();
        assert!(
            err.contains("replay.safetensors") && err.contains("obs"),
            "{err}"
        );
        let err = ReplayBuffer::load_expecting(&path, 3, 1)
            .expect_err("action dim")
            .to_string();
        assert!(err.contains("action"), "{err}");
        assert!(ReplayBuffer::load_expecting(&path, 3, 2).is_ok());

        // A truncated file names the file.
        let bytes = std::fs::read(&path).expect("read");
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        let err = ReplayBuffer::load(&cut).expect_err("truncated").to_string();
        assert!(err.contains("cut.safetensors"), "{err}");

        // A tensor whose shape disagrees with the metadata is named.
        let bad = dir.path().join("bad.safetensors");
        let store = rudder_tune::checkpoint::TensorStore::load_file(&path, &CPU).expect("store");
        let mut tensors = std::collections::HashMap::new();
        for n in ["obs", "action", "next_obs", "reward", "mc_return", "done"] {
            tensors.insert(n.to_string(), store.get(n).expect("tensor").clone());
        }
        tensors.insert(
            "next_obs".into(),
            Tensor::zeros((5, 4), DType::F32, &CPU).expect("zeros"),
        );
        rudder_tune::checkpoint::save_safetensors_atomic(
            &tensors,
            Some(store.metadata().clone()),
            &bad,
        )
        .expect("save bad");
        let err = ReplayBuffer::load(&bad).expect_err("bad shape").to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("next_obs"),
            "{err}"
        );
        // A file without the replay metadata says what it is not.
        rudder_tune::checkpoint::save_safetensors_atomic(&tensors, None, &bad).expect("save");
        let err = ReplayBuffer::load(&bad)
            .expect_err("no metadata")
            .to_string();
        assert!(err.contains("format"), "{err}");
        assert!(ReplayBuffer::load(Path::new("/nonexistent/replay.safetensors")).is_err());
    }

    // ---------------------------------------------------------------- returns

    #[test]
    fn mc_returns_match_hand_numbers() {
        let g = mc_returns(&[0.0, 0.0, 1.0], 0.99, true, None);
        assert_eq!(g.len(), 3);
        for (a, b) in g.iter().zip([0.9801, 0.99, 1.0]) {
            assert!(close(*a as f64, b, 1e-6), "{g:?}");
        }
        // A time-out without a bootstrap sums to the end, as Cal-QL's code does.
        assert_eq!(mc_returns(&[0.0, 0.0, 1.0], 0.99, false, None), g);
        // With one: [1, 2] then V = 10: G1 = 2 + 0.99 * 10, G0 = 1 + 0.99 * G1.
        let g = mc_returns(&[1.0, 2.0], 0.99, false, Some(10.0));
        assert!(
            close(g[1] as f64, 11.9, 1e-5) && close(g[0] as f64, 12.781, 1e-5),
            "{g:?}"
        );
        // A terminal ignores the bootstrap.
        assert_eq!(
            mc_returns(&[1.0, 2.0], 0.99, true, Some(10.0)),
            vec![2.98, 2.0]
        );
        // Cal-QL's infinite-horizon case: every reward -1, bootstrap -1 / (1 - gamma).
        let g = mc_returns(&[-1.0; 4], 0.99, false, Some(-100.0));
        assert!(g.iter().all(|x| close(*x as f64, -100.0, 1e-4)), "{g:?}");
        assert!(mc_returns(&[], 0.99, true, None).is_empty());
    }

    // ---------------------------------------------------------------- critic

    fn critic(cfg: &CriticConfig, seed: u64) -> (Critic, VarMap, Vec<(String, Var)>) {
        let vars = VarMap::new();
        let c = Critic::new(cfg, VarBuilder::from_varmap(&vars, DType::F32, &CPU)).expect("critic");
        let params = init_seeded(&vars, seed).expect("init");
        (c, vars, params)
    }

    fn var_values(vars: &VarMap) -> Vec<(String, Vec<f32>)> {
        sorted_params(vars)
            .expect("params")
            .into_iter()
            .map(|(n, v)| (n, v1(v.as_tensor())))
            .collect()
    }

    #[test]
    fn critic_names_shapes_seeded_init_and_sampled_actions() {
        let cfg = CriticConfig {
            hidden: vec![8, 6],
            ..CriticConfig::new(3, 2)
        };
        assert_eq!(CriticConfig::new(3, 2).hidden, vec![256, 256]);
        assert_eq!(CriticConfig::new(3, 2).ensemble, 2);
        let (c, vars, params) = critic(&cfg, 7);
        let names: Vec<(String, Vec<usize>)> = params
            .iter()
            .map(|(n, v)| (n.clone(), v.dims().to_vec()))
            .collect();
        let mut want = Vec::new();
        for q in ["q0", "q1"] {
            want.extend([
                (format!("{q}.fc0.bias"), vec![8]),
                (format!("{q}.fc0.weight"), vec![8, 5]),
                (format!("{q}.fc1.bias"), vec![6]),
                (format!("{q}.fc1.weight"), vec![6, 8]),
                (format!("{q}.ln0.bias"), vec![8]),
                (format!("{q}.ln0.weight"), vec![8]),
                (format!("{q}.ln1.bias"), vec![6]),
                (format!("{q}.ln1.weight"), vec![6]),
                (format!("{q}.out.bias"), vec![1]),
                (format!("{q}.out.weight"), vec![1, 6]),
            ]);
        }
        assert_eq!(names, want);
        let vals = var_values(&vars);
        let get = |n: &str| {
            vals.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .expect(n)
        };
        assert_eq!(
            get("q0.ln0.weight"),
            vec![1.0; 8],
            "LayerNorm scales start at 1"
        );
        assert_eq!(get("q0.fc0.bias"), vec![0.0; 8]);
        assert_ne!(
            get("q0.fc0.weight"),
            get("q1.fc0.weight"),
            "the two Q-networks differ"
        );
        let (_, vars2, _) = critic(&cfg, 7);
        assert_eq!(var_values(&vars2), vals, "same seed, same weights");

        let mut rng = Rng::new(2);
        let obs = Tensor::from_vec(rng.gaussian(12), (4, 3), &CPU).expect("obs");
        let act = Tensor::from_vec(rng.gaussian(8), (4, 2), &CPU).expect("act");
        let q = c.forward(&obs, &act).expect("forward");
        assert_eq!(q.dims(), &[2, 4]);
        let qm = Critic::min_q(&q).expect("min");
        let (qv, qmv) = (v1(&q), v1(&qm));
        for b in 0..4 {
            assert_eq!(qmv[b], qv[b].min(qv[4 + b]));
        }
        // N actions per state agree with the plain forward on repeated rows.
        let acts = Tensor::from_vec(rng.gaussian(24), (4, 3, 2), &CPU).expect("acts");
        let qn = c.forward_n(&obs, &acts).expect("forward_n");
        assert_eq!(qn.dims(), &[2, 4, 3]);
        for j in 0..3 {
            let aj = acts
                .narrow(1, j, 1)
                .and_then(|a| a.squeeze(1))
                .expect("narrow");
            let qj = c.forward(&obs, &aj).expect("forward");
            let col = qn.narrow(2, j, 1).and_then(|q| q.squeeze(2)).expect("col");
            for (x, y) in v1(&col).iter().zip(v1(&qj)) {
                assert!(close(*x as f64, y as f64, 1e-5));
            }
        }
        assert!(c.forward(&obs, &obs).is_err(), "action of the wrong width");
        assert!(c.forward_n(&obs, &act).is_err(), "actions not [B, N, A]");
    }

    #[test]
    fn optimiser_steps_reach_the_network_and_the_target_follows_by_polyak() {
        // The critic under a prefix, beside an actor in the same map (as an agent keeps them).
        let cfg = CriticConfig {
            hidden: vec![8],
            ..CriticConfig::new(2, 1)
        };
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &CPU);
        let c = Critic::new(&cfg, vb.pp("critic")).expect("critic");
        Mlp::new(2, &[4], 2, false, vb.pp("actor")).expect("actor");
        let params = init_seeded(&vars, 3).expect("init");
        let critic_values = |vars: &VarMap| -> Vec<(String, Vec<f32>)> {
            var_values(vars)
                .into_iter()
                .filter(|(n, _)| n.starts_with("critic."))
                .collect()
        };
        let (target, tvars) = c.target_copy(&vars, &CPU).expect("target");
        assert_eq!(
            var_values(&tvars),
            critic_values(&vars),
            "exact copy, same names"
        );
        let obs = t2(&[&[0.5, -1.0], &[1.0, 2.0]]);
        let act = t2(&[&[0.3], &[-0.7]]);
        let before = v1(&c.forward(&obs, &act).expect("q"));
        let q = c.forward(&obs, &act).expect("q");
        let loss = q.sqr().and_then(|q| q.sum_all()).expect("loss");
        let grads = collect_grads(&params, &loss.backward().expect("backward"));
        assert!(
            grads
                .iter()
                .zip(&params)
                .filter(|(_, (n, _))| n.starts_with("critic."))
                .all(|(g, _)| g.is_some()),
            "every critic variable (LayerNorms included) gets a gradient"
        );
        let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).expect("adamw");
        opt.step(&grads, 1e-2).expect("step");
        let after = v1(&c.forward(&obs, &act).expect("q"));
        assert_ne!(before, after, "the network reads its variables' storage");
        assert_eq!(
            v1(&target.forward(&obs, &act).expect("q")),
            before,
            "target untouched"
        );

        let old_t = var_values(&tvars);
        let online = critic_values(&vars);
        let tau = 0.25;
        soft_update(&tvars, &vars, tau).expect("soft update");
        for ((name, t_new), ((_, t_old), (_, o))) in
            var_values(&tvars).iter().zip(old_t.iter().zip(&online))
        {
            for k in 0..t_new.len() {
                let want = (1.0 - tau) * t_old[k] as f64 + tau * o[k] as f64;
                assert!(close(t_new[k] as f64, want, 1e-6), "{name}[{k}]");
            }
        }
        soft_update(&tvars, &vars, 1.0).expect("tau 1");
        assert_eq!(var_values(&tvars), online);
        assert!(soft_update(&tvars, &vars, 1.5).is_err());
        assert!(
            soft_update(&vars, &vars, 0.1).is_err(),
            "a map is not its own target"
        );
        // A target whose variable the online map lacks, or holds in another shape, is refused.
        let unprefixed = VarMap::new();
        Critic::new(&cfg, VarBuilder::from_varmap(&unprefixed, DType::F32, &CPU)).expect("critic");
        let e = copy_params(&unprefixed, &vars)
            .expect_err("names")
            .to_string();
        assert!(e.contains("q0."), "{e}");
        let narrow = VarMap::new();
        let nvb = VarBuilder::from_varmap(&narrow, DType::F32, &CPU);
        let ncfg = CriticConfig {
            hidden: vec![4],
            ..cfg.clone()
        };
        Critic::new(&ncfg, nvb.pp("critic")).expect("critic");
        let e = soft_update(&narrow, &vars, 0.1)
            .expect_err("shapes")
            .to_string();
        assert!(e.contains("shape"), "{e}");
    }

    // ---------------------------------------------------------------- actor

    /// ln N(u; m, s) for the closed form.
    fn ln_normal(u: f64, m: f64, s: f64) -> f64 {
        -0.5 * ((u - m) / s).powi(2) - s.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
    }

    #[test]
    fn tanh_gaussian_density_matches_the_closed_form_and_integrates_to_one() {
        let (m, ls, scale) = (0.3f64, -0.5f64, 2.0f64);
        let s = ls.exp();
        let n = 4001;
        let grid: Vec<f32> = (0..n)
            .map(|i| (scale * (-1.0 + 2.0 * (i as f64 + 0.5) / n as f64)) as f32)
            .collect();
        let dist = TanhGaussian::new(
            &Tensor::full(m as f32, (n, 1), &CPU).expect("mean"),
            &Tensor::full(ls as f32, (n, 1), &CPU).expect("log_std"),
            scale,
        )
        .expect("dist");
        let a = Tensor::from_vec(grid.clone(), (n, 1), &CPU).expect("actions");
        let lp = v1(&dist.log_prob(&a).expect("log_prob"));
        let mut integral = 0.0;
        for (x, l) in grid.iter().zip(&lp) {
            let y = *x as f64 / scale;
            // p(a) = N(atanh(a / scale)) / (scale (1 - (a / scale)^2))
            let want = ln_normal(y.atanh(), m, s) - (scale * (1.0 - y * y)).ln();
            assert!(
                close(*l as f64, want, 2e-3 * want.abs().max(1.0)),
                "a={x}: {l} vs {want}"
            );
            integral += (*l as f64).exp() * 2.0 * scale / n as f64;
        }
        assert!(
            close(integral, 1.0, 2e-3),
            "density integrates to {integral}"
        );

        // A sample's log-density is the density at the sampled action.
        let mut rng = Rng::new(11);
        let small = TanhGaussian::new(
            &t2(&[&[0.3, -1.0], &[0.3, -1.0], &[0.3, -1.0]]),
            &t2(&[&[-0.5, 0.2], &[-0.5, 0.2], &[-0.5, 0.2]]),
            2.0,
        )
        .expect("dist");
        let (act, logp) = small.sample(&mut rng).expect("sample");
        assert_eq!((act.dims(), logp.dims()), (&[3usize, 2][..], &[3usize][..]));
        assert!(v1(&act).iter().all(|x| x.abs() < 2.0));
        let again = v1(&small.log_prob(&act).expect("log_prob"));
        for (x, y) in v1(&logp).iter().zip(again) {
            assert!(close(*x as f64, y as f64, 2e-3), "{x} vs {y}");
        }
        let (acts, logps) = small.sample_n(&mut rng, 5).expect("sample_n");
        assert_eq!(
            (acts.dims(), logps.dims()),
            (&[3usize, 5, 2][..], &[3usize, 5][..])
        );
        let mode = v1(&small.mode().expect("mode"));
        assert!(close(mode[0] as f64, 2.0 * 0.3f64.tanh(), 1e-6));
        assert!(TanhGaussian::new(&t2(&[&[0.0]]), &t2(&[&[0.0, 0.0]]), 1.0).is_err());
        assert!(TanhGaussian::new(&t2(&[&[0.0]]), &t2(&[&[0.0]]), 0.0).is_err());
    }

    #[test]
    fn tanh_gaussian_is_stable_when_saturated_and_its_gradients_are_right() {
        // u = 20: tanh(u) is 1 in f32, so log(1 - tanh^2) taken naively is -inf.
        let dist = TanhGaussian::new(&t2(&[&[20.0]]), &t2(&[&[-5.0]]), 1.0).expect("dist");
        let (_, lp) = dist.sample_with(&t2(&[&[0.0]])).expect("sample");
        let want = ln_normal(20.0, 20.0, (-5.0f64).exp()) - 2.0 * (2f64.ln() - 20.0);
        assert!(
            close(scalar(&lp.squeeze(0).expect("sq")) as f64, want, 1e-3),
            "{lp}"
        );

        // Reparameterisation: d logp / d mean = 2 tanh(u) (the Gaussian term cancels for fixed
        // noise), d action / d mean = scale (1 - tanh(u)^2); log_std beyond 2 is clamped (no
        // gradient).
        let mean = Var::from_tensor(&t2(&[&[0.4], &[-1.2]])).expect("var");
        let log_std = Var::from_tensor(&t2(&[&[-0.3], &[3.0]])).expect("var");
        let noise = t2(&[&[0.7], &[-0.2]]);
        let scale = 1.5;
        let dist = TanhGaussian::new(mean.as_tensor(), log_std.as_tensor(), scale).expect("dist");
        let (a, lp) = dist.sample_with(&noise).expect("sample");
        let g = lp.sum_all().expect("sum").backward().expect("backward");
        let gm = v1(g.get(mean.as_tensor()).expect("grad mean"));
        let gs = v1(g.get(log_std.as_tensor()).expect("grad log_std"));
        for (k, (m, ls, e)) in [(0.4f64, -0.3f64, 0.7f64), (-1.2, 2.0, -0.2)]
            .iter()
            .enumerate()
        {
            let u = m + ls.exp() * e;
            assert!(
                close(gm[k] as f64, 2.0 * u.tanh(), 1e-4),
                "dlogp/dmean[{k}] {}",
                gm[k]
            );
        }
        // d logp / d log_std = -1 + 2 tanh(u) std eps for the first row; 0 for the clamped one.
        let u0 = 0.4 + (-0.3f64).exp() * 0.7;
        assert!(close(
            gs[0] as f64,
            -1.0 + 2.0 * u0.tanh() * (-0.3f64).exp() * 0.7,
            1e-4
        ));
        assert_eq!(gs[1], 0.0);
        let g = a.sum_all().expect("sum").backward().expect("backward");
        let ga = v1(g.get(mean.as_tensor()).expect("grad"));
        assert!(close(ga[0] as f64, scale * (1.0 - u0.tanh().powi(2)), 1e-5));
        assert!(gm.iter().chain(&gs).chain(&ga).all(|x| x.is_finite()));
    }

    // ---------------------------------------------------------------- Cal-QL pieces

    #[test]
    fn td_target_and_losses_match_hand_numbers() {
        let next = Var::from_tensor(&t1(&[2.0, 3.0])).expect("var");
        let y = td_target(&t1(&[1.0, 0.5]), &t1(&[0.0, 1.0]), next.as_tensor(), 0.9).expect("td");
        let yv = v1(&y);
        assert!(close(yv[0] as f64, 2.8, 1e-6) && yv[1] == 0.5, "{yv:?}");
        assert!(!y.track_op(), "the target is detached");
        assert!(td_target(&t1(&[1.0]), &t1(&[0.0, 1.0]), &t1(&[1.0]), 0.9).is_err());

        // 0.5 * (mean[(1-1)^2, (2-1)^2] + mean[(0-1)^2, (1-1)^2]) + 0.5 = 1.0
        let l = critic_loss(
            &t2(&[&[1.0, 2.0], &[0.0, 1.0]]),
            &t1(&[1.0, 1.0]),
            &Tensor::new(0.5f32, &CPU).expect("p"),
        )
        .expect("critic loss");
        assert!(close(scalar(&l) as f64, 1.0, 1e-6));

        // mean(0.1 * -1 - 1, 0.1 * 0 - 2) + 0.5 * 2 = -0.55
        let bc = Tensor::new(2.0f32, &CPU).expect("bc");
        let l =
            actor_loss(&t1(&[1.0, 2.0]), &t1(&[-1.0, 0.0]), 0.1, Some(&bc), 0.5).expect("actor");
        assert!(close(scalar(&l) as f64, -0.55, 1e-6));
        let l = actor_loss(&t1(&[1.0, 2.0]), &t1(&[-1.0, 0.0]), 0.1, None, 0.0).expect("actor");
        assert!(close(scalar(&l) as f64, -1.55, 1e-6));
        assert!(
            actor_loss(&t1(&[1.0]), &t1(&[0.0]), 0.1, None, 0.5).is_err(),
            "bc_weight without bc"
        );

        // -mean(0.5 * (-1 - 1), 0.5 * (-3 - 1)) = 1.5
        let la = Tensor::new(0.5f32, &CPU).expect("log_alpha");
        let l = entropy_alpha_loss(&la, &t1(&[-1.0, -3.0]), -1.0).expect("alpha loss");
        assert!(close(scalar(&l) as f64, 1.5, 1e-6));

        let cfg = CalQlConfig::default();
        assert_eq!(
            (
                cfg.gamma,
                cfg.cql_alpha,
                cfg.n_actions,
                cfg.temperature,
                cfg.tau
            ),
            (0.99, 5.0, 10, 1.0, 5e-3)
        );
        assert_eq!(
            (cfg.batch_size, cfg.mixing_ratio, cfg.policy_lr, cfg.q_lr),
            (256, 0.5, 1e-4, 3e-4)
        );
        assert!(cfg.calibrate && cfg.importance_sample);
        assert_eq!(cfg.target_entropy_for(3), -3.0);
        let partial: CalQlConfig = serde_json::from_str(r#"{"cql_alpha": 1.0}"#).expect("json");
        assert_eq!(
            partial,
            CalQlConfig {
                cql_alpha: 1.0,
                ..CalQlConfig::default()
            }
        );
    }

    /// `ln sum exp(x / t) * t` in f64.
    fn lse(x: &[f64], t: f64) -> f64 {
        x.iter().map(|v| (v / t).exp()).sum::<f64>().ln() * t
    }

    #[test]
    fn penalty_uses_the_mc_return_where_it_exceeds_the_policy_q() {
        // One network, B = 1, N = 1, action_dim 1: log U = ln(0.5).
        let (q_data, q_rand, q_pi, logp_pi, q_next, logp_next, mc) =
            (1.0, 0.5, 0.2, -1.0, 0.4, 0.5, 0.3);
        let tensors = [
            t1(&[q_data]),
            t2(&[&[q_rand]]),
            t2(&[&[q_pi]]),
            t2(&[&[logp_pi]]),
            t2(&[&[q_next]]),
            t2(&[&[logp_next]]),
            t1(&[mc]),
        ];
        let x = PenaltyInputs {
            q_data: &tensors[0],
            q_rand: &tensors[1],
            q_pi: &tensors[2],
            logp_pi: &tensors[3],
            q_next_pi: &tensors[4],
            logp_next: &tensors[5],
            mc_return: &tensors[6],
        };
        let f = |v: f32| v as f64;
        let ln2 = 2f64.ln();
        for (calibrate, temperature) in [(true, 1.0), (false, 1.0), (true, 2.0)] {
            let cfg = CalQlConfig {
                calibrate,
                temperature,
                ..CalQlConfig::default()
            };
            let p = cal_ql_penalty(&x, 1, &cfg).expect("penalty");
            // q_pi = 0.2 < mc = 0.3: calibrated, the sample is 0.3 - logp_pi.
            let pi = if calibrate { f(mc) } else { f(q_pi) };
            let s = [f(q_rand) + ln2, pi - f(logp_pi), f(q_next) - f(logp_next)];
            let want_lse = lse(&s, temperature);
            assert!(
                close(p.mean_logsumexp as f64, want_lse, 1e-5),
                "{calibrate} {temperature}"
            );
            assert!(close(
                scalar(&p.loss) as f64,
                5.0 * (want_lse - f(q_data)),
                1e-4
            ));
            assert_eq!((p.clipped_pi, p.clipped_next), (1.0, 0.0));
        }
        // Without importance sampling: [q_rand, q_data, q_next, q_pi] unweighted.
        let cfg = CalQlConfig {
            importance_sample: false,
            ..CalQlConfig::default()
        };
        let p = cal_ql_penalty(&x, 1, &cfg).expect("penalty");
        let want = lse(&[f(q_rand), f(q_data), f(q_next), f(mc)], 1.0);
        assert!(close(
            scalar(&p.loss) as f64,
            5.0 * (want - f(q_data)),
            1e-4
        ));
        // Shapes are checked.
        let bad = t2(&[&[0.0, 0.0]]);
        assert!(cal_ql_penalty(
            &PenaltyInputs { q_pi: &bad, ..x },
            1,
            &CalQlConfig::default()
        )
        .is_err());
        let none = Tensor::zeros((1, 0), DType::F32, &CPU).expect("zeros");
        let e = cal_ql_penalty(
            &PenaltyInputs { q_rand: &none, ..x },
            1,
            &CalQlConfig::default(),
        )
        .expect_err("no sampled actions")
        .to_string();
        assert!(e.contains("q_rand"), "{e}");
    }

    #[test]
    fn no_gradient_flows_through_clipped_policy_q_values() {
        // B = 1, N = 2: q_pi = [0.1, 0.9] against mc = 0.5: the first is raised to the bound.
        let q_data = Var::from_tensor(&t1(&[1.0])).expect("var");
        let q_pi = Var::from_tensor(&t2(&[&[0.1, 0.9]])).expect("var");
        let q_next = Var::from_tensor(&t2(&[&[0.2, 0.8]])).expect("var");
        let (q_rand, zeros, mc) = (t2(&[&[0.0, -0.5]]), t2(&[&[0.0, 0.0]]), t1(&[0.5]));
        let x = PenaltyInputs {
            q_data: q_data.as_tensor(),
            q_rand: &q_rand,
            q_pi: q_pi.as_tensor(),
            logp_pi: &zeros,
            q_next_pi: q_next.as_tensor(),
            logp_next: &zeros,
            mc_return: &mc,
        };
        let p = cal_ql_penalty(&x, 1, &CalQlConfig::default()).expect("penalty");
        assert_eq!((p.clipped_pi, p.clipped_next), (0.5, 0.5));
        let g = p.loss.backward().expect("backward");
        let gpi = v1(g.get(q_pi.as_tensor()).expect("grad q_pi"));
        let gnext = v1(g.get(q_next.as_tensor()).expect("grad q_next"));
        let gdata = v1(g.get(q_data.as_tensor()).expect("grad q_data"));
        assert_eq!(
            (gpi[0], gnext[0]),
            (0.0, 0.0),
            "clipped entries pass no gradient"
        );
        // Unclipped ones: alpha * softmax weight of their sample among the 6.
        let ln2 = 2f64.ln();
        let s = [ln2, -0.5 + ln2, 0.5, 0.9, 0.5, 0.8];
        let z: f64 = s.iter().map(|v| v.exp()).sum();
        assert!(
            close(gpi[1] as f64, 5.0 * 0.9f64.exp() / z, 1e-5),
            "{gpi:?}"
        );
        assert!(
            close(gnext[1] as f64, 5.0 * 0.8f64.exp() / z, 1e-5),
            "{gnext:?}"
        );
        assert!(close(gdata[0] as f64, -5.0, 1e-6));

        // The ensemble's penalty is the sum of its networks' penalties.
        let e2 = |a: &Tensor, b: &Tensor| Tensor::stack(&[a, b], 0).expect("stack");
        let (qd2, qr2, qp2, qn2) = (
            e2(q_data.as_tensor(), &t1(&[0.3])),
            e2(&q_rand, &t2(&[&[0.4, 0.1]])),
            e2(q_pi.as_tensor(), &t2(&[&[0.7, 0.2]])),
            e2(q_next.as_tensor(), &t2(&[&[0.6, 0.9]])),
        );
        let both = cal_ql_penalty(
            &PenaltyInputs {
                q_data: &qd2,
                q_rand: &qr2,
                q_pi: &qp2,
                q_next_pi: &qn2,
                ..x
            },
            1,
            &CalQlConfig::default(),
        )
        .expect("ensemble");
        let (d1, r1, p1, n1) = (
            t1(&[0.3]),
            t2(&[&[0.4, 0.1]]),
            t2(&[&[0.7, 0.2]]),
            t2(&[&[0.6, 0.9]]),
        );
        let second = cal_ql_penalty(
            &PenaltyInputs {
                q_data: &d1,
                q_rand: &r1,
                q_pi: &p1,
                q_next_pi: &n1,
                ..x
            },
            1,
            &CalQlConfig::default(),
        )
        .expect("second");
        let sum = scalar(&p.loss) + scalar(&second.loss);
        assert!(close(scalar(&both.loss) as f64, sum as f64, 1e-5));
    }

    // ---------------------------------------------------------------- end to end

    /// Data actions of the bandit are uniform in [DATA_LO, 1]; below it is out of the data.
    const DATA_LO: f32 = -0.5;

    /// A 1-step bandit: obs ~ N(0, I_2), data actions uniform in [-0.5, 1], reward 1 - a^2,
    /// every step terminal (mc_return = reward). 400 Cal-QL updates (critic, actor, Polyak) with
    /// a tanh-Gaussian actor that starts off centre (mode ~0.75) must move its mode to a = 0, and
    /// Q must stay conservative: out of the data (a < -0.5) no Q-value above the best return (1)
    /// plus a margin.

    #[test]
    fn cal_ql_centres_the_actor_on_a_bandit() {
        let start = std::time::Instant::now();
        let mut rng = Rng::new(2024);
        let mut data = ReplayBuffer::new(1024, 2, 1).expect("buffer");
        for _ in 0..1024 {
            let obs = rng.gaussian(2);
            let a = (DATA_LO as f64 + (1.0 - DATA_LO as f64) * rng.next_f64()) as f32;
            let r = 1.0 - a * a;
            data.push(&Transition {
                obs: obs.clone(),
                action: vec![a],
                reward: r,
                next_obs: obs,
                done: true,
                mc_return: mc_returns(&[r], 0.99, true, None)[0],
            })
            .expect("push");
        }
        // CQL's regulariser shrinks how much Q varies with the action by about 1 / (1 + alpha)
        // where the data is uniform; with unit rewards and one step, alpha 0.5 keeps the shape
        // learnable in a few hundred updates (5 is for multi-step returns). Plain MLPs, as in
        // Cal-QL's code (and half the candle ops of LayerNorm ones).
        let cfg = CalQlConfig {
            cql_alpha: 0.5,
            ..CalQlConfig::default()
        };
        let ccfg = CriticConfig {
            hidden: vec![64, 64],
            layer_norm: false,
            ..CriticConfig::new(2, 1)
        };
        let (critic, cvars, cparams) = critic(&ccfg, 1);
        let (target, tvars) = critic.target_copy(&cvars, &CPU).expect("target");
        let avars = VarMap::new();
        let actor = Mlp::new(
            2,
            &[64, 64],
            2,
            false,
            VarBuilder::from_varmap(&avars, DType::F32, &CPU),
        )
        .expect("actor");
        let aparams = init_seeded(&avars, 2).expect("init actor");
        let bias = aparams
            .iter()
            .find(|(n, _)| n == "out.bias")
            .map(|(_, v)| v.clone())
            .expect("bias");
        bias.set(&t1(&[1.5, -1.0])).expect("set bias");
        let policy = |obs: &Tensor| -> TanhGaussian {
            let out = actor.forward(obs).expect("actor forward");
            let mean = out.narrow(1, 0, 1).expect("mean");
            let log_std = out.narrow(1, 1, 1).expect("log_std");
            TanhGaussian::new(&mean, &log_std, cfg.action_scale).expect("dist")
        };
        let adam = |lr| AdamWConfig {
            lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let (q_lr, pi_lr) = (1e-3, 3e-3);
        let mut copt = AdamW::new(cparams.clone(), adam(q_lr)).expect("critic adamw");
        let mut aopt = AdamW::new(aparams.clone(), adam(pi_lr)).expect("actor adamw");
        let eval_obs = Tensor::from_vec(rng.gaussian(128), (64, 2), &CPU).expect("eval obs");
        let mean_abs = |obs: &Tensor| -> f32 {
            let m = v1(&policy(obs).mode().expect("mode"));
            m.iter().map(|x| x.abs()).sum::<f32>() / m.len() as f32
        };
        let initial = mean_abs(&eval_obs);
        assert!(initial > 0.5, "starts off centre: {initial}");

        let (b, n) = (64usize, cfg.n_actions);
        let entropy_alpha = 0.05;
        let mut clipped = 0.0;
        for _ in 0..400 {
            let batch = data.sample(&mut rng, b, &CPU).expect("sample");
            // Critic.
            let pi = policy(&batch.obs);
            let (a_pi, logp_pi) = pi.sample_n(&mut rng, n).expect("pi");
            let pn = policy(&batch.next_obs);
            let (a_next, logp_next) = pn.sample_n(&mut rng, n).expect("next");
            let (a_tgt, _) = pn.sample(&mut rng).expect("target action");
            let q_tgt = Critic::min_q(
                &target
                    .forward(&batch.next_obs, &a_tgt.detach())
                    .expect("target q"),
            )
            .expect("min");
            let y = td_target(&batch.reward, &batch.done, &q_tgt, cfg.gamma).expect("td");
            let u: Vec<f32> = (0..b * n)
                .map(|_| (2.0 * rng.next_f64() - 1.0) as f32)
                .collect();
            let a_rand = Tensor::from_vec(u, (b, n, 1), &CPU).expect("random actions");
            let q_data = critic.forward(&batch.obs, &batch.action).expect("q data");
            let q_rand = critic.forward_n(&batch.obs, &a_rand).expect("q rand");
            let q_pi = critic.forward_n(&batch.obs, &a_pi.detach()).expect("q pi");
            let q_next = critic
                .forward_n(&batch.obs, &a_next.detach())
                .expect("q next");
            let pen = cal_ql_penalty(
                &PenaltyInputs {
                    q_data: &q_data,
                    q_rand: &q_rand,
                    q_pi: &q_pi,
                    logp_pi: &logp_pi,
                    q_next_pi: &q_next,
                    logp_next: &logp_next,
                    mc_return: &batch.mc_return,
                },
                1,
                &cfg,
            )
            .expect("penalty");
            clipped = pen.clipped_pi;
            let loss = critic_loss(&q_data, &y, &pen.loss).expect("critic loss");
            assert!(scalar(&loss).is_finite());
            let grads = collect_grads(&cparams, &loss.backward().expect("backward"));
            copt.step(&grads, q_lr).expect("critic step");
            // Actor.
            let (a, logp) = policy(&batch.obs).sample(&mut rng).expect("actor sample");
            let q = Critic::min_q(&critic.forward(&batch.obs, &a).expect("q")).expect("min");
            let loss = actor_loss(&q, &logp, entropy_alpha, None, 0.0).expect("actor loss");
            let grads = collect_grads(&aparams, &loss.backward().expect("backward"));
            aopt.step(&grads, pi_lr).expect("actor step");
            soft_update(&tvars, &cvars, cfg.tau).expect("soft update");
        }
        let fin = mean_abs(&eval_obs);

        // Out of the data (a < -0.5) no Q-value of either network, at any fresh state, exceeds
        // the data's best return (1) plus a margin; the ensemble minimum, averaged over states,
        // is calibrated in the data too and ranks the centre above both ends.
        let grid: Vec<f32> = (0..21).map(|i| -1.0 + 0.1 * i as f32).collect();
        let mut q_ood_max = f32::NEG_INFINITY;
        let mut q_at = vec![0f32; grid.len()];
        for (k, &g) in grid.iter().enumerate() {
            let act = Tensor::full(g, (64, 1), &CPU).expect("act");
            let q = critic.forward(&eval_obs, &act).expect("q");
            if g < DATA_LO - 0.05 {
                q_ood_max = v1(&q).into_iter().fold(q_ood_max, f32::max);
            }
            let qmin = v1(&Critic::min_q(&q).expect("min"));
            q_at[k] = qmin.iter().sum::<f32>() / qmin.len() as f32;
        }
        let q_mean_max = q_at.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        eprintln!(
        "bandit: |mean| {initial:.3} -> {fin:.3}, max Q out of data {q_ood_max:.3}, \
         min-Q(a=-1,0,1) {:.3} {:.3} {:.3}, max mean min-Q {q_mean_max:.3}, clipped {clipped:.2}, {:.1} s",
        q_at[0],
        q_at[10],
        q_at[20],
        start.elapsed().as_secs_f64()
    );
        assert!(fin < 0.2, "actor mean |a| {initial} -> {fin}");
        assert!(q_ood_max < 1.0 + 0.1, "max Q out of the data {q_ood_max}");
        assert!(q_mean_max < 1.0 + 0.1, "mean min-Q by action {q_at:?}");
        assert!(
            q_at[10] > q_at[0] && q_at[10] > q_at[20],
            "min-Q by action {q_at:?}"
        );
    }
}
